//! The agent's configuration as the file and the cluster's `VireoNodeConfig`s make it: the
//! file with this node's settings written over it, the last good ones kept when the configs
//! cannot be used ([`vireo_control::nodeconfig::NodeConfig`], shown by `vireo status` as
//! `node_config`). The source's first view is waited for ([`first_view`]) so that the workers
//! start with the node's settings.
//!
//! Applying a new configuration is shared with `vireo reload` ([`split`]): what can change at
//! runtime changes (interfaces, gateways, Maglev size and seed for the next service build,
//! DF on VXLAN); what cannot keeps its running value and is reported as needing a restart.

use std::time::{Duration, Instant};

use vireo_control::config::Config;
use vireo_control::node::{NodeControl, Source};
use vireo_control::nodeconfig::NodeConfig;

/// How long the agent waits for the source's first view, whose `VireoNodeConfig`s may change
/// what the workers start with, before it starts with the file's configuration.
const FIRST_VIEW_WAIT: Duration = Duration::from_secs(10);

/// The source's first view, taken in by `control` and `node_cfg`, within [`FIRST_VIEW_WAIT`]:
/// the configuration to start with (`file` with the node's settings), and whether a view came.
pub fn first_view(
    source: &mut Option<Box<dyn Source>>,
    control: &mut NodeControl,
    node_cfg: &mut NodeConfig,
    file: &Config,
) -> (Config, bool) {
    let mut cfg = file.clone();
    let Some(src) = source.as_mut() else {
        return (cfg, false);
    };
    let node = control.node().to_string();
    let deadline = Instant::now() + FIRST_VIEW_WAIT;
    loop {
        let got = src.poll_with(&mut |m, changed| {
            control.apply_changed(m, changed);
            if let Some(c) = node_cfg.observe(&node, m, file) {
                cfg = c;
            }
        });
        if got {
            return (cfg, true);
        }
        if Instant::now() > deadline {
            tracing::warn!(
                waited_s = FIRST_VIEW_WAIT.as_secs(),
                "no view from the source yet: starting with the configuration file's settings"
            );
            return (cfg, false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fields of the configuration that only a restart applies.
pub fn restart_fields(running: &Config, want: &Config) -> Vec<&'static str> {
    [
        ("conntrack", want.conntrack == running.conntrack),
        ("workers", want.workers == running.workers),
        ("af_xdp", want.af_xdp == running.af_xdp),
        ("api_socket", want.api_socket == running.api_socket),
        ("state_dir", want.state_path() == running.state_path()),
        ("vxlan_port", want.vxlan_port == running.vxlan_port),
        ("xdp_mode", want.xdp_mode == running.xdp_mode),
        ("busy_poll", want.busy_poll == running.busy_poll),
        ("source", want.source == running.source),
        ("node", want.node == running.node),
        (
            "metrics.address",
            want.metrics.address == running.metrics.address,
        ),
        ("log", want.log == running.log),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(f, _)| f)
    .collect()
}

/// What of `want` can be applied to an agent running `running`: `want` with the fields that
/// need a restart left as they run, and those fields' names.
pub fn split(running: &Config, want: &Config) -> (Config, Vec<&'static str>) {
    let restart = restart_fields(running, want);
    let mut applied = want.clone();
    applied.conntrack = running.conntrack;
    applied.workers.clone_from(&running.workers);
    applied.af_xdp = running.af_xdp.clone();
    applied.api_socket.clone_from(&running.api_socket);
    applied.state_dir.clone_from(&running.state_dir);
    applied.vxlan_port = running.vxlan_port;
    applied.xdp_mode = running.xdp_mode;
    applied.busy_poll = running.busy_poll;
    applied.source.clone_from(&running.source);
    applied.node.clone_from(&running.node);
    applied.metrics.address.clone_from(&running.metrics.address);
    applied.log.clone_from(&running.log);
    (applied, restart)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const FILE: &str =
        "node: n1\nsource: {manifests: /tmp}\ninterfaces: [{name: eth0, role: uplink}]\n";

    fn file() -> Config {
        Config::parse_with_node_env(FILE, Path::new("f.yaml"), None).unwrap()
    }

    #[test]
    fn what_needs_a_restart_keeps_its_running_value() {
        let running = file();
        let mut want = running.clone();
        want.services.hash_seed = 5;
        want.vxlan_df = true;
        want.interfaces[0].name = "ens5".into();
        want.af_xdp.rx_ring = 8192;
        want.busy_poll = true;
        let (applied, restart) = split(&running, &want);
        assert_eq!(restart, ["af_xdp", "busy_poll"]);
        assert_eq!(applied.af_xdp, running.af_xdp);
        assert!(!applied.busy_poll);
        assert_eq!(applied.services.hash_seed, 5);
        assert!(applied.vxlan_df);
        assert_eq!(applied.interfaces[0].name, "ens5");
        assert_eq!(split(&running, &running), (running.clone(), vec![]));
    }

    #[test]
    fn the_state_dir_needs_a_restart() {
        let running = file();
        let mut want = running.clone();
        want.state_dir = Some("/var/lib/vireo".into());
        let (applied, restart) = split(&running, &want);
        assert_eq!(restart, ["state_dir"]);
        assert_eq!(applied.state_path(), running.state_path());
    }
}
