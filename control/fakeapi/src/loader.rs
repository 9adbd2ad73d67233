//! Loading objects from YAML (multi-document files, `kind: List`), Namespaces and CRDs first.

use serde_json::Value;
use std::path::Path;

use crate::error::Error;
use crate::store::Store;

fn rank(obj: &Value) -> u8 {
    match obj.get("kind").and_then(Value::as_str) {
        Some("Namespace") => 0,
        Some("CustomResourceDefinition") => 1,
        _ => 2,
    }
}

/// The objects of a multi-document YAML text, `List`s expanded, empty documents skipped.
pub fn parse_str(text: &str, origin: &str) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|source| Error::Yaml {
            path: origin.to_string(),
            source,
        })?;
        match v {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                if let Some(Value::Array(items)) = m.get("items") {
                    out.extend(items.iter().cloned());
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

fn load_all(store: &Store, mut objs: Vec<Value>) -> Result<Vec<Value>, Error> {
    objs.sort_by_key(rank);
    let mut out = Vec::with_capacity(objs.len());
    for o in objs {
        out.push(store.upsert(o)?);
    }
    Ok(out)
}

/// Creates (or replaces) the objects of a YAML text in the store; returns them as stored.
pub fn load_str(store: &Store, text: &str, origin: &str) -> Result<Vec<Value>, Error> {
    load_all(store, parse_str(text, origin)?)
}

/// Creates (or replaces) the objects of a YAML or JSON file, or of every `.yaml`, `.yml` and
/// `.json` file of a directory and its subdirectories, in path order.
pub fn load_path(store: &Store, path: &Path) -> Result<Vec<Value>, Error> {
    let mut files = Vec::new();
    collect(path, &mut files)?;
    files.sort();
    let mut objs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|source| Error::Io {
            path: f.display().to_string(),
            source,
        })?;
        objs.extend(parse_str(&text, &f.display().to_string())?);
    }
    load_all(store, objs)
}

fn collect(path: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            collect(&entry.map_err(io)?.path(), out)?;
        }
    } else if path.is_file() {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "yaml" | "yml" | "json") {
            out.push(path.to_path_buf());
        }
    } else {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file or directory",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_crds_before_their_objects() {
        let store = Store::new();
        let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: team}
spec: {endpointSelector: {}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: ciliumnetworkpolicies.cilium.io}
spec:
  group: cilium.io
  scope: Namespaced
  names: {plural: ciliumnetworkpolicies, kind: CiliumNetworkPolicy, shortNames: [cnp]}
  versions: [{name: v2, served: true, storage: true}]
---
"#;
        let objs = load_str(&store, text, "test").unwrap();
        assert_eq!(objs.len(), 3);
        let p = store
            .get("cilium.io/v2", "CiliumNetworkPolicy", Some("team"), "p")
            .unwrap();
        assert_eq!(p["spec"]["endpointSelector"], serde_json::json!({}));
        assert!(load_str(&store, "a: [", "bad").is_err());
    }
}
