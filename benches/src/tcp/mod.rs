//! `vireo bench`'s TCP and request/response cases: `vireo-tcp` and `kernel-tcp` (iperf3, one
//! stream, fixed time, median of 3 runs, same node and cross node, MTU 1450 and 9000), and
//! `vireo-rr` and `kernel-rr` (UDP request/response percentiles at half the peak rate, MTU
//! 1450), as rows of [`crate::case::Case`].
//!
//! - Vireo: sandboxes of its own (`vireo sandbox up --sandbox vtcNNNNN --source manifests
//!   --pods 2`: two pods on node-1, two on node-2), always brought down: the default one (TCP
//!   at MTU 1450 and `vireo-rr`), one with `--busy-poll` (`vireo-rr-busy-poll`: workers spin
//!   instead of sleeping) and one with `--mtu 9000` (TCP over AF_XDP multi-buffer).
//! - Kernel: namespaces of its own ([`kernel`]): a routed same-node path, and flannel's VXLAN
//!   setup for cross node.
//!
//! Everything made is removed on return, on error, on panic (a hook) and when `stop` is set
//! (SIGINT/SIGTERM in the caller): every wait polls it and kills its child's process group.

mod iperf;
mod kernel;
mod proc;
mod rr;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::case::Case;
use proc::{install_panic_cleanup, own_sandbox, remove_sandbox, Proc};

const MTUS: [u32; 2] = [1450, 9000];
const PATHS: [&str; 2] = ["same-node", "cross-node"];
const IPERF_PORT: u16 = 5271;

/// The `vireo` binary: `VIREO_BIN`, this process when it is `vireo`, or `vireo` beside (or one
/// level above, for examples) this executable.
pub fn vireo_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VIREO_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    if me.file_name().is_some_and(|n| n == "vireo") {
        return Ok(me);
    }
    for dir in me.ancestors().skip(1).take(2) {
        let p = dir.join("vireo");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no vireo binary found (build it, or set VIREO_BIN)")
}

/// Runs every case; rows for cases that cannot run here say why.
pub fn run_cases(quick: bool, stop: &Arc<AtomicBool>) -> Result<Vec<Case>> {
    install_panic_cleanup();
    let seconds = if quick { 3 } else { 5 };
    let runs = 3;
    // Sandbox names are at most 8 characters: "vtc", 4 digits and a one-letter suffix.
    let tag = std::process::id() % 10_000;
    let vireo = vireo_bin();
    let mut rows = Vec::new();
    // Kernel baselines.
    for (i, mtu) in MTUS.into_iter().enumerate() {
        for path in PATHS {
            let prefix = format!("vtc{tag}k{i}{}", &path[..1]);
            let topo = if path == "same-node" {
                kernel::same_node(&prefix, mtu, stop)
            } else {
                kernel::cross_node(&prefix, mtu, stop)
            };
            let row = topo.and_then(|t| {
                let tcp = tcp_runs(
                    "kernel-tcp",
                    mtu,
                    path,
                    &t.client_ns,
                    &t.server_ns,
                    &t.server_ip,
                    seconds,
                    runs,
                    stop,
                )?;
                let mut out = vec![tcp];
                if mtu == 1450 {
                    out.push(match &vireo {
                        Ok(v) => rr::rr_run(
                            v,
                            "kernel-rr",
                            path,
                            mtu,
                            &t.client_ns,
                            &t.server_ns,
                            &t.server_ip,
                            seconds,
                            stop,
                        )
                        .unwrap_or_else(|e| {
                            Case::skipped("kernel-rr", mtu, 1, path, &format!("{e:#}"))
                        }),
                        Err(e) => Case::skipped("kernel-rr", mtu, 1, path, &format!("{e:#}")),
                    });
                }
                Ok(out)
            });
            match row {
                Ok(r) => rows.extend(r),
                Err(e) => rows.push(Case::skipped("kernel-tcp", mtu, 1, path, &format!("{e:#}"))),
            }
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
        }
    }
    match &vireo {
        Ok(v) => rows.extend(vireo_cases(
            v,
            &format!("vtc{tag}"),
            quick,
            seconds,
            runs,
            stop,
        )?),
        Err(e) => {
            for s in &VIREO_SETUPS {
                for n in s.tcp.then_some("vireo-tcp").into_iter().chain(s.rr) {
                    for p in PATHS {
                        rows.push(Case::skipped(n, s.mtu, 1, p, &format!("{e:#}")));
                    }
                }
            }
        }
    }
    compare(&mut rows);
    Ok(rows)
}

#[allow(clippy::too_many_arguments)]
fn tcp_runs(
    name: &str,
    mtu: u32,
    path: &'static str,
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    seconds: u64,
    runs: u32,
    stop: &AtomicBool,
) -> Result<Case> {
    let mut v = Vec::new();
    for _ in 0..runs {
        v.push(iperf::iperf_once(
            client_ns, server_ns, server_ip, IPERF_PORT, seconds, stop,
        )?);
    }
    Ok(iperf::tcp_case(name, mtu, path, &v))
}

/// The sandbox's pods: (netns, ip, node) from its state file.
fn sandbox_pods(name: &str) -> Result<Vec<(String, String, String)>> {
    let p = format!("/run/vireo/sandbox-{name}/state.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| p.clone())?)?;
    Ok(v["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.contains("-pod-")))
        .filter_map(|p| {
            Some((
                p["netns"].as_str()?.to_string(),
                p["ip"].as_str()?.to_string(),
                p["node"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// Brings sandbox `name` down when dropped.
struct SandboxGuard(String);

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        remove_sandbox(&self.0);
    }
}

/// One Vireo sandbox of the cases: the options it is brought up with and what runs on it.
struct VireoSetup {
    /// Appended to the sandbox's name.
    suffix: &'static str,
    /// Extra `vireo sandbox up` arguments.
    args: &'static [&'static str],
    /// The pods' MTU.
    mtu: u32,
    /// `vireo-tcp` rows.
    tcp: bool,
    /// The name of the request/response rows, if any.
    rr: Option<&'static str>,
    /// Left out of `--quick` (which must stay under 5 minutes).
    full_only: bool,
}

/// The Vireo sandboxes: the default one (MTU 1450, workers sleeping when idle: TCP and RR), one
/// whose workers busy-poll (RR), and one at MTU 9000 (TCP over AF_XDP multi-buffer).
const VIREO_SETUPS: [VireoSetup; 3] = [
    VireoSetup {
        suffix: "",
        args: &[],
        mtu: 1450,
        tcp: true,
        rr: Some("vireo-rr"),
        full_only: false,
    },
    VireoSetup {
        suffix: "b",
        args: &["--busy-poll"],
        mtu: 1450,
        tcp: false,
        rr: Some("vireo-rr-busy-poll"),
        full_only: true,
    },
    VireoSetup {
        suffix: "j",
        args: &["--mtu", "9000"],
        mtu: 9000,
        tcp: true,
        rr: None,
        full_only: false,
    },
];

fn vireo_cases(
    vireo: &Path,
    name: &str,
    quick: bool,
    seconds: u64,
    runs: u32,
    stop: &AtomicBool,
) -> Result<Vec<Case>> {
    let mut rows = Vec::new();
    for s in VIREO_SETUPS.iter().filter(|s| !(quick && s.full_only)) {
        rows.extend(vireo_setup_cases(
            vireo,
            &format!("{name}{}", s.suffix),
            s,
            seconds,
            runs,
            stop,
        )?);
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
    }
    Ok(rows)
}

fn vireo_setup_cases(
    vireo: &Path,
    name: &str,
    s: &VireoSetup,
    seconds: u64,
    runs: u32,
    stop: &AtomicBool,
) -> Result<Vec<Case>> {
    let names: Vec<&str> = s
        .tcp
        .then_some("vireo-tcp")
        .into_iter()
        .chain(s.rr)
        .collect();
    let v = vireo.to_string_lossy();
    own_sandbox(name, vireo);
    let _guard = SandboxGuard(name.to_string());
    let mut argv = vec![
        &*v,
        "sandbox",
        "up",
        "--sandbox",
        name,
        "--source",
        "manifests",
        "--pods",
        "2",
    ];
    argv.extend(s.args);
    let up = Proc::spawn(&argv, "vireo sandbox up")?.wait(Duration::from_secs(300), stop);
    let pods = match up {
        Ok((true, _, _)) => sandbox_pods(name),
        Ok((false, _, err)) => Err(anyhow::anyhow!("vireo sandbox up failed: {}", err.trim())),
        Err(e) => Err(e),
    };
    let mut rows = Vec::new();
    let pods = match pods {
        Ok(p) => p,
        Err(e) => {
            for n in &names {
                for p in PATHS {
                    rows.push(Case::skipped(n, s.mtu, 1, p, &format!("{e:#}")));
                }
            }
            return Ok(rows);
        }
    };
    let on = |node: &str| {
        pods.iter()
            .filter(|p| p.2 == node)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (n1, n2) = (on("node-1"), on("node-2"));
    if n1.len() < 2 || n2.is_empty() {
        bail!("sandbox {name}: expected two pods on node-1 and one on node-2, found {pods:?}");
    }
    for path in PATHS {
        let (c, sv) = if path == "same-node" {
            (&n1[0], &n1[1])
        } else {
            (&n1[0], &n2[0])
        };
        if s.tcp {
            rows.push(
                tcp_runs(
                    "vireo-tcp",
                    s.mtu,
                    path,
                    &c.0,
                    &sv.0,
                    &sv.1,
                    seconds,
                    runs,
                    stop,
                )
                .unwrap_or_else(|e| Case::skipped("vireo-tcp", s.mtu, 1, path, &format!("{e:#}"))),
            );
        }
        if let Some(rr_name) = s.rr {
            rows.push(
                rr::rr_run(
                    vireo, rr_name, path, s.mtu, &c.0, &sv.0, &sv.1, seconds, stop,
                )
                .unwrap_or_else(|e| Case::skipped(rr_name, s.mtu, 1, path, &format!("{e:#}"))),
            );
        }
    }
    Ok(rows)
}

/// Adds the targets (printed, not asserted) to the Vireo rows' notes: TCP ≥ 0.5× the kernel's
/// at MTU 1450, RR p50 within 2× and p99 within 3×.
fn compare(rows: &mut [Case]) {
    let find = |rows: &[Case], n: &str, f: u32, p: &str| {
        rows.iter()
            .find(|c| c.name == n && c.frame == f && c.path == p)
            .cloned()
    };
    for i in 0..rows.len() {
        let c = rows[i].clone();
        let extra = match c.name.as_str() {
            "vireo-tcp" => find(rows, "kernel-tcp", c.frame, c.path).and_then(|k| {
                Some(format!(
                    "{:.2}× kernel-tcp (target ≥ 0.5×)",
                    c.gbps? / k.gbps?
                ))
            }),
            "vireo-rr" | "vireo-rr-busy-poll" => {
                find(rows, "kernel-rr", c.frame, c.path).and_then(|k| {
                    Some(format!(
                        "p50 {:.2}× kernel-rr (target ≤ 2×), p99 {:.2}× (target ≤ 3×)",
                        c.p50_us? / k.p50_us?,
                        c.p99_us? / k.p99_us?
                    ))
                })
            }
            _ => None,
        };
        if let Some(x) = extra {
            let n = rows[i]
                .note
                .take()
                .map_or(x.clone(), |n| format!("{n}; {x}"));
            rows[i].note = Some(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_names_fit_the_sandbox_limit() {
        // `vireo sandbox up --sandbox NAME`: 1-8 lowercase letters or digits.
        for s in &VIREO_SETUPS {
            let name = format!("vtc{}{}", 9999, s.suffix);
            assert!(name.len() <= 8, "{name}");
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        }
    }
}
