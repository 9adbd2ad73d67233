//! `VireoEndpoint` publishing: create, update, unchanged, conflicts, owner references, delete;
//! with the status subresource and without.

mod identity_common;

use std::net::Ipv4Addr;
use std::time::Duration;

use identity_common::*;
use serde_json::{json, Value};
use vireo_control::allocator::endpoints::{delete_endpoint, publish_endpoint, NODE_LABEL};
use vireo_control::allocator::{EndpointState, EndpointStatus, Endpoints, PodRef, Publish, Retry};
use vireo_fakeapi::FakeApiServer;
use vireo_policy::Identity;

fn status(state: EndpointState, revision: u64) -> EndpointStatus {
    EndpointStatus {
        identity: Identity(4242),
        labels: pod("default", "web"),
        ipv4: Some(Ipv4Addr::new(10, 244, 1, 5)),
        node_name: "node-1".into(),
        node_ip: Some(Ipv4Addr::new(192, 168, 100, 11)),
        ingress_enforcing: true,
        egress_enforcing: false,
        policy_revision: revision,
        state,
    }
}

/// A pod in the store, and its reference.
fn make_pod(server: &FakeApiServer, name: &str) -> PodRef {
    let p = server
        .store()
        .create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
    PodRef {
        namespace: "default".into(),
        name: name.into(),
        uid: p["metadata"]["uid"].as_str().unwrap().into(),
    }
}

fn stored(server: &FakeApiServer, name: &str) -> Option<Value> {
    server
        .store()
        .get("vireo.io/v1alpha1", "VireoEndpoint", Some("default"), name)
        .ok()
}

async fn lifecycle(server: &FakeApiServer, expect_subresource: bool) {
    let c = client(server).await;
    let eps = Endpoints::new(c.clone(), Retry::default());
    assert_eq!(eps.status_subresource().await.unwrap(), expect_subresource);
    let p = make_pod(server, "web-0");

    // Create.
    let st = status(EndpointState::NotReady, 1);
    assert_eq!(eps.publish(&p, &st).await.unwrap(), Publish::Created);
    let o = stored(server, "web-0").unwrap();
    assert_eq!(o["kind"], "VireoEndpoint");
    assert_eq!(o["metadata"]["namespace"], "default");
    assert_eq!(
        o["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Pod", "name": "web-0", "uid": p.uid}])
    );
    assert_eq!(o["metadata"]["labels"][NODE_LABEL], "node-1");
    assert_eq!(o["status"], st.to_json());
    assert!(
        o["status"]["identity"]["labels"]
            .as_array()
            .unwrap()
            .contains(&json!("k8s:app=web")),
        "{o}"
    );
    assert_eq!(o["status"]["state"], "not-ready");
    let (_, back) = eps.get("default", "web-0").await.unwrap().unwrap();
    assert_eq!(back, Some(st.clone()));

    // Unchanged: no write.
    let rv = o["metadata"]["resourceVersion"].clone();
    assert_eq!(eps.publish(&p, &st).await.unwrap(), Publish::Unchanged);
    assert_eq!(
        stored(server, "web-0").unwrap()["metadata"]["resourceVersion"],
        rv
    );

    // Update: the status changes.
    let st2 = status(EndpointState::Ready, 2);
    assert_eq!(eps.publish(&p, &st2).await.unwrap(), Publish::Updated);
    let o = stored(server, "web-0").unwrap();
    assert_eq!(o["status"]["state"], "ready");
    assert_eq!(o["status"]["policy"]["revision"], 2);
    assert_ne!(o["metadata"]["resourceVersion"], rv);

    // Someone else changed it meanwhile (our next write would be stale): still converges.
    let mut theirs = o.clone();
    theirs["metadata"]["labels"]["other"] = json!("x");
    server.store().update(theirs).unwrap();
    let st3 = status(EndpointState::Disconnected, 3);
    assert_eq!(eps.publish(&p, &st3).await.unwrap(), Publish::Updated);
    let o = stored(server, "web-0").unwrap();
    assert_eq!(o["status"], st3.to_json());
    assert_eq!(o["metadata"]["labels"]["other"], "x");

    // Concurrent publishers (conflicting writes are retried): one of them wins, none fails.
    let others: Vec<Endpoints> = (0..4)
        .map(|_| Endpoints::new(c.clone(), Retry::default()))
        .collect();
    let runs = others.iter().enumerate().map(|(i, e)| {
        let p = p.clone();
        async move {
            let st = status(EndpointState::Ready, 10 + i as u64);
            e.publish(&p, &st).await.map(|_| st)
        }
    });
    let done: Vec<EndpointStatus> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let now = stored(server, "web-0").unwrap()["status"].clone();
    assert!(done.iter().any(|s| s.to_json() == now), "{now}");

    // The pod is re-created under the same name: the owner reference follows its uid.
    server
        .store()
        .delete("v1", "Pod", Some("default"), "web-0")
        .unwrap();
    let p2 = make_pod(server, "web-0");
    assert_ne!(p2.uid, p.uid);
    assert_eq!(eps.publish(&p2, &st3).await.unwrap(), Publish::Updated);
    let o = stored(server, "web-0").unwrap();
    assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], p2.uid.as_str());
    assert_eq!(o["status"], st3.to_json());

    // Delete, idempotently.
    assert!(eps.delete("default", "web-0").await.unwrap());
    assert!(stored(server, "web-0").is_none());
    assert!(!eps.delete("default", "web-0").await.unwrap());
    assert!(eps.get("default", "web-0").await.unwrap().is_none());

    // The one-off helpers.
    let p3 = make_pod(server, "web-1");
    assert_eq!(
        publish_endpoint(c.clone(), &p3, &st).await.unwrap(),
        Publish::Created
    );
    assert_eq!(
        publish_endpoint(c.clone(), &p3, &st).await.unwrap(),
        Publish::Unchanged
    );
    assert!(delete_endpoint(c.clone(), "default", "web-1")
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_with_a_status_subresource() {
    let server = server();
    bounded(Duration::from_secs(30), lifecycle(&server, true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_without_a_status_subresource() {
    let mut ep = endpoint_crd();
    ep["spec"]["versions"][0]
        .as_object_mut()
        .unwrap()
        .remove("subresources");
    let server = FakeApiServer::start(
        vireo_fakeapi::Options::default()
            .crd(identity_crd())
            .crd(ep),
    )
    .unwrap();
    bounded(Duration::from_secs(30), lifecycle(&server, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_fails_clearly_when_the_server_is_gone() {
    let server = server();
    bounded(Duration::from_secs(30), async {
        let eps = Endpoints::new(
            client(&server).await,
            Retry {
                attempts: 3,
                first_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(20),
                request_timeout: Duration::from_secs(1),
            },
        );
        server.stop();
        let p = PodRef {
            namespace: "default".into(),
            name: "x".into(),
            uid: "u".into(),
        };
        let e = eps
            .publish(&p, &status(EndpointState::Ready, 1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("did not answer"), "{e}");
    })
    .await;
}
