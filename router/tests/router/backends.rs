//! The conformance suite against every backend.

use nokv_router::{ControlPlane, MemControlPlane};

use crate::conformance::cluster;

async fn mem_store() -> (Box<dyn ControlPlane>, ()) {
    (Box::new(MemControlPlane::new(cluster())), ())
}

/// The in-process store persisted to a file (as `nokv dev` runs it).
async fn mem_file_store() -> (Box<dyn ControlPlane>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = MemControlPlane::open(cluster(), dir.path().join("control.json")).expect("open");
    (Box::new(cp), dir)
}

#[cfg(feature = "etcd")]
async fn etcd_store() -> (Box<dyn ControlPlane>, crate::support::EtcdServer) {
    use nokv_router::{EtcdConfig, EtcdControlPlane};
    let server = crate::support::EtcdServer::must_start();
    let config = EtcdConfig::new(vec![server.endpoint.clone()], cluster());
    let cp = EtcdControlPlane::connect(config).await.expect("connect");
    (Box::new(cp), server)
}

conformance_tests!(mem, mem_store());
conformance_tests!(mem_file, mem_file_store());
#[cfg(feature = "etcd")]
conformance_tests!(etcd, etcd_store());
