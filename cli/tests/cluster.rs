//! Multi-process integration tests of a three-replica NoKV cluster.
//!
//! Every test runs real `nokv serve` processes on loopback ports (see
//! `common/mod.rs`) and proves one externally visible promise:
//!
//! - `cluster_forms_and_serves`: `nokv cluster init` forms one group with a
//!   single agreed leader and three voters, and every namespace command of
//!   the CLI works end to end; bad requests fail with one line on stderr.
//! - `thousand_creates_then_leader_sigkill`: concurrent writes are all
//!   acknowledged and visible; after a SIGKILL of the leader a new leader
//!   takes writes within seconds; a restarted node catches up and then serves
//!   everything ever acknowledged once another node dies.
//! - `follower_catches_up_by_snapshot`: a follower that fell behind the
//!   leader's purged log is brought up to date by a snapshot and then answers
//!   stale reads of data written while it was down.
//! - `a_leader_whose_uncommitted_writes_a_snapshot_replaced_takes_writes_again`:
//!   a deposed leader whose in-flight batches were replaced by a snapshot
//!   (openraft never answers them) takes writes when it leads again
//!   (regression test, docs/jepsen.md ledger entry 7).
//! - `a_follower_on_a_slow_link_catches_up_by_snapshot_without_an_election`:
//!   a follower whose snapshot chunks each take longer than the leader
//!   lease (a 1 MiB/s link) still catches up, and no election happens
//!   meanwhile (regression test, docs/jepsen.md ledger entry 5).
//! - `full_cluster_sigkill_keeps_acknowledged_writes`: killing every replica
//!   mid-write loses no acknowledged write and invents none.
//! - `exactly_once_retry`: a request id applies once, also when the retry
//!   reaches a different leader.
//! - `bad_input_changes_nothing_and_never_panics`: malformed client and Raft
//!   messages (typed, raw protobuf bytes, raw TCP) are refused with the
//!   documented codes, change nothing, and crash no replica.
//! - `stale_and_linearizable_reads`: linearizable reads see acknowledged
//!   writes through any endpoint; a follower serves stale reads from its own
//!   state, even without a quorum, and redirects linearizable ones.
//! - `batched_calls_answer_each_request_as_a_lone_call_would`: the SDK's
//!   bulk create and concurrent stats travel in batched calls; each request
//!   of a `MutateBatch`/`QueryBatch` gets the answer a lone call would
//!   (refusals, routing hints, exactly-once within one batch), and batches
//!   that cannot be looked at are refused whole and change nothing.
//! - `followers_serve_linearizable_reads_through_a_read_index`: with
//!   `--follower-reads`, a follower answers a linearizable read right after
//!   an acknowledged write and sees it; a client spreading its reads is
//!   answered by every replica; with the leader frozen a follower refuses
//!   rather than answer from its own state.
//! - `linearizable_read_after_leader_restart_sees_acknowledged_write`: a
//!   read right after a leader restart sees a write that was acknowledged
//!   before the SIGKILL (regression test; see `meta-node/src/read_index.rs`).
//! - `a_leader_without_quorum_releases_writes_in_flight`: with both followers
//!   frozen (SIGSTOP), a write in flight on the leader is answered
//!   UNKNOWN_OUTCOME once the quorum lease runs out, not after 10 s.
//! - `a_fatal_storage_error_ends_the_process_with_an_error`: a replica
//!   that cannot write a snapshot (openraft stops its Raft) exits non-zero
//!   instead of serving with a dead Raft; the two others go on.
//!
//! Synchronisation is by polling under deadlines, never by sleeping. Set
//! `NOKV_TEST_KEEP_DIRS=1` to keep every node's data and full log, and
//! `RUST_LOG` to raise the replicas' log level.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::slow_link::SlowLink;
use common::{heavy_test, light_test, names, Cluster, WAIT};
use nokv_client::{
    Applied, Client, ClientError, Consistency, EntryRef, InodeId, Op, RequestId, XattrFlag,
};
use nokv_proto::pb::raft_service_client::RaftServiceClient;
use nokv_proto::pb::{self, meta_service_client::MetaServiceClient};
use nokv_proto::pb::{entry_ref, inode_ref, mutate_request, query_request};
use serde_json::Value;
use tonic::transport::Channel;

/// Creates every path with `tasks` concurrent workers sharing `client`, and
/// returns each path's outcome.
async fn create_concurrently(
    client: &Client,
    paths: &[String],
    tasks: usize,
) -> Vec<(String, Result<(), ClientError>)> {
    let paths = Arc::new(paths.to_vec());
    let workers: Vec<_> = (0..tasks)
        .map(|task| {
            let client = client.clone();
            let paths = paths.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for path in paths.iter().skip(task).step_by(tasks) {
                    let outcome = client.create(path).await.map(|_| ());
                    outcomes.push((path.clone(), outcome));
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.expect("create worker panicked"));
    }
    outcomes
}

/// Creates every path concurrently and fails the test if any create fails.
async fn must_create_all(cluster: &Cluster, client: &Client, paths: &[String], tasks: usize) {
    let failed: Vec<_> = create_concurrently(client, paths, tasks)
        .await
        .into_iter()
        .filter_map(|(path, outcome)| outcome.err().map(|e| format!("{path}: {e}")))
        .collect();
    if !failed.is_empty() {
        cluster.fail(format!(
            "{} of {} creates failed, first ones: {:?}",
            failed.len(),
            paths.len(),
            &failed[..failed.len().min(5)]
        ));
    }
}

/// `count` paths `DIR/PREFIXnnnn`.
fn numbered(dir: &str, prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{dir}/{prefix}{i:04}"))
        .collect()
}

/// The final components of `paths`.
fn basenames(paths: &[String]) -> BTreeSet<String> {
    paths
        .iter()
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        .collect()
}

/// Every name in `dir`, read with `consistency`, or a failed test.
async fn must_list(
    cluster: &Cluster,
    client: &Client,
    dir: &str,
    consistency: Consistency,
) -> BTreeSet<String> {
    names(&cluster.must(
        client.read_dir_all(dir, consistency).await,
        &format!("listing {dir} ({consistency:?})"),
    ))
}

fn create_op(path: &str) -> Op {
    Op::Create {
        at: EntryRef::Path(path.into()),
        mode: 0o644,
        uid: 0,
        gid: 0,
    }
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_forms_and_serves() {
    let _load = light_test().await;
    let cluster = Cluster::spawn(&[]).await;
    cluster.must_init().await;

    // `status --json` converges on one leader that every node follows.
    // Election safety (never two leaders in one term) must hold in every
    // sample, not just the last one.
    let status = cluster
        .wait_for(
            WAIT,
            "`nokv status --json` shows one leader that all three nodes follow",
            async || {
                let out = cluster.nokv(&["status", "--json"]).await;
                let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                let nodes = v["nodes"].as_array()?.clone();
                let mut leaders_by_term: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
                for n in nodes.iter().filter(|n| n["role"] == "leader") {
                    leaders_by_term
                        .entry(n["term"].as_u64()?)
                        .or_default()
                        .push(n["node_id"].as_u64()?);
                }
                if let Some((term, ids)) = leaders_by_term.iter().find(|(_, ids)| ids.len() > 1) {
                    cluster.fail(format!("two leaders {ids:?} in term {term}: {v}"));
                }
                let leaders: Vec<u64> = leaders_by_term.into_values().flatten().collect();
                let agreed = nodes
                    .iter()
                    .all(|n| n["leader_id"].as_u64() == leaders.first().copied());
                (out.status.success() && nodes.len() == 3 && leaders.len() == 1 && agreed)
                    .then_some(v)
            },
        )
        .await;
    assert_eq!(status["healthy"], true, "{status}");
    let nodes = status["nodes"].as_array().expect("nodes array");
    let ids: BTreeSet<u64> = nodes.iter().filter_map(|n| n["node_id"].as_u64()).collect();
    assert_eq!(ids, BTreeSet::from([1, 2, 3]), "{status}");
    let expected_voters: BTreeSet<(u64, String)> =
        (1..=3).map(|id| (id, cluster.addr(id))).collect();
    for node in nodes {
        assert_eq!(node["initialized"], true, "{node}");
        // Shard-wide state: no object store here, nothing staged, no pins,
        // the default watch retention.
        assert_eq!(node["blob_location"], "", "{node}");
        assert_eq!(node["snapshots"], 0, "{node}");
        assert_eq!(node["staged_uploads"], 0, "{node}");
        assert!(node["newest_cursor"].as_u64().is_some(), "{node}");
        assert_eq!(node["watch_max_events"], 100_000, "{node}");
        let voters: BTreeSet<(u64, String)> = node["voters"]
            .as_array()
            .expect("voters array")
            .iter()
            .map(|m| {
                let id = m["id"].as_u64().expect("voter id");
                let addr = m["addr"].as_str().expect("voter addr").to_string();
                (id, addr)
            })
            .collect();
        assert_eq!(
            voters, expected_voters,
            "every node lists the three voters: {node}"
        );
        assert_eq!(node["learners"].as_array().map(Vec::len), Some(0), "{node}");
    }

    // The namespace commands, end to end.
    cluster.must_nokv(&["mkdir", "-p", "/data/runs/1"]).await;
    cluster.must_nokv(&["mkdir", "-p", "/data/runs/1"]).await; // idempotent with -p
    cluster
        .must_nokv(&["touch", "/data/runs/1/config.json"])
        .await;
    cluster
        .must_nokv(&["touch", "/data/runs/1/weights.bin"])
        .await;
    cluster
        .must_nokv(&["touch", "/data/runs/1/weights.bin"])
        .await; // touch again: mtime only

    let listing: Value =
        serde_json::from_str(&cluster.must_nokv(&["ls", "--json", "/data/runs/1"]).await)
            .expect("ls --json prints JSON");
    let entries = listing["entries"].as_array().expect("entries array");
    let listed: BTreeMap<&str, &str> = entries
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("?"),
                e["type"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        listed,
        BTreeMap::from([("config.json", "file"), ("weights.bin", "file")]),
        "{listing}"
    );
    assert_eq!(listing["next"], Value::Null, "{listing}");

    let stat: Value = serde_json::from_str(
        &cluster
            .must_nokv(&["stat", "--json", "/data/runs/1/config.json"])
            .await,
    )
    .expect("stat --json prints JSON");
    assert_eq!(stat["type"], "file", "{stat}");
    assert_eq!(stat["path"], "/data/runs/1/config.json", "{stat}");
    assert_eq!(stat["size"], 0, "{stat}");
    assert_eq!(stat["nlink"], 1, "{stat}");
    assert_eq!(stat["mode"], "0644", "{stat}");

    cluster
        .must_nokv(&["mv", "/data/runs/1/weights.bin", "/data/runs/1/model.bin"])
        .await;
    let text = cluster.must_nokv(&["ls", "/data/runs/1"]).await;
    assert_eq!(text, "config.json\nmodel.bin\n", "plain ls after mv");
    let text = cluster.must_nokv(&["ls", "/data"]).await;
    assert_eq!(text, "runs/\n", "plain ls marks directories");

    cluster
        .must_nokv(&["ln", "-s", "/data/runs/1/model.bin", "/data/latest"])
        .await;
    let target = cluster.must_nokv(&["readlink", "/data/latest"]).await;
    assert_eq!(target, "/data/runs/1/model.bin\n");
    let stat: Value =
        serde_json::from_str(&cluster.must_nokv(&["stat", "--json", "/data/latest"]).await)
            .expect("stat --json prints JSON");
    assert_eq!(
        stat["type"], "symlink",
        "stat does not follow the final symlink: {stat}"
    );

    cluster
        .must_nokv(&[
            "xattr",
            "set",
            "/data/runs/1/model.bin",
            "user.sha",
            "abc123",
        ])
        .await;
    let value = cluster
        .must_nokv(&["xattr", "get", "/data/runs/1/model.bin", "user.sha"])
        .await;
    assert_eq!(value, "abc123\n");

    // Errors: non-zero exit, one line on stderr, and nothing changes.
    let long_name = format!("/data/{}", "x".repeat(256));
    let failures: [(&[&str], &str); 7] = [
        (&["rmdir", "/data/runs/1"], "not empty"),
        (&["mkdir", "/a/../b"], ".."),
        (&["mkdir", "relative/dir"], "not absolute"),
        (&["touch", &long_name], "too long"),
        (&["stat", "/data/missing"], "no such file"),
        (&["mkdir", "/data"], "exists"),
        (&["readlink", "/data/runs/1/model.bin"], "invalid argument"),
    ];
    for (args, expected) in failures {
        let line = cluster.must_nokv_fail(args).await;
        assert!(
            line.starts_with("nokv: ") && line.to_lowercase().contains(expected),
            "`nokv {}` should fail mentioning {expected:?}, printed: {line}",
            args.join(" ")
        );
    }

    cluster.must_nokv(&["rm", "/data/latest"]).await;
    cluster.must_nokv(&["rm", "/data/runs/1/model.bin"]).await;
    cluster.must_nokv(&["rm", "/data/runs/1/config.json"]).await;
    cluster.must_nokv(&["rmdir", "/data/runs/1"]).await;
    let listing: Value =
        serde_json::from_str(&cluster.must_nokv(&["ls", "--json", "/data/runs"]).await)
            .expect("ls --json prints JSON");
    assert_eq!(listing["entries"], Value::Array(vec![]), "{listing}");
    let text = cluster.must_nokv(&["ls", "/"]).await;
    assert_eq!(
        text, "data/\n",
        "only /data is left; the failed commands created nothing"
    );
}

// ---------------------------------------------------------------------------

/// The environment of a running process, as its `/proc` entry shows it.
fn environment_of(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read /proc/PID/environ");
    String::from_utf8_lossy(&raw).replace('\0', "\n")
}

/// `nokv serve` runs with two malloc arenas (cli/src/arenas.rs: it
/// re-executes itself once with `MALLOC_ARENA_MAX=2`, keeping its pid and
/// arguments) unless the variable is set, whose value it then keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_with_two_malloc_arenas_unless_told() {
    let _load = light_test().await;
    let inherited = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into());
    for (env, expected) in [
        (&[][..], inherited.as_str()),
        (&[("MALLOC_ARENA_MAX", "5")][..], "5"),
    ] {
        let cluster = Cluster::spawn_with_env(&[], env).await;
        for id in cluster.ids() {
            let pid = cluster.pid(id).expect("the node runs");
            let environment = environment_of(pid);
            assert!(
                environment
                    .lines()
                    .any(|line| line == format!("MALLOC_ARENA_MAX={expected}")),
                "node {id} (pid {pid}) should run with MALLOC_ARENA_MAX={expected}:\n{environment}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_creates_then_leader_sigkill() {
    let _load = heavy_test().await;
    let mut cluster = Cluster::start(&[]).await;
    let client = cluster.client();
    cluster.must(client.mkdir("/bulk", false).await, "mkdir /bulk");
    cluster.must(client.mkdir("/after", false).await, "mkdir /after");

    let bulk = numbered("/bulk", "f", 1000);
    let started = Instant::now();
    must_create_all(&cluster, &client, &bulk, 32).await;
    println!(
        "1000 creates with 32 concurrent tasks: {:?}",
        started.elapsed()
    );
    assert_eq!(
        must_list(&cluster, &client, "/bulk", Consistency::Linearizable).await,
        basenames(&bulk),
        "every acknowledged create is listed"
    );

    // SIGKILL the leader; a write must get through a new leader quickly.
    let first_leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    cluster.kill(first_leader);
    let killed_at = Instant::now();
    cluster.must(
        client.create("/after/first-write").await,
        "the first write after the leader's SIGKILL",
    );
    let failover = killed_at.elapsed();
    println!("leader {first_leader} SIGKILLed; first write acknowledged after {failover:?}");
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}, want < 10 s"
    );
    let after = numbered("/after", "g", 100);
    must_create_all(&cluster, &client, &after, 8).await;
    let mut after_names = basenames(&after);
    after_names.insert("first-write".into());

    // The old leader comes back and catches up with the new one.
    cluster.restart(first_leader).await;
    let second_leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    cluster.must_catch_up(first_leader, second_leader).await;

    // Now the leader dies again (or, should the restarted node have won a
    // later election, another node): the restarted node is needed for the
    // quorum and must serve everything ever acknowledged.
    let victim = if second_leader != first_leader {
        second_leader
    } else {
        cluster
            .ids()
            .into_iter()
            .find(|id| *id != first_leader)
            .expect("three nodes")
    };
    cluster.kill(victim);
    let survivors = cluster.ids_except(victim);
    let third_leader = cluster.must_agreed_leader(&survivors).await;
    println!(
        "leaders: {first_leader} -> {second_leader} -> (node {victim} killed) -> {third_leader}"
    );
    assert_eq!(
        must_list(&cluster, &client, "/bulk", Consistency::Linearizable).await,
        basenames(&bulk)
    );
    assert_eq!(
        must_list(&cluster, &client, "/after", Consistency::Linearizable).await,
        after_names
    );
    let restarted_only = cluster.client_for(&[first_leader]);
    assert_eq!(
        must_list(&cluster, &restarted_only, "/bulk", Consistency::Stale).await,
        basenames(&bulk),
        "the restarted node's own state holds every acknowledged create"
    );
    cluster.must(
        client.create("/after/with-two-nodes").await,
        "a write with the restarted node in the quorum",
    );
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_by_snapshot() {
    let _load = heavy_test().await;
    let mut cluster = Cluster::start(&["--snapshot-every", "100", "--keep-logs", "10"]).await;
    let client = cluster.client();
    cluster.must(client.mkdir("/snap", false).await, "mkdir /snap");
    let before = numbered("/snap", "before", 10);
    must_create_all(&cluster, &client, &before, 2).await;

    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    cluster.must_catch_up(follower, leader).await;
    let follower_last_log = cluster
        .status(follower)
        .await
        .and_then(|s| s.last_log_index)
        .unwrap_or_else(|| cluster.fail("the follower reports no last log index"));
    cluster.kill(follower);

    // Few concurrent writers, so group commit still makes many log entries.
    let down = numbered("/snap", "down", 1000);
    let started = Instant::now();
    must_create_all(&cluster, &client, &down, 4).await;
    println!(
        "1000 creates with node {follower} down: {:?}",
        started.elapsed()
    );

    let live = cluster.ids_except(follower);
    let leader = cluster.must_agreed_leader(&live).await;
    let purged = cluster.must_purge_past(leader, follower_last_log).await;
    println!("follower {follower} stopped at log index {follower_last_log}; leader {leader} purged up to {purged}");

    // The leader no longer has the entries the follower needs: only a
    // snapshot can bring it up to date.
    cluster.restart(follower).await;
    cluster
        .must_catch_up_by_snapshot(follower, leader, purged, WAIT)
        .await;
    let status = cluster.status(follower).await;
    println!("follower after catch-up: {status:?}");

    let follower_only = cluster.client_for(&[follower]);
    cluster.must(
        follower_only
            .stat("/snap/down0500", Consistency::Stale)
            .await,
        "stale stat, on the caught-up follower, of a file created while it was down",
    );
    let mut everything = basenames(&before);
    everything.extend(basenames(&down));
    assert_eq!(
        must_list(&cluster, &follower_only, "/snap", Consistency::Stale).await,
        everything,
        "the follower's own state holds every acknowledged create"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_uncommitted_writes_a_snapshot_replaced_takes_writes_again() {
    let _load = heavy_test().await;
    // The leader takes writes only while a quorum answered it within the
    // lease (the maximum election timeout). Step 1 must land four batches
    // inside that window after freezing both followers, so the lease here
    // is 2 s and an idle leader keeps heartbeating every 100 ms (with idle
    // heartbeats it would send one every 400 ms, and under CI's load the
    // window left after the last ack was too short: the leader refused the
    // writes instead of appending them).
    let cluster = Cluster::start(&[
        "--snapshot-every",
        "50",
        "--keep-logs",
        "5",
        "--heartbeat",
        "100ms",
        "--election-timeout-min",
        "1s",
        "--election-timeout-max",
        "2s",
        "--idle-heartbeats",
        "false",
    ])
    .await;
    let client = cluster.client();
    cluster.must(client.mkdir("/o", false).await, "mkdir /o");
    let old = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let others = cluster.ids_except(old);
    let stuck = cluster.client_for(&[old]);
    // Connected before the followers freeze.
    cluster.must(
        stuck.stat("/o", Consistency::Stale).await,
        "stat /o through the leader",
    );
    let committed = cluster
        .status(old)
        .await
        .and_then(|s| s.last_log_index)
        .unwrap_or_else(|| cluster.fail("the leader reports no last log index"));

    // 1. Both followers frozen: the leader's next batches cannot commit.
    //    One write at a time until each of the leader's four in-flight
    //    slots holds a batch (concurrent writes could share one batch),
    //    then more that queue behind them.
    for id in &others {
        cluster.signal(*id, "-STOP");
    }
    let mut writers = Vec::new();
    for (i, path) in numbered("/o", "lost", 16).into_iter().enumerate() {
        let stuck = stuck.clone();
        writers.push(tokio::spawn(async move { stuck.create(&path).await }));
        if i >= 4 {
            continue;
        }
        let want = committed + i as u64 + 1;
        cluster
            .wait_until(
                WAIT,
                &format!("leader {old} appends batch {want}, which it cannot commit"),
                async || {
                    cluster
                        .status(old)
                        .await
                        .and_then(|s| s.last_log_index)
                        .is_some_and(|last| last >= want)
                },
            )
            .await;
    }

    // 2. Old leader frozen, followers back: a new leader moves on, past a
    //    snapshot that purges everything the old leader holds.
    cluster.signal(old, "-STOP");
    for id in &others {
        cluster.signal(*id, "-CONT");
    }
    let new = cluster.must_agreed_leader(&others).await;
    let survivors = cluster.client_for(&others);
    must_create_all(&cluster, &survivors, &numbered("/o", "new", 200), 4).await;
    let old_last = committed + 16;
    let purged = cluster.must_purge_past(new, old_last).await;

    // 3. A fresh leader (elected after the purge, so its first message to
    //    the old leader is that snapshot, not a probe that would truncate
    //    the old leader's log), as in the Jepsen runs.
    let fresh = others
        .iter()
        .copied()
        .find(|id| *id != new)
        .unwrap_or_else(|| cluster.fail("no second survivor"));
    cluster.must_purge_past(fresh, old_last).await;
    cluster.must(
        survivors.transfer_leader(fresh).await,
        &format!("transfer leadership to node {fresh}"),
    );
    let leader = cluster.must_agreed_leader(&others).await;
    assert_eq!(leader, fresh, "the survivors agree on node {fresh}");

    // 4. The old leader comes back and is caught up by a snapshot, which
    //    replaces its uncommitted entries without truncating them: openraft
    //    never answers their proposals.
    cluster.signal(old, "-CONT");
    cluster
        .must_catch_up_by_snapshot(old, fresh, purged, WAIT)
        .await;
    for writer in writers {
        // Their outcome is unknown or a failure; only that they end matters.
        let _ = tokio::time::timeout(WAIT, writer).await;
    }

    // 5. It leads again, and takes writes: its in-flight slots were not
    //    kept by proposals nobody will answer.
    cluster.must(
        client.transfer_leader(old).await,
        &format!("transfer leadership back to node {old}"),
    );
    cluster.must_agreed_leader(&[1, 2, 3]).await;
    for (i, path) in numbered("/o", "after", 8).iter().enumerate() {
        let created = tokio::time::timeout(Duration::from_secs(10), client.create(path)).await;
        match created {
            Ok(Ok(_)) => {}
            other => cluster.fail(format!(
                "create {i} through node {old}, leading again, did not succeed in 10 s: {other:?}"
            )),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_a_slow_link_catches_up_by_snapshot_without_an_election() {
    let _load = heavy_test().await;
    let mut cluster = Cluster::start(&["--snapshot-every", "100", "--keep-logs", "10"]).await;
    let client = cluster.client();
    cluster.must(client.mkdir("/slow", false).await, "mkdir /slow");
    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let follower = if leader == 3 { 2 } else { 3 };
    cluster.must_catch_up(follower, leader).await;
    let follower_last_log = cluster
        .status(follower)
        .await
        .and_then(|s| s.last_log_index)
        .unwrap_or_else(|| cluster.fail("the follower reports no last log index"));
    cluster.kill(follower);

    // About 4 MiB of state (a 60 KiB xattr on each of 64 files), so the
    // snapshot the follower needs takes four 1 MiB chunks; and more than
    // `--snapshot-every` entries, so the leader purges what it missed.
    let files = numbered("/slow", "f", 64);
    must_create_all(&cluster, &client, &files, 4).await;
    for (i, path) in files.iter().enumerate() {
        let value: Vec<u8> = (0..60 * 1024u32)
            .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i as u32) >> 13) as u8)
            .collect();
        cluster.must(
            client
                .set_xattr(path, "user.blob", &value, XattrFlag::Upsert)
                .await,
            &format!("set a 60 KiB xattr on {path}"),
        );
    }
    let purged = cluster.must_purge_past(leader, follower_last_log).await;
    let term = cluster
        .status(leader)
        .await
        .map(|s| s.term)
        .unwrap_or_else(|| cluster.fail("the leader does not answer"));

    // The follower comes back behind a link of 1 MiB/s: each chunk takes
    // about a second, longer than the leader lease (800 ms here), and the
    // leader's heartbeats queue behind the chunks.
    let listen = cluster.listen_elsewhere(follower);
    let _link = SlowLink::start(&cluster.addr(follower), &listen, 1024 * 1024).await;
    let started = Instant::now();
    cluster.restart(follower).await;
    // A minute: the snapshot crosses the 1 MiB/s link.
    cluster
        .must_catch_up_by_snapshot(follower, leader, purged, Duration::from_secs(60))
        .await;
    println!(
        "follower {follower} caught up over the slow link in {:?}",
        started.elapsed()
    );

    // Catching up must not have cost an election: a follower that stands
    // while the chunks trickle in deposes the leader (its answers carry
    // the newer term), and each new leader starts the snapshot over.
    for id in cluster.ids() {
        let status = cluster
            .status(id)
            .await
            .unwrap_or_else(|| cluster.fail(format!("node {id} does not answer")));
        assert_eq!(
            (status.term, status.leader_id),
            (term, Some(leader)),
            "node {id}: a catch-up by snapshot changed the term or the leader"
        );
    }
}

// ---------------------------------------------------------------------------

/// What concurrent writers did, shared between them and the test.
#[derive(Default)]
struct Ledger {
    /// Every name a create was sent for (recorded before it was sent).
    attempted: Mutex<BTreeSet<String>>,
    /// Every name whose create was acknowledged.
    acknowledged: Mutex<BTreeSet<String>>,
    /// Creates that returned an error (their outcome is unknown).
    errors: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs 16 writers creating `/crash/r<round>-...` until `min_acks` creates
/// are acknowledged, then SIGKILLs all three replicas while the writers are
/// still going. Returns the names attempted and the names acknowledged.
async fn write_until_sigkill(
    cluster: &mut Cluster,
    round: u32,
    min_acks: usize,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let client = cluster.client();
    let ledger = Arc::new(Ledger::default());
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let client = client.clone();
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for seq in 0.. {
                    let name = format!("r{round}-w{writer:02}-{seq:06}");
                    lock(&ledger.attempted).insert(name.clone());
                    ledger.in_flight.fetch_add(1, Ordering::SeqCst);
                    let outcome = client.create(&format!("/crash/{name}")).await;
                    ledger.in_flight.fetch_sub(1, Ordering::SeqCst);
                    match outcome {
                        Ok(_) => lock(&ledger.acknowledged).insert(name),
                        Err(e) => {
                            lock(&ledger.errors).push(format!("{name}: {} ({e})", e.code()));
                            true
                        }
                    };
                }
            })
        })
        .collect();

    cluster
        .wait_until(
            WAIT,
            &format!("round {round}: writers have {min_acks} acknowledged creates"),
            async || lock(&ledger.acknowledged).len() >= min_acks,
        )
        .await;
    let in_flight_at_kill = ledger.in_flight.load(Ordering::SeqCst);
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for writer in &writers {
        writer.abort();
    }
    for writer in writers {
        let _ = writer.await; // cancelled: the in-flight creates stay "unknown"
    }
    let attempted = lock(&ledger.attempted).clone();
    let acknowledged = lock(&ledger.acknowledged).clone();
    let errors = lock(&ledger.errors).clone();
    println!(
        "round {round}, at SIGKILL: {} acknowledged, {} attempted, {in_flight_at_kill} in flight, {} errors",
        acknowledged.len(),
        attempted.len(),
        errors.len()
    );
    if errors.iter().any(|e| e.contains("EEXIST")) {
        cluster.fail(format!(
            "a create of a fresh name reported EEXIST (applied twice?): {errors:?}"
        ));
    }
    (attempted, acknowledged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_sigkill_keeps_acknowledged_writes() {
    let _load = heavy_test().await;
    // Frequent snapshots, so recovery also restores snapshots and replays
    // the log behind them.
    let mut cluster = Cluster::start(&["--snapshot-every", "20", "--keep-logs", "5"]).await;
    cluster.must(
        cluster.client().mkdir("/crash", false).await,
        "mkdir /crash",
    );

    let mut attempted = BTreeSet::new();
    let mut acknowledged = BTreeSet::new();
    for round in 1..=2 {
        let (tried, acked) = write_until_sigkill(&mut cluster, round, 400).await;
        attempted.extend(tried);
        acknowledged.extend(acked);

        for id in cluster.ids() {
            cluster.restart(id).await;
        }
        cluster.must_agreed_leader(&[1, 2, 3]).await;
        let client = cluster.client();
        let present = must_list(&cluster, &client, "/crash", Consistency::Linearizable).await;
        let lost: Vec<_> = acknowledged.difference(&present).collect();
        let invented: Vec<_> = present.difference(&attempted).collect();
        println!(
            "round {round}, after restart: {} present, {} acknowledged so far, {} attempted",
            present.len(),
            acknowledged.len(),
            attempted.len()
        );
        if !lost.is_empty() || !invented.is_empty() {
            cluster.fail(format!(
                "round {round}: acknowledged but lost: {lost:?}; present but never attempted: {invented:?}"
            ));
        }

        // A new write commits whatever the leader still held of unknown
        // outcome; afterwards every replica's own state equals the
        // linearizable view, which lost nothing that was visible before.
        let marker = format!("after-restart-{round}");
        cluster.must(
            client.create(&format!("/crash/{marker}")).await,
            "a write after restarting the whole cluster",
        );
        attempted.insert(marker.clone());
        acknowledged.insert(marker);
        let settled = must_list(&cluster, &client, "/crash", Consistency::Linearizable).await;
        let vanished: Vec<_> = present.difference(&settled).collect();
        let invented: Vec<_> = settled.difference(&attempted).collect();
        if !vanished.is_empty() || !invented.is_empty() {
            cluster.fail(format!(
                "round {round}: vanished after being read: {vanished:?}; never attempted: {invented:?}"
            ));
        }
        let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
        for id in cluster.ids() {
            cluster.must_catch_up(id, leader).await;
            let own = cluster.client_for(&[id]);
            let listed = must_list(&cluster, &own, "/crash", Consistency::Stale).await;
            if listed != settled {
                cluster.fail(format!(
                    "round {round}: node {id} recovered a different namespace: missing {:?}, extra {:?}",
                    settled.difference(&listed).collect::<Vec<_>>(),
                    listed.difference(&settled).collect::<Vec<_>>()
                ));
            }
        }
        let snapshots: Vec<Option<u64>> = {
            let mut v = Vec::new();
            for id in cluster.ids() {
                v.push(cluster.status(id).await.and_then(|s| s.snapshot_index));
            }
            v
        };
        println!(
            "round {round}: {} files settled; snapshot indexes {snapshots:?}",
            settled.len()
        );
    }
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_retry() {
    let _load = light_test().await;
    let mut cluster = Cluster::start(&[]).await;
    let client = cluster.client();

    // Same id twice: one application, the same answer twice.
    let id = RequestId(0x0e0e_0001);
    let first = cluster.must(
        client.mutate_with_id(id, create_op("/x")).await,
        "create /x",
    );
    let again = cluster.must(
        client.mutate_with_id(id, create_op("/x")).await,
        "create /x again with the same request id",
    );
    assert_eq!(again, first, "a retry returns the first result");
    assert!(
        matches!(first, Applied::Attr(_)),
        "create returns attributes: {first:?}"
    );
    let root = cluster.must(
        client.read_dir_all("/", Consistency::Linearizable).await,
        "ls /",
    );
    assert_eq!(root.iter().filter(|e| e.name == "x").count(), 1, "{root:?}");
    let fresh = client
        .mutate_with_id(RequestId(0x0e0e_0002), create_op("/x"))
        .await;
    assert_eq!(
        fresh.as_ref().map_err(ClientError::code),
        Err("EEXIST"),
        "a new request id is a new create: {fresh:?}"
    );

    // Acknowledged, then the leader dies; the retry reaches the new leader.
    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let id = RequestId(0x0e0e_0003);
    let first = cluster.must(
        client.mutate_with_id(id, create_op("/y")).await,
        "create /y",
    );
    cluster.kill(leader);
    let again = cluster.must(
        client.mutate_with_id(id, create_op("/y")).await,
        "retry of create /y after the leader's SIGKILL",
    );
    assert_eq!(
        again, first,
        "the new leader answers the retry from its dedupe table"
    );
    let fresh = client
        .mutate_with_id(RequestId(0x0e0e_0004), create_op("/y"))
        .await;
    assert_eq!(
        fresh.as_ref().map_err(ClientError::code),
        Err("EEXIST"),
        "{fresh:?}"
    );

    // In flight while the leader dies: whatever the first call saw, a
    // retry with the same id succeeds with the same answer and never
    // reports EEXIST.
    cluster.restart(leader).await;
    let second_leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    cluster.must_catch_up(leader, second_leader).await;
    let in_flight: Vec<_> = (0..16u128)
        .map(|k| {
            let client = client.clone();
            let id = RequestId(0x0e0e_1000 + k);
            let path = format!("/z{k:02}");
            tokio::spawn(async move {
                let outcome = client.mutate_with_id(id, create_op(&path)).await;
                (id, path, outcome, Instant::now())
            })
        })
        .collect();
    let killed_at = Instant::now();
    cluster.kill(second_leader);
    let mut finished_after_kill = 0;
    let mut expected_root = BTreeSet::from(["x".to_string(), "y".to_string()]);
    for task in in_flight {
        let (id, path, during, finished) = task.await.expect("an in-flight create task");
        if finished > killed_at {
            finished_after_kill += 1;
        }
        if let Err(e) = &during {
            assert_eq!(
                e.code(),
                "UNKNOWN_OUTCOME",
                "{path}: only an unknown outcome is acceptable: {e}"
            );
        }
        let again = cluster.must(
            client.mutate_with_id(id, create_op(&path)).await,
            &format!("retry of create {path} after the leader's SIGKILL"),
        );
        if let Ok(first) = during {
            assert_eq!(again, first, "{path}: the retry returns the first result");
        }
        expected_root.insert(path.trim_start_matches('/').to_string());
    }
    println!("16 creates sent as leader {second_leader} was SIGKILLed; {finished_after_kill} finished after the kill");
    let fresh = client
        .mutate_with_id(RequestId(0x0e0e_2000), create_op("/z00"))
        .await;
    assert_eq!(
        fresh.as_ref().map_err(ClientError::code),
        Err("EEXIST"),
        "{fresh:?}"
    );
    let root = names(&cluster.must(
        client.read_dir_all("/", Consistency::Linearizable).await,
        "ls /",
    ));
    assert_eq!(root, expected_root);
}

// ---------------------------------------------------------------------------

/// A gRPC codec that sends and receives raw message bytes, to put arbitrary
/// (undecodable) protobuf on the wire.
mod raw {
    use prost::bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Clone, Copy, Debug, Default)]
    pub struct RawCodec;

    #[derive(Debug)]
    pub struct RawEncoder;

    #[derive(Debug)]
    pub struct RawDecoder;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;

        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }

        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = Status;

        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let mut bytes = vec![0; src.remaining()];
            src.copy_to_slice(&mut bytes);
            Ok(Some(bytes))
        }
    }
}

async fn channel_to(cluster: &Cluster, id: u64) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(id)))
        .expect("a valid endpoint URI");
    cluster.must(endpoint.connect().await, &format!("connect to node {id}"))
}

/// Sends `body` as the raw message of the unary method `path` on node `id`.
async fn raw_call(
    cluster: &Cluster,
    id: u64,
    method: &'static str,
    body: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel_to(cluster, id).await);
    cluster.must(grpc.ready().await, "gRPC channel ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    match grpc
        .unary(tonic::Request::new(body), path, raw::RawCodec)
        .await
    {
        Ok(response) => cluster.fail(format!(
            "garbage to {method} on node {id} was accepted: {:?}",
            response.into_inner()
        )),
        Err(status) => status,
    }
}

/// Checks that `status` has gRPC code `code` and an `ErrorDetail` whose
/// code is `detail`.
fn assert_refused(case: &str, status: &tonic::Status, code: tonic::Code, detail: &str) {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    let sent = nokv_proto::detail_of(status).map(|d| d.code);
    assert_eq!(sent.as_deref(), Some(detail), "{case}: {status:?}");
}

fn at(kind: entry_ref::Kind) -> Option<pb::EntryRef> {
    Some(pb::EntryRef { kind: Some(kind) })
}

fn child(parent: u64, name: &str) -> Option<pb::EntryRef> {
    at(entry_ref::Kind::Child(pb::ChildRef {
        parent,
        name: name.into(),
    }))
}

fn path(p: &str) -> Option<pb::EntryRef> {
    at(entry_ref::Kind::Path(p.into()))
}

fn inode_path(p: &str) -> Option<pb::InodeRef> {
    Some(pb::InodeRef {
        kind: Some(inode_ref::Kind::Path(p.into())),
    })
}

/// A fresh 16-byte request id.
fn request_id(n: usize) -> Vec<u8> {
    (0xbad0_0000_u128 + n as u128).to_be_bytes().to_vec()
}

fn create_at(at: Option<pb::EntryRef>) -> Option<mutate_request::Op> {
    Some(mutate_request::Op::Create(pb::CreateOp {
        at,
        mode: 0o644,
        uid: 0,
        gid: 0,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_changes_nothing_and_never_panics() {
    let _load = light_test().await;
    let mut cluster = Cluster::start(&[]).await;
    let client = cluster.client();
    cluster.must(client.mkdir("/keep", false).await, "mkdir /keep");
    cluster.must(client.create("/keep/a").await, "create /keep/a");
    let root_id = cluster
        .must(client.stat("/", Consistency::Linearizable).await, "stat /")
        .inode
        .0;
    let namespace_before = (
        cluster.must(client.stat("/", Consistency::Linearizable).await, "stat /"),
        cluster.must(
            client.read_dir_all("/", Consistency::Linearizable).await,
            "ls /",
        ),
        cluster.must(
            client
                .read_dir_all("/keep", Consistency::Linearizable)
                .await,
            "ls /keep",
        ),
    );
    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let log_before = cluster.status(leader).await.expect("leader status");

    // Malformed mutations are refused before the leader check, by every node.
    let long = "n".repeat(256);
    let cases: Vec<(&str, Vec<u8>, Option<mutate_request::Op>, &str)> = vec![
        (
            "3-byte request id",
            vec![1, 2, 3],
            create_at(path("/bad")),
            "INVALID_ARGUMENT",
        ),
        ("missing op", request_id(1), None, "INVALID_ARGUMENT"),
        (
            "missing entry ref",
            request_id(2),
            create_at(None),
            "INVALID_ARGUMENT",
        ),
        (
            "empty name via ChildRef",
            request_id(3),
            create_at(child(root_id, "")),
            "EINVAL",
        ),
        (
            "name with '/'",
            request_id(4),
            create_at(child(root_id, "a/b")),
            "EINVAL",
        ),
        (
            "name with NUL",
            request_id(5),
            create_at(child(root_id, "a\0b")),
            "EINVAL",
        ),
        (
            "'..' as a name",
            request_id(6),
            create_at(child(root_id, "..")),
            "EINVAL",
        ),
        (
            "256-byte name",
            request_id(7),
            create_at(child(root_id, &long)),
            "ENAMETOOLONG",
        ),
        (
            "256-byte path component",
            request_id(8),
            create_at(path(&format!("/{long}"))),
            "ENAMETOOLONG",
        ),
        (
            "relative path",
            request_id(9),
            create_at(path("keep/b")),
            "EINVAL",
        ),
        (
            "'..' in a path",
            request_id(10),
            create_at(path("/keep/../b")),
            "EINVAL",
        ),
        ("empty path", request_id(11), create_at(path("")), "EINVAL"),
        (
            "unknown rename mode",
            request_id(12),
            Some(mutate_request::Op::Rename(pb::RenameOp {
                from: path("/keep/a"),
                to: path("/keep/b"),
                mode: 42,
            })),
            "INVALID_ARGUMENT",
        ),
        (
            "empty symlink target",
            request_id(13),
            Some(mutate_request::Op::Symlink(pb::SymlinkOp {
                at: path("/keep/l"),
                target: String::new(),
                uid: 0,
                gid: 0,
            })),
            "EINVAL",
        ),
        (
            "xattr value over 64 KiB",
            request_id(14),
            Some(mutate_request::Op::SetXattr(pb::SetXattrOp {
                inode: inode_path("/keep/a"),
                name: "user.big".into(),
                value: vec![7; 64 * 1024 + 1],
                flag: 0,
            })),
            "EINVAL",
        ),
    ];
    for id in cluster.ids() {
        let mut stub = MetaServiceClient::new(channel_to(&cluster, id).await);
        for (case, request_id, op, detail) in &cases {
            let request = pb::MutateRequest {
                map_revision: 0,
                shard: 0,
                request_id: request_id.clone(),
                epoch: 0,
                op: op.clone(),
            };
            match stub.mutate(request).await {
                Ok(r) => cluster.fail(format!("{case} was accepted by node {id}: {r:?}")),
                Err(status) => assert_refused(
                    &format!("{case} (node {id})"),
                    &status,
                    tonic::Code::InvalidArgument,
                    detail,
                ),
            }
        }
        // Malformed queries, too.
        let queries = [
            (
                "unknown consistency",
                pb::QueryRequest {
                    map_revision: 0,
                    shard: 0,
                    consistency: 42,
                    snapshot: 0,
                    query: Some(query_request::Query::GetAttr(pb::GetAttrQuery {
                        inode: inode_path("/"),
                    })),
                },
                "INVALID_ARGUMENT",
            ),
            (
                "missing query",
                pb::QueryRequest {
                    map_revision: 0,
                    shard: 0,
                    consistency: pb::Consistency::Stale as i32,
                    snapshot: 0,
                    query: None,
                },
                "INVALID_ARGUMENT",
            ),
            (
                "a snapshot that does not exist",
                pb::QueryRequest {
                    map_revision: 0,
                    shard: 0,
                    consistency: pb::Consistency::Stale as i32,
                    snapshot: 999,
                    query: Some(query_request::Query::GetAttr(pb::GetAttrQuery {
                        inode: inode_path("/"),
                    })),
                },
                "ENOENT",
            ),
            (
                "relative path in a query",
                pb::QueryRequest {
                    map_revision: 0,
                    shard: 0,
                    consistency: pb::Consistency::Stale as i32,
                    snapshot: 0,
                    query: Some(query_request::Query::GetAttr(pb::GetAttrQuery {
                        inode: inode_path("keep"),
                    })),
                },
                "EINVAL",
            ),
        ];
        for (case, request, detail) in queries {
            match stub.query(request).await {
                Ok(r) => cluster.fail(format!("{case} was accepted by node {id}: {r:?}")),
                Err(status) => assert_refused(
                    &format!("{case} (node {id})"),
                    &status,
                    if detail == "ENOENT" {
                        tonic::Code::NotFound
                    } else {
                        tonic::Code::InvalidArgument
                    },
                    detail,
                ),
            }
        }

        // A message over the 4 MiB limit: refused with some error.
        let oversized = pb::MutateRequest {
            map_revision: 0,
            shard: 0,
            request_id: request_id(100),
            epoch: 0,
            op: Some(mutate_request::Op::SetXattr(pb::SetXattrOp {
                inode: inode_path("/keep/a"),
                name: "user.huge".into(),
                value: vec![0x5a; 5 * 1024 * 1024],
                flag: 0,
            })),
        };
        match stub.mutate(oversized).await {
            Ok(r) => cluster.fail(format!("a 5 MiB message was accepted by node {id}: {r:?}")),
            Err(status) => {
                println!(
                    "node {id}, 5 MiB xattr: {:?} ({}), detail {:?}",
                    status.code(),
                    status.message(),
                    nokv_proto::detail_of(&status).map(|d| d.code)
                );
            }
        }

        // Garbage on the Raft transport.
        let mut raft = RaftServiceClient::new(channel_to(&cluster, id).await);
        let garbage: [(&str, Vec<u8>); 4] = [
            ("empty", vec![]),
            ("unknown format version", vec![0x42, 1, 2, 3]),
            ("truncated", vec![1, 0xde, 0xad]),
            ("hostile length prefix", [vec![1], vec![0xff; 64]].concat()),
        ];
        for (what, data) in garbage {
            let message = || pb::RaftMessage {
                data: data.clone(),
                shard: 0,
                cluster: "nokv".into(),
            };
            let results = [
                ("AppendEntries", raft.append_entries(message()).await.err()),
                ("Vote", raft.vote(message()).await.err()),
                (
                    "InstallSnapshot",
                    raft.install_snapshot(message()).await.err(),
                ),
            ];
            for (rpc, result) in results {
                let case = format!("{rpc} with {what} data (node {id})");
                let status = result.unwrap_or_else(|| cluster.fail(format!("{case} was accepted")));
                assert_refused(
                    &case,
                    &status,
                    tonic::Code::InvalidArgument,
                    "INVALID_ARGUMENT",
                );
            }
        }

        // Undecodable protobuf bytes under valid gRPC framing.
        for (method, body) in [
            ("/nokv.v1.MetaService/Mutate", vec![0xff, 0xff, 0xff, 0xff]),
            ("/nokv.v1.MetaService/Query", vec![0x0a, 0x7f, 0x01]),
            ("/nokv.v1.MetaService/MutateBatch", vec![0x0a, 0x7f, 0x01]),
            (
                "/nokv.v1.MetaService/QueryBatch",
                vec![0xff, 0xff, 0xff, 0xff],
            ),
            ("/nokv.v1.MetaService/InitCluster", vec![0x0a, 0x05, 0x08]),
            (
                "/nokv.v1.RaftService/Vote",
                vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            ),
        ] {
            let status = raw_call(&cluster, id, method, body).await;
            assert_refused(
                &format!("undecodable {method} (node {id})"),
                &status,
                tonic::Code::InvalidArgument,
                "INVALID_ARGUMENT",
            );
        }

        // Bytes that are not HTTP/2 at all, and HTTP/2 with a broken frame.
        for junk in [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            vec![0xff; 4096],
            [
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                vec![
                    0xff, 0xff, 0xff, 0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3,
                ],
            ]
            .concat(),
        ] {
            send_junk(&cluster, id, &junk).await;
        }
    }

    // Validation happens before proposing: nothing reached the log (as long
    // as no election appended its own entry in between).
    let log_after = cluster.status(leader).await.expect("leader status");
    if log_after.term == log_before.term {
        assert_eq!(
            log_after.last_log_index, log_before.last_log_index,
            "malformed requests must not reach the Raft log"
        );
    }

    // A well-formed request naming an inode that does not exist is a
    // namespace error (ENOENT), decided by the engine on the leader.
    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let mut stub = MetaServiceClient::new(channel_to(&cluster, leader).await);
    let unknown_inode = [
        (
            "SetAttr of an unknown inode id",
            mutate_request::Op::SetAttr(pb::SetAttrOp {
                inode: Some(pb::InodeRef {
                    kind: Some(inode_ref::Kind::Id(0xdead_beef)),
                }),
                mode: Some(0o600),
                ..Default::default()
            }),
        ),
        (
            "create under an unknown parent id",
            create_at(child(0xdead_beef, "x")).expect("op"),
        ),
    ];
    for (n, (case, op)) in unknown_inode.into_iter().enumerate() {
        let request = pb::MutateRequest {
            map_revision: 0,
            shard: 0,
            request_id: request_id(200 + n),
            epoch: 0,
            op: Some(op),
        };
        match stub.mutate(request).await {
            Ok(r) => cluster.fail(format!("{case} was accepted: {r:?}")),
            Err(status) => assert_refused(case, &status, tonic::Code::NotFound, "ENOENT"),
        }
    }

    // Nothing changed, and every replica is alive and answering.
    let namespace_after = (
        cluster.must(client.stat("/", Consistency::Linearizable).await, "stat /"),
        cluster.must(
            client.read_dir_all("/", Consistency::Linearizable).await,
            "ls /",
        ),
        cluster.must(
            client
                .read_dir_all("/keep", Consistency::Linearizable)
                .await,
            "ls /keep",
        ),
    );
    assert_eq!(
        namespace_after, namespace_before,
        "bad input changed the namespace"
    );
    cluster.must_all_run();
    for id in cluster.ids() {
        if cluster.status(id).await.is_none() {
            cluster.fail(format!("node {id} no longer answers Status"));
        }
    }
    cluster.must_agreed_leader(&[1, 2, 3]).await;
    cluster.must(
        client.create("/keep/still-writable").await,
        "a write after the bad input",
    );
}

/// Writes `junk` on a fresh TCP connection to node `id` and reads whatever
/// comes back until the server closes the connection (bounded by a timeout).
async fn send_junk(cluster: &Cluster, id: u64, junk: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = cluster.must(
        tokio::net::TcpStream::connect(cluster.addr(id)).await,
        "TCP connect",
    );
    // The server may close the connection before reading everything.
    let _ = stream.write_all(junk).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_linearizable_reads() {
    let _load = light_test().await;
    let mut cluster = Cluster::start(&[]).await;
    let writer = cluster.client();
    cluster.must(writer.mkdir("/reads", false).await, "mkdir /reads");

    // Read-your-writes through every endpoint: each reader is a fresh
    // client that knows one replica only, so a follower must redirect it.
    let mut last = None;
    for i in 0..12u64 {
        let path = format!("/reads/k{i:02}");
        let created = cluster.must(writer.create(&path).await, &format!("create {path}"));
        let via = cluster.ids()[(i % 3) as usize];
        let reader = cluster.client_for(&[via]);
        let seen = cluster.must(
            reader.stat(&path, Consistency::Linearizable).await,
            &format!("linearizable stat of {path} via node {via} right after its create"),
        );
        assert_eq!(seen.inode, created.inode, "{path} via node {via}");
        last = Some((path, created));
    }
    let (last_path, last_attr) = last.expect("at least one write");

    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let followers = cluster.ids_except(leader);
    let follower = followers[0];

    // A follower answers stale reads from its own applied state.
    cluster
        .wait_until(
            WAIT,
            &format!("follower {follower} applies index {}", last_attr.version.0),
            async || cluster.applied(follower).await >= Some(last_attr.version.0),
        )
        .await;
    let follower_only = cluster.client_for(&[follower]);
    let seen = cluster.must(
        follower_only.stat(&last_path, Consistency::Stale).await,
        "stale stat on a follower",
    );
    assert_eq!(seen.inode, last_attr.inode);
    let mut stub = MetaServiceClient::new(channel_to(&cluster, follower).await);
    let get_attr = |consistency: pb::Consistency| pb::QueryRequest {
        map_revision: 0,
        shard: 0,
        consistency: consistency as i32,
        snapshot: 0,
        query: Some(query_request::Query::GetAttr(pb::GetAttrQuery {
            inode: inode_path(&last_path),
        })),
    };
    let response = cluster
        .must(
            stub.query(get_attr(pb::Consistency::Stale)).await,
            "raw stale query on a follower",
        )
        .into_inner();
    assert!(
        response.applied_index >= last_attr.version.0,
        "the follower answered from its applied state: {response:?}"
    );

    // A linearizable query on a follower is redirected to the leader.
    let status = stub
        .query(get_attr(pb::Consistency::Linearizable))
        .await
        .expect_err("a follower must not answer a linearizable read itself");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let detail = nokv_proto::detail_of(&status).expect("NOT_LEADER carries an ErrorDetail");
    assert_eq!(detail.code, "NOT_LEADER", "{detail:?}");
    assert_eq!(detail.leader_id, Some(leader), "{detail:?}");
    assert_eq!(detail.leader_addr, cluster.addr(leader), "{detail:?}");

    // Without a quorum the follower still serves stale reads: they never
    // leave the replica. Linearizable reads cannot be served any more.
    cluster.kill(leader);
    cluster.kill(followers[1]);
    let response = cluster
        .must(
            stub.query(get_attr(pb::Consistency::Stale)).await,
            "raw stale query on a follower without a quorum",
        )
        .into_inner();
    match response.result {
        Some(pb::query_response::Result::Attr(attr)) => {
            assert_eq!(InodeId(attr.inode), last_attr.inode)
        }
        other => cluster.fail(format!("unexpected stale read result: {other:?}")),
    }
    let refused = stub.query(get_attr(pb::Consistency::Linearizable)).await;
    assert!(
        refused.is_err(),
        "a lone follower must not serve a linearizable read: {refused:?}"
    );
    if !cluster.is_running(follower) {
        cluster.fail(format!("follower {follower} exited"));
    }
}

// ---------------------------------------------------------------------------

fn mutate_request_of(n: usize, op: Option<mutate_request::Op>) -> pb::MutateRequest {
    pb::MutateRequest {
        request_id: request_id(n),
        epoch: 0,
        shard: 0,
        map_revision: 0,
        op,
    }
}

fn get_attr_request(p: &str, consistency: pb::Consistency) -> pb::QueryRequest {
    pb::QueryRequest {
        map_revision: 0,
        shard: 0,
        consistency: consistency as i32,
        snapshot: 0,
        query: Some(query_request::Query::GetAttr(pb::GetAttrQuery {
            inode: inode_path(p),
        })),
    }
}

/// The detail code of each outcome of a batched call ("ok" for an answer).
fn outcome_codes(outcomes: Vec<Option<Result<(), pb::CallError>>>) -> Vec<String> {
    outcomes
        .into_iter()
        .map(|o| match o {
            Some(Ok(())) => "ok".to_string(),
            Some(Err(e)) => e.detail.map_or_else(|| "no detail".into(), |d| d.code),
            None => "empty".to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_calls_answer_each_request_as_a_lone_call_would() {
    let _load = light_test().await;
    let cluster = Cluster::start(&[]).await;
    let client = cluster.client();
    cluster.must(client.mkdir("/bulk", false).await, "mkdir /bulk");

    // The SDK's bulk create: every file made once, each answered.
    let paths = numbered("/bulk", "f", 3000);
    let (writes_before, _) = client.coalescing();
    let created = client.create_many(&paths).await;
    let failed: Vec<_> = created.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "bulk create failed: {:?}",
        &failed[..failed.len().min(3)]
    );
    let inodes: BTreeSet<InodeId> = created.iter().flatten().map(|a| a.inode).collect();
    assert_eq!(inodes.len(), paths.len(), "one new inode per file");
    assert_eq!(
        must_list(&cluster, &client, "/bulk", Consistency::Linearizable).await,
        basenames(&paths)
    );
    // They travelled in batches: far fewer calls than files.
    let (writes, _) = client.coalescing();
    let calls = (writes.lone_calls + writes.batched_calls)
        - (writes_before.lone_calls + writes_before.batched_calls);
    assert!(
        writes.batched_calls > writes_before.batched_calls && calls * 4 < paths.len() as u64,
        "3000 creates in {calls} calls: {writes:?}"
    );
    // Each keeps its own answer: those that exist are refused, one by one.
    let mut again = paths[..10].to_vec();
    again.push("/bulk/new".into());
    let answers = client.create_many(&again).await;
    for (path, answer) in again.iter().zip(&answers) {
        match (path.as_str(), answer) {
            ("/bulk/new", Ok(_)) => {}
            (_, Err(ClientError::Fs { code, .. })) if code == "EEXIST" => {}
            (path, answer) => cluster.fail(format!("create {path} again: {answer:?}")),
        }
    }
    // Concurrent stats ride in batched reads, each linearizable.
    let (_, reads_before) = client.coalescing();
    let stats = futures::future::join_all(
        paths
            .iter()
            .take(512)
            .map(|p| client.stat(p, Consistency::Linearizable)),
    )
    .await;
    for (path, (stat, made)) in paths.iter().zip(stats.iter().zip(&created)) {
        let made = made.as_ref().map(|a| a.inode).ok();
        assert_eq!(stat.as_ref().ok().map(|a| a.inode), made, "stat {path}");
    }
    let (_, reads) = client.coalescing();
    assert!(
        reads.batched_calls > reads_before.batched_calls,
        "512 concurrent stats made no batched call: {reads:?}"
    );

    // The wire: a batch to the leader, each request answered on its own.
    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let mut stub = MetaServiceClient::new(channel_to(&cluster, leader).await);
    let mut unknown_shard = mutate_request_of(4, create_at(path("/bulk/elsewhere")));
    unknown_shard.shard = 9;
    let batch = vec![
        mutate_request_of(1, create_at(path("/bulk/w1"))),
        mutate_request_of(2, create_at(path("/bulk/f0000"))),
        mutate_request_of(3, None),
        unknown_shard,
        // The same request id twice in one batch applies once: both copies
        // get the first result.
        mutate_request_of(5, create_at(path("/bulk/w5"))),
        mutate_request_of(5, create_at(path("/bulk/w5"))),
        mutate_request_of(6, create_at(path("no/leading/slash"))),
    ];
    let response = cluster
        .must(
            stub.mutate_batch(pb::MutateBatchRequest { requests: batch })
                .await,
            "MutateBatch to the leader",
        )
        .into_inner();
    let outcomes: Vec<_> = response
        .outcomes
        .iter()
        .map(|o| match &o.outcome {
            Some(pb::mutate_outcome::Outcome::Ok(_)) => Some(Ok(())),
            Some(pb::mutate_outcome::Outcome::Error(e)) => Some(Err(e.clone())),
            None => None,
        })
        .collect();
    assert_eq!(
        outcome_codes(outcomes),
        [
            "ok",
            "EEXIST",
            "INVALID_ARGUMENT",
            "UNKNOWN_SHARD",
            "ok",
            "ok",
            "EINVAL"
        ],
        "{response:?}"
    );
    let inode_of = |i: usize| match &response.outcomes[i].outcome {
        Some(pb::mutate_outcome::Outcome::Ok(r)) => match &r.result {
            Some(pb::mutate_response::Result::Attr(a)) => a.inode,
            other => cluster.fail(format!("outcome {i}: {other:?}")),
        },
        other => cluster.fail(format!("outcome {i}: {other:?}")),
    };
    assert_eq!(inode_of(4), inode_of(5), "one request id, one create");
    assert_eq!(
        cluster
            .must(
                client
                    .read_dir_all("/bulk", Consistency::Linearizable)
                    .await,
                "list /bulk"
            )
            .len(),
        paths.len() + 3,
        "the batch added w1 and w5, and the SDK's second bulk call /bulk/new"
    );

    // Batches that cannot be looked at are refused whole and change nothing.
    let refused = stub
        .mutate_batch(pb::MutateBatchRequest { requests: vec![] })
        .await
        .expect_err("an empty batch");
    assert_refused(
        "empty batch",
        &refused,
        tonic::Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let too_many: Vec<_> = (0..=nokv_proto::MAX_BATCH_CALLS)
        .map(|i| mutate_request_of(1000 + i, create_at(path(&format!("/bulk/x{i}")))))
        .collect();
    let refused = stub
        .mutate_batch(pb::MutateBatchRequest { requests: too_many })
        .await
        .expect_err("a batch over the limit");
    assert_refused(
        "1025 requests",
        &refused,
        tonic::Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let refused = stub
        .query_batch(pb::QueryBatchRequest { requests: vec![] })
        .await
        .expect_err("an empty query batch");
    assert_refused(
        "empty query batch",
        &refused,
        tonic::Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let seen = cluster.must(
        client
            .stat("/bulk/x0", Consistency::Linearizable)
            .await
            .err()
            .ok_or("x0 exists"),
        "stat /bulk/x0",
    );
    assert!(
        matches!(seen, ClientError::Fs { ref code, .. } if code == "ENOENT"),
        "{seen:?}"
    );

    // Reads: answered in order; a follower answers the stale ones and
    // sends the linearizable ones to the leader.
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap_or(1);
    let reads = || pb::QueryBatchRequest {
        requests: vec![
            get_attr_request("/bulk/f0001", pb::Consistency::Linearizable),
            get_attr_request("/bulk/missing", pb::Consistency::Linearizable),
            get_attr_request("/bulk/f0002", pb::Consistency::Stale),
        ],
    };
    let codes = |response: pb::QueryBatchResponse| {
        outcome_codes(
            response
                .outcomes
                .into_iter()
                .map(|o| match o.outcome {
                    Some(pb::query_outcome::Outcome::Ok(_)) => Some(Ok(())),
                    Some(pb::query_outcome::Outcome::Error(e)) => Some(Err(e)),
                    None => None,
                })
                .collect(),
        )
    };
    let on_leader = cluster.must(stub.query_batch(reads()).await, "QueryBatch to the leader");
    assert_eq!(codes(on_leader.into_inner()), ["ok", "ENOENT", "ok"]);
    cluster
        .wait_until(WAIT, "the follower applies the bulk creates", async || {
            let mut stub = MetaServiceClient::new(channel_to(&cluster, follower).await);
            stub.query(get_attr_request("/bulk/f0002", pb::Consistency::Stale))
                .await
                .is_ok()
        })
        .await;
    let mut on_follower = MetaServiceClient::new(channel_to(&cluster, follower).await);
    let answered = cluster.must(
        on_follower.query_batch(reads()).await,
        "QueryBatch to a follower",
    );
    assert_eq!(
        codes(answered.into_inner()),
        ["NOT_LEADER", "NOT_LEADER", "ok"]
    );
    // A write batch to a follower: each request names the leader.
    let response = cluster
        .must(
            on_follower
                .mutate_batch(pb::MutateBatchRequest {
                    requests: vec![mutate_request_of(7, create_at(path("/bulk/w7")))],
                })
                .await,
            "MutateBatch to a follower",
        )
        .into_inner();
    match &response.outcomes[..] {
        [pb::MutateOutcome {
            outcome: Some(pb::mutate_outcome::Outcome::Error(e)),
        }] => {
            let detail = e.detail.clone().unwrap_or_default();
            assert_eq!(
                (detail.code.as_str(), detail.leader_id),
                ("NOT_LEADER", Some(leader)),
                "{e:?}"
            );
        }
        other => cluster.fail(format!("a follower took a batched write: {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_linearizable_reads_through_a_read_index() {
    let _load = light_test().await;
    let mut cluster = Cluster::start(&["--follower-reads", "true"]).await;
    let writer = cluster.client();
    cluster.must(writer.mkdir("/fr", false).await, "mkdir /fr");
    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let followers = cluster.ids_except(leader);
    let mut stubs = Vec::new();
    for id in &followers {
        stubs.push(MetaServiceClient::new(channel_to(&cluster, *id).await));
    }

    // Right after each acknowledged create, a follower answers a
    // linearizable read itself (no NOT_LEADER) and sees the create: it
    // waits until it has applied what the leader confirmed.
    for i in 0..30usize {
        let path = format!("/fr/k{i:02}");
        let created = cluster.must(writer.create(&path).await, &format!("create {path}"));
        let which = i % stubs.len();
        let stub = &mut stubs[which];
        let response = cluster
            .must(
                stub.query(get_attr_request(&path, pb::Consistency::Linearizable))
                    .await,
                &format!(
                    "linearizable read of {path} on follower {}",
                    followers[i % 2]
                ),
            )
            .into_inner();
        assert!(
            response.applied_index >= created.version.0,
            "{path}: the follower answered at index {} before the create at {}",
            response.applied_index,
            created.version.0
        );
        match response.result {
            Some(pb::query_response::Result::Attr(attr)) => {
                assert_eq!(InodeId(attr.inode), created.inode, "{path}")
            }
            other => cluster.fail(format!("{path} on a follower: {other:?}")),
        }
    }

    // A client that spreads its linearizable reads: every replica answers
    // some, each read sees the writes acknowledged before it.
    let mut config = nokv_client::ClientConfig::new(cluster.endpoints());
    config.deadline = WAIT;
    config.read_from_followers = true;
    let spread = Client::new(config).expect("client");
    let paths = numbered("/fr", "s", 200);
    must_create_all(&cluster, &writer, &paths, 16).await;
    let stats = futures::future::join_all(
        paths
            .iter()
            .map(|p| spread.stat(p, Consistency::Linearizable)),
    )
    .await;
    for (path, stat) in paths.iter().zip(&stats) {
        assert!(stat.is_ok(), "stat {path} through any replica: {stat:?}");
    }

    // With the leader frozen, a follower cannot confirm anything and does
    // not answer from its own state: the read fails, or (once the other
    // two elected a new leader) it sees every acknowledged write.
    let last = cluster.must(writer.create("/fr/last").await, "create /fr/last");
    cluster.signal(leader, "-STOP");
    let answer = stubs[0]
        .query(get_attr_request("/fr/last", pb::Consistency::Linearizable))
        .await;
    cluster.signal(leader, "-CONT");
    match answer {
        Err(status) => assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::FailedPrecondition
            ),
            "{status:?}"
        ),
        Ok(response) => {
            let response = response.into_inner();
            assert!(response.applied_index >= last.version.0, "{response:?}");
        }
    }
    cluster.must_all_run();
}

// ---------------------------------------------------------------------------

/// Regression test for a linearizability bug found by this suite: after a
/// SIGKILL, openraft 0.9 restores a node that was leader as leader of the
/// same term without committing a new entry, and serves read-index reads at
/// its *persisted* commit index, which can lag behind acknowledged writes.
/// The read-index layer now also waits until the leader has applied its own
/// log as of the start of its tenure (`meta-node/src/read_index.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_read_after_leader_restart_sees_acknowledged_write() {
    let _load = heavy_test().await;
    let mut cluster = Cluster::start(&[]).await;
    let client = cluster.client();
    for attempt in 0..5 {
        let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
        let others = cluster.ids_except(leader);
        let path = format!("/acknowledged-{attempt}");
        cluster.must(client.create(&path).await, &format!("create {path}"));
        for id in cluster.ids() {
            cluster.kill(id);
        }
        // The old leader and one follower: a quorum, with the old leader
        // back first so it resumes its leadership.
        cluster.restart(leader).await;
        cluster.restart(others[0]).await;
        let read = client.stat(&path, Consistency::Linearizable).await;
        if let Err(e) = read {
            cluster.fail(format!(
                "attempt {attempt}: {path} was acknowledged before the SIGKILL, but a linearizable \
                 read after restarting leader {leader} and node {} says: {} ({e})",
                others[0],
                e.code()
            ));
        }
        cluster.restart(others[1]).await;
    }
}

// ---------------------------------------------------------------------------

/// Starts `nokv dev` and returns it with the endpoints it printed, once the
/// cluster reports ready.
async fn must_start_dev(
    data_dir: &std::path::Path,
    base_port: u16,
) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = common::nokv_command()
        .args(["dev", "--base-port", &base_port.to_string(), "--data-dir"])
        .arg(data_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn nokv dev");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let endpoints = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read dev output") {
            if let Some(e) = line.trim().strip_prefix("export NOKV_ENDPOINTS=") {
                return Some(e.to_string());
            }
        }
        None
    })
    .await
    .expect("nokv dev did not become ready in time")
    .expect("nokv dev exited before printing its endpoints");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, endpoints)
}

/// Sends SIGINT (what Ctrl-C sends) and waits for a clean exit.
async fn must_interrupt(child: &mut tokio::process::Child) {
    let pid = child.id().expect("dev is running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -INT failed");
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("nokv dev did not stop after Ctrl-C")
        .expect("wait for nokv dev");
    assert!(exit.success(), "nokv dev exited with {exit} after Ctrl-C");
}

/// `nokv dev` starts a ready three-replica cluster, prints its endpoints,
/// stops cleanly on Ctrl-C, and keeps its data for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_serves_stops_on_ctrl_c_and_keeps_data() {
    let _load = heavy_test().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("dev");
    // Three consecutive free ports: retry the pick until the block is free.
    let base_port = loop {
        let [p] = common::free_ports::<1>();
        if p < 65000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            break p;
        }
    };
    let (mut dev, endpoints) = must_start_dev(&data_dir, base_port).await;
    assert_eq!(
        endpoints.split(',').count(),
        3,
        "three endpoints: {endpoints}"
    );
    let client = Client::connect(&endpoints.split(',').collect::<Vec<_>>()).expect("client");
    client.mkdir("/kept", true).await.expect("mkdir on dev");
    client.create("/kept/file").await.expect("create on dev");
    must_interrupt(&mut dev).await;

    let (mut dev, endpoints_again) = must_start_dev(&data_dir, base_port).await;
    assert_eq!(endpoints, endpoints_again);
    let client = Client::connect(&endpoints.split(',').collect::<Vec<_>>()).expect("client");
    let entries = client
        .read_dir_all("/kept", Consistency::Linearizable)
        .await
        .expect("list after restart");
    assert_eq!(names(&entries), BTreeSet::from(["file".to_string()]));
    must_interrupt(&mut dev).await;
}

/// `nokv health` (the containers' healthcheck) fails before the group is
/// initialized and succeeds once the asked replica knows a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflects_initialization_and_leadership() {
    let _load = light_test().await;
    let mut cluster = Cluster::spawn(&[]).await;
    let endpoint = cluster.addr(2);
    let before = common::run_nokv(&["--endpoints", &endpoint, "--timeout", "2s", "health"]).await;
    assert!(!before.status.success(), "healthy before init");
    assert!(
        String::from_utf8_lossy(&before.stderr).contains("not initialized"),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    cluster.must_init().await;
    cluster
        .wait_until(WAIT, "node 2 reports healthy", async || {
            common::run_nokv(&["--endpoints", &endpoint, "--timeout", "2s", "health"])
                .await
                .status
                .success()
        })
        .await;
    cluster.must_all_run();
}

/// Regression test (docs/jepsen.md, ledger 5): a leader cut off from its
/// quorum answers a write already in flight with UNKNOWN_OUTCOME once its
/// quorum lease has run out, instead of holding it until the commit timeout
/// (10 s), so the client moves on to the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_quorum_releases_writes_in_flight() {
    let _load = light_test().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let followers = cluster.ids_except(leader);
    let client = cluster.client_for(&[leader]);
    cluster.must(client.mkdir("/before", false).await, "write with a quorum");

    for id in &followers {
        cluster.signal(*id, "-STOP");
    }
    // Only the leader is asked, with one attempt allowed nearly the whole
    // deadline: without the release, the attempt times out client-side.
    let mut config = nokv_client::ClientConfig::new(vec![cluster.addr(leader)]);
    config.deadline = Duration::from_secs(5);
    config.attempt_timeout = Duration::from_secs(5);
    let alone = cluster.must(Client::new(config), "client");
    let outcome = alone.mkdir("/during", false).await;
    for id in &followers {
        cluster.signal(*id, "-CONT");
    }
    assert!(
        matches!(&outcome, Err(ClientError::Unknown(reason)) if reason.contains("quorum")),
        "{outcome:?}"
    );
    // Once the followers are back, the write's fate is decided and readable;
    // a retry under the same id would answer it (exactly_once_retry).
    cluster.must_agreed_leader(&[1, 2, 3]).await;
    cluster.must(
        client.stat("/before", Consistency::Linearizable).await,
        "the cluster serves again",
    );
}

/// A replica whose Raft dies (here: it cannot write its next state-machine
/// snapshot) does not linger with a dead Raft: the node stops serving and
/// the process exits non-zero, so that a supervisor restarts it, and the
/// two others go on serving. Before, openraft's fatal error left a process
/// that accepted every RPC and failed them one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_storage_error_ends_the_process_with_an_error() {
    let _load = light_test().await;
    let mut cluster = Cluster::start(&["--snapshot-every", "20"]).await;
    // Node 3 writes a snapshot to snapshot/current.tmp, then renames it:
    // a directory in that place makes the write fail.
    let blocker = cluster.data_dir(3).join("snapshot").join("current.tmp");
    std::fs::create_dir_all(&blocker).expect("create the blocking directory");
    let client = cluster.client();
    for i in 0..60 {
        cluster.must(client.mkdir(&format!("/fatal-{i}"), false).await, "mkdir");
    }
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = cluster.exit_status(3) {
            break status;
        }
        if Instant::now() >= deadline {
            cluster.fail("node 3 still runs with a Raft that cannot snapshot");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "node 3 exited with {status}");
    let log_path = cluster.data_dir(3).with_file_name("node3.log");
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(log.contains("fatal"), "node 3's log says why:\n{log}");
    // A quorum is left: writes go on.
    cluster.must(client.mkdir("/after", false).await, "mkdir after");
}

/// `nokv bench … --breakdown` reports each stage of the write and read
/// paths from every replica, counted for the run alone: the leader's
/// handler, queue, Raft and log stages; each follower's append and apply;
/// the leader's read index for linearizable stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_breakdown_reports_the_stages_of_every_replica() {
    let _load = light_test().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let endpoints = cluster.endpoints().join(",");
    let run = |workload: &'static str| {
        let endpoints = endpoints.clone();
        async move {
            let args = ["-c", "4", "-n", "40", "--files", "8", "--breakdown"];
            must_bench_json(workload, &args, &["--endpoints", &endpoints])
                .await
                .into_iter()
                .find_map(|d| d.get("breakdown").cloned())
                .unwrap_or_else(|| panic!("no breakdown in {workload}'s output"))
        }
    };
    // The count of `stage` on node `id`, or 0 when it is not listed.
    let count = |b: &Value, id: u64, stage: &str| -> u64 {
        b["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .filter(|s| s["node_id"] == id && s["stage"] == stage)
            .filter_map(|s| s["count"].as_u64())
            .sum()
    };

    let create = run("create").await;
    assert_eq!(create["client"]["count"], 40, "{create}");
    // Exactly the run's 40 creates (the bench's mkdir came before).
    assert_eq!(count(&create, leader, "write_total"), 40, "{create}");
    for stage in ["write_validate", "write_queue", "log_append", "apply"] {
        assert!(
            count(&create, leader, stage) > 0,
            "leader {stage}: {create}"
        );
    }
    assert!(count(&create, leader, "replicate") > 0, "{create}");
    for id in cluster.ids_except(leader) {
        for stage in ["follower_append", "log_append", "apply"] {
            assert!(count(&create, id, stage) > 0, "node {id} {stage}: {create}");
        }
        assert_eq!(count(&create, id, "write_total"), 0, "{create}");
    }
    for s in create["stages"].as_array().expect("stages") {
        let (mean, p99) = (s["mean_ms"].as_f64(), s["p99_ms"].as_f64());
        assert!(
            mean.is_some_and(|m| m > 0.0) && p99.is_some_and(|p| p > 0.0),
            "{s}"
        );
    }

    let stat = run("stat").await;
    assert_eq!(count(&stat, leader, "read_total"), 40, "{stat}");
    // One confirmation per call: the reads of a batched call share one.
    let confirmations = count(&stat, leader, "read_index");
    assert!((1..=40).contains(&confirmations), "{stat}");
    assert_eq!(count(&stat, leader, "write_total"), 0, "{stat}");
}

/// `nokv bench etcd-create|etcd-get`, the comparison loads of
/// `scripts/bench-vs-etcd.sh`, run against a real etcd: every create
/// transaction commits (none lost to conflicts) and every get finds the
/// attributes the setup wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_comparison_loads_run_against_a_real_etcd() {
    let _load = light_test().await;
    let etcd = common::etcd::Etcd::must_start().await;
    for workload in ["etcd-create", "etcd-get"] {
        let args = ["-c", "8", "-n", "64", "--files", "16"];
        let docs = must_bench_json(workload, &args, &["--etcd-endpoints", &etcd.url()]).await;
        let [report] = docs.as_slice() else {
            panic!("{workload}: not one JSON report: {docs:?}");
        };
        assert_eq!(report["ops"], 64, "{workload}: {report}");
        assert_eq!(report["errors"], 0, "{workload}: {report}");
    }
}

/// Runs `nokv --json bench WORKLOAD ARGS... TARGET...`, which must succeed,
/// and returns the JSON documents it printed.
async fn must_bench_json(workload: &str, args: &[&str], target: &[&str]) -> Vec<Value> {
    let out = common::nokv_command()
        .args(["--json", "bench", workload])
        .args(args)
        .args(target)
        .output()
        .await
        .expect("run nokv bench");
    assert!(
        out.status.success(),
        "nokv bench {workload} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("bench prints JSON documents")
}
