//! The ipcache: IP or CIDR → security identity and tunnel endpoint, with longest-prefix match.
//!
//! One hash table per prefix length, probed from the longest length present down: a /32 pod
//! address costs one probe, and a node has only a handful of distinct lengths.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;

use crate::identity::Identity;

/// What the ipcache knows about an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IpCacheEntry {
    /// Its security identity.
    pub identity: Identity,
    /// The node to tunnel to, for addresses on other nodes.
    pub tunnel: Option<Ipv4Addr>,
}

/// Longest-prefix-match table of IPv4 prefixes.
#[derive(Debug, Clone, Default)]
pub struct IpCache {
    tables: Vec<(u8, FxHashMap<u32, IpCacheEntry>)>, // by prefix length, longest first
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl IpCache {
    /// Adds or replaces a prefix.
    pub fn insert(&mut self, net: Ipv4Net, e: IpCacheEntry) {
        let len = net.prefix_len();
        let key = u32::from(net.network()) & mask(len);
        let i = match self.tables.iter().position(|(l, _)| *l <= len) {
            Some(i) if self.tables[i].0 == len => i,
            Some(i) => {
                self.tables.insert(i, (len, FxHashMap::default()));
                i
            }
            None => {
                self.tables.push((len, FxHashMap::default()));
                self.tables.len() - 1
            }
        };
        self.tables[i].1.insert(key, e);
    }

    /// Removes a prefix.
    pub fn remove(&mut self, net: Ipv4Net) -> Option<IpCacheEntry> {
        let len = net.prefix_len();
        let i = self.tables.iter().position(|(l, _)| *l == len)?;
        let r = self.tables[i]
            .1
            .remove(&(u32::from(net.network()) & mask(len)));
        if self.tables[i].1.is_empty() {
            self.tables.remove(i);
        }
        r
    }

    /// The entry of the longest prefix holding `ip` (host byte order).
    #[inline]
    pub fn lookup(&self, ip: u32) -> Option<&IpCacheEntry> {
        self.tables
            .iter()
            .find_map(|(len, t)| t.get(&(ip & mask(*len))))
    }

    /// Every prefix, longest first.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Net, &IpCacheEntry)> {
        self.tables.iter().flat_map(|(len, t)| {
            t.iter().map(move |(k, e)| {
                (
                    Ipv4Net::new(Ipv4Addr::from(*k), *len).expect("length <= 32"),
                    e,
                )
            })
        })
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|(_, t)| t.len()).sum()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(id: u32) -> IpCacheEntry {
        IpCacheEntry {
            identity: Identity(id),
            tunnel: None,
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let mut c = IpCache::default();
        c.insert("0.0.0.0/0".parse().unwrap(), e(2));
        c.insert("10.0.0.0/8".parse().unwrap(), e(100));
        c.insert("10.1.0.0/16".parse().unwrap(), e(200));
        c.insert("10.1.2.3/32".parse().unwrap(), e(300));
        fn l(c: &IpCache, s: &str) -> u32 {
            c.lookup(u32::from(s.parse::<Ipv4Addr>().unwrap()))
                .unwrap()
                .identity
                .0
        }
        assert_eq!(l(&c, "10.1.2.3"), 300);
        assert_eq!(l(&c, "10.1.2.4"), 200);
        assert_eq!(l(&c, "10.2.0.1"), 100);
        assert_eq!(l(&c, "8.8.8.8"), 2);
        assert_eq!(c.len(), 4);
        c.remove("10.1.0.0/16".parse().unwrap());
        assert_eq!(l(&c, "10.1.2.4"), 100);
        assert_eq!(c.iter().count(), 3);
    }

    proptest! {
        /// Against a linear scan over the same prefixes.
        #[test]
        fn matches_a_linear_scan(prefixes in proptest::collection::vec((any::<u32>(), 0u8..=32), 1..40), probes in proptest::collection::vec(any::<u32>(), 1..50)) {
            let mut c = IpCache::default();
            let mut all = Vec::new();
            for (i, (a, len)) in prefixes.iter().enumerate() {
                let net = Ipv4Net::new(Ipv4Addr::from(*a), *len).unwrap().trunc();
                c.insert(net, e(i as u32));
                all.retain(|(n, _): &(Ipv4Net, u32)| *n != net);
                all.push((net, i as u32));
            }
            for p in probes {
                let want = all.iter().filter(|(n, _)| n.contains(&Ipv4Addr::from(p))).max_by_key(|(n, _)| n.prefix_len()).map(|(_, i)| *i);
                prop_assert_eq!(c.lookup(p).map(|x| x.identity.0), want);
            }
        }
    }
}
