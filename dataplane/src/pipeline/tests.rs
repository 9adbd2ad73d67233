use std::net::Ipv4Addr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress};

use super::*;
use crate::fixtures::{
    arp_request_from_a, fix_ip_checksum, tcp, two_pods, two_pods_with_ct, udp_from_a, vxlan_from_c,
    GATEWAY, IDS, POD_A, POD_B, POD_C, REMOTE, UPLINK,
};
use crate::tables::Tables;
use crate::wire::{ipv4_header_checksum, VxlanPacket, VXLAN_OVERHEAD};

const FS: usize = 2048;
/// Where a received frame starts in its chunk (the kernel's XDP headroom).
const HEADROOM: usize = 256;

/// Runs frames through the pipeline with tables `t`, each on its own slot.
fn run_with(t: &Tables, frames_in: &[(u16, Vec<u8>)]) -> Vec<Desc> {
    let mut mem = VecFrames::new(BATCH, FS);
    let mut b = Batch::default();
    for (i, (slot, f)) in frames_in.iter().enumerate() {
        let addr = (i * FS + HEADROOM) as u64;
        mem.write(addr, f);
        assert!(b.push(Desc::new(addr, f.len() as u32, *slot)));
    }
    let mut c = BatchCounts::default();
    run(&mut b, &mut mem, t, &mut c);
    b.descs().to_vec()
}

/// Runs frames (all arriving on pod A's veth) through the pipeline.
fn run_frames(frames_in: &[Vec<u8>]) -> (Vec<Verdict>, BatchCounts, VecFrames, Vec<Desc>) {
    run_on(POD_A.2, frames_in)
}

/// Runs frames arriving on `slot`; returns verdicts, drop counts, frame memory and descriptors.
fn run_on(slot: u16, frames_in: &[Vec<u8>]) -> (Vec<Verdict>, BatchCounts, VecFrames, Vec<Desc>) {
    let t = two_pods();
    let mut mem = VecFrames::new(BATCH, FS);
    let mut b = Batch::default();
    for (i, f) in frames_in.iter().enumerate() {
        let addr = (i * FS + HEADROOM) as u64;
        mem.write(addr, f);
        assert!(b.push(Desc::new(addr, f.len() as u32, slot)));
    }
    let mut c = BatchCounts::default();
    run(&mut b, &mut mem, &t, &mut c);
    (
        b.descs().iter().map(|d| d.verdict).collect(),
        c,
        mem,
        b.descs().to_vec(),
    )
}

#[test]
fn stages_are_listed_in_order() {
    assert_eq!(
        STAGES,
        &[
            "parse",
            "vxlan_decap",
            "arp",
            "fragments",
            "service",
            "dns_query",
            "masquerade",
            "ipv4_forward",
            "conntrack",
            "dns_learn",
            "flows",
            "vxlan_encap"
        ]
    );
}

#[test]
fn forwards_to_local_pod_with_rewritten_macs_and_ttl() {
    let f = udp_from_a(POD_B.0, 64, b"hello");
    let (v, c, mut mem, d) = run_frames(&[f]);
    assert_eq!(v, vec![Verdict::Tx { slot: POD_B.2 }]);
    assert_eq!(c.drops.iter().sum::<u64>(), 0);
    let out = mem.frame(d[0].addr, d[0].len).unwrap().to_vec();
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let eth = p.link.unwrap().to_header().unwrap();
    let eth = eth.ethernet2().unwrap();
    assert_eq!(eth.destination, POD_B.1);
    assert_eq!(eth.source, POD_B.3);
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    assert_eq!(ip.header().ttl(), 63);
    assert_eq!(
        ip.header().header_checksum(),
        ipv4_header_checksum(ip.header().slice())
    );
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!("not udp")
    };
    assert_eq!(udp.payload(), b"hello");
}

#[test]
fn ttl_expiry_is_answered_with_time_exceeded_and_counted() {
    let sent = udp_from_a(POD_B.0, 1, b"x");
    let (v, c, mut mem, d) = run_frames(&[
        sent.clone(),
        udp_from_a(Ipv4Addr::new(10, 9, 9, 9), 64, b"x"),
    ]);
    assert_eq!(
        v,
        vec![
            Verdict::Tx { slot: POD_A.2 },
            Verdict::Drop(DropReason::UnknownDestination)
        ]
    );
    assert_eq!(c.drops[DropReason::TtlExceeded as usize], 1);
    assert_eq!(c.drops[DropReason::UnknownDestination as usize], 1);
    let out = mem.frame(d[0].addr, d[0].len).unwrap().to_vec();
    assert_eq!(&out[0..6], &POD_A.1, "back to the pod");
    assert_eq!(&out[6..12], &POD_A.3, "from its gateway's MAC");
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    assert_eq!(ip.header().source_addr(), GATEWAY, "from the pod's gateway");
    assert_eq!(ip.header().destination_addr(), POD_A.0);
    assert_eq!((out[34], out[35]), (11, 0), "time exceeded in transit");
    assert_eq!(&out[42..62], &sent[14..34], "quotes the packet as sent");
    assert_eq!(d[0].ct, CtVerdict::Related, "not tracked as a flow");
    // A packet from the tunnel is not answered, only counted.
    let late = vxlan_from_c(POD_A.0, IDS[2], b"x");
    let mut late = late;
    late[VXLAN_OVERHEAD + 14 + 8] = 1;
    fix_ip_checksum(&mut late, VXLAN_OVERHEAD + 14);
    let (v, c, ..) = run_on(UPLINK.0, &[late]);
    assert_eq!(v, vec![Verdict::Drop(DropReason::TtlExceeded)]);
    assert_eq!(c.drops[DropReason::TtlExceeded as usize], 1);
}

#[test]
fn bad_ip_header_checksums_are_counted_drops() {
    let mut f = udp_from_a(POD_B.0, 64, b"x");
    f[14 + 10] ^= 0x5a;
    let (v, c, ..) = run_frames(&[f]);
    assert_eq!(v, vec![Verdict::Drop(DropReason::BadIpChecksum)]);
    assert_eq!(c.drops[DropReason::BadIpChecksum as usize], 1);
}

#[test]
fn answers_arp_for_the_gateway_only() {
    let (v, c, mut mem, d) =
        run_frames(&[arp_request_from_a(GATEWAY), arp_request_from_a(POD_B.0)]);
    assert_eq!(v[0], Verdict::Tx { slot: POD_A.2 });
    assert_eq!(v[1], Verdict::Drop(DropReason::ArpNotForGateway));
    assert_eq!(c.drops[DropReason::ArpNotForGateway as usize], 1);
    let out = mem.frame(d[0].addr, d[0].len).unwrap().to_vec();
    assert_eq!(&out[0..6], &POD_A.1);
    assert_eq!(&out[6..12], &POD_A.3);
    let repr = ArpRepr::parse(&ArpPacket::new_checked(&out[14..]).unwrap()).unwrap();
    assert_eq!(
        repr,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(POD_A.3),
            source_protocol_addr: GATEWAY,
            target_hardware_addr: EthernetAddress(POD_A.1),
            target_protocol_addr: POD_A.0,
        }
    );
}

#[test]
fn malformed_frames_get_their_reasons() {
    let good = udp_from_a(POD_B.0, 64, b"payload");
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    let mut options = good.clone();
    options[14] = 0x46;
    let mut too_long = good.clone();
    too_long[16..18].copy_from_slice(&1400u16.to_be_bytes());
    let mut short_total = good.clone();
    short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
    let mut v6 = good.clone();
    v6[14] = 0x65;
    let mut other_type = good.clone();
    other_type[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let cases = [
        (good[..10].to_vec(), DropReason::TruncatedEthernet),
        (good[..14 + 12].to_vec(), DropReason::TruncatedIp),
        (bad_ihl, DropReason::BadIhl),
        (options, DropReason::IpOptions),
        (too_long, DropReason::BadTotalLength),
        (short_total, DropReason::BadTotalLength),
        (v6, DropReason::BadIpVersion),
        (other_type, DropReason::UnsupportedEthertype),
        (
            arp_request_from_a(GATEWAY)[..20].to_vec(),
            DropReason::MalformedArp,
        ),
    ];
    let frames: Vec<Vec<u8>> = cases.iter().map(|(f, _)| f.clone()).collect();
    let (v, c, ..) = run_frames(&frames);
    for ((_, want), got) in cases.iter().zip(&v) {
        assert_eq!(*got, Verdict::Drop(*want));
    }
    assert_eq!(c.drops.iter().sum::<u64>(), cases.len() as u64);
}

#[test]
fn pod_on_another_node_is_encapsulated_with_its_identity_in_the_vni() {
    let f = udp_from_a(POD_C, 64, b"over the tunnel");
    let (v, c, mut mem, d) = run_frames(std::slice::from_ref(&f));
    assert_eq!(v, vec![Verdict::Tx { slot: UPLINK.0 }]);
    assert_eq!(c.drops.iter().sum::<u64>(), 0);
    assert_eq!(d[0].len as usize, f.len() + VXLAN_OVERHEAD);
    assert_eq!(
        d[0].addr as usize,
        HEADROOM - VXLAN_OVERHEAD,
        "outer headers went into the headroom"
    );
    let out = mem.frame(d[0].addr, d[0].len).unwrap().to_vec();
    let v = VxlanPacket::new_checked(&out).unwrap();
    assert_eq!(v.vni(), IDS[0]);
    assert_eq!(v.src_ip(), u32::from(UPLINK.2));
    assert_eq!(&out[0..6], &REMOTE.1);
    assert_eq!(&out[6..12], &UPLINK.1);
    assert_eq!(&out[30..34], &REMOTE.0.octets());
    assert!(u16::from_be_bytes([out[34], out[35]]) >= 49152);
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8472);
    // Inner packet intact but for its TTL.
    assert_eq!(out[VXLAN_OVERHEAD + 14 + 8], 63);
    assert_eq!(&out[VXLAN_OVERHEAD + 42..], b"over the tunnel");
}

#[test]
fn vxlan_from_a_known_node_is_decapsulated_and_delivered() {
    let (v, c, mut mem, d) = run_on(UPLINK.0, &[vxlan_from_c(POD_A.0, IDS[2], b"hi a")]);
    assert_eq!(v, vec![Verdict::Tx { slot: POD_A.2 }], "{:?}", c.drops);
    assert_eq!(d[0].src_identity, IDS[2]);
    assert!(d[0].from_tunnel);
    let out = mem.frame(d[0].addr, d[0].len).unwrap().to_vec();
    assert_eq!(&out[0..6], &POD_A.1);
    assert_eq!(&out[6..12], &POD_A.3);
    assert_eq!(out[14 + 8], 62, "TTL decremented on delivery");
    assert_eq!(&out[42..], b"hi a");
}

/// Cuts a VXLAN packet to `n` bytes, with outer IPv4 and UDP lengths saying so.
fn cut_outer(f: &[u8], n: usize) -> Vec<u8> {
    let mut f = f[..n].to_vec();
    f[16..18].copy_from_slice(&((n - 14) as u16).to_be_bytes());
    f[38..40].copy_from_slice(&((n - 34) as u16).to_be_bytes());
    fix_ip_checksum(&mut f, 14);
    f
}

#[test]
fn bad_vxlan_is_dropped_with_its_reason() {
    let good = vxlan_from_c(POD_A.0, IDS[2], b"payload!");
    let mut flags = good.clone();
    flags[42] = 0x04; // reserved bits without the I flag
    let mut unknown_node = good.clone();
    unknown_node[29] = 99;
    fix_ip_checksum(&mut unknown_node, 14);
    let mut not_for_us = good.clone();
    not_for_us[33] = 77;
    fix_ip_checksum(&mut not_for_us, 14);
    let mut bad_outer_sum = good.clone();
    bad_outer_sum[14 + 8] = 3;
    let mut bad_inner_sum = good.clone();
    bad_inner_sum[VXLAN_OVERHEAD + 14 + 8] = 3;
    let mut ce_over_not_ect = good.clone();
    ce_over_not_ect[14 + 1] = 3;
    fix_ip_checksum(&mut ce_over_not_ect, 14);
    let unknown_vni = vxlan_from_c(POD_A.0, 424242, b"payload!");
    let mut inner_len_lies = good.clone();
    inner_len_lies[38..40].copy_from_slice(&2000u16.to_be_bytes());
    let not_local = vxlan_from_c(POD_B.0, IDS[2], b"x");
    let mut to_c = vxlan_from_c(POD_C, IDS[2], b"x");
    to_c[VXLAN_OVERHEAD + 14 + 8] = 64;
    fix_ip_checksum(&mut to_c, VXLAN_OVERHEAD + 14);
    let cases = [
        (not_for_us, DropReason::VxlanNotForNode),
        (bad_outer_sum, DropReason::BadIpChecksum),
        (bad_inner_sum, DropReason::BadIpChecksum),
        (ce_over_not_ect, DropReason::VxlanEcn),
        (cut_outer(&good, 46), DropReason::VxlanMalformed),
        (flags, DropReason::VxlanMalformed),
        (
            cut_outer(&good, VXLAN_OVERHEAD + 20),
            DropReason::VxlanTruncatedInner,
        ),
        (inner_len_lies, DropReason::VxlanTruncatedInner),
        (unknown_node, DropReason::VxlanUnknownNode),
        (unknown_vni, DropReason::VxlanUnknownIdentity),
        (to_c, DropReason::UnknownDestination),
    ];
    let frames: Vec<Vec<u8>> = cases.iter().map(|(f, _)| f.clone()).collect();
    let (v, c, ..) = run_on(UPLINK.0, &frames);
    for ((_, want), got) in cases.iter().zip(&v) {
        assert_eq!(*got, Verdict::Drop(*want));
    }
    assert_eq!(c.drops.iter().sum::<u64>(), cases.len() as u64);
    let (v, ..) = run_on(UPLINK.0, &[not_local]);
    assert_eq!(v[0], Verdict::Tx { slot: POD_B.2 });
    // Reserved flag bits are ignored (RFC 7348).
    let mut reserved = vxlan_from_c(POD_B.0, IDS[2], b"x");
    reserved[42] = 0x0c;
    reserved[45] = 0xff;
    let (v, ..) = run_on(UPLINK.0, &[reserved]);
    assert_eq!(v[0], Verdict::Tx { slot: POD_B.2 });
}

/// RFC 6040: outer Congestion Experienced marks an ECN-capable inner packet; DSCP is kept.
#[test]
fn vxlan_decap_folds_outer_ecn_into_the_inner_packet() {
    let mut inner = crate::fixtures::udp_from_a(POD_A.0, 64, b"ecn");
    inner[14 + 1] = 0xb8 | 2; // DSCP EF, ECT(0)
    fix_ip_checksum(&mut inner, 14);
    let mut f = crate::fixtures::vxlan_from_remote(&inner, IDS[2]);
    f[14 + 1] = 3; // CE outside
    fix_ip_checksum(&mut f, 14);
    let (v, _, mut mem, d) = run_on(UPLINK.0, &[f]);
    assert!(matches!(v[0], Verdict::Tx { .. }), "{v:?}");
    let out = mem.frame(d[0].addr, d[0].len).unwrap();
    assert_eq!(out[14 + 1], 0xb8 | 3, "CE marked, DSCP kept");
    assert!(crate::wire::ipv4_checksum_ok(&out[14..34]));
}

#[test]
fn too_big_with_df_gets_icmp_fragmentation_needed() {
    let mut f = udp_from_a(POD_C, 64, &vec![0u8; 1480]);
    f[14 + 6] |= 0x40; // DF
    fix_ip_checksum(&mut f, 14);
    let ip = f[14..34].to_vec();
    let (v, c, mut mem, d) = run_frames(&[f.clone()]);
    assert_eq!(v, vec![Verdict::Tx { slot: POD_A.2 }]);
    assert_eq!(c.drops[DropReason::FragNeeded as usize], 1);
    let out = mem.frame(d[0].addr, d[0].len).unwrap().to_vec();
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(NetSlice::Ipv4(ipv4)) = p.net else {
        panic!("not ipv4")
    };
    assert_eq!(ipv4.header().source_addr(), GATEWAY);
    assert_eq!(ipv4.header().destination_addr(), POD_A.0);
    let icmp = &out[34..];
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 4),
        "destination unreachable / fragmentation needed"
    );
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450);
    let mut ip_after_ttl = ip.clone();
    ip_after_ttl[8] -= 1; // the forward stage had decremented it
    fix_ip_checksum(&mut ip_after_ttl, 0);
    assert_eq!(&icmp[8..28], &ip_after_ttl[..20]);
    assert_eq!(&icmp[8 + 12..8 + 20], &ip[12..20]);
    assert!(smoltcp::wire::Icmpv4Packet::new_checked(icmp)
        .unwrap()
        .verify_checksum());

    // Without DF: dropped, not fragmented.
    let mut big = udp_from_a(POD_C, 64, &vec![0u8; 1480]);
    big[14 + 6] &= !0x40;
    fix_ip_checksum(&mut big, 14);
    let (v, c, ..) = run_frames(&[big]);
    assert_eq!(v, vec![Verdict::Drop(DropReason::TooBigNoDf)]);
    assert_eq!(c.drops[DropReason::TooBigNoDf as usize], 1);
    // Just fitting: encapsulated.
    let mut fits = udp_from_a(POD_C, 64, &vec![0u8; 1450 - 28]);
    fits[14 + 6] |= 0x40;
    fix_ip_checksum(&mut fits, 14);
    let (v, ..) = run_frames(&[fits]);
    assert_eq!(v, vec![Verdict::Tx { slot: UPLINK.0 }]);
}

#[test]
fn a_pod_cannot_send_from_another_address() {
    let mut f = udp_from_a(POD_B.0, 64, b"spoof");
    f[14 + 12..14 + 16].copy_from_slice(&POD_B.0.octets()); // claims to be B, arrives on A's veth
    fix_ip_checksum(&mut f, 14);
    let (v, ..) = run_frames(&[f]);
    assert_eq!(v, vec![Verdict::Drop(DropReason::InvalidSource)]);
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

#[test]
fn conntrack_follows_a_handshake_and_replies_skip_policy() {
    let (t, _) = two_pods_with_ct(100, 100);
    let a = (POD_A.0, POD_A.1);
    let to_b = (POD_B.0, POD_A.3);
    let to_a = (POD_A.0, POD_B.1);
    let steps = [
        (POD_A.2, tcp(a, to_b, 40000, 80, SYN), CtVerdict::New),
        (
            POD_B.2,
            tcp((POD_B.0, POD_B.1), to_a, 80, 40000, SYN | ACK),
            CtVerdict::Reply,
        ),
        (
            POD_A.2,
            tcp(a, to_b, 40000, 80, ACK),
            CtVerdict::Established,
        ),
        (
            POD_B.2,
            tcp((POD_B.0, POD_B.1), to_a, 80, 40000, ACK),
            CtVerdict::Reply,
        ),
    ];
    for (slot, f, want) in steps {
        let d = run_with(&t, &[(slot, f)]);
        assert!(
            matches!(d[0].verdict, Verdict::Tx { .. }),
            "{:?}",
            d[0].verdict
        );
        assert_eq!(d[0].ct, want);
    }
    let ct = t.ct.as_ref().unwrap();
    let e = ct.dump(10);
    assert_eq!(e.len(), 1, "one entry per connection");
    assert_eq!(e[0].state, Some(vireo_conntrack::State::Established));
    assert!(e[0].reply_seen);
    assert_eq!(e[0].identity, IDS[0]);
    assert_eq!(e[0].packets, 4);
}

#[test]
fn a_reply_from_the_tunnel_matches_the_egress_flow() {
    let (t, _) = two_pods_with_ct(100, 100);
    let d = run_with(
        &t,
        &[(
            POD_A.2,
            tcp((POD_A.0, POD_A.1), (POD_C, POD_A.3), 40000, 443, SYN),
        )],
    );
    assert_eq!(
        (d[0].verdict, d[0].ct),
        (Verdict::Tx { slot: UPLINK.0 }, CtVerdict::New)
    );
    // C answers with SYN-ACK through the tunnel.
    let inner = tcp(
        (POD_C, REMOTE.1),
        (POD_A.0, UPLINK.1),
        443,
        40000,
        SYN | ACK,
    );
    let f = crate::fixtures::vxlan_from_remote(&inner, IDS[2]);
    let d = run_with(&t, &[(UPLINK.0, f)]);
    assert_eq!(
        (d[0].verdict, d[0].ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Reply)
    );
}

#[test]
fn nonsense_tcp_flags_are_dropped_untracked() {
    let (t, _) = two_pods_with_ct(100, 100);
    let a = (POD_A.0, POD_A.1);
    let to_b = (POD_B.0, POD_A.3);
    for f in [SYN | FIN, 0, FIN] {
        let d = run_with(&t, &[(POD_A.2, tcp(a, to_b, 40001, 80, f))]);
        assert_eq!(
            d[0].verdict,
            Verdict::Drop(DropReason::TcpInvalidFlags),
            "flags {f:#x}"
        );
    }
    assert_eq!(t.ct.as_ref().unwrap().counts(), (0, 0));
}

#[test]
fn a_full_table_drops_new_flows_and_spares_known_ones() {
    let (t, clock) = two_pods_with_ct(8, 8);
    let a = (POD_A.0, POD_A.1);
    let to_b = (POD_B.0, POD_A.3);
    let est = run_with(&t, &[(POD_A.2, tcp(a, to_b, 1, 80, ACK))]);
    assert_eq!(est[0].ct, CtVerdict::New);
    // A SYN flood fills the table to its limit and no further.
    let flood: Vec<(u16, Vec<u8>)> = (2..40)
        .map(|p| (POD_A.2, tcp(a, to_b, p, 80, SYN)))
        .collect();
    let d = run_with(&t, &flood);
    let full = d
        .iter()
        .filter(|d| d.verdict == Verdict::Drop(DropReason::CtFull))
        .count();
    assert_eq!(full, 38 - 7);
    assert_eq!(t.ct.as_ref().unwrap().counts().0, 8);
    // The established flow goes on.
    let d = run_with(&t, &[(POD_A.2, tcp(a, to_b, 1, 80, ACK))]);
    assert_eq!(
        (d[0].verdict, d[0].ct),
        (Verdict::Tx { slot: POD_B.2 }, CtVerdict::Established)
    );
    // Once the SYNs have expired (60 s), new flows are admitted again.
    clock.advance(61);
    let d = run_with(&t, &[(POD_A.2, tcp(a, to_b, 100, 80, SYN))]);
    assert_eq!(d[0].ct, CtVerdict::New, "{:?}", d[0].verdict);
}

proptest::proptest! {
    /// Whatever bytes arrive, the pipeline gives every frame a final verdict and never panics.
    #[test]
    fn arbitrary_bytes_never_panic(frames in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..200), 1..BATCH)) {
        let (v, ..) = run_frames(&frames);
        for verdict in v {
            proptest::prop_assert!(!matches!(verdict, Verdict::Continue(_)));
        }
    }

    /// Valid headers with mutated bytes: still a verdict, never a panic.
    #[test]
    fn mutated_packets_never_panic(pos in 0usize..60, val: u8, cut in 0usize..60) {
        let mut f = udp_from_a(POD_B.0, 64, &[7u8; 20]);
        f[pos] = val;
        f.truncate(f.len() - cut.min(f.len()));
        let (v, ..) = run_frames(&[f]);
        proptest::prop_assert!(!matches!(v[0], Verdict::Continue(_)));
    }
}
