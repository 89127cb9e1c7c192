//! One tree over many shards: how the SDK routes a request.
//!
//! A client made by [`Client::new`](crate::Client::new) is *routed*. Before sending a
//! request it rewrites every global path in it into the local path of the shard that owns
//! it (the shard whose graft is the path's longest prefix, on component boundaries, by the
//! cached shard map) and sends it to that shard. Ids that name their shard route by their
//! high 16 bits: inode ids, and the snapshot and upload ids the SDK hands out (a shard
//! numbers its snapshots and uploads from 1; the SDK puts the shard in the high bits, so
//! shard 0's ids are unchanged).
//!
//! An *entry* (a name in a directory: create, mkdir, unlink, rmdir, rename, publish) routes
//! by its parent directory, so the graft point `/data` of a shard grafted there is the
//! entry `data` of the shard above, where renaming or removing it fails with `EBUSY`. An
//! *inode* path (stat, list, read, setattr) routes by the whole path, so `/data` is the
//! grafted shard's root. A request whose paths fall in two shards (rename, hard link) is
//! refused here with `EXDEV`: atomic cross-shard rename does not exist yet.
//!
//! A handle made by [`Client::for_shard`](crate::Client::for_shard) is *pinned*: its paths
//! and ids are that shard's own and are sent unchanged.
//!
//! Pure functions over a [`ShardMap`]; the map cache and the retry on `WRONG_SHARD` live
//! in `client.rs`.

use nokv_holt::{
    Applied, EntryRef, InodeRef, Op, Query, QueryResult, ShardId, SnapshotId, UploadId,
};
use nokv_router::ShardMap;

use crate::error::ClientError;

/// Bits of a snapshot or upload id that are the shard-local number.
const LOCAL_BITS: u32 = 48;
const LOCAL_MASK: u64 = (1 << LOCAL_BITS) - 1;

/// The shard a client-facing snapshot or upload id belongs to.
pub(crate) fn id_shard(id: u64) -> ShardId {
    ShardId((id >> LOCAL_BITS) as u16)
}

/// A shard-local snapshot or upload number as the SDK shows it.
pub(crate) fn global_id(shard: ShardId, local: u64) -> u64 {
    (u64::from(shard.0) << LOCAL_BITS) | (local & LOCAL_MASK)
}

pub(crate) fn local_id(id: u64) -> u64 {
    id & LOCAL_MASK
}

fn rshard(s: ShardId) -> nokv_router::ShardId {
    nokv_router::ShardId(s.0)
}

fn hshard(s: nokv_router::ShardId) -> ShardId {
    ShardId(s.0)
}

/// `path` with repeated and trailing slashes removed, or `None` when it is not a path the
/// engine accepts (left unchanged, for the engine to refuse with its own message).
pub(crate) fn normalized(path: &str) -> Option<String> {
    let components = nokv_holt::path::split_path(path).ok()?;
    Some(format!("/{}", components.join("/")))
}

/// The cross-device refusal for a request that spans shards.
fn cross_shard(what: &str, a: &(String, ShardId), b: &(String, ShardId)) -> ClientError {
    ClientError::Fs {
        code: "EXDEV".into(),
        errno: 18,
        message: format!(
            "{what}: {} is in shard {} and {} in shard {}; renames and hard links across \
             shards are not supported (copy, then remove)",
            a.0, a.1 .0, b.0, b.1 .0
        ),
    }
}

/// Rewrites the references of one request and works out the one shard they all lie in.
struct Placer<'m> {
    map: &'m ShardMap,
    what: &'static str,
    /// The first reference placed, and its shard.
    placed: Option<(String, ShardId)>,
}

impl<'m> Placer<'m> {
    fn new(map: &'m ShardMap, what: &'static str) -> Placer<'m> {
        Placer {
            map,
            what,
            placed: None,
        }
    }

    fn place(&mut self, shown: String, shard: ShardId) -> Result<(), ClientError> {
        match &self.placed {
            None => {
                self.placed = Some((shown, shard));
                Ok(())
            }
            Some(first) if first.1 == shard => Ok(()),
            Some(first) => Err(cross_shard(self.what, first, &(shown, shard))),
        }
    }

    fn route(&self, path: &str) -> Result<(ShardId, String), ClientError> {
        let route = self
            .map
            .route_path(path)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        Ok((hshard(route.shard), route.local_path))
    }

    /// A whole path: the inode it names.
    fn path(&mut self, path: String) -> Result<String, ClientError> {
        let Some(path) = normalized(&path) else {
            return Ok(path);
        };
        let (shard, local) = self.route(&path)?;
        self.place(path, shard)?;
        Ok(local)
    }

    /// A name in a directory: routed by the directory.
    fn entry_path(&mut self, path: String) -> Result<String, ClientError> {
        let Some(path) = normalized(&path) else {
            return Ok(path);
        };
        let Some((dir, name)) = path
            .rsplit_once('/')
            .filter(|(_, name)| !name.is_empty())
            .map(|(dir, name)| (dir.to_string(), name.to_string()))
        else {
            // `/` itself: the root's own shard says what it thinks of that.
            return self.path(path);
        };
        let dir = if dir.is_empty() { "/" } else { dir.as_str() };
        let (shard, local_dir) = self.route(dir)?;
        self.place(path, shard)?;
        Ok(match local_dir.as_str() {
            "/" => format!("/{name}"),
            _ => format!("{local_dir}/{name}"),
        })
    }

    fn entry(&mut self, at: EntryRef) -> Result<EntryRef, ClientError> {
        Ok(match at {
            EntryRef::Path(p) => EntryRef::Path(self.entry_path(p)?),
            EntryRef::Child { parent, name } => {
                self.place(format!("inode {parent}"), parent.shard())?;
                EntryRef::Child { parent, name }
            }
        })
    }

    fn inode(&mut self, inode: InodeRef) -> Result<InodeRef, ClientError> {
        Ok(match inode {
            InodeRef::Path(p) => InodeRef::Path(self.path(p)?),
            InodeRef::Id(id) => {
                self.place(format!("inode {id}"), id.shard())?;
                InodeRef::Id(id)
            }
        })
    }

    fn snapshot(&mut self, id: SnapshotId) -> Result<SnapshotId, ClientError> {
        self.place(format!("snapshot {}", id.0), id_shard(id.0))?;
        Ok(SnapshotId(local_id(id.0)))
    }

    fn upload(&mut self, id: UploadId) -> Result<UploadId, ClientError> {
        self.place(format!("upload {}", id.0), id_shard(id.0))?;
        Ok(UploadId(local_id(id.0)))
    }

    /// The shard everything was placed in; `default` when nothing named one.
    fn shard(&self, default: ShardId) -> ShardId {
        self.placed.as_ref().map_or(default, |p| p.1)
    }
}

/// The shard `op` belongs to and `op` in that shard's terms. Ops that name nothing
/// (maintenance: expiry, GC, retention) go to `default`.
pub(crate) fn route_op(
    map: &ShardMap,
    op: Op,
    default: ShardId,
) -> Result<(ShardId, Op), ClientError> {
    let mut p = Placer::new(map, "rename or link across shards");
    let op = match op {
        Op::Mkdir {
            at,
            mode,
            uid,
            gid,
            parents,
        } => Op::Mkdir {
            at: p.entry(at)?,
            mode,
            uid,
            gid,
            parents,
        },
        Op::Create { at, mode, uid, gid } => Op::Create {
            at: p.entry(at)?,
            mode,
            uid,
            gid,
        },
        Op::Symlink {
            at,
            target,
            uid,
            gid,
        } => Op::Symlink {
            at: p.entry(at)?,
            target,
            uid,
            gid,
        },
        Op::Link { inode, at } => Op::Link {
            inode: p.inode(inode)?,
            at: p.entry(at)?,
        },
        Op::Unlink { at } => Op::Unlink { at: p.entry(at)? },
        Op::Rmdir { at } => Op::Rmdir { at: p.entry(at)? },
        Op::Rename { from, to, mode } => Op::Rename {
            from: p.entry(from)?,
            to: p.entry(to)?,
            mode,
        },
        Op::SetAttr { inode, set } => Op::SetAttr {
            inode: p.inode(inode)?,
            set,
        },
        Op::SetXattr {
            inode,
            name,
            value,
            flag,
        } => Op::SetXattr {
            inode: p.inode(inode)?,
            name,
            value,
            flag,
        },
        Op::RemoveXattr { inode, name } => Op::RemoveXattr {
            inode: p.inode(inode)?,
            name,
        },
        Op::BeginPublish {
            at,
            mode,
            lease_ns,
            file_mode,
            uid,
            gid,
        } => Op::BeginPublish {
            at: p.entry(at)?,
            mode,
            lease_ns,
            file_mode,
            uid,
            gid,
        },
        Op::CommitPublish { upload, body } => Op::CommitPublish {
            upload: p.upload(upload)?,
            body,
        },
        Op::CommitPublishBatch { commits } => Op::CommitPublishBatch {
            commits: commits
                .into_iter()
                .map(|(u, b)| Ok((p.upload(u)?, b)))
                .collect::<Result<_, ClientError>>()?,
        },
        Op::CommitPublishIndexed { commits } => Op::CommitPublishIndexed {
            commits: commits
                .into_iter()
                .map(|mut c| {
                    c.upload = p.upload(c.upload)?;
                    Ok(c)
                })
                .collect::<Result<_, ClientError>>()?,
        },
        Op::AbortPublish { upload } => Op::AbortPublish {
            upload: p.upload(upload)?,
        },
        Op::RenewUpload { upload, lease_ns } => Op::RenewUpload {
            upload: p.upload(upload)?,
            lease_ns,
        },
        Op::CreateSnapshot { path, lease_ns } => Op::CreateSnapshot {
            path: p.path(path)?,
            lease_ns,
        },
        Op::RenewSnapshot { id, lease_ns } => Op::RenewSnapshot {
            id: p.snapshot(id)?,
            lease_ns,
        },
        Op::RemoveSnapshot { id } => Op::RemoveSnapshot {
            id: p.snapshot(id)?,
        },
        Op::CreateGraft { at, shard } => Op::CreateGraft {
            at: p.entry(at)?,
            shard,
        },
        Op::RemoveGraft { at, shard } => Op::RemoveGraft {
            at: p.entry(at)?,
            shard,
        },
        op @ (Op::ExpireUploads { .. }
        | Op::GcDone { .. }
        | Op::ExpireSnapshots { .. }
        | Op::SetWatchRetention { .. }
        | Op::CreateToken { .. }
        | Op::RevokeToken { .. }) => op,
    };
    Ok((p.shard(default), op))
}

/// The shard `query` belongs to and `query` in its terms. Listings of snapshots and
/// uploads name no shard; the caller fans them out ([`fans_out`]).
pub(crate) fn route_query(
    map: &ShardMap,
    query: Query,
    default: ShardId,
) -> Result<(ShardId, Query), ClientError> {
    let mut p = Placer::new(map, "a snapshot read outside the snapshot's shard");
    let query = place_query(&mut p, query)?;
    Ok((p.shard(default), query))
}

fn place_query(p: &mut Placer<'_>, query: Query) -> Result<Query, ClientError> {
    Ok(match query {
        Query::Lookup { parent, name } => {
            p.place(format!("inode {parent}"), parent.shard())?;
            Query::Lookup { parent, name }
        }
        Query::GetAttr { inode } => Query::GetAttr {
            inode: p.inode(inode)?,
        },
        Query::ReadDir { dir, after, limit } => Query::ReadDir {
            dir: p.inode(dir)?,
            after,
            limit,
        },
        Query::ReadDirBodies { dir, after, limit } => Query::ReadDirBodies {
            dir: p.inode(dir)?,
            after,
            limit,
        },
        Query::ReadLink { inode } => Query::ReadLink {
            inode: p.inode(inode)?,
        },
        Query::GetXattr { inode, name } => Query::GetXattr {
            inode: p.inode(inode)?,
            name,
        },
        Query::ListXattr { inode } => Query::ListXattr {
            inode: p.inode(inode)?,
        },
        Query::ReadBody { inode } => Query::ReadBody {
            inode: p.inode(inode)?,
        },
        Query::AtSnapshot { snapshot, query } => {
            let snapshot = p.snapshot(snapshot)?;
            Query::AtSnapshot {
                snapshot,
                query: Box::new(place_query(p, *query)?),
            }
        }
        Query::RetiredBody { inode, generation } => Query::RetiredBody {
            inode: p.inode(inode)?,
            generation,
        },
        Query::IndexedFields { dir } => Query::IndexedFields { dir: p.inode(dir)? },
        // Hit paths are relative to `dir`: nothing to translate back.
        Query::FindIndexed {
            dir,
            field,
            range,
            after,
            limit,
        } => Query::FindIndexed {
            dir: p.inode(dir)?,
            field,
            range,
            after,
            limit,
        },
        q @ (Query::ListUploads | Query::ListSnapshots | Query::Grafts) => q,
    })
}

/// Whether `refusal` proves that a newer map than `map` exists, worth
/// waiting for: a WRONG_SHARD naming a shard `map` does not know, or knows
/// only as still being created (not routed to yet). The engine applied the
/// graft; the nodes learn the map from the control plane moments later, and
/// right after `shard create` a write to the new shard must not fail because
/// of that lag. A refusal naming a serving shard (a lookup of a graft point
/// by its parent, say) is final: no newer map changes it.
pub(crate) fn proves_newer_map(map: &ShardMap, refusal: &ClientError) -> bool {
    matches!(refusal, ClientError::WrongShard { shard, .. }
        if map
            .shards
            .get(&nokv_router::ShardId(*shard))
            .is_none_or(|s| s.state == nokv_router::ShardState::Creating))
}

/// Whether `query` asks every shard (and its answers are merged).
pub(crate) fn fans_out(query: &Query) -> bool {
    matches!(query, Query::ListUploads | Query::ListSnapshots)
}

/// `applied`, from `shard`, in global terms: snapshot and upload ids carry the shard,
/// snapshot paths are global.
pub(crate) fn globalize_applied(map: &ShardMap, shard: ShardId, applied: Applied) -> Applied {
    match applied {
        Applied::Staged(mut upload) => {
            upload.id = UploadId(global_id(shard, upload.id.0));
            Applied::Staged(upload)
        }
        Applied::Snapshot(mut info) => {
            globalize_snapshot(map, shard, &mut info);
            Applied::Snapshot(info)
        }
        other => other,
    }
}

fn globalize_snapshot(map: &ShardMap, shard: ShardId, info: &mut nokv_holt::SnapshotInfo) {
    info.id = SnapshotId(global_id(shard, info.id.0));
    if let Ok(path) = map.to_global(rshard(shard), &info.path) {
        info.path = path;
    }
}

/// `result`, from `shard`, in global terms.
pub(crate) fn globalize_result(map: &ShardMap, shard: ShardId, result: QueryResult) -> QueryResult {
    match result {
        QueryResult::Snapshots(mut list) => {
            for info in &mut list {
                globalize_snapshot(map, shard, info);
            }
            QueryResult::Snapshots(list)
        }
        QueryResult::Uploads(mut list) => {
            for upload in &mut list {
                upload.id = UploadId(global_id(shard, upload.id.0));
            }
            QueryResult::Uploads(list)
        }
        other => other,
    }
}

/// The shards a fanned-out query asks: every shard that serves a subtree.
pub(crate) fn serving_shards(map: &ShardMap) -> Vec<ShardId> {
    map.shards
        .values()
        .filter(|s| s.state != nokv_router::ShardState::Creating)
        .map(|s| hshard(s.id))
        .collect()
}

/// The serving shards grafted strictly below the global, normalised `path`, at any depth:
/// those a recursive watch of `path` reads besides the owner. Shards still being created
/// are left out (they serve nothing yet; a watch picks them up once they serve). Empty
/// for a malformed path.
pub(crate) fn grafted_below(map: &ShardMap, path: &str) -> std::collections::BTreeSet<ShardId> {
    map.grafts_under(path)
        .map(|shards| {
            shards
                .into_iter()
                .filter(|s| s.state != nokv_router::ShardState::Creating)
                .map(|s| hshard(s.id))
                .collect()
        })
        .unwrap_or_default()
}

/// A local path of `shard` as a global one (unchanged if the map does not know the shard).
pub(crate) fn global_path(map: &ShardMap, shard: ShardId, local: &str) -> String {
    map.to_global(rshard(shard), local)
        .unwrap_or_else(|_| local.to_string())
}

/// The addresses of `shard`'s replicas, voters first.
pub(crate) fn replica_addrs(map: &ShardMap, shard: ShardId) -> Vec<String> {
    let Ok(record) = map.shard(rshard(shard)) else {
        return Vec::new();
    };
    record
        .members
        .iter()
        .chain(&record.learners)
        .filter_map(|n| map.node(*n).map(|n| n.addr.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_holt::InodeId;
    use nokv_router::{ClusterId, Epoch, NodeId, ShardRecord, ShardState};

    /// Root, shard 1 at `/data`, shard 2 at `/data/deep/x` (inside 1).
    fn map() -> ShardMap {
        let mut map = ShardMap::bootstrap(ClusterId::new("t").expect("id"), NodeId(1), "h:1");
        for (id, graft, parent) in [(1, "/data", 0), (2, "/data/deep/x", 1)] {
            map.shards.insert(
                nokv_router::ShardId(id),
                ShardRecord {
                    id: nokv_router::ShardId(id),
                    graft: graft.into(),
                    parent: Some(nokv_router::ShardId(parent)),
                    members: vec![NodeId(1)],
                    learners: vec![],
                    epoch: Epoch(1),
                    leader_hint: None,
                    state: ShardState::Serving,
                },
            );
        }
        map.validate().expect("valid");
        map
    }

    #[test]
    fn a_refusal_naming_a_shard_still_being_created_waits_for_a_newer_map() {
        let refusal = |shard: u16| ClientError::WrongShard {
            shard,
            graft_path: "/data".into(),
            message: "wrong shard".into(),
        };
        let mut m = map();
        assert!(!proves_newer_map(&m, &refusal(1)), "shard 1 serves: final");
        assert!(proves_newer_map(&m, &refusal(9)), "an unknown shard");
        if let Some(s) = m.shards.get_mut(&nokv_router::ShardId(1)) {
            // Right after `shard create`: known, not routed to yet.
            s.state = ShardState::Creating;
        }
        assert!(proves_newer_map(&m, &refusal(1)));
        assert!(!proves_newer_map(&m, &ClientError::Unavailable("x".into())));
    }

    fn mkdir(path: &str) -> Op {
        Op::Mkdir {
            at: EntryRef::Path(path.into()),
            mode: 0o755,
            uid: 0,
            gid: 0,
            parents: false,
        }
    }

    fn routed(op: Op) -> (u16, Op) {
        let (shard, op) = route_op(&map(), op, ShardId(0)).expect("routes");
        (shard.0, op)
    }

    #[test]
    fn entries_route_by_their_directory_and_inodes_by_the_whole_path() {
        assert_eq!(routed(mkdir("/a")), (0, mkdir("/a")));
        // The graft point is an entry of the shard above...
        assert_eq!(routed(mkdir("/data")), (0, mkdir("/data")));
        // ...and everything below it is the child's, relative to its root.
        assert_eq!(routed(mkdir("/data/b")), (1, mkdir("/b")));
        assert_eq!(routed(mkdir("//data/deep/x/y/")), (2, mkdir("/y")));
        let stat = |p: &str| Query::GetAttr {
            inode: InodeRef::Path(p.into()),
        };
        let (shard, q) = route_query(&map(), stat("/data"), ShardId(0)).expect("routes");
        assert_eq!((shard.0, q), (1, stat("/")));
        let (shard, q) = route_query(&map(), stat("/datax"), ShardId(0)).expect("routes");
        assert_eq!((shard.0, q), (0, stat("/datax")));
    }

    #[test]
    fn ids_route_by_their_high_bits() {
        let inode = InodeId::compose(ShardId(2), 77);
        let q = Query::GetAttr {
            inode: InodeRef::Id(inode),
        };
        assert_eq!(
            route_query(&map(), q, ShardId(0)).expect("routes").0,
            ShardId(2)
        );
        let remove = Op::RemoveSnapshot {
            id: SnapshotId(global_id(ShardId(1), 5)),
        };
        assert_eq!(
            routed(remove),
            (1, Op::RemoveSnapshot { id: SnapshotId(5) })
        );
        // Shard 0's ids are the engine's own.
        assert_eq!(global_id(ShardId(0), 9), 9);
    }

    #[test]
    fn requests_spanning_shards_are_exdev() {
        let rename = Op::Rename {
            from: EntryRef::Path("/a".into()),
            to: EntryRef::Path("/data/a".into()),
            mode: nokv_holt::RenameMode::NoReplace,
        };
        let e = route_op(&map(), rename, ShardId(0)).expect_err("spans shards");
        assert_eq!(e.code(), "EXDEV");
        assert!(
            e.to_string()
                .contains("/a is in shard 0 and /data/a in shard 1"),
            "{e}"
        );
        let link = Op::Link {
            inode: InodeRef::Path("/data/f".into()),
            at: EntryRef::Path("/data/deep/x/f".into()),
        };
        assert_eq!(
            route_op(&map(), link, ShardId(0))
                .expect_err("spans")
                .code(),
            "EXDEV"
        );
    }

    #[test]
    fn a_recursive_watch_reads_every_serving_shard_grafted_below() {
        let ids = |m: &ShardMap, p: &str| -> Vec<u16> {
            grafted_below(m, p).into_iter().map(|s| s.0).collect()
        };
        let mut m = map();
        assert_eq!(ids(&m, "/"), [1, 2]);
        assert_eq!(ids(&m, "/data"), [2]);
        assert_eq!(ids(&m, "/data/deep"), [2]);
        assert_eq!(ids(&m, "/data/deep/x"), Vec::<u16>::new());
        assert_eq!(ids(&m, "/dat"), Vec::<u16>::new());
        assert_eq!(ids(&m, "not/normal/"), Vec::<u16>::new());
        m.shards
            .get_mut(&nokv_router::ShardId(2))
            .expect("shard 2")
            .state = nokv_router::ShardState::Creating;
        assert_eq!(ids(&m, "/"), [1]);
    }

    #[test]
    fn malformed_paths_pass_through_for_the_engine_to_refuse() {
        assert_eq!(routed(mkdir("relative")), (0, mkdir("relative")));
        assert_eq!(routed(mkdir("/a/../b")), (0, mkdir("/a/../b")));
    }

    #[test]
    fn results_come_back_in_global_terms() {
        let info = nokv_holt::SnapshotInfo {
            id: SnapshotId(3),
            path: "/sub".into(),
            root: InodeId::compose(ShardId(1), 9),
            pinned_index: nokv_holt::LogIndex(4),
            created_ns: 0,
            lease_expires_ns: 0,
        };
        let Applied::Snapshot(g) = globalize_applied(&map(), ShardId(1), Applied::Snapshot(info))
        else {
            panic!("shape")
        };
        assert_eq!(g.path, "/data/sub");
        assert_eq!(id_shard(g.id.0), ShardId(1));
        assert_eq!(local_id(g.id.0), 3);
    }
}
