//! Pod → world checks, against the sandbox's "world" namespace on the underlay (an echo server
//! on [`WORLD_ADDR`], which has no route to any pod CIDR): pods on both nodes reach it over
//! TCP, UDP and ping, and the server sees their node's address (and a port of the masquerade
//! range) as the source, and a closed port's RST and ICMP port unreachable come back; a policy denying `world` blocks it (and removing it restores it); a
//! flood from the world across the port range reaches no pod and is counted `masq_no_entry`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use crate::{NodeState, PodState, WORLD_ADDR};

use super::{counters, delta, errors, Answer, Backends, Env};

const WORLD_TCP: u16 = 8080;
const WORLD_UDP: u16 = 8081;
/// The agents' default masquerade range.
const MASQ_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

impl Env {
    fn world_ns(&self) -> Result<&str> {
        self.st.world.as_deref().ok_or_else(|| {
            anyhow!("this sandbox has no world namespace (made by an older `vireo sandbox up`: down and up again)")
        })
    }

    /// The world's echo server (TCP and UDP), for at most `secs`; stopped when dropped.
    fn world_server(&self, secs: u64) -> Result<Backends> {
        let (tcp, udp) = (
            format!("{WORLD_ADDR}:{WORLD_TCP}"),
            format!("{WORLD_ADDR}:{WORLD_UDP}"),
        );
        let secs = secs.to_string();
        self.spawn_probe_in(
            self.world_ns()?,
            &[
                "echo-server",
                "--tcp",
                &tcp,
                "--udp",
                &udp,
                "--timeout",
                &secs,
            ],
        )
        .map(|s| Backends(vec![s]))
    }

    /// `count` whoami attempts from `p` to the world server, each allowed `wait_ms`.
    fn ask_world(&self, p: &PodState, udp: bool, count: u32, wait_ms: u64) -> Result<Vec<Answer>> {
        let port = if udp { WORLD_UDP } else { WORLD_TCP };
        let to = SocketAddr::from((WORLD_ADDR, port));
        let wait = wait_ms.to_string();
        let mut extra = vec!["--wait-ms", wait.as_str()];
        if udp {
            extra.push("--udp");
        }
        self.whoami(&p.netns, to, count, &extra)
    }

    fn ping_world(&self, p: &PodState) -> Result<bool> {
        let w = WORLD_ADDR.to_string();
        let o = self.exec(p, &["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", &w])?;
        Ok(o.status.success())
    }

    /// Every answer came from the world server and saw `node`'s address, with a source port of
    /// the masquerade range.
    fn seen_from_node(answers: &[Answer], node: &NodeState, udp: bool) -> Result<Vec<u16>> {
        if let Some(e) = errors(answers) {
            bail!(
                "{} to the world failed: {e}",
                if udp { "UDP" } else { "TCP" }
            );
        }
        let mut ports = Vec::new();
        for a in answers {
            let peer: SocketAddr = a
                .peer
                .parse()
                .with_context(|| format!("the world server's answer {:?}", a.peer))?;
            if peer.ip() != std::net::IpAddr::V4(node.ip) {
                bail!(
                    "the world server saw {peer} as the source, not {}'s address {}",
                    node.name,
                    node.ip
                );
            }
            if !MASQ_PORTS.contains(&peer.port()) {
                bail!(
                    "source port {} is outside the masquerade range",
                    peer.port()
                );
            }
            if a.backend != Some(WORLD_ADDR) {
                bail!("answered by {:?}, not the world server", a.backend);
            }
            if udp && a.from != format!("{WORLD_ADDR}:{WORLD_UDP}") {
                bail!("the UDP reply came from {}, not the world server", a.from);
            }
            ports.push(peer.port());
        }
        Ok(ports)
    }

    /// TCP, UDP and ping from a pod of each node reach the world; the server sees the node's
    /// address as the source; the agents forwarded it.
    pub(super) fn world_reach(&self) -> Result<String> {
        self.world_ns()?;
        let _srv = self.world_server(20)?;
        let mut parts = Vec::new();
        for p in [&self.a, &self.c] {
            let node = self.node(p);
            let ((tcp, udp), tx) = self.through_agents(|| {
                let tcp = Self::seen_from_node(&self.ask_world(p, false, 3, 2000)?, node, false)?;
                let udp = Self::seen_from_node(&self.ask_world(p, true, 3, 2000)?, node, true)?;
                if !self.ping_world(p)? {
                    bail!("ping {} -> {WORLD_ADDR} got no answer", p.name);
                }
                // A closed port: the world's RST, and its ICMP port unreachable (about the
                // masqueraded datagram), reach the pod.
                self.refused(p)?;
                Ok((tcp, udp))
            })?;
            let i = self
                .st
                .nodes
                .iter()
                .position(|n| n.name == node.name)
                .unwrap_or(0);
            if tx[i] < 12 {
                bail!("{} sent only {} frames for it", node.name, tx[i]);
            }
            parts.push(format!(
                "{} ({}): TCP from {}:{:?}, UDP from :{:?}, ping ok, closed port refused (RST, ICMP port unreachable)",
                p.name, node.name, node.ip, tcp, udp
            ));
        }
        Ok(parts.join("; "))
    }

    /// TCP and UDP to a port the world server does not serve are refused at the pod: the RST
    /// and the ICMP port unreachable come back through masquerade (the latter translated back).
    fn refused(&self, p: &PodState) -> Result<()> {
        let closed = SocketAddr::from((WORLD_ADDR, 9));
        for extra in [
            &["--wait-ms", "2000"][..],
            &["--wait-ms", "2000", "--udp", "--connect"],
        ] {
            let a = self.whoami(&p.netns, closed, 1, extra)?;
            if a.iter().any(|a| a.error.as_deref() != Some("refused")) {
                bail!(
                    "{} -> {closed} ({}): {:?}, not refused (the world's answer did not come back)",
                    p.name,
                    if extra.len() > 2 { "UDP" } else { "TCP" },
                    a.iter().map(|a| a.error.clone()).collect::<Vec<_>>()
                );
            }
        }
        Ok(())
    }

    /// A CiliumNetworkPolicy allowing pod A's egress only to the cluster blocks its TCP, UDP
    /// and ping to the world (counted `policy_denied` on its node); removing it restores them.
    pub(super) fn world_policy(&self) -> Result<String> {
        self.world_ns()?;
        let _srv = self.world_server(30)?;
        let (a, n1) = (&self.a, self.node(&self.a));
        Self::seen_from_node(&self.ask_world(a, false, 1, 2000)?, n1, false)
            .context("before the policy")?;
        let policy = json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "world-denied", "namespace": a.namespace},
            "spec": {
                "endpointSelector": {"matchLabels": a.labels},
                "egress": [{"toEntities": ["cluster"]}],
            },
        });
        let before = counters(n1)?;
        let took = self.publish_objects(&[policy]);
        let body = (|| -> Result<String> {
            let took = took?;
            let tcp = self.ask_world(a, false, 1, 1000)?;
            let udp = self.ask_world(a, true, 1, 1000)?;
            let ping = self.ping_world(a)?;
            if tcp.iter().any(|x| x.error.is_none()) || udp.iter().any(|x| x.error.is_none()) {
                bail!("the world answered {} despite the policy", a.name);
            }
            if ping {
                bail!("ping to the world answered despite the policy");
            }
            let denied = delta(&before, &counters(n1)?, "/drops/policy_denied");
            if denied < 3 {
                bail!("{} counted only {denied} policy_denied drops", n1.name);
            }
            Ok(format!(
                "egress toEntities cluster (in force in {:.1}s): TCP, UDP and ping denied, {} policy_denied +{denied}",
                took.as_secs_f64(),
                n1.name
            ))
        })();
        let restored = self.publish_objects(&[]);
        let d = body?;
        restored.context("removing the policy")?;
        Self::seen_from_node(&self.ask_world(a, false, 1, 2000)?, n1, false)
            .context("after the policy was removed")?;
        Ok(format!("{d}; reached again once removed"))
    }

    /// The world floods each node's address with SYNs across the whole masquerade range (no
    /// flow holds those ports): every one is counted `masq_no_entry`, none reaches a pod (the
    /// pods' own receive counters do not move).
    pub(super) fn world_flood(&self) -> Result<String> {
        let ns = self.world_ns()?.to_string();
        let span = MASQ_PORTS.end() - MASQ_PORTS.start() + 1;
        let mut parts = Vec::new();
        for n in &self.st.nodes[..2] {
            let pods: Vec<&PodState> = self.st.pods.iter().filter(|p| p.node == n.name).collect();
            let rx_before = self.pods_rx(&pods)?;
            let before = counters(n)?;
            let to = format!("{}:{}", n.ip, MASQ_PORTS.start());
            let (count, span) = (span.to_string(), span.to_string());
            self.probe_in(
                &ns,
                &[
                    "syn-flood",
                    "--from",
                    &WORLD_ADDR.to_string(),
                    "--to",
                    &to,
                    "--count",
                    &count,
                    "--dport-span",
                    &span,
                ],
            )
            .context("the flood")?;
            std::thread::sleep(Duration::from_millis(300));
            let after = counters(n)?;
            let rx_after = self.pods_rx(&pods)?;
            let dropped = delta(&before, &after, "/drops/masq_no_entry");
            let to_pods = rx_after.saturating_sub(rx_before);
            // A leak would bring the pods a good part of the SYNs; a stray packet per pod
            // (the kernel's own neighbour traffic) is noise.
            let noise = (pods.len() as u64).max(3);
            if to_pods > noise {
                bail!(
                    "{}'s pods received {to_pods} packets during the flood",
                    n.name
                );
            }
            let want = u64::from(MASQ_PORTS.end() - MASQ_PORTS.start() + 1);
            if dropped < want / 2 {
                bail!(
                    "{} counted only {dropped} masq_no_entry drops of {want} SYNs",
                    n.name
                );
            }
            parts.push(format!(
                "{}: {want} SYNs over {}-{}, masq_no_entry +{dropped}, its {} pods +{to_pods} packets",
                n.name,
                MASQ_PORTS.start(),
                MASQ_PORTS.end(),
                pods.len()
            ));
        }
        Ok(parts.join("; "))
    }

    /// The packets the pods' own `eth0`s received, summed.
    fn pods_rx(&self, pods: &[&PodState]) -> Result<u64> {
        let mut sum = 0;
        for p in pods {
            let o = self.exec(p, &["cat", "/sys/class/net/eth0/statistics/rx_packets"])?;
            sum += String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .with_context(|| format!("rx_packets of {}", p.name))?;
        }
        Ok(sum)
    }
}
