//! `nokv shard …`: make, list and remove shards; and the node's side of
//! shard creation (`NodeAdmin`, and the reconciler that finishes creations and
//! removals a crash interrupted).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use nokv_client::{admin, Client, ClientError};
use nokv_meta_node::control::{AdminError, ShardAdmin};
use nokv_proto::pb;
use nokv_proto::pb::membership_request::Action;
use nokv_router::{ClusterId, ControlPlane, NodeId, Revision, ShardMap};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::output::print_json;
use crate::GlobalArgs;

/// How often the node leading shard 0 looks for unfinished creations and removals.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

#[derive(Subcommand, Debug)]
pub enum ShardCommand {
    /// Create a shard (its own Raft group) whose root appears at PATH, a new
    /// name in an existing directory: everything below PATH then lives in
    /// the new shard. Grafts nest. Renaming or removing PATH fails with
    /// EBUSY; renames and hard links across shards fail with EXDEV.
    /// Interrupted creations are finished by the cluster itself.
    ///
    /// Example: nokv shard create /datasets --members 1,2,3
    Create {
        /// Global path of the graft point.
        path: String,
        /// Node ids of the replicas (default: the 3 least-loaded active nodes).
        #[arg(long, value_delimiter = ',')]
        members: Vec<u64>,
        /// Succeed without change if PATH already is the graft point of a
        /// serving shard (for scripts that run on every start).
        #[arg(long)]
        exists_ok: bool,
    },
    /// Remove the shard grafted at PATH. Only an empty shard (no entries,
    /// nothing staged, no shard grafted inside) is removed; otherwise
    /// ENOTEMPTY or EBUSY and nothing changes.
    Rm {
        /// Global path of the graft point.
        path: String,
    },
    /// Add a replica of a shard on NODE: it joins as a learner, catches up
    /// (by snapshot if needed), then becomes a voter through one
    /// joint-consensus change. Writes go on meanwhile.
    ///
    /// Example: nokv shard add-replica /datasets 4
    AddReplica {
        /// The shard: its graft path, or #ID.
        shard: String,
        /// Node id (see `nokv node ls`).
        node: u64,
    },
    /// Remove the replica of a shard on NODE (leadership moves first if NODE
    /// leads it; the last voter is never removed). NODE stops the replica;
    /// its data stays on disk.
    RemoveReplica {
        /// The shard: its graft path, or #ID.
        shard: String,
        /// Node id.
        node: u64,
    },
    /// Hand a shard's leadership to NODE, one of its voters (writes pause
    /// for about one election).
    TransferLeader {
        /// The shard: its graft path, or #ID.
        shard: String,
        /// Node id of a voter.
        node: u64,
    },
    /// Spread the shards' leaders evenly over the nodes now (the cluster
    /// also does this by itself, one shard every few seconds). With
    /// --replicas, first move replicas (one at a time, add before remove)
    /// until every active node holds about as many, e.g. after `node add`.
    Rebalance {
        /// Also move replicas (the cluster never does that on its own).
        #[arg(long)]
        replicas: bool,
    },
    /// List every shard: id, graft point, parent, members, placement epoch
    /// (bumped by the control plane on every membership or graft change;
    /// the Raft epoch that fences writes is in `nokv status`), state.
    /// Reads the map from etcd with `--etcd`, else from any endpoint.
    Ls,
}

pub async fn run(c: ShardCommand, g: &GlobalArgs) -> anyhow::Result<()> {
    match c {
        ShardCommand::Ls => ls(g).await,
        ShardCommand::Create {
            path,
            members,
            exists_ok,
        } => create(g, &path, members, exists_ok).await,
        ShardCommand::Rm { path } => rm(g, &path).await,
        ShardCommand::AddReplica { shard, node } => {
            membership(g, Action::AddReplica(pb::ReplicaChange { shard, node })).await
        }
        ShardCommand::RemoveReplica { shard, node } => {
            membership(g, Action::RemoveReplica(pb::ReplicaChange { shard, node })).await
        }
        ShardCommand::TransferLeader { shard, node } => {
            membership(g, Action::TransferLeader(pb::ReplicaChange { shard, node })).await
        }
        ShardCommand::Rebalance { replicas: false } => membership(g, Action::Rebalance(true)).await,
        ShardCommand::Rebalance { replicas: true } => {
            membership(g, Action::RebalanceReplicas(true)).await
        }
    }
}

/// Runs a membership or node operation: here against etcd with `--etcd`,
/// else through any node of `--endpoints`; prints each change.
pub async fn membership(g: &GlobalArgs, action: Action) -> anyhow::Result<()> {
    let request = pb::MembershipRequest {
        action: Some(action),
    };
    let response = match crate::control::from_args(g).await? {
        Some(cp) => {
            let client = admin_client(g, cp.as_ref()).await?;
            nokv_client::membership::run(&client, cp.as_ref(), request).await?
        }
        None => g.client()?.membership_on_cluster(request).await?,
    };
    if g.json {
        print_json(&json!({
            "changes": response.changes,
            "map_revision": response.map_revision,
        }));
    } else {
        for line in &response.changes {
            outln!("{line}");
        }
        if response.changes.is_empty() {
            outln!("nothing to change");
        }
    }
    Ok(())
}

/// A client for admin steps run here with `--etcd`: the given endpoints, or
/// every node the map knows.
pub async fn admin_client(g: &GlobalArgs, cp: &dyn ControlPlane) -> anyhow::Result<Client> {
    if !g.endpoints.is_empty() {
        return g.client();
    }
    let map = cp
        .load()
        .await?
        .with_context(|| format!("no cluster {:?} in the control plane", g.cluster))?;
    let addrs: Vec<String> = map.nodes.values().map(|n| n.addr.clone()).collect();
    Ok(Client::new(g.client_config(addrs)?)?)
}

async fn create(
    g: &GlobalArgs,
    path: &str,
    members: Vec<u64>,
    exists_ok: bool,
) -> anyhow::Result<()> {
    let existing = if exists_ok {
        let map = load_map(g).await?;
        map.shards
            .values()
            .find(|s| s.graft == path && s.state == nokv_router::ShardState::Serving)
            .map(|s| {
                (
                    u32::from(s.id.0),
                    s.members.iter().map(|n| n.0).collect::<Vec<_>>(),
                    map.revision.0,
                )
            })
    } else {
        None
    };
    let (shard, members, revision) = match (existing, crate::control::from_args(g).await?) {
        (Some(done), _) => done,
        (None, Some(cp)) => {
            let client = admin_client(g, cp.as_ref()).await?;
            let wanted =
                (!members.is_empty()).then(|| members.iter().map(|m| NodeId(*m)).collect());
            let record = admin::create_shard(&client, cp.as_ref(), path, wanted).await?;
            let revision = cp.load().await?.map_or(0, |m| m.revision.0);
            (
                u32::from(record.id.0),
                record.members.iter().map(|n| n.0).collect::<Vec<_>>(),
                revision,
            )
        }
        (None, None) => {
            let r = g.client()?.create_shard_on_cluster(path, members).await?;
            (r.shard, r.members, r.map_revision)
        }
    };
    if g.json {
        print_json(&json!({
            "shard": shard,
            "graft": path,
            "members": members,
            "map_revision": revision,
        }));
    } else {
        let members: Vec<String> = members.iter().map(u64::to_string).collect();
        outln!(
            "shard {shard} serves {path} (members {}; map revision {revision})",
            members.join(",")
        );
    }
    Ok(())
}

async fn rm(g: &GlobalArgs, path: &str) -> anyhow::Result<()> {
    match crate::control::from_args(g).await? {
        Some(cp) => {
            let client = admin_client(g, cp.as_ref()).await?;
            admin::remove_shard(&client, cp.as_ref(), path).await?;
        }
        None => g.client()?.remove_shard_on_cluster(path).await?,
    }
    if g.json {
        print_json(&json!({ "removed": path }));
    } else {
        outln!("removed the shard grafted at {path}");
    }
    Ok(())
}

/// Shard creation and removal as a node runs them for `CreateShard` and
/// `RemoveShard`: the SDK's `admin` steps against the node's control plane.
pub struct NodeAdmin {
    pub client: Client,
    pub plane: Arc<dyn ControlPlane>,
}

fn admin_error(e: ClientError) -> AdminError {
    let errno = match &e {
        ClientError::Fs { errno, .. } => *errno,
        _ => 0,
    };
    AdminError {
        code: e.code().to_string(),
        errno,
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl ShardAdmin for NodeAdmin {
    async fn create_shard(
        &self,
        path: String,
        members: Vec<u64>,
    ) -> Result<pb::CreateShardResponse, AdminError> {
        let wanted = (!members.is_empty()).then(|| members.into_iter().map(NodeId).collect());
        let record = admin::create_shard(&self.client, self.plane.as_ref(), &path, wanted)
            .await
            .map_err(admin_error)?;
        let revision = self
            .client
            .shard_map()
            .await
            .ok()
            .flatten()
            .map_or(0, |m| m.revision.0);
        Ok(pb::CreateShardResponse {
            shard: u32::from(record.id.0),
            members: record.members.iter().map(|n| n.0).collect(),
            map_revision: revision,
        })
    }

    async fn remove_shard(&self, path: String) -> Result<(), AdminError> {
        admin::remove_shard(&self.client, self.plane.as_ref(), &path)
            .await
            .map_err(admin_error)
    }

    async fn membership(
        &self,
        request: pb::MembershipRequest,
    ) -> Result<pb::MembershipResponse, AdminError> {
        nokv_client::membership::run(&self.client, self.plane.as_ref(), request)
            .await
            .map_err(admin_error)
    }
}

/// Every [`RECONCILE_EVERY`], if this node (at `own_addr`) leads shard 0,
/// finishes shard creations, removals and replica additions that were
/// interrupted, and moves one leadership if leaders are unevenly spread. One node at
/// a time does it (the steps are idempotent, so a brief overlap after a
/// leader change is harmless).
pub fn spawn_reconciler(
    client: Client,
    plane: Arc<dyn ControlPlane>,
    own_addr: String,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
            let leads_root = client.node_status(&own_addr).await.is_ok_and(|s| {
                s.shards
                    .iter()
                    .any(|r| r.shard == 0 && r.role == pb::Role::Leader as i32)
            });
            if !leads_root {
                continue;
            }
            for line in admin::reconcile(&client, plane.as_ref()).await {
                tracing::info!(%line, "reconciliation");
            }
            for line in nokv_client::membership::reconcile(&client, plane.as_ref()).await {
                tracing::info!(%line, "reconciliation");
            }
        }
    });
}

/// The newest map: from the control plane, or as a node last saw it.
/// The shards a cluster-wide command (`gc`, `fsck`, `backup`) runs on: `only` if given
/// (refused if the cluster has no such shard), else every serving shard.
pub async fn targets(
    client: &Client,
    only: Option<u16>,
) -> anyhow::Result<Vec<nokv_client::ShardId>> {
    let all = client
        .serving_shards()
        .await
        .context("reading the shard map")?;
    match only {
        None => Ok(all),
        Some(id) if all.contains(&nokv_client::ShardId(id)) => Ok(vec![nokv_client::ShardId(id)]),
        Some(id) => {
            let known: Vec<String> = all.iter().map(|s| s.0.to_string()).collect();
            anyhow::bail!(
                "the cluster has no serving shard {id} (it has {}; see `nokv shard ls`)",
                known.join(", ")
            )
        }
    }
}

pub async fn load_map(g: &GlobalArgs) -> anyhow::Result<ShardMap> {
    if let Some(cp) = crate::control::from_args(g).await? {
        return cp
            .load()
            .await?
            .with_context(|| format!("no cluster {:?} in the control plane", g.cluster));
    }
    let client = g.client()?;
    let cluster = ClusterId::new(g.cluster.clone())?;
    let mut last = None;
    for endpoint in client.endpoints().to_vec() {
        match client.shard_map_of(&endpoint).await {
            Ok(m) if m.revision == 0 => {
                anyhow::bail!(
                    "{endpoint} follows no control plane: the cluster has only shard 0 \
                     (start nodes with --etcd to place more)"
                )
            }
            Ok(m) => {
                return Ok(nokv_router::schema::decode_map(
                    &m.map,
                    Revision(m.revision),
                    &cluster,
                    &endpoint,
                )?)
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no endpoint answered"), Into::into))
}

async fn ls(g: &GlobalArgs) -> anyhow::Result<()> {
    let map = load_map(g).await?;
    if g.json {
        let shards: Vec<_> = map
            .shards
            .values()
            .map(|s| {
                json!({
                    "shard": s.id.0,
                    "graft": s.graft,
                    "parent": s.parent.map(|p| p.0),
                    "members": s.members.iter().map(|n| n.0).collect::<Vec<_>>(),
                    "learners": s.learners.iter().map(|n| n.0).collect::<Vec<_>>(),
                    "map_epoch": s.epoch.0,
                    "leader_hint": s.leader_hint.map(|n| n.0),
                    "state": format!("{:?}", s.state).to_lowercase(),
                })
            })
            .collect();
        print_json(&json!({
            "cluster": map.cluster.as_str(),
            "revision": map.revision.0,
            "shards": shards,
        }));
        return Ok(());
    }
    outln!("cluster {} at revision {}", map.cluster, map.revision);
    outln!(
        "{:>5} {:<24} {:>6} {:<12} {:>9} {:<9}",
        "SHARD",
        "GRAFT",
        "PARENT",
        "MEMBERS",
        "MAP_EPOCH",
        "STATE"
    );
    for s in map.shards.values() {
        let members: Vec<String> = s.members.iter().map(|n| n.0.to_string()).collect();
        outln!(
            "{:>5} {:<24} {:>6} {:<12} {:>9} {:<9}",
            s.id.0,
            s.graft,
            s.parent
                .map_or_else(|| "-".to_string(), |p| p.0.to_string()),
            members.join(","),
            s.epoch.0,
            format!("{:?}", s.state).to_lowercase()
        );
    }
    Ok(())
}
