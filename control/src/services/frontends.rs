//! A Service's frontends and what applies to them: its type, cluster IP, external and
//! load-balancer IPs, source ranges, session affinity and external traffic policy.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Service as K8sService, ServiceSpec as K8sServiceSpec};

use super::{LeftOut, Warn, DEFAULT_AFFINITY_TIMEOUT, MAX_AFFINITY_TIMEOUT};

/// `spec.type`: ClusterIP (the default), NodePort or LoadBalancer.
pub(super) fn service_type<'s>(
    spec: &'s K8sServiceSpec,
    warn: &mut Warn,
) -> Result<&'s str, LeftOut> {
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    match ty {
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        "ExternalName" => {
            warn(
                "spec.type",
                "ExternalName is answered by DNS, not balanced; service left out".into(),
            );
            return Err(LeftOut);
        }
        other => {
            warn(
                "spec.type",
                format!("{other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName; service left out"),
            );
            return Err(LeftOut);
        }
    }
    Ok(ty)
}

/// Cluster IP: spec.clusterIP, or the first IPv4 of spec.clusterIPs (dual stack); `None`: not
/// set.
pub(super) fn cluster_ip(
    spec: &K8sServiceSpec,
    warn: &mut Warn,
) -> Result<Option<Ipv4Addr>, LeftOut> {
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
        return Err(LeftOut);
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
                return Err(LeftOut);
            }
            None => {
                warn(
                    "spec.clusterIP",
                    format!("{first:?} is not an IP address; service left out"),
                );
                return Err(LeftOut);
            }
        },
    };
    Ok(cluster_ip)
}

/// `spec.loadBalancerSourceRanges`. Fail closed: a range that cannot be read would widen who
/// may connect.
pub(super) fn source_ranges(
    spec: &K8sServiceSpec,
    warn: &mut Warn,
) -> Result<Vec<(Ipv4Addr, u8)>, LeftOut> {
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
                return Err(LeftOut);
            }
        }
    }
    Ok(source_ranges)
}

/// `spec.externalIPs` (IPv4).
pub(super) fn external_ips(spec: &K8sServiceSpec, warn: &mut Warn) -> Vec<Ipv4Addr> {
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
    external_ips
}

/// `status.loadBalancer.ingress[].ip` of a LoadBalancer Service (IPv4, not `ipMode: Proxy`).
pub(super) fn lb_ips(svc: &K8sService, warn: &mut Warn) -> Vec<Ipv4Addr> {
    let mut lb_ips = Vec::new();
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
    lb_ips
}

/// `sessionAffinity: ClientIP`: its timeout in seconds.
pub(super) fn affinity_timeout(spec: &K8sServiceSpec, warn: &mut Warn) -> Option<u32> {
    match spec.session_affinity.as_deref() {
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
    }
}

/// `externalTrafficPolicy: Local`, which applies when the Service is `external`ly reachable.
pub(super) fn external_local(spec: &K8sServiceSpec, external: bool, warn: &mut Warn) -> bool {
    match spec.external_traffic_policy.as_deref() {
        None | Some("" | "Cluster") => false,
        Some("Local") => external,
        Some(other) => {
            warn(
                "spec.externalTrafficPolicy",
                format!("{other:?} is not Cluster or Local; Cluster used"),
            );
            false
        }
    }
}
