//! Tests of the policy readers: Cilium and Kubernetes policies, selectors, ports, named ports,
//! malformed and unknown fields.

use std::net::Ipv4Addr;
use std::path::Path;

use vireo_policy::{decide, decide_named, Decision, Identity, PeerInfo, PortNames, Verdict};

use super::*;
use crate::source::load_text;

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;
use vireo_lb::service::{TCP, UDP};

fn load(yaml: &str) -> (Manifests, PolicySet) {
    let mut m = Manifests::default();
    load_text(&mut m, yaml, Path::new("p.yaml"));
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    let set = policies(&m);
    (m, set)
}

/// The security labels of a pod in `ns` (with the namespace's labels from `m`).
fn pod(m: &Manifests, ns: &str, labels: &[(&str, &str)]) -> Labels {
    let own: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Labels::for_pod(
        vireo_policy::PodOrigin::in_namespace(ns),
        &own,
        &namespace_labels(m, ns),
    )
}

fn peer(labels: Labels) -> PeerInfo {
    PeerInfo {
        identity: Identity(1000),
        labels,
        ip: Ipv4Addr::new(10, 244, 1, 10),
        kube_apiserver: false,
        names: Vec::new(),
    }
}

fn reserved(name: &str) -> PeerInfo {
    PeerInfo {
        identity: Identity::reserved(name).unwrap(),
        labels: Labels::new([(format!("reserved:{name}"), String::new())]),
        ip: Ipv4Addr::new(192, 168, 100, 1),
        kube_apiserver: false,
        names: Vec::new(),
    }
}

fn world(ip: [u8; 4]) -> PeerInfo {
    PeerInfo {
        ip: Ipv4Addr::from(ip),
        ..reserved("world")
    }
}

fn decision(
    set: &PolicySet,
    ep: &Labels,
    d: Direction,
    p: &PeerInfo,
    proto: u8,
    port: u16,
) -> Decision {
    decide(&set.policies, ep, d, p, proto, port)
}

fn allowed(set: &PolicySet, ep: &Labels, d: Direction, p: &PeerInfo, proto: u8, port: u16) -> bool {
    decision(set, ep, d, p, proto, port).verdict == Verdict::Allowed
}

fn warned(set: &PolicySet, what: &[&str]) {
    assert!(
        set.warnings
            .iter()
            .any(|w| what.iter().all(|s| w.contains(s))),
        "no warning with {what:?} in {:#?}",
        set.warnings
    );
}

fn cnp(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, \
             namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

fn ccnp(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: \
             {{name: {name}}}\nspec:\n{spec}\n"
    )
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: \
             {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

const NAMESPACES: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {team: blue}}
";

#[test]
fn match_expressions_each_operator() {
    let (m, set) = load(&cnp(
        "x",
        "ops",
        "  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints:
    - matchExpressions:
      - {key: tier, operator: In, values: [a, b]}
      - {key: env, operator: NotIn, values: [dev]}
      - {key: team, operator: Exists}
      - {key: legacy, operator: DoesNotExist}",
    ));
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let web = pod(&m, "x", &[("app", "web")]);
    let base = [("tier", "a"), ("env", "prod"), ("team", "t")];
    let ok = |extra: &[(&str, &str)], drop: &str| {
        let mut l: Vec<(&str, &str)> = base.iter().copied().filter(|(k, _)| *k != drop).collect();
        l.extend_from_slice(extra);
        allowed(&set, &web, IN, &peer(pod(&m, "x", &l)), TCP, 80)
    };
    assert!(ok(&[], ""), "all requirements hold");
    assert!(ok(&[], "env"), "NotIn holds when the key is absent");
    assert!(!ok(&[("tier", "c")], "tier"), "In: other value");
    assert!(!ok(&[], "tier"), "In: key absent");
    assert!(!ok(&[("env", "dev")], "env"), "NotIn: excluded value");
    assert!(!ok(&[], "team"), "Exists: key absent");
    assert!(!ok(&[("legacy", "1")], ""), "DoesNotExist: key present");
}

#[test]
fn label_sources_and_implicit_namespace() {
    let (m, set) = load(&format!(
        "{NAMESPACES}{}",
        cnp(
            "x",
            "src",
            "  endpointSelector: {matchLabels: {k8s:app: web}}
  ingress:
  - fromEndpoints:
    - matchLabels: {k8s:app: a}
    - matchLabels: {any:app: b}
    - matchLabels: {reserved:host: ''}
    - matchLabels: {app: c, io.kubernetes.pod.namespace: y}
    - matchLabels: {app: d, io.cilium.k8s.namespace.labels.team: blue}
  egress:
  - toEndpoints: [{}]"
        )
    ));
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let web = pod(&m, "x", &[("app", "web")]);
    let web_y = pod(&m, "y", &[("app", "web")]);
    let from =
        |ns: &str, app: &str| allowed(&set, &web, IN, &peer(pod(&m, ns, &[("app", app)])), TCP, 80);
    // The subject is in the policy's namespace only.
    assert!(!decision(&set, &web_y, IN, &reserved("world"), TCP, 80).enforced);
    assert!(decision(&set, &web, IN, &reserved("world"), TCP, 80).enforced);
    // Peers: the policy's namespace unless the selector names one.
    assert!(from("x", "a") && !from("y", "a"));
    assert!(from("x", "b") && !from("y", "b"));
    assert!(from("y", "c") && !from("x", "c"));
    assert!(
        from("y", "d") && !from("x", "d"),
        "namespace label selects y"
    );
    // Sources: `k8s:` only matches the k8s source, `any:` every source.
    let unspec = |app: &str| {
        let l = Labels::new([
            ("unspec:app", app),
            ("k8s:io.kubernetes.pod.namespace", "x"),
        ]);
        allowed(&set, &web, IN, &peer(l), TCP, 80)
    };
    assert!(!unspec("a") && unspec("b"));
    // Reserved labels: no namespace added.
    assert!(allowed(&set, &web, IN, &reserved("host"), TCP, 80));
    assert!(!allowed(&set, &web, IN, &reserved("remote-node"), TCP, 80));
    // toEndpoints `{}`: every pod of the namespace, nothing else.
    let to = |p: &PeerInfo| allowed(&set, &web, OUT, p, TCP, 443);
    assert!(to(&peer(pod(&m, "x", &[("app", "z")]))));
    assert!(!to(&peer(pod(&m, "y", &[("app", "z")]))));
    assert!(!to(&reserved("world")) && !to(&reserved("host")));
}

#[test]
fn from_requires_limits_every_endpoint_rule_of_the_direction() {
    let (m, set) = load(&cnp(
        "x",
        "req",
        "  endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromRequires: [{matchLabels: {env: prod}}]
  - fromEndpoints: [{matchLabels: {role: frontend}}]
  - toPorts: [{ports: [{port: '9090'}]}]
  - fromEntities: [host]
  egress:
  - toRequires: [{matchLabels: {env: prod}}]
    toEndpoints: [{matchLabels: {role: db}}]",
    ));
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let me = pod(&m, "x", &[("env", "prod")]);
    let p = |l: &[(&str, &str)]| peer(pod(&m, "x", l));
    let front_prod = p(&[("role", "frontend"), ("env", "prod")]);
    let front_dev = p(&[("role", "frontend"), ("env", "dev")]);
    assert!(allowed(&set, &me, IN, &front_prod, TCP, 80));
    assert!(!allowed(&set, &me, IN, &front_dev, TCP, 80));
    // The L4-only rule is an endpoint wildcard: the requirement holds there too.
    assert!(allowed(&set, &me, IN, &front_prod, TCP, 9090));
    assert!(!allowed(&set, &me, IN, &front_dev, TCP, 9090));
    // Entities are not endpoint selectors: no requirement (as Cilium).
    assert!(allowed(&set, &me, IN, &reserved("host"), TCP, 80));
    // A requirement alone allows nothing.
    let prod = p(&[("env", "prod")]);
    assert!(!allowed(&set, &me, IN, &prod, TCP, 80));
    // Egress, within one rule.
    assert!(allowed(
        &set,
        &me,
        OUT,
        &p(&[("role", "db"), ("env", "prod")]),
        TCP,
        5432
    ));
    assert!(!allowed(&set, &me, OUT, &p(&[("role", "db")]), TCP, 5432));
}

#[test]
fn every_entity() {
    let names = [
        "host",
        "remote-node",
        "world",
        "health",
        "init",
        "unmanaged",
    ];
    for e in names.iter().chain(&["cluster", "all"]) {
        let (m, set) = load(&cnp(
            "x",
            "ent",
            &format!(
                "  endpointSelector: {{}}\n  ingress: [{{fromEntities: [{e}]}}]\n  egress: \
                     [{{toEntities: [{e}]}}]"
            ),
        ));
        assert!(set.warnings.is_empty(), "{e}: {:?}", set.warnings);
        let me = pod(&m, "x", &[("app", "a")]);
        let other_pod = peer(pod(&m, "y", &[("app", "b")]));
        for d in [IN, OUT] {
            for n in names {
                let want = *e == n || *e == "all" || (*e == "cluster" && n != "world");
                assert_eq!(
                    allowed(&set, &me, d, &reserved(n), TCP, 80),
                    want,
                    "entity {e}, peer {n}, {d:?}"
                );
            }
            let cidr_id = PeerInfo {
                identity: Identity(vireo_policy::identity::CIDR_IDENTITY_BASE + 1),
                ..world([1, 1, 1, 1])
            };
            assert_eq!(
                allowed(&set, &me, d, &cidr_id, TCP, 80),
                matches!(*e, "world" | "all"),
                "entity {e}: a CIDR identity is world"
            );
            assert_eq!(
                allowed(&set, &me, d, &other_pod, TCP, 80),
                matches!(*e, "cluster" | "all"),
                "entity {e}: a pod"
            );
        }
    }
}

#[test]
fn cidr_and_cidr_set_with_except() {
    let (m, set) = load(&cnp(
        "x",
        "cidr",
        "  endpointSelector: {}
  ingress:
  - fromCIDR: [192.168.0.0/16, 172.16.0.1]
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12, 10.1.2.3/32]}]
  egress:
  - toCIDRSet: [{cidr: 0.0.0.0/0, except: [169.254.0.0/16]}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]",
    ));
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let me = pod(&m, "x", &[]);
    let from = |ip: [u8; 4]| allowed(&set, &me, IN, &world(ip), TCP, 80);
    assert!(from([192, 168, 3, 4]) && from([172, 16, 0, 1]) && !from([172, 16, 0, 2]));
    assert!(from([10, 1, 1, 1]) && from([10, 112, 0, 1]));
    assert!(!from([10, 96, 0, 1]) && !from([10, 111, 255, 255]) && !from([10, 1, 2, 3]));
    assert!(!from([11, 0, 0, 1]));
    // A pod inside the block is not a CIDR peer.
    let pod_in_block = PeerInfo {
        ip: Ipv4Addr::new(10, 1, 1, 1),
        ..peer(pod(&m, "x", &[]))
    };
    assert!(!allowed(&set, &me, IN, &pod_in_block, TCP, 80));
    let to = |ip: [u8; 4], port| allowed(&set, &me, OUT, &world(ip), TCP, port);
    assert!(to([8, 8, 8, 8], 443) && !to([8, 8, 8, 8], 80) && !to([169, 254, 1, 1], 443));
}

#[test]
fn to_ports_end_port_protocols_and_l4_only() {
    let (m, set) = load(&cnp(
        "x",
        "ports",
        "  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts:
    - ports: [{port: '8000', endPort: 8010, protocol: tcp}, {port: 53, protocol: ANY}]
    - ports: [{port: '161', protocol: Udp}]
  - toPorts: [{ports: [{port: '22'}]}]",
    ));
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let me = pod(&m, "x", &[]);
    let a = peer(pod(&m, "x", &[("app", "a")]));
    let ok = |p: &PeerInfo, proto, port| allowed(&set, &me, IN, p, proto, port);
    assert!(ok(&a, TCP, 8000) && ok(&a, TCP, 8005) && ok(&a, TCP, 8010));
    assert!(!ok(&a, TCP, 7999) && !ok(&a, TCP, 8011) && !ok(&a, UDP, 8005));
    assert!(ok(&a, TCP, 53) && ok(&a, UDP, 53) && ok(&a, 132, 53), "ANY");
    assert!(ok(&a, UDP, 161) && !ok(&a, TCP, 161));
    assert!(!ok(&a, TCP, 80));
    // No peer, ports only: every peer, any protocol (no protocol written = ANY).
    for p in [&a, &reserved("world"), &reserved("host")] {
        assert!(ok(p, TCP, 22) && ok(p, UDP, 22));
    }
    assert!(!ok(&reserved("world"), TCP, 8005));
    // A port rule never covers ICMP or a protocol without ports (GRE 47, ESP 50), even ANY.
    for proto in [1, 47, 50] {
        assert!(!ok(&a, proto, 0), "protocol {proto}");
    }
}

/// SCTP rules allow SCTP (Kubernetes and Cilium both accept `protocol: SCTP`), exactly their
/// ports; an L3 rule allows every protocol, with ports or without.
#[test]
fn sctp_port_rules_and_l3_rules_for_every_protocol() {
    let text = format!(
        "{}---\n{}",
        cnp(
            "x",
            "sctp",
            "  endpointSelector: {matchLabels: {app: s}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: '3868', protocol: SCTP}]}]
  - fromEndpoints: [{matchLabels: {app: l3}}]",
        ),
        np(
            "x",
            "np-sctp",
            "  podSelector: {matchLabels: {app: n}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{port: 9899, protocol: SCTP}]",
        )
    );
    let (m, set) = load(&text);
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let a = peer(pod(&m, "x", &[("app", "a")]));
    let l3 = peer(pod(&m, "x", &[("app", "l3")]));
    let s = pod(&m, "x", &[("app", "s")]);
    let n = pod(&m, "x", &[("app", "n")]);
    assert!(allowed(&set, &s, IN, &a, 132, 3868));
    assert!(!allowed(&set, &s, IN, &a, 132, 3869));
    assert!(!allowed(&set, &s, IN, &a, TCP, 3868));
    assert!(allowed(&set, &n, IN, &a, 132, 9899));
    assert!(!allowed(&set, &n, IN, &a, UDP, 9899));
    for (proto, port) in [(132, 1), (TCP, 80), (47, 0), (50, 0), (1, 0)] {
        assert!(
            allowed(&set, &s, IN, &l3, proto, port),
            "L3 rule: {proto}/{port}"
        );
        assert!(
            !allowed(&set, &n, IN, &l3, proto, port),
            "default deny: {proto}/{port}"
        );
    }
}

#[test]
fn deny_beats_allow_and_selection_defaults() {
    let (m, set) = load(&cnp(
        "x",
        "deny",
        "  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEntities: [all]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {role: test}}]
  - toPorts: [{ports: [{port: '25', protocol: TCP}]}]",
    ));
    let web = pod(&m, "x", &[("app", "web")]);
    let test = peer(pod(&m, "x", &[("role", "test")]));
    let d = decision(&set, &web, IN, &test, TCP, 80);
    assert_eq!(d.verdict, Verdict::Denied);
    assert_eq!(d.rules.len(), 1);
    assert_eq!(d.rules[0].rule, "ingressDeny[0]");
    assert_eq!(d.rules[0].name, "x/deny");
    assert_eq!(d.rules[0].kind, "CiliumNetworkPolicy");
    assert!(allowed(&set, &web, IN, &reserved("world"), TCP, 80));
    assert!(!allowed(&set, &web, IN, &reserved("world"), TCP, 25));
    // Egress: no section, not enforced.
    let e = decision(&set, &web, OUT, &test, TCP, 80);
    assert!(e.verdict == Verdict::Allowed && !e.enforced);
    // An endpoint no policy selects: default allow.
    let other = pod(&m, "x", &[("app", "other")]);
    let d = decision(&set, &other, IN, &test, TCP, 25);
    assert!(d.verdict == Verdict::Allowed && !d.enforced && d.rules.is_empty());

    // Selected with nothing allowed: default deny (`- {}` and `[]` both enforce).
    let (m, set) = load(&format!(
        "{}{}",
        cnp(
            "x",
            "a",
            "  endpointSelector: {matchLabels: {app: a}}\n  ingress: [{}]"
        ),
        cnp(
            "x",
            "b",
            "  endpointSelector: {matchLabels: {app: b}}\n  egress: []"
        ),
    ));
    let a = pod(&m, "x", &[("app", "a")]);
    let b = pod(&m, "x", &[("app", "b")]);
    let d = decision(&set, &a, IN, &reserved("host"), TCP, 80);
    assert!(d.verdict == Verdict::Denied && d.enforced && d.rules.is_empty());
    assert!(allowed(&set, &a, OUT, &reserved("world"), TCP, 80));
    assert!(!allowed(&set, &b, OUT, &reserved("world"), TCP, 80));
    assert!(allowed(&set, &b, IN, &reserved("world"), TCP, 80));
}

#[test]
fn enable_default_deny() {
    let (m, set) = load(&cnp(
        "x",
        "dd",
        "  endpointSelector: {}
  enableDefaultDeny: {ingress: false, egress: true}
  ingress: [{fromEntities: [host]}]
  ingressDeny: [{fromEntities: [world]}]",
    ));
    let p = &set.policies[0];
    assert!(!p.enforce_ingress && p.enforce_egress);
    let me = pod(&m, "x", &[]);
    assert!(allowed(&set, &me, IN, &reserved("remote-node"), TCP, 80));
    assert!(
        !allowed(&set, &me, IN, &reserved("world"), TCP, 80),
        "denies still apply"
    );
    assert!(!allowed(&set, &me, OUT, &reserved("world"), TCP, 80));
}

#[test]
fn specs_lists() {
    let text = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: two, namespace: x}
specs:
- endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEndpoints: [{matchLabels: {app: b}}]}]
- endpointSelector: {matchLabels: {app: b}}
  egress: [{toEndpoints: [{matchLabels: {app: a}}]}]
";
    let (m, set) = load(text);
    assert_eq!(set.policies.len(), 2);
    let (a, b) = (pod(&m, "x", &[("app", "a")]), pod(&m, "x", &[("app", "b")]));
    let d = decision(&set, &b, OUT, &peer(a.clone()), TCP, 80);
    assert_eq!(d.verdict, Verdict::Allowed);
    assert_eq!(d.rules[0].rule, "specs[1].egress[0]");
    let d = decision(&set, &a, IN, &peer(b.clone()), TCP, 80);
    assert_eq!(d.rules[0].rule, "specs[0].ingress[0]");
    assert!(!allowed(&set, &a, IN, &peer(a.clone()), TCP, 80));
    assert!(!decision(&set, &a, OUT, &peer(b), TCP, 80).enforced);
}

#[test]
fn l7_rules_fail_closed_with_a_warning() {
    let (m, set) = load(&cnp(
        "x",
        "l7",
        "  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts:
    - ports: [{port: '80', protocol: TCP}]
      rules: {http: [{method: GET, path: /}]}
    - ports: [{port: '81', protocol: TCP}]",
    ));
    warned(
        &set,
        &[
            "CiliumNetworkPolicy x/l7 (p.yaml:2)",
            "ingress[0]: L7 rules are not enforced; port 80/TCP is denied (fail closed)",
        ],
    );
    let p = &set.policies[0];
    assert!(p.ingress[0].ports.iter().any(|pr| pr.lo == 80 && pr.l7));
    assert_eq!(p.warnings.len(), 1);
    let me = pod(&m, "x", &[]);
    let a = peer(pod(&m, "x", &[("app", "a")]));
    assert!(!allowed(&set, &me, IN, &a, TCP, 80));
    assert!(allowed(&set, &me, IN, &a, TCP, 81));
}

/// A world address known by `names` (as the endpoint learned it from DNS answers).
fn named(ip: [u8; 4], names: &[&str]) -> PeerInfo {
    PeerInfo {
        names: names.iter().map(|n| n.to_string()).collect(),
        ..world(ip)
    }
}

#[test]
fn to_fqdns_is_a_peer_of_the_names_learned_with_its_ports() {
    let (m, set) = load(&cnp(
        "x",
        "fqdn",
        "  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: Example.COM.}, {matchPattern: '*.api.example.com'}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: dns}}]",
    ));
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let me = pod(&m, "x", &[]);
    let ip = [93, 184, 215, 14];
    assert!(allowed(
        &set,
        &me,
        OUT,
        &named(ip, &["example.com"]),
        TCP,
        443
    ));
    assert!(allowed(
        &set,
        &me,
        OUT,
        &named(ip, &["v1.api.example.com."]),
        TCP,
        443
    ));
    assert!(!allowed(
        &set,
        &me,
        OUT,
        &named(ip, &["api.example.com"]),
        TCP,
        443
    ));
    assert!(
        !allowed(&set, &me, OUT, &named(ip, &["example.com"]), TCP, 80),
        "ports"
    );
    assert!(
        !allowed(&set, &me, OUT, &world(ip), TCP, 443),
        "not learned"
    );
    let mut pod_named = peer(pod(&m, "x", &[]));
    pod_named.names = vec!["example.com".into()];
    assert!(
        !allowed(&set, &me, OUT, &pod_named, TCP, 443),
        "pods are not FQDN peers"
    );
    assert!(allowed(
        &set,
        &me,
        OUT,
        &peer(pod(&m, "x", &[("app", "dns")])),
        UDP,
        53
    ));
}

#[test]
fn bad_fqdn_selectors_make_the_policy_malformed_and_deny_rules_widen_to_world() {
    for (sel, why) in [
        ("{matchName: 'a*.b'}", "toFQDNs[0].matchName"),
        (
            "{matchName: a.b, matchPattern: '*.b'}",
            "mutually exclusive",
        ),
        ("{}", "neither matchName nor matchPattern"),
    ] {
        let (_, set) = load(&cnp(
            "x",
            "bad",
            &format!("  endpointSelector: {{}}\n  egress:\n  - toFQDNs: [{sel}]"),
        ));
        warned(&set, &[why]);
        assert!(set.policies[0].egress.is_empty(), "{sel}: fail closed");
    }
    let (m, set) = load(&cnp(
        "x",
        "deny",
        "  endpointSelector: {}
  egressDeny:
  - toFQDNs: [{matchName: example.com}]",
    ));
    warned(&set, &["toFQDNs in a deny rule is not supported", "world"]);
    let me = pod(&m, "x", &[]);
    assert!(!allowed(&set, &me, OUT, &world([1, 1, 1, 1]), TCP, 443));
}

#[test]
fn dns_rules_allow_the_port_and_filter_names_other_l7_rules_stay_closed() {
    let (m, set) = load(&cnp(
        "x",
        "dns",
        "  endpointSelector: {}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: '53', protocol: ANY}]
      rules:
        dns: [{matchName: example.com}, {matchPattern: '*.example.com'}]
    - ports: [{port: '5353', protocol: UDP}]
    - ports: [{port: '8053', protocol: TCP}]
      rules: {http: [{method: GET}]}",
    ));
    warned(&set, &["port 8053/TCP is denied (fail closed)"]);
    let p = &set.policies[0];
    let dns_rule = p.egress.iter().find(|r| !r.dns.is_empty()).unwrap();
    assert_eq!(dns_rule.dns.len(), 2);
    assert!(dns_rule.ports.iter().all(|pr| pr.lo == 53 && !pr.l7));
    let me = pod(&m, "x", &[]);
    let dns = peer(pod(&m, "x", &[("app", "dns")]));
    assert!(allowed(&set, &me, OUT, &dns, UDP, 53));
    assert!(allowed(&set, &me, OUT, &dns, TCP, 53));
    assert!(allowed(&set, &me, OUT, &dns, UDP, 5353));
    assert!(!allowed(&set, &me, OUT, &dns, TCP, 8053));
    let q = |port: u16, name: &str| {
        vireo_policy::dns_query_allowed(&set.policies, &me, &dns, UDP, port, name)
    };
    assert!(q(53, "example.com") && q(53, "www.EXAMPLE.com."));
    assert!(!q(53, "evil.org") && !q(53, "a.b.example.com"));
    assert!(q(5353, "evil.org"), "no DNS rules on that port");
    // In a deny rule, DNS rules deny the whole port, as before.
    let (_, set) = load(&cnp(
        "x",
        "deny",
        "  endpointSelector: {}
  egressDeny:
  - toPorts:
    - ports: [{port: '53'}]
      rules: {dns: [{matchName: example.com}]}",
    ));
    warned(&set, &["L7 settings in a deny rule are ignored"]);
    assert!(set.policies[0].egress[0].dns.is_empty());
    assert!(!allowed(&set, &me, OUT, &dns, UDP, 53));
}

#[test]
fn dns_rules_on_ingress_stay_fail_closed_l7() {
    let (m, set) = load(&cnp(
        "x",
        "dnsin",
        "  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts:
    - ports: [{port: '53', protocol: UDP}]
      rules: {dns: [{matchPattern: '*'}]}",
    ));
    warned(&set, &["port 53/UDP is denied (fail closed)"]);
    let me = pod(&m, "x", &[]);
    let a = peer(pod(&m, "x", &[("app", "a")]));
    assert!(!allowed(&set, &me, IN, &a, UDP, 53));
}

#[test]
fn clusterwide_policies() {
    let text = format!(
        "{NAMESPACES}{}{}",
        ccnp(
            "cw",
            "  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{}]
  - fromEndpoints: [{matchLabels: {role: probe, io.kubernetes.pod.namespace: y}}]
    toPorts: [{ports: [{port: '9000'}]}]"
        ),
        ccnp(
            "hosts",
            "  nodeSelector: {matchLabels: {role: worker}}
  ingress: [{fromEntities: [cluster]}]"
        )
    );
    let (m, set) = load(&text);
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    assert_eq!(set.policies.len(), 2);
    let host = set
        .policies
        .iter()
        .find(|p| p.origin.name == "hosts")
        .unwrap();
    assert_eq!(host.node_selector, Some(Selector::label("role", "worker")));
    assert!(host.subject.is_all() && host.enforce_ingress);
    assert_eq!(host.origin.kind, "CiliumClusterwideNetworkPolicy");
    // No implicit namespace: web pods of every namespace are selected; any pod may
    // reach them, reserved identities may not (Cilium adds "is a pod" to `{}`).
    for ns in ["x", "y"] {
        let web = pod(&m, ns, &[("app", "web")]);
        assert!(allowed(&set, &web, IN, &peer(pod(&m, "x", &[])), TCP, 80));
        assert!(allowed(&set, &web, IN, &peer(pod(&m, "y", &[])), TCP, 80));
        assert!(!allowed(&set, &web, IN, &reserved("host"), TCP, 80));
    }
    // The host policy does not select pods.
    let other = pod(&m, "x", &[("role", "worker")]);
    assert!(!decision(&set, &other, IN, &reserved("world"), TCP, 80).enforced);
}

#[test]
fn network_policy_selectors_or_and() {
    let text = format!(
        "{NAMESPACES}{}{}",
        np(
            "x",
            "or",
            "  podSelector: {matchLabels: {app: or}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
    - namespaceSelector: {matchLabels: {team: blue}}"
        ),
        np(
            "x",
            "and",
            "  podSelector: {matchLabels: {app: and}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
      namespaceSelector: {matchLabels: {team: blue}}
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchExpressions: [{key: role, operator: In, values: [admin]}]}"
        )
    );
    let (m, set) = load(&text);
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let client = |ns: &str| peer(pod(&m, ns, &[("role", "client")]));
    let plain = |ns: &str| peer(pod(&m, ns, &[]));
    let or = pod(&m, "x", &[("app", "or")]);
    assert!(
        allowed(&set, &or, IN, &client("x"), TCP, 80),
        "pod selector"
    );
    assert!(
        !allowed(&set, &or, IN, &client("default"), TCP, 80),
        "own namespace"
    );
    assert!(
        allowed(&set, &or, IN, &plain("y"), TCP, 80),
        "namespace selector"
    );
    assert!(!allowed(&set, &or, IN, &plain("x"), TCP, 80));
    assert!(!allowed(&set, &or, IN, &reserved("world"), TCP, 80));
    let and = pod(&m, "x", &[("app", "and")]);
    assert!(allowed(&set, &and, IN, &client("y"), TCP, 80));
    assert!(!allowed(&set, &and, IN, &client("x"), TCP, 80));
    assert!(!allowed(&set, &and, IN, &plain("y"), TCP, 80));
    assert!(allowed(
        &set,
        &and,
        IN,
        &peer(pod(&m, "x", &[("role", "admin")])),
        TCP,
        80
    ));
    assert!(!allowed(
        &set,
        &and,
        IN,
        &peer(pod(&m, "y", &[("role", "admin")])),
        TCP,
        80
    ));
    // Only the selected pods of the namespace, and only ingress.
    let d = decision(
        &set,
        &pod(&m, "y", &[("app", "or")]),
        IN,
        &plain("x"),
        TCP,
        80,
    );
    assert!(!d.enforced);
    assert!(!decision(&set, &or, OUT, &plain("x"), TCP, 80).enforced);
}

#[test]
fn network_policy_ip_block_ports_and_empty_from() {
    let (m, set) = load(&np(
        "x",
        "ipb",
        "  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{port: 80}, {protocol: UDP, port: 5000, endPort: 5010}]
  - ports: [{port: 22}]
  egress:
  - {}",
    ));
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let me = pod(&m, "x", &[]);
    let ok = |ip: [u8; 4], proto, port| allowed(&set, &me, IN, &world(ip), proto, port);
    assert!(ok([10, 2, 0, 1], TCP, 80) && !ok([10, 1, 0, 1], TCP, 80));
    assert!(!ok([10, 2, 0, 1], UDP, 80), "protocol defaults to TCP");
    assert!(ok([10, 2, 0, 1], UDP, 5005) && !ok([10, 2, 0, 1], UDP, 5011));
    assert!(!ok([11, 0, 0, 1], TCP, 80));
    // Empty `from`: everyone, on 22/TCP.
    assert!(ok([11, 0, 0, 1], TCP, 22));
    assert!(allowed(&set, &me, IN, &reserved("host"), TCP, 22));
    assert!(!allowed(&set, &me, IN, &reserved("host"), UDP, 22));
    // `egress: [{}]`: everything (policyTypes defaulted to Ingress and Egress).
    let p = &set.policies[0];
    assert!(p.enforce_ingress && p.enforce_egress);
    assert!(allowed(&set, &me, OUT, &reserved("world"), UDP, 9));
}

#[test]
fn network_policy_types() {
    let text = format!(
        "{}{}{}",
        np(
            "x",
            "eg",
            "  podSelector: {matchLabels: {app: eg}}
  policyTypes: [Egress]
  ingress: [{}]
  egress: [{to: [{podSelector: {}}]}]"
        ),
        np(
            "x",
            "noeg",
            "  podSelector: {matchLabels: {app: noeg}}\n  egress: []"
        ),
        np(
            "x",
            "both",
            "  podSelector: {matchLabels: {app: both}}\n  policyTypes: [Ingress, Egress]"
        )
    );
    let (m, set) = load(&text);
    warned(
        &set,
        &[
            "x/eg",
            "ingress rules ignored: policyTypes does not include Ingress",
        ],
    );
    let eg = pod(&m, "x", &[("app", "eg")]);
    let d = decision(&set, &eg, IN, &reserved("world"), TCP, 80);
    assert!(d.verdict == Verdict::Allowed && !d.enforced);
    assert!(allowed(&set, &eg, OUT, &peer(pod(&m, "x", &[])), TCP, 80));
    assert!(!allowed(&set, &eg, OUT, &reserved("world"), TCP, 80));
    let noeg = pod(&m, "x", &[("app", "noeg")]);
    assert!(!decision(&set, &noeg, OUT, &reserved("world"), TCP, 80).enforced);
    assert!(!allowed(&set, &noeg, IN, &reserved("world"), TCP, 80));
    let both = pod(&m, "x", &[("app", "both")]);
    assert!(!allowed(&set, &both, IN, &reserved("host"), TCP, 80));
    assert!(!allowed(&set, &both, OUT, &reserved("host"), TCP, 80));
}

const NAMED_PODS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: x, labels: {app: web, v: '2'}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 9090}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: y, labels: {app: db}}
spec: {containers: [{name: c, image: i, ports: [{name: sql, containerPort: 5432}]}]}
";

#[test]
fn named_ports() {
    let text = format!(
        "{NAMED_PODS}{}{}{}",
        np(
            "x",
            "in",
            "  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: http}, {port: dns, protocol: UDP}, {port: nope}]}]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}]
    ports: [{port: sql}]"
        ),
        np(
            "x",
            "one",
            "  podSelector: {matchLabels: {v: '2'}}\n  ingress: [{ports: [{port: http}]}]"
        ),
        np(
            "x",
            "none",
            "  podSelector: {matchLabels: {app: none}}\n  ingress: [{ports: [{port: http}]}]"
        ),
    );
    let (m, set) = load(&text);
    // The pods disagree on "http", and that needs no warning: each has its own.
    assert!(
        !set.warnings.iter().any(|w| w.contains("different")),
        "{:#?}",
        set.warnings
    );
    warned(
        &set,
        &["x/in", "named port \"nope\" matches no container port"],
    );
    warned(
        &set,
        &["x/none", "named port \"http\" matches no container port"],
    );
    let web1 = pod(&m, "x", &[("app", "web")]);
    let web2 = pod(&m, "x", &[("app", "web"), ("v", "2")]);
    let (n1, n2) = (
        PortNames::new([("http", 8080, TCP), ("dns", 53, UDP)]),
        PortNames::new([("http", 9090, TCP)]),
    );
    let w = reserved("world");
    let on = |labels: &Labels, names: &PortNames, proto, port| {
        let name = names.name_of(proto, port);
        decide_named(&set.policies, labels, IN, &w, proto, port, name).verdict == Verdict::Allowed
    };
    // Per endpoint, as Cilium: web-1's "http" is 8080 and web-2's is 9090, not both for both
    // (Kubernetes resolves a named port against the pod the traffic goes to).
    assert!(on(&web1, &n1, TCP, 8080) && !on(&web1, &n1, TCP, 9090));
    assert!(on(&web2, &n2, TCP, 9090) && !on(&web2, &n2, TCP, 8080));
    // dns is web-1's on UDP only, and no port of web-2.
    assert!(on(&web1, &n1, UDP, 53) && !on(&web1, &n1, TCP, 53));
    assert!(!on(&web2, &n2, UDP, 53));
    assert!(!on(&web1, &n1, TCP, 80));
    // Without the endpoint's names a named port covers nothing.
    assert!(!allowed(&set, &web1, IN, &w, TCP, 8080));
    // Egress: resolved against the peer pods.
    let db = peer(pod(&m, "y", &[("app", "db")]));
    assert!(allowed(&set, &web1, OUT, &db, TCP, 5432));
    assert!(!allowed(&set, &web1, OUT, &db, TCP, 8080));
    // The rules keep the names (a NetworkPolicy port is TCP unless it says otherwise).
    let p = set
        .policies
        .iter()
        .find(|p| p.origin.name == "x/one")
        .unwrap();
    assert_eq!(p.ingress[0].ports.len(), 1);
    assert_eq!(p.ingress[0].ports[0].to_string(), "http/TCP");
    // No pod has it now: the rule allows nothing (and is not "every port") until one does.
    let p = set
        .policies
        .iter()
        .find(|p| p.origin.name == "x/none")
        .unwrap();
    assert!(p.enforce_ingress);
    let none = pod(&m, "x", &[("app", "none")]);
    let later = PortNames::new([("http", 80, TCP)]);
    assert!(!on(&none, &PortNames::default(), TCP, 80));
    assert!(on(&none, &later, TCP, 80) && !on(&none, &later, TCP, 81));
}

#[test]
fn cilium_named_ports() {
    let text = format!(
        "{NAMED_PODS}{}{}{}",
        cnp(
            "x",
            "n",
            "  endpointSelector: {matchLabels: {app: web}}
  ingress: [{toPorts: [{ports: [{port: DNS}]}]}]"
        ),
        cnp(
            "x",
            "bad",
            "  endpointSelector: {matchLabels: {app: db}}
  ingress: [{toPorts: [{ports: [{port: not_a_name}]}]}]"
        ),
        np(
            "x",
            "badnp",
            "  podSelector: {matchLabels: {app: db}}\n  ingress: [{ports: [{port: web--http}]}]"
        ),
    );
    // Names Kubernetes would not accept are errors (and the policy fails closed).
    let (_, bad) = load(&text);
    warned(&bad, &["x/bad", "port name \"not_a_name\""]);
    warned(&bad, &["x/badnp", "port name \"web--http\""]);
    let (m, set) = load(&text);
    let web = pod(&m, "x", &[("app", "web")]);
    let w = reserved("world");
    let names = PortNames::new([("http", 8080, TCP), ("dns", 53, UDP)]);
    let on = |proto, port| {
        let name = names.name_of(proto, port);
        decide_named(&set.policies, &web, IN, &w, proto, port, name).verdict == Verdict::Allowed
    };
    assert!(on(UDP, 53));
    assert!(!on(TCP, 53), "the container port's protocol");
    assert!(!on(TCP, 8080));
}

#[test]
fn malformed_policies_fail_closed_with_warnings() {
    let text = format!(
        "{NAMESPACES}{}{}{}{}{}{}{}",
        cnp(
            "x",
            "badcidr",
            "  endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromCIDR: [10.0.0.0/33]}]"
        ),
        cnp(
            "x",
            "badop",
            "  endpointSelector: {matchLabels: {app: b}}
  egress: [{toEndpoints: [{matchExpressions: [{key: k, operator: Near, values: [v]}]}]}]"
        ),
        cnp(
            "x",
            "badtype",
            "  endpointSelector: {matchLabels: {app: c}}
  ingress: [{toPorts: 7}]"
        ),
        cnp(
            "x",
            "badsubject",
            "  endpointSelector: {matchExpressions: [{key: k, operator: In}]}
  ingress: [{fromEntities: [world]}]"
        ),
        ccnp(
            "badcw",
            "  endpointSelector: 5
  ingress: [{fromEntities: [world]}]"
        ),
        np(
            "x",
            "badnp",
            "  podSelector: {matchLabels: {app: d}}
  ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]"
        ),
        np(
            "x",
            "badport",
            "  podSelector: {matchLabels: {app: e}}
  policyTypes: [Egress]
  egress: [{ports: [{port: 70000}]}]"
        ),
    );
    let (m, set) = load(&text);
    warned(
        &set,
        &[
            "x/badcidr",
            "ingress[0].fromCIDR[0]",
            "not a CIDR",
            "fail closed",
        ],
    );
    warned(
        &set,
        &[
            "x/badop",
            "unknown operator \"Near\"",
            "default deny (egress)",
        ],
    );
    warned(&set, &["x/badtype", "malformed", "fail closed"]);
    warned(
        &set,
        &[
            "x/badsubject",
            "every pod of namespace x (its subject is unreadable)",
        ],
    );
    warned(&set, &["badcw", "dropped"]);
    warned(
        &set,
        &["x/badnp", "ingress[0].from[0].ipBlock", "not a CIDR"],
    );
    warned(
        &set,
        &[
            "x/badport",
            "egress[0].ports[0].port: 70000 is not a port number",
        ],
    );
    assert!(!set.policies.iter().any(|p| p.origin.name == "badcw"));
    let w = reserved("world");
    for (app, d) in [("a", IN), ("b", OUT), ("c", IN), ("d", IN), ("e", OUT)] {
        let me = pod(&m, "x", &[("app", app)]);
        let dec = decision(&set, &me, d, &w, TCP, 80);
        assert!(dec.verdict == Verdict::Denied && dec.enforced, "{app}");
    }
    let p = set
        .policies
        .iter()
        .find(|p| p.origin.name == "x/badcidr")
        .unwrap();
    assert!(p.ingress.is_empty() && !p.enforce_egress);
    // An unreadable subject holds the whole namespace.
    let any = pod(&m, "x", &[("app", "zzz")]);
    assert!(decision(&set, &any, IN, &w, TCP, 80).enforced);
    assert!(!decision(&set, &pod(&m, "y", &[]), IN, &w, TCP, 80).enforced);
}

#[test]
fn unknown_fields_warn_and_never_widen() {
    let text = format!(
        "{}{}",
        cnp(
            "x",
            "unk",
            "  endpointSelector: {matchLabels: {app: a}}
  comment: hello
  ingress:
  - fromEndpoints: [{matchLabels: {role: ok}}]
  - fromEndpoints: [{matchLabels: {role: typo}}]
    toPort: [{ports: [{port: '80'}]}]
  egress: [{toEntities: [all]}]
  egressDeny:
  - toEndpoints: [{matchLabels: {role: bad}}]
    toPorts: [{ports: [{port: '443', endport: 500}]}]"
        ),
        np(
            "x",
            "unknp",
            "  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {matchLabel: {role: x}}}]
  - from: [{podSelector: {matchLabels: {role: ok}}}]"
        ),
    );
    let (m, set) = load(&text);
    warned(&set, &["x/unk", "unknown fields ignored: comment"]);
    warned(
        &set,
        &[
            "x/unk",
            "ingress[1]: unknown fields (toPort)",
            "allows nothing",
        ],
    );
    warned(&set, &["x/unk", "egressDeny[0]", "widened to every port"]);
    warned(
        &set,
        &[
            "x/unknp",
            "ingress[0]: unknown fields (from[0].podSelector.matchLabel)",
        ],
    );
    let a = pod(&m, "x", &[("app", "a")]);
    let role = |r: &str| peer(pod(&m, "x", &[("role", r)]));
    assert!(allowed(&set, &a, IN, &role("ok"), TCP, 80));
    assert!(!allowed(&set, &a, IN, &role("typo"), TCP, 80));
    assert!(
        !allowed(&set, &a, OUT, &role("bad"), TCP, 22),
        "deny widened"
    );
    assert!(allowed(&set, &a, OUT, &role("fine"), TCP, 22));
    let b = pod(&m, "x", &[("app", "b")]);
    assert!(allowed(&set, &b, IN, &role("ok"), TCP, 80));
    assert!(!allowed(&set, &b, IN, &role("x"), TCP, 80));
    assert!(!allowed(&set, &b, IN, &role("other"), TCP, 80));
}

#[test]
fn unsupported_peers_allow_nothing_and_widen_denies() {
    let (m, set) = load(&cnp(
        "x",
        "sup",
        "  endpointSelector: {}
  ingress:
  - fromNodes: [{matchLabels: {role: cp}}]
  - fromEntities: [kube-apiserverz]
  - fromEndpoints: [{matchLabels: {app: a}}]
    authentication: {mode: required}
  egress: [{toEntities: [all]}]
  egressDeny:
  - toEntities: [kube-apiserver]
    toPorts: [{ports: [{port: '6443', protocol: TCP}]}]
  - toServices: [{k8sService: {serviceName: s, namespace: x}}]
    toPorts: [{ports: [{port: '8443', protocol: TCP}]}]",
    ));
    warned(
        &set,
        &["ingress[0]: fromNodes is not supported", "allows nothing"],
    );
    warned(
        &set,
        &[
            "ingress[1].fromEntities[0]: unknown entity \"kube-apiserverz\"",
            "allows nothing",
        ],
    );
    warned(&set, &["ingress[2]: authentication is not supported"]);
    warned(
        &set,
        &["egressDeny[1]: toServices is not supported", "superset"],
    );
    assert!(set.policies[0].ingress.is_empty());
    let me = pod(&m, "x", &[]);
    for n in ["host", "remote-node", "world"] {
        assert!(!allowed(&set, &me, IN, &reserved(n), TCP, 80), "{n}");
        // The deny names the API server: a node or outside address that is not it passes.
        assert!(allowed(&set, &me, OUT, &reserved(n), TCP, 6443), "{n}");
        let apiserver = PeerInfo {
            kube_apiserver: true,
            names: Vec::new(),
            ..reserved(n)
        };
        assert!(!allowed(&set, &me, OUT, &apiserver, TCP, 6443), "{n}");
        assert!(allowed(&set, &me, OUT, &apiserver, TCP, 6444), "{n}");
    }
    let a = peer(pod(&m, "x", &[("app", "a")]));
    assert!(!allowed(&set, &me, IN, &a, TCP, 80));
    assert!(
        allowed(&set, &me, OUT, &a, TCP, 6443),
        "a pod is not the API server"
    );
    assert!(
        !allowed(&set, &me, OUT, &a, TCP, 8443),
        "services: any peer"
    );
}

#[test]
fn garbage_never_panics() {
    let docs = [
            cnp("x", "g1", "  7"),
            cnp("x", "g2", "  endpointSelector: {}\n  ingress: yes"),
            cnp("x", "g3", "  endpointSelector: {}\n  egress: [7, {toPorts: [{ports: [{port: [1]}]}]}]"),
            cnp("x", "g4", "  endpointSelector: {matchLabels: 3}"),
            cnp("x", "g5", "  nodeSelector: {}\n  ingress: []"),
            cnp("x", "g6", "  endpointSelector: {}\n  ingress: [{fromEntities: [moon]}]"),
            cnp("x", "g7", "  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '90', endPort: 80}]}]}]"),
            ccnp("g8", "  {}"),
            np("x", "g9", "  podSelector: 7\n  ingress: [{}]"),
            np("x", "g10", "  policyTypes: [Sideways]"),
            np("x", "g11", "  ingress: [{from: [{}]}]"),
            np("x", "g12", "  ingress: [{ports: [{port: http, endPort: 90}]}]"),
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: g13}\nspecs: 5\n".into(),
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: g14}\n".into(),
            "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: g15}\nspecs: [3, {endpointSelector: {}, egress: [{toEntities: [world]}]}]\n".into(),
        ];
    let (_, set) = load(&docs.concat());
    for name in [
        "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9", "g10", "g11", "g12", "g13", "g14",
    ] {
        warned(&set, &[&format!("{name} (p.yaml")]);
    }
    // g15: the readable spec still loads.
    let g15: Vec<&Policy> = set
        .policies
        .iter()
        .filter(|p| p.origin.name == "g15")
        .collect();
    assert_eq!(g15.len(), 1);
    assert_eq!(g15[0].egress.len(), 1);
    // Every malformed policy that had a direction keeps it enforced with no rules.
    for p in &set.policies {
        if p.origin.name != "g15" {
            assert!(p.ingress.is_empty() && p.egress.is_empty(), "{}", p.origin);
        }
    }
}

#[test]
fn unknown_null_fields_are_silent_and_errors_name_the_deepest_field() {
    let text = format!(
        "{}{}",
        cnp(
            "x",
            "nul",
            "  endpointSelector: {matchLabels: {app: a}}
  comment: ~
  ingress:
  - fromEndpoints: [{matchLabels: {role: ok}}]
    toPort: ~"
        ),
        cnp(
            "x",
            "deep",
            "  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - toPorts: [{ports: [{port: '80', endPort: [1]}]}]"
        ),
    );
    let (m, set) = load(&text);
    assert!(
        !set.warnings.iter().any(|w| w.contains("x/nul")),
        "{:#?}",
        set.warnings
    );
    let a = pod(&m, "x", &[("app", "a")]);
    let ok = peer(pod(&m, "x", &[("role", "ok")]));
    assert!(allowed(&set, &a, IN, &ok, TCP, 80));
    warned(
        &set,
        &[
            "x/deep",
            "ingress[0].toPorts[0].ports[0].endPort: malformed",
            "fail closed",
        ],
    );
}

/// Cilium's documented `fromRequires` example, as two policies: the requirement of one
/// constrains the rules of the other.
#[test]
fn from_requires_of_one_policy_constrain_another_policys_rules() {
    let (m, set) = load(&format!(
        "{}{}",
        cnp(
            "x",
            "requires-prod",
            "  endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromRequires: [{matchLabels: {env: prod}}]",
        ),
        cnp(
            "x",
            "allow-frontend",
            "  endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
  - fromEntities: [host]",
        )
    ));
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let me = pod(&m, "x", &[("env", "prod")]);
    let p = |l: &[(&str, &str)]| peer(pod(&m, "x", l));
    assert!(!allowed(
        &set,
        &me,
        IN,
        &p(&[("role", "frontend"), ("env", "dev")]),
        TCP,
        80
    ));
    assert!(allowed(
        &set,
        &me,
        IN,
        &p(&[("role", "frontend"), ("env", "prod")]),
        TCP,
        80
    ));
    assert!(allowed(&set, &me, IN, &reserved("host"), TCP, 80));
    // Egress is not constrained by ingress requirements; a pod the policies do not select is
    // not either.
    let other = pod(&m, "x", &[("env", "dev")]);
    assert!(allowed(
        &set,
        &other,
        IN,
        &p(&[("role", "frontend")]),
        TCP,
        80
    ));
}

/// Every pod carries Cilium's derived labels, and policies select on them.
#[test]
fn service_account_and_cluster_labels_select_pods() {
    let (mut m, _) = load(&format!(
        "{}{}",
        cnp(
            "x",
            "by-sa",
            "  endpointSelector: {}
  ingress:
  - fromEndpoints:
    - matchLabels: {io.cilium.k8s.policy.serviceaccount: frontend}
    - matchLabels:
        io.cilium.k8s.policy.cluster: east
        k8s:io.kubernetes.pod.namespace: y",
        ),
        "---
apiVersion: v1
kind: Pod
metadata: {name: fe, namespace: x}
spec: {serviceAccountName: frontend, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: x}
spec: {containers: [{name: c, image: i}]}
"
    ));
    let set = policies(&m);
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let labels_of = |m: &Manifests, name: &str| {
        let p = &m.pods[&("x".to_string(), name.to_string())];
        Labels::for_pod(
            m.pod_origin("x", p),
            p.metadata.labels.iter().flatten(),
            &namespace_labels(m, "x"),
        )
    };
    let me = labels_of(&m, "other");
    assert_eq!(
        me.get("k8s:io.cilium.k8s.policy.serviceaccount"),
        Some("default")
    );
    assert_eq!(me.get("k8s:io.cilium.k8s.policy.cluster"), Some("default"));
    let fe = labels_of(&m, "fe");
    assert!(allowed(&set, &me, IN, &peer(fe.clone()), TCP, 80));
    assert!(!allowed(&set, &me, IN, &peer(me.clone()), TCP, 80));
    // A pod of namespace y in cluster `east` only once the cluster is called so.
    let in_y = |m: &Manifests| {
        let origin = vireo_policy::PodOrigin {
            cluster: m.cluster_name(),
            ..vireo_policy::PodOrigin::in_namespace("y")
        };
        peer(Labels::for_pod(origin, [], &namespace_labels(m, "y")))
    };
    assert!(!allowed(&set, &me, IN, &in_y(&m), TCP, 80));
    m.read.cluster_name = "east".into();
    let me = labels_of(&m, "other");
    assert!(allowed(&set, &me, IN, &in_y(&m), TCP, 80));
}

/// The `kube-apiserver` entity selects the API server's addresses wherever it runs; `ingress`
/// and `none` match nothing here; an unknown entity allows nothing and widens a deny.
#[test]
fn kube_apiserver_ingress_none_and_unknown_entities() {
    let (m, set) = load(&cnp(
        "x",
        "ent",
        "  endpointSelector: {}
  egress:
  - toEntities: [kube-apiserver]
    toPorts: [{ports: [{port: '6443', protocol: TCP}]}]
  - toEntities: [ingress, none, bogus]
  egressDeny:
  - toEntities: [not-an-entity]
    toPorts: [{ports: [{port: '25', protocol: TCP}]}]",
    ));
    warned(
        &set,
        &[
            "egress[1].toEntities[2]: unknown entity \"bogus\"",
            "allows nothing",
        ],
    );
    warned(&set, &["egressDeny[0].toEntities[0]", "covers every peer"]);
    let me = pod(&m, "x", &[]);
    let api = |p: PeerInfo| PeerInfo {
        kube_apiserver: true,
        names: Vec::new(),
        ..p
    };
    let in_cluster = api(peer(pod(&m, "kube-system", &[("component", "apiserver")])));
    for p in [
        api(reserved("host")),
        api(reserved("remote-node")),
        api(world([1, 2, 3, 4])),
        in_cluster,
    ] {
        assert!(allowed(&set, &me, OUT, &p, TCP, 6443), "{p:?}");
        assert!(!allowed(&set, &me, OUT, &p, TCP, 6444), "{p:?}");
    }
    for n in ["host", "remote-node", "world"] {
        assert!(!allowed(&set, &me, OUT, &reserved(n), TCP, 6443), "{n}");
    }
    assert!(!allowed(&set, &me, OUT, &world([8, 8, 8, 8]), TCP, 25));
}

/// Kubernetes `ipBlock` selects every address in the block, pods and nodes included (the
/// upstream e2e tests' expectation), with `except` honoured; Cilium CIDR rules select outside
/// addresses, and nodes too under `policy-cidr-match-mode: nodes`.
#[test]
fn ip_block_selects_pods_and_nodes_cilium_cidr_only_with_match_mode() {
    let pod_at = |m: &Manifests, ip: [u8; 4]| PeerInfo {
        ip: Ipv4Addr::from(ip),
        ..peer(pod(m, "y", &[("app", "client")]))
    };
    let node_at = |ip: [u8; 4]| PeerInfo {
        ip: Ipv4Addr::from(ip),
        ..reserved("remote-node")
    };
    let (m, set) = load(&np(
        "x",
        "ipb",
        "  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.0/24]}}]
  - from: [{ipBlock: {cidr: 192.168.1.0/24}}]",
    ));
    let me = pod(&m, "x", &[]);
    assert!(allowed(
        &set,
        &me,
        IN,
        &pod_at(&m, [10, 244, 2, 5]),
        TCP,
        80
    ));
    assert!(
        !allowed(&set, &me, IN, &pod_at(&m, [10, 244, 1, 5]), TCP, 80),
        "except"
    );
    assert!(!allowed(
        &set,
        &me,
        IN,
        &pod_at(&m, [10, 245, 0, 1]),
        TCP,
        80
    ));
    assert!(allowed(&set, &me, IN, &node_at([192, 168, 1, 7]), TCP, 80));
    assert!(allowed(&set, &me, IN, &world([10, 244, 3, 3]), TCP, 80));
    let cnp_text = cnp(
        "x",
        "cidr",
        "  endpointSelector: {}
  ingress:
  - fromCIDR: [10.244.0.0/16, 192.168.1.0/24]",
    );
    let (m, set) = load(&cnp_text);
    assert!(!allowed(
        &set,
        &me,
        IN,
        &pod_at(&m, [10, 244, 2, 5]),
        TCP,
        80
    ));
    assert!(!allowed(&set, &me, IN, &node_at([192, 168, 1, 7]), TCP, 80));
    assert!(allowed(&set, &me, IN, &world([10, 244, 3, 3]), TCP, 80));
    let mut m = Manifests::default();
    m.read.cidr_match_nodes = true;
    load_text(&mut m, &cnp_text, Path::new("p.yaml"));
    let set = policies(&m);
    assert!(!allowed(
        &set,
        &me,
        IN,
        &pod_at(&m, [10, 244, 2, 5]),
        TCP,
        80
    ));
    assert!(allowed(&set, &me, IN, &node_at([192, 168, 1, 7]), TCP, 80));
    assert!(!allowed(&set, &me, IN, &node_at([192, 168, 2, 7]), TCP, 80));
}
