//! Helpers of the Kubernetes source's tests: a fake API server with a source on it, objects,
//! and bounded waits.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vireo_control::kube::{KubeOptions, KubeSource};
use vireo_control::node::Source;
use vireo_control::source::Manifests;
use vireo_fakeapi::{FakeApiServer, Options};

/// The longest any single wait of these tests may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// A fake API server and a source watching it.
pub struct Fixture {
    pub server: FakeApiServer,
    pub dir: tempfile::TempDir,
    pub src: KubeSource,
}

/// Cilium's and Vireo's CRDs.
pub fn all_crds(o: Options) -> Options {
    o.cilium_crds()
        .crd(vireo_fakeapi::crd(
            "vireo.io",
            "v1alpha1",
            "VireoNodeConfig",
            "vireonodeconfigs",
            false,
            &[],
        ))
        .crd(vireo_fakeapi::crd(
            "vireo.io",
            "v1alpha1",
            "VireoIdentity",
            "vireoidentities",
            false,
            &[],
        ))
}

/// A server started with `opts`, and a source on it (node `node-1`). These tests are about
/// watching, so the source takes node-local identities: with cluster-wide ones a pod enters
/// the view only once its identity is allocated, after a publish (`kube_identities.rs` tests
/// that).
pub fn start(opts: Options) -> Fixture {
    let server = FakeApiServer::start(opts).expect("fake API server");
    source_on(server, |o| KubeOptions {
        cluster_identities: false,
        ..o
    })
}

/// A source (options changed by `f`) on `server`.
pub fn source_on(server: FakeApiServer, f: impl FnOnce(KubeOptions) -> KubeOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();
    let src = KubeSource::new(f(KubeOptions::new("node-1", Some(kc)))).expect("source");
    Fixture { server, dir, src }
}

/// Polls until a view delivered satisfies `check` (the last view delivered is checked each
/// time); panics naming `what` after `within`. Every view delivered meanwhile goes through
/// `each`.
pub fn poll_until_each(
    src: &mut KubeSource,
    within: Duration,
    what: &str,
    mut each: impl FnMut(&Manifests),
    mut check: impl FnMut(&Manifests) -> bool,
) -> Manifests {
    let deadline = Instant::now() + within;
    let mut last: Option<Manifests> = None;
    loop {
        if let Some(m) = src.poll() {
            each(&m);
            last = Some(m);
        }
        if let Some(m) = &last {
            if check(m) {
                return last.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; status: {}",
            src.status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// [`poll_until_each`] without `each`.
pub fn poll_until(
    src: &mut KubeSource,
    what: &str,
    check: impl FnMut(&Manifests) -> bool,
) -> Manifests {
    poll_until_each(src, WAIT, what, |_| {}, check)
}

/// Waits until `check` is true.
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn node(name: &str, ip: &str, cidr: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "spec": {"podCIDR": cidr},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

pub fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
                    "ports": [{"name": "http", "containerPort": 8080}]}]},
           "status": {"podIP": ip}})
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

pub fn service(ns: &str, name: &str, ip: &str, port: u16, selector: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": ip, "selector": selector,
                    "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}]}})
}

pub fn slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>()})
}

pub fn cnp(ns: &str, name: &str, app: &str, from: &str) -> Value {
    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"endpointSelector": {"matchLabels": {"app": app}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": from}}]}]}})
}

/// Gets an object, changes it with `f`, and writes it back.
pub fn modify(
    server: &FakeApiServer,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
    f: impl FnOnce(&mut Value),
) {
    let store = server.store();
    let mut o = store
        .get(api_version, kind, ns, name)
        .expect("object to modify");
    f(&mut o);
    store.update(o).expect("update");
}

/// `ns/name` keys.
pub fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

/// A pod's label `k` in a view.
pub fn pod_label(m: &Manifests, ns: &str, name: &str, k: &str) -> Option<String> {
    m.pods
        .get(&key(ns, name))?
        .metadata
        .labels
        .as_ref()?
        .get(k)
        .cloned()
}
