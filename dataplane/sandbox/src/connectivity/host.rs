//! Host ↔ pod checks: the node's stack reaching its pods as the kubelet's probes do (through
//! the host pair, as identity `host`), a host-network server reached from pods on both nodes,
//! the node reaching a ClusterIP, and a pod reaching itself through its Service (hairpin,
//! source-NAT'd to the service loopback address 169.254.42.1), a Service whose backends are
//! the nodes' own addresses (`host-echo`, as the `kubernetes` Service is) reached from pods on
//! both nodes, and `fromEntities: host` / `remote-node` policies each allowing one node's
//! stack and denying the other's (then removed).

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{NodeState, PodState, ECHO_HTTP_PORT, HOST_ECHO_TARGET};

use super::{counters, errors, parse_answers, Backends, Env};

/// The port of the host-network server the checks start in a node's namespace.
const HOST_PORT: u16 = 9090;

impl Env {
    /// Every `app: echo` pod answers TCP from its own node's namespace (source: the node's
    /// address), as a kubelet probe would.
    pub(super) fn host_to_pods(&self) -> Result<String> {
        let _b = self.start_backends()?;
        let mut n = 0;
        for p in &self.echo {
            let node = self.node(p).clone();
            let to = format!("{}:{ECHO_HTTP_PORT}", p.ip);
            let a = self.whoami_in(&node.netns, &to, 2, false)?;
            for x in &a {
                if x.backend != Some(p.ip) || !x.peer.starts_with(&format!("{}:", node.ip)) {
                    bail!(
                        "{} → {to}: {x:?} (want {} answering {})",
                        node.name,
                        p.ip,
                        node.ip
                    );
                }
            }
            n += a.len();
        }
        Ok(format!(
            "{n} connections, each node to each of its echo pods"
        ))
    }

    /// A server on node-1's own address (a host-network pod) answers pods of both nodes, TCP
    /// and UDP, and sees each pod's own address.
    pub(super) fn pods_to_host_network(&self) -> Result<String> {
        let n1 = self.st.nodes[0].clone();
        let (tcp, udp) = (
            format!("{}:{HOST_PORT}", n1.ip),
            format!("{}:{}", n1.ip, HOST_PORT + 1),
        );
        let server = self.spawn_probe_in(
            &n1.netns,
            &[
                "echo-server",
                "--tcp",
                &tcp,
                "--udp",
                &udp,
                "--timeout",
                "30",
            ],
        )?;
        let r = (|| -> Result<String> {
            for p in [&self.a, &self.c] {
                for (to, udp) in [(&tcp, false), (&udp, true)] {
                    let a = self.whoami_in(&p.netns, to, 2, udp)?;
                    for x in &a {
                        if x.backend != Some(n1.ip) || !x.peer.starts_with(&format!("{}:", p.ip)) {
                            bail!("{} → {to}: {x:?}", p.name);
                        }
                    }
                }
            }
            Ok(format!(
                "{tcp} (TCP) and {udp} (UDP) on {} reached from {} and {}",
                n1.name, self.a.name, self.c.name
            ))
        })();
        let _ = server.stop();
        r
    }

    /// Each node reaches the `echo` ClusterIP (TCP and UDP) from its own namespace; the
    /// answers come from backends on both nodes.
    pub(super) fn host_to_clusterip(&self) -> Result<String> {
        let _b = self.start_backends()?;
        let (tcp, _) = self.frontend("echo", "TCP")?;
        let (udp, _) = self.frontend("echo", "UDP")?;
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.st.nodes[..2] {
            for (to, is_udp) in [(tcp, false), (udp, true)] {
                let a = self.whoami_in(&n.netns, &to.to_string(), 8, is_udp)?;
                for x in &a {
                    let Some(b) = x.backend else {
                        bail!("{} → {to}: {x:?}", n.name);
                    };
                    if is_udp && x.from != to.to_string() {
                        bail!("{} → {to}: the reply came from {}", n.name, x.from);
                    }
                    seen.insert(b);
                }
            }
        }
        if seen.len() < 2 {
            bail!("only backends {seen:?} answered the nodes");
        }
        Ok(format!("both nodes → {tcp} and {udp}: backends {seen:?}"))
    }

    /// An echo pod reaches itself through `echo` (TCP and UDP); it then sees the service
    /// loopback address as its client.
    pub(super) fn hairpin(&self) -> Result<String> {
        let _b = self.start_backends()?;
        let p: &PodState = self.echo.first().context("no echo pod")?;
        let (tcp, _) = self.frontend("echo", "TCP")?;
        let (udp, _) = self.frontend("echo", "UDP")?;
        let mut own = 0;
        for (to, is_udp) in [(tcp, false), (udp, true)] {
            let a = self.whoami_in(&p.netns, &to.to_string(), 24, is_udp)?;
            if let Some(e) = errors(&a) {
                bail!("{} → {to}: {e}", p.name);
            }
            for x in a.iter().filter(|x| x.backend == Some(p.ip)) {
                if !x.peer.starts_with("169.254.42.1:") {
                    bail!("{} → {to} answered by itself, seen from {}", p.name, x.peer);
                }
                own += 1;
            }
        }
        if own == 0 {
            bail!(
                "{} never reached itself through {tcp}/{udp} in 48 tries",
                p.name
            );
        }
        Ok(format!(
            "{}: {own} of 48 answers from itself, client 169.254.42.1",
            p.name
        ))
    }

    /// Echo servers on every node's own address (host-network servers), TCP `port`.
    fn host_servers(&self, port: u16) -> Result<Backends> {
        let mut b = Backends(Vec::new());
        for n in &self.st.nodes[..2] {
            let tcp = format!("{}:{port}", n.ip);
            b.0.push(
                self.spawn_probe_in(&n.netns, &["echo-server", "--tcp", &tcp, "--timeout", "30"])?,
            );
        }
        Ok(b)
    }

    /// `host-echo` (backends: the nodes' addresses) from pods on both nodes: every answer
    /// comes from a node's own stack, both nodes answer, and each sees the pod's address.
    pub(super) fn host_network_service(&self) -> Result<String> {
        let _s = self.host_servers(HOST_ECHO_TARGET)?;
        let (to, _) = self.frontend("host-echo", "TCP")?;
        let nodes: Vec<_> = self.st.nodes[..2].iter().map(|n| n.ip).collect();
        let mut seen = std::collections::BTreeSet::new();
        for p in [&self.a, &self.c] {
            let a = self.whoami_in(&p.netns, &to.to_string(), 12, false)?;
            for x in &a {
                match x.backend {
                    Some(b) if nodes.contains(&b) && x.peer.starts_with(&format!("{}:", p.ip)) => {
                        seen.insert(b);
                    }
                    _ => bail!("{} → {to}: {x:?}", p.name),
                }
            }
        }
        if seen.len() < 2 {
            bail!("only {seen:?} answered: want both nodes");
        }
        Ok(format!(
            "{} and {} → {to}: answered by the nodes {seen:?}",
            self.a.name, self.c.name
        ))
    }

    /// `fromEntities: host` on the policy server (node-2): node-2's stack connects, node-1's
    /// (remote-node) and a pod beside the server are denied and counted on node-2.
    pub(super) fn policy_from_host(&self) -> Result<String> {
        let ingress = json!([{"fromEntities": ["host"], "toPorts": http_port()}]);
        self.entity_policy("host", json!({"ingress": ingress}), [false, true, false])
    }

    /// `fromEntities: remote-node` on the policy server: node-1's stack connects, a pod beside
    /// the server is denied, and node-2's own stack still connects (`allow_localhost: always`,
    /// Cilium's default, so that kubelet probes survive default deny); with an `ingressDeny`
    /// of `host` added, node-2's stack is denied too.
    pub(super) fn policy_from_remote_node(&self) -> Result<String> {
        let ingress = json!([{"fromEntities": ["remote-node"], "toPorts": http_port()}]);
        let a = self.entity_policy(
            "remote-node",
            json!({"ingress": ingress.clone()}),
            [true, true, false],
        )?;
        let b = self.entity_policy(
            "remote-node-deny-host",
            json!({"ingress": ingress, "ingressDeny": [{"fromEntities": ["host"]}]}),
            [true, false, false],
        )?;
        Ok(format!("{a}; with ingressDeny host: {b}"))
    }

    /// The server (on the second node) gets a policy with `rules` as its spec (besides its
    /// selector): node-1's stack, node-2's stack and `client-local` connect as `want` says
    /// (no answer in 1 s is denied, and the denials are counted as `policy_denied` by the
    /// server's node); all connect before the policy and after it is removed.
    fn entity_policy(&self, name: &str, rules: Value, want: [bool; 3]) -> Result<String> {
        let srv = self.policy_pod("server")?;
        let local = self.policy_pod("client-local")?;
        let _s = self.policy_servers(&[srv], &[ECHO_HTTP_PORT], 30)?;
        let to = format!("{}:{ECHO_HTTP_PORT}", srv.ip);
        let enforcer = self.node(srv).clone();
        let from: Vec<(String, &str)> = vec![
            (
                self.st.nodes[0].name.clone(),
                self.st.nodes[0].netns.as_str(),
            ),
            (
                self.st.nodes[1].name.clone(),
                self.st.nodes[1].netns.as_str(),
            ),
            (local.name.clone(), local.netns.as_str()),
        ];
        let try_all = |want: &[bool]| -> Result<()> {
            for ((name, ns), ok) in from.iter().zip(want) {
                let a = self.probe_in(
                    ns,
                    &["whoami", "--to", &to, "--count", "1", "--wait-ms", "1000"],
                )?;
                let a = parse_answers(&a)?;
                let got = a.first().is_some_and(|x| x.backend == Some(srv.ip));
                if got != *ok {
                    bail!(
                        "{name} → server {to}: {} (want {})",
                        if got { "connected" } else { "no answer" },
                        if *ok { "connected" } else { "denied" }
                    );
                }
            }
            Ok(())
        };
        try_all(&[true, true, true]).context("before the policy")?;
        let mut spec = json!({"endpointSelector": {"matchLabels": {"app": "policy-server"}}});
        if let (Some(spec), Some(rules)) = (spec.as_object_mut(), rules.as_object()) {
            spec.extend(rules.clone());
        }
        let policy = json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": format!("from-{name}"), "namespace": crate::POLICY_NAMESPACE},
            "spec": spec,
        });
        let denied = |n: &NodeState| -> Result<u64> {
            Ok(counters(n)?["drops"]["policy_denied"].as_u64().unwrap_or(0))
        };
        let r = (|| -> Result<u64> {
            self.publish_objects(&[policy])?;
            let before = denied(&enforcer)?;
            try_all(&want)?;
            let n = denied(&enforcer)? - before;
            if n == 0 {
                bail!("{} counted no policy_denied drop", enforcer.name);
            }
            Ok(n)
        })();
        let restored = self.publish_objects(&[]);
        let n = r.with_context(|| format!("policy {name}"))?;
        restored.context("removing the policy")?;
        try_all(&[true, true, true]).context("after the policy was removed")?;
        let list = |ok: bool| {
            from.iter()
                .zip(want)
                .filter(|(_, w)| *w == ok)
                .map(|((n, _), _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Ok(format!(
            "{name}: {} connect; {} denied ({n} policy_denied on {}); all connect before and after",
            list(true),
            list(false),
            enforcer.name
        ))
    }

    /// `vireo probe whoami` in a namespace: its answers.
    fn whoami_in(
        &self,
        netns: &str,
        to: &str,
        count: u32,
        udp: bool,
    ) -> Result<Vec<super::Answer>> {
        let count = count.to_string();
        let mut args = vec!["whoami", "--to", to, "--count", &count];
        if udp {
            args.push("--udp");
        }
        let out = self.probe_in(netns, &args)?;
        parse_answers(&out)
    }
}

/// The policy server's HTTP port, as a `toPorts` list.
fn http_port() -> Value {
    json!([{"ports": [{"port": ECHO_HTTP_PORT.to_string(), "protocol": "TCP"}]}])
}
