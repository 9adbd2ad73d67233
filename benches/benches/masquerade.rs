//! Criterion benchmark of the masquerade path (pod → world, source NAT to the node's address)
//! through `pipeline::run`, one full batch of 64 60-byte UDP frames per iteration, against the
//! plain pod → pod forward with connection tracking of the same run (the baseline):
//!
//! - `forward_ct_baseline`: pod A → pod B, one established flow;
//! - `masq_established`: pod A → 203.0.113.10, one established masqueraded flow (egress lookup,
//!   policy compare, both entries updated, the rewrite, out of the uplink);
//! - `masq_reply_established`: the world's replies to it, from the uplink to the node's
//!   address, translated back to pod A;
//! - `masq_new_flows`: 64 new flows per batch (each its own source port; a port of the range
//!   taken, two entries made). Source ports cycle through 64 × 32 flows (2048, under half the range's ports for one peer); when a cycle ends the
//!   clock moves past the UDP lifetime (untimed), so every flow of the next cycle is new again
//!   (its expired entries are started afresh in place);
//! - `forward_ct_new_flows`: the same cycle of new flows pod A → pod B (one entry each), the
//!   baseline of the new-flow case.
//!
//! The frames are rewritten from pristine copies before every timed run (untimed), as in
//! `pipeline.rs`. At the end the figures are printed as ns per packet and as ratios to the
//! baseline. `cargo bench -p vireo-benches --bench masquerade` takes about 20 s.

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use vireo_dataplane::counters::BatchCounts;
use vireo_dataplane::fixtures::{two_pods_with_ct, POD_A, POD_B, UPLINK};
use vireo_dataplane::pipeline::{run, Batch, Desc, VecFrames, Verdict, BATCH};
use vireo_dataplane::tables::{Masquerade, Tables};
use vireo_policy::{Identity, IpCacheEntry};

const FS: usize = 2048;
const HEADROOM: usize = 256;
const BLOCKS: usize = 8;
const PAYLOAD: [u8; 18] = [0x5a; 18];
const WORLD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NEXT_HOP: [u8; 6] = [2, 0, 0, 0, 0xfe, 1];
/// Batches of new flows per cycle of source ports: 2048 flows to one peer, under half of the
/// 4536 ports the range has for it (port collisions are resolved, none runs out).
const CYCLE: usize = 32;

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(PAYLOAD.len()));
    b.write(&mut out, &PAYLOAD).expect("writing to a Vec");
    out
}

fn from_a(dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    udp(POD_A.0, dst, sport, 53, (POD_A.3, POD_A.1))
}

/// Frame memory of `BLOCKS` batches; `make(k, i)` gives frame `i` of the `k`-th batch made.
struct Blocks<F: Fn(usize, usize) -> (Vec<u8>, u16)> {
    mem: RefCell<VecFrames>,
    make: F,
    next: Cell<usize>,
}

impl<F: Fn(usize, usize) -> (Vec<u8>, u16)> Blocks<F> {
    fn new(make: F) -> Self {
        Blocks {
            mem: RefCell::new(VecFrames::new(BLOCKS * BATCH, FS)),
            make,
            next: Cell::new(0),
        }
    }

    fn fresh_batch(&self) -> Batch {
        let k = self.next.get();
        self.next.set(k + 1);
        let blk = k % BLOCKS;
        let mut mem = self.mem.borrow_mut();
        let mut b = Batch::default();
        for i in 0..BATCH {
            let (f, slot) = (self.make)(k, i);
            let addr = ((blk * BATCH + i) * FS + HEADROOM) as u64;
            mem.write(addr, &f);
            b.push(Desc::new(addr, f.len() as u32, slot));
        }
        b
    }
}

#[inline]
fn run_batch(b: &mut Batch, mem: &RefCell<VecFrames>, t: &Tables) -> BatchCounts {
    let mut counts = BatchCounts::default();
    run(b, &mut *mem.borrow_mut(), t, &mut counts);
    counts
}

/// Runs `rounds` batches untimed and checks every verdict.
fn check<F: Fn(usize, usize) -> (Vec<u8>, u16)>(blocks: &Blocks<F>, t: &Tables, want: Verdict) {
    for _ in 0..=BLOCKS {
        let mut b = blocks.fresh_batch();
        run_batch(&mut b, &blocks.mem, t);
        for (i, d) in b.descs().iter().enumerate() {
            assert_eq!(d.verdict, want, "frame {i}");
        }
    }
}

/// Benchmarks one case; returns its mean ns per packet, measured again outside criterion
/// (the same routine) so that the ratios can be printed.
fn bench_case<F: Fn(usize, usize) -> (Vec<u8>, u16)>(
    c: &mut Criterion,
    name: &str,
    blocks: &Blocks<F>,
    t: &Tables,
    before_batch: &dyn Fn(usize),
) -> f64 {
    let mut g = c.benchmark_group("masquerade");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function(name, |bch| {
        bch.iter_batched_ref(
            || {
                before_batch(blocks.next.get());
                blocks.fresh_batch()
            },
            |b| run_batch(b, &blocks.mem, t),
            BatchSize::NumIterations(BLOCKS as u64),
        )
    });
    g.finish();
    // The same routine, timed by hand for the summary (setup excluded).
    let mut total = Duration::ZERO;
    let n = 20_000;
    let mut drops = 0u64;
    for _ in 0..n {
        before_batch(blocks.next.get());
        let mut b = blocks.fresh_batch();
        let t0 = Instant::now();
        let counts = std::hint::black_box(run_batch(&mut b, &blocks.mem, t));
        total += t0.elapsed();
        drops += counts.drops.iter().sum::<u64>();
    }
    assert_eq!(drops, 0, "{name}: every packet must be forwarded");
    total.as_nanos() as f64 / (n * BATCH) as f64
}

fn masquerade_benches(c: &mut Criterion) {
    let (mut t, clock) = two_pods_with_ct(1 << 16, 1 << 18);
    t.ipcache.insert(
        ipnet::Ipv4Net::default(),
        IpCacheEntry {
            identity: Identity::WORLD,
            tunnel: None,
        },
    );
    t.masq = Some(Arc::new(Masquerade {
        ports: (61000, 65535),
        cluster: vec!["10.244.0.0/16".parse().expect("a CIDR")],
        non_masquerade: Vec::new(),
        next_hop_mac: Some(NEXT_HOP),
    }));
    let uplink = Verdict::Tx { slot: UPLINK.0 };
    let none = |_: usize| {};

    let fwd = Blocks::new(|_, _| (from_a(POD_B.0, 40000), POD_A.2));
    check(&fwd, &t, Verdict::Tx { slot: POD_B.2 });
    let base = bench_case(c, "forward_ct_baseline", &fwd, &t, &none);

    let est = Blocks::new(|_, _| (from_a(WORLD, 40001), POD_A.2));
    check(&est, &t, uplink);
    let masq_est = bench_case(c, "masq_established", &est, &t, &none);

    // The flow's port, from one packet of it.
    let port = {
        let probe = Blocks::new(|_, _| (from_a(WORLD, 40001), POD_A.2));
        let mut b = probe.fresh_batch();
        run_batch(&mut b, &probe.mem, &t);
        let d = b.descs()[0];
        let mut mem = probe.mem.borrow_mut();
        let f = vireo_dataplane::pipeline::Frames::frame(&mut *mem, d.addr, d.len)
            .expect("frame")
            .to_vec();
        u16::from_be_bytes([f[34], f[35]])
    };
    let rep = Blocks::new(move |_, _| {
        let f = udp(WORLD, UPLINK.2, 53, port, (NEXT_HOP, UPLINK.1));
        (f, UPLINK.0)
    });
    check(&rep, &t, Verdict::Tx { slot: POD_A.2 });
    let masq_rep = bench_case(c, "masq_reply_established", &rep, &t, &none);

    // New flows: source ports 1024.. cycling over CYCLE batches; the clock passes the UDP
    // lifetime whenever a cycle starts, so each flow is new again.
    let new = Blocks::new(|k, i| {
        let sport = 1024 + ((k % CYCLE) * BATCH + i) as u16;
        (from_a(WORLD, sport), POD_A.2)
    });
    let clock2 = clock.clone();
    let expire = move |k: usize| {
        if k.is_multiple_of(CYCLE) {
            clock2.advance(61);
        }
    };
    expire(new.next.get());
    check(&new, &t, uplink);
    let masq_new = bench_case(c, "masq_new_flows", &new, &t, &expire);

    // The new-flow baseline: the same cycle of new flows, pod A -> pod B (one entry each).
    let new_fwd = Blocks::new(|k, i| {
        let sport = 1024 + ((k % CYCLE) * BATCH + i) as u16;
        (from_a(POD_B.0, sport), POD_A.2)
    });
    expire(new_fwd.next.get());
    check(&new_fwd, &t, Verdict::Tx { slot: POD_B.2 });
    let base_new = bench_case(c, "forward_ct_new_flows", &new_fwd, &t, &expire);

    println!("\nmasquerade, ns per packet (batches of 64 x 60-byte UDP), against the baseline of this run:");
    for (name, ns) in [
        ("forward_ct_baseline (pod -> pod)", base),
        ("masq_established (pod -> world)", masq_est),
        ("masq_reply_established (world -> pod)", masq_rep),
        ("masq_new_flows (pod -> world, new)", masq_new),
        ("forward_ct_new_flows (pod -> pod, new)", base_new),
    ] {
        println!("  {name:<40} {ns:>7.1} ns  x{:.2}", ns / base);
    }
    println!(
        "  new flows: masquerade x{:.2} of the pod -> pod new-flow forward",
        masq_new / base_new
    );
}

criterion_group!(benches, masquerade_benches);
criterion_main!(benches);
