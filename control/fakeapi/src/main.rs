//! `vireo-fakeapi`: runs the fake Kubernetes API server by hand.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use vireo_fakeapi::{loader, FakeApiServer, Options};

/// A fake Kubernetes API server (plain HTTP) for kubectl and kube-rs.
#[derive(Parser)]
#[command(name = "vireo-fakeapi")]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at the server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Load the YAML objects of this file or directory at start (may be repeated).
    #[arg(long)]
    load: Vec<PathBuf>,
    /// Preload Cilium's policy CRDs.
    #[arg(long)]
    cilium_crds: bool,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 5)]
    bookmark_interval: u64,
    /// Log every request.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut opts = Options::default()
        .listen(args.listen)
        .bookmark_interval(Duration::from_secs(args.bookmark_interval.max(1)));
    opts.log_requests = args.verbose;
    if args.cilium_crds {
        opts = opts.cilium_crds();
    }
    let server = FakeApiServer::start(opts).context("starting the server")?;
    for path in &args.load {
        let objs = loader::load_path(server.store(), path)
            .with_context(|| format!("loading {}", path.display()))?;
        tracing::info!(path = %path.display(), objects = objs.len(), "loaded");
    }
    if let Some(path) = &args.kubeconfig {
        server
            .write_kubeconfig(path)
            .context("writing the kubeconfig")?;
        tracing::info!(path = %path.display(), "kubeconfig written");
    }
    println!("{}", server.url());
    loop {
        std::thread::park();
    }
}
