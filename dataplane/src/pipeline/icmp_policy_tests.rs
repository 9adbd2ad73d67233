//! ICMP policy in the pipeline: flows judged by the ICMP type of their original-direction
//! packets; echo replies and errors of allowed flows pass; established flows re-judged by
//! the same type.

use std::sync::Arc;

use etherparse::PacketBuilder;
use vireo_policy::{Action, Compiler, Identity, Peer, Policy, PortRange, Rule, Selector};

use super::*;
use crate::fixtures::{app_labels, cnp_origin, two_pods_with_ct, IDS, POD_A, POD_B};
use crate::tables::Tables;
use crate::wire::{icmp_error, inet_checksum, ICMP_ERROR_FRAME};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
const TIMESTAMP: u8 = 13;

/// Pod B (app=b) takes ingress from app=a: the ICMP types `types` only.
fn b_allows_icmp(t: &mut Tables, types: PortRange) {
    let mut c = Compiler::new();
    c.set_identity(Identity(IDS[0]), app_labels("a"));
    c.set_identity(Identity(IDS[1]), app_labels("b"));
    let p = Policy {
        origin: cnp_origin("default/icmp", ""),
        subject: Selector::label("k8s:app", "b"),
        node_selector: None,
        enforce_ingress: true,
        enforce_egress: false,
        ingress: vec![Rule {
            action: Action::Allow,
            peers: vec![Peer::Endpoints(Selector::label("k8s:app", "a"))],
            requires: Vec::new(),
            ports: vec![types],
            dns: Vec::new(),
            origin: cnp_origin("default/icmp", "ingress[0]"),
        }],
        egress: Vec::new(),
        warnings: Vec::new(),
    };
    c.set_policies("default/icmp", vec![p]);
    t.policy = Arc::new(c.tables());
    t.revision += 1;
}

/// An ICMP message of `typ` with identifier `id` (echo layout; other types carry the same 8
/// bytes) from pod `from` to pod `to`.
fn icmp(
    from: (std::net::Ipv4Addr, [u8; 6], u16, [u8; 6]),
    to: std::net::Ipv4Addr,
    typ: u8,
    id: u16,
) -> Vec<u8> {
    let mut m = vec![typ, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 1];
    m.extend_from_slice(&[0u8; 12]);
    let c = inet_checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let b = PacketBuilder::ethernet2(from.1, from.3).ipv4(from.0.octets(), to.octets(), 64);
    let mut out = Vec::new();
    b.write(&mut out, etherparse::IpNumber(1), &m).unwrap();
    out
}

fn a_to_b(typ: u8, id: u16) -> Vec<u8> {
    icmp(POD_A, POD_B.0, typ, id)
}

fn b_to_a(typ: u8, id: u16) -> Vec<u8> {
    icmp(POD_B, POD_A.0, typ, id)
}

fn run_one(t: &Tables, slot: u16, f: &[u8]) -> (Desc, BatchCounts) {
    let mut mem = VecFrames::new(BATCH, 2048);
    let mut b = Batch::default();
    mem.write(256, f);
    assert!(b.push(Desc::new(256, f.len() as u32, slot)));
    let mut c = BatchCounts::default();
    run(&mut b, &mut mem, t, &mut c);
    (b.descs()[0], c)
}

const DENIED: Verdict = Verdict::Drop(DropReason::PolicyDenied);

#[test]
fn an_echo_request_allow_passes_pings_and_their_replies_and_errors_but_no_other_type() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    b_allows_icmp(&mut t, PortRange::icmp(8, 8));
    let to_b = Verdict::Tx { slot: POD_B.2 };
    let to_a = Verdict::Tx { slot: POD_A.2 };
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(ECHO_REQUEST, 7));
    assert_eq!((d.verdict, d.ct), (to_b, CtVerdict::New));
    let (d, _) = run_one(&t, POD_B.2, &b_to_a(ECHO_REPLY, 7));
    assert_eq!((d.verdict, d.ct), (to_a, CtVerdict::Reply), "the reply");
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(ECHO_REQUEST, 7));
    assert_eq!((d.verdict, d.ct), (to_b, CtVerdict::Established));
    // An error from B about A's echo request is related to the allowed flow.
    let mut err = a_to_b(ECHO_REQUEST, 7);
    err.resize(err.len().max(ICMP_ERROR_FRAME), 0);
    let n = icmp_error(&mut err, POD_B.0.octets(), 3, 1, 0).unwrap();
    err.truncate(n);
    err[0..6].copy_from_slice(&POD_B.3);
    err[6..12].copy_from_slice(&POD_B.1);
    let (d, _) = run_one(&t, POD_B.2, &err);
    assert_eq!((d.verdict, d.ct), (to_a, CtVerdict::Related), "the error");
    // Other types from A are judged on their own type: denied.
    let (d, c) = run_one(&t, POD_A.2, &a_to_b(TIMESTAMP, 0));
    assert_eq!(d.verdict, DENIED, "timestamp");
    assert_eq!(c.drops[DropReason::PolicyDenied as usize], 1);
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(ECHO_REPLY, 9));
    assert_eq!(
        d.verdict, DENIED,
        "an unsolicited echo reply is type 0, not 8"
    );
    // A timestamp allow does not let pings through.
    b_allows_icmp(&mut t, PortRange::icmp(13, 13));
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(TIMESTAMP, 0));
    assert_eq!((d.verdict, d.ct), (to_b, CtVerdict::New));
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(ECHO_REQUEST, 8));
    assert_eq!(d.verdict, DENIED);
}

#[test]
fn established_echo_flows_are_judged_again_as_echo_requests() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    b_allows_icmp(&mut t, PortRange::icmp(8, 8));
    let to_b = Verdict::Tx { slot: POD_B.2 };
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b(ECHO_REQUEST, 7)).0.verdict,
        to_b
    );
    // A new snapshot with the same policy: judged again, as type 8, still allowed.
    t.revision += 1;
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(ECHO_REQUEST, 7));
    assert_eq!((d.verdict, d.ct), (to_b, CtVerdict::Established));
    // Allowing only type 0 (what the fast path passed for ICMP before) revokes the ping.
    b_allows_icmp(&mut t, PortRange::icmp(0, 0));
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b(ECHO_REQUEST, 7)).0.verdict,
        DENIED
    );
    // And allowing type 8 again resumes it (the entry stayed).
    b_allows_icmp(&mut t, PortRange::icmp(8, 8));
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(ECHO_REQUEST, 7));
    assert_eq!((d.verdict, d.ct), (to_b, CtVerdict::Established));
}

#[test]
fn a_packet_of_another_type_never_rides_on_a_flows_cached_allow() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    b_allows_icmp(&mut t, PortRange::icmp(8, 8));
    let to_b = Verdict::Tx { slot: POD_B.2 };
    // An echo with identifier 0 shares its key with A's other ICMP messages to B.
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b(ECHO_REQUEST, 0)).0.ct,
        CtVerdict::New
    );
    for _ in 0..2 {
        assert_eq!(
            run_one(&t, POD_A.2, &a_to_b(TIMESTAMP, 0)).0.verdict,
            DENIED
        );
        assert_eq!(
            run_one(&t, POD_A.2, &a_to_b(ECHO_REPLY, 0)).0.verdict,
            DENIED
        );
        assert_eq!(
            run_one(&t, POD_A.2, &a_to_b(ECHO_REQUEST, 0)).0.verdict,
            to_b
        );
    }
    // A flow opened by an allowed timestamp caches nothing an echo request could use.
    b_allows_icmp(&mut t, PortRange::icmp(13, 13));
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(TIMESTAMP, 0));
    assert_eq!((d.verdict, d.ct), (to_b, CtVerdict::Established));
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b(ECHO_REQUEST, 0)).0.verdict,
        DENIED
    );
    assert_eq!(run_one(&t, POD_A.2, &a_to_b(TIMESTAMP, 0)).0.verdict, to_b);
}

/// A fragment of an ICMP datagram from A to B: IP identification `ip_id`, `frag` the flags
/// and offset field, `payload` what follows the IPv4 header.
fn a_to_b_fragment(ip_id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&POD_A.3);
    f.extend_from_slice(&POD_A.1);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&ip_id.to_be_bytes());
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, 1, 0, 0]);
    ip.extend_from_slice(&POD_A.0.octets());
    ip.extend_from_slice(&POD_B.0.octets());
    let c = crate::wire::ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_fragmented_ping_passes_whole_and_a_later_fragment_never_widens() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    b_allows_icmp(&mut t, PortRange::icmp(8, 8));
    let to_b = Verdict::Tx { slot: POD_B.2 };
    let mut echo = vec![ECHO_REQUEST, 0, 0, 0, 0, 5, 0, 1];
    echo.extend_from_slice(&[0u8; 64]);
    let later = [0u8; 32];
    // More fragments (0x2000), offset 0; then offset 72 bytes (9 units), the last.
    let first = a_to_b_fragment(1, 0x2000, &echo);
    assert_eq!(run_one(&t, POD_A.2, &first).0.ct, CtVerdict::New);
    let (d, _) = run_one(&t, POD_A.2, &a_to_b_fragment(1, 9, &later));
    assert_eq!(
        (d.verdict, d.ct),
        (to_b, CtVerdict::Established),
        "the flow's verdict"
    );
    // A new snapshot between two fragments: the later one has no type to be judged on; it
    // completes the datagram its first fragment was allowed in.
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b_fragment(2, 0x2000, &echo))
            .0
            .verdict,
        to_b
    );
    t.revision += 1;
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b_fragment(2, 9, &later))
            .0
            .verdict,
        to_b
    );
    // Pings revoked: the next datagram stops at its first fragment, and its later ones with
    // it (the flow's verdict is now a denial).
    b_allows_icmp(&mut t, PortRange::icmp(13, 13));
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b_fragment(3, 0x2000, &echo))
            .0
            .verdict,
        DENIED
    );
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b_fragment(3, 9, &later))
            .0
            .verdict,
        DENIED
    );
    t.revision += 1;
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b_fragment(3, 9, &later))
            .0
            .verdict,
        DENIED
    );
    // A datagram with no flow at all (its first fragment denied): an unknown type, denied.
    let mut other = echo.clone();
    other[5] = 6;
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b_fragment(4, 0x2000, &other))
            .0
            .verdict,
        DENIED
    );
    assert_eq!(
        run_one(&t, POD_A.2, &a_to_b_fragment(4, 9, &later))
            .0
            .verdict,
        DENIED
    );
}
