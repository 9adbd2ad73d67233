//! The test stream over TCP: its bytes, checking them as they arrive, and `tcp-client`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::say;

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
pub(super) struct Checker {
    stream: Stream,
    want: Vec<u8>,
    /// Bytes seen.
    pub(super) got: u64,
    /// Offset of the first byte that differs from the stream.
    pub(super) bad_at: Option<u64>,
}

impl Checker {
    pub(super) fn new() -> Self {
        Checker {
            stream: Stream::new(),
            want: vec![0u8; 1 << 16],
            got: 0,
            bad_at: None,
        }
    }
    /// Checks the next piece (at most 64 KiB).
    pub(super) fn feed(&mut self, data: &[u8]) {
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

pub(super) fn tcp_client(
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
pub(super) fn read_line(c: &mut TcpStream) -> Result<String> {
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
pub(super) fn read_name(c: &mut TcpStream) -> Result<(String, String)> {
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
