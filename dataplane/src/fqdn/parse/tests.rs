//! DNS parsing: what responses teach, CNAME chains, and malformed messages that must never
//! panic.

use std::net::Ipv4Addr;

use hickory_proto::op::ResponseCode;
use proptest::prelude::*;
use vireo_policy::FqdnSelector;

use super::*;
use crate::fqdn::dns_fixtures::{error_response, query, response};

const IP1: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const IP2: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 35);

fn sel(p: &str) -> Vec<FqdnSelector> {
    vec![FqdnSelector::pattern(p).unwrap()]
}

fn learned(msg: &[u8], sels: &[FqdnSelector]) -> Result<Vec<(String, Ipv4Addr, u32)>, DnsError> {
    let mut out = Vec::new();
    response_answers(msg, sels, &mut out)?;
    let mut v: Vec<_> = out.into_iter().map(|a| (a.name, a.ip, a.ttl)).collect();
    v.sort();
    Ok(v)
}

#[test]
fn a_records_of_matching_names_are_learned_with_their_ttl() {
    let m = response(
        1,
        "WWW.Example.com.",
        &[],
        &[("www.example.com.", IP1, 30), ("www.example.com.", IP2, 60)],
    );
    let got = learned(&m, &sel("*.example.com")).unwrap();
    assert_eq!(
        got,
        vec![
            ("www.example.com".into(), IP1, 30),
            ("www.example.com".into(), IP2, 60)
        ]
    );
    assert!(learned(&m, &sel("*.example.org")).unwrap().is_empty());
}

#[test]
fn cname_chains_teach_every_name_on_the_way() {
    // www.example.com → edge.cdn.net → e1.cdn.net (A)
    let m = response(
        2,
        "www.example.com",
        &[
            ("www.example.com", "edge.cdn.net"),
            ("edge.cdn.net", "e1.cdn.net"),
        ],
        &[("e1.cdn.net", IP1, 20)],
    );
    let all = learned(&m, &sel("*")).unwrap();
    let names: Vec<&str> = all.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["e1.cdn.net", "edge.cdn.net", "www.example.com"]);
    // Only the names a selector matches.
    let only = learned(&m, &[FqdnSelector::name("www.example.com").unwrap()]).unwrap();
    assert_eq!(only, vec![("www.example.com".into(), IP1, 20)]);
    // A CNAME loop ends.
    let looped = response(
        3,
        "a.x",
        &[("a.x", "b.x"), ("b.x", "a.x")],
        &[("b.x", IP2, 5)],
    );
    assert_eq!(learned(&looped, &sel("*")).unwrap().len(), 2);
}

#[test]
fn errors_queries_and_other_sections_teach_nothing() {
    let nx = error_response(4, "www.example.com", ResponseCode::NXDomain);
    assert_eq!(learned(&nx, &sel("*")), Ok(Vec::new()));
    assert_eq!(
        learned(&query(5, "www.example.com"), &sel("*")),
        Err(DnsError::Unexpected)
    );
    assert_eq!(
        query_name(&query(5, "WWW.example.com.")),
        Ok("www.example.com".into())
    );
    assert_eq!(
        query_name(&response(6, "x.y", &[], &[])),
        Err(DnsError::Unexpected)
    );
}

/// Truncated, pointer loops, oversized names, wrong counts, garbage: an error, never a panic,
/// never an answer.
#[test]
fn malformed_messages_are_errors_not_panics() {
    let good = response(7, "www.example.com", &[], &[("www.example.com", IP1, 30)]);
    for cut in 0..good.len() {
        let r = learned(&good[..cut], &sel("*"));
        assert!(r.is_err(), "cut at {cut}: {r:?}");
    }
    // A compression pointer pointing at itself (offset 12, the question's name).
    let mut lp = good[..12].to_vec();
    lp[4..6].copy_from_slice(&1u16.to_be_bytes()); // QDCOUNT 1
    lp[6..8].copy_from_slice(&0u16.to_be_bytes());
    lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(learned(&lp, &sel("*")), Err(DnsError::Malformed));
    assert_eq!(query_name(&lp), Err(DnsError::Malformed));
    // Two pointers pointing at each other.
    let mut lp2 = good[..12].to_vec();
    lp2[4..6].copy_from_slice(&1u16.to_be_bytes());
    lp2[6..8].copy_from_slice(&0u16.to_be_bytes());
    lp2.extend_from_slice(&[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(learned(&lp2, &sel("*")), Err(DnsError::Malformed));
    // A name longer than 255 bytes: 5 labels of 63.
    let mut long = good[..12].to_vec();
    long[4..6].copy_from_slice(&1u16.to_be_bytes());
    long[6..8].copy_from_slice(&0u16.to_be_bytes());
    for _ in 0..5 {
        long.push(63);
        long.extend_from_slice(&[b'a'; 63]);
    }
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(query_name(&long), Err(DnsError::Malformed));
    // Counts that promise more records than there are.
    let mut counts = good.clone();
    counts[6..8].copy_from_slice(&9u16.to_be_bytes());
    assert_eq!(learned(&counts, &sel("*")), Err(DnsError::Malformed));
    // A label length past the end.
    let mut label = good[..12].to_vec();
    label[4..6].copy_from_slice(&1u16.to_be_bytes());
    label.extend_from_slice(&[40, b'a', b'b']);
    assert!(query_name(&label).is_err());
}

#[test]
fn tcp_messages_need_their_whole_length() {
    let m = query(8, "a.b");
    let mut seg = (m.len() as u16).to_be_bytes().to_vec();
    seg.extend_from_slice(&m);
    assert_eq!(tcp_message(&seg), Ok(Some(&m[..])));
    assert_eq!(tcp_message(&seg[..seg.len() - 1]), Err(DnsError::Segmented));
    assert_eq!(tcp_message(&seg[..1]), Err(DnsError::Segmented));
    assert_eq!(tcp_message(&[]), Ok(None));
}

#[test]
fn a_refusal_is_the_query_with_the_response_bit_and_the_rcode() {
    let mut q = query(0x1234, "evil.org");
    let (old, new) = refuse_in_place(&mut q, 5).unwrap();
    assert_eq!(old & 0x8000, 0);
    assert_eq!(new & 0x8000, 0x8000);
    let m = hickory_proto::op::Message::from_vec(&q).unwrap();
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.metadata.recursion_desired);
    assert_eq!(m.queries.len(), 1);
    let mut q = query(1, "evil.org");
    refuse_in_place(&mut q, 3).unwrap();
    let m = hickory_proto::op::Message::from_vec(&q).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(refuse_in_place(&mut [0u8; 3], 5), None);
}

proptest! {
    /// Random bytes, and a good response with random bytes changed: never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = learned(&bytes, &sel("*"));
        let _ = query_name(&bytes);
        let _ = tcp_message(&bytes);
    }

    #[test]
    fn mutated_responses_never_panic(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut m = response(9, "www.example.com", &[("www.example.com", "e.cdn.net")], &[("e.cdn.net", IP1, 30)]);
        for (i, b) in flips {
            let n = m.len();
            m[i % n] = b;
        }
        let _ = learned(&m, &sel("*"));
        let _ = query_name(&m);
    }
}
