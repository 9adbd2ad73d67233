//! The CiliumNetworkPolicy schema (cilium.io/v2) as serde reads it: one `spec` and its rules.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;
use serde_yaml_ng::Value;
use vireo_policy::{Direction, Entity, FqdnSelector, Peer};

use super::read::written;

/// One `spec` (Cilium's `api.Rule`).
#[derive(Debug, Deserialize)]
#[serde(rename = "Rule")]
#[serde(rename_all = "camelCase")]
pub(super) struct CSpec {
    pub(super) endpoint_selector: Option<LabelSelector>,
    pub(super) node_selector: Option<LabelSelector>,
    pub(super) ingress: Option<Vec<CIngress>>,
    pub(super) ingress_deny: Option<Vec<CIngress>>,
    pub(super) egress: Option<Vec<CEgress>>,
    pub(super) egress_deny: Option<Vec<CEgress>>,
    pub(super) enable_default_deny: Option<CDefaultDeny>,
    /// Known (not reported as unknown), not enforced: `description`, `labels` and `log`.
    #[allow(dead_code)]
    pub(super) description: Option<Value>,
    #[allow(dead_code)]
    pub(super) labels: Option<Value>,
    #[allow(dead_code)]
    pub(super) log: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename = "EnableDefaultDeny")]
pub(super) struct CDefaultDeny {
    pub(super) ingress: Option<bool>,
    pub(super) egress: Option<bool>,
}

/// An `ingress` or `ingressDeny` entry.
#[derive(Debug, Deserialize)]
#[serde(rename = "IngressRule")]
#[serde(rename_all = "camelCase")]
pub(super) struct CIngress {
    pub(super) from_endpoints: Option<Vec<LabelSelector>>,
    pub(super) from_requires: Option<Vec<LabelSelector>>,
    pub(super) from_entities: Option<Vec<String>>,
    #[serde(rename = "fromCIDR")]
    pub(super) from_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    pub(super) from_cidr_set: Option<Vec<CCidrRule>>,
    pub(super) from_nodes: Option<Value>,
    pub(super) from_groups: Option<Value>,
    pub(super) to_ports: Option<Vec<CPortRule>>,
    pub(super) icmps: Option<Value>,
    pub(super) authentication: Option<Value>,
}

/// An `egress` or `egressDeny` entry.
#[derive(Debug, Deserialize)]
#[serde(rename = "EgressRule")]
#[serde(rename_all = "camelCase")]
pub(super) struct CEgress {
    pub(super) to_endpoints: Option<Vec<LabelSelector>>,
    pub(super) to_requires: Option<Vec<LabelSelector>>,
    pub(super) to_entities: Option<Vec<String>>,
    #[serde(rename = "toCIDR")]
    pub(super) to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet")]
    pub(super) to_cidr_set: Option<Vec<CCidrRule>>,
    #[serde(rename = "toFQDNs")]
    pub(super) to_fqdns: Option<Vec<CFqdn>>,
    pub(super) to_services: Option<Value>,
    pub(super) to_nodes: Option<Value>,
    pub(super) to_groups: Option<Value>,
    pub(super) to_ports: Option<Vec<CPortRule>>,
    pub(super) icmps: Option<Value>,
    pub(super) authentication: Option<Value>,
}

/// A `toFQDNs` entry or a `rules: dns` entry (Cilium's `FQDNSelector` / `PortRuleDNS`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename = "FQDNSelector")]
#[serde(rename_all = "camelCase")]
pub(super) struct CFqdn {
    pub(super) match_name: Option<String>,
    pub(super) match_pattern: Option<String>,
}

impl CFqdn {
    /// The selector, or why it cannot be read (neither or both fields, a bad name).
    pub(super) fn selector(&self, path: &str) -> Result<FqdnSelector, String> {
        match (&self.match_name, &self.match_pattern) {
            (Some(n), None) => FqdnSelector::name(n).map_err(|e| format!("{path}.matchName: {e}")),
            (None, Some(p)) => {
                FqdnSelector::pattern(p).map_err(|e| format!("{path}.matchPattern: {e}"))
            }
            (Some(_), Some(_)) => Err(format!(
                "{path}: matchName and matchPattern are mutually exclusive"
            )),
            (None, None) => Err(format!("{path}: neither matchName nor matchPattern")),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename = "CIDRRule")]
#[serde(rename_all = "camelCase")]
pub(super) struct CCidrRule {
    pub(super) cidr: Option<String>,
    pub(super) except: Option<Vec<String>>,
    pub(super) cidr_group_ref: Option<Value>,
    pub(super) cidr_group_selector: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename = "PortRule")]
#[serde(rename_all = "camelCase")]
pub(super) struct CPortRule {
    pub(super) ports: Option<Vec<CPort>>,
    pub(super) rules: Option<Value>,
    #[serde(rename = "terminatingTLS")]
    pub(super) terminating_tls: Option<Value>,
    #[serde(rename = "originatingTLS")]
    pub(super) originating_tls: Option<Value>,
    pub(super) server_names: Option<Value>,
    pub(super) listener: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename = "PortProtocol")]
#[serde(rename_all = "camelCase")]
pub(super) struct CPort {
    pub(super) port: Option<StrOrNum>,
    pub(super) end_port: Option<i64>,
    pub(super) protocol: Option<String>,
}

/// A port written as a number or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum StrOrNum {
    Num(i64),
    Str(String),
}

/// A rule of either direction, with its peer fields named for messages.
pub(super) struct CRule<'a> {
    pub(super) endpoints: &'a Option<Vec<LabelSelector>>,
    pub(super) requires: &'a Option<Vec<LabelSelector>>,
    pub(super) entities: &'a Option<Vec<String>>,
    pub(super) cidr: &'a Option<Vec<String>>,
    pub(super) cidr_set: &'a Option<Vec<CCidrRule>>,
    pub(super) to_ports: &'a Option<Vec<CPortRule>>,
    pub(super) icmps: &'a Option<Value>,
    pub(super) authentication: &'a Option<Value>,
    /// `toFQDNs` (egress only).
    pub(super) fqdns: Option<&'a Vec<CFqdn>>,
    /// Peer fields Vireo does not enforce that are written: (field, deny superset).
    pub(super) unsupported: Vec<(&'static str, Vec<Peer>)>,
    /// Field names: `from…` or `to…`.
    pub(super) dir: Direction,
}

impl CIngress {
    pub(super) fn common(&self) -> CRule<'_> {
        let mut unsupported = Vec::new();
        if written(self.from_nodes.as_ref()) {
            unsupported.push(("fromNodes", nodes()));
        }
        if written(self.from_groups.as_ref()) {
            unsupported.push(("fromGroups", vec![Peer::Entity(Entity::World)]));
        }
        CRule {
            endpoints: &self.from_endpoints,
            requires: &self.from_requires,
            entities: &self.from_entities,
            cidr: &self.from_cidr,
            cidr_set: &self.from_cidr_set,
            to_ports: &self.to_ports,
            icmps: &self.icmps,
            authentication: &self.authentication,
            fqdns: None,
            unsupported,
            dir: Direction::Ingress,
        }
    }
}

impl CEgress {
    pub(super) fn common(&self) -> CRule<'_> {
        let mut unsupported = Vec::new();
        if written(self.to_nodes.as_ref()) {
            unsupported.push(("toNodes", nodes()));
        }
        if written(self.to_groups.as_ref()) {
            unsupported.push(("toGroups", vec![Peer::Entity(Entity::World)]));
        }
        if written(self.to_services.as_ref()) {
            unsupported.push(("toServices", vec![Peer::Any]));
        }
        CRule {
            endpoints: &self.to_endpoints,
            requires: &self.to_requires,
            entities: &self.to_entities,
            cidr: &self.to_cidr,
            cidr_set: &self.to_cidr_set,
            to_ports: &self.to_ports,
            icmps: &self.icmps,
            authentication: &self.authentication,
            fqdns: self.to_fqdns.as_ref(),
            unsupported,
            dir: Direction::Egress,
        }
    }
}

/// Every node: the local host and the others.
pub(super) fn nodes() -> Vec<Peer> {
    vec![Peer::Entity(Entity::Host), Peer::Entity(Entity::RemoteNode)]
}

/// `from`/`to` + `what`.
pub(super) fn field(d: Direction, what: &str) -> String {
    match d {
        Direction::Ingress => format!("from{what}"),
        Direction::Egress => format!("to{what}"),
    }
}
