//! `vireo bench`: the agent's pod-to-pod packet rate against the AF_XDP I/O ceiling, measured in
//! one run on a topology of its own.
//!
//! Topology (network namespaces named `vb<pid % 10000>-gen|node|sink`; nothing is done in the
//! root namespace):
//!
//! ```text
//!  gen ns                node ns                      sink ns
//!  eth0 (pod A) <-veth-> hA   [forwarder]   hB <-veth-> eth0 (pod B)
//!  AF_XDP TX generator         CPU 1                    XDP: count and drop
//!  CPU 0
//! ```
//!
//! - The generator sends 64-byte UDP frames (60 bytes + FCS) from pod A to pod B, addressed to
//!   hA's MAC (the gateway MAC), from an AF_XDP socket pinned to CPU 0.
//! - The sink counts arrivals at pod B's eth0 with Vireo's own steering program attached with
//!   role Pod and no socket: it drops every frame and counts it as `no_socket`.
//! - Run 1, the baseline: [`Xconnect`](crate::xconnect::Xconnect) (two sockets in one UMEM, frames sent on unchanged, no
//!   parsing), pinned to CPU 1, with the steering program on hA and hB.
//! - Run 2: `vireo agent` in the node namespace with one worker on CPU 1 and both pods
//!   configured.
//!
//! Each run warms up for 1 s, then the sink's and the generator's counters are sampled N s
//! apart. `--rounds R` interleaves R (xconnect, agent) pairs and reports medians.
//!
//! Other work on the two cores lowers every figure, so each run also records how long the
//! generator and the forwarder thread waited on a run queue (`/proc/…/schedstat`); a run that
//! waited 2% of its window or more is marked, and rounds with such a run are left out of the
//! result when clean rounds exist. Besides rates, each run reports the forwarder thread's CPU
//! time per delivered frame and its average RX batch (a forwarder that keeps up sees small
//! batches; one at its limit sees full ones of 64).
//!
//! Everything made is removed on exit: by guards on return and error, by a panic hook (release
//! builds abort on panic, which runs no destructors), and on SIGINT/SIGTERM, which make every
//! wait return an error.
//!
//! Layout: [`run`] here drives the rounds; `topology` makes and removes the namespaces,
//! `participants` holds the in-process threads and the sink, `runs` the baseline (generator and
//! [`crate::xconnect`]), `agent_run` the agent run, `measure` the sampling and the round
//! selection, `report` the table and the details.

mod agent_run;
mod cases;
mod cluster;
mod kernel;
mod measure;
mod participants;
mod runs;
pub mod stuck;
mod summary;
mod testpmd;
mod topology;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use vireo_control::config::XdpModeConfig;
use vireo_xdp::ModePreference;

use crate::case::{median, Case};
use measure::{busy_share, cpu_times, Rate};
use participants::Sink;
use topology::{install_panic_cleanup, Topology};

/// Core of the generator.
const GEN_CORE: usize = 0;
/// Core of the forwarder (xconnect, or the agent's one worker).
const FWD_CORE: usize = 1;
/// Warm-up before the counters are sampled.
const WARM_UP: Duration = Duration::from_secs(1);
/// UDP payload that makes a 60-byte frame (64 bytes on the wire with the FCS).
const PAYLOAD: [u8; 18] = [0x5a; 18];
/// AF_XDP sizes, the same for the xconnect and the agent.
const FRAMES: u32 = 8192;
const RING: u32 = 1024;
/// Idle policy of both forwarders: sleep in `poll()` when a loop finds nothing.
const BUSY_POLL: bool = false;
/// Host-side interface names in the node namespace: the names the agent gives the host veths
/// of pods `default/bench-a` and `default/bench-b` (the cluster cases attach them from
/// manifests; a test checks them).
const HOST_A: &str = "lxcfdaefadd";
const HOST_B: &str = "lxcfaaef624";
/// VXLAN port given to the steering program (unused: every interface here is a pod).
const VXLAN_PORT: u16 = 8472;

/// Options of `vireo bench`.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Measurement window per run (default 5 s, 2 s with `--quick`).
    pub seconds: Option<u64>,
    /// Print one JSON object instead of markdown tables.
    pub json: bool,
    /// XDP attach mode for every program of the bench (forwarder side and sink).
    pub xdp_mode: XdpModeConfig,
    /// Rounds over every case, interleaved; medians are reported (default 3).
    pub rounds: Option<u32>,
    /// 64- and 1500-byte frames, single-flow, 2 s windows: the whole run in under 5 minutes.
    pub quick: bool,
    /// Leave out the TCP and request/response cases.
    pub no_tcp: bool,
    /// Only the comparison with and without stuck API clients ([`stuck`]).
    pub stuck_clients: bool,
}

impl Opts {
    /// The checked (window seconds, rounds).
    pub fn resolved(&self) -> Result<(u64, u32)> {
        let seconds = self.seconds.unwrap_or(if self.quick { 2 } else { 5 });
        let rounds = self.rounds.unwrap_or(3);
        if seconds == 0 || seconds > 3600 {
            bail!("--seconds must be 1..=3600");
        }
        if !(3..=100).contains(&rounds) {
            bail!("--rounds must be 3..=100 (the figures are medians of at least 3 runs)");
        }
        if self.quick && seconds > 2 {
            bail!("--quick runs 2 s windows (the whole run in under 5 minutes); leave out --seconds or --quick");
        }
        Ok((seconds, rounds))
    }
}

/// What every case run needs.
pub(super) struct Ctx<'a> {
    topo: &'a Topology,
    sink: &'a Sink,
    window: Duration,
    xdp_mode: XdpModeConfig,
    stop: &'a AtomicBool,
    prefix: String,
    huge: Option<PathBuf>,
}

/// Parses `--xdp-mode`.
pub fn parse_xdp_mode(s: &str) -> Result<XdpModeConfig, String> {
    match s {
        "auto" => Ok(XdpModeConfig::Auto),
        "native" => Ok(XdpModeConfig::Native),
        "generic" => Ok(XdpModeConfig::Generic),
        _ => Err(format!("{s:?}: expected auto, native or generic")),
    }
}

fn mode_pref(m: XdpModeConfig) -> ModePreference {
    match m {
        XdpModeConfig::Auto => ModePreference::Auto,
        XdpModeConfig::Native => ModePreference::Native,
        XdpModeConfig::Generic => ModePreference::Generic,
    }
}

/// Runs `vireo bench`: builds the topology, runs every case `rounds` times (interleaved),
/// then the TCP cases, prints the report and removes everything it made.
pub fn run(opts: &Opts) -> Result<()> {
    let (seconds, rounds) = opts.resolved()?;
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if ncpu <= FWD_CORE {
        bail!("vireo bench pins the generator to CPU {GEN_CORE} and the forwarder to CPU {FWD_CORE}; this machine has {ncpu} CPU(s)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    install_panic_cleanup();
    let machine = summary::Machine::this();
    let date = summary::now_rfc3339();

    let c0 = cpu_times([GEN_CORE, FWD_CORE])?;
    std::thread::sleep(Duration::from_millis(500));
    let background = busy_share(c0, cpu_times([GEN_CORE, FWD_CORE])?);
    if background.iter().any(|b| *b > 0.10) {
        eprintln!(
            "vireo bench: warning: CPU {GEN_CORE} and {FWD_CORE} were {:.0}% and {:.0}% busy before the bench started; the figures will be low and noisy",
            100.0 * background[0],
            100.0 * background[1]
        );
    }

    let prefix = format!("vb{}-", std::process::id() % 10000);
    let topo = Topology::create(&prefix, &stop)?;
    let sink = Sink::attach(&topo.sink, mode_pref(opts.xdp_mode))?;
    let have_pmd = testpmd::available();
    let huge = if have_pmd {
        Some(topology::reserve_hugepages(&topo.dir)?)
    } else {
        eprintln!("vireo bench: dpdk-testpmd not found (Debian package dpdk-dev): only the AF_XDP generator's cases run");
        None
    };
    for c in kernel::kernel_path_setup() {
        topology::run_in(&topo.node, &c)?;
    }
    let ctx = Ctx {
        topo: &topo,
        sink: &sink,
        window: Duration::from_secs(seconds),
        xdp_mode: opts.xdp_mode,
        stop: &stop,
        prefix: prefix.clone(),
        huge,
    };
    if opts.stuck_clients {
        let report = stuck::run(&ctx, rounds, &|m| progress(opts, m))?;
        drop(ctx);
        drop(sink);
        drop(topo);
        if opts.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", stuck::markdown(&report));
        }
        return Ok(());
    }
    let (frames, multi): (&[u32], &[bool]) = if opts.quick {
        (&[64, 1500], &[false])
    } else {
        (&[64, 512, 1500], &[false, true])
    };
    let plan = cases::plan(frames, multi, have_pmd, !opts.quick);
    let mut results: Vec<(Vec<Rate>, Option<String>)> = vec![(Vec::new(), None); plan.len()];
    for r in 1..=rounds {
        for (p, res) in plan.iter().zip(results.iter_mut()) {
            if res.1.is_some() {
                continue;
            }
            progress(
                opts,
                &format!(
                    "round {r}/{rounds}: {} {}B x{} flows, {seconds}s",
                    p.name(),
                    p.frame(),
                    p.flows()
                ),
            );
            match cases::run(&ctx, p) {
                Ok(rate) => {
                    tracing::debug!(case = %p.name(), offered = rate.offered, avg_batch = rate.avg_batch, "run");
                    res.0.push(rate)
                }
                Err(e) if stop.load(std::sync::atomic::Ordering::Relaxed) => return Err(e),
                Err(e) => {
                    eprintln!("vireo bench: {}: {e:#}", p.name());
                    res.1 = Some(format!("failed: {e:#}"));
                }
            }
        }
    }
    drop(ctx);
    drop(sink);
    drop(topo);

    let mut rows: Vec<Case> = plan
        .iter()
        .zip(&results)
        .map(|(p, (rates, err))| row(p, rates, err.as_deref()))
        .collect();
    if !opts.no_tcp {
        progress(opts, "TCP and request/response cases");
        rows.extend(crate::tcp::run_cases(opts.quick, &stop)?);
    }
    let report = summary::Report {
        machine,
        date,
        ratios: summary::ratios(&rows),
        cases: rows,
    };
    if opts.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", summary::markdown(&report));
    }
    Ok(())
}

/// A case's row: medians over its uncontended runs (every run when all were contended).
fn row(p: &cases::Planned, rates: &[Rate], err: Option<&str>) -> Case {
    let (name, frame, flows, path) = (p.name(), p.frame(), p.flows(), p.path());
    if let Some(e) = err {
        if rates.is_empty() {
            return Case::skipped(&name, frame, flows, path, e);
        }
    }
    let clean: Vec<&Rate> = rates.iter().filter(|r| !r.contended()).collect();
    let (used, note) = if clean.is_empty() {
        (
            rates.iter().collect::<Vec<_>>(),
            Some("every run waited for its core (other work): figures are low".to_owned()),
        )
    } else {
        (clean, None)
    };
    let mpps = median(&used.iter().map(|r| r.delivered / 1e6).collect::<Vec<_>>());
    let cpu = median(&used.iter().map(|r| r.fwd_ns).collect::<Vec<_>>());
    let mut c = Case::new(&name, frame, flows, path);
    c.mpps = mpps.map(summary::round3);
    c.gbps = mpps.map(|m| summary::round3(m * f64::from(frame) * 8.0 / 1e3));
    c.cpu_ns_per_pkt = cpu.map(f64::round);
    c.runs = used.len() as u32;
    c.note = match (note, err) {
        (n, Some(e)) => Some(format!("{}{e}", n.map(|n| n + "; ").unwrap_or_default())),
        (n, None) => n,
    };
    c
}

fn progress(opts: &Opts, msg: &str) {
    if !opts.json {
        eprintln!("vireo bench: {msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_mode_parses_the_three_names_only() {
        assert!(matches!(parse_xdp_mode("auto"), Ok(XdpModeConfig::Auto)));
        assert!(matches!(
            parse_xdp_mode("native"),
            Ok(XdpModeConfig::Native)
        ));
        assert!(matches!(
            parse_xdp_mode("generic"),
            Ok(XdpModeConfig::Generic)
        ));
        assert!(parse_xdp_mode("drv").is_err());
    }

    fn opts(seconds: Option<u64>, rounds: Option<u32>, quick: bool) -> Opts {
        Opts {
            seconds,
            json: true,
            xdp_mode: XdpModeConfig::Auto,
            rounds,
            quick,
            no_tcp: false,
            stuck_clients: false,
        }
    }

    #[test]
    fn arguments_are_checked() {
        assert_eq!(opts(None, None, false).resolved().unwrap(), (5, 3));
        assert_eq!(opts(None, None, true).resolved().unwrap(), (2, 3));
        assert_eq!(opts(Some(1), Some(5), true).resolved().unwrap(), (1, 5));
        assert!(opts(Some(0), None, false).resolved().is_err());
        assert!(opts(Some(3601), None, false).resolved().is_err());
        assert!(opts(None, Some(2), false).resolved().is_err());
        assert!(opts(None, Some(101), false).resolved().is_err());
        assert!(opts(Some(5), None, true).resolved().is_err());
    }
}
