//! kube-rs watches against the fake server: raw watch events, bookmarks, selectors, 410 Gone,
//! reflectors converging, relisting after compaction, recovering after a restart, streaming
//! lists.

mod common;

use common::{bounded, client, eventually};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vireo_fakeapi::{FakeApiServer, Options};

const STEP: Duration = Duration::from_secs(5);

fn pod_json(name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

async fn next<T>(s: &mut (impl futures_util::Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(STEP, s.next())
        .await
        .expect("no watch event in time")
        .expect("the watch ended")
}

fn describe(e: &WatchEvent<Pod>) -> String {
    match e {
        WatchEvent::Added(p) => format!("ADDED {}", p.metadata.name.as_deref().unwrap_or("")),
        WatchEvent::Modified(p) => format!("MODIFIED {}", p.metadata.name.as_deref().unwrap_or("")),
        WatchEvent::Deleted(p) => format!("DELETED {}", p.metadata.name.as_deref().unwrap_or("")),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(e) => format!("ERROR {}", e.code),
    }
}

#[tokio::test]
async fn raw_watch_events_bookmarks_and_gone() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = FakeApiServer::start(Options::default().bookmark_interval(Duration::from_millis(200))).unwrap();
        let store = server.store().clone();
        let c = client(&server, dir.path()).await;
        let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
        store.create(pod_json("old", "web")).unwrap();

        let mut w = pods.watch(&WatchParams::default().timeout(20), "0").await.unwrap().boxed();
        assert_eq!(describe(&next(&mut w).await.unwrap()), "ADDED old");
        let mark = store.resource_version();
        store.create(pod_json("new", "web")).unwrap();
        assert_eq!(describe(&next(&mut w).await.unwrap()), "ADDED new");
        let mut p = store.get("v1", "Pod", Some("default"), "new").unwrap();
        p["metadata"]["labels"]["app"] = json!("api");
        store.update(p).unwrap();
        assert_eq!(describe(&next(&mut w).await.unwrap()), "MODIFIED new");
        store.delete("v1", "Pod", Some("default"), "old").unwrap();
        assert_eq!(describe(&next(&mut w).await.unwrap()), "DELETED old");
        // Another kind's change moves the bookmark on, but is not sent.
        store.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}})).unwrap();
        let latest = store.resource_version();
        loop {
            let e = next(&mut w).await.unwrap();
            let d = describe(&e);
            assert!(d.starts_with("BOOKMARK"), "{d}");
            if d == format!("BOOKMARK {latest}") {
                break;
            }
        }
        drop(w);

        // Resuming from a resourceVersion replays what came after it.
        let mut w = pods.watch(&WatchParams::default().timeout(20), &mark.to_string()).await.unwrap().boxed();
        let got: Vec<String> = [next(&mut w).await, next(&mut w).await, next(&mut w).await]
            .into_iter()
            .map(|e| describe(&e.unwrap()))
            .collect();
        assert_eq!(got, ["ADDED new", "MODIFIED new", "DELETED old"]);

        // Compaction: the open watch ends with a 410, and a watch from before it gets one too.
        server.compact();
        loop {
            let d = describe(&next(&mut w).await.unwrap());
            if d.starts_with("BOOKMARK") {
                continue;
            }
            assert_eq!(d, "ERROR 410");
            break;
        }
        let mut w = pods.watch(&WatchParams::default(), &mark.to_string()).await.unwrap().boxed();
        assert_eq!(describe(&next(&mut w).await.unwrap()), "ERROR 410");
    })
    .await;
}

#[tokio::test]
async fn watch_selectors_see_objects_move_in_and_out() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = FakeApiServer::start(Options::default()).unwrap();
        let store = server.store().clone();
        let c = client(&server, dir.path()).await;
        let pods: Api<Pod> = Api::all(c);
        let rv = store.resource_version().to_string();
        let wp = WatchParams::default()
            .labels("app=web")
            .disable_bookmarks()
            .timeout(20);
        let mut w = pods.watch(&wp, &rv).await.unwrap().boxed();
        store.create(pod_json("a", "db")).unwrap();
        store.create(pod_json("b", "web")).unwrap();
        assert_eq!(describe(&next(&mut w).await.unwrap()), "ADDED b");
        let mut a = store.get("v1", "Pod", Some("default"), "a").unwrap();
        a["metadata"]["labels"]["app"] = json!("web");
        store.update(a).unwrap();
        assert_eq!(describe(&next(&mut w).await.unwrap()), "ADDED a");
        let mut b = store.get("v1", "Pod", Some("default"), "b").unwrap();
        b["metadata"]["labels"]["app"] = json!("db");
        store.update(b).unwrap();
        assert_eq!(describe(&next(&mut w).await.unwrap()), "DELETED b");

        // timeoutSeconds ends the stream.
        let wp = WatchParams::default().timeout(1).disable_bookmarks();
        let mut w = pods
            .watch(&wp, &store.resource_version().to_string())
            .await
            .unwrap()
            .boxed();
        let end = tokio::time::timeout(STEP, w.next())
            .await
            .expect("the watch did not time out");
        assert!(end.is_none());
    })
    .await;
}

/// Names and resourceVersions in a reflector's store.
fn reflected<K: kube::Resource<DynamicType = D> + Clone, D: Eq + std::hash::Hash + Clone>(
    s: &reflector::Store<K>,
) -> BTreeMap<String, String> {
    s.state()
        .iter()
        .map(|o| {
            (
                o.meta().name.clone().unwrap_or_default(),
                o.meta().resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Names and resourceVersions in the server's store.
fn stored(
    server: &vireo_fakeapi::Store,
    api_version: &str,
    kind: &str,
) -> BTreeMap<String, String> {
    server
        .list(api_version, kind, None)
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap().to_string(),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn reflector_converges_relists_after_compaction_and_recovers_after_restart() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = FakeApiServer::start(Options::default()).unwrap();
        let store = server.store().clone();
        for i in 0..5 {
            store.create(pod_json(&format!("p{i}"), "web")).unwrap();
        }
        let c = client(&server, dir.path()).await;
        let pods: Api<Pod> = Api::all(c);
        let (reader, writer) = reflector::store();
        let inits = Arc::new(Mutex::new(0usize));
        let counted = inits.clone();
        let stream = reflector(writer, watcher(pods, watcher::Config::default()))
            .default_backoff()
            .inspect_ok(move |e| {
                if matches!(e, watcher::Event::Init) {
                    *counted.lock().unwrap() += 1;
                }
            });
        let task = tokio::spawn(stream.for_each(|_| async {}));
        let converged = |what: &str| {
            let (reader, store) = (reader.clone(), store.clone());
            let what = what.to_string();
            async move {
                eventually(Duration::from_secs(15), &what, || {
                    reflected(&reader) == stored(&store, "v1", "Pod")
                })
                .await;
            }
        };
        converged("the initial list").await;
        assert_eq!(stored(&store, "v1", "Pod").len(), 5);

        store.create(pod_json("p5", "web")).unwrap();
        store.delete("v1", "Pod", Some("default"), "p0").unwrap();
        let mut p1 = store.get("v1", "Pod", Some("default"), "p1").unwrap();
        p1["metadata"]["labels"]["v"] = json!("2");
        store.update(p1).unwrap();
        converged("the changes").await;
        let inits_before = *inits.lock().unwrap();

        // Compaction: the watch gets 410, the watcher lists again.
        server.compact();
        eventually(Duration::from_secs(10), "a relist", || {
            *inits.lock().unwrap() > inits_before
        })
        .await;
        store.create(pod_json("p6", "web")).unwrap();
        converged("after compaction").await;

        // Stop: unreachable; changes made meanwhile are seen after the restart.
        server.stop();
        assert!(
            std::net::TcpStream::connect(server.addr()).is_err(),
            "the port is still open"
        );
        store.delete("v1", "Pod", Some("default"), "p2").unwrap();
        store.create(pod_json("p7", "web")).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.restart().unwrap();
        converged("after the restart").await;
        assert!(reflected(&reader).contains_key("p7") && !reflected(&reader).contains_key("p2"));
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn streaming_list_watcher_on_a_custom_resource() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = FakeApiServer::start(Options::default().cilium_crds()).unwrap();
        let store = server.store().clone();
        let cnp = |name: &str| {
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                   "metadata": {"name": name, "namespace": "default"}, "spec": {"endpointSelector": {}}})
        };
        store.create(cnp("a")).unwrap();
        store.create(cnp("b")).unwrap();
        let c = client(&server, dir.path()).await;
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cilium.io", "v2", "CiliumNetworkPolicy"), "ciliumnetworkpolicies");
        let api: Api<DynamicObject> = Api::all_with(c.clone(), &ar);
        let events = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = events.clone();
        let writer = reflector::store::Writer::new(ar.clone());
        let reader = writer.as_reader();
        let stream = reflector(writer, watcher(api.clone(), watcher::Config::default().streaming_lists()))
            .default_backoff()
            .inspect_ok(move |e| {
                let d = match e {
                    watcher::Event::Init => "Init".to_string(),
                    watcher::Event::InitApply(o) => format!("InitApply {}", o.metadata.name.clone().unwrap_or_default()),
                    watcher::Event::InitDone => "InitDone".to_string(),
                    watcher::Event::Apply(o) => format!("Apply {}", o.metadata.name.clone().unwrap_or_default()),
                    watcher::Event::Delete(o) => format!("Delete {}", o.metadata.name.clone().unwrap_or_default()),
                };
                log.lock().unwrap().push(d);
            });
        let task = tokio::spawn(stream.for_each(|_| async {}));
        eventually(Duration::from_secs(10), "InitDone", || events.lock().unwrap().iter().any(|e| e == "InitDone")).await;
        assert_eq!(
            events.lock().unwrap()[..4],
            ["Init", "InitApply a", "InitApply b", "InitDone"].map(String::from)
        );
        Api::<DynamicObject>::namespaced_with(c.clone(), "default", &ar)
            .create(&PostParams::default(), &serde_json::from_value(cnp("c")).unwrap())
            .await
            .unwrap();
        let (r, s) = (reader.clone(), store.clone());
        eventually(Duration::from_secs(10), "the new policy", || reflected(&r) == stored(&s, "cilium.io/v2", "CiliumNetworkPolicy")).await;
        assert!(events.lock().unwrap().contains(&"Apply c".to_string()));
        task.abort();

        // The same through a plain list-then-watch watcher on another kind, with pages.
        let svcs: Api<Service> = Api::all(c);
        for i in 0..7 {
            store
                .create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("s{i}"), "namespace": "default"},
                               "spec": {"ports": [{"port": 80}]}}))
                .unwrap();
        }
        let (sreader, swriter) = reflector::store();
        let t = tokio::spawn(
            reflector(swriter, watcher(svcs, watcher::Config::default().page_size(3)))
                .default_backoff()
                .for_each(|_| async {}),
        );
        let s = store.clone();
        eventually(Duration::from_secs(10), "the services", || reflected(&sreader) == stored(&s, "v1", "Service")).await;
        assert_eq!(reflected(&sreader).len(), 7);
        t.abort();
    })
    .await;
}
