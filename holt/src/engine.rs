//! The state machine: one shard's namespace, [`Holt::apply`] and [`Holt::query`].
//!
//! Everything here is deterministic. State lives in `BTreeMap`s and
//! persistent ordered maps and vectors (never a `HashMap`, whose iteration order differs between
//! processes), `apply` reads no clock (times come in the command), and every
//! failure is a typed [`FsError`] that is itself a replicated result.
//!
//! `apply` is also total: it must not panic on any command, however
//! malformed, because a panic in the state machine would take down every
//! replica applying the same log entry. Every operation therefore checks all
//! of its preconditions before it mutates anything, so an operation either
//! happens completely or not at all.
//!
//! Layout of the submodules:
//! - `resolve`: path and reference resolution (symlinks, `..` in targets);
//! - `ops`: one function per mutation;
//! - `publish`: object-backed bodies (staged uploads, commits, lease
//!   expiry, the GC queue) and the read helpers for the leader's workers;
//! - `read`: the read-only queries;
//! - `graft`: graft points (entries whose child is another shard's root);
//! - `invariants`: the structural checks run on a decoded image.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use imbl::{OrdMap, OrdSet, Vector};
use serde::{Deserialize, Serialize};

use crate::body::{validate_body_spec, validate_lease, GcTask, UploadId, MAX_PUBLISH_BATCH};
use crate::command::{Command, EntryRef, InodeRef, Op};
use crate::error::FsError;
use crate::fields::{validate_field_set, FieldSet, IndexKey};
use crate::graft::GraftPoint;
use crate::path::{
    split_path, validate_name, validate_symlink_target, validate_xattr_name, validate_xattr_value,
};
use crate::snapshot::{validate_snapshot_lease, SnapshotId, SnapshotInfo};
use crate::types::{Attr, Epoch, FileType, Generation, InodeId, LogIndex, RequestId, ShardId};
use crate::watch::{Event, WatchRetention};

mod dentry_map;
mod events;
mod graft;
#[cfg(test)]
mod graft_tests;
mod index;
mod inode_map;
mod inode_set;
mod invariants;
mod memory;
mod name;
mod ops;
mod publish;
#[cfg(test)]
mod publish_tests;
mod read;
mod resolve;
mod snapshots;
mod stored_body;
#[cfg(test)]
mod tests;
mod tokens;

pub(crate) use dentry_map::{DentryMap, EntryProbe};
pub(crate) use index::reverse_links;
pub(crate) use inode_map::{diff_sorted, InodeMap};
pub(crate) use inode_set::InodeSet;
pub(crate) use name::Name;
pub(crate) use publish::Staged;
pub(crate) use snapshots::Pin;
pub(crate) use stored_body::{BodyRef, LabelPool, StoredBody};

/// Static configuration of one engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoltConfig {
    /// The shard this engine holds; every inode id it allocates carries it.
    pub shard: ShardId,
    /// How many request outcomes the dedupe table remembers (oldest evicted
    /// first). 0 disables deduplication.
    pub dedupe_capacity: usize,
}

impl Default for HoltConfig {
    fn default() -> Self {
        HoltConfig {
            shard: ShardId(0),
            dedupe_capacity: 100_000,
        }
    }
}

/// What a successful mutation returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The attributes of the created or changed inode.
    Attr(Attr),
    /// The mutation succeeded and has nothing to report.
    Done,
    /// `BeginPublish`: the staged upload (its id, inode, generation, key prefix).
    Staged(crate::body::StagedUpload),
    /// `CommitPublishBatch`: the attributes of every published file, in order.
    Attrs(Vec<Attr>),
    /// `CreateSnapshot`, `RenewSnapshot`: the pin as it now is.
    Snapshot(SnapshotInfo),
}

/// The replicated result of one command.
pub type Outcome = Result<Applied, FsError>;

/// Counters describing an engine, for metrics and tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub inodes: u64,
    pub dentries: u64,
    pub dedupe_entries: u64,
    /// The shard-local number the next new inode will get.
    pub next_inode: u64,
    pub epoch: Epoch,
    pub last_applied: LogIndex,
    /// Uploads between `BeginPublish` and their commit, abort or expiry.
    pub staged: u64,
    /// Deletions waiting for the GC worker.
    pub gc_tasks: u64,
    /// Live snapshot pins.
    pub snapshots: u64,
    /// Graft points (entries whose child is another shard's root).
    pub grafts: u64,
}

/// One inode and everything attached to it.
///
/// Kept small because there is one per inode: what most inodes lack sits
/// behind a pointer (the body, the extended attributes, a symlink's
/// target), and what can be derived is (a directory's parent is its
/// entry's directory), so a directory or an empty file costs its
/// attributes, two pointers and its entry (112 bytes, checked by a test). Encoded field by
/// field as the plain values (`RecordImage`), so the image format does not
/// depend on this layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InodeRecord {
    pub(crate) attr: Attr,
    /// A symlink's target and the extended attributes: one null pointer
    /// for the inodes that have neither.
    pub(crate) extras: Extras,
    /// The published body, for regular files only; `None` until the first
    /// publish (such a file has generation 0 and its size is metadata only).
    /// Compacted (see `stored_body`): its size and generation are `attr`'s,
    /// [`InodeRecord::body`] joins them. Encoded as a [`crate::Body`].
    pub(crate) body: Option<Box<StoredBody>>,
    /// The inode's local entry `(directory, name)` if it has exactly one
    /// (see `index`): derived, not encoded. A directory has exactly one
    /// name, so this is also where its parent comes from
    /// ([`InodeRecord::parent`]).
    pub(crate) link: Option<(InodeId, Name)>,
}

/// [`InodeRecord`] as the image encodes it: the fields it had before the
/// symlink target and xattrs moved behind one pointer, in that order.
/// (Tests also build one to write records the engine would not.)
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
#[serde(rename = "InodeRecord")]
pub(crate) struct RecordImage {
    pub(crate) attr: Attr,
    pub(crate) symlink_target: Option<String>,
    pub(crate) xattrs: BTreeMap<String, Vec<u8>>,
    /// Derived on decode (see [`InodeRecord::parent`]): only its presence
    /// is checked against the file type.
    pub(crate) parent: Option<InodeId>,
    pub(crate) body: Option<crate::Body>,
}

impl Serialize for InodeRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut record = serializer.serialize_struct("InodeRecord", 5)?;
        record.serialize_field("attr", &self.attr)?;
        record.serialize_field("symlink_target", &self.extras.symlink_target())?;
        match &self.extras.0 {
            Some(extras) => record.serialize_field("xattrs", &extras.xattrs)?,
            None => record.serialize_field("xattrs", &BTreeMap::<String, Vec<u8>>::new())?,
        }
        record.serialize_field("parent", &self.parent())?;
        record.serialize_field("body", &self.body())?;
        record.end()
    }
}

impl<'de> Deserialize<'de> for InodeRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let image = RecordImage::deserialize(deserializer)?;
        let is_dir = image.attr.file_type == FileType::Directory;
        if image.parent.is_some() != is_dir {
            return Err(serde::de::Error::custom(format!(
                "inode {}: a parent is recorded for directories, and only for them",
                image.attr.inode
            )));
        }
        let body = match image.body {
            None => None,
            Some(body) => {
                if (body.size, body.generation) != (image.attr.size, image.attr.generation) {
                    return Err(serde::de::Error::custom(format!(
                        "inode {}: body and attributes disagree",
                        image.attr.inode
                    )));
                }
                Some(Box::new(
                    StoredBody::decode(body).map_err(serde::de::Error::custom)?,
                ))
            }
        };
        Ok(InodeRecord {
            attr: image.attr,
            extras: Extras::new(image.symlink_target, image.xattrs),
            body,
            link: None,
        })
    }
}

impl InodeRecord {
    /// The published body with its size and generation (from `attr`).
    pub(crate) fn body(&self) -> Option<BodyRef<'_>> {
        let body = self.body.as_deref()?;
        Some(body.with(self.attr.size, self.attr.generation))
    }

    /// The containing directory, for directories only: the directory of
    /// its one entry. Needed to resolve `..` in symlink targets and to
    /// refuse moving a directory into its own subtree. A shard's root,
    /// which has no entry in its own shard, is its own parent.
    pub(crate) fn parent(&self) -> Option<InodeId> {
        if self.attr.file_type != FileType::Directory {
            return None;
        }
        Some(self.link.as_ref().map_or(self.attr.inode, |(dir, _)| *dir))
    }
}

/// What few inodes have: a symlink's target and extended attributes,
/// behind one pointer that is null while both are absent (8 bytes in every
/// record instead of 16 for two such pointers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Extras(Option<Box<ExtrasInner>>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ExtrasInner {
    symlink_target: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

impl Extras {
    /// A symlink's (or, with `None`, any other inode's) extras.
    pub(crate) fn symlink(target: Option<String>) -> Extras {
        Extras::new(target, BTreeMap::new())
    }

    /// Extras of both kinds: null if there are neither.
    fn new(symlink_target: Option<String>, xattrs: BTreeMap<String, Vec<u8>>) -> Extras {
        let any = symlink_target.is_some() || !xattrs.is_empty();
        Extras(any.then(|| {
            Box::new(ExtrasInner {
                symlink_target,
                xattrs,
            })
        }))
    }

    pub(crate) fn symlink_target(&self) -> Option<&str> {
        self.0.as_ref()?.symlink_target.as_deref()
    }

    pub(crate) fn xattr(&self, name: &str) -> Option<&Vec<u8>> {
        self.0.as_ref()?.xattrs.get(name)
    }

    pub(crate) fn has_xattr(&self, name: &str) -> bool {
        self.xattr(name).is_some()
    }

    pub(crate) fn set_xattr(&mut self, name: String, value: Vec<u8>) {
        self.0.get_or_insert_default().xattrs.insert(name, value);
    }

    pub(crate) fn remove_xattr(&mut self, name: &str) {
        if let Some(inner) = &mut self.0 {
            inner.xattrs.remove(name);
            if inner.xattrs.is_empty() && inner.symlink_target.is_none() {
                self.0 = None;
            }
        }
    }

    pub(crate) fn xattrs(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.0.iter().flat_map(|inner| inner.xattrs.iter())
    }

    pub(crate) fn xattr_names(&self) -> impl Iterator<Item = &String> {
        self.xattrs().map(|(name, _)| name)
    }
}

/// The namespace proper: every inode and every directory entry of a shard.
///
/// Both maps are persistent B-trees (`imbl::OrdMap`): a clone shares all
/// structure with the original and costs O(1), and later writes to either
/// copy only the paths they change. That is what makes a snapshot pin
/// cheap: it keeps a clone of the namespace as it was. Resolution and the
/// read-only queries are methods of this type, so the same code answers
/// for the current state and for a pinned one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub(crate) shard: ShardId,
    /// The records inline in the map's chunks of sixteen ids (see
    /// [`InodeMap`]): no allocation of its own per record. A clone of the
    /// map (a pin, the snapshot builder's copy) shares every chunk; the
    /// first write to a shared chunk copies its sixteen records.
    pub(crate) inodes: InodeMap<InodeRecord>,
    /// `(directory, name) -> child`. Keyed by directory first so a listing is
    /// a range scan.
    pub(crate) dentries: DentryMap,
    /// The graft points among `dentries`, by child shard (see
    /// [`crate::graft`]): exactly the entries whose child is another
    /// shard's root. Kept here rather than derived so that a path through a
    /// graft names the graft point in O(log n), and persistent so a pin
    /// keeps its own.
    pub(crate) grafts: OrdMap<ShardId, GraftPoint>,
    /// Each indexed file's field set (see [`crate::fields`]), replaced with
    /// its body. Replicated and part of the image.
    pub(crate) fields: OrdMap<InodeId, FieldSet>,
    /// Derived from `fields` (see `index`): `(field, key, file)`.
    pub(crate) index: OrdSet<(String, IndexKey, InodeId)>,
    /// Derived: files whose body came without a field set.
    pub(crate) unindexed: InodeSet,
    /// Derived from `dentries`: `(child, directory, name)` of every local
    /// entry of an inode with several (or without a record); an inode
    /// with one keeps it in its record (`InodeRecord::link`, see `index`).
    pub(crate) links: OrdSet<(InodeId, InodeId, Name)>,
}

/// The metadata engine of one shard. See the module docs.
///
/// Equality compares the complete state, including the dedupe table and
/// `last_applied`, which is what replica-convergence tests need.
///
/// A `Holt` is its current [`Namespace`] plus the replicated bookkeeping
/// around it (counters, dedupe table, uploads, GC queue); it dereferences to
/// the namespace, so `self.inodes` and `self.record(..)` read the current
/// state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holt {
    pub(crate) ns: Namespace,
    pub(crate) dedupe_capacity: usize,
    /// Shard-local number of the next inode; `InodeId::MAX_LOCAL + 1` when exhausted.
    pub(crate) next_local: u64,
    pub(crate) epoch: Epoch,
    pub(crate) last_applied: LogIndex,
    /// Persistent, like the namespace: a snapshot's copy of the state is
    /// O(1) under the state lock (a `BTreeMap` of 100,000 outcomes took
    /// 75-200 ms to clone, stalling every write meanwhile).
    /// Each outcome behind its own `Arc`, as the records are: an inline
    /// `Outcome` is 112 bytes, and the map's half-full leaves spent about
    /// 290 bytes per remembered request.
    pub(crate) dedupe: OrdMap<RequestId, Arc<Outcome>>,
    /// Keys of `dedupe` in insertion order, for eviction.
    pub(crate) dedupe_order: Vector<RequestId>,
    /// Uploads between `BeginPublish` and their commit, abort or expiry.
    pub(crate) staged: BTreeMap<UploadId, Staged>,
    /// Id of the next staged upload (starts at 1).
    pub(crate) next_upload: u64,
    /// The next content generation (starts at 1; 0 means "no body"). One
    /// counter for the whole shard, never reused, so that block prefixes,
    /// which carry the generation, are unique forever.
    pub(crate) next_generation: u64,
    /// Deletions waiting for the GC worker, by queue position.
    pub(crate) gc: BTreeMap<u64, GcTask>,
    /// Queue position of the next GC task (starts at 1).
    pub(crate) next_gc_seq: u64,
    /// Live snapshot pins, by id.
    pub(crate) snapshots: BTreeMap<SnapshotId, Pin>,
    /// Id of the next snapshot (starts at 1).
    pub(crate) next_snapshot: u64,
    /// The watch history, oldest first, gapless in `seq`.
    pub(crate) events: Vector<Event>,
    /// Sequence number (cursor) of the next event (starts at 1).
    pub(crate) next_event: u64,
    pub(crate) retention: WatchRetention,
    /// Access tokens by id (shard 0 only; see [`crate::auth`]).
    pub(crate) tokens: BTreeMap<u64, crate::auth::TokenRecord>,
    /// The label pairs bodies share: an allocation cache, not state.
    pub(crate) labels: LabelPool,
}

/// When a mutation happens: its log index (the new `version` of every inode
/// it touches) and the leader's timestamp (for mtime/ctime).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp {
    pub(crate) index: LogIndex,
    pub(crate) time_ns: u64,
}

impl Deref for Holt {
    type Target = Namespace;

    fn deref(&self) -> &Namespace {
        &self.ns
    }
}

impl DerefMut for Holt {
    fn deref_mut(&mut self) -> &mut Namespace {
        &mut self.ns
    }
}

impl Holt {
    /// A fresh shard holding only its root directory.
    pub fn new(config: HoltConfig) -> Holt {
        let root = InodeId::root(config.shard);
        let root_record = InodeRecord {
            attr: Attr {
                inode: root,
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
            },
            extras: Extras::default(),
            body: None,
            link: None,
        };
        Holt {
            ns: Namespace {
                shard: config.shard,
                inodes: InodeMap::unit(root, root_record),
                dentries: DentryMap::default(),
                grafts: OrdMap::new(),
                fields: OrdMap::new(),
                index: OrdSet::new(),
                unindexed: InodeSet::default(),
                links: OrdSet::new(),
            },
            dedupe_capacity: config.dedupe_capacity,
            next_local: InodeId::ROOT_LOCAL + 1,
            epoch: Epoch(1),
            last_applied: LogIndex(0),
            dedupe: OrdMap::new(),
            dedupe_order: Vector::new(),
            staged: BTreeMap::new(),
            next_upload: 1,
            next_generation: 1,
            gc: BTreeMap::new(),
            next_gc_seq: 1,
            snapshots: BTreeMap::new(),
            next_snapshot: 1,
            events: Vector::new(),
            next_event: 1,
            retention: WatchRetention::default(),
            tokens: BTreeMap::new(),
            labels: LabelPool::default(),
        }
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Starts a new epoch at log position `index`: the Raft adapter calls
    /// this when it applies the blank entry a new leader commits, or a
    /// membership change. Deterministic, like `apply`: every replica
    /// advances at the same log position, so every replica judges every
    /// command against the same epoch.
    ///
    /// [`Holt::apply`] refuses a command whose epoch differs from the
    /// current one with `StaleEpoch { current }`. Lower is the case that
    /// matters (the client routed under an older leadership). Higher cannot
    /// happen honestly: a client learns an epoch only from a replica that
    /// applied it, and any command proposed afterwards is ordered after that
    /// entry in the log, so it is refused too rather than trusted. The
    /// refusal is *not* remembered by the dedupe table: it proves the command
    /// changed nothing, and since epochs only grow, the same command under the
    /// same epoch is refused again wherever it is retried. The client resends
    /// it under the current epoch with the *same* request id, and the dedupe
    /// table then makes it apply at most once, however many copies (old epoch
    /// or new) reach the log, and whoever retries it (the SDK after the
    /// refusal, or its caller after an unknown outcome).
    pub fn advance_epoch(&mut self, index: LogIndex) {
        self.last_applied = self.last_applied.max(index);
        // 2^64 leader changes cannot happen; saturating keeps this panic-free.
        self.epoch = Epoch(self.epoch.0.saturating_add(1));
    }

    /// The highest log index passed to [`Holt::apply`].
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// The engine's configuration (as restored from an image, if it was).
    pub fn config(&self) -> HoltConfig {
        HoltConfig {
            shard: self.shard,
            dedupe_capacity: self.dedupe_capacity,
        }
    }

    /// The remembered outcome of `request`, if it was applied and is still
    /// in the dedupe window. The server uses it to skip pre-checks for a
    /// retry, whose answer is the remembered outcome whatever the state now.
    pub fn remembered(&self, request: RequestId) -> Option<&Outcome> {
        self.dedupe.get(&request).map(|outcome| &**outcome)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            inodes: self.inodes.len() as u64,
            dentries: self.dentries.len() as u64,
            dedupe_entries: self.dedupe.len() as u64,
            next_inode: self.next_local,
            epoch: self.epoch,
            last_applied: self.last_applied,
            staged: self.staged.len() as u64,
            gc_tasks: self.gc.len() as u64,
            snapshots: self.snapshots.len() as u64,
            grafts: self.grafts.len() as u64,
        }
    }

    /// Applies one committed command at log position `index`.
    ///
    /// Order of checks: a remembered request id returns its first outcome;
    /// then the epoch; then the static validation of
    /// [`Holt::validate_command`]; then the operation itself. Outcomes of the
    /// operation (success or error) are remembered for deduplication. Epoch
    /// refusals are not (see [`Holt::advance_epoch`]: the command may be sent
    /// again under the current epoch with the same request id), nor are
    /// validation errors: they depend on the command alone, so a retry gets
    /// the same error anyway, and keeping them out means a malformed command
    /// leaves the state untouched except for `last_applied`.
    pub fn apply(&mut self, index: LogIndex, cmd: &Command) -> Outcome {
        self.last_applied = self.last_applied.max(index);
        if let Some(first) = self.dedupe.get(&cmd.request_id) {
            return (**first).clone();
        }
        if cmd.epoch.is_some_and(|epoch| epoch != self.epoch) {
            return Err(FsError::StaleEpoch {
                current: self.epoch,
            });
        }
        Self::validate_command(cmd)?;
        let stamp = Stamp {
            index,
            time_ns: cmd.time_ns,
        };
        let targets = self.event_targets(&cmd.op);
        let outcome = self.execute(stamp, &cmd.op);
        if let Ok(applied) = &outcome {
            self.emit_events(stamp, &cmd.op, targets, applied);
        }
        self.remember(cmd.request_id, outcome.clone());
        outcome
    }

    /// Static checks of names, paths and sizes that need no state: run by
    /// the server before proposing, and again by `apply`.
    pub fn validate_command(cmd: &Command) -> Result<(), FsError> {
        match &cmd.op {
            Op::Mkdir { at, parents, .. } => {
                if *parents && matches!(at, EntryRef::Child { .. }) {
                    return Err(FsError::InvalidArgument(
                        "mkdir with parents needs a path, not a (directory, name) pair".into(),
                    ));
                }
                validate_entry(at)
            }
            Op::Create { at, .. } | Op::Unlink { at } | Op::Rmdir { at } => validate_entry(at),
            Op::Symlink { at, target, .. } => {
                validate_entry(at)?;
                validate_symlink_target(target)
            }
            Op::Link { inode, at } => {
                validate_inode(inode)?;
                validate_entry(at)
            }
            Op::Rename { from, to, .. } => {
                validate_entry(from)?;
                validate_entry(to)
            }
            Op::SetAttr { inode, .. } => validate_inode(inode),
            Op::SetXattr {
                inode, name, value, ..
            } => {
                validate_inode(inode)?;
                validate_xattr_name(name)?;
                validate_xattr_value(value)
            }
            Op::RemoveXattr { inode, name } => {
                validate_inode(inode)?;
                validate_xattr_name(name)
            }
            Op::BeginPublish { at, lease_ns, .. } => {
                validate_entry(at)?;
                validate_lease(*lease_ns)
            }
            Op::CommitPublish { body, .. } => validate_body_spec(body),
            Op::CommitPublishBatch { commits } => {
                validate_batch(commits.iter().map(|(u, b)| (*u, b)))
            }
            Op::CommitPublishIndexed { commits } => {
                validate_batch(commits.iter().map(|c| (c.upload, &c.body)))?;
                commits.iter().try_for_each(|c| {
                    validate_field_set(&c.fields).map_err(|e| match e {
                        FsError::InvalidArgument(why) => {
                            FsError::InvalidArgument(format!("{}: {why}", c.upload))
                        }
                        other => other,
                    })
                })
            }
            Op::RenewUpload { lease_ns, .. } => validate_lease(*lease_ns),
            Op::CreateSnapshot { path, lease_ns } => {
                split_path(path)?;
                validate_snapshot_lease(*lease_ns)
            }
            Op::RenewSnapshot { lease_ns, .. } => validate_snapshot_lease(*lease_ns),
            Op::SetWatchRetention {
                max_events,
                max_age_ns,
            } => {
                if *max_events == 0 || *max_age_ns == 0 {
                    return Err(FsError::InvalidArgument(
                        "watch retention needs at least one event and a positive age".into(),
                    ));
                }
                if *max_events > crate::watch::MAX_WATCH_EVENTS {
                    return Err(FsError::InvalidArgument(format!(
                        "watch retention of {max_events} events is above the limit of {}",
                        crate::watch::MAX_WATCH_EVENTS
                    )));
                }
                if *max_age_ns > crate::watch::MAX_WATCH_AGE_NS {
                    return Err(FsError::InvalidArgument(format!(
                        "watch retention of {} s is above the limit of {} s (30 days)",
                        max_age_ns / 1_000_000_000,
                        crate::watch::MAX_WATCH_AGE_NS / 1_000_000_000
                    )));
                }
                Ok(())
            }
            Op::CreateGraft { at, .. } | Op::RemoveGraft { at, .. } => validate_entry(at),
            Op::CreateToken { label, .. } => crate::auth::validate_token_label(label),
            Op::RevokeToken { .. }
            | Op::AbortPublish { .. }
            | Op::ExpireUploads { .. }
            | Op::GcDone { .. }
            | Op::RemoveSnapshot { .. }
            | Op::ExpireSnapshots { .. } => Ok(()),
        }
    }

    fn execute(&mut self, stamp: Stamp, op: &Op) -> Outcome {
        match op {
            Op::Mkdir {
                at,
                mode,
                uid,
                gid,
                parents,
            } => {
                let owner = Owner {
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                };
                if *parents {
                    self.mkdir_parents(stamp, at, owner)
                } else {
                    self.mkdir(stamp, at, owner)
                }
            }
            Op::Create { at, mode, uid, gid } => {
                let owner = Owner {
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                };
                self.create(stamp, at, owner)
            }
            Op::Symlink {
                at,
                target,
                uid,
                gid,
            } => self.symlink(stamp, at, target, *uid, *gid),
            Op::Link { inode, at } => self.link(stamp, inode, at),
            Op::Unlink { at } => self.unlink(stamp, at),
            Op::Rmdir { at } => self.rmdir(stamp, at),
            Op::Rename { from, to, mode } => self.rename(stamp, from, to, *mode),
            Op::SetAttr { inode, set } => self.set_attr(stamp, inode, set),
            Op::SetXattr {
                inode,
                name,
                value,
                flag,
            } => self.set_xattr(stamp, inode, name, value, *flag),
            Op::RemoveXattr { inode, name } => self.remove_xattr(stamp, inode, name),
            Op::BeginPublish {
                at,
                mode,
                lease_ns,
                file_mode,
                uid,
                gid,
            } => {
                let owner = Owner {
                    mode: *file_mode,
                    uid: *uid,
                    gid: *gid,
                };
                self.begin_publish(stamp, at, *mode, *lease_ns, owner)
            }
            Op::CommitPublish { upload, body } => self.commit_publish(stamp, *upload, body, None),
            Op::CommitPublishBatch { commits } => {
                let commits: Vec<_> = commits.iter().map(|(u, b)| (*u, b, None)).collect();
                self.commit_publish_batch(stamp, &commits)
            }
            Op::CommitPublishIndexed { commits } => {
                let commits: Vec<_> = commits
                    .iter()
                    .map(|c| (c.upload, &c.body, Some(&c.fields)))
                    .collect();
                self.commit_publish_batch(stamp, &commits)
            }
            Op::AbortPublish { upload } => self.abort_publish(stamp, *upload),
            Op::RenewUpload { upload, lease_ns } => self.renew_upload(stamp, *upload, *lease_ns),
            Op::ExpireUploads { now_ns } => Ok(self.expire_uploads(stamp, *now_ns)),
            Op::GcDone { seqs } => Ok(self.gc_done(seqs)),
            Op::CreateSnapshot { path, lease_ns } => self.create_snapshot(stamp, path, *lease_ns),
            Op::RenewSnapshot { id, lease_ns } => self.renew_snapshot(stamp, *id, *lease_ns),
            Op::RemoveSnapshot { id } => self.remove_snapshot(stamp, *id),
            Op::ExpireSnapshots { now_ns } => Ok(self.expire_snapshots(stamp, *now_ns)),
            Op::SetWatchRetention {
                max_events,
                max_age_ns,
            } => {
                self.retention = WatchRetention {
                    max_events: *max_events,
                    max_age_ns: *max_age_ns,
                };
                Ok(Applied::Done)
            }
            Op::CreateGraft { at, shard } => self.create_graft(stamp, at, *shard),
            Op::RemoveGraft { at, shard } => self.remove_graft(stamp, at, *shard),
            Op::CreateToken {
                id,
                secret_sha256,
                role,
                label,
            } => self.create_token(stamp, *id, *secret_sha256, *role, label),
            Op::RevokeToken { id } => self.revoke_token(*id),
        }
    }

    /// Records an outcome, evicting the oldest entries beyond capacity.
    fn remember(&mut self, request: RequestId, outcome: Outcome) {
        if self.dedupe_capacity == 0 {
            return;
        }
        while self.dedupe_order.len() >= self.dedupe_capacity {
            match self.dedupe_order.pop_front() {
                Some(oldest) => {
                    self.dedupe.remove(&oldest);
                }
                None => break,
            }
        }
        self.dedupe.insert(request, Arc::new(outcome));
        self.dedupe_order.push_back(request);
    }
}

/// Permission bits and ownership of a new inode.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owner {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

fn validate_entry(at: &EntryRef) -> Result<(), FsError> {
    match at {
        EntryRef::Path(path) => split_path(path).map(drop),
        EntryRef::Child { name, .. } => validate_name(name),
    }
}

/// A batch commit: 1 ..= [`MAX_PUBLISH_BATCH`] members, distinct uploads,
/// each body valid on its own.
fn validate_batch<'a>(
    commits: impl ExactSizeIterator<Item = (UploadId, &'a crate::body::BodySpec)>,
) -> Result<(), FsError> {
    if commits.len() == 0 || commits.len() > MAX_PUBLISH_BATCH {
        return Err(FsError::InvalidArgument(format!(
            "a publish batch has {} commits, allowed 1 ..= {MAX_PUBLISH_BATCH}",
            commits.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (upload, body) in commits {
        if !seen.insert(upload) {
            return Err(FsError::InvalidArgument(format!(
                "{upload} appears twice in one publish batch"
            )));
        }
        validate_body_spec(body).map_err(|e| match e {
            FsError::InvalidArgument(why) => FsError::InvalidArgument(format!("{upload}: {why}")),
            other => other,
        })?;
    }
    Ok(())
}

fn validate_inode(inode: &InodeRef) -> Result<(), FsError> {
    match inode {
        InodeRef::Path(path) => split_path(path).map(drop),
        InodeRef::Id(_) => Ok(()),
    }
}
