//! A Service's backends: from its EndpointSlices, or, for a Service with a selector and no
//! slice, the slice Kubernetes' EndpointSlice controller would derive from its pods.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::ports::Target;
use super::{port_number, protocol, EndpointView};
use crate::cluster::PodView;

/// Where a Service's backends come from.
pub(super) enum Backends<'a> {
    /// Its EndpointSlices (IPv4 ones, parsed).
    Slices(&'a [Slice]),
    /// No slice: derived from the pods its selector matches.
    Pods(&'a BTreeMap<(String, String), PodView>),
}

/// An IPv4 EndpointSlice, checked.
pub(super) struct Slice {
    /// (name, protocol, port) of each usable port.
    ports: Vec<(String, u8, u16)>,
    /// Address, node, terminating of each usable endpoint.
    endpoints: Vec<(Ipv4Addr, Option<String>, bool)>,
}

impl Slice {
    /// `None` for slices of another address type.
    pub(super) fn parse(key: &str, s: &EndpointSlice, warnings: &mut Vec<String>) -> Option<Slice> {
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

/// The pods that serve every port of a Service without slices: those its selector matches
/// (none without a selector: the endpoints are managed elsewhere).
pub(super) fn selected_pods<'a>(
    from: &Backends<'a>,
    ns: &str,
    selector: Option<&BTreeMap<String, String>>,
) -> Vec<&'a PodView> {
    match (from, selector) {
        (Backends::Pods(pods), Some(sel)) => pods
            .values()
            .filter(|p| {
                p.namespace == ns && sel.iter().all(|(k, v)| p.pod_labels.get(k) == Some(v))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The backends of the service port named `port_name` (`selected`: see [`selected_pods`]).
pub(super) fn backends(
    from: &Backends<'_>,
    selected: &[&PodView],
    port_name: &str,
    target: &Target,
    proto: u8,
    publish_not_ready: bool,
) -> Vec<EndpointView> {
    let backends = match from {
        Backends::Slices(slices) => from_slices(slices, port_name, proto),
        Backends::Pods(_) => selected
            .iter()
            .filter_map(|pod| from_pod(pod, target, proto, publish_not_ready))
            .collect(),
    };
    dedup(backends)
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
