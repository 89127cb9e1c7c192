//! Raft wire decoding (`meta-node/src/raft_wire.rs`): the bytes are a
//! `RaftMessage.data` as a peer sends it, decoded as each request a node
//! serves (`raft_service.rs`) and each response it reads back
//! (`network.rs`). Whatever decodes must encode and decode again to the
//! same bytes. Nothing may panic or allocate beyond the message's bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_meta_node::raft_wire;
use nokv_meta_node::typ::{NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use nokv_fuzz::sample::raft_message_seeds;
use nokv_fuzz::write_seeds_and_exit_if_asked;

/// Decodes `data` as `T`; if it decodes, its encoding must decode to a
/// value that encodes to the same bytes.
fn check<T: DeserializeOwned + Serialize>(data: &[u8]) {
    let Ok(value) = raft_wire::decode::<T>(data) else {
        return;
    };
    let bytes = raft_wire::encode(&value).expect("a decoded message encodes");
    let again: T = raft_wire::decode(&bytes).expect("a message we encoded decodes");
    let bytes2 = raft_wire::encode(&again).expect("encodes again");
    assert!(bytes == bytes2, "the raft wire round trip is not stable");
}

type Answer<T, E = openraft::error::Infallible> = Result<T, RaftError<NodeId, E>>;

fuzz_target!(
    init: write_seeds_and_exit_if_asked(raft_message_seeds),
    |data: &[u8]| {
        check::<AppendEntriesRequest<TypeConfig>>(data);
        check::<VoteRequest<NodeId>>(data);
        check::<InstallSnapshotRequest<TypeConfig>>(data);
        check::<Answer<AppendEntriesResponse<NodeId>>>(data);
        check::<Answer<VoteResponse<NodeId>>>(data);
        check::<Answer<InstallSnapshotResponse<NodeId>, InstallSnapshotError>>(data);
    }
);
