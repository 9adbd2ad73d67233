//! `deploy/` as Kubernetes would take it, checked offline:
//!
//! - `kubectl kustomize deploy/` (and `deploy/cilium-crds/`) renders;
//! - every built-in object validates with `kubernetes-validate --strict` against the
//!   Kubernetes 1.33 schemas;
//! - every CRD schema is structural, and every custom resource (the base's default
//!   VireoNodeConfig, `deploy/examples/`) validates against its CRD's schema with unknown
//!   fields rejected; the examples in `deploy/examples/invalid/` are rejected, each at the
//!   field its `# expect` line names;
//! - the ClusterRole is least privilege, and the DaemonSet has the security settings
//!   deploy/README.md describes.
//!
//! kubectl and kubernetes-validate come from scripts/setup.sh; without them these tests fail
//! (never skip), saying what to install.

#[path = "support/openapi.rs"]
mod openapi;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use vireo_control::config::{default_api_socket, Config};
use vireo_control::crd::{effective_settings, validate, VireoIdentity, VireoNodeConfig};

const K8S_VERSION: &str = "1.33.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every YAML document of `text` that is not empty.
fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kubectl_kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl not runnable ({e}): install kubectl >= 1.27 (kustomize v5 built in); \
                 scripts/setup.sh does"
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    docs(&String::from_utf8(out.stdout).unwrap())
}

fn kubernetes_validate() -> PathBuf {
    let candidates = [
        std::env::var_os("VIREO_KUBERNETES_VALIDATE").map(PathBuf::from),
        Some(PathBuf::from(
            "/opt/vireo-tools/venv/bin/kubernetes-validate",
        )),
        Some(PathBuf::from("kubernetes-validate")),
    ];
    for c in candidates.into_iter().flatten() {
        if Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!(
        "kubernetes-validate not found (VIREO_KUBERNETES_VALIDATE, \
         /opt/vireo-tools/venv/bin/kubernetes-validate, PATH): run scripts/setup.sh, which \
         installs it from PyPI into /opt/vireo-tools/venv"
    )
}

/// `(group, kind)` of an object.
fn gk(o: &Value) -> (String, String) {
    let api = o["apiVersion"].as_str().unwrap_or_default();
    let group = api.rsplit_once('/').map_or("", |g| g.0);
    (
        group.to_owned(),
        o["kind"].as_str().unwrap_or_default().to_owned(),
    )
}

fn is_custom(o: &Value) -> bool {
    let g = gk(o).0;
    g == "vireo.io" || g == "cilium.io"
}

fn name(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Validates built-in objects with kubernetes-validate, strictly; every one must pass.
fn validate_builtin(objects: &[&Value], label: &str) {
    assert!(!objects.is_empty());
    let text: String = objects
        .iter()
        .map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).unwrap()))
        .collect();
    let file = std::env::temp_dir().join(format!("vireo-{label}-{}.yaml", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(kubernetes_validate())
        .args(["-k", K8S_VERSION, "--strict"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate runs");
    let _ = std::fs::remove_file(&file);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate rejected {label}:\n{report}"
    );
    let passed = report
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(
        passed,
        objects.len(),
        "every object must be validated:\n{report}"
    );
    assert!(
        !report.contains("WARN") && !report.contains("ERROR"),
        "{report}"
    );
}

/// The CRDs of `objects`, by (group, kind): the JSON Schema of their one version.
fn schemas(objects: &[Value]) -> BTreeMap<(String, String), (String, Value)> {
    let mut out = BTreeMap::new();
    for crd in objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let spec = &crd["spec"];
        let versions = spec["versions"].as_array().expect("versions");
        assert_eq!(versions.len(), 1, "{}", name(crd));
        let schema = &versions[0]["schema"]["openAPIV3Schema"];
        let errs = openapi::structural_errors(schema);
        assert!(
            errs.is_empty(),
            "{} is not structural:\n{}",
            name(crd),
            errs.join("\n")
        );
        let key = (
            spec["group"].as_str().unwrap().to_owned(),
            spec["names"]["kind"].as_str().unwrap().to_owned(),
        );
        let version = versions[0]["name"].as_str().unwrap().to_owned();
        out.insert(key, (version, openapi::to_json_schema(schema)));
    }
    out
}

/// The schema errors of a custom resource, as (instance path, message).
fn cr_errors(
    schemas: &BTreeMap<(String, String), (String, Value)>,
    o: &Value,
) -> Vec<(String, String)> {
    let (group, kind) = gk(o);
    let Some((version, schema)) = schemas.get(&(group.clone(), kind.clone())) else {
        panic!("no CRD for {group}/{kind} ({})", name(o));
    };
    assert_eq!(o["apiVersion"], format!("{group}/{version}"), "{}", name(o));
    let v = jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("the converted schema compiles");
    v.iter_errors(o)
        .map(|e| (e.instance_path().to_string(), e.to_string()))
        .collect()
}

fn all_schemas() -> BTreeMap<(String, String), (String, Value)> {
    let mut objects = kubectl_kustomize("deploy/crds");
    objects.extend(kubectl_kustomize("deploy/cilium-crds"));
    schemas(&objects)
}

#[test]
fn the_base_renders_and_validates() {
    let objects = kubectl_kustomize("deploy");
    let kinds: BTreeSet<String> = objects.iter().map(name).collect();
    for want in [
        "CustomResourceDefinition/vireoendpoints.vireo.io",
        "CustomResourceDefinition/vireoidentities.vireo.io",
        "CustomResourceDefinition/vireonodeconfigs.vireo.io",
        "ServiceAccount/vireo-agent",
        "ClusterRole/vireo-agent",
        "ClusterRoleBinding/vireo-agent",
        "DaemonSet/vireo-agent",
        "ConfigMap/vireo-config",
        "ConfigMap/vireo-cni-config",
        "VireoNodeConfig/default",
    ] {
        assert!(kinds.contains(want), "{want} missing from {kinds:?}");
    }
    assert_eq!(kinds.len(), objects.len(), "names are unique: {kinds:?}");
    for o in &objects {
        assert_ne!(gk(o).0, "cilium.io", "no cilium.io object in the base");
        assert!(
            !o["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .ends_with(".cilium.io"),
            "the cilium.io CRDs are not in the base: {}",
            name(o)
        );
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "vireo",
            "{}",
            name(o)
        );
        let namespaced = ["ServiceAccount", "DaemonSet", "ConfigMap"];
        if namespaced.contains(&o["kind"].as_str().unwrap()) {
            assert_eq!(o["metadata"]["namespace"], "kube-system", "{}", name(o));
        }
    }
    let builtin: Vec<&Value> = objects.iter().filter(|o| !is_custom(o)).collect();
    validate_builtin(&builtin, "base");
    let schemas = schemas(&objects);
    let custom: Vec<&Value> = objects.iter().filter(|o| is_custom(o)).collect();
    assert_eq!(custom.len(), 1, "the default VireoNodeConfig");
    for o in custom {
        let errs = cr_errors(&schemas, o);
        assert!(errs.is_empty(), "{}: {errs:?}", name(o));
    }
}

#[test]
fn the_cilium_crds_render_and_validate() {
    let objects = kubectl_kustomize("deploy/cilium-crds");
    let names: Vec<String> = objects.iter().map(name).collect();
    assert_eq!(
        names,
        [
            "CustomResourceDefinition/ciliumclusterwidenetworkpolicies.cilium.io",
            "CustomResourceDefinition/ciliumnetworkpolicies.cilium.io"
        ]
    );
    let refs: Vec<&Value> = objects.iter().collect();
    validate_builtin(&refs, "cilium-crds");
    let s = schemas(&objects);
    let scope = |kind: &str| {
        objects
            .iter()
            .find(|o| o["spec"]["names"]["kind"] == kind)
            .map(|o| {
                (
                    o["spec"]["scope"].clone(),
                    o["spec"]["names"]["shortNames"][0].clone(),
                )
            })
            .unwrap()
    };
    assert_eq!(
        scope("CiliumNetworkPolicy"),
        ("Namespaced".into(), "cnp".into())
    );
    assert_eq!(
        scope("CiliumClusterwideNetworkPolicy"),
        ("Cluster".into(), "ccnp".into())
    );
    assert_eq!(s.len(), 2);
}

/// Every example passes; every invalid example is rejected at the field its `# expect` line
/// names (`/` for the root), by the schema or by `validate`.
#[test]
fn examples_validate_and_invalid_ones_are_rejected() {
    let schemas = all_schemas();
    let dir = root().join("deploy/examples");
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension() != Some(std::ffi::OsStr::new("yaml")) {
            continue;
        }
        for o in docs(&std::fs::read_to_string(&path).unwrap()) {
            let errs = cr_errors(&schemas, &o);
            assert!(errs.is_empty(), "{}: {errs:?}", path.display());
            seen.insert(gk(&o).1);
            match o["kind"].as_str().unwrap() {
                "VireoNodeConfig" => {
                    let c: VireoNodeConfig = serde_json::from_value(o.clone()).unwrap();
                    assert_eq!(validate(&c), Ok(()), "{}", path.display());
                }
                "VireoIdentity" => {
                    let id: VireoIdentity = serde_json::from_value(o.clone()).unwrap();
                    assert!(
                        id.numeric_id().is_some(),
                        "{}: the name is the number",
                        path.display()
                    );
                }
                _ => {}
            }
        }
    }
    let want = [
        "CiliumClusterwideNetworkPolicy",
        "CiliumNetworkPolicy",
        "VireoEndpoint",
        "VireoIdentity",
        "VireoNodeConfig",
    ];
    assert_eq!(seen.iter().map(String::as_str).collect::<Vec<_>>(), want);

    let mut rejected = 0;
    for entry in std::fs::read_dir(dir.join("invalid")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect "))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no `# expect schema|validate: PATH` line",
                    path.display()
                )
            });
        let (how, at) = expect.split_once(": ").expect("# expect HOW: PATH");
        let objects = docs(&text);
        assert_eq!(objects.len(), 1, "{}", path.display());
        let o = &objects[0];
        let errs = cr_errors(&schemas, o);
        match how {
            "schema" => {
                assert!(!errs.is_empty(), "{}: accepted", path.display());
                assert!(
                    errs.iter()
                        .all(|(p, _)| p == at || (at == "/" && p.is_empty())),
                    "{}: rejected elsewhere than {at}: {errs:?}",
                    path.display()
                );
            }
            "validate" => {
                assert!(
                    errs.is_empty(),
                    "{}: the schema must accept it: {errs:?}",
                    path.display()
                );
                let c: VireoNodeConfig = serde_json::from_value(o.clone()).unwrap();
                let fields: Vec<String> = validate(&c)
                    .expect_err(&path.display().to_string())
                    .into_iter()
                    .map(|e| e.field)
                    .collect();
                assert_eq!(fields, [at], "{}", path.display());
            }
            other => panic!("{}: unknown expectation {other}", path.display()),
        }
        rejected += 1;
    }
    assert!(rejected >= 10, "{rejected} invalid examples");
}

/// The policy examples are policies Vireo reads without a warning: the CRDs' schema and
/// Vireo's reader agree on them.
#[test]
fn the_policy_examples_are_read_by_vireo() {
    let mut m = vireo_control::source::Manifests::default();
    for f in [
        "ciliumnetworkpolicy.yaml",
        "ciliumclusterwidenetworkpolicy.yaml",
    ] {
        let path = root().join("deploy/examples").join(f);
        vireo_control::source::load_text(&mut m, &std::fs::read_to_string(&path).unwrap(), &path);
    }
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    let set = vireo_control::netpol::policies(&m);
    assert!(set.warnings.is_empty(), "{:#?}", set.warnings);
    assert_eq!(
        set.policies.len(),
        3,
        "the CNP's spec and specs[0], the CCNP's spec"
    );
}

/// Writes only on vireo.io kinds and events; reads only what the agent reads; no wildcard.
#[test]
fn the_cluster_role_is_least_privilege() {
    let objects = kubectl_kustomize("deploy");
    let roles: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .collect();
    assert_eq!(roles.len(), 1);
    let binding = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRoleBinding")
        .unwrap();
    assert_eq!(binding["roleRef"]["name"], roles[0]["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], "vireo-agent");
    assert_eq!(binding["subjects"][0]["namespace"], "kube-system");

    let read: BTreeSet<&str> = ["get", "list", "watch"].into();
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in roles[0]["rules"].as_array().unwrap() {
        assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
        assert!(rule.get("resourceNames").is_none(), "{rule}");
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        for group in list("apiGroups") {
            for res in list("resources") {
                for verb in list("verbs") {
                    assert!(
                        !group.contains('*') && !res.contains('*') && !verb.contains('*'),
                        "{rule}"
                    );
                    granted
                        .entry(format!("{group}/{res}"))
                        .or_default()
                        .insert(verb);
                }
            }
        }
    }
    let reads_only = [
        "/nodes",
        "/namespaces",
        "/pods",
        "/services",
        "discovery.k8s.io/endpointslices",
        "networking.k8s.io/networkpolicies",
        "cilium.io/ciliumnetworkpolicies",
        "cilium.io/ciliumclusterwidenetworkpolicies",
        "vireo.io/vireonodeconfigs",
    ];
    for r in reads_only {
        let verbs: BTreeSet<&str> = granted[r].iter().map(String::as_str).collect();
        assert_eq!(verbs, read, "{r}");
    }
    for (r, verbs) in &granted {
        let writes: Vec<&String> = verbs
            .iter()
            .filter(|v| !read.contains(v.as_str()))
            .collect();
        let writable = r.starts_with("vireo.io/") || r == "/events" || r == "events.k8s.io/events";
        assert!(
            writes.is_empty() || writable,
            "{r} must not be written: {writes:?}"
        );
        assert!(
            reads_only.contains(&r.as_str()) || writable,
            "{r} is granted but the agent does not use it"
        );
        assert!(
            !verbs.contains("escalate")
                && !verbs.contains("bind")
                && !verbs.contains("impersonate")
        );
    }
    for r in ["vireo.io/vireoendpoints", "vireo.io/vireoidentities"] {
        for v in ["create", "delete", "watch"] {
            assert!(granted[r].contains(v), "{r} needs {v}");
        }
    }
    for r in ["vireoendpoints", "vireoidentities", "vireonodeconfigs"] {
        let s = &granted[&format!("vireo.io/{r}/status")];
        assert!(s.contains("patch") && s.contains("update"), "{r}/status");
    }
    for r in ["/events", "events.k8s.io/events"] {
        assert!(granted[r].contains("create"), "{r}");
    }
    assert!(!granted.contains_key("/secrets"));
}

fn daemonset() -> Value {
    kubectl_kustomize("deploy")
        .into_iter()
        .find(|o| o["kind"] == "DaemonSet")
        .unwrap()
}

#[test]
fn the_daemonset_is_unprivileged_with_exactly_its_capabilities() {
    let ds = daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["serviceAccountName"], "vireo-agent");
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let caps: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        caps,
        ["BPF", "IPC_LOCK", "NET_ADMIN", "NET_RAW", "PERFMON"].into()
    );
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    let env = &c["env"][0];
    assert_eq!(env["name"], "VIREO_NODE_NAME");
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");

    let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m))
        .collect();
    assert_eq!(mounts["/sys/fs/bpf"]["mountPropagation"], "HostToContainer");
    assert!(mounts.contains_key("/run/vireo"));
    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    for (mount, host) in [("/sys/fs/bpf", "/sys/fs/bpf"), ("/run/vireo", "/run/vireo")] {
        let vol = mounts[mount]["name"].as_str().unwrap();
        assert_eq!(volumes[vol]["hostPath"]["path"], host);
    }
}

/// The probes ask the agent's metrics listener, on the port the ConfigMap's configuration
/// gives it; the API socket is where `vireo` on the host looks for it.
#[test]
fn the_probes_reach_the_agents_metrics_listener() {
    let ds = daemonset();
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let cfg = configmap_config();
    let addr = cfg
        .metrics
        .socket_addr()
        .unwrap()
        .expect("a metrics address");
    let port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "prometheus")
        .expect("the prometheus port");
    assert_eq!(port["containerPort"], addr.port());
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let g = &c[probe]["httpGet"];
        assert_eq!(
            (g["path"].as_str(), g["port"].as_str()),
            (Some(path), Some("prometheus"))
        );
        let host: std::net::IpAddr = g["host"].as_str().unwrap().parse().unwrap();
        assert!(
            addr.ip().is_unspecified() || addr.ip() == host,
            "{probe} asks {host}, the agent listens on {addr}"
        );
    }
    let socket = cfg.api_socket;
    assert_eq!(socket, default_api_socket());
    assert!(
        socket.starts_with("/run/vireo"),
        "inside the /run/vireo mount"
    );
}

fn configmap_config() -> Config {
    let cm = kubectl_kustomize("deploy")
        .into_iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "vireo-config")
        .unwrap();
    // The DaemonSet names the node through VIREO_NODE_NAME.
    Config::parse_with_node_env(
        cm["data"]["vireo.yaml"].as_str().unwrap(),
        Path::new("vireo.yaml"),
        Some("node-1".into()),
    )
    .unwrap()
}

/// The default VireoNodeConfig says what the ConfigMap's configuration says.
#[test]
fn the_default_node_config_matches_the_configmap() {
    let objects = kubectl_kustomize("deploy");
    let default: VireoNodeConfig = serde_json::from_value(
        objects
            .iter()
            .find(|o| o["kind"] == "VireoNodeConfig")
            .unwrap()
            .clone(),
    )
    .unwrap();
    assert!(
        default.spec.node_selector.is_none(),
        "the cluster default has no selector"
    );
    let from_file = configmap_config();
    let s = effective_settings(&BTreeMap::new(), &[default]).expect("valid");
    let mut merged = from_file.clone();
    s.apply_to(&mut merged);
    assert_eq!(merged, from_file);

    // And the fast example overrides it on the nodes it selects.
    let fast: VireoNodeConfig = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/examples/vireonodeconfig-fast.yaml")).unwrap(),
    )
    .unwrap();
    let default = serde_json::from_value(
        objects
            .iter()
            .find(|o| o["kind"] == "VireoNodeConfig")
            .unwrap()
            .clone(),
    )
    .unwrap();
    let node = BTreeMap::from([("vireo.io/profile".to_owned(), "fast".to_owned())]);
    let s = effective_settings(&node, &[fast, default]).unwrap();
    assert_eq!(s.applied, ["default", "fast"]);
    assert_eq!(s.af_xdp.rx_ring, 4096);
    assert!(s.busy_poll);
    assert_eq!(s.services.maglev_table_size, 16381);
}

/// The checks above can fail: the structural rules flag what the API server refuses, and the
/// converted schema rejects unknown fields and wrong types but takes null where nullable.
#[test]
fn the_schema_checks_themselves_can_fail() {
    use serde_json::json;
    let bad = json!({
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "spec": {
                "type": "object",
                "properties": {"a": {"description": "no type"}},
                "additionalProperties": {"type": "string"},
            },
            "list": {"type": "array"},
            "one": {"type": "object", "anyOf": [{"type": "string"}]},
        },
    });
    let errs = openapi::structural_errors(&bad);
    for want in [
        "openAPIV3Schema.properties.metadata: only name and generateName",
        "openAPIV3Schema.properties.spec: properties and additionalProperties together",
        "openAPIV3Schema.properties.spec.properties.a: no type",
        "openAPIV3Schema.properties.list: an array without items",
        "openAPIV3Schema.properties.one.anyOf[0]: type is not allowed",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{want} not in {errs:#?}"
        );
    }

    let schema = openapi::to_json_schema(&json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer", "nullable": true},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                },
            },
        },
    }));
    let v = jsonschema::validator_for(&schema).unwrap();
    let ok = |o: Value| v.iter_errors(&o).count() == 0;
    assert!(ok(
        json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "labels": {}}})
    ));
    assert!(ok(json!({"spec": {"n": null, "free": {"anything": [1]}}})));
    assert!(!ok(json!({"spec": {"n": "1"}})), "a string is no integer");
    assert!(!ok(json!({"spec": {"m": 1}})), "unknown field in spec");
    assert!(!ok(json!({"extra": 1})), "unknown field at the root");
}

/// The DaemonSet's initContainer installs vireo-cni and the conflist from its ConfigMap into
/// the host's CNI directories; the conflist names vireo-cni with host-local IPAM and the
/// agent's socket, in a version the plugin speaks.
#[test]
fn the_daemonset_installs_the_cni_plugin_and_its_conflist() {
    let objects = kubectl_kustomize("deploy");
    let cm = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "vireo-cni-config")
        .expect("the CNI ConfigMap");
    let conflist: Value = serde_json::from_str(
        cm["data"]["10-vireo.conflist"]
            .as_str()
            .expect("the conflist"),
    )
    .expect("the conflist is JSON");
    assert_eq!(conflist["cniVersion"], "1.0.0");
    assert_eq!(conflist["name"], "vireo");
    let plugin = &conflist["plugins"][0];
    assert_eq!(plugin["type"], "vireo-cni");
    assert_eq!(plugin["ipam"]["type"], "host-local");
    assert_eq!(
        plugin["agentSocket"],
        configmap_config().api_socket.to_str().unwrap(),
        "the agent's socket, as its configuration has it"
    );
    let ds = daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    let init = spec["initContainers"]
        .as_array()
        .expect("initContainers")
        .iter()
        .find(|c| c["name"] == "install-cni")
        .expect("the install-cni initContainer");
    let cmd: Vec<&str> = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&cmd[..2], ["vireo-cni", "install"]);
    let sc = &init["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null(), "no capability added");
    let mounts: BTreeMap<&str, &str> = init["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
            )
        })
        .collect();
    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    // install BIN_DIR: a mount of the host's /opt/cni/bin.
    assert_eq!(cmd.len(), 3, "the initContainer installs the binary only");
    assert_eq!(
        volumes[mounts[cmd[2]]]["hostPath"]["path"].as_str(),
        Some("/opt/cni/bin")
    );
    // The agent writes the conflist from the ConfigMap's template into the host's
    // /etc/cni/net.d, once it knows the node's pod CIDR.
    let agent = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("the agent container");
    let agent_mounts: BTreeMap<&str, &str> = agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
            )
        })
        .collect();
    let c = configmap_config()
        .cni_conflist
        .expect("the agent's configuration names the conflist");
    let template_dir = c.template.parent().unwrap().to_str().unwrap();
    assert_eq!(
        volumes[agent_mounts[template_dir]]["configMap"]["name"],
        "vireo-cni-config"
    );
    assert_eq!(c.template.file_name().unwrap(), "10-vireo.conflist");
    let out_dir = c.path.parent().unwrap().to_str().unwrap();
    assert_eq!(
        volumes[agent_mounts[out_dir]]["hostPath"]["path"].as_str(),
        Some("/etc/cni/net.d")
    );
    assert!(
        plugin["ipam"].get("ranges").is_none(),
        "the range is the node's pod CIDR, filled in by the agent"
    );
}
