//! The agent's side of DNS-aware policy: the `fqdn` settings handed to the fast path's cache,
//! its garbage collection (expired names no tracked flow uses), and `vireo fqdn cache list`
//! (`vireo map get fqdn`).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vireo_control::config::fqdn::FqdnConfig;
use vireo_dataplane::fqdn::Settings;
use vireo_dataplane::tables::Tables;

use super::Agent;

/// How often expired names are collected.
const COLLECT_EVERY: Duration = Duration::from_secs(10);

/// Conntrack entries read per collection at most (the zombies of flows past it are kept).
const MAX_FLOWS: usize = 1 << 20;

/// The fast path's settings from the configuration.
pub(super) fn settings(c: &FqdnConfig) -> Settings {
    Settings {
        min_ttl: c.tofqdns_min_ttl,
        max_ips_per_name: c.tofqdns_max_ip_per_hostname,
        reject_rcode: c.tofqdns_dns_reject_response_code.rcode(),
    }
}

/// Drops the names of endpoints gone, and expired names no tracked flow from their endpoint
/// to their address uses (those stay as zombies, so the flow outlives the TTL). Returns the
/// entries dropped.
pub(super) fn collect(t: &Tables) -> usize {
    let cache = &t.fqdn;
    if cache.is_empty() {
        return 0;
    }
    let now = t.ct.as_ref().map_or(cache.now(), |c| c.now());
    let expired = cache
        .dump()
        .iter()
        .any(|(_, n)| n.iter().any(|(_, k)| k.expires <= now));
    if !expired {
        // Only gone endpoints to drop.
        return cache.collect(now, |ep| t.endpoints.contains_key(&ep), |_, _| true);
    }
    let flows: HashSet<(u32, u32)> =
        t.ct.as_ref()
            .map(|ct| {
                ct.dump(MAX_FLOWS)
                    .iter()
                    .map(|e| (u32::from(e.src), u32::from(e.dst)))
                    .collect()
            })
            .unwrap_or_default();
    cache.collect(
        now,
        |ep| t.endpoints.contains_key(&ep),
        |ep, ip| flows.contains(&(ep, ip)),
    )
}

/// The names each endpoint knows each address by now (unexpired), for `vireo policy trace`.
pub(super) fn names(t: &Tables) -> impl Fn(Ipv4Addr, Ipv4Addr) -> Vec<String> {
    let cache = t.fqdn.clone();
    let now = t.ct.as_ref().map_or(cache.now(), |c| c.now());
    move |ep, ip| {
        cache
            .endpoint(u32::from(ep))
            .map(|n| {
                n.names(u32::from(ip))
                    .iter()
                    .filter(|k| k.expires > now)
                    .map(|k| k.name.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Agent {
    /// Collects the FQDN cache when it is time ([`collect`]).
    pub(super) fn fqdn_collect(&mut self, last: &mut Instant) {
        if last.elapsed() < COLLECT_EVERY {
            return;
        }
        *last = Instant::now();
        let n = collect(&self.tables.load());
        if n > 0 {
            tracing::debug!(dropped = n, "fqdn cache collected");
        }
    }

    /// `vireo fqdn cache list`: per endpoint (with its pod), the names, addresses and the
    /// seconds left (negative: expired, kept while a flow uses it), and the DNS counters.
    pub(super) fn fqdn_list(&self) -> Value {
        let t = self.tables.load();
        let now = t.ct.as_ref().map_or(t.fqdn.now(), |c| c.now());
        let mut entries = Vec::new();
        for (ep, names) in t.fqdn.dump() {
            let pod = self.control.pod_name(ep);
            let mut rows: Vec<Value> = names
                .iter()
                .map(|(ip, k)| {
                    json!({
                        "endpoint": ep.to_string(),
                        "pod": pod,
                        "name": &*k.name,
                        "ip": ip.to_string(),
                        "ttl_remaining": i64::from(k.expires) - i64::from(now),
                        "zombie": k.expires <= now,
                    })
                })
                .collect();
            rows.sort_by(|a, b| {
                (a["name"].as_str(), a["ip"].as_str()).cmp(&(b["name"].as_str(), b["ip"].as_str()))
            });
            entries.extend(rows);
        }
        json!({
            "entries": entries,
            "counters": t.fqdn.counters.snapshot(),
            "settings": {
                "tofqdns-min-ttl": t.fqdn.settings().min_ttl,
                "tofqdns-max-ip-per-hostname": t.fqdn.settings().max_ips_per_name,
                "tofqdns-dns-reject-response-code": if t.fqdn.settings().reject_rcode == 3 { "nameError" } else { "refused" },
            },
        })
    }
}
