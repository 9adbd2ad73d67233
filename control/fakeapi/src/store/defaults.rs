//! What the server fills in and checks when an object is written: the defaults clients commonly
//! read (a Service's cluster IP, a Pod's phase, a Namespace's status, a CRD's conditions) and the
//! shape every object must have.

use serde_json::{json, Value};

use super::{meta_str, now_rfc3339, ObjKey, State};
use crate::error::ApiError;
use crate::resources::{ResourceKey, ResourceType};

impl State {
    fn ip_in_use(&self, ip: &str, except: Option<&ObjKey>) -> bool {
        let key = ResourceKey {
            group: String::new(),
            plural: "services".into(),
        };
        self.objects.get(&key).is_some_and(|m| {
            m.iter().any(|(k, s)| {
                Some(k) != except
                    && s.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(ip)
            })
        })
    }

    fn allocate_ip(&mut self) -> String {
        loop {
            let n = self.next_ip;
            self.next_ip += 1;
            let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
            if n & 0xff != 0 && n & 0xff != 255 && !self.ip_in_use(&ip, None) {
                return ip;
            }
        }
    }

    /// Defaults the real server fills in that clients commonly read.
    pub(super) fn apply_defaults(
        &mut self,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
        key: &ObjKey,
    ) -> Result<(), ApiError> {
        let name = key.1.as_str();
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                if obj.pointer("/status/phase").is_none() {
                    obj["status"] = json!({"phase": "Active"});
                }
                if obj.pointer("/spec/finalizers").is_none() {
                    obj["spec"] = json!({"finalizers": ["kubernetes"]});
                }
            }
            ("", "pods") if obj.pointer("/status/phase").is_none() => {
                if !obj.get("status").is_some_and(Value::is_object) {
                    obj["status"] = json!({});
                }
                obj["status"]["phase"] = json!("Pending");
            }
            ("", "services") => {
                if !obj.get("spec").is_some_and(Value::is_object) {
                    obj["spec"] = json!({});
                }
                let spec = &mut obj["spec"];
                if spec.get("type").is_none() {
                    spec["type"] = json!("ClusterIP");
                }
                if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                    for p in ports.iter_mut().filter(|p| p.is_object()) {
                        if p.get("protocol").is_none() {
                            p["protocol"] = json!("TCP");
                        }
                        if p.get("targetPort").is_none() {
                            if let Some(port) = p.get("port").cloned() {
                                p["targetPort"] = port;
                            }
                        }
                    }
                }
                if spec.get("sessionAffinity").is_none() {
                    spec["sessionAffinity"] = json!("None");
                }
                let external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
                let given = spec
                    .get("clusterIP")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                match (
                    given,
                    old.and_then(|o| o.pointer("/spec/clusterIP")).cloned(),
                ) {
                    (None, Some(prev)) => {
                        obj["spec"]["clusterIP"] = prev.clone();
                        obj["spec"]["clusterIPs"] = json!([prev]);
                    }
                    (None, None) if !external => {
                        let ip = self.allocate_ip();
                        obj["spec"]["clusterIP"] = json!(ip);
                        obj["spec"]["clusterIPs"] = json!([ip]);
                    }
                    (Some(ip), _) if ip != "None" && !ip.is_empty() => {
                        if self.ip_in_use(&ip, Some(key)) {
                            return Err(ApiError::invalid(
                                "Service",
                                name,
                                format!("spec.clusterIPs: Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"),
                            ));
                        }
                        if obj.pointer("/spec/clusterIPs").is_none() {
                            obj["spec"]["clusterIPs"] = json!([ip]);
                        }
                    }
                    _ => {}
                }
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let t = ResourceType::from_crd(obj)
                    .map_err(|e| ApiError::invalid("CustomResourceDefinition", name, e))?;
                if let Some(o) = old {
                    let same = o.pointer("/status/acceptedNames") == obj.pointer("/spec/names")
                        && o.get("status")
                            .is_some_and(|s| s.get("conditions").is_some());
                    if same {
                        obj["status"] = o["status"].clone();
                        return Ok(());
                    }
                }
                if let Some(existing) = self.registry.get(&t.key()) {
                    if !existing.from_crd {
                        return Err(ApiError::invalid(
                            "CustomResourceDefinition",
                            name,
                            "spec.names.plural: Invalid value: a built-in resource has this name",
                        ));
                    }
                }
                let storage = obj
                    .pointer("/spec/versions")
                    .and_then(Value::as_array)
                    .and_then(|vs| vs.iter().find(|v| v.get("storage") == Some(&json!(true))))
                    .and_then(|v| v.get("name"))
                    .cloned()
                    .unwrap_or(json!("v1"));
                let now = now_rfc3339();
                let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
                obj["status"] = json!({
                    "acceptedNames": names,
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                         "message": "no conflicts found", "lastTransitionTime": now},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                         "message": "the initial names have been accepted", "lastTransitionTime": now},
                    ],
                    "storedVersions": [storage],
                });
            }
            _ => {}
        }
        Ok(())
    }
}

/// Checks what every object must look like: an object whose `metadata` is an object with string
/// labels and annotations.
pub(super) fn check_shape(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let name = meta_str(obj, "name").unwrap_or("");
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request was not a JSON object",
        ));
    }
    match obj.get("metadata") {
        None | Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                &rt.kind,
                name,
                "metadata: Invalid value: must be an object",
            ))
        }
    }
    for field in ["labels", "annotations"] {
        match obj.get("metadata").and_then(|m| m.get(field)) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.values().all(Value::is_string) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    name,
                    format!("metadata.{field}: Invalid value: must be a map of strings to strings"),
                ))
            }
        }
    }
    for field in ["apiVersion", "kind"] {
        if let Some(v) = obj.get(field) {
            if !v.is_string() {
                return Err(ApiError::bad_request(format!("{field} must be a string")));
            }
        }
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str) {
        if !k.is_empty() && k != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({k}) does not match the kind of the request ({})",
                rt.kind
            )));
        }
    }
    Ok(())
}
