//! Named ports: a container port's name (Kubernetes' `IANA_SVC_NAME`, at most 15 characters,
//! so it fits a `Copy` value the fast path can compare), and an endpoint's names for its
//! ports.
//!
//! Ingress rules keep the names they were given: an endpoint's own container ports say which
//! port a name is, for that endpoint alone, as Cilium resolves ingress named ports per
//! endpoint. Egress named ports are resolved when the policy is read (against the pods the
//! rule's destination selects).

use std::fmt;

use serde::{Serialize, Serializer};

use crate::rules::ip_proto;

/// The longest port name Kubernetes accepts.
pub const PORT_NAME_MAX: usize = 15;

/// A container port name: 1 to 15 of `a-z`, `0-9` and `-`, with a letter, no `-` at either
/// end and no `--` (Kubernetes' `IsValidPortName`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortName {
    len: u8,
    bytes: [u8; PORT_NAME_MAX],
}

impl PortName {
    /// Reads a port name, or says what is wrong with it.
    pub fn parse(s: &str) -> Result<PortName, String> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > PORT_NAME_MAX {
            return Err(format!(
                "port name {s:?} must have 1 to {PORT_NAME_MAX} characters"
            ));
        }
        if !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        {
            return Err(format!(
                "port name {s:?} may hold only lowercase letters, digits and '-'"
            ));
        }
        if !b.iter().any(u8::is_ascii_lowercase) {
            return Err(format!("port name {s:?} must contain a letter"));
        }
        if b[0] == b'-' || b[b.len() - 1] == b'-' || s.contains("--") {
            return Err(format!(
                "port name {s:?} may not start or end with '-' nor hold \"--\""
            ));
        }
        let mut bytes = [0; PORT_NAME_MAX];
        bytes[..b.len()].copy_from_slice(b);
        Ok(PortName {
            len: b.len() as u8,
            bytes,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Display for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for PortName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An endpoint's named container ports: which name each (protocol, port) has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortNames {
    /// (IP protocol, port, name), sorted.
    list: Vec<(u8, u16, PortName)>,
}

impl PortNames {
    /// The names of `ports` ((name, port, IP protocol), as a pod's `containers[].ports[]` give
    /// them; TCP, UDP or SCTP). An unnamed port, or a name Kubernetes would not accept, is
    /// left out.
    pub fn new<'a>(ports: impl IntoIterator<Item = (&'a str, u16, u8)>) -> PortNames {
        let mut list: Vec<(u8, u16, PortName)> = ports
            .into_iter()
            .filter(|(_, _, p)| matches!(*p, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP))
            .filter_map(|(name, port, p)| Some((p, port, PortName::parse(name).ok()?)))
            .collect();
        list.sort();
        list.dedup();
        PortNames { list }
    }

    /// The name of port `port` of IP protocol `proto`, if it has one.
    #[inline]
    pub fn name_of(&self, proto: u8, port: u16) -> Option<PortName> {
        self.list
            .iter()
            .find(|(p, n, _)| *p == proto && *n == port)
            .map(|(_, _, name)| *name)
    }

    /// No port has a name.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_kubernetes_accepts() {
        for ok in ["http", "serve-80-tcp", "a", "h2c", "metrics-port-15"] {
            assert_eq!(PortName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "HTTP",
            "80",
            "-http",
            "http-",
            "a--b",
            "sixteen-chars-xx",
            "ht tp",
        ] {
            assert!(PortName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            serde_json::to_string(&PortName::parse("http").unwrap()).unwrap(),
            "\"http\""
        );
    }

    #[test]
    fn an_endpoint_names_its_ports_by_protocol() {
        let n = PortNames::new([
            ("http", 8080, ip_proto::TCP),
            ("dns", 53, ip_proto::UDP),
            ("dns-tcp", 53, ip_proto::TCP),
            ("NOPE", 9, ip_proto::TCP),
            ("", 10, ip_proto::TCP),
            ("icmp", 0, ip_proto::ICMP),
        ]);
        let name = |p, port| n.name_of(p, port).map(|x| x.to_string());
        assert_eq!(name(ip_proto::TCP, 8080).as_deref(), Some("http"));
        assert_eq!(name(ip_proto::UDP, 8080), None);
        assert_eq!(name(ip_proto::UDP, 53).as_deref(), Some("dns"));
        assert_eq!(name(ip_proto::TCP, 53).as_deref(), Some("dns-tcp"));
        assert_eq!(name(ip_proto::TCP, 9), None);
        assert!(PortNames::default().is_empty());
    }
}
