//! Multi-buffer packets (AF_XDP with XDP_USE_SG): a frame larger than one UMEM frame arrives
//! as a chain of RX descriptors, every one but the last with `XDP_PKT_CONTD` in its options.
//!
//! The worker groups a chain into one packet: its head goes through the pipeline (a [`Desc`]
//! whose `tail` counts the bytes after the head), its continuation frames ride along in the
//! batch ([`Batch::chain`]) and leave after the head on the same TX ring, in order, with the same
//! flag on all but the last. A chain may straddle two RX batches: the frames received so far
//! wait in the socket's [`Partial`], tagged held like a batch's frames. A chain of more frames
//! than a packet may have ([`MAX_FRAGS`]) is dropped whole, counted; so is one whose socket goes
//! away mid-chain.

use crate::io::XDP_PKT_CONTD;
use crate::pipeline::{Batch, Chain, Desc, MAX_FRAGS};

/// A multi-buffer packet being received on one socket.
#[derive(Debug, Clone)]
pub(super) struct Partial {
    /// The head frame `(addr, len)`, once a descriptor with `XDP_PKT_CONTD` started a chain.
    head: Option<(u64, u32)>,
    chain: Chain,
    /// The chain outgrew [`MAX_FRAGS`]: its frames were freed, the rest are freed as they come.
    overflow: bool,
}

/// What one RX descriptor made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Part of a chain still open.
    More,
    /// A packet, now in the batch.
    Packet,
    /// The end of a chain that was too long: all its frames were freed.
    TooLong,
}

impl Default for Partial {
    fn default() -> Self {
        Partial {
            head: None,
            chain: Chain::EMPTY,
            overflow: false,
        }
    }
}

impl Partial {
    /// Takes one received descriptor (its frame held by the worker). A packet it completes
    /// goes into `batch`; frames that make no packet go to `free`.
    pub(super) fn take(
        &mut self,
        (addr, len, options): (u64, u32, u32),
        slot: u16,
        batch: &mut Batch,
        mut free: impl FnMut(u64),
    ) -> Step {
        let more = options & XDP_PKT_CONTD != 0;
        let Some((head, head_len)) = self.head else {
            if !more {
                return if batch.push(Desc::new(addr, len, slot)) {
                    Step::Packet
                } else {
                    free(addr);
                    Step::TooLong
                };
            }
            self.head = Some((addr, len));
            self.chain.clear();
            self.overflow = false;
            return Step::More;
        };
        if !self.overflow && !self.chain.push(addr, len) {
            // One frame more than a packet may have: drop what came so far and what follows.
            self.overflow = true;
            free(head);
            self.chain.frames().iter().for_each(|f| free(f.0));
        }
        if self.overflow {
            free(addr);
        }
        if more {
            return Step::More;
        }
        self.head = None;
        if self.overflow {
            return Step::TooLong;
        }
        if batch.push_chain(Desc::new(head, head_len, slot), &self.chain) {
            Step::Packet
        } else {
            free(head);
            self.chain.frames().iter().for_each(|f| free(f.0));
            Step::TooLong
        }
    }

    /// Gives back the frames of a chain cut short (its socket goes away); true when there was
    /// one (a counted drop).
    pub(super) fn abandon(&mut self, mut free: impl FnMut(u64)) -> bool {
        let Some((head, _)) = self.head.take() else {
            return false;
        };
        if !self.overflow {
            free(head);
            self.chain.frames().iter().for_each(|f| free(f.0));
        }
        self.chain.clear();
        self.overflow = false;
        true
    }
}

/// The TX descriptors `(addr, len, options)` of a packet: its head, then its continuations,
/// all but the last with `XDP_PKT_CONTD`.
#[inline]
pub(super) fn tx_descs(
    head: (u64, u32),
    chain: &[(u64, u32)],
) -> impl Iterator<Item = (u64, u32, u32)> + '_ {
    let n = chain.len();
    std::iter::once(head)
        .chain(chain.iter().copied())
        .enumerate()
        .map(move |(i, (a, l))| (a, l, if i < n { XDP_PKT_CONTD } else { 0 }))
}

const _: () = assert!(MAX_FRAGS <= u8::MAX as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::MAX_CONTS;

    const C: u32 = XDP_PKT_CONTD;

    #[test]
    fn a_chain_across_two_rx_batches_is_one_packet() {
        let (mut p, mut b, mut freed) = (Partial::default(), Batch::default(), Vec::new());
        assert_eq!(
            p.take((0, 100, 0), 3, &mut b, |a| freed.push(a)),
            Step::Packet
        );
        assert_eq!(
            p.take((2048, 1792, C), 3, &mut b, |a| freed.push(a)),
            Step::More
        );
        assert_eq!(
            p.take((4096, 1792, C), 3, &mut b, |a| freed.push(a)),
            Step::More
        );
        // The RX batch ends here; the next one brings the last frame.
        let mut b2 = Batch::default();
        assert_eq!(
            p.take((6144, 500, 0), 3, &mut b2, |a| freed.push(a)),
            Step::Packet
        );
        assert!(freed.is_empty());
        assert_eq!(b.len(), 1);
        assert_eq!((b.descs()[0].addr, b.descs()[0].tail), (0, 0));
        let d = b2.descs()[0];
        assert_eq!(
            (d.addr, d.len, d.tail, d.frags, d.in_slot),
            (2048, 1792, 2292, 2, 3)
        );
        assert_eq!(d.total(), 1792 + 1792 + 500);
        assert_eq!(b2.chain(0), &[(4096, 1792), (6144, 500)]);
    }

    #[test]
    fn a_chain_longer_than_a_packet_may_be_is_dropped_whole() {
        let (mut p, mut b, mut freed) = (Partial::default(), Batch::default(), Vec::new());
        let frames = MAX_FRAGS as u64 + 2;
        for i in 0..frames {
            let opt = if i + 1 < frames { C } else { 0 };
            let s = p.take((i * 2048, 1792, opt), 1, &mut b, |a| freed.push(a));
            assert_eq!(
                s,
                if i + 1 < frames {
                    Step::More
                } else {
                    Step::TooLong
                }
            );
        }
        freed.sort_unstable();
        assert_eq!(freed, (0..frames).map(|i| i * 2048).collect::<Vec<_>>());
        assert!(b.is_empty());
        // Exactly MAX_FRAGS frames is a packet.
        for i in 0..MAX_FRAGS as u64 {
            let opt = if i + 1 < MAX_FRAGS as u64 { C } else { 0 };
            p.take((i * 2048, 100, opt), 1, &mut b, |_| panic!("nothing freed"));
        }
        assert_eq!(b.len(), 1);
        assert_eq!(b.chain(0).len(), MAX_CONTS);
        assert_eq!(b.descs()[0].total(), 100 * MAX_FRAGS as u32);
    }

    #[test]
    fn a_chain_cut_short_gives_its_frames_back() {
        let (mut p, mut b, mut freed) = (Partial::default(), Batch::default(), Vec::new());
        p.take((0, 1792, C), 1, &mut b, |_| {});
        p.take((2048, 1792, C), 1, &mut b, |_| {});
        assert!(p.abandon(|a| freed.push(a)));
        assert_eq!(freed, vec![0, 2048]);
        assert!(!p.abandon(|_| panic!("nothing left")));
    }

    #[test]
    fn tx_descriptors_flag_all_but_the_last() {
        let v: Vec<_> = tx_descs((100, 60), &[(2048, 10), (4096, 20)]).collect();
        assert_eq!(v, vec![(100, 60, C), (2048, 10, C), (4096, 20, 0)]);
        let v: Vec<_> = tx_descs((100, 60), &[]).collect();
        assert_eq!(v, vec![(100, 60, 0)]);
    }
}
