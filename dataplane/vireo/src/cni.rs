//! Pods wired by `vireo-cni`: their registrations (`cni_add`/`cni_del`/`cni_get` on the API),
//! kept in memory and as one JSON file per container in a directory next to the API socket
//! ([`vireo_api::cni_registry_dir`]), so that a restarted agent attaches them again and a DEL
//! after a restart works.
//!
//! A registered pod's host veth is attached at once (the plugin's ADD returns only then), its
//! endpoint published with the identity of the Pod the source's view has under its namespace,
//! name and address, or `init` (5) while there is none; when that identity changes, the endpoint
//! is updated in the tables in place (no detach). A registration whose veth is gone (a DEL while
//! the agent was down, a pod torn down without DEL) is forgotten, file and all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vireo_api::{cni_registry_dir, valid_container_id, CniEndpoint, CniStatus};
use vireo_control::cluster::pod_ifname;
use vireo_control::config::{parse_mac, EndpointConfig, InterfaceConfig, Role};
use vireo_dataplane::io::sys;
use vireo_dataplane::tables::Endpoint;
use vireo_policy::Identity;

use super::Agent;

/// The registrations, by container id, and the directory they are kept in.
pub(super) struct Registry {
    dir: PathBuf,
    regs: BTreeMap<String, CniEndpoint>,
    /// The conflist last written (`cni_conflist`), or the error last logged about it.
    conflist: Option<Result<String, String>>,
}

impl Registry {
    /// An empty registry for an agent serving `socket` (nothing is read yet: see
    /// [`Agent::cni_restore`]).
    pub(super) fn new(socket: &Path) -> Registry {
        Registry {
            dir: cni_registry_dir(socket),
            regs: BTreeMap::new(),
            conflist: None,
        }
    }

    fn save(&self, ep: &CniEndpoint) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = CniEndpoint::file(&self.dir, &ep.container_id);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(ep)?)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))
    }

    fn forget(&mut self, id: &str) -> Option<CniEndpoint> {
        let path = CniEndpoint::file(&self.dir, id);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), "removing a CNI registration: {e}");
            }
        }
        self.regs.remove(id)
    }

    /// The registration whose host veth is `ifname`.
    pub(super) fn by_ifname(&self, ifname: &str) -> Option<&CniEndpoint> {
        self.regs.values().find(|r| r.host_ifname == ifname)
    }

    /// Whether a registration names pod `namespace/name`.
    pub(super) fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.regs.values().any(|r| {
            r.pod_namespace.as_deref() == Some(namespace) && r.pod_name.as_deref() == Some(name)
        })
    }

    /// The registrations' files: the valid ones, and the names of files that are not.
    fn load(&self) -> (Vec<CniEndpoint>, Vec<PathBuf>) {
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return (ok, bad);
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<CniEndpoint>(&b).ok())
            {
                Some(ep)
                    if valid_container_id(&ep.container_id)
                        && CniEndpoint::file(&self.dir, &ep.container_id) == p =>
                {
                    ok.push(ep)
                }
                _ => bad.push(p),
            }
        }
        ok.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        (ok, bad)
    }
}

impl Agent {
    /// At start: the registrations kept on disk are attached again when their veth exists, and
    /// forgotten when it does not (the pod was deleted while the agent was down).
    pub(super) fn cni_restore(&mut self) {
        let (eps, bad) = self.cni.load();
        for p in bad {
            tracing::warn!(path = %p.display(), "unreadable CNI registration; ignored");
        }
        for ep in eps {
            let id = ep.container_id.clone();
            self.cni.regs.insert(id.clone(), ep.clone());
            if sys::ifindex(&ep.host_ifname).is_err() {
                tracing::info!(container = %id, iface = %ep.host_ifname,
                    "CNI registration's veth is gone; forgotten");
                self.cni.forget(&id);
                continue;
            }
            match self.cni_attach(&ep) {
                Ok(()) => tracing::info!(container = %id, iface = %ep.host_ifname,
                    "CNI registration restored"),
                Err(e) => tracing::warn!(container = %id, "restoring a CNI registration: {e:#}"),
            }
        }
    }

    /// `cni_add`: registers `ep` and attaches its veth; answers once attached. The same
    /// registration again is answered as it stands; a changed one replaces it.
    pub(super) fn cni_add(&mut self, ep: CniEndpoint) -> Result<Value> {
        if !valid_container_id(&ep.container_id) {
            bail!("container id {:?} is not valid", ep.container_id);
        }
        if parse_mac(&ep.mac).is_none() {
            bail!("mac {:?} is not a MAC address", ep.mac);
        }
        sys::ifindex(&ep.host_ifname)
            .with_context(|| format!("host interface {}", ep.host_ifname))?;
        if let Some(other) = self.cni.regs.values().find(|r| {
            r.container_id != ep.container_id && (r.host_ifname == ep.host_ifname || r.ip == ep.ip)
        }) {
            bail!(
                "container {} already has {} ({})",
                other.container_id,
                other.host_ifname,
                other.ip
            );
        }
        if let Some(a) = self.ifaces.get(&ep.host_ifname) {
            if a.cni.as_deref() != Some(ep.container_id.as_str()) {
                bail!(
                    "interface {} is attached already, not by vireo-cni",
                    ep.host_ifname
                );
            }
        }
        let t = self.tables.current();
        if let Some(e) = t.endpoint(u32::from(ep.ip)) {
            let owner = t.iface(e.slot).map(|i| i.name.clone()).unwrap_or_default();
            if owner != ep.host_ifname {
                bail!("{} is already the endpoint of {owner}", ep.ip);
            }
        }
        let id = ep.container_id.clone();
        match self.cni.regs.get(&id) {
            Some(old) if *old == ep && self.ifaces.contains_key(&ep.host_ifname) => {
                return self.cni_get(&id);
            }
            Some(old) => {
                let old_if = old.host_ifname.clone();
                if self.ifaces.contains_key(&old_if) {
                    self.remove_iface(&old_if)?;
                }
            }
            None => {}
        }
        self.cni.regs.insert(id.clone(), ep.clone());
        let done = self.cni_attach(&ep).and_then(|()| self.cni.save(&ep));
        if let Err(e) = done {
            if self.ifaces.contains_key(&ep.host_ifname) {
                let _ = self.remove_iface(&ep.host_ifname);
            }
            self.cni.forget(&id);
            return Err(e);
        }
        tracing::info!(container = %id, iface = %ep.host_ifname, ip = %ep.ip, "CNI endpoint added");
        self.cni_get(&id)
    }

    /// `cni_del`: detaches and forgets; an unknown container is not an error.
    pub(super) fn cni_del(&mut self, id: &str) -> Result<Value> {
        let Some(ep) = self.cni.regs.get(id).cloned() else {
            return Ok(json!({"removed": null}));
        };
        if self.ifaces.contains_key(&ep.host_ifname) {
            self.remove_iface(&ep.host_ifname)?;
        }
        self.cni.forget(id);
        tracing::info!(container = %id, iface = %ep.host_ifname, "CNI endpoint removed");
        Ok(json!({"removed": id}))
    }

    /// `cni_get`: the registration and its attachment, or null.
    pub(super) fn cni_get(&self, id: &str) -> Result<Value> {
        let Some(ep) = self.cni.regs.get(id) else {
            return Ok(Value::Null);
        };
        let att = self.ifaces.get(&ep.host_ifname);
        Ok(serde_json::to_value(CniStatus {
            endpoint: ep.clone(),
            attached: att.is_some(),
            slot: att.map(|a| a.slot),
            identity: att.map(|a| a.identity),
        })?)
    }

    /// Every second and after each source change: registrations whose veth is gone are
    /// forgotten, those not attached (a failed restore, an `endpoint del`) are attached again,
    /// and each attached endpoint gets its Pod's identity, updated in place.
    pub(super) fn cni_reconcile(&mut self) {
        self.write_conflist();
        let regs: Vec<CniEndpoint> = self.cni.regs.values().cloned().collect();
        for ep in regs {
            let attached = self
                .ifaces
                .get(&ep.host_ifname)
                .map(|a| (a.identity, a.slot));
            if sys::ifindex(&ep.host_ifname).is_err() {
                if attached.is_some() {
                    let _ = self.remove_iface(&ep.host_ifname);
                }
                tracing::info!(container = %ep.container_id, iface = %ep.host_ifname,
                    "CNI endpoint's veth is gone; registration forgotten");
                self.cni.forget(&ep.container_id);
                continue;
            }
            let want = self.cni_identity(&ep);
            match attached {
                None => {
                    if let Err(e) = self.cni_attach(&ep) {
                        tracing::warn!(container = %ep.container_id, "attaching: {e:#}");
                    }
                }
                Some((id, slot)) if id != want => {
                    let mac = parse_mac(&ep.mac).unwrap_or_default();
                    self.tables.update(|t| {
                        t.set_endpoint(Endpoint {
                            ip: ep.ip,
                            mac,
                            slot,
                            identity: want,
                        })
                    });
                    if let Some(a) = self.ifaces.get_mut(&ep.host_ifname) {
                        a.identity = want;
                    }
                    tracing::info!(container = %ep.container_id, from = id, to = want,
                        "CNI endpoint's identity updated");
                }
                Some(_) => {}
            }
        }
    }

    /// The `pod_ifname`s of the pods whose registration is attached (for their
    /// `VireoEndpoint` state).
    pub(super) fn cni_attached_pods(&self) -> BTreeSet<String> {
        self.cni
            .regs
            .values()
            .filter(|r| self.ifaces.contains_key(&r.host_ifname))
            .filter_map(|r| {
                Some(pod_ifname(
                    r.pod_namespace.as_deref()?,
                    r.pod_name.as_deref()?,
                ))
            })
            .collect()
    }

    /// The identity of the Pod the view has under the registration's namespace, name and
    /// address; `init` while there is none.
    fn cni_identity(&self, ep: &CniEndpoint) -> u32 {
        let (Some(ns), Some(name)) = (ep.pod_namespace.as_deref(), ep.pod_name.as_deref()) else {
            return Identity::INIT.0;
        };
        self.control
            .view()
            .pods_on(self.control.node())
            .find(|p| p.namespace == ns && p.name == name && p.ip == ep.ip)
            .map_or(Identity::INIT.0, |p| p.identity.0)
    }

    fn cni_attach(&mut self, ep: &CniEndpoint) -> Result<()> {
        let ifc = InterfaceConfig {
            name: ep.host_ifname.clone(),
            role: Role::Pod,
            endpoint: Some(EndpointConfig {
                ip: ep.ip.to_string(),
                mac: ep.mac.clone(),
            }),
        };
        let identity = self.cni_identity(ep);
        self.add_iface(&ifc, identity, false)?;
        if let Some(a) = self.ifaces.get_mut(&ep.host_ifname) {
            a.cni = Some(ep.container_id.clone());
        }
        Ok(())
    }
}

impl Agent {
    /// Writes the node's conflist (`cni_conflist`) once the node's pod CIDR is known, and
    /// again whenever it changes; an error is logged once per distinct message.
    fn write_conflist(&mut self) {
        let Some(c) = self.cfg.cni_conflist.clone() else {
            return;
        };
        let Some(cidr) = self
            .control
            .view()
            .nodes
            .get(self.control.node())
            .and_then(|n| n.pod_cidr)
        else {
            return; // not yet: the runtime sees no conflist until pods can be wired
        };
        let result = render_conflist(&c.template, cidr).and_then(|text| {
            if std::fs::read_to_string(&c.path).ok().as_deref() != Some(text.as_str()) {
                let tmp = c.path.with_extension("conflist.tmp");
                std::fs::write(&tmp, &text)
                    .and_then(|()| std::fs::rename(&tmp, &c.path))
                    .with_context(|| format!("writing {}", c.path.display()))?;
                tracing::info!(path = %c.path.display(), %cidr, "CNI conflist written");
            }
            Ok(text)
        });
        let result = result.map_err(|e| format!("{e:#}"));
        if let Err(e) = &result {
            if self.cni.conflist.as_ref() != Some(&Err(e.clone())) {
                tracing::warn!(path = %c.path.display(), "CNI conflist: {e}");
            }
        }
        self.cni.conflist = Some(result);
    }
}

/// The template with the `host-local` range of every `vireo-cni` plugin set to `cidr` (its
/// first address the gateway, as the agent answers ARP for it).
fn render_conflist(template: &Path, cidr: ipnet::Ipv4Net) -> Result<String> {
    let text = std::fs::read_to_string(template)
        .with_context(|| format!("reading {}", template.display()))?;
    let mut v: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", template.display()))?;
    let plugins = v
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .with_context(|| format!("{}: no plugins list", template.display()))?;
    let gw = vireo_control::cluster::gateway(cidr);
    let mut n = 0;
    for p in plugins.iter_mut().filter(|p| p["type"] == "vireo-cni") {
        let ipam = p
            .get_mut("ipam")
            .and_then(Value::as_object_mut)
            .with_context(|| format!("{}: a vireo-cni plugin without ipam", template.display()))?;
        ipam.insert(
            "ranges".into(),
            json!([[{"subnet": cidr.to_string(), "gateway": gw.to_string()}]]),
        );
        n += 1;
    }
    if n == 0 {
        bail!("{}: no vireo-cni plugin", template.display());
    }
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}

#[cfg(test)]
mod conflist_tests {
    use super::render_conflist;

    #[test]
    fn the_node_pod_cidr_becomes_the_host_local_range() {
        let dir = std::env::temp_dir().join(format!("vireo-conflist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = dir.join("t.conflist");
        std::fs::write(
            &t,
            r#"{"cniVersion":"1.0.0","name":"vireo","plugins":[{"type":"vireo-cni",
               "ipam":{"type":"host-local","dataDir":"/var/lib/cni/networks"}},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let out: serde_json::Value =
            serde_json::from_str(&render_conflist(&t, "10.244.7.0/24".parse().unwrap()).unwrap())
                .unwrap();
        let ipam = &out["plugins"][0]["ipam"];
        assert_eq!(ipam["ranges"][0][0]["subnet"], "10.244.7.0/24");
        assert_eq!(ipam["ranges"][0][0]["gateway"], "10.244.7.1");
        assert_eq!(ipam["dataDir"], "/var/lib/cni/networks", "the rest is kept");
        assert!(
            out["plugins"][1].get("ipam").is_none(),
            "other plugins untouched"
        );
        std::fs::write(&t, r#"{"plugins":[{"type":"bridge"}]}"#).unwrap();
        assert!(render_conflist(&t, "10.244.7.0/24".parse().unwrap()).is_err());
        std::fs::write(&t, "not json").unwrap();
        assert!(render_conflist(&t, "10.244.7.0/24".parse().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
