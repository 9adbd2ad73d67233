//! Monitor events: drops for `vireo monitor --type drop` (what was dropped, between whom, why,
//! and for policy drops the rule, or the default deny), and policy verdicts of new flows for
//! `vireo monitor --type policy-verdict` (Cilium's policy-verdict events: allowed, denied or
//! audit, per direction judged, with the deciding rule or the default). One event type with a
//! [`EventKind`], through one queue.
//!
//! Each worker pushes into its own bounded lock-free queue (the one of [`set_worker_ring`]),
//! only while a monitor is listening (verdicts only while one asks for them); a full queue
//! loses the event (counted), never blocks a worker. Verdict events are rate-limited, all workers together, to
//! [`VERDICTS_PER_SECOND`] per second of the conntrack clock; those over the limit are
//! counted as sampled out.

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::rings::WorkerRings;
use vireo_policy::{Direction, Origin};

use crate::counters::DropReason;
use crate::wire::ETH_HLEN;

thread_local! {
    /// The queue of the worker running on this thread.
    static RING: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread's events go to worker `i`'s queue (the pipeline sets it per batch).
#[inline]
pub fn set_worker_ring(i: usize) {
    RING.with(|r| r.set(i));
}

/// At most this many policy-verdict events per second (all workers together).
pub const VERDICTS_PER_SECOND: u32 = 1000;

/// What a policy verdict was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyVerdict {
    /// Allowed.
    Allowed,
    /// Denied (and dropped).
    Denied,
    /// Denied by policy, but let through: the endpoint is in policy audit mode.
    Audit,
}

impl PolicyVerdict {
    /// The name events show.
    pub fn name(self) -> &'static str {
        match self {
            PolicyVerdict::Allowed => "allowed",
            PolicyVerdict::Denied => "denied",
            PolicyVerdict::Audit => "audit",
        }
    }
}

/// What an event reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EventKind {
    /// A dropped packet (`reason` says why).
    #[default]
    Drop,
    /// The policy verdict of a new flow in one direction (`direction`, `rule`); `reason` is
    /// [`DropReason::PolicyDenied`] and means nothing.
    Verdict(PolicyVerdict),
    /// A forwarded packet traced (`vireo monitor --type trace`): `trace` says where it went;
    /// `reason` means nothing.
    Trace,
}

/// Where a traced packet went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    /// Interface slot it left on (`None`: into the tunnel).
    pub out_slot: Option<u16>,
    /// Into the tunnel towards another node.
    pub to_tunnel: bool,
    /// Conntrack's view: `new`, `established`, `reply`, `related` or `untracked`.
    pub ct: &'static str,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// Bytes (IP header and payload).
    pub bytes: u32,
}

/// One monitor event: a dropped packet, or a new flow's policy verdict ([`EventKind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEvent {
    /// A drop or a verdict.
    pub kind: EventKind,
    /// Why (drops).
    pub reason: DropReason,
    /// Interface slot it arrived on.
    pub in_slot: u16,
    /// IPv4 source (unspecified when the frame was not IPv4).
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// IP protocol.
    pub proto: u8,
    /// TCP/UDP ports (0 otherwise; a verdict event's ICMP echo identifier).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Source identity, when known.
    pub src_identity: u32,
    /// Destination identity, when known.
    pub dst_identity: u32,
    /// Policy drops: which side's policy.
    pub direction: Option<Direction>,
    /// Policy drops: the deny rule; `None` with a direction means default deny. Verdicts: the
    /// deciding rule, `None` for the default.
    pub rule: Option<Arc<Origin>>,
    /// Verdicts of ICMP flows: the type judged (traces: the packet's type).
    pub icmp_type: Option<u8>,
    /// Traces: where the packet went.
    pub trace: Option<Trace>,
}

impl DropEvent {
    /// An event for the frame `buf` (Ethernet), addresses and ports read from it if it is a
    /// plain IPv4 packet.
    pub fn from_frame(reason: DropReason, in_slot: u16, buf: &[u8]) -> DropEvent {
        let mut e = DropEvent {
            kind: EventKind::Drop,
            reason,
            in_slot,
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            proto: 0,
            sport: 0,
            dport: 0,
            src_identity: 0,
            dst_identity: 0,
            direction: None,
            rule: None,
            icmp_type: None,
            trace: None,
        };
        let ip = match buf.get(ETH_HLEN..) {
            Some(ip) if buf[12..14] == [0x08, 0x00] && ip.len() >= 20 && ip[0] >> 4 == 4 => ip,
            _ => return e,
        };
        e.src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        e.dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        e.proto = ip[9];
        let l4 = usize::from(ip[0] & 0x0f) * 4;
        if matches!(e.proto, 6 | 17) && ip.len() >= l4 + 4 {
            e.sport = u16::from_be_bytes([ip[l4], ip[l4 + 1]]);
            e.dport = u16::from_be_bytes([ip[l4 + 2], ip[l4 + 3]]);
        }
        e
    }
}

/// The queue between workers and the monitor.
#[derive(Debug)]
pub struct Monitor {
    on: AtomicBool,
    /// Someone asks for policy verdicts too.
    verdicts: AtomicBool,
    /// One queue per worker.
    queues: WorkerRings<DropEvent>,
    /// The second (conntrack clock) of the current verdict window, and the verdicts let
    /// through in it.
    window: AtomicU64,
    /// Verdict events over the rate limit.
    sampled_out: AtomicU64,
    /// The limit (per second).
    per_second: AtomicU32,
    /// Traces: every `N`th forwarded packet per worker (0: not tracing).
    trace_sample: AtomicU32,
    /// Traces: only packets to or from this address (host byte order; 0: any).
    trace_endpoint: AtomicU32,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new(4096)
    }
}

impl Monitor {
    /// One queue of `cap` events.
    pub fn new(cap: usize) -> Monitor {
        Monitor::with_rings(1, cap)
    }

    /// `workers` queues of `cap` events each.
    pub fn with_rings(workers: usize, cap: usize) -> Monitor {
        Monitor {
            on: AtomicBool::new(false),
            verdicts: AtomicBool::new(false),
            queues: WorkerRings::new(workers, cap),
            window: AtomicU64::new(0),
            sampled_out: AtomicU64::new(0),
            per_second: AtomicU32::new(VERDICTS_PER_SECOND),
            trace_sample: AtomicU32::new(0),
            trace_endpoint: AtomicU32::new(0),
        }
    }

    /// Whether someone asks for traces (and the monitor is on).
    #[inline]
    pub fn trace_on(&self) -> bool {
        self.trace_sample.load(Ordering::Relaxed) != 0 && self.is_on()
    }

    /// Traces every `sample`th forwarded packet of each worker, of those to or from
    /// `endpoint` when given (`sample` 0 stops tracing).
    pub fn set_trace(&self, sample: u32, endpoint: Option<Ipv4Addr>) {
        self.trace_endpoint
            .store(endpoint.map_or(0, u32::from), Ordering::Relaxed);
        self.trace_sample.store(sample, Ordering::Relaxed);
    }

    /// The trace selection: (every `N`th, only this endpoint).
    #[inline]
    pub fn trace_filter(&self) -> (u32, Option<u32>) {
        let e = self.trace_endpoint.load(Ordering::Relaxed);
        (
            self.trace_sample.load(Ordering::Relaxed),
            (e != 0).then_some(e),
        )
    }

    /// Whether someone listens for policy verdicts (workers skip them otherwise).
    #[inline]
    pub fn verdicts_on(&self) -> bool {
        self.verdicts.load(Ordering::Relaxed) && self.is_on()
    }

    /// Starts or stops collecting policy verdicts (while collecting at all: [`Monitor::set`]).
    pub fn set_verdicts(&self, on: bool) {
        self.verdicts.store(on, Ordering::Relaxed);
    }

    /// Sets the verdict rate limit (events per second, all workers together).
    pub fn set_verdict_rate(&self, per_second: u32) {
        self.per_second.store(per_second, Ordering::Relaxed);
    }

    /// Whether one more verdict event fits second `now`'s budget (approximate under races
    /// between workers: at most a few over); counts those that do not.
    #[inline]
    pub fn admit_verdict(&self, now: u32) -> bool {
        let limit = u64::from(self.per_second.load(Ordering::Relaxed));
        let cur = self.window.load(Ordering::Relaxed);
        let fresh = (u64::from(now) << 32) | 1;
        if (cur >> 32) as u32 != now {
            if self
                .window
                .compare_exchange(cur, fresh, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return limit > 0 || self.sample_out();
            }
        } else if cur & 0xffff_ffff < limit {
            self.window.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.sample_out()
    }

    fn sample_out(&self) -> bool {
        self.sampled_out.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Verdict events over the rate limit so far.
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out.load(Ordering::Relaxed)
    }

    /// Whether someone listens (workers skip building events otherwise).
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Starts or stops collecting.
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
        if !on {
            self.verdicts.store(false, Ordering::Relaxed);
            self.trace_sample.store(0, Ordering::Relaxed);
            for q in self.queues.rings() {
                while q.pop().is_some() {}
            }
        }
    }

    /// Queues an event in this thread's worker queue (lost, and counted, when it is full).
    #[inline]
    pub fn push(&self, e: DropEvent) {
        self.queues.push(RING.with(Cell::get), e);
    }

    /// Events lost to a full queue so far.
    pub fn lost(&self) -> u64 {
        self.queues.lost()
    }

    /// Takes up to `max` events, one from each worker's queue in turn, and the number lost
    /// so far.
    pub fn drain(&self, max: usize) -> (Vec<DropEvent>, u64) {
        let mut v = Vec::new();
        while v.len() < max {
            let before = v.len();
            for q in self.queues.rings() {
                if v.len() == max {
                    break;
                }
                if let Some(e) = q.pop() {
                    v.push(e);
                }
            }
            if v.len() == before {
                break;
            }
        }
        (v, self.queues.lost())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_limited_per_second_and_the_rest_counted() {
        let m = Monitor::new(16);
        m.set_verdict_rate(3);
        let admitted = |now: u32, n: usize| (0..n).filter(|_| m.admit_verdict(now)).count();
        assert_eq!(admitted(7, 5), 3);
        assert_eq!(m.sampled_out(), 2);
        assert_eq!(admitted(8, 2), 2, "a new second, a new budget");
        assert_eq!(admitted(8, 2), 1);
        assert_eq!(m.sampled_out(), 3);
        m.set_verdict_rate(0);
        assert_eq!(admitted(9, 2), 0);
        assert_eq!(m.sampled_out(), 5);
    }

    #[test]
    fn each_worker_has_its_queue_and_a_full_one_loses_only_its_own() {
        let m = Monitor::with_rings(2, 2);
        let ev = |p: u16| {
            let mut e = DropEvent::from_frame(DropReason::CtFull, 0, &[]);
            e.sport = p;
            e
        };
        let t = std::thread::spawn(move || {
            set_worker_ring(1);
            for p in 10..15 {
                m.push(ev(p));
            }
            m
        });
        let m = t.join().unwrap();
        set_worker_ring(0);
        m.push(ev(1));
        let (v, lost) = m.drain(10);
        assert_eq!(lost, 3, "worker 1's queue held 2 of its 5");
        let mut ports: Vec<u16> = v.iter().map(|e| e.sport).collect();
        ports.sort();
        assert_eq!(
            ports,
            vec![1, 10, 11],
            "worker 0's event was not lost to worker 1's"
        );
    }

    #[test]
    fn verdicts_are_collected_only_while_asked_for_and_monitoring() {
        let m = Monitor::new(4);
        m.set_verdicts(true);
        assert!(!m.verdicts_on(), "not monitoring");
        m.set(true);
        assert!(m.verdicts_on());
        m.set(false);
        m.set(true);
        assert!(!m.verdicts_on(), "stopping the monitor stops verdicts");
    }
}
