//! A fixed amount of pipeline work for `valgrind --tool=callgrind`, which counts instructions
//! repeatably on a noisy machine: `N` batches of 64 frames of one established UDP flow from pod
//! A to pod B, with B under an ingress policy that allows A (so every packet is judged from the
//! verdict cached in its conntrack entry), or with no policy (`--no-policy`).
//!
//! ```sh
//! cargo build --release -p vireo-benches --example pipeline_ir
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/pipeline_ir 20000
//! ```
//! Instructions per packet: the total divided by `N × 64` (setup is a few hundred thousand).

use std::sync::Arc;

use vireo_dataplane::counters::BatchCounts;
use vireo_dataplane::fixtures::{two_pods_with_ct, udp_from_a, IDS, POD_B};
use vireo_dataplane::pipeline::{run, Batch, Desc, VecFrames, BATCH};
use vireo_policy::{
    Action, Compiler, Identity, Labels, Origin, Peer, Policy, PortRange, Proto, Rule, Selector,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let no_policy = args.iter().any(|a| a == "--no-policy");
    let (mut t, _clock) = two_pods_with_ct(1024, 1024);
    if !no_policy {
        t.policy = Arc::new(policy());
    }
    let frame = udp_from_a(POD_B.0, 64, &[0x5a; 18]);
    let mut mem = VecFrames::new(BATCH, 2048);
    let mut counts = BatchCounts::default();
    let mut tx = 0u64;
    for _ in 0..n {
        let mut b = Batch::default();
        for i in 0..BATCH {
            let addr = (i * 2048 + 256) as u64;
            mem.write(addr, &frame);
            b.push(Desc::new(addr, frame.len() as u32, 0));
        }
        run(&mut b, &mut mem, &t, &mut counts);
        tx += b
            .descs()
            .iter()
            .filter(|d| matches!(d.verdict, vireo_dataplane::pipeline::Verdict::Tx { .. }))
            .count() as u64;
    }
    println!("{tx} of {} packets forwarded", n * BATCH);
}

/// Pod B takes ingress from pod A on UDP.
fn policy() -> vireo_policy::PolicyTables {
    let labels = |app: &str| {
        Labels::new([
            ("k8s:app", app),
            ("k8s:io.kubernetes.pod.namespace", "default"),
        ])
    };
    let origin = |rule: &str| Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: "default/ir".into(),
        rule: rule.into(),
    };
    let mut c = Compiler::new();
    c.set_identity(Identity(IDS[0]), labels("a"));
    c.set_identity(Identity(IDS[1]), labels("b"));
    c.set_policies(
        "default/ir",
        vec![Policy {
            origin: origin(""),
            subject: Selector::label("k8s:app", "b"),
            node_selector: None,
            enforce_ingress: true,
            enforce_egress: false,
            ingress: vec![Rule {
                action: Action::Allow,
                peers: vec![Peer::Endpoints(Selector::label("k8s:app", "a"))],
                requires: Vec::new(),
                ports: vec![PortRange {
                    lo: 0,
                    hi: 0,
                    proto: Proto::Udp,
                    l7: false,
                }],
                origin: origin("ingress[0]"),
            }],
            egress: Vec::new(),
            warnings: Vec::new(),
        }],
    );
    c.tables()
}
