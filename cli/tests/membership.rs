//! Membership changes on real `nokv serve` processes and a real etcd.
//!
//! `a_dead_node_is_replaced_while_clients_write`: three nodes host the root
//! shard and a shard grafted at `/s1`; writers create files in both without
//! pause. Node 3 is SIGKILLed and `nokv node replace 3 4` moves every replica
//! it held to a new, empty node 4 (learner, catch-up by snapshot: the
//! leaders purged the start of their logs first, joint consensus). No
//! acknowledged write is lost, every write that was refused was refused
//! cleanly, and the voters of every shard are 1, 2, 4. Then, on the same
//! cluster: `shard transfer-leader`, `shard remove-replica` (the node stops
//! its replica) and `add-replica` again, `shard rebalance`, bad input
//! (unknown node, non-voter leader, reused or malformed node ids) refused
//! with nothing changed, and a fifth node given a fair share of replicas by
//! `shard rebalance --replicas`.
//!
//! Synchronisation is by polling under deadlines, never by sleeping.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{heavy_test, Cluster, WAIT};
use nokv_client::{Client, Consistency, ShardId};

/// Runs `nokv --etcd URL --cluster m1 ARGS`.
async fn nokv_etcd(url: &str, args: &[&str]) -> std::process::Output {
    let mut command = common::nokv_command();
    command.args(["--etcd", url, "--cluster", "m1"]).args(args);
    command.output().await.expect("run nokv")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The voters of `shard` as its leader reports them, if one of `among` leads it.
async fn voters(cluster: &Cluster, shard: u16, among: &[u64]) -> Option<(u64, BTreeSet<u64>)> {
    let probe = cluster.client().for_shard(ShardId(shard));
    for id in among {
        if let Ok(s) = probe.status_of(&cluster.addr(*id)).await {
            if s.role == nokv_client::Role::Leader as i32 {
                return Some((s.node_id, s.voters.iter().map(|v| v.id).collect()));
            }
        }
    }
    None
}

/// Shards the node at `id` runs a replica of.
async fn hosted(cluster: &Cluster, id: u64) -> Option<Vec<u32>> {
    let status = cluster.client().node_status(&cluster.addr(id)).await.ok()?;
    Some(status.shards.iter().map(|s| s.shard).collect())
}

/// Creates files in `dirs` in turn until `stop`, returning the paths that
/// were acknowledged, the ones whose outcome is unknown, and the longest
/// time between two acknowledgements.
async fn write_until(
    client: Client,
    worker: usize,
    dirs: Vec<String>,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, Vec<String>, Duration) {
    let mut acked = Vec::new();
    let mut unknown = Vec::new();
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let path = format!("{}/w{worker}-{n}", dirs[n % dirs.len()]);
        n += 1;
        match client.create(&path).await {
            Ok(_) => {
                longest = longest.max(last.elapsed());
                last = Instant::now();
                acked.push(path);
            }
            // A timed-out write is unknown, never assumed absent.
            Err(e) if e.code() == "UNKNOWN_OUTCOME" => unknown.push(path),
            Err(e) => panic!("create {path}: {e}"),
        }
    }
    (acked, unknown, longest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_while_clients_write() {
    let _load = heavy_test().await;
    let etcd = Etcd::must_start().await;
    let url = etcd.url();
    // Small snapshots and logs: by the time node 4 joins, the leaders have
    // purged the start of their logs, so it can catch up only by snapshot.
    let mut cluster =
        Cluster::start_on_etcd(&etcd, "m1", &["--snapshot-every", "20", "--keep-logs", "5"]).await;
    cluster.must_nokv(&["shard", "create", "/s1"]).await;

    // A fourth, empty node joins the cluster (through a node: --endpoints).
    let four = cluster.add_node().await;
    assert_eq!(four, 4);
    let added = cluster
        .must_nokv(&["node", "add", &format!("4={}", cluster.addr(4))])
        .await;
    assert!(added.contains("joined"), "{added}");
    let again = cluster
        .must_nokv(&["node", "add", &format!("4={}", cluster.addr(4))])
        .await;
    assert!(again.contains("already"), "{again}");

    // Writers in both shards, through a client that knows every node.
    let client = cluster.client_for(&[1, 2, 3, 4]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let dirs = vec![String::new(), "/s1".to_string()];
        writers.spawn(write_until(client.clone(), worker, dirs, stop.clone()));
    }
    cluster
        .wait_until(WAIT, "writers make progress", async || {
            client
                .read_dir_all("/s1", Consistency::Linearizable)
                .await
                .is_ok_and(|e| e.len() >= 20)
        })
        .await;

    // Both shards' logs no longer start at the beginning.
    for shard in [0u16, 1] {
        cluster
            .wait_until(
                WAIT,
                &format!("shard {shard} purged its log start"),
                async || {
                    let probe = cluster.client().for_shard(ShardId(shard));
                    let mut purged = true;
                    for id in [1, 2, 3] {
                        purged &= probe
                            .status_of(&cluster.addr(id))
                            .await
                            .is_ok_and(|s| s.purged_index.is_some_and(|p| p > 0));
                    }
                    purged
                },
            )
            .await;
    }

    // Node 3 dies; node 4 takes its replicas while the writers go on.
    cluster.kill(3);
    let started = Instant::now();
    let out = nokv_etcd(&url, &["node", "replace", "3", "4", "--json"]).await;
    if !out.status.success() {
        cluster.fail(format!("node replace: {}", stderr(&out)));
    }
    let replaced = started.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    eprintln!("node replace took {replaced:?}: {report}");
    for shard in [0u16, 1] {
        let (_, now) = cluster
            .wait_for(
                WAIT,
                &format!("shard {shard} has a leader among 1, 2, 4"),
                async || voters(&cluster, shard, &[1, 2, 4]).await,
            )
            .await;
        assert_eq!(now, BTreeSet::from([1, 2, 4]), "voters of shard {shard}");
    }
    // The map agrees, and node 3 is gone for good.
    let map: serde_json::Value =
        serde_json::from_str(&stdout(&nokv_etcd(&url, &["shard", "ls", "--json"]).await))
            .expect("shard ls --json is JSON");
    for s in map["shards"].as_array().expect("shards") {
        let members: BTreeSet<u64> = s["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m.as_u64())
            .collect();
        assert_eq!(members, BTreeSet::from([1, 2, 4]), "{s}");
        assert_eq!(s["learners"].as_array().map(Vec::len), Some(0), "{s}");
    }
    let nodes: serde_json::Value =
        serde_json::from_str(&stdout(&nokv_etcd(&url, &["node", "ls", "--json"]).await))
            .expect("node ls --json is JSON");
    let three = nodes["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == 3))
        .expect("node 3 listed");
    assert_eq!(three["state"], "removed", "{nodes}");
    // A client command given only --etcd reaches the nodes the map lists.
    let listed = nokv_etcd(&url, &["ls", "/"]).await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(stdout(&listed).contains("s1"), "{}", stdout(&listed));
    let reused = nokv_etcd(&url, &["node", "add", &format!("3={}", cluster.addr(3))]).await;
    assert!(!reused.status.success(), "a removed id was reused");
    assert!(
        stderr(&reused).contains("never reused"),
        "{}",
        stderr(&reused)
    );

    // Writes went on; every acknowledged one is there.
    cluster
        .wait_until(
            WAIT,
            "writers make progress after the replacement",
            async || {
                let before = client
                    .read_dir_all("/s1", Consistency::Linearizable)
                    .await
                    .map_or(0, |e| e.len());
                client.create(&format!("/s1/probe-{before}")).await.is_ok()
            },
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut unknown = 0;
    let mut longest = Duration::ZERO;
    while let Some(done) = writers.join_next().await {
        let (a, u, l) = cluster.must(done, "join a writer");
        acked.extend(a);
        unknown += u.len();
        longest = longest.max(l);
    }
    eprintln!(
        "{} creates acknowledged, {unknown} unknown, longest pause between acknowledgements \
         of one writer {longest:?}",
        acked.len()
    );
    // Node 4, which could only catch up by snapshot, holds every
    // acknowledged file too (read from its own replica).
    let on_four = cluster.client_for(&[4]);
    cluster
        .wait_until(
            WAIT,
            "node 4 has applied every acknowledged file",
            async || {
                for path in &acked {
                    if on_four.stat(path, Consistency::Stale).await.is_err() {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    for dir in ["/", "/s1"] {
        let names: BTreeSet<String> = cluster
            .must(
                client.read_dir_all(dir, Consistency::Linearizable).await,
                "list",
            )
            .into_iter()
            .map(|e| e.name)
            .collect();
        for path in acked.iter().filter(|p| {
            let parent = if p.starts_with("/s1/") { "/s1" } else { "/" };
            parent == dir
        }) {
            let name = path.rsplit('/').next().expect("a name");
            assert!(names.contains(name), "acknowledged {path} is missing");
        }
    }

    // Leadership moves on request.
    let moved = cluster
        .must_nokv(&["shard", "transfer-leader", "/s1", "4"])
        .await;
    assert!(moved.contains("node 4 leads"), "{moved}");
    let (leader, _) = cluster
        .wait_for(WAIT, "shard 1 led by node 4", async || {
            voters(&cluster, 1, &[1, 2, 4])
                .await
                .filter(|(l, _)| *l == 4)
        })
        .await;
    assert_eq!(leader, 4);
    // The reconciler records it as the shard's leader hint in the map (which
    // clients seed their leader cache from).
    cluster
        .wait_until(
            WAIT,
            "the map's leader hint of shard 1 is node 4",
            async || {
                let out = nokv_etcd(&url, &["--json", "shard", "ls"]).await;
                let listed: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                listed["shards"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["shard"] == 1 && s["leader_hint"] == 4)
            },
        )
        .await;

    // A replica leaves (its leader first hands over) and its node stops it;
    // added again, it catches up from its own disk and votes.
    cluster
        .must_nokv(&["shard", "remove-replica", "/s1", "4"])
        .await;
    let (_, now) = cluster
        .wait_for(WAIT, "shard 1 has a leader", async || {
            voters(&cluster, 1, &[1, 2]).await
        })
        .await;
    assert_eq!(now, BTreeSet::from([1, 2]));
    cluster
        .wait_until(WAIT, "node 4 stops its replica of shard 1", async || {
            hosted(&cluster, 4).await.is_some_and(|h| !h.contains(&1))
        })
        .await;
    cluster.must(
        client.create("/s1/after-removal").await,
        "write to 2 voters",
    );
    cluster
        .must_nokv(&["shard", "add-replica", "#1", "4"])
        .await;
    let (_, now) = cluster
        .wait_for(WAIT, "shard 1 has a leader", async || {
            voters(&cluster, 1, &[1, 2, 4]).await
        })
        .await;
    assert_eq!(now, BTreeSet::from([1, 2, 4]));

    // Bad input: clear errors, nothing changed.
    let before = stdout(&nokv_etcd(&url, &["shard", "ls", "--json"]).await);
    for (args, says) in [
        (
            vec!["shard", "add-replica", "/s1", "9"],
            "not in the cluster",
        ),
        (vec!["shard", "transfer-leader", "/s1", "3"], "not a member"),
        (
            vec!["shard", "remove-replica", "/nowhere", "1"],
            "no shard is grafted",
        ),
        (vec!["shard", "add-replica", "#x", "1"], "shard id"),
        (
            vec!["node", "add", "4=127.0.0.1:1"],
            "already in the cluster at",
        ),
        (vec!["node", "replace", "1", "1"], "cannot replace itself"),
    ] {
        let err = cluster.must_nokv_fail(&args).await;
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let after = stdout(&nokv_etcd(&url, &["shard", "ls", "--json"]).await);
    let revision = |s: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(s).expect("JSON")["shards"].clone()
    };
    assert_eq!(
        revision(&before),
        revision(&after),
        "bad input changed the map"
    );

    // Both shards led by one node, then rebalanced: leaders differ by at most one.
    for shard in ["/", "/s1"] {
        cluster
            .must_nokv(&["shard", "transfer-leader", shard, "1"])
            .await;
    }
    let out = cluster.must_nokv(&["shard", "rebalance"]).await;
    eprintln!("rebalance: {out}");
    let counts = cluster
        .wait_for(WAIT, "leaders spread", async || {
            let mut counts = std::collections::BTreeMap::new();
            for shard in [0u16, 1] {
                let (leader, _) = voters(&cluster, shard, &[1, 2, 4]).await?;
                *counts.entry(leader).or_insert(0) += 1;
            }
            counts.values().all(|c| *c <= 1).then_some(counts)
        })
        .await;
    eprintln!("leaders per node: {counts:?}");

    // A fifth, empty node joins; `shard rebalance --replicas` gives it a
    // fair share (add before remove), every shard keeps three voters.
    let five = cluster.add_node().await;
    cluster
        .must_nokv(&["node", "add", &format!("{five}={}", cluster.addr(five))])
        .await;
    let moved = cluster
        .must_nokv(&["shard", "rebalance", "--replicas"])
        .await;
    eprintln!("rebalance --replicas: {moved}");
    let nodes: serde_json::Value =
        serde_json::from_str(&stdout(&nokv_etcd(&url, &["node", "ls", "--json"]).await))
            .expect("node ls --json is JSON");
    let placed: Vec<u64> = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["state"] == "active")
        .filter_map(|n| n["placed_replicas"].as_u64())
        .collect();
    let (most, fewest) = (placed.iter().max(), placed.iter().min());
    assert!(
        matches!((most, fewest), (Some(m), Some(f)) if m - f <= 1),
        "placement {placed:?}"
    );
    for shard in [0u16, 1] {
        let (_, now) = cluster
            .wait_for(WAIT, &format!("shard {shard} has a leader"), async || {
                voters(&cluster, shard, &[1, 2, 4, five]).await
            })
            .await;
        assert_eq!(now.len(), 3, "voters of shard {shard}: {now:?}");
    }
    cluster
        .wait_until(WAIT, "node 5 runs the replicas placed on it", async || {
            hosted(&cluster, five).await.is_some_and(|h| !h.is_empty())
        })
        .await;
    cluster.must(client.create("/s1/after-rebalance").await, "write");

    // Node 5 leaves again: `node remove` (the control plane from the
    // environment this time, NOKV_ETCD and NOKV_CLUSTER, no flags) moves its
    // replicas to the other nodes first, and the node stops them.
    let out = common::nokv_command()
        .env("NOKV_ETCD", &url)
        .env("NOKV_CLUSTER", "m1")
        .args(["node", "remove", &five.to_string()])
        .output()
        .await
        .expect("run nokv");
    assert!(out.status.success(), "node remove: {}", stderr(&out));
    let nodes: serde_json::Value =
        serde_json::from_str(&stdout(&nokv_etcd(&url, &["node", "ls", "--json"]).await))
            .expect("node ls --json is JSON");
    let state = nodes["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == five)
        .map(|n| n["state"].clone());
    assert_eq!(state, Some(serde_json::json!("removed")), "{nodes}");
    for shard in [0u16, 1] {
        let (_, now) = cluster
            .wait_for(WAIT, &format!("shard {shard} without node 5"), async || {
                voters(&cluster, shard, &[1, 2, 4])
                    .await
                    .filter(|(_, v)| !v.contains(&five))
            })
            .await;
        assert_eq!(now.len(), 3, "voters of shard {shard}: {now:?}");
    }
    cluster
        .wait_until(WAIT, "node 5 stops its replicas", async || {
            hosted(&cluster, five).await.is_some_and(|h| h.is_empty())
        })
        .await;
    cluster.must(client.create("/s1/after-remove").await, "write");
    cluster.must(client.create("/after-remove").await, "write");
}
