//! Fill-ring budgets and the idle back-off of a worker: pure arithmetic, no I/O, so that it is
//! tested without sockets.
//!
//! Every socket bound into a worker's UMEM gets a *share* of the UMEM for its fill ring: the
//! UMEM minus a reserve (frames held in a batch or waiting on TX rings), divided by the number
//! of sockets, at most the fill ring's size. A socket under load (a batch of at least half of
//! [`BATCH`] frames, or its fill ring drained below half of its share) is *hot* for
//! [`HOT_LOOPS`] loops and may grow to *high* (half the pool), taken from the frames left over, never from the
//! reserve. A socket that cools off drains back to its share, because only the share is topped
//! up then. The old scheme gave an idle socket one batch and cooled a socket at every refill,
//! so a TCP stream whose batches came in under half a batch ran on a 64-frame fill ring and
//! the kernel found it empty (`rx_fill_ring_empty`, each a lost segment).

use crate::pipeline::BATCH;

/// Loops a socket stays hot after it last looked busy (a TCP stream pauses between windows).
pub(crate) const HOT_LOOPS: u32 = 4096;

/// The most frames an idle socket keeps in its fill ring (four batches).
pub(crate) const IDLE_MAX: u32 = 4 * BATCH as u32;

/// How long an idle worker keeps spinning after its last frame before it sleeps in `poll()`.
pub(crate) const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Fill-ring targets for a UMEM of `frames` frames whose device queues have `fill_size`-entry
/// fill rings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillBudget {
    frames: u32,
    fill_size: u32,
    reserve: u32,
}

impl FillBudget {
    pub(crate) fn new(frames: u32, fill_size: u32) -> Self {
        // One batch held by the pipeline and a TX ring's worth in flight, at least 1/8.
        let reserve = (frames / 8).max(BATCH as u32 * 2).min(frames / 2);
        FillBudget {
            frames,
            fill_size,
            reserve,
        }
    }

    /// Frames growth never takes.
    pub(crate) fn reserve(&self) -> usize {
        self.reserve as usize
    }

    /// The fill level every one of `sockets` sockets is kept at: a fair share of the UMEM,
    /// at most [`IDLE_MAX`] frames, at least one batch (when the UMEM has that many), at most
    /// the fill ring.
    pub(crate) fn share(&self, sockets: usize) -> u32 {
        let pool = self.frames - self.reserve;
        let n = u32::try_from(sockets.max(1)).unwrap_or(u32::MAX);
        // A fixed cap, not a fraction of the fill ring: frames parked in idle sockets' fill
        // rings cannot be taken back, and the sandbox has two sockets per veth on many pods.
        // With 4096-entry rings a quarter each (1024) parked 13 k frames in idle rings.
        (pool / n)
            .min(IDLE_MAX)
            .max((BATCH as u32).min(pool))
            .min(self.fill_size)
    }

    /// The fill level a hot socket grows to: half of the pool, at least its share, at most
    /// the fill ring. A TCP receiver's window (megabytes, thousands of frames) must fit in
    /// its fill ring while the worker is descheduled, or the kernel drops
    /// (`rx_fill_ring_empty`) and TCP, which sees no backpressure through XDP, backs off.
    pub(crate) fn high(&self, sockets: usize) -> u32 {
        ((self.frames - self.reserve) / 2)
            .max(self.share(sockets))
            .min(self.fill_size)
    }
}

/// The new hot countdown of a socket that just received `got` frames and has `in_fill` frames
/// left in its fill ring, whose share is `share`.
#[inline]
pub(crate) fn heat(hot: u32, got: usize, in_fill: u32, share: u32) -> u32 {
    if got >= BATCH / 2 || (got > 0 && in_fill < share / 2) {
        HOT_LOOPS
    } else {
        hot.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_sockets_get_a_quarter_and_grow_to_full() {
        // The sandbox's UMEM (8192 frames, 1024-entry fill rings) with an uplink and 3 pods:
        // every socket keeps four batches (a quarter of this ring), a hot one all of it.
        let b = FillBudget::new(8192, 1024);
        for n in 1..=13 {
            assert_eq!(b.share(n), 256, "{n} sockets");
            assert_eq!(b.high(n), 1024, "{n} sockets");
            // Every socket at its share and two hot ones at high still leave the reserve.
            assert!(n as u32 * 256 + 2 * (1024 - 256) <= 8192 - b.reserve() as u32);
        }
    }

    #[test]
    fn big_rings_park_little_in_idle_sockets_and_a_hot_one_holds_a_window() {
        // The default sizes: 32768 frames, 4096-entry fill rings, 13 sockets (the sandbox's node).
        // Idle sockets keep four batches (a quarter of the ring parked 13 x 1024 frames);
        // a hot one holds its whole ring, 4096 frames of 1450 bytes (~6 MB, a TCP window).
        let b = FillBudget::new(32768, 4096);
        for n in 1..=13 {
            assert_eq!(b.share(n), IDLE_MAX, "{n} sockets");
            assert_eq!(b.high(n), 4096, "{n} sockets");
            // Two hot sockets (a stream's both ends) and the rest idle leave the reserve.
            assert!(n as u32 * IDLE_MAX + 2 * (4096 - IDLE_MAX) <= 32768 - b.reserve() as u32);
        }
        // The old default UMEM (16384 frames): a quarter of the pool (3584) fell short of the ring.
        assert_eq!(FillBudget::new(16384, 4096).high(13), 4096);
    }

    #[test]
    fn many_sockets_stay_within_the_umem() {
        for (frames, ring) in [256u32, 4096, 8192, 16384, 65536]
            .into_iter()
            .flat_map(|f| [(f, 1024u32), (f, 4096)])
        {
            let b = FillBudget::new(frames, ring);
            for n in 1..=2000usize {
                let s = b.share(n);
                assert!(s <= ring.min(IDLE_MAX.max(BATCH as u32)));
                // Shares never take the reserve unless one batch each does not fit.
                if s > BATCH as u32 {
                    assert!(
                        u64::from(s) * n as u64 <= u64::from(frames) - b.reserve() as u64,
                        "{frames} frames, {n} sockets, share {s}"
                    );
                }
                assert!(s >= (BATCH as u32).min(frames - b.reserve() as u32));
                let h = b.high(n);
                assert!(h >= s && h <= ring);
                assert!(h as usize <= frames as usize - b.reserve());
            }
        }
    }

    #[test]
    fn a_stream_of_small_batches_stays_hot() {
        // 20 frames a loop never reached half a batch: the old `active` heuristic never grew
        // such a socket. Draining below half the share marks it hot.
        let share = 128;
        let mut hot = 0;
        hot = heat(hot, 20, 40, share);
        assert_eq!(hot, HOT_LOOPS);
        for _ in 0..100 {
            hot = heat(hot, 0, 128, share);
        }
        assert_eq!(hot, HOT_LOOPS - 100);
        // An idle socket's chatter (a frame now and then, fill ring full) does not heat it.
        assert_eq!(heat(0, 1, 128, share), 0);
        assert_eq!(heat(0, BATCH / 2, 128, share), HOT_LOOPS);
    }
}
