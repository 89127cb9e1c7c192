//! The shard replicas of one node, and the node's gRPC services that hand
//! every request to the replica of the shard it names.
//!
//! One listener serves `MetaService` and `RaftService` for every shard: each
//! request and each Raft message carries a shard id (0, the root shard,
//! when absent), and a shard this node hosts no replica of is answered with
//! `UNKNOWN_SHARD`, so a client with an out-of-date shard map refreshes it.
//!
//! # Invariants
//! - At most one replica per shard runs on a node ([`ShardHost::host`] is
//!   serialised by the host's start lock).
//! - A replica is registered only after it started, so a request never sees
//!   a half-built replica.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use nokv_holt::ShardId;
use nokv_proto::pb::meta_service_server::MetaService;
use nokv_proto::pb::raft_service_server::RaftService;
use nokv_proto::pb::{self, RaftMessage};
use nokv_proto::{status_from_detail, ErrorCode};
use tonic::{Request, Response, Status};

use crate::auth::{required_role, Call};
use crate::node::NodeError;
use crate::replica::{NodeContext, ShardReplica};

/// The replicas a node runs, by shard.
pub struct ShardHost {
    ctx: NodeContext,
    replicas: RwLock<BTreeMap<ShardId, Arc<ShardReplica>>>,
    /// Serialises starts and stops, so two requests cannot start one shard twice.
    changing: tokio::sync::Mutex<()>,
    /// For replicas started by `HostShard`: the newest shard map revision
    /// that placed them here (see [`ShardHost::placed_after`]).
    placed: std::sync::Mutex<BTreeMap<ShardId, u64>>,
}

impl ShardHost {
    pub fn new(ctx: NodeContext) -> ShardHost {
        ShardHost {
            ctx,
            replicas: RwLock::default(),
            changing: tokio::sync::Mutex::new(()),
            placed: std::sync::Mutex::default(),
        }
    }

    /// The running replica of `shard`, if this node hosts one.
    pub fn get(&self, shard: ShardId) -> Option<Arc<ShardReplica>> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
            .cloned()
    }

    /// Every running replica, by shard id.
    pub fn all(&self) -> Vec<Arc<ShardReplica>> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Starts a replica of `shard` unless one runs; true if it started one.
    pub async fn host(&self, shard: ShardId) -> Result<bool, NodeError> {
        let _changing = self.changing.lock().await;
        if self.get(shard).is_some() {
            return Ok(false);
        }
        let replica = Arc::new(ShardReplica::start(&self.ctx, shard).await?);
        self.replicas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard, replica);
        Ok(true)
    }

    /// Records that the shard map places a replica of `shard` here since
    /// `revision` (0: unknown, nothing recorded).
    pub fn note_placed(&self, shard: ShardId, revision: u64) {
        if revision > 0 {
            let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
            let at = placed.entry(shard).or_default();
            *at = (*at).max(revision);
        }
    }

    /// Whether a map of `revision` predates the placement of this node's
    /// replica of `shard`: such a map cannot tell that the replica should
    /// stop. The control loop can read an older map after `HostShard` (its
    /// watch lags the creation that placed the replica); stopping then made
    /// the replica vanish for a moment and a shard creation fail with
    /// UNKNOWN_SHARD.
    pub fn placed_after(&self, shard: ShardId, revision: u64) -> bool {
        self.placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
            .is_some_and(|at| *at > revision)
    }

    /// Stops the replica of `shard`, if one runs; its data stays on disk.
    /// True if it stopped one.
    pub async fn unhost(&self, shard: ShardId) -> bool {
        let _changing = self.changing.lock().await;
        self.placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shard);
        let removed = self
            .replicas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shard);
        match removed {
            Some(r) => {
                r.stop().await;
                true
            }
            None => false,
        }
    }

    /// Stops every replica (at shutdown).
    pub async fn stop_all(&self) {
        let _changing = self.changing.lock().await;
        let replicas: Vec<Arc<ShardReplica>> =
            std::mem::take(&mut *self.replicas.write().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .collect();
        for r in replicas {
            r.stop().await;
        }
    }

    /// Prometheus text of every replica's metrics, one family per name.
    pub fn render_metrics(&self) -> Vec<u8> {
        crate::metrics::render_all(self.all().iter().map(|r| &r.metrics.registry))
    }

    fn replica(&self, shard: u32) -> Result<Arc<ShardReplica>, Status> {
        let id =
            u16::try_from(shard).map_err(|_| unknown_shard(shard, "shard ids are below 65536"))?;
        self.get(ShardId(id))
            .ok_or_else(|| unknown_shard(shard, "this node hosts no replica of it"))
    }
}

/// The SHA-256 of a token's secret, as a request carries it.
fn sha256_field(bytes: &[u8]) -> Result<[u8; 32], Status> {
    bytes.try_into().map_err(|_| {
        status_from_detail(
            ErrorCode::InvalidArgument,
            format!("secret_sha256 has {} bytes, a SHA-256 has 32", bytes.len()),
        )
    })
}

/// A request id of 16 bytes, as the client chose it.
fn request_id(bytes: &[u8]) -> Result<nokv_holt::RequestId, Status> {
    nokv_proto::convert::request_id_from_bytes(bytes)
        .map_err(|e| status_from_detail(ErrorCode::InvalidArgument, e.to_string()))
}

fn no_control_plane() -> Status {
    status_from_detail(
        ErrorCode::Unavailable,
        "this node follows no control plane: start it with --etcd (or use `nokv dev`) to \
         create shards or change membership"
            .into(),
    )
}

/// A batched call carries at least one request and at most
/// [`nokv_proto::MAX_BATCH_CALLS`].
fn check_batch_len(count: usize) -> Result<(), Status> {
    if count == 0 || count > nokv_proto::MAX_BATCH_CALLS {
        return Err(status_from_detail(
            ErrorCode::InvalidArgument,
            format!(
                "a batch carries 1 to {} requests, not {count}",
                nokv_proto::MAX_BATCH_CALLS
            ),
        ));
    }
    Ok(())
}

fn unknown_shard(shard: u32, why: &str) -> Status {
    status_from_detail(
        ErrorCode::UnknownShard,
        format!("unknown shard {shard}: {why}"),
    )
}

/// `MetaService` of a node: dispatches by the request's shard.
#[derive(Clone)]
pub struct NodeService {
    pub host: Arc<ShardHost>,
    /// The shard map from the control plane, when the node follows one.
    pub maps: Option<crate::control::MapView>,
    /// Shard creation and removal, when the node follows a control plane.
    pub admin: Option<Arc<dyn crate::control::ShardAdmin>>,
    /// This node's cluster name.
    pub cluster: String,
    /// One permit per watch stream this node may serve (all shards).
    pub watch_streams: Arc<tokio::sync::Semaphore>,
    /// Token checks (`--require-auth`); `None`: every caller is trusted.
    pub(crate) auth: Option<Arc<crate::auth::Auth>>,
}

fn admin_status(e: crate::control::AdminError) -> Status {
    let code = match e.code.as_str() {
        "UNAVAILABLE" | "CONTROL_PLANE_UNAVAILABLE" => tonic::Code::Unavailable,
        "INVALID_ARGUMENT" => tonic::Code::InvalidArgument,
        _ if e.errno != 0 => tonic::Code::FailedPrecondition,
        _ => tonic::Code::Aborted,
    };
    nokv_proto::status_with_detail(
        code,
        pb::ErrorDetail {
            code: e.code,
            message: e.message,
            errno: e.errno,
            ..Default::default()
        },
    )
}

impl NodeService {
    /// `STALE_MAP` if the request was routed (`map_revision` non-zero) by a
    /// map older than the last change to `shard`'s routing this node knows.
    fn check_routed(&self, shard: u32, map_revision: u64) -> Result<(), Status> {
        if map_revision == 0 {
            return Ok(());
        }
        let (Some(maps), Ok(id)) = (&self.maps, u16::try_from(shard)) else {
            return Ok(());
        };
        let Some(seen) = maps.borrow().clone() else {
            return Ok(());
        };
        match seen.routed_since(id) {
            Some(since) if since.0 > map_revision => Err(nokv_proto::status_with_detail(
                ErrorCode::StaleMap.grpc_code(),
                pb::ErrorDetail {
                    code: ErrorCode::StaleMap.as_str().into(),
                    message: format!(
                        "routed by shard map revision {map_revision}, but shard {id}'s routing \
                         changed at revision {since}; refresh the map (this node has revision \
                         {}) and route again",
                        seen.map.revision
                    ),
                    map_revision: seen.map.revision.0,
                    ..Default::default()
                },
            )),
            _ => Ok(()),
        }
    }

    /// Whether the newest map this node has seen marks `shard` as being removed.
    fn removing(&self, shard: u32) -> bool {
        let Some(maps) = &self.maps else {
            return false;
        };
        let Ok(id) = u16::try_from(shard) else {
            return false;
        };
        maps.borrow().as_ref().is_some_and(|m| {
            m.map
                .shards
                .get(&nokv_router::ShardId(id))
                .is_some_and(|s| s.state == nokv_router::ShardState::Removing)
        })
    }
}

impl NodeService {
    /// Refuses the call unless its token covers it (with auth on).
    async fn authorize<T>(&self, request: &Request<T>, call: Call<'_>) -> Result<(), Status> {
        match &self.auth {
            Some(auth) => auth.check(request.metadata(), required_role(call)).await,
            None => Ok(()),
        }
    }

    /// Refuses the call unless its token holds at least `role` (with auth
    /// on).
    async fn authorize_role<T>(
        &self,
        request: &Request<T>,
        role: nokv_holt::Role,
    ) -> Result<(), Status> {
        match &self.auth {
            Some(auth) => auth.check(request.metadata(), role).await,
            None => Ok(()),
        }
    }

    /// One write, authorized already: the body of `Mutate`, and of each
    /// request of a `MutateBatch`.
    async fn mutate_one(&self, request: pb::MutateRequest) -> Result<pb::MutateResponse, Status> {
        let r = self.host.replica(request.shard)?;
        self.check_routed(request.shard, request.map_revision)?;
        // A shard being removed takes no more writes (the remover's barrier,
        // an abort of a staged upload, still passes): see `nokv_client::admin`.
        let aborting = matches!(request.op, Some(pb::mutate_request::Op::AbortPublish(_)));
        if !aborting && self.removing(request.shard) {
            return Err(unknown_shard(
                request.shard,
                "it is being removed and takes no more writes",
            ));
        }
        r.client.mutate(request).await
    }

    fn watch_streams_limit(&self) -> usize {
        self.host.ctx.config.max_watch_streams
    }
}

#[tonic::async_trait]
impl MetaService for NodeService {
    type WatchStream = crate::watch::WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.authorize(&request, Call::Read).await?;
        let r = self.host.replica(request.get_ref().shard)?;
        self.check_routed(request.get_ref().shard, request.get_ref().map_revision)?;
        let permit = self
            .watch_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                nokv_proto::status_from_detail(
                    nokv_proto::ErrorCode::Unavailable,
                    format!(
                        "this node serves {} watch streams, its limit (--max-watch-streams): \
                     watch through another replica or later",
                        self.watch_streams_limit()
                    ),
                )
            })?;
        // A token revoked while the stream runs ends it.
        let allowed = self.auth.clone().map(|auth| {
            let metadata = request.metadata().clone();
            let need = required_role(Call::Read);
            Box::new(move || {
                let (auth, metadata) = (auth.clone(), metadata.clone());
                Box::pin(async move { auth.check(&metadata, need).await })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
            }) as crate::watch::StillAllowed
        });
        r.client.watch(request, permit, allowed).await
    }

    async fn mutate(
        &self,
        request: Request<pb::MutateRequest>,
    ) -> Result<Response<pb::MutateResponse>, Status> {
        self.authorize(&request, Call::Mutate(request.get_ref().op.as_ref()))
            .await?;
        self.mutate_one(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        self.authorize(&request, Call::Read).await?;
        let r = self.host.replica(request.get_ref().shard)?;
        self.check_routed(request.get_ref().shard, request.get_ref().map_revision)?;
        r.client.query(request).await
    }

    async fn mutate_batch(
        &self,
        request: Request<pb::MutateBatchRequest>,
    ) -> Result<Response<pb::MutateBatchResponse>, Status> {
        let requests = &request.get_ref().requests;
        check_batch_len(requests.len())?;
        // The token must cover the most demanding write of the batch.
        let need = requests
            .iter()
            .map(|r| required_role(Call::Mutate(r.op.as_ref())))
            .max()
            .unwrap_or(nokv_holt::Role::Write);
        self.authorize_role(&request, need).await?;
        let requests = request.into_inner().requests;
        // All at once: the proposer gathers those that reach it together
        // into one log entry.
        let outcomes = futures::future::join_all(requests.into_iter().map(|r| self.mutate_one(r)))
            .await
            .into_iter()
            .map(|result| pb::MutateOutcome {
                outcome: Some(match result {
                    Ok(response) => pb::mutate_outcome::Outcome::Ok(response),
                    Err(status) => {
                        pb::mutate_outcome::Outcome::Error(nokv_proto::call_error(&status))
                    }
                }),
            })
            .collect();
        Ok(Response::new(pb::MutateBatchResponse { outcomes }))
    }

    async fn query_batch(
        &self,
        request: Request<pb::QueryBatchRequest>,
    ) -> Result<Response<pb::QueryBatchResponse>, Status> {
        check_batch_len(request.get_ref().requests.len())?;
        self.authorize(&request, Call::Read).await?;
        let requests = request.into_inner().requests;
        let count = requests.len();
        let mut results: Vec<Option<Result<pb::QueryResponse, Status>>> = vec![None; count];
        // Each shard's reads go to its replica together (one leadership
        // confirmation for its linearizable ones).
        let mut by_shard: BTreeMap<u32, (Arc<ShardReplica>, Vec<(usize, pb::QueryRequest)>)> =
            BTreeMap::new();
        for (i, r) in requests.into_iter().enumerate() {
            let routed = self
                .host
                .replica(r.shard)
                .and_then(|replica| self.check_routed(r.shard, r.map_revision).map(|()| replica));
            match routed {
                Ok(replica) => by_shard
                    .entry(r.shard)
                    .or_insert_with(|| (replica, Vec::new()))
                    .1
                    .push((i, r)),
                Err(status) => results[i] = Some(Err(status)),
            }
        }
        let answered =
            futures::future::join_all(by_shard.into_values().map(|(replica, items)| async move {
                let (at, requests): (Vec<usize>, Vec<_>) = items.into_iter().unzip();
                let answers = replica.client.query_many(requests).await;
                at.into_iter().zip(answers).collect::<Vec<_>>()
            }))
            .await;
        for (i, answer) in answered.into_iter().flatten() {
            results[i] = Some(answer);
        }
        let outcomes = results
            .into_iter()
            .map(|result| pb::QueryOutcome {
                outcome: Some(match result {
                    Some(Ok(response)) => pb::query_outcome::Outcome::Ok(response),
                    Some(Err(status)) => {
                        pb::query_outcome::Outcome::Error(nokv_proto::call_error(&status))
                    }
                    None => pb::query_outcome::Outcome::Error(nokv_proto::call_error(
                        &status_from_detail(ErrorCode::Internal, "no answer was made".into()),
                    )),
                }),
            })
            .collect();
        Ok(Response::new(pb::QueryBatchResponse { outcomes }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.authorize(&request, Call::Read).await?;
        let r = self.host.replica(request.get_ref().shard)?;
        r.client.status(request).await
    }

    async fn init_cluster(
        &self,
        request: Request<pb::InitClusterRequest>,
    ) -> Result<Response<pb::InitClusterResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let r = self.host.replica(request.get_ref().shard)?;
        r.client.init_cluster(request).await
    }

    async fn run_gc(
        &self,
        request: Request<pb::RunGcRequest>,
    ) -> Result<Response<pb::RunGcResponse>, Status> {
        self.authorize(
            &request,
            Call::Gc {
                ignore_grace: request.get_ref().ignore_grace,
            },
        )
        .await?;
        let r = self.host.replica(request.get_ref().shard)?;
        r.client.run_gc(request).await
    }

    async fn fsck(
        &self,
        request: Request<pb::FsckRequest>,
    ) -> Result<Response<pb::FsckResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let r = self.host.replica(request.get_ref().shard)?;
        r.client.fsck(request).await
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let r = self.host.replica(request.get_ref().shard)?;
        r.client.backup(request).await
    }

    async fn check_blocks(
        &self,
        request: Request<pb::CheckBlocksRequest>,
    ) -> Result<Response<pb::CheckBlocksResponse>, Status> {
        self.authorize(&request, Call::Write).await?;
        let r = self.host.replica(request.get_ref().shard)?;
        r.client.check_blocks(request).await
    }

    async fn host_shard(
        &self,
        request: Request<pb::HostShardRequest>,
    ) -> Result<Response<pb::HostShardResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let r = request.into_inner();
        let shard = r.shard;
        let id =
            u16::try_from(shard).map_err(|_| unknown_shard(shard, "shard ids are below 65536"))?;
        self.host.note_placed(ShardId(id), r.map_revision);
        match self.host.host(ShardId(id)).await {
            Ok(created) => Ok(Response::new(pb::HostShardResponse { created })),
            Err(e) => {
                tracing::error!(shard, error = %e, "could not start a shard replica");
                Err(status_from_detail(ErrorCode::Internal, e.to_string()))
            }
        }
    }

    async fn create_shard(
        &self,
        request: Request<pb::CreateShardRequest>,
    ) -> Result<Response<pb::CreateShardResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let admin = self.admin.as_ref().ok_or_else(no_control_plane)?;
        let r = request.into_inner();
        admin
            .create_shard(r.path, r.members)
            .await
            .map(Response::new)
            .map_err(admin_status)
    }

    async fn remove_shard(
        &self,
        request: Request<pb::RemoveShardRequest>,
    ) -> Result<Response<pb::RemoveShardResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let admin = self.admin.as_ref().ok_or_else(no_control_plane)?;
        admin
            .remove_shard(request.into_inner().path)
            .await
            .map(|()| Response::new(pb::RemoveShardResponse {}))
            .map_err(admin_status)
    }

    async fn change_voters(
        &self,
        request: Request<pb::ChangeVotersRequest>,
    ) -> Result<Response<pb::ChangeVotersResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let r = self.host.replica(request.get_ref().shard)?;
        r.client
            .change_voters(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let r = self.host.replica(request.get_ref().shard)?;
        r.client
            .transfer_leader(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let r = self.host.replica(request.get_ref().shard)?;
        r.client.campaign().await.map(Response::new)
    }

    async fn membership(
        &self,
        request: Request<pb::MembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let admin = self.admin.as_ref().ok_or_else(no_control_plane)?;
        admin
            .membership(request.into_inner())
            .await
            .map(Response::new)
            .map_err(admin_status)
    }

    async fn get_shard_map(
        &self,
        request: Request<pb::GetShardMapRequest>,
    ) -> Result<Response<pb::GetShardMapResponse>, Status> {
        self.authorize(&request, Call::Read).await?;
        let seen = self.maps.as_ref().and_then(|m| m.borrow().clone());
        Ok(Response::new(match seen {
            Some(seen) => pb::GetShardMapResponse {
                revision: seen.map.revision.0,
                map: nokv_router::schema::encode_map(&seen.map),
            },
            None => pb::GetShardMapResponse::default(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let r = request.into_inner();
        let root = self.host.replica(0)?;
        let secret_sha256 = sha256_field(&r.secret_sha256)?;
        let role: nokv_holt::Role = r
            .role
            .parse()
            .map_err(|e: String| status_from_detail(ErrorCode::InvalidArgument, e))?;
        let op = nokv_holt::Op::CreateToken {
            id: r.id,
            secret_sha256,
            role,
            label: r.label,
        };
        root.client
            .change_tokens(request_id(&r.request_id)?, op)
            .await?;
        tracing::info!(id = %format!("{:016x}", r.id), %role, "token created");
        Ok(Response::new(pb::CreateTokenResponse {}))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let r = request.into_inner();
        let root = self.host.replica(0)?;
        root.client
            .change_tokens(
                request_id(&r.request_id)?,
                nokv_holt::Op::RevokeToken { id: r.id },
            )
            .await?;
        tracing::info!(id = %format!("{:016x}", r.id), "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let root = self.host.replica(0)?;
        let tokens = root.client.list_tokens().await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens
                .into_iter()
                .map(|t| pb::TokenInfo {
                    id: t.id,
                    role: t.role.to_string(),
                    label: t.label,
                    created_ns: t.created_ns,
                })
                .collect(),
        }))
    }

    async fn lookup_token(
        &self,
        request: Request<pb::LookupTokenRequest>,
    ) -> Result<Response<pb::LookupTokenResponse>, Status> {
        self.authorize(&request, Call::Admin).await?;
        let r = request.into_inner();
        let secret_sha256 = sha256_field(&r.secret_sha256)?;
        let role = self
            .host
            .replica(0)?
            .client
            .token_role(r.id, &secret_sha256)?;
        Ok(Response::new(pb::LookupTokenResponse {
            role: role.map(|r| r.to_string()).unwrap_or_default(),
        }))
    }

    async fn node_status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        self.authorize(&request, Call::Read).await?;
        let stages = request.get_ref().stages;
        let mut shards = Vec::new();
        for r in self.host.all() {
            let status = r
                .client
                .status(Request::new(pb::StatusRequest {
                    shard: u32::from(r.shard.0),
                    stages,
                }))
                .await?;
            shards.push(status.into_inner());
        }
        Ok(Response::new(pb::NodeStatusResponse {
            node_id: self.host.ctx.config.node_id,
            addr: self.host.ctx.config.advertise.clone(),
            shards,
        }))
    }
}

/// `RaftService` of a node: dispatches each message to its shard's Raft.
#[derive(Clone)]
pub struct NodeRaftService {
    pub host: Arc<ShardHost>,
    /// This node's cluster: a message naming another is refused.
    pub cluster: String,
    /// With TLS on, only a peer that presented a certificate of the
    /// cluster CA (verified in the handshake) may send Raft messages.
    pub tls: bool,
}

impl NodeRaftService {
    /// Who may send Raft messages: a member of this cluster. Checked before
    /// the message is decoded, so nothing of a stranger's reaches Raft.
    fn admit(&self, request: &Request<RaftMessage>) -> Result<Arc<ShardReplica>, Status> {
        if self.tls && request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(nokv_proto::status_from_detail(
                nokv_proto::ErrorCode::Unauthenticated,
                "Raft messages are accepted only from members of this cluster: connect with a \
                 certificate signed by the cluster CA"
                    .into(),
            ));
        }
        let named = &request.get_ref().cluster;
        if *named != self.cluster {
            return Err(nokv_proto::status_from_detail(
                nokv_proto::ErrorCode::PermissionDenied,
                format!(
                    "a Raft message of cluster {named:?} reached a node of cluster {:?}",
                    self.cluster
                ),
            ));
        }
        self.host.replica(request.get_ref().shard)
    }
}

#[tonic::async_trait]
impl RaftService for NodeRaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?
            .raft_server
            .append_entries(request)
            .await
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?.raft_server.vote(request).await
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?
            .raft_server
            .install_snapshot(request)
            .await
    }

    async fn read_index(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?.raft_server.read_index(request).await
    }
}
