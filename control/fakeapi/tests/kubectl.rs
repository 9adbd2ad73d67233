//! The real `kubectl` against the fake server: get (table, -o json, -o yaml), create -f,
//! apply -f (twice, the second a patch), replace -f, delete, get -w, for every kind served and
//! for custom resources after their CRDs. Without kubectl these tests fail, saying so.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vireo_fakeapi::{FakeApiServer, Options, Store};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn kubectl_path() -> PathBuf {
    let p = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"));
    assert!(
        p.exists(),
        "kubectl is not installed at {} (set KUBECTL to its path): the kubectl tests need the real kubectl",
        p.display()
    );
    p
}

struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn drain(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx
}

impl Kubectl {
    fn new(server: &FakeApiServer) -> Kubectl {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Kubectl { dir, kubeconfig }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kubectl_path());
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut child = self.command(args).spawn().expect("running kubectl");
        let out = drain(child.stdout.take().unwrap());
        let err = drain(child.stderr.take().unwrap());
        let deadline = Instant::now() + CALL_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kubectl {args:?} took longer than {CALL_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Out {
            ok: status.success(),
            stdout: out.recv_timeout(CALL_TIMEOUT).unwrap_or_default(),
            stderr: err.recv_timeout(CALL_TIMEOUT).unwrap_or_default(),
        }
    }

    /// Runs kubectl, which must succeed; returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.ok, "kubectl {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
        o.stdout
    }

    /// Runs kubectl, which must fail; returns its standard error.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.ok, "kubectl {args:?} succeeded:\n{}", o.stdout);
        o.stderr
    }

    fn write(&self, name: &str, obj: &Value) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, serde_yaml_ng::to_string(obj).unwrap()).unwrap();
        p.display().to_string()
    }
}

/// A watch kept running: its output lines, and the process to kill.
struct Watching {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watching {
    fn start(k: &Kubectl, args: &[&str]) -> Watching {
        let mut child = k.command(args).spawn().expect("running kubectl");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Watching { child, lines }
    }

    /// Waits (bounded) for a line containing every one of `words`.
    fn expect_line(&mut self, words: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if words.iter().all(|w| l.contains(w)) => return l,
                Ok(l) => seen.push(l),
                Err(_) => {
                    let mut err = String::new();
                    let _ = self.child.kill();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("no line with {words:?} from the watch; saw {seen:?}; stderr: {err}");
                }
            }
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn labels_of(store: &Store, api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> Value {
    store
        .get(api_version, kind, ns, name)
        .unwrap()
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}))
}

/// One object through create -f, get (table, json, yaml), apply -f twice and once more
/// changed, replace -f, get -w, delete -f.
fn round_trip(k: &Kubectl, store: &Store, obj: Value, resource: &str) {
    let api_version = obj["apiVersion"].as_str().unwrap().to_string();
    let kind = obj["kind"].as_str().unwrap().to_string();
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    let ns = ns.as_deref();
    let file = format!("{}-{name}.yaml", kind.to_lowercase());
    let with_label = |v: &str| {
        let mut o = obj.clone();
        o["metadata"]["labels"] = json!({"step": v});
        o
    };
    let mut nsargs: Vec<&str> = Vec::new();
    if let Some(n) = ns {
        nsargs = vec!["-n", n];
    }
    let args = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .chain(nsargs.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run_ok = |extra: &[&str]| {
        let a = args(extra);
        k.ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let f = k.write(&file, &with_label("created"));
    assert!(
        run_ok(&["create", "-f", &f]).contains("created"),
        "{kind}: create"
    );
    assert_eq!(
        labels_of(store, &api_version, &kind, ns, &name)["step"],
        "created"
    );

    let table = run_ok(&["get", resource]);
    assert!(
        table.starts_with("NAME") && table.contains(&name) && table.contains("AGE"),
        "{kind}: get:\n{table}"
    );
    let one = run_ok(&["get", resource, &name]);
    assert!(
        one.lines().count() == 2 && one.contains(&name),
        "{kind}: get NAME:\n{one}"
    );
    let js: Value = serde_json::from_str(&run_ok(&["get", resource, &name, "-o", "json"])).unwrap();
    assert_eq!(
        (js["kind"].as_str(), js["metadata"]["name"].as_str()),
        (Some(kind.as_str()), Some(name.as_str()))
    );
    let yaml = run_ok(&["get", resource, &name, "-o", "yaml"]);
    let y: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(y["metadata"]["uid"], js["metadata"]["uid"], "{kind}: yaml");

    let f = k.write(&file, &with_label("applied"));
    assert!(
        run_ok(&["apply", "-f", &f]).contains("configured"),
        "{kind}: first apply"
    );
    assert_eq!(
        labels_of(store, &api_version, &kind, ns, &name)["step"],
        "applied"
    );
    let rv =
        store.get(&api_version, &kind, ns, &name).unwrap()["metadata"]["resourceVersion"].clone();
    assert!(
        run_ok(&["apply", "-f", &f]).contains("unchanged"),
        "{kind}: second apply"
    );
    assert_eq!(
        store.get(&api_version, &kind, ns, &name).unwrap()["metadata"]["resourceVersion"],
        rv
    );
    let f = k.write(&file, &with_label("patched"));
    assert!(
        run_ok(&["apply", "-f", &f]).contains("configured"),
        "{kind}: third apply"
    );
    assert_eq!(
        labels_of(store, &api_version, &kind, ns, &name)["step"],
        "patched"
    );

    let f = k.write(&file, &with_label("replaced"));
    assert!(
        run_ok(&["replace", "-f", &f]).contains("replaced"),
        "{kind}: replace"
    );
    assert_eq!(
        labels_of(store, &api_version, &kind, ns, &name)["step"],
        "replaced"
    );

    // get -w: the current object, then a change made meanwhile.
    let mut wargs = vec!["get", resource, "-w"];
    wargs.extend(nsargs.iter());
    let mut w = Watching::start(k, &wargs);
    w.expect_line(&[&name]);
    let mut changed = store.get(&api_version, &kind, ns, &name).unwrap();
    changed["metadata"]["labels"]["step"] = json!("watched");
    store.update(changed).unwrap();
    w.expect_line(&[&name]);
    drop(w);

    assert!(
        run_ok(&["delete", "-f", &f]).contains("deleted"),
        "{kind}: delete"
    );
    assert!(
        store.get(&api_version, &kind, ns, &name).is_err(),
        "{kind}: still there"
    );
}

fn start() -> (FakeApiServer, Kubectl) {
    let server = FakeApiServer::start(Options::default()).unwrap();
    let k = Kubectl::new(&server);
    (server, k)
}

#[test]
fn kubectl_core_kinds() {
    let (server, k) = start();
    let store = server.store();
    let kinds = [
        (
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
            "namespaces",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}, "spec": {"podCIDR": "10.244.1.0/24"}}),
            "nodes",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
                   "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]}}),
            "pods",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                   "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            "svc",
        ),
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "kube-system"}, "data": {"a": "1"}}),
            "configmaps",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.17f0", "namespace": "default"},
                   "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"}, "reason": "Started", "message": "started", "type": "Normal"}),
            "events",
        ),
    ];
    for (obj, resource) in kinds {
        round_trip(&k, store, obj, resource);
    }
}

#[test]
fn kubectl_discovery_and_networking_kinds() {
    let (server, k) = start();
    let store = server.store();
    let kinds = [
        (
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "node-1"}],
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
            "endpointslices",
        ),
        (
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "default"},
                   "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 80}]}]}}),
            "netpol",
        ),
    ];
    for (obj, resource) in kinds {
        round_trip(&k, store, obj, resource);
    }
}

#[test]
fn kubectl_custom_resources_after_their_crds() {
    let (server, k) = start();
    let store = server.store();
    // Before their CRDs, kubectl does not know the kinds.
    let cnp = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "allow-web", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}});
    let f = k.write("early.yaml", &cnp);
    let err = k.fails(&["apply", "-f", &f]);
    assert!(
        err.contains("CiliumNetworkPolicy") || err.contains("no matches"),
        "{err}"
    );

    let mut crds = vireo_fakeapi::cilium_crds();
    crds.push(vireo_fakeapi::crd(
        "vireo.io",
        "v1alpha1",
        "NodeConfig",
        "nodeconfigs",
        false,
        &["vnc"],
    ));
    crds.push(vireo_fakeapi::crd(
        "vireo.io",
        "v1alpha1",
        "ServicePolicy",
        "servicepolicies",
        true,
        &["vsp"],
    ));
    for (i, crd) in crds.iter().enumerate() {
        let f = k.write(&format!("crd-{i}.yaml"), crd);
        assert!(k.ok(&["apply", "-f", &f]).contains("created"));
    }
    let listed = k.ok(&["get", "crds"]);
    for crd in &crds {
        assert!(
            listed.contains(crd["metadata"]["name"].as_str().unwrap()),
            "{listed}"
        );
    }
    let kinds = [
        (cnp, "cnp"),
        (
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "cluster"},
                   "spec": {"nodeSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]}}),
            "ccnp",
        ),
        (
            json!({"apiVersion": "vireo.io/v1alpha1", "kind": "NodeConfig", "metadata": {"name": "node-1"}, "spec": {"mtu": 1500}}),
            "vnc",
        ),
        (
            json!({"apiVersion": "vireo.io/v1alpha1", "kind": "ServicePolicy", "metadata": {"name": "sp", "namespace": "default"},
                   "spec": {"rules": [{"port": 80}]}}),
            "servicepolicies.vireo.io",
        ),
    ];
    for (obj, resource) in kinds {
        round_trip(&k, store, obj, resource);
    }
    let f = k.write("crd-0.yaml", &crds[0]);
    assert!(k.ok(&["delete", "-f", &f]).contains("deleted"));
    let err = k.fails(&["get", "cnp"]);
    assert!(
        err.contains("could not find the requested resource")
            || err.contains("doesn't have a resource type"),
        "{err}"
    );
}

#[test]
fn kubectl_selectors_pagination_and_errors() {
    let (server, k) = start();
    let store = server.store();
    for (ns, name, node, app) in [
        ("default", "a", "n1", "web"),
        ("default", "b", "n2", "db"),
        ("kube-system", "c", "n1", "web"),
    ] {
        store
            .create(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
                           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}}))
            .unwrap();
    }
    let names = |out: &str| -> Vec<String> {
        out.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    };
    let all = k.ok(&["get", "pods", "-A"]);
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert_eq!(names(&all), ["default", "default", "kube-system"]);
    assert_eq!(names(&k.ok(&["get", "pods", "-l", "app=web"])), ["a"]);
    assert_eq!(
        names(&k.ok(&[
            "get",
            "pods",
            "-A",
            "-l",
            "app in (web,db)",
            "--field-selector",
            "spec.nodeName=n1",
            "-o",
            "name"
        ]))
        .len(),
        1
    );
    let by_name = k.ok(&[
        "get",
        "pods",
        "-A",
        "-o",
        "name",
        "--field-selector",
        "spec.nodeName=n1",
    ]);
    assert_eq!(by_name.lines().collect::<Vec<_>>(), ["pod/a", "pod/c"]);
    let paged = k.ok(&["get", "pods", "-A", "--chunk-size=1", "-o", "name"]);
    assert_eq!(
        paged.lines().collect::<Vec<_>>(),
        ["pod/a", "pod/b", "pod/c"]
    );
    let listed: Value = serde_json::from_str(&k.ok(&["get", "pods", "-o", "json"])).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);

    assert!(k
        .fails(&["get", "pod", "nope"])
        .contains("pods \"nope\" not found"));
    let f = k.write(
        "dup.yaml",
        &store.get("v1", "Pod", Some("default"), "a").unwrap(),
    );
    assert!(k.fails(&["create", "-f", &f]).contains("AlreadyExists"));
    let stray = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "nowhere"}});
    let f = k.write("stray.yaml", &stray);
    assert!(k
        .fails(&["create", "-f", &f])
        .contains("namespaces \"nowhere\" not found"));
    assert!(k.ok(&["delete", "pod", "a", "b"]).contains("deleted"));
    assert_eq!(store.list("v1", "Pod", None).unwrap().len(), 1);
    assert!(k.ok(&["version"]).contains("v1.33"));
    assert!(k.ok(&["api-resources"]).contains("endpointslices"));

    // An unreachable server is an error, and after a restart all is back.
    server.stop();
    let err = k.fails(&["get", "pods", "--request-timeout=2s"]);
    assert!(err.contains("refused") || err.contains("connect"), "{err}");
    server.restart().unwrap();
    assert!(k.ok(&["get", "pods", "-A"]).contains("kube-system"));
}

#[test]
fn kubectl_with_legacy_discovery_only() {
    let server = FakeApiServer::start(Options::default().aggregated_discovery(false)).unwrap();
    let k = Kubectl::new(&server);
    let crd = vireo_fakeapi::crd(
        "vireo.io",
        "v1alpha1",
        "NodeConfig",
        "nodeconfigs",
        false,
        &["vnc"],
    );
    let f = k.write("crd.yaml", &crd);
    assert!(k.ok(&["apply", "-f", &f]).contains("created"));
    round_trip(
        &k,
        server.store(),
        json!({"apiVersion": "vireo.io/v1alpha1", "kind": "NodeConfig", "metadata": {"name": "n1"}, "spec": {"mtu": 1500}}),
        "vnc",
    );
    assert!(k.ok(&["api-resources"]).contains("nodeconfigs"));
}
