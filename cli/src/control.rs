//! The control plane a command talks to: etcd (`--etcd`), or none.

use std::sync::Arc;

use anyhow::Context;
use nokv_client::Member;
use nokv_router::{
    ClusterId, ControlPlane, EtcdConfig, EtcdControlPlane, NodeId, NodeRecord, NodeState,
    RouterError, ShardId, ShardMap,
};

use crate::GlobalArgs;

/// The etcd control plane of `--etcd`, if given.
pub async fn from_args(g: &GlobalArgs) -> anyhow::Result<Option<Arc<dyn ControlPlane>>> {
    if g.etcd.is_empty() {
        return Ok(None);
    }
    let cluster =
        ClusterId::new(g.cluster.clone()).with_context(|| format!("--cluster {:?}", g.cluster))?;
    let cp = EtcdControlPlane::connect(EtcdConfig::new(g.etcd.clone(), cluster))
        .await
        .with_context(|| format!("connecting to etcd at {}", g.etcd.join(",")))?;
    Ok(Some(Arc::new(cp)))
}

/// The addresses of the cluster's active nodes, from the control plane of
/// `--etcd` (for client commands given `--etcd` instead of `--endpoints`).
pub async fn node_addresses(g: &GlobalArgs) -> anyhow::Result<Vec<String>> {
    let cp = from_args(g).await?.context("no --etcd given")?;
    let map = cp
        .load()
        .await?
        .with_context(|| format!("no cluster {:?} in the control plane", g.cluster))?;
    let addrs: Vec<String> = map
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Active)
        .map(|n| n.addr.clone())
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("cluster {:?} has no active node", g.cluster);
    }
    Ok(addrs)
}

/// Records a new cluster in the control plane: every member registered,
/// the root shard on all of them. An existing cluster with the same root
/// members is fine (init is idempotent); any other is an error.
pub async fn init_map(cp: &dyn ControlPlane, members: &[Member]) -> anyhow::Result<ShardMap> {
    let first = members.first().context("no members given")?;
    let mut map = ShardMap::bootstrap(cp.cluster().clone(), NodeId(first.id), first.addr.clone());
    for m in &members[1..] {
        map.nodes.insert(
            NodeId(m.id),
            NodeRecord {
                id: NodeId(m.id),
                addr: m.addr.clone(),
                state: NodeState::Active,
            },
        );
    }
    if let Some(root) = map.shards.get_mut(&ShardId::ROOT) {
        root.members = members.iter().map(|m| NodeId(m.id)).collect();
    }
    match cp.init(map.clone()).await {
        Ok(stored) => Ok(stored),
        Err(RouterError::AlreadyInitialized { .. }) => {
            let existing = cp
                .load()
                .await?
                .context("the control plane reported a cluster and then none")?;
            let root = existing.shard(ShardId::ROOT)?;
            let wanted: Vec<NodeId> = members.iter().map(|m| NodeId(m.id)).collect();
            if root.members != wanted {
                anyhow::bail!(
                    "cluster {} already exists in the control plane with root members {:?}",
                    cp.cluster(),
                    root.members
                );
            }
            Ok(existing)
        }
        Err(e) => Err(e.into()),
    }
}
