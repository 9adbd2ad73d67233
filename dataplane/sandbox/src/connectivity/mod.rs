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
//!
//! `service-half-close`, `service-fragmented-udp` and `service-pmtu` prove the fast path's edge
//! cases through ClusterIPs: a half-closed connection outlives the agents' conntrack close
//! lifetime (the sandbox sets it to [`crate::CT_TCP_CLOSE`] s), UDP datagrams fragmented both
//! ways arrive whole, and the path MTU is learnt for the ClusterIP. `policy-other-protocols`
//! judges GRE, SCTP and spoofed ICMP errors; `policy-revocation` cuts an established stream.
//! `policy-fqdn` and `policy-dns-refused` prove DNS-aware policy (`toFQDNs`, `rules: dns`)
//! against the default sandbox's cluster DNS (`kube-system/kube-dns`, served during the check
//! by `vireo probe dns-server`) and two world addresses.
//!
//! The `world/*` checks prove masquerade against the sandbox's "world" namespace on the
//! underlay (a server on an address outside the cluster with no route to the pods): reached
//! from both nodes with the node's address as source, blocked by a policy denying `world`, and
//! a flood across the masquerade port range reaches no pod.
//!
//! Here: the runner, its table and JSON, and what the checks share (running probes in pods,
//! counters, answers); the checks by family are in `datapath`, `conntrack`, `services`,
//! `edges`, `policy` and `world`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use vireo_api as api;

use crate::{NodeState, PodState, State};

mod conntrack;
mod datapath;
mod edges;
mod host;
mod policy;
mod services;
mod world;

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
        ("service-half-close", Env::service_half_close),
        ("service-fragmented-udp", Env::service_fragmented_udp),
        ("service-pmtu", Env::service_pmtu),
        ("host/node-to-own-pods", Env::host_to_pods),
        ("host/pods-to-host-network", Env::pods_to_host_network),
        ("host/node-to-clusterip", Env::host_to_clusterip),
        ("host/hairpin", Env::hairpin),
        ("host/service-hostnet-backend", Env::host_network_service),
        ("host/policy-from-host", Env::policy_from_host),
        ("host/policy-from-remote-node", Env::policy_from_remote_node),
        ("policy-l3-allow", Env::policy_l3_allow),
        ("policy-l4-port", Env::policy_l4_port),
        ("policy-deny", Env::policy_deny),
        ("policy-cidr", Env::policy_cidr),
        ("policy-entity", Env::policy_entity),
        ("policy-netpol-model", Env::policy_netpol_model),
        ("policy-other-protocols", Env::policy_other_protocols),
        ("policy-revocation", Env::policy_revocation),
        ("policy-fqdn", Env::policy_fqdn),
        ("policy-dns-refused", Env::policy_dns_refused),
        ("world/pod-to-world", Env::world_reach),
        ("world/policy-deny-world", Env::world_policy),
        ("world/port-range-flood", Env::world_flood),
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

    /// Counters of both nodes before and after `f`, so the check can prove the traffic crossed
    /// the agents.
    fn through_agents<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, [u64; 2])> {
        let (n1, n2) = (&self.st.nodes[0], &self.st.nodes[1]);
        let (b1, b2) = (counters(n1)?, counters(n2)?);
        let r = f()?;
        let (a1, a2) = (counters(n1)?, counters(n2)?);
        Ok((r, [delta(&b1, &a1, "/tx"), delta(&b2, &a2, "/tx")]))
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

/// The first JSON value in a probe's output (what follows it, such as its stderr, is ignored).
fn first_json(out: &str) -> Result<Value> {
    let start = out.find('{').ok_or_else(|| anyhow!("no JSON in {out:?}"))?;
    serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .next()
        .ok_or_else(|| anyhow!("no JSON in {out:?}"))?
        .with_context(|| format!("parsing {out:?}"))
}

/// Milliseconds since the Unix epoch, as the probes stamp their samples (same machine).
fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    fn first_json_skips_what_follows() {
        let v = first_json(r#"{"count": 3, "by": {"3868": 3}} some stderr {"x": 1}"#).unwrap();
        assert_eq!(v["by"]["3868"], 3);
        assert!(first_json("nothing").is_err());
    }
}
