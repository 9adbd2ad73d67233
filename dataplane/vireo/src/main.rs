//! `vireo`: the node agent and its operator CLI.

mod agent;
mod api;
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
            let v = api::call(&api.api, &api::Request::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", status::render(&v));
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
            let v = api::call(&api.api, &api::Request::EndpointAdd { interface })?;
            println!("{v}");
            Ok(())
        }
        Cmd::Endpoint(EndpointCmd::Del { api, ifname }) => {
            let v = api::call(&api.api, &api::Request::EndpointDel { name: ifname })?;
            println!("{v}");
            Ok(())
        }
        Cmd::Reload { api } => {
            let v = api::call(&api.api, &api::Request::Reload)?;
            println!("{v}");
            Ok(())
        }
    }
}
