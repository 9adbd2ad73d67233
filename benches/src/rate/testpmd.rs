//! `dpdk-testpmd` over its `net_af_xdp` PMD: the third-party generator (`txonly`) and the
//! third-party AF_XDP forwarder (`io`), and the hugepages it needs.
//!
//! testpmd cannot run without hugepages (`--no-huge` fails to allocate its mbuf pool), so the
//! bench adds [`HUGEPAGES`] 2 MB pages to `/proc/sys/vm/nr_hugepages`, mounts a hugetlbfs of its
//! own in its work directory, and gives back exactly the pages it added (also on error, panic
//! and signal: see `topology`).

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::measure::{find_thread, Task};
use super::topology::{register_pid, signal, unregister_pid};

/// 2 MB pages added for the run (two testpmd instances of [`MEM_MB`] each).
pub(super) const HUGEPAGES: u64 = 512;
/// Memory of one testpmd instance, in MB.
const MEM_MB: u32 = 256;
/// mbufs of one testpmd instance. testpmd sizes its pool by its ports' and cores' maxima
/// (155 456 mbufs, 338 MB, for io mode over two af_xdp ports), and the PMD registers the whole
/// pool as UMEM: the second instance then finds no hugepages left ("Failed to create umem").
/// 32 768 mbufs (71 MB) cover two ports' fill, RX and TX rings with room to spare.
const MBUFS: u32 = 32_768;
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Whether `dpdk-testpmd` is on PATH.
pub(super) fn available() -> bool {
    Command::new("dpdk-testpmd")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// What a testpmd instance does.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Mode {
    /// `--forward-mode=txonly` on `iface`: frames of `frame` bytes on the wire (FCS included)
    /// from `src` to `dst` (UDP 40000 → 7), addressed to `peer_mac`; `multi_flow` varies the
    /// source address (testpmd's `--txonly-multi-flow`).
    TxOnly {
        iface: String,
        frame: u32,
        multi_flow: bool,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        peer_mac: String,
    },
    /// `--forward-mode=io` between `a` (port 0) and `b` (port 1).
    Io { a: String, b: String },
}

/// Flows testpmd's `--txonly-multi-flow` cycles through: it adds an 8-bit per-core counter to
/// the source address.
pub(super) const MULTI_FLOWS: u32 = 256;

/// The command line, after `ip netns exec NS`.
pub(super) fn args(mode: &Mode, core: usize, prefix: &str, huge_dir: &Path) -> Vec<String> {
    // Two lcores on one CPU: the main lcore (stats, mostly asleep) and the forwarding lcore.
    let mut a: Vec<String> = vec![
        "dpdk-testpmd".into(),
        "--lcores".into(),
        format!("0@{core},1@{core}"),
        "-m".into(),
        MEM_MB.to_string(),
        "--huge-dir".into(),
        huge_dir.display().to_string(),
        "--file-prefix".into(),
        prefix.into(),
        "--no-pci".into(),
    ];
    let tail: Vec<String> = match mode {
        Mode::TxOnly {
            iface,
            frame,
            multi_flow,
            src,
            dst,
            peer_mac,
        } => {
            a.push(format!("--vdev=net_af_xdp0,iface={iface}"));
            let mut t = vec![
                "--forward-mode=txonly".to_string(),
                // testpmd's length excludes the 4-byte FCS.
                format!("--txpkts={}", frame - 4),
                format!("--tx-ip={src},{dst}"),
                "--tx-udp=40000,7".into(),
                format!("--eth-peer=0,{peer_mac}"),
            ];
            if *multi_flow {
                t.push("--txonly-multi-flow".into());
            }
            t
        }
        Mode::Io { a: x, b: y } => {
            a.push(format!("--vdev=net_af_xdp0,iface={x}"));
            a.push(format!("--vdev=net_af_xdp1,iface={y}"));
            vec!["--forward-mode=io".into()]
        }
    };
    a.push("--".into());
    a.push(format!("--total-num-mbufs={MBUFS}"));
    a.extend(tail);
    a.extend(
        ["--nb-cores=1", "--auto-start", "--stats-period=1"]
            .iter()
            .map(|s| s.to_string()),
    );
    a
}

/// A running testpmd (in a network namespace); dropping it stops it.
pub(super) struct TestPmd {
    child: Option<Child>,
    log: PathBuf,
    run_dir: PathBuf,
    name: &'static str,
}

impl TestPmd {
    pub(super) fn start(
        name: &'static str,
        netns: &str,
        mode: &Mode,
        core: usize,
        prefix: &str,
        huge_dir: &Path,
        log: &Path,
    ) -> Result<Self> {
        let argv = args(mode, core, prefix, huge_dir);
        let log_f = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(log_f.try_clone()?)
            .stderr(log_f);
        vireo_dataplane::io::sys::signal_child_on_parent_death(&mut cmd, libc::SIGTERM);
        let child = cmd
            .spawn()
            .context("starting `ip netns exec … dpdk-testpmd`")?;
        register_pid(child.id());
        Ok(TestPmd {
            child: Some(child),
            log: log.to_owned(),
            run_dir: Path::new("/var/run/dpdk").join(prefix),
            name,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The forwarding lcore's thread, or the process if it cannot be found.
    pub(super) fn worker(&self) -> Task {
        let pid = self.pid();
        Task {
            pid,
            // DPDK names it rte-worker-1 (22.11), lcore-worker-1 (earlier) or dpdk-worker1.
            tid: ["rte-worker-1", "lcore-worker-1", "dpdk-worker1"]
                .iter()
                .find_map(|n| find_thread(pid, n))
                .unwrap_or(pid),
        }
    }

    /// An error if testpmd has exited.
    pub(super) fn check(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!(
                    "{} exited ({st}); its log ends:\n{}",
                    self.name,
                    super::agent_run::tail(&self.log)
                );
            }
        }
        Ok(())
    }

    /// Waits until testpmd reports that it forwards.
    pub(super) fn wait_ready(&mut self, timeout: Duration, stop: &AtomicBool) -> Result<()> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            self.check()?;
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("start packet forwarding") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{} did not start forwarding within {timeout:?}; its log ends:\n{}",
            self.name,
            super::agent_run::tail(&self.log)
        )
    }

    /// SIGINT (testpmd stops its ports and detaches), SIGKILL after 5 s; removes its runtime
    /// directory.
    pub(super) fn stop(&mut self) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let pid = c.id();
        if c.try_wait()?.is_none() {
            signal(pid, libc::SIGINT);
            let end = Instant::now() + Duration::from_secs(5);
            while c.try_wait()?.is_none() {
                if Instant::now() >= end {
                    tracing::warn!(pid, "{} ignored SIGINT; killing it", self.name);
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unregister_pid(pid);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        Ok(())
    }
}

impl Drop for TestPmd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("stopping {}: {e:#}", self.name);
        }
    }
}

/// Hugepages added to the system and the hugetlbfs mount; [`Hugepages::release`] (called by
/// the topology's cleanup) gives them back.
#[derive(Debug)]
pub(super) struct Hugepages {
    pub(super) added: u64,
    pub(super) mount: PathBuf,
}

fn read_nr() -> Result<u64> {
    let s = std::fs::read_to_string(NR_HUGEPAGES).context("reading nr_hugepages")?;
    s.trim()
        .parse()
        .with_context(|| format!("{NR_HUGEPAGES}: {s:?}"))
}

impl Hugepages {
    /// Adds `n` pages and mounts a hugetlbfs at `mount`.
    pub(super) fn reserve(n: u64, mount: &Path) -> Result<Hugepages> {
        let before = read_nr()?;
        std::fs::write(NR_HUGEPAGES, (before + n).to_string()).context("raising nr_hugepages")?;
        let got = read_nr()?.saturating_sub(before);
        let h = Hugepages {
            added: got,
            mount: mount.to_owned(),
        };
        if got < n {
            h.release();
            bail!("asked the kernel for {n} more 2 MB hugepages and got {got}");
        }
        std::fs::create_dir_all(mount).with_context(|| format!("creating {}", mount.display()))?;
        let out = Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "nodev"])
            .arg(mount)
            .stdin(Stdio::null())
            .output()
            .context("running mount")?;
        if !out.status.success() {
            h.release();
            bail!(
                "mounting hugetlbfs at {}: {}",
                mount.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(h)
    }

    /// Unmounts the hugetlbfs and takes the added pages off `nr_hugepages` (whatever else
    /// changed it meanwhile).
    pub(super) fn release(&self) {
        if is_mounted(&self.mount) {
            let _ = Command::new("umount")
                .arg(&self.mount)
                .stdin(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir(&self.mount);
        match read_nr() {
            Ok(now) => {
                if let Err(e) =
                    std::fs::write(NR_HUGEPAGES, now.saturating_sub(self.added).to_string())
                {
                    eprintln!("vireo bench: giving back {} hugepages: {e}", self.added);
                }
            }
            Err(e) => eprintln!("vireo bench: giving back {} hugepages: {e:#}", self.added),
        }
    }
}

fn is_mounted(p: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = p.display().to_string();
    m.lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txonly_args_pin_both_lcores_and_drop_the_fcs() {
        let m = Mode::TxOnly {
            iface: "eth0".into(),
            frame: 64,
            multi_flow: true,
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            peer_mac: "02:00:00:00:00:01".into(),
        };
        let a = args(&m, 0, "vb1-gen", Path::new("/tmp/h"));
        let s = a.join(" ");
        assert!(s.starts_with("dpdk-testpmd --lcores 0@0,1@0 -m 256 --huge-dir /tmp/h --file-prefix vb1-gen --no-pci --vdev=net_af_xdp0,iface=eth0 -- "), "{s}");
        for want in [
            "--forward-mode=txonly",
            "--txpkts=60",
            "--tx-ip=10.0.0.1,10.0.0.2",
            "--eth-peer=0,02:00:00:00:00:01",
            "--txonly-multi-flow",
            "--auto-start",
            "--total-num-mbufs=32768",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing: {s}");
        }
    }

    #[test]
    fn io_args_have_two_vdevs_and_no_multi_flow() {
        let a = args(
            &Mode::Io {
                a: "hA".into(),
                b: "hB".into(),
            },
            1,
            "p",
            Path::new("/h"),
        );
        let dd = a.iter().position(|x| x == "--").unwrap();
        assert!(a[..dd].contains(&"--vdev=net_af_xdp0,iface=hA".to_string()));
        assert!(a[..dd].contains(&"--vdev=net_af_xdp1,iface=hB".to_string()));
        assert!(a[..dd].contains(&"0@1,1@1".to_string()));
        assert!(a[dd..].contains(&"--forward-mode=io".to_string()));
        assert!(!a.iter().any(|x| x.contains("multi-flow")));
    }
}
