//! `vireo map get NAME`: the operator's view of the agent's tables (the `cilium bpf … list`
//! of Vireo).

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vireo_control::config::format_mac;
use vireo_control::services::{frontend_kind_name, proto_name};

use super::Agent;

impl Agent {
    /// The operator's view of one table (`vireo map get NAME`).
    pub(super) fn map_get(&self, map: &str) -> Result<Value> {
        let t = self.tables.load();
        Ok(match map {
            "endpoints" => json!(self.endpoints()),
            "ipcache" => json!(t
                .ipcache
                .iter()
                .map(|(n, e)| json!({"prefix": n.to_string(), "identity": e.identity.0, "tunnel": e.tunnel.map(|i| i.to_string())}))
                .collect::<Vec<_>>()),
            "identities" => {
                let mut v: Vec<Value> = vireo_policy::Identity::RESERVED
                    .iter()
                    .map(|(i, n)| json!({"identity": i.0, "labels": [format!("reserved:{n}")]}))
                    .collect();
                let ids = self.control.identities();
                v.extend(ids.into_iter().map(|(i, l)| json!({"identity": i, "labels": l.split(';').collect::<Vec<_>>()})));
                json!(v)
            }
            "ct" => {
                let ct = t.ct.as_ref().context("no conntrack table")?;
                let (tcp, other) = ct.counts();
                json!({
                    "tcp": tcp, "other": other,
                    "max_tcp": ct.config().max_tcp, "max_other": ct.config().max_other,
                    "entries": ct.dump(10_000),
                })
            }
            "nodes" => json!({
                "local": t.local.map(|l| json!({"node": self.cfg.node, "ip": l.ip.to_string(), "mtu": l.mtu, "uplink_mac": format_mac(&l.uplink_mac)})),
                "remote": t.nodes.iter().map(|(ip, n)| json!({
                    "name": n.name, "ip": std::net::Ipv4Addr::from(*ip).to_string(),
                    "next_hop_mac": n.next_hop_mac.map(|m| format_mac(&m)),
                })).collect::<Vec<_>>(),
            }),
            "services" => json!(t
                .services
                .services()
                .iter()
                .map(|s| service_json(&s.spec))
                .collect::<Vec<_>>()),
            "maglev" => json!(t
                .services
                .services()
                .iter()
                .map(|s| {
                    let slots: serde_json::Map<String, Value> = s
                        .slot_counts()
                        .into_iter()
                        .map(|(name, n)| (name, json!(n)))
                        .collect();
                    json!({
                        "service": s.spec.name,
                        "port": s.spec.port,
                        "protocol": proto_name(s.spec.proto),
                        "table_size": s.maglev.size(),
                        "slots": slots,
                    })
                })
                .collect::<Vec<_>>()),
            "fqdn" => self.fqdn_list(),
            other => bail!(
                "unknown map {other:?} (ct, endpoints, ipcache, identities, nodes, services, maglev, fqdn)"
            ),
        })
    }

    pub(super) fn endpoints(&self) -> Vec<Value> {
        let t = self.tables.load();
        let mut v: Vec<Value> = t
            .endpoints
            .values()
            .map(|e| {
                let ifname = t.iface(e.slot).map(|i| i.name.clone());
                let reg = ifname.as_deref().and_then(|n| self.cni.by_ifname(n));
                let pod = self.control.pod_name(e.ip).or_else(|| {
                    let r = reg?;
                    Some(format!("{}/{}", r.pod_namespace.as_deref()?, r.pod_name.as_deref()?))
                });
                let container = reg.map(|r| r.container_id.clone());
                json!({"id": e.slot, "ip": e.ip.to_string(), "mac": format_mac(&e.mac), "interface": ifname, "identity": e.identity, "pod": pod, "container_id": container})
            })
            .collect();
        v.sort_by(|a, b| a["ip"].as_str().cmp(&b["ip"].as_str()));
        v
    }
}

/// One service port as `vireo map get services` shows it.
fn service_json(s: &vireo_lb::ServiceSpec) -> Value {
    json!({
        "service": s.name,
        "port": s.port,
        "port_name": s.port_name,
        "protocol": proto_name(s.proto),
        "frontends": s.frontends.iter().map(|f| json!({
            "kind": frontend_kind_name(f.kind),
            "ip": f.ip.to_string(),
            "port": f.port,
        })).collect::<Vec<_>>(),
        "backends": s.backends.iter().map(|b| json!({
            "ip": b.ip.to_string(),
            "port": b.port,
            "local": b.local,
            "terminating": b.terminating,
            "weight": b.weight,
        })).collect::<Vec<_>>(),
        "affinity_timeout": s.affinity_timeout,
        "source_ranges": s.source_ranges.iter().map(|(ip, len)| format!("{ip}/{len}")).collect::<Vec<_>>(),
        "external_traffic_policy": if s.external_local { "Local" } else { "Cluster" },
    })
}
