//! The sandbox's name and its state file: what `up` made (nodes, pods, namespaces, objects),
//! read by every other command.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug, Clone)]
pub struct SandboxName {
    /// The sandbox's name: the prefix of everything it makes.
    #[arg(long = "sandbox", default_value = "vsbx", env = "VIREO_SANDBOX", value_parser = parse_name)]
    pub name: String,
}

fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 8
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err("1-8 lowercase letters or digits".into());
    }
    Ok(s.to_string())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub api: PathBuf,
    pub log: PathBuf,
    pub agent_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub ifname: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.containers` as written (their named ports resolve Services' target ports); null:
    /// one container without ports.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub containers: serde_json::Value,
    /// `vireo-cni`'s ADD result (DEL's `prevResult`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_result: Option<serde_json::Value>,
}

/// Where the agents read the cluster's objects from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A directory of manifests per agent, written by the sandbox.
    #[default]
    Manifests,
    /// A (fake) Kubernetes API server, watched through a kubeconfig as in a cluster.
    Kube,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Manifests => "manifests",
            Source::Kube => "kube",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// The agents' source.
    #[serde(default)]
    pub source: Source,
    /// Workers per agent (0 in an older state file: one).
    #[serde(default)]
    pub workers: usize,
    /// The agents' workers spin when idle.
    #[serde(default)]
    pub busy_poll: bool,
    /// The pods' MTU (`--mtu`; 0 in an older state file: the default, underlay 1500 less 50).
    #[serde(default)]
    pub mtu: u16,
    /// The API server's process (`--source kube`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver_pid: Option<u32>,
    pub dir: PathBuf,
    pub underlay: String,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    /// The "world" namespace on the underlay (also listed in `netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<String>,
    /// Every network namespace made, in creation order.
    pub netns: Vec<String>,
    /// Objects other than Pods from applied manifests, as written.
    pub objects: Vec<serde_json::Value>,
}

pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/vireo/sandbox-{name}"))
}

impl State {
    /// The pods' MTU (vireo-cni sets it on both ends of each pod's veth).
    pub fn pod_mtu(&self) -> u16 {
        if self.mtu == 0 {
            crate::UNDERLAY_MTU - crate::topology::VXLAN_OVERHEAD
        } else {
            self.mtu
        }
    }

    /// The underlay's MTU: the nodes' uplinks and the bridge (the pods' plus VXLAN's 50).
    pub fn underlay_mtu(&self) -> u16 {
        self.pod_mtu() + crate::topology::VXLAN_OVERHEAD
    }

    pub fn load(name: &str) -> Result<State> {
        let p = state_dir(name).join("state.json");
        let text = std::fs::read_to_string(&p).map_err(|_| {
            anyhow!(
                "sandbox {name} is not up (no {}); run `vireo sandbox up`",
                p.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}", p.display()))
    }

    pub(crate) fn save(&self) -> Result<()> {
        write_atomic(
            &self.dir.join("state.json"),
            &serde_json::to_string_pretty(self)?,
        )
    }

    pub fn node(&self, name: &str) -> Result<&NodeState> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            anyhow!(
                "no node {name} in sandbox {} (nodes: {})",
                self.name,
                self.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    pub fn pod(&self, ns_name: &str) -> Result<&PodState> {
        let (ns, name) = ns_name.split_once('/').unwrap_or(("default", ns_name));
        self.pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
            .ok_or_else(|| anyhow!("no pod {ns}/{name} in sandbox {}", self.name))
    }

    pub(crate) fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }
}

pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(parse_name("vsbx").is_ok());
        assert!(parse_name("Vsbx").is_err());
        assert!(parse_name("toolongname").is_err());
        assert!(parse_name("a-b").is_err());
    }
}
