//! Object-backed bodies: staging, committing and aborting uploads, lease
//! expiry, the GC queue, and the pure reads the leader's workers poll.
//!
//! The protocol is described in [`crate::body`]. The rules that keep the
//! object store consistent with the metadata, in every command:
//! - a body that leaves the namespace (replaced by a commit, or its file's
//!   last link removed) has its keys, less those its successor keeps,
//!   queued for GC *in the same command*;
//! - an upload that ends without a commit (abort, expiry) has its prefix
//!   queued in the same command;
//! - a key is only accepted under the committing upload's prefix, whose
//!   generation is fresh, or as one of the leading blocks the replaced body
//!   has in the same places (an append keeps them; they are then not
//!   retired), so no key can be live twice or live after GC.
//!
//! Like every mutation, each operation here checks everything first (the
//! commit builds a [`Plan`]) and only then writes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::ops::{touch_change, MODE_MASK};
use super::resolve::{describe_entry, Place};
use super::{Applied, Holt, InodeRecord, Outcome, Owner, Stamp, StoredBody};
use crate::body::{
    BlockRef, Body, BodySpec, GcTarget, GcTask, PublishMode, StagedUpload, UploadId,
    MAX_STAGED_UPLOADS,
};
use crate::command::EntryRef;
use crate::error::FsError;
use crate::fields::FieldSet;
use crate::path::preview;
use crate::types::{Attr, FileType, Generation, InodeId};

/// A staged upload as the engine keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Staged {
    pub(crate) upload: StagedUpload,
    /// `upload.inode` was reserved for this upload (the name was free at
    /// begin) and has no record yet. `false`: it named the existing file.
    /// Needed because an `Upsert` whose file vanished before the commit
    /// must create a file under a *fresh* number: the old file's number
    /// looks just like a reserved one (no record) but must never be reused.
    pub(crate) reserved_inode: bool,
}

/// Where a checked commit lands.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// A new file under the inode number reserved at begin.
    Create(InodeId),
    /// A new file under a number allocated now (see [`Staged::reserved_inode`]).
    CreateFresh,
    /// The existing file; its current body is replaced.
    Existing(InodeId),
}

/// A commit whose every check passed, ready to write.
struct Plan {
    upload: UploadId,
    parent: InodeId,
    name: String,
    target: Target,
    owner: Owner,
    body: Body,
    /// The body's field set; `None`: published unindexed.
    fields: Option<FieldSet>,
}

/// Upper bound of a lease (inclusive), saturating instead of overflowing.
fn lease_end(time_ns: u64, lease_ns: u64) -> u64 {
    time_ns.saturating_add(lease_ns)
}

/// The answer for a commit or renewal after the lease ran out. `NotFound`
/// because the upload is dead: it stays listed only until `ExpireUploads`
/// reclaims its blocks, and the client's only way forward is a new begin.
fn lease_expired(upload: &StagedUpload) -> FsError {
    FsError::NotFound(format!(
        "{}: upload lease expired at {} ns",
        upload.id, upload.lease_expires_ns
    ))
}

/// A by-inode upload reached a name-based branch: handled before it.
fn unreachable_mode<T>() -> Result<T, FsError> {
    Err(FsError::InvalidArgument(
        "a by-inode publish is not resolved by name".into(),
    ))
}

fn describe_target(upload: &StagedUpload) -> String {
    format!(
        "{} in {} ({})",
        preview(&upload.name),
        upload.parent,
        upload.id
    )
}

impl Holt {
    /// `BeginPublish`: checks the mode's predicate against the current
    /// state, reserves an inode number (for a create) and a generation, and
    /// records the upload.
    pub(super) fn begin_publish(
        &mut self,
        stamp: Stamp,
        at: &EntryRef,
        mode: PublishMode,
        lease_ns: u64,
        owner: Owner,
    ) -> Outcome {
        if let PublishMode::Inode { inode, expected } = mode {
            let current = self
                .publishable(inode, || format!("inode {inode}"))?
                .attr
                .generation;
            if current != expected {
                return Err(FsError::StaleGeneration { expected, current });
            }
            // The hint, if it still names the file; else no name.
            let (parent, name) = match self.place(at) {
                Ok(Place::Entry { parent, name }) if self.child(parent, &name) == Some(inode) => {
                    (parent, name)
                }
                _ => (inode, String::new()),
            };
            return self.stage(stamp, parent, name, Some(inode), mode, lease_ns, owner);
        }
        let (parent, name) = match self.place(at)? {
            Place::Root if mode == PublishMode::CreateOnly => {
                return Err(FsError::AlreadyExists("/".into()))
            }
            Place::Root => return Err(FsError::IsADirectory("/".into())),
            Place::Entry { parent, name } => (parent, name),
        };
        // `Some(inode)`: publish onto that existing file; `None`: create.
        let existing = match (mode, self.child(parent, &name)) {
            (PublishMode::CreateOnly, Some(_)) => {
                return Err(FsError::AlreadyExists(describe_entry(at)))
            }
            (PublishMode::CreateOnly | PublishMode::Upsert, None) => None,
            (PublishMode::Replace { .. }, None) => {
                return Err(FsError::NotFound(describe_entry(at)))
            }
            (PublishMode::Replace { expected }, Some(id)) => {
                let current = self.publishable(id, || describe_entry(at))?.attr.generation;
                if current != expected {
                    return Err(FsError::StaleGeneration { expected, current });
                }
                Some(id)
            }
            (PublishMode::Upsert, Some(id)) => {
                self.publishable(id, || describe_entry(at))?;
                Some(id)
            }
            (PublishMode::Inode { .. }, _) => unreachable_mode()?,
        };
        self.stage(stamp, parent, name, existing, mode, lease_ns, owner)
    }

    /// Records a staged upload for `name` in `parent`, onto `existing` (or
    /// a reserved new inode), once every predicate has been checked.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &mut self,
        stamp: Stamp,
        parent: InodeId,
        name: String,
        existing: Option<InodeId>,
        mode: PublishMode,
        lease_ns: u64,
        owner: Owner,
    ) -> Outcome {
        if self.staged.len() >= MAX_STAGED_UPLOADS {
            return Err(FsError::NoSpace(format!(
                "shard {} already has {MAX_STAGED_UPLOADS} staged uploads",
                self.shard
            )));
        }
        let exhausted = || FsError::NoSpace(format!("shard {} has run out of ids", self.shard));
        let next_generation = self.next_generation.checked_add(1).ok_or_else(exhausted)?;
        let next_upload = self.next_upload.checked_add(1).ok_or_else(exhausted)?;
        if existing.is_none() {
            self.ensure_space(1)?;
        }

        let inode = existing.unwrap_or_else(|| {
            let id = InodeId::compose(self.shard, self.next_local);
            self.next_local += 1;
            id
        });
        let upload = StagedUpload {
            id: UploadId(self.next_upload),
            parent,
            name,
            inode,
            generation: Generation(self.next_generation),
            mode,
            file_mode: owner.mode & MODE_MASK,
            uid: owner.uid,
            gid: owner.gid,
            created_ns: stamp.time_ns,
            lease_expires_ns: lease_end(stamp.time_ns, lease_ns),
        };
        self.next_generation = next_generation;
        self.next_upload = next_upload;
        self.staged.insert(
            upload.id,
            Staged {
                upload: upload.clone(),
                reserved_inode: existing.is_none(),
            },
        );
        Ok(Applied::Staged(upload))
    }

    pub(super) fn commit_publish(
        &mut self,
        stamp: Stamp,
        upload: UploadId,
        spec: &BodySpec,
        fields: Option<&FieldSet>,
    ) -> Outcome {
        let mut plan = self.plan_commit(stamp, upload, spec)?;
        plan.fields = fields.cloned();
        if matches!(plan.target, Target::CreateFresh) {
            self.ensure_space(1)?;
        }
        let id = self.write_plan(stamp, plan);
        Ok(Applied::Attr(self.record(id)?.attr.clone()))
    }

    /// All members are planned against the current state before any is
    /// written. Two members may not land on the same name or the same
    /// inode (hard links): each plan's predicate is checked against the
    /// state *before* the batch, which would be wrong for the second one.
    pub(super) fn commit_publish_batch(
        &mut self,
        stamp: Stamp,
        commits: &[(UploadId, &BodySpec, Option<&FieldSet>)],
    ) -> Outcome {
        if commits.is_empty() {
            return Err(FsError::InvalidArgument("empty publish batch".into()));
        }
        let mut plans = Vec::with_capacity(commits.len());
        let mut names = BTreeSet::new();
        let mut inodes = BTreeSet::new();
        let mut fresh = 0u64;
        for (upload, spec, fields) in commits {
            let mut plan = self.plan_commit(stamp, *upload, spec)?;
            plan.fields = fields.cloned();
            if !names.insert((plan.parent, plan.name.clone())) {
                return Err(FsError::InvalidArgument(format!(
                    "two commits of one batch publish at {} in {}",
                    preview(&plan.name),
                    plan.parent
                )));
            }
            match plan.target {
                Target::Existing(id) | Target::Create(id) => {
                    if !inodes.insert(id) {
                        return Err(FsError::InvalidArgument(format!(
                            "two commits of one batch publish onto inode {id}"
                        )));
                    }
                }
                Target::CreateFresh => fresh += 1,
            }
            plans.push(plan);
        }
        self.ensure_space(fresh)?;

        let ids: Vec<InodeId> = plans
            .into_iter()
            .map(|plan| self.write_plan(stamp, plan))
            .collect();
        let attrs = ids
            .into_iter()
            .map(|id| self.record(id).map(|record| record.attr.clone()))
            .collect::<Result<Vec<Attr>, FsError>>()?;
        Ok(Applied::Attrs(attrs))
    }

    /// Checks one commit against the current state. Order: the upload
    /// exists, its lease is live, the keys lie under its prefix, the parent
    /// still exists, and the mode's predicate holds *now* (it was checked at
    /// begin too, but anything may have happened since).
    fn plan_commit(&self, stamp: Stamp, id: UploadId, spec: &BodySpec) -> Result<Plan, FsError> {
        let staged = self
            .staged
            .get(&id)
            .ok_or_else(|| FsError::NotFound(id.to_string()))?;
        let upload = &staged.upload;
        if stamp.time_ns > upload.lease_expires_ns {
            return Err(lease_expired(upload));
        }
        let prefix = upload.key_prefix();
        // Strictly under the prefix: the prefix itself is not a block.
        let own =
            |block: &BlockRef| block.key.starts_with(&prefix) && block.key.len() > prefix.len();
        // Leading blocks may be kept from the body this commit replaces
        // (an append uploads only what changed); every later one must be
        // this upload's.
        let kept = spec.blocks.iter().take_while(|block| !own(block)).count();
        if let Some(block) = spec.blocks[kept..].iter().find(|block| !own(block)) {
            return Err(FsError::InvalidArgument(format!(
                "{id}: block key {} is not under the upload's prefix {prefix:?}",
                preview(&block.key)
            )));
        }
        if kept > 0 {
            self.check_kept(upload, &spec.blocks[..kept])?;
        }
        if let PublishMode::Inode { inode, expected } = upload.mode {
            // By inode: wherever the file is linked now.
            let current = self
                .publishable(inode, || describe_target(upload))?
                .attr
                .generation;
            if current != expected {
                return Err(FsError::StaleGeneration { expected, current });
            }
            return Ok(self.plan(stamp, id, upload, Target::Existing(inode), spec));
        }
        // Inode numbers are never reused, so a parent that still exists is
        // the directory the upload was begun in (possibly moved: the upload
        // follows the directory, not its path).
        if self.directory(upload.parent).is_err() {
            return Err(FsError::NotFound(format!(
                "parent directory {} of {id} no longer exists",
                upload.parent
            )));
        }
        let what = || describe_target(upload);
        let target = match (upload.mode, self.child(upload.parent, &upload.name)) {
            (PublishMode::CreateOnly, Some(_)) => return Err(FsError::AlreadyExists(what())),
            (PublishMode::Replace { .. }, None) => return Err(FsError::NotFound(what())),
            (PublishMode::Replace { expected }, Some(current_id)) => {
                let current = self.publishable(current_id, what)?.attr.generation;
                // A different file at the name is stale even when both
                // generations are 0: the client read another file.
                if current_id != upload.inode || current != expected {
                    return Err(FsError::StaleGeneration { expected, current });
                }
                Target::Existing(current_id)
            }
            // Upsert onto whatever file holds the name now, even one other
            // than the file (or reservation) the upload was begun for.
            (PublishMode::Upsert, Some(current_id)) => {
                self.publishable(current_id, what)?;
                Target::Existing(current_id)
            }
            (PublishMode::CreateOnly | PublishMode::Upsert, None) => {
                if staged.reserved_inode && !self.inodes.contains_key(&upload.inode) {
                    Target::Create(upload.inode)
                } else {
                    Target::CreateFresh
                }
            }
            (PublishMode::Inode { .. }, _) => unreachable_mode()?,
        };
        Ok(self.plan(stamp, id, upload, target, spec))
    }

    /// Blocks a commit keeps from the body it replaces must be exactly that
    /// body's first blocks (same keys, same sizes, same places). The file
    /// is the one the upload would publish onto; the predicate is checked
    /// after this, as for any commit.
    fn check_kept(&self, upload: &StagedUpload, kept: &[BlockRef]) -> Result<(), FsError> {
        let file = match upload.mode {
            PublishMode::Inode { inode, .. } => Some(inode),
            PublishMode::Replace { .. } | PublishMode::Upsert => {
                self.child(upload.parent, &upload.name)
            }
            PublishMode::CreateOnly => None,
        };
        let body = file
            .and_then(|id| self.inodes.get(&id))
            .and_then(|record| record.body());
        // An upload may only append to a body older than itself: a body
        // of generation n holds keys of generations <= n (what the image
        // checks), so keeping blocks of a later generation, published
        // after this upload began, would make a state whose own snapshot
        // no longer decodes (found by the `apply` fuzz target).
        if let Some(newer) = body.filter(|b| !kept.is_empty() && b.generation > upload.generation) {
            return Err(FsError::InvalidArgument(format!(
                "{}: the body it appends to (generation {}) was published after the upload \
                 began (generation {}); begin a new upload",
                upload.id, newer.generation.0, upload.generation.0
            )));
        }
        let current: Vec<BlockRef> = body.map_or_else(Vec::new, |body| body.blocks().collect());
        match kept.iter().zip(&current).position(|(a, b)| a != b) {
            None if kept.len() <= current.len() => Ok(()),
            at => {
                let at = at.unwrap_or(current.len());
                Err(FsError::InvalidArgument(format!(
                    "{}: block {at} ({}) is neither under the upload's prefix nor block {at} \
                     of the body it replaces",
                    upload.id,
                    preview(&kept[at].key)
                )))
            }
        }
    }

    /// The write half's instructions for a checked commit.
    fn plan(
        &self,
        stamp: Stamp,
        id: UploadId,
        upload: &StagedUpload,
        target: Target,
        spec: &BodySpec,
    ) -> Plan {
        Plan {
            upload: id,
            parent: upload.parent,
            name: upload.name.clone(),
            target,
            owner: Owner {
                mode: upload.file_mode,
                uid: upload.uid,
                gid: upload.gid,
            },
            body: Body {
                generation: upload.generation,
                size: spec.size,
                blocks: spec.blocks.clone(),
                sha256: spec.sha256.clone(),
                content_type: spec.content_type.clone(),
                producer: spec.producer.clone(),
                attrs: spec.attrs.clone(),
                published_ns: stamp.time_ns,
            },
            fields: None,
        }
    }

    /// The write half of a commit; returns the file it published onto. The
    /// caller has checked inode space for [`Target::CreateFresh`].
    fn write_plan(&mut self, stamp: Stamp, plan: Plan) -> InodeId {
        self.staged.remove(&plan.upload);
        let id = match plan.target {
            Target::Existing(id) => {
                // Blocks the new body keeps from the old one stay live.
                let kept: BTreeSet<String> =
                    plan.body.blocks.iter().map(|b| b.key.clone()).collect();
                let (size, generation) = (plan.body.size, plan.body.generation);
                let body = StoredBody::new(plan.body, &mut self.labels);
                // The old body with the size and generation it had.
                let mut old = None;
                let mut found = false;
                if let Some(record) = self.record_mut(id) {
                    let attr = &mut record.attr;
                    let was = (attr.size, attr.generation);
                    attr.size = size;
                    attr.generation = generation;
                    attr.mtime_ns = stamp.time_ns;
                    touch_change(attr, stamp);
                    old = record.body.replace(Box::new(body)).map(|old| (old, was));
                    found = true;
                }
                if found {
                    self.set_fields(id, plan.fields);
                }
                let old = old
                    .as_ref()
                    .map(|(body, (size, generation))| body.with(*size, *generation));
                self.retire_blocks(id, old, &kept, stamp);
                return id;
            }
            Target::Create(id) => id,
            Target::CreateFresh => {
                let id = InodeId::compose(self.shard, self.next_local);
                self.next_local += 1;
                id
            }
        };
        let attr = Attr {
            inode: id,
            file_type: FileType::File,
            mode: plan.owner.mode & MODE_MASK,
            uid: plan.owner.uid,
            gid: plan.owner.gid,
            nlink: 1,
            size: plan.body.size,
            generation: plan.body.generation,
            mtime_ns: stamp.time_ns,
            ctime_ns: stamp.time_ns,
            version: stamp.index,
        };
        let record = InodeRecord {
            attr,
            extras: super::Extras::default(),
            body: Some(Box::new(StoredBody::new(plan.body, &mut self.labels))),
            link: None,
        };
        self.inodes.insert(id, record);
        self.put_entry(plan.parent, plan.name, id);
        self.set_fields(id, plan.fields);
        self.touch_dir(plan.parent, stamp);
        id
    }

    /// `AbortPublish`: the client gives up. The metadata never learned
    /// which blocks were uploaded, so the whole prefix is queued.
    pub(super) fn abort_publish(&mut self, stamp: Stamp, id: UploadId) -> Outcome {
        let staged = self
            .staged
            .remove(&id)
            .ok_or_else(|| FsError::NotFound(id.to_string()))?;
        self.enqueue_gc(GcTarget::Prefix(staged.upload.key_prefix()), stamp, None);
        Ok(Applied::Done)
    }

    /// `RenewUpload`: a live lease now ends at `time + lease_ns` (which may
    /// also shorten it). An expired lease is final, exactly as for a
    /// commit: the expiry worker may already be reclaiming the blocks.
    pub(super) fn renew_upload(&mut self, stamp: Stamp, id: UploadId, lease_ns: u64) -> Outcome {
        let staged = self
            .staged
            .get_mut(&id)
            .ok_or_else(|| FsError::NotFound(id.to_string()))?;
        if stamp.time_ns > staged.upload.lease_expires_ns {
            return Err(lease_expired(&staged.upload));
        }
        staged.upload.lease_expires_ns = lease_end(stamp.time_ns, lease_ns);
        Ok(Applied::Staged(staged.upload.clone()))
    }

    /// `ExpireUploads`: drops every upload whose lease ended at or before
    /// `now_ns` (in id order, so GC seqs are deterministic) and queues its
    /// prefix. `now_ns` is the worker's clock reading, carried in the
    /// command so that every replica expires the same set.
    pub(super) fn expire_uploads(&mut self, stamp: Stamp, now_ns: u64) -> Applied {
        for id in self.expired_uploads(now_ns) {
            if let Some(staged) = self.staged.remove(&id) {
                self.enqueue_gc(GcTarget::Prefix(staged.upload.key_prefix()), stamp, None);
            }
        }
        Applied::Done
    }

    /// `GcDone`: the worker deleted these tasks' objects. Unknown seqs are
    /// ignored, so a worker retrying after a lost reply is harmless.
    pub(super) fn gc_done(&mut self, seqs: &[u64]) -> Applied {
        for seq in seqs {
            self.gc.remove(seq);
        }
        Applied::Done
    }

    // ---- helpers -------------------------------------------------------

    /// The record of a file a body may be published onto: a regular file.
    fn publishable(
        &self,
        id: InodeId,
        what: impl FnOnce() -> String,
    ) -> Result<&InodeRecord, FsError> {
        if self.is_foreign(id) {
            // A graft point: a directory, as a listing shows it.
            return Err(FsError::IsADirectory(what()));
        }
        let record = self.record(id)?;
        match record.attr.file_type {
            FileType::File => Ok(record),
            FileType::Directory => Err(FsError::IsADirectory(what())),
            FileType::Symlink => Err(FsError::InvalidArgument(format!(
                "{} is a symlink; bodies are published to regular files only",
                what()
            ))),
        }
    }

    /// A body left the namespace: queue its blocks (if it has any), but
    /// those in `kept` (its successor's).
    pub(super) fn retire_blocks(
        &mut self,
        inode: InodeId,
        body: Option<super::BodyRef<'_>>,
        kept: &BTreeSet<String>,
        stamp: Stamp,
    ) {
        let Some(body) = body else {
            return;
        };
        let keys: Vec<String> = body
            .blocks()
            .map(|block| block.key)
            .filter(|key| !kept.contains(key))
            .collect();
        if keys.is_empty() {
            return;
        }
        let body_of = Some((inode, body.generation));
        self.enqueue_gc(GcTarget::Keys(keys), stamp, body_of);
    }

    fn enqueue_gc(
        &mut self,
        target: GcTarget,
        stamp: Stamp,
        body_of: Option<(InodeId, Generation)>,
    ) {
        let seq = self.next_gc_seq;
        // 2^64 tasks cannot be reached; saturating keeps `apply` panic-free.
        self.next_gc_seq = seq.saturating_add(1);
        self.gc.insert(
            seq,
            GcTask {
                seq,
                target,
                enqueued_ns: stamp.time_ns,
                enqueued_index: stamp.index,
                body_of,
            },
        );
    }

    // ---- pure reads for the leader's workers and fsck -------------------

    /// Uploads whose lease ended at or before `now_ns`, in id order: what
    /// the lease worker proposes `ExpireUploads { now_ns }` for.
    pub fn expired_uploads(&self, now_ns: u64) -> Vec<UploadId> {
        self.staged
            .values()
            .filter(|staged| staged.upload.lease_expires_ns <= now_ns)
            .map(|staged| staged.upload.id)
            .collect()
    }

    /// The seq the next GC task will get: every task queued so far has a
    /// lower one.
    pub fn next_gc_seq(&self) -> u64 {
        self.next_gc_seq
    }

    /// The oldest `limit` GC tasks that no snapshot pin holds, lowest seq
    /// first.
    pub fn gc_tasks(&self, limit: usize) -> Vec<GcTask> {
        self.gc
            .values()
            .filter(|task| !self.pinned(task))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Every queued GC task, lowest seq first, including those a snapshot pin
    /// holds: what fsck counts as accounted for (a held block is neither live
    /// nor an orphan).
    pub fn all_gc_tasks(&self) -> Vec<GcTask> {
        self.gc.values().cloned().collect()
    }

    /// Number of queued GC tasks.
    pub fn gc_len(&self) -> usize {
        self.gc.len()
    }

    /// One staged upload, if it is still staged.
    pub fn staged_upload(&self, id: UploadId) -> Option<&StagedUpload> {
        self.staged.get(&id).map(|staged| &staged.upload)
    }

    /// Every staged upload, in id order.
    pub fn staged_uploads(&self) -> Vec<StagedUpload> {
        self.staged
            .values()
            .map(|staged| staged.upload.clone())
            .collect()
    }

    /// Every block of every live body, by inode: what fsck must find in the
    /// object store (and must never delete).
    pub fn live_blocks(&self) -> Vec<(InodeId, Generation, BlockRef)> {
        self.inodes
            .iter()
            .filter_map(|(id, record)| record.body().map(|body| (id, body)))
            .flat_map(|(id, body)| body.blocks().map(move |block| (id, body.generation, block)))
            .collect()
    }

    /// Key prefixes of staged uploads, in id order: objects under them are
    /// uploads in flight, not orphans.
    pub fn referenced_prefixes(&self) -> Vec<String> {
        self.staged
            .values()
            .map(|staged| staged.upload.key_prefix())
            .collect()
    }
}
