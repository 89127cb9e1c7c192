//! Leader-side work on the object store: checking a commit's blocks exist,
//! reclaiming expired uploads and snapshot pins, garbage-collecting superseded
//! blocks, fsck.
//!
//! The state machine never touches the object store (apply does no I/O).
//! Instead the leader reads what the replicated state asks for (expired
//! uploads, the GC queue), acts on the store, and reports back through
//! ordinary replicated commands (`ExpireUploads`, `ExpireSnapshots`, `GcDone`). Every step is
//! idempotent, so a leader that dies half-way leaves work the next leader
//! redoes, and nothing live is deleted: only keys the queue names, after the
//! reader grace period.
//!
//! The grace period is measured by this node's monotonic clock, never by
//! comparing wall clocks of two nodes (see [`GcMarks`]): a leader whose
//! clock runs ahead of the one that queued a task cannot delete its blocks
//! early.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nokv_blob::{BlobError, BlobStore};
use nokv_holt::{BlockRef, BodySpec, Command, FsError, GcTarget, Op, RequestId};
use tokio_util::sync::CancellationToken;

use crate::archive::PurgeGate;
pub(crate) use crate::clock::now_ns;
use crate::proposer::Proposer;
use crate::state_machine::SharedState;
use crate::typ::Raft;
use crate::verified::VerifiedBlocks;

/// How many object-store requests one pass keeps in flight.
const STORE_CONCURRENCY: usize = 16;
/// Most GC tasks handled in one pass.
const GC_BATCH: usize = 256;

/// Why leader-side object-store work failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("this node has no object store (start it with --blob-store)")]
    NoStore,
    #[error("object store: {0}")]
    Store(#[from] BlobError),
    #[error("proposing {what}: {reason}")]
    Propose { what: &'static str, reason: String },
    #[error("replica state is unavailable")]
    State,
}

/// What one GC pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub uploads_expired: u64,
    pub tasks_done: u64,
    pub objects_deleted: u64,
    pub tasks_waiting: u64,
    pub tasks_failed: u64,
}

/// One problem fsck found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsckProblem {
    pub kind: &'static str,
    pub key: String,
    pub inode: u64,
    pub expected_size: u64,
    pub actual_size: u64,
}

/// What fsck saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    pub live_blocks: u64,
    pub objects_scanned: u64,
    pub problems: Vec<FsckProblem>,
}

/// What this node has seen of its shard's GC queue, by its own monotonic
/// clock: marks `(t, s)` saying "every task with a seq below `s` was
/// applied here, so committed, by instant `t`".
///
/// A task may be deleted once a mark older than the grace period covers
/// it: at least the grace period has then passed in real time since it was
/// queued, whatever any node's wall clock says. (Comparing the queuing
/// leader's stamped wall time with this node's wall clock, as before, let
/// a leader whose clock ran ahead delete blocks a reader still used.)
/// Marks are taken on every replica, leader or not, so a new leader can
/// collect at once what its predecessor queued long enough ago; a node
/// that just started waits one grace period before deleting anything.
#[derive(Debug, Default)]
pub struct GcMarks {
    /// Oldest first; `s` strictly grows along the queue.
    marks: Mutex<VecDeque<(Instant, u64)>>,
}

impl GcMarks {
    /// Records that tasks below `next_seq` have been applied by `now`.
    pub fn observe(&self, now: Instant, next_seq: u64) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if marks.back().is_none_or(|&(_, s)| next_seq > s) {
            marks.push_back((now, next_seq));
        }
    }

    /// Tasks with a seq below the returned one have been applied here for
    /// at least `grace` by `now`. Forgets marks that a newer one covering
    /// at least as much makes useless.
    pub fn cleared_below(&self, now: Instant, grace: Duration) -> u64 {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let old_enough = |t: Instant| now.saturating_duration_since(t) >= grace;
        while marks.len() >= 2 && old_enough(marks[1].0) {
            marks.pop_front();
        }
        match marks.front() {
            Some(&(t, s)) if old_enough(t) => s,
            _ => 0,
        }
    }

    /// How many marks are held (for tests: the memory stays bounded).
    pub fn len(&self) -> usize {
        self.marks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Leader-side object-store work of one replica.
#[derive(Clone)]
pub struct Maintenance {
    pub(crate) raft: Raft,
    pub(crate) state: SharedState,
    pub(crate) proposer: Proposer,
    pub(crate) blob: Option<Arc<dyn BlobStore>>,
    /// How long superseded blocks stay readable after they were dropped.
    pub(crate) grace: Duration,
    /// The archive's recovery point: a GC task queued by a log entry the
    /// archive does not hold yet waits, so that a cluster restored from the
    /// archive never references a block GC already deleted.
    pub(crate) archive_floor: Arc<PurgeGate>,
    /// Blocks already seen in the store (commits skip their HEAD).
    pub(crate) verified: Arc<VerifiedBlocks>,
    /// The GC queue as this node saw it over time (the grace period's clock).
    pub(crate) gc_marks: Arc<GcMarks>,
}

impl Maintenance {
    pub fn store(&self) -> Result<&Arc<dyn BlobStore>, MaintenanceError> {
        self.blob.as_ref().ok_or(MaintenanceError::NoStore)
    }

    /// The bytes of a small body (at most `nokv_fields::MAX_FIELD_BODY_BYTES`),
    /// its blocks read in order, for extracting its fields.
    pub async fn read_small_body(&self, body: &BodySpec) -> Result<Vec<u8>, MaintenanceError> {
        let store = self.store()?;
        let mut bytes =
            Vec::with_capacity(body.size.min(nokv_fields::MAX_FIELD_BODY_BYTES) as usize);
        for block in &body.blocks {
            if (bytes.len() as u64).saturating_add(block.size) > nokv_fields::MAX_FIELD_BODY_BYTES {
                break;
            }
            bytes.extend_from_slice(&store.get(&block.key, None).await?);
        }
        Ok(bytes)
    }

    /// Checks that every block a commit names was uploaded with its size.
    /// Returns the namespace error to answer with when one is missing.
    pub async fn verify_blocks(
        &self,
        specs: &[&BodySpec],
    ) -> Result<Result<(), FsError>, MaintenanceError> {
        let blocks: Vec<_> = specs
            .iter()
            .flat_map(|s| s.blocks.iter().cloned())
            .collect();
        self.check_blocks(blocks).await.map(|r| r.map(|_| ()))
    }

    /// Looks up each of `blocks` not seen before (one HEAD each, in
    /// parallel) and remembers the ones found with their size. Returns how
    /// many were looked up, or the namespace error naming a bad block.
    pub async fn check_blocks(
        &self,
        blocks: Vec<BlockRef>,
    ) -> Result<Result<usize, FsError>, MaintenanceError> {
        let store = self.store()?.clone();
        let blocks: Vec<BlockRef> = blocks
            .into_iter()
            .filter(|b| !self.verified.contains(&b.key, b.size))
            .collect();
        let looked_up = blocks.len();
        let mut checks = futures::stream::iter(blocks.into_iter().map(|b| {
            let store = store.clone();
            async move { (store.head(&b.key).await, b) }
        }))
        .buffer_unordered(STORE_CONCURRENCY);
        while let Some((head, block)) = checks.next().await {
            match head? {
                None => {
                    return Ok(Err(FsError::InvalidArgument(format!(
                        "block {} was never uploaded",
                        block.key
                    ))))
                }
                Some(size) if size != block.size => {
                    return Ok(Err(FsError::InvalidArgument(format!(
                        "block {} has {size} bytes in the store, the commit says {}",
                        block.key, block.size
                    ))))
                }
                Some(_) => self.verified.insert(&block.key, block.size),
            }
        }
        Ok(Ok(looked_up))
    }

    async fn propose(&self, what: &'static str, op: Op) -> Result<(), MaintenanceError> {
        let command = Command {
            request_id: RequestId(rand::random::<u128>()),
            epoch: None,
            time_ns: now_ns(),
            op,
        };
        match self.proposer.propose(command).await {
            Ok((Ok(_), _)) => Ok(()),
            Ok((Err(e), _)) => Err(MaintenanceError::Propose {
                what,
                reason: e.to_string(),
            }),
            Err(e) => Err(MaintenanceError::Propose {
                what,
                reason: e.to_string(),
            }),
        }
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader == Some(m.id)
    }

    /// Notes how far this replica's GC queue has been applied (see
    /// [`GcMarks`]).
    fn observe_gc_queue(&self) -> Result<(), MaintenanceError> {
        let next = {
            let s = self.state.read().map_err(|_| MaintenanceError::State)?;
            s.holt.next_gc_seq()
        };
        self.gc_marks.observe(Instant::now(), next);
        Ok(())
    }

    /// The newest log index that queued a collectable GC task the archive
    /// does not hold yet (None when no task waits for the archive).
    pub fn gc_waits_for_archive(&self) -> Result<Option<u64>, MaintenanceError> {
        if !self.archive_floor.is_enabled() {
            return Ok(None);
        }
        let archived = self.archive_floor.archived_index();
        let s = self.state.read().map_err(|_| MaintenanceError::State)?;
        Ok(s.holt
            .gc_tasks(GC_BATCH)
            .iter()
            .map(|t| t.enqueued_index.0)
            .filter(|i| archived.is_none_or(|a| *i > a))
            .max())
    }

    /// One pass: expire uploads whose lease ended, then delete what the GC
    /// queue holds (past the grace period unless `ignore_grace`).
    pub async fn gc_pass(&self, ignore_grace: bool) -> Result<GcReport, MaintenanceError> {
        let store = self.store()?.clone();
        let mut report = GcReport::default();
        let now = now_ns();
        self.observe_gc_queue()?;
        let (expired, tasks) = {
            let s = self.state.read().map_err(|_| MaintenanceError::State)?;
            (s.holt.expired_uploads(now), s.holt.gc_tasks(GC_BATCH))
        };
        if !expired.is_empty() {
            self.propose("ExpireUploads", Op::ExpireUploads { now_ns: now })
                .await?;
            report.uploads_expired = expired.len() as u64;
        }
        let cleared = self.gc_marks.cleared_below(Instant::now(), self.grace);
        let mut done = Vec::new();
        for task in tasks {
            if !ignore_grace && task.seq >= cleared {
                report.tasks_waiting += 1;
                continue;
            }
            if self.archive_floor.is_enabled()
                && self
                    .archive_floor
                    .archived_index()
                    .is_none_or(|archived| task.enqueued_index.0 > archived)
            {
                report.tasks_waiting += 1;
                continue;
            }
            match delete_target(store.as_ref(), &task.target).await {
                Ok(deleted) => {
                    report.objects_deleted += deleted;
                    done.push(task.seq);
                }
                Err(e) => {
                    tracing::warn!(seq = task.seq, error = %e, "gc task failed; will retry");
                    report.tasks_failed += 1;
                }
            }
        }
        if !done.is_empty() {
            report.tasks_done = done.len() as u64;
            self.propose("GcDone", Op::GcDone { seqs: done }).await?;
        }
        Ok(report)
    }

    /// Releases every snapshot pin whose lease has ended (one
    /// `ExpireSnapshots` command carrying this leader's clock reading);
    /// returns how many. Needs no object store.
    pub async fn expire_snapshots(&self) -> Result<usize, MaintenanceError> {
        let now = now_ns();
        let expired = {
            let s = self.state.read().map_err(|_| MaintenanceError::State)?;
            s.holt.expired_snapshots(now).len()
        };
        if expired > 0 {
            self.propose("ExpireSnapshots", Op::ExpireSnapshots { now_ns: now })
                .await?;
        }
        Ok(expired)
    }

    /// Every `interval` while this node leads: expires snapshot pins, then
    /// runs `gc_pass` (when there is an object store).
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // Every replica keeps the grace period's clock, so that a new
            // leader need not start it over.
            if let Err(e) = self.observe_gc_queue() {
                tracing::warn!(error = %e, "reading the GC queue failed");
            }
            if !self.is_leader() {
                continue;
            }
            match self.expire_snapshots().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(released = n, "expired snapshot pins"),
                Err(e) => tracing::warn!(error = %e, "expiring snapshot pins failed"),
            }
            if self.blob.is_none() {
                continue;
            }
            match self.gc_pass(false).await {
                Ok(r) if r != GcReport::default() => tracing::info!(?r, "gc pass"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "gc pass failed"),
            }
        }
    }

    /// Checks every live block and looks for objects under this shard's block prefix
    /// that nothing references.
    pub async fn fsck(&self) -> Result<FsckReport, MaintenanceError> {
        let store = self.store()?.clone();
        // Only this shard's blocks: the other shards' in the same bucket are theirs to check.
        let (live, staged_prefixes, queued, own) = {
            let s = self.state.read().map_err(|_| MaintenanceError::State)?;
            // Held by a snapshot pin or not: queued blocks are accounted for.
            let queued: Vec<GcTarget> = s
                .holt
                .all_gc_tasks()
                .into_iter()
                .map(|t| t.target)
                .collect();
            let own = nokv_holt::shard_block_prefix(s.holt.shard());
            (
                s.holt.live_blocks(),
                s.holt.referenced_prefixes(),
                queued,
                own,
            )
        };
        let mut report = FsckReport {
            live_blocks: live.len() as u64,
            ..Default::default()
        };
        let mut checks = futures::stream::iter(live.iter().cloned().map(|(inode, _, block)| {
            let store = store.clone();
            async move { (store.head(&block.key).await, inode, block) }
        }))
        .buffer_unordered(STORE_CONCURRENCY);
        while let Some((head, inode, block)) = checks.next().await {
            match head? {
                None => report.problems.push(FsckProblem {
                    kind: "MISSING_BLOCK",
                    key: block.key,
                    inode: inode.0,
                    expected_size: block.size,
                    actual_size: 0,
                }),
                Some(size) if size != block.size => report.problems.push(FsckProblem {
                    kind: "SIZE_MISMATCH",
                    key: block.key,
                    inode: inode.0,
                    expected_size: block.size,
                    actual_size: size,
                }),
                Some(_) => {}
            }
        }
        let live_keys: BTreeSet<&str> = live.iter().map(|(_, _, b)| b.key.as_str()).collect();
        let mut queued_keys = BTreeSet::new();
        let mut queued_prefixes = Vec::new();
        for target in &queued {
            match target {
                GcTarget::Keys(keys) => queued_keys.extend(keys.iter().map(String::as_str)),
                GcTarget::Prefix(p) => queued_prefixes.push(p.as_str()),
            }
        }
        for object in store.list(&own).await? {
            report.objects_scanned += 1;
            let key = object.key.as_str();
            let accounted = live_keys.contains(key)
                || queued_keys.contains(key)
                || queued_prefixes.iter().any(|p| key.starts_with(p))
                || staged_prefixes.iter().any(|p| key.starts_with(p.as_str()));
            if !accounted {
                report.problems.push(FsckProblem {
                    kind: "ORPHAN_OBJECT",
                    key: object.key,
                    inode: 0,
                    expected_size: 0,
                    actual_size: object.size,
                });
            }
        }
        Ok(report)
    }
}

/// Deletes what `target` names; returns how many objects were deleted.
async fn delete_target(store: &dyn BlobStore, target: &GcTarget) -> Result<u64, BlobError> {
    let keys: Vec<String> = match target {
        GcTarget::Keys(keys) => keys.clone(),
        GcTarget::Prefix(prefix) => store
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect(),
    };
    let count = keys.len() as u64;
    let mut deletions = futures::stream::iter(
        keys.into_iter()
            .map(|k| async move { store.delete(&k).await }),
    )
    .buffer_unordered(STORE_CONCURRENCY);
    while let Some(result) = deletions.next().await {
        result?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::GcMarks;

    #[test]
    fn the_grace_period_runs_on_this_nodes_clock_from_when_it_saw_a_task() {
        let grace = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let marks = GcMarks::default();
        // Nothing seen yet: nothing may go.
        assert_eq!(marks.cleared_below(at(100), grace), 0);
        // Tasks 1..5 are in the queue at t0, 5..9 from t=4 on.
        marks.observe(at(0), 5);
        marks.observe(at(2), 5); // no news: the older mark stays the one
        marks.observe(at(4), 9);
        assert_eq!(marks.cleared_below(at(9), grace), 0, "inside the grace");
        assert_eq!(marks.cleared_below(at(10), grace), 5, "1..5 are old enough");
        assert_eq!(marks.cleared_below(at(13), grace), 5);
        assert_eq!(marks.cleared_below(at(14), grace), 9, "and then 5..9");
        assert_eq!(marks.len(), 1, "a covered mark is dropped");
        // A task queued later is covered only once a later mark is old.
        marks.observe(at(20), 12);
        assert_eq!(marks.cleared_below(at(29), grace), 9);
        assert_eq!(marks.cleared_below(at(30), grace), 12);
    }

    #[test]
    fn marks_stay_few_however_long_the_node_runs() {
        let grace = Duration::from_secs(10);
        let t0 = Instant::now();
        let marks = GcMarks::default();
        for second in 0..10_000u64 {
            let now = t0 + Duration::from_secs(second);
            marks.observe(now, second + 1);
            assert_eq!(
                marks.cleared_below(now, grace),
                (second + 1).saturating_sub(10)
            );
        }
        assert!(marks.len() <= 11, "{} marks held", marks.len());
    }
}
