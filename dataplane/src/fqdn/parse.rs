//! DNS messages read with `hickory-proto` (never by hand): the names and IPv4 addresses a
//! response teaches, and the name a query asks for.
//!
//! hickory allocates while it decodes (names, record vectors): these functions run only on DNS
//! responses to endpoints whose egress has `toFQDNs` rules, and on DNS queries from endpoints
//! whose egress has `rules: dns`, never on other packets.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData};
use vireo_policy::FqdnSelector;

/// Why a DNS message taught nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// It does not decode (truncated, a compression pointer loop, a name too long, counts
    /// that do not match the records, ...).
    #[error("malformed DNS message")]
    Malformed,
    /// A query where a response was expected, or the other way round, or not a standard query
    /// (opcode), or no question.
    #[error("not a standard DNS query or response")]
    Unexpected,
    /// Over TCP, the message does not fit the segment (its length prefix says more).
    #[error("DNS message split over TCP segments")]
    Segmented,
}

/// One address learned for one name, with the record's TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The name (lower case, no trailing dot).
    pub name: String,
    /// The address.
    pub ip: Ipv4Addr,
    /// The A record's TTL in seconds.
    pub ttl: u32,
}

/// `name` as policy compares it: lower case, no trailing dot.
fn text(name: &Name) -> String {
    let mut s = name.to_ascii();
    if s.ends_with('.') {
        s.pop();
    }
    s.make_ascii_lowercase();
    s
}

/// The DNS message of a TCP segment's payload: the whole length-prefixed message, or
/// [`DnsError::Segmented`] when the segment holds only part of it. An empty payload (a bare
/// ACK) is `Ok(None)`.
pub fn tcp_message(payload: &[u8]) -> Result<Option<&[u8]>, DnsError> {
    if payload.is_empty() {
        return Ok(None);
    }
    let Some((len, rest)) = payload.split_first_chunk::<2>() else {
        return Err(DnsError::Segmented);
    };
    let len = usize::from(u16::from_be_bytes(*len));
    match rest.get(..len) {
        Some(m) if rest.len() == len => Ok(Some(m)),
        // More than one message in the segment: only the first one is read.
        Some(m) => Ok(Some(m)),
        None => Err(DnsError::Segmented),
    }
}

/// The answers of the DNS response `msg` whose names one of `sels` selects: for each A record
/// of the answer section, its owner name, the names whose CNAME chains (in the answer
/// section) lead to it, and the question's name (as Cilium associates every address of a
/// response with the name looked up). Appended to `out`; returns how many. A response with an
/// error code teaches nothing (`Ok(0)`).
pub fn response_answers(
    msg: &[u8],
    sels: &[FqdnSelector],
    out: &mut Vec<Answer>,
) -> Result<usize, DnsError> {
    let m = Message::from_vec(msg).map_err(|_| DnsError::Malformed)?;
    if m.metadata.message_type != MessageType::Response || m.metadata.op_code != OpCode::Query {
        return Err(DnsError::Unexpected);
    }
    if m.metadata.response_code != ResponseCode::NoError {
        return Ok(0);
    }
    let Some(q) = m.queries.first() else {
        return Err(DnsError::Unexpected);
    };
    let qname = text(&q.name);
    // CNAME edges (owner → target), lower-cased.
    let cnames: Vec<(String, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::CNAME(c) => Some((text(&r.name), text(&c.0))),
            _ => None,
        })
        .collect();
    let before = out.len();
    for r in &m.answers {
        let RData::A(a) = &r.data else { continue };
        // The owner, and every name whose chain reaches it (walking the edges backwards;
        // `names` doubles as the visited set, so a CNAME loop ends).
        let owner = text(&r.name);
        let mut names: Vec<&str> = Vec::with_capacity(2 + cnames.len());
        names.push(&qname);
        if owner != qname {
            names.push(&owner);
        }
        let mut i = 0;
        while i < names.len() {
            let target = names[i];
            for (from, to) in &cnames {
                if to == target && !names.contains(&from.as_str()) {
                    names.push(from);
                }
            }
            i += 1;
        }
        for n in &names {
            if sels.iter().any(|s| s.matches(n)) {
                out.push(Answer {
                    name: n.to_string(),
                    ip: a.0,
                    ttl: r.ttl,
                });
            }
        }
    }
    Ok(out.len() - before)
}

/// The name the DNS query `msg` asks for (lower case, no trailing dot). A query with other
/// than exactly one question is [`DnsError::Unexpected`]: no server answers those, and a
/// filter cannot tell which name to judge.
pub fn query_name(msg: &[u8]) -> Result<String, DnsError> {
    let m = Message::from_vec(msg).map_err(|_| DnsError::Malformed)?;
    if m.metadata.message_type != MessageType::Query || m.metadata.op_code != OpCode::Query {
        return Err(DnsError::Unexpected);
    }
    match m.queries.as_slice() {
        [q] => Ok(text(&q.name)),
        _ => Err(DnsError::Unexpected),
    }
}

/// Turns the DNS query `msg` into its refusal in place: the response bit and `rcode` (5
/// REFUSED or 3 NXDOMAIN) set, recursion available, the rest of the header (id, opcode, RD,
/// counts) and the question kept. Returns the header's old and new flags word (for the UDP
/// checksum), or `None` when `msg` is shorter than a header.
pub fn refuse_in_place(msg: &mut [u8], rcode: u8) -> Option<(u16, u16)> {
    let flags = msg.get_mut(2..4)?;
    let old = u16::from_be_bytes([flags[0], flags[1]]);
    // QR=1, keep opcode and RD, clear AA/TC, RA=1, Z/AD/CD clear, rcode.
    let new = 0x8000 | (old & 0x7900) | 0x0080 | u16::from(rcode & 0x0f);
    flags.copy_from_slice(&new.to_be_bytes());
    Some((old, new))
}

#[cfg(test)]
mod tests;
