//! Port entries: numbers, ranges, protocols, and named ports resolved against the pods.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use vireo_policy::{
    Action, Direction, Entity, FqdnSelector, Labels, Peer, PortName, PortRange, Proto, Selector,
};

use serde_yaml_ng::Value;

use super::cilium_schema::{CFqdn, CPortRule, StrOrNum};
use super::read::written;
use super::Builder;

/// Where a port entry's number comes from.
#[derive(Debug, Clone)]
pub(super) enum PortNum {
    /// Every port.
    All,
    /// `lo..=hi`.
    Range(u16, u16),
    /// A container port name.
    Named(PortName),
}

/// A port entry as read, before named ports are resolved.
#[derive(Debug, Clone)]
pub(super) struct PortIn {
    pub(super) num: PortNum,
    pub(super) proto: Proto,
    pub(super) l7: bool,
    /// `rules: dns` (an allow rule's): enforced by the fast path, so not `l7`.
    pub(super) dns: Vec<FqdnSelector>,
}

impl Builder<'_> {
    /// The port ranges of `list`. Named ports of ingress rules stay names: each endpoint's own
    /// container ports say which port a name is (as Cilium resolves them per endpoint). Those
    /// of egress rules are resolved against the pods the rule's destination selects: every
    /// number the name has on one of them.
    pub(super) fn resolve(
        &mut self,
        d: Direction,
        rule: &str,
        action: Action,
        peers: &[Peer],
        requires: &[Selector],
        list: Vec<PortIn>,
    ) -> Vec<PortRange> {
        let mut out: Vec<PortRange> = Vec::new();
        let mut push = |pr: PortRange| {
            if !out.contains(&pr) {
                out.push(pr);
            }
        };
        for p in list {
            let (lo, hi) = match p.num {
                PortNum::All => (0, 0),
                PortNum::Range(lo, hi) => (lo, hi),
                PortNum::Named(name) => {
                    let found = self.named(d, peers, requires, name.as_str(), p.proto);
                    let nums: BTreeSet<u16> = found.iter().map(|(n, _)| *n).collect();
                    if found.is_empty() {
                        let what = match action {
                            Action::Allow => "allows",
                            Action::Deny => "denies",
                        };
                        let w = format!(
                            "{rule}: named port {:?} matches no container port of the pods \
                             the rule's destination selects; it {what} nothing{}",
                            name.as_str(),
                            if d == Direction::Ingress {
                                " until one has it"
                            } else {
                                ""
                            }
                        );
                        self.warn(w);
                    }
                    if d == Direction::Ingress {
                        let mut pr = PortRange::named(name, p.proto);
                        pr.l7 = p.l7;
                        push(pr);
                        continue;
                    }
                    if nums.len() > 1 {
                        let list: Vec<String> = nums.iter().map(ToString::to_string).collect();
                        let w = format!(
                            "{rule}: named port {:?} is {} on different destination pods; \
                             each number applies to all of them (egress named ports resolve \
                             cluster-wide, as in Cilium)",
                            name.as_str(),
                            list.join(", ")
                        );
                        self.warn(w);
                    }
                    for (n, proto) in found {
                        push(PortRange {
                            lo: n,
                            hi: n,
                            proto,
                            l7: p.l7,
                            name: None,
                        });
                    }
                    continue;
                }
            };
            push(PortRange {
                lo,
                hi,
                proto: p.proto,
                l7: p.l7,
                name: None,
            });
        }
        out
    }

    /// (number, protocol) of the container ports called `name` on the destination's pods.
    fn named(
        &self,
        d: Direction,
        peers: &[Peer],
        requires: &[Selector],
        name: &str,
        proto: Proto,
    ) -> BTreeSet<(u16, Proto)> {
        let p = &self.policy;
        let dest = |l: &Labels| match d {
            Direction::Ingress => p.selects(l),
            Direction::Egress => peers.iter().any(|peer| match peer {
                Peer::Endpoints(s) => s.matches(l) && requires.iter().all(|r| r.matches(l)),
                Peer::Any => requires.iter().all(|r| r.matches(l)),
                Peer::Entity(Entity::Cluster | Entity::All) => true,
                Peer::Entity(_) | Peer::Cidr { .. } | Peer::Fqdn(_) => false,
            }),
        };
        self.pods
            .get()
            .iter()
            .filter(|pod| dest(&pod.labels))
            .flat_map(|pod| &pod.ports)
            .filter(|(n, _, pp)| n == name && (proto == Proto::Any || *pp == proto))
            .map(|(_, num, pp)| (*num, *pp))
            .collect()
    }
}

/// The `toPorts` of a rule; `None`: every port. `rules: dns` are enforced in egress allow
/// rules (`dns_ok`); elsewhere they are L7 rules like the others.
pub(super) fn cilium_ports(
    b: &mut Builder,
    to_ports: &Option<Vec<CPortRule>>,
    allow: bool,
    dns_ok: bool,
    rule: &str,
) -> Result<Option<Vec<PortIn>>, String> {
    let Some(list) = to_ports.as_ref().filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (j, pr) in list.iter().enumerate() {
        let path = format!("{rule}.toPorts[{j}]");
        let dns = match dns_rules(pr.rules.as_ref(), &path)? {
            Some(d) if allow && dns_ok => d,
            _ => Vec::new(),
        };
        let l7 = (dns.is_empty() && pr.rules.as_ref().is_some_and(|v| !v.is_null()))
            || written(pr.terminating_tls.as_ref())
            || written(pr.originating_tls.as_ref())
            || written(pr.server_names.as_ref())
            || written(pr.listener.as_ref());
        if l7 && !allow {
            b.warn(format!(
                "{path}: L7 settings in a deny rule are ignored; the whole port is denied"
            ));
        }
        let ports = pr.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            out.push(PortIn {
                num: PortNum::All,
                proto: Proto::Any,
                l7: l7 && allow,
                dns: dns.clone(),
            });
        }
        for (k, p) in ports.iter().enumerate() {
            let path = format!("{path}.ports[{k}]");
            let proto = match p.protocol.as_deref() {
                None => Proto::Any,
                Some(s) => match Proto::parse(s) {
                    Some(p) => p,
                    None if ["ICMP", "ICMPV6"].contains(&s.to_ascii_uppercase().as_str()) => {
                        if allow {
                            b.warn(format!(
                                "{path}: protocol {s} is not supported; it allows nothing \
                                 (fail closed)"
                            ));
                            continue;
                        }
                        b.warn(format!(
                            "{path}: protocol {s} is not supported; the deny covers every \
                             protocol (fail closed)"
                        ));
                        Proto::All
                    }
                    None => return Err(format!("{path}: unknown protocol {s:?}")),
                },
            };
            let num = match &p.port {
                None => None,
                Some(StrOrNum::Num(n)) => Some(Ok(*n)),
                Some(StrOrNum::Str(s)) if s.trim().is_empty() => None,
                Some(StrOrNum::Str(s)) => Some(s.trim().parse::<i64>().map_err(|_| s.clone())),
            };
            let num = match num {
                None | Some(Ok(0)) => {
                    if p.end_port.is_some_and(|e| e != 0) {
                        b.warn(format!("{path}: endPort without port is ignored"));
                    }
                    PortNum::All
                }
                Some(Ok(n)) => {
                    let lo = port_number(n, &format!("{path}.port"))?;
                    let hi = match p.end_port {
                        None | Some(0) => lo,
                        Some(e) => {
                            let hi = port_number(e, &format!("{path}.endPort"))?;
                            if hi < lo {
                                return Err(format!("{path}: endPort {hi} is below port {lo}"));
                            }
                            hi
                        }
                    };
                    PortNum::Range(lo, hi)
                }
                Some(Err(name)) => {
                    if p.end_port.is_some_and(|e| e != 0) {
                        return Err(format!("{path}: endPort with the named port {name:?}"));
                    }
                    // Cilium compares port names in lower case.
                    let name = PortName::parse(&name.to_ascii_lowercase())
                        .map_err(|e| format!("{path}.port: {e}"))?;
                    PortNum::Named(name)
                }
            };
            out.push(PortIn {
                num,
                proto,
                l7: l7 && allow,
                dns: dns.clone(),
            });
        }
    }
    Ok(Some(out))
}

/// The selectors of `rules: {dns: [...]}`, when `rules` holds DNS rules only and at least one
/// (the fast path enforces those); `None` for anything else (other L7 rules, or none), which
/// stays fail-closed L7. A DNS entry that cannot be read is an error.
fn dns_rules(rules: Option<&Value>, path: &str) -> Result<Option<Vec<FqdnSelector>>, String> {
    let Some(Value::Mapping(m)) = rules else {
        return Ok(None);
    };
    let written: Vec<&Value> = m
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, _)| k)
        .collect();
    if written.len() != 1 || written[0].as_str() != Some("dns") {
        return Ok(None);
    }
    let list: Vec<CFqdn> = serde_yaml_ng::from_value(m["dns"].clone())
        .map_err(|e| format!("{path}.rules.dns: {e}"))?;
    if list.is_empty() {
        return Ok(None);
    }
    list.iter()
        .enumerate()
        .map(|(k, f)| f.selector(&format!("{path}.rules.dns[{k}]")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A port number 1..=65535.
pub(super) fn port_number(n: i64, path: &str) -> Result<u16, String> {
    crate::services::port_number(n).ok_or_else(|| format!("{path}: {n} is not a port number"))
}

/// The `ports` of a NetworkPolicy rule; `None`: every port.
pub(super) fn np_ports(
    rule: &str,
    ports: Option<Vec<NetworkPolicyPort>>,
) -> Result<Option<Vec<PortIn>>, String> {
    let ports = ports.unwrap_or_default();
    let ports = if ports.is_empty() {
        None
    } else {
        let mut list = Vec::new();
        for (k, p) in ports.iter().enumerate() {
            let path = format!("{rule}.ports[{k}]");
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                s if s.eq_ignore_ascii_case("TCP") => Proto::Tcp,
                s if s.eq_ignore_ascii_case("UDP") => Proto::Udp,
                s if s.eq_ignore_ascii_case("SCTP") => Proto::Sctp,
                other => return Err(format!("{path}: unknown protocol {other:?}")),
            };
            let num = match &p.port {
                None => {
                    if p.end_port.is_some() {
                        return Err(format!("{path}: endPort without port"));
                    }
                    PortNum::All
                }
                Some(IntOrString::Int(n)) => np_range(i64::from(*n), p.end_port, &path)?,
                Some(IntOrString::String(s)) => match s.trim().parse::<i64>() {
                    Ok(n) => np_range(n, p.end_port, &path)?,
                    Err(_) if s.trim().is_empty() => return Err(format!("{path}: empty port")),
                    Err(_) => {
                        if p.end_port.is_some() {
                            return Err(format!("{path}: endPort with the named port {s:?}"));
                        }
                        let name =
                            PortName::parse(s.trim()).map_err(|e| format!("{path}.port: {e}"))?;
                        PortNum::Named(name)
                    }
                },
            };
            list.push(PortIn {
                num,
                proto,
                l7: false,
                dns: Vec::new(),
            });
        }
        Some(list)
    };
    Ok(ports)
}

/// `port` (and `endPort`) of a NetworkPolicy port.
pub(super) fn np_range(port: i64, end: Option<i32>, path: &str) -> Result<PortNum, String> {
    let lo = port_number(port, &format!("{path}.port"))?;
    let hi = match end {
        None => lo,
        Some(e) => {
            let hi = port_number(i64::from(e), &format!("{path}.endPort"))?;
            if hi < lo {
                return Err(format!("{path}: endPort {hi} is below port {lo}"));
            }
            hi
        }
    };
    Ok(PortNum::Range(lo, hi))
}
