//! `nokv-raft-log`: the Raft log storage of NoKV's metadata service.
//!
//! Implements openraft 0.9's [`RaftLogStorage`](openraft::storage::RaftLogStorage) and
//! [`RaftLogReader`](openraft::storage::RaftLogReader) on an embedded sled database. It is
//! the only NoKV crate that touches sled.
//!
//! The store is generic over openraft's [`RaftTypeConfig`](openraft::RaftTypeConfig), so it
//! knows nothing about NoKV's own request types; `meta-node` instantiates
//! `SledLogStore<its TypeConfig>`.
//!
//! This crate must not depend on: holt, meta-node, tonic, or any NoKV server crate.
//!
//! # Main types
//!
//! - [`SledLogStore`]: the log store; its docs state the durability rules.
//! - [`LogStoreError`]: open, sled and codec errors.
//! - [`LogStateSummary`]: first/last/purged indexes, for metrics.
//! - [`schema`]: the persisted-format declaration (trees, keys, value encoding).

pub mod schema;

mod error;
mod store;
mod sync;

pub use error::LogStoreError;
pub use store::{LogStateSummary, SledLogDb, SledLogStore};
pub use sync::SyncCounts;
