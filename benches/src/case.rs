//! One measured case of `vireo bench --json`, the shape other tools read:
//!
//! ```json
//! {"name":"vireo-egress","frame":64,"flows":1,"path":"same-node","mpps":0.61,"gbps":0.41,
//!  "p50_us":null,"p99_us":null,"cpu_ns_per_pkt":1530.0,"runs":3,"note":null}
//! ```
//!
//! `name` is one of the case names of the harness (`vireo-egress`, `vireo-ingress`,
//! `vireo-plain`, `testpmd-io`, `kernel-path`, `kernel-xdp-redirect`, `vireo-tcp`, `kernel-tcp`,
//! `vireo-rr`, `kernel-rr`, and the generator cross-check). `frame` is the frame size in bytes for
//! packet-rate cases and the MTU for TCP and request/response cases. Figures are the median of
//! `runs` runs; a figure a case does not measure is `null`. A case that could not run on this
//! machine keeps its row with every figure `null` and the reason in `note`.

use serde::Serialize;

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Case {
    /// Case name (see the module doc).
    pub name: String,
    /// Frame size in bytes (packet-rate cases), or the MTU (TCP and request/response cases).
    pub frame: u32,
    /// Distinct flows the generator cycles through (1: single-flow).
    pub flows: u32,
    /// `same-node` or `cross-node`.
    pub path: &'static str,
    /// Delivered million packets per second.
    pub mpps: Option<f64>,
    /// Delivered gigabits per second (frame bytes, or TCP goodput).
    pub gbps: Option<f64>,
    /// Median latency in microseconds (request/response cases).
    pub p50_us: Option<f64>,
    /// 99th-percentile latency in microseconds (request/response cases).
    pub p99_us: Option<f64>,
    /// CPU time of the device under test per delivered packet, in nanoseconds.
    pub cpu_ns_per_pkt: Option<f64>,
    /// Runs the figures are the median of.
    pub runs: u32,
    /// Why a case did not run, or what to know about its figures.
    pub note: Option<String>,
}

impl Case {
    /// A row with no figures yet.
    pub fn new(name: &str, frame: u32, flows: u32, path: &'static str) -> Self {
        Case {
            name: name.to_string(),
            frame,
            flows,
            path,
            mpps: None,
            gbps: None,
            p50_us: None,
            p99_us: None,
            cpu_ns_per_pkt: None,
            runs: 0,
            note: None,
        }
    }

    /// A row for a case that could not run here, with the reason.
    pub fn skipped(name: &str, frame: u32, flows: u32, path: &'static str, why: &str) -> Self {
        Case {
            note: Some(why.to_string()),
            ..Case::new(name, frame, flows, path)
        }
    }
}

/// Median of `xs` (the mean of the middle two for an even count); `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_has_the_interface_fields_in_order() {
        let mut c = Case::new("vireo-egress", 64, 1, "cross-node");
        c.mpps = Some(0.5);
        let s = serde_json::to_string(&c).unwrap();
        assert!(
            s.starts_with(r#"{"name":"vireo-egress","frame":64,"#),
            "{s}"
        );
        for k in ["mpps", "gbps", "p50_us", "p99_us", "cpu_ns_per_pkt"] {
            assert!(s.contains(&format!("\"{k}\":")), "{k} missing in {s}");
        }
        assert!(s.contains(r#""gbps":null"#), "{s}");
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
    }
}
