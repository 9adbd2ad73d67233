//! The kernel's routes, neighbours and links through rtnetlink (`netlink-packet-route` over a
//! blocking `netlink-sys` socket): small synchronous calls for the agent.
//!
//! - [`neigh`]: the next hop towards an address (`RTM_GETROUTE`, the kernel's own lookup), its
//!   MAC (`RTM_GETNEIGH`), and asking the kernel to resolve a missing one (`RTM_NEWNEIGH` with
//!   `NTF_USE`, as `ip neigh` and Cilium do: the kernel's ARP, nothing sent by Vireo).
//! - [`link`]: veth pairs, MTU, up, and routes through a device (the host pair).
//! - [`watch`]: a thread on `RTNLGRP_NEIGH` and `RTNLGRP_IPV4_ROUTE` that wakes the agent when
//!   next hops may have changed.

pub mod link;
pub mod neigh;
pub mod watch;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A netlink failure.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket failed.
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused the request.
    #[error("netlink {what}: {source}")]
    Kernel {
        /// What was asked.
        what: &'static str,
        /// The kernel's errno.
        source: std::io::Error,
    },
    /// An answer that does not parse.
    #[error("netlink {what}: bad answer: {msg}")]
    Decode {
        /// What was asked.
        what: &'static str,
        /// The decoder's message.
        msg: String,
    },
}

impl NetlinkError {
    /// The kernel's errno, when it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Sends one request and collects the answers (every part of a dump; an ack ends a request
/// without answers).
pub(crate) fn request(
    what: &'static str,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | flags;
    hdr.sequence_number = 1;
    let mut req = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
    req.finalize();
    let mut buf = vec![0; req.header.length as usize];
    req.serialize(&mut buf[..]);
    socket.send(&buf[..], 0)?;
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let m: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&rx[off..n])
                .map_err(|e| NetlinkError::Decode {
                what,
                msg: e.to_string(),
            })?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(out), // the ack
                        Some(_) => Err(NetlinkError::Kernel {
                            what,
                            source: e.to_io(),
                        }),
                    };
                }
                NetlinkPayload::InnerMessage(inner) => {
                    out.push(inner);
                    if !dump && flags & NLM_F_ACK == 0 {
                        return Ok(out);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// The index of the link `name`, if it exists.
pub fn ifindex(name: &str) -> Result<Option<u32>, NetlinkError> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    match request("get link", RouteNetlinkMessage::GetLink(m), 0) {
        Ok(v) => Ok(v.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
            _ => None,
        })),
        Err(e) if e.errno() == Some(libc_enodev()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// ENODEV: what the kernel answers for a link that does not exist.
const fn libc_enodev() -> i32 {
    19
}
