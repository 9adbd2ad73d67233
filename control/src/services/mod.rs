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
//!
//! Layout: this module reads one Service at a time; `frontends` reads its type, addresses,
//! source ranges, affinity and traffic policy, `ports` its ports and target ports,
//! `backends` its backends (from EndpointSlices, or derived from pods), and `table` builds
//! the fast path's table.

mod backends;
mod frontends;
mod ports;
mod table;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service as K8sService;
use vireo_lb::service::{TCP, UDP};
use vireo_lb::{Backend, Frontend, FrontendKind, ServiceSpec};

use crate::cluster::PodView;
use crate::source::Manifests;

use backends::{Backends, Slice};
pub use table::{BuiltServices, ServiceTableBuilder};

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
/// a Service with a selector and no slice, from `pods`; and whether any was derived from
/// `pods` (else they do not depend on the pods). Problems are added to `warnings`, one line
/// each.
pub fn service_ports(
    m: &Manifests,
    pods: &BTreeMap<(String, String), PodView>,
    warnings: &mut Vec<String>,
) -> (Vec<ServicePortView>, bool) {
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
    let mut read_pods = false;
    for ((ns, name), svc) in &m.services {
        let key = (ns.clone(), name.clone());
        let from = if labelled.contains(&key) {
            Backends::Slices(slices.get(&key).map(Vec::as_slice).unwrap_or(&[]))
        } else {
            read_pods = true;
            Backends::Pods(pods)
        };
        out.extend(one_service(ns, name, svc, from, warnings));
    }
    out.sort_by(|a, b| (&a.name, a.port, a.proto).cmp(&(&b.name, b.port, b.proto)));
    (out, read_pods)
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
    read_service(ns, &full, svc, from, &mut warn).unwrap_or_default()
}

/// A Service (or one of its ports) is left out; the warning is given.
struct LeftOut;

/// Where warnings go: (field, message).
type Warn<'a> = dyn FnMut(&str, String) + 'a;

/// [`one_service`], the Service left out on `Err`.
fn read_service(
    ns: &str,
    full: &str,
    svc: &K8sService,
    from: Backends<'_>,
    warn: &mut Warn,
) -> Result<Vec<ServicePortView>, LeftOut> {
    let Some(spec) = svc.spec.as_ref() else {
        warn("spec", "missing; service left out".into());
        return Err(LeftOut);
    };
    let ty = frontends::service_type(spec, warn)?;
    let cluster_ip = frontends::cluster_ip(spec, warn)?;
    let source_ranges = frontends::source_ranges(spec, warn)?;
    let external_ips = frontends::external_ips(spec, warn);
    let lb_ips = if ty == "LoadBalancer" {
        frontends::lb_ips(svc, warn)
    } else {
        Vec::new()
    };
    let affinity_timeout = frontends::affinity_timeout(spec, warn);
    // As Kubernetes: the policy applies to Services reachable from outside.
    let external = ty != "ClusterIP" || !external_ips.is_empty();
    let external_local = frontends::external_local(spec, external, warn);
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty());
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);

    let base = ServicePortView {
        name: full.to_string(),
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
    let selected = backends::selected_pods(&from, ns, selector);
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() {
        warn("spec.ports", "no ports; service left out".into());
    }
    for (i, p) in ports.iter().enumerate() {
        let Ok(sp) = ports::service_port(i, p, ty, warn) else {
            continue;
        };
        if out.iter().any(|o| o.port == sp.port && o.proto == sp.proto) {
            warn(
                &format!("spec.ports[{i}].port"),
                format!(
                    "{} is listed twice for this protocol; port left out",
                    sp.port
                ),
            );
            continue;
        }
        let port_name = p.name.clone().unwrap_or_default();
        let backends = backends::backends(
            &from,
            &selected,
            &port_name,
            &sp.target,
            sp.proto,
            publish_not_ready,
        );
        out.push(ServicePortView {
            port_name,
            port: sp.port,
            proto: sp.proto,
            node_port: sp.node_port,
            backends,
            ..base.clone()
        });
    }
    Ok(out)
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
        vireo_policy::rules::ip_proto::SCTP => "SCTP".into(),
        other => other.to_string(),
    }
}
