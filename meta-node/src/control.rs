//! The node's side of the control plane: keep a live registration, follow
//! the shard map, and host a replica of every shard the map places here.
//!
//! The control plane (etcd, through `nokv-router`) is consulted only for
//! placement: the data path never waits on it. When it is unreachable this
//! loop retries with backoff while every hosted replica keeps serving reads
//! and writes and failing over on its own (Raft needs no control plane).
//!
//! # Invariants
//! - A replica whose shard no longer places this node (moved away by a
//!   membership change), or whose shard left the map (removed when empty),
//!   is *stopped*, never its data deleted, so a malformed or rolled-back map
//!   can never destroy data: placing the node again restarts the replica
//!   from its disk.
//! - The map handed to clients (`GetShardMap`) is the newest one this node
//!   has seen; clients treat it as a hint and the shards themselves refuse
//!   misrouted requests (`UNKNOWN_SHARD`, `WRONG_SHARD`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nokv_holt::ShardId;
use std::collections::BTreeMap;

use nokv_router::{ControlPlane, NodeId as MapNodeId, Revision, ShardMap, ShardState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::host::ShardHost;
use crate::typ::NodeId;

/// What a node that follows a control plane is given.
#[derive(Clone)]
pub struct Control {
    /// The store of the shard map (etcd, or in process for `nokv dev`).
    pub plane: Arc<dyn ControlPlane>,
    /// Carries out `CreateShard` and `RemoveShard`. Provided by the binary:
    /// the steps use the client SDK, which this crate must not depend on.
    pub admin: Option<Arc<dyn ShardAdmin>>,
}

/// A failed shard creation or removal, as the client will see it.
#[derive(Clone, Debug)]
pub struct AdminError {
    /// A stable code (EEXIST, ENOTEMPTY, INVALID_ARGUMENT, UNAVAILABLE, ...).
    pub code: String,
    /// POSIX errno for namespace errors, 0 otherwise.
    pub errno: i32,
    pub message: String,
}

/// Shard creation and removal (see `nokv_client::admin` for the steps).
#[tonic::async_trait]
pub trait ShardAdmin: Send + Sync {
    /// Creates a shard grafted at global `path` with `members` (empty: chosen).
    async fn create_shard(
        &self,
        path: String,
        members: Vec<u64>,
    ) -> Result<nokv_proto::pb::CreateShardResponse, AdminError>;
    /// Removes the empty shard grafted at global `path`.
    async fn remove_shard(&self, path: String) -> Result<(), AdminError>;
    /// A membership or node operation (see `nokv_client::membership`).
    async fn membership(
        &self,
        request: nokv_proto::pb::MembershipRequest,
    ) -> Result<nokv_proto::pb::MembershipResponse, AdminError>;
}

/// How long the node's liveness record outlives a silent node.
pub const LIVENESS_TTL: Duration = Duration::from_secs(10);

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The newest shard map this node has seen (`None` until the first load).
pub type MapView = watch::Receiver<Option<Arc<SeenMap>>>;

/// A shard map as a node follows it: the map, and for each shard the
/// revision at which its routing (its graft, parent and state, and the
/// grafts inside it) last changed as far as this node has watched. A
/// request routed by an older revision may have gone to the wrong place
/// and is refused with `STALE_MAP`; changes elsewhere in the map (another
/// shard's members, say) do not disturb it. The first map a node reads
/// counts as a change for every shard (it knows no history).
#[derive(Clone, Debug)]
pub struct SeenMap {
    pub map: ShardMap,
    pub routed_since: BTreeMap<nokv_router::ShardId, Revision>,
}

/// What routing to a shard depends on: its graft, parent and state, and
/// the graft paths and states of the shards grafted inside it.
type Routing = (
    String,
    Option<nokv_router::ShardId>,
    ShardState,
    Vec<(String, ShardState)>,
);

/// What routing to `shard` depends on in `map`.
fn routing_of(map: &ShardMap, shard: nokv_router::ShardId) -> Option<Routing> {
    let s = map.shards.get(&shard)?;
    let mut inside: Vec<(String, ShardState)> = map
        .shards
        .values()
        .filter(|c| c.parent == Some(shard))
        .map(|c| (c.graft.clone(), c.state))
        .collect();
    inside.sort_by(|a, b| a.0.cmp(&b.0));
    Some((s.graft.clone(), s.parent, s.state, inside))
}

impl SeenMap {
    /// `next` as seen after `prev` (if any).
    pub fn follow(prev: Option<&SeenMap>, next: ShardMap) -> SeenMap {
        let routed_since = next
            .shards
            .keys()
            .map(|id| {
                let since = match prev {
                    Some(p) if routing_of(&p.map, *id) == routing_of(&next, *id) => {
                        p.routed_since.get(id).copied().unwrap_or(next.revision)
                    }
                    _ => next.revision,
                };
                (*id, since)
            })
            .collect();
        SeenMap {
            map: next,
            routed_since,
        }
    }

    /// The revision since which `shard`'s routing is unchanged.
    pub fn routed_since(&self, shard: u16) -> Option<Revision> {
        self.routed_since.get(&nokv_router::ShardId(shard)).copied()
    }
}

/// Starts following the control plane; stops when `shutdown` is cancelled.
pub fn spawn(
    control: Arc<dyn ControlPlane>,
    host: Arc<ShardHost>,
    node: NodeId,
    shutdown: CancellationToken,
) -> MapView {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run(control, host, node, tx, shutdown));
    rx
}

async fn pause(backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

async fn run(
    control: Arc<dyn ControlPlane>,
    host: Arc<ShardHost>,
    node: NodeId,
    maps: watch::Sender<Option<Arc<SeenMap>>>,
    shutdown: CancellationToken,
) {
    let mut liveness = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if liveness.is_none() {
            match control
                .register_node_alive(MapNodeId(node), LIVENESS_TTL)
                .await
            {
                Ok(l) => liveness = Some(l),
                Err(e) => tracing::warn!(node, error = %e, "cannot register liveness yet"),
            }
        }
        let map = match control.load().await {
            Ok(Some(map)) => map,
            Ok(None) => {
                tracing::info!(node, "no cluster in the control plane yet");
                if !pause(&mut backoff, &shutdown).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(node, error = %e, "control plane unreachable; shards keep serving");
                if !pause(&mut backoff, &shutdown).await {
                    break;
                }
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let mut revision = map.revision;
        apply(&host, node, &map).await;
        let seen = SeenMap::follow(maps.borrow().as_deref(), map);
        maps.send_replace(Some(Arc::new(seen)));
        let mut stream = match control.watch(revision).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node, error = %e, "cannot watch the shard map");
                if !pause(&mut backoff, &shutdown).await {
                    break;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => None,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(map)) if map.revision > revision => {
                    revision = map.revision;
                    apply(&host, node, &map).await;
                    let seen = SeenMap::follow(maps.borrow().as_deref(), map);
                    maps.send_replace(Some(Arc::new(seen)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(node, error = %e, "shard map watch failed; reloading");
                    break;
                }
                None => break,
            }
        }
        if !pause(&mut backoff, &shutdown).await {
            break;
        }
    }
    if let Some(l) = liveness {
        l.close().await;
    }
}

/// Hosts a replica of every shard that places this node as a member or
/// learner, and stops the replicas of shards that no longer place it or
/// that the map no longer has (removed empty shards, creations rolled
/// back); their data stays on disk.
async fn apply(host: &ShardHost, node: NodeId, map: &ShardMap) {
    let me = MapNodeId(node);
    let known = map.nodes.contains_key(&me);
    for replica in host.all() {
        let id = replica.shard;
        if host.placed_after(id, map.revision.0) {
            continue;
        }
        let why = match map.shards.get(&nokv_router::ShardId(id.0)) {
            None if id != ShardId(0) => "the shard was removed",
            // Moved away (`remove-replica`, `node remove|replace`): the group
            // no longer counts this replica, which would only stand for
            // elections nobody grants. A node the map does not know yet
            // (started before `node add`) keeps what it runs.
            Some(s) if known && !s.members.contains(&me) && !s.learners.contains(&me) => {
                "this node is no longer one of its replicas"
            }
            _ => continue,
        };
        if host.unhost(id).await {
            tracing::info!(node, shard = %id, revision = %map.revision, why, "stopped a replica (its data stays on disk)");
        }
    }
    for shard in map.shards_on(me) {
        let id = ShardId(shard.id.0);
        match host.host(id).await {
            Ok(true) => {
                tracing::info!(node, shard = %id, revision = %map.revision, "hosting a new replica")
            }
            Ok(false) => {}
            Err(e) => tracing::error!(node, shard = %id, error = %e, "cannot host a replica"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_router::{ClusterId, Epoch, NodeId as N, ShardId as S, ShardRecord};

    fn with_shard(mut map: ShardMap, id: u16, graft: &str, revision: u64) -> ShardMap {
        map.shards.insert(
            S(id),
            ShardRecord {
                id: S(id),
                graft: graft.into(),
                parent: Some(S::ROOT),
                members: vec![N(1)],
                learners: Vec::new(),
                epoch: Epoch(1),
                leader_hint: None,
                state: ShardState::Serving,
            },
        );
        map.revision = Revision(revision);
        map
    }

    #[test]
    fn only_routing_changes_move_a_shards_revision() {
        let mut map = ShardMap::bootstrap(ClusterId::new("t").expect("id"), N(1), "h:1");
        map.revision = Revision(5);
        let first = SeenMap::follow(None, map.clone());
        assert_eq!(first.routed_since(0), Some(Revision(5)));

        // A graft inside shard 0 changes shard 0's routing, and adds shard 1.
        let grafted = with_shard(map, 1, "/a", 9);
        let second = SeenMap::follow(Some(&first), grafted.clone());
        assert_eq!(second.routed_since(0), Some(Revision(9)));
        assert_eq!(second.routed_since(1), Some(Revision(9)));

        // Members and epochs change: routing does not.
        let mut moved = grafted;
        moved.revision = Revision(12);
        if let Some(s) = moved.shards.get_mut(&S(1)) {
            s.members.push(N(2));
            s.epoch = s.epoch.next();
        }
        let third = SeenMap::follow(Some(&second), moved.clone());
        assert_eq!(third.routed_since(0), Some(Revision(9)));
        assert_eq!(third.routed_since(1), Some(Revision(9)));

        // Shard 1 starts being removed: its routing and its parent's change.
        if let Some(s) = moved.shards.get_mut(&S(1)) {
            s.state = ShardState::Removing;
        }
        moved.revision = Revision(15);
        let fourth = SeenMap::follow(Some(&third), moved);
        assert_eq!(fourth.routed_since(0), Some(Revision(15)));
        assert_eq!(fourth.routed_since(1), Some(Revision(15)));
        assert_eq!(fourth.routed_since(7), None);
    }
}
