//! Runs openraft's storage conformance suite against [`SledLogStore`].
//!
//! The suite exercises a log store together with a state machine, so this file also holds a
//! minimal in-memory [`RaftStateMachine`] for the test type config.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use common::{Response, TypeConfig};
use nokv_raft_log::SledLogStore;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

/// The applied state; also the snapshot content (as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StateMachineData {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    data: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<StateMachineData>,
    current_snapshot: Mutex<Option<StoredSnapshot>>,
    snapshots_built: AtomicU64,
}

/// In-memory state machine; clones share state (the clone is also the snapshot builder).
#[derive(Debug, Clone, Default)]
struct MemStateMachine(Arc<Inner>);

/// Poisoning only follows a panic in another test thread; propagate it as a panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("state machine mutex poisoned")
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let state = lock(&self.0.state).clone();
        let data =
            serde_json::to_vec(&state).map_err(|e| StorageIOError::read_state_machine(&e))?;
        let seq = self.0.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match &state.last_applied {
            Some(last) => format!("{}-{}-{seq}", last.leader_id, last.index),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.last_membership,
            snapshot_id,
        };
        *lock(&self.0.current_snapshot) = Some(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let state = lock(&self.0.state);
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = lock(&self.0.state);
        let mut responses = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(request) => Response {
                    previous: state.data.insert(request.key, request.value),
                },
                EntryPayload::Membership(membership) => {
                    state.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::default()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let state: StateMachineData = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        *lock(&self.0.state) = state;
        *lock(&self.0.current_snapshot) = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(lock(&self.0.current_snapshot)
            .clone()
            .map(|stored| Snapshot {
                meta: stored.meta,
                snapshot: Box::new(Cursor::new(stored.data)),
            }))
    }
}

/// Builds a fresh store in a new temp dir per suite case; the `TempDir` is the guard that
/// keeps the directory alive until the case ends.
struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, SledLogStore<TypeConfig>, MemStateMachine, TempDir>
    for SledStoreBuilder
{
    async fn build(
        &self,
    ) -> Result<(TempDir, SledLogStore<TypeConfig>, MemStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let store = SledLogStore::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, store, MemStateMachine::default()))
    }
}

/// `Suite::test_all` creates its own tokio runtime per case, so this is a plain `#[test]`.
#[test]
fn openraft_storage_suite() {
    if let Err(error) = Suite::test_all(SledStoreBuilder) {
        panic!("openraft storage suite failed: {error}");
    }
}
