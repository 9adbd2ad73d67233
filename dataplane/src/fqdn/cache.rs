//! The names each endpoint learned addresses under, shared by every worker (the same
//! [`FqdnCache`] in every [`crate::tables::Tables`] snapshot, as the conntrack table is).
//!
//! **Structure, and why:** readers are new flows to addresses outside the cluster from an
//! endpoint with `toFQDNs` rules (and established flows judged again after a policy change);
//! writers are the workers that learn from DNS responses, and the agent's garbage collection.
//! Per endpoint, its names are an immutable map behind an [`ArcSwap`]: a reader loads it (no
//! lock, no allocation, no syscall: arc-swap's loads are wait-free in the common case) and
//! scans the address's few names; a writer copies the endpoint's map, changes it and swaps it
//! in with a compare-and-swap loop (`rcu`), so no reader ever waits for a writer and a
//! writer's cost (a copy of one endpoint's map, bounded by `max_ips_per_name` per name) is
//! paid only on DNS responses, which allocate anyway while they are parsed. The endpoints'
//! table (address → its map) is swapped the same way, only when an endpoint learns its first
//! name or is collected.
//!
//! **Ordering:** a worker learns before the response frame leaves its batch, and the swap is a
//! release store that the reader's load acquires, so the client's first packet to the address,
//! on any worker, finds it.
//!
//! **Expiry and zombies:** an entry expires `max(ttl, min_ttl)` seconds after it was learned.
//! A new flow needs an unexpired entry. An expired entry stays (a *zombie*, as Cilium's
//! `DNSZombieMappings`) while conntrack holds a flow from the endpoint to the address: an
//! established flow judged again (a policy change) still finds it, so connections opened
//! while the address was allowed outlive its TTL until they close. [`FqdnCache::collect`]
//! drops the zombies no flow uses any more.
//!
//! Learning changes no table revision: a new flow consults the cache when it is judged, so
//! nothing cached needs judging again.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use vireo_policy::FqdnSelector;

use super::parse::Answer;
use crate::tables::FastMap;

/// One name an address is known by, for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The name (lower case, no trailing dot).
    pub name: Arc<str>,
    /// When it expires (the conntrack clock, seconds).
    pub expires: u32,
    /// When it was learned (its last answer), for evicting the oldest of a name.
    pub learned: u32,
}

/// One endpoint's names: address (host byte order) → the names it is known by.
#[derive(Debug, Clone, Default)]
pub struct EndpointNames {
    by_ip: FastMap<u32, Vec<Known>>,
}

impl EndpointNames {
    /// The names `ip` is known by (expired ones included).
    #[inline]
    pub fn names(&self, ip: u32) -> &[Known] {
        self.by_ip.get(&ip).map_or(&[], Vec::as_slice)
    }

    /// Whether `ip` is known under a name `sel` selects: unexpired at `now`, or (for an
    /// established flow) at all.
    #[inline]
    pub fn knows(&self, ip: u32, sel: &FqdnSelector, now: u32, established: bool) -> bool {
        self.names(ip)
            .iter()
            .any(|k| (established || k.expires > now) && sel.matches(&k.name))
    }

    /// Entries (address, name).
    pub fn len(&self) -> usize {
        self.by_ip.values().map(Vec::len).sum()
    }

    /// True when nothing is learned.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Every (address, name) entry.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, &Known)> {
        self.by_ip
            .iter()
            .flat_map(|(ip, v)| v.iter().map(move |k| (Ipv4Addr::from(*ip), k)))
    }

    /// Learns `a` at `now`; at most `max_ips` addresses per name (the oldest evicted).
    /// Returns whether the (address, name) pair is new.
    fn learn(&mut self, a: &Answer, now: u32, settings: &Settings) -> bool {
        let ttl = a.ttl.max(settings.min_ttl);
        let expires = now.saturating_add(ttl);
        let ip = u32::from(a.ip);
        let list = self.by_ip.entry(ip).or_default();
        if let Some(k) = list.iter_mut().find(|k| *k.name == *a.name) {
            k.expires = k.expires.max(expires);
            k.learned = now;
            return false;
        }
        let name: Arc<str> = a.name.as_str().into();
        list.push(Known {
            name: name.clone(),
            expires,
            learned: now,
        });
        // Over the limit for this name: evict its oldest address (not the one just learned).
        let max = settings.max_ips_per_name.max(1) as usize;
        let mut holders: Vec<(u32, u32)> = self
            .by_ip
            .iter()
            .filter_map(|(ip, v)| v.iter().find(|k| k.name == name).map(|k| (k.learned, *ip)))
            .collect();
        if holders.len() > max {
            holders.sort_unstable();
            for (_, old) in holders
                .iter()
                .filter(|(_, i)| *i != ip)
                .take(holders.len() - max)
            {
                self.forget(*old, &name);
            }
        }
        true
    }

    /// Drops `name` from `ip`.
    fn forget(&mut self, ip: u32, name: &str) {
        if let Some(v) = self.by_ip.get_mut(&ip) {
            v.retain(|k| &*k.name != name);
            if v.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
    }
}

/// The settings of Cilium's names (the agent config's `fqdn` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `tofqdns-min-ttl`: an answer is kept at least this long (seconds).
    pub min_ttl: u32,
    /// `tofqdns-max-ip-per-hostname`: addresses kept per name per endpoint.
    pub max_ips_per_name: u32,
    /// `tofqdns-dns-reject-response-code`: the DNS rcode of refused queries (5 REFUSED, 3
    /// NXDOMAIN).
    pub reject_rcode: u8,
}

impl Default for Settings {
    /// Cilium's defaults: no minimum TTL, 50 addresses per name, REFUSED.
    fn default() -> Self {
        Settings {
            min_ttl: 0,
            max_ips_per_name: 50,
            reject_rcode: 5,
        }
    }
}

/// What the DNS stages did (shared by the workers; DNS packets are few, so one set of
/// counters is enough).
#[derive(Debug, Default)]
pub struct DnsCounters {
    /// DNS responses parsed for an endpoint with `toFQDNs` rules.
    pub responses_parsed: AtomicU64,
    /// (name, address) pairs learned anew.
    pub learned: AtomicU64,
    /// Responses that did not decode (passed to the endpoint without learning).
    pub malformed: AtomicU64,
    /// Queries answered by Vireo because no `rules: dns` allows the name.
    pub refused: AtomicU64,
    /// DNS over TCP not learned from: the message spans segments (passed without learning).
    pub tcp_not_learned: AtomicU64,
}

/// A snapshot of [`DnsCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DnsCounts {
    /// See [`DnsCounters::responses_parsed`].
    pub responses_parsed: u64,
    /// See [`DnsCounters::learned`].
    pub learned: u64,
    /// See [`DnsCounters::malformed`].
    pub malformed: u64,
    /// See [`DnsCounters::refused`].
    pub refused: u64,
    /// See [`DnsCounters::tcp_not_learned`].
    pub tcp_not_learned: u64,
}

impl DnsCounters {
    /// Adds `n` to `c`.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> DnsCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsCounts {
            responses_parsed: l(&self.responses_parsed),
            learned: l(&self.learned),
            malformed: l(&self.malformed),
            refused: l(&self.refused),
            tcp_not_learned: l(&self.tcp_not_learned),
        }
    }
}

/// Every endpoint's learned names (see the module's documentation).
#[derive(Debug)]
pub struct FqdnCache {
    endpoints: ArcSwap<FastMap<u32, Arc<ArcSwap<EndpointNames>>>>,
    settings: ArcSwap<Settings>,
    /// The conntrack clock as the last batch saw it (seconds): the verdict path reads it
    /// instead of the clock.
    clock: AtomicU32,
    /// What the DNS stages did.
    pub counters: DnsCounters,
}

impl Default for FqdnCache {
    fn default() -> Self {
        FqdnCache {
            endpoints: ArcSwap::from_pointee(FastMap::default()),
            settings: ArcSwap::from_pointee(Settings::default()),
            clock: AtomicU32::new(0),
            counters: DnsCounters::default(),
        }
    }
}

impl FqdnCache {
    /// A cache with `settings`.
    pub fn new(settings: Settings) -> Self {
        let c = FqdnCache::default();
        c.set_settings(settings);
        c
    }

    /// Replaces the settings (a configuration reload); entries keep their expiry.
    pub fn set_settings(&self, s: Settings) {
        self.settings.store(Arc::new(s));
    }

    /// The settings.
    pub fn settings(&self) -> Settings {
        **self.settings.load()
    }

    /// Records the batch's time (once per batch; written only when it moved on).
    #[inline]
    pub fn tick(&self, now: u32) {
        if self.clock.load(Ordering::Relaxed) != now {
            self.clock.store(now, Ordering::Relaxed);
        }
    }

    /// The time of the last batch.
    #[inline]
    pub fn now(&self) -> u32 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Whether endpoint `ep` knows `ip` under a name `sel` selects (see
    /// [`EndpointNames::knows`]). Lock-free.
    #[inline]
    pub fn knows(&self, ep: u32, ip: u32, sel: &FqdnSelector, established: bool) -> bool {
        let eps = self.endpoints.load();
        let Some(names) = eps.get(&ep) else {
            return false;
        };
        names.load().knows(ip, sel, self.now(), established)
    }

    /// Whether no endpoint learned anything (the verdict path skips the cache then).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.endpoints.load().is_empty()
    }

    /// Endpoint `ep`'s names (a snapshot).
    pub fn endpoint(&self, ep: u32) -> Option<Arc<EndpointNames>> {
        self.endpoints.load().get(&ep).map(|n| n.load_full())
    }

    /// Every endpoint's names (a snapshot), by endpoint address.
    pub fn dump(&self) -> Vec<(Ipv4Addr, Arc<EndpointNames>)> {
        let mut v: Vec<_> = self
            .endpoints
            .load()
            .iter()
            .map(|(ep, n)| (Ipv4Addr::from(*ep), n.load_full()))
            .collect();
        v.sort_by_key(|(ep, _)| *ep);
        v
    }

    /// Learns `answers` for endpoint `ep` at `now`; returns how many (address, name) pairs
    /// were new. Visible to every reader when it returns.
    pub fn learn(&self, ep: u32, answers: &[Answer], now: u32) -> usize {
        if answers.is_empty() {
            return 0;
        }
        let settings = self.settings();
        let slot = self.slot(ep);
        let mut new = 0;
        slot.rcu(|cur| {
            let mut next = EndpointNames::clone(cur);
            new = answers
                .iter()
                .filter(|a| next.learn(a, now, &settings))
                .count();
            next
        });
        new
    }

    /// Endpoint `ep`'s map, created empty when it has none.
    fn slot(&self, ep: u32) -> Arc<ArcSwap<EndpointNames>> {
        if let Some(s) = self.endpoints.load().get(&ep) {
            return s.clone();
        }
        self.endpoints.rcu(|cur| {
            let mut next = FastMap::clone(cur);
            next.entry(ep).or_default();
            next
        });
        self.endpoints
            .load()
            .get(&ep)
            .cloned()
            .expect("inserted just now")
    }

    /// Garbage collection (the agent's, not the fast path's): drops endpoints `keep_endpoint`
    /// refuses (gone), and expired entries unless `in_use(endpoint, address)` (a tracked
    /// flow: then they stay as zombies). Returns the entries dropped.
    pub fn collect(
        &self,
        now: u32,
        keep_endpoint: impl Fn(u32) -> bool,
        in_use: impl Fn(u32, u32) -> bool,
    ) -> usize {
        let mut dropped = 0;
        let eps: Vec<(u32, Arc<ArcSwap<EndpointNames>>)> = self
            .endpoints
            .load()
            .iter()
            .map(|(e, n)| (*e, n.clone()))
            .collect();
        let mut gone = Vec::new();
        for (ep, slot) in eps {
            if !keep_endpoint(ep) {
                dropped += slot.load().len();
                gone.push(ep);
                continue;
            }
            let cur = slot.load();
            let stale = cur
                .by_ip
                .iter()
                .any(|(ip, v)| v.iter().any(|k| k.expires <= now && !in_use(ep, *ip)));
            if !stale {
                continue;
            }
            let mut n = 0;
            slot.rcu(|cur| {
                let mut next = EndpointNames::clone(cur);
                n = 0;
                next.by_ip.retain(|ip, v| {
                    let before = v.len();
                    let used = in_use(ep, *ip);
                    v.retain(|k| k.expires > now || used);
                    n += before - v.len();
                    !v.is_empty()
                });
                next
            });
            dropped += n;
        }
        if !gone.is_empty() {
            self.endpoints.rcu(|cur| {
                let mut next = FastMap::clone(cur);
                for ep in &gone {
                    next.remove(ep);
                }
                next
            });
        }
        dropped
    }
}

#[cfg(test)]
mod tests;
