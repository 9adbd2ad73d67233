//! DNS-aware policy checks (CiliumNetworkPolicy `toFQDNs` and `rules: dns`), against the
//! default sandbox's cluster DNS: the pod `kube-system/dns-server` (`k8s-app: kube-dns`, on
//! the second node, behind the Service `kube-dns`) runs `vireo probe dns-server` for the
//! length of a check, answering [`ALLOWED_NAME`] with [`WORLD_ADDR`] and [`OTHER_NAME`] with
//! [`WORLD_OTHER_ADDR`], two addresses of the world namespace where echo servers listen.
//!
//! - `policy-fqdn`: a client of the first node allowed DNS to kube-dns (`rules: dns: *`) and
//!   `toFQDNs: matchName` [`ALLOWED_NAME`] on the world port is denied both addresses before it
//!   looks the name up (nothing learned yet), then, once it resolved both names through the
//!   Service, reaches [`ALLOWED_NAME`]'s address and is still denied the other's (counted
//!   `policy_denied` on its node, `policy trace` and `monitor` agreeing); `vireo fqdn cache
//!   list` on its node shows the learned name and nothing for the other one.
//! - `policy-dns-refused`: with `rules: dns` allowing [`ALLOWED_NAME`] only, that name is
//!   answered by the server, and a query for [`OTHER_NAME`] (through the Service and to the
//!   pod directly) is answered REFUSED by Vireo, from the address the client asked, counted
//!   (`refused`) on the client's node, and never reaches the server (its log shows no such
//!   query), while without the policy the server answers it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use vireo_api as api;

use crate::connectivity::{Backends, Env, ProbeServer};
use crate::{
    NodeState, PodState, DNS_CLUSTER_IP, DNS_NAMESPACE, DNS_POD, WORLD_ADDR, WORLD_OTHER_ADDR,
};

use super::{cnp, Attempt};

/// The name the `toFQDNs` rule allows (answered with [`WORLD_ADDR`]).
const ALLOWED_NAME: &str = "allowed.vireo.test";
/// The other name (answered with [`WORLD_OTHER_ADDR`]).
const OTHER_NAME: &str = "other.vireo.test";
/// The world servers' TCP port.
const WORLD_PORT: u16 = 8080;
/// The TTL of the DNS server's answers: short, so that what a run learned is gone (for new
/// flows) when the check runs again soon after.
const DNS_TTL: u32 = 10;
/// How long a DNS query may wait for its answer.
const DNS_WAIT_MS: u64 = 2000;
/// DNS rcodes.
const NOERROR: u64 = 0;
const REFUSED: u64 = 5;

/// The kube-dns pod's selector, as a `toEndpoints` entry (the namespace named, since the
/// policy lives in another one).
fn kube_dns() -> Value {
    json!({"matchLabels": {"k8s:io.kubernetes.pod.namespace": DNS_NAMESPACE,
                           "k8s-app": "kube-dns"}})
}

/// Egress to kube-dns on 53/UDP with these `rules: dns`.
fn dns_rule(dns: Value) -> Value {
    json!({
        "toEndpoints": [kube_dns()],
        "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}], "rules": {"dns": dns}}],
    })
}

/// One `dns-query` answer.
#[derive(Debug)]
struct DnsAnswer {
    rcode: u64,
    ips: Vec<Ipv4Addr>,
    from: String,
    ms: f64,
}

fn parse_dns_answer(out: &str) -> Result<DnsAnswer> {
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("dns-query: {out}"))?;
    if let Some(e) = v["error"].as_str() {
        bail!(
            "no answer ({e}) after {:.0} ms",
            v["ms"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(DnsAnswer {
        rcode: v["rcode"]
            .as_u64()
            .ok_or_else(|| anyhow!("dns-query: no rcode in {out}"))?,
        ips: v["answers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str()?.parse().ok())
            .collect(),
        from: v["from"].as_str().unwrap_or("").to_string(),
        ms: v["ms"].as_f64().unwrap_or(0.0),
    })
}

/// The names the DNS server's log shows it received, in order.
fn queries_seen(log: &str) -> Vec<String> {
    serde_json::Deserializer::from_str(log)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .filter_map(|v| v["query"].as_str().map(String::from))
        .collect()
}

impl Env {
    /// The default sandbox's DNS server pod.
    fn dns_pod(&self) -> Result<&PodState> {
        self.st.pod(&format!("{DNS_NAMESPACE}/{DNS_POD}")).context(
            "the DNS checks' server pod comes with the default sandbox \
                 (`vireo sandbox up` without --manifests; made by an older one: down and up again)",
        )
    }

    /// The DNS server in its pod (on UDP 53 of its address) for at most `secs`.
    fn dns_server(&self, dns: &PodState, secs: u64) -> Result<ProbeServer> {
        let (listen, secs, ttl) = (
            format!("{}:53", dns.ip),
            secs.to_string(),
            DNS_TTL.to_string(),
        );
        let (allowed, other) = (
            format!("{ALLOWED_NAME}={WORLD_ADDR}"),
            format!("{OTHER_NAME}={WORLD_OTHER_ADDR}"),
        );
        self.spawn_probe(
            dns,
            &[
                "dns-server",
                "--listen",
                &listen,
                "--record",
                &allowed,
                "--record",
                &other,
                "--ttl",
                &ttl,
                "--timeout",
                &secs,
            ],
        )
    }

    /// Echo servers on [`WORLD_PORT`] of both world addresses, for at most `secs`.
    fn fqdn_world_servers(&self, secs: u64) -> Result<Backends> {
        let ns = self.st.world.as_deref().ok_or_else(|| {
            anyhow!("this sandbox has no world namespace (made by an older `vireo sandbox up`: down and up again)")
        })?;
        let lo = self.exec_in(ns, &["ip", "-4", "addr", "show", "dev", "lo"])?;
        if !String::from_utf8_lossy(&lo.stdout).contains(&format!("{WORLD_OTHER_ADDR}/32")) {
            bail!("the world namespace has no {WORLD_OTHER_ADDR} (made by an older `vireo sandbox up`: down and up again)");
        }
        let secs = secs.to_string();
        let mut b = Backends(Vec::new());
        for ip in [WORLD_ADDR, WORLD_OTHER_ADDR] {
            let tcp = format!("{ip}:{WORLD_PORT}");
            b.0.push(self.spawn_probe_in(ns, &["echo-server", "--tcp", &tcp, "--timeout", &secs])?);
        }
        Ok(b)
    }

    /// One query for `name` from `p` to `server`.
    fn dns_ask(&self, p: &PodState, server: SocketAddr, name: &str) -> Result<DnsAnswer> {
        let (to, wait) = (server.to_string(), DNS_WAIT_MS.to_string());
        let out = self.probe(
            p,
            &[
                "dns-query",
                "--server",
                &to,
                "--name",
                name,
                "--wait-ms",
                &wait,
            ],
        )?;
        parse_dns_answer(&out).with_context(|| format!("{} asking {server} for {name}", p.name))
    }

    /// `p` asks `server` for `name` and gets `want` (NOERROR) from `server` itself.
    fn resolves(
        &self,
        p: &PodState,
        server: SocketAddr,
        name: &str,
        want: Ipv4Addr,
    ) -> Result<DnsAnswer> {
        let a = self.dns_ask(p, server, name)?;
        if a.rcode != NOERROR || a.ips != [want] {
            bail!(
                "{} asking {server} for {name}: rcode {}, addresses {:?}, want NOERROR {want}",
                p.name,
                a.rcode,
                a.ips
            );
        }
        if a.from != server.to_string() {
            bail!("the answer for {name} came from {}, not {server}", a.from);
        }
        Ok(a)
    }

    /// `vireo fqdn cache list` of a node.
    fn fqdn_cache(&self, n: &NodeState) -> Result<Value> {
        api::call(&n.api, &api::Request::MapGet { map: "fqdn".into() })
            .with_context(|| format!("{}: fqdn cache list", n.name))
    }

    /// The unexpired entries of `ep` in a node's FQDN cache, as `(name, ip)`.
    fn fqdn_learned(&self, n: &NodeState, ep: Ipv4Addr) -> Result<Vec<(String, String)>> {
        let v = self.fqdn_cache(n)?;
        Ok(v["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["endpoint"] == ep.to_string() && e["zombie"] != true)
            .filter(|e| e["ttl_remaining"].as_i64().unwrap_or(0) > 0)
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
                (s("name"), s("ip"))
            })
            .collect())
    }

    /// A DNS counter (`refused`, `learned`, ...) of a node.
    fn dns_counter(&self, n: &NodeState, name: &str) -> Result<u64> {
        Ok(self.fqdn_cache(n)?["counters"][name].as_u64().unwrap_or(0))
    }

    /// An attempt from `from` to a world address (the name it stands for in `dest`), judged
    /// by `from`'s egress policy on its own node.
    fn fqdn_attempt(&self, from: &PodState, ip: Ipv4Addr, name: &str, allowed: bool) -> Attempt {
        Attempt {
            from: from.name.clone(),
            src: from.ip,
            netns: from.netns.clone(),
            to: SocketAddr::from((ip, WORLD_PORT)),
            server: ip,
            dport: WORLD_PORT,
            dest: format!("{name} ({ip}):{WORLD_PORT}"),
            allowed,
            enforcer: from.node.clone(),
        }
    }

    /// `toFQDNs: matchName`: the allowed name's address is reached once the client looked it
    /// up (and not before); the other name's address stays denied.
    pub(in crate::connectivity) fn policy_fqdn(&self) -> Result<String> {
        let client = self.policy_pod("client-allowed")?;
        let dns = self.dns_pod()?;
        let n1 = self.node(client);
        let _world = self.fqdn_world_servers(60)?;
        let server = self.dns_server(dns, 60)?;
        let via = SocketAddr::from((DNS_CLUSTER_IP, 53));
        let (allowed, other) = (
            self.fqdn_attempt(client, WORLD_ADDR, ALLOWED_NAME, true),
            self.fqdn_attempt(client, WORLD_OTHER_ADDR, OTHER_NAME, false),
        );
        let body = || -> Result<String> {
            self.resolves(client, via, ALLOWED_NAME, WORLD_ADDR)
                .context("before the policy")?;
            self.resolves(client, via, OTHER_NAME, WORLD_OTHER_ADDR)
                .context("before the policy")?;
            self.all_reach(&[allowed.clone(), other.clone()], "before")?;
            let policy = cnp(
                "fqdn",
                json!({
                    "endpointSelector": {"matchLabels": client.labels},
                    "egress": [
                        dns_rule(json!([{"matchPattern": "*"}])),
                        {"toFQDNs": [{"matchName": ALLOWED_NAME}],
                         "toPorts": [{"ports": [{"port": WORLD_PORT.to_string(), "protocol": "TCP"}]}]},
                    ],
                }),
            );
            let d = self.policy_scope(|| {
                let took = self.publish_objects(&[policy])?;
                // What an earlier run learned must have expired: the first attempts prove
                // that nothing but a lookup allows the address.
                let t = Instant::now();
                while !self.fqdn_learned(n1, client.ip)?.is_empty() {
                    if t.elapsed() > Duration::from_secs(u64::from(DNS_TTL) + 3) {
                        bail!(
                            "{}'s FQDN cache keeps {:?} for {} past their TTL",
                            n1.name,
                            self.fqdn_learned(n1, client.ip)?,
                            client.name
                        );
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                let unlearned = self.expect_reach(&[
                    Attempt {
                        allowed: false,
                        ..allowed.clone()
                    },
                    other.clone(),
                ])?;
                let learned_before = self.dns_counter(n1, "learned")?;
                let a = self.resolves(client, via, ALLOWED_NAME, WORLD_ADDR)?;
                let o = self.resolves(client, via, OTHER_NAME, WORLD_OTHER_ADDR)?;
                let cache = self.fqdn_learned(n1, client.ip)?;
                let want = (ALLOWED_NAME.to_string(), WORLD_ADDR.to_string());
                if cache != [want.clone()] {
                    bail!(
                        "{}'s FQDN cache for {} holds {cache:?} after the lookups, want [{want:?}]",
                        n1.name,
                        client.name
                    );
                }
                let learned = self
                    .dns_counter(n1, "learned")?
                    .saturating_sub(learned_before);
                let r = self.expect_reach(&[allowed.clone(), other.clone()])?;
                Ok(format!(
                    "egress rules: dns * to kube-dns + toFQDNs {ALLOWED_NAME} (in force in {:.1}s): \
                     before a lookup {}; {ALLOWED_NAME} -> {WORLD_ADDR} ({:.1} ms), {OTHER_NAME} -> \
                     {WORLD_OTHER_ADDR} ({:.1} ms) through {via}, {} learned +{learned}, fqdn cache \
                     {ALLOWED_NAME}={WORLD_ADDR} only; then {}",
                    took.as_secs_f64(),
                    unlearned.brief(),
                    a.ms,
                    o.ms,
                    n1.name,
                    r.brief()
                ))
            })?;
            self.all_reach(
                &[allowed.clone(), other.clone()],
                "after the policy was removed",
            )?;
            Ok(d)
        };
        let r = body();
        let log = server.stop();
        let d = r?;
        let seen = queries_seen(&log);
        let count = |n: &str| seen.iter().filter(|q| *q == n).count();
        if count(ALLOWED_NAME) < 2 || count(OTHER_NAME) < 2 {
            bail!("the DNS server did not see every lookup: {seen:?}");
        }
        Ok(format!("{d}; all reach both before and after"))
    }

    /// `rules: dns` allowing one name: a query for another is answered REFUSED by Vireo and
    /// never reaches the server.
    pub(in crate::connectivity) fn policy_dns_refused(&self) -> Result<String> {
        let client = self.policy_pod("client-other")?;
        let dns = self.dns_pod()?;
        let n1 = self.node(client);
        let via = SocketAddr::from((DNS_CLUSTER_IP, 53));
        let direct = SocketAddr::from((dns.ip, 53));
        // Without the policy the server answers the name.
        let before = self.dns_server(dns, 20)?;
        let r = self.resolves(client, via, OTHER_NAME, WORLD_OTHER_ADDR);
        let log = before.stop();
        r.context("before the policy")?;
        if !queries_seen(&log).iter().any(|q| q == OTHER_NAME) {
            bail!(
                "before the policy, the DNS server did not log the query for {OTHER_NAME}: {log}"
            );
        }
        let policy = cnp(
            "dns-refused",
            json!({
                "endpointSelector": {"matchLabels": client.labels},
                "egress": [dns_rule(json!([{"matchName": ALLOWED_NAME}]))],
            }),
        );
        let server = self.dns_server(dns, 30)?;
        let r = self.policy_scope(|| {
            let took = self.publish_objects(&[policy])?;
            let refused_before = self.dns_counter(n1, "refused")?;
            let ok = self.resolves(client, via, ALLOWED_NAME, WORLD_ADDR)?;
            let mut parts = Vec::new();
            for to in [via, direct] {
                let a = self.dns_ask(client, to, OTHER_NAME)?;
                if a.rcode != REFUSED || !a.ips.is_empty() {
                    bail!(
                        "{} asking {to} for {OTHER_NAME} under rules: dns {ALLOWED_NAME}: rcode {} with {:?}, want REFUSED",
                        client.name,
                        a.rcode,
                        a.ips
                    );
                }
                if a.from != to.to_string() {
                    bail!("the refusal for {OTHER_NAME} came from {}, not {to}", a.from);
                }
                parts.push(format!("via {to} REFUSED in {:.1} ms", a.ms));
            }
            let refused = self
                .dns_counter(n1, "refused")?
                .saturating_sub(refused_before);
            if refused < 2 {
                bail!(
                    "{} counted {refused} refused DNS queries for the 2 it refused",
                    n1.name
                );
            }
            Ok(format!(
                "egress rules: dns matchName {ALLOWED_NAME} to kube-dns (in force in {:.1}s): \
                 {ALLOWED_NAME} answered by the server ({:.1} ms); {OTHER_NAME} {}; {} refused +{refused}",
                took.as_secs_f64(),
                ok.ms,
                parts.join(", "),
                n1.name
            ))
        });
        let log = server.stop();
        let d = r?;
        let seen = queries_seen(&log);
        if seen.iter().any(|q| q == OTHER_NAME) || !seen.iter().any(|q| q == ALLOWED_NAME) {
            bail!(
                "under the policy the DNS server received {seen:?}: want {ALLOWED_NAME} and never {OTHER_NAME}"
            );
        }
        // And once the policy is gone the server answers the name again.
        let after = self.dns_server(dns, 20)?;
        let r = self.resolves(client, via, OTHER_NAME, WORLD_OTHER_ADDR);
        let _ = after.stop();
        r.context("after the policy was removed")?;
        Ok(format!(
            "{d}; the server received only {seen:?}; without the policy {OTHER_NAME} is answered by it before and after"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_answers_and_server_logs() {
        let a = parse_dns_answer(
            r#"{"name":"a","server":"10.96.0.53:53","from":"10.96.0.53:53","rcode":5,"rcode_name":"Refused","answers":[],"ms":0.4}"#,
        )
        .unwrap();
        assert_eq!(a.rcode, REFUSED);
        assert!(a.ips.is_empty());
        assert_eq!(a.from, "10.96.0.53:53");
        let a = parse_dns_answer(r#"{"rcode":0,"answers":["203.0.113.10"],"from":"x"}"#).unwrap();
        assert_eq!(a.ips, [WORLD_ADDR]);
        assert!(parse_dns_answer(r#"{"name":"a","error":"timeout","ms":2000.0}"#).is_err());
        let log = "{\"listening\":\"10.244.2.30:53\"}\n{\"query\":\"allowed.vireo.test\",\"from\":\"10.244.1.5:4000\"}\n\
                   {\"unreadable\":\"x\",\"bytes\":3}\n{\"query\":\"other.vireo.test\",\"from\":\"y\"}\n{\"queries\":3} some stderr";
        assert_eq!(queries_seen(log), [ALLOWED_NAME, OTHER_NAME]);
        let r = dns_rule(json!([{"matchPattern": "*"}]));
        assert_eq!(r["toPorts"][0]["rules"]["dns"][0]["matchPattern"], "*");
        assert_eq!(
            r["toEndpoints"][0]["matchLabels"]["k8s:io.kubernetes.pod.namespace"],
            DNS_NAMESPACE
        );
    }
}
