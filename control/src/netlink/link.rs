//! Links and routes over netlink, for the host pair: a veth pair, its MTU and state, and the
//! routes through it (`ip route replace NET dev DEV src ADDR`).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags};
use netlink_packet_route::link::{LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{ifindex, request, NetlinkError};

/// The routing protocol number Vireo's routes carry (`proto 0x76` in `ip route`), so they can be
/// told from everyone else's.
pub const RTPROT_VIREO: u8 = 0x76;

/// Creates the veth pair `name`/`peer` unless `name` exists.
pub fn ensure_veth(name: &str, peer: &str) -> Result<bool, NetlinkError> {
    if ifindex(name)?.is_some() {
        return Ok(false);
    }
    let mut p = LinkMessage::default();
    p.attributes.push(LinkAttribute::IfName(peer.to_string()));
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
    ]));
    request(
        "create veth",
        RouteNetlinkMessage::NewLink(m),
        NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
    )?;
    Ok(true)
}

/// Sets `name`'s MTU and brings it up.
pub fn set_up(name: &str, mtu: u32) -> Result<(), NetlinkError> {
    let idx = ifindex(name)?.ok_or_else(|| NetlinkError::Kernel {
        what: "set link",
        source: std::io::Error::from_raw_os_error(19),
    })?;
    let mut m = LinkMessage::default();
    m.header.index = idx;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    request("set link", RouteNetlinkMessage::SetLink(m), NLM_F_ACK).map(|_| ())
}

/// Deletes the link `name` (and with it its peer and routes); nothing if it is not there.
pub fn delete(name: &str) -> Result<(), NetlinkError> {
    let Some(idx) = ifindex(name)? else {
        return Ok(());
    };
    let mut m = LinkMessage::default();
    m.header.index = idx;
    request("delete link", RouteNetlinkMessage::DelLink(m), NLM_F_ACK).map(|_| ())
}

fn route_msg(net: Ipv4Net, oif: u32, src: Option<Ipv4Addr>) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = net.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Other(RTPROT_VIREO);
    m.header.scope = RouteScope::Link;
    m.header.kind = RouteType::Unicast;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            net.network(),
        )));
    m.attributes.push(RouteAttribute::Oif(oif));
    if let Some(s) = src {
        m.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::Inet(s)));
    }
    m
}

/// Vireo's routes out of link `oif` in the main table.
pub fn routes(oif: u32) -> Result<Vec<Ipv4Net>, NetlinkError> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    let all = request("route dump", RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
    Ok(all
        .into_iter()
        .filter_map(|a| match a {
            RouteNetlinkMessage::NewRoute(r)
                if r.header.table == RouteHeader::RT_TABLE_MAIN
                    && r.header.protocol == RouteProtocol::Other(RTPROT_VIREO)
                    && r.attributes.contains(&RouteAttribute::Oif(oif)) =>
            {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                        Ipv4Net::new(*d, r.header.destination_prefix_length).ok()
                    }
                    _ => None,
                })
            }
            _ => None,
        })
        .collect())
}

/// Routes `net` out of link `oif`, preferring source `src` (replacing any route to `net`).
pub fn route_replace(net: Ipv4Net, oif: u32, src: Option<Ipv4Addr>) -> Result<(), NetlinkError> {
    request(
        "route replace",
        RouteNetlinkMessage::NewRoute(route_msg(net, oif, src)),
        NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
    )
    .map(|_| ())
}

/// Removes Vireo's route to `net` out of link `oif`.
pub fn route_delete(net: Ipv4Net, oif: u32) -> Result<(), NetlinkError> {
    request(
        "route delete",
        RouteNetlinkMessage::DelRoute(route_msg(net, oif, None)),
        NLM_F_ACK,
    )
    .map(|_| ())
}
