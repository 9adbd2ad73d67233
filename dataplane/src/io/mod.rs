//! AF_XDP I/O on the `xdpilone` crate: the UMEM, the sockets bound into it, and the system calls
//! around them. This module holds all of the fast path's `unsafe` code.

mod port;
pub mod sys;
mod umem;
pub mod xconnect;

pub use port::{Port, PortSpec, RingSizes};
pub use umem::{AfXdpMode, SharedUmem, UmemFrames, UmemSpec};

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
