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
//! - Run 1, the baseline: [`Xconnect`] (two sockets in one UMEM, frames sent on unchanged, no
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

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use vireo_control::config::{format_mac, Config, XdpModeConfig};
use vireo_dataplane::fixtures::{udp_from_a, GATEWAY, POD_A, POD_B};
use vireo_dataplane::io::sys;
use vireo_dataplane::io::xconnect::{
    TxGen, TxGenSpec, TxGenStats, Xconnect, XconnectSpec, XconnectStats,
};
use vireo_dataplane::io::{RingSizes, UmemSpec};
use vireo_xdp::{IfCounters, ModePreference, Steering};

use crate::api::{self, Request};

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

/// One run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    /// Frames per second arriving at the sink.
    delivered: f64,
    /// Frames per second the generator had completed.
    offered: f64,
    /// Busy share (0..1) of the generator's and the forwarder's CPU over the window.
    busy: [f64; 2],
    /// Frames per non-empty RX batch of the forwarder (64 = saturated), over the whole run.
    avg_batch: f64,
    /// Share of the window the generator and the forwarder thread spent runnable but waiting
    /// for their core (other tasks on it).
    wait: [f64; 2],
    /// CPU time of the forwarder thread per delivered frame, in ns (user, system calls and
    /// the softirq work they trigger, as the scheduler charges it to the thread).
    fwd_ns: f64,
}

/// A thread, for its scheduler statistics.
#[derive(Debug, Clone, Copy)]
struct Task {
    pid: u32,
    tid: u32,
}

/// The calling thread's id (from /proc/thread-self).
fn current_tid() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// Nanoseconds a thread has run and has waited on a run queue.
fn schedstat(t: Task) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{}/task/{}/schedstat", t.pid, t.tid)).ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// The thread of process `pid` named `name`.
fn find_thread(pid: u32, name: &str) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))?
        .file_name()
        .to_str()?
        .parse()
        .ok()
}

fn run_delta(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<u64> {
    Some(b?.0.saturating_sub(a?.0))
}

fn wait_share(a: [Option<(u64, u64)>; 2], b: [Option<(u64, u64)>; 2], dt: Duration) -> [f64; 2] {
    let f = |k: usize| match (a[k], b[k]) {
        (Some((_, w0)), Some((_, w1))) => {
            w1.saturating_sub(w0) as f64 / dt.as_nanos().max(1) as f64
        }
        _ => f64::NAN,
    };
    [f(0), f(1)]
}

/// Per-CPU (busy, total) jiffies from /proc/stat for `cpus`.
fn cpu_times(cpus: [usize; 2]) -> Result<[(u64, u64); 2]> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let mut out = [(0, 0); 2];
    for (k, cpu) in cpus.iter().enumerate() {
        let tag = format!("cpu{cpu} ");
        let line = stat
            .lines()
            .find(|l| l.starts_with(&tag))
            .ok_or_else(|| anyhow!("/proc/stat has no cpu{cpu}"))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        out[k] = (total - idle, total);
    }
    Ok(out)
}

fn busy_share(a: [(u64, u64); 2], b: [(u64, u64); 2]) -> [f64; 2] {
    let f = |k: usize| {
        let (busy, total) = (b[k].0.saturating_sub(a[k].0), b[k].1.saturating_sub(a[k].1));
        if total == 0 {
            0.0
        } else {
            busy as f64 / total as f64
        }
    };
    [f(0), f(1)]
}

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

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn median(it: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = it.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Rate {
    /// Whether other tasks kept the generator or the forwarder off its core.
    fn contended(&self) -> bool {
        self.wait.iter().any(|w| *w >= CONTENDED)
    }
}

/// Which rounds the result is computed from: the rounds where neither run was contended, or
/// every round when all were.
struct Selection {
    rounds: Vec<usize>,
    all: bool,
}

impl Selection {
    fn new(base: &[Rate], agent: &[Rate]) -> Self {
        let clean: Vec<usize> = (0..base.len())
            .filter(|&i| !base[i].contended() && !agent[i].contended())
            .collect();
        if clean.is_empty() {
            Selection {
                rounds: (0..base.len()).collect(),
                all: true,
            }
        } else {
            Selection {
                rounds: clean,
                all: false,
            }
        }
    }

    /// Median delivered rates (xconnect, agent) over the selected rounds.
    fn medians(&self, base: &[Rate], agent: &[Rate]) -> (f64, f64) {
        (
            median(self.rounds.iter().map(|&i| base[i].delivered)),
            median(self.rounds.iter().map(|&i| agent[i].delivered)),
        )
    }
}

fn table(opts: &Opts, base: &[Rate], agent: &[Rate], sel: &Selection, ratio: f64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n64-byte UDP, pod A -> pod B on one node; generator on CPU {GEN_CORE}, forwarder on CPU {FWD_CORE}; {}s per run after {}s warm-up\n",
        opts.seconds,
        WARM_UP.as_secs()
    );
    let _ = writeln!(
        o,
        "{:<18} {:>14} {:>15} {:>10} {:>10} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "RUN",
        "GENERATOR Mpps",
        "DELIVERED Mpps",
        "DELIVERED",
        "AVG BATCH",
        "FWD ns/pkt",
        "CPU0 BUSY",
        "CPU1 BUSY",
        "GEN WAIT",
        "FWD WAIT"
    );
    let line = |o: &mut String, name: &str, r: &Rate| {
        let pct = if r.offered > 0.0 {
            100.0 * r.delivered / r.offered
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "{:<18} {:>14.3} {:>15.3} {:>9.1}% {:>10.1} {:>12.0} {:>9.1}% {:>9.1}% {:>8.1}% {:>8.1}%",
            name,
            r.offered / 1e6,
            r.delivered / 1e6,
            pct,
            r.avg_batch,
            r.fwd_ns,
            100.0 * r.busy[0],
            100.0 * r.busy[1],
            100.0 * r.wait[0],
            100.0 * r.wait[1]
        );
    };
    for (i, (x, a)) in base.iter().zip(agent).enumerate() {
        let tag = if base.len() > 1 {
            format!(" #{}", i + 1)
        } else {
            String::new()
        };
        let mark = |r: &Rate| if r.contended() { " *" } else { "" };
        line(&mut o, &format!("xconnect{tag}{}", mark(x)), x);
        line(&mut o, &format!("vireo agent{tag}{}", mark(a)), a);
    }
    let (b, a) = sel.medians(base, agent);
    let what = match (base.len(), sel.rounds.len()) {
        (1, _) => String::new(),
        (n, k) if k == n => "median ".to_owned(),
        (n, k) => format!("median of the {k} uncontended of {n} rounds, "),
    };
    let _ = writeln!(
        o,
        "\n{what}delivered: xconnect (I/O ceiling) {:.3} Mpps, vireo agent {:.3} Mpps; agent / xconnect = {ratio:.3}",
        b / 1e6,
        a / 1e6
    );
    // A forwarder that keeps up sees small batches; one at its limit sees full ones.
    let kept_up = |rs: &[Rate]| {
        let sel_rates = || sel.rounds.iter().map(|&i| &rs[i]);
        median(sel_rates().map(|r| r.delivered / r.offered.max(1.0))) >= 0.97
            && median(sel_rates().map(|r| r.avg_batch)) < BATCH_FULL
    };
    if sel.all && base.iter().chain(agent).any(Rate::contended) {
        let _ = writeln!(
            o,
            "warning: in every round other tasks kept the generator or the forwarder waiting for its core for {:.0}% of a window or more (GEN/FWD WAIT, runs marked *): these figures are low; re-run on an idle machine",
            100.0 * CONTENDED
        );
    } else if base.iter().chain(agent).any(Rate::contended) {
        let _ = writeln!(
            o,
            "rounds with a run marked * (other tasks on the cores for {:.0}% of a window or more) are left out",
            100.0 * CONTENDED
        );
    }
    if kept_up(base) && kept_up(agent) {
        let _ = writeln!(
            o,
            "note: both forwarders kept up with the generator (small RX batches, >=97% delivered): the generator's core, which also carries hA's receive path, is the limit, so the ratio compares rates at the offered load rather than forwarder capacities; FWD ns/pkt compares their cost per frame"
        );
    }
    o
}

/// Run-queue wait share above which a run counts as disturbed by other tasks.
const CONTENDED: f64 = 0.02;

/// Average RX batch above which a forwarder counts as saturated.
const BATCH_FULL: f64 = 48.0;

fn xconnect_detail(x: &XconnectStats, xdp: &[IfCounters]) -> String {
    let mut o = format!(
        "\nxconnect (last run): rx {} tx {} tx_ring_full {} idle loops {:.1}%\n",
        x.rx[0] + x.rx[1],
        x.tx[0] + x.tx[1],
        x.tx_full[0] + x.tx_full[1],
        100.0 * x.idle_loops as f64 / x.loops.max(1) as f64
    );
    for (name, c) in [HOST_A, HOST_B].iter().zip(xdp) {
        o.push_str(&format!(
            "  XDP on {name}: steered {} no_socket {}\n",
            c.steered, c.no_socket
        ));
    }
    o
}

fn agent_detail(status: &Value) -> String {
    let c = &status["counters"];
    let drops: Vec<String> = c["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    let mut o = format!(
        "agent (last run): rx {} tx {} batches {} drops [{}]\n",
        c["rx"],
        c["tx"],
        c["batches"],
        drops.join(" ")
    );
    for i in status["interfaces"].as_array().into_iter().flatten() {
        o.push_str(&format!(
            "  XDP on {}: steered {} no_socket {}\n",
            i["name"].as_str().unwrap_or("?"),
            i["xdp"]["steered"],
            i["xdp"]["no_socket"]
        ));
    }
    o
}

// ---------------------------------------------------------------------------------------------
// Runs

fn gen_spec(ifname: &str) -> TxGenSpec {
    TxGenSpec {
        ifname: ifname.into(),
        queue: 0,
        umem: UmemSpec {
            frames: 4096,
            frame_size: 2048,
            fill_size: 64,
            completion_size: 4096,
            zero_copy: false,
        },
        tx_ring: 2048,
    }
}

/// Samples the sink and the generator over `window` after the warm-up; fails early if `alive`
/// reports a dead participant or a signal arrives.
fn measure(
    sink: &Sink,
    generated: &AtomicU64,
    tasks: [Task; 2],
    window: Duration,
    stop: &AtomicBool,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<Rate> {
    wait(WARM_UP, stop, &mut alive)?;
    let w0 = tasks.map(schedstat);
    let c0 = cpu_times([GEN_CORE, FWD_CORE])?;
    let (t0, s0, g0) = (
        Instant::now(),
        sink.count()?,
        generated.load(Ordering::Relaxed),
    );
    wait(window, stop, &mut alive)?;
    let (s1, g1) = (sink.count()?, generated.load(Ordering::Relaxed));
    let c1 = cpu_times([GEN_CORE, FWD_CORE])?;
    let w1 = tasks.map(schedstat);
    let dt = t0.elapsed();
    let secs = dt.as_secs_f64();
    Ok(Rate {
        delivered: s1.saturating_sub(s0) as f64 / secs,
        offered: g1.saturating_sub(g0) as f64 / secs,
        busy: busy_share(c0, c1),
        avg_batch: 0.0,
        wait: wait_share(w0, w1, dt),
        fwd_ns: run_delta(w0[1], w1[1]).map_or(f64::NAN, |ns| {
            ns as f64 / s1.saturating_sub(s0).max(1) as f64
        }),
    })
}

/// Sleeps `d` in short steps, checking for signals and dead participants.
fn wait(d: Duration, stop: &AtomicBool, alive: &mut impl FnMut() -> Result<()>) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        alive()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn start_generator(topo: &Topology, limit: Duration) -> Result<(Bg<TxGenStats>, Arc<AtomicU64>)> {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let ns = topo.gen.clone();
    let frame = udp_from_a(POD_B.0, 64, &PAYLOAD);
    let bg = Bg::spawn("vireo-bench-gen", move |stop, ready| {
        enter_netns(&ns)?;
        let mut g = TxGen::new(&gen_spec("eth0"), &frame).context("generator socket")?;
        ready();
        Ok(g.run(stop, &[GEN_CORE], limit, &counter)?)
    })?;
    Ok((bg, sent))
}

fn run_xconnect(
    topo: &Topology,
    sink: &Sink,
    window: Duration,
    xdp_mode: XdpModeConfig,
    stop: &AtomicBool,
) -> Result<(Rate, (XconnectStats, Vec<IfCounters>))> {
    let limit = WARM_UP + window + Duration::from_secs(30);
    let ns = topo.node.clone();
    let pref = mode_pref(xdp_mode);
    let fwd = Bg::spawn("vireo-bench-xc", move |stop, ready| {
        enter_netns(&ns)?;
        let spec = XconnectSpec {
            a: HOST_A.into(),
            b: HOST_B.into(),
            queue: 0,
            umem: UmemSpec {
                frames: FRAMES,
                frame_size: 2048,
                fill_size: RING,
                completion_size: RING,
                zero_copy: false,
            },
            rings: RingSizes { rx: RING, tx: RING },
            busy_poll: BUSY_POLL,
        };
        let mut x = Xconnect::new(&spec).context("xconnect sockets")?;
        let steering = Steering::load()?;
        let mut links = Vec::new();
        for (slot, (name, fd)) in [HOST_A, HOST_B].into_iter().zip(x.fds()).enumerate() {
            let slot = slot as u32;
            steering.set_socket(slot, 0, fd)?;
            let ifindex = sys::ifindex(name)?;
            links.push(steering.attach(ifindex, slot, vireo_xdp::Role::Pod, VXLAN_PORT, pref)?);
        }
        ready();
        let st = x.run(stop, &[FWD_CORE], limit)?;
        let xdp: Vec<IfCounters> = (0..2)
            .map(|s| steering.counters(s).unwrap_or_default())
            .collect();
        for l in links {
            steering.detach(l);
        }
        Ok((st, xdp))
    })?;
    fwd.wait_ready(Duration::from_secs(15), stop)?;
    let (gen, sent) = start_generator(topo, limit)?;
    gen.wait_ready(Duration::from_secs(15), stop)?;
    let rate = measure(sink, &sent, [gen.task(), fwd.task()], window, stop, || {
        gen.check()?;
        fwd.check()
    })?;
    gen.finish().context("generator")?;
    let (st, xdp) = fwd.finish().context("xconnect")?;
    let busy_loops = st.loops.saturating_sub(st.idle_loops).max(1);
    let rate = Rate {
        avg_batch: (st.rx[0] + st.rx[1]) as f64 / busy_loops as f64,
        ..rate
    };
    Ok((rate, (st, xdp)))
}

/// The agent's configuration file, as JSON (which is YAML), checked with the agent's own
/// parser. Fields left out get the agent's defaults.
fn agent_config(dir: &Path, xdp_mode: XdpModeConfig) -> Result<(String, Config)> {
    let pod = |name: &str, ip: std::net::Ipv4Addr, mac: &[u8; 6]| {
        json!({
            "name": name,
            "role": "pod",
            "endpoint": {"ip": ip.to_string(), "mac": format_mac(mac)},
        })
    };
    let mode = match xdp_mode {
        XdpModeConfig::Auto => "auto",
        XdpModeConfig::Native => "native",
        XdpModeConfig::Generic => "generic",
    };
    let v = json!({
        "node": "vireo-bench",
        "gateways": [GATEWAY.to_string()],
        "api_socket": dir.join("vireo.sock"),
        "xdp_mode": mode,
        "busy_poll": BUSY_POLL,
        "af_xdp": {
            "zero_copy": false,
            "frame_size": 2048,
            "frames": FRAMES,
            "rx_ring": RING,
            "tx_ring": RING,
            "fill_ring": RING,
            "completion_ring": RING,
        },
        "workers": [{"cores": [FWD_CORE]}],
        "interfaces": [pod(HOST_A, POD_A.0, &POD_A.1), pod(HOST_B, POD_B.0, &POD_B.1)],
    });
    let text = serde_json::to_string_pretty(&v)?;
    let cfg = Config::parse(&text, Path::new("vireo bench's agent config"))?;
    Ok((text, cfg))
}

fn run_agent(
    topo: &Topology,
    sink: &Sink,
    window: Duration,
    xdp_mode: XdpModeConfig,
    stop: &AtomicBool,
) -> Result<(Rate, Value)> {
    let (text, cfg) = agent_config(&topo.dir, xdp_mode)?;
    let cfg_path = topo.dir.join("agent.yaml");
    std::fs::write(&cfg_path, text).with_context(|| format!("writing {}", cfg_path.display()))?;
    let log = topo.dir.join("agent.log");
    let mut agent = AgentProc::start(&topo.node, &cfg_path, &log)?;
    let status = agent
        .wait_ready(&cfg.api_socket, Duration::from_secs(20), stop)
        .context("the agent did not come up")?;
    tracing::debug!(%status, "agent up");
    let limit = WARM_UP + window + Duration::from_secs(30);
    let (gen, sent) = start_generator(topo, limit)?;
    gen.wait_ready(Duration::from_secs(15), stop)?;
    let pid = agent.pid();
    let worker = Task {
        pid,
        tid: find_thread(pid, "vireo-worker-0").unwrap_or(0),
    };
    let rate = measure(sink, &sent, [gen.task(), worker], window, stop, || {
        gen.check()?;
        agent.check()
    })?;
    gen.finish().context("generator")?;
    let status = api::call(&cfg.api_socket, &Request::Status).context("agent status")?;
    agent.stop()?;
    let c = &status["counters"];
    let rate = Rate {
        avg_batch: c["rx"].as_u64().unwrap_or(0) as f64
            / c["batches"].as_u64().unwrap_or(0).max(1) as f64,
        ..rate
    };
    Ok((rate, status))
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Participants

/// A background thread with a stop flag; dropping it stops and joins it.
struct Bg<T> {
    stop: Arc<AtomicBool>,
    tid: Arc<std::sync::atomic::AtomicU32>,
    ready: mpsc::Receiver<()>,
    handle: Option<JoinHandle<Result<T>>>,
    name: &'static str,
}

impl<T: Send + 'static> Bg<T> {
    fn spawn(
        name: &'static str,
        f: impl FnOnce(&AtomicBool, &dyn Fn()) -> Result<T> + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (tx, rx) = mpsc::sync_channel(1);
        let (s, t) = (stop.clone(), tid.clone());
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                t.store(current_tid().unwrap_or(0), Ordering::Relaxed);
                let ready = move || {
                    let _ = tx.try_send(());
                };
                f(&s, &ready)
            })
            .with_context(|| format!("spawning {name}"))?;
        Ok(Bg {
            stop,
            tid,
            ready: rx,
            handle: Some(handle),
            name,
        })
    }

    fn wait_ready(&self, timeout: Duration, stop: &AtomicBool) -> Result<()> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            match self.ready.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
                break;
            }
        }
        self.check()?;
        bail!("{} did not start within {timeout:?}", self.name)
    }

    /// The thread, for its scheduler statistics.
    fn task(&self) -> Task {
        Task {
            pid: std::process::id(),
            tid: self.tid.load(Ordering::Relaxed),
        }
    }

    /// An error if the thread has ended (it should run until stopped).
    fn check(&self) -> Result<()> {
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            bail!("{} stopped early", self.name);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<T> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self
            .handle
            .take()
            .ok_or_else(|| anyhow!("already joined"))?;
        h.join()
            .map_err(|_| anyhow!("{} panicked", self.name))?
            .with_context(|| self.name.to_string())
    }
}

impl<T> Drop for Bg<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            match h.join() {
                Ok(Err(e)) => tracing::warn!("{}: {e:#}", self.name),
                Err(_) => tracing::warn!("{} panicked", self.name),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// `vireo agent` in the node namespace.
struct AgentProc {
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProc {
    fn start(netns: &str, cfg: &Path, log: &Path) -> Result<Self> {
        let exe = std::env::current_exe().context("finding /proc/self/exe")?;
        let log_f = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(exe)
            .arg("agent")
            .arg("--config")
            .arg(cfg)
            .env("VIREO_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_f.try_clone()?)
            .stderr(log_f);
        // The agent gets SIGTERM and detaches if this thread dies.
        vireo_dataplane::io::sys::signal_child_on_parent_death(&mut cmd, libc::SIGTERM);
        let child = cmd
            .spawn()
            .context("starting `ip netns exec … vireo agent`")?;
        register_pid(child.id());
        Ok(AgentProc {
            child: Some(child),
            log: log.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn check(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!(
                    "the agent exited ({st}); its log ends:\n{}",
                    tail(&self.log)
                );
            }
        }
        Ok(())
    }

    fn wait_ready(&mut self, sock: &Path, timeout: Duration, stop: &AtomicBool) -> Result<Value> {
        let end = Instant::now() + timeout;
        let mut last = anyhow!("no answer");
        while Instant::now() < end {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            self.check()?;
            if sock.exists() {
                match api::call(sock, &Request::Status) {
                    Ok(v) => {
                        let ifs = v["interfaces"].as_array().map_or(0, |a| {
                            a.iter().filter(|i| i["xdp_mode"].is_string()).count()
                        });
                        if ifs == 2 {
                            return Ok(v);
                        }
                        last = anyhow!("{ifs} of 2 interfaces attached");
                    }
                    Err(e) => last = e.into(),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.context(format!("agent not ready within {timeout:?}")))
    }

    /// SIGTERM (the agent detaches), then SIGKILL after 5 s.
    fn stop(&mut self) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let pid = c.id();
        if c.try_wait()?.is_none() {
            signal(pid, libc::SIGTERM);
            let end = Instant::now() + Duration::from_secs(5);
            while c.try_wait()?.is_none() {
                if Instant::now() >= end {
                    tracing::warn!(pid, "agent ignored SIGTERM; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unregister_pid(pid);
        Ok(())
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("stopping the agent: {e:#}");
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    vireo_dataplane::io::sys::signal(pid, sig);
}

/// Counts frames arriving at pod B's eth0: the steering program, role Pod, no socket.
struct Sink {
    steering: Steering,
    _link: vireo_xdp::Attachment,
}

impl Sink {
    fn attach(netns: &str, pref: ModePreference) -> Result<Self> {
        let steering = Steering::load()?;
        let link = in_netns(netns, || {
            let ifindex = sys::ifindex("eth0")?;
            Ok(steering.attach(ifindex, 0, vireo_xdp::Role::Pod, VXLAN_PORT, pref)?)
        })
        .context("attaching the sink's counter to pod B's eth0")?;
        tracing::debug!(mode = link.mode().as_str(), "sink attached");
        Ok(Sink {
            steering,
            _link: link,
        })
    }

    fn count(&self) -> Result<u64> {
        let c = self.steering.counters(0)?;
        Ok(c.no_socket + c.steered + c.passed)
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces

/// Moves the calling thread into the named network namespace.
fn enter_netns(name: &str) -> Result<()> {
    let f = File::open(Path::new("/run/netns").join(name))
        .with_context(|| format!("opening network namespace {name}"))?;
    setns(&f).with_context(|| format!("entering network namespace {name}"))
}

fn setns(f: &File) -> Result<()> {
    Ok(vireo_dataplane::io::sys::setns_net(f)?)
}

/// Runs `f` with the calling thread in network namespace `name`, then moves it back.
fn in_netns<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    enter_netns(name)?;
    let r = f();
    if let Err(e) = setns(&home) {
        // Every later step would run in the wrong namespace.
        cleanup_owned();
        eprintln!("vireo bench: cannot return to the original network namespace: {e:#}");
        std::process::exit(1);
    }
    r
}

/// What this process made, for the guards and the panic hook.
struct Owned {
    netns: Vec<String>,
    pids: Vec<u32>,
    dir: Option<PathBuf>,
}

static OWNED: Mutex<Owned> = Mutex::new(Owned {
    netns: Vec::new(),
    pids: Vec::new(),
    dir: None,
});

fn owned() -> std::sync::MutexGuard<'static, Owned> {
    OWNED.lock().unwrap_or_else(|e| e.into_inner())
}

fn register_pid(pid: u32) {
    owned().pids.push(pid);
}

fn unregister_pid(pid: u32) {
    owned().pids.retain(|p| *p != pid);
}

/// Kills registered children and deletes registered namespaces and the work directory.
/// Idempotent.
fn cleanup_owned() {
    let (pids, netns, dir) = {
        let mut o = match OWNED.try_lock() {
            Ok(o) => o,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // Held by a thread that is cleaning up already.
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        (
            std::mem::take(&mut o.pids),
            std::mem::take(&mut o.netns),
            o.dir.take(),
        )
    };
    for pid in &pids {
        signal(*pid, libc::SIGTERM);
    }
    if !pids.is_empty() {
        std::thread::sleep(Duration::from_millis(500));
        for pid in &pids {
            signal(*pid, libc::SIGKILL);
        }
    }
    for ns in netns.iter().rev() {
        if let Err(e) = ip(&["netns", "del", ns]) {
            eprintln!("vireo bench: deleting namespace {ns}: {e:#}");
        }
    }
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn install_panic_cleanup() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        cleanup_owned();
    }));
}

/// The three namespaces, their links and the work directory; dropping it removes them all.
struct Topology {
    gen: String,
    node: String,
    sink: String,
    dir: PathBuf,
}

impl Topology {
    fn create(prefix: &str, stop: &AtomicBool) -> Result<Self> {
        let existing = ip(&["netns", "list"])?;
        if let Some(l) = existing.lines().find(|l| l.starts_with(prefix)) {
            bail!(
                "network namespace {} already exists (another `vireo bench` with prefix {prefix}, or a leftover: `ip netns del` it)",
                l.split_whitespace().next().unwrap_or(l)
            );
        }
        let dir = std::env::temp_dir().join(format!("{prefix}bench"));
        if dir.exists() {
            bail!("{} already exists", dir.display());
        }
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        owned().dir = Some(dir.clone());
        let t = Topology {
            gen: format!("{prefix}gen"),
            node: format!("{prefix}node"),
            sink: format!("{prefix}sink"),
            dir,
        };
        for ns in [&t.gen, &t.node, &t.sink] {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            ip(&["netns", "add", ns])?;
            owned().netns.push(ns.clone());
            ip_in(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
            ip_in(
                ns,
                &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
            )?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        for (host, pod_ns, (ip_addr, pod_mac, _, host_mac)) in
            [(HOST_A, &t.gen, POD_A), (HOST_B, &t.sink, POD_B)]
        {
            let (node, hm, pm) = (&t.node, format_mac(&host_mac), format_mac(&pod_mac));
            ip(&[
                "-n", node, "link", "add", host, "address", &hm, "type", "veth", "peer", "name",
                "eth0", "address", &pm, "netns", pod_ns,
            ])?;
            ip(&[
                "-n",
                pod_ns,
                "addr",
                "add",
                &format!("{ip_addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", pod_ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", node, "link", "set", host, "up"])?;
            // Copy-mode AF_XDP loses CHECKSUM_PARTIAL: pods compute their own checksums.
            ip_in(pod_ns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        Ok(t)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        cleanup_owned();
    }
}

/// Runs `ip ARGS`; returns stdout, or an error with stderr.
fn ip(args: &[&str]) -> Result<String> {
    run_cmd(Command::new("ip").args(args))
}

/// Runs `ip netns exec NS ARGS`.
fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    run_cmd(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let mut err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if err.is_empty() {
            let _ = out.stdout.as_slice().read_to_string(&mut err);
        }
        bail!("{cmd:?}: {}: {err}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
