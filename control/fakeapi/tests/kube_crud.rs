//! kube-rs against the fake server: get, list, create, replace, patch, delete, selectors,
//! pagination, errors, CRDs and discovery.

mod common;

use common::{api_code, bounded, client};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::json;
use vireo_fakeapi::{FakeApiServer, Options};

fn pod(name: &str, node: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}]}]},
    }))
    .unwrap()
}

#[tokio::test]
async fn pods_full_lifecycle_and_errors() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = FakeApiServer::start(Options::default()).unwrap();
        let c = client(&server, dir.path()).await;
        let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
        let pp = PostParams::default();

        let created = pods.create(&pp, &pod("a", "n1", "web")).await.unwrap();
        let md = &created.metadata;
        assert!(md.uid.is_some() && md.creation_timestamp.is_some());
        assert_eq!(md.generation, Some(1));
        let rv1: u64 = md.resource_version.as_deref().unwrap().parse().unwrap();

        // 409 AlreadyExists
        let (code, reason) = api_code(pods.create(&pp, &pod("a", "n1", "web")).await);
        assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
        // 404 NotFound, and a namespace that does not exist
        assert_eq!(api_code(pods.get("nope").await).0, 404);
        let elsewhere: Api<Pod> = Api::namespaced(c.clone(), "missing");
        assert_eq!(
            api_code(elsewhere.create(&pp, &pod("x", "n1", "web")).await).0,
            404
        );
        // 422 for an invalid name
        assert_eq!(
            api_code(pods.create(&pp, &pod("Bad_Name", "n1", "web")).await).0,
            422
        );

        // replace, then a stale resourceVersion is a 409 Conflict
        let mut p = pods.get("a").await.unwrap();
        p.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into());
        let replaced = pods.replace("a", &pp, &p).await.unwrap();
        let rv2: u64 = replaced
            .metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rv2 > rv1);
        assert_eq!(replaced.metadata.generation, Some(2));
        let (code, reason) = api_code(pods.replace("a", &pp, &p).await);
        assert_eq!((code, reason.as_str()), (409, "Conflict"));

        // patches: merge, strategic (containers merged by name), JSON, apply
        let merged = pods
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
            )
            .await
            .unwrap();
        assert_eq!(merged.metadata.labels.as_ref().unwrap()["tier"], "front");
        let smp = pods
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Strategic(
                    json!({"spec": {"containers": [{"name": "side", "image": "envoy"}]}}),
                ),
            )
            .await
            .unwrap();
        let names: Vec<_> = smp
            .spec
            .unwrap()
            .containers
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["c", "side"]);
        let jp: json_patch::Patch = serde_json::from_value(json!([
            {"op": "replace", "path": "/metadata/labels/app", "value": "api"}
        ]))
        .unwrap();
        let jsoned = pods
            .patch("a", &PatchParams::default(), &Patch::Json::<()>(jp))
            .await
            .unwrap();
        assert_eq!(jsoned.metadata.labels.as_ref().unwrap()["app"], "api");
        let applied = pods
            .patch(
                "b",
                &PatchParams::apply("test"),
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b"},
                    "spec": {"containers": [{"name": "c", "image": "x"}]}}),
                ),
            )
            .await
            .unwrap();
        assert_eq!(applied.metadata.name.as_deref(), Some("b"));

        // the status subresource: the main resource ignores status, /status only takes it
        let st = pods
            .patch_status(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.0.0.5"}})),
            )
            .await
            .unwrap();
        assert_eq!(
            st.status.as_ref().unwrap().phase.as_deref(),
            Some("Running")
        );
        let ignored = pods
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Failed"}})),
            )
            .await
            .unwrap();
        assert_eq!(ignored.status.unwrap().phase.as_deref(), Some("Running"));

        // dryRun changes nothing
        let before = server.store().resource_version();
        pods.create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod("dry", "n1", "web"),
        )
        .await
        .unwrap();
        assert_eq!(api_code(pods.get("dry").await).0, 404);
        assert_eq!(server.store().resource_version(), before);

        // generateName
        let mut g = pod("", "n1", "web");
        g.metadata.name = None;
        g.metadata.generate_name = Some("gen-".into());
        let gen = pods.create(&pp, &g).await.unwrap();
        assert!(gen.metadata.name.unwrap().starts_with("gen-"));

        pods.delete("a", &DeleteParams::default()).await.unwrap();
        assert_eq!(api_code(pods.get("a").await).0, 404);
        assert_eq!(
            api_code(pods.delete("a", &DeleteParams::default()).await).0,
            404
        );
        assert!(server
            .store()
            .get("v1", "Pod", Some("default"), "a")
            .is_err());
    })
    .await;
}

#[tokio::test]
async fn selectors_pagination_and_all_namespaces() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = FakeApiServer::start(Options::default()).unwrap();
        let c = client(&server, dir.path()).await;
        let nss: Api<Namespace> = Api::all(c.clone());
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
        for (ns, name, node, app) in [
            ("default", "p1", "n1", "web"),
            ("default", "p2", "n2", "web"),
            ("default", "p3", "n1", "db"),
            ("team", "p4", "n1", "web"),
            ("team", "p5", "n2", "cache"),
        ] {
            Api::<Pod>::namespaced(c.clone(), ns)
                .create(&PostParams::default(), &pod(name, node, app))
                .await
                .unwrap();
        }
        let all: Api<Pod> = Api::all(c.clone());
        let names = |l: kube::core::ObjectList<Pod>| -> Vec<String> {
            l.items
                .into_iter()
                .map(|p| p.metadata.name.unwrap())
                .collect()
        };
        assert_eq!(
            names(all.list(&ListParams::default()).await.unwrap()).len(),
            5
        );
        assert_eq!(
            names(
                all.list(&ListParams::default().labels("app=web"))
                    .await
                    .unwrap()
            ),
            ["p1", "p2", "p4"]
        );
        assert_eq!(
            names(
                all.list(&ListParams::default().labels("app in (db,cache)"))
                    .await
                    .unwrap()
            ),
            ["p3", "p5"]
        );
        assert_eq!(
            names(
                all.list(&ListParams::default().labels("app notin (web),app"))
                    .await
                    .unwrap()
            ),
            ["p3", "p5"]
        );
        assert_eq!(
            names(
                all.list(&ListParams::default().labels("app!=web"))
                    .await
                    .unwrap()
            ),
            ["p3", "p5"]
        );
        assert_eq!(
            names(
                all.list(&ListParams::default().fields("spec.nodeName=n1"))
                    .await
                    .unwrap()
            ),
            ["p1", "p3", "p4"]
        );
        assert_eq!(
            names(
                all.list(
                    &ListParams::default().fields("metadata.namespace=team,metadata.name!=p4")
                )
                .await
                .unwrap()
            ),
            ["p5"]
        );
        let team: Api<Pod> = Api::namespaced(c.clone(), "team");
        assert_eq!(
            names(team.list(&ListParams::default()).await.unwrap()),
            ["p4", "p5"]
        );
        assert_eq!(
            api_code(all.list(&ListParams::default().labels("a in (b")).await).0,
            400
        );

        // pagination
        let mut seen = Vec::new();
        let mut lp = ListParams::default().limit(2);
        loop {
            let page = all.list(&lp).await.unwrap();
            assert!(page.items.len() <= 2);
            let next = page.metadata.continue_.clone();
            seen.extend(names(page));
            match next {
                Some(t) if !t.is_empty() => lp = lp.continue_token(&t),
                _ => break,
            }
        }
        assert_eq!(seen, ["p1", "p2", "p3", "p4", "p5"]);

        // after compaction, an old continue token and an old resourceVersion are 410 Expired
        let page = all.list(&ListParams::default().limit(2)).await.unwrap();
        let token = page.metadata.continue_.unwrap();
        let old_rv = page.metadata.resource_version.unwrap();
        Api::<Pod>::namespaced(c.clone(), "default")
            .create(&PostParams::default(), &pod("p6", "n1", "web"))
            .await
            .unwrap();
        server.compact();
        let (code, reason) = api_code(
            all.list(&ListParams::default().limit(2).continue_token(&token))
                .await,
        );
        assert_eq!((code, reason.as_str()), (410, "Expired"));
        let old = ListParams {
            resource_version: Some(old_rv),
            ..Default::default()
        };
        assert_eq!(api_code(all.list(&old).await).0, 410);

        // deleting a namespace deletes what is in it
        nss.delete("team", &DeleteParams::default()).await.unwrap();
        assert_eq!(
            names(all.list(&ListParams::default()).await.unwrap()),
            ["p1", "p2", "p3", "p6"]
        );
        assert_eq!(
            api_code(nss.delete("default", &DeleteParams::default()).await).0,
            403
        );
    })
    .await;
}

#[tokio::test]
async fn every_builtin_kind_round_trips() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = FakeApiServer::start(Options::default()).unwrap();
        let c = client(&server, dir.path()).await;
        let pp = PostParams::default();

        let svcs: Api<Service> = Api::namespaced(c.clone(), "default");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "name": "http"}]},
        }))
        .unwrap();
        let s = svcs.create(&pp, &svc).await.unwrap();
        let spec = s.spec.unwrap();
        let ip = spec.cluster_ip.clone().unwrap();
        assert!(ip.starts_with("10.96."), "{ip}");
        assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));
        let s = svcs
            .patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"ports": [{"port": 443, "name": "https"}]}})))
            .await
            .unwrap();
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some(ip.as_str()));
        assert_eq!(spec.ports.unwrap().len(), 2);

        let eps: Api<EndpointSlice> = Api::namespaced(c.clone(), "default");
        let es: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
            "ports": [{"port": 80, "name": "http", "protocol": "TCP"}],
        }))
        .unwrap();
        eps.create(&pp, &es).await.unwrap();
        let got = eps.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.unwrap();
        assert_eq!(got.items[0].endpoints[0].addresses, ["10.244.1.5"]);

        let nps: Api<NetworkPolicy> = Api::namespaced(c.clone(), "default");
        let np: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }))
        .unwrap();
        nps.create(&pp, &np).await.unwrap();
        let mut np = nps.get("deny").await.unwrap();
        np.spec.as_mut().unwrap().policy_types = Some(vec!["Ingress".into(), "Egress".into()]);
        let np = nps.replace("deny", &pp, &np).await.unwrap();
        assert_eq!(np.spec.unwrap().policy_types.unwrap().len(), 2);

        let nodes: Api<Node> = Api::all(c.clone());
        let n: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}})).unwrap();
        nodes.create(&pp, &n).await.unwrap();
        nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Merge(json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}})))
            .await
            .unwrap();
        let n = nodes.get_status("n1").await.unwrap();
        assert_eq!(n.status.unwrap().addresses.unwrap()[0].address, "192.168.0.1");
        assert!(nodes.delete("n1", &DeleteParams::default()).await.unwrap().is_right());

        let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "kube-system");
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}})).unwrap();
        cms.create(&pp, &cm).await.unwrap();
        let cm = cms.patch("cfg", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": null, "b": "2"}}))).await.unwrap();
        assert_eq!(cm.data.unwrap().into_iter().collect::<Vec<_>>(), [("b".to_string(), "2".to_string())]);

        // direct store access is seen through the API and the other way round
        server
            .store()
            .create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "direct", "namespace": "kube-system"}}))
            .unwrap();
        assert!(cms.get("direct").await.is_ok());
        assert_eq!(server.store().list("v1", "ConfigMap", Some("kube-system")).unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn crds_are_served_dynamically() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = FakeApiServer::start(Options::default()).unwrap();
        let c = client(&server, dir.path()).await;
        let pp = PostParams::default();
        let crds: Api<CustomResourceDefinition> = Api::all(c.clone());

        let gvk = GroupVersionKind::gvk("cilium.io", "v2", "CiliumNetworkPolicy");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "ciliumnetworkpolicies");
        let cnps: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
        // Before the CRD, the resource is not there.
        assert_eq!(api_code(cnps.list(&ListParams::default()).await).0, 404);

        for crd in vireo_fakeapi::cilium_crds() {
            let created = crds.create(&pp, &serde_json::from_value(crd).unwrap()).await.unwrap();
            let conds = created.status.unwrap().conditions.unwrap();
            assert!(conds.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        }
        let bad = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "wrong.name"}, "spec": {"group": "x.io", "scope": "Cluster",
            "names": {"plural": "things", "kind": "Thing"}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
        assert_eq!(api_code(crds.create(&pp, &serde_json::from_value(bad).unwrap()).await).0, 422);

        let cnp: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "allow-web"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "web"}}},
        }))
        .unwrap();
        cnps.create(&pp, &cnp).await.unwrap();
        let got = cnps.get("allow-web").await.unwrap();
        assert_eq!(got.data["spec"]["endpointSelector"]["matchLabels"]["app"], "web");
        let patched = cnps
            .patch("allow-web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"ingress": [{}]}})))
            .await
            .unwrap();
        assert_eq!(patched.metadata.generation, Some(2));
        let st = cnps
            .patch_status("allow-web", &PatchParams::default(), &Patch::Merge(json!({"status": {"ok": true}})))
            .await
            .unwrap();
        assert_eq!(st.data["status"]["ok"], true);
        assert_eq!(st.metadata.generation, Some(2));

        let cgvk = GroupVersionKind::gvk("cilium.io", "v2", "CiliumClusterwideNetworkPolicy");
        let car = ApiResource::from_gvk_with_plural(&cgvk, "ciliumclusterwidenetworkpolicies");
        let ccnps: Api<DynamicObject> = Api::all_with(c.clone(), &car);
        let ccnp: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "cluster"}, "spec": {"nodeSelector": {}},
        }))
        .unwrap();
        ccnps.create(&pp, &ccnp).await.unwrap();
        assert_eq!(ccnps.list(&ListParams::default()).await.unwrap().items.len(), 1);

        // discovery sees the new group, with its scope
        let discovery = kube::Discovery::new(c.clone()).run().await.unwrap();
        let (res, caps) = discovery.resolve_gvk(&gvk).expect("CiliumNetworkPolicy discovered");
        assert_eq!(res.plural, "ciliumnetworkpolicies");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        let (_, ccaps) = discovery.resolve_gvk(&cgvk).expect("CCNP discovered");
        assert_eq!(ccaps.scope, kube::discovery::Scope::Cluster);
        assert!(discovery.has_group("discovery.k8s.io") && discovery.has_group("networking.k8s.io"));

        // deleting the CRD removes the resource and its objects
        crds.delete("ciliumnetworkpolicies.cilium.io", &DeleteParams::default()).await.unwrap();
        assert_eq!(api_code(cnps.list(&ListParams::default()).await).0, 404);
        assert!(server.store().get("cilium.io/v2", "CiliumNetworkPolicy", Some("default"), "allow-web").is_err());
    })
    .await;
}

#[tokio::test]
async fn preloaded_crds_injected_failures_and_delays() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let vireo = vireo_fakeapi::crd("vireo.io", "v1alpha1", "NodeConfig", "nodeconfigs", false, &["vnc"]);
        let server = FakeApiServer::start(
            Options::default()
                .cilium_crds()
                .crd(vireo)
                .object(json!({"apiVersion": "vireo.io/v1alpha1", "kind": "NodeConfig", "metadata": {"name": "n1"}, "spec": {"mtu": 1500}})),
        )
        .unwrap();
        let c = client(&server, dir.path()).await;
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("vireo.io", "v1alpha1", "NodeConfig"), "nodeconfigs");
        let ncs: Api<DynamicObject> = Api::all_with(c.clone(), &ar);
        assert_eq!(ncs.get("n1").await.unwrap().data["spec"]["mtu"], 1500);

        server.fail_next(1, 500);
        let (code, reason) = api_code(ncs.get("n1").await);
        assert_eq!((code, reason.as_str()), (500, "InternalError"));
        assert!(ncs.get("n1").await.is_ok());
        // kube-rs retries a 503 on its own.
        server.fail_next(1, 503);
        assert!(ncs.get("n1").await.is_ok());

        server.set_delay(std::time::Duration::from_millis(300));
        let t = std::time::Instant::now();
        ncs.get("n1").await.unwrap();
        assert!(t.elapsed() >= std::time::Duration::from_millis(300));
        server.set_delay(std::time::Duration::ZERO);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_the_callers_runtime_too() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server =
            FakeApiServer::start_on(Options::default(), tokio::runtime::Handle::current()).unwrap();
        let c = client(&server, dir.path()).await;
        let nss: Api<Namespace> = Api::all(c.clone());
        assert_eq!(
            nss.list(&ListParams::default()).await.unwrap().items.len(),
            4
        );
        server.stop_async().await;
        assert!(!server.is_running());
        assert!(nss.list(&ListParams::default()).await.is_err());
        server.restart().unwrap();
        assert_eq!(
            nss.get("kube-system")
                .await
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("kube-system")
        );
    })
    .await;
}
