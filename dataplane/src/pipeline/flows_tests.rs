//! The `flows` stage: which packets get a flow record and what it says (verdict, reason, rule,
//! flags, ports, identities), and traces for `vireo monitor --type trace`.

use std::net::Ipv4Addr;
use std::sync::Arc;

use vireo_policy::{Action, Direction};

use super::*;
use crate::events::EventKind;
use crate::fixtures::{c_to_b_over_tunnel, tcp, two_pods_with_ct, IDS, POD_A, POD_B, POD_C};
use crate::flows::{FlowEvent, FlowRecord, FlowVerdict};
use crate::tables::Tables;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

/// Pod B takes ingress from app=a on TCP 80 and denies app=c (`ingressDeny[0]`); the rest of
/// its ingress falls to the default deny. Published as a new revision.
fn with_policy(t: &mut Tables, deny_a: bool) {
    let rule = |action, app: &str, ports, name: &str| {
        crate::fixtures::app_rule("default/p", action, &[app], ports, name)
    };
    let port80 = vireo_policy::PortRange {
        lo: 80,
        hi: 80,
        proto: vireo_policy::Proto::Tcp,
        l7: false,
        name: None,
    };
    let mut ingress = vec![
        rule(Action::Allow, "a", vec![port80], "ingress[0]"),
        rule(Action::Deny, "c", Vec::new(), "ingressDeny[0]"),
    ];
    if deny_a {
        ingress.push(rule(Action::Deny, "a", Vec::new(), "ingressDeny[1]"));
    }
    t.policy = Arc::new(crate::fixtures::b_ingress("default/p", ingress));
    t.revision += 1;
}

fn run_on(t: &Tables, slot: u16, f: &[u8]) -> Desc {
    let mut mem = VecFrames::new(BATCH, 2048);
    let mut b = Batch::for_worker(0);
    mem.write(256, f);
    assert!(b.push(Desc::new(256, f.len() as u32, slot)));
    let mut c = BatchCounts::default();
    run(&mut b, &mut mem, t, &mut c);
    b.descs()[0]
}

fn records(t: &Tables) -> Vec<FlowRecord> {
    let mut v = Vec::new();
    t.flows.drain_into(100, &mut v);
    v
}

fn a_to_b(port: u16, flags: u8) -> Vec<u8> {
    tcp((POD_A.0, POD_A.1), (POD_B.0, POD_A.3), 40000, port, flags)
}

fn b_to_a(port: u16, flags: u8) -> Vec<u8> {
    tcp((POD_B.0, POD_B.1), (POD_A.0, POD_B.3), port, 40000, flags)
}

#[test]
fn a_tcp_flow_is_recorded_at_its_start_first_reply_and_close_only() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t, false);
    run_on(&t, POD_A.2, &a_to_b(80, SYN));
    let r = records(&t);
    assert_eq!(r.len(), 1, "{r:?}");
    let f = &r[0];
    assert_eq!(
        (f.event, f.verdict, f.reason, f.reply),
        (FlowEvent::New, FlowVerdict::Forwarded, None, false)
    );
    assert_eq!(
        (f.src, f.dst, f.sport, f.dport),
        (POD_A.0, POD_B.0, 40000, 80)
    );
    assert_eq!((f.proto, f.tcp_flags), (6, SYN));
    assert_eq!((f.src_identity, f.dst_identity), (IDS[0], IDS[1]));
    assert_eq!((f.in_slot, f.out_slot), (POD_A.2, Some(POD_B.2)));
    assert_eq!(f.bytes, 40, "IP header and TCP header");
    // The first reply, once.
    run_on(&t, POD_B.2, &b_to_a(80, SYN | ACK));
    let r = records(&t);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].event, r[0].reply, r[0].tcp_flags),
        (FlowEvent::FirstReply, true, SYN | ACK)
    );
    // Established packets both ways: nothing.
    run_on(&t, POD_A.2, &a_to_b(80, ACK));
    run_on(&t, POD_B.2, &b_to_a(80, ACK));
    assert!(records(&t).is_empty());
    // FIN and RST close it.
    run_on(&t, POD_A.2, &a_to_b(80, FIN | ACK));
    run_on(&t, POD_B.2, &b_to_a(80, RST));
    let r = records(&t);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|f| f.event == FlowEvent::Close));
    assert_eq!((r[0].tcp_flags, r[1].tcp_flags), (FIN | ACK, RST));
    assert_eq!(t.flows.lost(), 0);
}

#[test]
fn denials_carry_their_rule_or_the_default_deny() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t, false);
    // The default deny (port 81 is allowed to nobody).
    let d = run_on(&t, POD_A.2, &a_to_b(81, SYN));
    assert_eq!(d.verdict, Verdict::Drop(DropReason::PolicyDenied));
    let r = records(&t);
    assert_eq!(r.len(), 1);
    let f = &r[0];
    assert_eq!(
        (f.event, f.verdict, f.reason),
        (
            FlowEvent::Drop,
            FlowVerdict::Dropped,
            Some(DropReason::PolicyDenied)
        )
    );
    assert_eq!(
        (f.direction, f.rule.is_none()),
        (Some(Direction::Ingress), true)
    );
    // A deny rule: from C through the tunnel.
    run_on(
        &t,
        crate::fixtures::UPLINK.0,
        &c_to_b_over_tunnel(SYN, IDS[2]),
    );
    let r = records(&t);
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].rule.as_ref().map(|o| o.rule.as_str()),
        Some("ingressDeny[0]")
    );
    assert_eq!((r[0].src, r[0].src_identity), (POD_C, IDS[2]));
    assert!(r[0].from_tunnel);
}

#[test]
fn a_denial_cached_in_an_established_flow_has_its_rule_too() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t, false);
    run_on(&t, POD_A.2, &a_to_b(80, SYN));
    run_on(&t, POD_A.2, &a_to_b(80, ACK));
    records(&t);
    // A deny rule for app=a: the established flow is cut, judged once then cached.
    with_policy(&mut t, true);
    for _ in 0..2 {
        let d = run_on(&t, POD_A.2, &a_to_b(80, ACK));
        assert_eq!(d.verdict, Verdict::Drop(DropReason::PolicyDenied));
        let r = records(&t);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].rule.as_ref().map(|o| o.rule.as_str()),
            Some("ingressDeny[1]")
        );
        assert_eq!(r[0].tcp_flags, ACK);
    }
}

#[test]
fn other_drops_udp_first_replies_audits_and_recording_off() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    // An unknown destination: dropped with its reason, no policy.
    let d = run_on(
        &t,
        POD_A.2,
        &tcp(
            (POD_A.0, POD_A.1),
            (Ipv4Addr::new(10, 9, 9, 9), POD_A.3),
            1,
            2,
            SYN,
        ),
    );
    let Verdict::Drop(reason) = d.verdict else {
        panic!("{d:?}")
    };
    let r = records(&t);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].reason, r[0].direction), (Some(reason), None));
    // UDP: the first packet and the first reply, nothing after.
    let udp = |src: (Ipv4Addr, [u8; 6]), dst: Ipv4Addr, mac, sp, dp| {
        let b = etherparse::PacketBuilder::ethernet2(src.1, mac)
            .ipv4(src.0.octets(), dst.octets(), 64)
            .udp(sp, dp);
        let mut out = Vec::new();
        b.write(&mut out, &[1, 2, 3]).unwrap();
        out
    };
    let ab = udp((POD_A.0, POD_A.1), POD_B.0, POD_A.3, 5000, 53);
    let ba = udp((POD_B.0, POD_B.1), POD_A.0, POD_B.3, 53, 5000);
    for (slot, f) in [
        (POD_A.2, &ab),
        (POD_B.2, &ba),
        (POD_A.2, &ab),
        (POD_B.2, &ba),
    ] {
        run_on(&t, slot, f);
    }
    let r = records(&t);
    let ev: Vec<FlowEvent> = r.iter().map(|f| f.event).collect();
    assert_eq!(ev, vec![FlowEvent::New, FlowEvent::FirstReply]);
    assert_eq!((r[0].proto, r[0].bytes, r[0].tcp_flags), (17, 31, 0));
    // Audit mode: let through, recorded as AUDIT with the side that would deny.
    with_policy(&mut t, false);
    t.audit = Arc::new(crate::tables::PolicyAudit {
        all: true,
        ..Default::default()
    });
    let d = run_on(&t, POD_A.2, &a_to_b(82, SYN));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    let r = records(&t);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].verdict, r[0].direction),
        (FlowVerdict::Audit, Some(Direction::Ingress))
    );
    // Recording off: nothing.
    t.flows.set(false);
    run_on(&t, POD_A.2, &a_to_b(83, SYN));
    run_on(&t, POD_A.2, &a_to_b(84, SYN));
    assert!(records(&t).is_empty());
}

#[test]
fn traces_are_sampled_or_for_one_endpoint_and_only_while_asked() {
    let (t, _) = two_pods_with_ct(64, 64);
    let traces = |t: &Tables| {
        t.monitor
            .drain(100)
            .0
            .into_iter()
            .filter(|e| e.kind == EventKind::Trace)
            .collect::<Vec<_>>()
    };
    // New flows each time (a new port per packet).
    let port = std::cell::Cell::new(1000u16);
    // One batch of `n` (a worker's count of traced packets lives in its batch).
    let send = |t: &Tables, n: u16| {
        let mut mem = VecFrames::new(BATCH, 2048);
        let mut b = Batch::for_worker(0);
        for i in 0..usize::from(n) {
            port.set(port.get() + 1);
            let f = a_to_b(port.get(), SYN);
            let addr = (i * 2048 + 256) as u64;
            mem.write(addr, &f);
            assert!(b.push(Desc::new(addr, f.len() as u32, POD_A.2)));
        }
        run(&mut b, &mut mem, t, &mut BatchCounts::default());
    };
    t.monitor.set_trace(1, None);
    send(&t, 3);
    assert!(traces(&t).is_empty(), "the monitor is off");
    t.monitor.set(true);
    t.monitor.set_trace(1, None);
    send(&t, 3);
    let e = traces(&t);
    assert_eq!(e.len(), 3);
    let tr = e[0].trace.unwrap();
    assert_eq!(
        (tr.out_slot, tr.ct, tr.tcp_flags),
        (Some(POD_B.2), "new", SYN)
    );
    assert_eq!((e[0].src, e[0].dst, e[0].dport), (POD_A.0, POD_B.0, 1004));
    t.monitor.set_trace(2, None);
    send(&t, 4);
    assert_eq!(traces(&t).len(), 2, "every 2nd");
    // One endpoint: packets to or from another address are not traced.
    t.monitor.set_trace(1, Some(Ipv4Addr::new(10, 9, 9, 9)));
    send(&t, 2);
    assert!(traces(&t).is_empty());
    t.monitor.set_trace(1, Some(POD_B.0));
    send(&t, 2);
    assert_eq!(traces(&t).len(), 2);
    t.monitor.set_trace(0, None);
    send(&t, 2);
    assert!(traces(&t).is_empty(), "stopped");
}

/// A flow whose entry expired starts again: its next packet is a new flow's first (a record),
/// and the first reply after it is recorded once more; while the entry lives, neither repeats.
#[test]
fn an_expired_flow_is_recorded_again_as_new() {
    let (t, clock) = two_pods_with_ct(64, 64);
    let udp = |src: (Ipv4Addr, [u8; 6]), dst: Ipv4Addr, mac, sp, dp| {
        let b = etherparse::PacketBuilder::ethernet2(src.1, mac)
            .ipv4(src.0.octets(), dst.octets(), 64)
            .udp(sp, dp);
        let mut out = Vec::new();
        b.write(&mut out, &[7]).unwrap();
        out
    };
    let ab = udp((POD_A.0, POD_A.1), POD_B.0, POD_A.3, 5000, 53);
    let ba = udp((POD_B.0, POD_B.1), POD_A.0, POD_B.3, 53, 5000);
    let events = || -> Vec<FlowEvent> { records(&t).iter().map(|f| f.event).collect() };
    run_on(&t, POD_A.2, &ab);
    run_on(&t, POD_B.2, &ba);
    clock.advance(30);
    run_on(&t, POD_A.2, &ab);
    run_on(&t, POD_B.2, &ba);
    assert_eq!(
        events(),
        [FlowEvent::New, FlowEvent::FirstReply],
        "alive: once"
    );
    clock.advance(61); // past the lifetime of a flow other than TCP (60 s)
    assert_eq!(run_on(&t, POD_A.2, &ab).ct, CtVerdict::New);
    run_on(&t, POD_B.2, &ba);
    assert_eq!(
        events(),
        [FlowEvent::New, FlowEvent::FirstReply],
        "expired: again"
    );
}

/// A client port reused after its connection closed: the new SYN is a new flow's first (a new
/// entry, recorded as new), and its first reply is recorded once more. A SYN
/// retransmitted before any answer is not.
#[test]
fn a_syn_reusing_a_closed_connections_port_is_recorded_as_a_new_flow() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t, false);
    let events = |t: &Tables| -> Vec<FlowEvent> { records(t).iter().map(|f| f.event).collect() };
    assert_eq!(run_on(&t, POD_A.2, &a_to_b(80, SYN)).ct, CtVerdict::New);
    assert_eq!(
        run_on(&t, POD_A.2, &a_to_b(80, SYN)).ct,
        CtVerdict::Established,
        "retransmitted"
    );
    run_on(&t, POD_B.2, &b_to_a(80, SYN | ACK));
    run_on(&t, POD_A.2, &a_to_b(80, ACK));
    run_on(&t, POD_A.2, &a_to_b(80, FIN | ACK));
    run_on(&t, POD_B.2, &b_to_a(80, FIN | ACK));
    assert_eq!(
        events(&t),
        [
            FlowEvent::New,
            FlowEvent::FirstReply,
            FlowEvent::Close,
            FlowEvent::Close
        ]
    );
    // The port reused while the closed entry lives.
    let d = run_on(&t, POD_A.2, &a_to_b(80, SYN));
    assert_eq!(
        (d.ct, d.verdict),
        (CtVerdict::New, Verdict::Tx { slot: POD_B.2 })
    );
    let d = run_on(&t, POD_B.2, &b_to_a(80, SYN | ACK));
    assert_eq!((d.ct, d.first_reply), (CtVerdict::Reply, true));
    let r = records(&t);
    assert_eq!(
        r.iter().map(|f| (f.event, f.tcp_flags)).collect::<Vec<_>>(),
        [(FlowEvent::New, SYN), (FlowEvent::FirstReply, SYN | ACK)]
    );
}

/// B's pod goes (its endpoint removed and its flows flushed, as the agent does) and a new pod
/// takes its address: the old flow's next packet is a counted drop with a record saying why,
/// and the new pod's traffic starts new flows that carry its own identity, not B's.
#[test]
fn an_endpoint_gone_and_its_address_reused_starts_flows_anew() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t, false);
    run_on(&t, POD_A.2, &a_to_b(80, SYN));
    run_on(&t, POD_B.2, &b_to_a(80, SYN | ACK));
    assert_eq!(records(&t).len(), 2);
    let b = u32::from(POD_B.0);
    t.endpoints.remove(&b);
    let ct = t.ct.clone().unwrap();
    assert_eq!(ct.flush(vireo_conntrack::flush::endpoint(b)), 1);
    t.revision += 1;
    let d = run_on(&t, POD_A.2, &a_to_b(80, ACK));
    let Verdict::Drop(reason) = d.verdict else {
        panic!("sent to a pod that is gone: {d:?}")
    };
    let r = records(&t);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0].event, r[0].verdict, r[0].reason),
        (FlowEvent::Drop, FlowVerdict::Dropped, Some(reason))
    );
    assert_eq!(
        (r[0].src_identity, r[0].dst, r[0].dport),
        (IDS[0], POD_B.0, 80)
    );
    // A pod with app=c (under no policy) at the same address and port.
    t.set_endpoint(crate::tables::Endpoint {
        ip: POD_B.0,
        mac: POD_B.1,
        slot: POD_B.2,
        identity: IDS[2],
    });
    t.revision += 1;
    let d = run_on(&t, POD_A.2, &a_to_b(81, SYN));
    assert_eq!(
        (d.ct, d.verdict),
        (CtVerdict::New, Verdict::Tx { slot: POD_B.2 })
    );
    let d = run_on(&t, POD_A.2, &a_to_b(80, ACK));
    assert_eq!(d.ct, CtVerdict::New, "the old flow is not the new pod's");
    let r = records(&t);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        r.iter()
            .all(|f| f.event == FlowEvent::New && f.dst_identity == IDS[2]),
        "{r:?}"
    );
}
