//! [`SledLogStore`]: openraft's [`RaftLogStorage`] and [`RaftLogReader`] on sled.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftTypeConfig,
    StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::LogStoreError;
use crate::schema::{
    decode_value, encode_value, log_key, logs_tree, meta_tree, parse_log_key, FORMAT_VERSION,
    KEY_COMMITTED, KEY_FORMAT_VERSION, KEY_LAST_PURGED, KEY_VOTE,
};
use crate::sync::{DataFiles, SyncCounts};

/// Most purged entries one append deletes along with its own writes (see
/// [`SledLogStore::purge`](RaftLogStorage::purge)).
const PURGE_PER_APPEND: usize = 64;

/// Serialises writes against flushes on one sled database.
///
/// sled 0.34 deadlocks when a batch write (which takes its internal lock exclusively)
/// waits for a flush in progress while that flush waits for an I/O buffer that a thread
/// blocked behind the pending writer should write: seen with several Raft groups
/// appending to one database at once (every thread parked in sled, the node silent). So
/// every write here holds the gate exclusively (writes are memory-only and brief) and
/// every flush holds it shared (flushes still run together and share an fsync), and
/// sled's background flusher is off: no flush runs outside the gate.
type Gate = Arc<RwLock<()>>;

fn read_gate(gate: &Gate) -> std::sync::RwLockReadGuard<'_, ()> {
    gate.read().unwrap_or_else(|p| p.into_inner())
}

fn write_gate(gate: &Gate) -> std::sync::RwLockWriteGuard<'_, ()> {
    gate.write().unwrap_or_else(|p| p.into_inner())
}

/// Hands this thread's deferred frees to crossbeam-epoch's global queue and runs those
/// that are safe by now.
///
/// sled frees a replaced tree node, and each sealed 512 KiB write buffer, through
/// crossbeam-epoch's deferred destruction, which parks the free in a bag owned by the
/// calling thread until 64 have gathered there. Our sled calls run on tokio's blocking
/// pool and async workers, many threads that each touch sled now and then, so bags sat
/// part full for good: a leader held ~75 MB of sealed buffers that way at 10^5 files
/// (docs/benchmarks.md, "the leader's extra memory"). Called after every sled write,
/// flush and range read here.
fn release_deferred_frees() {
    crossbeam_epoch::pin().flush();
}

/// A durable flush, blocking: sled's flush under the gate's shared side, then the fsync
/// it leaves out ([`DataFiles::sync`]) outside the gate, so that the next writes need not
/// wait for the disk. Returns the bytes sled flushed.
fn flush_now(db: &sled::Db, gate: &Gate, files: &DataFiles) -> Result<usize, LogStoreError> {
    let flushed = {
        let _shared = read_gate(gate);
        db.flush()?
    };
    release_deferred_frees();
    files.sync()?;
    Ok(flushed)
}

/// [`flush_now`] on tokio's blocking pool (the async workers carry heartbeats).
async fn gated_flush(
    db: &sled::Db,
    gate: &Gate,
    files: &Arc<DataFiles>,
) -> Result<usize, LogStoreError> {
    let (db, gate, files) = (db.clone(), gate.clone(), files.clone());
    tokio::task::spawn_blocking(move || flush_now(&db, &gate, &files))
        .await
        .map_err(|e| LogStoreError::Sled(sled::Error::ReportableBug(format!("flush task: {e}"))))?
}

/// One node's sled database, shared by the logs of every Raft group the node hosts
/// (one per shard; see [`crate::schema`] for the trees of each group).
///
/// Sharing one database means one background flusher and one fsync for every group's
/// appends at once, instead of a thread and an fsync per shard. Cloning is cheap.
#[derive(Clone)]
pub struct SledLogDb {
    db: sled::Db,
    gate: Gate,
    files: Arc<DataFiles>,
}

impl fmt::Debug for SledLogDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledLogDb").finish_non_exhaustive()
    }
}

impl SledLogDb {
    /// Opens (or creates) the database in `dir`. sled locks the directory: it cannot be
    /// opened twice at once.
    pub fn open(dir: &Path) -> Result<Self, LogStoreError> {
        let db = sled::Config::new()
            .path(dir)
            // Every durable write is flushed explicitly (see `Gate`).
            .flush_every_ms(None)
            .open()
            .map_err(|source| LogStoreError::Open {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(SledLogDb {
            db,
            gate: Gate::default(),
            files: Arc::new(DataFiles::open(dir)?),
        })
    }

    /// The log store of Raft group `group` (see [`SledLogStore::for_group`]).
    pub fn group<C: RaftTypeConfig>(&self, group: u16) -> Result<SledLogStore<C>, LogStoreError> {
        SledLogStore::gated(
            self.db.clone(),
            group,
            self.gate.clone(),
            self.files.clone(),
        )
    }

    /// How many syncs this database has done (see [`SyncCounts`]).
    pub fn sync_counts(&self) -> SyncCounts {
        self.files.counts()
    }

    /// Whether group `group` has ever been opened in this database.
    pub fn has_group(&self, group: u16) -> Result<bool, LogStoreError> {
        let name = meta_tree(group);
        Ok(self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes()))
    }

    /// Deletes every tree of group `group` and flushes. The caller must have stopped the
    /// group's Raft instance first.
    pub fn drop_group(&self, group: u16) -> Result<(), LogStoreError> {
        {
            let _exclusive = write_gate(&self.gate);
            self.db.drop_tree(logs_tree(group))?;
            self.db.drop_tree(meta_tree(group))?;
        }
        flush_now(&self.db, &self.gate, &self.files).map(|_| ())
    }
}

/// Raft log storage for openraft, backed by a sled database.
///
/// Cloning is cheap and shares the underlying `sled::Db`; the clone returned by
/// [`RaftLogStorage::get_log_reader`] is such a clone.
///
/// # Durability rules
///
/// sled buffers writes in memory; they reach the disk only when the database is flushed,
/// explicitly or by the next explicit flush (the background flusher is off; see [`Gate`]). A
/// flush here is sled's flush followed by an `fdatasync` of sled's log file and an `fsync`
/// of any new blob file, because sled's own flush stops at `sync_file_range` (see the
/// `sync` module); "flush" below means both. A flush persists *every* write made before
/// it, across all trees. The store relies on that as follows:
///
/// - [`append`](RaftLogStorage::append) writes all entries in one atomic sled batch, then
///   awaits a flush (the blocking fsync runs on tokio's blocking pool, not on the async
///   executor), and only then calls
///   [`LogFlushed::log_io_completed`]. The callback therefore never acknowledges an entry
///   that a crash could lose. On failure the error is both reported to the callback and
///   returned.
/// - [`save_vote`](RaftLogStorage::save_vote) writes and flushes before returning.
/// - [`save_committed`](RaftLogStorage::save_committed) writes without an explicit flush: a
///   committed index may lag after a crash (openraft allows that: it only re-applies less
///   at startup and learns the rest from the leader), and the next flush (every append
///   flushes) persists it. Caveat for readers: a leader restored after a crash serves
///   read-index reads from this possibly lagging index, so the node's read path must not
///   trust it alone (meta-node's `read_index` waits for the leader's own log instead).
/// - [`truncate`](RaftLogStorage::truncate) deletes entries with index `>= log_id.index` in
///   one batch, then flushes.
/// - [`purge`](RaftLogStorage::purge) records and flushes `last_purged_log_id` and returns;
///   the entries with index `<= log_id.index` are then deleted a few hundred at a time in
///   the batches of later appends (durable with their flush), and whatever is left at the
///   next open is deleted then. Reads never return an entry at or below the marker, so
///   the log is the same to openraft as if the deletion were done. The marker is thus
///   never behind the log: a crash leaves stale entries below the marker but never a hole
///   above it.
///
///   Why not delete at once: openraft's core awaits `purge`, and deleting the 10,000
///   entries behind each snapshot and flushing them took long enough (hundreds of ms,
///   every replica at about the same index) that the leader's AppendEntries timed out and
///   its replication paused: the soak's p99 of 0.1-0.9 s (docs/benchmarks.md, "Soak").
///
/// Methods take `&mut self` and complete their I/O before returning, so write I/O is
/// serialized as openraft requires.
///
/// # Data integrity
///
/// Everything read from disk is decoded fallibly (see [`crate::schema`]); corrupt data
/// yields an openraft `StorageError` (a read `StorageIOError`) carrying a
/// [`LogStoreError`], never a panic. A log entry must also carry the index of the key it is
/// stored under.
pub struct SledLogStore<C: RaftTypeConfig> {
    db: sled::Db,
    /// Shared with every other group of the database (see [`Gate`]).
    gate: Gate,
    /// The files every durable flush syncs; shared like the gate.
    files: Arc<DataFiles>,
    /// [`LOGS_TREE`](crate::schema::LOGS_TREE): index -> entry.
    logs: sled::Tree,
    /// [`META_TREE`](crate::schema::META_TREE): vote, committed, last purged, format version.
    meta: sled::Tree,
    /// The first index a read may return: one past the durable purge marker (0 without
    /// one). Entries below it may still be on disk (see the durability rules).
    readable_from: Arc<AtomicU64>,
    /// Entries up to this index are purged but still on disk: later appends delete them.
    purge_pending: Arc<Mutex<Option<u64>>>,
    /// `fn() -> C` keeps the store `Send + Sync` independently of `C`.
    _config: PhantomData<fn() -> C>,
}

// Manual impl: `derive(Clone)` would needlessly require `C: Clone`.
impl<C: RaftTypeConfig> Clone for SledLogStore<C> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            gate: self.gate.clone(),
            files: self.files.clone(),
            logs: self.logs.clone(),
            meta: self.meta.clone(),
            readable_from: self.readable_from.clone(),
            purge_pending: self.purge_pending.clone(),
            _config: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> fmt::Debug for SledLogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately no counts: sled's `len` is a full scan.
        f.debug_struct("SledLogStore").finish_non_exhaustive()
    }
}

/// Cheap summary of the log's extent, e.g. for metrics. Built from keys only; no entry is
/// decoded except the last purged log id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStateSummary {
    /// Index of the first entry present in the log, if any.
    pub first_index: Option<u64>,
    /// Index of the last entry present in the log, if any.
    pub last_index: Option<u64>,
    /// Index of the last purged entry, if anything was ever purged.
    pub last_purged_index: Option<u64>,
}

impl<C: RaftTypeConfig> SledLogStore<C> {
    /// Opens the log store in directory `dir`, creating the sled database if it does not
    /// exist.
    ///
    /// sled holds an exclusive lock on the directory: it cannot be opened twice at once,
    /// including by the same process while a previous store (or any clone of it) is alive.
    pub fn open(dir: &Path) -> Result<Self, LogStoreError> {
        SledLogDb::open(dir)?.group(0)
    }

    /// Builds the log store on an already opened sled database (e.g. one opened with a custom
    /// `sled::Config`) whose directory is `dir` (the store syncs sled's files itself; see
    /// the durability rules). The store uses the trees [`LOGS_TREE`](crate::schema::LOGS_TREE) and [`META_TREE`](crate::schema::META_TREE).
    ///
    /// Checks the persisted-format version and completes a purge that a crash interrupted.
    pub fn from_db(db: sled::Db, dir: &Path) -> Result<Self, LogStoreError> {
        Self::for_group(db, dir, 0)
    }

    /// The log of Raft group `group` in a database shared by several groups (see
    /// [`crate::schema`]: group 0 uses [`LOGS_TREE`](crate::schema::LOGS_TREE) and [`META_TREE`](crate::schema::META_TREE), group `g` the
    /// trees `logs-g` and `meta-g`). A flush by any group persists every group's writes.
    ///
    /// Checks the persisted-format version and completes a purge that a crash interrupted.
    pub fn for_group(db: sled::Db, dir: &Path, group: u16) -> Result<Self, LogStoreError> {
        let files = Arc::new(DataFiles::open(dir)?);
        Self::gated(db, group, Gate::default(), files)
    }

    fn gated(
        db: sled::Db,
        group: u16,
        gate: Gate,
        files: Arc<DataFiles>,
    ) -> Result<Self, LogStoreError> {
        // Opening a tree that does not exist yet writes (sled records it in
        // its tree of trees), so it takes the gate like every other write.
        let (logs, meta) = {
            let _exclusive = write_gate(&gate);
            (
                db.open_tree(logs_tree(group))?,
                db.open_tree(meta_tree(group))?,
            )
        };
        let store = Self {
            db,
            gate,
            files,
            logs,
            meta,
            readable_from: Arc::new(AtomicU64::new(0)),
            purge_pending: Arc::new(Mutex::new(None)),
            _config: PhantomData,
        };
        store.check_format_version()?;
        store.finish_interrupted_purge()?;
        if let Some(purged) = store.read_last_purged()? {
            store
                .readable_from
                .store(purged.index.saturating_add(1), Ordering::Release);
        }
        let summary = store.log_state_summary()?;
        tracing::info!(?summary, "opened sled raft log store");
        Ok(store)
    }

    /// Indexes of the first, last and last purged entries.
    pub fn log_state_summary(&self) -> Result<LogStateSummary, LogStoreError> {
        let readable = self.logs.range(log_key(self.readable_from())..);
        let first_index = match readable.keys().next() {
            Some(key) => Some(parse_index(&key?)?),
            None => None,
        };
        // Purged entries still on disk are not part of the log.
        let last_index = match self.logs.last()? {
            Some((key, _)) => Some(parse_index(&key)?).filter(|i| *i >= self.readable_from()),
            None => None,
        };
        let last_purged_index = self.read_last_purged()?.map(|log_id| log_id.index);
        Ok(LogStateSummary {
            first_index,
            last_index,
            last_purged_index,
        })
    }

    /// How many syncs the database of this store has done (see [`SyncCounts`]).
    pub fn sync_counts(&self) -> SyncCounts {
        self.files.counts()
    }

    /// Bytes used by the sled database on disk (all trees), e.g. for metrics.
    pub fn size_on_disk(&self) -> Result<u64, LogStoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Writes [`FORMAT_VERSION`] into a new database, or rejects a database written in
    /// another format.
    fn check_format_version(&self) -> Result<(), LogStoreError> {
        match self.read_meta::<u32>(KEY_FORMAT_VERSION, "format version")? {
            Some(FORMAT_VERSION) => Ok(()),
            Some(found) => Err(LogStoreError::UnsupportedFormat {
                found,
                expected: FORMAT_VERSION,
            }),
            // No explicit flush: the first durable write (append, vote, ...) flushes it,
            // and if it is lost first, the next open simply writes it again.
            None => self.write_meta(KEY_FORMAT_VERSION, &FORMAT_VERSION, "format version"),
        }
    }

    /// Deletes entries at or below `last_purged_log_id` that later appends had not deleted
    /// yet when the store was last closed (see [`RaftLogStorage::purge`]).
    fn finish_interrupted_purge(&self) -> Result<(), LogStoreError> {
        let Some(last_purged) = self.read_last_purged()? else {
            return Ok(());
        };
        let removed = self.remove_range(..=log_key(last_purged.index))?;
        if removed > 0 {
            tracing::info!(removed, %last_purged, "deleted purged log entries left on disk");
            flush_now(&self.db, &self.gate, &self.files)?;
        }
        Ok(())
    }

    /// Removes all keys of the logs tree in `range` in one batch; returns how many.
    fn remove_range<R: RangeBounds<[u8; 8]>>(&self, range: R) -> Result<usize, LogStoreError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for key in self.logs.range(range).keys() {
            batch.remove(key?);
            removed += 1;
        }
        if removed > 0 {
            let _exclusive = write_gate(&self.gate);
            self.logs.apply_batch(batch)?;
        }
        release_deferred_frees();
        Ok(removed)
    }

    /// The first index a read may return (see `readable_from`).
    fn readable_from(&self) -> u64 {
        self.readable_from.load(Ordering::Acquire)
    }

    /// Reads and decodes a value of the meta tree.
    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, LogStoreError> {
        match self.meta.get(key)? {
            None => Ok(None),
            Some(bytes) => decode_value(&bytes)
                .map(Some)
                .map_err(|source| LogStoreError::Decode {
                    what: what.to_owned(),
                    source,
                }),
        }
    }

    /// Encodes and writes a value of the meta tree (not flushed).
    fn write_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        what: &str,
    ) -> Result<(), LogStoreError> {
        let bytes = encode_value(value).map_err(|source| LogStoreError::Encode {
            what: what.to_owned(),
            source,
        })?;
        let _exclusive = write_gate(&self.gate);
        self.meta.insert(key, bytes)?;
        Ok(())
    }

    /// [`Self::write_meta`] on tokio's blocking pool: waiting for the gate (behind a
    /// flush's fsync) must not stall the async workers that carry heartbeats.
    async fn write_meta_blocking<T: Serialize>(
        &self,
        key: &'static [u8],
        value: &T,
        what: &str,
    ) -> Result<(), LogStoreError> {
        let bytes = encode_value(value).map_err(|source| LogStoreError::Encode {
            what: what.to_owned(),
            source,
        })?;
        let (meta, gate) = (self.meta.clone(), self.gate.clone());
        tokio::task::spawn_blocking(move || {
            let _exclusive = write_gate(&gate);
            let inserted = meta.insert(key, bytes).map(|_| ());
            release_deferred_frees();
            inserted
        })
        .await
        .map_err(|e| LogStoreError::Sled(sled::Error::ReportableBug(format!("write task: {e}"))))?
        .map_err(LogStoreError::from)
    }

    fn read_last_purged(&self) -> Result<Option<LogId<C::NodeId>>, LogStoreError> {
        self.read_meta(KEY_LAST_PURGED, "last purged log id")
    }

    /// Decodes a stored entry and checks it sits under its own index.
    fn decode_entry(key: &[u8], value: &[u8]) -> Result<C::Entry, LogStoreError> {
        let key_index = parse_index(key)?;
        let entry: C::Entry = decode_value(value).map_err(|source| LogStoreError::Decode {
            what: format!("log entry at index {key_index}"),
            source,
        })?;
        let entry_index = entry.get_log_id().index;
        if entry_index != key_index {
            return Err(LogStoreError::IndexMismatch {
                key_index,
                entry_index,
            });
        }
        Ok(entry)
    }

    /// Log id of the last entry present, if any.
    fn last_entry_log_id(&self) -> Result<Option<LogId<C::NodeId>>, LogStoreError> {
        match self.logs.last()? {
            None => Ok(None),
            Some((key, value)) => Ok(Some(Self::decode_entry(&key, &value)?.get_log_id().clone())),
        }
    }

    /// Entries with index in `[start, end)` (`end == None`: no upper bound), never one
    /// at or below the purge marker.
    fn read_entries(&self, start: u64, end: Option<u64>) -> Result<Vec<C::Entry>, LogStoreError> {
        let start = start.max(self.readable_from());
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let iter = match end {
            Some(end) => self.logs.range(log_key(start)..log_key(end)),
            None => self.logs.range(log_key(start)..),
        };
        let entries = iter
            .map(|item| {
                let (key, value) = item?;
                Self::decode_entry(&key, &value)
            })
            .collect();
        release_deferred_frees();
        entries
    }

    /// Step one of `append`: all entries in one atomic batch, then a flush of the whole db.
    async fn append_durably<I>(&self, entries: I) -> Result<(), LogStoreError>
    where
        I: IntoIterator<Item = C::Entry>,
    {
        let mut batch = sled::Batch::default();
        let mut count = 0_usize;
        let mut last_index = None;
        for entry in entries {
            let index = entry.get_log_id().index;
            let bytes = encode_value(&entry).map_err(|source| LogStoreError::Encode {
                what: format!("log entry at index {index}"),
                source,
            })?;
            batch.insert(&log_key(index)[..], bytes);
            count += 1;
            last_index = Some(index);
        }
        let (db, logs, gate, files, pending) = (
            self.db.clone(),
            self.logs.clone(),
            self.gate.clone(),
            self.files.clone(),
            self.purge_pending.clone(),
        );
        // Write and flush in one trip to tokio's blocking pool (one task hop per append).
        let (purged, flushed_bytes) = tokio::task::spawn_blocking(move || {
            let purged = {
                let _exclusive = write_gate(&gate);
                let purge = purge_some(&logs, &pending, &mut batch)?;
                logs.apply_batch(batch)?;
                purge.done(&pending);
                purge.deleted
            };
            let flushed = flush_now(&db, &gate, &files)?;
            Ok::<_, LogStoreError>((purged, flushed))
        })
        .await
        .map_err(|e| {
            LogStoreError::Sled(sled::Error::ReportableBug(format!("write task: {e}")))
        })??;
        tracing::debug!(
            count,
            ?last_index,
            purged,
            flushed_bytes,
            "appended log entries durably"
        );
        Ok(())
    }

    async fn flush(&self) -> Result<(), LogStoreError> {
        gated_flush(&self.db, &self.gate, &self.files).await?;
        Ok(())
    }
}

/// What one append deletes of a pending purge (see [`purge_some`]).
struct PurgeStep {
    deleted: usize,
    /// Whether this step deletes the last of the pending entries.
    finishes: Option<u64>,
}

impl PurgeStep {
    /// Records, once the batch is written, that nothing is left to delete (unless a newer
    /// purge came meanwhile: openraft calls `purge` and `append` through `&mut self`, so
    /// one cannot run during the other, but the check costs nothing).
    fn done(&self, pending: &Mutex<Option<u64>>) {
        if let Some(through) = self.finishes {
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            if *pending == Some(through) {
                *pending = None;
            }
        }
    }
}

/// Adds to `batch` the deletion of up to [`PURGE_PER_APPEND`] purged entries still on
/// disk, oldest first.
fn purge_some(
    logs: &sled::Tree,
    pending: &Mutex<Option<u64>>,
    batch: &mut sled::Batch,
) -> Result<PurgeStep, sled::Error> {
    let through = *pending.lock().unwrap_or_else(|p| p.into_inner());
    let Some(through) = through else {
        return Ok(PurgeStep {
            deleted: 0,
            finishes: None,
        });
    };
    let mut deleted = 0;
    for key in logs
        .range(..=log_key(through))
        .keys()
        .take(PURGE_PER_APPEND)
    {
        batch.remove(key?);
        deleted += 1;
    }
    Ok(PurgeStep {
        deleted,
        finishes: (deleted < PURGE_PER_APPEND).then_some(through),
    })
}

/// Parses a logs-tree key, reporting a malformed key as corruption.
fn parse_index(key: &[u8]) -> Result<u64, LogStoreError> {
    parse_log_key(key).ok_or(LogStoreError::CorruptLogKey { len: key.len() })
}

/// Converts any `u64` range to `[start, end)` with `end == None` meaning unbounded, or
/// `None` if the range is empty.
fn index_range<R: RangeBounds<u64>>(range: &R) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        // `..=u64::MAX` has no representable exclusive end: treat as unbounded.
        Bound::Included(&end) => end.checked_add(1),
        Bound::Excluded(&end) => Some(end),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end <= start => None,
        _ => Some((start, end)),
    }
}

/// Wraps a [`LogStoreError`] into openraft's storage error with the given subject and verb.
fn storage_error<NID: openraft::NodeId>(
    subject: ErrorSubject<NID>,
    verb: ErrorVerb,
    error: &LogStoreError,
) -> StorageError<NID> {
    StorageIOError::new(subject, verb, AnyError::new(error)).into()
}

impl<C: RaftTypeConfig> RaftLogReader<C> for SledLogStore<C> {
    async fn try_get_log_entries<RB>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>>
    where
        RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend,
    {
        let Some((start, end)) = index_range(&range) else {
            return Ok(Vec::new());
        };
        self.read_entries(start, end)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for SledLogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let read_error = |e: LogStoreError| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e);
        let last_purged_log_id = self.read_last_purged().map_err(read_error)?;
        // Entries at or below the purge marker may still be on disk (deleted by later
        // appends): the last entry counts only above the marker.
        let last_log_id = match self.last_entry_log_id().map_err(read_error)? {
            Some(last) if self.readable_from() <= last.index => Some(last),
            _ => last_purged_log_id.clone(),
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let write_error =
            |e: LogStoreError| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &e);
        self.write_meta_blocking(KEY_VOTE, vote, "vote")
            .await
            .map_err(write_error)?;
        // openraft requires the vote to be on disk before this returns.
        self.flush().await.map_err(write_error)?;
        tracing::debug!(%vote, "saved vote");
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        self.read_meta(KEY_VOTE, "vote")
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        // Deliberately not flushed (see the type's durability rules): this is called often
        // and a lagging committed index is safe.
        self.write_meta_blocking(KEY_COMMITTED, &committed, "committed log id")
            .await
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        let committed: Option<Option<LogId<C::NodeId>>> = self
            .read_meta(KEY_COMMITTED, "committed log id")
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match self.append_durably(entries).await {
            Ok(()) => {
                // Only now is every entry of this call on disk.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = StorageIOError::write_logs(AnyError::new(&e));
                callback.log_io_completed(Err(io::Error::other(error.clone())));
                Err(error.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let delete_error =
            |e: LogStoreError| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e);
        let removed = self
            .remove_range(log_key(log_id.index)..)
            .map_err(delete_error)?;
        self.flush().await.map_err(delete_error)?;
        tracing::debug!(%log_id, removed, "truncated log");
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let delete_error =
            |e: LogStoreError| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e);
        let previous = self.read_last_purged().map_err(delete_error)?;
        // The marker only moves forward; a purge at or below it has nothing left to do.
        if previous
            .as_ref()
            .is_some_and(|previous| *previous >= log_id)
        {
            return Ok(());
        }
        self.write_meta_blocking(KEY_LAST_PURGED, &log_id, "last purged log id")
            .await
            .map_err(delete_error)?;
        // Marker durable before any deletion: see the type's durability rules.
        self.flush().await.map_err(delete_error)?;
        self.readable_from
            .store(log_id.index.saturating_add(1), Ordering::Release);
        *self.purge_pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(log_id.index);
        tracing::debug!(%log_id, "purged log (entries deleted with later appends)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use super::index_range;

    #[test]
    fn index_ranges() {
        assert_eq!(index_range(&(3..7)), Some((3, Some(7))));
        assert_eq!(index_range(&(3..=7)), Some((3, Some(8))));
        assert_eq!(index_range(&(3..)), Some((3, None)));
        assert_eq!(index_range(&(..)), Some((0, None)));
        assert_eq!(index_range(&(..=u64::MAX)), Some((0, None)));
        assert_eq!(index_range(&(5..5)), None);
        // A reversed range is empty rather than a panic.
        let reversed = (Bound::Included(7_u64), Bound::Excluded(3_u64));
        assert_eq!(index_range(&reversed), None);
        assert_eq!(
            index_range(&(Bound::Excluded(u64::MAX), Bound::Unbounded)),
            None
        );
        assert_eq!(
            index_range(&(Bound::Excluded(2_u64), Bound::Included(3_u64))),
            Some((3, Some(4)))
        );
    }
}
