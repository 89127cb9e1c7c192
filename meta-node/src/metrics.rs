//! Prometheus metrics of a node (`nokv_<subsystem>_<thing>_<unit>`) and a
//! tiny HTTP endpoint that serves them at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
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
        })
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
