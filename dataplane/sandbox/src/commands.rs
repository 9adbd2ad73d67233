//! `vireo sandbox up|down|status|apply|exec`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::agents::{pid_alive, start_agent, wait_ready};
use crate::defaults::{
    dns_objects, dns_pods, echo_pods, echo_services, policy_namespaces, policy_pods, sandbox_pod,
};
use crate::netns::sh;
use crate::pods::{apply_dir, realize_pods, write_manifests};
use crate::state::state_dir;
use crate::{topology, Source, State};

pub struct UpOpts {
    pub nodes: usize,
    pub pods: usize,
    pub manifests: Option<PathBuf>,
    pub source: Source,
    /// Workers per agent.
    pub workers: usize,
    /// Workers spin instead of sleeping when idle (`busy_poll: true`).
    pub busy_poll: bool,
    /// The pods' MTU; the underlay gets 50 more (VXLAN). 1450 by default.
    pub mtu: u16,
}

pub fn up(name: &str, o: &UpOpts) -> Result<()> {
    if !(1..=20).contains(&o.nodes) {
        bail!("--nodes must be 1..=20");
    }
    if !(0..=100).contains(&o.pods) {
        bail!("--pods must be 0..=100");
    }
    if !(1..=8).contains(&o.workers) {
        bail!("--workers must be 1..=8");
    }
    if !crate::topology::POD_MTUS.contains(&o.mtu) {
        bail!(
            "--mtu must be {}..={}",
            crate::topology::POD_MTUS.start(),
            crate::topology::POD_MTUS.end()
        );
    }
    let dir = state_dir(name);
    if dir.join("state.json").exists() {
        bail!("sandbox {name} is already up (`vireo sandbox down` first)");
    }
    std::fs::create_dir_all(dir.join("manifests"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut st = State {
        name: name.to_string(),
        dir: dir.clone(),
        underlay: format!("{name}-underlay"),
        source: o.source,
        workers: o.workers,
        busy_poll: o.busy_poll,
        mtu: o.mtu,
        ..Default::default()
    };
    st.save()?;
    let r = build(&mut st, o);
    if let Err(e) = r {
        eprintln!("vireo: sandbox up failed, tearing down: {e:#}");
        let _ = teardown(&st);
        return Err(e);
    }
    print!("{}", render_status(&st));
    Ok(())
}

fn build(st: &mut State, o: &UpOpts) -> Result<()> {
    topology::underlay(st)?;
    if st.source == Source::Kube {
        start_apiserver(st)?;
    }
    for i in 1..=o.nodes {
        topology::add_node(st, i)?;
    }
    // The agents first (a CNI ADD registers the pod with its node's agent), knowing the nodes
    // and the objects; then the pods, wired through vireo-cni; then the Pods published.
    crate::cni::plugin_dir()?;
    crate::cni::write_conflists(st)?;
    write_manifests(st)?;
    let mut agents = Vec::new();
    for i in 0..st.nodes.len() {
        agents.push(start_agent(st, i)?);
    }
    wait_ready(st, &mut agents)?;
    match &o.manifests {
        Some(d) => apply_dir(st, d, false)?,
        None => {
            let pods: Vec<Pod> = (0..o.nodes * o.pods)
                .map(|k| {
                    let node = format!("node-{}", k / o.pods.max(1) + 1);
                    let j = k % o.pods.max(1) + 1;
                    let name = format!("{node}-pod-{j}");
                    sandbox_pod(
                        "default",
                        &name,
                        &node,
                        json!({"app": "sandbox", "pod": name}),
                        json!({"name": "main", "image": "sandbox"}),
                    )
                })
                .collect();
            realize_pods(st, pods)?;
            realize_pods(st, echo_pods(o.nodes))?;
            st.objects.extend(echo_services()?);
            let nodes: Vec<_> = st.nodes.iter().map(|n| (n.name.clone(), n.ip)).collect();
            st.objects
                .extend(crate::defaults::host_echo_service(&nodes)?);
            st.objects.extend(policy_namespaces()?);
            realize_pods(st, policy_pods(o.nodes))?;
            st.objects.extend(dns_objects()?);
            realize_pods(st, dns_pods(o.nodes))?;
        }
    }
    write_manifests(st)?;
    wait_ready(st, &mut agents)
}

/// Starts `vireo sandbox apiserver` for `st` and waits until it serves.
fn start_apiserver(st: &mut State) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(st.dir.join("apiserver.log"))?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["sandbox", "apiserver", "--sandbox", &st.name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the API server")?;
    st.apiserver_pid = Some(child.id());
    st.save()?;
    crate::kube::wait_apiserver(st, &mut child, Duration::from_secs(10))
}

/// `vireo sandbox kubeconfig`: the path of a kubeconfig for the sandbox's API server.
pub fn kubeconfig(name: &str) -> Result<PathBuf> {
    let st = State::load(name)?;
    if st.source != Source::Kube {
        bail!(
            "sandbox {name} runs on the {} source: no API server (`vireo sandbox up --source kube`)",
            st.source.as_str()
        );
    }
    Ok(crate::kube::kubeconfig(&st))
}

pub fn apply(name: &str, dir: &Path) -> Result<()> {
    let mut st = State::load(name)?;
    let before = st.pods.len();
    apply_dir(&mut st, dir, true)?;
    st.save()?;
    wait_ready(&st, &mut [])?;
    println!(
        "applied {}: {} new pod(s), {} object(s) in force",
        dir.display(),
        st.pods.len() - before,
        st.objects.len()
    );
    Ok(())
}

pub fn down(name: &str) -> Result<()> {
    let st = match State::load(name) {
        Ok(st) => st,
        Err(_) => State {
            name: name.to_string(),
            dir: state_dir(name),
            ..Default::default()
        },
    };
    teardown(&st)?;
    println!("sandbox {name} is down");
    Ok(())
}

fn teardown(st: &State) -> Result<()> {
    // CNI DEL for every pod while the agents run (they unregister and detach; host-local
    // releases the address), as a kubelet deleting its pods.
    if crate::cni::plugin_dir().is_ok() {
        for p in st.pods.iter().rev() {
            if let Err(e) = crate::cni::del(st, p) {
                eprintln!("vireo: {e:#}");
            }
        }
    }
    // Agents next, so they detach cleanly.
    for n in &st.nodes {
        if pid_alive(n.agent_pid) {
            let pid = n.agent_pid.unwrap_or(0).to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
    }
    let t = Instant::now();
    while st.nodes.iter().any(|n| pid_alive(n.agent_pid)) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in st.nodes.iter().filter(|n| pid_alive(n.agent_pid)) {
        let _ = Command::new("kill")
            .args(["-KILL", &n.agent_pid.unwrap_or(0).to_string()])
            .status();
    }
    // Then the API server, which nothing needs any more.
    if pid_alive(st.apiserver_pid) {
        let _ = Command::new("kill")
            .args(["-KILL", &st.apiserver_pid.unwrap_or(0).to_string()])
            .status();
    }
    // Namespaces: those recorded, then any left with our prefix (a crash before the state was
    // written). Pods first, the underlay last.
    let mut all: Vec<String> = st.netns.iter().rev().cloned().collect();
    let prefix = format!("{}-", st.name);
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for l in list.lines() {
            let n = l.split_whitespace().next().unwrap_or("");
            if n.starts_with(&prefix) && !all.iter().any(|x| x == n) {
                all.push(n.to_string());
            }
        }
    }
    let mut failed = Vec::new();
    for ns in all {
        if sh(&["ip", "netns", "del", &ns]).is_err()
            && sh(&["ip", "netns", "list"]).is_ok_and(|l| {
                l.lines()
                    .any(|x| x.split_whitespace().next() == Some(ns.as_str()))
            })
        {
            failed.push(ns);
        }
    }
    // The uplink links the agents held at their stop (`hold_uplink_on_stop`): their
    // interfaces went with the namespaces; their pins go now.
    for n in &st.nodes {
        let pins = vireo_control::config::operations::pin_dir(&n.api.with_extension("state"));
        crate::agents::unmount_pins(&pins);
        let _ = std::fs::remove_dir_all(pins);
    }
    let _ = std::fs::remove_dir_all(&st.dir);
    if !failed.is_empty() {
        bail!("could not delete namespaces {failed:?}");
    }
    Ok(())
}

pub fn exec(name: &str, pod: &str, cmd: &[String]) -> Result<i32> {
    let st = State::load(name)?;
    let p = st.pod(pod)?;
    if cmd.is_empty() {
        bail!("nothing to run: vireo sandbox exec NS/POD -- CMD...");
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &p.netns])
        .args(cmd)
        .status()
        .with_context(|| format!("running {cmd:?} in {}", p.netns))?;
    Ok(status.code().unwrap_or(1))
}

/// `vireo sandbox exec --node NODE -- CMD`: CMD in the node's namespace, with `CNI_PATH` and
/// `CNI_CONFLIST` (the node's conflist) set.
pub fn exec_node(name: &str, node: &str, cmd: &[String]) -> Result<i32> {
    let st = State::load(name)?;
    let n = st.node(node)?;
    if cmd.is_empty() {
        bail!("nothing to run: vireo sandbox exec --node NODE -- CMD...");
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &n.netns])
        .args(cmd)
        .env("CNI_PATH", crate::cni::cni_path()?)
        .env("CNI_CONFLIST", crate::cni::conflist_path(&st, n))
        .status()
        .with_context(|| format!("running {cmd:?} in {}", n.netns))?;
    Ok(status.code().unwrap_or(1))
}

pub fn status(name: &str, as_json: bool) -> Result<()> {
    let st = State::load(name)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&status_json(&st))?);
    } else {
        print!("{}", render_status(&st));
    }
    Ok(())
}

fn status_json(st: &State) -> serde_json::Value {
    json!({
        "name": st.name,
        "source": st.source.as_str(),
        "mtu": st.pod_mtu(),
        "apiserver": (st.source == Source::Kube).then(|| json!({
            "pid": st.apiserver_pid, "running": pid_alive(st.apiserver_pid),
            "kubeconfig": crate::kube::kubeconfig(st),
        })),
        "nodes": st.nodes.iter().map(|n| json!({
            "name": n.name, "ip": n.ip.to_string(), "pod_cidr": n.pod_cidr.to_string(),
            "agent": {"pid": n.agent_pid, "running": pid_alive(n.agent_pid), "api": n.api},
        })).collect::<Vec<_>>(),
        "pods": st.pods.iter().map(|p| json!({
            "pod": format!("{}/{}", p.namespace, p.name), "ip": p.ip.to_string(), "node": p.node,
            "interface": p.ifname,
        })).collect::<Vec<_>>(),
    })
}

fn render_status(st: &State) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "Sandbox {} (state: {})", st.name, st.dir.display());
    let _ = match st.source {
        Source::Manifests => writeln!(o, "Source: manifests ({})\n", st.manifests().display()),
        Source::Kube => writeln!(
            o,
            "Source: kube (API server {}, kubeconfig {})\n",
            if pid_alive(st.apiserver_pid) {
                "running"
            } else {
                "down"
            },
            crate::kube::kubeconfig(st).display()
        ),
    };
    let _ = writeln!(
        o,
        "{:<10} {:<16} {:<16} {:<8} API",
        "NODE", "UNDERLAY IP", "POD CIDR", "AGENT"
    );
    for n in &st.nodes {
        let agent = if pid_alive(n.agent_pid) {
            "running"
        } else {
            "down"
        };
        let _ = writeln!(
            o,
            "{:<10} {:<16} {:<16} {:<8} {}",
            n.name,
            n.ip.to_string(),
            n.pod_cidr.to_string(),
            agent,
            n.api.display()
        );
    }
    let _ = writeln!(o, "\n{:<32} {:<16} {:<10} INTERFACE", "POD", "IP", "NODE");
    for p in &st.pods {
        let _ = writeln!(
            o,
            "{:<32} {:<16} {:<10} {}",
            format!("{}/{}", p.namespace, p.name),
            p.ip.to_string(),
            p.node,
            p.ifname
        );
    }
    o
}
