//! [`DataFiles`]: the fsync that sled's flush leaves out.
//!
//! sled 0.34's `flush` promises that every earlier write survives a crash, but on Linux
//! it writes its log buffer with `pwrite` followed by `sync_file_range(WAIT_BEFORE |
//! WRITE | WAIT_AFTER)`, and nothing else (its periodic flusher adds an `fsync`, but the
//! store turns that flusher off). `sync_file_range` starts and awaits the write-back of
//! the pages, but writes none of the file's metadata (the new length when the log file
//! grew) and does not flush the device's volatile write cache: after a power failure the
//! acknowledged entries may be gone. A process crash loses nothing either way (the page
//! cache survives it), which is why kill-based tests cannot tell the difference. Values
//! larger than a quarter of a segment are worse still: sled writes each to its own file
//! under `blobs/` and never syncs it or its directory entry.
//!
//! So every durable flush of the store is followed by [`DataFiles::sync`]: an `fsync` of
//! every blob file written since the last one (and of the `blobs` directory when there
//! was one), then an `fdatasync` of the log file. Only then is anything acknowledged.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::LogStoreError;

/// sled 0.34's file names inside its directory.
const LOG_FILE: &str = "db";
const CONFIG_FILE: &str = "conf";
const BLOBS_DIR: &str = "blobs";

/// The files of one sled database that a durable flush must sync.
#[derive(Debug)]
pub(crate) struct DataFiles {
    dir: PathBuf,
    /// sled's log file, opened once: `fdatasync` applies to the file, whichever
    /// descriptor asks.
    log: File,
    /// Names of the blob files already synced (pruned to those still present, since
    /// sled deletes blobs it no longer needs).
    synced_blobs: Mutex<BTreeSet<String>>,
    log_syncs: AtomicU64,
    blob_syncs: AtomicU64,
}

/// How many syncs a database has done: for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// `fdatasync` calls on the log file (one per durable flush).
    pub log_file: u64,
    /// Blob files synced (each once, after the flush that made it part of the log).
    pub blob_files: u64,
}

impl DataFiles {
    /// Opens the log file of the sled database in `dir` (which sled has just opened or
    /// created) and makes the directory entries of its files durable.
    pub(crate) fn open(dir: &Path) -> Result<Self, LogStoreError> {
        let log_path = dir.join(LOG_FILE);
        let log = File::open(&log_path).map_err(|source| LogStoreError::Sync {
            path: log_path.clone(),
            source,
        })?;
        let files = DataFiles {
            dir: dir.to_path_buf(),
            log,
            synced_blobs: Mutex::new(BTreeSet::new()),
            log_syncs: AtomicU64::new(0),
            blob_syncs: AtomicU64::new(0),
        };
        // sled writes its configuration file without a sync, and a new database's files
        // exist only once their directory entries are durable.
        let config = dir.join(CONFIG_FILE);
        if config.is_file() {
            sync_path(&config)?;
        }
        files
            .log
            .sync_data()
            .map_err(|source| LogStoreError::Sync {
                path: log_path,
                source,
            })?;
        sync_path(dir)?;
        if files.blobs_dir().is_dir() {
            sync_path(&files.blobs_dir())?;
        }
        Ok(files)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.dir.join(BLOBS_DIR)
    }

    /// Makes everything that sled's last flush wrote durable: new blob files first, then
    /// the log file. Call after `sled::Db::flush` returned, before acknowledging.
    pub(crate) fn sync(&self) -> Result<(), LogStoreError> {
        self.sync_new_blobs()?;
        self.log.sync_data().map_err(|source| LogStoreError::Sync {
            path: self.dir.join(LOG_FILE),
            source,
        })?;
        self.log_syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn sync_new_blobs(&self) -> Result<(), LogStoreError> {
        let blobs_dir = self.blobs_dir();
        let entries = match std::fs::read_dir(&blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(LogStoreError::Sync {
                    path: blobs_dir,
                    source,
                })
            }
        };
        let mut present = BTreeSet::new();
        for entry in entries {
            let entry = entry.map_err(|source| LogStoreError::Sync {
                path: blobs_dir.clone(),
                source,
            })?;
            present.insert(entry.file_name().to_string_lossy().into_owned());
        }
        // Concurrent flushes of several groups may both sync a new blob; that is harmless.
        let fresh: Vec<String> = {
            let synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
            present.difference(&synced).cloned().collect()
        };
        for name in &fresh {
            let path = blobs_dir.join(name);
            match File::open(&path).and_then(|f| f.sync_all()) {
                Ok(()) => {
                    self.blob_syncs.fetch_add(1, Ordering::Relaxed);
                }
                // sled removed a blob it no longer needs: nothing to make durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(LogStoreError::Sync { path, source }),
            }
        }
        if !fresh.is_empty() {
            sync_path(&blobs_dir)?;
        }
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        // Forget blobs that are gone; keep any another flush synced meanwhile.
        synced.retain(|name| present.contains(name));
        synced.extend(fresh);
        Ok(())
    }

    pub(crate) fn counts(&self) -> SyncCounts {
        SyncCounts {
            log_file: self.log_syncs.load(Ordering::Relaxed),
            blob_files: self.blob_syncs.load(Ordering::Relaxed),
        }
    }
}

/// `fsync` of a directory (or file) by path.
fn sync_path(path: &Path) -> Result<(), LogStoreError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| LogStoreError::Sync {
            path: path.to_path_buf(),
            source,
        })
}
