//! Agent restarts keep established connections (root only): long TCP streams between pods on
//! two nodes, both ways, through a ClusterIP from each node, and from outside the cluster
//! through a NodePort, keep going while
//! `vireo sandbox restart` restarts the agent of each node in turn; every byte is checked, the
//! new agents say they adopted the conntrack table, the flows' counters go on from where they
//! were, and the packet gap (a 100 Hz ping across the nodes) and the stop-to-ready times are
//! printed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A process in a namespace, killed on drop.
struct Proc {
    child: Child,
    what: String,
    /// Its stdout once [`Proc::first_line`] read from it.
    rest: Option<BufReader<std::process::ChildStdout>>,
}

impl Proc {
    fn start(netns: &str, args: &[&str], what: &str) -> Proc {
        Proc::start_out(netns, args, what, Stdio::piped())
    }

    /// With its stdout to `out` (a file, for a chatty process that must never block on a
    /// full pipe).
    fn start_out(netns: &str, args: &[&str], what: &str, out: Stdio) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        Proc {
            child,
            what: what.to_string(),
            rest: None,
        }
    }

    /// Reads the first line of its output (a receiver's "listening").
    fn first_line(&mut self) -> String {
        let out = self.child.stdout.take().expect("stdout");
        let mut r = BufReader::new(out);
        let mut l = String::new();
        let _ = r.read_line(&mut l);
        self.rest = Some(r);
        l
    }

    /// Waits at most `limit` for it to exit: (success, its output).
    fn finish(mut self, limit: Duration) -> (bool, String) {
        let t = Instant::now();
        let ok = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s.success();
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (ok, self.output())
    }

    /// Kills it and returns what it printed.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output()
    }

    fn output(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut s);
        }
        if let Some(r) = self.rest.as_mut() {
            let _ = r.read_to_string(&mut s);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let mut err = String::new();
            let _ = e.read_to_string(&mut err);
            if !err.trim().is_empty() {
                s.push_str(&format!("[{} stderr] {err}", self.what));
            }
        }
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Longest runs of lost replies in a `ping -i 0.01` output, in sequence numbers, longest first.
fn gaps(ping: &str, sent: u32) -> Vec<u32> {
    let mut seen: Vec<u32> = ping
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|x| x.split_whitespace().next()?.parse().ok())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    let mut runs = Vec::new();
    let mut last = 0;
    for &s in seen.iter().chain(std::iter::once(&(sent + 1))) {
        if s > last + 1 {
            runs.push(s - last - 1);
        }
        last = s;
    }
    runs.sort_unstable_by(|a, b| b.cmp(a));
    runs
}

/// The packets counted so far on `node` for the flow from `src` to `dst`:`dport`.
fn flow_packets(s: &Sandbox, node: &str, src: &str, dst: &str, dport: u16) -> u64 {
    s.json(&["map", "get", "ct", "--json", "--node", node])["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["src"] == src && e["dst"] == dst && e["dport"] == dport)
        .filter_map(|e| e["packets"].as_u64())
        .max()
        .unwrap_or(0)
}

const SIZE: usize = 40 << 20;
/// Bytes a second per stream: 40 MiB take about 13 s, across both restarts.
const RATE: usize = 3 << 20;
const STREAM: &str = "stream.py";

#[test]
fn established_streams_survive_an_agent_restart_on_each_node() {
    require_capabilities(&[]);
    let s = Sandbox::up("vr", &["--source", "manifests"]);
    let st = s.state();
    let pod = |name: &str| -> (String, String) {
        let p = st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no pod {name}"));
        (
            p["netns"].as_str().unwrap().to_string(),
            p["ip"].as_str().unwrap().to_string(),
        )
    };
    let helper = helper(STREAM);
    let helper = helper.to_str().unwrap();
    let node1_ip = st["nodes"][0]["ip"].as_str().unwrap().to_string();
    let underlay = st["underlay"].as_str().unwrap().to_string();

    // Receivers: two pods for the direct streams, every echo pod on its `http` port (8080) for
    // the ClusterIP and NodePort streams (whichever backend Maglev picks checks the bytes).
    let (a_ns, a_ip) = pod("node-1-pod-1");
    let (b_ns, b_ip) = pod("node-2-pod-1");
    let (c_ns, c_ip) = pod("node-1-pod-2");
    let (d_ns, _) = pod("node-2-pod-2");
    let (e_ns, _) = pod("node-1-pod-3");
    let (f_ns, _) = pod("node-2-pod-3");
    let mut receivers = Vec::new();
    for (ns, port, what) in [
        (b_ns.clone(), "7001", "recv node-2-pod-1"),
        (c_ns.clone(), "7002", "recv node-1-pod-2"),
    ] {
        receivers.push(Proc::start(
            &ns,
            &["python3", helper, "recv", port, "90"],
            what,
        ));
    }
    for name in [
        "echo-node-1-1",
        "echo-node-1-2",
        "echo-node-2-1",
        "echo-node-2-2",
    ] {
        let (ns, _) = pod(name);
        receivers.push(Proc::start(
            &ns,
            &["python3", helper, "recv", "8080", "90"],
            name,
        ));
    }
    for r in &mut receivers {
        let l = r.first_line();
        assert_eq!(l.trim(), "listening", "{}: {l}", r.what);
    }

    // 100 Hz across the nodes for 25 s.
    let ping_count = 2500;
    let ping_file = std::env::temp_dir().join(format!("vireo-restart-ping-{}", std::process::id()));
    let ping = Proc::start_out(
        &a_ns,
        &[
            "ping",
            "-i",
            "0.01",
            "-c",
            &ping_count.to_string(),
            "-W",
            "1",
            &b_ip,
        ],
        "ping",
        Stdio::from(std::fs::File::create(&ping_file).expect("ping output file")),
    );
    let (size, rate) = (SIZE.to_string(), RATE.to_string());
    let send = |ns: &str, host: &str, port: &str, id: &str| {
        Proc::start(
            ns,
            &["python3", helper, "send", host, port, id, &size, &rate],
            &format!("stream {id}"),
        )
    };
    let senders = vec![
        ("pod node-1 -> node-2", send(&a_ns, &b_ip, "7001", "1")),
        ("pod node-2 -> node-1", send(&d_ns, &c_ip, "7002", "2")),
        (
            "ClusterIP from node-1",
            send(&e_ns, "10.96.0.10", "80", "3"),
        ),
        (
            "ClusterIP from node-2",
            send(&f_ns, "10.96.0.10", "80", "4"),
        ),
        // From outside the cluster through node-1's uplink, to a backend on either node: the
        // uplink's program is held across the restart, and replaced only once the new agent
        // steers the NodePort (else the node's stack would reset the connection).
        (
            "NodePort of node-1 from the underlay",
            send(&underlay, &node1_ip, "30080", "5"),
        ),
    ];

    std::thread::sleep(Duration::from_secs(3));
    let before = flow_packets(&s, "node-1", &a_ip, &b_ip, 7001);
    assert!(
        before > 0,
        "the stream from node-1-pod-1 is tracked on node-1"
    );
    let mut restarts = Vec::new();
    for node in ["node-1", "node-2"] {
        let r = s.json(&["sandbox", "restart", node, "--json"]);
        eprintln!("restart {node}: {r}");
        assert_ne!(r["old_pid"], r["new_pid"], "{r}");
        let ct = &r["conntrack_state"];
        assert_eq!(ct["adopted"], true, "{node} did not adopt conntrack: {ct}");
        assert!(
            ct["entries"].as_u64().unwrap_or(0) >= 2,
            "{node} adopted too few entries: {ct}"
        );
        restarts.push(r);
        std::thread::sleep(Duration::from_secs(3));
    }
    let after = flow_packets(&s, "node-1", &a_ip, &b_ip, 7001);
    assert!(
        after > before,
        "the adopted flow's packet counter goes on from {before} (now {after})"
    );

    let mut failed = Vec::new();
    let mut lines = Vec::new();
    for (what, p) in senders {
        let (ok, out) = p.finish(Duration::from_secs(60));
        lines.push(format!("{what}: {}", out.trim()));
        if !ok {
            failed.push(what);
        }
    }
    let _ = ping.finish(Duration::from_secs(30));
    let ping_out = std::fs::read_to_string(&ping_file).unwrap_or_default();
    let _ = std::fs::remove_file(&ping_file);
    let recv_out: Vec<String> = receivers.into_iter().map(Proc::stop).collect();
    let g = gaps(&ping_out, ping_count);
    let stop_to_ready: Vec<u64> = restarts
        .iter()
        .map(|r| r["stop_to_ready_ms"].as_u64().unwrap_or(0))
        .collect();
    eprintln!(
        "restart results: stop to ready {stop_to_ready:?} ms; longest ping gaps (10 ms each) {:?} \
         = {:?} ms; streams:\n{}\nreceivers:\n{}",
        &g[..g.len().min(4)],
        g.iter().take(2).map(|n| n * 10).collect::<Vec<_>>(),
        lines.join("\n"),
        recv_out.join("")
    );
    assert!(
        failed.is_empty(),
        "streams broken by the restarts: {failed:?}\n{}",
        lines.join("\n")
    );
    assert!(
        g.first().copied().unwrap_or(0) < 100,
        "a gap of a second or more: {g:?}"
    );
    for r in &restarts {
        assert!(
            r["stop_to_ready_ms"].as_u64().unwrap() < 10_000,
            "a slow restart: {r}"
        );
    }
}

#[test]
fn gaps_are_the_longest_runs_of_missing_replies() {
    let out = "64 bytes from x: icmp_seq=1 ttl=63\n64 bytes from x: icmp_seq=2\n\
               64 bytes from x: icmp_seq=6\n64 bytes from x: icmp_seq=7\n";
    assert_eq!(gaps(out, 10), vec![3, 3]);
    assert_eq!(gaps("", 5), vec![5]);
}
