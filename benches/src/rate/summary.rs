//! The report of `vireo bench`: the machine, the date, the cases and the ratios, as one JSON
//! object (`--json`) or as markdown tables.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::case::Case;

/// The machine the figures were measured on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Machine {
    pub(super) cpu: String,
    pub(super) cores: usize,
    pub(super) kernel: String,
    /// `/proc/loadavg` when the bench started (other work on the machine lowers every figure).
    pub(super) loadavg: String,
}

impl Machine {
    pub(super) fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease"),
            loadavg: read("/proc/loadavg"),
        }
    }
}

/// The `--json` object, fields in this order.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Report {
    pub(super) machine: Machine,
    pub(super) date: String,
    pub(super) cases: Vec<Case>,
    pub(super) ratios: BTreeMap<String, f64>,
}

/// The pipeline cases whose rates are divided by every other packet-rate case of the same frame
/// size and flow count.
const NUMERATORS: [&str; 2] = ["vireo-egress", "vireo-pod"];
/// Cases that are not packet-rate cases.
const STREAM_CASES: [&str; 5] = [
    "vireo-tcp",
    "kernel-tcp",
    "vireo-rr",
    "vireo-rr-busy-poll",
    "kernel-rr",
];

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(round3(a / b)),
        _ => None,
    }
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `NUM/DEN@FRAME,FLOWS` → ratio of their mpps, for every numerator case against every other
/// packet-rate case with the same frame and flows; `vireo-tcp/kernel-tcp@MTU` (gbps) and
/// `vireo-rr/kernel-rr@MTU p50|p99` (latency) for rows on the same MTU and path.
pub(super) fn ratios(cases: &[Case]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for num in cases
        .iter()
        .filter(|c| NUMERATORS.contains(&c.name.as_str()))
    {
        for den in cases.iter().filter(|d| {
            d.name != num.name
                && !STREAM_CASES.contains(&d.name.as_str())
                && !NUMERATORS.contains(&d.name.as_str())
                && d.frame == num.frame
                && d.flows == num.flows
        }) {
            if let Some(r) = ratio(num.mpps, den.mpps) {
                out.insert(
                    format!("{}/{}@{},{}", num.name, den.name, num.frame, num.flows),
                    r,
                );
            }
        }
    }
    let pair = |a: &str, b: &str| -> Vec<(&Case, &Case)> {
        let mut v = Vec::new();
        for x in cases.iter().filter(|c| c.name == a) {
            for y in cases
                .iter()
                .filter(|y| y.name == b && y.frame == x.frame && y.path == x.path)
            {
                v.push((x, y));
            }
        }
        v
    };
    for (v, k) in pair("vireo-tcp", "kernel-tcp") {
        if let Some(r) = ratio(v.gbps, k.gbps) {
            out.insert(format!("vireo-tcp/kernel-tcp@{},{}", v.frame, v.path), r);
        }
    }
    for name in ["vireo-rr", "vireo-rr-busy-poll"] {
        for (v, k) in pair(name, "kernel-rr") {
            for (tag, a, b) in [("p50", v.p50_us, k.p50_us), ("p99", v.p99_us, k.p99_us)] {
                if let Some(r) = ratio(a, b) {
                    out.insert(format!("{name}/kernel-rr@{},{} {tag}", v.frame, v.path), r);
                }
            }
        }
    }
    out
}

/// The targets of issue 15, shown next to the ratios (never asserted).
const TARGETS: [(&str, f64); 2] = [
    ("vireo-egress/vireo-plain@64,1", 0.90),
    ("vireo-egress/kernel-path@64,1", 1.5),
];

fn cell(x: Option<f64>, prec: usize) -> String {
    x.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"))
}

/// The report as markdown: the machine, the cases table, the ratios table.
pub(super) fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let _ = writeln!(
        o,
        "\n`vireo bench`, {}: {} ({} cores), Linux {}, load average {}\n",
        r.date, m.cpu, m.cores, m.kernel, m.loadavg
    );
    let _ = writeln!(
        o,
        "| case | frame | flows | path | Mpps | Gbit/s | p50 µs | p99 µs | DUT ns/pkt | runs | note |"
    );
    let _ = writeln!(o, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for c in &r.cases {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.name,
            c.frame,
            c.flows,
            c.path,
            cell(c.mpps, 3),
            cell(c.gbps, 3),
            cell(c.p50_us, 1),
            cell(c.p99_us, 1),
            cell(c.cpu_ns_per_pkt, 0),
            c.runs,
            c.note.as_deref().unwrap_or("").replace('|', "/")
        );
    }
    let _ = writeln!(o, "\n| ratio | value | target |\n|---|---:|---:|");
    for (k, v) in &r.ratios {
        let target = TARGETS
            .iter()
            .find(|(n, _)| n == k)
            .map_or_else(String::new, |(_, t)| format!(">= {t:.2}"));
        let _ = writeln!(o, "| {k} | {v:.3} | {target} |");
    }
    for (k, t) in TARGETS {
        if !r.ratios.contains_key(k) {
            let _ = writeln!(o, "| {k} | - (a case did not run) | >= {t:.2} |");
        }
    }
    o
}

/// Now as RFC 3339 in UTC, to the second.
pub(super) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    format!("{t:.0}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, frame: u32, flows: u32, mpps: Option<f64>) -> Case {
        Case {
            mpps,
            runs: 3,
            ..Case::new(name, frame, flows, "same-node")
        }
    }

    #[test]
    fn ratios_match_frame_and_flows_only() {
        let cases = vec![
            row("vireo-egress", 64, 1, Some(0.6)),
            row("vireo-plain", 64, 1, Some(0.8)),
            row("kernel-path", 64, 1, Some(0.3)),
            row("kernel-path", 512, 1, Some(0.1)),
            row("kernel-path", 64, 256, Some(0.2)),
            row("testpmd-io", 64, 1, None),
        ];
        let r = ratios(&cases);
        assert_eq!(r.get("vireo-egress/vireo-plain@64,1"), Some(&0.75));
        assert_eq!(r.get("vireo-egress/kernel-path@64,1"), Some(&2.0));
        // Different frame or flows, a case without figures, and the case itself: no ratio.
        assert_eq!(r.len(), 2, "{r:?}");
    }

    #[test]
    fn stream_ratios_use_gbps_and_latency_on_the_same_mtu_and_path() {
        let mut vt = Case::new("vireo-tcp", 1450, 1, "cross-node");
        vt.gbps = Some(3.0);
        let mut kt = Case::new("kernel-tcp", 1450, 1, "cross-node");
        kt.gbps = Some(12.0);
        let mut kt_other = Case::new("kernel-tcp", 1450, 1, "same-node");
        kt_other.gbps = Some(1.0);
        let mut vr = Case::new("vireo-rr", 1450, 1, "cross-node");
        (vr.p50_us, vr.p99_us) = (Some(40.0), Some(100.0));
        let mut kr = Case::new("kernel-rr", 1450, 1, "cross-node");
        (kr.p50_us, kr.p99_us) = (Some(20.0), Some(25.0));
        let mut vb = Case::new("vireo-rr-busy-poll", 1450, 1, "cross-node");
        (vb.p50_us, vb.p99_us) = (Some(30.0), Some(50.0));
        let r = ratios(&[vt, kt, kt_other, vr, kr, vb]);
        assert_eq!(r.get("vireo-tcp/kernel-tcp@1450,cross-node"), Some(&0.25));
        assert_eq!(r.get("vireo-rr/kernel-rr@1450,cross-node p50"), Some(&2.0));
        assert_eq!(r.get("vireo-rr/kernel-rr@1450,cross-node p99"), Some(&4.0));
        assert_eq!(
            r.get("vireo-rr-busy-poll/kernel-rr@1450,cross-node p50"),
            Some(&1.5)
        );
        assert_eq!(
            r.get("vireo-rr-busy-poll/kernel-rr@1450,cross-node p99"),
            Some(&2.0)
        );
        assert_eq!(r.len(), 5, "{r:?}");
    }

    fn report() -> Report {
        let cases = vec![
            row("vireo-egress", 64, 1, Some(0.6)),
            row("vireo-plain", 64, 1, Some(0.8)),
            Case::skipped("testpmd-io", 64, 1, "same-node", "no dpdk-testpmd | here"),
        ];
        Report {
            machine: Machine {
                cpu: "Test CPU".into(),
                cores: 2,
                kernel: "6.18.0".into(),
                loadavg: "0.00 0.00 0.00 1/1 1".into(),
            },
            date: rfc3339(0),
            ratios: ratios(&cases),
            cases,
        }
    }

    #[test]
    fn json_has_machine_date_cases_ratios() {
        let v = serde_json::to_value(report()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["cases", "date", "machine", "ratios"]);
        assert_eq!(v["machine"]["cores"], 2);
        assert_eq!(v["date"], "1970-01-01T00:00:00Z");
        assert_eq!(v["cases"][0]["name"], "vireo-egress");
        assert_eq!(v["cases"][2]["mpps"], serde_json::Value::Null);
        assert_eq!(v["ratios"]["vireo-egress/vireo-plain@64,1"], 0.75);
        let s = serde_json::to_string(&report()).unwrap();
        assert!(s.starts_with(r#"{"machine":{"cpu":"Test CPU""#), "{s}");
    }

    #[test]
    fn markdown_lists_cases_ratios_and_missing_targets() {
        let md = markdown(&report());
        assert!(
            md.contains("| vireo-plain | 64 | 1 | same-node | 0.800 | - |"),
            "{md}"
        );
        // A `|` in a note does not break the table.
        assert!(md.contains("no dpdk-testpmd / here"), "{md}");
        assert!(
            md.contains("| vireo-egress/vireo-plain@64,1 | 0.750 | >= 0.90 |"),
            "{md}"
        );
        assert!(
            md.contains("| vireo-egress/kernel-path@64,1 | - (a case did not run) | >= 1.50 |"),
            "{md}"
        );
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_164_353), "2026-12-01T22:32:33Z");
    }
}
