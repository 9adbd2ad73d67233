//! Label sets as the objects carry them: `security-labels` maps, and the `metadata.labels` copy.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use vireo_policy::Labels;

/// `labels` as a JSON object `{"k8s:app": "web", …}` (keys `source:key`, as [`Labels`] holds
/// them).
pub fn labels_to_json(labels: &Labels) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect::<Map<String, Value>>(),
    )
}

/// The label set of a JSON object of strings, or why it is not one.
pub fn labels_from_json(v: &Value) -> Result<Labels, String> {
    let m = v
        .as_object()
        .ok_or_else(|| format!("expected an object of labels, found {v}"))?;
    let mut out = Vec::with_capacity(m.len());
    for (k, v) in m {
        let v = v
            .as_str()
            .ok_or_else(|| format!("label {k:?}: expected a string, found {v}"))?;
        out.push((k.clone(), v.to_string()));
    }
    Ok(Labels::new(out))
}

/// The `metadata.labels` of a `VireoIdentity`: its `k8s:` labels with the source stripped, those
/// that are valid Kubernetes label keys and values only (others are left out: the copy is for
/// `kubectl get -l`, never read back).
pub fn metadata_labels(labels: &Labels) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter_map(|(k, v)| {
            let k = k.strip_prefix("k8s:")?;
            (valid_label_key(k) && valid_label_value(v)).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// A label name or value: at most 63 characters, alphanumerics at both ends, `-_.` allowed
/// inside; `empty_ok` for values.
fn valid_name(s: &str, empty_ok: bool) -> bool {
    if s.is_empty() {
        return empty_ok;
    }
    let b = s.as_bytes();
    s.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated lowercase labels of
/// alphanumerics and `-`, alphanumerics at both ends.
fn valid_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && l.len() <= 63
                && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn valid_label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => valid_subdomain(prefix) && valid_name(name, false),
        None => valid_name(k, false),
    }
}

fn valid_label_value(v: &str) -> bool {
    valid_name(v, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_source_prefixed_keys() {
        let l = Labels::new([
            ("k8s:app", "web"),
            ("k8s:io.kubernetes.pod.namespace", "x"),
            ("reserved:host", ""),
        ]);
        let j = labels_to_json(&l);
        assert_eq!(j["k8s:app"], "web");
        assert_eq!(labels_from_json(&j).unwrap(), l);
        assert!(labels_from_json(&serde_json::json!({"a": 1})).is_err());
        assert!(labels_from_json(&serde_json::json!(["a"])).is_err());
    }

    #[test]
    fn metadata_labels_keep_valid_k8s_labels_only() {
        let long = "v".repeat(64);
        let l = Labels::new([
            ("k8s:app", "web"),
            ("k8s:io.kubernetes.pod.namespace", "default"),
            ("k8s:app.kubernetes.io/name", "db"),
            ("k8s:Bad_Prefix/x", "y"),
            ("k8s:empty", ""),
            ("k8s:spaces", "a b"),
            ("k8s:long", long.as_str()),
            ("reserved:host", ""),
            ("k8s:-dash", "x"),
        ]);
        let m = metadata_labels(&l);
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "app",
                "app.kubernetes.io/name",
                "empty",
                "io.kubernetes.pod.namespace"
            ]
        );
    }
}
