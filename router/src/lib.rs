//! `nokv-router`: the control plane of a NoKV cluster.
//!
//! NoKV splits one global namespace tree into **shards**, each a Raft group that owns the
//! subtree below its **graft path**. This crate owns:
//!
//! - the **shard map** ([`ShardMap`]): nodes, shards, graft paths, members, epochs, and its
//!   invariants ([`ShardMap::validate`], [`ShardMap::validate_successor`]);
//! - **routing** ([`routing`]): global path → shard and local path, inode → shard, and the
//!   grafts below a path. Pure functions, no I/O;
//! - the **control-plane store** of the map ([`ControlPlane`]): read, create, change by
//!   compare-and-swap, watch, and node liveness. [`EtcdControlPlane`] keeps it in etcd (the
//!   only user of `etcd-client` in the workspace, feature `etcd`, on by default);
//!   [`MemControlPlane`] keeps it in process, optionally in a JSON file;
//! - the **persisted layout** ([`schema`]): etcd keys and stored encodings, in one place.
//!
//! It must not depend on holt, meta-node, client, cli, sled, aws-sdk-s3 or openraft: the
//! node, the SDK and the CLI depend on it, never the reverse. No `etcd-client` type appears
//! in its public API. Built with `default-features = false` it is the map, routing and the
//! in-process control plane only, and needs no `protoc`.
//!
//! # Main types
//!
//! - [`ShardMap`], [`ShardRecord`], [`NodeRecord`], and the ids [`NodeId`], [`ShardId`],
//!   [`Epoch`], [`Revision`], [`ClusterId`].
//! - [`Route`] from [`ShardMap::route_path`].
//! - [`ControlPlane`] (its method docs are the contract), [`update`], [`Liveness`],
//!   [`MapStream`].
//! - [`RouterError`] with stable [codes](RouterError::code), and [`MapError`].
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), nokv_router::RouterError> {
//! use nokv_router::*;
//!
//! let cluster = ClusterId::new("dev")?;
//! let cp = MemControlPlane::new(cluster.clone());
//! cp.init(ShardMap::bootstrap(cluster, NodeId(1), "127.0.0.1:7000")).await?;
//!
//! // Graft shard 1 at /data (its parent directory / belongs to shard 0).
//! let map = update(&cp, DEFAULT_UPDATE_ATTEMPTS, |map| {
//!     let mut shard = map.shard(ShardId::ROOT)?.clone();
//!     shard.id = ShardId(1);
//!     shard.graft = "/data".into();
//!     shard.parent = Some(ShardId::ROOT);
//!     map.shards.insert(shard.id, shard);
//!     Ok(())
//! })
//! .await?;
//!
//! let route = map.route_path("/data/logs/a.txt")?;
//! assert_eq!((route.shard, route.local_path.as_str()), (ShardId(1), "/logs/a.txt"));
//! assert_eq!(map.to_global(ShardId(1), "/logs")?, "/data/logs");
//! assert_eq!(map.route_path("/database")?.shard, ShardId::ROOT);
//! # Ok(())
//! # }
//! ```
//!
//! Design notes and failure modes: `docs/router.md`.

pub mod routing;
pub mod schema;

mod control;
mod error;
mod mem;
mod types;

#[cfg(feature = "etcd")]
mod etcd;

pub use control::{update, ControlPlane, Liveness, MapStream, DEFAULT_UPDATE_ATTEMPTS};
pub use error::{MapError, RouterError};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdConfig, EtcdControlPlane};
pub use mem::MemControlPlane;
pub use routing::{check_path, Route};
pub use types::{
    ClusterId, Epoch, NodeId, NodeRecord, NodeState, Revision, ShardId, ShardMap, ShardRecord,
    ShardState,
};
