//! `vireo`: the node agent and its operator CLI.

mod agent;
mod api;
mod bench;
mod connectivity;
mod probe;
mod sandbox;
mod status;

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
        /// A directory of Kubernetes YAML (Pods, Namespaces, and later Services and policies).
        #[arg(long)]
        manifests: Option<PathBuf>,
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
    /// Run a command inside a pod's network namespace, like `kubectl exec`.
    Exec {
        #[command(flatten)]
        sandbox: sandbox::SandboxName,
        /// NAMESPACE/POD (namespace defaults to `default`).
        pod: String,
        /// The command, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
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
    /// Print one table: ct, endpoints, ipcache, identities, nodes, services or maglev.
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
    /// Traffic endpoints the connectivity test runs inside pods.
    #[command(subcommand, hide = true)]
    Probe(probe::Probe),
    /// Measure the agent's pod-to-pod packet rate against a minimal AF_XDP forwarder (the I/O
    /// ceiling), on network namespaces of its own. Needs root and 2 CPUs.
    Bench {
        /// Measurement window of each run, after a 1 s warm-up.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// XDP attach mode of every program in the bench: auto, native or generic.
        #[arg(long, default_value = "auto", value_parser = bench::parse_xdp_mode)]
        xdp_mode: vireo_control::config::XdpModeConfig,
        /// Interleaved (xconnect, agent) rounds; medians are reported.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
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
    ($($t:tt)*) => {{
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        if let Err(e) = write!(o, $($t)*).and_then(|_| o.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(e.into());
        }
    }};
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIREO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("vireo: {e:#}");
        std::process::exit(1);
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
            } => sandbox::up(
                &sandbox.name,
                &sandbox::UpOpts {
                    nodes,
                    pods,
                    manifests,
                },
            ),
            SandboxCmd::Down { sandbox } => sandbox::down(&sandbox.name),
            SandboxCmd::Status { sandbox, json } => sandbox::status(&sandbox.name, json),
            SandboxCmd::Apply { sandbox, dir } => sandbox::apply(&sandbox.name, &dir),
            SandboxCmd::Exec { sandbox, pod, cmd } => {
                let code = sandbox::exec(&sandbox.name, &pod, &cmd)?;
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
        } => bench::run(&bench::Opts {
            seconds,
            json,
            xdp_mode,
            rounds,
        }),
    }
}
