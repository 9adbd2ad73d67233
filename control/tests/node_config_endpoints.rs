//! What the Kubernetes source writes back, against the fake API server serving Vireo's real
//! CRDs: the `Valid` condition of every VireoNodeConfig (through `/status`, only when it
//! changes), this node's settings from the configs (the last good ones kept while they are
//! invalid), and the VireoEndpoints of this node's pods (identity, address, policy, state;
//! gone with the pod, or when it moves), each valid against the CRD's schema.

mod kube_common;
#[path = "support/openapi.rs"]
#[allow(dead_code)]
mod openapi;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube_common::*;
use serde_json::{json, Value};
use vireo_control::cluster::pod_ifname;
use vireo_control::config::Config;
use vireo_control::crd::{vireo_crds, VireoEndpoint};
use vireo_control::kube::KubeSource;
use vireo_control::node::{NodeControl, Source};
use vireo_control::nodeconfig::NodeConfig;
use vireo_fakeapi::{FakeApiServer, Options};
use vireo_policy::PolicyTables;

const V: &str = "vireo.io/v1alpha1";

/// Cilium's CRDs and Vireo's own, as `deploy/crds` installs them.
fn options() -> Options {
    let mut o = Options::default().cilium_crds();
    for crd in vireo_crds() {
        o = o.crd(serde_json::to_value(crd).unwrap());
    }
    o
}

fn nodeconfig(name: &str, spec: Value) -> Value {
    json!({"apiVersion": V, "kind": "VireoNodeConfig", "metadata": {"name": name}, "spec": spec})
}

fn get(server: &FakeApiServer, kind: &str, ns: Option<&str>, name: &str) -> Option<Value> {
    server.store().get(V, kind, ns, name).ok()
}

/// The `Valid` condition of config `name`, as stored.
fn valid(server: &FakeApiServer, name: &str) -> Option<Value> {
    let o = get(server, "VireoNodeConfig", None, name)?;
    o.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Valid")
        .cloned()
}

fn set_spec(server: &FakeApiServer, name: &str, spec: Value) {
    modify(server, V, "VireoNodeConfig", None, name, |o| {
        o["spec"] = spec
    });
}

const FILE: &str =
    "node: node-1\nsource: {kubernetes: {}}\ninterfaces: [{name: eth0, role: uplink}]\n";

/// Polls the source into `nc` until `check` holds for what it answered last.
fn settle(
    src: &mut KubeSource,
    nc: &mut NodeConfig,
    file: &Config,
    what: &str,
    mut check: impl FnMut(&NodeConfig, Option<&Config>) -> bool,
) -> Option<Config> {
    let mut last = None;
    eventually(WAIT, what, || {
        if let Some(m) = src.poll() {
            if let Some(c) = nc.observe("node-1", &m, file) {
                last = Some(c);
            }
        }
        check(nc, last.as_ref())
    });
    last
}

#[test]
fn node_configs_apply_get_their_valid_condition_and_invalid_ones_keep_the_last_good() {
    let server = FakeApiServer::start(
        options()
            .object(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "node-1", "labels": {"zone": "a"}},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.1"}]}}))
            .object(nodeconfig(
                "default",
                json!({"interfaces": [{"name": "ens5", "role": "uplink"}],
                       "maglev": {"tableSize": 251, "hashSeed": 7}}),
            ))
            .object(nodeconfig(
                "zone-a",
                json!({"nodeSelector": {"matchLabels": {"zone": "a"}}, "vxlan": {"df": true}}),
            )),
    )
    .unwrap();
    let mut fx = source_on(server, |o| o);
    let file = Config::parse_with_node_env(FILE, Path::new("f.yaml"), None).unwrap();
    let mut nc = NodeConfig::default();

    // Valid: applied, and both get Valid=True for their generation.
    let cfg = settle(&mut fx.src, &mut nc, &file, "the settings", |_, c| {
        c.is_some()
    })
    .unwrap();
    assert_eq!(cfg.interfaces[0].name, "ens5");
    assert_eq!(
        (cfg.services.maglev_table_size, cfg.services.hash_seed),
        (251, 7)
    );
    assert!(cfg.vxlan_df, "zone-a selects node-1");
    assert_eq!(nc.status()["applied"], json!(["default", "zone-a"]));
    for name in ["default", "zone-a"] {
        eventually(WAIT, &format!("{name} Valid=True"), || {
            fx.src.poll();
            valid(&fx.server, name).is_some_and(|c| c["status"] == "True")
        });
        let c = valid(&fx.server, name).unwrap();
        assert_eq!(c["reason"], "Accepted");
        assert_eq!(c["observedGeneration"], 1);
    }

    // Written only when it differs: more views change nothing.
    let rv = |s: &FakeApiServer| {
        get(s, "VireoNodeConfig", None, "default").unwrap()["metadata"]["resourceVersion"].clone()
    };
    let before = rv(&fx.server);
    fx.server.store().create(namespace("x", json!({}))).unwrap();
    poll_until(&mut fx.src, "namespace x", |m| {
        m.namespaces.contains_key("x")
    });
    std::thread::sleep(Duration::from_millis(300));
    fx.src.poll();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rv(&fx.server),
        before,
        "an unchanged condition is not written"
    );

    // Invalid: Valid=False with the field error, the last good settings kept.
    set_spec(
        &fx.server,
        "default",
        json!({"interfaces": [{"name": "ens5", "role": "uplink"}], "maglev": {"tableSize": 1000}}),
    );
    settle(&mut fx.src, &mut nc, &file, "the error", |nc, _| {
        !nc.status()["error"].is_null()
    });
    let st = nc.status();
    assert!(
        st["error"]
            .as_str()
            .unwrap()
            .contains("default: spec.maglev.tableSize: 1000 is not prime"),
        "{st}"
    );
    assert_eq!(st["applied"], json!(["default", "zone-a"]), "kept: {st}");
    assert_eq!(nc.effective(&file).unwrap().services.maglev_table_size, 251);
    eventually(WAIT, "default Valid=False", || {
        fx.src.poll();
        valid(&fx.server, "default").is_some_and(|c| c["status"] == "False")
    });
    let c = valid(&fx.server, "default").unwrap();
    assert_eq!(c["reason"], "InvalidSpec");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.maglev.tableSize: 1000 is not prime"),
        "{c}"
    );
    assert_eq!(c["observedGeneration"], 2);
    let o = get(&fx.server, "VireoNodeConfig", None, "default").unwrap();
    assert_eq!(
        o["spec"]["maglev"]["tableSize"], 1000,
        "only the status is written"
    );

    // Fixed: Valid=True again, the new settings applied.
    set_spec(
        &fx.server,
        "default",
        json!({"interfaces": [{"name": "ens5", "role": "uplink"}], "maglev": {"tableSize": 509}}),
    );
    let cfg = settle(
        &mut fx.src,
        &mut nc,
        &file,
        "the fixed settings",
        |nc, c| {
            nc.status()["error"].is_null() && c.is_some_and(|c| c.services.maglev_table_size == 509)
        },
    )
    .unwrap();
    assert_eq!(cfg.services.hash_seed, 0);
    eventually(WAIT, "default Valid=True again", || {
        fx.src.poll();
        valid(&fx.server, "default")
            .is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == 3)
    });
}

/// The fake API server serves `/status` of the real VireoNodeConfig CRD: replace and patch
/// change only the status (not the generation), and the main resource ignores status.
#[test]
fn the_fake_api_server_serves_the_nodeconfig_status_subresource() {
    let server = FakeApiServer::start(options()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml()).unwrap();
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        let c = vireo_control::allocator::client(cfg).unwrap();
        let api: Api<DynamicObject> = Api::all_with(
            c,
            &kube::api::ApiResource {
                group: "vireo.io".into(),
                version: "v1alpha1".into(),
                api_version: V.into(),
                kind: "VireoNodeConfig".into(),
                plural: "vireonodeconfigs".into(),
            },
        );
        let pp = PostParams::default();
        let o: DynamicObject =
            serde_json::from_value(nodeconfig("a", json!({"priority": 1}))).unwrap();
        let mut o = api.create(&pp, &o).await.unwrap();
        assert_eq!(o.metadata.generation, Some(1));
        o.data["status"] = json!({"conditions": [{"type": "Valid", "status": "True"}]});
        let r = api.replace_status("a", &pp, &o).await.unwrap();
        assert_eq!(r.data["status"]["conditions"][0]["status"], "True");
        assert_eq!(
            r.metadata.generation,
            Some(1),
            "a status write keeps the generation"
        );
        let r = api
            .patch_status(
                "a",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"conditions": [{"type": "Valid", "status": "False"}]}}),
                ),
            )
            .await
            .unwrap();
        assert_eq!(r.data["status"]["conditions"][0]["status"], "False");
        assert_eq!(r.metadata.generation, Some(1));
        // The main resource ignores status, and a stale resourceVersion is a conflict.
        let mut main = r.clone();
        main.data["spec"]["priority"] = json!(2);
        main.data["status"] = json!({"conditions": []});
        let r2 = api.replace("a", &pp, &main).await.unwrap();
        assert_eq!(r2.metadata.generation, Some(2));
        assert_eq!(r2.data["status"]["conditions"][0]["status"], "False");
        let stale = api.replace_status("a", &pp, &r).await.unwrap_err();
        assert!(
            matches!(stale, kube::Error::Api(ref s) if s.code == 409),
            "{stale}"
        );
    });
}

/// The agent's side, without a dataplane: control, and the policy tables last built.
struct Agent {
    control: NodeControl,
    tables: Arc<PolicyTables>,
}

impl Agent {
    /// Feeds the source's views to control and hands back the endpoints, as the agent's
    /// reconcile does; `attached` are the pod interfaces attached.
    fn drive(&mut self, src: &mut KubeSource, attached: &[String]) {
        let reread = src.poll_with(&mut |m, changed| self.control.apply_changed(m, changed));
        if let Some(p) = self.control.build_policy() {
            self.tables = p.tables;
        }
        if reread {
            // As the agent: the source allocates the identities the view waits for.
            src.published(&self.control);
        }
        let eps = self
            .control
            .local_endpoints(&self.tables, 1, &|n| attached.iter().any(|a| a == n));
        src.endpoints(&eps);
    }
}

fn endpoint(server: &FakeApiServer, name: &str) -> Option<Value> {
    get(server, "VireoEndpoint", Some("default"), name)
}

/// The errors of `o` against the VireoEndpoint CRD's schema (unknown fields refused).
fn schema_errors(o: &Value) -> Vec<String> {
    let crd = serde_json::to_value(<VireoEndpoint as kube::CustomResourceExt>::crd()).unwrap();
    let schema = openapi::to_json_schema(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]);
    let v = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    v.iter_errors(o)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn endpoints_follow_this_nodes_pods() {
    let mut opts = options()
        .object(node("node-1", "192.168.1.1", "10.244.1.0/24"))
        .object(node("node-2", "192.168.1.2", "10.244.2.0/24"))
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
            "node-1",
            "10.244.1.11",
            json!({"app": "db"}),
        ))
        .object(pod(
            "default",
            "far",
            "node-2",
            "10.244.2.10",
            json!({"app": "far"}),
        ))
        .object(cnp("default", "web", "web", "db"));
    // Left over from before a restart: this node's, of a pod that is gone; and another
    // node's, never touched.
    for (name, n) in [("ghost", "node-1"), ("elsewhere", "node-2")] {
        opts = opts.object(json!({"apiVersion": V, "kind": "VireoEndpoint",
            "metadata": {"name": name, "namespace": "default", "labels": {"vireo.io/node": n}}}));
    }
    let server = FakeApiServer::start(opts).unwrap();
    let mut fx = source_on(server, |o| o);
    let mut agent = Agent {
        control: NodeControl::new("node-1"),
        tables: Arc::default(),
    };
    let web_if = pod_ifname("default", "web");
    let attached = vec![web_if.clone()];

    eventually(WAIT, "the endpoints of web and db", || {
        agent.drive(&mut fx.src, &attached);
        endpoint(&fx.server, "web").is_some_and(|o| o["status"]["state"] == "ready")
            && endpoint(&fx.server, "db").is_some()
            && endpoint(&fx.server, "ghost").is_none()
    });
    let web = endpoint(&fx.server, "web").unwrap();
    let id = agent
        .control
        .pod_endpoints()
        .iter()
        .find(|p| p.ifname == web_if)
        .unwrap()
        .identity;
    let s = &web["status"];
    assert_eq!(s["identity"]["id"], id);
    assert!(
        s["identity"]["labels"]
            .as_array()
            .unwrap()
            .contains(&json!("k8s:app=web")),
        "{s}"
    );
    assert_eq!(s["networking"]["addressing"][0]["ipv4"], "10.244.1.10");
    assert_eq!(s["networking"]["nodeName"], "node-1");
    assert_eq!(s["networking"]["node"], "192.168.1.1");
    assert_eq!(
        s["policy"]["ingress"]["enforcing"], true,
        "the CNP selects web"
    );
    assert_eq!(s["policy"]["egress"]["enforcing"], false);
    assert_eq!(s["policy"]["revision"], 1);
    assert_eq!(web["metadata"]["labels"]["vireo.io/node"], "node-1");
    let pod_uid = fx
        .server
        .store()
        .get("v1", "Pod", Some("default"), "web")
        .unwrap()["metadata"]["uid"]
        .clone();
    assert_eq!(web["metadata"]["ownerReferences"][0]["uid"], pod_uid);
    let db = endpoint(&fx.server, "db").unwrap();
    assert_eq!(db["status"]["state"], "waiting-for-interface");
    assert_eq!(db["status"]["policy"]["ingress"]["enforcing"], false);
    for o in [&web, &db] {
        assert_eq!(schema_errors(o), Vec::<String>::new(), "{o}");
    }
    assert!(endpoint(&fx.server, "far").is_none(), "node-2's pod");
    assert!(
        endpoint(&fx.server, "elsewhere").is_some(),
        "another node's endpoint is kept"
    );

    // db's interface is attached: ready.
    let both = vec![web_if.clone(), pod_ifname("default", "db")];
    eventually(WAIT, "db ready", || {
        agent.drive(&mut fx.src, &both);
        endpoint(&fx.server, "db").is_some_and(|o| o["status"]["state"] == "ready")
    });

    // db goes away: so does its endpoint.
    fx.server
        .store()
        .delete("v1", "Pod", Some("default"), "db")
        .unwrap();
    eventually(WAIT, "db's endpoint deleted", || {
        agent.drive(&mut fx.src, &both);
        endpoint(&fx.server, "db").is_none()
    });

    // web moves to node-2, whose agent has written its endpoint: node-1 leaves it alone.
    fx.server
        .store()
        .delete("v1", "Pod", Some("default"), "web")
        .unwrap();
    fx.server
        .store()
        .create(pod(
            "default",
            "web",
            "node-2",
            "10.244.2.11",
            json!({"app": "web"}),
        ))
        .unwrap();
    modify(
        &fx.server,
        V,
        "VireoEndpoint",
        Some("default"),
        "web",
        |o| o["metadata"]["labels"]["vireo.io/node"] = json!("node-2"),
    );
    eventually(WAIT, "web gone from node-1's set", || {
        agent.drive(&mut fx.src, &both);
        agent.control.pod_endpoints().is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    agent.drive(&mut fx.src, &both);
    let web = endpoint(&fx.server, "web").expect("node-2's endpoint of web is kept");
    assert_eq!(web["metadata"]["labels"]["vireo.io/node"], "node-2");

    // A pod of node-1 that moves before another node writes: its endpoint goes.
    fx.server
        .store()
        .create(pod(
            "default",
            "api",
            "node-1",
            "10.244.1.12",
            json!({"app": "api"}),
        ))
        .unwrap();
    eventually(WAIT, "api's endpoint", || {
        agent.drive(&mut fx.src, &both);
        endpoint(&fx.server, "api").is_some()
    });
    fx.server
        .store()
        .delete("v1", "Pod", Some("default"), "api")
        .unwrap();
    fx.server
        .store()
        .create(pod(
            "default",
            "api",
            "node-2",
            "10.244.2.12",
            json!({"app": "api"}),
        ))
        .unwrap();
    eventually(WAIT, "api's endpoint deleted after the move", || {
        agent.drive(&mut fx.src, &both);
        endpoint(&fx.server, "api").is_none()
    });
}
