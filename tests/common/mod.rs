//! Shared harness for the end-to-end tests: namespaces, pods and agents that clean up after
//! themselves, also when a test fails.
//!
//! Every name starts with a prefix unique to the test process and test (`vt<pid><tag>`), and
//! every object made is deleted on drop. Nothing in the root namespace is touched.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const VIREO: &str = env!("CARGO_BIN_EXE_vireo");

mod sandbox;
#[allow(unused_imports)] // not every test binary drives the sandbox
pub use sandbox::{netns_of, Background, Sandbox};

pub fn helper(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/helpers")
        .join(name)
}

/// The external tools every end-to-end test (and the sandbox it may start) calls.
const TOOLS: &[&str] = &["ip", "ethtool", "ping", "python3", "timeout"];

/// Panics, naming what is missing, unless this process can run the end-to-end tests: root, a
/// kernel that lets it use BPF (the agent attaches XDP programs), and [`TOOLS`] and `extra`
/// (a test's own tools) on `PATH`. A test that cannot run fails; it never passes by skipping.
pub fn require_capabilities(extra: &[&str]) {
    let uid0 = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    assert!(
        uid0,
        "the end-to-end tests need root (uid 0): they create network namespaces and attach XDP \
         programs; run them as root (`bash scripts/test.sh` does)"
    );
    if let Err(e) = bpf_usable() {
        panic!(
            "the end-to-end tests need BPF: creating a BPF map failed ({e}); the kernel must \
             have BPF enabled and this process needs CAP_BPF"
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = TOOLS
        .iter()
        .chain(extra)
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    assert!(
        missing.is_empty(),
        "the end-to-end tests need {} on PATH (`bash scripts/setup.sh` installs them)",
        missing.join(", ")
    );
}

/// Whether the kernel lets this process use BPF: creates (and closes) a one-entry array map.
fn bpf_usable() -> std::io::Result<()> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries; the rest
    // zero.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[2 /* BPF_MAP_TYPE_ARRAY */, 4, 4, 1]);
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size passed; the kernel only reads
    // it. The returned descriptor is ours and closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, /* BPF_MAP_CREATE */
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just gave us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Runs a command, returning its output (never panics on a non-zero status).
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn must(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A network namespace, deleted on drop (with everything in it).
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = run(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        run(&v)
    }
    pub fn must(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        must(&v)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}

pub struct Pod {
    pub ns: Netns,
    pub ip: String,
    pub mac: String,
    /// Host-side veth, in the node namespace.
    pub host_if: String,
}

/// A node namespace with pods attached by veth pairs, as a CNI plugin would make them: /32
/// address, a route to the gateway, tx checksum offload off on the pod side (AF_XDP copy mode
/// loses CHECKSUM_PARTIAL).
pub struct Node {
    pub prefix: String,
    pub gateway: String,
    pub pods: Vec<Pod>,
    /// An uplink veth (node side name) whose peer sits in a "remote" namespace of its own.
    pub uplink: Option<(String, Netns)>,
    // Dropped last: deleting the node namespace removes the host-side veths.
    pub ns: Netns,
}

pub fn prefix(tag: &str) -> String {
    format!("vt{}{tag}", std::process::id() % 10000)
}

impl Node {
    pub fn new(tag: &str, pods: usize) -> Node {
        let prefix = prefix(tag);
        let ns = Netns::new(format!("{prefix}-node"));
        let mut n = Node {
            prefix,
            gateway: "10.244.1.1".into(),
            pods: Vec::new(),
            uplink: None,
            ns,
        };
        for _ in 0..pods {
            n.add_pod();
        }
        n
    }

    pub fn add_pod(&mut self) -> &Pod {
        let i = self.pods.len();
        let pns = Netns::new(format!("{}-p{i}", self.prefix));
        let host_if = format!("{}h{i}", self.prefix);
        must(&[
            "ip", "link", "add", &host_if, "netns", &self.ns.0, "type", "veth", "peer", "name",
            "eth0", "netns", &pns.0,
        ]);
        must(&["ip", "-n", &self.ns.0, "link", "set", &host_if, "up"]);
        let ip = format!("10.244.1.{}", 10 + i);
        must(&[
            "ip",
            "-n",
            &pns.0,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &pns.0, "link", "set", "eth0", "up"]);
        must(&[
            "ip",
            "-n",
            &pns.0,
            "route",
            "add",
            &self.gateway,
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        must(&[
            "ip",
            "-n",
            &pns.0,
            "route",
            "add",
            "default",
            "via",
            &self.gateway,
            "dev",
            "eth0",
        ]);
        pns.must(&["ethtool", "-K", "eth0", "tx", "off"]);
        let mac = pns
            .must(&["cat", "/sys/class/net/eth0/address"])
            .trim()
            .to_string();
        self.pods.push(Pod {
            ns: pns,
            ip,
            mac,
            host_if,
        });
        self.pods.last().expect("just pushed")
    }

    /// Adds an uplink: node side 192.168.77.2/24, remote side 192.168.77.1 in its own
    /// namespace (never connected to anything real).
    pub fn add_uplink(&mut self) {
        let remote = Netns::new(format!("{}-r", self.prefix));
        let name = format!("{}up", self.prefix);
        must(&[
            "ip", "link", "add", &name, "netns", &self.ns.0, "type", "veth", "peer", "name",
            "eth0", "netns", &remote.0,
        ]);
        must(&[
            "ip",
            "-n",
            &self.ns.0,
            "addr",
            "add",
            "192.168.77.2/24",
            "dev",
            &name,
        ]);
        must(&["ip", "-n", &self.ns.0, "link", "set", &name, "up"]);
        must(&[
            "ip",
            "-n",
            &remote.0,
            "addr",
            "add",
            "192.168.77.1/24",
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &remote.0, "link", "set", "eth0", "up"]);
        self.uplink = Some((name, remote));
    }

    pub fn api(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/{}.sock", self.prefix))
    }

    /// Agent configuration with the first `n` pods.
    pub fn config(&self, n: usize) -> PathBuf {
        let mut y = format!(
            "node: {p}\ngateways: [{g}]\napi_socket: {a}\nworkers: [{{cores: [1]}}]\ninterfaces:\n",
            p = self.prefix,
            g = self.gateway,
            a = self.api().display()
        );
        if let Some((up, _)) = &self.uplink {
            y += &format!("  - {{name: {up}, role: uplink}}\n");
        }
        for p in &self.pods[..n] {
            y += &format!(
                "  - {{name: {}, role: pod, endpoint: {{ip: {}, mac: \"{}\"}}}}\n",
                p.host_if, p.ip, p.mac
            );
        }
        let path = PathBuf::from(format!("/tmp/{}.yaml", self.prefix));
        std::fs::write(&path, y).expect("writing config");
        path
    }

    /// Starts an agent in the node namespace and waits for its API.
    pub fn agent(&self, pods: usize) -> Agent {
        let cfg = self.config(pods);
        self.agent_with(&cfg)
    }

    /// Starts an agent in the node namespace with the configuration file `cfg` (its
    /// `api_socket` must be [`Node::api`]) and waits for its API.
    pub fn agent_with(&self, cfg: &Path) -> Agent {
        let log = PathBuf::from(format!("/tmp/{}.log", self.prefix));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.0, VIREO, "agent", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("starting the agent");
        let a = Agent {
            child: Some(child),
            api: self.api(),
            log,
        };
        a.wait_ready();
        a
    }

    pub fn ping(&self, from: usize, to: usize, count: u32) -> bool {
        let c = count.to_string();
        self.pods[from]
            .ns
            .exec(&[
                "ping",
                "-c",
                &c,
                "-i",
                "0.1",
                "-W",
                "1",
                "-q",
                &self.pods[to].ip,
            ])
            .status
            .success()
    }

    /// Streams `size` bytes over TCP from pod `from` to pod `to` and checks them.
    pub fn tcp_transfer(&self, from: usize, to: usize, size: usize) -> Result<String, String> {
        let script = helper("tcpcheck.py");
        let s = script.to_str().expect("utf-8 path");
        let size = size.to_string();
        let dst = &self.pods[to];
        let mut server = Command::new("ip")
            .args([
                "netns", "exec", &dst.ns.0, "timeout", "90", "python3", s, "server", &dst.ip,
                "5001", &size,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        // Wait for "listening".
        let mut first = [0u8; 10];
        use std::io::Read;
        let _ = server.stdout.as_mut().map(|o| o.read_exact(&mut first));
        let client = self.pods[from].ns.exec(&[
            "timeout", "90", "python3", s, "client", &dst.ip, "5001", &size,
        ]);
        let out = server.wait_with_output().map_err(|e| e.to_string())?;
        let text = format!(
            "{}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&client.stderr)
        );
        if out.status.success() && client.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// XDP programs attached to interfaces in the node namespace.
    pub fn xdp_attached(&self) -> usize {
        let o = self.ns.must(&["ip", "-d", "link", "show"]);
        o.lines().filter(|l| l.contains("prog/xdp")).count()
    }
}

/// A running agent; killed on drop.
pub struct Agent {
    child: Option<Child>,
    pub api: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    fn wait_ready(&self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if self.try_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("agent did not come up; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_status(&self) -> Option<Value> {
        let o = run(&[VIREO, "status", "--json", "--api", self.api.to_str()?]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("vireo status failed; log:\n{}", self.log_text()))
    }

    pub fn drop_count(&self, reason: &str) -> u64 {
        self.status()["counters"]["drops"][reason]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let mut v = vec![VIREO];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--api", self.api.to_str().expect("utf-8")]);
        run(&v)
    }

    /// `vireo endpoint add` for `p`; panics with the agent's message when it fails.
    pub fn endpoint_add(&self, p: &Pod) {
        let o = self.cli(&[
            "endpoint", "add", "--ifname", &p.host_if, "--ip", &p.ip, "--mac", &p.mac,
        ]);
        assert!(
            o.status.success(),
            "endpoint add {}: {}",
            p.host_if,
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `vireo endpoint del` for `p`; panics with the agent's message when it fails.
    pub fn endpoint_del(&self, p: &Pod) {
        let o = self.cli(&["endpoint", "del", "--ifname", &p.host_if]);
        assert!(
            o.status.success(),
            "endpoint del {}: {}",
            p.host_if,
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = run(&["kill", "-TERM", &c.id().to_string()]);
        wait_or_kill(&mut c, Duration::from_secs(10))
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        let mut c = self.child.take().expect("running");
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn wait_or_kill(c: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = c.kill();
            return c.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = run(&["kill", "-TERM", &c.id().to_string()]);
            wait_or_kill(&mut c, Duration::from_secs(5));
        }
    }
}

/// `curl` arguments for a GET of `url` that prints the body, a newline and the status code.
pub fn curl_get(url: &str) -> Vec<String> {
    [
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        url,
    ]
    .map(String::from)
    .to_vec()
}

/// (status code, body) from the output of a [`curl_get`] command (0: no answer).
pub fn curl_answer(stdout: &[u8]) -> (u16, String) {
    let out = String::from_utf8_lossy(stdout);
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
