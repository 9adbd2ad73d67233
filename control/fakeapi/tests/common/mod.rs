//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;
use vireo_fakeapi::FakeApiServer;

/// Every test's body runs under this bound.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `fut`, failing the test if it takes longer than [`TEST_TIMEOUT`].
pub async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .expect("the test took longer than its bound")
}

/// A kube-rs client that reads the server's kubeconfig as written to a file.
pub async fn client(server: &FakeApiServer, dir: &Path) -> kube::Client {
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// Polls `check` until it is true, or panics with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The HTTP code of a kube-rs API error, or a panic if it is another error.
pub fn api_code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}
