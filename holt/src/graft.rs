//! Grafts: how shards join into one tree.
//!
//! Every shard's namespace is rooted at its own `/`. A *graft point* is an
//! entry of a directory in the parent shard whose child is another shard's
//! root inode ([`InodeId::root`]): a projection-only entry with no inode
//! record in the parent. Clients route a global path by the longest graft
//! prefix, so a correctly routed request never crosses one; the engine
//! fences the rest off.
//!
//! # Invariants
//! - A graft entry's child is `InodeId::root(shard)` for a shard other than
//!   this one, and every such entry is in the graft registry (and only
//!   those): at most one graft per child shard in a shard.
//! - A graft point's path never changes while it exists: renaming it, or
//!   any directory above it, fails with [`FsError::Busy`]; an ancestor
//!   cannot be removed because it is not empty. The registry therefore
//!   stores the path, and the control plane can record graft paths.
//! - Resolution never enters a graft: a path through one, or an inode id
//!   of another shard, fails with [`FsError::CrossShard`] naming the child
//!   shard and the graft point, so the client can re-route.
//! - A listing shows a graft point as a directory with the foreign root's
//!   id and placeholder attributes ([`placeholder_attr`]); its real
//!   attributes live in the child shard.
//! - A subtree snapshot never spans a graft ([`FsError::CrossDevice`]):
//!   snapshots are per shard.
//!
//! [`FsError::Busy`]: crate::FsError::Busy
//! [`FsError::CrossShard`]: crate::FsError::CrossShard
//! [`FsError::CrossDevice`]: crate::FsError::CrossDevice

use serde::{Deserialize, Serialize};

use crate::types::{Attr, FileType, Generation, InodeId, LogIndex, ShardId};

/// One graft point of this shard, as `Query::Grafts` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraftInfo {
    /// The child shard, whose root the entry points to.
    pub shard: ShardId,
    /// The graft point's path in this shard (canonical: no symlinks).
    pub path: String,
    /// The directory holding the entry, and the entry's name.
    pub parent: InodeId,
    pub name: String,
}

/// The registry record of one graft point (replicated state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GraftPoint {
    pub(crate) parent: InodeId,
    pub(crate) name: String,
    /// Canonical path of the entry; fixed while the graft exists.
    pub(crate) path: String,
}

/// What a listing (and `CreateGraft`) reports for a graft point: a
/// directory with the child shard's root id. Deliberately a constant
/// function of the shard, so that it never differs between the ways of
/// reading it; `stat` through the child shard for the real attributes.
pub fn placeholder_attr(shard: ShardId) -> Attr {
    Attr {
        inode: InodeId::root(shard),
        file_type: FileType::Directory,
        mode: 0o755,
        uid: 0,
        gid: 0,
        nlink: 2,
        size: 0,
        generation: Generation(0),
        mtime_ns: 0,
        ctime_ns: 0,
        version: LogIndex(0),
    }
}
