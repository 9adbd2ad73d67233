//! Pod-to-pod checks: ICMP, TCP and UDP on one node and across nodes (with VXLAN on the
//! underlay carrying the sender's identity), large transfers and the path MTU.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::{PodState, UNDERLAY_MTU};

use super::{counters, delta, identity_of, Env};
use crate::capture::{read_vxlan_pcap, VxlanSeen};

/// Pod-to-pod checks.
impl Env {
    pub(super) fn ping(&self, from: &PodState, to: &PodState, count: u32) -> Result<()> {
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

    pub(super) fn same_node_icmp(&self) -> Result<String> {
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

    pub(super) fn cross_node_icmp(&self) -> Result<String> {
        let (((), [tx1, tx2]), seen) =
            self.captured(|| self.through_agents(|| self.ping(&self.a, &self.c, 5)))?;
        let id = self.expect_vni(&seen, &self.a, &self.c)?;
        if tx1 < 10 || tx2 < 10 {
            bail!("agents forwarded {tx1} and {tx2} frames for 5 pings and 5 replies");
        }
        Ok(format!("{} -> {}: 5/5 replies; underlay saw VXLAN VNI {id}; agents forwarded {tx1}+{tx2} frames", self.a.name, self.c.name))
    }

    pub(super) fn tcp(&self, from: &PodState, to: &PodState, bytes: u64) -> Result<String> {
        let listen = format!("{}:5201", to.ip);
        let v = self.tcp_in(&from.netns, &to.netns, &listen, bytes, 120)?;
        Ok(format!(
            "{} MiB intact at {:.0} Mbit/s",
            bytes >> 20,
            v["mbit_s"].as_f64().unwrap_or(0.0)
        ))
    }

    pub(super) fn cross_node_tcp(&self) -> Result<String> {
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

    pub(super) fn udp(&self, from: &PodState, to: &PodState, count: u32) -> Result<()> {
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

    pub(super) fn cross_node_udp(&self) -> Result<String> {
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
    pub(super) fn cross_node_replies(&self) -> Result<String> {
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

    pub(super) fn same_node_64mib(&self) -> Result<String> {
        let (d, [tx1, _]) = self.through_agents(|| self.tcp(&self.a, &self.b, 64 << 20))?;
        if tx1 < (64 << 20) / 1500 {
            bail!("only {tx1} frames through the agent for 64 MiB");
        }
        Ok(format!("{} -> {}: {d}", self.a.name, self.b.name))
    }

    pub(super) fn cross_node_64mib(&self) -> Result<String> {
        let (d, [tx1, tx2]) = self.through_agents(|| self.tcp(&self.a, &self.c, 64 << 20))?;
        if tx1 < (64 << 20) / 1500 || tx2 < 1000 {
            bail!("only {tx1}/{tx2} frames through the agents for 64 MiB");
        }
        Ok(format!("{} -> {}: {d}", self.a.name, self.c.name))
    }

    /// A pod whose MTU is too big for the tunnel learns the path MTU from Vireo's ICMP.
    pub(super) fn pmtu(&self) -> Result<String> {
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
