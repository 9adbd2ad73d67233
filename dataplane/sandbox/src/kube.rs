//! The sandbox on Kubernetes (`vireo sandbox up --source kube`): a fake API server that speaks
//! the real protocol (`vireo_fakeapi`) holds the sandbox's objects, and the agents watch it
//! through a kubeconfig, exactly as in a cluster.
//!
//! The server is one process (`vireo sandbox apiserver`, started by `up`, stopped by `down`)
//! with one store and two listeners:
//! - `127.0.0.1:<any port>` in this machine's namespace, for people and their `kubectl`
//!   (`vireo sandbox kubeconfig` prints the path of its kubeconfig);
//! - [`APISERVER`] on the underlay bridge, in the underlay's namespace, where the agents reach
//!   it from their node namespaces over their uplinks (as agents reach a control plane over
//!   the node network). Nothing is added to this machine's own namespace.
//!
//! The sandbox writes its realised objects (Nodes, Pods with `status.podIP`, everything else as
//! applied) into the server the way a kubelet and the users would: created, or replaced when
//! they exist; the objects it wrote before and no longer has are deleted. Objects others wrote
//! (with `kubectl`, or the agents' own) are left alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{Discovery, Scope};
use kube::Client;
use serde_json::Value;
use vireo_fakeapi::{FakeApiServer, Options};

use crate::topology::UNDERLAY_CLIENT;
use crate::State;

/// Where the agents reach the API server: the underlay bridge's own address.
pub const APISERVER: (std::net::Ipv4Addr, u16) = (UNDERLAY_CLIENT, 6443);

/// The kubeconfig for this machine's namespace (`vireo sandbox kubeconfig`).
pub fn kubeconfig(st: &State) -> PathBuf {
    st.dir.join("kubeconfig")
}

/// The kubeconfig the agents use, from their node namespaces.
pub(crate) fn node_kubeconfig(st: &State) -> PathBuf {
    st.dir.join("kubeconfig-nodes")
}

/// The CRDs the sandbox's server serves from the start: Vireo's and Cilium's policy CRDs.
fn crds() -> Result<Vec<Value>> {
    let mut v = Vec::new();
    for crd in vireo_control::crd::vireo_crds()
        .into_iter()
        .chain(vireo_control::crd::cilium_crds())
    {
        let mut j = serde_json::to_value(&crd)?;
        j["apiVersion"] = "apiextensions.k8s.io/v1".into();
        j["kind"] = "CustomResourceDefinition".into();
        v.push(j);
    }
    Ok(v)
}

/// `vireo sandbox apiserver`: serves the sandbox `name` until killed. `up` starts it.
pub fn serve_apiserver(name: &str) -> Result<()> {
    let st = State::load(name)?;
    let crds = crds()?;
    let opts = |listen: std::net::SocketAddr| {
        crds.iter()
            .fold(Options::default().listen(listen), |o, c| o.crd(c.clone()))
    };
    let local = FakeApiServer::start(opts("127.0.0.1:0".parse()?)).context("starting")?;
    let store = local.store().clone();
    let ul = PathBuf::from(format!("/run/netns/{}", st.underlay));
    let on_underlay = opts(APISERVER.into());
    // The second listener is bound from a thread inside the underlay's namespace (a socket
    // belongs to the namespace it was made in); the server's threads start from there too.
    let nodes = std::thread::spawn(move || -> Result<FakeApiServer> {
        let f = std::fs::File::open(&ul).with_context(|| format!("opening {}", ul.display()))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {}", ul.display()))?;
        Ok(FakeApiServer::start_with_store(on_underlay, store)?)
    })
    .join()
    .map_err(|_| anyhow!("the underlay listener's thread panicked"))??;
    nodes.write_kubeconfig(node_kubeconfig(&st))?;
    // Last: its presence says the server is ready.
    local.write_kubeconfig(kubeconfig(&st))?;
    eprintln!(
        "vireo: sandbox {name}: API server at {} (this machine) and {} (the nodes)",
        local.url(),
        nodes.url()
    );
    loop {
        std::thread::park();
    }
}

/// Waits until the API server `up` started has written its kubeconfig; if it exits first, the
/// error says how (its status and the end of its log).
pub(crate) fn wait_apiserver(
    st: &State,
    child: &mut std::process::Child,
    within: Duration,
) -> Result<()> {
    let t = Instant::now();
    while !kubeconfig(st).exists() {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(st.dir.join("apiserver.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "the API server exited ({status}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            );
        }
        if t.elapsed() > within {
            bail!("the API server did not start within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// An object's identity at the API server: (apiVersion, kind, namespace, name).
pub(crate) type ObjectKey = (String, String, String, String);

pub(crate) fn key_of(v: &Value) -> ObjectKey {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (
        s("/apiVersion"),
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name"),
    )
}

/// Writes `objects` into the API server of `kubeconfig`, and deletes those of `before` that are
/// not among them. Namespaces go first.
pub(crate) fn sync(kubeconfig: &Path, objects: &[Value], before: &[ObjectKey]) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(60),
            sync_async(kubeconfig, objects, before),
        )
        .await
        .map_err(|_| anyhow!("writing the objects to the API server took over 60 s"))?
    })
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

async fn sync_async(kubeconfig: &Path, objects: &[Value], before: &[ObjectKey]) -> Result<()> {
    let client = client(kubeconfig).await?;
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .context("API discovery")?;
    let api = |k: &ObjectKey| -> Result<Api<DynamicObject>> {
        let (group, version) = match k.0.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", k.0.as_str()),
        };
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &k.1);
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| anyhow!("the API server does not serve {} {}", k.0, k.1))?;
        Ok(match caps.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), &k.2, &ar),
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        })
    };
    let mut ordered: Vec<&Value> = objects.iter().collect();
    ordered.sort_by_key(|o| o["kind"] != "Namespace");
    for o in ordered {
        let k = key_of(o);
        let a = api(&k)?;
        let obj: DynamicObject = serde_json::from_value(o.clone())
            .with_context(|| format!("{} {}/{}", k.1, k.2, k.3))?;
        match a.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let cur = a.get(&k.3).await?;
                let mut obj = obj;
                obj.metadata.resource_version = cur.metadata.resource_version;
                a.replace(&k.3, &PostParams::default(), &obj)
                    .await
                    .with_context(|| format!("replacing {} {}/{}", k.1, k.2, k.3))?;
            }
            Err(e) => return Err(e).with_context(|| format!("creating {} {}/{}", k.1, k.2, k.3)),
        }
    }
    let now: std::collections::BTreeSet<ObjectKey> = objects.iter().map(key_of).collect();
    for k in before.iter().filter(|k| !now.contains(*k)) {
        match api(k)?.delete(&k.3, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {} {}/{}", k.1, k.2, k.3)),
        }
    }
    Ok(())
}
