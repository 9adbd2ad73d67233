//! The file-backed source: a directory of standard Kubernetes YAML, as `kubectl apply -f DIR`
//! would take it. Any file names (`*.yaml`, `*.yml`, `*.json`), several documents per file, and
//! `kind: List` all work. Objects are read into the same k8s-openapi types the Kubernetes source
//! uses, so everything after this point is one code path.
//!
//! A malformed document is reported with its file and line (and, for an object that does not
//! fit its type, the field that failed: `spec.ports[0].port: …`), and the rest still loads.
//!
//! Network policies (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy) are
//! kept as written ([`PolicyDocument`]): [`crate::netpol`] reads them, so that a policy it cannot
//! fully read still fails closed instead of disappearing here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

/// Everything read from a directory.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Pods by (namespace, name).
    pub pods: BTreeMap<(String, String), Pod>,
    /// Services by (namespace, name).
    pub services: BTreeMap<(String, String), Service>,
    /// EndpointSlices (`discovery.k8s.io/v1`) by (namespace, name).
    pub endpoint_slices: BTreeMap<(String, String), EndpointSlice>,
    /// Network policies as written, by (kind, namespace, name); the namespace is empty for
    /// cluster-wide ones. A later document with the same key replaces an earlier one.
    pub policies: BTreeMap<(PolicyKind, String, String), PolicyDocument>,
    /// The cluster-wide identities (`vireo.io/v1alpha1` VireoIdentity objects) by number.
    pub identities: BTreeMap<u32, ClusterIdentity>,
    /// Whether pods take their identities from [`Manifests::identities`] (a source that
    /// allocates them cluster-wide: the Kubernetes source) rather than from a node-local
    /// allocation over the label sets (the manifest directory).
    pub cluster_identities: bool,
    /// How the objects are read (the agent's settings that shape labels and policies).
    pub read: ReadOptions,
    /// Objects of other kinds (later issues read them), with where they came from.
    pub others: Vec<Other>,
    /// One line per problem: `path:line: message`.
    pub errors: Vec<String>,
}

/// The agent's settings that shape how a source's objects are read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// The cluster's name (the agent's `cluster_name`), which pods carry as
    /// `k8s:io.cilium.k8s.policy.cluster`; empty means [`DEFAULT_CLUSTER_NAME`].
    ///
    /// [`DEFAULT_CLUSTER_NAME`]: vireo_policy::identity::DEFAULT_CLUSTER_NAME
    pub cluster_name: String,
    /// CiliumNetworkPolicy CIDR rules also select nodes by address (Cilium's
    /// `policy-cidr-match-mode: nodes`).
    pub cidr_match_nodes: bool,
}

impl Manifests {
    /// The cluster's name ([`ReadOptions::cluster_name`], or the default).
    pub fn cluster_name(&self) -> &str {
        if self.read.cluster_name.is_empty() {
            vireo_policy::identity::DEFAULT_CLUSTER_NAME
        } else {
            &self.read.cluster_name
        }
    }

    /// The origin of pod `p` of namespace `ns`, for its security labels: the cluster, the
    /// namespace and the service account (`spec.serviceAccountName`, else the deprecated
    /// `spec.serviceAccount`, else `default`, which the API server fills in).
    pub fn pod_origin<'a>(&'a self, ns: &'a str, p: &'a Pod) -> vireo_policy::PodOrigin<'a> {
        let spec = p.spec.as_ref();
        let sa = spec
            .and_then(|s| s.service_account_name.as_deref())
            .or_else(|| spec.and_then(|s| s.service_account.as_deref()))
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        vireo_policy::PodOrigin {
            cluster: self.cluster_name(),
            namespace: ns,
            service_account: sa,
        }
    }
}

/// A `VireoIdentity`: the label set a cluster-wide number stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    /// The whole label set (`security-labels`).
    pub labels: vireo_policy::Labels,
    /// The garbage collector has marked it unused: it may be deleted and its number reused,
    /// so it is not taken for a new pod before an allocator has removed the mark.
    pub marked: bool,
}

/// An object of a kind this source does not interpret (yet).
#[derive(Debug, Clone)]
pub struct Other {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// The object as written.
    pub value: Value,
    /// `path:line` of its document.
    pub origin: String,
}

/// The kinds of network policy the source keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `cilium.io/v2` CiliumNetworkPolicy.
    CiliumNetworkPolicy,
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy.
    CiliumClusterwideNetworkPolicy,
}

impl PolicyKind {
    /// The kind as manifests name it.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }
}

/// A network policy document, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    /// Its kind.
    pub kind: PolicyKind,
    /// Its namespace (`default` when not written); `None` for a cluster-wide policy.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// The whole object as written.
    pub value: Value,
    /// `path:line` of its document.
    pub origin: String,
}

/// Reads every manifest file under `dir` (not recursive), in name order.
pub fn load_dir(dir: &Path) -> Manifests {
    let mut m = Manifests::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
            })
            .collect(),
        Err(e) => {
            m.errors.push(format!("{}: {e}", dir.display()));
            return m;
        }
    };
    files.sort();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => load_text(&mut m, &text, &f),
            Err(e) => m.errors.push(format!("{}: {e}", f.display())),
        }
    }
    m
}

/// Splits a YAML stream into documents with the line each starts on (1-based).
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start, cur));
    docs.retain(|(_, d)| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// Adds the objects of one file's text.
pub fn load_text(m: &mut Manifests, text: &str, path: &Path) {
    for (line0, doc) in documents(text) {
        let v: Value = match serde_yaml_ng::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map(|l| line0 + l.line() - 1).unwrap_or(line0);
                let msg = shift_lines(first_line(&e.to_string()), line0 - 1);
                m.errors.push(format!("{}:{line}: {msg}", path.display()));
                continue;
            }
        };
        let origin = format!("{}:{line0}", path.display());
        add_object(m, v, &origin);
    }
}

/// Rewrites serde_yaml_ng's document-relative "line N" into file lines.
fn shift_lines(msg: &str, by: usize) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("line ") {
        out.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// The first line of a (possibly multi-line) error message.
pub(crate) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Adds one object (a document as read, with `apiVersion` and `kind`; a `List` adds its
/// items), or the error it gives, naming `origin`: how every source turns an object into
/// [`Manifests`] (the manifest directory for each document, the Kubernetes source for each
/// object of its stores).
pub fn add_object(m: &mut Manifests, v: Value, origin: &str) {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let api_version = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind.is_empty() {
        m.errors.push(format!("{origin}: document has no kind"));
        return;
    }
    if kind == "List" || kind.ends_with("List") && v.get("items").is_some() {
        match v.get("items").and_then(Value::as_sequence) {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    add_object(m, item.clone(), &format!("{origin} (items[{i}])"));
                }
            }
            None => m.errors.push(format!("{origin}: {kind} without items")),
        }
        return;
    }
    let bad = |m: &mut Manifests, e: String| {
        m.errors.push(format!("{origin}: {kind}: {e}"));
    };
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => match typed::<Namespace>(v) {
            Ok(o) => match o.metadata.name.clone() {
                Some(n) => {
                    m.namespaces.insert(n, o);
                }
                None => m
                    .errors
                    .push(format!("{origin}: Namespace without metadata.name")),
            },
            Err(e) => bad(m, e),
        },
        ("v1", "Node") => match typed::<Node>(v) {
            Ok(o) => match o.metadata.name.clone() {
                Some(n) => {
                    m.nodes.insert(n, o);
                }
                None => m
                    .errors
                    .push(format!("{origin}: Node without metadata.name")),
            },
            Err(e) => bad(m, e),
        },
        ("v1", "Pod") => match typed::<Pod>(v) {
            Ok(o) => match namespaced(&o.metadata) {
                Some(key) => {
                    m.pods.insert(key, o);
                }
                None => m
                    .errors
                    .push(format!("{origin}: Pod without metadata.name")),
            },
            Err(e) => bad(m, e),
        },
        ("v1", "Service") => match typed::<Service>(v) {
            Ok(o) => match namespaced(&o.metadata) {
                Some(key) => {
                    m.services.insert(key, o);
                }
                None => m
                    .errors
                    .push(format!("{origin}: Service without metadata.name")),
            },
            Err(e) => bad(m, e),
        },
        ("discovery.k8s.io/v1", "EndpointSlice") => match typed::<EndpointSlice>(v) {
            Ok(o) => match namespaced(&o.metadata) {
                Some(key) => {
                    m.endpoint_slices.insert(key, o);
                }
                None => m
                    .errors
                    .push(format!("{origin}: EndpointSlice without metadata.name")),
            },
            Err(e) => bad(m, e),
        },
        ("networking.k8s.io/v1", "NetworkPolicy")
        | ("cilium.io/v2", "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
            add_policy(m, &kind, v, origin)
        }
        ("vireo.io/v1alpha1", "VireoIdentity") => add_identity(m, v, origin),
        _ => m.others.push(Other {
            api_version,
            kind,
            value: v,
            origin: origin.to_string(),
        }),
    }
}

/// Reads `v` as `T`; the error names the field that failed, when not the whole object
/// (`spec.ports[0].port: invalid type: …`), with serde's message.
fn typed<T: DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let msg = first_line(&e.inner().to_string()).to_string();
        match e.path().to_string() {
            p if p == "." => msg,
            p => format!("{p}: {msg}"),
        }
    })
}

/// Reads a `VireoIdentity` (as the cluster-wide allocator does: [`crate::allocator`]).
fn add_identity(m: &mut Manifests, v: Value, origin: &str) {
    let read = serde_json::to_value(&v)
        .map_err(|e| e.to_string())
        .and_then(|j| {
            serde_json::from_value::<kube::api::DynamicObject>(j).map_err(|e| e.to_string())
        })
        .and_then(|o| crate::allocator::identities::parse(&o));
    match read {
        Ok((id, e)) => {
            m.identities.insert(
                id.0,
                ClusterIdentity {
                    labels: e.labels,
                    marked: e.marked,
                },
            );
        }
        Err(e) => m.errors.push(format!("{origin}: VireoIdentity: {e}")),
    }
}

/// Keeps a policy document as written; only its name is checked here.
fn add_policy(m: &mut Manifests, kind: &str, v: Value, origin: &str) {
    let kind = match kind {
        "NetworkPolicy" => PolicyKind::NetworkPolicy,
        "CiliumNetworkPolicy" => PolicyKind::CiliumNetworkPolicy,
        _ => PolicyKind::CiliumClusterwideNetworkPolicy,
    };
    let meta = v.get("metadata");
    let text = |key: &str| {
        meta.and_then(|md| md.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let Some(name) = text("name") else {
        m.errors
            .push(format!("{origin}: {} without metadata.name", kind.name()));
        return;
    };
    let namespace = match kind {
        PolicyKind::CiliumClusterwideNetworkPolicy => None,
        _ => Some(text("namespace").unwrap_or_else(|| "default".into())),
    };
    let key = (kind, namespace.clone().unwrap_or_default(), name.clone());
    m.policies.insert(
        key,
        PolicyDocument {
            kind,
            namespace,
            name,
            value: v,
            origin: origin.to_string(),
        },
    );
}

/// `(namespace, name)` of a namespaced object; the namespace defaults to `default`, as
/// `kubectl apply` without `-n` would.
fn namespaced(meta: &ObjectMeta) -> Option<(String, String)> {
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let ns = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    Some((ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_lists_and_errors_with_lines() {
        let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: red}}
---
# a pod
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: broken
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Node
    metadata: {name: node-1}
    spec: {podCIDR: 10.244.1.0/24}
  - apiVersion: v1
    kind: Pod
    metadata: {name: b}
    spec: {containers: [{name: c, image: i, ports: [{containerPort: 80, name: http}]}]}
  - apiVersion: v1
    kind: Pod
    metadata: {name: c}
    spec: {containers: 7}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
";
        let mut m = Manifests::default();
        load_text(&mut m, text, Path::new("dir/f.yaml"));
        assert_eq!(m.namespaces.len(), 1);
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.pods.len(), 2, "{:?}", m.errors);
        assert!(m.pods.contains_key(&("default".into(), "b".into())));
        assert!(m.others.is_empty());
        let (key, p) = m.policies.iter().next().unwrap();
        assert_eq!(
            key,
            &(
                PolicyKind::CiliumNetworkPolicy,
                "default".to_string(),
                "p".to_string()
            )
        );
        assert_eq!(p.origin, "dir/f.yaml:32");
        assert_eq!(m.errors.len(), 2, "{:?}", m.errors);
        assert!(m.errors[0].starts_with("dir/f.yaml:15:"), "{}", m.errors[0]);
        assert!(
            m.errors[0].contains("flow mapping at line 14"),
            "{}",
            m.errors[0]
        );
        assert!(
            m.errors[1].contains("dir/f.yaml:16 (items[2])") && m.errors[1].contains("Pod"),
            "{}",
            m.errors[1]
        );
    }

    #[test]
    fn a_bad_field_is_named_with_its_path() {
        let text = "\
apiVersion: v1
kind: Pod
metadata: {name: c}
spec: {containers: [{name: c, image: i, ports: [{containerPort: http}]}]}
---
apiVersion: v1
kind: Service
metadata: 7
";
        let mut m = Manifests::default();
        load_text(&mut m, text, Path::new("f.yaml"));
        assert_eq!(m.errors.len(), 2, "{:?}", m.errors);
        assert!(
            m.errors[0].starts_with(
                "f.yaml:1: Pod: spec.containers[0].ports[0].containerPort: invalid type"
            ),
            "{}",
            m.errors[0]
        );
        assert!(
            m.errors[1].starts_with("f.yaml:6: Service: metadata: invalid type"),
            "{}",
            m.errors[1]
        );
    }

    #[test]
    fn services_and_endpoint_slices() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.1.10], conditions: {ready: true}}]
---
apiVersion: v1
kind: Service
metadata: {namespace: x}
";
        let mut m = Manifests::default();
        load_text(&mut m, text, Path::new("s.yaml"));
        assert!(m.services.contains_key(&("x".into(), "web".into())));
        assert!(m
            .endpoint_slices
            .contains_key(&("default".into(), "web-abc".into())));
        assert!(m.others.is_empty());
        assert_eq!(m.errors.len(), 1, "{:?}", m.errors);
        assert!(
            m.errors[0].contains("s.yaml:13: Service without metadata.name"),
            "{}",
            m.errors[0]
        );
    }

    #[test]
    fn network_policies_are_kept_as_written() {
        let text = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec: {podSelector: {}}
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: cw, namespace: ignored}
spec: {endpointSelector: {}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {namespace: x}
spec: {endpointSelector: {}}
---
apiVersion: cilium.io/v2alpha1
kind: CiliumNetworkPolicy
metadata: {name: old}
";
        let mut m = Manifests::default();
        load_text(&mut m, text, Path::new("p.yaml"));
        let keys: Vec<_> = m.policies.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                (PolicyKind::NetworkPolicy, "x".into(), "np".into()),
                (
                    PolicyKind::CiliumClusterwideNetworkPolicy,
                    String::new(),
                    "cw".into()
                ),
            ]
        );
        let cw = &m.policies[&keys[1]];
        assert_eq!(
            (cw.namespace.as_deref(), cw.origin.as_str()),
            (None, "p.yaml:6")
        );
        assert_eq!(m.errors.len(), 1, "{:?}", m.errors);
        assert!(
            m.errors[0].contains("p.yaml:11: CiliumNetworkPolicy without metadata.name"),
            "{}",
            m.errors[0]
        );
        assert_eq!(m.others.len(), 1, "other API versions are not read");
    }

    #[test]
    fn a_directory_of_files() {
        let dir = std::env::temp_dir().join(format!("vireo-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.yml"),
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("b.json"),
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"z"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("c.yaml"), "kind: [\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let m = load_dir(&dir);
        assert_eq!((m.nodes.len(), m.namespaces.len()), (1, 1));
        assert_eq!(m.errors.len(), 1);
        assert!(m.errors[0].contains("c.yaml:"), "{:?}", m.errors);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
