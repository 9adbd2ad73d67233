//! Tests of the Service reader and the table builder.

use std::sync::Arc;

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
    text +=
        &pod("h", "node-1", "10.244.1.14", "").replace("namespace: default", "namespace: other");
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
    let v = view(&(pod("p", "node-1", "10.244.1.50", "").replace("app: web", "app: api") + text));
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
