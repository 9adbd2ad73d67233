//! The sandbox cluster and `vireo connectivity test` (root only): every basic path, every
//! service path and every policy check (allowed and denied with real traffic) works across two
//! nodes, bad VXLAN is a counted drop, and `sandbox down` leaves nothing behind.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// What these tests add to the shared sandbox harness.
impl Sandbox {
    /// Two pings from a pod, with `wait` seconds for each reply.
    fn ping_from(&self, pod: &str, ip: &str, wait: u32) -> bool {
        let w = wait.to_string();
        let args = [
            "sandbox", "exec", pod, "--", "ping", "-c", "2", "-i", "0.2", "-W", &w, ip,
        ];
        self.vireo(&args).status.success()
    }
}

fn drops(s: &Sandbox, node: &str) -> Value {
    s.json(&["status", "--json", "--node", node])["counters"]["drops"].clone()
}

/// Two sandboxes at once would share two cores with each other's agents: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `vireo connectivity test --json` and asserts every check passed; returns their names.
fn connectivity_passes(s: &Sandbox) -> Vec<String> {
    let o = s.vireo(&["connectivity", "test", "--json"]);
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    let failed: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] != true)
        .collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    assert_eq!(report["failed"], 0);
    assert!(report["passed"].as_u64().unwrap() >= 22);
    assert!(o.status.success());
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

#[test]
fn sandbox_on_the_kube_source_with_kubectl() {
    require_capabilities(&["tcpdump", "kubectl"]);
    let _g = serial();
    // Two workers per agent on this pass: frames cross between workers (handoff).
    let s = Sandbox::up("vk", &["--source", "kube", "--workers", "2"]);
    let st = s.json(&["sandbox", "status", "--json"]);
    assert_eq!(st["source"], "kube");
    assert_eq!(st["apiserver"]["running"], true);
    for n in ["node-1", "node-2"] {
        let a = s.json(&["status", "--json", "--node", n]);
        assert_eq!(a["source"]["kind"], "kube", "{n}: {}", a["source"]);
        assert_eq!(a["source"]["identities"]["mode"], "cluster", "{n}");
        assert_eq!(a["source"]["identities"]["waiting"], 0, "{n}");
    }
    // Every check passes through the API server, as on the manifest source.
    let names = connectivity_passes(&s);
    assert!(
        names.iter().any(|n| n == "policy-netpol-model"),
        "{names:?}"
    );
    // With two workers nothing is dropped for want of a socket: a frame for the other
    // worker's pod is handed off to it.
    let mut handed = 0;
    for n in ["node-1", "node-2"] {
        let a = s.json(&["status", "--json", "--node", n]);
        assert_eq!(a["workers"].as_array().map(Vec::len), Some(2), "{n}");
        assert_eq!(
            a["counters"]["drops"]["no_tx_port"], 0,
            "{n}: {}",
            a["counters"]
        );
        let h = &a["counters"]["handoff"];
        assert!(
            h["received"].as_u64() <= h["sent"].as_u64(),
            "{n}: more received than sent: {h}"
        );
        handed += h["sent"].as_u64().unwrap_or(0);
    }
    assert!(handed > 0, "no frame was handed between workers");

    // kubectl sees the sandbox's objects and changes it like a cluster.
    let kc = String::from_utf8(s.vireo(&["sandbox", "kubeconfig"]).stdout).unwrap();
    let kc = kc.trim().to_string();
    let kubectl = |args: &[&str]| {
        let mut a = vec!["kubectl", "--kubeconfig", &kc];
        a.extend_from_slice(args);
        run(&a)
    };
    let pods = kubectl(&["get", "pods", "-A", "-o", "name"]);
    assert!(
        pods.status.success(),
        "{}",
        String::from_utf8_lossy(&pods.stderr)
    );
    let pods = String::from_utf8_lossy(&pods.stdout).to_string();
    assert!(pods.contains("pod/node-1-pod-1"), "{pods}");
    // Each agent writes the VireoEndpoints of its node's pods.
    let veps = kubectl(&["get", "vireoendpoints", "-A", "-o", "json"]);
    let veps: serde_json::Value = serde_json::from_slice(&veps.stdout).expect("a list");
    let vep = veps["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["metadata"]["name"] == "node-2-pod-1")
        .unwrap_or_else(|| panic!("no VireoEndpoint for node-2-pod-1: {veps}"));
    assert_eq!(vep["status"]["state"], "ready", "{vep}");
    assert_eq!(vep["status"]["networking"]["nodeName"], "node-2", "{vep}");
    // Identities are cluster-wide objects: each local endpoint's number is a VireoIdentity.
    let ids = kubectl(&["get", "vireoidentities", "-o", "name"]);
    let ids = String::from_utf8_lossy(&ids.stdout).to_string();
    for n in ["node-1", "node-2"] {
        for ep in s
            .json(&["map", "get", "endpoints", "--json", "--node", n])
            .as_array()
            .unwrap()
        {
            let id = ep["identity"].as_u64().unwrap();
            assert!(
                ids.lines()
                    .any(|l| l == format!("vireoidentity.vireo.io/{id}")),
                "{n}: endpoint identity {id} is no VireoIdentity: {ids}"
            );
        }
    }
    let target = s.json(&["sandbox", "status", "--json"])["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod"] == "default/node-2-pod-1")
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .expect("node-2-pod-1");
    assert!(
        s.ping_from("default/node-1-pod-1", &target, 1),
        "before the policy"
    );
    let dir = std::env::temp_dir().join(format!("{}-kubectl", s.0));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("deny.yaml");
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: deny-to-node-2-pod-1, namespace: default}\n\
         spec: {podSelector: {matchLabels: {pod: node-2-pod-1}}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    let o = kubectl(&["apply", "-f", policy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = Instant::now();
    while s.ping_from("default/node-1-pod-1", &target, 1) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the applied deny never took effect"
        );
    }
    let o = kubectl(&["delete", "-f", policy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = Instant::now();
    while !s.ping_from("default/node-1-pod-1", &target, 1) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the deleted deny stayed in force"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    // The probes: ready while the API server answers; once it has been gone for longer than
    // the bound, not ready (and saying why) but alive, and the metrics say so too.
    let get = |path: &str| -> (u16, String) {
        let url = format!("http://{}{path}", vireo_sandbox::METRICS_ADDRESS);
        let mut args = vec!["sandbox", "exec", "--node", "node-1", "--"];
        let curl = curl_get(&url);
        args.extend(curl.iter().map(String::as_str));
        curl_answer(&s.vireo(&args).stdout)
    };
    assert_eq!(get("/readyz"), (200, "ok\n".into()));
    let (code, m) = get("/metrics");
    assert_eq!(code, 200);
    assert!(
        m.contains("vireo_source_connected{kind=\"kube\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("vireo_control_update_latency_seconds_count{kind=\"kube\"}"),
        "{m}"
    );
    let pid = st["apiserver"]["pid"]
        .as_u64()
        .expect("the API server's pid")
        .to_string();
    assert!(run(&["kill", "-KILL", &pid]).status.success());
    let t = Instant::now();
    let (code, why) = loop {
        let r = get("/readyz");
        if r.0 != 200 || t.elapsed() > Duration::from_secs(30) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        code, 503,
        "still ready 30 s after the API server died: {why}"
    );
    assert!(why.contains("the source has been stale for"), "{why}");
    assert!(
        t.elapsed() >= Duration::from_secs(vireo_sandbox::METRICS_STALE_AFTER_S - 1),
        "not ready before the bound: {why}"
    );
    assert_eq!(get("/healthz"), (200, "ok\n".into()), "alive all the same");
    let (_, m) = get("/metrics");
    assert!(
        m.contains("vireo_source_connected{kind=\"kube\"} 0\n"),
        "{m}"
    );
    assert!(m.contains("vireo_agent_ready 0\n"), "{m}");

    let o = s.vireo(&["sandbox", "down"]);
    assert!(o.status.success());
    assert!(s.netns().is_empty(), "left behind: {:?}", s.netns());
}

#[test]
fn sandbox_connectivity_and_bad_vxlan() {
    // `vireo connectivity test` captures the underlay with tcpdump.
    require_capabilities(&["tcpdump"]);
    let _g = serial();
    let s = Sandbox::up("vo", &["--source", "manifests"]);
    let st = s.json(&["sandbox", "status", "--json"]);
    assert_eq!(st["nodes"].as_array().unwrap().len(), 2);
    // 3 pods per node, 2 service backends (app: echo) on each, the policy checks' server and 3
    // clients (policy-test), the network-policy model's pods a, b, c in x, y, z, and the
    // cluster DNS pod (kube-system/dns-server).
    assert_eq!(st["pods"].as_array().unwrap().len(), 10 + 4 + 9 + 1);

    // The connectivity table, as CI and users see it.
    let names = connectivity_passes(&s);
    for want in [
        "service-clusterip-spread",
        "service-reply-source",
        "service-nodeport-underlay",
        "service-affinity",
        "service-backend-removal",
        "service-no-backend",
        "policy-l3-allow",
        "policy-l4-port",
        "policy-deny",
        "policy-cidr",
        "policy-entity",
        "policy-netpol-model",
        "policy-fqdn",
        "policy-dns-refused",
        "world/pod-to-world",
        "world/policy-deny-world",
        "world/port-range-flood",
        "host/node-to-own-pods",
        "host/pods-to-host-network",
        "host/node-to-clusterip",
        "host/hairpin",
        "host/service-hostnet-backend",
        "host/policy-from-host",
        "host/policy-from-remote-node",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "check {want} did not run: {names:?}"
        );
    }

    // Apply: a new pod on node-2 is realised and reachable across nodes; a malformed document
    // beside it is reported with its file and line, and does not stop the rest.
    let dir = std::env::temp_dir().join(format!("{}-apply", s.0));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("late.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: default, labels: {app: late}}\n\
         spec: {nodeName: node-2, containers: [{name: c, image: i}]}\n---\nkind: Pod\nmetadata: {name: [\n",
    )
    .unwrap();
    let o = s.vireo(&["sandbox", "apply", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "apply: {err}");
    // The second document spans lines 6-8; the parser names the line where it gave up.
    assert!(
        ["late.yaml:6:", "late.yaml:7:", "late.yaml:8:"]
            .iter()
            .any(|l| err.contains(l)),
        "malformed document not reported with its file and line: {err}"
    );
    let late = s.json(&["sandbox", "status", "--json"])["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod"] == "default/late")
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .expect("pod late realised");
    let ok = s.ping_from("default/node-1-pod-1", &late, 2);
    assert!(ok, "node-1-pod-1 -> late ({late})");
    let _ = std::fs::remove_dir_all(&dir);

    // Bad VXLAN from node-2 (a known node) and from an address that is no node.
    let n2 = format!("{}-node-2", s.0);
    let ep = s.json(&["map", "get", "endpoints", "--json", "--node", "node-2"]);
    let vni = ep[0]["identity"].as_u64().unwrap().to_string();
    let pod_on_1 = s.json(&["sandbox", "status", "--json"])["pods"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let before = drops(&s, "node-1");
    let script = helper("vxlan_inject.py");
    let inject = |bind: &str, kinds: &str| {
        must(&[
            "ip",
            "netns",
            "exec",
            &n2,
            "python3",
            script.to_str().unwrap(),
            bind,
            "192.168.100.11",
            "8472",
            &vni,
            &pod_on_1,
            "10",
            kinds,
        ]);
    };
    inject("192.168.100.12", "short,flags,unknown_vni,truncated_inner");
    must(&[
        "ip",
        "-n",
        &n2,
        "addr",
        "add",
        "192.168.100.99/24",
        "dev",
        "eth0",
    ]);
    inject("192.168.100.99", "valid");
    let want = [
        ("vxlan_malformed", 20),
        ("vxlan_unknown_identity", 10),
        ("vxlan_truncated_inner", 10),
        ("vxlan_unknown_node", 10),
    ];
    let t = Instant::now();
    loop {
        let after = drops(&s, "node-1");
        let got: Vec<u64> = want
            .iter()
            .map(|(r, _)| after[r].as_u64().unwrap() - before[r].as_u64().unwrap())
            .collect();
        if want.iter().zip(&got).all(|((_, w), g)| g == w) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "drops {want:?}: got {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The node took no harm.
    let ok = s.ping_from("default/node-1-pod-1", "10.244.2.10", 1);
    assert!(ok, "cross-node ping after bad VXLAN");

    // Down deletes exactly what up made.
    assert!(!s.netns().is_empty());
    let o = s.vireo(&["sandbox", "down"]);
    assert!(o.status.success());
    assert!(s.netns().is_empty(), "left behind: {:?}", s.netns());
    let state = std::path::PathBuf::from(format!("/run/vireo/sandbox-{}", s.0));
    assert!(!state.exists(), "left behind: {}", state.display());
}
