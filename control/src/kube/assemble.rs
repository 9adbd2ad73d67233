//! The [`Manifests`] of the Kubernetes source, kept up to date object by object from the
//! reflector stores. Each object goes through [`source::add_object`], the function the manifest
//! directory uses for every document, so there is one way objects become tables; only the
//! objects that changed (by resourceVersion) are read again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::kinds::{AnyObject, Kind, KindStore, ObjKey};
use crate::source::{self, Manifests, Other, PolicyKind};

/// What one object contributed.
#[derive(Debug, Clone)]
struct Entry {
    /// Its `metadata.resourceVersion` when read.
    resource_version: Option<String>,
    /// Its `metadata.uid`.
    uid: Option<String>,
    /// The errors reading it gave (it is left out of the tables then).
    errors: Vec<String>,
    /// What it became when of a kind the tables do not read.
    others: Vec<Other>,
}

/// The source's objects, maintained incrementally.
#[derive(Debug, Default)]
pub(crate) struct Assembly {
    /// The objects, as the manifest directory would have read them.
    pub manifests: Manifests,
    entries: BTreeMap<ObjKey, Entry>,
    errors_changed: bool,
    others_changed: bool,
}

impl Assembly {
    /// Brings one object in line with its store (`None`: not there): whether it changed.
    pub fn refresh(&mut self, key: &ObjKey, obj: Option<&dyn AnyObject>) -> bool {
        match (self.entries.get(key), obj) {
            (None, None) => return false,
            (Some(e), Some(o))
                if e.resource_version.is_some()
                    && e.resource_version == o.meta().resource_version =>
            {
                return false
            }
            _ => {}
        }
        self.remove(key);
        if let Some(o) = obj {
            self.add(key, o);
        }
        true
    }

    /// Brings a whole kind in line with its store (after a list): whether anything changed.
    pub fn resync(&mut self, kind: Kind, store: &dyn KindStore) -> bool {
        let objects: Vec<Arc<dyn AnyObject>> = store.all();
        let mut present = BTreeSet::new();
        let mut changed = false;
        for o in &objects {
            let key = ObjKey::of(kind, o.meta());
            changed |= self.refresh(&key, Some(o.as_ref()));
            present.insert(key);
        }
        let gone: Vec<ObjKey> = self
            .entries
            .keys()
            .filter(|k| k.kind == kind && !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            changed |= self.refresh(&key, None);
        }
        changed
    }

    /// Rebuilds the lists that are not keyed by object (errors, other kinds), after refreshes.
    pub fn finish(&mut self) {
        if self.errors_changed {
            self.manifests.errors = self
                .entries
                .values()
                .flat_map(|e| e.errors.iter().cloned())
                .collect();
            self.errors_changed = false;
        }
        if self.others_changed {
            self.manifests.others = self
                .entries
                .values()
                .flat_map(|e| e.others.iter().cloned())
                .collect();
            self.others_changed = false;
        }
    }

    /// The uid of an object read, if any.
    pub fn uid(&self, key: &ObjKey) -> Option<&str> {
        self.entries.get(key).and_then(|e| e.uid.as_deref())
    }

    /// Every object with the errors reading it gave.
    pub fn object_errors(&self) -> impl Iterator<Item = (&ObjKey, &String)> {
        self.entries
            .iter()
            .flat_map(|(k, e)| e.errors.iter().map(move |m| (k, m)))
    }

    /// How many objects of `kind` were read.
    pub fn count(&self, kind: Kind) -> usize {
        self.entries.keys().filter(|k| k.kind == kind).count()
    }

    fn add(&mut self, key: &ObjKey, o: &dyn AnyObject) {
        let m = &mut self.manifests;
        let (errors0, others0) = (m.errors.len(), m.others.len());
        let origin = key.origin();
        match o.to_value() {
            Ok(v) => source::add_object(m, v, &origin),
            Err(e) => m.errors.push(format!("{origin}: {}: {e}", key.kind)),
        }
        let errors = m.errors.split_off(errors0);
        let others = m.others.split_off(others0);
        self.errors_changed |= !errors.is_empty();
        self.others_changed |= !others.is_empty();
        self.entries.insert(
            key.clone(),
            Entry {
                resource_version: o.meta().resource_version.clone(),
                uid: o.meta().uid.clone(),
                errors,
                others,
            },
        );
    }

    fn remove(&mut self, key: &ObjKey) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.errors_changed |= !e.errors.is_empty();
        self.others_changed |= !e.others.is_empty();
        let m = &mut self.manifests;
        let nk = || (key.namespace.clone(), key.name.clone());
        let policy = |kind| (kind, key.namespace.clone(), key.name.clone());
        match key.kind {
            Kind::Namespace => {
                m.namespaces.remove(&key.name);
            }
            Kind::Node => {
                m.nodes.remove(&key.name);
            }
            Kind::Pod => {
                m.pods.remove(&nk());
            }
            Kind::Service => {
                m.services.remove(&nk());
            }
            Kind::EndpointSlice => {
                m.endpoint_slices.remove(&nk());
            }
            Kind::NetworkPolicy => {
                m.policies.remove(&policy(PolicyKind::NetworkPolicy));
            }
            Kind::CiliumNetworkPolicy => {
                m.policies.remove(&policy(PolicyKind::CiliumNetworkPolicy));
            }
            Kind::CiliumClusterwideNetworkPolicy => {
                m.policies
                    .remove(&policy(PolicyKind::CiliumClusterwideNetworkPolicy));
            }
            Kind::VireoIdentity => {
                if let Ok(n) = key.name.parse::<u32>() {
                    m.identities.remove(&n);
                }
            }
            Kind::VireoNodeConfig => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, rv: &str, ip: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(Default::default()),
            status: Some(k8s_openapi::api::core::v1::PodStatus {
                pod_ip: Some(ip.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn objects_are_read_again_only_when_their_version_changes() {
        let mut a = Assembly::default();
        let key = ObjKey::of(Kind::Pod, &pod("a", "1", "").metadata);
        assert!(a.refresh(&key, Some(&pod("a", "1", "10.0.0.1"))));
        assert!(
            !a.refresh(&key, Some(&pod("a", "1", "10.0.0.9"))),
            "same version"
        );
        assert!(a.refresh(&key, Some(&pod("a", "2", "10.0.0.2"))));
        a.finish();
        let p = &a.manifests.pods[&("default".to_string(), "a".to_string())];
        assert_eq!(
            p.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.0.0.2")
        );
        assert!(a.refresh(&key, None));
        assert!(!a.refresh(&key, None));
        assert!(a.manifests.pods.is_empty());
    }

    #[test]
    fn other_kinds_are_kept_and_dropped_with_their_object() {
        let mut a = Assembly::default();
        let obj: ::kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "vireo.io/v1alpha1", "kind": "VireoNodeConfig",
            "metadata": {"name": "default", "resourceVersion": "5"},
        }))
        .unwrap();
        let key = ObjKey::of(Kind::VireoNodeConfig, &obj.metadata);
        assert!(a.refresh(&key, Some(&obj)));
        a.finish();
        assert_eq!(a.manifests.others.len(), 1);
        assert_eq!(a.manifests.others[0].origin, "kube:VireoNodeConfig default");
        assert!(a.refresh(&key, None));
        a.finish();
        assert!(a.manifests.others.is_empty());
    }

    #[test]
    fn identities_are_read_and_dropped_with_their_object() {
        let mut a = Assembly::default();
        let obj = |rv: &str, marked: bool| -> ::kube::api::DynamicObject {
            let mut v = serde_json::json!({
                "apiVersion": "vireo.io/v1alpha1", "kind": "VireoIdentity",
                "metadata": {"name": "70000", "resourceVersion": rv},
                "security-labels": {"k8s:app": "web"},
            });
            if marked {
                v["metadata"]["annotations"] =
                    serde_json::json!({"vireo.io/unused-since": "2026-01-01T00:00:00Z"});
            }
            serde_json::from_value(v).unwrap()
        };
        let key = ObjKey::of(Kind::VireoIdentity, &obj("1", false).metadata);
        assert!(a.refresh(&key, Some(&obj("1", false))));
        a.finish();
        let id = &a.manifests.identities[&70_000];
        assert_eq!(id.labels.get("k8s:app"), Some("web"));
        assert!(!id.marked);
        assert!(a.refresh(&key, Some(&obj("2", true))));
        assert!(a.manifests.identities[&70_000].marked);
        assert!(a.refresh(&key, None));
        assert!(a.manifests.identities.is_empty());
        // A malformed one is an error of its object, not an identity.
        let bad: ::kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "vireo.io/v1alpha1", "kind": "VireoIdentity",
            "metadata": {"name": "7", "resourceVersion": "3"},
            "security-labels": {"k8s:app": "web"},
        }))
        .unwrap();
        let bkey = ObjKey::of(Kind::VireoIdentity, &bad.metadata);
        assert!(a.refresh(&bkey, Some(&bad)));
        a.finish();
        assert!(a.manifests.identities.is_empty());
        assert_eq!(a.object_errors().count(), 1);
    }
}
