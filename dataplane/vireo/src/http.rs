//! The agent's metrics and health listener: `GET /metrics` (Prometheus text format),
//! `GET /healthz` and `GET /readyz` (200 `ok`, or 503 with the reasons, one per line), on a
//! thread of its own. Every answer comes from the agent's loop; an agent that does not answer
//! within [`ANSWER_WITHIN`] gets a 503 (so a stuck agent fails its liveness probe).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

/// How long a request waits for the agent's loop.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/metrics`.
    Metrics,
    /// `/healthz`: the agent's loop answers and its workers run.
    Health,
    /// `/readyz`: [`crate::agent`]'s readiness.
    Ready,
}

/// An answer: the status code and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body (text).
    pub body: String,
}

impl Answer {
    /// 200 with `ok`, or 503 with the reasons.
    pub fn check(problems: &[String]) -> Answer {
        if problems.is_empty() {
            Answer {
                status: 200,
                body: "ok\n".into(),
            }
        } else {
            Answer {
                status: 503,
                body: problems.iter().map(|p| format!("{p}\n")).collect(),
            }
        }
    }
}

/// A probe and where its answer goes.
pub type Asked = (Probe, mpsc::SyncSender<Answer>);

/// The running listener; stops on drop.
pub struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listens on `addr` and hands each probe to `ask` (which passes it to the agent's loop;
    /// false when the loop is gone).
    pub fn start(addr: SocketAddr, ask: impl Fn(Asked) -> bool + Send + 'static) -> Result<Self> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("listening for metrics on {addr}"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .context("the metrics listener has no IP address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vireo-metrics".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(req)) => respond(req, &ask),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!("metrics listener: {e}");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })
            .context("starting the metrics listener")?;
        Ok(Listener {
            addr: bound,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port chosen when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(req: tiny_http::Request, ask: &dyn Fn(Asked) -> bool) {
    let path = req.url().split('?').next().unwrap_or_default();
    let probe = match path {
        "/metrics" => Some(Probe::Metrics),
        "/healthz" => Some(Probe::Health),
        "/readyz" => Some(Probe::Ready),
        _ => None,
    };
    let get = matches!(
        req.method(),
        tiny_http::Method::Get | tiny_http::Method::Head
    );
    let answer = match probe {
        None => Answer {
            status: 404,
            body: "not found: /metrics, /healthz or /readyz\n".into(),
        },
        Some(_) if !get => Answer {
            status: 405,
            body: "only GET\n".into(),
        },
        Some(p) => {
            let (tx, rx) = mpsc::sync_channel(1);
            if ask((p, tx)) {
                rx.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| Answer {
                    status: 503,
                    body: format!(
                        "the agent did not answer within {} s\n",
                        ANSWER_WITHIN.as_secs()
                    ),
                })
            } else {
                Answer {
                    status: 503,
                    body: "the agent is stopping\n".into(),
                }
            }
        }
    };
    let content_type = if probe == Some(Probe::Metrics) && answer.status == 200 {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
        .expect("a valid header");
    let resp = tiny_http::Response::from_string(answer.body)
        .with_status_code(answer.status)
        .with_header(header);
    if let Err(e) = req.respond(resp) {
        tracing::debug!("metrics listener: answering: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn probes_are_answered_by_the_loop_and_the_rest_refused() {
        let (tx, rx) = mpsc::channel::<Asked>();
        let l =
            Listener::start("127.0.0.1:0".parse().unwrap(), move |a| tx.send(a).is_ok()).unwrap();
        assert_ne!(l.addr().port(), 0);
        let agent = std::thread::spawn(move || {
            for (p, reply) in rx.iter().take(3) {
                let a = match p {
                    Probe::Metrics => Answer {
                        status: 200,
                        body: "# TYPE x gauge\nx 1\n".into(),
                    },
                    Probe::Health => Answer::check(&[]),
                    Probe::Ready => Answer::check(&["no tables yet".into()]),
                };
                reply.send(a).unwrap();
            }
        });
        let m = get(l.addr(), "/metrics");
        assert!(
            m.starts_with("HTTP/1.1 200") || m.starts_with("HTTP/1.0 200"),
            "{m}"
        );
        assert!(m.contains("version=0.0.4") && m.ends_with("x 1\n"), "{m}");
        assert!(get(l.addr(), "/healthz").ends_with("\r\n\r\nok\n"));
        let r = get(l.addr(), "/readyz");
        assert!(r.contains(" 503 ") && r.ends_with("no tables yet\n"), "{r}");
        assert!(get(l.addr(), "/nope").contains(" 404 "));
        agent.join().unwrap();
        // The loop is gone: probes say so instead of hanging.
        assert!(get(l.addr(), "/healthz").contains(" 503 "));
    }
}
