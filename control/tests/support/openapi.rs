//! A CRD's `openAPIV3Schema` as the API server applies it: the structural-schema rules it
//! checks when the CRD is created, and a JSON Schema that accepts and rejects custom
//! resources as the API server does with strict field validation (unknown fields rejected
//! instead of pruned).

use serde_json::{json, Map, Value};

/// The structural-schema errors of `schema` (a version's `openAPIV3Schema`), each with its
/// path; empty when the API server would accept it.
pub fn structural_errors(schema: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    node(schema, "openAPIV3Schema", true, false, &mut errs);
    errs
}

fn node(s: &Value, at: &str, root: bool, in_junctor: bool, errs: &mut Vec<String>) {
    let Some(o) = s.as_object() else {
        errs.push(format!("{at}: not an object"));
        return;
    };
    for forbidden in [
        "$ref",
        "definitions",
        "$schema",
        "$defs",
        "uniqueItems",
        "additionalItems",
    ] {
        if o.contains_key(forbidden) {
            errs.push(format!("{at}: {forbidden} is not allowed"));
        }
    }
    let preserve = o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = o.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        errs.push(format!(
            "{at}: x-kubernetes-preserve-unknown-fields must be true if set"
        ));
    }
    if in_junctor {
        for k in [
            "description",
            "type",
            "default",
            "additionalProperties",
            "nullable",
        ] {
            if o.contains_key(k) && !int_or_string {
                errs.push(format!(
                    "{at}: {k} is not allowed inside allOf/anyOf/oneOf/not"
                ));
            }
        }
    } else if !o.contains_key("type") && !preserve && !int_or_string {
        errs.push(format!("{at}: no type"));
    }
    if o.contains_key("properties") && o.contains_key("additionalProperties") {
        errs.push(format!(
            "{at}: properties and additionalProperties together"
        ));
    }
    if let Some(t) = o.get("type") {
        let known = ["object", "array", "string", "integer", "number", "boolean"];
        if !t.as_str().is_some_and(|t| known.contains(&t)) {
            errs.push(format!("{at}: type {t} is not one of {known:?}"));
        }
    }
    let props = o.get("properties").and_then(Value::as_object);
    for (k, v) in props.into_iter().flatten() {
        let here = format!("{at}.properties.{k}");
        if root && k == "metadata" {
            metadata(v, &here, errs);
        } else {
            node(v, &here, false, in_junctor, errs);
        }
    }
    match o.get("additionalProperties") {
        Some(v @ Value::Object(_)) => node(
            v,
            &format!("{at}.additionalProperties"),
            false,
            in_junctor,
            errs,
        ),
        Some(Value::Bool(false)) | None => {}
        Some(other) => errs.push(format!(
            "{at}: additionalProperties {other} is not a schema"
        )),
    }
    match o.get("items") {
        Some(v @ Value::Object(_)) => node(v, &format!("{at}.items"), false, in_junctor, errs),
        Some(_) => errs.push(format!("{at}: items must be one schema")),
        None if o.get("type") == Some(&json!("array")) => {
            errs.push(format!("{at}: an array without items"))
        }
        None => {}
    }
    for j in ["allOf", "anyOf", "oneOf"] {
        for (i, v) in o
            .get(j)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let here = format!("{at}.{j}[{i}]");
            node(v, &here, false, true, errs);
            for k in v
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|m| m.0)
            {
                if !props.is_some_and(|p| p.contains_key(k)) {
                    errs.push(format!(
                        "{here}: property {k} is not specified outside the junctor"
                    ));
                }
            }
        }
    }
    if let Some(v) = o.get("not") {
        node(v, &format!("{at}.not"), false, true, errs);
    }
}

/// The root `metadata`: only `type: object`, and restrictions of `name` and `generateName`.
fn metadata(v: &Value, at: &str, errs: &mut Vec<String>) {
    let Some(o) = v.as_object() else {
        errs.push(format!("{at}: not an object"));
        return;
    };
    for (k, p) in o {
        match k.as_str() {
            "type" if p == "object" => {}
            "properties" => {
                for name in p.as_object().into_iter().flatten().map(|m| m.0) {
                    if name != "name" && name != "generateName" {
                        errs.push(format!(
                            "{at}: only name and generateName may be restricted, not {name}"
                        ));
                    }
                }
            }
            other => errs.push(format!("{at}: {other} is not allowed on metadata")),
        }
    }
}

/// A JSON Schema (draft 2020-12) for custom resources of `schema`: `nullable` becomes a
/// `null` type, an object that keeps no unknown fields rejects them, and the root admits
/// `apiVersion`, `kind` and `metadata` as the API server always does.
pub fn to_json_schema(schema: &Value) -> Value {
    let mut s = convert(schema, true);
    let o = s.as_object_mut().expect("an object schema");
    let props = o
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("properties");
    props.insert("apiVersion".into(), json!({"type": "string"}));
    props.insert("kind".into(), json!({"type": "string"}));
    props.entry("metadata").or_insert(json!({"type": "object"}));
    // The root's metadata is checked by the API server itself, never pruned.
    if let Some(m) = props.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("additionalProperties");
    }
    s
}

fn convert(s: &Value, root: bool) -> Value {
    let Some(o) = s.as_object() else {
        return s.clone();
    };
    let mut out = Map::new();
    for (k, v) in o {
        let v = match k.as_str() {
            "properties" => Value::Object(
                v.as_object()
                    .expect("properties is a map")
                    .iter()
                    .map(|(name, p)| (name.clone(), convert(p, false)))
                    .collect(),
            ),
            "items" | "additionalProperties" | "not" if v.is_object() => convert(v, false),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                v.as_array()
                    .expect("a list")
                    .iter()
                    .map(|p| convert(p, false))
                    .collect(),
            ),
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    if out.remove("nullable") == Some(Value::Bool(true)) {
        if let Some(t) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
        }
        if let Some(Value::Array(e)) = out.get_mut("enum") {
            e.push(Value::Null);
        }
    }
    let preserve = out.remove("x-kubernetes-preserve-unknown-fields") == Some(Value::Bool(true));
    let is_object = match out.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        _ => false,
    };
    if is_object && !preserve && !root && !out.contains_key("additionalProperties") {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    if root {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    if out.remove("x-kubernetes-int-or-string") == Some(Value::Bool(true)) {
        out.insert(
            "anyOf".into(),
            json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    Value::Object(out)
}
