//! `dns-server`, a small bounded DNS responder (the default sandbox's `kube-dns` pod runs it
//! during the DNS policy checks), and `dns-query`, a one-shot client. Messages are built and
//! read with `hickory-proto`, never by hand.
//!
//! The server prints one JSON line per query it receives (`{"query": NAME, "from": ADDR}`), as
//! it receives it, so that a check can tell exactly which names reached it.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::json;

use super::say;

/// One `--record NAME=IP` of `dns-server`: the name (lower case, no trailing dot) and its
/// address.
pub(super) fn parse_record(s: &str) -> Result<(String, Ipv4Addr), String> {
    let (name, ip) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: want NAME=IPV4"))?;
    let name = normal(name);
    Name::from_ascii(&name).map_err(|e| format!("{name:?}: {e}"))?;
    let ip = ip.parse().map_err(|e| format!("{ip:?}: {e}"))?;
    Ok((name, ip))
}

/// A name as the server compares it: lower case, no trailing dot.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The answer to the DNS message `msg` (`None`: not a standard query, or unreadable): an A
/// record for a name of `records` asked for type A (TTL `ttl`), no record (NOERROR) for
/// another type of a known name, NXDOMAIN otherwise. With the name asked for.
fn answer(msg: &[u8], records: &[(String, Ipv4Addr)], ttl: u32) -> Option<(String, Vec<u8>)> {
    let q = Message::from_vec(msg).ok()?;
    if q.metadata.message_type != MessageType::Query || q.metadata.op_code != OpCode::Query {
        return None;
    }
    let [question] = q.queries.as_slice() else {
        return None;
    };
    let asked = normal(&question.name.to_ascii());
    let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.authoritative = true;
    r.add_query(question.clone());
    let known: Vec<Ipv4Addr> = records
        .iter()
        .filter(|(n, _)| *n == asked)
        .map(|(_, ip)| *ip)
        .collect();
    if known.is_empty() {
        r.metadata.response_code = ResponseCode::NXDomain;
    } else if question.query_type == RecordType::A {
        for ip in known {
            r.add_answer(Record::from_rdata(
                question.name.clone(),
                ttl,
                RData::A(A(ip)),
            ));
        }
    }
    Some((asked, r.to_vec().ok()?))
}

/// Serves `records` on UDP `listen` until `timeout` seconds or `max` queries.
pub(super) fn dns_server(
    listen: SocketAddr,
    records: &[(String, Ipv4Addr)],
    ttl: u32,
    timeout: u64,
    max: u32,
) -> Result<()> {
    let s = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    say(json!({"listening": listen.to_string()}));
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut buf = [0u8; 4096];
    let mut queries = 0u32;
    while queries < max && Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        queries += 1;
        match answer(&buf[..n], records, ttl) {
            Some((name, reply)) => {
                say(json!({"query": name, "from": from.to_string()}));
                let _ = s.send_to(&reply, from);
            }
            None => say(json!({"unreadable": from.to_string(), "bytes": n})),
        }
    }
    say(json!({"queries": queries}));
    Ok(())
}

/// One query for `name` (type A) to `server` from a new socket, waiting `wait` for the answer
/// with its id; prints the answer's rcode, addresses and source, or `{"error": "timeout"}`.
pub(super) fn dns_query(server: SocketAddr, name: &str, wait: Duration) -> Result<()> {
    let qname = Name::from_ascii(name).with_context(|| format!("name {name:?}"))?;
    let id = std::process::id() as u16
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0) as u16);
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(qname, RecordType::A));
    let s = UdpSocket::bind("0.0.0.0:0")?;
    let t = Instant::now();
    s.send_to(&m.to_vec()?, server)
        .with_context(|| format!("send to {server}"))?;
    let mut buf = [0u8; 4096];
    loop {
        let left = wait.saturating_sub(t.elapsed());
        if left.is_zero() {
            say(
                json!({"name": name, "server": server.to_string(), "error": "timeout",
                       "ms": t.elapsed().as_secs_f64() * 1e3}),
            );
            return Ok(());
        }
        s.set_read_timeout(Some(left))?;
        let (n, from) = match s.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if super::timed_out(&e) => continue,
            Err(e) => bail!("receive: {e}"),
        };
        let Ok(r) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if r.metadata.id != id || r.metadata.message_type != MessageType::Response {
            continue;
        }
        let ips: Vec<String> = r
            .answers
            .iter()
            .filter_map(|a| match &a.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        let rcode = r.metadata.response_code;
        say(json!({
            "name": name, "server": server.to_string(), "from": from.to_string(),
            "rcode": u16::from(rcode), "rcode_name": rcode.to_str(), "answers": ips,
            "ms": t.elapsed().as_secs_f64() * 1e3,
        }));
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    #[test]
    fn answers_known_names_only() {
        let recs = vec![
            parse_record("Allowed.vireo.test.=203.0.113.10").unwrap(),
            parse_record("other.vireo.test=203.0.113.11").unwrap(),
        ];
        assert_eq!(recs[0].0, "allowed.vireo.test");
        let (name, r) = answer(&query(7, "ALLOWED.vireo.test", RecordType::A), &recs, 5).unwrap();
        assert_eq!(name, "allowed.vireo.test");
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].ttl, 5);
        assert!(
            matches!(r.answers[0].data, RData::A(A(ip)) if ip == Ipv4Addr::new(203, 0, 113, 10))
        );
        let (_, r) = answer(&query(8, "nope.vireo.test", RecordType::A), &recs, 5).unwrap();
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.answers.is_empty());
        let (_, r) = answer(&query(9, "other.vireo.test", RecordType::AAAA), &recs, 5).unwrap();
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        // Responses and garbage get no answer.
        assert!(answer(&r.to_vec().unwrap(), &recs, 5).is_none());
        assert!(answer(b"\x00\x01junk", &recs, 5).is_none());
        assert!(parse_record("no-address").is_err());
        assert!(parse_record("a.test=300.1.1.1").is_err());
    }
}
