//! Bad manifests never take the agent down: a valid cluster (nodes, namespaces, pods with named
//! ports, Services, EndpointSlices, CiliumNetworkPolicy with every rule kind, a cluster-wide
//! policy and NetworkPolicies) is mutated at random — a value replaced by one of another type,
//! out of range or malformed, a key removed, a list emptied — and the whole control path runs
//! on it: reading, the cluster view, Services, the ipcache, the policies and their compiled
//! tables. Every run must end with tables (errors are warnings, never panics), and a
//! document that cannot be read is reported with its place.

use std::net::Ipv4Addr;
use std::path::Path;

use proptest::prelude::*;
use serde_yaml_ng::Value;
use vireo_control::cluster::ClusterView;
use vireo_control::netpol;
use vireo_control::source::{load_text, Manifests};
use vireo_policy::{Compiler, Direction, Identity};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.100.11}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.100.12}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web, tier: front}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]
status: {podIP: 10.244.1.10, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: x, labels: {app: db}}
spec: {nodeName: node-2, containers: [{name: c, ports: [{name: sql, containerPort: 5432}]}]}
status: {podIPs: [{ip: 10.244.2.10}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  type: NodePort
  selector: {app: web}
  sessionAffinity: ClientIP
  loadBalancerSourceRanges: [192.168.100.0/24]
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.10]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-1
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: x}
specs:
- endpointSelector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: In, values: [front]}, {key: k8s:gone, operator: DoesNotExist}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: db}}]
    fromRequires: [{matchLabels: {k8s:io.kubernetes.pod.namespace: x}}]
    toPorts: [{ports: [{port: "8080", endPort: 8090, protocol: TCP}, {port: http, protocol: ANY}]}]
  - fromEntities: [cluster, host, remote-node]
  - fromCIDRSet: [{cidr: 192.168.0.0/16, except: [192.168.100.0/24]}]
    toPorts: [{ports: [{port: "80"}], rules: {http: [{method: GET}]}}]
  ingressDeny:
  - fromCIDR: [192.168.50.0/24]
  egress:
  - toEndpoints: [{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  - toFQDNs: [{matchName: example.com}]
  egressDeny:
  - toEntities: [world]
- endpointSelector: {matchLabels: {app: db}}
  ingress: [{fromEndpoints: [{}]}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: cw}
spec:
  endpointSelector: {matchLabels: {any:app: db}}
  enableDefaultDeny: {ingress: true, egress: false}
  ingress: [{fromEndpoints: [{matchLabels: {reserved:host: ""}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchExpressions: [{key: app, operator: Exists}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.244.0.0/16]}
    ports: [{port: sql}, {port: 5000, endPort: 5010, protocol: TCP}]
  egress: [{to: [{podSelector: {}}], ports: [{port: 53, protocol: UDP}]}]
"#;

/// Values of other types, out of range, malformed, or meaning something else.
const ODD: &[&str] = &[
    "~",
    "true",
    "-1",
    "0",
    "65536",
    "4294967296",
    "1.5",
    "''",
    "'-'",
    "'80-90'",
    "'tcp'",
    "'SCTP'",
    "'a=b'",
    "'10.0.0.0/33'",
    "'300.1.1.1'",
    "'::1/128'",
    "'k8s:'",
    "'reserved:bogus'",
    "'In'",
    "'Bogus'",
    "[]",
    "{}",
    "[~]",
    "[{}]",
    "{a: {b: c}}",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the node with `ODD[i]`.
    Replace(usize, usize),
    /// Remove the node from its mapping or list.
    Remove(usize),
    /// Wrap the node in a list.
    Wrap(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0..ODD.len()).prop_map(|(n, i)| Mutation::Replace(n, i)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => any::<usize>().prop_map(Mutation::Wrap),
    ]
}

/// The number of nodes below (and with) `v`.
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Sequence(s) => s.iter().map(count).sum(),
        Value::Mapping(m) => m.values().map(count).sum(),
        Value::Tagged(t) => count(&t.value),
        _ => 0,
    }
}

/// Applies `m` to the node numbered `n` (pre-order) below `v`; `Remove` of the root empties it.
fn apply(v: &mut Value, n: usize, m: &Mutation) {
    if n == 0 {
        *v = match m {
            Mutation::Replace(_, i) => serde_yaml_ng::from_str(ODD[*i]).expect("ODD is YAML"),
            Mutation::Remove(_) => Value::Null,
            Mutation::Wrap(_) => Value::Sequence(vec![v.clone()]),
        };
        return;
    }
    let mut n = n - 1;
    let children: Vec<&mut Value> = match v {
        Value::Sequence(s) => s.iter_mut().collect(),
        Value::Mapping(map) => map.values_mut().collect(),
        Value::Tagged(t) => vec![&mut t.value],
        _ => return,
    };
    let mut remove = None;
    for (i, c) in children.into_iter().enumerate() {
        let k = count(c);
        if n < k {
            if n == 0 && matches!(m, Mutation::Remove(_)) {
                remove = Some(i);
            } else {
                apply(c, n, m);
            }
            break;
        }
        n -= k;
    }
    if let Some(i) = remove {
        match v {
            Value::Sequence(s) => {
                s.remove(i);
            }
            Value::Mapping(map) => {
                let key = map.keys().nth(i).cloned();
                if let Some(key) = key {
                    map.remove(&key);
                }
            }
            _ => {}
        }
    }
}

/// The cluster's documents with `mutations` applied (each picks its document and node).
fn mutated(mutations: &[Mutation]) -> String {
    let mut docs: Vec<Value> = CLUSTER
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).expect("CLUSTER is YAML"))
        .collect();
    for m in mutations {
        let (Mutation::Replace(n, _) | Mutation::Remove(n) | Mutation::Wrap(n)) = m;
        let total: usize = docs.iter().map(count).sum();
        let mut n = n % total;
        for d in &mut docs {
            let k = count(d);
            if n < k {
                apply(d, n, m);
                break;
            }
            n -= k;
        }
    }
    docs.iter()
        .map(|d| serde_yaml_ng::to_string(d).expect("a Value serialises"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The whole control path, as the agent runs it for node-1: the manifests read and their
/// policies.
fn run(text: &str) -> (Manifests, netpol::PolicySet) {
    let mut m = Manifests::default();
    load_text(&mut m, text, Path::new("cluster.yaml"));
    let view = ClusterView::from_manifests(&m);
    let _ = view.service_specs("node-1", Some(Ipv4Addr::new(192, 168, 100, 11)));
    let ipcache = view.ipcache("node-1");
    let set = netpol::policies(&m);
    assert!(set.warnings.iter().all(|w| !w.trim().is_empty()));
    let mut c = Compiler::new();
    for (id, labels) in view.identities.iter() {
        c.set_identity(id, labels.clone());
    }
    for (key, ps) in set.by_object() {
        c.set_policies(&key, ps);
    }
    let tables = c.tables();
    for (id, _) in view.identities.iter() {
        for peer in [Identity::WORLD, id] {
            let _ = tables.lookup(id.0, Direction::Ingress, peer.0, 6, 8080);
            let _ = tables.lookup(id.0, Direction::Egress, peer.0, 17, 53);
        }
    }
    let _ = ipcache.lookup(u32::from(Ipv4Addr::new(10, 244, 1, 10)));
    (m, set)
}

#[test]
fn the_cluster_reads_cleanly() {
    let (m, set) = run(CLUSTER);
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    assert_eq!(
        set.policies.len(),
        4,
        "two specs, one cluster-wide, one NetworkPolicy"
    );
}

#[test]
fn the_mutator_reaches_every_node() {
    let clean = mutated(&[]);
    let total: usize = CLUSTER
        .split("\n---\n")
        .map(|d| count(&serde_yaml_ng::from_str(d).unwrap()))
        .sum();
    for n in 0..total {
        assert_ne!(mutated(&[Mutation::Wrap(n)]), clean, "node {n}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_manifests_never_panic(ms in prop::collection::vec(mutation(), 1..6)) {
        let text = mutated(&ms);
        let (m, _) = run(&text);
        // Unreadable documents are reported with their place.
        prop_assert!(m.errors.iter().all(|e| e.contains("cluster.yaml")), "{:?}", m.errors);
    }
}
