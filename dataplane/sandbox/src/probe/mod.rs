//! `vireo probe …`: small traffic endpoints the connectivity test runs inside pods (through
//! `vireo sandbox exec`). Every loop is bounded in count and time. Each prints one JSON line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;

mod echo;
mod flood;
mod stream;

use echo::{echo_server, timed, whoami_tcp, whoami_udp};
use flood::syn_flood;
use stream::{tcp_client, Checker};

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

/// Prints one line; a reader that went away is no reason to panic.
pub(super) fn say(v: impl std::fmt::Display) {
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
