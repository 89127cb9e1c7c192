//! `S3BlobStore` behaviour beyond the conformance suite: prefixes, error mapping, timeouts,
//! and pagination at the server's default page size.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nokv_blob::{BlobError, BlobLocation, BlobStore, S3BlobStore, S3Config, S3Credentials};

use crate::fixtures::BUCKET;
use crate::s3s_server::{free_port, S3sServer, ACCESS_KEY, REGION};
use crate::util::pattern;

#[tokio::test]
async fn prefixes_keep_stores_apart() {
    let Some(server) = S3sServer::must_start().await else {
        return;
    };
    server.must_create_bucket(BUCKET).await;
    let a = server.must_connect(server.config(BUCKET, "tenant/a")).await;
    let b = server.must_connect(server.config(BUCKET, "tenant/b")).await;
    let root = server.must_connect(server.config(BUCKET, "")).await;

    a.put_new("k", Bytes::from_static(b"a"))
        .await
        .expect("put a");
    b.put_new("k", Bytes::from_static(b"bb"))
        .await
        .expect("put b");
    assert_eq!(a.get("k", None).await, Ok(Bytes::from_static(b"a")));
    assert_eq!(b.get("k", None).await, Ok(Bytes::from_static(b"bb")));
    assert_eq!(a.list("").await.expect("list").len(), 1);

    let names: Vec<_> = root
        .list("")
        .await
        .expect("list")
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    assert_eq!(
        names,
        [("tenant/a/k".to_owned(), 1), ("tenant/b/k".to_owned(), 2)]
    );
    // The object name in the bucket is PREFIX/KEY.
    let raw = server
        .sdk_client()
        .head_object()
        .bucket(BUCKET)
        .key("tenant/a/k")
        .send()
        .await
        .expect("raw HeadObject");
    assert_eq!(raw.content_length(), Some(1));

    match a.location() {
        BlobLocation::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            ..
        } => {
            assert_eq!(bucket, BUCKET);
            assert_eq!(prefix, "tenant/a");
            assert_eq!(endpoint, Some(server.endpoint()));
            assert_eq!(region.as_deref(), Some(REGION));
        }
        other => panic!("unexpected location {other}"),
    }
}

#[tokio::test]
async fn missing_bucket_and_bad_credentials_are_permanent_errors() {
    let Some(server) = S3sServer::must_start().await else {
        return;
    };
    server.must_create_bucket(BUCKET).await;

    // s3s-fs checks the bucket only on bucket-level calls (a PutObject creates it), so
    // only List can show the NoSuchBucket mapping here.
    let nobucket = server
        .must_connect(server.config("no-such-bucket", ""))
        .await;
    let err = nobucket.list("").await.expect_err("missing bucket");
    assert_eq!(err.code(), "BLOB_IO", "{err}");
    assert!(!err.is_retryable());

    let config = S3Config {
        credentials: Some(S3Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: "wrong-secret".into(),
        }),
        ..server.config(BUCKET, "")
    };
    let denied = server.must_connect(config).await;
    let err = denied
        .put_new("k", Bytes::new())
        .await
        .expect_err("bad secret");
    assert_eq!(err.code(), "BLOB_IO", "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable() {
    let config = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{}", free_port())),
        region: Some(REGION.into()),
        credentials: Some(S3Credentials {
            access_key_id: "ak".into(),
            secret_access_key: "sk".into(),
        }),
        ..S3Config::new(BUCKET, "")
    };
    let store = S3BlobStore::connect(config).await.expect("connect");
    let err = store.head("k").await.expect_err("nothing listens");
    assert!(
        matches!(
            err,
            BlobError::Unavailable { .. } | BlobError::Timeout { .. }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn silent_server_times_out() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        while let Ok((conn, _)) = listener.accept() {
            conns.push(conn);
            if conns.len() >= 16 {
                break;
            }
        }
    });
    let config = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some(REGION.into()),
        credentials: Some(S3Credentials {
            access_key_id: "ak".into(),
            secret_access_key: "sk".into(),
        }),
        op_timeout: Duration::from_millis(300),
        ..S3Config::new(BUCKET, "")
    };
    let store = S3BlobStore::connect(config).await.expect("connect");
    let started = Instant::now();
    let err = store
        .put_new("k", Bytes::from_static(b"x"))
        .await
        .expect_err("silent server");
    assert_eq!(
        err,
        BlobError::Timeout {
            op: nokv_blob::BlobOp::PutNew,
            key: "k".into()
        }
    );
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(store);
    drop(held); // the thread ends with the test process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_pages_past_1000_at_the_default_page_size() {
    let Some(server) = S3sServer::must_start().await else {
        return;
    };
    server.must_create_bucket(BUCKET).await;
    let store: Arc<dyn BlobStore> = Arc::new(server.must_connect(server.config(BUCKET, "p")).await);
    const N: usize = 1100;
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let writes: Vec<_> = (0..N)
        .map(|i| {
            let store = Arc::clone(&store);
            let sem = Arc::clone(&sem);
            tokio::spawn(async move {
                let _permit = sem.acquire().await.expect("semaphore");
                store
                    .put_new(&format!("many/{i:05}"), pattern(i % 7, 0))
                    .await
            })
        })
        .collect();
    for write in writes {
        write.await.expect("task").expect("put_new");
    }
    let listed = store.list("many/").await.expect("list");
    assert_eq!(listed.len(), N);
    for (i, meta) in listed.iter().enumerate() {
        assert_eq!(meta.key, format!("many/{i:05}"));
        assert_eq!(meta.size, (i % 7) as u64);
    }
}
