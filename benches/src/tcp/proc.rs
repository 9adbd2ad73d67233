//! Commands and child processes of the TCP and request/response cases, bounded in time and
//! stopped on Ctrl-C, and the record of what they made (namespaces, sandboxes) for the guards
//! and the panic hook.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What this process made and must remove.
struct Owned {
    netns: Vec<String>,
    /// Process groups of running children.
    groups: Vec<u32>,
    /// Sandboxes brought up, with the `vireo` binary that brings them down.
    sandboxes: Vec<(String, std::path::PathBuf)>,
}

static OWNED: Mutex<Owned> = Mutex::new(Owned {
    netns: Vec::new(),
    groups: Vec::new(),
    sandboxes: Vec::new(),
});

fn owned() -> std::sync::MutexGuard<'static, Owned> {
    OWNED.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn own_netns(ns: &str) {
    owned().netns.push(ns.to_string());
}

pub(super) fn own_sandbox(name: &str, vireo: &std::path::Path) {
    owned()
        .sandboxes
        .push((name.to_string(), vireo.to_path_buf()));
}

/// Deletes the namespaces recorded with `prefix`, newest first.
pub(super) fn remove_netns(prefix: &str) {
    let mine: Vec<String> = {
        let mut o = owned();
        let (mine, rest) = std::mem::take(&mut o.netns)
            .into_iter()
            .partition(|n| n.starts_with(prefix));
        o.netns = rest;
        mine
    };
    for ns in mine.iter().rev() {
        if let Err(e) = ip(&["netns", "del", ns]) {
            eprintln!("vireo bench: deleting namespace {ns}: {e:#}");
        }
    }
}

/// Brings sandbox `name` down (if this process brought it up).
pub(super) fn remove_sandbox(name: &str) {
    let entry = {
        let mut o = owned();
        let i = o.sandboxes.iter().position(|(n, _)| n == name);
        i.map(|i| o.sandboxes.remove(i))
    };
    if let Some((n, vireo)) = entry {
        let r = Command::new(&vireo)
            .args(["sandbox", "down", "--sandbox", &n])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output();
        match r {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "vireo bench: sandbox down {n}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("vireo bench: sandbox down {n}: {e}"),
        }
    }
}

/// Everything recorded: children killed, sandboxes down, namespaces deleted. Idempotent.
pub(super) fn cleanup_all() {
    let groups = std::mem::take(&mut owned().groups);
    for g in groups {
        kill_group(g);
    }
    let names: Vec<String> = owned().sandboxes.iter().map(|(n, _)| n.clone()).collect();
    for n in names {
        remove_sandbox(&n);
    }
    remove_netns("");
}

/// Cleans up on panic too (release builds abort on panic, which runs no destructors).
pub(super) fn install_panic_cleanup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            prev(info);
            cleanup_all();
        }));
    });
}

fn kill_group(pgid: u32) {
    // `kill -KILL -- -PGID`: the child and everything it started (ip netns exec, iperf3).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// A child in a process group of its own (so that Ctrl-C reaches us, not it), killed with its
/// group when dropped.
pub(super) struct Proc {
    child: Option<Child>,
    pgid: u32,
    what: String,
}

impl Proc {
    pub(super) fn spawn(args: &[&str], what: &str) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        let (prog, rest) = args.split_first().context("empty command")?;
        let child = Command::new(prog)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what} ({args:?})"))?;
        let pgid = child.id();
        owned().groups.push(pgid);
        Ok(Proc {
            child: Some(child),
            pgid,
            what: what.to_string(),
        })
    }

    /// Waits at most `limit` (or until `stop`), then returns (success, stdout, stderr); a child
    /// that outlives the limit is killed and is an error.
    pub(super) fn wait(
        mut self,
        limit: Duration,
        stop: &AtomicBool,
    ) -> Result<(bool, String, String)> {
        let t0 = Instant::now();
        let mut child = self.child.take().context("already waited")?;
        // Drain the pipes on threads: a chatty child must not block on a full pipe.
        let out = child.stdout.take().map(drain);
        let err = child.stderr.take().map(drain);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if stop.load(Ordering::Relaxed) || t0.elapsed() > limit {
                kill_group(self.pgid);
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        forget_group(self.pgid);
        let out = out.and_then(|h| h.join().ok()).unwrap_or_default();
        let err = err.and_then(|h| h.join().ok()).unwrap_or_default();
        match status {
            Some(s) => Ok((s.success(), out, err)),
            None if stop.load(Ordering::Relaxed) => bail!("interrupted"),
            None => bail!(
                "{} did not finish within {:?}: {}",
                self.what,
                limit,
                err.trim()
            ),
        }
    }
}

fn forget_group(pgid: u32) {
    owned().groups.retain(|g| *g != pgid);
}

fn drain<R: std::io::Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(self.pgid);
            let _ = c.wait();
            forget_group(self.pgid);
        }
    }
}

/// `ip ARGS`, quickly.
pub(super) fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {args:?}"))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs one rendered setup command (`ip …`, `bridge …`, `sysctl …` under `ip netns exec`).
pub(super) fn run_setup(cmd: &[String]) -> Result<()> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
