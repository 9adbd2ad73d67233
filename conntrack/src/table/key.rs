//! Flow keys and the values an entry holds: [`Key`] and its [`Dir`], the hash, [`Nat`],
//! [`NewEntry`], the reported [`Entry`] and its [`PolicyVerdict`].

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::state::State;

/// On which side a flow is tracked (as Cilium's tuple flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Dir {
    /// Opened by a local pod.
    Egress = 0,
    /// Opened from elsewhere towards a local pod.
    Ingress = 1,
    /// A service flow, keyed by the tuple the client sent (to the service address).
    Service = 2,
    /// The reverse translation of a service flow, keyed by the backend's reply.
    RevNat = 3,
    /// A client's backend under session affinity (key: client, service address, port).
    Affinity = 4,
    /// The Ethernet address an external client was last seen behind (key: its address).
    Neigh = 5,
}

/// A flow key: the 5-tuple (ICMP echo: the identifier as both ports) plus direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Source address (host byte order).
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Direction.
    pub dir: Dir,
}

impl Key {
    pub(super) fn words(&self) -> (u64, u64) {
        let w0 = u64::from(self.src) << 32 | u64::from(self.dst);
        let w1 = u64::from(self.sport) << 48
            | u64::from(self.dport) << 32
            | u64::from(self.proto) << 8
            | self.dir as u64;
        (w0, w1)
    }

    pub(super) fn from_words(w0: u64, w1: u64) -> Key {
        Key {
            src: (w0 >> 32) as u32,
            dst: w0 as u32,
            sport: (w1 >> 48) as u16,
            dport: (w1 >> 32) as u16,
            proto: (w1 >> 8) as u8,
            dir: match w1 as u8 {
                0 => Dir::Egress,
                1 => Dir::Ingress,
                2 => Dir::Service,
                3 => Dir::RevNat,
                4 => Dir::Affinity,
                _ => Dir::Neigh,
            },
        }
    }

    /// The key of the other direction of the same flow.
    pub fn reversed(&self, dir: Dir) -> Key {
        Key {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            dir,
        }
    }

    /// splitmix64's finaliser over both words: every key bit reaches every hash bit, so keys
    /// that differ only in a port (a SYN flood) spread over all buckets.
    pub(super) fn hash(&self) -> u64 {
        let (a, b) = self.words();
        mix64(a ^ mix64(b))
    }
}

/// splitmix64's finaliser: every input bit reaches every output bit.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A NAT record: the addresses and ports a tracked packet is rewritten to. What it means
/// depends on the key's direction:
/// - [`Dir::Service`] (keyed by the tuple the client sent): the packet leaves as
///   `src:sport → dst:dport` (source-NAT'd or not; `dst` is the chosen backend);
/// - [`Dir::RevNat`] (keyed by the backend's reply tuple): the reply leaves as
///   `src:sport → dst:dport` (the service address back to the client);
/// - [`Dir::Affinity`]: `dst:dport` is the client's backend;
/// - [`Dir::Neigh`]: `src` and `sport` hold an Ethernet address (first 4 bytes, last 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Nat {
    /// Source address to write (host byte order).
    pub src: u32,
    /// Source port to write.
    pub sport: u16,
    /// Destination address to write.
    pub dst: u32,
    /// Destination port to write.
    pub dport: u16,
}

/// What a new entry starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewEntry {
    /// Initial state.
    pub state: State,
    /// Security identity of the originator.
    pub identity: u32,
    /// NAT record, for service flows.
    pub nat: Option<Nat>,
    /// Length of the first packet.
    pub bytes: u32,
}

/// A copy of an entry, for reporting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Protocol number.
    pub proto: u8,
    /// Direction.
    pub dir: Dir,
    /// State.
    pub state: Option<State>,
    /// Seconds left to live.
    pub expires_in: i64,
    /// The responder has answered.
    pub reply_seen: bool,
    /// Originator's identity.
    pub identity: u32,
    /// NAT record.
    pub nat: Option<Nat>,
    /// Packets (both directions; the table counts modulo 2^48).
    pub packets: u64,
    /// Bytes (both directions; the table counts modulo 2^48).
    pub bytes: u64,
    /// TCP: the originator has sent FIN or a RST was seen (Cilium's `tx_closing`).
    pub tx_closing: bool,
    /// TCP: the responder has sent FIN or a RST was seen (Cilium's `rx_closing`).
    pub rx_closing: bool,
    /// The cached policy verdict, if the fast path stored one.
    pub policy: Option<PolicyVerdict>,
}

/// A policy verdict cached in an entry: valid while the policy revision it was computed at is
/// the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PolicyVerdict {
    /// The policy revision the verdict was computed at.
    pub revision: u32,
    /// Allowed or denied.
    pub allowed: bool,
}
