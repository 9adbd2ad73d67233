//! Handoff between workers (VPP's "handoff"): a frame whose output interface has no socket on
//! the worker that received it is copied out of that worker's UMEM into a preallocated buffer
//! and queued to the worker that owns the interface, which copies it into its own UMEM and puts
//! it on its own socket's TX ring.
//!
//! # Which worker owns what
//!
//! - A pod's (or the host pair's) veth: all of its queues on **one** worker, the one with the
//!   fewest such interfaces when it is attached (the agent chooses). Frames for it that arrive
//!   on another worker are handed to that one.
//! - The uplink: queue `q` on worker `q % N`, steered by the NIC's RSS. With at least as many
//!   queues as workers every worker has an uplink socket of its own and sends on it; only a
//!   worker without one hands its uplink-bound frames off (to the worker that claimed the
//!   uplink first).
//! - A handed-off frame is sent on the receiving worker's own socket of the output interface
//!   (its first socket of that interface), never on another worker's socket: each worker alone
//!   drives the rings of the sockets bound into its UMEM.
//!
//! The owner of each interface slot is recorded here ([`Hub::claim`]) by the worker that adds
//! the slot's first socket, and cleared when it removes them.
//!
//! # Cost
//!
//! Two copies per handed-off frame (sender's UMEM → buffer, buffer → receiver's UMEM), no
//! allocation, lock or system call per packet: buffers are allocated once, at start, and cycle
//! between a shared free pool and the per-worker inbound rings, all `crossbeam` `ArrayQueue`s
//! (bounded, lock-free). A full inbound ring or an empty pool is a counted drop
//! (`handoff_full`). The receiver drains its ring every loop; a sender wakes a receiver that
//! sleeps in `poll()` through the receiver's wakeup socket, at most once per loop (per batch),
//! and only when the receiver said it was about to sleep ([`Hub::park`]).
//!
//! Order: one flow arrives on one queue, hence one worker, and goes through one FIFO ring to
//! one receiver, so its order is kept.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{fence, AtomicBool, AtomicU16, Ordering};
use std::sync::OnceLock;

use crossbeam_queue::ArrayQueue;

use crate::counters::Padded;

/// Frames each worker's inbound ring holds.
pub const DEFAULT_RING: usize = 1024;

/// No worker owns the slot.
const NONE: u16 = u16::MAX;

/// A frame on its way to another worker.
#[derive(Debug)]
pub struct Parcel {
    buf: Box<[u8]>,
    len: u32,
    slot: u16,
}

impl Parcel {
    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
    /// Its length.
    pub fn len(&self) -> u32 {
        self.len
    }
    /// Whether it is empty (never, for a frame).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The output interface slot.
    pub fn slot(&self) -> u16 {
        self.slot
    }
}

/// Why a frame could not be handed off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// The receiver's ring is full, or no buffer is free.
    #[error("handoff ring full")]
    Full,
    /// Larger than a buffer (cannot happen for a UMEM frame of the configured size).
    #[error("frame too large for a handoff buffer")]
    TooLarge,
    /// No such worker.
    #[error("no such worker")]
    NoWorker,
}

/// The rings, buffers and wakeups shared by a node's workers.
pub struct Hub {
    inbound: Vec<ArrayQueue<Parcel>>,
    pool: ArrayQueue<Box<[u8]>>,
    buffers: usize,
    sleeping: Vec<Padded<AtomicBool>>,
    wakers: Vec<OnceLock<UnixDatagram>>,
    owner: Vec<AtomicU16>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("workers", &self.inbound.len())
            .field("buffers", &self.buffers)
            .finish()
    }
}

impl Hub {
    /// A hub for `workers` workers, each with an inbound ring of `ring` frames, with buffers of
    /// `buf_size` bytes (the UMEM frame size). One worker needs no handoff: no buffer is made.
    pub fn new(workers: usize, ring: usize, buf_size: usize) -> Self {
        let workers = workers.max(1);
        let ring = ring.max(1);
        let buffers = if workers > 1 { ring * workers } else { 0 };
        let pool = ArrayQueue::new(buffers.max(1));
        for _ in 0..buffers {
            // Cannot fail: the pool holds `buffers`.
            let _ = pool.push(vec![0u8; buf_size].into_boxed_slice());
        }
        Hub {
            inbound: (0..workers).map(|_| ArrayQueue::new(ring)).collect(),
            pool,
            buffers,
            sleeping: (0..workers).map(|_| Padded::default()).collect(),
            wakers: (0..workers).map(|_| OnceLock::new()).collect(),
            owner: (0..=u16::MAX as usize)
                .map(|_| AtomicU16::new(NONE))
                .collect(),
        }
    }

    /// Workers served.
    pub fn workers(&self) -> usize {
        self.inbound.len()
    }

    /// Buffers made at start (free, or on a ring).
    pub fn buffers(&self) -> usize {
        self.buffers
    }

    /// Buffers in the free pool now.
    pub fn free_buffers(&self) -> usize {
        self.pool.len()
    }

    /// Frames waiting on worker `w`'s ring.
    pub fn queued(&self, w: usize) -> usize {
        self.inbound.get(w).map_or(0, ArrayQueue::len)
    }

    /// Registers the socket that wakes worker `w` from `poll()` (once).
    pub fn set_waker(&self, w: usize, s: UnixDatagram) {
        if let Some(l) = self.wakers.get(w) {
            let _ = l.set(s);
        }
    }

    /// Records worker `w` as the owner of `slot` unless another owns it already.
    pub fn claim(&self, slot: u16, w: usize) {
        if let Some(o) = self.owner.get(usize::from(slot)) {
            let _ = o.compare_exchange(NONE, w as u16, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Clears `slot`'s owner if it is `w`.
    pub fn disclaim(&self, slot: u16, w: usize) {
        if let Some(o) = self.owner.get(usize::from(slot)) {
            let _ = o.compare_exchange(w as u16, NONE, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// The worker that owns `slot`.
    #[inline]
    pub fn owner(&self, slot: u16) -> Option<usize> {
        let o = self.owner.get(usize::from(slot))?.load(Ordering::Acquire);
        (o != NONE).then_some(usize::from(o))
    }

    /// Copies `frame` into a free buffer and queues it to worker `to` for interface `slot`.
    #[inline]
    pub fn send(&self, to: usize, frame: &[u8], slot: u16) -> Result<(), HandoffError> {
        let ring = self.inbound.get(to).ok_or(HandoffError::NoWorker)?;
        if ring.is_full() {
            return Err(HandoffError::Full);
        }
        let mut buf = self.pool.pop().ok_or(HandoffError::Full)?;
        let Some(dst) = buf.get_mut(..frame.len()) else {
            let _ = self.pool.push(buf);
            return Err(HandoffError::TooLarge);
        };
        dst.copy_from_slice(frame);
        let parcel = Parcel {
            buf,
            len: frame.len() as u32,
            slot,
        };
        ring.push(parcel).map_err(|p| {
            // Another sender filled it meanwhile. The pool has room: it holds every buffer.
            let _ = self.pool.push(p.buf);
            HandoffError::Full
        })
    }

    /// The next frame handed to worker `w`, oldest first. Give its buffer back with
    /// [`Hub::recycle`].
    #[inline]
    pub fn recv(&self, w: usize) -> Option<Parcel> {
        self.inbound.get(w)?.pop()
    }

    /// Returns a received parcel's buffer to the pool.
    #[inline]
    pub fn recycle(&self, p: Parcel) {
        // Cannot fail: the pool holds every buffer.
        let _ = self.pool.push(p.buf);
    }

    /// Worker `w` is about to sleep: returns false if frames are waiting (it must not sleep).
    /// Pairs with [`Hub::wake`]: either the sender sees the flag and wakes the receiver, or
    /// the receiver sees the sender's frame here.
    pub fn park(&self, w: usize) -> bool {
        let Some(s) = self.sleeping.get(w) else {
            return true;
        };
        s.0.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.queued(w) > 0 {
            s.0.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Worker `w` is awake again.
    pub fn unpark(&self, w: usize) {
        if let Some(s) = self.sleeping.get(w) {
            s.0.store(false, Ordering::Relaxed);
        }
    }

    /// Wakes worker `to` if it sleeps (one datagram on its wakeup socket). Called once per
    /// loop for each worker frames were handed to. Returns whether a wakeup was sent.
    pub fn wake(&self, to: usize) -> bool {
        fence(Ordering::SeqCst);
        let Some(s) = self.sleeping.get(to) else {
            return false;
        };
        if !s.0.swap(false, Ordering::SeqCst) {
            return false;
        }
        if let Some(w) = self.wakers.get(to).and_then(OnceLock::get) {
            // Full means a wakeup is pending already.
            let _ = w.send(&[2]);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ring_is_an_error_and_leaks_no_buffer() {
        let h = Hub::new(2, 4, 2048);
        assert_eq!(h.buffers(), 8);
        for i in 0..4u8 {
            h.send(1, &[i; 60], 7).unwrap();
        }
        assert_eq!(h.send(1, &[9; 60], 7), Err(HandoffError::Full));
        assert_eq!(h.free_buffers() + h.queued(1), h.buffers());
        while let Some(p) = h.recv(1) {
            h.recycle(p);
        }
        assert_eq!(h.free_buffers(), h.buffers());
        assert_eq!(h.send(5, &[0; 60], 7), Err(HandoffError::NoWorker));
        assert_eq!(h.send(0, &[0; 4096], 7), Err(HandoffError::TooLarge));
        assert_eq!(h.free_buffers(), h.buffers());
    }

    #[test]
    fn order_and_contents_are_kept() {
        let h = Hub::new(2, 64, 2048);
        for round in 0..10u32 {
            for i in 0..50u32 {
                let seq = round * 100 + i;
                let mut f = vec![0u8; 64 + (i as usize)];
                f[..4].copy_from_slice(&seq.to_be_bytes());
                h.send(0, &f, 3).unwrap();
            }
            for i in 0..50u32 {
                let p = h.recv(0).expect("queued");
                assert_eq!(p.slot(), 3);
                assert_eq!(p.len() as usize, 64 + i as usize);
                assert_eq!(&p.bytes()[..4], &(round * 100 + i).to_be_bytes());
                h.recycle(p);
            }
            assert!(h.recv(0).is_none());
        }
        assert_eq!(h.free_buffers(), h.buffers());
    }

    #[test]
    fn two_threads_keep_order_and_buffers() {
        let h = std::sync::Arc::new(Hub::new(2, 32, 2048));
        let n = 20_000u32;
        let tx = {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut full = 0u32;
                let mut seq = 0u32;
                while seq < n {
                    match h.send(1, &seq.to_be_bytes(), 1) {
                        Ok(()) => seq += 1,
                        Err(HandoffError::Full) => {
                            full += 1;
                            std::thread::yield_now()
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                full
            })
        };
        let mut next = 0u32;
        while next < n {
            match h.recv(1) {
                Some(p) => {
                    assert_eq!(p.bytes(), &next.to_be_bytes());
                    next += 1;
                    h.recycle(p);
                }
                None => std::thread::yield_now(),
            }
        }
        tx.join().unwrap();
        assert_eq!(h.free_buffers(), h.buffers());
    }

    #[test]
    fn owner_claims() {
        let h = Hub::new(2, 4, 2048);
        assert_eq!(h.owner(5), None);
        h.claim(5, 1);
        h.claim(5, 0);
        assert_eq!(h.owner(5), Some(1));
        h.disclaim(5, 0);
        assert_eq!(h.owner(5), Some(1));
        h.disclaim(5, 1);
        assert_eq!(h.owner(5), None);
    }

    #[test]
    fn park_and_wake() {
        let h = Hub::new(2, 4, 2048);
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        h.set_waker(1, a);
        // Awake: no datagram.
        assert!(!h.wake(1));
        assert!(h.park(1));
        assert!(h.wake(1));
        let mut buf = [0u8; 8];
        assert_eq!(b.recv(&mut buf).unwrap(), 1);
        // One wakeup per sleep.
        assert!(!h.wake(1));
        h.unpark(1);
        // Frames waiting: no sleep.
        h.send(1, &[1; 10], 0).unwrap();
        assert!(!h.park(1));
    }
}
