//! Policy in the pipeline: new flows are judged (egress at the source, ingress at the
//! destination), replies of allowed flows pass through conntrack, denied flows get no entry.

use std::net::Ipv4Addr;
use std::sync::Arc;

use vireo_policy::{Action, Identity, PortRange, Proto};

use super::*;
use crate::fixtures::{c_to_b_over_tunnel, tcp, two_pods_with_ct, IDS, POD_A, POD_B};
use crate::tables::Tables;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Pod B (app=b) takes ingress only from app=a on TCP 80; pod C (app=c, on the other node)
/// may not send to B at all (explicit deny).
fn with_policy(t: &mut Tables) {
    let port80 = PortRange {
        lo: 80,
        hi: 80,
        proto: Proto::Tcp,
        l7: false,
        name: None,
    };
    let rule = |action, app, ports, name| {
        crate::fixtures::app_rule("default/p", action, &[app], ports, name)
    };
    let ingress = vec![
        rule(Action::Allow, "a", vec![port80], "ingress[0]"),
        rule(Action::Deny, "c", Vec::new(), "ingressDeny[0]"),
    ];
    t.policy = Arc::new(crate::fixtures::b_ingress("default/p", ingress));
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

fn a_to_b(port: u16, flags: u8) -> Vec<u8> {
    tcp((POD_A.0, POD_A.1), (POD_B.0, POD_A.3), 40000, port, flags)
}

#[test]
fn an_allowed_port_passes_and_its_replies_too() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t);
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(80, SYN));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    assert_eq!(d.ct, CtVerdict::New);
    let reply = tcp((POD_B.0, POD_B.1), (POD_A.0, POD_B.3), 80, 40000, SYN | ACK);
    let (d, _) = run_one(&t, POD_B.2, &reply);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(d.ct, CtVerdict::Reply);
}

#[test]
fn new_flows_verdicts_are_counted_per_direction_under_policy_only() {
    use crate::counters::verdict_index;
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t);
    let ingress = |v| verdict_index(1, v);
    // A new allowed flow: B's ingress allowed it; A's egress is under no policy.
    let (_, c) = run_one(&t, POD_A.2, &a_to_b(80, SYN));
    let mut want = [0; crate::counters::VERDICT_SLOTS];
    want[ingress(0)] = 1;
    assert_eq!(c.verdicts, want);
    // Its reply and next packets are no new flows.
    let reply = tcp((POD_B.0, POD_B.1), (POD_A.0, POD_B.3), 80, 40000, SYN | ACK);
    assert_eq!(run_one(&t, POD_B.2, &reply).1.verdicts, [0; 6]);
    assert_eq!(run_one(&t, POD_A.2, &a_to_b(80, ACK)).1.verdicts, [0; 6]);
    // Denied: counted as denied, in the direction that denied it.
    let (_, c) = run_one(&t, POD_A.2, &a_to_b(81, SYN));
    want = [0; 6];
    want[ingress(1)] = 1;
    assert_eq!(c.verdicts, want);
    // B to A: neither B's egress nor A's ingress is under policy: nothing counted.
    let b_to_a = tcp((POD_B.0, POD_B.1), (POD_A.0, POD_B.3), 5000, 9999, SYN);
    assert_eq!(run_one(&t, POD_B.2, &b_to_a).1.verdicts, [0; 6]);
    // Audit mode: denied, let through, counted as audit.
    t.audit = Arc::new(crate::tables::PolicyAudit {
        all: true,
        ..Default::default()
    });
    let (d, c) = run_one(&t, POD_A.2, &a_to_b(82, SYN));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    want = [0; 6];
    want[ingress(2)] = 1;
    assert_eq!(c.verdicts, want);
}

#[test]
fn other_ports_fall_to_default_deny_and_get_no_entry() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t);
    let (d, c) = run_one(&t, POD_A.2, &a_to_b(81, SYN));
    assert_eq!(d.verdict, Verdict::Drop(DropReason::PolicyDenied));
    assert_eq!(c.drops[DropReason::PolicyDenied as usize], 1);
    // Judged again, still denied: no entry was made.
    let (d, _) = run_one(&t, POD_A.2, &a_to_b(81, ACK));
    assert_eq!(d.verdict, Verdict::Drop(DropReason::PolicyDenied));
    // B is not selected for egress: it may open flows to A on any port.
    let b_to_a = tcp((POD_B.0, POD_B.1), (POD_A.0, POD_B.3), 5000, 9999, SYN);
    let (d, _) = run_one(&t, POD_B.2, &b_to_a);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
}

#[test]
fn ingress_from_the_tunnel_uses_the_vni_identity_and_deny_wins() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t);
    let (d, _) = run_one(
        &t,
        crate::fixtures::UPLINK.0,
        &c_to_b_over_tunnel(SYN, IDS[2]),
    );
    assert_eq!(d.verdict, Verdict::Drop(DropReason::PolicyDenied));
    // The same packet with identity app=a is allowed on port 80.
    let (d, _) = run_one(
        &t,
        crate::fixtures::UPLINK.0,
        &c_to_b_over_tunnel(SYN, IDS[0]),
    );
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
}

#[test]
fn world_addresses_get_cidr_identities() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t);
    assert_eq!(
        t.identity_of(u32::from(Ipv4Addr::new(9, 9, 9, 9))),
        Identity::WORLD.0
    );
    assert_eq!(t.identity_of(u32::from(POD_B.0)), IDS[1]);
}

#[test]
fn the_monitor_sees_policy_drops_with_their_rule_and_other_drops_too() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_policy(&mut t);
    t.monitor.set(true);
    run_one(&t, POD_A.2, &a_to_b(81, SYN));
    run_one(
        &t,
        crate::fixtures::UPLINK.0,
        &c_to_b_over_tunnel(SYN, IDS[2]),
    );
    // An unknown destination is reported too, from the frame.
    run_one(
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
    let (ev, lost) = t.monitor.drain(10);
    assert_eq!(lost, 0);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert_eq!(ev[0].reason, DropReason::PolicyDenied);
    assert_eq!((ev[0].src, ev[0].dst, ev[0].dport), (POD_A.0, POD_B.0, 81));
    assert_eq!((ev[0].src_identity, ev[0].dst_identity), (IDS[0], IDS[1]));
    assert_eq!(ev[0].direction, Some(vireo_policy::Direction::Ingress));
    assert!(ev[0].rule.is_none(), "default deny");
    assert_eq!(
        ev[1].rule.as_ref().map(|r| r.rule.as_str()),
        Some("ingressDeny[0]")
    );
    assert_eq!(ev[2].reason, DropReason::UnknownDestination);
    assert_eq!(ev[2].src_identity, IDS[0]);
    // Nobody listening: nothing queued.
    t.monitor.set(false);
    run_one(&t, POD_A.2, &a_to_b(81, SYN));
    assert!(t.monitor.drain(10).0.is_empty());
}

/// Pod B's ingress allows app=a on its port named `http`, whichever number B gives it.
fn with_named_port_policy(t: &mut Tables, b_names: &[(&str, u16, u8)]) {
    let name = vireo_policy::PortName::parse("http").unwrap();
    let ports = vec![PortRange::named(name, Proto::Tcp)];
    t.policy = Arc::new(crate::fixtures::b_allows(&["a"], ports));
    let mut names = crate::tables::FastMap::default();
    names.insert(
        u32::from(POD_B.0),
        vireo_policy::PortNames::new(b_names.iter().copied()),
    );
    t.port_names = Arc::new(names);
}

#[test]
fn an_ingress_named_port_is_the_destination_endpoints_own() {
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_named_port_policy(&mut t, &[("http", 8080, 6), ("dns", 80, 17)]);
    let verdict = |t: &Tables, port| run_one(t, POD_A.2, &a_to_b(port, SYN)).0.verdict;
    assert_eq!(verdict(&t, 8080), Verdict::Tx { slot: POD_B.2 });
    assert_eq!(verdict(&t, 80), Verdict::Drop(DropReason::PolicyDenied));
    // B renames its ports (a new pod spec): the rule follows the name.
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_named_port_policy(&mut t, &[("http", 80, 6)]);
    assert_eq!(verdict(&t, 80), Verdict::Tx { slot: POD_B.2 });
    assert_eq!(verdict(&t, 8080), Verdict::Drop(DropReason::PolicyDenied));
    // No names known for B: the named port covers nothing.
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_named_port_policy(&mut t, &[]);
    assert_eq!(verdict(&t, 80), Verdict::Drop(DropReason::PolicyDenied));
    // A UDP port named `http` is not the TCP rule's.
    let (mut t, _) = two_pods_with_ct(64, 64);
    with_named_port_policy(&mut t, &[("http", 7, 17)]);
    let udp = crate::fixtures::udp_from_a(POD_B.0, 64, b"x");
    assert_eq!(
        run_one(&t, POD_A.2, &udp).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied)
    );
}
