//! `syn-flood`: bare SYNs through a raw socket.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::say;

/// Sends bare SYNs through a raw socket (the kernel adds the IP header); bounded by `count`.
/// The destination port runs over `to.port()`, … `to.port() + dport_span - 1`.
pub(super) fn syn_flood(
    from: std::net::Ipv4Addr,
    to: std::net::SocketAddrV4,
    count: u32,
    dport_span: u16,
) -> Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))
        .context("raw socket (needs CAP_NET_RAW)")?;
    let dst: socket2::SockAddr =
        std::net::SocketAddr::V4(std::net::SocketAddrV4::new(*to.ip(), 0)).into();
    let ip = etherparse::Ipv4Header::new(
        20,
        64,
        etherparse::IpNumber::TCP,
        from.octets(),
        to.ip().octets(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut sent = 0u32;
    for i in 0..count {
        let mut tcp = etherparse::TcpHeader::new(
            1024 + (i % 60000) as u16,
            to.port()
                .saturating_add((i % u32::from(dport_span.max(1))) as u16),
            0x1000_0000 + i,
            64240,
        );
        tcp.syn = true;
        tcp.checksum = tcp
            .calc_checksum_ipv4(&ip, &[])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let bytes = tcp.to_bytes();
        if sock.send_to(&bytes, &dst).is_ok() {
            sent += 1;
        }
        // Bursts of 64, about 64k SYN/s: a flood, but one AF_XDP copy mode takes in whole.
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    say(json!({"sent": sent}));
    Ok(())
}
