//! Stage `flows`: flow records for `vireo observe` and trace events for `vireo monitor --type
//! trace`, after every verdict but the tunnel's is taken (before `vxlan_encap` puts outer
//! headers in front).
//!
//! - A packet sent on gets a record when it is its flow's first (`CtVerdict::New`), its
//!   flow's first reply ([`Desc::first_reply`]), or a TCP FIN or RST; an audited packet is
//!   recorded as `AUDIT` with the rule that would deny it. Established packets cost a look at
//!   the TCP flags.
//! - Dropped packets are recorded after the pipeline (every stage's drops, the tunnel's too):
//!   [`dropped`].
//! - Traces: while `vireo monitor --type trace` asks, every `N`th forwarded packet of this
//!   worker (`--sample N`), or every one to or from the selected endpoint, is an event.
//!
//! Records go to the worker's own ring ([`crate::flows::FlowRings`]); a full ring loses them,
//! counted. Nothing is allocated.

use super::{Batch, CtVerdict, Desc, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::events::{DropEvent, EventKind, Trace};
use crate::flows::{
    ipv4_of, now_ns, tcp, tcp_flags, BatchClock, FlowEvent, FlowRecord, FlowVerdict,
};
use crate::tables::Tables;

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, _c: &mut BatchCounts) {
    let flows = t.flows.is_on();
    let trace = t.monitor.trace_on();
    if !flows && !trace {
        return;
    }
    let worker = usize::from(batch.worker);
    let mut seq = batch.trace_seq;
    let mut clock = BatchClock::default();
    for d in batch.descs_mut() {
        let (out_slot, to_tunnel) = match d.verdict {
            Verdict::Tx { slot } => (Some(slot), false),
            Verdict::Continue(Kind::Encap { .. }) => (None, true),
            _ => continue,
        };
        let Some(ip) = frames.frame(d.addr, d.len).and_then(|b| ipv4_of(b)) else {
            continue;
        };
        if trace {
            seq = seq.wrapping_add(1);
            traced(t, d, ip, seq, out_slot, to_tunnel);
        }
        if !flows {
            continue;
        }
        let event = match d.ct {
            CtVerdict::New => FlowEvent::New,
            CtVerdict::Reply if d.first_reply => FlowEvent::FirstReply,
            CtVerdict::Established | CtVerdict::Reply
                if tcp_flags(ip) & (tcp::FIN | tcp::RST) != 0 =>
            {
                FlowEvent::Close
            }
            _ => continue,
        };
        record(t, worker, d, ip, event, (out_slot, to_tunnel), clock.now());
    }
    batch.trace_seq = seq;
}

/// Queues the record of a forwarded packet.
#[cold]
#[inline(never)]
fn record(
    t: &Tables,
    worker: usize,
    d: &Desc,
    ip: &[u8],
    event: FlowEvent,
    (out_slot, to_tunnel): (Option<u16>, bool),
    time_ns: u64,
) {
    let verdict = if d.audited {
        FlowVerdict::Audit
    } else {
        FlowVerdict::Forwarded
    };
    let mut r = FlowRecord::of_packet(event, verdict, d, ip, time_ns);
    r.out_slot = out_slot;
    r.to_tunnel = to_tunnel;
    r.resolve_identities(t);
    if d.audited {
        r.judge(t, d);
    }
    t.flows.push(worker, r);
}

/// The record of a packet dropped for `reason` (after the pipeline), when it is IPv4.
#[cold]
#[inline(never)]
pub(super) fn dropped<F: Frames>(
    t: &Tables,
    frames: &mut F,
    worker: usize,
    d: &Desc,
    reason: DropReason,
    clock: &mut BatchClock,
) {
    let Some(ip) = frames.frame(d.addr, d.len).and_then(|b| ipv4_of(b)) else {
        return;
    };
    t.flows
        .push(worker, FlowRecord::dropped(t, d, reason, ip, clock.now()));
}

/// A trace event for the forwarded packet `d` when tracing picks it: the `seq`th this worker
/// forwarded while tracing (every `N`th), or one to or from the selected endpoint.
#[inline]
fn traced(t: &Tables, d: &Desc, ip: &[u8], seq: u32, out_slot: Option<u16>, to_tunnel: bool) {
    let (sample, endpoint) = t.monitor.trace_filter();
    let ends = || {
        let w = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
        (w(12), w(16))
    };
    let picked = match endpoint {
        Some(e) => {
            let (s, dst) = ends();
            (s == e || dst == e) && seq.is_multiple_of(sample.max(1))
        }
        None => seq.is_multiple_of(sample.max(1)),
    };
    if picked {
        trace_event(t, d, ip, out_slot, to_tunnel);
    }
}

#[cold]
#[inline(never)]
fn trace_event(t: &Tables, d: &Desc, ip: &[u8], out_slot: Option<u16>, to_tunnel: bool) {
    let mut r = FlowRecord::of_packet(FlowEvent::New, FlowVerdict::Forwarded, d, ip, now_ns());
    r.resolve_identities(t);
    t.monitor.push(DropEvent {
        kind: EventKind::Trace,
        reason: DropReason::PolicyDenied,
        in_slot: d.in_slot,
        src: r.src,
        dst: r.dst,
        proto: r.proto,
        sport: r.sport,
        dport: r.dport,
        src_identity: r.src_identity,
        dst_identity: r.dst_identity,
        direction: None,
        rule: None,
        icmp_type: r.icmp.map(|i| i.0),
        trace: Some(Trace {
            out_slot,
            to_tunnel,
            ct: match d.ct {
                CtVerdict::Untracked => "untracked",
                CtVerdict::New => "new",
                CtVerdict::Established => "established",
                CtVerdict::Reply => "reply",
                CtVerdict::Related => "related",
            },
            tcp_flags: r.tcp_flags,
            bytes: r.bytes,
        }),
    });
}
