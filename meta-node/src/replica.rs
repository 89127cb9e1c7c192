//! One shard replica: the Raft group member of one shard on this node, with
//! its state machine, proposer, read-index, archiver and maintenance tasks.
//!
//! A node hosts any number of replicas ([`crate::host`]). Each has its own
//! openraft instance, its own log (a pair of trees in the node's shared
//! sled database, `raft-log`), its own snapshot directory and its own
//! archive prefix in the object store (`meta/shard-N/`); what replicas of
//! one node share is the node's identity, listener, sled database (one
//! fsync covers every shard's appends), object-store client and peer
//! connections.
//!
//! # Invariants
//! - A replica's on-disk state lives under [`replica_dir`] and its log
//!   group; nothing of one shard is written under another's.
//! - Starting a replica twice on one node is impossible: the host keeps one
//!   per shard and sled refuses a second open of the database.
//! - Stopping a replica stops its tasks first, then its Raft instance; its
//!   data stays for the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nokv_blob::BlobStore;
use nokv_holt::{HoltConfig, ShardId};
use nokv_raft_log::SledLogDb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::archive::{ArchiveConfig, ArchiveGatedLogStore, Archiver, PurgeGate};
use crate::client_service::{ClientService, ClientTimeouts};
use crate::election::Elections;
use crate::idle::{self, IdleConfig};
use crate::maintenance::Maintenance;
use crate::metrics::{self, Metrics};
use crate::network::{GrpcNetworkFactory, PeerPool};
use crate::node::{NodeConfig, NodeError, INSTALL_SNAPSHOT_TIMEOUT};
use crate::proposer::Proposer;
use crate::raft_service::RaftServer;
use crate::read_index::{LeaseReads, ReadIndex};
use crate::state_machine::HoltStateMachine;
use crate::typ::{Raft, TypeConfig};

/// What every replica of a node shares.
#[derive(Clone)]
pub struct NodeContext {
    pub config: NodeConfig,
    pub log_db: SledLogDb,
    pub blob: Option<Arc<dyn BlobStore>>,
    pub peers: Arc<PeerPool>,
    /// Raised when a replica's Raft dies: the node then stops.
    pub fatal: crate::fatal::FatalSignal,
}

/// Where the state machine of `shard` keeps its snapshot. Shard 0 keeps the
/// single-shard layout (`DATA_DIR/snapshot`), so data directories of
/// earlier versions open unchanged; shard N uses `DATA_DIR/shards/N/`.
pub fn replica_dir(data_dir: &Path, shard: ShardId) -> PathBuf {
    match shard.0 {
        0 => data_dir.to_path_buf(),
        n => data_dir.join("shards").join(n.to_string()),
    }
}

/// The shards other than 0 whose replicas this data directory holds.
pub fn hosted_shards(data_dir: &Path) -> Result<Vec<ShardId>, NodeError> {
    let dir = data_dir.join("shards");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(NodeError::DataDir { path: dir, source }),
    };
    let mut shards = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NodeError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        match name.to_str().and_then(|n| n.parse::<u16>().ok()) {
            Some(n) if n > 0 => shards.push(ShardId(n)),
            _ => tracing::warn!(entry = ?name, "ignoring a foreign entry in the shards directory"),
        }
    }
    shards.sort();
    Ok(shards)
}

/// A running replica of one shard.
pub struct ShardReplica {
    pub shard: ShardId,
    pub raft: Raft,
    pub client: ClientService,
    pub raft_server: RaftServer,
    pub metrics: Arc<Metrics>,
    tasks: CancellationToken,
    archiver: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl ShardReplica {
    /// Opens (or creates) the replica's state and starts its Raft instance
    /// and tasks. A new replica is empty until its group is initialized or
    /// a leader adds it.
    pub async fn start(ctx: &NodeContext, shard: ShardId) -> Result<ShardReplica, NodeError> {
        let config = &ctx.config;
        let dir = replica_dir(&config.data_dir, shard);
        std::fs::create_dir_all(&dir).map_err(|source| NodeError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let sled_log = ctx.log_db.group::<TypeConfig>(shard.0)?;
        // With an object store, local purges wait until the archive has the entries.
        let gate = Arc::new(if ctx.blob.is_some() {
            PurgeGate::enabled()
        } else {
            PurgeGate::disabled()
        });
        let metrics = Arc::new(Metrics::for_shard(shard.0)?);
        let log_store = ArchiveGatedLogStore::new(
            sled_log.clone(),
            gate.clone(),
            metrics.stages.log_append.clone(),
        );
        let holt_config = HoltConfig {
            shard,
            dedupe_capacity: config.dedupe_capacity,
        };
        let state_machine = HoltStateMachine::open(&dir.join("snapshot"), holt_config)?
            .with_apply_timer(metrics.stages.apply.clone());
        let state = state_machine.shared();
        let snapshots = state_machine.snapshot_handle();
        let elections = Arc::new(Elections::new(
            config.election_timeout_max,
            Some(metrics.early_elections_total.clone()),
        ));
        let lease_clock = Arc::new(crate::lease::LeaseClock::default());
        let raft: Raft = openraft::Raft::new(
            config.node_id,
            Arc::new(config.raft_config(shard)?),
            GrpcNetworkFactory::new(
                shard.0,
                ctx.peers.clone(),
                elections.clone(),
                metrics.stages.replicate.clone(),
                lease_clock.clone(),
            ),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        if config.early_elections {
            elections.attach(raft.clone());
        }

        let tasks = CancellationToken::new();
        tokio::spawn(crate::fatal::watch(
            raft.clone(),
            shard,
            ctx.fatal.clone(),
            tasks.clone(),
        ));
        tokio::spawn(metrics::track_raft(
            raft.clone(),
            metrics.clone(),
            tasks.clone(),
        ));
        // Runs also with idle heartbeats off: a follower receiving a
        // snapshot holds its election timer either way (see `idle`).
        tokio::spawn(idle::run(
            raft.clone(),
            elections.clone(),
            metrics.clone(),
            IdleConfig {
                slow_idle: config.idle_heartbeats,
                ..IdleConfig::for_lease(config.election_timeout_max, INSTALL_SNAPSHOT_TIMEOUT)
            },
            tasks.clone(),
        ));
        let proposer = Proposer::start(
            raft.clone(),
            config.max_batch,
            config.max_inflight,
            metrics.clone(),
            tasks.clone(),
        );
        let lease_reads = config.read_lease.then(|| LeaseReads {
            clock: lease_clock,
            node_id: config.node_id,
            usable: crate::lease::usable(config.election_timeout_max),
        });
        let read_index = ReadIndex::start(
            raft.clone(),
            tasks.clone(),
            lease_reads,
            metrics.read_confirmations_total.clone(),
        );
        let (archive, archiver) = match ctx.blob.as_ref().map(|store| {
            Archiver {
                raft: raft.clone(),
                store: store.clone(),
                log: sled_log,
                snapshots,
                gate: gate.clone(),
                metrics: metrics.clone(),
                config: ArchiveConfig {
                    shard,
                    interval: config.archive_interval,
                    segment_entries: config.segment_entries,
                },
            }
            .start(tasks.clone())
        }) {
            Some((handle, task)) => (Some(handle), Some(task)),
            None => (None, None),
        };
        let maintenance = Maintenance {
            raft: raft.clone(),
            state: state.clone(),
            proposer: proposer.clone(),
            blob: ctx.blob.clone(),
            grace: config.gc_grace,
            archive_floor: gate,
            verified: Arc::default(),
            gc_marks: Arc::default(),
        };
        tokio::spawn(maintenance.clone().run(config.gc_interval, tasks.clone()));
        let client = ClientService {
            node_id: config.node_id,
            advertise: config.advertise.clone(),
            raft: raft.clone(),
            state,
            proposer,
            read_index,
            follower_reads: config.follower_reads.then(|| ctx.peers.clone()),
            metrics: metrics.clone(),
            timeouts: ClientTimeouts {
                quorum_lease: config.election_timeout_max,
                ..config.timeouts.clone()
            },
            maintenance,
            archive,
            shard,
            handover: tokio::sync::watch::channel(false).0,
            tls: config.tls.clone(),
            auth_token: config.auth.as_ref().map(|a| a.admin_token.clone()),
        };
        tracing::info!(node = config.node_id, %shard, "replica started");
        Ok(ShardReplica {
            shard,
            raft_server: RaftServer::new(
                raft.clone(),
                elections,
                metrics.stages.follower_append.clone(),
                client.read_index.clone(),
            ),
            raft,
            client,
            metrics,
            tasks,
            archiver: std::sync::Mutex::new(archiver),
        })
    }

    /// Stops the replica's tasks (the archiver's last pass included, which
    /// is bounded), then its Raft instance. Its data stays on disk.
    /// Requests still holding the replica get `UNAVAILABLE` from Raft.
    pub async fn stop(&self) {
        self.tasks.cancel();
        let archiver = self
            .archiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = archiver {
            if let Err(e) = task.await {
                tracing::warn!(shard = %self.shard, error = %e, "archiver task failed");
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(shard = %self.shard, error = %e, "raft did not shut down cleanly");
        }
    }
}
