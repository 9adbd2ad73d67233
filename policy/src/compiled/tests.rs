//! The compiled tables agree with the reference evaluator, also after incremental changes.

use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;
use crate::engine::{decide, decide_named, dns_query_allowed, PeerInfo};
use crate::fqdn::FqdnSelector;
use crate::rules::{CidrScope, Entity, Op, Proto, Requirement, Selector};

/// A small deterministic generator (xorshift), so one proptest seed describes a whole world.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

const NS: [&str; 3] = ["x", "y", "z"];
const APPS: [&str; 3] = ["a", "b", "c"];

fn pod_labels(ns: &str, app: &str, tier: bool) -> Labels {
    let mut pl = std::collections::BTreeMap::new();
    pl.insert("app".to_string(), app.to_string());
    if tier {
        pl.insert("tier".to_string(), "web".to_string());
    }
    let mut nl = std::collections::BTreeMap::new();
    nl.insert("ns".to_string(), ns.to_string());
    Labels::for_pod(crate::PodOrigin::in_namespace(ns), &pl, &nl)
}

fn selector(g: &mut Gen) -> Selector {
    let mut reqs = Vec::new();
    for _ in 0..(g.next() % 3) {
        let key = g
            .pick(&[
                "k8s:app",
                "any:app",
                "k8s:tier",
                "k8s:io.kubernetes.pod.namespace",
                "k8s:io.cilium.k8s.namespace.labels.ns",
            ])
            .to_string();
        let vals: Vec<String> = (0..1 + g.next() % 2)
            .map(|_| g.pick(&["a", "b", "c", "x", "y", "web"]).to_string())
            .collect();
        let op = match g.next() % 4 {
            0 => Op::In(vals),
            1 => Op::NotIn(vals),
            2 => Op::Exists,
            _ => Op::DoesNotExist,
        };
        reqs.push(Requirement { key, op });
    }
    Selector { reqs }
}

/// Names and patterns the worlds' rules and DNS answers use.
fn fqdn(g: &mut Gen) -> FqdnSelector {
    match g.next() % 5 {
        0 => FqdnSelector::name("example.com").unwrap(),
        1 => FqdnSelector::name("WWW.example.com.").unwrap(),
        2 => FqdnSelector::pattern("*.example.com").unwrap(),
        3 => FqdnSelector::pattern("api-*.example.com").unwrap(),
        _ => FqdnSelector::pattern("*").unwrap(),
    }
}

/// The names the endpoints learned the world addresses under, and query names.
const NAMES: [&[&str]; 5] = [
    &[],
    &["www.example.com"],
    &["example.com", "api-1.example.com"],
    &["a.b.example.com"],
    &["other.org."],
];

fn rule(g: &mut Gen, i: usize) -> Rule {
    let mut peers = Vec::new();
    for _ in 0..1 + g.next() % 2 {
        peers.push(match g.next() % 7 {
            6 => Peer::Fqdn(fqdn(g)),
            0 => Peer::Any,
            1 => Peer::Entity(*g.pick(&[
                Entity::World,
                Entity::Cluster,
                Entity::Host,
                Entity::RemoteNode,
                Entity::KubeApiserver,
                Entity::Ingress,
                Entity::None,
                Entity::All,
            ])),
            2 => Peer::Cidr {
                net: *g.pick(&[
                    "0.0.0.0/0".parse().unwrap(),
                    "8.8.0.0/16".parse().unwrap(),
                    "1.0.0.0/8".parse().unwrap(),
                    "10.244.0.0/16".parse().unwrap(),
                    "192.168.1.0/24".parse().unwrap(),
                ]),
                except: if g.chance(50) {
                    vec![*g.pick(&[
                        "8.8.8.0/24".parse().unwrap(),
                        "10.244.0.0/24".parse().unwrap(),
                        "10.244.1.2/32".parse().unwrap(),
                    ])]
                } else {
                    Vec::new()
                },
                scope: *g.pick(&[CidrScope::World, CidrScope::Nodes, CidrScope::All]),
            },
            3 if g.chance(30) => Peer::Endpoints(Selector::label("reserved:kube-apiserver", "")),
            _ => Peer::Endpoints(selector(g)),
        });
    }
    let ports = (0..g.next() % 3)
        .map(|_| {
            if g.chance(25) {
                // ICMP types: one, a range, type 0 (echo reply, not a wildcard), every type.
                let (lo, hi) = *g.pick(&[(8u8, 8u8), (0, 0), (13, 14), (3, 11), (0, 255)]);
                return PortRange::icmp(lo, hi);
            }
            if g.chance(15) {
                // A named port (the endpoints name theirs differently: `port_names`).
                let names: [&str; 3] = ["http", "dns", "metrics"];
                let name = PortName::parse(names[(g.next() % 3) as usize]).unwrap();
                let mut pr = PortRange::named(name, *g.pick(&[Proto::Tcp, Proto::Udp, Proto::Any]));
                pr.l7 = g.chance(10);
                return pr;
            }
            let lo = *g.pick(&[0u16, 80, 81, 8000]);
            PortRange {
                lo,
                hi: if lo == 8000 { 8080 } else { lo },
                proto: *g.pick(&[Proto::Tcp, Proto::Udp, Proto::Sctp, Proto::Any]),
                l7: g.chance(10),
                name: None,
            }
        })
        .collect();
    let dns = if g.chance(25) {
        (0..1 + g.next() % 2).map(|_| fqdn(g)).collect()
    } else {
        Vec::new()
    };
    Rule {
        action: if g.chance(20) {
            Action::Deny
        } else {
            Action::Allow
        },
        dns,
        peers,
        requires: if g.chance(10) {
            vec![selector(g)]
        } else {
            Vec::new()
        },
        ports,
        origin: Origin {
            kind: "CiliumNetworkPolicy".into(),
            name: format!("p{i}"),
            rule: format!("r{}", g.next() % 100),
        },
    }
}

fn policy(g: &mut Gen, i: usize) -> Policy {
    Policy {
        origin: Origin {
            kind: "CiliumNetworkPolicy".into(),
            name: format!("p{i}"),
            rule: String::new(),
        },
        subject: selector(g),
        node_selector: None,
        enforce_ingress: g.chance(60),
        enforce_egress: g.chance(40),
        ingress: (0..g.next() % 3).map(|_| rule(g, i)).collect(),
        egress: (0..g.next() % 3).map(|_| rule(g, i)).collect(),
        warnings: Vec::new(),
    }
}

/// Every endpoint identity of the world: (identity, labels).
fn pods() -> Vec<(Identity, Labels)> {
    let mut v = Vec::new();
    let mut n = 300;
    for ns in NS {
        for app in APPS {
            for tier in [false, true] {
                v.push((Identity(n), pod_labels(ns, app, tier)));
                n += 1;
            }
        }
    }
    v
}

/// The names the endpoint of identity `id` gives its container ports: pods of one app agree,
/// the others disagree (`http` is 80 or 81), some name a UDP port, some none.
fn port_names(id: Identity) -> crate::ports::PortNames {
    match id.0 % 4 {
        0 => crate::ports::PortNames::new([("http", 80, 6), ("dns", 80, 17)]),
        1 => crate::ports::PortNames::new([("http", 81, 6), ("metrics", 8040, 6)]),
        2 => crate::ports::PortNames::new([("metrics", 80, 6)]),
        _ => crate::ports::PortNames::default(),
    }
}

/// Checks every subject × peer × direction × port against `decide`.
fn agree(c: &Compiler) -> Result<(), TestCaseError> {
    // The reference evaluates the rules alone; allow-localhost is tested on its own.
    let mut t = c.tables();
    t.set_allow_localhost(false);
    let policies = c.policies();
    // The labels as the compiler has them now (a test may have changed some).
    let now = |id: Identity| c.labels(id.0).cloned().unwrap_or_default();
    // Pods at addresses in and out of the blocks the generator names; the API server is a
    // pod at 10.244.1.2, node 192.168.1.1 and outside address 1.2.3.4.
    let apiserver = [
        Ipv4Addr::new(10, 244, 1, 2),
        Ipv4Addr::new(192, 168, 1, 1),
        Ipv4Addr::new(1, 2, 3, 4),
    ];
    let mut peers: Vec<PeerInfo> = Vec::new();
    for (n, (identity, _)) in pods().into_iter().enumerate() {
        let ip = *[
            Ipv4Addr::new(10, 244, 0, 1),
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 9, 0, 1),
        ]
        .get(n % 3)
        .unwrap();
        peers.push(PeerInfo {
            identity,
            labels: now(identity),
            ip,
            kube_apiserver: apiserver.contains(&ip),
            // A pod is never matched by name, whatever names point at its address.
            names: vec!["www.example.com".into()],
        });
    }
    // (World peers take their address's CIDR identity: below.)
    for (identity, labels) in reserved_labels()
        .into_iter()
        .filter(|(i, _)| *i != Identity::WORLD)
    {
        for ip in [Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(192, 168, 2, 1)] {
            peers.push(PeerInfo {
                identity,
                labels: labels.clone(),
                ip,
                kube_apiserver: apiserver.contains(&ip),
                names: Vec::new(),
            });
        }
    }
    for ip in [
        [8, 8, 8, 8],
        [8, 8, 4, 4],
        [1, 2, 3, 4],
        [9, 9, 9, 9],
        [192, 168, 1, 1],
        [10, 244, 1, 2],
    ] {
        let ip = Ipv4Addr::from(ip);
        let id = t.world_identity(ip);
        let labels = c.labels(id).cloned().unwrap_or_default();
        for names in NAMES {
            peers.push(PeerInfo {
                identity: Identity(id),
                labels: labels.clone(),
                ip,
                kube_apiserver: apiserver.contains(&ip),
                names: names.iter().map(|n| n.to_string()).collect(),
            });
        }
    }
    for (sid, _) in pods() {
        let sl = now(sid);
        let names = port_names(sid);
        for peer in &peers {
            for d in [Direction::Ingress, Direction::Egress] {
                for (proto, port) in [
                    (6, 80),
                    (17, 80),
                    (6, 81),
                    (6, 8040),
                    (1, 0),
                    (1, 8),
                    (1, 13),
                    (1, 5),
                    (1, 255),
                    (1, crate::rules::ICMP_TYPE_UNKNOWN),
                    (6, 443),
                    (132, 80),
                    (132, 0),
                    (47, 0),
                    (50, 0),
                ] {
                    let known = |s: &FqdnSelector| peer.names.iter().any(|n| s.matches(n));
                    // As the fast path asks: the endpoint's names for its ports, on ingress.
                    let ingress = d == Direction::Ingress;
                    let name_of = |p, n| names.name_of(p, n).filter(|_| ingress);
                    let want =
                        decide_named(&policies, &sl, d, peer, proto, port, name_of(proto, port))
                            .verdict;
                    let ip = Some(u32::from(peer.ip));
                    let got = t
                        .lookup_at(sid.0, d, peer.identity.0, ip, proto, port, &known, &name_of)
                        .verdict;
                    prop_assert_eq!(
                        got,
                        want,
                        "subject {} {:?} peer {} {:?} {}/{}",
                        sl,
                        d,
                        peer.labels,
                        peer.ip,
                        port,
                        proto
                    );
                    if d == Direction::Ingress || !matches!(proto, 6 | 17) {
                        continue;
                    }
                    for q in ["example.com", "www.example.com", "a.b.example.com", "x.org"] {
                        let want = dns_query_allowed(&policies, &sl, peer, proto, port, q);
                        let got =
                            t.dns_query_allowed(sid.0, peer.identity.0, ip, proto, port, q, &known);
                        prop_assert_eq!(
                            got,
                            want,
                            "dns query {} from {} to {} {:?} {}/{}",
                            q,
                            sl,
                            peer.labels,
                            peer.names,
                            port,
                            proto
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn world(seed: u64, n: usize) -> (Compiler, Vec<Policy>) {
    let mut g = Gen(seed | 1);
    let mut c = Compiler::new();
    for (id, l) in pods() {
        c.set_identity(id, l);
    }
    c.set_kube_apiserver([
        Ipv4Addr::new(10, 244, 1, 2),
        Ipv4Addr::new(192, 168, 1, 1),
        Ipv4Addr::new(1, 2, 3, 4),
    ]);
    let ps: Vec<Policy> = (0..n).map(|i| policy(&mut g, i)).collect();
    for (i, p) in ps.iter().enumerate() {
        c.set_policies(&format!("p{i}"), vec![p.clone()]);
    }
    (c, ps)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The fast path's tables give `decide`'s verdicts.
    #[test]
    fn compiled_tables_agree_with_the_reference(seed: u64, n in 1usize..6) {
        let (c, _) = world(seed, n);
        agree(&c)?;
    }

    /// After a label change, a policy removed and one replaced, the tables still agree, and a
    /// label change rebuilt only some tables.
    #[test]
    fn incremental_changes_agree_with_the_reference(seed: u64, n in 2usize..6) {
        let (mut c, ps) = world(seed, n);
        let before = c.tables().subjects();
        c.set_identity(Identity(300), pod_labels("x", "b", true));
        prop_assert!(c.last_recomputed <= before + 1);
        agree(&c)?;
        c.remove_policies("p0");
        agree(&c)?;
        let mut g = Gen(seed.rotate_left(7) | 1);
        c.set_policies("p1", vec![policy(&mut g, 1), ps[0].clone()]);
        agree(&c)?;
    }
}

#[test]
fn default_deny_deny_precedence_and_cidr_identities() {
    let web = pod_labels("x", "a", true);
    let mut c = Compiler::new();
    c.set_identity(Identity(300), web.clone());
    c.set_identity(Identity(301), pod_labels("y", "b", false));
    let origin = |r: &str| Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: "x/p".into(),
        rule: r.into(),
    };
    let allow_b = Rule {
        action: Action::Allow,
        peers: vec![Peer::Endpoints(Selector::label("k8s:app", "b"))],
        requires: Vec::new(),
        ports: vec![PortRange {
            lo: 80,
            hi: 80,
            proto: Proto::Tcp,
            l7: false,
            name: None,
        }],
        dns: Vec::new(),
        origin: origin("ingress[0]"),
    };
    let allow_cidr = Rule {
        action: Action::Allow,
        peers: vec![Peer::Cidr {
            net: "8.8.0.0/16".parse().unwrap(),
            except: vec!["8.8.8.0/24".parse().unwrap()],
            scope: CidrScope::World,
        }],
        requires: Vec::new(),
        ports: Vec::new(),
        dns: Vec::new(),
        origin: origin("ingress[1]"),
    };
    let deny_81 = Rule {
        action: Action::Deny,
        peers: vec![Peer::Any],
        requires: Vec::new(),
        ports: vec![PortRange {
            lo: 81,
            hi: 81,
            proto: Proto::Any,
            l7: false,
            name: None,
        }],
        dns: Vec::new(),
        origin: origin("ingressDeny[0]"),
    };
    let p = Policy {
        origin: origin(""),
        subject: Selector::label("k8s:app", "a"),
        node_selector: None,
        enforce_ingress: true,
        enforce_egress: false,
        ingress: vec![allow_b, allow_cidr, deny_81],
        egress: Vec::new(),
        warnings: Vec::new(),
    };
    c.set_policies("x/p", vec![p]);
    let t = c.tables();
    let v = |peer: u32, port: u16| t.lookup(300, Direction::Ingress, peer, 6, port).verdict;
    assert_eq!(v(301, 80), Verdict::Allowed);
    assert_eq!(
        v(301, 81),
        Verdict::Denied,
        "deny beats nothing, default deny"
    );
    assert_eq!(v(301, 82), Verdict::Denied, "default deny");
    assert_eq!(
        t.lookup(300, Direction::Egress, 301, 6, 82).verdict,
        Verdict::Allowed,
        "egress not enforced"
    );
    let inside = t.world_identity(Ipv4Addr::new(8, 8, 4, 4));
    let hole = t.world_identity(Ipv4Addr::new(8, 8, 8, 8));
    assert!(inside >= CIDR_IDENTITY_BASE && hole >= CIDR_IDENTITY_BASE && inside != hole);
    assert_eq!(
        t.world_identity(Ipv4Addr::new(9, 9, 9, 9)),
        Identity::WORLD.0
    );
    assert_eq!(v(inside, 443), Verdict::Allowed);
    assert_eq!(v(inside, 81), Verdict::Denied, "deny beats the CIDR allow");
    assert_eq!(v(hole, 443), Verdict::Denied, "except");
    assert_eq!(v(Identity::WORLD.0, 443), Verdict::Denied);
    // Unselected identities allow everything.
    assert_eq!(
        t.lookup(301, Direction::Ingress, 300, 6, 9).verdict,
        Verdict::Allowed
    );
    // A label change that leaves the selection: default allow again, and only that table
    // was rebuilt.
    c.set_identity(Identity(300), pod_labels("x", "c", true));
    assert_eq!(c.last_recomputed, 1);
    assert!(c.tables().get(300).is_none());
}

/// Every IP protocol is judged: TCP, UDP and SCTP by port; ICMP and protocols without ports
/// (GRE, ESP, IPIP) by addresses alone. An L3 rule (no ports) allows them, a port rule (even
/// `ANY`) never does, default deny denies them. Through the reference and the compiled tables.
#[test]
fn every_protocol_is_judged_l3_rules_allow_port_rules_never_cover_portless_ones() {
    let origin = |r: &str| Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: "x/p".into(),
        rule: r.into(),
    };
    let port_rule = |proto: Proto, lo: u16| Rule {
        action: Action::Allow,
        peers: vec![Peer::Endpoints(Selector::label("k8s:app", "b"))],
        requires: Vec::new(),
        ports: vec![PortRange {
            lo,
            hi: lo,
            proto,
            l7: false,
            name: None,
        }],
        dns: Vec::new(),
        origin: origin("ingress[0]"),
    };
    let l3_rule = Rule {
        action: Action::Allow,
        peers: vec![Peer::Endpoints(Selector::label("k8s:app", "c"))],
        requires: Vec::new(),
        ports: Vec::new(),
        dns: Vec::new(),
        origin: origin("ingress[1]"),
    };
    let (gre, esp, ipip, icmp, sctp) = (47u8, 50u8, 4u8, 1u8, 132u8);
    for (proto, lo) in [(Proto::Any, 0), (Proto::Any, 80), (Proto::Sctp, 80)] {
        let p = Policy {
            origin: origin(""),
            subject: Selector::label("k8s:app", "a"),
            node_selector: None,
            enforce_ingress: true,
            enforce_egress: false,
            ingress: vec![port_rule(proto, lo), l3_rule.clone()],
            egress: Vec::new(),
            warnings: Vec::new(),
        };
        let mut c = Compiler::new();
        c.set_identity(Identity(300), pod_labels("x", "a", true));
        c.set_identity(Identity(301), pod_labels("x", "b", true));
        c.set_identity(Identity(302), pod_labels("x", "c", true));
        c.set_identity(Identity(303), pod_labels("x", "d", true));
        c.set_policies("x/p", vec![p.clone()]);
        let t = c.tables();
        let subject = pod_labels("x", "a", true);
        let peer = |id: u32, labels: Labels| PeerInfo {
            identity: Identity(id),
            labels,
            ip: Ipv4Addr::new(10, 244, 1, 2),
            kube_apiserver: false,
            names: Vec::new(),
        };
        let check = |from: u32, labels: Labels, proto: u8, port: u16, want: Verdict| {
            let got = t.lookup(300, Direction::Ingress, from, proto, port).verdict;
            let reference = decide(
                std::slice::from_ref(&p),
                &subject,
                Direction::Ingress,
                &peer(from, labels),
                proto,
                port,
            )
            .verdict;
            assert_eq!(got, want, "{proto}/{port} from {from} under {proto:?}/{lo}");
            assert_eq!(reference, want, "reference: {proto}/{port} from {from}");
        };
        let b = || pod_labels("x", "b", true);
        let c_ = || pod_labels("x", "c", true);
        let d = || pod_labels("x", "d", true);
        for portless in [gre, esp, ipip, icmp] {
            check(301, b(), portless, 0, Verdict::Denied);
            check(302, c_(), portless, 0, Verdict::Allowed);
            check(303, d(), portless, 0, Verdict::Denied);
        }
        let sctp_ok = lo == 0 || lo == 80;
        check(
            301,
            b(),
            sctp,
            80,
            if sctp_ok {
                Verdict::Allowed
            } else {
                Verdict::Denied
            },
        );
        check(302, c_(), sctp, 9, Verdict::Allowed);
        check(303, d(), sctp, 80, Verdict::Denied);
        let tcp_ok = proto == Proto::Any;
        check(
            301,
            b(),
            6,
            80,
            if tcp_ok {
                Verdict::Allowed
            } else {
                Verdict::Denied
            },
        );
    }
}

#[test]
fn icmp_rules_allow_and_deny_exactly_their_types_and_no_other_protocol() {
    let origin = |r: &str| Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: "x/p".into(),
        rule: r.into(),
    };
    // From b: echo request (8) and TCP 80 (icmps and toPorts of one rule are ORed). From
    // anyone: types 13-14 (timestamp), but a deny of type 14 from c beats it.
    let allow_b = Rule {
        action: Action::Allow,
        peers: vec![Peer::Endpoints(Selector::label("k8s:app", "b"))],
        requires: Vec::new(),
        ports: vec![
            PortRange::icmp(8, 8),
            PortRange {
                lo: 80,
                hi: 80,
                proto: Proto::Tcp,
                l7: false,
                name: None,
            },
        ],
        dns: Vec::new(),
        origin: origin("ingress[0]"),
    };
    let allow_ts = Rule {
        action: Action::Allow,
        peers: vec![Peer::Any],
        requires: Vec::new(),
        ports: vec![PortRange::icmp(13, 14)],
        dns: Vec::new(),
        origin: origin("ingress[1]"),
    };
    let deny_c = Rule {
        action: Action::Deny,
        peers: vec![Peer::Endpoints(Selector::label("k8s:app", "c"))],
        requires: Vec::new(),
        ports: vec![PortRange::icmp(14, 14)],
        dns: Vec::new(),
        origin: origin("ingressDeny[0]"),
    };
    let p = Policy {
        origin: origin(""),
        subject: Selector::label("k8s:app", "a"),
        node_selector: None,
        enforce_ingress: true,
        enforce_egress: false,
        ingress: vec![allow_b, allow_ts, deny_c],
        egress: Vec::new(),
        warnings: Vec::new(),
    };
    let mut c = Compiler::new();
    for (id, app) in [(300, "a"), (301, "b"), (302, "c")] {
        c.set_identity(Identity(id), pod_labels("x", app, false));
    }
    c.set_policies("x/p", vec![p.clone()]);
    let t = c.tables();
    let subject = pod_labels("x", "a", false);
    let unknown = crate::rules::ICMP_TYPE_UNKNOWN;
    // (peer identity, its app, protocol, port or ICMP type, verdict, deciding rule)
    type Case<'a> = (u32, &'a str, u8, u16, Verdict, Option<&'a str>);
    let cases: [Case; 12] = [
        (301, "b", 1, 8, Verdict::Allowed, Some("ingress[0]")),
        (301, "b", 1, 0, Verdict::Denied, None),
        (301, "b", 1, 3, Verdict::Denied, None),
        (301, "b", 6, 80, Verdict::Allowed, Some("ingress[0]")),
        // The ICMP type is no port: TCP 8 is not allowed by type 8.
        (301, "b", 6, 8, Verdict::Denied, None),
        (301, "b", 17, 8, Verdict::Denied, None),
        (301, "b", 1, unknown, Verdict::Denied, None),
        (302, "c", 1, 8, Verdict::Denied, None),
        (302, "c", 1, 13, Verdict::Allowed, Some("ingress[1]")),
        (302, "c", 1, 14, Verdict::Denied, Some("ingressDeny[0]")),
        (301, "b", 1, 14, Verdict::Allowed, Some("ingress[1]")),
        (301, "b", 1, 15, Verdict::Denied, None),
    ];
    for (from, app, proto, ty, want, rule) in cases {
        let got = t.lookup(300, Direction::Ingress, from, proto, ty);
        let peer = PeerInfo {
            identity: Identity(from),
            labels: pod_labels("x", app, false),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            kube_apiserver: false,
            names: Vec::new(),
        };
        let reference = decide(
            std::slice::from_ref(&p),
            &subject,
            Direction::Ingress,
            &peer,
            proto,
            ty,
        );
        assert_eq!(got.verdict, want, "{proto}/{ty} from {app}");
        assert_eq!(
            reference.verdict, want,
            "reference: {proto}/{ty} from {app}"
        );
        assert_eq!(
            got.rule.map(|r| r.rule.as_str()),
            rule,
            "{proto}/{ty} from {app}"
        );
    }
}

#[test]
fn the_local_host_reaches_endpoints_under_default_deny_unless_a_deny_names_it() {
    let mut c = Compiler::new();
    c.set_identity(Identity(300), pod_labels("x", "a", false));
    let origin = |r: &str| Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: "x/p".into(),
        rule: r.into(),
    };
    let only_remote_node = Rule {
        action: Action::Allow,
        peers: vec![Peer::Entity(Entity::RemoteNode)],
        requires: Vec::new(),
        ports: Vec::new(),
        dns: Vec::new(),
        origin: origin("ingress[0]"),
    };
    let policy = |ingress: Vec<Rule>| Policy {
        origin: origin(""),
        subject: Selector::label("k8s:app", "a"),
        node_selector: None,
        enforce_ingress: true,
        enforce_egress: true,
        ingress,
        egress: Vec::new(),
        warnings: Vec::new(),
    };
    c.set_policies("x/p", vec![policy(vec![only_remote_node.clone()])]);
    let mut t = c.tables();
    let v =
        |t: &PolicyTables, d: Direction, peer: Identity| t.lookup(300, d, peer.0, 6, 80).verdict;
    assert!(
        t.allow_localhost(),
        "on by default, as Cilium on Kubernetes"
    );
    assert_eq!(v(&t, Direction::Ingress, Identity::HOST), Verdict::Allowed);
    assert_eq!(
        v(&t, Direction::Ingress, Identity::REMOTE_NODE),
        Verdict::Allowed
    );
    assert_eq!(v(&t, Direction::Ingress, Identity::WORLD), Verdict::Denied);
    assert_eq!(
        v(&t, Direction::Egress, Identity::HOST),
        Verdict::Denied,
        "only the host's way in: a pod's egress to the host follows its policy"
    );
    t.set_allow_localhost(false);
    assert_eq!(v(&t, Direction::Ingress, Identity::HOST), Verdict::Denied);
    let deny_host = Rule {
        action: Action::Deny,
        peers: vec![Peer::Entity(Entity::Host)],
        requires: Vec::new(),
        ports: Vec::new(),
        dns: Vec::new(),
        origin: origin("ingressDeny[0]"),
    };
    c.set_policies("x/p", vec![policy(vec![only_remote_node, deny_host])]);
    let t = c.tables();
    let l = t.lookup(300, Direction::Ingress, Identity::HOST.0, 6, 80);
    assert_eq!(l.verdict, Verdict::Denied, "an explicit deny still holds");
    assert_eq!(l.rule.map(|r| r.rule.as_str()), Some("ingressDeny[0]"));
}

/// Cilium's documented example: a policy requiring `env=prod` of every peer of `env=prod`
/// endpoints, and another allowing `role=frontend`: a frontend in `env=dev` is denied, one in
/// `env=prod` allowed; the requirement narrows endpoint peers only, not entities.
#[test]
fn requirements_of_one_policy_constrain_the_rules_of_another() {
    let labels = |role: &str, env: &str| {
        let pl: std::collections::BTreeMap<String, String> = [
            ("role".to_string(), role.to_string()),
            ("env".to_string(), env.to_string()),
        ]
        .into();
        Labels::for_pod(
            crate::PodOrigin::in_namespace("x"),
            &pl,
            &std::collections::BTreeMap::new(),
        )
    };
    let origin = |name: &str, rule: &str| Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: format!("x/{name}"),
        rule: rule.into(),
    };
    let prod = Selector::label("k8s:env", "prod");
    let requires_prod = Policy {
        origin: origin("requires-prod", ""),
        subject: prod.clone(),
        node_selector: None,
        enforce_ingress: true,
        enforce_egress: false,
        // `ingress: [{fromRequires: [{matchLabels: {env: prod}}]}]`: the rule itself selects
        // no peer.
        ingress: vec![Rule {
            action: Action::Allow,
            peers: Vec::new(),
            requires: vec![prod.clone()],
            ports: Vec::new(),
            dns: Vec::new(),
            origin: origin("requires-prod", "ingress[0]"),
        }],
        egress: Vec::new(),
        warnings: Vec::new(),
    };
    let frontend = Policy {
        origin: origin("allow-frontend", ""),
        subject: prod.clone(),
        node_selector: None,
        enforce_ingress: true,
        enforce_egress: false,
        ingress: vec![Rule {
            action: Action::Allow,
            peers: vec![
                Peer::Endpoints(Selector::label("k8s:role", "frontend")),
                Peer::Entity(Entity::Host),
            ],
            requires: Vec::new(),
            ports: Vec::new(),
            dns: Vec::new(),
            origin: origin("allow-frontend", "ingress[0]"),
        }],
        egress: Vec::new(),
        warnings: Vec::new(),
    };
    let (server, dev_fe, prod_fe) = (
        (Identity(300), labels("backend", "prod")),
        (Identity(301), labels("frontend", "dev")),
        (Identity(302), labels("frontend", "prod")),
    );
    let policies = [requires_prod.clone(), frontend.clone()];
    let peer = |(id, l): &(Identity, Labels)| PeerInfo {
        identity: *id,
        labels: l.clone(),
        ip: Ipv4Addr::new(10, 0, 0, 1),
        kube_apiserver: false,
        names: Vec::new(),
    };
    let host = PeerInfo {
        identity: Identity::HOST,
        labels: Labels::new([("reserved:host", "")]),
        ip: Ipv4Addr::new(10, 0, 0, 9),
        kube_apiserver: false,
        names: Vec::new(),
    };
    let mut c = Compiler::new();
    for (id, l) in [&server, &dev_fe, &prod_fe] {
        c.set_identity(*id, l.clone());
    }
    c.set_policies("frontend", vec![frontend.clone()]);
    let v = |c: &Compiler, p: &PeerInfo| {
        let mut t = c.tables();
        t.set_allow_localhost(false);
        let got = t
            .lookup(300, Direction::Ingress, p.identity.0, 6, 80)
            .verdict;
        let want = decide(&c.policies(), &server.1, Direction::Ingress, p, 6, 80).verdict;
        assert_eq!(got, want, "{}", p.labels);
        got
    };
    // Without the requirement, every frontend is allowed.
    assert_eq!(v(&c, &peer(&dev_fe)), Verdict::Allowed);
    c.set_policies("requires", vec![requires_prod.clone()]);
    assert_eq!(c.policies().len(), policies.len());
    assert_eq!(v(&c, &peer(&dev_fe)), Verdict::Denied);
    assert_eq!(v(&c, &peer(&prod_fe)), Verdict::Allowed);
    assert_eq!(
        v(&c, &host),
        Verdict::Allowed,
        "entities take no requirement"
    );
    // The dev frontend moves to prod: its identity's labels change, and it is allowed.
    c.set_identity(dev_fe.0, labels("frontend", "prod"));
    assert_eq!(
        v(
            &c,
            &PeerInfo {
                labels: labels("frontend", "prod"),
                ..peer(&dev_fe)
            }
        ),
        Verdict::Allowed
    );
    // The requirement goes: dev frontends are allowed again.
    c.set_identity(dev_fe.0, labels("frontend", "dev"));
    c.remove_policies("requires");
    assert_eq!(v(&c, &peer(&dev_fe)), Verdict::Allowed);
}

/// `toFQDNs`: an address outside the cluster passes when the endpoint knows it under a name the
/// selector matches, on the rule's ports; a pod's address never does; `rules: dns` filters the
/// names queried unless a plain L4 rule allows the same port. Reference and compiled tables.
#[test]
fn fqdn_peers_allow_learned_names_only_and_dns_rules_filter_queries() {
    let origin = |r: &str| Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: "x/p".into(),
        rule: r.into(),
    };
    let port = |lo: u16, proto: Proto| PortRange {
        lo,
        hi: lo,
        proto,
        l7: false,
        name: None,
    };
    let to_fqdn = Rule {
        action: Action::Allow,
        peers: vec![Peer::Fqdn(FqdnSelector::pattern("*.example.com").unwrap())],
        requires: Vec::new(),
        ports: vec![port(443, Proto::Tcp)],
        dns: Vec::new(),
        origin: origin("egress[1]"),
    };
    let dns_rule = |peers: Vec<Peer>, dns: Vec<FqdnSelector>, r: &str| Rule {
        action: Action::Allow,
        peers,
        requires: Vec::new(),
        ports: vec![port(53, Proto::Any)],
        dns,
        origin: origin(r),
    };
    let kube_dns = Peer::Endpoints(Selector::label("k8s:app", "b"));
    let policy = |egress: Vec<Rule>| Policy {
        origin: origin(""),
        subject: Selector::label("k8s:app", "a"),
        node_selector: None,
        enforce_ingress: false,
        enforce_egress: true,
        ingress: Vec::new(),
        egress,
        warnings: Vec::new(),
    };
    let only_example = vec![
        FqdnSelector::name("example.com").unwrap(),
        FqdnSelector::pattern("*.example.com").unwrap(),
    ];
    let p = policy(vec![
        dns_rule(vec![kube_dns.clone()], only_example.clone(), "egress[0]"),
        to_fqdn.clone(),
    ]);
    let mut c = Compiler::new();
    c.set_identity(Identity(300), pod_labels("x", "a", false));
    c.set_identity(Identity(301), pod_labels("x", "b", false));
    c.set_policies("x/p", vec![p.clone()]);
    let t = c.tables();
    let subject = pod_labels("x", "a", false);
    let world = |names: &[&str]| PeerInfo {
        identity: Identity::WORLD,
        labels: c.labels(Identity::WORLD.0).cloned().unwrap(),
        ip: Ipv4Addr::new(93, 184, 216, 34),
        names: names.iter().map(|n| n.to_string()).collect(),
        kube_apiserver: false,
    };
    let both = |peer: &PeerInfo, proto: u8, port: u16| {
        let known = |s: &FqdnSelector| peer.names.iter().any(|n| s.matches(n));
        let want = decide(
            std::slice::from_ref(&p),
            &subject,
            Direction::Egress,
            peer,
            proto,
            port,
        )
        .verdict;
        let got = t
            .lookup_at(
                300,
                Direction::Egress,
                peer.identity.0,
                None,
                proto,
                port,
                &known,
                NO_PORT_NAMES,
            )
            .verdict;
        assert_eq!(got, want, "{:?} {proto}/{port}", peer.names);
        got
    };
    assert_eq!(both(&world(&["www.example.com"]), 6, 443), Verdict::Allowed);
    assert_eq!(
        both(&world(&["WWW.Example.com."]), 6, 443),
        Verdict::Allowed
    );
    assert_eq!(
        both(&world(&["www.example.com"]), 6, 80),
        Verdict::Denied,
        "ports apply"
    );
    assert_eq!(
        both(&world(&["example.com"]), 6, 443),
        Verdict::Denied,
        "not a subdomain"
    );
    assert_eq!(
        both(&world(&[]), 6, 443),
        Verdict::Denied,
        "not learned (or expired)"
    );
    let l = t.lookup_at(
        300,
        Direction::Egress,
        0,
        None,
        6,
        443,
        &|_| true,
        NO_PORT_NAMES,
    );
    assert_eq!(l.verdict, Verdict::Denied, "identity 0 is no world address");
    let pod = PeerInfo {
        identity: Identity(301),
        labels: pod_labels("x", "b", false),
        ip: Ipv4Addr::new(10, 244, 0, 9),
        names: vec!["www.example.com".into()],
        kube_apiserver: false,
    };
    assert_eq!(
        both(&pod, 6, 443),
        Verdict::Denied,
        "a pod is never an FQDN peer"
    );
    assert_eq!(
        both(&pod, 17, 53),
        Verdict::Allowed,
        "the DNS port is allowed, not l7-denied"
    );
    assert!(t.get(300).unwrap().has_dns());
    assert_eq!(t.get(300).unwrap().fqdn_selectors().len(), 1);
    let q = |t: &PolicyTables, p: &Policy, qname: &str| {
        let want = dns_query_allowed(std::slice::from_ref(p), &subject, &pod, 17, 53, qname);
        let got = t.dns_query_allowed(300, 301, None, 17, 53, qname, NO_NAMES);
        assert_eq!(got, want, "{qname}");
        got
    };
    assert!(q(&t, &p, "example.com"));
    assert!(q(&t, &p, "api.EXAMPLE.com."));
    assert!(!q(&t, &p, "evil.org"));
    assert!(!q(&t, &p, "a.b.example.com"));
    // A plain L4 rule for the same peer and port allows every name.
    let p2 = policy(vec![
        dns_rule(vec![kube_dns.clone()], only_example, "egress[0]"),
        dns_rule(vec![kube_dns], Vec::new(), "egress[2]"),
    ]);
    c.set_policies("x/p", vec![p2.clone()]);
    let t2 = c.tables();
    assert!(q(&t2, &p2, "evil.org"));
    // A deny on the same names beats the allow.
    let deny = Rule {
        action: Action::Deny,
        ..to_fqdn
    };
    let p3 = policy(vec![deny]);
    c.set_policies("x/p", vec![p3]);
    let t3 = c.tables();
    let l = t3.lookup_at(
        300,
        Direction::Egress,
        Identity::WORLD.0,
        None,
        6,
        443,
        &|s| s.matches("a.example.com"),
        NO_PORT_NAMES,
    );
    assert_eq!(l.verdict, Verdict::Denied);
    assert_eq!(l.rule.map(|r| r.rule.as_str()), Some("egress[1]"));
}
