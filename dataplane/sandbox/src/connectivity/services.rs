//! Service checks against the default sandbox's Services (`echo`, `echo-np`, `echo-sticky`,
//! `empty`) and its `app: echo` backends: spread, reply source, NodePort, affinity, backend
//! removal, no backend.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate as sandbox;
use crate::{PodState, ECHO_HTTP_PORT, ECHO_UDP_PORT, UNDERLAY_CLIENT};

use super::{
    counters, errors, maglev_backends, parse_answers, tally, wait_nodes, Answer, Backends, Env,
};

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
    pub(super) fn service(&self, name: &str) -> Result<&Value> {
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
    pub(super) fn frontend(&self, name: &str, proto: &str) -> Result<(SocketAddr, Option<u16>)> {
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
    pub(super) fn start_backends(&self) -> Result<Backends> {
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
    pub(super) fn names(&self, t: &BTreeMap<Ipv4Addr, usize>) -> String {
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
    pub(super) fn whoami(
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
    pub(super) fn service_clusterip_spread(&self) -> Result<String> {
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
    pub(super) fn service_reply_source(&self) -> Result<String> {
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
    pub(super) fn service_nodeport_underlay(&self) -> Result<String> {
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
    pub(super) fn service_affinity(&self) -> Result<String> {
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
    pub(super) fn service_backend_removal(&self) -> Result<String> {
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
    pub(super) fn service_no_backend(&self) -> Result<String> {
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
