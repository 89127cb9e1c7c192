//! NoKV's wire protocol: the `.proto` contract, the tonic/prost code
//! generated from it, and the conversions between wire messages and Holt
//! domain types.
//!
//! One crate owns the wire format: servers and clients both speak it through
//! here, and conversions happen only at this seam ([`convert`]). Errors are
//! gRPC statuses carrying an [`pb::ErrorDetail`] ([`error`]).
//!
//! Must not depend on: meta-node, client, openraft, sled, or any server
//! crate. Depends on `holt` only for its plain domain types.

pub mod auth;
pub mod codec;
pub mod convert;
pub mod error;

/// Generated messages and service stubs for package `nokv.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("nokv.v1");
}

pub use convert::{Mutation, Read, ReadConsistency, WireError};
pub use error::{
    call_error, cross_shard_of, detail_of, fs_error_status, fs_error_status_from_leader,
    not_leader_status, status_from_detail, status_of_call_error, status_with_detail, ErrorCode,
};

/// Largest client request or response a node accepts (bytes).
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024 * 1024;
/// Most requests one `MutateBatch` or `QueryBatch` call may carry.
pub const MAX_BATCH_CALLS: usize = 1024;
/// Largest Raft message between nodes (bytes); snapshot chunks stay below it.
pub const MAX_RAFT_MESSAGE: usize = 64 * 1024 * 1024;
