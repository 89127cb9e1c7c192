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
use nokv_router::{ControlPlane, NodeId as MapNodeId, ShardMap};
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
pub type MapView = watch::Receiver<Option<ShardMap>>;

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
    maps: watch::Sender<Option<ShardMap>>,
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
        maps.send_replace(Some(map));
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
                    maps.send_replace(Some(map));
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
