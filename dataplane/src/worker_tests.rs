//! Tests of the worker: frame accounting, handoff, sockets on `lo`.

use super::*;
use crate::tables::Tables;

const FRAMES: u32 = 256;

fn worker(id: usize, hub: &Arc<Hub>) -> (Worker, Arc<WorkerCounters>) {
    worker_with(id, hub, false)
}

fn worker_with(id: usize, hub: &Arc<Hub>, multi_buffer: bool) -> (Worker, Arc<WorkerCounters>) {
    let spec = WorkerSpec {
        id,
        cores: vec![],
        busy_poll: false,
        umem: UmemSpec {
            frames: FRAMES,
            frame_size: 2048,
            fill_size: 64,
            completion_size: 64,
            zero_copy: false,
        },
        multi_buffer,
    };
    let umem = SharedUmem::new(spec.umem)
        .expect("UMEM (needs CAP_IPC_LOCK or a memlock limit of 128 KiB)");
    umem.set_multi_buffer(spec.multi_buffer);
    let umem = Arc::new(umem);
    let (_tx, rx) = mpsc::channel();
    let (_a, b) = UnixDatagram::pair().unwrap();
    let counters = Arc::new(WorkerCounters::default());
    let mut w = Worker::new(
        &spec,
        umem,
        Arc::new(TableHandle::new(Tables::default())),
        counters.clone(),
        Arc::new(Mutex::new(Vec::new())),
        (rx, b),
        Arc::new(AtomicBool::new(false)),
    );
    w.attach_hub(hub.clone());
    (w, counters)
}

/// Takes a free frame as a received one would be (HELD) and writes `bytes` into it.
fn held_frame(w: &mut Worker, bytes: &[u8]) -> u64 {
    let addr = w.free.pop().expect("a free frame");
    let i = w.frame_index(addr);
    w.owner[i] = HELD;
    w.umem
        .frames()
        .frame(addr, bytes.len() as u32)
        .unwrap()
        .copy_from_slice(bytes);
    addr
}

/// Every frame is FREE and in the free list exactly once.
fn all_free(w: &Worker) {
    assert_eq!(w.free.len(), FRAMES as usize);
    let mut seen: Vec<u64> = w.free.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        FRAMES as usize,
        "a frame is in the free list twice"
    );
    assert!(
        w.owner.iter().all(|&o| o == FREE),
        "a frame is not tagged FREE"
    );
}

fn drops(c: &WorkerCounters, w: &mut Worker, r: DropReason) -> u64 {
    c.flush(&mut w.counts);
    c.snapshot().drops[r.name()]
}

#[test]
fn hand_off_copies_to_the_owner_and_frees_the_frame() {
    let hub = Arc::new(Hub::new(2, 4, 2048));
    let (mut w, c) = worker(0, &hub);
    hub.claim(7, 1);
    for seq in 0..6u8 {
        let f: Vec<u8> = (0..100).map(|i| i ^ seq).collect();
        let addr = held_frame(&mut w, &f);
        w.hand_off(addr, f.len() as u32, 7);
        // Given back at once, sent or not.
        all_free(&w);
    }
    assert!(w.handed[1] && !w.handed[0]);
    // Ring of 4: two counted drops, never a lost buffer.
    assert_eq!(drops(&c, &mut w, DropReason::HandoffFull), 2);
    assert_eq!(c.snapshot().handoff.sent, 4);
    assert_eq!(hub.queued(1), 4);
    assert_eq!(hub.free_buffers() + hub.queued(1), hub.buffers());
    // In order, unchanged, for the slot asked for.
    for seq in 0..4u8 {
        let p = hub.recv(1).unwrap();
        assert_eq!(p.slot(), 7);
        let want: Vec<u8> = (0..100).map(|i| i ^ seq).collect();
        assert_eq!(p.bytes(), &want[..]);
        hub.recycle(p);
    }
    assert_eq!(hub.free_buffers(), hub.buffers());
    assert_eq!(drops(&c, &mut w, DropReason::NoTxPort), 0);
}

#[test]
fn no_owner_or_own_slot_is_no_tx_port() {
    let hub = Arc::new(Hub::new(2, 4, 2048));
    let (mut w, c) = worker(0, &hub);
    let addr = held_frame(&mut w, &[1; 60]);
    w.hand_off(addr, 60, 9);
    // Owned by this very worker, but no socket here (it went away): not sent to itself.
    hub.claim(9, 0);
    let addr = held_frame(&mut w, &[1; 60]);
    w.hand_off(addr, 60, 9);
    all_free(&w);
    assert_eq!(drops(&c, &mut w, DropReason::NoTxPort), 2);
    assert_eq!(hub.queued(0) + hub.queued(1), 0);
    assert_eq!(hub.free_buffers(), hub.buffers());
}

#[test]
fn several_batches_are_drained_per_loop() {
    let ring = HANDOFF_BATCHES * BATCH + 10;
    let hub = Arc::new(Hub::new(2, ring, 2048));
    let (mut w, c) = worker(1, &hub);
    for _ in 0..ring {
        hub.send(1, &[3; 60], 4).unwrap();
    }
    assert_eq!(w.drain_handoff(), HANDOFF_BATCHES * BATCH);
    assert_eq!(w.drain_handoff(), 10);
    all_free(&w);
    assert_eq!(drops(&c, &mut w, DropReason::NoTxPort), ring as u64);
    assert_eq!(hub.free_buffers(), hub.buffers());
}

#[test]
fn received_frames_without_a_socket_are_counted_and_recycled() {
    let hub = Arc::new(Hub::new(2, 8, 2048));
    let (mut w, c) = worker(1, &hub);
    for _ in 0..8 {
        hub.send(1, &[3; 200], 4).unwrap();
    }
    assert_eq!(w.drain_handoff(), 8);
    all_free(&w);
    assert_eq!(drops(&c, &mut w, DropReason::NoTxPort), 8);
    assert_eq!(c.snapshot().handoff.received, 8);
    assert_eq!(hub.free_buffers(), hub.buffers());
}

#[test]
fn received_frames_go_on_the_own_socket_and_come_back() {
    let hub = Arc::new(Hub::new(2, 8, 2048));
    let (mut w, c) = worker(1, &hub);
    // A socket on `lo` (no XDP program there: nothing is received; TX works in copy mode).
    let port = w
        .umem
        .bind(&PortSpec {
            ifname: "lo".into(),
            queue: 0,
            slot: 4,
            rings: crate::io::RingSizes { rx: 64, tx: 64 },
        })
        .expect("an AF_XDP socket on lo");
    w.add(port);
    assert_eq!(hub.owner(4), Some(1));
    let in_fill = |w: &Worker| w.ports.iter().flatten().map(|p| p.in_fill).sum::<u32>();
    for _ in 0..5 {
        hub.send(1, &[0xee; 64], 4).unwrap();
    }
    assert_eq!(w.drain_handoff(), 5);
    let on_tx = w
        .ports
        .iter()
        .flatten()
        .map(|p| p.tx_outstanding)
        .sum::<u32>();
    assert_eq!(on_tx, 5);
    assert_eq!(
        w.free.len() + in_fill(&w) as usize + on_tx as usize,
        FRAMES as usize
    );
    assert_eq!(w.owner.iter().filter(|&&o| o == tag_tx(0)).count(), 5);
    assert_eq!(hub.free_buffers(), hub.buffers());
    w.kick();
    let t0 = std::time::Instant::now();
    while w.ports.iter().flatten().any(|p| p.tx_outstanding > 0)
        && t0.elapsed() < Duration::from_secs(2)
    {
        w.reap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        w.free.len() + in_fill(&w) as usize,
        FRAMES as usize,
        "sent frames come back"
    );
    c.flush(&mut w.counts);
    assert_eq!(c.snapshot().tx, 5);
    // Removing the slot gives up its ownership and every frame.
    w.remove(4);
    assert_eq!(hub.owner(4), None);
    all_free(&w);
}

#[test]
fn tags_are_distinct() {
    let mut seen = std::collections::HashSet::new();
    assert!(seen.insert(FREE));
    assert!(seen.insert(HELD));
    for p in 0..MAX_PORTS {
        assert!(seen.insert(tag_fill(p)));
        assert!(seen.insert(tag_tx(p)));
    }
}

// Frames are only given back through `release`, `reap` and `remove`; the frame pool never
// holds an address twice.
#[test]
fn umem_frames_bounds() {
    let spec = UmemSpec {
        frames: 64,
        frame_size: 2048,
        fill_size: 64,
        completion_size: 64,
        zero_copy: false,
    };
    let u = SharedUmem::new(spec).expect("UMEM (needs CAP_IPC_LOCK or a memlock limit of 128 KiB)");
    let mut f = u.frames();
    assert!(f.frame(0, 2048).is_some());
    assert!(f.frame(63 * 2048, 2048).is_some());
    assert!(f.frame(63 * 2048 + 1, 2048).is_none());
    assert!(f.frame(u64::MAX, 1).is_none());
}

/// A worker whose UMEM is bound with multi-buffer, with a socket on `lo` (slot 4, a TX ring of
/// `tx` entries; no XDP program there, so nothing is received; TX works in copy mode).
fn mb_worker_on_lo(tx: u32) -> (Worker, Arc<WorkerCounters>) {
    let hub = Arc::new(Hub::new(2, 8, 2048));
    let (mut w, c) = worker_with(0, &hub, true);
    hub.claim(9, 1);
    let port = w
        .umem
        .bind(&PortSpec {
            ifname: "lo".into(),
            queue: 0,
            slot: 4,
            rings: crate::io::RingSizes { rx: 64, tx },
        })
        .expect("an AF_XDP socket on lo");
    assert!(
        port.multi_buffer && w.umem.multi_buffer(),
        "kernel 6.6+ binds with XDP_USE_SG"
    );
    w.add(port);
    (w, c)
}

/// A held multi-buffer packet in the batch: a head of `head` bytes and `conts` continuation
/// frames of 1000 bytes, with `verdict`.
fn held_chain(w: &mut Worker, head: usize, conts: usize, verdict: Verdict) {
    let h = held_frame(w, &vec![0x11; head]);
    let mut chain = crate::pipeline::Chain::EMPTY;
    for _ in 0..conts {
        let a = held_frame(w, &[0x22; 1000]);
        assert!(chain.push(a, 1000));
    }
    let mut d = crate::pipeline::Desc::new(h, head as u32, 1);
    d.verdict = verdict;
    assert!(w.batch.push_chain(d, &chain));
    let d = w.batch.descs_mut().last_mut().unwrap();
    d.verdict = verdict;
}

fn wait_reaped(w: &mut Worker) {
    w.kick();
    let t0 = std::time::Instant::now();
    while w.ports.iter().flatten().any(|p| p.tx_outstanding > 0)
        && t0.elapsed() < Duration::from_secs(2)
    {
        w.reap();
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn in_fill(w: &Worker) -> usize {
    w.ports.iter().flatten().map(|p| p.in_fill as usize).sum()
}

#[test]
fn a_chain_goes_out_as_one_packet_of_frames_flagged_in_order() {
    let (mut w, c) = mb_worker_on_lo(64);
    w.batch.clear();
    held_chain(&mut w, 1500, 3, Verdict::Tx { slot: 4 });
    let single = held_frame(&mut w, &[0x33; 60]);
    let mut d = crate::pipeline::Desc::new(single, 60, 1);
    d.verdict = Verdict::Tx { slot: 4 };
    w.batch.push(d);
    let chain: Vec<u64> = std::iter::once(w.batch.descs()[0].addr)
        .chain(w.batch.chain(0).iter().map(|f| f.0))
        .collect();
    w.dispatch();
    // Every frame of the chain is TX-owned, none is free.
    assert_eq!(w.owner.iter().filter(|&&o| o == tag_tx(0)).count(), 5);
    for a in &chain {
        assert_eq!(w.owner[w.frame_index(*a)], tag_tx(0));
    }
    assert_eq!(w.ports[0].as_ref().unwrap().tx_outstanding, 5);
    c.flush(&mut w.counts);
    assert_eq!(c.snapshot().tx, 2, "two packets");
    wait_reaped(&mut w);
    assert_eq!(
        w.free.len() + in_fill(&w),
        FRAMES as usize,
        "every frame comes back"
    );
    // The kernel took the chain as valid descriptors (XDP_PKT_CONTD on all but the last).
    let s = w.ports[0]
        .as_ref()
        .unwrap()
        .port
        .fq
        .statistics_v2()
        .unwrap();
    assert_eq!(s.tx_invalid_descs, 0);
    w.remove(4);
    all_free(&w);
}

#[test]
fn a_chain_the_tx_ring_cannot_take_whole_is_dropped_whole() {
    // A TX ring of 4: two single frames and a chain of three do not fit together.
    let (mut w, c) = mb_worker_on_lo(4);
    w.batch.clear();
    for _ in 0..2 {
        let a = held_frame(&mut w, &[0x33; 60]);
        let mut d = crate::pipeline::Desc::new(a, 60, 1);
        d.verdict = Verdict::Tx { slot: 4 };
        w.batch.push(d);
    }
    held_chain(&mut w, 1500, 2, Verdict::Tx { slot: 4 });
    w.dispatch();
    assert_eq!(w.ports[0].as_ref().unwrap().tx_outstanding, 2);
    assert_eq!(w.owner.iter().filter(|&&o| o == HELD).count(), 0);
    assert_eq!(w.owner.iter().filter(|&&o| o == tag_tx(0)).count(), 2);
    assert_eq!(drops(&c, &mut w, DropReason::TxRingFull), 1, "one packet");
    assert_eq!(c.snapshot().tx, 2);
    wait_reaped(&mut w);
    assert_eq!(w.free.len() + in_fill(&w), FRAMES as usize);
    w.remove(4);
    all_free(&w);
}

#[test]
fn detached_dropped_and_handed_off_chains_free_every_frame() {
    let (mut w, c) = mb_worker_on_lo(64);
    w.batch.clear();
    // Rebuilt into a reply in its head: the head goes alone, its continuations are freed.
    held_chain(&mut w, 1500, 2, Verdict::Tx { slot: 4 });
    w.batch.descs_mut()[0].detach_chain();
    // Dropped by a stage.
    held_chain(&mut w, 1500, 3, Verdict::Drop(DropReason::PolicyDenied));
    // For an interface of another worker: handoff carries single frames only.
    held_chain(&mut w, 1500, 1, Verdict::Tx { slot: 9 });
    w.dispatch();
    assert_eq!(w.ports[0].as_ref().unwrap().tx_outstanding, 1);
    assert_eq!(w.owner.iter().filter(|&&o| o == HELD).count(), 0);
    assert_eq!(drops(&c, &mut w, DropReason::HandoffMultiBuffer), 1);
    assert_eq!(c.snapshot().handoff.sent, 0);
    wait_reaped(&mut w);
    assert_eq!(w.free.len() + in_fill(&w), FRAMES as usize);
    w.remove(4);
    all_free(&w);
}

#[test]
fn a_socket_removed_mid_chain_gives_the_chain_back() {
    let (mut w, c) = mb_worker_on_lo(64);
    let (a, b) = (held_frame(&mut w, &[1; 64]), held_frame(&mut w, &[1; 64]));
    let rt = w.ports[0].as_mut().unwrap();
    let mut batch = Batch::default();
    for f in [a, b] {
        let s = rt
            .partial
            .take((f, 1792, XDP_PKT_CONTD), 4, &mut batch, |_| panic!());
        assert_eq!(s, Step::More);
    }
    w.remove(4);
    all_free(&w);
    assert_eq!(drops(&c, &mut w, DropReason::MultiBufferTooLong), 1);
}

#[test]
fn a_chain_fits_a_ring_whose_cached_room_is_stale() {
    // A TX ring of 8. Three single frames go out and complete: the ring is empty again, but
    // xdpilone's cached view still says 5 free (it re-reads the kernel's index only when that
    // view is exhausted). A chain of 6 must still go on whole.
    let (mut w, c) = mb_worker_on_lo(8);
    w.batch.clear();
    for _ in 0..3 {
        let a = held_frame(&mut w, &[0x33; 60]);
        let mut d = crate::pipeline::Desc::new(a, 60, 1);
        d.verdict = Verdict::Tx { slot: 4 };
        w.batch.push(d);
    }
    w.dispatch();
    wait_reaped(&mut w);
    assert_eq!(w.ports[0].as_ref().unwrap().port.tx_pending(), 0);
    w.batch.clear();
    held_chain(&mut w, 1500, 5, Verdict::Tx { slot: 4 });
    w.dispatch();
    assert_eq!(drops(&c, &mut w, DropReason::TxRingFull), 0);
    assert_eq!(w.ports[0].as_ref().unwrap().tx_outstanding, 6);
    assert_eq!(c.snapshot().tx, 4);
    wait_reaped(&mut w);
    assert_eq!(w.free.len() + in_fill(&w), FRAMES as usize);
    w.remove(4);
    all_free(&w);
}
