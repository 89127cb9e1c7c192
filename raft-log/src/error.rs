//! Errors of the sled log store.

use std::path::PathBuf;

/// Errors raised by [`SledLogStore`](crate::SledLogStore).
///
/// Constructors and the inherent helpers return this type directly. Inside the openraft
/// traits it is wrapped into an `openraft::StorageError` (an `StorageIOError` whose subject
/// and verb say what was being read or written), keeping this value as the source.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// The sled database at `path` could not be opened or created.
    #[error("failed to open raft log store at {}: {source}", path.display())]
    Open {
        /// Directory passed to [`SledLogStore::open`](crate::SledLogStore::open).
        path: PathBuf,
        /// Underlying sled error.
        #[source]
        source: sled::Error,
    },

    /// The fsync that follows sled's flush (see the `sync` module) failed on `path`.
    #[error("failed to sync {} to disk: {source}", path.display())]
    Sync {
        /// The file or directory being synced.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A sled operation (read, write, flush, tree open) failed.
    #[error("sled error: {0}")]
    Sled(#[from] sled::Error),

    /// A value could not be encoded for storage.
    #[error("failed to encode {what}: {source}")]
    Encode {
        /// What was being encoded, e.g. "vote".
        what: String,
        /// Underlying bincode error.
        #[source]
        source: bincode::Error,
    },

    /// A stored value could not be decoded: the data is corrupt or was written in another
    /// format.
    #[error("failed to decode stored {what}: {source}")]
    Decode {
        /// What was being decoded, e.g. "log entry at index 7".
        what: String,
        /// Underlying bincode error.
        #[source]
        source: bincode::Error,
    },

    /// A key in the `logs` tree is not a valid 8-byte log index.
    #[error("corrupt key in logs tree: expected 8 bytes, found {len} bytes")]
    CorruptLogKey {
        /// Length of the offending key.
        len: usize,
    },

    /// A log entry is stored under a key that does not match its own log index.
    #[error("log entry stored under index {key_index} carries log index {entry_index}")]
    IndexMismatch {
        /// Index taken from the sled key.
        key_index: u64,
        /// Index taken from the decoded entry.
        entry_index: u64,
    },

    /// The database was written with an incompatible persisted-format version.
    #[error("unsupported raft log format version {found} (this build reads version {expected})")]
    UnsupportedFormat {
        /// Version found on disk.
        found: u32,
        /// Version this build understands ([`crate::schema::FORMAT_VERSION`]).
        expected: u32,
    },
}
