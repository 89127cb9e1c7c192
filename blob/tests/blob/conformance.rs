//! The `BlobStore` conformance suite: each case is an async function over any store.
//!
//! Every case uses its own key prefix and assumes nothing about other keys, so the cases
//! could share one store; the fixtures still give each case a fresh one.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use nokv_blob::{BlobError, BlobLocation, BlobStore, ObjectMeta};

use crate::util::pattern;

/// What a backend guarantees beyond the common contract.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Concurrent `put_new` of one key: exactly one succeeds. `s3s-fs` checks
    /// `If-None-Match` before writing, not atomically, so with it several racing writers
    /// may all succeed; AWS S3 and `LocalBlobStore` are atomic.
    pub atomic_concurrent_create: bool,
    /// A name that is a "directory" of other keys (`a` when `a/b` exists) heads as absent.
    /// `s3s-fs` keeps objects as files and answers HEAD of such a name with HTTP 500; AWS
    /// S3 and `LocalBlobStore` say 404 / `None`.
    pub key_prefix_heads_absent: bool,
}

fn code<T: std::fmt::Debug>(result: Result<T, BlobError>) -> &'static str {
    match result {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.code(),
    }
}

fn keys(list: &[ObjectMeta]) -> Vec<&str> {
    list.iter().map(|m| m.key.as_str()).collect()
}

pub async fn round_trip(store: Arc<dyn BlobStore>, _caps: Capabilities) {
    let bodies = [
        ("rt/empty", Bytes::new()),
        ("rt/small", Bytes::from_static(b"hello, blob")),
        ("rt/5mib", pattern(5 << 20, 1)),
    ];
    for (key, body) in &bodies {
        store.put_new(key, body.clone()).await.expect("put_new");
    }
    for (key, body) in &bodies {
        let got = store.get(key, None).await.expect("get");
        assert_eq!(got.len(), body.len(), "{key}");
        assert!(got == *body, "{key}: body differs");
        assert_eq!(store.head(key).await, Ok(Some(body.len() as u64)), "{key}");
    }
    let listed = store.list("rt/").await.expect("list");
    assert_eq!(
        listed,
        vec![
            ObjectMeta {
                key: "rt/5mib".into(),
                size: 5 << 20
            },
            ObjectMeta {
                key: "rt/empty".into(),
                size: 0
            },
            ObjectMeta {
                key: "rt/small".into(),
                size: 11
            },
        ]
    );
}

pub async fn ranges(store: Arc<dyn BlobStore>, _caps: Capabilities) {
    let body = pattern(100, 2);
    store
        .put_new("range/k", body.clone())
        .await
        .expect("put_new");
    let cases: [(std::ops::Range<u64>, std::ops::Range<usize>); 9] = [
        (0..10, 0..10),     // start
        (40..60, 40..60),   // middle
        (90..100, 90..100), // end
        (0..100, 0..100),   // whole
        (90..200, 90..100), // past the end: clamped
        (99..u64::MAX, 99..100),
        (100..110, 100..100), // starts at the end: empty
        (150..200, 100..100), // starts past the end: empty
        (10..10, 10..10),     // empty
    ];
    for (asked, want) in cases {
        let got = store
            .get("range/k", Some(asked.clone()))
            .await
            .unwrap_or_else(|e| panic!("get {asked:?}: {e}"));
        assert!(
            got == body.slice(want.clone()),
            "range {asked:?}: got {} bytes",
            got.len()
        );
    }
    let inverted = std::ops::Range { start: 60, end: 40 };
    assert_eq!(store.get("range/k", Some(inverted)).await, Ok(Bytes::new()));

    store
        .put_new("range/empty", Bytes::new())
        .await
        .expect("put_new");
    assert_eq!(
        store.get("range/empty", Some(0..10)).await,
        Ok(Bytes::new())
    );
    assert_eq!(store.get("range/empty", Some(0..0)).await, Ok(Bytes::new()));

    assert_eq!(
        code(store.get("range/missing", Some(0..10)).await),
        "BLOB_NOT_FOUND"
    );
    assert_eq!(
        code(store.get("range/missing", Some(5..5)).await),
        "BLOB_NOT_FOUND"
    );
}

pub async fn head_present_and_absent(store: Arc<dyn BlobStore>, caps: Capabilities) {
    assert_eq!(store.head("head/k").await, Ok(None));
    store
        .put_new("head/k", pattern(1234, 3))
        .await
        .expect("put_new");
    assert_eq!(store.head("head/k").await, Ok(Some(1234)));
    if caps.key_prefix_heads_absent {
        // A directory-like prefix of a key is not an object.
        assert_eq!(store.head("head").await, Ok(None));
    }
    assert_eq!(store.head("head/k/deeper").await, Ok(None));
}

pub async fn put_new_twice_keeps_first_body(store: Arc<dyn BlobStore>, _caps: Capabilities) {
    let first = pattern(64, 4);
    store
        .put_new("twice/k", first.clone())
        .await
        .expect("put_new");
    for second in [pattern(64, 5), pattern(10, 6), Bytes::new(), first.clone()] {
        let err = store.put_new("twice/k", second).await.unwrap_err();
        assert_eq!(
            err,
            BlobError::AlreadyExists {
                key: "twice/k".into()
            }
        );
        assert!(!err.is_retryable());
    }
    assert_eq!(store.get("twice/k", None).await, Ok(first));
}

pub async fn concurrent_put_new_has_one_winner(store: Arc<dyn BlobStore>, caps: Capabilities) {
    const WRITERS: u8 = 8;
    for round in 0..5 {
        let key = format!("race/{round}");
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let store = Arc::clone(&store);
                let key = key.clone();
                tokio::spawn(async move {
                    let body = pattern(4096, i);
                    (i, store.put_new(&key, body).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (i, result) = task.await.expect("writer task");
            match result {
                Ok(()) => winners.push(i),
                Err(BlobError::AlreadyExists { .. }) => {}
                Err(e) => panic!("writer {i}: unexpected {e}"),
            }
        }
        assert!(!winners.is_empty(), "{key}: nobody won");
        if caps.atomic_concurrent_create {
            assert_eq!(winners.len(), 1, "{key}: winners {winners:?}");
            let stored = store.get(&key, None).await.expect("get");
            assert!(
                stored == pattern(4096, winners[0]),
                "{key}: body is not the winner's"
            );
        }
        // (Without atomicity, s3s-fs can even store one writer's body with another's
        // checksum, so the body is not checked there.)
        // Once the dust settles, the key is taken.
        assert_eq!(
            code(store.put_new(&key, Bytes::from_static(b"late")).await),
            "BLOB_ALREADY_EXISTS"
        );
    }
}

pub async fn delete_is_idempotent(store: Arc<dyn BlobStore>, _caps: Capabilities) {
    assert_eq!(store.delete("del/never").await, Ok(()));
    store
        .put_new("del/k", pattern(10, 7))
        .await
        .expect("put_new");
    store
        .put_new("del/other", pattern(10, 8))
        .await
        .expect("put_new");
    assert_eq!(store.delete("del/k").await, Ok(()));
    assert_eq!(store.head("del/k").await, Ok(None));
    assert_eq!(code(store.get("del/k", None).await), "BLOB_NOT_FOUND");
    assert_eq!(store.delete("del/k").await, Ok(()));
    assert_eq!(
        keys(&store.list("del/").await.expect("list")),
        ["del/other"]
    );
    // After a delete the key can be written again.
    store
        .put_new("del/k", pattern(3, 9))
        .await
        .expect("put_new again");
    assert_eq!(store.get("del/k", None).await, Ok(pattern(3, 9)));
}

pub async fn list_by_prefix(store: Arc<dyn BlobStore>, _caps: Capabilities) {
    let all = [
        "list/a/1",
        "list/a/2",
        "list/a/sub/3",
        "list/ab",
        "list/b/1",
        "list/ba",
        "other/x",
    ];
    for (i, key) in all.iter().enumerate() {
        store.put_new(key, pattern(i, 0)).await.expect("put_new");
    }
    let cases: [(&str, &[&str]); 8] = [
        (
            "list/a",
            &["list/a/1", "list/a/2", "list/a/sub/3", "list/ab"],
        ),
        ("list/a/", &["list/a/1", "list/a/2", "list/a/sub/3"]),
        ("list/a/s", &["list/a/sub/3"]),
        ("list/b", &["list/b/1", "list/ba"]),
        ("list/", &all[..6]),
        ("list/c", &[]),
        ("nothing/", &[]),
        ("", &all),
    ];
    for (prefix, want) in cases {
        let listed = store.list(prefix).await.expect("list");
        assert_eq!(keys(&listed), want, "prefix {prefix:?}");
    }
    let listed = store.list("").await.expect("list");
    for meta in listed {
        let i = all.iter().position(|k| *k == meta.key).expect("known key");
        assert_eq!(meta.size, i as u64, "{}", meta.key);
    }
}

pub async fn list_many_pages(store: Arc<dyn BlobStore>, _caps: Capabilities) {
    // The S3 fixture lists 7 keys per page, so this is 8 pages there.
    let mut want = BTreeSet::new();
    let writes: Vec<_> = (0..53)
        .map(|i| {
            let store = Arc::clone(&store);
            let key = format!("page/{:03}/{}", i * 7 % 53, i % 3);
            want.insert(key.clone());
            tokio::spawn(async move { store.put_new(&key, pattern(i, 1)).await })
        })
        .collect();
    for write in writes {
        write.await.expect("task").expect("put_new");
    }
    let listed = store.list("page/").await.expect("list");
    let got: Vec<&str> = keys(&listed);
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(got, want);
    assert_eq!(store.list("page/01").await.expect("list").len(), 10);
}

pub async fn invalid_keys_are_rejected(store: Arc<dyn BlobStore>, _caps: Capabilities) {
    let long = "k".repeat(1025);
    let bad = [
        "",
        "/abs",
        "a/../b",
        "..",
        "a//b",
        "trailing/",
        "nul\0byte",
        ".nokv-tmp/x",
        long.as_str(),
    ];
    for key in bad {
        let is_invalid = |r: Result<(), BlobError>| matches!(r, Err(BlobError::InvalidKey { key: ref k, .. }) if k == key);
        assert!(
            is_invalid(store.put_new(key, Bytes::new()).await),
            "put_new {key:?}"
        );
        assert!(
            is_invalid(store.get(key, None).await.map(drop)),
            "get {key:?}"
        );
        assert!(is_invalid(store.head(key).await.map(drop)), "head {key:?}");
        assert!(is_invalid(store.delete(key).await), "delete {key:?}");
    }
    for prefix in ["/abs", "../x", "a//", "nul\0", long.as_str()] {
        assert_eq!(
            code(store.list(prefix).await),
            "BLOB_INVALID_KEY",
            "list {prefix:?}"
        );
    }
    // Nothing was written by the rejected calls.
    assert_eq!(store.list("").await, Ok(vec![]));
}

pub async fn missing_key_is_not_found(store: Arc<dyn BlobStore>, _caps: Capabilities) {
    let err = store.get("missing/k", None).await.unwrap_err();
    assert_eq!(
        err,
        BlobError::NotFound {
            key: "missing/k".into()
        }
    );
    assert_eq!(err.code(), "BLOB_NOT_FOUND");
    assert!(!err.is_retryable());
    assert_eq!(store.head("missing/k").await, Ok(None));
    assert_eq!(store.list("missing/").await, Ok(vec![]));
}

pub async fn location_round_trips(store: Arc<dyn BlobStore>, _caps: Capabilities) {
    let location = store.location();
    let url = location.to_string();
    assert_eq!(BlobLocation::parse(&url), Ok(location.clone()), "{url}");
    match location {
        BlobLocation::S3 { bucket, .. } => assert!(url.starts_with(&format!("s3://{bucket}"))),
        BlobLocation::Local { dir } => {
            assert!(dir.is_absolute());
            assert!(url.starts_with("file:///"));
        }
    }
}
