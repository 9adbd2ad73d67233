//! The UMEM: one memory area per worker, shared by all of its sockets (XDP_SHARED_UMEM), so a
//! frame received on one interface is sent on another without a copy in userspace.

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Mutex;

use xdpilone::{IfInfo, Umem, UmemConfig};

use super::port::{Port, PortSpec, RingSizes};
use super::IoError;
use crate::pipeline::Frames;

/// Shape of a worker's UMEM.
#[derive(Debug, Clone, Copy)]
pub struct UmemSpec {
    /// Number of frames.
    pub frames: u32,
    /// Bytes per frame: a power of two from 2048 to the page size.
    pub frame_size: u32,
    /// Fill and completion ring size of every device queue.
    pub fill_size: u32,
    /// Completion ring size.
    pub completion_size: u32,
    /// Ask the kernel for zero-copy on the first bind (it falls back to copy by itself).
    pub zero_copy: bool,
}

impl UmemSpec {
    /// Bytes of memory the UMEM occupies.
    pub fn bytes(&self) -> u64 {
        u64::from(self.frames) * u64::from(self.frame_size)
    }

    fn validate(&self) -> Result<(), IoError> {
        let page = page_size();
        if !self.frame_size.is_power_of_two()
            || self.frame_size < 2048
            || self.frame_size as usize > page
        {
            return Err(IoError::Invalid(format!(
                "frame_size {} must be a power of two from 2048 to the page size ({page})",
                self.frame_size
            )));
        }
        if self.frames < 64 {
            return Err(IoError::Invalid(format!(
                "umem frames {} must be at least 64",
                self.frames
            )));
        }
        for (name, v) in [
            ("fill", self.fill_size),
            ("completion", self.completion_size),
        ] {
            if !v.is_power_of_two() {
                return Err(IoError::Invalid(format!(
                    "{name} ring size {v} must be a power of two"
                )));
            }
        }
        Ok(())
    }
}

/// Which copy mode the UMEM's sockets use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfXdpMode {
    /// The driver writes frames straight into the UMEM.
    ZeroCopy,
    /// The kernel copies frames into and out of the UMEM.
    Copy,
}

impl AfXdpMode {
    /// Name for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            AfXdpMode::ZeroCopy => "zero-copy",
            AfXdpMode::Copy => "copy",
        }
    }
}

/// An anonymous mapping holding the frames.
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

impl Region {
    fn map(len: usize) -> Result<Self, IoError> {
        // SAFETY: anonymous private mapping with no address hint; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(IoError::sys(
                format!("mapping {len} bytes of UMEM"),
                super::sys::last_errno(),
            ));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| IoError::Invalid("mmap returned NULL".into()))?;
        Ok(Region { ptr, len })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `map`, unmapped once here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A worker's UMEM and the socket that registered it.
///
/// The first bound socket anchors the UMEM: later sockets bind with XDP_SHARED_UMEM against it,
/// and the kernel refuses that once the anchor is unbound. The anchor is therefore bound to an
/// interface that outlives pods: the uplink when the node has one, else `lo` (no XDP program is
/// attached to `lo`, so no traffic reaches that socket).
pub struct SharedUmem {
    umem: Umem,
    spec: UmemSpec,
    // Field order: the rings and sockets go before the memory they point into.
    anchor: Mutex<Option<Port>>,
    anchored: Mutex<bool>,
    /// Ask for multi-buffer (XDP_USE_SG) on the first bind ([`SharedUmem::set_multi_buffer`]).
    want_sg: std::sync::atomic::AtomicBool,
    /// Whether the first bind got it (the UMEM's sockets inherit it).
    sg: std::sync::atomic::AtomicBool,
    region: Region,
}

// SAFETY: `xdpilone::Umem` holds a raw pointer to the region and is therefore not Send/Sync.
// The methods used through `&SharedUmem` (`fq_cq`, `rx_tx`, `bind`) only issue socket system
// calls and update xdpilone's internally synchronised device registry; they never touch frame
// memory. Frame memory is reached only through `UmemFrames`, by the one worker that owns the
// frames it touches.
unsafe impl Send for SharedUmem {}
// SAFETY: see `Send`; the mutable state here (`anchor`, `anchored`) is behind mutexes.
unsafe impl Sync for SharedUmem {}

impl SharedUmem {
    /// Maps and registers a UMEM.
    pub fn new(spec: UmemSpec) -> Result<Self, IoError> {
        spec.validate()?;
        let region = Region::map(Self::len(&spec)?)?;
        Self::register(spec, region)
    }

    /// Maps a UMEM, writes `template` at the start of every frame, then registers it: a TX-only
    /// sender's frames, written once. The frames are written before the UMEM is registered and
    /// before any socket can be bound into it, so neither the kernel nor anyone else sees them
    /// half-written, and no reference to frame memory is handed out.
    pub fn with_template(spec: UmemSpec, template: &[u8]) -> Result<Self, IoError> {
        spec.validate()?;
        if template.is_empty() || template.len() > spec.frame_size as usize {
            return Err(IoError::Invalid(format!(
                "template frame of {} bytes does not fit a {}-byte UMEM frame",
                template.len(),
                spec.frame_size
            )));
        }
        let region = Region::map(Self::len(&spec)?)?;
        let fs = spec.frame_size as usize;
        for i in 0..spec.frames as usize {
            // SAFETY: frame `i` spans `i * fs .. (i + 1) * fs`, inside the `frames * frame_size`
            // bytes just mapped (`i < frames`), and `template.len() <= fs` (checked above). The
            // mapping is fresh and private: it is not registered with the kernel yet and no
            // reference into it exists, so this write races with nothing. `template` is caller
            // memory and cannot overlap the new mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    template.as_ptr(),
                    region.ptr.as_ptr().add(i * fs),
                    template.len(),
                );
            }
        }
        Self::register(spec, region)
    }

    fn len(spec: &UmemSpec) -> Result<usize, IoError> {
        usize::try_from(spec.bytes()).map_err(|_| IoError::Invalid("UMEM too large".into()))
    }

    fn register(spec: UmemSpec, region: Region) -> Result<Self, IoError> {
        let len = region.len;
        let cfg = UmemConfig {
            fill_size: spec.fill_size,
            complete_size: spec.completion_size,
            frame_size: spec.frame_size,
            headroom: 0,
            flags: 0,
        };
        let area = NonNull::slice_from_raw_parts(region.ptr, len);
        // SAFETY: `area` is a page-aligned private mapping of `len` bytes that lives in `region`,
        // which this struct keeps (and drops last).
        let umem = unsafe { Umem::new(cfg, area) }
            .map_err(|e| IoError::sys("registering the UMEM (XDP_UMEM_REG)", e.get_raw()))?;
        Ok(SharedUmem {
            umem,
            spec,
            anchor: Mutex::new(None),
            anchored: Mutex::new(false),
            want_sg: std::sync::atomic::AtomicBool::new(false),
            sg: std::sync::atomic::AtomicBool::new(false),
            region,
        })
    }

    /// Its shape.
    pub fn spec(&self) -> UmemSpec {
        self.spec
    }

    /// Asks for multi-buffer (XDP_USE_SG, kernel 6.6+) when the first socket is bound: a frame
    /// larger than one UMEM frame then arrives as a chain of descriptors instead of being
    /// dropped by the kernel. If the kernel refuses it (EINVAL, EOPNOTSUPP), the socket binds
    /// without it and a warning is logged. No effect once a socket is bound.
    pub fn set_multi_buffer(&self, on: bool) {
        self.want_sg.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the UMEM's sockets are bound with multi-buffer.
    pub fn multi_buffer(&self) -> bool {
        self.sg.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Binds `lo` queue 0 as the anchor unless something is bound already.
    pub fn anchor_on_loopback(&self) -> Result<(), IoError> {
        if *self.anchored.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(());
        }
        let spec = PortSpec {
            ifname: "lo".into(),
            queue: 0,
            slot: u16::MAX,
            rings: RingSizes { rx: 64, tx: 64 },
        };
        let port = self.bind(&spec)?;
        *self.anchor.lock().unwrap_or_else(|e| e.into_inner()) = Some(port);
        Ok(())
    }

    /// Creates and binds a socket for `(interface, queue)` into this UMEM, retrying EBUSY with
    /// back-off (after a restart the kernel frees a queue with a delay). The first socket bound
    /// becomes the anchor.
    pub fn bind(&self, spec: &PortSpec) -> Result<Port, IoError> {
        let mut anchored = self.anchored.lock().unwrap_or_else(|e| e.into_inner());
        let mut info = IfInfo::invalid();
        let name = std::ffi::CString::new(spec.ifname.as_str())
            .map_err(|_| IoError::Invalid(format!("bad interface name {:?}", spec.ifname)))?;
        info.from_name(CStr::from_bytes_with_nul(name.as_bytes_with_nul()).unwrap_or(c"lo"))
            .map_err(|e| IoError::sys(format!("interface {}", spec.ifname), e.get_raw()))?;
        info.set_queue(spec.queue);
        let first = !*anchored;
        let sg = if first {
            self.want_sg.load(std::sync::atomic::Ordering::Relaxed)
        } else {
            self.multi_buffer()
        };
        let port = Port::bind(&self.umem, &info, spec, first, self.spec.zero_copy, sg)?;
        if first {
            self.sg
                .store(port.multi_buffer, std::sync::atomic::Ordering::Relaxed);
        }
        *anchored = true;
        Ok(port)
    }

    /// The frame memory, for the worker that owns this UMEM and every socket bound into it.
    ///
    /// Crate-private on purpose: the returned view hands out `&mut [u8]` to frames by address,
    /// which is sound only if the caller asks for frames it holds (taken off an RX ring and not
    /// yet put on a fill or TX ring) and for no frame twice at once. Only the worker's loop
    /// calls it, on the frames of its current batch (see the `io` module doc).
    pub(crate) fn frames(&self) -> UmemFrames<'_> {
        UmemFrames {
            base: self.region.ptr,
            len: self.region.len,
            frame_mask: u64::from(self.spec.frame_size) - 1,
            _umem: std::marker::PhantomData,
        }
    }
}

/// Access to the frames of a [`SharedUmem`] by address. Only the worker that owns the UMEM
/// creates one, and it only asks for frames it holds (received and not yet given back).
pub(crate) struct UmemFrames<'a> {
    base: NonNull<u8>,
    len: usize,
    frame_mask: u64,
    _umem: std::marker::PhantomData<&'a SharedUmem>,
}

impl Frames for UmemFrames<'_> {
    #[inline]
    fn frame(&mut self, addr: u64, len: u32) -> Option<&mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len as usize)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `start..end` lies inside the mapped region (checked above), which outlives
        // `'a`. The worker only asks for frames it owns (taken from its RX ring and not yet put
        // on a fill or TX ring), so neither the kernel nor another borrow touches these bytes
        // while the returned slice is alive (it borrows `self` mutably).
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len as usize) })
    }

    #[inline]
    fn headroom(&self, addr: u64) -> usize {
        (addr & self.frame_mask) as usize
    }

    #[inline]
    fn room(&self, addr: u64) -> usize {
        (self.frame_mask + 1 - (addr & self.frame_mask)) as usize
    }
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Frames;

    fn spec() -> UmemSpec {
        UmemSpec {
            frames: 64,
            frame_size: 2048,
            fill_size: 64,
            completion_size: 64,
            zero_copy: false,
        }
    }

    #[test]
    fn with_template_writes_every_frame() {
        let t: Vec<u8> = (0..60u8).collect();
        let u = SharedUmem::with_template(spec(), &t)
            .expect("UMEM (needs CAP_IPC_LOCK or a memlock limit of 128 KiB)");
        let mut f = u.frames();
        for i in 0..64u64 {
            let frame = f.frame(i * 2048, 2048).expect("frame in range");
            assert_eq!(&frame[..60], &t[..], "frame {i}");
            assert!(
                frame[60..].iter().all(|&b| b == 0),
                "frame {i} past the template"
            );
        }
    }

    #[test]
    fn with_template_refuses_what_does_not_fit() {
        assert!(matches!(
            SharedUmem::with_template(spec(), &[]),
            Err(IoError::Invalid(_))
        ));
        assert!(matches!(
            SharedUmem::with_template(spec(), &[0; 2049]),
            Err(IoError::Invalid(_))
        ));
    }
}
