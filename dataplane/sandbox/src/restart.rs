//! `vireo sandbox restart NODE [--binary PATH] [--json]`: restarts one node's agent the way an
//! upgrade does. The running agent is stopped (SIGTERM, as a DaemonSet's rolling update does;
//! SIGKILL after 10 s), then the same or another binary is started with the same
//! configuration, and the command waits until it is ready again: it answers, has attached its
//! pods, knows every pod and the other nodes, and says `ready` (what `/readyz` answers). It
//! prints how long each step took and what the new agent adopted (`conntrack_state`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vireo_api as api;

use crate::agents::{node_ready, pid_alive, start_agent_binary};
use crate::State;

/// How long the old agent gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the new agent gets to be ready.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How often readiness is polled (the measurement's resolution).
const POLL: Duration = Duration::from_millis(10);

/// What a restart took.
#[derive(Debug, Clone)]
pub struct Restarted {
    pub node: String,
    pub binary: PathBuf,
    pub old_pid: Option<u32>,
    pub new_pid: u32,
    /// SIGTERM → the old process gone.
    pub stop: Duration,
    /// The old process gone → the new one ready.
    pub start: Duration,
    /// SIGTERM → the new one ready.
    pub total: Duration,
    /// The new agent's `conntrack_state`.
    pub conntrack_state: Value,
}

impl Restarted {
    pub fn to_json(&self) -> Value {
        json!({
            "node": self.node,
            "binary": self.binary.display().to_string(),
            "old_pid": self.old_pid,
            "new_pid": self.new_pid,
            "stop_ms": self.stop.as_millis() as u64,
            "start_to_ready_ms": self.start.as_millis() as u64,
            "stop_to_ready_ms": self.total.as_millis() as u64,
            "conntrack_state": self.conntrack_state,
        })
    }
}

/// Restarts `node`'s agent of sandbox `name` from `binary` (default: this executable) and
/// prints what it took.
pub fn restart(name: &str, node: &str, binary: Option<&Path>, as_json: bool) -> Result<()> {
    let r = restart_node(name, node, binary)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r.to_json())?);
    } else {
        let ct = &r.conntrack_state;
        let adopted = if ct["adopted"] == true {
            format!("adopted {} conntrack entries", ct["entries"])
        } else {
            format!(
                "conntrack not adopted: {}",
                ct["reason"].as_str().unwrap_or("unknown")
            )
        };
        println!(
            "{}: agent restarted (pid {} -> {}, {}): stop {} ms, start to ready {} ms, stop to ready {} ms; {adopted}",
            r.node,
            r.old_pid.map_or("-".into(), |p| p.to_string()),
            r.new_pid,
            r.binary.display(),
            r.stop.as_millis(),
            r.start.as_millis(),
            r.total.as_millis(),
        );
    }
    Ok(())
}

/// [`restart`] without the printing.
pub fn restart_node(name: &str, node: &str, binary: Option<&Path>) -> Result<Restarted> {
    let mut st = State::load(name)?;
    let i = st
        .nodes
        .iter()
        .position(|n| n.name == node)
        .with_context(|| {
            let names: Vec<&str> = st.nodes.iter().map(|n| n.name.as_str()).collect();
            format!(
                "no node {node} in sandbox {name} (nodes: {})",
                names.join(", ")
            )
        })?;
    let exe = match binary {
        Some(b) => b
            .canonicalize()
            .with_context(|| format!("--binary {}", b.display()))?,
        None => std::env::current_exe()?,
    };
    check_executable(&exe)?;
    let old_pid = st.nodes[i].agent_pid.filter(|&p| pid_alive(Some(p)));
    let t0 = Instant::now();
    if let Some(pid) = old_pid {
        stop(pid)?;
    }
    let stop_took = t0.elapsed();
    let mut child = start_agent_binary(&mut st, i, &exe, true)?;
    let new_pid = child.id();
    let n = st.nodes[i].clone();
    let want = st.pods.iter().filter(|p| p.node == n.name).count();
    let status = loop {
        if node_ready(&st, &n, want) {
            if let Ok(s) = api::call(&n.api, &api::Request::Status) {
                if s["ready"] == true {
                    break s;
                }
            }
        }
        if let Some(code) = child.try_wait()? {
            bail!(
                "the new agent of {node} exited ({code}); its log: {}",
                n.log.display()
            );
        }
        if t0.elapsed() > STOP_GRACE + READY_WITHIN {
            bail!(
                "the new agent of {node} is not ready after {READY_WITHIN:?}; its log: {}",
                n.log.display()
            );
        }
        std::thread::sleep(POLL);
    };
    let total = t0.elapsed();
    Ok(Restarted {
        node: node.to_string(),
        binary: exe,
        old_pid,
        new_pid,
        stop: stop_took,
        start: total - stop_took,
        total,
        conntrack_state: status["conntrack_state"].clone(),
    })
}

fn check_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
    if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
        bail!("{} is not an executable file", p.display());
    }
    Ok(())
}

/// SIGTERM, then waits for the process to go (SIGKILL after [`STOP_GRACE`]).
fn stop(pid: u32) -> Result<()> {
    let pid_s = pid.to_string();
    Command::new("kill")
        .args(["-TERM", &pid_s])
        .status()
        .context("kill -TERM")?;
    let t = Instant::now();
    while pid_alive(Some(pid)) {
        if t.elapsed() > STOP_GRACE {
            let _ = Command::new("kill").args(["-KILL", &pid_s]).status();
            let k = Instant::now();
            while pid_alive(Some(pid)) && k.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(POLL);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if pid_alive(Some(pid)) {
        bail!("the agent (pid {pid}) did not stop");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_that_is_not_executable_is_refused() {
        let d = std::env::temp_dir().join(format!("vireo-restart-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("not-exec");
        std::fs::write(&f, "x").unwrap();
        assert!(check_executable(&f).is_err());
        assert!(check_executable(&d).is_err());
        assert!(check_executable(Path::new("/bin/sh")).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_json_names_each_step() {
        let r = Restarted {
            node: "node-1".into(),
            binary: "/usr/bin/vireo".into(),
            old_pid: Some(10),
            new_pid: 11,
            stop: Duration::from_millis(120),
            start: Duration::from_millis(700),
            total: Duration::from_millis(820),
            conntrack_state: json!({"adopted": true, "entries": 4}),
        };
        let v = r.to_json();
        assert_eq!(v["stop_ms"], 120);
        assert_eq!(v["start_to_ready_ms"], 700);
        assert_eq!(v["stop_to_ready_ms"], 820);
        assert_eq!(v["conntrack_state"]["entries"], 4);
    }
}
