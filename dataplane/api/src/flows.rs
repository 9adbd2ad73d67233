//! `vireo observe`: the flow filters a client sends, their parsing, and the text rendering of
//! the flows the agent answers with (Hubble's flow JSON: `time`, `verdict`,
//! `drop_reason_desc`, `Type`, `IP`, `l4`, `source`, `destination`, `traffic_direction`,
//! `is_reply`, `ingress_denied_by`/`egress_denied_by`, plus Vireo's `bytes`, `policy_rule`,
//! `event` and `interface`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The verdicts a flow can have, as `--verdict` takes them.
pub const VERDICTS: [&str; 3] = ["FORWARDED", "DROPPED", "AUDIT"];

/// What `vireo observe` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    /// Only flows of the last this many milliseconds.
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only flows from or to this pod (`namespace/name`).
    #[serde(default)]
    pub pod: Option<String>,
    /// Only flows with this verdict ([`VERDICTS`]).
    #[serde(default)]
    pub verdict: Option<String>,
    /// Only flows after this cursor (the `cursor` of an earlier answer): following.
    #[serde(default)]
    pub after: Option<u64>,
}

impl FlowFilter {
    /// Checks the filter: a clear message for a bad one.
    pub fn check(&self) -> Result<(), String> {
        if let Some(v) = &self.verdict {
            if !VERDICTS.contains(&v.as_str()) {
                return Err(format!(
                    "--verdict {v}: the verdicts are {}",
                    VERDICTS.join(", ")
                ));
            }
        }
        if let Some(p) = &self.pod {
            parse_pod(p)?;
        }
        Ok(())
    }

    /// Whether the flow `f` (its JSON) passes (all but `since_ms` and `after`, which the agent
    /// applies by time and sequence).
    pub fn matches(&self, f: &Value) -> bool {
        if let Some(v) = &self.verdict {
            if f["verdict"] != v.as_str() {
                return false;
            }
        }
        if let Some(p) = &self.pod {
            let Ok((ns, name)) = parse_pod(p) else {
                return false;
            };
            let is = |e: &Value| e["namespace"] == ns && e["pod_name"] == name;
            if !is(&f["source"]) && !is(&f["destination"]) {
                return false;
            }
        }
        true
    }
}

/// `NS/NAME` as (namespace, name).
pub fn parse_pod(p: &str) -> Result<(&str, &str), String> {
    match p.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns, name))
        }
        _ => Err(format!("--pod {p:?}: expected NAMESPACE/NAME")),
    }
}

/// A duration like `30s`, `5m`, `2h`, `1d` or `1h30m` (a bare number is seconds), in
/// milliseconds.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let bad = || format!("--since {s:?}: expected a duration such as 30s, 5m, 2h or 1h30m");
    let mut total: u64 = 0;
    let mut num = String::new();
    if s.is_empty() {
        return Err(bad());
    }
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() {
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(1_000)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// TCP flags by Hubble's names, in header order.
pub fn tcp_flag_names(flags: u8) -> Vec<&'static str> {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Nanoseconds since the epoch as RFC 3339 UTC with nanoseconds (Hubble's `time`).
pub fn rfc3339_nanos(ns: u64) -> String {
    let t = jiff::Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(jiff::Timestamp::MAX);
    format!("{t:.9}")
}

/// One endpoint of a flow as text: `ns/pod:port (ID:n)`, or `ip:port (ID:n)` outside pods.
fn end(f: &Value, side: &str, ip: &str) -> String {
    let e = &f[side];
    let port = ["TCP", "UDP", "SCTP"]
        .iter()
        .find_map(|p| f["l4"][p][format!("{side}_port")].as_u64());
    let who = match (e["namespace"].as_str(), e["pod_name"].as_str()) {
        (Some(ns), Some(p)) => format!("{ns}/{p}"),
        _ => f["IP"][ip].as_str().unwrap_or("?").to_string(),
    };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("{who}{port} (ID:{})", e["identity"])
}

/// One flow as a line, like `hubble observe`:
/// `TIME: SRC -> DST DIRECTION VERDICT (SUMMARY) [reason, rule]`.
pub fn render_flow(f: &Value) -> String {
    let time = f["time"].as_str().unwrap_or("");
    // 2026-12-03T11:38:38.123456789Z -> Dec  3 11:38:38.123
    let short = short_time(time).unwrap_or_else(|| time.to_string());
    // The agent's summary of the protocol: `TCP Flags: SYN, ACK`, `ICMPv4 type 8 code 0`, …
    let proto = f["Summary"].as_str().unwrap_or("-");
    let mut line = format!(
        "{short}: {} -> {} {} {} ({proto}) {} bytes",
        end(f, "source", "source"),
        end(f, "destination", "destination"),
        f["traffic_direction"].as_str().unwrap_or("-"),
        f["verdict"].as_str().unwrap_or("-"),
        f["bytes"],
    );
    if f["is_reply"] == true {
        line.push_str(" reply");
    }
    if let Some(r) = f["drop_reason_desc"].as_str() {
        line.push_str(&format!(", {r}"));
    }
    if let Some(r) = f["policy_rule"].as_str() {
        line.push_str(&format!(", rule {r}"));
    }
    line
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` as `Mon DD HH:MM:SS.mmm`.
fn short_time(t: &str) -> Option<String> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m: usize = t.get(5..7)?.parse().ok()?;
    let d: u32 = t.get(8..10)?.parse().ok()?;
    let hms = t.get(11..19)?;
    let ms = t.get(20..23).unwrap_or("000");
    Some(format!(
        "{} {d:>2} {hms}.{ms}",
        MONTHS.get(m.checked_sub(1)?)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_parse_and_bad_ones_say_so() {
        assert_eq!(parse_since("5m"), Ok(300_000));
        assert_eq!(parse_since("30s"), Ok(30_000));
        assert_eq!(parse_since("1h30m"), Ok(5_400_000));
        assert_eq!(parse_since("90"), Ok(90_000));
        assert_eq!(parse_since("2d"), Ok(172_800_000));
        for bad in ["", "5x", "m", "0s", "-5m", "99999999999999999999d"] {
            let e = parse_since(bad).unwrap_err();
            assert!(e.starts_with("--since"), "{bad}: {e}");
        }
    }

    #[test]
    fn filters_check_and_match() {
        let f = |v: Option<&str>, p: Option<&str>| FlowFilter {
            verdict: v.map(String::from),
            pod: p.map(String::from),
            ..Default::default()
        };
        assert!(f(Some("FORWARDED"), Some("a/b")).check().is_ok());
        assert!(f(Some("forwarded"), None)
            .check()
            .unwrap_err()
            .contains("FORWARDED, DROPPED, AUDIT"));
        assert!(f(None, Some("nopod"))
            .check()
            .unwrap_err()
            .contains("NAMESPACE/NAME"));
        assert!(f(None, Some("a/b/c")).check().is_err());
        let flow = json!({
            "verdict": "DROPPED",
            "source": {"namespace": "x", "pod_name": "a"},
            "destination": {"namespace": "y", "pod_name": "b"},
        });
        assert!(f(Some("DROPPED"), None).matches(&flow));
        assert!(!f(Some("FORWARDED"), None).matches(&flow));
        assert!(f(None, Some("x/a")).matches(&flow), "the source");
        assert!(f(None, Some("y/b")).matches(&flow), "the destination");
        assert!(!f(None, Some("x/b")).matches(&flow));
        assert!(f(Some("DROPPED"), Some("y/b")).matches(&flow));
        assert!(FlowFilter::default().matches(&flow));
    }

    #[test]
    fn times_and_flags() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(1_796_297_918_123_456_789),
            "2026-12-03T11:38:38.123456789Z"
        );
        assert_eq!(tcp_flag_names(0x12), vec!["SYN", "ACK"]);
        assert_eq!(tcp_flag_names(0x05), vec!["FIN", "RST"]);
        assert!(tcp_flag_names(0).is_empty());
    }

    #[test]
    fn flows_as_lines() {
        let f = json!({
            "time": "2026-12-03T11:38:38.123456789Z", "verdict": "DROPPED",
            "drop_reason_desc": "POLICY_DENIED", "Type": "L3_L4",
            "IP": {"source": "10.244.1.10", "destination": "10.244.2.11", "ipVersion": "IPv4"},
            "l4": {"TCP": {"source_port": 40000, "destination_port": 8080,
                           "flags": {"SYN": true}}},
            "source": {"namespace": "x", "pod_name": "a", "identity": 300, "labels": []},
            "destination": {"identity": 2, "labels": ["reserved:world"]},
            "traffic_direction": "INGRESS", "is_reply": false, "bytes": 60,
            "policy_rule": "CiliumNetworkPolicy x/p ingressDeny[0]", "Summary": "TCP Flags: SYN",
        });
        assert_eq!(
            render_flow(&f),
            "Dec  3 11:38:38.123: x/a:40000 (ID:300) -> 10.244.2.11:8080 (ID:2) INGRESS \
             DROPPED (TCP Flags: SYN) 60 bytes, POLICY_DENIED, rule CiliumNetworkPolicy \
             x/p ingressDeny[0]"
        );
        let icmp = json!({
            "time": "2026-01-31T00:00:00.000000000Z", "verdict": "FORWARDED",
            "IP": {"source": "10.0.0.1", "destination": "10.0.0.2"},
            "l4": {"ICMPv4": {"type": 8, "code": 0}},
            "source": {"identity": 5}, "destination": {"identity": 6},
            "traffic_direction": "EGRESS", "is_reply": true, "bytes": 84,
            "Summary": "ICMPv4 type 8 code 0",
        });
        assert_eq!(
            render_flow(&icmp),
            "Jan 31 00:00:00.000: 10.0.0.1 (ID:5) -> 10.0.0.2 (ID:6) EGRESS FORWARDED \
             (ICMPv4 type 8 code 0) 84 bytes reply"
        );
    }
}
