//! The bench's own network namespaces and everything else it makes, and their removal: by
//! guards on return and error, by a panic hook, and on SIGINT/SIGTERM. Nothing is done in the
//! root namespace.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vireo_control::config::format_mac;
use vireo_dataplane::fixtures::{POD_A, POD_B};

use super::kernel::UNDERLAY_MTU;
use super::testpmd::{Hugepages, HUGEPAGES};
use super::{HOST_A, HOST_B};

pub(super) fn signal(pid: u32, sig: libc::c_int) {
    vireo_dataplane::io::sys::signal(pid, sig);
}

/// Moves the calling thread into the named network namespace.
pub(super) fn enter_netns(name: &str) -> Result<()> {
    let f = File::open(Path::new("/run/netns").join(name))
        .with_context(|| format!("opening network namespace {name}"))?;
    setns(&f).with_context(|| format!("entering network namespace {name}"))
}

fn setns(f: &File) -> Result<()> {
    Ok(vireo_dataplane::io::sys::setns_net(f)?)
}

/// Runs `f` with the calling thread in network namespace `name`, then moves it back.
pub(super) fn in_netns<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    enter_netns(name)?;
    let r = f();
    if let Err(e) = setns(&home) {
        // Every later step would run in the wrong namespace.
        cleanup_owned();
        eprintln!("vireo bench: cannot return to the original network namespace: {e:#}");
        std::process::exit(1);
    }
    r
}

/// What this process made, for the guards and the panic hook.
struct Owned {
    netns: Vec<String>,
    pids: Vec<u32>,
    dir: Option<PathBuf>,
    huge: Option<Hugepages>,
}

static OWNED: Mutex<Owned> = Mutex::new(Owned {
    netns: Vec::new(),
    pids: Vec::new(),
    dir: None,
    huge: None,
});

fn owned() -> std::sync::MutexGuard<'static, Owned> {
    OWNED.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn register_pid(pid: u32) {
    owned().pids.push(pid);
}

pub(super) fn unregister_pid(pid: u32) {
    owned().pids.retain(|p| *p != pid);
}

/// Reserves testpmd's hugepages in the work directory; the cleanup gives them back.
pub(super) fn reserve_hugepages(dir: &Path) -> Result<PathBuf> {
    let mount = dir.join("hugepages");
    let h = Hugepages::reserve(HUGEPAGES, &mount)?;
    owned().huge = Some(h);
    Ok(mount)
}

/// Kills registered children and deletes registered namespaces and the work directory.
/// Idempotent.
fn cleanup_owned() {
    let (pids, netns, dir, huge) = {
        let mut o = match OWNED.try_lock() {
            Ok(o) => o,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // Held by a thread that is cleaning up already.
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        (
            std::mem::take(&mut o.pids),
            std::mem::take(&mut o.netns),
            o.dir.take(),
            o.huge.take(),
        )
    };
    for pid in &pids {
        signal(*pid, libc::SIGTERM);
    }
    if !pids.is_empty() {
        std::thread::sleep(Duration::from_millis(500));
        for pid in &pids {
            signal(*pid, libc::SIGKILL);
        }
    }
    if let Some(h) = huge {
        h.release();
    }
    for ns in netns.iter().rev() {
        if let Err(e) = ip(&["netns", "del", ns]) {
            eprintln!("vireo bench: deleting namespace {ns}: {e:#}");
        }
    }
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

pub(super) fn install_panic_cleanup() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        cleanup_owned();
    }));
}

/// The three namespaces, their links and the work directory; dropping it removes them all.
pub(super) struct Topology {
    pub(super) gen: String,
    pub(super) node: String,
    pub(super) sink: String,
    pub(super) dir: PathBuf,
}

impl Topology {
    pub(super) fn create(prefix: &str, stop: &AtomicBool) -> Result<Self> {
        let existing = ip(&["netns", "list"])?;
        if let Some(l) = existing.lines().find(|l| l.starts_with(prefix)) {
            bail!(
                "network namespace {} already exists (another `vireo bench` with prefix {prefix}, or a leftover: `ip netns del` it)",
                l.split_whitespace().next().unwrap_or(l)
            );
        }
        let dir = std::env::temp_dir().join(format!("{prefix}bench"));
        if dir.exists() {
            bail!("{} already exists", dir.display());
        }
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        owned().dir = Some(dir.clone());
        let t = Topology {
            gen: format!("{prefix}gen"),
            node: format!("{prefix}node"),
            sink: format!("{prefix}sink"),
            dir,
        };
        for ns in [&t.gen, &t.node, &t.sink] {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            ip(&["netns", "add", ns])?;
            owned().netns.push(ns.clone());
            ip_in(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
            ip_in(
                ns,
                &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
            )?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        for (host, pod_ns, (ip_addr, pod_mac, _, host_mac)) in
            [(HOST_A, &t.gen, POD_A), (HOST_B, &t.sink, POD_B)]
        {
            let (node, hm, pm) = (&t.node, format_mac(&host_mac), format_mac(&pod_mac));
            ip(&[
                "-n", node, "link", "add", host, "address", &hm, "type", "veth", "peer", "name",
                "eth0", "address", &pm, "netns", pod_ns,
            ])?;
            ip(&[
                "-n",
                pod_ns,
                "addr",
                "add",
                &format!("{ip_addr}/24"),
                "dev",
                "eth0",
            ])?;
            if host == HOST_B {
                // hB is also the underlay of kernel-path: room for a 1500-byte frame in VXLAN.
                let mtu = UNDERLAY_MTU.to_string();
                ip(&["-n", pod_ns, "link", "set", "eth0", "mtu", &mtu])?;
                ip(&["-n", node, "link", "set", host, "mtu", &mtu])?;
            }
            ip(&["-n", pod_ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", node, "link", "set", host, "up"])?;
            // Copy-mode AF_XDP loses CHECKSUM_PARTIAL: pods compute their own checksums.
            ip_in(pod_ns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        Ok(t)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        cleanup_owned();
    }
}

/// Runs `ip ARGS`; returns stdout, or an error with stderr.
fn ip(args: &[&str]) -> Result<String> {
    run_cmd(Command::new("ip").args(args))
}

/// Runs `ip netns exec NS ARGV`.
pub(super) fn run_in(ns: &str, argv: &[String]) -> Result<String> {
    run_cmd(Command::new("ip").args(["netns", "exec", ns]).args(argv))
}

/// Runs `ARGV`.
pub(super) fn run_argv(argv: &[String]) -> Result<String> {
    let (first, rest) = argv.split_first().context("empty command")?;
    run_cmd(Command::new(first).args(rest))
}

/// Runs `ip netns exec NS ARGS`.
fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    run_cmd(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let mut err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if err.is_empty() {
            let _ = out.stdout.as_slice().read_to_string(&mut err);
        }
        bail!("{cmd:?}: {}: {err}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
