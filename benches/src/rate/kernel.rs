//! The kernel cases, in the node namespace between the same veths: `kernel-path` (routing,
//! iptables DNAT as kube-proxy writes it, nf_conntrack, and a VXLAN device as flannel sets it
//! up) and `kernel-xdp-redirect` (a small XDP program redirecting hA → hB).
//!
//! Both run with RPS steering hA's receive work to the DUT core: a veth delivers on the
//! sender's CPU otherwise, and the generator's core would do the DUT's work.

use std::net::Ipv4Addr;
use std::path::Path;

use vireo_control::config::format_mac;
use vireo_dataplane::fixtures::{GATEWAY, POD_B, POD_C};

use super::{HOST_A, HOST_B};

/// The Service's ClusterIP and port, as the generator addresses it.
pub(super) const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub(super) const SERVICE_PORT: u16 = 7;
/// The backend: a pod on the remote node.
pub(super) const BACKEND: Ipv4Addr = POD_C;
/// This node's and the remote node's underlay addresses (on hB; the remote node is the sink).
pub(super) const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
pub(super) const REMOTE_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
/// The remote node's flannel.1 MAC (flannel writes it into the node's annotations).
const REMOTE_VTEP_MAC: &str = "02:00:00:00:77:02";
/// MTU of the underlay veths (hB and the sink's eth0): 1500-byte frames plus VXLAN fit.
pub(super) const UNDERLAY_MTU: u16 = 1600;
/// kube-proxy's chain names carry a hash of the service; these are fixed.
const SVC_CHAIN: &str = "KUBE-SVC-VBENCH000000000";
const SEP_CHAIN: &str = "KUBE-SEP-VBENCH000000000";

fn cmd(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

/// The commands that set up `kernel-path` in the node namespace (each run with
/// `ip netns exec NODE`).
pub(super) fn kernel_path_setup() -> Vec<Vec<String>> {
    let gw = format!("{GATEWAY}/24");
    let node = format!("{NODE_IP}/24");
    let remote_subnet = {
        let o = BACKEND.octets();
        format!("{}.{}.{}.0/24", o[0], o[1], o[2])
    };
    let remote_gw = {
        let o = BACKEND.octets();
        format!("{}.{}.{}.0", o[0], o[1], o[2])
    };
    let local_vtep = {
        let o = GATEWAY.octets();
        format!("{}.{}.{}.0/32", o[0], o[1], o[2])
    };
    let svc = format!("{CLUSTER_IP}/32");
    let port = SERVICE_PORT.to_string();
    let to = format!("{BACKEND}:{SERVICE_PORT}");
    let sink_mac = format_mac(&POD_B.1);
    let remote = REMOTE_NODE_IP.to_string();
    let fl_mtu = (UNDERLAY_MTU - 50).to_string();
    vec![
        cmd(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
        cmd(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]),
        cmd(&["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]),
        cmd(&["ip", "addr", "add", &gw, "dev", HOST_A]),
        cmd(&["ip", "addr", "add", &node, "dev", HOST_B]),
        cmd(&[
            "ip",
            "neigh",
            "replace",
            &remote,
            "lladdr",
            &sink_mac,
            "dev",
            HOST_B,
            "nud",
            "permanent",
        ]),
        // flannel's vxlan backend: flannel.1, VNI 1, port 8472, no learning, static entries.
        cmd(&[
            "ip",
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &NODE_IP.to_string(),
            "dev",
            HOST_B,
            "dstport",
            "8472",
            "nolearning",
        ]),
        cmd(&["ip", "link", "set", "flannel.1", "mtu", &fl_mtu, "up"]),
        cmd(&["ip", "addr", "add", &local_vtep, "dev", "flannel.1"]),
        cmd(&[
            "ip",
            "route",
            "add",
            &remote_subnet,
            "via",
            &remote_gw,
            "dev",
            "flannel.1",
            "onlink",
        ]),
        cmd(&[
            "ip",
            "neigh",
            "replace",
            &remote_gw,
            "lladdr",
            REMOTE_VTEP_MAC,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]),
        cmd(&[
            "bridge",
            "fdb",
            "append",
            REMOTE_VTEP_MAC,
            "dev",
            "flannel.1",
            "dst",
            &remote,
        ]),
        // kube-proxy (iptables mode): KUBE-SERVICES → KUBE-SVC-… → KUBE-SEP-… DNAT.
        cmd(&["iptables", "-w", "-t", "nat", "-N", "KUBE-SERVICES"]),
        cmd(&["iptables", "-w", "-t", "nat", "-N", SVC_CHAIN]),
        cmd(&["iptables", "-w", "-t", "nat", "-N", SEP_CHAIN]),
        cmd(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ]),
        cmd(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "KUBE-SERVICES",
            "-d",
            &svc,
            "-p",
            "udp",
            "-m",
            "udp",
            "--dport",
            &port,
            "-m",
            "comment",
            "--comment",
            "bench/svc:udp cluster IP",
            "-j",
            SVC_CHAIN,
        ]),
        cmd(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            SVC_CHAIN,
            "-m",
            "comment",
            "--comment",
            "bench/svc:udp -> backend",
            "-j",
            SEP_CHAIN,
        ]),
        cmd(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            SEP_CHAIN,
            "-p",
            "udp",
            "-m",
            "udp",
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ]),
    ]
}

/// The commands that steer hA's receive work to `core` (RPS), or back (`None`).
pub(super) fn rps(core: Option<usize>) -> Vec<Vec<String>> {
    let mask = core.map_or_else(|| "0".to_owned(), |c| format!("{:x}", 1u64 << c));
    // Every receive queue hA has (a veth has one per CPU of the machine that made it, or as
    // many as it was created with).
    vec![vec![
        "sh".into(),
        "-c".into(),
        format!("for f in /sys/class/net/{HOST_A}/queues/rx-*/rps_cpus; do echo {mask} > \"$f\" || exit 1; done"),
    ]]
}

/// The XDP program of `kernel-xdp-redirect`: every frame on hA to hB's ifindex.
pub(super) const XDP_REDIRECT_C: &str = r#"
#include <linux/bpf.h>
#define SEC(n) __attribute__((section(n), used))
static long (*bpf_redirect)(__u32 ifindex, __u64 flags) = (void *)23;
SEC("xdp")
int redirect(struct xdp_md *ctx) { return bpf_redirect(OUT_IFINDEX, 0); }
char _license[] SEC("license") = "GPL";
"#;

/// Compiling the redirect program for `out_ifindex` into `obj`.
pub(super) fn xdp_redirect_build(src: &Path, obj: &Path, out_ifindex: u32) -> Vec<String> {
    vec![
        "clang".into(),
        "-O2".into(),
        "-g0".into(),
        "-target".into(),
        "bpf".into(),
        format!("-DOUT_IFINDEX={out_ifindex}"),
        "-c".into(),
        src.display().to_string(),
        "-o".into(),
        obj.display().to_string(),
    ]
}

/// Attaching it to hA (`generic`: under RPS it runs on the DUT core), and detaching it.
pub(super) fn xdp_redirect_attach(obj: &Path) -> Vec<String> {
    let o = obj.display().to_string();
    cmd(&[
        "ip",
        "link",
        "set",
        "dev",
        HOST_A,
        "xdpgeneric",
        "obj",
        &o,
        "sec",
        "xdp",
    ])
}

pub(super) fn xdp_redirect_detach() -> Vec<String> {
    cmd(&["ip", "link", "set", "dev", HOST_A, "xdpgeneric", "off"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(v: &[Vec<String>]) -> Vec<String> {
        v.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn kube_proxy_chains_jump_services_svc_sep_dnat() {
        let c = joined(&kernel_path_setup());
        let pos = |needle: &str| {
            c.iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} missing: {c:#?}"))
        };
        let jump =
            pos("-A PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES");
        let svc = pos("-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m udp --dport 7");
        let sep = pos(&format!("-A {SVC_CHAIN}"));
        let dnat = pos(&format!(
            "-A {SEP_CHAIN} -p udp -m udp -j DNAT --to-destination {BACKEND}:7"
        ));
        // Chains exist before the rules that jump to them.
        assert!(pos("-N KUBE-SERVICES") < jump);
        assert!(pos(&format!("-N {SVC_CHAIN}")) < svc);
        assert!(pos(&format!("-N {SEP_CHAIN}")) < sep);
        assert!(jump < svc && svc < sep && sep < dnat);
        assert!(c
            .iter()
            .all(|l| !l.starts_with("iptables") || l.contains(" -t nat ")));
    }

    #[test]
    fn flannel_device_is_vni1_port8472_without_learning_and_static_entries() {
        let c = joined(&kernel_path_setup());
        let dev = c
            .iter()
            .find(|l| l.contains("type vxlan"))
            .expect("a vxlan device");
        assert!(
            dev.starts_with("ip link add flannel.1 type vxlan id 1 "),
            "{dev}"
        );
        assert!(
            dev.contains("dstport 8472") && dev.contains("nolearning"),
            "{dev}"
        );
        assert!(
            dev.contains(&format!("local {NODE_IP} dev {HOST_B}")),
            "{dev}"
        );
        assert!(c.iter().any(|l| l
            == &format!("bridge fdb append {REMOTE_VTEP_MAC} dev flannel.1 dst {REMOTE_NODE_IP}")));
        assert!(c.iter().any(|l| l
            == &format!(
                "ip neigh replace 10.244.2.0 lladdr {REMOTE_VTEP_MAC} dev flannel.1 nud permanent"
            )));
        assert!(c
            .iter()
            .any(|l| l == "ip route add 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"));
        assert!(c.iter().any(|l| l == "sysctl -qw net.ipv4.ip_forward=1"));
    }

    #[test]
    fn rps_masks_and_xdp_commands() {
        assert_eq!(
            joined(&rps(Some(1))),
            [format!(
                "sh -c for f in /sys/class/net/{HOST_A}/queues/rx-*/rps_cpus; do echo 2 > \"$f\" || exit 1; done"
            )]
        );
        assert!(joined(&rps(None))[0].contains("echo 0 > "));
        let b = xdp_redirect_build(Path::new("/d/r.c"), Path::new("/d/r.o"), 7).join(" ");
        assert_eq!(
            b,
            "clang -O2 -g0 -target bpf -DOUT_IFINDEX=7 -c /d/r.c -o /d/r.o"
        );
        assert_eq!(
            xdp_redirect_attach(Path::new("/d/r.o")).join(" "),
            format!("ip link set dev {HOST_A} xdpgeneric obj /d/r.o sec xdp")
        );
    }
}
