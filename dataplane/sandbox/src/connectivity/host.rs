//! Host ↔ pod checks: the node's stack reaching its pods as the kubelet's probes do (through
//! the host pair, as identity `host`), a host-network server reached from pods on both nodes,
//! the node reaching a ClusterIP, and a pod reaching itself through its Service (hairpin,
//! source-NAT'd to the service loopback address 169.254.42.1).

use anyhow::{bail, Context, Result};

use crate::{PodState, ECHO_HTTP_PORT};

use super::{errors, parse_answers, Env};

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
