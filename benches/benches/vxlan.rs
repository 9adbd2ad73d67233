//! Criterion benchmarks of the overlay stages without I/O: a full batch (64 frames) of packets
//! for a pod on another node, through the pipeline into VXLAN (encap), and a full batch of VXLAN
//! packets from the other node, through the pipeline to a local pod (decap). Frames sit 256 bytes
//! into 2048-byte chunks, as the kernel's XDP headroom leaves them in the UMEM, and are restored
//! before every timed run (the pipeline edits them in place). Throughput is in frames, so time
//! per frame = time per batch / 64. The plain local-forward case runs alongside as the baseline
//! of the same run.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use vireo_dataplane::counters::BatchCounts;
use vireo_dataplane::fixtures::{
    two_pods, udp_from_a, vxlan_from_c, IDS, POD_A, POD_B, POD_C, UPLINK,
};
use vireo_dataplane::pipeline::{run, Batch, Desc, VecFrames, Verdict, BATCH};

const FS: usize = 2048;
const HEADROOM: usize = 256;
const PAYLOAD: [u8; 18] = [0x5a; 18];

fn load(frame: &[u8], slot: u16) -> (VecFrames, Batch) {
    let mut mem = VecFrames::new(BATCH, FS);
    let mut b = Batch::default();
    for i in 0..BATCH {
        let addr = (i * FS + HEADROOM) as u64;
        mem.write(addr, frame);
        b.push(Desc::new(addr, frame.len() as u32, slot));
    }
    (mem, b)
}

fn case(c: &mut Criterion, name: &str, frame: Vec<u8>, slot: u16, want: Verdict) {
    let t = two_pods();
    // Check once that the case measures what it says.
    let (mut mem, mut b) = load(&frame, slot);
    let mut counts = BatchCounts::default();
    run(&mut b, &mut mem, &t, &mut counts);
    assert!(
        b.descs().iter().all(|d| d.verdict == want),
        "{name}: {:?}",
        b.descs()[0].verdict
    );

    let mut g = c.benchmark_group("overlay");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function(name, |bench| {
        bench.iter_batched_ref(
            || load(&frame, slot),
            |(mem, b)| {
                let mut counts = BatchCounts::default();
                run(b, mem, &t, &mut counts);
                counts
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn overlay(c: &mut Criterion) {
    case(
        c,
        "local_forward_64B_batch64",
        udp_from_a(POD_B.0, 64, &PAYLOAD),
        POD_A.2,
        Verdict::Tx { slot: POD_B.2 },
    );
    case(
        c,
        "vxlan_encap_64B_batch64",
        udp_from_a(POD_C, 64, &PAYLOAD),
        POD_A.2,
        Verdict::Tx { slot: UPLINK.0 },
    );
    case(
        c,
        "vxlan_decap_64B_batch64",
        vxlan_from_c(POD_A.0, IDS[2], &PAYLOAD),
        UPLINK.0,
        Verdict::Tx { slot: POD_A.2 },
    );
}

criterion_group!(benches, overlay);
criterion_main!(benches);
