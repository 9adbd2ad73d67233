//! Which entries go when an endpoint or a service frontend goes away, as predicates for
//! [`Table::flush`](crate::Table::flush). A new pod that gets an old pod's address, or a new
//! Service that gets an old one's address, inherits none of their flows.

use crate::table::{Dir, Key, Nat};

/// Every flow of the endpoint with address `ip`: keyed by it (either end), or translated to or
/// from it (a service flow whose backend or client it was). Learnt neighbours are left alone
/// (their record holds an Ethernet address, not a flow).
pub fn endpoint(ip: u32) -> impl Fn(&Key, Option<Nat>) -> bool {
    move |k, nat| {
        k.dir != Dir::Neigh
            && (k.src == ip || k.dst == ip || nat.is_some_and(|n| n.src == ip || n.dst == ip))
    }
}

/// Every flow of any endpoint in `ips`, in one pass over the table ([`endpoint`] for many).
pub fn endpoints(ips: std::collections::BTreeSet<u32>) -> impl Fn(&Key, Option<Nat>) -> bool {
    move |k, nat| {
        k.dir != Dir::Neigh
            && (ips.contains(&k.src)
                || ips.contains(&k.dst)
                || nat.is_some_and(|n| ips.contains(&n.src) || ips.contains(&n.dst)))
    }
}

/// Every flow of the service frontend `ip:port/proto`: its `service` and affinity entries
/// (keyed by the frontend) and its `revnat` entries (translating back to it).
pub fn frontend(ip: u32, port: u16, proto: u8) -> impl Fn(&Key, Option<Nat>) -> bool {
    move |k, nat| {
        k.proto == proto
            && match k.dir {
                Dir::Service | Dir::Affinity => k.dst == ip && k.dport == port,
                Dir::RevNat => nat.is_some_and(|n| n.src == ip && n.sport == port),
                _ => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Config, ManualClock, NewEntry, State, Table};

    fn entry(nat: Option<Nat>) -> NewEntry {
        NewEntry {
            state: State::New,
            identity: 7,
            nat,
            bytes: 1,
        }
    }

    fn key(src: u32, dst: u32, sport: u16, dport: u16, dir: Dir) -> Key {
        Key {
            src,
            dst,
            sport,
            dport,
            proto: 17,
            dir,
        }
    }

    #[test]
    fn an_endpoint_and_a_frontend_take_exactly_their_flows() {
        let t = Table::new(Config::default(), Arc::new(ManualClock::default()));
        let (pod, other, vip, backend) = (10, 11, 100, 12);
        let nat = |src, sport, dst, dport| {
            Some(Nat {
                src,
                sport,
                dst,
                dport,
            })
        };
        let keys = [
            (key(pod, other, 1, 2, Dir::Egress), None),
            (key(other, pod, 3, 4, Dir::Ingress), None),
            (key(other, 13, 5, 6, Dir::Egress), None),
            // other -> vip:80 to backend:8080, and its reverse.
            (
                key(other, vip, 7, 80, Dir::Service),
                nat(other, 7, backend, 8080),
            ),
            (
                key(backend, other, 8080, 7, Dir::RevNat),
                nat(vip, 80, other, 7),
            ),
            (
                key(other, vip, 0, 80, Dir::Affinity),
                nat(0, 0, backend, 8080),
            ),
            (key(pod, 0, 0, 0, Dir::Neigh), nat(pod, 0, 0, 0)),
        ];
        for (k, n) in &keys {
            assert!(t.insert(k, entry(*n)).unwrap().1);
        }
        assert_eq!(
            t.flush(endpoint(pod)),
            2,
            "its own flows, not its neighbour record"
        );
        assert!(t.lookup(&keys[2].0).is_some());
        assert_eq!(t.flush(frontend(vip, 80, 6)), 0, "another protocol");
        assert_eq!(t.flush(frontend(vip, 80, 17)), 3);
        assert!(t.lookup(&keys[2].0).is_some() && t.lookup(&keys[6].0).is_some());
        // A backend's flows go with it too.
        assert!(t.insert(&keys[3].0, entry(keys[3].1)).unwrap().1);
        assert_eq!(t.flush(endpoint(backend)), 1);
    }
}
