//! Persisted-format declaration: every sled tree, key and value encoding used by
//! [`SledLogStore`](crate::SledLogStore).
//!
//! Anything written to disk by this crate is described here and nowhere else, so that a
//! format change is a reviewable diff of this file. Bump [`FORMAT_VERSION`] on any
//! incompatible change; [`SledLogStore::open`](crate::SledLogStore::open) refuses a database
//! written with another version instead of misreading it.
//!
//! # Layout
//!
//! | tree          | key                               | value                                   |
//! |---------------|-----------------------------------|-----------------------------------------|
//! | [`LOGS_TREE`] | [`log_key`]: index as 8-byte BE   | `C::Entry`                              |
//! | [`META_TREE`] | [`KEY_FORMAT_VERSION`]            | `u32`                                   |
//! | [`META_TREE`] | [`KEY_VOTE`]                      | `openraft::Vote<C::NodeId>`             |
//! | [`META_TREE`] | [`KEY_COMMITTED`]                 | `Option<openraft::LogId<C::NodeId>>`    |
//! | [`META_TREE`] | [`KEY_LAST_PURGED`]               | `openraft::LogId<C::NodeId>`            |
//!
//! A node hosts the logs of several Raft groups (one per shard) in one sled database, so
//! that one fsync makes every group's appends durable together. Group 0 uses the trees
//! above; group `g > 0` uses the same layout in [`logs_tree(g)`](logs_tree) (`logs-g`) and
//! [`meta_tree(g)`](meta_tree) (`meta-g`).
//!
//! All values are encoded with [`encode_value`] (bincode 1.3, fixed-width little-endian
//! integers — byte-identical to `bincode::serialize`).

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version of the on-disk format described in this module.
///
/// Stored under [`KEY_FORMAT_VERSION`] when a database is first opened.
pub const FORMAT_VERSION: u32 = 1;

/// Tree holding the raft log entries.
///
/// Key: [`log_key`] of the entry's log index. Value: the bincode-encoded `C::Entry`.
/// Because keys are big-endian, sled's lexicographic key order is the numeric index order,
/// which makes "last entry", range reads, truncation and purging plain range scans.
pub const LOGS_TREE: &str = "logs";

/// Tree holding the small pieces of raft metadata (vote, committed, last purged).
pub const META_TREE: &str = "meta";

/// The log tree of Raft group `group` ([`LOGS_TREE`] for group 0).
pub fn logs_tree(group: u16) -> String {
    match group {
        0 => LOGS_TREE.to_string(),
        g => format!("{LOGS_TREE}-{g}"),
    }
}

/// The metadata tree of Raft group `group` ([`META_TREE`] for group 0).
pub fn meta_tree(group: u16) -> String {
    match group {
        0 => META_TREE.to_string(),
        g => format!("{META_TREE}-{g}"),
    }
}

/// Key in [`META_TREE`]: the persisted-format version, a `u32` (see [`FORMAT_VERSION`]).
pub const KEY_FORMAT_VERSION: &[u8] = b"format_version";

/// Key in [`META_TREE`]: the last vote saved by `save_vote`, an `openraft::Vote<C::NodeId>`.
/// Absent until the first vote is saved.
pub const KEY_VOTE: &[u8] = b"vote";

/// Key in [`META_TREE`]: the last committed log id saved by `save_committed`, an
/// `Option<openraft::LogId<C::NodeId>>`. Absent until the first call.
pub const KEY_COMMITTED: &[u8] = b"committed";

/// Key in [`META_TREE`]: the id of the last purged log entry, an
/// `openraft::LogId<C::NodeId>`. Written (and flushed) *before* the purged entries are
/// deleted, so that it is never behind the log. Absent until the first purge.
pub const KEY_LAST_PURGED: &[u8] = b"last_purged_log_id";

/// Length in bytes of a key in [`LOGS_TREE`].
pub const LOG_KEY_LEN: usize = 8;

/// Key of the log entry at `index` in [`LOGS_TREE`]: `index` as big-endian `u64`.
pub fn log_key(index: u64) -> [u8; LOG_KEY_LEN] {
    index.to_be_bytes()
}

/// Inverse of [`log_key`]; `None` if `key` is not exactly [`LOG_KEY_LEN`] bytes long.
pub fn parse_log_key(key: &[u8]) -> Option<u64> {
    let bytes: [u8; LOG_KEY_LEN] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The bincode configuration of every value: fixed-width little-endian integers (the
/// `bincode::serialize` format) and, when decoding, no trailing bytes.
fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
}

/// Encodes a value for storage.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    codec().serialize(value)
}

/// Decodes a stored value.
///
/// Corrupt input yields an error, never a panic. The size limit is the input length, so a
/// corrupt length prefix cannot make bincode allocate more than the stored bytes could
/// possibly describe; trailing garbage is rejected.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    codec()
        .with_limit(u64::try_from(bytes.len()).unwrap_or(u64::MAX))
        .deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_numerically() {
        let indexes = [0_u64, 1, 255, 256, 65_535, 1 << 40, u64::MAX];
        for pair in indexes.windows(2) {
            assert!(log_key(pair[0]) < log_key(pair[1]));
        }
        for index in indexes {
            assert_eq!(parse_log_key(&log_key(index)), Some(index));
        }
        assert_eq!(parse_log_key(&[1, 2, 3]), None);
    }

    #[test]
    fn encoding_matches_legacy_bincode() {
        let value = (7_u64, Some(String::from("x")), vec![1_u32, 2]);
        let ours = encode_value(&value).expect("encode");
        assert_eq!(ours, bincode::serialize(&value).expect("legacy encode"));
        let back: (u64, Option<String>, Vec<u32>) = decode_value(&ours).expect("decode");
        assert_eq!(back, value);
    }

    #[test]
    fn decoding_rejects_garbage() {
        assert!(decode_value::<u64>(&[1, 2, 3]).is_err());
        assert!(
            decode_value::<u32>(&[1, 2, 3, 4, 5]).is_err(),
            "trailing bytes"
        );
        // A length prefix claiming 2^60 elements must fail fast, not allocate.
        let huge_len = (1_u64 << 60).to_le_bytes();
        assert!(decode_value::<Vec<u64>>(&huge_len).is_err());
    }
}
