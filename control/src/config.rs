//! The agent's configuration file (`vireo agent --config vireo.yaml`).
//!
//! Every error is one line that names the field, e.g.
//! `interfaces[1].endpoint.mac: "02:00" is not a MAC address`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod fqdn;
pub mod operations;
pub use operations::default_api_socket;

/// A configuration error: one line naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not fit the schema.
    #[error("{path}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's message, which names the field and the line.
        msg: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: {field}: {msg}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, as a path (`interfaces[2].name`).
        field: String,
        /// What is wrong.
        msg: String,
    },
}

/// Interface role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A pod's host-side veth.
    Pod,
    /// The node's uplink.
    Uplink,
    /// The dataplane's end of the node's host pair (`vireo_net`): the agent makes and
    /// attaches it itself; not for the configuration file.
    Host,
}

/// XDP attach mode preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Native, falling back to generic.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic only.
    Generic,
}

/// The pod behind a pod-facing interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Pod IPv4 address.
    pub ip: String,
    /// Pod MAC (inside its namespace).
    pub mac: String,
}

/// An interface to attach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Kernel name (host side for pods).
    pub name: String,
    /// Role.
    pub role: Role,
    /// For pods: the endpoint behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointConfig>,
}

/// A worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Cores to pin to.
    #[serde(default)]
    pub cores: Vec<usize>,
}

/// AF_XDP sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AfXdpConfig {
    /// Ask the kernel for zero-copy (falls back to copy).
    pub zero_copy: bool,
    /// Bytes per UMEM frame.
    pub frame_size: u32,
    /// UMEM frames per worker.
    pub frames: u32,
    /// RX ring entries per socket.
    pub rx_ring: u32,
    /// TX ring entries per socket.
    pub tx_ring: u32,
    /// Fill ring entries per device queue.
    pub fill_ring: u32,
    /// Completion ring entries per device queue.
    pub completion_ring: u32,
    /// AF_XDP multi-buffer (XDP_USE_SG, kernel 6.6+): a frame larger than one UMEM frame
    /// (a jumbo frame, pod MTU 9000) arrives and leaves as a chain of frames. When the kernel
    /// refuses it, sockets bind without it (a warning) and such frames are dropped by the
    /// kernel, as before.
    pub multi_buffer: bool,
}

impl Default for AfXdpConfig {
    fn default() -> Self {
        AfXdpConfig {
            zero_copy: true,
            frame_size: 2048,
            // A hot socket's fill ring holds a TCP receive window (4096 x 1450 bytes, ~6 MB)
            // while its worker is descheduled; the UMEM leaves idle sockets four batches each.
            frames: 32768,
            rx_ring: 4096,
            tx_ring: 1024,
            fill_ring: 4096,
            completion_ring: 1024,
            multi_buffer: true,
        }
    }
}

/// Service load balancing: the Maglev tables every service port gets. Every node must use
/// the same values, so that each picks the same backend for a flow (Cilium's
/// `maglev.tableSize` and `maglev.hashSeed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// Slots per Maglev table: one of the primes of [`vireo_lb::PRIMES`] (default 16381).
    /// Larger tables spread backends more evenly and move fewer flows when backends change;
    /// each costs 2 bytes per slot per service port.
    pub maglev_table_size: u32,
    /// Seed of the Maglev hashes (default 0).
    pub hash_seed: u64,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            maglev_table_size: vireo_lb::DEFAULT_M,
            hash_seed: 0,
        }
    }
}

/// Pod → world source NAT (masquerade), Cilium's `enable-ipv4-masquerade` with BPF
/// masquerading and ip-masq-agent's `nonMasqueradeCIDRs`: pods' traffic to addresses outside
/// every pod CIDR, node and service leaves with the node's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasqueradeConfig {
    /// Masquerade at all (default on). Off: pods reach nothing outside the cluster.
    pub enabled: bool,
    /// Source ports (and ICMP echo identifiers) for translated flows, `LO-HI` (default
    /// `61000-65535`, above Linux's ephemeral range so the node's own connections never meet
    /// them). The uplink hands replies in this range to the dataplane.
    pub port_range: String,
    /// Destinations that leave untranslated (Cilium's `ipv4-native-routing-cidr`,
    /// ip-masq-agent's `nonMasqueradeCIDRs`); the cluster's pod CIDRs never are translated.
    pub non_masquerade_cidrs: Vec<String>,
}

impl Default for MasqueradeConfig {
    fn default() -> Self {
        MasqueradeConfig {
            enabled: true,
            port_range: DEFAULT_MASQ_PORTS.into(),
            non_masquerade_cidrs: Vec::new(),
        }
    }
}

/// The default masquerade port range.
pub const DEFAULT_MASQ_PORTS: &str = "61000-65535";

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), Linux's default when
/// it cannot be read.
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

impl MasqueradeConfig {
    /// The port range, parsed (validated by [`Config::validate`]).
    pub fn ports(&self) -> Result<(u16, u16), String> {
        let bad = || format!("{:?} is not a port range LO-HI", self.port_range);
        let (lo, hi) = self.port_range.split_once('-').ok_or_else(bad)?;
        let (lo, hi) = (
            lo.trim().parse::<u16>().map_err(|_| bad())?,
            hi.trim().parse::<u16>().map_err(|_| bad())?,
        );
        if lo > hi || lo < 1024 {
            return Err(format!(
                "{:?}: LO must be at least 1024 and at most HI",
                self.port_range
            ));
        }
        Ok((lo, hi))
    }

    /// The non-masquerade CIDRs, parsed (validated by [`Config::validate`]).
    pub fn cidrs(&self) -> Vec<ipnet::Ipv4Net> {
        self.non_masquerade_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// Checks the range and the CIDRs: the field (`port_range`, `non_masquerade_cidrs[1]`)
    /// and what is wrong.
    pub fn check(&self) -> Result<(), (String, String)> {
        let (lo, hi) = self.ports().map_err(|m| ("port_range".to_string(), m))?;
        let (elo, ehi) = ephemeral_ports();
        if lo <= ehi && elo <= hi {
            return Err((
                "port_range".into(),
                format!(
                    "{:?} overlaps the kernel's ephemeral ports {elo}-{ehi} \
                     (net.ipv4.ip_local_port_range): the node's own connections would lose \
                     their replies",
                    self.port_range
                ),
            ));
        }
        for (i, c) in self.non_masquerade_cidrs.iter().enumerate() {
            match c.parse::<ipnet::Ipv4Net>() {
                Ok(n) if n.trunc() == n => {}
                Ok(n) => {
                    return Err((
                        format!("non_masquerade_cidrs[{i}]"),
                        format!("{c:?} has host bits set (the network is {})", n.trunc()),
                    ))
                }
                Err(_) => {
                    return Err((
                        format!("non_masquerade_cidrs[{i}]"),
                        format!("{c:?} is not an IPv4 CIDR"),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Where the cluster's objects come from: one of `source: {manifests: DIR}` and
/// `source: {kubernetes: {kubeconfig: FILE}}` (`kubernetes: {}`: in-cluster, or `KUBECONFIG`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SourceFields", into = "SourceFields")]
pub enum SourceConfig {
    /// A directory of Kubernetes YAML, watched for changes (the sandbox's source).
    Manifests(PathBuf),
    /// A Kubernetes API server, watched (see [`crate::kube`]).
    Kubernetes(KubernetesConfig),
}

/// The Kubernetes source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The kubeconfig file; without one, the in-cluster configuration (the DaemonSet's
    /// service account), `KUBECONFIG` or `~/.kube/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
}

/// `source:` as written: exactly one of its fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifests: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kubernetes: Option<KubernetesConfig>,
}

impl TryFrom<SourceFields> for SourceConfig {
    type Error = String;

    fn try_from(f: SourceFields) -> Result<SourceConfig, String> {
        match (f.manifests, f.kubernetes) {
            (Some(dir), None) => Ok(SourceConfig::Manifests(dir)),
            (None, Some(k)) => Ok(SourceConfig::Kubernetes(k)),
            _ => Err(
                "source: exactly one of `manifests: DIR` and `kubernetes: {kubeconfig: FILE}` is needed"
                    .into(),
            ),
        }
    }
}

impl From<SourceConfig> for SourceFields {
    fn from(s: SourceConfig) -> SourceFields {
        match s {
            SourceConfig::Manifests(dir) => SourceFields {
                manifests: Some(dir),
                kubernetes: None,
            },
            SourceConfig::Kubernetes(k) => SourceFields {
                manifests: None,
                kubernetes: Some(k),
            },
        }
    }
}

impl SourceConfig {
    /// The manifest directory, for a manifest source.
    pub fn manifests(&self) -> Option<&Path> {
        match self {
            SourceConfig::Manifests(dir) => Some(dir),
            SourceConfig::Kubernetes(_) => None,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node name, for status and logs.
    #[serde(default)]
    pub node: Option<String>,
    /// Addresses whose ARP requests are answered (the pods' gateway).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// VXLAN UDP port steered from the uplink.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// Set DF on the outer header of VXLAN packets (default off, as Linux's vxlan device:
    /// the underlay may fragment them).
    #[serde(default)]
    pub vxlan_df: bool,
    /// Unix socket of the agent's API.
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    /// What outlives the agent (conntrack's shared memory): [`Config::state_path`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// At stop, leave the uplink's XDP program held for the next process (README, restarts).
    #[serde(default)]
    pub hold_uplink_on_stop: bool,
    /// XDP attach mode.
    #[serde(default)]
    pub xdp_mode: XdpModeConfig,
    /// Spin instead of sleeping when idle.
    #[serde(default)]
    pub busy_poll: bool,
    /// AF_XDP sizes.
    #[serde(default)]
    pub af_xdp: AfXdpConfig,
    /// Workers (default: one, unpinned).
    #[serde(default = "operations::default_workers")]
    pub workers: Vec<WorkerConfig>,
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
    /// Cluster objects (nodes, pods): with a source, the agent attaches this node's pods and
    /// routes to the others over VXLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceConfig>,
    /// Connection tracking: limits (Cilium's defaults: 1M TCP + 256k other entries) and
    /// lifetimes in seconds (tcp_established 21600, tcp_syn 60, tcp_close 10, non_tcp 60).
    #[serde(default)]
    pub conntrack: vireo_conntrack::Config,
    /// Services: Maglev table size (`maglev_table_size`, default 16381) and hash seed
    /// (`hash_seed`, default 0), Cilium's `maglev.tableSize` and `maglev.hashSeed`.
    #[serde(default)]
    pub services: ServicesConfig,
    /// Pod → world masquerade: on by default, ports `61000-65535`, no non-masquerade CIDRs.
    #[serde(default)]
    pub masquerade: MasqueradeConfig,
    /// Whether the node's own stack reaches its pods whatever their ingress policy says
    /// (`always`, Cilium's `allow-localhost` default on Kubernetes: the kubelet's probes keep
    /// working under default deny; an explicit `ingressDeny` of `host` still holds) or only
    /// as policy allows (`policy`).
    #[serde(default)]
    pub allow_localhost: AllowLocalhost,
    /// The cluster's name (Cilium's `cluster-name`, default `default`): every pod carries it as
    /// `k8s:io.cilium.k8s.policy.cluster`, which policies may select on. Lowercase letters,
    /// digits and `-`, at most 32 characters, starting and ending with a letter or digit.
    #[serde(default = "default_cluster_name")]
    pub cluster_name: String,
    /// What CiliumNetworkPolicy CIDR rules select besides addresses outside the cluster
    /// (Cilium's `policy-cidr-match-mode`): empty (the default, Cilium's), or `[nodes]` to let
    /// them select the cluster's nodes by address too. Kubernetes NetworkPolicy `ipBlock`s
    /// select every address in the block (pods and nodes included) whatever this says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_cidr_match_mode: Vec<CidrMatchMode>,
    /// Cilium's `policy-audit-mode` for every endpoint of the node: policy verdicts are taken
    /// and reported (`policy_audited` counts the packets policy would have dropped; monitor
    /// verdicts say `audit`), but denials are not enforced. Off by default. One pod alone:
    /// the annotation `policy.vireo.io/audit-mode: "true"` ([`crate::cluster::AUDIT_MODE_ANNOTATION`]).
    #[serde(default)]
    pub policy_audit_mode: bool,
    /// The node's CNI conflist, written by the agent from a template once it knows the node's
    /// pod CIDR (the `host-local` range of every `vireo-cni` plugin in it is set to it), so
    /// the container runtime sees a configuration only when its agent can wire pods (Cilium's
    /// `write-cni-conf-when-ready`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_conflist: Option<CniConflistConfig>,
    /// DNS-aware policy (`toFQDNs`, `rules: dns`): Cilium's `tofqdns-min-ttl` (0),
    /// `tofqdns-max-ip-per-hostname` (50) and `tofqdns-dns-reject-response-code` (`refused`
    /// or `nameError`) ([`fqdn::FqdnConfig`]).
    #[serde(default)]
    pub fqdn: fqdn::FqdnConfig,
    /// Prometheus metrics and health probes: `address` (`HOST:PORT`, off by default) and
    /// `stale_after_s` (60) ([`operations::MetricsConfig`]).
    #[serde(default)]
    pub metrics: operations::MetricsConfig,
    /// Logs: `format` (`text` or `json`) and `level` (`tracing` directives, per module too)
    /// ([`operations::LogConfig`]).
    #[serde(default)]
    pub log: operations::LogConfig,
    /// `vireo observe`: `flow_ring`, the flows the agent keeps (8192; 0: no flow records)
    /// ([`operations::ObserveConfig`]).
    #[serde(default)]
    pub observe: operations::ObserveConfig,
}

/// [`Config::cni_conflist`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniConflistConfig {
    /// The conflist to start from (JSON).
    pub template: PathBuf,
    /// Where the runtime reads it (e.g. `/etc/cni/net.d/10-vireo.conflist`).
    pub path: PathBuf,
}

/// [`Config::allow_localhost`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowLocalhost {
    /// The local host reaches local pods unless a deny rule names it.
    #[default]
    Always,
    /// The local host is a peer like any other.
    Policy,
}

/// The environment variable that names the node when the file does not (the DaemonSet sets it
/// from the pod's `spec.nodeName`).
pub const NODE_NAME_ENV: &str = "VIREO_NODE_NAME";

/// [`Config::policy_cidr_match_mode`]'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CidrMatchMode {
    /// CIDR rules also select nodes (the local host and remote nodes) by address.
    Nodes,
}

fn default_cluster_name() -> String {
    vireo_policy::identity::DEFAULT_CLUSTER_NAME.to_string()
}

/// Checks a cluster name as Cilium does (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, 1 to 32 characters).
pub fn validate_cluster_name(n: &str) -> Result<(), String> {
    let b = n.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || b.len() > 32 {
        return Err(format!("{n:?} must be 1 to 32 characters"));
    }
    if !ok(&b[0]) || !ok(&b[b.len() - 1]) || !b.iter().all(|c| ok(c) || *c == b'-') {
        return Err(format!(
            "{n:?} must be lowercase letters, digits and '-', starting and ending with a \
             letter or digit"
        ));
    }
    Ok(())
}

fn default_vxlan_port() -> u16 {
    8472
}

/// A validated endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// IP.
    pub ip: Ipv4Addr,
    /// MAC.
    pub mac: [u8; 6],
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text; `path` is for messages. Without `node`, the node's name
    /// is taken from the environment variable [`NODE_NAME_ENV`] if set.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse_with_node_env(text, path, std::env::var(NODE_NAME_ENV).ok())
    }

    /// [`Config::parse`] with `env_node` as the value of [`NODE_NAME_ENV`]: the node's name
    /// when the text gives none (or an empty one).
    pub fn parse_with_node_env(
        text: &str,
        path: &Path,
        env_node: Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg: Config = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            msg: e.to_string().replace('\n', " "),
        })?;
        if cfg.node.as_deref().unwrap_or("").is_empty() {
            if let Some(n) = env_node.filter(|n| !n.is_empty()) {
                cfg.node = Some(n);
            }
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The settings that shape how the source's objects are read.
    pub fn read_options(&self) -> crate::source::ReadOptions {
        crate::source::ReadOptions {
            cluster_name: self.cluster_name.clone(),
            cidr_match_nodes: self.policy_cidr_match_mode.contains(&CidrMatchMode::Nodes),
        }
    }

    /// Checks values serde cannot.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: String, msg: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            msg,
        };
        for (i, g) in self.gateways.iter().enumerate() {
            g.parse::<Ipv4Addr>().map_err(|_| {
                bad(
                    format!("gateways[{i}]"),
                    format!("{g:?} is not an IPv4 address"),
                )
            })?;
        }
        if self.vxlan_port == 0 {
            return Err(bad("vxlan_port".into(), "must be 1-65535".into()));
        }
        validate_cluster_name(&self.cluster_name).map_err(|m| bad("cluster_name".into(), m))?;
        self.fqdn.validate().map_err(|(f, m)| bad(f, m))?;
        self.metrics.validate().map_err(|(f, m)| bad(f, m))?;
        self.log.validate().map_err(|(f, m)| bad(f, m))?;
        self.observe.validate().map_err(|(f, m)| bad(f, m))?;
        let a = &self.af_xdp;
        if !a.frame_size.is_power_of_two() || !(2048..=4096).contains(&a.frame_size) {
            return Err(bad(
                "af_xdp.frame_size".into(),
                format!("{} must be 2048 or 4096", a.frame_size),
            ));
        }
        if a.frames < 256 || a.frames > 1 << 20 {
            return Err(bad(
                "af_xdp.frames".into(),
                format!("{} must be 256..=1048576", a.frames),
            ));
        }
        for (name, v) in [
            ("rx_ring", a.rx_ring),
            ("tx_ring", a.tx_ring),
            ("fill_ring", a.fill_ring),
            ("completion_ring", a.completion_ring),
        ] {
            if !v.is_power_of_two() || !(64..=16384).contains(&v) {
                return Err(bad(
                    format!("af_xdp.{name}"),
                    format!("{v} must be a power of two in 64..=16384"),
                ));
            }
        }
        if let Some(SourceConfig::Kubernetes(KubernetesConfig {
            kubeconfig: Some(kc),
        })) = &self.source
        {
            if !kc.is_file() {
                return Err(bad(
                    "source.kubernetes.kubeconfig".into(),
                    format!("{} is not a file", kc.display()),
                ));
            }
        }
        if let Some(SourceConfig::Manifests(dir)) = &self.source {
            if dir.as_os_str().is_empty() {
                return Err(bad(
                    "source.manifests".into(),
                    "a directory is needed".into(),
                ));
            }
        }
        if self.source.is_some() && self.node.as_deref().unwrap_or("").is_empty() {
            return Err(bad(
                "node".into(),
                "a source needs the node's own name".into(),
            ));
        }
        if self.source.is_some()
            && self
                .interfaces
                .iter()
                .filter(|i| i.role == Role::Uplink)
                .count()
                != 1
        {
            return Err(bad(
                "interfaces".into(),
                "a source needs exactly one uplink interface".into(),
            ));
        }
        let ct = &self.conntrack;
        for (name, v, max) in [
            ("max_tcp", ct.max_tcp, 1usize << 24),
            ("max_other", ct.max_other, 1 << 24),
        ] {
            if !(64..=max).contains(&v) {
                return Err(bad(
                    format!("conntrack.{name}"),
                    format!("{v} must be 64..={max}"),
                ));
            }
        }
        let l = &ct.lifetimes;
        for (name, v) in [
            ("tcp_established", l.tcp_established),
            ("tcp_syn", l.tcp_syn),
            ("tcp_close", l.tcp_close),
            ("non_tcp", l.non_tcp),
        ] {
            if v == 0 {
                return Err(bad(
                    format!("conntrack.lifetimes.{name}"),
                    "must be at least 1 second".into(),
                ));
            }
        }
        let m = self.services.maglev_table_size;
        if !vireo_lb::PRIMES.contains(&m) {
            return Err(bad(
                "services.maglev_table_size".into(),
                format!("{m} must be one of {:?}", vireo_lb::PRIMES),
            ));
        }
        self.masquerade
            .check()
            .map_err(|(f, m)| bad(format!("masquerade.{f}"), m))?;
        if self.workers.is_empty() {
            return Err(bad(
                "workers".into(),
                "at least one worker is needed".into(),
            ));
        }
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        for (i, w) in self.workers.iter().enumerate() {
            if let Some(c) = w.cores.iter().find(|c| **c >= ncpu) {
                return Err(bad(
                    format!("workers[{i}].cores"),
                    format!("core {c} does not exist (this machine has {ncpu})"),
                ));
            }
        }
        let mut names = BTreeSet::new();
        let mut ips = BTreeSet::new();
        for (i, ifc) in self.interfaces.iter().enumerate() {
            validate_ifname(&ifc.name).map_err(|m| bad(format!("interfaces[{i}].name"), m))?;
            if !names.insert(ifc.name.as_str()) {
                return Err(bad(
                    format!("interfaces[{i}].name"),
                    format!("{} is listed twice", ifc.name),
                ));
            }
            match (ifc.role, &ifc.endpoint) {
                (Role::Uplink, Some(_)) => {
                    return Err(bad(
                        format!("interfaces[{i}].endpoint"),
                        "only pod interfaces have an endpoint".into(),
                    ))
                }
                (Role::Host, _) => {
                    return Err(bad(
                        format!("interfaces[{i}].role"),
                        "host is the agent's own host pair, not configured".into(),
                    ))
                }
                (Role::Pod, Some(ep)) => {
                    let e = ep
                        .resolve()
                        .map_err(|(f, m)| bad(format!("interfaces[{i}].endpoint.{f}"), m))?;
                    if !ips.insert(e.ip) {
                        return Err(bad(
                            format!("interfaces[{i}].endpoint.ip"),
                            format!("{} is used twice", e.ip),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Parsed gateway addresses (validated).
    pub fn gateway_addrs(&self) -> Vec<Ipv4Addr> {
        self.gateways
            .iter()
            .filter_map(|g| g.parse().ok())
            .collect()
    }
}

impl EndpointConfig {
    /// Parses the endpoint; the error names the sub-field.
    pub fn resolve(&self) -> Result<Endpoint, (&'static str, String)> {
        let ip = self
            .ip
            .parse::<Ipv4Addr>()
            .map_err(|_| ("ip", format!("{:?} is not an IPv4 address", self.ip)))?;
        let mac =
            parse_mac(&self.mac).ok_or(("mac", format!("{:?} is not a MAC address", self.mac)))?;
        Ok(Endpoint { ip, mac })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`: six hexadecimal octets separated by `:`, as the dataplane's own
/// parser reads them (control does not depend on the dataplane).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Formats a MAC.
pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Kernel interface names: 1-15 bytes, no '/', ':' or whitespace.
pub fn validate_ifname(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 15 || n.contains(['/', ':']) || n.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "{n:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
