//! Identifiers and records of the shard map.
//!
//! Every id is a newtype with `Display` and a transparent serde form, so the JSON stored in
//! the control plane reads naturally (`"members": [1, 2, 3]`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::MapError;

/// A metadata node (one process, one gRPC address, replicas of any number of shards).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

/// A shard: one Raft group and the namespace subtree it owns.
///
/// Shard 0 is the root shard. Inode ids carry their shard in the high 16 bits
/// ([`ShardId::of_inode`]), so ids at or above 65536 cannot exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The root shard, grafted at `/`.
    pub const ROOT: ShardId = ShardId(0);

    /// The shard an inode id belongs to: its high 16 bits.
    pub const fn of_inode(inode: u64) -> ShardId {
        ShardId((inode >> 48) as u16)
    }
}

/// A shard's configuration epoch. It never decreases, and it increases whenever the shard's
/// members, learners, graft path or parent change, so a replica or client holding an older
/// epoch can be told it is stale.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The next epoch.
    pub const fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

/// The control store's revision of a shard map (etcd: the map key's `mod_revision`).
///
/// Revisions increase with every committed map but are not consecutive: the store also
/// counts writes to other keys. `Revision(0)` means "before any map".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Revision(pub u64);

/// The name of a cluster: 1 to 64 characters from `[A-Za-z0-9._-]`, not starting with `.`.
///
/// It becomes one component of the control plane's keys, hence the restricted alphabet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterId(String);

impl ClusterId {
    /// Checks the name and wraps it.
    pub fn new(name: impl Into<String>) -> Result<ClusterId, MapError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(ClusterId(name))
        } else {
            Err(MapError::BadClusterId { name })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClusterId {
    type Error = MapError;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        ClusterId::new(name)
    }
}

impl From<ClusterId> for String {
    fn from(id: ClusterId) -> String {
        id.0
    }
}

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
display_inner!(NodeId, ShardId, Epoch, Revision, ClusterId);

/// Where a node stands in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Hosts replicas and may be given new ones.
    Active,
    /// Being emptied: keeps its replicas until they are moved, gets no new ones.
    Draining,
    /// Gone. Keeping the record instead of deleting it stops the id from being reused.
    Removed,
}

/// A metadata node as the control plane knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its id (equal to its key in [`ShardMap::nodes`]).
    pub id: NodeId,
    /// `HOST:PORT` of its gRPC listener (Raft and client traffic).
    pub addr: String,
    /// Its state.
    pub state: NodeState,
}

/// The life cycle of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// Its replicas are being created; the graft entry may not exist yet.
    Creating,
    /// Serves its subtree.
    Serving,
    /// Being taken down.
    Removing,
}

/// A shard: a Raft group and the subtree of the one global tree that it owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Its id (equal to its key in [`ShardMap::shards`]).
    pub id: ShardId,
    /// The absolute, normalised path in the global tree where this shard's root appears;
    /// `/` for shard 0.
    pub graft: String,
    /// The shard whose namespace holds the graft entry (the shard that owns the graft
    /// point's parent directory); `None` only for shard 0.
    pub parent: Option<ShardId>,
    /// Voters, in no particular order; never empty.
    pub members: Vec<NodeId>,
    /// Non-voting replicas catching up.
    #[serde(default)]
    pub learners: Vec<NodeId>,
    /// Its configuration epoch.
    pub epoch: Epoch,
    /// The node last seen leading the group; a hint, possibly stale.
    #[serde(default)]
    pub leader_hint: Option<NodeId>,
    /// Its life-cycle state.
    pub state: ShardState,
}

/// The whole control-plane state of a cluster: nodes, shards and where each shard is grafted.
///
/// A map is only ever stored after [`ShardMap::validate`] accepted it. Its `revision` is
/// assigned by the store (and ignored when a map is written).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// The cluster this map describes.
    pub cluster: ClusterId,
    /// The store's revision of this map; `Revision(0)` for a map not read from a store.
    #[serde(default)]
    pub revision: Revision,
    /// Every node, by id.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Every shard, by id.
    pub shards: BTreeMap<ShardId, ShardRecord>,
    /// No shard id below this one may be given to a new shard: ids are never reused
    /// after a removal, because inode ids (and on-disk replica directories) carry them.
    /// Use [`ShardMap::allocate_shard_id`]. 0 in maps written before it existed.
    #[serde(default)]
    pub next_shard: u16,
}

impl ShardMap {
    /// The map of a new cluster: one active node hosting the root shard alone.
    pub fn bootstrap(cluster: ClusterId, node: NodeId, addr: impl Into<String>) -> ShardMap {
        let nodes = BTreeMap::from([(
            node,
            NodeRecord {
                id: node,
                addr: addr.into(),
                state: NodeState::Active,
            },
        )]);
        let shards = BTreeMap::from([(
            ShardId::ROOT,
            ShardRecord {
                id: ShardId::ROOT,
                graft: "/".to_string(),
                parent: None,
                members: vec![node],
                learners: Vec::new(),
                epoch: Epoch(1),
                leader_hint: None,
                state: ShardState::Serving,
            },
        )]);
        ShardMap {
            cluster,
            revision: Revision(0),
            nodes,
            shards,
            next_shard: 1,
        }
    }

    /// The shard with this id.
    pub fn shard(&self, id: ShardId) -> Result<&ShardRecord, crate::RouterError> {
        self.shards
            .get(&id)
            .ok_or(crate::RouterError::UnknownShard { shard: id })
    }

    /// A shard id never used in this map's history (above every current one and every
    /// removed one), and records it as used; `None` when all 65,535 are spent.
    pub fn allocate_shard_id(&mut self) -> Option<ShardId> {
        let above_current = self
            .shards
            .keys()
            .next_back()
            .map_or(Some(0), |s| s.0.checked_add(1))?;
        let id = above_current.max(self.next_shard);
        self.next_shard = id.checked_add(1)?;
        Some(ShardId(id))
    }

    /// The node with this id, if the map knows it.
    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    /// The shards that have a replica (voter or learner) on `node`.
    pub fn shards_on(&self, node: NodeId) -> Vec<&ShardRecord> {
        self.shards
            .values()
            .filter(|s| s.members.contains(&node) || s.learners.contains(&node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_high_bits_name_the_shard() {
        assert_eq!(ShardId::of_inode(0), ShardId(0));
        assert_eq!(ShardId::of_inode((7u64 << 48) | 12345), ShardId(7));
        assert_eq!(ShardId::of_inode(u64::MAX), ShardId(u16::MAX));
    }

    #[test]
    fn shard_ids_are_never_reused() {
        let mut map = ShardMap::bootstrap(ClusterId::new("c").expect("valid"), NodeId(1), "h:1");
        let first = map.allocate_shard_id().expect("an id");
        assert_eq!(first, ShardId(1));
        // Shard 1 was removed before it ever appeared in `shards`: 1 stays spent.
        assert_eq!(map.allocate_shard_id(), Some(ShardId(2)));
        // An old map without the counter still allocates above every shard.
        map.next_shard = 0;
        assert_eq!(map.allocate_shard_id(), Some(ShardId(1)));
        map.next_shard = u16::MAX;
        assert_eq!(map.allocate_shard_id(), None);
    }

    #[test]
    fn cluster_ids_are_key_safe() {
        assert!(ClusterId::new("prod-1.eu_west").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(ClusterId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<ClusterId>("\"a/b\"").is_err());
    }

    #[test]
    fn map_json_round_trips_with_integer_keys() {
        let map = ShardMap::bootstrap(ClusterId::new("c").expect("valid"), NodeId(3), "h:1");
        let json = serde_json::to_string(&map).expect("serialise");
        assert!(json.contains("\"members\":[3]"), "{json}");
        let back: ShardMap = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, map);
        assert_eq!(map.to_string_ids(), "node 3 shard 0");
    }

    impl ShardMap {
        fn to_string_ids(&self) -> String {
            let n = self.nodes.keys().next().expect("one node");
            let s = self.shards.keys().next().expect("one shard");
            format!("node {n} shard {s}")
        }
    }
}
