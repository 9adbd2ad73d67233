//! The agent's side of masquerade (pod → world): publishes the settings, the cluster's pod
//! CIDRs and the uplink's next hop to the world in `Tables::masq`, and programs the uplink to
//! steer the replies (the node's address and the port range). Re-checked with the overlay's
//! next hops on every reconcile; published only when something changed.

use std::net::Ipv4Addr;
use std::sync::Arc;

use vireo_control::config::Role;
use vireo_dataplane::tables::Masquerade;

use super::Agent;

/// A world address to ask the kernel's routes with: TEST-NET-1 (RFC 5737) is routed by no
/// specific route, so its next hop is the default route's.
const WORLD_PROBE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// What was last published and programmed.
#[derive(Debug, Default)]
pub(super) struct MasqState {
    steered: Option<Option<(Ipv4Addr, u16, u16)>>,
}

impl Agent {
    /// Publishes `Tables::masq` and the uplink's steering of masquerade replies, when they
    /// changed. Masquerade is off (`None`) when the configuration says so, or until the node's
    /// address and uplink are known; the next hop is `None` (counted `no_neighbor`) until the
    /// kernel resolved it, and a datagram to its discard port makes the kernel resolve it.
    pub(super) fn publish_masquerade(&mut self) {
        let cfg = &self.cfg.masquerade;
        let uplink = self
            .ifaces
            .values()
            .find(|a| a.cfg.role == Role::Uplink)
            .map(|a| a.cfg.name.clone());
        let node_ip = self.control.node_ip();
        let ports = cfg.ports().ok();
        let want = match (cfg.enabled, uplink, node_ip, ports) {
            (true, Some(dev), Some(_), Some(ports)) => {
                let hop = vireo_control::neigh::next_hop(WORLD_PROBE, &dev);
                let mac = vireo_control::neigh::lookup(hop, &dev);
                if mac.is_none() && hop != WORLD_PROBE {
                    if let Err(e) = vireo_control::neigh::resolve(hop, &dev) {
                        tracing::debug!(%hop, "asking the kernel to resolve the next hop: {e}");
                    }
                }
                let mut cluster: Vec<_> = self
                    .control
                    .view()
                    .nodes
                    .values()
                    .filter_map(|n| n.pod_cidr)
                    .collect();
                cluster.sort();
                cluster.dedup();
                Some(Masquerade {
                    ports,
                    cluster,
                    non_masquerade: cfg.cidrs(),
                    next_hop_mac: mac,
                })
            }
            _ => None,
        };
        let t = self.tables.current();
        if t.masq.as_deref() != want.as_ref() {
            if let Some(m) = &want {
                tracing::info!(
                    ports = ?m.ports,
                    cluster = ?m.cluster,
                    non_masquerade = ?m.non_masquerade,
                    next_hop_mac = ?m.next_hop_mac.map(|m| vireo_control::config::format_mac(&m)),
                    "masquerade published"
                );
            }
            let want = want.clone().map(Arc::new);
            self.tables.update(|t| t.masq = want);
        }
        // The tables first, then the steering: no reply is steered to a dataplane that would
        // not know it.
        let steer = want
            .as_ref()
            .zip(node_ip)
            .map(|(m, ip)| (ip, m.ports.0, m.ports.1));
        if self.masq.steered != Some(steer) {
            match self.steering.set_masquerade(steer) {
                Ok(()) => self.masq.steered = Some(steer),
                Err(e) => tracing::warn!("steering masquerade replies from the uplink: {e}"),
            }
        }
    }
}
