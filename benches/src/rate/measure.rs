//! Measuring a run: the sink's and the generator's counters over a window, CPU busy shares,
//! run-queue waits and the forwarder thread's CPU time, and which rounds count.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::participants::Sink;
use super::{FWD_CORE, GEN_CORE, WARM_UP};

/// One run's figures.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rate {
    /// Frames per second arriving at the sink.
    pub(super) delivered: f64,
    /// Frames per second the generator had completed.
    pub(super) offered: f64,
    /// Busy share (0..1) of the generator's and the forwarder's CPU over the window.
    pub(super) busy: [f64; 2],
    /// Frames per non-empty RX batch of the forwarder (64 = saturated), over the whole run.
    pub(super) avg_batch: f64,
    /// Share of the window the generator and the forwarder thread spent runnable but waiting
    /// for their core (other tasks on it).
    pub(super) wait: [f64; 2],
    /// CPU time of the forwarder thread per delivered frame, in ns (user, system calls and
    /// the softirq work they trigger, as the scheduler charges it to the thread).
    pub(super) fwd_ns: f64,
}

/// A thread, for its scheduler statistics.
#[derive(Debug, Clone, Copy)]
pub(super) struct Task {
    pub(super) pid: u32,
    pub(super) tid: u32,
}

/// The calling thread's id (from /proc/thread-self).
pub(super) fn current_tid() -> Option<u32> {
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
pub(super) fn find_thread(pid: u32, name: &str) -> Option<u32> {
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
pub(super) fn cpu_times(cpus: [usize; 2]) -> Result<[(u64, u64); 2]> {
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

pub(super) fn busy_share(a: [(u64, u64); 2], b: [(u64, u64); 2]) -> [f64; 2] {
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

impl Rate {
    /// Whether other tasks kept the generator or the forwarder off its core.
    pub(super) fn contended(&self) -> bool {
        self.wait.iter().any(|w| *w >= CONTENDED)
    }
}

/// Run-queue wait share above which a run counts as disturbed by other tasks.
pub(super) const CONTENDED: f64 = 0.02;

/// Samples the sink and the generator over `window` after the warm-up; fails early if `alive`
/// reports a dead participant or a signal arrives.
pub(super) fn measure(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_waited_2_percent_is_contended() {
        let r = |w| Rate {
            wait: [0.0, w],
            ..Rate::default()
        };
        assert!(!r(0.019).contended());
        assert!(r(CONTENDED).contended());
    }
}
