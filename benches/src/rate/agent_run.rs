//! The agent run: `vireo agent` in the node namespace with one worker, driven by the same
//! generator and measured the same way as the baseline.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use vireo_api::{self as api, Request};
use vireo_control::config::{format_mac, Config, XdpModeConfig};
use vireo_dataplane::fixtures::{GATEWAY, POD_A, POD_B};

use super::measure::{find_thread, measure, Rate, Task};
use super::runs::{GenKind, Generator};
use super::topology::{register_pid, signal, unregister_pid};
use super::{Ctx, BUSY_POLL, FRAMES, FWD_CORE, HOST_A, HOST_B, RING, WARM_UP};

/// What a run gives the agent.
pub(super) struct AgentSetup {
    /// The node's name.
    pub(super) node: &'static str,
    /// `interfaces:` of its configuration.
    pub(super) interfaces: Value,
    /// A manifest directory as its source, if any.
    pub(super) manifests: Option<PathBuf>,
    /// Interfaces it must have attached before the run starts.
    pub(super) attached: usize,
    /// Ready once this holds, asked of its API socket.
    pub(super) ready: fn(&Path) -> bool,
    /// Asked of its API socket after the run: the frames took the path the case names.
    pub(super) check: fn(&Path) -> Result<()>,
}

/// `vireo-pod`: pods A and B from the configuration, no source.
pub(super) fn pod_setup() -> AgentSetup {
    let pod = |name: &str, ip: std::net::Ipv4Addr, mac: &[u8; 6]| {
        json!({
            "name": name,
            "role": "pod",
            "endpoint": {"ip": ip.to_string(), "mac": format_mac(mac)},
        })
    };
    AgentSetup {
        node: "vireo-bench",
        interfaces: json!([
            pod(HOST_A, POD_A.0, &POD_A.1),
            pod(HOST_B, POD_B.0, &POD_B.1)
        ]),
        manifests: None,
        attached: 2,
        ready: |_| true,
        check: |_| Ok(()),
    }
}

/// The agent's configuration file, as JSON (which is YAML), checked with the agent's own
/// parser. Fields left out get the agent's defaults.
fn agent_config(dir: &Path, xdp_mode: XdpModeConfig, s: &AgentSetup) -> Result<(String, Config)> {
    let mode = match xdp_mode {
        XdpModeConfig::Auto => "auto",
        XdpModeConfig::Native => "native",
        XdpModeConfig::Generic => "generic",
    };
    let mut v = json!({
        "node": s.node,
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
        "interfaces": s.interfaces,
    });
    if let Some(m) = &s.manifests {
        v["source"] = json!({"manifests": m});
    }
    let text = serde_json::to_string_pretty(&v)?;
    let cfg = Config::parse(&text, Path::new("vireo bench's agent config"))?;
    Ok((text, cfg))
}

/// `vireo-pod`: the agent forwarding pod A → pod B on this node.
pub(super) fn run_agent(ctx: &Ctx, gen_kind: &GenKind) -> Result<Rate> {
    run_with(ctx, &pod_setup(), |_, limit| {
        Generator::start(ctx, gen_kind, POD_B.0, limit)
    })
}

/// Starts the agent with `setup`, waits until it is ready, then measures the generator that
/// `start_gen` starts (given the agent's API socket and the generator's time limit).
pub(super) fn run_with(
    ctx: &Ctx,
    setup: &AgentSetup,
    start_gen: impl FnOnce(&Path, Duration) -> Result<Generator>,
) -> Result<Rate> {
    let (topo, sink, window, stop) = (ctx.topo, ctx.sink, ctx.window, ctx.stop);
    let (text, cfg) = agent_config(&topo.dir, ctx.xdp_mode, setup)?;
    let cfg_path = topo.dir.join("agent.yaml");
    std::fs::write(&cfg_path, text).with_context(|| format!("writing {}", cfg_path.display()))?;
    let log = topo.dir.join("agent.log");
    let mut agent = AgentProc::start(&topo.node, &cfg_path, &log)?;
    let status = agent
        .wait_ready(&cfg.api_socket, setup, Duration::from_secs(20), stop)
        .context("the agent did not come up")?;
    tracing::debug!(%status, "agent up");
    let limit = WARM_UP + window + Duration::from_secs(30);
    let mut gen = start_gen(&cfg.api_socket, limit)?;
    let pid = agent.pid();
    let worker = Task {
        pid,
        tid: find_thread(pid, "vireo-worker-0").unwrap_or(0),
    };
    let tasks = [gen.task(), worker];
    let rate = measure(sink, &gen.sent(), tasks, window, stop, || {
        gen.check()?;
        agent.check()
    })?;
    gen.finish().context("generator")?;
    (setup.check)(&cfg.api_socket)?;
    let status = api::call(&cfg.api_socket, &Request::Status).context("agent status")?;
    agent.stop()?;
    let c = &status["counters"];
    tracing::debug!(counters = %c, "agent run");
    Ok(Rate {
        avg_batch: c["rx"].as_u64().unwrap_or(0) as f64
            / c["batches"].as_u64().unwrap_or(0).max(1) as f64,
        ..rate
    })
}

pub(super) fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// `vireo agent` in the node namespace.
struct AgentProc {
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProc {
    pub(super) fn start(netns: &str, cfg: &Path, log: &Path) -> Result<Self> {
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

    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(super) fn check(&mut self) -> Result<()> {
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

    pub(super) fn wait_ready(
        &mut self,
        sock: &Path,
        setup: &AgentSetup,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> Result<Value> {
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
                        if ifs == setup.attached && (setup.ready)(sock) {
                            return Ok(v);
                        }
                        last = anyhow!(
                            "{ifs} of {} interfaces attached, or the tables are not complete yet",
                            setup.attached
                        );
                    }
                    Err(e) => last = e.into(),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.context(format!("agent not ready within {timeout:?}")))
    }

    /// SIGTERM (the agent detaches), then SIGKILL after 5 s.
    pub(super) fn stop(&mut self) -> Result<()> {
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
