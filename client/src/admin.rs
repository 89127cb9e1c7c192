//! Making and removing shards: the steps that join a new Raft group into the tree, and the
//! reconciliation that finishes (or undoes) them after a crash.
//!
//! # Creating a shard grafted at PATH
//! 1. **Record** — a compare-and-swap adds the shard to the map in state `creating`, with
//!    its members and the parent shard (the one that owns PATH's directory). Clients do
//!    not route to a `creating` shard, so PATH is still an ordinary path of the parent.
//! 2. **Replicas** — every member node is asked to host a replica (nodes following the map
//!    also do this by themselves), and the first member forms the Raft group
//!    (`InitCluster`; "already initialised" counts as done).
//! 3. **Graft entry** — once the group has a leader, the parent shard applies
//!    `CreateGraft` at PATH through its Raft log (skipped if the parent already lists that
//!    graft).
//! 4. **Serve** — a compare-and-swap sets the state to `serving`; clients now route PATH
//!    and below to the new shard.
//!
//! Every step is idempotent, so anyone may redo them: [`reconcile`] (run by the node
//! leading shard 0) drives every `creating` record forward. A crash before step 1 leaves
//! nothing; after it, the shard is completed. The one way back: if the graft entry cannot
//! be made because PATH was taken meanwhile by an ordinary file or directory, the record
//! is dropped again (the empty replicas stay stopped-but-harmless until their nodes drop
//! them: nothing routes to them).
//!
//! # Removing an (empty) shard
//! 1. A compare-and-swap sets the state to `removing`; every member node, once it has seen
//!    that map, refuses client writes to the shard.
//! 2. After every member reports that map, a write through the shard's log that changes
//!    nothing (an abort of upload 0, which never exists) is a barrier: any write a replica accepted before it is committed (or failed) by then.
//!    A linearizable read then checks that the shard's root is empty and that nothing is
//!    staged; if not, the state goes back to `serving` and the removal fails (`ENOTEMPTY`).
//! 3. The parent removes the graft entry (`RemoveGraft`, skipped if already gone).
//! 4. A compare-and-swap deletes the record; nodes stop their replicas.

use std::time::Duration;

use nokv_holt::{EntryRef, InodeRef, Op, Query, QueryResult, ShardId};
use nokv_proto::pb;
use nokv_router::{
    update, ControlPlane, Epoch, NodeId, NodeState, RouterError, ShardMap, ShardRecord, ShardState,
    DEFAULT_UPDATE_ATTEMPTS,
};
use tokio::time::Instant;

use crate::client::{Client, Consistency};
use crate::error::ClientError;

/// How many replicas a new shard gets when no members are given.
pub const DEFAULT_REPLICAS: usize = 3;

/// How long removal waits for every member to see the `removing` map.
const MAP_PROPAGATION: Duration = Duration::from_secs(15);

/// Which step a creation stops after, for crash tests (`NOKV_FAIL_AFTER_STEP`).
fn fail_after(step: u32) -> Result<(), ClientError> {
    if std::env::var("NOKV_FAIL_AFTER_STEP").ok().as_deref() == Some(&step.to_string()) {
        return Err(ClientError::Server(format!(
            "stopped after step {step} (NOKV_FAIL_AFTER_STEP)"
        )));
    }
    Ok(())
}

/// A control-plane error as the SDK reports it.
pub(crate) fn plane(e: RouterError) -> ClientError {
    match e {
        RouterError::Unavailable { reason } => {
            ClientError::Unavailable(format!("control plane: {reason}"))
        }
        other => ClientError::ControlPlane {
            code: other.code().to_string(),
            message: other.to_string(),
        },
    }
}

fn fs_error(code: &str, errno: i32, message: String) -> ClientError {
    ClientError::Fs {
        code: code.into(),
        errno,
        message,
    }
}

fn local(s: nokv_router::ShardId) -> ShardId {
    ShardId(s.0)
}

/// A path as the map stores graft paths: absolute, no empty, `.` or `..` components.
fn graft_path(path: &str) -> Result<String, ClientError> {
    let parts = nokv_holt::path::split_path(path)
        .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
    if parts.is_empty() {
        return Err(ClientError::InvalidArgument(
            "the root `/` is shard 0's; graft a new shard below it".into(),
        ));
    }
    Ok(format!("/{}", parts.join("/")))
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The current map; an error when the cluster is not in the control plane.
pub(crate) async fn load(cp: &dyn ControlPlane) -> Result<ShardMap, ClientError> {
    cp.load().await.map_err(plane)?.ok_or_else(|| {
        ClientError::InvalidArgument(format!(
            "cluster {} is not initialised in the control plane",
            cp.cluster()
        ))
    })
}

/// The active nodes holding the fewest replicas (ties by id), ordered so that the
/// first is the one that is first member of the fewest shards. The first member forms
/// the group and, campaigning first, usually leads it: this spreads new shards' leaders
/// over the nodes.
fn least_loaded(map: &ShardMap, count: usize) -> Vec<NodeId> {
    let mut nodes: Vec<(usize, NodeId)> = map
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Active)
        .map(|n| (map.shards_on(n.id).len(), n.id))
        .collect();
    nodes.sort();
    let mut chosen: Vec<NodeId> = nodes.into_iter().take(count).map(|(_, id)| id).collect();
    let firsts = |n: &NodeId| {
        map.shards
            .values()
            .filter(|s| s.members.first() == Some(n))
            .count()
    };
    if let Some(lead) = chosen
        .iter()
        .enumerate()
        .min_by_key(|(i, n)| (firsts(n), *i))
        .map(|(i, _)| i)
    {
        chosen.swap(0, lead);
    }
    chosen
}

/// Creates a shard whose root appears at `path` (a new name in an existing directory) with
/// `members` (default: the [`DEFAULT_REPLICAS`] least-loaded active nodes; the first
/// member forms the group and usually leads it) and waits until
/// it serves. Returns its record.
pub async fn create_shard(
    client: &Client,
    cp: &dyn ControlPlane,
    path: &str,
    members: Option<Vec<NodeId>>,
) -> Result<ShardRecord, ClientError> {
    let path = graft_path(path)?;
    let map = load(cp).await?;
    if let Some(existing) = map.shards.values().find(|s| s.graft == path) {
        return match existing.state {
            // Someone's creation stopped half-way: finish it.
            ShardState::Creating => finish_creating(client, cp, existing.id).await,
            _ => Err(fs_error(
                "EEXIST",
                17,
                format!("{path} is already the graft point of shard {}", existing.id),
            )),
        };
    }
    // The directory must exist and the name be free, in whichever shard holds them.
    let dir = client
        .stat(parent_of(&path), Consistency::Linearizable)
        .await?;
    if dir.file_type != nokv_holt::FileType::Directory {
        return Err(fs_error(
            "ENOTDIR",
            20,
            format!("{} is not a directory", parent_of(&path)),
        ));
    }
    match client.stat(&path, Consistency::Linearizable).await {
        Ok(_) => {
            return Err(fs_error(
                "EEXIST",
                17,
                format!("{path} exists; a graft point must be a new name"),
            ))
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    let members = match members {
        Some(m) if m.is_empty() => {
            return Err(ClientError::InvalidArgument("no members given".into()))
        }
        Some(m) => m,
        None => least_loaded(&map, DEFAULT_REPLICAS),
    };

    // Step 1: the record.
    let mut created = None;
    update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
        if m.shards.values().any(|s| s.graft == path) {
            return Err(RouterError::InvalidArgument(format!(
                "{path} became a graft point concurrently"
            )));
        }
        let parent = m
            .route_path(parent_of(&path))
            .map(|r| r.shard)
            .map_err(|e| RouterError::InvalidArgument(e.to_string()))?;
        if m.shard(parent)?.state != ShardState::Serving {
            return Err(RouterError::InvalidArgument(format!(
                "shard {parent} (which would hold the graft) is not serving"
            )));
        }
        let id = m.allocate_shard_id().ok_or_else(|| {
            RouterError::InvalidArgument("shard ids are exhausted (65535 shards)".into())
        })?;
        m.shards.insert(
            id,
            ShardRecord {
                id,
                graft: path.clone(),
                parent: Some(parent),
                members: members.clone(),
                learners: Vec::new(),
                epoch: Epoch(1),
                leader_hint: None,
                state: ShardState::Creating,
            },
        );
        created = Some(id);
        Ok(())
    })
    .await
    .map_err(plane)?;
    let id = created.ok_or_else(|| ClientError::Protocol("no shard id was assigned".into()))?;
    fail_after(1)?;
    finish_creating(client, cp, id).await
}

/// Steps 2 to 4 of a creation (see the module docs); idempotent.
async fn finish_creating(
    client: &Client,
    cp: &dyn ControlPlane,
    id: nokv_router::ShardId,
) -> Result<ShardRecord, ClientError> {
    let map = load(cp).await?;
    let record = map.shard(id).map_err(plane)?.clone();
    if record.state != ShardState::Creating {
        return Ok(record);
    }
    let parent = record
        .parent
        .ok_or_else(|| ClientError::Protocol(format!("shard {id} has no parent")))?;

    // Step 2: replicas and the group.
    let members: Vec<pb::Member> = record
        .members
        .iter()
        .map(|n| {
            let addr = map.node(*n).map(|r| r.addr.clone()).unwrap_or_default();
            pb::Member { id: n.0, addr }
        })
        .collect();
    for m in &members {
        client
            .host_shard(&client.reachable(&m.addr), local(id), map.revision.0)
            .await?;
    }
    let first = members
        .first()
        .ok_or_else(|| ClientError::Protocol(format!("shard {id} has no members")))?;
    // The group's members are its endpoints: this client's may host no
    // replica of the new shard (members chosen with --members), and a node
    // without one answers UNKNOWN_SHARD, not a redirect.
    let group = client
        .with_endpoints(members.iter().map(|m| m.addr.clone()).collect())?
        .for_shard(local(id));
    match group
        .init_cluster(&client.reachable(&first.addr), members.clone())
        .await
    {
        Ok(()) | Err(ClientError::AlreadyInitialized(_)) => {}
        Err(e) => return Err(e),
    }
    // A linearizable read succeeds only once the group has a leader.
    group.stat("/", Consistency::Linearizable).await?;
    fail_after(2)?;

    // Step 3: the graft entry in the parent.
    let graft_local = map
        .route_path(parent_of(&record.graft))
        .map_err(plane)
        .map(|r| {
            let name = &record.graft[record.graft.rfind('/').map_or(0, |i| i + 1)..];
            match r.local_path.as_str() {
                "/" => format!("/{name}"),
                dir => format!("{dir}/{name}"),
            }
        })?;
    let parent_client = client.for_shard(local(parent));
    let grafted = |list: &QueryResult| match list {
        QueryResult::Grafts(g) => g.iter().any(|g| g.shard.0 == id.0),
        _ => false,
    };
    let listed = parent_client
        .query(Query::Grafts, Consistency::Linearizable)
        .await?;
    if !grafted(&listed) {
        let made = parent_client
            .mutate(Op::CreateGraft {
                at: EntryRef::Path(graft_local.clone()),
                shard: local(id),
            })
            .await;
        match made {
            Ok(_) => {}
            Err(e) if e.is_exists() => {
                let listed = parent_client
                    .query(Query::Grafts, Consistency::Linearizable)
                    .await?;
                if !grafted(&listed) {
                    // The name was taken by something else: undo step 1.
                    update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
                        if m.shards
                            .get(&id)
                            .is_some_and(|s| s.state == ShardState::Creating)
                        {
                            m.shards.remove(&id);
                        }
                        Ok(())
                    })
                    .await
                    .map_err(plane)?;
                    return Err(fs_error(
                        "EEXIST",
                        17,
                        format!(
                            "{} was created by someone else while shard {id} was being \
                             grafted there; the new shard was dropped",
                            record.graft
                        ),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    fail_after(3)?;

    // Step 4: serve.
    let stored = update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
        let s = m
            .shards
            .get_mut(&id)
            .ok_or(RouterError::UnknownShard { shard: id })?;
        if s.state == ShardState::Creating {
            s.state = ShardState::Serving;
        }
        Ok(())
    })
    .await
    .map_err(plane)?;
    client.refresh_shard_map().await?;
    Ok(stored.shard(id).map_err(plane)?.clone())
}

/// Removes the empty shard grafted at `path` (see the module docs). Fails with `ENOTEMPTY`
/// (and changes nothing) if it holds anything, `EBUSY` if other shards are grafted in it.
pub async fn remove_shard(
    client: &Client,
    cp: &dyn ControlPlane,
    path: &str,
) -> Result<(), ClientError> {
    let path = graft_path(path)?;
    let map = load(cp).await?;
    let record = map
        .shards
        .values()
        .find(|s| s.graft == path)
        .ok_or_else(|| {
            fs_error(
                "ENOENT",
                2,
                format!("no shard is grafted at {path} (see `nokv shard ls`)"),
            )
        })?
        .clone();
    let children: Vec<String> = map
        .shards
        .values()
        .filter(|s| s.parent == Some(record.id))
        .map(|s| format!("{} (shard {})", s.graft, s.id))
        .collect();
    if !children.is_empty() {
        return Err(fs_error(
            "EBUSY",
            16,
            format!(
                "shard {} has shards grafted inside it: {}; remove those first",
                record.id,
                children.join(", ")
            ),
        ));
    }
    let marked = update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
        let s = m
            .shards
            .get_mut(&record.id)
            .ok_or(RouterError::UnknownShard { shard: record.id })?;
        s.state = ShardState::Removing;
        Ok(())
    })
    .await
    .map_err(plane)?;
    finish_removing(client, cp, record.id, marked.revision).await
}

/// Steps 2 to 4 of a removal; idempotent.
async fn finish_removing(
    client: &Client,
    cp: &dyn ControlPlane,
    id: nokv_router::ShardId,
    revision: nokv_router::Revision,
) -> Result<(), ClientError> {
    let map = load(cp).await?;
    let Ok(record) = map.shard(id).cloned() else {
        return Ok(());
    };
    let group = client.for_shard(local(id));

    // Every member refuses client writes once it has seen the `removing` map.
    let deadline = Instant::now() + MAP_PROPAGATION;
    for node in &record.members {
        let addr = client.reachable(&map.node(*node).map(|n| n.addr.clone()).unwrap_or_default());
        loop {
            let seen = client.shard_map_of(&addr).await.map(|m| m.revision);
            if matches!(seen, Ok(r) if r >= revision.0) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Unavailable(format!(
                    "node {node} ({addr}) has not seen the removal of shard {id} \
                     (map revision {revision}) after {MAP_PROPAGATION:?}; the shard stays \
                     `removing` and is retried by reconciliation"
                )));
            }
            // Polling another process's state: a bounded wait, not synchronisation.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The barrier: a write through the log that changes nothing (upload 0 never
    // exists, so the engine refuses it at apply), then the emptiness check.
    match group
        .mutate(Op::AbortPublish {
            upload: nokv_holt::UploadId(0),
        })
        .await
    {
        Ok(_) | Err(ClientError::Fs { .. }) => {}
        Err(e) => return Err(e),
    }
    let root = group
        .query(
            Query::ReadDir {
                dir: InodeRef::Path("/".into()),
                after: None,
                limit: 1,
            },
            Consistency::Linearizable,
        )
        .await?;
    let staged = group
        .query(Query::ListUploads, Consistency::Linearizable)
        .await?;
    let empty = matches!(&root, QueryResult::Dir { entries, .. } if entries.is_empty())
        && matches!(&staged, QueryResult::Uploads(u) if u.is_empty());
    if !empty {
        update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
            if let Some(s) = m.shards.get_mut(&id) {
                s.state = ShardState::Serving;
            }
            Ok(())
        })
        .await
        .map_err(plane)?;
        return Err(fs_error(
            "ENOTEMPTY",
            39,
            format!(
                "shard {id} at {} is not empty (entries or staged uploads); only empty \
                 shards are removed",
                record.graft
            ),
        ));
    }
    // The graft entry in the parent.
    if let Some(parent) = record.parent {
        let parent_client = client.for_shard(local(parent));
        let listed = parent_client
            .query(Query::Grafts, Consistency::Linearizable)
            .await?;
        if let QueryResult::Grafts(grafts) = listed {
            if let Some(g) = grafts.iter().find(|g| g.shard.0 == id.0) {
                parent_client
                    .mutate(Op::RemoveGraft {
                        at: EntryRef::Path(g.path.clone()),
                        shard: local(id),
                    })
                    .await?;
            }
        }
    }
    update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
        m.shards.remove(&id);
        Ok(())
    })
    .await
    .map_err(plane)?;
    client.refresh_shard_map().await?;
    Ok(())
}

/// One pass of reconciliation: finishes every `creating` shard and every `removing` one.
/// Returns what it did, one line per shard, for the log.
pub async fn reconcile(client: &Client, cp: &dyn ControlPlane) -> Vec<String> {
    let map = match load(cp).await {
        Ok(m) => m,
        Err(e) => return vec![format!("cannot load the shard map: {e}")],
    };
    let mut done = Vec::new();
    for record in map.shards.values() {
        let outcome = match record.state {
            ShardState::Serving => continue,
            ShardState::Creating => finish_creating(client, cp, record.id).await.map(|_| ()),
            ShardState::Removing => finish_removing(client, cp, record.id, map.revision).await,
        };
        done.push(match outcome {
            Ok(()) => format!(
                "shard {} at {}: {:?} finished",
                record.id, record.graft, record.state
            ),
            Err(e) => format!(
                "shard {} at {}: {:?} not finished: {e}",
                record.id, record.graft, record.state
            ),
        });
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_router::{ClusterId, NodeRecord};

    fn three_nodes() -> ShardMap {
        let mut map = ShardMap::bootstrap(ClusterId::new("t").expect("id"), NodeId(1), "h:1");
        for id in [2, 3] {
            map.nodes.insert(
                NodeId(id),
                NodeRecord {
                    id: NodeId(id),
                    addr: format!("h:{id}"),
                    state: NodeState::Active,
                },
            );
        }
        if let Some(root) = map.shards.get_mut(&nokv_router::ShardId::ROOT) {
            root.members = vec![NodeId(1), NodeId(2), NodeId(3)];
        }
        map
    }

    #[test]
    fn new_shards_take_turns_at_forming_their_group() {
        let mut map = three_nodes();
        let mut firsts = Vec::new();
        for _ in 0..5 {
            let members = least_loaded(&map, 3);
            assert_eq!(members.len(), 3);
            firsts.push(members[0].0);
            let id = map.allocate_shard_id().expect("an id");
            map.shards.insert(
                id,
                ShardRecord {
                    id,
                    graft: format!("/s{}", id.0),
                    parent: Some(nokv_router::ShardId::ROOT),
                    members,
                    learners: Vec::new(),
                    epoch: Epoch(1),
                    leader_hint: None,
                    state: ShardState::Serving,
                },
            );
        }
        // Node 1 formed the root shard; the next ones go to 2, 3, 1, 2, 3.
        assert_eq!(firsts, [2, 3, 1, 2, 3]);
    }

    #[test]
    fn graft_paths_are_normalised_and_the_root_is_refused() {
        assert_eq!(graft_path("//a/b/").expect("valid"), "/a/b");
        assert!(graft_path("/").is_err());
        assert!(graft_path("a/b").is_err());
        assert!(graft_path("/a/../b").is_err());
        assert_eq!(parent_of("/a/b"), "/a");
        assert_eq!(parent_of("/a"), "/");
    }
}
