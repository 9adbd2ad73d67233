//! Small system interfaces: capabilities, memlock, CPU pinning, interface facts, poll.

use std::ffi::CString;
use std::path::Path;

use super::IoError;

const CAP_IPC_LOCK: u32 = 14;

/// Checks that `bytes` of UMEM can be registered: either CAP_IPC_LOCK is held (then UMEM is not
/// charged to memlock) or RLIMIT_MEMLOCK is large enough. The error is one line saying what to
/// grant.
pub fn check_memlock(bytes: u64) -> Result<(), String> {
    if has_capability(CAP_IPC_LOCK) {
        return Ok(());
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the valid pointer we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc == 0 && (lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= bytes) {
        return Ok(());
    }
    Err(format!(
        "AF_XDP needs {} KiB of locked memory for its UMEM but the memlock limit is {} KiB and CAP_IPC_LOCK is not held: grant CAP_IPC_LOCK (securityContext.capabilities.add: [IPC_LOCK]) or raise RLIMIT_MEMLOCK (ulimit -l {})",
        bytes / 1024,
        lim.rlim_cur / 1024,
        bytes.div_ceil(1024)
    ))
}

/// Whether the effective capability set holds `cap` (read from /proc/self/status).
pub fn has_capability(cap: u32) -> bool {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << cap) != 0)
}

/// Pins the calling thread to `cores`.
pub fn pin_current_thread(cores: &[usize]) -> Result<(), IoError> {
    if cores.is_empty() {
        return Ok(());
    }
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cores {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(IoError::Invalid(format!("core {c} is beyond CPU_SETSIZE")));
        }
        // SAFETY: `c` is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(IoError::sys(
            format!("pinning to cores {cores:?}"),
            last_errno(),
        ));
    }
    Ok(())
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> Result<u32, IoError> {
    let c =
        CString::new(name).map_err(|_| IoError::Invalid(format!("bad interface name {name:?}")))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(IoError::sys(format!("interface {name}"), last_errno()));
    }
    Ok(idx)
}

/// The MAC address of interface `name`.
pub fn mac(name: &str) -> Result<[u8; 6], IoError> {
    let path = format!("/sys/class/net/{name}/address");
    let s = std::fs::read_to_string(&path).map_err(|e| IoError::Sys {
        what: format!("reading {path}"),
        source: e,
    })?;
    parse_mac(s.trim())
        .ok_or_else(|| IoError::Invalid(format!("{path}: not a MAC address: {}", s.trim())))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The MTU of interface `name`.
pub fn mtu(name: &str) -> Option<u16> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Turns off tx checksum offload on `name` (`ethtool -K NAME tx off`, through the
/// `SIOCETHTOOL` ioctl): AF_XDP copy mode loses the kernel's CHECKSUM_PARTIAL state, so a
/// veth whose traffic the dataplane forwards must send complete checksums.
pub fn tx_checksum_off(name: &str) -> Result<(), IoError> {
    /// `ETHTOOL_STXCSUM`.
    const STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(IoError::Invalid(format!("bad interface name {name:?}")));
    }
    let mut value = EthtoolValue {
        cmd: STXCSUM,
        data: 0,
    };
    // SAFETY: an all-zero `ifreq` is a valid value (plain integers and pointers).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: plain socket creation, no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(IoError::sys("socket for SIOCETHTOOL", last_errno()));
    }
    // SAFETY: `req` names the interface and points at `value`, both alive for the call; the
    // kernel reads `cmd`/`data` from it for ETHTOOL_STXCSUM.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut req) };
    let errno = last_errno();
    // SAFETY: `fd` is the socket opened above, closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(IoError::sys(format!("tx checksum off on {name}"), errno));
    }
    Ok(())
}

/// Number of rx queues of interface `name` (from sysfs; 1 when unknown).
pub fn rx_queues(name: &str) -> u32 {
    let dir = Path::new("/sys/class/net").join(name).join("queues");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// Waits until one of `fds` is readable or `timeout_ms` passes. Returns how many are ready.
pub fn poll_readable(fds: &mut [libc::pollfd], timeout_ms: i32) -> usize {
    if fds.is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(timeout_ms.max(0) as u64));
        return 0;
    }
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of the given length.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    rc.max(0) as usize
}

/// Moves the calling thread into the network namespace open as `ns` (a /run/netns file).
pub fn setns_net(ns: &std::fs::File) -> Result<(), IoError> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns reads only its arguments: an fd that `ns` keeps open across the call, and a
    // flag. It switches the calling thread's network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(IoError::sys("setns", last_errno()));
    }
    Ok(())
}

/// Sends `sig` to process `pid` (a child of ours, not yet reaped).
pub fn signal(pid: u32, sig: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; it only names a process and a signal.
    unsafe { libc::kill(pid, sig) };
}

/// Makes the child that `cmd` starts receive `sig` when the thread that started it exits
/// (PR_SET_PDEATHSIG, which survives `ip netns exec`'s exec: no set-uid is involved).
pub fn signal_child_on_parent_death(cmd: &mut std::process::Command, sig: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }

    #[test]
    fn loopback_facts() {
        assert!(ifindex("lo").is_ok());
        assert!(ifindex("no-such-if0").is_err());
        assert_eq!(rx_queues("lo"), 1);
    }
}
