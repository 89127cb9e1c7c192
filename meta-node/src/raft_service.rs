//! The Raft transport, server side: decodes openraft messages from peers and
//! hands them to the local `Raft`. Undecodable messages get
//! `INVALID_ARGUMENT`; nothing a peer sends can panic the node.

use std::sync::Arc;

use nokv_proto::pb::raft_service_server::RaftService;
use nokv_proto::pb::RaftMessage;
use nokv_proto::{status_from_detail, ErrorCode};
use openraft::raft::{AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use crate::election::Elections;
use crate::raft_wire;
use crate::read_index::ReadIndex;
use crate::typ::{NodeId, Raft, TypeConfig};

/// Serves `RaftService` for one local Raft instance.
pub struct RaftServer {
    raft: Raft,
    elections: Arc<Elections>,
    /// Handling of AppendEntries that carry entries (the flush included).
    append_seconds: prometheus::Histogram,
    /// Confirms leadership for followers' linearizable reads.
    read_index: ReadIndex,
}

impl RaftServer {
    pub fn new(
        raft: Raft,
        elections: Arc<Elections>,
        append_seconds: prometheus::Histogram,
        read_index: ReadIndex,
    ) -> RaftServer {
        RaftServer {
            raft,
            elections,
            append_seconds,
            read_index,
        }
    }
}

fn decode_request<T: DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    raft_wire::decode(&req.into_inner().data)
        .map_err(|e| status_from_detail(ErrorCode::InvalidArgument, e.to_string()))
}

fn encode_response<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    raft_wire::encode(value)
        .map(|data| {
            Response::new(RaftMessage {
                data,
                ..Default::default()
            })
        })
        .map_err(|e| status_from_detail(ErrorCode::Internal, e.to_string()))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = decode_request(request)?;
        let _timer = (!rpc.entries.is_empty()).then(|| self.append_seconds.start_timer());
        let response = self.raft.append_entries(rpc).await;
        if matches!(
            response,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.elections.heard_from_leader();
        }
        encode_response(&response)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = decode_request(request)?;
        let response = self.raft.vote(rpc.clone()).await;
        if let Ok(answer) = &response {
            self.elections.after_refusing(&rpc, answer);
        }
        encode_response(&response)
    }

    async fn read_index(
        &self,
        _request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        encode_response(&self.read_index.answer().await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request(request)?;
        let vote = rpc.vote;
        let last = rpc.done;
        let response = self.raft.install_snapshot(rpc).await;
        // Accepted when we now hold the sender's vote (a refusal answers
        // with our newer one).
        if matches!(&response, Ok(r) if r.vote == vote) {
            self.elections.snapshot_chunk_accepted(last);
        }
        encode_response(&response)
    }
}
