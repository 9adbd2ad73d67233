//! A shared-memory segment: a file mapped `MAP_SHARED` that outlives the process, so the next
//! agent process maps the same pages (the conntrack table, `<state_dir>/conntrack`). The file
//! is held with an exclusive `flock` for the process's life: a new process waits (bounded)
//! until the old one has exited and released it, so two processes never write one table.
//!
//! Views of the memory ([`Segment::conntrack_region`]) need a `&'static Segment` (leaked: the
//! table holds them for the process's life), so a mapping with views is never unmapped; a
//! segment dropped without any is unmapped and unlocked. The kernel releases both at exit.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use vireo_conntrack::table::region::{Layout, Region, HEADER_BYTES};
use vireo_conntrack::table::Slot;

use super::IoError;

/// How long [`Segment::open`] waits for another process to release the file by default.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// A mapped, locked file.
pub struct Segment {
    path: PathBuf,
    /// Held open: the `flock` lives with the descriptor.
    _file: File,
    base: *mut u8,
    len: usize,
    /// How long the file was before it was sized (0: new).
    found: usize,
    /// How long the lock took.
    waited: Duration,
}

// SAFETY: the segment is a pointer to a shared mapping that lives as long as the process;
// every access to its memory goes through atomics (the `'static` views handed out are slices
// of atomics), so moving or sharing the handle between threads is sound.
unsafe impl Send for Segment {}
// SAFETY: as above: shared access is only through atomics.
unsafe impl Sync for Segment {}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("found", &self.found)
            .finish()
    }
}

fn err(what: String) -> impl FnOnce(std::io::Error) -> IoError {
    move |source| IoError::Sys { what, source }
}

impl Segment {
    /// Opens (creating it, mode 0600, with its directory) and locks `path`, waiting up to
    /// `lock_wait` for another process to release it, sizes it to `bytes` (allocating its
    /// blocks, so a full tmpfs fails here and not later with SIGBUS) and maps it shared.
    pub fn open(path: &Path, bytes: usize, lock_wait: Duration) -> Result<Segment, IoError> {
        if bytes == 0 || !bytes.is_multiple_of(4096) {
            return Err(IoError::Invalid(format!(
                "segment size {bytes} is not a positive multiple of 4096"
            )));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err(format!("creating {}", dir.display())))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(err(format!("opening {}", path.display())))?;
        let waited = lock(&file, path, lock_wait)?;
        let found = file
            .metadata()
            .map_err(err(format!("reading {}", path.display())))?
            .len() as usize;
        if found != bytes {
            file.set_len(bytes as u64)
                .map_err(err(format!("sizing {} to {bytes} bytes", path.display())))?;
        }
        // SAFETY: fallocate on our open descriptor, over the file's own length; it writes no
        // memory of ours.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(IoError::Sys {
                    what: format!("allocating {bytes} bytes for {}", path.display()),
                    source: e,
                });
            }
        }
        // SAFETY: a new shared mapping of `bytes` bytes of our file (sized above), at an
        // address the kernel picks; nothing else refers to that range yet.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(IoError::Sys {
                what: format!("mapping {}", path.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Segment {
            path: path.to_owned(),
            _file: file,
            base: base.cast(),
            len: bytes,
            found: found.min(bytes),
            waited,
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: the size is checked at open).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How long the file was before it was sized (0: created now). A file shorter than its
    /// layout was truncated and is not adopted.
    pub fn found(&self) -> usize {
        self.found
    }

    /// How long taking the lock took (the previous process still held it meanwhile).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// `count` words at byte offset `at`, for the process's life.
    fn words(&'static self, at: usize, count: usize) -> Result<&'static [AtomicU64], IoError> {
        self.check(at, count * 8, 8)?;
        // SAFETY: the range is inside the mapping (checked), 8-aligned (the mapping is
        // page-aligned and `at` is checked), and the mapping lives as long as the process:
        // `self` is borrowed for 'static, so it is never dropped (and never unmapped). Any bit pattern is
        // a valid AtomicU64, and all access through the slice is atomic, so the other process
        // that may share the file (only ever one at a time: `flock`) cannot cause a data race
        // in the Rust sense.
        Ok(unsafe { std::slice::from_raw_parts(self.base.add(at).cast::<AtomicU64>(), count) })
    }

    fn check(&self, at: usize, bytes: usize, align: usize) -> Result<(), IoError> {
        let end = at.checked_add(bytes);
        if !at.is_multiple_of(align) || end.is_none_or(|e| e > self.len) {
            return Err(IoError::Invalid(format!(
                "segment {}: {bytes} bytes at {at} (alignment {align}) do not fit its {} bytes",
                self.path.display(),
                self.len
            )));
        }
        Ok(())
    }

    /// The conntrack table's region laid out as `layout` in this segment.
    pub fn conntrack_region(&'static self, layout: &Layout) -> Result<Region, IoError> {
        let header = self.words(0, HEADER_BYTES / 8)?;
        let tags = self.words(layout.tags_offset, layout.buckets)?;
        let slot_bytes = std::mem::size_of::<Slot>();
        self.check(
            layout.slots_offset,
            layout.slots * slot_bytes,
            std::mem::align_of::<Slot>(),
        )?;
        // SAFETY: the range is inside the mapping and aligned for `Slot` (checked: the mapping
        // is page-aligned, the offset a multiple of its 64-byte alignment); the mapping lives
        // as long as the process (see `words`). `Slot` is `repr(C)` and made only of atomics,
        // so every bit pattern is a valid `Slot` and all access to it is atomic. The range
        // does not overlap the header and tag views (the layout puts it after them).
        let slots = unsafe {
            std::slice::from_raw_parts(
                self.base.add(layout.slots_offset).cast::<Slot>(),
                layout.slots,
            )
        };
        Region::new(layout, header, tags, slots).map_err(|e| IoError::Invalid(e.to_string()))
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `len` bytes; no view of it exists (views borrow the
        // segment for 'static, so a segment that has any is never dropped).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Takes an exclusive `flock` on `file`, retrying every 20 ms for up to `wait`.
fn lock(file: &File, path: &Path, wait: Duration) -> Result<Duration, IoError> {
    let start = Instant::now();
    loop {
        // SAFETY: flock on our open descriptor; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(start.elapsed());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(IoError::Sys {
                what: format!("locking {}", path.display()),
                source: e,
            });
        }
        if start.elapsed() >= wait {
            return Err(IoError::Invalid(format!(
                "{} is still locked by another process after {wait:?}",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vireo_conntrack::{Config, Dir, Key, ManualClock, NewEntry, State, Table};

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vireo-seg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn cfg() -> Config {
        Config {
            max_tcp: 500,
            max_other: 100,
            ..Default::default()
        }
    }

    fn key(i: u32) -> Key {
        Key {
            src: 0x0a00_0001,
            dst: 0x0a00_0002,
            sport: 1000 + i as u16,
            dport: 80,
            proto: 6,
            dir: Dir::Egress,
        }
    }

    fn table(path: &Path) -> (Table, vireo_conntrack::Adoption) {
        let l = Layout::for_config(&cfg());
        let seg: &'static Segment = Box::leak(Box::new(
            Segment::open(path, l.bytes.next_multiple_of(4096), LOCK_WAIT).unwrap(),
        ));
        let r = seg.conntrack_region(&l).unwrap();
        let c = Arc::new(ManualClock::default());
        Table::in_region(cfg(), r, seg.found(), 100, |_| c)
    }

    #[test]
    fn a_table_in_a_file_is_adopted_by_the_next_mapping_and_a_truncated_file_is_not() {
        let d = dir("adopt");
        let p = d.join("conntrack");
        let (t, a) = table(&p);
        assert!(!a.adopted);
        for i in 0..20 {
            t.insert(
                &key(i),
                NewEntry {
                    state: State::Established,
                    identity: 7,
                    nat: None,
                    bytes: 60,
                },
            )
            .unwrap();
        }
        // What the next process finds: the file's content (a copy, since the first segment
        // is leaked with its lock held, as a running process holds it).
        drop(t);
        let q = d.join("conntrack.copy");
        std::fs::copy(&p, &q).unwrap();
        let (t2, a2) = table(&q);
        assert!(a2.adopted, "{a2:?}");
        assert_eq!(a2.tcp, 20);
        assert!(t2.lookup(&key(3)).is_some());

        let q = d.join("conntrack.short");
        std::fs::copy(&p, &q).unwrap();
        let f = OpenOptions::new().write(true).open(&q).unwrap();
        f.set_len(8192).unwrap();
        drop(f);
        let (t3, a3) = table(&q);
        assert!(!a3.adopted);
        assert!(
            a3.reason.as_deref().unwrap().starts_with("truncated"),
            "{a3:?}"
        );
        assert_eq!(t3.counts(), (0, 0));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_locked_file_is_waited_for_then_refused() {
        let d = dir("lock");
        let p = d.join("seg");
        let first = Segment::open(&p, 4096, LOCK_WAIT).unwrap();
        let t = Instant::now();
        let e = Segment::open(&p, 4096, Duration::from_millis(200)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(e.to_string().contains("still locked"), "{e}");
        // Released (the holder closed it): the next open takes it at once.
        drop(first);
        let again = Segment::open(&p, 4096, Duration::from_millis(200)).unwrap();
        assert_eq!(again.found(), 4096);
        assert!(again.waited() < Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_bad_size_is_an_error() {
        let d = dir("size");
        assert!(Segment::open(&d.join("x"), 100, LOCK_WAIT).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
