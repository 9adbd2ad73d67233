//! AF_XDP I/O on the `xdpilone` crate: the UMEM, the sockets bound into it, and the system calls
//! around them. This module holds all of the fast path's `unsafe` code.
//!
//! # Soundness
//!
//! A UMEM is memory shared with the kernel: a frame whose address sits on a fill ring or a TX
//! ring (or in the kernel between them) may be written or read by the kernel at any moment. A
//! Rust reference to such a frame, or two `&mut` to one frame, would be undefined behaviour.
//! The public API makes both impossible from safe code:
//!
//! - **No reference to frame memory leaves this crate.** [`SharedUmem`] hands out no slice of
//!   its frames. The view that does, `UmemFrames` (`SharedUmem::frames`), is crate-private, and
//!   only a worker's loop makes one, for the UMEM it owns, asking only for the frames of its
//!   current batch: frames it took off an RX ring and has not yet put on a fill or TX ring
//!   (the worker tags every frame with its holder and hands each to at most one ring). Each
//!   `&mut [u8]` borrows the view mutably, so two never coexist.
//! - **A worker's UMEM and sockets never leave the worker.** [`crate::worker::WorkerHandle`]
//!   gives out neither its UMEM nor its [`Port`]s, only narrow operations (bind a socket and
//!   hand it over, anchor on `lo`); so no code outside the worker can put one of its frames on
//!   a ring while the worker holds a reference to it.
//! - **Public socket operations move descriptors, not memory.** [`Port`]'s public methods
//!   ([`Port::forward_to`], [`Port::transmit_from`], [`Port::refill`], [`Port::complete`],
//!   [`Port::kick_tx`]) move integer frame addresses between a caller's free list and the
//!   rings, or from one ring to another; none creates a reference to frame memory. The kernel
//!   checks every descriptor against the UMEM's bounds, so a wrong address costs a dropped or
//!   lost frame (`tx_invalid`, a leak), never memory safety.
//! - **Frames with fixed contents are written before anyone can see them.**
//!   [`SharedUmem::with_template`] writes a TX-only sender's frame into every UMEM frame
//!   between mapping the memory and registering it, through a raw pointer into the fresh
//!   private mapping.
//!
//! - **A shared-memory segment is seen only through atomics.** [`segment::Segment`] maps a file
//!   (the conntrack table another process adopts) and hands out `'static` slices of atomics
//!   and of conntrack slots (themselves only atomics) over it, only while borrowed for
//!   `'static`, so the mapping outlives every view.
//!
//! Every `unsafe` block states the rest of its argument in a `// SAFETY:` comment (the crate
//! denies `clippy::undocumented_unsafe_blocks`).

mod port;
pub mod segment;
pub mod sys;
mod umem;

pub use port::{Port, PortSpec, RingSizes, XDP_PKT_CONTD};
pub use umem::{AfXdpMode, SharedUmem, UmemSpec};

/// Errors of the I/O layer.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A bad parameter.
    #[error("{0}")]
    Invalid(String),
}

impl IoError {
    pub(crate) fn sys(what: impl Into<String>, errno: i32) -> Self {
        IoError::Sys {
            what: what.into(),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }
    /// The errno behind a system-call error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IoError::Sys { source, .. } => source.raw_os_error(),
            IoError::Invalid(_) => None,
        }
    }
}
