//! `rr-server` and `rr-client`: UDP request/response for `vireo bench`'s latency cases.
//!
//! The server echoes every datagram unchanged. The client stamps each request with a sequence
//! number, a run tag and its send time (nanoseconds since the client started) and records each
//! reply's round trip in an HDR histogram (1 ns to 60 s, 3 significant digits), in one of two
//! modes:
//!
//! - **closed loop** (`--inflight N`): N requests outstanding, a new one sent for each reply, for
//!   SECONDS; the achieved rate is the path's peak request rate. A request with no reply within
//!   `LOSS_WAIT` counts as lost and the window is refilled.
//! - **open loop** (`--rate R`): requests sent on a fixed schedule of R per second from one
//!   thread, replies read on another, so that a slow reply does not delay the next request (no
//!   coordinated omission: the next send time never depends on a reply).
//!
//! The client prints one JSON line: `{"mode", "seconds", "sent", "received", "lost",
//! "rate", "p50_us", "p90_us", "p99_us", "max_us"}`, `rate` in replies per second.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use super::say;

/// Request size: tag (8 bytes), sequence (8), send time (8), padding.
pub const RR_MIN_SIZE: usize = 24;
/// A request with no reply this long is lost (closed loop).
const LOSS_WAIT: Duration = Duration::from_millis(100);
/// Replies still accepted after an open-loop run's last send.
const DRAIN: Duration = Duration::from_millis(200);
/// Longest run the client accepts.
pub const RR_MAX_SECONDS: u64 = 120;

/// `rr-server`: echo every datagram to its sender until `timeout` seconds pass or `max`
/// datagrams were echoed.
pub(super) fn rr_server(listen: SocketAddr, timeout: u64, max: u64) -> Result<()> {
    let s = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    say(json!({"listening": listen.to_string()}));
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut buf = [0u8; 2048];
    let mut echoed = 0u64;
    while echoed < max && Instant::now() < deadline {
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        if s.send_to(&buf[..n], from).is_ok() {
            echoed += 1;
        }
    }
    say(json!({"echoed": echoed}));
    Ok(())
}

/// How the client paces its requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Closed loop with this many requests outstanding.
    Closed(u32),
    /// Open loop at this many requests per second.
    Open(f64),
}

/// What `rr-client` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RrReport {
    pub mode: &'static str,
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// Replies per second over the run.
    pub rate: f64,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
}

/// A histogram of round trips in nanoseconds.
pub fn rtt_histogram() -> Histogram<u64> {
    // Bounds and precision are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

/// Percentile `q` (0..=1) of a histogram of nanoseconds, in microseconds; `None` when empty.
pub fn percentile_us(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

/// The report of a run of `elapsed` with `sent` requests and the round trips in `h`.
pub fn report(pace: Pace, elapsed: Duration, sent: u64, h: &Histogram<u64>) -> RrReport {
    let received = h.len();
    let secs = elapsed.as_secs_f64();
    RrReport {
        mode: match pace {
            Pace::Closed(_) => "closed",
            Pace::Open(_) => "open",
        },
        seconds: secs,
        sent,
        received,
        lost: sent.saturating_sub(received),
        rate: if secs > 0.0 {
            received as f64 / secs
        } else {
            0.0
        },
        p50_us: percentile_us(h, 0.50),
        p90_us: percentile_us(h, 0.90),
        p99_us: percentile_us(h, 0.99),
        max_us: (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
    }
}

fn encode(buf: &mut [u8], tag: u64, seq: u64, sent_ns: u64) {
    buf[0..8].copy_from_slice(&tag.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    buf[16..24].copy_from_slice(&sent_ns.to_le_bytes());
}

/// (tag, seq, sent_ns) of a reply, or `None` when too short.
fn decode(buf: &[u8]) -> Option<(u64, u64, u64)> {
    let f = |r: std::ops::Range<usize>| Some(u64::from_le_bytes(buf.get(r)?.try_into().ok()?));
    Some((f(0..8)?, f(8..16)?, f(16..24)?))
}

fn ns_since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

/// `rr-client`: runs for `seconds` against an `rr-server` at `to` and returns the report.
pub fn rr_client(to: SocketAddr, seconds: f64, pace: Pace, size: usize) -> Result<RrReport> {
    if !(seconds > 0.0 && seconds <= RR_MAX_SECONDS as f64) {
        bail!("--seconds must be in (0, {RR_MAX_SECONDS}]");
    }
    if !(RR_MIN_SIZE..=1400).contains(&size) {
        bail!("--size must be {RR_MIN_SIZE}..=1400");
    }
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    let s = UdpSocket::bind(bind)?;
    s.connect(to).with_context(|| format!("connect {to}"))?;
    // A tag per run: replies to an earlier client on the same port are not ours.
    let tag = u64::from(std::process::id()) << 32 | u64::from(rand_u32());
    let window = Duration::from_secs_f64(seconds);
    match pace {
        Pace::Closed(n) => closed_loop(&s, tag, n, window, size),
        Pace::Open(r) => open_loop(s, tag, r, window, size),
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

fn closed_loop(
    s: &UdpSocket,
    tag: u64,
    inflight: u32,
    window: Duration,
    size: usize,
) -> Result<RrReport> {
    if !(1..=256).contains(&inflight) {
        bail!("--inflight must be 1..=256");
    }
    s.set_read_timeout(Some(LOSS_WAIT))?;
    let mut h = rtt_histogram();
    let mut buf = vec![0u8; size];
    let mut rbuf = [0u8; 2048];
    let t0 = Instant::now();
    let mut seq = 0u64;
    // Requests below `floor` were given up as lost: their late replies are ignored.
    let mut floor = 0u64;
    let mut outstanding = 0u32;
    let mut sent = 0u64;
    while t0.elapsed() < window {
        while outstanding < inflight {
            encode(&mut buf, tag, seq, ns_since(t0));
            if s.send(&buf).is_ok() {
                sent += 1;
                outstanding += 1;
            }
            seq += 1;
        }
        match s.recv(&mut rbuf) {
            Ok(n) => {
                let now = ns_since(t0);
                if let Some((t, q, at)) = decode(&rbuf[..n]) {
                    if t == tag && q >= floor && q < seq {
                        let _ = h.record(now.saturating_sub(at).max(1));
                        outstanding = outstanding.saturating_sub(1);
                    }
                }
            }
            Err(e) if super::timed_out(&e) => {
                // Nothing for LOSS_WAIT: everything outstanding is lost.
                floor = seq;
                outstanding = 0;
            }
            // ECONNREFUSED (no server yet, an ICMP port unreachable): the request is lost.
            Err(_) => {
                floor = seq;
                outstanding = 0;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(report(Pace::Closed(inflight), t0.elapsed(), sent, &h))
}

fn open_loop(s: UdpSocket, tag: u64, rate: f64, window: Duration, size: usize) -> Result<RrReport> {
    if !(1.0..=5_000_000.0).contains(&rate) {
        bail!("--rate must be 1..=5000000 requests per second");
    }
    let rx = s.try_clone()?;
    rx.set_read_timeout(Some(Duration::from_millis(20)))?;
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let receiver = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut h = rtt_histogram();
            let mut rbuf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                let Ok(n) = rx.recv(&mut rbuf) else {
                    continue;
                };
                let now = ns_since(t0);
                if let Some((t, _, at)) = decode(&rbuf[..n]) {
                    if t == tag {
                        let _ = h.record(now.saturating_sub(at).max(1));
                    }
                }
            }
            h
        })
    };
    let interval_ns = 1e9 / rate;
    let mut buf = vec![0u8; size];
    let mut seq = 0u64;
    loop {
        let due = Duration::from_nanos((seq as f64 * interval_ns) as u64);
        if due >= window {
            break;
        }
        let now = t0.elapsed();
        if now < due {
            let wait = due - now;
            if wait > Duration::from_micros(200) {
                std::thread::sleep(wait - Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        encode(&mut buf, tag, seq, ns_since(t0));
        if s.send(&buf).is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        seq += 1;
    }
    let elapsed = t0.elapsed();
    std::thread::sleep(DRAIN);
    done.store(true, Ordering::Relaxed);
    let h = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver thread failed"))?;
    Ok(report(
        Pace::Open(rate),
        elapsed,
        sent.load(Ordering::Relaxed),
        &h,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = rtt_histogram();
        // 1..=1000 µs, once each.
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p50 = percentile_us(&h, 0.5).unwrap();
        let p99 = percentile_us(&h, 0.99).unwrap();
        assert!((p50 - 500.0).abs() <= 1.0, "p50 {p50}");
        assert!((p99 - 990.0).abs() <= 1.0, "p99 {p99}");
        // A tail of slow replies moves p99, not p50.
        for _ in 0..20 {
            h.record(50_000_000).unwrap();
        }
        assert!((percentile_us(&h, 0.5).unwrap() - 510.0).abs() <= 1.0);
        assert!(percentile_us(&h, 0.99).unwrap() > 40_000.0);
        assert_eq!(percentile_us(&rtt_histogram(), 0.5), None);
    }

    #[test]
    fn report_counts_losses_and_rate() {
        let mut h = rtt_histogram();
        for _ in 0..900 {
            h.record(20_000).unwrap();
        }
        let r = report(Pace::Open(1000.0), Duration::from_secs(2), 1000, &h);
        assert_eq!((r.mode, r.received, r.lost), ("open", 900, 100));
        assert!((r.rate - 450.0).abs() < 1e-9);
        assert!((r.p50_us.unwrap() - 20.0).abs() < 0.05);
    }

    #[test]
    fn request_encoding_round_trips_and_short_replies_are_refused() {
        let mut b = [0u8; 64];
        encode(&mut b, 7, 42, 123_456);
        assert_eq!(decode(&b), Some((7, 42, 123_456)));
        assert_eq!(decode(&b[..23]), None);
    }

    /// Both modes against a real server on loopback (no root needed).
    #[test]
    fn closed_and_open_loop_over_loopback() {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let server = std::thread::spawn(move || rr_server(addr, 3, 1_000_000));
        std::thread::sleep(Duration::from_millis(100));
        let c = rr_client(addr, 0.3, Pace::Closed(4), 64).unwrap();
        assert_eq!(c.mode, "closed");
        assert!(c.received > 100, "{c:?}");
        assert!(c.p50_us.unwrap() > 0.0 && c.p50_us <= c.p99_us);
        let o = rr_client(addr, 0.5, Pace::Open(2000.0), 64).unwrap();
        // About 1000 requests on schedule, nearly all answered.
        assert!((900..=1001).contains(&o.sent), "{o:?}");
        assert!(o.received + 20 >= o.sent, "{o:?}");
        assert!(rr_client(addr, 0.0, Pace::Open(10.0), 64).is_err());
        assert!(rr_client(addr, 1.0, Pace::Closed(0), 64).is_err());
        assert!(rr_client(addr, 1.0, Pace::Open(10.0), 8).is_err());
        server.join().unwrap().unwrap();
    }
}
