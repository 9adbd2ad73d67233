//! The sandbox as a container runtime: each node has a conflist (`vireo-cni`, IPAM by
//! host-local over the node's pod CIDR, leases in the sandbox's run directory), and every pod is
//! wired by running the plugin in the node's namespace with the spec's environment, the way
//! libcni does it (the conflist's `cniVersion` and `name` put into the plugin's configuration,
//! the ADD result handed back as `prevResult` to DEL).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use vireo_control::cluster::gateway;

use crate::state::write_atomic;
use crate::{NodeState, PodState, State};

/// Where Debian's containernetworking-plugins put host-local.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// The network's name (host-local keeps its leases under `dataDir/NAME`).
const NETWORK: &str = "vireo";

/// The `vireo-cni` binary: next to the running `vireo` (a cargo target directory), else
/// `/opt/cni/bin`.
pub fn plugin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the vireo binary")?;
    let here = exe.with_file_name("vireo-cni");
    for p in [here.clone(), PathBuf::from("/opt/cni/bin/vireo-cni")] {
        if p.is_file() {
            return Ok(p.parent().expect("a file has a parent").to_path_buf());
        }
    }
    bail!(
        "vireo-cni not found ({} or /opt/cni/bin): build it with `cargo build --release -p \
         vireo-cni`",
        here.display()
    )
}

/// `CNI_PATH` for the sandbox: `vireo-cni`'s directory, then host-local's.
pub fn cni_path() -> Result<String> {
    Ok(format!("{}:{SYSTEM_CNI_DIR}", plugin_dir()?.display()))
}

/// The conflist of node `n`.
pub fn conflist_path(st: &State, n: &NodeState) -> PathBuf {
    st.dir.join("cni").join(format!("{}.conflist", n.name))
}

/// The conflist of node `n`: `vireo-cni` with the pods' MTU and the node's agent socket,
/// host-local over the node's pod CIDR from .10 (gateway .1), leases under the sandbox's run
/// directory (so `down` removes them).
pub fn conflist(st: &State, n: &NodeState) -> Value {
    let base = u32::from(n.pod_cidr.network());
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [{
            "type": "vireo-cni",
            "mtu": st.pod_mtu(),
            "agentSocket": n.api,
            "ipam": {
                "type": "host-local",
                "ranges": [[{
                    "subnet": n.pod_cidr.to_string(),
                    "rangeStart": Ipv4Addr::from(base + 10).to_string(),
                    "gateway": gateway(n.pod_cidr).to_string(),
                }]],
                "dataDir": st.dir.join("ipam").join(&n.name),
            },
        }],
    })
}

/// Writes every node's conflist.
pub fn write_conflists(st: &State) -> Result<()> {
    std::fs::create_dir_all(st.dir.join("cni"))?;
    for n in &st.nodes {
        write_atomic(
            &conflist_path(st, n),
            &serde_json::to_string_pretty(&conflist(st, n))?,
        )?;
    }
    Ok(())
}

/// The container id the sandbox gives pod `ns/name` (the spec's alphabet: DNS names fit).
pub fn container_id(st: &State, ns: &str, name: &str) -> String {
    format!("{}.{ns}.{name}", st.name)
}

/// What ADD gave: the pod's address and the host side's name.
pub struct Added {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The host side of the veth.
    pub host_ifname: String,
    /// The whole result (kept for DEL's `prevResult`).
    pub result: Value,
}

/// CNI ADD of pod `ns/name` (namespace `netns`) on node `n`.
pub fn add(st: &State, n: &NodeState, ns: &str, name: &str, netns: &str) -> Result<Added> {
    let id = container_id(st, ns, name);
    let r = exec(st, n, "ADD", &id, ns, name, netns, None)?
        .ok_or_else(|| anyhow!("vireo-cni ADD {id}: no result"))?;
    let ip = r["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("vireo-cni ADD {id}: no address in {r}"))?;
    let host_ifname = r["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i.get("sandbox").is_none())
        .and_then(|i| i["name"].as_str())
        .ok_or_else(|| anyhow!("vireo-cni ADD {id}: no host interface in {r}"))?
        .to_string();
    Ok(Added {
        ip,
        host_ifname,
        result: r,
    })
}

/// CNI DEL of pod `p` (idempotent in the plugin).
pub fn del(st: &State, p: &PodState) -> Result<()> {
    let n = st.node(&p.node)?;
    let id = container_id(st, &p.namespace, &p.name);
    let prev = p.cni_result.as_ref().filter(|v| !v.is_null());
    exec(st, n, "DEL", &id, &p.namespace, &p.name, &p.netns, prev).map(|_| ())
}

/// Runs `vireo-cni` in node `n`'s namespace as a runtime does: the spec's environment and the
/// plugin's configuration from the node's conflist on stdin.
#[allow(clippy::too_many_arguments)]
fn exec(
    st: &State,
    n: &NodeState,
    command: &str,
    id: &str,
    ns: &str,
    name: &str,
    netns: &str,
    prev: Option<&Value>,
) -> Result<Option<Value>> {
    let list = conflist(st, n);
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    let dir = plugin_dir()?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &n.netns])
        .arg(dir.join("vireo-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns_path(netns))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
        )
        .env("CNI_PATH", cni_path()?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running vireo-cni")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())?;
    let o = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        let v: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        bail!(
            "vireo-cni {command} {id} failed (code {}): {} ({}){}",
            v["code"],
            v["msg"].as_str().unwrap_or(text.trim()),
            v["details"].as_str().unwrap_or(""),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| format!("\n  {l}"))
                .collect::<String>()
        );
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_str(text.trim()).with_context(
        || format!("vireo-cni {command} {id}: the result is not JSON"),
    )?))
}

/// The path of a named network namespace.
pub fn netns_path(netns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(netns)
}
