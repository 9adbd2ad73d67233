//! Criterion benchmarks of DNS-aware policy (`toFQDNs`):
//! - `fqdn/learn`: one DNS response learned, in ns per response: the `hickory-proto` parse
//!   and the cache update (a copy of the endpoint's map), for an endpoint that already knows
//!   100 names;
//! - `fqdn/parse_only`: the parse alone, to tell the two apart;
//! - `fqdn/verdict`: a new flow's verdict to a world address, with the endpoint's egress
//!   under `toFQDNs` rules (the address learned: allowed through the cache), against the same
//!   lookup in a policy without FQDN rules (a CIDR rule allowing the address), in the same run.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vireo_dataplane::fixtures::{app_labels, cnp_origin, two_pods, IDS, POD_A};
use vireo_dataplane::fqdn::dns_fixtures::response;
use vireo_dataplane::fqdn::parse::response_answers;
use vireo_dataplane::fqdn::{Answer, FqdnCache};
use vireo_dataplane::tables::Tables;
use vireo_policy::{
    Action, Compiler, FqdnSelector, Identity, Peer, Policy, PortRange, Proto, Rule, Selector,
};

const WWW: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

/// Pod A's egress: TCP 443 to `peer`.
fn tables(peer: Peer) -> Tables {
    let mut c = Compiler::new();
    c.set_identity(Identity(IDS[0]), app_labels("a"));
    let p = Policy {
        origin: cnp_origin("default/bench", ""),
        subject: Selector::label("k8s:app", "a"),
        node_selector: None,
        enforce_ingress: false,
        enforce_egress: true,
        ingress: Vec::new(),
        egress: vec![Rule {
            action: Action::Allow,
            peers: vec![peer],
            requires: Vec::new(),
            ports: vec![PortRange {
                lo: 443,
                hi: 443,
                proto: Proto::Tcp,
                l7: false,
                name: None,
            }],
            dns: Vec::new(),
            origin: cnp_origin("default/bench", "egress[0]"),
        }],
        warnings: Vec::new(),
    };
    c.set_policies("default/bench", vec![p]);
    let mut t = two_pods();
    t.policy = Arc::new(c.tables());
    t
}

fn bench(c: &mut Criterion) {
    let sels = vec![FqdnSelector::pattern("*.example.com").unwrap()];
    let msg = response(
        1,
        "www.example.com",
        &[("www.example.com", "edge.example.com")],
        &[
            ("edge.example.com", WWW, 30),
            ("edge.example.com", Ipv4Addr::new(93, 184, 216, 35), 30),
        ],
    );
    let ep = u32::from(POD_A.0);
    let mut g = c.benchmark_group("fqdn");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_only", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            response_answers(black_box(&msg), &sels, &mut out).unwrap();
            out
        })
    });
    let cache = FqdnCache::default();
    let warm: Vec<Answer> = (0..100u8)
        .map(|i| Answer {
            name: format!("h{i}.example.com"),
            ip: Ipv4Addr::new(10, 99, 0, i),
            ttl: 300,
        })
        .collect();
    cache.learn(ep, &warm, 0);
    g.bench_function("learn", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            response_answers(black_box(&msg), &sels, &mut out).unwrap();
            cache.learn(ep, &out, 1)
        })
    });

    let with_fqdn = tables(Peer::Fqdn(FqdnSelector::pattern("*.example.com").unwrap()));
    with_fqdn.fqdn.learn(ep, &warm, 0);
    with_fqdn.fqdn.learn(
        ep,
        &[Answer {
            name: "www.example.com".into(),
            ip: WWW,
            ttl: 300,
        }],
        0,
    );
    let with_cidr = tables(Peer::Cidr {
        net: "93.184.216.0/24".parse().unwrap(),
        except: Vec::new(),
        scope: vireo_policy::rules::CidrScope::World,
    });
    let (src, dst) = (u32::from(POD_A.0), u32::from(WWW));
    for (name, t) in [("verdict_fqdn", &with_fqdn), ("verdict_cidr", &with_cidr)] {
        assert!(
            t.policy_denies(src, IDS[0], dst, 6, 443).is_none(),
            "{name}: allowed"
        );
        g.bench_function(name, |b| {
            b.iter(|| t.policy_denies(black_box(src), IDS[0], black_box(dst), 6, 443))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
