//! The sandbox's wiring: the underlay bridge and the node namespaces with their uplink veths.

use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::Ipv4Net;

use crate::netns::{netns_add, sh};
use crate::{NodeState, State};

/// Underlay MTU by default (`vireo sandbox up --mtu` changes it); pods get 50 less (the VXLAN
/// overhead).
pub const UNDERLAY_MTU: u16 = 1500;

/// The VXLAN overhead: the underlay's MTU less the pods'.
pub const VXLAN_OVERHEAD: u16 = 50;

/// The pods' MTU `vireo sandbox up --mtu` accepts: from IPv4's minimum to jumbo frames (a
/// pod MTU above a UMEM frame needs AF_XDP multi-buffer, kernel 6.6+).
pub const POD_MTUS: std::ops::RangeInclusive<u16> = 576..=9000;

const UNDERLAY_NET: [u8; 3] = [192, 168, 100];

/// The underlay bridge's own address, in the underlay namespace: a client "outside" the nodes
/// (NodePort checks). The bridge is connected to nothing real.
pub const UNDERLAY_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

/// The "world" namespace's address on the underlay: the nodes' default route goes through it.
pub const WORLD_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);

/// The world server's address (TEST-NET-3, on the world namespace's loopback): outside every
/// pod CIDR and the underlay, and with no route back to the pods, so only masqueraded traffic
/// can be answered.
pub const WORLD_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// A second world address beside [`WORLD_ADDR`] (same loopback): the DNS policy checks give
/// two names two addresses outside the cluster, one allowed by `toFQDNs`, one not.
pub const WORLD_OTHER_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

/// The underlay: a bridge in a namespace of its own (connected to nothing real), with an
/// address of its own, and the world beside it ([`world`]).
pub(crate) fn underlay(st: &mut State) -> Result<()> {
    let ul = st.underlay.clone();
    netns_add(st, &ul)?;
    sh(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", &ul, "link", "set", "br0", "up"])?;
    // An address of its own on the bridge (a new bridge has none), so that a client can run in
    // the underlay namespace.
    if sh(&["ip", "-n", &ul, "-4", "addr", "show", "dev", "br0"])?
        .trim()
        .is_empty()
    {
        sh(&[
            "ip",
            "-n",
            &ul,
            "addr",
            "add",
            &format!("{UNDERLAY_CLIENT}/24"),
            "dev",
            "br0",
        ])?;
    }
    // Its traffic must leave with complete checksums, as frames from a real NIC arrive
    // (AF_XDP copy mode loses CHECKSUM_PARTIAL; see the pods' veths).
    sh(&[
        "ip", "netns", "exec", &ul, "ethtool", "-K", "br0", "tx", "off",
    ])?;
    world(st)
}

/// A veth from namespace `ns` (its `eth0`, underlay MTU `mtu`) into the underlay's bridge,
/// where its end is `port` (the same MTU; the bridge takes its ports' lowest), up.
fn bridge_port(underlay: &str, ns: &str, port: &str, mtu: u16) -> Result<()> {
    let mtu = mtu.to_string();
    sh(&[
        "ip", "link", "add", "eth0", "netns", ns, "mtu", &mtu, "type", "veth", "peer", "name",
        port, "mtu", &mtu, "netns", underlay,
    ])?;
    sh(&[
        "ip", "-n", underlay, "link", "set", port, "master", "br0", "up",
    ])?;
    Ok(())
}

/// The "world": a namespace on the underlay (veth into the bridge, [`WORLD_GATEWAY`]) holding
/// [`WORLD_ADDR`] and [`WORLD_OTHER_ADDR`] on its loopback, and no route to any pod CIDR. The
/// nodes route everything outside the underlay through it (their default route).
pub(crate) fn world(st: &mut State) -> Result<()> {
    let ul = st.underlay.clone();
    let ns = format!("{}-world", st.name);
    netns_add(st, &ns)?;
    st.world = Some(ns.clone());
    st.save()?;
    bridge_port(&ul, &ns, "wld", st.underlay_mtu())?;
    let on = |args: &[&str]| -> Result<String> {
        let mut v = vec!["ip", "-n", ns.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    };
    on(&["addr", "add", &format!("{WORLD_GATEWAY}/24"), "dev", "eth0"])?;
    on(&["addr", "add", &format!("{WORLD_ADDR}/32"), "dev", "lo"])?;
    on(&[
        "addr",
        "add",
        &format!("{WORLD_OTHER_ADDR}/32"),
        "dev",
        "lo",
    ])?;
    on(&["link", "set", "eth0", "up"])?;
    // Complete checksums, as from a real router (AF_XDP copy mode on the nodes' uplinks).
    sh(&[
        "ip", "netns", "exec", &ns, "ethtool", "-K", "eth0", "tx", "off",
    ])?;
    Ok(())
}

/// Node `i` (from 1): its namespace, its uplink veth into the underlay bridge, its address
/// and pod CIDR.
pub(crate) fn add_node(st: &mut State, i: usize) -> Result<()> {
    let ul = st.underlay.clone();
    let node = format!("node-{i}");
    let ns = format!("{}-{node}", st.name);
    netns_add(st, &ns)?;
    // The node's port on the bridge; `vireo connectivity test` captures on it.
    let peer = format!("n{i}");
    bridge_port(&ul, &ns, &peer, st.underlay_mtu())?;
    let ip = Ipv4Addr::new(
        UNDERLAY_NET[0],
        UNDERLAY_NET[1],
        UNDERLAY_NET[2],
        10 + i as u8,
    );
    sh(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        "eth0",
    ])?;
    sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
    // The world is behind the underlay's router (node namespaces only).
    sh(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "via",
        &WORLD_GATEWAY.to_string(),
        "dev",
        "eth0",
    ])?;
    st.nodes.push(NodeState {
        name: node.clone(),
        netns: ns,
        ip,
        pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24)?,
        api: st.dir.join(format!("{node}.sock")),
        log: st.dir.join(format!("{node}.log")),
        agent_pid: None,
    });
    st.save()?;
    Ok(())
}
