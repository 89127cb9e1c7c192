//! `nokv-jepsen`: Jepsen-style partition tests of NoKV.
//!
//! A run ([`run::run`]) starts a three-node cluster with etcd, two shards
//! (the root and one grafted at `/s1`) and an S3 server in containers
//! through testcontainers ([`cluster`]), drives concurrent client processes
//! ([`workload`]: registers and a set over both shards, a namespace tree,
//! the graft's fences) while a nemesis ([`nemesis`]) partitions links, kills
//! and pauses nodes, kills or cuts off etcd and moves replicas, then heals,
//! reads the final state and checks the recorded histories with
//! `nokv-checker`. Containers, networks and volumes are removed after every
//! run, also a failed one.
//!
//! Dependencies: talks to clusters only through the public SDK
//! (`nokv-client`, with the wire types of `nokv-proto` it takes) and the
//! `nokv` image; must not depend on any server
//! crate (meta-node, raft-log, holt internals), so it tests what users get.

pub mod cluster;
pub mod docker;
pub mod nemesis;
pub mod process;
pub mod record;
pub mod run;
pub mod workload;
