//! The resource types served: the built-in ones and those that CustomResourceDefinitions add.

use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// One resource type as the API serves it (a `group/plural`, served at one or more versions).
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// The API group, empty for the core group.
    pub group: String,
    /// The served versions, the preferred first.
    pub versions: Vec<String>,
    /// The plural name, as in URLs (`pods`).
    pub plural: String,
    /// The singular name (`pod`).
    pub singular: String,
    /// The kind (`Pod`).
    pub kind: String,
    /// The list kind (`PodList`).
    pub list_kind: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names for kubectl (`po`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Whether a `/status` subresource is served (and the main resource then ignores status).
    pub status_subresource: bool,
    /// Whether this type comes from a CustomResourceDefinition.
    pub from_crd: bool,
}

/// What identifies a resource type in the store, whatever its version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// The API group.
    pub group: String,
    /// The plural name.
    pub plural: String,
}

impl ResourceType {
    /// The key of this type in the store.
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    /// `apiVersion` at `version` (`v1`, `cilium.io/v2`).
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The preferred version.
    pub fn preferred_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    /// The name used in messages: `pods`, `ciliumnetworkpolicies.cilium.io`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The type a CustomResourceDefinition declares, or why the definition is not acceptable.
    pub fn from_crd(crd: &Value) -> Result<ResourceType, String> {
        let spec = crd.get("spec").ok_or("spec: Required value")?;
        let s = |v: Option<&Value>, what: &str| -> Result<String, String> {
            match v.and_then(Value::as_str) {
                Some(x) if !x.is_empty() => Ok(x.to_string()),
                _ => Err(format!("{what}: Required value")),
            }
        };
        let group = s(spec.get("group"), "spec.group")?;
        let names = spec.get("names").ok_or("spec.names: Required value")?;
        let plural = s(names.get("plural"), "spec.names.plural")?;
        let kind = s(names.get("kind"), "spec.names.kind")?;
        let singular = names
            .get("singular")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let list_kind = names
            .get("listKind")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{kind}List"));
        let strs = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let namespaced = match spec.get("scope").and_then(Value::as_str) {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            other => {
                return Err(format!(
                    "spec.scope: Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""
                ))
            }
        };
        let expected = format!("{plural}.{group}");
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if name != expected {
            return Err(format!(
                "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
            ));
        }
        let mut versions = Vec::new();
        let mut status_subresource = false;
        let vs = spec
            .get("versions")
            .and_then(Value::as_array)
            .filter(|v| !v.is_empty())
            .ok_or("spec.versions: Invalid value: must have exactly one version marked as storage version")?;
        let mut storage = 0;
        for v in vs {
            let vname = s(v.get("name"), "spec.versions[].name")?;
            if v.get("storage").and_then(Value::as_bool) == Some(true) {
                storage += 1;
            }
            if v.get("served").and_then(Value::as_bool) != Some(false) {
                if v.pointer("/subresources/status").is_some() {
                    status_subresource = true;
                }
                versions.push(vname);
            }
        }
        if storage != 1 {
            return Err(
                "spec.versions: Invalid value: must have exactly one version marked as storage version"
                    .into(),
            );
        }
        versions.sort_by(|a, b| version_priority(a, b));
        Ok(ResourceType {
            group,
            versions,
            plural,
            singular,
            kind,
            list_kind,
            namespaced,
            short_names: strs(names.get("shortNames")),
            categories: strs(names.get("categories")),
            status_subresource,
            from_crd: true,
        })
    }
}

/// Kubernetes version priority: GA before beta before alpha, higher numbers first; names not
/// of that form last, alphabetically.
pub fn version_priority(a: &str, b: &str) -> Ordering {
    fn parse(v: &str) -> Option<(u64, u8, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((major, 2, 0));
        }
        let (stage, n) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (0, n)
        } else {
            return None;
        };
        Some((major, stage, n.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some((ma, sa, na)), Some((mb, sb, nb))) => sb.cmp(&sa).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
    categories: &[&str],
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![version.into()],
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        status_subresource: status,
        from_crd: false,
    }
}

/// The built-in resource types.
pub fn builtins() -> Vec<ResourceType> {
    vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            false,
            &["ns"],
            true,
            &[],
        ),
        builtin("", "v1", "nodes", "Node", false, &["no"], true, &[]),
        builtin("", "v1", "pods", "Pod", true, &["po"], true, &["all"]),
        builtin(
            "",
            "v1",
            "services",
            "Service",
            true,
            &["svc"],
            true,
            &["all"],
        ),
        builtin(
            "",
            "v1",
            "endpoints",
            "Endpoints",
            true,
            &["ep"],
            false,
            &[],
        ),
        builtin("", "v1", "events", "Event", true, &["ev"], false, &[]),
        builtin(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            true,
            &["cm"],
            false,
            &[],
        ),
        builtin("", "v1", "secrets", "Secret", true, &[], false, &[]),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
            &[],
        ),
        builtin(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
            &[],
            false,
            &[],
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            &["netpol"],
            false,
            &[],
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            &[],
            false,
            &[],
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
            &[],
        ),
    ]
}

/// The resource types served now, by key.
#[derive(Clone, Debug)]
pub struct Registry {
    types: BTreeMap<ResourceKey, ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            types: builtins().into_iter().map(|t| (t.key(), t)).collect(),
        }
    }
}

impl Registry {
    /// All types, sorted by group and plural.
    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    /// The type at `group/version` named `plural` in URLs.
    pub fn by_path(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        let key = ResourceKey {
            group: group.into(),
            plural: plural.into(),
        };
        self.types
            .get(&key)
            .filter(|t| t.versions.iter().any(|v| v == version))
    }

    /// The type of `kind` at `apiVersion`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<(&ResourceType, String)> {
        let (group, version) = split_api_version(api_version);
        self.types
            .values()
            .find(|t| t.group == group && t.kind == kind && t.versions.iter().any(|v| v == version))
            .map(|t| (t, version.to_string()))
    }

    /// The type under `key`.
    pub fn get(&self, key: &ResourceKey) -> Option<&ResourceType> {
        self.types.get(key)
    }

    /// Whether some served type has this group and version.
    pub fn serves_group_version(&self, group: &str, version: &str) -> bool {
        self.types
            .values()
            .any(|t| t.group == group && t.versions.iter().any(|v| v == version))
    }

    /// Adds or replaces a type.
    pub fn insert(&mut self, t: ResourceType) {
        self.types.insert(t.key(), t);
    }

    /// Removes a type.
    pub fn remove(&mut self, key: &ResourceKey) -> Option<ResourceType> {
        self.types.remove(key)
    }

    /// The groups served, each with its versions, the preferred first; the core group excluded.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.values().filter(|t| !t.group.is_empty()) {
            let vs = groups.entry(t.group.clone()).or_default();
            for v in &t.versions {
                if !vs.contains(v) {
                    vs.push(v.clone());
                }
            }
        }
        let mut out: Vec<(String, Vec<String>)> = groups
            .into_iter()
            .map(|(g, mut vs)| {
                vs.sort_by(|a, b| version_priority(a, b));
                (g, vs)
            })
            .collect();
        // Built-in groups first, as the real server lists them.
        out.sort_by_key(|(g, _)| {
            let builtin = g.ends_with(".k8s.io");
            (!builtin, g.clone())
        });
        out
    }
}

/// `("", "v1")` for `v1`, `("cilium.io", "v2")` for `cilium.io/v2`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// A minimal CustomResourceDefinition (one served, stored version, any content accepted, a
/// status subresource), for preloading or tests.
pub fn crd(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short_names: &[&str],
) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("{plural}.{group}") },
        "spec": {
            "group": group,
            "names": {
                "plural": plural,
                "singular": kind.to_lowercase(),
                "kind": kind,
                "listKind": format!("{kind}List"),
                "shortNames": short_names,
            },
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "versions": [{
                "name": version,
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                }},
            }],
        },
    })
}

/// Cilium's two policy CRDs (`cilium.io/v2` CiliumNetworkPolicy `cnp`, namespaced, and
/// CiliumClusterwideNetworkPolicy `ccnp`, cluster-scoped), schema-less.
pub fn cilium_crds() -> Vec<Value> {
    vec![
        crd(
            "cilium.io",
            "v2",
            "CiliumNetworkPolicy",
            "ciliumnetworkpolicies",
            true,
            &["cnp", "ciliumnp"],
        ),
        crd(
            "cilium.io",
            "v2",
            "CiliumClusterwideNetworkPolicy",
            "ciliumclusterwidenetworkpolicies",
            false,
            &["ccnp"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_priority_orders_like_the_api() {
        let mut v = vec!["v1alpha1", "foo", "v2", "v1beta2", "v1", "v1beta1", "v10"];
        v.sort_by(|a, b| version_priority(a, b));
        assert_eq!(
            v,
            ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn crd_parses_and_checks_its_name() {
        let c = crd(
            "cilium.io",
            "v2",
            "CiliumNetworkPolicy",
            "ciliumnetworkpolicies",
            true,
            &["cnp"],
        );
        let t = ResourceType::from_crd(&c).unwrap();
        assert_eq!(t.kind, "CiliumNetworkPolicy");
        assert!(t.namespaced && t.status_subresource);
        let mut bad = c.clone();
        bad["metadata"]["name"] = json!("wrong");
        assert!(ResourceType::from_crd(&bad)
            .unwrap_err()
            .contains("metadata.name"));
        let mut bad = c;
        bad["spec"]["scope"] = json!("Everywhere");
        assert!(ResourceType::from_crd(&bad).is_err());
    }
}
