//! The object store: JSON objects by resource type, namespace and name, one global
//! monotonically increasing resourceVersion (like etcd's revision), a log of changes for watches
//! to resume from, and compaction.

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::resources::{Registry, ResourceKey, ResourceType};
use crate::selectors::Selectors;
use defaults::check_shape;

mod defaults;

/// How many changes the log keeps before the oldest are compacted away on their own.
const MAX_LOG: usize = 100_000;
/// How many notices a slow watch may lag behind before it is told to start again (410).
const BROADCAST_CAPACITY: usize = 16_384;
/// The namespaces that always exist.
pub(crate) const INITIAL_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];
const PROTECTED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// The type of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// An object was created.
    Added,
    /// An object was changed.
    Modified,
    /// An object was deleted.
    Deleted,
}

impl EventType {
    /// As on the wire: `ADDED`, `MODIFIED`, `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in the log.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub key: ResourceKey,
    pub kind: EventType,
    pub object: Value,
    /// The object before a modification (for selector transitions).
    pub old: Option<Value>,
}

/// What watches are told.
#[derive(Clone, Debug)]
pub(crate) enum Notice {
    Event(Arc<Event>),
    /// Everything up to this resourceVersion has been compacted: open watches end with 410.
    Compacted(u64),
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// Synthetic ADDED events for every object, then the changes (`resourceVersion` unset or 0).
    Now,
    /// The changes after this resourceVersion.
    After(u64),
}

/// A watch, started.
pub(crate) struct WatchStart {
    /// The events to send first: synthetic ADDED ones, or those replayed from the log.
    pub initial: Vec<(EventType, Value, Option<Value>)>,
    /// The changes from then on.
    pub rx: broadcast::Receiver<Notice>,
    /// The resourceVersion the initial events bring the watcher to.
    pub rv: u64,
}

/// One page of a list.
pub(crate) struct ListPage {
    pub items: Vec<Value>,
    pub rv: u64,
    pub continue_token: Option<String>,
    pub remaining: usize,
}

/// Which part of an object a write replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The object (its status is kept when the type has a status subresource).
    Main,
    /// The `status` only.
    Status,
}

type ObjKey = (String, String);

struct State {
    rv: u64,
    compacted: u64,
    registry: Registry,
    objects: HashMap<ResourceKey, BTreeMap<ObjKey, Value>>,
    log: VecDeque<Arc<Event>>,
    rng: u64,
    next_ip: u32,
}

struct Shared {
    state: Mutex<State>,
    tx: broadcast::Sender<Notice>,
}

/// The server's objects, shared by the HTTP side and tests; every method takes a lock for a
/// moment and never blocks otherwise, so it is usable from sync and async code alike.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// The time now, as the API writes it (RFC 3339, seconds, UTC).
pub(crate) fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now.to_string())
}

fn is_dns_subdomain(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Everything of an object but metadata and status: what a change of bumps `generation`.
fn spec_part(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets the `apiVersion` and `kind` an object is served with at `version`.
pub(crate) fn at_version(mut obj: Value, rt: &ResourceType, version: &str) -> Value {
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), json!(rt.api_version(version)));
        m.insert("kind".into(), json!(rt.kind));
    }
    obj
}

impl State {
    fn random(&mut self) -> u64 {
        // xorshift64*: names and uids need only be unlikely to repeat.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn uid(&mut self) -> String {
        let a = self.random();
        let b = self.random();
        let h = format!("{a:016x}{b:016x}");
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }

    fn generated_name(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut r = self.random();
        let mut s = prefix.to_string();
        for _ in 0..5 {
            s.push(ALPHABET[(r % ALPHABET.len() as u64) as usize] as char);
            r /= ALPHABET.len() as u64;
        }
        s
    }

    fn emit(&mut self, tx: &broadcast::Sender<Notice>, ev: Event) {
        let ev = Arc::new(ev);
        self.log.push_back(ev.clone());
        while self.log.len() > MAX_LOG {
            if let Some(old) = self.log.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine.
        let _ = tx.send(Notice::Event(ev));
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        let key = ResourceKey {
            group: String::new(),
            plural: "namespaces".into(),
        };
        self.objects
            .get(&key)
            .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
    }

    fn after_write(&mut self, rt: &ResourceType, obj: &Value) {
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            if let Ok(t) = ResourceType::from_crd(obj) {
                self.registry.insert(t);
            }
        }
    }
}

impl Store {
    /// An empty store with the initial namespaces.
    pub fn new() -> Store {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let store = Store {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    rv: 1,
                    compacted: 0,
                    registry: Registry::default(),
                    objects: HashMap::new(),
                    log: VecDeque::new(),
                    rng: seed,
                    next_ip: 10,
                }),
                tx,
            }),
        };
        for ns in INITIAL_NAMESPACES {
            let created = store.create(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
            }));
            debug_assert!(created.is_ok());
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent enough data for a test server.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// The resource types served now.
    pub fn resource_types(&self) -> Vec<ResourceType> {
        self.lock().registry.all().cloned().collect()
    }

    pub(crate) fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    /// Compacts the history: watches and lists from any older resourceVersion get 410 Gone
    /// (`Expired`), and the watches open now end with a 410 `ERROR` event. Returns the
    /// compaction point (the current resourceVersion).
    pub fn compact(&self) -> u64 {
        let mut st = self.lock();
        st.compacted = st.rv;
        st.log.clear();
        let _ = self.shared.tx.send(Notice::Compacted(st.rv));
        st.rv
    }

    /// The type at a URL's `group/version/plural`.
    pub(crate) fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.lock()
            .registry
            .by_path(group, version, plural)
            .cloned()
    }

    fn resolve_obj(&self, obj: &Value) -> Result<(ResourceType, String), ApiError> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        self.resolve_kind(api_version, kind)
    }

    fn resolve_kind(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ResourceType, String), ApiError> {
        self.lock()
            .registry
            .by_kind(api_version, kind)
            .map(|(t, v)| (t.clone(), v))
            .ok_or_else(|| {
                ApiError::not_found_path(format!(
                    "the server could not find the requested resource: no kind {kind:?} is served at {api_version:?}"
                ))
            })
    }

    fn ns_of(rt: &ResourceType, ns: Option<&str>) -> String {
        if rt.namespaced {
            ns.filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        }
    }

    /// Creates an object (`apiVersion`, `kind`, `metadata.name` or `generateName`, and
    /// `metadata.namespace` for namespaced kinds, `default` if none), as a POST would.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let (rt, version) = self.resolve_obj(&obj)?;
        let ns = Self::ns_of(&rt, meta_str(&obj, "namespace"));
        self.create_at(&rt, &version, &ns, obj, false)
    }

    /// Replaces an object, as a PUT would: a `metadata.resourceVersion` that is not the current
    /// one is a 409 Conflict; none replaces unconditionally.
    pub fn update(&self, obj: Value) -> Result<Value, ApiError> {
        let (rt, version) = self.resolve_obj(&obj)?;
        let ns = Self::ns_of(&rt, meta_str(&obj, "namespace"));
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        self.update_at(&rt, &version, &ns, &name, obj, Part::Main, false)
    }

    /// Replaces an object's status, as a PUT on `/status` would.
    pub fn update_status(&self, obj: Value) -> Result<Value, ApiError> {
        let (rt, version) = self.resolve_obj(&obj)?;
        let ns = Self::ns_of(&rt, meta_str(&obj, "namespace"));
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        self.update_at(&rt, &version, &ns, &name, obj, Part::Status, false)
    }

    /// Creates the object, or replaces it (unconditionally) if it exists.
    pub fn upsert(&self, mut obj: Value) -> Result<Value, ApiError> {
        let (rt, version) = self.resolve_obj(&obj)?;
        let ns = Self::ns_of(&rt, meta_str(&obj, "namespace"));
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        if self.get_at(&rt, &version, &ns, &name).is_ok() {
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            self.update_at(&rt, &version, &ns, &name, obj, Part::Main, false)
        } else {
            self.create_at(&rt, &version, &ns, obj, false)
        }
    }

    /// One object; `namespace` is ignored for cluster-scoped kinds.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let (rt, version) = self.resolve_kind(api_version, kind)?;
        let ns = Self::ns_of(&rt, namespace);
        self.get_at(&rt, &version, &ns, name)
    }

    /// The objects of a kind, in one namespace or (`None`) all.
    pub fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, ApiError> {
        let (rt, version) = self.resolve_kind(api_version, kind)?;
        let ns = namespace.filter(|_| rt.namespaced);
        Ok(self
            .list_at(&rt, &version, ns, &Selectors::default(), None, None, None)?
            .items)
    }

    /// Deletes an object and returns it as it was last.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let (rt, version) = self.resolve_kind(api_version, kind)?;
        let ns = Self::ns_of(&rt, namespace);
        self.delete_at(&rt, &version, &ns, name, None, false)
    }

    pub(crate) fn create_at(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        check_shape(rt, &obj)?;
        if let Some(body_ns) = meta_str(&obj, "namespace") {
            if rt.namespaced && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) => n.to_string(),
            (None, Some(prefix)) => {
                let prefix = prefix.to_string();
                loop {
                    let n = st.generated_name(&prefix);
                    let taken = st
                        .objects
                        .get(&rt.key())
                        .is_some_and(|m| m.contains_key(&(ns.to_string(), n.clone())));
                    if !taken {
                        break n;
                    }
                }
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        };
        if !is_dns_subdomain(&name) {
            return Err(ApiError::invalid(
                &rt.kind,
                &name,
                format!("metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
            ));
        }
        if rt.namespaced && !st.namespace_exists(ns) {
            let ns_type = st
                .registry
                .by_path("", "v1", "namespaces")
                .cloned()
                .ok_or_else(|| ApiError::not_found_path("namespaces"))?;
            return Err(ApiError::not_found(&ns_type, ns));
        }
        let key = (ns.to_string(), name.clone());
        if st
            .objects
            .get(&rt.key())
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(ApiError::already_exists(rt, &name));
        }
        let mut obj = at_version(obj, rt, rt.preferred_version());
        st.apply_defaults(rt, &mut obj, None, &key)?;
        let rv = if dry_run { st.rv } else { st.rv + 1 };
        let uid = st.uid();
        {
            let meta = obj["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("metadata"))?;
            meta.insert("name".into(), json!(name));
            if rt.namespaced {
                meta.insert("namespace".into(), json!(ns));
            } else {
                meta.remove("namespace");
            }
            meta.insert("uid".into(), json!(uid));
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.insert("generation".into(), json!(1));
            meta.remove("deletionTimestamp");
            meta.remove("selfLink");
        }
        if dry_run {
            return Ok(at_version(obj, rt, version));
        }
        st.rv = rv;
        st.objects
            .entry(rt.key())
            .or_default()
            .insert(key, obj.clone());
        st.after_write(rt, &obj);
        st.emit(
            &self.shared.tx,
            Event {
                rv,
                key: rt.key(),
                kind: EventType::Added,
                object: obj.clone(),
                old: None,
            },
        );
        Ok(at_version(obj, rt, version))
    }

    pub(crate) fn get_at(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let st = self.lock();
        st.objects
            .get(&rt.key())
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .map(|o| at_version(o.clone(), rt, version))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_at(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        obj: Value,
        part: Part,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_shape(rt, &obj)?;
        if let Some(body_name) = meta_str(&obj, "name") {
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
        }
        if let Some(body_ns) = meta_str(&obj, "namespace") {
            if rt.namespaced && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let want_rv = meta_str(&obj, "resourceVersion").map(str::to_string);
        self.modify(
            rt,
            version,
            ns,
            name,
            part,
            dry_run,
            move |_| Ok(obj),
            want_rv,
        )
    }

    /// Reads, changes and writes one object under the lock; `f` gets the stored object (at
    /// `version`) and returns the new one. `want_rv` is a precondition on the stored version.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn modify(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        part: Part,
        dry_run: bool,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
        want_rv: Option<String>,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let key = (ns.to_string(), name.to_string());
        let old = st
            .objects
            .get(&rt.key())
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or("").to_string();
        if let Some(w) = want_rv {
            if w != old_rv {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
        }
        let new = f(&at_version(old.clone(), rt, version))?;
        check_shape(rt, &new)?;
        let mut new = at_version(new, rt, rt.preferred_version());
        if !new.get("metadata").is_some_and(Value::is_object) {
            new["metadata"] = json!({});
        }
        match part {
            Part::Status => {
                let mut merged = old.clone();
                match new.get("status") {
                    Some(s) => merged["status"] = s.clone(),
                    None => {
                        if let Some(m) = merged.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                new = merged;
            }
            Part::Main if rt.status_subresource => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            Part::Main => {}
        }
        // The server owns these.
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
        ] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        new["metadata"]["resourceVersion"] = json!(old_rv);
        st.apply_defaults(rt, &mut new, Some(&old), &key)?;
        if new == old {
            return Ok(at_version(old, rt, version));
        }
        if spec_part(&new) != spec_part(&old) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        if dry_run {
            return Ok(at_version(new, rt, version));
        }
        st.rv += 1;
        let rv = st.rv;
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.objects
            .entry(rt.key())
            .or_default()
            .insert(key, new.clone());
        st.after_write(rt, &new);
        st.emit(
            &self.shared.tx,
            Event {
                rv,
                key: rt.key(),
                kind: EventType::Modified,
                object: new.clone(),
                old: Some(old),
            },
        );
        Ok(at_version(new, rt, version))
    }

    /// Deletes under the lock; `pre` is the (uid, resourceVersion) precondition.
    pub(crate) fn delete_at(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        pre: Option<(Option<String>, Option<String>)>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let key = (ns.to_string(), name.to_string());
        let old = st
            .objects
            .get(&rt.key())
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some((uid, rv)) = pre {
            if uid.is_some_and(|u| Some(u.as_str()) != meta_str(&old, "uid")) {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    "Precondition failed: UID in precondition does not match the UID of the object",
                ));
            }
            if rv.is_some_and(|r| Some(r.as_str()) != meta_str(&old, "resourceVersion")) {
                return Err(ApiError::conflict(rt, name, "the object has been modified; please apply your changes to the latest version and try again"));
            }
        }
        let is_ns = rt.group.is_empty() && rt.plural == "namespaces";
        if is_ns && PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        if dry_run {
            return Ok(at_version(old, rt, version));
        }
        // What goes with it: a namespace's objects, a CRD's custom resources.
        let mut cascade: Vec<(ResourceKey, ObjKey)> = Vec::new();
        let is_crd = rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions";
        let crd_type = if is_crd {
            ResourceType::from_crd(&old).ok()
        } else {
            None
        };
        if is_ns {
            for (rk, objs) in &st.objects {
                if st.registry.get(rk).is_some_and(|t| t.namespaced) {
                    cascade.extend(
                        objs.keys()
                            .filter(|k| k.0 == name)
                            .map(|k| (rk.clone(), k.clone())),
                    );
                }
            }
        }
        if let Some(t) = &crd_type {
            if let Some(objs) = st.objects.get(&t.key()) {
                cascade.extend(objs.keys().map(|k| (t.key(), k.clone())));
            }
        }
        for (rk, ok) in cascade.into_iter().chain(std::iter::once((rt.key(), key))) {
            let Some(mut gone) = st.objects.get_mut(&rk).and_then(|m| m.remove(&ok)) else {
                continue;
            };
            st.rv += 1;
            let rv = st.rv;
            gone["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.emit(
                &self.shared.tx,
                Event {
                    rv,
                    key: rk,
                    kind: EventType::Deleted,
                    object: gone,
                    old: None,
                },
            );
        }
        if let Some(t) = crd_type {
            st.registry.remove(&t.key());
            st.objects.remove(&t.key());
        }
        let mut out = old;
        out["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        Ok(at_version(out, rt, version))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn list_at(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        sel: &Selectors,
        limit: Option<usize>,
        continue_token: Option<&str>,
        min_rv: Option<u64>,
    ) -> Result<ListPage, ApiError> {
        let st = self.lock();
        if let Some(r) = min_rv.filter(|r| *r > 0) {
            if r < st.compacted {
                return Err(ApiError::expired(r, st.compacted));
            }
        }
        let after: Option<ObjKey> = match continue_token {
            None | Some("") => None,
            Some(tok) => {
                let mut parts = tok.splitn(3, '/');
                let (Some(r), Some(n), Some(m)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(ApiError::bad_request(format!(
                        "invalid continue token {tok:?}"
                    )));
                };
                let r: u64 = r.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid continue token {tok:?}"))
                })?;
                if r < st.compacted {
                    let mut e = ApiError::expired(r, st.compacted);
                    e.message = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into();
                    return Err(e);
                }
                Some((n.to_string(), m.to_string()))
            }
        };
        let mut items = Vec::new();
        let mut remaining = 0;
        let mut last: Option<&ObjKey> = None;
        if let Some(objs) = st.objects.get(&rt.key()) {
            let range = objs
                .iter()
                .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a));
            for (k, o) in range {
                if ns.is_some_and(|n| n != k.0) || !sel.matches(o) {
                    continue;
                }
                if limit.is_some_and(|l| l > 0 && items.len() >= l) {
                    remaining += 1;
                    continue;
                }
                items.push(at_version(o.clone(), rt, version));
                last = Some(k);
            }
        }
        let continue_token = if remaining > 0 {
            last.map(|(n, m)| format!("{}/{n}/{m}", st.rv))
        } else {
            None
        };
        Ok(ListPage {
            items,
            rv: st.rv,
            continue_token,
            remaining,
        })
    }

    pub(crate) fn watch_at(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        from: WatchFrom,
    ) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        let rx = self.shared.tx.subscribe();
        let key = rt.key();
        let in_ns = |o: &Value| ns.is_none_or(|n| meta_str(o, "namespace") == Some(n));
        let initial = match from {
            WatchFrom::Now => st
                .objects
                .get(&key)
                .map(|m| {
                    m.values()
                        .filter(|o| in_ns(o))
                        .map(|o| (EventType::Added, o.clone(), None))
                        .collect()
                })
                .unwrap_or_default(),
            WatchFrom::After(r) => {
                if r < st.compacted {
                    return Err(ApiError::expired(r, st.compacted));
                }
                st.log
                    .iter()
                    .filter(|e| e.rv > r && e.key == key && in_ns(&e.object))
                    .map(|e| (e.kind, e.object.clone(), e.old.clone()))
                    .collect()
            }
        };
        Ok(WatchStart {
            initial,
            rx,
            rv: st.rv,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"a": "1"}})
    }

    fn rv(o: &Value) -> u64 {
        o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn resource_versions_increase_and_no_op_writes_keep_them() {
        let s = Store::new();
        let a = s.create(cm("a")).unwrap();
        let b = s.create(cm("b")).unwrap();
        assert!(rv(&b) > rv(&a) && s.resource_version() == rv(&b));
        let same = s.update(a.clone()).unwrap();
        assert_eq!(rv(&same), rv(&a));
        let mut changed = a.clone();
        changed["data"]["a"] = json!("2");
        let c = s.update(changed.clone()).unwrap();
        assert!(rv(&c) > rv(&b));
        assert_eq!(c["metadata"]["generation"], 2);
        // `a` is stale now.
        assert_eq!(s.update(changed).unwrap_err().code, 409);
        assert_eq!(s.create(cm("a")).unwrap_err().reason, "AlreadyExists");
    }

    #[test]
    fn deleting_a_crd_deletes_its_objects_and_its_type() {
        let s = Store::new();
        for c in crate::resources::cilium_crds() {
            s.create(c).unwrap();
        }
        s.create(json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "x"}}))
            .unwrap();
        s.delete(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "ciliumclusterwidenetworkpolicies.cilium.io",
        )
        .unwrap();
        assert_eq!(
            s.list("cilium.io/v2", "CiliumClusterwideNetworkPolicy", None)
                .unwrap_err()
                .code,
            404
        );
        assert!(s
            .resource_types()
            .iter()
            .any(|t| t.kind == "CiliumNetworkPolicy"));
    }
}
