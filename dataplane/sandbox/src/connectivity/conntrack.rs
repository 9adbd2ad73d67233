//! Conntrack checks: a connection survives agent reloads; a SYN flood fills the table to its
//! limit without touching an established connection.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use vireo_api as api;

use super::{counters, delta, Env, ProbeServer};

/// Conntrack checks.
impl Env {
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
    pub(super) fn survives_reload(&self) -> Result<String> {
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
    pub(super) fn syn_flood(&self) -> Result<String> {
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
}
