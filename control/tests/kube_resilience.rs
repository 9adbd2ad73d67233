//! The Kubernetes source when things go wrong or fast: the API server away and back; invalid
//! objects reported once as Warning Events while the rest is enforced; the wakeup, the
//! coalescing of bursts and the update-latency histogram.

mod kube_common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_common::*;
use serde_json::{json, Value};
use vireo_control::config::ServicesConfig;
use vireo_control::kube::{KubeOptions, KubeSource};
use vireo_control::node::{NodeControl, Source};
use vireo_fakeapi::{FakeApiServer, Options};

fn cluster() -> Options {
    all_crds(Options::default())
        .object(node("node-1", "192.168.100.11", "10.244.1.0/24"))
        .object(node("node-2", "192.168.100.12", "10.244.2.0/24"))
        .object(pod(
            "default",
            "web",
            "node-1",
            "10.244.1.10",
            json!({"app": "web"}),
        ))
        .object(pod(
            "default",
            "db",
            "node-2",
            "10.244.2.10",
            json!({"app": "db"}),
        ))
}

#[test]
fn an_unreachable_api_server_keeps_the_last_view_and_recovers() {
    let mut fx = start(cluster());
    let m = poll_until(&mut fx.src, "the first view", |_| true);
    assert_eq!(m.pods.len(), 2);
    assert_eq!(fx.src.status()["stale_since"], Value::Null);

    fx.server.stop();
    eventually(WAIT, "the source to be stale", || {
        fx.src.status()["stale_since"].is_string()
    });
    let st = fx.src.status();
    assert!(st["last_error"].is_string(), "{st}");
    assert!(
        st["stale_since"].as_str().unwrap().ends_with('Z'),
        "RFC 3339: {st}"
    );
    // Changes made meanwhile cannot be seen; the last view stays (no poll answers).
    modify(&fx.server, "v1", "Pod", Some("default"), "web", |o| {
        o["metadata"]["labels"]["app"] = json!("web2")
    });
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert!(
            fx.src.poll().is_none(),
            "a view while the API server is away"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(fx.src.status()["stale_since"].is_string());

    fx.server.restart().unwrap();
    poll_until_each(
        &mut fx.src,
        Duration::from_secs(60),
        "the change made while away",
        |m| {
            assert_eq!(m.pods.len(), 2, "a partial view after the restart");
        },
        |m| pod_label(m, "default", "web", "app").as_deref() == Some("web2"),
    );
    eventually(
        Duration::from_secs(60),
        "the source to be healthy again",
        || fx.src.status()["stale_since"].is_null(),
    );
}

/// The Events about `name` (of kind `kind`) on the fake server, in `ns`.
fn events_about(server: &FakeApiServer, ns: &str, kind: &str, name: &str) -> Vec<Value> {
    server
        .store()
        .list("v1", "Event", Some(ns))
        .unwrap()
        .into_iter()
        .filter(|e| e["involvedObject"]["kind"] == kind && e["involvedObject"]["name"] == name)
        .collect()
}

#[test]
fn invalid_objects_are_reported_once_and_the_rest_is_enforced() {
    let bad = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromCIDR": ["10.0.0.300/8"]}]}});
    let opts = cluster()
        .object(cnp("default", "web-from-db", "web", "db"))
        .object(cnp("default", "db-from-web", "db", "web"))
        .object(bad)
        .object(pod(
            "default",
            "broken",
            "node-2",
            "10.244.2.999",
            json!({"app": "x"}),
        ));
    let mut fx = start(opts);
    let mut control = NodeControl::new("node-1");
    let m = poll_until(&mut fx.src, "the first view", |_| true);
    control.apply(&m);
    let built = control.build_policy().expect("a policy build");
    assert!(built.tables.subjects() >= 1);
    let set = control.policies();
    let names: Vec<&str> = set
        .policies
        .iter()
        .map(|p| p.origin.name.as_str())
        .collect();
    for good in ["default/web-from-db", "default/db-from-web"] {
        let p = set
            .policies
            .iter()
            .find(|p| p.origin.name == good)
            .expect(good);
        assert_eq!(
            p.ingress.len(),
            1,
            "{good} is enforced with its rule: {names:?}"
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }
    let b = set
        .policies
        .iter()
        .find(|p| p.origin.name == "default/bad")
        .expect("the bad policy fails closed");
    assert!(b.ingress.is_empty() && b.enforce_ingress);
    fx.src.published(&control);

    eventually(WAIT, "a Warning event on the bad policy", || {
        !events_about(&fx.server, "default", "CiliumNetworkPolicy", "bad").is_empty()
    });
    eventually(WAIT, "a Warning event on the broken pod", || {
        !events_about(&fx.server, "default", "Pod", "broken").is_empty()
    });
    // More rebuilds, the problems still there: no new Event.
    for i in 0..3 {
        modify(&fx.server, "v1", "Pod", Some("default"), "db", |o| {
            o["metadata"]["labels"]["round"] = json!(i.to_string())
        });
        let m = poll_until(&mut fx.src, "the relabelled pod", |m| {
            pod_label(m, "default", "db", "round") == Some(i.to_string())
        });
        control.apply(&m);
        assert!(control.build_policy().is_some());
        fx.src.published(&control);
    }
    std::thread::sleep(Duration::from_millis(500));
    let evs = events_about(&fx.server, "default", "CiliumNetworkPolicy", "bad");
    assert_eq!(evs.len(), 1, "one Event per problem: {evs:#?}");
    let e = &evs[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "InvalidPolicy");
    assert_eq!(e["reportingComponent"], "vireo-agent");
    assert_eq!(e["count"], 1);
    assert!(e["involvedObject"]["uid"].is_string(), "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("10.0.0.300/8"),
        "{e}"
    );
    let pods = events_about(&fx.server, "default", "Pod", "broken");
    assert_eq!(pods.len(), 1, "{pods:#?}");
    assert_eq!(pods[0]["reason"], "InvalidObject");
    assert!(fx.src.problems().count() >= 2);
    assert_eq!(fx.src.status()["problems"], fx.src.problems().count());

    // Fixed, and broken again the same way: reported again (counted on the same Event).
    fx.server
        .store()
        .delete(
            "cilium.io/v2",
            "CiliumNetworkPolicy",
            Some("default"),
            "bad",
        )
        .unwrap();
    let m = poll_until(&mut fx.src, "the bad policy gone", |m| {
        m.policies.len() == 2
    });
    control.apply(&m);
    fx.src.published(&control);
    assert!(!fx.src.problems().any(|p| p.object.name == "bad"));
}

/// A source whose waker sends on a channel.
fn woken(server: FakeApiServer, coalesce: Duration) -> (Fixture, mpsc::Receiver<()>) {
    let mut fx = source_on(server, |o| KubeOptions {
        coalesce,
        cluster_identities: false,
        ..o
    });
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    fx.src.set_waker(Arc::new(move || {
        let _ = tx.lock().unwrap().send(());
    }));
    (fx, rx)
}

/// What the agent does with a poll: the same tables, then `published`.
fn rebuild(src: &mut KubeSource, control: &mut NodeControl) -> bool {
    let changed = src.poll_with(&mut |m, changed| control.apply_changed(m, changed));
    if changed {
        let _ = control.build_services(ServicesConfig::default());
        let _ = control.build_policy();
        let _ = control.ipcache();
        src.published(control);
    }
    changed
}

#[test]
fn changes_wake_the_consumer_and_their_latency_is_recorded() {
    let server = FakeApiServer::start(cluster()).unwrap();
    let (mut fx, rx) = woken(server, Duration::from_millis(2));
    let mut control = NodeControl::new("node-1");
    // The first view: woken when every kind is listed.
    let deadline = Instant::now() + WAIT;
    while !rebuild(&mut fx.src, &mut control) {
        assert!(Instant::now() < deadline, "no first view");
        let _ = rx.recv_timeout(Duration::from_millis(200));
    }
    while rx.try_recv().is_ok() {}
    assert_eq!(
        fx.src.latency().count(),
        0,
        "the initial sync is not an update"
    );

    let mut publishes = 0;
    for i in 0..20 {
        modify(&fx.server, "v1", "Pod", Some("default"), "web", |o| {
            o["metadata"]["labels"]["gen"] = json!(i.to_string())
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("woken by the change");
            if rebuild(&mut fx.src, &mut control) {
                publishes += 1;
            }
            let gen = control.view().pods[&key("default", "web")]
                .pod_labels
                .get("gen")
                .cloned();
            if gen == Some(i.to_string()) {
                break;
            }
            assert!(Instant::now() < deadline, "change {i} not seen");
        }
    }
    let l = fx.src.latency();
    assert_eq!(l.count(), publishes, "one sample per publish");
    assert!(publishes >= 20);
    let (p50, p99, max) = (l.quantile(0.5), l.quantile(0.99), l.max());
    assert!(
        p50 > Duration::ZERO && p50 <= p99 && p99 <= max,
        "{p50:?} {p99:?} {max:?}"
    );
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");
    let st = fx.src.status();
    assert_eq!(st["latency"]["count"], publishes, "{st}");
    assert!(st["latency"]["p99_us"].as_u64().unwrap() >= st["latency"]["p50_us"].as_u64().unwrap());
    assert_eq!(st["rebuilds"], publishes + 1, "{st}");

    // Idle: nobody is woken. (A wakeup may still be on its way for a change that a poll
    // already took: let those land first.)
    std::thread::sleep(Duration::from_millis(200));
    while rx.try_recv().is_ok() {}
    if rx.recv_timeout(Duration::from_millis(700)).is_ok() {
        let before = fx.src.status();
        let changed = rebuild(&mut fx.src, &mut control);
        panic!("woken without a change (a change: {changed}); status before {before}");
    }
}

#[test]
fn a_burst_of_changes_is_one_rebuild() {
    let mut opts = cluster();
    for i in 0..30 {
        opts = opts.object(pod(
            "default",
            &format!("b{i}"),
            "node-2",
            &format!("10.244.2.{}", 100 + i),
            json!({"app": "b"}),
        ));
    }
    let server = FakeApiServer::start(opts).unwrap();
    let (mut fx, rx) = woken(server, Duration::from_millis(100));
    let mut control = NodeControl::new("node-1");
    poll_until(&mut fx.src, "the first view", |m| m.pods.len() == 32);
    while rx.try_recv().is_ok() {}
    for i in 0..30 {
        modify(
            &fx.server,
            "v1",
            "Pod",
            Some("default"),
            &format!("b{i}"),
            |o| o["metadata"]["labels"]["app"] = json!("c"),
        );
    }
    let mut rebuilds = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        let _ = rx.recv_timeout(Duration::from_millis(500));
        if rebuild(&mut fx.src, &mut control) {
            rebuilds += 1;
        }
        let done = (0..30).all(|i| {
            control.view().pods[&key("default", &format!("b{i}"))].pod_labels["app"] == "c"
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the burst was not seen");
    }
    assert!(
        rebuilds <= 2,
        "30 changes in a burst took {rebuilds} rebuilds"
    );
}
