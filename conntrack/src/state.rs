//! Flow states and their transitions: a TCP state machine, and pseudo-states for UDP and ICMP.

use serde::Serialize;

/// Lifetimes in seconds. Defaults are Cilium's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lifetimes {
    /// An established TCP connection.
    pub tcp_established: u32,
    /// A TCP connection being opened (SYN seen, not yet established).
    pub tcp_syn: u32,
    /// A TCP connection being closed (FIN or RST seen).
    pub tcp_close: u32,
    /// Anything but TCP.
    pub non_tcp: u32,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            tcp_established: 21600,
            tcp_syn: 60,
            tcp_close: 10,
            non_tcp: 60,
        }
    }
}

/// A flow's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum State {
    /// TCP: SYN from the originator.
    SynSent = 1,
    /// TCP: SYN-ACK from the responder.
    SynRecv = 2,
    /// TCP: handshake done (or picked up mid-stream).
    Established = 3,
    /// TCP: one side sent FIN.
    FinWait = 4,
    /// TCP: both sides sent FIN.
    TimeWait = 5,
    /// TCP: reset.
    Closed = 6,
    /// UDP/ICMP: only the originator has sent.
    New = 7,
    /// UDP/ICMP: the other side answered.
    Replied = 8,
}

impl State {
    /// From the stored byte.
    pub fn from_u8(b: u8) -> Option<State> {
        Some(match b {
            1 => State::SynSent,
            2 => State::SynRecv,
            3 => State::Established,
            4 => State::FinWait,
            5 => State::TimeWait,
            6 => State::Closed,
            7 => State::New,
            8 => State::Replied,
            _ => return None,
        })
    }

    /// How long a flow in this state lives without traffic.
    pub fn lifetime(self, l: &Lifetimes) -> u32 {
        match self {
            State::SynSent | State::SynRecv => l.tcp_syn,
            State::Established => l.tcp_established,
            State::FinWait | State::TimeWait | State::Closed => l.tcp_close,
            State::New | State::Replied => l.non_tcp,
        }
    }
}

/// TCP flag bits as in the header.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Flag combinations no real stack sends: SYN with FIN or RST, FIN without ACK, or no flags.
pub fn tcp_flags_invalid(f: u8) -> bool {
    use tcp_flags::*;
    f & (SYN | FIN | RST | ACK) == 0
        || f & SYN != 0 && f & (FIN | RST) != 0
        || f & FIN != 0 && f & ACK == 0
}

/// The state of a new TCP flow whose first packet has `flags` (valid ones). A first packet that
/// is no SYN is a connection picked up mid-stream (after a restart), taken as established.
pub fn tcp_first(flags: u8) -> State {
    use tcp_flags::*;
    if flags & RST != 0 {
        State::Closed
    } else if flags & SYN != 0 && flags & ACK == 0 {
        State::SynSent
    } else {
        State::Established
    }
}

/// The next state of a TCP flow for a packet with `flags`, sent by the originator (`reply`
/// false) or the responder.
pub fn tcp_next(s: State, reply: bool, flags: u8) -> State {
    use tcp_flags::*;
    if flags & RST != 0 {
        return State::Closed;
    }
    match s {
        State::SynSent if reply && flags & SYN != 0 && flags & ACK != 0 => State::SynRecv,
        State::SynSent if flags & SYN != 0 => State::SynSent, // retransmitted SYN
        State::SynSent if reply && flags & ACK != 0 => State::Established, // simultaneous/odd stacks
        State::SynRecv if !reply && flags & ACK != 0 && flags & SYN == 0 => {
            next_closing(State::Established, flags)
        }
        State::SynRecv => State::SynRecv,
        State::Established => next_closing(State::Established, flags),
        State::FinWait if flags & FIN != 0 => State::TimeWait,
        State::FinWait => State::FinWait,
        State::TimeWait => State::TimeWait,
        // A SYN after a close opens the port anew.
        State::Closed if flags & SYN != 0 && flags & ACK == 0 && !reply => State::SynSent,
        State::Closed => State::Closed,
        other => other,
    }
}

fn next_closing(s: State, flags: u8) -> State {
    if flags & tcp_flags::FIN != 0 {
        State::FinWait
    } else {
        s
    }
}

/// The next pseudo-state of a UDP or ICMP flow.
pub fn other_next(s: State, reply: bool) -> State {
    if reply {
        State::Replied
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::*;
    use super::*;

    #[test]
    fn three_way_handshake_and_close() {
        let mut s = tcp_first(SYN);
        assert_eq!(s, State::SynSent);
        s = tcp_next(s, true, SYN | ACK);
        assert_eq!(s, State::SynRecv);
        s = tcp_next(s, false, ACK);
        assert_eq!(s, State::Established);
        s = tcp_next(s, false, ACK | 0x08);
        assert_eq!(s, State::Established);
        s = tcp_next(s, false, FIN | ACK);
        assert_eq!(s, State::FinWait);
        s = tcp_next(s, true, ACK);
        assert_eq!(s, State::FinWait);
        s = tcp_next(s, true, FIN | ACK);
        assert_eq!(s, State::TimeWait);
    }

    #[test]
    fn rst_closes_from_anywhere() {
        for s in [
            State::SynSent,
            State::SynRecv,
            State::Established,
            State::FinWait,
        ] {
            assert_eq!(tcp_next(s, true, RST), State::Closed);
        }
        assert_eq!(tcp_first(RST | ACK), State::Closed);
    }

    #[test]
    fn nonsense_flags_are_invalid() {
        assert!(tcp_flags_invalid(0));
        assert!(tcp_flags_invalid(SYN | FIN));
        assert!(tcp_flags_invalid(SYN | RST));
        assert!(tcp_flags_invalid(FIN));
        assert!(tcp_flags_invalid(0x29)); // FIN|PSH|URG, the "xmas" scan
        for ok in [SYN, SYN | ACK, ACK, FIN | ACK, RST, RST | ACK, ACK | 0x08] {
            assert!(!tcp_flags_invalid(ok), "{ok:#x}");
        }
    }

    #[test]
    fn lifetimes_follow_cilium_defaults() {
        let l = Lifetimes::default();
        assert_eq!(State::Established.lifetime(&l), 21600);
        assert_eq!(State::SynSent.lifetime(&l), 60);
        assert_eq!(State::TimeWait.lifetime(&l), 10);
        assert_eq!(State::Replied.lifetime(&l), 60);
    }

    proptest::proptest! {
        /// Whatever packets arrive, a flow never leaves the TCP states, and a RST always closes.
        #[test]
        fn tcp_stays_in_tcp_states(first in 0u8..=0x3f, pkts in proptest::collection::vec((proptest::bool::ANY, 0u8..=0x3f), 0..40)) {
            proptest::prop_assume!(!tcp_flags_invalid(first));
            let mut s = tcp_first(first);
            for (reply, f) in pkts {
                if tcp_flags_invalid(f) { continue; }
                s = tcp_next(s, reply, f);
                proptest::prop_assert!(!matches!(s, State::New | State::Replied));
                if f & RST != 0 { proptest::prop_assert_eq!(s, State::Closed); }
            }
        }
    }
}
