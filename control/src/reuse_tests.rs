//! What [`NodeControl::apply_changed`] takes over from the last apply (pods' views,
//! identities, service ports, policy documents read) never changes the result: after each of
//! a random sequence of changes, a control that applied every step incrementally has the view,
//! policies and tables of a control that applied the final objects once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use vireo_lb::ServiceTable;
use vireo_policy::PolicyTables;

use crate::config::ServicesConfig;
use crate::node::{Changed, NodeControl};
use crate::source::{load_text, Manifests};

const NAMESPACES: [&str; 3] = ["ns-a", "ns-b", "ns-c"];
const NODES: usize = 3;

/// The objects, as the generator changes them.
#[derive(Debug, Clone)]
struct World {
    /// Namespace objects (a pod's namespace may have none): labels by name.
    namespaces: BTreeMap<&'static str, Option<BTreeMap<String, String>>>,
    /// Node `i`'s last address octet (`None`: no InternalIP).
    nodes: Vec<Option<u8>>,
    pods: BTreeMap<usize, PodSpec>,
    services: BTreeMap<usize, Svc>,
    policies: BTreeMap<usize, Pol>,
}

#[derive(Debug, Clone)]
struct PodSpec {
    ns: usize,
    app: u8,
    tier: Option<u8>,
    node: Option<usize>,
    /// 0: none, 1: a good one, 2: not an IP.
    ip: u8,
    /// Named container port `http` on this number (none: no port).
    http: Option<u16>,
    ready: Option<bool>,
    succeeded: bool,
    deleting: bool,
}

#[derive(Debug, Clone)]
struct Svc {
    ns: usize,
    app: u8,
    named_target: bool,
    /// The slice's extra endpoint count; `None`: no slice (backends from the pods).
    slice: Option<u8>,
}

#[derive(Debug, Clone)]
struct Pol {
    ns: usize,
    app: u8,
    peer: u8,
    /// A named port (`http`) instead of a number.
    named: bool,
    port: u16,
    /// A Kubernetes NetworkPolicy instead of a CiliumNetworkPolicy.
    k8s: bool,
    /// Peers from namespaces labelled `team: t0`.
    ns_selector: bool,
}

fn pod(i: usize, k: u64) -> PodSpec {
    PodSpec {
        ns: (k % 3) as usize,
        app: (k / 3 % 4) as u8,
        tier: (k.is_multiple_of(5)).then_some((k / 7 % 2) as u8),
        node: (!k.is_multiple_of(11)).then_some((k / 13) as usize % NODES),
        ip: if k.is_multiple_of(17) {
            2
        } else {
            u8::from(!k.is_multiple_of(19))
        },
        http: (k.is_multiple_of(2)).then_some(8080 + (i % 2) as u16),
        ready: match k % 7 {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        },
        succeeded: k.is_multiple_of(23),
        deleting: k.is_multiple_of(29),
    }
}

fn initial() -> World {
    World {
        namespaces: NAMESPACES
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, Some(BTreeMap::from([("team".into(), format!("t{i}"))]))))
            .collect(),
        nodes: (0..NODES).map(|i| Some(11 + i as u8)).collect(),
        pods: (0..24).map(|i| (i, pod(i, i as u64 * 31 + 7))).collect(),
        services: (0..5)
            .map(|j| {
                let s = Svc {
                    ns: j % 3,
                    app: (j % 4) as u8,
                    named_target: j.is_multiple_of(2),
                    slice: (!j.is_multiple_of(3)).then_some(j as u8 % 2),
                };
                (j, s)
            })
            .collect(),
        policies: (0..5)
            .map(|j| {
                let p = Pol {
                    ns: j % 3,
                    app: (j % 4) as u8,
                    peer: ((j + 1) % 4) as u8,
                    named: j.is_multiple_of(2),
                    port: 80 + j as u16,
                    k8s: j == 3,
                    ns_selector: j == 4,
                };
                (j, p)
            })
            .collect(),
    }
}

/// Applies change `op` (with `k` for its details) and says which kinds it changed.
fn change(w: &mut World, op: u8, k: u64) -> Changed {
    let workloads = Changed {
        workloads: true,
        ..Changed::default()
    };
    let services = Changed {
        services: true,
        ..Changed::default()
    };
    let policies = Changed {
        policies: true,
        ..Changed::default()
    };
    let pod_key = (k % 30) as usize;
    match op % 12 {
        // A pod's labels.
        0 => {
            if let Some(p) = w.pods.get_mut(&pod_key) {
                p.app = (k / 30 % 5) as u8;
                p.tier = (k.is_multiple_of(2)).then_some((k / 60 % 3) as u8);
            }
            workloads
        }
        // A pod's other fields (node, address, ports, state), one at a time.
        1 => {
            if let Some(p) = w.pods.get_mut(&pod_key) {
                let q = pod(pod_key, k / 30);
                match k / 30 % 6 {
                    0 => p.node = q.node,
                    1 => p.ip = q.ip,
                    2 => p.http = q.http,
                    3 => p.ready = q.ready,
                    4 => p.succeeded = !p.succeeded,
                    _ => p.deleting = !p.deleting,
                }
            }
            workloads
        }
        // A pod added or removed.
        2 => {
            if w.pods.remove(&pod_key).is_none() {
                w.pods.insert(pod_key, pod(pod_key, k / 30));
            }
            workloads
        }
        // A namespace's labels, or its object removed / added back.
        3 => {
            let n = NAMESPACES[(k % 3) as usize];
            let labels = w.namespaces.get_mut(n).unwrap();
            *labels = match (k / 3 % 3, labels.take()) {
                (0, _) => None,
                (_, _) => Some(BTreeMap::from([(
                    "team".to_string(),
                    format!("t{}", k / 9 % 3),
                )])),
            };
            workloads
        }
        // A node's address.
        4 => {
            let i = (k % NODES as u64) as usize;
            w.nodes[i] = (!(k / 3).is_multiple_of(4)).then_some(11 + (k / 12 % 5) as u8);
            workloads
        }
        // A Service's selector or target port.
        5 => {
            if let Some(s) = w.services.get_mut(&((k % 6) as usize)) {
                if (k / 6).is_multiple_of(2) {
                    s.app = (k / 12 % 4) as u8;
                } else {
                    s.named_target = !s.named_target;
                }
            }
            services
        }
        // A Service's slice: added, removed, or its endpoints.
        6 => {
            if let Some(s) = w.services.get_mut(&((k % 6) as usize)) {
                s.slice = match s.slice {
                    None => Some((k / 6 % 3) as u8),
                    Some(_) if (k / 6).is_multiple_of(2) => None,
                    Some(n) => Some(n.wrapping_add(1) % 3),
                };
            }
            services
        }
        // A Service added or removed.
        7 => {
            let j = (k % 6) as usize;
            if w.services.remove(&j).is_none() {
                let s = Svc {
                    ns: (k / 6 % 3) as usize,
                    app: (k / 18 % 4) as u8,
                    named_target: k.is_multiple_of(2),
                    slice: None,
                };
                w.services.insert(j, s);
            }
            services
        }
        // A policy's port (named or a number) or peer.
        8 => {
            if let Some(p) = w.policies.get_mut(&((k % 6) as usize)) {
                match k / 6 % 3 {
                    0 => p.named = !p.named,
                    1 => p.port = 80 + (k / 18 % 50) as u16,
                    _ => p.peer = (k / 18 % 4) as u8,
                }
            }
            policies
        }
        // A policy added or removed.
        9 => {
            let j = (k % 6) as usize;
            if w.policies.remove(&j).is_none() {
                let p = Pol {
                    ns: (k / 6 % 3) as usize,
                    app: (k / 18 % 4) as u8,
                    peer: (k / 72 % 4) as u8,
                    named: k.is_multiple_of(2),
                    port: 443,
                    k8s: k.is_multiple_of(3),
                    ns_selector: k.is_multiple_of(5),
                };
                w.policies.insert(j, p);
            }
            policies
        }
        // Several kinds at once.
        10 => {
            let a = change(w, (k % 5) as u8, k / 5);
            let b = change(w, 5 + (k / 7 % 5) as u8, k / 35);
            Changed {
                workloads: a.workloads || b.workloads,
                services: a.services || b.services,
                policies: a.policies || b.policies,
            }
        }
        // Nothing (a kind the tables do not read).
        _ => Changed::default(),
    }
}

fn pod_ip(i: usize, p: &PodSpec) -> String {
    match p.ip {
        1 => format!("10.244.{}.{}", p.node.unwrap_or(0) + 1, i + 10),
        _ => "10.244.1.300".into(),
    }
}

/// The objects as JSON (which is YAML), one file each, so that a policy's origin stays.
fn objects(w: &World) -> Vec<(String, Value)> {
    let mut v = Vec::new();
    for (n, labels) in &w.namespaces {
        if let Some(l) = labels {
            let o = json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": n, "labels": l}});
            v.push((format!("ns-{n}"), o));
        }
    }
    for (i, ip) in w.nodes.iter().enumerate() {
        let addresses: Vec<Value> = ip
            .iter()
            .map(|o| json!({"type": "InternalIP", "address": format!("192.168.100.{o}")}))
            .collect();
        let o = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i}")},
            "spec": {"podCIDR": format!("10.244.{}.0/24", i + 1)},
            "status": {"addresses": addresses}});
        v.push((format!("node-{i}"), o));
    }
    for (i, p) in &w.pods {
        let mut labels = json!({"app": format!("a{}", p.app)});
        if let Some(t) = p.tier {
            labels["tier"] = json!(format!("t{t}"));
        }
        let ports: Vec<Value> = p
            .http
            .iter()
            .map(|n| json!({"name": "http", "containerPort": n}))
            .collect();
        let mut o = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": NAMESPACES[p.ns], "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": if p.succeeded { "Succeeded" } else { "Running" }}});
        if let Some(n) = p.node {
            o["spec"]["nodeName"] = json!(format!("node-{n}"));
        }
        if p.ip != 0 {
            o["status"]["podIP"] = json!(pod_ip(*i, p));
        }
        if let Some(r) = p.ready {
            o["status"]["conditions"] =
                json!([{"type": "Ready", "status": if r { "True" } else { "False" }}]);
        }
        if p.deleting {
            o["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        }
        v.push((format!("pod-{i}"), o));
    }
    for (j, s) in &w.services {
        let ns = NAMESPACES[s.ns];
        let target = if s.named_target {
            json!("http")
        } else {
            json!(8080)
        };
        let o = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{j}"), "namespace": ns},
            "spec": {"clusterIP": format!("10.96.0.{}", j + 1), "selector": {"app": format!("a{}", s.app)},
                     "ports": [{"name": "web", "port": 80, "targetPort": target}]}});
        v.push((format!("svc-{j}"), o));
        if let Some(extra) = s.slice {
            let eps: Vec<Value> = (0..=extra)
                .map(|e| json!({"addresses": [format!("10.250.{j}.{}", e + 1)], "nodeName": "node-1"}))
                .collect();
            let o = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("s{j}-x"), "namespace": ns,
                             "labels": {"kubernetes.io/service-name": format!("s{j}")}},
                "addressType": "IPv4",
                "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps});
            v.push((format!("slice-{j}"), o));
        }
    }
    for (j, p) in &w.policies {
        let ns = NAMESPACES[p.ns];
        let port = if p.named {
            json!("http")
        } else {
            json!(p.port)
        };
        let o = if p.k8s {
            let mut peer = json!({"podSelector": {"matchLabels": {"app": format!("a{}", p.peer)}}});
            if p.ns_selector {
                peer["namespaceSelector"] = json!({"matchLabels": {"team": "t0"}});
            }
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("pol{j}"), "namespace": ns},
                "spec": {"podSelector": {"matchLabels": {"app": format!("a{}", p.app)}},
                         "egress": [{"to": [peer], "ports": [{"port": port}]}]}})
        } else {
            let mut peer = json!({"matchLabels": {"app": format!("a{}", p.peer)}});
            if p.ns_selector {
                peer["matchLabels"]["k8s:io.cilium.k8s.namespace.labels.team"] = json!("t0");
            }
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": format!("pol{j}"), "namespace": ns},
                "spec": {"endpointSelector": {"matchLabels": {"app": format!("a{}", p.app)}},
                         "ingress": [{"fromEndpoints": [peer],
                                      "toPorts": [{"ports": [{"port": port.to_string().trim_matches('"'), "protocol": "TCP"}]}]}]}})
        };
        v.push((format!("pol-{j}"), o));
    }
    v
}

fn manifests(w: &World) -> Manifests {
    let mut m = Manifests::default();
    for (file, o) in objects(w) {
        load_text(&mut m, &o.to_string(), Path::new(&file));
    }
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    m
}

/// What a control published last: its service table and policy tables.
#[derive(Default)]
struct Published {
    services: Option<Arc<ServiceTable>>,
    policy: Option<Arc<PolicyTables>>,
}

impl Published {
    /// Builds what changed, as the agent does after an apply.
    fn build(&mut self, c: &mut NodeControl) {
        if let Some(b) = c.build_services(ServicesConfig::default()) {
            self.services = Some(b.table);
        }
        if let Some(b) = c.build_policy() {
            self.policy = Some(b.tables);
        }
    }
}

/// Everything `c` built, as text: the view, the identities, the policies, the ipcache, and
/// the published service table and compiled tables of every identity.
fn built(c: &NodeControl, p: &Published) -> Vec<(&'static str, String)> {
    let v = c.view();
    let mut ipcache: Vec<String> = c
        .ipcache()
        .iter()
        .map(|(n, e)| format!("{n} {e:?}"))
        .collect();
    ipcache.sort();
    let specs: Vec<String> = p
        .services
        .iter()
        .flat_map(|t| t.services())
        .map(|s| {
            let slots = s.maglev.slots().iter().fold(0u64, |h, x| {
                (h ^ u64::from(*x)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            format!("{:?} maglev {slots:x}", s.spec)
        })
        .collect();
    let mut ids: Vec<u32> = c.identities().iter().map(|(i, _)| *i).collect();
    ids.extend([1, 2, 6]);
    let tables: Vec<String> = ids
        .iter()
        .map(|i| format!("{i}: {:?}", p.policy.as_ref().and_then(|t| t.get(*i))))
        .collect();
    let mut vni: Vec<u32> = c.vni_identities().into_iter().collect();
    vni.sort();
    vec![
        ("nodes", format!("{:?}", v.nodes)),
        ("pods", format!("{:#?}", v.pods)),
        ("namespaces", format!("{:?}", v.namespaces)),
        ("services", format!("{:#?}", v.services)),
        ("warnings", format!("{:#?}", v.warnings)),
        ("identities", format!("{:?}", c.identities())),
        ("vni identities", format!("{vni:?}")),
        ("policies", format!("{:#?}", c.policies().policies)),
        ("policy warnings", format!("{:#?}", c.policies().warnings)),
        ("ipcache", format!("{ipcache:?}")),
        ("service table", specs.join("\n")),
        ("policy tables", tables.join("\n")),
    ]
}

/// With cluster-wide identities: `m` with a VireoIdentity for every label set of its pods,
/// numbered as the node-local allocator would number them, the low bits changed by `salt`
/// (another salt renumbers every set, as if the objects had been recreated).
fn with_cluster_identities(mut m: Manifests, salt: u32) -> Manifests {
    let local = crate::cluster::ClusterView::from_manifests(&m);
    m.cluster_identities = true;
    for (id, labels) in local.identities.iter() {
        let held = crate::source::ClusterIdentity {
            labels: labels.clone(),
            marked: false,
        };
        m.identities.insert(id.0 ^ salt, held);
    }
    m
}

fn check(ops: &[(u8, u64)]) {
    check_with(ops, false);
}

fn check_with(ops: &[(u8, u64)], cluster: bool) {
    let objects = |w: &World, k: u64| {
        let m = manifests(w);
        if cluster {
            with_cluster_identities(m, (k % 3) as u32)
        } else {
            m
        }
    };
    let mut w = initial();
    let mut c = NodeControl::new("node-1");
    let mut published = Published::default();
    c.apply(&objects(&w, 0));
    published.build(&mut c);
    for (step, &(op, k)) in ops.iter().enumerate() {
        let mut changed = change(&mut w, op, k);
        if cluster {
            // The identities may have been renumbered: VireoIdentity objects are workloads.
            changed.workloads = true;
        }
        c.apply_changed(&objects(&w, k), changed);
        published.build(&mut c);
        let mut fresh = NodeControl::new("node-1");
        let mut fresh_published = Published::default();
        fresh.apply(&objects(&w, k));
        fresh_published.build(&mut fresh);
        assert!(
            c.view().unallocated.is_empty(),
            "every label set has a number"
        );
        let ours = built(&c, &published);
        let theirs = built(&fresh, &fresh_published);
        for ((what, a), (_, b)) in ours.into_iter().zip(theirs) {
            assert!(
                a == b,
                "step {step} ({op} {k}: {changed:?}, cluster {cluster}): {what} differ from a \
                 fresh apply\nincremental: {a}\nfresh: {b}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn incremental_applies_equal_a_fresh_one(ops in prop::collection::vec((0u8..12, any::<u64>()), 1..16)) {
        check(&ops);
    }

    /// The same with cluster-wide identities, renumbered between steps.
    #[test]
    fn incremental_applies_equal_a_fresh_one_with_cluster_identities(ops in prop::collection::vec((0u8..12, any::<u64>()), 1..16)) {
        check_with(&ops, true);
    }
}

#[test]
fn each_kind_of_change_alone() {
    // Every op, several times with different details, in one sequence.
    let ops: Vec<(u8, u64)> = (0..12u8)
        .flat_map(|op| (0..8u64).map(move |k| (op, k * 7919 + u64::from(op))))
        .collect();
    check(&ops);
}

#[test]
fn a_namespace_label_change_reaches_the_pods_and_policies() {
    let mut w = initial();
    let mut c = NodeControl::new("node-1");
    c.apply(&manifests(&w));
    let before = c.identities();
    w.namespaces
        .insert("ns-a", Some(BTreeMap::from([("team".into(), "t9".into())])));
    c.apply_changed(
        &manifests(&w),
        Changed {
            workloads: true,
            ..Changed::default()
        },
    );
    let p = c
        .view()
        .pods
        .values()
        .find(|p| p.namespace == "ns-a")
        .expect("a pod in ns-a");
    assert_eq!(
        p.labels.get("k8s:io.cilium.k8s.namespace.labels.team"),
        Some("t9")
    );
    assert_ne!(c.identities(), before);
}

#[test]
fn a_pod_that_loses_its_address_takes_its_label_set_away() {
    let mut w = initial();
    w.pods.get_mut(&0).unwrap().tier = Some(9);
    w.pods.get_mut(&0).unwrap().ip = 1;
    w.pods.get_mut(&0).unwrap().node = Some(0);
    let mut c = NodeControl::new("node-1");
    c.apply(&manifests(&w));
    let unique = |c: &NodeControl| c.identities().iter().any(|(_, l)| l.contains("tier=t9"));
    assert!(unique(&c));
    w.pods.get_mut(&0).unwrap().ip = 0;
    let workloads = Changed {
        workloads: true,
        ..Changed::default()
    };
    c.apply_changed(&manifests(&w), workloads);
    assert!(!unique(&c), "{:?}", c.identities());
    let mut fresh = NodeControl::new("node-1");
    fresh.apply(&manifests(&w));
    assert_eq!(c.identities(), fresh.identities());
}
