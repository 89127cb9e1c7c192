//! `nokv shard …`: the shard map as the control plane holds it.

use anyhow::Context;
use clap::Subcommand;
use nokv_router::{ClusterId, Revision, ShardMap};
use serde_json::json;

use crate::output::print_json;
use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub enum ShardCommand {
    /// List every shard: id, graft point, parent, members, placement epoch
    /// (bumped by the control plane on every membership or graft change;
    /// the Raft epoch that fences writes is in `nokv status`), state.
    /// Reads the map from etcd with `--etcd`, else from any endpoint.
    Ls,
}

pub async fn run(c: ShardCommand, g: &GlobalArgs) -> anyhow::Result<()> {
    match c {
        ShardCommand::Ls => ls(g).await,
    }
}

/// The newest map: from the control plane, or as a node last saw it.
async fn load_map(g: &GlobalArgs) -> anyhow::Result<ShardMap> {
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
    println!("cluster {} at revision {}", map.cluster, map.revision);
    println!(
        "{:>5} {:<24} {:>6} {:<12} {:>9} {:<9}",
        "SHARD", "GRAFT", "PARENT", "MEMBERS", "MAP_EPOCH", "STATE"
    );
    for s in map.shards.values() {
        let members: Vec<String> = s.members.iter().map(|n| n.0.to_string()).collect();
        println!(
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
