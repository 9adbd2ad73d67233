//! The cluster cases: the agent as a node of a two-node cluster read from manifests (Nodes,
//! Pods, a Service, NetworkPolicies), the whole pipeline on, the sink standing in for the other
//! node.
//!
//! - `vireo-egress`: pod A on hA sends to the ClusterIP; Maglev picks pod C on the other node,
//!   conntrack records the flow, pod A's egress policy allows it, and the frame leaves hB (the
//!   uplink) in VXLAN to the other node's underlay address, the sink's.
//! - `vireo-ingress`: the generator on hA (now the uplink) stands in for the other node and
//!   sends VXLAN from pod C (our generator: testpmd cannot build it); the agent decapsulates,
//!   checks pod B's ingress policy, and delivers to pod B on hB, the sink.
//!
//! hA and hB carry the names the agent gives the host veths of pods `default/bench-a` and
//! `default/bench-b`, so it attaches them from the manifests as it does a kubelet's pods.
//! The pod CIDRs are /25s inside kernel-path's /24s: the routes the agent's host pair adds are
//! more specific than kernel-path's and go away with the pair, leaving kernel-path's intact.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use vireo_api::{self as api, Request};
use vireo_dataplane::fixtures::{encapsulate, POD_A, POD_B, POD_C};

use super::agent_run::{self, AgentSetup};
use super::kernel::{BACKEND, CLUSTER_IP, NODE_IP, REMOTE_NODE_IP, SERVICE_PORT};
use super::measure::Rate;
use super::runs::{GenKind, Generator};
use super::{Ctx, HOST_A, HOST_B, PAYLOAD};

/// This node, as the manifests name it.
const NODE: &str = "vireo-bench";
/// The other node (the sink).
const REMOTE: &str = "vireo-bench-remote";
/// The pods' namespace and names; hA and hB are their host veths.
const NAMESPACE: &str = "default";
pub(super) const POD_A_NAME: &str = "bench-a";
pub(super) const POD_B_NAME: &str = "bench-b";
const POD_C_NAME: &str = "bench-c";
/// The pod CIDRs of this node and of the other (see the module's notes).
const LOCAL_CIDR: &str = "10.244.1.0/25";
const REMOTE_CIDR: &str = "10.244.2.0/25";

/// Which cluster case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Egress,
    Ingress,
}

fn node(name: &str, ip: Ipv4Addr, cidr: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]},
    })
}

fn pod(name: &str, ip: Ipv4Addr, node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "bench"}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
    })
}

/// A NetworkPolicy on `subject` allowing UDP to the service port from or to the backends only.
fn policy(subject: &str, dir: Direction) -> Value {
    let peer = json!([{"podSelector": {"matchLabels": {"app": "backend"}}}]);
    let ports = json!([{"protocol": "UDP", "port": SERVICE_PORT}]);
    let (types, rules) = match dir {
        Direction::Egress => ("Egress", json!({"egress": [{"to": peer, "ports": ports}]})),
        Direction::Ingress => (
            "Ingress",
            json!({"ingress": [{"from": peer, "ports": ports}]}),
        ),
    };
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": subject}},
        "policyTypes": [types],
    });
    if let (Some(s), Some(r)) = (spec.as_object_mut(), rules.as_object()) {
        s.extend(r.clone());
    }
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("bench-{subject}"), "namespace": NAMESPACE},
        "spec": spec,
    })
}

/// The cluster the agent reads: both nodes; the local pod of the case (A for egress, B for
/// ingress: the other host veth is the uplink), pod C on the other node behind the Service,
/// and both policies.
pub(super) fn manifests(dir: Direction) -> Value {
    let local = match dir {
        Direction::Egress => pod(POD_A_NAME, POD_A.0, NODE, "client"),
        Direction::Ingress => pod(POD_B_NAME, POD_B.0, NODE, "server"),
    };
    let items = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        node(NODE, NODE_IP, LOCAL_CIDR),
        node(REMOTE, REMOTE_NODE_IP, REMOTE_CIDR),
        local,
        pod(POD_C_NAME, BACKEND, REMOTE, "backend"),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "bench", "namespace": NAMESPACE},
            "spec": {"type": "ClusterIP", "clusterIP": CLUSTER_IP.to_string(),
                     "clusterIPs": [CLUSTER_IP.to_string()], "selector": {"app": "backend"},
                     "ports": [{"port": SERVICE_PORT, "targetPort": SERVICE_PORT, "protocol": "UDP"}]},
        }),
        policy("client", Direction::Egress),
        policy("server", Direction::Ingress),
    ];
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The agent's part of a cluster case: the uplink from the configuration, the pod from the
/// manifests, and ready once its tables hold what the case's traffic needs.
fn setup(dir: Direction, work: &Path) -> Result<AgentSetup> {
    let mdir = work.join(match dir {
        Direction::Egress => "manifests-egress",
        Direction::Ingress => "manifests-ingress",
    });
    std::fs::create_dir_all(&mdir)?;
    let file = mdir.join("cluster.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(&manifests(dir))?)
        .with_context(|| format!("writing {}", file.display()))?;
    let uplink = match dir {
        Direction::Egress => HOST_B,
        Direction::Ingress => HOST_A,
    };
    Ok(AgentSetup {
        node: NODE,
        interfaces: json!([{"name": uplink, "role": "uplink"}]),
        manifests: Some(mdir),
        // The uplink, the pod and the host pair's vireo_net.
        attached: 3,
        ready: match dir {
            Direction::Egress => egress_ready,
            Direction::Ingress => ingress_ready,
        },
        check: match dir {
            Direction::Egress => |s| took_the_path(s, Direction::Egress),
            Direction::Ingress => |s| took_the_path(s, Direction::Ingress),
        },
    })
}

fn map(sock: &Path, name: &str) -> Option<Value> {
    api::call(sock, &Request::MapGet { map: name.into() }).ok()
}

/// The other node's next hop is resolved and pod C is known.
fn egress_ready(sock: &Path) -> bool {
    let remote_known = map(sock, "nodes").is_some_and(|n| {
        n["remote"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && !r[0]["next_hop_mac"].is_null())
    });
    remote_known && identity_of(sock, BACKEND).is_some()
}

fn ingress_ready(sock: &Path) -> bool {
    identity_of(sock, BACKEND).is_some()
}

/// After a run: the policy of the case's side is in force and allows the flow, and conntrack
/// holds the flow (so the frames went through the service and conntrack stages).
fn took_the_path(sock: &Path, dir: Direction) -> Result<()> {
    let pod = |name: &str| json!({"by": "pod", "namespace": NAMESPACE, "name": name});
    let (src, dst, side) = match dir {
        Direction::Egress => (pod(POD_A_NAME), pod(POD_C_NAME), "egress"),
        Direction::Ingress => (pod(POD_C_NAME), pod(POD_B_NAME), "ingress"),
    };
    let req: Request = serde_json::from_value(json!({
        "cmd": "policy_trace", "src": src, "dst": dst,
        "dport": {"port": SERVICE_PORT, "proto": 17},
    }))?;
    let t = api::call(sock, &req).context("policy trace")?;
    if t["verdict"] != "allowed" || t[side]["enforced"] != true {
        anyhow::bail!("the case's policy is not in force as planned: {t}");
    }
    let ct = map(sock, "ct").context("the conntrack table")?;
    if ct["other"].as_u64().unwrap_or(0) == 0 {
        anyhow::bail!("conntrack holds no flow after the run: {ct}");
    }
    Ok(())
}

/// The identity the agent's ipcache gives `ip`.
fn identity_of(sock: &Path, ip: Ipv4Addr) -> Option<u32> {
    let want = format!("{ip}/32");
    map(sock, "ipcache")?
        .as_array()?
        .iter()
        .find(|e| e["prefix"].as_str() == Some(want.as_str()))?["identity"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
}

/// The other node's VXLAN frame carrying pod C's 64-byte UDP frame to pod B, with pod C's
/// identity as the VNI, as the generator on hA sends it (to hA's MAC).
pub(super) fn ingress_frame(vni: u32) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(
        vireo_control::cluster::pod_mac(BACKEND),
        vireo_control::cluster::pod_mac(POD_B.0),
    )
    .ipv4(POD_C.octets(), POD_B.0.octets(), 63)
    .udp(40000, SERVICE_PORT);
    let mut inner = Vec::with_capacity(b.size(PAYLOAD.len()));
    b.write(&mut inner, &PAYLOAD)
        .expect("writing to a Vec cannot fail");
    encapsulate(&inner, (POD_A.1, REMOTE_NODE_IP), (POD_A.3, NODE_IP), vni)
}

/// Runs one cluster case once: testpmd (or our generator) to the ClusterIP for egress, our
/// VXLAN generator for ingress.
pub(super) fn run(ctx: &Ctx, dir: Direction, gen_kind: &GenKind) -> Result<Rate> {
    let s = setup(dir, &ctx.topo.dir)?;
    agent_run::run_with(ctx, &s, |sock, limit| match dir {
        Direction::Egress => Generator::start(ctx, gen_kind, CLUSTER_IP, limit),
        Direction::Ingress => {
            let vni = identity_of(sock, BACKEND).context("pod C's identity")?;
            Generator::start_frame(ctx, ingress_frame(vni), limit)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_control::cluster::pod_ifname;
    use vireo_dataplane::wire::VXLAN_OVERHEAD;

    #[test]
    fn the_host_veths_carry_the_pods_interface_names() {
        assert_eq!(HOST_A, pod_ifname(NAMESPACE, POD_A_NAME));
        assert_eq!(HOST_B, pod_ifname(NAMESPACE, POD_B_NAME));
    }

    #[test]
    fn the_manifests_have_each_cases_local_pod_only() {
        for (dir, local, other) in [
            (Direction::Egress, POD_A_NAME, POD_B_NAME),
            (Direction::Ingress, POD_B_NAME, POD_A_NAME),
        ] {
            let m = manifests(dir);
            let names: Vec<&str> = m["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["kind"] == "Pod")
                .map(|o| o["metadata"]["name"].as_str().unwrap())
                .collect();
            assert!(names.contains(&local) && names.contains(&POD_C_NAME));
            assert!(!names.contains(&other), "{names:?}");
            let policies = m["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["kind"] == "NetworkPolicy")
                .count();
            assert_eq!(policies, 2);
        }
    }

    #[test]
    fn the_ingress_frame_is_vxlan_from_the_other_node_to_pod_b() {
        let f = ingress_frame(4242);
        let outer = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = outer.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), REMOTE_NODE_IP);
        assert_eq!(ip.header().destination_addr(), NODE_IP);
        let inner = etherparse::SlicedPacket::from_ethernet(&f[VXLAN_OVERHEAD..]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = inner.net else {
            panic!("inner not IPv4")
        };
        assert_eq!(ip.header().destination_addr(), POD_B.0);
        assert_eq!(f.len() - VXLAN_OVERHEAD, 60);
        // VNI in bytes 4..7 of the VXLAN header.
        let v = &f[VXLAN_OVERHEAD - 8..VXLAN_OVERHEAD];
        assert_eq!(u32::from_be_bytes([0, v[4], v[5], v[6]]), 4242);
    }
}
