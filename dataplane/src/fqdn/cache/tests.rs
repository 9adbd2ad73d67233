//! The FQDN cache: TTLs, the minimum TTL, the per-name limit, zombies, collection, and
//! concurrent readers and writers.

use std::net::Ipv4Addr;
use std::sync::Arc;

use vireo_policy::FqdnSelector;

use super::*;

const EP: u32 = 0x0af4_010a; // 10.244.1.10
const EP2: u32 = 0x0af4_010b;

fn ans(name: &str, ip: [u8; 4], ttl: u32) -> Answer {
    Answer {
        name: name.into(),
        ip: Ipv4Addr::from(ip),
        ttl,
    }
}

fn www() -> FqdnSelector {
    FqdnSelector::name("www.example.com").unwrap()
}

fn ip(a: [u8; 4]) -> u32 {
    u32::from(Ipv4Addr::from(a))
}

#[test]
fn an_answer_is_known_until_its_ttl_then_only_to_established_flows() {
    let c = FqdnCache::default();
    c.tick(100);
    assert_eq!(
        c.learn(EP, &[ans("www.example.com", [1, 2, 3, 4], 30)], 100),
        1
    );
    assert!(c.knows(EP, ip([1, 2, 3, 4]), &www(), false));
    assert!(
        !c.knows(EP2, ip([1, 2, 3, 4]), &www(), false),
        "per endpoint"
    );
    assert!(!c.knows(EP, ip([1, 2, 3, 5]), &www(), false));
    assert!(!c.knows(
        EP,
        ip([1, 2, 3, 4]),
        &FqdnSelector::name("example.com").unwrap(),
        false
    ));
    c.tick(129);
    assert!(c.knows(EP, ip([1, 2, 3, 4]), &www(), false));
    c.tick(130);
    assert!(
        !c.knows(EP, ip([1, 2, 3, 4]), &www(), false),
        "expired for new flows"
    );
    assert!(
        c.knows(EP, ip([1, 2, 3, 4]), &www(), true),
        "a zombie for established ones"
    );
    // Collection keeps a zombie a flow still uses, then drops it.
    assert_eq!(c.collect(130, |_| true, |_, _| true), 0);
    assert!(c.knows(EP, ip([1, 2, 3, 4]), &www(), true));
    assert_eq!(c.collect(130, |_| true, |_, _| false), 1);
    assert!(!c.knows(EP, ip([1, 2, 3, 4]), &www(), true));
}

#[test]
fn the_minimum_ttl_and_a_repeated_answer_extend_the_expiry() {
    let c = FqdnCache::new(Settings {
        min_ttl: 60,
        ..Settings::default()
    });
    c.learn(EP, &[ans("www.example.com", [1, 2, 3, 4], 5)], 0);
    c.tick(59);
    assert!(c.knows(EP, ip([1, 2, 3, 4]), &www(), false));
    c.tick(60);
    assert!(!c.knows(EP, ip([1, 2, 3, 4]), &www(), false));
    assert_eq!(
        c.learn(EP, &[ans("www.example.com", [1, 2, 3, 4], 5)], 60),
        0,
        "not new"
    );
    assert!(c.knows(EP, ip([1, 2, 3, 4]), &www(), false), "renewed");
}

#[test]
fn at_most_max_ips_per_name_the_oldest_evicted() {
    let c = FqdnCache::new(Settings {
        max_ips_per_name: 2,
        ..Settings::default()
    });
    for (i, t) in [(1u8, 10u32), (2, 11), (3, 12)] {
        c.learn(EP, &[ans("www.example.com", [1, 1, 1, i], 300)], t);
    }
    c.tick(12);
    assert!(
        !c.knows(EP, ip([1, 1, 1, 1]), &www(), false),
        "oldest evicted"
    );
    assert!(c.knows(EP, ip([1, 1, 1, 2]), &www(), false));
    assert!(c.knows(EP, ip([1, 1, 1, 3]), &www(), false));
    // Another name on the same address is counted apart.
    c.learn(EP, &[ans("api.example.com", [1, 1, 1, 2], 300)], 13);
    assert_eq!(c.endpoint(EP).unwrap().names(ip([1, 1, 1, 2])).len(), 2);
}

#[test]
fn gone_endpoints_are_collected() {
    let c = FqdnCache::default();
    c.learn(EP, &[ans("www.example.com", [1, 2, 3, 4], 300)], 0);
    c.learn(EP2, &[ans("www.example.com", [1, 2, 3, 4], 300)], 0);
    assert_eq!(c.collect(1, |ep| ep != EP2, |_, _| false), 1);
    assert_eq!(c.dump().len(), 1);
    assert!(c.endpoint(EP2).is_none());
}

/// Writers on several threads, a reader spinning: every learned address is visible as soon as
/// `learn` returns, and nothing is lost to a concurrent writer of the same endpoint.
#[test]
fn concurrent_writers_lose_nothing_and_readers_see_what_was_learned() {
    let c = Arc::new(FqdnCache::new(Settings {
        max_ips_per_name: 1000,
        ..Settings::default()
    }));
    let sel = FqdnSelector::pattern("*.example.com").unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|w| {
            let c = c.clone();
            let sel = sel.clone();
            std::thread::spawn(move || {
                for i in 0..100u8 {
                    let a = [10, w, i, 1];
                    c.learn(EP, &[ans(&format!("h{w}.example.com"), a, 300)], 0);
                    assert!(c.knows(EP, ip(a), &sel, false), "visible at once");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.endpoint(EP).unwrap().len(), 400);
}
