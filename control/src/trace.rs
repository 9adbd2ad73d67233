//! What `vireo policy trace` and `vireo policy get` answer: what the policies in force decide for one flow
//! and why, and which policies are in force. The same code answers offline (a manifest
//! directory read here) and live (the agent, over its API, with the manifests it has loaded).
//!
//! A flow passes when the source's egress policy and the destination's ingress policy both allow
//! it, as in Cilium; each side is explained with the rules that decided it, or the default that
//! applied ([`vireo_policy::Decision::reason`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cluster::{ClusterView, NAMESPACE_NAME_LABEL};
use crate::netpol::PolicySet;
use crate::source;
use vireo_policy::engine::selecting;
use vireo_policy::identity::{CLUSTER_LABEL, NAMESPACE_LABEL, SERVICE_ACCOUNT_LABEL};
use vireo_policy::rules::split_source;
use vireo_policy::PodOrigin;
use vireo_policy::{
    decide_named, Action, Direction, Identity, Labels, PeerInfo, Policy, PortNames, Verdict,
};

pub use crate::services::proto_name;
pub use vireo_lb::service::{TCP, UDP};

/// Why a flow could not be traced: an endpoint that does not parse or is not in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TraceError(pub String);

/// A result whose error is a [`TraceError`].
pub type Result<T, E = TraceError> = std::result::Result<T, E>;

macro_rules! bail {
    ($($t:tt)*) => { return Err(TraceError(format!($($t)*))) };
}

/// The namespace of an endpoint given by labels when neither `--src-ns`/`--dst-ns` nor a
/// `k8s:io.kubernetes.pod.namespace` label names one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A destination port with its protocol (`80/TCP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortProto {
    /// The port (1-65535).
    pub port: u16,
    /// IP protocol: [`TCP`] or [`UDP`].
    pub proto: u8,
}

impl std::fmt::Display for PortProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, proto_name(self.proto))
    }
}

/// Parses `--dport`: `PORT[/PROTO]`, the protocol TCP, UDP or SCTP in any case (TCP when left
/// out).
pub fn parse_dport(s: &str) -> Result<PortProto, String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port = match port.trim().parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(format!("port {port:?} is not a number in 1-65535")),
    };
    let proto = match proto.trim().to_ascii_uppercase().as_str() {
        "TCP" => TCP,
        "UDP" => UDP,
        "SCTP" => vireo_policy::rules::ip_proto::SCTP,
        _ => return Err(format!("protocol {proto:?} is not TCP, UDP or SCTP")),
    };
    Ok(PortProto { port, proto })
}

/// One end of a traced flow, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum EndpointSpec {
    /// A pod of the manifests.
    Pod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// An address: a pod's, a node's, or one outside the cluster.
    Ip {
        /// The address.
        ip: Ipv4Addr,
    },
    /// A pod that may not exist, given by its labels (or a reserved identity:
    /// `reserved:host`).
    Labels {
        /// Its namespace.
        namespace: String,
        /// Pod labels (`key`, `value`), or one `reserved:NAME`.
        labels: Vec<(String, String)>,
    },
}

impl EndpointSpec {
    /// Parses `--src`/`--dst`: `NAMESPACE/POD`, `POD` (in `default`), or an IPv4 address.
    pub fn parse_pod(s: &str) -> Result<EndpointSpec> {
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(EndpointSpec::Ip { ip });
        }
        let (ns, name) = s.split_once('/').unwrap_or((DEFAULT_NAMESPACE, s));
        if ns.is_empty() || name.is_empty() || name.contains('/') {
            bail!("{s:?}: give a pod as NAMESPACE/POD (or POD in namespace default), or an IPv4 address");
        }
        Ok(EndpointSpec::Pod {
            namespace: ns.to_string(),
            name: name.to_string(),
        })
    }

    /// Parses `--src-labels`/`--dst-labels` (`k=v,k2=v2`; keys may carry a source, `k8s:app`;
    /// `reserved:NAME` stands for a reserved identity), with the namespace from `ns`, else from
    /// a `k8s:io.kubernetes.pod.namespace` label, else [`DEFAULT_NAMESPACE`].
    pub fn parse_labels(s: &str, ns: Option<&str>) -> Result<EndpointSpec> {
        let mut labels = Vec::new();
        let mut ns_label: Option<String> = None;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None if item.starts_with("reserved:") => (item, ""),
                None => bail!("label {item:?}: write it as KEY=VALUE"),
            };
            let (src, k) = split_source(key);
            if k.is_empty() {
                bail!("label {item:?}: empty key");
            }
            match src {
                "reserved" => labels.push((format!("reserved:{k}"), String::new())),
                "k8s" | "any" if k == NAMESPACE_LABEL => ns_label = Some(value.to_string()),
                "k8s" | "any" => labels.push((k.to_string(), value.to_string())),
                other => bail!(
                    "label {item:?}: source {other:?} cannot be traced (use k8s: or reserved:)"
                ),
            }
        }
        if labels.is_empty() && ns_label.is_none() {
            bail!("no labels in {s:?}");
        }
        let reserved = labels
            .iter()
            .filter(|(k, _)| k.starts_with("reserved:"))
            .count();
        if reserved > 0 && labels.len() > 1 {
            bail!("{s:?}: a reserved identity (reserved:NAME) stands alone, without other labels");
        }
        let namespace = match (ns, ns_label) {
            (Some(a), Some(b)) if a != b => {
                bail!("namespace {a:?} and label {NAMESPACE_LABEL}={b:?} disagree")
            }
            (Some(a), _) => a.to_string(),
            (None, Some(b)) => b,
            (None, None) => DEFAULT_NAMESPACE.to_string(),
        };
        if namespace.is_empty() {
            bail!("empty namespace");
        }
        Ok(EndpointSpec::Labels { namespace, labels })
    }
}

/// An endpoint resolved against the cluster.
#[derive(Debug, Clone)]
struct Resolved {
    info: EndpointInfo,
    labels: Labels,
    identity: Identity,
    ip: Ipv4Addr,
    /// A pod: Vireo enforces its policy. Reserved identities and outside addresses have none.
    pod: bool,
    /// Given as the address of this node (host or remote-node, depending on the other end).
    node_ip_of: Option<String>,
    /// Its address is one of the API server's (policy also sees it as `kube-apiserver`).
    kube_apiserver: bool,
    /// The names a pod gives its container ports (what its ingress named ports match).
    ports: PortNames,
    /// Its policy is in audit mode (its pod annotation).
    audit: bool,
}

/// An endpoint as a trace reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// `namespace/pod`, `labels in NAMESPACE`, `reserved:host`, an address.
    pub name: String,
    /// Its security identity.
    pub identity: u32,
    /// Its address, if it has one.
    pub ip: Option<Ipv4Addr>,
    /// The node it runs on, for pods.
    pub node: Option<String>,
    /// Its security labels, `source:key=value`.
    pub labels: Vec<String>,
}

fn reserved(name: &str, ip: Option<Ipv4Addr>) -> Result<Resolved> {
    let Some(identity) = Identity::reserved(name).filter(|i| *i != Identity::UNKNOWN) else {
        let names: Vec<&str> = Identity::RESERVED.iter().skip(1).map(|(_, n)| *n).collect();
        bail!(
            "unknown reserved identity {name:?} (one of {})",
            names.join(", ")
        );
    };
    let labels = Labels::new([(format!("reserved:{name}"), String::new())]);
    Ok(Resolved {
        info: EndpointInfo {
            name: ip.map_or_else(|| format!("reserved:{name}"), |ip| format!("{ip} ({name})")),
            identity: identity.0,
            ip,
            node: None,
            labels: vec![format!("reserved:{name}")],
        },
        labels,
        identity,
        ip: ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        pod: false,
        node_ip_of: None,
        kube_apiserver: false,
        ports: PortNames::default(),
        audit: false,
    })
}

fn label_strings(l: &Labels) -> Vec<String> {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// A pod of the view as a trace endpoint.
fn resolved_pod(p: &crate::cluster::PodView) -> Resolved {
    Resolved {
        info: EndpointInfo {
            name: format!("{}/{}", p.namespace, p.name),
            identity: p.identity.0,
            ip: Some(p.ip),
            node: Some(p.node.clone()),
            labels: label_strings(&p.labels),
        },
        labels: p.labels.clone(),
        identity: p.identity,
        ip: p.ip,
        pod: true,
        node_ip_of: None,
        kube_apiserver: false,
        ports: PortNames::new(p.ports.iter().map(|c| (c.name.as_str(), c.port, c.proto))),
        audit: p.audit,
    }
}

fn resolve(view: &ClusterView, spec: &EndpointSpec) -> Result<Resolved> {
    let mut r = resolve_spec(view, spec)?;
    if r.info.ip.is_some() && view.kube_apiserver.contains(&r.ip) {
        r.kube_apiserver = true;
        r.info.labels.push("reserved:kube-apiserver=".to_string());
    }
    Ok(r)
}

fn resolve_spec(view: &ClusterView, spec: &EndpointSpec) -> Result<Resolved> {
    match spec {
        EndpointSpec::Pod { namespace, name } => {
            match view.pods.get(&(namespace.clone(), name.clone())) {
                Some(p) => Ok(resolved_pod(p)),
                None => bail!(
                    "unknown pod {namespace}/{name}: not in the manifests, or not scheduled with an address yet"
                ),
            }
        }
        EndpointSpec::Ip { ip } => {
            if let Some(p) = view.pods.values().find(|p| p.ip == *ip) {
                return Ok(resolved_pod(p));
            }
            if let Some(n) = view.nodes.values().find(|n| n.ip == *ip) {
                let mut r = reserved("remote-node", Some(*ip))?;
                r.node_ip_of = Some(n.name.clone());
                return Ok(r);
            }
            reserved("world", Some(*ip))
        }
        EndpointSpec::Labels { namespace, labels } => {
            if let [(k, _)] = labels.as_slice() {
                if let Some(name) = k.strip_prefix("reserved:") {
                    return reserved(name, None);
                }
            }
            let ns_labels = view.namespaces.get(namespace).cloned().unwrap_or_else(|| {
                BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), namespace.clone())])
            });
            let mut pod_labels: BTreeMap<String, String> = labels.iter().cloned().collect();
            // A derived label given is what the pod is traced with (a pod label of the same
            // key could not set it).
            let sa = pod_labels
                .remove(SERVICE_ACCOUNT_LABEL)
                .unwrap_or_else(|| "default".to_string());
            let cluster = pod_labels
                .remove(CLUSTER_LABEL)
                .unwrap_or_else(|| view.cluster().to_string());
            let origin = PodOrigin {
                cluster: &cluster,
                namespace,
                service_account: &sa,
            };
            let l = Labels::for_pod(origin, &pod_labels, &ns_labels);
            let identity = view
                .identities
                .get(&l)
                .unwrap_or_else(|| view.identities.clone().allocate(&l));
            let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Ok(Resolved {
                info: EndpointInfo {
                    name: format!("{{{}}} in {namespace}", shown.join(",")),
                    identity: identity.0,
                    ip: None,
                    node: None,
                    labels: label_strings(&l),
                },
                labels: l,
                identity,
                ip: Ipv4Addr::UNSPECIFIED,
                pod: true,
                node_ip_of: None,
                kube_apiserver: false,
                ports: PortNames::default(),
                audit: false,
            })
        }
    }
}

/// A node's address is the `host` to the pods on that node and a `remote-node` to the others.
fn fix_node_identity(r: &mut Resolved, other: &Resolved) {
    if r.node_ip_of.is_some() && r.node_ip_of == other.info.node {
        let (ip, apiserver) = (r.info.ip, r.kube_apiserver);
        *r = reserved("host", ip).expect("host is reserved");
        r.node_ip_of = other.info.node.clone();
        r.kube_apiserver = apiserver;
    }
}

/// One side of a trace: the source's egress or the destination's ingress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// `egress` or `ingress`.
    pub direction: String,
    /// The endpoint whose policy this is.
    pub endpoint: String,
    /// It is a pod, whose policy Vireo enforces (else this side has nothing to check).
    pub pod: bool,
    /// Default deny is in force: a policy selects the endpoint for this direction.
    pub enforced: bool,
    /// The verdict of this side.
    pub allowed: bool,
    /// The rules that decided it: the matching deny rules, or else the matching allow rules.
    pub rules: Vec<String>,
    /// Why, in words.
    pub reason: String,
    /// Warnings of the policies that select the endpoint for this direction.
    pub warnings: Vec<String>,
    /// The DNS names the endpoint learned the peer's address under (what its `toFQDNs` rules
    /// matched); only from a running agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fqdn_names: Vec<String>,
    /// The endpoint's policy is in audit mode (Cilium's `policy-audit-mode`): a denial of
    /// this side is reported, not enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
}

/// The names endpoint `.0` learned address `.1` under (a running agent's FQDN cache).
pub type Names<'a> = &'a dyn Fn(Ipv4Addr, Ipv4Addr) -> Vec<String>;

/// No names learned (offline traces).
fn no_names(_: Ipv4Addr, _: Ipv4Addr) -> Vec<String> {
    Vec::new()
}

/// The answer of `vireo policy trace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// Source.
    pub src: EndpointInfo,
    /// Destination.
    pub dst: EndpointInfo,
    /// Destination port and protocol.
    pub dport: PortProto,
    /// The source's egress.
    pub egress: Side,
    /// The destination's ingress.
    pub ingress: Side,
    /// `allowed` when both sides allow, else `denied`.
    pub verdict: String,
    /// Denied, and every side that denies is in audit mode: the packet passes (the denial is
    /// reported as `audit`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audited: bool,
    /// The rules that decided the verdict: when allowed, the allow rules of both sides; when
    /// denied, the rules of the side(s) that denied (none when a default deny did).
    pub rules: Vec<String>,
}

impl Trace {
    /// Whether policy allows the flow (audit mode aside).
    pub fn allowed(&self) -> bool {
        self.egress.allowed && self.ingress.allowed
    }

    /// Puts every pod side in audit mode (the agent's `policy_audit_mode`, or its node
    /// config's).
    pub fn audit_all(&mut self) {
        for s in [&mut self.egress, &mut self.ingress] {
            s.audit |= s.pod;
        }
        self.audited = audited(&self.egress, &self.ingress);
    }

    /// `{"verdict": …, "rules": […]}` (and `"audited": true` for a denial audit mode lets
    /// pass): what `--json` prints.
    pub fn short_json(&self) -> Value {
        let mut v = json!({"verdict": self.verdict, "rules": self.rules});
        if self.audited {
            v["audited"] = Value::Bool(true);
        }
        v
    }
}

fn side(
    policies: &[Policy],
    me: &Resolved,
    d: Direction,
    peer: &Resolved,
    dport: PortProto,
    names: Names,
) -> Side {
    let direction = match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    if !me.pod {
        return Side {
            direction: direction.into(),
            endpoint: me.info.name.clone(),
            pod: false,
            enforced: false,
            allowed: true,
            rules: Vec::new(),
            reason: format!("not a pod: Vireo enforces no {direction} policy for it"),
            warnings: Vec::new(),
            fqdn_names: Vec::new(),
            audit: false,
        };
    }
    let peer_info = PeerInfo {
        identity: peer.identity,
        labels: peer.labels.clone(),
        ip: peer.ip,
        kube_apiserver: peer.kube_apiserver,
        // The names the endpoint learned are the agent's (the fast path's cache): offline, a
        // trace judges `toFQDNs` rules as for an address not learned.
        names: names(me.ip, peer.ip),
    };
    // Ingress named ports are the endpoint's own (egress ones were resolved when read).
    let port_name = match d {
        Direction::Ingress => me.ports.name_of(dport.proto, dport.port),
        Direction::Egress => None,
    };
    let dec = decide_named(
        policies,
        &me.labels,
        d,
        &peer_info,
        dport.proto,
        dport.port,
        port_name,
    );
    let warnings = selecting(policies, &me.labels)
        .filter(|p| p.enforces(d) || !p.rules(d).is_empty())
        .flat_map(|p| {
            p.warnings
                .iter()
                .map(move |w| format!("{} {}: {w}", p.origin.kind, p.origin.name))
        })
        .collect();
    Side {
        direction: direction.into(),
        endpoint: me.info.name.clone(),
        pod: true,
        enforced: dec.enforced,
        allowed: dec.verdict == Verdict::Allowed,
        rules: dec.rules.iter().map(ToString::to_string).collect(),
        reason: dec.reason(),
        warnings,
        fqdn_names: peer_info.names,
        audit: me.audit,
    }
}

/// Denied, by sides in audit mode only.
fn audited(egress: &Side, ingress: &Side) -> bool {
    let denying = || [egress, ingress].into_iter().filter(|s| !s.allowed);
    denying().next().is_some() && denying().all(|s| s.audit)
}

fn trace_resolved(
    policies: &[Policy],
    src: &Resolved,
    dst: &Resolved,
    dport: PortProto,
    names: Names,
) -> Trace {
    let egress = side(policies, src, Direction::Egress, dst, dport, names);
    let ingress = side(policies, dst, Direction::Ingress, src, dport, names);
    let allowed = egress.allowed && ingress.allowed;
    let rules = [&egress, &ingress]
        .into_iter()
        .filter(|s| allowed || !s.allowed)
        .flat_map(|s| s.rules.iter().cloned())
        .collect();
    Trace {
        src: src.info.clone(),
        dst: dst.info.clone(),
        dport,
        verdict: if allowed { "allowed" } else { "denied" }.into(),
        audited: audited(&egress, &ingress),
        rules,
        egress,
        ingress,
    }
}

/// Traces one flow from `src` to `dst` on `dport`.
pub fn trace(
    view: &ClusterView,
    policies: &[Policy],
    src: &EndpointSpec,
    dst: &EndpointSpec,
    dport: PortProto,
) -> Result<Trace> {
    trace_with(view, policies, src, dst, dport, &no_names)
}

/// [`trace`] with the names endpoints learned from DNS answers (`toFQDNs` rules): a running
/// agent's trace says which names allowed an address.
pub fn trace_with(
    view: &ClusterView,
    policies: &[Policy],
    src: &EndpointSpec,
    dst: &EndpointSpec,
    dport: PortProto,
    names: Names,
) -> Result<Trace> {
    let (mut s, mut d) = (resolve(view, src)?, resolve(view, dst)?);
    fix_node_identity(&mut s, &d);
    fix_node_identity(&mut d, &s);
    Ok(trace_resolved(policies, &s, &d, dport, names))
}

/// Every pod to every pod (itself included) on `dport`:
/// `{"pairs":[{"src","dst","verdict","rules"}]}`.
pub fn all_pairs(view: &ClusterView, policies: &[Policy], dport: PortProto) -> Value {
    let pods: Vec<Resolved> = view.pods.values().map(resolved_pod).collect();
    let mut pairs = Vec::with_capacity(pods.len() * pods.len());
    for s in &pods {
        for d in &pods {
            let t = trace_resolved(policies, s, d, dport, &no_names);
            pairs.push(json!({"src": s.info.name, "dst": d.info.name, "verdict": t.verdict, "rules": t.rules}));
        }
    }
    json!({ "pairs": pairs })
}

/// Reads a manifest directory for offline use: the cluster and its policies. Problems in
/// single documents are logged as warnings; a missing directory is an error.
pub fn load_offline(dir: &Path) -> Result<(ClusterView, PolicySet)> {
    if !dir.is_dir() {
        bail!("--manifests {}: not a directory", dir.display());
    }
    let m = source::load_dir(dir);
    for e in &m.errors {
        tracing::warn!("manifests: {e}");
    }
    Ok((ClusterView::from_manifests(&m), crate::netpol::policies(&m)))
}

/// The rules of one direction of a policy, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirSummary {
    /// The policy puts the endpoints it selects into default deny for this direction.
    pub enforced: bool,
    /// Allow rules.
    pub allow: usize,
    /// Deny rules.
    pub deny: usize,
}

/// One policy as `vireo policy get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    /// `NetworkPolicy`, `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy`.
    pub kind: String,
    /// `namespace/name`, or the name of a cluster-wide policy (with `specs[i]` when it has
    /// several specs).
    pub name: String,
    /// The endpoints it selects, as a selector.
    pub selector: String,
    /// For host policies: the nodes it selects.
    pub node_selector: Option<String>,
    /// The pods it selects now.
    pub endpoints: Vec<String>,
    /// Ingress.
    pub ingress: DirSummary,
    /// Egress.
    pub egress: DirSummary,
    /// What the user should know (L7 rules not enforced, fields ignored).
    pub warnings: Vec<String>,
}

/// The answer of `vireo policy get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyList {
    /// The policies.
    pub policies: Vec<PolicySummary>,
    /// Problems with policy objects as a whole (policies left out); each policy's own warnings
    /// are in its [`PolicySummary::warnings`].
    pub warnings: Vec<String>,
}

fn dir_summary(p: &Policy, d: Direction) -> DirSummary {
    let rules = p.rules(d);
    DirSummary {
        enforced: p.enforces(d),
        allow: rules.iter().filter(|r| r.action == Action::Allow).count(),
        deny: rules.iter().filter(|r| r.action == Action::Deny).count(),
    }
}

/// The policies in force.
pub fn list(view: &ClusterView, set: &PolicySet) -> PolicyList {
    let policies = set
        .policies
        .iter()
        .map(|p| {
            let name = if p.origin.rule.is_empty() {
                p.origin.name.clone()
            } else {
                format!("{} {}", p.origin.name, p.origin.rule)
            };
            let endpoints = if p.node_selector.is_some() {
                Vec::new()
            } else {
                view.pods
                    .values()
                    .filter(|pod| p.subject.matches(&pod.labels))
                    .map(|pod| format!("{}/{}", pod.namespace, pod.name))
                    .collect()
            };
            PolicySummary {
                kind: p.origin.kind.clone(),
                name,
                selector: p.subject.to_string(),
                node_selector: p.node_selector.as_ref().map(ToString::to_string),
                endpoints,
                ingress: dir_summary(p, Direction::Ingress),
                egress: dir_summary(p, Direction::Egress),
                warnings: p.warnings.clone(),
            }
        })
        .collect();
    // The set's warnings repeat each policy's own (as `Kind name (file:line): warning`); keep
    // the others: policies left out as a whole.
    let own = |w: &str| {
        set.policies.iter().any(|p| {
            w.starts_with(&format!("{} {} (", p.origin.kind, p.origin.name))
                && p.warnings.iter().any(|pw| w.ends_with(&format!(": {pw}")))
        })
    };
    PolicyList {
        policies,
        warnings: set.warnings.iter().filter(|w| !own(w)).cloned().collect(),
    }
}

fn verdict_word(allowed: bool) -> &'static str {
    if allowed {
        "ALLOWED"
    } else {
        "DENIED"
    }
}

fn endpoint_line(e: &EndpointInfo) -> String {
    let mut s = e.name.clone();
    if let Some(ip) = e.ip {
        if !e.name.starts_with(&ip.to_string()) {
            let _ = write!(s, "  {ip}");
        }
    }
    let _ = write!(s, "  identity {}", e.identity);
    if let Some(n) = &e.node {
        let _ = write!(s, "  on {n}");
    }
    s
}

/// A trace for people.
pub fn render_trace(t: &Trace) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "From:    {}", endpoint_line(&t.src));
    let _ = writeln!(o, "To:      {}", endpoint_line(&t.dst));
    let _ = writeln!(o, "Port:    {}", t.dport);
    for (title, s) in [("Egress from", &t.egress), ("Ingress to", &t.ingress)] {
        let _ = writeln!(o, "\n{title} {}: {}", s.endpoint, verdict_word(s.allowed));
        if s.rules.is_empty() {
            let _ = writeln!(o, "  {}", s.reason);
        } else {
            for r in &s.rules {
                let _ = writeln!(o, "  {r}");
            }
        }
        if !s.fqdn_names.is_empty() {
            let _ = writeln!(o, "  peer known by DNS as: {}", s.fqdn_names.join(", "));
        }
        if s.audit {
            let _ = writeln!(o, "  audit mode: a denial is reported, not enforced");
        }
        for w in &s.warnings {
            let _ = writeln!(o, "  warning: {w}");
        }
    }
    let _ = writeln!(o, "\nFinal verdict: {}", verdict_word(t.allowed()));
    if t.audited {
        let _ = writeln!(
            o,
            "Audit mode: the packet passes, the denial is reported as audit"
        );
    }
    o
}

fn dir_words(d: &DirSummary) -> String {
    let rules = |n: usize, what: &str| format!("{n} {what} rule{}", if n == 1 { "" } else { "s" });
    let mut s = if d.enforced {
        "default deny".to_string()
    } else {
        "not enforced".to_string()
    };
    if d.allow > 0 || d.deny > 0 || d.enforced {
        let _ = write!(
            s,
            "; {}, {}",
            rules(d.allow, "allow"),
            rules(d.deny, "deny")
        );
    }
    s
}

/// The policy list for people.
pub fn render_list(l: &PolicyList) -> String {
    let mut o = String::new();
    if l.policies.is_empty() {
        o.push_str("No policies: every endpoint allows everything.\n");
    }
    for p in &l.policies {
        let _ = writeln!(o, "{} {}", p.kind, p.name);
        match &p.node_selector {
            Some(n) => {
                let _ = writeln!(o, "  selects:  nodes {n}");
            }
            None => {
                let eps = if p.endpoints.is_empty() {
                    "no pod now".to_string()
                } else {
                    p.endpoints.join(", ")
                };
                let _ = writeln!(o, "  selects:  {} ({eps})", p.selector);
            }
        }
        let _ = writeln!(o, "  ingress:  {}", dir_words(&p.ingress));
        let _ = writeln!(o, "  egress:   {}", dir_words(&p.egress));
        for w in &p.warnings {
            let _ = writeln!(o, "  warning:  {w}");
        }
    }
    for w in &l.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dport_parsing() {
        assert_eq!(
            parse_dport("80/tcp"),
            Ok(PortProto {
                port: 80,
                proto: TCP
            })
        );
        assert_eq!(parse_dport("53/UDP").unwrap().proto, UDP);
        assert_eq!(parse_dport("8080").unwrap().proto, TCP);
        assert_eq!(parse_dport("3868/sctp").unwrap().to_string(), "3868/SCTP");
        for bad in ["0/TCP", "70000/TCP", "x/TCP", "80/gre", "80/", ""] {
            assert!(parse_dport(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_dport("443/udp").unwrap().to_string(), "443/UDP");
    }

    #[test]
    fn answers_round_trip() {
        // An answer from an empty cluster: world to host, nothing to enforce.
        let view = ClusterView::default();
        let t = trace(
            &view,
            &[],
            &EndpointSpec::parse_labels("reserved:world", None).unwrap(),
            &EndpointSpec::parse_labels("reserved:host", None).unwrap(),
            parse_dport("22").unwrap(),
        )
        .unwrap();
        assert!(t.allowed() && !t.egress.pod && !t.ingress.pod);
        let back: Trace = serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        assert_eq!(t.short_json(), json!({"verdict": "allowed", "rules": []}));
        let err = trace(
            &view,
            &[],
            &EndpointSpec::parse_pod("x/a").unwrap(),
            &EndpointSpec::parse_pod("x/b").unwrap(),
            parse_dport("80").unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown pod x/a"), "{err}");
    }

    #[test]
    fn audit_mode_shows_and_lets_denials_pass() {
        let text = concat!(
            crate::cluster::two_nodes_yaml!(),
            "---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, labels: {app: a},
  annotations: {policy.vireo.io/audit-mode: 'true'}}
spec: {nodeName: node-1, containers: []}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {app: b}}
spec: {nodeName: node-2, containers: []}
status: {podIP: 10.244.2.10}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress]}
"
        );
        let mut m = crate::source::Manifests::default();
        crate::source::load_text(&mut m, text, Path::new("t.yaml"));
        let (view, set) = (ClusterView::from_manifests(&m), crate::netpol::policies(&m));
        let tr = |src: &str, dst: &str| {
            trace(
                &view,
                &set.policies,
                &EndpointSpec::parse_pod(src).unwrap(),
                &EndpointSpec::parse_pod(dst).unwrap(),
                parse_dport("80").unwrap(),
            )
            .unwrap()
        };
        // a's policy is audited (its annotation): b → a is denied by policy, and passes.
        let t = tr("b", "a");
        assert!(!t.allowed() && t.audited && t.ingress.audit);
        assert_eq!(
            t.short_json(),
            json!({"verdict": "denied", "rules": [], "audited": true})
        );
        assert!(render_trace(&t).contains("Audit mode: the packet passes"));
        // b's is enforced: a → b is denied and dropped.
        let mut t = tr("a", "b");
        assert!(!t.allowed() && !t.audited && !t.ingress.audit);
        assert_eq!(t.short_json(), json!({"verdict": "denied", "rules": []}));
        // The agent's policy_audit_mode puts every endpoint in audit mode.
        t.audit_all();
        assert!(t.audited && t.ingress.audit);
    }

    #[test]
    fn endpoint_specs() {
        assert_eq!(
            EndpointSpec::parse_pod("x/a").unwrap(),
            EndpointSpec::Pod {
                namespace: "x".into(),
                name: "a".into()
            }
        );
        assert_eq!(
            EndpointSpec::parse_pod("web").unwrap(),
            EndpointSpec::Pod {
                namespace: "default".into(),
                name: "web".into()
            }
        );
        assert!(matches!(
            EndpointSpec::parse_pod("8.8.8.8").unwrap(),
            EndpointSpec::Ip { .. }
        ));
        assert!(EndpointSpec::parse_pod("a/b/c").is_err());
        assert!(EndpointSpec::parse_pod("/b").is_err());
        assert_eq!(
            EndpointSpec::parse_labels("app=web, k8s:tier=db", None).unwrap(),
            EndpointSpec::Labels {
                namespace: "default".into(),
                labels: vec![("app".into(), "web".into()), ("tier".into(), "db".into())]
            }
        );
        assert_eq!(
            EndpointSpec::parse_labels("app=web,k8s:io.kubernetes.pod.namespace=prod", None)
                .unwrap(),
            EndpointSpec::Labels {
                namespace: "prod".into(),
                labels: vec![("app".into(), "web".into())]
            }
        );
        assert!(
            EndpointSpec::parse_labels("app=web,io.kubernetes.pod.namespace=a", Some("b")).is_err()
        );
        assert!(EndpointSpec::parse_labels("app", None).is_err());
        assert!(EndpointSpec::parse_labels("reserved:host,app=x", None).is_err());
        assert!(EndpointSpec::parse_labels("cidr:1.2.3.4/32=", None).is_err());
        assert_eq!(
            EndpointSpec::parse_labels("reserved:host", None).unwrap(),
            EndpointSpec::Labels {
                namespace: "default".into(),
                labels: vec![("reserved:host".into(), String::new())]
            }
        );
    }
}
