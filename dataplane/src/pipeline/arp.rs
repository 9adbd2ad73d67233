//! Stage `arp`: answers a pod's ARP request for its gateway with the MAC of the host-side veth it
//! came in on, like Cilium's ARP responder. On the host pair every request is answered the same
//! way: the node's stack routes pods and services to `vireo_host`, and each next hop it asks for
//! there is the dataplane. The reply is built in place with smoltcp's wire types
//! and sent back out the same interface.

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame};

use super::{for_each_pending, Batch, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::Tables;
use crate::wire::ETH_HLEN;

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, _c: &mut BatchCounts) {
    for_each_pending(
        batch,
        frames,
        |k| k == Kind::Arp,
        |d, buf| {
            d.verdict = respond(buf, d.in_slot, t);
        },
    );
}

fn respond(buf: &mut [u8], in_slot: u16, t: &Tables) -> Verdict {
    let Ok(pkt) = ArpPacket::new_checked(&buf[ETH_HLEN..]) else {
        return Verdict::Drop(DropReason::MalformedArp);
    };
    let Ok(ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    }) = ArpRepr::parse(&pkt)
    else {
        return Verdict::Drop(DropReason::MalformedArp);
    };
    let host = t.is_host_slot(in_slot) && !t.is_local_host(u32::from(target_protocol_addr));
    if operation != ArpOperation::Request || !(host || t.is_gateway(target_protocol_addr)) {
        return Verdict::Drop(DropReason::ArpNotForGateway);
    }
    let Some(iface) = t.iface(in_slot) else {
        return Verdict::Drop(DropReason::NoTxPort);
    };
    let ours = EthernetAddress(iface.mac);
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: ours,
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let mut eth = EthernetFrame::new_unchecked(&mut *buf);
    eth.set_dst_addr(source_hardware_addr);
    eth.set_src_addr(ours);
    reply.emit(&mut ArpPacket::new_unchecked(&mut buf[ETH_HLEN..]));
    Verdict::Tx { slot: in_slot }
}
