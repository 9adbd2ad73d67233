//! `meta.k8s.io/v1` Tables, what `kubectl get` asks for (`Accept: ...;as=Table;...`): Name and
//! Age for every kind, and a few columns of the kinds people look at most.

use serde_json::{json, Value};

use crate::resources::ResourceType;

/// What a row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub(crate) fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether an `Accept` header asks for a Table.
pub(crate) fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.replace(' ', "").contains("as=Table"))
}

/// A duration the way kubectl prints ages (`45s`, `5m3s`, `3h`, `2d4h`, `12d`).
pub(crate) fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else {
        format!("{d}d")
    }
}

fn age(obj: &Value) -> String {
    let Some(ts) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    human_duration(jiff::Timestamp::now().as_second() - ts.as_second())
}

fn column(name: &str, ty: &str, format: &str, priority: u32, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn text(obj: &Value, pointer: &str) -> Value {
    match obj.pointer(pointer) {
        Some(Value::String(s)) => json!(s),
        Some(Value::Null) | None => json!("<none>"),
        Some(other) => json!(other.to_string()),
    }
}

fn columns_and_cells(rt: &ResourceType) -> (Vec<Value>, Vec<&'static str>) {
    let name = column(
        "Name",
        "string",
        "name",
        0,
        "Name must be unique within a namespace.",
    );
    let age = column("Age", "string", "", 0, "CreationTimestamp is a timestamp representing the server time when this object was created.");
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => (
            vec![
                name,
                column(
                    "Status",
                    "string",
                    "",
                    0,
                    "The aggregate status of the containers in this pod.",
                ),
                age,
                column("IP", "string", "", 1, "The IP address assigned to the pod."),
                column("Node", "string", "", 1, "The node the pod is scheduled on."),
            ],
            vec!["", "/status/phase", "", "/status/podIP", "/spec/nodeName"],
        ),
        ("", "services") => (
            vec![
                name,
                column("Type", "string", "", 0, "The type of service."),
                column(
                    "Cluster-IP",
                    "string",
                    "",
                    0,
                    "The cluster IP of the service.",
                ),
                age,
            ],
            vec!["", "/spec/type", "/spec/clusterIP", ""],
        ),
        ("", "namespaces") => (
            vec![
                name,
                column("Status", "string", "", 0, "The phase of the namespace."),
                age,
            ],
            vec!["", "/status/phase", ""],
        ),
        _ => (vec![name, age], vec!["", ""]),
    }
}

fn row(obj: &Value, pointers: &[&str], include: IncludeObject) -> Value {
    let cells: Vec<Value> = pointers
        .iter()
        .enumerate()
        .map(|(i, p)| match (i, *p) {
            (0, _) => text(obj, "/metadata/name"),
            (_, "") => json!(age(obj)),
            (_, p) => text(obj, p),
        })
        .collect();
    let mut r = json!({ "cells": cells });
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            });
        }
        IncludeObject::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of `items`.
pub(crate) fn table(
    rt: &ResourceType,
    items: &[Value],
    rv: u64,
    continue_token: Option<&str>,
    include: IncludeObject,
) -> Value {
    let (columns, pointers) = columns_and_cells(rt);
    let rows: Vec<Value> = items.iter().map(|o| row(o, &pointers, include)).collect();
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_print_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(183), "3m3s");
        assert_eq!(human_duration(1800), "30m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(20 * 86400), "20d");
    }

    #[test]
    fn accept_header_detection() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(
            "application/json, application/json;as=Table;v=v1;g=meta.k8s.io"
        ));
    }
}
