//! `nokv-blob`: the object bodies of NoKV.
//!
//! NoKV keeps file metadata in a Raft-replicated cluster and file bodies as immutable blocks
//! in S3-compatible object storage. This crate is the narrow door to that storage: the
//! [`BlobStore`] trait and its implementations. It is the only NoKV crate that uses
//! `aws-sdk-s3`; no AWS type appears in its public API.
//!
//! This crate must not depend on: holt, meta-node, client, cli, tonic, openraft, or any other
//! NoKV server crate.
//!
//! # Contract
//!
//! Bodies are immutable: a key is written once, by [`BlobStore::put_new`], and never
//! overwritten (only deleted). Keys are relative (`blocks/0/12/7/0`); each store adds its own
//! prefix or directory. The [key rules](keys) are the same for every store.
//!
//! # Main types
//!
//! - [`BlobStore`]: the trait; its method docs state the contract.
//! - [`S3BlobStore`] (with [`S3Config`]): any S3-compatible service via `aws-sdk-s3`.
//! - [`LocalBlobStore`]: a directory on a local file system.
//! - [`FaultyBlobStore`]: wraps any store and injects errors, latency and hangs, for tests.
//! - [`BlobLocation`]: `s3://BUCKET/PREFIX` or `file:///DIR`; [`open`] builds a store from it.
//! - [`put_new_or_same_size`]: `put_new` for writers that retry after a lost response.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), nokv_blob::BlobError> {
//! # let tmp = tempfile::tempdir().expect("tempdir");
//! # let url = format!("file://{}", tmp.path().display());
//! use bytes::Bytes;
//! use nokv_blob::{BlobError, BlobLocation};
//!
//! let store = nokv_blob::open(&BlobLocation::parse(&url)?).await?;
//! store.put_new("blocks/0/12/7/0", Bytes::from_static(b"hello")).await?;
//! assert_eq!(store.get("blocks/0/12/7/0", Some(1..3)).await?, "el");
//! assert_eq!(store.head("blocks/0/12/7/0").await?, Some(5));
//! let again = store.put_new("blocks/0/12/7/0", Bytes::from_static(b"other")).await;
//! assert!(matches!(again, Err(BlobError::AlreadyExists { .. })));
//! # Ok(())
//! # }
//! ```
//! - [`BlobError`] with stable [codes](BlobError::code), and [`BlobOp`].

pub mod keys;

mod error;
mod faulty;
mod local;
mod location;
mod s3;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

pub use error::{BlobError, BlobOp};
pub use faulty::{FaultError, FaultyBlobStore};
pub use local::LocalBlobStore;
pub use location::BlobLocation;
pub use s3::{S3BlobStore, S3Config, S3Credentials, DEFAULT_OP_TIMEOUT};

/// One object found by [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectMeta {
    /// The relative key (without the store's prefix).
    pub key: String,
    /// Body size in bytes.
    pub size: u64,
}

/// A store of immutable object bodies.
///
/// Every method validates its key first ([`keys::validate_key`], or
/// [`keys::validate_prefix`] for `list`) and fails with [`BlobError::InvalidKey`] without
/// touching the store. Methods are not cancellation-safe in the sense of "no effect": if a
/// `put_new` or `delete` future is dropped (for example by a caller's timeout), the write may
/// or may not have happened.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Stores `body` under `key` if no object exists there, atomically: of any number of
    /// concurrent `put_new` calls for one key, at most one succeeds. When the key exists,
    /// returns [`BlobError::AlreadyExists`] and leaves the stored body untouched, whatever
    /// its content (a caller retrying its own write decides whether that is success, e.g. by
    /// comparing [`head`](BlobStore::head) sizes). On `Ok` the body is durable.
    ///
    /// On S3 this is a `PutObject` with `If-None-Match: *`.
    async fn put_new(&self, key: &str, body: Bytes) -> Result<(), BlobError>;

    /// The whole body, or the bytes in `[start, end)` of it. The range is clamped to the
    /// object: a range past the end gives the bytes up to the end, an empty range or one
    /// starting at or after the end gives an empty body. A missing key is
    /// [`BlobError::NotFound`], whatever the range.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, BlobError>;

    /// The size of the object under `key`, or `None` if there is none.
    async fn head(&self, key: &str) -> Result<Option<u64>, BlobError>;

    /// Deletes the object under `key`. Deleting a missing key is `Ok` (idempotent).
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// Every object whose key starts with `prefix` (a plain string prefix, `""` for all),
    /// sorted by key. Pages through the backend internally.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BlobError>;

    /// Where this store is, for handing to clients (they pass it to [`open`]).
    fn location(&self) -> BlobLocation;
}

/// What [`put_new_or_same_size`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// This call stored the body.
    Created,
    /// An object of the same size was already there (typically this writer's own earlier
    /// attempt whose response was lost); it was left as it was.
    AlreadyPresent,
}

/// [`BlobStore::put_new`] for writers that retry: an existing object of the same size as
/// `body` counts as success ([`PutOutcome::AlreadyPresent`]); one of another size is still
/// [`BlobError::AlreadyExists`]. Only the size is compared, so use it only where a key is
/// never written with two different bodies (NoKV's block keys are unique per write).
pub async fn put_new_or_same_size(
    store: &dyn BlobStore,
    key: &str,
    body: Bytes,
) -> Result<PutOutcome, BlobError> {
    let len = body.len() as u64;
    match store.put_new(key, body).await {
        Ok(()) => Ok(PutOutcome::Created),
        Err(BlobError::AlreadyExists { key: existing }) => match store.head(key).await? {
            Some(size) if size == len => Ok(PutOutcome::AlreadyPresent),
            // Another size, or deleted meanwhile: report the conflict as it was seen.
            _ => Err(BlobError::AlreadyExists { key: existing }),
        },
        Err(other) => Err(other),
    }
}

/// Builds the store a location names.
///
/// - [`BlobLocation::S3`]: an [`S3BlobStore`] configured by [`S3Config::from_location`]:
///   credentials, endpoint and region come from the standard AWS environment
///   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`, …),
///   with the location's endpoint and region taking precedence.
/// - [`BlobLocation::Local`]: a [`LocalBlobStore`] on the directory, created if missing.
pub async fn open(location: &BlobLocation) -> Result<Arc<dyn BlobStore>, BlobError> {
    match location {
        BlobLocation::S3 { .. } => {
            let config = S3Config::from_location(location)?;
            Ok(Arc::new(S3BlobStore::connect(config).await?))
        }
        BlobLocation::Local { dir } => Ok(Arc::new(LocalBlobStore::open(dir).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_builds_the_store_a_location_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().join("blobs").display());
        let location = BlobLocation::parse(&url).expect("parse");
        let store = open(&location).await.expect("open local");
        assert_eq!(store.location(), location);
        store
            .put_new("k", Bytes::from_static(b"v"))
            .await
            .expect("put");
        let again = open(
            &BlobLocation::parse(dir.path().join("blobs").to_str().expect("utf-8")).expect("parse"),
        )
        .await
        .expect("reopen");
        assert_eq!(again.get("k", None).await, Ok(Bytes::from_static(b"v")));

        let s3 = BlobLocation::parse("s3://nokv/p?endpoint=http://127.0.0.1:1&region=eu-west-1")
            .expect("parse");
        let store = open(&s3).await.expect("open s3");
        assert_eq!(store.location(), s3);
    }

    #[tokio::test]
    async fn put_new_or_same_size_accepts_only_a_same_size_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalBlobStore::open(dir.path()).await.expect("open");
        let put = |body: &'static [u8]| put_new_or_same_size(&store, "k", Bytes::from_static(body));
        assert_eq!(put(b"abc").await, Ok(PutOutcome::Created));
        assert_eq!(put(b"abc").await, Ok(PutOutcome::AlreadyPresent));
        assert_eq!(put(b"xyz").await, Ok(PutOutcome::AlreadyPresent));
        assert_eq!(
            put(b"abcd").await,
            Err(BlobError::AlreadyExists { key: "k".into() })
        );
        assert_eq!(store.get("k", None).await, Ok(Bytes::from_static(b"abc")));
    }
}
