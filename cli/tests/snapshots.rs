//! Multi-process tests of subtree snapshots through the `nokv` CLI.
//!
//! - `snapshot_reads_survive_writes_gc_failover_and_restart`: a pin taken
//!   with `nokv snapshot create` keeps showing the subtree as it was
//!   (`ls`, `stat`, `cat`, `get` with `--snapshot`) while the live files
//!   are replaced, removed and added; GC leaves the pinned body's blocks
//!   alone; the pin survives a leader SIGKILL and a restart of every
//!   replica; once it is removed its reads fail clearly and GC collects
//!   the blocks it held.
//! - Bad input (in the same test): unknown ids, a path outside the pinned
//!   subtree, a zero lease: clear one-line errors.
//!
//! Synchronisation is by polling under deadlines, never by sleeping.

mod common;

use std::collections::BTreeSet;

use common::store::{StoreKind, TestStore};
use common::Cluster;
use nokv_client::{Consistency, PutOptions};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Names in `nokv --json ls` output.
fn listed(out: &str) -> BTreeSet<String> {
    json(out)["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {out}"))
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_reads_survive_writes_gc_failover_and_restart() {
    let _load = common::heavy_test().await;
    let store = TestStore::start(StoreKind::File)
        .await
        .expect("a local store is always available");
    let url = store.url();
    let env = store.serve_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // No timed archive passes: `gc --now` must itself get the archive to
    // hold the release of the pin (a GC task waits for that).
    let mut cluster = Cluster::start_with_env(
        &[
            "--blob-store",
            url.as_str(),
            "--gc-interval",
            "1h",
            "--archive-interval",
            "1h",
        ],
        &env,
    )
    .await;
    let c = cluster.client();
    let opts = PutOptions::default();
    cluster.must(c.mkdir("/ck", true).await, "mkdir /ck");
    cluster.must(c.mkdir("/other", true).await, "mkdir /other");
    cluster.must(c.put_bytes("/ck/a", b"version one", &opts).await, "put v1");
    cluster.must(c.create("/ck/b").await, "create /ck/b");

    let created = json(
        &cluster
            .must_nokv(&["--json", "snapshot", "create", "/ck", "--lease", "1h"])
            .await,
    );
    let id = created["id"].as_u64().expect("snapshot id").to_string();
    assert_eq!(created["path"], "/ck");

    // The live subtree moves on.
    cluster.must(c.put_bytes("/ck/a", b"version two!", &opts).await, "put v2");
    cluster.must(c.unlink("/ck/b").await, "rm /ck/b");
    cluster.must(c.mkdir("/ck/new", false).await, "mkdir /ck/new");

    let check_pinned = async |cluster: &Cluster, when: &str| {
        let at = ["--snapshot", id.as_str()];
        let names = listed(
            &cluster
                .must_nokv(&[&["--json", "ls"][..], &at, &["/ck"]].concat())
                .await,
        );
        assert_eq!(
            names,
            BTreeSet::from(["a".into(), "b".into()]),
            "{when}: ls at the pin"
        );
        let cat = cluster
            .must_nokv(&[&["cat"][..], &at, &["/ck/a"]].concat())
            .await;
        assert_eq!(cat, "version one", "{when}: cat at the pin");
        let stat = json(
            &cluster
                .must_nokv(&[&["--json", "stat"][..], &at, &["/ck/a"]].concat())
                .await,
        );
        assert_eq!(stat["generation"], 1, "{when}: stat at the pin: {stat}");
        assert_eq!(
            cluster.must_nokv(&["cat", "/ck/a"]).await,
            "version two!",
            "{when}: the live file"
        );
    };
    check_pinned(&cluster, "after the writes").await;

    // GC may not touch the pinned body's blocks, grace or not.
    let gc = json(&cluster.must_nokv(&["--json", "gc", "--now"]).await);
    assert_eq!(gc["objects_deleted"], 0, "{gc}");
    check_pinned(&cluster, "after GC").await;

    // Bad input: clear errors, one line each.
    let unknown = cluster
        .must_nokv_fail(&["cat", "--snapshot", "999", "/ck/a"])
        .await;
    assert!(unknown.contains("snapshot 999"), "{unknown}");
    let outside = cluster
        .must_nokv_fail(&["ls", "--snapshot", id.as_str(), "/other"])
        .await;
    assert!(outside.contains("outside"), "{outside}");
    let renew = cluster.must_nokv_fail(&["snapshot", "renew", "999"]).await;
    assert!(renew.contains("snapshot 999"), "{renew}");
    let zero = cluster
        .must_nokv_fail(&["snapshot", "create", "/ck", "--lease", "0s"])
        .await;
    assert!(zero.contains("lease"), "{zero}");

    // The pin is replicated: it survives losing the leader...
    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    cluster.kill(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    cluster.must_agreed_leader(&survivors).await;
    check_pinned(&cluster, "after a leader kill").await;
    cluster.restart(leader).await;
    // ... and a restart of every replica.
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    for id in [1, 2, 3] {
        cluster.restart(id).await;
    }
    cluster.must_agreed_leader(&[1, 2, 3]).await;
    check_pinned(&cluster, "after restarting every replica").await;
    let listed_pins = json(&cluster.must_nokv(&["--json", "snapshot", "ls"]).await);
    assert_eq!(listed_pins["snapshots"].as_array().map(Vec::len), Some(1));

    // Released: reads at it fail, and its blocks are collected.
    cluster.must_nokv(&["snapshot", "rm", id.as_str()]).await;
    let gone = cluster
        .must_nokv_fail(&["cat", "--snapshot", id.as_str(), "/ck/a"])
        .await;
    assert!(gone.contains(&format!("snapshot {id}")), "{gone}");
    let gc = json(&cluster.must_nokv(&["--json", "gc", "--now"]).await);
    assert_eq!(
        gc["objects_deleted"], 1,
        "the pinned body's one block: {gc}"
    );
    let fsck = json(&cluster.must_nokv(&["--json", "fsck"]).await);
    assert_eq!(fsck["problems"].as_array().map(Vec::len), Some(0), "{fsck}");
    assert!(cluster
        .must(
            c.snapshots(Consistency::Linearizable).await,
            "list snapshots"
        )
        .is_empty());
}
