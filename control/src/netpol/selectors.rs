//! Label selectors (`matchLabels`, `matchExpressions`) and CIDR peers, as the model holds them.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use vireo_policy::identity::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use vireo_policy::rules::{split_source, with_source, CidrScope};
use vireo_policy::{Op, Peer, Requirement, Selector};

/// `k8s:io.kubernetes.pod.namespace = ns`.
pub(super) fn in_namespace(ns: &str) -> Selector {
    Selector::label(&format!("k8s:{NAMESPACE_LABEL}"), ns)
}

/// `k8s:io.kubernetes.pod.namespace` exists: pods only.
pub(super) fn any_pod() -> Selector {
    Selector {
        reqs: vec![Requirement {
            key: format!("k8s:{NAMESPACE_LABEL}"),
            op: Op::Exists,
        }],
    }
}

/// A label selector as the model holds it, keys rewritten by `key`.
pub(super) fn selector(
    ls: &LabelSelector,
    key: &dyn Fn(&str) -> String,
    path: &str,
) -> Result<Selector, String> {
    let mut reqs = Vec::new();
    let check = |k: &str| {
        let bare = split_source(k).1;
        if bare.is_empty() {
            Err(format!("{path}: empty label key {k:?}"))
        } else {
            Ok(())
        }
    };
    for (k, v) in ls.match_labels.iter().flatten() {
        check(k)?;
        reqs.push(Requirement {
            key: key(k),
            op: Op::In(vec![v.clone()]),
        });
    }
    for (i, e) in ls.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        check(&e.key).map_err(|_| format!("{at}: empty key"))?;
        let values = e.values.clone().unwrap_or_default();
        let op = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!("{at}: operator {} needs values", e.operator))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!("{at}: operator {} takes no values", e.operator))
            }
            "In" => Op::In(values),
            "NotIn" => Op::NotIn(values),
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            other => return Err(format!("{at}: unknown operator {other:?}")),
        };
        reqs.push(Requirement {
            key: key(&e.key),
            op,
        });
    }
    Ok(Selector { reqs })
}

/// Cilium keys: `source:key`, a bare key meaning `any:`.
pub(super) fn cilium_key(k: &str) -> String {
    with_source(k)
}

/// A pod label of a NetworkPolicy selector.
pub(super) fn pod_key(k: &str) -> String {
    format!("k8s:{k}")
}

/// A namespace label of a NetworkPolicy namespace selector, as pods carry it.
pub(super) fn namespace_key(k: &str) -> String {
    format!("k8s:{NAMESPACE_LABELS_PREFIX}{k}")
}

/// A CIDR as written (a bare address is a /32); IPv6 blocks are `Ok(None)`.
pub(super) fn cidr(s: &str, path: &str) -> Result<Option<Ipv4Net>, String> {
    let t = s.trim();
    let net = match t.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match t.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("{path}: {s:?} is not a CIDR")),
        },
    };
    Ok(match net {
        IpNet::V4(n) => Some(n.trunc()),
        IpNet::V6(_) => None,
    })
}

/// A CIDR peer with its holes; IPv6 is left out with a warning (`Ok(None)`).
pub(super) fn cidr_peer(
    net: &str,
    except: &[String],
    scope: CidrScope,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Peer>, String> {
    let Some(n) = cidr(net, path)? else {
        warnings.push(format!(
            "{path}: IPv6 block {net} is not supported (Vireo is IPv4 only); it matches nothing"
        ));
        return Ok(None);
    };
    let mut holes = Vec::new();
    for (i, x) in except.iter().enumerate() {
        if let Some(h) = cidr(x, &format!("{path}.except[{i}]"))? {
            holes.push(h);
        }
    }
    Ok(Some(Peer::Cidr {
        net: n,
        except: holes,
        scope,
    }))
}
