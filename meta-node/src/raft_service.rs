//! The Raft transport, server side: decodes openraft messages from peers and
//! hands them to the local `Raft`. Undecodable messages get
//! `INVALID_ARGUMENT`; nothing a peer sends can panic the node.

use std::sync::Arc;

use nokv_proto::pb::raft_service_server::RaftService;
use nokv_proto::pb::RaftMessage;
use nokv_proto::{status_from_detail, ErrorCode};
use openraft::raft::VoteRequest;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use crate::election::Elections;
use crate::raft_wire;
use crate::typ::{NodeId, Raft};

/// Serves `RaftService` for one local Raft instance.
pub struct RaftServer {
    raft: Raft,
    elections: Arc<Elections>,
}

impl RaftServer {
    pub fn new(raft: Raft, elections: Arc<Elections>) -> RaftServer {
        RaftServer { raft, elections }
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
        let rpc = decode_request(request)?;
        self.elections.heard_from_leader();
        encode_response(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = decode_request(request)?;
        let response = self.raft.vote(rpc.clone()).await;
        if let Ok(answer) = &response {
            self.elections.after_refusing(&rpc, answer);
        }
        encode_response(&response)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_request(request)?;
        encode_response(&self.raft.install_snapshot(rpc).await)
    }
}
