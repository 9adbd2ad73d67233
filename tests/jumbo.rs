//! Jumbo frames (root only): a sandbox with pod MTU 9000 (`vireo sandbox up --mtu 9000`,
//! underlay 9050), where AF_XDP multi-buffer carries frames larger than a UMEM frame. A ping
//! of 9000 bytes with DF set goes between two pods of one node and across nodes (through
//! VXLAN), and a TCP transfer of 20 MB goes both ways with its bytes checked.

mod common;

use std::process::{Output, Stdio};

use common::*;
use serde_json::Value;

/// What these tests add to the shared sandbox harness.
impl Sandbox {
    /// `ping -M do -s 8972`: 9000-byte IPv4 packets, DF set, three of them.
    fn jumbo_ping(&self, from: &str, to: &str) -> Output {
        self.vireo(&[
            "sandbox", "exec", from, "--", "ping", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do",
            "-s", "8972", "-q", to,
        ])
    }
    /// `size` bytes over TCP from pod `from` to pod `to` (at `ip`), checked end to end.
    fn tcp(&self, from: &str, to: &str, ip: &str, port: u16, size: usize) -> Result<(), String> {
        let script = helper("tcpcheck.py");
        let s = script.to_str().expect("utf-8 path");
        let (port, size) = (port.to_string(), size.to_string());
        let mut server = self
            .cmd(&[
                "sandbox", "exec", to, "--", "timeout", "60", "python3", s, "server", ip, &port,
                &size,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut first = [0u8; 10];
        use std::io::Read;
        let _ = server.stdout.as_mut().map(|o| o.read_exact(&mut first));
        let client = self.vireo(&[
            "sandbox", "exec", from, "--", "timeout", "60", "python3", s, "client", ip, &port,
            &size,
        ]);
        let out = server.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() && client.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&client.stderr)
            ))
        }
    }
    /// The agent's counters, and the kernel's AF_XDP drop counts summed over its workers.
    fn counters(&self, node: &str) -> (Value, Value) {
        let st = self.json(&["status", "--json", "--node", node]);
        let mut k = serde_json::Map::new();
        for w in st["workers"].as_array().expect("workers") {
            assert_eq!(
                w["multi_buffer"], true,
                "{node}: bound with XDP_USE_SG: {w}"
            );
            for (name, v) in w["counters"]["kernel"].as_object().expect("kernel") {
                let sum = k.get(name).and_then(Value::as_u64).unwrap_or(0) + v.as_u64().unwrap();
                k.insert(name.clone(), sum.into());
            }
        }
        (st["counters"].clone(), Value::Object(k))
    }
}

#[test]
fn jumbo_frames_cross_a_node_and_the_tunnel_at_mtu_9000() {
    require_capabilities(&["python3"]);
    let s = Sandbox::up(
        "mb",
        &["--source", "manifests", "--pods", "2", "--mtu", "9000"],
    );
    let mtu = s.vireo(&[
        "sandbox",
        "exec",
        "node-1-pod-1",
        "--",
        "cat",
        "/sys/class/net/eth0/mtu",
    ]);
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "9000");
    let (b, c) = (s.pod_ip("node-1-pod-2"), s.pod_ip("node-2-pod-1"));
    for (to, ip) in [("node-1-pod-2", &b), ("node-2-pod-1", &c)] {
        let o = s.jumbo_ping("node-1-pod-1", ip);
        assert!(
            o.status.success(),
            "9000-byte ping to {to}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    const SIZE: usize = 20_000_000;
    s.tcp("node-1-pod-1", "node-1-pod-2", &b, 5101, SIZE)
        .unwrap_or_else(|e| panic!("20 MB on one node: {e}"));
    s.tcp("node-1-pod-1", "node-2-pod-1", &c, 5102, SIZE)
        .unwrap_or_else(|e| panic!("20 MB across nodes: {e}"));
    s.tcp(
        "node-2-pod-1",
        "node-1-pod-1",
        &s.pod_ip("node-1-pod-1"),
        5103,
        SIZE,
    )
    .unwrap_or_else(|e| panic!("20 MB back across nodes: {e}"));
    // Through Vireo, in chains: fewer frames than 1450-byte packets would need, no chain
    // dropped, nothing refused by the kernel.
    for n in ["node-1", "node-2"] {
        let (k, kernel) = s.counters(n);
        let rx = k["rx"].as_u64().unwrap();
        assert!(rx > 2 * SIZE as u64 / 9000, "{n}: only {rx} packets");
        assert!(
            rx < 2 * SIZE as u64 / 1450 * 2,
            "{n}: {rx} packets: not jumbo"
        );
        for r in [
            "multi_buffer_too_long",
            "tx_ring_full",
            "handoff_multi_buffer",
        ] {
            assert_eq!(k["drops"][r], 0, "{n}: {r}");
        }
        assert_eq!(kernel["tx_invalid"], 0, "{n}: {kernel}");
        assert_eq!(kernel["rx_dropped"], 0, "{n}: {kernel}");
    }
    let name = s.0.clone();
    drop(s);
    assert!(netns_of(&name).is_empty(), "sandbox {name} left namespaces");
}
