//! `nokv cluster init` and `nokv status`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use nokv_client::{Client, ClientError, Member, Role, StatusResponse};
use serde_json::json;

use crate::output::print_json;
use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Form a new Raft group from these voters, e.g.
    /// `--members 1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403`.
    /// The request goes to the first member; a single member is allowed.
    Init {
        #[arg(long, required = true, value_delimiter = ',')]
        members: Vec<String>,
        /// How long to wait for a leader to be elected afterwards.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

/// Parses `ID=HOST:PORT`.
pub fn parse_member(s: &str) -> anyhow::Result<Member> {
    let (id, addr) = s
        .split_once('=')
        .with_context(|| format!("member {s:?} is not ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .with_context(|| format!("member {s:?}: node id is not a number"))?;
    if id == 0 {
        bail!("member {s:?}: node ids start at 1");
    }
    let addr = addr.trim();
    if !addr.contains(':') {
        bail!("member {s:?}: address must be HOST:PORT");
    }
    Ok(Member {
        id,
        addr: addr.to_string(),
    })
}

pub async fn run(c: ClusterCommand, g: &GlobalArgs) -> anyhow::Result<()> {
    match c {
        ClusterCommand::Init { members, wait } => {
            let members = members
                .iter()
                .map(|m| parse_member(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            init(members, wait, g).await
        }
    }
}

/// Initializes the group via its first member and waits for a leader.
/// With `--etcd` the cluster is first recorded in the control plane (the
/// root shard on these members), so that nodes serving with `--etcd` find
/// their placement there.
pub async fn init(members: Vec<Member>, wait: Duration, g: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(cp) = crate::control::from_args(g).await? {
        crate::control::init_map(cp.as_ref(), &members).await?;
    }
    let first = members.first().context("no members given")?.addr.clone();
    let addrs: Vec<String> = members.iter().map(|m| m.addr.clone()).collect();
    let client = Client::new(g.client_config(addrs.clone())?)?;
    // The members may still be starting: retry while the first one is
    // unreachable, until `wait` runs out.
    let deadline = tokio::time::Instant::now() + wait;
    let already = loop {
        match client.init_cluster(&first, members.clone()).await {
            Ok(()) => break false,
            Err(ClientError::AlreadyInitialized(_)) => break true,
            Err(ClientError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("init via {first}")),
        }
    };
    let leader = wait_for_leader(&client, &addrs, wait).await?;
    if g.json {
        print_json(&json!({
            "initialized": true,
            "already_initialized": already,
            "leader_id": leader.0,
            "leader_addr": leader.1,
        }));
    } else if already {
        outln!(
            "cluster was already initialized; leader is node {} at {}",
            leader.0,
            leader.1
        );
    } else {
        outln!(
            "cluster initialized; leader is node {} at {}",
            leader.0,
            leader.1
        );
    }
    Ok(())
}

/// Polls the replicas until one reports itself leader.
pub async fn wait_for_leader(
    client: &Client,
    addrs: &[String],
    wait: Duration,
) -> anyhow::Result<(u64, String)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        for addr in addrs {
            if let Ok(s) = client.status_of(addr).await {
                if s.role == nokv_client_role_leader() {
                    return Ok((s.node_id, s.addr));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no leader elected within {}",
                humantime::format_duration(wait)
            );
        }
        // Polling interval while waiting for an election (not a synchronisation sleep:
        // the loop re-checks the condition each round until the deadline).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn nokv_client_role_leader() -> i32 {
    Role::Leader as i32
}

fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Leader) => "leader",
        Ok(Role::Follower) => "follower",
        Ok(Role::Candidate) => "candidate",
        Ok(Role::Learner) => "learner",
        Ok(Role::Shutdown) => "shutdown",
        Ok(Role::Unknown) | Err(_) => "unknown",
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub async fn status(g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    // Ask every given endpoint, then every voter they name.
    let mut rows: BTreeMap<String, Result<StatusResponse, ClientError>> = BTreeMap::new();
    let mut queue: Vec<String> = client.endpoints().to_vec();
    while let Some(addr) = queue.pop() {
        if rows.contains_key(&addr) {
            continue;
        }
        let r = client.status_of(&addr).await;
        if let Ok(s) = &r {
            for m in s.voters.iter().chain(s.learners.iter()) {
                let reachable = client.reachable(&m.addr);
                if !rows.contains_key(&reachable) {
                    queue.push(reachable);
                }
            }
        }
        rows.insert(addr, r);
    }
    // Every shard each answering node hosts (shard 0 is listed above).
    let mut shards: BTreeMap<(u32, u64), StatusResponse> = BTreeMap::new();
    for addr in rows
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(a, _)| a.clone())
    {
        if let Ok(node) = client.node_status(&addr).await {
            for s in node.shards {
                shards.insert((s.shard, s.node_id), s);
            }
        }
    }
    // Drop endpoint aliases that answered as a node already listed.
    let healthy_leader = rows
        .values()
        .filter_map(|r| r.as_ref().ok())
        .any(|s| s.role == nokv_client_role_leader());
    if g.json {
        let nodes: Vec<_> = rows
            .iter()
            .map(|(addr, r)| match r {
                Ok(s) => json!({
                    "endpoint": addr,
                    "node_id": s.node_id,
                    "addr": s.addr,
                    "role": role_name(s.role),
                    "term": s.term,
                    "leader_id": s.leader_id,
                    "leader_addr": s.leader_addr,
                    "last_log_index": s.last_log_index,
                    "applied_index": s.applied_index,
                    "snapshot_index": s.snapshot_index,
                    "purged_index": s.purged_index,
                    "voters": s.voters.iter().map(|m| json!({"id": m.id, "addr": m.addr})).collect::<Vec<_>>(),
                    "learners": s.learners.iter().map(|m| json!({"id": m.id, "addr": m.addr})).collect::<Vec<_>>(),
                    "shard": s.shard,
                    "epoch": s.epoch,
                    "inodes": s.inodes,
                    "initialized": s.initialized,
                    "version": s.version,
                    "blob_location": s.blob_location,
                    "staged_uploads": s.staged_uploads,
                    "gc_pending": s.gc_pending,
                    "newest_cursor": s.newest_cursor,
                    "oldest_cursor": s.oldest_cursor,
                    "snapshots": s.snapshots,
                    "watch_max_events": s.watch_max_events,
                    "watch_max_age_ms": s.watch_max_age_ms,
                }),
                Err(e) => json!({"endpoint": addr, "error": e.to_string()}),
            })
            .collect();
        let replicas: Vec<_> = shards
            .values()
            .map(|s| {
                json!({
                    "shard": s.shard,
                    "node_id": s.node_id,
                    "role": role_name(s.role),
                    "term": s.term,
                    "epoch": s.epoch,
                    "leader_id": s.leader_id,
                    "voters": s.voters.iter().map(|m| m.id).collect::<Vec<_>>(),
                    "learners": s.learners.iter().map(|m| m.id).collect::<Vec<_>>(),
                    "applied_index": s.applied_index,
                    "inodes": s.inodes,
                })
            })
            .collect();
        print_json(&json!({"healthy": healthy_leader, "nodes": nodes, "shards": replicas}));
    } else {
        outln!(
            "{:<22} {:>4} {:<9} {:>5} {:>6} {:>9} {:>9} {:>9}",
            "ENDPOINT",
            "NODE",
            "ROLE",
            "TERM",
            "LEADER",
            "LAST_LOG",
            "APPLIED",
            "SNAPSHOT"
        );
        for (addr, r) in &rows {
            match r {
                Ok(s) => outln!(
                    "{:<22} {:>4} {:<9} {:>5} {:>6} {:>9} {:>9} {:>9}",
                    addr,
                    s.node_id,
                    role_name(s.role),
                    s.term,
                    opt(s.leader_id),
                    opt(s.last_log_index),
                    opt(s.applied_index),
                    opt(s.snapshot_index)
                ),
                Err(e) => outln!("{addr:<22} unreachable: {e}"),
            }
        }
        if !healthy_leader {
            outln!("no leader: the cluster is not serving writes");
        }
        if shards.keys().any(|(shard, _)| *shard != 0) {
            outln!();
            outln!(
                "{:>5} {:>4} {:<9} {:>5} {:>5} {:>6} {:<12} {:>9}",
                "SHARD",
                "NODE",
                "ROLE",
                "TERM",
                "EPOCH",
                "LEADER",
                "VOTERS",
                "APPLIED"
            );
            for s in shards.values() {
                let voters: Vec<String> = s.voters.iter().map(|m| m.id.to_string()).collect();
                outln!(
                    "{:>5} {:>4} {:<9} {:>5} {:>5} {:>6} {:<12} {:>9}",
                    s.shard,
                    s.node_id,
                    role_name(s.role),
                    s.term,
                    s.epoch,
                    opt(s.leader_id),
                    voters.join(","),
                    opt(s.applied_index)
                );
            }
        }
        // Shard-wide state, as the leader (else the first replica) sees it.
        let ok = || rows.values().filter_map(|r| r.as_ref().ok());
        let leader = ok().find(|s| s.role == nokv_client_role_leader());
        if let Some(s) = leader.or_else(|| ok().next()) {
            let store = if s.blob_location.is_empty() {
                "none (metadata only)"
            } else {
                s.blob_location.as_str()
            };
            outln!(
                "object store: {store}; staged uploads: {}; GC tasks pending: {}",
                s.staged_uploads,
                s.gc_pending
            );
            outln!(
                "watch: resumable from cursor {}, newest {} (keeps {} events / {}); snapshot pins: {}",
                s.oldest_cursor,
                s.newest_cursor,
                s.watch_max_events,
                humantime::format_duration(std::time::Duration::from_millis(s.watch_max_age_ms)),
                s.snapshots
            );
        }
    }
    if rows.values().all(|r| r.is_err()) {
        bail!("no replica answered");
    }
    Ok(())
}

/// Healthy when the first endpoint answers, is initialized and knows a
/// leader. Asks no other replica, so one cut-off peer cannot slow it down.
pub async fn health(g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let endpoint = client.endpoints()[0].clone();
    let s = client
        .status_of(&endpoint)
        .await
        .with_context(|| format!("health of {endpoint}"))?;
    let healthy = s.initialized && s.leader_id.is_some();
    if g.json {
        print_json(&json!({
            "endpoint": endpoint,
            "healthy": healthy,
            "initialized": s.initialized,
            "role": role_name(s.role),
            "leader_id": s.leader_id,
        }));
    } else {
        outln!(
            "{endpoint}: {} (node {}, {}, leader {})",
            if healthy { "healthy" } else { "unhealthy" },
            s.node_id,
            role_name(s.role),
            opt(s.leader_id)
        );
    }
    if !s.initialized {
        bail!("{endpoint} is not initialized (run nokv cluster init)");
    }
    if s.leader_id.is_none() {
        bail!("{endpoint} knows no leader");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse() {
        let m = parse_member("2=127.0.0.1:7402").expect("valid");
        assert_eq!((m.id, m.addr.as_str()), (2, "127.0.0.1:7402"));
        assert!(parse_member("x=1:2").is_err());
        assert!(parse_member("0=a:1").is_err());
        assert!(parse_member("3").is_err());
        assert!(parse_member("3=nohost").is_err());
    }
}
