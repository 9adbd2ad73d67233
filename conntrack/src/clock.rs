//! Time for lifetimes, in whole seconds since the clock's start. Injectable, so tests can run
//! time forward.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// A source of seconds.
pub trait Clock: Send + Sync {
    /// Seconds since this clock started.
    fn now(&self) -> u32;
}

/// The real, monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> u32 {
        // Start at 1 so that 0 can mean "never".
        self.0.elapsed().as_secs() as u32 + 1
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicU32);

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock(AtomicU32::new(1))
    }
}

impl ManualClock {
    /// Moves time forward.
    pub fn advance(&self, secs: u32) {
        self.0.fetch_add(secs, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}
