//! The back-off of the source's writer tasks (identity allocation, VireoEndpoints, the
//! VireoNodeConfigs' `Valid` conditions): after a failed round, wait, doubling from a first
//! delay up to 30 s; a success starts over.

use std::time::Duration;

/// The longest wait.
const MAX: Duration = Duration::from_secs(30);

/// One task's back-off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits of `first`, doubling up to 30 s.
    pub fn new(first: Duration) -> Backoff {
        Backoff { first, next: first }
    }

    /// The wait the next failure gets.
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// No failure since the last success: a failure now is the first of a streak (warned;
    /// those after it only logged at debug level).
    pub fn fresh(&self) -> bool {
        self.next == self.first
    }

    /// A round succeeded.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// A round failed: waits, and doubles the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.failed();
    }

    fn failed(&mut self) {
        self.next = (self.next * 2).min(MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(500));
        assert!(b.fresh());
        let mut waits = Vec::new();
        for _ in 0..8 {
            waits.push(b.delay().as_millis());
            b.failed();
            assert!(!b.fresh());
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        b.reset();
        assert!(b.fresh());
        assert_eq!(b.delay(), Duration::from_millis(500));
    }
}
