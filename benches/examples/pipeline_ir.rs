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
use vireo_dataplane::fixtures::{b_allows_a_on_udp, two_pods_with_ct, udp_from_a, POD_B};
use vireo_dataplane::pipeline::{run, Batch, Desc, VecFrames, BATCH};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let no_policy = args.iter().any(|a| a == "--no-policy");
    let (mut t, _clock) = two_pods_with_ct(1024, 1024);
    if !no_policy {
        t.policy = Arc::new(b_allows_a_on_udp());
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
