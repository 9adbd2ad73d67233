//! A fixed amount of pipeline work for `valgrind --tool=callgrind`, which counts instructions
//! repeatably on a noisy machine: `N` batches of 64 frames of one case, checking every verdict.
//!
//! `pipeline_ir CASE N`, CASE one of:
//! - `udp`: an established UDP flow from pod A to pod B, B under an ingress policy that allows
//!   A (every packet judged from the verdict cached in its conntrack entry);
//! - `udp-no-policy`: the same without policy;
//! - `vxlan`: an established flow from pod C on the other node to pod B, VXLAN-encapsulated
//!   (decap, conntrack hit, policy, delivery);
//! - `new-flow`: pod A to a ClusterIP with backends on the other node, a new source port every
//!   packet (Maglev, conntrack insert, policy, VXLAN encap);
//!
//! and `--ct1m` to pre-populate the conntrack table with 1 M other flows first.
//! `scripts/callgrind.sh` runs every case twice (N and 2N batches) and prints the difference
//! per packet, so setup and pre-population cancel out.

use std::sync::Arc;

use vireo_dataplane::counters::BatchCounts;
use vireo_dataplane::fixtures::scenarios::{prepopulate, Case};
use vireo_dataplane::fixtures::{b_allows_a_on_udp, two_pods_with_ct, udp_from_a, POD_A, POD_B};
use vireo_dataplane::pipeline::{run, Batch, Desc, VecFrames, Verdict, BATCH};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let case = args.get(1).map(String::as_str).unwrap_or("udp");
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let ct1m = args.iter().any(|a| a == "--ct1m");
    let prefill = if ct1m { 1_000_000 } else { 0 };
    // (tables, frame, rx slot, expected verdict, the case whose source port moves)
    let (t, frame, slot, want, moving) = match case {
        "udp" | "udp-no-policy" => {
            let (mut t, _clock) = two_pods_with_ct(1024, prefill + 1024);
            if case == "udp" {
                t.policy = Arc::new(b_allows_a_on_udp());
            }
            let f = udp_from_a(POD_B.0, 64, &[0x5a; 18]);
            (t, f, POD_A.2, Verdict::Tx { slot: POD_B.2 }, None)
        }
        "vxlan" => {
            let c = Case::Vxlan;
            (
                c.tables(prefill + 1024),
                c.frame(40000),
                c.rx_slot(),
                c.verdict(),
                None,
            )
        }
        "new-flow" => {
            let c = Case::NewFlow;
            // Sized for the largest N (not by N, so that the set-up cancels out in the script).
            let t = c.tables(2 * prefill + 4 * 64_000 + 1024);
            (t, c.frame(1024), c.rx_slot(), c.verdict(), Some(c))
        }
        other => {
            eprintln!("unknown case {other:?}: udp, udp-no-policy, vxlan or new-flow");
            std::process::exit(2);
        }
    };
    prepopulate(&t, prefill);
    let mut frame = frame;
    let mut mem = VecFrames::new(BATCH, 2048);
    let mut counts = BatchCounts::default();
    let (mut ok, mut sent) = (0u64, 0u64);
    // One batch, cleared each time, as a worker keeps its own (a new one per batch would
    // count the zeroing of its chain slots: ~18 KB).
    let mut b = Batch::default();
    for _ in 0..n {
        b.clear();
        for i in 0..BATCH {
            if let Some(c) = moving {
                // A new source port every packet; N × 64 must stay below 64 000 for every
                // packet to be new (the script's N do).
                c.set_sport(&mut frame, (1024 + sent % 64_000) as u16);
            }
            sent += 1;
            let addr = (i * 2048 + 256) as u64;
            mem.write(addr, &frame);
            b.push(Desc::new(addr, frame.len() as u32, slot));
        }
        run(&mut b, &mut mem, &t, &mut counts);
        ok += b.descs().iter().filter(|d| d.verdict == want).count() as u64;
    }
    println!("{case}: {ok} of {sent} packets got {want:?}");
    if ok != sent {
        eprintln!("{counts:?}");
        std::process::exit(1);
    }
}
