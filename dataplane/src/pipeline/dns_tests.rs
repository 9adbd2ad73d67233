//! DNS-aware policy through the whole pipeline: `rules: dns` refuses queries for other names
//! (the answer turned around to the pod, checksums right), DNS answers to the pod teach
//! `toFQDNs` addresses before they leave, only replies teach, expired names deny new flows but
//! not established ones judged again, TCP and malformed messages.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use hickory_proto::op::{Message, ResponseCode};
use vireo_conntrack::ManualClock;
use vireo_policy::{
    Action, Compiler, FqdnSelector, Identity, IpCacheEntry, Peer, Policy, PortRange, Proto, Rule,
    Selector,
};

use super::*;
use crate::fixtures::{app_labels, cnp_origin, tcp, two_pods_with_ct, IDS, POD_A, POD_B, UPLINK};
use crate::fqdn::dns_fixtures::{query, response};
use crate::tables::{Masquerade, Tables};
use crate::wire::ipv4_checksum_ok;

const FS: usize = 2048;
const NEXT_HOP: [u8; 6] = [2, 0, 0, 0, 0xfe, 1];
const WWW: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const OTHER: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 99);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Pod A (app=a) may query pod B (app=b, the DNS server) on 53 for `*.example.com` only, and
/// reach `www.example.com` on TCP 443; masquerade to the world is on.
fn tables() -> (Tables, Arc<ManualClock>) {
    let (mut t, clock) = two_pods_with_ct(1024, 1024);
    t.ipcache.insert(
        ipnet::Ipv4Net::default(),
        IpCacheEntry {
            identity: Identity::WORLD,
            tunnel: None,
        },
    );
    t.masq = Some(Arc::new(Masquerade {
        ports: (61000, 65535),
        cluster: vec!["10.244.0.0/16".parse().unwrap()],
        non_masquerade: Vec::new(),
        next_hop_mac: Some(NEXT_HOP),
    }));
    let port = |lo: u16, proto: Proto| PortRange {
        lo,
        hi: lo,
        proto,
        l7: false,
        name: None,
    };
    let origin = |r: &str| cnp_origin("default/fqdn", r);
    let mut c = Compiler::new();
    c.set_identity(Identity(IDS[0]), app_labels("a"));
    c.set_identity(Identity(IDS[1]), app_labels("b"));
    c.set_identity(Identity(IDS[2]), app_labels("c"));
    let p = Policy {
        origin: origin(""),
        subject: Selector::label("k8s:app", "a"),
        node_selector: None,
        enforce_ingress: false,
        enforce_egress: true,
        ingress: Vec::new(),
        egress: vec![
            Rule {
                action: Action::Allow,
                peers: vec![Peer::Endpoints(Selector::label("k8s:app", "b"))],
                requires: Vec::new(),
                ports: vec![port(53, Proto::Any)],
                dns: vec![FqdnSelector::pattern("*.example.com").unwrap()],
                origin: origin("egress[0]"),
            },
            Rule {
                action: Action::Allow,
                peers: vec![Peer::Fqdn(FqdnSelector::name("www.example.com").unwrap())],
                requires: Vec::new(),
                ports: vec![port(443, Proto::Tcp)],
                dns: Vec::new(),
                origin: origin("egress[1]"),
            },
        ],
        warnings: Vec::new(),
    };
    c.set_policies("default/fqdn", vec![p]);
    t.policy = Arc::new(c.tables());
    (t, clock)
}

fn udp(
    src: (Ipv4Addr, [u8; 6]),
    dst: (Ipv4Addr, [u8; 6]),
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src.1, dst.1)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// Pod A's query to pod B (as A sends it: to its gateway's MAC).
fn a_queries(sport: u16, name: &str) -> Vec<u8> {
    udp(
        (POD_A.0, POD_A.1),
        (POD_B.0, POD_A.3),
        sport,
        53,
        &query(7, name),
    )
}

/// Pod B's DNS message to pod A's `dport` (as B sends it).
fn b_answers(dport: u16, msg: &[u8]) -> Vec<u8> {
    udp((POD_B.0, POD_B.1), (POD_A.0, POD_B.3), 53, dport, msg)
}

fn www_response() -> Vec<u8> {
    response(7, "www.example.com", &[], &[("www.example.com", WWW, 30)])
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

fn a_to(dst: Ipv4Addr, sport: u16, flags: u8) -> Vec<u8> {
    tcp((POD_A.0, POD_A.1), (dst, POD_A.3), sport, 443, flags)
}

#[test]
fn a_query_for_a_name_no_dns_rule_allows_is_refused_back_to_the_pod() {
    let (t, _) = tables();
    let (d, f, _) = run_one(&t, POD_A.2, &a_queries(40000, "evil.org"));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 }, "back to the pod");
    assert_eq!(t.fqdn.counters.snapshot().refused, 1);
    let p = SlicedPacket::from_ethernet(&f).unwrap();
    let eth = p.link.as_ref().unwrap().to_header().unwrap();
    let eth = eth.ethernet2().unwrap();
    assert_eq!(
        (eth.destination, eth.source),
        (POD_A.1, POD_A.3),
        "MACs swapped"
    );
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!()
    };
    let h = ip.header();
    assert!(ipv4_checksum_ok(h.slice()));
    assert_eq!((h.source_addr(), h.destination_addr()), (POD_B.0, POD_A.0));
    let Some(TransportSlice::Udp(u)) = p.transport else {
        panic!()
    };
    assert_eq!((u.source_port(), u.destination_port()), (53, 40000));
    let want = u
        .to_header()
        .calc_checksum_ipv4(&h.to_header(), u.payload())
        .unwrap();
    assert_eq!(u.checksum(), want, "UDP checksum");
    let m = Message::from_vec(u.payload()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(m.metadata.id, 7);
    // NXDOMAIN when configured so.
    t.fqdn.set_settings(crate::fqdn::Settings {
        reject_rcode: 3,
        ..t.fqdn.settings()
    });
    let (_, f, _) = run_one(&t, POD_A.2, &a_queries(40001, "evil.org"));
    let p = SlicedPacket::from_ethernet(&f).unwrap();
    let Some(TransportSlice::Udp(u)) = p.transport else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(u.payload())
            .unwrap()
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
}

#[test]
fn an_allowed_query_reaches_the_server_and_garbage_on_the_port_is_dropped() {
    let (t, _) = tables();
    let (d, _, _) = run_one(&t, POD_A.2, &a_queries(40000, "www.example.com"));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    let junk = udp(
        (POD_A.0, POD_A.1),
        (POD_B.0, POD_A.3),
        40002,
        53,
        b"not dns",
    );
    let (d, _, _) = run_one(&t, POD_A.2, &junk);
    assert_eq!(
        d.verdict,
        Verdict::Drop(DropReason::DnsQueryUnreadable),
        "fail closed"
    );
    // TCP: a refused name is dropped, the handshake passes.
    let syn = tcp((POD_A.0, POD_A.1), (POD_B.0, POD_A.3), 40003, 53, SYN);
    assert_eq!(
        run_one(&t, POD_A.2, &syn).0.verdict,
        Verdict::Tx { slot: POD_B.2 }
    );
    let q = query(9, "evil.org");
    let mut seg = (q.len() as u16).to_be_bytes().to_vec();
    seg.extend_from_slice(&q);
    let b = PacketBuilder::ethernet2(POD_A.1, POD_A.3)
        .ipv4(POD_A.0.octets(), POD_B.0.octets(), 64)
        .tcp(40003, 53, 1001, 64240)
        .ack(1);
    let mut f = Vec::new();
    b.write(&mut f, &seg).unwrap();
    let (d, _, _) = run_one(&t, POD_A.2, &f);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::DnsQueryRefused));
    // Another port to B is not DNS-filtered (and not allowed either).
    let other = udp((POD_A.0, POD_A.1), (POD_B.0, POD_A.3), 40004, 54, b"x");
    assert_eq!(
        run_one(&t, POD_A.2, &other).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied)
    );
}

#[test]
fn a_dns_answer_teaches_the_address_before_it_leaves_and_only_that_address() {
    let (t, _) = tables();
    assert_eq!(
        run_one(&t, POD_A.2, &a_to(WWW, 50000, SYN)).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied),
        "not resolved yet"
    );
    run_one(&t, POD_A.2, &a_queries(40000, "www.example.com"));
    let (d, _, _) = run_one(&t, POD_B.2, &b_answers(40000, &www_response()));
    assert_eq!(
        d.verdict,
        Verdict::Tx { slot: POD_A.2 },
        "the answer goes on"
    );
    let c = t.fqdn.counters.snapshot();
    assert_eq!((c.responses_parsed, c.learned), (1, 1));
    let (d, _, _) = run_one(&t, POD_A.2, &a_to(WWW, 50001, SYN));
    assert_eq!(
        d.verdict,
        Verdict::Tx { slot: UPLINK.0 },
        "learned: out to the world"
    );
    assert_eq!(
        run_one(&t, POD_A.2, &a_to(OTHER, 50002, SYN)).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied)
    );
    let port80 = tcp((POD_A.0, POD_A.1), (WWW, POD_A.3), 50003, 80, SYN);
    assert_eq!(
        run_one(&t, POD_A.2, &port80).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied),
        "ports apply"
    );
}

#[test]
fn an_unsolicited_answer_teaches_nothing() {
    let (t, _) = tables();
    let fake = response(7, "www.example.com", &[], &[("www.example.com", OTHER, 30)]);
    let (d, _, _) = run_one(&t, POD_B.2, &b_answers(41000, &fake));
    assert_ne!(d.ct, CtVerdict::Reply);
    assert_eq!(t.fqdn.counters.snapshot().responses_parsed, 0);
    assert_eq!(
        run_one(&t, POD_A.2, &a_to(OTHER, 50000, SYN)).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied)
    );
}

#[test]
fn an_expired_name_denies_new_flows_but_not_an_established_one_judged_again() {
    let (mut t, clock) = tables();
    run_one(&t, POD_A.2, &a_queries(40000, "www.example.com"));
    run_one(&t, POD_B.2, &b_answers(40000, &www_response()));
    assert_eq!(
        run_one(&t, POD_A.2, &a_to(WWW, 50001, SYN)).0.verdict,
        Verdict::Tx { slot: UPLINK.0 }
    );
    clock.advance(31);
    // A policy change: every flow is judged again at the next packet.
    t.revision += 1;
    assert_eq!(
        run_one(&t, POD_A.2, &a_to(WWW, 50001, ACK)).0.verdict,
        Verdict::Tx { slot: UPLINK.0 },
        "a zombie keeps the connection"
    );
    assert_eq!(
        run_one(&t, POD_A.2, &a_to(WWW, 50002, SYN)).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied),
        "expired for new flows"
    );
}

#[test]
fn malformed_and_tcp_split_answers_pass_without_learning() {
    let (t, _) = tables();
    run_one(&t, POD_A.2, &a_queries(40000, "www.example.com"));
    let mut bad = www_response();
    bad.truncate(bad.len() - 3);
    let (d, _, _) = run_one(&t, POD_B.2, &b_answers(40000, &bad));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(t.fqdn.counters.snapshot().malformed, 1);
    assert!(t.fqdn.is_empty());
    // TCP: the handshake, then an answer in one segment is learned, a split one is not.
    let syn = tcp((POD_A.0, POD_A.1), (POD_B.0, POD_A.3), 40005, 53, SYN);
    run_one(&t, POD_A.2, &syn);
    let tcp_answer = |msg: &[u8], cut: usize| {
        let mut seg = (msg.len() as u16).to_be_bytes().to_vec();
        seg.extend_from_slice(msg);
        seg.truncate(seg.len() - cut);
        let b = PacketBuilder::ethernet2(POD_B.1, POD_B.3)
            .ipv4(POD_B.0.octets(), POD_A.0.octets(), 64)
            .tcp(53, 40005, 5000, 64240)
            .syn()
            .ack(1001);
        let mut f = Vec::new();
        b.write(&mut f, &seg).unwrap();
        f
    };
    let (d, _, _) = run_one(&t, POD_B.2, &tcp_answer(&www_response(), 10));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(t.fqdn.counters.snapshot().tcp_not_learned, 1);
    assert!(t.fqdn.is_empty());
    run_one(&t, POD_B.2, &tcp_answer(&www_response(), 0));
    assert_eq!(t.fqdn.counters.snapshot().learned, 1);
}
