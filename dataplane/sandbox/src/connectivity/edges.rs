//! Service checks of the fast path's edge cases: a half-closed connection that outlives the
//! conntrack close lifetime, UDP datagrams fragmented on the way to a backend and back, and the
//! path MTU learnt through a ClusterIP.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate as sandbox;
use crate::{PodState, CT_TCP_CLOSE, ECHO_HTTP_PORT, ECHO_UDP_PORT, UNDERLAY_MTU};

use super::{counters, delta, first_json, maglev_backends, wait_nodes, Backends, Env};

/// The ClusterIP of the Service `policy-test/pmtu` that `service-pmtu` adds while it runs: one
/// backend, the policy server on the second node.
const PMTU_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);

/// The size of `service-fragmented-udp`'s datagrams: three fragments at the pod MTU.
const BIG_DATAGRAM: usize = 4000;

/// Datagrams `service-fragmented-udp` sends (each from a new source port, so they spread over
/// the backends of both nodes).
const BIG_COUNT: u32 = 24;

impl Env {
    /// A client on the first node that is no service backend.
    fn plain_client(&self) -> Result<&PodState> {
        if self.echo.iter().any(|p| p.ip == self.a.ip) {
            bail!(
                "{} is a service backend: no plain client on {}",
                self.a.name,
                self.a.node
            );
        }
        Ok(&self.a)
    }

    /// Probe servers with `args` (`{ip}` replaced by the pod's address) on every echo pod.
    fn on_echo_pods(&self, args: &[&str]) -> Result<Backends> {
        if self.echo.len() < 2 {
            bail!("the service checks need at least 2 pods labelled app=echo (the default sandbox has them)");
        }
        let mut b = Backends(Vec::new());
        for p in &self.echo {
            let ip = p.ip.to_string();
            let a: Vec<String> = args.iter().map(|a| a.replace("{ip}", &ip)).collect();
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            b.0.push(self.spawn_probe(p, &a)?);
        }
        Ok(b)
    }

    /// A client sends its request through the ClusterIP and shuts down writing (FIN); the
    /// backend answers only after twice the agents' `tcp_close` lifetime; the answer must
    /// arrive: a half-closed connection is still open.
    pub(super) fn service_half_close(&self) -> Result<String> {
        let close = CT_TCP_CLOSE;
        for n in &self.st.nodes {
            let path = self.st.dir.join(format!("{}.yaml", n.name));
            let cfg = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            if !cfg.contains(&format!("tcp_close: {close}")) {
                bail!(
                    "{}'s agent config ({}) has no conntrack lifetime tcp_close: {close} \
                     (a sandbox from an older vireo: recreate it)",
                    n.name,
                    path.display()
                );
            }
        }
        let delay_ms = u64::from(close) * 2000;
        let client = self.plain_client()?;
        let (to, _) = self.frontend("echo", "TCP")?;
        let delay = delay_ms.to_string();
        let _b = self.on_echo_pods(&[
            "echo-server",
            "--tcp",
            &format!("{{ip}}:{ECHO_HTTP_PORT}"),
            "--timeout",
            "30",
            "--answer-delay-ms",
            &delay,
        ])?;
        let bytes = 100_000u64;
        let out = self
            .probe(
                client,
                &[
                    "tcp-client",
                    "--to",
                    &to.to_string(),
                    "--bytes",
                    &bytes.to_string(),
                    "--whoami",
                    "--timeout",
                    "15",
                ],
            )
            .with_context(|| {
                format!(
                    "{} -> {to}: request sent and half-closed, answer due after {delay_ms} ms \
                     (conntrack tcp_close {close} s)",
                    client.name
                )
            })?;
        let last: Value = out
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| anyhow!("tcp-client printed {out:?}"))?;
        let secs = last["seconds"].as_f64().unwrap_or(0.0);
        if secs * 1000.0 < delay_ms as f64 {
            bail!("the answer came after {secs:.1}s, before the backend's delay of {delay_ms} ms: the check tested nothing");
        }
        let backend = last["backend"].as_str().unwrap_or("?");
        let who = backend
            .parse::<Ipv4Addr>()
            .ok()
            .and_then(|ip| self.echo.iter().find(|p| p.ip == ip))
            .map(|p| format!("{} on {}", p.name, p.node))
            .unwrap_or_else(|| backend.to_string());
        Ok(format!(
            "{} -> {to} ({who}): {bytes} bytes, FIN, the answer {:.1}s later \
             ({delay_ms} ms after the FIN; conntrack tcp_close lifetime {close} s): {}",
            client.name,
            secs,
            last["verdict"].as_str().unwrap_or("?")
        ))
    }

    /// A 4000-byte UDP datagram (fragmented by the sending kernel at the pod MTU) through the
    /// ClusterIP reaches a backend whole, on the client's node and on the other, and its echo
    /// (fragmented by the backend) comes back whole.
    pub(super) fn service_fragmented_udp(&self) -> Result<String> {
        let client = self.plain_client()?;
        let (to, _) = self.frontend("echo", "UDP")?;
        let before: Vec<Value> = self.st.nodes.iter().map(counters).collect::<Result<_>>()?;
        let servers = self.on_echo_pods(&[
            "udp-sizes",
            "--listen",
            &format!("{{ip}}:{ECHO_UDP_PORT}"),
            "--timeout",
            "30",
        ])?;
        let (size, count) = (BIG_DATAGRAM.to_string(), BIG_COUNT.to_string());
        let exe = self.exe.to_str().unwrap_or("vireo");
        let o = self.exec(
            client,
            &[
                exe,
                "probe",
                "udp-big",
                "--to",
                &to.to_string(),
                "--size",
                &size,
                "--count",
                &count,
                "--wait-ms",
                "1500",
            ],
        )?;
        let mut reports = Vec::new();
        for s in std::mem::take(&mut { servers }.0) {
            reports.push(s.stop());
        }
        let after: Vec<Value> = self.st.nodes.iter().map(counters).collect::<Result<_>>()?;
        let frag_no_first: u64 = before
            .iter()
            .zip(&after)
            .map(|(b, a)| delta(b, a, "/drops/frag_no_first"))
            .sum();
        // What each backend received: the lengths of its datagrams.
        let mut got: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for (p, r) in self.echo.iter().zip(&reports) {
            let lens: Vec<u64> = r
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
                .filter_map(|v| v["len"].as_u64())
                .collect();
            *per_node.entry(p.node.as_str()).or_insert(0) += lens.len();
            got.insert(p.name.as_str(), lens);
        }
        let seen = got
            .iter()
            .map(|(n, l)| format!("{n} x{}", l.len()))
            .collect::<Vec<_>>()
            .join(", ");
        let client_out = String::from_utf8_lossy(&o.stdout).to_string();
        let v = first_json(&client_out).unwrap_or_default();
        let intact = v["intact"].as_u64().unwrap_or(0);
        let brief = format!(
            "{count} x {size}-byte datagrams {} -> {to}: backends received {seen}; \
             {intact}/{count} echoes whole at the client; frag_no_first +{frag_no_first}",
            client.name
        );
        let pieces: Vec<String> = got
            .iter()
            .flat_map(|(n, l)| {
                l.iter()
                    .filter(|&&len| len != BIG_DATAGRAM as u64)
                    .map(move |len| format!("{n} got {len} bytes"))
            })
            .collect();
        if !pieces.is_empty() {
            bail!(
                "backends received pieces, not datagrams: {}; {brief}",
                pieces.join(", ")
            );
        }
        let total: usize = got.values().map(Vec::len).sum();
        if total != BIG_COUNT as usize {
            bail!("the backends received {total} datagrams of {count}; {brief}");
        }
        if !o.status.success() || intact != u64::from(BIG_COUNT) {
            let errs: BTreeMap<String, usize> = v["answers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["error"].as_str())
                .fold(BTreeMap::new(), |mut m, e| {
                    *m.entry(e.to_string()).or_insert(0) += 1;
                    m
                });
            bail!(
                "echoes did not come back whole ({errs:?}; {}); {brief}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        for n in &self.st.nodes {
            if per_node.get(n.name.as_str()).copied().unwrap_or(0) == 0
                && self.echo.iter().any(|p| p.node == n.name)
            {
                bail!("no datagram went to a backend on {} (Maglev chose others {count} times); {brief}", n.name);
            }
        }
        Ok(brief)
    }

    /// The Service `policy-test/pmtu`: [`PMTU_CLUSTER_IP`]:80 to the policy server's 8080.
    fn pmtu_service(&self) -> Value {
        let ip = PMTU_CLUSTER_IP.to_string();
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "pmtu", "namespace": sandbox::POLICY_NAMESPACE},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "selector": {"app": "policy-server"},
                     "ports": [{"name": "http", "port": 80, "targetPort": ECHO_HTTP_PORT,
                                "protocol": "TCP"}]},
        })
    }

    fn set_mtu(&self, p: &PodState, mtu: u16) -> Result<()> {
        let o = self.exec(p, &["ip", "link", "set", "eth0", "mtu", &mtu.to_string()])?;
        if !o.status.success() {
            bail!(
                "{}: ip link set eth0 mtu {mtu}: {}",
                p.name,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        self.exec(p, &["ip", "route", "flush", "cache"])?;
        Ok(())
    }

    /// A TCP transfer through a ClusterIP to a backend on the other node, from a pod whose MTU
    /// is too big for the tunnel (and to a backend that advertises the matching MSS): the
    /// client's node answers the DF segments too big to encapsulate with ICMP fragmentation
    /// needed quoting the ClusterIP, the client's route to the ClusterIP learns the tunnel's
    /// MTU, and the transfer completes intact.
    pub(super) fn service_pmtu(&self) -> Result<String> {
        let (client, srv) = (self.plain_client()?, self.policy_pod("server")?);
        if client.node == srv.node {
            bail!(
                "{} and {} share a node: no tunnel between them",
                client.name,
                srv.name
            );
        }
        let inner = UNDERLAY_MTU - 50;
        let n1 = self.node(client).clone();
        let svc = format!("{}/pmtu", sandbox::POLICY_NAMESPACE);
        let to = SocketAddr::from((PMTU_CLUSTER_IP, 80));
        let run = || -> Result<String> {
            self.publish_objects(&[self.pmtu_service()])?;
            wait_nodes(std::slice::from_ref(&n1), Instant::now(), |n| {
                let b = maglev_backends(n, &svc, 80, "TCP")?;
                Ok((b.as_deref() != Some(&[srv.ip][..])).then(|| {
                    format!(
                        "{}'s Maglev table for {svc} has backends {b:?}, not {}",
                        n.name, srv.ip
                    )
                }))
            })?;
            let _server = self.policy_servers(&[srv], &[ECHO_HTTP_PORT], 40)?;
            // The client sends full-size segments: its MTU and the MSS the server advertises
            // are both the underlay's.
            self.set_mtu(client, UNDERLAY_MTU)?;
            self.set_mtu(srv, UNDERLAY_MTU)?;
            let before = counters(&n1)?;
            let bytes = 4u64 << 20;
            let out = self.probe(
                client,
                &[
                    "tcp-client",
                    "--to",
                    &to.to_string(),
                    "--bytes",
                    &bytes.to_string(),
                    "--whoami",
                    "--timeout",
                    "20",
                ],
            );
            let icmp = delta(&before, &counters(&n1)?, "/drops/frag_needed");
            let route_to = |ip: Ipv4Addr| -> Result<String> {
                let o = self.exec(client, &["ip", "route", "get", &ip.to_string()])?;
                Ok(String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "))
            };
            let route = route_to(PMTU_CLUSTER_IP)?;
            // The client never sent to the backend's own address: an ICMP error quoting it (the
            // translated packet instead of the one the client sent) would show here.
            let direct = route_to(srv.ip)?;
            let seen = format!(
                "frag_needed +{icmp} on {}; client route to the ClusterIP: {route}; to the \
                 backend: {direct}",
                n1.name
            );
            let out = out.with_context(|| {
                format!(
                    "{} ({UNDERLAY_MTU}-byte MTU) -> {to} -> {} across a {inner}-byte tunnel ({seen})",
                    client.name, srv.name
                )
            })?;
            if !route.contains(&format!("mtu {inner}")) {
                bail!(
                    "the client did not learn PMTU {inner} for the ClusterIP (no ICMP quoting \
                     {PMTU_CLUSTER_IP} reached it): {seen}"
                );
            }
            if icmp == 0 {
                bail!("no frag_needed counted: {seen}");
            }
            if direct.contains(&format!("mtu {inner}")) {
                bail!(
                    "the client learnt PMTU {inner} for the backend's address {}, which it never \
                     sent to (the ICMP quoted the translated packet): {seen}",
                    srv.ip
                );
            }
            let last: Value = out
                .lines()
                .last()
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or_default();
            Ok(format!(
                "{} -> {to} -> {} ({}): {} MiB intact ({}), ICMP frag-needed x{icmp} from {}; \
                 client route: {route}",
                client.name,
                srv.name,
                srv.node,
                bytes >> 20,
                last["verdict"].as_str().unwrap_or("?"),
                n1.name
            ))
        };
        let r = run();
        let restored = [client, srv]
            .iter()
            .map(|p| self.set_mtu(p, inner))
            .collect::<Result<Vec<()>>>();
        let objects = self.publish_objects(&[]);
        let d = r?;
        restored.context("restoring the pods' MTU")?;
        objects.context("removing the Service pmtu")?;
        Ok(d)
    }
}
