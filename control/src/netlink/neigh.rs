//! Next-hop MACs on the underlay, from the kernel's own tables over netlink: the kernel's route
//! lookup for a node's address (`RTM_GETROUTE`, as `ip route get ADDR oif DEV`) says which
//! neighbour to use (the node itself on-link, or a gateway), and the neighbour table
//! (`RTM_GETNEIGH`) says its MAC. A missing neighbour is resolved by the kernel when asked
//! with `RTM_NEWNEIGH` and `NTF_USE` (the kernel's own ARP; Vireo sends nothing itself).

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{ifindex, request, NetlinkError};

/// The neighbour to send to for `dst` out of `dev`, by the kernel's own route lookup: the
/// gateway of the route it picks, or `dst` itself on-link (and when nothing answers).
pub fn next_hop(dst: Ipv4Addr, dev: &str) -> Ipv4Addr {
    route_get(dst, dev).ok().flatten().unwrap_or(dst)
}

/// The gateway of the kernel's route to `dst` out of `dev` (`None`: on-link).
pub fn route_get(dst: Ipv4Addr, dev: &str) -> Result<Option<Ipv4Addr>, NetlinkError> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = 32;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
    if let Some(oif) = ifindex(dev)? {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    let answers = request("route get", RouteNetlinkMessage::GetRoute(m), 0)?;
    Ok(answers.iter().find_map(|a| match a {
        RouteNetlinkMessage::NewRoute(r) => r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
            _ => None,
        }),
        _ => None,
    }))
}

/// The MAC of `ip` on `dev` in the kernel's neighbour table, if resolved.
pub fn lookup(ip: Ipv4Addr, dev: &str) -> Option<[u8; 6]> {
    let idx = ifindex(dev).ok().flatten()?;
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = idx;
    let all = request(
        "neighbour dump",
        RouteNetlinkMessage::GetNeighbour(m),
        NLM_F_DUMP,
    )
    .ok()?;
    all.iter().find_map(|a| match a {
        RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == idx => usable(n, ip),
        _ => None,
    })
}

/// The MAC of a neighbour entry for `ip` in a state that has one.
fn usable(n: &NeighbourMessage, ip: Ipv4Addr) -> Option<[u8; 6]> {
    let ok = matches!(
        n.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    let dst = n.attributes.iter().any(
        |a| matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) if *d == ip),
    );
    if !ok || !dst {
        return None;
    }
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 && l.iter().any(|b| *b != 0) => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(l);
            Some(mac)
        }
        _ => None,
    })
}

/// Asks the kernel to resolve `ip` on `dev` (`RTM_NEWNEIGH` with `NTF_USE`: the kernel creates
/// the entry if needed and sends its ARP request).
pub fn resolve(ip: Ipv4Addr, dev: &str) -> Result<(), NetlinkError> {
    let Some(idx) = ifindex(dev)? else {
        return Ok(());
    };
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = idx;
    m.header.state = NeighbourState::None;
    m.header.flags = NeighbourFlags::Use;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    request(
        "neighbour resolve",
        RouteNetlinkMessage::NewNeighbour(m),
        NLM_F_CREATE | NLM_F_REPLACE | netlink_packet_core::NLM_F_ACK,
    )
    .map(|_| ())
}
