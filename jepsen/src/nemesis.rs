//! Nemeses: the faults a run injects, on a random schedule with periods of
//! healing in between.
//!
//! | fault              | what happens                                              |
//! |--------------------|-----------------------------------------------------------|
//! | `isolate-leader`   | every link of the current leader is cut                   |
//! | `isolate-node`     | every link of a random node is cut (majority/minority)    |
//! | `bridge`           | only the link leader–follower is cut: the leader and that |
//! |                    | follower each still see a majority, through the third node |
//! | `kill`             | `kill -9` of the leader or a random node, restart at heal |
//! | `pause`            | SIGSTOP-like freeze (`docker pause`) of the leader or a   |
//! |                    | random node, resumed at heal                              |
//! | `kill-multi-leader`| leadership of every shard moved to the node leading the   |
//! |                    | most, then `kill -9` of it; restart at heal               |
//! | `etcd-kill`        | `kill -9` of etcd, restart at heal (data kept)            |
//! | `etcd-partition`   | etcd detached from the client network: no replica reaches |
//! |                    | it; reattached at heal                                    |
//! | `membership`       | `remove-replica` of a shard's replica on one node (the    |
//! |                    | leader half the time) through the `Membership` RPC; at    |
//! |                    | heal `add-replica` of the same node                       |
//! | `clock-skew`       | every replica's wall clock moved by its own offset (1–8 s,|
//! |                    | a quarter of the time 1–3 min; shard leaders skewed both  |
//! |                    | ways); reset to 0 at heal                                 |
//!
//! `--nemesis partition` enables the three partitions, `etcd` both etcd
//! faults, `kill` and `pause` their fault, `all` everything.
//!
//! The clock skew needs images built with the `clock-skew` feature
//! (`scripts/test.sh` builds them so): containers share the kernel's clock,
//! so each replica adds an offset it reads from a file
//! (`meta-node/src/clock.rs`), which the nemesis replaces with `docker cp`.
//! It then creates a probe file in each shard until its mtime, which the
//! shard's leader stamps, shows one of the offsets (and, at heal, none):
//! a build that ignores the offset fails the injection instead of passing
//! a fault that never happened. The skew leaves safety to monotonic
//! clocks (read-index, leases, the GC grace period); the run's GC checks
//! (short grace, `fsck` at the end) look for what a wall clock would break. A membership
//! step that fails is recorded (`error`, with the reason) and retried at
//! heal; it does not fail the run by itself, since refusing a change is
//! allowed (the run's safety and liveness checks still apply). Each cycle waits a healthy period, takes
//! the next fault of a round (every enabled fault once per round, in a
//! seeded random order), holds it, then heals it.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use nokv_proto::pb::membership_request::Action;
use nokv_proto::pb::{MembershipRequest, ReplicaChange};

use crate::cluster::{ClusterError, DockerCluster};
use crate::workload::Clock;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    IsolateLeader,
    IsolateNode,
    Bridge,
    Kill,
    Pause,
    KillMultiLeader,
    EtcdKill,
    EtcdPartition,
    Membership,
    ClockSkew,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::IsolateLeader,
        FaultKind::IsolateNode,
        FaultKind::Bridge,
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::KillMultiLeader,
        FaultKind::EtcdKill,
        FaultKind::EtcdPartition,
        FaultKind::Membership,
        FaultKind::ClockSkew,
    ];

    /// The name `--nemesis` and the report use.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::IsolateNode => "isolate-node",
            FaultKind::Bridge => "bridge",
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::KillMultiLeader => "kill-multi-leader",
            FaultKind::EtcdKill => "etcd-kill",
            FaultKind::EtcdPartition => "etcd-partition",
            FaultKind::Membership => "membership",
            FaultKind::ClockSkew => "clock-skew",
        }
    }
}

/// The set of faults a run may inject (`--nemesis`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisSpec(pub Vec<FaultKind>);

impl FromStr for NemesisSpec {
    type Err = String;

    /// A comma-separated list of `none`, `partition`, `kill`, `pause`, `all`
    /// or single fault names (`isolate-leader`, `isolate-node`, `bridge`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut kinds = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "none" => {}
                "all" => kinds.extend(FaultKind::ALL),
                "partition" => kinds.extend([
                    FaultKind::IsolateLeader,
                    FaultKind::IsolateNode,
                    FaultKind::Bridge,
                ]),
                "etcd" => kinds.extend([FaultKind::EtcdKill, FaultKind::EtcdPartition]),
                other => match FaultKind::ALL.iter().find(|k| k.name() == other) {
                    Some(kind) => kinds.push(*kind),
                    None => {
                        return Err(format!(
                            "unknown nemesis {other:?} (expected none, all, partition, etcd, \
                             or one of: {})",
                            FaultKind::ALL.map(FaultKind::name).join(", ")
                        ))
                    }
                },
            }
        }
        kinds.sort();
        kinds.dedup();
        Ok(NemesisSpec(kinds))
    }
}

/// One fault as injected, on concrete nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// These links were cut.
    Partition {
        kind: FaultKind,
        cut: Vec<(u64, u64)>,
    },
    Kill {
        node: u64,
        was_leader: bool,
    },
    Pause {
        node: u64,
        was_leader: bool,
    },
    /// Killed `node` after moving every shard's leadership to it; `shards`
    /// are the shards it led just before the kill.
    #[serde(rename = "kill-multi-leader")]
    KillLeaders {
        node: u64,
        shards: Vec<u32>,
    },
    EtcdKill,
    EtcdPartition,
    /// The replica of `shard` on `node` was removed (re-added at heal).
    Membership {
        shard: u32,
        node: u64,
        was_leader: bool,
    },
    /// Each node's wall clock was moved by its offset in milliseconds
    /// (reset to 0 at heal).
    ClockSkew {
        offsets_ms: BTreeMap<u64, i64>,
    },
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Partition { kind, .. } => *kind,
            Fault::Kill { .. } => FaultKind::Kill,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::KillLeaders { .. } => FaultKind::KillMultiLeader,
            Fault::EtcdKill => FaultKind::EtcdKill,
            Fault::EtcdPartition => FaultKind::EtcdPartition,
            Fault::Membership { .. } => FaultKind::Membership,
            Fault::ClockSkew { .. } => FaultKind::ClockSkew,
        }
    }
}

/// A line of `nemesis.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NemesisEvent {
    /// When the harness began injecting (or healing) it: the fault can take
    /// effect at any moment up to `done_ns`. Failover is measured from here.
    pub time_ns: u64,
    /// When the `docker` commands returned.
    pub done_ns: u64,
    /// Wall-clock time of `time_ns` (RFC 3339, UTC), to line events up with
    /// the replicas' logs.
    pub wall: String,
    /// `start`, `heal` or `error`.
    pub phase: String,
    pub fault: Option<Fault>,
    /// The node that led shard 0 just before the fault, if known.
    pub leader_before: Option<u64>,
    /// The leader of each shard just before the fault, as the replicas
    /// that led reported it (shard id to node).
    #[serde(default)]
    pub leaders_before: BTreeMap<u32, u64>,
    pub message: Option<String>,
    /// What a membership step reported it changed; for a clock skew, the
    /// skew each shard's leader was seen to stamp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// Schedule settings.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub faults: NemesisSpec,
    /// Mean healthy period between faults.
    pub healthy: Duration,
    /// Mean fault period.
    pub fault: Duration,
}

fn wall_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn around(rng: &mut StdRng, mean: Duration) -> Duration {
    mean.mul_f64(rng.random_range(0.5..1.5))
}

/// Waits `d`, or less if the run stops first; true if it stopped.
async fn wait_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    let stopped = tokio::time::timeout(d, stop.wait_for(|s| *s)).await;
    // `Ok(Ok(_))`: stopped; `Ok(Err(_))`: the sender is gone, which only
    // happens once the run is over; `Err(_)`: the period passed.
    stopped.is_ok()
}

/// Injects faults until `stop`, healing after each; always heals before
/// returning. Returns the log of what it did.
pub async fn run(
    cluster: &DockerCluster,
    schedule: &Schedule,
    clock: Clock,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) -> Vec<NemesisEvent> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006E_656D_6573_6973);
    let mut log = Vec::new();
    if schedule.faults.0.is_empty() {
        return log;
    }
    let mut round: Vec<FaultKind> = Vec::new();
    loop {
        if wait_or_stop(around(&mut rng, schedule.healthy), &mut stop).await {
            break;
        }
        // Every enabled fault once per round, in a random order.
        if round.is_empty() {
            round = schedule.faults.0.clone();
            round.shuffle(&mut rng);
        }
        let Some(kind) = round.pop() else { break };
        let leaders = cluster.shard_leaders().await;
        let leader = match leaders.get(&0) {
            Some(l) => Some(*l),
            None => cluster.current_leader().await,
        };
        let mut fault = choose(cluster, kind, leader, &leaders, &mut rng);
        let (time_ns, wall) = (clock.now_ns(), wall_now());
        let started = inject(cluster, &mut fault).await;
        log.push(NemesisEvent {
            time_ns,
            wall,
            done_ns: clock.now_ns(),
            phase: if started.is_ok() { "start" } else { "error" }.into(),
            fault: Some(fault.clone()),
            leader_before: leader,
            leaders_before: leaders,
            message: started.as_ref().err().map(|e| e.to_string()),
            changes: started.unwrap_or_default(),
        });
        tracing::info!(?fault, ?leader, "nemesis: fault");
        // Hold the fault for its period even if the run ends meanwhile: the
        // heal below always runs.
        let _ = wait_or_stop(around(&mut rng, schedule.fault), &mut stop).await;
        let (time_ns, wall) = (clock.now_ns(), wall_now());
        let healed = heal(cluster, &fault).await;
        log.push(NemesisEvent {
            time_ns,
            wall,
            done_ns: clock.now_ns(),
            phase: if healed.is_ok() { "heal" } else { "error" }.into(),
            fault: Some(fault.clone()),
            leader_before: None,
            leaders_before: BTreeMap::new(),
            message: healed.as_ref().err().map(|e| e.to_string()),
            changes: healed.unwrap_or_default(),
        });
        tracing::info!(?fault, "nemesis: healed");
        if *stop.borrow() {
            break;
        }
    }
    log
}

/// Picks the nodes for a fault of `kind`.
pub fn choose(
    cluster: &DockerCluster,
    kind: FaultKind,
    leader: Option<u64>,
    leaders: &BTreeMap<u32, u64>,
    rng: &mut StdRng,
) -> Fault {
    let ids = cluster.node_ids();
    let random = ids[rng.random_range(0..ids.len())];
    let leader_or_random = leader.unwrap_or(random);
    let links_of = |node: u64| -> Vec<(u64, u64)> {
        cluster
            .links()
            .into_iter()
            .filter(|(a, b)| *a == node || *b == node)
            .collect()
    };
    match kind {
        FaultKind::IsolateLeader => Fault::Partition {
            kind,
            cut: links_of(leader_or_random),
        },
        FaultKind::IsolateNode => Fault::Partition {
            kind,
            cut: links_of(random),
        },
        FaultKind::Bridge => {
            let others: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|&i| i != leader_or_random)
                .collect();
            let peer = others[rng.random_range(0..others.len())];
            Fault::Partition {
                kind,
                cut: vec![crate::cluster::link(leader_or_random, peer)],
            }
        }
        // Half the time the leader (failover), half a random node.
        FaultKind::Kill => {
            let node = if rng.random_bool(0.5) {
                leader_or_random
            } else {
                random
            };
            Fault::Kill {
                node,
                was_leader: leader == Some(node),
            }
        }
        FaultKind::Pause => {
            let node = if rng.random_bool(0.5) {
                leader_or_random
            } else {
                random
            };
            Fault::Pause {
                node,
                was_leader: leader == Some(node),
            }
        }
        FaultKind::KillMultiLeader => {
            let mut led: BTreeMap<u64, usize> = BTreeMap::new();
            for node in leaders.values() {
                *led.entry(*node).or_default() += 1;
            }
            let node = led
                .iter()
                .max_by_key(|(node, count)| (**count, std::cmp::Reverse(**node)))
                .map_or(leader_or_random, |(node, _)| *node);
            Fault::KillLeaders {
                node,
                shards: Vec::new(),
            }
        }
        FaultKind::EtcdKill => Fault::EtcdKill,
        FaultKind::EtcdPartition => Fault::EtcdPartition,
        FaultKind::Membership => {
            let shards = cluster.shard_ids();
            let shard = shards[rng.random_range(0..shards.len())];
            let shard_leader = leaders.get(&shard).copied();
            let node = match shard_leader {
                Some(l) if rng.random_bool(0.5) => l,
                _ => random,
            };
            Fault::Membership {
                shard,
                node,
                was_leader: shard_leader == Some(node),
            }
        }
        FaultKind::ClockSkew => Fault::ClockSkew {
            offsets_ms: clock_offsets(&ids, leaders, leader, rng),
        },
    }
}

/// An offset for each node: the leaders first (shard order, then shard 0's
/// as the nemesis saw it), the first forward or backward at random and the
/// next the other way (another node when one node leads every shard), the
/// rest at random; 1–8 s each, a quarter of them 1–3 min (below the 10 min
/// upload lease, so writes keep working while the leader changes).
fn clock_offsets(
    ids: &[u64],
    leaders: &BTreeMap<u32, u64>,
    leader: Option<u64>,
    rng: &mut StdRng,
) -> BTreeMap<u64, i64> {
    let mut order: Vec<u64> = Vec::new();
    let mut rest: Vec<u64> = ids.to_vec();
    rest.shuffle(rng);
    for node in leaders.values().copied().chain(leader).chain(rest) {
        if ids.contains(&node) && !order.contains(&node) {
            order.push(node);
        }
    }
    let first_forward = rng.random_bool(0.5);
    order
        .iter()
        .enumerate()
        .map(|(i, &node)| {
            let forward = match i {
                0 => first_forward,
                1 => !first_forward,
                _ => rng.random_bool(0.5),
            };
            let ms: i64 = if rng.random_bool(0.25) {
                rng.random_range(60_000..=180_000)
            } else {
                rng.random_range(1_000..=8_000)
            };
            (node, if forward { ms } else { -ms })
        })
        .collect()
}

/// Where the clock probes of each shard go (by position in
/// [`DockerCluster::shard_ids`]): outside every workload's directory.
const CLOCK_PROBE_DIRS: [&str; 2] = ["/jepsen/clock", "/s1/clock"];
/// How long the replicas may take to show a new offset (they re-read it
/// every 100 ms; a probe is one write).
const CLOCK_SETTLE: Duration = Duration::from_secs(10);
/// Slack around the probe's call when matching an mtime to an offset.
const CLOCK_SLACK_MS: i64 = 100;

/// Sets every node's clock offset, then waits until a file created in each
/// shard carries an mtime its leader stamped with one of `offsets_ms`
/// (within the probe's call, plus [`CLOCK_SLACK_MS`]). Returns what each
/// shard's probe showed.
async fn skew_clocks(
    cluster: &DockerCluster,
    offsets_ms: &BTreeMap<u64, i64>,
) -> Result<Vec<String>, ClusterError> {
    for (&node, &ms) in offsets_ms {
        cluster.set_clock_offset(node, ms).await?;
    }
    let client = cluster.client(Duration::from_secs(5))?;
    let wall_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128)
    };
    let deadline = tokio::time::Instant::now() + CLOCK_SETTLE;
    let mut seen = Vec::new();
    for (&shard, dir) in cluster.shard_ids().iter().zip(CLOCK_PROBE_DIRS) {
        loop {
            let probe = format!("{dir}/p{}", rand::random::<u64>());
            let made = match client.mkdir(dir, true).await {
                Ok(_) => {
                    let before = wall_ns();
                    client.create(&probe).await.map(|a| (before, a, wall_ns()))
                }
                Err(e) => Err(e),
            };
            let last = match made {
                Ok((before, attr, after)) => {
                    let mtime = i128::from(attr.mtime_ns);
                    let slack = i128::from(CLOCK_SLACK_MS) * 1_000_000;
                    let skew_ms = (mtime - (before + after) / 2) / 1_000_000;
                    let matched = offsets_ms.iter().find(|(_, &ms)| {
                        let ms = i128::from(ms) * 1_000_000;
                        mtime >= before + ms - slack && mtime <= after + ms + slack
                    });
                    if let Some((node, ms)) = matched {
                        let whose = match ms {
                            0 => "no offset".to_string(),
                            ms => format!("node {node}'s offset {ms} ms"),
                        };
                        seen.push(format!(
                            "shard {shard}: mtime {skew_ms} ms off the harness clock ({whose})"
                        ));
                        break;
                    }
                    format!("mtime {skew_ms} ms off the harness clock")
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Harness(format!(
                    "shard {shard} did not show any of the clock offsets {offsets_ms:?} \
                     within {CLOCK_SETTLE:?} ({last}); is the image built with \
                     `--features clock-skew`?"
                )));
            }
            // A poll interval: the condition is the probe's mtime.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(seen)
}

/// How long one membership step may take (adding waits for the new
/// replica to catch up) before its outcome counts as unknown.
const MEMBERSHIP_STEP: Duration = Duration::from_secs(30);

fn replica_change(shard: u32, node: u64) -> ReplicaChange {
    ReplicaChange {
        shard: format!("#{shard}"),
        node,
    }
}

/// Moves the leadership of every shard `node` does not lead to it (best
/// effort: a refused transfer leaves that shard where it is), then returns
/// the shards it leads.
async fn gather_leaders(cluster: &DockerCluster, node: u64) -> Vec<u32> {
    let leaders = cluster.shard_leaders().await;
    for (&shard, &leader) in &leaders {
        if leader != node {
            if let Err(e) = cluster.transfer_leader(shard, node).await {
                tracing::info!(shard, node, error = %e, "nemesis: leadership not moved");
            }
        }
    }
    cluster
        .shard_leaders()
        .await
        .into_iter()
        .filter(|(_, l)| *l == node)
        .map(|(s, _)| s)
        .collect()
}

/// Injects `fault` (filling in what it found, e.g. the shards a killed
/// node led); returns what a membership step reported it changed.
pub async fn inject(
    cluster: &DockerCluster,
    fault: &mut Fault,
) -> Result<Vec<String>, ClusterError> {
    match fault {
        Fault::Partition { cut, .. } => {
            for &(a, b) in cut.iter() {
                cluster.cut_link(a, b).await?;
            }
        }
        Fault::Kill { node, .. } => cluster.kill(*node).await?,
        Fault::Pause { node, .. } => cluster.pause(*node).await?,
        Fault::KillLeaders { node, shards } => {
            *shards = gather_leaders(cluster, *node).await;
            cluster.kill(*node).await?;
        }
        Fault::EtcdKill => cluster.kill_etcd().await?,
        Fault::EtcdPartition => cluster.cut_etcd().await?,
        Fault::Membership { shard, node, .. } => {
            let request = MembershipRequest {
                action: Some(Action::RemoveReplica(replica_change(*shard, *node))),
            };
            return cluster.membership(request, MEMBERSHIP_STEP).await;
        }
        Fault::ClockSkew { offsets_ms } => return skew_clocks(cluster, offsets_ms).await,
    }
    Ok(Vec::new())
}

pub async fn heal(cluster: &DockerCluster, fault: &Fault) -> Result<Vec<String>, ClusterError> {
    match fault {
        Fault::Partition { cut, .. } => {
            for &(a, b) in cut {
                cluster.heal_link(a, b).await?;
            }
        }
        Fault::Kill { node, .. } | Fault::KillLeaders { node, .. } => {
            cluster.restart(*node).await?
        }
        Fault::Pause { node, .. } => cluster.unpause(*node).await?,
        Fault::EtcdKill => cluster.restart_etcd().await?,
        Fault::EtcdPartition => cluster.heal_etcd().await?,
        Fault::ClockSkew { offsets_ms } => {
            let zero = offsets_ms.keys().map(|&node| (node, 0)).collect();
            return skew_clocks(cluster, &zero).await;
        }
        Fault::Membership { shard, node, .. } => {
            // The replica must come back whatever the removal did (adding
            // is idempotent): retry a refused step until a deadline.
            let deadline = tokio::time::Instant::now() + MEMBERSHIP_STEP * 2;
            let mut failures = Vec::new();
            loop {
                let request = MembershipRequest {
                    action: Some(Action::AddReplica(replica_change(*shard, *node))),
                };
                match cluster.membership(request, MEMBERSHIP_STEP).await {
                    Ok(mut changes) => {
                        changes.extend(failures.into_iter().map(|e| format!("retried after: {e}")));
                        return Ok(changes);
                    }
                    Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                    Err(e) => {
                        tracing::info!(shard, node, error = %e, "nemesis: add-replica refused; retrying");
                        failures.push(e.to_string());
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemesis_names_parse_and_all_holds_every_fault() {
        let all: NemesisSpec = "all".parse().expect("all");
        assert_eq!(all.0.len(), FaultKind::ALL.len());
        let etcd: NemesisSpec = "etcd,membership".parse().expect("etcd");
        assert_eq!(
            etcd.0,
            vec![
                FaultKind::EtcdKill,
                FaultKind::EtcdPartition,
                FaultKind::Membership
            ]
        );
        for kind in FaultKind::ALL {
            let one: NemesisSpec = kind.name().parse().expect("single");
            assert_eq!(one.0, vec![kind]);
            // The report's name is the serde name.
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                serde_json::Value::String(kind.name().into())
            );
        }
        assert!("etcd-pause".parse::<NemesisSpec>().is_err());
    }

    #[test]
    fn clock_offsets_skew_the_leaders_both_ways_within_bounds() {
        let ids = [1, 2, 3];
        let in_range = |ms: i64| {
            let a = ms.unsigned_abs();
            (1_000..=8_000).contains(&a) || (60_000..=180_000).contains(&a)
        };
        let mut minutes = 0;
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            // Two shards on two leaders, then one node leading both.
            for leaders in [
                BTreeMap::from([(0, 3), (1, 1)]),
                BTreeMap::from([(0, 2), (1, 2)]),
            ] {
                let offsets = clock_offsets(&ids, &leaders, leaders.get(&0).copied(), &mut rng);
                assert_eq!(offsets.keys().copied().collect::<Vec<_>>(), ids);
                assert!(offsets.values().all(|&ms| in_range(ms)), "{offsets:?}");
                assert!(offsets.values().any(|&ms| ms > 0), "{offsets:?}");
                assert!(offsets.values().any(|&ms| ms < 0), "{offsets:?}");
                let first = offsets[&leaders[&0]];
                let other = match leaders[&1] {
                    l if l != leaders[&0] => offsets[&l],
                    _ => 0,
                };
                if other != 0 {
                    assert!(first.signum() != other.signum(), "{offsets:?}");
                }
                minutes += offsets.values().filter(|ms| ms.abs() >= 60_000).count();
            }
        }
        assert!(minutes > 0, "never a skew of minutes");
        // Seeded: the same seed gives the same offsets.
        let leaders = BTreeMap::from([(0, 1), (1, 2)]);
        let a = clock_offsets(&ids, &leaders, Some(1), &mut StdRng::seed_from_u64(7));
        let b = clock_offsets(&ids, &leaders, Some(1), &mut StdRng::seed_from_u64(7));
        assert_eq!(a, b);
    }
}
