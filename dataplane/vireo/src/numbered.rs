//! A bounded log of values numbered from 1 as they come in, the oldest dropped first: what the
//! agent keeps for clients that each read from their own cursor (`vireo observe`'s flows,
//! `vireo monitor`'s events).

use std::collections::VecDeque;

pub(crate) struct Numbered<T> {
    ring: VecDeque<(u64, T)>,
    cap: usize,
    /// The number of the newest value (0: none yet).
    newest: u64,
    /// Values dropped to make room for newer ones.
    overwritten: u64,
}

impl<T> Numbered<T> {
    /// A log of at most `cap` values (0: none kept, none numbered).
    pub(crate) fn new(cap: usize) -> Self {
        Numbered {
            ring: VecDeque::with_capacity(cap.min(1 << 16)),
            cap,
            newest: 0,
            overwritten: 0,
        }
    }

    pub(crate) fn push(&mut self, v: T) {
        if self.cap == 0 {
            return;
        }
        if self.ring.len() == self.cap {
            self.ring.pop_front();
            self.overwritten += 1;
        }
        self.newest += 1;
        self.ring.push_back((self.newest, v));
    }

    /// The number of the newest value (0: none yet).
    pub(crate) fn newest(&self) -> u64 {
        self.newest
    }

    /// Values dropped to make room for newer ones.
    pub(crate) fn overwritten(&self) -> u64 {
        self.overwritten
    }

    /// The most values kept.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// The values numbered after `after`, oldest first.
    pub(crate) fn after(&self, after: u64) -> impl Iterator<Item = &(u64, T)> {
        self.ring.iter().skip_while(move |e| e.0 <= after)
    }

    /// The number of the oldest value kept (the next one's when none is).
    pub(crate) fn oldest(&self) -> u64 {
        self.ring.front().map_or(self.newest + 1, |e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_values_and_drops_the_oldest() {
        let mut n = Numbered::new(3);
        assert_eq!((n.newest(), n.oldest()), (0, 1));
        for v in 10..15 {
            n.push(v);
        }
        assert_eq!((n.newest(), n.oldest(), n.overwritten()), (5, 3, 2));
        let after: Vec<_> = n.after(3).copied().collect();
        assert_eq!(after, vec![(4, 13), (5, 14)]);
        assert_eq!(n.after(0).count(), 3);
        let mut off = Numbered::new(0);
        off.push(1);
        assert_eq!((off.newest(), off.after(0).count(), off.cap()), (0, 0, 0));
    }
}
