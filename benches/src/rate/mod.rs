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
mod measure;
mod participants;
mod report;
mod runs;
mod topology;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use vireo_control::config::XdpModeConfig;
use vireo_xdp::ModePreference;

use agent_run::run_agent;
use measure::{busy_share, cpu_times, Rate, Selection};
use participants::Sink;
use report::{agent_detail, round3, table, xconnect_detail};
use runs::run_xconnect;
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
/// Host-side interface names in the node namespace.
const HOST_A: &str = "hA";
const HOST_B: &str = "hB";
/// VXLAN port given to the steering program (unused: every interface here is a pod).
const VXLAN_PORT: u16 = 8472;

/// Options of `vireo bench`.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Measurement window per run.
    pub seconds: u64,
    /// Print one JSON object instead of a table.
    pub json: bool,
    /// XDP attach mode for every program of the bench (forwarder side and sink).
    pub xdp_mode: XdpModeConfig,
    /// Rounds of (xconnect, agent) runs, interleaved; medians are reported.
    pub rounds: u32,
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

/// Runs `vireo bench`: builds the topology, runs `opts.rounds` (xconnect, agent) pairs, prints
/// the table (or the JSON line) and removes everything it made.
pub fn run(opts: &Opts) -> Result<()> {
    if opts.seconds == 0 || opts.seconds > 3600 {
        bail!("--seconds must be 1..=3600");
    }
    if opts.rounds == 0 || opts.rounds > 100 {
        bail!("--rounds must be 1..=100");
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if ncpu <= FWD_CORE {
        bail!("vireo bench pins the generator to CPU {GEN_CORE} and the forwarder to CPU {FWD_CORE}; this machine has {ncpu} CPU(s)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    install_panic_cleanup();

    // Other work on the two cores skews every figure; say so up front.
    let c0 = cpu_times([GEN_CORE, FWD_CORE])?;
    std::thread::sleep(Duration::from_millis(500));
    let background = busy_share(c0, cpu_times([GEN_CORE, FWD_CORE])?);
    let busy_before = background.iter().any(|b| *b > 0.10);
    if busy_before {
        eprintln!(
            "vireo bench: warning: CPU {GEN_CORE} and {FWD_CORE} were {:.0}% and {:.0}% busy before the bench started; the figures will be low and noisy",
            100.0 * background[0],
            100.0 * background[1]
        );
    }

    let prefix = format!("vb{}-", std::process::id() % 10000);
    let topo = Topology::create(&prefix, &stop)?;
    let sink = Sink::attach(&topo.sink, mode_pref(opts.xdp_mode))?;
    let window = Duration::from_secs(opts.seconds);

    let mut base = Vec::new();
    let mut agent = Vec::new();
    let mut xdetail = String::new();
    let mut adetail = String::new();
    for r in 1..=opts.rounds {
        progress(
            opts,
            &format!(
                "round {r}/{}: xconnect (I/O ceiling), {}s",
                opts.rounds, opts.seconds
            ),
        );
        let (rate, (x, xdp)) = run_xconnect(&topo, &sink, window, opts.xdp_mode, &stop)?;
        base.push(rate);
        xdetail = xconnect_detail(&x, &xdp);
        progress(
            opts,
            &format!("round {r}/{}: vireo agent, {}s", opts.rounds, opts.seconds),
        );
        let (rate, status) = run_agent(&topo, &sink, window, opts.xdp_mode, &stop)?;
        agent.push(rate);
        adetail = agent_detail(&status);
    }

    let sel = Selection::new(&base, &agent);
    let (b, a) = sel.medians(&base, &agent);
    let ratio = if b > 0.0 { a / b } else { 0.0 };
    if opts.json {
        let gens: Vec<f64> = base
            .iter()
            .zip(&agent)
            .flat_map(|(x, y)| [round3(x.offered / 1e6), round3(y.offered / 1e6)])
            .collect();
        /// The `--json` line, fields in this order.
        #[derive(serde::Serialize)]
        struct Out {
            seconds: u64,
            baseline_mpps: f64,
            agent_mpps: f64,
            ratio: f64,
            generator_mpps: Vec<f64>,
        }
        let out = Out {
            seconds: opts.seconds,
            baseline_mpps: round3(b / 1e6),
            agent_mpps: round3(a / 1e6),
            ratio: round3(ratio),
            generator_mpps: gens,
        };
        println!("{}", serde_json::to_string(&out)?);
        if sel.all && base.iter().chain(&agent).any(Rate::contended) {
            eprintln!("vireo bench: warning: other tasks kept the generator or the forwarder off its core in every round; the figures are low");
        }
    } else {
        let mut o = table(opts, &base, &agent, &sel, ratio);
        o.push_str(&xdetail);
        o.push_str(&adetail);
        if busy_before {
            o.push_str(
                "\nwarning: the cores were busy with other work before the bench started.\n",
            );
        }
        print!("{o}");
    }
    drop(sink);
    drop(topo);
    Ok(())
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
}
