//! The engine's typed errors, with POSIX errno and stable code strings.

use serde::{Deserialize, Serialize};

use crate::types::{Epoch, Generation, ShardId};

/// A namespace operation failed. Every variant is deterministic: the same
/// state and command give the same error on every replica, so errors are
/// replicated results too (and remembered by the dedupe table).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum FsError {
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("is a directory: {0}")]
    IsADirectory(String),
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("name too long: {0}")]
    NameTooLong(String),
    #[error("too many levels of symbolic links: {0}")]
    Loop(String),
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    #[error("no such attribute: {0}")]
    NoData(String),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("stale epoch: current is {current}")]
    StaleEpoch { current: Epoch },
    /// A publish predicate failed: the file's content generation is not the
    /// one the client expected (it read an older body, or another writer
    /// published first, or the name now holds a different file). The client
    /// re-reads the file and decides again; retrying blindly cannot succeed.
    #[error("stale generation: expected {expected}, current is {current}")]
    StaleGeneration {
        expected: Generation,
        current: Generation,
    },
    /// A watch cursor older than the retained event history; `oldest` is
    /// the oldest cursor that can still be resumed from.
    #[error("cursor expired: the oldest available cursor is {oldest}")]
    CursorExpired { oldest: u64 },
    /// The entry is a graft point (a directory of this shard whose child is
    /// another shard's root), or a directory whose subtree holds one: it
    /// cannot be renamed, replaced, removed, or have its attributes changed
    /// from this side. Graft points are registered with the control plane
    /// by path, so moving one, or an ancestor of one, would break the tree.
    /// Unregister the graft first (`RemoveGraft`, through the control plane).
    #[error("busy: {0}")]
    Busy(String),
    /// Resolution reached another shard: the path goes through (or names)
    /// the graft point at `path`, whose subtree is `shard`'s, or an inode
    /// id belongs to `shard`. The client refreshes its shard map and sends
    /// the request to `shard`, relative to the graft. `path` is empty when
    /// this shard has no graft to `shard` (a foreign inode id).
    #[error("wrong shard: the request belongs to {shard} (graft point {path:?})")]
    CrossShard { shard: ShardId, path: String },
    /// The operation would span two shards: a rename or hard link between
    /// shards (detected by the client, which sees both), or a subtree
    /// snapshot whose subtree holds a graft point. Snapshots are per shard
    /// for now: pin each shard's part separately.
    #[error("cross-device: {0}")]
    CrossDevice(String),
}

impl FsError {
    /// Stable machine-readable code; clients and tests match on it.
    pub fn code(&self) -> &'static str {
        match self {
            FsError::NotFound(_) => "ENOENT",
            FsError::AlreadyExists(_) => "EEXIST",
            FsError::NotADirectory(_) => "ENOTDIR",
            FsError::IsADirectory(_) => "EISDIR",
            FsError::NotEmpty(_) => "ENOTEMPTY",
            FsError::InvalidArgument(_) => "EINVAL",
            FsError::NameTooLong(_) => "ENAMETOOLONG",
            FsError::Loop(_) => "ELOOP",
            FsError::NotPermitted(_) => "EPERM",
            FsError::NoData(_) => "ENODATA",
            FsError::NoSpace(_) => "ENOSPC",
            FsError::StaleEpoch { .. } => "STALE_EPOCH",
            FsError::StaleGeneration { .. } => "STALE_GENERATION",
            FsError::CursorExpired { .. } => "CURSOR_EXPIRED",
            FsError::Busy(_) => "EBUSY",
            FsError::CrossShard { .. } => "WRONG_SHARD",
            FsError::CrossDevice(_) => "EXDEV",
        }
    }

    /// Linux errno for the FUSE layer.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound(_) => 2,
            FsError::AlreadyExists(_) => 17,
            FsError::NotADirectory(_) => 20,
            FsError::IsADirectory(_) => 21,
            FsError::NotEmpty(_) => 39,
            FsError::InvalidArgument(_) => 22,
            FsError::NameTooLong(_) => 36,
            FsError::Loop(_) => 40,
            FsError::NotPermitted(_) => 1,
            FsError::NoData(_) => 61,
            FsError::NoSpace(_) => 28,
            FsError::StaleEpoch { .. } => 116,
            // ESTALE: the handle the client holds (a generation) is outdated.
            FsError::StaleGeneration { .. } => 116,
            // ERANGE: the position is outside what is kept.
            FsError::CursorExpired { .. } => 34,
            FsError::Busy(_) => 16,
            // EXDEV: a FUSE mount that reaches this has a stale shard map;
            // to the application it is an operation across devices.
            FsError::CrossShard { .. } => 18,
            FsError::CrossDevice(_) => 18,
        }
    }
}

/// A snapshot image could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a Holt image (bad magic)")]
    BadMagic,
    #[error("unsupported Holt image version {0}")]
    UnsupportedVersion(u32),
    #[error("Holt image is truncated")]
    Truncated,
    #[error("Holt image checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("Holt image body is corrupt: {0}")]
    Corrupt(String),
}
