//! Problems with objects, reported on the objects themselves as Kubernetes Events (core/v1,
//! type Warning, `reportingComponent: vireo-agent`), so that `kubectl describe` shows them.
//!
//! The warnings of a build name their object in one of a few fixed shapes (see [`attribute`]);
//! the source turns each into a [`Problem`], and reports a problem once for as long as it lasts
//! (a rebuild does not report it again). The Event's name is derived from the node, the object
//! and the message, so that an agent started again finds the Event it wrote before and counts
//! the problem there (`count` + 1) instead of writing a second one.

use ::kube::api::{Api, PostParams};
use ::kube::Client;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio::sync::mpsc::UnboundedReceiver;

use super::kinds::{Kind, ObjKey};

/// The component named in the Events.
pub const REPORTING_COMPONENT: &str = "vireo-agent";

/// One problem with one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The object.
    pub object: ObjKey,
    /// `InvalidPolicy` for network policies, `InvalidObject` for the others.
    pub reason: &'static str,
    /// What is wrong (the warning, without the object's name).
    pub message: String,
}

impl Problem {
    /// A problem with `object`.
    pub fn new(object: ObjKey, message: String) -> Problem {
        let reason = if object.kind.is_policy() {
            "InvalidPolicy"
        } else {
            "InvalidObject"
        };
        Problem {
            object,
            reason,
            message,
        }
    }
}

/// The object a warning or error names, and the rest of the message. The shapes:
/// - policies (`netpol`): `Kind ns/name (kube:Kind ns/name): message`;
/// - objects that do not fit their type (`source`): `kube:Kind ns/name: Kind: message`;
/// - the cluster view and services: `node NAME: …`, `pod NS/NAME: …`, `service NS/NAME: …`,
///   `endpointslice NS/NAME: …`.
pub fn attribute(warning: &str) -> Option<(ObjKey, String)> {
    if let Some(i) = warning.find("(kube:") {
        let rest = &warning[i + 1..];
        let end = rest.find("): ")?;
        let key = ObjKey::from_origin(&rest[..end])?;
        return Some((key, rest[end + 3..].to_string()));
    }
    if warning.starts_with("kube:") {
        let (origin, msg) = warning.split_once(": ")?;
        let key = ObjKey::from_origin(origin)?;
        let msg = msg
            .strip_prefix(key.kind.name())
            .and_then(|m| m.strip_prefix(": "))
            .unwrap_or(msg);
        return Some((key, msg.to_string()));
    }
    let (word, rest) = warning.split_once(' ')?;
    let kind = match word {
        "node" => Kind::Node,
        "pod" => Kind::Pod,
        "service" => Kind::Service,
        "endpointslice" => Kind::EndpointSlice,
        _ => return None,
    };
    let (path, msg) = rest.split_once(": ")?;
    let (namespace, name) = match path.split_once('/') {
        Some((ns, n)) if kind.namespaced() => (ns.to_string(), n.to_string()),
        None if !kind.namespaced() => (String::new(), path.to_string()),
        _ => return None,
    };
    Some((
        ObjKey {
            kind,
            namespace,
            name,
        },
        msg.to_string(),
    ))
}

/// A problem to write, with the object's uid when known.
#[derive(Debug, Clone)]
pub(crate) struct EventRequest {
    pub problem: Problem,
    pub uid: Option<String>,
}

/// FNV-1a: stable across runs and Rust versions (an Event's name must be).
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The Event for `req`, as node `node` reports it.
pub(crate) fn event(req: &EventRequest, node: &str) -> Event {
    let p = &req.problem;
    let o = &p.object;
    let hash = fnv(&[node, o.kind.name(), &o.namespace, &o.name, &p.message]);
    let base: String = o.name.chars().take(200).collect();
    let now = Time(jiff::Timestamp::now());
    let message: String = p.message.chars().take(1024).collect();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{base}.{hash:016x}")),
            namespace: Some(event_namespace(o).to_string()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(o.kind.api_version().to_string()),
            kind: Some(o.kind.name().to_string()),
            name: Some(o.name.clone()),
            namespace: (!o.namespace.is_empty()).then(|| o.namespace.clone()),
            uid: req.uid.clone(),
            ..Default::default()
        },
        reason: Some(p.reason.to_string()),
        message: Some(message),
        type_: Some("Warning".to_string()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        reporting_component: Some(REPORTING_COMPONENT.to_string()),
        reporting_instance: Some(node.to_string()),
        source: Some(EventSource {
            component: Some(REPORTING_COMPONENT.to_string()),
            host: Some(node.to_string()),
        }),
        ..Default::default()
    }
}

/// Where an object's Events go: its namespace, `default` for cluster-scoped objects.
fn event_namespace(o: &ObjKey) -> &str {
    if o.namespace.is_empty() {
        "default"
    } else {
        &o.namespace
    }
}

/// Writes the Events asked for, one at a time, until the channel closes.
pub(crate) async fn writer(client: Client, node: String, mut rx: UnboundedReceiver<EventRequest>) {
    while let Some(req) = rx.recv().await {
        let ev = event(&req, &node);
        let api: Api<Event> = Api::namespaced(client.clone(), event_namespace(&req.problem.object));
        let name = ev.metadata.name.clone().unwrap_or_default();
        let r = match api.create(&PostParams::default(), &ev).await {
            Ok(_) => Ok(()),
            // Reported before (by an earlier run of this agent): count it there.
            Err(::kube::Error::Api(s)) if s.code == 409 => match api.get(&name).await {
                Ok(mut old) => {
                    old.count = Some(old.count.unwrap_or(1) + 1);
                    old.last_timestamp = ev.last_timestamp.clone();
                    api.replace(&name, &PostParams::default(), &old)
                        .await
                        .map(|_| ())
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => tracing::debug!(object = %req.problem.object, event = %name, "event written"),
            Err(e) => tracing::warn!(
                object = %req.problem.object,
                "writing the Warning event failed: {}",
                crate::source::first_line(&e.to_string())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_name_their_objects() {
        let cases = [
            (
                "CiliumNetworkPolicy x/bad (kube:CiliumNetworkPolicy x/bad): spec.ingress[0]: nope",
                "CiliumNetworkPolicy x/bad",
                "spec.ingress[0]: nope",
            ),
            (
                "CiliumClusterwideNetworkPolicy cw (kube:CiliumClusterwideNetworkPolicy cw): x: y",
                "CiliumClusterwideNetworkPolicy cw",
                "x: y",
            ),
            (
                "kube:Pod default/p: Pod: spec.containers: invalid type",
                "Pod default/p",
                "spec.containers: invalid type",
            ),
            (
                "node n1: no IPv4 InternalIP",
                "Node n1",
                "no IPv4 InternalIP",
            ),
            (
                "service default/web: spec.ports[0].protocol: \"X\" is not TCP or UDP",
                "Service default/web",
                "spec.ports[0].protocol: \"X\" is not TCP or UDP",
            ),
            (
                "endpointslice x/web-1: ports[0].port: bad",
                "EndpointSlice x/web-1",
                "ports[0].port: bad",
            ),
            ("pod x/a: status.podIP: bad", "Pod x/a", "status.podIP: bad"),
        ];
        for (w, obj, msg) in cases {
            let (k, m) = attribute(w).unwrap_or_else(|| panic!("{w}"));
            assert_eq!((k.to_string().as_str(), m.as_str()), (obj, msg), "{w}");
        }
        for w in [
            "NetworkPolicy x/np (dir/f.yaml:3): a file's",
            "service nons: x",
            "whatever",
        ] {
            assert_eq!(attribute(w), None, "{w}");
        }
    }

    #[test]
    fn events_are_named_per_node_object_and_problem() {
        let req = |msg: &str| EventRequest {
            problem: Problem::new(
                ObjKey {
                    kind: Kind::CiliumNetworkPolicy,
                    namespace: "x".into(),
                    name: "bad".into(),
                },
                msg.into(),
            ),
            uid: Some("u-1".into()),
        };
        let a = event(&req("one"), "node-1");
        assert_eq!(a.metadata.name, event(&req("one"), "node-1").metadata.name);
        assert_ne!(a.metadata.name, event(&req("two"), "node-1").metadata.name);
        assert_ne!(a.metadata.name, event(&req("one"), "node-2").metadata.name);
        assert_eq!(a.metadata.namespace.as_deref(), Some("x"));
        assert_eq!(a.reason.as_deref(), Some("InvalidPolicy"));
        assert_eq!(a.type_.as_deref(), Some("Warning"));
        assert_eq!(a.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(a.reporting_component.as_deref(), Some(REPORTING_COMPONENT));
    }
}
