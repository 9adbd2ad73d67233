use std::net::Ipv4Addr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress};

use super::*;
use crate::fixtures::{arp_request_from_a, two_pods, udp_from_a, GATEWAY, POD_A, POD_B};
use crate::wire::ipv4_header_checksum;

const FS: usize = 2048;

/// Runs frames through the pipeline; returns verdicts, drop counts and the frame memory.
fn run_frames(frames_in: &[Vec<u8>]) -> (Vec<Verdict>, BatchCounts, VecFrames, Vec<Desc>) {
    let t = two_pods();
    let mut mem = VecFrames::new(BATCH, FS);
    let mut b = Batch::default();
    for (i, f) in frames_in.iter().enumerate() {
        let addr = (i * FS) as u64;
        mem.write(addr, f);
        assert!(b.push(Desc::new(addr, f.len() as u32, POD_A.2)));
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
    assert_eq!(STAGES, &["parse", "arp", "ipv4_forward"]);
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
fn ttl_expiry_and_unknown_destination_are_counted_drops() {
    let (v, c, ..) = run_frames(&[
        udp_from_a(POD_B.0, 1, b"x"),
        udp_from_a(Ipv4Addr::new(10, 9, 9, 9), 64, b"x"),
    ]);
    assert_eq!(
        v,
        vec![
            Verdict::Drop(DropReason::TtlExceeded),
            Verdict::Drop(DropReason::UnknownDestination)
        ]
    );
    assert_eq!(c.drops[DropReason::TtlExceeded as usize], 1);
    assert_eq!(c.drops[DropReason::UnknownDestination as usize], 1);
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
