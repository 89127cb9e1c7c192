//! Disaster recovery, with real processes: three `nokv serve` replicas
//! archive snapshots and log segments to an object store (a `file:///`
//! directory, and a real S3 server, `s3s-fs`); the whole cluster is
//! SIGKILLed and its data directories are deleted; `nokv restore` rebuilds
//! each one from the store alone; the restarted cluster elects a leader and
//! serves every write up to the recovery point.
//!
//! - `file_store_disaster_recovery`, `s3_disaster_recovery`: namespace
//!   operations and file bodies, then `nokv backup`; every acknowledged write
//!   is back after the restore (entries present, removed ones absent, bodies
//!   read back with the right digest), fsck is clean, new writes work; a
//!   snapshot pin taken before a replace comes back and still shows the old
//!   body, and the watch history comes back up to its newest cursor.
//! - `writes_after_the_last_backup_are_present_or_absent_never_corrupt`:
//!   writes keep coming after the last backup until the SIGKILL. Each one is
//!   back or not (depending on whether the periodic archiver shipped it),
//!   but the ones that are back form a prefix of the acknowledged sequence,
//!   their bodies read back intact, and no live block is missing.
//!
//! Synchronisation is by polling under deadlines, never by sleeping. Set
//! `NOKV_TEST_KEEP_DIRS=1` to keep every node's data and log, and
//! `NOKV_SKIP_S3=1` to skip the S3 variant.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::store::{StoreKind, TestStore};
use common::{nokv_command, Cluster, WAIT};
use nokv_client::{Client, Consistency, FileType, PublishMode, PutOptions, RenameMode};
use serde_json::Value;

/// Small snapshot interval and segments, so that the store holds several
/// snapshots (retention at work) and many segments; a short archive interval.
const ARCHIVE_ARGS: [&str; 8] = [
    "--snapshot-every",
    "50",
    "--keep-logs",
    "10",
    "--archive-interval",
    "300ms",
    "--segment-entries",
    "40",
];

/// Block size of the bodies: small, so that a body spans several blocks.
const BLOCK: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_disaster_recovery() {
    let _load = common::heavy_test().await;
    disaster_recovery(StoreKind::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_disaster_recovery() {
    let _load = common::heavy_test().await;
    disaster_recovery(StoreKind::S3).await;
}

/// `len` pseudo-random bytes, different for every `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn put_options() -> PutOptions {
    PutOptions {
        mode: PublishMode::Upsert,
        block_size: BLOCK,
        producer: "recovery-test".into(),
        ..Default::default()
    }
}

/// A cluster archiving to a fresh store of `kind` (`None`: S3 skipped).
async fn start(kind: StoreKind) -> Option<(TestStore, Cluster)> {
    let store = TestStore::start(kind).await?;
    let url = store.url();
    let mut args = vec!["--blob-store", url.as_str()];
    args.extend_from_slice(&ARCHIVE_ARGS);
    let env = store.serve_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cluster = Cluster::start_with_env(&args, &env).await;
    Some((store, cluster))
}

/// Runs `nokv ARGS --json`, requires success and parses the output.
async fn must_nokv_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.push("--json");
    let out = cluster.must_nokv(&full).await;
    serde_json::from_str(&out)
        .unwrap_or_else(|e| cluster.fail(format!("`nokv {args:?} --json` printed {out:?}: {e}")))
}

fn field(cluster: &Cluster, v: &Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| cluster.fail(format!("no {name} in {v}")))
}

/// `nokv backup`: the recovery point it reports.
async fn must_backup(cluster: &Cluster) -> u64 {
    let all = must_nokv_json(cluster, &["backup"]).await;
    // One shard (the cluster has no others): its recovery point.
    let v = match all["shards"].as_array().map(Vec::as_slice) {
        Some([one]) if one["shard"].as_u64() == Some(0) => one.clone(),
        _ => cluster.fail(format!("expected shard 0's recovery point alone: {all}")),
    };
    let archived = field(cluster, &v, "archived_index");
    let snapshot = field(cluster, &v, "snapshot_index");
    let key = v["snapshot_key"].as_str().unwrap_or_default();
    if !key.starts_with("meta/shard-0/snapshots/") || snapshot > archived {
        cluster.fail(format!("unexpected backup answer {v}"));
    }
    archived
}

/// The highest applied index any replica reports.
async fn max_applied(cluster: &Cluster) -> u64 {
    let mut max = 0;
    for id in cluster.ids() {
        max = max.max(cluster.applied(id).await.unwrap_or(0));
    }
    max
}

/// SIGKILLs every replica, deletes every data directory, runs `nokv
/// restore` for each node from the store, restarts them and waits for a
/// leader. Returns the recovery point (the same for every node).
async fn must_lose_disks_and_restore(cluster: &mut Cluster, store: &TestStore) -> u64 {
    for id in cluster.ids() {
        cluster.kill(id);
    }
    let url = store.url();
    let env = store.serve_env();
    let mut points = BTreeSet::new();
    for id in cluster.ids() {
        let dir = cluster.node_data_dir(id);
        std::fs::remove_dir_all(&dir)
            .unwrap_or_else(|e| cluster.fail(format!("delete {}: {e}", dir.display())));
        let report = must_restore(cluster, &url, &env, &dir, id).await;
        points.insert(field(cluster, &report, "recovery_point"));
        let members: BTreeSet<String> = report["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let expected: BTreeSet<String> = cluster
            .ids()
            .into_iter()
            .map(|i| format!("{i}={}", cluster.addr(i)))
            .collect();
        if members != expected {
            cluster.fail(format!(
                "restored membership {members:?}, expected {expected:?}"
            ));
        }
    }
    if points.len() != 1 {
        cluster.fail(format!(
            "the nodes were restored to different points: {points:?}"
        ));
    }
    for id in cluster.ids() {
        cluster.restart(id).await;
    }
    cluster.must_agreed_leader(&cluster.ids()).await;
    points.pop_first().unwrap_or_default()
}

async fn must_restore(
    cluster: &Cluster,
    url: &str,
    env: &[(&'static str, String)],
    dir: &Path,
    id: u64,
) -> Value {
    let out = nokv_command()
        .arg("restore")
        .args(["--blob-store", url, "--node-id", &id.to_string(), "--json"])
        .arg("--data-dir")
        .arg(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .unwrap_or_else(|e| cluster.fail(format!("cannot run nokv restore: {e}")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        cluster.fail(format!(
            "`nokv restore` of node {id} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| cluster.fail(format!("`nokv restore --json` printed {stdout:?}: {e}")))
}

async fn must_exist(cluster: &Cluster, client: &Client, path: &str, kind: FileType) {
    let attr = cluster.must(
        client.stat(path, Consistency::Linearizable).await,
        &format!("stat {path} after the restore"),
    );
    if attr.file_type != kind {
        cluster.fail(format!(
            "{path} is a {:?}, expected {kind:?}",
            attr.file_type
        ));
    }
}

async fn must_be_absent(cluster: &Cluster, client: &Client, path: &str) {
    match client.stat(path, Consistency::Linearizable).await {
        Err(e) if e.is_not_found() => {}
        other => cluster.fail(format!("{path} should not exist, stat gave {other:?}")),
    }
}

/// Reads `path` whole (the SDK verifies the digest) and compares the bytes.
async fn must_read_back(cluster: &Cluster, client: &Client, path: &str, data: &[u8]) {
    let got = cluster.must(client.get(path, None).await, &format!("read {path}"));
    if got.as_ref() != data {
        cluster.fail(format!(
            "{path}: read {} bytes that differ from the {} written",
            got.len(),
            data.len()
        ));
    }
}

/// Fails on any fsck problem but `ORPHAN_OBJECT` when `orphans_ok`.
async fn must_fsck(cluster: &Cluster, client: &Client, orphans_ok: bool) {
    let report = cluster.must(client.fsck().await, "fsck after the restore");
    let bad: Vec<_> = report
        .problems
        .iter()
        .filter(|p| !(orphans_ok && p.kind == "ORPHAN_OBJECT"))
        .collect();
    if !bad.is_empty() {
        cluster.fail(format!("fsck after the restore: {bad:?}"));
    }
}

async fn disaster_recovery(kind: StoreKind) {
    let Some((store, mut cluster)) = start(kind).await else {
        return;
    };
    let client = cluster.client();
    // Namespace operations: every acknowledged one is recorded as the
    // expected final state.
    let mut present: BTreeMap<String, FileType> = BTreeMap::new();
    let mut removed: Vec<String> = Vec::new();
    for dir in ["/dr", "/dr/a", "/dr/b"] {
        cluster.must(client.mkdir(dir, false).await, &format!("mkdir {dir}"));
        present.insert(dir.into(), FileType::Directory);
    }
    for i in 0..120 {
        let path = format!("/dr/a/f{i}");
        cluster.must(client.create(&path).await, &format!("create {path}"));
        present.insert(path, FileType::File);
    }
    for i in 0..10 {
        let (from, to) = (format!("/dr/a/f{i}"), format!("/dr/b/g{i}"));
        cluster.must(
            client.rename(&from, &to, RenameMode::NoReplace).await,
            &format!("rename {from}"),
        );
        present.remove(&from);
        removed.push(from);
        present.insert(to, FileType::File);
    }
    for i in 10..20 {
        let path = format!("/dr/a/f{i}");
        cluster.must(client.unlink(&path).await, &format!("unlink {path}"));
        present.remove(&path);
        removed.push(path);
    }
    cluster.must(
        client.symlink("/dr/a/f20", "/dr/link").await,
        "symlink /dr/link",
    );
    present.insert("/dr/link".into(), FileType::Symlink);
    // Bodies: empty, small, several blocks, one replaced.
    let mut bodies: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, len) in [0, 1_000, BLOCK * 7 / 2, 200 * 1024]
        .into_iter()
        .enumerate()
    {
        let path = format!("/dr/body{i}");
        let data = pattern(i as u64 + 1, len);
        cluster.must(
            client.put_bytes(&path, &data, &put_options()).await,
            &format!("put {path}"),
        );
        bodies.insert(path, data);
    }
    // A pin taken before the replace must survive the restore and keep
    // showing the old body (whose blocks GC must therefore keep).
    let pin = cluster.must(
        client
            .create_snapshot("/dr", Duration::from_secs(3600))
            .await,
        "snapshot /dr",
    );
    let pinned_body1 = bodies["/dr/body1"].clone();
    let replaced = pattern(99, BLOCK + 17);
    cluster.must(
        client
            .put_bytes("/dr/body1", &replaced, &put_options())
            .await,
        "replace /dr/body1",
    );
    bodies.insert("/dr/body1".into(), replaced);

    let acknowledged = max_applied(&cluster).await;
    let mut newest_cursor = 0;
    for id in cluster.ids() {
        if let Some(s) = cluster.status(id).await {
            newest_cursor = newest_cursor.max(s.newest_cursor);
        }
    }
    let archived = must_backup(&cluster).await;
    if archived < acknowledged {
        cluster.fail(format!(
            "backup's recovery point {archived} is behind the acknowledged writes at {acknowledged}"
        ));
    }

    // The store holds the newest snapshots (older ones deleted) and segments.
    // Retention runs after a snapshot's upload, which the backup does not
    // wait for: poll until it has.
    let blobs = cluster.must(client.blob_store().await, "open the cluster's store");
    cluster
        .wait_until(
            WAIT,
            "the store holds 2-3 snapshots (older ones deleted) and some segments",
            async || {
                let snapshots = blobs.list("meta/shard-0/snapshots/").await;
                let segments = blobs.list("meta/shard-0/log/").await;
                matches!((snapshots, segments), (Ok(s), Ok(g))
                    if (2..=3).contains(&s.len()) && !g.is_empty())
            },
        )
        .await;

    let point = must_lose_disks_and_restore(&mut cluster, &store).await;
    if point < archived {
        cluster.fail(format!(
            "restored to {point}, the backup promised {archived}"
        ));
    }
    // Restore never writes into a directory that has data.
    let busy = cluster.node_data_dir(1);
    let out = nokv_command()
        .args(["restore", "--blob-store", &store.url(), "--node-id", "1"])
        .arg("--data-dir")
        .arg(&busy)
        .envs(store.serve_env())
        .output()
        .await
        .unwrap_or_else(|e| cluster.fail(format!("cannot run nokv restore: {e}")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains("is not empty") {
        cluster.fail(format!(
            "restore into a live data directory must fail: {} / {stderr}",
            out.status
        ));
    }
    let client = cluster.client();
    for (path, kind) in &present {
        must_exist(&cluster, &client, path, *kind).await;
    }
    for path in &removed {
        must_be_absent(&cluster, &client, path).await;
    }
    let listed = cluster.must(
        client
            .read_dir_all("/dr/a", Consistency::Linearizable)
            .await,
        "list /dr/a",
    );
    let expected: BTreeSet<String> = (20..120).map(|i| format!("f{i}")).collect();
    if common::names(&listed) != expected {
        cluster.fail(format!("/dr/a lists {:?}", common::names(&listed)));
    }
    let target = cluster.must(
        client
            .read_link("/dr/link", Consistency::Linearizable)
            .await,
        "readlink /dr/link",
    );
    assert_eq!(target, "/dr/a/f20");
    for (path, data) in &bodies {
        must_read_back(&cluster, &client, path, data).await;
    }
    let at_pin = cluster.must(
        client.at_snapshot(pin.id).get("/dr/body1", None).await,
        "read /dr/body1 at the restored pin",
    );
    assert_eq!(
        &at_pin[..],
        &pinned_body1[..],
        "the pin shows the body before the replace"
    );
    let pins = cluster.must(
        client.snapshots(Consistency::Linearizable).await,
        "list pins after the restore",
    );
    assert_eq!(pins.iter().map(|p| p.id).collect::<Vec<_>>(), vec![pin.id]);
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the watch history is back up to its newest cursor",
            async || {
                let leader = cluster.agreed_leader(&cluster.ids()).await;
                match leader {
                    Some(id) => cluster
                        .status(id)
                        .await
                        .is_some_and(|s| s.newest_cursor >= newest_cursor && s.oldest_cursor == 0),
                    None => false,
                }
            },
        )
        .await;
    must_fsck(&cluster, &client, true).await;
    for id in cluster.ids() {
        let applied = cluster.applied(id).await.unwrap_or(0);
        if applied < point {
            // Followers catch up with the leader's new entries; wait for it.
            let leader = cluster.must_agreed_leader(&cluster.ids()).await;
            cluster.must_catch_up(id, leader).await;
        }
    }
    // The restored cluster takes new writes and archives them.
    cluster.must(
        client.mkdir("/dr/after", false).await,
        "mkdir after the restore",
    );
    let archived_again = must_backup(&cluster).await;
    if archived_again <= point {
        cluster.fail(format!(
            "the restored cluster's backup reached {archived_again}, not past {point}"
        ));
    }
    cluster.must_all_run();
}

/// One write after the backup, in acknowledgement order.
enum Late {
    Create(String),
    Body(String, Vec<u8>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_the_last_backup_are_present_or_absent_never_corrupt() {
    let _load = common::heavy_test().await;
    let Some((store, mut cluster)) = start(StoreKind::File).await else {
        return;
    };
    let client = cluster.client();
    cluster.must(client.mkdir("/late", false).await, "mkdir /late");
    for i in 0..60 {
        let path = format!("/late/early{i}");
        cluster.must(client.create(&path).await, &format!("create {path}"));
    }
    let early_body = pattern(7, BLOCK * 2 + 5);
    cluster.must(
        client
            .put_bytes("/late/early-body", &early_body, &put_options())
            .await,
        "put /late/early-body",
    );
    let archived = must_backup(&cluster).await;

    // Writes after the backup, one at a time, until the crash: creates and,
    // now and then, a body.
    let mut late: Vec<Late> = Vec::new();
    for i in 0..240 {
        if i % 40 == 39 {
            let path = format!("/late/body{i}");
            let data = pattern(1000 + i, BLOCK + (i as usize * 97) % BLOCK);
            cluster.must(
                client.put_bytes(&path, &data, &put_options()).await,
                &format!("put {path}"),
            );
            late.push(Late::Body(path, data));
        } else {
            let path = format!("/late/after{i}");
            cluster.must(client.create(&path).await, &format!("create {path}"));
            late.push(Late::Create(path));
        }
    }

    let point = must_lose_disks_and_restore(&mut cluster, &store).await;
    if point < archived {
        cluster.fail(format!(
            "restored to {point}, the backup promised {archived}"
        ));
    }
    let client = cluster.client();
    for i in 0..60 {
        must_exist(
            &cluster,
            &client,
            &format!("/late/early{i}"),
            FileType::File,
        )
        .await;
    }
    must_read_back(&cluster, &client, "/late/early-body", &early_body).await;

    // The late writes that came back are a prefix of the acknowledged
    // sequence (the restored log is a prefix of the committed log), and a
    // body that came back is whole.
    let mut back = 0;
    let mut first_missing: Option<String> = None;
    for write in &late {
        let path = match write {
            Late::Create(p) | Late::Body(p, _) => p,
        };
        match client.stat(path, Consistency::Linearizable).await {
            Ok(_) => {
                if let Some(missing) = &first_missing {
                    cluster.fail(format!(
                        "{path} came back although the earlier write {missing} did not"
                    ));
                }
                if let Late::Body(p, data) = write {
                    must_read_back(&cluster, &client, p, data).await;
                }
                back += 1;
            }
            Err(e) if e.is_not_found() => {
                first_missing.get_or_insert_with(|| path.clone());
            }
            Err(e) => cluster.fail(format!("stat {path}: {e:?}")),
        }
    }
    eprintln!(
        "{back} of {} writes after the backup came back (recovery point {point}, backup {archived})",
        late.len()
    );
    // Blocks of bodies whose commit was lost are orphans; no live block may
    // be missing.
    must_fsck(&cluster, &client, true).await;
    cluster.must(
        client.create("/late/after-restore").await,
        "create after the restore",
    );
    cluster.must_all_run();
}
