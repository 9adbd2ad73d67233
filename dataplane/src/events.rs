//! Drop events for `vireo monitor --type drop`: what was dropped, between whom, why, and for
//! policy drops the rule (or the default deny).
//!
//! Workers push into one bounded lock-free queue, only while a monitor is listening; a full
//! queue loses the event (counted), never blocks a worker.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use vireo_policy::{Direction, Origin};

use crate::counters::DropReason;
use crate::wire::ETH_HLEN;

/// One dropped packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEvent {
    /// Why.
    pub reason: DropReason,
    /// Interface slot it arrived on.
    pub in_slot: u16,
    /// IPv4 source (unspecified when the frame was not IPv4).
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// IP protocol.
    pub proto: u8,
    /// TCP/UDP ports (0 otherwise).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Source identity, when known.
    pub src_identity: u32,
    /// Destination identity, when known.
    pub dst_identity: u32,
    /// Policy drops: which side's policy.
    pub direction: Option<Direction>,
    /// Policy drops: the deny rule; `None` with a direction means default deny.
    pub rule: Option<Arc<Origin>>,
}

impl DropEvent {
    /// An event for the frame `buf` (Ethernet), addresses and ports read from it if it is a
    /// plain IPv4 packet.
    pub fn from_frame(reason: DropReason, in_slot: u16, buf: &[u8]) -> DropEvent {
        let mut e = DropEvent {
            reason,
            in_slot,
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            proto: 0,
            sport: 0,
            dport: 0,
            src_identity: 0,
            dst_identity: 0,
            direction: None,
            rule: None,
        };
        let ip = match buf.get(ETH_HLEN..) {
            Some(ip) if buf[12..14] == [0x08, 0x00] && ip.len() >= 20 && ip[0] >> 4 == 4 => ip,
            _ => return e,
        };
        e.src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        e.dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        e.proto = ip[9];
        let l4 = usize::from(ip[0] & 0x0f) * 4;
        if matches!(e.proto, 6 | 17) && ip.len() >= l4 + 4 {
            e.sport = u16::from_be_bytes([ip[l4], ip[l4 + 1]]);
            e.dport = u16::from_be_bytes([ip[l4 + 2], ip[l4 + 3]]);
        }
        e
    }
}

/// The queue between workers and the monitor.
#[derive(Debug)]
pub struct Monitor {
    on: AtomicBool,
    queue: ArrayQueue<DropEvent>,
    lost: AtomicU64,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new(4096)
    }
}

impl Monitor {
    /// A queue of `cap` events.
    pub fn new(cap: usize) -> Monitor {
        Monitor {
            on: AtomicBool::new(false),
            queue: ArrayQueue::new(cap.max(1)),
            lost: AtomicU64::new(0),
        }
    }

    /// Whether someone listens (workers skip building events otherwise).
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Starts or stops collecting.
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
        if !on {
            while self.queue.pop().is_some() {}
        }
    }

    /// Queues an event (lost, and counted, when the queue is full).
    #[inline]
    pub fn push(&self, e: DropEvent) {
        if self.queue.push(e).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes up to `max` events, and the number lost so far.
    pub fn drain(&self, max: usize) -> (Vec<DropEvent>, u64) {
        let mut v = Vec::new();
        while v.len() < max {
            match self.queue.pop() {
                Some(e) => v.push(e),
                None => break,
            }
        }
        (v, self.lost.load(Ordering::Relaxed))
    }
}
