//! Multi-process test of `Watch` through `nokv watch`.
//!
//! - `a_recursive_watcher_sees_every_commit_once_across_leader_kills`: a
//!   `nokv watch / --recursive --json` process runs while 8 SDK tasks make
//!   2,000 mutations (creates and removes of their own files) and the
//!   leader is SIGKILLed twice (the first time, the replica the watcher
//!   reads from). The watcher reconnects with its cursor; afterwards its
//!   output has contiguous cursors from 1 (no gap, no duplicate) in commit
//!   order, one event per acknowledged mutation, at most one per mutation
//!   whose outcome was unknown, and nothing that was never attempted.
//! - Bad input (in the same test): a malformed path and a relative path
//!   are refused with one-line errors.
//! - `retention_is_configurable_and_an_expired_cursor_names_the_oldest`:
//!   retention set by `nokv watch-retention` applies on every replica, an
//!   expired cursor names the oldest usable one, and retentions past the
//!   bounds (10^6 events, 30 days) are refused and change nothing.
//! - `watch_streams_per_node_are_bounded`: a node limited to two watch
//!   streams refuses a third as unavailable, and a closed stream frees its
//!   place.
//!
//! Synchronisation is by polling under deadlines, never by sleeping.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Cluster;
use nokv_client::ClientError;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const TASKS: usize = 8;
const PER_TASK: usize = 250;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Ok,
    Unknown,
    Failed,
}

fn fate<T>(r: &Result<T, ClientError>) -> Fate {
    match r {
        Ok(_) => Fate::Ok,
        Err(ClientError::Unknown(_)) => Fate::Unknown,
        Err(_) => Fate::Failed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_watcher_sees_every_commit_once_across_leader_kills() {
    let _load = common::heavy_test().await;
    let mut cluster = Cluster::start(&[]).await;
    let c = cluster.client();
    cluster.must(c.mkdir("/w", false).await, "mkdir /w");

    // The watcher reads from the leader first, so the first kill cuts it off.
    let first = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let order: Vec<u64> = std::iter::once(first)
        .chain([1, 2, 3].into_iter().filter(|n| *n != first))
        .collect();
    let endpoints: Vec<String> = order.iter().map(|id| cluster.addr(*id)).collect();
    let mut watcher = common::nokv_command()
        .args([
            "--endpoints",
            &endpoints.join(","),
            "--json",
            "watch",
            "/",
            "--recursive",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nokv watch");
    let stdout = watcher.stdout.take().expect("watcher stdout");
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = seen.clone();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("watch printed non-JSON ({e}): {line}"));
            sink.lock().expect("events lock").push(value);
        }
    });

    // 8 tasks, each creating its own files and removing every third one.
    let fates: Arc<Mutex<BTreeMap<(String, &'static str), Fate>>> = Arc::default();
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let c = c.clone();
        let fates = fates.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            let mut done = 0;
            while done < PER_TASK {
                let path = format!("/w/t{t}-{i}");
                let created = c.create(&path).await;
                let f = fate(&created);
                fates
                    .lock()
                    .expect("fates")
                    .insert((path.clone(), "create"), f);
                done += 1;
                if f == Fate::Ok && i % 3 == 0 && done < PER_TASK {
                    let removed = c.unlink(&path).await;
                    fates
                        .lock()
                        .expect("fates")
                        .insert((path, "remove"), fate(&removed));
                    done += 1;
                }
                i += 1;
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    // Two leader kills, a third and two thirds of the way through.
    let total_creates = TASKS * PER_TASK * 3 / 4;
    for (k, fraction) in [(1usize, 3usize), (2, 3)] {
        let target = total_creates * k / fraction;
        cluster
            .wait_until(Duration::from_secs(120), "mutations progress", async || {
                progress.load(std::sync::atomic::Ordering::Relaxed) >= target
            })
            .await;
        let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
        cluster.kill(leader);
        let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
        cluster.must_agreed_leader(&survivors).await;
        cluster.restart(leader).await;
    }
    for task in tasks {
        task.await.expect("mutation task");
    }
    // A last create marks the end: once the watcher shows it, it has shown
    // everything committed before it.
    cluster.must(c.create("/w/done").await, "create the end marker");
    cluster
        .wait_until(
            Duration::from_secs(60),
            "the watcher sees the end marker",
            async || {
                seen.lock()
                    .expect("events")
                    .iter()
                    .any(|e| e["path"] == "/w/done")
            },
        )
        .await;
    watcher.start_kill().expect("stop the watcher");
    let _ = watcher.wait().await;
    let _ = reader.await;

    let events = seen.lock().expect("events").clone();
    // Contiguous cursors from the first mutation: no gap, no duplicate,
    // in commit order.
    let cursors: Vec<u64> = events
        .iter()
        .map(|e| e["cursor"].as_u64().expect("cursor"))
        .collect();
    let expected: Vec<u64> = (1..=cursors.len() as u64).collect();
    assert_eq!(
        cursors, expected,
        "cursors must run 1, 2, 3, ... with nothing missing or repeated"
    );
    let indexes: Vec<u64> = events
        .iter()
        .map(|e| e["index"].as_u64().expect("index"))
        .collect();
    assert!(
        indexes.windows(2).all(|w| w[0] <= w[1]),
        "events in commit (log) order"
    );
    // Each mutation's events: exactly one when acknowledged, at most one
    // when unknown, none when it failed or was never attempted.
    let mut counts: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for e in &events {
        let path = e["path"].as_str().unwrap_or("-").to_string();
        let kind = match e["type"].as_str() {
            Some("create") => "create",
            Some("remove") => "remove",
            Some("mkdir") if path == "/w" => continue,
            other => panic!("unexpected event type {other:?}: {e}"),
        };
        *counts.entry((path, kind)).or_default() += 1;
    }
    counts.remove(&("/w/done".to_string(), "create"));
    let fates = fates.lock().expect("fates").clone();
    let mut unknown = 0;
    for (key, fate) in &fates {
        let n = counts.remove(key).unwrap_or(0);
        match fate {
            Fate::Ok => assert_eq!(n, 1, "{key:?} was acknowledged: exactly one event"),
            Fate::Unknown => {
                unknown += 1;
                assert!(
                    n <= 1,
                    "{key:?} had an unknown outcome: at most one event, saw {n}"
                )
            }
            Fate::Failed => assert_eq!(n, 0, "{key:?} failed: no event"),
        }
    }
    assert!(
        counts.is_empty(),
        "events for mutations never attempted: {counts:?}"
    );
    let acknowledged = fates.values().filter(|f| **f == Fate::Ok).count();
    assert!(
        acknowledged >= TASKS * PER_TASK * 9 / 10,
        "too few acknowledged: {acknowledged}"
    );
    eprintln!(
        "watch: {} events, {acknowledged} acknowledged mutations, {unknown} unknown",
        events.len()
    );

    // Bad input: one-line errors.
    let relative = cluster.must_nokv_fail(&["watch", "relative"]).await;
    assert!(relative.contains("not absolute"), "{relative}");
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_is_configurable_and_an_expired_cursor_names_the_oldest() {
    use futures::StreamExt;
    let _load = common::light_test().await;
    let cluster = Cluster::start(&[]).await;
    let set = json(
        &cluster
            .must_nokv(&["--json", "watch-retention", "--events", "3", "--age", "1h"])
            .await,
    );
    assert_eq!(
        (set["max_events"].as_u64(), set["max_age_ms"].as_u64()),
        (Some(3), Some(3_600_000))
    );
    let c = cluster.client();
    for i in 0..5 {
        cluster.must(c.create(&format!("/r{i}")).await, "create");
    }
    // Five events, three kept: every replica reports cursors 2..5.
    for id in [1, 2, 3] {
        cluster
            .wait_until(
                Duration::from_secs(30),
                "the replica applies all five",
                async || {
                    cluster
                        .status(id)
                        .await
                        .is_some_and(|s| s.newest_cursor == 5)
                },
            )
            .await;
        let s = cluster.status(id).await.expect("status");
        assert_eq!((s.oldest_cursor, s.watch_max_events), (2, 3), "node {id}");
    }
    // Too old: a clear one-line error naming the oldest usable cursor.
    let expired = cluster
        .must_nokv_fail(&["watch", "/", "--recursive", "--from", "1"])
        .await;
    assert!(
        expired.contains("cursor expired") && expired.contains(" 2"),
        "{expired}"
    );
    let mut stream = Box::pin(c.watch("/", true, 0));
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Err(ClientError::CursorExpired { oldest, .. }))) => assert_eq!(oldest, 2),
        other => panic!("expected CursorExpired, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the stream ends")
            .is_none(),
        "an expired cursor ends the stream"
    );
    // From the oldest cursor: exactly the three kept events.
    let resumed: Vec<_> = tokio::time::timeout(
        Duration::from_secs(30),
        c.watch("/", true, 2).take(3).collect::<Vec<_>>(),
    )
    .await
    .expect("three events arrive");
    let paths: Vec<_> = resumed
        .into_iter()
        .map(|e| e.expect("event").path.unwrap_or_default())
        .collect();
    assert_eq!(paths, ["/r2", "/r3", "/r4"]);
    // Malformed input.
    let bad = cluster.nokv(&["watch", "/", "--from", "abc"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value"));
    let zero = cluster
        .must_nokv_fail(&["watch-retention", "--events", "0"])
        .await;
    assert!(zero.contains("retention"), "{zero}");
    // Retention is bounded: the history lives in every replica's memory.
    let huge = cluster
        .must_nokv_fail(&["watch-retention", "--events", "1000001"])
        .await;
    assert!(huge.contains("above the limit"), "{huge}");
    let old = cluster
        .must_nokv_fail(&["watch-retention", "--age", "31days"])
        .await;
    assert!(old.contains("above the limit"), "{old}");
    let kept = cluster.status(1).await.expect("status");
    assert_eq!(
        kept.watch_max_events, 3,
        "a refused retention changes nothing"
    );
}

/// A node serves at most `--max-watch-streams` watch streams at once; one
/// more is refused as unavailable with a message that says why, and a
/// stream that ends gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_per_node_are_bounded() {
    use nokv_proto::pb::meta_service_client::MetaServiceClient;
    let _load = common::light_test().await;
    let cluster = Cluster::start(&["--max-watch-streams", "2"]).await;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(1)))
        .expect("a valid endpoint URI");
    let channel = cluster.must(endpoint.connect().await, "connect to node 1");
    let mut rpc = MetaServiceClient::new(channel);
    let request = || nokv_proto::pb::WatchRequest {
        path: "/".into(),
        recursive: true,
        after_cursor: 0,
        shard: 0,
        map_revision: 0,
    };
    let first = cluster.must(rpc.watch(request()).await, "first watch");
    let _second = cluster.must(rpc.watch(request()).await, "second watch");
    match rpc.watch(request()).await {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(status.message().contains("watch streams"), "{status:?}");
        }
        Ok(_) => panic!("a third watch stream on a node limited to two was opened"),
    }
    // Another replica still has room.
    let elsewhere = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(2)))
        .expect("a valid endpoint URI");
    let mut rpc2 = MetaServiceClient::new(cluster.must(elsewhere.connect().await, "connect"));
    cluster.must(rpc2.watch(request()).await, "watch on node 2");
    // Closing a stream gives its place back (once the node notices).
    drop(first);
    cluster
        .wait_until(
            Duration::from_secs(30),
            "a closed stream's place is free again",
            async || rpc.watch(request()).await.is_ok(),
        )
        .await;
}
