//! Holt: NoKV's metadata engine.
//!
//! Holt holds one shard's namespace (inodes, dentries, xattrs, the inode
//! allocator and the request dedupe table), the metadata of object-backed
//! file bodies (published bodies, staged uploads and the GC queue of
//! objects to delete; see [`body`]), subtree snapshot pins (see
//! [`snapshot`]), the graft points joining other shards' trees below it
//! (see [`graft`]), the access tokens of the cluster (shard 0; see
//! [`auth`]), and changes it only through
//! [`Holt::apply`], a deterministic function of (state, command, log index):
//! no clocks, randomness, I/O or hash-map iteration order. Replicas that
//! apply the same log reach byte-identical state, and [`Holt::encode_image`]
//! turns that state into a versioned, checksummed snapshot image.
//!
//! Must not depend on: tokio, openraft, sled, tonic, or any I/O. The Raft
//! adapter in `meta-node` wraps it; tests drive it directly.
//!
//! Main types: [`Holt`], [`Command`]/[`Op`] (mutations), [`Query`] (reads),
//! [`FsError`] (POSIX-style errors).

pub mod auth;
pub mod body;
pub mod command;
pub mod engine;
pub mod error;
pub mod fields;
pub mod graft;
pub mod image;
pub mod path;
pub mod query;
pub mod snapshot;
pub mod types;
pub mod watch;

pub use auth::{same_hash, Role, TokenInfo, TokenRecord, MAX_TOKENS, MAX_TOKEN_LABEL};
pub use body::{
    block_prefix, shard_block_prefix, validate_body_spec, validate_lease, BlockRef, Body, BodySpec,
    BodySummary, GcTarget, GcTask, PublishMode, StagedUpload, UploadId,
};
pub use command::{
    Command, EntryRef, IndexedCommit, InodeRef, LogPayload, Op, RenameMode, SetAttr, XattrFlag,
};
pub use engine::{Applied, Holt, HoltConfig, Outcome, Stats};
pub use error::{FsError, ImageError};
pub use fields::{validate_field_set, FieldSet, FieldValue, IndexKey, IndexRange};
pub use graft::{placeholder_attr, GraftInfo};
pub use query::{
    IndexedHit, Query, QueryResult, MAX_INDEXED_FIELDS, MAX_INDEXED_PAGE, MAX_READDIR_PAGE,
};
pub use snapshot::{
    validate_snapshot_lease, SnapshotId, SnapshotInfo, MAX_SNAPSHOTS, MAX_SNAPSHOT_LEASE_NS,
};
pub use types::{
    Attr, DirEntry, Epoch, FileType, Generation, InodeId, LogIndex, RequestId, ShardId,
};
pub use watch::{
    Event, EventKind, WatchRetention, MAX_WATCH_AGE_NS, MAX_WATCH_EVENTS, MAX_WATCH_SCAN,
};
