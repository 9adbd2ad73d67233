//! The run's participants inside this process: a background thread with a stop flag (the
//! generator, the cross-connect), and the sink's counter on pod B.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vireo_dataplane::io::sys;
use vireo_xdp::{ModePreference, Steering};

use super::measure::{current_tid, Task};
use super::topology::in_netns;
use super::VXLAN_PORT;

/// A background thread with a stop flag; dropping it stops and joins it.
pub(super) struct Bg<T> {
    stop: Arc<AtomicBool>,
    tid: Arc<AtomicU32>,
    ready: mpsc::Receiver<()>,
    handle: Option<JoinHandle<Result<T>>>,
    name: &'static str,
}

impl<T: Send + 'static> Bg<T> {
    pub(super) fn spawn(
        name: &'static str,
        f: impl FnOnce(&AtomicBool, &dyn Fn()) -> Result<T> + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU32::new(0));
        let (tx, rx) = mpsc::sync_channel(1);
        let (s, t) = (stop.clone(), tid.clone());
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                t.store(current_tid().unwrap_or(0), Ordering::Relaxed);
                let ready = move || {
                    let _ = tx.try_send(());
                };
                f(&s, &ready)
            })
            .with_context(|| format!("spawning {name}"))?;
        Ok(Bg {
            stop,
            tid,
            ready: rx,
            handle: Some(handle),
            name,
        })
    }

    pub(super) fn wait_ready(&self, timeout: Duration, stop: &AtomicBool) -> Result<()> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            match self.ready.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
                break;
            }
        }
        self.check()?;
        bail!("{} did not start within {timeout:?}", self.name)
    }

    /// The thread, for its scheduler statistics.
    pub(super) fn task(&self) -> Task {
        Task {
            pid: std::process::id(),
            tid: self.tid.load(Ordering::Relaxed),
        }
    }

    /// An error if the thread has ended (it should run until stopped).
    pub(super) fn check(&self) -> Result<()> {
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            bail!("{} stopped early", self.name);
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<T> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self
            .handle
            .take()
            .ok_or_else(|| anyhow!("already joined"))?;
        h.join()
            .map_err(|_| anyhow!("{} panicked", self.name))?
            .with_context(|| self.name.to_string())
    }
}

impl<T> Drop for Bg<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            match h.join() {
                Ok(Err(e)) => tracing::warn!("{}: {e:#}", self.name),
                Err(_) => tracing::warn!("{} panicked", self.name),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Counts frames arriving at pod B's eth0: the steering program, role Pod, no socket.
pub(super) struct Sink {
    steering: Steering,
    _link: vireo_xdp::Attachment,
}

impl Sink {
    pub(super) fn attach(netns: &str, pref: ModePreference) -> Result<Self> {
        let steering = Steering::load()?;
        let link = in_netns(netns, || {
            let ifindex = sys::ifindex("eth0")?;
            Ok(steering.attach(ifindex, 0, vireo_xdp::Role::Pod, VXLAN_PORT, pref)?)
        })
        .context("attaching the sink's counter to pod B's eth0")?;
        tracing::debug!(mode = link.mode().as_str(), "sink attached");
        Ok(Sink {
            steering,
            _link: link,
        })
    }

    pub(super) fn count(&self) -> Result<u64> {
        let c = self.steering.counters(0)?;
        Ok(c.no_socket + c.steered + c.passed)
    }
}
