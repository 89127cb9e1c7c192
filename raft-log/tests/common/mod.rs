//! Test-only raft type config shared by the integration tests.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A small application request: set `key` to `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub key: String,
    pub value: String,
}

/// Response to a [`Request`]: the previous value of the key, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub previous: Option<String>,
}

openraft::declare_raft_types!(
    /// Type config used only by this crate's tests.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
