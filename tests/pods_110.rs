//! A node at the Kubernetes default of 110 pods: pods attached and detached at runtime through
//! the API with no restart and no disturbance to other flows, no UMEM frame leaked, and the cost
//! of an idle socket measured (root only).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PODS: usize = 110;

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU share of an idle agent over `secs`.
fn idle_cpu(pid: u32, secs: u64) -> f64 {
    let c0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(secs));
    (cpu_seconds(pid) - c0) / secs as f64
}

fn sockets(st: &Value) -> u64 {
    st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["sockets"].as_u64().unwrap())
        .sum()
}

/// With no traffic, every frame is free or in a fill ring: none leaked.
fn assert_no_leak(a: &Agent) {
    let t = Instant::now();
    loop {
        let st = a.status();
        let w = &st["workers"][0];
        let total = w["umem_frames"].as_u64().unwrap();
        let f = &w["counters"]["frames"];
        let (free, fill, tx) = (
            f["free"].as_u64().unwrap(),
            f["in_fill"].as_u64().unwrap(),
            f["in_tx"].as_u64().unwrap(),
        );
        if free + fill == total && tx == 0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "frames: free {free} + fill {fill} + tx {tx} != {total}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_hundred_and_ten_pods_come_and_go_at_runtime() {
    require_capabilities(&[]);
    let mut node = Node::new("c", 2);
    let agent = node.agent(2);
    let pid = agent.pid();
    std::thread::sleep(Duration::from_millis(500));
    let (rss2, cpu2) = (rss_kib(pid), idle_cpu(pid, 3));
    let s2 = sockets(&agent.status());

    for _ in 2..PODS {
        node.add_pod();
    }
    let t = Instant::now();
    for p in &node.pods[2..] {
        agent.endpoint_add(p);
    }
    let add_ms = t.elapsed().as_millis() as f64 / (PODS - 2) as f64;
    let st = agent.status();
    assert_eq!(st["interfaces"].as_array().unwrap().len(), PODS);
    let s110 = sockets(&st);
    assert!(s110 >= PODS as u64, "{s110} sockets for {PODS} pods");
    assert_eq!(node.xdp_attached(), PODS);
    assert!(
        node.ping(0, PODS - 1, 2),
        "first -> last pod; status:\n{}",
        agent.status()
    );
    assert!(node.ping(PODS - 1, 0, 2), "last -> first pod");
    assert!(node.ping(57, 3, 1), "middle pods");

    std::thread::sleep(Duration::from_millis(500));
    let (rss110, cpu110) = (rss_kib(pid), idle_cpu(pid, 3));
    let extra = (s110 - s2) as f64;
    println!(
        "IDLE-COST sockets {s2} -> {s110}: RSS {rss2} -> {rss110} KiB ({:.1} KiB/socket), idle CPU {:.2}% -> {:.2}% ({:.4}%/socket), attach {add_ms:.1} ms/pod, fill base {} frames/socket",
        (rss110 as f64 - rss2 as f64) / extra,
        cpu2 * 100.0,
        cpu110 * 100.0,
        (cpu110 - cpu2) * 100.0 / extra,
        st["workers"][0]["fill_base"]
    );

    // A flow between pods 0 and 1 keeps going while 20 other pods leave and come back.
    let flow = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.pods[0].ns.0,
            "ping",
            "-c",
            "150",
            "-i",
            "0.02",
            "-W",
            "1",
            "-q",
            &node.pods[1].ip,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping");
    for round in 0..2 {
        for p in &node.pods[40 + round * 10..60 + round * 10] {
            agent.endpoint_del(p);
        }
        assert!(
            !node.ping(45 + round * 10, 0, 1),
            "a detached pod still forwards"
        );
        for p in &node.pods[40 + round * 10..60 + round * 10] {
            agent.endpoint_add(p);
        }
    }
    let out = flow.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "the 0->1 flow was disturbed:\n{text}"
    );
    assert!(node.ping(45, 0, 1), "a re-attached pod forwards");

    // A pod deleted without an API call (its namespace goes, its veth with it) is detached.
    let gone = node.pods.pop().expect("pod");
    drop(gone);
    let t = Instant::now();
    while agent.status()["interfaces"].as_array().unwrap().len() != PODS - 1 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "vanished interface still attached"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(node.ping(0, 1, 1));
    assert_no_leak(&agent);
    assert!(agent.stop().success());
    assert_eq!(node.xdp_attached(), 0);
}
