//! The sandbox's wiring: the underlay bridge and the node namespaces with their uplink veths.

use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::Ipv4Net;

use crate::netns::{netns_add, sh};
use crate::{NodeState, State};

/// Underlay MTU; pods get 50 less (the VXLAN overhead).
pub const UNDERLAY_MTU: u16 = 1500;

const UNDERLAY_NET: [u8; 3] = [192, 168, 100];

/// The underlay bridge's own address, in the underlay namespace: a client "outside" the nodes
/// (NodePort checks). The bridge is connected to nothing real.
pub const UNDERLAY_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

/// The underlay: a bridge in a namespace of its own (connected to nothing real), with an
/// address of its own.
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
    sh(&[
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        &ns,
        "mtu",
        &UNDERLAY_MTU.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        &peer,
        "netns",
        &ul,
    ])?;
    sh(&["ip", "-n", &ul, "link", "set", &peer, "master", "br0", "up"])?;
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
