//! Same-node forwarding through the agent, over namespaces this test makes (root only).

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

/// The tests share two cores and a CPU-pinned worker: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn pods_ping_and_stream_through_the_agent_and_not_without_it() {
    require_capabilities(&[]);
    let _g = serial();
    let node = Node::new("a", 2);
    let agent = node.agent(2);
    let st = agent.status();
    let ifs = st["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 2);
    for i in ifs {
        assert!(
            matches!(i["xdp_mode"].as_str(), Some("native" | "generic")),
            "{i}"
        );
        assert_eq!(i["af_xdp_mode"], "copy", "veth has no zero-copy: {i}");
    }

    assert!(node.ping(0, 1, 3), "ping a->b; log:\n{}", agent.log_text());
    assert!(node.ping(1, 0, 3), "ping b->a");
    let before = agent.status();
    node.tcp_transfer(0, 1, 64 << 20)
        .unwrap_or_else(|e| panic!("64 MiB transfer: {e}\nlog:\n{}", agent.log_text()));
    let after = agent.status();
    // The traffic went through Vireo: at least 64 MiB / 1500 B frames crossed the workers.
    let rx = after["counters"]["rx"].as_u64().unwrap() - before["counters"]["rx"].as_u64().unwrap();
    let tx = after["counters"]["tx"].as_u64().unwrap() - before["counters"]["tx"].as_u64().unwrap();
    assert!(rx > (64 << 20) / 1500, "only {rx} frames through the agent");
    assert!(tx > (64 << 20) / 1500, "only {tx} frames sent by the agent");
    let steered: u64 = after["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["xdp"]["steered"].as_u64().unwrap())
        .sum();
    assert!(steered >= rx, "XDP steered {steered} < worker rx {rx}");

    // Stopped cleanly: programs gone, pods cut off.
    assert!(agent.stop().success(), "agent exit status");
    assert_eq!(node.xdp_attached(), 0, "XDP left after SIGTERM");
    assert!(
        !node.ping(0, 1, 2),
        "pods reach each other without the agent"
    );

    // And back (the kernel frees the queues with a delay: bind retries EBUSY).
    let agent = node.agent(2);
    assert!(
        node.ping(0, 1, 2),
        "ping after restart; log:\n{}",
        agent.log_text()
    );
}

#[test]
fn kill_9_leaves_no_xdp_program_within_2s() {
    require_capabilities(&[]);
    let _g = serial();
    let node = Node::new("k", 2);
    let agent = node.agent(2);
    assert_eq!(node.xdp_attached(), 2);
    assert!(node.ping(0, 1, 1));
    agent.kill9();
    let t = Instant::now();
    while node.xdp_attached() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "XDP still attached 2 s after kill -9"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !node.ping(0, 1, 1),
        "pods reach each other after the agent died"
    );
}

#[test]
fn malformed_frames_are_counted_and_forwarding_goes_on() {
    require_capabilities(&[]);
    let _g = serial();
    let node = Node::new("m", 2);
    let agent = node.agent(2);
    assert!(node.ping(0, 1, 1));
    let reasons = [
        "truncated_ip",
        "bad_ihl",
        "ip_options",
        "bad_total_length",
        "bad_ip_version",
        "malformed_arp",
    ];
    let before: Vec<u64> = reasons.iter().map(|r| agent.drop_count(r)).collect();
    let gw_mac = node.ns.must(&[
        "cat",
        &format!("/sys/class/net/{}/address", node.pods[0].host_if),
    ]);
    let script = helper("inject.py");
    let p = &node.pods[0];
    p.ns.must(&[
        "python3",
        script.to_str().unwrap(),
        "eth0",
        &p.mac,
        gw_mac.trim(),
        &p.ip,
        &node.pods[1].ip,
        "25",
    ]);
    let t = Instant::now();
    loop {
        let got: Vec<u64> = reasons.iter().map(|r| agent.drop_count(r)).collect();
        let deltas: Vec<u64> = got.iter().zip(&before).map(|(a, b)| a - b).collect();
        if deltas.iter().all(|d| *d == 25) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "drop deltas {reasons:?} = {deltas:?}, want 25 each"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        node.ping(0, 1, 3),
        "forwarding stopped after malformed frames"
    );
    node.tcp_transfer(0, 1, 1 << 20)
        .expect("TCP after malformed frames");
}

/// XDP counters of the interface named `name`.
fn xdp_counters(a: &Agent, name: &str) -> (u64, u64) {
    let st = a.status();
    let i = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in status"))
        .clone();
    (
        i["xdp"]["steered"].as_u64().unwrap(),
        i["xdp"]["passed"].as_u64().unwrap(),
    )
}

#[test]
fn uplink_steers_only_vxlan_and_the_host_keeps_its_traffic() {
    require_capabilities(&[]);
    let _g = serial();
    let mut node = Node::new("u", 2);
    node.add_uplink();
    let agent = node.agent(2);
    let (up, remote) = node.uplink.as_ref().map(|(n, r)| (n.clone(), r)).unwrap();
    let st = agent.status();
    assert!(st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"] == up.as_str() && i["role"] == "uplink"));

    // Host traffic to the node's own address stays in the kernel and works.
    let (s0, p0) = xdp_counters(&agent, &up);
    let ping = remote.exec(&[
        "ping",
        "-c",
        "5",
        "-i",
        "0.1",
        "-W",
        "1",
        "-q",
        "192.168.77.2",
    ]);
    assert!(
        ping.status.success(),
        "host lost its own traffic with the agent running"
    );
    let (s1, p1) = xdp_counters(&agent, &up);
    assert_eq!(s1, s0, "host ICMP was steered into userspace");
    assert!(p1 >= p0 + 5, "passed {p0} -> {p1}");

    // UDP to the VXLAN port goes to userspace; to another port it does not.
    let send = |port: &str| {
        let code = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor _ in range(20): s.sendto(b'x'*50,('192.168.77.2',{port}))"
        );
        remote.must(&["python3", "-c", &code]);
    };
    send("8472");
    send("9999");
    let t = Instant::now();
    loop {
        let (s2, _) = xdp_counters(&agent, &up);
        if s2 >= s1 + 20 {
            assert!(
                s2 < s1 + 40,
                "UDP to another port was steered too ({} frames)",
                s2 - s1
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "VXLAN-port UDP not steered: {s1} -> {s2}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Pods still work beside it.
    assert!(node.ping(0, 1, 1));
}

/// The conntrack entries (`vireo map get ct --json`) that name `ip` as source or destination.
fn ct_entries_of(a: &Agent, ip: &str) -> usize {
    let o = a.cli(&["map", "get", "ct", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("ct JSON");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["src"] == ip || e["dst"] == ip)
        .count()
}

#[test]
fn a_detached_endpoint_takes_its_flows_and_a_pod_given_its_address_inherits_none() {
    require_capabilities(&[]);
    let _g = serial();
    let node = Node::new("f", 3);
    let agent = node.agent(3);
    assert!(node.ping(0, 1, 2), "ping a->b; log:\n{}", agent.log_text());
    assert!(node.ping(0, 2, 2), "ping a->c");
    let (b, c) = (&node.pods[1], &node.pods[2]);
    assert!(ct_entries_of(&agent, &b.ip) > 0, "b's flow tracked");
    assert!(ct_entries_of(&agent, &c.ip) > 0, "c's flow tracked");
    agent.endpoint_del(b);
    assert_eq!(ct_entries_of(&agent, &b.ip), 0, "b's flows flushed with it");
    assert!(ct_entries_of(&agent, &c.ip) > 0, "c's flows untouched");
    // A pod that gets b's address (here: b again, attached anew) starts with no flows.
    agent.endpoint_add(b);
    assert_eq!(ct_entries_of(&agent, &b.ip), 0, "no entry inherited");
    assert!(node.ping(0, 1, 2), "the new pod is reachable");
    assert!(ct_entries_of(&agent, &b.ip) > 0);
}

/// `GET http://{addr}{path}` from inside the node namespace: (status code, body).
fn http_get(node: &Node, addr: &str, path: &str) -> (u16, String) {
    let args = curl_get(&format!("http://{addr}{path}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl_answer(&node.ns.exec(&args).stdout)
}

/// The value of the sample `series` (name and labels as exposed) in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_pass_promtool_and_probes_and_json_logs_tell_the_truth() {
    require_capabilities(&["curl", "promtool"]);
    let _g = serial();
    let node = Node::new("p", 2);
    let cfg = node.config(2);
    let mut y = std::fs::read_to_string(&cfg).unwrap();
    y += "metrics: {address: \"127.0.0.1:0\"}\nlog: {format: json, level: \"warn,vireo::agent=info\"}\n";
    std::fs::write(&cfg, y).unwrap();
    let agent = node.agent_with(&cfg);
    let st = agent.status();
    let addr = st["metrics_address"]
        .as_str()
        .expect("metrics_address")
        .to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    assert_eq!(st["ready"], true, "{}", st["not_ready"]);
    assert_eq!(http_get(&node, &addr, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(&node, &addr, "/readyz"), (200, "ok\n".into()));
    assert_eq!(http_get(&node, &addr, "/nothing").0, 404);

    assert!(node.ping(0, 1, 3), "ping; log:\n{}", agent.log_text());
    // The kernel's per-socket counts are read once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, text) = http_get(&node, &addr, "/metrics");
    assert_eq!(code, 200, "{text}");
    let path = std::env::temp_dir().join(format!("{}-metrics.txt", node.prefix));
    std::fs::write(&path, &text).unwrap();
    let check = run(&[
        "sh",
        "-c",
        &format!("promtool check metrics < {}", path.display()),
    ]);
    let _ = std::fs::remove_file(&path);
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // What was counted is what the agent's status says, and the pings went through.
    let rx = sample(&text, "vireo_packets_total{worker=\"0\",direction=\"rx\"}").unwrap();
    let bytes = sample(&text, "vireo_bytes_total{worker=\"0\",direction=\"tx\"}").unwrap();
    assert!(
        rx >= 6.0 && bytes >= 6.0 * 98.0,
        "rx {rx}, tx bytes {bytes}"
    );
    let (a, b) = (&node.pods[0].host_if, &node.pods[1].host_if);
    for i in [a, b] {
        let steered = sample(
            &text,
            &format!("vireo_xdp_steered_total{{interface=\"{i}\"}}"),
        );
        assert!(steered.unwrap_or(0.0) >= 3.0, "{i}: {steered:?}");
        let series =
            format!("vireo_afxdp_rx_ring_full_total{{worker=\"0\",interface=\"{i}\",queue=\"0\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    assert_eq!(
        sample(
            &text,
            "vireo_drop_count_total{worker=\"0\",reason=\"ct_full\"}"
        ),
        Some(0.0)
    );
    assert!(sample(&text, "vireo_conntrack_inserts_total").unwrap() >= 1.0);
    assert!(sample(&text, "vireo_conntrack_entries{protocol=\"other\"}").unwrap() >= 1.0);
    assert_eq!(sample(&text, "vireo_agent_ready"), Some(1.0));
    // The ping's flow (request and first reply) reached the agent's ring, none lost.
    assert!(sample(&text, "vireo_flows_recorded_total").unwrap() >= 2.0);
    assert_eq!(sample(&text, "vireo_flows_lost_total"), Some(0.0));

    // Every log line is one JSON object; info shows for vireo::agent only (warn elsewhere).
    let log = agent.log_text();
    for l in log.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["fields"].is_object(), "{l}");
        let target = v["target"].as_str().unwrap_or_default();
        if v["level"] == "INFO" {
            assert!(target.starts_with("vireo::agent"), "{l}");
        }
    }
    assert!(log.contains("serving /metrics"), "{log}");
    assert!(log.contains("vireo agent running"), "{log}");
}
