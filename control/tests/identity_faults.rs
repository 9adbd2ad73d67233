//! The allocator when the API server fails: stopped mid-allocation (bounded retries then a
//! clear error, or success once it is back within the retry window), transient 5xx answers,
//! permanent refusals, and clients that must not panic.

mod identity_common;

use std::time::{Duration, Instant};

use identity_common::*;
use vireo_control::allocator::{self, Error, Options, Retry};
use vireo_policy::Labels;

fn opts(retry: Retry) -> Options {
    Options {
        retry,
        concurrency: 8,
        sync_timeout: Duration::from_secs(10),
        ..Options::default()
    }
}

fn sets(prefix: &str, n: usize) -> Vec<Labels> {
    (0..n)
        .map(|i| pod("faults", &format!("{prefix}{i}")))
        .collect()
}

/// Waits until the server holds at least `n` identities.
async fn until_created(server: &vireo_fakeapi::FakeApiServer, n: usize) {
    eventually(Duration::from_secs(20), "identities to be created", || {
        at_server(server).len() >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_allocation_gives_a_clear_error_after_bounded_retries() {
    let server = server();
    bounded(Duration::from_secs(60), async {
        let retry = Retry {
            attempts: 4,
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            request_timeout: Duration::from_secs(2),
        };
        let a = agent(&server, opts(retry)).await;
        // Slow the server down so that the batch is still running when it stops.
        server.set_delay(Duration::from_millis(5));
        let batch = sets("s", 2000);
        let ta = a.clone();
        let job = tokio::spawn(async move { ta.allocate_all(&batch).await });
        until_created(&server, 50).await;
        server.stop();
        let t0 = Instant::now();
        let r = job.await.unwrap();
        let took = t0.elapsed();
        match r {
            Err(Error::Unavailable {
                attempts, ref op, ..
            }) => {
                assert_eq!(attempts, 4);
                assert!(op.contains("VireoIdentity"), "{op}");
                let msg = r.as_ref().unwrap_err().to_string();
                assert!(msg.contains("did not answer"), "{msg}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // Bounded: 4 attempts with at most 20+40+80 ms (+25 %) of back-off each.
        assert!(took < Duration::from_secs(5), "gave up only after {took:?}");
        // A single allocation fails the same way, and what was created stays consistent.
        let e = a.allocate(&pod("faults", "alone")).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        server.set_delay(Duration::ZERO);
        server.restart().unwrap();
        let held = at_server(&server);
        assert!(held.len() >= 50 && held.len() < 2000, "{}", held.len());
        // After the restart the same batch completes, keeping the numbers already given.
        let all = a.allocate_all(&sets("s", 2000)).await.unwrap();
        for (id, l) in &held {
            assert_eq!(all[l], *id);
        }
        assert_eq!(at_server(&server).len(), 2000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_back_within_the_retry_window_means_success() {
    let server = server();
    bounded(Duration::from_secs(60), async {
        let retry = Retry {
            attempts: 40,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(250),
            request_timeout: Duration::from_secs(2),
        };
        let a = agent(&server, opts(retry)).await;
        let b = agent(&server, opts(retry)).await;
        server.set_delay(Duration::from_millis(5));
        let batch = sets("w", 1000);
        let (ta, tb) = (a.clone(), b.clone());
        let (ba, mut bb) = (batch.clone(), batch.clone());
        bb.reverse();
        let ja = tokio::spawn(async move { ta.allocate_all(&ba).await });
        let jb = tokio::spawn(async move { tb.allocate_all(&bb).await });
        until_created(&server, 50).await;
        server.stop();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !ja.is_finished() && !jb.is_finished(),
            "the batches should be retrying"
        );
        server.set_delay(Duration::ZERO);
        server.restart().unwrap();
        let (ra, rb) = (ja.await.unwrap().unwrap(), jb.await.unwrap().unwrap());
        let held = at_server(&server);
        assert_eq!(held.len(), 1000);
        for l in &batch {
            assert_eq!(ra[l], rb[l]);
            assert_eq!(held[&ra[l]], *l);
        }
        // The watch came back too: a set created by the other agent after the restart is
        // known without asking.
        let l = pod("faults", "after-restart");
        let id = b.allocate(&l).await.unwrap();
        eventually(Duration::from_secs(15), "a's cache to learn it", || {
            a.get(&l) == Some(id)
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried_and_refusals_are_not() {
    let server = server();
    bounded(Duration::from_secs(30), async {
        let retry = Retry {
            attempts: 5,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            request_timeout: Duration::from_secs(2),
        };
        let a = agent(&server, opts(retry)).await;
        // (The allocator's watch may take some of the injected failures: counts are not exact.)
        server.fail_next(3, 503);
        let id = a.allocate(&pod("faults", "flaky")).await.unwrap();
        assert_eq!(id, first(&pod("faults", "flaky")));
        server.fail_next(1000, 500);
        let e = a.allocate(&pod("faults", "down")).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable { attempts: 5, .. }), "{e}");
        server.fail_next(1000, 403);
        let t0 = Instant::now();
        let e = a.allocate(&pod("faults", "forbidden")).await.unwrap_err();
        assert!(matches!(e, Error::Api { .. }), "{e}");
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "a 403 is not retried"
        );
        server.fail_next(0, 403);
        // And afterwards all is well.
        assert!(a.allocate(&pod("faults", "forbidden")).await.is_ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocator_that_never_syncs_says_so() {
    let server = server();
    let url = server.url();
    server.stop();
    bounded(Duration::from_secs(30), async {
        let cfg = kube::Config::new(url.parse().unwrap());
        let a = vireo_control::allocator::ClusterIdentities::new(
            allocator::client(cfg).unwrap(),
            Options {
                sync_timeout: Duration::from_millis(300),
                ..Options::default()
            },
        );
        let e = a.allocate(&pod("faults", "x")).await.unwrap_err();
        assert!(matches!(e, Error::NotSynced(_)), "{e}");
    })
    .await;
}

#[test]
fn clients_for_https_servers_build_without_panicking() {
    // kube is built without a default rustls CryptoProvider: building a TLS client must not
    // panic, with or without our helper.
    let cfg = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(kube::Client::try_from(cfg.clone()).is_ok());
        assert!(allocator::client(cfg).is_ok());
    });
}
