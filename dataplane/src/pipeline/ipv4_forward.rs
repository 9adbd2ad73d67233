//! Stage `ipv4_forward`: delivers IPv4 packets to local endpoints. It looks the destination up in
//! the endpoint table, decrements the TTL (dropping at zero), and rewrites the MACs: the source
//! becomes the host-side veth (the pod's gateway), the destination the pod.

use super::{for_each_pending, Batch, Frames, Kind, Verdict};
use crate::counters::DropReason;
use crate::tables::Tables;
use crate::wire::{ipv4_dec_ttl, set_macs};

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables) {
    for_each_pending(
        batch,
        frames,
        |k| matches!(k, Kind::Ipv4 { .. }),
        |d, buf| {
            let Verdict::Continue(Kind::Ipv4 { l3 }) = d.verdict else {
                return;
            };
            d.verdict = forward(buf, usize::from(l3), t);
        },
    );
}

fn forward(buf: &mut [u8], l3: usize, t: &Tables) -> Verdict {
    let ip = &mut buf[l3..];
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let Some(ep) = t.endpoint(dst) else {
        return Verdict::Drop(DropReason::UnknownDestination);
    };
    let Some(out) = t.iface(ep.slot) else {
        return Verdict::Drop(DropReason::NoTxPort);
    };
    if ipv4_dec_ttl(ip) <= 1 {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    set_macs(buf, &ep.mac, &out.mac);
    Verdict::Tx { slot: ep.slot }
}
