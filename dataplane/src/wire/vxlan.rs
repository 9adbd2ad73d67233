//! The outer headers of VXLAN (RFC 7348) over IPv4, with ECN handled as RFC 6040 says.

use super::{ipv4_header_checksum, ETHERTYPE_IPV4, ETH_HLEN, IPV4_MIN_HLEN};

/// Bytes VXLAN puts in front of the inner frame: Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: usize = 50;
/// Offset of the inner frame from the outer frame's start.
pub const VXLAN_INNER: usize = VXLAN_OVERHEAD;
/// The VXLAN flags we send: the I bit alone (RFC 7348). On receive only the I bit is required;
/// the reserved bits are ignored, as RFC 7348 says.
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
    /// The outer DSCP and ECN byte: the inner packet's, copied (RFC 6040 normal mode; RFC 2983
    /// uniform DSCP).
    pub tos: u8,
    /// Set DF on the outer header (the underlay must then not fragment).
    pub df: bool,
    /// The outer IPv4 identification (RFC 6864: unique per source, destination and protocol
    /// while a datagram may be fragmented; ignored when DF is set).
    pub id: u16,
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
        ip[1] = self.tos;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[4..6].copy_from_slice(&self.id.to_be_bytes());
        ip[6..8].copy_from_slice(&[if self.df { 0x40 } else { 0 }, 0]);
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
    /// The I bit is not set.
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
        if buf[42] & VXLAN_FLAGS == 0 {
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
    /// Outer destination address.
    pub fn dst_ip(&self) -> u32 {
        u32::from_be_bytes([self.buf[30], self.buf[31], self.buf[32], self.buf[33]])
    }
    /// The outer DSCP and ECN byte.
    pub fn tos(&self) -> u8 {
        self.buf[ETH_HLEN + 1]
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

/// The ECN codepoint after decapsulation (RFC 6040 section 4.2), from the outer and inner DSCP
/// and ECN bytes: the new inner byte, or `None` when the packet must be dropped (the outer was
/// marked Congestion Experienced and the inner is not ECN-capable).
#[inline]
pub fn ecn_decap(outer_tos: u8, inner_tos: u8) -> Option<u8> {
    const NOT_ECT: u8 = 0;
    const CE: u8 = 3;
    let (outer, inner) = (outer_tos & 3, inner_tos & 3);
    match (inner, outer) {
        (NOT_ECT, CE) => None,
        (NOT_ECT, _) => Some(inner_tos),
        (CE, _) => Some(inner_tos),
        // ECT(0) or ECT(1) inside: CE outside marks it; ECT(1) outside turns ECT(0) to ECT(1).
        (_, CE) => Some(inner_tos | CE),
        (_, 1) => Some(inner_tos & !3 | 1),
        _ => Some(inner_tos),
    }
}

/// A 16-bit flow hash of an IPv4 packet's addresses, protocol and first four L4 bytes (ports):
/// the same flow always gets the same value. Ports count only for TCP, UDP and SCTP, and only
/// when the packet is not a fragment (every fragment of a datagram hashes alike).
#[inline]
pub fn flow_hash(ip: &[u8]) -> u16 {
    let w = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let ports = if ip.len() >= IPV4_MIN_HLEN + 4 && matches!(ip[9], 6 | 17 | 132) && !fragment {
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
            tos: 0xb9,
            df: true,
            id: 0x4242,
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
        assert_eq!(v.dst_ip(), u32::from_be_bytes([192, 168, 100, 11]));
        assert_eq!(v.tos(), 0xb9);
        assert!(ip.header().dont_fragment());
        assert_eq!(ip.header().identification(), 0x4242);
        // Reserved bits are ignored (RFC 7348): only a missing I bit is refused.
        let mut reserved = buf.clone();
        reserved[42] = 0x0c;
        reserved[43] = 0xff;
        reserved[49] = 0x01;
        assert!(VxlanPacket::new_checked(&reserved).is_ok());
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
        bad[42] = 0x04;
        assert_eq!(
            VxlanPacket::new_checked(&bad).unwrap_err(),
            VxlanError::Flags
        );
    }

    #[test]
    fn ecn_follows_rfc_6040() {
        // (outer, inner) -> inner after decapsulation; the DSCP bits are kept.
        let dscp = 0xb8;
        for (outer, inner, want) in [
            (0, 0, Some(0)),
            (1, 0, Some(0)),
            (2, 0, Some(0)),
            (3, 0, None),
            (0, 2, Some(2)),
            (1, 2, Some(1)),
            (2, 2, Some(2)),
            (3, 2, Some(3)),
            (3, 1, Some(3)),
            (0, 3, Some(3)),
        ] {
            assert_eq!(
                ecn_decap(outer, dscp | inner),
                want.map(|w| dscp | w),
                "outer {outer} inner {inner}"
            );
        }
    }

    #[test]
    fn fragments_of_a_datagram_hash_alike() {
        let mut first = [
            0x45, 0, 0, 40, 0, 7, 0x20, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 1, 1, 0x9c, 0x40, 0,
            80,
        ];
        let mut later = first;
        later[6..8].copy_from_slice(&[0, 185]); // offset 1480, last fragment
        later[20..24].copy_from_slice(&[1, 2, 3, 4]); // payload, not ports
        assert_eq!(flow_hash(&first), flow_hash(&later));
        first[6] = 0;
        assert_ne!(
            flow_hash(&first),
            flow_hash(&later),
            "unfragmented: ports count"
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
