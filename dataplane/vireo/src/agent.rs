//! `vireo agent`: wires the control side to the fast path. It loads the XDP program, starts the
//! workers, attaches the configured interfaces, serves the API, and applies changes at runtime
//! (API calls, SIGHUP reloads, interfaces that disappear). SIGINT/SIGTERM detach cleanly; if the
//! process dies any other way, the kernel drops its BPF links and the node keeps its networking.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vireo_control::config::{format_mac, Config, InterfaceConfig, Role, XdpModeConfig};
use vireo_dataplane::counters::CounterSnapshot;
use vireo_dataplane::io::{sys, AfXdpMode, PortSpec, RingSizes, UmemSpec};
use vireo_dataplane::tables::{Endpoint, IfRole, Interface, TableHandle, Tables};
use vireo_dataplane::worker::{WorkerHandle, WorkerSpec};
use vireo_xdp::{Attachment, ModePreference, Steering, MAX_IFACES, MAX_QUEUES};

use crate::api::{self, Call, Request};

struct Attached {
    cfg: InterfaceConfig,
    slot: u16,
    ifindex: u32,
    queues: u32,
    af_xdp: AfXdpMode,
    link: Option<Attachment>,
}

pub struct Agent {
    config_path: PathBuf,
    cfg: Config,
    steering: Steering,
    tables: Arc<TableHandle>,
    workers: Vec<WorkerHandle>,
    ifaces: BTreeMap<String, Attached>,
    started: Instant,
}

pub fn run(config_path: &Path) -> Result<()> {
    let cfg = Config::load(config_path)?;
    let umem = umem_spec(&cfg);
    sys::check_memlock(umem.bytes() * cfg.workers.len() as u64).map_err(anyhow::Error::msg)?;

    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;

    let steering = Steering::load()?;
    let tables = Arc::new(TableHandle::new(Tables {
        gateways: cfg.gateway_addrs(),
        ..Default::default()
    }));
    let mut workers = Vec::new();
    for (id, w) in cfg.workers.iter().enumerate() {
        let h = WorkerHandle::spawn(
            WorkerSpec {
                id,
                cores: w.cores.clone(),
                busy_poll: cfg.busy_poll,
                umem,
            },
            tables.clone(),
        )
        .with_context(|| format!("starting worker {id}"))?;
        workers.push(h);
    }
    let mut agent = Agent {
        config_path: config_path.to_owned(),
        cfg: cfg.clone(),
        steering,
        tables,
        workers,
        ifaces: BTreeMap::new(),
        started: Instant::now(),
    };
    agent.anchor_umems()?;
    let result = agent.serve(&term, &hup);
    agent.shutdown();
    result
}

fn umem_spec(cfg: &Config) -> UmemSpec {
    UmemSpec {
        frames: cfg.af_xdp.frames,
        frame_size: cfg.af_xdp.frame_size,
        fill_size: cfg.af_xdp.fill_ring,
        completion_size: cfg.af_xdp.completion_ring,
        zero_copy: cfg.af_xdp.zero_copy,
    }
}

impl Agent {
    /// Each worker's UMEM is anchored on its uplink queue when the node has an uplink (so a
    /// zero-copy NIC can be zero-copy), else on `lo`.
    fn anchor_umems(&mut self) -> Result<()> {
        let cfg = self.cfg.clone();
        for ifc in cfg.interfaces.iter().filter(|i| i.role == Role::Uplink) {
            self.add_iface(ifc)
                .with_context(|| format!("interface {}", ifc.name))?;
        }
        for w in &self.workers {
            w.umem()
                .anchor_on_loopback()
                .context("anchoring the UMEM on lo")?;
        }
        for ifc in cfg.interfaces.iter().filter(|i| i.role == Role::Pod) {
            self.add_iface(ifc)
                .with_context(|| format!("interface {}", ifc.name))?;
        }
        Ok(())
    }

    fn serve(&mut self, term: &AtomicBool, hup: &AtomicBool) -> Result<()> {
        let (tx, rx) = mpsc::channel::<Call>();
        let sock = api::serve(&self.cfg.api_socket, tx)?;
        tracing::info!(
            api = %sock.display(),
            interfaces = self.ifaces.len(),
            workers = self.workers.len(),
            "vireo agent running"
        );
        let mut last_check = Instant::now();
        while !term.load(Ordering::Relaxed) {
            if hup.swap(false, Ordering::Relaxed) {
                if let Err(e) = self.reload() {
                    tracing::error!("reload failed: {e:#}");
                }
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(call) => {
                    let r = self.handle(call.req).map_err(|e| format!("{e:#}"));
                    let _ = call.reply.send(r);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last_check.elapsed() > Duration::from_secs(1) {
                last_check = Instant::now();
                self.check_health()?;
            }
        }
        let _ = std::fs::remove_file(&sock);
        Ok(())
    }

    fn handle(&mut self, req: Request) -> Result<Value> {
        match req {
            Request::Status => Ok(self.status()),
            Request::EndpointAdd { interface } => {
                let mut probe = self.cfg.clone();
                probe.interfaces.retain(|i| i.name != interface.name);
                probe.interfaces.push(interface.clone());
                probe.validate(Path::new("request"))?;
                if self.ifaces.contains_key(&interface.name) {
                    self.remove_iface(&interface.name)?;
                }
                self.add_iface(&interface)?;
                self.cfg = probe;
                Ok(json!({"added": interface.name}))
            }
            Request::EndpointDel { name } => {
                if !self.ifaces.contains_key(&name) {
                    bail!("interface {name} is not attached");
                }
                self.remove_iface(&name)?;
                self.cfg.interfaces.retain(|i| i.name != name);
                Ok(json!({"removed": name}))
            }
            Request::Reload => self.reload(),
        }
    }

    /// Re-reads the file and applies the difference in interfaces and gateways; everything
    /// else needs a restart and is reported.
    fn reload(&mut self) -> Result<Value> {
        let new = Config::load(&self.config_path)?;
        let mut ignored = Vec::new();
        for (field, same) in [
            ("workers", new.workers == self.cfg.workers),
            ("af_xdp", new.af_xdp == self.cfg.af_xdp),
            ("api_socket", new.api_socket == self.cfg.api_socket),
            ("vxlan_port", new.vxlan_port == self.cfg.vxlan_port),
            ("xdp_mode", new.xdp_mode == self.cfg.xdp_mode),
            ("busy_poll", new.busy_poll == self.cfg.busy_poll),
        ] {
            if !same {
                ignored.push(field);
            }
        }
        if !ignored.is_empty() {
            tracing::warn!(?ignored, "reload: these fields need a restart");
        }
        let want: BTreeMap<&str, &InterfaceConfig> = new
            .interfaces
            .iter()
            .map(|i| (i.name.as_str(), i))
            .collect();
        let gone: Vec<String> = self
            .ifaces
            .iter()
            .filter(|(n, a)| want.get(n.as_str()) != Some(&&a.cfg))
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            self.remove_iface(n)?;
        }
        let mut added = Vec::new();
        for ifc in &new.interfaces {
            if !self.ifaces.contains_key(&ifc.name) {
                self.add_iface(ifc)
                    .with_context(|| format!("interface {}", ifc.name))?;
                added.push(ifc.name.clone());
            }
        }
        let gws = new.gateway_addrs();
        self.tables.update(|t| t.gateways = gws);
        self.cfg = new;
        Ok(json!({"added": added, "removed": gone, "needs_restart": ignored}))
    }

    fn add_iface(&mut self, ifc: &InterfaceConfig) -> Result<()> {
        let ifindex = sys::ifindex(&ifc.name)?;
        let mac = sys::mac(&ifc.name)?;
        let queues = sys::rx_queues(&ifc.name).min(MAX_QUEUES);
        let slot = (0..MAX_IFACES as u16)
            .find(|s| !self.ifaces.values().any(|a| a.slot == *s))
            .context("no free interface slot")?;
        let role = match ifc.role {
            Role::Pod => IfRole::Pod,
            Role::Uplink => IfRole::Uplink,
        };
        let endpoint = ifc
            .endpoint
            .as_ref()
            .map(|e| {
                e.resolve()
                    .map_err(|(f, m)| anyhow::anyhow!("endpoint.{f}: {m}"))
            })
            .transpose()?;
        // Tables first (nothing is steered yet), then sockets, then the program.
        self.tables.update(|t| {
            t.set_iface(Interface {
                slot,
                name: ifc.name.clone(),
                mac,
                role,
            })
        });
        let mut att = Attached {
            cfg: ifc.clone(),
            slot,
            ifindex,
            queues,
            af_xdp: AfXdpMode::Copy,
            link: None,
        };
        let res = (|| -> Result<()> {
            let nw = self.workers.len() as u32;
            for q in 0..queues {
                let w = &self.workers[(q % nw) as usize];
                let spec = PortSpec {
                    ifname: ifc.name.clone(),
                    queue: q,
                    slot,
                    rings: RingSizes {
                        rx: self.cfg.af_xdp.rx_ring,
                        tx: self.cfg.af_xdp.tx_ring,
                    },
                };
                let (fd, mode) = w.add_port(&spec)?;
                att.af_xdp = mode;
                self.steering.set_socket(u32::from(slot), q, fd)?;
            }
            let pref = match self.cfg.xdp_mode {
                XdpModeConfig::Auto => ModePreference::Auto,
                XdpModeConfig::Native => ModePreference::Native,
                XdpModeConfig::Generic => ModePreference::Generic,
            };
            let vx = self.cfg.vxlan_port;
            att.link = Some(self.steering.attach(
                ifindex,
                u32::from(slot),
                xdp_role(ifc.role),
                vx,
                pref,
            )?);
            Ok(())
        })();
        if let Err(e) = res {
            self.teardown(&mut att);
            return Err(e);
        }
        if let Some(ep) = endpoint {
            self.tables.update(|t| {
                t.set_endpoint(Endpoint {
                    ip: ep.ip,
                    mac: ep.mac,
                    slot,
                })
            });
        }
        let mode = att
            .link
            .as_ref()
            .map(|l| l.mode().as_str())
            .unwrap_or("none");
        tracing::info!(
            iface = %ifc.name, slot, queues, xdp = mode, af_xdp = att.af_xdp.as_str(),
            "attached"
        );
        self.ifaces.insert(ifc.name.clone(), att);
        Ok(())
    }

    fn remove_iface(&mut self, name: &str) -> Result<()> {
        let Some(mut att) = self.ifaces.remove(name) else {
            bail!("interface {name} is not attached")
        };
        self.teardown(&mut att);
        tracing::info!(iface = name, "detached");
        Ok(())
    }

    /// Program off first, then sockets, then tables: no frame is steered to a closed socket.
    fn teardown(&self, att: &mut Attached) {
        if let Some(link) = att.link.take() {
            self.steering.detach(link);
        }
        for q in 0..att.queues {
            let _ = self.steering.clear_socket(u32::from(att.slot), q);
        }
        for w in &self.workers {
            if let Err(e) = w.remove_slot(att.slot) {
                tracing::warn!(iface = %att.cfg.name, "removing sockets: {e}");
            }
        }
        let slot = att.slot;
        self.tables.update(|t| t.remove_iface(slot));
    }

    /// Interfaces that vanished (a pod deleted without an API call) are detached; a dead
    /// worker is fatal.
    fn check_health(&mut self) -> Result<()> {
        let vanished: Vec<String> = self
            .ifaces
            .iter()
            .filter(|(n, a)| sys::ifindex(n).ok() != Some(a.ifindex))
            .map(|(n, _)| n.clone())
            .collect();
        for n in vanished {
            tracing::warn!(iface = %n, "interface disappeared; detaching");
            self.remove_iface(&n)?;
        }
        if let Some(w) = self.workers.iter().find(|w| !w.is_alive()) {
            bail!("worker {} stopped", w.spec().id);
        }
        Ok(())
    }

    fn status(&self) -> Value {
        let t = self.tables.load();
        let ifaces: Vec<Value> = self
            .ifaces
            .iter()
            .map(|(name, a)| {
                let xdp = self.steering.counters(u32::from(a.slot)).unwrap_or_default();
                let ep = t.endpoints.values().find(|e| e.slot == a.slot);
                json!({
                    "name": name,
                    "ifindex": a.ifindex,
                    "slot": a.slot,
                    "role": a.cfg.role,
                    "queues": a.queues,
                    "xdp_mode": a.link.as_ref().map(|l| l.mode().as_str()),
                    "af_xdp_mode": a.af_xdp.as_str(),
                    "endpoint": ep.map(|e| json!({"ip": e.ip.to_string(), "mac": format_mac(&e.mac)})),
                    "xdp": {"steered": xdp.steered, "passed": xdp.passed, "no_socket": xdp.no_socket},
                })
            })
            .collect();
        let mut total = CounterSnapshot::default();
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|w| {
                let c = w.counters();
                total.add(&c);
                let ports = w.ports();
                json!({
                    "id": w.spec().id,
                    "cores": w.spec().cores,
                    "busy_poll": w.spec().busy_poll,
                    "sockets": ports.len(),
                    "fill_base": ports.first().map(|p| p.fill_base),
                    "fill_high": ports.first().map(|p| p.fill_high),
                    "umem_frames": w.spec().umem.frames,
                    "counters": c,
                })
            })
            .collect();
        json!({
            "node": self.cfg.node,
            "uptime_s": self.started.elapsed().as_secs(),
            "interfaces": ifaces,
            "workers": workers,
            "counters": total,
        })
    }

    fn shutdown(&mut self) {
        let names: Vec<String> = self.ifaces.keys().cloned().collect();
        for n in names {
            let _ = self.remove_iface(&n);
        }
        self.workers.clear();
        tracing::info!("vireo agent stopped; all interfaces detached");
    }
}

fn xdp_role(r: Role) -> vireo_xdp::Role {
    match r {
        Role::Pod => vireo_xdp::Role::Pod,
        Role::Uplink => vireo_xdp::Role::Uplink,
    }
}
