//! `vireo sandbox up|down|status|apply|exec`: a Vireo cluster on one machine.
//!
//! An underlay (a bridge in a namespace of its own, connected to nothing real), N node
//! namespaces each with an uplink veth into it, and the pods of the manifests as namespaces with
//! veths into their node, one `vireo agent` per node inside its namespace. The sandbox realises
//! the manifests like a small kubelet and CNI plugin: it gives pods addresses from their node's
//! pod CIDR, creates their veths under the names and MACs the agent expects
//! (`vireo_control::cluster::{pod_ifname, pod_mac}`), and writes the realised objects (Nodes,
//! Pods with `status.podIP`, everything else as given) into the directory the agents watch.
//!
//! Everything carries the sandbox's name as prefix and is listed in its state file; `down`
//! deletes exactly that (and, after a crash that lost the state file, the namespaces with the
//! prefix), and never touches anything else.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde::{Deserialize, Serialize};
use serde_json::json;
use vireo_control::cluster::{gateway, pod_ifname, pod_mac};
use vireo_control::config::format_mac;
use vireo_control::source;

use crate::api;

/// TCP conntrack entries per sandbox agent.
pub const CT_MAX_TCP: usize = 4096;

/// Underlay MTU; pods get 50 less (the VXLAN overhead).
pub const UNDERLAY_MTU: u16 = 1500;
const UNDERLAY_NET: [u8; 3] = [192, 168, 100];
/// The underlay bridge's own address, in the underlay namespace: a client "outside" the nodes
/// (NodePort checks). The bridge is connected to nothing real.
pub const UNDERLAY_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

/// The default sandbox's service backends: pods labelled `app: echo`, this many per node on the
/// first two nodes, with container ports `http` (TCP) and `udp` (UDP).
pub const ECHO_PODS_PER_NODE: usize = 2;
/// Container port `http` of the echo pods.
pub const ECHO_HTTP_PORT: u16 = 8080;
/// Container port `udp` of the echo pods.
pub const ECHO_UDP_PORT: u16 = 8081;

/// The namespace of the default sandbox's pods for the policy checks of `vireo connectivity
/// test`: a server (`app: policy-server`, TCP 8080 and 8081) on the second node and clients
/// (`app: client-allowed`, `app: client-other`) on the first and (`app: client-local`) beside
/// the server. No policy selects them until a check applies one.
pub const POLICY_NAMESPACE: &str = "policy-test";
/// The namespaces of the default sandbox's Kubernetes network-policy model (as in upstream's
/// e2e tests): pods `a`, `b`, `c` (labelled `pod: NAME`) in each, spread over the first two
/// nodes, serving TCP 80 during the check.
pub const NETPOL_NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each network-policy model namespace.
pub const NETPOL_PODS: [&str; 3] = ["a", "b", "c"];

#[derive(clap::Args, Debug, Clone)]
pub struct SandboxName {
    /// The sandbox's name: the prefix of everything it makes.
    #[arg(long = "sandbox", default_value = "vsbx", env = "VIREO_SANDBOX", value_parser = parse_name)]
    pub name: String,
}

fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 8
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err("1-8 lowercase letters or digits".into());
    }
    Ok(s.to_string())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub api: PathBuf,
    pub log: PathBuf,
    pub agent_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub ifname: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.containers` as written (their named ports resolve Services' target ports); null:
    /// one container without ports.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub containers: serde_json::Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub dir: PathBuf,
    pub underlay: String,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    /// Every network namespace made, in creation order.
    pub netns: Vec<String>,
    /// Objects other than Pods from applied manifests, as written.
    pub objects: Vec<serde_json::Value>,
}

pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/vireo/sandbox-{name}"))
}

impl State {
    pub fn load(name: &str) -> Result<State> {
        let p = state_dir(name).join("state.json");
        let text = std::fs::read_to_string(&p).map_err(|_| {
            anyhow!(
                "sandbox {name} is not up (no {}); run `vireo sandbox up`",
                p.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}", p.display()))
    }

    fn save(&self) -> Result<()> {
        write_atomic(
            &self.dir.join("state.json"),
            &serde_json::to_string_pretty(self)?,
        )
    }

    pub fn node(&self, name: &str) -> Result<&NodeState> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            anyhow!(
                "no node {name} in sandbox {} (nodes: {})",
                self.name,
                self.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    pub fn pod(&self, ns_name: &str) -> Result<&PodState> {
        let (ns, name) = ns_name.split_once('/').unwrap_or(("default", ns_name));
        self.pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
            .ok_or_else(|| anyhow!("no pod {ns}/{name} in sandbox {}", self.name))
    }

    fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Runs `ip` (or any command); the error names the command and what it printed.
fn sh(args: &[&str]) -> Result<String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !o.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn netns_add(st: &mut State, name: &str) -> Result<()> {
    sh(&["ip", "netns", "add", name])?;
    st.netns.push(name.to_string());
    st.save()?;
    sh(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

pub struct UpOpts {
    pub nodes: usize,
    pub pods: usize,
    pub manifests: Option<PathBuf>,
}

pub fn up(name: &str, o: &UpOpts) -> Result<()> {
    if !(1..=20).contains(&o.nodes) {
        bail!("--nodes must be 1..=20");
    }
    if !(0..=100).contains(&o.pods) {
        bail!("--pods must be 0..=100");
    }
    let dir = state_dir(name);
    if dir.join("state.json").exists() {
        bail!("sandbox {name} is already up (`vireo sandbox down` first)");
    }
    std::fs::create_dir_all(dir.join("manifests"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut st = State {
        name: name.to_string(),
        dir: dir.clone(),
        underlay: format!("{name}-underlay"),
        ..Default::default()
    };
    st.save()?;
    let r = build(&mut st, o);
    if let Err(e) = r {
        eprintln!("vireo: sandbox up failed, tearing down: {e:#}");
        let _ = teardown(&st);
        return Err(e);
    }
    print!("{}", render_status(&st));
    Ok(())
}

fn build(st: &mut State, o: &UpOpts) -> Result<()> {
    let ul = st.underlay.clone();
    netns_add(st, &ul)?;
    sh(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", &ul, "link", "set", "br0", "up"])?;
    // An address of its own on the bridge (a new bridge has none), so that a client can run in
    // the underlay namespace.
    if sh(&["ip", "-n", &ul, "-4", "addr", "show", "dev", "br0"])?
        .trim()
        .is_empty()
    {
        sh(&[
            "ip",
            "-n",
            &ul,
            "addr",
            "add",
            &format!("{UNDERLAY_CLIENT}/24"),
            "dev",
            "br0",
        ])?;
    }
    // Its traffic must leave with complete checksums, as frames from a real NIC arrive
    // (AF_XDP copy mode loses CHECKSUM_PARTIAL; see the pods' veths).
    sh(&[
        "ip", "netns", "exec", &ul, "ethtool", "-K", "br0", "tx", "off",
    ])?;
    for i in 1..=o.nodes {
        let node = format!("node-{i}");
        let ns = format!("{}-{node}", st.name);
        netns_add(st, &ns)?;
        // The node's port on the bridge; `vireo connectivity test` captures on it.
        let peer = format!("n{i}");
        sh(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &ns,
            "mtu",
            &UNDERLAY_MTU.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &ul,
        ])?;
        sh(&["ip", "-n", &ul, "link", "set", &peer, "master", "br0", "up"])?;
        let ip = Ipv4Addr::new(
            UNDERLAY_NET[0],
            UNDERLAY_NET[1],
            UNDERLAY_NET[2],
            10 + i as u8,
        );
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        st.nodes.push(NodeState {
            name: node.clone(),
            netns: ns,
            ip,
            pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24)?,
            api: st.dir.join(format!("{node}.sock")),
            log: st.dir.join(format!("{node}.log")),
            agent_pid: None,
        });
        st.save()?;
    }
    match &o.manifests {
        Some(d) => apply_dir(st, d, false)?,
        None => {
            let pods: Vec<Pod> = (0..o.nodes * o.pods)
                .map(|k| {
                    let node = format!("node-{}", k / o.pods.max(1) + 1);
                    let j = k % o.pods.max(1) + 1;
                    let name = format!("{node}-pod-{j}");
                    sandbox_pod(
                        "default",
                        &name,
                        &node,
                        json!({"app": "sandbox", "pod": name}),
                        json!({"name": "main", "image": "sandbox"}),
                    )
                })
                .collect();
            realize_pods(st, pods)?;
            realize_pods(st, echo_pods(o.nodes))?;
            st.objects.extend(echo_services()?);
            st.objects.extend(policy_namespaces()?);
            realize_pods(st, policy_pods(o.nodes))?;
        }
    }
    write_manifests(st)?;
    let mut agents = Vec::new();
    for i in 0..st.nodes.len() {
        agents.push(start_agent(st, i)?);
    }
    wait_ready(st, &mut agents)
}

/// A Pod of the default sandbox: one container, on `node`.
fn sandbox_pod(
    ns: &str,
    name: &str,
    node: &str,
    labels: serde_json::Value,
    container: serde_json::Value,
) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [container]},
    }))
    .expect("a valid Pod")
}

/// The default sandbox's service backends: `echo-node-N-J`, labelled `app: echo`, with container
/// ports `http` (8080/TCP) and `udp` (8081/UDP).
fn echo_pods(nodes: usize) -> Vec<Pod> {
    (1..=nodes.min(2))
        .flat_map(|i| (1..=ECHO_PODS_PER_NODE).map(move |j| (i, j)))
        .map(|(i, j)| {
            sandbox_pod(
                "default",
                &format!("echo-node-{i}-{j}"),
                &format!("node-{i}"),
                json!({"app": "echo"}),
                json!({
                    "name": "echo", "image": "sandbox",
                    "ports": [
                        {"name": "http", "containerPort": ECHO_HTTP_PORT, "protocol": "TCP"},
                        {"name": "udp", "containerPort": ECHO_UDP_PORT, "protocol": "UDP"},
                    ],
                }),
            )
        })
        .collect()
}

/// The Namespaces of the default sandbox's policy pods.
fn policy_namespaces() -> Result<Vec<serde_json::Value>> {
    std::iter::once(POLICY_NAMESPACE)
        .chain(NETPOL_NAMESPACES)
        .map(|ns| {
            let n: Namespace = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
            }))?;
            Ok(serde_json::to_value(n)?)
        })
        .collect()
}

/// The default sandbox's pods for the policy checks: [`POLICY_NAMESPACE`]'s server and clients,
/// and the network-policy model's pods ([`NETPOL_NAMESPACES`] x [`NETPOL_PODS`]), which
/// alternate between the first two nodes.
fn policy_pods(nodes: usize) -> Vec<Pod> {
    let (first, second) = ("node-1".to_string(), format!("node-{}", nodes.clamp(1, 2)));
    let pod =
        |ns: &str, name: &str, node: &str, labels: serde_json::Value, ports: serde_json::Value| {
            sandbox_pod(
                ns,
                name,
                node,
                labels,
                json!({"name": "main", "image": "sandbox", "ports": ports}),
            )
        };
    let tcp =
        |name: &str, port: u16| json!({"name": name, "containerPort": port, "protocol": "TCP"});
    let mut pods = vec![
        pod(
            POLICY_NAMESPACE,
            "server",
            &second,
            json!({"app": "policy-server"}),
            json!([tcp("http", ECHO_HTTP_PORT), tcp("alt", ECHO_UDP_PORT)]),
        ),
        pod(
            POLICY_NAMESPACE,
            "client-allowed",
            &first,
            json!({"app": "client-allowed"}),
            json!([]),
        ),
        pod(
            POLICY_NAMESPACE,
            "client-other",
            &first,
            json!({"app": "client-other"}),
            json!([]),
        ),
        pod(
            POLICY_NAMESPACE,
            "client-local",
            &second,
            json!({"app": "client-local"}),
            json!([]),
        ),
    ];
    let mut k = 0;
    for ns in NETPOL_NAMESPACES {
        for name in NETPOL_PODS {
            let node = if k % 2 == 0 { &first } else { &second };
            k += 1;
            pods.push(pod(
                ns,
                name,
                node,
                json!({"pod": name}),
                json!([tcp("serve-80", 80)]),
            ));
        }
    }
    pods
}

/// The default sandbox's Services (default namespace, fixed cluster IPs from 10.96.0.0/16):
/// `echo` (TCP 80 and UDP 81 over the echo pods), `echo-np` (NodePort 30080,
/// externalTrafficPolicy Cluster), `echo-sticky` (sessionAffinity ClientIP) and `empty` (a
/// selector that matches no pod).
fn echo_services() -> Result<Vec<serde_json::Value>> {
    let http = json!({"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"});
    let udp = json!({"name": "udp", "port": 81, "targetPort": "udp", "protocol": "UDP"});
    let svc = |name: &str, ip: &str, spec: serde_json::Value| -> Result<serde_json::Value> {
        let mut v = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "selector": {"app": "echo"}},
        });
        for (k, x) in spec.as_object().into_iter().flatten() {
            v["spec"][k] = x.clone();
        }
        // Checked against the Kubernetes type, as Pods are.
        let typed: k8s_openapi::api::core::v1::Service = serde_json::from_value(v.clone())
            .with_context(|| format!("the sandbox's Service {name}"))?;
        Ok(serde_json::to_value(typed)?)
    };
    Ok(vec![
        svc("echo", "10.96.0.10", json!({"ports": [http, udp]}))?,
        svc(
            "echo-np",
            "10.96.0.11",
            json!({"type": "NodePort", "externalTrafficPolicy": "Cluster",
                   "ports": [{"name": "http", "port": 80, "targetPort": "http",
                              "nodePort": 30080, "protocol": "TCP"}]}),
        )?,
        svc(
            "echo-sticky",
            "10.96.0.12",
            json!({"sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
                   "ports": [http]}),
        )?,
        svc(
            "empty",
            "10.96.0.13",
            json!({"selector": {"app": "no-such-pod"},
                   "ports": [{"name": "http", "port": 80, "targetPort": ECHO_HTTP_PORT,
                              "protocol": "TCP"},
                             {"name": "udp", "port": 81, "targetPort": ECHO_UDP_PORT,
                              "protocol": "UDP"}]}),
        )?,
    ])
}

/// Applies a manifest directory: new pods are placed and created, changed pods get their new
/// labels, everything else is passed to the agents as written.
fn apply_dir(st: &mut State, dir: &Path, write: bool) -> Result<()> {
    let m = source::load_dir(dir);
    for e in &m.errors {
        eprintln!("vireo: {e}");
    }
    let mut objects: Vec<serde_json::Value> = Vec::new();
    for n in m.namespaces.values() {
        objects.push(serde_json::to_value(n)?);
    }
    for n in m.nodes.keys() {
        eprintln!(
            "vireo: {}: the sandbox makes its own Nodes; Node {n} ignored",
            dir.display()
        );
    }
    // Services and EndpointSlices go to the agents as written (the sandbox realises nothing
    // for them).
    for o in m.services.values() {
        objects.push(serde_json::to_value(o)?);
    }
    for o in m.endpoint_slices.values() {
        objects.push(serde_json::to_value(o)?);
    }
    for o in m.policies.values() {
        objects.push(serde_json::to_value(&o.value)?);
    }
    for o in &m.others {
        objects.push(serde_json::to_value(&o.value)?);
    }
    for o in objects {
        let key = object_key(&o);
        st.objects.retain(|x| object_key(x) != key);
        st.objects.push(o);
    }
    realize_pods(st, m.pods.into_values().collect())?;
    if write {
        write_manifests(st)?;
    }
    Ok(())
}

fn object_key(v: &serde_json::Value) -> (String, String, String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string()
    };
    (
        s("/apiVersion"),
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name"),
    )
}

fn realize_pods(st: &mut State, pods: Vec<Pod>) -> Result<()> {
    let mut rr = st.pods.len();
    for p in pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        let ns = p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let containers = match p.spec.as_ref().map(|s| &s.containers) {
            Some(c) if !c.is_empty() => serde_json::to_value(c)?,
            _ => serde_json::Value::Null,
        };
        if let Some(existing) = st
            .pods
            .iter_mut()
            .find(|x| x.namespace == ns && x.name == name)
        {
            existing.labels = labels;
            existing.containers = containers;
            continue;
        }
        let node = match p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(n) => {
                if st.nodes.iter().all(|x| x.name != n) {
                    eprintln!(
                        "vireo: pod {ns}/{name}: spec.nodeName {n} is not a sandbox node; skipped"
                    );
                    continue;
                }
                n
            }
            None => {
                rr += 1;
                st.nodes[(rr - 1) % st.nodes.len()].name.clone()
            }
        };
        create_pod(st, &ns, &name, &node, labels, containers)?;
    }
    Ok(())
}

fn create_pod(
    st: &mut State,
    ns: &str,
    name: &str,
    node: &str,
    labels: BTreeMap<String, String>,
    containers: serde_json::Value,
) -> Result<()> {
    let n = st.node(node)?.clone();
    let used: Vec<Ipv4Addr> = st
        .pods
        .iter()
        .filter(|p| p.node == node)
        .map(|p| p.ip)
        .collect();
    let base = u32::from(n.pod_cidr.network());
    let ip = (10..250)
        .map(|k| Ipv4Addr::from(base + k))
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| anyhow!("node {node}: pod CIDR {} is full", n.pod_cidr))?;
    let netns = format!("{}-{}-{}", st.name, sanitize(ns), sanitize(name));
    netns_add(st, &netns)?;
    let ifname = pod_ifname(ns, name);
    let gw = gateway(n.pod_cidr).to_string();
    let mtu = (UNDERLAY_MTU - 50).to_string();
    sh(&[
        "ip", "link", "add", &ifname, "netns", &n.netns, "type", "veth", "peer", "name", "eth0",
        "netns", &netns,
    ])?;
    sh(&["ip", "-n", &n.netns, "link", "set", &ifname, "up"])?;
    sh(&[
        "ip",
        "-n",
        &netns,
        "link",
        "set",
        "eth0",
        "address",
        &format_mac(&pod_mac(ip)),
        "mtu",
        &mtu,
    ])?;
    sh(&[
        "ip",
        "-n",
        &netns,
        "addr",
        "add",
        &format!("{ip}/32"),
        "dev",
        "eth0",
    ])?;
    sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"])?;
    sh(&[
        "ip", "-n", &netns, "route", "add", &gw, "dev", "eth0", "scope", "link",
    ])?;
    sh(&[
        "ip", "-n", &netns, "route", "add", "default", "via", &gw, "dev", "eth0",
    ])?;
    // AF_XDP copy mode loses CHECKSUM_PARTIAL: checksums must be complete when they leave the pod.
    sh(&[
        "ip", "netns", "exec", &netns, "ethtool", "-K", "eth0", "tx", "off",
    ])?;
    st.pods.push(PodState {
        namespace: ns.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        netns,
        ip,
        ifname,
        labels,
        containers,
    });
    st.save()
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Writes the realised objects the agents read.
fn write_manifests(st: &State) -> Result<()> {
    publish(st, &[])
}

/// Writes the realised objects the agents read, leaving out the pods `without` (as if they had
/// been deleted; their namespaces and veths stay, and `publish(st, &[])` brings them back).
/// `vireo connectivity test` removes a service backend this way.
pub fn publish(st: &State, without: &[&PodState]) -> Result<()> {
    let mut nodes: Vec<serde_json::Value> = vec![serde_json::to_value(Namespace {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    })?];
    for n in &st.nodes {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
            "spec": {"podCIDR": n.pod_cidr.to_string(), "podCIDRs": [n.pod_cidr.to_string()]},
            "status": {"addresses": [{"type": "InternalIP", "address": n.ip.to_string()},
                                      {"type": "Hostname", "address": n.name}]},
        }))?;
        nodes.push(serde_json::to_value(node)?);
    }
    let pods: Vec<serde_json::Value> = st
        .pods
        .iter()
        .filter(|p| {
            !without
                .iter()
                .any(|w| w.namespace == p.namespace && w.name == p.name)
        })
        .map(|p| {
            let containers = if p.containers.is_null() {
                json!([{"name": "main", "image": "sandbox"}])
            } else {
                p.containers.clone()
            };
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
                "spec": {"nodeName": p.node, "containers": containers},
                "status": {"phase": "Running", "podIP": p.ip.to_string(), "podIPs": [{"ip": p.ip.to_string()}]},
            })
        })
        .collect();
    let list = |items: Vec<serde_json::Value>| -> Result<String> {
        Ok(serde_yaml::to_string(
            &json!({"apiVersion": "v1", "kind": "List", "items": items}),
        )?)
    };
    let m = st.manifests();
    write_atomic(&m.join("00-sandbox-nodes.yaml"), &list(nodes)?)?;
    write_atomic(&m.join("20-objects.yaml"), &list(st.objects.clone())?)?;
    write_atomic(&m.join("10-pods.yaml"), &list(pods)?)?;
    Ok(())
}

fn agent_config(st: &State, n: &NodeState) -> String {
    format!(
        "# Written by `vireo sandbox up`.\nnode: {node}\napi_socket: {api}\nsource: {{manifests: {m}}}\n\
         # Several agents share this machine's cores: no pinning, sleep when idle.\nworkers: [{{cores: []}}]\n\
         af_xdp: {{frames: 8192}}\n\
         # Small conntrack limits: light on memory, and `vireo connectivity test` floods them.\n\
         conntrack: {{max_tcp: {CT_MAX_TCP}, max_other: 1024}}\n\
         interfaces:\n  - {{name: eth0, role: uplink}}\n",
        node = n.name,
        api = n.api.display(),
        m = st.manifests().display()
    )
}

fn start_agent(st: &mut State, i: usize) -> Result<std::process::Child> {
    let n = st.nodes[i].clone();
    let cfg = st.dir.join(format!("{}.yaml", n.name));
    std::fs::write(&cfg, agent_config(st, &n))?;
    let log = std::fs::File::create(&n.log)?;
    let exe = std::env::current_exe()?;
    use std::os::unix::process::CommandExt;
    let child = Command::new("ip")
        .args(["netns", "exec", &n.netns])
        .arg(&exe)
        .args(["agent", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: a Ctrl-C meant for this command does not stop the cluster.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the agent of {}", n.name))?;
    st.nodes[i].agent_pid = Some(child.id());
    st.save()?;
    Ok(child)
}

/// Waits until every agent answers, has attached its pods, knows every pod's address (its
/// ipcache) and the MACs of the other nodes. With the agents' handles (right after starting
/// them), an agent that dies is reported with its exit status.
fn wait_ready(st: &State, agents: &mut [std::process::Child]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in &st.nodes {
        let want = st.pods.iter().filter(|p| p.node == n.name).count();
        loop {
            let get = |m: &str| api::call(&n.api, &api::Request::MapGet { map: m.into() }).ok();
            let ready = get("nodes")
                .zip(get("ipcache"))
                .zip(api::call(&n.api, &api::Request::Status).ok())
                .is_some_and(|((nodes, ipcache), status)| {
                    let remote = nodes["remote"].as_array().cloned().unwrap_or_default();
                    let known: Vec<&str> = ipcache
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["prefix"].as_str())
                        .collect();
                    status["endpoints"].as_array().map(Vec::len) == Some(want)
                        && remote.len() == st.nodes.len() - 1
                        && remote.iter().all(|r| !r["next_hop_mac"].is_null())
                        && st
                            .pods
                            .iter()
                            .all(|p| known.contains(&format!("{}/32", p.ip).as_str()))
                });
            if ready {
                break;
            }
            let exited = agents
                .iter_mut()
                .find(|c| Some(c.id()) == n.agent_pid)
                .map(|c| c.try_wait().ok().flatten())
                .unwrap_or_else(|| {
                    (!pid_alive(n.agent_pid)).then(std::process::ExitStatus::default)
                });
            if let Some(status) = exited {
                bail!(
                    "the agent of {} exited ({status}); its log ({}):\n{}",
                    n.name,
                    n.log.display(),
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent of {} is not ready after 60 s; log: {}",
                    n.name,
                    n.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// Waits until every agent has attached its pods and knows every pod (after `publish`).
pub fn wait_agents(st: &State) -> Result<()> {
    wait_ready(st, &mut [])
}

/// Whether `pid` is one of our agents (not a recycled pid).
fn pid_alive(pid: Option<u32>) -> bool {
    let Some(pid) = pid else { return false };
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let s = String::from_utf8_lossy(&c);
            s.contains("vireo") && s.contains("agent")
        })
        .unwrap_or(false)
}

pub fn apply(name: &str, dir: &Path) -> Result<()> {
    let mut st = State::load(name)?;
    let before = st.pods.len();
    apply_dir(&mut st, dir, true)?;
    st.save()?;
    wait_ready(&st, &mut [])?;
    println!(
        "applied {}: {} new pod(s), {} object(s) in force",
        dir.display(),
        st.pods.len() - before,
        st.objects.len()
    );
    Ok(())
}

pub fn down(name: &str) -> Result<()> {
    let st = match State::load(name) {
        Ok(st) => st,
        Err(_) => State {
            name: name.to_string(),
            dir: state_dir(name),
            ..Default::default()
        },
    };
    teardown(&st)?;
    println!("sandbox {name} is down");
    Ok(())
}

fn teardown(st: &State) -> Result<()> {
    // Agents first, so they detach cleanly.
    for n in &st.nodes {
        if pid_alive(n.agent_pid) {
            let pid = n.agent_pid.unwrap_or(0).to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
    }
    let t = Instant::now();
    while st.nodes.iter().any(|n| pid_alive(n.agent_pid)) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in st.nodes.iter().filter(|n| pid_alive(n.agent_pid)) {
        let _ = Command::new("kill")
            .args(["-KILL", &n.agent_pid.unwrap_or(0).to_string()])
            .status();
    }
    // Namespaces: those recorded, then any left with our prefix (a crash before the state was
    // written). Pods first, the underlay last.
    let mut all: Vec<String> = st.netns.iter().rev().cloned().collect();
    let prefix = format!("{}-", st.name);
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for l in list.lines() {
            let n = l.split_whitespace().next().unwrap_or("");
            if n.starts_with(&prefix) && !all.iter().any(|x| x == n) {
                all.push(n.to_string());
            }
        }
    }
    let mut failed = Vec::new();
    for ns in all {
        if sh(&["ip", "netns", "del", &ns]).is_err()
            && sh(&["ip", "netns", "list"]).is_ok_and(|l| {
                l.lines()
                    .any(|x| x.split_whitespace().next() == Some(ns.as_str()))
            })
        {
            failed.push(ns);
        }
    }
    let _ = std::fs::remove_dir_all(&st.dir);
    if !failed.is_empty() {
        bail!("could not delete namespaces {failed:?}");
    }
    Ok(())
}

pub fn exec(name: &str, pod: &str, cmd: &[String]) -> Result<i32> {
    let st = State::load(name)?;
    let p = st.pod(pod)?;
    if cmd.is_empty() {
        bail!("nothing to run: vireo sandbox exec NS/POD -- CMD...");
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &p.netns])
        .args(cmd)
        .status()
        .with_context(|| format!("running {cmd:?} in {}", p.netns))?;
    Ok(status.code().unwrap_or(1))
}

pub fn status(name: &str, as_json: bool) -> Result<()> {
    let st = State::load(name)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&status_json(&st))?);
    } else {
        print!("{}", render_status(&st));
    }
    Ok(())
}

fn status_json(st: &State) -> serde_json::Value {
    json!({
        "name": st.name,
        "nodes": st.nodes.iter().map(|n| json!({
            "name": n.name, "ip": n.ip.to_string(), "pod_cidr": n.pod_cidr.to_string(),
            "agent": {"pid": n.agent_pid, "running": pid_alive(n.agent_pid), "api": n.api},
        })).collect::<Vec<_>>(),
        "pods": st.pods.iter().map(|p| json!({
            "pod": format!("{}/{}", p.namespace, p.name), "ip": p.ip.to_string(), "node": p.node,
            "interface": p.ifname,
        })).collect::<Vec<_>>(),
    })
}

fn render_status(st: &State) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "Sandbox {} (state: {})\n", st.name, st.dir.display());
    let _ = writeln!(
        o,
        "{:<10} {:<16} {:<16} {:<8} API",
        "NODE", "UNDERLAY IP", "POD CIDR", "AGENT"
    );
    for n in &st.nodes {
        let agent = if pid_alive(n.agent_pid) {
            "running"
        } else {
            "down"
        };
        let _ = writeln!(
            o,
            "{:<10} {:<16} {:<16} {:<8} {}",
            n.name,
            n.ip.to_string(),
            n.pod_cidr.to_string(),
            agent,
            n.api.display()
        );
    }
    let _ = writeln!(o, "\n{:<32} {:<16} {:<10} INTERFACE", "POD", "IP", "NODE");
    for p in &st.pods {
        let _ = writeln!(
            o,
            "{:<32} {:<16} {:<10} {}",
            format!("{}/{}", p.namespace, p.name),
            p.ip.to_string(),
            p.node,
            p.ifname
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(parse_name("vsbx").is_ok());
        assert!(parse_name("Vsbx").is_err());
        assert!(parse_name("toolongname").is_err());
        assert!(parse_name("a-b").is_err());
        assert_eq!(sanitize("kube.system_x"), "kube-system-x");
    }

    #[test]
    fn default_services_and_their_backends() {
        let svcs = echo_services().unwrap();
        let ips: Vec<Ipv4Addr> = svcs
            .iter()
            .map(|s| s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap())
            .collect();
        let range: Ipv4Net = "10.96.0.0/16".parse().unwrap();
        assert_eq!(ips.len(), 4);
        assert!(ips.iter().all(|ip| range.contains(ip)));
        let mut distinct = ips.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ips.len());
        let np = svcs
            .iter()
            .find(|s| s["metadata"]["name"] == "echo-np")
            .unwrap();
        assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
        let sticky = svcs
            .iter()
            .find(|s| s["metadata"]["name"] == "echo-sticky")
            .unwrap();
        assert_eq!(sticky["spec"]["sessionAffinity"], "ClientIP");
        let pods = echo_pods(2);
        assert_eq!(pods.len(), 2 * ECHO_PODS_PER_NODE);
        let ports = pods[0].spec.as_ref().unwrap().containers[0]
            .ports
            .clone()
            .unwrap();
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
        assert_eq!(echo_pods(1).len(), ECHO_PODS_PER_NODE);
    }

    #[test]
    fn default_policy_pods() {
        let pods = policy_pods(2);
        assert_eq!(pods.len(), 4 + NETPOL_NAMESPACES.len() * NETPOL_PODS.len());
        let at = |ns: &str, name: &str| {
            let p = pods
                .iter()
                .find(|p| {
                    p.metadata.namespace.as_deref() == Some(ns)
                        && p.metadata.name.as_deref() == Some(name)
                })
                .unwrap();
            p.spec.as_ref().unwrap().node_name.clone().unwrap()
        };
        assert_eq!(at(POLICY_NAMESPACE, "server"), "node-2");
        assert_eq!(at(POLICY_NAMESPACE, "client-local"), "node-2");
        assert_eq!(at(POLICY_NAMESPACE, "client-allowed"), "node-1");
        // The model's pods use both nodes.
        assert_ne!(at("x", "a"), at("x", "b"));
        assert!(policy_pods(1)
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-1")));
        assert_eq!(policy_namespaces().unwrap().len(), 4);
    }
}
