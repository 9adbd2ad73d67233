//! Prints Maglev's disruption (share of the other backends' slots that move when one backend
//! is removed), worst over seeds, by table size and backend count.
use vireo_lb::{Maglev, PRIMES};

fn main() {
    for &m in &PRIMES[6..7] {
        for n in [2usize, 3, 4, 5, 8, 10, 20, 50, 100] {
            let mut worst = 0f64;
            for seed in 0..40u64 {
                let nm: Vec<String> = (0..n)
                    .map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 1))
                    .collect();
                let all: Vec<(&str, u32)> = nm.iter().map(|s| (s.as_str(), 1)).collect();
                let before = Maglev::build(&all, m, seed).unwrap();
                for gone in 0..n.min(4) {
                    let rest: Vec<(&str, u32)> = all
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != gone)
                        .map(|(_, b)| *b)
                        .collect();
                    let after = Maglev::build(&rest, m, seed).unwrap();
                    let (mut moved, mut others) = (0, 0);
                    for (b, a) in before.slots().iter().zip(after.slots()) {
                        if *b as usize == gone {
                            continue;
                        }
                        others += 1;
                        if nm[*b as usize] != rest[*a as usize].0 {
                            moved += 1;
                        }
                    }
                    worst = worst.max(moved as f64 / others as f64);
                }
            }
            println!(
                "M={m} n={n}: worst disruption of others {:.3}%",
                worst * 100.0
            );
        }
    }
}
