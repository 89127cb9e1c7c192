//! `nokv bench agent`: the agent verbs over a generated tree of published
//! artifacts. Publishes `--files` small JSON artifacts (each with publish
//! attributes and a JSON body, its fields extracted and indexed) under
//! `--dir`, 100 per run directory, then times `find` with a selective
//! predicate on an attribute, `find` on a content field, a selective
//! `aggregate`, and an `aggregate` of the whole tree grouped by an
//! attribute, each `--count` times through a gateway in this process that
//! reads the field indexes and through one that walks (`--no-index`), side
//! by side. Before all that it publishes the same number of artifacts
//! with nothing to index (opaque bodies, no attributes) under
//! `{dir}-plain`, for the cost of indexing. With
//! `--size` above 0 it also publishes that many bytes of logs and times
//! one recursive `grep` over them (every page). A benchmark: it measures
//! and prints, it asserts nothing about speed.

use std::time::{Duration, Instant};

use anyhow::Context;
use nokv_client::{Client, ClientError, PutOptions};
use nokv_gateway::{Gateway, GatewayConfig};
use serde_json::{json, Value};

use crate::bench::{drive, BenchArgs};
use crate::GlobalArgs;

/// Files per run directory.
const PER_DIR: usize = 100;
/// One artifact in this many is `failed` (the selective predicate).
const FAILED_EVERY: usize = 1000;
/// Rounds the two publish arms alternate in.
const PUBLISH_ROUNDS: usize = 10;
/// Size of each log file of the grep corpus.
const LOG_FILE_BYTES: usize = 4 << 20;

pub async fn run(
    args: &BenchArgs,
    g: &GlobalArgs,
    client: &Client,
    dir: &str,
) -> anyhow::Result<()> {
    let files = args.files.max(1);
    // The two arms alternate in rounds of a tenth, so both publish into a
    // store of about the same size.
    let (mut plain_secs, mut publish_secs) = (0.0, 0.0);
    let round = files.div_ceil(PUBLISH_ROUNDS);
    for first in (0..files).step_by(round) {
        let count = round.min(files - first);
        plain_secs +=
            publish_all(args, client, &format!("{dir}-plain"), first, count, false).await?;
        publish_secs += publish_all(args, client, dir, first, count, true).await?;
    }
    let config = GatewayConfig {
        max_scan_entries: files + files / PER_DIR + 16,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(client.clone(), config.clone());
    let walker = Gateway::new(
        client.clone(),
        GatewayConfig {
            use_indexes: false,
            ..config
        },
    );
    let queries = [
        (
            "find status=failed (attribute)",
            "find",
            json!({"path": dir, "predicates": [{"field": "status", "op": "eq", "value": "failed"}], "fields": ["run"], "limit": 10}),
        ),
        (
            "find loss<0.001 (content field)",
            "find",
            json!({"path": dir, "predicates": [{"field": "loss", "op": "lt", "value": 0.001}], "limit": 10}),
        ),
        (
            "aggregate mean loss by seed, status=failed",
            "aggregate",
            json!({"path": dir, "predicates": [{"field": "status", "op": "eq", "value": "failed"}],
                   "group_by": ["seed"], "measures": [{"name": "loss", "op": "avg", "field": "loss"}]}),
        ),
        (
            "aggregate count by status (whole tree)",
            "aggregate",
            json!({"path": dir, "group_by": ["status"], "measures": [{"name": "n", "op": "count"}]}),
        ),
    ];
    let mut results = Vec::new();
    for (name, verb, query) in queries {
        for (arm, gw) in [("index", &gateway), ("walk", &walker)] {
            let mut times = Vec::new();
            let mut last = Value::Null;
            for _ in 0..args.count.max(1) {
                let t = Instant::now();
                last = gw
                    .call(verb, query.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("{name}: {}: {e}", e.code()))?;
                times.push(t.elapsed());
            }
            let matches = last["match_count"].clone();
            let matches = if matches.is_null() {
                last["input_match_count"].clone()
            } else {
                matches
            };
            results.push(json!({
                "query": name,
                "gateway": arm,
                "plan": last["plan"],
                "runs": times.len(),
                "p50_ms": ms(percentile(&mut times, 0.50)),
                "p99_ms": ms(percentile(&mut times, 0.99)),
                "matches": matches,
                "scanned": last["scanned"],
            }));
        }
    }

    let grep = if args.size > 0 {
        Some(grep(args, client, dir, &gateway).await?)
    } else {
        None
    };
    let report = json!({
        "workload": "agent",
        "files": files,
        "publish_seconds": publish_secs,
        "publishes_per_sec": files as f64 / publish_secs.max(1e-9),
        "plain_publish_seconds": plain_secs,
        "plain_publishes_per_sec": files as f64 / plain_secs.max(1e-9),
        "queries": results,
        "grep": grep,
    });
    if g.json {
        outln!("{report}");
    } else {
        outln!(
            "agent: published {files} artifacts with fields in {publish_secs:.1}s ({:.0}/s), \
             without fields in {plain_secs:.1}s ({:.0}/s)",
            files as f64 / publish_secs.max(1e-9),
            files as f64 / plain_secs.max(1e-9)
        );
        for r in report["queries"].as_array().into_iter().flatten() {
            outln!(
                "  {} [{}: {}]: p50={:.1}ms p99={:.1}ms matches={} scanned={} ({} runs)",
                r["query"].as_str().unwrap_or_default(),
                r["gateway"].as_str().unwrap_or_default(),
                r["plan"].as_str().unwrap_or_default(),
                r["p50_ms"].as_f64().unwrap_or_default(),
                r["p99_ms"].as_f64().unwrap_or_default(),
                r["matches"],
                r["scanned"],
                r["runs"]
            );
        }
        if let Some(gr) = &report["grep"].as_object() {
            outln!(
                "  grep: {} MiB in {} files, {} hits, {:.2}s ({:.0} MiB/s, {} pages)",
                gr["mib"],
                gr["files"],
                gr["hits"],
                gr["seconds"].as_f64().unwrap_or_default(),
                gr["mib_per_sec"].as_f64().unwrap_or_default(),
                gr["pages"]
            );
        }
    }
    Ok(())
}

/// Makes the run directories and publishes artifacts `first..first +
/// files` under `dir`, with their fields or without any to index; the
/// seconds the publishes took.
async fn publish_all(
    args: &BenchArgs,
    client: &Client,
    dir: &str,
    first: usize,
    files: usize,
    with_fields: bool,
) -> anyhow::Result<f64> {
    let c = client.clone();
    let d = dir.to_string();
    let first_run = first / PER_DIR;
    let runs = drive(
        args.concurrency.max(32),
        (first + files).div_ceil(PER_DIR) - first_run,
        move |run| {
            let c = c.clone();
            let path = format!("{d}/run-{}", first_run + run);
            async move { c.mkdir(&path, true).await.map(|_| ()) }
        },
    )
    .await?;
    if runs.errors > 0 {
        anyhow::bail!("mkdir failed: {}", runs.first_error.unwrap_or_default());
    }
    let started = Instant::now();
    let c = client.clone();
    let d = dir.to_string();
    let setup = drive(args.concurrency.max(32), files, move |i| {
        let c = c.clone();
        let d = d.clone();
        async move { publish_artifact(&c, &d, first + i, with_fields).await }
    })
    .await?;
    if setup.errors > 0 {
        anyhow::bail!(
            "publishing failed: {}",
            setup.first_error.unwrap_or_default()
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Artifact `i`: `{dir}/run-{i/100}/a-{i}.json`, attributes `run`,
/// `status` (one in 1,000 `failed`) and `seed`, body `{"loss", "step"}`
/// (five fields to index). Without fields: the same bytes as
/// `a-{i}.bin`, opaque and without attributes (nothing to index).
async fn publish_artifact(
    c: &Client,
    dir: &str,
    i: usize,
    with_fields: bool,
) -> Result<(), ClientError> {
    let run = i / PER_DIR;
    let run_dir = format!("{dir}/run-{run}");
    let status = if i.is_multiple_of(FAILED_EVERY) {
        "failed"
    } else {
        "ok"
    };
    let loss = (i % 10_000) as f64 / 10_000.0;
    let body = json!({"loss": loss, "step": i}).to_string();
    let opts = PutOptions {
        content_type: "application/json".into(),
        attrs: [
            ("run".to_string(), run.to_string()),
            ("status".to_string(), status.to_string()),
            ("seed".to_string(), (i % 7).to_string()),
        ]
        .into_iter()
        .collect(),
        ..PutOptions::default()
    };
    let (name, opts) = match with_fields {
        true => (format!("{run_dir}/a-{i}.json"), opts),
        false => (format!("{run_dir}/a-{i}.bin"), PutOptions::default()),
    };
    c.put_bytes(&name, body.as_bytes(), &opts).await?;
    Ok(())
}

/// Publishes `--size` bytes of logs in 4 MiB files with a rare line, then
/// greps them all (following every cursor).
async fn grep(
    args: &BenchArgs,
    client: &Client,
    dir: &str,
    gateway: &Gateway,
) -> anyhow::Result<Value> {
    let logs = format!("{dir}/logs");
    client.mkdir(&logs, true).await.context("mkdir logs")?;
    let files = (args.size as usize).div_ceil(LOG_FILE_BYTES).max(1);
    let mut text = String::with_capacity(LOG_FILE_BYTES);
    let mut n = 0u64;
    while text.len() < LOG_FILE_BYTES - 100 {
        n += 1;
        text.push_str(&format!(
            "step {n} loss {:.6} lr 0.0003 grad_norm 1.25\n",
            1.0 / n as f64
        ));
    }
    for f in 0..files {
        let body = if f.is_multiple_of(16) {
            format!("{text}RuntimeError: CUDA out of memory\n")
        } else {
            text.clone()
        };
        let opts = PutOptions {
            content_type: "text/plain".into(),
            ..PutOptions::default()
        };
        client
            .put_bytes(&format!("{logs}/train-{f}.log"), body.as_bytes(), &opts)
            .await
            .with_context(|| format!("publish log {f}"))?;
    }
    let started = Instant::now();
    let (mut hits, mut pages, mut bytes) = (0u64, 0u64, 0u64);
    let mut cursor = Value::Null;
    loop {
        let page = gateway
            .call("grep", json!({"path": logs, "pattern": "cuda out of memory", "recursive": true, "cursor": cursor}))
            .await
            .map_err(|e| anyhow::anyhow!("grep: {}: {e}", e.code()))?;
        pages += 1;
        hits += page["matches"].as_array().map_or(0, |m| m.len() as u64);
        bytes += page["bytes_scanned"].as_u64().unwrap_or(0);
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let mib = bytes as f64 / (1024.0 * 1024.0);
    Ok(
        json!({"files": files, "mib": mib.round(), "hits": hits, "pages": pages, "seconds": secs, "mib_per_sec": mib / secs.max(1e-9)}),
    )
}

fn percentile(times: &mut [Duration], q: f64) -> Duration {
    times.sort();
    let i = ((times.len() as f64 - 1.0) * q).round() as usize;
    times.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
