//! Disaster recovery through the object store: the segment codec, the purge
//! gate on a real sled log, and restore, ending with a real node started on
//! a restored directory.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nokv_blob::{BlobStore, LocalBlobStore};
use nokv_holt::{
    Command, EntryRef, HoltConfig, InodeRef, LogPayload, Op, Query, RequestId, ShardId,
};
use nokv_meta_node::archive::{self, decode_segment, encode_segment, Entry};
use nokv_meta_node::metrics::Stages;
use nokv_meta_node::{
    restore, run_node, ArchiveError, ArchiveGatedLogStore, HoltStateMachine, NodeConfig, NodeError,
    PurgeGate, TypeConfig,
};
use nokv_proto::pb::meta_service_client::MetaServiceClient;
use nokv_proto::pb::{self, Role};
use nokv_proto::{Mutation, Read, ReadConsistency};
use nokv_raft_log::SledLogStore;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, StorageError, StorageIOError};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn command(n: u64) -> Command {
    Command {
        request_id: RequestId(u128::from(n) + 1),
        epoch: None,
        time_ns: n,
        op: Op::Mkdir {
            at: EntryRef::Path(format!("/d{n}")),
            mode: 0o755,
            uid: 0,
            gid: 0,
            parents: false,
        },
    }
}

/// Entries `first..=last` of every payload kind.
fn entries(term: u64, first: u64, last: u64) -> Vec<Entry> {
    (first..=last)
        .map(|i| Entry {
            log_id: log_id(term, i),
            payload: match i % 4 {
                0 => EntryPayload::Blank,
                1 => {
                    EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2, 3])], None))
                }
                _ => EntryPayload::Normal(LogPayload::V1(vec![command(i), command(i + 1000)])),
            },
        })
        .collect()
}

/// A tiny deterministic generator (xorshift64*) for garbage inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Rewrites the header checksum so that a mutated body reaches bincode.
fn fix_crc(bytes: &mut [u8]) {
    if bytes.len() >= 24 {
        let crc = crc32fast::hash(&bytes[24..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }
}

#[test]
fn segments_round_trip() {
    let run = entries(3, 41, 60);
    let bytes = encode_segment(Some(log_id(2, 40)), &run).expect("encode");
    assert_eq!(&bytes[..8], b"NOKVSEG1");
    let segment = decode_segment(&bytes).expect("decode");
    assert_eq!(segment.prev_log_id, Some(log_id(2, 40)));
    assert_eq!(segment.entries, run);

    let from_zero = entries(0, 0, 5);
    let segment =
        decode_segment(&encode_segment(None, &from_zero).expect("encode")).expect("decode");
    assert_eq!(segment.entries, from_zero);
}

#[test]
fn bad_runs_are_not_encoded() {
    let mut gap = entries(1, 1, 5);
    gap.remove(2);
    assert!(
        encode_segment(Some(log_id(1, 0)), &gap).is_err(),
        "not contiguous"
    );
    assert!(
        encode_segment(Some(log_id(1, 3)), &entries(1, 1, 5)).is_err(),
        "wrong prev"
    );
    assert!(
        encode_segment(None, &entries(1, 1, 5)).is_err(),
        "no prev but not at 0"
    );
    assert!(encode_segment(Some(log_id(1, 0)), &[]).is_err(), "empty");
    let mut down = entries(2, 1, 3);
    down[2].log_id = log_id(1, 3);
    assert!(
        encode_segment(Some(log_id(1, 0)), &down).is_err(),
        "term goes down"
    );
}

#[test]
fn garbage_segments_never_panic() {
    let valid = encode_segment(Some(log_id(1, 9)), &entries(1, 10, 30)).expect("encode");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Every truncation.
    for len in 0..valid.len() {
        assert!(decode_segment(&valid[..len]).is_err(), "truncated to {len}");
    }
    // Random bytes, with and without a valid header in front.
    for round in 0..2_000u32 {
        let len = rng.below(300);
        let mut junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if round.is_multiple_of(2) && junk.len() >= 24 {
            junk[..8].copy_from_slice(b"NOKVSEG1");
            junk[8..12].copy_from_slice(&1u32.to_le_bytes());
            let body_len = (junk.len() - 24) as u64;
            junk[16..24].copy_from_slice(&body_len.to_le_bytes());
            fix_crc(&mut junk);
        }
        let _ = decode_segment(&junk);
    }
    // Bit flips and byte stores in the body, checksum fixed so bincode sees them.
    for _ in 0..3_000 {
        let mut bytes = valid.clone();
        for _ in 0..1 + rng.below(4) {
            let at = 24 + rng.below(bytes.len() - 24);
            if rng.next().is_multiple_of(2) {
                bytes[at] ^= 1 << rng.below(8);
            } else {
                bytes[at] = rng.next() as u8;
            }
        }
        fix_crc(&mut bytes);
        let _ = decode_segment(&bytes);
    }
    // A flip without fixing the checksum is always caught.
    let mut flipped = valid.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    assert!(decode_segment(&flipped).is_err());
}

// ----- the purge gate on a real sled log -------------------------------------

async fn gated_log(dir: &Path, gate: Arc<PurgeGate>) -> ArchiveGatedLogStore {
    let sled = SledLogStore::<TypeConfig>::open(&dir.join("raft-log")).expect("open sled log");
    let mut store = ArchiveGatedLogStore::new(sled, gate, Stages::detached().log_append);
    store
        .blocking_append(entries(1, 1, 100))
        .await
        .expect("append");
    store
}

async fn first_index(store: &mut ArchiveGatedLogStore) -> Option<u64> {
    let all = store.try_get_log_entries(0..).await.expect("read");
    all.first().map(|e| e.log_id.index)
}

#[tokio::test]
async fn the_purge_gate_never_purges_past_the_archived_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(PurgeGate::enabled());
    let mut store = gated_log(dir.path(), gate.clone()).await;

    // Nothing archived: nothing purged, and no error.
    store
        .purge(log_id(1, 80))
        .await
        .expect("purge is never refused");
    assert_eq!(first_index(&mut store).await, Some(1));
    assert_eq!(
        store
            .get_log_state()
            .await
            .expect("state")
            .last_purged_log_id,
        None
    );

    // Archived up to 40: purged up to 40 only.
    gate.set_archived_index(Some(40));
    store.purge(log_id(1, 80)).await.expect("purge");
    assert_eq!(first_index(&mut store).await, Some(41));
    assert_eq!(
        store
            .get_log_state()
            .await
            .expect("state")
            .last_purged_log_id,
        Some(log_id(1, 40))
    );

    // A later purge call catches up with the remembered request (80), even
    // if it asks for less, as far as the archive allows.
    gate.set_archived_index(Some(95));
    store.purge(log_id(1, 50)).await.expect("purge");
    assert_eq!(first_index(&mut store).await, Some(81));

    // Never past what was asked for.
    store.purge(log_id(1, 90)).await.expect("purge");
    assert_eq!(first_index(&mut store).await, Some(91));

    // The marker survives a reopen, and the entries after it are intact.
    drop(store);
    let sled = SledLogStore::<TypeConfig>::open(&dir.path().join("raft-log")).expect("reopen");
    let mut reopened = ArchiveGatedLogStore::new(
        sled,
        Arc::new(PurgeGate::enabled()),
        Stages::detached().log_append,
    );
    let state = reopened.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 90)));
    assert_eq!(state.last_log_id, Some(log_id(1, 100)));
    let rest = reopened.try_get_log_entries(91..=100).await.expect("read");
    assert_eq!(rest, entries(1, 91, 100));
}

/// A follower that installs a snapshot past the end of its log: openraft
/// purges up to the snapshot and appends after it. Holding the purge back
/// would leave a hole between the old prefix and the new entries.
#[tokio::test]
async fn a_purge_past_the_log_end_goes_through_so_the_log_stays_contiguous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(PurgeGate::enabled());
    let mut store = gated_log(dir.path(), gate.clone()).await;
    gate.set_archived_index(Some(30));
    store.purge(log_id(2, 150)).await.expect("purge");
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 150)));
    assert_eq!(
        first_index(&mut store).await,
        None,
        "no prefix left below the snapshot"
    );
    store
        .blocking_append(entries(2, 151, 160))
        .await
        .expect("append after the snapshot");
    drop(store);
    let sled = SledLogStore::<TypeConfig>::open(&dir.path().join("raft-log")).expect("reopen");
    let mut reopened = ArchiveGatedLogStore::new(sled, gate, Stages::detached().log_append);
    let state = reopened.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 150)));
    assert_eq!(state.last_log_id, Some(log_id(2, 160)));
    assert_eq!(first_index(&mut reopened).await, Some(151));
}

#[tokio::test]
async fn without_a_store_purges_are_not_gated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = gated_log(dir.path(), Arc::new(PurgeGate::disabled())).await;
    store.purge(log_id(1, 70)).await.expect("purge");
    assert_eq!(first_index(&mut store).await, Some(71));
}

struct GatedStoreBuilder;

impl StoreBuilder<TypeConfig, ArchiveGatedLogStore, HoltStateMachine, TempDir>
    for GatedStoreBuilder
{
    async fn build(
        &self,
    ) -> Result<(TempDir, ArchiveGatedLogStore, HoltStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let sled = SledLogStore::open(&dir.path().join("raft-log"))
            .map_err(|e| StorageIOError::write(&e))?;
        let gate = Arc::new(PurgeGate::enabled());
        gate.set_archived_index(Some(u64::MAX));
        let sm = HoltStateMachine::open(&dir.path().join("snapshot"), HoltConfig::default())
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((
            dir,
            ArchiveGatedLogStore::new(sled, gate, Stages::detached().log_append),
            sm,
        ))
    }
}

#[test]
fn openraft_storage_suite_with_the_gated_log_store() {
    if let Err(error) = Suite::test_all(GatedStoreBuilder) {
        panic!("openraft storage suite failed: {error}");
    }
}

// ----- restore ---------------------------------------------------------------

#[tokio::test]
async fn restore_refuses_a_non_empty_directory() {
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = LocalBlobStore::open(store_dir.path()).await.expect("store");
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("precious"), b"keep me").expect("write");
    let err = restore(&store, ShardId(0), data.path(), 1)
        .await
        .expect_err("must refuse");
    assert!(matches!(err, ArchiveError::DataDir { .. }), "{err}");
    assert_eq!(
        std::fs::read(data.path().join("precious")).expect("read"),
        b"keep me"
    );

    // An empty store has nothing to restore, and leaves nothing behind.
    let absent = data.path().join("absent");
    let err = restore(&store, ShardId(0), &absent, 1)
        .await
        .expect_err("nothing to restore");
    assert!(
        matches!(err, ArchiveError::NothingToRestore { shard: 0 }),
        "{err}"
    );
    assert!(!absent.exists());
}

fn node_config(addr: &str, data: &Path, store_url: &str) -> NodeConfig {
    let mut c = NodeConfig::new(1, addr.to_string(), data.to_path_buf());
    c.heartbeat = Duration::from_millis(50);
    c.election_timeout_min = Duration::from_millis(200);
    c.election_timeout_max = Duration::from_millis(400);
    c.snapshot_every = 15;
    c.keep_logs_behind_snapshot = 3;
    c.archive_interval = Duration::from_millis(200);
    c.segment_entries = 6;
    c.blob_store = Some(store_url.to_string());
    c
}

struct RunningNode {
    addr: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    async fn start(listener: TcpListener, data: &Path, store_url: &str) -> RunningNode {
        let addr = listener.local_addr().expect("local addr").to_string();
        let shutdown = CancellationToken::new();
        let config = node_config(&addr, data, store_url);
        let task = tokio::spawn(run_node(config, listener, None, None, shutdown.clone()));
        RunningNode {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(WAIT, self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("node did not stop cleanly: {other:?}"),
        }
    }

    async fn client(&self) -> MetaServiceClient<Channel> {
        let url = format!("http://{}", self.addr);
        let deadline = Instant::now() + WAIT;
        loop {
            match MetaServiceClient::connect(url.clone()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("cannot connect to {url}: {e}"),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }
}

async fn must_lead(client: &mut MetaServiceClient<Channel>) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(s) = client.status(pb::StatusRequest::default()).await {
            if s.get_ref().role == Role::Leader as i32 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the node did not become leader");
        tokio::time::sleep(POLL).await;
    }
}

async fn must_mkdir(client: &mut MetaServiceClient<Channel>, path: &str) -> u64 {
    let request = pb::MutateRequest::try_from(Mutation {
        request_id: RequestId(rand_id(path)),
        epoch: None,
        op: Op::Mkdir {
            at: EntryRef::Path(path.to_string()),
            mode: 0o755,
            uid: 0,
            gid: 0,
            parents: false,
        },
    })
    .expect("encode mkdir");
    let response = client
        .mutate(request)
        .await
        .unwrap_or_else(|e| panic!("mkdir {path}: {e}"));
    response.get_ref().applied_index
}

/// A request id derived from the path (unique per test path).
fn rand_id(path: &str) -> u128 {
    path.bytes().fold(0x811c_9dc5_u128, |h, b| {
        (h ^ u128::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn exists(client: &mut MetaServiceClient<Channel>, path: &str) -> bool {
    let request = pb::QueryRequest::from(Read {
        consistency: ReadConsistency::Linearizable,
        query: Query::GetAttr {
            inode: InodeRef::Path(path.to_string()),
        },
    });
    client.query(request).await.is_ok()
}

/// Copies a local store directory (to damage the copy).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

async fn keys(store: &dyn BlobStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// One node writes, backs up and stops; its directory is rebuilt from the
/// store alone, and a node started on it leads and has every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_the_store_serves_every_backed_up_write() {
    let store_dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", store_dir.path().display());
    let data = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let node = RunningNode::start(listener, &data.path().join("node1"), &url).await;
    let mut client = node.client().await;
    client
        .init_cluster(pb::InitClusterRequest {
            shard: 0,
            members: vec![pb::Member {
                id: 1,
                addr: node.addr.clone(),
            }],
        })
        .await
        .expect("init");
    must_lead(&mut client).await;
    let paths: Vec<String> = (0..50).map(|i| format!("/d{i}")).collect();
    let mut last_write = 0;
    for p in &paths {
        last_write = must_mkdir(&mut client, p).await;
    }
    let backup = client
        .backup(pb::BackupRequest::default())
        .await
        .expect("backup")
        .into_inner();
    assert!(
        backup.archived_index >= last_write,
        "{backup:?} vs write at {last_write}"
    );
    assert!(
        backup.snapshot_index >= last_write,
        "the backup snapshot covers every write"
    );
    assert!(
        backup.snapshot_key.starts_with("meta/shard-0/snapshots/"),
        "{backup:?}"
    );
    let addr = node.addr.clone();
    drop(client);
    node.stop().await;

    let store = LocalBlobStore::open(store_dir.path()).await.expect("store");
    let snapshots = keys(&store, "meta/shard-0/snapshots/").await;
    let segments = keys(&store, "meta/shard-0/log/").await;
    assert!(!segments.is_empty(), "segments were archived");
    assert!(
        snapshots.len() <= archive::SNAPSHOTS_TO_KEEP && snapshots.len() >= 2,
        "retention keeps the newest snapshots: {snapshots:?}"
    );

    // Restore into a fresh directory and start the node there, same id and address.
    let restored = data.path().join("restored");
    let report = restore(&store, ShardId(0), &restored, 1)
        .await
        .expect("restore");
    assert!(report.last_index >= backup.archived_index, "{report:?}");
    assert!(
        report.snapshot_index >= Some(backup.snapshot_index),
        "{report:?}"
    );
    assert_eq!(report.members, vec![(1, addr.clone())]);
    assert!(report.is_member());
    assert!(report.unused_segments.is_empty(), "{report:?}");
    assert_eq!(
        std::fs::read_to_string(restored.join("node-id")).expect("node-id"),
        "1\n"
    );

    let listener = TcpListener::bind(&addr)
        .await
        .expect("rebind the node's address");
    let node = RunningNode::start(listener, &restored, &url).await;
    let mut client = node.client().await;
    must_lead(&mut client).await;
    for p in &paths {
        assert!(exists(&mut client, p).await, "{p} was restored");
    }
    let status = client
        .status(pb::StatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    assert!(
        status.applied_index >= Some(report.last_index),
        "{status:?}"
    );
    // The restored node takes new writes after the restored log.
    let after = must_mkdir(&mut client, "/after-restore").await;
    assert!(after > report.last_index);
    drop(client);
    node.stop().await;

    // The restored node archived its own writes (its last pass at shutdown
    // included), chained to the restored log: a second restore has them.
    let again = restore(&store, ShardId(0), &data.path().join("again"), 1)
        .await
        .expect("restore after the restored node ran");
    assert!(
        again.last_index >= after,
        "{again:?} lacks the write at {after}"
    );

    // A corrupt newest snapshot: restore falls back to an older one and
    // replays the retained segments after it to the same recovery point.
    let damaged = tempfile::tempdir().expect("tempdir");
    copy_dir(store_dir.path(), damaged.path());
    let newest = keys(&store, "meta/shard-0/snapshots/")
        .await
        .pop()
        .expect("a snapshot");
    std::fs::write(damaged.path().join(&newest), b"not a snapshot").expect("damage");
    let copy = LocalBlobStore::open(damaged.path()).await.expect("store");
    let fallback = restore(&copy, ShardId(0), &data.path().join("fallback"), 2)
        .await
        .expect("restore from an older snapshot");
    assert_eq!(fallback.skipped_snapshots.len(), 1, "{fallback:?}");
    assert!(fallback.last_index >= report.last_index, "{fallback:?}");
    assert!(
        !fallback.is_member(),
        "node 2 is not in this single-node membership"
    );

    // A corrupt segment that the restore needs is an error; nothing is left behind.
    let corrupt = tempfile::tempdir().expect("tempdir");
    copy_dir(store_dir.path(), corrupt.path());
    let copy = LocalBlobStore::open(corrupt.path()).await.expect("store");
    let needed = fallback
        .segments
        .first()
        .expect("the fallback replayed segments");
    std::fs::write(corrupt.path().join(&newest), b"not a snapshot").expect("damage");
    std::fs::write(corrupt.path().join(needed), b"NOKVSEG1 garbage").expect("damage");
    let target = data.path().join("corrupt");
    let err = restore(&copy, ShardId(0), &target, 1)
        .await
        .expect_err("corrupt segment");
    assert!(
        matches!(err, ArchiveError::CorruptSegment { ref key, .. } if key == needed),
        "{err}"
    );
    assert!(
        !target.exists(),
        "a failed restore leaves no directory behind"
    );

    // A missing segment ends the restored log before it (the recovery
    // point), and the segments after the gap are reported, not replayed.
    let gap = tempfile::tempdir().expect("tempdir");
    copy_dir(store_dir.path(), gap.path());
    let copy = LocalBlobStore::open(gap.path()).await.expect("store");
    let first_needed = fallback
        .segments
        .first()
        .expect("the fallback replayed segments");
    std::fs::remove_file(gap.path().join(first_needed)).expect("remove");
    std::fs::write(gap.path().join(&newest), b"not a snapshot").expect("damage");
    let partial = restore(&copy, ShardId(0), &data.path().join("gap"), 1)
        .await
        .expect("restore");
    assert_eq!(
        Some(partial.last_index),
        fallback.snapshot_index,
        "{partial:?}"
    );
    assert_eq!(partial.entries, 0);
    assert_eq!(
        partial.unused_segments,
        fallback.segments[1..].to_vec(),
        "segments after the gap are reported"
    );
}

/// Stopping a replica does not wait for an archive pass stuck on the object store:
/// the pass is dropped (uploads are idempotent) and the final pass is bounded, so a
/// node told to stop hosting a shard can host it again at once. Found by the Jepsen
/// run with seed 5150: a node's stop waited 75 s on a pass while the shard's
/// re-added replica could not be started (jepsen.md, bug ledger entry 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_replica_does_not_wait_for_a_stuck_archive_pass() {
    use nokv_blob::{BlobOp, FaultyBlobStore};
    use nokv_meta_node::replica::{NodeContext, ShardReplica};

    let dir = TempDir::new().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let mut config = node_config(&addr, dir.path(), "file:///unused");
    config.blob_store = None; // the store is handed over below
    let local = LocalBlobStore::open(dir.path().join("blobs"))
        .await
        .expect("local store");
    let faulty = Arc::new(FaultyBlobStore::new(Arc::new(local), 7));
    let ctx = NodeContext {
        config,
        log_db: nokv_raft_log::SledLogDb::open(&dir.path().join("raft-log")).expect("log db"),
        blob: Some(faulty.clone()),
        peers: Arc::default(),
        fatal: Default::default(),
    };
    let replica = ShardReplica::start(&ctx, ShardId(0))
        .await
        .expect("start the replica");
    let members = std::collections::BTreeMap::from([(1, openraft::BasicNode { addr })]);
    replica.raft.initialize(members).await.expect("initialize");
    let deadline = Instant::now() + WAIT;
    while replica.raft.metrics().borrow().current_leader != Some(1) {
        assert!(Instant::now() < deadline, "the one replica never led");
        tokio::time::sleep(POLL).await;
    }

    // Every upload hangs from now on; writes give the archiver segments to upload.
    faulty.hang(BlobOp::PutNew);
    for n in 0..20u32 {
        let request = pb::MutateRequest::try_from(Mutation {
            request_id: RequestId(u128::from(n) + 1),
            epoch: None,
            op: Op::Mkdir {
                at: EntryRef::Path(format!("/d{n}")),
                mode: 0o755,
                uid: 0,
                gid: 0,
                parents: false,
            },
        })
        .expect("encode");
        replica.client.mutate(request).await.expect("write");
    }
    let deadline = Instant::now() + WAIT;
    while faulty.hanging(BlobOp::PutNew) == 0 {
        assert!(
            Instant::now() < deadline,
            "the archiver never started an upload"
        );
        tokio::time::sleep(POLL).await;
    }

    // The pass in progress is dropped; the final pass gives up after its 5 s.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), replica.stop())
        .await
        .expect("the replica stopped while an upload hung");
    eprintln!("stopped in {:?} with an upload hanging", started.elapsed());
    faulty.release_hangs();
}
