//! Tests of the agent configuration ([`super::Config`]).

use super::*;

/// The DaemonSet's configuration (deploy/vireo-agent.yaml) is valid.
#[test]
fn the_daemonset_config_parses() {
    use serde::Deserialize;
    let text = include_str!("../../../deploy/vireo-agent.yaml");
    let cm = serde_yaml_ng::Deserializer::from_str(text)
        .map(serde_yaml_ng::Value::deserialize)
        .filter_map(Result::ok)
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let yaml = cm["data"]["vireo.yaml"].as_str().expect("vireo.yaml");
    let cfg = Config::parse_with_node_env(yaml, Path::new("vireo.yaml"), Some("node-1".into()))
        .expect("valid");
    assert_eq!(cfg.services.maglev_table_size, 16381);
    assert!(
        cfg.hold_uplink_on_stop,
        "restarts keep NodePort connections"
    );
    // The Kubernetes source, in-cluster; the node's name from VIREO_NODE_NAME.
    assert_eq!(
        cfg.source,
        Some(SourceConfig::Kubernetes(KubernetesConfig::default()))
    );
    assert_eq!(cfg.node.as_deref(), Some("node-1"));
    let e = Config::parse_with_node_env(yaml, Path::new("vireo.yaml"), None).unwrap_err();
    assert!(
        e.to_string()
            .contains("node: a source needs the node's own name"),
        "{e}"
    );
}

#[test]
fn the_node_name_comes_from_the_environment_only_when_the_file_has_none() {
    let text = "node: from-file\n";
    let p = Path::new("t.yaml");
    let c = Config::parse_with_node_env(text, p, Some("from-env".into())).unwrap();
    assert_eq!(c.node.as_deref(), Some("from-file"));
    let c = Config::parse_with_node_env("{}", p, Some("from-env".into())).unwrap();
    assert_eq!(c.node.as_deref(), Some("from-env"));
    let c = Config::parse_with_node_env("node: ''\n", p, Some("from-env".into())).unwrap();
    assert_eq!(c.node.as_deref(), Some("from-env"));
    let c = Config::parse_with_node_env("{}", p, Some(String::new())).unwrap();
    assert_eq!(c.node, None);
}

fn err(text: &str) -> String {
    Config::parse(text, Path::new("t.yaml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn cluster_name_and_cidr_match_mode() {
    let p = Path::new("t.yaml");
    let c = Config::parse("{}", p).unwrap();
    assert_eq!(c.cluster_name, "default");
    assert!(!c.read_options().cidr_match_nodes);
    let c = Config::parse("cluster_name: east-1\npolicy_cidr_match_mode: [nodes]\n", p).unwrap();
    assert_eq!(c.read_options().cluster_name, "east-1");
    assert!(c.read_options().cidr_match_nodes);
    for bad in ["''", "East", "-a", "a-", "a_b", &"a".repeat(33)] {
        let e = err(&format!("cluster_name: {bad}\n"));
        assert!(e.contains("cluster_name"), "{bad}: {e}");
    }
    assert!(err("policy_cidr_match_mode: [pods]\n").contains("policy_cidr_match_mode"));
}

#[test]
fn mac_addresses() {
    assert_eq!(
        parse_mac("02:00:0a:F4:01:ff"),
        Some([0x02, 0, 0x0a, 0xf4, 0x01, 0xff])
    );
    for bad in [
        "",
        "02:00",
        "02:00:00:00:00:00:00",
        "02-00-00-00-00-00",
        "02:00:00:00:00:100",
        "g0:00:00:00:00:00",
    ] {
        assert_eq!(parse_mac(bad), None, "{bad:?}");
    }
    let m = [0x0a, 0x58, 10, 244, 1, 10];
    assert_eq!(parse_mac(&format_mac(&m)), Some(m));
}

#[test]
fn minimal_file_gets_defaults() {
    let c = Config::parse("interfaces: []\n", Path::new("t.yaml")).unwrap();
    assert_eq!(c.vxlan_port, 8472);
    assert_eq!(c.workers.len(), 1);
    assert_eq!(c.af_xdp.frame_size, 2048);
    assert_eq!(c.services.maglev_table_size, 16381);
    assert_eq!(c.services.hash_seed, 0);
    let c = Config::parse(
        "services: {maglev_table_size: 251, hash_seed: 18446744073709551615}\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    assert_eq!(c.services.maglev_table_size, 251);
    assert_eq!(c.services.hash_seed, u64::MAX);
}

#[test]
fn policy_audit_mode_is_off_unless_set() {
    let c = Config::parse("{}", Path::new("t.yaml")).unwrap();
    assert!(!c.policy_audit_mode);
    let c = Config::parse(
        "policy_audit_mode: true
",
        Path::new("t.yaml"),
    )
    .unwrap();
    assert!(c.policy_audit_mode);
    assert!(err("policy_audit_mode: sometimes
")
    .contains("policy_audit_mode"));
}

#[test]
fn masquerade_settings() {
    let c = Config::parse("{}", Path::new("t.yaml")).unwrap();
    assert!(c.masquerade.enabled);
    assert_eq!(c.masquerade.ports(), Ok((61000, 65535)));
    assert!(c.masquerade.cidrs().is_empty());
    let c = Config::parse(
        "masquerade: {enabled: false, port_range: ' 62000 - 63000', non_masquerade_cidrs: [10.0.0.0/8, 192.168.0.0/16]}\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    assert!(!c.masquerade.enabled);
    assert_eq!(c.masquerade.ports(), Ok((62000, 63000)));
    assert_eq!(
        c.masquerade.cidrs(),
        vec![
            "10.0.0.0/8".parse::<ipnet::Ipv4Net>().unwrap(),
            "192.168.0.0/16".parse().unwrap()
        ]
    );
    let e = err("masquerade: {port_range: 40000-41000}\n");
    assert!(e.contains("ephemeral"), "{e}");
}

#[test]
fn sources() {
    let c = |t: &str| Config::parse(t, Path::new("t.yaml")).unwrap();
    let base = "node: n1\ninterfaces: [{name: eth0, role: uplink}]\n";
    let m = c(&format!("{base}source: {{manifests: /run/m}}\n"));
    assert_eq!(m.source, Some(SourceConfig::Manifests("/run/m".into())));
    assert_eq!(
        m.source.as_ref().and_then(SourceConfig::manifests),
        Some(Path::new("/run/m"))
    );
    let k = c(&format!("{base}source: {{kubernetes: {{}}}}\n"));
    assert_eq!(
        k.source,
        Some(SourceConfig::Kubernetes(KubernetesConfig::default()))
    );
    let dir = std::env::temp_dir().join(format!("vireo-cfg-kc-{}", std::process::id()));
    std::fs::write(&dir, "apiVersion: v1\nkind: Config\n").unwrap();
    let k = c(&format!(
        "{base}source:\n  kubernetes:\n    kubeconfig: {}\n",
        dir.display()
    ));
    assert_eq!(
        k.source,
        Some(SourceConfig::Kubernetes(KubernetesConfig {
            kubeconfig: Some(dir.clone())
        }))
    );
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn errors_name_the_field_in_one_line() {
    let cases = [
        ("interfaces:\n  - name: a\n    role: pod\n  - name: b\n    role: podd\n", "interfaces[1].role"),
        (
            "interfaces:\n  - name: a\n    role: pod\n    endpoint: {ip: 10.0.0.1, mac: '02:00'}\n",
            "interfaces[0].endpoint.mac",
        ),
        ("af_xdp: {rx_ring: 100}\n", "af_xdp.rx_ring"),
        ("workers: [{cores: [4096]}]\n", "workers[0].cores"),
        ("gateways: [10.0.0.300]\n", "gateways[0]"),
        ("interfaces:\n  - {name: a, role: pod}\n  - {name: a, role: pod}\n", "interfaces[1].name"),
        ("interfaces:\n  - {name: a, role: uplink, endpoint: {ip: 1.2.3.4, mac: '02:00:00:00:00:01'}}\n", "interfaces[0].endpoint"),
        ("bogus: 1\n", "bogus"),
        ("services: {maglev_table_size: 1000}\n", "services.maglev_table_size"),
        ("services: {hash_seed: -1}\n", "services.hash_seed"),
        ("services: {table_size: 251}\n", "table_size"),
        ("node: n\nsource: {kubernetes: {kubeconfig: /nonexistent/kc}}\n", "source.kubernetes.kubeconfig"),
        ("node: n\nsource: {kubernetes: {kubeconfg: /x}}\n", "kubeconfg"),
        ("node: n\nsource: {kubernets: {}}\n", "source"),
        ("node: n\nsource: {manifests: /x, kubernetes: {}}\n", "source"),
        ("masquerade: {port_range: 61000}\n", "masquerade.port_range"),
        ("masquerade: {port_range: 65000-61000}\n", "masquerade.port_range"),
        ("masquerade: {port_range: 80-1000}\n", "masquerade.port_range"),
        ("masquerade: {port_range: 40000-41000}\n", "masquerade.port_range"),
        ("masquerade: {port_range: 61000-70000}\n", "masquerade.port_range"),
        ("masquerade: {non_masquerade_cidrs: [10.0.0.0/8, 10.300.0.0/16]}\n", "masquerade.non_masquerade_cidrs[1]"),
        ("masquerade: {non_masquerade_cidrs: [10.1.2.3/8]}\n", "masquerade.non_masquerade_cidrs[0]"),
        ("masquerade: {enable: false}\n", "enable"),
    ];
    for (text, field) in cases {
        let e = err(text);
        assert!(e.contains(field), "{text:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
