//! The agent's local API: one JSON request per line on a Unix socket, one JSON reply per line.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"endpoint_add","interface":{…}}`,
//! `{"cmd":"endpoint_del","name":"…"}`, `{"cmd":"reload"}`, `{"cmd":"map_get","map":"…"}`,
//! `{"cmd":"policy_trace","src":{…},"dst":{…},"dport":{"port":80,"proto":6}}`,
//! `{"cmd":"policy_get"}`.
//! Replies: `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vireo_control::config::InterfaceConfig;

/// A request to the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Interfaces, workers, counters.
    Status,
    /// Attach a pod interface (and its endpoint) at runtime.
    EndpointAdd {
        /// The interface.
        interface: InterfaceConfig,
    },
    /// Detach an interface at runtime.
    EndpointDel {
        /// Its name.
        name: String,
    },
    /// Re-read the configuration file and apply the difference.
    Reload,
    /// One of the agent's tables: endpoints, ipcache, identities, nodes.
    MapGet {
        /// Which table.
        map: String,
    },
    /// What the policies in force decide for one flow, and why (`vireo policy trace`).
    PolicyTrace {
        /// Source.
        src: crate::policy::EndpointSpec,
        /// Destination.
        dst: crate::policy::EndpointSpec,
        /// Destination port and protocol.
        dport: crate::policy::PortProto,
    },
    /// The policies in force (`vireo policy get`).
    PolicyGet,
    /// Drop events since the last call (`vireo monitor`); the first call starts collecting,
    /// and collection stops when nobody has asked for a few seconds.
    Monitor {
        /// At most this many events.
        max: usize,
    },
}

/// A request with the channel its reply goes back on.
pub struct Call {
    pub req: Request,
    pub reply: Sender<Result<Value, String>>,
}

/// Starts serving `path`; requests go to `calls`. Removes a stale socket file first.
pub fn serve(path: &Path, calls: Sender<Call>) -> Result<PathBuf> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("api_socket {}: another agent is serving it", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("api_socket {}", path.display()))?;
    std::thread::Builder::new()
        .name("vireo-api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let calls = calls.clone();
                let _ = std::thread::Builder::new()
                    .name("vireo-api-conn".into())
                    .spawn(move || handle(conn, calls));
            }
        })?;
    Ok(path.to_owned())
}

fn handle(conn: UnixStream, calls: Sender<Call>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(req) => {
                let (tx, rx) = mpsc::channel();
                if calls.send(Call { req, reply: tx }).is_err() {
                    return;
                }
                match rx.recv_timeout(Duration::from_secs(60)) {
                    Ok(Ok(v)) => serde_json::json!({"ok": true, "result": v}),
                    Ok(Err(e)) => serde_json::json!({"ok": false, "error": e}),
                    Err(_) => serde_json::json!({"ok": false, "error": "the agent did not answer"}),
                }
            }
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

/// Sends one request to the agent at `path` and returns its result.
pub fn call(path: &Path, req: &Request) -> Result<Value> {
    let mut s = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the agent at {} (is `vireo agent` running?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(70)))?;
    writeln!(s, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).context("the agent's reply is not JSON")?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v["result"].clone())
    } else {
        Err(anyhow!(
            "{}",
            v["error"].as_str().unwrap_or("unknown error")
        ))
    }
}
