//! `vireo status`: the agent's state as JSON (nodes, endpoints, interfaces, workers, counters,
//! readiness, and what it adopted from the previous process: `conntrack_state`).

use serde_json::{json, Value};
use vireo_control::config::format_mac;
use vireo_dataplane::counters::CounterSnapshot;

use super::Agent;

impl Agent {
    pub(super) fn status(&self) -> Value {
        let t = self.tables.load();
        let ifaces: Vec<Value> = self
            .ifaces
            .iter()
            .map(|(name, a)| {
                let xdp = self.steering.counters(u32::from(a.slot)).unwrap_or_default();
                let ep = t.endpoints.values().find(|e| e.slot == a.slot);
                json!({
                    "name": name,
                    "ifindex": a.ifindex,
                    "slot": a.slot,
                    "role": a.cfg.role,
                    "queues": a.queues,
                    "worker": a.worker,
                    "xdp_mode": a.link.as_ref().map(|l| l.mode().as_str()),
                    "af_xdp_mode": a.af_xdp.as_str(),
                    "endpoint": ep.map(|e| json!({"ip": e.ip.to_string(), "mac": format_mac(&e.mac)})),
                    "xdp": {"steered": xdp.steered, "passed": xdp.passed, "no_socket": xdp.no_socket},
                })
            })
            .collect();
        let mut total = CounterSnapshot::default();
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|w| {
                let c = w.counters();
                total.add(&c);
                let ports = w.ports();
                json!({
                    "id": w.spec().id,
                    "cores": w.spec().cores,
                    "busy_poll": w.spec().busy_poll,
                    "sockets": ports.len(),
                    "fill_base": ports.first().map(|p| p.fill_base),
                    "fill_high": ports.first().map(|p| p.fill_high),
                    "multi_buffer": ports.first().map(|p| p.multi_buffer),
                    "umem_frames": w.spec().umem.frames,
                    "counters": c,
                })
            })
            .collect();
        let not_ready = self.readiness_problems();
        json!({
            "node": self.cfg.node,
            "node_ip": t.local.map(|l| l.ip.to_string()),
            "remote_nodes": t.nodes.len(),
            "endpoints": self.endpoints(),
            "uptime_s": self.started.elapsed().as_secs(),
            "metrics_address": self.listener.as_ref().map(|l| l.addr().to_string()),
            "ready": not_ready.is_empty(),
            "not_ready": not_ready,
            "source": self.source.as_ref().map(|s| s.status()),
            "node_config": self.node_cfg.status(),
            "interfaces": ifaces,
            "workers": workers,
            "counters": total,
            "dns": t.fqdn.counters.snapshot(),
            "conntrack_state": self.ct_state,
        })
    }
}
