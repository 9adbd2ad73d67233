//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`not exists) and field selectors
//! (`=`, `==`, `!=` on any dotted path of the object, such as `metadata.name` or `spec.nodeName`).

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty one matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelReq>);

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(k: &str, whole: &str) -> Result<String, String> {
    let k = k.trim();
    let ok = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(k.to_string())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label key {k:?} in {whole:?}"
        ))
    }
}

impl LabelSelector {
    /// Parses `app=web,tier!=db,env in (a,b),!legacy`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for term in split_top_level(s) {
            let t = term.trim();
            if t.is_empty() {
                return Err(format!("found empty requirement in label selector {s:?}"));
            }
            if let Some(open) = t.find('(') {
                let close = t
                    .rfind(')')
                    .filter(|c| *c == t.len() - 1)
                    .ok_or_else(|| format!("unable to parse requirement {t:?}: missing ')'"))?;
                let head = t[..open].trim_end();
                let values: Vec<String> = t[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                if let Some(k) = head.strip_suffix("notin") {
                    reqs.push(LabelReq::NotIn(check_key(k, t)?, values));
                } else if let Some(k) = head.strip_suffix("in") {
                    reqs.push(LabelReq::In(check_key(k, t)?, values));
                } else {
                    return Err(format!(
                        "unable to parse requirement {t:?}: expected in or notin"
                    ));
                }
            } else if let Some((k, v)) = t.split_once("!=") {
                reqs.push(LabelReq::NotEq(check_key(k, t)?, v.trim().into()));
            } else if let Some((k, v)) = t.split_once("==") {
                reqs.push(LabelReq::Eq(check_key(k, t)?, v.trim().into()));
            } else if let Some((k, v)) = t.split_once('=') {
                reqs.push(LabelReq::Eq(check_key(k, t)?, v.trim().into()));
            } else if let Some(k) = t.strip_prefix('!') {
                reqs.push(LabelReq::NotExists(check_key(k, t)?));
            } else {
                reqs.push(LabelReq::Exists(check_key(t, t)?));
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether an object's labels satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector; the empty one matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(Vec<String>, bool, String)>);

impl FieldSelector {
    /// Parses `metadata.name=x,spec.nodeName!=n1`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for term in s.split(',') {
            let t = term.trim();
            let (path, eq, value) = if let Some((p, v)) = t.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = t.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = t.split_once('=') {
                (p, true, v)
            } else {
                return Err(format!("invalid selector: {s:?}; can't understand {t:?}"));
            };
            let path = path.trim();
            if path.is_empty() {
                return Err(format!("invalid selector: {s:?}; empty field name"));
            }
            reqs.push((
                path.split('.').map(str::to_string).collect(),
                eq,
                value.trim().to_string(),
            ));
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether the object's fields satisfy every requirement (a missing field is `""`).
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let mut v = Some(obj);
            for p in path {
                v = v.and_then(|x| x.get(p));
            }
            let got = match v {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *eq
        })
    }
}

/// A label and a field selector together.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selectors {
    /// The label selector.
    pub labels: LabelSelector,
    /// The field selector.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Whether the object satisfies both.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_operators() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier=front"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(m("app in (db, web)"));
        assert!(!m("app notin (db,web)"));
        assert!(m("env notin (prod)"));
        assert!(m("app"));
        assert!(!m("!app"));
        assert!(m("!env"));
        assert!(!m("app in (db),tier"));
        assert!(LabelSelector::parse("app in (a").is_err());
        assert!(LabelSelector::parse("a=b,,c").is_err());
        assert!(LabelSelector::parse("x y=z").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&o);
        assert!(m("metadata.name=p"));
        assert!(m("metadata.namespace==ns,spec.nodeName=n1"));
        assert!(!m("spec.nodeName=n2"));
        assert!(m("spec.nodeName!=n2"));
        assert!(m("status.phase="));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
