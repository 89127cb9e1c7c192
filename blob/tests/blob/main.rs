//! Integration tests of `nokv-blob`, in one test binary.
//!
//! - [`conformance`]: the store contract, as async functions over `Arc<dyn BlobStore>`;
//!   `suite!` runs every case against each backend in [`fixtures`]: `LocalBlobStore` on a
//!   temporary directory, `S3BlobStore` on a real `s3s-fs` server, and `FaultyBlobStore`
//!   passing through to a local store.
//! - [`faults`]: fault injection, and callers' timeouts against hung calls.
//! - [`s3_store`]: S3-only behaviour (error mapping, prefixes, timeouts, pagination).
//!
//! The S3 tests need the `s3s-fs` binary (`blob/install-s3s-fs.sh`); they fail without it
//! unless `NOKV_SKIP_S3=1`.

mod conformance;
mod faults;
mod fixtures;
mod s3_store;
mod s3s_server;
mod util;

/// Runs each conformance case against one backend, as one `#[tokio::test]` per case.
macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(fixture) = crate::fixtures::$backend().await else {
                        return;
                    };
                    crate::conformance::$case(fixture.store.clone(), fixture.caps).await;
                }
            )*
        }
    };
}

macro_rules! all_backends {
    ($($case:ident),* $(,)?) => {
        suite!(local: $($case),*);
        suite!(s3: $($case),*);
        suite!(faulty: $($case),*);
    };
}

all_backends!(
    round_trip,
    ranges,
    head_present_and_absent,
    put_new_twice_keeps_first_body,
    concurrent_put_new_has_one_winner,
    delete_is_idempotent,
    list_by_prefix,
    list_many_pages,
    invalid_keys_are_rejected,
    missing_key_is_not_found,
    location_round_trips,
);
