//! Workers: threads pinned to configured cores, each owning a UMEM and a set of
//! `(interface, queue)` sockets bound into it.
//!
//! A worker receives a batch (up to [`BATCH`] frames) from one socket, runs it through the
//! pipeline, puts the results on the TX rings of their output sockets, and once per loop kicks
//! the TX rings that need it, recycles completions and refills the fill rings. Nothing in the
//! loop allocates, locks or makes a system call per packet. An idle worker sleeps in `poll()`
//! unless busy-polling is asked for.
//!
//! Ports are added and removed at runtime through a command channel; a removed port's frames
//! (in its fill ring or waiting for TX completion) are taken back, so pods can come and go
//! forever without leaking UMEM.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::counters::{
    BatchCounts, CounterSnapshot, DropReason, KernelDrops, SocketDrops, WorkerCounters,
};
use crate::handoff::Hub;
use crate::io::{sys, AfXdpMode, IoError, Port, PortSpec, SharedUmem, UmemSpec, XDP_PKT_CONTD};
use crate::pipeline::{self, Batch, Frames, Verdict, BATCH, MAX_FRAGS};
use crate::tables::TableHandle;

#[path = "worker_fill.rs"]
mod fill;
use fill::FillBudget;
#[path = "worker_chain.rs"]
mod chain;
use chain::{Partial, Step};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Worker number.
    pub id: usize,
    /// Cores to pin to (empty: no pinning).
    pub cores: Vec<usize>,
    /// Spin instead of sleeping in `poll()` when idle.
    pub busy_poll: bool,
    /// UMEM shape.
    pub umem: UmemSpec,
    /// Bind the UMEM's sockets with multi-buffer (XDP_USE_SG) when the kernel accepts it:
    /// frames larger than one UMEM frame (jumbo frames) then arrive as chains.
    pub multi_buffer: bool,
}

/// A port as reported by the worker.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PortInfo {
    /// Interface name.
    pub ifname: String,
    /// Rx queue.
    pub queue: u32,
    /// Interface slot.
    pub slot: u16,
    /// Copy or zero-copy.
    pub mode: AfXdpMode,
    /// Frames the worker keeps in this socket's fill ring when idle.
    pub fill_base: u32,
    /// Frames a busy socket's fill ring grows to.
    pub fill_high: u32,
    /// Bound with multi-buffer (XDP_USE_SG).
    pub multi_buffer: bool,
}

enum Command {
    Add(Box<Port>, SyncSender<()>),
    Remove(u16, SyncSender<()>),
}

/// The control side's handle on a running worker.
pub struct WorkerHandle {
    spec: WorkerSpec,
    umem: Arc<SharedUmem>,
    cmd: Sender<Command>,
    /// Wakes the worker from its idle `poll()` when a command is sent (one byte; the worker
    /// polls the other end), so a command waits for no poll timeout.
    wake: UnixDatagram,
    counters: Arc<WorkerCounters>,
    ports: Arc<Mutex<Vec<PortInfo>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const ACK_TIMEOUT: Duration = Duration::from_secs(5);

impl WorkerHandle {
    /// Maps the worker's UMEM and starts its thread: a worker alone, with no one to hand
    /// frames to.
    pub fn spawn(spec: WorkerSpec, tables: Arc<TableHandle>) -> Result<Self, IoError> {
        let hub = Arc::new(Hub::new(1, 1, spec.umem.frame_size as usize));
        Self::spawn_in(WorkerSpec { id: 0, ..spec }, tables, hub)
    }

    /// Starts worker `spec.id` of a node whose workers share `hub` (`spec.id` below
    /// `hub.workers()`): frames for an interface another worker owns are handed to it.
    pub fn spawn_in(
        spec: WorkerSpec,
        tables: Arc<TableHandle>,
        hub: Arc<Hub>,
    ) -> Result<Self, IoError> {
        if spec.id >= hub.workers() {
            return Err(IoError::Invalid(format!(
                "worker {} of a handoff hub for {}",
                spec.id,
                hub.workers()
            )));
        }
        let umem = SharedUmem::new(spec.umem)?;
        umem.set_multi_buffer(spec.multi_buffer);
        let umem = Arc::new(umem);
        let (tx, rx) = mpsc::channel();
        let (wake, wake_rx) = UnixDatagram::pair()
            .and_then(|(a, b)| {
                a.set_nonblocking(true)?;
                b.set_nonblocking(true)?;
                Ok((a, b))
            })
            .map_err(|e| IoError::Sys {
                what: "creating the worker's wakeup socket pair".into(),
                source: e,
            })?;
        hub.set_waker(
            spec.id,
            wake.try_clone().map_err(|e| IoError::Sys {
                what: "cloning the worker's wakeup socket".into(),
                source: e,
            })?,
        );
        let counters = Arc::new(WorkerCounters::default());
        let ports = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut w = Worker::new(
            &spec,
            umem.clone(),
            tables,
            counters.clone(),
            ports.clone(),
            (rx, wake_rx),
            stop.clone(),
        );
        w.attach_hub(hub);
        let cores = spec.cores.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vireo-worker-{}", spec.id))
            .spawn(move || {
                if let Err(e) = sys::pin_current_thread(&cores) {
                    tracing::warn!(error = %e, "worker not pinned");
                }
                w.run();
            })
            .map_err(|e| IoError::Sys {
                what: "spawning a worker thread".into(),
                source: e,
            })?;
        Ok(WorkerHandle {
            spec,
            umem,
            cmd: tx,
            wake,
            counters,
            ports,
            stop,
            thread: Some(thread),
        })
    }

    /// The worker's spec.
    pub fn spec(&self) -> &WorkerSpec {
        &self.spec
    }

    /// Anchors the worker's UMEM on `lo` queue 0 unless a socket is bound into it already
    /// ([`SharedUmem::anchor_on_loopback`]). The UMEM itself is not handed out: code outside
    /// the worker must not reach its frames or bind sockets the worker does not drive.
    pub fn anchor_on_loopback(&self) -> Result<(), IoError> {
        self.umem.anchor_on_loopback()
    }

    /// Binds a socket into this worker's UMEM and hands it to the worker, which fills its fill
    /// ring before acknowledging. Returns the socket's fd for the XSKMAP.
    pub fn add_port(&self, spec: &PortSpec) -> Result<(i32, AfXdpMode), IoError> {
        let port = self.umem.bind(spec)?;
        let (fd, mode) = (port.fd(), port.mode);
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        self.send(Command::Add(Box::new(port), ack_tx), ack_rx)?;
        Ok((fd, mode))
    }

    /// Removes every socket of interface `slot` from this worker and takes its frames back.
    pub fn remove_slot(&self, slot: u16) -> Result<(), IoError> {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        self.send(Command::Remove(slot, ack_tx), ack_rx)
    }

    fn send(&self, c: Command, ack: Receiver<()>) -> Result<(), IoError> {
        self.cmd
            .send(c)
            .map_err(|_| IoError::Invalid(format!("worker {} has stopped", self.spec.id)))?;
        // Full means a wakeup is pending already.
        let _ = self.wake.send(&[1]);
        ack.recv_timeout(ACK_TIMEOUT)
            .map_err(|_| IoError::Invalid(format!("worker {} did not answer", self.spec.id)))
    }

    /// Counter snapshot.
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Each socket's kernel drop counts (refreshed about once a second).
    pub fn socket_drops(&self) -> Vec<SocketDrops> {
        self.counters.socket_drops()
    }

    /// The ports the worker runs.
    pub fn ports(&self) -> Vec<PortInfo> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the worker thread is still running.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Who holds a frame. Tags: `FREE`, `HELD` (in a batch), or 2+2p / 3+2p for "in port p's fill
/// ring" / "on port p's TX ring".
const FREE: u16 = 0;
const HELD: u16 = 1;
#[inline]
fn tag_fill(p: usize) -> u16 {
    (2 + 2 * p) as u16
}
#[inline]
fn tag_tx(p: usize) -> u16 {
    (3 + 2 * p) as u16
}
/// Ports a worker can run (so that tags fit in u16).
const MAX_PORTS: usize = (u16::MAX as usize - 3) / 2;

struct PortRt {
    port: Port,
    in_fill: u32,
    /// Loops left during which the socket counts as busy and its fill ring may grow to
    /// `fill_high` ([`fill::heat`]).
    hot: u32,
    tx_outstanding: u32,
    /// TX descriptors `(addr, len, options)` gathered from the current batch (capacity
    /// [`PENDING`], never grows).
    pending: Vec<(u64, u32, u32)>,
    /// A multi-buffer packet whose last frame has not arrived yet.
    partial: Partial,
}

/// TX descriptors a port gathers per batch at most: a batch's frames, and the rest of a chain
/// that began in the batch before.
const PENDING: usize = BATCH + MAX_FRAGS;

/// Marks the frame at `addr` free and puts it on the free list (frames are `1 << shift` bytes).
#[inline]
fn free_frame(owner: &mut [u16], free: &mut Vec<u64>, shift: u32, addr: u64) {
    let i = (addr >> shift) as usize;
    if let Some(o) = owner.get_mut(i) {
        *o = FREE;
        free.push((i as u64) << shift);
    }
}

struct Worker {
    umem: Arc<SharedUmem>,
    frame_shift: u32,
    tables: Arc<TableHandle>,
    counters: Arc<WorkerCounters>,
    port_info: Arc<Mutex<Vec<PortInfo>>>,
    cmd: Receiver<Command>,
    /// The read end of [`WorkerHandle`]'s wakeup pair, always the last entry of `pollfds`.
    wake: UnixDatagram,
    stop: Arc<AtomicBool>,
    busy_poll: bool,
    /// No cores of its own (`cores: []`): it shares them with other threads (pods, other
    /// agents), so its spinning yields to them.
    shared_cores: bool,
    free: Vec<u64>,
    owner: Vec<u16>,
    ports: Vec<Option<PortRt>>,
    by_slot: Vec<u16>,
    pollfds: Vec<libc::pollfd>,
    dirty: Vec<usize>,
    budget: FillBudget,
    /// The fill level of every socket, from `budget` and the number of sockets.
    fill_base: u32,
    /// The fill level of a hot socket.
    fill_high: u32,
    /// When the worker last received a frame (idle spin before sleeping).
    worked_at: std::time::Instant,
    batch: Batch,
    counts: BatchCounts,
    stats_at: std::time::Instant,
    /// This worker's number in `hub`.
    id: usize,
    /// The rings to and from the node's other workers.
    hub: Arc<Hub>,
    /// Workers handed frames since the last wakeup round (indexed by worker).
    handed: Vec<bool>,
}

const NO_PORT: u16 = u16::MAX;

impl Worker {
    fn new(
        spec: &WorkerSpec,
        umem: Arc<SharedUmem>,
        tables: Arc<TableHandle>,
        counters: Arc<WorkerCounters>,
        port_info: Arc<Mutex<Vec<PortInfo>>>,
        (cmd, wake): (Receiver<Command>, UnixDatagram),
        stop: Arc<AtomicBool>,
    ) -> Self {
        let n = spec.umem.frames;
        let fs = u64::from(spec.umem.frame_size);
        let budget = FillBudget::new(n, spec.umem.fill_size);
        Worker {
            umem,
            frame_shift: spec.umem.frame_size.trailing_zeros(),
            tables,
            counters,
            port_info,
            pollfds: vec![libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }],
            cmd,
            wake,
            stop,
            busy_poll: spec.busy_poll,
            shared_cores: spec.cores.is_empty(),
            free: (0..u64::from(n)).rev().map(|i| i * fs).collect(),
            owner: vec![FREE; n as usize],
            ports: Vec::new(),
            by_slot: Vec::new(),
            dirty: Vec::with_capacity(BATCH),
            budget,
            fill_base: budget.share(1),
            fill_high: budget.high(1),
            worked_at: std::time::Instant::now(),
            batch: Batch::for_worker(spec.id),
            counts: BatchCounts::default(),
            stats_at: std::time::Instant::now(),
            id: spec.id,
            hub: Arc::new(Hub::new(1, 1, fs as usize)),
            handed: vec![false],
        }
    }

    /// The frame index of `addr` (the tests' view of `owner`).
    #[cfg(test)]
    fn frame_index(&self, addr: u64) -> usize {
        (addr >> self.frame_shift) as usize
    }

    fn run(&mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            self.commands();
            let mut got = 0;
            for p in 0..self.ports.len() {
                got += self.rx_batch(p);
            }
            got += self.drain_handoff();
            self.wake_peers();
            self.kick();
            self.reap();
            self.refill();
            self.counters.flush(&mut self.counts);
            self.report_frames();
            if self.stats_at.elapsed() >= Duration::from_secs(1) {
                self.report_kernel_drops();
            }
            if got > 0 {
                self.worked_at = std::time::Instant::now();
            } else {
                if self.busy_poll || self.worked_at.elapsed() < fill::SPIN {
                    // Traffic in the last few microseconds: the next frame is likely on its
                    // way, and waking from poll() costs more than the gap. On shared cores
                    // the spin gives way to whatever else is runnable there (often the very
                    // pod that is about to answer).
                    if self.shared_cores {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                } else {
                    // Frames still waiting on a TX ring (a refused kick): come back soon.
                    let waiting = self
                        .ports
                        .iter()
                        .flatten()
                        .any(|rt| rt.port.tx_pending() > 0);
                    if self.hub.park(self.id) {
                        sys::poll_readable(&mut self.pollfds, if waiting { 1 } else { 10 });
                        self.hub.unpark(self.id);
                    }
                    if self
                        .pollfds
                        .last()
                        .is_some_and(|p| p.revents & libc::POLLIN != 0)
                    {
                        let mut b = [0u8; 64];
                        while self.wake.recv(&mut b).is_ok() {}
                    }
                }
            }
        }
    }

    /// Sums the kernel's XDP_STATISTICS over the sockets (one getsockopt per socket, about
    /// once a second). Sockets that went away take their counts with them.
    fn report_kernel_drops(&mut self) {
        self.stats_at = std::time::Instant::now();
        let mut k = KernelDrops::default();
        let mut each = Vec::new();
        for rt in self.ports.iter().flatten() {
            if let Ok(s) = rt.port.fq.statistics_v2() {
                let one = KernelDrops {
                    rx_dropped: s.rx_dropped,
                    rx_ring_full: s.rx_ring_full,
                    rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
                    tx_invalid: s.tx_invalid_descs,
                };
                k.rx_dropped += one.rx_dropped;
                k.rx_ring_full += one.rx_ring_full;
                k.rx_fill_ring_empty += one.rx_fill_ring_empty;
                k.tx_invalid += one.tx_invalid;
                each.push((rt.port.slot, rt.port.queue, one));
            }
        }
        self.counters.set_kernel(k);
        let names = self.tables.load();
        self.counters.set_sockets(|v| {
            v.clear();
            v.extend(each.into_iter().map(|(slot, queue, drops)| {
                SocketDrops {
                    ifname: names
                        .iface(slot)
                        .map(|i| i.name.clone())
                        .unwrap_or_default(),
                    queue,
                    drops,
                }
            }));
        });
    }

    fn report_frames(&self) {
        let (mut fill, mut tx) = (0u64, 0u64);
        for rt in self.ports.iter().flatten() {
            fill += u64::from(rt.in_fill);
            tx += u64::from(rt.tx_outstanding);
        }
        self.counters.set_frames(self.free.len() as u64, fill, tx);
    }

    /// Receives one batch from port `p` and runs it. Returns frames received.
    fn rx_batch(&mut self, p: usize) -> usize {
        let Some(rt) = self.ports[p].as_mut() else {
            return 0;
        };
        let slot = rt.port.slot;
        self.batch.clear();
        let mut got = 0u32;
        {
            // At most a batch of descriptors: a packet is at least one, so the packets they
            // complete (and one begun in the batch before) fit the batch.
            let (owner, free, shift) = (&mut self.owner, &mut self.free, self.frame_shift);
            let mut rx = rt.port.rx.receive(BATCH as u32);
            while let Some(d) = rx.read() {
                got += 1;
                // Every received frame is held (a batch's, or a chain's still open) until it
                // goes on exactly one ring or back to the free list.
                if let Some(o) = owner.get_mut((d.addr >> shift) as usize) {
                    *o = HELD;
                }
                let step =
                    rt.partial
                        .take((d.addr, d.len, d.options), slot, &mut self.batch, |addr| {
                            free_frame(owner, free, shift, addr)
                        });
                if step == Step::TooLong {
                    self.counts.rx += 1;
                    self.counts.drop(DropReason::MultiBufferTooLong);
                }
            }
            rx.release();
        }
        if got == 0 {
            return 0;
        }
        rt.in_fill = rt.in_fill.saturating_sub(got);
        // Under load, not merely chatty (a new pod's IPv6 DAD and router solicitations).
        rt.hot = fill::heat(rt.hot, got as usize, rt.in_fill, self.fill_base);
        // Refilled at once, before the pipeline and the TX rings: the kernel keeps receiving
        // meanwhile.
        self.top_up(p);
        self.counts.rx += self.batch.len() as u64;
        self.counts.rx_bytes += self
            .batch
            .descs()
            .iter()
            .map(|d| u64::from(d.total()))
            .sum::<u64>();
        if self.batch.is_empty() {
            return got as usize;
        }

        let tables = self.tables.load();
        // The only view of frame memory. Every frame the pipeline asks for is a descriptor of
        // `self.batch`: taken off an RX ring above, tagged HELD, on no ring until the loop below
        // hands it to exactly one TX ring or the free list. This worker drives every socket
        // bound into its UMEM, so nothing else can give those frames to the kernel meanwhile.
        let mut frames = self.umem.frames();
        pipeline::run(&mut self.batch, &mut frames, &tables, &mut self.counts);
        drop(tables);
        self.dispatch();
        got as usize
    }

    /// Gives every packet of the batch (run through the pipeline) its way out: its frames onto
    /// one TX ring (gathered, then flushed), to another worker, or back to the free list.
    fn dispatch(&mut self) {
        for k in 0..self.batch.len() {
            let d = self.batch.descs()[k];
            // Continuations still part of the packet go after its head; detached ones (the
            // head was rebuilt into a reply) and those of a dropped packet are freed.
            let attached = d.frags > 0 && !self.batch.chain(k).is_empty();
            match d.verdict {
                Verdict::Tx { slot } => {
                    let out = self
                        .by_slot
                        .get(usize::from(slot))
                        .copied()
                        .unwrap_or(NO_PORT);
                    match self
                        .ports
                        .get_mut(usize::from(out))
                        .and_then(Option::as_mut)
                    {
                        Some(o) => {
                            if o.pending.is_empty() {
                                self.dirty.push(usize::from(out));
                            }
                            let chain = if attached { self.batch.chain(k) } else { &[] };
                            o.pending.extend(chain::tx_descs((d.addr, d.len), chain));
                            if !attached {
                                self.release_chain(k);
                            }
                        }
                        None if attached => {
                            // Handoff carries single frames: a chain for another worker's
                            // interface is a counted drop.
                            let mine = self.hub.owner(slot).filter(|&w| w != self.id).is_none();
                            self.counts.drop(if mine {
                                DropReason::NoTxPort
                            } else {
                                DropReason::HandoffMultiBuffer
                            });
                            self.release(d.addr);
                            self.release_chain(k);
                        }
                        None => {
                            self.hand_off(d.addr, d.len, slot);
                            self.release_chain(k);
                        }
                    }
                }
                _ => {
                    self.release(d.addr);
                    self.release_chain(k);
                }
            }
        }
        self.flush_pending();
    }

    /// Frees the continuation frames batch entry `k` was received with.
    fn release_chain(&mut self, k: usize) {
        for i in 0..self.batch.chain(k).len() {
            let addr = self.batch.chain(k)[i].0;
            self.release(addr);
        }
    }

    /// Moves gathered TX descriptors onto their rings, one commit per ring.
    fn flush_pending(&mut self) {
        for &p in &self.dirty {
            let Some(rt) = self.ports[p].as_mut() else {
                continue;
            };
            // A multi-buffer packet goes on whole or not at all (`push_tx_batch`); packets are
            // counted at their last frame, frames (TX-owned or freed) one by one.
            let sent = rt.port.push_tx_batch(&rt.pending);
            for (k, &(addr, len, options)) in rt.pending.iter().enumerate() {
                let i = (addr >> self.frame_shift) as usize;
                let last = options & XDP_PKT_CONTD == 0;
                if k < sent {
                    self.owner[i] = tag_tx(p);
                    self.counts.tx += u64::from(last);
                    self.counts.tx_bytes += u64::from(len);
                } else {
                    if last {
                        self.counts.drop(DropReason::TxRingFull);
                    }
                    self.owner[i] = FREE;
                    self.free.push((i as u64) << self.frame_shift);
                }
            }
            rt.tx_outstanding += sent as u32;
            rt.pending.clear();
        }
    }

    /// Kicks the TX rings that hold frames (copy mode needs a wakeup every time).
    fn kick(&mut self) {
        for p in self.dirty.drain(..) {
            if let Some(rt) = self.ports[p].as_mut() {
                rt.port.kick_tx();
            }
        }
    }

    #[inline]
    fn release(&mut self, addr: u64) {
        free_frame(&mut self.owner, &mut self.free, self.frame_shift, addr);
    }

    /// Takes completed TX frames back.
    fn reap(&mut self) {
        for p in 0..self.ports.len() {
            let Some(rt) = self.ports[p].as_mut() else {
                continue;
            };
            if rt.tx_outstanding == 0 {
                continue;
            }
            if rt.port.tx.pending() > 0 {
                rt.port.kick_tx();
            }
            let mut c = rt.port.fq.complete(rt.tx_outstanding);
            while let Some(addr) = c.read() {
                let i = (addr >> self.frame_shift) as usize;
                if let Some(o) = self.owner.get_mut(i) {
                    if *o == tag_tx(p) {
                        *o = FREE;
                        self.free.push((i as u64) << self.frame_shift);
                    }
                }
                rt.tx_outstanding = rt.tx_outstanding.saturating_sub(1);
            }
            c.release();
        }
    }

    /// Tops fill rings up. Every socket first gets its share of the UMEM (`fill_base`, see
    /// [`FillBudget`]); then hot sockets grow towards `fill_high`, never into the reserve.
    /// Frames parked in a fill ring cannot be taken back until the kernel uses them, so growth
    /// goes only where traffic is; a socket whose traffic fades drains back to its share,
    /// because only the share is topped up then.
    fn refill(&mut self) {
        for p in 0..self.ports.len() {
            if self.ports[p]
                .as_ref()
                .is_some_and(|rt| rt.in_fill < self.fill_base)
            {
                self.give(p, self.fill_base, 0);
            }
        }
        for p in 0..self.ports.len() {
            self.top_up(p);
        }
    }

    /// Tops port `p`'s fill ring up to its share, or to `fill_high` while it is hot.
    fn top_up(&mut self, p: usize) {
        let Some(rt) = self.ports[p].as_ref() else {
            return;
        };
        if rt.hot > 0 {
            self.give(p, self.fill_high, self.budget.reserve());
        } else if rt.in_fill < self.fill_base {
            self.give(p, self.fill_base, 0);
        }
    }

    /// Recomputes the fill levels from the number of sockets.
    fn rebudget(&mut self) {
        let n = self.ports.iter().flatten().count();
        self.fill_base = self.budget.share(n);
        self.fill_high = self.budget.high(n);
    }

    /// Puts frames into port `p`'s fill ring until it holds `target`, leaving `keep` free.
    fn give(&mut self, p: usize, target: u32, keep: usize) {
        let Some(rt) = self.ports[p].as_mut() else {
            return;
        };
        let spare = self.free.len().saturating_sub(keep) as u32;
        let want = target.saturating_sub(rt.in_fill).min(spare);
        if want == 0 {
            return;
        }
        let (owner, shift) = (&mut self.owner, self.frame_shift);
        rt.in_fill += rt.port.refill(&mut self.free, want, |addr| {
            owner[(addr >> shift) as usize] = tag_fill(p)
        });
    }

    fn commands(&mut self) {
        while let Ok(c) = self.cmd.try_recv() {
            match c {
                Command::Add(port, ack) => {
                    self.add(*port);
                    let _ = ack.send(());
                }
                Command::Remove(slot, ack) => {
                    self.remove(slot);
                    let _ = ack.send(());
                }
            }
        }
    }

    fn add(&mut self, port: Port) {
        let p = match self.ports.iter().position(Option::is_none) {
            Some(p) => p,
            None if self.ports.len() < MAX_PORTS => {
                self.ports.push(None);
                self.ports.len() - 1
            }
            None => {
                tracing::error!(ifname = %port.ifname, "worker is at its port limit; socket closed");
                return;
            }
        };
        let slot = usize::from(port.slot);
        if self.by_slot.len() <= slot {
            self.by_slot.resize(slot + 1, NO_PORT);
        }
        if self.by_slot[slot] == NO_PORT {
            self.by_slot[slot] = p as u16;
        }
        self.hub.claim(port.slot, self.id);
        self.ports[p] = Some(PortRt {
            port,
            in_fill: 0,
            hot: 0,
            tx_outstanding: 0,
            pending: Vec::with_capacity(PENDING),
            partial: Partial::default(),
        });
        self.rebudget();
        self.rebuild();
        self.refill();
    }

    fn remove(&mut self, slot: u16) {
        for p in 0..self.ports.len() {
            if self.ports[p].as_ref().is_none_or(|rt| rt.port.slot != slot) {
                continue;
            }
            // Closing the socket first: after that the kernel no longer touches its frames.
            let mut rt = self.ports[p].take();
            // A chain cut short: its frames are held, on no ring.
            if let Some(rt) = rt.as_mut() {
                let (owner, free, shift) = (&mut self.owner, &mut self.free, self.frame_shift);
                let cut = rt
                    .partial
                    .abandon(|addr| free_frame(owner, free, shift, addr));
                if cut {
                    self.counts.drop(DropReason::MultiBufferTooLong);
                }
            }
            drop(rt);
            let (f, t) = (tag_fill(p), tag_tx(p));
            for (i, o) in self.owner.iter_mut().enumerate() {
                if *o == f || *o == t {
                    *o = FREE;
                    self.free.push((i as u64) << self.frame_shift);
                }
            }
        }
        if let Some(s) = self.by_slot.get_mut(usize::from(slot)) {
            *s = NO_PORT;
        }
        self.hub.disclaim(slot, self.id);
        // Another queue of the same interface may still be here (not in practice: a slot's
        // ports come and go together).
        self.rebudget();
        self.rebuild();
    }

    /// Recomputes the poll set and the reported port list.
    fn rebuild(&mut self) {
        let live: Vec<&PortRt> = self.ports.iter().flatten().collect();
        self.pollfds = live
            .iter()
            .map(|rt| libc::pollfd {
                fd: rt.port.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .chain([libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }])
            .collect();
        let info = live
            .iter()
            .map(|rt| PortInfo {
                ifname: rt.port.ifname.clone(),
                queue: rt.port.queue,
                slot: rt.port.slot,
                mode: rt.port.mode,
                multi_buffer: rt.port.multi_buffer,
                fill_base: self.fill_base,
                fill_high: self.fill_high,
            })
            .collect();
        *self.port_info.lock().unwrap_or_else(|e| e.into_inner()) = info;
    }
}

/// Batches of handed-off frames a worker takes per loop at most.
const HANDOFF_BATCHES: usize = 4;

/// Handoff to and from the node's other workers ([`crate::handoff`]).
impl Worker {
    fn attach_hub(&mut self, hub: Arc<Hub>) {
        self.handed = vec![false; hub.workers()];
        self.hub = hub;
    }

    /// Frame `addr` (held, from the current batch) is for interface `slot`, which has no socket
    /// here: copies it to the worker that owns `slot`, or counts a drop. The frame comes back
    /// to the free list either way.
    fn hand_off(&mut self, addr: u64, len: u32, slot: u16) {
        match self.hub.owner(slot).filter(|&w| w != self.id) {
            None => self.counts.drop(DropReason::NoTxPort),
            Some(to) => {
                // The frame is HELD: taken off an RX ring and on no ring (see rx_batch).
                let mut frames = self.umem.frames();
                let sent = match frames.frame(addr, len) {
                    Some(bytes) => self.hub.send(to, bytes, slot),
                    None => Err(crate::handoff::HandoffError::TooLarge),
                };
                match sent {
                    Ok(()) => {
                        self.counts.handoff_sent += 1;
                        if let Some(h) = self.handed.get_mut(to) {
                            *h = true;
                        }
                    }
                    Err(_) => self.counts.drop(DropReason::HandoffFull),
                }
            }
        }
        self.release(addr);
    }

    /// Wakes the workers frames were handed to since the last call, if they sleep: at most
    /// one wakeup per worker per loop.
    fn wake_peers(&mut self) {
        for (to, h) in self.handed.iter_mut().enumerate() {
            if std::mem::take(h) {
                self.hub.wake(to);
            }
        }
    }

    /// Takes the frames other workers handed here, up to [`HANDOFF_BATCHES`] batches (a
    /// receiver serves several senders and its ring fills faster than one batch a loop drains),
    /// copies each into a free frame of this worker's UMEM and puts it on this worker's socket
    /// of its output interface. Returns frames taken.
    fn drain_handoff(&mut self) -> usize {
        let mut n = 0;
        for _ in 0..HANDOFF_BATCHES {
            let k = self.drain_handoff_batch();
            n += k;
            if k < BATCH {
                break;
            }
        }
        n
    }

    fn drain_handoff_batch(&mut self) -> usize {
        let mut n = 0;
        while n < BATCH {
            let Some(parcel) = self.hub.recv(self.id) else {
                break;
            };
            n += 1;
            self.counts.handoff_received += 1;
            self.take_parcel(&parcel);
            self.hub.recycle(parcel);
        }
        if n > 0 {
            self.flush_pending();
            // Kicked per batch: the next batch may fill the same ring.
            self.kick();
        }
        n
    }

    fn take_parcel(&mut self, parcel: &crate::handoff::Parcel) {
        let out = self
            .by_slot
            .get(usize::from(parcel.slot()))
            .copied()
            .unwrap_or(NO_PORT);
        let Some(o) = self
            .ports
            .get_mut(usize::from(out))
            .and_then(Option::as_mut)
        else {
            // The interface went away on this worker meanwhile.
            self.counts.drop(DropReason::NoTxPort);
            return;
        };
        let Some(addr) = self.free.pop() else {
            self.counts.drop(DropReason::HandoffFull);
            return;
        };
        let i = (addr >> self.frame_shift) as usize;
        // A free frame: on no ring, not in a batch, so no one else touches it.
        let mut frames = self.umem.frames();
        match frames.frame(addr, parcel.len()) {
            Some(dst) => dst.copy_from_slice(parcel.bytes()),
            None => {
                self.counts.drop(DropReason::HandoffFull);
                self.free.push(addr);
                return;
            }
        }
        if let Some(t) = self.owner.get_mut(i) {
            *t = HELD;
        }
        if o.pending.is_empty() {
            self.dirty.push(usize::from(out));
        }
        if o.pending.len() < o.pending.capacity() {
            o.pending.push((addr, parcel.len(), 0));
        } else {
            // A batch's worth is waiting for this ring already: flush first (never grows).
            self.flush_pending();
            self.kick();
            if let Some(o) = self
                .ports
                .get_mut(usize::from(out))
                .and_then(Option::as_mut)
            {
                if o.pending.is_empty() {
                    self.dirty.push(usize::from(out));
                }
                o.pending.push((addr, parcel.len(), 0));
            }
        }
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
