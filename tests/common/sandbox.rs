//! A `vireo sandbox` of the test's own (the end-to-end tests that drive the sandbox command
//! rather than build their own nodes): named after a tag and the test process, always torn down.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{must, VIREO};

/// A sandbox named `<tag><pid>`, brought down (with everything it made) on drop.
pub struct Sandbox(pub String);

impl Sandbox {
    /// `vireo sandbox up ARGS` for a sandbox named `tag` + this process's id.
    pub fn up(tag: &str, args: &[&str]) -> Sandbox {
        let s = Sandbox(format!("{tag}{}", std::process::id() % 100000));
        let mut a = vec!["sandbox", "up"];
        a.extend_from_slice(args);
        let o = s.vireo(&a);
        assert!(
            o.status.success(),
            "sandbox up: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        s
    }

    /// `vireo ARGS` against this sandbox (named through VIREO_SANDBOX, so that arguments after
    /// `--` stay the command's own), with every connectivity check enabled.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(VIREO);
        c.args(args)
            .env("VIREO_SANDBOX", &self.0)
            .env_remove("VIREO_CONNECTIVITY_CHECKS");
        c
    }

    pub fn vireo(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running vireo")
    }

    /// Starts `vireo ARGS` in the background, its output read as it comes (a chatty command
    /// never blocks on a full pipe).
    pub fn spawn(&self, args: &[&str]) -> Background {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting vireo");
        let read = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut v);
                }
                v
            })
        };
        let out = read(child.stdout.take().map(|o| Box::new(o) as _));
        let err = read(child.stderr.take().map(|o| Box::new(o) as _));
        Background {
            child,
            out: Some(out),
            err: Some(err),
        }
    }

    /// `vireo ARGS`, which must succeed, its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let o = self.vireo(args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).expect("JSON")
    }

    /// The sandbox's state file (nodes, pods' namespaces and addresses).
    pub fn state(&self) -> Value {
        let p = format!("/run/vireo/sandbox-{}/state.json", self.0);
        serde_json::from_str(&std::fs::read_to_string(p).expect("state.json")).expect("JSON")
    }

    /// The address of a pod, `NS/NAME` or a name in `default`.
    pub fn pod_ip(&self, pod: &str) -> String {
        let pod = if pod.contains('/') {
            pod.to_string()
        } else {
            format!("default/{pod}")
        };
        let st = self.json(&["sandbox", "status", "--json"]);
        st["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["pod"] == pod.as_str())
            .and_then(|p| p["ip"].as_str())
            .unwrap_or_else(|| panic!("no pod {pod} in {st}"))
            .to_string()
    }

    /// Three pings from a pod, each answered within 2 s.
    pub fn ping(&self, from: &str, ip: &str) {
        let o = self.vireo(&[
            "sandbox", "exec", from, "--", "ping", "-c", "3", "-i", "0.2", "-W", "2", ip,
        ]);
        assert!(
            o.status.success(),
            "ping {from} -> {ip}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }

    /// The network namespaces this sandbox made.
    pub fn netns(&self) -> Vec<String> {
        netns_of(&self.0)
    }
}

/// A command started by [`Sandbox::spawn`], killed on drop.
pub struct Background {
    child: Child,
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
    err: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    /// Waits for it to exit (bounded by its own `--seconds`), killing it after `limit`; its
    /// stdout. It must have succeeded.
    pub fn finish(mut self, limit: Duration) -> Vec<u8> {
        let end = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break Some(s);
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let joined = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        let (out, err) = (joined(self.out.take()), joined(self.err.take()));
        assert!(
            status.is_some_and(|s| s.success()),
            "background vireo {}: {}",
            match status {
                Some(s) => format!("failed ({s})"),
                None => format!("still running after {limit:?}: killed"),
            },
            String::from_utf8_lossy(&err)
        );
        out
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.vireo(&["sandbox", "down"]);
    }
}

/// The network namespaces of the sandbox called `name`.
pub fn netns_of(name: &str) -> Vec<String> {
    must(&["ip", "netns", "list"])
        .lines()
        .filter_map(|x| x.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{name}-")))
        .map(String::from)
        .collect()
}
