//! Reading a document into typed structs: where a read fails, and the fields it does not know.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use crate::source::first_line;

/// One step of a path into a document.
#[derive(Clone)]
pub(super) enum Seg {
    Key(Value),
    Idx(usize),
}

pub(super) fn value_at<'v>(v: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.as_mapping()?.get(k),
        Seg::Idx(i) => v.as_sequence()?.get(*i),
    })
}

pub(super) fn remove_at(v: &mut Value, path: &[Seg]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for s in parent {
        let next = match s {
            Seg::Key(k) => cur.as_mapping_mut().and_then(|m| m.get_mut(k)),
            Seg::Idx(i) => cur.as_sequence_mut().and_then(|q| q.get_mut(*i)),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => {
            m.remove(k);
        }
        (Seg::Idx(i), Value::Sequence(q)) if *i < q.len() => {
            q.remove(*i);
        }
        _ => {}
    }
}

/// Where a typed read of `v` as `T` fails: the deepest field or list element whose removal
/// makes `v` read (the root when none does), as `a.b[0].c`.
pub(super) fn locate<T: serde::de::DeserializeOwned>(v: &Value) -> String {
    let reads = |x: &Value| serde_yaml_ng::from_value::<T>(x.clone()).is_ok();
    let mut path: Vec<Seg> = Vec::new();
    'down: loop {
        let children: Vec<Seg> = match value_at(v, &path) {
            Some(Value::Mapping(m)) => m.keys().cloned().map(Seg::Key).collect(),
            Some(Value::Sequence(q)) => (0..q.len()).map(Seg::Idx).collect(),
            _ => break,
        };
        for c in children {
            let mut p = path.clone();
            p.push(c);
            let mut probe = v.clone();
            remove_at(&mut probe, &p);
            if reads(&probe) {
                path = p;
                continue 'down;
            }
        }
        break;
    }
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k.as_str().unwrap_or("?"));
            }
            Seg::Idx(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// "`path`: malformed (serde's message)".
pub(super) fn malformed<T: serde::de::DeserializeOwned>(
    v: &Value,
    e: &serde_yaml_ng::Error,
    prefix: &str,
) -> String {
    let at = format!("{prefix}{}", locate::<T>(v));
    let at = at.trim_end_matches('.');
    let at = if at.is_empty() { "spec" } else { at };
    format!("{at}: malformed ({})", first_line(&e.to_string()))
}

/// Paths of the fields of `raw` that did not survive a typed read (`known` is the typed value
/// written back): the fields the reader does not know. Null fields are not reported.
pub(super) fn unknown_paths(raw: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (raw, known) {
        (Value::Mapping(r), Value::Mapping(k)) => {
            for (key, v) in r {
                if v.is_null() {
                    continue;
                }
                let name = match key {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let p = if path.is_empty() {
                    name
                } else {
                    format!("{path}.{name}")
                };
                match k.get(key) {
                    None => out.push(p),
                    Some(kv) => unknown_paths(v, kv, &p, out),
                }
            }
        }
        (Value::Sequence(r), Value::Sequence(k)) => {
            for (i, (a, b)) in r.iter().zip(k).enumerate() {
                unknown_paths(a, b, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
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
    pub(super) fn of(raw: &Value, known: &Value, sections: &[&str], subject: &[&str]) -> Unknown {
        let mut paths = Vec::new();
        unknown_paths(raw, known, "", &mut paths);
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

    pub(super) fn rule(&self, section: &str, i: usize) -> &[String] {
        self.rules
            .get(&(section.to_string(), i))
            .map_or(&[], Vec::as_slice)
    }
}
