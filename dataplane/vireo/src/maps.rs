//! The operator's JSON views of the agent's tables (`vireo map get`), kept out of `agent.rs`.

use serde_json::{json, Value};
use vireo_control::services::{frontend_kind_name, proto_name};

/// One service port as `vireo map get services` shows it.
pub(crate) fn service_json(s: &vireo_lb::ServiceSpec) -> Value {
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
