//! Helpers shared by the `identity_*` tests: the fake API server with Vireo's CRDs, clients,
//! label sets (colliding ones found by brute force), and bounded waits.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use vireo_control::allocator::{self, candidates, labels_from_json, ClusterIdentities, Options};
use vireo_fakeapi::{crd, FakeApiServer};
use vireo_policy::{Identity, Labels};

/// The VireoIdentity CRD (cluster-scoped).
pub fn identity_crd() -> Value {
    crd(
        "vireo.io",
        "v1alpha1",
        "VireoIdentity",
        "vireoidentities",
        false,
        &["vid"],
    )
}

/// The VireoEndpoint CRD (namespaced, with a status subresource).
pub fn endpoint_crd() -> Value {
    crd(
        "vireo.io",
        "v1alpha1",
        "VireoEndpoint",
        "vireoendpoints",
        true,
        &["vep"],
    )
}

/// A fake API server (on a runtime thread of its own) serving both CRDs.
pub fn server() -> FakeApiServer {
    FakeApiServer::start(
        vireo_fakeapi::Options::default()
            .crd(identity_crd())
            .crd(endpoint_crd()),
    )
    .unwrap()
}

/// A kube client of its own (its own connection pool) for `server`.
pub async fn client(server: &FakeApiServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    allocator::client(cfg).unwrap()
}

/// An allocator ("agent") on its own client, its cache synced.
pub async fn agent(server: &FakeApiServer, opts: Options) -> ClusterIdentities {
    let a = ClusterIdentities::new(client(server).await, opts);
    a.wait_synced().await.unwrap();
    a
}

/// Runs `fut`, failing the test if it takes longer than `within`.
pub async fn bounded<T>(within: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(within, fut)
        .await
        .expect("the test took longer than its bound")
}

/// Polls `check` until it is true, or panics with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pod's label set in namespace `ns` with `app: app`.
pub fn pod(ns: &str, app: &str) -> Labels {
    let l: BTreeMap<String, String> = [("app".to_string(), app.to_string())].into();
    Labels::for_pod(
        vireo_policy::PodOrigin::in_namespace(ns),
        &l,
        &BTreeMap::new(),
    )
}

/// A label set's first candidate.
pub fn first(l: &Labels) -> Identity {
    candidates(l).next().unwrap()
}

/// Two label sets.
pub type Pair = (Labels, Labels);

/// Label sets found by brute force: `pairs` pairs with the same first candidate, and
/// `adjacent` pairs where the second's first candidate is the first's second one (so that
/// probing runs into someone else's first choice). A set may be in more than one pair.
pub fn colliding(pairs: usize, adjacent: usize) -> (Vec<Pair>, Vec<Pair>) {
    let mut seen: HashMap<Identity, Labels> = HashMap::new();
    let (mut same, mut next) = (Vec::new(), Vec::new());
    let mut i = 0u64;
    while same.len() < pairs || next.len() < adjacent {
        let l = pod("collide", &format!("c{i}"));
        i += 1;
        let f = first(&l);
        if let Some(o) = seen.get(&f) {
            if same.len() < pairs {
                same.push((o.clone(), l));
            }
            continue;
        }
        if let Some(o) = seen.get(&Identity(f.0.wrapping_sub(1))) {
            if next.len() < adjacent {
                next.push((o.clone(), l.clone()));
            }
        }
        seen.insert(f, l);
    }
    (same, next)
}

/// The identities at the server: number → labels.
pub fn at_server(server: &FakeApiServer) -> HashMap<Identity, Labels> {
    server
        .store()
        .list("vireo.io/v1alpha1", "VireoIdentity", None)
        .unwrap()
        .into_iter()
        .map(|o| {
            let n: u32 = o["metadata"]["name"].as_str().unwrap().parse().unwrap();
            (
                Identity(n),
                labels_from_json(&o["security-labels"]).unwrap(),
            )
        })
        .collect()
}

/// A small deterministic shuffle (xorshift64*, fixed seed).
pub fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let r = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
}
