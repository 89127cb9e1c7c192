//! Everything the control plane persists, in one place: the etcd key layout and the encodings
//! of the stored map and of the in-process control plane's state file.
//!
//! # etcd keys
//!
//! All keys live under a configurable prefix ([`DEFAULT_PREFIX`] = `/nokv/`), then the
//! cluster id, so one etcd can hold several clusters:
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `{prefix}{cluster}/map` | the [`ShardMap`] as JSON, without its revision ([`encode_map`]) | durable; every change is a transaction comparing this key's `mod_revision` |
//! | `{prefix}{cluster}/alive/{node}` | the node id in decimal | attached to the node's lease: gone when the node stops renewing it |
//!
//! The map's [`Revision`] is the map key's `mod_revision`; it is not stored in the value.
//!
//! There is deliberately no `{prefix}current-cluster` key: the cluster id is configuration
//! that `nokv cluster init` chooses and every node and client is given, like the etcd
//! endpoints. A "current cluster" pointer would be a second source of truth and would make
//! two clusters sharing one etcd ambiguous.
//!
//! # Stored map format
//!
//! `{"format": 1, "cluster": ..., "nodes": {...}, "shards": {...}}`. The `format` field
//! lets a later version change the encoding; a reader refuses formats it does not know.
//! A stored map that does not decode or does not [validate](ShardMap::validate) is
//! reported as `CORRUPT_STATE`, never a panic.
//!
//! # In-process state file ([`MemControlPlane`](crate::MemControlPlane) with a path)
//!
//! `{"format": "nokv-router-mem/1", "store_revision": N, "map": {... with "revision"}}`,
//! replaced atomically (temporary file, fsync, rename, fsync of the directory). No checksum:
//! the rename means a reader sees a whole file, and it is a development convenience
//! (`nokv dev`) meant to stay hand-readable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::RouterError;
use crate::types::{ClusterId, NodeId, NodeRecord, Revision, ShardId, ShardMap, ShardRecord};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/nokv/";

/// The current format of the stored map.
const MAP_FORMAT: u32 = 1;

/// The current format of the in-process state file.
pub(crate) const MEM_FORMAT: &str = "nokv-router-mem/1";

/// The keys of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    base: String,
}

impl Keys {
    /// The keys of `cluster` under `prefix`, which must start and end with `/`.
    pub fn new(prefix: &str, cluster: &ClusterId) -> Result<Keys, RouterError> {
        if !prefix.starts_with('/') || !prefix.ends_with('/') {
            return Err(RouterError::InvalidArgument(format!(
                "key prefix {prefix:?} must start and end with '/'"
            )));
        }
        Ok(Keys {
            base: format!("{prefix}{cluster}/"),
        })
    }

    /// `{prefix}{cluster}/map`.
    pub fn map(&self) -> String {
        format!("{}map", self.base)
    }

    /// `{prefix}{cluster}/alive/`: the prefix of every liveness key.
    pub fn alive_prefix(&self) -> String {
        format!("{}alive/", self.base)
    }

    /// `{prefix}{cluster}/alive/{node}`.
    pub fn alive(&self, node: NodeId) -> String {
        format!("{}{node}", self.alive_prefix())
    }

    /// The node of a liveness key.
    pub fn parse_alive(&self, key: &[u8]) -> Result<NodeId, RouterError> {
        let corrupt = |reason: &str| RouterError::Corrupt {
            location: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_string(),
        };
        let key = std::str::from_utf8(key).map_err(|_| corrupt("key is not UTF-8"))?;
        let id = key
            .strip_prefix(&self.alive_prefix())
            .ok_or_else(|| corrupt("not a liveness key"))?;
        id.parse::<u64>()
            .map(NodeId)
            .map_err(|_| corrupt("liveness key does not end in a node id"))
    }
}

#[derive(Serialize)]
struct StoredMapRef<'a> {
    format: u32,
    cluster: &'a ClusterId,
    nodes: &'a BTreeMap<NodeId, NodeRecord>,
    shards: &'a BTreeMap<ShardId, ShardRecord>,
    next_shard: u16,
}

#[derive(Deserialize)]
struct StoredMap {
    format: u32,
    cluster: ClusterId,
    nodes: BTreeMap<NodeId, NodeRecord>,
    shards: BTreeMap<ShardId, ShardRecord>,
    #[serde(default)]
    next_shard: u16,
}

/// The stored value of a map (its revision is not part of it).
pub fn encode_map(map: &ShardMap) -> Vec<u8> {
    serde_json::to_vec(&StoredMapRef {
        format: MAP_FORMAT,
        cluster: &map.cluster,
        nodes: &map.nodes,
        shards: &map.shards,
        next_shard: map.next_shard,
    })
    .expect("a shard map always serialises: string and integer keys only")
}

/// Decodes a stored map of `cluster`, read from `location` at `revision`, and checks it.
pub fn decode_map(
    bytes: &[u8],
    revision: Revision,
    cluster: &ClusterId,
    location: &str,
) -> Result<ShardMap, RouterError> {
    let corrupt = |reason: String| RouterError::Corrupt {
        location: location.to_string(),
        reason,
    };
    let stored: StoredMap =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not a shard map: {e}")))?;
    if stored.format != MAP_FORMAT {
        return Err(corrupt(format!(
            "unknown map format {} (this build reads {MAP_FORMAT})",
            stored.format
        )));
    }
    if &stored.cluster != cluster {
        return Err(corrupt(format!(
            "map names cluster {}, stored under cluster {cluster}",
            stored.cluster
        )));
    }
    let map = ShardMap {
        cluster: stored.cluster,
        revision,
        nodes: stored.nodes,
        shards: stored.shards,
        next_shard: stored.next_shard,
    };
    map.validate()
        .map_err(|e| corrupt(format!("stored map is invalid: {e}")))?;
    Ok(map)
}

/// Decodes a map as a node served it (`GetShardMap`), whatever cluster it names: the reader
/// (the SDK) knows nodes, not the cluster's name. Checked like [`decode_map`].
pub fn decode_served_map(
    bytes: &[u8],
    revision: Revision,
    location: &str,
) -> Result<ShardMap, RouterError> {
    #[derive(Deserialize)]
    struct Named {
        cluster: ClusterId,
    }
    let named: Named = serde_json::from_slice(bytes).map_err(|e| RouterError::Corrupt {
        location: location.to_string(),
        reason: format!("not a shard map: {e}"),
    })?;
    decode_map(bytes, revision, &named.cluster, location)
}

/// The in-process control plane's state file.
#[derive(Serialize, Deserialize)]
pub(crate) struct MemFile {
    pub format: String,
    pub store_revision: u64,
    pub map: Option<ShardMap>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterId {
        ClusterId::new("c1").expect("valid")
    }

    #[test]
    fn key_layout() {
        let keys = Keys::new(DEFAULT_PREFIX, &cluster()).expect("valid");
        assert_eq!(keys.map(), "/nokv/c1/map");
        assert_eq!(keys.alive(NodeId(7)), "/nokv/c1/alive/7");
        assert_eq!(
            keys.parse_alive(b"/nokv/c1/alive/7").expect("ok"),
            NodeId(7)
        );
        assert_eq!(
            keys.parse_alive(b"/nokv/c1/alive/x")
                .expect_err("bad")
                .code(),
            "CORRUPT_STATE"
        );
        assert!(Keys::new("nokv", &cluster()).is_err());
    }

    #[test]
    fn stored_map_round_trips_without_revision() {
        let mut map = ShardMap::bootstrap(cluster(), NodeId(1), "h:1");
        map.revision = Revision(99);
        let bytes = encode_map(&map);
        assert!(!String::from_utf8_lossy(&bytes).contains("revision"));
        let back = decode_map(&bytes, Revision(5), &cluster(), "k").expect("decodes");
        assert_eq!(back.revision, Revision(5));
        assert_eq!(back.shards, map.shards);
    }

    #[test]
    fn corrupt_values_are_errors() {
        let c = cluster();
        for bad in [
            &b"{"[..],
            b"null",
            b"{\"format\":2,\"cluster\":\"c1\",\"nodes\":{},\"shards\":{}}",
            b"{\"format\":1,\"cluster\":\"c2\",\"nodes\":{},\"shards\":{}}",
            b"{\"format\":1,\"cluster\":\"c1\",\"nodes\":{},\"shards\":{}}",
        ] {
            let err = decode_map(bad, Revision(1), &c, "k").expect_err("corrupt accepted");
            assert_eq!(
                err.code(),
                "CORRUPT_STATE",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
