//! Multi-buffer packets (a jumbo frame in a chain of UMEM frames): every stage works on the
//! head's bytes and checks lengths against the whole packet.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use super::*;
use crate::fixtures::{
    fix_ip_checksum, two_pods, udp_from_a, vxlan_from_c, IDS, POD_A, POD_B, POD_C, REMOTE, UPLINK,
};
use crate::tables::Tables;
use crate::wire::VXLAN_OVERHEAD;

const FS: usize = 4096;
const HEADROOM: usize = 256;
/// Bytes a received frame holds (a chunk less the kernel's headroom).
const FRAME: usize = FS - HEADROOM;

/// The packet `f` as the kernel delivers it with XDP_USE_SG: a head of `head` bytes, then
/// continuation frames of up to [`FRAME`] bytes, each in its own chunk. Runs it through the
/// pipeline; returns its descriptor, continuation frames, memory and counts.
fn run_chain(
    t: &Tables,
    slot: u16,
    f: &[u8],
    head: usize,
) -> (Desc, Vec<(u64, u32)>, VecFrames, BatchCounts) {
    let mut mem = VecFrames::new(16, FS);
    let addr = HEADROOM as u64;
    mem.write(addr, &f[..head]);
    let mut chain = Chain::EMPTY;
    for (i, part) in f[head..].chunks(FRAME).enumerate() {
        let a = ((i + 1) * FS + HEADROOM) as u64;
        mem.write(a, part);
        assert!(chain.push(a, part.len() as u32));
    }
    let mut b = Batch::default();
    assert!(b.push_chain(Desc::new(addr, head as u32, slot), &chain));
    assert_eq!(b.descs()[0].total() as usize, f.len());
    let mut c = BatchCounts::default();
    run(&mut b, &mut mem, t, &mut c);
    (b.descs()[0], b.chain(0).to_vec(), mem, c)
}

/// The packet as it leaves: the head's bytes, then those of the continuations still attached.
fn bytes_out(d: &Desc, chain: &[(u64, u32)], mem: &mut VecFrames) -> Vec<u8> {
    let mut out = mem.frame(d.addr, d.len).unwrap().to_vec();
    if d.frags > 0 {
        for &(a, l) in chain {
            out.extend_from_slice(mem.frame(a, l).unwrap());
        }
    }
    out
}

fn jumbo_udp(dst: std::net::Ipv4Addr, df: bool) -> Vec<u8> {
    let payload: Vec<u8> = (0..8972u32).map(|i| (i * 7) as u8).collect();
    let mut f = udp_from_a(dst, 64, &payload);
    if df {
        f[14 + 6] |= 0x40;
    } else {
        f[14 + 6] &= !0x40;
    }
    fix_ip_checksum(&mut f, 14);
    assert_eq!(f.len(), 9014);
    f
}

fn jumbo_mtu() -> Tables {
    let mut t = two_pods();
    if let Some(l) = t.local.as_mut() {
        l.mtu = 9050;
    }
    t
}

#[test]
fn a_jumbo_packet_between_local_pods_is_forwarded_whole() {
    let f = jumbo_udp(POD_B.0, true);
    let (d, chain, mut mem, c) = run_chain(&two_pods(), POD_A.2, &f, FRAME);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    assert_eq!(c.drops.iter().sum::<u64>(), 0);
    assert_eq!((d.frags, d.total()), (2, 9014));
    let out = bytes_out(&d, &chain, &mut mem);
    assert_eq!(out.len(), f.len());
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    assert_eq!(ip.header().ttl(), 63);
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!("not udp")
    };
    assert_eq!(
        udp.payload(),
        &f[42..],
        "the payload across every frame, unchanged"
    );
}

#[test]
fn a_chain_shorter_than_its_ip_total_length_is_a_bad_total_length() {
    let f = jumbo_udp(POD_B.0, true);
    // The last 100 bytes never arrived.
    let (d, ..) = run_chain(&two_pods(), POD_A.2, &f[..f.len() - 100], FRAME);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::BadTotalLength));
}

#[test]
fn a_jumbo_packet_to_another_node_gets_outer_lengths_over_the_whole_chain() {
    let f = jumbo_udp(POD_C, true);
    let (d, chain, mut mem, _) = run_chain(&jumbo_mtu(), POD_A.2, &f, FRAME);
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    assert_eq!(
        d.len as usize,
        FRAME + VXLAN_OVERHEAD,
        "the outer headers go in front of the head"
    );
    let out = bytes_out(&d, &chain, &mut mem);
    assert_eq!(out.len(), f.len() + VXLAN_OVERHEAD);
    assert_eq!(&out[0..6], &REMOTE.1);
    let outer_ip = u16::from_be_bytes([out[16], out[17]]) as usize;
    let outer_udp = u16::from_be_bytes([out[38], out[39]]) as usize;
    assert_eq!(outer_ip, out.len() - 14);
    assert_eq!(outer_udp, out.len() - 34);
    assert_eq!(&out[VXLAN_OVERHEAD + 42..], &f[42..]);
}

#[test]
fn a_jumbo_packet_over_the_uplink_mtu_is_answered_alone_or_dropped() {
    // Uplink MTU 1500: with DF, "fragmentation needed", built in the head, which goes alone.
    let (d, _, mut mem, c) = run_chain(&two_pods(), POD_A.2, &jumbo_udp(POD_C, true), FRAME);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(c.drops[DropReason::FragNeeded as usize], 1);
    assert_eq!(
        (d.frags, d.tail),
        (0, 0),
        "the continuations are not part of the answer"
    );
    let out = mem.frame(d.addr, d.len).unwrap().to_vec();
    assert_eq!((out[34], out[35]), (3, 4));
    assert_eq!(u16::from_be_bytes([out[40], out[41]]), 1450);
    // Without DF: a counted drop.
    let (d, ..) = run_chain(&two_pods(), POD_A.2, &jumbo_udp(POD_C, false), FRAME);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::TooBigNoDf));
}

#[test]
fn a_jumbo_vxlan_packet_loses_its_outer_headers_from_the_head_only() {
    let payload: Vec<u8> = (0..8950u32).map(|i| (i * 13) as u8).collect();
    let f = vxlan_from_c(POD_A.0, IDS[2], &payload);
    let (d, chain, mut mem, c) = run_chain(&jumbo_mtu(), UPLINK.0, &f, FRAME);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(c.drops.iter().sum::<u64>(), 0);
    assert_eq!(d.addr, (HEADROOM + VXLAN_OVERHEAD) as u64);
    assert_eq!(d.len as usize, FRAME - VXLAN_OVERHEAD);
    assert_eq!(d.total() as usize, f.len() - VXLAN_OVERHEAD);
    let out = bytes_out(&d, &chain, &mut mem);
    assert_eq!(&out[0..6], &POD_A.1);
    assert_eq!(
        &out[42..],
        &payload[..],
        "the inner payload across every frame"
    );
}
