use std::path::Path;

use super::*;
use crate::crd::nodeconfig::VireoNodeConfigSpec;

fn cfg(name: &str, spec: &str) -> VireoNodeConfig {
    let spec: VireoNodeConfigSpec = serde_yaml_ng::from_str(spec).expect("spec parses");
    VireoNodeConfig::new(name, spec)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn default_cfg() -> VireoNodeConfig {
    cfg(
        "default",
        "interfaces: [{name: eth0, role: uplink}]\n\
         workers: [{cores: [1]}, {cores: [2]}]\n\
         afXdp: {frames: 8192, rxRing: 2048}\n\
         maglev: {tableSize: 32749, hashSeed: 7}\n\
         conntrack: {maxTcp: 65536, lifetimes: {tcpSyn: 30}}\n",
    )
}

fn file_defaults() -> Config {
    serde_yaml_ng::from_str("{}").unwrap()
}

#[test]
fn the_default_alone_layers_over_the_file_defaults() {
    let s = effective_settings(&labels(&[]), &[default_cfg()]).unwrap();
    let d = file_defaults();
    assert_eq!(s.applied, ["default"]);
    assert_eq!(s.interfaces.len(), 1);
    assert_eq!(s.interfaces[0].name, "eth0");
    assert_eq!(s.workers.len(), 2);
    assert_eq!(s.workers[1].cores, [2]);
    assert_eq!(s.af_xdp.frames, 8192);
    assert_eq!(s.af_xdp.rx_ring, 2048);
    assert_eq!(s.af_xdp.tx_ring, d.af_xdp.tx_ring);
    assert_eq!(s.af_xdp.frame_size, d.af_xdp.frame_size);
    assert_eq!(s.services.maglev_table_size, 32749);
    assert_eq!(s.services.hash_seed, 7);
    assert_eq!(s.conntrack.max_tcp, 65536);
    assert_eq!(s.conntrack.max_other, d.conntrack.max_other);
    assert_eq!(s.conntrack.lifetimes.tcp_syn, 30);
    assert_eq!(
        s.conntrack.lifetimes.tcp_established,
        d.conntrack.lifetimes.tcp_established
    );
    assert_eq!(s.vxlan_port, d.vxlan_port);
    assert_eq!(s.xdp_mode, d.xdp_mode);
}

#[test]
fn a_matching_config_overrides_field_by_field() {
    let fast = cfg(
        "fast",
        "nodeSelector: {matchLabels: {vireo.io/profile: fast}}\n\
         afXdp: {rxRing: 512}\n\
         xdp: {busyPoll: true}\n\
         conntrack: {lifetimes: {nonTcp: 5}}\n",
    );
    let configs = [default_cfg(), fast];
    let s = effective_settings(&labels(&[("vireo.io/profile", "fast")]), &configs).unwrap();
    assert_eq!(s.applied, ["default", "fast"]);
    assert_eq!(s.af_xdp.rx_ring, 512, "overridden");
    assert_eq!(s.af_xdp.frames, 8192, "kept from the default");
    assert!(s.busy_poll);
    assert_eq!(s.conntrack.lifetimes.non_tcp, 5, "overridden");
    assert_eq!(s.conntrack.lifetimes.tcp_syn, 30, "a sibling kept");
    assert_eq!(s.conntrack.max_tcp, 65536, "the parent's other field kept");
    assert_eq!(s.interfaces[0].name, "eth0");

    let other = effective_settings(&labels(&[("vireo.io/profile", "slow")]), &configs).unwrap();
    assert_eq!(other.applied, ["default"]);
    assert_eq!(other.af_xdp.rx_ring, 2048);
    assert!(!other.busy_poll);
}

#[test]
fn masquerade_layers_field_by_field_and_reaches_the_agent_config() {
    let base = cfg(
        "default",
        "interfaces: [{name: eth0, role: uplink}]\n\
         masquerade: {portRange: 62000-63000, nonMasqueradeCidrs: [10.0.0.0/8]}\n",
    );
    let off = cfg(
        "off",
        "nodeSelector: {matchLabels: {masq: off}}\nmasquerade: {enabled: false}\n",
    );
    let configs = [base, off];
    let s = effective_settings(&labels(&[("masq", "off")]), &configs).unwrap();
    assert!(!s.masquerade.enabled, "overridden");
    assert_eq!(
        s.masquerade.port_range, "62000-63000",
        "kept from the default"
    );
    assert_eq!(s.masquerade.non_masquerade_cidrs, ["10.0.0.0/8"]);
    let on = effective_settings(&labels(&[]), &configs).unwrap();
    assert!(on.masquerade.enabled);
    let mut file = file_defaults();
    on.apply_to(&mut file);
    assert_eq!(file.masquerade.ports(), Ok((62000, 63000)));
    let d = effective_settings(&labels(&[]), &[default_cfg()]).unwrap();
    assert_eq!(
        d.masquerade,
        file_defaults().masquerade,
        "the file's defaults"
    );
}

#[test]
fn policy_audit_mode_layers_and_reaches_the_agent_config() {
    let base = cfg(
        "default",
        "interfaces: [{name: eth0, role: uplink}]\npolicy: {auditMode: true}\n",
    );
    let strict = cfg(
        "strict",
        "nodeSelector: {matchLabels: {audit: off}}\npolicy: {auditMode: false}\n",
    );
    let configs = [base, strict];
    let on = effective_settings(&labels(&[]), &configs).unwrap();
    assert!(on.policy_audit_mode);
    let off = effective_settings(&labels(&[("audit", "off")]), &configs).unwrap();
    assert!(!off.policy_audit_mode, "overridden");
    let mut file = file_defaults();
    assert!(!file.policy_audit_mode);
    on.apply_to(&mut file);
    assert!(file.policy_audit_mode);
    let d = effective_settings(&labels(&[]), &[default_cfg()]).unwrap();
    assert!(!d.policy_audit_mode, "off by default");
}

#[test]
fn lists_are_replaced_whole() {
    let one = cfg(
        "one-worker",
        "nodeSelector: {}\nworkers: [{cores: [3]}]\ninterfaces: [{name: bond0, role: uplink}, {name: lxc9, role: pod}]\n",
    );
    let s = effective_settings(&labels(&[]), &[default_cfg(), one]).unwrap();
    assert_eq!(s.workers, [WorkerConfig { cores: vec![3] }]);
    let names: Vec<&str> = s.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["bond0", "lxc9"]);
}

#[test]
fn precedence_is_selector_then_priority_then_name() {
    let sel = "nodeSelector: {matchExpressions: [{key: zone, operator: In, values: [a, b]}]}\n";
    let node = labels(&[("zone", "a")]);
    let rx = |configs: &[VireoNodeConfig]| {
        let s = effective_settings(&node, configs).unwrap();
        (s.af_xdp.rx_ring, s.applied)
    };
    // Priority beats name: "a-high" (priority 10) wins over "z-low" (0).
    let high = cfg(
        "a-high",
        &format!("{sel}priority: 10\nafXdp: {{rxRing: 128}}\n"),
    );
    let low = cfg("z-low", &format!("{sel}afXdp: {{rxRing: 256}}\n"));
    let (got, order) = rx(&[default_cfg(), low.clone(), high.clone()]);
    assert_eq!(got, 128);
    assert_eq!(order, ["default", "z-low", "a-high"]);
    // The input order does not matter.
    assert_eq!(rx(&[high.clone(), default_cfg(), low.clone()]).0, 128);
    // At equal priority the later name wins.
    let base = cfg("10-base", &format!("{sel}afXdp: {{rxRing: 128}}\n"));
    let fast = cfg("20-fast", &format!("{sel}afXdp: {{rxRing: 256}}\n"));
    assert_eq!(rx(&[fast.clone(), base.clone(), default_cfg()]).0, 256);
    assert_eq!(rx(&[base, fast, default_cfg()]).0, 256);
    // A selector config beats a selector-less one whatever their priorities.
    let mut strong_default = default_cfg();
    strong_default.spec.priority = Some(1000);
    let weak = cfg(
        "weak",
        &format!("{sel}priority: -5\nafXdp: {{rxRing: 64}}\n"),
    );
    assert_eq!(rx(&[weak, strong_default]).0, 64);
    // Between selector-less configs, priority then name too.
    let extra = cfg("zz-extra", "priority: -1\nafXdp: {rxRing: 4096}\n");
    let (got, order) = rx(&[default_cfg(), extra]);
    assert_eq!(got, 2048, "default (priority 0) wins over zz-extra (-1)");
    assert_eq!(order, ["zz-extra", "default"]);
}

#[test]
fn expressions_select_nodes() {
    let not_gpu = cfg(
        "no-gpu",
        "nodeSelector: {matchExpressions: [{key: gpu, operator: DoesNotExist}, {key: zone, operator: NotIn, values: [c]}]}\nvxlan: {port: 4789}\n",
    );
    let configs = [default_cfg(), not_gpu];
    let port = |l: &[(&str, &str)]| effective_settings(&labels(l), &configs).unwrap().vxlan_port;
    assert_eq!(port(&[]), 4789);
    assert_eq!(port(&[("zone", "a")]), 4789);
    assert_eq!(port(&[("zone", "c")]), 8472);
    assert_eq!(port(&[("gpu", "true")]), 8472);
}

#[test]
fn an_invalid_config_that_applies_is_an_error() {
    let bad = cfg(
        "bad",
        "nodeSelector: {matchLabels: {zone: a}}\nafXdp: {rxRing: 100}\nconntrack: {maxTcp: 1}\n",
    );
    let configs = [default_cfg(), bad];
    let e = effective_settings(&labels(&[("zone", "a")]), &configs).unwrap_err();
    let EffectiveError::Invalid(list) = &e else {
        panic!("{e}")
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "bad");
    let fields: Vec<&str> = list[0].errors.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, ["spec.afXdp.rxRing", "spec.conntrack.maxTcp"]);
    assert!(e.to_string().contains("bad: spec.afXdp.rxRing: 100"), "{e}");
    // Another node is not concerned.
    let s = effective_settings(&labels(&[("zone", "b")]), &configs).unwrap();
    assert_eq!(s.applied, ["default"]);
}

#[test]
fn an_invalid_selector_is_an_error_everywhere() {
    let bad = cfg(
        "bad-selector",
        "nodeSelector: {matchExpressions: [{key: zone, operator: Equals, values: [a]}]}\n",
    );
    let e = effective_settings(&labels(&[("zone", "b")]), &[default_cfg(), bad]).unwrap_err();
    assert!(
        matches!(&e, EffectiveError::Invalid(l) if l[0].name == "bad-selector"),
        "{e}"
    );
}

#[test]
fn an_invalid_default_is_an_error() {
    let mut d = default_cfg();
    d.spec.maglev.as_mut().unwrap().table_size = Some(1000);
    let e = effective_settings(&labels(&[]), &[d]).unwrap_err();
    assert!(
        e.to_string()
            .contains("spec.maglev.tableSize: 1000 is not prime"),
        "{e}"
    );
}

#[test]
fn interfaces_must_come_from_somewhere() {
    let e = effective_settings(&labels(&[]), &[]).unwrap_err();
    assert_eq!(e, EffectiveError::NoInterfaces { applied: vec![] });
    let only = cfg("tuning", "afXdp: {frames: 512}\n");
    let e = effective_settings(&labels(&[]), &[only]).unwrap_err();
    assert_eq!(
        e,
        EffectiveError::NoInterfaces {
            applied: vec!["tuning".into()]
        }
    );
}

#[test]
fn the_settings_make_a_valid_agent_config() {
    let s = effective_settings(&labels(&[]), &[default_cfg()]).unwrap();
    let mut c: Config = serde_yaml_ng::from_str(
        "node: node-1\nsource: {manifests: /tmp/m}\nworkers: [{cores: [0]}]\n",
    )
    .unwrap();
    s.apply_to(&mut c);
    // This machine may have fewer cores than the default config pins to.
    c.workers = vec![WorkerConfig { cores: vec![0] }];
    c.validate(Path::new("t")).expect("valid");
    assert_eq!(c.interfaces.len(), 1);
    assert_eq!(c.interfaces[0].role, Role::Uplink);
    assert_eq!(c.services.maglev_table_size, 32749);
    assert_eq!(c.conntrack.max_tcp, 65536);
    assert_eq!(c.af_xdp.frames, 8192);
    assert_eq!(c.node.as_deref(), Some("node-1"), "kept");
}
