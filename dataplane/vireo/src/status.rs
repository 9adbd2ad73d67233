//! Human-readable `vireo status`.

use std::fmt::Write;

use serde_json::Value;

/// Renders the agent's status JSON as tables.
pub fn render(v: &Value) -> String {
    let mut o = String::new();
    let node = v["node"].as_str().unwrap_or("-");
    let _ = writeln!(o, "Node: {node}   uptime: {}s\n", v["uptime_s"]);
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
        "\n{:<7} {:<10} {:>8} {:>14} {:>14} {:>10}",
        "WORKER", "CORES", "SOCKETS", "RX", "TX", "DROPS"
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
            "{:<7} {:<10} {:>8} {:>14} {:>14} {:>10}",
            s(&w["id"]),
            cores,
            s(&w["sockets"]),
            s(&w["counters"]["rx"]),
            s(&w["counters"]["tx"]),
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

/// A JSON scalar as plain text (so width and alignment apply); null is "-".
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// Renders `vireo map get NAME` as a table.
pub fn render_map(map: &str, v: &Value) -> String {
    let mut o = String::new();
    let rows = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match map {
        "endpoints" => {
            let _ = writeln!(
                o,
                "{:<16} {:<18} {:<16} {:>9}  POD",
                "IP", "MAC", "INTERFACE", "IDENTITY"
            );
            for e in rows(v) {
                let _ = writeln!(
                    o,
                    "{:<16} {:<18} {:<16} {:>9}  {}",
                    s(&e["ip"]),
                    s(&e["mac"]),
                    s(&e["interface"]),
                    s(&e["identity"]),
                    s(&e["pod"])
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
                "{:<5} {:<8} {:<22} {:<22} {:<12} {:>7} {:>9} {:>10}  NAT",
                "PROTO", "DIR", "SOURCE", "DESTINATION", "STATE", "EXPIRES", "IDENTITY", "PACKETS"
            );
            for e in rows(&v["entries"]) {
                let proto = match e["proto"].as_u64() {
                    Some(6) => "TCP".to_string(),
                    Some(17) => "UDP".into(),
                    Some(1) => "ICMP".into(),
                    p => format!("{p:?}"),
                };
                let nat = if e["nat"].is_null() {
                    "-".to_string()
                } else {
                    e["nat"].to_string()
                };
                let _ = writeln!(
                    o,
                    "{:<5} {:<8} {:<22} {:<22} {:<12} {:>7} {:>9} {:>10}  {nat}",
                    proto,
                    s(&e["dir"]),
                    format!("{}:{}", s(&e["src"]), s(&e["sport"])),
                    format!("{}:{}", s(&e["dst"]), s(&e["dport"])),
                    s(&e["state"]),
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
        _ => o = format!("{v:#}\n"),
    }
    o
}
