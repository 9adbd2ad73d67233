//! In-place edits of frames the pipeline owns. Parsing is etherparse's and smoltcp's; this module
//! only holds the few reads and writes they do not offer on a borrowed buffer.
//!
//! - here: Ethernet and IPv4 (addresses, TTL, checksums, fragments, DSCP/ECN);
//! - [`icmp`]: ICMP errors: building them, and the flow an error quotes;
//! - [`vxlan`]: the outer headers of VXLAN (RFC 7348), with ECN per RFC 6040.

mod icmp;
mod vxlan;

pub use icmp::*;
pub use vxlan::*;

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

/// Rewrites the addresses and the identifier of the ICMP echo request or reply whose IPv4
/// header (no options) starts at `ip[0]`, patching the IPv4 and ICMP checksums incrementally
/// (the ICMP checksum does not cover the addresses). The caller has checked that the 8 bytes
/// of the ICMP header are there.
pub fn icmp_echo_rewrite(ip: &mut [u8], src: u32, dst: u32, id: u16) {
    ipv4_set_addrs(ip, src, dst);
    let l4 = IPV4_MIN_HLEN;
    let old = u16::from_be_bytes([ip[l4 + 4], ip[l4 + 5]]);
    let c = u16::from_be_bytes([ip[l4 + 2], ip[l4 + 3]]);
    let c = csum_replace16(c, old, id);
    ip[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
    ip[l4 + 4..l4 + 6].copy_from_slice(&id.to_be_bytes());
}

/// Rewrites the source and destination of the IPv4 header at `ip[0]` (no L4 checksum: for
/// ICMP, whose checksum does not cover the addresses), patching the header checksum.
pub fn ipv4_set_addrs(ip: &mut [u8], src: u32, dst: u32) {
    let word = |b: &[u8], o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let mut c = u16::from_be_bytes([ip[10], ip[11]]);
    c = csum_replace32(csum_replace32(c, word(ip, 12), src), word(ip, 16), dst);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    ip[16..20].copy_from_slice(&dst.to_be_bytes());
}

/// Whether the IPv4 header `hdr` (its whole IHL) carries a correct checksum.
#[inline]
pub fn ipv4_checksum_ok(hdr: &[u8]) -> bool {
    // The common header, without options: a fixed length the compiler unrolls.
    let sum = match <&[u8; IPV4_MIN_HLEN]>::try_from(hdr) {
        Ok(h) => ones_sum(h),
        Err(_) => ones_sum(hdr),
    };
    sum == 0xffff
}

/// The ones'-complement sum (RFC 1071) of `data` as 16-bit big-endian words (an odd last byte
/// padded with zero), folded to 16 bits.
#[inline]
fn ones_sum(data: &[u8]) -> u16 {
    let mut words = data.chunks_exact(2);
    let mut sum: u64 = words
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The IPv4 fragment fields of `ip`: (more fragments, offset in 8-byte units).
#[inline]
pub fn ipv4_fragment(ip: &[u8]) -> (bool, u16) {
    let f = u16::from_be_bytes([ip[6], ip[7]]);
    (f & 0x2000 != 0, f & 0x1fff)
}

/// The internet checksum (RFC 1071) of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    !ones_sum(data)
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
    // Every 16-bit word but the checksum's own (bytes 10 and 11).
    let before = ones_sum(&hdr[..hdr.len().min(10)]);
    let after = ones_sum(hdr.get(12..).unwrap_or(&[]));
    let mut sum = u32::from(before) + u32::from(after);
    if sum > 0xffff {
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

    /// RFC 1071 byte by byte, as these functions were first written.
    fn reference_sum(data: &[u8], skip_word: Option<usize>) -> u16 {
        let mut sum = 0u32;
        for (i, w) in data.chunks(2).enumerate() {
            if Some(i) == skip_word {
                continue;
            }
            sum += u32::from(w[0]) << 8 | w.get(1).copied().map_or(0, u32::from);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    proptest! {
        #[test]
        fn checksums_match_the_byte_by_byte_reference(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            prop_assert_eq!(inet_checksum(&data), !reference_sum(&data, None));
            prop_assert_eq!(ipv4_header_checksum(&data), !reference_sum(&data, Some(5)));
            prop_assert_eq!(ipv4_checksum_ok(&data), reference_sum(&data, None) == 0xffff);
        }

        #[test]
        fn a_written_header_checksum_verifies(mut h in proptest::collection::vec(any::<u8>(), 20..=60)) {
            let c = ipv4_header_checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            prop_assert!(ipv4_checksum_ok(&h));
        }

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
    fn header_checksums_are_verified() {
        let mut h = header(64, 6, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(ipv4_checksum_ok(&h));
        h[8] = 63;
        assert!(
            !ipv4_checksum_ok(&h),
            "a changed TTL without a new checksum"
        );
        let mut h = header(64, 17, [9; 8]);
        ipv4_set_addrs(&mut h, 0x0a00_0001, 0x0a60_000a);
        assert!(ipv4_checksum_ok(&h));
        assert_eq!(&h[12..20], &[10, 0, 0, 1, 10, 96, 0, 10]);
    }

    #[test]
    fn echo_rewrite_keeps_both_checksums_valid() {
        let mut p = header(64, 1, [3; 8]);
        p[2..4].copy_from_slice(&36u16.to_be_bytes());
        let c = ipv4_header_checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8];
        let c = inet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&icmp);
        icmp_echo_rewrite(&mut p, 0xc0a8_640b, 0xcb00_710a, 61234);
        assert!(ipv4_checksum_ok(&p[..20]));
        assert_eq!(&p[12..20], &[192, 168, 100, 11, 203, 0, 113, 10]);
        assert_eq!(u16::from_be_bytes([p[24], p[25]]), 61234);
        assert_eq!(inet_checksum(&p[20..]), 0, "ICMP checksum");
    }

    #[test]
    fn ttl_one_is_left_for_the_caller() {
        let mut h = header(1, 6, [0; 8]);
        let before = h.clone();
        assert_eq!(ipv4_dec_ttl(&mut h), 1);
        assert_eq!(h, before);
    }
}
