use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::gc::Gc;
use crate::state::{tcp_first, tcp_flags::*, tcp_next};
use crate::table::{TCP, UDP};
use crate::*;

fn key(i: u32, proto: u8) -> Key {
    Key {
        src: 0x0af4_0000 | (i & 0xffff),
        dst: 0x0af4_1000 | (i >> 16),
        sport: 40000 + (i % 1000) as u16,
        dport: 80,
        proto,
        dir: Dir::Egress,
    }
}

fn new(state: State) -> NewEntry {
    NewEntry {
        state,
        identity: 1000,
        nat: None,
        bytes: 60,
    }
}

fn table(max_tcp: usize, max_other: usize) -> (Table, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let t = Table::new(
        Config {
            max_tcp,
            max_other,
            ..Default::default()
        },
        clock.clone(),
    );
    (t, clock)
}

#[test]
fn slot_is_one_cache_line() {
    assert_eq!(table::SLOT_BYTES, 64);
}

#[test]
fn insert_lookup_update_and_expire() {
    let (t, clock) = table(1000, 1000);
    let k = key(1, TCP);
    assert!(t.lookup(&k).is_none());
    let (h, fresh) = t.insert(&k, new(tcp_first(SYN))).unwrap();
    assert!(fresh);
    assert_eq!(h.state(), Some(State::SynSent));
    // The same key again: the existing entry, no duplicate.
    let (_, fresh) = t.insert(&k, new(State::SynSent)).unwrap();
    assert!(!fresh);
    assert_eq!(t.counts(), (1, 0));
    // The reply, by the reversed key of the same direction.
    let r = k.reversed(Dir::Egress);
    assert!(t.lookup(&r).is_none());
    let h = t.lookup(&k).unwrap();
    h.update(tcp_next(h.state().unwrap(), true, SYN | ACK), true, 60);
    assert_eq!(h.state(), Some(State::SynRecv));
    // SYN lifetime: 60 s.
    clock.advance(59);
    assert!(t.lookup(&k).is_some());
    clock.advance(1);
    assert!(t.lookup(&k).is_none(), "expired after 60 s");
    // Established lives 21600 s.
    let (h, _) = t.insert(&k, new(State::SynSent)).unwrap();
    h.update(State::Established, false, 60);
    clock.advance(21599);
    assert!(t.lookup(&k).is_some());
    clock.advance(1);
    assert!(t.lookup(&k).is_none());
    assert_eq!(t.gc(0, t.buckets()), 1);
    assert_eq!(t.counts(), (0, 0));
}

#[test]
fn limits_evict_expired_first_then_ct_full() {
    let (t, clock) = table(64, 8);
    for i in 0..64 {
        t.insert(&key(i, TCP), new(State::SynSent)).unwrap();
    }
    assert_eq!(t.counts().0, 64);
    assert_eq!(
        t.insert(&key(1000, TCP), new(State::SynSent)).unwrap_err(),
        Full
    );
    // Other protocols have their own limit.
    for i in 0..8 {
        t.insert(&key(i, UDP), new(State::New)).unwrap();
    }
    assert!(t.insert(&key(9, UDP), new(State::New)).is_err());
    // Existing flows still work at the limit.
    let h = t.lookup(&key(5, TCP)).unwrap();
    h.update(State::Established, true, 100);
    // Once entries have expired, new ones take their place.
    clock.advance(61);
    let mut placed = 0;
    for i in 1000..1064 {
        if t.insert(&key(i, TCP), new(State::SynSent)).is_ok() {
            placed += 1;
        }
    }
    assert!(placed > 0, "expired entries must make room");
    assert!(
        t.lookup(&key(5, TCP)).is_some(),
        "the live established flow survived"
    );
    assert!(t.counts().0 <= 64 && t.counts().1 <= 8, "{:?}", t.counts());
}

#[test]
fn nat_records_round_trip() {
    let (t, _) = table(10, 10);
    let nat = Nat {
        src: 0x0a60_0001,
        sport: 80,
        dst: 0x0af4_0105,
        dport: 8080,
    };
    let (h, _) = t
        .insert(
            &key(7, TCP),
            NewEntry {
                nat: Some(nat),
                ..new(State::SynSent)
            },
        )
        .unwrap();
    assert_eq!(h.nat(), Some(nat));
    let (h, _) = t.insert(&key(8, TCP), new(State::SynSent)).unwrap();
    assert_eq!(h.nat(), None);
    let d = t.dump(10);
    assert_eq!(d.len(), 2);
    assert!(d.iter().any(|e| e.nat == Some(nat)));
    // Every direction survives the key's round trip through the table.
    for dir in [Dir::Service, Dir::RevNat, Dir::Affinity, Dir::Neigh] {
        let k = Key { dir, ..key(9, TCP) };
        t.insert(&k, new(State::SynSent)).unwrap();
        assert!(t.lookup(&k).is_some());
        assert!(t.dump(10).iter().any(|e| e.dir == dir));
    }
}

#[test]
fn two_threads_insert_lookup_delete_while_gc_runs() {
    let clock = Arc::new(ManualClock::default());
    let t = Arc::new(Table::new(
        Config {
            max_tcp: 100_000,
            max_other: 1000,
            ..Default::default()
        },
        clock.clone(),
    ));
    // Short-lived entries for the collector to reap while the threads work.
    for i in 0..20_000 {
        t.insert(&key(1_000_000 + i, UDP), new(State::New)).ok();
    }
    clock.advance(61);
    let gc = Gc::start(t.clone(), Duration::from_millis(50), 64).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2u32)
        .map(|w| {
            let (t, b) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                // Both threads insert the same keys (racing), then each deletes its half.
                for i in 0..40_000 {
                    let k = key(i, TCP);
                    let (h, _) = t.insert(&k, new(State::SynSent)).expect("room");
                    h.update(State::Established, w == 1, 60);
                    assert!(t.lookup(&k).is_some(), "lost right after insert");
                }
                b.wait();
                for i in (0..40_000).filter(|i| i % 2 == w) {
                    if i % 4 < 2 {
                        t.remove(&key(i, TCP));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(120));
    drop(gc);
    // Exactly the keys not deleted remain, each once.
    let live: Vec<Entry> = t.dump(usize::MAX);
    let tcp: Vec<&Entry> = live.iter().filter(|e| e.proto == TCP).collect();
    let set: HashSet<(std::net::Ipv4Addr, std::net::Ipv4Addr, u16)> =
        tcp.iter().map(|e| (e.src, e.dst, e.sport)).collect();
    assert_eq!(set.len(), tcp.len(), "duplicated entries");
    assert_eq!(tcp.len(), 20_000, "lost or extra entries");
    for i in 0..40_000u32 {
        assert_eq!(t.lookup(&key(i, TCP)).is_some(), i % 4 >= 2, "key {i}");
    }
    assert_eq!(t.counts().0, 20_000);
    assert_eq!(
        t.counts().1,
        0,
        "the collector reaped the expired UDP entries"
    );
}

#[test]
fn keys_differing_in_one_port_fill_the_table_to_its_limit() {
    // A SYN flood: one source, one destination, only the source port changes.
    let (t, _) = table(4096, 1024);
    for p in 0..4096u32 {
        let k = Key {
            src: 0x0af4_010b,
            dst: 0x0af4_020a,
            sport: 1024 + p as u16,
            dport: 9,
            proto: TCP,
            dir: Dir::Egress,
        };
        t.insert(&k, new(State::SynSent))
            .unwrap_or_else(|_| panic!("full at {p} of 4096"));
    }
    assert_eq!(t.counts().0, 4096);
}

#[test]
fn at_the_limit_expired_entries_anywhere_make_room() {
    // Expired UDP entries fill the other class; new flows mostly hash to other buckets than
    // theirs, so they must find room through the sweep.
    let (t, clock) = table(64, 64);
    for i in 0..64 {
        t.insert(&key(i, UDP), new(State::New)).unwrap();
    }
    clock.advance(61);
    let mut ok = 0;
    for i in 1000..1064 {
        if t.insert(&key(i, UDP), new(State::New)).is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 64, "every new flow found room among the expired ones");
    assert_eq!(t.counts().1, 64);
}

#[test]
fn refresh_sets_a_lifetime_of_its_own() {
    let (t, clock) = table(10, 10);
    let k = Key {
        dir: Dir::Affinity,
        ..key(1, UDP)
    };
    let (h, _) = t.insert(&k, new(State::New)).unwrap();
    h.refresh(10800);
    clock.advance(10799);
    assert!(t.lookup(&k).is_some());
    clock.advance(1);
    assert!(t.lookup(&k).is_none());
}
