//! openraft's storage conformance suite against the pair a NoKV node really
//! runs: the sled log store and the Holt state machine (snapshots included).

use nokv_holt::HoltConfig;
use nokv_meta_node::{HoltStateMachine, TypeConfig};
use nokv_raft_log::SledLogStore;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};
use tempfile::TempDir;

struct NodeStoreBuilder;

impl StoreBuilder<TypeConfig, SledLogStore<TypeConfig>, HoltStateMachine, TempDir>
    for NodeStoreBuilder
{
    async fn build(
        &self,
    ) -> Result<(TempDir, SledLogStore<TypeConfig>, HoltStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let log = SledLogStore::open(&dir.path().join("raft-log"))
            .map_err(|e| StorageIOError::write(&e))?;
        let sm = HoltStateMachine::open(&dir.path().join("snapshot"), HoltConfig::default())
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_with_holt_state_machine() {
    if let Err(error) = Suite::test_all(NodeStoreBuilder) {
        panic!("openraft storage suite failed: {error}");
    }
}
