//! Cilium's `icmps` (ingress, egress and their deny sections): ICMP types a rule covers,
//! `icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest}]}]`.
//!
//! - `type` is a number 0..=255 (also as a string) or one of Cilium's IPv4 names
//!   ([`ICMPV4_TYPES`]); `family` is `IPv4` (the default) or `IPv6`.
//! - Vireo is IPv4-only: an `IPv6` field matches nothing here (a warning says so); it never
//!   widens an allow, and a deny loses nothing by it.
//! - A rule's `icmps` and its `toPorts` are ORed as its L4 part: a rule with `icmps` and no
//!   `toPorts` covers those ICMP types and no other protocol.
//! - A field that cannot be read (a bad name, a number out of range, an unknown key, a family
//!   other than IPv4/IPv6) makes an allow rule allow nothing, and a deny rule cover every
//!   protocol and port (fail closed), as an unknown field does.

use serde_yaml_ng::Value;
use vireo_policy::Proto;

use super::ports::{PortIn, PortNum};

/// Cilium's names of ICMPv4 types (its `pkg/policy/api` ICMP field names), with their numbers.
pub(super) const ICMPV4_TYPES: [(&str, u8); 14] = [
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// What a rule's `icmps` say.
#[derive(Debug, Default)]
pub(super) struct Icmps {
    /// The IPv4 types, as port entries of [`Proto::Icmp`] (one per distinct type).
    pub(super) ports: Vec<PortIn>,
    /// Warnings (IPv6 fields ignored).
    pub(super) warnings: Vec<String>,
    /// Why some field could not be read (the rule then fails closed).
    pub(super) unreadable: Option<String>,
}

/// Reads `icmps` (`rule` names the rule in messages).
pub(super) fn read_icmps(v: &Value, rule: &str) -> Icmps {
    let mut out = Icmps::default();
    let Some(list) = v.as_sequence() else {
        out.unreadable = Some(format!("{rule}.icmps is not a list"));
        return out;
    };
    let mut types: Vec<u8> = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let path = format!("{rule}.icmps[{i}]");
        let Some(m) = entry.as_mapping() else {
            out.unreadable = Some(format!("{path} is not a mapping"));
            return out;
        };
        if let Some(k) = m.keys().find(|k| k.as_str() != Some("fields")) {
            out.unreadable = Some(format!("{path}: unknown field {}", key_name(k)));
            return out;
        }
        let fields = match m.get("fields") {
            None | Some(Value::Null) => continue,
            Some(Value::Sequence(f)) => f,
            Some(_) => {
                out.unreadable = Some(format!("{path}.fields is not a list"));
                return out;
            }
        };
        for (j, f) in fields.iter().enumerate() {
            let path = format!("{path}.fields[{j}]");
            match field(f, &path) {
                Ok(Some(t)) => {
                    if !types.contains(&t) {
                        types.push(t);
                    }
                }
                Ok(None) => out.warnings.push(format!(
                    "{path}: an IPv6 ICMP type matches nothing (Vireo is IPv4-only)"
                )),
                Err(e) => {
                    out.unreadable = Some(e);
                    return out;
                }
            }
        }
    }
    out.ports = types
        .into_iter()
        .map(|t| PortIn {
            num: PortNum::Range(u16::from(t), u16::from(t)),
            proto: Proto::Icmp,
            l7: false,
            dns: Vec::new(),
        })
        .collect();
    out
}

/// One field: `Some(type)` for IPv4, `None` for IPv6.
fn field(f: &Value, path: &str) -> Result<Option<u8>, String> {
    let Some(m) = f.as_mapping() else {
        return Err(format!("{path} is not a mapping"));
    };
    if let Some(k) = m
        .keys()
        .find(|k| !matches!(k.as_str(), Some("type" | "family")))
    {
        return Err(format!("{path}: unknown field {}", key_name(k)));
    }
    let v6 = match m.get("family") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "IPv4" => false,
        Some(Value::String(s)) if s == "IPv6" => true,
        Some(other) => {
            return Err(format!(
                "{path}.family: {} is neither IPv4 nor IPv6",
                scalar(other)
            ))
        }
    };
    let ty = match m.get("type") {
        None | Some(Value::Null) => return Err(format!("{path}.type is missing")),
        Some(t) => t,
    };
    if v6 {
        // Its names and numbers are ICMPv6's; whatever it says, it matches nothing here.
        return Ok(None);
    }
    let number = |n: i64| {
        u8::try_from(n).map_err(|_| format!("{path}.type: {n} is not an ICMP type (0..255)"))
    };
    match ty {
        Value::Number(n) => match n.as_i64() {
            Some(n) => number(n).map(Some),
            None => Err(format!("{path}.type: {n} is not an ICMP type (0..255)")),
        },
        Value::String(s) => {
            if let Ok(n) = s.trim().parse::<i64>() {
                return number(n).map(Some);
            }
            match ICMPV4_TYPES.iter().find(|(name, _)| name == s) {
                Some((_, t)) => Ok(Some(*t)),
                None => Err(format!("{path}.type: unknown ICMPv4 type name {s:?}")),
            }
        }
        other => Err(format!(
            "{path}.type: {} is neither a number nor a name",
            scalar(other)
        )),
    }
}

fn key_name(k: &Value) -> String {
    k.as_str().map_or_else(|| scalar(k), str::to_string)
}

/// A value, for a message.
fn scalar(v: &Value) -> String {
    serde_yaml_ng::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(yaml: &str) -> Icmps {
        read_icmps(&serde_yaml_ng::from_str(yaml).unwrap(), "ingress[0]")
    }

    fn nums(i: &Icmps) -> Vec<u16> {
        i.ports
            .iter()
            .map(|p| match p.num {
                PortNum::Range(lo, hi) => {
                    assert_eq!(lo, hi);
                    assert_eq!(p.proto, Proto::Icmp);
                    lo
                }
                _ => panic!("not a type"),
            })
            .collect()
    }

    #[test]
    fn numbers_names_and_families_are_read() {
        let i = types(
            "[{fields: [{type: 8, family: IPv4}, {type: EchoRequest}, {type: Timestamp}, \
             {type: '0'}, {type: 255}]}, {fields: [{type: EchoReply}]}]",
        );
        assert_eq!(i.unreadable, None);
        assert_eq!(nums(&i), vec![8, 13, 0, 255]);
        assert!(i.warnings.is_empty());
        for (name, t) in ICMPV4_TYPES {
            let i = types(&format!("[{{fields: [{{type: {name}}}]}}]"));
            assert_eq!(nums(&i), vec![u16::from(t)], "{name}");
        }
    }

    #[test]
    fn an_ipv6_field_matches_nothing_with_a_warning() {
        let i = types("[{fields: [{type: 128, family: IPv6}, {type: EchoRequest, family: IPv6}]}]");
        assert_eq!(i.unreadable, None);
        assert!(i.ports.is_empty());
        assert_eq!(i.warnings.len(), 2);
        assert!(i.warnings[0].contains("IPv4-only"), "{:?}", i.warnings);
        let i = types("[{fields: [{type: 128, family: IPv6}, {type: 8}]}]");
        assert_eq!(nums(&i), vec![8]);
    }

    #[test]
    fn unreadable_fields_are_reported() {
        for (yaml, what) in [
            ("[{fields: [{type: Ping}]}]", "unknown ICMPv4 type name"),
            (
                "[{fields: [{type: echorequest}]}]",
                "unknown ICMPv4 type name",
            ),
            ("[{fields: [{type: 256}]}]", "not an ICMP type"),
            ("[{fields: [{type: -1}]}]", "not an ICMP type"),
            (
                "[{fields: [{type: 8, family: IPv5}]}]",
                "neither IPv4 nor IPv6",
            ),
            ("[{fields: [{family: IPv4}]}]", "type is missing"),
            ("[{fields: [{type: 8, code: 0}]}]", "unknown field code"),
            ("[{field: [{type: 8}]}]", "unknown field field"),
            ("[{fields: {type: 8}}]", "not a list"),
            ("{fields: [{type: 8}]}", "not a list"),
            ("[{fields: [{type: [8]}]}]", "neither a number nor a name"),
        ] {
            let i = types(yaml);
            let e = i.unreadable.unwrap_or_else(|| panic!("{yaml} read"));
            assert!(e.contains(what), "{yaml}: {e}");
        }
    }
}
