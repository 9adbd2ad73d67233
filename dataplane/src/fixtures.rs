//! Frames and tables for tests and benchmarks: two pods on this node, a third on another node
//! reached over VXLAN.

pub mod scenarios;

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;

use vireo_policy::{Identity, IpCacheEntry};

use crate::tables::{Endpoint, IfRole, Interface, LocalNode, Mac, RemoteNode, Tables};
use crate::wire::{VxlanRepr, ETH_HLEN, VXLAN_OVERHEAD};

/// Pod A: IP, MAC, host-side slot and host-side MAC.
pub const POD_A: (Ipv4Addr, Mac, u16, Mac) = (
    Ipv4Addr::new(10, 244, 1, 10),
    [0x02, 0, 0, 0, 0x0a, 0x01],
    0,
    [0x02, 0, 0, 0, 0xa0, 0x01],
);
/// Pod B: IP, MAC, host-side slot and host-side MAC.
pub const POD_B: (Ipv4Addr, Mac, u16, Mac) = (
    Ipv4Addr::new(10, 244, 1, 11),
    [0x02, 0, 0, 0, 0x0b, 0x01],
    1,
    [0x02, 0, 0, 0, 0xb0, 0x01],
);
/// The pods' gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// Identities of pods A, B and C.
pub const IDS: [u32; 3] = [1000, 1001, 2000];
/// Pod C, on the other node.
pub const POD_C: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
/// This node's uplink: slot, MAC, underlay address, MTU.
pub const UPLINK: (u16, Mac, Ipv4Addr, u16) = (
    2,
    [0x02, 0, 0, 0, 0xee, 0x01],
    Ipv4Addr::new(192, 168, 100, 10),
    1500,
);
/// The other node: underlay address and MAC.
pub const REMOTE: (Ipv4Addr, Mac) = (
    Ipv4Addr::new(192, 168, 100, 11),
    [0x02, 0, 0, 0, 0xee, 0x02],
);
/// VXLAN port.
pub const VXLAN_PORT: u16 = 8472;
/// The host pair: slot and MAC of `vireo_net`, MAC of `vireo_host` (the node's stack).
pub const HOST_PAIR: (u16, Mac, Mac) =
    (3, [0x02, 0, 0, 0, 0x4e, 0x01], [0x02, 0, 0, 0, 0x40, 0x01]);

/// Tables with pods A and B, the other node's address (`remote-node`, through the tunnel) and
/// this node's host pair attached.
pub fn with_host() -> Tables {
    let mut t = two_pods();
    add_host(&mut t);
    t
}

/// Adds the host pair of [`with_host`] to `t`.
pub fn add_host(t: &mut Tables) {
    t.set_iface(Interface {
        slot: HOST_PAIR.0,
        name: "vireo_net".into(),
        mac: HOST_PAIR.1,
        role: IfRole::Host,
    });
    t.host = Some(crate::tables::HostPort {
        slot: HOST_PAIR.0,
        peer_mac: HOST_PAIR.2,
    });
    for (ip, identity, tunnel) in [
        (UPLINK.2, Identity::HOST, None),
        (REMOTE.0, Identity::REMOTE_NODE, Some(REMOTE.0)),
    ] {
        t.ipcache.insert(
            ipnet::Ipv4Net::new(ip, 32).expect("/32"),
            IpCacheEntry { identity, tunnel },
        );
    }
}

/// Tables with pods A and B.
pub fn two_pods() -> Tables {
    let mut t = Tables {
        gateways: vec![GATEWAY],
        vxlan_port: VXLAN_PORT,
        local: Some(LocalNode {
            ip: UPLINK.2,
            uplink_slot: UPLINK.0,
            uplink_mac: UPLINK.1,
            mtu: UPLINK.3,
        }),
        ..Default::default()
    };
    for (i, (ip, mac, slot, host_mac)) in [POD_A, POD_B].into_iter().enumerate() {
        t.set_iface(Interface {
            slot,
            name: format!("veth{i}"),
            mac: host_mac,
            role: IfRole::Pod,
        });
        t.set_endpoint(Endpoint {
            ip,
            mac,
            slot,
            identity: IDS[i],
        });
    }
    t.set_iface(Interface {
        slot: UPLINK.0,
        name: "eth0".into(),
        mac: UPLINK.1,
        role: IfRole::Uplink,
    });
    t.nodes.insert(
        u32::from(REMOTE.0),
        RemoteNode {
            name: "node-2".into(),
            next_hop_mac: Some(REMOTE.1),
        },
    );
    t.ipcache.insert(
        ipnet::Ipv4Net::new(POD_C, 32).expect("/32"),
        IpCacheEntry {
            identity: Identity(IDS[2]),
            tunnel: Some(REMOTE.0),
        },
    );
    t.identities.extend(IDS);
    t.identities.extend(1..=6);
    t
}

/// A VXLAN packet from the other node carrying pod C's UDP packet to `dst`, with `vni`.
pub fn vxlan_from_c(dst: Ipv4Addr, vni: u32, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(REMOTE.1, UPLINK.1)
        .ipv4(POD_C.octets(), dst.octets(), 63)
        .udp(40000, 7);
    let mut inner = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut inner, payload)
        .expect("writing to a Vec cannot fail");
    vxlan_from_remote(&inner, vni)
}

/// A TCP segment from pod C (on the remote node) to pod B port 80, from port 40000, as it
/// arrives through the tunnel with the source identity `vni` (C's is `IDS[2]`).
pub fn c_to_b_over_tunnel(flags: u8, vni: u32) -> Vec<u8> {
    let inner = tcp(
        (POD_C, [2, 0, 0, 0, 0xc0, 1]),
        (POD_B.0, POD_B.3),
        40000,
        80,
        flags,
    );
    vxlan_from_remote(&inner, vni)
}

/// `inner` (an Ethernet frame) encapsulated by the remote node towards us, VNI `vni`.
pub fn vxlan_from_remote(inner: &[u8], vni: u32) -> Vec<u8> {
    encapsulate(inner, (REMOTE.1, REMOTE.0), (UPLINK.1, UPLINK.2), vni)
}

/// `inner` (an Ethernet frame) in VXLAN from `src` to `dst` (MAC and underlay address), VNI
/// `vni`, to the VXLAN port, the outer DSCP/ECN copied from the inner packet.
pub fn encapsulate(inner: &[u8], src: (Mac, Ipv4Addr), dst: (Mac, Ipv4Addr), vni: u32) -> Vec<u8> {
    let mut out = vec![0u8; VXLAN_OVERHEAD + inner.len()];
    out[VXLAN_OVERHEAD..].copy_from_slice(inner);
    VxlanRepr {
        src_mac: src.0,
        dst_mac: dst.0,
        src_ip: src.1.octets(),
        dst_ip: dst.1.octets(),
        src_port: 50000,
        dst_port: VXLAN_PORT,
        vni,
        tos: inner.get(ETH_HLEN + 1).copied().unwrap_or(0),
        df: false,
        id: 1,
    }
    .emit(&mut out, inner.len());
    out
}

/// A UDP frame from pod A (as the pod sends it: to its gateway's MAC) to `dst`.
pub fn udp_from_a(dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_A.1, POD_A.3)
        .ipv4(POD_A.0.octets(), dst.octets(), ttl)
        .udp(40000, 7);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// An ARP request from pod A for `target`.
pub fn arp_request_from_a(target: Ipv4Addr) -> Vec<u8> {
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    };
    let mut buf = vec![0u8; 42];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(EthernetAddress::BROADCAST);
    eth.set_src_addr(EthernetAddress(POD_A.1));
    eth.set_ethertype(EthernetProtocol::Arp);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(POD_A.1),
        source_protocol_addr: POD_A.0,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut buf[14..]));
    buf
}

/// A TCP segment between two addresses with `flags` (SYN 0x02, ACK 0x10, FIN 0x01, RST 0x04).
pub fn tcp(
    src: (Ipv4Addr, Mac),
    dst: (Ipv4Addr, Mac),
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src.1, dst.1)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(sport, dport, 1000, 64240);
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[])
        .expect("writing to a Vec cannot fail");
    out
}

/// [`two_pods`] with a conntrack table of the given limits and a clock the caller moves.
pub fn two_pods_with_ct(
    max_tcp: usize,
    max_other: usize,
) -> (Tables, std::sync::Arc<vireo_conntrack::ManualClock>) {
    let clock = std::sync::Arc::new(vireo_conntrack::ManualClock::default());
    let cfg = vireo_conntrack::Config {
        max_tcp,
        max_other,
        ..Default::default()
    };
    let mut t = two_pods();
    t.ct = Some(std::sync::Arc::new(vireo_conntrack::Table::new(
        cfg,
        clock.clone(),
    )));
    (t, clock)
}

/// Recomputes the checksum of the IPv4 header (no options) at `frame[l3..]`, after a test
/// edited it.
pub fn fix_ip_checksum(frame: &mut [u8], l3: usize) {
    frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = crate::wire::ipv4_header_checksum(&frame[l3..l3 + 20]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// The labels of a pod with `app=<app>` in namespace `default`, as policy sees them.
pub fn app_labels(app: &str) -> vireo_policy::Labels {
    vireo_policy::Labels::new([
        ("k8s:app", app),
        ("k8s:io.kubernetes.pod.namespace", "default"),
    ])
}

/// The origin of rule `rule` (empty: the policy itself) of the CiliumNetworkPolicy `name`
/// (`namespace/name`).
pub fn cnp_origin(name: &str, rule: &str) -> vireo_policy::Origin {
    vireo_policy::Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: name.into(),
        rule: rule.into(),
    }
}

/// Compiled policy: pod B (identity `IDS[1]`, app=b) takes ingress from pod A (`IDS[0]`,
/// app=a) on UDP, every port; nothing else selects anything. For benchmarks of the
/// established path under policy.
pub fn b_allows_a_on_udp() -> vireo_policy::PolicyTables {
    b_allows_on_udp(&["a"])
}

/// Compiled policy: pod B (app=b) takes ingress on UDP from the pods whose `app` is one of
/// `apps` (pod A is app=a, pod C on the other node app=c); nothing else selects anything.
pub fn b_allows_on_udp(apps: &[&str]) -> vireo_policy::PolicyTables {
    let udp = vireo_policy::PortRange {
        lo: 0,
        hi: 0,
        proto: vireo_policy::Proto::Udp,
        l7: false,
        name: None,
    };
    b_allows(apps, vec![udp])
}

/// Compiled policy: pod B (app=b) takes ingress on `ports` from the pods whose `app` is one
/// of `apps`; nothing else selects anything.
pub fn b_allows(apps: &[&str], ports: Vec<vireo_policy::PortRange>) -> vireo_policy::PolicyTables {
    let rule = app_rule(
        "default/bench",
        vireo_policy::Action::Allow,
        apps,
        ports,
        "ingress[0]",
    );
    b_ingress("default/bench", vec![rule])
}

/// Rule `rule` (e.g. `ingress[0]`) of the CiliumNetworkPolicy `name`: `action` for the pods
/// whose `app` is one of `apps`, on `ports` (none: every port).
pub fn app_rule(
    name: &str,
    action: vireo_policy::Action,
    apps: &[&str],
    ports: Vec<vireo_policy::PortRange>,
    rule: &str,
) -> vireo_policy::Rule {
    use vireo_policy::{Peer, Selector};
    vireo_policy::Rule {
        action,
        peers: apps
            .iter()
            .map(|a| Peer::Endpoints(Selector::label("k8s:app", a)))
            .collect(),
        requires: Vec::new(),
        ports,
        dns: Vec::new(),
        origin: cnp_origin(name, rule),
    }
}

/// Compiled policy: the CiliumNetworkPolicy `name` enforces `ingress` on pod B (app=b); pods
/// A, B and C have the identities `IDS` with app=a, b and c; nothing else selects anything.
pub fn b_ingress(name: &str, ingress: Vec<vireo_policy::Rule>) -> vireo_policy::PolicyTables {
    use vireo_policy::{Compiler, Policy, Selector};
    let mut c = Compiler::new();
    for (id, app) in IDS.iter().zip(["a", "b", "c"]) {
        c.set_identity(Identity(*id), app_labels(app));
    }
    let p = Policy {
        origin: cnp_origin(name, ""),
        subject: Selector::label("k8s:app", "b"),
        node_selector: None,
        enforce_ingress: true,
        enforce_egress: false,
        ingress,
        egress: Vec::new(),
        warnings: Vec::new(),
    };
    c.set_policies(name, vec![p]);
    c.tables()
}
