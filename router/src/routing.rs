//! Routing over the shard map: pure functions, no I/O.
//!
//! The namespace is one global tree. Each shard owns the subtree below its **graft path**
//! except the subtrees of shards grafted further down. A path belongs to the shard whose
//! graft is its longest prefix **on component boundaries** (`/a/bc` is not under `/a/b`),
//! and inside that shard it has the **local path** left after removing the graft
//! (`/` for the graft point itself, whose directory is the child shard's root).
//!
//! # Invariants (checked by [`ShardMap::validate`])
//!
//! - Shard 0 exists, is grafted at `/` and has no parent, so every path routes somewhere.
//! - Graft paths are absolute and normalised, and no two shards share one.
//! - A shard's `parent` is the shard that routing sends its graft point's parent directory
//!   to: the shard whose namespace holds the graft entry.
//! - Every shard has at least one voter, every replica names a known node, once.
//!
//! [`ShardMap::validate_successor`] adds the rules for a change: the cluster never changes,
//! epochs never go back, and a change of members, learners, graft or parent bumps the epoch.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{MapError, RouterError};
use crate::types::{NodeId, ShardId, ShardMap, ShardRecord, ShardState};

/// Where a global path lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The shard that owns the path.
    pub shard: ShardId,
    /// The path inside that shard's own namespace, rooted at `/`.
    pub local_path: String,
    /// The shard's graft path (the prefix that was removed).
    pub graft: String,
}

/// Checks that `path` is absolute and normalised: starts with `/`, has no empty, `.` or
/// `..` component, no trailing `/` (except `/` itself) and no NUL byte.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("not absolute");
    }
    if path == "/" {
        return Ok(());
    }
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    if path.ends_with('/') {
        return Err("has a trailing '/'");
    }
    for component in path[1..].split('/') {
        match component {
            "" => return Err("has an empty component"),
            "." | ".." => return Err("has a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

fn checked(path: &str) -> Result<(), RouterError> {
    check_path(path).map_err(|reason| RouterError::InvalidPath {
        path: path.to_string(),
        reason,
    })
}

/// Whether `path` is `prefix` or lies below it, on component boundaries.
/// Both must be normalised.
fn is_at_or_under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && path.as_bytes()[prefix.len()] == b'/')
}

/// The parent directory of a normalised path other than `/`.
fn parent_dir(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// `graft` + `local`, both normalised.
fn join(graft: &str, local: &str) -> String {
    match (graft, local) {
        ("/", _) => local.to_string(),
        (_, "/") => graft.to_string(),
        _ => format!("{graft}{local}"),
    }
}

impl ShardMap {
    /// The shard whose graft is the longest prefix of `path` (normalised), if any.
    fn owner_of(&self, path: &str) -> Option<&ShardRecord> {
        self.shards
            .values()
            .filter(|s| is_at_or_under(path, &s.graft))
            .max_by_key(|s| s.graft.len())
    }

    /// The shard that serves `path`: like `owner_of`, but a shard still being created is
    /// not routed to (its graft entry may not exist yet), so its graft path still belongs
    /// to the shard above it.
    fn server_of(&self, path: &str) -> Option<&ShardRecord> {
        self.shards
            .values()
            .filter(|s| s.state != ShardState::Creating && is_at_or_under(path, &s.graft))
            .max_by_key(|s| s.graft.len())
    }

    /// Routes a global path to its shard and local path.
    ///
    /// `path` must be absolute and normalised ([`check_path`]); otherwise `INVALID_PATH`.
    /// The graft path itself routes to the child shard with local path `/`. Shards in
    /// [`ShardState::Creating`] are skipped: until their graft entry exists, their graft
    /// path is an ordinary path of the shard above.
    pub fn route_path(&self, path: &str) -> Result<Route, RouterError> {
        checked(path)?;
        let shard = self.server_of(path).ok_or(MapError::RootMissing)?;
        let local_path = if shard.graft == "/" {
            path.to_string()
        } else if path.len() == shard.graft.len() {
            "/".to_string()
        } else {
            path[shard.graft.len()..].to_string()
        };
        Ok(Route {
            shard: shard.id,
            local_path,
            graft: shard.graft.clone(),
        })
    }

    /// The shard an inode id belongs to (its high 16 bits). Needs no lookup; use
    /// [`ShardMap::shard`] to check that the shard exists.
    pub fn route_inode(&self, inode: u64) -> ShardId {
        ShardId::of_inode(inode)
    }

    /// The global path of `local_path` in `shard`'s namespace: the inverse of
    /// [`ShardMap::route_path`]. (A local path that reaches into a child shard's graft point
    /// names the graft entry; its global path routes to the child.)
    pub fn to_global(&self, shard: ShardId, local_path: &str) -> Result<String, RouterError> {
        checked(local_path)?;
        Ok(join(&self.shard(shard)?.graft, local_path))
    }

    /// The shards grafted strictly below `path` (at any depth), in shard-id order.
    ///
    /// Empty means the subtree at `path` lies in one shard: a snapshot of it is possible,
    /// and a recursive watch of it needs no fan-out. Returns a `Result` rather than a bare
    /// list so that a malformed path cannot pass as "no grafts below".
    pub fn grafts_under(&self, path: &str) -> Result<Vec<&ShardRecord>, RouterError> {
        checked(path)?;
        Ok(self
            .shards
            .values()
            .filter(|s| s.graft != path && is_at_or_under(&s.graft, path))
            .collect())
    }

    /// The shards whose graft entry sits directly in directory `local_dir` of `shard`'s
    /// namespace (the entries a listing of that directory must show as graft points), in
    /// shard-id order.
    pub fn child_grafts(
        &self,
        shard: ShardId,
        local_dir: &str,
    ) -> Result<Vec<&ShardRecord>, RouterError> {
        let dir = self.to_global(shard, local_dir)?;
        Ok(self
            .shards
            .values()
            .filter(|c| c.parent == Some(shard) && c.graft != "/" && parent_dir(&c.graft) == dir)
            .collect())
    }

    /// Checks every invariant of a stored map (see the [module docs](self)).
    pub fn validate(&self) -> Result<(), MapError> {
        for (key, node) in &self.nodes {
            if *key != node.id {
                return Err(MapError::IdMismatch {
                    what: "node",
                    key: key.0,
                    id: node.id.0,
                });
            }
            let addr_ok = node.addr.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            });
            if !addr_ok {
                return Err(MapError::BadNodeAddr {
                    node: node.id,
                    addr: node.addr.clone(),
                });
            }
        }

        let root = self
            .shards
            .get(&ShardId::ROOT)
            .ok_or(MapError::RootMissing)?;
        if root.graft != "/" || root.parent.is_some() {
            return Err(MapError::RootMisplaced {
                graft: root.graft.clone(),
                parent: root.parent,
            });
        }

        let mut grafts: BTreeMap<&str, ShardId> = BTreeMap::new();
        for (key, shard) in &self.shards {
            if *key != shard.id {
                return Err(MapError::IdMismatch {
                    what: "shard",
                    key: u64::from(key.0),
                    id: u64::from(shard.id.0),
                });
            }
            check_path(&shard.graft).map_err(|reason| MapError::BadGraftPath {
                shard: shard.id,
                path: shard.graft.clone(),
                reason,
            })?;
            if let Some(first) = grafts.insert(&shard.graft, shard.id) {
                return Err(MapError::DuplicateGraft {
                    path: shard.graft.clone(),
                    first,
                    second: shard.id,
                });
            }
            self.check_replicas(shard)?;
        }

        for shard in self.shards.values().filter(|s| s.id != ShardId::ROOT) {
            let expected = self
                .owner_of(parent_dir(&shard.graft))
                .map(|s| s.id)
                .unwrap_or(ShardId::ROOT);
            if shard.parent != Some(expected) {
                return Err(MapError::WrongParent {
                    shard: shard.id,
                    expected,
                    found: shard.parent,
                });
            }
        }
        Ok(())
    }

    fn check_replicas(&self, shard: &ShardRecord) -> Result<(), MapError> {
        if shard.members.is_empty() {
            return Err(MapError::NoMembers { shard: shard.id });
        }
        let mut seen = BTreeSet::new();
        for node in shard.members.iter().chain(&shard.learners) {
            if !self.nodes.contains_key(node) {
                return Err(MapError::UnknownNode {
                    shard: shard.id,
                    node: *node,
                });
            }
            if !seen.insert(*node) {
                return Err(MapError::DuplicateReplica {
                    shard: shard.id,
                    node: *node,
                });
            }
        }
        if let Some(node) = shard.leader_hint {
            if !self.nodes.contains_key(&node) {
                return Err(MapError::UnknownNode {
                    shard: shard.id,
                    node,
                });
            }
        }
        Ok(())
    }

    /// Checks that `next` may replace `self`: `next` is valid, names the same cluster, no
    /// shard's epoch goes back, and every shard whose members, learners, graft or parent
    /// change gets a higher epoch. (State and leader-hint changes need no new epoch.)
    pub fn validate_successor(&self, next: &ShardMap) -> Result<(), MapError> {
        next.validate()?;
        if self.cluster != next.cluster {
            return Err(MapError::ClusterChanged {
                from: self.cluster.clone(),
                to: next.cluster.clone(),
            });
        }
        for (id, new) in &next.shards {
            let Some(old) = self.shards.get(id) else {
                continue;
            };
            if new.epoch < old.epoch {
                return Err(MapError::EpochRegressed {
                    shard: *id,
                    from: old.epoch,
                    to: new.epoch,
                });
            }
            let set = |v: &[NodeId]| v.iter().copied().collect::<BTreeSet<_>>();
            let reconfigured = set(&old.members) != set(&new.members)
                || set(&old.learners) != set(&new.learners)
                || old.graft != new.graft
                || old.parent != new.parent;
            if reconfigured && new.epoch == old.epoch {
                return Err(MapError::EpochNotBumped {
                    shard: *id,
                    epoch: new.epoch,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ClusterId, Epoch, NodeRecord, NodeState};
    use proptest::prelude::*;

    fn shard(id: u16, graft: &str, parent: Option<u16>) -> ShardRecord {
        ShardRecord {
            id: ShardId(id),
            graft: graft.to_string(),
            parent: parent.map(ShardId),
            members: vec![NodeId(1)],
            learners: vec![],
            epoch: Epoch(1),
            leader_hint: None,
            state: ShardState::Serving,
        }
    }

    /// Root at `/`, shard 1 at `/a/b`, shard 2 at `/a/b/c/d` (inside shard 1), shard 3 at
    /// `/x` (inside the root).
    fn sample() -> ShardMap {
        let mut map = ShardMap::bootstrap(ClusterId::new("t").expect("valid"), NodeId(1), "h:1");
        map.nodes.insert(
            NodeId(2),
            NodeRecord {
                id: NodeId(2),
                addr: "h:2".into(),
                state: NodeState::Active,
            },
        );
        for s in [
            shard(1, "/a/b", Some(0)),
            shard(2, "/a/b/c/d", Some(1)),
            shard(3, "/x", Some(0)),
        ] {
            map.shards.insert(s.id, s);
        }
        map.validate().expect("sample is valid");
        map
    }

    fn route(map: &ShardMap, path: &str) -> (u16, String) {
        let r = map.route_path(path).expect("routable");
        (r.shard.0, r.local_path)
    }

    #[test]
    fn longest_prefix_on_component_boundaries() {
        let map = sample();
        assert_eq!(route(&map, "/"), (0, "/".into()));
        assert_eq!(route(&map, "/a"), (0, "/a".into()));
        assert_eq!(route(&map, "/a/bc"), (0, "/a/bc".into()));
        assert_eq!(route(&map, "/a/b"), (1, "/".into()));
        assert_eq!(route(&map, "/a/b/c"), (1, "/c".into()));
        assert_eq!(route(&map, "/a/b/c/d"), (2, "/".into()));
        assert_eq!(route(&map, "/a/b/c/d/e/f"), (2, "/e/f".into()));
        assert_eq!(route(&map, "/a/b/c/dd"), (1, "/c/dd".into()));
        assert_eq!(route(&map, "/x"), (3, "/".into()));
        assert_eq!(route(&map, "/xy"), (0, "/xy".into()));
        assert_eq!(map.route_path("/a/b/c").expect("routable").graft, "/a/b");
    }

    #[test]
    fn unnormalised_paths_are_refused() {
        let map = sample();
        for bad in ["", "a", "/a/", "//a", "/a//b", "/a/./b", "/a/..", "/a\0b"] {
            let err = map.route_path(bad).expect_err(bad);
            assert_eq!(err.code(), "INVALID_PATH", "{bad:?}");
        }
    }

    #[test]
    fn shards_being_created_are_not_routed_to() {
        let mut map = sample();
        map.shards.get_mut(&ShardId(3)).expect("shard 3").state = ShardState::Creating;
        assert_eq!(route(&map, "/x/y"), (0, "/x/y".to_string()));
        assert_eq!(route(&map, "/x"), (0, "/x".to_string()));
        map.shards.get_mut(&ShardId(3)).expect("shard 3").state = ShardState::Removing;
        assert_eq!(route(&map, "/x/y"), (3, "/y".to_string()));
    }

    #[test]
    fn inode_routes_by_high_bits() {
        let map = sample();
        assert_eq!(map.route_inode((3u64 << 48) | 99), ShardId(3));
        assert_eq!(map.route_inode(42), ShardId::ROOT);
    }

    #[test]
    fn to_global_inverts_route() {
        let map = sample();
        assert_eq!(map.to_global(ShardId(0), "/").expect("ok"), "/");
        assert_eq!(map.to_global(ShardId(1), "/").expect("ok"), "/a/b");
        assert_eq!(map.to_global(ShardId(2), "/e").expect("ok"), "/a/b/c/d/e");
        assert_eq!(map.to_global(ShardId(0), "/q/r").expect("ok"), "/q/r");
        let err = map.to_global(ShardId(9), "/").expect_err("unknown");
        assert_eq!(err.code(), "UNKNOWN_SHARD");
        let err = map.to_global(ShardId(1), "e").expect_err("relative");
        assert_eq!(err.code(), "INVALID_PATH");
    }

    #[test]
    fn grafts_under_is_strict_and_on_boundaries() {
        let map = sample();
        let ids = |p: &str| -> Vec<u16> {
            map.grafts_under(p)
                .expect("valid path")
                .iter()
                .map(|s| s.id.0)
                .collect()
        };
        assert_eq!(ids("/"), vec![1, 2, 3]);
        assert_eq!(ids("/a"), vec![1, 2]);
        assert_eq!(ids("/a/b"), vec![2]);
        assert_eq!(ids("/a/b/c/d"), Vec::<u16>::new());
        assert_eq!(ids("/a/bc"), Vec::<u16>::new());
        assert_eq!(ids("/q"), Vec::<u16>::new());
        assert!(map.grafts_under("a/").is_err());
    }

    #[test]
    fn child_grafts_lists_entries_of_one_directory() {
        let map = sample();
        let ids = |s: u16, d: &str| -> Vec<u16> {
            map.child_grafts(ShardId(s), d)
                .expect("valid")
                .iter()
                .map(|s| s.id.0)
                .collect()
        };
        assert_eq!(ids(0, "/"), vec![3]);
        assert_eq!(ids(0, "/a"), vec![1]);
        assert_eq!(ids(1, "/c"), vec![2]);
        assert_eq!(ids(1, "/"), Vec::<u16>::new());
        assert_eq!(ids(2, "/"), Vec::<u16>::new());
    }

    fn rejects(map: &ShardMap) -> MapError {
        map.validate().expect_err("malformed map accepted")
    }

    #[test]
    fn validate_rejects_root_problems() {
        let mut map = sample();
        map.shards.remove(&ShardId(0));
        assert_eq!(rejects(&map), MapError::RootMissing);

        let mut map = sample();
        map.shards.get_mut(&ShardId(0)).expect("root").graft = "/r".into();
        assert!(matches!(rejects(&map), MapError::RootMisplaced { .. }));

        let mut map = sample();
        map.shards.get_mut(&ShardId(3)).expect("3").graft = "/".into();
        assert!(matches!(
            rejects(&map),
            MapError::DuplicateGraft {
                first: ShardId(0),
                second: ShardId(3),
                ..
            }
        ));
    }

    #[test]
    fn validate_rejects_bad_graft_paths() {
        for bad in ["x", "/x/", "/x//y", "/x/./y", "/x/..", "/x\0", ""] {
            let mut map = sample();
            map.shards.get_mut(&ShardId(3)).expect("3").graft = bad.into();
            assert!(
                matches!(
                    rejects(&map),
                    MapError::BadGraftPath {
                        shard: ShardId(3),
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn validate_rejects_duplicate_grafts() {
        let mut map = sample();
        map.shards.get_mut(&ShardId(3)).expect("3").graft = "/a/b".into();
        assert_eq!(
            rejects(&map),
            MapError::DuplicateGraft {
                path: "/a/b".into(),
                first: ShardId(1),
                second: ShardId(3)
            }
        );
    }

    #[test]
    fn validate_requires_the_routing_parent() {
        let mut map = sample();
        map.shards.get_mut(&ShardId(2)).expect("2").parent = Some(ShardId(0));
        assert_eq!(
            rejects(&map),
            MapError::WrongParent {
                shard: ShardId(2),
                expected: ShardId(1),
                found: Some(ShardId(0))
            }
        );
        let mut map = sample();
        map.shards.get_mut(&ShardId(3)).expect("3").parent = None;
        assert!(matches!(
            rejects(&map),
            MapError::WrongParent { found: None, .. }
        ));
        // A graft directly below another graft point lives in the child's namespace root.
        let mut map = sample();
        map.shards.insert(ShardId(4), shard(4, "/a/b/z", Some(1)));
        map.validate().expect("parent 1 owns /a/b");
        // `/a/bc/z` is not under `/a/b`: the root holds its parent directory.
        map.shards.insert(ShardId(5), shard(5, "/a/bc/z", Some(1)));
        assert!(matches!(
            rejects(&map),
            MapError::WrongParent {
                shard: ShardId(5),
                expected: ShardId(0),
                ..
            }
        ));
    }

    #[test]
    fn validate_checks_replicas_and_nodes() {
        let mut map = sample();
        map.shards.get_mut(&ShardId(1)).expect("1").members.clear();
        assert_eq!(rejects(&map), MapError::NoMembers { shard: ShardId(1) });

        let mut map = sample();
        map.shards
            .get_mut(&ShardId(1))
            .expect("1")
            .members
            .push(NodeId(9));
        assert_eq!(
            rejects(&map),
            MapError::UnknownNode {
                shard: ShardId(1),
                node: NodeId(9)
            }
        );

        let mut map = sample();
        map.shards
            .get_mut(&ShardId(1))
            .expect("1")
            .members
            .push(NodeId(1));
        assert!(matches!(rejects(&map), MapError::DuplicateReplica { .. }));

        let mut map = sample();
        map.shards
            .get_mut(&ShardId(1))
            .expect("1")
            .learners
            .push(NodeId(1));
        assert!(matches!(rejects(&map), MapError::DuplicateReplica { .. }));

        let mut map = sample();
        map.shards.get_mut(&ShardId(1)).expect("1").leader_hint = Some(NodeId(7));
        assert!(matches!(rejects(&map), MapError::UnknownNode { .. }));

        let mut map = sample();
        map.nodes.get_mut(&NodeId(2)).expect("2").addr = "nohost".into();
        assert!(matches!(rejects(&map), MapError::BadNodeAddr { .. }));

        let mut map = sample();
        let mut record = map.nodes[&NodeId(2)].clone();
        record.id = NodeId(5);
        map.nodes.insert(NodeId(2), record);
        assert!(matches!(
            rejects(&map),
            MapError::IdMismatch { what: "node", .. }
        ));
    }

    #[test]
    fn successor_rules() {
        let old = sample();
        let mut next = old.clone();
        next.shards
            .get_mut(&ShardId(1))
            .expect("1")
            .members
            .push(NodeId(2));
        assert!(matches!(
            old.validate_successor(&next),
            Err(MapError::EpochNotBumped { .. })
        ));
        next.shards.get_mut(&ShardId(1)).expect("1").epoch = Epoch(2);
        old.validate_successor(&next).expect("bumped");

        let mut next = old.clone();
        next.shards.get_mut(&ShardId(1)).expect("1").epoch = Epoch(0);
        assert!(matches!(
            old.validate_successor(&next),
            Err(MapError::EpochRegressed { .. })
        ));

        let mut next = old.clone();
        next.shards.get_mut(&ShardId(1)).expect("1").leader_hint = Some(NodeId(2));
        next.shards.get_mut(&ShardId(1)).expect("1").members = vec![NodeId(1)];
        old.validate_successor(&next).expect("hints need no epoch");

        let mut next = old.clone();
        next.cluster = ClusterId::new("other").expect("valid");
        assert!(matches!(
            old.validate_successor(&next),
            Err(MapError::ClusterChanged { .. })
        ));
    }

    /// A valid map with shards grafted at `grafts` (parents computed by routing).
    fn map_with(grafts: &BTreeSet<String>) -> ShardMap {
        let mut map = ShardMap::bootstrap(ClusterId::new("p").expect("valid"), NodeId(1), "h:1");
        let mut by_len: Vec<&String> = grafts.iter().collect();
        by_len.sort_by_key(|g| g.len());
        for (i, graft) in by_len.into_iter().enumerate() {
            let id = u16::try_from(i + 1).expect("few shards");
            let parent = map.route_path(parent_dir(graft)).expect("routable").shard;
            map.shards
                .insert(ShardId(id), shard(id, graft, Some(parent.0)));
        }
        map
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "c"]), 0..5)
            .prop_map(|parts| format!("/{}", parts.join("/")))
    }

    proptest! {
        #[test]
        fn route_and_to_global_round_trip(
            grafts in prop::collection::btree_set(
                path_strategy().prop_filter("not root", |p| p != "/"), 0..6),
            path in path_strategy(),
            local in path_strategy(),
            pick in any::<prop::sample::Index>(),
        ) {
            let map = map_with(&grafts);
            prop_assert_eq!(map.validate(), Ok(()));

            // global -> (shard, local) -> global is the identity.
            let route = map.route_path(&path).expect("routable");
            prop_assert!(is_at_or_under(&path, &route.graft));
            prop_assert_eq!(map.to_global(route.shard, &route.local_path).expect("known"), path.clone());
            // Nothing grafted between the owner's graft and the path.
            for s in map.shards.values() {
                if is_at_or_under(&path, &s.graft) {
                    prop_assert!(s.graft.len() <= route.graft.len());
                }
            }

            // (shard, local) -> global -> route is the identity unless the local path reaches
            // into a graft point, in which case it lands in a shard grafted at or below it.
            let ids: Vec<ShardId> = map.shards.keys().copied().collect();
            let shard = ids[pick.index(ids.len())];
            let global = map.to_global(shard, &local).expect("known");
            let back = map.route_path(&global).expect("routable");
            if back.shard == shard {
                prop_assert_eq!(back.local_path, local);
            } else {
                let own = &map.shards[&shard].graft;
                prop_assert!(is_at_or_under(&back.graft, own) && back.graft.len() > own.len());
            }
        }
    }
}
