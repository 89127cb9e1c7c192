//! Snapshot pins: create, renew, remove, expire, and reads at a pin.
//!
//! Creating a pin clones the namespace (O(1): persistent maps). Releasing
//! one restarts the grace period of every GC task it was holding, so a
//! reader that started on the pinned body can finish.

use super::{Applied, Holt, Namespace, Outcome, Stamp};
use crate::body::{GcTarget, GcTask};
use crate::command::InodeRef;
use crate::error::FsError;
use crate::path::split_path;
use crate::query::{Query, QueryResult};
use crate::snapshot::{SnapshotId, SnapshotInfo, MAX_SNAPSHOTS};
use crate::types::FileType;

/// One live pin: what it is, and the namespace as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pin {
    pub(crate) info: SnapshotInfo,
    pub(crate) ns: Namespace,
}

fn unknown(id: SnapshotId) -> FsError {
    FsError::NotFound(format!("{id} (never created, removed or expired)"))
}

fn expired(id: SnapshotId) -> FsError {
    FsError::NotFound(format!("{id}: its lease has expired"))
}

/// `path` as its components joined again: `/a//b/` becomes `/a/b`.
fn normalized(path: &str) -> Result<String, FsError> {
    let parts = split_path(path)?;
    Ok(format!("/{}", parts.join("/")))
}

impl Holt {
    /// `CreateSnapshot`: pins the subtree at `path` as it is now.
    ///
    /// Snapshots are per shard: a subtree that holds a graft point would
    /// span another shard, and is refused with `CrossDevice` naming the
    /// shard and the graft point (a path through or at a graft point is
    /// `CrossShard`: that subtree is the child shard's to pin).
    pub(super) fn create_snapshot(&mut self, stamp: Stamp, path: &str, lease_ns: u64) -> Outcome {
        let root = self.inode(&InodeRef::Path(path.to_string()))?;
        if let Some((shard, graft)) = self.graft_within(root) {
            return Err(FsError::CrossDevice(format!(
                "a snapshot of {path} would span {shard} at {}; snapshots are per shard",
                graft.path
            )));
        }
        let live = self
            .snapshots
            .values()
            .filter(|pin| pin.info.lease_expires_ns > stamp.time_ns)
            .count();
        if live >= MAX_SNAPSHOTS {
            return Err(FsError::NoSpace(format!(
                "shard {} holds {live} live snapshots, the most it may: remove one \
                 (`nokv snapshot rm`) or wait for a lease to end",
                self.shard
            )));
        }
        let id = SnapshotId(self.next_snapshot);
        // 2^64 snapshots cannot be reached; saturating keeps `apply` panic-free.
        self.next_snapshot = self.next_snapshot.saturating_add(1);
        let info = SnapshotInfo {
            id,
            path: normalized(path)?,
            root,
            pinned_index: stamp.index,
            created_ns: stamp.time_ns,
            lease_expires_ns: stamp.time_ns.saturating_add(lease_ns),
        };
        let pin = Pin {
            info: info.clone(),
            ns: self.ns.clone(),
        };
        self.snapshots.insert(id, pin);
        Ok(Applied::Snapshot(info))
    }

    /// `RenewSnapshot`: a live pin's lease now ends `lease_ns` from now. A
    /// lease that already ran out is final, as for uploads.
    pub(super) fn renew_snapshot(
        &mut self,
        stamp: Stamp,
        id: SnapshotId,
        lease_ns: u64,
    ) -> Outcome {
        let pin = self.snapshots.get_mut(&id).ok_or_else(|| unknown(id))?;
        if pin.info.lease_expires_ns < stamp.time_ns {
            return Err(expired(id));
        }
        pin.info.lease_expires_ns = stamp.time_ns.saturating_add(lease_ns);
        Ok(Applied::Snapshot(pin.info.clone()))
    }

    /// `RemoveSnapshot`.
    pub(super) fn remove_snapshot(&mut self, stamp: Stamp, id: SnapshotId) -> Outcome {
        if !self.snapshots.contains_key(&id) {
            return Err(unknown(id));
        }
        self.release_pin(stamp, id);
        Ok(Applied::Done)
    }

    /// `ExpireSnapshots`: releases every pin whose lease ended at or before
    /// `now_ns`, in id order.
    pub(super) fn expire_snapshots(&mut self, stamp: Stamp, now_ns: u64) -> Applied {
        for id in self.expired_snapshots(now_ns) {
            self.release_pin(stamp, id);
        }
        Applied::Done
    }

    /// Drops a pin. GC tasks it held start their grace period again now:
    /// they move to the end of the queue with new seqs (the GC worker
    /// measures the grace period from when it first saw a seq, by its own
    /// clock), and count as queued by this command, so the archive must
    /// hold the release before they may go (a cluster restored to a point
    /// before the release still has the pin, and needs its blocks).
    fn release_pin(&mut self, stamp: Stamp, id: SnapshotId) {
        let Some(pin) = self.snapshots.remove(&id) else {
            return;
        };
        let held: Vec<u64> = self
            .gc
            .values()
            .filter(|task| holds(&pin, task))
            .map(|task| task.seq)
            .collect();
        for seq in held {
            let Some(mut task) = self.gc.remove(&seq) else {
                continue;
            };
            let requeued = self.next_gc_seq;
            // 2^64 tasks cannot be reached; saturating keeps `apply` panic-free.
            self.next_gc_seq = requeued.saturating_add(1);
            task.seq = requeued;
            task.enqueued_ns = task.enqueued_ns.max(stamp.time_ns);
            task.enqueued_index = task.enqueued_index.max(stamp.index);
            self.gc.insert(requeued, task);
        }
    }

    /// Whether any live pin still shows the body `task` would delete.
    pub(crate) fn pinned(&self, task: &GcTask) -> bool {
        self.snapshots.values().any(|pin| holds(pin, task))
    }

    // ---- reads -----------------------------------------------------------

    /// Pins whose lease ended at or before `now_ns`, in id order: what the
    /// lease worker proposes `ExpireSnapshots { now_ns }` for.
    pub fn expired_snapshots(&self, now_ns: u64) -> Vec<SnapshotId> {
        self.snapshots
            .values()
            .filter(|pin| pin.info.lease_expires_ns <= now_ns)
            .map(|pin| pin.info.id)
            .collect()
    }

    /// Every live pin, in id order.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.snapshots
            .values()
            .map(|pin| pin.info.clone())
            .collect()
    }

    /// Answers `query` at snapshot `id`, as of leader-side time `now_ns`
    /// (`None`: whatever the replicated state says is live).
    pub(crate) fn query_snapshot(
        &self,
        id: SnapshotId,
        query: &Query,
        now_ns: Option<u64>,
    ) -> Result<QueryResult, FsError> {
        let pin = self.snapshots.get(&id).ok_or_else(|| unknown(id))?;
        if now_ns.is_some_and(|now| pin.info.lease_expires_ns <= now) {
            return Err(expired(id));
        }
        match query {
            Query::ListUploads
            | Query::ListSnapshots
            | Query::AtSnapshot { .. }
            | Query::Grafts
            | Query::RetiredBody { .. } => {
                return Err(FsError::InvalidArgument(
                    "only namespace reads (stat, lookup, list, read) can be made at a snapshot"
                        .into(),
                ))
            }
            Query::Lookup { parent, .. } => within_by_id(pin, *parent)?,
            Query::GetAttr { inode }
            | Query::ReadDir { dir: inode, .. }
            | Query::ReadDirBodies { dir: inode, .. }
            | Query::ReadLink { inode }
            | Query::GetXattr { inode, .. }
            | Query::ListXattr { inode }
            | Query::ReadBody { inode }
            | Query::FindIndexed { dir: inode, .. }
            | Query::IndexedFields { dir: inode } => within(pin, inode)?,
        }
        pin.ns.query(query)
    }
}

/// Whether `pin` shows the body `task` would delete, or any body of that
/// file that names one of its keys: an append keeps its predecessor's
/// blocks, so a pinned earlier (or later) generation may still need some.
fn holds(pin: &Pin, task: &GcTask) -> bool {
    let Some((inode, generation)) = task.body_of else {
        return false;
    };
    let Some(body) = pin.ns.inodes.get(&inode).and_then(|record| record.body()) else {
        return false;
    };
    if body.generation == generation {
        return true;
    }
    let GcTarget::Keys(keys) = &task.target else {
        return false;
    };
    let pinned: std::collections::HashSet<String> = body.blocks().map(|block| block.key).collect();
    keys.iter().any(|key| pinned.contains(key))
}

/// A reference must stay inside the pinned subtree: a path must start with
/// the snapshot's path; a directory given by id must lie below its root.
/// (A file given by id is accepted: files record no parent.)
fn within(pin: &Pin, inode: &InodeRef) -> Result<(), FsError> {
    match inode {
        InodeRef::Path(path) => {
            let parts = split_path(path)?;
            let root = split_path(&pin.info.path)?;
            if parts.len() < root.len() || parts[..root.len()] != root[..] {
                return Err(FsError::InvalidArgument(format!(
                    "{path} is outside {}, which pins {}",
                    pin.info.id, pin.info.path
                )));
            }
            Ok(())
        }
        InodeRef::Id(id) => within_by_id(pin, *id),
    }
}

fn within_by_id(pin: &Pin, id: crate::types::InodeId) -> Result<(), FsError> {
    let record = pin.ns.record(id)?;
    if record.attr.file_type == FileType::Directory && !pin.ns.is_within(id, pin.info.root) {
        return Err(FsError::InvalidArgument(format!(
            "directory {id} is outside {}, which pins {}",
            pin.info.id, pin.info.path
        )));
    }
    Ok(())
}
