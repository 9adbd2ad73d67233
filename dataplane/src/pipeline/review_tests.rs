//! The fast path's review, frame by frame: every IP protocol judged by policy, established
//! flows judged again, ICMP errors related to the flow they quote (and translated like it),
//! generated ICMP from an address the client knows, reverse NAT from conntrack alone, UDP
//! re-selection, fragments, and half-closed connections through a ClusterIP.

use std::net::Ipv4Addr;
use std::sync::Arc;

use vireo_lb::{Backend, Frontend, FrontendKind, Service, ServiceSpec, ServiceTable};
use vireo_policy::{Action, PortRange, Proto};

use super::*;
use crate::fixtures::{tcp, two_pods_with_ct, IDS, POD_A, POD_B, POD_C, UPLINK};
use crate::tables::Tables;
use crate::wire::{icmp_error, inet_checksum, ipv4_checksum_ok, ipv4_header_checksum, quoted};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const GRE: u8 = 47;
const SCTP: u8 = 132;
const UDP: u8 = 17;

/// An Ethernet + IPv4 frame of protocol `proto` with `payload`, IP id `id` and the flags and
/// fragment offset word `frag`.
fn ip_frame(
    (src, smac): (Ipv4Addr, [u8; 6]),
    (dst, dmac): (Ipv4Addr, [u8; 6]),
    proto: u8,
    (id, frag): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + payload.len());
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// A UDP datagram's header and payload (checksum 0: none).
fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn a() -> (Ipv4Addr, [u8; 6]) {
    (POD_A.0, POD_A.1)
}
fn to_b_via_a() -> (Ipv4Addr, [u8; 6]) {
    (POD_B.0, POD_A.3)
}
fn b() -> (Ipv4Addr, [u8; 6]) {
    (POD_B.0, POD_B.1)
}
fn to_a_via_b() -> (Ipv4Addr, [u8; 6]) {
    (POD_A.0, POD_B.3)
}

/// Runs frames through one batch; returns descriptors and the frames after.
fn run_batch(t: &Tables, frames: &[(u16, Vec<u8>)]) -> (Vec<Desc>, Vec<Vec<u8>>, BatchCounts) {
    let mut mem = VecFrames::new(BATCH, 2048);
    let mut b = Batch::default();
    for (i, (slot, f)) in frames.iter().enumerate() {
        let addr = (i * 2048 + 256) as u64;
        mem.write(addr, f);
        assert!(b.push(Desc::new(addr, f.len() as u32, *slot)));
    }
    let mut c = BatchCounts::default();
    run(&mut b, &mut mem, t, &mut c);
    let out = b
        .descs()
        .iter()
        .map(|d| mem.frame(d.addr, d.len).unwrap().to_vec())
        .collect();
    (b.descs().to_vec(), out, c)
}

fn run_one(t: &Tables, slot: u16, f: &[u8]) -> (Desc, Vec<u8>, BatchCounts) {
    let (d, f, c) = run_batch(t, &[(slot, f.to_vec())]);
    (d[0], f[0].clone(), c)
}

/// Publishes, as a new snapshot revision, pod B's ingress from app=a under `rules` (none:
/// default deny).
fn publish_b_ingress(t: &mut Tables, rules: Vec<(Option<PortRange>, Action)>) {
    let ingress = rules
        .into_iter()
        .enumerate()
        .map(|(i, (ports, action))| {
            let name = format!("ingress[{i}]");
            let ports = ports.into_iter().collect();
            crate::fixtures::app_rule("default/p", action, &["a"], ports, &name)
        })
        .collect();
    t.policy = Arc::new(crate::fixtures::b_ingress("default/p", ingress));
    t.revision += 1;
}

fn port_rule(lo: u16, proto: Proto) -> Option<PortRange> {
    Some(PortRange {
        lo,
        hi: lo,
        proto,
        l7: false,
        name: None,
    })
}

#[test]
fn gre_sctp_and_other_protocols_are_judged_by_policy() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    let gre = ip_frame(a(), to_b_via_a(), GRE, (1, 0), &[0, 0, 0x08, 0, 1, 2, 3, 4]);
    let esp = ip_frame(a(), to_b_via_a(), 50, (2, 0), &[0; 16]);
    let mut sctp_init = vec![0x0f, 0x1c, 0x0f, 0x1c, 0, 0, 0, 0, 0, 0, 0, 0];
    sctp_init.extend_from_slice(&[1, 0, 0, 20]);
    sctp_init.resize(32, 0);
    let sctp = ip_frame(a(), to_b_via_a(), SCTP, (3, 0), &sctp_init); // port 3868
    let frames = |v: &[&Vec<u8>]| {
        v.iter()
            .map(|f| (POD_A.2, (*f).clone()))
            .collect::<Vec<_>>()
    };
    // Default deny: nothing passes, each a counted policy drop.
    publish_b_ingress(&mut t, vec![]);
    let (d, _, c) = run_batch(&t, &frames(&[&gre, &esp, &sctp]));
    for x in &d {
        assert_eq!(x.verdict, Verdict::Drop(DropReason::PolicyDenied));
    }
    assert_eq!(c.drops[DropReason::PolicyDenied as usize], 3);
    // A port rule (SCTP 3868, and ANY 80) covers SCTP to 3868 only, never GRE or ESP.
    publish_b_ingress(
        &mut t,
        vec![
            (port_rule(3868, Proto::Sctp), Action::Allow),
            (port_rule(80, Proto::Any), Action::Allow),
        ],
    );
    let (d, ..) = run_batch(&t, &frames(&[&gre, &esp, &sctp]));
    assert_eq!(d[0].verdict, Verdict::Drop(DropReason::PolicyDenied), "GRE");
    assert_eq!(d[1].verdict, Verdict::Drop(DropReason::PolicyDenied), "ESP");
    assert_eq!(d[2].verdict, Verdict::Tx { slot: POD_B.2 }, "SCTP 3868");
    assert_eq!(d[2].ct, CtVerdict::New);
    // An L3 rule (no ports) allows every protocol, tracked by addresses.
    publish_b_ingress(&mut t, vec![(None, Action::Allow)]);
    let (d, ..) = run_batch(&t, &frames(&[&gre, &esp]));
    assert_eq!(d[0].verdict, Verdict::Tx { slot: POD_B.2 });
    assert_eq!(d[1].verdict, Verdict::Tx { slot: POD_B.2 });
    let (d, ..) = run_batch(&t, &frames(&[&gre]));
    assert_eq!(d[0].ct, CtVerdict::Established, "GRE is a tracked flow");
    // B's GRE answer is a reply.
    let back = ip_frame(b(), to_a_via_b(), GRE, (9, 0), &[0, 0, 0x08, 0]);
    let (d, ..) = run_one(&t, POD_B.2, &back);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Reply)
    );
}

#[test]
fn revoking_an_allow_cuts_an_established_flow_and_giving_it_back_resumes_it() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    publish_b_ingress(&mut t, vec![(port_rule(80, Proto::Tcp), Action::Allow)]);
    let syn = tcp(a(), to_b_via_a(), 40000, 80, SYN);
    assert_eq!(run_one(&t, POD_A.2, &syn).0.ct, CtVerdict::New);
    let data = tcp(a(), to_b_via_a(), 40000, 80, ACK);
    let (d, ..) = run_one(&t, POD_A.2, &data);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_B.2 }, CtVerdict::Established)
    );
    // The allow is replaced by a deny: the next packet of the established flow is dropped.
    publish_b_ingress(&mut t, vec![(None, Action::Deny)]);
    let (d, _, c) = run_one(&t, POD_A.2, &data);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::PolicyDenied));
    assert_eq!(c.drops[DropReason::PolicyDenied as usize], 1);
    // Cached: the same revision drops again without a new lookup.
    assert_eq!(
        run_one(&t, POD_A.2, &data).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied)
    );
    // Replies still pass (only the original direction is judged, as in Cilium).
    let reply = tcp(b(), to_a_via_b(), 80, 40000, ACK);
    assert_eq!(run_one(&t, POD_B.2, &reply).0.ct, CtVerdict::Reply);
    // The allow comes back: the flow goes on with its entry.
    publish_b_ingress(&mut t, vec![(port_rule(80, Proto::Tcp), Action::Allow)]);
    let (d, ..) = run_one(&t, POD_A.2, &data);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_B.2 }, CtVerdict::Established)
    );
}

/// B answers A's UDP datagram with an ICMP error, built as B's kernel would.
fn error_from_b(quoting: &[u8], typ: u8, code: u8) -> Vec<u8> {
    error_from((POD_B.0, POD_B.1, POD_B.3), quoting, typ, code)
}

/// An ICMP error from the pod `(ip, mac, its gateway's mac)` about `quoting` (a frame it
/// received).
fn error_from(pod: (Ipv4Addr, [u8; 6], [u8; 6]), quoting: &[u8], typ: u8, code: u8) -> Vec<u8> {
    let mut f = quoting.to_vec();
    f.resize(f.len().max(crate::wire::ICMP_ERROR_FRAME), 0);
    let n = icmp_error(&mut f, pod.0.octets(), typ, code, 0).unwrap();
    f.truncate(n);
    f[0..6].copy_from_slice(&pod.2);
    f[6..12].copy_from_slice(&pod.1);
    f
}

#[test]
fn icmp_errors_pass_only_for_a_tracked_flow_and_only_to_its_sender() {
    let (t, _) = two_pods_with_ct(64, 64);
    let dgram = ip_frame(a(), to_b_via_a(), UDP, (5, 0), &udp(5000, 53, b"q"));
    // Before any flow: a spoofed "port unreachable" is unrelated.
    let spoofed = error_from_b(&dgram, 3, 3);
    let (d, _, c) = run_one(&t, POD_B.2, &spoofed);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::IcmpUnrelated));
    assert_eq!(c.drops[DropReason::IcmpUnrelated as usize], 1);
    // A's datagram makes the flow; B's error about it is related and reaches A.
    assert_eq!(run_one(&t, POD_A.2, &dgram).0.ct, CtVerdict::New);
    let (d, out, _) = run_one(&t, POD_B.2, &spoofed);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Related)
    );
    assert_eq!(&out[30..34], &POD_A.0.octets());
    // Time exceeded about it too; a parameter problem too.
    for typ in [11, 12] {
        let (d, ..) = run_one(&t, POD_B.2, &error_from_b(&dgram, typ, 0));
        assert_eq!(d.ct, CtVerdict::Related, "type {typ}");
    }
    // About another port of the same pair: unrelated.
    let other = ip_frame(a(), to_b_via_a(), UDP, (6, 0), &udp(5000, 54, b"q"));
    let (d, ..) = run_one(&t, POD_B.2, &error_from_b(&other, 3, 3));
    assert_eq!(d.verdict, Verdict::Drop(DropReason::IcmpUnrelated));
    // Sent to someone else than the quoted packet's sender: unrelated.
    let mut elsewhere = error_from_b(&dgram, 3, 3);
    elsewhere[30..34].copy_from_slice(&POD_C.octets());
    crate::fixtures::fix_ip_checksum(&mut elsewhere, 14);
    let (d, ..) = run_one(&t, POD_B.2, &elsewhere);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::IcmpUnrelated));
    // A quote too short to name a flow: unrelated.
    let mut short = error_from_b(&dgram, 3, 3);
    short.truncate(14 + 20 + 8 + 20 + 2);
    let len = (short.len() - 14) as u16;
    short[16..18].copy_from_slice(&len.to_be_bytes());
    crate::fixtures::fix_ip_checksum(&mut short, 14);
    let (d, ..) = run_one(&t, POD_B.2, &short);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::IcmpUnrelated));
}

/// A service port `VIP:80/proto` with backends on port 8080.
fn service(proto: u8, backends: &[(Ipv4Addr, bool)]) -> ServiceSpec {
    ServiceSpec {
        name: "default/echo".into(),
        port_name: "p".into(),
        port: 80,
        proto,
        frontends: vec![Frontend {
            kind: FrontendKind::ClusterIp,
            ip: VIP,
            port: 80,
            proto,
        }],
        backends: backends
            .iter()
            .map(|&(ip, local)| Backend {
                ip,
                port: 8080,
                local,
                terminating: false,
                weight: 1,
            })
            .collect(),
        affinity_timeout: None,
        source_ranges: Vec::new(),
        external_local: false,
    }
}

fn with_service(t: &mut Tables, s: ServiceSpec, former: &[(Ipv4Addr, u8)]) {
    let s = Arc::new(Service::new(s, 251, 0).unwrap());
    let former = former.iter().map(|&(ip, p)| (u32::from(ip), 8080, p));
    t.services = Arc::new(ServiceTable::new(vec![s]).with_former_backends(former));
    t.revision += 1;
}

fn to_vip_via_a() -> (Ipv4Addr, [u8; 6]) {
    (VIP, POD_A.3)
}

#[test]
fn an_icmp_error_from_a_backend_reaches_the_client_about_the_service_address() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_service(&mut t, service(UDP, &[(POD_B.0, true)]), &[]);
    let sent = ip_frame(a(), to_vip_via_a(), UDP, (7, 0), &udp(5000, 80, b"q"));
    let (d, arrived, _) = run_one(&t, POD_A.2, &sent);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    // B's kernel answers what it received (A -> B:8080) with port unreachable.
    let err = error_from_b(&arrived, 3, 3);
    let (d, out, _) = run_one(&t, POD_B.2, &err);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Related)
    );
    let ip = &out[14..];
    assert!(ipv4_checksum_ok(&ip[..20]));
    assert_eq!(&ip[12..16], &VIP.octets(), "from the service address");
    assert_eq!(&ip[16..20], &POD_A.0.octets());
    assert_eq!(inet_checksum(&ip[20..]), 0, "ICMP checksum");
    let q = quoted(ip).unwrap().unwrap();
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport),
        (u32::from(POD_A.0), 5000, u32::from(VIP), 80),
        "the quote is what A sent"
    );
    assert!(ipv4_checksum_ok(&ip[28..48]), "quoted header checksum");
}

#[test]
fn pmtu_through_a_clusterip_quotes_the_service_address_from_the_service_address() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_service(&mut t, service(6, &[(POD_C, false)]), &[]);
    let mut big = tcp(a(), to_vip_via_a(), 40000, 80, SYN);
    let pad = 1480 - (big.len() - 14);
    big.extend(vec![0u8; pad]);
    big[16..18].copy_from_slice(&1480u16.to_be_bytes());
    big[14 + 6] |= 0x40; // DF
    crate::fixtures::fix_ip_checksum(&mut big, 14);
    let (d, out, c) = run_one(&t, POD_A.2, &big);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(c.drops[DropReason::FragNeeded as usize], 1);
    let ip = &out[14..];
    assert_eq!((ip[20], ip[21]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([ip[26], ip[27]]), 1450);
    assert_eq!(&ip[12..16], &VIP.octets(), "from the service address");
    let q = quoted(ip).unwrap().unwrap();
    assert_eq!((q.dst, q.dport), (u32::from(VIP), 80), "quotes the VIP");
    assert_eq!(inet_checksum(&ip[20..]), 0);
}

#[test]
fn replies_of_a_backend_that_left_the_endpoint_list_are_still_translated() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_service(&mut t, service(6, &[(POD_B.0, true)]), &[]);
    let syn = tcp(a(), to_vip_via_a(), 40000, 80, SYN);
    assert_eq!(
        run_one(&t, POD_A.2, &syn).0.verdict,
        Verdict::Tx { slot: POD_B.2 }
    );
    // B turns not-ready: it leaves the endpoint list (kept as a former backend).
    with_service(&mut t, service(6, &[(POD_C, false)]), &[(POD_B.0, 6)]);
    let reply = tcp(b(), to_a_via_b(), 8080, 40000, SYN | ACK);
    let (d, out, _) = run_one(&t, POD_B.2, &reply);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Reply)
    );
    assert_eq!(&out[26..30], &VIP.octets(), "the reply comes from the VIP");
    // The client's next packets keep their backend.
    let ack = tcp(a(), to_vip_via_a(), 40000, 80, ACK);
    assert_eq!(
        run_one(&t, POD_A.2, &ack).0.verdict,
        Verdict::Tx { slot: POD_B.2 }
    );
}

#[test]
fn a_udp_client_of_a_backend_that_is_gone_moves_to_a_live_one() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_service(&mut t, service(UDP, &[(POD_B.0, true)]), &[]);
    let q = ip_frame(a(), to_vip_via_a(), UDP, (8, 0), &udp(5000, 80, b"q"));
    assert_eq!(
        run_one(&t, POD_A.2, &q).0.verdict,
        Verdict::Tx { slot: POD_B.2 }
    );
    // B is gone: the next datagram of the same client socket goes to C.
    with_service(&mut t, service(UDP, &[(POD_C, false)]), &[]);
    let (d, ..) = run_one(&t, POD_A.2, &q);
    assert_eq!(
        d.verdict,
        Verdict::Tx { slot: UPLINK.0 },
        "to C, on the other node"
    );
    assert_eq!(d.ct, CtVerdict::New, "a fresh flow to the live backend");
    // TCP keeps its backend (its connection is the backend's).
    with_service(&mut t, service(6, &[(POD_B.0, true)]), &[]);
    let syn = tcp(a(), to_vip_via_a(), 40001, 80, SYN);
    assert_eq!(
        run_one(&t, POD_A.2, &syn).0.verdict,
        Verdict::Tx { slot: POD_B.2 }
    );
    with_service(&mut t, service(6, &[(POD_C, false)]), &[(POD_B.0, 6)]);
    let ack = tcp(a(), to_vip_via_a(), 40001, 80, ACK);
    assert_eq!(
        run_one(&t, POD_A.2, &ack).0.verdict,
        Verdict::Tx { slot: POD_B.2 }
    );
}

#[test]
fn later_fragments_follow_their_first_fragment_and_are_never_read_as_ports() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_service(&mut t, service(UDP, &[(POD_B.0, true)]), &[]);
    // A 2000-byte datagram in two fragments: 1480 bytes (with the UDP header), then 528.
    let payload = vec![0x5au8; 2000];
    let whole = udp(5000, 80, &payload);
    let first = ip_frame(a(), to_vip_via_a(), UDP, (77, 0x2000), &whole[..1480]);
    let later = ip_frame(a(), to_vip_via_a(), UDP, (77, 185), &whole[1480..]);
    let (d, out, _) = run_batch(&t, &[(POD_A.2, first), (POD_A.2, later.clone())]);
    assert_eq!(d[0].verdict, Verdict::Tx { slot: POD_B.2 });
    assert_eq!(d[1].verdict, Verdict::Tx { slot: POD_B.2 }, "same path");
    assert_eq!(&out[0][30..34], &POD_B.0.octets());
    assert_eq!(
        &out[0][36..38],
        &8080u16.to_be_bytes(),
        "first: port translated"
    );
    assert_eq!(
        &out[1][30..34],
        &POD_B.0.octets(),
        "later: address translated"
    );
    assert_eq!(&out[1][34..], &later[34..], "later: payload untouched");
    assert!(ipv4_checksum_ok(&out[1][14..34]));
    // A later fragment whose first was never seen is a counted drop; its payload is not
    // taken for ports.
    let orphan = ip_frame(a(), to_vip_via_a(), UDP, (78, 185), &udp(5000, 80, b"x"));
    let (d, _, c) = run_one(&t, POD_A.2, &orphan);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::FragNoFirst));
    assert_eq!(c.drops[DropReason::FragNoFirst as usize], 1);
    // Between pods under policy, a later fragment gets its first fragment's verdict.
    publish_b_ingress(&mut t, vec![(port_rule(53, Proto::Udp), Action::Allow)]);
    let ok1 = ip_frame(
        a(),
        to_b_via_a(),
        UDP,
        (90, 0x2000),
        &udp(5000, 53, &payload)[..1480],
    );
    let ok2 = ip_frame(a(), to_b_via_a(), UDP, (90, 185), &[1; 40]);
    let no1 = ip_frame(
        a(),
        to_b_via_a(),
        UDP,
        (91, 0x2000),
        &udp(5000, 54, &payload)[..1480],
    );
    let no2 = ip_frame(
        a(),
        to_b_via_a(),
        UDP,
        (91, 185),
        &[0, 53, 0, 53, 0, 0, 0, 0],
    );
    let (d, ..) = run_batch(
        &t,
        &[
            (POD_A.2, ok1),
            (POD_A.2, ok2),
            (POD_A.2, no1),
            (POD_A.2, no2),
        ],
    );
    assert_eq!(d[0].verdict, Verdict::Tx { slot: POD_B.2 });
    assert_eq!(d[1].verdict, Verdict::Tx { slot: POD_B.2 });
    assert_eq!(d[2].verdict, Verdict::Drop(DropReason::PolicyDenied));
    assert_eq!(
        d[3].verdict,
        Verdict::Drop(DropReason::PolicyDenied),
        "payload bytes that look like port 53 are not ports"
    );
}

#[test]
fn a_half_closed_connection_through_a_clusterip_is_answered_after_the_close_lifetime() {
    let (mut t, clock) = two_pods_with_ct(64, 64);
    with_service(&mut t, service(6, &[(POD_B.0, true)]), &[]);
    let from_a = |flags| tcp(a(), to_vip_via_a(), 40000, 80, flags);
    let from_b = |flags| tcp(b(), to_a_via_b(), 8080, 40000, flags);
    run_one(&t, POD_A.2, &from_a(SYN));
    run_one(&t, POD_B.2, &from_b(SYN | ACK));
    run_one(&t, POD_A.2, &from_a(ACK));
    // The client shuts down writing; the server answers 12 s later (close lifetime 10 s).
    run_one(&t, POD_A.2, &from_a(FIN | ACK));
    clock.advance(12);
    let (d, out, _) = run_one(&t, POD_B.2, &from_b(ACK));
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Reply)
    );
    assert_eq!(&out[26..30], &VIP.octets());
    // Both sides closed: the close lifetime applies.
    run_one(&t, POD_B.2, &from_b(FIN | ACK));
    run_one(&t, POD_A.2, &from_a(ACK));
    clock.advance(11);
    let (d, ..) = run_one(&t, POD_B.2, &from_b(ACK));
    assert_ne!(d.ct, CtVerdict::Reply, "expired after both FINs");
}

#[test]
fn an_icmp_error_from_a_client_about_a_service_reply_reaches_the_backend_about_its_own_address() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_service(&mut t, service(UDP, &[(POD_B.0, true)]), &[]);
    let sent = ip_frame(a(), to_vip_via_a(), UDP, (7, 0), &udp(5000, 80, b"q"));
    assert_eq!(
        run_one(&t, POD_A.2, &sent).0.verdict,
        Verdict::Tx { slot: POD_B.2 }
    );
    let reply = ip_frame(b(), to_a_via_b(), UDP, (8, 0), &udp(8080, 5000, b"r"));
    let (d, got, _) = run_one(&t, POD_B.2, &reply);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(&got[26..30], &VIP.octets(), "A sees the reply from the VIP");
    // A's socket is gone: its kernel answers the reply (VIP:80 -> A:5000) to the VIP.
    let err = error_from((POD_A.0, POD_A.1, POD_A.3), &got, 3, 3);
    assert_eq!(&err[30..34], &VIP.octets());
    let (d, out, _) = run_one(&t, POD_A.2, &err);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_B.2 }, CtVerdict::Related)
    );
    let ip = &out[14..];
    assert!(ipv4_checksum_ok(&ip[..20]));
    assert_eq!(&ip[12..16], &POD_A.0.octets());
    assert_eq!(&ip[16..20], &POD_B.0.octets(), "to the backend");
    assert_eq!(inet_checksum(&ip[20..]), 0, "ICMP checksum");
    let q = quoted(ip).unwrap().unwrap();
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport),
        (u32::from(POD_B.0), 8080, u32::from(POD_A.0), 5000),
        "the quote is what B sent"
    );
    assert!(ipv4_checksum_ok(&ip[28..48]), "quoted header checksum");
    // Without the service flow, the same error is unrelated.
    let (fresh, _) = two_pods_with_ct(64, 64);
    let mut lone = fresh;
    with_service(&mut lone, service(UDP, &[(POD_B.0, true)]), &[]);
    assert_eq!(
        run_one(&lone, POD_A.2, &err).0.verdict,
        Verdict::Drop(DropReason::IcmpUnrelated)
    );
}

/// A clock that counts its reads.
#[derive(Default)]
struct CountingClock(std::sync::atomic::AtomicU32);

impl vireo_conntrack::Clock for CountingClock {
    fn now(&self) -> u32 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        5
    }
}

#[test]
fn the_clock_is_read_once_per_batch() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    let clock = Arc::new(CountingClock::default());
    t.ct = Some(Arc::new(vireo_conntrack::Table::new(
        vireo_conntrack::Config::default(),
        clock.clone(),
    )));
    with_service(&mut t, service(UDP, &[(POD_B.0, true)]), &[]);
    // A batch that visits every stage with a table: a fragmented datagram (first and later
    // fragment), service flows, direct flows and a reply.
    let mut frames = vec![
        (
            POD_A.2,
            ip_frame(
                a(),
                to_b_via_a(),
                UDP,
                (9, 0x2000),
                &udp(5001, 53, b"first..."),
            ),
        ),
        (POD_A.2, ip_frame(a(), to_b_via_a(), UDP, (9, 2), b"later")),
    ];
    for i in 0..20u16 {
        frames.push((
            POD_A.2,
            ip_frame(a(), to_vip_via_a(), UDP, (i, 0), &udp(6000 + i, 80, b"s")),
        ));
        frames.push((
            POD_A.2,
            ip_frame(a(), to_b_via_a(), UDP, (i, 0), &udp(7000 + i, 53, b"d")),
        ));
        frames.push((
            POD_B.2,
            ip_frame(b(), to_a_via_b(), UDP, (i, 0), &udp(53, 7000 + i, b"r")),
        ));
    }
    let (d, ..) = run_batch(&t, &frames);
    assert!(
        d.iter().all(|d| matches!(d.verdict, Verdict::Tx { .. })),
        "{d:?}"
    );
    assert_eq!(d[1].frag_ports, Some((5001, 53)));
    assert_eq!(clock.0.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_packet_whose_entry_went_stale_after_lookup_is_not_counted_as_established() {
    let (t, _) = two_pods_with_ct(64, 64);
    let dgram = ip_frame(a(), to_b_via_a(), UDP, (5, 0), &udp(5000, 53, b"q"));
    let (d, ..) = run_one(&t, POD_A.2, &dgram);
    assert_eq!(d.ct, CtVerdict::New);
    let ct = t.ct.as_deref().unwrap();
    let key = vireo_conntrack::Key {
        src: u32::from(POD_A.0),
        dst: u32::from(POD_B.0),
        sport: 5000,
        dport: 53,
        proto: UDP,
        dir: vireo_conntrack::Dir::Egress,
    };
    let h = ct.lookup(&key).expect("tracked");
    let src = (key.src, 5000);
    let dst = (key.dst, 53);
    let mut d = Desc::new(0, dgram.len() as u32, POD_A.2);
    d.src_identity = IDS[0];
    let f = conntrack::judged(&d, src, dst, UDP, 53, 0);
    assert_eq!(
        conntrack::known(&h, &t, &mut d, &f, 0),
        Some(Ok(CtVerdict::Established))
    );
    // The entry expires and its slot is freed (and may be reused) before the update.
    assert!(ct.remove(&key));
    assert_eq!(conntrack::known(&h, &t, &mut d, &f, 0), None);
}
