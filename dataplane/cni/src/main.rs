//! `vireo-cni`: Vireo's CNI plugin (spec 1.0.0; results also in the 0.3.x and 0.4.0 shapes).
//!
//! - **ADD:** IPAM delegated to the `ipam.type` plugin (host-local) found in `CNI_PATH`; a veth
//!   pair, the host side `lxc<hash of container id and ifname>`, the pod side created inside
//!   `CNI_NETNS` as `CNI_IFNAME` with MAC `0a:58:<ip>` and the MTU; the address as /32, an
//!   on-link route to the gateway and the default route via it; tx checksum offload off; then
//!   the endpoint is registered with the local agent, which answers once it has attached it.
//!   Any failure undoes the steps before it (veth deleted, IPAM DEL), so nothing is left.
//! - **DEL** is idempotent: agent unregistration (skipped, saying so, when the agent is not
//!   running: it forgets registrations whose veth is gone), the veth, IPAM DEL.
//! - **CHECK:** IPAM CHECK, then the interface, address and routes in the pod, and the agent's
//!   registration, attached.
//! - **VERSION:** the versions of [`spec::SUPPORTED_VERSIONS`].
//!
//! Errors are the spec's error object on stdout, with a non-zero exit code.

#![forbid(unsafe_code)]

mod ipam;
mod link;
mod spec;

use std::io::Read;
use std::path::Path;

use serde_json::Value;
use vireo_api::{ApiError, CniEndpoint, CniStatus, Request};
use vireo_control::cluster::pod_mac;
use vireo_control::config::format_mac;

use spec::{code, CniError, Command, Env, IpamLease, NetConf, Result, Wired};

fn main() {
    // `vireo-cni install BIN_DIR [CONF_SRC CONF_DIR]`: the DaemonSet's initContainer puts the
    // plugin and its conflist on the node (no shell needed in the image).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("install")
        && std::env::var_os("CNI_COMMAND").is_none()
    {
        if let Err(e) = install(&argv[2..]) {
            eprintln!("vireo-cni install: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".to_string());
    let out = match read {
        Err(e) => Err(CniError::new(code::DECODE, "reading stdin", e.to_string())),
        Ok(_) => run(&stdin),
    };
    match out {
        Ok(Some(v)) => println!("{v}"),
        Ok(None) => {}
        Err(e) => {
            println!("{}", e.to_json(&version));
            eprintln!("vireo-cni: {e}");
            std::process::exit(1);
        }
    }
}

fn run(stdin: &[u8]) -> Result<Option<Value>> {
    let env = Env::from_vars(&|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        let v = serde_json::from_slice::<Value>(stdin).ok();
        let cv = v.as_ref().and_then(|v| v.get("cniVersion")?.as_str());
        return Ok(Some(spec::version_result(cv)));
    }
    let conf = NetConf::parse(stdin, env.command)?;
    match env.command {
        Command::Add => add(&env, &conf, stdin).map(Some),
        Command::Del => del(&env, &conf, stdin).map(|()| None),
        Command::Check => check(&env, &conf, stdin).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// A failure to reach the agent is "try again later" (code 11); its refusal is ours (100).
fn agent_err(sock: &Path, e: ApiError) -> CniError {
    match e {
        ApiError::Io { .. } => CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the vireo agent is not running (no answer on {})",
                sock.display()
            ),
            e.to_string(),
        ),
        ApiError::Agent(m) => CniError::new(code::AGENT, "the vireo agent refused the endpoint", m),
    }
}

fn agent_get(sock: &Path, container_id: &str) -> Result<Option<CniStatus>> {
    let v = vireo_api::call(
        sock,
        &Request::CniGet {
            container_id: container_id.to_string(),
        },
    )
    .map_err(|e| agent_err(sock, e))?;
    if v.is_null() {
        return Ok(None);
    }
    serde_json::from_value(v).map(Some).map_err(|e| {
        CniError::new(
            code::AGENT,
            "the agent's answer is not a registration",
            e.to_string(),
        )
    })
}

fn add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Value> {
    let netns = env.netns.clone().expect("checked by Env");
    let ns_file = link::open_netns(&netns)?;
    let sock = conf.agent_socket();
    // Before any step: an agent that is not there fails ADD with nothing to undo.
    agent_get(&sock, &env.container_id)?;
    let plugin = ipam::find(conf.ipam_type().expect("checked by NetConf"), &env.path)?;
    let lease = ipam::exec(&plugin, "ADD", stdin)?;
    let host = spec::host_ifname(&env.container_id, &env.ifname);
    let mut created = false;
    let res = (|| -> Result<Value> {
        let lease = IpamLease::from_result(&lease)?;
        let mac = pod_mac(lease.ip);
        let mtu = conf.mtu();
        let host_mac = link::with_handle(|h| {
            let (host, ifname) = (host.clone(), env.ifname.clone());
            async move {
                if link::link(&h, &host).await?.is_some() {
                    return Err(CniError::new(
                        code::SYSTEM,
                        format!("the host interface {host} exists already"),
                        "a second ADD for the same container and interface",
                    ));
                }
                link::create_veth(&h, &host, &ifname, mac, mtu, &ns_file).await
            }
        })?;
        created = true;
        let (ifname, ip, gw) = (env.ifname.clone(), lease.ip, lease.gateway);
        link::in_netns(&netns, move |h| async move {
            link::configure_pod(&h, &ifname, ip, gw).await
        })?;
        link::tx_checksum_off(&netns, &env.ifname)?;
        let pod = env.pod();
        let ep = CniEndpoint {
            container_id: env.container_id.clone(),
            netns: netns.display().to_string(),
            ifname: env.ifname.clone(),
            host_ifname: host.clone(),
            ip: lease.ip,
            mac: format_mac(&mac),
            pod_namespace: pod.as_ref().map(|p| p.0.clone()),
            pod_name: pod.map(|p| p.1),
        };
        vireo_api::call(
            &sock,
            &Request::CniAdd {
                endpoint: ep.clone(),
            },
        )
        .map_err(|e| agent_err(&sock, e))?;
        Ok(Wired {
            host_ifname: host.clone(),
            host_mac,
            ifname: ep.ifname,
            mac: ep.mac,
            netns: ep.netns,
            ip: lease.ip,
            gateway: lease.gateway,
            dns: conf.dns.clone().or(lease.dns),
        }
        .to_json(&conf.cni_version))
    })();
    if res.is_err() {
        // Undo in reverse: the veth (its pod end goes with it), then the lease.
        if created {
            if let Err(e) = link::with_handle(|h| {
                let host = host.clone();
                async move { link::delete(&h, &host).await }
            }) {
                eprintln!("vireo-cni: undoing ADD: {e}");
            }
        }
        if let Err(e) = ipam::exec(&plugin, "DEL", stdin) {
            eprintln!("vireo-cni: undoing ADD: {e}");
        }
    }
    res
}

fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<()> {
    let sock = conf.agent_socket();
    // The agent first, so nothing stays attached to a veth about to go.
    match vireo_api::call(
        &sock,
        &Request::CniDel {
            container_id: env.container_id.clone(),
        },
    ) {
        Ok(_) => {}
        Err(ApiError::Io { .. }) => eprintln!(
            "vireo-cni: DEL {}: the agent is not running at {}; its registration is forgotten \
             when the agent finds the veth gone",
            env.container_id,
            sock.display()
        ),
        Err(e) => return Err(agent_err(&sock, e)),
    }
    let host = spec::host_ifname(&env.container_id, &env.ifname);
    link::with_handle(|h| async move { link::delete(&h, &host).await })?;
    // IPAM DEL last; host-local releases by container id and ifname, and succeeds when there
    // is nothing to release.
    match conf.ipam_type() {
        Some(t) => ipam::exec(&ipam::find(t, &env.path)?, "DEL", stdin).map(|_| ()),
        None => Ok(()),
    }
}

fn check(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<()> {
    let netns = env.netns.clone().expect("checked by Env");
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult", "prevResult")
    })?;
    let plugin = ipam::find(conf.ipam_type().expect("checked by NetConf"), &env.path)?;
    ipam::exec(&plugin, "CHECK", stdin)?;
    let lease = IpamLease::from_result(prev)?;
    link::open_netns(&netns)?;
    let host = spec::host_ifname(&env.container_id, &env.ifname);
    let mut problems = Vec::new();
    let h2 = host.clone();
    if link::with_handle(|h| async move { link::link(&h, &h2).await })?.is_none() {
        problems.push(format!("the host interface {host} does not exist"));
    }
    let (ifname, ip, gw) = (env.ifname.clone(), lease.ip, lease.gateway);
    problems.extend(link::in_netns(&netns, move |h| async move {
        link::check_pod(&h, &ifname, ip, gw).await
    })?);
    let sock = conf.agent_socket();
    match agent_get(&sock, &env.container_id)? {
        None => problems.push(format!(
            "the agent has no registration for {}",
            env.container_id
        )),
        Some(s) if !s.attached => problems.push(format!("the agent has not attached {host}")),
        Some(s) if s.endpoint.ip != lease.ip || s.endpoint.host_ifname != host => {
            problems.push(format!(
                "the agent's registration ({} on {}) is not {} on {host}",
                s.endpoint.ip, s.endpoint.host_ifname, lease.ip
            ))
        }
        Some(_) => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            format!("container {} is not wired as ADD left it", env.container_id),
            problems.join("; "),
        ))
    }
}

/// Copies this binary into `BIN_DIR` and the conflist `CONF_SRC` into `CONF_DIR`, each through
/// a temporary file renamed into place (a runtime never sees half a file).
fn install(args: &[String]) -> std::io::Result<()> {
    use std::path::PathBuf;
    let (bin_dir, conf) = match args {
        [bin_dir] => (bin_dir, None),
        [bin_dir, conf_src, conf_dir] => (bin_dir, Some((conf_src, conf_dir))),
        _ => {
            return Err(std::io::Error::other(
                "usage: vireo-cni install BIN_DIR [CONFLIST CONF_DIR]",
            ))
        }
    };
    let put = |src: &Path, dir: &str| -> std::io::Result<PathBuf> {
        let name = src
            .file_name()
            .ok_or_else(|| std::io::Error::other(format!("{}: no file name", src.display())))?;
        let dst = Path::new(dir).join(name);
        let tmp = Path::new(dir).join(format!(".{}.tmp", name.to_string_lossy()));
        std::fs::copy(src, &tmp)?;
        std::fs::rename(&tmp, &dst)?;
        Ok(dst)
    };
    let me = std::env::current_exe()?;
    let b = put(&me, bin_dir)?;
    eprintln!("vireo-cni: installed {}", b.display());
    if let Some((conf_src, conf_dir)) = conf {
        let c = put(Path::new(conf_src), conf_dir)?;
        eprintln!("vireo-cni: installed {}", c.display());
    }
    Ok(())
}
