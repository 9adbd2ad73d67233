//! Forwarding tables, published to workers as immutable snapshots.
//!
//! The control side builds a new [`Tables`] value and swaps it in atomically; workers load the
//! current snapshot once per batch and never take a lock.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use vireo_policy::IpCache;

use crate::events::EventKind;

/// Fast hash map for small integer keys (rustc's Fx hash).
pub type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// An Ethernet address.
pub type Mac = [u8; 6];

/// What an interface is to the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IfRole {
    /// A pod's host-side veth.
    Pod,
    /// The node's uplink NIC.
    Uplink,
    /// The dataplane's end (`vireo_net`) of the node's host pair: the node's own stack sends
    /// to pods, node ports and ClusterIPs through its peer (`vireo_host`), and gets its
    /// replies and its traffic from pods back on it (Cilium's `cilium_net`/`cilium_host`).
    Host,
}

/// The service loopback address (Cilium's `--ipv4-service-loopback-address`): a pod reaching
/// itself through a Service (hairpin), or the host reaching itself through one, is source-NAT'd
/// to it, since Linux drops a packet arriving with one of its own addresses as source.
pub const SERVICE_LOOPBACK: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);

/// The node's host pair, as the fast path uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    /// Slot of `vireo_net` (role [`IfRole::Host`]).
    pub slot: u16,
    /// MAC of its peer `vireo_host`, in the node's stack: frames for the host go to it.
    pub peer_mac: Mac,
}

/// An attached interface, by slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Dense slot (the index into [`Tables::ifaces`]).
    pub slot: u16,
    /// Kernel name.
    pub name: String,
    /// The interface's own MAC: the gateway MAC pods see.
    pub mac: Mac,
    /// Its role.
    pub role: IfRole,
}

/// A local endpoint (pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's IPv4 address.
    pub ip: Ipv4Addr,
    /// The pod's MAC (inside its namespace).
    pub mac: Mac,
    /// Slot of the host-side veth that leads to it.
    pub slot: u16,
    /// Its security identity.
    pub identity: u32,
}

/// This node, as the overlay needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalNode {
    /// Underlay address (the tunnel endpoint).
    pub ip: Ipv4Addr,
    /// Slot of the uplink.
    pub uplink_slot: u16,
    /// MAC of the uplink.
    pub uplink_mac: Mac,
    /// MTU of the uplink: encapsulated packets must fit it.
    pub mtu: u16,
}

/// Another node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    /// Node name.
    pub name: String,
    /// Underlay MAC of the next hop towards it (resolved by the control side).
    pub next_hop_mac: Option<Mac>,
}

/// Pod → world source NAT (masquerade): what the `masquerade` stage needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// Source ports (and ICMP echo identifiers) for translated flows, inclusive; the uplink
    /// steers replies to the node's address in this range.
    pub ports: (u16, u16),
    /// The cluster's pod CIDRs: never masqueraded (a destination there is a pod or nothing).
    pub cluster: Vec<ipnet::Ipv4Net>,
    /// Destinations that leave the uplink untranslated (Cilium's
    /// `ipv4-native-routing-cidr`, ip-masq-agent's `nonMasqueradeCIDRs`).
    pub non_masquerade: Vec<ipnet::Ipv4Net>,
    /// Ethernet address of the uplink's next hop to the world (the default route's gateway),
    /// once the kernel has resolved it.
    pub next_hop_mac: Option<Mac>,
}

impl Masquerade {
    /// Whether `port` (host byte order) is in the masquerade range.
    #[inline]
    pub fn in_range(&self, port: u16) -> bool {
        (self.ports.0..=self.ports.1).contains(&port)
    }
    /// Whether `ip` is in one of the cluster's pod CIDRs.
    #[inline]
    pub fn in_cluster(&self, ip: u32) -> bool {
        let a = Ipv4Addr::from(ip);
        self.cluster.iter().any(|n| n.contains(&a))
    }
    /// Whether `ip` is in a non-masquerade CIDR.
    #[inline]
    pub fn exempt(&self, ip: u32) -> bool {
        let a = Ipv4Addr::from(ip);
        self.non_masquerade.iter().any(|n| n.contains(&a))
    }
}

/// Why policy dropped a new flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDrop {
    /// Which side's policy: the source's egress or the destination's ingress.
    pub direction: vireo_policy::Direction,
    /// Identities of both ends.
    pub src_identity: u32,
    /// Destination identity.
    pub dst_identity: u32,
    /// The deny rule, or `None` for default deny.
    pub rule: Option<Arc<vireo_policy::Origin>>,
}

/// What policy did with a packet it judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgment {
    /// It passes.
    Allowed,
    /// It is dropped (`policy_denied`).
    Denied,
    /// Policy denies it, but the endpoint whose policy does is in audit mode: it passes,
    /// counted as `policy_audited`.
    Audited,
}

/// A packet policy judges: a new flow's first packet, or one in a tracked flow's original
/// direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    /// Interface slot it arrived on.
    pub in_slot: u16,
    /// Source address and port.
    pub src: (u32, u16),
    /// Source identity (world is refined to a CIDR identity by address).
    pub src_id: u32,
    /// Destination address and port.
    pub dst: (u32, u16),
    /// IP protocol.
    pub proto: u8,
    /// What the policy's port ranges match: the destination port; for ICMP the message type
    /// ([`vireo_policy::rules::ICMP_TYPE_UNKNOWN`] for a later fragment).
    pub l4: u16,
    /// The batch's time on the conntrack clock (rate-limits verdict events).
    pub now: u32,
}

/// Cilium's policy audit mode: denials are computed and reported (`policy_audited`, monitor
/// verdict `audit`), not enforced. For every endpoint (`all`), or for some (by address, host
/// byte order); it applies to the policy of the endpoints it names, in both directions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyAudit {
    /// Every endpoint (the agent's `policy_audit_mode`).
    pub all: bool,
    /// These endpoints (the pod annotation `policy.vireo.io/audit-mode: "true"`).
    pub endpoints: rustc_hash::FxHashSet<u32>,
}

impl PolicyAudit {
    /// Whether the endpoint at `ip` is in audit mode.
    #[inline]
    pub fn applies(&self, ip: u32) -> bool {
        self.all || (!self.endpoints.is_empty() && self.endpoints.contains(&ip))
    }

    /// Whether any endpoint is.
    #[inline]
    pub fn any(&self) -> bool {
        self.all || !self.endpoints.is_empty()
    }
}

/// One snapshot of everything the fast path looks up.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// Attached interfaces by slot.
    pub ifaces: Vec<Option<Interface>>,
    /// Local endpoints by IPv4 address (host byte order).
    pub endpoints: FastMap<u32, Endpoint>,
    /// Addresses whose ARP requests the dataplane answers (the pods' gateway).
    pub gateways: Vec<Ipv4Addr>,
    /// This node, once its underlay is known.
    pub local: Option<LocalNode>,
    /// The node's host pair, once attached: the way to and from the node's own stack.
    pub host: Option<HostPort>,
    /// Other nodes by underlay address (host byte order).
    pub nodes: FastMap<u32, RemoteNode>,
    /// IP/CIDR → identity and tunnel endpoint.
    pub ipcache: IpCache,
    /// Identities a VNI may carry.
    pub identities: rustc_hash::FxHashSet<u32>,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// Set DF on the outer header of VXLAN packets.
    pub vxlan_df: bool,
    /// The connection-tracking table (shared, mutable; the same one in every snapshot, so
    /// flows survive table updates and configuration reloads).
    pub ct: Option<std::sync::Arc<vireo_conntrack::Table>>,
    /// Service frontends, backends and Maglev tables.
    pub services: Arc<vireo_lb::ServiceTable>,
    /// Compiled policy per endpoint identity.
    pub policy: Arc<vireo_policy::PolicyTables>,
    /// Where drop events go while `vireo monitor` listens (the same in every snapshot).
    pub monitor: Arc<crate::events::Monitor>,
    /// The workers' flow record rings (`vireo observe`; the same in every snapshot).
    pub flows: Arc<crate::flows::FlowRings>,
    /// The first fragments' ports of fragmented datagrams (shared, mutable; the same in every
    /// snapshot).
    pub frags: Arc<vireo_conntrack::FragTable>,
    /// Pod → world masquerade (`None`: off; traffic to the world is then an unknown
    /// destination).
    pub masq: Option<Arc<Masquerade>>,
    /// The names endpoints learned addresses under from DNS answers (shared, mutable; the same
    /// in every snapshot): what `toFQDNs` rules match.
    pub fqdn: Arc<crate::fqdn::FqdnCache>,
    /// This snapshot's number, set when it is published; a tracked flow's cached policy verdict
    /// holds while it was taken under the current revision.
    pub revision: u32,
    /// Policy audit mode (off by default).
    pub audit: Arc<PolicyAudit>,
    /// The names local endpoints give their container ports, by address (host byte order;
    /// endpoints that name none are absent): what named ports in their ingress rules match.
    pub port_names: Arc<FastMap<u32, vireo_policy::PortNames>>,
}

impl Tables {
    /// The security identity of `ip` as policy sees it: a local endpoint's, the ipcache's (pods
    /// and nodes elsewhere), else the CIDR identity of an address outside the cluster.
    #[inline]
    pub fn identity_of(&self, ip: u32) -> u32 {
        if let Some(ep) = self.endpoints.get(&ip) {
            return ep.identity;
        }
        match self.ipcache.lookup(ip) {
            Some(e) => e.identity.0,
            None => self.policy.world_identity(Ipv4Addr::from(ip)),
        }
    }

    /// Judges the packet `f`: the source's egress policy if it is a local endpoint, then the
    /// destination's ingress policy if that is one. A denial is reported to the monitor (with
    /// its rule) when one listens; for a `new_flow`, each direction judged under policy gives
    /// a verdict event when verdicts are asked for. A denial by the policy of an endpoint in
    /// audit mode lets the packet pass ([`Judgment::Audited`]), and the other side's policy
    /// is still judged. A `toFQDNs` rule matches the peer's address by the names the endpoint
    /// learned it under ([`crate::fqdn::FqdnCache`]); a tracked flow judged again (not a
    /// `new_flow`) counts names expired since, as zombies, so it outlives their TTL.
    #[inline]
    pub fn policy_judge(&self, f: &Judged, new_flow: bool) -> Judgment {
        self.policy_judge_tallied(f, new_flow).0
    }

    /// [`Tables::policy_judge`], and for a `new_flow` the verdicts of the directions judged
    /// under policy, one bit each at [`crate::counters::verdict_index`] (what the policy
    /// verdict counters count).
    #[inline]
    pub fn policy_judge_tallied(&self, f: &Judged, new_flow: bool) -> (Judgment, u8) {
        use crate::counters::verdict_index;
        use vireo_policy::{Direction, Verdict};
        if self.policy.is_empty() {
            return (Judgment::Allowed, 0);
        }
        let mut tally = 0u8;
        let src_id = if f.src_id == vireo_policy::Identity::WORLD.0 {
            self.policy.world_identity(Ipv4Addr::from(f.src.0))
        } else {
            f.src_id
        };
        let dst_id = self.identity_of(f.dst.0);
        let verdicts = new_flow && self.monitor.verdicts_on();
        let mut out = Judgment::Allowed;
        for (ip, d, peer, peer_ip) in [
            (f.src.0, Direction::Egress, dst_id, f.dst.0),
            (f.dst.0, Direction::Ingress, src_id, f.src.0),
        ] {
            let Some(ep) = self.endpoints.get(&ip) else {
                continue;
            };
            let known =
                |sel: &vireo_policy::FqdnSelector| self.fqdn.knows(ip, peer_ip, sel, !new_flow);
            let port_name = |p, port| self.port_name(ip, d, p, port);
            let l = self.policy.lookup_at(
                ep.identity,
                d,
                peer,
                Some(peer_ip),
                f.proto,
                f.l4,
                &known,
                &port_name,
            );
            let j = match l.verdict {
                Verdict::Allowed => Judgment::Allowed,
                Verdict::Denied if self.audit.applies(ip) => Judgment::Audited,
                Verdict::Denied => Judgment::Denied,
            };
            let under_policy =
                || l.rule.is_some() || self.policy.get(ep.identity).is_some_and(|t| t.enforced(d));
            let counted = new_flow && under_policy();
            if counted {
                let v = match j {
                    Judgment::Allowed => 0,
                    Judgment::Denied => 1,
                    Judgment::Audited => 2,
                };
                tally |= 1 << verdict_index(usize::from(d == Direction::Ingress), v);
            }
            if verdicts && counted && self.monitor.admit_verdict(f.now) {
                let v = match j {
                    Judgment::Allowed => crate::events::PolicyVerdict::Allowed,
                    Judgment::Denied => crate::events::PolicyVerdict::Denied,
                    Judgment::Audited => crate::events::PolicyVerdict::Audit,
                };
                self.push_policy_event(f, EventKind::Verdict(v), (src_id, dst_id), d, l.rule);
            }
            match j {
                Judgment::Allowed => {}
                Judgment::Audited => out = Judgment::Audited,
                Judgment::Denied => {
                    if self.monitor.is_on() {
                        self.push_policy_event(f, EventKind::Drop, (src_id, dst_id), d, l.rule);
                    }
                    return (Judgment::Denied, tally);
                }
            }
        }
        (out, tally)
    }

    /// The name the local endpoint at `ip` gives its port `port` of IP protocol `proto`, for
    /// the named ports of its ingress rules (egress named ports are resolved when read).
    #[inline]
    fn port_name(
        &self,
        ip: u32,
        d: vireo_policy::Direction,
        proto: u8,
        port: u16,
    ) -> Option<vireo_policy::PortName> {
        if d != vireo_policy::Direction::Ingress {
            return None;
        }
        self.port_names.get(&ip)?.name_of(proto, port)
    }

    /// Queues a policy event (a drop or a verdict) about `f`.
    #[cold]
    fn push_policy_event(
        &self,
        f: &Judged,
        kind: EventKind,
        (src_identity, dst_identity): (u32, u32),
        d: vireo_policy::Direction,
        rule: Option<&Arc<vireo_policy::Origin>>,
    ) {
        let icmp = f.proto == vireo_conntrack::table::ICMP;
        self.monitor.push(crate::events::DropEvent {
            kind,
            reason: crate::counters::DropReason::PolicyDenied,
            in_slot: f.in_slot,
            src: Ipv4Addr::from(f.src.0),
            dst: Ipv4Addr::from(f.dst.0),
            proto: f.proto,
            sport: f.src.1,
            dport: f.dst.1,
            src_identity,
            dst_identity,
            direction: Some(d),
            rule: rule.cloned(),
            icmp_type: (icmp && kind != EventKind::Drop)
                .then(|| u8::try_from(f.l4).ok())
                .flatten(),
            trace: None,
        });
    }

    /// The policy verdict for a new flow from `src` (identity `src_id`) to `dst`:`port`: the
    /// source's egress policy if it is a local endpoint, then the destination's ingress policy
    /// if that is local. `None`: allowed. Audit mode aside: what enforcement alone decides.
    #[inline]
    pub fn policy_denies(
        &self,
        src: u32,
        src_id: u32,
        dst: u32,
        proto: u8,
        port: u16,
    ) -> Option<PolicyDrop> {
        self.policy_denies_at(src, src_id, dst, proto, port, false)
    }

    /// [`Tables::policy_denies`]; `established` as in [`Tables::policy_judge`] (a tracked
    /// flow: expired names count).
    #[inline]
    pub fn policy_denies_at(
        &self,
        src: u32,
        src_id: u32,
        dst: u32,
        proto: u8,
        port: u16,
        established: bool,
    ) -> Option<PolicyDrop> {
        use vireo_policy::{Direction, Verdict};
        if self.policy.is_empty() {
            return None;
        }
        let world = |id: u32, ip: u32| {
            if id == vireo_policy::Identity::WORLD.0 {
                self.policy.world_identity(Ipv4Addr::from(ip))
            } else {
                id
            }
        };
        let src_id = world(src_id, src);
        let dst_id = self.identity_of(dst);
        // The source's egress (if it is ours), then the destination's ingress (if it is ours).
        for (ep_ip, d, peer, peer_ip) in [
            (src, Direction::Egress, dst_id, dst),
            (dst, Direction::Ingress, src_id, src),
        ] {
            let Some(ep) = self.endpoints.get(&ep_ip) else {
                continue;
            };
            let known = |sel: &vireo_policy::FqdnSelector| {
                self.fqdn.knows(ep_ip, peer_ip, sel, established)
            };
            let port_name = |p, port| self.port_name(ep_ip, d, p, port);
            let l = self.policy.lookup_at(
                ep.identity,
                d,
                peer,
                Some(peer_ip),
                proto,
                port,
                &known,
                &port_name,
            );
            if l.verdict == Verdict::Denied {
                return Some(PolicyDrop {
                    direction: d,
                    src_identity: src_id,
                    dst_identity: dst_id,
                    rule: l.rule.cloned(),
                });
            }
        }
        None
    }

    /// Whether `ip` is this node's own address (delivered to its stack through the host pair).
    #[inline]
    pub fn is_local_host(&self, ip: u32) -> bool {
        self.local.is_some_and(|l| u32::from(l.ip) == ip)
    }

    /// Whether `slot` is the host pair's end.
    #[inline]
    pub fn is_host_slot(&self, slot: u16) -> bool {
        self.host.is_some_and(|h| h.slot == slot)
    }

    /// The interface in `slot`, if attached.
    #[inline]
    pub fn iface(&self, slot: u16) -> Option<&Interface> {
        self.ifaces.get(usize::from(slot)).and_then(Option::as_ref)
    }

    /// The local endpoint owning `ip`.
    #[inline]
    pub fn endpoint(&self, ip: u32) -> Option<&Endpoint> {
        self.endpoints.get(&ip)
    }

    /// Whether ARP requests for `ip` are answered.
    #[inline]
    pub fn is_gateway(&self, ip: Ipv4Addr) -> bool {
        self.gateways.contains(&ip)
    }

    /// Adds or replaces an interface.
    pub fn set_iface(&mut self, iface: Interface) {
        let i = usize::from(iface.slot);
        if self.ifaces.len() <= i {
            self.ifaces.resize(i + 1, None);
        }
        self.ifaces[i] = Some(iface);
    }

    /// Removes an interface and every endpoint behind it.
    pub fn remove_iface(&mut self, slot: u16) {
        if let Some(e) = self.ifaces.get_mut(usize::from(slot)) {
            *e = None;
        }
        self.endpoints.retain(|_, ep| ep.slot != slot);
    }

    /// Adds or replaces an endpoint.
    pub fn set_endpoint(&mut self, ep: Endpoint) {
        self.endpoints.insert(u32::from(ep.ip), ep);
    }
}

/// The published snapshot: one writer (the control side) swaps, many workers read. Every
/// published snapshot gets the next revision.
#[derive(Debug, Default)]
pub struct TableHandle(ArcSwap<Tables>, std::sync::atomic::AtomicU32);

impl TableHandle {
    /// A handle publishing `t` (as revision 1).
    pub fn new(mut t: Tables) -> Self {
        t.revision = 1;
        TableHandle(
            ArcSwap::from_pointee(t),
            std::sync::atomic::AtomicU32::new(1),
        )
    }

    /// The current snapshot, for a batch. Lock-free.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Tables>> {
        self.0.load()
    }

    /// The current snapshot as an owned `Arc`, for building the next one.
    pub fn current(&self) -> Arc<Tables> {
        self.0.load_full()
    }

    /// Publishes a new snapshot atomically, as the next revision.
    pub fn publish(&self, mut t: Tables) {
        let r = self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        t.revision = r.max(1);
        self.0.store(Arc::new(t));
    }

    /// Applies `f` to a copy of the current snapshot and publishes the result. Single writer:
    /// the control side serialises its updates.
    pub fn update(&self, f: impl FnOnce(&mut Tables)) {
        let mut next = (*self.current()).clone();
        f(&mut next);
        self.publish(next);
    }
}
