//! Persistence tests for [`SledLogStore`]: state survives reopen, crashes after an
//! acknowledged append lose nothing, and corrupt data is reported as an error.

mod common;

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::Command;

use common::{Request, TypeConfig};
use nokv_raft_log::schema::{self, encode_value, log_key};
use nokv_raft_log::{LogStateSummary, LogStoreError, SledLogStore};
use openraft::storage::{LogState, RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StorageError, Vote};
use tempfile::TempDir;

type Store = SledLogStore<TypeConfig>;

/// Set (to a directory) only in the child process of
/// [`acknowledged_append_survives_a_crash`].
const CRASH_CHILD_DIR_ENV: &str = "NOKV_RAFT_LOG_CRASH_CHILD_DIR";

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal_entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request {
            key: format!("key-{index}"),
            value: format!("value-{index}"),
        }),
    }
}

/// Mixes all payload kinds so each one round-trips through the codec.
fn entries(term: u64, indexes: RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
    indexes
        .map(|index| match index % 5 {
            0 => Entry {
                log_id: log_id(term, index),
                payload: EntryPayload::Blank,
            },
            3 => Entry {
                log_id: log_id(term, index),
                payload: EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([1, 2, 3])],
                    None,
                )),
            },
            _ => normal_entry(term, index),
        })
        .collect()
}

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("create temp dir")
}

/// Retries `attempt` until it succeeds or 10 s pass. sled releases its
/// directory lock only when its background flusher thread has let go of a
/// dropped database, which can be a moment after the drop.
fn must_reopen<T, E: std::fmt::Debug>(what: &str, mut attempt: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() >= deadline => panic!("{what}: {e:?}"),
            Err(_) => std::thread::yield_now(),
        }
    }
}

fn open(dir: &Path) -> Store {
    must_reopen("open log store", || Store::open(dir))
}

async fn all_entries(store: &mut Store) -> Vec<Entry<TypeConfig>> {
    store.try_get_log_entries(..).await.expect("read entries")
}

/// Asserts `result` failed with an openraft read error whose message mentions `needle`.
fn assert_read_error<T: std::fmt::Debug>(result: Result<T, StorageError<u64>>, needle: &str) {
    let error = result.expect_err("corrupt data must be reported as an error");
    let io_error = error.into_io().expect("a StorageIOError");
    let message = io_error.to_string();
    assert!(
        message.starts_with("when Read"),
        "not a read error: {message}"
    );
    assert!(
        message.contains(needle),
        "{message:?} does not mention {needle:?}"
    );
}

#[tokio::test]
async fn reopen_keeps_entries_vote_and_committed() {
    let dir = tempdir();
    let vote = Vote::new_committed(3, 2);
    {
        let mut store = open(dir.path());
        assert_eq!(store.read_vote().await.expect("read vote"), None);
        assert_eq!(store.read_committed().await.expect("read committed"), None);
        store
            .blocking_append(entries(1, 1..=4))
            .await
            .expect("append");
        store
            .blocking_append(entries(2, 5..=10))
            .await
            .expect("append");
        store.save_vote(&vote).await.expect("save vote");
        store
            .save_committed(Some(log_id(2, 7)))
            .await
            .expect("save committed");
    }

    let mut store = open(dir.path());
    let mut expected = entries(1, 1..=4);
    expected.extend(entries(2, 5..=10));
    assert_eq!(all_entries(&mut store).await, expected);
    assert_eq!(
        store.try_get_log_entries(3..6).await.expect("range read"),
        expected[2..5]
    );
    assert_eq!(store.read_vote().await.expect("read vote"), Some(vote));
    assert_eq!(
        store.read_committed().await.expect("read committed"),
        Some(log_id(2, 7))
    );
    assert_eq!(
        store.get_log_state().await.expect("log state"),
        LogState {
            last_purged_log_id: None,
            last_log_id: Some(log_id(2, 10)),
        }
    );
    assert_eq!(
        store.log_state_summary().expect("summary"),
        LogStateSummary {
            first_index: Some(1),
            last_index: Some(10),
            last_purged_index: None,
        }
    );

    // The log reader is a clone sharing the same database.
    let mut reader = store.get_log_reader().await;
    assert_eq!(
        reader.try_get_log_entries(10..).await.expect("reader"),
        expected[9..]
    );
}

#[tokio::test]
async fn reopen_keeps_truncate_and_purge() {
    let dir = tempdir();
    {
        let mut store = open(dir.path());
        store
            .blocking_append(entries(1, 1..=20))
            .await
            .expect("append");
        store.truncate(log_id(1, 15)).await.expect("truncate");
        store.purge(log_id(1, 5)).await.expect("purge");
    }

    let mut store = open(dir.path());
    assert_eq!(all_entries(&mut store).await, entries(1, 6..=14));
    assert_eq!(
        store.get_log_state().await.expect("log state"),
        LogState {
            last_purged_log_id: Some(log_id(1, 5)),
            last_log_id: Some(log_id(1, 14)),
        }
    );
    assert_eq!(
        store.log_state_summary().expect("summary"),
        LogStateSummary {
            first_index: Some(6),
            last_index: Some(14),
            last_purged_index: Some(5),
        }
    );

    // Purge everything: the last log id falls back to the purge marker.
    store.purge(log_id(1, 14)).await.expect("purge all");
    drop(store);
    let mut store = open(dir.path());
    assert!(all_entries(&mut store).await.is_empty());
    assert_eq!(
        store.get_log_state().await.expect("log state"),
        LogState {
            last_purged_log_id: Some(log_id(1, 14)),
            last_log_id: Some(log_id(1, 14)),
        }
    );

    // The log continues after the purge marker and a truncation of it survives reopen.
    store
        .blocking_append(entries(2, 15..=17))
        .await
        .expect("append");
    store.truncate(log_id(2, 16)).await.expect("truncate");
    drop(store);
    let mut store = open(dir.path());
    assert_eq!(all_entries(&mut store).await, entries(2, 15..=15));
}

/// A purge returns once its marker is durable: the entries at or below it vanish from
/// reads and from the log state at once, and from the disk with the appends that follow
/// (a few hundred per append), so that openraft's core never waits for the deletion.
#[tokio::test]
async fn purged_entries_are_deleted_by_later_appends() {
    let dir = tempdir();
    {
        let mut store = open(dir.path());
        store
            .blocking_append(entries(1, 1..=2000))
            .await
            .expect("append");
        store.purge(log_id(1, 1500)).await.expect("purge");
        assert_eq!(all_entries(&mut store).await, entries(1, 1501..=2000));
        let some = store.try_get_log_entries(0..1600).await.expect("read");
        assert_eq!(some, entries(1, 1501..=1599));
        let below = store.try_get_log_entries(10..=1500).await.expect("read");
        assert!(below.is_empty(), "read {} purged entries", below.len());
        assert_eq!(
            store.get_log_state().await.expect("log state"),
            LogState {
                last_purged_log_id: Some(log_id(1, 1500)),
                last_log_id: Some(log_id(1, 2000)),
            }
        );
        assert_eq!(
            store.log_state_summary().expect("summary").first_index,
            Some(1501)
        );
        // 1,500 purged entries, at most 64 deleted per append.
        for index in 2001..=2030 {
            store
                .blocking_append(entries(1, index..=index))
                .await
                .expect("append");
        }
        // Purging everything: the last log id is the marker even while entries remain.
        store.purge(log_id(1, 2030)).await.expect("purge all");
        assert!(all_entries(&mut store).await.is_empty());
        assert_eq!(
            store.get_log_state().await.expect("log state"),
            LogState {
                last_purged_log_id: Some(log_id(1, 2030)),
                last_log_id: Some(log_id(1, 2030)),
            }
        );
        let summary = store.log_state_summary().expect("summary");
        assert_eq!((summary.first_index, summary.last_index), (None, None));
    }
    // On disk, without the store's open-time cleanup: the first purge is gone, the second
    // (no append since) is not yet.
    let db = must_reopen("raw open", || sled::open(dir.path()));
    let logs = db.open_tree(schema::LOGS_TREE).expect("logs tree");
    assert_eq!(logs.range(..=log_key(1500)).count(), 0);
    assert_eq!(logs.range(log_key(1501)..).count(), 530);
    drop(logs);
    drop(db);
    // Reopening deletes what is left.
    let mut store = open(dir.path());
    assert!(all_entries(&mut store).await.is_empty());
    assert_eq!(
        store.log_state_summary().expect("summary"),
        LogStateSummary {
            first_index: None,
            last_index: None,
            last_purged_index: Some(2030),
        }
    );
}

#[tokio::test]
async fn interrupted_purge_is_completed_on_open() {
    let dir = tempdir();
    {
        let mut store = open(dir.path());
        store
            .blocking_append(entries(1, 1..=10))
            .await
            .expect("append");
    }
    {
        // Simulate a crash between the two steps of `purge`: the marker is on disk but the
        // entries below it are not deleted yet.
        let db = must_reopen("raw open", || sled::open(dir.path()));
        let meta = db.open_tree(schema::META_TREE).expect("meta tree");
        let marker = encode_value(&log_id(1, 4)).expect("encode");
        meta.insert(schema::KEY_LAST_PURGED, marker)
            .expect("insert");
        db.flush().expect("flush");
    }

    let mut store = open(dir.path());
    assert_eq!(all_entries(&mut store).await, entries(1, 5..=10));
    assert_eq!(
        store.log_state_summary().expect("summary"),
        LogStateSummary {
            first_index: Some(5),
            last_index: Some(10),
            last_purged_index: Some(4),
        }
    );
}

#[tokio::test]
async fn corrupt_data_is_an_error_not_a_panic() {
    let dir = tempdir();
    let db = must_reopen("raw open", || sled::open(dir.path()));
    let mut store = Store::from_db(db.clone(), dir.path()).expect("store");
    store
        .blocking_append(entries(1, 1..=4))
        .await
        .expect("append");
    let logs = db.open_tree(schema::LOGS_TREE).expect("logs tree");
    let meta = db.open_tree(schema::META_TREE).expect("meta tree");

    // Garbage bytes in the middle of the log.
    logs.insert(log_key(2), &[0xff, 0xfe, 0x00][..])
        .expect("corrupt");
    assert_read_error(
        store.try_get_log_entries(1..=4).await,
        "log entry at index 2",
    );
    assert_eq!(
        store
            .try_get_log_entries(3..=4)
            .await
            .expect("intact range"),
        entries(1, 3..=4)
    );

    // Truncated bytes of a valid entry as the last entry.
    let valid = encode_value(&normal_entry(1, 4)).expect("encode");
    logs.insert(log_key(4), &valid[..valid.len() - 1])
        .expect("corrupt");
    assert_read_error(store.get_log_state().await, "log entry at index 4");

    // A valid entry stored under the wrong index.
    logs.insert(
        log_key(4),
        encode_value(&normal_entry(1, 9)).expect("encode"),
    )
    .expect("misplace");
    assert_read_error(store.try_get_log_entries(4..5).await, "carries log index 9");

    // A key that is not an 8-byte index (sorts after every valid key).
    logs.remove(log_key(4)).expect("remove");
    logs.insert(&[0xff; 9][..], &[0_u8][..]).expect("bad key");
    assert_read_error(store.get_log_state().await, "corrupt key");
    assert!(matches!(
        store.log_state_summary(),
        Err(LogStoreError::CorruptLogKey { len: 9 })
    ));
    logs.remove(&[0xff; 9][..]).expect("remove");

    // Corrupt metadata values.
    meta.insert(schema::KEY_VOTE, &[1_u8, 2][..])
        .expect("corrupt vote");
    assert_read_error(store.read_vote().await, "vote");
    meta.insert(schema::KEY_COMMITTED, &[7_u8][..])
        .expect("corrupt committed");
    assert_read_error(store.read_committed().await, "committed");
    meta.insert(schema::KEY_LAST_PURGED, &[9_u8; 3][..])
        .expect("corrupt purged");
    assert_read_error(store.get_log_state().await, "last purged");
    assert!(matches!(
        store.log_state_summary(),
        Err(LogStoreError::Decode { .. })
    ));
    drop(store);

    // Reopening a corrupt database fails cleanly too.
    assert!(matches!(
        Store::from_db(db.clone(), dir.path()),
        Err(LogStoreError::Decode { .. })
    ));
    meta.remove(schema::KEY_LAST_PURGED).expect("remove");
    meta.insert(
        schema::KEY_FORMAT_VERSION,
        encode_value(&99_u32).expect("encode"),
    )
    .expect("future format");
    assert!(matches!(
        Store::from_db(db, dir.path()),
        Err(LogStoreError::UnsupportedFormat {
            found: 99,
            expected: schema::FORMAT_VERSION,
        })
    ));
}

#[tokio::test]
async fn second_open_of_the_same_dir_fails() {
    let dir = tempdir();
    let _store = open(dir.path());
    assert!(matches!(
        Store::open(dir.path()),
        Err(LogStoreError::Open { .. })
    ));
}

/// sled's flush stops at `sync_file_range` (no device cache flush, no metadata) and never
/// syncs a large value's blob file: every durable write must be followed by the store's own
/// `fdatasync` of the log file and an `fsync` of each new blob file.
#[tokio::test]
async fn durable_writes_sync_the_log_file_and_new_blob_files() {
    let dir = tempdir();
    let mut store = open(dir.path());
    let before = store.sync_counts();

    store
        .blocking_append(entries(1, 1..=3))
        .await
        .expect("append");
    let after_append = store.sync_counts();
    assert!(
        after_append.log_file > before.log_file,
        "an append must fdatasync the log file: {before:?} -> {after_append:?}"
    );
    assert_eq!(
        after_append.blob_files, before.blob_files,
        "small entries have no blob"
    );

    store.save_vote(&Vote::new(2, 1)).await.expect("vote");
    let after_vote = store.sync_counts();
    assert!(
        after_vote.log_file > after_append.log_file,
        "a vote must be synced"
    );

    // A value above a quarter of sled's 512 KiB segment goes to a file of its own.
    let big = Entry {
        log_id: log_id(2, 4),
        payload: EntryPayload::Normal(Request {
            key: "big".to_owned(),
            value: "x".repeat(300 * 1024),
        }),
    };
    store
        .blocking_append(vec![big.clone()])
        .await
        .expect("append a large entry");
    let blobs = std::fs::read_dir(dir.path().join("blobs"))
        .expect("sled wrote the large entry as a blob")
        .count();
    assert!(blobs >= 1, "expected a blob file for a 300 KiB entry");
    let after_big = store.sync_counts();
    assert!(
        after_big.blob_files > after_vote.blob_files,
        "the new blob file must be fsynced: {after_vote:?} -> {after_big:?}"
    );
    assert!(after_big.log_file > after_vote.log_file);

    // The next durable write does not sync that blob again.
    store
        .blocking_append(entries(2, 5..=5))
        .await
        .expect("append");
    assert_eq!(store.sync_counts().blob_files, after_big.blob_files);
    assert_eq!(
        store
            .try_get_log_entries(4..=4)
            .await
            .expect("read the large entry"),
        vec![big]
    );
}

/// The crash itself: run only as the child process of
/// [`acknowledged_append_survives_a_crash`]; a no-op in a normal test run.
#[test]
fn crash_child_append_then_exit() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_DIR_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // No background flusher: only the store's own flushes reach the disk.
        let db = sled::Config::new()
            .path(&dir)
            .flush_every_ms(None)
            .open()
            .expect("open db");
        let mut store = Store::from_db(db.clone(), Path::new(&dir)).expect("store");
        // Returns only once the LogFlushed callback has fired.
        store
            .blocking_append(entries(1, 1..=3))
            .await
            .expect("append");

        // Control: a write after the last flush, which the crash below must lose.
        let logs = db.open_tree(schema::LOGS_TREE).expect("logs tree");
        let late = encode_value(&normal_entry(1, 4)).expect("encode");
        logs.insert(log_key(4), late).expect("insert");

        // Exit without running destructors, so sled gets no shutdown flush: a crash.
        std::process::exit(0);
    });
}

/// The append callback fires only once entries are durable: a process that dies right after
/// the callback keeps every acknowledged entry, while an unflushed write is lost.
#[tokio::test]
async fn acknowledged_append_survives_a_crash() {
    let dir = tempdir();
    let exe = std::env::current_exe().expect("test executable");
    // Output is captured: the child exits before the harness can report its test result.
    let output = Command::new(exe)
        .args([
            "crash_child_append_then_exit",
            "--exact",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_DIR_ENV, dir.path())
        .output()
        .expect("run crash child");
    assert!(
        output.status.success(),
        "crash child failed: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );

    let mut store = open(dir.path());
    assert_eq!(
        all_entries(&mut store).await,
        entries(1, 1..=3),
        "acknowledged entries must survive and the unflushed control write must be lost"
    );
}
