//! Patches: JSON patch and JSON merge patch (the `json-patch` crate), an approximation of
//! strategic merge patch (merge patch, plus lists of objects merged by their merge key and the
//! `$patch`, `$retainKeys`, `$setElementOrder` and `$deleteFromPrimitiveList` directives), and
//! server-side apply approximated as a strategic merge of the applied configuration.

use serde_json::{Map, Value};

/// The patch types of the `Content-Type` of a PATCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type of a content type, if it is one.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies a patch document to `target`, or says why it cannot.
pub fn apply(kind: PatchType, target: &mut Value, patch: &Value) -> Result<(), String> {
    match kind {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| format!("invalid JSON patch: {e}"))?;
            json_patch::patch(target, &p).map_err(|e| e.to_string())
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err("a merge patch must be a JSON object".into());
            }
            json_patch::merge(target, patch);
            Ok(())
        }
        PatchType::Strategic | PatchType::Apply => {
            let Value::Object(p) = patch else {
                return Err("a strategic merge patch must be a JSON object".into());
            };
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                merge_map(t, p);
            }
            Ok(())
        }
    }
}

/// The merge key of a list of objects, from the field's name and its elements.
fn merge_key(field: &str, elems: &[&Value]) -> Option<&'static str> {
    let all_have = |k: &str| elems.iter().all(|e| e.get(k).is_some());
    let candidates: &[&'static str] = match field {
        "ports" => &["containerPort", "port", "name"],
        "volumeMounts" | "volumeDevices" => &["mountPath", "devicePath"],
        "conditions" | "addresses" => &["type"],
        "hostAliases" => &["ip"],
        "taints" => &["key"],
        _ => &["name"],
    };
    candidates.iter().copied().find(|k| all_have(k))
}

/// Strips the directives out of a value that is not merged into anything.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get("$patch").is_none())
                .map(clean)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = match clean(&Value::Object(patch.clone())) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        return;
    }
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if let Value::Array(order) = v {
                orders.push((field, order));
            }
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (target.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(pm) => {
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(k);
                } else if let Some(Value::Object(tm)) = target.get_mut(k) {
                    merge_map(tm, pm);
                } else {
                    let mut fresh = Map::new();
                    merge_map(&mut fresh, pm);
                    target.insert(k.clone(), Value::Object(fresh));
                }
            }
            Value::Array(pa) => {
                let merged = merge_list(k, target.get(k), pa);
                target.insert(k.clone(), merged);
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(Value::Array(retain)) = patch.get("$retainKeys") {
        target.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
    for (field, order) in orders {
        if let Some(Value::Array(list)) = target.get_mut(field) {
            reorder(field, list, order);
        }
    }
}

fn merge_list(field: &str, target: Option<&Value>, patch: &[Value]) -> Value {
    let replace_all = patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"));
    let objects = !patch.is_empty() && patch.iter().all(Value::is_object);
    let current: Vec<Value> = match target {
        Some(Value::Array(a)) if !replace_all => a.clone(),
        _ => Vec::new(),
    };
    if !objects {
        return clean(&Value::Array(patch.to_vec()));
    }
    let elems: Vec<&Value> = patch
        .iter()
        .filter(|e| e.get("$patch").and_then(Value::as_str) != Some("replace"))
        .chain(current.iter())
        .collect();
    let Some(key) = merge_key(field, &elems) else {
        return clean(&Value::Array(patch.to_vec()));
    };
    let mut out = current;
    for p in patch {
        let Value::Object(pm) = p else { continue };
        let directive = pm.get("$patch").and_then(Value::as_str);
        if directive == Some("replace") {
            continue;
        }
        let kv = pm.get(key);
        let pos = out.iter().position(|e| e.get(key) == kv);
        match (directive, pos) {
            (Some("delete"), Some(i)) => {
                out.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => {
                if let Value::Object(tm) = &mut out[i] {
                    merge_map(tm, pm);
                }
            }
            (_, None) => {
                let mut fresh = Map::new();
                merge_map(&mut fresh, pm);
                out.push(Value::Object(fresh));
            }
        }
    }
    Value::Array(out)
}

fn reorder(field: &str, list: &mut [Value], order: &[Value]) {
    let elems: Vec<&Value> = order.iter().collect();
    let key = if order.iter().all(Value::is_object) {
        merge_key(field, &elems)
    } else {
        None
    };
    let rank = |e: &Value| -> usize {
        order
            .iter()
            .position(|o| match key {
                Some(k) => o.get(k).is_some() && o.get(k) == e.get(k),
                None => o == e,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(|e| rank(e));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name_and_honours_directives() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}, {"containerPort": 81}]},
            {"name": "b", "image": "b:1"}
        ]}, "metadata": {"labels": {"x": "1", "y": "2"}}});
        let patch = json!({
            "metadata": {"labels": {"x": null, "z": "3"}},
            "spec": {
                "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}, {"name": "c"}],
                "containers": [
                    {"name": "a", "image": "a:2", "ports": [{"containerPort": 81, "$patch": "delete"}]},
                    {"name": "c", "image": "c:1"}
                ]
            }
        });
        apply(PatchType::Strategic, &mut pod, &patch).unwrap();
        assert_eq!(pod["metadata"]["labels"], json!({"y": "2", "z": "3"}));
        let names: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(pod["spec"]["containers"][1]["image"], "a:2");
        assert_eq!(
            pod["spec"]["containers"][1]["ports"],
            json!([{"containerPort": 80}])
        );
    }

    #[test]
    fn strategic_replaces_primitive_lists_and_keyless_objects() {
        let mut o = json!({"a": [1, 2], "b": [{"x": 1}], "c": {"d": 1, "e": 2}});
        let p = json!({"a": [3], "b": [{"x": 2}], "c": {"$retainKeys": ["d"], "d": 5}});
        apply(PatchType::Strategic, &mut o, &p).unwrap();
        assert_eq!(o, json!({"a": [3], "b": [{"x": 2}], "c": {"d": 5}}));
    }

    #[test]
    fn json_and_merge_patches() {
        let mut o = json!({"a": {"b": 1}, "l": [1]});
        apply(PatchType::Merge, &mut o, &json!({"a": {"b": null, "c": 2}})).unwrap();
        assert_eq!(o, json!({"a": {"c": 2}, "l": [1]}));
        apply(
            PatchType::Json,
            &mut o,
            &json!([{"op": "add", "path": "/l/-", "value": 2}]),
        )
        .unwrap();
        assert_eq!(o["l"], json!([1, 2]));
        assert!(apply(
            PatchType::Json,
            &mut o,
            &json!([{"op": "test", "path": "/l/0", "value": 9}])
        )
        .is_err());
        assert!(apply(PatchType::Json, &mut o, &json!({"not": "a list"})).is_err());
    }
}
