//! `vireo probe …`: small traffic endpoints the connectivity test runs inside pods (through
//! `vireo sandbox exec`). Every loop is bounded in count and time. Each prints one JSON line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand, Debug, Clone)]
pub enum Probe {
    /// Accept one TCP connection and check that exactly BYTES of the test stream arrive.
    TcpServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Send BYTES of the test stream over TCP.
    TcpClient {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Pause this many milliseconds after each 64 KiB (a long-lived, slow connection).
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
        /// The server is an `echo-server`: print the backend it names first as
        /// `{"backend": IP, "peer": ADDR}`, and require its verdict on the stream at the end.
        #[arg(long)]
        whoami: bool,
        /// After this many bytes, print `{"paused": N}` and wait (at most TIMEOUT) for a line
        /// on stdin before sending the rest.
        #[arg(long)]
        pause_at: Option<u64>,
    },
    /// A service backend that says who it is, until TIMEOUT or MAX_CONNS connections: each TCP
    /// connection first gets the line `IP PEER` (this server's address, the client it sees),
    /// then its test stream is checked and answered with `ok BYTES` or `bad BYTES FIRST_BAD`;
    /// each UDP datagram is answered with `IP PEER PAYLOAD`.
    EchoServer {
        #[arg(long)]
        tcp: Option<SocketAddr>,
        #[arg(long)]
        udp: Option<SocketAddr>,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[arg(long, default_value_t = 1000)]
        max_conns: u32,
    },
    /// COUNT attempts, each over a new connection (or a new UDP socket), asking an
    /// `echo-server` (behind TO) who it is; prints which backend answered each, or the error
    /// (`refused`: ECONNREFUSED, from ICMP port unreachable or a reset to the SYN; `timeout`).
    Whoami {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        /// UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        /// UDP: connect the socket, so that an ICMP error is reported (as `refused`).
        #[arg(long)]
        connect: bool,
        /// Time each attempt may take, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10000))]
        wait_ms: u64,
    },
    /// One TCP attempt to each TO at once (a thread each), asking an `echo-server` who it is;
    /// prints the answers in the order of TO, as `whoami` does (`timeout`: no answer within
    /// WAIT_MS, as when a policy drops the SYN).
    Reach {
        #[arg(long, required = true, num_args = 1..=64)]
        to: Vec<SocketAddr>,
        /// Time each attempt may take, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10000))]
        wait_ms: u64,
    },
    /// Send COUNT TCP SYNs from FROM (this pod's address) to TO, each from another source port.
    SynFlood {
        #[arg(long)]
        from: std::net::Ipv4Addr,
        #[arg(long)]
        to: std::net::SocketAddrV4,
        #[arg(long)]
        count: u32,
    },
    /// Echo up to COUNT UDP datagrams back to their sender.
    UdpEcho {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 20)]
        timeout: u64,
    },
    /// Send COUNT UDP datagrams and count the echoes.
    UdpClient {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

/// The test stream: a deterministic byte sequence (xorshift), so the receiver can check every
/// byte without the sender telling it anything.
struct Stream {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Stream {
    fn new() -> Self {
        Stream {
            state: 0x9e37_79b9_7f4a_7c15,
            word: [0; 8],
            used: 8,
        }
    }
    /// The next `buf.len()` bytes of the sequence, however the caller slices it.
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// Checks received bytes against the test stream, however they arrive in pieces.
struct Checker {
    stream: Stream,
    want: Vec<u8>,
    /// Bytes seen.
    got: u64,
    /// Offset of the first byte that differs from the stream.
    bad_at: Option<u64>,
}

impl Checker {
    fn new() -> Self {
        Checker {
            stream: Stream::new(),
            want: vec![0u8; 1 << 16],
            got: 0,
            bad_at: None,
        }
    }
    /// Checks the next piece (at most 64 KiB).
    fn feed(&mut self, data: &[u8]) {
        let want = &mut self.want[..data.len()];
        self.stream.fill(want);
        if self.bad_at.is_none() && data != &want[..] {
            let i = data
                .iter()
                .zip(&*want)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            self.bad_at = Some(self.got + i as u64);
        }
        self.got += data.len() as u64;
    }
}

/// Prints one line; a reader that went away is no reason to panic.
fn say(v: impl std::fmt::Display) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{v}");
    let _ = o.flush();
}

pub fn run(p: Probe) -> Result<()> {
    match p {
        Probe::TcpServer {
            listen,
            bytes,
            timeout,
        } => {
            let l = TcpListener::bind(listen).with_context(|| format!("listen {listen}"))?;
            say(json!({"listening": listen.to_string()}));
            l.set_nonblocking(true)?;
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let (mut c, peer) = loop {
                match l.accept() {
                    Ok(x) => break x,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => bail!("accept: {e}"),
                }
            };
            c.set_nonblocking(false)?;
            c.set_read_timeout(Some(Duration::from_secs(timeout)))?;
            let mut check = Checker::new();
            let mut buf = vec![0u8; 1 << 16];
            while Instant::now() < deadline {
                let n = c.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                check.feed(&buf[..n]);
            }
            let (got, bad_at) = (check.got, check.bad_at);
            let ok = got == bytes && bad_at.is_none();
            say(
                json!({"peer": peer.to_string(), "bytes": got, "expected": bytes, "intact": bad_at.is_none(), "first_bad_byte": bad_at, "ok": ok}),
            );
            if !ok {
                bail!("received {got} of {bytes} bytes, first corrupt byte {bad_at:?}");
            }
            Ok(())
        }
        Probe::TcpClient {
            to,
            bytes,
            timeout,
            pace_ms,
            whoami,
            pause_at,
        } => tcp_client(to, bytes, timeout, pace_ms, whoami, pause_at),
        Probe::EchoServer {
            tcp,
            udp,
            timeout,
            max_conns,
        } => echo_server(tcp, udp, timeout, max_conns),
        Probe::Whoami {
            to,
            count,
            udp,
            connect,
            wait_ms,
        } => {
            let wait = Duration::from_millis(wait_ms);
            let answers: Vec<serde_json::Value> = (0..count)
                .map(|i| {
                    timed(|| {
                        if udp {
                            whoami_udp(to, i, connect, wait)
                        } else {
                            whoami_tcp(to, wait)
                        }
                    })
                })
                .collect();
            say(json!({"to": to.to_string(), "answers": answers}));
            Ok(())
        }
        Probe::Reach { to, wait_ms } => {
            let wait = Duration::from_millis(wait_ms);
            let attempts: Vec<_> = to
                .iter()
                .map(|&t| std::thread::spawn(move || timed(|| whoami_tcp(t, wait))))
                .collect();
            let answers: Vec<serde_json::Value> = attempts
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| json!({"error": "probe thread failed"}))
                })
                .collect();
            let to: Vec<String> = to.iter().map(ToString::to_string).collect();
            say(json!({"to": to, "answers": answers}));
            Ok(())
        }
        Probe::SynFlood { from, to, count } => syn_flood(from, to, count),
        Probe::UdpEcho {
            listen,
            count,
            timeout,
        } => {
            let s = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
            say(json!({"listening": listen.to_string()}));
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let mut buf = [0u8; 2048];
            let mut echoed = 0;
            while echoed < count && Instant::now() < deadline {
                s.set_read_timeout(Some(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))?;
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    break;
                };
                s.send_to(&buf[..n], from)?;
                echoed += 1;
            }
            say(json!({"echoed": echoed}));
            Ok(())
        }
        Probe::UdpClient { to, count, timeout } => {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let mut replies = 0u32;
            let mut buf = [0u8; 2048];
            for i in 0..count {
                s.send_to(format!("vireo-probe {i}").as_bytes(), to)?;
                // Wait for this datagram's echo (or give up on it).
                while Instant::now() < deadline {
                    match s.recv_from(&mut buf) {
                        Ok((n, from))
                            if from == to && buf[..n] == *format!("vireo-probe {i}").as_bytes() =>
                        {
                            replies += 1;
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            say(json!({"sent": count, "replies": replies}));
            if replies != count {
                bail!("{replies} of {count} UDP datagrams echoed");
            }
            Ok(())
        }
    }
}

fn tcp_client(
    to: SocketAddr,
    bytes: u64,
    timeout: u64,
    pace_ms: u64,
    whoami: bool,
    pause_at: Option<u64>,
) -> Result<()> {
    let t0 = Instant::now();
    let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connect {to}"))?;
    c.set_write_timeout(Some(Duration::from_secs(timeout)))?;
    c.set_read_timeout(Some(Duration::from_secs(timeout)))?;
    let mut backend = None;
    if whoami {
        let (ip, peer) = read_name(&mut c).context("reading the backend's name")?;
        say(json!({"backend": ip, "peer": peer}));
        backend = Some(ip);
    }
    let mut s = Stream::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut sent = 0u64;
    let mut pause = pause_at.filter(|&p| p < bytes);
    while sent < bytes {
        let mut n = ((bytes - sent) as usize).min(buf.len());
        if let Some(p) = pause {
            n = n.min((p - sent) as usize);
        }
        s.fill(&mut buf[..n]);
        c.write_all(&buf[..n])?;
        sent += n as u64;
        if pause == Some(sent) {
            pause = None;
            say(json!({"paused": sent}));
            wait_for_stdin(Duration::from_secs(timeout));
        } else if pace_ms > 0 {
            std::thread::sleep(Duration::from_millis(pace_ms));
        }
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let secs = t0.elapsed().as_secs_f64();
    let verdict = String::from_utf8_lossy(&rest).trim().to_string();
    say(
        json!({"bytes": sent, "seconds": secs, "mbit_s": sent as f64 * 8.0 / secs / 1e6,
               "backend": backend, "verdict": whoami.then_some(&verdict)}),
    );
    if whoami && verdict != format!("ok {sent}") {
        bail!("the backend's verdict on {sent} bytes: {verdict:?}");
    }
    Ok(())
}

/// Reads one line (without its newline) byte by byte, so nothing after it is consumed.
fn read_line(c: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 256 {
        if c.read(&mut b)? == 0 {
            bail!("connection closed before a line");
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
    bail!("line too long")
}

/// Reads an echo server's first line, `IP PEER`: the backend's address and the client it sees.
fn read_name(c: &mut TcpStream) -> Result<(String, String)> {
    let line = read_line(c)?;
    let (ip, peer) = line.split_once(' ').unwrap_or((line.as_str(), ""));
    Ok((ip.to_string(), peer.to_string()))
}

/// Blocks until a line (or end of file) on stdin, or `max`.
fn wait_for_stdin(max: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut l = String::new();
        let _ = std::io::stdin().read_line(&mut l);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(max);
}

fn echo_server(
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    timeout: u64,
    max_conns: u32,
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
                std::thread::spawn(move || serve_backend_conn(c, peer, deadline));
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
fn serve_backend_conn(mut c: TcpStream, peer: SocketAddr, deadline: Instant) {
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
        let verdict = match check.bad_at {
            None => format!("ok {}\n", check.got),
            Some(at) => format!("bad {} {at}\n", check.got),
        };
        c.write_all(verdict.as_bytes())
    };
    let _ = run();
}

/// One TCP attempt: connect, read the backend's `IP PEER` line.
fn whoami_tcp(to: SocketAddr, wait: Duration) -> Result<serde_json::Value> {
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
fn timed(attempt: impl FnOnce() -> Result<serde_json::Value>) -> serde_json::Value {
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
fn whoami_udp(to: SocketAddr, i: u32, connect: bool, wait: Duration) -> Result<serde_json::Value> {
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

/// Sends bare SYNs through a raw socket (the kernel adds the IP header); bounded by `count`.
fn syn_flood(from: std::net::Ipv4Addr, to: std::net::SocketAddrV4, count: u32) -> Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))
        .context("raw socket (needs CAP_NET_RAW)")?;
    let dst: socket2::SockAddr =
        std::net::SocketAddr::V4(std::net::SocketAddrV4::new(*to.ip(), 0)).into();
    let ip = etherparse::Ipv4Header::new(
        20,
        64,
        etherparse::IpNumber::TCP,
        from.octets(),
        to.ip().octets(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut sent = 0u32;
    for i in 0..count {
        let mut tcp = etherparse::TcpHeader::new(
            1024 + (i % 60000) as u16,
            to.port(),
            0x1000_0000 + i,
            64240,
        );
        tcp.syn = true;
        tcp.checksum = tcp
            .calc_checksum_ipv4(&ip, &[])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let bytes = tcp.to_bytes();
        if sock.send_to(&bytes, &dst).is_ok() {
            sent += 1;
        }
        // Bursts of 64, about 64k SYN/s: a flood, but one AF_XDP copy mode takes in whole.
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    say(json!({"sent": sent}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_deterministic_and_chunking_does_not_matter() {
        let mut a = vec![0u8; 1000];
        Stream::new().fill(&mut a);
        let mut b = vec![0u8; 1000];
        let mut s = Stream::new();
        s.fill(&mut b[..13]);
        s.fill(&mut b[13..14]);
        s.fill(&mut b[14..1000]);
        assert_eq!(a, b);
        assert_ne!(a[..8], a[8..16]);
    }
}
