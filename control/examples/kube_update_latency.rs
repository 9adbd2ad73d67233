//! Update latency of the Kubernetes source at scale: a fake API server with 10 000 pods on 100
//! nodes, 1 000 Services with their EndpointSlices and 1 000 CiliumNetworkPolicies; a
//! `KubeSource` and a `NodeControl` building the tables the agent builds (cluster view and
//! policy set, services, compiled policy, ipcache). For each kind of change (a pod's labels, an
//! endpoint added to a slice, a policy's port) it measures, ~50 times, the time from the write
//! at the API server to the rebuilt tables, and where the rebuild's time goes.
//!
//! Samples alternate between `NodeControl::apply_changed` (which takes over from the last
//! apply the pods' views, the identities, the service ports and the policy documents read that
//! a change leaves as they were) and `NodeControl::apply_from_scratch` (the view and every
//! policy made again, as before), so that both see the same machine (`--scratch 0`: only the
//! first). The pods take cluster-wide identities (VireoIdentity objects, allocated by the
//! source), as in a cluster: a new label set is allocated after the change is visible, the pod
//! keeping its old identity meanwhile. One run on the 2-core development machine (load average
//! ~1.7, 30 samples each), p50/p99 ms:
//!
//! | change                        | apply_changed | from scratch  |
//! |-------------------------------|---------------|---------------|
//! | pod label change              | 56.4 / 98.2   | 177.9 / 251.5 |
//! | new endpoint (EndpointSlice)  | 40.4 / 83.8   | 40.4 / 57.4   |
//! | policy change (CNP port)      | 46.6 / 60.0   | 87.9 / 112.2  |
//!
//! With node-local identities (before they were cluster-wide) the same code measured 41.6/48.6,
//! 26.6/33.7 and 24.2/29.5 (from scratch 200.7/246.1, 27.1/35.0, 38.7/60.7): the cluster-wide
//! identity step (an index of every VireoIdentity, the identities in use rebuilt) costs about
//! 20 ms of a pod change's apply at 10 000 pods; caching it across rebuilds is the next step.
//!
//! ```sh
//! cargo run --release -p vireo-control --example kube_update_latency [-- --samples 50 --pods 10000 --scratch 0]
//! # one part of the breakdown, many times, for a profiler:
//! VIREO_BENCH_ONLY="rebuild (" VIREO_BENCH_PARTS=300 perf record -g target/release/examples/kube_update_latency
//! ```

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use vireo_control::cluster::ClusterView;
use vireo_control::config::ServicesConfig;
use vireo_control::kube::{KubeOptions, KubeSource};
use vireo_control::netpol;
use vireo_control::node::{Changed, NodeControl, Source};
use vireo_fakeapi::{FakeApiServer, Options};

struct Scale {
    nodes: usize,
    pods: usize,
    services: usize,
    policies: usize,
    samples: usize,
    /// Also measure every change with `NodeControl::apply_from_scratch` (samples alternate).
    scratch: bool,
}

fn args() -> Scale {
    let mut s = Scale {
        nodes: 100,
        pods: 10_000,
        services: 1_000,
        policies: 1_000,
        samples: 50,
        scratch: true,
    };
    let a: Vec<String> = std::env::args().skip(1).collect();
    for w in a.chunks(2) {
        let v = w.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        match w[0].as_str() {
            "--nodes" => s.nodes = v,
            "--pods" => s.pods = v,
            "--services" => s.services = v,
            "--policies" => s.policies = v,
            "--samples" => s.samples = v,
            "--scratch" => s.scratch = v != 0,
            other => panic!("unknown argument {other}"),
        }
    }
    s
}

const NAMESPACES: usize = 20;

fn ns(i: usize) -> String {
    format!("ns-{:02}", i % NAMESPACES)
}

fn pod_ip(i: usize, s: &Scale) -> String {
    let per_node = s.pods.div_ceil(s.nodes);
    let (node, k) = (i / per_node, i % per_node);
    format!("10.{}.{}.{}", 100 + node / 256, node % 256, k + 2)
}

fn populate(server: &FakeApiServer, s: &Scale) {
    let st = server.store();
    for n in 0..NAMESPACES {
        st.create(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns(n), "labels": {"team": format!("t{}", n % 4)}}}))
            .unwrap();
    }
    for n in 0..s.nodes {
        st.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{n:03}")},
            "spec": {"podCIDR": format!("10.{}.{}.0/24", 100 + n / 256, n % 256)},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", n / 250, n % 250 + 1)}]}}))
            .unwrap();
    }
    let per_node = s.pods.div_ceil(s.nodes);
    // Pod i: app-(i % services), in that service's namespace; 10 pods per service.
    for i in 0..s.pods {
        let app = i % s.services;
        st.create(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p-{i:05}"), "namespace": ns(app),
                         "labels": {"app": format!("app-{app}"), "tier": format!("t{}", app % 3)}},
            "spec": {"nodeName": format!("node-{:03}", i / per_node),
                     "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": pod_ip(i, s), "phase": "Running"}}))
            .unwrap();
    }
    for j in 0..s.services {
        st.create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{j}"), "namespace": ns(j)},
            "spec": {"clusterIP": format!("10.96.{}.{}", j / 250, j % 250 + 1),
                     "selector": {"app": format!("app-{j}")},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}))
            .unwrap();
        st.create(slice(j, s, 0)).unwrap();
    }
    for j in 0..s.policies {
        st.create(policy(j, s, 8080)).unwrap();
    }
}

/// Service `j`'s slice, with `extra` more endpoints than its pods.
fn slice(j: usize, s: &Scale, extra: usize) -> Value {
    let mut eps: Vec<Value> = (0..s.pods)
        .filter(|i| i % s.services == j)
        .map(|i| json!({"addresses": [pod_ip(i, s)], "conditions": {"ready": true}}))
        .collect();
    for e in 0..extra {
        eps.push(json!({"addresses": [format!("10.250.{}.{}", e / 250, e % 250 + 1)], "conditions": {"ready": true}}));
    }
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{j}-abc"), "namespace": ns(j),
                     "labels": {"kubernetes.io/service-name": format!("svc-{j}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps})
}

fn policy(j: usize, s: &Scale, port: u16) -> Value {
    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": format!("pol-{j}"), "namespace": ns(j % s.services)},
        "spec": {"endpointSelector": {"matchLabels": {"app": format!("app-{}", j % s.services)}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": format!("app-{}", (j + 20) % s.services)}}],
                              "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}]}]}})
}

/// Where one rebuild's time went, in µs.
#[derive(Default, Clone, Copy)]
struct Split {
    poll: u64,
    apply: u64,
    services: u64,
    policy: u64,
    ipcache: u64,
}

/// What the agent does with a poll (`scratch`: with `NodeControl::apply_from_scratch`, as
/// before the rebuild took over what a change leaves as it was).
fn rebuild(src: &mut KubeSource, control: &mut NodeControl, scratch: bool) -> Option<Split> {
    let t = Instant::now();
    let mut applied = Duration::ZERO;
    let changed = src.poll_with(&mut |m, changed| {
        let a = Instant::now();
        if scratch {
            control.apply_from_scratch(m, changed);
        } else {
            control.apply_changed(m, changed);
        }
        applied = a.elapsed();
    });
    if !changed {
        return None;
    }
    let poll = t.elapsed() - applied;
    let t = Instant::now();
    let _ = control.build_services(ServicesConfig::default());
    let services = t.elapsed();
    let t = Instant::now();
    let _ = control.build_policy();
    let policy = t.elapsed();
    let t = Instant::now();
    let _ = control.ipcache();
    let _ = control.vni_identities();
    let ipcache = t.elapsed();
    src.published(control);
    let us = |d: Duration| d.as_micros() as u64;
    Some(Split {
        poll: us(poll),
        apply: us(applied),
        services: us(services),
        policy: us(policy),
        ipcache: us(ipcache),
    })
}

struct Row {
    name: &'static str,
    e2e: Histogram<u64>,
    splits: Vec<Split>,
    rebuilds: usize,
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn main() {
    let s = args();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "scale: {} pods on {} nodes, {} services + slices, {} policies; {} samples per change; loadavg {}",
        s.pods,
        s.nodes,
        s.services,
        s.policies,
        s.samples,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    // Vireo's CRDs too: pods take cluster-wide identities (VireoIdentity objects), as in a
    // cluster; the first sync allocates one per label set.
    let opts = vireo_control::crd::vireo_crds()
        .into_iter()
        .fold(Options::default().cilium_crds(), |o, c| {
            o.crd(serde_json::to_value(c).expect("a CRD as JSON"))
        });
    let server = FakeApiServer::start(opts).unwrap();
    let t = Instant::now();
    populate(&server, &s);
    println!(
        "loaded the fake API server in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();

    let t = Instant::now();
    let mut src = KubeSource::new(KubeOptions::new("node-000", Some(kc))).unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let tx = std::sync::Mutex::new(tx);
    src.set_waker(Arc::new(move || {
        let _ = tx.lock().unwrap().send(());
    }));
    let mut control = NodeControl::new("node-000");
    // The first view waits for the pods' identities; the one after their allocation has them.
    let mut first = None;
    let first = loop {
        if let Some(split) = rebuild(&mut src, &mut control, false) {
            first.get_or_insert(split);
        }
        if let Some(split) = first.filter(|_| control.view().unallocated.is_empty()) {
            break split;
        }
        let _ = rx.recv_timeout(Duration::from_millis(100));
        assert!(t.elapsed() < Duration::from_secs(600), "no initial sync");
    };
    println!(
        "initial sync + first build: {:.2} s (first build: apply {} ms, services {} ms, policy {} ms, ipcache {} ms); {} pods, {} service ports, {} policies",
        t.elapsed().as_secs_f64(),
        ms(first.apply),
        ms(first.services),
        ms(first.policy),
        ms(first.ipcache),
        control.view().pods.len(),
        control.view().services.len(),
        control.policies().policies.len()
    );
    let mut rows = Vec::new();
    let store = server.store().clone();
    type Change<'a> = Box<dyn Fn(usize) -> Box<dyn Fn(&NodeControl) -> bool> + 'a>;
    let pod_change: Change = Box::new(|k| {
        let name = format!("p-{:05}", (k * 197) % s.pods);
        let app = (k * 197) % s.pods % s.services;
        let mut o = store.get("v1", "Pod", Some(&ns(app)), &name).unwrap();
        o["metadata"]["labels"]["gen"] = json!(k.to_string());
        store.update(o).unwrap();
        let key = (ns(app), name);
        Box::new(move |c: &NodeControl| {
            c.view()
                .pods
                .get(&key)
                .and_then(|p| p.pod_labels.get("gen"))
                == Some(&k.to_string())
        })
    });
    let endpoint_change: Change = Box::new(|k| {
        let j = (k * 37) % s.services;
        store.update(slice(j, &s, 1 + k % 3)).unwrap();
        let name = format!("{}/svc-{j}", ns(j));
        let want = s.pods / s.services + 1 + k % 3;
        Box::new(move |c: &NodeControl| {
            c.view()
                .services
                .iter()
                .any(|p| p.name == name && p.backends.len() == want)
        })
    });
    let policy_change: Change = Box::new(|k| {
        let j = (k * 53) % s.policies;
        let port = 9000 + k as u16;
        store.upsert(policy(j, &s, port)).unwrap();
        let name = format!("{}/pol-{j}", ns(j % s.services));
        Box::new(move |c: &NodeControl| {
            c.policies().policies.iter().any(|p| {
                p.origin.name == name
                    && p.ingress
                        .iter()
                        .any(|r| r.ports.iter().any(|pr| pr.lo == port))
            })
        })
    });
    for (name, change) in [
        ("pod label change", &pod_change),
        ("new endpoint (EndpointSlice)", &endpoint_change),
        ("policy change (CNP port)", &policy_change),
    ] {
        let row = |name| Row {
            name,
            e2e: Histogram::new_with_bounds(1, 600_000_000, 3).unwrap(),
            splits: Vec::new(),
            rebuilds: 0,
        };
        // Samples alternate between the two ways of applying, so that both see the same
        // machine.
        let mut pair = [row(name), row("  from scratch")];
        let modes = if s.scratch { 2 } else { 1 };
        for k in 0..s.samples * modes {
            let scratch = k % modes == 1;
            let row = &mut pair[usize::from(scratch)];
            std::thread::sleep(Duration::from_millis(30));
            while rx.try_recv().is_ok() {}
            let t0 = Instant::now();
            let done = change(k + 1);
            loop {
                let _ = rx.recv_timeout(Duration::from_millis(1000));
                if let Some(split) = rebuild(&mut src, &mut control, scratch) {
                    row.rebuilds += 1;
                    if done(&control) {
                        row.e2e.saturating_record(t0.elapsed().as_micros() as u64);
                        row.splits.push(split);
                        break;
                    }
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "{name} {k}: not seen"
                );
            }
        }
        let [a, b] = pair;
        rows.push(a);
        if s.scratch {
            rows.push(b);
        }
    }

    println!();
    println!(
        "{:<30} {:>4} {:>9} {:>9} {:>9} | mean of the rebuild, ms: {:>6} {:>6} {:>8} {:>7} {:>7}",
        "change (write → tables)",
        "n",
        "p50 ms",
        "p99 ms",
        "max ms",
        "poll",
        "apply",
        "services",
        "policy",
        "ipcache"
    );
    for r in &rows {
        let n = r.splits.len().max(1) as u64;
        let mean = |f: fn(&Split) -> u64| ms(r.splits.iter().map(f).sum::<u64>() / n);
        println!(
            "{:<30} {:>4} {:>9} {:>9} {:>9} | {:>34} {:>6} {:>8} {:>7} {:>7}",
            r.name,
            r.e2e.len(),
            ms(r.e2e.value_at_quantile(0.5)),
            ms(r.e2e.value_at_quantile(0.99)),
            ms(r.e2e.max()),
            mean(|s| s.poll),
            mean(|s| s.apply),
            mean(|s| s.services),
            mean(|s| s.policy),
            mean(|s| s.ipcache),
        );
    }
    let l = src.latency();
    println!(
        "\nthe source's own histogram (first event received → published): n {} p50 {} ms p99 {} ms max {} ms",
        l.count(),
        ms(l.quantile(0.5).as_micros() as u64),
        ms(l.quantile(0.99).as_micros() as u64),
        ms(l.max().as_micros() as u64)
    );

    // `NodeControl::apply`'s parts, on the final objects.
    let m = snapshot(&mut src, &store);
    // VIREO_BENCH_PARTS=N: repeat each part N times (for a profiler).
    let reps: u64 = std::env::var("VIREO_BENCH_PARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // VIREO_BENCH_ONLY=text: only the parts whose name holds it.
    let only = std::env::var("VIREO_BENCH_ONLY").unwrap_or_default();
    let part = |what: &str, f: &mut dyn FnMut()| {
        if !what.contains(only.as_str()) {
            return;
        }
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        println!(
            "  {what:<52} {:>7} ms",
            ms(t.elapsed().as_micros() as u64 / reps)
        );
    };
    println!("\nwhere NodeControl::apply's time goes (mean of {reps}):");
    part("ClusterView::from_manifests", &mut || {
        let _ = ClusterView::from_manifests(&m);
    });
    part("netpol::policies", &mut || {
        let _ = netpol::policies(&m);
    });
    part("Manifests clone (poll without poll_with)", &mut || {
        let _ = m.clone();
    });
    // The same objects with one pod's labels changed, and with one policy's port changed.
    let mut pod_changed = m.clone();
    if let Some(p) = pod_changed.pods.values_mut().nth(s.pods / 2) {
        let labels = p.metadata.labels.get_or_insert_with(Default::default);
        labels.insert("gen".into(), "bench".into());
    }
    let mut policy_changed = m.clone();
    if let Some(d) = policy_changed.policies.values_mut().nth(s.policies / 2) {
        d.value["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = "7".into();
    }
    let mut view = ClusterView::from_manifests(&m);
    let mut flip = false;
    part(
        "ClusterView::rebuild (one pod's labels changed)",
        &mut || {
            flip = !flip;
            let next = if flip { &pod_changed } else { &m };
            view = ClusterView::rebuild(next, std::mem::take(&mut view), false).0;
        },
    );
    let mut cache = netpol::PolicyCache::default();
    let _ = netpol::policies_reusing(&m, &mut cache, true);
    part("netpol::policies_reusing (one pod changed)", &mut || {
        let _ = netpol::policies_reusing(&m, &mut cache, true);
    });
    part("netpol::policies_reusing (one policy changed)", &mut || {
        flip = !flip;
        let next = if flip { &policy_changed } else { &m };
        let _ = netpol::policies_reusing(next, &mut cache, false);
    });
    let mut c = NodeControl::new("node-000");
    c.apply(&m);
    part(
        "NodeControl::apply_from_scratch (the old ones dropped)",
        &mut || {
            c.apply_from_scratch(&m, Changed::ALL);
        },
    );
    part("NodeControl::apply (nothing changed)", &mut || {
        c.apply(&m);
    });
}

/// The current objects, by making one change and taking the view it delivers.
fn snapshot(
    src: &mut KubeSource,
    store: &vireo_fakeapi::Store,
) -> vireo_control::source::Manifests {
    let mut o = store.get("v1", "Pod", Some(&ns(0)), "p-00000").unwrap();
    o["metadata"]["labels"]["snapshot"] = json!("1");
    store.update(o).unwrap();
    let t = Instant::now();
    loop {
        if let Some(m) = src.poll() {
            return m;
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.elapsed() < Duration::from_secs(60));
    }
}
