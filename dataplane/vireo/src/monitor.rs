//! `vireo monitor`: the workers' events (drops, and new flows' policy verdicts when asked for)
//! as JSON with identities' labels, and policy audit mode published to the workers.
//!
//! Event JSON (one object per event; `vireo monitor --json` prints them one per line):
//! - drops: `{"type": "drop", "reason", "interface", "src", "dst", "protocol",
//!   "src_identity", "src_labels", "dst_identity", "dst_labels", "direction", "rule"}`
//!   (`direction` and `rule` for policy drops; `rule` is `"default deny"` without one);
//! - verdicts: `{"type": "policy-verdict", "verdict": "allowed" | "denied" | "audit",
//!   "direction": "ingress" | "egress", "interface", "src", "dst", "protocol", "icmp_type",
//!   "src_identity", "src_labels", "dst_identity", "dst_labels", "rule"}` (`rule`: the
//!   deciding rule, or `"default"`; `icmp_type`: the type judged, for ICMP, else null).
//!
//! - traces: `{"type": "trace", "interface", "to_interface", "state", "src", "dst",
//!   "protocol", "icmp_type", "tcp_flags", "bytes", "src_identity", "src_labels",
//!   "dst_identity", "dst_labels"}` (`to_interface`: the interface it left on, or `"tunnel"`;
//!   `state`: conntrack's `new`, `established`, `reply`, `related` or `untracked`).
//!
//! `src`/`dst` are `ip:port` for TCP, UDP and SCTP, the address alone otherwise. The reply is
//! `{"events": [...], "cursor": C, "missed": K, "lost": N, "sampled_out": M}`: the events after
//! the client's cursor (the agent drains the workers' queues into a log of its last
//! [`LOG_EVENTS`] events, numbered, so that every client sees every event), the cursor to ask
//! from next, the events this client missed because the log moved past them, events lost to a
//! full queue, and verdict events over the rate limit
//! ([`vireo_dataplane::events::VERDICTS_PER_SECOND`]), since the agent started.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vireo_control::services::proto_name;
use vireo_dataplane::events::{DropEvent, EventKind};
use vireo_dataplane::tables::PolicyAudit;

use super::numbered::Numbered;
use super::Agent;

/// How long collection goes on after the last `vireo monitor` call.
pub(super) const IDLE: Duration = Duration::from_secs(5);

/// Events the agent keeps for its monitor clients.
pub(super) const LOG_EVENTS: usize = 8192;

/// The recent events as JSON, numbered, oldest first.
pub(super) struct MonitorLog(Numbered<Value>);

impl Default for MonitorLog {
    fn default() -> Self {
        MonitorLog(Numbered::new(LOG_EVENTS))
    }
}

impl MonitorLog {
    fn push(&mut self, v: Value) {
        self.0.push(v);
    }

    /// The number of the newest event (0: none yet).
    fn newest(&self) -> u64 {
        self.0.newest()
    }

    /// At most `max` events after `after`, the cursor after them, and how many after `after`
    /// the log no longer has.
    fn after(&self, after: u64, max: usize) -> (Vec<Value>, u64, u64) {
        let oldest = self.0.oldest();
        let missed = oldest.saturating_sub(after.saturating_add(1));
        let out: Vec<&(u64, Value)> = self.0.after(after).take(max).collect();
        let cursor = out.last().map_or(after.max(oldest - 1), |e| e.0);
        (
            out.into_iter().map(|e| e.1.clone()).collect(),
            cursor,
            missed,
        )
    }
}

impl Agent {
    /// Stops collecting events a few seconds after `vireo monitor` last asked for them, and
    /// verdicts a few seconds after it last asked for those (with or without a source).
    pub(super) fn monitor_idle(&mut self) {
        let idle = |t: &Option<Instant>| t.is_some_and(|t| t.elapsed() > IDLE);
        if idle(&self.monitor_seen) {
            self.monitor_seen = None;
            self.verdicts_seen = None;
            self.tables.current().monitor.set(false);
        }
        let _ = self.trace_ask(None);
        if idle(&self.verdicts_seen) {
            self.verdicts_seen = None;
            self.tables.current().monitor.set_verdicts(false);
        }
    }

    /// Events after the client's cursor `after` (`vireo monitor`; none: from now on), with
    /// identities' labels; turns collection on (and verdicts, when `verdicts`).
    pub(super) fn monitor(
        &mut self,
        max: usize,
        after: Option<u64>,
        verdicts: bool,
        trace: Option<vireo_api::TraceAsk>,
    ) -> anyhow::Result<Value> {
        self.trace_ask(trace.as_ref())?;
        let t = self.tables.current();
        if self.monitor_seen.is_none() {
            t.monitor.set(true);
        }
        self.monitor_seen = Some(Instant::now());
        if verdicts {
            t.monitor.set_verdicts(true);
            self.verdicts_seen = Some(Instant::now());
        }
        let after = after.unwrap_or(self.monitor_log.newest());
        let (events, lost) = t.monitor.drain(LOG_EVENTS);
        let labels = |id: u32| self.identity_labels(id);
        let name = |slot: u16| t.iface(slot).map(|i| i.name.as_str());
        let events: Vec<Value> = events
            .iter()
            .map(|e| {
                let mut v = event_json(e, name(e.in_slot), &labels);
                if let Some(tr) = e.trace {
                    v["to_interface"] = match tr.out_slot {
                        _ if tr.to_tunnel => json!("tunnel"),
                        Some(s) => json!(name(s)),
                        None => Value::Null,
                    };
                }
                v
            })
            .collect();
        for v in events {
            self.monitor_log.push(v);
        }
        let (events, cursor, missed) = self.monitor_log.after(after, max.clamp(1, LOG_EVENTS));
        Ok(json!({
            "events": events,
            "cursor": cursor,
            "missed": missed,
            "lost": lost,
            "sampled_out": t.monitor.sampled_out(),
        }))
    }

    /// Publishes policy audit mode (the configuration's `policy_audit_mode`, and the pods
    /// annotated `policy.vireo.io/audit-mode: "true"`) when it changed: a new snapshot makes
    /// every tracked flow's verdict be taken again.
    pub(super) fn publish_audit(&mut self) {
        let want = PolicyAudit {
            all: self.cfg.policy_audit_mode,
            endpoints: self
                .control
                .audit_endpoints()
                .into_iter()
                .map(u32::from)
                .collect(),
        };
        if *self.tables.current().audit != want {
            tracing::info!(
                all = want.all,
                endpoints = want.endpoints.len(),
                "policy audit mode published"
            );
            self.tables.update(|t| t.audit = Arc::new(want));
        }
    }
}

/// One event as JSON (module doc), with the name of the interface it came in on and the
/// labels of identities.
pub(crate) fn event_json(
    e: &DropEvent,
    iface: Option<&str>,
    labels: &dyn Fn(u32) -> Vec<String>,
) -> Value {
    let addr = |ip: Ipv4Addr, port: u16| match e.proto {
        vireo_lb::service::TCP | vireo_lb::service::UDP | vireo_policy::rules::ip_proto::SCTP => {
            format!("{ip}:{port}")
        }
        _ => ip.to_string(),
    };
    let proto = match e.proto {
        vireo_conntrack::table::ICMP => "ICMP".to_string(),
        p => proto_name(p),
    };
    let common = json!({
        "interface": iface,
        "src": addr(e.src, e.sport),
        "dst": addr(e.dst, e.dport),
        "protocol": proto,
        "src_identity": e.src_identity,
        "src_labels": labels(e.src_identity),
        "dst_identity": e.dst_identity,
        "dst_labels": labels(e.dst_identity),
        "direction": e.direction,
    });
    let mut v = match e.kind {
        EventKind::Drop => json!({
            "type": "drop",
            "reason": e.reason.name(),
            "rule": match (&e.rule, e.direction) {
                (Some(r), _) => Value::from(r.to_string()),
                (None, Some(_)) => Value::from("default deny"),
                (None, None) => Value::Null,
            },
        }),
        EventKind::Trace => {
            let tr = e.trace.unwrap_or(vireo_dataplane::events::Trace {
                out_slot: None,
                to_tunnel: false,
                ct: "untracked",
                tcp_flags: 0,
                bytes: 0,
            });
            json!({
                "type": "trace",
                "state": tr.ct,
                "icmp_type": e.icmp_type,
                "tcp_flags": (e.proto == vireo_lb::service::TCP)
                    .then(|| vireo_api::flows::tcp_flag_names(tr.tcp_flags).join(", ")),
                "bytes": tr.bytes,
                "to_interface": Value::Null,
            })
        }
        EventKind::Verdict(verdict) => json!({
            "type": "policy-verdict",
            "verdict": verdict.name(),
            "icmp_type": e.icmp_type,
            "rule": e.rule.as_ref().map_or_else(|| "default".to_string(), |r| r.to_string()),
        }),
    };
    if let (Some(v), Value::Object(c)) = (v.as_object_mut(), common) {
        v.extend(c);
    }
    v
}

#[cfg(test)]
mod log_tests {
    use super::*;

    fn numbers(v: &[Value]) -> Vec<u64> {
        v.iter().filter_map(|e| e["n"].as_u64()).collect()
    }

    /// Two clients each read every event from their own cursor; a client that falls behind the
    /// log is told how many it missed; a new client starts from now.
    #[test]
    fn every_client_reads_every_event_from_its_cursor() {
        let mut log = MonitorLog::default();
        assert_eq!(log.newest(), 0);
        let (none, c0, missed) = log.after(0, 10);
        assert_eq!((none.len(), c0, missed), (0, 0, 0));
        for n in 1..=5 {
            log.push(json!({"n": n}));
        }
        let (a, ca, _) = log.after(0, 3);
        assert_eq!(
            (numbers(&a), ca),
            (vec![1, 2, 3], 3),
            "at most max, oldest first"
        );
        let (b, cb, _) = log.after(0, 100);
        assert_eq!(
            (numbers(&b), cb),
            (vec![1, 2, 3, 4, 5], 5),
            "the other client too"
        );
        let (a, ca, _) = log.after(ca, 100);
        assert_eq!((numbers(&a), ca), (vec![4, 5], 5));
        let (a, ca2, m) = log.after(ca, 100);
        assert_eq!(
            (a.len(), ca2, m),
            (0, 5, 0),
            "nothing new: the cursor stays"
        );
        // A new client asks from the newest: only what comes next.
        let new_client = log.newest();
        log.push(json!({"n": 6}));
        assert_eq!(numbers(&log.after(new_client, 100).0), vec![6]);
        // Past the log's length, the oldest go; a client behind is told how many it missed.
        for n in 7..(7 + LOG_EVENTS as u64) {
            log.push(json!({"n": n}));
        }
        let (late, c, missed) = log.after(cb, 2);
        assert_eq!(missed, 1, "event 6 is gone");
        assert_eq!((numbers(&late), c), (vec![7, 8], 8));
    }
}

#[cfg(test)]
mod tests {
    use vireo_dataplane::counters::DropReason;
    use vireo_dataplane::events::PolicyVerdict;
    use vireo_policy::{Direction, Origin};

    use super::*;

    fn event(kind: EventKind, proto: u8, rule: bool) -> DropEvent {
        DropEvent {
            kind,
            reason: DropReason::PolicyDenied,
            in_slot: 1,
            src: Ipv4Addr::new(10, 244, 1, 10),
            dst: Ipv4Addr::new(10, 244, 1, 11),
            proto,
            sport: 40000,
            dport: if proto == 1 { 40000 } else { 80 },
            src_identity: 300,
            dst_identity: 301,
            direction: Some(Direction::Ingress),
            rule: rule.then(|| {
                Arc::new(Origin {
                    kind: "CiliumNetworkPolicy".into(),
                    name: "x/p".into(),
                    rule: "ingress[0]".into(),
                })
            }),
            icmp_type: (proto == 1).then_some(8),
            trace: None,
        }
    }

    fn labels(id: u32) -> Vec<String> {
        vec![format!("k8s:app=a{id}")]
    }

    #[test]
    fn verdict_events_as_json_and_text() {
        let e = event(EventKind::Verdict(PolicyVerdict::Allowed), 6, true);
        let v = event_json(&e, Some("lxc1"), &labels);
        assert_eq!(
            v,
            json!({
                "type": "policy-verdict", "verdict": "allowed", "direction": "ingress",
                "interface": "lxc1", "src": "10.244.1.10:40000", "dst": "10.244.1.11:80",
                "protocol": "TCP", "icmp_type": null,
                "src_identity": 300, "src_labels": ["k8s:app=a300"],
                "dst_identity": 301, "dst_labels": ["k8s:app=a301"],
                "rule": "CiliumNetworkPolicy x/p ingress[0]",
            })
        );
        assert_eq!(
            vireo_api::render::render_event(&v),
            "-> policy-verdict ingress allowed on lxc1 TCP 10.244.1.10:40000 -> \
             10.244.1.11:80, identity 300 [k8s:app=a300] -> 301 [k8s:app=a301], rule \
             CiliumNetworkPolicy x/p ingress[0]"
        );
        let e = event(EventKind::Verdict(PolicyVerdict::Audit), 1, false);
        let v = event_json(&e, None, &labels);
        assert_eq!(v["verdict"], "audit");
        assert_eq!(v["rule"], "default");
        assert_eq!(v["icmp_type"], 8);
        assert_eq!(v["src"], "10.244.1.10");
        assert_eq!(v["protocol"], "ICMP");
        assert_eq!(
            vireo_api::render::render_event(&v),
            "-> policy-verdict ingress audit on - ICMP type 8 10.244.1.10 -> 10.244.1.11, \
             identity 300 [k8s:app=a300] -> 301 [k8s:app=a301], rule default"
        );
        let e = event(EventKind::Verdict(PolicyVerdict::Denied), 132, false);
        let v = event_json(&e, Some("lxc1"), &labels);
        assert_eq!(
            (&v["verdict"], &v["dst"]),
            (&json!("denied"), &json!("10.244.1.11:80"))
        );
    }

    #[test]
    fn trace_events_as_json_and_text() {
        let mut e = event(EventKind::Trace, 6, false);
        e.direction = None;
        e.trace = Some(vireo_dataplane::events::Trace {
            out_slot: Some(2),
            to_tunnel: false,
            ct: "new",
            tcp_flags: 0x02,
            bytes: 60,
        });
        let mut v = event_json(&e, Some("lxc1"), &labels);
        assert_eq!(v["type"], "trace");
        assert_eq!(v["state"], "new");
        assert_eq!(v["tcp_flags"], "SYN");
        assert_eq!(v["bytes"], 60);
        assert_eq!(v["src"], "10.244.1.10:40000");
        v["to_interface"] = json!("lxc2");
        assert_eq!(
            vireo_api::render::render_event(&v),
            "-> trace from lxc1 to lxc2 (new) TCP 10.244.1.10:40000 -> 10.244.1.11:80, \
             identity 300 [k8s:app=a300] -> 301 [k8s:app=a301], 60 bytes, flags SYN"
        );
    }

    #[test]
    fn drop_events_keep_their_shape() {
        let v = event_json(&event(EventKind::Drop, 17, false), Some("lxc1"), &labels);
        assert_eq!(
            v,
            json!({
                "type": "drop", "reason": "policy_denied", "interface": "lxc1",
                "src": "10.244.1.10:40000", "dst": "10.244.1.11:80", "protocol": "UDP",
                "src_identity": 300, "src_labels": ["k8s:app=a300"],
                "dst_identity": 301, "dst_labels": ["k8s:app=a301"],
                "direction": "ingress", "rule": "default deny",
            })
        );
        assert!(vireo_api::render::render_event(&v).starts_with("xx drop (policy_denied)"));
    }
}
