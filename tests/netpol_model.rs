//! The Kubernetes network-policy conformance model, offline.
//!
//! Upstream's e2e tests (kubernetes/kubernetes, test/e2e/network/netpol/network_policy.go) run
//! pods a, b, c in namespaces x, y, z, each serving ports 80 and 81 over TCP and UDP (container
//! ports named `serve-80-tcp`, …), apply policies, and compare every pod-to-pod probe with a
//! reachability matrix written from the test's expectation. Here the same cases run against the
//! real `vireo policy trace` over a manifest directory: the policies and the truth tables are
//! upstream's (the full 3×3 topology of its older versions; newer versions create only the pods
//! a case needs, with the same expectations), the answers are Vireo's. As upstream
//! (`ignoreLoopback`), a pod's traffic to itself is not compared.
//!
//! Every case compares with upstream's table as written: no cell is excepted (ipBlock peers
//! select pods by address, as the upstream tests expect).
//!
//! No root needed. The bulk of the matrix comes from one `vireo policy trace --all-pairs` per
//! probe set (a hidden batch mode); `single_pair_traces_agree_with_the_batch` checks, on a few
//! cases, that every single-pair `vireo policy trace --json` says the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const VIREO: &str = env!("CARGO_BIN_EXE_vireo");
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// The nine pods, `x/a` … `z/c`, in matrix order.
fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

fn index(pod: &str) -> usize {
    all_pods()
        .iter()
        .position(|p| p == pod)
        .unwrap_or_else(|| panic!("no pod {pod}"))
}

/// A reachability matrix, as upstream's `Reachability`: `m[from][to]`.
#[derive(Clone, PartialEq, Eq)]
struct Reach {
    m: [[bool; 9]; 9],
}

/// Upstream's `Peer`: `""` is every pod, `"x"` the pods of namespace x, `"x/a"` one pod.
fn peer_matches(peer: &str, pod: &str) -> bool {
    match peer.split_once('/') {
        _ if peer.is_empty() => true,
        Some(_) => peer == pod,
        None => pod.split('/').next() == Some(peer),
    }
}

impl Reach {
    /// `NewReachability(pods, connected)`.
    fn new(connected: bool) -> Reach {
        Reach {
            m: [[connected; 9]; 9],
        }
    }
    /// `Expect(from, to, connected)`.
    fn expect(mut self, from: &str, to: &str, v: bool) -> Reach {
        self.m[index(from)][index(to)] = v;
        self
    }
    /// `ExpectPeer(from, to, connected)`.
    fn expect_peer(mut self, from: &str, to: &str, v: bool) -> Reach {
        let pods = all_pods();
        for (i, f) in pods.iter().enumerate() {
            for (j, t) in pods.iter().enumerate() {
                if peer_matches(from, f) && peer_matches(to, t) {
                    self.m[i][j] = v;
                }
            }
        }
        self
    }
    /// `ExpectAllIngress(pod, connected)`.
    fn expect_all_ingress(self, pod: &str, v: bool) -> Reach {
        self.expect_peer("", pod, v)
    }
    /// `ExpectAllEgress(pod, connected)`.
    fn expect_all_egress(self, pod: &str, v: bool) -> Reach {
        self.expect_peer(pod, "", v)
    }

    /// The table as upstream prints it, with `!` on the cells in `marks`.
    fn table(&self, marks: &[(usize, usize)]) -> String {
        let pods = all_pods();
        let mut s = format!("{:<6}", "");
        for p in &pods {
            s.push_str(&format!("{p:<5}"));
        }
        s.push('\n');
        for (i, f) in pods.iter().enumerate() {
            s.push_str(&format!("{f:<6}"));
            for j in 0..9 {
                let c = if i == j {
                    "-"
                } else if self.m[i][j] {
                    "."
                } else {
                    "X"
                };
                let mark = if marks.contains(&(i, j)) { "!" } else { " " };
                s.push_str(&format!("{c}{mark}   "));
            }
            s.push('\n');
        }
        s
    }
}

/// What the objects of one stage change: extra namespace and pod labels, and the policies.
#[derive(Default, Clone)]
struct World {
    ns_labels: Vec<(&'static str, &'static str, &'static str)>,
    pod_labels: Vec<(&'static str, &'static str, &'static str)>,
    policies: Vec<String>,
}

/// Probes on one port with the matrix upstream expects.
struct Probe {
    port: u16,
    proto: &'static str,
    expect: Reach,
}

/// One state of the cluster and the probes run against it.
struct Stage {
    world: World,
    probes: Vec<Probe>,
}

struct Case {
    name: &'static str,
    stages: Vec<Stage>,
}

fn stage(world: World, probes: Vec<Probe>) -> Stage {
    Stage { world, probes }
}

fn staged(name: &'static str, stages: Vec<Stage>) -> Case {
    Case { name, stages }
}

fn tcp(port: u16, expect: Reach) -> Probe {
    Probe {
        port,
        proto: "TCP",
        expect,
    }
}

fn udp(port: u16, expect: Reach) -> Probe {
    Probe {
        port,
        proto: "UDP",
        expect,
    }
}

fn policies(p: impl IntoIterator<Item = String>) -> World {
    World {
        policies: p.into_iter().collect(),
        ..Default::default()
    }
}

fn case(name: &'static str, p: &[String], probes: Vec<Probe>) -> Case {
    staged(name, vec![stage(policies(p.to_vec()), probes)])
}

/// A NetworkPolicy in namespace `ns` with `spec` written as a YAML flow mapping.
fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

/// The IP of a pod: pods alternate between node-1 (10.244.1.0/24) and node-2.
fn pod_ip(i: usize) -> String {
    format!("10.244.{}.{}", i % 2 + 1, 10 + i)
}

/// Nodes, namespaces (labelled `ns: <name>`; Kubernetes' own `kubernetes.io/metadata.name` is
/// not written: Vireo must add it) and pods (labelled `pod: <name>`, serving 80 and 81 over
/// TCP and UDP), as upstream's model creates them.
fn cluster_yaml(w: &World) -> String {
    let mut s = String::new();
    for n in 1..=2 {
        s.push_str(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\nspec: {{podCIDR: 10.244.{n}.0/24}}\nstatus: {{addresses: [{{type: InternalIP, address: 192.168.100.{}}}]}}\n---\n",
            10 + n
        ));
    }
    let extra = |l: &[(&str, &str, &str)], who: &str| -> String {
        l.iter()
            .filter(|(w, _, _)| *w == who)
            .map(|(_, k, v)| format!(", {k}: {v}"))
            .collect()
    };
    for ns in NAMESPACES {
        s.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}{}}}}}\n---\n",
            extra(&w.ns_labels, ns)
        ));
    }
    let mut containers = Vec::new();
    for port in [80, 81] {
        for proto in ["TCP", "UDP"] {
            let lp = proto.to_lowercase();
            containers.push(format!(
                "{{name: cont-{port}-{lp}, image: agnhost, ports: [{{containerPort: {port}, name: serve-{port}-{lp}, protocol: {proto}}}]}}"
            ));
        }
    }
    for (i, pod) in all_pods().iter().enumerate() {
        let (ns, name) = pod.split_once('/').unwrap();
        s.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}{}}}}}\nspec: {{nodeName: node-{}, containers: [{}]}}\nstatus: {{podIP: {}}}\n---\n",
            extra(&w.pod_labels, pod),
            i % 2 + 1,
            containers.join(", "),
            pod_ip(i)
        ));
    }
    s
}

/// A fresh directory with the stage's manifests.
fn write_dir(tag: &str, w: &World) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vireo-netpol-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), cluster_yaml(w)).unwrap();
    std::fs::write(dir.join("policies.yaml"), w.policies.join("---\n")).unwrap();
    dir
}

fn vireo(args: &[&str]) -> Output {
    Command::new(VIREO)
        .args(args)
        .env("VIREO_LOG", "error")
        .output()
        .unwrap_or_else(|e| panic!("running vireo {args:?}: {e}"))
}

fn ok_json(args: &[&str]) -> Value {
    let o = vireo(args);
    assert!(
        o.status.success(),
        "vireo {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "vireo {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// Vireo's matrix for one probe, from `policy trace --all-pairs`.
fn vireo_matrix(dir: &Path, port: u16, proto: &str) -> Reach {
    let dport = format!("{port}/{proto}");
    let v = ok_json(&[
        "policy",
        "trace",
        "--all-pairs",
        "--manifests",
        dir.to_str().unwrap(),
        "--dport",
        &dport,
    ]);
    let pairs = v["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 81, "{v}");
    let mut r = Reach::new(false);
    for p in pairs {
        let (s, d) = (p["src"].as_str().unwrap(), p["dst"].as_str().unwrap());
        r.m[index(s)][index(d)] = match p["verdict"].as_str() {
            Some("allowed") => true,
            Some("denied") => false,
            other => panic!("verdict {other:?} in {p}"),
        };
    }
    r
}

/// Runs a case; returns one message per probe whose matrix is not as expected.
fn run_case(c: &Case, k: usize) -> Vec<String> {
    let mut failures = Vec::new();
    for (si, stage) in c.stages.iter().enumerate() {
        let dir = write_dir(&format!("{k}-{si}"), &stage.world);
        for p in &stage.probes {
            let got = vireo_matrix(&dir, p.port, p.proto);
            let mut wrong = Vec::new();
            for i in 0..9 {
                for j in (0..9).filter(|j| *j != i) {
                    if got.m[i][j] != p.expect.m[i][j] {
                        wrong.push((i, j));
                    }
                }
            }
            if !wrong.is_empty() {
                failures.push(format!(
                    "case {:?}, stage {}, {}/{}: {} cells wrong (marked !)\nexpected (upstream):\n{}got (vireo):\n{}",
                    c.name,
                    si + 1,
                    p.port,
                    p.proto,
                    wrong.len(),
                    p.expect.table(&wrong),
                    got.table(&wrong)
                ));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    failures
}

/// Upstream's cases, in the order of network_policy.go.
fn cases() -> Vec<Case> {
    let all = || Reach::new(true);
    let ingress_deny = |ns: &str| {
        np(
            ns,
            "deny-ingress",
            "{podSelector: {}, policyTypes: [Ingress]}",
        )
    };
    let mut v = vec![
        case(
            "should support a 'default-deny-ingress' policy",
            &[ingress_deny("x")],
            vec![tcp(80, all().expect_peer("", "x", false))],
        ),
        case(
            "should support a 'default-deny-all' policy",
            &[np("x", "deny-all", "{podSelector: {}, policyTypes: [Ingress, Egress]}")],
            vec![tcp(
                80,
                all().expect_peer("", "x", false).expect_peer("x", "", false),
            )],
        ),
        case(
            "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            &[np(
                "x",
                "x-a-allows-x-b",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
            )],
            vec![tcp(
                80,
                all().expect_all_ingress("x/a", false).expect("x/b", "x/a", true),
            )],
        ),
        case(
            "should enforce policy to allow ingress traffic for a target",
            &[
                np("x", "deny-all", "{podSelector: {}, policyTypes: [Ingress]}"),
                np(
                    "x",
                    "allow-all-to-a",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]}",
                ),
            ],
            vec![tcp(
                80,
                all()
                    .expect_all_ingress("x/a", true)
                    .expect_all_ingress("x/b", false)
                    .expect_all_ingress("x/c", false),
            )],
        ),
        case(
            "should enforce policy to allow ingress traffic from pods in all namespaces",
            &[np(
                "x",
                "allow-from-another-ns",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {}}}]}]}",
            )],
            vec![tcp(80, all())],
        ),
        // Older upstream versions select the namespace by its `ns` label; this case keeps that,
        // the "default ns label" case below uses kubernetes.io/metadata.name.
        case(
            "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            &[np(
                "x",
                "allow-client-a-via-ns-selector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
            )],
            vec![tcp(
                80,
                all()
                    .expect_peer("x", "x/a", false)
                    .expect_peer("z", "x/a", false),
            )],
        ),
        case(
            "should enforce policy based on PodSelector with MatchExpressions",
            &[np(
                "x",
                "x-a-allows-x-b",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}]}",
            )],
            vec![tcp(
                80,
                all().expect_all_ingress("x/a", false).expect("x/b", "x/a", true),
            )],
        ),
        case(
            "should enforce policy based on NamespaceSelector with MatchExpressions",
            &[np(
                "x",
                "allow-ns-y-match-selector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]}}]}]}",
            )],
            vec![tcp(
                80,
                all()
                    .expect_peer("x", "x/a", false)
                    .expect_peer("z", "x/a", false),
            )],
        ),
        case(
            "should enforce policy based on PodSelector or NamespaceSelector",
            &[np(
                "x",
                "allow-ns-y-match-selector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}}, {podSelector: {matchLabels: {pod: b}}}]}]}",
            )],
            vec![tcp(
                80,
                all().expect("x/a", "x/a", false).expect("x/c", "x/a", false),
            )],
        ),
        case(
            "should enforce policy based on PodSelector and NamespaceSelector",
            &[np(
                "x",
                "allow-ns-y-podselector-and-nsselector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}, podSelector: {matchLabels: {pod: b}}}]}]}",
            )],
            vec![tcp(
                80,
                all()
                    .expect_all_ingress("x/a", false)
                    .expect("y/b", "x/a", true)
                    .expect("z/b", "x/a", true),
            )],
        ),
        case(
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            &[np(
                "x",
                "allow-ns-y-z-pod-b-c",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]}",
            )],
            vec![tcp(
                80,
                all()
                    .expect_peer("x", "x/a", false)
                    .expect("y/a", "x/a", false)
                    .expect("z/a", "x/a", false),
            )],
        ),
        case(
            "should enforce policy based on any PodSelectors",
            &[np(
                "x",
                "allow-ns-x-pod-b-c",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]}]}",
            )],
            vec![tcp(
                80,
                all()
                    .expect_all_ingress("x/a", false)
                    .expect("x/b", "x/a", true)
                    .expect("x/c", "x/a", true),
            )],
        ),
        case(
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            &[np(
                "x",
                "allow-ns-y-pod-a-via-namespace-pod-selector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
            )],
            vec![tcp(
                80,
                all().expect_all_ingress("x/a", false).expect("y/a", "x/a", true),
            )],
        ),
        case(
            "should enforce policy based on Ports",
            &[np(
                "x",
                "allow-client-a-via-ns-selector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 81, protocol: TCP}]}]}",
            )],
            vec![tcp(
                81,
                all()
                    .expect_peer("x", "x/a", false)
                    .expect_peer("y", "x/a", true)
                    .expect_peer("z", "x/a", false),
            )],
        ),
    ];
    // Stacked policies: port 81 only, then port 80 added by a second policy.
    let allow81 = np(
        "x",
        "allow-client-a-via-ns-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 81, protocol: TCP}]}]}",
    );
    let allow80 = np(
        "x",
        "allow-client-a-via-ns-selector-80",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 80, protocol: TCP}]}]}",
    );
    let reach_allow = || {
        all()
            .expect_peer("x", "x/a", false)
            .expect_peer("y", "x/a", true)
            .expect_peer("z", "x/a", false)
    };
    v.push(staged(
        "should enforce multiple, stacked policies with overlapping podSelectors",
        vec![
            Stage {
                world: policies([allow81.clone()]),
                probes: vec![
                    tcp(81, reach_allow()),
                    tcp(80, all().expect_all_ingress("x/a", false)),
                ],
            },
            Stage {
                world: policies([allow81, allow80]),
                probes: vec![tcp(80, reach_allow())],
            },
        ],
    ));
    v.extend([
        case(
            "should support allow-all policy",
            &[np(
                "x",
                "allow-all",
                "{podSelector: {}, policyTypes: [Ingress], ingress: [{}]}",
            )],
            vec![tcp(80, all()), tcp(81, all())],
        ),
        case(
            "should allow ingress access on one named port",
            &[np(
                "x",
                "allow-all",
                "{podSelector: {}, policyTypes: [Ingress], ingress: [{ports: [{port: serve-81-tcp}]}]}",
            )],
            vec![tcp(81, all()), tcp(80, all().expect_peer("", "x", false))],
        ),
        case(
            "should allow ingress access from namespace on one named port",
            &[np(
                "x",
                "allow-client-a-via-ns-selector-80",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: serve-80-tcp, protocol: TCP}]}]}",
            )],
            vec![
                tcp(
                    80,
                    all()
                        .expect_peer("x", "x/a", false)
                        .expect_peer("z", "x/a", false),
                ),
                tcp(81, all().expect_all_ingress("x/a", false)),
            ],
        ),
        case(
            "should allow egress access on one named port",
            &[np(
                "x",
                "allow-egress",
                "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: serve-80-tcp}]}]}",
            )],
            vec![tcp(80, all()), tcp(81, all().expect_peer("x", "", false))],
        ),
    ]);
    v.push(staged(
        "should enforce updated policy",
        vec![
            Stage {
                world: policies([np(
                    "x",
                    "allow-all-mutate-to-deny-all",
                    "{podSelector: {}, policyTypes: [Ingress], ingress: [{}]}",
                )]),
                probes: vec![tcp(81, all())],
            },
            Stage {
                world: policies([np(
                    "x",
                    "allow-all-mutate-to-deny-all",
                    "{podSelector: {}, policyTypes: [Ingress], ingress: []}",
                )]),
                probes: vec![tcp(81, all().expect_peer("", "x", false))],
            },
        ],
    ));
    let from_ns2 = np(
        "x",
        "allow-client-a-via-ns-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}]}",
    );
    v.push(staged(
        "should allow ingress access from updated namespace",
        vec![
            Stage {
                world: policies([from_ns2.clone()]),
                probes: vec![tcp(80, all().expect_all_ingress("x/a", false))],
            },
            Stage {
                world: World {
                    ns_labels: vec![("y", "ns2", "updated")],
                    policies: vec![from_ns2],
                    ..Default::default()
                },
                probes: vec![tcp(
                    80,
                    all()
                        .expect_all_ingress("x/a", false)
                        .expect_peer("y", "", true),
                )],
            },
        ],
    ));
    let from_pod2 = np(
        "x",
        "allow-client-a-via-pod-selector",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b, pod2: updated}}}]}]}",
    );
    v.push(staged(
        "should allow ingress access from updated pod",
        vec![
            Stage {
                world: policies([from_pod2.clone()]),
                probes: vec![tcp(80, all().expect_all_ingress("x/a", false))],
            },
            Stage {
                world: World {
                    pod_labels: vec![("x/b", "pod2", "updated")],
                    policies: vec![from_pod2],
                    ..Default::default()
                },
                probes: vec![tcp(
                    80,
                    all()
                        .expect_all_ingress("x/a", false)
                        .expect("x/b", "x/a", true),
                )],
            },
        ],
    ));
    v.push(case(
        "should deny ingress from pods on other namespaces",
        &[np(
            "x",
            "deny-empty-policy",
            "{podSelector: {}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {}}}]}]}",
        )],
        vec![tcp(
            80,
            all().expect_peer("y", "x", false).expect_peer("z", "x", false),
        )],
    ));
    let isolated = np(
        "x",
        "deny-ingress-via-label-selector",
        "{podSelector: {matchLabels: {target: isolated}}, policyTypes: [Ingress]}",
    );
    v.push(staged(
        "should deny ingress access to updated pod",
        vec![
            Stage {
                world: policies([isolated.clone()]),
                probes: vec![tcp(80, all())],
            },
            Stage {
                world: World {
                    pod_labels: vec![("x/a", "target", "isolated")],
                    policies: vec![isolated],
                    ..Default::default()
                },
                probes: vec![tcp(80, all().expect_all_ingress("x/a", false))],
            },
        ],
    ));
    v.extend([
        case(
            "should deny egress from pods based on PodSelector",
            &[np(
                "x",
                "deny-egress-pod-a",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}",
            )],
            vec![tcp(80, all().expect_all_egress("x/a", false))],
        ),
        case(
            "should deny egress from all pods in a namespace",
            &[np("x", "deny-egress-ns-x", "{podSelector: {}, policyTypes: [Egress]}")],
            vec![tcp(80, all().expect_peer("x", "", false))],
        ),
        case(
            "should work with Ingress, Egress specified together",
            &[np(
                "x",
                "allow-client-a-via-pod-selector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress, Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}], egress: [{ports: [{port: 80}]}]}",
            )],
            vec![
                tcp(
                    80,
                    all().expect_all_ingress("x/a", false).expect("x/b", "x/a", true),
                ),
                tcp(
                    81,
                    all()
                        .expect_all_ingress("x/a", false)
                        .expect_all_egress("x/a", false)
                        .expect("x/b", "x/a", true),
                ),
            ],
        ),
        case(
            "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            &[
                np(
                    "x",
                    "allow-to-ns-y-pod-a",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
                ),
                np(
                    "y",
                    "allow-from-xa-on-ya-match-selector",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {pod: a}}}]}]}",
                ),
                np(
                    "y",
                    "allow-from-xa-on-yb-match-selector",
                    "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {pod: a}}}]}]}",
                ),
            ],
            vec![tcp(
                80,
                all()
                    .expect_peer("x/a", "", false)
                    .expect_peer("", "y/a", false)
                    .expect_peer("x/a", "y/a", true)
                    .expect_peer("", "y/b", false),
            )],
        ),
        case(
            "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            &[np(
                "x",
                "allow-to-ns-y-pod-a",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
            )],
            vec![tcp(
                80,
                all().expect_all_egress("x/a", false).expect("x/a", "y/a", true),
            )],
        ),
        case(
            "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            &[np(
                "x",
                "allow-ingress-by-proto",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{protocol: TCP}]}]}",
            )],
            vec![tcp(80, all()), udp(80, all().expect_peer("", "x/a", false))],
        ),
    ]);
    let port80_in = np(
        "x",
        "allow-ingress-port-80",
        "{podSelector: {}, policyTypes: [Ingress], ingress: [{ports: [{port: 80}]}]}",
    );
    v.push(staged(
        "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
        vec![
            Stage {
                world: policies([port80_in.clone()]),
                probes: vec![tcp(81, all().expect_peer("", "x", false))],
            },
            Stage {
                world: policies([
                    port80_in,
                    np(
                        "x",
                        "allow-ingress",
                        "{podSelector: {}, policyTypes: [Ingress], ingress: [{}]}",
                    ),
                ]),
                probes: vec![tcp(81, all())],
            },
        ],
    ));
    let port80_out = np(
        "x",
        "allow-egress-port-80",
        "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}",
    );
    v.push(staged(
        "should enforce multiple egress policies with egress allow-all policy taking precedence",
        vec![
            Stage {
                world: policies([port80_out.clone()]),
                probes: vec![tcp(81, all().expect_peer("x", "", false))],
            },
            Stage {
                world: policies([
                    port80_out,
                    np(
                        "x",
                        "allow-egress",
                        "{podSelector: {}, policyTypes: [Egress], egress: [{}]}",
                    ),
                ]),
                probes: vec![tcp(81, all())],
            },
        ],
    ));
    v.push(staged(
        "should stop enforcing policies after they are deleted",
        vec![
            Stage {
                world: policies([np(
                    "x",
                    "deny-all",
                    "{podSelector: {}, policyTypes: [Ingress, Egress]}",
                )]),
                probes: vec![tcp(
                    80,
                    all()
                        .expect_peer("x", "", false)
                        .expect_peer("", "x", false),
                )],
            },
            Stage {
                world: World::default(),
                probes: vec![tcp(80, all())],
            },
        ],
    ));
    // ipBlock: upstream builds the blocks from pod addresses, and a NetworkPolicy ipBlock
    // selects every address in it, pods' included (a CiliumNetworkPolicy CIDR would not).
    let cidr_egress = |block: &str| {
        np(
            "x",
            "allow-client-a-via-cidr-egress-rule",
            &format!(
                "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {block}}}]}}]}}"
            ),
        )
    };
    let yb = pod_ip(index("y/b"));
    let xb = pod_ip(index("x/b"));
    // upstream's makeLargeCIDRForIP: the /4 that holds the address.
    let large = {
        let ip: std::net::Ipv4Addr = xb.parse().unwrap();
        std::net::Ipv4Addr::from(u32::from(ip) & 0xf000_0000)
    };
    let except_block = format!("{{cidr: {large}/4, except: [{xb}/32]}}");
    let cidr_cases = vec![
        staged(
            "should allow egress access to server in CIDR block",
            vec![Stage {
                world: policies([cidr_egress(&format!("{{cidr: {yb}/32}}"))]),
                probes: vec![tcp(
                    80,
                    all()
                        .expect_all_egress("x/a", false)
                        .expect("x/a", "y/b", true),
                )],
            }],
        ),
        staged(
            "should enforce except clause while egress access to server in CIDR block",
            vec![Stage {
                world: policies([cidr_egress(&except_block)]),
                probes: vec![tcp(80, all().expect("x/a", "x/b", false))],
            }],
        ),
        staged(
            "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            vec![
                Stage {
                    world: policies([cidr_egress(&except_block)]),
                    probes: vec![tcp(80, all().expect("x/a", "x/b", false))],
                },
                // The policy updated in place to allow x/b's address alone.
                Stage {
                    world: policies([cidr_egress(&format!("{{cidr: {xb}/32}}"))]),
                    probes: vec![tcp(
                        80,
                        all()
                            .expect_all_egress("x/a", false)
                            .expect("x/a", "x/b", true),
                    )],
                },
            ],
        ),
    ];
    v.extend(cidr_cases);
    v.extend([
        {
            let egress = np(
                "x",
                "allow-egress-for-target",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{}]}",
            );
            let deny_in = np(
                "x",
                "deny-ingress-via-label-selector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
            );
            staged(
                "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
                vec![
                    stage(policies([egress.clone()]), vec![tcp(80, all())]),
                    stage(
                        policies([egress, deny_in]),
                        vec![tcp(80, all().expect_all_ingress("x/a", false))],
                    ),
                ],
            )
        },
        case(
            "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
            &[
                ingress_deny("x"),
                np(
                    "x",
                    "allow-only-sctp-ingress-on-port-81",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 81, protocol: SCTP}]}]}",
                ),
            ],
            vec![tcp(81, all().expect_peer("", "x", false))],
        ),
        case(
            "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
            &[np(
                "x",
                "allow-only-sctp-ingress-on-port-80",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 80, protocol: SCTP}]}]}",
            )],
            vec![tcp(81, all().expect_all_ingress("x/a", false))],
        ),
        case(
            "should not allow access by TCP when a policy specifies only UDP",
            &[np(
                "x",
                "allow-only-udp-ingress-on-port-81",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 81, protocol: UDP}]}]}",
            )],
            vec![tcp(81, all().expect_all_ingress("x/a", false))],
        ),
        case(
            "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            &[np(
                "x",
                "allow-client-a-via-ns-selector-for-immutable-ns-label",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]}",
            )],
            vec![tcp(
                80,
                all()
                    .expect_peer("x", "x/a", false)
                    .expect_peer("z", "x/a", false),
            )],
        ),
        case(
            "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            &[np(
                "x",
                "allow-ns-y-match-selector-for-immutable-ns-label",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]}}]}]}",
            )],
            vec![tcp(80, all().expect_peer("x/a", "y", false))],
        ),
        // "NetworkPolicy between server and client using UDP".
        case(
            "UDP: should support a 'default-deny-ingress' policy",
            &[np("x", "deny-all", "{podSelector: {}, policyTypes: [Ingress]}")],
            vec![udp(80, all().expect_peer("", "x", false))],
        ),
        case(
            "UDP: should enforce policy based on Ports",
            &[np(
                "x",
                "allow-ingress-on-port-81-ns-x",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 81, protocol: UDP}]}]}",
            )],
            vec![udp(
                81,
                all()
                    .expect_peer("x", "x/a", false)
                    .expect_peer("z", "x/a", false),
            )],
        ),
        case(
            "UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            &[np(
                "x",
                "allow-ns-y-pod-a-via-namespace-pod-selector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
            )],
            vec![udp(
                80,
                all().expect_all_ingress("x/a", false).expect("y/a", "x/a", true),
            )],
        ),
        // Not an upstream case (upstream validates endPort only at the API level): a port range
        // with "should enforce policy based on Ports"' shape, its table from the API's
        // definition of endPort (port..=endPort, inclusive).
        case(
            "Vireo: port range (endPort) from a namespace",
            &[np(
                "x",
                "allow-81-90-from-y",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 81, endPort: 90, protocol: TCP}]}]}",
            )],
            vec![
                tcp(
                    81,
                    all()
                        .expect_peer("x", "x/a", false)
                        .expect_peer("z", "x/a", false),
                ),
                tcp(80, all().expect_all_ingress("x/a", false)),
                udp(81, all().expect_all_ingress("x/a", false)),
            ],
        ),
    ]);
    v
}

#[test]
fn upstream_netpol_cases() {
    let cases = cases();
    assert!(cases.len() >= 20);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut probes = 0;
    for (k, c) in cases.iter().enumerate() {
        probes += c.stages.iter().map(|s| s.probes.len()).sum::<usize>();
        failures.extend(run_case(c, k));
    }
    eprintln!(
        "{} cases, {probes} probes × 72 pairs in {:?}",
        cases.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of the probes failed:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The batch mode is a shortcut for the tests: every single-pair trace says the same, on cases
/// covering ingress, egress, named ports, UDP and multiple policies.
#[test]
fn single_pair_traces_agree_with_the_batch() {
    let pick = [
        "should enforce policy based on PodSelector or NamespaceSelector",
        "should allow egress access on one named port",
        "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
        "UDP: should enforce policy based on Ports",
    ];
    let cases = cases();
    let pods = all_pods();
    for (k, name) in pick.iter().enumerate() {
        let c = cases.iter().find(|c| c.name == *name).unwrap();
        let stage = &c.stages[0];
        let dir = write_dir(&format!("single-{k}"), &stage.world);
        for p in &stage.probes {
            let batch = vireo_matrix(&dir, p.port, p.proto);
            let dport = format!("{}/{}", p.port, p.proto.to_lowercase());
            for (i, s) in pods.iter().enumerate() {
                for (j, d) in pods.iter().enumerate() {
                    let v = ok_json(&[
                        "policy",
                        "trace",
                        "--json",
                        "--manifests",
                        dir.to_str().unwrap(),
                        "--src",
                        s,
                        "--dst",
                        d,
                        "--dport",
                        &dport,
                    ]);
                    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
                    keys.sort();
                    assert_eq!(keys, ["rules", "verdict"], "{v}");
                    assert!(v["rules"].as_array().unwrap().iter().all(Value::is_string));
                    let allowed = v["verdict"] == "allowed";
                    assert!(allowed || v["verdict"] == "denied", "{v}");
                    assert_eq!(
                        allowed, batch.m[i][j],
                        "{name}: {s} -> {d} {dport}: single {v}, batch says the opposite"
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `a` then `b`.
fn cat<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    a.iter().chain(b).copied().collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Human output names each side's verdict and its rules or default; JSON rules are the deciding
/// rules; labels may stand in for pods; outside addresses are world.
#[test]
fn trace_explains_each_side() {
    let w = World {
        policies: vec![
            np(
                "x",
                "a-from-b",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]}",
            ),
            np(
                "y",
                "egress-world",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [8.8.0.0/16]}}]}]}",
            ),
        ],
        ..Default::default()
    };
    let dir = write_dir("explain", &w);
    let d = dir.to_str().unwrap();
    let base = ["policy", "trace", "--manifests", d];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        let o = vireo(&a);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        stdout(&o)
    };

    let human = run(&["--src", "x/b", "--dst", "x/a", "--dport", "80/tcp"]);
    assert!(human.contains("Egress from x/b: ALLOWED"), "{human}");
    assert!(human.contains("default allow"), "{human}");
    assert!(human.contains("Ingress to x/a: ALLOWED"), "{human}");
    assert!(
        human.contains("NetworkPolicy x/a-from-b ingress[0]"),
        "{human}"
    );
    assert!(human.contains("Final verdict: ALLOWED"), "{human}");

    let human = run(&["--src", "x/c", "--dst", "x/a", "--dport", "80/TCP"]);
    assert!(human.contains("Ingress to x/a: DENIED"), "{human}");
    assert!(human.contains("default deny"), "{human}");
    assert!(human.contains("Final verdict: DENIED"), "{human}");

    let j: Value = serde_json::from_str(&run(&[
        "--src", "x/b", "--dst", "x/a", "--dport", "80", "--json",
    ]))
    .unwrap();
    assert_eq!(j["verdict"], "allowed");
    let rules: Vec<&str> = j["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(rules.len(), 1, "{j}");
    assert!(
        rules[0].contains("x/a-from-b") && rules[0].contains("ingress[0]"),
        "{j}"
    );

    let j: Value = serde_json::from_str(&run(&[
        "--src", "x/c", "--dst", "x/a", "--dport", "80/TCP", "--json",
    ]))
    .unwrap();
    assert_eq!(j, serde_json::json!({"verdict": "denied", "rules": []}));

    // Labels standing in for a pod: namespace from --src-ns, from the namespace label, or
    // `default`.
    let lab = |args: &[&str]| -> Value {
        let mut a = vec!["--dst", "x/a", "--dport", "80/tcp", "--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&run(&a)).unwrap()
    };
    assert_eq!(
        lab(&["--src-labels", "pod=b", "--src-ns", "x"])["verdict"],
        "allowed"
    );
    assert_eq!(
        lab(&["--src-labels", "pod=b,k8s:io.kubernetes.pod.namespace=x"])["verdict"],
        "allowed"
    );
    // pod=b in namespace default: the policy's podSelector means pods of x only.
    assert_eq!(lab(&["--src-labels", "pod=b"])["verdict"], "denied");
    assert_eq!(
        lab(&["--src-labels", "pod=c", "--src-ns", "x"])["verdict"],
        "denied"
    );
    assert_eq!(
        lab(&["--src-labels", "reserved:world"])["verdict"],
        "denied"
    );

    // Outside addresses are world: ipBlock with except.
    let world = |ip: &str| -> Value {
        serde_json::from_str(&run(&[
            "--src", "y/a", "--dst", ip, "--dport", "53/udp", "--json",
        ]))
        .unwrap()
    };
    assert_eq!(world("1.1.1.1")["verdict"], "allowed");
    assert_eq!(world("8.8.8.8")["verdict"], "denied");
    // A pod's address is in the ipBlock too (a NetworkPolicy ipBlock selects pods by address).
    assert_eq!(world(&pod_ip(index("x/b")))["verdict"], "allowed");
    let human = run(&["--src", "y/a", "--dst", "8.8.8.8", "--dport", "53/udp"]);
    assert!(human.contains("Egress from y/a: DENIED"), "{human}");
    assert!(
        human.contains("Ingress to 8.8.8.8 (world): ALLOWED"),
        "{human}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn policy_get_lists_policies() {
    let w = World {
        policies: vec![
            np("x", "deny-ingress", "{podSelector: {}, policyTypes: [Ingress]}"),
            np(
                "y",
                "a-egress",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}, {to: [{podSelector: {}}]}]}",
            ),
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: l7, namespace: z}\nspec: {endpointSelector: {matchLabels: {pod: b}}, ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]}]}\n".to_string(),
        ],
        ..Default::default()
    };
    let dir = write_dir("get", &w);
    let d = dir.to_str().unwrap();
    let v = ok_json(&["policy", "get", "--manifests", d, "--json"]);
    let ps = v["policies"].as_array().unwrap();
    assert_eq!(ps.len(), 3, "{v}");
    let by_name: BTreeMap<&str, &Value> = ps
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p))
        .collect();
    let deny = by_name["x/deny-ingress"];
    assert_eq!(deny["kind"], "NetworkPolicy");
    assert_eq!(deny["endpoints"], serde_json::json!(["x/a", "x/b", "x/c"]));
    assert_eq!(deny["ingress"]["enforced"], true);
    assert_eq!(deny["ingress"]["allow"], 0);
    assert_eq!(deny["egress"]["enforced"], false);
    let eg = by_name["y/a-egress"];
    assert_eq!(eg["endpoints"], serde_json::json!(["y/a"]));
    assert_eq!(eg["egress"]["enforced"], true);
    assert_eq!(eg["egress"]["allow"], 2);
    let l7 = by_name["z/l7"];
    assert_eq!(l7["kind"], "CiliumNetworkPolicy");
    assert_eq!(l7["endpoints"], serde_json::json!(["z/b"]));
    let w7 = l7["warnings"].as_array().unwrap();
    assert!(
        w7.len() == 1 && w7[0].as_str().unwrap().contains("L7"),
        "{l7}"
    );
    // A policy's warnings are listed with it, not again among the set's.
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    let o = vireo(&["policy", "get", "--manifests", d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let h = stdout(&o);
    assert!(h.contains("NetworkPolicy x/deny-ingress"), "{h}");
    assert!(h.contains("x/a, x/b, x/c"), "{h}");
    assert!(h.contains("ingress:  default deny"), "{h}");
    assert_eq!(h.matches("L7 rules").count(), 1, "{h}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad input: one clear line, non-zero status, no panic.
#[test]
fn trace_errors_are_one_line() {
    let dir = write_dir("errors", &World::default());
    let d = dir.to_str().unwrap();
    let fails = |args: &[&str], needle: &str| {
        let mut a = vec!["policy", "trace"];
        a.extend_from_slice(args);
        let o = vireo(&a);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            matches!(o.status.code(), Some(1 | 2)),
            "{args:?}: {:?}",
            o.status
        );
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("vireo:") || l.starts_with("error:"))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
    };
    let m = ["--manifests", d];
    let with = |extra: &[&'static str]| cat(&m, extra);
    fails(
        &with(&["--src", "x/nope", "--dst", "x/a", "--dport", "80/TCP"]),
        "unknown pod x/nope",
    );
    fails(
        &with(&["--src", "x/a", "--dst", "q/a", "--dport", "80/TCP"]),
        "unknown pod q/a",
    );
    fails(
        &with(&["--src", "x/a", "--dst", "x/b", "--dport", "80/gre"]),
        "is not TCP, UDP or SCTP",
    );
    fails(
        &with(&["--src", "x/a", "--dst", "x/b", "--dport", "99999/tcp"]),
        "not a number in 1-65535",
    );
    fails(&with(&["--src", "x/a", "--dst", "x/b"]), "--dport");
    fails(
        &with(&["--src", "x/a/b", "--dst", "x/b", "--dport", "80"]),
        "NAMESPACE/POD",
    );
    fails(
        &with(&["--src-labels", "app", "--dst", "x/b", "--dport", "80"]),
        "KEY=VALUE",
    );
    fails(
        &with(&[
            "--src-labels",
            "reserved:nothing",
            "--dst",
            "x/b",
            "--dport",
            "80",
        ]),
        "unknown reserved identity",
    );
    fails(
        &[
            "--manifests",
            "/nonexistent/dir",
            "--src",
            "x/a",
            "--dst",
            "x/b",
            "--dport",
            "80",
        ],
        "not a directory",
    );
    fails(
        &[
            "--api",
            "/nonexistent/vireo.sock",
            "--src",
            "x/a",
            "--dst",
            "x/b",
            "--dport",
            "80",
        ],
        "is `vireo agent` running?",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
