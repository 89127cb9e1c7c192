//! `FaultyBlobStore`: injected errors, lost responses, seeded random faults, latency, and
//! hangs that only a caller-side timeout escapes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nokv_blob::{
    put_new_or_same_size, BlobError, BlobOp, BlobStore, FaultError, FaultyBlobStore,
    LocalBlobStore, PutOutcome,
};
use tempfile::TempDir;

use crate::util::must_wait_until;

async fn faulty_local(seed: u64) -> (Arc<FaultyBlobStore>, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = LocalBlobStore::open(dir.path()).await.expect("open");
    (Arc::new(FaultyBlobStore::new(Arc::new(inner), seed)), dir)
}

/// Calls `op` once on `key`, returning only whether and how it failed.
async fn call(store: &dyn BlobStore, op: BlobOp, key: &str) -> Result<(), BlobError> {
    match op {
        BlobOp::PutNew => store.put_new(key, Bytes::from_static(b"body")).await,
        BlobOp::Get => store.get(key, None).await.map(drop),
        BlobOp::Head => store.head(key).await.map(drop),
        BlobOp::Delete => store.delete(key).await,
        BlobOp::List => store.list(key).await.map(drop),
    }
}

#[tokio::test]
async fn injected_errors_surface_with_their_codes() {
    let (store, _dir) = faulty_local(1).await;
    store
        .put_new("k", Bytes::from_static(b"body"))
        .await
        .expect("put_new");
    let kinds = [
        (FaultError::NotFound, "BLOB_NOT_FOUND", false),
        (FaultError::AlreadyExists, "BLOB_ALREADY_EXISTS", false),
        (FaultError::Timeout, "BLOB_TIMEOUT", true),
        (FaultError::Unavailable, "BLOB_UNAVAILABLE", true),
        (FaultError::Io, "BLOB_IO", false),
    ];
    for op in [BlobOp::Get, BlobOp::Head, BlobOp::Delete, BlobOp::List] {
        for (kind, code, retryable) in kinds {
            store.fail_next(op, 1, kind);
            let err = call(store.as_ref(), op, "k").await.expect_err("injected");
            assert_eq!(err.code(), code, "{op}: {err}");
            assert_eq!(err.is_retryable(), retryable, "{op}: {err}");
            assert_eq!(err, kind.to_error(op, "k"));
        }
        assert_eq!(store.injected(op), kinds.len() as u64, "{op}");
        assert_eq!(store.calls(op), kinds.len() as u64, "{op}");
    }
    // The object was never touched by the failed calls (delete failed before the store).
    assert_eq!(store.get("k", None).await, Ok(Bytes::from_static(b"body")));

    store.fail_next(BlobOp::PutNew, 1, FaultError::Unavailable);
    let err = store
        .put_new("new", Bytes::new())
        .await
        .expect_err("injected");
    assert!(matches!(
        err,
        BlobError::Unavailable { op: BlobOp::PutNew, ref key, .. } if key == "new"
    ));
    assert_eq!(
        store.head("new").await,
        Ok(None),
        "a failed-before put_new wrote nothing"
    );
}

#[tokio::test]
async fn queued_faults_run_out_then_calls_pass_through() {
    let (store, _dir) = faulty_local(2).await;
    store.fail_next(BlobOp::Head, 2, FaultError::Unavailable);
    store.fail_next(BlobOp::Head, 1, FaultError::Io);
    let codes: Vec<_> = futures_results(&store, 5).await;
    assert_eq!(
        codes,
        [
            "BLOB_UNAVAILABLE",
            "BLOB_UNAVAILABLE",
            "BLOB_IO",
            "ok",
            "ok"
        ]
    );
    assert_eq!(store.calls(BlobOp::Head), 5);
    assert_eq!(store.injected(BlobOp::Head), 3);
    assert_eq!(store.calls(BlobOp::Get), 0);
}

async fn futures_results(store: &FaultyBlobStore, n: usize) -> Vec<&'static str> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(match store.head("k").await {
            Ok(_) => "ok",
            Err(e) => e.code(),
        });
    }
    out
}

#[tokio::test]
async fn fault_after_apply_is_a_lost_response() {
    let (store, _dir) = faulty_local(3).await;
    store.fail_next_after_apply(BlobOp::PutNew, 1, FaultError::Timeout);
    let err = store
        .put_new("k", Bytes::from_static(b"mine"))
        .await
        .expect_err("injected");
    assert_eq!(err.code(), "BLOB_TIMEOUT");
    // The write landed anyway: a retry sees AlreadyExists, and the body is ours.
    let retry = store.put_new("k", Bytes::from_static(b"mine")).await;
    assert_eq!(retry, Err(BlobError::AlreadyExists { key: "k".into() }));
    assert_eq!(store.head("k").await, Ok(Some(4)));
    assert_eq!(store.get("k", None).await, Ok(Bytes::from_static(b"mine")));

    // A retrying writer that asks for it treats its own landed write as success.
    store.fail_next_after_apply(BlobOp::PutNew, 1, FaultError::Unavailable);
    let first = put_new_or_same_size(store.as_ref(), "k2", Bytes::from_static(b"mine")).await;
    assert_eq!(first.unwrap_err().code(), "BLOB_UNAVAILABLE");
    let retry = put_new_or_same_size(store.as_ref(), "k2", Bytes::from_static(b"mine")).await;
    assert_eq!(retry, Ok(PutOutcome::AlreadyPresent));
}

#[tokio::test]
async fn random_faults_are_seeded_and_deterministic() {
    async fn pattern(seed: u64, p: f64) -> Vec<bool> {
        let (store, _dir) = faulty_local(seed).await;
        store.fail_with_probability(BlobOp::Head, p, FaultError::Unavailable);
        let mut failed = Vec::new();
        for _ in 0..400 {
            failed.push(store.head("k").await.is_err());
        }
        assert_eq!(
            store.injected(BlobOp::Head),
            failed.iter().filter(|f| **f).count() as u64
        );
        failed
    }
    let a = pattern(7, 0.3).await;
    assert_eq!(a, pattern(7, 0.3).await, "same seed, same faults");
    assert_ne!(a, pattern(8, 0.3).await, "another seed, other faults");
    let rate = a.iter().filter(|f| **f).count();
    assert!((80..160).contains(&rate), "{rate} of 400 failed at p = 0.3");
    assert!(pattern(9, 1.0).await.iter().all(|f| *f));
    assert!(pattern(9, 0.0).await.iter().all(|f| !*f));
}

#[tokio::test]
async fn latency_delays_calls() {
    let (store, _dir) = faulty_local(4).await;
    store.set_latency(BlobOp::Head, Duration::from_millis(200));
    let timed_out = tokio::time::timeout(Duration::from_millis(20), store.head("k")).await;
    assert!(timed_out.is_err(), "a 200 ms call finished within 20 ms");
    let started = Instant::now();
    let done = tokio::time::timeout(Duration::from_secs(10), store.head("k")).await;
    assert_eq!(done.expect("finishes"), Ok(None));
    assert!(started.elapsed() >= Duration::from_millis(200));
    store.set_latency(BlobOp::Head, Duration::ZERO);
    let fast = tokio::time::timeout(Duration::from_secs(10), store.head("k")).await;
    assert_eq!(fast.expect("finishes"), Ok(None));
}

#[tokio::test]
async fn hung_call_gives_control_back_to_a_caller_timeout() {
    let (store, _dir) = faulty_local(5).await;
    store
        .put_new("k", Bytes::from_static(b"v"))
        .await
        .expect("put_new");
    store.hang(BlobOp::Get);

    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_millis(100), store.get("k", None)).await;
    assert!(result.is_err(), "a hung get returned: {result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        store.hanging(BlobOp::Get),
        0,
        "the cancelled call stopped hanging"
    );
    assert_eq!(store.calls(BlobOp::Get), 1);

    // Other operations are unaffected.
    assert_eq!(store.head("k").await, Ok(Some(1)));

    // A hung call proceeds to the inner store once released.
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.get("k", None).await })
    };
    must_wait_until(Duration::from_secs(10), "the get hangs", || async {
        store.hanging(BlobOp::Get) == 1
    })
    .await;
    assert!(!waiter.is_finished());
    store.release_hangs();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("released call finishes")
        .expect("task");
    assert_eq!(got, Ok(Bytes::from_static(b"v")));
    assert_eq!(store.hanging(BlobOp::Get), 0);
    // Released means disarmed: new calls pass.
    let again = tokio::time::timeout(Duration::from_secs(10), store.get("k", None)).await;
    assert_eq!(again.expect("not hung"), Ok(Bytes::from_static(b"v")));
}

#[tokio::test]
async fn clear_all_removes_every_fault() {
    let (store, _dir) = faulty_local(6).await;
    for op in BlobOp::ALL {
        store.fail_next(op, 3, FaultError::Io);
        store.fail_with_probability(op, 1.0, FaultError::Unavailable);
        store.set_latency(op, Duration::from_secs(60));
    }
    store.hang(BlobOp::List);
    store.clear_all();
    let all = async {
        for op in BlobOp::ALL {
            let result = call(store.as_ref(), op, "k").await;
            assert!(
                !matches!(
                    result,
                    Err(BlobError::Io { .. } | BlobError::Unavailable { .. })
                ),
                "{op}: {result:?}"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("no latency or hang left");
}
