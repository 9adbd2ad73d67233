//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (cilium.io/v2) read into the model.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_yaml_ng::Value;
use vireo_policy::identity::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use vireo_policy::rules::{split_source, CidrScope};
use vireo_policy::{Action, Direction, Entity, Peer, Policy, Proto, Selector};

use super::cilium_schema::{field, CEgress, CIngress, CRule, CSpec};
use super::icmp::read_icmps;
use super::ports::{cilium_ports, PortIn, PortNum};
use super::read::{malformed, read, split_path, written, Unknown};
use super::selectors::{any_pod, cidr_peer, cilium_key, in_namespace, selector};
use super::{fail_closed, Builder, Obj, Pods, RuleIn};

/// The policies of one Cilium object: one per `spec` and per entry of `specs`.
pub(super) fn cilium_policy(obj: &Obj, pods: &Pods) -> Vec<Result<Policy, String>> {
    let v = &obj.doc.value;
    let mut out = Vec::new();
    if let Value::Mapping(m) = v {
        let unknown: Vec<String> = m
            .keys()
            .filter_map(Value::as_str)
            .filter(|k| !["apiVersion", "kind", "metadata", "spec", "specs", "status"].contains(k))
            .map(str::to_string)
            .collect();
        if !unknown.is_empty() {
            out.push(Err(format!(
                "unknown fields ignored: {}",
                unknown.join(", ")
            )));
        }
    }
    let spec = v.get("spec").filter(|s| !s.is_null());
    let specs = v.get("specs").filter(|s| !s.is_null());
    if spec.is_none() && specs.is_none() {
        out.push(Err("neither spec nor specs: nothing to enforce".into()));
    }
    if let Some(s) = spec {
        out.push(cilium_spec(obj, pods, s, ""));
    }
    match specs {
        None => {}
        Some(Value::Sequence(list)) => {
            for (i, s) in list.iter().enumerate() {
                out.push(cilium_spec(obj, pods, s, &format!("specs[{i}].")));
            }
        }
        Some(_) => out.push(Err(
            "specs is not a list; dropped (no subject to enforce on)".into(),
        )),
    }
    out
}

/// The context selectors of one spec are read in.
pub(super) struct CScope<'a> {
    /// The policy's namespace (`None`: cluster-wide).
    ns: Option<&'a str>,
    /// The subject selects `reserved:init`: peers get no implicit namespace.
    matches_init: bool,
}

impl CScope<'_> {
    /// A peer or requirement selector, limited as Cilium limits it (module doc).
    fn scope(&self, sel: Selector, requires: bool) -> Selector {
        let names = |pred: &dyn Fn(&str) -> bool| {
            sel.reqs.iter().any(|r| {
                let (src, k) = split_source(&r.key);
                matches!(src, "k8s" | "any") && pred(k)
            })
        };
        if !requires
            && sel
                .reqs
                .iter()
                .any(|r| split_source(&r.key).0 == "reserved")
        {
            return sel;
        }
        if names(&|k| k == NAMESPACE_LABEL) || self.matches_init {
            return sel;
        }
        match self.ns {
            None => sel.and(&any_pod()),
            Some(_) if names(&|k| k.starts_with(NAMESPACE_LABELS_PREFIX)) => sel,
            Some(ns) => sel.and(&in_namespace(ns)),
        }
    }
}

/// The subject of a spec: (endpoint selector, node selector).
pub(super) fn cilium_subject(
    obj: &Obj,
    es: Option<&LabelSelector>,
    nsel: Option<&LabelSelector>,
    prefix: &str,
    warnings: &mut Vec<String>,
) -> Result<(Selector, Option<Selector>), String> {
    let ns = obj.namespace();
    match (es, nsel) {
        (Some(_), Some(_)) => Err(format!(
            "{prefix}endpointSelector and nodeSelector are exclusive"
        )),
        (None, None) => Err(format!(
            "{prefix}endpointSelector (or nodeSelector) is missing"
        )),
        (None, Some(n)) => {
            if ns.is_some() {
                return Err(format!(
                    "{prefix}nodeSelector is only valid in a CiliumClusterwideNetworkPolicy"
                ));
            }
            let sel = selector(n, &cilium_key, &format!("{prefix}nodeSelector"))?;
            Ok((Selector::all(), Some(sel)))
        }
        (Some(e), None) => {
            let mut e = e.clone();
            if let Some(ns) = ns {
                // As Cilium: the subject always applies in the policy's namespace.
                let key = format!("k8s:{NAMESPACE_LABEL}");
                if let Some(v) = e.match_labels.as_mut().and_then(|m| m.remove(&key)) {
                    if v != ns {
                        warnings.push(format!(
                            "{prefix}endpointSelector: {key}={v} replaced by the policy's \
                             namespace {ns}"
                        ));
                    }
                }
            }
            let sel = selector(&e, &cilium_key, &format!("{prefix}endpointSelector"))?;
            Ok(match ns {
                Some(ns) => (sel.and(&in_namespace(ns)), None),
                None => (sel, None),
            })
        }
    }
}

/// One spec.
pub(super) fn cilium_spec(
    obj: &Obj,
    pods: &Pods,
    raw: &Value,
    prefix: &str,
) -> Result<Policy, String> {
    let (spec, unknown) = match read::<CSpec>(raw) {
        Ok(s) => s,
        Err(e) => {
            let reason = malformed(&e, prefix);
            return cilium_fail_closed(obj, raw, prefix, &reason);
        }
    };
    match cilium_read(obj, pods, raw, &spec, unknown, prefix) {
        Ok(p) => Ok(p),
        Err(reason) => cilium_fail_closed(obj, raw, prefix, &reason),
    }
}

/// A malformed spec: its subject, if readable, keeps the default deny it would have enforced.
pub(super) fn cilium_fail_closed(
    obj: &Obj,
    raw: &Value,
    prefix: &str,
    reason: &str,
) -> Result<Policy, String> {
    let has = |k: &str| raw.get(k).is_some();
    let dd = |d: &str| {
        raw.get("enableDefaultDeny")
            .and_then(|x| x.get(d))
            .and_then(Value::as_bool)
    };
    let enforce = |allow: &str, deny: &str, dd: Option<bool>| {
        has(deny) || dd == Some(true) || (has(allow) && dd != Some(false))
    };
    let dirs = (
        enforce("ingress", "ingressDeny", dd("ingress")),
        enforce("egress", "egressDeny", dd("egress")),
    );
    let read = |k: &str| {
        raw.get(k)
            .filter(|v| !v.is_null())
            .map(|v| serde_yaml_ng::from_value::<LabelSelector>(v.clone()).ok())
    };
    let mut ignored = Vec::new();
    let subject = match (read("endpointSelector"), read("nodeSelector")) {
        (Some(Some(es)), None) => cilium_subject(obj, Some(&es), None, prefix, &mut ignored).ok(),
        (None, Some(Some(ns))) => cilium_subject(obj, None, Some(&ns), prefix, &mut ignored).ok(),
        _ => None,
    };
    fail_closed(obj.origin(""), subject, obj.namespace(), dirs, reason)
}

pub(super) const CILIUM_SECTIONS: [&str; 4] = ["ingress", "ingressDeny", "egress", "egressDeny"];

/// Reads a well-typed spec (`unknown`: the paths of the fields its read did not know); `Err`
/// makes it fail closed.
pub(super) fn cilium_read(
    obj: &Obj,
    pods: &Pods,
    raw: &Value,
    spec: &CSpec,
    unknown: Vec<String>,
    prefix: &str,
) -> Result<Policy, String> {
    let unknown = Unknown::of(
        unknown,
        &CILIUM_SECTIONS,
        &["endpointSelector", "nodeSelector"],
    );
    let mut warnings = Vec::new();
    if !unknown.other.is_empty() {
        warnings.push(format!(
            "{prefix}unknown fields ignored: {}",
            unknown.other.join(", ")
        ));
    }
    let (subject, node_selector) = cilium_subject(
        obj,
        spec.endpoint_selector.as_ref(),
        spec.node_selector.as_ref(),
        prefix,
        &mut warnings,
    )?;
    if !unknown.subject.is_empty() {
        return Err(format!(
            "{prefix}unknown fields in the subject's selector ({}): it may select more than \
             meant",
            unknown.subject.join(", ")
        ));
    }
    let dd = spec.enable_default_deny.as_ref();
    let enforce = |allow: bool, deny: bool, dd: Option<bool>| match dd {
        Some(on) => on,
        None => allow || deny,
    };
    let policy = Policy {
        origin: obj.origin(""),
        subject,
        node_selector,
        enforce_ingress: enforce(
            spec.ingress.is_some() || raw.get("ingress").is_some(),
            spec.ingress_deny.is_some() || raw.get("ingressDeny").is_some(),
            dd.and_then(|d| d.ingress),
        ),
        enforce_egress: enforce(
            spec.egress.is_some() || raw.get("egress").is_some(),
            spec.egress_deny.is_some() || raw.get("egressDeny").is_some(),
            dd.and_then(|d| d.egress),
        ),
        ingress: Vec::new(),
        egress: Vec::new(),
        warnings,
    };
    let scope = CScope {
        ns: obj.namespace(),
        matches_init: policy.subject.reqs.iter().any(|r| r.key == "reserved:init"),
    };
    let mut b = Builder { pods, policy };
    fn ingress(l: &Option<Vec<CIngress>>) -> Vec<CRule<'_>> {
        l.iter().flatten().map(CIngress::common).collect()
    }
    fn egress(l: &Option<Vec<CEgress>>) -> Vec<CRule<'_>> {
        l.iter().flatten().map(CEgress::common).collect()
    }
    let sections = [
        (
            "ingress",
            Direction::Ingress,
            Action::Allow,
            ingress(&spec.ingress),
        ),
        (
            "ingressDeny",
            Direction::Ingress,
            Action::Deny,
            ingress(&spec.ingress_deny),
        ),
        (
            "egress",
            Direction::Egress,
            Action::Allow,
            egress(&spec.egress),
        ),
        (
            "egressDeny",
            Direction::Egress,
            Action::Deny,
            egress(&spec.egress_deny),
        ),
    ];
    for (section, d, action, rules) in &sections {
        let (d, action) = (*d, *action);
        // Requirements of the whole section.
        let mut requires = Vec::new();
        let mut broadened = false;
        let mut first = None;
        for (i, r) in rules.iter().enumerate() {
            let req_field = field(d, "Requires");
            for (j, ls) in r.requires.iter().flatten().enumerate() {
                first.get_or_insert_with(|| format!("{prefix}{section}[{i}].{req_field}"));
                let path = format!("{prefix}{section}[{i}].{req_field}[{j}]");
                let sel = selector(ls, &cilium_key, &path)?;
                requires.push(scope.scope(sel, true));
            }
            broadened |= unknown
                .rule(section, i)
                .iter()
                .any(|p| p.starts_with(&req_field));
        }
        if broadened && action == Action::Allow {
            b.warn(format!(
                "{prefix}{section}: unknown fields in {}: every rule of the section allows \
                 nothing (fail closed)",
                field(d, "Requires")
            ));
            continue;
        }
        for (i, r) in rules.iter().enumerate() {
            let rule = format!("{prefix}{section}[{i}]");
            let unknown = unknown.rule(section, i);
            if let Some(rin) = cilium_rule(&mut b, &scope, r, action, rule, unknown)? {
                b.add(d, rin, &requires);
            }
        }
        if let Some(first) = first {
            b.require(d, action, requires, first);
        }
    }
    Ok(b.policy)
}

/// One rule; `Ok(None)` when it allows nothing.
pub(super) fn cilium_rule(
    b: &mut Builder,
    scope: &CScope,
    r: &CRule,
    action: Action,
    rule: String,
    unknown: &[String],
) -> Result<Option<RuleIn>, String> {
    let d = r.dir;
    let allow = action == Action::Allow;
    let mut any_peer = false;
    let mut all_ports = false;
    if !unknown.is_empty() {
        if allow {
            b.warn(format!(
                "{rule}: unknown fields ({}): this rule allows nothing (fail closed)",
                unknown.join(", ")
            ));
            return Ok(None);
        }
        let peer_fields =
            ["Endpoints", "Requires", "Entities", "CIDR", "CIDRSet"].map(|f| field(d, f));
        for p in unknown {
            let head = split_path(p).0;
            if head == "toPorts" {
                all_ports = true;
            } else if !peer_fields.iter().any(|f| f == head) {
                any_peer = true;
            }
        }
        b.warn(format!(
            "{rule}: unknown fields ({}): the deny is widened to {} (fail closed)",
            unknown.join(", "),
            match (any_peer, all_ports) {
                (true, true) => "every peer and port",
                (true, false) => "every peer",
                (false, true) => "every port",
                (false, false) => "what the rest of the rule selects",
            }
        ));
    }
    if written(r.authentication.as_ref()) {
        if allow {
            b.warn(format!(
                "{rule}: authentication is not supported: this rule allows nothing (fail closed)"
            ));
            return Ok(None);
        }
        b.warn(format!("{rule}: authentication ignored in a deny rule"));
    }
    // `icmps` (module `icmp`): the ICMP types, ORed with `toPorts` as the rule's L4 part.
    let icmps = match r.icmps.as_ref().filter(|v| written(Some(v))) {
        None => None,
        Some(v) => {
            let i = read_icmps(v, &rule);
            for w in i.warnings {
                b.warn(w);
            }
            match (i.unreadable, allow) {
                (Some(e), true) => {
                    b.warn(format!("{e}: this rule allows nothing (fail closed)"));
                    return Ok(None);
                }
                (Some(e), false) => {
                    b.warn(format!(
                        "{e}: the deny covers every protocol and port (fail closed)"
                    ));
                    all_ports = true;
                    None
                }
                (None, _) => Some(i.ports),
            }
        }
    };

    let mut peers = Vec::new();
    let mut l3 = false;
    let ep_field = field(d, "Endpoints");
    for (j, ls) in r.endpoints.iter().flatten().enumerate() {
        l3 = true;
        let sel = selector(ls, &cilium_key, &format!("{rule}.{ep_field}[{j}]"))?;
        peers.push(Peer::Endpoints(scope.scope(sel, false)));
    }
    let ent_field = field(d, "Entities");
    for (j, e) in r.entities.iter().flatten().enumerate() {
        l3 = true;
        let path = format!("{rule}.{ent_field}[{j}]");
        if let Some(ent) = Entity::parse(e) {
            peers.push(Peer::Entity(ent));
            continue;
        }
        // An entity Vireo does not know: nothing in an allow, everyone in a deny.
        if allow {
            b.warn(format!(
                "{path}: unknown entity {e:?}; it allows nothing (fail closed)"
            ));
        } else {
            b.warn(format!(
                "{path}: unknown entity {e:?}; the deny covers every peer instead (fail closed)"
            ));
            peers.push(Peer::Entity(Entity::All));
        }
    }
    let cidr_field = field(d, "CIDR");
    let mut ignored = Vec::new();
    // Cilium's meaning (addresses outside the cluster), or nodes too with
    // `policy-cidr-match-mode: nodes`.
    let scope = if b.pods.m.read.cidr_match_nodes {
        CidrScope::Nodes
    } else {
        CidrScope::World
    };
    for (j, c) in r.cidr.iter().flatten().enumerate() {
        l3 = true;
        let path = format!("{rule}.{cidr_field}[{j}]");
        peers.extend(cidr_peer(c, &[], scope, &path, &mut ignored)?);
    }
    let set_field = field(d, "CIDRSet");
    for (j, c) in r.cidr_set.iter().flatten().enumerate() {
        l3 = true;
        let path = format!("{rule}.{set_field}[{j}]");
        match &c.cidr {
            Some(net) => {
                let except = c.except.clone().unwrap_or_default();
                peers.extend(cidr_peer(net, &except, scope, &path, &mut ignored)?);
            }
            None if written(c.cidr_group_ref.as_ref())
                || written(c.cidr_group_selector.as_ref()) =>
            {
                if allow {
                    b.warn(format!(
                        "{path}: CIDR groups are not supported; it allows nothing (fail closed)"
                    ));
                } else {
                    b.warn(format!(
                        "{path}: CIDR groups are not supported; the deny covers world instead \
                         (fail closed)"
                    ));
                    peers.push(Peer::Entity(Entity::World));
                }
            }
            None => return Err(format!("{path}: cidr is missing")),
        }
    }
    for w in ignored {
        b.warn(w);
    }
    if let Some(list) = r.fqdns {
        // `toFQDNs: []` is written but selects nothing, as in Cilium.
        l3 = true;
        if allow {
            for (j, f) in list.iter().enumerate() {
                let sel = f.selector(&format!("{rule}.toFQDNs[{j}]"))?;
                peers.push(Peer::Fqdn(sel));
            }
        } else if !list.is_empty() {
            // Cilium's egressDeny has no toFQDNs: the deny covers every address outside the
            // cluster instead.
            b.warn(format!(
                "{rule}: toFQDNs in a deny rule is not supported; the deny covers world \
                 instead (fail closed)"
            ));
            peers.push(Peer::Entity(Entity::World));
        }
    }
    for (f, superset) in &r.unsupported {
        l3 = true;
        if allow {
            b.warn(format!(
                "{rule}: {f} is not supported; it allows nothing (fail closed)"
            ));
        } else {
            b.warn(format!(
                "{rule}: {f} is not supported; the deny covers a superset instead (fail closed)"
            ));
            peers.extend(superset.iter().cloned());
        }
    }
    if any_peer {
        peers = vec![Peer::Any];
        l3 = true;
    }

    let ports = if all_ports {
        // `Some` keeps a rule without peers an L4-only (any peer) rule.
        Some(vec![PortIn {
            num: PortNum::All,
            proto: Proto::All,
            l7: false,
            dns: Vec::new(),
        }])
    } else {
        match (
            icmps,
            cilium_ports(b, r.to_ports, allow, d == Direction::Egress, &rule)?,
        ) {
            (None, to_ports) => to_ports,
            // `icmps` alone: those types, no other protocol.
            (Some(icmp), None) => Some(icmp),
            (Some(icmp), Some(mut to_ports)) => {
                to_ports.extend(icmp);
                Some(to_ports)
            }
        }
    };
    Ok(Some(RuleIn {
        action,
        rule,
        peers,
        l3,
        ports,
    }))
}
