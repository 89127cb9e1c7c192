//! The NoKV Rust SDK.
//!
//! A [`Client`] is given any replicas' addresses. It finds the leader,
//! follows `NOT_LEADER` hints, retries transport failures with backoff under
//! a deadline, and reuses a mutation's request id on every retry, so a
//! retried write applies exactly once. A write whose fate is unknown at the
//! deadline is reported as [`ClientError::Unknown`], never as absent.
//!
//! Must not depend on: any server crate (meta-node, raft-log), openraft or
//! sled; users can depend on this crate alone.

pub mod admin;
mod bodies;
mod client;
mod coalesce;
mod error;
mod indexed;
pub mod membership;
mod routing;
mod snapshots;
mod tokens;
mod watch;

pub use bodies::{
    content_type_for, verify_block, FileOwner, PublishTimings, PutOptions, Uploaded,
    DEFAULT_BLOCK_SIZE, PUT_MANY_IN_FLIGHT,
};
pub use client::{Client, ClientConfig, ClientTls, Consistency, DEFAULT_COALESCE};
pub use coalesce::CoalescingStats;
pub use error::ClientError;
pub use indexed::{IndexedFields, IndexedFind};
pub use nokv_holt::{
    Applied, Attr, BlockRef, Body, BodySpec, BodySummary, DirEntry, EntryRef, Event, EventKind,
    FieldSet, FieldValue, FileType, Generation, IndexKey, IndexRange, IndexedHit, InodeId,
    InodeRef, Op, PublishMode, Query, QueryResult, RenameMode, RequestId, SetAttr, ShardId,
    SnapshotId, SnapshotInfo, StagedUpload, UploadId, XattrFlag,
};
pub use nokv_proto::auth::Token;
pub use nokv_proto::pb::{
    FsckResponse, Member, NodeStatusResponse, Role, RunGcResponse, StatusResponse,
};
pub use nokv_router::ShardMap;
pub use tokens::{generate_token, parse_token_id, TokenInfo, TokenRole};
pub use watch::{CursorParseError, WatchCursor, WatchedEvent, WATCH_MAP_POLL};
