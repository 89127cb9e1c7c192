//! One test run: start a cluster, run workloads under a nemesis for the
//! time limit, heal, wait for the replicas to settle, read the final
//! state, check, and write everything to the run's directory
//! ([`crate::record`]):
//!
//! | file                | content                                                |
//! |---------------------|--------------------------------------------------------|
//! | `register.jsonl`    | register history, one invoke/complete event per line   |
//! | `set.jsonl`         | set adds                                               |
//! | `namespace.jsonl`   | namespace moves                                        |
//! | `nemesis.jsonl`     | every fault injected and healed                        |
//! | `status.json`       | every replica's status (role, term, leader, last log,  |
//! |                     | applied), only if they did not settle within the bound |
//! |                     | (or the cluster did not form at all)                   |
//! | `summary.json`      | the [`Report`], also of a run that was aborted         |
//! | `node-N.log`        | each replica's whole log                               |
//! | `node-N.process.txt`| an aborted run's replica processes as the host saw     |
//! |                     | them: container state, threads, backtraces (`gdb`)     |
//!
//! Whatever the outcome (valid, anomaly, the cluster did not form or did
//! not settle, Ctrl-C, a harness error or panic), every file whose content exists is
//! written: the histories and the nemesis log as soon as the workloads
//! stop, the logs and the summary last.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use nokv_checker::{
    check_keyed, check_liveness, no_majority_intervals, Event, History, LeaderLoss, LivenessBounds,
    LivenessInput, LivenessSummary, Operation, Outcome, OutcomeCounts, Register, RegisterInput,
    RegisterOutput, SearchBudget, SetSummary, Summary, TopologyChange, TopologyEvent, TreeSummary,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::{
    agreed_leader, ClusterError, ClusterOptions, DockerCluster, FsckReport, ReplicaStatus, GRAFT,
    SHARDS,
};
use crate::nemesis::{self, Fault, FaultKind, NemesisEvent, Schedule};
use crate::record::{RunDir, StatusSnapshot};
use crate::workload::graft::{self, GraftCheck};
use crate::workload::{namespace, register, set, Clock, Ctx};

/// Which workloads run (concurrently, on one cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workloads {
    pub register: bool,
    pub set: bool,
    pub namespace: bool,
}

impl std::str::FromStr for Workloads {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut w = Workloads::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "register" => w.register = true,
                "set" => w.set = true,
                "namespace" => w.namespace = true,
                "all" => {
                    w = Workloads {
                        register: true,
                        set: true,
                        namespace: true,
                    }
                }
                other => {
                    return Err(format!(
                        "unknown workload {other:?} (expected register, set, namespace or all)"
                    ))
                }
            }
        }
        if !(w.register || w.set || w.namespace) {
            return Err("no workload selected".into());
        }
        Ok(w)
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub time_limit: Duration,
    pub schedule: Schedule,
    pub workloads: Workloads,
    pub seed: u64,
    pub out_dir: PathBuf,
    pub op_timeout: Duration,
    pub register: register::RegisterConfig,
    pub set_processes: usize,
    pub namespace_processes: usize,
    pub cluster: ClusterOptions,
    /// How long the final reads may take once everything is healed.
    pub recovery_timeout: Duration,
    pub check_budget: SearchBudget,
    /// How soon writes must resume after a leader loss, and the cluster
    /// settle after the final heal.
    pub liveness: LivenessBounds,
}

/// Time from losing the leader to the first acknowledged write.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failover {
    /// One sample per fault that took the leader away, in milliseconds.
    pub samples_ms: Vec<f64>,
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Failover {
    fn from_samples(mut samples_ms: Vec<f64>) -> Failover {
        samples_ms.sort_by(f64::total_cmp);
        let p50_ms = (!samples_ms.is_empty()).then(|| samples_ms[(samples_ms.len() - 1) / 2]);
        let max_ms = samples_ms.last().copied();
        Failover {
            samples_ms,
            p50_ms,
            max_ms,
        }
    }
}

/// The outcome of a run (`summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub run: String,
    pub seed: u64,
    pub time_limit_s: f64,
    pub elapsed_s: f64,
    pub nemesis: Vec<FaultKind>,
    pub workloads: Workloads,
    pub unsafe_stale_reads: bool,
    /// Register reads spread over the replicas, followers answering them.
    #[serde(default)]
    pub follower_reads: bool,
    /// Operations by outcome, per workload.
    pub counts: BTreeMap<String, OutcomeCounts>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    pub nemesis_errors: Vec<String>,
    /// Membership steps that failed or timed out (recorded, not a failure
    /// of the run by themselves).
    #[serde(default)]
    pub membership_errors: Vec<String>,
    /// Membership faults whose removal and re-addition both succeeded.
    #[serde(default)]
    pub membership_ok: usize,
    /// For each kill-multi-leader fault, how many shards the killed node led
    /// just before the kill.
    #[serde(default)]
    pub multi_leader_kills: Vec<usize>,
    /// The shards of the run: graft path to shard id.
    #[serde(default)]
    pub shards: BTreeMap<String, u32>,
    /// The graft's fences (`EXDEV`, `EBUSY`), probed at the start and end.
    #[serde(default)]
    pub graft_checks: Vec<GraftCheck>,
    pub register: Option<Summary<RegisterInput, RegisterOutput>>,
    /// The set over both shards.
    pub set: Option<SetSummary>,
    /// The set per shard (by graft path).
    #[serde(default)]
    pub set_by_shard: BTreeMap<String, SetSummary>,
    /// Register keys checked per shard (by graft path).
    #[serde(default)]
    pub register_keys_by_shard: BTreeMap<String, usize>,
    /// Acknowledged writes per shard during each etcd fault (the data path
    /// must not need the control plane).
    #[serde(default)]
    pub etcd_fault_acks: Vec<EtcdFaultAcks>,
    pub namespace: Option<TreeSummary>,
    /// `nokv fsck --json` after the final heal (every shard): with a short
    /// GC grace and frequent GC under the faults, no live block may be
    /// missing, and nothing may be left that is neither live nor queued.
    #[serde(default)]
    pub fsck: Option<FsckCheck>,
    /// Leader loss (kill of the leader) to the first acknowledged write.
    pub failover_kill: Failover,
    /// Same, for every fault that took the leader away (kill, pause or
    /// isolation of the leader).
    pub failover_any: Failover,
    /// Writes resumed after every leader loss and the cluster settled
    /// after the final heal, within their bounds.
    pub liveness: Option<LivenessSummary>,
    /// Why the run stopped short of its checks (the cluster did not
    /// settle, Ctrl-C, a harness error or panic); `None`: it finished.
    pub aborted: Option<String>,
    /// For an aborted run: each replica's container state and threads as
    /// the host saw them (`node-N.process.txt` has the details).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_processes: Vec<String>,
    /// Every check passed (and, for the register, decided), and the run
    /// was not aborted.
    pub valid: bool,
}

impl Report {
    fn new(run: &str, config: &RunConfig) -> Report {
        Report {
            run: run.to_string(),
            seed: config.seed,
            time_limit_s: config.time_limit.as_secs_f64(),
            elapsed_s: 0.0,
            nemesis: config.schedule.faults.0.clone(),
            workloads: config.workloads.clone(),
            unsafe_stale_reads: config.register.stale_reads,
            follower_reads: config.register.follower_reads,
            counts: BTreeMap::new(),
            faults: BTreeMap::new(),
            nemesis_errors: Vec::new(),
            membership_errors: Vec::new(),
            membership_ok: 0,
            multi_leader_kills: Vec::new(),
            shards: BTreeMap::new(),
            graft_checks: Vec::new(),
            register: None,
            set: None,
            set_by_shard: BTreeMap::new(),
            register_keys_by_shard: BTreeMap::new(),
            etcd_fault_acks: Vec::new(),
            namespace: None,
            fsck: None,
            failover_kill: Failover::default(),
            failover_any: Failover::default(),
            liveness: None,
            aborted: None,
            node_processes: Vec::new(),
            valid: true,
        }
    }

    fn abort(&mut self, why: String) {
        tracing::error!(%why, "run aborted");
        self.valid = false;
        self.aborted.get_or_insert(why);
    }
}

/// The end-of-run `fsck`, and the GC settings it ran under.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FsckCheck {
    pub gc_grace_ms: f64,
    pub gc_interval_ms: f64,
    pub report: FsckReport,
    /// No problem of any kind.
    pub valid: bool,
}

/// Writes acknowledged in each shard while etcd was down or cut off.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EtcdFaultAcks {
    pub fault: FaultKind,
    pub from_s: f64,
    pub to_s: f64,
    /// Graft path to acknowledged writes in the window.
    pub acks: BTreeMap<String, usize>,
}

/// Which shard (by graft path) a path of the workloads lies in.
pub fn shard_of_path(path: &str) -> &'static str {
    match path.strip_prefix(GRAFT) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => GRAFT,
        _ => "/",
    }
}

/// Why a run could not be carried out (as opposed to finding an anomaly).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("setting up the workloads: {0}")]
    Setup(#[from] nokv_client::ClientError),
    #[error("writing {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checker: {0}")]
    Check(String),
    #[error(
        "the replicas did not agree on a leader within {0:?} after the final heal \
         (their answers are in status.json)"
    )]
    NotSettled(Duration),
    #[error("interrupted")]
    Interrupted,
}

/// Invoke/complete events of `ops`, in time order.
fn events<I: Clone, O: Clone>(ops: &[Operation<I, O>]) -> Vec<Event<I, O>> {
    let mut timed: Vec<(u64, u8, Event<I, O>)> = Vec::with_capacity(ops.len() * 2);
    for op in ops {
        timed.push((
            op.call_ns,
            0,
            Event::Invoke {
                process: op.process,
                time_ns: op.call_ns,
                input: op.input.clone(),
            },
        ));
        timed.push((
            op.return_ns,
            1,
            Event::Complete {
                process: op.process,
                time_ns: op.return_ns,
                outcome: op.outcome.clone(),
            },
        ));
    }
    // Completions before invocations at the same instant keep each
    // process's events well nested.
    timed.sort_by_key(|(t, kind, _)| (*t, u8::from(*kind == 0)));
    timed.into_iter().map(|(_, _, e)| e).collect()
}

fn counts<I, O>(ops: &[Operation<I, O>]) -> OutcomeCounts {
    let mut c = OutcomeCounts::default();
    for op in ops {
        match op.outcome {
            Outcome::Ok(_) => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Unknown => c.unknown += 1,
        }
    }
    c
}

/// Completion times of every acknowledged write, sorted, per shard (by
/// graft path; the namespace workload lies in the root shard).
fn write_acks_by_shard(
    register: &[register::RegisterOp],
    set: &[set::SetOp],
    moves: &[namespace::MoveOp],
) -> BTreeMap<&'static str, Vec<u64>> {
    let mut acks: BTreeMap<&'static str, Vec<u64>> =
        SHARDS.iter().map(|s| (*s, Vec::new())).collect();
    let mut push = |shard: &'static str, t: u64| acks.entry(shard).or_default().push(t);
    for op in register.iter().filter(|op| {
        !matches!(op.input.input, RegisterInput::Read)
            && matches!(op.outcome, Outcome::Ok(RegisterOutput::Ok))
    }) {
        push(shard_of_path(&op.input.key), op.return_ns);
    }
    for op in set.iter().filter(|op| matches!(op.outcome, Outcome::Ok(_))) {
        push(shard_of_path(&op.input), op.return_ns);
    }
    for op in moves
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
    {
        push("/", op.return_ns);
    }
    for list in acks.values_mut() {
        list.sort_unstable();
    }
    acks
}

/// Completion times of every acknowledged write, sorted.
fn write_acks(
    register: &[register::RegisterOp],
    set: &[set::SetOp],
    moves: &[namespace::MoveOp],
) -> Vec<u64> {
    let mut acks: Vec<u64> = write_acks_by_shard(register, set, moves)
        .into_values()
        .flatten()
        .collect();
    acks.sort_unstable();
    acks
}

/// For each fault accepted by `took_leader`: how long writes stopped.
///
/// `docker kill` takes 0.4–1.5 s to return and the leader dies somewhere in
/// that window (a new one may even be serving before the command returns),
/// so the command's timestamps cannot say when the leader was lost. The
/// acknowledgements can: under continuous load they stop when the leader
/// dies and resume when a new one serves. The sample is the longest gap
/// between consecutive acknowledgements from the fault's start to the first
/// acknowledgement after it was in place (`done_ns`). Its error is the
/// normal spacing of acknowledgements (milliseconds at the default
/// concurrency).
fn failover(log: &[NemesisEvent], acks: &[u64], took_leader: impl Fn(&Fault) -> bool) -> Failover {
    let samples = log
        .iter()
        .filter(|e| e.phase == "start")
        .filter(|e| e.fault.as_ref().is_some_and(&took_leader))
        .filter_map(|e| {
            let first = acks.partition_point(|&t| t <= e.time_ns);
            let resumed = acks.partition_point(|&t| t <= e.done_ns);
            let window = acks.get(first..=resumed)?;
            let mut previous = e.time_ns;
            let mut longest = 0;
            for &t in window {
                longest = longest.max(t - previous);
                previous = t;
            }
            Some(longest as f64 / 1e6)
        })
        .collect();
    Failover::from_samples(samples)
}

/// Whether the fault took shard 0's leader away (failover statistics).
fn leader_lost(fault: &Fault) -> bool {
    match fault {
        Fault::Kill { was_leader, .. } | Fault::Pause { was_leader, .. } => *was_leader,
        Fault::Partition { kind, .. } => *kind == FaultKind::IsolateLeader,
        Fault::KillLeaders { shards, .. } => shards.contains(&0),
        Fault::EtcdKill
        | Fault::EtcdPartition
        | Fault::Membership { .. }
        | Fault::ClockSkew { .. } => false,
    }
}

/// The replicas a fault takes away: killed, paused, or cut off from every
/// other replica. Etcd faults take none (the data path does not need it);
/// a membership change takes none either (leadership is handed over, not
/// lost, and the shard keeps a quorum of its voters), and a clock skew
/// none (every replica keeps serving).
fn nodes_lost(fault: &Fault, nodes: &[u64]) -> Vec<u64> {
    match fault {
        Fault::Kill { node, .. } | Fault::Pause { node, .. } | Fault::KillLeaders { node, .. } => {
            vec![*node]
        }
        Fault::Partition { cut, .. } => nodes
            .iter()
            .copied()
            .filter(|&n| {
                nodes
                    .iter()
                    .filter(|&&m| m != n)
                    .all(|&m| cut.contains(&crate::cluster::link(n, m)))
            })
            .collect(),
        Fault::EtcdKill
        | Fault::EtcdPartition
        | Fault::Membership { .. }
        | Fault::ClockSkew { .. } => Vec::new(),
    }
}

/// The faults that took away the leader of shard `shard` (id), for the
/// liveness check. The leader is the one the nemesis saw just before the
/// fault (for a log without per-shard leaders, shard 0's `leader_before`).
fn leader_losses_of(log: &[NemesisEvent], shard: u32, name: &str) -> Vec<LeaderLoss> {
    let nodes = [1, 2, 3];
    log.iter()
        .filter(|e| e.phase == "start")
        .filter_map(|e| {
            let fault = e.fault.as_ref()?;
            let leader = match e.leaders_before.get(&shard) {
                Some(l) => Some(*l),
                None if e.leaders_before.is_empty() && shard == 0 => e.leader_before,
                None => None,
            }?;
            if !nodes_lost(fault, &nodes).contains(&leader) {
                return None;
            }
            let what = match fault {
                Fault::Kill { .. } => "kill",
                Fault::Pause { .. } => "pause",
                Fault::KillLeaders { .. } => "kill (multi-leader)",
                _ => "isolation",
            };
            let label = format!("{what} of leader {leader} of shard {name}");
            Some(LeaderLoss {
                label: format!("{label} at {:.1} s", e.time_ns as f64 / 1e9),
                start_ns: e.time_ns,
                in_place_ns: e.done_ns,
            })
        })
        .collect()
}

/// The faults that took shard 0's leader away.
#[cfg(test)]
fn leader_losses(log: &[NemesisEvent]) -> Vec<LeaderLoss> {
    leader_losses_of(log, 0, "/")
}

/// One liveness summary out of one per shard: every stall of every shard,
/// the longest stall and gap of any, valid if each is.
fn merge_liveness(per_shard: Vec<(String, LivenessSummary)>) -> Option<LivenessSummary> {
    let mut merged: Option<LivenessSummary> = None;
    for (name, mut l) in per_shard {
        for s in l.stalled.iter_mut() {
            s.label = format!("{} [shard {name}]", s.label);
        }
        if let Some(g) = l.longest_write_gap.as_mut() {
            g.label = format!("{} [shard {name}]", g.label);
        }
        let Some(m) = merged.as_mut() else {
            merged = Some(l);
            continue;
        };
        m.leader_losses += l.leader_losses;
        m.longest_stall_ms = match (m.longest_stall_ms, l.longest_stall_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(g) = l.longest_write_gap {
            if m.longest_write_gap
                .as_ref()
                .is_none_or(|mg| mg.stall_ms < g.stall_ms)
            {
                m.longest_write_gap = Some(g);
            }
        }
        m.gap_over_bound |= l.gap_over_bound;
        m.stalled.extend(l.stalled);
        m.valid &= l.valid;
    }
    merged
}

/// The events that injected a fault (`start`, or an `error` while the
/// fault was not active: a failed injection), in log order.
fn injections(log: &[NemesisEvent]) -> Vec<&NemesisEvent> {
    let mut active: Vec<&Fault> = Vec::new();
    let mut out = Vec::new();
    for e in log {
        let Some(fault) = e.fault.as_ref() else {
            continue;
        };
        let is_active = active.contains(&fault);
        match (e.phase.as_str(), is_active) {
            ("start", _) | ("error", false) => {
                out.push(e);
                active.push(fault);
            }
            ("heal", true) => active.retain(|f| *f != fault),
            _ => {}
        }
    }
    out
}

/// Replicas down and links cut over time, from the nemesis log. A fault
/// counts from the start of its injection until the end of its heal (the
/// conservative reading: more time without a majority, never less). A
/// failed injection counts as injected, a failed heal as not healed.
fn topology(log: &[NemesisEvent]) -> Vec<TopologyEvent> {
    let mut active: Vec<&Fault> = Vec::new();
    let mut events = Vec::new();
    for e in log {
        let Some(fault) = e.fault.as_ref() else {
            continue;
        };
        let is_active = active.contains(&fault);
        let (time_ns, injecting) = match (e.phase.as_str(), is_active) {
            ("start", _) | ("error", false) => (e.time_ns, true),
            ("heal", true) => (e.done_ns, false),
            _ => continue,
        };
        let change = |down: TopologyChange, up: TopologyChange| if injecting { down } else { up };
        match fault {
            Fault::Kill { node, .. }
            | Fault::Pause { node, .. }
            | Fault::KillLeaders { node, .. } => events.push(TopologyEvent {
                time_ns,
                change: change(
                    TopologyChange::Down { node: *node },
                    TopologyChange::Up { node: *node },
                ),
            }),
            Fault::Partition { cut, .. } => {
                for &(a, b) in cut {
                    events.push(TopologyEvent {
                        time_ns,
                        change: change(TopologyChange::Cut { a, b }, TopologyChange::Heal { a, b }),
                    });
                }
            }
            // Etcd is not a replica, a membership change leaves the shard
            // a quorum of its voters (one fault at a time), and a skewed
            // clock stops nobody.
            Fault::EtcdKill
            | Fault::EtcdPartition
            | Fault::Membership { .. }
            | Fault::ClockSkew { .. } => {}
        }
        if injecting {
            active.push(fault);
        } else {
            active.retain(|f| *f != fault);
        }
    }
    events
}

/// For each etcd fault, the writes each shard acknowledged between its
/// start and the start of its heal.
fn etcd_fault_acks(
    log: &[NemesisEvent],
    by_shard: &BTreeMap<&'static str, Vec<u64>>,
) -> Vec<EtcdFaultAcks> {
    let mut out = Vec::new();
    for (i, e) in log.iter().enumerate() {
        let Some(fault @ (Fault::EtcdKill | Fault::EtcdPartition)) = &e.fault else {
            continue;
        };
        if e.phase != "start" {
            continue;
        }
        let Some(heal) = log[i + 1..]
            .iter()
            .find(|h| h.fault.as_ref() == Some(fault) && h.phase != "start")
        else {
            continue;
        };
        let (from, to) = (e.done_ns, heal.time_ns);
        let acks = by_shard
            .iter()
            .map(|(name, t)| {
                let n = t.partition_point(|&x| x < to) - t.partition_point(|&x| x < from);
                (name.to_string(), n)
            })
            .collect();
        out.push(EtcdFaultAcks {
            fault: fault.kind(),
            from_s: from as f64 / 1e9,
            to_s: to as f64 / 1e9,
            acks,
        });
    }
    out
}

/// A run id unique on this machine: pid and seed.
pub fn run_id(seed: u64) -> String {
    format!("{}-{seed:x}", std::process::id())
}

/// How the cluster came back after the final heal.
#[derive(Clone, Debug, Default)]
pub struct Settle {
    /// When the final heal was done (run clock).
    pub heal_ns: u64,
    /// When every replica was first seen naming the same leader.
    pub settled_ns: Option<u64>,
    /// The replicas' answers when the settle bound passed, at the end of
    /// the wait, and (if they settled late) once they did.
    pub snapshots: Vec<StatusSnapshot>,
}

/// Asks every replica for its status until they agree on a leader, or
/// `timeout` passes, or the run was interrupted and the bound passed.
async fn settle(
    cluster: &DockerCluster,
    clock: Clock,
    bound: Duration,
    timeout: Duration,
    interrupt: &watch::Receiver<bool>,
) -> Settle {
    let heal_ns = clock.now_ns();
    let deadline = Instant::now() + timeout;
    let mut snapshots = Vec::new();
    loop {
        let replicas = cluster.statuses().await;
        let at_ns = clock.now_ns();
        let snapshot = |why: &str, replicas: Vec<ReplicaStatus>| StatusSnapshot {
            at_ns,
            since_heal_ms: at_ns.saturating_sub(heal_ns) as f64 / 1e6,
            why: why.to_string(),
            replicas,
        };
        if agreed_leader(&replicas).is_some() && cluster.agreed_shard_leaders().await.is_some() {
            if !snapshots.is_empty() {
                snapshots.push(snapshot("settled (late)", replicas));
            }
            return Settle {
                heal_ns,
                settled_ns: Some(at_ns),
                snapshots,
            };
        }
        let late = Duration::from_nanos(at_ns.saturating_sub(heal_ns)) > bound;
        if late && snapshots.is_empty() {
            snapshots.push(snapshot("not settled within the bound", replicas.clone()));
        }
        if Instant::now() >= deadline || (late && *interrupt.borrow()) {
            snapshots.push(snapshot("gave up waiting", replicas));
            return Settle {
                heal_ns,
                settled_ns: None,
                snapshots,
            };
        }
        // A poll interval, not a synchronisation: the condition is the
        // replicas' answers above.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the workloads and the nemesis left, before any check.
pub struct Recorded {
    pub register: Result<Vec<register::RegisterOp>, ClusterError>,
    pub set: Result<Vec<set::SetOp>, ClusterError>,
    pub moves: Result<Vec<namespace::MoveOp>, ClusterError>,
    pub nemesis: Vec<NemesisEvent>,
    /// When the workloads were told to stop (run clock).
    pub end_ns: u64,
    pub settle: Settle,
    pub interrupted: bool,
}

/// Histories that passed [`record`], ready for the checks.
pub struct Checkable {
    pub register: Vec<register::RegisterOp>,
    pub set: Vec<set::SetOp>,
    pub moves: Vec<namespace::MoveOp>,
}

/// Writes everything the run recorded (histories, nemesis log, the
/// replicas' statuses if they did not settle in time) and fills in what
/// needs no final read: counts, faults, failover, liveness. Errs, after
/// writing, when the run cannot go on to the checks: a workload failed, the
/// run was interrupted, or the cluster never settled.
pub fn record(
    dir: &RunDir,
    workloads: &Workloads,
    bounds: &LivenessBounds,
    recovery_timeout: Duration,
    report: &mut Report,
    recorded: Recorded,
) -> Result<Checkable, RunError> {
    dir.write_jsonl("nemesis.jsonl", &recorded.nemesis)?;
    if !recorded.settle.snapshots.is_empty() {
        dir.write_json("status.json", &recorded.settle.snapshots)?;
    }
    let mut first_error = None;
    let mut keep = |name: &str, enabled: bool, result: Result<(), RunError>| {
        if let (true, Err(e)) = (enabled, result) {
            tracing::error!(workload = name, error = %e, "workload");
            first_error.get_or_insert(e);
        }
    };
    let register = recorded.register.unwrap_or_else(|e| {
        keep("register", workloads.register, Err(e.into()));
        Vec::new()
    });
    let set_ops = recorded.set.unwrap_or_else(|e| {
        keep("set", workloads.set, Err(e.into()));
        Vec::new()
    });
    let moves = recorded.moves.unwrap_or_else(|e| {
        keep("namespace", workloads.namespace, Err(e.into()));
        Vec::new()
    });
    if workloads.register {
        dir.write_jsonl("register.jsonl", &events(&register))?;
        report.counts.insert("register".into(), counts(&register));
    }
    if workloads.set {
        dir.write_jsonl("set.jsonl", &events(&set_ops))?;
        report.counts.insert("set".into(), counts(&set_ops));
    }
    if workloads.namespace {
        dir.write_jsonl("namespace.jsonl", &events(&moves))?;
        report.counts.insert("namespace".into(), counts(&moves));
    }

    let log = &recorded.nemesis;
    let is_membership = |e: &&NemesisEvent| matches!(e.fault, Some(Fault::Membership { .. }));
    report.nemesis_errors = log
        .iter()
        .filter(|e| !is_membership(e))
        .filter_map(|e| e.message.clone())
        .collect();
    report.membership_errors = log
        .iter()
        .filter(is_membership)
        .filter_map(|e| {
            let m = e.message.as_ref()?;
            Some(format!(
                "{:.1} s {:?}: {m}",
                e.time_ns as f64 / 1e9,
                e.fault
            ))
        })
        .collect();
    // Every fault the nemesis tried to inject, also one whose injection
    // failed (a refused membership step was still attempted).
    for e in injections(log) {
        if let Some(fault) = &e.fault {
            *report.faults.entry(fault.kind().name().into()).or_default() += 1;
            match fault {
                Fault::KillLeaders { shards, .. } if e.phase == "start" => {
                    report.multi_leader_kills.push(shards.len());
                }
                _ => {}
            }
        }
    }
    // Removed and added back: the removal started cleanly and its heal (the
    // re-add) did too.
    report.membership_ok = log
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            is_membership(e)
                && e.phase == "start"
                && log[i + 1..]
                    .iter()
                    .find(|h| h.fault == e.fault && h.phase != "start")
                    .is_some_and(|h| h.phase == "heal")
        })
        .count();
    let acks = write_acks(&register, &set_ops, &moves);
    let by_shard = write_acks_by_shard(&register, &set_ops, &moves);
    report.etcd_fault_acks = etcd_fault_acks(log, &by_shard);
    report.failover_kill = failover(log, &acks, |f| {
        matches!(
            f,
            Fault::Kill {
                was_leader: true,
                ..
            }
        )
    });
    report.failover_any = failover(log, &acks, leader_lost);
    let no_majority = no_majority_intervals(
        &[1, 2, 3],
        &topology(log),
        recorded.end_ns.max(recorded.settle.heal_ns),
    );
    // Per shard: a shard's leader loss is answered by that shard's writes
    // (the other shard's acknowledgements would hide its stall).
    let mut per_shard = Vec::new();
    for (name, shard_acks) in &by_shard {
        let Some(&id) = report.shards.get(*name) else {
            continue;
        };
        let losses = leader_losses_of(log, id, name);
        per_shard.push((
            name.to_string(),
            check_liveness(
                &LivenessInput {
                    acks: shard_acks,
                    leader_losses: &losses,
                    no_majority: &no_majority,
                    end_ns: recorded.end_ns,
                    final_heal_ns: recorded.settle.heal_ns,
                    settled_ns: recorded.settle.settled_ns,
                },
                bounds,
            ),
        ));
    }
    if per_shard.is_empty() {
        per_shard.push((
            "/".to_string(),
            check_liveness(
                &LivenessInput {
                    acks: &acks,
                    leader_losses: &leader_losses_of(log, 0, "/"),
                    no_majority: &no_majority,
                    end_ns: recorded.end_ns,
                    final_heal_ns: recorded.settle.heal_ns,
                    settled_ns: recorded.settle.settled_ns,
                },
                bounds,
            ),
        ));
    }
    if let Some(liveness) = merge_liveness(per_shard) {
        report.valid &= liveness.valid;
        report.liveness = Some(liveness);
    }

    if let Some(e) = first_error {
        return Err(e);
    }
    if recorded.interrupted {
        return Err(RunError::Interrupted);
    }
    if recorded.settle.settled_ns.is_none() {
        return Err(RunError::NotSettled(recovery_timeout));
    }
    Ok(Checkable {
        register,
        set: set_ops,
        moves,
    })
}

/// Carries out a run and writes its files. Once the cluster is up, `Ok`
/// holds the report whatever happened: an anomaly makes it invalid, and a
/// run that could not finish (the cluster did not settle, `interrupt`
/// turned true, a harness error, a panic) says why in `aborted`, with
/// everything recorded so far in the run directory. `Err` means there was
/// no cluster to run against (or the directory cannot be written).
pub async fn run(config: &RunConfig, interrupt: watch::Receiver<bool>) -> Result<Report, RunError> {
    let dir = RunDir::create(&config.out_dir)?;
    let run = run_id(config.seed);
    let mut report = Report::new(&run, config);
    tracing::info!(%run, out = %config.out_dir.display(), "starting cluster");
    let mut cluster = match DockerCluster::start(&run, &config.cluster).await {
        Ok(cluster) => cluster,
        Err(e) => {
            report.abort(e.to_string());
            dir.write_json("summary.json", &report)?;
            return Err(e.into());
        }
    };
    if let Err(e) = cluster.initialize(config.cluster.ready_timeout).await {
        // Say why: what each replica answered, and every replica's log.
        report.abort(format!("the cluster did not form: {e}"));
        let replicas = cluster.statuses().await;
        dir.write_json(
            "status.json",
            &vec![StatusSnapshot {
                at_ns: 0,
                since_heal_ms: 0.0,
                why: "the cluster did not form".into(),
                replicas,
            }],
        )?;
        for error in dir.write_logs(&cluster).await {
            tracing::warn!(%error, "replica log");
        }
        dir.write_json("summary.json", &report)?;
        return Err(e.into());
    }
    let carried = AssertUnwindSafe(carry_out(&cluster, config, &dir, &mut report, interrupt))
        .catch_unwind()
        .await;
    match carried {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.abort(e.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            report.abort(format!("the harness panicked: {what}"));
        }
    }
    if report.aborted.is_some() {
        report.node_processes = dir.write_processes(&cluster).await;
    }
    for error in dir.write_logs(&cluster).await {
        tracing::warn!(%error, "replica log");
    }
    dir.write_json("summary.json", &report)?;
    drop(cluster);
    Ok(report)
}

/// The run proper, once the cluster is up: workloads under the nemesis,
/// settle, record, check.
async fn carry_out(
    cluster: &DockerCluster,
    config: &RunConfig,
    dir: &RunDir,
    report: &mut Report,
    interrupt: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let admin = cluster.client(Duration::from_secs(10))?;
    let w = &config.workloads;
    report.shards = SHARDS
        .iter()
        .zip(cluster.shard_ids())
        .map(|(name, id)| (name.to_string(), *id))
        .collect();
    report.graft_checks = graft::check(&admin, "start", config.recovery_timeout).await?;
    if w.register {
        register::setup(&admin).await?;
    }
    if w.set {
        set::setup(&admin).await?;
    }
    if w.namespace {
        namespace::setup(&admin).await?;
    }

    let clock = Clock::start();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Ctx {
        clock,
        stop: stop_rx.clone(),
        seed: config.seed,
        op_timeout: config.op_timeout,
    };
    tracing::info!(time_limit = ?config.time_limit, "running workloads");
    let register_procs = config.register.processes as u64;
    let set_procs = config.set_processes as u64;
    let timer = async {
        let mut interrupt = interrupt.clone();
        let interrupted = async {
            // A dropped sender means nobody can interrupt: wait forever.
            if interrupt.wait_for(|i| *i).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let interrupted = tokio::select! {
            () = tokio::time::sleep(config.time_limit) => false,
            () = interrupted => true,
        };
        let _ = stop_tx.send(true);
        (clock.now_ns(), interrupted)
    };
    let nemesis_then_settle = async {
        let log = nemesis::run(
            cluster,
            &config.schedule,
            clock,
            config.seed,
            stop_rx.clone(),
        )
        .await;
        // The last heal is done once the nemesis returns after the stop
        // (with no fault enabled it returns at once: wait for the stop).
        let _ = stop_rx.clone().wait_for(|s| *s).await;
        tracing::info!("healed; waiting for the replicas to agree on a leader");
        let settled = settle(
            cluster,
            clock,
            Duration::from_nanos(config.liveness.settle_ns),
            config.recovery_timeout,
            &interrupt,
        )
        .await;
        (log, settled)
    };
    let (register_ops, set_ops, moves, (nemesis_log, settled), (end_ns, interrupted)) = tokio::join!(
        async {
            match w.register {
                true => register::run(cluster, &ctx, &config.register, 0).await,
                false => Ok(Vec::new()),
            }
        },
        async {
            match w.set {
                true => set::run(cluster, &ctx, config.set_processes, register_procs).await,
                false => Ok(Vec::new()),
            }
        },
        async {
            match w.namespace {
                true => {
                    namespace::run(
                        cluster,
                        &ctx,
                        config.namespace_processes,
                        register_procs + set_procs,
                    )
                    .await
                }
                false => Ok(Vec::new()),
            }
        },
        nemesis_then_settle,
        timer,
    );
    report.elapsed_s = clock.now_ns() as f64 / 1e9;
    let checkable = record(
        dir,
        w,
        &config.liveness,
        config.recovery_timeout,
        report,
        Recorded {
            register: register_ops,
            set: set_ops,
            moves,
            nemesis: nemesis_log,
            end_ns,
            settle: settled,
            interrupted,
        },
    )?;

    if w.register {
        let mut keys: BTreeMap<String, std::collections::BTreeSet<&str>> = BTreeMap::new();
        for op in &checkable.register {
            keys.entry(shard_of_path(&op.input.key).to_string())
                .or_default()
                .insert(op.input.key.as_str());
        }
        report.register_keys_by_shard = keys.into_iter().map(|(k, v)| (k, v.len())).collect();
        let history =
            History::new(checkable.register).map_err(|e| RunError::Check(e.to_string()))?;
        let budget = config.check_budget;
        let summary =
            tokio::task::spawn_blocking(move || check_keyed(&Register, &history, &budget))
                .await
                .map_err(|e| RunError::Check(format!("register checker panicked: {e}")))?;
        report.valid &= summary.verdict == nokv_checker::Verdict::Linearizable;
        report.register = Some(summary);
    }
    if w.set {
        let summary = set::check(&admin, checkable.set, config.recovery_timeout).await?;
        report.valid &= summary.all.valid && summary.by_shard.values().all(|s| s.valid);
        report.set = Some(summary.all);
        report.set_by_shard = summary.by_shard;
    }
    if w.namespace {
        let summary = namespace::check(&admin, config.recovery_timeout).await?;
        report.valid &= summary.valid;
        report.namespace = Some(summary);
    }
    report
        .graft_checks
        .extend(graft::check(&admin, "end", config.recovery_timeout).await?);
    report.valid &= report.graft_checks.iter().all(|c| c.ok);
    let fsck = final_fsck(cluster, config.recovery_timeout).await?;
    let fsck = FsckCheck {
        gc_grace_ms: config.cluster.gc_grace.as_secs_f64() * 1e3,
        gc_interval_ms: config.cluster.gc_interval.as_secs_f64() * 1e3,
        valid: fsck.problems.is_empty(),
        report: fsck,
    };
    if !fsck.valid {
        tracing::error!(problems = ?fsck.report.problems, "fsck found problems");
    }
    report.valid &= fsck.valid;
    report.fsck = Some(fsck);
    Ok(())
}

/// `nokv fsck --json` through replica 1, retried until it reports (a
/// shard may still be moving its leader) or `timeout` passes.
async fn final_fsck(
    cluster: &DockerCluster,
    timeout: Duration,
) -> Result<FsckReport, ClusterError> {
    let deadline = Instant::now() + timeout;
    loop {
        match cluster.fsck(1).await {
            Ok(report) => return Ok(report),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "fsck did not report; retrying");
                // A poll interval: the condition is a report.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill_at(time_ns: u64, done_ns: u64) -> NemesisEvent {
        NemesisEvent {
            time_ns,
            done_ns,
            wall: String::new(),
            phase: "start".into(),
            fault: Some(Fault::Kill {
                node: 1,
                was_leader: true,
            }),
            leader_before: Some(1),
            leaders_before: BTreeMap::new(),
            message: None,
            changes: Vec::new(),
        }
    }

    #[test]
    fn failover_is_the_longest_ack_gap_around_the_fault() {
        let ms = 1_000_000;
        // Acks every 10 ms, stalled from 1,010 ms to 1,700 ms; the kill
        // command ran from 1,000 ms to 2,000 ms (new leader before it returned).
        let mut acks: Vec<u64> = (0..=101).map(|i| i * 10 * ms).collect();
        acks.extend((170..=300).map(|i| i * 10 * ms));
        let f = failover(&[kill_at(1_000 * ms, 2_000 * ms)], &acks, leader_lost);
        assert_eq!(f.samples_ms, vec![690.0]);
        // Stall still going when the command returned.
        let late: Vec<u64> = (0..=100).map(|i| i * 10 * ms).chain([2_500 * ms]).collect();
        let f = failover(&[kill_at(1_000 * ms, 1_200 * ms)], &late, leader_lost);
        assert_eq!(f.samples_ms, vec![1_500.0]);
        // No ack after the fault: no sample.
        let f = failover(&[kill_at(5_000 * ms, 5_100 * ms)], &late, leader_lost);
        assert!(f.samples_ms.is_empty());
    }

    fn heal_of(event: &NemesisEvent, time_ns: u64, done_ns: u64) -> NemesisEvent {
        NemesisEvent {
            time_ns,
            done_ns,
            phase: "heal".into(),
            leader_before: None,
            ..event.clone()
        }
    }

    fn config(out: &std::path::Path) -> RunConfig {
        RunConfig {
            time_limit: Duration::from_secs(60),
            schedule: Schedule {
                faults: "all".parse().expect("nemesis spec"),
                healthy: Duration::from_secs(6),
                fault: Duration::from_secs(6),
            },
            workloads: "all".parse().expect("workloads"),
            seed: 1,
            out_dir: out.to_path_buf(),
            op_timeout: Duration::from_secs(5),
            register: register::RegisterConfig::default(),
            set_processes: 1,
            namespace_processes: 1,
            cluster: ClusterOptions::default(),
            recovery_timeout: Duration::from_secs(60),
            check_budget: SearchBudget::default(),
            liveness: LivenessBounds::default(),
        }
    }

    /// A set add acknowledged at `ms`.
    fn add(process: u64, ms: u64) -> set::SetOp {
        Operation {
            process,
            call_ns: ms * 1_000_000 - 500_000,
            return_ns: ms * 1_000_000,
            input: format!("e{ms}"),
            outcome: Outcome::Ok(()),
        }
    }

    /// The first run: every fault healed, then the replicas never
    /// agreed on a leader. The directory must still tell why.
    #[test]
    fn a_cluster_that_never_settles_leaves_histories_statuses_and_a_verdict() {
        let ms = 1_000_000;
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = config(tmp.path());
        let dir = RunDir::create(tmp.path()).expect("run dir");
        let mut report = Report::new("test", &config);
        let kill = kill_at(10_000 * ms, 10_500 * ms);
        let nemesis = vec![kill.clone(), heal_of(&kill, 16_000 * ms, 16_200 * ms)];
        let statuses = vec![
            ReplicaStatus::unanswered(1, "timed out".into()),
            ReplicaStatus::unanswered(2, "timed out".into()),
            ReplicaStatus::unanswered(3, "timed out".into()),
        ];
        let snapshot = StatusSnapshot {
            at_ns: 70_000 * ms,
            since_heal_ms: 10_100.0,
            why: "not settled within the bound".into(),
            replicas: statuses,
        };
        let recorded = Recorded {
            register: Ok(Vec::new()),
            // Writes stop at the kill and never come back.
            set: Ok((1..=1_000).map(|i| add(7, i * 10)).collect()),
            moves: Ok(Vec::new()),
            nemesis,
            end_ns: 60_000 * ms,
            settle: Settle {
                heal_ns: 60_000 * ms,
                settled_ns: None,
                snapshots: vec![snapshot.clone()],
            },
            interrupted: false,
        };
        let result = record(
            &dir,
            &config.workloads,
            &config.liveness,
            config.recovery_timeout,
            &mut report,
            recorded,
        );
        assert!(matches!(result, Err(RunError::NotSettled(_))));
        for file in [
            "register.jsonl",
            "set.jsonl",
            "namespace.jsonl",
            "nemesis.jsonl",
            "status.json",
        ] {
            assert!(tmp.path().join(file).is_file(), "{file} missing");
        }
        let set_lines = std::fs::read_to_string(tmp.path().join("set.jsonl")).expect("read");
        assert_eq!(set_lines.lines().count(), 2_000);
        let status: Vec<StatusSnapshot> = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("status.json")).expect("read"),
        )
        .expect("parse status.json");
        assert_eq!(status, vec![snapshot]);
        let liveness = report.liveness.as_ref().expect("liveness checked");
        assert!(liveness.not_settled && !liveness.valid);
        // The kill at 10 s stopped writes for good: a stall, not only a
        // cluster that did not settle.
        assert_eq!(liveness.stalled.len(), 1, "{liveness:?}");
        assert_eq!(liveness.stalled[0].to_ns, None);
        assert!(!report.valid);
        assert_eq!(report.counts["set"].ok, 1_000);
    }

    #[test]
    fn a_run_that_settled_in_time_goes_on_to_the_checks() {
        let ms = 1_000_000;
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = config(tmp.path());
        let dir = RunDir::create(tmp.path()).expect("run dir");
        let mut report = Report::new("test", &config);
        let kill = kill_at(10_000 * ms, 10_500 * ms);
        let recorded = Recorded {
            register: Ok(Vec::new()),
            // A 1 s stall after the kill.
            set: Ok((1..=6_000)
                .filter(|i| !(1_001..1_100).contains(i))
                .map(|i| add(7, i * 10))
                .collect()),
            moves: Ok(Vec::new()),
            nemesis: vec![kill.clone(), heal_of(&kill, 16_000 * ms, 16_200 * ms)],
            end_ns: 60_000 * ms,
            settle: Settle {
                heal_ns: 60_000 * ms,
                settled_ns: Some(60_800 * ms),
                snapshots: Vec::new(),
            },
            interrupted: false,
        };
        let checkable = record(
            &dir,
            &config.workloads,
            &config.liveness,
            config.recovery_timeout,
            &mut report,
            recorded,
        )
        .expect("settled: on to the checks");
        assert_eq!(checkable.set.len(), 5_901);
        assert!(!tmp.path().join("status.json").exists());
        let liveness = report.liveness.as_ref().expect("liveness checked");
        assert!(liveness.valid, "{liveness:?}");
        assert_eq!(liveness.longest_stall_ms, Some(1_000.0));
        assert_eq!(liveness.settle_ms, Some(800.0));
        assert!(report.valid);
    }

    #[test]
    fn an_interrupted_run_or_a_failed_workload_still_records_the_rest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = config(tmp.path());
        let dir = RunDir::create(tmp.path()).expect("run dir");
        let mut report = Report::new("test", &config);
        let recorded = Recorded {
            register: Err(ClusterError::Harness("register process died".into())),
            set: Ok(vec![add(7, 10)]),
            moves: Ok(Vec::new()),
            nemesis: Vec::new(),
            end_ns: 1_000_000_000,
            settle: Settle {
                heal_ns: 1_000_000_000,
                settled_ns: Some(1_100_000_000),
                snapshots: Vec::new(),
            },
            interrupted: true,
        };
        let result = record(
            &dir,
            &config.workloads,
            &config.liveness,
            config.recovery_timeout,
            &mut report,
            recorded,
        );
        // The workload's failure is the reason given; the other histories
        // are on disk.
        assert!(
            matches!(&result, Err(RunError::Cluster(ClusterError::Harness(m))) if m.contains("register")),
            "{:?}",
            result.err()
        );
        assert!(tmp.path().join("set.jsonl").is_file());
        assert!(tmp.path().join("nemesis.jsonl").is_file());
    }

    #[test]
    fn a_leader_loss_counts_for_the_shards_that_node_led() {
        let ms = 1_000_000;
        let leaders: BTreeMap<u32, u64> = [(0, 1), (1, 2)].into_iter().collect();
        let event = |fault: Fault| NemesisEvent {
            fault: Some(fault),
            leaders_before: leaders.clone(),
            ..kill_at(10 * ms, 11 * ms)
        };
        // Killing node 2 takes shard 1's leader, not shard 0's.
        let log = vec![event(Fault::Kill {
            node: 2,
            was_leader: false,
        })];
        assert!(leader_losses_of(&log, 0, "/").is_empty());
        assert_eq!(leader_losses_of(&log, 1, "/s1").len(), 1);
        // Isolating node 1 (both its links) takes shard 0's leader.
        let log = vec![event(Fault::Partition {
            kind: FaultKind::IsolateNode,
            cut: vec![(1, 2), (1, 3)],
        })];
        assert_eq!(leader_losses_of(&log, 0, "/").len(), 1);
        assert!(leader_losses_of(&log, 1, "/s1").is_empty());
        // A bridge isolates nobody; etcd and membership faults take no leader.
        for fault in [
            Fault::Partition {
                kind: FaultKind::Bridge,
                cut: vec![(1, 2)],
            },
            Fault::EtcdKill,
            Fault::EtcdPartition,
            Fault::Membership {
                shard: 0,
                node: 1,
                was_leader: true,
            },
        ] {
            let cuts_a_link = matches!(fault, Fault::Partition { .. });
            let log = vec![event(fault)];
            assert!(leader_losses_of(&log, 0, "/").is_empty());
            assert!(leader_losses_of(&log, 1, "/s1").is_empty());
            assert_eq!(topology(&log).is_empty(), !cuts_a_link);
        }
        // The multi-leader kill takes both.
        let log = vec![event(Fault::KillLeaders {
            node: 1,
            shards: vec![0, 1],
        })];
        assert_eq!(leader_losses_of(&log, 0, "/").len(), 1);
    }

    #[test]
    fn a_failed_membership_step_is_counted_and_recorded_apart() {
        let ms = 1_000_000;
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = config(tmp.path());
        let dir = RunDir::create(tmp.path()).expect("run dir");
        let mut report = Report::new("test", &config);
        let step = NemesisEvent {
            phase: "error".into(),
            fault: Some(Fault::Membership {
                shard: 1,
                node: 3,
                was_leader: false,
            }),
            message: Some("timed out".into()),
            ..kill_at(10_000 * ms, 10_500 * ms)
        };
        let recorded = Recorded {
            register: Ok(Vec::new()),
            set: Ok((1..=2_000).map(|i| add(7, i * 10)).collect()),
            moves: Ok(Vec::new()),
            nemesis: vec![
                step.clone(),
                NemesisEvent {
                    message: None,
                    ..heal_of(&step, 14_000 * ms, 14_200 * ms)
                },
            ],
            end_ns: 20_000 * ms,
            settle: Settle {
                heal_ns: 20_000 * ms,
                settled_ns: Some(20_100 * ms),
                snapshots: Vec::new(),
            },
            interrupted: false,
        };
        record(
            &dir,
            &config.workloads,
            &config.liveness,
            config.recovery_timeout,
            &mut report,
            recorded,
        )
        .expect("settled");
        assert_eq!(report.faults.get("membership"), Some(&1));
        assert!(report.nemesis_errors.is_empty());
        assert_eq!(report.membership_errors.len(), 1);
        assert!(report.valid);
    }

    #[test]
    fn paths_under_the_graft_belong_to_its_shard() {
        assert_eq!(shard_of_path("/s1/set/e000001"), GRAFT);
        assert_eq!(shard_of_path("/s1"), GRAFT);
        assert_eq!(shard_of_path("/s10/x"), "/");
        assert_eq!(shard_of_path("/jepsen/register/k2"), "/");
        assert_eq!(register::key_of(2), "/jepsen/register/k2");
        assert_eq!(register::key_of(3), "/s1/register/k3");
    }

    #[test]
    fn the_topology_follows_the_nemesis_log() {
        let ms = 1_000_000;
        let kill = kill_at(10 * ms, 12 * ms);
        let cut = NemesisEvent {
            fault: Some(Fault::Partition {
                kind: FaultKind::Bridge,
                cut: vec![(1, 2)],
            }),
            ..kill_at(20 * ms, 21 * ms)
        };
        let log = vec![
            kill.clone(),
            heal_of(&kill, 15 * ms, 17 * ms),
            cut.clone(),
            // A failed heal leaves the link cut.
            NemesisEvent {
                phase: "error".into(),
                ..heal_of(&cut, 25 * ms, 26 * ms)
            },
        ];
        assert_eq!(
            topology(&log),
            vec![
                TopologyEvent {
                    time_ns: 10 * ms,
                    change: TopologyChange::Down { node: 1 }
                },
                TopologyEvent {
                    time_ns: 17 * ms,
                    change: TopologyChange::Up { node: 1 }
                },
                TopologyEvent {
                    time_ns: 20 * ms,
                    change: TopologyChange::Cut { a: 1, b: 2 }
                },
            ]
        );
        assert_eq!(leader_losses(&log).len(), 1);
    }
}
