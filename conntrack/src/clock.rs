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

/// `CLOCK_MONOTONIC` in whole seconds: the same for every process on the machine (since
/// boot), unlike an [`Instant`] kept by one process.
pub fn monotonic_secs() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(ts.tv_sec).unwrap_or(0)
}

/// A clock counting from an epoch in `CLOCK_MONOTONIC` seconds, so the expiries a process
/// stored in a shared table mean the same to the next process that adopts it (it reads the
/// epoch from the table's header). It reads 1 at the epoch, as [`MonotonicClock`] at its
/// start.
#[derive(Debug)]
pub struct EpochClock {
    epoch: u64,
}

impl EpochClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        EpochClock::with_epoch(monotonic_secs())
    }

    /// A clock whose epoch is `epoch` (`CLOCK_MONOTONIC` seconds).
    pub fn with_epoch(epoch: u64) -> Self {
        EpochClock { epoch }
    }

    /// Its epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Default for EpochClock {
    fn default() -> Self {
        EpochClock::new()
    }
}

impl Clock for EpochClock {
    fn now(&self) -> u32 {
        let since = monotonic_secs().saturating_sub(self.epoch);
        u32::try_from(since)
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_clock_made_later_with_the_same_epoch_reads_the_same_time() {
        let first = EpochClock::new();
        let earlier = EpochClock::with_epoch(first.epoch().saturating_sub(100));
        let again = EpochClock::with_epoch(first.epoch());
        let (a, b) = (first.now(), again.now());
        assert!(a <= b && b <= a + 1, "{a} vs {b}");
        assert!(
            earlier.now() >= a + 100,
            "an older epoch is further in the past"
        );
        assert!(a >= 1);
    }

    #[test]
    fn monotonic_seconds_do_not_go_back() {
        let a = monotonic_secs();
        let b = monotonic_secs();
        assert!(b >= a && a > 0);
    }
}
