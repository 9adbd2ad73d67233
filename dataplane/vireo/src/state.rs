//! What an agent restart or upgrade keeps, in `state_dir` (default `/run/vireo/vireo.state`,
//! beside the API socket):
//!
//! - `conntrack`: the conntrack table (flows, their NAT records, session affinity and
//!   masquerade entries: all live in it) in a shared-memory file the next process maps and
//!   adopts ([`open_conntrack`]). Its header carries a layout version; a file this build
//!   cannot read (another version, other limits, truncated, from before a reboot) gives an
//!   empty table and a warning naming the reason.
//! - `fqdn.json`: the addresses pods learned from DNS answers (`toFQDNs`), written at shutdown
//!   and read back at start ([`save_fqdn`], [`restore_fqdn`]), so an allowed flow to a learned
//!   address is not refused after a restart until the pod asks DNS again.
//!
//! The XDP programs, the AF_XDP sockets and the tables built from the source are made again
//! by the new process (from the configuration, the CNI registrations and the source).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vireo_conntrack::{Adoption, EpochClock, Layout, Table};
use vireo_dataplane::fqdn::cache::FqdnCache;
use vireo_dataplane::fqdn::parse::Answer;
use vireo_dataplane::io::segment::{Segment, LOCK_WAIT};

/// The conntrack table for `cfg` in `<state_dir>/conntrack`, adopting the previous process's
/// entries when it can, and what `vireo status` says of it (`conntrack_state`). If the file
/// cannot be used at all (no room, still locked after 10 s), the table lives in this
/// process's memory and the status says why.
pub(super) fn open_conntrack(
    cfg: &vireo_conntrack::Config,
    state_dir: &Path,
) -> (Arc<Table>, Value) {
    let path = state_dir.join("conntrack");
    let layout = Layout::for_config(cfg);
    let bytes = layout.bytes.next_multiple_of(4096);
    let opened = Segment::open(&path, bytes, LOCK_WAIT).and_then(|seg| {
        // The table keeps views of the mapping for the process's life.
        let seg: &'static Segment = Box::leak(Box::new(seg));
        seg.conntrack_region(&layout).map(|r| (seg, r))
    });
    match opened {
        Ok((seg, region)) => {
            let (t, a) = Table::in_region_monotonic(*cfg, region, seg.found());
            log_adoption(&path, seg.found(), &a);
            let status = status(&path, true, &a, seg.waited().as_millis() as u64, None);
            (Arc::new(t), status)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(),
                "conntrack state unusable ({e}); the table lives in this process's memory and \
                 a restart will lose it");
            let t = Table::new(*cfg, Arc::new(EpochClock::new()));
            let a = Adoption {
                adopted: false,
                tcp: 0,
                other: 0,
                repaired: 0,
                reason: Some(e.to_string()),
                epoch: 0,
            };
            (
                Arc::new(t),
                status(&path, false, &a, 0, Some(e.to_string())),
            )
        }
    }
}

fn log_adoption(path: &Path, found: usize, a: &Adoption) {
    if a.adopted {
        tracing::info!(path = %path.display(), tcp = a.tcp, other = a.other,
            repaired = a.repaired, "conntrack table adopted from the previous process");
    } else if found == 0 {
        tracing::info!(path = %path.display(), "conntrack table created");
    } else {
        tracing::warn!(path = %path.display(), reason = a.reason.as_deref().unwrap_or(""),
            "conntrack state not adopted: starting with an empty table");
    }
}

fn status(path: &Path, shared: bool, a: &Adoption, lock_wait_ms: u64, e: Option<String>) -> Value {
    json!({
        "path": path.display().to_string(),
        "shared": shared,
        "adopted": a.adopted,
        "entries": a.tcp + a.other,
        "tcp": a.tcp,
        "other": a.other,
        "repaired": a.repaired,
        "reason": a.reason,
        "error": e,
        "epoch": a.epoch,
        "lock_wait_ms": lock_wait_ms,
    })
}

/// How long a new process leaves the uplink's held program in place while its source has not
/// synced ([`super::Agent::take_over_uplinks`]).
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a process started `elapsed` ago replaces the uplinks' held programs now: once its
/// first complete table set is installed (`synced`), or after [`TAKEOVER_WAIT`] without one (a
/// source that cannot sync must not leave the previous version's program running for good).
fn takeover_due(synced: bool, elapsed: std::time::Duration) -> bool {
    synced || elapsed >= TAKEOVER_WAIT
}

impl super::Agent {
    fn pin_path(&self, ifname: &str) -> PathBuf {
        vireo_control::config::operations::pin_dir(&self.cfg.state_path())
            .join(format!("uplink-{ifname}"))
    }

    /// Attaches the XDP program to an interface; an uplink takes over the link the previous
    /// process held for it, if any (one program replaced by the other, no gap).
    pub(super) fn attach_xdp(
        &self,
        ifc: &vireo_control::config::InterfaceConfig,
        ifindex: u32,
        slot: u16,
        vxlan_port: u16,
        pref: vireo_xdp::ModePreference,
    ) -> anyhow::Result<vireo_xdp::Attachment> {
        let role = super::xdp_role(ifc.role);
        let slot = u32::from(slot);
        Ok(if ifc.role == vireo_control::config::Role::Uplink {
            let pin = self.pin_path(&ifc.name);
            self.steering
                .attach_held(ifindex, slot, role, vxlan_port, pref, &pin)?
        } else {
            self.steering
                .attach(ifindex, slot, role, vxlan_port, pref)?
        })
    }

    /// Replaces the uplinks' held programs ([`vireo_xdp::Steering::take_over`]) once this
    /// process steers all they did: when its first complete table set is installed (the service
    /// frontends and masquerade settings are in its maps), or [`TAKEOVER_WAIT`] after the start
    /// if the source has not synced by then. Until then the held program drops what the
    /// dataplane owns; replaced too early, it would pass a NodePort frame to the node's stack,
    /// which resets the connection.
    pub(super) fn take_over_uplinks(&mut self) {
        let synced = self.recorded.complete.is_some();
        if !takeover_due(synced, self.started.elapsed()) {
            return;
        }
        for (name, att) in &mut self.ifaces {
            let Some(link) = att.link.take_if(|l| l.is_held()) else {
                continue;
            };
            match self.steering.take_over(link) {
                Ok(l) => {
                    tracing::info!(iface = %name, synced,
                        after_ms = self.started.elapsed().as_millis() as u64,
                        "uplink's held XDP program replaced by this process's");
                    att.link = Some(l);
                }
                Err(e) => tracing::warn!(iface = %name, "taking over the uplink: {e}"),
            }
        }
    }

    /// Detaches an interface's XDP program; at a stop with `hold_uplink_on_stop`, the uplink's
    /// stays attached, held for the next process (what the dataplane owns is dropped meanwhile,
    /// so the node's stack does not reset NodePort connections).
    pub(super) fn detach_xdp(
        &self,
        ifc: &vireo_control::config::InterfaceConfig,
        link: vireo_xdp::Attachment,
    ) {
        if self.stopping
            && self.cfg.hold_uplink_on_stop
            && ifc.role == vireo_control::config::Role::Uplink
        {
            let pin = self.pin_path(&ifc.name);
            match self.steering.hold(link, &pin) {
                Ok(()) => tracing::info!(iface = %ifc.name, pin = %pin.display(),
                    "uplink XDP program held for the next process"),
                Err(e) => {
                    tracing::warn!(iface = %ifc.name, "holding the uplink's XDP program: {e}")
                }
            }
            return;
        }
        self.steering.detach(link);
    }

    /// At start: the names learned before the restart ([`restore_fqdn`]).
    pub(super) fn restore_fqdn(&self) {
        let t = self.tables.load();
        let now = t.ct.as_ref().map_or(0, |c| c.now());
        let path = fqdn_path(&self.cfg.state_path());
        match restore_fqdn(&t.fqdn, now, &path) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(names = n, path = %path.display(), "learned DNS names restored")
            }
            Err(e) => tracing::warn!(path = %path.display(), "restoring learned DNS names: {e}"),
        }
    }

    /// At shutdown: the names learned, for the next process ([`save_fqdn`]).
    pub(super) fn save_fqdn(&self) {
        let t = self.tables.load();
        if t.fqdn.is_empty() {
            return;
        }
        let now = t.ct.as_ref().map_or(0, |c| c.now());
        let path = fqdn_path(&self.cfg.state_path());
        match save_fqdn(&t.fqdn, now, &path) {
            Ok(n) => tracing::info!(names = n, path = %path.display(), "learned DNS names saved"),
            Err(e) => tracing::warn!(path = %path.display(), "saving learned DNS names: {e}"),
        }
    }
}

/// One learned name, as `fqdn.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedName {
    endpoint: Ipv4Addr,
    ip: Ipv4Addr,
    name: String,
    /// Seconds it had to live at shutdown (0: expired, kept as a zombie for a tracked flow).
    ttl: u32,
}

pub(super) fn fqdn_path(state_dir: &Path) -> PathBuf {
    state_dir.join("fqdn.json")
}

/// Writes every learned name to `path` (at shutdown), through a temporary file and a rename.
pub(super) fn save_fqdn(cache: &FqdnCache, now: u32, path: &Path) -> std::io::Result<usize> {
    let mut v = Vec::new();
    for (ep, names) in cache.dump() {
        for (ip, k) in names.iter() {
            v.push(SavedName {
                endpoint: ep,
                ip,
                name: k.name.to_string(),
                ttl: k.expires.saturating_sub(now),
            });
        }
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&v)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(v.len())
}

/// Learns the names of `path` again (at start) with the time they had left; the file is
/// removed, so a later start without a clean shutdown does not read stale names. A missing
/// file is no error (0 names).
pub(super) fn restore_fqdn(cache: &FqdnCache, now: u32, path: &Path) -> std::io::Result<usize> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let _ = std::fs::remove_file(path);
    let names: Vec<SavedName> = serde_json::from_slice(&text)?;
    for n in &names {
        let a = Answer {
            name: n.name.clone(),
            ip: n.ip,
            ttl: n.ttl,
        };
        cache.learn(u32::from(n.endpoint), &[a], now);
    }
    Ok(names.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_dataplane::fqdn::cache::Settings;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vireo-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn held_uplinks_are_taken_over_once_synced_or_after_the_wait() {
        use std::time::Duration;
        assert!(!takeover_due(false, Duration::ZERO));
        assert!(!takeover_due(
            false,
            TAKEOVER_WAIT - Duration::from_millis(1)
        ));
        assert!(
            takeover_due(false, TAKEOVER_WAIT),
            "a source that never syncs"
        );
        assert!(takeover_due(true, Duration::ZERO), "synced at once");
        assert!(TAKEOVER_WAIT > Duration::from_secs(5) && TAKEOVER_WAIT <= Duration::from_secs(60));
    }

    #[test]
    fn learned_names_survive_a_save_and_a_restore_with_their_time_left() {
        let d = tmp("fqdn");
        let path = fqdn_path(&d);
        let before = FqdnCache::new(Settings::default());
        let ep = u32::from(Ipv4Addr::new(10, 244, 1, 5));
        let answers = [
            Answer {
                name: "api.example.com".into(),
                ip: Ipv4Addr::new(93, 184, 216, 34),
                ttl: 300,
            },
            Answer {
                name: "old.example.com".into(),
                ip: Ipv4Addr::new(93, 184, 216, 35),
                ttl: 5,
            },
        ];
        before.learn(ep, &answers, 100);
        // Saved at 110: 290 s left for one, the other expired (a zombie).
        assert_eq!(save_fqdn(&before, 110, &path).unwrap(), 2);
        let after = FqdnCache::new(Settings::default());
        assert_eq!(restore_fqdn(&after, 500, &path).unwrap(), 2);
        let names = after.endpoint(ep).expect("endpoint restored");
        let api = &names.names(u32::from(Ipv4Addr::new(93, 184, 216, 34)))[0];
        assert_eq!(&*api.name, "api.example.com");
        assert_eq!(api.expires, 790, "the time it had left, from the new clock");
        let old = &names.names(u32::from(Ipv4Addr::new(93, 184, 216, 35)))[0];
        assert!(
            old.expires <= 500,
            "still expired: a zombie until collected"
        );
        assert!(!path.exists(), "read once");
        assert_eq!(restore_fqdn(&after, 500, &path).unwrap(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn conntrack_is_adopted_from_the_state_dir_and_reported() {
        let d = tmp("ct");
        let cfg = vireo_conntrack::Config {
            max_tcp: 64,
            max_other: 16,
            ..Default::default()
        };
        // The first "process": a new file.
        let (t, st) = open_conntrack(&cfg, &d);
        assert_eq!(st["adopted"], false);
        assert_eq!(st["shared"], true);
        let k = vireo_conntrack::Key {
            src: 1,
            dst: 2,
            sport: 3,
            dport: 4,
            proto: 6,
            dir: vireo_conntrack::Dir::Egress,
        };
        t.insert(
            &k,
            vireo_conntrack::NewEntry {
                state: vireo_conntrack::State::Established,
                identity: 9,
                nat: None,
                bytes: 1,
            },
        )
        .unwrap();
        // A second open in this process finds the file locked (as a new process would while
        // the old one runs): after the bounded wait it keeps a private table. Not waited for
        // here (10 s); the lock itself is tested in the I/O layer. The next process sees the
        // file as the first left it: a copy stands for it.
        std::fs::create_dir_all(d.join("next")).unwrap();
        std::fs::copy(d.join("conntrack"), d.join("next/conntrack")).unwrap();
        let (t2, st2) = open_conntrack(&cfg, &d.join("next"));
        assert_eq!(st2["adopted"], true, "{st2}");
        assert_eq!(st2["entries"], 1);
        assert!(t2.lookup(&k).is_some());
        let _ = std::fs::remove_dir_all(&d);
    }
}
