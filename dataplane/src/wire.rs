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
