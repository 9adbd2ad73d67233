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
use vireo_control::config::{
    format_mac, Config, EndpointConfig, InterfaceConfig, Role, SourceConfig, XdpModeConfig,
};
use vireo_control::kube::{KubeOptions, KubeSource};
use vireo_control::node::{ManifestDir, NodeControl, Source};
use vireo_dataplane::handoff::{self, Hub};
use vireo_dataplane::io::{sys, AfXdpMode, PortSpec, RingSizes, UmemSpec};
use vireo_dataplane::tables::{
    Endpoint, IfRole, Interface, LocalNode, RemoteNode, TableHandle, Tables,
};
use vireo_dataplane::worker::{WorkerHandle, WorkerSpec};
use vireo_xdp::{Attachment, ModePreference, Steering, MAX_IFACES, MAX_QUEUES};

use crate::api::{self, Call, Request};

#[path = "cni.rs"]
mod cni;
#[path = "fqdn.rs"]
mod fqdn;
#[path = "host.rs"]
mod host;
#[path = "maps.rs"]
mod maps;
#[path = "masquerade.rs"]
mod masquerade;
#[path = "metrics.rs"]
mod metrics;
#[path = "monitor.rs"]
mod monitor;
#[path = "numbered.rs"]
mod numbered;
#[path = "observe.rs"]
mod observe;
#[path = "state.rs"]
mod state;
#[path = "status.rs"]
mod status;
use crate::nodeconfig::first_view;
use vireo_control::nodeconfig::NodeConfig;

/// What the agent's loop waits for.
enum Msg {
    /// A call on the API socket.
    Call(Call),
    /// The source has changes.
    Wake,
    /// The API server loop ended.
    ApiGone,
    /// A request on the metrics and health listener.
    Probe(crate::http::Asked),
}

struct Attached {
    cfg: InterfaceConfig,
    /// Attached because the manifests put a pod on this node (not from the config file).
    from_source: bool,
    /// Attached for this container's `vireo-cni` registration.
    cni: Option<String>,
    identity: u32,
    slot: u16,
    ifindex: u32,
    queues: u32,
    /// The worker that owns every queue of this interface (pods, the host pair); `None`: queue
    /// `q` is on worker `q % N` (the uplink).
    worker: Option<usize>,
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
    /// Where the cluster's objects come from (none: only the configured interfaces).
    source: Option<Box<dyn Source>>,
    /// This node's tables as control builds them from the source.
    control: NodeControl,
    /// When `vireo monitor` last asked for events (collection stops a few seconds after).
    monitor_seen: Option<Instant>,
    /// The recent monitor events every `vireo monitor` client reads from its cursor.
    monitor_log: monitor::MonitorLog,
    /// When `vireo monitor --type policy-verdict` last asked (verdicts stop a few seconds
    /// after).
    verdicts_seen: Option<Instant>,
    /// The configuration file as last read (`cfg` is it with the node's settings).
    file_cfg: Config,
    /// The node's settings from the `VireoNodeConfig`s.
    node_cfg: NodeConfig,
    /// The source's first view was taken in before the workers started: the first reconcile
    /// publishes it as a new one.
    boot_reread: bool,
    /// Policy builds published (the endpoints' policy revision).
    policy_revision: u64,
    /// Masquerade as last published and steered.
    masq: masquerade::MasqState,
    /// Pods wired by `vireo-cni`.
    cni: cni::Registry,
    /// The conntrack garbage collector.
    gc: Option<vireo_conntrack::gc::Gc>,
    /// The metrics and health listener, once serving.
    listener: Option<crate::http::Listener>,
    /// What the metrics record besides the counters.
    recorded: metrics::Recorded,
    /// The flows `vireo observe` reads, and `vireo monitor --type trace`'s last ask.
    flows: observe::FlowLog,
    /// The conntrack table's shared memory, as found at start (`vireo status`).
    ct_state: Value,
    /// Shutting down: interfaces detach without flushing their flows.
    stopping: bool,
}

pub fn run(config_path: &Path) -> Result<()> {
    let file_cfg = Config::load(config_path)?;
    let mut source: Option<Box<dyn Source>> = match &file_cfg.source {
        None => None,
        Some(SourceConfig::Manifests(dir)) => Some(Box::new(
            ManifestDir::new(dir).with_read_options(file_cfg.read_options()),
        )),
        Some(SourceConfig::Kubernetes(k)) => Some(Box::new(
            KubeSource::new(KubeOptions {
                read: file_cfg.read_options(),
                ..KubeOptions::new(
                    file_cfg.node.as_deref().unwrap_or_default(),
                    k.kubeconfig.clone(),
                )
            })
            .context("starting the Kubernetes source")?,
        )),
    };
    let mut control = NodeControl::new(file_cfg.node.as_deref().unwrap_or_default());
    let mut node_cfg = NodeConfig::default();
    let (cfg, boot_reread) = first_view(&mut source, &mut control, &mut node_cfg, &file_cfg);
    let umem = umem_spec(&cfg);
    sys::check_memlock(umem.bytes() * cfg.workers.len() as u64).map_err(anyhow::Error::msg)?;

    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;

    let steering = Steering::load_sized(xsk_entries(&cfg))?;
    // In `<state_dir>/conntrack`: a restart adopts the previous process's flows.
    let (ct, ct_state) = state::open_conntrack(&cfg.conntrack, &cfg.state_path());
    tracing::info!(
        max_tcp = cfg.conntrack.max_tcp,
        max_other = cfg.conntrack.max_other,
        mib = ct.memory_bytes() >> 20,
        "conntrack table allocated"
    );
    // The whole table once every 5 s, in 64 slices.
    let gc = vireo_conntrack::gc::Gc::start(ct.clone(), Duration::from_secs(5), 64)?;
    let tables = Arc::new(TableHandle::new(Tables {
        gateways: cfg.gateway_addrs(),
        ct: Some(ct),
        fqdn: Arc::new(vireo_dataplane::fqdn::FqdnCache::new(fqdn::settings(
            &cfg.fqdn,
        ))),
        flows: observe::worker_rings(&cfg),
        monitor: observe::monitor_rings(&cfg),
        ..Default::default()
    }));
    let mut workers = Vec::new();
    // Each inbound ring takes a burst as large as one socket's fill ring lets in (a TCP
    // window): smaller, and a stream's bursts overflow it (`handoff_full`).
    let hub = Arc::new(Hub::new(
        cfg.workers.len(),
        handoff::DEFAULT_RING.max(cfg.af_xdp.fill_ring as usize),
        umem.frame_size as usize,
    ));
    for (id, w) in cfg.workers.iter().enumerate() {
        let h = WorkerHandle::spawn_in(
            WorkerSpec {
                id,
                cores: w.cores.clone(),
                busy_poll: cfg.busy_poll,
                umem,
                multi_buffer: cfg.af_xdp.multi_buffer,
            },
            tables.clone(),
            hub.clone(),
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
        source,
        control,
        monitor_seen: None,
        monitor_log: Default::default(),
        verdicts_seen: None,
        file_cfg,
        node_cfg,
        boot_reread,
        policy_revision: 0,
        masq: Default::default(),
        cni: cni::Registry::new(&cfg.api_socket),
        gc: Some(gc),
        listener: None,
        recorded: metrics::Recorded::default(),
        flows: observe::FlowLog::new(cfg.observe.flow_ring),
        ct_state,
        stopping: false,
    };
    agent.tables.update(|t| {
        t.vxlan_port = cfg.vxlan_port;
        t.vxlan_df = cfg.vxlan_df;
    });
    agent.restore_fqdn();
    agent.anchor_umems()?;
    agent.cni_restore();
    agent.reconcile();
    let result = agent.serve(&term, &hup);
    agent.shutdown();
    result
}

/// XSKMAP entries the node needs: every interface slot with as many queues as a veth gets
/// (one per CPU, at least 8), plus every queue of the configured uplinks.
fn xsk_entries(cfg: &Config) -> u32 {
    let per_iface = std::thread::available_parallelism()
        .map_or(8, |n| n.get() as u32)
        .max(8);
    let uplinks: u32 = cfg
        .interfaces
        .iter()
        .filter(|i| i.role == Role::Uplink)
        .map(|i| sys::rx_queues(&i.name).min(MAX_QUEUES))
        .sum();
    MAX_IFACES
        .saturating_mul(per_iface)
        .saturating_add(uplinks)
        .min(1 << 22)
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
            self.add_static(ifc)
                .with_context(|| format!("interface {}", ifc.name))?;
        }
        for w in &self.workers {
            w.anchor_on_loopback().context("anchoring the UMEM on lo")?;
        }
        for ifc in cfg.interfaces.iter().filter(|i| i.role == Role::Pod) {
            self.add_static(ifc)
                .with_context(|| format!("interface {}", ifc.name))?;
        }
        Ok(())
    }

    /// Attaches an interface from the configuration file or the API. Its endpoint, if any, gets
    /// the identity of a pod with no labels in namespace `default`.
    fn add_static(&mut self, ifc: &InterfaceConfig) -> Result<()> {
        let id = self.control.static_identity();
        self.add_iface(ifc, id, false)
    }

    fn serve(&mut self, term: &AtomicBool, hup: &AtomicBool) -> Result<()> {
        let (tx, calls) = mpsc::channel::<Call>();
        let sock = api::serve(&self.cfg.api_socket, tx)?;
        // One queue for the API's calls and the source's wakeups: a forwarder moves the calls
        // over, and the source's waker sends `Wake` (so a change is taken at once, and an idle
        // agent only wakes for its once-a-second checks).
        let (msgs, rx) = mpsc::channel::<Msg>();
        let fwd = msgs.clone();
        std::thread::Builder::new()
            .name("vireo-api-calls".into())
            .spawn(move || {
                for call in calls {
                    if fwd.send(Msg::Call(call)).is_err() {
                        return;
                    }
                }
                let _ = fwd.send(Msg::ApiGone);
            })
            .context("starting the API call forwarder")?;
        if let Some(src) = self.source.as_mut() {
            let wake = msgs.clone();
            src.set_waker(Arc::new(move || {
                let _ = wake.send(Msg::Wake);
            }));
            let wake = msgs.clone();
            self.watch_kernel(Arc::new(move || {
                let _ = wake.send(Msg::Wake);
            }));
        }
        if let Some(addr) = self
            .cfg
            .metrics
            .socket_addr()
            .map_err(|(f, m)| anyhow::anyhow!("{f}: {m}"))?
        {
            let probes = msgs.clone();
            let l =
                crate::http::Listener::start(addr, move |a| probes.send(Msg::Probe(a)).is_ok())?;
            tracing::info!(address = %l.addr(), "serving /metrics, /healthz and /readyz");
            self.listener = Some(l);
        }
        drop(msgs);
        tracing::info!(
            api = %sock.display(),
            interfaces = self.ifaces.len(),
            workers = self.workers.len(),
            "vireo agent running"
        );
        let mut last_check = Instant::now();
        let mut last_fqdn = Instant::now();
        while !term.load(Ordering::Relaxed) {
            if hup.swap(false, Ordering::Relaxed) {
                if let Err(e) = self.reload() {
                    tracing::error!("reload failed: {e:#}");
                }
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Msg::Call(call)) => self.answer(call),
                Ok(Msg::Probe((p, reply))) => {
                    let _ = reply.try_send(self.probe(p));
                }
                Ok(Msg::Wake) => {
                    // Wakeups queued meanwhile are this one; calls are answered first.
                    let mut gone = false;
                    while let Ok(m) = rx.try_recv() {
                        match m {
                            Msg::Call(call) => self.answer(call),
                            Msg::Probe((p, reply)) => {
                                let _ = reply.try_send(self.probe(p));
                            }
                            Msg::Wake => {}
                            Msg::ApiGone => gone = true,
                        }
                    }
                    self.reconcile();
                    if gone {
                        break;
                    }
                }
                Ok(Msg::ApiGone) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.observe_drain();
            if last_check.elapsed() > Duration::from_secs(1) {
                last_check = Instant::now();
                self.check_health()?;
                self.reconcile();
                self.monitor_idle();
                self.fqdn_collect(&mut last_fqdn);
            }
        }
        let _ = std::fs::remove_file(&sock);
        Ok(())
    }

    fn answer(&mut self, call: Call) {
        let r = self.handle(call.req).map_err(|e| format!("{e:#}"));
        let _ = call.reply.send(r);
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
                self.add_static(&interface)?;
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
            Request::MapGet { map } => self.map_get(&map),
            Request::PolicyTrace { src, dst, dport } => {
                let (view, set) = (self.control.view(), self.control.policies());
                let names = fqdn::names(&self.tables.load());
                let mut t =
                    crate::policy::trace_with(view, &set.policies, &src, &dst, dport, &names)?;
                if self.tables.current().audit.all {
                    t.audit_all();
                }
                Ok(serde_json::to_value(t)?)
            }
            Request::PolicyGet => Ok(serde_json::to_value(crate::policy::list(
                self.control.view(),
                self.control.policies(),
            ))?),
            Request::Monitor {
                max,
                after,
                verdicts,
                trace,
            } => self.monitor(max, after, verdicts, trace),
            Request::Observe { filter, max } => self.observe(&filter, max),
            Request::CniAdd { endpoint } => self.cni_add(endpoint),
            Request::CniDel { container_id } => self.cni_del(&container_id),
            Request::CniGet { container_id } => self.cni_get(&container_id),
        }
    }

    /// Re-reads the file and applies it with the node's settings ([`Agent::apply_config`]).
    fn reload(&mut self) -> Result<Value> {
        let file = Config::load(&self.config_path)?;
        let want = self.node_cfg.effective(&file).map_err(anyhow::Error::msg)?;
        self.file_cfg = file;
        self.apply_config(want)
    }

    /// Applies `want` (the file with the node's settings, checked) as far as it can at
    /// runtime: the difference in interfaces, the gateways, DF on VXLAN, and the Maglev size
    /// and seed (for the next service build); the fields that need a restart keep their
    /// running values and are reported ([`crate::nodeconfig::split`]). An interface that
    /// cannot be attached is an error, after the others are applied.
    fn apply_config(&mut self, want: Config) -> Result<Value> {
        let (new, restart) = crate::nodeconfig::split(&self.cfg, &want);
        if !restart.is_empty() && restart != self.node_cfg.needs_restart {
            tracing::warn!(fields = ?restart, "these configuration changes need a restart");
        }
        self.node_cfg.needs_restart.clone_from(&restart);
        let wanted: BTreeMap<&str, &InterfaceConfig> = new
            .interfaces
            .iter()
            .map(|i| (i.name.as_str(), i))
            .collect();
        let gone: Vec<String> = self
            .ifaces
            .iter()
            .filter(|(_, a)| !a.from_source && a.cni.is_none())
            .filter(|(n, a)| wanted.get(n.as_str()) != Some(&&a.cfg))
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            self.remove_iface(n)?;
        }
        let mut added = Vec::new();
        let mut failed = Vec::new();
        for ifc in &new.interfaces {
            if !self.ifaces.contains_key(&ifc.name) {
                match self.add_static(ifc) {
                    Ok(()) => added.push(ifc.name.clone()),
                    Err(e) => failed.push(format!("interface {}: {e:#}", ifc.name)),
                }
            }
        }
        let (gws, df) = (new.gateway_addrs(), new.vxlan_df);
        self.tables
            .load()
            .fqdn
            .set_settings(fqdn::settings(&new.fqdn));
        self.tables.update(|t| {
            t.gateways = gws;
            t.vxlan_df = df;
        });
        self.cfg = new;
        if !failed.is_empty() {
            bail!("{}", failed.join("; "));
        }
        Ok(json!({"added": added, "removed": gone, "needs_restart": restart}))
    }

    pub(crate) fn add_iface(
        &mut self,
        ifc: &InterfaceConfig,
        identity: u32,
        from_source: bool,
    ) -> Result<()> {
        let ifindex = sys::ifindex(&ifc.name)?;
        let mac = sys::mac(&ifc.name)?;
        let queues = sys::rx_queues(&ifc.name).min(MAX_QUEUES);
        let slot = (0..MAX_IFACES as u16)
            .find(|s| !self.ifaces.values().any(|a| a.slot == *s))
            .context("no free interface slot")?;
        let role = match ifc.role {
            Role::Pod => IfRole::Pod,
            Role::Uplink => IfRole::Uplink,
            Role::Host => IfRole::Host,
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
        let nw = self.workers.len();
        // Pods and the host pair: every queue on one worker, the one with the fewest such
        // interfaces (frames for it from other workers are handed off to it). The uplink:
        // queue q on worker q % N, spread by the NIC's RSS.
        let worker = (ifc.role != Role::Uplink).then(|| {
            (0..nw)
                .min_by_key(|w| {
                    self.ifaces
                        .values()
                        .filter(|a| a.worker == Some(*w))
                        .count()
                })
                .unwrap_or(0)
        });
        let mut att = Attached {
            cfg: ifc.clone(),
            from_source,
            cni: None,
            identity,
            slot,
            ifindex,
            queues,
            worker,
            af_xdp: AfXdpMode::Copy,
            link: None,
        };
        let res = (|| -> Result<()> {
            self.steering.reserve_queues(u32::from(slot), queues)?;
            for q in 0..queues {
                let w = &self.workers[worker.unwrap_or(q as usize % nw)];
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
            att.link = Some(self.attach_xdp(ifc, ifindex, slot, vx, pref)?);
            Ok(())
        })();
        if let Err(e) = res {
            self.teardown(&mut att, true);
            return Err(e);
        }
        if let Some(ep) = endpoint {
            self.tables.update(|t| {
                t.set_endpoint(Endpoint {
                    ip: ep.ip,
                    mac: ep.mac,
                    slot,
                    identity,
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

    pub(crate) fn remove_iface(&mut self, name: &str) -> Result<()> {
        let Some(mut att) = self.ifaces.remove(name) else {
            bail!("interface {name} is not attached")
        };
        self.teardown(&mut att, !self.stopping);
        tracing::info!(iface = name, "detached");
        Ok(())
    }

    /// Program off first, then sockets, then tables: no frame is steered to a closed socket.
    /// `flush`: the endpoint's flows go too (not at shutdown: the next process adopts them).
    fn teardown(&self, att: &mut Attached, flush: bool) {
        if let Some(link) = att.link.take() {
            self.detach_xdp(&att.cfg, link);
        }
        for q in 0..att.queues {
            let _ = self.steering.clear_socket(u32::from(att.slot), q);
        }
        self.steering.release_queues(u32::from(att.slot));
        for w in &self.workers {
            if let Err(e) = w.remove_slot(att.slot) {
                tracing::warn!(iface = %att.cfg.name, "removing sockets: {e}");
            }
        }
        let slot = att.slot;
        let before = self.tables.current();
        self.tables.update(|t| {
            t.remove_iface(slot);
            if t.local.is_some_and(|l| l.uplink_slot == slot) {
                t.local = None;
            }
            if t.host.is_some_and(|h| h.slot == slot) {
                t.host = None;
            }
        });
        // The endpoint's flows go with it (published first, so no packet makes them anew):
        // a pod that gets its address later inherits none of them.
        // (A sweep of the whole table, skipped when it holds no entry at all.)
        if let Some(ct) = before
            .ct
            .as_deref()
            .filter(|ct| flush && ct.counts() != (0, 0))
        {
            for ep in before.endpoints.values().filter(|e| e.slot == slot) {
                let n = ct.flush(vireo_conntrack::flush::endpoint(u32::from(ep.ip)));
                tracing::debug!(ip = %ep.ip, flows = n, "endpoint's conntrack entries flushed");
            }
        }
    }

    /// Publishes the names this node's pods give their container ports (what their ingress
    /// rules' named ports match) when they changed.
    fn publish_port_names(&mut self) {
        let want: vireo_dataplane::tables::FastMap<u32, vireo_policy::PortNames> = self
            .control
            .port_names()
            .into_iter()
            .map(|(ip, n)| (u32::from(ip), n))
            .collect();
        if *self.tables.current().port_names != want {
            tracing::debug!(endpoints = want.len(), "port names published");
            self.tables.update(|t| t.port_names = Arc::new(want));
        }
    }

    /// Brings the tables and the attached pods in line with the source: control takes in its
    /// objects when they changed; next hops are re-checked every time.
    fn reconcile(&mut self) {
        self.publish_audit();
        self.publish_port_names();
        let Some(src) = self.source.as_mut() else {
            self.cni_reconcile();
            self.note_complete();
            self.take_over_uplinks();
            return;
        };
        let node = self.control.node().to_string();
        let boot = std::mem::take(&mut self.boot_reread);
        let mut want_cfg = None;
        let reread = src.poll_with(&mut |m, changed| {
            self.control.apply_changed(m, changed);
            if let Some(c) = self.node_cfg.observe(&node, m, &self.file_cfg) {
                want_cfg = Some(c);
            }
        }) || boot;
        if let Some(want) = want_cfg {
            match self.apply_config(want) {
                Ok(r) => tracing::info!(result = %r, "VireoNodeConfig settings applied"),
                Err(e) => tracing::warn!("applying the VireoNodeConfig settings: {e:#}"),
            }
        }
        self.reconcile_pods();
        self.cni_reconcile();
        self.publish_overlay(reread);
        self.publish_masquerade();
        self.publish_services();
        self.reconcile_host();
        self.publish_policy();
        self.publish_endpoints();
        if reread {
            if let Some(src) = self.source.as_mut() {
                src.published(&self.control);
            }
        }
        self.note_complete();
        self.take_over_uplinks();
    }

    /// Publishes the compiled policy, when control has a new build.
    fn publish_policy(&mut self) {
        let started = Instant::now();
        let Some(p) = self.control.build_policy() else {
            return;
        };
        let subjects = p.tables.subjects();
        let mut tables = p.tables;
        Arc::make_mut(&mut tables).set_allow_localhost(
            self.cfg.allow_localhost == vireo_control::config::AllowLocalhost::Always,
        );
        self.tables.update(|t| t.policy = tables);
        self.policy_revision += 1;
        tracing::info!(
            identities = p.identities,
            policies_changed = p.changed,
            endpoints_under_policy = subjects,
            ms = started.elapsed().as_millis() as u64,
            "policy published"
        );
    }

    /// Hands the source this node's pods as their `VireoEndpoint`s are to show them: ready when
    /// attached, waiting for their interface otherwise, with the policy in force.
    fn publish_endpoints(&mut self) {
        let policy = self.tables.current().policy.clone();
        let (ifaces, cni) = (&self.ifaces, self.cni_attached_pods());
        let eps = self
            .control
            .local_endpoints(&policy, self.policy_revision, &|n| {
                ifaces.contains_key(n) || cni.contains(n)
            });
        if let Some(src) = self.source.as_mut() {
            src.endpoints(&eps);
        }
    }

    /// Publishes control's new service table in `Tables.services`, when there is one, and
    /// programs the uplink to steer its NodePort, external and LoadBalancer frontends. The
    /// table is published before the uplink steers new frontends to it.
    fn publish_services(&mut self) {
        let started = Instant::now();
        let Some(built) = self.control.build_services(self.cfg.services) else {
            return;
        };
        self.recorded.maglev_built(&built.build_times);
        let table = built.table;
        let before = self.tables.current();
        self.tables.update(|t| t.services = table.clone());
        // A frontend that is gone takes its flows with it (a new Service given its address
        // inherits none).
        if let Some(ct) = before.ct.as_deref() {
            let now: std::collections::BTreeSet<_> = table.frontends().collect();
            for (ip, port, proto) in before.services.frontends().filter(|f| !now.contains(f)) {
                let n = ct.flush(vireo_conntrack::flush::frontend(ip, port, proto));
                tracing::debug!(%ip, port, proto, flows = n, "frontend's conntrack entries flushed");
            }
        }
        if let Err(e) = self.steering.set_frontends(&built.steered) {
            tracing::warn!(
                frontends = built.steered.len(),
                "steering service frontends from the uplink: {e}"
            );
        }
        tracing::info!(
            service_ports = built.ports,
            built = built.built,
            reused = built.reused,
            steered = built.steered.len(),
            ms = started.elapsed().as_millis() as u64,
            "service table published"
        );
    }

    /// Attaches this node's pods whose veth exists, detaches those gone from the manifests.
    /// Pods registered by `vireo-cni` are left to [`Agent::cni_reconcile`].
    fn reconcile_pods(&mut self) {
        let want: BTreeMap<String, (InterfaceConfig, u32)> = self
            .control
            .pod_endpoints()
            .into_iter()
            .filter(|p| !self.cni.has_pod(&p.namespace, &p.name))
            .map(|p| {
                let ifc = InterfaceConfig {
                    name: p.ifname.clone(),
                    role: Role::Pod,
                    endpoint: Some(EndpointConfig {
                        ip: p.ip.to_string(),
                        mac: format_mac(&p.mac),
                    }),
                };
                (p.ifname, (ifc, p.identity))
            })
            .collect();
        let stale: Vec<String> = self
            .ifaces
            .iter()
            .filter(|(n, a)| {
                a.from_source
                    && a.cfg.role != Role::Host
                    && want
                        .get(*n)
                        .is_none_or(|(c, id)| *c != a.cfg || *id != a.identity)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in stale {
            let _ = self.remove_iface(&n);
        }
        for (name, (ifc, id)) in want {
            if self.ifaces.contains_key(&name) || sys::ifindex(&name).is_err() {
                continue; // attached already, or the pod's veth is not there yet
            }
            if let Err(e) = self.add_iface(&ifc, id, true) {
                tracing::warn!(iface = %name, "attaching pod: {e:#}");
            }
        }
    }

    /// Publishes this node, the other nodes (with resolved next hops), the ipcache and the
    /// identities. Next hops are re-checked every time; the ipcache is rebuilt only when the
    /// source's objects changed (`reread`), since nothing else changes it.
    fn publish_overlay(&mut self, reread: bool) {
        let uplink = self.ifaces.values().find(|a| a.cfg.role == Role::Uplink);
        let t = self.tables.current();
        let local = match (self.control.node_ip(), uplink) {
            (Some(ip), Some(u)) => t.iface(u.slot).map(|i| LocalNode {
                ip,
                uplink_slot: u.slot,
                uplink_mac: i.mac,
                mtu: sys::mtu(&u.cfg.name).unwrap_or(1500),
            }),
            _ => None,
        };
        let uplink_name = uplink.map(|u| u.cfg.name.clone()).unwrap_or_default();
        let nodes: vireo_dataplane::tables::FastMap<u32, RemoteNode> = self
            .control
            .peer_nodes(&uplink_name)
            .into_iter()
            .map(|n| {
                let node = RemoteNode {
                    name: n.name,
                    next_hop_mac: n.next_hop_mac,
                };
                (u32::from(n.ip), node)
            })
            .collect();
        let gateways = self.control.gateways(self.cfg.gateway_addrs());
        let ipcache = reread.then(|| self.control.ipcache());
        let identities = self.control.vni_identities();
        let same = ipcache.is_none()
            && t.local == local
            && t.nodes == nodes
            && t.gateways == gateways
            && t.identities == identities;
        if !same {
            self.tables.update(|t| {
                t.local = local;
                t.nodes = nodes;
                t.gateways = gateways;
                t.identities = identities;
                if let Some(c) = ipcache {
                    t.ipcache = c;
                }
            });
            // Remote pods gone from the ipcache take their flows here with them.
            let now = self.tables.current();
            if let Some(ct) = now.ct.as_deref() {
                let hosts = |c: &vireo_policy::IpCache| -> std::collections::BTreeSet<u32> {
                    c.iter()
                        .filter(|(n, e)| n.prefix_len() == 32 && e.tunnel.is_some())
                        .map(|(n, _)| u32::from(n.addr()))
                        .collect()
                };
                let kept = hosts(&now.ipcache);
                let gone: std::collections::BTreeSet<u32> =
                    hosts(&t.ipcache).difference(&kept).copied().collect();
                if !gone.is_empty() {
                    let n = ct.flush(vireo_conntrack::flush::endpoints(gone));
                    tracing::debug!(flows = n, "conntrack entries of remote pods gone flushed");
                }
            }
        }
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

    fn shutdown(&mut self) {
        // The flows stay in the shared table for the next process (no flush on the way out).
        self.stopping = true;
        self.save_fqdn();
        self.remove_host();
        let names: Vec<String> = self.ifaces.keys().cloned().collect();
        for n in names {
            let _ = self.remove_iface(&n);
        }
        self.workers.clear();
        self.listener = None;
        tracing::info!("vireo agent stopped; all interfaces detached");
    }
}

pub(crate) fn xdp_role(r: Role) -> vireo_xdp::Role {
    match r {
        // The host pair carries only what the node's stack routes to it: all of it is ours.
        Role::Pod | Role::Host => vireo_xdp::Role::Pod,
        Role::Uplink => vireo_xdp::Role::Uplink,
    }
}
