//! The `masquerade` stage, frame by frame: pods' flows to the world source-NATed to the node
//! and their replies translated back; ICMP echo and errors; non-masquerade CIDRs; exhaustion,
//! collisions, packets with no entry, expiry, policy.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use vireo_conntrack::ManualClock;
use vireo_policy::{
    Action, Compiler, Entity, Identity, IpCacheEntry, Origin, Peer, Policy, Rule, Selector,
};

use super::*;
use crate::fixtures::{tcp, two_pods_with_ct, IDS, POD_A, POD_B, UPLINK};
use crate::tables::{Masquerade, Tables};
use crate::wire::{inet_checksum, ipv4_checksum_ok, quoted, ETH_HLEN};

const FS: usize = 2048;
const WORLD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const NATIVE: Ipv4Addr = Ipv4Addr::new(172, 16, 5, 5);
const NEXT_HOP: [u8; 6] = [2, 0, 0, 0, 0xfe, 1];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;

fn world_tables(ports: (u16, u16)) -> (Tables, Arc<ManualClock>) {
    let (mut t, clock) = two_pods_with_ct(1024, 1024);
    t.ipcache.insert(
        ipnet::Ipv4Net::default(),
        IpCacheEntry {
            identity: Identity::WORLD,
            tunnel: None,
        },
    );
    t.masq = Some(Arc::new(Masquerade {
        ports,
        cluster: vec!["10.244.0.0/16".parse().unwrap()],
        non_masquerade: vec!["172.16.0.0/12".parse().unwrap()],
        next_hop_mac: Some(NEXT_HOP),
    }));
    (t, clock)
}

fn range() -> (u16, u16) {
    (61000, 65535)
}

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

/// (src, sport, dst, dport, ttl) of a TCP or UDP frame, after checking its checksums.
fn tuple(f: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16, u8) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    assert!(ipv4_checksum_ok(h.slice()), "IPv4 checksum");
    let (sport, dport) = match p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t
                .to_header()
                .calc_checksum_ipv4(&h.to_header(), t.payload())
                .unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            (t.source_port(), t.destination_port())
        }
        Some(TransportSlice::Udp(u)) => {
            let want = u
                .to_header()
                .calc_checksum_ipv4(&h.to_header(), u.payload())
                .unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum");
            (u.source_port(), u.destination_port())
        }
        _ => panic!("neither TCP nor UDP"),
    };
    (h.source_addr(), sport, h.destination_addr(), dport, h.ttl())
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, b"hello world").unwrap();
    out
}

/// Pod A's UDP datagram to `dst`.
fn udp_from_a(dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    udp(POD_A.0, dst, sport, dport, (POD_A.3, POD_A.1))
}

/// A UDP datagram from the world server to the node's address, arriving on the uplink.
fn udp_to_node(sport: u16, dport: u16) -> Vec<u8> {
    udp(WORLD, UPLINK.2, sport, dport, (NEXT_HOP, UPLINK.1))
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, typ: u8, id: u16, macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let mut icmp = vec![typ, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 7];
    icmp.extend_from_slice(b"ping payload");
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src.octets(), dst.octets(), 64);
    let mut out = Vec::new();
    b.write(&mut out, etherparse::IpNumber(1), &icmp).unwrap();
    out
}

/// An ICMP error of `typ`/`code` from `from` to `to`, quoting `offending` (an Ethernet frame).
fn icmp_error_about(from: Ipv4Addr, to: Ipv4Addr, typ: u8, code: u8, offending: &[u8]) -> Vec<u8> {
    let mut icmp = vec![typ, code, 0, 0, 0, 0, 0x05, 0x78];
    icmp.extend_from_slice(&offending[ETH_HLEN..ETH_HLEN + 28]);
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let b = PacketBuilder::ethernet2(NEXT_HOP, UPLINK.1).ipv4(from.octets(), to.octets(), 64);
    let mut out = Vec::new();
    b.write(&mut out, etherparse::IpNumber(1), &icmp).unwrap();
    out
}

/// Pod A's UDP flow 40000 -> WORLD:53: its translated source port.
fn open_udp(t: &Tables) -> u16 {
    let (d, out, _) = run_one(t, POD_A.2, &udp_from_a(WORLD, 40000, 53));
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 }, "{d:?}");
    tuple(&out).1
}

#[test]
fn a_new_tcp_flow_leaves_from_the_node_and_its_reply_reaches_the_pod() {
    let (t, _) = world_tables(range());
    let syn = tcp((POD_A.0, POD_A.1), (WORLD, POD_A.3), 40000, 80, SYN);
    let (d, out, _) = run_one(&t, POD_A.2, &syn);
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    assert_eq!(d.ct, CtVerdict::New);
    let (src, sport, dst, dport, ttl) = tuple(&out);
    assert_eq!((src, dst, dport, ttl), (UPLINK.2, WORLD, 80, 63));
    assert!((61000..=65535).contains(&sport), "{sport}");
    assert_eq!(&out[0..6], &NEXT_HOP, "to the next hop");
    assert_eq!(&out[6..12], &UPLINK.1, "from the uplink");
    // The world answers the node; the pod gets it from the world server.
    let synack = tcp(
        (WORLD, NEXT_HOP),
        (UPLINK.2, UPLINK.1),
        80,
        sport,
        SYN | ACK,
    );
    let (d, out, _) = run_one(&t, UPLINK.0, &synack);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(d.ct, CtVerdict::Reply);
    assert_eq!(tuple(&out), (WORLD, 80, POD_A.0, 40000, 63));
    assert_eq!(&out[0..6], &POD_A.1);
    // The next packet of the pod is the same flow, on the same port.
    let ack = tcp((POD_A.0, POD_A.1), (WORLD, POD_A.3), 40000, 80, ACK);
    let (d, out, _) = run_one(&t, POD_A.2, &ack);
    assert_eq!(d.ct, CtVerdict::Established);
    assert_eq!(tuple(&out).1, sport);
}

#[test]
fn udp_is_translated_both_ways() {
    let (t, _) = world_tables(range());
    let port = open_udp(&t);
    let (d, out, _) = run_one(&t, UPLINK.0, &udp_to_node(53, port));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(tuple(&out), (WORLD, 53, POD_A.0, 40000, 63));
}

#[test]
fn icmp_echo_gets_an_identifier_from_the_range_and_the_reply_gets_the_pods_back() {
    let (t, _) = world_tables(range());
    let req = echo(POD_A.0, WORLD, 8, 0x1234, (POD_A.3, POD_A.1));
    let (d, out, _) = run_one(&t, POD_A.2, &req);
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    let ip = &out[ETH_HLEN..];
    assert!(ipv4_checksum_ok(&ip[..20]));
    assert_eq!(&ip[12..20], &[192, 168, 100, 10, 203, 0, 113, 10]);
    let id = u16::from_be_bytes([ip[24], ip[25]]);
    assert!((61000..=65535).contains(&id), "{id}");
    assert_eq!(inet_checksum(&ip[20..]), 0, "ICMP checksum");
    let rep = echo(WORLD, UPLINK.2, 0, id, (NEXT_HOP, UPLINK.1));
    let (d, out, _) = run_one(&t, UPLINK.0, &rep);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    let ip = &out[ETH_HLEN..];
    assert_eq!(&ip[12..20], &[203, 0, 113, 10, 10, 244, 1, 10]);
    assert_eq!(u16::from_be_bytes([ip[24], ip[25]]), 0x1234);
    assert_eq!(inet_checksum(&ip[20..]), 0, "ICMP checksum");
    assert!(ipv4_checksum_ok(&ip[..20]));
}

#[test]
fn icmp_errors_about_a_masqueraded_flow_reach_its_pod_with_the_quote_translated_back() {
    let (t, _) = world_tables(range());
    let port = open_udp(&t);
    // What left the node: node:port -> WORLD:53; a router says fragmentation needed, the
    // server says port unreachable.
    let sent = udp(UPLINK.2, WORLD, port, 53, (UPLINK.1, NEXT_HOP));
    for (from, code) in [(ROUTER, 4u8), (WORLD, 3)] {
        let err = icmp_error_about(from, UPLINK.2, 3, code, &sent);
        let (d, out, _) = run_one(&t, UPLINK.0, &err);
        assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 }, "{d:?}");
        assert_eq!(d.ct, CtVerdict::Related);
        let ip = &out[ETH_HLEN..];
        assert!(ipv4_checksum_ok(&ip[..20]));
        assert_eq!(&ip[12..16], &from.octets(), "the error's source is kept");
        assert_eq!(&ip[16..20], &POD_A.0.octets());
        assert_eq!(inet_checksum(&ip[20..]), 0, "ICMP checksum");
        let q = quoted(ip).unwrap().unwrap();
        assert_eq!(
            (q.src, q.sport, q.dst, q.dport),
            (u32::from(POD_A.0), 40000, u32::from(WORLD), 53)
        );
        assert!(ipv4_checksum_ok(&ip[28..48]), "quoted header checksum");
    }
    // About a port no flow holds: dropped, counted.
    let other = udp(UPLINK.2, WORLD, port ^ 1, 53, (UPLINK.1, NEXT_HOP));
    let (d, _, _) = run_one(
        &t,
        UPLINK.0,
        &icmp_error_about(ROUTER, UPLINK.2, 11, 0, &other),
    );
    assert_eq!(d.verdict, Verdict::Drop(DropReason::MasqNoEntry));
}

#[test]
fn a_non_masquerade_cidr_leaves_untranslated() {
    let (t, _) = world_tables(range());
    let (d, out, _) = run_one(&t, POD_A.2, &udp_from_a(NATIVE, 40000, 53));
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    assert!(!d.nat);
    assert_eq!(tuple(&out), (POD_A.0, 40000, NATIVE, 53, 63));
    assert_eq!(&out[0..6], &NEXT_HOP);
    // Other protocols too (they are not translated, so need no port).
    let mut gre = udp_from_a(NATIVE, 1, 2);
    gre[ETH_HLEN + 9] = 47;
    crate::fixtures::fix_ip_checksum(&mut gre, ETH_HLEN);
    let (d, _, _) = run_one(&t, POD_A.2, &gre);
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
}

#[test]
fn other_protocols_to_the_world_are_dropped_and_counted() {
    let (t, _) = world_tables(range());
    let mut gre = udp_from_a(WORLD, 1, 2);
    gre[ETH_HLEN + 9] = 47;
    crate::fixtures::fix_ip_checksum(&mut gre, ETH_HLEN);
    let (d, _, c) = run_one(&t, POD_A.2, &gre);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::MasqUnsupported));
    assert_eq!(c.drops[DropReason::MasqUnsupported as usize], 1);
}

#[test]
fn an_exhausted_range_drops_new_flows_as_snat_no_port() {
    let (t, _) = world_tables((61000, 61000));
    let _ = open_udp(&t);
    let from_b = udp(POD_B.0, WORLD, 40000, 53, (POD_B.3, POD_B.1));
    let (d, _, c) = run_one(&t, POD_B.2, &from_b);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::SnatNoPort));
    assert_eq!(c.drops[DropReason::SnatNoPort as usize], 1);
    // Another peer is another key: the same port serves it.
    let (d, out, _) = run_one(
        &t,
        POD_B.2,
        &udp(POD_B.0, ROUTER, 40000, 53, (POD_B.3, POD_B.1)),
    );
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    assert_eq!(tuple(&out).1, 61000);
}

#[test]
fn two_pods_on_the_same_source_port_get_different_ports() {
    let (t, _) = world_tables((61000, 61001));
    // A destination port for which both pods' flows hash to the same first port.
    let key = |src: Ipv4Addr, dport: u16| vireo_conntrack::Key {
        src: u32::from(src),
        dst: u32::from(WORLD),
        sport: 40000,
        dport,
        proto: 17,
        dir: vireo_conntrack::Dir::Egress,
    };
    let first = |k| super::snat::candidate((61000, 61001), super::masquerade::port_hash(&k), 0);
    let dport = (1..2000)
        .find(|p| first(key(POD_A.0, *p)) == first(key(POD_B.0, *p)))
        .unwrap();
    let (_, a, _) = run_one(&t, POD_A.2, &udp_from_a(WORLD, 40000, dport));
    let (d, b, _) = run_one(
        &t,
        POD_B.2,
        &udp(POD_B.0, WORLD, 40000, dport, (POD_B.3, POD_B.1)),
    );
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    let (pa, pb) = (tuple(&a).1, tuple(&b).1);
    assert_ne!(pa, pb);
    // Each reply reaches its own pod.
    for (port, pod) in [(pa, POD_A), (pb, POD_B)] {
        let (d, out, _) = run_one(&t, UPLINK.0, &udp_to_node(dport, port));
        assert_eq!(d.verdict, Verdict::Tx { slot: pod.2 });
        assert_eq!(tuple(&out).2, pod.0);
    }
}

#[test]
fn packets_in_the_range_without_an_entry_are_dropped_and_counted() {
    let (t, _) = world_tables(range());
    let frames = [
        udp_to_node(53, 61500),
        tcp((WORLD, NEXT_HOP), (UPLINK.2, UPLINK.1), 80, 62000, SYN),
        tcp((WORLD, NEXT_HOP), (UPLINK.2, UPLINK.1), 80, 65535, ACK),
        echo(WORLD, UPLINK.2, 0, 61000, (NEXT_HOP, UPLINK.1)),
    ];
    for f in &frames {
        let (d, _, c) = run_one(&t, UPLINK.0, f);
        assert_eq!(d.verdict, Verdict::Drop(DropReason::MasqNoEntry));
        assert_eq!(c.drops[DropReason::MasqNoEntry as usize], 1);
    }
    // Outside the range it is no masquerade traffic (and nothing else's).
    let (d, _, _) = run_one(&t, UPLINK.0, &udp_to_node(53, 5000));
    assert_eq!(d.verdict, Verdict::Drop(DropReason::UnknownDestination));
    // A reply whose port belongs to another peer's flow is no reply either.
    let port = open_udp(&t);
    let wrong = udp(ROUTER, UPLINK.2, 53, port, (NEXT_HOP, UPLINK.1));
    let (d, _, _) = run_one(&t, UPLINK.0, &wrong);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::MasqNoEntry));
}

#[test]
fn expired_flows_take_no_replies_and_free_their_port() {
    let (t, clock) = world_tables((61000, 61000));
    let port = open_udp(&t);
    clock.advance(61); // non_tcp lifetime: 60 s
    let (d, _, _) = run_one(&t, UPLINK.0, &udp_to_node(53, port));
    assert_eq!(d.verdict, Verdict::Drop(DropReason::MasqNoEntry));
    // The port is free for the next flow.
    let from_b = udp(POD_B.0, WORLD, 40000, 53, (POD_B.3, POD_B.1));
    let (d, out, _) = run_one(&t, POD_B.2, &from_b);
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    assert_eq!(tuple(&out).1, 61000);
    let (d, out, _) = run_one(&t, UPLINK.0, &udp_to_node(53, 61000));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    assert_eq!(tuple(&out).2, POD_B.0);
}

#[test]
fn a_reset_closes_the_flow_within_the_close_lifetime() {
    let (t, clock) = world_tables(range());
    let syn = tcp((POD_A.0, POD_A.1), (WORLD, POD_A.3), 40000, 80, SYN);
    let (_, out, _) = run_one(&t, POD_A.2, &syn);
    let port = tuple(&out).1;
    let rst = tcp((WORLD, NEXT_HOP), (UPLINK.2, UPLINK.1), 80, port, RST | ACK);
    let (d, _, _) = run_one(&t, UPLINK.0, &rst);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    clock.advance(11); // tcp_close: 10 s
    let late = tcp((WORLD, NEXT_HOP), (UPLINK.2, UPLINK.1), 80, port, ACK);
    let (d, _, _) = run_one(&t, UPLINK.0, &late);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::MasqNoEntry));
}

/// A pod reusing its source port after the connection was reset: the SYN starts a new flow
/// (new entries, recorded as new), on the same node port while that is free, and the world's
/// answer to it reaches the pod.
#[test]
fn a_syn_reusing_a_reset_connections_port_is_a_new_flow_on_the_same_node_port() {
    let (t, _) = world_tables(range());
    let syn = tcp((POD_A.0, POD_A.1), (WORLD, POD_A.3), 40000, 80, SYN);
    let (_, out, _) = run_one(&t, POD_A.2, &syn);
    let port = tuple(&out).1;
    let rst = tcp((WORLD, NEXT_HOP), (UPLINK.2, UPLINK.1), 80, port, RST | ACK);
    run_one(&t, UPLINK.0, &rst);
    let (d, out, _) = run_one(&t, POD_A.2, &syn);
    assert_eq!(
        (d.ct, d.verdict),
        (CtVerdict::New, Verdict::Tx { slot: UPLINK.0 })
    );
    assert_eq!(tuple(&out).1, port, "the same node port");
    let synack = tcp((WORLD, NEXT_HOP), (UPLINK.2, UPLINK.1), 80, port, SYN | ACK);
    let (d, out, _) = run_one(&t, UPLINK.0, &synack);
    assert_eq!((d.ct, d.first_reply), (CtVerdict::Reply, true));
    assert_eq!(tuple(&out), (WORLD, 80, POD_A.0, 40000, 63));
    // A retransmitted SYN of the open connection is no new flow.
    let (d, _, _) = run_one(&t, POD_A.2, &syn);
    assert_eq!(d.ct, CtVerdict::Established);
}

/// Pod A (app=a) may send only to `peer`.
fn a_egress_only_to(t: &mut Tables, peer: Peer) {
    let origin = |r: &str| Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: "default/p".into(),
        rule: r.into(),
    };
    let mut c = Compiler::new();
    c.set_identity(Identity(IDS[0]), crate::fixtures::app_labels("a"));
    c.set_identity(Identity(IDS[1]), crate::fixtures::app_labels("b"));
    let p = Policy {
        origin: origin(""),
        subject: Selector::label("k8s:app", "a"),
        node_selector: None,
        enforce_ingress: false,
        enforce_egress: true,
        ingress: Vec::new(),
        egress: vec![Rule {
            action: Action::Allow,
            peers: vec![peer],
            requires: Vec::new(),
            ports: Vec::new(),
            dns: Vec::new(),
            origin: origin("egress[0]"),
        }],
        warnings: Vec::new(),
    };
    c.set_policies("default/p", vec![p]);
    t.policy = Arc::new(c.tables());
}

#[test]
fn egress_policy_decides_and_a_policy_denying_world_blocks_it() {
    let (mut t, _) = world_tables(range());
    a_egress_only_to(&mut t, Peer::Entity(Entity::Cluster));
    let (d, _, c) = run_one(&t, POD_A.2, &udp_from_a(WORLD, 40000, 53));
    assert_eq!(d.verdict, Verdict::Drop(DropReason::PolicyDenied));
    assert_eq!(c.drops[DropReason::PolicyDenied as usize], 1);
    // Allowing world lets it out, and revoking it cuts the established flow.
    a_egress_only_to(&mut t, Peer::Entity(Entity::World));
    t.revision = 2;
    let port = open_udp(&t);
    a_egress_only_to(&mut t, Peer::Entity(Entity::Cluster));
    t.revision = 3;
    let (d, _, _) = run_one(&t, POD_A.2, &udp_from_a(WORLD, 40000, 53));
    assert_eq!(d.verdict, Verdict::Drop(DropReason::PolicyDenied));
    // Replies of the flow are not judged.
    let (d, _, _) = run_one(&t, UPLINK.0, &udp_to_node(53, port));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
}

#[test]
fn ttl_running_out_is_answered_from_the_gateway_and_makes_no_entry() {
    let (t, _) = world_tables((61000, 61000));
    let mut f = udp_from_a(WORLD, 40000, 53);
    f[ETH_HLEN + 8] = 1;
    crate::fixtures::fix_ip_checksum(&mut f, ETH_HLEN);
    let (d, out, c) = run_one(&t, POD_A.2, &f);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(c.drops[DropReason::TtlExceeded as usize], 1);
    assert_eq!(&out[ETH_HLEN + 12..ETH_HLEN + 16], &[10, 244, 1, 1]);
    // The single port is still free.
    let from_b = udp(POD_B.0, WORLD, 40000, 53, (POD_B.3, POD_B.1));
    let (d, _, _) = run_one(&t, POD_B.2, &from_b);
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
}

#[test]
fn without_masquerade_or_a_next_hop_the_world_is_not_reached() {
    let (mut t, _) = world_tables(range());
    let mut m = (**t.masq.as_ref().unwrap()).clone();
    m.next_hop_mac = None;
    t.masq = Some(Arc::new(m));
    let (d, _, _) = run_one(&t, POD_A.2, &udp_from_a(WORLD, 40000, 53));
    assert_eq!(d.verdict, Verdict::Drop(DropReason::NoNeighbor));
    t.masq = None;
    let (d, _, _) = run_one(&t, POD_A.2, &udp_from_a(WORLD, 40000, 53));
    assert_eq!(d.verdict, Verdict::Drop(DropReason::UnknownDestination));
}

#[test]
fn pods_addresses_and_the_cluster_are_never_masqueraded() {
    let (t, _) = world_tables(range());
    // A forged source to the world: invalid_source, not translated.
    let forged = udp(
        Ipv4Addr::new(10, 244, 1, 99),
        WORLD,
        1,
        53,
        (POD_A.3, POD_A.1),
    );
    let (d, _, _) = run_one(&t, POD_A.2, &forged);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::InvalidSource));
    // A pod CIDR address that is no pod: unknown, never out of the uplink.
    let (d, _, _) = run_one(
        &t,
        POD_A.2,
        &udp_from_a(Ipv4Addr::new(10, 244, 7, 7), 1, 53),
    );
    assert_eq!(d.verdict, Verdict::Drop(DropReason::UnknownDestination));
    // Pod to pod is untouched.
    let (d, out, _) = run_one(&t, POD_A.2, &udp_from_a(POD_B.0, 40000, 53));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    assert_eq!(tuple(&out).0, POD_A.0);
}

#[test]
fn a_pods_icmp_error_about_a_world_reply_is_translated_to_the_node() {
    let (t, _) = world_tables(range());
    let port = open_udp(&t);
    // The reply as the pod got it: WORLD:53 -> A:40000; the pod says port unreachable.
    let got = udp(WORLD, POD_A.0, 53, 40000, (POD_A.1, POD_A.3));
    let mut err = icmp_error_about(POD_A.0, WORLD, 3, 3, &got);
    err[0..6].copy_from_slice(&POD_A.3);
    err[6..12].copy_from_slice(&POD_A.1);
    let (d, out, _) = run_one(&t, POD_A.2, &err);
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 }, "{d:?}");
    let ip = &out[ETH_HLEN..];
    assert_eq!(&ip[12..16], &UPLINK.2.octets());
    assert_eq!(inet_checksum(&ip[20..]), 0);
    let q = quoted(ip).unwrap().unwrap();
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport),
        (u32::from(WORLD), 53, u32::from(UPLINK.2), port)
    );
}

/// Flow records of masqueraded flows: an ICMP echo's first packet and, through the
/// masquerade's own reply path, its first reply once (the second reply gets none); a UDP
/// flow's first packet; an ICMP error about that flow (related) is no flow event of its own.
#[test]
fn a_masqueraded_flow_records_its_first_reply_once_and_a_related_error_none() {
    use crate::flows::FlowEvent;
    let (t, _) = world_tables(range());
    let req = echo(POD_A.0, WORLD, 8, 0x1234, (POD_A.3, POD_A.1));
    let (_, out, _) = run_one(&t, POD_A.2, &req);
    let id = u16::from_be_bytes([out[ETH_HLEN + 24], out[ETH_HLEN + 25]]);
    let rep = echo(WORLD, UPLINK.2, 0, id, (NEXT_HOP, UPLINK.1));
    for first in [true, false] {
        let (d, _, _) = run_one(&t, UPLINK.0, &rep);
        assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
        assert_eq!((d.ct, d.first_reply), (CtVerdict::Reply, first));
    }
    let port = open_udp(&t);
    let sent = udp(UPLINK.2, WORLD, port, 53, (UPLINK.1, NEXT_HOP));
    let (d, _, _) = run_one(
        &t,
        UPLINK.0,
        &icmp_error_about(WORLD, UPLINK.2, 3, 3, &sent),
    );
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Related)
    );
    let mut r = Vec::new();
    t.flows.drain_into(10, &mut r);
    let ev: Vec<(FlowEvent, u8)> = r.iter().map(|f| (f.event, f.proto)).collect();
    assert_eq!(
        ev,
        [
            (FlowEvent::New, 1),
            (FlowEvent::FirstReply, 1),
            (FlowEvent::New, 17)
        ]
    );
    // The first reply as the pod sees it: from the world server to the pod.
    assert_eq!((r[1].src, r[1].dst, r[1].reply), (WORLD, POD_A.0, true));
    assert_eq!(r[1].icmp, Some((0, 0)));
}
