//! A NoKV metadata node: replicas of any number of shards.
//!
//! A shard is a Raft group (openraft) whose state machine is the Holt engine
//! and whose log lives on sled (`raft-log`). This crate wires them together
//! ([`replica`]), hosts many of them in one process ([`host`]: one sled
//! database, one set of peer connections) and serves two gRPC services on
//! one address for all of them: `RaftService` between replicas and
//! `MetaService` for clients, each request naming its shard.
//!
//! Main types: [`NodeConfig`] and [`run_node`] (start a replica),
//! [`HoltStateMachine`] (the thin openraft adapter), [`Proposer`] (group
//! commit), [`ClientService`] (the client API), [`archive`] (snapshots and
//! log segments shipped to the object store, and [`restore`] from them).
//!
//! Must not depend on: the client SDK, the CLI, or any other server crate;
//! peers talk to each other only over gRPC.

pub mod archive;
pub mod auth;
pub mod client_service;
mod clock;
pub mod control;
pub mod election;
pub mod fatal;
pub mod host;
pub mod idle;
pub mod lease;
pub mod maintenance;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod proposer;
pub mod raft_service;
pub mod raft_wire;
pub mod read_index;
pub mod replica;
pub mod state_machine;
pub mod tls;
pub mod typ;
pub mod verified;
pub mod watch;

pub use archive::{
    restore, restore_from, ArchiveError, ArchiveGatedLogStore, PurgeGate, RestoreReport,
};
pub use client_service::{ClientService, ClientTimeouts};
pub use node::{run_node, NodeConfig, NodeError};
pub use proposer::Proposer;
pub use state_machine::HoltStateMachine;
pub use tls::NodeTls;
pub use typ::{NodeId, TypeConfig};
