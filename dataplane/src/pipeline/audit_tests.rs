//! Policy audit mode and policy-verdict events in the pipeline.
//!
//! The policy: pod A (app=a) may send TCP 80-90 to anyone (egress enforced); pod B (app=b)
//! takes TCP 80-81 from app=a (ingress enforced). So A→B:85 is denied by B's ingress only,
//! A→B:95 by A's egress first.

use std::sync::Arc;

use vireo_policy::{
    Action, Compiler, Direction, Identity, Peer, Policy, PortRange, Proto, Rule, Selector,
};

use super::*;
use crate::events::{EventKind, PolicyVerdict};
use crate::fixtures::{app_labels, cnp_origin, tcp, two_pods_with_ct, IDS, POD_A, POD_B};
use crate::tables::{PolicyAudit, Tables};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const DENIED: Verdict = Verdict::Drop(DropReason::PolicyDenied);

fn tcp_ports(lo: u16, hi: u16) -> Vec<PortRange> {
    vec![PortRange {
        lo,
        hi,
        proto: Proto::Tcp,
        l7: false,
        name: None,
    }]
}

fn with_policy(t: &mut Tables) {
    let mut c = Compiler::new();
    c.set_identity(Identity(IDS[0]), app_labels("a"));
    c.set_identity(Identity(IDS[1]), app_labels("b"));
    let policy = |name: &str, app: &str, ingress: Vec<Rule>, egress: Vec<Rule>| Policy {
        origin: cnp_origin(name, ""),
        subject: Selector::label("k8s:app", app),
        node_selector: None,
        enforce_ingress: !ingress.is_empty(),
        enforce_egress: !egress.is_empty(),
        ingress,
        egress,
        warnings: Vec::new(),
    };
    let rule = |name: &str, r: &str, peer: Peer, ports: Vec<PortRange>| Rule {
        action: Action::Allow,
        peers: vec![peer],
        requires: Vec::new(),
        ports,
        dns: Vec::new(),
        origin: cnp_origin(name, r),
    };
    let a = policy(
        "default/a",
        "a",
        Vec::new(),
        vec![rule("default/a", "egress[0]", Peer::Any, tcp_ports(80, 90))],
    );
    let from_a = Peer::Endpoints(Selector::label("k8s:app", "a"));
    let b = policy(
        "default/b",
        "b",
        vec![rule("default/b", "ingress[0]", from_a, tcp_ports(80, 81))],
        Vec::new(),
    );
    c.set_policies("default/a", vec![a]);
    c.set_policies("default/b", vec![b]);
    t.policy = Arc::new(c.tables());
    t.revision += 1;
}

fn audit(t: &mut Tables, all: bool, pods: &[std::net::Ipv4Addr]) {
    t.audit = Arc::new(PolicyAudit {
        all,
        endpoints: pods.iter().map(|ip| u32::from(*ip)).collect(),
    });
    t.revision += 1;
}

fn a_to_b(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    tcp((POD_A.0, POD_A.1), (POD_B.0, POD_A.3), sport, dport, flags)
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

#[test]
fn audit_mode_lets_denied_flows_pass_counted_and_judged_on_every_packet() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t);
    let to_b = Verdict::Tx { slot: POD_B.2 };
    let (d, c) = run_one(&t, POD_A.2, &a_to_b(40000, 85, SYN));
    assert_eq!(d.verdict, DENIED);
    assert_eq!(
        (c.drops[DropReason::PolicyDenied as usize], c.policy_audited),
        (1, 0)
    );
    audit(&mut t, true, &[]);
    t.monitor.set(true);
    t.monitor.set_verdicts(true);
    for (flags, ct) in [(SYN, CtVerdict::New), (ACK, CtVerdict::Established)] {
        let (d, c) = run_one(&t, POD_A.2, &a_to_b(40000, 85, flags));
        assert_eq!((d.verdict, d.ct), (to_b, ct));
        assert_eq!(
            (c.drops[DropReason::PolicyDenied as usize], c.policy_audited),
            (0, 1)
        );
    }
    // An allowed flow is not counted.
    let (d, c) = run_one(&t, POD_A.2, &a_to_b(40001, 80, SYN));
    assert_eq!((d.verdict, c.policy_audited), (to_b, 0));
    let (ev, _) = t.monitor.drain(16);
    let kinds: Vec<(EventKind, Option<Direction>)> =
        ev.iter().map(|e| (e.kind, e.direction)).collect();
    use PolicyVerdict::{Allowed, Audit};
    assert_eq!(
        kinds,
        [
            // The new audited flow: A's egress allows 85, B's ingress would deny it; no drop.
            (EventKind::Verdict(Allowed), Some(Direction::Egress)),
            (EventKind::Verdict(Audit), Some(Direction::Ingress)),
            // Its ACK is established: no verdict. The allowed flow: two allows.
            (EventKind::Verdict(Allowed), Some(Direction::Egress)),
            (EventKind::Verdict(Allowed), Some(Direction::Ingress)),
        ]
    );
    assert!(ev[1].rule.is_none(), "default deny");
    // Audit mode off again: the established flow is judged again and dropped.
    audit(&mut t, false, &[]);
    let (d, c) = run_one(&t, POD_A.2, &a_to_b(40000, 85, ACK));
    assert_eq!((d.verdict, c.policy_audited), (DENIED, 0));
}

#[test]
fn an_endpoints_audit_mode_covers_its_own_policy_only() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t);
    let to_b = Verdict::Tx { slot: POD_B.2 };
    // 85: only B's ingress denies it.
    audit(&mut t, false, &[POD_B.0]);
    let (d, c) = run_one(&t, POD_A.2, &a_to_b(40000, 85, SYN));
    assert_eq!(
        (d.verdict, c.policy_audited),
        (to_b, 1),
        "B audits its ingress"
    );
    audit(&mut t, false, &[POD_A.0]);
    let (d, c) = run_one(&t, POD_A.2, &a_to_b(40001, 85, SYN));
    assert_eq!(
        (d.verdict, c.policy_audited),
        (DENIED, 0),
        "A's audit is not B's"
    );
    // 95: A's egress denies it, and B's ingress too.
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(40002, 95, SYN));
    assert_eq!(d.verdict, DENIED, "B still enforces its ingress");
    audit(&mut t, false, &[POD_B.0]);
    let (d, c) = run_one(&t, POD_A.2, &a_to_b(40003, 95, SYN));
    assert_eq!(
        (d.verdict, c.policy_audited),
        (DENIED, 0),
        "A enforces its egress"
    );
    audit(&mut t, false, &[POD_A.0, POD_B.0]);
    let (d, c) = run_one(&t, POD_A.2, &a_to_b(40004, 95, SYN));
    assert_eq!((d.verdict, c.policy_audited), (to_b, 1), "both audit");
    // An established flow whose endpoint leaves audit mode is cut at the next packet.
    audit(&mut t, false, &[POD_B.0]);
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(40000, 85, ACK));
    assert_eq!(d.verdict, to_b);
    audit(&mut t, false, &[]);
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(40000, 85, ACK));
    assert_eq!(d.verdict, DENIED);
}

#[test]
fn new_flows_give_verdict_events_per_direction_under_policy_established_ones_none() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t);
    t.monitor.set(true);
    // Verdicts not asked for: drops only.
    run_one(&t, POD_A.2, &a_to_b(40000, 95, SYN));
    let (ev, _) = t.monitor.drain(16);
    assert_eq!(
        ev.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Drop]
    );
    t.monitor.set_verdicts(true);
    // Allowed both ways, then its established packets: two events.
    run_one(&t, POD_A.2, &a_to_b(40001, 80, SYN));
    run_one(&t, POD_A.2, &a_to_b(40001, 80, ACK));
    let reply = tcp((POD_B.0, POD_B.1), (POD_A.0, POD_B.3), 80, 40001, SYN | ACK);
    run_one(&t, POD_B.2, &reply);
    // Denied by A's egress: a verdict and the drop; B's ingress is not reached.
    run_one(&t, POD_A.2, &a_to_b(40002, 95, SYN));
    // Denied by B's ingress after A's egress allowed it.
    run_one(&t, POD_A.2, &a_to_b(40003, 85, SYN));
    // B → A: neither B's egress nor A's ingress is under policy: no verdict.
    run_one(
        &t,
        POD_B.2,
        &tcp((POD_B.0, POD_B.1), (POD_A.0, POD_B.3), 5000, 22, SYN),
    );
    let (ev, _) = t.monitor.drain(16);
    let got: Vec<(EventKind, Direction, u16, Option<&str>)> = ev
        .iter()
        .map(|e| {
            (
                e.kind,
                e.direction.unwrap(),
                e.dport,
                e.rule.as_ref().map(|r| r.rule.as_str()),
            )
        })
        .collect();
    use Direction::{Egress, Ingress};
    use EventKind::{Drop, Verdict as V};
    use PolicyVerdict::{Allowed, Denied};
    assert_eq!(
        got,
        [
            (V(Allowed), Egress, 80, Some("egress[0]")),
            (V(Allowed), Ingress, 80, Some("ingress[0]")),
            (V(Denied), Egress, 95, None),
            (Drop, Egress, 95, None),
            (V(Allowed), Egress, 85, Some("egress[0]")),
            (V(Denied), Ingress, 85, None),
            (Drop, Ingress, 85, None),
        ]
    );
    assert_eq!(
        (ev[0].src, ev[0].dst, ev[0].sport),
        (POD_A.0, POD_B.0, 40001)
    );
    assert_eq!((ev[0].src_identity, ev[0].dst_identity), (IDS[0], IDS[1]));
    assert_eq!(ev[0].icmp_type, None);
    // The rate limit: one verdict per second, the rest counted.
    t.monitor.set_verdict_rate(1);
    let before = t.monitor.sampled_out();
    run_one(&t, POD_A.2, &a_to_b(40010, 80, SYN));
    run_one(&t, POD_A.2, &a_to_b(40011, 80, SYN));
    let (ev, _) = t.monitor.drain(16);
    let verdicts = ev
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Verdict(_)))
        .count();
    assert!(verdicts <= 1, "{ev:?}");
    assert_eq!(t.monitor.sampled_out() - before, 4 - verdicts as u64);
}
