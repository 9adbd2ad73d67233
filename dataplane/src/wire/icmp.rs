//! ICMP errors (RFC 792): building the ones Vireo answers with, and reading and translating the
//! packet an error quotes, so that an error is matched to the flow it is about and follows that
//! flow's translation (as Linux's `nf_nat_icmp_reply_translation` and Cilium's
//! `ct_lookup4_related` do).

use super::{
    csum_replace16, csum_replace32, inet_checksum, ipv4_header_checksum, ipv4_set_addrs,
    ETHERTYPE_IPV4, ETH_HLEN, IPV4_MIN_HLEN,
};

/// ICMP type: destination unreachable (fragmentation needed is its code 4).
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP type: time exceeded.
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP type: parameter problem.
pub const ICMP_PARAM_PROBLEM: u8 = 12;
/// Destination unreachable code: port unreachable.
pub const CODE_PORT_UNREACH: u8 = 3;
/// Destination unreachable code: fragmentation needed and DF set.
pub const CODE_FRAG_NEEDED: u8 = 4;

/// Bytes of the offending packet an error Vireo builds quotes: its IPv4 header and 8 bytes.
const QUOTE: usize = IPV4_MIN_HLEN + 8;
/// Length of such an error with its Ethernet header.
pub const ICMP_ERROR_FRAME: usize = ETH_HLEN + IPV4_MIN_HLEN + 8 + QUOTE;

/// Rewrites the frame in `buf` (Ethernet + IPv4 without options) in place into an ICMP error of
/// `typ`/`code` for its sender, from `from`, quoting the original IPv4 header and 8 bytes of
/// payload. `rest` is the second word of the ICMP header (the next-hop MTU of "fragmentation
/// needed", RFC 1191, in its low 16 bits). The Ethernet addresses are left to the caller.
/// Returns the new frame length ([`ICMP_ERROR_FRAME`]), or `None` when `buf` cannot hold it.
pub fn icmp_error(buf: &mut [u8], from: [u8; 4], typ: u8, code: u8, rest: u32) -> Option<usize> {
    let mut quote = [0u8; QUOTE];
    let n = QUOTE.min(buf.len().checked_sub(ETH_HLEN)?);
    quote[..n].copy_from_slice(&buf[ETH_HLEN..ETH_HLEN + n]);
    if buf.len() < ICMP_ERROR_FRAME {
        return None;
    }
    let b = &mut buf[..ICMP_ERROR_FRAME];
    b[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let total = (ICMP_ERROR_FRAME - ETH_HLEN) as u16;
    let ip = &mut b[ETH_HLEN..];
    ip[0] = 0x45;
    ip[1] = 0xc0; // DSCP CS6 (network control), as Linux sends its ICMP errors
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..8].copy_from_slice(&[0, 0, 0, 0]);
    ip[8] = 64;
    ip[9] = 1;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[16..20].copy_from_slice(&quote[12..16]); // to the sender
    ip[12..16].copy_from_slice(&from);
    let c = ipv4_header_checksum(&ip[..IPV4_MIN_HLEN]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut ip[IPV4_MIN_HLEN..];
    icmp[0] = typ;
    icmp[1] = code;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&rest.to_be_bytes());
    icmp[8..].copy_from_slice(&quote);
    let c = inet_checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(ICMP_ERROR_FRAME)
}

/// Whether the packet whose IPv4 header starts at `ip[0]` may be answered with an ICMP error
/// (RFC 1122 3.2.2): not an ICMP error itself, not a later fragment, and not from an address
/// that names no single host (0, broadcast, multicast, class E, loopback).
pub fn may_answer(ip: &[u8]) -> bool {
    if ip.len() < IPV4_MIN_HLEN {
        return false;
    }
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let later_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
    let error = ip[9] == 1
        && ip.len() > usize::from(ip[0] & 0xf) * 4
        && is_icmp_error(ip[usize::from(ip[0] & 0xf) * 4]);
    !(later_fragment || error) && is_host(src)
}

/// Whether `addr` (host byte order) can name a single host an ICMP error may go to: not 0/8,
/// loopback, multicast, class E or broadcast.
#[inline]
pub fn is_host(addr: u32) -> bool {
    let first = (addr >> 24) as u8;
    first != 0 && first != 127 && first < 224
}

/// [`icmp_error`] for "destination unreachable", with the next-hop MTU (0 unless `reason` is
/// fragmentation needed).
pub fn icmp_unreachable(
    buf: &mut [u8],
    from: [u8; 4],
    reason: smoltcp::wire::Icmpv4DstUnreachable,
    mtu: u16,
) -> Option<usize> {
    icmp_error(
        buf,
        from,
        ICMP_DEST_UNREACH,
        u8::from(reason),
        u32::from(mtu),
    )
}

/// The packet an ICMP error quotes, as the flow it belongs to sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    /// Offset of the quoted IPv4 header from the outer IPv4 header.
    pub at: usize,
    /// The quoted header's length (its IHL).
    pub hlen: usize,
    /// Quoted source (the sender of the offending packet; the error goes to it).
    pub src: u32,
    /// Quoted destination.
    pub dst: u32,
    /// Quoted source port (ICMP echo: the identifier).
    pub sport: u16,
    /// Quoted destination port (ICMP echo: the identifier).
    pub dport: u16,
    /// Quoted IP protocol.
    pub proto: u8,
}

/// Whether ICMP type `t` is an error about another packet (unreachable, time exceeded,
/// parameter problem).
#[inline]
pub fn is_icmp_error(t: u8) -> bool {
    matches!(
        t,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
    )
}

/// An ICMP error whose quote names no flow: too short for the quoted header and the first
/// 8 bytes of a first fragment with ports (or an ICMP echo's identifier), or an error about an
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unquotable;

/// The packet quoted by the ICMP error whose IPv4 header (no options) starts at `ip[0]`:
/// `Ok(None)` when `ip` is no ICMP error, [`Unquotable`] when its quote names no flow.
pub fn quoted(ip: &[u8]) -> Result<Option<Quoted>, Unquotable> {
    if ip.len() < IPV4_MIN_HLEN + 8 || ip[9] != 1 || !is_icmp_error(ip[IPV4_MIN_HLEN]) {
        return Ok(None);
    }
    let at = IPV4_MIN_HLEN + 8;
    let q = ip.get(at..).ok_or(Unquotable)?;
    if q.len() < IPV4_MIN_HLEN || q[0] >> 4 != 4 {
        return Err(Unquotable);
    }
    let hlen = usize::from(q[0] & 0xf) * 4;
    if hlen < IPV4_MIN_HLEN || q.len() < hlen + 8 {
        return Err(Unquotable);
    }
    // Only a first fragment's quote carries the ports.
    if u16::from_be_bytes([q[6], q[7]]) & 0x1fff != 0 {
        return Err(Unquotable);
    }
    let word = |o: usize| u32::from_be_bytes([q[o], q[o + 1], q[o + 2], q[o + 3]]);
    let half = |o: usize| u16::from_be_bytes([q[o], q[o + 1]]);
    let proto = q[9];
    let (sport, dport) = match proto {
        6 | 17 | 132 => (half(hlen), half(hlen + 2)),
        // An error about an echo request or reply: the identifier, as the echo is tracked.
        1 if matches!(q[hlen], 0 | 8) => (half(hlen + 4), half(hlen + 4)),
        1 => return Err(Unquotable), // an error about an error is never sent (RFC 1122)
        _ => (0, 0),
    };
    Ok(Some(Quoted {
        at,
        hlen,
        src: word(12),
        dst: word(16),
        sport,
        dport,
        proto,
    }))
}

/// Translates an ICMP error about a translated flow: the quoted packet's source becomes
/// `q_src` and its destination `q_dst` (addresses and ports, with the quoted IPv4 checksum and
/// the quoted UDP or TCP checksum if the quote holds it), the outer source `outer_src` and the
/// outer destination `outer_dst` (each `None`: left), and the ICMP checksum is computed anew
/// over the whole message. `ip` is the outer IPv4 header (no options) onwards, as long as its
/// total length says.
pub fn translate_icmp_error(
    ip: &mut [u8],
    q: &Quoted,
    (q_src, q_sport): (u32, u16),
    (q_dst, q_dport): (u32, u16),
    outer_src: Option<u32>,
    outer_dst: Option<u32>,
) {
    let word = |b: &[u8], o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let half = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    let (os, od) = (word(ip, 12), word(ip, 16));
    ipv4_set_addrs(ip, outer_src.unwrap_or(os), outer_dst.unwrap_or(od));
    let qh = &mut ip[q.at..];
    let (old_src, old_dst) = (word(qh, 12), word(qh, 16));
    let c = half(qh, 10);
    let c = csum_replace32(csum_replace32(c, old_src, q_src), old_dst, q_dst);
    qh[10..12].copy_from_slice(&c.to_be_bytes());
    qh[12..16].copy_from_slice(&q_src.to_be_bytes());
    qh[16..20].copy_from_slice(&q_dst.to_be_bytes());
    if matches!(q.proto, 6 | 17 | 132) {
        let l4 = q.hlen;
        let (old_sport, old_dport) = (half(qh, l4), half(qh, l4 + 2));
        qh[l4..l4 + 2].copy_from_slice(&q_sport.to_be_bytes());
        qh[l4 + 2..l4 + 4].copy_from_slice(&q_dport.to_be_bytes());
        // The quoted L4 checksum, when the quote holds it (UDP's always; TCP's in a long one).
        let co = l4 + if q.proto == 6 { 16 } else { 6 };
        if q.proto != 132 && qh.len() >= co + 2 {
            let old = half(qh, co);
            if !(q.proto == 17 && old == 0) {
                let mut c = csum_replace32(csum_replace32(old, old_src, q_src), old_dst, q_dst);
                c = csum_replace16(csum_replace16(c, old_sport, q_sport), old_dport, q_dport);
                if q.proto == 17 && c == 0 {
                    c = 0xffff;
                }
                qh[co..co + 2].copy_from_slice(&c.to_be_bytes());
            }
        }
    }
    // A quoted ICMP echo: its identifier (with the quoted ICMP checksum, when quoted).
    if q.proto == 1 && qh.len() >= q.hlen + 6 {
        let l4 = q.hlen;
        let old = half(qh, l4 + 4);
        let c = csum_replace16(half(qh, l4 + 2), old, q_sport);
        qh[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        qh[l4 + 4..l4 + 6].copy_from_slice(&q_sport.to_be_bytes());
    }
    let icmp = &mut ip[IPV4_MIN_HLEN..];
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = inet_checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4_checksum_ok;

    /// An Ethernet frame with a UDP packet from 10.244.1.10:5000 to 10.96.0.10:81.
    fn udp_frame() -> Vec<u8> {
        let mut f = vec![0u8; ETH_HLEN];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = vec![
            0x45, 0, 0, 36, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 244, 1, 10, 10, 96, 0, 10,
        ];
        let c = ipv4_header_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&[0x13, 0x88, 0, 81, 0, 16, 0xab, 0xcd]);
        ip.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        f.extend_from_slice(&ip);
        f.resize(ICMP_ERROR_FRAME.max(f.len()), 0);
        f
    }

    #[test]
    fn errors_quote_their_packet_and_name_its_flow() {
        let mut f = udp_frame();
        let n = icmp_error(&mut f, [10, 96, 0, 10], ICMP_DEST_UNREACH, 3, 0).unwrap();
        let ip = &f[ETH_HLEN..n];
        assert!(ipv4_checksum_ok(&ip[..20]));
        assert_eq!(&ip[12..20], &[10, 96, 0, 10, 10, 244, 1, 10]);
        assert_eq!(inet_checksum(&ip[20..]), 0, "ICMP checksum");
        let q = quoted(ip).unwrap().unwrap();
        assert_eq!(
            (q.src, q.dst, q.sport, q.dport, q.proto),
            (0x0af4_010a, 0x0a60_000a, 5000, 81, 17)
        );
        // Not an error: an echo request.
        let mut echo = ip.to_vec();
        echo[20] = 8;
        assert_eq!(quoted(&echo), Ok(None));
        // Too short to name a flow.
        assert_eq!(quoted(&ip[..20 + 8 + 24]), Err(Unquotable));
        // A quote of a later fragment has no ports.
        let mut frag = ip.to_vec();
        frag[28 + 7] = 1;
        assert_eq!(quoted(&frag), Err(Unquotable));
    }

    #[test]
    fn errors_are_never_sent_about_errors_fragments_or_non_hosts() {
        let f = udp_frame();
        assert!(may_answer(&f[ETH_HLEN..]));
        let mut e = udp_frame();
        let n = icmp_error(&mut e, [10, 96, 0, 10], ICMP_DEST_UNREACH, 3, 0).unwrap();
        assert!(!may_answer(&e[ETH_HLEN..n]), "an error about an error");
        let mut echo = e[..n].to_vec();
        echo[ETH_HLEN + 20] = 8;
        assert!(
            may_answer(&echo[ETH_HLEN..]),
            "an echo request may be answered"
        );
        let mut later = udp_frame();
        later[ETH_HLEN + 7] = 1;
        assert!(!may_answer(&later[ETH_HLEN..]), "a later fragment");
        for first in [0u8, 127, 224, 239, 240, 255] {
            let mut g = udp_frame();
            g[ETH_HLEN + 12] = first;
            assert!(!may_answer(&g[ETH_HLEN..]), "source {first}.x");
        }
    }

    #[test]
    fn translation_keeps_every_checksum_valid() {
        let mut f = udp_frame();
        let n = icmp_error(&mut f, [10, 244, 2, 20], ICMP_DEST_UNREACH, 3, 0).unwrap();
        let ip = &mut f[ETH_HLEN..n];
        let q = quoted(ip).unwrap().unwrap();
        translate_icmp_error(
            ip,
            &q,
            (0x0af4_010a, 5000),
            (0x0a60_000a, 81),
            Some(0x0a60_000a),
            None,
        );
        assert!(ipv4_checksum_ok(&ip[..20]));
        assert_eq!(&ip[12..16], &[10, 96, 0, 10]);
        assert_eq!(inet_checksum(&ip[20..]), 0, "ICMP checksum");
        assert!(ipv4_checksum_ok(&ip[28..48]), "quoted header checksum");
        let q2 = quoted(ip).unwrap().unwrap();
        assert_eq!((q2.dst, q2.dport), (0x0a60_000a, 81));
        // Translating to other ports and back gives the same bytes.
        let before = ip.to_vec();
        translate_icmp_error(ip, &q, (1, 2), (3, 4), Some(5), Some(6));
        translate_icmp_error(
            ip,
            &q,
            (0x0af4_010a, 5000),
            (0x0a60_000a, 81),
            Some(0x0a60_000a),
            Some(0x0af4_010a),
        );
        assert_eq!(ip.to_vec(), before);
    }
}
