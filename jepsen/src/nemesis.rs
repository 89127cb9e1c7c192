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
//!
//! `--nemesis partition` enables the three partitions, `kill` and `pause`
//! their fault, `all` everything. Each cycle waits a healthy period, takes
//! the next fault of a round (every enabled fault once per round, in a
//! seeded random order), holds it, then heals it.

use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::IsolateLeader,
        FaultKind::IsolateNode,
        FaultKind::Bridge,
        FaultKind::Kill,
        FaultKind::Pause,
    ];
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
                "isolate-leader" => kinds.push(FaultKind::IsolateLeader),
                "isolate-node" => kinds.push(FaultKind::IsolateNode),
                "bridge" => kinds.push(FaultKind::Bridge),
                "kill" => kinds.push(FaultKind::Kill),
                "pause" => kinds.push(FaultKind::Pause),
                other => {
                    return Err(format!(
                        "unknown nemesis {other:?} (expected none, all, partition, kill, pause, \
                         isolate-leader, isolate-node or bridge)"
                    ))
                }
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
    /// The node that led just before the fault, if known.
    pub leader_before: Option<u64>,
    pub message: Option<String>,
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
        let leader = cluster.current_leader().await;
        let fault = choose(cluster, kind, leader, &mut rng);
        let (time_ns, wall) = (clock.now_ns(), wall_now());
        let started = inject(cluster, &fault).await;
        log.push(NemesisEvent {
            time_ns,
            wall,
            done_ns: clock.now_ns(),
            phase: if started.is_ok() { "start" } else { "error" }.into(),
            fault: Some(fault.clone()),
            leader_before: leader,
            message: started.as_ref().err().map(|e| e.to_string()),
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
            message: healed.as_ref().err().map(|e| e.to_string()),
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
    }
}

pub async fn inject(cluster: &DockerCluster, fault: &Fault) -> Result<(), ClusterError> {
    match fault {
        Fault::Partition { cut, .. } => {
            for &(a, b) in cut {
                cluster.cut_link(a, b).await?;
            }
            Ok(())
        }
        Fault::Kill { node, .. } => cluster.kill(*node).await,
        Fault::Pause { node, .. } => cluster.pause(*node).await,
    }
}

pub async fn heal(cluster: &DockerCluster, fault: &Fault) -> Result<(), ClusterError> {
    match fault {
        Fault::Partition { cut, .. } => {
            for &(a, b) in cut {
                cluster.heal_link(a, b).await?;
            }
            Ok(())
        }
        Fault::Kill { node, .. } => cluster.restart(*node).await,
        Fault::Pause { node, .. } => cluster.unpause(*node).await,
    }
}
