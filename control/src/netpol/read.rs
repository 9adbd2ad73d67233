//! Reading a document into typed structs: where a read fails, and the fields it does not know.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::source::first_line;

/// A typed read that failed: the path of the field that failed (`ingress[0].toPorts`, empty
/// for the root) and serde's message.
pub(super) struct Malformed {
    path: String,
    error: serde_yaml_ng::Error,
}

/// Reads `v` as `T`. `Ok`: the value, with the paths (`a.b[0].c`) of the fields of `v` that `T`
/// does not know ([`serde_ignored`]; null fields are not reported). `Err`: where and why the
/// read failed ([`serde_path_to_error`]).
pub(super) fn read<T: DeserializeOwned>(v: &Value) -> Result<(T, Vec<String>), Malformed> {
    let mut unknown = Vec::new();
    let mut note = |p: serde_ignored::Path| {
        if !value_at(v, &p).is_some_and(Value::is_null) {
            unknown.push(ignored_path(&p));
        }
    };
    let ignored = serde_ignored::Deserializer::new(v.clone(), &mut note);
    match serde_path_to_error::deserialize(ignored) {
        Ok(t) => Ok((t, unknown)),
        Err(e) => Err(Malformed {
            // `a.b[0].c`; `.` is the root.
            path: Some(e.path().to_string())
                .filter(|p| p != ".")
                .unwrap_or_default(),
            error: e.into_inner(),
        }),
    }
}

/// The value an ignored field's path leads to in `v`.
fn value_at<'v>(v: &'v Value, p: &serde_ignored::Path) -> Option<&'v Value> {
    use serde_ignored::Path;
    match p {
        Path::Root => Some(v),
        Path::Seq { parent, index } => value_at(v, parent)?.as_sequence()?.get(*index),
        Path::Map { parent, key } => value_at(v, parent)?.as_mapping()?.get(key.as_str()),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => value_at(v, parent),
    }
}

/// An ignored field's path as `a.b[0].c`.
fn ignored_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => join(ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// `path.key`, or `key` at the root.
fn join(mut path: String, key: &str) -> String {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
    path
}

/// "`path`: malformed (serde's message)", the path after `prefix`; `spec` when it is empty.
pub(super) fn malformed(m: &Malformed, prefix: &str) -> String {
    let at = format!("{prefix}{}", m.path);
    let at = at.trim_end_matches('.');
    let at = if at.is_empty() { "spec" } else { at };
    format!("{at}: malformed ({})", first_line(&m.error.to_string()))
}

/// Splits `ingress[3].toPorts[0]` into `("ingress", Some(3), "toPorts[0]")`.
pub(super) fn split_path(p: &str) -> (&str, Option<usize>, &str) {
    let end = p.find(['.', '[']).unwrap_or(p.len());
    let (head, rest) = p.split_at(end);
    if let Some(r) = rest.strip_prefix('[') {
        if let Some(close) = r.find(']') {
            let idx = r[..close].parse().ok();
            let after = &r[close + 1..];
            return (head, idx, after.strip_prefix('.').unwrap_or(after));
        }
    }
    (head, None, rest.strip_prefix('.').unwrap_or(rest))
}

/// Whether a raw value is present and not empty.
pub(super) fn written(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Sequence(s)) => !s.is_empty(),
        Some(Value::Mapping(m)) => !m.is_empty(),
        Some(_) => true,
    }
}

/// Unknown fields of one spec, sorted by where they are.
#[derive(Default)]
pub(super) struct Unknown {
    /// By (section, rule index): paths inside the rule.
    pub(super) rules: BTreeMap<(String, usize), Vec<String>>,
    /// In the subject's selectors.
    pub(super) subject: Vec<String>,
    /// Anywhere else.
    pub(super) other: Vec<String>,
}

impl Unknown {
    /// Sorts `paths` (as [`read`] gives them): inside a rule of one of `sections`, in one of the
    /// `subject` fields, or elsewhere.
    pub(super) fn of(paths: Vec<String>, sections: &[&str], subject: &[&str]) -> Unknown {
        let mut u = Unknown::default();
        for p in paths {
            match split_path(&p) {
                (s, Some(i), rest) if sections.contains(&s) && !rest.is_empty() => {
                    u.rules
                        .entry((s.to_string(), i))
                        .or_default()
                        .push(rest.to_string());
                }
                (s, _, _) if subject.contains(&s) => u.subject.push(p),
                _ => u.other.push(p),
            }
        }
        u
    }

    /// The unknown fields inside rule `i` of `section`, as paths inside the rule.
    pub(super) fn rule(&self, section: &str, i: usize) -> &[String] {
        self.rules
            .get(&(section.to_string(), i))
            .map_or(&[], Vec::as_slice)
    }
}
