//! `nokv-jepsen`: Jepsen-style partition tests of NoKV.
//!
//! A run ([`run::run`]) starts a three-node cluster and an S3 server in
//! containers through testcontainers ([`cluster`]), drives concurrent
//! client processes ([`workload`]: registers, a set, a namespace tree)
//! while a nemesis ([`nemesis`]) partitions links, kills and pauses nodes,
//! then heals, reads the final state and checks the recorded histories with
//! `nokv-checker`. Containers, networks and volumes are removed after every
//! run, also a failed one.
//!
//! Dependencies: talks to clusters only through the public SDK
//! (`nokv-client`) and the `nokv` image; must not depend on any server
//! crate (meta-node, raft-log, holt internals), so it tests what users get.

pub mod cluster;
pub mod docker;
pub mod nemesis;
pub mod record;
pub mod run;
pub mod workload;
