//! One bounded lock-free queue per worker, that never blocks it: a full queue loses the item,
//! counted per worker. The monitor's events ([`crate::events::Monitor`]) and the flow records
//! ([`crate::flows::FlowRings`]) go through them; each drains them its own way.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

/// One lossy queue of `T` per worker, with its count of items lost.
#[derive(Debug)]
pub struct WorkerRings<T> {
    rings: Box<[ArrayQueue<T>]>,
    lost: Box<[AtomicU64]>,
}

impl<T> WorkerRings<T> {
    /// `workers` queues (at least one) of `cap` items (at least one) each.
    pub fn new(workers: usize, cap: usize) -> Self {
        let n = workers.max(1);
        WorkerRings {
            rings: (0..n).map(|_| ArrayQueue::new(cap.max(1))).collect(),
            lost: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Queues worker `worker`'s item (a number past the queues wraps around); a full queue
    /// loses it, counted. Never blocks.
    #[inline]
    pub fn push(&self, worker: usize, v: T) -> bool {
        let i = worker % self.rings.len();
        if self.rings[i].push(v).is_err() {
            self.lost[i].fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The queues, worker by worker.
    pub fn rings(&self) -> &[ArrayQueue<T>] {
        &self.rings
    }

    /// Items lost to full queues so far, all workers together.
    pub fn lost(&self) -> u64 {
        self.lost.iter().map(|l| l.load(Ordering::Relaxed)).sum()
    }

    /// Items lost per worker.
    pub fn lost_per_worker(&self) -> Vec<u64> {
        self.lost
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }
}
