//! The `service` stage, frame by frame: translation both ways, conntrack winning over table
//! changes, affinity, NodePort from outside with source NAT, source ranges and no backend.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use vireo_lb::{Backend, Frontend, FrontendKind, Service, ServiceSpec, ServiceTable};

use super::*;
use crate::fixtures::{tcp, two_pods_with_ct, vxlan_from_remote, IDS, POD_A, POD_B, POD_C, UPLINK};
use crate::tables::Tables;
use crate::wire::{ipv4_header_checksum, VXLAN_OVERHEAD};

const FS: usize = 2048;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 5);
const CLIENT: (Ipv4Addr, [u8; 6]) = (Ipv4Addr::new(192, 168, 100, 1), [2, 0, 0, 0, 0xcc, 1]);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn backend(ip: Ipv4Addr, local: bool, terminating: bool) -> Backend {
    Backend {
        ip,
        port: 8080,
        local,
        terminating,
        weight: 1,
    }
}

fn spec(backends: Vec<Backend>) -> ServiceSpec {
    let fe = |kind, ip, port| Frontend {
        kind,
        ip,
        port,
        proto: 6,
    };
    ServiceSpec {
        name: "default/echo".into(),
        port_name: "http".into(),
        port: 80,
        proto: 6,
        frontends: vec![
            fe(FrontendKind::ClusterIp, VIP, 80),
            fe(FrontendKind::NodePort, UPLINK.2, 30080),
            fe(FrontendKind::LoadBalancer, LB_IP, 80),
        ],
        backends,
        affinity_timeout: None,
        source_ranges: vec![(Ipv4Addr::new(192, 168, 0, 0), 16)],
        external_local: false,
    }
}

fn with_services(t: &mut Tables, specs: Vec<ServiceSpec>) {
    let s = specs
        .into_iter()
        .map(|s| Arc::new(Service::new(s, 251, 0).unwrap()))
        .collect();
    t.services = Arc::new(ServiceTable::new(s));
}

/// Runs one frame arriving on `slot`; returns its descriptor, the frame after, and counts.
fn run_one(t: &Tables, slot: u16, f: &[u8]) -> (Desc, Vec<u8>, BatchCounts) {
    let mut mem = VecFrames::new(BATCH, FS);
    let mut b = Batch::default();
    mem.write(256, f);
    assert!(b.push(Desc::new(256, f.len() as u32, slot)));
    let mut c = BatchCounts::default();
    run(&mut b, &mut mem, t, &mut c);
    let d = b.descs()[0];
    (d, mem.frame(d.addr, d.len).unwrap().to_vec(), c)
}

/// (src, sport, dst, dport) of a TCP frame (inside VXLAN if encapsulated), after checking
/// both checksums.
fn tcp_tuple(f: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let f = if f[23] == 17 { &f[VXLAN_OVERHEAD..] } else { f };
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP")
    };
    let h = ip.header();
    assert_eq!(ipv4_header_checksum(h.slice()), h.header_checksum());
    let want = t
        .to_header()
        .calc_checksum_ipv4(&h.to_header(), t.payload())
        .unwrap();
    assert_eq!(t.checksum(), want, "TCP checksum");
    (
        h.source_addr(),
        t.source_port(),
        h.destination_addr(),
        t.destination_port(),
    )
}

fn a_mac() -> (Ipv4Addr, [u8; 6]) {
    (POD_A.0, POD_A.1)
}

#[test]
fn clusterip_is_translated_both_ways_and_the_reply_carries_the_vip() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_services(&mut t, vec![spec(vec![backend(POD_B.0, true, false)])]);
    let (d, out, _) = run_one(&t, POD_A.2, &tcp(a_mac(), (VIP, POD_A.3), 40000, 80, SYN));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    assert_eq!(d.ct, CtVerdict::New);
    assert_eq!(tcp_tuple(&out), (POD_A.0, 40000, POD_B.0, 8080));
    // The backend answers its client; the client sees the VIP.
    let reply = tcp(
        (POD_B.0, POD_B.1),
        (POD_A.0, POD_B.3),
        8080,
        40000,
        SYN | ACK,
    );
    let (d, out, _) = run_one(&t, POD_B.2, &reply);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(d.ct, CtVerdict::Reply);
    assert_eq!(tcp_tuple(&out), (VIP, 80, POD_A.0, 40000));
}

#[test]
fn a_remote_backend_goes_through_the_tunnel() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_services(&mut t, vec![spec(vec![backend(POD_C, false, false)])]);
    let (d, _, _) = run_one(&t, POD_A.2, &tcp(a_mac(), (VIP, POD_A.3), 40000, 80, SYN));
    assert!(
        matches!(d.verdict, Verdict::Tx { slot } if slot == UPLINK.0),
        "{d:?}"
    );
}

#[test]
fn an_established_flow_keeps_its_backend_when_the_table_changes() {
    let (mut t, _) = two_pods_with_ct(1024, 64);
    let two = vec![backend(POD_B.0, true, false), backend(POD_C, false, false)];
    with_services(&mut t, vec![spec(two.clone())]);
    let mut first = Vec::new();
    for port in 40000..40032 {
        let (_, out, _) = run_one(&t, POD_A.2, &tcp(a_mac(), (VIP, POD_A.3), port, 80, SYN));
        first.push(tcp_tuple(&out).2);
    }
    assert!(
        first.contains(&POD_B.0) && first.contains(&POD_C),
        "spread: {first:?}"
    );
    // POD_B starts terminating: it keeps its flows, and new ones all go to POD_C.
    with_services(
        &mut t,
        vec![spec(vec![
            backend(POD_B.0, true, true),
            backend(POD_C, false, false),
        ])],
    );
    for (i, port) in (40000..40032).enumerate() {
        let (_, out, _) = run_one(&t, POD_A.2, &tcp(a_mac(), (VIP, POD_A.3), port, 80, ACK));
        assert_eq!(tcp_tuple(&out).2, first[i], "flow {port} moved");
    }
    for port in 50000..50016 {
        let (_, out, _) = run_one(&t, POD_A.2, &tcp(a_mac(), (VIP, POD_A.3), port, 80, SYN));
        assert_eq!(tcp_tuple(&out).2, POD_C);
    }
}

#[test]
fn affinity_pins_a_client_to_one_backend() {
    let (mut t, _) = two_pods_with_ct(1024, 64);
    let mut s = spec(vec![
        backend(POD_B.0, true, false),
        backend(POD_C, false, false),
    ]);
    s.affinity_timeout = Some(10800);
    with_services(&mut t, vec![s]);
    let mut seen = std::collections::HashSet::new();
    for port in 40000..40032 {
        let (_, out, _) = run_one(&t, POD_A.2, &tcp(a_mac(), (VIP, POD_A.3), port, 80, SYN));
        seen.insert(tcp_tuple(&out).2);
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[test]
fn no_backend_is_answered_with_port_unreachable_from_the_vip() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_services(&mut t, vec![spec(vec![backend(POD_B.0, true, true)])]);
    let (d, out, c) = run_one(&t, POD_A.2, &tcp(a_mac(), (VIP, POD_A.3), 40000, 80, SYN));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(c.drops[DropReason::NoBackend as usize], 1);
    assert_eq!(&out[0..6], &POD_A.1);
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().source_addr(), VIP);
    assert_eq!(ip.header().destination_addr(), POD_A.0);
    let icmp = ip.payload().payload;
    assert_eq!((icmp[0], icmp[1]), (3, 3), "port unreachable");
}

#[test]
fn nodeport_from_outside_is_source_natted_and_answered_through_the_uplink() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_services(&mut t, vec![spec(vec![backend(POD_B.0, true, false)])]);
    let syn = tcp(CLIENT, (UPLINK.2, UPLINK.1), 45000, 30080, SYN);
    let (d, out, _) = run_one(&t, UPLINK.0, &syn);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    let (src, sport, dst, dport) = tcp_tuple(&out);
    assert_eq!((src, dst, dport), (UPLINK.2, POD_B.0, 8080));
    assert!(sport >= 61000);
    let reply = tcp(
        (POD_B.0, POD_B.1),
        (UPLINK.2, POD_B.3),
        8080,
        sport,
        SYN | ACK,
    );
    let (d, out, _) = run_one(&t, POD_B.2, &reply);
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    assert_eq!(&out[0..6], &CLIENT.1, "back to the client's MAC");
    assert_eq!(&out[6..12], &UPLINK.1);
    assert_eq!(tcp_tuple(&out), (UPLINK.2, 30080, CLIENT.0, 45000));
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_local_backends() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    let mut s = spec(vec![
        backend(POD_B.0, true, false),
        backend(POD_C, false, false),
    ]);
    s.external_local = true;
    with_services(&mut t, vec![s]);
    for port in 45000..45016 {
        let syn = tcp(CLIENT, (UPLINK.2, UPLINK.1), port, 30080, SYN);
        let (_, out, _) = run_one(&t, UPLINK.0, &syn);
        assert_eq!(tcp_tuple(&out), (CLIENT.0, port, POD_B.0, 8080));
    }
}

#[test]
fn load_balancer_source_ranges_are_enforced() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_services(&mut t, vec![spec(vec![backend(POD_B.0, true, false)])]);
    let inside = tcp(CLIENT, (LB_IP, UPLINK.1), 45000, 80, SYN);
    let (d, _, _) = run_one(&t, UPLINK.0, &inside);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    let outside = tcp(
        (Ipv4Addr::new(10, 9, 9, 9), CLIENT.1),
        (LB_IP, UPLINK.1),
        45000,
        80,
        SYN,
    );
    let (d, _, _) = run_one(&t, UPLINK.0, &outside);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::LbSourceRange));
}

#[test]
fn a_forged_source_is_not_translated() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_services(&mut t, vec![spec(vec![backend(POD_B.0, true, false)])]);
    let forged = tcp((POD_C, POD_A.1), (VIP, POD_A.3), 40000, 80, SYN);
    let (d, _, _) = run_one(&t, POD_A.2, &forged);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::InvalidSource));
}

#[test]
fn a_remote_backend_answers_an_outside_client_through_this_node() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_services(&mut t, vec![spec(vec![backend(POD_C, false, false)])]);
    let syn = tcp(CLIENT, (UPLINK.2, UPLINK.1), 45000, 30080, SYN);
    let (d, out, _) = run_one(&t, UPLINK.0, &syn);
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 }, "encapsulated");
    let (src, sport, dst, _) = tcp_tuple(&out);
    assert_eq!((src, dst), (UPLINK.2, POD_C));
    // The backend's node sends the reply back through the tunnel, to this node's address.
    let reply = tcp(
        (POD_C, [2, 0, 0, 0, 0xc0, 1]),
        (UPLINK.2, UPLINK.1),
        8080,
        sport,
        SYN | ACK,
    );
    let (d, out, _) = run_one(&t, UPLINK.0, &vxlan_from_remote(&reply, IDS[2]));
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    assert_eq!(d.ct, CtVerdict::Reply);
    assert_eq!(&out[0..6], &CLIENT.1);
    assert_eq!(tcp_tuple(&out), (UPLINK.2, 30080, CLIENT.0, 45000));
}

#[test]
fn truncated_or_odd_packets_to_a_vip_are_dropped_or_passed_not_translated() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_services(&mut t, vec![spec(vec![backend(POD_B.0, true, false)])]);
    let mut f = tcp(a_mac(), (VIP, POD_A.3), 40000, 80, SYN);
    // Claim a total length that stops inside the TCP header.
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = crate::wire::ipv4_header_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let (d, _, _) = run_one(&t, POD_A.2, &f);
    assert!(matches!(d.verdict, Verdict::Drop(_)), "{d:?}");
    assert!(!d.nat);
}

#[test]
fn a_clusterip_udp_flow_records_its_first_reply_once() {
    use crate::flows::FlowEvent;
    let (mut t, _) = two_pods_with_ct(64, 64);
    let mut s = spec(vec![backend(POD_B.0, true, false)]);
    s.proto = 17;
    for f in &mut s.frontends {
        f.proto = 17;
    }
    with_services(&mut t, vec![s]);
    let udp = |src: (Ipv4Addr, [u8; 6]), dst: (Ipv4Addr, [u8; 6]), sp: u16, dp: u16| {
        let b = etherparse::PacketBuilder::ethernet2(src.1, dst.1)
            .ipv4(src.0.octets(), dst.0.octets(), 64)
            .udp(sp, dp);
        let mut out = Vec::new();
        b.write(&mut out, b"q").unwrap();
        out
    };
    let (d, ..) = run_one(&t, POD_A.2, &udp(a_mac(), (VIP, POD_A.3), 40000, 80));
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_B.2 }, CtVerdict::New)
    );
    let reply = udp((POD_B.0, POD_B.1), (POD_A.0, POD_B.3), 8080, 40000);
    let (d, ..) = run_one(&t, POD_B.2, &reply);
    assert_eq!((d.ct, d.first_reply), (CtVerdict::Reply, true));
    let (d, ..) = run_one(&t, POD_B.2, &reply);
    assert_eq!((d.ct, d.first_reply), (CtVerdict::Reply, false));
    let mut r = Vec::new();
    t.flows.drain_into(10, &mut r);
    let ev: Vec<FlowEvent> = r.iter().map(|f| f.event).collect();
    assert_eq!(ev, [FlowEvent::New, FlowEvent::FirstReply]);
    // Recorded as the client sees them: to the backend, and back from the VIP.
    assert_eq!((r[0].dst, r[0].dport), (POD_B.0, 8080));
    assert_eq!((r[1].src, r[1].sport, r[1].reply), (VIP, 80, true));
}

/// A client port reused after its TCP connection to a backend closed: the new SYN chooses
/// its backend anew (the kernel's conntrack under kube-proxy takes it for a new connection),
/// so a backend removed meanwhile is not asked again; while the old one lives, Maglev's hash of
/// the tuple gives it back. An open connection's retransmitted SYN keeps its backend.
#[test]
fn a_syn_reusing_a_closed_connections_port_chooses_its_backend_anew() {
    const RST: u8 = 0x04;
    let (mut t, _) = two_pods_with_ct(1024, 64);
    let two = vec![backend(POD_B.0, true, false), backend(POD_C, false, false)];
    with_services(&mut t, vec![spec(two)]);
    let to_vip = |port, flags| tcp(a_mac(), (VIP, POD_A.3), port, 80, flags);
    // A client port whose flow goes to POD_B.
    let port = (40000..40064)
        .find(|&p| tcp_tuple(&run_one(&t, POD_A.2, &to_vip(p, SYN)).1).2 == POD_B.0)
        .expect("some flow goes to POD_B");
    // Retransmitted, and reused after a close while POD_B lives: the same backend.
    let (d, out, _) = run_one(&t, POD_A.2, &to_vip(port, SYN));
    assert_eq!((d.ct, tcp_tuple(&out).2), (CtVerdict::Established, POD_B.0));
    run_one(&t, POD_A.2, &to_vip(port, RST));
    let (d, out, _) = run_one(&t, POD_A.2, &to_vip(port, SYN));
    assert_eq!((d.ct, tcp_tuple(&out).2), (CtVerdict::New, POD_B.0));
    // POD_B goes; the open connection keeps it (its packets are POD_B's).
    with_services(&mut t, vec![spec(vec![backend(POD_C, false, false)])]);
    let (_, out, _) = run_one(&t, POD_A.2, &to_vip(port, ACK));
    assert_eq!(
        tcp_tuple(&out).2,
        POD_B.0,
        "an open connection keeps its backend"
    );
    // Closed, then the port reused: POD_C, the backend there is.
    run_one(&t, POD_A.2, &to_vip(port, RST));
    let (d, out, _) = run_one(&t, POD_A.2, &to_vip(port, SYN));
    assert_eq!(d.ct, CtVerdict::New);
    assert!(
        matches!(d.verdict, Verdict::Tx { slot } if slot == UPLINK.0),
        "{d:?}"
    );
    assert_eq!(tcp_tuple(&out).2, POD_C, "not the removed backend");
    // The new connection's reply comes back through its own revnat entry, from the VIP.
    let reply = tcp(
        (POD_C, [2, 0, 0, 0, 0xc0, 1]),
        (POD_A.0, POD_A.1),
        8080,
        port,
        SYN | ACK,
    );
    let (d, out, _) = run_one(&t, UPLINK.0, &vxlan_from_remote(&reply, IDS[2]));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!((d.ct, d.first_reply), (CtVerdict::Reply, true));
    assert_eq!(tcp_tuple(&out), (VIP, 80, POD_A.0, port));
}
