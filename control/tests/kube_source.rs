//! The Kubernetes source against the fake API server: every watched kind created, changed and
//! deleted; no view before every kind is listed; a kind whose CRD is missing; a relist after
//! compaction (410 Gone) swapped in whole.

mod kube_common;

use std::time::{Duration, Instant};

use kube_common::*;
use serde_json::json;
use serde_yaml_ng::Value as Yaml;
use vireo_control::node::Source;
use vireo_control::source::{Manifests, PolicyKind};
use vireo_fakeapi::Options;

fn policy<'a>(m: &'a Manifests, kind: PolicyKind, ns: &str, name: &str) -> Option<&'a Yaml> {
    m.policies
        .get(&(kind, ns.to_string(), name.to_string()))
        .map(|d| &d.value)
}

fn other<'a>(m: &'a Manifests, kind: &str, name: &str) -> Option<&'a Yaml> {
    m.others
        .iter()
        .find(|o| o.kind == kind && o.value["metadata"]["name"].as_str() == Some(name))
        .map(|o| &o.value)
}

#[test]
fn every_kind_is_seen_created_changed_and_deleted() {
    let mut fx = start(all_crds(Options::default()));
    let first = poll_until(&mut fx.src, "the first view", |_| true);
    assert!(
        first.pods.is_empty() && first.errors.is_empty(),
        "{first:?}"
    );
    let s = fx.server.store();

    // Namespace: labels.
    s.create(namespace("x", json!({"team": "red"}))).unwrap();
    poll_until(&mut fx.src, "namespace x", |m| {
        m.namespaces.contains_key("x")
    });
    modify(&fx.server, "v1", "Namespace", None, "x", |o| {
        o["metadata"]["labels"]["team"] = json!("blue")
    });
    poll_until(&mut fx.src, "namespace x relabelled", |m| {
        m.namespaces["x"].metadata.labels.as_ref().unwrap()["team"] == "blue"
    });

    // Node: pod CIDR.
    s.create(node("n1", "192.168.1.1", "10.244.1.0/24"))
        .unwrap();
    poll_until(&mut fx.src, "node n1", |m| m.nodes.contains_key("n1"));
    modify(&fx.server, "v1", "Node", None, "n1", |o| {
        o["spec"]["podCIDR"] = json!("10.244.9.0/24")
    });
    poll_until(&mut fx.src, "node n1's new CIDR", |m| {
        m.nodes["n1"].spec.as_ref().unwrap().pod_cidr.as_deref() == Some("10.244.9.0/24")
    });

    // Pod: labels.
    s.create(pod(
        "x",
        "web-1",
        "n1",
        "10.244.9.10",
        json!({"app": "web"}),
    ))
    .unwrap();
    poll_until(&mut fx.src, "pod web-1", |m| {
        pod_label(m, "x", "web-1", "app").as_deref() == Some("web")
    });
    modify(&fx.server, "v1", "Pod", Some("x"), "web-1", |o| {
        o["metadata"]["labels"]["app"] = json!("api")
    });
    poll_until(&mut fx.src, "pod web-1 relabelled", |m| {
        pod_label(m, "x", "web-1", "app").as_deref() == Some("api")
    });

    // Service: port.
    s.create(service("x", "web", "10.96.0.20", 80, json!({"app": "api"})))
        .unwrap();
    poll_until(&mut fx.src, "service web", |m| {
        m.services.contains_key(&key("x", "web"))
    });
    modify(&fx.server, "v1", "Service", Some("x"), "web", |o| {
        o["spec"]["ports"][0]["port"] = json!(81)
    });
    poll_until(&mut fx.src, "service web's new port", |m| {
        m.services[&key("x", "web")]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0]
            .port
            == 81
    });

    // EndpointSlice: an endpoint more.
    s.create(slice("x", "web-abc", "web", &["10.244.9.10"]))
        .unwrap();
    poll_until(&mut fx.src, "slice web-abc", |m| {
        m.endpoint_slices.contains_key(&key("x", "web-abc"))
    });
    s.update(slice(
        "x",
        "web-abc",
        "web",
        &["10.244.9.10", "10.244.9.11"],
    ))
    .unwrap();
    poll_until(&mut fx.src, "slice web-abc's second endpoint", |m| {
        m.endpoint_slices[&key("x", "web-abc")].endpoints.len() == 2
    });

    // The three policy kinds: a field changed.
    s.create(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "np", "namespace": "x"},
                    "spec": {"podSelector": {"matchLabels": {"app": "api"}}}}),
    )
    .unwrap();
    s.create(cnp("x", "cnp", "api", "web")).unwrap();
    s.create(json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                    "metadata": {"name": "ccnp"},
                    "spec": {"endpointSelector": {"matchLabels": {"app": "api"}}, "ingress": [{}]}}))
        .unwrap();
    poll_until(&mut fx.src, "the three policies", |m| {
        policy(m, PolicyKind::NetworkPolicy, "x", "np").is_some()
            && policy(m, PolicyKind::CiliumNetworkPolicy, "x", "cnp").is_some()
            && policy(m, PolicyKind::CiliumClusterwideNetworkPolicy, "", "ccnp").is_some()
    });
    modify(
        &fx.server,
        "networking.k8s.io/v1",
        "NetworkPolicy",
        Some("x"),
        "np",
        |o| o["spec"]["podSelector"]["matchLabels"]["app"] = json!("db"),
    );
    modify(
        &fx.server,
        "cilium.io/v2",
        "CiliumNetworkPolicy",
        Some("x"),
        "cnp",
        |o| o["spec"]["endpointSelector"]["matchLabels"]["app"] = json!("db"),
    );
    modify(
        &fx.server,
        "cilium.io/v2",
        "CiliumClusterwideNetworkPolicy",
        None,
        "ccnp",
        |o| o["spec"]["endpointSelector"]["matchLabels"]["app"] = json!("db"),
    );
    poll_until(&mut fx.src, "the three policies changed", |m| {
        let db = |v: Option<&Yaml>, sel: &str| {
            v.is_some_and(|v| v["spec"][sel]["matchLabels"]["app"].as_str() == Some("db"))
        };
        db(
            policy(m, PolicyKind::NetworkPolicy, "x", "np"),
            "podSelector",
        ) && db(
            policy(m, PolicyKind::CiliumNetworkPolicy, "x", "cnp"),
            "endpointSelector",
        ) && db(
            policy(m, PolicyKind::CiliumClusterwideNetworkPolicy, "", "ccnp"),
            "endpointSelector",
        )
    });

    // Vireo's kinds, kept as other objects.
    s.create(
        json!({"apiVersion": "vireo.io/v1alpha1", "kind": "VireoNodeConfig",
                    "metadata": {"name": "all"}, "spec": {"priority": 1}}),
    )
    .unwrap();
    s.create(
        json!({"apiVersion": "vireo.io/v1alpha1", "kind": "VireoIdentity",
                    "metadata": {"name": "70000"}, "security-labels": {"k8s:app": "web"}}),
    )
    .unwrap();
    poll_until(&mut fx.src, "vireo.io objects", |m| {
        other(m, "VireoNodeConfig", "all").is_some()
            && m.identities
                .get(&70000)
                .is_some_and(|i| i.labels.get("k8s:app") == Some("web"))
    });
    modify(
        &fx.server,
        "vireo.io/v1alpha1",
        "VireoNodeConfig",
        None,
        "all",
        |o| o["spec"]["priority"] = json!(2),
    );
    poll_until(&mut fx.src, "VireoNodeConfig changed", |m| {
        other(m, "VireoNodeConfig", "all")
            .is_some_and(|v| v["spec"]["priority"].as_u64() == Some(2))
    });

    // Deletes, of every kind.
    for (av, kind, ns, name) in [
        ("cilium.io/v2", "CiliumNetworkPolicy", Some("x"), "cnp"),
        (
            "cilium.io/v2",
            "CiliumClusterwideNetworkPolicy",
            None,
            "ccnp",
        ),
        ("networking.k8s.io/v1", "NetworkPolicy", Some("x"), "np"),
        ("vireo.io/v1alpha1", "VireoNodeConfig", None, "all"),
        ("vireo.io/v1alpha1", "VireoIdentity", None, "70000"),
        ("discovery.k8s.io/v1", "EndpointSlice", Some("x"), "web-abc"),
        ("v1", "Service", Some("x"), "web"),
        ("v1", "Pod", Some("x"), "web-1"),
        ("v1", "Node", None, "n1"),
    ] {
        s.delete(av, kind, ns, name).unwrap();
    }
    poll_until(&mut fx.src, "everything deleted", |m| {
        m.policies.is_empty()
            && m.others.is_empty()
            && m.identities.is_empty()
            && m.endpoint_slices.is_empty()
            && m.services.is_empty()
            && m.pods.is_empty()
            && m.nodes.is_empty()
    });
    s.delete("v1", "Namespace", None, "x").unwrap();
    poll_until(&mut fx.src, "namespace x deleted", |m| {
        !m.namespaces.contains_key("x")
    });
    let st = fx.src.status();
    assert_eq!(st["kind"], "kube");
    assert_eq!(st["synced"], true);
    assert!(st["events"].as_u64().unwrap() >= 30, "{st}");
    assert_eq!(st["stale_since"], serde_json::Value::Null);
}

#[test]
fn no_view_before_every_kind_is_listed() {
    let mut opts = all_crds(Options::default());
    for i in 0..20 {
        opts = opts.object(pod(
            "default",
            &format!("p{i}"),
            "n1",
            &format!("10.244.1.{i}"),
            json!({"app": "a"}),
        ));
        opts = opts.object(service(
            "default",
            &format!("s{i}"),
            &format!("10.96.1.{i}"),
            80,
            json!({"app": "a"}),
        ));
        opts = opts.object(cnp("default", &format!("c{i}"), "a", "b"));
    }
    let server = vireo_fakeapi::FakeApiServer::start(opts).unwrap();
    // The first lists fail (whichever kinds ask first): those kinds are listed again only
    // after a back-off, and no view may be answered before they are.
    server.fail_next(4, 500);
    let mut fx = source_on(server, |o| o);
    let started = Instant::now();
    let mut views = 0;
    poll_until_each(
        &mut fx.src,
        WAIT,
        "a complete view",
        |m| {
            views += 1;
            assert_eq!(
                (m.pods.len(), m.services.len(), m.policies.len()),
                (20, 20, 20),
                "a view before every kind was listed"
            );
        },
        |_| true,
    );
    // The status said so while some kind was not listed yet.
    let st = fx.src.status();
    assert_eq!(st["synced"], true);
    let synced = st["kinds"]
        .as_object()
        .unwrap()
        .values()
        .filter(|k| k["synced"] == true)
        .count();
    assert_eq!(synced, 10, "{st}");
    assert!(
        st["last_error"].is_string(),
        "the failed lists are reported: {st}"
    );
    assert!(
        started.elapsed() > Duration::from_millis(300),
        "the failed lists were retried after a back-off ({:?}), and the view waited for them",
        started.elapsed()
    );
    assert_eq!(views, 1);
}

#[test]
fn a_kind_without_its_crd_is_none_of_those_until_it_is_installed() {
    // No Cilium or Vireo CRDs at all.
    let mut fx = start(Options::default().object(pod(
        "default",
        "p",
        "n1",
        "10.244.1.2",
        json!({"app": "a"}),
    )));
    let m = poll_until(&mut fx.src, "a view without the custom kinds", |_| true);
    assert_eq!(m.pods.len(), 1);
    let st = fx.src.status();
    assert_eq!(st["kinds"]["CiliumNetworkPolicy"]["served"], false, "{st}");
    assert_eq!(st["kinds"]["Pod"]["served"], true, "{st}");
    assert_eq!(
        st["stale_since"],
        serde_json::Value::Null,
        "a missing CRD is not an error"
    );
    // The CRD appears, then a policy: the source picks both up in the background.
    for crd in vireo_fakeapi::cilium_crds() {
        fx.server.store().create(crd).unwrap();
    }
    fx.server
        .store()
        .create(cnp("default", "late", "a", "b"))
        .unwrap();
    poll_until_each(
        &mut fx.src,
        Duration::from_secs(60),
        "the late policy",
        |_| {},
        |m| policy(m, PolicyKind::CiliumNetworkPolicy, "default", "late").is_some(),
    );
    assert_eq!(
        fx.src.status()["kinds"]["CiliumNetworkPolicy"]["served"],
        true
    );
}

#[test]
fn a_relist_after_410_is_swapped_in_whole() {
    const N: usize = 500;
    let mut opts = all_crds(Options::default());
    for i in 0..N {
        opts = opts.object(pod(
            "default",
            &format!("p{i:03}"),
            "n1",
            &format!("10.244.{}.{}", i / 250, i % 250 + 1),
            json!({"app": "old"}),
        ));
    }
    let mut fx = start(opts);
    poll_until(&mut fx.src, "the 500 pods", |m| m.pods.len() == N);
    // Every request slow: the relist takes a while, and polls run meanwhile.
    fx.server.set_delay(Duration::from_millis(150));
    fx.server.compact();
    modify(&fx.server, "v1", "Pod", Some("default"), "p007", |o| {
        o["metadata"]["labels"]["app"] = json!("new")
    });
    let mut views = 0;
    poll_until_each(
        &mut fx.src,
        WAIT,
        "the relisted, modified pod",
        |m| {
            views += 1;
            assert_eq!(m.pods.len(), N, "a partial view during the relist");
            for ((_, name), p) in &m.pods {
                let app = &p.metadata.labels.as_ref().unwrap()["app"];
                assert!(
                    app == "old" || (name == "p007" && app == "new"),
                    "{name}: {app}"
                );
            }
        },
        |m| pod_label(m, "default", "p007", "app").as_deref() == Some("new"),
    );
    assert!(views >= 1);
    let st = fx.src.status();
    assert!(
        st["kinds"]["Pod"]["relists"].as_u64().unwrap() >= 1,
        "the pods were listed again: {st}"
    );
    // Nothing else changed, so nothing else is answered.
    fx.server.set_delay(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(300));
    assert!(fx.src.poll().is_none());
}
