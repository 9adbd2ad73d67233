//! The node's host pair, Cilium's `cilium_host`/`cilium_net`: a veth pair `vireo_host` (the
//! node's stack) / `vireo_net` (attached to the dataplane, role `host`), made with netlink in
//! the agent's own namespace. The cluster's pod CIDRs, the ClusterIPs and the service loopback
//! address are routed to `vireo_host` with the node's address as source, so the node's own
//! traffic to pods and services (kubelet probes, host-network pods) enters the dataplane as
//! identity `host`, and replies come back the same way.
//!
//! `vireo_host` sends complete checksums (tx checksum offload off: AF_XDP copy mode loses
//! CHECKSUM_PARTIAL), has reverse-path filtering off, and both ends have the pods' MTU
//! (underlay − 50). The pair and its routes are made when the node's address and uplink are
//! known, and kept in line with the cluster on every reconcile; a clean shutdown deletes the
//! pair (and so its routes). If the agent dies, they stay: the node's traffic to pods then
//! goes nowhere, as the pods' own traffic does, until an agent starts again and takes the
//! pair over as it finds it.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use vireo_control::config::{InterfaceConfig, Role};
use vireo_control::netlink::{self, link};
use vireo_dataplane::io::sys;
use vireo_dataplane::tables::{HostPort, SERVICE_LOOPBACK};
use vireo_lb::FrontendKind;

use super::Agent;

/// The node's end of the pair.
pub const HOST_IF: &str = "vireo_host";
/// The dataplane's end.
pub const NET_IF: &str = "vireo_net";
/// What VXLAN adds: the pair gets the pods' MTU.
const OVERHEAD: u16 = 50;

impl Agent {
    /// Makes and attaches the host pair once the node's address and uplink are known, and
    /// brings its routes in line with the cluster (pod CIDRs, ClusterIPs, service loopback).
    pub(super) fn reconcile_host(&mut self) {
        if self.source.is_none() {
            return; // only configured interfaces: no cluster to route to
        }
        if let Err(e) = self.try_reconcile_host() {
            tracing::warn!("host pair: {e:#}");
        }
    }

    fn try_reconcile_host(&mut self) -> Result<()> {
        let t = self.tables.current();
        let (Some(node_ip), Some(local)) = (self.control.node_ip(), t.local) else {
            return Ok(());
        };
        if !self.ifaces.contains_key(NET_IF) {
            let made = link::ensure_veth(HOST_IF, NET_IF).context("creating the veth pair")?;
            let mtu = u32::from(local.mtu.saturating_sub(OVERHEAD));
            link::set_up(NET_IF, mtu).context(NET_IF)?;
            link::set_up(HOST_IF, mtu).context(HOST_IF)?;
            sys::tx_checksum_off(HOST_IF)?;
            // The node's stack gets pods' and services' addresses as sources on vireo_host.
            let rp = format!("/proc/sys/net/ipv4/conf/{HOST_IF}/rp_filter");
            std::fs::write(&rp, "0").with_context(|| format!("writing {rp}"))?;
            let ifc = InterfaceConfig {
                name: NET_IF.into(),
                role: Role::Host,
                endpoint: None,
            };
            self.add_iface(&ifc, 0, true)?;
            let slot = self.ifaces[NET_IF].slot;
            let peer_mac = sys::mac(HOST_IF)?;
            self.tables
                .update(|t| t.host = Some(HostPort { slot, peer_mac }));
            tracing::info!(created = made, mtu, "host pair {HOST_IF}/{NET_IF} attached");
        }
        let mut want: BTreeSet<Ipv4Net> = self
            .control
            .view()
            .nodes
            .values()
            .filter_map(|n| n.pod_cidr)
            .collect();
        let host32 = |ip| Ipv4Net::new(ip, 32).expect("/32 is valid");
        want.insert(host32(SERVICE_LOOPBACK));
        for s in t.services.services() {
            for f in s.spec.frontends.iter() {
                if f.kind == FrontendKind::ClusterIp && f.ip != node_ip {
                    want.insert(host32(f.ip));
                }
            }
        }
        let oif = netlink::ifindex(HOST_IF)?.context("vireo_host is gone")?;
        let have: BTreeSet<Ipv4Net> = link::routes(oif)?.into_iter().collect();
        for n in want.difference(&have) {
            link::route_replace(*n, oif, Some(node_ip)).with_context(|| format!("route {n}"))?;
        }
        for n in have.difference(&want) {
            link::route_delete(*n, oif).with_context(|| format!("removing route {n}"))?;
        }
        Ok(())
    }

    /// Detaches and deletes the host pair (its routes go with it).
    pub(super) fn remove_host(&mut self) {
        if self.ifaces.contains_key(NET_IF) {
            let _ = self.remove_iface(NET_IF);
        }
        if self.source.is_some() {
            if let Err(e) = link::delete(HOST_IF) {
                tracing::warn!("deleting {HOST_IF}: {e}");
            }
        }
    }

    /// Wakes the agent's loop when the kernel's routes or the uplink's neighbours change, so
    /// next hops are re-read then.
    pub(super) fn watch_kernel(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        let uplink = self
            .ifaces
            .values()
            .find(|a| a.cfg.role == Role::Uplink)
            .map(|a| a.ifindex);
        let relevant = Arc::new(move |ifindex: u32| Some(ifindex) == uplink);
        if let Err(e) = netlink::watch::spawn(relevant, wake) {
            tracing::warn!("watching the kernel's routes and neighbours: {e}");
        }
    }
}
