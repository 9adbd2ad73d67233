//! `vireo observe`: the agent's flow log. The workers' lossy rings
//! ([`vireo_dataplane::flows::FlowRings`]) are drained at every turn of the agent's loop (and
//! before every answer) into one bounded ring of `observe.flow_ring` flows (the oldest
//! overwritten first), each enriched with the pods' names, namespaces and labels from the
//! agent's view, as Hubble's flow JSON:
//!
//! ```json
//! {"time": "2026-12-03T11:38:38.123456789Z", "verdict": "DROPPED",
//!  "drop_reason_desc": "POLICY_DENIED", "Type": "L3_L4", "node_name": "node-2",
//!  "event": "new", "IP": {"source": "10.244.1.10", "destination": "10.244.2.11",
//!  "ipVersion": "IPv4"},
//!  "l4": {"TCP": {"source_port": 40000, "destination_port": 8080, "flags": {"SYN": true}}},
//!  "source": {"identity": 300, "namespace": "x", "pod_name": "a", "labels": ["k8s:app=a"]},
//!  "destination": {"ID": 3, "identity": 301, "namespace": "y", "pod_name": "b", "labels": […]},
//!  "traffic_direction": "INGRESS", "is_reply": false, "bytes": 60,
//!  "interface": {"name": "vireo0"}, "policy_rule": "CiliumNetworkPolicy y/p ingressDeny[0]",
//!  "ingress_denied_by": [{"kind": "CiliumNetworkPolicy", "namespace": "y", "name": "p",
//!                         "rule": "ingressDeny[0]"}],
//!  "Summary": "TCP Flags: SYN"}
//! ```
//!
//! `l4` is `{"TCP": …}`, `{"UDP": {"source_port", "destination_port"}}`, `{"SCTP": …}` or
//! `{"ICMPv4": {"type", "code"}}`; `policy_rule` (denials and audits) is `"default deny"`
//! without a deny rule; `event` is `new`, `first_reply`, `close` (TCP FIN/RST) or `drop`.
//! The answer is `{"flows": [...], "cursor": N, "lost": N, "overwritten": N}`: the cursor to
//! follow from, the records lost to full worker rings and those overwritten in the agent's
//! ring, since it started.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use vireo_api::flows::{rfc3339_nanos, tcp_flag_names, FlowFilter};
use vireo_dataplane::flows::{now_ns, FlowRecord, FlowRings, FlowVerdict, WORKER_RING};
use vireo_policy::Direction;

use super::numbered::Numbered;
use super::Agent;

/// The workers' flow rings for the configuration `cfg` (recording off when its
/// `observe.flow_ring` is 0).
pub(crate) fn worker_rings(cfg: &vireo_control::config::Config) -> std::sync::Arc<FlowRings> {
    let r = FlowRings::new(cfg.workers.len(), WORKER_RING);
    r.set(cfg.observe.flow_ring > 0);
    std::sync::Arc::new(r)
}

/// The monitor's queues: one per worker.
pub(crate) fn monitor_rings(
    cfg: &vireo_control::config::Config,
) -> std::sync::Arc<vireo_dataplane::events::Monitor> {
    std::sync::Arc::new(vireo_dataplane::events::Monitor::with_rings(
        cfg.workers.len(),
        4096,
    ))
}

/// Records drained from the workers' rings at a time.
const DRAIN: usize = 16384;

/// The agent's ring of flows: (time, flow), numbered.
pub(crate) struct FlowLog {
    ring: Numbered<(u64, Value)>,
    scratch: Vec<FlowRecord>,
    /// When `vireo monitor --type trace` last asked (tracing stops a few seconds after).
    pub(crate) trace_seen: Option<Instant>,
}

impl FlowLog {
    /// A ring of `cap` flows.
    pub(crate) fn new(cap: usize) -> FlowLog {
        FlowLog {
            ring: Numbered::new(cap),
            scratch: Vec::new(),
            trace_seen: None,
        }
    }

    /// Flows taken in from the workers so far, and those overwritten by newer ones.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.ring.newest(), self.ring.overwritten())
    }

    fn push(&mut self, time_ns: u64, flow: Value) {
        self.ring.push((time_ns, flow));
    }

    /// The flows `f` selects at time `now_ns`, at most the newest `max`, and the cursor.
    fn select(&self, f: &FlowFilter, max: usize, now_ns: u64) -> (Vec<Value>, u64) {
        let since = f
            .since_ms
            .map_or(0, |ms| now_ns.saturating_sub(ms.saturating_mul(1_000_000)));
        let mut v: Vec<&Value> = self
            .ring
            .after(f.after.unwrap_or(0))
            .filter(|(_, (time_ns, flow))| *time_ns >= since && f.matches(flow))
            .map(|(_, (_, flow))| flow)
            .collect();
        let skip = v.len().saturating_sub(max);
        v.drain(..skip);
        (v.into_iter().cloned().collect(), self.ring.newest())
    }
}

/// What a flow's JSON needs from the agent's view.
pub(crate) struct Names<'a> {
    /// The node's name.
    pub node: &'a str,
    /// Pods by address: (namespace, name).
    pub pods: HashMap<Ipv4Addr, (String, String)>,
    /// Local endpoints by address: their id (interface slot).
    pub local: &'a dyn Fn(Ipv4Addr) -> Option<u16>,
    /// Interface names by slot.
    pub iface: &'a dyn Fn(u16) -> Option<String>,
    /// Labels of an identity.
    pub labels: &'a dyn Fn(u32) -> Vec<String>,
}

/// Hubble's name of an IP protocol's `l4` member, with its fields.
fn l4_json(r: &FlowRecord) -> Value {
    let ports = |name: &str, extra: Option<Value>| {
        let mut m = Map::new();
        m.insert("source_port".into(), json!(r.sport));
        m.insert("destination_port".into(), json!(r.dport));
        if let Some(x) = extra {
            m.insert("flags".into(), x);
        }
        let mut o = Map::new();
        o.insert(name.to_string(), Value::Object(m));
        Value::Object(o)
    };
    match r.proto {
        6 => {
            let flags: Map<String, Value> = tcp_flag_names(r.tcp_flags)
                .into_iter()
                .map(|n| (n.to_string(), Value::Bool(true)))
                .collect();
            ports("TCP", Some(Value::Object(flags)))
        }
        17 => ports("UDP", None),
        132 => ports("SCTP", None),
        1 => {
            let (t, c) = r.icmp.unwrap_or((0, 0));
            json!({"ICMPv4": {"type": t, "code": c}})
        }
        _ => json!({}),
    }
}

/// One flow as Hubble's JSON (module doc).
pub(crate) fn flow_json(r: &FlowRecord, n: &Names<'_>) -> Value {
    let end = |ip: Ipv4Addr, identity: u32| {
        let mut m = Map::new();
        if let Some(id) = (n.local)(ip) {
            m.insert("ID".into(), json!(id));
        }
        m.insert("identity".into(), json!(identity));
        if let Some((ns, name)) = n.pods.get(&ip) {
            m.insert("namespace".into(), json!(ns));
            m.insert("pod_name".into(), json!(name));
        }
        m.insert("labels".into(), json!((n.labels)(identity)));
        Value::Object(m)
    };
    // The connection's direction: egress when its originator is one of this node's pods.
    let originator = if r.reply { r.dst } else { r.src };
    let direction = match r.direction {
        Some(Direction::Ingress) => "INGRESS",
        Some(Direction::Egress) => "EGRESS",
        None if (n.local)(originator).is_some() => "EGRESS",
        None => "INGRESS",
    };
    let l4 = l4_json(r);
    let summary = match r.proto {
        6 => format!("TCP Flags: {}", tcp_flag_names(r.tcp_flags).join(", ")),
        1 => {
            let (t, c) = r.icmp.unwrap_or((0, 0));
            format!("ICMPv4 type {t} code {c}")
        }
        17 => "UDP".into(),
        132 => "SCTP".into(),
        p => format!("IP protocol {p}"),
    };
    let mut f = json!({
        "time": rfc3339_nanos(r.time_ns),
        "verdict": r.verdict.name(),
        "Type": "L3_L4",
        "node_name": n.node,
        "event": r.event.name(),
        "IP": {"source": r.src.to_string(), "destination": r.dst.to_string(), "ipVersion": "IPv4"},
        "l4": l4,
        "source": end(r.src, r.src_identity),
        "destination": end(r.dst, r.dst_identity),
        "traffic_direction": direction,
        "is_reply": r.reply,
        "bytes": r.bytes,
        "interface": {"name": (n.iface)(r.in_slot)},
        "Summary": summary,
    });
    if let Some(reason) = r.reason {
        f["drop_reason_desc"] = json!(reason.name().to_ascii_uppercase());
    }
    let judged = r.verdict != FlowVerdict::Forwarded
        && r.reason
            .is_none_or(|x| x == vireo_dataplane::counters::DropReason::PolicyDenied);
    if let (true, Some(d)) = (judged, r.direction) {
        f["policy_rule"] = match &r.rule {
            Some(o) => json!(o.to_string()),
            None => json!("default deny"),
        };
        if let Some(o) = &r.rule {
            let (ns, name) = match o.name.split_once('/') {
                Some((ns, name)) => (Some(ns), name),
                None => (None, o.name.as_str()),
            };
            let key = match d {
                Direction::Ingress => "ingress_denied_by",
                Direction::Egress => "egress_denied_by",
            };
            f[key] = json!([{"kind": o.kind, "namespace": ns, "name": name, "rule": o.rule}]);
        }
    }
    f
}

impl Agent {
    /// Moves the workers' flow records into the agent's ring, enriched.
    pub(super) fn observe_drain(&mut self) {
        let t = self.tables.current();
        let mut recs = std::mem::take(&mut self.flows.scratch);
        recs.clear();
        if t.flows.drain_into(DRAIN, &mut recs) == 0 {
            self.flows.scratch = recs;
            return;
        }
        let pods = self
            .control
            .view()
            .pods
            .values()
            .map(|p| (p.ip, (p.namespace.clone(), p.name.clone())))
            .collect();
        let local = |ip: Ipv4Addr| t.endpoint(u32::from(ip)).map(|e| e.slot);
        let iface = |slot: u16| t.iface(slot).map(|i| i.name.clone());
        let labels = |id: u32| self.identity_labels(id);
        let names = Names {
            node: self.cfg.node.as_deref().unwrap_or_default(),
            pods,
            local: &local,
            iface: &iface,
            labels: &labels,
        };
        let flows: Vec<(u64, Value)> = recs
            .iter()
            .map(|r| (r.time_ns, flow_json(r, &names)))
            .collect();
        for (time, f) in flows {
            self.flows.push(time, f);
        }
        self.flows.scratch = recs;
    }

    /// An identity's labels as `source:key=value` strings (`reserved:NAME` for reserved ones).
    pub(super) fn identity_labels(&self, id: u32) -> Vec<String> {
        if let Some((_, name)) = vireo_policy::Identity::RESERVED
            .iter()
            .find(|(i, _)| i.0 == id)
        {
            return vec![format!("reserved:{name}")];
        }
        self.control
            .labels(id)
            .map(|l| {
                l.iter()
                    .map(|(k, v)| {
                        if v.is_empty() {
                            k.to_string()
                        } else {
                            format!("{k}={v}")
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `vireo observe`: the flows the filter selects.
    pub(super) fn observe(&mut self, filter: &FlowFilter, max: usize) -> Result<Value> {
        if let Err(e) = filter.check() {
            bail!("{e}");
        }
        self.observe_drain();
        let (flows, cursor) = self.flows.select(filter, max.clamp(1, 1 << 16), now_ns());
        Ok(json!({
            "flows": flows,
            "cursor": cursor,
            "lost": self.tables.current().flows.lost(),
            "overwritten": self.flows.ring.overwritten(),
            "ring": self.flows.ring.cap(),
        }))
    }

    /// `vireo monitor --type trace`: what to trace, published to the workers; `None` stops
    /// tracing a few seconds after the last ask.
    pub(super) fn trace_ask(&mut self, ask: Option<&vireo_api::TraceAsk>) -> Result<()> {
        let t = self.tables.current();
        let Some(a) = ask else {
            if self
                .flows
                .trace_seen
                .is_some_and(|s| s.elapsed() > super::monitor::IDLE)
            {
                self.flows.trace_seen = None;
                t.monitor.set_trace(0, None);
            }
            return Ok(());
        };
        let endpoint = match (&a.pod, a.endpoint) {
            (Some(p), _) => {
                let (ns, name) = vireo_api::flows::parse_pod(p).map_err(anyhow::Error::msg)?;
                let key = (ns.to_string(), name.to_string());
                match self.control.view().pods.get(&key) {
                    Some(p) => Some(p.ip),
                    None => bail!("--pod {ns}/{name}: no such pod"),
                }
            }
            (None, Some(id)) => match t.endpoints.values().find(|e| e.slot == id) {
                Some(e) => Some(e.ip),
                None => bail!("--endpoint {id}: no such endpoint (see `vireo map get endpoints`)"),
            },
            (None, None) => None,
        };
        if a.sample == 0 {
            bail!("--sample must be at least 1");
        }
        t.monitor.set_trace(a.sample, endpoint);
        self.flows.trace_seen = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vireo_dataplane::counters::DropReason;
    use vireo_dataplane::flows::FlowEvent;
    use vireo_policy::Origin;

    use super::*;

    fn record(verdict: FlowVerdict, reason: Option<DropReason>) -> FlowRecord {
        FlowRecord {
            time_ns: 1_796_297_918_123_456_789,
            event: if reason.is_some() {
                FlowEvent::Drop
            } else {
                FlowEvent::New
            },
            verdict,
            reason,
            in_slot: 1,
            out_slot: Some(2),
            to_tunnel: false,
            from_tunnel: false,
            reply: false,
            src: Ipv4Addr::new(10, 244, 1, 10),
            dst: Ipv4Addr::new(10, 244, 1, 11),
            proto: 6,
            sport: 40000,
            dport: 8080,
            icmp: None,
            tcp_flags: 0x02,
            bytes: 60,
            src_identity: 300,
            dst_identity: 301,
            direction: None,
            rule: None,
        }
    }

    fn with_names<T>(f: impl FnOnce(&Names<'_>) -> T) -> T {
        let local = |ip: Ipv4Addr| (ip == Ipv4Addr::new(10, 244, 1, 11)).then_some(3);
        let iface = |slot: u16| Some(format!("lxc{slot}"));
        let labels = |id: u32| vec![format!("k8s:app=a{id}")];
        let names = Names {
            node: "node-1",
            pods: [
                (Ipv4Addr::new(10, 244, 1, 10), ("x".into(), "a".into())),
                (Ipv4Addr::new(10, 244, 1, 11), ("y".into(), "b".into())),
            ]
            .into_iter()
            .collect(),
            local: &local,
            iface: &iface,
            labels: &labels,
        };
        f(&names)
    }

    #[test]
    fn a_denied_flow_is_hubble_json_with_its_rule() {
        let mut r = record(FlowVerdict::Dropped, Some(DropReason::PolicyDenied));
        r.direction = Some(Direction::Ingress);
        r.rule = Some(Arc::new(Origin {
            kind: "CiliumNetworkPolicy".into(),
            name: "y/deny-x".into(),
            rule: "ingressDeny[0]".into(),
        }));
        let v = with_names(|n| flow_json(&r, n));
        assert_eq!(
            v,
            json!({
                "time": "2026-12-03T11:38:38.123456789Z",
                "verdict": "DROPPED",
                "drop_reason_desc": "POLICY_DENIED",
                "Type": "L3_L4",
                "node_name": "node-1",
                "event": "drop",
                "IP": {"source": "10.244.1.10", "destination": "10.244.1.11", "ipVersion": "IPv4"},
                "l4": {"TCP": {"source_port": 40000, "destination_port": 8080,
                               "flags": {"SYN": true}}},
                "source": {"identity": 300, "namespace": "x", "pod_name": "a",
                           "labels": ["k8s:app=a300"]},
                "destination": {"ID": 3, "identity": 301, "namespace": "y", "pod_name": "b",
                                "labels": ["k8s:app=a301"]},
                "traffic_direction": "INGRESS",
                "is_reply": false,
                "bytes": 60,
                "interface": {"name": "lxc1"},
                "policy_rule": "CiliumNetworkPolicy y/deny-x ingressDeny[0]",
                "ingress_denied_by": [{"kind": "CiliumNetworkPolicy", "namespace": "y",
                                       "name": "deny-x", "rule": "ingressDeny[0]"}],
                "Summary": "TCP Flags: SYN",
            })
        );
        assert_eq!(
            vireo_api::flows::render_flow(&v),
            "Dec  3 11:38:38.123: x/a:40000 (ID:300) -> y/b:8080 (ID:301) INGRESS DROPPED \
             (TCP Flags: SYN) 60 bytes, POLICY_DENIED, rule CiliumNetworkPolicy y/deny-x \
             ingressDeny[0]"
        );
        // The default deny: no rule.
        r.rule = None;
        r.direction = Some(Direction::Egress);
        let v = with_names(|n| flow_json(&r, n));
        assert_eq!(v["policy_rule"], "default deny");
        assert_eq!(v["traffic_direction"], "EGRESS");
        assert!(v.get("egress_denied_by").is_none());
    }

    #[test]
    fn forwarded_udp_icmp_replies_and_other_drops() {
        let mut r = record(FlowVerdict::Forwarded, None);
        r.proto = 17;
        let v = with_names(|n| flow_json(&r, n));
        assert_eq!(v["verdict"], "FORWARDED");
        assert_eq!(
            v["l4"],
            json!({"UDP": {"source_port": 40000, "destination_port": 8080}})
        );
        assert!(v.get("drop_reason_desc").is_none() && v.get("policy_rule").is_none());
        assert_eq!(
            v["traffic_direction"], "INGRESS",
            "to a local pod from elsewhere"
        );
        // A reply from the local pod to a flow opened from elsewhere is still ingress.
        (r.src, r.dst, r.reply) = (r.dst, r.src, true);
        r.proto = 1;
        r.icmp = Some((0, 0));
        r.event = FlowEvent::FirstReply;
        let v = with_names(|n| flow_json(&r, n));
        assert_eq!(v["l4"], json!({"ICMPv4": {"type": 0, "code": 0}}));
        assert_eq!(v["Summary"], "ICMPv4 type 0 code 0");
        assert_eq!(
            (&v["is_reply"], &v["event"]),
            (&json!(true), &json!("first_reply"))
        );
        assert_eq!(v["traffic_direction"], "INGRESS");
        assert_eq!(v["source"]["pod_name"], "b");
        // Another drop: its reason, no rule.
        let mut r = record(FlowVerdict::Dropped, Some(DropReason::CtFull));
        r.direction = None;
        let v = with_names(|n| flow_json(&r, n));
        assert_eq!(v["drop_reason_desc"], "CT_FULL");
        assert!(v.get("policy_rule").is_none());
    }

    #[test]
    fn the_ring_is_bounded_and_filtered_by_time_cursor_pod_and_verdict() {
        let mut log = FlowLog::new(3);
        let flow = |verdict: &str, ns: &str| {
            json!({"verdict": verdict, "source": {"namespace": ns, "pod_name": "a"},
                   "destination": {}})
        };
        let s = 1_000_000_000u64;
        log.push(10 * s, flow("FORWARDED", "x"));
        log.push(20 * s, flow("DROPPED", "x"));
        log.push(30 * s, flow("FORWARDED", "y"));
        log.push(40 * s, flow("DROPPED", "y"));
        assert_eq!(log.counts().1, 1, "the oldest overwritten");
        let all = FlowFilter::default();
        let (v, cursor) = log.select(&all, 100, 41 * s);
        assert_eq!((v.len(), cursor), (3, 4));
        let since = FlowFilter {
            since_ms: Some(15_000),
            ..Default::default()
        };
        assert_eq!(log.select(&since, 100, 41 * s).0.len(), 2, "the last 15 s");
        let after = FlowFilter {
            after: Some(3),
            ..Default::default()
        };
        let (v, _) = log.select(&after, 100, 41 * s);
        assert_eq!(v, vec![flow("DROPPED", "y")], "following from the cursor");
        let pick = FlowFilter {
            verdict: Some("DROPPED".into()),
            pod: Some("x/a".into()),
            ..Default::default()
        };
        assert_eq!(log.select(&pick, 100, 41 * s).0, vec![flow("DROPPED", "x")]);
        let (v, _) = log.select(&all, 1, 41 * s);
        assert_eq!(
            v,
            vec![flow("DROPPED", "y")],
            "the newest of those that match"
        );
        let mut off = FlowLog::new(0);
        off.push(1, flow("FORWARDED", "x"));
        assert_eq!(off.select(&all, 10, 2).0.len(), 0);
    }
}
