//! The garbage collector: a background thread that walks the table a slice of buckets at a
//! time, reaping expired entries without stopping the workers (they never wait on it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::table::Table;

/// A running collector; stops on drop.
pub struct Gc {
    stop: Arc<AtomicBool>,
    reaped: Arc<AtomicU64>,
    /// Walks of the whole table completed.
    passes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Gc {
    /// Walks the whole table once per `period`, in `slices` steps.
    pub fn start(table: Arc<Table>, period: Duration, slices: usize) -> std::io::Result<Gc> {
        let stop = Arc::new(AtomicBool::new(false));
        let reaped = Arc::new(AtomicU64::new(0));
        let passes = Arc::new(AtomicU64::new(0));
        let (s, r, p) = (stop.clone(), reaped.clone(), passes.clone());
        let slices = slices.clamp(1, table.buckets());
        let per = table.buckets().div_ceil(slices);
        let pause = period / slices as u32;
        let thread = std::thread::Builder::new()
            .name("vireo-ct-gc".into())
            .spawn(move || {
                let mut at = 0;
                while !s.load(Ordering::Relaxed) {
                    let n = table.gc(at, per);
                    r.fetch_add(n as u64, Ordering::Relaxed);
                    at += per;
                    if at >= table.buckets() {
                        at = 0;
                        p.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(pause);
                }
            })?;
        Ok(Gc {
            stop,
            reaped,
            passes,
            thread: Some(thread),
        })
    }

    /// Entries reaped so far.
    pub fn reaped(&self) -> u64 {
        self.reaped.load(Ordering::Relaxed)
    }

    /// Walks of the whole table completed so far.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }
}

impl Drop for Gc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
