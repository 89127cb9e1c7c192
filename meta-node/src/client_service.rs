//! The client API (`MetaService`), served by every replica.
//!
//! Writes: decode → validate (bad input never reaches the log) → leader
//! check → stamp the leader's time into the command → group commit through
//! Raft → the engine's outcome. Reads: linearizable via openraft's
//! read-index (`ensure_linearizable`, leader only), or, when the request
//! opts in, stale from this replica's applied state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nokv_holt::{
    Applied, BodySpec, Command, FsError, Holt, IndexedCommit, Op, RequestId, StagedUpload, UploadId,
};
use nokv_proto::convert::{mutate_response, query_response};
use nokv_proto::error::status_with_detail;
use nokv_proto::pb::{self, ErrorDetail};
use nokv_proto::{
    fs_error_status, fs_error_status_from_leader, not_leader_status, status_from_detail, ErrorCode,
    Mutation, Read, ReadConsistency,
};
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ServerState};
use tonic::{Request, Response, Status};

use crate::archive::{ArchiveError, ArchiveHandle};
use crate::clock::now_ns;
use crate::maintenance::{Maintenance, MaintenanceError};
use crate::metrics::Metrics;
use crate::proposer::{ProposeError, Proposer};
use crate::read_index::{ReadIndex, ReadIndexAnswer, ReadIndexError};
use crate::state_machine::SharedState;
use crate::typ::{NodeId, Raft};

/// Timeouts of the client path.
#[derive(Clone, Debug)]
pub struct ClientTimeouts {
    /// How long a write may wait for its commit before it is reported as
    /// UNKNOWN_OUTCOME.
    pub write: Duration,
    /// How long a linearizable read may wait for read-index confirmation.
    pub read_index: Duration,
    /// A leader that has not heard from a quorum for longer than this (the
    /// maximum election timeout: by then the others may have elected a new
    /// leader) refuses new writes and reads at once with UNAVAILABLE, so
    /// clients move on instead of waiting on a deposed leader. Refusing is
    /// always safe: nothing was proposed. A write already in flight when
    /// the lease runs out is answered UNKNOWN_OUTCOME at once (it may still
    /// commit under a new leader; the client retries it under the same
    /// request id) instead of after `write`.
    pub quorum_lease: Duration,
}

/// The longest a write waits for a leadership transfer to finish.
const HANDOVER_WAIT: Duration = Duration::from_secs(6);

/// How often a write in flight checks that its leader still has a quorum.
const QUORUM_CHECK_EVERY: Duration = Duration::from_millis(50);

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            write: Duration::from_secs(10),
            read_index: Duration::from_secs(5),
            quorum_lease: Duration::from_millis(800),
        }
    }
}

/// Serves `MetaService` for one replica.
pub struct ClientService {
    pub(crate) node_id: NodeId,
    pub(crate) advertise: String,
    pub(crate) raft: Raft,
    pub(crate) state: SharedState,
    pub(crate) proposer: Proposer,
    pub(crate) read_index: ReadIndex,
    /// With follower reads on: the connections to peers, through which a
    /// follower asks the leader for read indexes.
    pub(crate) follower_reads: Option<Arc<crate::network::PeerPool>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) timeouts: ClientTimeouts,
    pub(crate) maintenance: Maintenance,
    /// The archiver, when the node has an object store.
    pub(crate) archive: Option<ArchiveHandle>,
    /// The shard this replica belongs to.
    pub(crate) shard: nokv_holt::ShardId,
    /// True while a leadership transfer holds new writes (see
    /// `crate::membership`): they wait, then go to the new leader.
    pub(crate) handover: tokio::sync::watch::Sender<bool>,
    /// This node's TLS identity, for calls to peers (`Campaign`).
    pub(crate) tls: Option<crate::tls::NodeTls>,
    /// The token this node presents to peers (`--require-auth`).
    pub(crate) auth_token: Option<nokv_proto::auth::Token>,
}

/// Holds new writes on this replica until dropped.
pub(crate) struct WriteHold<'a>(&'a tokio::sync::watch::Sender<bool>);

impl Drop for WriteHold<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// How long a `Backup` may take on the leader (snapshot build and uploads).
const BACKUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `gc --now` waits for the archive to hold the entries that queued its tasks.
const GC_ARCHIVE_WAIT: Duration = Duration::from_secs(10);

impl ClientService {
    /// The leader's id and address as this node knows them.
    pub(crate) fn leader_hint(&self) -> Option<(NodeId, String)> {
        crate::read_index::leader_hint(&self.raft)
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// `Ok` if this node leads and a quorum acknowledged it recently:
    /// NOT_LEADER (with the hint) or UNAVAILABLE (a leader cut off from its
    /// quorum) otherwise.
    fn check_leading(&self) -> Result<(), Status> {
        let (leads, since_quorum_ms) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.current_leader == Some(self.node_id),
                m.millis_since_quorum_ack,
            )
        };
        if !leads {
            return Err(not_leader_status(self.leader_hint()));
        }
        match since_quorum_ms {
            Some(ms) if u128::from(ms) > self.timeouts.quorum_lease.as_millis() => {
                self.metrics.stale_leader_refusals.inc();
                Err(status_from_detail(
                    ErrorCode::Unavailable,
                    format!(
                        "this leader has not heard from a quorum for {ms} ms and may have been \
                         replaced; try another replica"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Returns once this node no longer leads, or has heard from no quorum
    /// for longer than the quorum lease: a write in flight on it is then
    /// unlikely to commit soon. Checks every [`QUORUM_CHECK_EVERY`] (the
    /// metrics do not change while the leader waits in silence).
    async fn quorum_lost(&self) {
        let mut every = tokio::time::interval(QUORUM_CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let (leads, since_quorum_ms) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                (
                    m.current_leader == Some(self.node_id),
                    m.millis_since_quorum_ack,
                )
            };
            let stale = since_quorum_ms
                .is_some_and(|ms| u128::from(ms) > self.timeouts.quorum_lease.as_millis());
            if !leads || stale {
                return;
            }
        }
    }

    /// The shard's epoch as this replica has applied it.
    fn epoch(&self) -> Result<u64, Status> {
        let s = self.state.read().map_err(|_| Self::state_error())?;
        Ok(s.holt.epoch().0)
    }

    pub(crate) fn state_error() -> Status {
        status_from_detail(ErrorCode::Internal, "replica state is unavailable".into())
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    status_from_detail(ErrorCode::InvalidArgument, e.to_string())
}

fn unknown_outcome(reason: &str, leader: Option<(NodeId, String)>) -> Status {
    let (leader_id, leader_addr) = match leader {
        Some((id, addr)) => (Some(id), addr),
        None => (None, String::new()),
    };
    status_with_detail(
        ErrorCode::UnknownOutcome.grpc_code(),
        ErrorDetail {
            code: ErrorCode::UnknownOutcome.as_str().into(),
            message: format!("write outcome unknown: {reason}; retry with the same request id"),
            leader_id,
            leader_addr,
            ..Default::default()
        },
    )
}

fn maintenance_status(e: MaintenanceError) -> Status {
    match e {
        MaintenanceError::NoStore => status_from_detail(ErrorCode::InvalidArgument, e.to_string()),
        MaintenanceError::Store(ref b) if !b.is_retryable() => {
            status_from_detail(ErrorCode::Internal, e.to_string())
        }
        MaintenanceError::Store(_) | MaintenanceError::Propose { .. } | MaintenanceError::State => {
            status_from_detail(ErrorCode::Unavailable, e.to_string())
        }
    }
}

fn archive_status(e: ArchiveError, leader: Option<(NodeId, String)>) -> Status {
    match e {
        ArchiveError::NotLeader => not_leader_status(leader),
        ArchiveError::InvalidArgument(_) => {
            status_from_detail(ErrorCode::InvalidArgument, e.to_string())
        }
        ArchiveError::Store(ref b) if !b.is_retryable() => {
            status_from_detail(ErrorCode::Internal, e.to_string())
        }
        ArchiveError::Store(_)
        | ArchiveError::Timeout(_)
        | ArchiveError::Raft(_)
        | ArchiveError::Hole { .. } => status_from_detail(ErrorCode::Unavailable, e.to_string()),
        ArchiveError::Log(_)
        | ArchiveError::Snapshot(_)
        | ArchiveError::CorruptSegment { .. }
        | ArchiveError::Encode(_)
        | ArchiveError::DataDir { .. }
        | ArchiveError::Io { .. }
        | ArchiveError::NothingToRestore { .. } => {
            status_from_detail(ErrorCode::Internal, e.to_string())
        }
    }
}

fn role(state: ServerState) -> pb::Role {
    match state {
        ServerState::Leader => pb::Role::Leader,
        ServerState::Follower => pb::Role::Follower,
        ServerState::Candidate => pb::Role::Candidate,
        ServerState::Learner => pb::Role::Learner,
        ServerState::Shutdown => pb::Role::Shutdown,
    }
}

/// The client API of one shard replica. The node's [`crate::host`] serves
/// `MetaService` and hands each request to the replica of the shard it
/// names.
impl ClientService {
    pub async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
        permit: tokio::sync::OwnedSemaphorePermit,
        allowed: Option<crate::watch::StillAllowed>,
    ) -> Result<Response<crate::watch::WatchStream>, Status> {
        crate::watch::open(
            self.state.clone(),
            self.raft.clone(),
            request.into_inner(),
            permit,
            allowed,
        )
        .map(Response::new)
    }

    /// One write (a `Mutate` call, or one request of a `MutateBatch`).
    pub async fn mutate(&self, request: pb::MutateRequest) -> Result<pb::MutateResponse, Status> {
        let started = Instant::now();
        let result = self.mutate_inner(request).await;
        let code = match &result {
            Ok(_) => "ok".to_string(),
            Err(s) => nokv_proto::detail_of(s).map_or_else(|| "internal".into(), |d| d.code),
        };
        self.metrics
            .mutations_total
            .with_label_values(&[&code])
            .inc();
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics.mutate_seconds.observe(elapsed);
        self.metrics.stages.write_total.observe(elapsed);
        result
    }

    pub async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let mut answers = self.query_many(vec![request.into_inner()]).await;
        match answers.pop() {
            Some(answer) => answer.map(Response::new),
            None => Err(Self::state_error()),
        }
    }

    /// Reads of this shard (a `Query` call, or those of a `QueryBatch`),
    /// answered in order. The linearizable ones share one confirmation that
    /// this replica leads, made after every one of them arrived: each sees
    /// every write acknowledged before it was sent.
    pub async fn query_many(
        &self,
        requests: Vec<pb::QueryRequest>,
    ) -> Vec<Result<pb::QueryResponse, Status>> {
        let started = Instant::now();
        let reads: Vec<Result<Read, Status>> = requests
            .into_iter()
            .map(|r| Read::try_from(r).map_err(invalid))
            .collect();
        let linearizable = |r: &Result<Read, Status>| {
            r.as_ref()
                .is_ok_and(|r| r.consistency == ReadConsistency::Linearizable)
        };
        let confirmed = if reads.iter().any(linearizable) {
            self.confirm_read().await
        } else {
            Ok(())
        };
        let answers: Vec<Result<pb::QueryResponse, Status>> = reads
            .into_iter()
            .map(|read| {
                let read = read?;
                let linearizable = read.consistency == ReadConsistency::Linearizable;
                let answer = match (&confirmed, linearizable) {
                    (Err(refused), true) => Err(refused.clone()),
                    _ => {
                        let _timer =
                            linearizable.then(|| self.metrics.stages.read_execute.start_timer());
                        self.execute(&read)
                    }
                };
                let consistency = if linearizable {
                    self.metrics
                        .stages
                        .read_total
                        .observe(started.elapsed().as_secs_f64());
                    "linearizable"
                } else {
                    "stale"
                };
                let code = match &answer {
                    Ok(_) => "ok".to_string(),
                    Err(s) => {
                        nokv_proto::detail_of(s).map_or_else(|| "internal".into(), |d| d.code)
                    }
                };
                self.metrics
                    .queries_total
                    .with_label_values(&[consistency, &code])
                    .inc();
                answer
            })
            .collect();
        answers
    }

    pub async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let with_stages = request.get_ref().stages;
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let member = |id: NodeId| pb::Member {
            id,
            addr: membership
                .get_node(&id)
                .map(|n| n.addr.clone())
                .unwrap_or_default(),
        };
        let voters: Vec<pb::Member> = membership.voter_ids().map(member).collect();
        let learners: Vec<pb::Member> = membership.learner_ids().map(member).collect();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        let (shard, stats, newest_cursor, oldest_cursor, retention) = {
            let s = self.state.read().map_err(|_| Self::state_error())?;
            (
                u32::from(s.holt.shard().0),
                s.holt.stats(),
                s.holt.newest_cursor(),
                s.holt.oldest_cursor(),
                s.holt.watch_retention(),
            )
        };
        Ok(Response::new(pb::StatusResponse {
            node_id: self.node_id,
            addr: self.advertise.clone(),
            role: role(m.state) as i32,
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            initialized: !voters.is_empty(),
            voters,
            learners,
            shard,
            epoch: stats.epoch.0,
            inodes: stats.inodes,
            version: env!("CARGO_PKG_VERSION").to_string(),
            blob_location: self
                .maintenance
                .blob
                .as_ref()
                .map(|b| b.location().to_string())
                .unwrap_or_default(),
            staged_uploads: stats.staged,
            gc_pending: stats.gc_tasks,
            newest_cursor,
            oldest_cursor,
            snapshots: stats.snapshots,
            watch_max_events: retention.max_events,
            watch_max_age_ms: retention.max_age_ns / 1_000_000,
            stages: if with_stages {
                self.stage_latencies()
            } else {
                Vec::new()
            },
        }))
    }

    fn stage_latencies(&self) -> Vec<pb::StageLatency> {
        self.metrics
            .stage_snapshots()
            .into_iter()
            .map(|s| pb::StageLatency {
                stage: s.stage,
                count: s.count,
                sum_seconds: s.sum_seconds,
                upper_bounds: s.upper_bounds,
                cumulative_counts: s.cumulative_counts,
            })
            .collect()
    }

    pub async fn init_cluster(
        &self,
        request: Request<pb::InitClusterRequest>,
    ) -> Result<Response<pb::InitClusterResponse>, Status> {
        let members = request.into_inner().members;
        if members.is_empty() {
            return Err(invalid("init needs at least one member"));
        }
        let mut nodes = BTreeMap::new();
        for m in members {
            if m.id == 0 {
                return Err(invalid("node id 0 is reserved"));
            }
            if m.addr.is_empty() {
                return Err(invalid(format!("member {} has no address", m.id)));
            }
            if nodes.insert(m.id, BasicNode { addr: m.addr }).is_some() {
                return Err(invalid(format!("member {} is listed twice", m.id)));
            }
        }
        if !nodes.contains_key(&self.node_id) {
            return Err(invalid(format!(
                "this node ({}) is not among the members; send init to a member",
                self.node_id
            )));
        }
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(Response::new(pb::InitClusterResponse {})),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => Err(status_with_detail(
                tonic::Code::FailedPrecondition,
                ErrorDetail {
                    code: "ALREADY_INITIALIZED".into(),
                    message: format!("cluster is already initialized: {e}"),
                    ..Default::default()
                },
            )),
            Err(e) => Err(invalid(e)),
        }
    }

    pub async fn run_gc(
        &self,
        request: Request<pb::RunGcRequest>,
    ) -> Result<Response<pb::RunGcResponse>, Status> {
        self.must_lead().await?;
        let ignore_grace = request.into_inner().ignore_grace;
        // `gc --now` means now: rather than report tasks that wait for the
        // archive to hold the entry that queued them, ask for that pass.
        if let (true, Some(archive)) = (ignore_grace, &self.archive) {
            if let Some(index) = self
                .maintenance
                .gc_waits_for_archive()
                .map_err(maintenance_status)?
            {
                if !archive.wait_archived(index, GC_ARCHIVE_WAIT).await {
                    tracing::info!(
                        index,
                        "gc --now: the archive did not reach the queued tasks in time"
                    );
                }
            }
        }
        let r = self
            .maintenance
            .gc_pass(ignore_grace)
            .await
            .map_err(maintenance_status)?;
        Ok(Response::new(pb::RunGcResponse {
            uploads_expired: r.uploads_expired,
            tasks_done: r.tasks_done,
            objects_deleted: r.objects_deleted,
            tasks_waiting: r.tasks_waiting,
            tasks_failed: r.tasks_failed,
        }))
    }

    pub async fn fsck(
        &self,
        _request: Request<pb::FsckRequest>,
    ) -> Result<Response<pb::FsckResponse>, Status> {
        self.must_lead().await?;
        let r = self.maintenance.fsck().await.map_err(maintenance_status)?;
        Ok(Response::new(pb::FsckResponse {
            live_blocks: r.live_blocks,
            objects_scanned: r.objects_scanned,
            problems: r
                .problems
                .into_iter()
                .map(|p| pb::FsckProblem {
                    kind: p.kind.to_string(),
                    key: p.key,
                    inode: p.inode,
                    expected_size: p.expected_size,
                    actual_size: p.actual_size,
                })
                .collect(),
        }))
    }

    pub async fn backup(
        &self,
        _request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        self.backup_inner().await.map(Response::new)
    }

    pub async fn check_blocks(
        &self,
        request: Request<pb::CheckBlocksRequest>,
    ) -> Result<Response<pb::CheckBlocksResponse>, Status> {
        self.check_blocks_inner(request.into_inner())
            .await
            .map(Response::new)
    }
}

/// The staged upload `id` if its lease has not ended at `now_ns`; else the
/// `NOT_FOUND` to answer with (before any store I/O).
fn live_upload(holt: &Holt, id: UploadId, now_ns: u64) -> Result<&StagedUpload, Status> {
    match holt.staged_upload(id) {
        None => Err(fs_error_status(&FsError::NotFound(format!(
            "{id} (never staged, already committed or reclaimed)"
        )))),
        Some(u) if u.lease_expires_ns < now_ns => Err(fs_error_status(&FsError::NotFound(
            format!("{id}: upload lease expired"),
        ))),
        Some(u) => Ok(u),
    }
}

/// Most blocks one `CheckBlocks` request may name.
pub const MAX_CHECK_BLOCKS: usize = 1024;

impl ClientService {
    /// Checks blocks of a staged upload ahead of its commit (see
    /// [`crate::verified`]). Only keys under the upload's own prefix are
    /// looked up, so this is no oracle for the rest of the store.
    async fn check_blocks_inner(
        &self,
        req: pb::CheckBlocksRequest,
    ) -> Result<pb::CheckBlocksResponse, Status> {
        if req.blocks.len() > MAX_CHECK_BLOCKS {
            return Err(fs_error_status(&FsError::InvalidArgument(format!(
                "{} blocks in one CheckBlocks request (at most {MAX_CHECK_BLOCKS})",
                req.blocks.len()
            ))));
        }
        self.check_leading()?;
        let upload = UploadId(req.upload);
        {
            let s = self.state.read().map_err(|_| Self::state_error())?;
            let staged = live_upload(&s.holt, upload, crate::maintenance::now_ns())?;
            let prefix = staged.key_prefix();
            if let Some(b) = req
                .blocks
                .iter()
                .find(|b| !b.key.starts_with(&prefix) || b.key.len() == prefix.len())
            {
                return Err(fs_error_status(&FsError::InvalidArgument(format!(
                    "{upload}: block key {:?} is not under the upload's prefix {prefix:?}",
                    b.key
                ))));
            }
        }
        let blocks = req.blocks.into_iter().map(Into::into).collect();
        match self.maintenance.check_blocks(blocks).await {
            Ok(Ok(looked_up)) => Ok(pb::CheckBlocksResponse {
                looked_up: looked_up as u32,
            }),
            Ok(Err(fs)) => Err(fs_error_status(&fs)),
            Err(e) => Err(maintenance_status(e)),
        }
    }

    async fn backup_inner(&self) -> Result<pb::BackupResponse, Status> {
        self.must_lead().await?;
        let Some(archive) = &self.archive else {
            return Err(maintenance_status(MaintenanceError::NoStore));
        };
        let report = archive
            .backup(&self.raft, BACKUP_TIMEOUT)
            .await
            .map_err(|e| archive_status(e, self.leader_hint()))?;
        tracing::info!(
            snapshot = report.snapshot_index,
            archived = report.archived_index,
            "backup complete"
        );
        Ok(pb::BackupResponse {
            snapshot_index: report.snapshot_index,
            archived_index: report.archived_index,
            snapshot_key: report.snapshot_key,
        })
    }

    async fn mutate_inner(&self, req: pb::MutateRequest) -> Result<pb::MutateResponse, Status> {
        let started = Instant::now();
        let mutation = Mutation::try_from(req).map_err(invalid)?;
        let mut command = Command {
            request_id: mutation.request_id,
            epoch: mutation.epoch,
            time_ns: now_ns(),
            op: mutation.op,
        };
        Holt::validate_command(&command).map_err(|e| fs_error_status(&e))?;
        self.wait_for_handover().await;
        self.check_leading()?;
        self.check_bodies(&command).await?;
        let single_commit = matches!(command.op, Op::CommitPublish { .. });
        self.index_plain_commits(&mut command).await?;
        self.metrics
            .stages
            .write_validate
            .observe(started.elapsed().as_secs_f64());
        self.commit(command, single_commit).await
    }

    /// Proposes `command` and waits for its outcome (bounded: a timeout is
    /// an unknown outcome, never a refusal). With `single_commit`, a plain
    /// commit proposed as an indexed batch of one is answered as asked.
    async fn commit(
        &self,
        command: Command,
        single_commit: bool,
    ) -> Result<pb::MutateResponse, Status> {
        let proposed = tokio::time::timeout(self.timeouts.write, self.proposer.propose(command));
        let proposed = tokio::select! {
            proposed = proposed => proposed,
            () = self.quorum_lost() => {
                return Err(unknown_outcome(
                    "this leader lost its quorum while the write was in flight (a new leader \
                     may still commit it)",
                    None,
                ))
            }
        };
        match proposed {
            Err(_) => Err(unknown_outcome(
                "timed out waiting for commit",
                self.leader_hint(),
            )),
            Ok(Err(ProposeError::Stopped)) => Err(status_from_detail(
                ErrorCode::Unavailable,
                "node is shutting down".into(),
            )),
            Ok(Err(e @ ProposeError::TooLarge { .. })) => Err(status_from_detail(
                ErrorCode::InvalidArgument,
                e.to_string(),
            )),
            Ok(Err(ProposeError::Unknown { reason, leader })) => Err(unknown_outcome(
                &reason,
                leader.or_else(|| self.leader_hint()),
            )),
            Ok(Ok((Ok(applied), index))) => {
                // A plain single commit was proposed as an indexed batch of
                // one: answer as the client asked.
                let applied = match applied {
                    Applied::Attrs(mut attrs) if single_commit && attrs.len() == 1 => {
                        Applied::Attr(attrs.remove(0))
                    }
                    other => other,
                };
                let mut response = mutate_response(applied, index);
                response.epoch = self.epoch()?;
                Ok(response)
            }
            Ok(Ok((Err(fs_err), _))) => {
                Err(fs_error_status_from_leader(&fs_err, self.leader_hint()))
            }
        }
    }

    /// Creates or revokes an access token (shard 0; the node checked the
    /// caller is an admin): `op` is `CreateToken` or `RevokeToken`.
    pub async fn change_tokens(&self, request_id: RequestId, op: Op) -> Result<(), Status> {
        let command = Command {
            request_id,
            epoch: None,
            time_ns: now_ns(),
            op,
        };
        Holt::validate_command(&command).map_err(|e| fs_error_status(&e))?;
        self.wait_for_handover().await;
        self.check_leading()?;
        self.commit(command, false).await.map(drop)
    }

    /// Every token (linearizable: the leader confirms it leads first).
    pub async fn list_tokens(&self) -> Result<Vec<nokv_holt::TokenInfo>, Status> {
        self.must_lead().await?;
        let s = self.state.read().map_err(|_| Self::state_error())?;
        Ok(s.holt.tokens())
    }

    /// The role of a token as this replica last applied the table (a
    /// revocation takes effect on each node as it applies it).
    pub(crate) fn token_role(
        &self,
        id: u64,
        secret_sha256: &[u8; 32],
    ) -> Result<Option<nokv_holt::Role>, Status> {
        let s = self.state.read().map_err(|_| Self::state_error())?;
        Ok(s.holt.token_role(id, secret_sha256))
    }

    /// Publishing needs an object store, and a commit may only name blocks
    /// that were uploaded with the declared sizes (checked by the leader
    /// before proposing: apply does no I/O).
    ///
    /// A retry of a command already applied skips the checks: the log
    /// answers it with the remembered outcome, whatever the store holds now.
    async fn check_bodies(&self, command: &Command) -> Result<(), Status> {
        let commits: Vec<(UploadId, &BodySpec)> = match &command.op {
            Op::BeginPublish { .. } => Vec::new(),
            Op::CommitPublish { upload, body } => vec![(*upload, body)],
            Op::CommitPublishBatch { commits } => commits.iter().map(|(u, b)| (*u, b)).collect(),
            Op::CommitPublishIndexed { commits } => {
                commits.iter().map(|c| (c.upload, &c.body)).collect()
            }
            _ => return Ok(()),
        };
        // Only blocks under each upload's own prefix are looked up: a
        // commit may also keep leading blocks of the body it replaces (an
        // append), which are live, and which apply checks against it.
        let mut specs: Vec<BodySpec> = Vec::with_capacity(commits.len());
        {
            let s = self.state.read().map_err(|_| Self::state_error())?;
            if s.holt.remembered(command.request_id).is_some() {
                return Ok(());
            }
            // A missing or expired upload is answered before any store I/O,
            // so a late commit hears "lease expired", not "block missing".
            for (upload, body) in &commits {
                let prefix = live_upload(&s.holt, *upload, command.time_ns)?.key_prefix();
                let mut own = (*body).clone();
                own.blocks.retain(|block| block.key.starts_with(&prefix));
                specs.push(own);
            }
        }
        let specs: Vec<&BodySpec> = specs.iter().collect();
        match self.maintenance.verify_blocks(&specs).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(fs)) => Err(fs_error_status(&fs)),
            Err(e) => Err(maintenance_status(e)),
        }
    }

    /// A commit that came without fields (`CommitPublish`,
    /// `CommitPublishBatch`: a raw SDK commit, an older client) is
    /// proposed as `CommitPublishIndexed` with the fields the SDK would
    /// have sent: extracted here from its attributes and, for a small
    /// structured body, from its bytes (read back from the store), so that
    /// every body the cluster publishes is indexed. A retry of a command
    /// already applied is left alone (the log answers it).
    async fn index_plain_commits(&self, command: &mut Command) -> Result<(), Status> {
        let commits: Vec<(UploadId, BodySpec)> = match &command.op {
            Op::CommitPublish { upload, body } => vec![(*upload, body.clone())],
            Op::CommitPublishBatch { commits } => commits.clone(),
            _ => return Ok(()),
        };
        let names: Vec<String> = {
            let s = self.state.read().map_err(|_| Self::state_error())?;
            if s.holt.remembered(command.request_id).is_some() {
                return Ok(());
            }
            commits
                .iter()
                .map(|(upload, _)| {
                    live_upload(&s.holt, *upload, command.time_ns).map(|staged| staged.name.clone())
                })
                .collect::<Result<_, Status>>()?
        };
        let mut indexed = Vec::with_capacity(commits.len());
        for ((upload, body), name) in commits.into_iter().zip(names) {
            let content = if nokv_fields::wants_content(&name, &body.content_type, body.size) {
                match self.maintenance.read_small_body(&body).await {
                    Ok(bytes) => Some(bytes),
                    Err(e) => return Err(maintenance_status(e)),
                }
            } else {
                None
            };
            let fields = nokv_fields::to_field_set(&nokv_fields::extract(
                &name,
                &body.content_type,
                &body.attrs,
                content.as_deref(),
            ));
            indexed.push(IndexedCommit {
                upload,
                body,
                fields,
            });
        }
        command.op = Op::CommitPublishIndexed { commits: indexed };
        Ok(())
    }

    /// Holds new writes until the returned guard is dropped.
    pub(crate) fn hold_writes(&self) -> WriteHold<'_> {
        self.handover.send_replace(true);
        WriteHold(&self.handover)
    }

    /// Waits (bounded) while a leadership transfer holds writes; the write
    /// then finds the new leader through the usual NOT_LEADER hint.
    async fn wait_for_handover(&self) {
        if !*self.handover.borrow() {
            return;
        }
        let mut held = self.handover.subscribe();
        let _ = tokio::time::timeout(HANDOVER_WAIT, held.wait_for(|h| !*h)).await;
    }

    /// Confirms leadership (read-index) before leader-only admin work.
    pub(crate) async fn must_lead(&self) -> Result<(), Status> {
        if !self.is_leader() {
            return Err(not_leader_status(self.leader_hint()));
        }
        match tokio::time::timeout(self.timeouts.read_index, self.read_index.confirm()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ReadIndexError::NotLeader)) => Err(not_leader_status(self.leader_hint())),
            Ok(Err(e)) => Err(status_from_detail(ErrorCode::Unavailable, e.to_string())),
            Err(_) => Err(status_from_detail(
                ErrorCode::Unavailable,
                "timed out confirming leadership".into(),
            )),
        }
    }

    /// Confirms, for the linearizable reads that arrived so far, that this
    /// replica still leads (a lease, else a quorum round).
    async fn confirm_read(&self) -> Result<(), Status> {
        if let Some(peers) = self.follower_reads.as_ref() {
            if !self.is_leader() {
                return self.confirm_through_leader(peers).await;
            }
        }
        self.check_leading()?;
        let _timer = self.metrics.stages.read_index.start_timer();
        let confirmed = tokio::time::timeout(self.timeouts.read_index, self.read_index.confirm());
        match confirmed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ReadIndexError::NotLeader)) => Err(not_leader_status(self.leader_hint())),
            Ok(Err(e)) => Err(status_from_detail(ErrorCode::Unavailable, e.to_string())),
            Err(_) => Err(status_from_detail(
                ErrorCode::Unavailable,
                "timed out confirming leadership for a linearizable read".into(),
            )),
        }
    }

    /// A follower's confirmation: the leader confirms that it leads (by a
    /// confirmation that starts after the reads arrived here) and names the
    /// read index; this replica's state is linearizable for them once it
    /// has applied that far.
    async fn confirm_through_leader(&self, peers: &crate::network::PeerPool) -> Result<(), Status> {
        let _timer = self.metrics.stages.read_index.start_timer();
        let Some((leader, addr)) = self.leader_hint().filter(|(_, addr)| !addr.is_empty()) else {
            return Err(status_from_detail(
                ErrorCode::Unavailable,
                "this follower knows no leader to ask for a read index".into(),
            ));
        };
        let answer = peers
            .read_index(&addr, self.shard.0, self.timeouts.read_index)
            .await
            .map_err(|why| {
                status_from_detail(
                    ErrorCode::Unavailable,
                    format!("asking leader {leader} for a read index: {why}"),
                )
            })?;
        let index = match answer {
            ReadIndexAnswer::Index(index) => index,
            ReadIndexAnswer::NotLeader(hint) => {
                return Err(not_leader_status(hint.or_else(|| self.leader_hint())))
            }
            ReadIndexAnswer::Unavailable(why) => {
                return Err(status_from_detail(ErrorCode::Unavailable, why))
            }
        };
        crate::read_index::wait_applied(&self.raft, index)
            .await
            .map_err(|e| status_from_detail(ErrorCode::Unavailable, e.to_string()))?;
        self.metrics
            .read_confirmations_total
            .with_label_values(&["leader"])
            .inc();
        Ok(())
    }

    /// Answers `read` from this replica's applied state.
    fn execute(&self, read: &Read) -> Result<pb::QueryResponse, Status> {
        let s = self.state.read().map_err(|_| Self::state_error())?;
        let index = s.holt.last_applied();
        // The clock only refuses snapshot pins whose lease has run out
        // before the leader's worker releases them.
        match s.holt.query_at(&read.query, crate::maintenance::now_ns()) {
            Ok(result) => Ok(query_response(result, index)),
            Err(e) => Err(fs_error_status(&e)),
        }
    }
}
