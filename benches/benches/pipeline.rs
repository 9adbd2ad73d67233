//! Criterion benchmarks of the per-batch forwarding path without I/O: `pipeline::run` over one
//! full batch (`BATCH` = 64 frames) in `VecFrames`, with the two-pod tables of
//! `vireo_dataplane::fixtures`.
//!
//! Throughput is reported in elements (frames), so criterion prints frames/s next to the time
//! per batch; time per frame is the batch time divided by 64.
//!
//! The pipeline edits frames in place (TTL, checksum, MACs; ARP requests become replies), so
//! every timed iteration must start from pristine frames, or after 63 rounds the "forward" case
//! would be measuring TTL-expired drops. The frames live in `BLOCKS` separate blocks of
//! UMEM-like memory (2048-byte chunks, each frame 256 bytes in, where received frames sit in
//! the AF_XDP UMEM). The untimed setup of `iter_batched_ref` rewrites one block from the
//! pristine copies and hands out a batch pointing at it; the timed routine runs the pipeline
//! over that batch. Each block is used by exactly one routine call between two rewrites.
//! Before timing, each case is run `BLOCKS + 1` times and every verdict is checked.
//!
//! The cases (VXLAN established, new flow through a ClusterIP, conntrack hot and at
//! 1 M entries, 1 and 2 threads) are in `pipeline_flows.rs`.
//!
//! `cargo bench -p vireo-benches --bench pipeline` takes about a minute.

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

#[path = "pipeline/flows.rs"]
mod pipeline_flows;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use vireo_dataplane::counters::{BatchCounts, DropReason};
use vireo_dataplane::fixtures::{
    arp_request_from_a, two_pods, two_pods_with_ct, udp_from_a, GATEWAY, POD_A, POD_B,
};
use vireo_dataplane::pipeline::{run, Batch, Desc, VecFrames, Verdict, BATCH};
use vireo_dataplane::tables::Tables;
use vireo_lb::{Backend, Frontend, FrontendKind, Service, ServiceSpec, ServiceTable};

/// Frame stride, as in the AF_XDP UMEM.
const FS: usize = 2048;
/// Where a received frame starts in its chunk: after the kernel's XDP headroom.
const HEADROOM: usize = 256;
/// Blocks of `BATCH` frames prepared per criterion batch (`BatchSize::NumIterations`).
const BLOCKS: usize = 8;
/// UDP payload that makes a 60-byte frame (64 bytes on the wire with the FCS).
const PAYLOAD: [u8; 18] = [0x5a; 18];

/// Frame memory with `BLOCKS` blocks of one batch each, rewritten from pristine frames.
struct Blocks<'a> {
    mem: RefCell<VecFrames>,
    pristine: &'a [Vec<u8>],
    next: Cell<usize>,
}

impl<'a> Blocks<'a> {
    fn new(pristine: &'a [Vec<u8>]) -> Self {
        assert_eq!(pristine.len(), BATCH);
        Blocks {
            mem: RefCell::new(VecFrames::new(BLOCKS * BATCH, FS)),
            pristine,
            next: Cell::new(0),
        }
    }

    /// Restores the next block from the pristine frames and returns a batch over it.
    fn fresh_batch(&self) -> Batch {
        let blk = self.next.get();
        self.next.set((blk + 1) % BLOCKS);
        let mut mem = self.mem.borrow_mut();
        let mut b = Batch::default();
        for (i, f) in self.pristine.iter().enumerate() {
            let addr = ((blk * BATCH + i) * FS + HEADROOM) as u64;
            mem.write(addr, f);
            b.push(Desc::new(addr, f.len() as u32, POD_A.2));
        }
        b
    }
}

/// Runs one batch through the pipeline (the timed part).
#[inline]
fn run_batch(b: &mut Batch, mem: &RefCell<VecFrames>, t: &Tables) -> BatchCounts {
    let mut counts = BatchCounts::default();
    run(b, &mut *mem.borrow_mut(), t, &mut counts);
    counts
}

fn udp64(dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    udp_from_a(dst, ttl, &PAYLOAD)
}

/// 64 valid UDP frames from pod A to pod B.
fn forward_frames() -> Vec<Vec<u8>> {
    (0..BATCH).map(|_| udp64(POD_B.0, 64)).collect()
}

/// 64 frames cycling through: ARP request for the gateway, unknown destination, TTL expired
/// (answered with ICMP time exceeded), valid forward.
fn mixed_frames() -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| match i % 4 {
            0 => arp_request_from_a(GATEWAY),
            1 => udp64(Ipv4Addr::new(10, 9, 9, 9), 64),
            2 => udp64(POD_B.0, 1),
            _ => udp64(POD_B.0, 64),
        })
        .collect()
}

fn expected_mixed(i: usize) -> Verdict {
    match i % 4 {
        0 => Verdict::Tx { slot: POD_A.2 },
        1 => Verdict::Drop(DropReason::UnknownDestination),
        2 => Verdict::Tx { slot: POD_A.2 },
        _ => Verdict::Tx { slot: POD_B.2 },
    }
}

/// Runs `BLOCKS + 1` rounds untimed (so every block is reused once) and checks every verdict.
fn check(frames: &[Vec<u8>], t: &Tables, want: impl Fn(usize) -> Verdict) {
    let blocks = Blocks::new(frames);
    for _ in 0..=BLOCKS {
        let mut b = blocks.fresh_batch();
        run_batch(&mut b, &blocks.mem, t);
        for (i, d) in b.descs().iter().enumerate() {
            assert_eq!(d.verdict, want(i), "frame {i}");
        }
    }
}

fn bench_case(c: &mut Criterion, name: &str, frames: &[Vec<u8>], t: &Tables) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let blocks = Blocks::new(frames);
    g.bench_function(name, |bch| {
        bch.iter_batched_ref(
            || blocks.fresh_batch(),
            |b| run_batch(b, &blocks.mem, t),
            BatchSize::NumIterations(BLOCKS as u64),
        )
    });
    g.finish();
}

fn pipeline_benches(c: &mut Criterion) {
    let t = two_pods();
    let fwd = forward_frames();
    let mixed = mixed_frames();
    check(&fwd, &t, |_| Verdict::Tx { slot: POD_B.2 });
    check(&mixed, &t, expected_mixed);
    bench_case(c, "forward_64B_batch64", &fwd, &t);
    bench_case(c, "mixed_arp_unknown_ttl_fwd_batch64", &mixed, &t);

    // Services: one established UDP flow from pod A to a ClusterIP whose backend is pod B,
    // against the same forward with connection tracking (the baseline of the same run): the
    // difference is the `service` stage (two conntrack lookups, the rewrite).
    let (mut ct, _clock) = two_pods_with_ct(1024, 1024);
    check(&fwd, &ct, |_| Verdict::Tx { slot: POD_B.2 });
    bench_case(c, "forward_ct_64B_batch64", &fwd, &ct);

    // Policy on every packet: the same established flow, pod B under an ingress policy that
    // allows pod A on UDP. The established packets are judged again, from the verdict cached
    // in their entry (one compare while the snapshot's revision is the one it was taken at).
    let mut pol = ct.clone();
    pol.policy = Arc::new(vireo_dataplane::fixtures::b_allows_a_on_udp());
    check(&fwd, &pol, |_| Verdict::Tx { slot: POD_B.2 });
    bench_case(c, "forward_ct_policy_established_batch64", &fwd, &pol);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let spec = ServiceSpec {
        name: "default/echo".into(),
        port_name: String::new(),
        port: 7,
        proto: 17,
        frontends: vec![Frontend {
            kind: FrontendKind::ClusterIp,
            ip: vip,
            port: 7,
            proto: 17,
        }],
        backends: vec![Backend {
            ip: POD_B.0,
            port: 7,
            local: true,
            terminating: false,
            weight: 1,
        }],
        affinity_timeout: None,
        source_ranges: Vec::new(),
        external_local: false,
    };
    let svc = Service::new(spec, 16381, 0).expect("valid service");
    ct.services = Arc::new(ServiceTable::new(vec![Arc::new(svc)]));
    let to_vip: Vec<Vec<u8>> = (0..BATCH).map(|_| udp64(vip, 64)).collect();
    check(&to_vip, &ct, |_| Verdict::Tx { slot: POD_B.2 });
    bench_case(c, "service_clusterip_udp_established_batch64", &to_vip, &ct);
}

criterion_group!(benches, pipeline_benches, pipeline_flows::flow_benches);
criterion_main!(benches);
