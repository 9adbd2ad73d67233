//! Metric families for `/metrics`, built afresh at each scrape from the agent's counters and
//! encoded in Prometheus' text format (0.0.4) by the `prometheus` crate. Names follow
//! Prometheus' conventions as Cilium's `cilium_*` metrics do: a `vireo_` prefix, the unit in
//! the name (`_bytes`, `_seconds`), `_total` on counters.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

/// A histogram's state: cumulative counts at or under each bound, the sum and the count.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    /// Upper bounds, ascending (the `+Inf` bucket is implied).
    pub bounds: Vec<f64>,
    /// Cumulative counts, one per bound.
    pub cumulative: Vec<u64>,
    /// Sum of the values observed.
    pub sum: f64,
    /// Values observed.
    pub count: u64,
}

impl Buckets {
    /// Empty, with these bounds.
    pub fn new(bounds: &[f64]) -> Buckets {
        Buckets {
            bounds: bounds.to_vec(),
            cumulative: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        for (c, b) in self.cumulative.iter_mut().zip(&self.bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

/// Bounds in seconds for durations from 100 µs to a minute.
pub const SECONDS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 60.0,
];

/// The families of one scrape, in the order they are added.
#[derive(Default)]
pub struct Families(Vec<MetricFamily>);

/// One family being filled.
pub struct Family<'a>(&'a mut MetricFamily);

fn labels(l: &[(&str, &str)]) -> Vec<LabelPair> {
    l.iter()
        .map(|(k, v)| {
            let mut p = LabelPair::default();
            p.set_name((*k).to_string());
            p.set_value((*v).to_string());
            p
        })
        .collect()
}

impl Families {
    /// Starts a family (`name` with its unit, `_total` for a counter).
    pub fn family(&mut self, name: &str, help: &str, kind: MetricType) -> Family<'_> {
        debug_assert!(
            kind != MetricType::COUNTER || name.ends_with("_total"),
            "counter {name} without _total"
        );
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(kind);
        self.0.push(f);
        Family(self.0.last_mut().expect("just pushed"))
    }

    /// A counter family with one sample per label set.
    pub fn counters<'l>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Vec<(&'l str, &'l str)>, u64)>,
    ) {
        let mut f = self.family(name, help, MetricType::COUNTER);
        for (l, v) in samples {
            f.counter(&l, v);
        }
    }

    /// A gauge family with one sample per label set.
    pub fn gauges<'l>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Vec<(&'l str, &'l str)>, f64)>,
    ) {
        let mut f = self.family(name, help, MetricType::GAUGE);
        for (l, v) in samples {
            f.gauge(&l, v);
        }
    }

    /// The text exposition. Families without samples are left out (the format has no empty
    /// families).
    pub fn encode(mut self) -> String {
        self.0.retain(|f| !f.get_metric().is_empty());
        prometheus::TextEncoder::new()
            .encode_to_string(&self.0)
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

impl Family<'_> {
    /// A counter sample.
    pub fn counter(&mut self, l: &[(&str, &str)], v: u64) -> &mut Self {
        let mut c = Counter::default();
        c.set_value(v as f64);
        let mut m = Metric::from_label(labels(l));
        m.set_counter(c);
        self.0.mut_metric().push(m);
        self
    }

    /// A gauge sample.
    pub fn gauge(&mut self, l: &[(&str, &str)], v: f64) -> &mut Self {
        let mut g = Gauge::default();
        g.set_value(v);
        let mut m = Metric::from_label(labels(l));
        m.set_gauge(g);
        self.0.mut_metric().push(m);
        self
    }

    /// A histogram sample.
    pub fn histogram(&mut self, l: &[(&str, &str)], b: &Buckets) -> &mut Self {
        let mut h = Histogram::default();
        h.set_sample_count(b.count);
        h.set_sample_sum(b.sum);
        h.set_bucket(
            b.bounds
                .iter()
                .zip(&b.cumulative)
                .map(|(ub, c)| {
                    let mut k = Bucket::default();
                    k.set_upper_bound(*ub);
                    k.set_cumulative_count(*c);
                    k
                })
                .collect(),
        );
        let mut m = Metric::from_label(labels(l));
        m.set_histogram(h);
        self.0.mut_metric().push(m);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_as_prometheus_text() {
        let mut f = Families::default();
        f.counters(
            "vireo_drop_count_total",
            "Packets dropped, by reason.",
            [(vec![("worker", "0"), ("reason", "ct_full")], 3)],
        );
        f.gauges("vireo_conntrack_entries", "Entries.", []);
        let mut b = Buckets::new(&[0.001, 0.1]);
        b.observe(0.0005);
        b.observe(0.05);
        b.observe(3.0);
        f.family(
            "vireo_maglev_build_duration_seconds",
            "Build time.",
            MetricType::HISTOGRAM,
        )
        .histogram(&[], &b);
        let text = f.encode();
        assert_eq!(
            text,
            "# HELP vireo_drop_count_total Packets dropped, by reason.\n\
             # TYPE vireo_drop_count_total counter\n\
             vireo_drop_count_total{worker=\"0\",reason=\"ct_full\"} 3\n\
             # HELP vireo_maglev_build_duration_seconds Build time.\n\
             # TYPE vireo_maglev_build_duration_seconds histogram\n\
             vireo_maglev_build_duration_seconds_bucket{le=\"0.001\"} 1\n\
             vireo_maglev_build_duration_seconds_bucket{le=\"0.1\"} 2\n\
             vireo_maglev_build_duration_seconds_bucket{le=\"+Inf\"} 3\n\
             vireo_maglev_build_duration_seconds_sum 3.0505\n\
             vireo_maglev_build_duration_seconds_count 3\n",
            "the empty gauge family is left out"
        );
    }
}
