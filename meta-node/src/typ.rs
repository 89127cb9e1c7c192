//! The openraft type configuration of a NoKV shard.

use std::io::Cursor;

use nokv_holt::{LogIndex, LogPayload, Outcome};
use serde::{Deserialize, Serialize};

/// Raft node id (`--node-id`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Types of a NoKV metadata shard's Raft group.
    pub TypeConfig:
        D = LogPayload,
        R = ApplyResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What applying one log entry produced: one outcome per command of the
/// batch, in order. Entries without commands (blank, membership) give none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub index: LogIndex,
    pub outcomes: Vec<Outcome>,
}

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
