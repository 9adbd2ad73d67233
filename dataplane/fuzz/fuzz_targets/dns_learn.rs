//! The DNS parse and learn path of the fast path (`dns_learn` and `dns_query` stages) on
//! arbitrary bytes: decoding never panics, what is learned is only what a selector matches,
//! the cache takes it, a refusal edits only the header.
//!
//! `cargo +nightly fuzz run dns_learn` (from `dataplane/`), e.g. `-- -max_total_time=300`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_dataplane::fqdn::parse::{query_name, refuse_in_place, response_answers, tcp_message};
use vireo_dataplane::fqdn::{FqdnCache, Settings};
use vireo_policy::FqdnSelector;

fuzz_target!(|data: &[u8]| {
    let sels = [
        FqdnSelector::pattern("*").unwrap(),
        FqdnSelector::name("www.example.com").unwrap(),
        FqdnSelector::pattern("*.example.com").unwrap(),
    ];
    let cache = FqdnCache::new(Settings {
        max_ips_per_name: 3,
        ..Settings::default()
    });
    for msg in [Some(data), tcp_message(data).ok().flatten()].into_iter().flatten() {
        let mut out = Vec::new();
        if let Ok(n) = response_answers(msg, &sels, &mut out) {
            assert_eq!(n, out.len());
            for a in &out {
                assert!(sels.iter().any(|s| s.matches(&a.name)), "{a:?}");
            }
            cache.learn(0x0af4_010a, &out, 0);
            for a in &out {
                assert!(cache.knows(0x0af4_010a, u32::from(a.ip), &sels[0], true));
            }
        }
        if let Ok(name) = query_name(msg) {
            assert_eq!(name, name.to_ascii_lowercase());
        }
        let mut copy = msg.to_vec();
        if refuse_in_place(&mut copy, 5).is_some() {
            assert_eq!(copy[..2], msg[..2]);
            assert_eq!(copy[4..], msg[4..]);
        }
    }
});
