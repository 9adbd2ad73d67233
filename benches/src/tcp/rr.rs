//! Request/response latency between two namespaces, with `vireo probe rr-server` and
//! `rr-client` (UDP; the client keeps the round trips in an HDR histogram): first the peak rate,
//! closed loop with [`INFLIGHT`] requests outstanding, then an open-loop run paced at half of
//! it, whose percentiles are the case's figures.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::proc::Proc;
use crate::case::Case;

/// Requests outstanding in the closed-loop (peak) run.
pub(super) const INFLIGHT: u32 = 8;
/// The paced run's share of the peak rate.
pub(super) const LOAD: f64 = 0.5;
/// The UDP port of the server.
const PORT: u16 = 7477;

/// The part of `rr-client`'s line the cases use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct RrLine {
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) rate: f64,
    pub(super) p50_us: Option<f64>,
    pub(super) p99_us: Option<f64>,
}

/// Reads the client's JSON line (the last line of its output).
pub(super) fn parse_rr_line(out: &str) -> Result<RrLine> {
    let line = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("rr-client printed nothing"))?;
    let r: RrLine = serde_json::from_str(line).with_context(|| format!("rr-client: {line}"))?;
    if r.received == 0 {
        bail!("no replies ({} requests sent)", r.sent);
    }
    Ok(r)
}

/// The row of an RR case from its peak run and its paced run.
pub(super) fn rr_case(
    name: &str,
    path: &'static str,
    mtu: u32,
    peak: &RrLine,
    paced: &RrLine,
) -> Case {
    let mut c = Case::new(name, mtu, 1, path);
    c.runs = 1;
    c.mpps = Some(round(paced.rate / 1e6, 6));
    c.p50_us = paced.p50_us.map(|x| round(x, 1));
    c.p99_us = paced.p99_us.map(|x| round(x, 1));
    c.note = Some(format!(
        "UDP 64 B; peak {:.0} req/s closed loop ({INFLIGHT} in flight), measured at {:.0}% of it: {:.0} req/s, {} of {} answered",
        peak.rate,
        LOAD * 100.0,
        paced.rate,
        paced.received,
        paced.sent
    ));
    c
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// One client run from `client_ns` (`--inflight N` or `--rate R`).
fn client(
    vireo: &Path,
    client_ns: &str,
    server_ip: &str,
    seconds: u64,
    pacing: (&str, String),
    stop: &AtomicBool,
) -> Result<RrLine> {
    let vireo = vireo.to_string_lossy();
    let to = format!("{server_ip}:{PORT}");
    let secs = seconds.to_string();
    let p = Proc::spawn(
        &[
            "ip",
            "netns",
            "exec",
            client_ns,
            &vireo,
            "probe",
            "rr-client",
            "--to",
            &to,
            "--seconds",
            &secs,
            pacing.0,
            &pacing.1,
        ],
        "rr-client",
    )?;
    let (ok, out, err) = p.wait(Duration::from_secs(seconds + 10), stop)?;
    if !ok {
        bail!("rr-client failed: {}", err.trim());
    }
    parse_rr_line(&out)
}

/// Peak, then paced at [`LOAD`] of it; returns the case's row.
#[allow(clippy::too_many_arguments)]
pub(super) fn rr_run(
    vireo: &Path,
    name: &str,
    path: &'static str,
    mtu: u32,
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    seconds: u64,
    stop: &AtomicBool,
) -> Result<Case> {
    let listen = format!("{server_ip}:{PORT}");
    let timeout = (2 * seconds + 20).to_string();
    let v = vireo.to_string_lossy();
    let server = Proc::spawn(
        &[
            "ip",
            "netns",
            "exec",
            server_ns,
            &v,
            "probe",
            "rr-server",
            "--listen",
            &listen,
            "--timeout",
            &timeout,
        ],
        "rr-server",
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let peak = client(
        vireo,
        client_ns,
        server_ip,
        seconds,
        ("--inflight", INFLIGHT.to_string()),
        stop,
    )
    .context("peak (closed loop)")?;
    let rate = (peak.rate * LOAD).max(1.0);
    let paced = client(
        vireo,
        client_ns,
        server_ip,
        seconds,
        ("--rate", format!("{rate:.0}")),
        stop,
    )
    .context("paced (open loop)")?;
    drop(server);
    Ok(rr_case(name, path, mtu, &peak, &paced))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_line_to_case() {
        let out = r#"{"listening": "x"}
{"mode":"open","seconds":3.0,"sent":60000,"received":59990,"lost":10,"rate":19996.7,"p50_us":21.344,"p90_us":30.1,"p99_us":88.06,"max_us":900.0}
"#;
        let paced = parse_rr_line(out).unwrap();
        assert_eq!(paced.received, 59990);
        let peak = RrLine {
            sent: 1,
            received: 1,
            rate: 40000.0,
            p50_us: None,
            p99_us: None,
        };
        let c = rr_case("kernel-rr", "same-node", 1450, &peak, &paced);
        assert_eq!(c.p50_us, Some(21.3));
        assert_eq!(c.p99_us, Some(88.1));
        assert_eq!(c.mpps, Some(0.019997));
        assert_eq!(c.gbps, None);
        assert!(c.note.unwrap().contains("peak 40000 req/s"));
    }

    #[test]
    fn no_replies_or_no_line_is_an_error() {
        assert!(parse_rr_line("").is_err());
        assert!(parse_rr_line("not json").is_err());
        let e = parse_rr_line(r#"{"sent":5,"received":0,"rate":0.0,"p50_us":null,"p99_us":null}"#)
            .unwrap_err();
        assert!(e.to_string().contains("no replies"), "{e}");
    }
}
