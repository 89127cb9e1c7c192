//! The one conformance suite every `ControlPlane` must pass. Each check takes an empty
//! store for cluster [`cluster()`]; `backends.rs` runs every check against every backend.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use nokv_router::{
    update, ClusterId, ControlPlane, Epoch, Liveness, MapStream, NodeId, NodeRecord, NodeState,
    Revision, RouterError, ShardId, ShardMap, ShardState,
};

use crate::support::{must_hold_for, must_within, wait_until};

const WAIT: Duration = Duration::from_secs(15);

/// The cluster every check uses.
pub fn cluster() -> ClusterId {
    ClusterId::new("conformance").expect("valid cluster id")
}

fn bootstrap() -> ShardMap {
    ShardMap::bootstrap(cluster(), NodeId(1), "127.0.0.1:7001")
}

/// `map` with one more node, so each call produces a different valid successor.
fn with_node(map: &ShardMap, id: u64) -> ShardMap {
    let mut next = map.clone();
    next.nodes.insert(
        NodeId(id),
        NodeRecord {
            id: NodeId(id),
            addr: format!("127.0.0.1:{}", 7000 + id),
            state: NodeState::Active,
        },
    );
    next
}

fn code<T: std::fmt::Debug>(result: Result<T, RouterError>) -> &'static str {
    result.expect_err("expected an error").code()
}

async fn must_load(cp: &dyn ControlPlane) -> ShardMap {
    cp.load().await.expect("load").expect("initialised")
}

pub async fn load_on_empty_store_is_none(cp: &dyn ControlPlane) {
    assert_eq!(cp.load().await.expect("load"), None);
    assert_eq!(
        code(cp.compare_and_swap(Revision(0), bootstrap()).await),
        "NOT_INITIALIZED"
    );
    let err = update(cp, 3, |_| Ok(())).await;
    assert_eq!(code(err), "NOT_INITIALIZED");
}

pub async fn init_twice_is_refused(cp: &dyn ControlPlane) {
    let first = cp.init(bootstrap()).await.expect("first init");
    assert!(first.revision > Revision(0));
    assert_eq!(must_load(cp).await, first);

    let other = ShardMap::bootstrap(cluster(), NodeId(9), "127.0.0.1:7009");
    match cp.init(other).await {
        Err(RouterError::AlreadyInitialized { revision, .. }) => {
            assert_eq!(revision, first.revision)
        }
        other => panic!("second init: {other:?}"),
    }
    assert_eq!(must_load(cp).await, first, "second init changed the map");
}

pub async fn stale_cas_conflicts_and_changes_nothing(cp: &dyn ControlPlane) {
    let base = cp.init(bootstrap()).await.expect("init");
    let winner = cp
        .compare_and_swap(base.revision, with_node(&base, 2))
        .await
        .expect("first writer wins");
    assert!(winner.revision > base.revision);
    assert!(winner.nodes.contains_key(&NodeId(2)));

    match cp
        .compare_and_swap(base.revision, with_node(&base, 3))
        .await
    {
        Err(RouterError::Conflict { current }) => assert_eq!(current, winner.revision),
        other => panic!("stale CAS: {other:?}"),
    }
    assert_eq!(
        must_load(cp).await,
        winner,
        "a conflicting CAS changed the map"
    );
}

pub async fn malformed_map_is_refused_and_changes_nothing(cp: &dyn ControlPlane) {
    let mut bad = bootstrap();
    bad.shards
        .get_mut(&ShardId::ROOT)
        .expect("root")
        .members
        .clear();
    assert_eq!(code(cp.init(bad).await), "MALFORMED_MAP");
    assert_eq!(cp.load().await.expect("load"), None, "malformed init wrote");

    let base = cp.init(bootstrap()).await.expect("init");
    let mut orphan = base.clone();
    let mut shard = orphan.shards[&ShardId::ROOT].clone();
    shard.id = ShardId(1);
    shard.graft = "/a/".into(); // not normalised
    shard.parent = Some(ShardId::ROOT);
    orphan.shards.insert(shard.id, shard);
    assert_eq!(
        code(cp.compare_and_swap(base.revision, orphan).await),
        "MALFORMED_MAP"
    );

    // A reconfiguration that does not bump the epoch is malformed too.
    let mut unbumped = with_node(&base, 2);
    unbumped
        .shards
        .get_mut(&ShardId::ROOT)
        .expect("root")
        .members
        .push(NodeId(2));
    assert_eq!(
        code(cp.compare_and_swap(base.revision, unbumped).await),
        "MALFORMED_MAP"
    );

    let foreign = ShardMap::bootstrap(
        ClusterId::new("elsewhere").expect("valid"),
        NodeId(1),
        "h:1",
    );
    assert_eq!(
        code(cp.compare_and_swap(base.revision, foreign).await),
        "CLUSTER_MISMATCH"
    );
    assert_eq!(must_load(cp).await, base, "a refused change wrote");
}

async fn must_next(stream: &mut MapStream) -> ShardMap {
    must_within(WAIT, "the next map from the watch", stream.next())
        .await
        .expect("watch stream ended")
        .expect("watch item")
}

pub async fn watch_sees_every_commit_in_order(cp: &dyn ControlPlane) {
    // A watch opened before the cluster exists waits for its first map.
    let mut from_start = cp.watch(Revision(0)).await.expect("watch");
    let base = cp.init(bootstrap()).await.expect("init");
    assert_eq!(must_next(&mut from_start).await, base);

    let mut live = cp.watch(base.revision).await.expect("watch");
    let mut committed = Vec::new();
    let mut current = base.clone();
    for id in 2..7 {
        current = cp
            .compare_and_swap(current.revision, with_node(&current, id))
            .await
            .expect("cas");
        committed.push(current.clone());
    }
    // Opened after the commits: replays them from history.
    let mut late = cp.watch(base.revision).await.expect("watch");
    for expected in &committed {
        assert_eq!(&must_next(&mut live).await, expected);
        assert_eq!(&must_next(&mut late).await, expected);
        assert_eq!(&must_next(&mut from_start).await, expected);
    }
    let revisions: Vec<Revision> = committed.iter().map(|m| m.revision).collect();
    let mut sorted = revisions.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(revisions, sorted, "revisions must strictly increase");

    // A watch from the newest revision sees only what comes next.
    let mut tail = cp.watch(current.revision).await.expect("watch");
    let next = cp
        .compare_and_swap(current.revision, with_node(&current, 20))
        .await
        .expect("cas");
    assert_eq!(must_next(&mut tail).await, next);
}

pub async fn liveness_disappears_when_dropped(cp: &dyn ControlPlane) {
    assert!(cp.live_nodes().await.expect("live").is_empty());
    let ttl = Duration::from_secs(1);
    let seven = cp
        .register_node_alive(NodeId(7), ttl)
        .await
        .expect("register 7");
    let eight = cp
        .register_node_alive(NodeId(8), ttl)
        .await
        .expect("register 8");
    assert_eq!(seven.node(), NodeId(7));
    wait_until(WAIT, "nodes 7 and 8 are live", || async {
        cp.live_nodes().await.expect("live") == BTreeSet::from([NodeId(7), NodeId(8)])
    })
    .await;
    // Renewal keeps the records well past their TTL.
    must_hold_for(
        ttl * 3,
        "node 7 stays live while its handle lives",
        || async { cp.live_nodes().await.expect("live").contains(&NodeId(7)) },
    )
    .await;

    drop(seven);
    wait_until(
        WAIT,
        "node 7's record is gone after its handle is dropped",
        || async { cp.live_nodes().await.expect("live") == BTreeSet::from([NodeId(8)]) },
    )
    .await;
    eight.close().await;
    assert!(
        cp.live_nodes().await.expect("live").is_empty(),
        "close waits for removal"
    );

    assert_eq!(
        code(cp.register_node_alive(NodeId(1), Duration::ZERO).await),
        "INVALID_ARGUMENT"
    );
}

/// A control plane that commits a competing change just before the first CAS it forwards.
struct Racy<'a> {
    inner: &'a dyn ControlPlane,
    raced: AtomicUsize,
}

#[async_trait]
impl ControlPlane for Racy<'_> {
    fn cluster(&self) -> &ClusterId {
        self.inner.cluster()
    }
    async fn load(&self) -> Result<Option<ShardMap>, RouterError> {
        self.inner.load().await
    }
    async fn init(&self, map: ShardMap) -> Result<ShardMap, RouterError> {
        self.inner.init(map).await
    }
    async fn compare_and_swap(
        &self,
        expected: Revision,
        new: ShardMap,
    ) -> Result<ShardMap, RouterError> {
        if self.raced.fetch_add(1, Ordering::SeqCst) == 0 {
            let current = must_load(self.inner).await;
            let mut competing = current.clone();
            let root = competing.shards.get_mut(&ShardId::ROOT).expect("root");
            root.leader_hint = Some(NodeId(1));
            root.state = ShardState::Serving;
            self.inner
                .compare_and_swap(current.revision, competing)
                .await
                .expect("competing change");
        }
        self.inner.compare_and_swap(expected, new).await
    }
    async fn watch(&self, after: Revision) -> Result<MapStream, RouterError> {
        self.inner.watch(after).await
    }
    async fn register_node_alive(
        &self,
        node: NodeId,
        ttl: Duration,
    ) -> Result<Liveness, RouterError> {
        self.inner.register_node_alive(node, ttl).await
    }
    async fn live_nodes(&self) -> Result<BTreeSet<NodeId>, RouterError> {
        self.inner.live_nodes().await
    }
}

pub async fn update_retries_conflicts_and_skips_no_ops(cp: &dyn ControlPlane) {
    let base = cp.init(bootstrap()).await.expect("init");
    let racy = Racy {
        inner: cp,
        raced: AtomicUsize::new(0),
    };
    let mut calls = 0;
    let updated = update(&racy, 3, |map| {
        calls += 1;
        let root = map.shards.get_mut(&ShardId::ROOT).expect("root");
        root.members.push(NodeId(2));
        root.epoch = Epoch(root.epoch.0 + 1);
        *map = with_node(map, 2);
        Ok(())
    })
    .await
    .expect("update");
    assert_eq!(calls, 2, "the change is re-applied to the re-read map");
    assert_eq!(
        updated.shards[&ShardId::ROOT].leader_hint,
        Some(NodeId(1)),
        "kept the race winner's change"
    );
    assert_eq!(
        updated.shards[&ShardId::ROOT].members,
        vec![NodeId(1), NodeId(2)]
    );
    assert_eq!(must_load(cp).await, updated);
    assert!(updated.revision > base.revision);

    // A no-op writes nothing; an error from the change aborts with that error.
    assert_eq!(update(cp, 3, |_| Ok(())).await.expect("no-op"), updated);
    let err = update(cp, 3, |_| {
        Err(RouterError::UnknownShard { shard: ShardId(5) })
    })
    .await;
    assert_eq!(code(err), "UNKNOWN_SHARD");
    assert_eq!(must_load(cp).await.revision, updated.revision);
}

/// Runs every conformance check as its own test against one backend. `$make` is an async
/// expression giving `(Box<dyn ControlPlane>, guard)` over an empty store.
macro_rules! conformance_tests {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            use crate::conformance as c;

            conformance_tests!(@each $make;
                load_on_empty_store_is_none,
                init_twice_is_refused,
                stale_cas_conflicts_and_changes_nothing,
                malformed_map_is_refused_and_changes_nothing,
                watch_sees_every_commit_in_order,
                liveness_disappears_when_dropped,
                update_retries_conflicts_and_skips_no_ops,
            );
        }
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let (cp, _guard) = $make.await;
            c::$check(&*cp).await;
        }
    )*};
}
