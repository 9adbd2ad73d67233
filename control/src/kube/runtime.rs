//! The `vireo-kube` thread: a current-thread tokio runtime of its own, the client, one watcher
//! task per kind, the coalescer that wakes the consumer, and the Event writer. Nothing of it is
//! seen by the caller but the stores and the shared state: the fast path never meets tokio.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

use super::events::{self, EventRequest};
use super::identities;
use super::state::Shared;
use super::KubeError;

/// Starts one kind's watcher task, given the client.
pub(crate) type Starter =
    Box<dyn FnOnce(Client, Arc<Shared>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A background task of the source (status and endpoint writers), given the client.
pub(crate) type Task = Box<dyn FnOnce(Client) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The running thread; dropping it stops the runtime and joins the thread.
pub(crate) struct Runtime {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the thread runs.
pub(crate) struct Tasks {
    pub kubeconfig: Option<PathBuf>,
    pub node: String,
    pub coalesce: Duration,
    pub watchers: Vec<Starter>,
    pub events: Option<UnboundedReceiver<EventRequest>>,
    /// Writers started with the watchers ([`Task`]).
    pub writers: Vec<Task>,
    /// Cluster-wide identities: the allocator's requests, its status, what is in use, and
    /// the collector's options.
    pub identities: Option<IdentityTasks>,
}

/// The cluster-wide identity tasks' inputs.
pub(crate) struct IdentityTasks {
    pub requests: UnboundedReceiver<Vec<vireo_policy::Labels>>,
    pub status: identities::SharedStatus,
    pub in_use: identities::InUse,
    pub gc: crate::allocator::gc::GcOptions,
}

/// Starts the thread; returns once the client is built (or could not be).
pub(crate) fn start(tasks: Tasks, shared: Arc<Shared>) -> Result<Runtime, KubeError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), KubeError>>();
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("vireo-kube".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(KubeError::Thread(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let client = match client(tasks.kubeconfig.as_deref()).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                for start in tasks.watchers {
                    tokio::spawn(start(client.clone(), shared.clone()));
                }
                if let Some(rx) = tasks.events {
                    tokio::spawn(events::writer(client.clone(), tasks.node, rx));
                }
                for w in tasks.writers {
                    tokio::spawn(w(client.clone()));
                }
                if let Some(t) = tasks.identities {
                    tokio::spawn(identities::allocator(
                        client.clone(),
                        t.requests,
                        t.status.clone(),
                        shared.clone(),
                    ));
                    tokio::spawn(identities::collector(
                        client.clone(),
                        t.in_use,
                        t.status,
                        t.gc,
                    ));
                }
                tokio::spawn(coalesce(shared, tasks.coalesce));
                let _ = shutdown_rx.await;
            });
            // Dropping the runtime cancels every task.
        })
        .map_err(KubeError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Runtime {
            shutdown: Some(shutdown),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(KubeError::Thread(std::io::Error::other(
                "the vireo-kube thread ended before the client was built",
            )))
        }
    }
}

/// The client: from `kubeconfig` if given, else as kubectl would find one (`KUBECONFIG`,
/// `~/.kube/config`) or in-cluster.
async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    install_crypto_provider();
    let config = match kubeconfig {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| KubeError::Kubeconfig {
                path: path.to_owned(),
                msg: e.to_string(),
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(&e))?
        }
        None => Config::infer()
            .await
            .map_err(|e| KubeError::Infer(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// rustls needs a process-wide crypto provider: ring, installed once (another one installed
/// first is as good).
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Wakes the consumer once per burst: at the first change, after `window`, so that the changes
/// arriving meanwhile are taken by the same poll.
async fn coalesce(shared: Arc<Shared>, window: Duration) {
    loop {
        shared.notify.notified().await;
        if !window.is_zero() {
            tokio::time::sleep(window).await;
        }
        shared.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With kube's default features off, building a client for an https server must find a
    /// crypto provider instead of panicking.
    #[test]
    fn an_https_client_builds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {token: t}\n",
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { client(Some(&path)).await.expect("an https client") });
        let Err(e) = rt.block_on(client(Some(&dir.path().join("missing")))) else {
            panic!("a missing kubeconfig is an error");
        };
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
