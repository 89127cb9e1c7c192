//! The router's errors: [`RouterError`] for every operation, [`MapError`] for why a shard map
//! (or a change to one) is malformed.

use std::path::PathBuf;

use crate::types::{ClusterId, Epoch, NodeId, Revision, ShardId};

/// Every error of this crate. [`RouterError::code`] is stable: clients and tests match on it.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The map (or the change to it) breaks an invariant; nothing was written.
    #[error("malformed shard map: {0}")]
    Malformed(#[from] MapError),
    /// A path given to routing is not absolute and normalised.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The map changed since it was read: it is now at `current`. Nothing was written.
    #[error("shard map changed concurrently: now at revision {current}")]
    Conflict {
        /// The revision of the map now stored.
        current: Revision,
    },
    /// No cluster has been initialised in this store.
    #[error("cluster {cluster} is not initialised")]
    NotInitialized {
        /// The cluster looked for.
        cluster: ClusterId,
    },
    /// `init` found a map already stored.
    #[error("cluster {cluster} is already initialised (map at revision {revision})")]
    AlreadyInitialized {
        /// The cluster.
        cluster: ClusterId,
        /// The revision of the stored map.
        revision: Revision,
    },
    /// No shard with this id in the map.
    #[error("unknown shard {shard}")]
    UnknownShard {
        /// The id asked for.
        shard: ShardId,
    },
    /// A map for another cluster was given to a control plane bound to `expected`.
    #[error("shard map belongs to cluster {found}, this control plane serves {expected}")]
    ClusterMismatch {
        /// The control plane's cluster.
        expected: ClusterId,
        /// The map's cluster.
        found: ClusterId,
    },
    /// A caller-supplied argument (configuration, TTL) is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The control store could not be reached or did not answer in time. The operation may
    /// or may not have taken effect; re-read before retrying a change.
    #[error("control plane unavailable: {reason}")]
    Unavailable {
        /// What failed (the store's own message).
        reason: String,
    },
    /// Data read from the store or from disk cannot be decoded.
    #[error("corrupt control-plane data at {location}: {reason}")]
    Corrupt {
        /// The key or file.
        location: String,
        /// Why it cannot be decoded.
        reason: String,
    },
    /// The in-process control plane could not persist its state file; nothing changed.
    #[error("cannot persist control-plane state to {}: {source}", path.display())]
    Persist {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl RouterError {
    /// A stable, upper-case code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            RouterError::Malformed(_) => "MALFORMED_MAP",
            RouterError::InvalidPath { .. } => "INVALID_PATH",
            RouterError::Conflict { .. } => "CONFLICT",
            RouterError::NotInitialized { .. } => "NOT_INITIALIZED",
            RouterError::AlreadyInitialized { .. } => "ALREADY_INITIALIZED",
            RouterError::UnknownShard { .. } => "UNKNOWN_SHARD",
            RouterError::ClusterMismatch { .. } => "CLUSTER_MISMATCH",
            RouterError::InvalidArgument(_) => "INVALID_ARGUMENT",
            RouterError::Unavailable { .. } => "CONTROL_PLANE_UNAVAILABLE",
            RouterError::Corrupt { .. } => "CORRUPT_STATE",
            RouterError::Persist { .. } => "PERSIST_FAILED",
        }
    }

    /// Whether retrying the same call later may succeed (the store was unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RouterError::Unavailable { .. })
    }
}

/// Why a shard map, or a change from one map to the next, is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The cluster name is not usable as a key component.
    #[error(
        "cluster id {name:?} must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'"
    )]
    BadClusterId {
        /// The name given.
        name: String,
    },
    /// There is no shard 0.
    #[error("root shard 0 is missing")]
    RootMissing,
    /// Shard 0 is not grafted at `/`, or has a parent.
    #[error(
        "root shard 0 must be grafted at \"/\" with no parent (found {graft:?}, parent {parent:?})"
    )]
    RootMisplaced {
        /// Its graft path.
        graft: String,
        /// Its parent.
        parent: Option<ShardId>,
    },
    /// A record's id differs from its key in the map.
    #[error("{what} stored under key {key} carries id {id}")]
    IdMismatch {
        /// "node" or "shard".
        what: &'static str,
        /// The key.
        key: u64,
        /// The record's id.
        id: u64,
    },
    /// A node address is empty or not `HOST:PORT`.
    #[error("node {node} address {addr:?} is not HOST:PORT")]
    BadNodeAddr {
        /// The node.
        node: NodeId,
        /// Its address.
        addr: String,
    },
    /// A graft path is not absolute and normalised.
    #[error("shard {shard} graft path {path:?}: {reason}")]
    BadGraftPath {
        /// The shard.
        shard: ShardId,
        /// Its graft path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two shards are grafted at the same path.
    #[error("shards {first} and {second} are both grafted at {path:?}")]
    DuplicateGraft {
        /// The path.
        path: String,
        /// One shard.
        first: ShardId,
        /// The other.
        second: ShardId,
    },
    /// A shard's parent is not the shard that owns its graft point's parent directory.
    #[error("shard {shard} has parent {found:?}, but its graft point's parent directory belongs to shard {expected}")]
    WrongParent {
        /// The shard.
        shard: ShardId,
        /// The shard routing sends the graft point's parent directory to.
        expected: ShardId,
        /// The recorded parent.
        found: Option<ShardId>,
    },
    /// A shard has no voters.
    #[error("shard {shard} has no members")]
    NoMembers {
        /// The shard.
        shard: ShardId,
    },
    /// A member, learner or leader hint names a node the map does not have.
    #[error("shard {shard} names unknown node {node}")]
    UnknownNode {
        /// The shard.
        shard: ShardId,
        /// The node.
        node: NodeId,
    },
    /// A node appears twice among a shard's members and learners.
    #[error("shard {shard} lists node {node} more than once among members and learners")]
    DuplicateReplica {
        /// The shard.
        shard: ShardId,
        /// The node.
        node: NodeId,
    },
    /// A change would rename the cluster.
    #[error("a change cannot move the map from cluster {from} to {to}")]
    ClusterChanged {
        /// The stored map's cluster.
        from: ClusterId,
        /// The new map's cluster.
        to: ClusterId,
    },
    /// A change would lower a shard's epoch.
    #[error("shard {shard} epoch would go back from {from} to {to}")]
    EpochRegressed {
        /// The shard.
        shard: ShardId,
        /// Its stored epoch.
        from: Epoch,
        /// Its new epoch.
        to: Epoch,
    },
    /// A change alters a shard's members, learners, graft or parent without a higher epoch.
    #[error("shard {shard} changed its configuration without bumping its epoch (still {epoch})")]
    EpochNotBumped {
        /// The shard.
        shard: ShardId,
        /// The unchanged epoch.
        epoch: Epoch,
    },
}
