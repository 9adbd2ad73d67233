//! The kinds the Kubernetes source watches, the keys of their objects, and a type-erased view
//! of each kind's reflector store, so that the rest of the source handles every kind alike.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use ::kube::api::{ApiResource, GroupVersionKind};
use ::kube::runtime::reflector::{ObjectRef, Store};
use ::kube::Resource;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

/// A kind of object the source watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// core/v1 Namespace.
    Namespace,
    /// core/v1 Node.
    Node,
    /// core/v1 Pod (cluster-wide: every pod is in the ipcache).
    Pod,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
    /// cilium.io/v2 CiliumNetworkPolicy.
    CiliumNetworkPolicy,
    /// cilium.io/v2 CiliumClusterwideNetworkPolicy.
    CiliumClusterwideNetworkPolicy,
    /// vireo.io/v1alpha1 VireoNodeConfig.
    VireoNodeConfig,
    /// vireo.io/v1alpha1 VireoIdentity.
    VireoIdentity,
}

impl Kind {
    /// Every kind watched.
    pub const ALL: [Kind; 10] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::CiliumNetworkPolicy,
        Kind::CiliumClusterwideNetworkPolicy,
        Kind::VireoNodeConfig,
        Kind::VireoIdentity,
    ];

    /// The kind as objects name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Kind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            Kind::VireoNodeConfig => "VireoNodeConfig",
            Kind::VireoIdentity => "VireoIdentity",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// `apiVersion` of the objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Node | Kind::Pod | Kind::Service => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::CiliumNetworkPolicy | Kind::CiliumClusterwideNetworkPolicy => "cilium.io/v2",
            Kind::VireoNodeConfig | Kind::VireoIdentity => "vireo.io/v1alpha1",
        }
    }

    /// Whether its objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace
                | Kind::Node
                | Kind::CiliumClusterwideNetworkPolicy
                | Kind::VireoNodeConfig
                | Kind::VireoIdentity
        )
    }

    /// Whether it is a custom resource: a cluster may not have its definition, and a 404 then
    /// means "none of those".
    pub fn custom(self) -> bool {
        matches!(
            self,
            Kind::CiliumNetworkPolicy
                | Kind::CiliumClusterwideNetworkPolicy
                | Kind::VireoNodeConfig
                | Kind::VireoIdentity
        )
    }

    /// Whether its problems are reported as `InvalidPolicy` (else `InvalidObject`).
    pub fn is_policy(self) -> bool {
        matches!(
            self,
            Kind::NetworkPolicy | Kind::CiliumNetworkPolicy | Kind::CiliumClusterwideNetworkPolicy
        )
    }

    /// The resource of a custom kind, for `Api::<DynamicObject>::all_with`.
    pub fn api_resource(self) -> ApiResource {
        let (group, version) = self
            .api_version()
            .split_once('/')
            .unwrap_or(("", self.api_version()));
        let plural = match self {
            Kind::CiliumNetworkPolicy => "ciliumnetworkpolicies",
            Kind::CiliumClusterwideNetworkPolicy => "ciliumclusterwidenetworkpolicies",
            Kind::VireoNodeConfig => "vireonodeconfigs",
            Kind::VireoIdentity => "vireoidentities",
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, self.name()),
            plural,
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One object: its kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace; empty for a cluster-scoped object.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjKey {
    /// The key of an object of `kind` with metadata `meta`.
    pub fn of(kind: Kind, meta: &ObjectMeta) -> ObjKey {
        ObjKey {
            kind,
            namespace: if kind.namespaced() {
                meta.namespace.clone().unwrap_or_default()
            } else {
                String::new()
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// `namespace/name`, or the name of a cluster-scoped object.
    pub fn path(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }

    /// Where an object read from the API server comes from, as warnings and errors name it:
    /// `kube:Pod default/web-1`.
    pub fn origin(&self) -> String {
        format!("kube:{} {}", self.kind, self.path())
    }

    /// Reads back [`ObjKey::origin`].
    pub fn from_origin(origin: &str) -> Option<ObjKey> {
        let (kind, path) = origin.strip_prefix("kube:")?.split_once(' ')?;
        let kind = Kind::from_name(kind)?;
        let (namespace, name) = match path.split_once('/') {
            Some((ns, n)) => (ns.to_string(), n.to_string()),
            None => (String::new(), path.to_string()),
        };
        (!name.is_empty()).then_some(ObjKey {
            kind,
            namespace,
            name,
        })
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.path())
    }
}

/// An object of any kind, as the store holds it.
pub(crate) trait AnyObject: Send + Sync {
    /// Its metadata.
    fn meta(&self) -> &ObjectMeta;
    /// The object as a document, with `apiVersion` and `kind`.
    fn to_value(&self) -> Result<serde_yaml_ng::Value, String>;
}

impl<K> AnyObject for K
where
    K: Resource + Serialize + Send + Sync,
{
    fn meta(&self) -> &ObjectMeta {
        Resource::meta(self)
    }

    fn to_value(&self) -> Result<serde_yaml_ng::Value, String> {
        serde_yaml_ng::to_value(self).map_err(|e| e.to_string())
    }
}

/// A kind's reflector store, type-erased: readable from any thread.
pub(crate) trait KindStore: Send + Sync {
    /// The object `namespace/name`, if the store has it.
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<dyn AnyObject>>;
    /// Every object in the store.
    fn all(&self) -> Vec<Arc<dyn AnyObject>>;
    /// How many objects the store has.
    fn len(&self) -> usize;
}

/// A [`KindStore`] over a kube-rs reflector [`Store`].
pub(crate) struct StoreReader<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    pub dyntype: K::DynamicType,
    pub namespaced: bool,
}

impl<K> KindStore for StoreReader<K>
where
    K: Resource + Serialize + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<dyn AnyObject>> {
        let mut r = ObjectRef::<K>::new_with(name, self.dyntype.clone());
        if self.namespaced {
            r = r.within(namespace);
        }
        self.store.get(&r).map(|o| o as Arc<dyn AnyObject>)
    }

    fn all(&self) -> Vec<Arc<dyn AnyObject>> {
        self.store
            .state()
            .into_iter()
            .map(|o| o as Arc<dyn AnyObject>)
            .collect()
    }

    fn len(&self) -> usize {
        self.store.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_read_back() {
        for key in [
            ObjKey {
                kind: Kind::Pod,
                namespace: "default".into(),
                name: "web-1".into(),
            },
            ObjKey {
                kind: Kind::CiliumClusterwideNetworkPolicy,
                namespace: String::new(),
                name: "cw".into(),
            },
        ] {
            assert_eq!(ObjKey::from_origin(&key.origin()), Some(key.clone()));
        }
        assert_eq!(ObjKey::from_origin("dir/f.yaml:3"), None);
        assert_eq!(ObjKey::from_origin("kube:Bogus x/y"), None);
    }

    #[test]
    fn custom_resources_have_their_plurals() {
        let ar = Kind::VireoIdentity.api_resource();
        assert_eq!(
            (ar.group.as_str(), ar.version.as_str(), ar.plural.as_str()),
            ("vireo.io", "v1alpha1", "vireoidentities")
        );
        assert_eq!(
            Kind::CiliumNetworkPolicy.api_resource().api_version,
            "cilium.io/v2"
        );
        assert!(Kind::ALL.iter().filter(|k| k.custom()).count() == 4);
    }
}
