//! The openraft state machine: a thin adapter around the Holt engine.
//!
//! `apply` hands each command to [`Holt::apply`] (deterministic, no I/O);
//! everything here is bookkeeping: the last applied log id, the membership,
//! and snapshots. A snapshot is the Holt image (versioned and checksummed by
//! Holt) plus openraft's snapshot metadata, persisted atomically to
//! `DATA_DIR/snapshot/current` so that a restarted node recovers its state
//! from snapshot + log, and the log can be compacted behind it.
//!
//! Only the newest snapshot's metadata stays in memory: its image is read
//! back from the file when openraft sends it to a follower or the archiver
//! ships it (rare), instead of being kept beside the live state (about 120
//! bytes per inode, docs/benchmarks.md "Memory per inode").
//!
//! Invariants: the state after `apply` depends only on the log; a snapshot
//! file is either the old one or the new one (write temp, fsync, rename,
//! fsync dir); a corrupt snapshot file fails startup loudly, never silently.

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use nokv_holt::{Holt, HoltConfig, LogIndex};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::typ::{ApplyResult, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const SNAPSHOT_MAGIC: &[u8; 8] = b"NOKVSNAP";
const SNAPSHOT_FORMAT_VERSION: u32 = 1;
const SNAPSHOT_HEADER_LEN: usize = 8 + 4 + 4 + 8;

/// The replicated state of one replica, shared with the read path.
#[derive(Debug)]
pub struct ShardState {
    pub holt: Holt,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Shared handle to a replica's state; readers take the read lock briefly.
pub type SharedState = Arc<RwLock<ShardState>>;

/// A snapshot: openraft metadata plus the Holt image bytes (what a
/// snapshot file holds).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) image: Vec<u8>,
}

/// Errors reading a persisted snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot file I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot file is corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot image: {0}")]
    Image(#[from] nokv_holt::ImageError),
}

/// The openraft state machine of a shard.
pub struct HoltStateMachine {
    state: SharedState,
    snapshot_dir: PathBuf,
    /// The metadata of the snapshot `snapshot_dir/current` holds.
    current: Arc<Mutex<Option<SnapshotMeta>>>,
    holt_config: HoltConfig,
    /// Time of each `apply` call (the state lock included).
    apply_seconds: Option<prometheus::Histogram>,
}

impl HoltStateMachine {
    /// Opens the state machine, restoring it from the persisted snapshot in
    /// `snapshot_dir` if there is one.
    pub fn open(snapshot_dir: &Path, holt_config: HoltConfig) -> Result<Self, SnapshotFileError> {
        fs::create_dir_all(snapshot_dir)?;
        let (state, current) = match read_snapshot_file(&snapshot_dir.join("current"))? {
            Some(snap) => (
                ShardState {
                    holt: Holt::decode_image(&snap.image)?,
                    last_applied: snap.meta.last_log_id,
                    membership: snap.meta.last_membership.clone(),
                },
                Some(snap.meta),
            ),
            None => (
                ShardState {
                    holt: Holt::new(holt_config.clone()),
                    last_applied: None,
                    membership: StoredMembership::default(),
                },
                None,
            ),
        };
        Ok(HoltStateMachine {
            state: Arc::new(RwLock::new(state)),
            snapshot_dir: snapshot_dir.to_path_buf(),
            current: Arc::new(Mutex::new(current)),
            holt_config,
            apply_seconds: None,
        })
    }

    /// Records the time of every `apply` call in `histogram`.
    pub fn with_apply_timer(mut self, histogram: prometheus::Histogram) -> Self {
        self.apply_seconds = Some(histogram);
        self
    }

    /// The state shared with the read path.
    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    /// Read access to the newest snapshot (built or installed), for the
    /// archiver that ships it to the object store.
    pub fn snapshot_handle(&self) -> SnapshotHandle {
        SnapshotHandle {
            meta: self.current.clone(),
            dir: self.snapshot_dir.clone(),
        }
    }

    fn builder(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            state: self.state.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            current: self.current.clone(),
        }
    }
}

/// Shared read access to a replica's newest snapshot.
#[derive(Clone)]
pub struct SnapshotHandle {
    meta: Arc<Mutex<Option<SnapshotMeta>>>,
    dir: PathBuf,
}

impl SnapshotHandle {
    /// The newest snapshot's last log id.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        match self.meta.lock() {
            Ok(current) => current.as_ref().and_then(|meta| meta.last_log_id),
            Err(_) => None,
        }
    }

    /// The newest snapshot's last log id and its bytes in the snapshot-file
    /// format: the file `DATA_DIR/snapshot/current`, read and checked. `None`
    /// while there is no snapshot, or the snapshot covers no log entry.
    /// (Blocking: call it from a blocking thread.)
    pub(crate) fn current_file(&self) -> Result<Option<(LogId, Vec<u8>)>, SnapshotFileError> {
        let bytes = match fs::read(self.dir.join("current")) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta = decode_snapshot_meta(&bytes)?;
        Ok(meta.last_log_id.map(|last| (last, bytes)))
    }
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn snapshot_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

/// Encodes a snapshot file: magic, format version, crc32 of the body, body
/// length, then the bincode body. The archive stores exactly these bytes.
#[cfg(test)]
pub(crate) fn encode_snapshot_file(snap: &StoredSnapshot) -> Result<Vec<u8>, bincode::Error> {
    let body = bincode::serialize(snap)?;
    let mut out = snapshot_header(crc32fast::hash(&body), body.len() as u64).to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// A snapshot file's header for a body of `len` bytes whose crc32 is `crc`.
fn snapshot_header(crc: u32, len: u64) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut header = [0u8; SNAPSHOT_HEADER_LEN];
    header[0..8].copy_from_slice(SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header[16..24].copy_from_slice(&len.to_le_bytes());
    header
}

/// Counts and checksums what is written into it: a snapshot's body, sized
/// and summed without being held in memory.
#[derive(Default)]
struct BodyDigest {
    crc: crc32fast::Hasher,
    len: u64,
}

impl Write for BodyDigest {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes (and checks) a snapshot file; corrupt input is an error, never a panic.
pub(crate) fn decode_snapshot_file(bytes: &[u8]) -> Result<StoredSnapshot, SnapshotFileError> {
    let body = checked_body(bytes)?;
    bincode::deserialize(body).map_err(|e| SnapshotFileError::Corrupt(e.to_string()))
}

/// The body of a snapshot file, once its header, length and checksum hold.
fn checked_body(bytes: &[u8]) -> Result<&[u8], SnapshotFileError> {
    let corrupt = |m: &str| SnapshotFileError::Corrupt(m.to_string());
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return Err(corrupt("shorter than its header"));
    }
    let (header, body) = bytes.split_at(SNAPSHOT_HEADER_LEN);
    if &header[0..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let version = word(8);
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotFileError::Corrupt(format!(
            "unsupported format version {version}"
        )));
    }
    let crc = word(12);
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[16..24]);
    if u64::from_le_bytes(len_bytes) != body.len() as u64 {
        return Err(corrupt("length does not match"));
    }
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(body)
}

/// The metadata of a snapshot file, after the same checks as
/// [`decode_snapshot_file`] but without copying the image.
fn decode_snapshot_meta(bytes: &[u8]) -> Result<SnapshotMeta, SnapshotFileError> {
    let body = checked_body(bytes)?;
    // The image follows the metadata; bincode (1.x) reads a prefix.
    bincode::deserialize::<MetaOnly>(body)
        .map(|m| m.meta)
        .map_err(|e| SnapshotFileError::Corrupt(e.to_string()))
}

/// The leading field of [`StoredSnapshot`], for reading the metadata alone.
#[derive(Deserialize)]
struct MetaOnly {
    meta: SnapshotMeta,
}

fn read_snapshot_file(path: &Path) -> Result<Option<StoredSnapshot>, SnapshotFileError> {
    match fs::read(path) {
        Ok(bytes) => decode_snapshot_file(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes `snap` as `dir/current` atomically and durably, in the format of
/// [`encode_snapshot_file`] but streamed: the body is serialized twice,
/// once to size and checksum it for the header and once into the file, so
/// that no copy of the image (hundreds of megabytes for a large state) is
/// made on the way.
fn write_snapshot_file(dir: &Path, snap: &StoredSnapshot) -> std::io::Result<()> {
    let mut digest = BodyDigest::default();
    bincode::serialize_into(&mut digest, snap).map_err(std::io::Error::other)?;
    let header = snapshot_header(digest.crc.finalize(), digest.len);
    write_snapshot_with(dir, |file| {
        let mut out = std::io::BufWriter::new(file);
        out.write_all(&header)?;
        bincode::serialize_into(&mut out, snap).map_err(std::io::Error::other)?;
        out.flush()
    })
}

/// Writes already encoded snapshot-file `bytes` as `dir/current`
/// atomically and durably.
pub(crate) fn write_snapshot_bytes(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_snapshot_with(dir, |file| file.write_all(bytes))
}

/// Makes `dir/current` what `write` writes, atomically and durably: a
/// temporary file, fsync, rename, fsync of the directory.
fn write_snapshot_with(
    dir: &Path,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = dir.join("current.tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join("current"))?;
    fs::File::open(dir)?.sync_all()
}

/// Builds snapshots from the live state.
pub struct SnapshotBuilder {
    state: SharedState,
    snapshot_dir: PathBuf,
    current: Arc<Mutex<Option<SnapshotMeta>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Copy the state under the read lock, encode and write outside it so
        // that reads and applies are blocked only for the copy.
        let started = std::time::Instant::now();
        let (holt, last_applied, membership) = {
            let s = self.state.read().map_err(|_| poisoned())?;
            (s.holt.clone(), s.last_applied, s.membership.clone())
        };
        let copied = started.elapsed();
        let dir = self.snapshot_dir.clone();
        let current = self.current.clone();
        let snap = in_background(move || -> std::io::Result<StoredSnapshot> {
            let image = holt.encode_image();
            let snapshot_id = match last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id, id.index, crc32fast::hash(&image)),
                None => format!("empty-{}", crc32fast::hash(&image)),
            };
            let snap = StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: last_applied,
                    last_membership: membership,
                    snapshot_id,
                },
                image,
            };
            write_snapshot_file(&dir, &snap)?;
            Ok(snap)
        })
        .await
        .map_err(|_| snapshot_write_err(std::io::Error::other("the snapshot thread died")))?
        .map_err(snapshot_write_err)?;
        tracing::info!(
            snapshot = %snap.meta.snapshot_id,
            bytes = snap.image.len(),
            copy_ms = copied.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "built snapshot"
        );
        *current.lock().map_err(|_| poisoned())? = Some(snap.meta.clone());
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: Box::new(Cursor::new(snap.image)),
        })
    }
}

/// Runs `work` (encoding and writing a snapshot: tens to hundreds of ms of
/// CPU for a large state) on its own thread at a lower scheduling priority
/// (nice 10), so that on a busy machine it takes the CPU that Raft, applies
/// and reads leave, rather than an equal share of it (docs/benchmarks.md,
/// "Soak": with the CPU busy, p99 at each snapshot fell from 0.34-0.50 s to
/// 0.16-0.34 s in three-minute runs of three processes).
fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("nokv-snapshot".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        // No thread: the receiver sees the sender dropped, an error.
        tracing::error!(error = %e, "cannot start a snapshot thread");
    }
    rx
}

/// Lowers the calling thread's priority to nice 10 (Linux: a thread has
/// its own nice value); best effort.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority takes plain integers and touches no memory of
        // ours; `who` 0 is the calling thread on Linux.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the snapshot thread's priority");
        }
    }
}

fn poisoned() -> StorageError {
    sm_read_err(std::io::Error::other("state lock poisoned by a panic"))
}

impl RaftStateMachine<TypeConfig> for HoltStateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let s = self.state.read().map_err(|_| poisoned())?;
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let _timer = self.apply_seconds.as_ref().map(|h| h.start_timer());
        let mut s = self.state.write().map_err(|_| poisoned())?;
        let mut results = Vec::new();
        for entry in entries {
            let index = LogIndex(entry.log_id.index);
            s.last_applied = Some(entry.log_id);
            let outcomes = match entry.payload {
                // A new leader's first entry and every membership change
                // move the shard's epoch (deterministically: the entry is
                // in the log), so a client that routed under the old
                // leader or membership is refused with STALE_EPOCH.
                EntryPayload::Blank => {
                    s.holt.advance_epoch(index);
                    Vec::new()
                }
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembership::new(Some(entry.log_id), m);
                    s.holt.advance_epoch(index);
                    Vec::new()
                }
                EntryPayload::Normal(payload) => payload
                    .commands()
                    .iter()
                    .map(|cmd| s.holt.apply(index, cmd))
                    .collect(),
            };
            results.push(ApplyResult { index, outcomes });
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.builder()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let image = snapshot.into_inner();
        let holt = Holt::decode_image(&image).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        })?;
        let snap = StoredSnapshot {
            meta: meta.clone(),
            image,
        };
        let dir = self.snapshot_dir.clone();
        tokio::task::spawn_blocking(move || write_snapshot_file(&dir, &snap))
            .await
            .map_err(snapshot_write_err)?
            .map_err(snapshot_write_err)?;
        {
            let mut s = self.state.write().map_err(|_| poisoned())?;
            s.holt = holt;
            s.last_applied = meta.last_log_id;
            s.membership = meta.last_membership.clone();
        }
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from leader");
        *self.current.lock().map_err(|_| poisoned())? = Some(meta.clone());
        Ok(())
    }

    /// Read back from the file (a follower that needs a snapshot is rare;
    /// keeping the image in memory for it cost as much as a third of the
    /// live state).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.snapshot_dir.join("current");
        let snap = tokio::task::spawn_blocking(move || read_snapshot_file(&path))
            .await
            .map_err(sm_read_err)?
            .map_err(sm_read_err)?;
        Ok(snap.map(|snap| Snapshot {
            meta: snap.meta,
            snapshot: Box::new(Cursor::new(snap.image)),
        }))
    }
}

impl HoltStateMachine {
    /// The engine configuration new (empty) state starts from.
    pub fn holt_config(&self) -> &HoltConfig {
        &self.holt_config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredSnapshot {
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: StoredMembership::default(),
                snapshot_id: "s1".into(),
            },
            image: Holt::new(HoltConfig::default()).encode_image(),
        }
    }

    #[test]
    fn snapshot_file_round_trips() {
        let snap = sample();
        let bytes = encode_snapshot_file(&snap).expect("encode");
        let back = decode_snapshot_file(&bytes).expect("decode");
        assert_eq!(back.image, snap.image);
        assert_eq!(back.meta.snapshot_id, "s1");
        let meta = decode_snapshot_meta(&bytes).expect("meta alone");
        assert_eq!(meta.snapshot_id, "s1");
        assert!(decode_snapshot_meta(&bytes[..bytes.len() - 1]).is_err());
    }

    /// The file a snapshot is streamed into holds exactly the bytes of
    /// the encoded form (the archive stores those, and restores write them
    /// back), for an empty state and for one whose image spans many of the
    /// writer's buffers.
    #[test]
    fn a_streamed_snapshot_file_is_the_encoded_one() {
        let mut large = sample();
        large.image = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for snap in [sample(), large] {
            let dir = tempfile::tempdir().expect("tempdir");
            write_snapshot_file(dir.path(), &snap).expect("write");
            let written = fs::read(dir.path().join("current")).expect("read");
            assert_eq!(written, encode_snapshot_file(&snap).expect("encode"));
            assert!(!dir.path().join("current.tmp").exists());
        }
    }

    /// The image is not kept in memory: what a follower or the archiver
    /// gets is read back from the file, and it is the snapshot just built.
    #[tokio::test]
    async fn a_built_snapshot_is_served_from_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = HoltStateMachine::open(dir.path(), HoltConfig::default()).expect("open");
        assert!(sm.get_current_snapshot().await.expect("read").is_none());
        let handle = sm.snapshot_handle();
        assert!(handle.current_file().expect("no file yet").is_none());
        let built = sm.builder().build_snapshot().await.expect("build");
        let image = built.snapshot.into_inner();
        let served = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot");
        assert_eq!(served.meta.snapshot_id, built.meta.snapshot_id);
        assert_eq!(served.snapshot.into_inner(), image);
        // It covers no log entry: nothing for the archiver.
        assert!(handle.current_file().expect("read").is_none());
        assert_eq!(handle.last_log_id(), None);
        // A damaged file is an error, not a wrong snapshot.
        let path = dir.path().join("current");
        let mut bytes = fs::read(&path).expect("file");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).expect("write");
        assert!(sm.get_current_snapshot().await.is_err());
        assert!(handle.current_file().is_err());
    }

    #[test]
    fn corrupt_snapshot_files_are_rejected() {
        let bytes = encode_snapshot_file(&sample()).expect("encode");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(decode_snapshot_file(&flipped).is_err());
        assert!(decode_snapshot_file(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_snapshot_file(b"garbage").is_err());
        let mut magic = bytes;
        magic[0] = b'X';
        assert!(decode_snapshot_file(&magic).is_err());
    }

    #[test]
    fn open_restores_the_persisted_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = sample();
        write_snapshot_file(dir.path(), &snap).expect("write");
        let sm = HoltStateMachine::open(dir.path(), HoltConfig::default()).expect("open");
        let current = sm.current.lock().expect("lock");
        assert_eq!(
            current.as_ref().map(|meta| meta.snapshot_id.clone()),
            Some("s1".into())
        );
    }
}
