//! Smoke runs of the partition tests, part of the test command: a real
//! three-node cluster with etcd and two shards (one grafted) in containers
//! under every nemesis must pass every check, and the deliberately unsafe
//! mode must be caught.
//!
//! Needs Docker and the images `nokv:dev`, `nokv-s3s-fs:dev` and
//! `nokv-etcd:dev` (`bash docker/build.sh`; `scripts/test.sh` builds them).

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

/// One cluster at a time: two would share two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn harness(out: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nokv-jepsen"))
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--json")
        .output()
        .expect("run nokv-jepsen")
}

/// The run's report, or a failure showing what the harness said.
fn report(out: &Path, output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(e) => {
            let logs: String = ["node-1.log", "node-2.log", "node-3.log"]
                .iter()
                .filter_map(|f| std::fs::read_to_string(out.join(f)).ok())
                .map(|l| l.lines().rev().take(30).collect::<Vec<_>>().join("\n"))
                .collect::<Vec<_>>()
                .join("\n---\n");
            panic!(
                "no report ({e}); exit {:?}\nstdout:\n{stdout}\nstderr:\n{}\nnode logs (reversed tails):\n{logs}",
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            )
        }
    }
}

fn no_leftovers() {
    for what in [
        &["ps", "-aq", "--filter", "label=io.nokv.jepsen"][..],
        &["network", "ls", "-q", "--filter", "label=io.nokv.jepsen"][..],
        &["volume", "ls", "-q", "--filter", "label=io.nokv.jepsen"][..],
    ] {
        let out = Command::new("docker").args(what).output().expect("docker");
        let left = String::from_utf8_lossy(&out.stdout);
        assert!(left.trim().is_empty(), "docker {what:?} left: {left}");
    }
}

/// The report's checks that failed, each with its details (a register
/// verdict with its first anomalies, a namespace or set summary, the
/// liveness summary, fsck problems, graft checks, an abort), or "none".
fn failed_checks(r: &Value) -> String {
    let mut failed: Vec<(&str, Value)> = Vec::new();
    if r["register"]["verdict"] != "linearizable" {
        let first: Vec<Value> = r["register"]["anomalies"]
            .as_array()
            .map(|a| a.iter().take(3).cloned().collect())
            .unwrap_or_default();
        failed.push((
            "register",
            serde_json::json!({"verdict": r["register"]["verdict"], "first_anomalies": first}),
        ));
    }
    for check in ["namespace", "set", "liveness"] {
        if r[check]["valid"] != Value::Bool(true) {
            failed.push((check, r[check].clone()));
        }
    }
    if let Some(shards) = r["set_by_shard"].as_object() {
        for (shard, s) in shards {
            if s["valid"] != Value::Bool(true) {
                failed.push(("set_by_shard", serde_json::json!({ shard: s })));
            }
        }
    }
    if r["fsck"]["valid"] != Value::Bool(true) {
        failed.push(("fsck", r["fsck"].clone()));
    }
    let graft: Vec<Value> = r["graft_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] != Value::Bool(true))
        .cloned()
        .collect();
    if !graft.is_empty() {
        failed.push(("graft_checks", Value::Array(graft)));
    }
    if !r["aborted"].is_null() {
        failed.push((
            "aborted",
            serde_json::json!({"why": r["aborted"], "node_processes": r["node_processes"]}),
        ));
    }
    if failed.is_empty() {
        return "none".into();
    }
    failed
        .iter()
        .map(|(name, details)| format!("{name}: {details}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_nemesis_on_every_workload_passes_the_checkers() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let output = harness(
        dir.path(),
        &[
            "--time-limit",
            "110s",
            "--nemesis",
            "all",
            "--workload",
            "all",
            "--healthy",
            "3s",
            "--fault-period",
            "3s",
            "--seed",
            "11",
        ],
    );
    let r = report(dir.path(), &output);
    // Summary first, so a failure shows what happened.
    let summary = serde_json::to_string_pretty(&serde_json::json!({
        "valid": r["valid"], "counts": r["counts"], "faults": r["faults"],
        "set": r["set"], "set_by_shard": r["set_by_shard"], "namespace": r["namespace"],
        "graft_checks": r["graft_checks"], "etcd_fault_acks": r["etcd_fault_acks"],
        "membership_errors": r["membership_errors"],
        "membership_ok": r["membership_ok"], "multi_leader_kills": r["multi_leader_kills"],
        "register_keys_by_shard": r["register_keys_by_shard"],
        "register_verdict": r["register"]["verdict"],
        "register_anomalies": r["register"]["anomalies"].as_array().map(|a| a.len()),
        "nemesis_errors": r["nemesis_errors"],
        "fsck": r["fsck"],
        "liveness": r["liveness"], "aborted": r["aborted"],
    }))
    .unwrap_or_default();
    // The failing checks first: CI shows only the head and the tail of a
    // long failure message.
    let summary = format!("failed checks: {}\n{summary}", failed_checks(&r));
    assert_eq!(r["valid"], Value::Bool(true), "{summary}");
    assert_eq!(output.status.code(), Some(0), "{summary}");
    // Every fault kind was injected at least once, without errors.
    for kind in [
        "isolate-leader",
        "isolate-node",
        "bridge",
        "kill",
        "pause",
        "kill-multi-leader",
        "etcd-kill",
        "etcd-partition",
        "membership",
        "clock-skew",
    ] {
        assert!(
            r["faults"][kind].as_u64().unwrap_or(0) >= 1,
            "no {kind}: {summary}"
        );
    }
    assert_eq!(
        r["nemesis_errors"].as_array().map(Vec::len),
        Some(0),
        "{summary}"
    );
    // A membership change (remove a replica, add it back) went through under
    // load, and a node leading several shards at once was killed.
    assert!(r["membership_ok"].as_u64() >= Some(1), "{summary}");
    assert!(
        r["multi_leader_kills"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n.as_u64() >= Some(2)),
        "{summary}"
    );
    // Each workload made progress, and the checkers saw real data.
    for workload in ["register", "set", "namespace"] {
        assert!(
            r["counts"][workload]["ok"].as_u64().unwrap_or(0) > 100,
            "{summary}"
        );
    }
    assert_eq!(r["register"]["verdict"], "linearizable", "{summary}");
    // Liveness is checked, not just reported: writes resumed within the
    // bound (3 s) after every leader loss, and the replicas agreed on a
    // leader within 10 s of the final heal ...
    // Shown with `--nocapture`: how close the run came to the bounds.
    eprintln!(
        "liveness: {}\nfailover_any: {}",
        r["liveness"], r["failover_any"]
    );
    assert_eq!(r["liveness"]["valid"], Value::Bool(true), "{summary}");
    assert_eq!(r["liveness"]["resume_bound_ms"], 3_000.0, "{summary}");
    assert_eq!(r["liveness"]["settle_bound_ms"], 10_000.0, "{summary}");
    // ... and writes never stopped for more than 5 s anywhere while a
    // majority could talk, whatever the cause.
    assert_eq!(r["liveness"]["gap_bound_ms"], 5_000.0, "{summary}");
    assert_eq!(
        r["liveness"]["gap_over_bound"],
        Value::Bool(false),
        "{summary}"
    );
    assert!(r["liveness"]["settle_ms"].is_number(), "{summary}");
    assert!(r["aborted"].is_null(), "{summary}");
    assert!(
        r["set"]["acknowledged"].as_u64().unwrap_or(0) > 100,
        "{summary}"
    );
    assert_eq!(
        r["namespace"]["found"], r["namespace"]["expected"],
        "{summary}"
    );
    // Both shards carried the set and the registers, each checked on its
    // own.
    for shard in ["/", "/s1"] {
        assert_eq!(
            r["set_by_shard"][shard]["valid"],
            Value::Bool(true),
            "{summary}"
        );
        assert!(
            r["set_by_shard"][shard]["acknowledged"]
                .as_u64()
                .unwrap_or(0)
                > 50,
            "{summary}"
        );
        assert!(
            r["register_keys_by_shard"][shard].as_u64().unwrap_or(0) > 0,
            "{summary}"
        );
    }
    // The graft's fences held at the start and the end: EXDEV across it,
    // EBUSY on it.
    let graft = r["graft_checks"].as_array().cloned().unwrap_or_default();
    assert!(graft.len() >= 8, "{summary}");
    assert!(
        graft.iter().all(|c| c["ok"] == Value::Bool(true)),
        "{summary}"
    );
    // Writes went on in both shards while etcd was down or cut off.
    let etcd = r["etcd_fault_acks"].as_array().cloned().unwrap_or_default();
    assert!(etcd.len() >= 2, "{summary}");
    for fault in &etcd {
        for shard in ["/", "/s1"] {
            assert!(fault["acks"][shard].as_u64().unwrap_or(0) > 0, "{summary}");
        }
    }
    // GC ran with a short grace under the faults (and the clock skew), and
    // fsck after the final heal found no live block missing, no size
    // mismatch and no orphan.
    assert_eq!(r["fsck"]["valid"], Value::Bool(true), "{summary}");
    assert_eq!(r["fsck"]["gc_grace_ms"], 2_000.0, "{summary}");
    assert!(
        r["fsck"]["report"]["live_blocks"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    eprintln!("fsck: {}", r["fsck"]);
    // The clock skew took effect: each injection's probes saw a leader
    // stamp one of the offsets (else the injection is a nemesis error).
    let nemesis = std::fs::read_to_string(dir.path().join("nemesis.jsonl")).unwrap_or_default();
    let skews: Vec<&str> = nemesis
        .lines()
        .filter(|l| l.contains("\"clock-skew\"") && l.contains("\"phase\":\"start\""))
        .collect();
    assert!(!skews.is_empty(), "no clock skew in nemesis.jsonl");
    eprintln!("clock skews: {}", skews.join("\n"));
    // A refused membership step is recorded, not a failure; show them.
    eprintln!("membership errors: {}", r["membership_errors"]);
    // The run wrote its histories.
    for file in [
        "register.jsonl",
        "set.jsonl",
        "namespace.jsonl",
        "nemesis.jsonl",
        "summary.json",
        "node-1.log",
        "node-2.log",
        "node-3.log",
    ] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    // Each replica's whole log is there, not a tail.
    for node in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node-{node}.log")))
            .unwrap_or_default();
        assert!(log.lines().count() > 10, "node-{node}.log is nearly empty");
    }
    no_leftovers();
}

#[test]
fn unsafe_stale_reads_are_caught_by_the_checker() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let output = harness(
        dir.path(),
        &[
            "--time-limit",
            "25s",
            "--nemesis",
            "isolate-node",
            "--workload",
            "register",
            "--healthy",
            "3s",
            "--fault-period",
            "6s",
            "--seed",
            "12",
            "--unsafe-stale-reads",
        ],
    );
    let r = report(dir.path(), &output);
    assert_eq!(r["unsafe_stale_reads"], Value::Bool(true));
    assert_eq!(
        r["valid"],
        Value::Bool(false),
        "stale reads were not caught"
    );
    assert_eq!(r["register"]["verdict"], "not_linearizable");
    let anomalies = r["register"]["anomalies"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert!(anomalies >= 1);
    // Exit status 1: an anomaly, not a harness failure.
    assert_eq!(output.status.code(), Some(1));
    no_leftovers();
}

/// A cluster that never forms (every replica refuses its configuration and
/// exits) still leaves the reason behind: every replica's log, the statuses
/// they answered (none), and a summary saying the run was aborted.
#[test]
fn a_cluster_that_never_forms_leaves_logs_statuses_and_a_summary() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let output = harness(
        dir.path(),
        &[
            "--time-limit",
            "10s",
            "--ready-timeout",
            "5s",
            "--node-env",
            "NOKV_HEARTBEAT=soon",
            "--seed",
            "13",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(2),
        "a harness failure; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("summary.json")).expect("summary.json"),
    )
    .expect("summary.json is JSON");
    let aborted = summary["aborted"].as_str().unwrap_or_default();
    assert!(aborted.contains("did not form"), "{summary}");
    assert_eq!(summary["valid"], Value::Bool(false), "{summary}");
    for id in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node-{id}.log")))
            .unwrap_or_else(|e| panic!("node-{id}.log: {e}"));
        assert!(log.contains("soon"), "node {id} says why it stopped: {log}");
    }
    let status: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("status.json")).expect("status.json"),
    )
    .expect("status.json is JSON");
    assert_eq!(
        status[0]["replicas"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    no_leftovers();
}

#[test]
fn failed_checks_name_what_failed() {
    let mut r = serde_json::json!({
        "register": {"verdict": "linearizable", "anomalies": []},
        "namespace": {"valid": true}, "set": {"valid": true},
        "liveness": {"valid": true},
        "set_by_shard": {"/": {"valid": true}, "/s1": {"valid": true}},
        "fsck": {"valid": true}, "graft_checks": [{"ok": true}], "aborted": null,
    });
    assert_eq!(failed_checks(&r), "none");
    r["register"] = serde_json::json!({"verdict": "not-linearizable", "anomalies": [1, 2, 3, 4]});
    r["set_by_shard"]["/s1"]["valid"] = Value::Bool(false);
    r["liveness"] = serde_json::json!({"valid": false, "not_settled": true});
    let failed = failed_checks(&r);
    assert_eq!(
        failed,
        "register: {\"first_anomalies\":[1,2,3],\"verdict\":\"not-linearizable\"}\n\
         liveness: {\"not_settled\":true,\"valid\":false}\n\
         set_by_shard: {\"/s1\":{\"valid\":false}}"
    );
}
