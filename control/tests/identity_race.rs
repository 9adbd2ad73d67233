//! Cluster-wide allocation races: two agents (two clients, two allocators, concurrently)
//! allocating the same label sets, in different orders, with deliberately colliding sets.

mod identity_common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use identity_common::*;
use vireo_control::allocator::{candidates, ClusterIdentities, Options};
use vireo_policy::{Identity, Labels};

/// Checks that both agents' answers agree, that no number stands for two sets, and that the
/// server holds exactly that mapping.
fn check_agreement(
    sets: &[Labels],
    a: &HashMap<Labels, Identity>,
    b: &HashMap<Labels, Identity>,
    server: &HashMap<Identity, Labels>,
) {
    assert_eq!(a.len(), sets.len());
    assert_eq!(b.len(), sets.len());
    for l in sets {
        assert_eq!(a[l], b[l], "the two agents disagree on {l}");
        assert_eq!(server.get(&a[l]), Some(l), "the server disagrees on {l}");
    }
    let ids: HashSet<Identity> = a.values().copied().collect();
    assert_eq!(ids.len(), sets.len(), "a number stands for two label sets");
    assert_eq!(
        server.len(),
        sets.len(),
        "the server holds extra identities"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sets_two_agents_different_orders_same_numbers() {
    let server = server();
    bounded(Duration::from_secs(150), async {
        // 60 pairs sharing a first choice, 20 pairs probing into another's first choice, the
        // rest ordinary; spread through the list.
        let (same, next) = colliding(60, 20);
        let mut special: Vec<Labels> = Vec::new();
        for (x, y) in same.iter().chain(&next) {
            special.push(x.clone());
            special.push(y.clone());
        }
        let mut seen = HashSet::new();
        special.retain(|l| seen.insert(l.clone()));
        let mut sets: Vec<Labels> = (0..10_000 - special.len())
            .map(|i| pod(&format!("ns{}", i % 37), &format!("app-{i}")))
            .collect();
        let step = sets.len() / special.len();
        for (k, l) in special.iter().enumerate() {
            sets.insert(k * (step + 1), l.clone());
        }
        assert_eq!(sets.len(), 10_000);
        assert_eq!(sets.iter().collect::<HashSet<_>>().len(), 10_000);
        let pairs_in = same.iter().filter(|(x, y)| first(x) == first(y)).count();
        assert!(pairs_in >= 50, "only {pairs_in} colliding pairs");

        let opts = Options {
            concurrency: 32,
            ..Options::default()
        };
        let a = agent(&server, opts.clone()).await;
        let b = agent(&server, opts).await;
        let forward = sets.clone();
        let mut shuffled = sets.clone();
        shuffle(&mut shuffled, 0x05ee_d1d5);
        assert_ne!(forward[..100], shuffled[..100]);

        let t0 = Instant::now();
        let (ta, tb) = (a.clone(), b.clone());
        let ja = tokio::spawn(async move { ta.allocate_all(&forward).await });
        let jb = tokio::spawn(async move { tb.allocate_all(&shuffled).await });
        let (ra, rb) = (ja.await.unwrap().unwrap(), jb.await.unwrap().unwrap());
        let took = t0.elapsed();
        eprintln!("10 000 label sets, two agents: {took:?}");

        check_agreement(&sets, &ra, &rb, &at_server(&server));
        let (sa, sb) = (a.stats(), b.stats());
        eprintln!("agent a: {sa:?}\nagent b: {sb:?}");
        assert_eq!(
            sa.created + sb.created,
            10_000,
            "each set created exactly once"
        );
        assert!(
            sa.taken + sb.taken >= 50,
            "the colliding sets should have probed past each other"
        );
        // Colliding sets got different numbers; one of each pair is past its first choice.
        for (x, y) in &same {
            assert_ne!(ra[x], ra[y]);
            assert!(ra[x] != first(x) || ra[y] != first(y));
        }
        // Every set got a number from its own candidate sequence, within a few probes.
        for l in &sets {
            assert!(candidates(l).take(16).any(|c| c == ra[l]), "{l}");
        }
        // Both caches end up knowing every identity (including those the other agent created).
        for (who, agent) in [("a", &a), ("b", &b)] {
            eventually(
                Duration::from_secs(20),
                &format!("agent {who}'s cache"),
                || agent.snapshot().len() == sets.len(),
            )
            .await;
            for l in &sets {
                assert_eq!(agent.get(l), Some(ra[l]));
            }
        }
        // Allocating again is answered from the cache: same numbers, no new objects.
        let again = b.allocate_all(&sets[..500]).await.unwrap();
        for l in &sets[..500] {
            assert_eq!(again[l], ra[l]);
        }
        assert!(
            took < Duration::from_secs(90),
            "the race took {took:?}, expected well under a minute"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_set_raced_by_two_agents_gets_one_number() {
    let server = server();
    bounded(Duration::from_secs(60), async {
        let opts = Options {
            concurrency: 16,
            ..Options::default()
        };
        let a = agent(&server, opts.clone()).await;
        let b = agent(&server, opts).await;
        // The same sets, the same order, at the same time: every create races (one gets 201,
        // the other 409 and a GET).
        let sets: Vec<Labels> = (0..300).map(|i| pod("race", &format!("r{i}"))).collect();
        let (ta, tb) = (a.clone(), b.clone());
        let (s1, s2) = (sets.clone(), sets.clone());
        let ja = tokio::spawn(async move { ta.allocate_all(&s1).await });
        let jb = tokio::spawn(async move { tb.allocate_all(&s2).await });
        let (ra, rb) = (ja.await.unwrap().unwrap(), jb.await.unwrap().unwrap());
        check_agreement(&sets, &ra, &rb, &at_server(&server));
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sa.created + sb.created, 300);
        assert!(
            sa.won_elsewhere + sb.won_elsewhere > 0,
            "no create raced: {sa:?} {sb:?}"
        );

        // Colliding sets raced from both sides: x by a while y by b, and y by a while x by b.
        let (same, _) = colliding(20, 0);
        for (x, y) in &same {
            let (ta, tb) = (a.clone(), b.clone());
            let (x1, y1) = (x.clone(), y.clone());
            let (ia, ib) =
                tokio::join!(async move { ta.allocate(&x1).await.unwrap() }, async move {
                    tb.allocate(&y1).await.unwrap()
                },);
            assert_ne!(ia, ib, "{x} and {y} share a number");
            let (ia2, ib2) = tokio::join!(a.allocate(y), b.allocate(x));
            assert_eq!((ia2.unwrap(), ib2.unwrap()), (ib, ia));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_other_agents_create_are_learnt_without_asking() {
    let server = server();
    bounded(Duration::from_secs(30), async {
        let a = agent(&server, Options::default()).await;
        let mut changes = a.changes();
        changes.borrow_and_update();
        // Another agent (here: straight into the store) creates an identity.
        let l = pod("elsewhere", "web");
        let id = first(&l);
        let obj = serde_json::to_value(vireo_control::allocator::identities::identity_object(
            id, &l,
        ))
        .unwrap();
        server.store().create(obj).unwrap();
        eventually(Duration::from_secs(10), "the watch to deliver it", || {
            a.get(&l) == Some(id)
        })
        .await;
        assert_eq!(a.labels(id), Some(l.clone()));
        assert!(changes.has_changed().unwrap(), "changes() did not tell");
        // A colliding set created elsewhere pushes ours to the next candidate.
        let (same, _) = colliding(1, 0);
        let (x, y) = &same[0];
        let obj = serde_json::to_value(vireo_control::allocator::identities::identity_object(
            first(x),
            x,
        ))
        .unwrap();
        server.store().create(obj).unwrap();
        let got = a.allocate(y).await.unwrap();
        assert_eq!(got, candidates(y).nth(1).unwrap());
        assert_eq!(a.allocate(x).await.unwrap(), first(x));
        // A fresh agent starting now lists both.
        let b = agent(&server, Options::default()).await;
        assert_eq!(b.get(y), Some(got));
        assert_eq!(b.allocate(&l).await.unwrap(), id);
        let _ = ClusterIdentities::options(&b);
    })
    .await;
}
