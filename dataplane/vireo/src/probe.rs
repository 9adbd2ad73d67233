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
            let (mut got, mut bad_at) = (0u64, None);
            let mut s = Stream::new();
            let (mut buf, mut want) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
            while Instant::now() < deadline {
                let n = c.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                s.fill(&mut want[..n]);
                if bad_at.is_none() && buf[..n] != want[..n] {
                    let i = buf[..n]
                        .iter()
                        .zip(&want[..n])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    bad_at = Some(got + i as u64);
                }
                got += n as u64;
            }
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
        } => {
            let t0 = Instant::now();
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .with_context(|| format!("connect {to}"))?;
            c.set_write_timeout(Some(Duration::from_secs(timeout)))?;
            let mut s = Stream::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut sent = 0u64;
            while sent < bytes {
                let n = ((bytes - sent) as usize).min(buf.len());
                s.fill(&mut buf[..n]);
                c.write_all(&buf[..n])?;
                sent += n as u64;
                if pace_ms > 0 {
                    std::thread::sleep(Duration::from_millis(pace_ms));
                }
            }
            c.shutdown(std::net::Shutdown::Write)?;
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
            let secs = t0.elapsed().as_secs_f64();
            say(json!({"bytes": sent, "seconds": secs, "mbit_s": sent as f64 * 8.0 / secs / 1e6}));
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
