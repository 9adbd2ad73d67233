//! The whole-pipeline cases (`vireo_dataplane::fixtures::scenarios`), timed by hand in
//! `iter_custom` so that the bench can also clear the conntrack table outside the timed part
//! and run two threads over one shared `Tables`:
//! - `vxlan_established`: VXLAN decap → conntrack hit → policy → pod (target ≤ 50 ns/packet);
//! - `new_flow`: pod → ClusterIP → Maglev → conntrack insert → policy → VXLAN encap (target
//!   ≤ 150 ns/packet); a new 5-tuple every packet; every `FLUSH_EVERY` batches a thread removes
//!   the service flows from the table, untimed;
//! - each with the conntrack table small (`hot`) and holding 1 M other flows (`ct1m`);
//! - each on 1 and on 2 threads (`t1`, `t2`): every thread runs its own batches on its own
//!   frames (its own flows, as RSS would spread them) over the same `Tables`. Criterion's
//!   time per iteration is the slowest thread's busy time for one batch each, so its
//!   throughput is the aggregate; the 2-thread ÷ 1-thread ratio of the same run is printed at
//!   the end.
//!
//! - `*_flows_off`: the same with the workers' flow records off (`observe.flow_ring: 0`): the
//!   difference is the `flows` stage (a look at each forwarded packet's TCP flags, a record
//!   for each new flow). The rings are drained between batches, untimed, as the agent does.
//!
//! Each batch is timed on its own (`Instant` around `run`, ~20–40 ns per batch of 64, under a
//! nanosecond per packet); rewriting the frames is not timed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use vireo_dataplane::counters::BatchCounts;
use vireo_dataplane::fixtures::scenarios::{prepopulate, Case};
use vireo_dataplane::pipeline::{run, Batch, Desc, VecFrames, BATCH};
use vireo_dataplane::tables::Tables;

/// Frame stride and headroom, as in the AF_XDP UMEM.
const FS: usize = 2048;
const HEADROOM: usize = 256;
/// Batches between two flushes of a thread's new flows (`FLUSH_EVERY × 64` distinct ports).
const FLUSH_EVERY: u64 = 400;
/// Ports per thread: thread `t` uses source ports `1024 + t × PORTS ..`.
const PORTS: u64 = 30_000;

/// (case name, threads) → (busy time summed over threads, packets).
static SEEN: Mutex<Vec<(String, usize, Duration, u64)>> = Mutex::new(Vec::new());

/// One thread's frames and flows.
struct Worker {
    case: Case,
    mem: VecFrames,
    frame: Vec<u8>,
    /// Source port base of this thread.
    base: u64,
    /// Packets sent so far (the next port).
    sent: u64,
    batches: u64,
    thread: usize,
    /// Flow records drained between batches (untimed).
    drained: Vec<vireo_dataplane::flows::FlowRecord>,
}

impl Worker {
    fn new(case: Case, thread: usize) -> Worker {
        let base = 1024 + thread as u64 * PORTS;
        Worker {
            case,
            mem: VecFrames::new(BATCH, FS),
            frame: case.frame(base as u16),
            base,
            sent: 0,
            batches: 0,
            thread,
            drained: Vec::with_capacity(4096),
        }
    }

    /// The next batch: the established case repeats its one flow, the new-flow case moves to
    /// the next source port on every packet.
    fn fill(&mut self) -> Batch {
        let mut b = Batch::for_worker(self.thread);
        for i in 0..BATCH {
            if self.case == Case::NewFlow {
                let port = self.base + self.sent % (FLUSH_EVERY * BATCH as u64);
                self.case.set_sport(&mut self.frame, port as u16);
                self.sent += 1;
            }
            let addr = (i * FS + HEADROOM) as u64;
            self.mem.write(addr, &self.frame);
            b.push(Desc::new(
                addr,
                self.frame.len() as u32,
                self.case.rx_slot(),
            ));
        }
        b
    }

    /// Runs `n` batches; returns the time spent in the pipeline.
    fn go(&mut self, t: &Tables, n: u64, check: bool) -> Duration {
        let mut busy = Duration::ZERO;
        let mut counts = BatchCounts::default();
        for _ in 0..n {
            let mut b = self.fill();
            let start = Instant::now();
            run(&mut b, &mut self.mem, t, &mut counts);
            busy += start.elapsed();
            self.drained.clear();
            t.flows.drain_into(usize::MAX, &mut self.drained);
            if check {
                for (i, d) in b.descs().iter().enumerate() {
                    assert_eq!(d.verdict, self.case.verdict(), "{:?} frame {i}", self.case);
                }
            }
            self.batches += 1;
            if self.case == Case::NewFlow && self.batches.is_multiple_of(FLUSH_EVERY) {
                // Every flow of the next round of ports must be new again.
                let (lo, hi) = (self.base, self.base + PORTS);
                if let Some(ct) = &t.ct {
                    ct.flush(|k, nat| {
                        nat.is_some()
                            && ((lo..hi).contains(&u64::from(k.sport))
                                || (lo..hi).contains(&u64::from(k.dport)))
                    });
                }
            }
        }
        busy
    }
}

fn bench(c: &mut Criterion, name: &str, case: Case, t: &Tables, threads: usize) {
    // Untimed: every verdict checked, the established flows created.
    let mut workers: Vec<Worker> = (0..threads).map(|i| Worker::new(case, i)).collect();
    for w in &mut workers {
        w.go(t, 2, true);
    }
    let workers = Mutex::new(workers);
    let mut g = c.benchmark_group("pipeline_flows");
    g.throughput(Throughput::Elements((BATCH * threads) as u64));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let id = format!("{name}_t{threads}");
    g.bench_function(&id, |bch| {
        bch.iter_custom(|iters| {
            let mut ws = workers.lock().expect("not poisoned");
            let busy: Vec<Duration> = std::thread::scope(|s| {
                let hs: Vec<_> = ws
                    .iter_mut()
                    .map(|w| s.spawn(move || w.go(t, iters, false)))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("worker thread"))
                    .collect()
            });
            let total: Duration = busy.iter().sum();
            SEEN.lock().expect("not poisoned").push((
                name.to_string(),
                threads,
                total,
                iters * (BATCH * threads) as u64,
            ));
            busy.into_iter().max().unwrap_or_default()
        })
    });
    g.finish();
}

/// The cases, then the per-packet times and the 2-thread scaling of this run.
pub fn flow_benches(c: &mut Criterion) {
    for (name, case, prefill, flows) in [
        ("vxlan_established_hot", Case::Vxlan, 0usize, true),
        (
            "vxlan_established_hot_flows_off",
            Case::Vxlan,
            0usize,
            false,
        ),
        ("new_flow_hot", Case::NewFlow, 0, true),
        ("new_flow_hot_flows_off", Case::NewFlow, 0, false),
        ("vxlan_established_ct1m", Case::Vxlan, 1_000_000, true),
        ("new_flow_ct1m", Case::NewFlow, 1_000_000, true),
    ] {
        // Room for the prefill (twice: at 3/4 load a bucket pair can be full) and for 2 threads' flows (two entries each) of two flush rounds.
        let mut t = case.tables(2 * prefill + 8 * PORTS as usize + 4096);
        t.flows = std::sync::Arc::new(vireo_dataplane::flows::FlowRings::new(2, 4096));
        t.flows.set(flows);
        prepopulate(&t, prefill);
        let threads: &[usize] = if flows { &[1, 2] } else { &[1] };
        for &threads in threads {
            bench(c, name, case, &t, threads);
        }
        if let Some(ct) = &t.ct {
            eprintln!("{name}: conntrack holds {:?} (tcp, other)", ct.counts());
        }
    }
    report();
}

fn report() {
    let seen = SEEN.lock().expect("not poisoned");
    let per = |name: &str, threads: usize| {
        let (d, p) = seen
            .iter()
            .filter(|(n, th, _, _)| n == name && *th == threads)
            .fold((Duration::ZERO, 0u64), |(d, p), x| (d + x.2, p + x.3));
        // ns per packet on one thread's busy time; aggregate packets/s over the threads.
        let ns = d.as_nanos() as f64 / p.max(1) as f64;
        (ns, threads as f64 * 1e9 / ns)
    };
    println!(
        "\n| case | ns/packet 1 thread | ns/packet/thread 2 threads | 2 ÷ 1 thread throughput |"
    );
    println!("|---|---|---|---|");
    let mut names: Vec<&str> = seen.iter().map(|x| x.0.as_str()).collect();
    names.dedup();
    for n in names {
        let ((ns1, r1), (ns2, r2)) = (per(n, 1), per(n, 2));
        if seen.iter().any(|x| x.0 == n && x.1 == 2) {
            println!("| {n} | {ns1:.1} | {ns2:.1} | {:.2}× |", r2 / r1);
        } else {
            println!("| {n} | {ns1:.1} | - | - |");
        }
    }
    println!(
        "load: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
