//! Policy beyond TCP and UDP connections: other IP protocols (GRE, SCTP) and spoofed ICMP
//! errors judged like any flow, and an established stream cut when its policy is revoked.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use vireo_api as api;
use vireo_control::trace;

use crate::{PodState, ECHO_HTTP_PORT};

use super::{server_policy, Env};
use crate::connectivity::{epoch_ms, first_json, ProbeServer};

/// Packets `raw-send` sends per protocol and phase.
const RAW_COUNT: u32 = 40;

/// The SCTP port a rule allows (Diameter's) and one it does not.
const SCTP_PORT: u16 = 3868;
const SCTP_OTHER_PORT: u16 = 3869;

/// What arrived at the server in one phase of `policy-other-protocols`, and the drops counted
/// meanwhile (per node).
struct Arrived {
    gre: u64,
    sctp: u64,
    sctp_other: u64,
    icmp_errors: u64,
    policy_denied: Vec<u64>,
    icmp_unrelated: Vec<u64>,
}

impl Arrived {
    fn brief(&self, nodes: &[String]) -> String {
        let per = |v: &[u64]| {
            nodes
                .iter()
                .zip(v)
                .map(|(n, d)| format!("{n} +{d}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "arrived GRE {}/{RAW_COUNT}, SCTP:{SCTP_PORT} {}/{RAW_COUNT}, SCTP:{SCTP_OTHER_PORT} {}, \
             spoofed ICMP errors {}; policy_denied {}; icmp_unrelated {}",
            self.gre,
            self.sctp,
            self.sctp_other,
            self.icmp_errors,
            per(&self.policy_denied),
            per(&self.icmp_unrelated)
        )
    }
}

/// The count a `raw-recv` printed, by key (`None`: all of them).
fn received(report: &str, key: Option<&str>) -> Result<u64> {
    let v = first_json(report).with_context(|| format!("raw-recv: {report}"))?;
    if v["count"].is_null() {
        bail!("raw-recv printed no count: {report}");
    }
    Ok(match key {
        None => v["count"].as_u64().unwrap_or(0),
        Some(k) => v["by"][k].as_u64().unwrap_or(0),
    })
}

impl Env {
    /// `raw-recv` of `proto` from `from` in the server pod for `secs`.
    fn raw_receiver(
        &self,
        srv: &PodState,
        proto: &str,
        from: &PodState,
        secs: u64,
    ) -> Result<ProbeServer> {
        let (secs, from) = (secs.to_string(), from.ip.to_string());
        self.spawn_probe(
            srv,
            &[
                "raw-recv",
                "--proto",
                proto,
                "--from",
                &from,
                "--seconds",
                &secs,
            ],
        )
    }

    /// One phase: receivers in the server, then from `client` 40 GRE packets, 40 SCTP INITs to
    /// [`SCTP_PORT`] (and, with `other_port`, 40 to [`SCTP_OTHER_PORT`]) and, with `icmp`, 40
    /// spoofed ICMP port-unreachable errors; what arrived.
    fn raw_phase(
        &self,
        srv: &PodState,
        client: &PodState,
        icmp: bool,
        other_port: bool,
    ) -> Result<Arrived> {
        let drops_before = self.drops()?;
        let secs = 3;
        let rx_gre = self.raw_receiver(srv, "gre", client, secs)?;
        let rx_sctp = self.raw_receiver(srv, "sctp", client, secs)?;
        let rx_icmp = self.raw_receiver(srv, "icmp", client, secs)?;
        let dst = srv.ip.to_string();
        let count = RAW_COUNT.to_string();
        let mut sends = vec![
            vec!["--proto", "gre"],
            vec!["--proto", "sctp", "--port", "3868"],
        ];
        if other_port {
            sends.push(vec!["--proto", "sctp", "--port", "3869"]);
        }
        if icmp {
            sends.push(vec!["--proto", "icmp"]);
        }
        let mut sent = Vec::new();
        for s in sends {
            let mut args = vec!["raw-send", "--dst", &dst, "--count", &count];
            args.extend(s);
            sent.push(
                self.probe(client, &args)
                    .with_context(|| format!("{args:?}")),
            );
        }
        let (ok_g, gre) = rx_gre.finish();
        let (ok_s, sctp) = rx_sctp.finish();
        let (ok_i, icmp_r) = rx_icmp.finish();
        for s in sent {
            let out = s?;
            if !out.contains(&format!("\"sent\":{RAW_COUNT}")) {
                bail!("raw-send did not send all {RAW_COUNT}: {out}");
            }
        }
        if !(ok_g && ok_s && ok_i) {
            bail!("a raw receiver failed: {gre}; {sctp}; {icmp_r}");
        }
        // Counters settle (the workers count as they go; the API reads them a moment later).
        std::thread::sleep(Duration::from_millis(200));
        let after = self.drops()?;
        let d = |r: &str| -> Vec<u64> {
            drops_before
                .iter()
                .zip(&after)
                .map(|(b, a)| {
                    a[r].as_u64()
                        .unwrap_or(0)
                        .saturating_sub(b[r].as_u64().unwrap_or(0))
                })
                .collect()
        };
        Ok(Arrived {
            gre: received(&gre, None)?,
            sctp: received(&sctp, Some("3868"))?,
            sctp_other: received(&sctp, Some("3869"))?,
            icmp_errors: received(&icmp_r, Some("3/3"))?,
            policy_denied: d("policy_denied"),
            icmp_unrelated: d("icmp_unrelated"),
        })
    }

    /// `policy trace` of `client -> srv:port/SCTP` on the server's node.
    fn sctp_trace(&self, client: &PodState, srv: &PodState, port: u16) -> Result<String> {
        let n = self.node(srv);
        let t = api::call(
            &n.api,
            &api::Request::PolicyTrace {
                src: trace::EndpointSpec::Ip { ip: client.ip },
                dst: trace::EndpointSpec::Ip { ip: srv.ip },
                dport: trace::PortProto { port, proto: 132 },
            },
        )
        .with_context(|| format!("{}: policy trace", n.name))?;
        Ok(t["verdict"].as_str().unwrap_or("?").to_string())
    }

    /// GRE, SCTP and spoofed ICMP errors under policy: default deny drops them all (and counts
    /// them: `policy_denied` on the server's node, `icmp_unrelated` for the errors); an L3 rule
    /// lets GRE and SCTP through; a port rule (3868/SCTP) lets SCTP to that port through and
    /// neither GRE nor SCTP to another port.
    pub(in crate::connectivity) fn policy_other_protocols(&self) -> Result<String> {
        let (srv, other) = (self.policy_pod("server")?, self.policy_pod("client-other")?);
        let nodes: Vec<String> = self.st.nodes.iter().map(|n| n.name.clone()).collect();
        let si = self
            .st
            .nodes
            .iter()
            .position(|n| n.name == srv.node)
            .ok_or_else(|| anyhow!("no node {}", srv.node))?;
        let total = |v: &[u64]| v.iter().sum::<u64>();
        let others = |v: &[u64]| {
            v.iter()
                .enumerate()
                .filter(|(i, _)| *i != si)
                .map(|(_, d)| d)
                .sum::<u64>()
        };
        let n = u64::from(RAW_COUNT);
        // Without policy: the receivers see what is sent (else the denials below prove nothing).
        let open = self.raw_phase(srv, other, false, false)?;
        if open.gre != n || open.sctp != n {
            bail!("without any policy, {}", open.brief(&nodes));
        }
        let d = self.policy_scope(|| {
            let deny = server_policy(
                "protos-default-deny",
                json!({"ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client-local"}}]}]}),
            );
            self.publish_objects(&[deny])?;
            let a = self.raw_phase(srv, other, true, false)?;
            let mut wrong = Vec::new();
            if a.gre + a.sctp + a.icmp_errors > 0 {
                wrong.push("packets no rule allows reached the server".to_string());
            }
            if a.policy_denied[si] < 2 * n {
                wrong.push(format!(
                    "{} counted {} policy_denied for {} GRE and SCTP packets it must deny",
                    srv.node,
                    a.policy_denied[si],
                    2 * n
                ));
            }
            if others(&a.policy_denied) > 0 {
                wrong.push("a node that enforces nothing counted policy_denied".into());
            }
            if total(&a.icmp_unrelated) < n {
                wrong.push(format!(
                    "icmp_unrelated rose by {} for {n} spoofed errors quoting no flow",
                    total(&a.icmp_unrelated)
                ));
            }
            if !wrong.is_empty() {
                bail!("default deny: {}: {}", wrong.join("; "), a.brief(&nodes));
            }

            let l3 = server_policy(
                "protos-l3",
                json!({"ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client-other"}}]}]}),
            );
            self.publish_objects(&[l3])?;
            let b = self.raw_phase(srv, other, false, true)?;
            if b.gre != n || b.sctp != n || b.sctp_other != n || total(&b.policy_denied) > 0 {
                bail!(
                    "L3 allow fromEndpoints app=client-other (no toPorts) must let GRE and SCTP \
                     through, all {n} of each: {}",
                    b.brief(&nodes)
                );
            }

            let port = server_policy(
                "protos-sctp-port",
                json!({"ingress": [{
                    "fromEndpoints": [{"matchLabels": {"app": "client-other"}}],
                    "toPorts": [{"ports": [{"port": SCTP_PORT.to_string(), "protocol": "SCTP"}]}],
                }]}),
            );
            self.publish_objects(&[port])?;
            let c = self.raw_phase(srv, other, false, true)?;
            let traced = (
                self.sctp_trace(other, srv, SCTP_PORT)?,
                self.sctp_trace(other, srv, SCTP_OTHER_PORT)?,
            );
            if c.sctp != n || c.gre > 0 || c.sctp_other > 0 || c.policy_denied[si] < 2 * n {
                bail!(
                    "toPorts {SCTP_PORT}/SCTP must let exactly SCTP to {SCTP_PORT} through \
                     ({n}/{n}), no GRE and no SCTP to {SCTP_OTHER_PORT}, and count {} \
                     policy_denied on {}: {}",
                    2 * n,
                    srv.node,
                    c.brief(&nodes)
                );
            }
            if traced != ("allowed".into(), "denied".into()) {
                bail!(
                    "{}'s policy trace of {SCTP_PORT}/SCTP and {SCTP_OTHER_PORT}/SCTP says {traced:?}, \
                     the traffic said allowed and denied",
                    srv.node
                );
            }
            Ok(format!(
                "{} -> {}: no policy: GRE, SCTP {n}/{n}; default deny: {}; L3 fromEndpoints: {}; \
                 toPorts {SCTP_PORT}/SCTP: {} (policy trace agrees)",
                other.name,
                srv.name,
                a.brief(&nodes),
                b.brief(&nodes),
                c.brief(&nodes)
            ))
        })?;
        let back = self.raw_phase(srv, other, false, false)?;
        if back.gre != n || back.sctp != n {
            bail!("after the policies were removed, {}", back.brief(&nodes));
        }
        Ok(d)
    }

    /// An established stream, allowed by an allow policy, stops within a second of that policy
    /// being replaced by a deny: policy is judged on every packet, not only a flow's first.
    pub(in crate::connectivity) fn policy_revocation(&self) -> Result<String> {
        let ([srv, allowed, _, _], _s) = self.policy_setup()?;
        let port = 5501;
        let listen = format!("{}:{port}", srv.ip);
        let d = self.policy_scope(|| {
            let allow = server_policy(
                "revoke-allow",
                json!({"ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client-allowed"}}]}]}),
            );
            self.publish_objects(&[allow])?;
            let sink = self.spawn_probe(srv, &["tcp-sink", "--listen", &listen, "--seconds", "7"])?;
            // About 6 MB/s: 64 KiB every 10 ms, for at most 12 s.
            let mut client = Command::new("ip")
                .args(["netns", "exec", &allowed.netns])
                .arg(&self.exe)
                .args([
                    "probe", "tcp-client", "--to", &listen, "--bytes", "1000000000", "--pace-ms",
                    "10", "--timeout", "12",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            let started = Instant::now();
            std::thread::sleep(Duration::from_millis(1500));
            let before = self.policy_denied()?;
            let deny = server_policy(
                "revoke-deny",
                json!({"ingress": [{"fromEntities": ["all"]}],
                       "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "client-allowed"}}]}]}),
            );
            let took = self.publish_objects(&[deny]);
            let cut = epoch_ms();
            let (ok, report) = sink.finish();
            let _ = client.kill();
            let _ = client.wait();
            let took = took?;
            let after = self.policy_denied()?;
            if !ok {
                bail!("the receiver failed: {report}");
            }
            let v = first_json(&report).with_context(|| format!("tcp-sink: {report}"))?;
            let timeline: Vec<(u64, u64)> = v["timeline"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_u64()?, p[1].as_u64()?)))
                .collect();
            let at = |t: u64| {
                timeline
                    .iter()
                    .take_while(|(ms, _)| *ms <= t)
                    .last()
                    .map(|x| x.1)
                    .unwrap_or(0)
            };
            let last = timeline.last().copied().unwrap_or_default();
            let (b0, b_cut, b1) = (at(cut.saturating_sub(1000)), at(cut), at(cut + 1000));
            if last.0 < cut + 2500 {
                bail!(
                    "the receiver stopped {} ms after the deny was in force (it took {:.1}s, {:.1}s after the stream started): too soon to tell",
                    last.0 as i64 - cut as i64,
                    took.as_secs_f64(),
                    started.elapsed().as_secs_f64()
                );
            }
            if b_cut <= b0 {
                bail!("the stream did not flow under the allow policy ({b_cut} bytes at the cut)");
            }
            let late = last.1 - b1;
            let denied = |i: usize| after[i].saturating_sub(before[i]);
            let si = self
                .st
                .nodes
                .iter()
                .position(|n| n.name == srv.node)
                .unwrap_or(0);
            let counted = self
                .st
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{} +{}", n.name, denied(i)))
                .collect::<Vec<_>>()
                .join(", ");
            let summary = format!(
                "{} KiB/s before; deny in force after {:.1}s; +{} KiB in the first second after, \
                 +{late} bytes in the {:.1}s after that; policy_denied {counted}",
                (b_cut - b0) >> 10,
                took.as_secs_f64(),
                (b1 - b_cut) >> 10,
                (last.0 - cut - 1000) as f64 / 1e3
            );
            if late > 0 {
                bail!("the established stream went on after its allow was replaced by a deny: {summary}");
            }
            if denied(si) == 0 {
                bail!("{} counted no policy_denied for the cut stream: {summary}", srv.node);
            }
            if (0..after.len()).any(|i| i != si && denied(i) > 0) {
                bail!("a node that enforces nothing counted policy_denied: {summary}");
            }
            Ok(format!(
                "{} -> {}:{port} (allowed fromEndpoints, then ingressDeny): {summary}",
                allowed.name, srv.name
            ))
        })?;
        self.all_reach(
            &[self.attempt(allowed, srv, ECHO_HTTP_PORT, true)],
            "after the policies were removed",
        )?;
        Ok(d)
    }
}
