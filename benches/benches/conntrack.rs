//! The conntrack table against the candidates the issue names: `dashmap` (sharded locks) and
//! `papaya` (lock-free), each holding the same per-flow value of atomics that Vireo updates in
//! place. Lookup hit, lookup miss, insert, and a 90/10 mix of lookups and inserts, each at 1
//! and 2 threads, over a table pre-filled with 1M flows; then the memory each takes for 1M
//! flows (RSS growth, printed once). Results and the choice: conntrack/README.md.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vireo_conntrack::{Config, Key, ManualClock, NewEntry, State, Table};

#[path = "common/ct.rs"]
mod ct;
use ct::{key, OPS, PREFILL};

/// What the maps store per flow (like a slot of ours, minus the key).
#[derive(Default)]
struct Value {
    expires: AtomicU32,
    state: AtomicU32,
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl Value {
    /// What the fast path does to a found flow: counters, lifetime, state.
    fn touch(&self) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(60, Ordering::Relaxed);
        self.expires.store(21600, Ordering::Relaxed);
        self.state
            .store(State::Established as u32, Ordering::Relaxed);
    }
}

trait Map: Sync {
    fn name(&self) -> &'static str;
    /// Looks up and, on a hit, updates counters (as the fast path does).
    fn hit(&self, k: &Key) -> bool;
    fn insert(&self, k: Key);
    fn remove(&self, k: &Key);
}

impl Map for Table {
    fn name(&self) -> &'static str {
        "vireo"
    }
    fn hit(&self, k: &Key) -> bool {
        match self.lookup(k) {
            Some(h) => {
                h.update(State::Established, false, 60);
                true
            }
            None => false,
        }
    }
    fn insert(&self, k: Key) {
        let _ = Table::insert(
            self,
            &k,
            NewEntry {
                state: State::SynSent,
                identity: 1,
                nat: None,
                bytes: 60,
            },
        );
    }
    fn remove(&self, k: &Key) {
        Table::remove(self, k);
    }
}

struct Dash(dashmap::DashMap<Key, Value>);

impl Map for Dash {
    fn name(&self) -> &'static str {
        "dashmap"
    }
    fn hit(&self, k: &Key) -> bool {
        match self.0.get(k) {
            Some(v) => {
                v.touch();
                true
            }
            None => false,
        }
    }
    fn insert(&self, k: Key) {
        self.0.entry(k).or_default();
    }
    fn remove(&self, k: &Key) {
        self.0.remove(k);
    }
}

struct Papaya(papaya::HashMap<Key, Value>);

impl Map for Papaya {
    fn name(&self) -> &'static str {
        "papaya"
    }
    fn hit(&self, k: &Key) -> bool {
        match self.0.pin().get(k) {
            Some(v) => {
                v.touch();
                true
            }
            None => false,
        }
    }
    fn insert(&self, k: Key) {
        self.0.pin().get_or_insert_with(k, Value::default);
    }
    fn remove(&self, k: &Key) {
        self.0.pin().remove(k);
    }
}

fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        * 4096
}

fn fill(m: &dyn Map) {
    for i in 0..PREFILL {
        m.insert(key(i));
    }
}

/// Spread of hit keys over the table (a fixed pseudo-random walk).
fn walk(n: u32, seed: u32) -> Vec<u32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % PREFILL
        })
        .collect()
}

/// Runs `op` over `OPS` operations split across `threads`, `iters` times; returns wall time.
fn timed(iters: u64, threads: usize, op: &(dyn Fn(usize, u32) + Sync)) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        std::thread::scope(|s| {
            for th in 0..threads {
                s.spawn(move || {
                    let per = OPS / threads as u32;
                    for i in 0..per {
                        op(th, i);
                    }
                });
            }
        });
    }
    t.elapsed()
}

fn bench(c: &mut Criterion) {
    let clock = Arc::new(ManualClock::default());
    let cfg = Config {
        max_tcp: (PREFILL + 2 * OPS) as usize,
        max_other: 1024,
        ..Default::default()
    };
    let mut mem = Vec::new();
    let r0 = rss_bytes();
    let ours = Table::new(cfg, clock);
    fill(&ours);
    mem.push(("vireo", rss_bytes() - r0));
    let r0 = rss_bytes();
    let dash = Dash(dashmap::DashMap::with_capacity(PREFILL as usize));
    fill(&dash);
    mem.push(("dashmap", rss_bytes() - r0));
    let r0 = rss_bytes();
    let pap = Papaya(papaya::HashMap::with_capacity(PREFILL as usize));
    fill(&pap);
    mem.push(("papaya", rss_bytes() - r0));
    for (name, b) in &mem {
        eprintln!(
            "memory for 1M flows: {name:<8} {:>6} MiB, {:>4} bytes/flow",
            b >> 20,
            b / PREFILL as usize
        );
    }
    let maps: [&dyn Map; 3] = [&ours, &dash, &pap];
    let hits = walk(OPS, 7);
    let mut g = c.benchmark_group("conntrack");
    g.throughput(Throughput::Elements(u64::from(OPS)));
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    for threads in [1usize, 2] {
        for m in maps {
            let n = m.name();
            g.bench_function(format!("lookup_hit/{threads}t/{n}"), |b| {
                b.iter_custom(|it| {
                    timed(it, threads, &|th, i| {
                        assert!(m.hit(&key(hits[(i as usize * threads + th) % hits.len()])));
                    })
                })
            });
            g.bench_function(format!("lookup_miss/{threads}t/{n}"), |b| {
                b.iter_custom(|it| {
                    timed(it, threads, &|th, i| {
                        assert!(!m.hit(&key(PREFILL + OPS * 4 + i * 2 + th as u32)))
                    })
                })
            });
            g.bench_function(format!("insert/{threads}t/{n}"), |b| {
                b.iter_custom(|it| {
                    let mut total = Duration::ZERO;
                    for _ in 0..it {
                        total += timed(1, threads, &|th, i| {
                            m.insert(key(PREFILL + i * threads as u32 + th as u32))
                        });
                        for i in 0..OPS {
                            m.remove(&key(PREFILL + i));
                        }
                    }
                    total
                })
            });
            g.bench_function(format!("mixed_90_10/{threads}t/{n}"), |b| {
                b.iter_custom(|it| {
                    let mut total = Duration::ZERO;
                    for _ in 0..it {
                        total += timed(1, threads, &|th, i| {
                            let j = i as usize * threads + th;
                            if j % 10 == 9 {
                                m.insert(key(PREFILL + j as u32));
                            } else {
                                m.hit(&key(hits[j % hits.len()]));
                            }
                        });
                        for j in (9..OPS as usize).step_by(10) {
                            m.remove(&key(PREFILL + j as u32));
                        }
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
