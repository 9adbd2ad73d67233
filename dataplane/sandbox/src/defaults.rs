//! The default sandbox's objects (`vireo sandbox up` without --manifests): the echo backends
//! and their Services, the pods and namespaces of the policy checks, and the cluster DNS
//! (`kube-system/kube-dns`) of the DNS policy checks.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde_json::json;

/// The default sandbox's service backends: pods labelled `app: echo`, this many per node on the
/// first two nodes, with container ports `http` (TCP) and `udp` (UDP).
pub const ECHO_PODS_PER_NODE: usize = 2;

/// Container port `http` of the echo pods.
pub const ECHO_HTTP_PORT: u16 = 8080;

/// Container port `udp` of the echo pods.
pub const ECHO_UDP_PORT: u16 = 8081;

/// The namespace of the default sandbox's pods for the policy checks of `vireo connectivity
/// test`: a server (`app: policy-server`, TCP 8080 and 8081) on the second node and clients
/// (`app: client-allowed`, `app: client-other`) on the first and (`app: client-local`) beside
/// the server. No policy selects them until a check applies one.
pub const POLICY_NAMESPACE: &str = "policy-test";

/// The namespaces of the default sandbox's Kubernetes network-policy model (as in upstream's
/// e2e tests): pods `a`, `b`, `c` (labelled `pod: NAME`) in each, spread over the first two
/// nodes, serving TCP 80 during the check.
pub const NETPOL_NAMESPACES: [&str; 3] = ["x", "y", "z"];

/// The pods of each network-policy model namespace.
pub const NETPOL_PODS: [&str; 3] = ["a", "b", "c"];

/// The namespace of the default sandbox's DNS server: pod [`DNS_POD`] (labelled
/// `k8s-app: kube-dns`, UDP 53 named `dns`) on the second node, behind the Service
/// `kube-dns` ([`DNS_CLUSTER_IP`]), as a cluster's CoreDNS. It serves (`vireo probe
/// dns-server`) only while a DNS policy check runs.
pub const DNS_NAMESPACE: &str = "kube-system";

/// The default sandbox's DNS server pod, in [`DNS_NAMESPACE`].
pub const DNS_POD: &str = "dns-server";

/// The ClusterIP of the Service `kube-system/kube-dns` (UDP 53 to the DNS pod's port `dns`).
pub const DNS_CLUSTER_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 53);

/// A Pod of the default sandbox: one container, on `node`.
pub(crate) fn sandbox_pod(
    ns: &str,
    name: &str,
    node: &str,
    labels: serde_json::Value,
    container: serde_json::Value,
) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [container]},
    }))
    .expect("a valid Pod")
}

/// The default sandbox's service backends: `echo-node-N-J`, labelled `app: echo`, with container
/// ports `http` (8080/TCP) and `udp` (8081/UDP).
pub(crate) fn echo_pods(nodes: usize) -> Vec<Pod> {
    (1..=nodes.min(2))
        .flat_map(|i| (1..=ECHO_PODS_PER_NODE).map(move |j| (i, j)))
        .map(|(i, j)| {
            sandbox_pod(
                "default",
                &format!("echo-node-{i}-{j}"),
                &format!("node-{i}"),
                json!({"app": "echo"}),
                json!({
                    "name": "echo", "image": "sandbox",
                    "ports": [
                        {"name": "http", "containerPort": ECHO_HTTP_PORT, "protocol": "TCP"},
                        {"name": "udp", "containerPort": ECHO_UDP_PORT, "protocol": "UDP"},
                    ],
                }),
            )
        })
        .collect()
}

/// The Namespaces of the default sandbox's policy pods.
pub(crate) fn policy_namespaces() -> Result<Vec<serde_json::Value>> {
    std::iter::once(POLICY_NAMESPACE)
        .chain(NETPOL_NAMESPACES)
        .map(|ns| {
            let n: Namespace = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
            }))?;
            Ok(serde_json::to_value(n)?)
        })
        .collect()
}

/// The default sandbox's pods for the policy checks: [`POLICY_NAMESPACE`]'s server and clients,
/// and the network-policy model's pods ([`NETPOL_NAMESPACES`] x [`NETPOL_PODS`]), which
/// alternate between the first two nodes.
pub(crate) fn policy_pods(nodes: usize) -> Vec<Pod> {
    let (first, second) = ("node-1".to_string(), format!("node-{}", nodes.clamp(1, 2)));
    let pod =
        |ns: &str, name: &str, node: &str, labels: serde_json::Value, ports: serde_json::Value| {
            sandbox_pod(
                ns,
                name,
                node,
                labels,
                json!({"name": "main", "image": "sandbox", "ports": ports}),
            )
        };
    let tcp =
        |name: &str, port: u16| json!({"name": name, "containerPort": port, "protocol": "TCP"});
    let mut pods = vec![
        pod(
            POLICY_NAMESPACE,
            "server",
            &second,
            json!({"app": "policy-server"}),
            json!([tcp("http", ECHO_HTTP_PORT), tcp("alt", ECHO_UDP_PORT)]),
        ),
        pod(
            POLICY_NAMESPACE,
            "client-allowed",
            &first,
            json!({"app": "client-allowed"}),
            json!([]),
        ),
        pod(
            POLICY_NAMESPACE,
            "client-other",
            &first,
            json!({"app": "client-other"}),
            json!([]),
        ),
        pod(
            POLICY_NAMESPACE,
            "client-local",
            &second,
            json!({"app": "client-local"}),
            json!([]),
        ),
    ];
    let mut k = 0;
    for ns in NETPOL_NAMESPACES {
        for name in NETPOL_PODS {
            let node = if k % 2 == 0 { &first } else { &second };
            k += 1;
            pods.push(pod(
                ns,
                name,
                node,
                json!({"pod": name}),
                json!([tcp("serve-80", 80)]),
            ));
        }
    }
    pods
}

/// The default sandbox's cluster DNS: the Namespace [`DNS_NAMESPACE`] (the API server has it
/// already; the manifest source gets it from here) and the Service `kube-dns`.
pub(crate) fn dns_objects() -> Result<Vec<serde_json::Value>> {
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DNS_NAMESPACE},
    }))?;
    let ip = DNS_CLUSTER_IP.to_string();
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": DNS_NAMESPACE,
                     "labels": {"k8s-app": "kube-dns"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "selector": {"k8s-app": "kube-dns"},
                 "ports": [{"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]},
    }))
    .context("the sandbox's Service kube-dns")?;
    Ok(vec![serde_json::to_value(ns)?, serde_json::to_value(svc)?])
}

/// The default sandbox's DNS server pod [`DNS_POD`], on the second node.
pub(crate) fn dns_pods(nodes: usize) -> Vec<Pod> {
    vec![sandbox_pod(
        DNS_NAMESPACE,
        DNS_POD,
        &format!("node-{}", nodes.clamp(1, 2)),
        json!({"k8s-app": "kube-dns"}),
        json!({"name": "dns", "image": "sandbox",
               "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}),
    )]
}

/// The default sandbox's Services (default namespace, fixed cluster IPs from 10.96.0.0/16):
/// `echo` (TCP 80 and UDP 81 over the echo pods), `echo-np` (NodePort 30080,
/// externalTrafficPolicy Cluster), `echo-sticky` (sessionAffinity ClientIP) and `empty` (a
/// selector that matches no pod).
pub(crate) fn echo_services() -> Result<Vec<serde_json::Value>> {
    let http = json!({"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"});
    let udp = json!({"name": "udp", "port": 81, "targetPort": "udp", "protocol": "UDP"});
    let svc = |name: &str, ip: &str, spec: serde_json::Value| -> Result<serde_json::Value> {
        let mut v = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "selector": {"app": "echo"}},
        });
        for (k, x) in spec.as_object().into_iter().flatten() {
            v["spec"][k] = x.clone();
        }
        // Checked against the Kubernetes type, as Pods are.
        let typed: k8s_openapi::api::core::v1::Service = serde_json::from_value(v.clone())
            .with_context(|| format!("the sandbox's Service {name}"))?;
        Ok(serde_json::to_value(typed)?)
    };
    Ok(vec![
        svc("echo", "10.96.0.10", json!({"ports": [http, udp]}))?,
        svc(
            "echo-np",
            "10.96.0.11",
            json!({"type": "NodePort", "externalTrafficPolicy": "Cluster",
                   "ports": [{"name": "http", "port": 80, "targetPort": "http",
                              "nodePort": 30080, "protocol": "TCP"}]}),
        )?,
        svc(
            "echo-sticky",
            "10.96.0.12",
            json!({"sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
                   "ports": [http]}),
        )?,
        svc(
            "empty",
            "10.96.0.13",
            json!({"selector": {"app": "no-such-pod"},
                   "ports": [{"name": "http", "port": 80, "targetPort": ECHO_HTTP_PORT,
                              "protocol": "TCP"},
                             {"name": "udp", "port": 81, "targetPort": ECHO_UDP_PORT,
                              "protocol": "UDP"}]}),
        )?,
    ])
}

/// Port of the default sandbox's host-network Service `host-echo` (ClusterIP 10.96.0.14).
pub const HOST_ECHO_PORT: u16 = 90;

/// The port its backends, the nodes' own addresses, serve on (a host-network server the
/// connectivity check starts in each node's namespace).
pub const HOST_ECHO_TARGET: u16 = 9090;

/// The default sandbox's Service with host-network backends, as the `kubernetes` Service is:
/// `host-echo` (no selector, ClusterIP 10.96.0.14, TCP [`HOST_ECHO_PORT`]) and its
/// EndpointSlice naming each node's address on [`HOST_ECHO_TARGET`].
pub(crate) fn host_echo_service(
    nodes: &[(String, std::net::Ipv4Addr)],
) -> Result<Vec<serde_json::Value>> {
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "host-echo", "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.14", "clusterIPs": ["10.96.0.14"],
                 "ports": [{"name": "http", "port": HOST_ECHO_PORT,
                            "targetPort": HOST_ECHO_TARGET, "protocol": "TCP"}]},
    }))
    .context("the sandbox's Service host-echo")?;
    let endpoints: Vec<serde_json::Value> = nodes
        .iter()
        .map(|(name, ip)| {
            json!({"addresses": [ip.to_string()], "nodeName": name,
                   "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "host-echo-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "host-echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": HOST_ECHO_TARGET, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .context("the sandbox's EndpointSlice host-echo-1")?;
    Ok(vec![
        serde_json::to_value(svc)?,
        serde_json::to_value(slice)?,
    ])
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ipnet::Ipv4Net;

    use super::*;

    #[test]
    fn default_services_and_their_backends() {
        let svcs = echo_services().unwrap();
        let ips: Vec<Ipv4Addr> = svcs
            .iter()
            .map(|s| s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap())
            .collect();
        let range: Ipv4Net = "10.96.0.0/16".parse().unwrap();
        assert_eq!(ips.len(), 4);
        assert!(ips.iter().all(|ip| range.contains(ip)));
        let mut distinct = ips.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ips.len());
        let np = svcs
            .iter()
            .find(|s| s["metadata"]["name"] == "echo-np")
            .unwrap();
        assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
        let sticky = svcs
            .iter()
            .find(|s| s["metadata"]["name"] == "echo-sticky")
            .unwrap();
        assert_eq!(sticky["spec"]["sessionAffinity"], "ClientIP");
        let pods = echo_pods(2);
        assert_eq!(pods.len(), 2 * ECHO_PODS_PER_NODE);
        let ports = pods[0].spec.as_ref().unwrap().containers[0]
            .ports
            .clone()
            .unwrap();
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
        assert_eq!(echo_pods(1).len(), ECHO_PODS_PER_NODE);
    }

    #[test]
    fn host_echo_backends_are_the_nodes() {
        let ips = [("node-1".to_string(), Ipv4Addr::new(192, 168, 100, 11))];
        let v = host_echo_service(&ips).unwrap();
        assert_eq!(v[0]["spec"]["clusterIP"], "10.96.0.14");
        assert!(v[0]["spec"]["selector"].is_null());
        assert_eq!(v[1]["endpoints"][0]["addresses"][0], "192.168.100.11");
        assert_eq!(
            v[1]["metadata"]["labels"]["kubernetes.io/service-name"],
            "host-echo"
        );
    }

    #[test]
    fn default_dns() {
        let v = dns_objects().unwrap();
        assert_eq!(v[0]["kind"], "Namespace");
        assert_eq!(v[0]["metadata"]["name"], DNS_NAMESPACE);
        assert_eq!(v[1]["spec"]["clusterIP"], DNS_CLUSTER_IP.to_string());
        assert_eq!(v[1]["spec"]["ports"][0]["protocol"], "UDP");
        // Not among the echo Services' addresses.
        let echo = echo_services().unwrap();
        assert!(echo
            .iter()
            .all(|s| s["spec"]["clusterIP"] != v[1]["spec"]["clusterIP"]));
        let p = &dns_pods(2)[0];
        assert_eq!(p.metadata.namespace.as_deref(), Some(DNS_NAMESPACE));
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["k8s-app"],
            "kube-dns".to_string()
        );
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-2")
        );
        assert_eq!(
            dns_pods(1)[0].spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-1")
        );
    }

    #[test]
    fn default_policy_pods() {
        let pods = policy_pods(2);
        assert_eq!(pods.len(), 4 + NETPOL_NAMESPACES.len() * NETPOL_PODS.len());
        let at = |ns: &str, name: &str| {
            let p = pods
                .iter()
                .find(|p| {
                    p.metadata.namespace.as_deref() == Some(ns)
                        && p.metadata.name.as_deref() == Some(name)
                })
                .unwrap();
            p.spec.as_ref().unwrap().node_name.clone().unwrap()
        };
        assert_eq!(at(POLICY_NAMESPACE, "server"), "node-2");
        assert_eq!(at(POLICY_NAMESPACE, "client-local"), "node-2");
        assert_eq!(at(POLICY_NAMESPACE, "client-allowed"), "node-1");
        // The model's pods use both nodes.
        assert_ne!(at("x", "a"), at("x", "b"));
        assert!(policy_pods(1)
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-1")));
        assert_eq!(policy_namespaces().unwrap().len(), 4);
    }
}
