//! The AF_XDP I/O ceiling: a minimal cross-connect forwarder and a TX-only traffic generator,
//! for `vireo bench`. Neither parses a frame.
//!
//! - [`Xconnect`]: one UMEM, two sockets (interface A queue Q, interface B queue Q). Frames
//!   received on A are sent unchanged on B and the other way round, in batches of [`BATCH`];
//!   TX completions go back to a free list that refills both fill rings. It has the same rings,
//!   wakeups and UMEM as a Vireo worker and none of its work (no pipeline, no tables, no frame
//!   ownership tags), so the rate it reaches is what AF_XDP itself allows on this path.
//! - [`TxGen`]: one socket that sends the same frame over and over from every UMEM frame.
//!
//! The steering program is not attached here: the caller puts [`Xconnect::fds`] into the XSKMAP
//! and attaches the program to both interfaces. Every loop is bounded by a stop flag and a time
//! limit.
//!
//! Both work on descriptors only, through [`Port`]'s public operations: neither ever holds a
//! reference to frame memory (the generator's frames are written by
//! [`SharedUmem::with_template`] before its socket is bound). This crate has no `unsafe` code.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vireo_dataplane::io::{sys, IoError, Port, PortSpec, RingSizes, SharedUmem, UmemSpec};
use vireo_dataplane::pipeline::BATCH;

/// How often (in loop iterations) the time limit is checked.
const CLOCK_EVERY: u64 = 1024;

/// What [`Xconnect`] binds.
#[derive(Debug, Clone)]
pub struct XconnectSpec {
    /// Interface A.
    pub a: String,
    /// Interface B.
    pub b: String,
    /// The rx queue bound on both.
    pub queue: u32,
    /// UMEM shape (one UMEM shared by both sockets).
    pub umem: UmemSpec,
    /// RX/TX ring sizes of each socket.
    pub rings: RingSizes,
    /// Spin when idle; otherwise sleep in `poll()` like a worker with `busy_poll: false`.
    pub busy_poll: bool,
}

/// Counters of an [`Xconnect`] run; index 0 is interface A, 1 is B.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XconnectStats {
    /// Frames received per interface.
    pub rx: [u64; 2],
    /// Frames put on each interface's TX ring.
    pub tx: [u64; 2],
    /// Frames dropped because the TX ring of that interface was full.
    pub tx_full: [u64; 2],
    /// Loop iterations.
    pub loops: u64,
    /// Iterations that received nothing.
    pub idle_loops: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// A two-port AF_XDP cross-connect in one UMEM.
pub struct Xconnect {
    // Field order: the sockets go before the UMEM they are bound into.
    ports: [Port; 2],
    umem: SharedUmem,
    frame_mask: u64,
    free: Vec<u64>,
    in_fill: [u32; 2],
    outstanding: [u32; 2],
    fill_target: u32,
    busy_poll: bool,
    pollfds: [libc::pollfd; 2],
}

impl std::fmt::Debug for Xconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xconnect")
            .field("ports", &self.ports)
            .field("free", &self.free.len())
            .field("in_fill", &self.in_fill)
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

impl Xconnect {
    /// Maps the UMEM, binds A then B into it (A's socket registers the UMEM; B shares it) and
    /// fills both fill rings. Frames are steered to the sockets only once the caller has put
    /// [`Xconnect::fds`] into the XSKMAP and attached the program.
    pub fn new(spec: &XconnectSpec) -> Result<Self, IoError> {
        if spec.a == spec.b {
            return Err(IoError::Invalid(format!(
                "cross-connect needs two interfaces, got {} twice",
                spec.a
            )));
        }
        let umem = SharedUmem::new(spec.umem)?;
        let bind = |ifname: &str, slot: u16| {
            umem.bind(&PortSpec {
                ifname: ifname.to_owned(),
                queue: spec.queue,
                slot,
                rings: spec.rings,
            })
        };
        let a = bind(&spec.a, 0)?;
        let b = bind(&spec.b, 1)?;
        let fs = u64::from(spec.umem.frame_size);
        let free = (0..u64::from(spec.umem.frames))
            .rev()
            .map(|i| i * fs)
            .collect();
        // A quarter of the UMEM in each fill ring; the other half carries frames in flight.
        let fill_target = (spec.umem.frames / 4).clamp(1, spec.umem.fill_size);
        let pollfds = [a.fd(), b.fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let mut x = Xconnect {
            busy_poll: spec.busy_poll,
            pollfds,
            ports: [a, b],
            umem,
            frame_mask: !(fs - 1),
            free,
            in_fill: [0; 2],
            outstanding: [0; 2],
            fill_target,
        };
        x.refill();
        Ok(x)
    }

    /// The sockets' fds for the XSKMAP: `[A, B]`.
    pub fn fds(&self) -> [i32; 2] {
        [self.ports[0].fd(), self.ports[1].fd()]
    }

    /// The bound sockets: `[A, B]`.
    pub fn ports(&self) -> &[Port; 2] {
        &self.ports
    }

    /// Its UMEM.
    pub fn umem(&self) -> &SharedUmem {
        &self.umem
    }

    /// Forwards on the pinned core until `stop` is set or `limit` has passed. When a loop finds
    /// nothing it spins (`busy_poll`) or sleeps in `poll()` for at most 10 ms.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        pin: &[usize],
        limit: Duration,
    ) -> Result<XconnectStats, IoError> {
        sys::pin_current_thread(pin)?;
        let start = Instant::now();
        let mut st = XconnectStats::default();
        for i in 0..u64::MAX {
            if stop.load(Ordering::Relaxed) || (i % CLOCK_EVERY == 0 && start.elapsed() >= limit) {
                break;
            }
            let got = self.forward(0, &mut st) + self.forward(1, &mut st);
            self.reap();
            self.refill();
            st.loops += 1;
            if got == 0 {
                st.idle_loops += 1;
                if self.busy_poll {
                    std::hint::spin_loop();
                } else {
                    sys::poll_readable(&mut self.pollfds, 10);
                }
            }
        }
        st.elapsed = start.elapsed();
        Ok(st)
    }

    /// Moves up to one batch from port `src`'s RX ring to the other port's TX ring and kicks it.
    /// Returns frames received.
    fn forward(&mut self, src: usize, st: &mut XconnectStats) -> u32 {
        let dst = 1 - src;
        let [a, b] = &mut self.ports;
        let (s, d) = if src == 0 { (a, b) } else { (b, a) };
        let (free, mask) = (&mut self.free, self.frame_mask);
        let (n, sent) = s.forward_to(d, BATCH as u32, |addr| free.push(addr & mask));
        if n == 0 {
            return 0;
        }
        d.kick_tx();
        self.in_fill[src] = self.in_fill[src].saturating_sub(n);
        self.outstanding[dst] += sent;
        st.rx[src] += u64::from(n);
        st.tx[dst] += u64::from(sent);
        st.tx_full[dst] += u64::from(n - sent);
        n
    }

    /// Takes completed TX frames back; re-kicks a TX ring the kernel has not drained.
    fn reap(&mut self) {
        for (p, port) in self.ports.iter_mut().enumerate() {
            if self.outstanding[p] == 0 {
                continue;
            }
            if port.tx_pending() > 0 {
                port.kick_tx();
            }
            let (free, mask) = (&mut self.free, self.frame_mask);
            let done = port.complete(self.outstanding[p], |addr| free.push(addr & mask));
            self.outstanding[p] -= done;
        }
    }

    /// Tops both fill rings up to the target from the free list.
    fn refill(&mut self) {
        for (p, port) in self.ports.iter_mut().enumerate() {
            let want = self
                .fill_target
                .saturating_sub(self.in_fill[p])
                .min(self.free.len() as u32);
            if want == 0 {
                continue;
            }
            let put = port.refill(&mut self.free, want, |_| {});
            self.in_fill[p] += put;
        }
    }
}

/// What [`TxGen`] binds.
#[derive(Debug, Clone)]
pub struct TxGenSpec {
    /// Interface to send on.
    pub ifname: String,
    /// Queue to bind.
    pub queue: u32,
    /// UMEM shape; keep `frames` at most `completion_size` so the kernel never finds the
    /// completion ring full.
    pub umem: UmemSpec,
    /// TX ring size (the RX ring is the minimum; nothing is received).
    pub tx_ring: u32,
}

/// Counters of a [`TxGen`] run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxGenStats {
    /// Frames put on the TX ring.
    pub queued: u64,
    /// Frames the kernel completed (sent, or dropped by the device).
    pub completed: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// A TX-only AF_XDP generator: every UMEM frame holds the same frame, sent over and over.
pub struct TxGen {
    // Field order: the socket goes before the UMEM.
    port: Port,
    umem: SharedUmem,
    frame_mask: u64,
    len: u32,
    free: Vec<u64>,
    outstanding: u32,
}

impl std::fmt::Debug for TxGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxGen")
            .field("port", &self.port)
            .field("len", &self.len)
            .field("free", &self.free.len())
            .finish()
    }
}

impl TxGen {
    /// Maps the UMEM, writes `frame` into every frame of it and binds the socket.
    pub fn new(spec: &TxGenSpec, frame: &[u8]) -> Result<Self, IoError> {
        let fs = spec.umem.frame_size;
        if frame.is_empty() || frame.len() > fs as usize {
            return Err(IoError::Invalid(format!(
                "generator frame of {} bytes does not fit a {fs}-byte UMEM frame",
                frame.len()
            )));
        }
        // Every frame holds `frame`, written before the socket is bound.
        let umem = SharedUmem::with_template(spec.umem, frame)?;
        let fs = u64::from(fs);
        let free: Vec<u64> = (0..u64::from(spec.umem.frames))
            .rev()
            .map(|i| i * fs)
            .collect();
        let port = umem.bind(&PortSpec {
            ifname: spec.ifname.clone(),
            queue: spec.queue,
            slot: 0,
            rings: RingSizes {
                rx: 64,
                tx: spec.tx_ring,
            },
        })?;
        Ok(TxGen {
            port,
            umem,
            frame_mask: !(fs - 1),
            len: frame.len() as u32,
            free,
            outstanding: 0,
        })
    }

    /// The bound socket.
    pub fn port(&self) -> &Port {
        &self.port
    }

    /// Its UMEM.
    pub fn umem(&self) -> &SharedUmem {
        &self.umem
    }

    /// Sends, busy, on the pinned core until `stop` is set or `limit` has passed. `completed`
    /// is kept up to date with the frames completed so far, for sampling the rate from another
    /// thread.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        pin: &[usize],
        limit: Duration,
        completed: &AtomicU64,
    ) -> Result<TxGenStats, IoError> {
        sys::pin_current_thread(pin)?;
        let start = Instant::now();
        let mut st = TxGenStats::default();
        for i in 0..u64::MAX {
            if stop.load(Ordering::Relaxed) || (i % CLOCK_EVERY == 0 && start.elapsed() >= limit) {
                break;
            }
            // Completions.
            if self.outstanding > 0 {
                let (free, mask) = (&mut self.free, self.frame_mask);
                let done = self
                    .port
                    .complete(self.outstanding, |addr| free.push(addr & mask));
                self.outstanding -= done;
                st.completed += u64::from(done);
                completed.store(st.completed, Ordering::Relaxed);
            }
            // One batch onto the TX ring.
            let n = (self.free.len() as u32).min(BATCH as u32);
            if n > 0 {
                let put = self.port.transmit_from(&mut self.free, self.len, n);
                self.outstanding += put;
                st.queued += u64::from(put);
            }
            // Copy mode: a sendto per at most 32 frames.
            self.port.kick_tx();
        }
        st.elapsed = start.elapsed();
        Ok(st)
    }
}
