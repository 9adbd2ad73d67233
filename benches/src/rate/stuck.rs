//! `vireo bench --stuck-clients`: the agent's pod-to-pod rate (`vireo-pod`, 64-byte UDP) with
//! and without [`STUCK`] stuck API clients, interleaved in one run.
//!
//! A stuck client subscribes and never reads: half send `vireo monitor` requests (drops and
//! policy verdicts), half `vireo observe --follow` requests (from cursor 0: the whole flow
//! ring each time), as fast as the agent takes them, until the agent's answers fill the
//! socket and the agent's connection thread blocks writing to it (until its write timeout).
//! They connect before the warm-up, so the window sees them stuck, with event collection on.
//! The agent must answer its API all along: a `status` call after each run checks it.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use vireo_dataplane::fixtures::POD_B;

use super::agent_run::{pod_setup, run_agent, run_with};
use super::measure::Rate;
use super::runs::{GenKind, Generator};
use super::Ctx;
use crate::case::median;

/// Stuck clients in the second case.
pub const STUCK: usize = 10;

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct StuckReport {
    /// Rounds (each: one run without, one with the clients).
    pub rounds: u32,
    /// Median Mpps delivered without clients.
    pub baseline_mpps: Option<f64>,
    /// Median Mpps delivered with [`STUCK`] stuck clients.
    pub stuck_mpps: Option<f64>,
    /// `stuck_mpps / baseline_mpps`.
    pub ratio: Option<f64>,
    /// Every run's Mpps: (without, with).
    pub runs: Vec<(f64, f64)>,
    /// Runs that waited for their core (other work on it): the figures are noisier.
    pub contended_runs: usize,
    /// Requests the stuck clients sent before the agent stopped taking them (all rounds).
    pub requests_sent: u64,
}

/// Connects `n` stuck clients to `sock`; returns them (they stay stuck while kept) and the
/// requests they sent.
fn stuck_clients(sock: &Path, n: usize) -> Result<(Vec<UnixStream>, u64)> {
    let monitor = b"{\"cmd\":\"monitor\",\"max\":4096,\"verdicts\":true}\n".as_slice();
    let observe = b"{\"cmd\":\"observe\",\"max\":65536,\"after\":0}\n".as_slice();
    let mut out = Vec::new();
    let mut sent = 0u64;
    for i in 0..n {
        let mut s = UnixStream::connect(sock)
            .with_context(|| format!("stuck client {i}: connecting to {}", sock.display()))?;
        s.set_nonblocking(true)?;
        let req = if i % 2 == 0 { monitor } else { observe };
        // Until the socket is full (the agent stopped reading: it is blocked writing answers
        // nobody reads), at most 20000 requests.
        for _ in 0..20_000 {
            match s.write(req) {
                Ok(k) if k == req.len() => sent += 1,
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("stuck client: writing"),
            }
        }
        out.push(s);
    }
    Ok((out, sent))
}

/// Runs `rounds` interleaved pairs (without, with the stuck clients).
pub(super) fn run(ctx: &Ctx, rounds: u32, progress: &dyn Fn(&str)) -> Result<StuckReport> {
    let mut runs = Vec::new();
    let mut contended = 0;
    let mut sent = 0;
    for r in 1..=rounds {
        progress(&format!("round {r}/{rounds}: vireo-pod without clients"));
        let base = run_agent(ctx, &GenKind::AfXdp)?;
        progress(&format!(
            "round {r}/{rounds}: vireo-pod with {STUCK} stuck clients"
        ));
        let mut clients = Vec::new();
        let with: Rate = run_with(ctx, &pod_setup(), |sock, limit| {
            let (c, n) = stuck_clients(sock, STUCK)?;
            clients = c;
            sent += n;
            Generator::start(ctx, &GenKind::AfXdp, POD_B.0, limit)
        })?;
        drop(clients);
        contended += usize::from(base.contended()) + usize::from(with.contended());
        runs.push((base.delivered / 1e6, with.delivered / 1e6));
    }
    let baseline = median(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
    let stuck = median(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    Ok(StuckReport {
        rounds,
        baseline_mpps: baseline.map(round3),
        stuck_mpps: stuck.map(round3),
        ratio: match (baseline, stuck) {
            (Some(b), Some(s)) if b > 0.0 => Some(round3(s / b)),
            _ => None,
        },
        runs: runs.iter().map(|(a, b)| (round3(*a), round3(*b))).collect(),
        contended_runs: contended,
        requests_sent: sent,
    })
}

/// The report as markdown.
pub fn markdown(r: &StuckReport) -> String {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
    let mut s = String::new();
    s.push_str("| case | Mpps (median) |\n|---|---|\n");
    s.push_str(&format!(
        "| vireo-pod, no API clients | {} |\n",
        f(r.baseline_mpps)
    ));
    s.push_str(&format!(
        "| vireo-pod, {STUCK} stuck monitor/observe clients | {} |\n",
        f(r.stuck_mpps)
    ));
    s.push_str(&format!(
        "\nratio (with / without): {} over {} rounds; runs (without, with): {}\n",
        f(r.ratio),
        r.rounds,
        r.runs
            .iter()
            .map(|(a, b)| format!("({a:.3}, {b:.3})"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    if r.contended_runs > 0 {
        s.push_str(&format!(
            "{} run(s) waited for their core (other work on the machine): figures are noisier\n",
            r.contended_runs
        ));
    }
    s
}
