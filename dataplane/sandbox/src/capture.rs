//! Reading the connectivity checks' underlay captures (tcpdump's pcap files) for VXLAN.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use pcap_file::pcap::PcapParser;
use pcap_file::PcapError;

/// One VXLAN packet seen on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VxlanSeen {
    pub(crate) outer_src: Ipv4Addr,
    pub(crate) outer_dst: Ipv4Addr,
    pub(crate) vni: u32,
    pub(crate) inner_src: Ipv4Addr,
    pub(crate) inner_dst: Ipv4Addr,
}

/// Reads a classic pcap file (Ethernet link type) and returns its VXLAN packets.
pub(crate) fn read_vxlan_pcap(path: &Path) -> Result<Vec<VxlanSeen>> {
    let data =
        std::fs::read(path).with_context(|| format!("reading capture {}", path.display()))?;
    parse_pcap(&data)
}

/// The VXLAN packets of a classic pcap file (either byte order, micro- or nanosecond
/// timestamps), as `pcap-file` reads it. Records are read raw (`next_raw_packet`): pcap-file
/// 2.0's checked `next_packet` rejects every record whose original length exceeds the snap
/// length, and the checks capture with `-s 128`. A record that the file's end cuts short (only
/// from a tcpdump that was killed mid-write) ends the reading.
fn parse_pcap(data: &[u8]) -> Result<Vec<VxlanSeen>> {
    let (mut rest, parser) = match PcapParser::new(data) {
        Ok(x) => x,
        Err(PcapError::IncompleteBuffer) => bail!("capture too short"),
        Err(_) => bail!("not a pcap file"),
    };
    let mut out = Vec::new();
    loop {
        let (next, rec) = match parser.next_raw_packet(rest) {
            Ok(x) => x,
            Err(PcapError::IncompleteBuffer) => break,
            Err(e) => bail!("reading the capture: {e}"),
        };
        rest = next;
        let pkt = &rec.data[..];
        let ip = |o: usize| Ipv4Addr::new(pkt[o], pkt[o + 1], pkt[o + 2], pkt[o + 3]);
        // Ethernet(14) IPv4(20, no options) UDP(8) VXLAN(8) | Ethernet(14) IPv4 …
        if pkt.len() < 50 + 34 || pkt[12..14] != [0x08, 0x00] || pkt[14] != 0x45 || pkt[23] != 17 {
            continue;
        }
        out.push(VxlanSeen {
            outer_src: ip(26),
            outer_dst: ip(30),
            vni: u32::from_be_bytes([0, pkt[46], pkt[47], pkt[48]]),
            inner_src: ip(50 + 26),
            inner_dst: ip(50 + 30),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_reader_finds_vxlan() {
        let inner = vec![0u8; 60];
        let mut frame = vec![0u8; 50];
        frame.extend_from_slice(&inner);
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[23] = 17;
        frame[26..30].copy_from_slice(&[192, 168, 100, 11]);
        frame[30..34].copy_from_slice(&[192, 168, 100, 12]);
        frame[46..49].copy_from_slice(&[0x01, 0x02, 0x03]);
        frame[76..80].copy_from_slice(&[10, 244, 1, 10]);
        frame[80..84].copy_from_slice(&[10, 244, 2, 10]);
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&128u32.to_le_bytes());
        pcap.extend_from_slice(&1u32.to_le_bytes());
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&frame);
        let v = parse_pcap(&pcap).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].vni, 0x010203);
        assert_eq!(v[0].inner_dst, Ipv4Addr::new(10, 244, 2, 10));
        assert!(parse_pcap(&pcap[..10]).is_err());
    }

    /// tcpdump's records: snapped to 128 bytes of a longer packet; here big-endian, with a last
    /// record that the file's end cuts short.
    #[test]
    fn pcap_reader_takes_snapped_records() {
        let mut frame = vec![0u8; 128];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[23] = 17;
        frame[46..49].copy_from_slice(&[0, 0, 7]);
        frame[76..80].copy_from_slice(&[10, 244, 1, 10]);
        let mut pcap = vec![0xa1, 0xb2, 0xc3, 0xd4, 0, 2, 0, 4];
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&128u32.to_be_bytes());
        pcap.extend_from_slice(&1u32.to_be_bytes());
        for _ in 0..2 {
            pcap.extend_from_slice(&[0; 8]);
            pcap.extend_from_slice(&128u32.to_be_bytes());
            pcap.extend_from_slice(&1500u32.to_be_bytes());
            pcap.extend_from_slice(&frame);
        }
        pcap.truncate(pcap.len() - 20);
        let v = parse_pcap(&pcap).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].vni, 7);
        assert_eq!(v[0].inner_src, Ipv4Addr::new(10, 244, 1, 10));
        let mut bad = pcap.clone();
        bad[0] = 0;
        assert!(parse_pcap(&bad).is_err());
    }
}
