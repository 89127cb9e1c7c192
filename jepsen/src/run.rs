//! One test run: start a cluster, run workloads under a nemesis for the
//! time limit, heal, read the final state, check, and write everything to
//! the run's directory:
//!
//! | file                | content                                                |
//! |---------------------|--------------------------------------------------------|
//! | `register.jsonl`    | register history, one invoke/complete event per line   |
//! | `set.jsonl`         | set adds                                               |
//! | `namespace.jsonl`   | namespace moves                                        |
//! | `nemesis.jsonl`     | every fault injected and healed                        |
//! | `summary.json`      | the [`Report`]                                         |
//! | `node-N.log`        | the last 5,000 lines of each replica's log             |

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nokv_checker::{
    check_keyed, Event, History, Operation, Outcome, OutcomeCounts, Register, RegisterInput,
    RegisterOutput, SearchBudget, SetSummary, Summary, TreeSummary,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::{ClusterError, ClusterOptions, DockerCluster};
use crate::nemesis::{self, Fault, FaultKind, NemesisEvent, Schedule};
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
    /// Operations by outcome, per workload.
    pub counts: BTreeMap<String, OutcomeCounts>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    pub nemesis_errors: Vec<String>,
    pub register: Option<Summary<RegisterInput, RegisterOutput>>,
    pub set: Option<SetSummary>,
    pub namespace: Option<TreeSummary>,
    /// Leader loss (kill of the leader) to the first acknowledged write.
    pub failover_kill: Failover,
    /// Same, for every fault that took the leader away (kill, pause or
    /// isolation of the leader).
    pub failover_any: Failover,
    /// Every check passed (and, for the register, decided).
    pub valid: bool,
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
}

fn write_jsonl<T: Serialize>(path: &Path, lines: &[T]) -> Result<(), RunError> {
    let io = |source| RunError::Output {
        path: path.to_path_buf(),
        source,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for line in lines {
        let text = serde_json::to_string(line)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        writeln!(out, "{text}").map_err(io)?;
    }
    out.flush().map_err(io)
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

/// Completion times of every acknowledged write, sorted.
fn write_acks(
    register: &[register::RegisterOp],
    set: &[set::SetOp],
    moves: &[namespace::MoveOp],
) -> Vec<u64> {
    let mut acks: Vec<u64> = register
        .iter()
        .filter(|op| {
            !matches!(op.input.input, RegisterInput::Read)
                && matches!(op.outcome, Outcome::Ok(RegisterOutput::Ok))
        })
        .map(|op| op.return_ns)
        .chain(
            set.iter()
                .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
                .map(|op| op.return_ns),
        )
        .chain(
            moves
                .iter()
                .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
                .map(|op| op.return_ns),
        )
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

fn leader_lost(fault: &Fault) -> bool {
    match fault {
        Fault::Kill { was_leader, .. } | Fault::Pause { was_leader, .. } => *was_leader,
        Fault::Partition { kind, .. } => *kind == FaultKind::IsolateLeader,
    }
}

/// A run id unique on this machine: pid and seed.
pub fn run_id(seed: u64) -> String {
    format!("{}-{seed:x}", std::process::id())
}

/// Carries out a run and writes its files. `Ok` holds the report whatever
/// it found; `Err` means the run itself could not be carried out.
pub async fn run(config: &RunConfig) -> Result<Report, RunError> {
    std::fs::create_dir_all(&config.out_dir).map_err(|source| RunError::Output {
        path: config.out_dir.clone(),
        source,
    })?;
    let run = run_id(config.seed);
    tracing::info!(%run, out = %config.out_dir.display(), "starting cluster");
    let cluster = DockerCluster::start(&run, &config.cluster).await?;
    let admin = cluster.client(Duration::from_secs(10))?;
    let w = &config.workloads;
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
        tokio::time::sleep(config.time_limit).await;
        let _ = stop_tx.send(true);
    };
    let (register_ops, set_ops, moves, nemesis_log, ()) = tokio::join!(
        async {
            match w.register {
                true => register::run(&cluster, &ctx, &config.register, 0).await,
                false => Ok(Vec::new()),
            }
        },
        async {
            match w.set {
                true => set::run(&cluster, &ctx, config.set_processes, register_procs).await,
                false => Ok(Vec::new()),
            }
        },
        async {
            match w.namespace {
                true => {
                    namespace::run(
                        &cluster,
                        &ctx,
                        config.namespace_processes,
                        register_procs + set_procs,
                    )
                    .await
                }
                false => Ok(Vec::new()),
            }
        },
        nemesis::run(
            &cluster,
            &config.schedule,
            clock,
            config.seed,
            stop_rx.clone()
        ),
        timer,
    );
    let elapsed_s = clock.now_ns() as f64 / 1e9;
    let (register_ops, set_ops, moves) = (register_ops?, set_ops?, moves?);
    tracing::info!("healed; waiting for the cluster before the final reads");
    cluster.wait_for_leader(config.recovery_timeout).await?;

    let out = &config.out_dir;
    write_jsonl(&out.join("nemesis.jsonl"), &nemesis_log)?;
    let mut report = Report {
        run: run.clone(),
        seed: config.seed,
        time_limit_s: config.time_limit.as_secs_f64(),
        elapsed_s,
        nemesis: config.schedule.faults.0.clone(),
        workloads: w.clone(),
        unsafe_stale_reads: config.register.stale_reads,
        counts: BTreeMap::new(),
        faults: BTreeMap::new(),
        nemesis_errors: nemesis_log
            .iter()
            .filter_map(|e| e.message.clone())
            .collect(),
        register: None,
        set: None,
        namespace: None,
        failover_kill: Failover::default(),
        failover_any: Failover::default(),
        valid: true,
    };
    for e in nemesis_log.iter().filter(|e| e.phase == "start") {
        let name = match &e.fault {
            Some(Fault::Partition { kind, .. }) => serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            Some(Fault::Kill { .. }) => "kill".into(),
            Some(Fault::Pause { .. }) => "pause".into(),
            None => continue,
        };
        *report.faults.entry(name).or_default() += 1;
    }
    let acks = write_acks(&register_ops, &set_ops, &moves);
    report.failover_kill = failover(&nemesis_log, &acks, |f| {
        matches!(
            f,
            Fault::Kill {
                was_leader: true,
                ..
            }
        )
    });
    report.failover_any = failover(&nemesis_log, &acks, leader_lost);

    if w.register {
        write_jsonl(&out.join("register.jsonl"), &events(&register_ops))?;
        report
            .counts
            .insert("register".into(), counts(&register_ops));
        let history = History::new(register_ops).map_err(|e| RunError::Check(e.to_string()))?;
        let budget = config.check_budget;
        let summary =
            tokio::task::spawn_blocking(move || check_keyed(&Register, &history, &budget))
                .await
                .map_err(|e| RunError::Check(format!("register checker panicked: {e}")))?;
        report.valid &= summary.verdict == nokv_checker::Verdict::Linearizable;
        report.register = Some(summary);
    }
    if w.set {
        write_jsonl(&out.join("set.jsonl"), &events(&set_ops))?;
        report.counts.insert("set".into(), counts(&set_ops));
        let summary = set::check(&admin, set_ops, config.recovery_timeout).await?;
        report.valid &= summary.valid;
        report.set = Some(summary);
    }
    if w.namespace {
        write_jsonl(&out.join("namespace.jsonl"), &events(&moves))?;
        report.counts.insert("namespace".into(), counts(&moves));
        let summary = namespace::check(&admin, config.recovery_timeout).await?;
        report.valid &= summary.valid;
        report.namespace = Some(summary);
    }
    {
        for id in cluster.node_ids() {
            if let Ok(log) = cluster.logs(id, 5000).await {
                let _ = std::fs::write(out.join(format!("node-{id}.log")), log);
            }
        }
    }
    let summary_path = out.join("summary.json");
    let text = serde_json::to_string_pretty(&report).map_err(|e| RunError::Check(e.to_string()))?;
    std::fs::write(&summary_path, text).map_err(|source| RunError::Output {
        path: summary_path,
        source,
    })?;
    drop(admin);
    drop(cluster);
    Ok(report)
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
            message: None,
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
}
