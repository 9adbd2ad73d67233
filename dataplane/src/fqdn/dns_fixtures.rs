//! DNS messages for tests, benchmarks and the fuzz target, built with `hickory-proto`.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

fn name(n: &str) -> Name {
    Name::from_ascii(n).expect("a test name")
}

/// A query for `qname` (type A), id `id`.
pub fn query(id: u16, qname: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), RecordType::A));
    m.to_vec().expect("encodes")
}

/// A response to a query for `qname`: the CNAME chain `cnames` (owner, target) first, then
/// the A records `(owner, address, ttl)`.
pub fn response(
    id: u16,
    qname: &str,
    cnames: &[(&str, &str)],
    a: &[(&str, Ipv4Addr, u32)],
) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(Query::query(name(qname), RecordType::A));
    for (from, to) in cnames {
        m.add_answer(Record::from_rdata(
            name(from),
            300,
            RData::CNAME(CNAME(name(to))),
        ));
    }
    for (owner, ip, ttl) in a {
        m.add_answer(Record::from_rdata(name(owner), *ttl, RData::A(A(*ip))));
    }
    m.to_vec().expect("encodes")
}

/// A response with error `rcode` (e.g. NXDOMAIN) and no answer.
pub fn error_response(id: u16, qname: &str, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::error_msg(id, OpCode::Query, rcode);
    m.add_query(Query::query(name(qname), RecordType::A));
    m.to_vec().expect("encodes")
}
