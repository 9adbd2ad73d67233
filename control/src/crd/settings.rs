//! One node's settings from the `VireoNodeConfig`s of the cluster: the configs that apply,
//! layered in precedence order over the configuration file's defaults (the rules are in
//! [`super::nodeconfig`]).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::nodeconfig::{InterfaceRole, NodeInterface, VireoNodeConfig, XdpMode};
use super::selector;
use super::validate::{validate, FieldError};
use crate::config::{
    AfXdpConfig, Config, InterfaceConfig, MasqueradeConfig, Role, ServicesConfig, WorkerConfig,
    XdpModeConfig,
};

/// A node's settings, every field resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSettings {
    /// The interfaces to attach.
    pub interfaces: Vec<NodeInterface>,
    /// The workers.
    pub workers: Vec<WorkerConfig>,
    /// XDP attach mode.
    pub xdp_mode: XdpModeConfig,
    /// Spin instead of sleeping when idle.
    pub busy_poll: bool,
    /// AF_XDP sizes.
    pub af_xdp: AfXdpConfig,
    /// The VXLAN UDP port.
    pub vxlan_port: u16,
    /// DF on outer headers.
    pub vxlan_df: bool,
    /// Maglev table size and seed.
    pub services: ServicesConfig,
    /// Conntrack limits and lifetimes.
    pub conntrack: vireo_conntrack::Config,
    /// Pod → world masquerade.
    pub masquerade: MasqueradeConfig,
    /// Policy audit mode for every endpoint.
    pub policy_audit_mode: bool,
    /// The names of the configs that applied, in the order they were layered (the last one
    /// wins where several set a field).
    pub applied: Vec<String>,
}

/// One config that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    /// Its name.
    pub name: String,
    /// Its errors.
    pub errors: Vec<FieldError>,
}

/// Why a node has no settings: the agent keeps its last good ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EffectiveError {
    /// Configs that apply to the node (or whose selector cannot tell) are invalid.
    #[error("invalid VireoNodeConfig: {}", describe(.0))]
    Invalid(Vec<InvalidConfig>),
    /// No config that applies gives the interfaces.
    #[error("no VireoNodeConfig that applies to this node sets spec.interfaces (applied: {})", if .applied.is_empty() { "none".to_owned() } else { .applied.join(", ") })]
    NoInterfaces {
        /// The configs that applied.
        applied: Vec<String>,
    },
}

fn describe(bad: &[InvalidConfig]) -> String {
    bad.iter()
        .map(|c| {
            let errs: Vec<String> = c.errors.iter().map(ToString::to_string).collect();
            format!("{}: {}", c.name, errs.join("; "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The settings of the node with `node_labels`, from every `VireoNodeConfig` of the cluster.
///
/// Fails when a config that applies to the node is invalid (or one whose `nodeSelector` is
/// invalid, since whether it applies cannot be told), and when no config sets the
/// interfaces; invalid configs that apply only to other nodes are not this node's concern.
pub fn effective_settings(
    node_labels: &BTreeMap<String, String>,
    configs: &[VireoNodeConfig],
) -> Result<EffectiveSettings, EffectiveError> {
    let mut invalid = Vec::new();
    let mut layers: Vec<&VireoNodeConfig> = Vec::new();
    for c in configs {
        let result = validate(c);
        let (selector_ok, applies) = match &c.spec.node_selector {
            None => (true, true),
            Some(sel) => {
                let ok = selector::check(sel, "").is_empty();
                (ok, ok && selector::matches(sel, node_labels))
            }
        };
        match result {
            Err(errors) if applies || !selector_ok => invalid.push(InvalidConfig {
                name: name(c).to_owned(),
                errors,
            }),
            Ok(()) if applies => layers.push(c),
            _ => {}
        }
    }
    if !invalid.is_empty() {
        invalid.sort_by(|a, b| a.name.cmp(&b.name));
        return Err(EffectiveError::Invalid(invalid));
    }
    layers.sort_by(|a, b| precedence(a, b));

    let base: Config = serde_yaml_ng::from_str("{}").expect("the configuration file's defaults");
    let mut out = EffectiveSettings {
        interfaces: Vec::new(),
        workers: base.workers,
        xdp_mode: base.xdp_mode,
        busy_poll: base.busy_poll,
        af_xdp: base.af_xdp,
        vxlan_port: base.vxlan_port,
        vxlan_df: base.vxlan_df,
        services: base.services,
        conntrack: base.conntrack,
        masquerade: base.masquerade,
        policy_audit_mode: base.policy_audit_mode,
        applied: Vec::new(),
    };
    let mut have_interfaces = false;
    for c in layers {
        let s = &c.spec;
        if let Some(ifs) = &s.interfaces {
            out.interfaces.clone_from(ifs);
            have_interfaces = true;
        }
        if let Some(ws) = &s.workers {
            out.workers = ws
                .iter()
                .map(|w| WorkerConfig {
                    cores: w.cores.iter().map(|c| *c as usize).collect(),
                })
                .collect();
        }
        if let Some(x) = &s.xdp {
            set(&mut out.xdp_mode, x.mode.map(xdp_mode));
            set(&mut out.busy_poll, x.busy_poll);
        }
        if let Some(a) = &s.af_xdp {
            let o = &mut out.af_xdp;
            set(&mut o.zero_copy, a.zero_copy);
            set(&mut o.frame_size, a.frame_size);
            set(&mut o.frames, a.frames);
            set(&mut o.rx_ring, a.rx_ring);
            set(&mut o.tx_ring, a.tx_ring);
            set(&mut o.fill_ring, a.fill_ring);
            set(&mut o.completion_ring, a.completion_ring);
        }
        if let Some(v) = &s.vxlan {
            set(&mut out.vxlan_port, v.port);
            set(&mut out.vxlan_df, v.df);
        }
        if let Some(m) = &s.maglev {
            set(&mut out.services.maglev_table_size, m.table_size);
            set(&mut out.services.hash_seed, m.hash_seed);
        }
        if let Some(ct) = &s.conntrack {
            let o = &mut out.conntrack;
            set(&mut o.max_tcp, ct.max_tcp.map(|v| v as usize));
            set(&mut o.max_other, ct.max_other.map(|v| v as usize));
            if let Some(l) = &ct.lifetimes {
                let o = &mut o.lifetimes;
                set(&mut o.tcp_established, l.tcp_established);
                set(&mut o.tcp_syn, l.tcp_syn);
                set(&mut o.tcp_close, l.tcp_close);
                set(&mut o.non_tcp, l.non_tcp);
            }
        }
        if let Some(m) = &s.masquerade {
            let o = &mut out.masquerade;
            set(&mut o.enabled, m.enabled);
            set(&mut o.port_range, m.port_range.clone());
            set(&mut o.non_masquerade_cidrs, m.non_masquerade_cidrs.clone());
        }
        if let Some(p) = &s.policy {
            set(&mut out.policy_audit_mode, p.audit_mode);
        }
        out.applied.push(name(c).to_owned());
    }
    if !have_interfaces {
        return Err(EffectiveError::NoInterfaces {
            applied: out.applied,
        });
    }
    Ok(out)
}

impl EffectiveSettings {
    /// Writes these settings into an agent configuration (leaving what the configs do not
    /// hold: the node's name, gateways, source and API socket). Check the result with
    /// [`Config::validate`], which also knows this machine's cores.
    pub fn apply_to(&self, cfg: &mut Config) {
        cfg.interfaces = self
            .interfaces
            .iter()
            .map(|i| InterfaceConfig {
                name: i.name.clone(),
                role: match i.role {
                    InterfaceRole::Uplink => Role::Uplink,
                    InterfaceRole::Pod => Role::Pod,
                },
                endpoint: None,
            })
            .collect();
        cfg.workers.clone_from(&self.workers);
        cfg.xdp_mode = self.xdp_mode;
        cfg.busy_poll = self.busy_poll;
        cfg.af_xdp = self.af_xdp.clone();
        cfg.vxlan_port = self.vxlan_port;
        cfg.vxlan_df = self.vxlan_df;
        cfg.services = self.services;
        cfg.conntrack = self.conntrack;
        cfg.masquerade = self.masquerade.clone();
        cfg.policy_audit_mode = self.policy_audit_mode;
    }
}

/// Lowest precedence first: configs without a selector before those with one, then by
/// priority, then by name.
fn precedence(a: &VireoNodeConfig, b: &VireoNodeConfig) -> Ordering {
    let key = |c: &VireoNodeConfig| (c.spec.node_selector.is_some(), c.spec.priority.unwrap_or(0));
    key(a).cmp(&key(b)).then_with(|| name(a).cmp(name(b)))
}

fn name(c: &VireoNodeConfig) -> &str {
    c.metadata.name.as_deref().unwrap_or("")
}

fn set<T>(field: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *field = v;
    }
}

fn xdp_mode(m: XdpMode) -> XdpModeConfig {
    match m {
        XdpMode::Auto => XdpModeConfig::Auto,
        XdpMode::Native => XdpModeConfig::Native,
        XdpMode::Generic => XdpModeConfig::Generic,
    }
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
