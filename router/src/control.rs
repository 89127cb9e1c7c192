//! The control-plane contract: [`ControlPlane`], the [`update`] loop, the [`Liveness`] handle.
//!
//! # Invariants
//!
//! - The stored map always satisfies [`ShardMap::validate`], and every committed change
//!   satisfies [`ShardMap::validate_successor`] against the map it replaced: a change is
//!   checked *before* anything is written, and a rejected change writes nothing.
//! - Every change is a compare-and-swap on the revision the writer read, so two writers
//!   racing on stale maps cannot both win: the loser gets `CONFLICT` with the current
//!   revision and re-reads ([`update`] does this for you).
//! - Revisions of successive maps strictly increase (not necessarily by one).
//!
//! # Failure
//!
//! Every method is bounded in time: when the store is unreachable it fails with
//! `CONTROL_PLANE_UNAVAILABLE` ([`RouterError::Unavailable`]) instead of hanging. A change
//! that failed that way may or may not have been committed: re-read before retrying. The
//! data path does not go through the control plane, so an unavailable store only delays
//! shard creation, grafting and membership changes.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::RouterError;
use crate::types::{ClusterId, NodeId, Revision, ShardMap};

/// Committed maps, oldest first. See [`ControlPlane::watch`].
pub type MapStream = Pin<Box<dyn Stream<Item = Result<ShardMap, RouterError>> + Send>>;

/// The store of one cluster's shard map, and node liveness.
///
/// An implementation is bound to one cluster ([`ControlPlane::cluster`]); a map naming
/// another cluster is refused with `CLUSTER_MISMATCH`. Implementations: the etcd one
/// (`EtcdControlPlane`, feature `etcd`) and [`MemControlPlane`](crate::MemControlPlane);
/// both pass the same conformance suite (`router/tests/router/conformance.rs`).
///
/// Futures returned by these methods are not cancellation-safe in one respect: a change
/// dropped mid-flight may or may not commit (as with a timeout).
#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// The cluster this control plane serves.
    fn cluster(&self) -> &ClusterId;

    /// The current map, with `revision` set to the store's revision of it; `None` when the
    /// cluster has not been initialised. A linearizable read.
    async fn load(&self) -> Result<Option<ShardMap>, RouterError>;

    /// Creates the cluster with `map` if no map is stored yet, atomically (etcd: a
    /// transaction comparing the map key's `create_revision` with 0). Returns the stored map
    /// with its revision.
    ///
    /// Errors: `ALREADY_INITIALIZED` (with the stored revision) if a map exists, whatever it
    /// is; `MALFORMED_MAP` if `map` does not validate; `CLUSTER_MISMATCH`. `map.revision` is
    /// ignored.
    async fn init(&self, map: ShardMap) -> Result<ShardMap, RouterError>;

    /// Replaces the map if it is still at revision `expected`. Returns the stored map with
    /// its new revision.
    ///
    /// `new` is checked first ([`ShardMap::validate_successor`] against the stored map):
    /// `MALFORMED_MAP` and nothing written if it fails. If the stored map is not at
    /// `expected`, `CONFLICT { current }` and nothing written; `NOT_INITIALIZED` if there is
    /// no map. `new.revision` is ignored.
    async fn compare_and_swap(
        &self,
        expected: Revision,
        new: ShardMap,
    ) -> Result<ShardMap, RouterError>;

    /// Streams every map committed after revision `after`, in commit order, each with its
    /// revision (use `Revision(0)` for "from the first map"; waits if there is none yet).
    ///
    /// Nodes follow it to learn which shard replicas to host. The stream never goes back
    /// and never repeats a revision. If the store has discarded the history after `after`
    /// (etcd compaction, or the in-process history bound), the stream re-loads and delivers
    /// the current map instead of the ones it missed, then continues: consumers must treat
    /// each map as the whole truth, not as a delta. If the store becomes unreachable, the
    /// stream yields one `CONTROL_PLANE_UNAVAILABLE` error and ends; call `watch` again with
    /// the last revision received (that is the reconnect).
    async fn watch(&self, after: Revision) -> Result<MapStream, RouterError>;

    /// Announces that `node` is alive for as long as the returned handle lives.
    ///
    /// Writes a liveness record that expires `ttl` after its last renewal (etcd: a key on a
    /// lease of `ttl` rounded up to whole seconds, and etcd may raise very small TTLs to its
    /// minimum) and renews it from a background task until the handle is dropped or
    /// [closed](Liveness::close); then the record is removed at once. If the process dies,
    /// the record expires after `ttl`. If renewal fails for longer than `ttl`, the task
    /// re-creates the record when the store is back. `ttl` must be at least 1 ms.
    async fn register_node_alive(
        &self,
        node: NodeId,
        ttl: Duration,
    ) -> Result<Liveness, RouterError>;

    /// The nodes whose liveness record currently exists.
    async fn live_nodes(&self) -> Result<BTreeSet<NodeId>, RouterError>;
}

/// How many times [`update`] is advised to try before giving up on conflicts.
pub const DEFAULT_UPDATE_ATTEMPTS: usize = 8;

/// Reads the map, lets `change` edit a copy, and commits it with
/// [`ControlPlane::compare_and_swap`]; on `CONFLICT` re-reads and tries again, up to
/// `attempts` times (then returns the last `CONFLICT`).
///
/// `change` may run several times, so it must be a pure function of the map it is given;
/// an error from it aborts the update and is returned as is. If `change` leaves the map
/// unchanged, nothing is written and the current map is returned. `NOT_INITIALIZED` if
/// there is no map.
pub async fn update<C, F>(cp: &C, attempts: usize, mut change: F) -> Result<ShardMap, RouterError>
where
    C: ControlPlane + ?Sized,
    F: FnMut(&mut ShardMap) -> Result<(), RouterError> + Send,
{
    let mut last_conflict = None;
    for _ in 0..attempts.max(1) {
        let current = cp
            .load()
            .await?
            .ok_or_else(|| RouterError::NotInitialized {
                cluster: cp.cluster().clone(),
            })?;
        let mut next = current.clone();
        change(&mut next)?;
        next.revision = current.revision;
        if next == current {
            return Ok(current);
        }
        match cp.compare_and_swap(current.revision, next).await {
            Err(conflict @ RouterError::Conflict { .. }) => {
                tracing::debug!(%conflict, "shard map update lost a race; retrying");
                last_conflict = Some(conflict);
            }
            other => return other,
        }
    }
    Err(last_conflict.expect("the loop runs at least once and only continues on a conflict"))
}

/// Keeps a node's liveness record alive; dropping it (or [`Liveness::close`]) removes the
/// record. See [`ControlPlane::register_node_alive`].
#[derive(Debug)]
pub struct Liveness {
    node: NodeId,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Liveness {
    /// Wraps a renewal task. The task must finish (after removing the record) once `stop`
    /// resolves, which happens when the handle is dropped or closed.
    pub(crate) fn spawn<F, Fut>(node: NodeId, task: F) -> Liveness
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Liveness {
            node,
            stop: Some(stop),
            task: Some(tokio::spawn(task(stopped))),
        }
    }

    /// Kills the renewal task without removing the record, as a crash would.
    #[cfg(test)]
    pub(crate) fn abort_for_test(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }

    /// The node this handle keeps alive.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Stops renewing and waits until the record has been removed (or removing it failed;
    /// then it expires after its TTL).
    pub async fn close(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(node = %self.node, error = %e, "liveness task ended abnormally");
            }
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        // Dropping `stop` wakes the task, which removes the record and exits on its own.
        self.stop.take();
    }
}

/// Checks a liveness TTL.
pub(crate) fn check_ttl(ttl: Duration) -> Result<(), RouterError> {
    if ttl < Duration::from_millis(1) || ttl > Duration::from_secs(24 * 3600) {
        return Err(RouterError::InvalidArgument(format!(
            "liveness ttl {ttl:?} must be between 1 ms and 24 h"
        )));
    }
    Ok(())
}

/// The checks every implementation makes before writing `map` for `cluster`.
pub(crate) fn check_cluster(cluster: &ClusterId, map: &ShardMap) -> Result<(), RouterError> {
    if &map.cluster != cluster {
        return Err(RouterError::ClusterMismatch {
            expected: cluster.clone(),
            found: map.cluster.clone(),
        });
    }
    Ok(())
}
