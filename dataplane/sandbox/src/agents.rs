//! The agents: one `vireo agent` per node, its configuration, starting it in the node's
//! namespace and waiting until every agent is ready.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vireo_api as api;

use crate::{NodeState, Source, State};

/// TCP conntrack entries per sandbox agent.
pub const CT_MAX_TCP: usize = 4096;

/// The sandbox agents' conntrack `tcp_close` lifetime in seconds (Cilium's default is 10):
/// short, so that `service-half-close` proves in seconds that a half-closed connection outlives
/// it. The other lifetimes keep their defaults.
pub const CT_TCP_CLOSE: u32 = 2;

/// Where each sandbox agent serves `/metrics`, `/healthz` and `/readyz`, in its node's
/// namespace.
pub const METRICS_ADDRESS: &str = "127.0.0.1:9962";
/// How long the sandbox agents' source may be stale before they are not ready.
pub const METRICS_STALE_AFTER_S: u64 = 3;

fn agent_config(st: &State, n: &NodeState) -> String {
    let source = match st.source {
        Source::Manifests => format!("{{manifests: {}}}", st.manifests().display()),
        Source::Kube => format!(
            "{{kubernetes: {{kubeconfig: {}}}}}",
            crate::kube::node_kubeconfig(st).display()
        ),
    };
    // Several agents share this machine's cores: no pinning, sleep when idle.
    let workers = vec!["{cores: []}"; st.workers.max(1)].join(", ");
    let busy_poll = if st.busy_poll {
        "# `--busy-poll`: workers spin when idle.\nbusy_poll: true\n"
    } else {
        ""
    };
    format!(
        "# Written by `vireo sandbox up`.\nnode: {node}\napi_socket: {api}\nsource: {source}\n\
         # Several agents share this machine's cores: no pinning, sleep when idle.\nworkers: [{workers}]\n\
         # A hot socket's fill ring holds a TCP window (8192 frames); idle ones keep 256.\n\
         af_xdp: {{frames: 65536, rx_ring: 8192, fill_ring: 8192}}\n\
         # Small conntrack limits: light on memory, and `vireo connectivity test` floods them.\n\
         # A short close lifetime: `service-half-close` outlives it in seconds.\n\
         conntrack: {{max_tcp: {CT_MAX_TCP}, max_other: 1024, lifetimes: {{tcp_close: {CT_TCP_CLOSE}}}}}\n\
         # /metrics and the probes on the node's loopback (each node is a namespace); not\n\
         # ready 3 s after the API server stops answering.\n\
         metrics: {{address: \"{METRICS_ADDRESS}\", stale_after_s: {METRICS_STALE_AFTER_S}}}\n\
         # `vireo sandbox restart`: NodePort connections survive it (README, restarts).\n\
         hold_uplink_on_stop: true\n\
         {busy_poll}interfaces:\n  - {{name: eth0, role: uplink}}\n",
        node = n.name,
        api = n.api.display(),
    )
}

pub(crate) fn start_agent(st: &mut State, i: usize) -> Result<std::process::Child> {
    start_agent_binary(st, i, &std::env::current_exe()?, false)
}

/// Starts node `i`'s agent from `exe` (`vireo sandbox restart --binary`: another build), its
/// log truncated, or appended to (`append`: a restart keeps the previous process's lines).
pub(crate) fn start_agent_binary(
    st: &mut State,
    i: usize,
    exe: &std::path::Path,
    append: bool,
) -> Result<std::process::Child> {
    let n = st.nodes[i].clone();
    let cfg = st.dir.join(format!("{}.yaml", n.name));
    std::fs::write(&cfg, agent_config(st, &n))?;
    mount_pins(&n.api.with_extension("state").join("bpf"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&n.log)?;
    use std::os::unix::process::CommandExt;
    let child = Command::new("ip")
        .args(["netns", "exec", &n.netns])
        .arg(exe)
        .args(["agent", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: a Ctrl-C meant for this command does not stop the cluster.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the agent of {}", n.name))?;
    st.nodes[i].agent_pid = Some(child.id());
    st.save()?;
    Ok(child)
}

/// Waits until every agent answers, has attached its pods, knows every pod's address (its
/// ipcache) and the MACs of the other nodes. With the agents' handles (right after starting
/// them), an agent that dies is reported with its exit status.
pub(crate) fn wait_ready(st: &State, agents: &mut [std::process::Child]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in &st.nodes {
        let want = st.pods.iter().filter(|p| p.node == n.name).count();
        loop {
            if node_ready(st, n, want) {
                break;
            }
            let exited = agents
                .iter_mut()
                .find(|c| Some(c.id()) == n.agent_pid)
                .map(|c| c.try_wait().ok().flatten())
                .unwrap_or_else(|| {
                    (!pid_alive(n.agent_pid)).then(std::process::ExitStatus::default)
                });
            if let Some(status) = exited {
                bail!(
                    "the agent of {} exited ({status}); its log ({}):\n{}",
                    n.name,
                    n.log.display(),
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent of {} is not ready after 60 s; log: {}",
                    n.name,
                    n.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// A bpffs at `dir` (the agent's `<state_dir>/bpf`), mounted in this (the host's) mount
/// namespace: the agent runs under `ip netns exec`, which hides `/sys/fs/bpf`, and the uplink
/// link it holds across a restart must be pinned where the next agent finds it.
fn mount_pins(dir: &std::path::Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let d = dir.to_string_lossy();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*d))
    {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let ok = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("mounting a bpffs at {}", dir.display());
    }
    Ok(())
}

/// Unmounts [`mount_pins`]'s bpffs (and what is pinned in it), if mounted.
pub(crate) fn unmount_pins(dir: &std::path::Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let d = dir.to_string_lossy();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*d))
    {
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    }
}

/// Whether node `n`'s agent answers, has attached its `want` pods, knows every pod's address
/// (its ipcache) and the MACs of the other nodes.
pub(crate) fn node_ready(st: &State, n: &NodeState, want: usize) -> bool {
    let get = |m: &str| api::call(&n.api, &api::Request::MapGet { map: m.into() }).ok();
    get("nodes")
        .zip(get("ipcache"))
        .zip(api::call(&n.api, &api::Request::Status).ok())
        .is_some_and(|((nodes, ipcache), status)| {
            let remote = nodes["remote"].as_array().cloned().unwrap_or_default();
            let known: Vec<&str> = ipcache
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["prefix"].as_str())
                .collect();
            status["endpoints"].as_array().map(Vec::len) == Some(want)
                && remote.len() == st.nodes.len() - 1
                && remote.iter().all(|r| !r["next_hop_mac"].is_null())
                && st
                    .pods
                    .iter()
                    .all(|p| known.contains(&format!("{}/32", p.ip).as_str()))
        })
}

/// Waits until every agent has attached its pods and knows every pod (after `publish`).
pub fn wait_agents(st: &State) -> Result<()> {
    wait_ready(st, &mut [])
}

/// Whether `pid` is one of our agents or our API server (not a recycled pid).
pub(crate) fn pid_alive(pid: Option<u32>) -> bool {
    let Some(pid) = pid else { return false };
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let s = String::from_utf8_lossy(&c);
            s.contains("vireo") && (s.contains("agent") || s.contains("apiserver"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use vireo_control::config::Config;

    use super::*;

    fn node() -> NodeState {
        NodeState {
            name: "node-1".into(),
            netns: "x-node-1".into(),
            ip: "192.168.100.10".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            api: PathBuf::from("/run/x/node-1.sock"),
            log: PathBuf::from("/run/x/node-1.log"),
            agent_pid: None,
        }
    }

    #[test]
    fn the_agent_config_parses_and_carries_workers_and_busy_poll() {
        let mut st = State {
            source: Source::Manifests,
            workers: 2,
            dir: PathBuf::from("/run/x"),
            ..Default::default()
        };
        let parse = |st: &State| Config::parse(&agent_config(st, &node()), Path::new("t")).unwrap();
        let c = parse(&st);
        assert_eq!(c.workers.len(), 2);
        assert!(c.workers.iter().all(|w| w.cores.is_empty()));
        assert!(!c.busy_poll);
        st.busy_poll = true;
        assert!(parse(&st).busy_poll);
    }
}
