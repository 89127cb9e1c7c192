//! The router's integration tests, in one binary (modules under `tests/router/`).
//!
//! The etcd tests start a real `etcd` per test (on free loopback ports, in a temporary
//! directory); without the binary they fail and say to run `bash router/install-etcd.sh`.

#[path = "router/support.rs"]
mod support;

#[macro_use]
#[path = "router/conformance.rs"]
mod conformance;

#[path = "router/backends.rs"]
mod backends;

#[cfg(feature = "etcd")]
#[path = "router/etcd.rs"]
mod etcd;
