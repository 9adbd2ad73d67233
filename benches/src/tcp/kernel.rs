//! The kernel baselines' topologies, rendered as commands (so that tests can read them) and
//! built from network namespaces only; nothing is connected to a real interface.
//!
//! Same node: two pod namespaces routed by the kernel through a third (the "node"), veths at
//! the MTU:
//!
//! ```text
//!  PREFIX-a  eth0 10.77.1.2/24 <-veth-> ra 10.77.1.1 [PREFIX-r, ip_forward] rb 10.77.2.1 <-veth-> eth0 10.77.2.2/24  PREFIX-b
//! ```
//!
//! Cross node, as flannel's VXLAN backend sets a node up: two node namespaces joined by an
//! underlay veth pair (192.168.77.1 and .2, MTU + 50), each with `flannel.1` (VNI 1, dstport
//! 8472, nolearning, MTU = underlay − 50, address `10.78.N.0/32`), a static fdb entry and a
//! permanent neighbour entry for the other node's VTEP, the other node's pod CIDR routed via
//! `flannel.1` (onlink), and one pod behind a veth.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

use super::proc::{ip, own_netns, remove_netns, run_setup};

/// Two pods, where to find them, and the guard that removes the namespaces.
pub(super) struct KernelTopo {
    pub(super) client_ns: String,
    pub(super) server_ns: String,
    pub(super) server_ip: String,
    prefix: String,
}

impl Drop for KernelTopo {
    fn drop(&mut self) {
        remove_netns(&self.prefix);
    }
}

fn cmd(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// `ip netns exec NS sysctl -qw KEY=VALUE`.
fn sysctl(ns: &str, kv: &str) -> Vec<String> {
    cmd(&["ip", "netns", "exec", ns, "sysctl", "-qw", kv])
}

/// The namespaces made by a rendering, in creation order (the tests check renderings by it).
#[cfg(test)]
pub(super) fn namespaces(cmds: &[Vec<String>]) -> Vec<String> {
    cmds.iter()
        .filter(|c| c.len() == 4 && c[..3] == ["ip", "netns", "add"])
        .map(|c| c[3].clone())
        .collect()
}

fn add_ns(v: &mut Vec<Vec<String>>, ns: &str) {
    v.push(cmd(&["ip", "netns", "add", ns]));
    v.push(cmd(&["ip", "-n", ns, "link", "set", "lo", "up"]));
    v.push(sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1"));
}

/// Same-node commands: pods `PREFIX-a` and `PREFIX-b`, router `PREFIX-r`.
pub(super) fn same_node_cmds(prefix: &str, mtu: u32) -> Vec<Vec<String>> {
    let (a, r, b) = (
        format!("{prefix}-a"),
        format!("{prefix}-r"),
        format!("{prefix}-b"),
    );
    let m = mtu.to_string();
    let mut v = Vec::new();
    for ns in [&a, &r, &b] {
        add_ns(&mut v, ns);
    }
    v.push(sysctl(&r, "net.ipv4.ip_forward=1"));
    for (pod, port, net) in [(&a, "ra", "10.77.1"), (&b, "rb", "10.77.2")] {
        v.push(cmd(&[
            "ip", "-n", &r, "link", "add", port, "mtu", &m, "type", "veth", "peer", "name", "eth0",
            "netns", pod, "mtu", &m,
        ]));
        v.push(cmd(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            &format!("{net}.1/24"),
            "dev",
            port,
        ]));
        v.push(cmd(&["ip", "-n", &r, "link", "set", port, "up"]));
        v.push(cmd(&[
            "ip",
            "-n",
            pod,
            "addr",
            "add",
            &format!("{net}.2/24"),
            "dev",
            "eth0",
        ]));
        v.push(cmd(&["ip", "-n", pod, "link", "set", "eth0", "up"]));
        v.push(cmd(&[
            "ip",
            "-n",
            pod,
            "route",
            "add",
            "default",
            "via",
            &format!("{net}.1"),
        ]));
    }
    v
}

/// Node `n`'s (1 or 2) VTEP MAC: fixed, so that the other node's entries can name it.
pub(super) fn vtep_mac(n: u8) -> String {
    format!("02:fa:00:00:00:{n:02x}")
}

/// Cross-node commands: nodes `PREFIX-n1`, `PREFIX-n2`, pods `PREFIX-p1` (10.78.1.2 on
/// node 1) and `PREFIX-p2` (10.78.2.2 on node 2); `mtu` is the pods' (and flannel.1's).
pub(super) fn cross_node_cmds(prefix: &str, mtu: u32) -> Vec<Vec<String>> {
    let node = |i: u8| format!("{prefix}-n{i}");
    let pod = |i: u8| format!("{prefix}-p{i}");
    let (m, um) = (mtu.to_string(), (mtu + 50).to_string());
    let mut v = Vec::new();
    for i in [1u8, 2] {
        add_ns(&mut v, &node(i));
        add_ns(&mut v, &pod(i));
        v.push(sysctl(&node(i), "net.ipv4.ip_forward=1"));
    }
    // The underlay: a veth pair between the nodes, connected to nothing else.
    v.push(cmd(&[
        "ip",
        "-n",
        &node(1),
        "link",
        "add",
        "eth0",
        "mtu",
        &um,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &node(2),
        "mtu",
        &um,
    ]));
    for i in [1u8, 2] {
        let (n, p, o) = (node(i), pod(i), 3 - i);
        let under = format!("192.168.77.{i}");
        v.push(cmd(&[
            "ip",
            "-n",
            &n,
            "addr",
            "add",
            &format!("{under}/24"),
            "dev",
            "eth0",
        ]));
        v.push(cmd(&["ip", "-n", &n, "link", "set", "eth0", "up"]));
        // flannel.1 as flannel's vxlan backend makes it.
        v.push(cmd(&[
            "ip",
            "-n",
            &n,
            "link",
            "add",
            "flannel.1",
            "address",
            &vtep_mac(i),
            "mtu",
            &m,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &under,
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ]));
        v.push(cmd(&[
            "ip",
            "-n",
            &n,
            "addr",
            "add",
            &format!("10.78.{i}.0/32"),
            "dev",
            "flannel.1",
        ]));
        v.push(cmd(&["ip", "-n", &n, "link", "set", "flannel.1", "up"]));
        // The other node: its VTEP's MAC behind its underlay address, its flannel.1 address
        // resolved statically, its pod CIDR through flannel.1.
        v.push(cmd(&[
            "bridge",
            "-n",
            &n,
            "fdb",
            "append",
            &vtep_mac(o),
            "dev",
            "flannel.1",
            "dst",
            &format!("192.168.77.{o}"),
        ]));
        v.push(cmd(&[
            "ip",
            "-n",
            &n,
            "neigh",
            "replace",
            &format!("10.78.{o}.0"),
            "lladdr",
            &vtep_mac(o),
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]));
        v.push(cmd(&[
            "ip",
            "-n",
            &n,
            "route",
            "add",
            &format!("10.78.{o}.0/24"),
            "via",
            &format!("10.78.{o}.0"),
            "dev",
            "flannel.1",
            "onlink",
        ]));
        // The pod behind a veth (routed, as flannel's cni0 gateway is).
        v.push(cmd(&[
            "ip", "-n", &n, "link", "add", "pod", "mtu", &m, "type", "veth", "peer", "name",
            "eth0", "netns", &p, "mtu", &m,
        ]));
        v.push(cmd(&[
            "ip",
            "-n",
            &n,
            "addr",
            "add",
            &format!("10.78.{i}.1/24"),
            "dev",
            "pod",
        ]));
        v.push(cmd(&["ip", "-n", &n, "link", "set", "pod", "up"]));
        v.push(cmd(&[
            "ip",
            "-n",
            &p,
            "addr",
            "add",
            &format!("10.78.{i}.2/24"),
            "dev",
            "eth0",
        ]));
        v.push(cmd(&["ip", "-n", &p, "link", "set", "eth0", "up"]));
        v.push(cmd(&[
            "ip",
            "-n",
            &p,
            "route",
            "add",
            "default",
            "via",
            &format!("10.78.{i}.1"),
        ]));
    }
    v
}

/// Builds a rendering; on any failure (or `stop`) removes what it made.
fn build(prefix: &str, cmds: &[Vec<String>], stop: &AtomicBool) -> Result<()> {
    let existing = ip(&["netns", "list"])?;
    if let Some(l) = existing
        .lines()
        .find(|l| l.starts_with(&format!("{prefix}-")))
    {
        bail!("network namespace {l} already exists (a leftover: `ip netns del` it)");
    }
    let r = (|| {
        for c in cmds {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            run_setup(c)?;
            if c.len() == 4 && c[..3] == ["ip", "netns", "add"] {
                own_netns(&c[3]);
            }
        }
        Ok(())
    })();
    if r.is_err() {
        remove_netns(prefix);
    }
    r
}

pub(super) fn same_node(prefix: &str, mtu: u32, stop: &AtomicBool) -> Result<KernelTopo> {
    build(prefix, &same_node_cmds(prefix, mtu), stop)?;
    Ok(KernelTopo {
        client_ns: format!("{prefix}-a"),
        server_ns: format!("{prefix}-b"),
        server_ip: "10.77.2.2".into(),
        prefix: format!("{prefix}-"),
    })
}

pub(super) fn cross_node(prefix: &str, mtu: u32, stop: &AtomicBool) -> Result<KernelTopo> {
    build(prefix, &cross_node_cmds(prefix, mtu), stop)?;
    Ok(KernelTopo {
        client_ns: format!("{prefix}-p1"),
        server_ns: format!("{prefix}-p2"),
        server_ip: "10.78.2.2".into(),
        prefix: format!("{prefix}-"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(cmds: &[Vec<String>], line: &str) -> bool {
        cmds.iter().any(|c| c.join(" ") == line)
    }

    #[test]
    fn flannel_setup_as_flannel_makes_it() {
        let c = cross_node_cmds("vtc1", 1450);
        assert_eq!(namespaces(&c), ["vtc1-n1", "vtc1-p1", "vtc1-n2", "vtc1-p2"]);
        // The underlay veth is 50 bytes above the VXLAN device and connects the two nodes only.
        assert!(has(
            &c,
            "ip -n vtc1-n1 link add eth0 mtu 1500 type veth peer name eth0 netns vtc1-n2 mtu 1500"
        ));
        assert!(has(&c, "ip -n vtc1-n1 link add flannel.1 address 02:fa:00:00:00:01 mtu 1450 type vxlan id 1 local 192.168.77.1 dev eth0 dstport 8472 nolearning"));
        // Each node knows the other's VTEP statically (no learning): fdb, neighbour, route.
        assert!(has(
            &c,
            "bridge -n vtc1-n1 fdb append 02:fa:00:00:00:02 dev flannel.1 dst 192.168.77.2"
        ));
        assert!(has(&c, "ip -n vtc1-n1 neigh replace 10.78.2.0 lladdr 02:fa:00:00:00:02 dev flannel.1 nud permanent"));
        assert!(has(
            &c,
            "ip -n vtc1-n1 route add 10.78.2.0/24 via 10.78.2.0 dev flannel.1 onlink"
        ));
        assert!(has(
            &c,
            "bridge -n vtc1-n2 fdb append 02:fa:00:00:00:01 dev flannel.1 dst 192.168.77.1"
        ));
        assert!(has(
            &c,
            "ip -n vtc1-n2 route add 10.78.1.0/24 via 10.78.1.0 dev flannel.1 onlink"
        ));
        assert!(has(&c, "ip -n vtc1-n2 addr add 10.78.2.0/32 dev flannel.1"));
        // The jumbo variant moves every MTU together.
        let j = cross_node_cmds("vtc1", 9000);
        assert!(has(&j, "ip -n vtc1-n2 link add flannel.1 address 02:fa:00:00:00:02 mtu 9000 type vxlan id 1 local 192.168.77.2 dev eth0 dstport 8472 nolearning"));
        assert!(j.iter().any(|c| c.join(" ").contains("mtu 9050 type veth")));
        // Nothing leaves the namespaces: every command names one of ours.
        for c in c.iter().chain(&j) {
            assert!(c.iter().any(|w| w.starts_with("vtc1-")), "{c:?}");
        }
    }

    #[test]
    fn same_node_routes_through_a_third_namespace() {
        let c = same_node_cmds("vtc2", 9000);
        assert_eq!(namespaces(&c), ["vtc2-a", "vtc2-r", "vtc2-b"]);
        assert!(has(
            &c,
            "ip netns exec vtc2-r sysctl -qw net.ipv4.ip_forward=1"
        ));
        assert!(has(
            &c,
            "ip -n vtc2-r link add rb mtu 9000 type veth peer name eth0 netns vtc2-b mtu 9000"
        ));
        assert!(has(&c, "ip -n vtc2-a route add default via 10.77.1.1"));
        assert!(has(&c, "ip -n vtc2-b addr add 10.77.2.2/24 dev eth0"));
    }
}
