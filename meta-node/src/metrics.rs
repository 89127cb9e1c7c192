//! Prometheus metrics of a node (`nokv_<subsystem>_<thing>_<unit>`) and a
//! tiny HTTP endpoint that serves them at `/metrics`.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::typ::Raft;

/// Every metric a node exports.
pub struct Metrics {
    pub registry: Registry,
    pub mutations_total: IntCounterVec,
    pub queries_total: IntCounterVec,
    pub mutate_seconds: Histogram,
    pub batch_size: Histogram,
    pub raft_term: IntGauge,
    pub raft_is_leader: IntGauge,
    pub raft_last_log_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub raft_snapshot_index: IntGauge,
    /// 1 while this replica runs the slow timers of an idle group
    /// (`crate::idle`).
    pub raft_idle: IntGauge,
    /// Every committed entry up to this index can be restored from the
    /// object store (archived segments or an uploaded snapshot).
    pub archive_archived_index: IntGauge,
    /// Last log index of the newest snapshot in the object store.
    pub archive_snapshot_index: IntGauge,
    pub archive_errors_total: IntCounter,
    /// Requests a leader refused because no quorum acknowledged it lately.
    pub stale_leader_refusals: IntCounter,
    /// Elections this node started before its timer, by reason
    /// (`crate::election`).
    pub early_elections_total: IntCounterVec,
    /// Read confirmations by how they were made: `lease` (no quorum
    /// round, `crate::lease`) or `quorum` (a read-index round).
    pub read_confirmations_total: IntCounterVec,
    /// Where a write's and a linearizable read's time goes, stage by stage
    /// (`nokv_meta_stage_seconds{stage}`; `nokv bench … --breakdown`).
    pub stages: Stages,
    stage_seconds: HistogramVec,
}

/// One histogram per stage of the write and read paths. Cheap to clone
/// (each histogram is shared), so the log store, the network, the Raft
/// service and the state machine each hold the ones they time.
///
/// A write on the leader: `write_total` (the whole Mutate handler), and in
/// it `write_validate` (decode, validation, leadership
/// and block checks), `write_queue` (waiting for one of the proposer's
/// in-flight slots), `write_raft` (openraft's `client_write`: the leader's
/// append, replication, commit and apply). Beside it on every replica:
/// `log_append` (encode, write and fsync of one append), `apply` (one call
/// of the state machine's apply). On the leader, `replicate` is the round
/// trip of an AppendEntries that carries entries (network, the follower's
/// flush, the answer); on a follower, `follower_append` is the handling of
/// one such message (its flush included). A linearizable read:
/// `read_total` (from the call's arrival to the read's answer, per read),
/// and in it `read_index` (confirming leadership, by lease or quorum: one
/// per call, shared by the linearizable reads of a `QueryBatch`) and
/// `read_execute` (the read itself, the state lock included).
#[derive(Clone)]
pub struct Stages {
    pub write_total: Histogram,
    pub write_validate: Histogram,
    pub write_queue: Histogram,
    pub write_raft: Histogram,
    pub log_append: Histogram,
    pub apply: Histogram,
    pub replicate: Histogram,
    pub follower_append: Histogram,
    pub read_total: Histogram,
    pub read_index: Histogram,
    pub read_execute: Histogram,
}

impl Stages {
    /// Stage names in the order a request meets them.
    pub const NAMES: [&'static str; 11] = [
        "write_total",
        "write_validate",
        "write_queue",
        "write_raft",
        "log_append",
        "replicate",
        "follower_append",
        "apply",
        "read_total",
        "read_index",
        "read_execute",
    ];

    fn new(vec: &HistogramVec) -> Result<Stages, prometheus::Error> {
        let h = |stage: &str| vec.get_metric_with_label_values(&[stage]);
        Ok(Stages {
            write_total: h("write_total")?,
            write_validate: h("write_validate")?,
            write_queue: h("write_queue")?,
            write_raft: h("write_raft")?,
            log_append: h("log_append")?,
            apply: h("apply")?,
            replicate: h("replicate")?,
            follower_append: h("follower_append")?,
            read_total: h("read_total")?,
            read_index: h("read_index")?,
            read_execute: h("read_execute")?,
        })
    }

    /// Histograms that record nothing (for stores and services built
    /// outside a replica, e.g. in tests).
    pub fn detached() -> Stages {
        let vec = stage_vec().unwrap_or_else(|_| unreachable!("constant bucket layout"));
        Stages::new(&vec).unwrap_or_else(|_| unreachable!("one label, given"))
    }
}

/// Bucket bounds of the stage histograms: 25 µs to about 7 s, each 1.5
/// times the one before, fine enough to tell a 0.3 ms fsync from a 0.5 ms
/// one.
fn stage_vec() -> Result<HistogramVec, prometheus::Error> {
    HistogramVec::new(
        HistogramOpts::new(
            "nokv_meta_stage_seconds",
            "Time spent per stage of the write and linearizable-read paths",
        )
        .buckets(prometheus::exponential_buckets(0.000_025, 1.5, 32)?),
        &["stage"],
    )
}

/// One stage's histogram as cumulative counts, for `StatusRequest.stages`.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSnapshot {
    pub stage: String,
    pub count: u64,
    pub sum_seconds: f64,
    pub upper_bounds: Vec<f64>,
    pub cumulative_counts: Vec<u64>,
}

/// Produces the text exposition served at `/metrics`.
pub type Render = std::sync::Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// The text exposition of several registries (one per shard replica, told
/// apart by their `shard` label), each metric family once.
pub fn render_all<'a>(registries: impl IntoIterator<Item = &'a Registry>) -> Vec<u8> {
    let mut families: std::collections::BTreeMap<String, prometheus::proto::MetricFamily> =
        std::collections::BTreeMap::new();
    for registry in registries {
        for family in registry.gather() {
            match families.get_mut(family.name()) {
                Some(merged) => merged
                    .mut_metric()
                    .extend(family.get_metric().iter().cloned()),
                None => {
                    families.insert(family.name().to_string(), family);
                }
            }
        }
    }
    let families: Vec<_> = families.into_values().collect();
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metrics.
    let _ = TextEncoder::new().encode(&families, &mut buf);
    buf
}

impl Metrics {
    /// Metrics of one shard replica: every series carries `shard="N"`.
    pub fn for_shard(shard: u16) -> Result<Metrics, prometheus::Error> {
        let labels = std::collections::HashMap::from([("shard".to_string(), shard.to_string())]);
        Self::with_registry(Registry::new_custom(None, Some(labels))?)
    }

    pub fn new() -> Result<Metrics, prometheus::Error> {
        Self::with_registry(Registry::new())
    }

    fn with_registry(registry: Registry) -> Result<Metrics, prometheus::Error> {
        let mutations_total = IntCounterVec::new(
            Opts::new(
                "nokv_meta_mutations_total",
                "Client mutations by result code",
            ),
            &["result"],
        )?;
        let queries_total = IntCounterVec::new(
            Opts::new(
                "nokv_meta_queries_total",
                "Client queries by consistency and result",
            ),
            &["consistency", "result"],
        )?;
        let mutate_seconds = Histogram::with_opts(
            HistogramOpts::new("nokv_meta_mutate_seconds", "Mutation latency on the leader")
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18)?),
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("nokv_meta_batch_commands", "Commands per Raft entry")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 10)?),
        )?;
        let raft_term = IntGauge::new("nokv_raft_term", "Current Raft term")?;
        let raft_is_leader = IntGauge::new("nokv_raft_is_leader", "1 if this node leads")?;
        let raft_last_log_index = IntGauge::new("nokv_raft_last_log_index", "Last log index")?;
        let raft_applied_index = IntGauge::new("nokv_raft_applied_index", "Last applied index")?;
        let raft_snapshot_index =
            IntGauge::new("nokv_raft_snapshot_index", "Last index in a snapshot")?;
        let raft_idle = IntGauge::new(
            "nokv_raft_idle",
            "1 while this replica runs the slow timers of an idle group",
        )?;
        let archive_archived_index = IntGauge::new(
            "nokv_archive_archived_index",
            "Highest log index restorable from the object store",
        )?;
        let archive_snapshot_index = IntGauge::new(
            "nokv_archive_snapshot_index",
            "Last log index of the newest snapshot in the object store",
        )?;
        let archive_errors_total = IntCounter::new(
            "nokv_archive_errors_total",
            "Failed archive passes (uploads, listings, local log reads)",
        )?;
        registry.register(Box::new(archive_archived_index.clone()))?;
        registry.register(Box::new(archive_snapshot_index.clone()))?;
        let stale_leader_refusals = IntCounter::new(
            "nokv_meta_stale_leader_refusals_total",
            "Requests refused by a leader that has not heard from a quorum within the election timeout",
        )?;
        let early_elections_total = IntCounterVec::new(
            Opts::new(
                "nokv_raft_early_elections_total",
                "Elections started before the timer because a vote showed waiting would cost a round",
            ),
            &["why"],
        )?;
        registry.register(Box::new(early_elections_total.clone()))?;
        let read_confirmations_total = IntCounterVec::new(
            Opts::new(
                "nokv_meta_read_confirmations_total",
                "Confirmations of linearizable read batches: on the leader by its lease or a quorum round, on a follower by a read index from the leader",
            ),
            &["by"],
        )?;
        registry.register(Box::new(read_confirmations_total.clone()))?;
        registry.register(Box::new(archive_errors_total.clone()))?;
        registry.register(Box::new(stale_leader_refusals.clone()))?;
        registry.register(Box::new(mutations_total.clone()))?;
        registry.register(Box::new(queries_total.clone()))?;
        registry.register(Box::new(mutate_seconds.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(raft_term.clone()))?;
        registry.register(Box::new(raft_is_leader.clone()))?;
        registry.register(Box::new(raft_last_log_index.clone()))?;
        registry.register(Box::new(raft_applied_index.clone()))?;
        registry.register(Box::new(raft_snapshot_index.clone()))?;
        registry.register(Box::new(raft_idle.clone()))?;
        let stage_seconds = stage_vec()?;
        registry.register(Box::new(stage_seconds.clone()))?;
        let stages = Stages::new(&stage_seconds)?;
        Ok(Metrics {
            registry,
            mutations_total,
            queries_total,
            mutate_seconds,
            batch_size,
            raft_term,
            raft_is_leader,
            raft_last_log_index,
            raft_applied_index,
            raft_snapshot_index,
            raft_idle,
            archive_archived_index,
            archive_snapshot_index,
            archive_errors_total,
            stale_leader_refusals,
            early_elections_total,
            read_confirmations_total,
            stages,
            stage_seconds,
        })
    }

    /// Every stage histogram as it stands (cumulative since start).
    pub fn stage_snapshots(&self) -> Vec<StageSnapshot> {
        let mut out = Vec::new();
        for family in self.stage_seconds.collect() {
            for metric in family.get_metric() {
                let stage = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "stage")
                    .map(|l| l.value().to_string())
                    .unwrap_or_default();
                let h = metric.get_histogram();
                out.push(StageSnapshot {
                    stage,
                    count: h.get_sample_count(),
                    sum_seconds: h.get_sample_sum(),
                    upper_bounds: h.get_bucket().iter().map(|b| b.upper_bound()).collect(),
                    cumulative_counts: h
                        .get_bucket()
                        .iter()
                        .map(|b| b.cumulative_count())
                        .collect(),
                });
            }
        }
        out.sort_by_key(|s| {
            Stages::NAMES
                .iter()
                .position(|n| *n == s.stage)
                .unwrap_or(usize::MAX)
        });
        out
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// Mirrors openraft's metrics into the gauges until `shutdown`.
///
/// Watches openraft's server and data metrics, which change only when
/// their values do, not its full metrics, which are republished on every
/// turn of the Raft core (every tick and every heartbeat).
pub async fn track_raft(raft: Raft, metrics: std::sync::Arc<Metrics>, shutdown: CancellationToken) {
    let mut server = raft.server_metrics();
    let mut data = raft.data_metrics();
    loop {
        {
            let s = server.borrow_and_update();
            metrics.raft_term.set(s.vote.leader_id().term as i64);
            metrics
                .raft_is_leader
                .set(i64::from(s.current_leader.as_ref() == Some(&s.id)));
        }
        {
            let d = data.borrow_and_update();
            metrics
                .raft_last_log_index
                .set(d.last_log.map_or(0, |l| l.index) as i64);
            metrics
                .raft_applied_index
                .set(d.last_applied.map_or(0, |l| l.index) as i64);
            metrics
                .raft_snapshot_index
                .set(d.snapshot.map_or(0, |l| l.index) as i64);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = server.changed() => if changed.is_err() { return },
            changed = data.changed() => if changed.is_err() { return },
        }
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve_http(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match stream.read(&mut buf).await {
                Ok(n) => n,
                Err(_) => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics") {
                ("200 OK", render())
            } else if head.starts_with("GET /healthz") {
                ("200 OK", b"ok\n".to_vec())
            } else {
                ("404 Not Found", b"not found\n".to_vec())
            };
            let header = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(header.as_bytes()).await;
            let _ = stream.write_all(&body).await;
        });
    }
}
