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
    /// A TCP connection being closed: both sides have sent FIN, or a RST was seen. A
    /// half-closed connection (FIN from one side only) keeps `tcp_established`.
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
    /// TCP: the originator has sent FIN, the responder not yet (half-closed; Cilium's
    /// `tx_closing`). Lives as long as an established connection.
    FinWait = 4,
    /// TCP: both sides have sent FIN (`tx_closing` and `rx_closing`): the close lifetime.
    TimeWait = 5,
    /// TCP: reset.
    Closed = 6,
    /// UDP/ICMP: only the originator has sent.
    New = 7,
    /// UDP/ICMP: the other side answered.
    Replied = 8,
    /// TCP: the responder has sent FIN, the originator not yet (half-closed; Cilium's
    /// `rx_closing`). Lives as long as an established connection.
    FinWaitReply = 9,
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
            9 => State::FinWaitReply,
            _ => return None,
        })
    }

    /// How long a flow in this state lives without traffic. The close lifetime applies once
    /// both directions have sent FIN, or after a RST; a half-closed connection lives as an
    /// established one (its open direction may still send for a long time).
    pub fn lifetime(self, l: &Lifetimes) -> u32 {
        match self {
            State::SynSent | State::SynRecv => l.tcp_syn,
            State::Established | State::FinWait | State::FinWaitReply => l.tcp_established,
            State::TimeWait | State::Closed => l.tcp_close,
            State::New | State::Replied => l.non_tcp,
        }
    }

    /// Which directions have closed, as Cilium's (`tx_closing`, `rx_closing`): the originator
    /// sent FIN (or RST), the responder sent FIN (or RST). A RST closes both.
    pub fn closing(self) -> (bool, bool) {
        match self {
            State::FinWait => (true, false),
            State::FinWaitReply => (false, true),
            State::TimeWait | State::Closed => (true, true),
            _ => (false, false),
        }
    }

    /// The state to store when a packet computed `next` from an older read of the flow while
    /// the entry now holds `cur` (two workers updating one flow at once): the closing
    /// directions of both are kept (one worker's FIN is not lost to the other's ACK), and a
    /// RST stays final. Anything else (a reopening SYN, handshake steps, UDP) is `next`.
    pub(crate) fn merge(cur: State, next: State) -> State {
        use State::*;
        let settled = |s: State| matches!(s, Established | FinWait | FinWaitReply | TimeWait);
        if cur == next || !settled(next) || !(settled(cur) || cur == Closed) {
            return next;
        }
        if cur == Closed {
            return Closed;
        }
        let ((a, b), (x, y)) = (cur.closing(), next.closing());
        match (a || x, b || y) {
            (false, false) => Established,
            (true, false) => FinWait,
            (false, true) => FinWaitReply,
            (true, true) => TimeWait,
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
/// is no SYN is a connection picked up mid-stream (after a restart), taken as established (as
/// half-closed by its originator if that packet is a FIN).
pub fn tcp_first(flags: u8) -> State {
    use tcp_flags::*;
    if flags & RST != 0 {
        State::Closed
    } else if flags & SYN != 0 && flags & ACK == 0 {
        State::SynSent
    } else if flags & FIN != 0 {
        State::FinWait
    } else {
        State::Established
    }
}

/// The next state of a TCP flow for a packet with `flags`, sent by the originator (`reply`
/// false) or the responder.
///
/// Closing is tracked per direction, as Cilium's `tx_closing`/`rx_closing`: a FIN from the
/// originator gives [`State::FinWait`], one from the responder [`State::FinWaitReply`] (both
/// half-closed, with the established lifetime); the other side's FIN then gives
/// [`State::TimeWait`] (the close lifetime). A RST closes both directions ([`State::Closed`]).
/// A SYN without ACK from the originator on a closing or closed entry reopens it
/// ([`State::SynSent`], closing cleared): the port is reused by a new connection.
pub fn tcp_next(s: State, reply: bool, flags: u8) -> State {
    use tcp_flags::*;
    if flags & RST != 0 {
        return State::Closed;
    }
    let fin = flags & FIN != 0;
    match s {
        State::SynSent if reply && flags & SYN != 0 && flags & ACK != 0 => State::SynRecv,
        State::SynSent if flags & SYN != 0 => State::SynSent, // retransmitted SYN
        State::SynSent if reply && flags & ACK != 0 => {
            closing(State::Established, reply, fin) // simultaneous/odd stacks
        }
        State::SynRecv if !reply && flags & ACK != 0 && flags & SYN == 0 => {
            closing(State::Established, reply, fin)
        }
        State::SynRecv => State::SynRecv,
        State::Established => closing(State::Established, reply, fin),
        s if tcp_reopens(s, reply, flags) => State::SynSent,
        State::FinWait | State::FinWaitReply | State::TimeWait => closing(s, reply, fin),
        State::Closed => State::Closed,
        other => other,
    }
}

/// Whether a TCP packet with `flags`, from the originator (`reply` false) or the responder,
/// reopens a flow in state `s`: a SYN without ACK (nor RST) from the originator on a closing
/// or closed flow, whose port a new connection reuses ([`tcp_next`] gives [`State::SynSent`]).
/// The kernel's conntrack takes such a SYN as a new connection's, and Cilium judges a reopened
/// flow as a new one.
pub fn tcp_reopens(s: State, reply: bool, flags: u8) -> bool {
    use tcp_flags::*;
    !reply
        && flags & (SYN | ACK | RST) == SYN
        && matches!(
            s,
            State::FinWait | State::FinWaitReply | State::TimeWait | State::Closed
        )
}

/// `s` after a packet from the originator (`reply` false) or the responder, with FIN or not.
fn closing(s: State, reply: bool, fin: bool) -> State {
    if !fin {
        return s;
    }
    let (tx, rx) = s.closing();
    match (tx || !reply, rx || reply) {
        (true, true) => State::TimeWait,
        (true, false) => State::FinWait,
        (false, true) => State::FinWaitReply,
        (false, false) => s,
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
            State::FinWaitReply,
            State::TimeWait,
        ] {
            assert_eq!(tcp_next(s, true, RST), State::Closed);
            assert_eq!(tcp_next(s, false, RST | ACK), State::Closed);
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
        assert_eq!(State::Closed.lifetime(&l), 10);
        // Half-closed: one direction still sends.
        assert_eq!(State::FinWait.lifetime(&l), 21600);
        assert_eq!(State::FinWaitReply.lifetime(&l), 21600);
        assert_eq!(State::Replied.lifetime(&l), 60);
    }

    #[test]
    fn closing_is_tracked_per_direction() {
        let e = State::Established;
        assert_eq!(tcp_next(e, false, FIN | ACK), State::FinWait);
        assert_eq!(tcp_next(e, true, FIN | ACK), State::FinWaitReply);
        // The same side's FIN again (a retransmission) closes nothing more.
        assert_eq!(tcp_next(State::FinWait, false, FIN | ACK), State::FinWait);
        assert_eq!(
            tcp_next(State::FinWaitReply, true, FIN | ACK),
            State::FinWaitReply
        );
        // The other side's FIN closes both.
        assert_eq!(tcp_next(State::FinWait, true, FIN | ACK), State::TimeWait);
        assert_eq!(
            tcp_next(State::FinWaitReply, false, FIN | ACK),
            State::TimeWait
        );
        // Data and ACKs keep a half-closed flow half-closed.
        assert_eq!(tcp_next(State::FinWait, true, ACK | 0x08), State::FinWait);
        assert_eq!(
            tcp_next(State::FinWaitReply, false, ACK),
            State::FinWaitReply
        );
        // The handshake's last ACK carrying a FIN half-closes.
        assert_eq!(tcp_next(State::SynRecv, false, FIN | ACK), State::FinWait);
        assert_eq!(tcp_first(FIN | ACK), State::FinWait);
        assert_eq!(State::FinWait.closing(), (true, false));
        assert_eq!(State::FinWaitReply.closing(), (false, true));
        assert_eq!(State::Closed.closing(), (true, true));
        assert_eq!(State::Established.closing(), (false, false));
    }

    #[test]
    fn an_originators_syn_reopens_closing_and_closed_flows() {
        for s in [
            State::FinWait,
            State::FinWaitReply,
            State::TimeWait,
            State::Closed,
        ] {
            assert_eq!(tcp_next(s, false, SYN), State::SynSent, "{s:?}");
            assert!(tcp_reopens(s, false, SYN), "{s:?}");
            assert!(!tcp_reopens(s, true, SYN) && !tcp_reopens(s, false, SYN | ACK));
            assert!(!tcp_reopens(s, false, SYN | RST), "{s:?}");
            // Not from the responder, and not a SYN-ACK.
            assert_ne!(tcp_next(s, true, SYN), State::SynSent, "{s:?}");
            assert_ne!(tcp_next(s, false, SYN | ACK), State::SynSent, "{s:?}");
        }
        // An open flow's retransmitted SYN does not restart it.
        assert_eq!(tcp_next(State::Established, false, SYN), State::Established);
        for s in [State::SynSent, State::SynRecv, State::Established] {
            assert!(!tcp_reopens(s, false, SYN), "{s:?}");
        }
    }

    #[test]
    fn merge_keeps_both_directions_closing() {
        use State::*;
        assert_eq!(State::merge(FinWait, FinWaitReply), TimeWait);
        assert_eq!(State::merge(FinWaitReply, FinWait), TimeWait);
        assert_eq!(State::merge(FinWait, Established), FinWait);
        assert_eq!(State::merge(TimeWait, Established), TimeWait);
        assert_eq!(State::merge(Closed, Established), Closed);
        assert_eq!(State::merge(Closed, SynSent), SynSent, "a SYN reopens");
        assert_eq!(State::merge(TimeWait, SynSent), SynSent);
        assert_eq!(State::merge(SynSent, SynRecv), SynRecv);
        assert_eq!(State::merge(New, Replied), Replied);
        assert_eq!(State::merge(Established, Established), Established);
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

        /// A direction once closing stays closing, unless an originator's SYN reopens the flow.
        #[test]
        fn closing_is_monotone_until_a_syn(first in 0u8..=0x3f, pkts in proptest::collection::vec((proptest::bool::ANY, 0u8..=0x3f), 0..40)) {
            proptest::prop_assume!(!tcp_flags_invalid(first));
            let mut s = tcp_first(first);
            for (reply, f) in pkts {
                if tcp_flags_invalid(f) { continue; }
                let n = tcp_next(s, reply, f);
                let ((a, b), (x, y)) = (s.closing(), n.closing());
                if n != State::SynSent {
                    proptest::prop_assert!((!a || x) && (!b || y), "{:?} -> {:?}", s, n);
                    // merge agrees with a single worker's sequence.
                    proptest::prop_assert_eq!(State::merge(s, n), n);
                }
                s = n;
            }
        }
    }
}
