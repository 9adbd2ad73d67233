//! Stage `parse`: checks Ethernet and IPv4 headers with etherparse (the header checksum too)
//! and classifies the frame: ARP, IPv4, or (on the uplink) VXLAN to our port.

use etherparse::err::ipv4::{HeaderError, HeaderSliceError};
use etherparse::{Ethernet2HeaderSlice, Ipv4HeaderSlice};

use super::{for_each_pending, Batch, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::{IfRole, Tables};
use crate::wire::{ipv4_checksum_ok, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETH_HLEN, IPV4_MIN_HLEN};

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, _c: &mut BatchCounts) {
    for_each_pending(
        batch,
        frames,
        |k| k == Kind::Raw,
        |d, buf| {
            d.verdict = match classify(buf, d.tail as usize) {
                Verdict::Continue(Kind::Ipv4 { l3 }) if is_vxlan(buf, t, d.in_slot) => {
                    Verdict::Continue(Kind::Vxlan { l3 })
                }
                v => v,
            };
        },
    );
}

/// UDP to our VXLAN port, arrived on the uplink.
fn is_vxlan(buf: &[u8], t: &Tables, in_slot: u16) -> bool {
    let udp = ETH_HLEN + IPV4_MIN_HLEN;
    t.iface(in_slot).is_some_and(|i| i.role == IfRole::Uplink)
        && buf[ETH_HLEN + 9] == 17
        && buf.len() >= udp + 4
        && u16::from_be_bytes([buf[udp + 2], buf[udp + 3]]) == t.vxlan_port
}

/// The verdict for one raw frame: `buf` is its head (all of it for a packet in one frame),
/// `tail` the bytes of its continuation frames (the IPv4 total length is checked against both).
pub(crate) fn classify(buf: &[u8], tail: usize) -> Verdict {
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(buf) else {
        return Verdict::Drop(DropReason::TruncatedEthernet);
    };
    match eth.ether_type().0 {
        ETHERTYPE_ARP => Verdict::Continue(Kind::Arp),
        ETHERTYPE_IPV4 => ipv4(&buf[ETH_HLEN..], tail),
        _ => Verdict::Drop(DropReason::UnsupportedEthertype),
    }
}

fn ipv4(l3: &[u8], tail: usize) -> Verdict {
    let ip = match Ipv4HeaderSlice::from_slice(l3) {
        Ok(ip) => ip,
        Err(HeaderSliceError::Len(_)) => return Verdict::Drop(DropReason::TruncatedIp),
        Err(HeaderSliceError::Content(HeaderError::UnexpectedVersion { .. })) => {
            return Verdict::Drop(DropReason::BadIpVersion)
        }
        Err(HeaderSliceError::Content(HeaderError::HeaderLengthSmallerThanHeader { .. })) => {
            return Verdict::Drop(DropReason::BadIhl)
        }
    };
    if usize::from(ip.ihl()) * 4 != IPV4_MIN_HLEN {
        return Verdict::Drop(DropReason::IpOptions);
    }
    let total = usize::from(ip.total_len());
    if total < IPV4_MIN_HLEN || total > l3.len() + tail {
        return Verdict::Drop(DropReason::BadTotalLength);
    }
    if !ipv4_checksum_ok(ip.slice()) {
        return Verdict::Drop(DropReason::BadIpChecksum);
    }
    Verdict::Continue(Kind::Ipv4 {
        l3: ETH_HLEN as u16,
    })
}
