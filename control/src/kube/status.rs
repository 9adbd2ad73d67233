//! Update latency (event received → tables published) and the pieces of a source's status.

use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A histogram of update latencies, in microseconds (1 µs to 1 h, 3 significant digits).
#[derive(Debug, Clone)]
pub struct UpdateLatency {
    hist: Histogram<u64>,
}

impl Default for UpdateLatency {
    fn default() -> Self {
        UpdateLatency {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        }
    }
}

impl UpdateLatency {
    /// Records one update.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us);
    }

    /// Updates recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The latency at quantile `q` (0..=1); zero when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.hist.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.hist.value_at_quantile(q))
    }

    /// The largest latency recorded.
    pub fn max(&self) -> Duration {
        if self.hist.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.hist.max())
    }

    /// As a Prometheus histogram: the cumulative count of updates at or under each bound (in
    /// microseconds, ascending), the sum of all latencies in microseconds, and the count.
    /// Within the histogram's precision (3 significant digits).
    pub fn cumulative(&self, bounds_us: &[u64]) -> (Vec<u64>, u64, u64) {
        let mut counts = vec![0u64; bounds_us.len()];
        let mut sum = 0u64;
        for v in self.hist.iter_recorded() {
            let (value, n) = (v.value_iterated_to(), v.count_at_value());
            sum = sum.saturating_add(self.hist.median_equivalent(value).saturating_mul(n));
            for (c, _) in counts
                .iter_mut()
                .zip(bounds_us)
                .filter(|(_, b)| self.hist.median_equivalent(value) <= **b)
            {
                *c += n;
            }
        }
        (counts, sum, self.count())
    }

    /// `{"count", "p50_us", "p99_us", "max_us"}` (latencies null when nothing was recorded).
    pub fn to_json(&self) -> Value {
        let us = |d: Duration| {
            if self.hist.is_empty() {
                Value::Null
            } else {
                json!(d.as_micros() as u64)
            }
        };
        json!({
            "count": self.count(),
            "p50_us": us(self.quantile(0.5)),
            "p99_us": us(self.quantile(0.99)),
            "max_us": us(self.max()),
        })
    }
}

/// A time as RFC 3339 (`2025-01-02T03:04:05.678Z`).
pub fn rfc3339(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.round(jiff::Unit::Millisecond).unwrap_or(ts).to_string(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets_count_each_update_once_per_bound_above_it() {
        let mut l = UpdateLatency::default();
        for ms in [1u64, 3, 3, 40, 2000] {
            l.record(Duration::from_millis(ms));
        }
        let (c, sum, n) = l.cumulative(&[500, 5_000, 50_000, 1_000_000]);
        assert_eq!(c, [0, 3, 4, 4]);
        assert_eq!(n, 5);
        let want = 2_047_000f64;
        assert!((sum as f64 - want).abs() / want < 0.01, "{sum}");
        assert_eq!(UpdateLatency::default().cumulative(&[1]), (vec![0], 0, 0));
    }

    #[test]
    fn quantiles_of_recorded_latencies() {
        let mut l = UpdateLatency::default();
        assert_eq!(l.to_json()["p50_us"], Value::Null);
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.count(), 100);
        let p50 = l.quantile(0.5).as_millis();
        let p99 = l.quantile(0.99).as_millis();
        assert!((49..=51).contains(&p50), "{p50}");
        assert!((98..=100).contains(&p99), "{p99}");
        assert_eq!(l.max().as_millis(), 100);
        assert_eq!(l.to_json()["count"], 100);
    }

    #[test]
    fn times_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
