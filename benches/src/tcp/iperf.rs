//! iperf3 runs (one stream, fixed time) between two namespaces, and its `--json` output read
//! into a case's figures.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::proc::Proc;
use crate::case::{median, Case};

/// What one iperf3 run measured.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct IperfRun {
    /// Receiver goodput, bits per second.
    pub(super) received_bps: f64,
    /// Sender retransmits.
    pub(super) retransmits: u64,
}

/// Reads iperf3's `--json` output (of the client): `end.sum_received.bits_per_second` and
/// `end.sum_sent.retransmits`; iperf3's own `error` is the error.
pub(super) fn parse_iperf_json(text: &str) -> Result<IperfRun> {
    let v: Value = serde_json::from_str(text).context("iperf3 --json output")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    let end = v
        .get("end")
        .ok_or_else(|| anyhow!("iperf3 output has no `end`"))?;
    let received_bps = end
        .pointer("/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("iperf3 output has no end.sum_received.bits_per_second"))?;
    let retransmits = end
        .pointer("/sum_sent/retransmits")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("iperf3 output has no end.sum_sent.retransmits (not TCP?)"))?;
    if !received_bps.is_finite() || received_bps < 0.0 {
        bail!("iperf3 reported {received_bps} bit/s");
    }
    Ok(IperfRun {
        received_bps,
        retransmits,
    })
}

/// The row of a TCP case from its runs: median goodput in Gbit/s, retransmits (median, and
/// each run's) in the note.
pub(super) fn tcp_case(name: &str, mtu: u32, path: &'static str, runs: &[IperfRun]) -> Case {
    let mut c = Case::new(name, mtu, 1, path);
    c.runs = runs.len() as u32;
    c.gbps = median(
        &runs
            .iter()
            .map(|r| r.received_bps / 1e9)
            .collect::<Vec<_>>(),
    )
    .map(|g| (g * 1000.0).round() / 1000.0);
    let rts: Vec<f64> = runs.iter().map(|r| r.retransmits as f64).collect();
    if let Some(m) = median(&rts) {
        let each: Vec<String> = runs.iter().map(|r| r.retransmits.to_string()).collect();
        c.note = Some(format!("retransmits {m} (runs: {})", each.join(", ")));
    }
    c
}

/// One iperf3 run of `seconds` from `client_ns` to a one-off server at `server_ip` in
/// `server_ns`.
pub(super) fn iperf_once(
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    port: u16,
    seconds: u64,
    stop: &AtomicBool,
) -> Result<IperfRun> {
    let port_s = port.to_string();
    let server = Proc::spawn(
        &[
            "ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip, "-p", &port_s,
        ],
        "iperf3 server",
    )?;
    // Give it a moment to listen; the client retries its connection for a while anyway.
    std::thread::sleep(Duration::from_millis(300));
    let secs = seconds.to_string();
    let client = Proc::spawn(
        &[
            "ip",
            "netns",
            "exec",
            client_ns,
            "iperf3",
            "-c",
            server_ip,
            "-p",
            &port_s,
            "-t",
            &secs,
            "-J",
            "--connect-timeout",
            "3000",
        ],
        "iperf3 client",
    )?;
    let (_, out, err) = client.wait(Duration::from_secs(seconds + 15), stop)?;
    let r = parse_iperf_json(&out).with_context(|| err.trim().to_string());
    let _ = server.wait(Duration::from_secs(3), stop);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of iperf3 3.12's `-J` output (trimmed: streams and intervals left out).
    const SAMPLE: &str = r#"{
        "start": {"version": "iperf 3.12", "tcp_mss_default": 1398},
        "intervals": [],
        "end": {
            "streams": [],
            "sum_sent": {"start": 0, "end": 3.0, "seconds": 3.0, "bytes": 1506017280,
                         "bits_per_second": 4016046080.0, "retransmits": 123, "sender": true},
            "sum_received": {"start": 0, "end": 3.01, "seconds": 3.01, "bytes": 1505099776,
                             "bits_per_second": 4000265118.6, "sender": true},
            "cpu_utilization_percent": {"host_total": 88.1}
        }
    }"#;

    #[test]
    fn receiver_goodput_and_retransmits() {
        let r = parse_iperf_json(SAMPLE).unwrap();
        assert_eq!(r.retransmits, 123);
        assert!((r.received_bps - 4_000_265_118.6).abs() < 1.0);
    }

    #[test]
    fn iperf_errors_and_other_shapes_are_errors() {
        let refused = r#"{"start": {"connected": []}, "intervals": [], "end": {},
                          "error": "unable to connect to server: Connection refused"}"#;
        let e = parse_iperf_json(refused).unwrap_err().to_string();
        assert!(e.contains("Connection refused"), "{e}");
        // UDP output has no retransmits.
        let udp = r#"{"end": {"sum_sent": {"bits_per_second": 1e6},
                              "sum_received": {"bits_per_second": 1e6}}}"#;
        assert!(parse_iperf_json(udp).is_err());
        assert!(parse_iperf_json("").is_err());
        assert!(parse_iperf_json("iperf3: error").is_err());
    }

    #[test]
    fn case_takes_the_median_of_the_runs() {
        let runs = [
            IperfRun {
                received_bps: 3e9,
                retransmits: 10,
            },
            IperfRun {
                received_bps: 1e9,
                retransmits: 300,
            },
            IperfRun {
                received_bps: 2.5e9,
                retransmits: 20,
            },
        ];
        let c = tcp_case("kernel-tcp", 1450, "cross-node", &runs);
        assert_eq!((c.frame, c.path, c.runs), (1450, "cross-node", 3));
        assert_eq!(c.gbps, Some(2.5));
        assert_eq!(
            c.note.as_deref(),
            Some("retransmits 20 (runs: 10, 300, 20)")
        );
        assert_eq!(c.mpps, None);
        let none = tcp_case("kernel-tcp", 1450, "same-node", &[]);
        assert_eq!((none.gbps, none.note), (None, None));
    }
}
