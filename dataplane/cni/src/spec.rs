//! The CNI specification's protocol: the environment, the network configuration on stdin, and
//! the result and error objects on stdout (spec 1.0.0, results also in the 0.3.x and 0.4.0
//! shapes libcni asks for).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

/// The versions this plugin speaks (VERSION lists them; a configuration with another is
/// refused with code 1).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The spec's well-known error codes (and ours, from 100).
#[allow(dead_code)] // the whole table, as the spec lists it
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Ours: the agent refused or failed to attach the endpoint.
    pub const AGENT: u32 = 100;
    /// Ours: a netlink (or other system) operation failed.
    pub const SYSTEM: u32 = 101;
    /// Ours: the IPAM plugin's result could not be used.
    pub const IPAM: u32 = 102;
    /// Ours: CHECK found the pod's wiring not as ADD made it.
    pub const CHECK_FAILED: u32 = 103;
}

/// An error result: what the plugin prints on stdout, exiting non-zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} ({details})")]
pub struct CniError {
    /// The spec's code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Details.
    pub details: String,
}

impl CniError {
    /// An error with code `code`.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object of the spec, for configuration version `version`.
    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

/// A result whose error is a [`CniError`].
pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// The command the runtime asks for (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Wire a container.
    Add,
    /// Unwire it (idempotent).
    Del,
    /// Check its wiring.
    Check,
    /// The versions this plugin supports.
    Version,
}

/// The environment the runtime passes (`CNI_*`), checked for `command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION).
    pub container_id: String,
    /// `CNI_NETNS` (DEL may have none).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, …).
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`, split.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads the environment through `get` (`std::env::var` in the binary).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Env> {
        let invalid = |var: &str, what: &str| {
            CniError::new(code::INVALID_ENV, format!("{var} {what}"), var.to_string())
        };
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_COMMAND {other:?} is not supported (ADD, DEL, CHECK, VERSION)"),
                    "CNI_COMMAND",
                ))
            }
            None => return Err(invalid("CNI_COMMAND", "is not set")),
        };
        let nonempty = |var: &str| get(var).filter(|v| !v.is_empty());
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: BTreeMap::new(),
            path: get("CNI_PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
        };
        if command == Command::Version {
            return Ok(env);
        }
        env.container_id =
            nonempty("CNI_CONTAINERID").ok_or_else(|| invalid("CNI_CONTAINERID", "is not set"))?;
        if !vireo_api::valid_container_id(&env.container_id) {
            return Err(invalid(
                "CNI_CONTAINERID",
                "must be alphanumerics, '_', '.' and '-', starting with an alphanumeric",
            ));
        }
        env.ifname = nonempty("CNI_IFNAME").ok_or_else(|| invalid("CNI_IFNAME", "is not set"))?;
        if env.ifname.len() > 15 || env.ifname.contains(['/', ' ', ':']) || env.ifname == "." {
            return Err(invalid("CNI_IFNAME", "is not a valid interface name"));
        }
        env.netns = nonempty("CNI_NETNS").map(PathBuf::from);
        if env.netns.is_none() && command != Command::Del {
            return Err(invalid("CNI_NETNS", "is not set"));
        }
        if env.path.is_empty() && command != Command::Del {
            return Err(invalid("CNI_PATH", "is not set"));
        }
        if let Some(a) = nonempty("CNI_ARGS") {
            for kv in a.split(';').filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once('=').ok_or_else(|| {
                    invalid("CNI_ARGS", &format!("entry {kv:?} is not KEY=VALUE"))
                })?;
                env.args.insert(k.to_string(), v.to_string());
            }
        }
        Ok(env)
    }

    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME`, when both are given.
    pub fn pod(&self) -> Option<(String, String)> {
        match (
            self.args.get("K8S_POD_NAMESPACE"),
            self.args.get("K8S_POD_NAME"),
        ) {
            (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => Some((ns.clone(), n.clone())),
            _ => None,
        }
    }
}

/// The default agent socket (the DaemonSet's `api_socket`).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/vireo/vireo.sock";

/// The network configuration on stdin (one plugin of a conflist, as the runtime hands it).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version the runtime speaks.
    pub cni_version: String,
    /// The network's name.
    #[serde(default)]
    pub name: String,
    /// The IPAM plugin's configuration (`type` names the plugin, e.g. `host-local`).
    #[serde(default)]
    pub ipam: Option<Value>,
    /// The pods' MTU (default: underlay − 50).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The agent's API socket.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// DNS settings to return (the spec's `dns`).
    #[serde(default)]
    pub dns: Option<Value>,
    /// The result of ADD, which CHECK and DEL get.
    #[serde(default)]
    pub prev_result: Option<Value>,
}

/// The underlay MTU assumed when the configuration gives no `mtu`.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

impl NetConf {
    /// Parses stdin. A conf that is not JSON is code 6; a version not supported is code 1; a
    /// conf missing what the command needs is code 7.
    pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "the network configuration on stdin is not JSON",
                e.to_string(),
            )
        })?;
        let version = v.get("cniVersion").and_then(Value::as_str).unwrap_or("");
        if command != Command::Version && !SUPPORTED_VERSIONS.contains(&version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "incompatible CNI version {version:?}: vireo-cni supports {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
                "cniVersion",
            ));
        }
        let conf: NetConf = serde_json::from_value(v).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration",
                e.to_string(),
            )
        })?;
        if command == Command::Version {
            return Ok(conf);
        }
        if conf.name.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration: name is required",
                "name",
            ));
        }
        if conf.ipam_type().is_none() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration: ipam.type is required (e.g. host-local)",
                "ipam.type",
            ));
        }
        if let Some(m) = conf.mtu {
            if !(576..=9000).contains(&m) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("invalid network configuration: mtu {m} is outside 576..=9000"),
                    "mtu",
                ));
            }
        }
        if command == Command::Check && version_lt(&conf.cni_version, "0.4.0") {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "CHECK needs cniVersion 0.4.0 or later, not {}",
                    conf.cni_version
                ),
                "cniVersion",
            ));
        }
        Ok(conf)
    }

    /// The IPAM plugin's name.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam
            .as_ref()?
            .get("type")?
            .as_str()
            .filter(|t| !t.is_empty() && !t.contains('/'))
    }

    /// The pods' MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(DEFAULT_UNDERLAY_MTU - 50)
    }

    /// The agent's socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.agent_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET))
    }
}

/// Whether version `a` is older than `b` (dotted numbers).
pub fn version_lt(a: &str, b: &str) -> bool {
    let p = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    p(a) < p(b)
}

/// The VERSION answer.
pub fn version_result(conf_version: Option<&str>) -> Value {
    let v = conf_version
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or("1.0.0");
    json!({"cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS})
}

/// What an IPAM plugin gave: the first IPv4 address, its gateway, and its DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamLease {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The prefix length of the range.
    pub prefix: u8,
    /// The gateway (the range's, or the first address of the subnet).
    pub gateway: Ipv4Addr,
    /// DNS settings, if the plugin gave any.
    pub dns: Option<Value>,
}

impl IpamLease {
    /// Reads an IPAM result (any of the supported versions' shapes).
    pub fn from_result(v: &Value) -> Result<IpamLease> {
        let bad = |what: String| CniError::new(code::IPAM, "unusable IPAM result", what);
        let ips = v
            .get("ips")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("no ips in {v}")))?;
        for ip in ips {
            let Some(addr) = ip.get("address").and_then(Value::as_str) else {
                continue;
            };
            let Ok(net) = addr.parse::<ipnet::IpNet>() else {
                return Err(bad(format!("address {addr:?} is not a CIDR")));
            };
            let ipnet::IpNet::V4(net) = net else { continue };
            let gateway = match ip.get("gateway").and_then(Value::as_str) {
                Some(g) => g
                    .parse()
                    .map_err(|_| bad(format!("gateway {g:?} is not an IPv4 address")))?,
                None => Ipv4Addr::from(u32::from(net.network()) + 1),
            };
            return Ok(IpamLease {
                ip: net.addr(),
                prefix: net.prefix_len(),
                gateway,
                dns: v.get("dns").cloned().filter(|d| !d.is_null()),
            });
        }
        Err(bad(format!("no IPv4 address in {v}")))
    }
}

/// What ADD made, as the result object of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    /// The host side of the veth and its MAC.
    pub host_ifname: String,
    /// Its MAC.
    pub host_mac: String,
    /// The pod side's name.
    pub ifname: String,
    /// Its MAC.
    pub mac: String,
    /// The pod's namespace path.
    pub netns: String,
    /// The address (configured as /32).
    pub ip: Ipv4Addr,
    /// The gateway (on-link route, default route via it).
    pub gateway: Ipv4Addr,
    /// DNS settings.
    pub dns: Option<Value>,
}

impl Wired {
    /// The result object for configuration version `version`: interfaces (the pod's with its
    /// sandbox), the address with its interface index and gateway, the default route, DNS.
    /// Before 1.0.0, addresses also carry `"version": "4"`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut ip = json!({
            "address": format!("{}/32", self.ip),
            "gateway": self.gateway.to_string(),
            "interface": 1,
        });
        if version_lt(version, "1.0.0") {
            ip["version"] = json!("4");
        }
        let mut r = json!({
            "cniVersion": version,
            "interfaces": [
                {"name": self.host_ifname, "mac": self.host_mac},
                {"name": self.ifname, "mac": self.mac, "sandbox": self.netns},
            ],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": self.gateway.to_string()}],
        });
        r["dns"] = self.dns.clone().unwrap_or_else(|| json!({}));
        r
    }
}

/// The host side's name for a container's interface: `lxc` and 8 hex digits of an FNV-1a hash
/// of the container id and the interface name (11 characters, under IFNAMSIZ).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("lxc{h:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env> {
        let m: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(&|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/var/run/netns/p1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1",
        ),
    ];

    #[test]
    fn environment() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id, "c0ffee");
        assert_eq!(
            e.netns.as_deref(),
            Some(std::path::Path::new("/var/run/netns/p1"))
        );
        assert_eq!(e.path.len(), 2);
        assert_eq!(e.pod(), Some(("default".into(), "web-1".into())));
        // Each missing variable is code 4, naming it.
        for var in [
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_PATH",
            "CNI_COMMAND",
        ] {
            let v: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != var).collect();
            let err = env(&v).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{var}");
            assert!(err.msg.contains(var), "{var}: {err}");
        }
        // DEL needs no netns (the container may be gone).
        let del: Vec<_> = ADD
            .iter()
            .copied()
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert_eq!(env(&del).unwrap().netns, None);
        let mut bad = ADD.to_vec();
        bad[0] = ("CNI_COMMAND", "GC");
        assert_eq!(env(&bad).unwrap_err().code, code::INVALID_ENV);
        let mut bad = ADD.to_vec();
        bad[1] = ("CNI_CONTAINERID", "../../etc");
        assert_eq!(env(&bad).unwrap_err().code, code::INVALID_ENV);
        let mut bad = ADD.to_vec();
        bad[5] = ("CNI_ARGS", "K8S_POD_NAME");
        assert_eq!(env(&bad).unwrap_err().code, code::INVALID_ENV);
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
    }

    #[test]
    fn configuration() {
        let ok = br#"{"cniVersion":"1.0.0","name":"vireo","type":"vireo-cni","mtu":1450,
            "agentSocket":"/tmp/a.sock","ipam":{"type":"host-local","ranges":[]}}"#;
        let c = NetConf::parse(ok, Command::Add).unwrap();
        assert_eq!(c.ipam_type(), Some("host-local"));
        assert_eq!(c.mtu(), 1450);
        assert_eq!(c.agent_socket(), PathBuf::from("/tmp/a.sock"));
        let e = NetConf::parse(b"{not json", Command::Add).unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = NetConf::parse(
            br#"{"cniVersion":"9.9.9","ipam":{"type":"host-local"}}"#,
            Command::Add,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("9.9.9") && e.msg.contains("1.0.0"), "{e}");
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"x"}"#, Command::Add).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","ipam":{"type":"host-local"}}"#,
            Command::Add,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"x","mtu":"big","ipam":{"type":"host-local"}}"#,
            Command::Add,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"x","ipam":{"type":"host-local"}}"#,
            Command::Check,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        // VERSION takes any version and answers with what it supports.
        let c = NetConf::parse(br#"{"cniVersion":"0.4.0"}"#, Command::Version).unwrap();
        let v = version_result(Some(&c.cni_version));
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
        );
        assert_eq!(version_result(Some("7.0.0"))["cniVersion"], "1.0.0");
    }

    #[test]
    fn results_and_errors() {
        let lease = IpamLease::from_result(&json!({"cniVersion":"1.0.0","ips":[
            {"address":"10.244.1.10/24","gateway":"10.244.1.1"}],"dns":{}}))
        .unwrap();
        assert_eq!(lease.ip, Ipv4Addr::new(10, 244, 1, 10));
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.gateway, Ipv4Addr::new(10, 244, 1, 1));
        // Without a gateway: the subnet's first address.
        let l = IpamLease::from_result(&json!({"ips":[{"version":"4","address":"10.9.0.7/16"}]}))
            .unwrap();
        assert_eq!(l.gateway, Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(
            IpamLease::from_result(&json!({"ips":[]})).unwrap_err().code,
            code::IPAM
        );
        let w = Wired {
            host_ifname: "lxc12345678".into(),
            host_mac: "aa:bb:cc:dd:ee:ff".into(),
            ifname: "eth0".into(),
            mac: "0a:58:0a:f4:01:0a".into(),
            netns: "/var/run/netns/p".into(),
            ip: lease.ip,
            gateway: lease.gateway,
            dns: None,
        };
        let r = w.to_json("1.0.0");
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert_eq!(r["ips"][0]["address"], "10.244.1.10/32");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["ips"][0]["gateway"], "10.244.1.1");
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(w.to_json("0.3.1")["ips"][0]["version"], "4");
        let e = CniError::new(code::TRY_AGAIN_LATER, "agent not running", "/run/x.sock");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":11,"msg":"agent not running","details":"/run/x.sock"})
        );
        let n = host_ifname("0123456789abcdef", "eth0");
        assert!(n.starts_with("lxc") && n.len() == 11, "{n}");
        assert_ne!(n, host_ifname("0123456789abcdef", "eth1"));
    }
}
