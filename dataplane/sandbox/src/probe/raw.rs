//! `raw-send` and `raw-recv`: packets of any IP protocol through raw sockets (the kernel writes
//! the IPv4 header), for the policy checks of protocols without a socket API of their own: GRE
//! (47), SCTP INIT chunks (132) and ICMP errors quoting a flow that never existed (1).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};

use super::say;

pub(super) const ICMP: u8 = 1;
pub(super) const GRE: u8 = 47;
pub(super) const SCTP: u8 = 132;

/// The protocols `raw-send` knows how to build a packet of.
pub(super) fn parse_send_proto(s: &str) -> Result<u8, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "icmp" => Ok(ICMP),
        "47" | "gre" => Ok(GRE),
        "132" | "sctp" => Ok(SCTP),
        _ => Err(format!(
            "{s:?}: raw-send builds ICMP (1), GRE (47) or SCTP (132) packets"
        )),
    }
}

/// An IP protocol by name (icmp, gre, sctp) or number (1-255).
pub(super) fn parse_recv_proto(s: &str) -> Result<u8, String> {
    match s.to_ascii_lowercase().as_str() {
        "icmp" => Ok(ICMP),
        "gre" => Ok(GRE),
        "sctp" => Ok(SCTP),
        n => match n.parse::<u8>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{s:?} is no IP protocol number (1-255)")),
        },
    }
}

/// CRC32c (Castagnoli, reflected), SCTP's checksum.
pub(super) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The Internet checksum (RFC 1071).
pub(super) fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An SCTP packet of one INIT chunk from `sport` to `dport` (checksum included).
pub(super) fn sctp_init(sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, below
                                              // INIT: type 1, flags 0, length 20; initiate tag, a_rwnd, streams out/in, initial TSN.
    p.extend_from_slice(&[1, 0, 0, 20]);
    p.extend_from_slice(&tag.max(1).to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes());
    p.extend_from_slice(&10u16.to_be_bytes());
    p.extend_from_slice(&10u16.to_be_bytes());
    p.extend_from_slice(&tag.wrapping_mul(7).to_be_bytes());
    let c = crc32c(&p);
    p[8..12].copy_from_slice(&c.to_le_bytes());
    p
}

/// A GRE packet (RFC 2784, no options) carrying `payload` as protocol type IPv4.
pub(super) fn gre(payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 0, 0x08, 0x00];
    p.extend_from_slice(payload);
    p
}

/// An ICMP destination unreachable (port unreachable) that `me` sends about a UDP datagram
/// `peer:sport -> me:dport` that was never sent: a spoofed error quoting no flow.
pub(super) fn icmp_port_unreachable(
    me: Ipv4Addr,
    peer: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    // The quoted datagram: its IPv4 header and its first 8 bytes (the UDP header).
    let mut q = vec![
        0x45,
        0,
        0,
        28 + 16,
        0x12,
        0x34,
        0,
        0,
        64,
        17,
        0,
        0, // checksum below
    ];
    q.extend_from_slice(&peer.octets());
    q.extend_from_slice(&me.octets());
    let c = inet_checksum(&q);
    q[10..12].copy_from_slice(&c.to_be_bytes());
    q.extend_from_slice(&sport.to_be_bytes());
    q.extend_from_slice(&dport.to_be_bytes());
    q.extend_from_slice(&(8u16 + 16).to_be_bytes());
    q.extend_from_slice(&0u16.to_be_bytes());
    let mut p = vec![3, 3, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(&q);
    let c = inet_checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// The address this namespace sends to `dst` from (no packet is sent).
fn source_for(dst: Ipv4Addr) -> Result<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect((dst, 9))?;
    match s.local_addr()? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(_) => bail!("no IPv4 source for {dst}"),
    }
}

/// Sends `count` packets of `proto` to `dst`, `interval_ms` apart (bounded: at most 10000
/// packets, 10 s).
pub(super) fn raw_send(
    proto: u8,
    dst: Ipv4Addr,
    count: u32,
    port: u16,
    interval_ms: u64,
) -> Result<()> {
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(proto))),
    )
    .context("raw socket (needs CAP_NET_RAW)")?;
    let to: socket2::SockAddr = SocketAddr::V4(SocketAddrV4::new(dst, 0)).into();
    let me = source_for(dst)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut sent, mut failed) = (0u32, 0u32);
    for i in 0..count.min(10_000) {
        if Instant::now() > deadline {
            break;
        }
        let pkt = match proto {
            GRE => gre(format!("vireo-probe gre {i}").as_bytes()),
            SCTP => sctp_init(20000 + (i % 20000) as u16, port, 0x5eed_0000 + i),
            _ => icmp_port_unreachable(me, dst, 40000 + (i % 20000) as u16, 33434),
        };
        match sock.send_to(&pkt, &to) {
            Ok(_) => sent += 1,
            Err(_) => failed += 1,
        }
        if interval_ms > 0 {
            std::thread::sleep(Duration::from_millis(interval_ms));
        }
    }
    say(
        json!({"proto": proto, "dst": dst.to_string(), "src": me.to_string(), "sent": sent, "failed": failed}),
    );
    Ok(())
}

/// What a received IPv4 packet of `proto` is counted as: its destination port (SCTP, TCP,
/// UDP), `TYPE/CODE` (ICMP), or `all`.
pub(super) fn classify(ip: &[u8]) -> Option<(Ipv4Addr, u8, String)> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let proto = ip[9];
    let l4 = ip.get(ihl..)?;
    let key = match proto {
        6 | 17 | SCTP if l4.len() >= 4 => u16::from_be_bytes([l4[2], l4[3]]).to_string(),
        ICMP if l4.len() >= 2 => format!("{}/{}", l4[0], l4[1]),
        _ => "all".to_string(),
    };
    Some((src, proto, key))
}

/// Counts the packets of `proto` from `from` this namespace receives for `seconds`: a raw
/// socket gets a copy of each (whatever the kernel then makes of it).
pub(super) fn raw_recv(proto: u8, from: Option<Ipv4Addr>, seconds: u64) -> Result<()> {
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(proto))),
    )
    .context("raw socket (needs CAP_NET_RAW)")?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    say(json!({"listening": {"proto": proto}}));
    let deadline = Instant::now() + Duration::from_secs(seconds.min(60));
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let (mut count, mut others) = (0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && count + others < 1_000_000 {
        // `Read` for a socket is recv(2) into initialised memory.
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e) if super::timed_out(&e) => continue,
            Err(e) => bail!("recv: {e}"),
        };
        let data = &buf[..n];
        let Some((src, p, key)) = classify(data) else {
            continue;
        };
        if p != proto || from.is_some_and(|f| f != src) {
            others += 1;
            continue;
        }
        count += 1;
        *by.entry(key).or_insert(0) += 1;
    }
    say(
        json!({"proto": proto, "from": from.map(|f| f.to_string()), "count": count, "by": by, "others": others}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The CRC-32C check value (RFC 3720, B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn sctp_init_is_well_formed() {
        let p = sctp_init(20000, 3868, 7);
        assert_eq!(p.len(), 32);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 3868);
        assert_eq!(p[12], 1, "INIT chunk");
        let mut z = p.clone();
        z[8..12].fill(0);
        assert_eq!(u32::from_le_bytes([p[8], p[9], p[10], p[11]]), crc32c(&z));
    }

    #[test]
    fn icmp_error_quotes_the_made_up_flow() {
        let me = Ipv4Addr::new(10, 244, 1, 12);
        let peer = Ipv4Addr::new(10, 244, 2, 10);
        let p = icmp_port_unreachable(me, peer, 40000, 33434);
        assert_eq!((p[0], p[1]), (3, 3));
        assert_eq!(inet_checksum(&p), 0, "ICMP checksum");
        let q = &p[8..];
        assert_eq!(inet_checksum(&q[..20]), 0, "quoted header checksum");
        assert_eq!(q[9], 17);
        assert_eq!(&q[12..16], &peer.octets());
        assert_eq!(&q[16..20], &me.octets());
        assert_eq!(u16::from_be_bytes([q[20], q[21]]), 40000);
    }

    #[test]
    fn received_packets_are_classified() {
        let mut ip = vec![
            0x45, 0, 0, 52, 0, 0, 0, 0, 64, SCTP, 0, 0, 10, 244, 1, 12, 10, 244, 2, 10,
        ];
        ip.extend_from_slice(&sctp_init(20000, 3868, 1));
        assert_eq!(
            classify(&ip),
            Some((Ipv4Addr::new(10, 244, 1, 12), SCTP, "3868".into()))
        );
        ip[9] = GRE;
        assert_eq!(classify(&ip).unwrap().2, "all");
        ip[9] = ICMP;
        ip[20] = 3;
        ip[21] = 3;
        assert_eq!(classify(&ip).unwrap().2, "3/3");
        assert_eq!(classify(&ip[..10]), None);
        assert_eq!(parse_recv_proto("gre"), Ok(GRE));
        assert!(parse_send_proto("udp").is_err());
    }
}
