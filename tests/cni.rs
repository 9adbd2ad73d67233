//! End-to-end: `vireo-cni` driven by libcni, the reference runtime library (a Go driver,
//! `tests/cni/libcni-driver`, built here), against one agent in a node namespace of its own;
//! IPAM by Debian's host-local.
//!
//! ADD → CHECK → DEL → DEL again; the pods' traffic through the agent; an agent restart
//! (registrations re-attached) and a DEL while the agent is down (forgotten after); bad input
//! (malformed stdin, unknown version, missing netns, agent not running, agent refusing, IPAM
//! failing), each with its error code and nothing left behind; 1000 ADD/DEL cycles.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The tests here share the machine's two cores: one at a time (the cycle count is timed).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

fn cni_bin() -> PathBuf {
    let p = Path::new(VIREO).with_file_name("vireo-cni");
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build --release -p vireo-cni` (`cargo test \
         --workspace` builds it)",
        p.display()
    );
    p
}

/// Builds the libcni driver into `dir` (GOPATH mode, offline, about a second).
fn build_driver(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cni/libcni-driver");
    let out = dir.join("libcni-driver");
    let gopath = dir.join("gopath");
    std::fs::create_dir_all(&gopath).expect("gopath");
    let cache = Path::new(VIREO).with_file_name("go-cache");
    let o = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
        .env("GO111MODULE", "off")
        .env("GOCACHE", &cache)
        .env("GOFLAGS", "")
        .output()
        .expect("running go build (golang-go)");
    assert!(
        o.status.success(),
        "building the libcni driver: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// One node with an agent, a conflist for it, and pod namespaces; all removed on drop.
struct Bed {
    dir: PathBuf,
    driver: PathBuf,
    conflist: PathBuf,
    cfg: PathBuf,
    pods: Vec<Netns>,
    agent: Option<Agent>,
    node: Node,
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.agent.take();
        self.pods.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(vireo_api::cni_registry_dir(&self.node.api()));
    }
}

fn conflist_json(name: &str, sock: &Path, ipam_dir: &Path, range_end: Option<&str>) -> Value {
    let mut range = json!({"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10",
                           "gateway": "10.244.1.1"});
    if let Some(e) = range_end {
        range["rangeEnd"] = json!(e);
    }
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "vireo-cni",
            "mtu": 1450,
            "agentSocket": sock,
            "ipam": {"type": "host-local", "ranges": [[range]], "dataDir": ipam_dir},
        }],
    })
}

impl Bed {
    fn new(tag: &str, pods: usize) -> Bed {
        require_capabilities(&["go"]);
        assert!(
            Path::new(HOST_LOCAL).is_file(),
            "{HOST_LOCAL} is missing (containernetworking-plugins)"
        );
        let node = Node::new(tag, 0);
        let dir = PathBuf::from(format!("/tmp/{}-cni", node.prefix));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(vireo_api::cni_registry_dir(&node.api()));
        std::fs::create_dir_all(&dir).expect("test dir");
        let driver = build_driver(&dir);
        let conflist = dir.join("10-vireo.conflist");
        let c = conflist_json("vireo", &node.api(), &dir.join("ipam"), None);
        std::fs::write(&conflist, c.to_string()).expect("conflist");
        let cfg = dir.join("agent.yaml");
        std::fs::write(
            &cfg,
            format!(
                "node: {p}\ngateways: [10.244.1.1]\napi_socket: {a}\nworkers: [{{cores: [1]}}]\n\
                 interfaces: []\n",
                p = node.prefix,
                a = node.api().display()
            ),
        )
        .expect("agent config");
        let pods = (0..pods)
            .map(|i| Netns::new(format!("{}-p{i}", node.prefix)))
            .collect();
        let mut b = Bed {
            dir,
            driver,
            conflist,
            cfg,
            pods,
            agent: None,
            node,
        };
        b.start_agent();
        b
    }

    fn start_agent(&mut self) {
        self.agent = Some(self.node.agent_with(&self.cfg));
    }

    fn stop_agent(&mut self) {
        let a = self.agent.take().expect("agent running");
        assert!(a.stop().success(), "the agent did not stop cleanly");
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    fn netns_path(&self, pod: usize) -> String {
        format!("/var/run/netns/{}", self.pods[pod].0)
    }

    /// Runs the libcni driver in the node's namespace (where a runtime would run).
    fn driver(&self, args: &[&str]) -> (bool, Value) {
        self.driver_with(&self.conflist, args)
    }

    fn driver_with(&self, conflist: &Path, args: &[&str]) -> (bool, Value) {
        let cni_path = format!("{}:/usr/lib/cni", cni_bin().parent().unwrap().display());
        let mut v: Vec<&str> = vec![args[0], conflist.to_str().unwrap()];
        v.extend_from_slice(&args[1..]);
        let o = Command::new("ip")
            .args(["netns", "exec", &self.node.ns.0])
            .arg(&self.driver)
            .args(&v)
            .env("CNI_PATH", cni_path)
            .env("CNI_CACHE_DIR", self.dir.join("cache"))
            .output()
            .expect("running the driver");
        (o.status.success(), parse(&o))
    }

    fn add(&self, id: &str, pod: usize, name: &str) -> (bool, Value) {
        self.driver(&["add", id, &self.netns_path(pod), "eth0", "default", name])
    }
    fn check(&self, id: &str, pod: usize, name: &str) -> (bool, Value) {
        self.driver(&["check", id, &self.netns_path(pod), "eth0", "default", name])
    }
    fn del(&self, id: &str, pod: usize, name: &str) -> (bool, Value) {
        self.driver(&["del", id, &self.netns_path(pod), "eth0", "default", name])
    }

    /// Runs the plugin itself, as the spec's protocol has it: `env` and `stdin`.
    fn plugin(&self, env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.node.ns.0])
            .arg(cni_bin())
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("running vireo-cni");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        (o.status.success(), parse(&o))
    }

    /// The host-side veths in the node's namespace.
    fn veths(&self) -> Vec<String> {
        self.node
            .ns
            .must(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("lxc"))
            .collect()
    }

    /// host-local's lease files (one per address) for network `name`.
    fn leases(&self, name: &str) -> Vec<String> {
        std::fs::read_dir(self.dir.join("ipam").join(name))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The agent's registration files.
    fn registrations(&self) -> Vec<String> {
        std::fs::read_dir(vireo_api::cni_registry_dir(&self.node.api()))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn endpoints(&self) -> Vec<Value> {
        let o = self.agent().cli(&["map", "get", "endpoints", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout)
            .expect("endpoints JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn assert_nothing_left(&self, what: &str) {
        assert_eq!(self.veths(), Vec::<String>::new(), "{what}: veths left");
        assert_eq!(
            self.leases("vireo"),
            Vec::<String>::new(),
            "{what}: leases left"
        );
        assert_eq!(
            self.registrations(),
            Vec::<String>::new(),
            "{what}: registrations left"
        );
    }
}

fn parse(o: &Output) -> Value {
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| json!({"unparsed": text, "stderr": String::from_utf8_lossy(&o.stderr)}))
}

fn ping(from: &Netns, to: &str) -> bool {
    from.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", to])
        .status
        .success()
}

#[test]
fn add_check_del_through_libcni() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = Bed::new("cn", 3);

    // VERSION, as libcni asks.
    let o = Command::new(&b.driver)
        .args(["version", "vireo-cni"])
        .env("CNI_PATH", cni_bin().parent().unwrap().to_str().unwrap())
        .output()
        .unwrap();
    let v = parse(&o);
    for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        assert!(
            v["supportedVersions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == want)),
            "{v}"
        );
    }

    // ADD two pods.
    let (ok, r0) = b.add("c0", 0, "p0");
    assert!(ok, "ADD c0: {r0}\n{}", b.agent().log_text());
    assert_eq!(r0["cniVersion"], "1.0.0");
    assert_eq!(r0["ips"][0]["address"], "10.244.1.10/32", "{r0}");
    assert_eq!(r0["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(r0["interfaces"][1]["sandbox"], b.netns_path(0));
    assert_eq!(r0["interfaces"][1]["mac"], "0a:58:0a:f4:01:0a");
    let (ok, r1) = b.add("c1", 1, "p1");
    assert!(ok, "ADD c1: {r1}");
    assert_eq!(r1["ips"][0]["address"], "10.244.1.11/32", "{r1}");
    let p0 = &b.pods[0];
    let link = p0.must(&["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(link.contains("0a:58:0a:f4:01:0a"), "{link}");
    let routes = p0.must(&["ip", "route"]);
    assert!(
        routes.contains("default via 10.244.1.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("10.244.1.1 dev eth0"), "{routes}");
    let features = p0.must(&["ethtool", "-k", "eth0"]);
    assert!(features.contains("tx-checksumming: off"), "{features}");
    assert_eq!(b.leases("vireo").len(), 2);
    assert_eq!(b.registrations().len(), 2);

    // The agent attached both, with identity init until a Pod shows up, and names the
    // containers.
    let eps = b.endpoints();
    assert_eq!(eps.len(), 2, "{eps:?}");
    for (e, id) in eps.iter().zip(["c0", "c1"]) {
        assert_eq!(e["container_id"], id, "{e}");
        assert_eq!(e["identity"], 5, "{e}");
    }
    let st = b.agent().status();
    let attached: Vec<&Value> = st["interfaces"].as_array().unwrap().iter().collect();
    assert_eq!(attached.len(), 2, "{st}");
    assert!(attached.iter().all(|i| !i["xdp_mode"].is_null()), "{st}");

    // CHECK passes, and fails once the pod's wiring is broken.
    let (ok, e) = b.check("c0", 0, "p0");
    assert!(ok, "CHECK c0: {e}");
    p0.must(&["ip", "route", "del", "default"]);
    let (ok, e) = b.check("c0", 0, "p0");
    assert!(!ok, "CHECK must fail without the default route");
    assert_eq!(e["code"], 103, "{e}");
    assert!(
        e["details"]
            .as_str()
            .unwrap_or("")
            .contains("default route"),
        "{e}"
    );
    p0.must(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "10.244.1.1",
        "dev",
        "eth0",
    ]);

    // The pods talk through the agent: its XDP program steers their frames.
    let steered = |b: &Bed| -> u64 {
        b.agent().status()["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["xdp"]["steered"].as_u64().unwrap_or(0))
            .sum()
    };
    let before = steered(&b);
    assert!(
        ping(&b.pods[0], "10.244.1.11"),
        "p0 → p1\n{}",
        b.agent().log_text()
    );
    assert!(
        steered(&b) >= before + 4,
        "the pings did not pass the agent"
    );

    // An agent restart attaches the registrations again; a DEL while it is down succeeds and
    // the restarted agent forgets that registration.
    b.stop_agent();
    let (ok, e) = b.del("c1", 1, "p1");
    assert!(ok, "DEL with the agent down: {e}");
    assert_eq!(b.veths().len(), 1);
    assert_eq!(b.leases("vireo"), vec!["10.244.1.10".to_string()]);
    b.start_agent();
    let t = Instant::now();
    while b.registrations().len() != 1 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.registrations(), vec!["c0.json".to_string()]);
    let eps = b.endpoints();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0]["container_id"], "c0");
    let (ok, e) = b.check("c0", 0, "p0");
    assert!(ok, "CHECK after the restart: {e}");
    // A new pod after the restart reaches the restored one.
    let (ok, r2) = b.add("c2", 2, "p2");
    assert!(ok, "ADD c2: {r2}");
    let ip2 = r2["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32");
    assert!(ping(&b.pods[0], ip2), "p0 → p2 after the restart");

    // DEL, DEL again; DEL of an unknown container, and of one whose netns is gone.
    for (id, pod, name) in [("c0", 0, "p0"), ("c2", 2, "p2")] {
        let (ok, e) = b.del(id, pod, name);
        assert!(ok, "DEL {id}: {e}");
        let (ok, e) = b.del(id, pod, name);
        assert!(ok, "second DEL {id}: {e}");
    }
    let (ok, e) = b.driver(&["del", "never-added", "/var/run/netns/vt-none", "eth0"]);
    assert!(ok, "DEL of an unknown container: {e}");
    b.assert_nothing_left("after DEL");
    assert_eq!(b.endpoints(), Vec::<Value>::new());
    // CHECK of a container that is gone fails.
    let (ok, _) = b.check("c0", 0, "p0");
    assert!(!ok, "CHECK after DEL must fail");
}

#[test]
fn bad_input_leaves_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = Bed::new("cb", 2);
    let ns0 = b.netns_path(0);
    let env = |cmd: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "bad1".to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_NETNS", ns0.clone()),
        ]
    };
    let plugin = |b: &Bed, e: &[(&'static str, String)], stdin: &str| {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        b.plugin(&e, stdin)
    };
    let conf = conflist_json("vireo", &b.node.api(), &b.dir.join("ipam"), None);
    let mut one = conf["plugins"][0].clone();
    one["cniVersion"] = json!("1.0.0");
    one["name"] = json!("vireo");

    // Malformed stdin: 6.
    let (ok, e) = plugin(&b, &env("ADD"), "{\"cniVersion\": \"1.0.0\", ");
    assert!(!ok);
    assert_eq!(e["code"], 6, "{e}");
    assert!(!e["msg"].as_str().unwrap_or("").is_empty(), "{e}");
    b.assert_nothing_left("malformed stdin");
    // Unknown version: 1.
    let mut v = one.clone();
    v["cniVersion"] = json!("9.9.9");
    let (ok, e) = plugin(&b, &env("ADD"), &v.to_string());
    assert!(!ok);
    assert_eq!(e["code"], 1, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("9.9.9"), "{e}");
    b.assert_nothing_left("unknown version");
    // A configuration without ipam: 7. A missing environment variable: 4.
    let mut v = one.clone();
    v.as_object_mut().unwrap().remove("ipam");
    let (ok, e) = plugin(&b, &env("ADD"), &v.to_string());
    assert!(!ok);
    assert_eq!(e["code"], 7, "{e}");
    let no_ifname: Vec<_> = env("ADD")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_IFNAME")
        .collect();
    let (ok, e) = plugin(&b, &no_ifname, &one.to_string());
    assert!(!ok);
    assert_eq!(e["code"], 4, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("CNI_IFNAME"), "{e}");
    b.assert_nothing_left("bad configuration or environment");

    // Through libcni: a missing netns (3).
    let (ok, e) = b.driver(&[
        "add",
        "bad2",
        "/var/run/netns/vt-missing",
        "eth0",
        "default",
        "x",
    ]);
    assert!(!ok);
    assert_eq!(e["code"], 3, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("vt-missing"), "{e}");
    b.assert_nothing_left("missing netns");

    // IPAM failing: a range of one address, taken; the second ADD gets host-local's error.
    let small = b.dir.join("small.conflist");
    let c = conflist_json(
        "small",
        &b.node.api(),
        &b.dir.join("ipam"),
        Some("10.244.1.10"),
    );
    std::fs::write(&small, c.to_string()).unwrap();
    let (ok, e) = b.driver_with(
        &small,
        &["add", "s0", &b.netns_path(0), "eth0", "default", "s0"],
    );
    assert!(ok, "{e}");
    let (ok, e) = b.driver_with(
        &small,
        &["add", "s1", &b.netns_path(1), "eth0", "default", "s1"],
    );
    assert!(!ok);
    assert!(e["msg"].as_str().unwrap().contains("host-local"), "{e}");
    assert_eq!(b.veths().len(), 1, "only s0's veth");
    assert_eq!(b.leases("small"), vec!["10.244.1.10".to_string()]);
    let (ok, e) = b.driver_with(
        &small,
        &["del", "s0", &b.netns_path(0), "eth0", "default", "s0"],
    );
    assert!(ok, "{e}");
    assert_eq!(b.leases("small"), Vec::<String>::new());

    // The agent refusing, after the veth and the lease were made: both are undone. A stand-in
    // agent answers lookups and refuses registrations.
    let fake = b.dir.join("refusing.sock");
    let script = format!(
        "import socket,os\ns=socket.socket(socket.AF_UNIX)\ns.bind({p:?})\ns.listen(8)\n\
         s.settimeout(30)\nwhile True:\n  c,_=s.accept()\n  f=c.makefile('rw')\n  for l in f:\n    \
         r='{{\"ok\":true,\"result\":null}}' if 'cni_add' not in l else \
         '{{\"ok\":false,\"error\":\"refused for the test\"}}'\n    f.write(r+'\\n'); f.flush()\n",
        p = fake.to_str().unwrap()
    );
    // Quiet: `kill` below stops `timeout`, and python then ends on its own 30 s timeout.
    let mut server = Command::new("timeout")
        .args(["30", "python3", "-c", &script])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !fake.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let refusing = b.dir.join("refusing.conflist");
    let c = conflist_json("vireo", &fake, &b.dir.join("ipam"), None);
    std::fs::write(&refusing, c.to_string()).unwrap();
    let (ok, e) = b.driver_with(
        &refusing,
        &["add", "r0", &b.netns_path(0), "eth0", "default", "r0"],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(!ok);
    assert_eq!(e["code"], 100, "{e}");
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .contains("refused for the test"),
        "{e}"
    );
    b.assert_nothing_left("agent refusing");
    assert!(
        !b.pods[0].must(&["ip", "-o", "link"]).contains("eth0"),
        "the pod's end must go with the veth"
    );

    // The agent not running: 11, nothing made.
    b.stop_agent();
    let (ok, e) = b.add("bad3", 0, "x");
    assert!(!ok);
    assert_eq!(e["code"], 11, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("not running"), "{e}");
    b.assert_nothing_left("agent not running");
}

#[test]
fn a_thousand_add_del_cycles_leave_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let b = Bed::new("cc", 1);
    let t = Instant::now();
    let (ok, r) = b.driver(&["cycles", "1000", &b.netns_path(0), "eth0"]);
    let took = t.elapsed();
    assert!(ok, "cycles: {r}\n{}", b.agent().log_text());
    eprintln!("1000 ADD/DEL cycles through libcni: {r} (wall {took:?})");
    assert!(
        took < Duration::from_secs(120),
        "1000 cycles took {took:?} (about 50 s on an idle 2-core machine)"
    );
    b.assert_nothing_left("after 1000 cycles");
    assert_eq!(b.endpoints(), Vec::<Value>::new());
    assert_eq!(b.agent().status()["interfaces"], json!([]));
}
