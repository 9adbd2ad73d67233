//! `vireo connectivity test`: like `cilium connectivity test`, a matrix of checks over the
//! sandbox. Each check sends real traffic between pods and proves it went through Vireo: by the
//! agents' counters, and for cross-node traffic by a capture on the underlay that must show
//! VXLAN carrying the sender's identity as its VNI.
//!
//! The `service-*` checks run against the default sandbox's Services (`echo`, `echo-np`,
//! `echo-sticky`, `empty`) and its `app: echo` pods, which run `vireo probe echo-server` for the
//! length of each check so that every answer names the backend that gave it.
//!
//! The `policy-*` checks apply policies (and, for outside clients, a NodePort Service) for their
//! own length and remove them at the end, also when they fail: to the default sandbox's pods of
//! namespace `policy-test` (a server and three clients) and, for `policy-netpol-model`, to its
//! pods a, b, c of namespaces x, y, z. Each proves with real connections that something is
//! allowed and something denied (no answer within a second), that the node enforcing the
//! denial counted it as `policy_denied` (and no other node did), and that everything connects
//! again once the policy is gone.
//!
//! `VIREO_CONNECTIVITY_CHECKS=service,pmtu` runs only the checks whose names contain one of the
//! comma-separated words.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::api;
use crate::sandbox::{
    self, NodeState, PodState, State, ECHO_HTTP_PORT, ECHO_UDP_PORT, UNDERLAY_CLIENT, UNDERLAY_MTU,
};

/// A check: it passes with a detail line or fails with the reason.
type CheckFn = fn(&Env) -> Result<String>;

/// One check's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

pub fn test(sandbox: &str, as_json: bool) -> Result<bool> {
    let st = State::load(sandbox)?;
    let env = Env::new(&st)?;
    let checks: Vec<(&str, CheckFn)> = vec![
        ("pod-to-pod/same-node/icmp", Env::same_node_icmp),
        ("pod-to-pod/cross-node/icmp", Env::cross_node_icmp),
        ("pod-to-pod/cross-node/tcp", Env::cross_node_tcp),
        ("pod-to-pod/cross-node/udp", Env::cross_node_udp),
        ("pod-to-pod/cross-node/replies", Env::cross_node_replies),
        ("pod-to-pod/same-node/tcp-64MiB", Env::same_node_64mib),
        ("pod-to-pod/cross-node/tcp-64MiB", Env::cross_node_64mib),
        ("pod-to-pod/cross-node/pmtu", Env::pmtu),
        ("conntrack/tcp-survives-agent-reload", Env::survives_reload),
        ("service-clusterip-spread", Env::service_clusterip_spread),
        ("service-reply-source", Env::service_reply_source),
        ("service-nodeport-underlay", Env::service_nodeport_underlay),
        ("service-affinity", Env::service_affinity),
        ("service-backend-removal", Env::service_backend_removal),
        ("service-no-backend", Env::service_no_backend),
        ("policy-l3-allow", Env::policy_l3_allow),
        ("policy-l4-port", Env::policy_l4_port),
        ("policy-deny", Env::policy_deny),
        ("policy-cidr", Env::policy_cidr),
        ("policy-entity", Env::policy_entity),
        ("policy-netpol-model", Env::policy_netpol_model),
        // Last: it leaves node-1's TCP table full of half-open flows for their SYN lifetime.
        ("conntrack/syn-flood-at-table-limit", Env::syn_flood),
    ];
    let only: Vec<String> = std::env::var("VIREO_CONNECTIVITY_CHECKS")
        .unwrap_or_default()
        .split(',')
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .collect();
    let mut results = Vec::new();
    for (name, f) in checks {
        if !only.is_empty() && !only.iter().any(|w| name.contains(w.as_str())) {
            continue;
        }
        let t = Instant::now();
        let r = f(&env);
        let (passed, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        if !as_json {
            eprintln!(
                "{} {name} ({:.1}s)",
                if passed { "✅" } else { "❌" },
                t.elapsed().as_secs_f64()
            );
        }
        results.push(Check {
            name: name.into(),
            passed,
            detail,
        });
    }
    let passed = results.iter().filter(|c| c.passed).count();
    let failed = results.len() - passed;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"checks": results, "passed": passed, "failed": failed})
            )?
        );
    } else {
        println!("\n{:<36} {:<6} DETAIL", "CHECK", "RESULT");
        for c in &results {
            println!(
                "{:<36} {:<6} {}",
                c.name,
                if c.passed { "pass" } else { "FAIL" },
                c.detail
            );
        }
        println!("\n{passed} passed, {failed} failed");
    }
    Ok(failed == 0)
}

struct Env {
    st: State,
    /// Client and a server on the first node, a server on the second.
    a: PodState,
    b: PodState,
    c: PodState,
    /// Service backends: the pods labelled `app: echo`.
    echo: Vec<PodState>,
    exe: PathBuf,
}

/// Agent counters of one node.
fn counters(n: &NodeState) -> Result<Value> {
    let s = api::call(&n.api, &api::Request::Status)?;
    Ok(s["counters"].clone())
}

fn delta(before: &Value, after: &Value, path: &str) -> u64 {
    let g = |v: &Value| v.pointer(path).and_then(Value::as_u64).unwrap_or(0);
    g(after).saturating_sub(g(before))
}

fn identity_of(n: &NodeState, ip: Ipv4Addr) -> Result<u32> {
    let eps = api::call(
        &n.api,
        &api::Request::MapGet {
            map: "endpoints".into(),
        },
    )?;
    eps.as_array()
        .into_iter()
        .flatten()
        .find(|e| e["ip"] == ip.to_string())
        .and_then(|e| e["identity"].as_u64())
        .map(|i| i as u32)
        .ok_or_else(|| anyhow!("no endpoint {ip} on {}", n.name))
}

impl Env {
    fn new(st: &State) -> Result<Env> {
        if st.nodes.len() < 2 {
            bail!("the connectivity test needs a sandbox of at least 2 nodes");
        }
        let on = |node: &str| {
            st.pods
                .iter()
                .filter(|p| p.node == node)
                .cloned()
                .collect::<Vec<_>>()
        };
        let (n1, n2) = (on(&st.nodes[0].name), on(&st.nodes[1].name));
        if n1.len() < 2 || n2.is_empty() {
            bail!(
                "the connectivity test needs 2 pods on {} and 1 on {}",
                st.nodes[0].name,
                st.nodes[1].name
            );
        }
        Ok(Env {
            st: st.clone(),
            a: n1[0].clone(),
            b: n1[1].clone(),
            c: n2[0].clone(),
            echo: st
                .pods
                .iter()
                .filter(|p| p.labels.get("app").map(String::as_str) == Some("echo"))
                .cloned()
                .collect(),
            exe: std::env::current_exe()?,
        })
    }

    fn node(&self, p: &PodState) -> &NodeState {
        self.st
            .nodes
            .iter()
            .find(|n| n.name == p.node)
            .expect("pod's node is in the state")
    }

    fn exec(&self, p: &PodState, args: &[&str]) -> Result<Output> {
        self.exec_in(&p.netns, args)
    }

    /// Runs a command in one of the sandbox's namespaces (a pod, a node, the underlay).
    fn exec_in(&self, netns: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", netns])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in {netns}"))
    }

    /// Starts a probe server in a pod and waits until it listens.
    fn spawn_probe(&self, p: &PodState, args: &[&str]) -> Result<ProbeServer> {
        self.spawn_probe_in(&p.netns, args)
    }

    /// Starts a probe server in a namespace and waits until it listens.
    fn spawn_probe_in(&self, netns: &str, args: &[&str]) -> Result<ProbeServer> {
        use std::io::{BufRead, BufReader, Read};
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(&self.exe)
            .arg("probe")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if !line.contains("listening") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("probe server did not start: {line}");
        }
        // Keep reading, so the server never writes into a closed pipe.
        let rest = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Ok(ProbeServer { child, rest })
    }

    fn probe(&self, p: &PodState, args: &[&str]) -> Result<String> {
        self.probe_in(&p.netns, args)
    }

    /// Runs `vireo probe ARGS` in a namespace to its end; what it printed, or its error.
    fn probe_in(&self, netns: &str, args: &[&str]) -> Result<String> {
        let mut v = vec![self.exe.to_str().unwrap_or("vireo"), "probe"];
        v.extend_from_slice(args);
        let o = self.exec_in(netns, &v)?;
        if !o.status.success() {
            bail!("{}", String::from_utf8_lossy(&o.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    fn ping(&self, from: &PodState, to: &PodState, count: u32) -> Result<()> {
        let o = self.exec(
            from,
            &[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.1",
                "-W",
                "2",
                "-q",
                &to.ip.to_string(),
            ],
        )?;
        if !o.status.success() {
            bail!(
                "ping {} -> {}: {}",
                from.name,
                to.name,
                String::from_utf8_lossy(&o.stdout).trim()
            );
        }
        Ok(())
    }

    /// Counters of both nodes before and after `f`, so the check can prove the traffic crossed
    /// the agents.
    fn through_agents<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, [u64; 2])> {
        let (n1, n2) = (&self.st.nodes[0], &self.st.nodes[1]);
        let (b1, b2) = (counters(n1)?, counters(n2)?);
        let r = f()?;
        let (a1, a2) = (counters(n1)?, counters(n2)?);
        Ok((r, [delta(&b1, &a1, "/tx"), delta(&b2, &a2, "/tx")]))
    }

    fn same_node_icmp(&self) -> Result<String> {
        let ((), [tx1, _]) = self.through_agents(|| self.ping(&self.a, &self.b, 5))?;
        if tx1 < 10 {
            bail!("node-1's agent sent only {tx1} frames for 5 pings and 5 replies");
        }
        Ok(format!(
            "{} -> {}: 5/5 replies, {tx1} frames forwarded by {}",
            self.a.name, self.b.name, self.a.node
        ))
    }

    /// Runs `f` while capturing VXLAN on the first node's port of the underlay bridge (frames
    /// the bridge forwards between ports never pass the bridge device itself); returns what the
    /// capture saw.
    fn captured<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, Vec<VxlanSeen>)> {
        let file = self
            .st
            .dir
            .join(format!("capture-{}.pcap", std::process::id()));
        let mut cap = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.st.underlay,
                "timeout",
                "60",
                "tcpdump",
                "--immediate-mode",
                "-Z",
                "root",
                "-i",
                "n1",
                "-n",
                "-U",
                "-s",
                "128",
                "-c",
                "20000",
                "-w",
            ])
            .arg(&file)
            .arg("udp and port 8472")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump on the underlay (is it installed? scripts/setup.sh)")?;
        // Wait until tcpdump says it is listening (it writes its file before that).
        let err = cap.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::{BufRead, BufReader};
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = cap.kill();
            let _ = cap.wait();
            bail!("tcpdump did not start on the underlay");
        }
        let r = f();
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &cap.id().to_string()])
            .status();
        let _ = cap.wait();
        let seen = read_vxlan_pcap(&file);
        let _ = std::fs::remove_file(&file);
        Ok((r?, seen?))
    }

    /// The capture must show VXLAN from src's node to dst's node with src's identity as VNI,
    /// carrying src → dst.
    fn expect_vni(&self, seen: &[VxlanSeen], src: &PodState, dst: &PodState) -> Result<u32> {
        let id = identity_of(self.node(src), src.ip)?;
        let (sn, dn) = (self.node(src).ip, self.node(dst).ip);
        let n = seen
            .iter()
            .filter(|v| {
                v.outer_src == sn
                    && v.outer_dst == dn
                    && v.inner_src == src.ip
                    && v.inner_dst == dst.ip
            })
            .map(|v| {
                if v.vni != id {
                    Err(anyhow!(
                        "VXLAN {} -> {} carried VNI {} instead of identity {id}",
                        src.name,
                        dst.name,
                        v.vni
                    ))
                } else {
                    Ok(())
                }
            })
            .collect::<Result<Vec<()>>>()?
            .len();
        if n == 0 {
            bail!(
                "no VXLAN {} -> {} seen on the underlay ({} VXLAN packets captured)",
                src.name,
                dst.name,
                seen.len()
            );
        }
        Ok(id)
    }

    fn cross_node_icmp(&self) -> Result<String> {
        let (((), [tx1, tx2]), seen) =
            self.captured(|| self.through_agents(|| self.ping(&self.a, &self.c, 5)))?;
        let id = self.expect_vni(&seen, &self.a, &self.c)?;
        if tx1 < 10 || tx2 < 10 {
            bail!("agents forwarded {tx1} and {tx2} frames for 5 pings and 5 replies");
        }
        Ok(format!("{} -> {}: 5/5 replies; underlay saw VXLAN VNI {id}; agents forwarded {tx1}+{tx2} frames", self.a.name, self.c.name))
    }

    fn tcp(&self, from: &PodState, to: &PodState, bytes: u64) -> Result<String> {
        let listen = format!("{}:5201", to.ip);
        let v = self.tcp_in(&from.netns, &to.netns, &listen, bytes, 120)?;
        Ok(format!(
            "{} MiB intact at {:.0} Mbit/s",
            bytes >> 20,
            v["mbit_s"].as_f64().unwrap_or(0.0)
        ))
    }

    /// Sends `bytes` of the test stream from a `tcp-client` in `client_ns` to a `tcp-server` on
    /// `listen` in `server_ns` (each allowed `timeout` seconds); both must succeed. What the
    /// client printed.
    fn tcp_in(
        &self,
        client_ns: &str,
        server_ns: &str,
        listen: &str,
        bytes: u64,
        timeout: u64,
    ) -> Result<Value> {
        let (bytes, timeout) = (bytes.to_string(), timeout.to_string());
        let server = self.spawn_probe_in(
            server_ns,
            &[
                "tcp-server",
                "--listen",
                listen,
                "--bytes",
                &bytes,
                "--timeout",
                &timeout,
            ],
        )?;
        let client = self.probe_in(
            client_ns,
            &[
                "tcp-client",
                "--to",
                listen,
                "--bytes",
                &bytes,
                "--timeout",
                &timeout,
            ],
        );
        let (ok, report) = server.finish();
        match client {
            Ok(c) if ok => Ok(serde_json::from_str(&c).unwrap_or_default()),
            Ok(_) => bail!("receiver: {report}"),
            Err(e) => bail!("sender: {e:#}; receiver: {report}"),
        }
    }

    fn cross_node_tcp(&self) -> Result<String> {
        let ((d, [tx1, tx2]), seen) =
            self.captured(|| self.through_agents(|| self.tcp(&self.a, &self.c, 1 << 20)))?;
        self.expect_vni(&seen, &self.a, &self.c)?;
        self.expect_vni(&seen, &self.c, &self.a)?;
        if tx1 < 700 || tx2 < 100 {
            bail!("agents forwarded only {tx1} and {tx2} frames for 1 MiB");
        }
        Ok(format!(
            "{} -> {}: {d}; VXLAN both ways",
            self.a.name, self.c.name
        ))
    }

    fn udp(&self, from: &PodState, to: &PodState, count: u32) -> Result<()> {
        let listen = format!("{}:5301", to.ip);
        let server = self.spawn_probe(
            to,
            &[
                "udp-echo",
                "--listen",
                &listen,
                "--count",
                &count.to_string(),
                "--timeout",
                "20",
            ],
        )?;
        let r = self.probe(
            from,
            &["udp-client", "--to", &listen, "--count", &count.to_string()],
        );
        let _ = server.finish();
        r.map(|_| ())
    }

    fn cross_node_udp(&self) -> Result<String> {
        let (((), [tx1, tx2]), seen) =
            self.captured(|| self.through_agents(|| self.udp(&self.a, &self.c, 50)))?;
        self.expect_vni(&seen, &self.a, &self.c)?;
        if tx1 < 100 || tx2 < 100 {
            bail!("agents forwarded {tx1} and {tx2} frames for 50 datagrams and 50 echoes");
        }
        Ok(format!(
            "{} -> {}: 50/50 datagrams echoed",
            self.a.name, self.c.name
        ))
    }

    /// Replies go back through the tunnel with the replier's identity.
    fn cross_node_replies(&self) -> Result<String> {
        let ((), seen) = self.captured(|| self.udp(&self.c, &self.a, 20))?;
        let id_c = self.expect_vni(&seen, &self.c, &self.a)?;
        let id_a = self.expect_vni(&seen, &self.a, &self.c)?;
        if id_a == id_c {
            bail!("{} and {} share identity {id_a}: give them different labels to tell sender from replier", self.a.name, self.c.name);
        }
        Ok(format!(
            "{} -> {} (VNI {id_c}) answered {} -> {} (VNI {id_a}): 20/20",
            self.c.name, self.a.name, self.a.name, self.c.name
        ))
    }

    fn same_node_64mib(&self) -> Result<String> {
        let (d, [tx1, _]) = self.through_agents(|| self.tcp(&self.a, &self.b, 64 << 20))?;
        if tx1 < (64 << 20) / 1500 {
            bail!("only {tx1} frames through the agent for 64 MiB");
        }
        Ok(format!("{} -> {}: {d}", self.a.name, self.b.name))
    }

    fn cross_node_64mib(&self) -> Result<String> {
        let (d, [tx1, tx2]) = self.through_agents(|| self.tcp(&self.a, &self.c, 64 << 20))?;
        if tx1 < (64 << 20) / 1500 || tx2 < 1000 {
            bail!("only {tx1}/{tx2} frames through the agents for 64 MiB");
        }
        Ok(format!("{} -> {}: {d}", self.a.name, self.c.name))
    }

    /// Starts a slow TCP transfer A -> C (4 MiB over about 3 s); returns the server and the
    /// client, still running.
    fn slow_transfer(&self, port: u16) -> Result<(ProbeServer, Child)> {
        let listen = format!("{}:{port}", self.c.ip);
        let bytes = (4u64 << 20).to_string();
        let server = self.spawn_probe(
            &self.c,
            &[
                "tcp-server",
                "--listen",
                &listen,
                "--bytes",
                &bytes,
                "--timeout",
                "60",
            ],
        )?;
        let client = Command::new("ip")
            .args(["netns", "exec", &self.a.netns])
            .arg(&self.exe)
            .args([
                "probe",
                "tcp-client",
                "--to",
                &listen,
                "--bytes",
                &bytes,
                "--pace-ms",
                "45",
                "--timeout",
                "60",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(400));
        Ok((server, client))
    }

    /// Waits for a slow transfer; the bytes must all arrive intact.
    fn finish_transfer(server: ProbeServer, client: Child) -> Result<String> {
        let c = client.wait_with_output()?;
        let (ok, report) = server.finish();
        if !ok || !c.status.success() {
            bail!(
                "the connection broke: receiver {report}; sender {}",
                String::from_utf8_lossy(&c.stderr).trim()
            );
        }
        Ok(report)
    }

    /// The flow's conntrack entry on node-1 (egress), by its server port.
    fn ct_entry(&self, port: u16) -> Result<Value> {
        let ct = api::call(
            &self.st.nodes[0].api,
            &api::Request::MapGet { map: "ct".into() },
        )?;
        ct["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| {
                e["dst"] == self.c.ip.to_string()
                    && e["dport"] == port
                    && e["src"] == self.a.ip.to_string()
            })
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "no conntrack entry {} -> {}:{port} on {}",
                    self.a.ip,
                    self.c.ip,
                    self.st.nodes[0].name
                )
            })
    }

    /// A TCP connection stays up while both agents reload their configuration, and keeps its
    /// conntrack entry.
    fn survives_reload(&self) -> Result<String> {
        let port = 5401;
        let (server, client) = self.slow_transfer(port)?;
        let before = self.ct_entry(port)?;
        for n in &self.st.nodes {
            api::call(&n.api, &api::Request::Reload)
                .with_context(|| format!("reloading {}", n.name))?;
        }
        std::thread::sleep(Duration::from_millis(300));
        let after = self.ct_entry(port)?;
        let report = Self::finish_transfer(server, client)?;
        let (p0, p1) = (
            before["packets"].as_u64().unwrap_or(0),
            after["packets"].as_u64().unwrap_or(0),
        );
        if p1 <= p0 {
            bail!("the conntrack entry stopped counting across the reload ({p0} -> {p1} packets)");
        }
        Ok(format!(
            "4 MiB over ~3 s intact across 2 reloads; entry {} -> {} packets ({}); {report}",
            p0, p1, after["state"]
        ))
    }

    /// A SYN flood from another pod fills node-1's table to its limit; the established
    /// connection is untouched and the excess is counted as ct_full.
    fn syn_flood(&self) -> Result<String> {
        let n1 = &self.st.nodes[0];
        let max = api::call(&n1.api, &api::Request::MapGet { map: "ct".into() })?["max_tcp"]
            .as_u64()
            .unwrap_or(0);
        let before = counters(n1)?;
        let port = 5402;
        let (server, client) = self.slow_transfer(port)?;
        let count = (max + 2000).to_string();
        let flood = self.probe(
            &self.b,
            &[
                "syn-flood",
                "--from",
                &self.b.ip.to_string(),
                "--to",
                &format!("{}:9", self.c.ip),
                "--count",
                &count,
            ],
        );
        let ct = api::call(&n1.api, &api::Request::MapGet { map: "ct".into() })?;
        Self::finish_transfer(server, client)?;
        flood?;
        let tcp = ct["tcp"].as_u64().unwrap_or(0);
        let full = delta(&before, &counters(n1)?, "/drops/ct_full");
        if tcp != max {
            bail!("the table held {tcp} TCP entries during the flood, not its limit {max}");
        }
        if full < 1000 {
            bail!("only {full} ct_full drops for {count} SYNs over a {max}-entry table");
        }
        Ok(format!("{count} SYNs: table at its limit ({tcp}/{max}), {full} counted ct_full; the established 4 MiB transfer intact"))
    }

    /// A pod whose MTU is too big for the tunnel learns the path MTU from Vireo's ICMP.
    fn pmtu(&self) -> Result<String> {
        let a = &self.a;
        let inner = UNDERLAY_MTU - 50;
        let restore = inner.to_string();
        let n1 = &self.st.nodes[0];
        let before = counters(n1)?;
        let run = || -> Result<String> {
            self.exec(
                a,
                &[
                    "ip",
                    "link",
                    "set",
                    "eth0",
                    "mtu",
                    &UNDERLAY_MTU.to_string(),
                ],
            )?;
            self.exec(a, &["ip", "route", "flush", "cache"])?;
            let big = (UNDERLAY_MTU - 28).to_string();
            let o = self.exec(
                a,
                &[
                    "ping",
                    "-M",
                    "do",
                    "-s",
                    &big,
                    "-c",
                    "2",
                    "-i",
                    "0.3",
                    "-W",
                    "1",
                    &self.c.ip.to_string(),
                ],
            )?;
            if o.status.success() {
                bail!(
                    "a {}-byte DF packet crossed a {inner}-byte tunnel",
                    UNDERLAY_MTU
                );
            }
            let route = self.exec(a, &["ip", "route", "get", &self.c.ip.to_string()])?;
            let route = String::from_utf8_lossy(&route.stdout).to_string();
            if !route.contains(&format!("mtu {inner}")) {
                bail!("the pod did not learn PMTU {inner}: {}", route.trim());
            }
            let fits = (inner - 28).to_string();
            let o = self.exec(
                a,
                &[
                    "ping",
                    "-M",
                    "do",
                    "-s",
                    &fits,
                    "-c",
                    "2",
                    "-i",
                    "0.3",
                    "-W",
                    "2",
                    &self.c.ip.to_string(),
                ],
            )?;
            if !o.status.success() {
                bail!("a {inner}-byte DF packet did not cross the tunnel");
            }
            Ok(route.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        let r = run();
        let _ = self.exec(a, &["ip", "link", "set", "eth0", "mtu", &restore]);
        let _ = self.exec(a, &["ip", "route", "flush", "cache"]);
        let r = r?;
        let icmp = delta(&before, &counters(n1)?, "/drops/frag_needed");
        if icmp == 0 {
            bail!("the agent counted no frag_needed");
        }
        Ok(format!(
            "ICMP frag-needed x{icmp} from the agent; pod route: {r}"
        ))
    }
}

/// One answer of `vireo probe whoami`: the backend that answered (and the client address it
/// saw, and for UDP the reply's source address), or the error.
#[derive(Debug, Clone, Default)]
struct Answer {
    backend: Option<Ipv4Addr>,
    peer: String,
    from: String,
    error: Option<String>,
    ms: f64,
}

fn parse_answers(out: &str) -> Result<Vec<Answer>> {
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("whoami: {out}"))?;
    let s = |a: &Value, k: &str| a[k].as_str().unwrap_or("").to_string();
    Ok(v["answers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| Answer {
            backend: a["backend"].as_str().and_then(|b| b.parse().ok()),
            peer: s(a, "peer"),
            from: s(a, "from"),
            error: a["error"].as_str().map(String::from),
            ms: a["ms"].as_f64().unwrap_or(0.0),
        })
        .collect())
}

/// How many times each backend appears (answers, connections).
fn tally(backends: impl IntoIterator<Item = Ipv4Addr>) -> BTreeMap<Ipv4Addr, usize> {
    let mut m = BTreeMap::new();
    for b in backends {
        *m.entry(b).or_insert(0) += 1;
    }
    m
}

/// The errors among the answers, counted: `refused x3, timeout x1`.
fn errors(answers: &[Answer]) -> Option<String> {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for e in answers.iter().filter_map(|a| a.error.as_deref()) {
        *m.entry(e).or_insert(0) += 1;
    }
    (!m.is_empty()).then(|| {
        m.iter()
            .map(|(e, n)| format!("{e} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Polls `check` on each of `nodes` every 100 ms until no node is wrong, at most 8 s after
/// `since`; returns the time since `since`. `check` describes what is wrong with a node (the
/// first wrong node's description goes into the error); an error of `check` ends the wait at
/// once (the agent answers, or it is down: no reason to wait).
fn wait_nodes(
    nodes: &[NodeState],
    since: Instant,
    check: impl Fn(&NodeState) -> Result<Option<String>>,
) -> Result<Duration> {
    loop {
        let Some(bad) = nodes
            .iter()
            .find_map(|n| check(n).transpose())
            .transpose()?
        else {
            return Ok(since.elapsed());
        };
        if since.elapsed() > Duration::from_secs(8) {
            bail!("after 8 s, {bad}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The backend IPs of one service port in a node's Maglev table (`map get maglev`); `None`
/// when the node has no table for it.
fn maglev_backends(
    n: &NodeState,
    svc: &str,
    port: u16,
    proto: &str,
) -> Result<Option<Vec<Ipv4Addr>>> {
    let v = api::call(
        &n.api,
        &api::Request::MapGet {
            map: "maglev".into(),
        },
    )
    .with_context(|| format!("{}: map get maglev", n.name))?;
    let Some(t) = v.as_array().into_iter().flatten().find(|t| {
        t["service"] == svc
            && t["port"].as_u64() == Some(u64::from(port))
            && t["protocol"]
                .as_str()
                .is_some_and(|p| p.eq_ignore_ascii_case(proto))
    }) else {
        return Ok(None);
    };
    let mut ips: Vec<Ipv4Addr> = t["slots"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .filter_map(|(b, _)| b.parse::<SocketAddr>().ok())
        .filter_map(|a| match a.ip() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    ips.sort();
    Ok(Some(ips))
}

/// The service backends' echo servers, stopped when dropped.
struct Backends(Vec<ProbeServer>);

impl Drop for Backends {
    fn drop(&mut self) {
        for s in self.0.drain(..) {
            let _ = s.stop();
        }
    }
}

/// A long-lived `probe tcp-client --whoami --pause-at`, its output lines as they come; killed
/// when dropped.
struct LongConn {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    backend: Option<Ipv4Addr>,
}

impl LongConn {
    /// The next line it prints that has `key`, within `wait`.
    fn expect(&self, key: &str, wait: Duration) -> Result<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| anyhow!("no {key:?} from the client within {wait:?}"))?;
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if !v[key].is_null() {
                return Ok(v);
            }
        }
    }

    /// Lets a paused client send the rest, and waits (at most `wait`) for it to finish.
    fn resume_and_finish(mut self, wait: Duration) -> Result<Value> {
        use std::io::Read;
        if let Some(mut i) = self.child.stdin.take() {
            let _ = i.write_all(b"go\n");
        }
        let deadline = Instant::now() + wait;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                bail!("the client did not finish within {wait:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        if !status.success() {
            bail!("{}", err.trim());
        }
        self.expect("verdict", Duration::from_secs(1))
    }
}

impl Drop for LongConn {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Service checks.
impl Env {
    /// A Service of the default namespace, as the sandbox passed it to the agents.
    fn service(&self, name: &str) -> Result<&Value> {
        self.st
            .objects
            .iter()
            .find(|o| {
                o["kind"] == "Service"
                    && o["metadata"]["name"] == name
                    && o["metadata"]["namespace"].as_str().unwrap_or("default") == "default"
            })
            .ok_or_else(|| {
                anyhow!(
                    "the sandbox has no Service default/{name} (the default sandbox makes it: \
                     `vireo sandbox up` without --manifests)"
                )
            })
    }

    /// The service port of `proto` on the cluster IP, and its node port if any.
    fn frontend(&self, name: &str, proto: &str) -> Result<(SocketAddr, Option<u16>)> {
        let s = self.service(name)?;
        let ip: Ipv4Addr = s["spec"]["clusterIP"]
            .as_str()
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| anyhow!("Service default/{name} has no clusterIP"))?;
        let p = s["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["protocol"].as_str().unwrap_or("TCP") == proto)
            .ok_or_else(|| anyhow!("Service default/{name} has no {proto} port"))?;
        let port = p["port"].as_u64().unwrap_or(0) as u16;
        let node_port = p["nodePort"].as_u64().map(|n| n as u16);
        Ok((SocketAddr::from((ip, port)), node_port))
    }

    /// Starts an echo server on every `app: echo` pod (TCP 8080 and UDP 8081 on its own
    /// address), serving at most 60 s.
    fn start_backends(&self) -> Result<Backends> {
        if self.echo.len() < 2 {
            bail!("the service checks need at least 2 pods labelled app=echo (the default sandbox has them)");
        }
        let mut b = Backends(Vec::new());
        for p in &self.echo {
            let (tcp, udp) = (
                format!("{}:{ECHO_HTTP_PORT}", p.ip),
                format!("{}:{ECHO_UDP_PORT}", p.ip),
            );
            let s = self.spawn_probe(
                p,
                &[
                    "echo-server",
                    "--tcp",
                    &tcp,
                    "--udp",
                    &udp,
                    "--timeout",
                    "60",
                ],
            )?;
            b.0.push(s);
        }
        Ok(b)
    }

    /// The echo pod with this address.
    fn echo_pod(&self, ip: Ipv4Addr) -> Option<&PodState> {
        self.echo.iter().find(|p| p.ip == ip)
    }

    /// `echo-node-1-1 x7, echo-node-2-1 x5`
    fn names(&self, t: &BTreeMap<Ipv4Addr, usize>) -> String {
        t.iter()
            .map(|(ip, n)| {
                let who = self
                    .echo_pod(*ip)
                    .map(|p| p.name.clone())
                    .unwrap_or_else(|| ip.to_string());
                format!("{who} x{n}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs `vireo probe whoami` in a namespace.
    fn whoami(
        &self,
        netns: &str,
        to: SocketAddr,
        count: u32,
        extra: &[&str],
    ) -> Result<Vec<Answer>> {
        let (to, count) = (to.to_string(), count.to_string());
        let mut args = vec!["whoami", "--to", &to, "--count", &count];
        args.extend_from_slice(extra);
        let out = self.probe_in(netns, &args).context("whoami")?;
        parse_answers(&out)
    }

    /// Every answer came from an echo pod; otherwise the errors.
    fn all_answered(&self, answers: &[Answer], what: &str) -> Result<BTreeMap<Ipv4Addr, usize>> {
        let t = tally(answers.iter().filter_map(|a| a.backend));
        if let Some(e) = errors(answers) {
            bail!(
                "{} of {} {what} failed ({e}); answered: {}",
                answers.iter().filter(|a| a.error.is_some()).count(),
                answers.len(),
                self.names(&t)
            );
        }
        if let Some(ip) = t.keys().find(|ip| self.echo_pod(**ip).is_none()) {
            bail!("{what}: answered by {ip}, which is no echo pod");
        }
        Ok(t)
    }

    /// Waits (at most 8 s) until every node's Maglev table of a service port satisfies `ok`;
    /// `want` says what that means, for the error.
    fn wait_maglev(
        &self,
        svc: &str,
        port: u16,
        proto: &str,
        want: &str,
        ok: impl Fn(&[Ipv4Addr]) -> bool,
    ) -> Result<Duration> {
        wait_nodes(&self.st.nodes, Instant::now(), |n| {
            Ok(match maglev_backends(n, svc, port, proto)? {
                Some(b) if ok(&b) => None,
                Some(b) => Some(format!(
                    "{}'s Maglev table for {svc} {port}/{proto} has backends {b:?} (want: {want})",
                    n.name
                )),
                None => Some(format!(
                    "{} has no Maglev table for {svc} {port}/{proto} (want: {want})",
                    n.name
                )),
            })
        })
    }

    /// Every node publishes every echo pod as a backend of `svc`.
    fn wait_all_backends(&self, svc: &str, port: u16, proto: &str) -> Result<()> {
        let mut all: Vec<Ipv4Addr> = self.echo.iter().map(|p| p.ip).collect();
        all.sort();
        self.wait_maglev(svc, port, proto, &format!("all echo pods {all:?}"), |b| {
            b == all
        })
        .map(|_| ())
    }

    /// N connections from one pod to echo's cluster IP land on backends on both nodes, and the
    /// backends see the client's own address.
    fn service_clusterip_spread(&self) -> Result<String> {
        let _b = self.start_backends()?;
        let (vip, _) = self.frontend("echo", "TCP")?;
        self.wait_all_backends("default/echo", vip.port(), "TCP")?;
        let n = 24;
        let answers = self.whoami(&self.a.netns, vip, n, &[])?;
        let t = self.all_answered(&answers, &format!("TCP connections to {vip}"))?;
        if t.len() < 2 {
            bail!(
                "{n} connections all landed on one backend: {}",
                self.names(&t)
            );
        }
        for node in self.st.nodes.iter().take(2) {
            if !t.keys().any(|ip| node.pod_cidr.contains(ip)) {
                bail!("no connection landed on {}: {}", node.name, self.names(&t));
            }
        }
        let client = self.a.ip.to_string();
        if let Some(a) = answers
            .iter()
            .find(|a| a.peer.split(':').next() != Some(client.as_str()))
        {
            bail!(
                "a backend saw the client as {} instead of {client} (cluster IP traffic keeps the client's address)",
                a.peer
            );
        }
        Ok(format!(
            "{n}/{n} from {} to {vip} on {} backends over both nodes: {}; backends saw {client}",
            self.a.name,
            t.len(),
            self.names(&t)
        ))
    }

    /// UDP replies come from the cluster IP (reverse NAT), as recvfrom on an unconnected socket
    /// shows.
    fn service_reply_source(&self) -> Result<String> {
        let _b = self.start_backends()?;
        let (vip, _) = self.frontend("echo", "UDP")?;
        self.wait_all_backends("default/echo", vip.port(), "UDP")?;
        let n = 8;
        let answers = self.whoami(&self.a.netns, vip, n, &["--udp"])?;
        let t = self.all_answered(&answers, &format!("UDP requests to {vip}"))?;
        let want = vip.to_string();
        if let Some(a) = answers.iter().find(|a| a.from != want) {
            bail!(
                "a reply from {} came from {} instead of the service address {want}",
                a.backend.map(|b| b.to_string()).unwrap_or_default(),
                a.from
            );
        }
        Ok(format!(
            "{n}/{n} UDP replies from {want} (recvfrom), answered by {}",
            self.names(&t)
        ))
    }

    /// From the underlay (outside the nodes), node-1's NodePort reaches the backends; node-1's
    /// own traffic (ping, TCP to a port its host listens on) still works.
    fn service_nodeport_underlay(&self) -> Result<String> {
        let _b = self.start_backends()?;
        let (vip, node_port) = self.frontend("echo-np", "TCP")?;
        let np = node_port.ok_or_else(|| anyhow!("Service default/echo-np has no nodePort"))?;
        self.wait_all_backends("default/echo-np", vip.port(), "TCP")?;
        let n1 = &self.st.nodes[0];
        let ul = &self.st.underlay;
        let to = SocketAddr::from((n1.ip, np));
        let n = 8;
        let answers = self.whoami(ul, to, n, &[])?;
        let t = self.all_answered(
            &answers,
            &format!("TCP connections from {UNDERLAY_CLIENT} to {to}"),
        )?;
        let mut peers: Vec<&str> = answers
            .iter()
            .filter_map(|a| a.peer.split(':').next())
            .collect();
        peers.sort();
        peers.dedup();
        // The node's own traffic stays in its kernel.
        let ping = self.exec_in(
            ul,
            &[
                "ping",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                "-q",
                &n1.ip.to_string(),
            ],
        )?;
        if !ping.status.success() {
            bail!(
                "ping {} from the underlay failed (NodePort answered {})",
                n1.ip,
                self.names(&t)
            );
        }
        let listen = format!("{}:5501", n1.ip);
        self.tcp_in(ul, &n1.netns, &listen, 64 << 10, 10)
            .with_context(|| format!("TCP from the underlay to {}'s host at {listen}", n1.name))?;
        Ok(format!(
            "{n}/{n} from {UNDERLAY_CLIENT} to {to}: {} (backends saw {}); {}'s host: ping and TCP :5501 (64 KiB) fine",
            self.names(&t),
            peers.join(", "),
            n1.name
        ))
    }

    /// sessionAffinity ClientIP: one client's connections to echo-sticky all land on one
    /// backend, while the same to echo spread.
    fn service_affinity(&self) -> Result<String> {
        let _b = self.start_backends()?;
        let (sticky, _) = self.frontend("echo-sticky", "TCP")?;
        let (plain, _) = self.frontend("echo", "TCP")?;
        self.wait_all_backends("default/echo-sticky", sticky.port(), "TCP")?;
        self.wait_all_backends("default/echo", plain.port(), "TCP")?;
        let n = 12;
        let s = self.whoami(&self.a.netns, sticky, n, &[])?;
        let ts = self.all_answered(&s, &format!("TCP connections to {sticky}"))?;
        if ts.len() != 1 {
            bail!(
                "{n} connections to echo-sticky ({sticky}) spread over {}",
                self.names(&ts)
            );
        }
        let p = self.whoami(&self.a.netns, plain, n, &[])?;
        let tp = self.all_answered(&p, &format!("TCP connections to {plain}"))?;
        if tp.len() < 2 {
            bail!(
                "{n} connections to echo ({plain}) all landed on {}",
                self.names(&tp)
            );
        }
        Ok(format!(
            "{n}/{n} to echo-sticky on {}; {n}/{n} to echo spread: {}",
            self.names(&ts),
            self.names(&tp)
        ))
    }

    /// Starts a long-lived paced connection to `to` from pod a; it pauses after 1 MiB.
    fn long_conn(&self, to: SocketAddr) -> Result<LongConn> {
        use std::io::{BufRead, BufReader};
        let to = to.to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.a.netns])
            .arg(&self.exe)
            .args([
                "probe",
                "tcp-client",
                "--to",
                &to,
                "--bytes",
                &(2u64 << 20).to_string(),
                "--pause-at",
                &(1u64 << 20).to_string(),
                "--pace-ms",
                "20",
                "--whoami",
                "--timeout",
                "20",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut c = LongConn {
            child,
            lines: rx,
            backend: None,
        };
        let v = c.expect("backend", Duration::from_secs(5))?;
        c.backend = v["backend"].as_str().and_then(|b| b.parse().ok());
        Ok(c)
    }

    /// A backend pod is removed while connections to every backend are open: the connections
    /// to the others carry on intact, new connections never reach it. The pod is back at the
    /// end.
    fn service_backend_removal(&self) -> Result<String> {
        let _b = self.start_backends()?;
        let (vip, _) = self.frontend("echo", "TCP")?;
        self.wait_all_backends("default/echo", vip.port(), "TCP")?;
        let r = self.backend_removal(vip);
        // Put the pod back whatever happened, and wait for the agents to take it again.
        let restored = sandbox::publish(&self.st, &[])
            .and_then(|()| self.wait_all_backends("default/echo", vip.port(), "TCP"))
            .and_then(|()| sandbox::wait_agents(&self.st));
        let d = r?;
        restored.context("restoring the removed backend pod")?;
        Ok(format!("{d}; pod restored"))
    }

    fn backend_removal(&self, vip: SocketAddr) -> Result<String> {
        let n = 8;
        let conns = (0..n)
            .map(|_| self.long_conn(vip))
            .collect::<Result<Vec<_>>>()?;
        for c in &conns {
            c.expect("paused", Duration::from_secs(10))?;
        }
        let t = tally(conns.iter().filter_map(|c| c.backend));
        if t.len() < 2 {
            bail!("{n} connections to {vip} all landed on {}", self.names(&t));
        }
        let gone_ip = conns[0]
            .backend
            .ok_or_else(|| anyhow!("no backend named"))?;
        let gone = self
            .echo_pod(gone_ip)
            .ok_or_else(|| anyhow!("connection answered by {gone_ip}, which is no echo pod"))?
            .clone();
        let spread = self.names(&t);
        sandbox::publish(&self.st, &[&gone])?;
        let took = self.wait_maglev(
            "default/echo",
            vip.port(),
            "TCP",
            &format!("without {gone_ip}"),
            |b| !b.is_empty() && !b.contains(&gone_ip),
        )?;
        // New connections never reach the removed pod.
        let m = 16;
        let answers = self.whoami(&self.a.netns, vip, m, &[])?;
        let tn = self.all_answered(&answers, &format!("new connections to {vip}"))?;
        if tn.contains_key(&gone_ip) {
            bail!(
                "a new connection reached the removed backend {}: {}",
                gone.name,
                self.names(&tn)
            );
        }
        // The connections to the other backends carry on, every byte intact.
        let (mut kept, mut dropped) = (0, 0);
        for c in conns {
            if c.backend == Some(gone_ip) {
                dropped += 1;
                continue; // killed when dropped
            }
            let b = c.backend;
            let v = c
                .resume_and_finish(Duration::from_secs(10))
                .with_context(|| {
                    format!(
                        "a connection to backend {b:?} broke after {} was removed",
                        gone.name
                    )
                })?;
            if v["verdict"] != format!("ok {}", 2u64 << 20) {
                bail!("backend {b:?}: {}", v["verdict"]);
            }
            kept += 1;
        }
        Ok(format!(
            "{n} connections ({spread}); removed {} (published in {:.1}s); {kept} connections to the others 2 MiB intact; {m}/{m} new ones: {}; {dropped} to {} abandoned",
            gone.name,
            took.as_secs_f64(),
            self.names(&tn),
            gone.name
        ))
    }

    /// A service without backends answers with ICMP port unreachable: TCP connect is refused at
    /// once, a connected UDP socket gets ECONNREFUSED; the agents count no_backend.
    fn service_no_backend(&self) -> Result<String> {
        let (tcp, _) = self.frontend("empty", "TCP")?;
        let (udp, _) = self.frontend("empty", "UDP")?;
        let sum = |c: &[Value]| -> u64 {
            c.iter()
                .map(|v| {
                    v.pointer("/drops/no_backend")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                })
                .sum()
        };
        let all = || -> Result<Vec<Value>> { self.st.nodes.iter().map(counters).collect() };
        let before = sum(&all()?);
        let n = 3;
        let t = self.whoami(&self.a.netns, tcp, n, &["--wait-ms", "2000"])?;
        let u = self.whoami(
            &self.a.netns,
            udp,
            n,
            &["--udp", "--connect", "--wait-ms", "2000"],
        )?;
        for (what, to, answers) in [("TCP connect", tcp, &t), ("UDP", udp, &u)] {
            if let Some(a) = answers
                .iter()
                .find(|a| a.error.as_deref() != Some("refused") || a.ms > 1000.0)
            {
                bail!(
                    "{what} to {to}: {} after {:.0} ms, not refused at once",
                    a.error
                        .clone()
                        .unwrap_or_else(|| format!("answered by {:?}", a.backend)),
                    a.ms
                );
            }
        }
        let want = u64::from(2 * n);
        let deadline = Instant::now() + Duration::from_secs(2);
        let counted = loop {
            let d = sum(&all()?).saturating_sub(before);
            if d >= want || Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if counted < want {
            bail!("the agents counted {counted} no_backend drops for {want} refused attempts");
        }
        let slowest = t.iter().chain(&u).map(|a| a.ms).fold(0.0, f64::max);
        Ok(format!(
            "{n}/{n} TCP connects to {tcp} and {n}/{n} UDP to {udp} refused (slowest {slowest:.0} ms); no_backend +{counted}"
        ))
    }
}

/// How long a policy check's connection attempt may take: a denied flow's SYNs are dropped, so
/// its attempt ends in a timeout after this.
const POLICY_WAIT_MS: u64 = 1000;
/// The NodePort of the Service `policy-test/policy-np` that `policy-cidr` and `policy-entity`
/// add while they run (externalTrafficPolicy Local: the server sees the outside client's own
/// address).
const POLICY_NODE_PORT: u16 = 30090;
const POLICY_NP_CLUSTER_IP: &str = "10.96.0.20";

/// One connection attempt of a policy check and what the policies in force must make of it.
#[derive(Debug, Clone)]
struct Attempt {
    /// Who connects: a pod (`client-other`, `x/a`) or the underlay client.
    from: String,
    /// Its address.
    src: Ipv4Addr,
    netns: String,
    to: SocketAddr,
    /// The pod that answers when the flow is allowed.
    server: Ipv4Addr,
    /// The port it answers on (a NodePort's target port).
    dport: u16,
    /// Where it connects to, for people: `server:8080`, `node-2:30090 -> server:8080`.
    dest: String,
    allowed: bool,
    /// The node whose agent drops the flow when it is denied: the destination's for ingress
    /// policy, the source's for egress.
    enforcer: String,
}

impl Attempt {
    fn label(&self) -> String {
        format!("{} -> {}", self.from, self.dest)
    }
}

/// What a set of attempts showed: the allowed and the denied ones (as labels) and the
/// `policy_denied` counts of the nodes.
struct Reached {
    allowed: Vec<String>,
    denied: Vec<String>,
    counted: String,
}

impl Reached {
    /// `allowed: A, B; denied: C (no answer in 1000 ms); policy_denied node-2 +1, node-1 +0`,
    /// with counts instead of lists when they are long.
    fn brief(&self) -> String {
        let list = |v: &[String]| {
            if v.len() <= 4 {
                v.join(", ")
            } else {
                format!("{} flows", v.len())
            }
        };
        let mut parts = Vec::new();
        if !self.allowed.is_empty() {
            parts.push(format!("allowed {}", list(&self.allowed)));
        }
        if !self.denied.is_empty() {
            parts.push(format!(
                "denied {} (no answer in {POLICY_WAIT_MS} ms)",
                list(&self.denied)
            ));
        }
        parts.push(self.counted.clone());
        parts.join("; ")
    }
}

/// The `policy_denied` count among a node's drop counters (`counters(n)["drops"]`).
fn policy_denied_of(drops: &Value) -> u64 {
    drops["policy_denied"].as_u64().unwrap_or(0)
}

/// A short name of a sandbox pod: `server` in the policy namespace, `x/a` elsewhere.
fn short(p: &PodState) -> String {
    if p.namespace == sandbox::POLICY_NAMESPACE {
        p.name.clone()
    } else {
        format!("{}/{}", p.namespace, p.name)
    }
}

/// The policies among `objects`, as `vireo policy get` names them: (kind, `namespace/name` or
/// the name of a cluster-wide policy).
fn policy_names(objects: &[Value]) -> BTreeSet<(String, String)> {
    objects
        .iter()
        .filter_map(|o| {
            let kind = o["kind"].as_str()?;
            let name = o["metadata"]["name"].as_str()?;
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
            match kind {
                "NetworkPolicy" | "CiliumNetworkPolicy" => {
                    Some((kind.to_string(), format!("{ns}/{name}")))
                }
                "CiliumClusterwideNetworkPolicy" => Some((kind.to_string(), name.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// A CiliumNetworkPolicy in the policy checks' namespace.
fn cnp(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": sandbox::POLICY_NAMESPACE},
        "spec": spec,
    })
}

/// A Kubernetes NetworkPolicy.
fn netpol(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// The policy server's ingress policy: `spec` with its endpoint selector.
fn server_policy(name: &str, mut spec: Value) -> Value {
    spec["endpointSelector"] = json!({"matchLabels": {"app": "policy-server"}});
    cnp(name, spec)
}

/// One case of the Kubernetes network-policy model: its policies and the truth table upstream's
/// e2e test (`test/e2e/network/netpol/network_policy.go`) expects.
struct ModelCase {
    /// Upstream's name for it.
    name: &'static str,
    policies: Vec<Value>,
    /// Whether `from` may connect to `to` (namespace, pod) on TCP 80.
    allowed: fn((&str, &str), (&str, &str)) -> bool,
    /// Whether a denied flow from `from` is dropped by its own egress policy (at the source
    /// node) rather than the destination's ingress policy.
    egress_denied: fn((&str, &str)) -> bool,
}

fn model_cases() -> Vec<ModelCase> {
    let all_pods = json!({});
    let ns_label = vireo_control::cluster::NAMESPACE_NAME_LABEL;
    vec![
        // "should support a 'default-deny-ingress' policy": nothing reaches x.
        ModelCase {
            name: "default-deny-ingress",
            policies: vec![netpol(
                "x",
                "deny-ingress",
                json!({"podSelector": all_pods, "policyTypes": ["Ingress"]}),
            )],
            allowed: |_, to| to.0 != "x",
            egress_denied: |_| false,
        },
        // "should enforce policy to allow traffic only from a different namespace, based on
        // NamespaceSelector": x takes only y.
        ModelCase {
            name: "allow-from-namespace-y",
            policies: vec![netpol(
                "x",
                "allow-client-a-via-ns-selector",
                json!({"podSelector": all_pods, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {ns_label: "y"}}}]}]}),
            )],
            allowed: |from, to| to.0 != "x" || from.0 == "y",
            egress_denied: |_| false,
        },
        // "should enforce policy to allow traffic from pods within server namespace based on
        // PodSelector": x/a takes only x/b.
        ModelCase {
            name: "x-a-allows-x-b",
            policies: vec![netpol(
                "x",
                "x-a-allows-x-b",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            allowed: |from, to| to != ("x", "a") || from == ("x", "b"),
            egress_denied: |_| false,
        },
        // "should enforce policy based on PodSelector and NamespaceSelector": x/a takes pod b
        // of the namespaces other than x (both selectors in one peer: both must match).
        ModelCase {
            name: "allow-ns-y-z-pod-b",
            policies: vec![netpol(
                "x",
                "allow-ns-y-z-pod-b-c",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{
                    "podSelector": {"matchLabels": {"pod": "b"}},
                    "namespaceSelector": {"matchExpressions": [
                        {"key": ns_label, "operator": "NotIn", "values": ["x"]}]},
                }]}]}),
            )],
            allowed: |from, to| to != ("x", "a") || (from.1 == "b" && from.0 != "x"),
            egress_denied: |_| false,
        },
        // "should support a 'default-deny-all' policy": nothing reaches x, nothing leaves it
        // (dropped at the source's node, by its egress policy).
        ModelCase {
            name: "default-deny-all",
            policies: vec![netpol(
                "x",
                "deny-all",
                json!({"podSelector": all_pods, "policyTypes": ["Ingress", "Egress"]}),
            )],
            allowed: |from, to| from.0 != "x" && to.0 != "x",
            egress_denied: |from| from.0 == "x",
        },
    ]
}

/// Policy checks: each applies its policies (and objects) at the start and removes them at the
/// end, also when it fails; each proves with real connections that something is allowed and
/// something else denied, and that the right agent counted the denials as `policy_denied`.
impl Env {
    /// A pod of the default sandbox's policy namespace.
    fn policy_pod(&self, name: &str) -> Result<&PodState> {
        self.st
            .pod(&format!("{}/{name}", sandbox::POLICY_NAMESPACE))
            .context(
                "the policy checks' pods come with the default sandbox \
                 (`vireo sandbox up` without --manifests)",
            )
    }

    /// The `policy_denied` counter of every node.
    fn policy_denied(&self) -> Result<Vec<u64>> {
        Ok(self.drops()?.iter().map(policy_denied_of).collect())
    }

    /// The drop counters of every node.
    fn drops(&self) -> Result<Vec<Value>> {
        self.st
            .nodes
            .iter()
            .map(|n| Ok(counters(n)?["drops"].clone()))
            .collect()
    }

    /// The policies an agent has in force (`vireo policy get`).
    fn policies_in_force(&self, n: &NodeState) -> Result<BTreeSet<(String, String)>> {
        let v = api::call(&n.api, &api::Request::PolicyGet)
            .with_context(|| format!("{}: policy get", n.name))?;
        Ok(v["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let kind = p["kind"].as_str()?;
                // A cluster-wide policy of several specs is listed once per spec.
                let name = p["name"].as_str()?.split(" specs[").next()?;
                Some((kind.to_string(), name.to_string()))
            })
            .collect())
    }

    /// Publishes the sandbox's own objects plus `extra` (policies, Services) and waits (at most
    /// 8 s) until every agent has exactly their policies in force. `extra` empty: the sandbox
    /// as it was. The wait goes by the policies' names: a changed policy needs a new name.
    fn publish_objects(&self, extra: &[Value]) -> Result<Duration> {
        let t = Instant::now();
        let mut st = self.st.clone();
        st.objects.extend(extra.iter().cloned());
        sandbox::publish(&st, &[])?;
        let want = policy_names(&st.objects);
        wait_nodes(&self.st.nodes, t, |n| {
            let have = self.policies_in_force(n)?;
            Ok((have != want)
                .then(|| format!("{} has policies {have:?} in force, want {want:?}", n.name)))
        })
    }

    /// Runs a policy check's body, then restores the sandbox's own objects whatever happened,
    /// and waits until the agents have dropped the check's policies.
    fn policy_scope<T>(&self, body: impl FnOnce() -> Result<T>) -> Result<T> {
        let r = body();
        let restored = self.publish_objects(&[]);
        let d = r?;
        restored.context("removing the check's policies")?;
        Ok(d)
    }

    /// Echo servers (`vireo probe echo-server`) on `ports` of each pod, for at most `secs`.
    fn policy_servers(&self, pods: &[&PodState], ports: &[u16], secs: u64) -> Result<Backends> {
        let mut b = Backends(Vec::new());
        let secs = secs.to_string();
        for p in pods {
            for port in ports {
                let tcp = format!("{}:{port}", p.ip);
                b.0.push(self.spawn_probe(p, &["echo-server", "--tcp", &tcp, "--timeout", &secs])?);
            }
        }
        Ok(b)
    }

    /// An attempt from a pod to a pod, judged by ingress policy (the server's node drops it).
    fn attempt(&self, from: &PodState, to: &PodState, port: u16, allowed: bool) -> Attempt {
        Attempt {
            from: short(from),
            src: from.ip,
            netns: from.netns.clone(),
            to: SocketAddr::from((to.ip, port)),
            server: to.ip,
            dport: port,
            dest: format!("{}:{port}", short(to)),
            allowed,
            enforcer: to.node.clone(),
        }
    }

    /// An attempt from the underlay client (`world`) to the server's node's NodePort
    /// `policy-np`.
    fn world_attempt(&self, server: &PodState, allowed: bool) -> Attempt {
        let node = self.node(server);
        Attempt {
            from: format!("{UNDERLAY_CLIENT} (world)"),
            src: UNDERLAY_CLIENT,
            netns: self.st.underlay.clone(),
            to: SocketAddr::from((node.ip, POLICY_NODE_PORT)),
            server: server.ip,
            dport: ECHO_HTTP_PORT,
            dest: format!(
                "{}:{POLICY_NODE_PORT} (NodePort, Local) -> {}:{ECHO_HTTP_PORT}",
                node.name,
                short(server)
            ),
            allowed,
            enforcer: server.node.clone(),
        }
    }

    /// Makes the attempts at once (one `vireo probe reach` per client namespace); their
    /// answers, in order.
    fn reach_all(&self, attempts: &[&Attempt]) -> Result<Vec<Answer>> {
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, a) in attempts.iter().enumerate() {
            groups.entry(a.netns.as_str()).or_default().push(i);
        }
        let wait = POLICY_WAIT_MS.to_string();
        let mut answers: Vec<Answer> = vec![Answer::default(); attempts.len()];
        std::thread::scope(|s| -> Result<()> {
            let runs: Vec<_> = groups
                .iter()
                .map(|(netns, idx)| {
                    let mut args = vec!["reach".to_string()];
                    for &i in idx {
                        args.extend(["--to".to_string(), attempts[i].to.to_string()]);
                    }
                    args.extend(["--wait-ms".to_string(), wait.clone()]);
                    let netns = netns.to_string();
                    s.spawn(move || {
                        let a: Vec<&str> = args.iter().map(String::as_str).collect();
                        let out = self
                            .probe_in(&netns, &a)
                            .with_context(|| format!("probe reach in {netns}"))?;
                        parse_answers(&out)
                    })
                })
                .collect();
            for ((_, idx), run) in groups.iter().zip(runs) {
                let got = run
                    .join()
                    .map_err(|_| anyhow!("a probe thread panicked"))??;
                if got.len() != idx.len() {
                    bail!(
                        "probe reach answered {} of {} attempts",
                        got.len(),
                        idx.len()
                    );
                }
                for (&i, a) in idx.iter().zip(got) {
                    answers[i] = a;
                }
            }
            Ok(())
        })?;
        Ok(answers)
    }

    /// Makes the attempts, at once, and checks each against what it should get: an allowed one
    /// is answered by its server, a denied one gets no answer at all (not a refusal: a policy
    /// drops silently). Each attempt is made once: an allowed attempt that got no answer fails
    /// the check. The denials must be counted as `policy_denied` by the node that enforces
    /// them, and no other node may count any.
    fn expect_reach(&self, attempts: &[Attempt]) -> Result<Reached> {
        let drops_before = self.drops()?;
        let before: Vec<u64> = drops_before.iter().map(policy_denied_of).collect();
        self.drop_events()?;
        let answers = self.reach_all(&attempts.iter().collect::<Vec<_>>())?;
        let (mut allowed, mut denied, mut wrong) = (Vec::new(), Vec::new(), Vec::new());
        for (a, ans) in attempts.iter().zip(&answers) {
            let label = a.label();
            match (a.allowed, ans.backend, ans.error.as_deref()) {
                (true, Some(b), _) if b == a.server => allowed.push(label),
                (false, None, Some("timeout")) => denied.push(label),
                (want, Some(b), _) => wrong.push(format!(
                    "{label} answered by {b} in {:.0} ms{}",
                    ans.ms,
                    if want {
                        format!(", not by {}", a.server)
                    } else {
                        " although the policy denies it".into()
                    }
                )),
                (want, None, e) => wrong.push(format!(
                    "{label}: {} after {:.0} ms{}",
                    e.unwrap_or("no answer"),
                    ans.ms,
                    if want {
                        " although the policy allows it"
                    } else {
                        " (a policy drop is silent: want a timeout)"
                    }
                )),
            }
        }
        // The denials, counted by the nodes that enforce them (and by no other).
        let want: Vec<u64> = self
            .st
            .nodes
            .iter()
            .map(|n| {
                attempts
                    .iter()
                    .filter(|a| !a.allowed && a.enforcer == n.name)
                    .count() as u64
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        let got = loop {
            let now = self.policy_denied()?;
            let got: Vec<u64> = now
                .iter()
                .zip(&before)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            let enough = got.iter().zip(&want).all(|(g, w)| g >= w);
            if enough || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let told = self.agents_tell(attempts, &mut wrong)?;
        let counted = format!(
            "policy_denied {}; {told}",
            self.st
                .nodes
                .iter()
                .zip(&got)
                .map(|(n, g)| format!("{} +{g}", n.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Miscounts first: they stay in view when the list of wrong flows is cut short.
        let mut miscounted = Vec::new();
        for ((n, g), w) in self.st.nodes.iter().zip(&got).zip(&want) {
            if g < w {
                miscounted.push(format!(
                    "{} counted {g} policy_denied drops for {w} denied flows it enforces",
                    n.name
                ));
            } else if *w == 0 && *g > 0 {
                miscounted.push(format!(
                    "{} counted {g} policy_denied drops but enforces none of the denied flows",
                    n.name
                ));
            }
        }
        miscounted.append(&mut wrong);
        let mut wrong = miscounted;
        if !wrong.is_empty() {
            let list = |v: &[String]| match v.len() {
                0 => "none".to_string(),
                1..=6 => v.join(", "),
                n => format!("{n} flows"),
            };
            let n = wrong.len();
            if n > 12 {
                wrong.truncate(10);
                wrong.push(format!("and {} more", n - 10));
            }
            // Other drops the agents counted meanwhile, for the diagnosis.
            let after = self.drops()?;
            let other: Vec<String> = self
                .st
                .nodes
                .iter()
                .zip(drops_before.iter().zip(&after))
                .flat_map(|(n, (b, a))| {
                    a.as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(r, _)| r.as_str() != "policy_denied")
                        .filter_map(move |(r, v)| {
                            let d = v.as_u64()?.saturating_sub(b[r].as_u64().unwrap_or(0));
                            (d > 0).then(|| format!("{} {r} +{d}", n.name))
                        })
                })
                .collect();
            bail!(
                "{}; (allowed as expected: {}; denied as expected: {}; {counted}; other drops: {})",
                wrong.join("; "),
                list(&allowed),
                list(&denied),
                if other.is_empty() {
                    "none".to_string()
                } else {
                    other.join(", ")
                }
            );
        }
        Ok(Reached {
            allowed,
            denied,
            counted,
        })
    }

    /// The drop events (`vireo monitor --type drop`) of every node since the last call; the
    /// first call turns the agents' collection on.
    fn drop_events(&self) -> Result<Vec<Vec<Value>>> {
        self.st
            .nodes
            .iter()
            .map(|n| {
                let v = api::call(&n.api, &api::Request::Monitor { max: 4096 })
                    .with_context(|| format!("{}: monitor", n.name))?;
                Ok(v["events"].as_array().cloned().unwrap_or_default())
            })
            .collect()
    }

    /// What the operator's tools say of the attempts, checked against what the traffic did:
    /// the enforcing agent's `vireo policy trace` gives each attempt's verdict, and its
    /// `vireo monitor --type drop` shows each denied flow as a `policy_denied` event with the
    /// deciding rule (or the default deny). Disagreements go to `wrong`.
    fn agents_tell(&self, attempts: &[Attempt], wrong: &mut Vec<String>) -> Result<String> {
        let events = self.drop_events()?;
        let mut shown = 0;
        for a in attempts {
            let (i, n) = self
                .st
                .nodes
                .iter()
                .enumerate()
                .find(|(_, n)| n.name == a.enforcer)
                .with_context(|| format!("no node {}", a.enforcer))?;
            let trace = api::Request::PolicyTrace {
                src: crate::policy::EndpointSpec::Ip { ip: a.src },
                dst: crate::policy::EndpointSpec::Ip { ip: a.server },
                dport: crate::policy::PortProto {
                    port: a.dport,
                    proto: crate::policy::TCP,
                },
            };
            let t =
                api::call(&n.api, &trace).with_context(|| format!("{}: policy trace", n.name))?;
            let want = if a.allowed { "allowed" } else { "denied" };
            if t["verdict"] != want {
                wrong.push(format!(
                    "{}: {}'s policy trace says {} (rules {})",
                    a.label(),
                    n.name,
                    t["verdict"],
                    t["rules"]
                ));
            }
            if a.allowed {
                continue;
            }
            let (src, dst) = (format!("{}:", a.src), format!("{}:{}", a.server, a.dport));
            let event = events[i].iter().find(|e| {
                e["reason"] == "policy_denied"
                    && e["src"].as_str().is_some_and(|s| s.starts_with(&src))
                    && e["dst"] == dst.as_str()
            });
            // The fast path's rule is one the trace names, or the default deny when it names
            // none.
            let traced: Vec<&str> = t["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match event.map(|e| (e, e["rule"].as_str())) {
                Some((_, Some(r)))
                    if traced.contains(&r) || (traced.is_empty() && r == "default deny") =>
                {
                    shown += 1
                }
                Some((e, _)) => wrong.push(format!(
                    "{}: {}'s drop event names another rule than the trace ({traced:?}): {e}",
                    a.label(),
                    n.name
                )),
                None => wrong.push(format!(
                    "{}: {}'s monitor shows no policy_denied event from {src}* to {dst}",
                    a.label(),
                    n.name,
                )),
            }
        }
        Ok(format!(
            "policy trace agrees on {}, monitor shows {shown} drop{} by the traced rule",
            attempts.len(),
            if shown == 1 { "" } else { "s" }
        ))
    }

    /// The policy server and its three clients, with echo servers on 8080 and 8081.
    fn policy_setup(&self) -> Result<([&PodState; 4], Backends)> {
        let pods = [
            self.policy_pod("server")?,
            self.policy_pod("client-allowed")?,
            self.policy_pod("client-other")?,
            self.policy_pod("client-local")?,
        ];
        let servers = self.policy_servers(&pods[..1], &[ECHO_HTTP_PORT, ECHO_UDP_PORT], 30)?;
        Ok((pods, servers))
    }

    /// Before a policy (and after it is gone): every attempt gets through.
    fn all_reach(&self, attempts: &[Attempt], when: &str) -> Result<()> {
        let open: Vec<Attempt> = attempts
            .iter()
            .map(|a| Attempt {
                allowed: true,
                ..a.clone()
            })
            .collect();
        self.expect_reach(&open)
            .with_context(|| format!("{when}, without the check's policy"))
            .map(|_| ())
    }

    /// The shape of the simple policy checks: every attempt connects without the policy; with
    /// it, the allowed ones connect and the denied ones are dropped (and counted); without it
    /// again, all connect.
    fn policy_check(&self, attempts: &[Attempt], policy: Value, what: &str) -> Result<String> {
        self.all_reach(attempts, "before")?;
        let d = self.policy_scope(|| {
            let took = self.publish_objects(&[policy])?;
            let r = self.expect_reach(attempts)?;
            Ok(format!(
                "{what} (in force in {:.1}s): {}",
                took.as_secs_f64(),
                r.brief()
            ))
        })?;
        self.all_reach(attempts, "after the policy was removed")?;
        Ok(format!(
            "{d}; all {} connect before and after",
            attempts.len()
        ))
    }

    /// `fromEndpoints`: only `app: client-allowed` reaches the server (cross-node); the others,
    /// on the first node and beside the server, are denied by default deny.
    fn policy_l3_allow(&self) -> Result<String> {
        let ([srv, allowed, other, local], _s) = self.policy_setup()?;
        let p = ECHO_HTTP_PORT;
        let attempts = [
            self.attempt(allowed, srv, p, true),
            self.attempt(other, srv, p, false),
            self.attempt(local, srv, p, false),
        ];
        let policy = server_policy(
            "l3-allow",
            json!({"ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client-allowed"}}]}]}),
        );
        self.policy_check(
            &attempts,
            policy,
            "ingress fromEndpoints app=client-allowed",
        )
    }

    /// `toPorts`: the allowed client reaches 8080/TCP and not 8081/TCP.
    fn policy_l4_port(&self) -> Result<String> {
        let ([srv, allowed, _, local], _s) = self.policy_setup()?;
        let attempts = [
            self.attempt(allowed, srv, ECHO_HTTP_PORT, true),
            self.attempt(allowed, srv, ECHO_UDP_PORT, false),
            self.attempt(local, srv, ECHO_HTTP_PORT, false),
        ];
        let policy = server_policy(
            "l4-port",
            json!({"ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": "client-allowed"}}],
                "toPorts": [{"ports": [{"port": ECHO_HTTP_PORT.to_string(), "protocol": "TCP"}]}],
            }]}),
        );
        self.policy_check(
            &attempts,
            policy,
            &format!("ingress from app=client-allowed to {ECHO_HTTP_PORT}/TCP"),
        )
    }

    /// `ingressDeny` beats an allow-all rule: the denied client is dropped, the others pass.
    fn policy_deny(&self) -> Result<String> {
        let ([srv, allowed, other, local], _s) = self.policy_setup()?;
        let p = ECHO_HTTP_PORT;
        let attempts = [
            self.attempt(allowed, srv, p, true),
            self.attempt(local, srv, p, true),
            self.attempt(other, srv, p, false),
        ];
        let policy = server_policy(
            "deny-other",
            json!({"ingress": [{"fromEntities": ["all"]}],
                   "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "client-other"}}]}]}),
        );
        self.policy_check(
            &attempts,
            policy,
            "ingress fromEntities all + ingressDeny app=client-other",
        )
    }

    /// The Service `policy-np`: NodePort [`POLICY_NODE_PORT`] on the server, traffic policy
    /// Local (outside clients keep their address, and with it their `world` identity).
    fn policy_nodeport(&self) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "policy-np", "namespace": sandbox::POLICY_NAMESPACE},
            "spec": {"type": "NodePort", "externalTrafficPolicy": "Local",
                     "clusterIP": POLICY_NP_CLUSTER_IP, "clusterIPs": [POLICY_NP_CLUSTER_IP],
                     "selector": {"app": "policy-server"},
                     "ports": [{"name": "http", "port": 80, "targetPort": ECHO_HTTP_PORT,
                                "nodePort": POLICY_NODE_PORT, "protocol": "TCP"}]},
        })
    }

    /// Publishes `policy-np` (with `policies`) and waits until the server's node balances it to
    /// the server.
    fn publish_with_nodeport(&self, srv: &PodState, policies: &[Value]) -> Result<()> {
        let mut objects = vec![self.policy_nodeport()];
        objects.extend(policies.iter().cloned());
        self.publish_objects(&objects)?;
        let svc = format!("{}/policy-np", sandbox::POLICY_NAMESPACE);
        wait_nodes(std::slice::from_ref(self.node(srv)), Instant::now(), |n| {
            let b = maglev_backends(n, &svc, 80, "TCP")?;
            Ok((!b.as_ref().is_some_and(|b| b.contains(&srv.ip))).then(|| {
                format!(
                    "{}'s Maglev table for {svc} has backends {b:?}, not {}",
                    n.name, srv.ip
                )
            }))
        })
        .map(|_| ())
    }

    /// The underlay client's connections through `policy-np` must reach the server with their
    /// own address (Local traffic policy): otherwise the server would see the node, and the
    /// check would test nothing.
    fn world_keeps_its_address(&self, srv: &PodState) -> Result<()> {
        let to = SocketAddr::from((self.node(srv).ip, POLICY_NODE_PORT));
        let a = self.whoami(&self.st.underlay, to, 1, &["--wait-ms", "2000"])?;
        let peer = a.first().map(|a| a.peer.clone()).unwrap_or_default();
        if !peer.starts_with(&format!("{UNDERLAY_CLIENT}:")) {
            bail!(
                "through {to} (externalTrafficPolicy Local) the server saw the client as {peer:?}, not {UNDERLAY_CLIENT}: {:?}",
                a.first().and_then(|a| a.error.clone())
            );
        }
        Ok(())
    }

    /// The frame of the checks that reach the server from the world: the NodePort is published
    /// (with no policy) before `body`, and when both are gone `allowed` reaches the server again.
    fn nodeport_policy_scope(
        &self,
        srv: &PodState,
        allowed: &PodState,
        body: impl FnOnce() -> Result<String>,
    ) -> Result<String> {
        let d = self.policy_scope(|| {
            self.publish_with_nodeport(srv, &[])?;
            body()
        })?;
        self.all_reach(
            &[self.attempt(allowed, srv, ECHO_HTTP_PORT, true)],
            "after the policy and the NodePort were removed",
        )?;
        Ok(d)
    }

    /// `fromCIDR`: the underlay client (outside the cluster) reaches the server through a
    /// NodePort (Local) and a pod does not (CIDR rules never match cluster addresses); then a
    /// `fromCIDRSet` whose `except` holds the client denies it.
    fn policy_cidr(&self) -> Result<String> {
        let ([srv, allowed, _, _], _s) = self.policy_setup()?;
        let cidr = format!("{UNDERLAY_CLIENT}/32");
        self.nodeport_policy_scope(srv, allowed, || {
            let pod = self.attempt(allowed, srv, ECHO_HTTP_PORT, false);
            let world = self.world_attempt(srv, true);
            self.all_reach(&[pod.clone(), world.clone()], "before")?;
            self.world_keeps_its_address(srv)?;
            let only = server_policy("cidr", json!({"ingress": [{"fromCIDR": [cidr]}]}));
            self.publish_with_nodeport(srv, &[only])?;
            let r1 = self.expect_reach(&[world.clone(), pod])?;
            // Another name: the agents' list of policies shows when they have taken it.
            let except = server_policy(
                "cidr-except",
                json!({"ingress": [{"fromCIDRSet": [{"cidr": "192.168.100.0/24", "except": [cidr]}]}]}),
            );
            self.publish_with_nodeport(srv, &[except])?;
            let r2 = self.expect_reach(&[Attempt {
                allowed: false,
                ..world
            }])?;
            Ok(format!(
                "fromCIDR {cidr}: {}; fromCIDRSet 192.168.100.0/24 except {cidr}: {}",
                r1.brief(),
                r2.brief()
            ))
        })
    }

    /// `fromEntities: [cluster]`: pods of both nodes reach the server, the underlay client
    /// (`world`, through a NodePort with Local traffic policy) does not.
    fn policy_entity(&self) -> Result<String> {
        let ([srv, allowed, _, local], _s) = self.policy_setup()?;
        self.nodeport_policy_scope(srv, allowed, || {
            let attempts = [
                self.attempt(allowed, srv, ECHO_HTTP_PORT, true),
                self.attempt(local, srv, ECHO_HTTP_PORT, true),
                self.world_attempt(srv, false),
            ];
            self.all_reach(&attempts, "before")?;
            self.world_keeps_its_address(srv)?;
            let policy = server_policy(
                "entity-cluster",
                json!({"ingress": [{"fromEntities": ["cluster"]}]}),
            );
            self.publish_with_nodeport(srv, &[policy])?;
            let r = self.expect_reach(&attempts)?;
            Ok(format!("ingress fromEntities cluster: {}", r.brief()))
        })
    }

    /// A part of the Kubernetes network-policy e2e model with real connections: namespaces x,
    /// y, z with pods a, b, c each, TCP 80 between every pair of pods (72), NetworkPolicies of
    /// upstream's cases one after the other, each checked against upstream's truth table.
    fn policy_netpol_model(&self) -> Result<String> {
        let mut pods = Vec::new();
        for ns in sandbox::NETPOL_NAMESPACES {
            for name in sandbox::NETPOL_PODS {
                pods.push(self.st.pod(&format!("{ns}/{name}")).with_context(|| {
                    "the network-policy model's pods come with the default sandbox \
                     (`vireo sandbox up` without --manifests)"
                })?);
            }
        }
        let _s = self.policy_servers(&pods, &[80], 120)?;
        let pairs = || {
            pods.iter()
                .flat_map(|f| pods.iter().map(move |t| (*f, *t)))
                .filter(|(f, t)| f.ip != t.ip)
        };
        let matrix = |case: Option<&ModelCase>| -> Vec<Attempt> {
            pairs()
                .map(|(f, t)| {
                    let (fp, tp) = (
                        (f.namespace.as_str(), f.name.as_str()),
                        (t.namespace.as_str(), t.name.as_str()),
                    );
                    let (allowed, at_source) = match case {
                        Some(c) => ((c.allowed)(fp, tp), (c.egress_denied)(fp)),
                        None => (true, false),
                    };
                    let mut a = self.attempt(f, t, 80, allowed);
                    if at_source {
                        a.enforcer = f.node.clone();
                    }
                    a
                })
                .collect()
        };
        let all = matrix(None);
        self.expect_reach(&all)
            .context("before any policy: every pod reaches every other")?;
        let cases = model_cases();
        let done = self.policy_scope(|| {
            let mut done = Vec::new();
            for c in &cases {
                self.publish_objects(&c.policies)?;
                let r = self
                    .expect_reach(&matrix(Some(c)))
                    .with_context(|| format!("case {}", c.name))?;
                done.push(format!(
                    "{}: {} allowed, {} denied ({})",
                    c.name,
                    r.allowed.len(),
                    r.denied.len(),
                    r.counted
                ));
            }
            Ok(done)
        })?;
        self.expect_reach(&all)
            .context("after the policies were removed: every pod reaches every other")?;
        Ok(format!(
            "{} pairs of {} pods over {} nodes, TCP 80, as upstream expects: {}; all {} open before and after",
            all.len(),
            pods.len(),
            self.st.nodes.len().min(2),
            done.join("; "),
            all.len()
        ))
    }
}

/// A probe server running in a pod.
struct ProbeServer {
    child: Child,
    rest: std::thread::JoinHandle<String>,
}

impl ProbeServer {
    /// Stops it (it serves until its timeout otherwise); returns what it printed.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        self.finish().1
    }

    /// Waits for it; returns whether it succeeded and what it printed.
    fn finish(mut self) -> (bool, String) {
        use std::io::Read;
        let ok = self.child.wait().map(|s| s.success()).unwrap_or(false);
        let out = self.rest.join().unwrap_or_default();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (
            ok,
            format!("{} {}", out.trim(), err.trim()).trim().to_string(),
        )
    }
}

/// One VXLAN packet seen on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VxlanSeen {
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    vni: u32,
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
}

/// Reads a classic pcap file (Ethernet link type) and returns its VXLAN packets.
fn read_vxlan_pcap(path: &Path) -> Result<Vec<VxlanSeen>> {
    let data =
        std::fs::read(path).with_context(|| format!("reading capture {}", path.display()))?;
    parse_pcap(&data)
}

fn parse_pcap(data: &[u8]) -> Result<Vec<VxlanSeen>> {
    if data.len() < 24 {
        bail!("capture too short");
    }
    let le = match &data[0..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("not a pcap file"),
    };
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32_at(&data[off + 8..]) as usize;
        let pkt = &data[(off + 16).min(data.len())..(off + 16 + incl).min(data.len())];
        off += 16 + incl;
        let ip = |o: usize| Ipv4Addr::new(pkt[o], pkt[o + 1], pkt[o + 2], pkt[o + 3]);
        // Ethernet(14) IPv4(20, no options) UDP(8) VXLAN(8) | Ethernet(14) IPv4 …
        if pkt.len() < 50 + 34 || pkt[12..14] != [0x08, 0x00] || pkt[14] != 0x45 || pkt[23] != 17 {
            continue;
        }
        out.push(VxlanSeen {
            outer_src: ip(26),
            outer_dst: ip(30),
            vni: u32::from_be_bytes([0, pkt[46], pkt[47], pkt[48]]),
            inner_src: ip(50 + 26),
            inner_dst: ip(50 + 30),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whoami_answers() {
        let a = parse_answers(
            r#"{"answers":[{"backend":"10.244.1.13","peer":"10.244.1.10:4000","ms":1.0},
                {"backend":"10.244.1.13","peer":"10.244.1.10:4001","from":"10.96.0.10:81","ms":1.0},
                {"error":"refused","ms":0.2},{"error":"refused","ms":0.1}],"to":"10.96.0.10:80"}"#,
        )
        .unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(a[1].from, "10.96.0.10:81");
        let t = tally(a.iter().filter_map(|a| a.backend));
        assert_eq!(t.get(&Ipv4Addr::new(10, 244, 1, 13)), Some(&2));
        assert_eq!(errors(&a).as_deref(), Some("refused x2"));
        assert_eq!(errors(&a[..2]), None);
    }

    #[test]
    fn netpol_model_truth_tables() {
        let pods: Vec<(&str, &str)> = sandbox::NETPOL_NAMESPACES
            .iter()
            .flat_map(|ns| sandbox::NETPOL_PODS.iter().map(move |p| (*ns, *p)))
            .collect();
        let denied = |c: &ModelCase| {
            pods.iter()
                .flat_map(|f| pods.iter().map(move |t| (*f, *t)))
                .filter(|(f, t)| f != t && !(c.allowed)(*f, *t))
                .count()
        };
        // Denied pairs of the 72, as upstream's reachability tables have them.
        let want = [
            ("default-deny-ingress", 24),
            ("allow-from-namespace-y", 15),
            ("x-a-allows-x-b", 7),
            ("allow-ns-y-z-pod-b", 6),
            ("default-deny-all", 42),
        ];
        let cases = model_cases();
        assert_eq!(cases.len(), want.len());
        for (c, (name, n)) in cases.iter().zip(want) {
            assert_eq!((c.name, denied(c)), (name, n));
            let names = policy_names(&c.policies);
            assert!(names
                .iter()
                .all(|(k, n)| k == "NetworkPolicy" && n.starts_with("x/")));
        }
        assert!((cases[1].allowed)(("y", "c"), ("x", "a")));
        assert!(!(cases[3].allowed)(("x", "b"), ("x", "a")));
        assert!((cases[4].egress_denied)(("x", "c")));
    }

    #[test]
    fn policy_names_as_policy_get_lists_them() {
        let objs = vec![
            server_policy("l3", json!({})),
            netpol("x", "deny", json!({})),
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                   "metadata": {"name": "cw"}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}),
        ];
        let n: Vec<(String, String)> = policy_names(&objs).into_iter().collect();
        let n: Vec<(&str, &str)> = n.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            n,
            [
                ("CiliumClusterwideNetworkPolicy", "cw"),
                ("CiliumNetworkPolicy", "policy-test/l3"),
                ("NetworkPolicy", "x/deny"),
            ]
        );
    }

    #[test]
    fn pcap_reader_finds_vxlan() {
        let inner = vec![0u8; 60];
        let mut frame = vec![0u8; 50];
        frame.extend_from_slice(&inner);
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[23] = 17;
        frame[26..30].copy_from_slice(&[192, 168, 100, 11]);
        frame[30..34].copy_from_slice(&[192, 168, 100, 12]);
        frame[46..49].copy_from_slice(&[0x01, 0x02, 0x03]);
        frame[76..80].copy_from_slice(&[10, 244, 1, 10]);
        frame[80..84].copy_from_slice(&[10, 244, 2, 10]);
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&128u32.to_le_bytes());
        pcap.extend_from_slice(&1u32.to_le_bytes());
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&frame);
        let v = parse_pcap(&pcap).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].vni, 0x010203);
        assert_eq!(v[0].inner_dst, Ipv4Addr::new(10, 244, 2, 10));
        assert!(parse_pcap(&pcap[..10]).is_err());
    }
}
