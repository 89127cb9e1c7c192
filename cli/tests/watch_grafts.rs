//! Multi-process test of a recursive watch above grafts, with a real etcd.
//!
//! - `a_recursive_watch_spans_grafts_and_resumes_without_gap_or_duplicate`: three
//!   shards are grafted below `/w` (two side by side, one nested in another) and
//!   written to, as is `/w` itself. `nokv watch /w --recursive --json` shows every
//!   event below `/w` in all four shards once, with global paths, each shard's in its
//!   commit order, and nothing from outside `/w`. Resumed with `--from` the cursor of
//!   event k, it shows exactly the events after k on every shard (no gap, no
//!   duplicate), then the writes made since; a shard grafted below `/w` while it runs
//!   shows up. The SDK's `watch_from` resumes the same way, and a non-recursive watch
//!   stays in `/w`'s own shard.
//!
//! Synchronisation is by polling under deadlines, never by sleeping.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::etcd::Etcd;
use common::{heavy_test, Cluster, WAIT};
use futures::StreamExt;
use nokv_client::{Client, WatchCursor, WatchedEvent};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Files created in each watched directory.
const FILES: usize = 8;

/// A running `nokv --json watch PATH --recursive [--from CURSOR]` and the events it
/// printed so far. Killed on drop (its stderr is shown if the test is failing).
struct Watcher {
    child: tokio::process::Child,
    seen: Arc<Mutex<Vec<Value>>>,
    stderr: tempfile::NamedTempFile,
}

impl Watcher {
    fn spawn(cluster: &Cluster, path: &str, from: Option<&str>) -> Watcher {
        let stderr = tempfile::NamedTempFile::new().expect("watcher stderr file");
        let endpoints = cluster.endpoints().join(",");
        let mut args = vec![
            "--endpoints",
            endpoints.as_str(),
            "--json",
            "watch",
            path,
            "--recursive",
        ];
        if let Some(cursor) = from {
            args.extend(["--from", cursor]);
        }
        let mut child = common::nokv_command()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                stderr.reopen().expect("reopen the watcher stderr file"),
            ))
            .spawn()
            .expect("spawn nokv watch");
        let stdout = child.stdout.take().expect("watcher stdout");
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = seen.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("watch printed non-JSON ({e}): {line}"));
                sink.lock().expect("events lock").push(value);
            }
        });
        Watcher {
            child,
            seen,
            stderr,
        }
    }

    fn events(&self) -> Vec<Value> {
        self.seen.lock().expect("events lock").clone()
    }

    fn has_paths(&self, paths: &BTreeSet<String>) -> bool {
        let seen: BTreeSet<String> = self.events().iter().map(path).collect();
        paths.is_subset(&seen)
    }

    /// Stops the watcher and returns everything it printed.
    async fn stop(mut self) -> Vec<Value> {
        self.child.start_kill().expect("stop the watcher");
        let _ = self.child.wait().await;
        self.events()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
            eprintln!("----- nokv watch stderr:\n{text}");
        }
    }
}

fn path(e: &Value) -> String {
    e["path"].as_str().unwrap_or("-").to_string()
}

/// (shard, position in the shard's history) of a printed event.
fn key(e: &Value) -> (u64, u64) {
    (
        e["shard"].as_u64().expect("an event names its shard"),
        e["cursor"].as_u64().expect("an event has its position"),
    )
}

fn sdk_key(w: &WatchedEvent) -> (u64, u64) {
    (u64::from(w.shard.0), w.event.seq)
}

/// Per shard, positions strictly increase (commit order, no duplicate).
fn assert_shard_order(events: &[(u64, u64)], what: &str) {
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (shard, seq) in events {
        if let Some(prev) = last.insert(*shard, *seq) {
            assert!(
                prev < *seq,
                "{what}: shard {shard} went from {prev} to {seq}"
            );
        }
    }
}

/// The shard id grafted at `graft`, by the client's map.
async fn shard_at(cluster: &Cluster, client: &Client, graft: &str) -> u64 {
    cluster
        .wait_for(
            WAIT,
            &format!("the map has a shard at {graft}"),
            async || {
                let map = client.refresh_shard_map().await.ok()??;
                let shard = map.shards.values().find(|s| s.graft == graft)?;
                Some(u64::from(shard.id.0))
            },
        )
        .await
}

/// Collects the SDK's events until every path in `until` has been seen.
async fn must_collect(
    cluster: &Cluster,
    client: &Client,
    recursive: bool,
    from: WatchCursor,
    until: &BTreeSet<String>,
) -> Vec<WatchedEvent> {
    let mut stream = Box::pin(client.watch_from("/w", recursive, from));
    let mut got = Vec::new();
    let mut missing = until.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(w))) => {
                if let Some(p) = &w.event.path {
                    missing.remove(p);
                }
                got.push(w);
            }
            other => cluster.fail(format!(
                "watch_from /w (recursive: {recursive}) still lacks {missing:?}: {other:?}"
            )),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_watch_spans_grafts_and_resumes_without_gap_or_duplicate() {
    let _load = heavy_test().await;
    let etcd = Etcd::must_start().await;
    let cluster = Cluster::start_on_etcd(&etcd, "tw", &[]).await;
    let client = cluster.client();
    cluster.must(client.mkdir("/w", false).await, "mkdir /w");

    // Three shards below /w: two side by side, one nested in another.
    let grafts = ["/w/a", "/w/b", "/w/a/n"];
    for graft in grafts {
        cluster.must_nokv(&["shard", "create", graft]).await;
    }
    let mut shard_of: BTreeMap<&str, u64> = BTreeMap::from([("/w", 0)]);
    for graft in grafts {
        shard_of.insert(graft, shard_at(&cluster, &client, graft).await);
    }
    let dirs: Vec<&str> = shard_of.keys().copied().collect();

    // Files in every shard, interleaved, and one outside the watched path.
    let mut files = BTreeSet::new();
    for i in 0..FILES {
        for dir in &dirs {
            let file = format!("{dir}/f{i}");
            cluster.must(client.create(&file).await, "create a file");
            files.insert(file);
        }
    }
    cluster.must(client.create("/outside").await, "create outside /w");

    // From the start: every event below /w, in every shard, once.
    let watcher = Watcher::spawn(&cluster, "/w", None);
    cluster
        .wait_until(WAIT, "the watcher shows every file", async || {
            watcher.has_paths(&files)
        })
        .await;
    let first = watcher.stop().await;
    let keys: Vec<(u64, u64)> = first.iter().map(key).collect();
    assert_shard_order(&keys, "first watch");
    assert_eq!(
        keys.iter().collect::<BTreeSet<_>>().len(),
        keys.len(),
        "no event twice"
    );
    for e in &first {
        let p = path(e);
        assert!(p == "/w" || p.starts_with("/w/"), "event outside /w: {e}");
        // The shard that owns the path's directory reported it (graft points are
        // entries of the shard above, and their directory is the child's root).
        // (A graft point itself may be either side's: skip it.)
        let dir = p.rsplit_once('/').map_or("/", |(d, _)| d);
        if shard_of.contains_key(p.as_str()) {
            continue;
        }
        if let Some(shard) = shard_of.get(dir) {
            assert_eq!(e["shard"].as_u64(), Some(*shard), "{e}");
        }
    }
    let shown: BTreeSet<String> = first.iter().map(path).collect();
    assert!(
        files.is_subset(&shown),
        "missing: {:?}",
        files.difference(&shown)
    );
    // A grafted shard is read whole from its root: its positions run 1, 2, 3, ...
    for graft in grafts {
        let shard = shard_of[graft];
        let seqs: Vec<u64> = keys
            .iter()
            .filter(|(s, _)| *s == shard)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{graft}");
        assert!(seqs.len() >= FILES, "{graft}: {seqs:?}");
    }
    // Each event's resume cursor names every shard's last event so far.
    let mut running = WatchCursor::new();
    for e in &first {
        let (shard, seq) = key(e);
        running.set(nokv_client::ShardId(shard as u16), seq);
        let resume: WatchCursor = e["resume"]
            .as_str()
            .expect("resume is a string")
            .parse()
            .expect("resume parses");
        assert_eq!(resume, running, "{e}");
    }

    // Resume after event k: exactly the events after it on every shard...
    let k = first.len() / 2;
    let cursor = first[k - 1]["resume"].as_str().expect("resume").to_string();
    let after_k: BTreeMap<u64, u64> = cursor
        .parse::<WatchCursor>()
        .expect("cursor")
        .shards()
        .map(|(s, n)| (u64::from(s.0), n))
        .collect();
    let watcher = Watcher::spawn(&cluster, "/w", Some(&cursor));
    // ...then the writes made since. A mark in every shard, once shown, means each
    // shard has shown everything before it.
    let mut marks = BTreeSet::new();
    for dir in &dirs {
        let mark = format!("{dir}/mark");
        cluster.must(client.create(&mark).await, "create a mark");
        marks.insert(mark);
    }
    cluster
        .wait_until(WAIT, "the resumed watcher shows every mark", async || {
            watcher.has_paths(&marks)
        })
        .await;
    // A shard grafted below /w while the watch runs shows up in it.
    cluster.must_nokv(&["shard", "create", "/w/late"]).await;
    let late = shard_at(&cluster, &client, "/w/late").await;
    cluster.must(client.create("/w/late/x").await, "create in the late shard");
    // The graft entry is /w's shard's last event, the file the late shard's.
    let late_paths = BTreeSet::from(["/w/late".to_string(), "/w/late/x".to_string()]);
    cluster
        .wait_until(
            WAIT,
            "the resumed watcher shows the late graft and its file",
            async || watcher.has_paths(&late_paths),
        )
        .await;
    let second = watcher.stop().await;
    let second_keys: Vec<(u64, u64)> = second.iter().map(key).collect();
    assert_shard_order(&second_keys, "resumed watch");
    let resumed: BTreeSet<(u64, u64)> = second_keys.iter().copied().collect();
    assert_eq!(resumed.len(), second_keys.len(), "no event twice");
    // No gap: every event after k of the first run.
    let expected: BTreeSet<(u64, u64)> = keys[k..].iter().copied().collect();
    let missing: Vec<_> = expected.difference(&resumed).collect();
    assert!(
        missing.is_empty(),
        "resumed from {cursor}, missing {missing:?}"
    );
    // No duplicate: nothing at or before the cursor, and anything new is a write made
    // after the first run.
    for e in &second {
        let (shard, seq) = key(e);
        assert!(
            seq > after_k.get(&shard).copied().unwrap_or(0),
            "resumed from {cursor}, got an event already delivered: {e}"
        );
        if !expected.contains(&(shard, seq)) {
            let p = path(e);
            assert!(
                marks.contains(&p) || p == "/w/late" || shard == late,
                "an event that is neither after k nor new: {e}"
            );
        }
    }
    let late_event = second
        .iter()
        .find(|e| path(e) == "/w/late/x")
        .expect("seen");
    assert_eq!(late_event["shard"].as_u64(), Some(late));

    eprintln!(
        "first watch: {} events over {} shards; resumed after event {k} ({cursor}): {} events",
        first.len(),
        shard_of.len(),
        second.len()
    );

    // The SDK resumes from the same cursor to the same events.
    let until: BTreeSet<String> = marks.union(&late_paths).cloned().collect();
    let sdk = must_collect(
        &cluster,
        &client,
        true,
        cursor.parse().expect("cursor"),
        &until,
    )
    .await;
    let sdk_keys: Vec<(u64, u64)> = sdk.iter().map(sdk_key).collect();
    assert_shard_order(&sdk_keys, "SDK watch");
    let sdk_set: BTreeSet<(u64, u64)> = sdk_keys.iter().copied().collect();
    assert_eq!(sdk_set.len(), sdk_keys.len(), "no event twice (SDK)");
    assert_eq!(sdk_set, resumed, "the SDK and the CLI resume alike");

    // A non-recursive watch stays in /w's own shard: /w and its direct children.
    let direct = BTreeSet::from(["/w/mark".to_string()]);
    let flat = must_collect(&cluster, &client, false, WatchCursor::new(), &direct).await;
    for w in &flat {
        assert_eq!(w.shard.0, 0, "{w:?}");
        let p = w.event.path.clone().unwrap_or_default();
        assert!(
            p == "/w" || (p.starts_with("/w/") && !p["/w/".len()..].contains('/')),
            "not /w or a direct child: {p}"
        );
    }
    assert!(flat.iter().any(|w| w.event.path.as_deref() == Some("/w/a")));
    drop(etcd);
}

/// Events of an SDK watch, gathered in the background.
struct Gathered {
    seen: Arc<Mutex<Vec<WatchedEvent>>>,
    /// How the stream ended, once it has.
    ended: Arc<Mutex<Option<Option<nokv_client::ClientError>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gathered {
    fn start(client: &Client, path: &str, recursive: bool) -> Gathered {
        let seen: Arc<Mutex<Vec<WatchedEvent>>> = Arc::default();
        let ended: Arc<Mutex<Option<Option<nokv_client::ClientError>>>> = Arc::default();
        let (sink, end) = (seen.clone(), ended.clone());
        let mut stream = Box::pin(client.watch_from(path, recursive, WatchCursor::new()));
        let task = tokio::spawn(async move {
            let outcome = loop {
                match stream.next().await {
                    Some(Ok(w)) => sink.lock().expect("events lock").push(w),
                    Some(Err(e)) => break Some(e),
                    None => break None,
                }
            };
            *end.lock().expect("end lock") = Some(outcome);
        });
        Gathered { seen, ended, task }
    }

    fn events(&self) -> Vec<WatchedEvent> {
        self.seen.lock().expect("events lock").clone()
    }

    fn has(&self, path: &str) -> bool {
        self.events()
            .iter()
            .any(|w| w.event.path.as_deref() == Some(path))
    }

    fn ended(&self) -> Option<Option<nokv_client::ClientError>> {
        self.ended.lock().expect("end lock").clone()
    }
}

impl Drop for Gathered {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A watch routed by a map that a graft made since has outdated is refused by the node
/// (`STALE_MAP`, on the wire) and routed again by the SDK: on the same shard it resumes
/// from its cursor, with nothing lost or repeated; for a path that now belongs to a new
/// shard it reads that shard if it has delivered nothing yet, and otherwise ends with
/// `WRONG_SHARD` naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_routed_by_an_old_map_is_routed_again() {
    let _load = heavy_test().await;
    let etcd = Etcd::must_start().await;
    let mut cluster = Cluster::start_on_etcd(&etcd, "ts", &[]).await;
    let client = cluster.client();
    cluster.must(client.mkdir("/v", false).await, "mkdir /v");
    cluster.must(client.create("/v/before").await, "create /v/before");
    // Clients that read the map before the grafts below were made.
    let stale = cluster.client();
    let stale_too = cluster.client();
    let mut old = 0;
    for c in [&stale, &stale_too] {
        let map = cluster.must(c.shard_map().await, "read the map");
        old = map.expect("a cluster on etcd has a shard map").revision.0;
    }
    cluster.must_nokv(&["shard", "create", "/v/g"]).await;
    cluster.must_nokv(&["shard", "create", "/v/m"]).await;
    let g = shard_at(&cluster, &client, "/v/g").await;
    let m = shard_at(&cluster, &client, "/v/m").await;
    let new = cluster
        .must(client.refresh_shard_map().await, "read the map")
        .expect("a map")
        .revision
        .0;

    // On the wire: every node refuses a stream routed by the old map (each learns the
    // new one from etcd on its own), naming its own revision; with the new one it serves.
    for id in cluster.ids() {
        let mut raw = cluster.raw(id).await;
        let request = |map_revision| nokv_proto::pb::WatchRequest {
            path: "/v".into(),
            recursive: true,
            shard: 0,
            map_revision,
            ..Default::default()
        };
        let detail = cluster
            .wait_for(
                WAIT,
                &format!("node {id} refuses the old map"),
                async || {
                    let refused = raw.watch(request(old)).await.err()?;
                    nokv_proto::detail_of(&refused)
                },
            )
            .await;
        assert_eq!(detail.code, "STALE_MAP", "node {id}: {detail:?}");
        assert!(detail.map_revision >= new, "node {id}: {detail:?}");
        assert!(detail.message.contains("refresh the map"), "{detail:?}");
        cluster.must(
            raw.watch(request(new)).await,
            "a stream routed by the new map",
        );
    }

    // The SDK, same owner: the stream is refused, the map read again, and /v's shard
    // read from the start under the new revision; the grafts below are read too.
    let same = Gathered::start(&stale, "/v", true);
    cluster.must(client.create("/v/g/x").await, "create in /v/g");
    cluster.must(client.create("/v/after").await, "create /v/after");
    cluster
        .wait_until(
            WAIT,
            "the stale client's watch shows every file",
            async || {
                ["/v/before", "/v/g/x", "/v/after"]
                    .iter()
                    .all(|p| same.has(p))
            },
        )
        .await;
    assert_eq!(same.ended(), None, "the watch goes on");
    let keys: Vec<(u64, u64)> = same.events().iter().map(sdk_key).collect();
    assert_shard_order(&keys, "stale client's watch");
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len());

    // The SDK, the path now a graft, nothing delivered yet: it reads the new owner.
    let moved = Gathered::start(&stale_too, "/v/m", true);
    cluster.must(client.create("/v/m/y").await, "create in /v/m");
    cluster
        .wait_until(WAIT, "the watch of /v/m shows /v/m/y", async || {
            moved.has("/v/m/y")
        })
        .await;
    let y = moved
        .events()
        .into_iter()
        .find(|w| w.event.path.as_deref() == Some("/v/m/y"))
        .expect("seen");
    assert_eq!(u64::from(y.shard.0), m, "read from /v/m's shard");

    // While running: two watches read node 1 (their client knows no other endpoint
    // first). Grafts are made below and at their paths, node 1 is killed, and each
    // resumes on another node with its old revision.
    let reader = cluster.client_for(&[1]);
    cluster.must(reader.shard_map().await, "read the map");
    let below = Gathered::start(&reader, "/v", true);
    let at = Gathered::start(&reader, "/v/n", false);
    cluster.must(client.create("/v/mark").await, "create /v/mark");
    cluster
        .wait_until(WAIT, "the running watch shows /v/mark", async || {
            below.has("/v/mark")
        })
        .await;
    cluster.must_nokv(&["shard", "create", "/v/h"]).await;
    cluster.must_nokv(&["shard", "create", "/v/n"]).await;
    let n = shard_at(&cluster, &client, "/v/n").await;
    cluster
        .wait_until(WAIT, "the watches show the graft entries", async || {
            below.has("/v/h") && at.has("/v/n")
        })
        .await;
    cluster.kill(1);
    cluster.must(client.create("/v/h/z").await, "create in /v/h");
    cluster.must(client.create("/v/late").await, "create /v/late");
    cluster
        .wait_until(WAIT, "the resumed watch shows the new files", async || {
            below.has("/v/h/z") && below.has("/v/late")
        })
        .await;
    assert_eq!(below.ended(), None, "the recursive watch goes on");
    let keys: Vec<(u64, u64)> = below.events().iter().map(sdk_key).collect();
    assert_shard_order(&keys, "resumed watch");
    assert_eq!(
        keys.iter().collect::<BTreeSet<_>>().len(),
        keys.len(),
        "no event twice across the reconnection"
    );
    // /v/n is shard n's root now: its cursor means nothing there, so the watch ends,
    // naming the shard.
    let ended = cluster
        .wait_for(WAIT, "the watch of /v/n ends", async || at.ended())
        .await;
    match ended {
        Some(nokv_client::ClientError::WrongShard {
            shard,
            graft_path,
            message,
        }) => {
            assert_eq!(u64::from(shard), n, "{message}");
            assert_eq!(graft_path, "/v/n", "{message}");
            assert!(message.contains("watch /v/n again"), "{message}");
        }
        other => cluster.fail(format!("the watch of /v/n ended with {other:?}")),
    }
    eprintln!("shards: /v/g {g}, /v/m {m}, /v/n {n}; old map {old}, new {new}");
    drop(etcd);
}
