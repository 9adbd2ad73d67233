//! Label selectors over a node's labels, with Kubernetes' semantics: `matchLabels` and every
//! `matchExpressions` requirement must all hold; an empty selector matches every node.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::validate::FieldError;

/// Whether `labels` satisfy `sel`. A requirement with an unknown operator, or `In`/`NotIn`
/// without values, matches nothing (check a selector with [`check`] first).
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exact = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    exact
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => !values.is_empty() && !value.is_some_and(|v| values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Every error of a selector at `path`: label keys and values that are not valid, unknown
/// operators, `In`/`NotIn` without values, `Exists`/`DoesNotExist` with values.
pub fn check(sel: &LabelSelector, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        let at = format!("{path}.matchLabels[{k:?}]");
        if let Err(m) = label_key(k) {
            errs.push(FieldError::new(&at, m));
        }
        if let Err(m) = label_value(v) {
            errs.push(FieldError::new(&at, m));
        }
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        if let Err(m) = label_key(&e.key) {
            errs.push(FieldError::new(&format!("{at}.key"), m));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errs.push(FieldError::new(
                &format!("{at}.values"),
                format!("operator {} needs at least one value", e.operator),
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::new(
                &format!("{at}.values"),
                format!("operator {} takes no values", e.operator),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::new(
                &format!("{at}.operator"),
                format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
            )),
        }
        for (j, v) in values.iter().enumerate() {
            if let Err(m) = label_value(v) {
                errs.push(FieldError::new(&format!("{at}.values[{j}]"), m));
            }
        }
    }
    errs
}

/// A label key: an optional DNS subdomain prefix (at most 253 characters) and `/`, then a
/// name of 1-63 characters.
fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let dns = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !dns {
            return Err(format!(
                "{k:?} is not a valid label key: the prefix must be a DNS subdomain"
            ));
        }
    }
    if name.is_empty() || !name_chars(name) {
        return Err(format!(
            "{k:?} is not a valid label key: the name must be 1-63 characters, alphanumeric, \
             '-', '_' or '.' inside"
        ));
    }
    Ok(())
}

/// A label value: empty, or 1-63 characters, alphanumeric at both ends.
fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || name_chars(v) {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a valid label value: at most 63 characters, alphanumeric, '-', '_' \
             or '.' inside"
        ))
    }
}

fn name_chars(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn node(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
        }
    }

    #[test]
    fn an_empty_selector_matches_every_node() {
        assert!(matches(&LabelSelector::default(), &node(&[])));
        assert!(matches(&LabelSelector::default(), &node(&[("a", "1")])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let sel = LabelSelector {
            match_labels: Some(node(&[("zone", "a"), ("gpu", "yes")]).into_iter().collect()),
            match_expressions: None,
        };
        assert!(matches(
            &sel,
            &node(&[("zone", "a"), ("gpu", "yes"), ("x", "y")])
        ));
        assert!(!matches(&sel, &node(&[("zone", "a")])));
        assert!(!matches(&sel, &node(&[("zone", "b"), ("gpu", "yes")])));
    }

    #[test]
    fn every_operator_as_kubernetes_has_it() {
        let with = node(&[("zone", "a")]);
        let other = node(&[("zone", "c")]);
        let without = node(&[("rack", "1")]);
        let cases = [
            (expr("zone", "In", &["a", "b"]), [true, false, false]),
            (expr("zone", "NotIn", &["a", "b"]), [false, true, true]),
            (expr("zone", "Exists", &[]), [true, true, false]),
            (expr("zone", "DoesNotExist", &[]), [false, false, true]),
            (expr("zone", "Bogus", &["a"]), [false, false, false]),
            (expr("zone", "In", &[]), [false, false, false]),
            (expr("zone", "NotIn", &[]), [false, false, false]),
        ];
        for (sel, want) in cases {
            let got = [with.clone(), other.clone(), without.clone()].map(|l| matches(&sel, &l));
            assert_eq!(got, want, "{sel:?}");
        }
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let mut sel = expr("gpu", "Exists", &[]);
        sel.match_labels = Some(node(&[("zone", "a")]).into_iter().collect());
        assert!(matches(&sel, &node(&[("zone", "a"), ("gpu", "")])));
        assert!(!matches(&sel, &node(&[("zone", "a")])));
        assert!(!matches(&sel, &node(&[("gpu", "")])));
    }

    #[test]
    fn check_names_each_bad_part() {
        let fields = |sel: &LabelSelector| -> Vec<String> {
            check(sel, "spec.nodeSelector")
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert!(fields(&expr("node-role.kubernetes.io/worker", "Exists", &[])).is_empty());
        assert!(fields(&expr("zone", "In", &["a", "b-2"])).is_empty());
        assert_eq!(
            fields(&expr("zone", "Equals", &["a"])),
            ["spec.nodeSelector.matchExpressions[0].operator"]
        );
        assert_eq!(
            fields(&expr("zone", "In", &[])),
            ["spec.nodeSelector.matchExpressions[0].values"]
        );
        assert_eq!(
            fields(&expr("zone", "Exists", &["a"])),
            ["spec.nodeSelector.matchExpressions[0].values"]
        );
        assert_eq!(
            fields(&expr("Bad_Prefix/x", "Exists", &[])),
            ["spec.nodeSelector.matchExpressions[0].key"]
        );
        assert_eq!(
            fields(&expr("zone", "In", &["-a"])),
            ["spec.nodeSelector.matchExpressions[0].values[0]"]
        );
        let long = "x".repeat(64);
        assert_eq!(
            fields(&expr(&long, "Exists", &[])),
            ["spec.nodeSelector.matchExpressions[0].key"]
        );
        let sel = LabelSelector {
            match_labels: Some(node(&[("a b", "c")]).into_iter().collect()),
            match_expressions: None,
        };
        assert_eq!(fields(&sel), ["spec.nodeSelector.matchLabels[\"a b\"]"]);
    }
}
