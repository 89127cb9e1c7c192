//! Subtree snapshots: a pin on the namespace as it was at one log index.
//!
//! A pin keeps a clone of the shard's [`Namespace`](crate::engine::Namespace)
//! (persistent maps, so the clone is O(1) and shares all structure) plus
//! the subtree it was taken of. Reads at a snapshot resolve against the
//! pinned maps and only inside that subtree. Pins are replicated state:
//! created, renewed and removed by log commands, expired by the leader's
//! lease worker (`ExpireSnapshots`, like uploads), carried in snapshot
//! images. While a pin holds a body, the GC queue keeps its blocks.

use serde::{Deserialize, Serialize};

use crate::error::FsError;
use crate::types::{InodeId, LogIndex};

/// Longest lease a snapshot may have: 30 days.
pub const MAX_SNAPSHOT_LEASE_NS: u64 = 30 * 24 * 3600 * 1_000_000_000;

/// Most live pins in one shard. A pin costs little when it is made (the
/// namespace is persistent, its clone O(1)) but holds on to every version
/// of what changes after it, and every read of it walks its own tree: a
/// client may not make them without bound.
pub const MAX_SNAPSHOTS: usize = 1024;

/// Identifies a snapshot within its shard; never reused.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SnapshotId(pub u64);

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "snapshot {}", self.0)
    }
}

/// What a snapshot is: its id, the subtree it pins and its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    /// The subtree's path as given at creation (normalised: no trailing `/`).
    pub path: String,
    /// The subtree's root inode at the pin.
    pub root: InodeId,
    /// The log index of the command that created it: reads see the state
    /// right after that command.
    pub pinned_index: LogIndex,
    /// Leader time of creation (ns since the Unix epoch).
    pub created_ns: u64,
    /// The pin is released once the leader's clock passes this.
    pub lease_expires_ns: u64,
}

/// Checks a snapshot lease: more than 0 and at most [`MAX_SNAPSHOT_LEASE_NS`].
pub fn validate_snapshot_lease(lease_ns: u64) -> Result<(), FsError> {
    if lease_ns == 0 || lease_ns > MAX_SNAPSHOT_LEASE_NS {
        return Err(FsError::InvalidArgument(format!(
            "snapshot lease of {lease_ns} ns is outside 1 ..= {MAX_SNAPSHOT_LEASE_NS} ns"
        )));
    }
    Ok(())
}
