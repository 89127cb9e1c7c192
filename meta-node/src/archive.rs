//! Disaster recovery through the object store: the leader ships Holt
//! snapshots and committed log segments to the same store that holds file
//! bodies, local log purges wait for them, and [`restore`] rebuilds a
//! replica's data directory from the store alone.
//!
//! # What it owns
//!
//! - The archive layout under the store's prefix (per shard `S`):
//!   - `meta/shard-S/snapshots/{last_index:020}-{term}.snap`: the exact bytes of
//!     a snapshot file (`DATA_DIR/snapshot/current`, see `state_machine.rs`).
//!   - `meta/shard-S/log/{first:020}-{last:020}.seg`: a log segment, committed
//!     entries `first..=last` ([`encode_segment`]).
//! - [`Archiver`]: the background task. On the leader it uploads every new
//!   snapshot and, every `interval` or as soon as `segment_entries` entries
//!   are pending, the applied (hence committed) entries after the last
//!   archived one. On a follower it only refreshes the purge gate from a
//!   listing, now and then.
//! - [`ArchiveGatedLogStore`] and [`PurgeGate`]: the sled log store with
//!   purges held back to what the store can restore.
//! - [`ArchiveHandle::backup`] (the `Backup` RPC) and [`restore`].
//!
//! # Invariants
//!
//! - Only committed entries are archived: never past the leader's
//!   `last_applied`. Committed entries are the same on every replica, so two
//!   leaders that race (a deposed one still uploading) write identical bytes
//!   for an index; overlapping segments are harmless.
//! - Keys are immutable (`put_new`); an existing key of the same size counts
//!   as already archived (the writer's own lost response, or a racing leader).
//! - `archived_index`: every committed entry at or below it can be restored
//!   from the store (it is covered by an uploaded snapshot or by segments
//!   chained after one). The local log is never purged past it, so a new
//!   leader always finds, locally, the entries the store still lacks.
//! - A segment records the log id just before its first entry (`prev`), and
//!   restore only chains a segment whose `prev` (or overlapping entry) is the
//!   log id it already has: Raft's log-matching check, so entries of another
//!   history are never replayed.
//! - The store keeps the newest [`SNAPSHOTS_TO_KEEP`] snapshots and the
//!   segments after the oldest of them; older objects are deleted.
//!
//! # Failure modes
//!
//! - Store unreachable: archiving lags, purges are held back (the local log
//!   grows), `nokv_archive_errors_total` counts failed passes, `Backup` times
//!   out. Nothing is lost; the next pass resumes where the last one stopped.
//! - Leadership change: the new leader rebuilds its position from a listing.
//!   If it purged entries the store lacks (possible only below its own
//!   snapshot), it uploads that snapshot first and skips the purged range.
//! - Restore: a corrupt snapshot falls back to the next older one; a missing
//!   segment ends the restored log there (the recovery point); a corrupt
//!   segment that no other segment replaces is an error (see [`restore`]).

use std::cmp::Reverse;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nokv_blob::{put_new_or_same_size, BlobError, BlobStore};
use nokv_holt::{Holt, ShardId};
use nokv_raft_log::schema::{decode_value, encode_value};
use nokv_raft_log::SledLogStore;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{EntryPayload, OptionalSend, RaftMetrics, ServerState, Vote};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::state_machine::{
    decode_snapshot_file, write_snapshot_bytes, SnapshotFileError, SnapshotHandle,
};
use crate::typ::{LogId, NodeId, Raft, StorageError, TypeConfig};

/// One Raft log entry of a shard.
pub type Entry = openraft::Entry<TypeConfig>;

/// Snapshots kept in the store; older ones, and segments they cover, are deleted.
pub const SNAPSHOTS_TO_KEEP: usize = 3;
/// Default pause between archive passes (`--archive-interval`).
pub const DEFAULT_ARCHIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Default most entries per segment (`--segment-entries`); also how many
/// pending entries start a pass before the interval ends.
pub const DEFAULT_SEGMENT_ENTRIES: u64 = 1_000;
/// A segment stops growing once its entries take this many bytes.
const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Followers refresh their purge gate from a listing every this many ticks.
const FOLLOWER_REFRESH_TICKS: u64 = 5;
/// Longest final pass of a leader that shuts down cleanly.
const FINAL_PASS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a final pass waits for the applied index to reach the log's end.
const FINAL_APPLY_WAIT: Duration = Duration::from_secs(1);
/// Entries per sled batch when restore writes the log.
const RESTORE_APPEND_CHUNK: usize = 512;

/// Magic number at the start of every segment object.
pub const SEGMENT_MAGIC: &[u8; 8] = b"NOKVSEG1";
/// Format version of segment objects.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Magic, version, crc32 of the body, body length.
const SEGMENT_HEADER_LEN: usize = 8 + 4 + 4 + 8;

/// Why archiving, a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("object store: {0}")]
    Store(#[from] BlobError),
    #[error("local raft log: {0}")]
    Log(String),
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotFileError),
    #[error("segment {key} is corrupt: {reason}")]
    CorruptSegment { key: String, reason: String },
    #[error("encoding a segment: {0}")]
    Encode(String),
    #[error(
        "log entries {from}..={to} were purged locally but are in no archived segment or \
         uploaded snapshot"
    )]
    Hole { from: u64, to: u64 },
    #[error("{path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the object store holds no snapshot and no log segment of shard {shard}")]
    NothingToRestore { shard: u16 },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("this node is not the leader")]
    NotLeader,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("raft: {0}")]
    Raft(String),
}

impl ArchiveError {
    /// A stable code for logs, tests and tools.
    pub fn code(&self) -> &'static str {
        match self {
            ArchiveError::Store(_) => "ARCHIVE_STORE",
            ArchiveError::Log(_) => "ARCHIVE_LOCAL_LOG",
            ArchiveError::Snapshot(_) => "ARCHIVE_SNAPSHOT",
            ArchiveError::CorruptSegment { .. } => "ARCHIVE_CORRUPT_SEGMENT",
            ArchiveError::Encode(_) => "ARCHIVE_ENCODE",
            ArchiveError::Hole { .. } => "ARCHIVE_HOLE",
            ArchiveError::DataDir { .. } => "ARCHIVE_DATA_DIR",
            ArchiveError::Io { .. } => "ARCHIVE_IO",
            ArchiveError::NothingToRestore { .. } => "ARCHIVE_NOTHING_TO_RESTORE",
            ArchiveError::InvalidArgument(_) => "ARCHIVE_INVALID_ARGUMENT",
            ArchiveError::NotLeader => "NOT_LEADER",
            ArchiveError::Timeout(_) => "ARCHIVE_TIMEOUT",
            ArchiveError::Raft(_) => "ARCHIVE_RAFT",
        }
    }
}

fn log_error(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Log(e.to_string())
}

// ----- keys -----------------------------------------------------------------

/// `meta/shard-S/snapshots/`
pub fn snapshots_prefix(shard: ShardId) -> String {
    format!("meta/shard-{}/snapshots/", shard.0)
}

/// `meta/shard-S/log/`
pub fn log_prefix(shard: ShardId) -> String {
    format!("meta/shard-{}/log/", shard.0)
}

/// Key of the snapshot whose last log id is `last`.
pub fn snapshot_key(shard: ShardId, last: &LogId) -> String {
    format!(
        "{}{:020}-{}.snap",
        snapshots_prefix(shard),
        last.index,
        last.leader_id.term
    )
}

/// Key of the segment holding entries `first..=last`.
pub fn segment_key(shard: ShardId, first: u64, last: u64) -> String {
    format!("{}{first:020}-{last:020}.seg", log_prefix(shard))
}

/// A snapshot object found by a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SnapshotObject {
    key: String,
    index: u64,
    term: u64,
}

/// A segment object found by a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SegmentObject {
    key: String,
    first: u64,
    last: u64,
}

/// Splits `NAME.SUFFIX` (after `prefix`) into two numbers around the first `-`.
fn parse_pair(prefix: &str, key: &str, suffix: &str) -> Option<(u64, u64)> {
    let name = key.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let (a, b) = name.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// What the store holds for one shard, sorted: snapshots by index, segments
/// by range. Keys that do not parse are ignored (and logged).
#[derive(Debug, Default)]
struct Listing {
    snapshots: Vec<SnapshotObject>,
    segments: Vec<SegmentObject>,
}

impl Listing {
    async fn of(store: &dyn BlobStore, shard: ShardId) -> Result<Listing, BlobError> {
        let snap_prefix = snapshots_prefix(shard);
        let mut snapshots = Vec::new();
        for object in store.list(&snap_prefix).await? {
            match parse_pair(&snap_prefix, &object.key, ".snap") {
                Some((index, term)) => snapshots.push(SnapshotObject {
                    key: object.key,
                    index,
                    term,
                }),
                None => tracing::warn!(key = %object.key, "ignoring an unexpected snapshot key"),
            }
        }
        let seg_prefix = log_prefix(shard);
        let mut segments = Vec::new();
        for object in store.list(&seg_prefix).await? {
            match parse_pair(&seg_prefix, &object.key, ".seg") {
                Some((first, last)) if first <= last => segments.push(SegmentObject {
                    key: object.key,
                    first,
                    last,
                }),
                _ => tracing::warn!(key = %object.key, "ignoring an unexpected segment key"),
            }
        }
        snapshots.sort_by_key(|s| (s.index, s.term));
        segments.sort_by_key(|s| (s.first, s.last));
        Ok(Listing {
            snapshots,
            segments,
        })
    }

    fn newest_snapshot(&self) -> Option<&SnapshotObject> {
        self.snapshots.last()
    }

    fn max_segment_last(&self) -> Option<u64> {
        self.segments.iter().map(|s| s.last).max()
    }

    /// The highest index the store covers, from keys alone.
    fn recoverable_index(&self) -> Option<u64> {
        self.max_segment_last()
            .max(self.newest_snapshot().map(|s| s.index))
    }
}

// ----- segment codec --------------------------------------------------------

/// A decoded log segment: contiguous committed entries and the log id of
/// the entry just before the first one (`None` only when the first is 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub prev_log_id: Option<LogId>,
    pub entries: Vec<Entry>,
}

#[derive(Serialize)]
struct SegmentBodyRef<'a> {
    prev_log_id: Option<LogId>,
    entries: &'a [Entry],
}

#[derive(Deserialize)]
struct SegmentBody {
    prev_log_id: Option<LogId>,
    entries: Vec<Entry>,
}

/// Checks that `entries` are non-empty, contiguous, with non-decreasing
/// terms, and follow `prev`.
fn check_run(prev: Option<&LogId>, entries: &[Entry]) -> Result<(), String> {
    let first = entries.first().ok_or("no entries")?;
    match prev {
        None if first.log_id.index != 0 => {
            return Err(format!(
                "no previous log id but the first entry is {}",
                first.log_id.index
            ))
        }
        Some(p) if p.index.checked_add(1) != Some(first.log_id.index) => {
            return Err(format!(
                "previous log id {p} does not precede the first entry {}",
                first.log_id.index
            ))
        }
        Some(p) if p.leader_id.term > first.log_id.leader_id.term => {
            return Err(format!(
                "previous log id {p} has a higher term than entry {}",
                first.log_id
            ))
        }
        _ => {}
    }
    for pair in entries.windows(2) {
        let (a, b) = (&pair[0].log_id, &pair[1].log_id);
        if a.index.checked_add(1) != Some(b.index) {
            return Err(format!("entries {a} and {b} are not contiguous"));
        }
        if a.leader_id.term > b.leader_id.term {
            return Err(format!("entry {b} has a lower term than {a}"));
        }
    }
    Ok(())
}

/// Encodes a segment: magic `NOKVSEG1`, format version (u32 LE), crc32 of the
/// body (u32 LE), body length (u64 LE), then the body: bincode (the raft-log
/// value codec) of the previous log id and the entries.
pub fn encode_segment(
    prev_log_id: Option<LogId>,
    entries: &[Entry],
) -> Result<Vec<u8>, ArchiveError> {
    check_run(prev_log_id.as_ref(), entries).map_err(ArchiveError::Encode)?;
    let body = encode_value(&SegmentBodyRef {
        prev_log_id,
        entries,
    })
    .map_err(|e| ArchiveError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(SEGMENT_HEADER_LEN + body.len());
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes and checks a segment. Any input, however corrupt, gives an error
/// saying why, never a panic (the body's length bounds every allocation).
pub fn decode_segment(bytes: &[u8]) -> Result<Segment, String> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err("shorter than its header".into());
    }
    let (header, body) = bytes.split_at(SEGMENT_HEADER_LEN);
    if &header[0..8] != SEGMENT_MAGIC {
        return Err("bad magic".into());
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let version = word(8);
    if version != SEGMENT_FORMAT_VERSION {
        return Err(format!("unsupported format version {version}"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    if u64::from_le_bytes(len) != body.len() as u64 {
        return Err("length does not match".into());
    }
    if crc32fast::hash(body) != word(12) {
        return Err("checksum mismatch".into());
    }
    let decoded: SegmentBody = decode_value(body).map_err(|e| format!("body: {e}"))?;
    check_run(decoded.prev_log_id.as_ref(), &decoded.entries)?;
    Ok(Segment {
        prev_log_id: decoded.prev_log_id,
        entries: decoded.entries,
    })
}

// ----- purge gate -----------------------------------------------------------

/// How far local log purges may go: never past what the object store can
/// restore. Shared by the [`ArchiveGatedLogStore`] (which asks) and the
/// [`Archiver`] (which raises the limit).
#[derive(Debug)]
pub struct PurgeGate {
    enabled: bool,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    archived: Option<u64>,
    /// The furthest purge openraft asked for; caught up with later.
    requested: Option<LogId>,
}

/// What a purge call may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgePlan {
    /// Purge up to this log id.
    Purge(LogId),
    /// openraft wants the log purged up to `wanted`, but the archive only
    /// holds entries up to `archived`: purge no further than that.
    Gated {
        wanted: LogId,
        archived: Option<u64>,
    },
}

impl PurgeGate {
    /// A gate that lets every purge through (no object store).
    pub fn disabled() -> PurgeGate {
        PurgeGate {
            enabled: false,
            state: Mutex::default(),
        }
    }

    /// A gate that holds purges back until the archiver raises its limit.
    pub fn enabled() -> PurgeGate {
        PurgeGate {
            enabled: true,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is two plain values: a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raises the limit: entries up to `index` are restorable from the store.
    /// Never lowers it.
    pub fn set_archived_index(&self, index: Option<u64>) {
        let mut s = self.lock();
        if index > s.archived {
            s.archived = index;
        }
    }

    /// Whether purges (and GC, see `maintenance.rs`) wait for the archive.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The current limit.
    pub fn archived_index(&self) -> Option<u64> {
        self.lock().archived
    }

    /// Records a purge request up to `requested` and says how far to purge now.
    pub fn plan(&self, requested: LogId) -> PurgePlan {
        let mut s = self.lock();
        if s.requested.is_none_or(|r| r < requested) {
            s.requested = Some(requested);
        }
        let wanted = s.requested.unwrap_or(requested);
        match s.archived {
            _ if !self.enabled => PurgePlan::Purge(wanted),
            Some(archived) if archived >= wanted.index => PurgePlan::Purge(wanted),
            archived => PurgePlan::Gated { wanted, archived },
        }
    }
}

/// The sled log store with purges gated on the archive: `purge(upto)` removes
/// entries only up to `min(upto, archived_index)`, and remembers `upto` so the
/// next purge (openraft purges again after each snapshot) catches up. It never
/// waits for the store and never fails because archiving lags. Everything
/// else is delegated unchanged.
///
/// One exception keeps the log contiguous: when the entry at `upto` is not in
/// the local log, openraft has installed a snapshot past the log's end (a
/// follower far behind, or a restart after such an install) and appends after
/// it next. Keeping a prefix would leave a hole below the new entries, so the
/// purge goes through. Nothing the archive needs is lost: a replica that
/// later leads uploads its snapshot (which covers that range) first.
pub struct ArchiveGatedLogStore {
    inner: SledLogStore<TypeConfig>,
    gate: Arc<PurgeGate>,
    /// Time of each durable append (encode, write, fsync).
    append_seconds: prometheus::Histogram,
}

impl ArchiveGatedLogStore {
    pub fn new(
        inner: SledLogStore<TypeConfig>,
        gate: Arc<PurgeGate>,
        append_seconds: prometheus::Histogram,
    ) -> Self {
        ArchiveGatedLogStore {
            inner,
            gate,
            append_seconds,
        }
    }

    pub fn gate(&self) -> &Arc<PurgeGate> {
        &self.gate
    }
}

impl RaftLogReader<TypeConfig> for ArchiveGatedLogStore {
    async fn try_get_log_entries<RB>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError>
    where
        RB: std::ops::RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend,
    {
        self.inner.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for ArchiveGatedLogStore {
    type LogReader = SledLogStore<TypeConfig>;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.inner.get_log_reader().await
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.inner.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.inner.read_vote().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.inner.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.inner.read_committed().await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let _timer = self.append_seconds.start_timer();
        self.inner.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.inner.truncate(log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let (wanted, archived) = match self.gate.plan(log_id) {
            PurgePlan::Purge(target) => return self.inner.purge(target).await,
            PurgePlan::Gated { wanted, archived } => (wanted, archived),
        };
        let at_wanted = self
            .inner
            .try_get_log_entries(wanted.index..=wanted.index)
            .await?;
        if at_wanted.is_empty() {
            // Past the log's end (or purged already): see the type's docs.
            return self.inner.purge(wanted).await;
        }
        let Some(archived) = archived else {
            tracing::debug!(requested = %wanted, "purge held back: nothing archived yet");
            return Ok(());
        };
        let at_archived = self.inner.try_get_log_entries(archived..=archived).await?;
        match at_archived.first() {
            Some(entry) => {
                tracing::debug!(requested = %wanted, archived, "purge held back to the archived index");
                self.inner.purge(entry.log_id).await
            }
            // Purged that far already: nothing to do.
            None => Ok(()),
        }
    }
}

// ----- the archiver ---------------------------------------------------------

/// How the archiver paces itself.
#[derive(Clone, Debug)]
pub struct ArchiveConfig {
    pub shard: ShardId,
    /// Longest pause between passes (pending entries are uploaded at least this often).
    pub interval: Duration,
    /// Most entries per segment; this many pending entries start a pass at once.
    pub segment_entries: u64,
}

/// What the store holds, as this node last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveProgress {
    /// Every committed entry up to here can be restored from the store.
    pub archived_index: Option<u64>,
    /// Last index of the newest segment this leader uploaded or listed.
    pub segment_index: Option<u64>,
    /// Last index of the newest snapshot in the store.
    pub snapshot_index: Option<u64>,
    pub snapshot_key: Option<String>,
    /// Why the last pass failed, until one succeeds.
    pub last_error: Option<String>,
}

/// What a backup reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// Last index of the snapshot the backup uploaded (or found uploaded).
    pub snapshot_index: u64,
    /// Every entry up to here can be restored: the recovery point.
    pub archived_index: u64,
    pub snapshot_key: String,
}

/// Handle to a running archiver: progress, and on-demand passes.
#[derive(Clone)]
pub struct ArchiveHandle {
    wake: Arc<Notify>,
    progress: watch::Receiver<ArchiveProgress>,
}

/// How often a backup re-triggers a snapshot and re-checks progress.
const BACKUP_RECHECK: Duration = Duration::from_millis(500);

fn is_leader(m: &RaftMetrics<NodeId, openraft::BasicNode>) -> bool {
    m.current_leader == Some(m.id) && m.state == ServerState::Leader
}

impl ArchiveHandle {
    /// What the store holds, as the archiver last saw it.
    pub fn progress(&self) -> ArchiveProgress {
        self.progress.borrow().clone()
    }

    /// Asks for a pass now and waits until the store holds the log up to
    /// `index` (at most `timeout`); says whether it got there. `gc --now`
    /// uses it: a GC task waits until the archive holds the entry that queued it.
    pub async fn wait_archived(&self, index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut progress = self.progress.clone();
        loop {
            self.wake.notify_one();
            if progress
                .borrow_and_update()
                .archived_index
                .is_some_and(|a| a >= index)
            {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = deadline.min(now + BACKUP_RECHECK);
            if let Ok(Err(_)) = tokio::time::timeout_at(wait, progress.changed()).await {
                return false;
            }
        }
    }

    /// Makes a recovery point now (leader only): builds a snapshot covering
    /// everything applied when called, waits until it is uploaded, and until
    /// segments hold the log up to what is applied once the snapshot exists
    /// (so older kept snapshots can still reach the recovery point).
    /// Gives up after `timeout`, saying why archiving did not get there.
    pub async fn backup(
        &self,
        raft: &Raft,
        timeout: Duration,
    ) -> Result<BackupReport, ArchiveError> {
        let deadline = Instant::now() + timeout;
        let mut metrics = raft.metrics();
        let target = {
            let m = metrics.borrow_and_update();
            if !is_leader(&m) {
                return Err(ArchiveError::NotLeader);
            }
            m.last_applied.map_or(0, |l| l.index)
        };
        // 1. A snapshot covering `target`. A trigger is ignored while a build
        // runs (which may predate `target`), so re-trigger now and then.
        let mut last_trigger: Option<Instant> = None;
        let snapshot_target = loop {
            let (snapshot, leading) = {
                let m = metrics.borrow_and_update();
                (m.snapshot, is_leader(&m))
            };
            if !leading {
                return Err(ArchiveError::NotLeader);
            }
            if let Some(s) = snapshot.filter(|s| s.index >= target) {
                break s.index;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ArchiveError::Timeout(format!(
                    "no snapshot covering index {target} was built"
                )));
            }
            if last_trigger.is_none_or(|t| now >= t + BACKUP_RECHECK) {
                raft.trigger()
                    .snapshot()
                    .await
                    .map_err(|e| ArchiveError::Raft(e.to_string()))?;
                last_trigger = Some(now);
            }
            let wait = deadline.min(now + BACKUP_RECHECK);
            if let Ok(Err(_)) = tokio::time::timeout_at(wait, metrics.changed()).await {
                return Err(ArchiveError::Raft("raft stopped".into()));
            }
        };
        // 2. The snapshot uploaded and the log archived up to what is applied now.
        let log_target = metrics
            .borrow()
            .last_applied
            .map_or(target, |l| l.index)
            .max(target);
        let mut progress = self.progress.clone();
        loop {
            self.wake.notify_one();
            {
                let p = progress.borrow_and_update();
                // Segments too, not only the snapshot: restoring from an
                // older snapshot (if the newest is damaged) needs them.
                if let (Some(snapshot_index), Some(archived_index), Some(key)) =
                    (p.snapshot_index, p.archived_index, p.snapshot_key.as_ref())
                {
                    if snapshot_index >= snapshot_target
                        && archived_index >= log_target
                        && p.segment_index >= Some(log_target)
                    {
                        return Ok(BackupReport {
                            snapshot_index,
                            archived_index,
                            snapshot_key: key.clone(),
                        });
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let why = progress
                    .borrow()
                    .last_error
                    .clone()
                    .map_or_else(String::new, |e| format!(" (last error: {e})"));
                return Err(ArchiveError::Timeout(format!(
                    "the store did not reach snapshot {snapshot_target} and log index {log_target}{why}"
                )));
            }
            if !is_leader(&raft.metrics().borrow()) {
                return Err(ArchiveError::NotLeader);
            }
            let wait = deadline.min(now + BACKUP_RECHECK);
            if let Ok(Err(_)) = tokio::time::timeout_at(wait, progress.changed()).await {
                return Err(ArchiveError::Raft("the archiver stopped".into()));
            }
        }
    }
}

/// The leader's position in the store, rebuilt from a listing each term.
#[derive(Debug)]
struct Cursor {
    term: u64,
    /// First index not yet in a segment.
    next: u64,
    /// Last index of the newest segment.
    segment_last: Option<u64>,
    /// Newest snapshot in the store: last index and key.
    snapshot: Option<(u64, String)>,
}

impl Cursor {
    fn snapshot_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|(i, _)| *i)
    }

    fn archived_index(&self) -> Option<u64> {
        self.next.checked_sub(1).max(self.snapshot_index())
    }
}

/// Entries read for the next segment.
enum ReadOutcome {
    Entries {
        prev: Option<LogId>,
        entries: Vec<Entry>,
    },
    /// The cursor skipped a purged range that an uploaded snapshot covers.
    Skipped,
}

/// The archive task of one replica (see the module docs).
pub struct Archiver {
    pub raft: Raft,
    pub store: Arc<dyn BlobStore>,
    /// A clone of the log store openraft runs on (sled shares the database).
    pub log: SledLogStore<TypeConfig>,
    pub snapshots: SnapshotHandle,
    pub gate: Arc<PurgeGate>,
    pub metrics: Arc<Metrics>,
    pub config: ArchiveConfig,
}

impl Archiver {
    /// Spawns the task; it stops when `shutdown` is cancelled, also in the middle
    /// of a pass, after one last pass if it leads (at most 5 s; await the returned
    /// task for it).
    pub fn start(self, shutdown: CancellationToken) -> (ArchiveHandle, JoinHandle<()>) {
        let (tx, rx) = watch::channel(ArchiveProgress::default());
        let wake = Arc::new(Notify::new());
        let span = tracing::info_span!(
            "archive",
            node = self.raft.metrics().borrow().id,
            shard = self.config.shard.0
        );
        let task = tokio::spawn(self.run(tx, wake.clone(), shutdown).instrument(span));
        (ArchiveHandle { wake, progress: rx }, task)
    }

    async fn run(
        self,
        progress: watch::Sender<ArchiveProgress>,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(self.config.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let metrics = self.raft.metrics();
        // Woken by changes of the log, applied index or snapshot, not by
        // every turn of the Raft core (ticks, heartbeats) as `metrics` is.
        let mut changes = self.raft.data_metrics();
        let mut cursor: Option<Cursor> = None;
        let mut follower_ticks: u64 = 0;
        // After a failure, only the next tick or a wake-up retries.
        let mut quiet = false;
        loop {
            let flush_all = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.final_pass(&mut cursor, &metrics, &progress).await;
                    return;
                }
                _ = ticks.tick() => true,
                _ = wake.notified() => true,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
            };
            if flush_all {
                quiet = false;
            }
            let m = metrics.borrow().clone();
            if !is_leader(&m) {
                if cursor.take().is_some() {
                    tracing::info!("no longer leader; archiving stops");
                }
                if flush_all {
                    if follower_ticks.is_multiple_of(FOLLOWER_REFRESH_TICKS) {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            () = self.refresh_follower(&progress) => {}
                        }
                    }
                    follower_ticks += 1;
                }
                continue;
            }
            if !flush_all && (quiet || !self.worth_a_pass(cursor.as_ref(), &m)) {
                continue;
            }
            // A pass can wait on the store for a long time (timeouts, retries); stopping
            // the replica must not wait for it. Dropping it midway is safe: uploads are
            // idempotent (put-if-absent of immutable data), the purge gate rises only after
            // they succeed, and retention deletes only what a kept snapshot covers.
            let passed = tokio::select! {
                _ = shutdown.cancelled() => None,
                passed = self.pass(&mut cursor, &m, flush_all, &progress) => Some(passed),
            };
            let Some(passed) = passed else {
                tracing::info!("stopping during an archive pass; it is dropped");
                self.final_pass(&mut cursor, &metrics, &progress).await;
                return;
            };
            match passed {
                Ok(()) => {
                    progress.send_if_modified(|p| p.last_error.take().is_some());
                }
                Err(e) => {
                    self.metrics.archive_errors_total.inc();
                    tracing::warn!(error = %e, code = e.code(), "archive pass failed; will retry");
                    quiet = true;
                    progress.send_modify(|p| p.last_error = Some(e.to_string()));
                }
            }
        }
    }

    /// On a clean shutdown, archives what the leader applied since the last pass.
    async fn final_pass(
        &self,
        cursor: &mut Option<Cursor>,
        metrics: &watch::Receiver<RaftMetrics<NodeId, openraft::BasicNode>>,
        progress: &watch::Sender<ArchiveProgress>,
    ) {
        if !is_leader(&metrics.borrow()) {
            return;
        }
        // The metrics trail the state machine: a write acknowledged just
        // before the stop may not show in `last_applied` yet. Let them catch
        // up with the log (bounded: an entry that never commits just ends
        // the wait), so the final pass archives every acknowledged write.
        let last_log = metrics.borrow().last_log_index;
        let _ = self
            .raft
            .wait(Some(FINAL_APPLY_WAIT))
            .applied_index_at_least(last_log, "final archive pass")
            .await;
        let m = metrics.borrow().clone();
        if !is_leader(&m) {
            return;
        }
        let pass = self.pass(cursor, &m, true, progress);
        match tokio::time::timeout(FINAL_PASS_TIMEOUT, pass).await {
            Ok(Ok(())) => {
                tracing::info!(archived = ?cursor.as_ref().and_then(Cursor::archived_index), "final archive pass done")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "final archive pass failed"),
            Err(_) => tracing::warn!("final archive pass timed out"),
        }
    }

    /// Whether an apply or snapshot event (not a tick) deserves a pass.
    fn worth_a_pass(
        &self,
        cursor: Option<&Cursor>,
        m: &RaftMetrics<NodeId, openraft::BasicNode>,
    ) -> bool {
        let Some(c) = cursor else { return true };
        let applied_next = m.last_applied.map_or(0, |l| l.index + 1);
        applied_next.saturating_sub(c.next) >= self.config.segment_entries
            || m.snapshot.map(|s| s.index) > c.snapshot_index()
    }

    /// Raises the purge gate to what the store holds (followers do not archive).
    async fn refresh_follower(&self, progress: &watch::Sender<ArchiveProgress>) {
        match Listing::of(self.store.as_ref(), self.config.shard).await {
            Ok(listing) => {
                let archived = listing.recoverable_index();
                self.gate.set_archived_index(archived);
                let snapshot = listing.newest_snapshot().cloned();
                self.set_gauges(archived, snapshot.as_ref().map(|s| s.index));
                progress.send_if_modified(|p| {
                    let next = ArchiveProgress {
                        archived_index: archived,
                        segment_index: listing.max_segment_last(),
                        snapshot_index: snapshot.as_ref().map(|s| s.index),
                        snapshot_key: snapshot.map(|s| s.key),
                        last_error: None,
                    };
                    let changed = *p != next;
                    *p = next;
                    changed
                });
            }
            Err(e) => {
                self.metrics.archive_errors_total.inc();
                tracing::debug!(error = %e, "listing the archive failed");
            }
        }
    }

    fn set_gauges(&self, archived: Option<u64>, snapshot: Option<u64>) {
        let as_gauge = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        self.metrics.archive_archived_index.set(as_gauge(archived));
        self.metrics.archive_snapshot_index.set(as_gauge(snapshot));
    }

    /// Publishes the cursor: purge gate, gauges, progress.
    fn publish(&self, c: &Cursor, progress: &watch::Sender<ArchiveProgress>) {
        let archived = c.archived_index();
        self.gate.set_archived_index(archived);
        self.set_gauges(archived, c.snapshot_index());
        progress.send_if_modified(|p| {
            let next = ArchiveProgress {
                archived_index: archived,
                segment_index: c.segment_last,
                snapshot_index: c.snapshot_index(),
                snapshot_key: c.snapshot.as_ref().map(|(_, k)| k.clone()),
                last_error: p.last_error.clone(),
            };
            let changed = *p != next;
            *p = next;
            changed
        });
    }

    /// One leader pass: (re)build the cursor for this term, upload a newer
    /// snapshot, then archive pending entries (all of them if `flush_all`,
    /// else only full segments).
    async fn pass(
        &self,
        cursor: &mut Option<Cursor>,
        m: &RaftMetrics<NodeId, openraft::BasicNode>,
        flush_all: bool,
        progress: &watch::Sender<ArchiveProgress>,
    ) -> Result<(), ArchiveError> {
        let term = m.current_term;
        let c = match cursor {
            Some(c) if c.term == term => c,
            _ => {
                let listing = Listing::of(self.store.as_ref(), self.config.shard).await?;
                let c = Cursor {
                    term,
                    next: listing.max_segment_last().map_or(0, |l| l + 1),
                    segment_last: listing.max_segment_last(),
                    snapshot: listing.newest_snapshot().map(|s| (s.index, s.key.clone())),
                };
                tracing::info!(term, next = c.next, snapshot = ?c.snapshot_index(), "archiving as leader");
                self.publish(&c, progress);
                cursor.insert(c)
            }
        };
        self.sync_snapshot(c, progress).await?;
        self.archive_segments(c, m, flush_all, progress).await
    }

    /// Uploads the local snapshot if it is newer than the store's.
    async fn sync_snapshot(
        &self,
        c: &mut Cursor,
        progress: &watch::Sender<ArchiveProgress>,
    ) -> Result<(), ArchiveError> {
        // Cheap check first: the bytes are read from the snapshot file.
        let Some(newest) = self.snapshots.last_log_id() else {
            return Ok(());
        };
        if c.snapshot_index() >= Some(newest.index) {
            return Ok(());
        }
        let handle = self.snapshots.clone();
        let current = tokio::task::spawn_blocking(move || handle.current_file())
            .await
            .map_err(|e| ArchiveError::Encode(format!("snapshot encoder task: {e}")))??;
        let Some((last, bytes)) = current else {
            return Ok(());
        };
        if c.snapshot_index() >= Some(last.index) {
            return Ok(());
        }
        let key = snapshot_key(self.config.shard, &last);
        let size = bytes.len();
        match put_new_or_same_size(self.store.as_ref(), &key, Bytes::from(bytes)).await {
            Ok(_) => {}
            // Another node uploaded a snapshot of the same log id: the same
            // state (apply is deterministic), so either object will do.
            Err(BlobError::AlreadyExists { .. }) => {
                tracing::warn!(%key, "a snapshot of this log id with another size is archived already; keeping it")
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(%key, bytes = size, "uploaded snapshot");
        c.snapshot = Some((last.index, key));
        self.publish(c, progress);
        if let Err(e) = self.apply_retention().await {
            self.metrics.archive_errors_total.inc();
            tracing::warn!(error = %e, "deleting old archive objects failed; will retry after the next snapshot");
        }
        Ok(())
    }

    /// Keeps the newest [`SNAPSHOTS_TO_KEEP`] snapshots; deletes older ones and
    /// every segment the oldest kept snapshot covers entirely.
    async fn apply_retention(&self) -> Result<(), BlobError> {
        let listing = Listing::of(self.store.as_ref(), self.config.shard).await?;
        let Some(cut) = listing.snapshots.len().checked_sub(SNAPSHOTS_TO_KEEP) else {
            return Ok(());
        };
        let (old, kept) = listing.snapshots.split_at(cut);
        let Some(oldest_kept) = kept.first() else {
            return Ok(());
        };
        let mut deleted = 0;
        for s in old {
            self.store.delete(&s.key).await?;
            deleted += 1;
        }
        for seg in listing
            .segments
            .iter()
            .filter(|s| s.last <= oldest_kept.index)
        {
            self.store.delete(&seg.key).await?;
            deleted += 1;
        }
        if deleted > 0 {
            tracing::info!(deleted, oldest_kept = %oldest_kept.key, "deleted archive objects behind the oldest kept snapshot");
        }
        Ok(())
    }

    /// Uploads segments of applied entries after the cursor.
    async fn archive_segments(
        &self,
        c: &mut Cursor,
        m: &RaftMetrics<NodeId, openraft::BasicNode>,
        flush_all: bool,
        progress: &watch::Sender<ArchiveProgress>,
    ) -> Result<(), ArchiveError> {
        let Some(applied) = m.last_applied.map(|l| l.index) else {
            return Ok(());
        };
        let per_segment = self.config.segment_entries.max(1);
        let mut reader = self.log.clone();
        while c.next <= applied {
            let pending = applied - c.next + 1;
            if !flush_all && pending < per_segment {
                break;
            }
            let end = applied.min(c.next.saturating_add(per_segment - 1));
            let (prev, mut entries) = match self.read_for_segment(&mut reader, c, end).await? {
                ReadOutcome::Entries { prev, entries } => (prev, entries),
                ReadOutcome::Skipped => {
                    self.publish(c, progress);
                    continue;
                }
            };
            cap_segment_bytes(&mut entries);
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                break;
            };
            let (first, last) = (first.log_id.index, last.log_id.index);
            let body = encode_segment(prev, &entries)?;
            let key = segment_key(self.config.shard, first, last);
            put_new_or_same_size(self.store.as_ref(), &key, Bytes::from(body)).await?;
            tracing::debug!(%key, entries = entries.len(), "archived log segment");
            c.next = last + 1;
            c.segment_last = Some(last);
            self.publish(c, progress);
        }
        Ok(())
    }

    /// Reads entries `c.next..=end` from the local log, plus the log id
    /// before them. When the local log no longer reaches back to `c.next`,
    /// skips the purged range if an uploaded snapshot covers it.
    async fn read_for_segment(
        &self,
        reader: &mut SledLogStore<TypeConfig>,
        c: &mut Cursor,
        end: u64,
    ) -> Result<ReadOutcome, ArchiveError> {
        let next = c.next;
        let mut entries = reader
            .try_get_log_entries(next.saturating_sub(1)..=end)
            .await
            .map_err(log_error)?;
        let mut prev = None;
        if next > 0 && entries.first().is_some_and(|e| e.log_id.index == next - 1) {
            prev = Some(entries.remove(0).log_id);
        }
        let starts_at_next = entries.first().is_some_and(|e| e.log_id.index == next);
        if !starts_at_next || (next > 0 && prev.is_none()) {
            let purged = reader
                .get_log_state()
                .await
                .map_err(log_error)?
                .last_purged_log_id;
            match purged {
                Some(p) if p.index + 1 == next && starts_at_next => prev = Some(p),
                Some(p) if p.index >= next => {
                    if c.snapshot_index().is_none_or(|s| s < p.index) {
                        return Err(ArchiveError::Hole {
                            from: next,
                            to: p.index,
                        });
                    }
                    tracing::warn!(
                        from = next,
                        to = p.index,
                        "log entries were purged locally before they were archived; the uploaded snapshot covers them"
                    );
                    c.next = p.index + 1;
                    return Ok(ReadOutcome::Skipped);
                }
                _ => {
                    return Err(ArchiveError::Log(format!(
                        "the local log has no entry {next} (last purged: {purged:?})"
                    )))
                }
            }
        }
        for (offset, e) in (0u64..).zip(&entries) {
            if e.log_id.index != next + offset {
                return Err(ArchiveError::Log(format!(
                    "local log entries are not contiguous at {}",
                    e.log_id
                )));
            }
        }
        Ok(ReadOutcome::Entries { prev, entries })
    }
}

/// Keeps the longest prefix (at least one entry) of at most [`MAX_SEGMENT_BYTES`].
fn cap_segment_bytes(entries: &mut Vec<Entry>) {
    let mut total = 0u64;
    let mut keep = entries.len();
    for (i, e) in entries.iter().enumerate() {
        total = total.saturating_add(bincode::serialized_size(e).unwrap_or(u64::MAX));
        if total > MAX_SEGMENT_BYTES && i > 0 {
            keep = i;
            break;
        }
    }
    entries.truncate(keep);
}

// ----- restore --------------------------------------------------------------

/// What [`restore`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    pub shard: ShardId,
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// The snapshot the state starts from (`None`: the log starts at 0).
    pub snapshot_key: Option<String>,
    pub snapshot_index: Option<u64>,
    pub snapshot_term: Option<u64>,
    /// The recovery point: the last entry restored (every entry up to it
    /// was committed). Equal to the snapshot's when no segment follows it.
    pub last_index: u64,
    pub last_term: u64,
    /// Log entries restored after the snapshot.
    pub entries: u64,
    /// Segments the entries came from, in order.
    pub segments: Vec<String>,
    /// Newer snapshots that could not be used, with why.
    pub skipped_snapshots: Vec<(String, String)>,
    /// Segments past the recovery point that could not be chained to it
    /// (after a missing segment, or of another history).
    pub unused_segments: Vec<String>,
    /// Voters and learners of the restored membership: id and address.
    pub members: Vec<(NodeId, String)>,
}

impl RestoreReport {
    /// Whether this node is part of the restored membership.
    pub fn is_member(&self) -> bool {
        self.members.iter().any(|(id, _)| *id == self.node_id)
    }
}

/// Refuses anything but an absent or empty directory; says whether it exists.
fn check_empty_dir(dir: &Path) -> Result<bool, ArchiveError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(true),
            Some(_) => Err(ArchiveError::DataDir {
                path: dir.to_path_buf(),
                reason: "is not empty; restore writes only into an empty or absent directory"
                    .into(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ArchiveError::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// A snapshot downloaded and fully checked.
struct FetchedSnapshot {
    key: String,
    bytes: Vec<u8>,
    last: LogId,
    membership: Vec<(NodeId, String)>,
}

fn members_of(m: &openraft::Membership<NodeId, openraft::BasicNode>) -> Vec<(NodeId, String)> {
    m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
}

/// Downloads and checks one snapshot: `Ok(Err(reason))` when it is corrupt.
async fn fetch_snapshot(
    store: &dyn BlobStore,
    shard: ShardId,
    object: &SnapshotObject,
) -> Result<Result<FetchedSnapshot, String>, BlobError> {
    let bytes = store.get(&object.key, None).await?.to_vec();
    let key = object.key.clone();
    let checked = tokio::task::spawn_blocking(move || -> Result<FetchedSnapshot, String> {
        let snap = decode_snapshot_file(&bytes).map_err(|e| e.to_string())?;
        let last = snap
            .meta
            .last_log_id
            .ok_or("the snapshot covers no log entry")?;
        if snapshot_key(shard, &last) != key {
            return Err(format!(
                "its metadata says log id {last}, the key says otherwise"
            ));
        }
        let holt = Holt::decode_image(&snap.image).map_err(|e| format!("image: {e}"))?;
        if holt.shard() != shard {
            return Err(format!("the image belongs to shard {}", holt.shard().0));
        }
        Ok(FetchedSnapshot {
            key,
            membership: members_of(snap.meta.last_membership.membership()),
            bytes,
            last,
        })
    })
    .await;
    Ok(checked.unwrap_or_else(|e| Err(format!("checker task failed: {e}"))))
}

/// Rebuilds the data directory of node `node_id` of `shard` from the store.
///
/// `data_dir` must be absent or empty. Picks the newest snapshot that
/// decodes and checks out (falling back to older ones), then chains the
/// segments after it: each must link to the log id before it (Raft's
/// log-matching check). The restored log ends at the first index no usable
/// segment covers: that is the recovery point.
///
/// A segment that is corrupt, when no other segment covers the same index,
/// fails the restore instead of ending the log before it: the store claims
/// to hold those entries, so stopping silently would drop acknowledged
/// writes. Everything is downloaded and checked before anything is written.
///
/// Writes `node-id`, `snapshot/current` (the snapshot object's exact bytes)
/// and a sled log at `raft-log` holding the chained entries, with committed
/// = the last entry, last purged = the snapshot's log id, and a vote in the
/// last entry's term for its leader (not committed). openraft requires the
/// vote to be at least the last log entry's leader: the first election then
/// starts in the next term, and the new leader's entries follow the
/// restored ones. On failure, what was written is removed again.
pub async fn restore(
    store: &dyn BlobStore,
    shard: ShardId,
    data_dir: &Path,
    node_id: NodeId,
) -> Result<RestoreReport, ArchiveError> {
    if node_id == 0 {
        return Err(ArchiveError::InvalidArgument(
            "node id must be at least 1".into(),
        ));
    }
    let existed = check_empty_dir(data_dir)?;
    let listing = Listing::of(store, shard).await?;

    let mut skipped_snapshots = Vec::new();
    let mut snapshot = None;
    for object in listing.snapshots.iter().rev() {
        match fetch_snapshot(store, shard, object).await? {
            Ok(fetched) => {
                snapshot = Some(fetched);
                break;
            }
            Err(reason) => {
                // Reported to the caller (`skipped_snapshots`).
                tracing::debug!(key = %object.key, %reason, "skipping an unusable snapshot");
                skipped_snapshots.push((object.key.clone(), reason));
            }
        }
    }

    let mut chain_last = snapshot.as_ref().map(|s| s.last);
    let mut entries: Vec<Entry> = Vec::new();
    let mut used = Vec::new();
    loop {
        let next = chain_last.map_or(0, |l| l.index + 1);
        let mut candidates: Vec<&SegmentObject> = listing
            .segments
            .iter()
            .filter(|s| s.first <= next && next <= s.last)
            .collect();
        candidates.sort_by_key(|s| Reverse(s.last));
        let mut corrupt = None;
        let mut taken = false;
        for object in candidates {
            let bytes = store.get(&object.key, None).await?;
            let segment = match decode_segment(&bytes) {
                Ok(s) => s,
                Err(reason) => {
                    tracing::warn!(key = %object.key, %reason, "corrupt segment");
                    corrupt.get_or_insert((object.key.clone(), reason));
                    continue;
                }
            };
            let (first, last) = match (segment.entries.first(), segment.entries.last()) {
                (Some(f), Some(l)) => (f.log_id.index, l.log_id.index),
                _ => continue,
            };
            if (first, last) != (object.first, object.last) {
                corrupt.get_or_insert((
                    object.key.clone(),
                    format!("it holds entries {first}..={last}"),
                ));
                continue;
            }
            let offset = usize::try_from(next - first).unwrap_or(usize::MAX);
            let link = match offset.checked_sub(1) {
                None => segment.prev_log_id,
                Some(i) => segment.entries.get(i).map(|e| e.log_id),
            };
            if link != chain_last {
                tracing::warn!(key = %object.key, ?link, ?chain_last, "segment belongs to another history; not chaining it");
                continue;
            }
            entries.extend(segment.entries.into_iter().skip(offset));
            chain_last = entries.last().map(|e| e.log_id);
            used.push(object.key.clone());
            taken = true;
            break;
        }
        if !taken {
            if let Some((key, reason)) = corrupt {
                return Err(ArchiveError::CorruptSegment { key, reason });
            }
            break;
        }
    }
    let Some(last) = chain_last else {
        return Err(ArchiveError::NothingToRestore { shard: shard.0 });
    };
    let unused_segments = listing
        .segments
        .iter()
        .filter(|s| s.last > last.index)
        .map(|s| s.key.clone())
        .collect();
    let members = entries
        .iter()
        .rev()
        .find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(members_of(m)),
            _ => None,
        })
        .or_else(|| snapshot.as_ref().map(|s| s.membership.clone()))
        .unwrap_or_default();

    let report = RestoreReport {
        shard,
        node_id,
        data_dir: data_dir.to_path_buf(),
        snapshot_key: snapshot.as_ref().map(|s| s.key.clone()),
        snapshot_index: snapshot.as_ref().map(|s| s.last.index),
        snapshot_term: snapshot.as_ref().map(|s| s.last.leader_id.term),
        last_index: last.index,
        last_term: last.leader_id.term,
        entries: entries.len() as u64,
        segments: used,
        skipped_snapshots,
        unused_segments,
        members,
    };
    let written = write_data_dir(data_dir, node_id, snapshot.as_ref(), entries, last).await;
    if let Err(e) = written {
        // Leave the directory as it was: absent, or empty.
        let cleanup = if existed {
            ["node-id", "snapshot", "raft-log"]
                .iter()
                .map(|name| data_dir.join(name))
                .try_for_each(|p| match std::fs::metadata(&p) {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                    Ok(_) => std::fs::remove_file(&p),
                    Err(_) => Ok(()),
                })
        } else {
            std::fs::remove_dir_all(data_dir)
        };
        if let Err(c) = cleanup {
            tracing::warn!(error = %c, path = %data_dir.display(), "could not clean up after a failed restore");
        }
        return Err(e);
    }
    tracing::info!(
        node = node_id,
        shard = shard.0,
        snapshot = ?report.snapshot_index,
        last = report.last_index,
        "restored data directory"
    );
    Ok(report)
}

/// [`restore`] from the store at `url` (`s3://BUCKET/PREFIX` or `file:///DIR`;
/// S3 settings from the standard AWS environment, as for `--blob-store`).
pub async fn restore_from(
    url: &str,
    shard: ShardId,
    data_dir: &Path,
    node_id: NodeId,
) -> Result<RestoreReport, ArchiveError> {
    let location = nokv_blob::BlobLocation::parse(url)?;
    let store = nokv_blob::open(&location).await?;
    restore(store.as_ref(), shard, data_dir, node_id).await
}

async fn write_data_dir(
    data_dir: &Path,
    node_id: NodeId,
    snapshot: Option<&FetchedSnapshot>,
    entries: Vec<Entry>,
    last: LogId,
) -> Result<(), ArchiveError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let marker = data_dir.join("node-id");
    std::fs::write(&marker, format!("{node_id}\n")).map_err(io(&marker))?;
    if let Some(s) = snapshot {
        let dir = data_dir.join("snapshot");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        write_snapshot_bytes(&dir, &s.bytes).map_err(io(&dir))?;
    }
    let log_dir = data_dir.join("raft-log");
    let mut log = SledLogStore::<TypeConfig>::open(&log_dir).map_err(log_error)?;
    // Not flushed by itself; the flushes below persist it.
    log.save_committed(Some(last)).await.map_err(log_error)?;
    log.save_vote(&Vote::new(last.leader_id.term, last.leader_id.node_id))
        .await
        .map_err(log_error)?;
    for chunk in entries.chunks(RESTORE_APPEND_CHUNK) {
        // Flushes before it returns (sled's append durability rule).
        log.blocking_append(chunk.to_vec())
            .await
            .map_err(log_error)?;
    }
    if let Some(s) = snapshot {
        // Records (and flushes) the purge marker: the log starts after the snapshot.
        log.purge(s.last).await.map_err(log_error)?;
    }
    let state = log.get_log_state().await.map_err(log_error)?;
    if state.last_log_id != Some(last) {
        return Err(ArchiveError::Log(format!(
            "the restored log ends at {:?}, expected {last}",
            state.last_log_id
        )));
    }
    let dir = std::fs::File::open(data_dir).map_err(io(data_dir))?;
    dir.sync_all().map_err(io(data_dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        let shard = ShardId(3);
        let key = segment_key(shard, 7, 42);
        assert_eq!(
            key,
            "meta/shard-3/log/00000000000000000007-00000000000000000042.seg"
        );
        assert_eq!(parse_pair(&log_prefix(shard), &key, ".seg"), Some((7, 42)));
        let id = LogId::new(openraft::CommittedLeaderId::new(5, 2), 99);
        let key = snapshot_key(shard, &id);
        assert_eq!(key, "meta/shard-3/snapshots/00000000000000000099-5.snap");
        assert_eq!(
            parse_pair(&snapshots_prefix(shard), &key, ".snap"),
            Some((99, 5))
        );
        assert_eq!(
            parse_pair(&log_prefix(shard), "meta/shard-3/log/x-1.seg", ".seg"),
            None
        );
        assert_eq!(
            parse_pair(&log_prefix(shard), "meta/shard-3/log/+1-2.seg", ".seg"),
            None
        );
    }

    #[test]
    fn the_gate_purges_up_to_the_archived_index_and_catches_up() {
        let id = |i| LogId::new(openraft::CommittedLeaderId::new(1, 1), i);
        let gate = PurgeGate::enabled();
        let gated = |wanted, archived| PurgePlan::Gated {
            wanted: id(wanted),
            archived,
        };
        assert_eq!(gate.plan(id(10)), gated(10, None));
        gate.set_archived_index(Some(4));
        assert_eq!(
            gate.plan(id(8)),
            gated(10, Some(4)),
            "remembers 10, allows 4"
        );
        gate.set_archived_index(Some(2));
        assert_eq!(gate.archived_index(), Some(4), "never lowered");
        gate.set_archived_index(Some(20));
        assert_eq!(
            gate.plan(id(9)),
            PurgePlan::Purge(id(10)),
            "catches up to the request"
        );
        assert_eq!(PurgeGate::disabled().plan(id(3)), PurgePlan::Purge(id(3)));
    }
}
