//! Kubernetes NetworkPolicy (networking.k8s.io/v1) read into the model.

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_yaml_ng::Value;
use vireo_policy::rules::CidrScope;
use vireo_policy::{Action, Direction, Peer, Policy, Selector};

use super::cilium_schema::field;
use super::ports::np_ports;
use super::read::{malformed, read, Unknown};
use super::selectors::{any_pod, cidr_peer, in_namespace, namespace_key, pod_key, selector};
use super::{fail_closed, Builder, Obj, Pods, RuleIn};

/// One NetworkPolicy.
pub(super) fn network_policy(obj: &Obj, pods: &Pods) -> Result<Policy, String> {
    let (np, unknown) = match read::<NetworkPolicy>(&obj.doc.value) {
        Ok(np) => np,
        Err(e) => {
            let reason = malformed(&e, "");
            let reason = reason.strip_prefix("spec.").unwrap_or(&reason).to_string();
            return np_fail_closed(obj, &reason);
        }
    };
    match np_read(obj, pods, np, unknown) {
        Ok(p) => Ok(p),
        Err(reason) => np_fail_closed(obj, &reason),
    }
}

/// A malformed NetworkPolicy keeps the default deny it would have enforced.
pub(super) fn np_fail_closed(obj: &Obj, reason: &str) -> Result<Policy, String> {
    let ns = obj.namespace().unwrap_or("default");
    let spec = obj.doc.value.get("spec");
    let get = |k: &str| spec.and_then(|s| s.get(k)).filter(|v| !v.is_null());
    let types: Vec<String> = get("policyTypes")
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default();
    let egress = types.iter().any(|t| t == "egress") || get("egress").is_some();
    // Ingress unless the types say Egress only.
    let ingress = types.iter().any(|t| t == "ingress")
        || get("ingress").is_some()
        || !types.iter().any(|t| t == "egress");
    let subject = match get("podSelector") {
        None => Some(Selector::all()),
        Some(v) => serde_yaml_ng::from_value::<LabelSelector>(v.clone())
            .ok()
            .and_then(|ls| selector(&ls, &pod_key, "podSelector").ok()),
    };
    let subject = subject.map(|s| (s.and(&in_namespace(ns)), None));
    fail_closed(obj.origin(""), subject, Some(ns), (ingress, egress), reason)
}

/// Reads a well-typed NetworkPolicy (`unknown`: the paths of the fields its read did not know);
/// `Err` makes it fail closed.
pub(super) fn np_read(
    obj: &Obj,
    pods: &Pods,
    np: NetworkPolicy,
    unknown: Vec<String>,
) -> Result<Policy, String> {
    let ns = obj.namespace().unwrap_or("default").to_string();
    let mut warnings = Vec::new();
    let raw = obj.doc.value.get("spec").filter(|v| !v.is_null());
    if raw.is_none() {
        warnings.push("no spec: it selects every pod of its namespace for ingress".into());
    }
    let spec = np.spec.unwrap_or_default();
    // Only the spec's unknown fields are reported, as paths inside it.
    let unknown = unknown
        .iter()
        .filter_map(|p| p.strip_prefix("spec."))
        .map(str::to_string)
        .collect();
    let unknown = Unknown::of(unknown, &["ingress", "egress"], &["podSelector"]);
    if !unknown.other.is_empty() {
        warnings.push(format!(
            "unknown fields ignored: {}",
            unknown.other.join(", ")
        ));
    }
    if !unknown.subject.is_empty() {
        return Err(format!(
            "unknown fields in podSelector ({}): it may select more than meant",
            unknown.subject.join(", ")
        ));
    }
    let pod_sel = spec.pod_selector.clone().unwrap_or_default();
    let subject = selector(&pod_sel, &pod_key, "podSelector")?.and(&in_namespace(&ns));
    let ingress_rules = spec.ingress.unwrap_or_default();
    let egress_rules = spec.egress.unwrap_or_default();
    let (ingress, egress) = match spec.policy_types.as_deref() {
        None | Some([]) => (true, !egress_rules.is_empty()),
        Some(types) => {
            let (mut i, mut e) = (false, false);
            for (k, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => i = true,
                    "Egress" => e = true,
                    other => {
                        return Err(format!("policyTypes[{k}]: unknown policy type {other:?}"))
                    }
                }
            }
            (i, e)
        }
    };
    let mut b = Builder {
        pods,
        policy: Policy {
            origin: obj.origin(""),
            subject,
            node_selector: None,
            enforce_ingress: ingress,
            enforce_egress: egress,
            ingress: Vec::new(),
            egress: Vec::new(),
            warnings,
        },
    };
    let sections = [
        (
            Direction::Ingress,
            "ingress",
            ingress,
            ingress_rules
                .into_iter()
                .map(|r| (r.from, r.ports))
                .collect::<Vec<_>>(),
        ),
        (
            Direction::Egress,
            "egress",
            egress,
            egress_rules
                .into_iter()
                .map(|r| (r.to, r.ports))
                .collect::<Vec<_>>(),
        ),
    ];
    for (d, section, on, rules) in sections {
        if !on {
            if !rules.is_empty() {
                b.warn(format!(
                    "{section} rules ignored: policyTypes does not include {}",
                    if d == Direction::Ingress {
                        "Ingress"
                    } else {
                        "Egress"
                    }
                ));
            }
            continue;
        }
        for (i, (peers, ports)) in rules.into_iter().enumerate() {
            let rule = format!("{section}[{i}]");
            let unknown = unknown.rule(section, i);
            if !unknown.is_empty() {
                b.warn(format!(
                    "{rule}: unknown fields ({}): this rule allows nothing (fail closed)",
                    unknown.join(", ")
                ));
                continue;
            }
            let rin = np_rule(&mut b, &ns, d, rule, peers, ports)?;
            b.add(d, rin, &[]);
        }
    }
    Ok(b.policy)
}

/// One ingress or egress rule of a NetworkPolicy.
pub(super) fn np_rule(
    b: &mut Builder,
    ns: &str,
    d: Direction,
    rule: String,
    peers: Option<Vec<NetworkPolicyPeer>>,
    ports: Option<Vec<NetworkPolicyPort>>,
) -> Result<RuleIn, String> {
    let peer_field = field(d, "");
    let peers = peers.unwrap_or_default();
    let mut out = Vec::new();
    if peers.is_empty() {
        out.push(Peer::Any);
    }
    for (j, p) in peers.iter().enumerate() {
        let path = format!("{rule}.{peer_field}[{j}]");
        match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
            (Some(ip), None, None) => {
                let mut w = Vec::new();
                let except = ip.except.clone().unwrap_or_default();
                // Every address in the block, pods' and nodes' too (the upstream e2e tests
                // expect an ipBlock to select the pods it covers).
                out.extend(cidr_peer(
                    &ip.cidr,
                    &except,
                    CidrScope::All,
                    &format!("{path}.ipBlock"),
                    &mut w,
                )?);
                for w in w {
                    b.warn(w);
                }
            }
            (Some(_), _, _) => {
                return Err(format!(
                    "{path}: ipBlock cannot be combined with podSelector or namespaceSelector"
                ))
            }
            (None, None, None) => return Err(format!("{path}: empty peer")),
            (None, pod, nsel) => {
                let mut sel = Selector::all();
                if let Some(pod) = pod {
                    sel = sel.and(&selector(pod, &pod_key, &format!("{path}.podSelector"))?);
                }
                match nsel {
                    None => sel = sel.and(&in_namespace(ns)),
                    Some(n) => {
                        let nsel =
                            selector(n, &namespace_key, &format!("{path}.namespaceSelector"))?;
                        sel = sel.and(&nsel).and(&any_pod());
                    }
                }
                out.push(Peer::Endpoints(sel));
            }
        }
    }
    let ports = np_ports(&rule, ports)?;
    Ok(RuleIn {
        action: Action::Allow,
        rule,
        peers: out,
        l3: true,
        ports,
    })
}
