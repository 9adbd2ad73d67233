//! The server: options, starting on its own runtime thread or a caller's runtime, the handle
//! with the URL and kubeconfig, and fault injection (stop/restart on the same port, compaction,
//! delays, injected errors).

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use crate::error::Error;
use crate::handlers::{self, App, Faults};
use crate::loader;
use crate::resources;
use crate::store::Store;

/// How to start a [`FakeApiServer`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Where to listen; port 0 picks a free port. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// How often a watch that allows bookmarks gets one. Default 5 s.
    pub bookmark_interval: Duration,
    /// CustomResourceDefinitions created before the server answers.
    pub crds: Vec<Value>,
    /// Objects created (or replaced) before the server answers, after the CRDs.
    pub objects: Vec<Value>,
    /// Whether `/api` and `/apis` answer aggregated discovery (`apidiscovery.k8s.io/v2`) to
    /// clients that ask for it, as kubectl does; the legacy documents are always served.
    /// Default true.
    pub aggregated_discovery: bool,
    /// Whether every request is logged at INFO (otherwise DEBUG).
    pub log_requests: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: Duration::from_secs(5),
            crds: Vec::new(),
            objects: Vec::new(),
            aggregated_discovery: true,
            log_requests: false,
        }
    }
}

impl Options {
    /// Listen on `addr`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Send bookmarks this often.
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }

    /// Preload a CustomResourceDefinition.
    pub fn crd(mut self, crd: Value) -> Self {
        self.crds.push(crd);
        self
    }

    /// Preload Cilium's CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy CRDs.
    pub fn cilium_crds(mut self) -> Self {
        self.crds.extend(resources::cilium_crds());
        self
    }

    /// Preload an object.
    pub fn object(mut self, obj: Value) -> Self {
        self.objects.push(obj);
        self
    }

    /// Serve or not aggregated discovery.
    pub fn aggregated_discovery(mut self, on: bool) -> Self {
        self.aggregated_discovery = on;
        self
    }
}

enum Runtime {
    /// A runtime of our own on a thread of its own; dropping the sender ends both.
    Own(Handle, #[allow(dead_code)] oneshot::Sender<()>),
    /// The caller's runtime.
    Caller(Handle),
}

impl Runtime {
    fn handle(&self) -> &Handle {
        match self {
            Runtime::Own(h, _) | Runtime::Caller(h) => h,
        }
    }
}

struct Running {
    shutdown: watch::Sender<bool>,
    stopped: std_mpsc::Receiver<()>,
}

/// A running fake API server. Dropping it stops it.
pub struct FakeApiServer {
    store: Store,
    addr: SocketAddr,
    faults: Arc<Faults>,
    opts: Options,
    runtime: Runtime,
    running: Mutex<Option<Running>>,
}

fn own_runtime() -> Result<Runtime, Error> {
    let (tx, rx) = std_mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("vireo-fakeapi".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("vireo-fakeapi-worker")
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                    rt.shutdown_background();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(Error::Runtime)?;
    let handle = rx
        .recv()
        .map_err(|_| Error::Runtime(std::io::Error::other("the runtime thread died")))?
        .map_err(Error::Runtime)?;
    Ok(Runtime::Own(handle, stop_tx))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: watch::Receiver<bool>,
    stopped: std_mpsc::Sender<()>,
) {
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            a = listener.accept() => match a {
                Ok((stream, peer)) => {
                    let app = app.clone();
                    let mut sd = shutdown.clone();
                    tokio::spawn(async move {
                        let _ = stream.set_nodelay(true);
                        let svc = service_fn(move |req| handlers::handle(app.clone(), req));
                        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                        tokio::select! {
                            r = conn => if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "connection ended");
                            },
                            _ = async { let _ = sd.wait_for(|v| *v).await; } => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = async { let _ = stop.wait_for(|v| *v).await; } => break,
        }
    }
    drop(listener);
    let _ = stopped.send(());
}

impl FakeApiServer {
    /// Starts a server on a tokio runtime of its own (its own thread): usable from sync tests
    /// and from async code alike.
    pub fn start(opts: Options) -> Result<FakeApiServer, Error> {
        let runtime = own_runtime()?;
        Self::start_with(opts, runtime, Store::new())
    }

    /// Starts a server on the caller's runtime. Stop it with [`FakeApiServer::stop_async`] from
    /// inside that runtime ([`FakeApiServer::stop`] blocks until the listener is closed).
    pub fn start_on(opts: Options, handle: Handle) -> Result<FakeApiServer, Error> {
        Self::start_with(opts, Runtime::Caller(handle), Store::new())
    }

    /// Starts a server on a runtime of its own serving an existing store.
    pub fn start_with_store(opts: Options, store: Store) -> Result<FakeApiServer, Error> {
        let runtime = own_runtime()?;
        Self::start_with(opts, runtime, store)
    }

    fn start_with(opts: Options, runtime: Runtime, store: Store) -> Result<FakeApiServer, Error> {
        for crd in &opts.crds {
            store.upsert(crd.clone())?;
        }
        for obj in &opts.objects {
            store.upsert(obj.clone())?;
        }
        let listener = std::net::TcpListener::bind(opts.listen).map_err(|source| Error::Bind {
            addr: opts.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: opts.listen,
            source,
        })?;
        let server = FakeApiServer {
            store,
            addr,
            faults: Arc::new(Faults::default()),
            opts,
            runtime,
            running: Mutex::new(None),
        };
        server.serve(listener)?;
        tracing::info!(url = %server.url(), "fake API server listening");
        Ok(server)
    }

    fn serve(&self, listener: std::net::TcpListener) -> Result<(), Error> {
        let bind_err = |source| Error::Bind {
            addr: self.addr,
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let handle = self.runtime.handle();
        let listener = {
            let _guard = handle.enter();
            tokio::net::TcpListener::from_std(listener).map_err(bind_err)?
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (stopped_tx, stopped) = std_mpsc::channel();
        let app = Arc::new(App {
            store: self.store.clone(),
            bookmark_every: self.opts.bookmark_interval,
            faults: self.faults.clone(),
            shutdown: shutdown_rx.clone(),
            address: self.addr.to_string(),
            aggregated_discovery: self.opts.aggregated_discovery,
            log_requests: AtomicBool::new(self.opts.log_requests),
        });
        handle.spawn(accept_loop(listener, app, shutdown_rx, stopped_tx));
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Running { shutdown, stopped });
        Ok(())
    }

    fn signal_stop(&self) -> Option<std_mpsc::Receiver<()>> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let _ = running.shutdown.send(true);
        Some(running.stopped)
    }

    /// Stops answering: closes the listener and every connection (open watches break), keeping
    /// the store. Blocks until the port is closed (at most 5 s). Does nothing if stopped.
    pub fn stop(&self) {
        if let Some(stopped) = self.signal_stop() {
            let _ = stopped.recv_timeout(Duration::from_secs(5));
        }
    }

    /// [`FakeApiServer::stop`], for async code on the server's own runtime.
    pub async fn stop_async(&self) {
        if let Some(stopped) = self.signal_stop() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while stopped.try_recv() == Err(std_mpsc::TryRecvError::Empty)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    /// Starts answering again on the same address, with the same store. Does nothing if running.
    pub fn restart(&self) -> Result<(), Error> {
        if self.is_running() {
            return Ok(());
        }
        // The old listener may take a moment to be closed by its task.
        let mut tries = 0;
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if tries < 100 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(Error::Bind {
                        addr: self.addr,
                        source,
                    })
                }
            }
        };
        self.serve(listener)
    }

    /// Whether the server is answering.
    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The address listened on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The store behind the server, for tests to read and change directly (changes are seen by
    /// watches as any other).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Compacts the history (see [`Store::compact`]): watches from older resourceVersions get
    /// 410 Gone, and open watches end with a 410 ERROR event.
    pub fn compact(&self) -> u64 {
        self.store.compact()
    }

    /// Delays every request by `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        *self.faults.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    /// Answers the next `count` requests with an error Status of HTTP `code` (500, 503, 429...).
    pub fn fail_next(&self, count: u32, code: u16) {
        self.faults.fail_code.store(code, Ordering::SeqCst);
        self.faults.fail_count.store(count, Ordering::SeqCst);
    }

    /// A kubeconfig pointing at the server (context `fake`, namespace `default`, no credentials).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`FakeApiServer::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        std::fs::write(path, self.kubeconfig_yaml()).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Creates or replaces the objects of a multi-document YAML text (see [`loader::load_str`]).
    pub fn load_yaml(&self, text: &str) -> Result<Vec<Value>, Error> {
        loader::load_str(&self.store, text, "<yaml>")
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        // Without waiting: the listener closes as soon as its task runs.
        let _ = self.signal_stop();
    }
}
