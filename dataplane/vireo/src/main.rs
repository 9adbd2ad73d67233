//! `vireo`: the node agent and its operator CLI.

mod agent;
mod exposition;
mod http;
mod nodeconfig;
mod watch;

use vireo_api as api;
use vireo_api::render as status;
use vireo_benches::rate as bench;
use vireo_control::trace as policy;
use vireo_sandbox as sandbox;
use vireo_sandbox::{connectivity, probe};

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use vireo_control::config::{default_api_socket, EndpointConfig, InterfaceConfig, Role};

#[derive(Parser)]
#[command(name = "vireo", version, about = "Kubernetes node dataplane on AF_XDP")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// The agent's API socket.
    #[arg(long, default_value_os_t = default_api_socket())]
    api: PathBuf,
    /// Talk to this node's agent in the sandbox instead (e.g. node-1).
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    sandbox: sandbox::SandboxName,
}

impl ApiArgs {
    fn path(&self) -> Result<PathBuf> {
        match &self.node {
            Some(n) => Ok(sandbox::State::load(&self.sandbox.name)?
                .node(n)?
                .api
                .clone()),
            None => Ok(self.api.clone()),
        }
    }
}

#[derive(Subcommand)]
enum SandboxCmd {
    /// Build the sandbox: an underlay bridge, nodes, pods and one agent per node.
    Up {
        #[command(flatten)]
        sandbox: sandbox::SandboxName,
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Pods per node when no manifests give pods.
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// A directory of Kubernetes YAML (Pods, Namespaces, Services, policies, …).
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// Where the agents read the cluster's objects: `kube` (a fake Kubernetes API server
        /// speaking the real protocol, watched through a kubeconfig as in a cluster; `kubectl`
        /// works against it: `vireo sandbox kubeconfig`) or `manifests` (a directory per
        /// agent, written by the sandbox; no API server).
        #[arg(long, value_enum, default_value_t = sandbox::Source::Kube)]
        source: sandbox::Source,
        /// Workers per agent (unpinned; frames for another worker's interface are handed off).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// The agents' workers spin instead of sleeping when idle (`busy_poll: true`): lower
        /// latency, a core each.
        #[arg(long)]
        busy_poll: bool,
        /// The pods' MTU (576..=9000); the underlay (nodes' uplinks, bridge) gets 50 more for
        /// VXLAN. Above a UMEM frame (9000: jumbo frames) the agents use AF_XDP multi-buffer.
        #[arg(long, default_value_t = 1450)]
        mtu: u16,
    },
    /// Print the path of a kubeconfig for the sandbox's API server (`--source kube`):
    /// `kubectl --kubeconfig "$(vireo sandbox kubeconfig)" get pods -A`.
    Kubeconfig {
        #[command(flatten)]
        sandbox: sandbox::SandboxName,
    },
    /// Serve the sandbox's API server (started by `up --source kube`).
    #[command(hide = true)]
    Apiserver {
        #[command(flatten)]
        sandbox: sandbox::SandboxName,
    },
    /// Delete everything the sandbox made.
    Down {
        #[command(flatten)]
        sandbox: sandbox::SandboxName,
    },
    /// Nodes, pods and agents.
    Status {
        #[command(flatten)]
        sandbox: sandbox::SandboxName,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add or change objects while the sandbox runs.
    Apply {
        #[command(flatten)]
        sandbox: sandbox::SandboxName,
        /// A directory of Kubernetes YAML.
        dir: PathBuf,
    },
    /// Run a command inside a pod's network namespace, like `kubectl exec`; or, with
    /// `--node`, inside a node's namespace with CNI_PATH and CNI_CONFLIST (that node's
    /// conflist) set, so that any runtime can add a pod to the node.
    Exec {
        #[command(flatten)]
        sandbox: sandbox::SandboxName,
        /// Run in this node's namespace instead of a pod's.
        #[arg(long, conflicts_with = "pod")]
        node: Option<String>,
        /// NAMESPACE/POD (namespace defaults to `default`).
        #[arg(required_unless_present = "node")]
        pod: Option<String>,
        /// The command, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Restart one node's agent as an upgrade would (SIGTERM, then the same or another binary
    /// with the same configuration); waits until it is ready and prints the stop-to-ready time.
    /// Established connections keep going: the new agent adopts the conntrack table.
    Restart {
        #[command(flatten)]
        sandbox: sandbox::SandboxName,
        /// The node (e.g. node-1).
        node: String,
        /// The agent binary to start (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Print JSON: {"node","binary","old_pid","new_pid","stop_ms","start_to_ready_ms",
        /// "stop_to_ready_ms","conntrack_state"}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConnectivityCmd {
    /// Run the checks and print a table (exit status 1 if any fails).
    Test {
        #[command(flatten)]
        sandbox: sandbox::SandboxName,
        /// Print JSON: {"checks":[{"name","passed","detail"}],"passed":N,"failed":M}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MapCmd {
    /// Print one table: ct, endpoints, ipcache, identities, nodes, services, maglev or fqdn.
    Get {
        /// The table.
        map: String,
        #[command(flatten)]
        api: ApiArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FqdnCmd {
    /// The names endpoints learned from DNS answers for their `toFQDNs` rules.
    #[command(subcommand)]
    Cache(FqdnCacheCmd),
}

#[derive(Subcommand)]
enum FqdnCacheCmd {
    /// Every learned name: endpoint (and pod), name, address, TTL left (expired entries kept
    /// while a connection uses them are zombies), and the DNS counters.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Explain what the policies decide for one flow, and why: the source's egress and the
    /// destination's ingress, each with the rules (or the default) that decided it; the flow
    /// passes when both allow it. Live from an agent, or offline with --manifests.
    ///
    /// An endpoint is a pod (--src/--dst NAMESPACE/POD, or POD in namespace `default`), an
    /// address (a pod's, a node's, or one outside the cluster: world), or labels standing in
    /// for a pod that need not exist (--src-labels/--dst-labels k=v,k2=v2; `reserved:host`,
    /// `reserved:world`, … for a reserved identity). The namespace of labels is --src-ns/--dst-ns,
    /// else the value of a `k8s:io.kubernetes.pod.namespace` label, else `default`; its labels
    /// come from the manifests' Namespace object, plus kubernetes.io/metadata.name.
    Trace {
        /// Source: NAMESPACE/POD, POD (namespace `default`) or an IPv4 address.
        #[arg(long, value_name = "NS/POD|IP", conflicts_with = "src_labels",
              required_unless_present_any = ["src_labels", "all_pairs"])]
        src: Option<String>,
        /// Source given by labels instead: k=v,k2=v2 (or reserved:NAME).
        #[arg(long, value_name = "K=V,...")]
        src_labels: Option<String>,
        /// Namespace of --src-labels (default: its k8s:io.kubernetes.pod.namespace label, else
        /// `default`).
        #[arg(long, value_name = "NS", requires = "src_labels")]
        src_ns: Option<String>,
        /// Destination: NAMESPACE/POD, POD (namespace `default`) or an IPv4 address.
        #[arg(long, value_name = "NS/POD|IP", conflicts_with = "dst_labels",
              required_unless_present_any = ["dst_labels", "all_pairs"])]
        dst: Option<String>,
        /// Destination given by labels instead: k=v,k2=v2 (or reserved:NAME).
        #[arg(long, value_name = "K=V,...")]
        dst_labels: Option<String>,
        /// Namespace of --dst-labels (default: its k8s:io.kubernetes.pod.namespace label, else
        /// `default`).
        #[arg(long, value_name = "NS", requires = "dst_labels")]
        dst_ns: Option<String>,
        /// Destination port and protocol: 80/TCP, 53/udp (TCP if left out).
        #[arg(long, value_name = "PORT/PROTO", value_parser = policy::parse_dport)]
        dport: policy::PortProto,
        /// Read this manifest directory instead of asking an agent.
        #[arg(long, value_name = "DIR", conflicts_with = "node")]
        manifests: Option<PathBuf>,
        /// Print {"verdict":"allowed"|"denied","rules":[...]}: when allowed, the allow rules
        /// of both sides; when denied, the rules of the side(s) that denied (none for a default
        /// deny).
        #[arg(long)]
        json: bool,
        /// Every pod to every pod of --manifests, as JSON (for tests).
        #[arg(long, hide = true, requires = "manifests",
              conflicts_with_all = ["src", "src_labels", "dst", "dst_labels"])]
        all_pairs: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The policies in force: kind, name, the endpoints they select, their rules per direction,
    /// enforcement and warnings. Live from an agent, or offline with --manifests.
    Get {
        /// Read this manifest directory instead of asking an agent.
        #[arg(long, value_name = "DIR", conflicts_with = "node")]
        manifests: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent.
    Agent {
        /// Configuration file (YAML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Show interfaces, workers and counters of a running agent.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attach or detach pod interfaces of a running agent.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Make a running agent re-read its configuration file.
    Reload {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A Vireo cluster on this machine, in network namespaces (no Kubernetes needed).
    #[command(subcommand)]
    Sandbox(SandboxCmd),
    /// Check every basic packet path over the sandbox.
    #[command(subcommand)]
    Connectivity(ConnectivityCmd),
    /// Show one of an agent's tables.
    #[command(subcommand)]
    Map(MapCmd),
    /// Network policy: trace a flow's verdict, list the policies in force.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// DNS-aware policy (`toFQDNs`): `vireo fqdn cache list`.
    #[command(subcommand)]
    Fqdn(FqdnCmd),
    /// Stream an agent's events, like `cilium monitor`. `--type drop`: every dropped packet,
    /// with source and destination (address, port, identity and labels), protocol, the reason,
    /// and for policy drops the side (ingress/egress) and the rule, or the default deny.
    /// `--type policy-verdict`: the policy verdict of each new flow, per direction judged
    /// under policy (allowed, denied, or audit in policy audit mode), with the deciding rule
    /// or `default`; at most 1000 per second over all workers (the rest are counted as
    /// sampled out). `--type trace`: forwarded packets, every Nth per worker (`--sample N`,
    /// default 100), or every one to or from one endpoint (`--pod NS/NAME` or `--endpoint ID`,
    /// the id `vireo map get endpoints` shows), with the interfaces in and out and conntrack's
    /// view. `--type` may be given more than once.
    Monitor {
        /// Event types: `drop`, `policy-verdict`, `trace`.
        #[arg(long = "type", default_value = "drop")]
        kind: Vec<String>,
        /// Traces: every Nth forwarded packet of each worker (default 100; 1 with --pod or
        /// --endpoint).
        #[arg(long)]
        sample: Option<u32>,
        /// Traces: only packets to or from this pod.
        #[arg(long, value_name = "NS/NAME")]
        pod: Option<String>,
        /// Traces: only packets to or from this endpoint.
        #[arg(long, value_name = "ID")]
        endpoint: Option<u16>,
        #[command(flatten)]
        api: ApiArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Stop after this many seconds (default: until interrupted).
        #[arg(long)]
        seconds: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Recent flows, like `hubble observe`: source and destination (address, port, pod,
    /// identity, labels), protocol, verdict, drop reason, the policy rule for denials, TCP
    /// flags and bytes, from the agent's ring of recent flows (`observe.flow_ring`). With
    /// --json, one Hubble flow object per line.
    Observe {
        /// Only flows of the last DURATION (e.g. 30s, 5m, 1h).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Only flows from or to this pod.
        #[arg(long, value_name = "NS/NAME")]
        pod: Option<String>,
        /// Only flows with this verdict: FORWARDED, DROPPED or AUDIT.
        #[arg(long)]
        verdict: Option<String>,
        /// Keep printing new flows as they come.
        #[arg(long)]
        follow: bool,
        /// One JSON object (a Hubble flow) per line.
        #[arg(long)]
        json: bool,
        /// With --follow: stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// Stop after this many flows.
        #[arg(long)]
        count: Option<usize>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the CustomResourceDefinitions of Vireo's kinds (or, with --cilium, of the
    /// cilium.io policy kinds, for clusters without Cilium) as a YAML stream; with --out,
    /// write them and their kustomization.yaml into a directory: `vireo crds --out
    /// deploy/crds`, `vireo crds --cilium --out deploy/cilium-crds`.
    Crds {
        /// Write the files into this directory (created if missing) instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The cilium.io CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy definitions.
        #[arg(long)]
        cilium: bool,
    },
    /// Traffic endpoints the connectivity test runs inside pods.
    #[command(subcommand, hide = true)]
    Probe(probe::Probe),
    /// Measure the agent's pod-to-pod packet rate against a minimal AF_XDP forwarder (the I/O
    /// ceiling), on network namespaces of its own. Needs root and 2 CPUs.
    Bench {
        /// Measurement window of each run, after a 1 s warm-up (default 5, 2 with --quick).
        #[arg(long)]
        seconds: Option<u64>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// XDP attach mode of every program in the bench: auto, native or generic.
        #[arg(long, default_value = "auto", value_parser = bench::parse_xdp_mode)]
        xdp_mode: vireo_control::config::XdpModeConfig,
        /// Rounds over every case, interleaved; medians are reported (default 3, at least 3).
        #[arg(long)]
        rounds: Option<u32>,
        /// 64- and 1500-byte single-flow cases, 2 s windows: the whole run in under 5 minutes.
        #[arg(long)]
        quick: bool,
        /// Leave out the TCP and request/response cases.
        #[arg(long)]
        no_tcp: bool,
        /// Only vireo-pod's rate without and with 10 stuck `monitor`/`observe` API clients
        /// (subscribed, never reading), interleaved, and their ratio.
        #[arg(long)]
        stuck_clients: bool,
    },
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Attach a pod's host-side veth and the pod behind it.
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// Host-side interface name.
        #[arg(long)]
        ifname: String,
        /// Pod IPv4 address.
        #[arg(long)]
        ip: String,
        /// Pod MAC address.
        #[arg(long)]
        mac: String,
    },
    /// Detach an interface.
    Del {
        #[command(flatten)]
        api: ApiArgs,
        /// Host-side interface name.
        #[arg(long)]
        ifname: String,
    },
}

/// Prints to stdout; a reader that went away (`vireo … | head`) ends the command quietly.
macro_rules! out {
    ($($t:tt)*) => {
        watch::write_out(&format!($($t)*))?
    };
}

fn main() {
    let cli = Cli::parse();
    // The agent logs as its configuration file says (an unreadable file is reported by the
    // agent itself); `VIREO_LOG` and `VIREO_LOG_FORMAT` override it.
    let log = match &cli.cmd {
        Cmd::Agent { config } => vireo_control::config::Config::load(config)
            .map(|c| c.log)
            .unwrap_or_default(),
        _ => Default::default(),
    };
    init_logs(&log);
    if let Err(e) = run(cli) {
        eprintln!("vireo: {e:#}");
        std::process::exit(1);
    }
}

/// Logs on stderr: text or JSON lines, at the levels of `log.level` (per module too), or of
/// `VIREO_LOG` and `VIREO_LOG_FORMAT` when set.
fn init_logs(log: &vireo_control::config::operations::LogConfig) {
    use vireo_control::config::operations::LogFormat;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIREO_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| "info".into());
    let format = match std::env::var("VIREO_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ => log.format,
    };
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => fmt.json().with_current_span(false).init(),
        LogFormat::Text => fmt.init(),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Agent { config } => agent::run(&config),
        Cmd::Status { api, json } => {
            let v = api::call(&api.path()?, &api::Request::Status)?;
            if json {
                out!("{}\n", serde_json::to_string_pretty(&v)?);
            } else {
                out!("{}", status::render(&v));
            }
            Ok(())
        }
        Cmd::Endpoint(EndpointCmd::Add {
            api,
            ifname,
            ip,
            mac,
        }) => {
            let interface = InterfaceConfig {
                name: ifname,
                role: Role::Pod,
                endpoint: Some(EndpointConfig { ip, mac }),
            };
            let v = api::call(&api.path()?, &api::Request::EndpointAdd { interface })?;
            out!("{v}\n");
            Ok(())
        }
        Cmd::Endpoint(EndpointCmd::Del { api, ifname }) => {
            let v = api::call(&api.path()?, &api::Request::EndpointDel { name: ifname })?;
            out!("{v}\n");
            Ok(())
        }
        Cmd::Sandbox(c) => match c {
            SandboxCmd::Up {
                sandbox,
                nodes,
                pods,
                manifests,
                source,
                workers,
                busy_poll,
                mtu,
            } => sandbox::up(
                &sandbox.name,
                &sandbox::UpOpts {
                    nodes,
                    pods,
                    manifests,
                    source,
                    workers,
                    busy_poll,
                    mtu,
                },
            ),
            SandboxCmd::Kubeconfig { sandbox } => {
                println!("{}", sandbox::kubeconfig(&sandbox.name)?.display());
                Ok(())
            }
            SandboxCmd::Apiserver { sandbox } => sandbox::kube::serve_apiserver(&sandbox.name),
            SandboxCmd::Down { sandbox } => sandbox::down(&sandbox.name),
            SandboxCmd::Status { sandbox, json } => sandbox::status(&sandbox.name, json),
            SandboxCmd::Restart {
                sandbox,
                node,
                binary,
                json,
            } => sandbox::restart::restart(&sandbox.name, &node, binary.as_deref(), json),
            SandboxCmd::Apply { sandbox, dir } => sandbox::apply(&sandbox.name, &dir),
            SandboxCmd::Exec {
                sandbox,
                node,
                pod,
                cmd,
            } => {
                let code = match (node, pod) {
                    (Some(n), _) => sandbox::exec_node(&sandbox.name, &n, &cmd)?,
                    (None, Some(p)) => sandbox::exec(&sandbox.name, &p, &cmd)?,
                    (None, None) => unreachable!("clap requires one"),
                };
                std::process::exit(code)
            }
        },
        Cmd::Connectivity(ConnectivityCmd::Test { sandbox, json }) => {
            if !connectivity::test(&sandbox.name, json)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Map(MapCmd::Get { map, api, json }) => {
            let v = api::call(&api.path()?, &api::Request::MapGet { map: map.clone() })?;
            if json {
                out!("{}\n", serde_json::to_string_pretty(&v)?);
            } else {
                out!("{}", status::render_map(&map, &v));
            }
            Ok(())
        }
        Cmd::Policy(c) => run_policy(c),
        Cmd::Fqdn(FqdnCmd::Cache(FqdnCacheCmd::List { api, json })) => {
            let v = api::call(&api.path()?, &api::Request::MapGet { map: "fqdn".into() })?;
            if json {
                out!("{}\n", serde_json::to_string_pretty(&v)?);
            } else {
                out!("{}", status::render_map("fqdn", &v));
            }
            Ok(())
        }
        Cmd::Monitor {
            kind,
            sample,
            pod,
            endpoint,
            api,
            json,
            seconds,
            count,
        } => {
            let trace = watch::trace_ask(&kind, sample, pod, endpoint)?;
            watch::monitor(&kind, &api.path()?, json, seconds, count, trace)
        }
        Cmd::Observe {
            since,
            pod,
            verdict,
            follow,
            json,
            seconds,
            count,
            api,
        } => {
            let o = watch::ObserveOpts::new(since, pod, verdict, follow, seconds, count)?;
            watch::observe(&api.path()?, &o, json)
        }
        Cmd::Crds { out, cilium } => {
            use vireo_control::crd;
            let files = if cilium {
                crd::render_cilium()?
            } else {
                crd::render_all()?
            };
            match out {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    crd::write_all(&dir, &files)?;
                }
                None => {
                    for f in files.iter().filter(|f| f.name != "kustomization.yaml") {
                        out!("---\n{}", f.yaml);
                    }
                }
            }
            Ok(())
        }
        Cmd::Probe(p) => probe::run(p),
        Cmd::Reload { api } => {
            let v = api::call(&api.path()?, &api::Request::Reload)?;
            out!("{v}\n");
            Ok(())
        }
        Cmd::Bench {
            seconds,
            json,
            xdp_mode,
            rounds,
            quick,
            no_tcp,
            stuck_clients,
        } => bench::run(&bench::Opts {
            seconds,
            json,
            xdp_mode,
            rounds,
            quick,
            no_tcp,
            stuck_clients,
        }),
    }
}

fn endpoint_arg(
    pod: Option<String>,
    labels: Option<String>,
    ns: Option<String>,
    flag: &str,
) -> Result<policy::EndpointSpec> {
    match (pod, labels) {
        (Some(p), _) => policy::EndpointSpec::parse_pod(&p),
        (None, Some(l)) => policy::EndpointSpec::parse_labels(&l, ns.as_deref()),
        (None, None) => anyhow::bail!("give --{flag} or --{flag}-labels"),
    }
    .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

fn run_policy(c: PolicyCmd) -> Result<()> {
    match c {
        PolicyCmd::Trace {
            src,
            src_labels,
            src_ns,
            dst,
            dst_labels,
            dst_ns,
            dport,
            manifests,
            json,
            all_pairs,
            api,
        } => {
            if all_pairs {
                let dir = manifests.expect("clap requires --manifests");
                let (view, set) = policy::load_offline(&dir)?;
                out!("{}\n", policy::all_pairs(&view, &set.policies, dport));
                return Ok(());
            }
            let src = endpoint_arg(src, src_labels, src_ns, "src")?;
            let dst = endpoint_arg(dst, dst_labels, dst_ns, "dst")?;
            let t = match manifests {
                Some(dir) => {
                    let (view, set) = policy::load_offline(&dir)?;
                    policy::trace(&view, &set.policies, &src, &dst, dport)?
                }
                None => {
                    let req = api::Request::PolicyTrace { src, dst, dport };
                    serde_json::from_value(api::call(&api.path()?, &req)?)?
                }
            };
            if json {
                out!("{}\n", serde_json::to_string_pretty(&t.short_json())?);
            } else {
                out!("{}", policy::render_trace(&t));
            }
            Ok(())
        }
        PolicyCmd::Get {
            manifests,
            json,
            api,
        } => {
            let l = match manifests {
                Some(dir) => {
                    let (view, set) = policy::load_offline(&dir)?;
                    policy::list(&view, &set)
                }
                None => serde_json::from_value(api::call(&api.path()?, &api::Request::PolicyGet)?)?,
            };
            if json {
                out!("{}\n", serde_json::to_string_pretty(&l)?);
            } else {
                out!("{}", policy::render_list(&l));
            }
            Ok(())
        }
    }
}
