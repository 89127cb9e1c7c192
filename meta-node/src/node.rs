//! Assembling and running one replica: log store, state machine, Raft,
//! proposer, gRPC services and metrics, with a clean shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nokv_holt::ShardId;
use nokv_proto::pb::meta_service_server::MetaServiceServer;
use nokv_proto::pb::raft_service_server::RaftServiceServer;
use nokv_raft_log::SledLogDb;
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::client_service::ClientTimeouts;
use crate::host::{NodeRaftService, NodeService, ShardHost};
use crate::metrics;
use crate::replica::{hosted_shards, NodeContext};
use crate::typ::NodeId;

/// Everything a replica needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Address peers and clients use to reach this node (`HOST:PORT`).
    pub advertise: String,
    /// The cluster's name: every Raft message carries it, and a message
    /// naming another cluster is refused.
    pub cluster: String,
    /// TLS for clients and peers; `None`: plain HTTP/2 (see `crate::tls`).
    pub tls: Option<crate::tls::NodeTls>,
    /// Token checks on every client call (`--require-auth`); `None`: every
    /// caller is trusted (see `crate::auth`).
    pub auth: Option<crate::auth::AuthConfig>,
    pub data_dir: PathBuf,
    /// The shard this node always hosts (0, the root shard); others are
    /// added by `HostShard` and kept in the data directory.
    pub shard: ShardId,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Stand for election before the timer where a vote shows it saves a
    /// round (see [`crate::election`]).
    pub early_elections: bool,
    /// Slow timers for idle groups: an idle leader heartbeats at half the
    /// leader lease, a follower that hears its leader runs no tick (see
    /// [`crate::idle`]).
    pub idle_heartbeats: bool,
    /// Linearizable reads on the leader by its lease, without a quorum
    /// round while a quorum acknowledged it recently (see
    /// [`crate::lease`], which states the clock assumption); `false`:
    /// every read batch confirms leadership with a quorum (read index).
    pub read_lease: bool,
    /// Followers answer linearizable reads themselves: they ask the leader
    /// for a read index (`RaftService.ReadIndex`) and read once they have
    /// applied that far; `false`: they answer NOT_LEADER and the client
    /// goes to the leader.
    pub follower_reads: bool,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot (for slow followers).
    pub keep_logs_behind_snapshot: u64,
    /// Most commands in one Raft entry.
    pub max_batch: usize,
    /// Most Raft entries proposed and not yet committed.
    pub max_inflight: usize,
    /// Most watch streams this node serves at once, over all its shards;
    /// one more is refused as unavailable (the client tries another
    /// replica). Each stream holds a task and a buffer of events.
    pub max_watch_streams: usize,
    pub timeouts: ClientTimeouts,
    pub dedupe_capacity: usize,
    /// Where file bodies live (`s3://BUCKET/PREFIX`, `file:///DIR`); `None`:
    /// metadata only, publishing is refused.
    pub blob_store: Option<String>,
    /// How often the leader reclaims expired uploads and collects garbage.
    pub gc_interval: Duration,
    /// How long superseded blocks stay readable for readers that started
    /// on the old generation.
    pub gc_grace: Duration,
    /// Longest pause between two archive passes of the leader (snapshots
    /// and log segments shipped to the object store).
    pub archive_interval: Duration,
    /// Most log entries per archived segment; this many pending entries
    /// start an archive pass before the interval ends.
    pub segment_entries: u64,
}

/// Time one `InstallSnapshot` chunk may take to send and apply.
pub(crate) const INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_millis(2_000);
/// Largest `InstallSnapshot` chunk.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

impl NodeConfig {
    /// Defaults for a node with the given identity.
    pub fn new(node_id: NodeId, advertise: String, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            node_id,
            advertise,
            cluster: "nokv".into(),
            tls: None,
            auth: None,
            data_dir,
            shard: ShardId(0),
            // A follower starts an election after the leader lease
            // (openraft: `election_timeout_max`) plus a random timeout in
            // [min, max): 600–800 ms of silence here, which keeps leader
            // failover under a second (docs/benchmarks.md).
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(200),
            election_timeout_max: Duration::from_millis(400),
            early_elections: true,
            idle_heartbeats: true,
            read_lease: true,
            follower_reads: false,
            snapshot_every: 10_000,
            keep_logs_behind_snapshot: 1_000,
            max_batch: 256,
            max_inflight: 4,
            max_watch_streams: 1024,
            timeouts: ClientTimeouts::default(),
            dedupe_capacity: 100_000,
            blob_store: None,
            gc_interval: Duration::from_secs(10),
            gc_grace: Duration::from_secs(300),
            archive_interval: crate::archive::DEFAULT_ARCHIVE_INTERVAL,
            segment_entries: crate::archive::DEFAULT_SEGMENT_ENTRIES,
        }
    }

    /// Checks the values before anything starts.
    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |m: &str| Err(NodeError::Config(m.to_string()));
        if self.node_id == 0 {
            return bad("node id must be at least 1");
        }
        if self.advertise.is_empty() {
            return bad("advertise address is empty");
        }
        if self.heartbeat >= self.election_timeout_min {
            return bad("heartbeat must be shorter than the election timeout");
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return bad("election timeout min must be below max");
        }
        if self.snapshot_every == 0 || self.max_batch == 0 || self.max_inflight == 0 {
            return bad("snapshot interval, batch size and in-flight limit must be positive");
        }
        if self.max_watch_streams == 0 {
            return bad("the watch stream limit must be positive");
        }
        if self.archive_interval.is_zero() || self.segment_entries == 0 {
            return bad("archive interval and segment size must be positive");
        }
        Ok(())
    }

    pub(crate) fn raft_config(&self, shard: ShardId) -> Result<openraft::Config, NodeError> {
        let config = openraft::Config {
            cluster_name: format!("nokv-{shard}"),
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs_behind_snapshot,
            max_payload_entries: 64,
            // openraft's default gives a whole snapshot chunk (3 MiB) 200 ms:
            // a lagging follower in a debug build never finished one and was
            // useless to every quorum for 90 s (docs/jepsen.md, ledger 5).
            // Smaller chunks, each with a realistic deadline.
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT.as_millis() as u64,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| NodeError::Config(e.to_string()))
    }
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory belongs to node {found}, not node {expected}")]
    WrongNode { expected: NodeId, found: String },
    #[error("raft log: {0}")]
    Log(#[from] nokv_raft_log::LogStoreError),
    #[error("state machine: {0}")]
    StateMachine(#[from] crate::state_machine::SnapshotFileError),
    #[error("raft: {0}")]
    Raft(String),
    /// A replica's Raft stopped on a storage error or a broken invariant;
    /// the node stopped serving (see `crate::fatal`).
    #[error("fatal error in the replica of {0}; the node stopped (restart it)")]
    Fatal(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("object store: {0}")]
    Blob(#[from] nokv_blob::BlobError),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Accepted connections with Nagle's algorithm off: Raft heartbeats and
/// small replies must not wait for delayed ACKs (tonic's own `tcp_nodelay`
/// only applies to listeners it binds itself).
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// Records which node owns `data_dir`, refusing a directory of another node.
fn claim_data_dir(data_dir: &Path, node_id: NodeId) -> Result<(), NodeError> {
    let io = |source| NodeError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let marker = data_dir.join("node-id");
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim() == node_id.to_string() => Ok(()),
        Ok(found) => Err(NodeError::WrongNode {
            expected: node_id,
            found: found.trim().to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&marker, format!("{node_id}\n")).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// Runs a node on `listener` until `shutdown` is cancelled: a replica of
/// the root shard (0) and of every other shard its data directory holds
/// (more are added by `HostShard`), all served on one listener. At shutdown
/// it stops the gRPC server, then every replica's tasks and Raft.
///
/// With a `control` plane the node also registers itself there, follows the
/// shard map and hosts every shard it places on this node
/// ([`crate::control`]); without one, replicas are placed by `HostShard`.
pub async fn run_node(
    config: NodeConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    control: Option<crate::control::Control>,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    config.validate()?;
    claim_data_dir(&config.data_dir, config.node_id)?;
    if !config.early_elections {
        tracing::info!("early elections are off: elections wait for the timer");
    }
    if !config.idle_heartbeats {
        tracing::info!("idle heartbeats are off: idle groups run openraft's timers");
    }
    let log_db = SledLogDb::open(&config.data_dir.join("raft-log"))?;
    let blob = match &config.blob_store {
        Some(url) => {
            let location = nokv_blob::BlobLocation::parse(url)?;
            Some(nokv_blob::open(&location).await?)
        }
        None => None,
    };
    let fatal = crate::fatal::FatalSignal::default();
    let host = Arc::new(ShardHost::new(NodeContext {
        config: config.clone(),
        log_db,
        blob,
        peers: Arc::new(crate::network::PeerPool::new(
            config.cluster.clone(),
            config.tls.clone(),
        )),
        fatal: fatal.clone(),
    }));
    host.host(config.shard).await?;
    for shard in hosted_shards(&config.data_dir)? {
        host.host(shard).await?;
    }

    let tasks = CancellationToken::new();
    let admin = control.as_ref().and_then(|c| c.admin.clone());
    let maps = control
        .map(|c| crate::control::spawn(c.plane, host.clone(), config.node_id, tasks.clone()));
    if let Some(l) = metrics_listener {
        let render_from = host.clone();
        let render: metrics::Render = Arc::new(move || render_from.render_metrics());
        tokio::spawn(metrics::serve_http(l, render, tasks.clone()));
    }
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(node = config.node_id, addr = ?local, advertise = %config.advertise, "serving");

    let auth = config.auth.as_ref().map(|a| {
        Arc::new(crate::auth::Auth::new(
            a,
            config.node_id,
            host.clone(),
            maps.clone(),
            config.tls.clone(),
        ))
    });
    let mut server = tonic::transport::Server::builder();
    match &config.tls {
        Some(tls) => server = server.tls_config(tls.server_config())?,
        None if local.is_some_and(|a| !a.ip().is_loopback()) && config.auth.is_some() => {
            tracing::warn!(
                "serving without TLS on a non-loopback address: tokens cross the network in \
                 the clear, and anyone who reaches it can take part in Raft (pass --tls-cert, \
                 --tls-key, --tls-ca)"
            )
        }
        None if local.is_some_and(|a| !a.ip().is_loopback()) => tracing::warn!(
            "serving without TLS on a non-loopback address: anyone who reaches it can read and \
             write everything and take part in Raft (pass --tls-cert, --tls-key, --tls-ca)"
        ),
        None => {}
    }
    let served = server
        .tcp_nodelay(true)
        .add_service(
            MetaServiceServer::new(NodeService {
                host: host.clone(),
                maps,
                admin,
                cluster: config.cluster.clone(),
                watch_streams: Arc::new(tokio::sync::Semaphore::new(config.max_watch_streams)),
                auth,
            })
            .max_decoding_message_size(nokv_proto::MAX_CLIENT_MESSAGE)
            .max_encoding_message_size(nokv_proto::MAX_CLIENT_MESSAGE),
        )
        .add_service(
            RaftServiceServer::new(NodeRaftService {
                host: host.clone(),
                cluster: config.cluster.clone(),
                tls: config.tls.is_some(),
            })
            .max_decoding_message_size(nokv_proto::MAX_RAFT_MESSAGE)
            .max_encoding_message_size(nokv_proto::MAX_RAFT_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming(listener), async {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = fatal.raised() => {}
            }
        })
        .await;

    tracing::info!(node = config.node_id, "stopping");
    tasks.cancel();
    // Each replica's archiver makes a last (bounded) pass before its Raft stops.
    host.stop_all().await;
    served?;
    match fatal.reason() {
        Some(reason) => Err(NodeError::Fatal(reason)),
        None => Ok(()),
    }
}
