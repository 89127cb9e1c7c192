//! [`MemControlPlane`]: the control plane in process, for tests and single-process
//! development clusters (`nokv dev`), optionally persisted to a JSON file.
//!
//! It has the etcd implementation's semantics: a store revision bumped by every commit,
//! compare-and-swap conflicts, watches from a revision (over a bounded history, beyond which
//! a watcher gets the current map, as after an etcd compaction), and liveness records that
//! expire `ttl` after their last renewal, measured with tokio's clock (so tests may pause
//! time).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::control::{check_cluster, check_ttl, ControlPlane, Liveness, MapStream};
use crate::error::RouterError;
use crate::schema::{MemFile, MEM_FORMAT};
use crate::types::{ClusterId, NodeId, Revision, ShardMap};

/// How many committed maps a [`MemControlPlane`] keeps for watchers.
const HISTORY: usize = 1024;

#[derive(Debug, Default)]
struct State {
    /// Bumped by every commit (as etcd's store revision).
    store_revision: u64,
    map: Option<ShardMap>,
    /// The last [`HISTORY`] committed maps, oldest first.
    history: VecDeque<ShardMap>,
    alive: BTreeMap<NodeId, Alive>,
    next_token: u64,
}

#[derive(Debug, Clone, Copy)]
struct Alive {
    /// Which registration owns the record.
    token: u64,
    deadline: Instant,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Carries the store revision after each commit, to wake watchers.
    committed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated: every mutation
        // is a single assignment after all fallible work is done.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The in-process control plane. Cloning gives another handle to the same store.
#[derive(Clone, Debug)]
pub struct MemControlPlane {
    cluster: ClusterId,
    shared: Arc<Shared>,
    path: Option<PathBuf>,
}

impl MemControlPlane {
    /// An empty store, in memory only.
    pub fn new(cluster: ClusterId) -> MemControlPlane {
        MemControlPlane::with_state(cluster, State::default(), None)
    }

    /// A store persisted to the JSON file at `path`: loaded from it if it exists, and
    /// rewritten atomically (temporary file, fsync, rename, fsync of the directory) before
    /// each commit takes effect. A file that cannot be decoded, or holds another cluster's
    /// map, is `CORRUPT_STATE`. Writes are synchronous file I/O on the caller's thread: the
    /// file is small and this is a development tool.
    pub fn open(
        cluster: ClusterId,
        path: impl Into<PathBuf>,
    ) -> Result<MemControlPlane, RouterError> {
        let path = path.into();
        let mut state = State::default();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let corrupt = |reason: String| RouterError::Corrupt {
                    location: path.display().to_string(),
                    reason,
                };
                let file: MemFile = serde_json::from_slice(&bytes)
                    .map_err(|e| corrupt(format!("not a control-plane state file: {e}")))?;
                if file.format != MEM_FORMAT {
                    return Err(corrupt(format!(
                        "unknown format {:?} (this build reads {MEM_FORMAT:?})",
                        file.format
                    )));
                }
                if let Some(map) = &file.map {
                    if map.cluster != cluster {
                        return Err(corrupt(format!(
                            "holds cluster {}, expected {cluster}",
                            map.cluster
                        )));
                    }
                    map.validate()
                        .map_err(|e| corrupt(format!("stored map is invalid: {e}")))?;
                    if map.revision.0 > file.store_revision {
                        return Err(corrupt("map revision is ahead of the store".into()));
                    }
                    state.history.push_back(map.clone());
                }
                state.store_revision = file.store_revision;
                state.map = file.map;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RouterError::Persist { path, source }),
        }
        Ok(MemControlPlane::with_state(cluster, state, Some(path)))
    }

    fn with_state(cluster: ClusterId, state: State, path: Option<PathBuf>) -> MemControlPlane {
        let (committed, _) = watch::channel(state.store_revision);
        MemControlPlane {
            cluster,
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                committed,
            }),
            path,
        }
    }

    /// Commits `map` (already checked) under the lock held in `state`.
    fn commit(&self, state: &mut State, mut map: ShardMap) -> Result<ShardMap, RouterError> {
        let revision = state.store_revision + 1;
        map.revision = Revision(revision);
        if let Some(path) = &self.path {
            let file = MemFile {
                format: MEM_FORMAT.to_string(),
                store_revision: revision,
                map: Some(map.clone()),
            };
            let bytes = serde_json::to_vec_pretty(&file)
                .expect("a shard map always serialises: string and integer keys only");
            write_atomically(path, &bytes).map_err(|source| RouterError::Persist {
                path: path.clone(),
                source,
            })?;
        }
        state.store_revision = revision;
        state.map = Some(map.clone());
        if state.history.len() == HISTORY {
            state.history.pop_front();
        }
        state.history.push_back(map.clone());
        self.shared.committed.send_replace(revision);
        Ok(map)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

#[async_trait]
impl ControlPlane for MemControlPlane {
    fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    async fn load(&self) -> Result<Option<ShardMap>, RouterError> {
        Ok(self.shared.lock().map.clone())
    }

    async fn init(&self, map: ShardMap) -> Result<ShardMap, RouterError> {
        check_cluster(&self.cluster, &map)?;
        map.validate()?;
        let mut state = self.shared.lock();
        if let Some(existing) = &state.map {
            return Err(RouterError::AlreadyInitialized {
                cluster: self.cluster.clone(),
                revision: existing.revision,
            });
        }
        self.commit(&mut state, map)
    }

    async fn compare_and_swap(
        &self,
        expected: Revision,
        new: ShardMap,
    ) -> Result<ShardMap, RouterError> {
        check_cluster(&self.cluster, &new)?;
        let mut state = self.shared.lock();
        let current = state
            .map
            .as_ref()
            .ok_or_else(|| RouterError::NotInitialized {
                cluster: self.cluster.clone(),
            })?;
        if current.revision != expected {
            return Err(RouterError::Conflict {
                current: current.revision,
            });
        }
        current.validate_successor(&new)?;
        self.commit(&mut state, new)
    }

    async fn watch(&self, after: Revision) -> Result<MapStream, RouterError> {
        let shared = Arc::clone(&self.shared);
        let committed = self.shared.committed.subscribe();
        let stream = futures::stream::unfold(
            (shared, committed, after),
            |(shared, mut committed, last)| async move {
                loop {
                    // Mark the current commit as seen before looking, so a commit after the
                    // look wakes `changed` below.
                    committed.borrow_and_update();
                    let next = {
                        let state = shared.lock();
                        match state.history.iter().find(|m| m.revision > last) {
                            Some(m) => Some(m.clone()),
                            // Trimmed past `last`: fall back to the current map.
                            None => state.map.clone().filter(|m| m.revision > last),
                        }
                    };
                    if let Some(map) = next {
                        let revision = map.revision;
                        return Some((Ok(map), (shared, committed, revision)));
                    }
                    if committed.changed().await.is_err() {
                        return None;
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    async fn register_node_alive(
        &self,
        node: NodeId,
        ttl: Duration,
    ) -> Result<Liveness, RouterError> {
        check_ttl(ttl)?;
        let token = {
            let mut state = self.shared.lock();
            state.next_token += 1;
            let token = state.next_token;
            state.alive.insert(
                node,
                Alive {
                    token,
                    deadline: Instant::now() + ttl,
                },
            );
            token
        };
        let shared = Arc::clone(&self.shared);
        Ok(Liveness::spawn(node, move |mut stop| async move {
            let period = ttl / 3;
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(period) => {}
                }
                let mut state = shared.lock();
                // A newer registration of the same node owns the record; leave it alone,
                // as an etcd lease whose key was overwritten keeps nothing alive.
                if state.alive.get(&node).is_none_or(|a| a.token == token) {
                    state.alive.insert(
                        node,
                        Alive {
                            token,
                            deadline: Instant::now() + ttl,
                        },
                    );
                }
            }
            let mut state = shared.lock();
            if state.alive.get(&node).is_some_and(|a| a.token == token) {
                state.alive.remove(&node);
            }
        }))
    }

    async fn live_nodes(&self) -> Result<BTreeSet<NodeId>, RouterError> {
        let now = Instant::now();
        Ok(self
            .shared
            .lock()
            .alive
            .iter()
            .filter(|(_, a)| a.deadline > now)
            .map(|(node, _)| *node)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn cluster() -> ClusterId {
        ClusterId::new("dev").expect("valid")
    }

    #[tokio::test]
    async fn persisted_state_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.json");
        let cp = MemControlPlane::open(cluster(), &path).expect("open");
        let map = cp
            .init(ShardMap::bootstrap(cluster(), NodeId(1), "h:1"))
            .await
            .expect("init");
        drop(cp);

        let cp = MemControlPlane::open(cluster(), &path).expect("reopen");
        assert_eq!(cp.load().await.expect("load"), Some(map.clone()));
        let mut next = map.clone();
        next.shards
            .get_mut(&crate::ShardId::ROOT)
            .expect("root")
            .leader_hint = Some(NodeId(1));
        let next = cp.compare_and_swap(map.revision, next).await.expect("cas");
        assert!(next.revision > map.revision);
        // A watcher from before the restart gets the newest map, in order.
        let mut watch = cp.watch(Revision(0)).await.expect("watch");
        assert_eq!(watch.next().await.expect("item").expect("ok"), map);
        assert_eq!(watch.next().await.expect("item").expect("ok"), next);
    }

    #[tokio::test]
    async fn corrupt_or_foreign_state_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.json");
        std::fs::write(&path, b"{not json").expect("write");
        let err = MemControlPlane::open(cluster(), &path).expect_err("corrupt");
        assert_eq!(err.code(), "CORRUPT_STATE");

        let other = ClusterId::new("other").expect("valid");
        let cp = MemControlPlane::open(other.clone(), path.with_extension("2")).expect("open");
        cp.init(ShardMap::bootstrap(other, NodeId(1), "h:1"))
            .await
            .expect("init");
        let err = MemControlPlane::open(cluster(), path.with_extension("2")).expect_err("foreign");
        assert_eq!(err.code(), "CORRUPT_STATE");
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_expires_when_renewal_stops() {
        let cp = MemControlPlane::new(cluster());
        let ttl = Duration::from_secs(3);
        let live = cp.register_node_alive(NodeId(4), ttl).await.expect("alive");
        tokio::time::sleep(ttl * 5).await; // paused clock: renewals keep it alive
        assert!(cp.live_nodes().await.expect("live").contains(&NodeId(4)));
        // A holder that stops renewing without removing the record (a crash) expires.
        live.abort_for_test();
        tokio::time::sleep(ttl + Duration::from_millis(1)).await;
        assert!(cp.live_nodes().await.expect("live").is_empty());
    }
}
