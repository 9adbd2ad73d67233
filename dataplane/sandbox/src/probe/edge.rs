//! Probes for the fast path's edge cases: `udp-sizes` (a UDP echo that reports each datagram's
//! length, for fragmented datagrams), `udp-big` (its client) and `tcp-sink` (a receiver that
//! records when its bytes arrived, for a stream a policy cuts).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::say;

/// The largest UDP payload over IPv4.
const MAX_UDP: usize = 65507;

/// Milliseconds since the Unix epoch: the checks compare them with their own clock (same
/// machine).
pub(super) fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Datagram `i` of `udp-big`: `size` bytes, a tag then a pattern, so that a reply can be
/// checked byte by byte (and a piece of another datagram is told apart).
pub(super) fn big_payload(i: u32, size: usize) -> Vec<u8> {
    let mut p = format!("vireo-big {i} ").into_bytes();
    p.truncate(size);
    let k = p.len();
    p.extend((k..size).map(|j| ((j * 31 + i as usize * 7) % 251) as u8));
    p
}

/// Echoes every datagram whole to its sender and prints one line per datagram,
/// `{"len": N, "from": ADDR}`, until `timeout` or `max` datagrams.
pub(super) fn udp_sizes(listen: SocketAddr, timeout: u64, max: u32) -> Result<()> {
    let s = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    say(json!({"listening": listen.to_string()}));
    let deadline = Instant::now() + Duration::from_secs(timeout.min(120));
    let mut buf = vec![0u8; MAX_UDP + 1];
    let mut n_seen = 0u32;
    while n_seen < max && Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        n_seen += 1;
        say(json!({"len": n, "from": from.to_string()}));
        let _ = s.send_to(&buf[..n], from);
    }
    say(json!({"datagrams": n_seen}));
    Ok(())
}

/// Sends `count` datagrams of `size` bytes, each from a new socket (a new source port, so a
/// Service spreads them over its backends), and waits up to `wait` for each one's echo, which
/// must come back whole from `to`. Prints what came back; fails when not all did.
pub(super) fn udp_big(to: SocketAddr, size: usize, count: u32, wait: Duration) -> Result<()> {
    if size > MAX_UDP {
        bail!("{size} bytes do not fit a UDP datagram");
    }
    let mut buf = vec![0u8; MAX_UDP + 1];
    let mut answers = Vec::new();
    let mut intact = 0u32;
    for i in 0..count {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        let msg = big_payload(i, size);
        s.send_to(&msg, to)?;
        let deadline = Instant::now() + wait;
        let answer = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break json!({"error": "timeout"});
            }
            s.set_read_timeout(Some(left))?;
            match s.recv_from(&mut buf) {
                Ok((n, from)) if buf[..n] == msg[..] && from == to => {
                    intact += 1;
                    break json!({"len": n, "from": from.to_string()});
                }
                Ok((n, from)) => {
                    break json!({"len": n, "from": from.to_string(), "error": "not the datagram sent"})
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    break json!({"error": "refused"})
                }
                Err(_) => {}
            }
        };
        answers.push(answer);
    }
    say(
        json!({"to": to.to_string(), "size": size, "sent": count, "intact": intact, "answers": answers}),
    );
    if intact != count {
        bail!("{intact} of {count} {size}-byte datagrams came back whole");
    }
    Ok(())
}

/// Accepts one TCP connection and reads it for `seconds` (from the start), printing at the end
/// the total and when it grew: `{"bytes": N, "timeline": [[EPOCH_MS, BYTES], ...]}`, a sample
/// every 50 ms at most.
pub(super) fn tcp_sink(listen: SocketAddr, seconds: u64) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("listen {listen}"))?;
    say(json!({"listening": listen.to_string()}));
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(seconds.min(120));
    let (mut c, peer) = loop {
        match l.accept() {
            Ok(x) => break x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => bail!("accept: {e}"),
        }
    };
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let mut timeline = vec![[epoch_ms(), 0]];
    let mut last = Instant::now();
    let mut closed = false;
    while Instant::now() < deadline {
        if !closed {
            match c.read(&mut buf) {
                Ok(0) => closed = true,
                Ok(n) => total += n as u64,
                Err(e) if super::timed_out(&e) => {}
                Err(_) => closed = true,
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        if last.elapsed() >= Duration::from_millis(50) {
            timeline.push([epoch_ms(), total]);
            last = Instant::now();
        }
    }
    timeline.push([epoch_ms(), total]);
    say(json!({"peer": peer.to_string(), "bytes": total, "closed": closed, "timeline": timeline}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_payloads_differ_and_have_their_size() {
        let a = big_payload(1, 4000);
        let b = big_payload(2, 4000);
        assert_eq!(a.len(), 4000);
        assert!(a.starts_with(b"vireo-big 1 "));
        assert_ne!(a[1500..], b[1500..]);
        assert_eq!(big_payload(3, 5).len(), 5);
    }
}
