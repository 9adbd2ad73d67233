//! `echo-server`, the service backend that says who it is, and the `whoami` and `reach` clients
//! that ask it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::say;
use super::stream::{read_name, Checker};

pub(super) fn echo_server(
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    timeout: u64,
    max_conns: u32,
    answer_delay: Duration,
) -> Result<()> {
    if tcp.is_none() && udp.is_none() {
        bail!("nothing to serve: give --tcp and/or --udp");
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let listener = match tcp {
        Some(a) => {
            let l = TcpListener::bind(a).with_context(|| format!("listen {a}"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    let datagrams = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(a) = udp {
        let s = UdpSocket::bind(a).with_context(|| format!("bind {a}"))?;
        let me = s.local_addr()?.ip();
        let count = datagrams.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline
                && count.load(std::sync::atomic::Ordering::Relaxed) < 100_000
            {
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let mut reply = format!("{me} {from} ").into_bytes();
                reply.extend_from_slice(&buf[..n.min(1024)]);
                let _ = s.send_to(&reply, from);
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    say(
        json!({"listening": {"tcp": tcp.map(|a| a.to_string()), "udp": udp.map(|a| a.to_string())}}),
    );
    let mut conns = 0u32;
    while Instant::now() < deadline && conns < max_conns {
        let Some(l) = &listener else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        match l.accept() {
            Ok((c, peer)) => {
                conns += 1;
                std::thread::spawn(move || serve_backend_conn(c, peer, deadline, answer_delay));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => bail!("accept: {e}"),
        }
    }
    say(
        json!({"connections": conns, "datagrams": datagrams.load(std::sync::atomic::Ordering::Relaxed)}),
    );
    Ok(())
}

/// One connection of an echo server: name ourselves, check the test stream, give the verdict.
fn serve_backend_conn(
    mut c: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    answer_delay: Duration,
) {
    let mut run = || -> std::io::Result<()> {
        c.set_nonblocking(false)?;
        let me = c.local_addr()?.ip();
        c.write_all(format!("{me} {peer}\n").as_bytes())?;
        let mut check = Checker::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            c.set_read_timeout(Some(left))?;
            let n = c.read(&mut buf)?;
            if n == 0 {
                break;
            }
            check.feed(&buf[..n]);
        }
        // Half-closed by the client: answer later (the connection must stay up meanwhile).
        std::thread::sleep(answer_delay.min(deadline.saturating_duration_since(Instant::now())));
        let verdict = match check.bad_at {
            None => format!("ok {}\n", check.got),
            Some(at) => format!("bad {} {at}\n", check.got),
        };
        c.write_all(verdict.as_bytes())
    };
    let _ = run();
}

/// One TCP attempt: connect, read the backend's `IP PEER` line.
pub(super) fn whoami_tcp(to: SocketAddr, wait: Duration) -> Result<serde_json::Value> {
    let t = Instant::now();
    let mut c = TcpStream::connect_timeout(&to, wait)?;
    c.set_read_timeout(Some(
        wait.saturating_sub(t.elapsed())
            .max(Duration::from_millis(1)),
    ))?;
    let (ip, peer) = read_name(&mut c)?;
    Ok(json!({"backend": ip, "peer": peer}))
}

/// Makes one attempt and times it: its answer with `ms` added, or `{"error": KIND, "ms": MS}`.
pub(super) fn timed(attempt: impl FnOnce() -> Result<serde_json::Value>) -> serde_json::Value {
    let t = Instant::now();
    let r = attempt();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    match r {
        Ok(mut v) => {
            v["ms"] = json!(ms);
            v
        }
        Err(e) => json!({"error": error_kind(&e), "ms": ms}),
    }
}

/// One UDP attempt from a new socket (a new source port): the reply's source address
/// (`recvfrom`) and the backend named in it.
pub(super) fn whoami_udp(
    to: SocketAddr,
    i: u32,
    connect: bool,
    wait: Duration,
) -> Result<serde_json::Value> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    let msg = format!("whoami {i}");
    if connect {
        s.connect(to)?;
        s.send(msg.as_bytes())?;
    } else {
        s.send_to(msg.as_bytes(), to)?;
    }
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
        }
        s.set_read_timeout(Some(left))?;
        let (n, from) = s.recv_from(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]);
        let mut parts = text.splitn(3, ' ');
        let (ip, peer, payload) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if payload == msg {
            return Ok(json!({"backend": ip, "peer": peer, "from": from.to_string()}));
        }
    }
}

/// `refused`, `timeout`, or the error itself.
fn error_kind(e: &anyhow::Error) -> String {
    use std::io::ErrorKind as K;
    match e.downcast_ref::<std::io::Error>().map(std::io::Error::kind) {
        Some(K::ConnectionRefused) => "refused".into(),
        Some(K::ConnectionReset) => "reset".into(),
        Some(K::TimedOut | K::WouldBlock) => "timeout".into(),
        _ => format!("{e:#}"),
    }
}
