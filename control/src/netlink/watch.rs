//! Wakes the agent when the kernel's neighbours or IPv4 routes change (`RTNLGRP_NEIGH`,
//! `RTNLGRP_IPV4_ROUTE`), so next hops are re-read when they change instead of on a timer.

use std::sync::Arc;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::NetlinkError;

/// `RTNLGRP_NEIGH`.
const RTNLGRP_NEIGH: u32 = 3;
/// `RTNLGRP_IPV4_ROUTE`.
const RTNLGRP_IPV4_ROUTE: u32 = 7;

/// Starts a thread that calls `wake` after each neighbour change on a link `relevant` says
/// matters (by ifindex), and after each IPv4 route change. It runs for the life of the process.
pub fn spawn(
    relevant: Arc<dyn Fn(u32) -> bool + Send + Sync>,
    wake: Arc<dyn Fn() + Send + Sync>,
) -> Result<(), NetlinkError> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(0, 0))?;
    s.add_membership(RTNLGRP_NEIGH)?;
    s.add_membership(RTNLGRP_IPV4_ROUTE)?;
    std::thread::Builder::new()
        .name("vireo-netlink".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match s.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    // ENOBUFS: events were lost; wake anyway so nothing is missed.
                    Err(e) if e.raw_os_error() == Some(105) => {
                        wake();
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("netlink events: {e}; no longer watching");
                        return;
                    }
                };
                let mut off = 0;
                let mut changed = false;
                while off < n {
                    let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n])
                    else {
                        changed = true; // unknown to the decoder: re-read to be safe
                        break;
                    };
                    changed |= match &m.payload {
                        NetlinkPayload::InnerMessage(
                            RouteNetlinkMessage::NewNeighbour(x)
                            | RouteNetlinkMessage::DelNeighbour(x),
                        ) => relevant(x.header.ifindex),
                        NetlinkPayload::InnerMessage(
                            RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_),
                        ) => true,
                        _ => false,
                    };
                    let len = m.header.length as usize;
                    if len == 0 {
                        break;
                    }
                    off += len;
                }
                if changed {
                    wake();
                }
            }
        })?;
    Ok(())
}
