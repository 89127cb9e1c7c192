//! One fresh store per test, for each backend the conformance suite runs against.

use std::any::Any;
use std::sync::Arc;

use nokv_blob::{BlobStore, FaultyBlobStore, LocalBlobStore, S3Config};

use crate::conformance::Capabilities;
use crate::s3s_server::S3sServer;

/// The bucket the S3 fixture creates.
pub const BUCKET: &str = "nokv-test";

/// A store and whatever keeps it alive (temporary directory, server process).
pub struct Fixture {
    pub store: Arc<dyn BlobStore>,
    pub caps: Capabilities,
    _keep: Box<dyn Any + Send>,
}

/// `LocalBlobStore` on a temporary directory.
pub async fn local() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalBlobStore::open(dir.path())
        .await
        .expect("open local store");
    Some(Fixture {
        store: Arc::new(store),
        caps: Capabilities {
            atomic_concurrent_create: true,
            key_prefix_heads_absent: true,
        },
        _keep: Box::new(dir),
    })
}

/// `S3BlobStore` on a fresh `s3s-fs`, under the prefix `conformance`, listing 7 keys per
/// page so that pagination is exercised. `None` when S3 tests are skipped.
pub async fn s3() -> Option<Fixture> {
    let server = S3sServer::must_start().await?;
    server.must_create_bucket(BUCKET).await;
    let config = S3Config {
        list_page_size: Some(7),
        ..server.config(BUCKET, "conformance")
    };
    let store = server.must_connect(config).await;
    Some(Fixture {
        store: Arc::new(store),
        caps: Capabilities {
            // s3s-fs 0.14.1 checks If-None-Match and then writes, without a lock.
            atomic_concurrent_create: false,
            // s3s-fs 0.14.1 answers HEAD of a name that is a directory on disk with 500.
            key_prefix_heads_absent: false,
        },
        _keep: Box::new(server),
    })
}

/// `FaultyBlobStore` without faults, passing through to a local store.
pub async fn faulty() -> Option<Fixture> {
    let inner = local().await?;
    Some(Fixture {
        store: Arc::new(FaultyBlobStore::new(inner.store.clone(), 42)),
        caps: inner.caps,
        _keep: Box::new(inner._keep),
    })
}
