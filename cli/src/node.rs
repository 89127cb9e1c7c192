//! `nokv node …`: the cluster's nodes: list them, add one, move every
//! replica off one (`remove`) or onto a new one (`replace`).

use anyhow::Context;
use clap::Subcommand;
use nokv_proto::pb;
use nokv_proto::pb::membership_request::Action;
use serde_json::json;

use crate::output::print_json;
use crate::shard::{load_map, membership};
use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List the nodes: address, state (active, draining, removed), whether
    /// it answers, replicas it hosts and shards it leads.
    Ls,
    /// Add a node to the cluster: ID=HOST:PORT of a `nokv serve --etcd`
    /// process started with that --id. It then takes new shards' replicas;
    /// `shard rebalance --replicas` moves a fair share of the existing ones
    /// to it, `node replace` / `shard add-replica` move chosen ones.
    ///
    /// Example: nokv node add 4=10.0.0.4:7400
    Add {
        /// ID=HOST:PORT (the address the node advertises).
        #[arg(value_parser = parse_node)]
        node: (u64, String),
    },
    /// Move every replica of node OLD to node NEW (already added), one shard
    /// at a time: NEW joins as a learner, catches up and votes, then OLD
    /// leaves. Works with OLD dead. OLD is then marked removed.
    ///
    /// Example: nokv node replace 3 4
    Replace {
        /// The node to empty.
        old: u64,
        /// The node that takes its replicas.
        new: u64,
    },
    /// Move every replica off node ID (each to the least-loaded node without
    /// one of that shard; a shard with no such node keeps one replica fewer)
    /// and mark it removed. Its id is never reused.
    Remove {
        /// The node to remove.
        id: u64,
    },
}

fn parse_node(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=HOST:PORT, got {s:?}"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("{id:?} is not a node id (a positive integer)"))?;
    let addr = addr.trim();
    if id == 0 || addr.is_empty() || !addr.contains(':') {
        return Err(format!("expected ID=HOST:PORT with ID > 0, got {s:?}"));
    }
    Ok((id, addr.to_string()))
}

pub async fn run(c: NodeCommand, g: &GlobalArgs) -> anyhow::Result<()> {
    match c {
        NodeCommand::Ls => ls(g).await,
        NodeCommand::Add { node: (id, addr) } => {
            membership(g, Action::NodeAdd(pb::Member { id, addr })).await
        }
        NodeCommand::Replace { old, new } => {
            membership(g, Action::NodeReplace(pb::NodeReplace { old, new })).await
        }
        NodeCommand::Remove { id } => membership(g, Action::NodeRemove(id)).await,
    }
}

async fn ls(g: &GlobalArgs) -> anyhow::Result<()> {
    let map = load_map(g).await?;
    let probe = match g.client() {
        Ok(c) => c,
        Err(_) => {
            let addrs: Vec<String> = map.nodes.values().map(|n| n.addr.clone()).collect();
            let config = g.client_config(addrs)?;
            nokv_client::Client::new(config).context("a client for the nodes")?
        }
    };
    let mut rows = Vec::new();
    for n in map.nodes.values() {
        let status = probe.node_status(&probe.reachable(&n.addr)).await;
        let (answers, replicas, leads) = match &status {
            Ok(s) => (
                true,
                s.shards.len(),
                s.shards
                    .iter()
                    .filter(|r| r.role == pb::Role::Leader as i32)
                    .count(),
            ),
            Err(_) => (false, 0, 0),
        };
        let placed = map.shards_on(n.id).len();
        rows.push((n, answers, placed, replicas, leads));
    }
    if g.json {
        let nodes: Vec<_> = rows
            .iter()
            .map(|(n, answers, placed, replicas, leads)| {
                json!({
                    "id": n.id.0,
                    "addr": n.addr,
                    "state": format!("{:?}", n.state).to_lowercase(),
                    "answers": answers,
                    "placed_replicas": placed,
                    "running_replicas": replicas,
                    "leads": leads,
                })
            })
            .collect();
        print_json(&json!({ "cluster": map.cluster.as_str(), "nodes": nodes }));
        return Ok(());
    }
    outln!(
        "{:>4} {:<22} {:<9} {:<8} {:>6} {:>5}",
        "NODE",
        "ADDR",
        "STATE",
        "ANSWERS",
        "PLACED",
        "LEADS"
    );
    for (n, answers, placed, _, leads) in rows {
        outln!(
            "{:>4} {:<22} {:<9} {:<8} {:>6} {:>5}",
            n.id.0,
            n.addr,
            format!("{:?}", n.state).to_lowercase(),
            if answers { "yes" } else { "no" },
            placed,
            leads
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_arguments_are_checked() {
        assert_eq!(
            parse_node("4=10.0.0.4:7400").expect("valid"),
            (4, "10.0.0.4:7400".to_string())
        );
        for bad in ["4", "0=h:1", "x=h:1", "4=", "4=host"] {
            assert!(parse_node(bad).is_err(), "{bad} accepted");
        }
    }
}
