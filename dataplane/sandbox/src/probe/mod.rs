//! `vireo probe …`: small traffic endpoints the connectivity test runs inside pods (through
//! `vireo sandbox exec`). Every loop is bounded in count and time. Each prints one JSON line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;

mod dns;
mod echo;
mod edge;
mod flood;
mod raw;
pub mod rr;
mod stream;

use dns::{dns_query, dns_server, parse_record};
use echo::{echo_server, timed, whoami_tcp, whoami_udp};
use edge::{tcp_sink, udp_big, udp_sizes};
use flood::syn_flood;
use raw::{parse_recv_proto, parse_send_proto, raw_recv, raw_send};
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
        /// Wait this long after a connection's end of stream (the client's FIN) before giving
        /// the verdict: a half-closed connection that must stay up.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60000))]
        answer_delay_ms: u64,
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
        /// Spread the destination port over this many ports from TO's (a port-range flood).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        dport_span: u16,
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
    /// Send COUNT packets of PROTO (icmp: port unreachable errors quoting a UDP flow that never
    /// existed; gre; sctp: INIT chunks to PORT) to DST through a raw socket, INTERVAL_MS apart
    /// (at most 10 s).
    RawSend {
        #[arg(long, value_parser = parse_send_proto)]
        proto: u8,
        #[arg(long)]
        dst: std::net::Ipv4Addr,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10000))]
        count: u32,
        /// SCTP: the destination port.
        #[arg(long, default_value_t = 3868)]
        port: u16,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
        interval_ms: u64,
    },
    /// Count the packets of PROTO (a number, or icmp, gre, sctp) from FROM arriving in this
    /// namespace for SECONDS (a raw socket sees a copy of each); prints
    /// `{"count": N, "by": {KEY: N}}`, KEY the destination port (SCTP), `TYPE/CODE` (ICMP) or
    /// `all`.
    RawRecv {
        #[arg(long, value_parser = parse_recv_proto)]
        proto: u8,
        #[arg(long)]
        from: Option<std::net::Ipv4Addr>,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60))]
        seconds: u64,
    },
    /// Echo each UDP datagram whole (up to 64 KiB) and print its length, one line each, until
    /// TIMEOUT or MAX datagrams.
    UdpSizes {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 20)]
        timeout: u64,
        #[arg(long, default_value_t = 1000)]
        max: u32,
    },
    /// Send COUNT datagrams of SIZE bytes (each from a new source port) and require each back
    /// whole from TO within WAIT_MS.
    UdpBig {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65507))]
        size: u64,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10000))]
        wait_ms: u64,
    },
    /// Echo every UDP datagram unchanged until TIMEOUT or MAX datagrams (`vireo bench`'s
    /// request/response cases).
    RrServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=600))]
        timeout: u64,
        #[arg(long, default_value_t = 50_000_000)]
        max: u64,
    },
    /// Request/response against an `rr-server` for SECONDS, closed loop with INFLIGHT
    /// outstanding or open loop at RATE requests/s; prints the rate and the round-trip
    /// percentiles (one JSON line).
    RrClient {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        seconds: f64,
        #[arg(long, conflicts_with = "rate", required_unless_present = "rate")]
        inflight: Option<u32>,
        #[arg(long)]
        rate: Option<f64>,
        /// Request size in bytes (UDP payload).
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// A DNS server on UDP LISTEN answering A queries for each RECORD (`NAME=IPV4`, TTL
    /// seconds), NXDOMAIN for other names, until TIMEOUT or MAX queries; prints one line per
    /// query received (`{"query": NAME, "from": ADDR}`).
    DnsServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long = "record", required = true, value_parser = parse_record)]
        records: Vec<(String, std::net::Ipv4Addr)>,
        #[arg(long, default_value_t = 5)]
        ttl: u32,
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
        timeout: u64,
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100000))]
        max: u32,
    },
    /// One DNS query (type A) for NAME to SERVER; prints the answer's rcode, addresses and
    /// source address, or `{"error": "timeout"}` after WAIT_MS.
    DnsQuery {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10000))]
        wait_ms: u64,
    },
    /// Accept one TCP connection and read it for SECONDS; print the bytes and when they came.
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=120))]
        seconds: u64,
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
            answer_delay_ms,
        } => echo_server(
            tcp,
            udp,
            timeout,
            max_conns,
            Duration::from_millis(answer_delay_ms),
        ),
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
        Probe::SynFlood {
            from,
            to,
            count,
            dport_span,
        } => syn_flood(from, to, count, dport_span),
        Probe::RawSend {
            proto,
            dst,
            count,
            port,
            interval_ms,
        } => raw_send(proto, dst, count, port, interval_ms),
        Probe::RawRecv {
            proto,
            from,
            seconds,
        } => raw_recv(proto, from, seconds),
        Probe::UdpSizes {
            listen,
            timeout,
            max,
        } => udp_sizes(listen, timeout, max),
        Probe::UdpBig {
            to,
            size,
            count,
            wait_ms,
        } => udp_big(to, size as usize, count, Duration::from_millis(wait_ms)),
        Probe::TcpSink { listen, seconds } => tcp_sink(listen, seconds),
        Probe::DnsServer {
            listen,
            records,
            ttl,
            timeout,
            max,
        } => dns_server(listen, &records, ttl, timeout, max),
        Probe::DnsQuery {
            server,
            name,
            wait_ms,
        } => dns_query(server, &name, Duration::from_millis(wait_ms)),
        Probe::RrServer {
            listen,
            timeout,
            max,
        } => rr::rr_server(listen, timeout, max),
        Probe::RrClient {
            to,
            seconds,
            inflight,
            rate,
            size,
        } => {
            let pace = match (inflight, rate) {
                (Some(n), None) => rr::Pace::Closed(n),
                (None, Some(r)) => rr::Pace::Open(r),
                _ => bail!("give one of --inflight or --rate"),
            };
            say(serde_json::to_string(&rr::rr_client(
                to, seconds, pace, size,
            )?)?);
            Ok(())
        }
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

/// A receive timed out (or would block): wait again.
pub(crate) fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        probe: Probe,
    }

    fn parse(args: &str) -> Result<Probe, clap::Error> {
        Cli::try_parse_from(std::iter::once("probe").chain(args.split_whitespace()))
            .map(|c| c.probe)
    }

    #[test]
    fn raw_send_arguments() {
        let p = parse("raw-send --proto gre --dst 10.244.2.10 --count 40").unwrap();
        assert!(matches!(
            p,
            Probe::RawSend {
                proto: 47,
                count: 40,
                port: 3868,
                interval_ms: 2,
                ..
            }
        ));
        let p = parse("raw-send --proto 132 --dst 10.244.2.10 --count 1 --port 3869").unwrap();
        assert!(matches!(
            p,
            Probe::RawSend {
                proto: 132,
                port: 3869,
                ..
            }
        ));
        assert!(matches!(
            parse("raw-send --proto ICMP --dst 10.0.0.1 --count 3").unwrap(),
            Probe::RawSend { proto: 1, .. }
        ));
        // Only the protocols it can build, and bounded counts.
        assert!(parse("raw-send --proto 6 --dst 10.0.0.1 --count 3").is_err());
        assert!(parse("raw-send --proto gre --dst 10.0.0.1 --count 0").is_err());
        assert!(parse("raw-send --proto gre --dst 10.0.0.1 --count 10001").is_err());
        assert!(parse("raw-send --proto gre --dst nowhere --count 1").is_err());
    }

    #[test]
    fn raw_recv_arguments() {
        let p = parse("raw-recv --proto 47 --seconds 3 --from 10.244.1.12").unwrap();
        assert!(matches!(
            p,
            Probe::RawRecv {
                proto: 47,
                seconds: 3,
                from: Some(_)
            }
        ));
        assert!(matches!(
            parse("raw-recv --proto sctp --seconds 1").unwrap(),
            Probe::RawRecv {
                proto: 132,
                from: None,
                ..
            }
        ));
        assert!(parse("raw-recv --proto 0 --seconds 1").is_err());
        assert!(parse("raw-recv --proto 256 --seconds 1").is_err());
        assert!(parse("raw-recv --proto 47 --seconds 61").is_err());
        assert!(parse("raw-recv --proto 47").is_err());
    }

    #[test]
    fn udp_and_sink_arguments() {
        let p = parse("udp-big --to 10.96.0.10:81 --size 4000 --count 24").unwrap();
        assert!(matches!(
            p,
            Probe::UdpBig {
                size: 4000,
                count: 24,
                wait_ms: 1000,
                ..
            }
        ));
        assert!(parse("udp-big --to 10.96.0.10:81 --size 65508 --count 1").is_err());
        let p = parse("udp-sizes --listen 10.244.1.10:8081").unwrap();
        assert!(matches!(
            p,
            Probe::UdpSizes {
                timeout: 20,
                max: 1000,
                ..
            }
        ));
        let p = parse("tcp-sink --listen 10.244.2.10:5501 --seconds 8").unwrap();
        assert!(matches!(p, Probe::TcpSink { seconds: 8, .. }));
        assert!(parse("tcp-sink --listen 10.244.2.10:5501 --seconds 0").is_err());
        let p = parse("echo-server --tcp 10.244.1.10:8080 --answer-delay-ms 4000").unwrap();
        assert!(matches!(
            p,
            Probe::EchoServer {
                answer_delay_ms: 4000,
                ..
            }
        ));
        assert!(matches!(
            parse("echo-server --tcp 10.244.1.10:8080").unwrap(),
            Probe::EchoServer {
                answer_delay_ms: 0,
                ..
            }
        ));
        assert!(parse("echo-server --tcp 10.244.1.10:8080 --answer-delay-ms 60001").is_err());
    }

    #[test]
    fn dns_arguments() {
        let p = parse(
            "dns-server --listen 10.244.2.30:53 --record a.vireo.test=203.0.113.10 --record b.vireo.test=203.0.113.11",
        )
        .unwrap();
        assert!(
            matches!(p, Probe::DnsServer { ref records, ttl: 5, timeout: 30, .. } if records.len() == 2)
        );
        assert!(parse("dns-server --listen 10.244.2.30:53").is_err());
        assert!(parse("dns-server --listen 10.244.2.30:53 --record a.test").is_err());
        assert!(
            parse("dns-server --listen 10.244.2.30:53 --record a.test=1.2.3.4 --timeout 0")
                .is_err()
        );
        assert!(matches!(
            parse("dns-query --server 10.96.0.53:53 --name a.vireo.test").unwrap(),
            Probe::DnsQuery { wait_ms: 1000, .. }
        ));
    }

    #[test]
    fn rr_arguments() {
        assert!(matches!(
            parse("rr-client --to 10.244.1.10:7000 --seconds 3 --inflight 8").unwrap(),
            Probe::RrClient {
                inflight: Some(8),
                rate: None,
                size: 64,
                ..
            }
        ));
        assert!(matches!(
            parse("rr-client --to 10.244.1.10:7000 --seconds 3 --rate 20000").unwrap(),
            Probe::RrClient { inflight: None, rate: Some(r), .. } if r == 20000.0
        ));
        // Exactly one pacing.
        assert!(parse("rr-client --to 10.244.1.10:7000 --seconds 3").is_err());
        assert!(
            parse("rr-client --to 10.244.1.10:7000 --seconds 3 --rate 1 --inflight 1").is_err()
        );
        assert!(matches!(
            parse("rr-server --listen 10.244.1.10:7000").unwrap(),
            Probe::RrServer { timeout: 60, .. }
        ));
        assert!(parse("rr-server --listen 10.244.1.10:7000 --timeout 601").is_err());
    }
}
