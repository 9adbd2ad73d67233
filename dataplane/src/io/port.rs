//! One AF_XDP socket bound to an `(interface, queue)`, with its four rings.
//!
//! Its public operations work on descriptors only (frame addresses and lengths, plain
//! integers): they move them between a caller's free list and the rings, or from one ring to
//! another, and never make a reference to frame memory (see the `io` module doc).

use std::num::NonZeroU32;
use std::time::Duration;

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, User};

use super::umem::AfXdpMode;
use super::IoError;

const XDP_COPY: u16 = 1 << 1;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
/// Multi-buffer: a frame larger than one UMEM frame arrives (and may leave) as a chain of
/// descriptors (kernel 6.6+; the first socket of a UMEM sets it for all).
const XDP_USE_SG: u16 = 1 << 4;
/// In a descriptor's `options`: more descriptors of the same packet follow (every descriptor
/// of a multi-buffer packet but the last carries it).
pub const XDP_PKT_CONTD: u32 = 1;
const SOL_XDP: libc::c_int = 283;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

/// RX and TX descriptor ring sizes (powers of two).
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    /// RX ring entries.
    pub rx: u32,
    /// TX ring entries.
    pub tx: u32,
}

/// What to bind.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// Interface name.
    pub ifname: String,
    /// Rx queue index.
    pub queue: u32,
    /// The interface's slot in the tables and the XSKMAP.
    pub slot: u16,
    /// Ring sizes.
    pub rings: RingSizes,
}

/// A bound socket: fill/completion rings of its device queue plus its own RX/TX rings.
pub struct Port {
    /// Interface slot.
    pub slot: u16,
    /// Rx queue index.
    pub queue: u32,
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub ifname: String,
    /// Copy or zero-copy, as the kernel reports it.
    pub mode: AfXdpMode,
    /// Bound into a UMEM with multi-buffer (XDP_USE_SG) on.
    pub multi_buffer: bool,
    pub(crate) fq: DeviceQueue,
    pub(crate) rx: RingRx,
    pub(crate) tx: RingTx,
    /// TX ring entries.
    tx_size: u32,
    // Keeps the socket configuration alive for as long as the rings.
    _user: User,
    // The flags of a bind retried without multi-buffer (no rings of its own).
    _fallback: Option<User>,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("slot", &self.slot)
            .field("fd", &self.fd())
            .field("mode", &self.mode)
            .finish()
    }
}

impl Port {
    pub(super) fn bind(
        umem: &Umem,
        info: &IfInfo,
        spec: &PortSpec,
        first: bool,
        zero_copy: bool,
        multi_buffer: bool,
    ) -> Result<Port, IoError> {
        let what = |step: &str| format!("AF_XDP {step} on {} queue {}", spec.ifname, spec.queue);
        for (name, v) in [("rx", spec.rings.rx), ("tx", spec.rings.tx)] {
            if !v.is_power_of_two() {
                return Err(IoError::Invalid(format!(
                    "{name} ring size {v} must be a power of two"
                )));
            }
        }
        let sock = if first {
            Socket::with_shared(info, umem)
        } else {
            Socket::new(info)
        }
        .map_err(|e| IoError::sys(what("socket"), e.get_raw()))?;
        let fq = umem.fq_cq(&sock).map_err(|e| {
            IoError::sys(
                what("fill/completion rings (queue already bound?)"),
                e.get_raw(),
            )
        })?;
        // The first socket sets the mode, need_wakeup and multi-buffer for the whole UMEM;
        // later sockets must bind with flags 0 and inherit them.
        let base_flags = match (first, zero_copy) {
            (false, _) => 0,
            (true, true) => XDP_USE_NEED_WAKEUP,
            (true, false) => XDP_USE_NEED_WAKEUP | XDP_COPY,
        };
        let want_sg = first && multi_buffer;
        let cfg = SocketConfig {
            rx_size: NonZeroU32::new(spec.rings.rx),
            tx_size: NonZeroU32::new(spec.rings.tx),
            bind_flags: base_flags | if want_sg { XDP_USE_SG } else { 0 },
        };
        let user = umem
            .rx_tx(&sock, &cfg)
            .map_err(|e| IoError::sys(what("rx/tx rings"), e.get_raw()))?;
        let mut sg = !first && multi_buffer;
        let mut fallback = None;
        let bound = match bind_with_retry(umem, &user) {
            Ok(()) => {
                sg |= want_sg;
                Ok(())
            }
            // A kernel before 6.6 (EINVAL: unknown flag) or a zero-copy driver without
            // multi-buffer (EOPNOTSUPP): bind again without it, on the same socket and rings (a
            // failed bind leaves the socket unbound). The second `User` configures no ring; it
            // only carries the flags.
            Err(errno) if want_sg && (errno == libc::EINVAL || errno == libc::EOPNOTSUPP) => {
                tracing::warn!(
                    ifname = %spec.ifname,
                    queue = spec.queue,
                    error = %std::io::Error::from_raw_os_error(errno),
                    "AF_XDP multi-buffer (XDP_USE_SG) refused; binding without it: frames larger than a UMEM frame are dropped by the kernel (af_xdp.multi_buffer)"
                );
                let plain = SocketConfig {
                    rx_size: None,
                    tx_size: None,
                    bind_flags: base_flags,
                };
                let u = umem
                    .rx_tx(&sock, &plain)
                    .map_err(|e| IoError::sys(what("rebind without multi-buffer"), e.get_raw()))?;
                let r = bind_with_retry(umem, &u);
                fallback = Some(u);
                r
            }
            Err(errno) => Err(errno),
        };
        bound.map_err(|errno| {
            let hint = if errno == libc::EOPNOTSUPP {
                " (this UMEM is zero-copy and the interface cannot do zero-copy: set af_xdp.zero_copy: false)"
            } else {
                ""
            };
            IoError::sys(format!("{}{hint}", what("bind")), errno)
        })?;
        let rx = user
            .map_rx()
            .map_err(|e| IoError::sys(what("mmap rx"), e.get_raw()))?;
        let tx = user
            .map_tx()
            .map_err(|e| IoError::sys(what("mmap tx"), e.get_raw()))?;
        let mode = query_mode(user.as_raw_fd());
        Ok(Port {
            slot: spec.slot,
            queue: spec.queue,
            ifindex: info.ifindex(),
            ifname: spec.ifname.clone(),
            mode,
            multi_buffer: sg,
            fq,
            rx,
            tx,
            tx_size: spec.rings.tx,
            _user: user,
            _fallback: fallback,
        })
    }

    /// The socket's file descriptor, for the XSKMAP.
    pub fn fd(&self) -> i32 {
        self.rx.as_raw_fd()
    }

    /// Wakes the kernel to send what the TX ring holds; copy mode sends at most 32 frames a
    /// call, so this repeats while frames remain, a bounded number of times.
    /// Stops early when a wakeup moved nothing (the device pushes back): the frames stay on
    /// the ring for the next kick.
    pub fn kick_tx(&mut self) {
        for _ in 0..8 {
            let before = self.tx.pending();
            if before == 0 || !self.tx.needs_wakeup() {
                break;
            }
            self.tx.wake();
            if self.tx.pending() >= before {
                break;
            }
        }
    }

    /// Moves up to `want` frames from `free` (taken from its end) into the fill ring, calling
    /// `on_put` for each; returns how many went in. Frames that do not fit stay in `free`.
    pub fn refill(&mut self, free: &mut Vec<u64>, want: u32, mut on_put: impl FnMut(u64)) -> u32 {
        let mut w = self.fq.fill(want);
        let mut put = 0;
        while put < w.capacity() {
            let Some(addr) = free.pop() else { break };
            if !w.insert_once(addr) {
                free.push(addr);
                break;
            }
            on_put(addr);
            put += 1;
        }
        w.commit();
        put
    }

    /// Frames on the TX ring the kernel has not taken yet.
    pub fn tx_pending(&self) -> u32 {
        self.tx.pending()
    }

    /// Takes up to `max` completed TX frames off the completion ring (one release), calling
    /// `each` with every address; returns how many were taken.
    #[inline]
    pub fn complete(&mut self, max: u32, mut each: impl FnMut(u64)) -> u32 {
        let mut c = self.fq.complete(max);
        let mut n = 0;
        while let Some(addr) = c.read() {
            each(addr);
            n += 1;
        }
        c.release();
        n
    }

    /// Puts up to `want` frames from `free` (taken from its end) on the TX ring with one commit,
    /// each as a descriptor of `len` bytes; returns how many went on. Frames that do not fit
    /// stay in `free`. The TX ring is not kicked ([`Port::kick_tx`]).
    #[inline]
    pub fn transmit_from(&mut self, free: &mut Vec<u64>, len: u32, want: u32) -> u32 {
        let mut w = self.tx.transmit(want);
        let mut put = 0;
        while put < w.capacity() {
            let Some(addr) = free.pop() else { break };
            if !w.insert_once(XdpDesc {
                addr,
                len,
                options: 0,
            }) {
                free.push(addr);
                break;
            }
            put += 1;
        }
        w.commit();
        put
    }

    /// Moves up to `max` received descriptors from this socket's RX ring straight onto `to`'s
    /// TX ring, unchanged (one reservation and one commit on each ring; no copy of frame data,
    /// which stays where the kernel wrote it, in the UMEM both sockets share). A descriptor that
    /// does not fit on `to`'s TX ring goes to `unsent` (its frame is the caller's again).
    /// Returns `(received, sent)`. `to` is not kicked ([`Port::kick_tx`]).
    #[inline]
    pub fn forward_to(
        &mut self,
        to: &mut Port,
        max: u32,
        mut unsent: impl FnMut(u64),
    ) -> (u32, u32) {
        let mut rx = self.rx.receive(max);
        let n = rx.capacity();
        if n == 0 {
            return (0, 0);
        }
        let mut tx = to.tx.transmit(n);
        let room = tx.capacity();
        let mut sent = 0;
        while let Some(desc) = rx.read() {
            let out = XdpDesc {
                addr: desc.addr,
                len: desc.len,
                options: 0,
            };
            if sent < room && tx.insert_once(out) {
                sent += 1;
            } else {
                unsent(desc.addr);
            }
        }
        tx.commit();
        rx.release();
        (n, sent)
    }

    /// Puts descriptors `(addr, len, options)` on the TX ring; returns how many went on (the
    /// rest stay with the caller). A multi-buffer packet (every descriptor but its last with
    /// [`XDP_PKT_CONTD`]) goes on whole or not at all: what is put on always ends with a
    /// packet's last descriptor, so the kernel never sees half a chain. The TX ring is not
    /// kicked, so the kernel reads nothing of it before the caller's [`Port::kick_tx`].
    #[inline]
    pub(crate) fn push_tx_batch(&mut self, frames: &[(u64, u32, u32)]) -> usize {
        // The room is taken from the kernel's consumer index, read now: xdpilone re-reads it
        // only when its cached view says the ring is full, so a reservation can come back
        // short while the ring has room (and a chain longer than that stale view would never
        // fit). This socket is the ring's only producer, so the room can only grow meanwhile:
        // the reservations below get all of `fit`, the first one or a second after its
        // cached view ran out.
        let room = self.tx_size.saturating_sub(self.tx.pending()) as usize;
        let fit = whole_packets(frames, room);
        let mut sent = 0;
        for _ in 0..3 {
            let rest = &frames[sent..fit];
            if rest.is_empty() {
                break;
            }
            let mut w = self.tx.transmit(rest.len() as u32);
            let n =
                w.insert(
                    rest.iter()
                        .map(|&(addr, len, options)| XdpDesc { addr, len, options }),
                );
            w.commit();
            sent += n as usize;
        }
        // `sent == fit` while this socket is the ring's only producer (what went on is on
        // the ring, whatever it is: the caller must not free it).
        sent
    }
}

/// How many of `descs` fit in `room` descriptors without splitting a packet: the longest
/// prefix of at most `room` that ends with a descriptor without [`XDP_PKT_CONTD`].
#[inline]
pub(crate) fn whole_packets(descs: &[(u64, u32, u32)], room: usize) -> usize {
    let n = room.min(descs.len());
    if n == descs.len() && descs.last().is_none_or(|d| d.2 & XDP_PKT_CONTD == 0) {
        return n;
    }
    descs[..n]
        .iter()
        .rposition(|d| d.2 & XDP_PKT_CONTD == 0)
        .map_or(0, |i| i + 1)
}

fn bind_with_retry(umem: &Umem, user: &User) -> Result<(), i32> {
    let mut delay = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    loop {
        match umem.bind(user) {
            Ok(()) => return Ok(()),
            Err(e) if e.get_raw() == libc::EBUSY && waited < Duration::from_secs(5) => {
                tracing::debug!(?delay, "AF_XDP bind: queue busy, retrying");
                std::thread::sleep(delay);
                waited += delay;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(e.get_raw()),
        }
    }
}

fn query_mode(fd: i32) -> AfXdpMode {
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: XDP_OPTIONS writes one `struct xdp_options { __u32 flags; }` into `flags`, whose
    // size we pass in `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    if rc == 0 && flags & XDP_OPTIONS_ZEROCOPY != 0 {
        AfXdpMode::ZeroCopy
    } else {
        AfXdpMode::Copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u32 = XDP_PKT_CONTD;

    #[test]
    fn a_chain_goes_on_the_ring_whole_or_not_at_all() {
        // Two single frames, then a chain of three, then one more.
        let d = [
            (0, 60, 0),
            (1, 60, 0),
            (2, 1792, C),
            (3, 1792, C),
            (4, 100, 0),
            (5, 60, 0),
        ];
        assert_eq!(whole_packets(&d, 6), 6);
        assert_eq!(whole_packets(&d, 9), 6);
        assert_eq!(whole_packets(&d, 5), 5);
        // Room for part of the chain only: it waits (or is dropped) whole.
        assert_eq!(whole_packets(&d, 4), 2);
        assert_eq!(whole_packets(&d, 3), 2);
        assert_eq!(whole_packets(&d, 2), 2);
        assert_eq!(whole_packets(&d, 1), 1);
        assert_eq!(whole_packets(&d, 0), 0);
        assert_eq!(whole_packets(&d[2..], 2), 0);
        // A chain without its end never goes on.
        assert_eq!(whole_packets(&d[..4], 4), 2);
    }
}
