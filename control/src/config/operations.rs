//! Day-two settings: where the agent serves Prometheus metrics and its health probes, when it
//! stops calling itself ready, and how it logs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default API socket path.
pub fn default_api_socket() -> PathBuf {
    PathBuf::from("/run/vireo/vireo.sock")
}

/// Where an agent with state in `state_dir` pins what it leaves attached across a restart
/// (the uplink's XDP link, `hold_uplink_on_stop`): `<state_dir>/bpf` if it exists (a bpffs
/// mounted there: `ip netns exec` hides `/sys/fs/bpf`, so the sandbox mounts one per node),
/// else a bpffs directory named after the state directory (`/run/vireo/vireo.state` →
/// `/sys/fs/bpf/vireo/run_vireo_vireo_state`: bpffs refuses names with a dot, EPERM).
pub fn pin_dir(state_dir: &std::path::Path) -> PathBuf {
    let own = state_dir.join("bpf");
    if own.is_dir() {
        return own;
    }
    let key = state_dir
        .to_string_lossy()
        .trim_matches('/')
        .replace(['/', '.'], "_");
    PathBuf::from("/sys/fs/bpf/vireo").join(key)
}

/// Default workers: one, unpinned.
pub(crate) fn default_workers() -> Vec<super::WorkerConfig> {
    vec![super::WorkerConfig { cores: vec![] }]
}

impl super::Config {
    /// Where state that outlives the agent lives (`state_dir`): as configured, else beside the
    /// API socket, named after it (`/run/vireo/vireo.sock` → `/run/vireo/vireo.state`), so
    /// agents with their own sockets (the sandbox's nodes) have their own state.
    pub fn state_path(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.api_socket.with_extension("state"))
    }
}

/// `metrics:` — Prometheus metrics (`/metrics`) and the probes (`/healthz`, `/readyz`) on one
/// HTTP listener (Cilium's `prometheus-serve-addr`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `HOST:PORT` to listen on, off the pod network (the node's address or loopback; Cilium
    /// uses port 9962); port 0 takes a free one (`vireo status` shows which). None: no
    /// listener.
    pub address: Option<String>,
    /// The agent is not ready while its source (the Kubernetes API server) has been failing
    /// for longer than this many seconds (0: staleness never makes it unready).
    pub stale_after_s: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: None,
            stale_after_s: 60,
        }
    }
}

impl MetricsConfig {
    /// The address to listen on, checked.
    pub fn socket_addr(&self) -> Result<Option<SocketAddr>, (String, String)> {
        self.address
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    (
                        "metrics.address".to_string(),
                        format!("{a:?} is not HOST:PORT (an IP address and a port)"),
                    )
                })
            })
            .transpose()
    }

    /// How long the source may be stale before the agent is not ready (None: no bound).
    pub fn stale_after(&self) -> Option<Duration> {
        (self.stale_after_s > 0).then(|| Duration::from_secs(self.stale_after_s))
    }

    /// Checks the fields: (field, message) on error.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.socket_addr().map(|_| ())
    }
}

/// The log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`, `span`).
    Json,
}

/// `log:` — the agent's logs (on stderr). The environment's `VIREO_LOG` overrides `level`,
/// `VIREO_LOG_FORMAT` overrides `format`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Levels, as `tracing`'s filter directives: a default and per-module levels, e.g.
    /// `info,vireo_control::kube=debug,vireo::agent=warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl LogConfig {
    /// Checks the level directives' shape: comma-separated `LEVEL` or `MODULE=LEVEL`, with a
    /// level of `trace`, `debug`, `info`, `warn`, `error` or `off`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        let bad = |m: String| Err(("log.level".to_string(), m));
        if self.level.trim().is_empty() {
            return bad("must not be empty (e.g. \"info\")".into());
        }
        for d in self.level.split(',').map(str::trim) {
            let (module, level) = match d.split_once('=') {
                Some((m, l)) => (Some(m), l),
                None => (None, d),
            };
            if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
                return bad(format!(
                    "{d:?}: {level:?} is not a level (trace, debug, info, warn, error, off)"
                ));
            }
            if let Some(m) = module {
                let ok = !m.is_empty()
                    && m.split("::").all(|p| {
                        !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_')
                    });
                if !ok {
                    return bad(format!("{d:?}: {m:?} is not a module path"));
                }
            }
        }
        Ok(())
    }
}

/// `observe:` — the flow log `vireo observe` reads (Hubble's ring of recent flows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObserveConfig {
    /// Flows the agent keeps in memory, the oldest overwritten first (Hubble's
    /// `hubble-event-buffer-capacity`); 0: the workers record no flows.
    pub flow_ring: usize,
}

/// The largest `observe.flow_ring`.
pub const MAX_FLOW_RING: usize = 1 << 20;

impl Default for ObserveConfig {
    fn default() -> Self {
        ObserveConfig { flow_ring: 8192 }
    }
}

impl ObserveConfig {
    /// Checks the fields: (field, message) on error.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.flow_ring > MAX_FLOW_RING {
            return Err((
                "observe.flow_ring".into(),
                format!("{} is over {MAX_FLOW_RING}", self.flow_ring),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flow_ring_defaults_and_bounds() {
        let c: ObserveConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(c.flow_ring, 8192);
        let c: ObserveConfig = serde_yaml_ng::from_str("flow_ring: 0").unwrap();
        assert!(c.validate().is_ok());
        let big = ObserveConfig {
            flow_ring: MAX_FLOW_RING + 1,
        };
        assert_eq!(big.validate().unwrap_err().0, "observe.flow_ring");
        assert!(serde_yaml_ng::from_str::<ObserveConfig>("ring: 5").is_err());
    }

    use super::*;

    #[test]
    fn metrics_address_and_levels_are_checked() {
        let m = |a: &str| MetricsConfig {
            address: Some(a.into()),
            ..Default::default()
        };
        assert_eq!(
            m("127.0.0.1:9962").socket_addr().unwrap(),
            Some("127.0.0.1:9962".parse().unwrap())
        );
        assert!(m("[::1]:0").validate().is_ok());
        let e = m("localhost").validate().unwrap_err();
        assert_eq!(e.0, "metrics.address");
        assert!(m("10.0.0.1:99999").validate().is_err());
        assert_eq!(MetricsConfig::default().socket_addr().unwrap(), None);
        assert_eq!(
            MetricsConfig {
                stale_after_s: 0,
                ..Default::default()
            }
            .stale_after(),
            None
        );
        let l = |s: &str| {
            LogConfig {
                level: s.into(),
                ..Default::default()
            }
            .validate()
        };
        assert!(l("info").is_ok());
        assert!(l("warn,vireo_control::kube=debug, vireo=TRACE").is_ok());
        assert!(l("").is_err());
        assert!(l("loud").unwrap_err().1.contains("not a level"));
        assert!(l("vireo::=debug").unwrap_err().1.contains("module path"));
        assert!(l("a b=info").is_err());
    }
}

#[cfg(test)]
mod state_dir_tests {
    use std::path::Path;

    use crate::config::Config;

    #[test]
    fn the_state_dir_defaults_beside_the_api_socket_and_can_be_set() {
        let c: Config = serde_yaml_ng::from_str("api_socket: /tmp/x/node-1.sock\n").unwrap();
        assert_eq!(c.state_path(), Path::new("/tmp/x/node-1.state"));
        let c: Config = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(c.state_path(), Path::new("/run/vireo/vireo.state"));
        assert_eq!(
            super::pin_dir(&c.state_path()),
            Path::new("/sys/fs/bpf/vireo/run_vireo_vireo_state"),
            "no dot: bpffs refuses one in any name"
        );
        let c: Config = serde_yaml_ng::from_str("state_dir: /var/lib/vireo\n").unwrap();
        assert_eq!(c.state_path(), Path::new("/var/lib/vireo"));
        assert_eq!(
            super::pin_dir(&c.state_path()),
            Path::new("/sys/fs/bpf/vireo/var_lib_vireo")
        );
    }
}
