//! What `/metrics`, `/healthz` and `/readyz` answer ([`crate::http`]), from the agent's loop.
//!
//! Metrics are read from the workers' counters (relaxed loads of atomics each worker adds to
//! once per batch), the XDP program's per-CPU counters, the conntrack table's counts, the
//! source's state and what the agent records of its own builds; a scrape never reaches a
//! worker. Readiness: the first complete table set is installed (the source delivered its
//! first complete view and it was published), every attached interface has a socket on every
//! queue, every configured interface is attached, no worker stopped, and the source has not
//! been stale for longer than `metrics.stale_after_s`.

use std::time::{Duration, Instant, SystemTime};

use prometheus::proto::MetricType;
use vireo_dataplane::counters::{CounterSnapshot, DropReason};

use super::Agent;
use crate::exposition::{Buckets, Families, SECONDS};
use crate::http::{Answer, Probe};

/// What the agent records for its metrics besides the counters.
pub(super) struct Recorded {
    /// Maglev tables built, and how long each took.
    pub maglev: Buckets,
    /// When the first complete table set was installed.
    pub complete: Option<Instant>,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            maglev: Buckets::new(&SECONDS),
            complete: None,
        }
    }
}

impl Recorded {
    /// Maglev tables were built, taking these times.
    pub fn maglev_built(&mut self, times: &[Duration]) {
        for t in times {
            self.maglev.observe(t.as_secs_f64());
        }
    }
}

/// Control-plane update latency bounds, in microseconds (1 ms to 60 s).
const LATENCY_US: [u64; 11] = [
    1_000, 5_000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000, 10_000_000,
    60_000_000,
];

impl Agent {
    /// Answers a probe.
    pub(super) fn probe(&mut self, p: Probe) -> Answer {
        match p {
            Probe::Metrics => Answer {
                status: 200,
                body: self.metrics_text(),
            },
            Probe::Health => Answer::check(&self.health_problems()),
            Probe::Ready => Answer::check(&self.readiness_problems()),
        }
    }

    /// The first complete table set is installed once the source (if any) has delivered a
    /// complete view and a reconcile published it; called after each reconcile.
    pub(super) fn note_complete(&mut self) {
        if self.recorded.complete.is_none()
            && self.source.as_ref().is_none_or(|s| s.health().synced)
        {
            self.recorded.complete = Some(Instant::now());
            tracing::info!(
                after_ms = self.started.elapsed().as_millis() as u64,
                "first complete table set installed"
            );
        }
    }

    fn health_problems(&self) -> Vec<String> {
        self.workers
            .iter()
            .filter(|w| !w.is_alive())
            .map(|w| format!("worker {} stopped", w.spec().id))
            .collect()
    }

    /// Why the agent is not ready (empty: ready).
    pub(super) fn readiness_problems(&self) -> Vec<String> {
        let mut out = self.health_problems();
        if self.recorded.complete.is_none() {
            out.push("no complete table set installed yet (the source has not synced)".into());
        }
        let sockets: std::collections::BTreeSet<(String, u32)> = self
            .workers
            .iter()
            .flat_map(|w| w.ports())
            .map(|p| (p.ifname, p.queue))
            .collect();
        for (name, a) in &self.ifaces {
            if a.link.is_none() {
                out.push(format!("interface {name}: no XDP program attached"));
            }
            for q in (0..a.queues).filter(|q| !sockets.contains(&(name.clone(), *q))) {
                out.push(format!("interface {name}: queue {q} has no AF_XDP socket"));
            }
        }
        for i in &self.cfg.interfaces {
            if !self.ifaces.contains_key(&i.name) {
                out.push(format!("interface {}: configured, not attached", i.name));
            }
        }
        if let (Some(src), Some(bound)) = (self.source.as_ref(), self.cfg.metrics.stale_after()) {
            let stale = src.health().stale_since.and_then(|t| t.elapsed().ok());
            if let Some(d) = stale.filter(|d| *d > bound) {
                out.push(format!(
                    "the source has been stale for {} s (bound: {} s)",
                    d.as_secs(),
                    bound.as_secs()
                ));
            }
        }
        out
    }

    /// The Prometheus text exposition.
    pub(super) fn metrics_text(&self) -> String {
        let mut f = Families::default();
        let ready = self.readiness_problems().is_empty();
        let version = env!("CARGO_PKG_VERSION");
        let node = self.cfg.node.as_deref().unwrap_or_default();
        f.gauges(
            "vireo_agent_info",
            "The agent's version and node (always 1).",
            [(vec![("version", version), ("node", node)], 1.0)],
        );
        f.gauges(
            "vireo_agent_uptime_seconds",
            "Seconds since the agent started.",
            [(vec![], self.started.elapsed().as_secs_f64())],
        );
        f.gauges(
            "vireo_agent_ready",
            "1 when /readyz answers ok.",
            [(vec![], f64::from(u8::from(ready)))],
        );
        self.worker_metrics(&mut f);
        self.interface_metrics(&mut f);
        self.table_metrics(&mut f);
        self.source_metrics(&mut f);
        f.encode()
    }

    fn worker_metrics(&self, f: &mut Families) {
        let snaps: Vec<(String, CounterSnapshot)> = self
            .workers
            .iter()
            .map(|w| (w.spec().id.to_string(), w.counters()))
            .collect();
        let per = |pick: &dyn Fn(&CounterSnapshot) -> [(&'static str, u64); 2]| {
            let mut v = Vec::new();
            for (w, c) in &snaps {
                for (d, n) in pick(c) {
                    v.push((vec![("worker", w.as_str()), ("direction", d)], n));
                }
            }
            v
        };
        f.counters(
            "vireo_packets_total",
            "Packets received from (rx) and handed to (tx) AF_XDP rings, per worker.",
            per(&|c| [("rx", c.rx), ("tx", c.tx)]),
        );
        f.counters(
            "vireo_bytes_total",
            "Bytes received from (rx) and handed to (tx) AF_XDP rings, per worker.",
            per(&|c| [("rx", c.rx_bytes), ("tx", c.tx_bytes)]),
        );
        f.counters(
            "vireo_handoff_frames_total",
            "Frames handed to other workers (sent) and taken from them (received).",
            per(&|c| [("sent", c.handoff.sent), ("received", c.handoff.received)]),
        );
        let mut drops = Vec::new();
        for (w, c) in &snaps {
            for r in DropReason::ALL {
                let n = c.drops.get(r.name()).copied().unwrap_or(0);
                drops.push((vec![("worker", w.as_str()), ("reason", r.name())], n));
            }
        }
        f.counters(
            "vireo_drop_count_total",
            "Packets dropped, by worker and reason (the names of `vireo status`).",
            drops,
        );
        let mut frames = Vec::new();
        for (w, c) in &snaps {
            for (state, n) in [
                ("free", c.frames.free),
                ("fill", c.frames.in_fill),
                ("tx", c.frames.in_tx),
            ] {
                frames.push((vec![("worker", w.as_str()), ("state", state)], n as f64));
            }
        }
        f.gauges(
            "vireo_umem_frames",
            "Where each worker's UMEM frames are: free, in fill rings, on TX rings.",
            frames,
        );
        let mut verdicts = Vec::new();
        let mut sum = CounterSnapshot::default();
        for (_, c) in &snaps {
            sum.add(c);
        }
        for (d, v) in [
            ("egress", sum.policy_verdicts.egress),
            ("ingress", sum.policy_verdicts.ingress),
        ] {
            for (verdict, n) in [
                ("allowed", v.allowed),
                ("denied", v.denied),
                ("audit", v.audit),
            ] {
                verdicts.push((vec![("direction", d), ("verdict", verdict)], n));
            }
        }
        f.counters(
            "vireo_policy_verdict_total",
            "New flows' policy verdicts, per direction judged under policy (audit: denied, \
             let through in audit mode).",
            verdicts,
        );
        f.counters(
            "vireo_policy_audited_packets_total",
            "Packets policy denied but let through (audit mode).",
            [(vec![], sum.policy_audited)],
        );
        let mut sockets: Vec<(
            String,
            String,
            String,
            vireo_dataplane::counters::KernelDrops,
        )> = Vec::new();
        for w in &self.workers {
            for s in w.socket_drops() {
                sockets.push((
                    w.spec().id.to_string(),
                    s.ifname,
                    s.queue.to_string(),
                    s.drops,
                ));
            }
        }
        let socket =
            |name: &str, help: &str, pick: fn(&vireo_dataplane::counters::KernelDrops) -> u64| {
                (
                    name.to_string(),
                    help.to_string(),
                    sockets
                        .iter()
                        .map(|(w, i, q, d)| {
                            (
                                vec![
                                    ("worker", w.as_str()),
                                    ("interface", i.as_str()),
                                    ("queue", q.as_str()),
                                ],
                                pick(d),
                            )
                        })
                        .collect::<Vec<_>>(),
                )
            };
        for (name, help, samples) in [
            socket(
                "vireo_afxdp_rx_ring_full_total",
                "Frames the kernel dropped because the socket's RX ring was full (XDP_STATISTICS).",
                |d| d.rx_ring_full,
            ),
            socket(
                "vireo_afxdp_fill_ring_empty_total",
                "Times the kernel found the socket's fill ring empty (XDP_STATISTICS).",
                |d| d.rx_fill_ring_empty,
            ),
            socket(
                "vireo_afxdp_rx_dropped_total",
                "Frames the kernel dropped for other reasons, e.g. too large (XDP_STATISTICS).",
                |d| d.rx_dropped,
            ),
            socket(
                "vireo_afxdp_tx_invalid_total",
                "Invalid TX descriptors (XDP_STATISTICS).",
                |d| d.tx_invalid,
            ),
        ] {
            f.counters(&name, &help, samples);
        }
    }

    fn interface_metrics(&self, f: &mut Families) {
        let mut xdp = Vec::new();
        for (name, a) in &self.ifaces {
            let c = self
                .steering
                .counters(u32::from(a.slot))
                .unwrap_or_default();
            xdp.push((name.as_str(), c));
        }
        for (metric, help, pick) in [
            (
                "vireo_xdp_steered_total",
                "Frames the XDP program redirected to the interface's AF_XDP sockets.",
                (|c| c.steered) as fn(&vireo_xdp::IfCounters) -> u64,
            ),
            (
                "vireo_xdp_passed_total",
                "Frames the XDP program passed to the kernel's stack.",
                |c| c.passed,
            ),
            (
                "vireo_xdp_no_socket_total",
                "Frames for a queue without a socket (passed to the kernel).",
                |c| c.no_socket,
            ),
        ] {
            f.counters(
                metric,
                help,
                xdp.iter().map(|(n, c)| (vec![("interface", *n)], pick(c))),
            );
        }
        let t = self.tables.current();
        f.gauges(
            "vireo_endpoints",
            "Local endpoints (pods) in the dataplane's tables.",
            [(vec![], t.endpoints.len() as f64)],
        );
        f.gauges(
            "vireo_remote_nodes",
            "Other nodes reachable over the overlay.",
            [(vec![], t.nodes.len() as f64)],
        );
        let (lost, sampled) = (t.monitor.lost(), t.monitor.sampled_out());
        f.counters(
            "vireo_monitor_events_lost_total",
            "Monitor events lost to a full queue.",
            [(vec![], lost)],
        );
        f.counters(
            "vireo_monitor_verdicts_sampled_out_total",
            "Policy-verdict events over the rate limit.",
            [(vec![], sampled)],
        );
        let (recorded, overwritten) = self.flows.counts();
        for (name, help, n) in [
            (
                "vireo_flows_recorded_total",
                "Flow records taken into the agent's ring (`vireo observe`).",
                recorded,
            ),
            (
                "vireo_flows_lost_total",
                "Flow records lost to a full worker ring.",
                t.flows.lost(),
            ),
            (
                "vireo_flows_overwritten_total",
                "Flow records overwritten in the agent's ring by newer ones.",
                overwritten,
            ),
        ] {
            f.counters(name, help, [(vec![], n)]);
        }
    }

    fn table_metrics(&self, f: &mut Families) {
        let t = self.tables.current();
        if let Some(ct) = t.ct.as_deref() {
            let (tcp, other) = ct.counts();
            let cfg = ct.config();
            f.gauges(
                "vireo_conntrack_entries",
                "Conntrack entries, by protocol class.",
                [
                    (vec![("protocol", "tcp")], tcp as f64),
                    (vec![("protocol", "other")], other as f64),
                ],
            );
            f.gauges(
                "vireo_conntrack_max_entries",
                "Conntrack capacity, by protocol class.",
                [
                    (vec![("protocol", "tcp")], cfg.max_tcp as f64),
                    (vec![("protocol", "other")], cfg.max_other as f64),
                ],
            );
            f.counters(
                "vireo_conntrack_inserts_total",
                "Conntrack entries inserted.",
                [(vec![], ct.inserts())],
            );
            f.counters(
                "vireo_conntrack_full_sweeps_total",
                "Sweeps for expired entries by inserts at the limit.",
                [(vec![], ct.sweeps())],
            );
        }
        if let Some(gc) = &self.gc {
            f.counters(
                "vireo_conntrack_gc_reaped_total",
                "Expired conntrack entries the garbage collector removed.",
                [(vec![], gc.reaped())],
            );
            f.counters(
                "vireo_conntrack_gc_runs_total",
                "Complete walks of the conntrack table by the garbage collector.",
                [(vec![], gc.passes())],
            );
        }
        let ct_full: u64 = self
            .workers
            .iter()
            .map(|w| {
                w.counters()
                    .drops
                    .get(DropReason::CtFull.name())
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        f.counters(
            "vireo_conntrack_full_total",
            "New flows dropped with the conntrack table full (ct_full).",
            [(vec![], ct_full)],
        );
        f.counters(
            "vireo_maglev_table_builds_total",
            "Maglev lookup tables built (one per service port whose backends changed).",
            [(vec![], self.recorded.maglev.count)],
        );
        f.family(
            "vireo_maglev_build_duration_seconds",
            "Time to build one Maglev lookup table.",
            MetricType::HISTOGRAM,
        )
        .histogram(&[], &self.recorded.maglev);
    }

    fn source_metrics(&self, f: &mut Families) {
        let Some(src) = self.source.as_ref() else {
            return;
        };
        let status = src.status();
        let kind = status["kind"].as_str().unwrap_or("unknown").to_string();
        let h = src.health();
        let stale = h
            .stale_since
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
        let l = vec![("kind", kind.as_str())];
        f.gauges(
            "vireo_source_connected",
            "1 while the source (the Kubernetes API server) answers: no watcher failing.",
            [(l.clone(), f64::from(u8::from(stale.is_none())))],
        );
        f.gauges(
            "vireo_source_synced",
            "1 once the source delivered its first complete view.",
            [(l.clone(), f64::from(u8::from(h.synced)))],
        );
        f.gauges(
            "vireo_source_stale_seconds",
            "Seconds since the source started failing (0 while it answers).",
            [(l.clone(), stale.map_or(0.0, |d| d.as_secs_f64()))],
        );
        f.counters(
            "vireo_source_events_total",
            "Events received from the source (watch events, directory reads).",
            [(l.clone(), h.events)],
        );
        if let Some(lat) = src.update_latency() {
            let (cum, sum_us, count) = lat.cumulative(&LATENCY_US);
            let b = Buckets {
                bounds: LATENCY_US.iter().map(|us| *us as f64 / 1e6).collect(),
                cumulative: cum,
                sum: sum_us as f64 / 1e6,
                count,
            };
            f.family(
                "vireo_control_update_latency_seconds",
                "From a change at the source to the tables built from it being published.",
                MetricType::HISTOGRAM,
            )
            .histogram(&l, &b);
        }
    }
}
