//! Frames and tables for tests and benchmarks: two pods on one node.

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;

use crate::tables::{Endpoint, IfRole, Interface, Mac, Tables};

/// Pod A: IP, MAC, host-side slot and host-side MAC.
pub const POD_A: (Ipv4Addr, Mac, u16, Mac) = (
    Ipv4Addr::new(10, 244, 1, 10),
    [0x02, 0, 0, 0, 0x0a, 0x01],
    0,
    [0x02, 0, 0, 0, 0xa0, 0x01],
);
/// Pod B: IP, MAC, host-side slot and host-side MAC.
pub const POD_B: (Ipv4Addr, Mac, u16, Mac) = (
    Ipv4Addr::new(10, 244, 1, 11),
    [0x02, 0, 0, 0, 0x0b, 0x01],
    1,
    [0x02, 0, 0, 0, 0xb0, 0x01],
);
/// The pods' gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

/// Tables with pods A and B.
pub fn two_pods() -> Tables {
    let mut t = Tables {
        gateways: vec![GATEWAY],
        ..Default::default()
    };
    for (i, (ip, mac, slot, host_mac)) in [POD_A, POD_B].into_iter().enumerate() {
        t.set_iface(Interface {
            slot,
            name: format!("veth{i}"),
            mac: host_mac,
            role: IfRole::Pod,
        });
        t.set_endpoint(Endpoint { ip, mac, slot });
    }
    t
}

/// A UDP frame from pod A (as the pod sends it: to its gateway's MAC) to `dst`.
pub fn udp_from_a(dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_A.1, POD_A.3)
        .ipv4(POD_A.0.octets(), dst.octets(), ttl)
        .udp(40000, 7);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// An ARP request from pod A for `target`.
pub fn arp_request_from_a(target: Ipv4Addr) -> Vec<u8> {
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    };
    let mut buf = vec![0u8; 42];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(EthernetAddress::BROADCAST);
    eth.set_src_addr(EthernetAddress(POD_A.1));
    eth.set_ethertype(EthernetProtocol::Arp);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(POD_A.1),
        source_protocol_addr: POD_A.0,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut buf[14..]));
    buf
}
