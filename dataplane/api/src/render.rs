//! Human-readable `vireo status`.

use std::fmt::Write;

use serde_json::Value;
use vireo_policy::identity::NAMESPACE_LABELS_PREFIX;

/// Renders the agent's status JSON as tables.
pub fn render(v: &Value) -> String {
    let mut o = String::new();
    let node = v["node"].as_str().unwrap_or("-");
    let _ = writeln!(o, "Node: {node}   uptime: {}s", v["uptime_s"]);
    render_health(&mut o, v);
    render_source(&mut o, &v["source"]);
    render_node_config(&mut o, &v["node_config"]);
    o.push('\n');
    let _ = writeln!(
        o,
        "{:<16} {:>5} {:<7} {:<8} {:<10} {:>6} {:<18} {:>12} {:>10} {:>10}",
        "INTERFACE",
        "SLOT",
        "ROLE",
        "XDP",
        "AF_XDP",
        "QUEUES",
        "ENDPOINT",
        "STEERED",
        "PASSED",
        "NO_SOCKET"
    );
    for i in v["interfaces"].as_array().into_iter().flatten() {
        let ep = i["endpoint"]["ip"].as_str().unwrap_or("-");
        let _ = writeln!(
            o,
            "{:<16} {:>5} {:<7} {:<8} {:<10} {:>6} {:<18} {:>12} {:>10} {:>10}",
            s(&i["name"]),
            s(&i["slot"]),
            s(&i["role"]),
            s(&i["xdp_mode"]),
            s(&i["af_xdp_mode"]),
            s(&i["queues"]),
            ep,
            s(&i["xdp"]["steered"]),
            s(&i["xdp"]["passed"]),
            s(&i["xdp"]["no_socket"])
        );
    }
    let _ = writeln!(
        o,
        "\n{:<7} {:<10} {:>8} {:>14} {:>14} {:>12} {:>12} {:>10}",
        "WORKER", "CORES", "SOCKETS", "RX", "TX", "HANDED_OFF", "HANDED_IN", "DROPS"
    );
    for w in v["workers"].as_array().into_iter().flatten() {
        let cores = w["cores"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "any".into());
        let drops: u64 = w["counters"]["drops"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let _ = writeln!(
            o,
            "{:<7} {:<10} {:>8} {:>14} {:>14} {:>12} {:>12} {:>10}",
            s(&w["id"]),
            cores,
            s(&w["sockets"]),
            s(&w["counters"]["rx"]),
            s(&w["counters"]["tx"]),
            s(&w["counters"]["handoff"]["sent"]),
            s(&w["counters"]["handoff"]["received"]),
            drops
        );
    }
    let _ = writeln!(o, "\nDrops by reason:");
    let mut any = false;
    for (k, n) in v["counters"]["drops"].as_object().into_iter().flatten() {
        if n.as_u64().unwrap_or(0) > 0 {
            any = true;
            let _ = writeln!(o, "  {k:<24} {n}");
        }
    }
    if !any {
        let _ = writeln!(o, "  (none)");
    }
    let d = &v["dns"];
    if !d.is_null() {
        let _ = writeln!(
            o,
            "DNS: responses parsed {}, addresses learned {}, malformed {}, queries refused {}, TCP not learned {}",
            s(&d["responses_parsed"]),
            s(&d["learned"]),
            s(&d["malformed"]),
            s(&d["refused"]),
            s(&d["tcp_not_learned"])
        );
    }
    let k = &v["counters"]["kernel"];
    let _ = writeln!(
        o,
        "Kernel AF_XDP drops: rx_dropped {}, rx_ring_full {}, rx_fill_ring_empty {}, tx_invalid {}",
        s(&k["rx_dropped"]),
        s(&k["rx_ring_full"]),
        s(&k["rx_fill_ring_empty"]),
        s(&k["tx_invalid"])
    );
    o
}

/// The source of the cluster's objects (`source` of the status): its kind, whether it is
/// synced or stale, its counters and its update latency.
fn render_source(o: &mut String, src: &Value) {
    if src.is_null() {
        let _ = writeln!(o, "Source: none");
        return;
    }
    let state = match (src["synced"].as_bool(), src["stale_since"].as_str()) {
        (_, Some(t)) => format!("STALE since {t}"),
        (Some(true), None) => "synced".into(),
        _ => "not synced yet".into(),
    };
    let l = &src["latency"];
    let ms = |x: &Value| match x.as_u64() {
        Some(us) => format!("{:.1} ms", us as f64 / 1000.0),
        None => "-".into(),
    };
    let _ = writeln!(
        o,
        "Source: {}  {state}  events {}  rebuilds {}  update latency p50 {}  p99 {}  max {} ({} updates)",
        s(&src["kind"]),
        s(&src["events"]),
        s(&src["rebuilds"]),
        ms(&l["p50_us"]),
        ms(&l["p99_us"]),
        ms(&l["max_us"]),
        s(&l["count"]),
    );
    if let Some(e) = src["last_error"].as_str() {
        let at = src["last_error_at"]
            .as_str()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default();
        let _ = writeln!(o, "  last error{at}: {e}");
    }
}

/// A JSON scalar as plain text (so width and alignment apply); null is "-".
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// One monitor event as a line: a drop ([`render_drop_event`]) or a policy verdict
/// (`vireo monitor --type policy-verdict`).
pub fn render_event(e: &Value) -> String {
    if e["type"] == "trace" {
        return render_trace_event(e);
    }
    if e["type"] != "policy-verdict" {
        return render_drop_event(e);
    }
    format!(
        "-> policy-verdict {} {} on {} {}, rule {}",
        s(&e["direction"]),
        s(&e["verdict"]),
        s(&e["interface"]),
        packet_ends(e),
        s(&e["rule"]),
    )
}

/// An event's protocol (with its ICMP type), addresses, identities and labels:
/// `TCP 10.0.0.1:40000 -> 10.0.0.2:80, identity 300 [k8s:app=a] -> 301 [k8s:app=b]`.
fn packet_ends(e: &Value) -> String {
    let icmp = match e["icmp_type"].as_u64() {
        Some(t) => format!(" type {t}"),
        None => String::new(),
    };
    format!(
        "{}{icmp} {} -> {}, identity {} [{}] -> {} [{}]",
        s(&e["protocol"]),
        s(&e["src"]),
        s(&e["dst"]),
        s(&e["src_identity"]),
        event_labels(e, "src_labels"),
        s(&e["dst_identity"]),
        event_labels(e, "dst_labels"),
    )
}

/// One trace event (`vireo monitor --type trace`) as a line.
pub fn render_trace_event(e: &Value) -> String {
    let flags = match e["tcp_flags"].as_str() {
        Some(f) if !f.is_empty() => format!(", flags {f}"),
        _ => String::new(),
    };
    format!(
        "-> trace from {} to {} ({}) {}, {} bytes{flags}",
        s(&e["interface"]),
        s(&e["to_interface"]),
        s(&e["state"]),
        packet_ends(e),
        s(&e["bytes"]),
    )
}

/// An event's labels (`src_labels`, `dst_labels`) without the namespace's labels.
fn event_labels(e: &Value, k: &str) -> String {
    let l: Vec<&str> = e[k]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|l| {
            !l.strip_prefix("k8s:")
                .is_some_and(|l| l.starts_with(NAMESPACE_LABELS_PREFIX))
        })
        .collect();
    l.join(",")
}

/// One drop event (`vireo monitor --type drop`) as a line.
pub fn render_drop_event(e: &Value) -> String {
    let labels = |k: &str| event_labels(e, k);
    let mut line = format!(
        "xx drop ({}) on {} {} {} -> {}, identity {} [{}] -> {} [{}]",
        s(&e["reason"]),
        s(&e["interface"]),
        s(&e["protocol"]),
        s(&e["src"]),
        s(&e["dst"]),
        s(&e["src_identity"]),
        labels("src_labels"),
        s(&e["dst_identity"]),
        labels("dst_labels"),
    );
    if !e["direction"].is_null() {
        line.push_str(&format!(
            ", {} policy: {}",
            s(&e["direction"]),
            s(&e["rule"])
        ));
    }
    line
}

/// Renders `vireo map get NAME` as a table.
pub fn render_map(map: &str, v: &Value) -> String {
    let mut o = String::new();
    let rows = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match map {
        "endpoints" => {
            let _ = writeln!(
                o,
                "{:<16} {:<18} {:<16} {:>9}  {:<32} CONTAINER",
                "IP", "MAC", "INTERFACE", "IDENTITY", "POD"
            );
            for e in rows(v) {
                let _ = writeln!(
                    o,
                    "{:<16} {:<18} {:<16} {:>9}  {:<32} {}",
                    s(&e["ip"]),
                    s(&e["mac"]),
                    s(&e["interface"]),
                    s(&e["identity"]),
                    s(&e["pod"]),
                    s(&e["container_id"])
                );
            }
        }
        "ipcache" => {
            let _ = writeln!(o, "{:<20} {:>9}  TUNNEL", "PREFIX", "IDENTITY");
            for e in rows(v) {
                let _ = writeln!(
                    o,
                    "{:<20} {:>9}  {}",
                    s(&e["prefix"]),
                    s(&e["identity"]),
                    s(&e["tunnel"])
                );
            }
        }
        "identities" => {
            let _ = writeln!(o, "{:>9}  LABELS", "IDENTITY");
            for e in rows(v) {
                let labels = e["labels"]
                    .as_array()
                    .map(|l| l.iter().map(s).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let _ = writeln!(o, "{:>9}  {labels}", s(&e["identity"]));
            }
        }
        "ct" => {
            let _ = writeln!(
                o,
                "TCP {} of {}, other {} of {}\n",
                s(&v["tcp"]),
                s(&v["max_tcp"]),
                s(&v["other"]),
                s(&v["max_other"])
            );
            let _ = writeln!(
                o,
                "{:<5} {:<8} {:<22} {:<22} {:<12} {:<7} {:>7} {:>9} {:>10}  NAT",
                "PROTO",
                "DIR",
                "SOURCE",
                "DESTINATION",
                "STATE",
                "CLOSING",
                "EXPIRES",
                "IDENTITY",
                "PACKETS"
            );
            for e in rows(&v["entries"]) {
                let proto = match e["proto"].as_u64() {
                    Some(6) => "TCP".to_string(),
                    Some(17) => "UDP".into(),
                    Some(1) => "ICMP".into(),
                    Some(132) => "SCTP".into(),
                    Some(p) => p.to_string(),
                    None => "?".into(),
                };
                // Which directions have closed (Cilium's TxClosing/RxClosing).
                let closing = match (e["tx_closing"].as_bool(), e["rx_closing"].as_bool()) {
                    (Some(true), Some(true)) => "tx+rx",
                    (Some(true), _) => "tx",
                    (_, Some(true)) => "rx",
                    _ => "-",
                };
                let nat = if e["nat"].is_null() {
                    "-".to_string()
                } else {
                    e["nat"].to_string()
                };
                let _ = writeln!(
                    o,
                    "{:<5} {:<8} {:<22} {:<22} {:<12} {:<7} {:>7} {:>9} {:>10}  {nat}",
                    proto,
                    s(&e["dir"]),
                    format!("{}:{}", s(&e["src"]), s(&e["sport"])),
                    format!("{}:{}", s(&e["dst"]), s(&e["dport"])),
                    s(&e["state"]),
                    closing,
                    s(&e["expires_in"]),
                    s(&e["identity"]),
                    s(&e["packets"])
                );
            }
        }
        "nodes" => {
            let l = &v["local"];
            let _ = writeln!(
                o,
                "local: {} {} (mtu {})",
                s(&l["node"]),
                s(&l["ip"]),
                s(&l["mtu"])
            );
            let _ = writeln!(o, "{:<12} {:<16} NEXT-HOP MAC", "NODE", "IP");
            for n in rows(&v["remote"]) {
                let _ = writeln!(
                    o,
                    "{:<12} {:<16} {}",
                    s(&n["name"]),
                    s(&n["ip"]),
                    s(&n["next_hop_mac"])
                );
            }
        }
        "services" => {
            let _ = writeln!(
                o,
                "{:<28} {:<10} {:<36} {:<34} {:<9}  POLICY",
                "SERVICE", "PORT", "FRONTEND", "BACKEND", "AFFINITY"
            );
            for e in rows(v) {
                let name = match e["port_name"].as_str() {
                    Some(p) if !p.is_empty() => format!("{} ({p})", s(&e["service"])),
                    _ => s(&e["service"]),
                };
                let port = format!("{}/{}", s(&e["port"]), s(&e["protocol"]));
                let frontends: Vec<String> = rows(&e["frontends"])
                    .iter()
                    .map(|f| format!("{}:{} {}", s(&f["ip"]), s(&f["port"]), s(&f["kind"])))
                    .collect();
                let mut backends: Vec<String> = rows(&e["backends"])
                    .iter()
                    .map(|b| {
                        let mut t = format!("{}:{}", s(&b["ip"]), s(&b["port"]));
                        if b["local"] == true {
                            t.push_str(" local");
                        }
                        if b["terminating"] == true {
                            t.push_str(" terminating");
                        }
                        if b["weight"].as_u64().is_some_and(|w| w != 1) {
                            t.push_str(&format!(" w{}", s(&b["weight"])));
                        }
                        t
                    })
                    .collect();
                if backends.is_empty() {
                    backends.push("(none)".into());
                }
                let affinity = match e["affinity_timeout"].as_u64() {
                    Some(t) => format!("{t}s"),
                    None => "-".into(),
                };
                let mut policy = s(&e["external_traffic_policy"]);
                let ranges: Vec<String> = rows(&e["source_ranges"]).iter().map(s).collect();
                if !ranges.is_empty() {
                    policy.push_str(&format!(" from {}", ranges.join(",")));
                }
                for i in 0..frontends.len().max(backends.len()) {
                    let first = i == 0;
                    let line = format!(
                        "{:<28} {:<10} {:<36} {:<34} {:<9}  {}",
                        if first { name.as_str() } else { "" },
                        if first { port.as_str() } else { "" },
                        frontends.get(i).map(String::as_str).unwrap_or(""),
                        backends.get(i).map(String::as_str).unwrap_or(""),
                        if first { affinity.as_str() } else { "" },
                        if first { policy.as_str() } else { "" },
                    );
                    let _ = writeln!(o, "{}", line.trim_end());
                }
            }
        }
        "maglev" => {
            let _ = writeln!(
                o,
                "{:<28} {:<10} {:>7}  {:<22} {:>7} {:>7}",
                "SERVICE", "PORT", "TABLE", "BACKEND", "SLOTS", "SHARE"
            );
            for e in rows(v) {
                let port = format!("{}/{}", s(&e["port"]), s(&e["protocol"]));
                let size = e["table_size"].as_u64().unwrap_or(0);
                let mut slots: Vec<(String, u64)> = e["slots"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(b, n)| (b.clone(), n.as_u64().unwrap_or(0)))
                    .collect();
                slots.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                if slots.is_empty() {
                    slots.push(("(no backend)".into(), 0));
                }
                for (i, (b, n)) in slots.iter().enumerate() {
                    let share = if size > 0 {
                        format!("{:.1}%", *n as f64 * 100.0 / size as f64)
                    } else {
                        "-".into()
                    };
                    let first = i == 0;
                    let _ = writeln!(
                        o,
                        "{:<28} {:<10} {:>7}  {:<22} {:>7} {:>7}",
                        if first {
                            s(&e["service"])
                        } else {
                            String::new()
                        },
                        if first { port.as_str() } else { "" },
                        if first {
                            size.to_string()
                        } else {
                            String::new()
                        },
                        b,
                        n,
                        share
                    );
                }
            }
        }
        "fqdn" => render_fqdn(&mut o, v),
        _ => o = format!("{v:#}\n"),
    }
    o
}

/// `vireo fqdn cache list`: one line per (endpoint, name, address), then the DNS counters.
fn render_fqdn(o: &mut String, v: &Value) {
    let _ = writeln!(
        o,
        "{:<16} {:<32} {:<40} {:<16} {:>8}",
        "ENDPOINT", "POD", "NAME", "ADDRESS", "TTL"
    );
    for e in v["entries"].as_array().into_iter().flatten() {
        let ttl = match (e["zombie"].as_bool(), e["ttl_remaining"].as_i64()) {
            (Some(true), _) => "zombie".to_string(),
            (_, Some(t)) => format!("{t}s"),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "{:<16} {:<32} {:<40} {:<16} {:>8}",
            s(&e["endpoint"]),
            s(&e["pod"]),
            s(&e["name"]),
            s(&e["ip"]),
            ttl
        );
    }
    let c = &v["counters"];
    let _ = writeln!(
        o,
        "\nDNS: {} responses parsed, {} addresses learned, {} malformed, {} queries refused, {} TCP not learned",
        s(&c["responses_parsed"]),
        s(&c["learned"]),
        s(&c["malformed"]),
        s(&c["refused"]),
        s(&c["tcp_not_learned"])
    );
}

/// `Node config: VireoNodeConfig default, fast` (or `file`), then the error of the configs
/// seen last and the fields that wait for a restart, when there are any. Nothing for an
/// agent that does not report it.
fn render_node_config(o: &mut String, nc: &Value) {
    if nc.is_null() {
        return;
    }
    let names: Vec<&str> = nc["applied"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let from = if names.is_empty() {
        "file".to_string()
    } else {
        format!("VireoNodeConfig {}", names.join(", "))
    };
    let _ = writeln!(o, "Node config: {from}");
    if let Some(e) = nc["error"].as_str() {
        let _ = writeln!(o, "  not applied (last good kept): {e}");
    }
    let restart: Vec<&str> = nc["needs_restart"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !restart.is_empty() {
        let _ = writeln!(o, "  needs a restart: {}", restart.join(", "));
    }
}

/// `Ready: yes` or `Ready: no` with the reasons, and where metrics are served.
fn render_health(o: &mut String, v: &Value) {
    match v["ready"].as_bool() {
        Some(true) => o.push_str("Ready: yes"),
        Some(false) => o.push_str("Ready: NO"),
        None => return,
    }
    match v["metrics_address"].as_str() {
        Some(a) => {
            let _ = writeln!(o, "   metrics: http://{a}/metrics");
        }
        None => o.push_str("   metrics: off\n"),
    }
    for r in v["not_ready"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  not ready: {}", r.as_str().unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_verdict_and_trace_events_as_lines() {
        let ends = json!({"protocol": "ICMP", "icmp_type": 8, "src": "10.244.1.10",
            "dst": "10.244.2.11", "src_identity": 300, "dst_identity": 301,
            "src_labels": ["k8s:app=a", "k8s:io.cilium.k8s.namespace.labels.team=x"],
            "dst_labels": ["k8s:app=b"]});
        let mut pv = ends.clone();
        pv["type"] = json!("policy-verdict");
        pv["direction"] = json!("ingress");
        pv["verdict"] = json!("denied");
        pv["interface"] = json!("lxc1");
        pv["rule"] = json!("CiliumNetworkPolicy default/p ingressDeny[0]");
        assert_eq!(
            render_event(&pv),
            "-> policy-verdict ingress denied on lxc1 ICMP type 8 10.244.1.10 -> 10.244.2.11, \
             identity 300 [k8s:app=a] -> 301 [k8s:app=b], rule CiliumNetworkPolicy default/p \
             ingressDeny[0]"
        );
        let mut tr = ends;
        tr["type"] = json!("trace");
        tr["protocol"] = json!("TCP");
        tr["icmp_type"] = Value::Null;
        tr["interface"] = json!("lxc1");
        tr["to_interface"] = json!("tunnel");
        tr["state"] = json!("new");
        tr["bytes"] = json!(60);
        tr["tcp_flags"] = json!("SYN");
        assert_eq!(
            render_event(&tr),
            "-> trace from lxc1 to tunnel (new) TCP 10.244.1.10 -> 10.244.2.11, identity 300 \
             [k8s:app=a] -> 301 [k8s:app=b], 60 bytes, flags SYN"
        );
    }

    #[test]
    fn the_node_config_lines() {
        let t = render(
            &json!({"node_config": {"applied": ["default", "fast"], "from": "VireoNodeConfig",
            "error": "invalid VireoNodeConfig: fast: spec.maglev: x", "needs_restart": ["af_xdp"]}}),
        );
        assert!(
            t.contains("Node config: VireoNodeConfig default, fast\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "  not applied (last good kept): invalid VireoNodeConfig: fast: spec.maglev: x\n"
            ),
            "{t}"
        );
        assert!(t.contains("  needs a restart: af_xdp\n"), "{t}");
        let t =
            render(&json!({"node_config": {"applied": [], "error": null, "needs_restart": []}}));
        assert!(
            t.contains("Node config: file\n") && !t.contains("restart"),
            "{t}"
        );
        assert!(!render(&json!({})).contains("Node config"));
    }

    #[test]
    fn readiness_and_the_metrics_address() {
        let t = render(&json!({"ready": true, "metrics_address": "127.0.0.1:9962"}));
        assert!(
            t.contains("Ready: yes   metrics: http://127.0.0.1:9962/metrics\n"),
            "{t}"
        );
        let t = render(&json!({"ready": false, "metrics_address": null,
            "not_ready": ["interface lxc1: queue 0 has no AF_XDP socket"]}));
        assert!(
            t.contains(
                "Ready: NO   metrics: off\n  not ready: interface lxc1: queue 0 has no AF_XDP socket\n"
            ),
            "{t}"
        );
        assert!(!render(&json!({})).contains("Ready"));
    }

    #[test]
    fn the_source_line() {
        let v = json!({"node": "n1", "uptime_s": 5, "source": {
            "kind": "kube", "synced": true, "stale_since": "2025-01-02T03:04:05.000Z",
            "last_error": "Pod: watch failed", "last_error_at": "2025-01-02T03:04:05.000Z",
            "events": 12, "rebuilds": 3,
            "latency": {"count": 2, "p50_us": 1500, "p99_us": 4000, "max_us": 4000},
        }});
        let t = render(&v);
        assert!(t.contains("Source: kube  STALE since 2025-01-02T03:04:05.000Z  events 12  rebuilds 3  update latency p50 1.5 ms  p99 4.0 ms  max 4.0 ms (2 updates)"), "{t}");
        assert!(
            t.contains("  last error (2025-01-02T03:04:05.000Z): Pod: watch failed"),
            "{t}"
        );
        let t = render(&json!({"node": "n1", "uptime_s": 5, "source": null}));
        assert!(t.contains("Source: none"), "{t}");
        let t = render(
            &json!({"source": {"kind": "manifests", "synced": true, "stale_since": null, "latency": {"count": 0}}}),
        );
        assert!(
            t.contains("Source: manifests  synced") && t.contains("p50 -"),
            "{t}"
        );
    }

    #[test]
    fn services_and_maglev_tables() {
        let v = json!([{
            "service": "default/echo", "port": 80, "port_name": "http", "protocol": "TCP",
            "frontends": [
                {"kind": "ClusterIP", "ip": "10.96.0.10", "port": 80},
                {"kind": "NodePort", "ip": "192.168.100.11", "port": 30080},
            ],
            "backends": [
                {"ip": "10.244.1.10", "port": 8080, "local": true, "terminating": false, "weight": 1},
                {"ip": "10.244.2.10", "port": 8080, "local": false, "terminating": true, "weight": 1},
                {"ip": "10.244.2.11", "port": 8080, "local": false, "terminating": false, "weight": 1},
            ],
            "affinity_timeout": 10800, "source_ranges": ["10.0.0.0/8"],
            "external_traffic_policy": "Local",
        }]);
        let t = render_map("services", &v);
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(t.contains("default/echo (http)") && t.contains("80/TCP"));
        assert!(t.contains("192.168.100.11:30080 NodePort"));
        assert!(t.contains("10.244.2.10:8080 terminating"));
        assert!(t.contains("Local from 10.0.0.0/8") && t.contains("10800s"));
        let m = json!([{
            "service": "default/echo", "port": 80, "protocol": "TCP", "table_size": 251,
            "slots": {"10.244.1.10:8080": 125, "10.244.2.11:8080": 126},
        }]);
        let t = render_map("maglev", &m);
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(t.lines().nth(1).unwrap().contains("10.244.2.11:8080"));
        assert!(t.contains("50.2%"));
    }

    #[test]
    fn conntrack_entries_show_which_directions_closed() {
        let entry = |proto: u64, tx: bool, rx: bool| {
            json!({"proto": proto, "dir": "service", "src": "10.244.1.10", "sport": 40000,
                   "dst": "10.96.0.10", "dport": 80, "state": "established",
                   "tx_closing": tx, "rx_closing": rx, "expires_in": 21600,
                   "identity": 1000, "packets": 4, "nat": null})
        };
        let v = json!({"tcp": 4, "max_tcp": 100, "other": 0, "max_other": 100, "entries": [
            entry(6, false, false), entry(6, true, false), entry(6, false, true),
            entry(6, true, true), entry(132, false, false),
        ]});
        let t = render_map("ct", &v);
        let rows: Vec<&str> = t.lines().skip(3).collect();
        assert_eq!(rows.len(), 5, "{t}");
        assert!(t.lines().nth(2).unwrap().contains("CLOSING"), "{t}");
        let closing: Vec<&str> = rows
            .iter()
            .map(|r| r.split_whitespace().nth(5).unwrap())
            .collect();
        assert_eq!(closing, ["-", "tx", "rx", "tx+rx", "-"], "{t}");
        assert!(rows[4].starts_with("SCTP"), "{t}");
    }
}
