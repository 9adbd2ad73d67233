//! Manifests -> pods: applying a manifest directory, giving pods their namespaces and having
//! `vireo-cni` wire them (address, veth, the agent's attachment), and writing the realised
//! objects the agents read.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::json;
use vireo_control::source;

use crate::kube::key_of;
use crate::netns::netns_add;
use crate::state::write_atomic;
use crate::{PodState, Source, State};

/// Applies a manifest directory: new pods are placed and created, changed pods get their new
/// labels, everything else is passed to the agents as written.
pub(crate) fn apply_dir(st: &mut State, dir: &Path, write: bool) -> Result<()> {
    let m = source::load_dir(dir);
    for e in &m.errors {
        eprintln!("vireo: {e}");
    }
    let mut objects: Vec<serde_json::Value> = Vec::new();
    for n in m.namespaces.values() {
        objects.push(serde_json::to_value(n)?);
    }
    for n in m.nodes.keys() {
        eprintln!(
            "vireo: {}: the sandbox makes its own Nodes; Node {n} ignored",
            dir.display()
        );
    }
    // Services and EndpointSlices go to the agents as written (the sandbox realises nothing
    // for them).
    for o in m.services.values() {
        objects.push(serde_json::to_value(o)?);
    }
    for o in m.endpoint_slices.values() {
        objects.push(serde_json::to_value(o)?);
    }
    for o in m.policies.values() {
        objects.push(serde_json::to_value(&o.value)?);
    }
    for o in &m.others {
        objects.push(serde_json::to_value(&o.value)?);
    }
    for o in objects {
        let key = key_of(&o);
        st.objects.retain(|x| key_of(x) != key);
        st.objects.push(o);
    }
    realize_pods(st, m.pods.into_values().collect())?;
    if write {
        write_manifests(st)?;
    }
    Ok(())
}

pub(crate) fn realize_pods(st: &mut State, pods: Vec<Pod>) -> Result<()> {
    let mut rr = st.pods.len();
    for p in pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        let ns = p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let containers = match p.spec.as_ref().map(|s| &s.containers) {
            Some(c) if !c.is_empty() => serde_json::to_value(c)?,
            _ => serde_json::Value::Null,
        };
        if let Some(existing) = st
            .pods
            .iter_mut()
            .find(|x| x.namespace == ns && x.name == name)
        {
            existing.labels = labels;
            existing.containers = containers;
            continue;
        }
        let node = match p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(n) => {
                if st.nodes.iter().all(|x| x.name != n) {
                    eprintln!(
                        "vireo: pod {ns}/{name}: spec.nodeName {n} is not a sandbox node; skipped"
                    );
                    continue;
                }
                n
            }
            None => {
                rr += 1;
                st.nodes[(rr - 1) % st.nodes.len()].name.clone()
            }
        };
        create_pod(st, &ns, &name, &node, labels, containers)?;
    }
    Ok(())
}

/// Makes the pod's namespace (the runtime's job) and has `vireo-cni` wire it on its node, as
/// a kubelet would; the address comes from the CNI result.
fn create_pod(
    st: &mut State,
    ns: &str,
    name: &str,
    node: &str,
    labels: BTreeMap<String, String>,
    containers: serde_json::Value,
) -> Result<()> {
    let n = st.node(node)?.clone();
    let netns = format!("{}-{}-{}", st.name, sanitize(ns), sanitize(name));
    netns_add(st, &netns)?;
    let added = crate::cni::add(st, &n, ns, name, &netns)
        .with_context(|| format!("pod {ns}/{name} on {node}"))?;
    st.pods.push(PodState {
        namespace: ns.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        netns,
        ip: added.ip,
        ifname: added.host_ifname,
        labels,
        containers,
        cni_result: Some(added.result),
    });
    st.save()
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Writes the realised objects the agents read.
pub(crate) fn write_manifests(st: &State) -> Result<()> {
    publish(st, &[])
}

/// Writes the realised objects the agents read, leaving out the pods `without` (as if they had
/// been deleted; their namespaces and veths stay, and `publish(st, &[])` brings them back).
/// `vireo connectivity test` removes a service backend this way.
pub fn publish(st: &State, without: &[&PodState]) -> Result<()> {
    let mut nodes: Vec<serde_json::Value> = vec![serde_json::to_value(Namespace {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    })?];
    for n in &st.nodes {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
            "spec": {"podCIDR": n.pod_cidr.to_string(), "podCIDRs": [n.pod_cidr.to_string()]},
            "status": {"addresses": [{"type": "InternalIP", "address": n.ip.to_string()},
                                      {"type": "Hostname", "address": n.name}]},
        }))?;
        nodes.push(serde_json::to_value(node)?);
    }
    let pods: Vec<serde_json::Value> = st
        .pods
        .iter()
        .filter(|p| {
            !without
                .iter()
                .any(|w| w.namespace == p.namespace && w.name == p.name)
        })
        .map(|p| {
            let containers = if p.containers.is_null() {
                json!([{"name": "main", "image": "sandbox"}])
            } else {
                p.containers.clone()
            };
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
                "spec": {"nodeName": p.node, "containers": containers},
                "status": {"phase": "Running", "podIP": p.ip.to_string(), "podIPs": [{"ip": p.ip.to_string()}]},
            })
        })
        .collect();
    if st.source == Source::Kube {
        let mut all = nodes;
        all.extend(pods);
        all.extend(st.objects.iter().cloned());
        return publish_to_apiserver(st, &all);
    }
    let list = |items: Vec<serde_json::Value>| -> Result<String> {
        Ok(serde_yaml_ng::to_string(
            &json!({"apiVersion": "v1", "kind": "List", "items": items}),
        )?)
    };
    let m = st.manifests();
    write_atomic(&m.join("00-sandbox-nodes.yaml"), &list(nodes)?)?;
    write_atomic(&m.join("20-objects.yaml"), &list(st.objects.clone())?)?;
    write_atomic(&m.join("10-pods.yaml"), &list(pods)?)?;
    Ok(())
}

/// Writes the objects into the sandbox's API server, deleting those the last publish wrote
/// that are gone (their keys are kept in `published.json`).
fn publish_to_apiserver(st: &State, all: &[serde_json::Value]) -> Result<()> {
    let file = st.dir.join("published.json");
    let before: Vec<crate::kube::ObjectKey> = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    crate::kube::sync(&crate::kube::kubeconfig(st), all, &before)?;
    let keys: Vec<crate::kube::ObjectKey> = all.iter().map(key_of).collect();
    write_atomic(&file, &serde_json::to_string(&keys)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(sanitize("kube.system_x"), "kube-system-x");
    }
}
