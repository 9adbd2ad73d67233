//! In-place edits of frames the pipeline owns. Parsing is etherparse's and smoltcp's; this module
//! only holds the few writes they do not offer on a borrowed buffer.

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// Minimum IPv4 header length.
pub const IPV4_MIN_HLEN: usize = 20;
/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// Writes destination and source MAC.
#[inline]
pub fn set_macs(frame: &mut [u8], dst: &[u8; 6], src: &[u8; 6]) {
    frame[0..6].copy_from_slice(dst);
    frame[6..12].copy_from_slice(src);
}

/// RFC 1624 incremental update of a ones'-complement checksum when one 16-bit word changes.
#[inline]
pub fn csum_replace16(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Replaces a 32-bit word covered by a checksum (an address), RFC 1624.
#[inline]
pub fn csum_replace32(csum: u16, old: u32, new: u32) -> u16 {
    let c = csum_replace16(csum, (old >> 16) as u16, (new >> 16) as u16);
    csum_replace16(c, old as u16, new as u16)
}

/// Rewrites the addresses and ports of the TCP or UDP packet whose IPv4 header (no options)
/// starts at `ip[0]`, patching the IPv4 and L4 checksums incrementally. The caller has checked
/// that the L4 header is there (20 bytes for TCP, 8 for UDP).
pub fn ipv4_rewrite(ip: &mut [u8], src: u32, sport: u16, dst: u32, dport: u16) {
    let word = |b: &[u8], o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let half = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    let (osrc, odst) = (word(ip, 12), word(ip, 16));
    let l4 = IPV4_MIN_HLEN;
    let (osport, odport) = (half(ip, l4), half(ip, l4 + 2));
    let mut c = half(ip, 10);
    c = csum_replace32(csum_replace32(c, osrc, src), odst, dst);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    ip[16..20].copy_from_slice(&dst.to_be_bytes());
    ip[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
    ip[l4 + 2..l4 + 4].copy_from_slice(&dport.to_be_bytes());
    let co = l4 + if ip[9] == 6 { 16 } else { 6 };
    let old = half(ip, co);
    if ip[9] == 17 && old == 0 {
        return; // UDP without a checksum stays without one
    }
    let mut c = csum_replace32(csum_replace32(old, osrc, src), odst, dst);
    c = csum_replace16(csum_replace16(c, osport, sport), odport, dport);
    if ip[9] == 17 && c == 0 {
        c = 0xffff;
    }
    ip[co..co + 2].copy_from_slice(&c.to_be_bytes());
}

/// Rewrites the frame in `buf` (Ethernet + IPv4 without options) in place into an ICMP
/// "destination unreachable" for its sender, from `from`, quoting the original IPv4 header and
/// 8 bytes of payload (RFC 792). `mtu` is the next-hop MTU for `FragRequired` (RFC 1191), else
/// 0. The Ethernet addresses are left to the caller. Returns the new frame length, or `None`
/// when the frame is too short to hold the reply.
pub fn icmp_unreachable(
    buf: &mut [u8],
    from: [u8; 4],
    reason: smoltcp::wire::Icmpv4DstUnreachable,
    mtu: u16,
) -> Option<usize> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address,
        Ipv4Packet, Ipv4Repr,
    };
    let mut quote = [0u8; IPV4_MIN_HLEN + 8];
    let n = quote.len().min(buf.len().checked_sub(ETH_HLEN)?);
    quote[..n].copy_from_slice(&buf[ETH_HLEN..ETH_HLEN + n]);
    let sender = Ipv4Address::new(quote[12], quote[13], quote[14], quote[15]);
    let orig_dst = Ipv4Address::new(quote[16], quote[17], quote[18], quote[19]);
    let orig_total = u16::from_be_bytes([quote[2], quote[3]]);

    let icmp_len = 8 + quote.len();
    let total = ETH_HLEN + IPV4_MIN_HLEN + icmp_len;
    if buf.len() < total {
        return None;
    }
    let caps = ChecksumCapabilities::default();
    EthernetFrame::new_unchecked(&mut buf[..total]).set_ethertype(EthernetProtocol::Ipv4);
    Ipv4Repr {
        src_addr: Ipv4Address::from(from),
        dst_addr: sender,
        next_header: IpProtocol::Icmp,
        payload_len: icmp_len,
        hop_limit: 64,
    }
    .emit(
        &mut Ipv4Packet::new_unchecked(&mut buf[ETH_HLEN..total]),
        &caps,
    );
    let icmp_buf = &mut buf[ETH_HLEN + IPV4_MIN_HLEN..total];
    Icmpv4Repr::DstUnreachable {
        reason,
        header: Ipv4Repr {
            src_addr: sender,
            dst_addr: orig_dst,
            next_header: IpProtocol::from(quote[9]),
            payload_len: usize::from(orig_total).saturating_sub(IPV4_MIN_HLEN),
            hop_limit: quote[8],
        },
        data: &quote[IPV4_MIN_HLEN..],
    }
    .emit(&mut Icmpv4Packet::new_unchecked(&mut *icmp_buf), &caps);
    // smoltcp leaves the next-hop MTU at zero and rebuilds the quoted header: write the MTU
    // and the sender's exact header, then the checksum again.
    icmp_buf[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp_buf[8..8 + quote.len()].copy_from_slice(&quote);
    Icmpv4Packet::new_unchecked(&mut *icmp_buf).fill_checksum();
    Some(total)
}

/// Decrements the TTL of the IPv4 header at `ip` and patches its checksum. Returns the TTL
/// before the decrement; a TTL of 0 or 1 is left untouched (the caller drops the packet).
#[inline]
pub fn ipv4_dec_ttl(ip: &mut [u8]) -> u8 {
    let ttl = ip[8];
    if ttl <= 1 {
        return ttl;
    }
    let old = u16::from_be_bytes([ip[8], ip[9]]);
    ip[8] = ttl - 1;
    let new = u16::from_be_bytes([ip[8], ip[9]]);
    let csum = u16::from_be_bytes([ip[10], ip[11]]);
    ip[10..12].copy_from_slice(&csum_replace16(csum, old, new).to_be_bytes());
    ttl
}

/// The ones'-complement checksum of an IPv4 header (with its checksum field as found).
pub fn ipv4_header_checksum(hdr: &[u8]) -> u16 {
    let mut sum = 0u32;
    for (i, w) in hdr.chunks(2).enumerate() {
        if i == 5 {
            continue;
        }
        let hi = u32::from(w[0]) << 8;
        let lo = w.get(1).copied().map(u32::from).unwrap_or(0);
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(ttl: u8, proto: u8, seed: [u8; 8]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 40, seed[0], seed[1], 0x40, 0, ttl, proto, 0, 0];
        h.extend_from_slice(&[10, seed[2], seed[3], seed[4], 10, seed[5], seed[6], seed[7]]);
        let c = ipv4_header_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    proptest! {
        #[test]
        fn ttl_decrement_keeps_checksum_valid(ttl in 2u8.., proto: u8, seed: [u8; 8]) {
            let mut h = header(ttl, proto, seed);
            prop_assert_eq!(ipv4_dec_ttl(&mut h), ttl);
            prop_assert_eq!(h[8], ttl - 1);
            let stored = u16::from_be_bytes([h[10], h[11]]);
            prop_assert_eq!(stored, ipv4_header_checksum(&h));
        }
    }

    #[test]
    fn ttl_one_is_left_for_the_caller() {
        let mut h = header(1, 6, [0; 8]);
        let before = h.clone();
        assert_eq!(ipv4_dec_ttl(&mut h), 1);
        assert_eq!(h, before);
    }
}

/// Bytes VXLAN puts in front of the inner frame: Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: usize = 50;
/// Offset of the inner frame from the outer frame's start.
pub const VXLAN_INNER: usize = VXLAN_OVERHEAD;
/// The only VXLAN flags we accept: the I bit (RFC 7348).
pub const VXLAN_FLAGS: u8 = 0x08;

/// The outer headers of a VXLAN packet, for building (smoltcp-style `Repr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// Outer source MAC (our uplink).
    pub src_mac: [u8; 6],
    /// Outer destination MAC (next hop to the remote node).
    pub dst_mac: [u8; 6],
    /// Our node's underlay address.
    pub src_ip: [u8; 4],
    /// The remote node's underlay address.
    pub dst_ip: [u8; 4],
    /// UDP source port (flow entropy).
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// VXLAN network identifier (24 bits): the sender's security identity.
    pub vni: u32,
}

impl VxlanRepr {
    /// Writes the 50 outer bytes into `buf[..50]`; `inner_len` is the inner frame's length.
    /// The UDP checksum is left zero, as RFC 7348 allows over IPv4.
    #[inline]
    pub fn emit(&self, buf: &mut [u8], inner_len: usize) {
        let b = &mut buf[..VXLAN_OVERHEAD];
        b[0..6].copy_from_slice(&self.dst_mac);
        b[6..12].copy_from_slice(&self.src_mac);
        b[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip_len = (inner_len + VXLAN_OVERHEAD - ETH_HLEN) as u16;
        let ip = &mut b[ETH_HLEN..ETH_HLEN + IPV4_MIN_HLEN];
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[4..8].copy_from_slice(&[0, 0, 0, 0]); // id 0, no DF: the underlay may fragment
        ip[8] = 64;
        ip[9] = 17;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&self.src_ip);
        ip[16..20].copy_from_slice(&self.dst_ip);
        let c = ipv4_header_checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let udp = &mut b[34..42];
        udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&(ip_len - IPV4_MIN_HLEN as u16).to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
        let vx = &mut b[42..50];
        vx.copy_from_slice(&[VXLAN_FLAGS, 0, 0, 0, 0, 0, 0, 0]);
        vx[4..7].copy_from_slice(&self.vni.to_be_bytes()[1..4]);
    }
}

/// A checked view of a VXLAN packet (outer Ethernet, IPv4 without options, UDP, VXLAN).
#[derive(Debug)]
pub struct VxlanPacket<'a> {
    buf: &'a [u8],
}

/// Why a VXLAN packet does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VxlanError {
    /// Shorter than the outer headers, or UDP length too small for a VXLAN header.
    Short,
    /// Flags other than the I bit alone.
    Flags,
    /// The inner frame is shorter than an Ethernet and an IPv4 header.
    TruncatedInner,
}

impl<'a> VxlanPacket<'a> {
    /// Checks lengths and flags. The outer IPv4 header has been validated (IHL 5) by the caller.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, VxlanError> {
        if buf.len() < VXLAN_OVERHEAD {
            return Err(VxlanError::Short);
        }
        let udp_len = usize::from(u16::from_be_bytes([buf[38], buf[39]]));
        if udp_len < 16 {
            return Err(VxlanError::Short);
        }
        if buf[42] != VXLAN_FLAGS {
            return Err(VxlanError::Flags);
        }
        if buf.len() < VXLAN_INNER + ETH_HLEN + IPV4_MIN_HLEN
            || udp_len < 16 + ETH_HLEN + IPV4_MIN_HLEN
        {
            return Err(VxlanError::TruncatedInner);
        }
        Ok(VxlanPacket { buf })
    }
    /// Outer source address.
    pub fn src_ip(&self) -> u32 {
        u32::from_be_bytes([self.buf[26], self.buf[27], self.buf[28], self.buf[29]])
    }
    /// The 24-bit VNI.
    pub fn vni(&self) -> u32 {
        u32::from_be_bytes([0, self.buf[46], self.buf[47], self.buf[48]])
    }
    /// Length of the inner frame as the outer UDP header states it.
    pub fn inner_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.buf[38], self.buf[39]])) - 16
    }
}

/// A 16-bit flow hash of an IPv4 packet's addresses, protocol and first four L4 bytes (ports):
/// the same flow always gets the same value.
#[inline]
pub fn flow_hash(ip: &[u8]) -> u16 {
    let w = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let ports = if ip.len() >= IPV4_MIN_HLEN + 4 && matches!(ip[9], 6 | 17) {
        w(IPV4_MIN_HLEN)
    } else {
        0
    };
    let mut h = u64::from(w(12)) << 32 | u64::from(w(16));
    h ^= (u64::from(ports) << 8 | u64::from(ip[9])).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    (h >> 48) as u16 ^ (h >> 16) as u16
}

/// UDP source port for a VXLAN packet from the inner flow's hash, in 49152..=65535 as Linux picks.
#[inline]
pub fn vxlan_src_port(inner_ip: &[u8]) -> u16 {
    49152 | (flow_hash(inner_ip) & 0x3fff)
}

#[cfg(test)]
mod vxlan_tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn emitted_outer_headers_parse_back() {
        let inner = vec![0xabu8; 98];
        let r = VxlanRepr {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: [192, 168, 100, 10],
            dst_ip: [192, 168, 100, 11],
            src_port: 50000,
            dst_port: 8472,
            vni: 0x12_3456,
        };
        let mut buf = vec![0u8; VXLAN_OVERHEAD + inner.len()];
        buf[VXLAN_OVERHEAD..].copy_from_slice(&inner);
        r.emit(&mut buf, inner.len());
        let p = SlicedPacket::from_ethernet(&buf).unwrap();
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        assert_eq!(ip.header().total_len() as usize, buf.len() - 14);
        assert_eq!(
            ip.header().header_checksum(),
            ipv4_header_checksum(ip.header().slice())
        );
        let Some(TransportSlice::Udp(udp)) = p.transport else {
            panic!()
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (50000, 8472));
        assert_eq!(udp.length() as usize, 16 + inner.len());
        let v = VxlanPacket::new_checked(&buf).unwrap();
        assert_eq!(v.vni(), 0x12_3456);
        assert_eq!(v.src_ip(), u32::from_be_bytes([192, 168, 100, 10]));
        assert_eq!(v.inner_len(), inner.len());
        // Truncations and bad flags.
        assert_eq!(
            VxlanPacket::new_checked(&buf[..49]).unwrap_err(),
            VxlanError::Short
        );
        assert_eq!(
            VxlanPacket::new_checked(&buf[..60]).unwrap_err(),
            VxlanError::TruncatedInner
        );
        let mut bad = buf.clone();
        bad[42] = 0x0c;
        assert_eq!(
            VxlanPacket::new_checked(&bad).unwrap_err(),
            VxlanError::Flags
        );
    }

    #[test]
    fn source_port_is_stable_per_flow_and_in_range() {
        let a = [
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 1, 1, 0x9c, 0x40, 0, 80,
        ];
        let mut b = a;
        b[21] = 0x41;
        assert_eq!(vxlan_src_port(&a), vxlan_src_port(&a));
        assert!(vxlan_src_port(&a) >= 49152 && vxlan_src_port(&b) >= 49152);
        assert_ne!(vxlan_src_port(&a), vxlan_src_port(&b));
    }
}
