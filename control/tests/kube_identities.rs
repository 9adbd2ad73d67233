//! Cluster-wide identities through the Kubernetes source: agents allocate `VireoIdentity`
//! objects for the label sets their views wait for, and every agent's view gives each pod the
//! same number, whatever the order it saw things in.

mod kube_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube_common::*;
use serde_json::{json, Value};
use vireo_control::allocator::identities::identity_object;
use vireo_control::kube::{KubeOptions, KubeSource};
use vireo_control::node::{NodeControl, Source};
use vireo_fakeapi::{FakeApiServer, Options};
use vireo_policy::{Identity, Labels};

/// One agent: a source and the control state it feeds.
struct Agent {
    src: KubeSource,
    ctl: NodeControl,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn on(server: &FakeApiServer, node: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kc).unwrap();
        let src = KubeSource::new(KubeOptions::new(node, Some(kc))).expect("source");
        Agent {
            src,
            ctl: NodeControl::new(node),
            _dir: dir,
        }
    }

    /// What the agent does each turn: take in a change, publish, report it published.
    fn turn(&mut self) {
        let ctl = &mut self.ctl;
        if self.src.poll_with(&mut |m, c| ctl.apply_changed(m, c)) {
            self.src.published(&self.ctl);
        }
    }

    /// Pod `ns/name`'s identity in the view.
    fn identity(&self, ns: &str, name: &str) -> Option<Identity> {
        self.ctl.view().pods.get(&key(ns, name)).map(|p| p.identity)
    }
}

/// Turns every agent until `done` holds for all of them.
fn until(agents: &mut [&mut Agent], what: &str, done: impl Fn(&Agent) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        for a in agents.iter_mut() {
            a.turn();
        }
        if agents.iter().all(|a| done(a)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status: {}",
            agents[0].src.status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn server() -> FakeApiServer {
    let s = FakeApiServer::start(all_crds(Options::default())).expect("fake API server");
    let store = s.store();
    store
        .create(node("node-1", "192.168.1.1", "10.1.1.0/24"))
        .unwrap();
    store
        .create(node("node-2", "192.168.1.2", "10.1.2.0/24"))
        .unwrap();
    s
}

/// The label sets the server's VireoIdentity objects hold, by number.
fn server_identities(s: &FakeApiServer) -> BTreeMap<u32, Value> {
    s.store()
        .list("vireo.io/v1alpha1", "VireoIdentity", None)
        .unwrap()
        .into_iter()
        .map(|o| {
            let n = o["metadata"]["name"].as_str().unwrap().parse().unwrap();
            (n, o["security-labels"].clone())
        })
        .collect()
}

/// Creates pod `default/name` on `node` with label `app`.
fn create_pod(s: &FakeApiServer, name: &str, node: &str, ip: &str, app: &str) {
    s.store()
        .create(pod("default", name, node, ip, json!({"app": app})))
        .unwrap();
}

fn default_pod_labels(app: &str) -> Labels {
    let pod = BTreeMap::from([("app".to_string(), app.to_string())]);
    let ns = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_string(),
        "default".to_string(),
    )]);
    Labels::for_pod(vireo_policy::PodOrigin::in_namespace("default"), &pod, &ns)
}

#[test]
fn two_agents_give_every_pod_the_same_cluster_wide_identity() {
    let s = server();
    let mut a = Agent::on(&s, "node-1");
    let mut b = Agent::on(&s, "node-2");
    let store = s.store();
    // 40 pods, 8 label sets, on both nodes, created while both agents run.
    for i in 0..40 {
        let node = if i % 2 == 0 { "node-1" } else { "node-2" };
        let ip = format!("10.1.{}.{}", 1 + i % 2, 10 + i);
        store
            .create(pod(
                "default",
                &format!("p{i}"),
                node,
                &ip,
                json!({"app": format!("app{}", i % 8)}),
            ))
            .unwrap();
        if i % 10 == 0 {
            a.turn();
            b.turn();
        }
    }
    until(&mut [&mut a, &mut b], "every pod in both views", |g| {
        g.ctl.view().pods.len() == 40 && g.ctl.view().unallocated.is_empty()
    });
    let ids = server_identities(&s);
    assert_eq!(ids.len(), 8, "one VireoIdentity per label set: {ids:?}");
    let mut numbers = BTreeMap::new();
    for i in 0..40 {
        let name = format!("p{i}");
        let (x, y) = (a.identity("default", &name), b.identity("default", &name));
        assert_eq!(x, y, "{name}: both agents agree");
        let id = x.unwrap();
        // The number is the server's, holding exactly this pod's labels.
        let held = &ids[&id.0];
        assert_eq!(held["k8s:app"], json!(format!("app{}", i % 8)), "{held}");
        numbers.entry(i % 8).or_insert(id);
        assert_eq!(numbers[&(i % 8)], id, "one number per label set");
    }
    let distinct: BTreeSet<_> = numbers.values().collect();
    assert_eq!(distinct.len(), 8, "no two label sets share a number");
    // Nothing is node-local: the status says so.
    let st = a.src.status();
    assert_eq!(st["identities"]["mode"], "cluster", "{st}");
    assert_eq!(st["identities"]["waiting"], 0, "{st}");
}

#[test]
fn a_label_change_moves_the_pod_to_the_new_identity() {
    let s = server();
    let mut a = Agent::on(&s, "node-1");
    create_pod(&s, "web", "node-1", "10.1.1.5", "web");
    until(&mut [&mut a], "the pod with its identity", |g| {
        g.identity("default", "web").is_some()
    });
    let old = a.identity("default", "web").unwrap();
    modify(&s, "v1", "Pod", Some("default"), "web", |p| {
        p["metadata"]["labels"]["app"] = json!("api");
    });
    // While the new identity is allocated the pod keeps its old one (it never leaves the
    // view); then it moves to the new one.
    let deadline = Instant::now() + WAIT;
    loop {
        a.turn();
        let p = a.ctl.view().pods.get(&key("default", "web")).cloned();
        let p = p.expect("the pod stays in the view while its new identity is allocated");
        if p.identity != old {
            assert_eq!(p.labels, default_pod_labels("api"));
            assert_eq!(server_identities(&s)[&p.identity.0]["k8s:app"], "api");
            break;
        }
        assert_eq!(
            p.labels,
            default_pod_labels("web"),
            "old number, old labels"
        );
        assert!(
            Instant::now() < deadline,
            "the pod never got its new identity"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn an_identity_marked_unused_is_taken_back_before_a_new_pod_uses_it() {
    let s = server();
    let labels = default_pod_labels("db");
    // An identity the collector found unused (another label set would not matter here: the
    // point is that the view does not use a marked number until the mark is gone).
    let mut obj = serde_json::to_value(identity_object(Identity(70_000), &labels)).unwrap();
    obj["metadata"]["annotations"] = json!({"vireo.io/unused-since": "2026-01-01T00:00:00Z"});
    s.store().create(obj).unwrap();
    let mut a = Agent::on(&s, "node-1");
    create_pod(&s, "db", "node-1", "10.1.1.7", "db");
    until(&mut [&mut a], "the pod with its identity", |g| {
        g.identity("default", "db").is_some()
    });
    assert_eq!(a.identity("default", "db"), Some(Identity(70_000)));
    let o = s
        .store()
        .get("vireo.io/v1alpha1", "VireoIdentity", None, "70000")
        .unwrap();
    assert!(
        o["metadata"]["annotations"]
            .get("vireo.io/unused-since")
            .is_none(),
        "the mark was removed before the number was used: {o}"
    );
}

#[test]
fn without_the_crd_new_pods_wait_and_the_status_says_why() {
    let s = FakeApiServer::start(Options::default().cilium_crds()).expect("fake API server");
    s.store()
        .create(node("node-1", "192.168.1.1", "10.1.1.0/24"))
        .unwrap();
    create_pod(&s, "web", "node-1", "10.1.1.5", "web");
    let mut a = Agent::on(&s, "node-1");
    until(&mut [&mut a], "the allocation to fail", |g| {
        !g.src.status()["identities"]["last_error"].is_null()
    });
    assert!(a.ctl.view().pods.is_empty(), "no identity, no endpoint");
    assert_eq!(a.ctl.view().unallocated, vec![default_pod_labels("web")]);
}
