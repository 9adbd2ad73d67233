//! Kubernetes Services as the manifests describe them, reduced to service ports with their
//! frontends and backends, the way kube-proxy and Cilium read them:
//!
//! - Types ClusterIP, NodePort and LoadBalancer; ExternalName and headless (`clusterIP: None`)
//!   Services have nothing to balance and are left out with a warning. One service port per
//!   `spec.ports[]` entry, TCP or UDP (SCTP is left out with a warning).
//! - Frontends: the cluster IP on `port`; this node's underlay address on `nodePort` (types
//!   NodePort and LoadBalancer); every `spec.externalIPs` and, for type LoadBalancer, every
//!   `status.loadBalancer.ingress[].ip` (not those with `ipMode: Proxy`) on `port`.
//! - Backends: from the EndpointSlices labelled `kubernetes.io/service-name` in the Service's
//!   namespace (IPv4, the port matched by name). A Service with a selector and no EndpointSlice
//!   gets the slice Kubernetes' EndpointSlice controller would write, derived from its pods.
//!   Endpoint conditions as kube-proxy reads them: ready (nil = ready) takes new flows;
//!   not ready but serving and terminating keeps its flows and gets no new ones; anything else
//!   is left out.
//! - `sessionAffinity: ClientIP` (timeout default 10800 s), `loadBalancerSourceRanges` (a bad
//!   range leaves the whole Service out: fail closed), `externalTrafficPolicy: Local`.
//!
//! A bad field never stops the rest: it is one warning line naming the object and the field.
//! What depends on the node looking (its NodePort address, which backends are local) is
//! applied last, by [`ServicePortView::spec`]. [`ServiceTableBuilder`] turns the specs into the
//! fast path's [`ServiceTable`], reusing the Maglev tables of unchanged services.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use vireo_lb::service::{TCP, UDP};
use vireo_lb::{Backend, Frontend, FrontendKind, Service, ServiceSpec, ServiceTable};

use crate::cluster::PodView;
use crate::source::Manifests;

/// sessionAffinityConfig.clientIP.timeoutSeconds when not given (Kubernetes' default).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// The longest affinity timeout Kubernetes allows.
pub const MAX_AFFINITY_TIMEOUT: u32 = 86400;
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A backend of a service port, as every node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    /// Address.
    pub ip: Ipv4Addr,
    /// Port (the target port, resolved).
    pub port: u16,
    /// The node it runs on, if known.
    pub node: Option<String>,
    /// Serving but terminating: keeps its flows, gets no new ones.
    pub terminating: bool,
}

/// One port of one Service, before a node applies its own address and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortView {
    /// `namespace/name`.
    pub name: String,
    /// The port's name (may be empty).
    pub port_name: String,
    /// The service port.
    pub port: u16,
    /// IP protocol (6 or 17).
    pub proto: u8,
    /// `spec.clusterIP`, when set.
    pub cluster_ip: Option<Ipv4Addr>,
    /// `nodePort` (types NodePort and LoadBalancer only).
    pub node_port: Option<u16>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` (type LoadBalancer only).
    pub lb_ips: Vec<Ipv4Addr>,
    /// Backends, sorted by address and port, each once.
    pub backends: Vec<EndpointView>,
    /// sessionAffinity ClientIP: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// loadBalancerSourceRanges.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// externalTrafficPolicy Local (on an externally reachable Service).
    pub external_local: bool,
}

impl ServicePortView {
    /// The service port as node `me` serves it: a NodePort frontend on `node_ip` (none if
    /// it is not known), backends on `me` marked local.
    pub fn spec(&self, me: &str, node_ip: Option<Ipv4Addr>) -> ServiceSpec {
        let fe = |kind, ip, port| Frontend {
            kind,
            ip,
            port,
            proto: self.proto,
        };
        let mut frontends = Vec::new();
        if let Some(ip) = self.cluster_ip {
            frontends.push(fe(FrontendKind::ClusterIp, ip, self.port));
        }
        if let (Some(port), Some(ip)) = (self.node_port, node_ip) {
            frontends.push(fe(FrontendKind::NodePort, ip, port));
        }
        for ip in &self.external_ips {
            frontends.push(fe(FrontendKind::ExternalIp, *ip, self.port));
        }
        for ip in &self.lb_ips {
            frontends.push(fe(FrontendKind::LoadBalancer, *ip, self.port));
        }
        let backends = self
            .backends
            .iter()
            .map(|b| Backend {
                ip: b.ip,
                port: b.port,
                local: b.node.as_deref() == Some(me),
                terminating: b.terminating,
                weight: 1,
            })
            .collect();
        ServiceSpec {
            name: self.name.clone(),
            port_name: self.port_name.clone(),
            port: self.port,
            proto: self.proto,
            frontends,
            backends,
            affinity_timeout: self.affinity_timeout,
            source_ranges: self.source_ranges.clone(),
            external_local: self.external_local,
        }
    }
}

/// The service ports of every Service in `m`, with backends from its EndpointSlices or, for
/// a Service with a selector and no slice, from `pods`. Problems are added to `warnings`,
/// one line each.
pub fn service_ports(
    m: &Manifests,
    pods: &BTreeMap<(String, String), PodView>,
    warnings: &mut Vec<String>,
) -> Vec<ServicePortView> {
    let mut slices: BTreeMap<(String, String), Vec<Slice>> = BTreeMap::new();
    let mut labelled: BTreeSet<(String, String)> = BTreeSet::new();
    for ((ns, name), s) in &m.endpoint_slices {
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue; // not managed for a Service: kube-proxy ignores it too
        };
        let key = (ns.clone(), svc.clone());
        labelled.insert(key.clone());
        if let Some(parsed) = Slice::parse(&format!("{ns}/{name}"), s, warnings) {
            slices.entry(key).or_default().push(parsed);
        }
    }
    let mut out = Vec::new();
    for ((ns, name), svc) in &m.services {
        let key = (ns.clone(), name.clone());
        let from = if labelled.contains(&key) {
            Backends::Slices(slices.get(&key).map(Vec::as_slice).unwrap_or(&[]))
        } else {
            Backends::Pods(pods)
        };
        out.extend(one_service(ns, name, svc, from, warnings));
    }
    out.sort_by(|a, b| (&a.name, a.port, a.proto).cmp(&(&b.name, b.port, b.proto)));
    out
}

/// Where a Service's backends come from.
enum Backends<'a> {
    /// Its EndpointSlices (IPv4 ones, parsed).
    Slices(&'a [Slice]),
    /// No slice: derived from the pods its selector matches.
    Pods(&'a BTreeMap<(String, String), PodView>),
}

/// An IPv4 EndpointSlice, checked.
struct Slice {
    /// (name, protocol, port) of each usable port.
    ports: Vec<(String, u8, u16)>,
    /// Address, node, terminating of each usable endpoint.
    endpoints: Vec<(Ipv4Addr, Option<String>, bool)>,
}

impl Slice {
    /// `None` for slices of another address type.
    fn parse(key: &str, s: &EndpointSlice, warnings: &mut Vec<String>) -> Option<Slice> {
        let mut warn = |field: String, msg: String| {
            warnings.push(format!("endpointslice {key}: {field}: {msg}"));
        };
        match s.address_type.as_str() {
            "IPv4" => {}
            "IPv6" | "FQDN" => return None, // not for an IPv4 dataplane
            other => {
                warn(
                    "addressType".into(),
                    format!("{other:?} is not IPv4, IPv6 or FQDN; slice left out"),
                );
                return None;
            }
        }
        let mut ports = Vec::new();
        for (i, p) in s.ports.iter().flatten().enumerate() {
            let Some(proto) = protocol(p.protocol.as_deref()) else {
                if p.protocol.as_deref() != Some("SCTP") {
                    warn(
                        format!("ports[{i}].protocol"),
                        format!("{:?} is not TCP or UDP; port left out", p.protocol),
                    );
                }
                continue;
            };
            let Some(port) = p.port.and_then(port_number) else {
                warn(
                    format!("ports[{i}].port"),
                    format!("{:?} is not a port number (1-65535); port left out", p.port),
                );
                continue;
            };
            ports.push((p.name.clone().unwrap_or_default(), proto, port));
        }
        let mut endpoints = Vec::new();
        for (i, e) in s.endpoints.iter().enumerate() {
            // Consumers use the first address (the others are for future use).
            let Some(a) = e.addresses.first() else {
                warn(
                    format!("endpoints[{i}].addresses"),
                    "empty; endpoint left out".into(),
                );
                continue;
            };
            let Ok(ip) = a.parse::<Ipv4Addr>() else {
                warn(
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{a:?} is not an IPv4 address; endpoint left out"),
                );
                continue;
            };
            let c = e.conditions.as_ref();
            let class = classify(
                c.and_then(|c| c.ready).unwrap_or(true),
                c.and_then(|c| c.serving).unwrap_or(true),
                c.and_then(|c| c.terminating).unwrap_or(false),
            );
            if let Some(terminating) = class {
                endpoints.push((ip, e.node_name.clone(), terminating));
            }
        }
        Some(Slice { ports, endpoints })
    }
}

/// An endpoint's part, from its conditions (as kube-proxy reads them): `Some(false)` takes
/// new flows (ready), `Some(true)` keeps its flows only (serving and terminating), `None` is
/// left out.
fn classify(ready: bool, serving: bool, terminating: bool) -> Option<bool> {
    if ready {
        Some(false)
    } else if serving && terminating {
        Some(true)
    } else {
        None
    }
}

/// TCP or UDP (the default is TCP); `None` for anything else.
pub(crate) fn protocol(p: Option<&str>) -> Option<u8> {
    match p {
        None | Some("TCP") => Some(TCP),
        Some("UDP") => Some(UDP),
        _ => None,
    }
}

/// A port number in 1..=65535.
pub(crate) fn port_number(p: impl TryInto<u16>) -> Option<u16> {
    p.try_into().ok().filter(|p| *p != 0)
}

/// A service port's `targetPort`.
enum Target {
    Number(u16),
    Name(String),
}

/// The service ports of one Service.
fn one_service(
    ns: &str,
    name: &str,
    svc: &K8sService,
    from: Backends<'_>,
    warnings: &mut Vec<String>,
) -> Vec<ServicePortView> {
    let full = format!("{ns}/{name}");
    let mut warn = |field: &str, msg: String| {
        warnings.push(format!("service {full}: {field}: {msg}"));
    };
    let Some(spec) = svc.spec.as_ref() else {
        warn("spec", "missing; service left out".into());
        return Vec::new();
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    match ty {
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        "ExternalName" => {
            warn(
                "spec.type",
                "ExternalName is answered by DNS, not balanced; service left out".into(),
            );
            return Vec::new();
        }
        other => {
            warn(
                "spec.type",
                format!("{other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName; service left out"),
            );
            return Vec::new();
        }
    }

    // Cluster IP: spec.clusterIP, or the first IPv4 of spec.clusterIPs (dual stack).
    let written: Vec<&str> = spec
        .cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten())
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    if written.contains(&"None") {
        warn(
            "spec.clusterIP",
            "None (headless): nothing to balance; service left out".into(),
        );
        return Vec::new();
    }
    let cluster_ip = match written.first() {
        None => {
            warn("spec.clusterIP", "not set; no ClusterIP frontend".into());
            None
        }
        Some(first) => match written.iter().find_map(|s| s.parse::<Ipv4Addr>().ok()) {
            Some(ip) => Some(ip),
            None if first.parse::<std::net::IpAddr>().is_ok() => {
                warn(
                    "spec.clusterIP",
                    format!("{first:?} is not IPv4 (IPv6 is not supported); service left out"),
                );
                return Vec::new();
            }
            None => {
                warn(
                    "spec.clusterIP",
                    format!("{first:?} is not an IP address; service left out"),
                );
                return Vec::new();
            }
        },
    };

    // Fail closed: a range that cannot be read would widen who may connect.
    let mut source_ranges = Vec::new();
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        match r.trim().parse::<Ipv4Net>() {
            Ok(n) => source_ranges.push((n.network(), n.prefix_len())),
            Err(_) => {
                warn(
                    &format!("spec.loadBalancerSourceRanges[{i}]"),
                    format!("{r:?} is not an IPv4 CIDR; service left out"),
                );
                return Vec::new();
            }
        }
    }

    let mut external_ips = Vec::new();
    for (i, a) in spec.external_ips.iter().flatten().enumerate() {
        match a.parse::<Ipv4Addr>() {
            Ok(ip) => external_ips.push(ip),
            Err(_) => warn(
                &format!("spec.externalIPs[{i}]"),
                format!("{a:?} is not an IPv4 address; left out"),
            ),
        }
    }
    let mut lb_ips = Vec::new();
    if ty == "LoadBalancer" {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        for (i, g) in ingress.into_iter().flatten().enumerate() {
            // ipMode Proxy: the load balancer proxies to the nodes; its address is not ours.
            let (Some(a), false) = (g.ip.as_deref(), g.ip_mode.as_deref() == Some("Proxy")) else {
                continue;
            };
            match a.parse::<Ipv4Addr>() {
                Ok(ip) => lb_ips.push(ip),
                Err(_) => warn(
                    &format!("status.loadBalancer.ingress[{i}].ip"),
                    format!("{a:?} is not an IPv4 address; left out"),
                ),
            }
        }
    }

    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("" | "None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match t {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Some(t),
                    _ => {
                        warn(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!(
                                "{t} is outside 1..={MAX_AFFINITY_TIMEOUT}; {DEFAULT_AFFINITY_TIMEOUT} used"
                            ),
                        );
                        Some(DEFAULT_AFFINITY_TIMEOUT)
                    }
                },
            }
        }
        Some(other) => {
            warn(
                "spec.sessionAffinity",
                format!("{other:?} is not None or ClientIP; None used"),
            );
            None
        }
    };

    // As Kubernetes: the policy applies to Services reachable from outside.
    let external = ty != "ClusterIP" || !external_ips.is_empty();
    let external_local = match spec.external_traffic_policy.as_deref() {
        None | Some("" | "Cluster") => false,
        Some("Local") => external,
        Some(other) => {
            warn(
                "spec.externalTrafficPolicy",
                format!("{other:?} is not Cluster or Local; Cluster used"),
            );
            false
        }
    };
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty());
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);

    let base = ServicePortView {
        name: full.clone(),
        port_name: String::new(),
        port: 0,
        proto: TCP,
        cluster_ip,
        node_port: None,
        external_ips,
        lb_ips,
        backends: Vec::new(),
        affinity_timeout,
        source_ranges,
        external_local,
    };
    let mut out: Vec<ServicePortView> = Vec::new();
    // Without slices, the pods the selector matches serve every port (none without a
    // selector: the endpoints are managed elsewhere).
    let selected: Vec<&PodView> = match (&from, selector) {
        (Backends::Pods(pods), Some(sel)) => pods
            .values()
            .filter(|p| {
                p.namespace == ns && sel.iter().all(|(k, v)| p.pod_labels.get(k) == Some(v))
            })
            .collect(),
        _ => Vec::new(),
    };
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() {
        warn("spec.ports", "no ports; service left out".into());
    }
    for (i, p) in ports.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let Some(proto) = protocol(p.protocol.as_deref()) else {
            let what = match p.protocol.as_deref() {
                Some("SCTP") => "SCTP is not supported".to_string(),
                other => format!("{other:?} is not TCP or UDP"),
            };
            warn(&field("protocol"), format!("{what}; port left out"));
            continue;
        };
        let Some(port) = port_number(p.port) else {
            warn(
                &field("port"),
                format!("{} is not a port number (1-65535); port left out", p.port),
            );
            continue;
        };
        let node_port = match (ty, p.node_port) {
            ("ClusterIP", _) | (_, None) => None,
            (_, Some(n)) => match port_number(n) {
                Some(n) => Some(n),
                None => {
                    warn(
                        &field("nodePort"),
                        format!("{n} is not a port number (1-65535); port left out"),
                    );
                    continue;
                }
            },
        };
        let target = match &p.target_port {
            None => Target::Number(port),
            Some(IntOrString::Int(n)) => match port_number(*n) {
                Some(n) => Target::Number(n),
                None => {
                    warn(
                        &field("targetPort"),
                        format!("{n} is not a port number (1-65535); port left out"),
                    );
                    continue;
                }
            },
            Some(IntOrString::String(s)) if s.is_empty() => Target::Number(port),
            Some(IntOrString::String(s)) => match s.parse::<i32>().ok().and_then(port_number) {
                Some(n) => Target::Number(n),
                None => Target::Name(s.clone()),
            },
        };
        if out.iter().any(|o| o.port == port && o.proto == proto) {
            warn(
                &field("port"),
                format!("{port} is listed twice for this protocol; port left out"),
            );
            continue;
        }
        let port_name = p.name.clone().unwrap_or_default();
        let backends = match &from {
            Backends::Slices(slices) => from_slices(slices, &port_name, proto),
            Backends::Pods(_) => selected
                .iter()
                .filter_map(|pod| from_pod(pod, &target, proto, publish_not_ready))
                .collect(),
        };
        out.push(ServicePortView {
            port_name,
            port,
            proto,
            node_port,
            backends: dedup(backends),
            ..base.clone()
        });
    }
    out
}

/// The endpoints of `slices` for the service port named `port_name`.
fn from_slices(slices: &[Slice], port_name: &str, proto: u8) -> Vec<EndpointView> {
    let mut v = Vec::new();
    for s in slices {
        // The slice's port of the same name (both unnamed for a single port).
        let Some((_, _, target)) = s
            .ports
            .iter()
            .find(|(n, pr, _)| n == port_name && *pr == proto)
        else {
            continue;
        };
        v.extend(
            s.endpoints
                .iter()
                .map(|(ip, node, terminating)| EndpointView {
                    ip: *ip,
                    port: *target,
                    node: node.clone(),
                    terminating: *terminating,
                }),
        );
    }
    v
}

/// The endpoint the EndpointSlice controller would write for `pod`, if it serves.
fn from_pod(
    pod: &PodView,
    target: &Target,
    proto: u8,
    publish_not_ready: bool,
) -> Option<EndpointView> {
    if pod.terminal {
        return None;
    }
    let serving = pod.ready || publish_not_ready;
    let ready = publish_not_ready || (pod.ready && !pod.terminating);
    let terminating = classify(ready, serving, pod.terminating)?;
    let port = match target {
        Target::Number(n) => *n,
        // A pod without a port of that name is left out, as Kubernetes does.
        Target::Name(want) => {
            pod.ports
                .iter()
                .find(|c| c.name == *want && c.proto == proto)?
                .port
        }
    };
    Some(EndpointView {
        ip: pod.ip,
        port,
        node: Some(pod.node.clone()),
        terminating,
    })
}

/// Sorted by address and port, each once (Maglev names backends `ip:port`); an endpoint
/// listed twice takes new flows if either listing does.
fn dedup(mut v: Vec<EndpointView>) -> Vec<EndpointView> {
    v.sort_by_key(|a| (a.ip, a.port, a.terminating));
    v.dedup_by(|later, first| later.ip == first.ip && later.port == first.port);
    v
}

/// Builds the fast path's [`ServiceTable`] from service specs, keeping each built [`Service`]
/// so that the next build reuses it (Maglev tables take milliseconds) when its spec, the
/// table size and the seed are unchanged.
#[derive(Debug, Default)]
pub struct ServiceTableBuilder {
    /// Table size and seed of the services in `built`.
    params: Option<(u32, u64)>,
    /// The last build's services by (name, port, protocol).
    built: BTreeMap<(String, u16, u8), Arc<Service>>,
}

/// What one build gave.
#[derive(Debug, Clone, Default)]
pub struct BuiltServices {
    /// The table to publish.
    pub table: ServiceTable,
    /// Services whose Maglev tables were built.
    pub built: usize,
    /// Services taken over from the previous build.
    pub reused: usize,
    /// Services left out (their tables could not be built) and frontends claimed twice, one
    /// line each.
    pub warnings: Vec<String>,
}

impl ServiceTableBuilder {
    /// Builds the table of `specs` with Maglev tables of `m` slots (one of
    /// [`vireo_lb::PRIMES`]) and hash seed `seed`. A frontend claimed by two service ports
    /// stays with the first (in the order of `specs`).
    pub fn build(&mut self, specs: Vec<ServiceSpec>, m: u32, seed: u64) -> BuiltServices {
        if self.params != Some((m, seed)) {
            self.built.clear();
            self.params = Some((m, seed));
        }
        let mut out = BuiltServices::default();
        let mut next = BTreeMap::new();
        let mut services = Vec::new();
        let mut claimed: BTreeMap<(Ipv4Addr, u16, u8), String> = BTreeMap::new();
        for spec in specs {
            let key = (spec.name.clone(), spec.port, spec.proto);
            let id = format!("{}:{}/{}", spec.name, spec.port, proto_name(spec.proto));
            for f in &spec.frontends {
                let fkey = (f.ip, f.port, f.proto);
                match claimed.get(&fkey) {
                    Some(first) if *first != id => out.warnings.push(format!(
                        "service {id}: frontend {}:{}/{} is already {first}'s; left to it",
                        f.ip,
                        f.port,
                        proto_name(f.proto)
                    )),
                    Some(_) => {}
                    None => {
                        claimed.insert(fkey, id.clone());
                    }
                }
            }
            let svc = match self.built.get(&key) {
                Some(s) if s.spec == spec => {
                    out.reused += 1;
                    s.clone()
                }
                _ => match Service::new(spec, m, seed) {
                    Ok(s) => {
                        out.built += 1;
                        Arc::new(s)
                    }
                    Err(e) => {
                        out.warnings
                            .push(format!("service {id}: {e}; service left out"));
                        continue;
                    }
                },
            };
            next.insert(key, svc.clone());
            services.push(svc);
        }
        self.built = next;
        out.table = ServiceTable::new(services);
        out
    }
}

/// A frontend kind as Kubernetes spells it: "ClusterIP", "NodePort", "ExternalIP",
/// "LoadBalancer".
pub fn frontend_kind_name(k: FrontendKind) -> &'static str {
    match k {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::ExternalIp => "ExternalIP",
        FrontendKind::LoadBalancer => "LoadBalancer",
    }
}

/// "TCP", "UDP", or the protocol number.
pub fn proto_name(p: u8) -> String {
    match p {
        TCP => "TCP".into(),
        UDP => "UDP".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterView;
    use crate::source::load_text;

    const NODES: &str = crate::cluster::two_nodes_yaml!();

    const ME: &str = "node-1";

    fn node_ip() -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(192, 168, 100, 11))
    }

    fn view(objects: &str) -> ClusterView {
        let mut m = Manifests::default();
        load_text(
            &mut m,
            &format!("{NODES}---\n{objects}"),
            std::path::Path::new("t.yaml"),
        );
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        ClusterView::from_manifests(&m)
    }

    fn specs(v: &ClusterView) -> Vec<ServiceSpec> {
        v.service_specs(ME, node_ip())
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn backends(s: &ServiceSpec) -> Vec<(String, bool, bool)> {
        s.backends
            .iter()
            .map(|b| (b.name(), b.local, b.terminating))
            .collect()
    }

    fn warned(v: &ClusterView, what: &[&str]) {
        assert!(
            v.warnings
                .iter()
                .any(|w| what.iter().all(|x| w.contains(x))),
            "no warning with {what:?} in {:#?}",
            v.warnings
        );
    }

    fn pod(name: &str, node: &str, ip: &str, extra: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: web}}}}\n\
             spec:\n  nodeName: {node}\n  containers:\n    - name: c\n      image: i\n      ports: [{{name: http, containerPort: 8080}}, {{name: dns, containerPort: 5353, protocol: UDP}}]\n\
             status: {{podIP: {ip}{extra}}}\n---\n"
        )
    }

    const WEB: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: dns, port: 53, protocol: UDP, targetPort: dns}
    - {name: plain, port: 81, targetPort: 9090}
    - {name: same, port: 82}
";

    #[test]
    fn derived_slices_named_ports_and_pod_conditions() {
        let mut text = String::new();
        text += &pod("a", "node-1", "10.244.1.10", "");
        text += &pod("b", "node-2", "10.244.2.10", "");
        // Terminating but still Ready: keeps its flows.
        text += &pod("c", "node-2", "10.244.2.11", "").replace(
            "labels:",
            "deletionTimestamp: '2025-01-01T00:00:00Z', labels:",
        );
        // Not Ready: left out. Terminating and not Ready: left out. Finished: left out.
        text += &pod(
            "d",
            "node-1",
            "10.244.1.11",
            ", conditions: [{type: Ready, status: 'False'}]",
        );
        text += &pod(
            "e",
            "node-1",
            "10.244.1.12",
            ", conditions: [{type: Ready, status: 'False'}]",
        )
        .replace(
            "labels:",
            "deletionTimestamp: '2025-01-01T00:00:00Z', labels:",
        );
        text += &pod("f", "node-1", "10.244.1.13", ", phase: Succeeded");
        // Without the named ports: only in the numeric ones.
        text += "apiVersion: v1\nkind: Pod\nmetadata: {name: g, namespace: default, labels: {app: web}}\n\
                 spec: {nodeName: node-2, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.2.12}\n---\n";
        // Another namespace, same labels: not selected. Other labels: not selected.
        text += &pod("h", "node-1", "10.244.1.14", "")
            .replace("namespace: default", "namespace: other");
        text += &pod("i", "node-1", "10.244.1.15", "").replace("app: web", "app: db");
        text += WEB;
        let v = view(&text);
        let s = specs(&v);
        let by_port = |p: u16| s.iter().find(|x| x.port == p).unwrap();
        let http = by_port(80);
        assert_eq!(http.proto, TCP);
        assert_eq!(http.port_name, "http");
        assert_eq!(
            backends(http),
            vec![
                ("10.244.1.10:8080".into(), true, false),
                ("10.244.2.10:8080".into(), false, false),
                ("10.244.2.11:8080".into(), false, true),
            ]
        );
        let dns = by_port(53);
        assert_eq!(dns.proto, UDP);
        assert_eq!(dns.backends.len(), 3);
        assert!(dns.backends.iter().all(|b| b.port == 5353));
        let plain = by_port(81);
        assert_eq!(plain.backends.len(), 4, "pod g too: the port is a number");
        assert!(plain.backends.iter().all(|b| b.port == 9090));
        let same = by_port(82);
        assert!(
            same.backends.iter().all(|b| b.port == 82),
            "targetPort = port"
        );
        assert!(s.iter().all(|x| x.backends.iter().all(|b| b.weight == 1)));
    }

    #[test]
    fn slices_conditions_and_port_names() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: api}
  ports: [{name: https, port: 443, targetPort: 8443}, {name: metrics, port: 9100}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-abc, namespace: default, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: https, port: 8443, protocol: TCP}, {name: metrics, port: 9100}]
endpoints:
  - {addresses: [10.244.1.20], nodeName: node-1}
  - {addresses: [10.244.2.20], nodeName: node-2, conditions: {ready: true}}
  - {addresses: [10.244.2.21], nodeName: node-2, conditions: {ready: false, serving: true, terminating: true}}
  - {addresses: [10.244.2.22], nodeName: node-2, conditions: {ready: false, serving: false, terminating: true}}
  - {addresses: [10.244.2.23], nodeName: node-2, conditions: {ready: false}}
  - {addresses: [not-an-ip], nodeName: node-2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-v6, namespace: default, labels: {kubernetes.io/service-name: api}}
addressType: IPv6
ports: [{name: https, port: 8443}]
endpoints: [{addresses: ['fd00::1']}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-other-ns, namespace: other, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [10.244.1.99]}]
---
apiVersion: v1
kind: Service
metadata: {name: single, namespace: default}
spec: {clusterIP: 10.96.0.21, ports: [{port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: single-1, namespace: default, labels: {kubernetes.io/service-name: single}}
addressType: IPv4
ports: [{port: 1053, protocol: UDP}]
endpoints: [{addresses: [10.244.1.30], nodeName: node-1}]
";
        // A pod the selector matches is ignored: the Service has slices.
        let v =
            view(&(pod("p", "node-1", "10.244.1.50", "").replace("app: web", "app: api") + text));
        let s = specs(&v);
        let https = s.iter().find(|x| x.port == 443).unwrap();
        assert_eq!(
            backends(https),
            vec![
                ("10.244.1.20:8443".into(), true, false),
                ("10.244.2.20:8443".into(), false, false),
                ("10.244.2.21:8443".into(), false, true),
            ]
        );
        let metrics = s.iter().find(|x| x.port == 9100).unwrap();
        assert_eq!(metrics.backends.len(), 3);
        let single = s.iter().find(|x| x.name == "default/single").unwrap();
        assert_eq!(
            backends(single),
            vec![("10.244.1.30:1053".into(), true, false)]
        );
        warned(
            &v,
            &["endpointslice default/api-abc", "endpoints[5].addresses[0]"],
        );
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
    }

    #[test]
    fn frontends_nodeport_external_and_load_balancer() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.30
  externalIPs: [203.0.113.7, nonsense]
  externalTrafficPolicy: Local
  loadBalancerSourceRanges: [192.168.0.0/16, ' 10.1.0.0/24']
  ports: [{port: 80, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.1}, {hostname: lb.example.com}, {ip: 198.51.100.2, ipMode: Proxy}]
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: default}
spec: {type: NodePort, clusterIP: 10.96.0.31, ports: [{port: 81, nodePort: 30081, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {name: cip, namespace: default}
spec: {clusterIP: 10.96.0.32, externalTrafficPolicy: Local, ports: [{port: 82, nodePort: 30082}]}
status: {loadBalancer: {ingress: [{ip: 198.51.100.3}]}}
";
        let v = view(text);
        let s = specs(&v);
        let get = |n: &str| s.iter().find(|x| x.name == n).unwrap();
        let fe = |x: &ServiceSpec| -> Vec<(FrontendKind, String, u16)> {
            x.frontends
                .iter()
                .map(|f| (f.kind, f.ip.to_string(), f.port))
                .collect()
        };
        let lb = get("default/lb");
        assert_eq!(
            fe(lb),
            vec![
                (FrontendKind::ClusterIp, "10.96.0.30".into(), 80),
                (FrontendKind::NodePort, "192.168.100.11".into(), 30080),
                (FrontendKind::ExternalIp, "203.0.113.7".into(), 80),
                (FrontendKind::LoadBalancer, "198.51.100.1".into(), 80),
            ]
        );
        assert!(lb.external_local);
        assert_eq!(
            lb.source_ranges,
            vec![(ip("192.168.0.0"), 16), (ip("10.1.0.0"), 24)]
        );
        warned(&v, &["service default/lb", "spec.externalIPs[1]"]);
        let np = get("default/np");
        assert_eq!(
            fe(np),
            vec![
                (FrontendKind::ClusterIp, "10.96.0.31".into(), 81),
                (FrontendKind::NodePort, "192.168.100.11".into(), 30081),
            ]
        );
        assert!(np.frontends.iter().all(|f| f.proto == UDP));
        assert!(!np.external_local);
        // ClusterIP: no NodePort, no LoadBalancer IPs, no external policy.
        let cip = get("default/cip");
        assert_eq!(
            fe(cip),
            vec![(FrontendKind::ClusterIp, "10.96.0.32".into(), 82)]
        );
        assert!(!cip.external_local);
        // Without the node's address: no NodePort frontend.
        let other = v.service_specs(ME, None);
        assert!(other
            .iter()
            .all(|x| x.frontends.iter().all(|f| f.kind != FrontendKind::NodePort)));
    }

    #[test]
    fn affinity_defaults_and_limits() {
        let svc = |name: &str, extra: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
                 spec: {{clusterIP: 10.96.0.40, ports: [{{port: 80}}]{extra}}}\n---\n"
            )
        };
        let text = svc("none", "")
            + &svc("default-timeout", ", sessionAffinity: ClientIP")
            + &svc(
                "custom",
                ", sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}",
            )
            + &svc(
                "too-long",
                ", sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}",
            )
            + &svc(
                "zero",
                ", sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}",
            );
        let v = view(&text);
        let s = specs(&v);
        let t = |n: &str| {
            s.iter()
                .find(|x| x.name == format!("default/{n}"))
                .unwrap()
                .affinity_timeout
        };
        assert_eq!(t("none"), None);
        assert_eq!(t("default-timeout"), Some(10800));
        assert_eq!(t("custom"), Some(300));
        assert_eq!(t("too-long"), Some(10800));
        assert_eq!(t("zero"), Some(10800));
        warned(
            &v,
            &[
                "default/too-long",
                "sessionAffinityConfig.clientIP.timeoutSeconds",
                "86401",
            ],
        );
        warned(&v, &["default/zero", "timeoutSeconds"]);
    }

    #[test]
    fn left_out_with_a_warning() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: badcidr, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.50
  loadBalancerSourceRanges: [10.0.0.0/8, 10.0.0.0/33]
  ports: [{port: 80, nodePort: 30050}]
---
apiVersion: v1
kind: Service
metadata: {name: mixed, namespace: default}
spec:
  clusterIP: 10.96.0.51
  ports: [{name: a, port: 80}, {name: b, port: 90, protocol: SCTP}, {name: c, port: 70000}]
---
apiVersion: v1
kind: Service
metadata: {name: badip, namespace: default}
spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}
";
        let v = view(text);
        let s = specs(&v);
        let names: Vec<(&str, u16)> = s.iter().map(|x| (x.name.as_str(), x.port)).collect();
        assert_eq!(names, vec![("default/mixed", 80)]);
        warned(
            &v,
            &["service default/headless", "spec.clusterIP", "headless"],
        );
        warned(&v, &["service default/ext", "spec.type", "ExternalName"]);
        warned(
            &v,
            &[
                "service default/badcidr",
                "spec.loadBalancerSourceRanges[1]",
                "10.0.0.0/33",
            ],
        );
        warned(
            &v,
            &["service default/mixed", "spec.ports[1].protocol", "SCTP"],
        );
        warned(
            &v,
            &["service default/mixed", "spec.ports[2].port", "70000"],
        );
        warned(&v, &["service default/badip", "spec.clusterIP"]);
        assert_eq!(v.warnings.len(), 6, "{:#?}", v.warnings);
        assert!(v.warnings.iter().all(|w| w.lines().count() == 1));
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        let mut m = Manifests::default();
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {ports: 7}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: x, labels: {kubernetes.io/service-name: s}}
endpoints: []
---
apiVersion: v1
kind: Service
metadata: {name: nospec}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: y, labels: {kubernetes.io/service-name: nospec}}
addressType: IPv4
ports: [{name: '', port: -1}, {port: 80, protocol: SCTP}]
endpoints: [{addresses: []}]
";
        load_text(&mut m, text, std::path::Path::new("t.yaml"));
        assert_eq!(m.errors.len(), 1, "{:?}", m.errors);
        assert!(m.errors[0].contains("t.yaml:1: Service"), "{}", m.errors[0]);
        let v = ClusterView::from_manifests(&m);
        assert!(v.service_specs(ME, None).is_empty());
        let want = [
            "endpointslice default/x: addressType",
            "endpointslice default/y: ports[0].port",
            "endpointslice default/y: endpoints[0].addresses",
            "service default/nospec: spec",
        ];
        for w in want {
            assert!(
                v.warnings.iter().any(|x| x.starts_with(w)),
                "{w}: {:#?}",
                v.warnings
            );
        }
    }

    #[test]
    fn builder_reuses_unchanged_services() {
        let mut text = String::new();
        text += &pod("a", "node-1", "10.244.1.10", "");
        text += &pod("b", "node-2", "10.244.2.10", "");
        text += WEB;
        let v = view(&text);
        let mut b = ServiceTableBuilder::default();
        let first = b.build(specs(&v), 251, 0);
        assert_eq!((first.built, first.reused), (4, 0));
        assert!(first.warnings.is_empty(), "{:?}", first.warnings);
        let second = b.build(specs(&v), 251, 0);
        assert_eq!((second.built, second.reused), (0, 4));
        for (x, y) in first.table.services().iter().zip(second.table.services()) {
            assert!(Arc::ptr_eq(x, y));
        }
        // One port changed: only it is rebuilt.
        let mut fewer = specs(&v);
        fewer[0].backends.pop();
        let third = b.build(fewer, 251, 0);
        assert_eq!((third.built, third.reused), (1, 3));
        // Another seed: everything is rebuilt.
        let fourth = b.build(specs(&v), 251, 7);
        assert_eq!((fourth.built, fourth.reused), (4, 0));
        let vip = u32::from(ip("10.96.0.10"));
        assert!(fourth.table.lookup(vip, 80, TCP).is_some());
        assert!(fourth.table.steered().is_empty());
        // Two services on one frontend: the first keeps it, with a warning.
        let mut twice = specs(&v);
        let mut dup = twice[0].clone();
        dup.name = "default/copy".into();
        twice.push(dup);
        let fifth = b.build(twice, 251, 7);
        assert_eq!(fifth.warnings.len(), 1, "{:?}", fifth.warnings);
        assert!(fifth.warnings[0].contains("default/copy:"));
    }
}
