//! The conntrack table's memory on the lookup path: the same table on the heap (as before the
//! shared-memory region) and in a `MAP_SHARED` file on tmpfs (`<state_dir>/conntrack`, what
//! the agent uses so a restart adopts its flows), same run, same keys: lookup hit (with the
//! fast path's in-place update), lookup miss and insert, 1M flows pre-filled. The ratio is
//! printed at the end (conntrack/README.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vireo_conntrack::{Config, Layout, ManualClock, NewEntry, State, Table};
use vireo_dataplane::io::segment::{Segment, LOCK_WAIT};

#[path = "common/ct.rs"]
mod ct;
use ct::{key, OPS, PREFILL};

fn entry() -> NewEntry {
    NewEntry {
        state: State::Established,
        identity: 1,
        nat: None,
        bytes: 60,
    }
}

fn fill(t: &Table) {
    for i in 0..PREFILL {
        t.insert(&key(i), entry()).expect("room");
    }
}

/// Keys spread over the table (a multiplicative walk).
fn walk(n: u32, seed: u32) -> Vec<u32> {
    (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed)) % PREFILL)
        .collect()
}

fn bench(c: &mut Criterion) {
    let cfg = Config {
        max_tcp: (PREFILL + 2 * OPS) as usize,
        max_other: 1024,
        ..Default::default()
    };
    let heap = Table::new(cfg, Arc::new(ManualClock::default()));
    let dir = std::path::PathBuf::from(format!("/dev/shm/vireo-bench-{}", std::process::id()));
    let layout = Layout::for_config(&cfg);
    let seg: &'static Segment = Box::leak(Box::new(
        Segment::open(
            &dir.join("conntrack"),
            layout.bytes.next_multiple_of(4096),
            LOCK_WAIT,
        )
        .expect("segment on /dev/shm"),
    ));
    let clock = Arc::new(ManualClock::default());
    let (mapped, _) = Table::in_region(
        cfg,
        seg.conntrack_region(&layout).expect("region"),
        0,
        1,
        |_| clock,
    );
    let _ = std::fs::remove_dir_all(&dir);
    fill(&heap);
    fill(&mapped);
    let hits = walk(OPS, 7);
    let mut g = c.benchmark_group("conntrack_region");
    g.throughput(Throughput::Elements(u64::from(OPS)));
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    let mut means: Vec<(String, f64)> = Vec::new();
    let mut next_insert = PREFILL;
    for round in 0..2 {
        for (name, t) in [("heap", &heap), ("mapped", &mapped)] {
            let mut time = |op: &str, f: &mut dyn FnMut(u32)| {
                let id = format!("{op}/{name}/round{round}");
                let mut total = Duration::ZERO;
                let mut n = 0u64;
                g.bench_function(&id, |b| {
                    b.iter_custom(|iters| {
                        let s = Instant::now();
                        for _ in 0..iters {
                            for i in 0..OPS {
                                f(i);
                            }
                        }
                        let e = s.elapsed();
                        total += e;
                        n += iters * u64::from(OPS);
                        e
                    })
                });
                means.push((format!("{op}/{name}"), total.as_nanos() as f64 / n as f64));
            };
            time("lookup_hit", &mut |i| {
                let h = t.lookup(&key(hits[i as usize])).expect("hit");
                h.update(State::Established, false, 60);
            });
            time("lookup_miss", &mut |i| {
                assert!(t.lookup(&key(PREFILL * 3 + i)).is_none());
            });
            // Inserts of fresh keys, removed again at once so the table stays at its fill.
            time("insert_remove", &mut |i| {
                let k = key(next_insert.wrapping_add(i) % OPS + PREFILL);
                t.insert(&k, entry()).expect("room");
                t.remove(&k);
            });
        }
        next_insert = next_insert.wrapping_add(OPS);
    }
    g.finish();
    for op in ["lookup_hit", "lookup_miss", "insert_remove"] {
        let avg = |name: &str| {
            let v: Vec<f64> = means
                .iter()
                .filter(|(k, _)| *k == format!("{op}/{name}"))
                .map(|(_, x)| *x)
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (h, m) = (avg("heap"), avg("mapped"));
        eprintln!(
            "{op:<14} heap {h:>7.1} ns  mapped {m:>7.1} ns  mapped/heap {:.3}",
            m / h
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
