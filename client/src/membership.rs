//! Moving replicas and leaders: the steps behind `nokv shard add-replica|remove-replica|
//! transfer-leader` and `nokv node add|remove|replace`, and leader rebalancing.
//!
//! Two records describe a shard's replicas: its Raft group's membership (the truth for
//! who votes) and its control-plane record (`members`, `learners`: who should host a
//! replica). Each step changes them in an order that keeps a crash harmless:
//!
//! # Adding a replica of shard S on node N
//! 1. **Record** — a compare-and-swap adds N to S's `learners` (new epoch). N's node hosts a
//!    replica when it sees that map; the step also asks N directly (`HostShard`).
//! 2. **Raft** — S's leader adds N as a learner, waits until N has caught up (by snapshot if
//!    the log it needs was purged), then makes N a voter with one joint-consensus change
//!    (`ChangeVoters`, idempotent).
//! 3. **Record** — a compare-and-swap moves N from `learners` to `members` (new epoch).
//!
//! A crash after step 1 leaves N listed as a learner: [`reconcile`] repeats the add. A crash
//! after step 2 leaves a voter that the record calls a learner; repeating the add finds it
//! already voting and finishes step 3.
//!
//! # Removing the replica of shard S on node N
//! If N leads S, leadership moves first. Then S's voters become the current ones without N
//! (`ChangeVoters`, joint consensus), and a compare-and-swap drops N from the record; N's
//! node then stops its replica (its data stays on disk). The last voter is never removed.
//!
//! # Nodes
//! `node add` records an active node; `node replace OLD NEW` adds a replica on NEW for every
//! shard on OLD, then removes OLD's (one shard at a time, so every shard keeps a quorum and
//! writes go on: at most one leader change per shard); `node remove` does the same with the
//! least-loaded other node per shard (or leaves the shard one replica short when there is
//! none). A replaced or removed node's record stays as `removed`, so its id is never reused.
//!
//! # Replicas
//! [`rebalance_replicas`] (`nokv shard rebalance --replicas`, e.g. after `node add`) moves
//! one replica at a time from the active node holding the most to the one holding the
//! fewest, add before remove, while they differ by two or more. It is explicit: the cluster
//! never moves data on its own.
//!
//! # Leaders
//! [`rebalance_leaders`] moves leaderships (`TransferLeader`) from the node that leads the
//! most shards to a voter that leads the fewest, while they differ by two or more. The node
//! leading shard 0 runs it with [`reconcile`], so leaders spread again when nodes join or
//! come back.

use std::collections::BTreeMap;

use nokv_proto::pb;
use nokv_router::{
    update, ControlPlane, NodeId, NodeRecord, NodeState, RouterError, ShardId, ShardMap,
    ShardState, DEFAULT_UPDATE_ATTEMPTS,
};

use crate::admin::{load, plane};
use crate::client::Client;
use crate::error::ClientError;

fn invalid(message: String) -> ClientError {
    ClientError::InvalidArgument(message)
}

fn local(s: ShardId) -> nokv_holt::ShardId {
    nokv_holt::ShardId(s.0)
}

/// A shard named by its graft path (`/datasets`) or its id (`#3`).
pub fn resolve_shard(map: &ShardMap, name: &str) -> Result<ShardId, ClientError> {
    if let Some(id) = name.strip_prefix('#') {
        let id: u16 = id
            .parse()
            .map_err(|_| invalid(format!("{name:?}: a shard id is #0 to #65535")))?;
        return map.shard(ShardId(id)).map(|s| s.id).map_err(plane);
    }
    map.shards
        .values()
        .find(|s| s.graft == name)
        .map(|s| s.id)
        .ok_or_else(|| {
            invalid(format!(
                "no shard is grafted at {name:?} (name a shard by its graft path, or #ID; see \
                 `nokv shard ls`)"
            ))
        })
}

fn active_node(map: &ShardMap, node: NodeId) -> Result<&NodeRecord, ClientError> {
    match map.node(node) {
        Some(n) if n.state == NodeState::Active => Ok(n),
        Some(n) => Err(invalid(format!(
            "node {node} is {:?}; only active nodes take replicas",
            n.state
        ))),
        None => Err(invalid(format!(
            "node {node} is not in the cluster; add it first (`nokv node add {node}=HOST:PORT`)"
        ))),
    }
}

/// The shard's Raft voters and leader, as its leader reports them.
async fn raft_view(
    client: &Client,
    map: &ShardMap,
    shard: ShardId,
) -> Result<(Vec<pb::Member>, u64), ClientError> {
    let record = map.shard(shard).map_err(plane)?;
    let group = client.for_shard(local(shard));
    let mut last = None;
    let mut hinted = Vec::new();
    for node in record.members.iter().chain(&record.learners) {
        let Some(addr) = map.node(*node).map(|n| client.reachable(&n.addr)) else {
            continue;
        };
        match group.status_of(&addr).await {
            Ok(s) if s.role == pb::Role::Leader as i32 => return Ok((s.voters, s.node_id)),
            Ok(s) => {
                if !s.leader_addr.is_empty() {
                    hinted.push(client.reachable(&s.leader_addr));
                }
            }
            Err(e) => last = Some(e),
        }
    }
    for addr in hinted {
        if let Ok(s) = group.status_of(&addr).await {
            if s.role == pb::Role::Leader as i32 {
                return Ok((s.voters, s.node_id));
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        ClientError::Unavailable(format!("shard {shard} has no leader that answers"))
    }))
}

/// Adds a voting replica of `shard` on `node` (see the module docs).
pub async fn add_replica(
    client: &Client,
    cp: &dyn ControlPlane,
    shard: ShardId,
    node: NodeId,
) -> Result<Vec<String>, ClientError> {
    let map = load(cp).await?;
    let addr = active_node(&map, node)?.addr.clone();
    let record = map.shard(shard).map_err(plane)?;
    if record.state != ShardState::Serving {
        return Err(invalid(format!(
            "shard {shard} is {:?}; replicas move only on serving shards",
            record.state
        )));
    }
    // Step 1: the record names the new replica (as a learner).
    let named = update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
        let s = m
            .shards
            .get_mut(&shard)
            .ok_or(RouterError::UnknownShard { shard })?;
        if !s.members.contains(&node) && !s.learners.contains(&node) {
            s.learners.push(node);
            s.epoch = s.epoch.next();
        }
        Ok(())
    })
    .await
    .map_err(plane)?;
    client
        .host_shard(&client.reachable(&addr), local(shard), named.revision.0)
        .await?;

    // Step 2: the Raft group takes it as a voter once it caught up.
    let (voters, _) = raft_view(client, &map, shard).await?;
    let mut change = Vec::new();
    if !voters.iter().any(|v| v.id == node.0) {
        let mut wanted = voters;
        wanted.push(pb::Member {
            id: node.0,
            addr: addr.clone(),
        });
        client.for_shard(local(shard)).change_voters(wanted).await?;
        change.push(format!("shard {shard}: node {node} added as a voter"));
    }

    // Step 3: the record calls it a member.
    update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
        let s = m
            .shards
            .get_mut(&shard)
            .ok_or(RouterError::UnknownShard { shard })?;
        if !s.members.contains(&node) {
            s.learners.retain(|n| *n != node);
            s.members.push(node);
            s.epoch = s.epoch.next();
        }
        Ok(())
    })
    .await
    .map_err(plane)?;
    if change.is_empty() {
        change.push(format!("shard {shard}: node {node} already votes"));
    }
    Ok(change)
}

/// Removes the replica of `shard` on `node` (see the module docs).
pub async fn remove_replica(
    client: &Client,
    cp: &dyn ControlPlane,
    shard: ShardId,
    node: NodeId,
) -> Result<Vec<String>, ClientError> {
    let map = load(cp).await?;
    map.shard(shard).map_err(plane)?;
    let mut change = Vec::new();
    let (voters, leader) = raft_view(client, &map, shard).await?;
    if voters.iter().any(|v| v.id == node.0) {
        if voters.len() == 1 {
            return Err(invalid(format!(
                "node {node} is the last voter of shard {shard}; add another replica first"
            )));
        }
        let group = client.for_shard(local(shard));
        if leader == node.0 {
            let to = voters
                .iter()
                .map(|v| v.id)
                .find(|v| *v != node.0)
                .ok_or_else(|| invalid(format!("shard {shard} has no other voter")))?;
            let now = group.transfer_leader(to).await?;
            change.push(format!(
                "shard {shard}: leadership moved from node {node} to node {now}"
            ));
        }
        let wanted: Vec<pb::Member> = voters.into_iter().filter(|v| v.id != node.0).collect();
        group.change_voters(wanted).await?;
        change.push(format!("shard {shard}: node {node} no longer votes"));
    }
    update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
        let s = m
            .shards
            .get_mut(&shard)
            .ok_or(RouterError::UnknownShard { shard })?;
        if s.members.contains(&node) || s.learners.contains(&node) {
            s.members.retain(|n| *n != node);
            s.learners.retain(|n| *n != node);
            if s.leader_hint == Some(node) {
                s.leader_hint = None;
            }
            s.epoch = s.epoch.next();
        }
        Ok(())
    })
    .await
    .map_err(plane)?;
    if change.is_empty() {
        change.push(format!("shard {shard}: node {node} held no replica"));
    }
    Ok(change)
}

/// Hands `shard`'s leadership to `node`, one of its voters.
pub async fn transfer_leader(
    client: &Client,
    shard: ShardId,
    node: NodeId,
) -> Result<Vec<String>, ClientError> {
    let now = client
        .for_shard(local(shard))
        .transfer_leader(node.0)
        .await?;
    if now != node.0 {
        return Err(ClientError::Unavailable(format!(
            "shard {shard} is led by node {now}, not {node}, after the transfer; try again"
        )));
    }
    Ok(vec![format!("shard {shard}: node {node} leads")])
}

/// Records a new active node at `addr` (idempotent for the same address).
pub async fn node_add(
    cp: &dyn ControlPlane,
    node: NodeId,
    addr: &str,
) -> Result<Vec<String>, ClientError> {
    if node.0 == 0 {
        return Err(invalid("node id 0 is reserved".into()));
    }
    if addr.is_empty() || !addr.contains(':') {
        return Err(invalid(format!(
            "{addr:?}: a node's address is HOST:PORT of its gRPC listener"
        )));
    }
    let mut added = false;
    update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
        match m.nodes.get(&node) {
            Some(n) if n.state == NodeState::Removed => {
                return Err(RouterError::InvalidArgument(format!(
                    "node {node} was removed; node ids are never reused, pick a new one"
                )))
            }
            Some(n) if n.addr != addr => {
                return Err(RouterError::InvalidArgument(format!(
                    "node {node} is already in the cluster at {}",
                    n.addr
                )))
            }
            Some(_) => {}
            None => {
                m.nodes.insert(
                    node,
                    NodeRecord {
                        id: node,
                        addr: addr.to_string(),
                        state: NodeState::Active,
                    },
                );
                added = true;
            }
        }
        Ok(())
    })
    .await
    .map_err(plane)?;
    Ok(vec![if added {
        format!("node {node} at {addr} joined the cluster")
    } else {
        format!("node {node} at {addr} was already in the cluster")
    }])
}

async fn set_node_state(
    cp: &dyn ControlPlane,
    node: NodeId,
    state: NodeState,
) -> Result<(), ClientError> {
    update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
        let n = m.nodes.get_mut(&node).ok_or_else(|| {
            RouterError::InvalidArgument(format!("node {node} is not in the cluster"))
        })?;
        n.state = state;
        Ok(())
    })
    .await
    .map(|_| ())
    .map_err(plane)
}

/// Moves every replica on `old` to `new` (an active node), then marks `old` removed.
pub async fn node_replace(
    client: &Client,
    cp: &dyn ControlPlane,
    old: NodeId,
    new: NodeId,
) -> Result<Vec<String>, ClientError> {
    if old == new {
        return Err(invalid("a node cannot replace itself".into()));
    }
    let map = load(cp).await?;
    active_node(&map, new)?;
    if map.node(old).is_none() {
        return Err(invalid(format!("node {old} is not in the cluster")));
    }
    set_node_state(cp, old, NodeState::Draining).await?;
    let mut changes = Vec::new();
    let shards: Vec<ShardId> = map.shards_on(old).iter().map(|s| s.id).collect();
    for shard in shards {
        changes.extend(add_replica(client, cp, shard, new).await?);
        changes.extend(remove_replica(client, cp, shard, old).await?);
    }
    set_node_state(cp, old, NodeState::Removed).await?;
    changes.push(format!("node {old} removed; node {new} took its replicas"));
    Ok(changes)
}

/// Moves every replica off `node` (each to the least-loaded active node that has none of
/// that shard, when there is one), then marks it removed.
pub async fn node_remove(
    client: &Client,
    cp: &dyn ControlPlane,
    node: NodeId,
) -> Result<Vec<String>, ClientError> {
    let map = load(cp).await?;
    if map.node(node).is_none() {
        return Err(invalid(format!("node {node} is not in the cluster")));
    }
    set_node_state(cp, node, NodeState::Draining).await?;
    let mut changes = Vec::new();
    let shards: Vec<ShardId> = map.shards_on(node).iter().map(|s| s.id).collect();
    for shard in shards {
        let now = load(cp).await?;
        let record = now.shard(shard).map_err(plane)?;
        let target = now
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Active && n.id != node)
            .filter(|n| !record.members.contains(&n.id) && !record.learners.contains(&n.id))
            .min_by_key(|n| (now.shards_on(n.id).len(), n.id))
            .map(|n| n.id);
        match target {
            Some(t) => changes.extend(add_replica(client, cp, shard, t).await?),
            None => changes.push(format!(
                "shard {shard}: no other node can take a replica; it keeps one fewer"
            )),
        }
        changes.extend(remove_replica(client, cp, shard, node).await?);
    }
    set_node_state(cp, node, NodeState::Removed).await?;
    changes.push(format!("node {node} removed"));
    Ok(changes)
}

/// Who leads what, as the active nodes that answer report it.
#[derive(Default)]
struct Leadership {
    /// shard -> (leader, voters).
    shards: BTreeMap<u32, (u64, Vec<u64>)>,
    /// node -> shards it leads (every answering node, with 0 if none).
    leads: BTreeMap<u64, usize>,
}

/// Asks every active node of `map` which shards it leads. Nodes that do not answer are
/// left out (their shards have leaders elsewhere by now, or none yet).
async fn observe_leaders(client: &Client, map: &ShardMap) -> Leadership {
    let mut seen = Leadership::default();
    for n in map.nodes.values().filter(|n| n.state == NodeState::Active) {
        let Ok(status) = client.node_status(&client.reachable(&n.addr)).await else {
            continue;
        };
        seen.leads.entry(n.id.0).or_default();
        for r in status.shards {
            if r.role == pb::Role::Leader as i32 {
                let voters = r.voters.iter().map(|v| v.id).collect();
                seen.shards.insert(r.shard, (r.node_id, voters));
                *seen.leads.entry(r.node_id).or_default() += 1;
            }
        }
    }
    seen
}

/// Writes each shard's observed leader into its record's leader hint, where it differs
/// (one CAS transaction; a hint is never needed for safety, and routing ignores it: see
/// `SeenMap` in meta-node). Clients seed their leader cache from it.
async fn record_leader_hints(
    cp: &dyn ControlPlane,
    seen: &Leadership,
) -> Result<Vec<String>, ClientError> {
    let mut changes = Vec::new();
    update(cp, DEFAULT_UPDATE_ATTEMPTS, |m| {
        changes.clear();
        for (shard, (leader, _)) in &seen.shards {
            let Ok(id) = u16::try_from(*shard) else {
                continue;
            };
            let leader = NodeId(*leader);
            if !m.nodes.contains_key(&leader) {
                continue;
            }
            if let Some(record) = m.shards.get_mut(&ShardId(id)) {
                if record.leader_hint != Some(leader) {
                    record.leader_hint = Some(leader);
                    changes.push(format!("shard {id}: leader hint is node {leader}"));
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(plane)?;
    Ok(changes)
}

/// Moves up to `max_moves` leaderships from the nodes leading the most shards to voters
/// leading the fewest, while the two counts differ by two or more. Nodes that do not
/// answer are left out (their shards have leaders elsewhere by now).
pub async fn rebalance_leaders(
    client: &Client,
    cp: &dyn ControlPlane,
    max_moves: usize,
) -> Result<Vec<String>, ClientError> {
    let map = load(cp).await?;
    let seen = observe_leaders(client, &map).await;
    move_leaders(client, seen, max_moves).await
}

/// [`rebalance_leaders`] from an observation.
async fn move_leaders(
    client: &Client,
    seen: Leadership,
    max_moves: usize,
) -> Result<Vec<String>, ClientError> {
    let Leadership {
        mut shards,
        mut leads,
    } = seen;
    let mut changes = Vec::new();
    for _ in 0..max_moves {
        let Some((&busiest, &most)) = leads.iter().max_by_key(|(id, n)| (**n, u64::MAX - **id))
        else {
            break;
        };
        // The shard led by `busiest` whose least-leading other voter leads fewest.
        let best = shards
            .iter()
            .filter(|(_, (leader, _))| *leader == busiest)
            .filter_map(|(shard, (_, voters))| {
                voters
                    .iter()
                    .filter(|v| **v != busiest)
                    .filter_map(|v| leads.get(v).map(|n| (*n, *v)))
                    .min()
                    .map(|(n, v)| (n, v, *shard))
            })
            .min();
        let Some((fewest, to, shard)) = best else {
            break;
        };
        if most < fewest + 2 {
            break;
        }
        let Ok(id) = u16::try_from(shard) else {
            break;
        };
        match transfer_leader(client, ShardId(id), NodeId(to)).await {
            Ok(_) => {
                changes.push(format!(
                    "shard {shard}: leadership moved from node {busiest} to node {to}"
                ));
                *leads.entry(busiest).or_default() -= 1;
                *leads.entry(to).or_default() += 1;
                shards.insert(shard, (to, shards[&shard].1.clone()));
            }
            Err(e) => {
                changes.push(format!(
                    "shard {shard}: leadership stays on node {busiest}: {e}"
                ));
                break;
            }
        }
    }
    Ok(changes)
}

/// Moves replicas, one at a time, from the active node that holds the most to the one that
/// holds the fewest (a shard the first has and the second lacks), while the two counts
/// differ by two or more, up to `max_moves`. Each move adds before it removes, so every
/// shard keeps its replica count and a quorum throughout.
pub async fn rebalance_replicas(
    client: &Client,
    cp: &dyn ControlPlane,
    max_moves: usize,
) -> Result<Vec<String>, ClientError> {
    let mut changes = Vec::new();
    for _ in 0..max_moves {
        let map = load(cp).await?;
        let Some((from, to, shard)) = replica_move(&map) else {
            break;
        };
        changes.extend(add_replica(client, cp, shard, to).await?);
        changes.extend(remove_replica(client, cp, shard, from).await?);
        changes.push(format!(
            "shard {shard}: replica moved from node {from} to node {to}"
        ));
    }
    Ok(changes)
}

/// The next replica move that evens out `map`'s placement, if any: (from, to, shard).
fn replica_move(map: &ShardMap) -> Option<(NodeId, NodeId, ShardId)> {
    let active: Vec<(usize, NodeId)> = map
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Active)
        .map(|n| (map.shards_on(n.id).len(), n.id))
        .collect();
    let &(most, from) = active
        .iter()
        .max_by_key(|(n, id)| (*n, std::cmp::Reverse(*id)))?;
    let &(fewest, to) = active.iter().min()?;
    if most < fewest + 2 {
        return None;
    }
    let shard = map
        .shards_on(from)
        .into_iter()
        .find(|s| {
            s.state == ShardState::Serving
                && s.members.contains(&from)
                && !s.members.contains(&to)
                && !s.learners.contains(&to)
        })?
        .id;
    Some((from, to, shard))
}

/// One pass: finishes replica additions a crash interrupted (shards whose record lists
/// learners), records where each shard's leader is (the map's leader hints), then moves
/// at most one leadership if leaders are unevenly spread.
pub async fn reconcile(client: &Client, cp: &dyn ControlPlane) -> Vec<String> {
    let map = match load(cp).await {
        Ok(m) => m,
        Err(e) => return vec![format!("cannot load the shard map: {e}")],
    };
    let mut done = Vec::new();
    for s in map.shards.values() {
        if s.state != ShardState::Serving {
            continue;
        }
        for learner in &s.learners {
            match add_replica(client, cp, s.id, *learner).await {
                Ok(c) => done.extend(c),
                Err(e) => done.push(format!(
                    "shard {}: adding node {learner} not finished: {e}",
                    s.id
                )),
            }
        }
    }
    let seen = observe_leaders(client, &map).await;
    match record_leader_hints(cp, &seen).await {
        Ok(c) => done.extend(c),
        Err(e) => done.push(format!("leader hints: {e}")),
    }
    match move_leaders(client, seen, 1).await {
        Ok(c) => done.extend(c),
        Err(e) => done.push(format!("leader rebalancing: {e}")),
    }
    done
}

/// Carries out one [`pb::MembershipRequest`] (the `Membership` RPC, and the CLI with
/// `--etcd`). Answers one line per change made.
pub async fn run(
    client: &Client,
    cp: &dyn ControlPlane,
    request: pb::MembershipRequest,
) -> Result<pb::MembershipResponse, ClientError> {
    use pb::membership_request::Action;
    let action = request
        .action
        .ok_or_else(|| invalid("a membership request names no action".into()))?;
    let shard_of = async |change: &pb::ReplicaChange| -> Result<(ShardId, NodeId), ClientError> {
        let map = load(cp).await?;
        Ok((resolve_shard(&map, &change.shard)?, NodeId(change.node)))
    };
    let changes = match action {
        Action::AddReplica(c) => {
            let (shard, node) = shard_of(&c).await?;
            add_replica(client, cp, shard, node).await?
        }
        Action::RemoveReplica(c) => {
            let (shard, node) = shard_of(&c).await?;
            remove_replica(client, cp, shard, node).await?
        }
        Action::TransferLeader(c) => {
            let (shard, node) = shard_of(&c).await?;
            let map = load(cp).await?;
            if !map.shard(shard).map_err(plane)?.members.contains(&node) {
                return Err(invalid(format!(
                    "node {node} is not a member of shard {shard}; only voters can lead"
                )));
            }
            transfer_leader(client, shard, node).await?
        }
        Action::NodeAdd(m) => node_add(cp, NodeId(m.id), &m.addr).await?,
        Action::NodeRemove(id) => node_remove(client, cp, NodeId(id)).await?,
        Action::NodeReplace(r) => node_replace(client, cp, NodeId(r.old), NodeId(r.new)).await?,
        Action::Rebalance(_) => rebalance_leaders(client, cp, usize::MAX).await?,
        Action::RebalanceReplicas(_) => {
            let mut changes = rebalance_replicas(client, cp, usize::MAX).await?;
            changes.extend(rebalance_leaders(client, cp, usize::MAX).await?);
            changes
        }
    };
    let map_revision = load(cp).await?.revision.0;
    Ok(pb::MembershipResponse {
        changes,
        map_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_router::{ClusterId, ShardRecord};

    fn map() -> ShardMap {
        let mut map = ShardMap::bootstrap(ClusterId::new("t").expect("id"), NodeId(1), "h:1");
        map.shards.insert(
            ShardId(4),
            ShardRecord {
                id: ShardId(4),
                graft: "/data".into(),
                parent: Some(ShardId::ROOT),
                members: vec![NodeId(1)],
                learners: Vec::new(),
                epoch: nokv_router::Epoch(1),
                leader_hint: None,
                state: ShardState::Serving,
            },
        );
        map
    }

    #[test]
    fn shards_are_named_by_graft_path_or_id() {
        let map = map();
        assert_eq!(resolve_shard(&map, "/data").expect("path"), ShardId(4));
        assert_eq!(resolve_shard(&map, "#4").expect("id"), ShardId(4));
        assert_eq!(resolve_shard(&map, "/").expect("root"), ShardId::ROOT);
        for bad in ["/nope", "#9", "#x", "#70000", "data"] {
            assert!(resolve_shard(&map, bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn replicas_move_from_the_fullest_to_the_emptiest_node() {
        let mut map = map();
        // Shard 4 on node 1 only; nodes 2 and 3 empty: 1 holds 2, the others 0.
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
        assert_eq!(
            replica_move(&map),
            Some((NodeId(1), NodeId(2), ShardId::ROOT))
        );
        // Balanced within one: nothing to move.
        if let Some(s) = map.shards.get_mut(&ShardId(4)) {
            s.members = vec![NodeId(2)];
        }
        assert_eq!(replica_move(&map), None);
        // A draining node is neither source nor target.
        if let Some(n) = map.nodes.get_mut(&NodeId(3)) {
            n.state = NodeState::Draining;
        }
        assert_eq!(replica_move(&map), None);
    }

    #[test]
    fn only_active_known_nodes_take_replicas() {
        let mut map = map();
        assert!(active_node(&map, NodeId(1)).is_ok());
        assert!(active_node(&map, NodeId(2)).is_err());
        if let Some(n) = map.nodes.get_mut(&NodeId(1)) {
            n.state = NodeState::Draining;
        }
        assert!(active_node(&map, NodeId(1)).is_err());
    }
}
