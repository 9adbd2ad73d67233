//! [`Handle`]: a found entry, read and updated through the slot generation it was found with.

use std::net::Ipv4Addr;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::{
    flags, pack, w_expires, w_flags, w_owned, Entry, Key, Nat, PolicyVerdict, Slot, Table,
    COUNT_MASK, POLICY_ALLOWED, POLICY_VALID,
};
use crate::state::State;

/// A found entry, to read and update. It carries the slot's generation and the time it was
/// found at: once the slot is freed or holds another flow, every operation through the handle
/// is a no-op (reads return `None`/0), and updates measure lifetimes from that time (so a
/// worker reads the clock once per batch).
#[derive(Clone, Copy)]
pub struct Handle<'a> {
    pub(super) t: &'a Table,
    pub(super) i: usize,
    pub(super) generation: u16,
    pub(super) now: u32,
}

impl std::fmt::Debug for Handle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("slot", &self.i)
            .field("generation", &self.generation)
            .field("state", &self.state())
            .finish()
    }
}

impl<'a> Handle<'a> {
    fn slot(&self) -> &'a Slot {
        &self.t.slots()[self.i]
    }

    /// The time this handle was found at (lifetimes of its updates count from it).
    #[inline]
    pub fn now(&self) -> u32 {
        self.now
    }

    /// The slot's generation this handle was found with.
    #[inline]
    pub fn generation(&self) -> u16 {
        self.generation
    }

    /// A consistent copy of the entry (as [`Table::dump`] shows it, expiry from the handle's
    /// time); `None` once the handle is stale.
    pub fn snapshot(&self) -> Option<Entry> {
        let (w0, w1) =
            self.stable(|s| (s.k0.load(Ordering::Relaxed), s.k1.load(Ordering::Relaxed)))?;
        self.entry(Key::from_words(w0, w1), self.now)
    }

    #[cfg(test)]
    pub(crate) fn slot_index(&self) -> usize {
        self.i
    }

    /// Whether the slot still holds this handle's entry (not freed nor reused since).
    #[inline]
    pub fn valid(&self) -> bool {
        w_owned(self.slot().live.load(Ordering::Relaxed), self.generation)
    }

    /// Runs `f` on the slot's data and returns its result if the slot held this handle's
    /// generation throughout (seqlock read).
    #[inline]
    fn stable<R>(&self, f: impl FnOnce(&Slot) -> R) -> Option<R> {
        let s = self.slot();
        // Acquire: pairs with the publishing Release store (through the release sequence).
        let w = s.live.load(Ordering::Acquire);
        if !w_owned(w, self.generation) {
            return None;
        }
        let r = f(s);
        // Acquire fence then re-load: data from a later writer implies its busy mark is seen.
        fence(Ordering::Acquire);
        w_owned(s.live.load(Ordering::Relaxed), self.generation).then_some(r)
    }

    /// The flow's state; `None` once the handle is stale.
    #[inline]
    pub fn state(&self) -> Option<State> {
        let w = self.slot().live.load(Ordering::Relaxed);
        if !w_owned(w, self.generation) {
            return None;
        }
        State::from_u8(w as u8)
    }

    /// The originator's identity (0, "unknown", once the handle is stale).
    #[inline]
    pub fn identity(&self) -> u32 {
        self.stable(|s| s.identity.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The NAT record, if any. Read consistently: `None` if the slot is being rewritten or
    /// holds another flow (never a mix of two records).
    pub fn nat(&self) -> Option<Nat> {
        self.read_nat()
    }

    pub(super) fn read_nat(&self) -> Option<Nat> {
        self.stable(|s| {
            if w_flags(s.live.load(Ordering::Relaxed)) & flags::NAT == 0 {
                return None;
            }
            let ports = s.nat_ports.load(Ordering::Relaxed);
            Some(Nat {
                src: s.nat_src.load(Ordering::Relaxed),
                sport: (ports >> 16) as u16,
                dst: s.nat_dst.load(Ordering::Relaxed),
                dport: ports as u16,
            })
        })
        .flatten()
    }

    /// The cached policy verdict, if one was stored for this entry.
    #[inline]
    pub fn policy(&self) -> Option<PolicyVerdict> {
        let p = self.slot().policy.load(Ordering::Relaxed);
        (p >> 48 == u64::from(self.generation) && p & POLICY_VALID != 0).then_some(PolicyVerdict {
            revision: p as u32,
            allowed: p & POLICY_ALLOWED != 0,
        })
    }

    /// The fast path's check: the cached verdict if it was computed at policy `revision` (one
    /// load and one compare), else `None` (evaluate policy and [`Handle::set_policy`]).
    #[inline]
    pub fn policy_at(&self, revision: u32) -> Option<bool> {
        let p = self.slot().policy.load(Ordering::Relaxed);
        let want = u64::from(self.generation) << 48 | POLICY_VALID | u64::from(revision);
        (p & !POLICY_ALLOWED == want).then_some(p & POLICY_ALLOWED != 0)
    }

    /// The fast path's check for the common case: whether the entry holds an allow taken at
    /// policy `revision` (one load and one compare). False means: ask [`Handle::policy_at`].
    #[inline(always)]
    pub fn allowed_at(&self, revision: u32) -> bool {
        let want =
            u64::from(self.generation) << 48 | POLICY_VALID | POLICY_ALLOWED | u64::from(revision);
        self.slot().policy.load(Ordering::Relaxed) == want
    }

    /// Caches a policy verdict in the entry. A no-op (false) once the handle is stale.
    #[inline]
    pub fn set_policy(&self, revision: u32, allowed: bool) -> bool {
        let g = u64::from(self.generation);
        let new =
            g << 48 | POLICY_VALID | if allowed { POLICY_ALLOWED } else { 0 } | u64::from(revision);
        self.slot()
            .policy
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                (p >> 48 == g && p != new).then_some(new)
            })
            .is_ok()
    }

    /// Records a packet: counters, the new state (if it changed), the lifetime it gives, from
    /// the time the handle was found at. A no-op once the handle is stale.
    #[inline]
    pub fn update(&self, next: State, reply: bool, bytes: u32) {
        self.try_update(next, reply, bytes);
    }

    /// [`Handle::update`], returning whether it applied (false: the handle is stale).
    ///
    /// One CAS on the live word checks the generation and sets state, flags and expiry
    /// together; the counters are added only after it succeeded, each by a CAS that checks the
    /// generation again (so a slot freed and reused in between does not get them). When the
    /// entry's state changed since the caller read it (another worker's packet), closing
    /// directions of both are kept (`State::merge`).
    pub fn try_update(&self, next: State, reply: bool, bytes: u32) -> bool {
        let s = self.slot();
        let lt = &self.t.cfg.lifetimes;
        let mut cur = s.live.load(Ordering::Relaxed);
        loop {
            if !w_owned(cur, self.generation) {
                return false;
            }
            let old = State::from_u8(cur as u8);
            let st = old.map_or(next, |o| State::merge(o, next));
            let mut exp = self.now.saturating_add(st.lifetime(lt));
            if old == Some(st) {
                // Same state: never shorten what a worker with a later clock reading set.
                exp = exp.max(w_expires(cur));
            }
            let fl = w_flags(cur) | if reply { flags::REPLY_SEEN } else { 0 };
            let new = pack(exp, self.generation, fl, st as u8);
            if new == cur {
                break;
            }
            // Relaxed: an RMW continues the publication's release sequence; it publishes no
            // other data.
            match s
                .live
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(w) => cur = w,
            }
        }
        self.add(&s.packets, 1);
        self.add(&s.bytes, u64::from(bytes));
        true
    }

    /// Adds `n` to a generation-tagged counter word if it is still this handle's.
    #[inline]
    fn add(&self, c: &AtomicU64, n: u64) {
        let g = u64::from(self.generation);
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            (v >> 48 == g).then(|| g << 48 | (v + n) & COUNT_MASK)
        });
    }

    /// Keeps the entry for `secs` from the handle's time, whatever its state's lifetime
    /// (session affinity and learnt neighbours have lifetimes of their own). A no-op once the
    /// handle is stale.
    #[inline]
    pub fn refresh(&self, secs: u32) {
        let exp = self.now.saturating_add(secs);
        let s = self.slot();
        let mut cur = s.live.load(Ordering::Relaxed);
        while w_owned(cur, self.generation) && w_expires(cur) != exp {
            let new = cur & 0xffff_ffff | u64::from(exp) << 32;
            match s
                .live
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(w) => cur = w,
            }
        }
    }

    pub(super) fn entry(&self, k: Key, now: u32) -> Option<Entry> {
        let g = u64::from(self.generation);
        let (w, identity, packets, bytes) = self.stable(|s| {
            (
                s.live.load(Ordering::Relaxed),
                s.identity.load(Ordering::Relaxed),
                s.packets.load(Ordering::Relaxed),
                s.bytes.load(Ordering::Relaxed),
            )
        })?;
        let state = State::from_u8(w as u8);
        let (tx_closing, rx_closing) = state.map_or((false, false), State::closing);
        let count = |c: u64| (c >> 48 == g).then_some(c & COUNT_MASK);
        Some(Entry {
            src: Ipv4Addr::from(k.src),
            dst: Ipv4Addr::from(k.dst),
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            dir: k.dir,
            state,
            expires_in: i64::from(w_expires(w)) - i64::from(now),
            reply_seen: w_flags(w) & flags::REPLY_SEEN != 0,
            identity,
            nat: self.read_nat(),
            packets: count(packets)?,
            bytes: count(bytes)?,
            tx_closing,
            rx_closing,
            policy: self.policy(),
        })
    }
}
