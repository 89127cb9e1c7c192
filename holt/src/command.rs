//! The replicated command: what goes into the Raft log.
//!
//! This is an on-disk format. `LogPayload` is versioned; never reorder or
//! remove enum variants or fields of a released version: add a new version.
//! Values the leader decides (the time, the request id) live only here, so
//! `apply` never reads a clock.

use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::body::{BodySpec, PublishMode, UploadId};
use crate::fields::FieldSet;
use crate::snapshot::SnapshotId;
use crate::types::{Epoch, InodeId, RequestId, ShardId};

/// Where a namespace entry lives: an absolute path, or a name in a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryRef {
    /// An absolute path such as `/a/b`. Intermediate symlinks are followed,
    /// the final component is not.
    Path(String),
    /// `name` inside directory `parent`.
    Child { parent: InodeId, name: String },
}

/// Which inode an operation addresses: a path (final symlink not followed) or an id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeRef {
    Path(String),
    Id(InodeId),
}

/// How `rename` treats an existing destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// POSIX `rename(2)`: replace a compatible destination (a file by a
    /// non-directory, an empty directory by a directory).
    Replace,
    /// `RENAME_NOREPLACE`: fail with `AlreadyExists` if the destination exists.
    NoReplace,
}

/// `setxattr` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrFlag {
    /// Create or replace.
    Upsert,
    /// `XATTR_CREATE`: fail with `AlreadyExists` if present.
    Create,
    /// `XATTR_REPLACE`: fail with `NoData` if absent.
    Replace,
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime_ns: Option<u64>,
}

/// One namespace mutation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a directory. With `parents` (only for `EntryRef::Path`), missing
    /// ancestors are created and an existing directory at the path is success.
    Mkdir {
        at: EntryRef,
        mode: u32,
        uid: u32,
        gid: u32,
        parents: bool,
    },
    /// Create an empty regular file; `AlreadyExists` if the name is taken.
    Create {
        at: EntryRef,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        at: EntryRef,
        target: String,
        uid: u32,
        gid: u32,
    },
    /// Hard link an existing non-directory inode under a new name.
    Link {
        inode: InodeRef,
        at: EntryRef,
    },
    /// Remove a non-directory entry.
    Unlink {
        at: EntryRef,
    },
    /// Remove an empty directory.
    Rmdir {
        at: EntryRef,
    },
    Rename {
        from: EntryRef,
        to: EntryRef,
        mode: RenameMode,
    },
    SetAttr {
        inode: InodeRef,
        set: SetAttr,
    },
    SetXattr {
        inode: InodeRef,
        name: String,
        value: Vec<u8>,
        flag: XattrFlag,
    },
    RemoveXattr {
        inode: InodeRef,
        name: String,
    },
    // ---- object-backed bodies (see `crate::body`) ----
    /// Stage an upload of a new body for the file at `at` (resolved like
    /// `Create`). Reserves the inode (for a create) and a fresh generation,
    /// and leases the upload for `lease_ns` (1 ns ..= 7 days). Returns
    /// `Applied::Staged`.
    BeginPublish {
        at: EntryRef,
        mode: PublishMode,
        lease_ns: u64,
        /// Permission bits, owner and group of a newly created file.
        file_mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Make the uploaded body visible, if the upload's predicate still
    /// holds. Returns `Applied::Attr` of the published file. A predicate
    /// that no longer holds fails with `AlreadyExists` (create-only),
    /// `StaleGeneration` (replace) or `NotFound`; an expired lease with
    /// `NotFound`. The upload stays staged after a failed commit.
    CommitPublish {
        upload: UploadId,
        body: BodySpec,
    },
    /// Several commits, all or nothing. Returns `Applied::Attrs` in order.
    CommitPublishBatch {
        commits: Vec<(UploadId, BodySpec)>,
    },
    /// Drop a staged upload; its key prefix is queued for GC.
    AbortPublish {
        upload: UploadId,
    },
    /// Set a live lease to end at `time_ns + lease_ns`; returns
    /// `Applied::Staged` with the new expiry. An expired lease is final
    /// (`NotFound`), as for a commit.
    RenewUpload {
        upload: UploadId,
        lease_ns: u64,
    },
    /// Drop every upload whose lease ended at or before `now_ns` and queue
    /// its key prefix for GC (the leader's lease worker proposes this).
    ExpireUploads {
        now_ns: u64,
    },
    /// The GC worker deleted these tasks' objects; unknown seqs are ignored.
    GcDone {
        seqs: Vec<u64>,
    },
    /// Pin the subtree at `path` as it is after this command, for
    /// `lease_ns`. `Applied::Snapshot` with the new pin.
    CreateSnapshot {
        path: String,
        lease_ns: u64,
    },
    /// Extend a live pin's lease to `lease_ns` from now. `Applied::Snapshot`.
    RenewSnapshot {
        id: SnapshotId,
        lease_ns: u64,
    },
    /// Release a pin now.
    RemoveSnapshot {
        id: SnapshotId,
    },
    /// Release every pin whose lease ended at or before `now_ns` (the
    /// leader's lease worker proposes this).
    ExpireSnapshots {
        now_ns: u64,
    },
    /// How much watch history to keep: at most `max_events` events, none
    /// older than `max_age_ns` (both at least 1).
    SetWatchRetention {
        max_events: u64,
        max_age_ns: u64,
    },
    // ---- grafts (see `crate::graft`) ----
    /// Make `at` (a vacant name in an existing directory of this shard) a
    /// graft point: an entry whose child is `shard`'s root directory, with
    /// no inode record here. `shard` must be another shard, grafted nowhere
    /// else in this one. Returns `Applied::Attr` with the placeholder
    /// attributes a listing shows for the graft point.
    CreateGraft {
        at: EntryRef,
        shard: ShardId,
    },
    /// Remove the graft point at `at`, which must be a graft to exactly
    /// `shard` (`InvalidArgument` otherwise; `NotFound` if `at` is vacant).
    /// Returns `Applied::Done`.
    RemoveGraft {
        at: EntryRef,
        shard: ShardId,
    },
    // ---- indexed publish (see `crate::fields`) ----
    /// `CommitPublishBatch` where each body comes with its searchable
    /// fields, which the engine stores and indexes with the body. All or
    /// nothing; returns `Applied::Attrs` in order. (Appended last: older
    /// log entries keep their variant numbers.)
    CommitPublishIndexed {
        commits: Vec<IndexedCommit>,
    },
    // ---- access tokens, shard 0 only (see `crate::auth`; appended last) ----
    /// Add token `id` with the hash of its secret. `AlreadyExists` if the
    /// id is taken, `NoSpace` past [`crate::auth::MAX_TOKENS`],
    /// `InvalidArgument` on another shard than 0. Returns `Applied::Done`.
    /// Proposed by a node for an admin (no wire form in `Mutate`).
    CreateToken {
        id: u64,
        secret_sha256: [u8; 32],
        role: Role,
        label: String,
    },
    /// Remove token `id` (`NotFound` if there is none). Returns `Applied::Done`.
    RevokeToken {
        id: u64,
    },
}

/// One member of `Op::CommitPublishIndexed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedCommit {
    pub upload: UploadId,
    pub body: BodySpec,
    pub fields: FieldSet,
}

/// One client mutation as replicated: the op plus everything the leader
/// decided about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Dedupe key: a retried request with the same id returns the first result.
    pub request_id: RequestId,
    /// The epoch the client routed under; `None` skips the check.
    pub epoch: Option<Epoch>,
    /// Leader wall-clock time in ns since the Unix epoch, used for mtime/ctime.
    pub time_ns: u64,
    pub op: Op,
}

/// The payload of one Raft log entry: a group-committed batch of commands,
/// applied in order. Versioned because it is stored on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogPayload {
    V1(Vec<Command>),
}

impl LogPayload {
    pub fn commands(&self) -> &[Command] {
        match self {
            LogPayload::V1(c) => c,
        }
    }
}

impl std::fmt::Display for LogPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch({} commands)", self.commands().len())
    }
}
