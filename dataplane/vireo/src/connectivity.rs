//! `vireo connectivity test`: like `cilium connectivity test`, a matrix of checks over the
//! sandbox. Each check sends real traffic between pods and proves it went through Vireo: by the
//! agents' counters, and for cross-node traffic by a capture on the underlay that must show
//! VXLAN carrying the sender's identity as its VNI.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::api;
use crate::sandbox::{NodeState, PodState, State, UNDERLAY_MTU};

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
        ("conntrack/syn-flood-at-table-limit", Env::syn_flood),
    ];
    let mut results = Vec::new();
    for (name, f) in checks {
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
        Command::new("ip")
            .args(["netns", "exec", &p.netns])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in {}/{}", p.namespace, p.name))
    }

    /// Starts a probe server in a pod and waits until it listens.
    fn spawn_probe(&self, p: &PodState, args: &[&str]) -> Result<ProbeServer> {
        use std::io::{BufRead, BufReader, Read};
        let mut child = Command::new("ip")
            .args(["netns", "exec", &p.netns])
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
        let mut v = vec![self.exe.to_str().unwrap_or("vireo"), "probe"];
        v.extend_from_slice(args);
        let o = self.exec(p, &v)?;
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
        let server = self.spawn_probe(
            to,
            &[
                "tcp-server",
                "--listen",
                &listen,
                "--bytes",
                &bytes.to_string(),
                "--timeout",
                "120",
            ],
        )?;
        let client = self.probe(
            from,
            &[
                "tcp-client",
                "--to",
                &listen,
                "--bytes",
                &bytes.to_string(),
                "--timeout",
                "120",
            ],
        );
        let (ok, report) = server.finish();
        let client = client?;
        if !ok {
            bail!("receiver: {report}");
        }
        let v: Value = serde_json::from_str(&client).unwrap_or_default();
        Ok(format!(
            "{} MiB intact at {:.0} Mbit/s",
            bytes >> 20,
            v["mbit_s"].as_f64().unwrap_or(0.0)
        ))
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

/// A probe server running in a pod.
struct ProbeServer {
    child: Child,
    rest: std::thread::JoinHandle<String>,
}

impl ProbeServer {
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
