//! The agent gateway: the seven read verbs (`ls`, `stat`, `catalog`,
//! `find`, `aggregate`, `read`, `grep`) over a NoKV cluster, with an
//! evidence URI on every item an agent sees, served over HTTP/JSON
//! (`POST /v1/<verb>`) and MCP (stdio, and streamable HTTP at `/mcp`).
//!
//! The gateway is stateless: it talks to shard leaders through the SDK and
//! reads bodies straight from the object store, with bounded bytes and
//! bounded entries per call. Cursors carry everything a next page needs.
//!
//! Typed values, structured bodies and field extraction come from
//! `nokv-fields` (re-exported as [`value`] and [`structured`]), which the
//! SDK shares, so a field means the same at publish and at query time.
//!
//! Must not depend on: any server crate (meta-node, raft-log, router
//! internals), openraft, sled or etcd-client; it is a client of the cluster.

pub mod error;
pub mod gateway;
pub mod http;
pub mod mcp;
pub mod metrics;
pub mod plan;
pub mod query;
pub mod uri;
pub mod verbs;

pub use nokv_fields::{structured, value};

pub use error::GatewayError;
pub use gateway::{Evidence, Gateway, GatewayConfig};
pub use value::{Row, Value};
