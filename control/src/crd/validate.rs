//! What a `VireoNodeConfig` must satisfy beyond its schema: the same rules as the agent's
//! configuration file ([`crate::config::Config::validate`]), each error naming the field by
//! its path in the object (`spec.maglev.tableSize: 1000 is not prime …`).

use std::collections::BTreeSet;

use super::nodeconfig::{InterfaceRole, VireoNodeConfig};
use super::selector;
use crate::config::validate_ifname;

/// One invalid field: its path in the object and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, as a path: `spec.afXdp.rxRing`, `spec.interfaces[1].name`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error of `field`.
    pub fn new(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// The largest number the API server keeps exactly (its integers are int64).
const MAX_INT64: u64 = i64::MAX as u64;
/// Most conntrack entries of one kind.
const MAX_CT: u32 = 1 << 24;

/// Every error of `cfg`, or `Ok` when it is valid. A config that fails is not applied: the
/// agent reports the errors in the `Valid` condition and keeps its last good settings.
pub fn validate(cfg: &VireoNodeConfig) -> Result<(), Vec<FieldError>> {
    let s = &cfg.spec;
    let mut errs = Vec::new();
    let mut bad = |field: &str, message: String| errs.push(FieldError::new(field, message));

    if let Some(sel) = &s.node_selector {
        for e in selector::check(sel, "spec.nodeSelector") {
            bad(&e.field, e.message);
        }
    }
    if let Some(ifs) = &s.interfaces {
        let mut names = BTreeSet::new();
        for (i, ifc) in ifs.iter().enumerate() {
            let at = format!("spec.interfaces[{i}].name");
            if let Err(m) = validate_ifname(&ifc.name) {
                bad(&at, m);
            } else if !names.insert(ifc.name.as_str()) {
                bad(&at, format!("{} is listed twice", ifc.name));
            }
        }
        let uplinks = ifs
            .iter()
            .filter(|i| i.role == InterfaceRole::Uplink)
            .count();
        if uplinks != 1 {
            bad(
                "spec.interfaces",
                format!("a node needs exactly one uplink interface, these have {uplinks}"),
            );
        }
    }
    if let Some(ws) = &s.workers {
        if ws.is_empty() {
            bad("spec.workers", "at least one worker is needed".into());
        }
        let mut seen = BTreeSet::new();
        for (i, w) in ws.iter().enumerate() {
            for c in &w.cores {
                if !seen.insert(*c) {
                    bad(
                        &format!("spec.workers[{i}].cores"),
                        format!("core {c} is given to two workers"),
                    );
                }
            }
        }
    }
    if let Some(a) = &s.af_xdp {
        if let Some(f) = a.frame_size {
            if f != 2048 && f != 4096 {
                bad("spec.afXdp.frameSize", format!("{f} must be 2048 or 4096"));
            }
        }
        if let Some(n) = a.frames {
            if !(256..=1 << 20).contains(&n) {
                bad("spec.afXdp.frames", format!("{n} must be 256..=1048576"));
            }
        }
        for (name, v) in [
            ("rxRing", a.rx_ring),
            ("txRing", a.tx_ring),
            ("fillRing", a.fill_ring),
            ("completionRing", a.completion_ring),
        ] {
            if let Some(v) = v {
                if !v.is_power_of_two() || !(64..=16384).contains(&v) {
                    bad(
                        &format!("spec.afXdp.{name}"),
                        format!("{v} must be a power of two in 64..=16384"),
                    );
                }
            }
        }
    }
    if let Some(m) = &s.masquerade {
        let mut c = crate::config::MasqueradeConfig::default();
        if let Some(r) = &m.port_range {
            c.port_range.clone_from(r);
        }
        if let Some(cidrs) = &m.non_masquerade_cidrs {
            c.non_masquerade_cidrs.clone_from(cidrs);
        }
        if let Err((field, msg)) = c.check() {
            let field = field
                .replace("port_range", "portRange")
                .replace("non_masquerade_cidrs", "nonMasqueradeCidrs");
            bad(&format!("spec.masquerade.{field}"), msg);
        }
    }
    if let Some(v) = &s.vxlan {
        if v.port == Some(0) {
            bad("spec.vxlan.port", "must be 1-65535".into());
        }
    }
    if let Some(m) = &s.maglev {
        if s.node_selector.is_some() {
            bad(
                "spec.maglev",
                "can only be set in a config without nodeSelector: every node must build the \
                 same Maglev tables, to pick the same backend for a flow"
                    .into(),
            );
        }
        if let Some(size) = m.table_size {
            if !vireo_lb::PRIMES.contains(&size) {
                let what = if is_prime(size) {
                    format!("{size} is not one of the supported primes")
                } else {
                    format!("{size} is not prime")
                };
                bad(
                    "spec.maglev.tableSize",
                    format!("{what}: it must be one of {:?}", vireo_lb::PRIMES),
                );
            }
        }
        if let Some(seed) = m.hash_seed {
            if seed > MAX_INT64 {
                bad(
                    "spec.maglev.hashSeed",
                    format!("{seed} is more than {MAX_INT64}, the API server's largest integer"),
                );
            }
        }
    }
    if let Some(ct) = &s.conntrack {
        for (name, v) in [("maxTcp", ct.max_tcp), ("maxOther", ct.max_other)] {
            if let Some(v) = v {
                if !(64..=MAX_CT).contains(&v) {
                    bad(
                        &format!("spec.conntrack.{name}"),
                        format!("{v} must be 64..={MAX_CT}"),
                    );
                }
            }
        }
        if let Some(l) = &ct.lifetimes {
            for (name, v) in [
                ("tcpEstablished", l.tcp_established),
                ("tcpSyn", l.tcp_syn),
                ("tcpClose", l.tcp_close),
                ("nonTcp", l.non_tcp),
            ] {
                if v == Some(0) {
                    bad(
                        &format!("spec.conntrack.lifetimes.{name}"),
                        "must be at least 1 second".into(),
                    );
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::nodeconfig::VireoNodeConfigSpec;

    fn config(spec: &str) -> VireoNodeConfig {
        let spec: VireoNodeConfigSpec = serde_yaml_ng::from_str(spec).expect("spec parses");
        VireoNodeConfig::new("t", spec)
    }

    fn errors(spec: &str) -> Vec<String> {
        match validate(&config(spec)) {
            Ok(()) => vec![],
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_full_valid_config_passes() {
        let spec = r#"
interfaces: [{name: eth0, role: uplink}, {name: lxc0, role: pod}]
workers: [{cores: [1]}, {cores: [2, 3]}]
xdp: {mode: native, busyPoll: true}
afXdp: {zeroCopy: false, frameSize: 4096, frames: 4096, rxRing: 2048, txRing: 64, fillRing: 16384, completionRing: 1024}
vxlan: {port: 4789, df: true}
maglev: {tableSize: 65521, hashSeed: 9223372036854775807}
conntrack: {maxTcp: 16777216, maxOther: 64, lifetimes: {tcpEstablished: 3600, tcpSyn: 1, tcpClose: 1, nonTcp: 30}}
"#;
        assert_eq!(errors(spec), Vec::<String>::new());
        assert_eq!(errors("{}"), Vec::<String>::new());
    }

    #[test]
    fn maglev_sizes_must_be_the_supported_primes() {
        assert_eq!(
            errors("maglev: {tableSize: 1000}"),
            [format!(
                "spec.maglev.tableSize: 1000 is not prime: it must be one of {:?}",
                vireo_lb::PRIMES
            )]
        );
        let e = errors("maglev: {tableSize: 1009}");
        assert!(e[0].starts_with("spec.maglev.tableSize: 1009 is not one of the supported primes"));
        for p in vireo_lb::PRIMES {
            assert!(is_prime(p), "{p}");
            assert_eq!(
                errors(&format!("maglev: {{tableSize: {p}}}")),
                Vec::<String>::new()
            );
        }
        assert!(!is_prime(0) && !is_prime(1) && !is_prime(4) && !is_prime(65535));
        assert!(is_prime(2) && is_prime(3) && is_prime(1009));
    }

    #[test]
    fn masquerade_settings_are_checked() {
        assert!(errors("masquerade: {enabled: false, portRange: 62000-63000, nonMasqueradeCidrs: [10.0.0.0/8]}").is_empty());
        let e = errors("masquerade: {portRange: 63000-62000}");
        assert!(e[0].starts_with("spec.masquerade.portRange: "), "{e:?}");
        let e = errors("masquerade: {nonMasqueradeCidrs: [10.0.0.0/8, bogus]}");
        assert!(
            e[0].starts_with("spec.masquerade.nonMasqueradeCidrs[1]: "),
            "{e:?}"
        );
    }

    #[test]
    fn maglev_only_in_the_cluster_default() {
        let e = errors("nodeSelector: {matchLabels: {zone: a}}\nmaglev: {hashSeed: 1}");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("spec.maglev: can only be set in a config without nodeSelector"));
        assert!(
            errors("nodeSelector: {matchLabels: {zone: a}}\nconntrack: {maxTcp: 128}").is_empty()
        );
    }

    #[test]
    fn every_error_names_its_field() {
        let cases = [
            (
                "interfaces: [{name: eth0, role: pod}]",
                "spec.interfaces: a node needs exactly one uplink interface, these have 0",
            ),
            (
                "interfaces: [{name: a, role: uplink}, {name: b, role: uplink}]",
                "spec.interfaces: a node needs exactly one uplink interface, these have 2",
            ),
            (
                "interfaces: [{name: a, role: uplink}, {name: a, role: pod}]",
                "spec.interfaces[1].name: a is listed twice",
            ),
            (
                "interfaces: [{name: 'a:b', role: uplink}]",
                "spec.interfaces[0].name: \"a:b\" is not a valid interface name",
            ),
            ("workers: []", "spec.workers: at least one worker is needed"),
            (
                "workers: [{cores: [1]}, {cores: [2, 1]}]",
                "spec.workers[1].cores: core 1 is given to two workers",
            ),
            (
                "afXdp: {frameSize: 3000}",
                "spec.afXdp.frameSize: 3000 must be 2048 or 4096",
            ),
            (
                "afXdp: {frames: 255}",
                "spec.afXdp.frames: 255 must be 256..=1048576",
            ),
            (
                "afXdp: {rxRing: 100}",
                "spec.afXdp.rxRing: 100 must be a power of two",
            ),
            (
                "afXdp: {completionRing: 32768}",
                "spec.afXdp.completionRing: 32768 must be a power of two",
            ),
            ("vxlan: {port: 0}", "spec.vxlan.port: must be 1-65535"),
            (
                "maglev: {hashSeed: 9223372036854775808}",
                "spec.maglev.hashSeed: 9223372036854775808 is more than",
            ),
            (
                "conntrack: {maxTcp: 63}",
                "spec.conntrack.maxTcp: 63 must be 64..=16777216",
            ),
            (
                "conntrack: {maxOther: 16777217}",
                "spec.conntrack.maxOther: 16777217 must be 64..=16777216",
            ),
            (
                "conntrack: {lifetimes: {tcpSyn: 0}}",
                "spec.conntrack.lifetimes.tcpSyn: must be at least 1 second",
            ),
            (
                "nodeSelector: {matchExpressions: [{key: zone, operator: Equals, values: [a]}]}",
                "spec.nodeSelector.matchExpressions[0].operator: \"Equals\" is not one of",
            ),
        ];
        for (spec, want) in cases {
            let e = errors(spec);
            assert_eq!(e.len(), 1, "{spec}: {e:?}");
            assert!(e[0].starts_with(want), "{spec}: {e:?}");
        }
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let e =
            errors("afXdp: {frameSize: 1, rxRing: 3}\nconntrack: {maxTcp: 1}\nvxlan: {port: 0}");
        let fields: Vec<&str> = e.iter().map(|m| m.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.afXdp.frameSize",
                "spec.afXdp.rxRing",
                "spec.vxlan.port",
                "spec.conntrack.maxTcp"
            ]
        );
    }
}
