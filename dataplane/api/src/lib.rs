//! The agent's local API: one JSON request per line on a Unix socket, one JSON reply per line.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"endpoint_add","interface":{…}}`,
//! `{"cmd":"endpoint_del","name":"…"}`, `{"cmd":"reload"}`, `{"cmd":"map_get","map":"…"}`,
//! `{"cmd":"policy_trace","src":{…},"dst":{…},"dport":{"port":80,"proto":6}}`,
//! `{"cmd":"policy_get"}`, `{"cmd":"cni_add","endpoint":{…}}`, `{"cmd":"cni_del","container_id":"…"}`,
//! `{"cmd":"cni_get","container_id":"…"}`.
//! Replies: `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vireo_control::config::InterfaceConfig;
use vireo_control::trace::{EndpointSpec, PortProto};

pub mod flows;
pub mod render;

/// What went wrong talking to (or serving) the agent.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A system call on the socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The agent answered with an error, or not in the protocol.
    #[error("{0}")]
    Agent(String),
}

/// A result whose error is an [`ApiError`].
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ApiError {
    let what = what.into();
    move |source| ApiError::Io { what, source }
}

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
        src: EndpointSpec,
        /// Destination.
        dst: EndpointSpec,
        /// Destination port and protocol.
        dport: PortProto,
    },
    /// The policies in force (`vireo policy get`).
    PolicyGet,
    /// Events after a client's cursor (`vireo monitor`): the agent keeps its recent events
    /// numbered, so every client sees them all. The first call starts collecting, and
    /// collection stops when nobody has asked for a few seconds.
    Monitor {
        /// At most this many events.
        max: usize,
        /// The `cursor` of this client's last answer; none on its first call (only events
        /// from then on).
        #[serde(default)]
        after: Option<u64>,
        /// Collect new flows' policy verdicts too (`vireo monitor --type policy-verdict`),
        /// until nobody has asked for them for a few seconds.
        #[serde(default)]
        verdicts: bool,
        /// Trace forwarded packets too (`vireo monitor --type trace`), until nobody has asked
        /// for a few seconds.
        #[serde(default)]
        trace: Option<TraceAsk>,
    },
    /// Recent flows from the agent's flow ring (`vireo observe`), oldest first, with the
    /// cursor to follow from.
    Observe {
        /// Which flows.
        #[serde(flatten)]
        filter: flows::FlowFilter,
        /// At most this many (the newest of those that match).
        max: usize,
    },
    /// Register a pod wired by `vireo-cni` and attach its host veth; answered once attached
    /// (XDP and AF_XDP), with [`CniStatus`].
    CniAdd {
        /// The pod's endpoint.
        endpoint: CniEndpoint,
    },
    /// Detach and forget a `vireo-cni` registration; succeeds for an unknown container.
    CniDel {
        /// The runtime's container id.
        container_id: String,
    },
    /// A `vireo-cni` registration and whether it is attached ([`CniStatus`], or null).
    CniGet {
        /// The runtime's container id.
        container_id: String,
    },
}

/// What `vireo monitor --type trace` traces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceAsk {
    /// Every `N`th forwarded packet of each worker (1: every one).
    pub sample: u32,
    /// Only packets to or from this pod (`namespace/name`).
    #[serde(default)]
    pub pod: Option<String>,
    /// Only packets to or from this endpoint (its id in `vireo map get endpoints`).
    #[serde(default)]
    pub endpoint: Option<u16>,
}

/// A pod wired by `vireo-cni`, as it registers it with the agent (and as the agent keeps it,
/// one JSON file per container in its run directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniEndpoint {
    /// The runtime's container id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The pod's network namespace (`CNI_NETNS`).
    pub netns: String,
    /// The interface inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// The host side of the veth, in the agent's namespace.
    pub host_ifname: String,
    /// The pod's address.
    pub ip: std::net::Ipv4Addr,
    /// The pod side's MAC (`aa:bb:…`).
    pub mac: String,
    /// `K8S_POD_NAMESPACE`, when the runtime gave it.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`, when the runtime gave it.
    #[serde(default)]
    pub pod_name: Option<String>,
}

impl CniEndpoint {
    /// The file a registration is kept in under `dir` (container ids are checked by
    /// [`valid_container_id`] first).
    pub fn file(dir: &Path, container_id: &str) -> PathBuf {
        dir.join(format!("{container_id}.json"))
    }
}

/// Whether `id` is a container id the CNI spec allows: non-empty, alphanumerics, `_`, `.` and
/// `-`, starting with an alphanumeric (so it is also a safe file name).
pub fn valid_container_id(id: &str) -> bool {
    id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.len() <= 255
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Where an agent whose API socket is `socket` keeps its `vireo-cni` registrations: a
/// directory next to the socket named after it (`/run/vireo/vireo.sock` →
/// `/run/vireo/vireo.cni.d`).
pub fn cni_registry_dir(socket: &Path) -> PathBuf {
    let stem = socket
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "vireo".into());
    socket.with_file_name(format!("{stem}.cni.d"))
}

/// The agent's answer to [`Request::CniAdd`] and [`Request::CniGet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniStatus {
    /// The registration.
    pub endpoint: CniEndpoint,
    /// Whether its host veth is attached (XDP program and AF_XDP sockets).
    pub attached: bool,
    /// The interface slot, when attached.
    pub slot: Option<u16>,
    /// The endpoint's identity (5, `init`, until the Pod is in the source's view).
    pub identity: Option<u32>,
}

/// A request with the channel its reply goes back on.
pub struct Call {
    /// The request.
    pub req: Request,
    /// Where its answer goes: a value, or an error message for the client.
    pub reply: Sender<Result<Value, String>>,
}

/// Starts serving `path`; requests go to `calls`. Removes a stale socket file first.
pub fn serve(path: &Path, calls: Sender<Call>) -> Result<PathBuf> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ApiError::Agent(format!(
                "api_socket {}: another agent is serving it",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(io(format!("removing stale {}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io(format!("api_socket {}", path.display())))?;
    // Root only: the socket can attach interfaces and read every table.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io(format!("api_socket {}: chmod", path.display())))?;
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
        })
        .map_err(io("starting the API thread"))?;
    Ok(path.to_owned())
}

/// The API socket's mode: owner (root) only.
pub const SOCKET_MODE: u32 = 0o600;

/// The longest request line the agent reads; a longer one is answered with an error and the
/// connection closed.
pub const MAX_REQUEST: u64 = 1 << 20;

/// One connection, on its own thread: a client that says nothing blocks only itself (and is
/// dropped after a read timeout).
fn handle(conn: UnixStream, calls: Sender<Call>) {
    handle_with(conn, calls, IO_TIMEOUT)
}

/// How long a connection may wait for a request, or for its client to take an answer: a
/// client that stops reading (a stuck `vireo monitor` or `vireo observe --follow`) holds
/// only its own thread, and only this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn handle_with(conn: UnixStream, calls: Sender<Call>, timeout: Duration) {
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut buf = Vec::new();
        match (&mut reader)
            .take(MAX_REQUEST + 1)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.len() as u64 > MAX_REQUEST {
            tracing::warn!(
                limit = MAX_REQUEST,
                "API request over the limit; connection closed"
            );
            let e = format!("bad request: longer than {MAX_REQUEST} bytes");
            let _ = writeln!(out, "{}", serde_json::json!({"ok": false, "error": e}));
            return;
        }
        let line = String::from_utf8_lossy(&buf);
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => {
                tracing::warn!("bad API request: {e}");
                serde_json::json!({"ok": false, "error": format!("bad request: {e}")})
            }
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
    let mut s = UnixStream::connect(path).map_err(io(format!(
        "connecting to the agent at {} (is `vireo agent` running?)",
        path.display()
    )))?;
    let talk = io(format!("talking to the agent at {}", path.display()));
    let text = serde_json::to_string(req).map_err(|e| ApiError::Agent(e.to_string()))?;
    let mut line = String::new();
    s.set_read_timeout(Some(Duration::from_secs(70)))
        .and_then(|()| writeln!(s, "{text}"))
        .and_then(|()| BufReader::new(&s).read_line(&mut line))
        .map_err(talk)?;
    let v: Value = serde_json::from_str(&line)
        .map_err(|e| ApiError::Agent(format!("the agent's reply is not JSON: {e}")))?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v["result"].clone())
    } else {
        Err(ApiError::Agent(
            v["error"].as_str().unwrap_or("unknown error").to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_control::trace::parse_dport;

    #[test]
    fn requests_round_trip() {
        let req = Request::PolicyTrace {
            src: EndpointSpec::parse_pod("x/a").unwrap(),
            dst: EndpointSpec::parse_labels("reserved:world", None).unwrap(),
            dport: parse_dport("53/udp").unwrap(),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.contains(r#""cmd":"policy_trace""#), "{text}");
        let back: Request = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        let get: Request = serde_json::from_str(r#"{"cmd":"policy_get"}"#).unwrap();
        assert!(matches!(get, Request::PolicyGet));
    }

    #[test]
    fn cni_requests_and_names() {
        let ep = CniEndpoint {
            container_id: "abc-1".into(),
            netns: "/var/run/netns/p".into(),
            ifname: "eth0".into(),
            host_ifname: "lxc01234567".into(),
            ip: "10.244.1.10".parse().unwrap(),
            mac: "0a:58:0a:f4:01:0a".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("p".into()),
        };
        let text = serde_json::to_string(&Request::CniAdd {
            endpoint: ep.clone(),
        })
        .unwrap();
        assert!(text.contains(r#""cmd":"cni_add""#), "{text}");
        match serde_json::from_str::<Request>(&text).unwrap() {
            Request::CniAdd { endpoint } => assert_eq!(endpoint, ep),
            r => panic!("{r:?}"),
        }
        let del: Request = serde_json::from_str(r#"{"cmd":"cni_del","container_id":"x"}"#).unwrap();
        assert!(matches!(del, Request::CniDel { container_id } if container_id == "x"));
        assert!(valid_container_id("abc_1.2-x"));
        for bad in ["", "../x", "a/b", "-a", "a b"] {
            assert!(!valid_container_id(bad), "{bad:?}");
        }
        assert_eq!(
            cni_registry_dir(Path::new("/run/vireo/vireo.sock")),
            Path::new("/run/vireo/vireo.cni.d")
        );
    }

    #[test]
    fn a_served_socket_answers_and_reports_errors() {
        let dir = std::env::temp_dir().join(format!("vireo-api-test-{}", std::process::id()));
        let path = dir.join("api.sock");
        let (tx, rx) = mpsc::channel::<Call>();
        serve(&path, tx).unwrap();
        std::thread::spawn(move || {
            for c in rx {
                let r = match c.req {
                    Request::Status => Ok(serde_json::json!({"node": "n1"})),
                    _ => Err("not here".to_string()),
                };
                let _ = c.reply.send(r);
            }
        });
        assert_eq!(call(&path, &Request::Status).unwrap()["node"], "n1");
        let e = call(&path, &Request::Reload).unwrap_err();
        assert_eq!(e.to_string(), "not here");
        // Root only.
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        // A client that connects and says nothing does not hold up another.
        let _silent = UnixStream::connect(&path).unwrap();
        assert_eq!(call(&path, &Request::Status).unwrap()["node"], "n1");
        let ask = |text: &[u8]| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // (The agent may close before reading all of an oversized request.)
            let _ = s.write_all(text);
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            serde_json::from_str::<Value>(&line).unwrap()
        };
        // Malformed and oversized requests get an error answer; the agent keeps serving.
        let bad = ask(b"{\"cmd\":\"no_such\"}\n");
        assert_eq!(bad["ok"], false);
        assert!(
            bad["error"].as_str().unwrap().starts_with("bad request"),
            "{bad}"
        );
        let mut big = vec![b'x'; (MAX_REQUEST + 10) as usize];
        big.push(b'\n');
        let over = ask(&big);
        assert!(
            over["error"].as_str().unwrap().contains("longer than"),
            "{over}"
        );
        assert_eq!(call(&path, &Request::Status).unwrap()["node"], "n1");
        // A second agent on the same socket is refused.
        let (tx2, _rx2) = mpsc::channel::<Call>();
        assert!(serve(&path, tx2)
            .unwrap_err()
            .to_string()
            .contains("another agent"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_client_that_stops_reading_is_dropped_and_blocks_nobody() {
        let (tx, rx) = mpsc::channel::<Call>();
        // Big answers: the stuck client's socket fills after a few.
        std::thread::spawn(move || {
            for c in rx {
                let _ = c
                    .reply
                    .send(Ok(serde_json::json!({"pad": "x".repeat(256 << 10)})));
            }
        });
        let (stuck, server_end) = UnixStream::pair().unwrap();
        let calls = tx.clone();
        let served =
            std::thread::spawn(move || handle_with(server_end, calls, Duration::from_millis(300)));
        // Another client is answered meanwhile.
        let (mut other, other_end) = UnixStream::pair().unwrap();
        std::thread::spawn(move || handle_with(other_end, tx, Duration::from_secs(5)));
        let mut s = stuck.try_clone().unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let t = std::time::Instant::now();
        let mut wrote = 0;
        // The stuck client asks and never reads: the server's write times out, it closes
        // the connection, and the client's next writes fail (without the server's write
        // timeout they would block until this client's own 20 s timeout).
        let failed = loop {
            match writeln!(s, "{{\"cmd\":\"status\"}}") {
                Ok(()) => wrote += 1,
                Err(e) => break e,
            }
            if wrote == 1 {
                writeln!(other, "{{\"cmd\":\"status\"}}").unwrap();
                let mut line = String::new();
                BufReader::new(&other).read_line(&mut line).unwrap();
                assert!(line.contains("\"ok\":true"), "the other client is answered");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            matches!(
                failed.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{failed} after {wrote} requests"
        );
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        served.join().unwrap();
    }

    #[test]
    fn monitor_and_observe_requests_round_trip() {
        let m: Request = serde_json::from_str(r#"{"cmd":"monitor","max":5}"#).unwrap();
        assert!(matches!(
            m,
            Request::Monitor {
                max: 5,
                after: None,
                verdicts: false,
                trace: None
            }
        ));
        let m: Request = serde_json::from_str(r#"{"cmd":"monitor","max":5,"after":12}"#).unwrap();
        assert!(matches!(
            m,
            Request::Monitor {
                after: Some(12),
                ..
            }
        ));
        let o = Request::Observe {
            filter: flows::FlowFilter {
                since_ms: Some(300_000),
                pod: Some("x/a".into()),
                verdict: Some("DROPPED".into()),
                after: Some(7),
            },
            max: 100,
        };
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"observe","since_ms":300000,"pod":"x/a","verdict":"DROPPED","after":7,"max":100}"#
        );
        match serde_json::from_str::<Request>(&text).unwrap() {
            Request::Observe { filter, max } => {
                assert_eq!((filter.after, max), (Some(7), 100));
            }
            r => panic!("{r:?}"),
        }
    }
}
