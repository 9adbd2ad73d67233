//! Garbage collection of identities: unused ones go after the grace period, used ones never,
//! one taken back just before the collector acts is kept.

mod identity_common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use identity_common::*;
use vireo_control::allocator::gc::{labels_in_use, Action};
use vireo_control::allocator::{
    EndpointState, EndpointStatus, Endpoints, GcOptions, IdentityGc, Options, PodRef, Retry,
    UNUSED_SINCE,
};
use vireo_policy::{Identity, Labels};

const GRACE: Duration = Duration::from_millis(600);

fn gc_opts() -> GcOptions {
    GcOptions {
        grace: GRACE,
        interval: Duration::from_millis(100),
        retry: Retry::default(),
    }
}

fn marked(server: &vireo_fakeapi::FakeApiServer, id: Identity) -> bool {
    server
        .store()
        .get("vireo.io/v1alpha1", "VireoIdentity", None, &id.to_string())
        .unwrap()
        .pointer(&format!(
            "/metadata/annotations/{}",
            UNUSED_SINCE.replace('/', "~1")
        ))
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_identities_go_after_the_grace_period_used_ones_never() {
    let server = server();
    bounded(Duration::from_secs(30), async {
        let a = agent(&server, Options::default()).await;
        let gc = IdentityGc::new(client(&server).await, gc_opts());
        let (used, unused) = (pod("gc", "used"), pod("gc", "unused"));
        let (iu, ix) = (
            a.allocate(&used).await.unwrap(),
            a.allocate(&unused).await.unwrap(),
        );
        let in_use: HashSet<Labels> = [used.clone()].into();

        let r = gc.run_once(&in_use).await.unwrap();
        assert_eq!(r.marked, vec![ix]);
        assert!(r.deleted.is_empty());
        assert!(marked(&server, ix) && !marked(&server, iu));
        // Within the grace period nothing goes.
        let r = gc.run_once(&in_use).await.unwrap();
        assert!(r.deleted.is_empty() && r.marked.is_empty(), "{r:?}");
        assert_eq!(at_server(&server).len(), 2);

        tokio::time::sleep(GRACE + Duration::from_millis(100)).await;
        let r = gc.run_once(&in_use).await.unwrap();
        assert_eq!(r.deleted, vec![ix]);
        let held = at_server(&server);
        assert_eq!(held.len(), 1);
        assert_eq!(held[&iu], used);
        // The agent's cache forgets it, and allocating it again re-creates it.
        eventually(Duration::from_secs(10), "the cache to forget it", || {
            a.get(&unused).is_none()
        })
        .await;
        assert_eq!(a.allocate(&unused).await.unwrap(), ix);
        assert!(!marked(&server, ix));

        // Many passes later, the used one is still there and was never marked.
        for _ in 0..5 {
            let r = gc.run_once(&in_use).await.unwrap();
            assert!(!r.marked.contains(&iu) && !r.deleted.contains(&iu));
            tokio::time::sleep(GRACE / 3).await;
        }
        assert_eq!(at_server(&server).get(&iu), Some(&used));
        assert!(!marked(&server, iu));
        // A mark on an identity that is used again is removed.
        let r = gc.run_once(&HashSet::new()).await.unwrap();
        assert!(r.marked.contains(&iu));
        let r = gc.run_once(&in_use).await.unwrap();
        assert_eq!(r.unmarked, vec![iu]);
        assert!(!marked(&server, iu));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_taken_back_just_before_the_collector_deletes_it_is_kept() {
    let server = server();
    bounded(Duration::from_secs(30), async {
        let a = agent(&server, Options::default()).await;
        let gc = IdentityGc::new(client(&server).await, gc_opts());
        let l = pod("gc", "comeback");
        let id = a.allocate(&l).await.unwrap();
        let nobody = HashSet::new();
        assert_eq!(gc.run_once(&nobody).await.unwrap().marked, vec![id]);
        tokio::time::sleep(GRACE + Duration::from_millis(100)).await;

        // The collector has listed it, expired, and is about to delete it...
        let plan = gc.plan(&nobody).await.unwrap();
        assert!(matches!(plan.actions[..], [Action::Delete(i, _, _)] if i == id));
        // ...when a pod with these labels appears: the agent takes it back (removing the mark)...
        assert_eq!(a.allocate(&l).await.unwrap(), id);
        assert!(!marked(&server, id));
        // ...so the delete, made with the listed resourceVersion, is refused.
        let r = gc.apply(plan).await.unwrap();
        assert_eq!(r.kept, vec![id]);
        assert!(r.deleted.is_empty());
        assert_eq!(at_server(&server).get(&id), Some(&l));

        // Taken back before the grace period ends: the next pass marks it afresh, it does not
        // delete it.
        tokio::time::sleep(GRACE + Duration::from_millis(100)).await;
        let r = gc.run_once(&nobody).await.unwrap();
        assert_eq!((r.marked, r.deleted), (vec![id], vec![]));
        tokio::time::sleep(GRACE / 2).await;
        assert_eq!(a.allocate(&l).await.unwrap(), id);
        tokio::time::sleep(GRACE / 2 + Duration::from_millis(100)).await;
        let r = gc.run_once(&nobody).await.unwrap();
        assert!(r.deleted.is_empty(), "{r:?}");
        assert_eq!(r.marked, vec![id]);
        assert!(at_server(&server).contains_key(&id));

        // Two collectors at once: it goes once, and neither fails.
        tokio::time::sleep(GRACE + Duration::from_millis(100)).await;
        let gc2 = IdentityGc::new(client(&server).await, gc_opts());
        let (r1, r2) = tokio::join!(gc.run_once(&nobody), gc2.run_once(&nobody));
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert_eq!(r1.deleted.len() + r2.deleted.len(), 1, "{r1:?} {r2:?}");
        assert!(at_server(&server).is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_comes_from_published_endpoints() {
    let server = server();
    bounded(Duration::from_secs(30), async {
        let c = client(&server).await;
        let a = agent(&server, Options::default()).await;
        let eps = Endpoints::new(c.clone(), Retry::default());
        let gc = IdentityGc::new(c.clone(), gc_opts());
        let (web, db) = (pod("default", "web"), pod("default", "db"));
        let iw = a.allocate(&web).await.unwrap();
        let idb = a.allocate(&db).await.unwrap();
        let st = EndpointStatus {
            identity: iw,
            labels: web.clone(),
            ipv4: Some(Ipv4Addr::new(10, 244, 1, 5)),
            node_name: "node-1".into(),
            node_ip: Some(Ipv4Addr::new(192, 168, 100, 11)),
            ingress_enforcing: false,
            egress_enforcing: false,
            policy_revision: 1,
            state: EndpointState::Ready,
        };
        let pod_ref = PodRef {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "uid-web-0".into(),
        };
        eps.publish(&pod_ref, &st).await.unwrap();
        let in_use = labels_in_use(c.clone(), &Retry::default()).await.unwrap();
        assert_eq!(in_use, [web.clone()].into());

        // The collector's loop, fed from the endpoints, removes db only.
        let task = {
            let (gc, c) = (gc.clone(), c.clone());
            tokio::spawn(async move {
                gc.run(|| {
                    let c = c.clone();
                    async move { labels_in_use(c, &Retry::default()).await }
                })
                .await
            })
        };
        eventually(
            Duration::from_secs(10),
            "db's identity to be collected",
            || !at_server(&server).contains_key(&idb),
        )
        .await;
        assert!(at_server(&server).contains_key(&iw));
        // The pod goes: its endpoint is deleted, and so is its identity, a grace period later.
        eps.delete("default", "web-0").await.unwrap();
        eventually(
            Duration::from_secs(10),
            "web's identity to be collected",
            || at_server(&server).is_empty(),
        )
        .await;
        task.abort();
    })
    .await;
}
