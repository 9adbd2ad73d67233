//! Criterion benchmarks of policy:
//! - `policy/lookup`: a new flow's verdict from an endpoint's compiled table (one hash lookup
//!   and a few port entries), against a bare `FxHashMap<u32, u32>` lookup over the same keys in
//!   the same run;
//! - `policy/compile`: compiling 1000 policies against 10 000 identities from scratch;
//! - `policy/label_change`: the incremental update after one endpoint's labels change, in that
//!   world.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustc_hash::FxHashMap;
use vireo_policy::{
    Action, Compiler, Direction, Identity, Labels, Origin, Peer, Policy, PortRange, Proto, Rule,
    Selector,
};

const IDENTITIES: u32 = 10_000;
const POLICIES: usize = 1000;
const FIRST: u32 = 1000;

/// Identity `i`: namespace ns-(i % 50) (team-(i % 5)), app app-(i % 500), a version label.
fn labels(i: u32, version: u32) -> Labels {
    let mut pl = BTreeMap::new();
    pl.insert("app".to_string(), format!("app-{}", i % 500));
    pl.insert("version".to_string(), format!("v{version}"));
    pl.insert("pod-template-hash".to_string(), format!("h{i}"));
    let mut nl = BTreeMap::new();
    nl.insert("team".to_string(), format!("team-{}", i % 5));
    let ns = format!("ns-{}", i % 50);
    Labels::for_pod(vireo_policy::PodOrigin::in_namespace(&ns), &pl, &nl)
}

/// Policy `i`: selects app-(i % 500) in its namespace; ingress from two apps on a port and a
/// range, a deny from another namespace's team, egress to a CIDR.
fn policy(i: usize) -> Policy {
    let ns = format!("ns-{}", i % 50);
    let origin = |r: &str| Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: format!("{ns}/p{i}"),
        rule: r.into(),
    };
    let in_ns = Selector::label("k8s:io.kubernetes.pod.namespace", &ns);
    let port = |lo: u16, hi: u16| PortRange {
        lo,
        hi,
        proto: Proto::Tcp,
        l7: false,
        name: None,
    };
    Policy {
        origin: origin(""),
        subject: Selector::label("k8s:app", &format!("app-{}", i % 500)).and(&in_ns),
        node_selector: None,
        enforce_ingress: true,
        enforce_egress: true,
        ingress: vec![
            Rule {
                action: Action::Allow,
                peers: vec![
                    Peer::Endpoints(
                        Selector::label("k8s:app", &format!("app-{}", (i + 1) % 500)).and(&in_ns),
                    ),
                    Peer::Endpoints(
                        Selector::label("k8s:app", &format!("app-{}", (i + 7) % 500)).and(&in_ns),
                    ),
                ],
                requires: Vec::new(),
                ports: vec![port(80, 80), port(8000, 8099)],
                dns: Vec::new(),
                origin: origin("ingress[0]"),
            },
            Rule {
                action: Action::Deny,
                peers: vec![Peer::Endpoints(Selector::label(
                    "k8s:io.cilium.k8s.namespace.labels.team",
                    &format!("team-{}", (i + 1) % 5),
                ))],
                requires: Vec::new(),
                ports: vec![port(22, 22)],
                dns: Vec::new(),
                origin: origin("ingressDeny[0]"),
            },
        ],
        egress: vec![Rule {
            action: Action::Allow,
            peers: vec![Peer::Cidr {
                net: format!("10.{}.0.0/16", i % 200).parse().expect("cidr"),
                except: Vec::new(),
                scope: vireo_policy::rules::CidrScope::World,
            }],
            requires: Vec::new(),
            ports: Vec::new(),
            dns: Vec::new(),
            origin: origin("egress[0]"),
        }],
        warnings: Vec::new(),
    }
}

fn world() -> Compiler {
    let mut c = Compiler::new();
    for i in 0..IDENTITIES {
        c.set_identity(Identity(FIRST + i), labels(i, 1));
    }
    for i in 0..POLICIES {
        c.set_policies(&format!("p{i}"), vec![policy(i)]);
    }
    c
}

fn benches(c: &mut Criterion) {
    let w = world();
    let t = w.tables();
    // A selected subject and peers that hit allow, deny and default deny.
    let subject = FIRST; // app-0 in ns-0
    let peers: Vec<u32> = (0..IDENTITIES).step_by(97).map(|i| FIRST + i).collect();
    assert!(t.get(subject).is_some());
    let map: FxHashMap<u32, u32> = peers.iter().map(|p| (*p, *p)).collect();

    let mut g = c.benchmark_group("policy/lookup");
    g.throughput(Throughput::Elements(peers.len() as u64));
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("baseline_fxhashmap", |b| {
        b.iter(|| peers.iter().filter_map(|p| map.get(black_box(p))).count())
    });
    g.bench_function("verdict", |b| {
        b.iter(|| {
            peers
                .iter()
                .filter(|p| {
                    t.lookup(subject, Direction::Ingress, black_box(**p), 6, 8040)
                        .verdict
                        == vireo_policy::Verdict::Allowed
                })
                .count()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("policy/compile");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    g.bench_function("1000_policies_10k_identities", |b| b.iter(world));
    g.finish();

    let mut w = w;
    let mut version = 1;
    let mut g = c.benchmark_group("policy/label_change");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("one_identity_in_1000x10k", |b| {
        b.iter(|| {
            version += 1;
            // Identity 3 (app-3 in ns-3) is relabelled app-53 and back, in its namespace: it
            // leaves the peer sets of the rules that name app-3 and enters those naming app-53.
            let app = if version % 2 == 0 { 53 } else { 3 };
            w.set_identity(Identity(FIRST + 3), labels(app, version));
            black_box(w.last_recomputed)
        })
    });
    g.finish();
}

criterion_group!(policy_benches, benches);
criterion_main!(policy_benches);
