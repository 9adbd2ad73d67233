//! Prints the table's disruption: the share of the other backends' slots that move when one
//! backend is removed, worst and mean over seeds and removals, by table size and backend count.
//!
//! `cargo run -p vireo-lb --release --example disruption [SEEDS]`
use vireo_lb::maglev::disruption;
use vireo_lb::{Maglev, PRIMES};

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("| M | N | worst | mean |\n|---|---|---|---|");
    for &m in &PRIMES[6..9] {
        for n in [3usize, 4, 5, 8, 10, 20, 50, 100, 160] {
            let (mut worst, mut sum, mut count) = (0f64, 0f64, 0u32);
            let names: Vec<String> = (0..n)
                .map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 1))
                .collect();
            let all: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1)).collect();
            for seed in 0..seeds {
                let before = Maglev::build(&all, m, seed).expect("valid input");
                for gone in 0..n.min(4) {
                    let mut rest = all.clone();
                    rest.remove(gone);
                    let after = Maglev::build(&rest, m, seed).expect("valid input");
                    let d = disruption(&before, &all, &after, &rest, gone);
                    worst = worst.max(d);
                    sum += d;
                    count += 1;
                }
            }
            println!(
                "| {m} | {n} | {:.3}% | {:.3}% |",
                worst * 100.0,
                sum / f64::from(count) * 100.0
            );
        }
    }
}
