//! The agent gateway over real HTTP against a real three-replica cluster
//! with two shards (a graft at /runs/b) on an etcd control plane:
//!
//! - `verbs_answer_with_evidence_across_grafts`: ls, stat, catalog, find,
//!   aggregate, read and grep over a small corpus of runs (attributes given
//!   at publish, JSON configs, CSV metric series, logs with tracebacks),
//!   answers checked against what was published; every item carries an
//!   evidence URI, and resolving one returns exactly the cited bytes, also
//!   after the file was replaced, while a snapshot pins the old generation
//!   and then while GC's grace period keeps it; once GC has collected it
//!   the URI is refused with `generation_gone`.
//!   Reads at a snapshot see the pinned state. Pages with cursors cover
//!   every result exactly once.
//! - `verbs_answer_through_a_leader_failover`: calls during a leader kill
//!   get complete answers or retryable 503/504, and complete ones again
//!   once a leader is elected.
//! - Bad input (in the first test): unknown keys and fields, wrong value types,
//!   limits, cursors of another query, malformed URIs, garbage bodies,
//!   unknown verbs, write tools on a read-only gateway, structured reads
//!   of too many records, and a subtree above the scan limit: an HTTP
//!   status plus a JSON error code, and the gateway keeps serving.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use common::etcd::Etcd;
use common::http::Gateway;
use common::store::{StoreKind, TestStore};
use common::Cluster;
use nokv_client::{Client, PutOptions, RenameMode};
use serde_json::{json, Value};

/// Run `i` of the corpus: its config, status and final loss.
struct Run {
    id: u32,
    lr: f64,
    batch: u32,
    status: &'static str,
}

fn runs() -> Vec<Run> {
    (1..=8)
        .map(|id| Run {
            id,
            lr: [0.1, 0.01, 0.001, 0.0001][(id % 4) as usize],
            batch: if id % 2 == 0 { 64 } else { 32 },
            status: if id % 3 == 0 { "failed" } else { "ok" },
        })
        .collect()
}

/// Runs 1-4 live under /runs/a (root shard), 5-8 under /runs/b (a graft).
fn run_dir(id: u32) -> String {
    format!("/runs/{}/{id}", if id <= 4 { "a" } else { "b" })
}

fn val_loss(run: &Run, step: u32) -> f64 {
    1.0 / f64::from(step + 1) + run.lr + f64::from(run.id) / 1000.0
}

fn log_text(run: &Run) -> String {
    let mut text = String::new();
    for step in 1..=50 {
        text.push_str(&format!("step {step} loss {:.4}\n", val_loss(run, step)));
    }
    if run.status == "failed" {
        text.push_str(
            "Traceback (most recent call last):\n  File \"train.py\", line 7\nKeyboardInterrupt\n",
        );
    }
    text
}

async fn publish(
    client: &Client,
    path: &str,
    bytes: &[u8],
    content_type: &str,
    attrs: &[(&str, String)],
) {
    let opts = PutOptions {
        content_type: content_type.into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..PutOptions::default()
    };
    client
        .put_bytes(path, bytes, &opts)
        .await
        .unwrap_or_else(|e| panic!("publish {path}: {e}"));
}

async fn publish_corpus(client: &Client) {
    for run in runs() {
        let dir = run_dir(run.id);
        client
            .mkdir(&dir, true)
            .await
            .unwrap_or_else(|e| panic!("mkdir {dir}: {e}"));
        let params = json!({"lr": run.lr, "batch": run.batch, "optimizer": {"name": "adam"}});
        let attrs = [
            ("run", run.id.to_string()),
            ("status", run.status.to_string()),
        ];
        publish(
            client,
            &format!("{dir}/params.json"),
            params.to_string().as_bytes(),
            "application/json",
            &attrs,
        )
        .await;
        let mut csv = String::from("step,val_loss\n");
        for step in 1..=20 {
            csv.push_str(&format!("{step},{}\n", val_loss(&run, step)));
        }
        publish(
            client,
            &format!("{dir}/metrics.csv"),
            csv.as_bytes(),
            "text/csv",
            &[],
        )
        .await;
        publish(
            client,
            &format!("{dir}/train.log"),
            log_text(&run).as_bytes(),
            "text/plain",
            &[],
        )
        .await;
    }
}

fn paths(found: &Value, key: &str) -> Vec<String> {
    found[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {found}"))
        .iter()
        .map(|m| m["path"].as_str().expect("path").to_string())
        .collect()
}

fn assert_uris(items: &Value) {
    for item in items.as_array().expect("items") {
        let uri = item["uri"]
            .as_str()
            .unwrap_or_else(|| panic!("no uri in {item}"));
        assert!(uri.starts_with("nokv://"), "{uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_answer_with_evidence_across_grafts() {
    let _load = common::light_test().await;
    let etcd = Etcd::must_start().await;
    let store = TestStore::start(StoreKind::File)
        .await
        .expect("a local store");
    let url = store.url();
    let env = store.serve_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cluster = Cluster::start_on_etcd_with_env(
        &etcd,
        "gw",
        &["--blob-store", url.as_str(), "--gc-interval", "1h"],
        &env,
    )
    .await;
    let client = cluster.client();
    cluster.must(client.mkdir("/runs", false).await, "mkdir /runs");
    cluster.must_nokv(&["shard", "create", "/runs/b"]).await;
    let client = cluster.client();
    publish_corpus(&client).await;
    let mut gw = Gateway::start(&cluster.endpoints(), &[]).await;

    // ls: every run dir, paged two at a time.
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = gw
            .ok(
                "ls",
                json!({"path": "/runs/b", "limit": 2, "cursor": cursor}),
            )
            .await;
        assert_uris(&page["entries"]);
        seen.extend(paths(&page, "entries"));
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(seen, ["/runs/b/5", "/runs/b/6", "/runs/b/7", "/runs/b/8"]);

    // stat: the card of a JSON config.
    let card = gw
        .ok("stat", json!({"path": "/runs/a/2/params.json"}))
        .await["card"]
        .clone();
    assert_eq!(card["kind"], "file");
    assert_eq!(card["record_type"], "json_object");
    assert_eq!(card["attrs"]["status"], "ok");
    assert_eq!(card["attrs"]["run"], 2);
    assert_eq!(card["fields"]["lr"], 0.001);
    assert!(
        card["uri"]
            .as_str()
            .expect("uri")
            .starts_with("nokv://runs/a/2/params.json@g"),
        "{card}"
    );
    assert_uris(&card["sample"]);

    // catalog: attributes and content fields, with types and operators, across the graft.
    let catalog = gw
        .ok("catalog", json!({"path": "/runs", "include_facets": true}))
        .await;
    let fields = &catalog["fields"];
    assert_eq!(fields["string"]["status"], 8, "{catalog}");
    assert_eq!(fields["float"]["lr"], 8, "{catalog}");
    assert_eq!(fields["string"]["optimizer.name"], 8, "{catalog}");
    assert_eq!(catalog["series"]["val_loss"], 8, "a CSV column: {catalog}");
    assert!(catalog["operators"]["string"]
        .as_array()
        .expect("ops")
        .contains(&json!("prefix")));
    let facets: BTreeMap<String, Value> = catalog["facets"]
        .as_array()
        .expect("facets")
        .iter()
        .map(|f| (f["field"].as_str().expect("field").to_string(), f.clone()))
        .collect();
    assert_eq!(facets["status"]["distinct_count"], 2, "{catalog}");
    assert_eq!(catalog["plan"], "scan", "a whole catalog walks");
    // With a field filter the holders come from the indexes, counted alike.
    let some = gw
        .ok(
            "catalog",
            json!({"path": "/runs", "field_prefix": "optimizer", "include_facets": true}),
        )
        .await;
    assert_eq!(some["plan"], "index", "{some}");
    assert_eq!(some["fields"]["string"]["optimizer.name"], 8, "{some}");
    assert_eq!(some["facets"][0]["field"], "optimizer.name", "{some}");
    let series = gw
        .ok(
            "catalog",
            json!({"path": "/runs", "field_prefix": "val_loss"}),
        )
        .await;
    assert_eq!(
        (&series["plan"], &series["series"]["val_loss"]),
        (&json!("index"), &json!(8)),
        "{series}"
    );

    // find: failed runs, best lr first, projected, faceted; across both shards.
    let oracle: Vec<String> = {
        let mut failed: Vec<&Run> = runs_ref().iter().filter(|r| r.status == "failed").collect();
        failed.sort_by(|a, b| b.lr.total_cmp(&a.lr).then(a.id.cmp(&b.id)));
        failed
            .iter()
            .map(|r| format!("{}/params.json", run_dir(r.id)))
            .collect()
    };
    let query = json!({
        "path": "/runs",
        "predicates": [{"field": "status", "op": "eq", "value": "failed"}, {"field": "lr", "op": "lte", "value": 0.1}],
        "sort": [{"field": "lr", "direction": "desc"}],
        "fields": ["lr", "run"],
        "facets": ["batch"],
    });
    let found = gw.ok("find", query.clone()).await;
    assert_eq!(paths(&found, "matches"), oracle, "{found}");
    assert_eq!(found["match_count"], oracle.len());
    assert_eq!(found["plan"], "index:status", "{found}");
    assert_uris(&found["matches"]);
    assert!(found["matches"][0]["values"]["lr"].is_number(), "{found}");

    // find, paged one match at a time: the same matches, each once.
    let mut paged = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let mut q = query.clone();
        q["limit"] = json!(1);
        q["cursor"] = cursor;
        let page = gw.ok("find", q).await;
        paged.extend(paths(&page, "matches"));
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(paged, oracle);

    // Bodies are read only for rows the listing cannot decide: no status
    // matches, so no params.json is read, and lr is not called unknown.
    let none = gw
        .ok(
            "find",
            json!({"path": "/runs", "predicates": [
                {"field": "status", "op": "eq", "value": "nosuch"},
                {"field": "lr", "op": "gt", "value": 0}]}),
        )
        .await;
    assert_eq!(none["match_count"], 0, "{none}");

    // aggregate: runs per status with the mean lr.
    let agg = gw
        .ok(
            "aggregate",
            json!({
                "path": "/runs",
                "predicates": [{"field": "name", "op": "eq", "value": "params.json"}],
                "group_by": ["status"],
                "measures": [{"name": "runs", "op": "count"}, {"name": "mean_lr", "op": "avg", "field": "lr"}],
            }),
        )
        .await;
    for group in agg["groups"].as_array().expect("groups") {
        let status = group["key"]["status"].as_str().expect("status");
        let members: Vec<&Run> = runs_ref().iter().filter(|r| r.status == status).collect();
        let mean = members.iter().map(|r| r.lr).sum::<f64>() / members.len() as f64;
        assert_eq!(group["values"]["runs"], members.len(), "{agg}");
        let got = group["values"]["mean_lr"].as_f64().expect("mean");
        assert!((got - mean).abs() < 1e-12, "{status}: {got} vs {mean}");
    }
    assert_eq!(agg["input_match_count"], 8);

    // read: structured records of a CSV, each citable.
    let read = gw
        .ok("read", json!({"path": "/runs/b/6/metrics.csv", "limit": 5}))
        .await;
    assert_eq!(read["record_type"], "csv");
    assert_eq!(read["record_count"], 20);
    assert_eq!(read["items"].as_array().expect("items").len(), 5);
    assert_eq!(read["items"][0]["value"]["step"], 1);
    assert_uris(&read["items"]);
    let item_uri = read["items"][3]["uri"].as_str().expect("uri").to_string();
    let cited = gw.ok("read", json!({"uri": item_uri})).await;
    let record: Value =
        serde_json::from_str(cited["text"].as_str().expect("text")).expect("record JSON");
    assert_eq!(record["step"], 4, "{cited}");

    // grep: every traceback, with its line, across the graft; the cited line resolves.
    let hits = gw
        .ok(
            "grep",
            json!({"path": "/runs", "pattern": "KEYBOARDinterrupt", "recursive": true}),
        )
        .await;
    let expected: BTreeSet<String> = runs_ref()
        .iter()
        .filter(|r| r.status == "failed")
        .map(|r| format!("{}/train.log", run_dir(r.id)))
        .collect();
    assert_eq!(
        paths(&hits, "matches").into_iter().collect::<BTreeSet<_>>(),
        expected,
        "{hits}"
    );
    assert_uris(&hits["matches"]);
    let hit = &hits["matches"][0];
    assert_eq!(hit["line_number"], 53, "{hit}");
    let hit_uri = hit["uri"].as_str().expect("uri").to_string();
    assert!(hit_uri.ends_with("#L53"), "{hit_uri}");
    let cited = gw.ok("read", json!({"uri": hit_uri})).await;
    assert_eq!(cited["text"], "KeyboardInterrupt");

    // Evidence outlives a replace while a snapshot pins it, then is gone.
    let log = hit["path"].as_str().expect("path").to_string();
    let snap = cluster
        .must_nokv(&["--json", "snapshot", "create", "/runs/a", "--lease", "1h"])
        .await;
    let snap: Value = serde_json::from_str(&snap).expect("snapshot JSON");
    let snap_id = snap["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no id in {snap}"));
    publish(&client, &log, b"replaced\n", "text/plain", &[]).await;
    let cited = gw.ok("read", json!({"uri": hit_uri})).await;
    assert_eq!(
        cited["text"], "KeyboardInterrupt",
        "cited bytes after the replace"
    );
    let now = gw
        .ok(
            "grep",
            json!({"path": &log, "pattern": "keyboard", "recursive": false}),
        )
        .await;
    assert_eq!(now["matches"], json!([]), "the live file changed");
    let then = gw
        .ok(
            "grep",
            json!({"path": &log, "pattern": "keyboard", "recursive": false, "snapshot": snap_id}),
        )
        .await;
    assert_eq!(then["matches"].as_array().expect("hits").len(), 1, "{then}");
    assert_eq!(then["read_at"]["snapshot"], snap_id);
    cluster
        .must_nokv(&["snapshot", "rm", &snap_id.to_string()])
        .await;
    // Unpinned, the old generation waits out GC's grace period: still cited.
    let cited = gw.ok("read", json!({"uri": hit_uri})).await;
    assert_eq!(
        cited["text"], "KeyboardInterrupt",
        "cited during the grace period"
    );
    // GC deletes nothing the archive has not passed: archive, then collect.
    cluster.must_nokv(&["backup"]).await;
    let gc: Value = serde_json::from_str(&cluster.must_nokv(&["--json", "gc", "--now"]).await)
        .expect("gc --json");
    assert_eq!(gc["tasks_waiting"], 0, "{gc}");
    let gone = gw
        .refused("read", json!({"uri": hit_uri}), 410, "generation_gone")
        .await;
    assert!(gone.contains("no longer kept"), "{gone}");

    // Bad input: a clear status and code, and nothing crashes.
    gw.refused(
        "find",
        json!({"path": "/runs", "include": ["x"]}),
        400,
        "unknown_field",
    )
    .await;
    gw.refused(
        "find",
        json!({"path": "/runs", "predicates": [{"field": "no_such_field", "op": "exists"}]}),
        400,
        "unknown_field",
    )
    .await;
    gw.refused(
        "find",
        json!({"path": "/runs", "predicates": [{"field": "lr", "op": "gt", "value": true}]}),
        400,
        "wrong_type",
    )
    .await;
    gw.refused(
        "find",
        json!({"path": "/runs", "predicates": [{"field": "lr", "op": "in", "value": 3}]}),
        400,
        "wrong_type",
    )
    .await;
    gw.refused(
        "find",
        json!({"path": "/runs", "limit": 0}),
        400,
        "invalid_argument",
    )
    .await;
    gw.refused(
        "find",
        json!({"path": "/runs", "limit": 5000}),
        413,
        "limit_exceeded",
    )
    .await;
    gw.refused(
        "ls",
        json!({"path": "/runs", "limit": 101}),
        413,
        "limit_exceeded",
    )
    .await;
    let other_cursor = {
        let mut q = query.clone();
        q["limit"] = json!(1);
        gw.ok("find", q).await["next_cursor"].clone()
    };
    gw.refused(
        "find",
        json!({"path": "/runs/a", "cursor": other_cursor}),
        400,
        "bad_cursor",
    )
    .await;
    gw.refused(
        "ls",
        json!({"path": "/runs", "cursor": "garbage"}),
        400,
        "bad_cursor",
    )
    .await;
    gw.refused("read", json!({"uri": "nokv://runs/a@gx"}), 400, "bad_uri")
        .await;
    gw.refused("read", json!({"uri": "http://elsewhere/x"}), 400, "bad_uri")
        .await;
    gw.refused(
        "grep",
        json!({"path": "/runs", "pattern": "x".repeat(300), "recursive": true}),
        413,
        "limit_exceeded",
    )
    .await;
    gw.refused(
        "grep",
        json!({"path": "/runs", "pattern": "x"}),
        400,
        "invalid_argument",
    )
    .await;
    gw.refused("ls", json!({"path": "runs"}), 400, "invalid_argument")
        .await;
    gw.refused(
        "ls",
        json!({"path": "/runs/../etc"}),
        400,
        "invalid_argument",
    )
    .await;
    gw.refused("stat", json!({"path": "/nowhere"}), 404, "not_found")
        .await;
    gw.refused(
        "publish_text",
        json!({"path": "/x.txt", "text": "hi"}),
        403,
        "writes_disabled",
    )
    .await;
    gw.refused("frobnicate", json!({}), 404, "unknown_verb")
        .await;
    let garbage = gw.raw("find", b"\x00\xffnot json{").await;
    assert_eq!(garbage.status, 400, "{}", garbage.body);
    let mut long_log = String::new();
    for i in 0..500 {
        long_log.push_str(&format!("line {i}\n"));
    }
    publish(
        &client,
        "/runs/a/long.log",
        long_log.as_bytes(),
        "text/plain",
        &[],
    )
    .await;
    gw.refused(
        "read",
        json!({"path": "/runs/a/long.log"}),
        422,
        "too_many_records",
    )
    .await;
    let paged = gw
        .ok(
            "read",
            json!({"path": "/runs/a/long.log", "offset": 100, "limit": 2}),
        )
        .await;
    assert_eq!(paged["items"][0]["value"]["text"], "line 100", "{paged}");
    assert!(
        paged["items"][0]["uri"]
            .as_str()
            .expect("uri")
            .ends_with("#L101"),
        "{paged}"
    );
    let small = Gateway::start(&cluster.endpoints(), &["--max-scan-entries", "10"]).await;
    small
        .refused("find", json!({"path": "/runs"}), 422, "scan_limit")
        .await;
    small.ok("find", json!({"path": "/runs/a/1"})).await;
    let hasty = Gateway::start(&cluster.endpoints(), &["--call-timeout", "1ms"]).await;
    hasty
        .refused(
            "catalog",
            json!({"path": "/runs"}),
            504,
            "deadline_exceeded",
        )
        .await;

    // `nokv publish-dir --attr`: every file gets the attributes, and a
    // content type from its extension, so its keys are fields at once.
    let local = tempfile::tempdir().expect("a local directory");
    std::fs::write(local.path().join("eval.json"), br#"{"auc": 0.93}"#).expect("write eval.json");
    std::fs::write(local.path().join("notes.txt"), b"fine\n").expect("write notes.txt");
    let local_dir = local.path().to_string_lossy().to_string();
    cluster
        .must_nokv(&[
            "publish-dir",
            &local_dir,
            "/evals/e1",
            "--attr",
            "suite=heldout",
        ])
        .await;
    let found = gw
        .ok(
            "find",
            json!({"path": "/evals", "predicates": [{"field": "suite", "op": "eq", "value": "heldout"}],
                   "fields": ["auc", "content_type"]}),
        )
        .await;
    assert_eq!(found["match_count"], 2, "{found}");
    assert_eq!(
        found["matches"][0]["values"]["content_type"], "application/json",
        "{found}"
    );
    assert_eq!(found["matches"][0]["values"]["auc"], 0.93, "{found}");
    assert_eq!(
        found["matches"][1]["values"]["content_type"], "text/plain",
        "{found}"
    );

    // Writes, when allowed.
    let writer = Gateway::start(&cluster.endpoints(), &["--allow-writes"]).await;
    let made = writer
        .ok("publish_text", json!({"path": "/notes/summary.md", "text": "# best run\n", "attrs": {"kind_of": "note"}}))
        .await;
    assert!(
        made["uri"]
            .as_str()
            .expect("uri")
            .starts_with("nokv://notes/summary.md@g"),
        "{made}"
    );
    writer
        .refused(
            "publish_text",
            json!({"path": "/notes/summary.md", "text": "again"}),
            409,
            "EEXIST",
        )
        .await;
    let body = cluster.must(client.get("/notes/summary.md", None).await, "get the note");
    assert_eq!(&body[..], b"# best run\n");
    indexed_push_down(&gw, &cluster, &client).await;

    // Random arguments of every shape to every verb: each answer is a
    // verdict (200 or a client error with a JSON code), never a 5xx, and
    // the gateway keeps serving.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..300 {
        let verb = [
            "ls",
            "stat",
            "catalog",
            "find",
            "aggregate",
            "read",
            "grep",
            "publish_text",
            "nope",
        ][(next(&mut rng) % 9) as usize];
        let args = random_args(&mut rng);
        let r = gw.call(verb, args.clone()).await;
        let body: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("round {round}: {verb} {args}: not JSON ({e}): {}", r.body));
        assert!(
            r.status == 200 || (400..500).contains(&r.status),
            "round {round}: {verb} {args}: {} {body}",
            r.status
        );
        if r.status != 200 {
            assert!(body["error"]["code"].is_string(), "round {round}: {body}");
        }
    }
    assert!(gw.is_running(), "the gateway survived every bad request");
    let metrics = common::http::request(&gw.addr, "GET", "/metrics", b"")
        .await
        .expect("GET /metrics");
    assert_eq!(metrics.status, 200);
    for series in [
        r#"nokv_gateway_calls_total{result="ok",verb="find"}"#,
        r#"nokv_gateway_calls_total{result="bad_cursor",verb="find"}"#,
        r#"nokv_gateway_calls_total{result="unknown_verb",verb="unknown"}"#,
        "nokv_gateway_call_seconds_bucket",
    ] {
        assert!(
            metrics.body.contains(series),
            "{series} in {}",
            metrics.body
        );
    }
    gw.ok("ls", json!({"path": "/"})).await;
}

/// `find` over `path` with `preds`: the plan it used and the paths found.
async fn find_plan(
    gw: &Gateway,
    path: &str,
    preds: Value,
    snapshot: Option<u64>,
) -> (String, Vec<String>) {
    let mut q = json!({"path": path, "predicates": preds, "limit": 100});
    if let Some(id) = snapshot {
        q["snapshot"] = json!(id);
    }
    let found = gw.ok("find", q).await;
    let plan = found["plan"]
        .as_str()
        .unwrap_or_else(|| panic!("a plan: {found}"));
    (plan.to_string(), paths(&found, "matches"))
}

/// The field indexes answer `find` and `aggregate` (attributes and content
/// fields, across the graft), exactly as a walk would: after a rename, a
/// replace and an unlink; at a snapshot (the index as of the pin); and for
/// a raw commit without fields (the leader extracts them).
async fn indexed_push_down(gw: &Gateway, cluster: &Cluster, client: &Client) {
    let failed = || json!([{"field": "status", "op": "eq", "value": "failed"}]);
    let failed_runs: Vec<String> = runs_ref()
        .iter()
        .filter(|r| r.status == "failed")
        .map(|r| format!("{}/params.json", run_dir(r.id)))
        .collect();
    let (plan, found) = find_plan(gw, "/runs", failed(), None).await;
    assert_eq!((plan.as_str(), &found), ("index:status", &failed_runs));
    // The same question as a walk (`ne` cannot use the index).
    let (plan, walked) = find_plan(
        gw,
        "/runs",
        json!([{"field": "status", "op": "ne", "value": "ok"}]),
        None,
    )
    .await;
    assert_eq!((plan.as_str(), &walked), ("scan", &failed_runs));
    // A content field of the JSON configs, by range, across both shards.
    let small_lr: Vec<String> = runs_ref()
        .iter()
        .filter(|r| r.lr < 0.005)
        .map(|r| format!("{}/params.json", run_dir(r.id)))
        .collect();
    let (plan, found) = find_plan(
        gw,
        "/runs",
        json!([{"field": "lr", "op": "lt", "value": 0.005}]),
        None,
    )
    .await;
    assert_eq!((plan.as_str(), &found), ("index:lr", &small_lr));
    // A nested JSON key, by prefix, in the grafted shard alone.
    let (plan, found) = find_plan(
        gw,
        "/runs/b",
        json!([{"field": "optimizer.name", "op": "prefix", "value": "ad"}]),
        None,
    )
    .await;
    assert_eq!(plan, "index:optimizer.name");
    assert_eq!(found.len(), 4, "{found:?}");
    let agg = gw
        .ok(
            "aggregate",
            json!({"path": "/runs", "predicates": [{"field": "status", "op": "exists"}],
                   "group_by": ["status"], "measures": [{"name": "n", "op": "count"}]}),
        )
        .await;
    assert_eq!(agg["plan"], "index:status", "{agg}");
    assert_eq!(agg["input_match_count"], 8, "{agg}");
    // An unknown field is still named as such.
    let r = gw
        .call(
            "find",
            json!({"path": "/runs", "predicates": [{"field": "nosuch", "op": "eq", "value": 1}]}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("unknown_field"), "{}", r.body);

    // Pin /runs/a, then rename a failed run, replace its config as ok, and
    // unlink the other failed run's config.
    let snap = cluster
        .must_nokv(&["--json", "snapshot", "create", "/runs/a", "--lease", "1h"])
        .await;
    let snap: Value = serde_json::from_str(&snap).expect("snapshot JSON");
    let snap_id = snap["id"].as_u64().expect("snapshot id");
    cluster.must(
        client
            .rename("/runs/a/3", "/runs/a/3-renamed", RenameMode::Replace)
            .await,
        "rename a run",
    );
    let (plan, found) = find_plan(gw, "/runs", failed(), None).await;
    assert_eq!(plan, "index:status");
    assert_eq!(
        found,
        ["/runs/a/3-renamed/params.json", "/runs/b/6/params.json"]
    );
    publish(
        client,
        "/runs/a/3-renamed/params.json",
        br#"{"lr": 0.5}"#,
        "application/json",
        &[("status", "ok".to_string())],
    )
    .await;
    cluster.must(
        client.unlink("/runs/b/6/params.json").await,
        "unlink a config",
    );
    let (plan, found) = find_plan(gw, "/runs", failed(), None).await;
    assert_eq!(
        (plan.as_str(), found.len()),
        ("index:status", 0),
        "{found:?}"
    );
    let (_, found) = find_plan(
        gw,
        "/runs",
        json!([{"field": "lr", "op": "eq", "value": 0.5}]),
        None,
    )
    .await;
    assert_eq!(found, ["/runs/a/3-renamed/params.json"]);
    // At the pin: the index as it was.
    let (plan, found) = find_plan(gw, "/runs/a", failed(), Some(snap_id)).await;
    assert_eq!(plan, "index:status");
    assert_eq!(found, ["/runs/a/3/params.json"]);
    cluster
        .must_nokv(&["snapshot", "rm", &snap_id.to_string()])
        .await;

    // A raw commit sends no fields: the leader extracts them (reading the
    // small JSON body back), so the body is indexed all the same.
    let opts = PutOptions {
        content_type: "application/json".into(),
        attrs: [("status".to_string(), "failed".to_string())].into(),
        ..PutOptions::default()
    };
    let staged = cluster.must(client.stage("/runs/a/legacy.json", &opts).await, "stage");
    let spec = cluster.must(
        client
            .upload_blocks(&staged, &br#"{"lr": 9}"#[..], &opts, &|_| {})
            .await,
        "upload",
    );
    cluster.must(client.commit(staged.id, spec).await, "a raw commit");
    let (plan, found) = find_plan(gw, "/runs", failed(), None).await;
    assert_eq!(
        (plan.as_str(), &found[..]),
        ("index:status", &["/runs/a/legacy.json".to_string()][..])
    );
    let (plan, found) = find_plan(
        gw,
        "/runs/a",
        json!([{"field": "lr", "op": "eq", "value": 9}]),
        None,
    )
    .await;
    assert_eq!(
        (plan.as_str(), &found[..]),
        ("index:lr", &["/runs/a/legacy.json".to_string()][..]),
        "its content fields too"
    );
    cluster.must(client.unlink("/runs/a/legacy.json").await, "unlink");
    let (plan, _) = find_plan(gw, "/runs", failed(), None).await;
    assert_eq!(plan, "index:status");
}

/// The corpus as a static slice (for oracles in closures).
fn runs_ref() -> &'static [Run] {
    static RUNS: std::sync::OnceLock<Vec<Run>> = std::sync::OnceLock::new();
    RUNS.get_or_init(runs)
}

/// xorshift64: a deterministic stream for the random requests.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A JSON value of a random shape, nested at most `depth` deep.
fn random_value(rng: &mut u64, depth: u32) -> Value {
    let pick = next(rng) % if depth == 0 { 8 } else { 10 };
    match pick {
        0 => json!(null),
        1 => json!(next(rng).is_multiple_of(2)),
        2 => json!([0, 1, 100, 101, 1 << 40, u64::MAX][(next(rng) % 6) as usize]),
        3 => json!([-1.5, 0.0, 1e308, -9_007_199_254_740_993i64 as f64][(next(rng) % 4) as usize]),
        4 => json!(
            [
                "/",
                "/runs",
                "/runs/a/3/train.log",
                "",
                "runs",
                "/runs/../x",
                "/a\u{0}b"
            ][(next(rng) % 7) as usize]
        ),
        5 => json!(
            [
                "nokv://runs/a/3/train.log@g1#L1",
                "nokv://runs@g0",
                "nokv://%zz",
                "eq",
                "gt",
                "in",
                "status",
                "lr",
                "garbage.cursor",
                "0000000000000000.99999999999",
            ][(next(rng) % 10) as usize]
        ),
        6 => json!("x".repeat((next(rng) % 5000) as usize)),
        7 => json!({"field": "status", "op": "eq", "value": "failed"}),
        8 => Value::Array(
            (0..next(rng) % 4)
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => random_args_at(rng, depth - 1),
    }
}

fn random_args(rng: &mut u64) -> Value {
    random_args_at(rng, 2)
}

fn random_args_at(rng: &mut u64, depth: u32) -> Value {
    const KEYS: [&str; 20] = [
        "path",
        "predicates",
        "sort",
        "fields",
        "facets",
        "cursor",
        "limit",
        "snapshot",
        "measures",
        "group_by",
        "pattern",
        "recursive",
        "uri",
        "format",
        "offset",
        "length",
        "text",
        "field_prefix",
        "include_facets",
        "bogus",
    ];
    let mut map = serde_json::Map::new();
    if !next(rng).is_multiple_of(4) {
        map.insert(
            "path".into(),
            json!(["/runs", "/", "/runs/a/3/train.log"][(next(rng) % 3) as usize]),
        );
    }
    for _ in 0..next(rng) % 5 {
        let key = KEYS[(next(rng) % KEYS.len() as u64) as usize];
        map.insert(key.into(), random_value(rng, depth));
    }
    Value::Object(map)
}

/// The gateway rides through a leader failover: while the leader is
/// killed and a new one elected, every call gets an answer (200, or a
/// retryable 503/504, never a wrong result), and once a leader is back the
/// answers are complete again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_answer_through_a_leader_failover() {
    let _load = common::light_test().await;
    let store = TestStore::start(StoreKind::File)
        .await
        .expect("a local store");
    let url = store.url();
    let env = store.serve_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut cluster = Cluster::start_with_env(&["--blob-store", url.as_str()], &env).await;
    let client = cluster.client();
    cluster.must(client.mkdir("/f", true).await, "mkdir /f");
    for i in 0..20 {
        let status = if i % 5 == 0 { "failed" } else { "ok" };
        publish(
            &client,
            &format!("/f/{i}.json"),
            br#"{"x": 1}"#,
            "application/json",
            &[("status", status.into())],
        )
        .await;
    }
    let gw = Gateway::start(&cluster.endpoints(), &["--call-timeout", "20s"]).await;
    let query =
        json!({"path": "/f", "predicates": [{"field": "status", "op": "eq", "value": "failed"}]});
    assert_eq!(gw.ok("find", query.clone()).await["match_count"], 4);

    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    cluster.kill(leader);
    let others = cluster.ids_except(leader);
    let mut answered = 0;
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let r = gw.call("find", query.clone()).await;
        match r.status {
            200 => {
                assert_eq!(
                    r.json()["match_count"],
                    4,
                    "a complete answer or none: {}",
                    r.body
                );
                answered += 1;
            }
            503 | 504 => {}
            other => panic!("during failover: {other} {}", r.body),
        }
        if answered >= 3 && cluster.agreed_leader(&others).await.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answers after the leader was killed"
        );
    }
    cluster.restart(leader).await;
    assert_eq!(gw.ok("find", query).await["match_count"], 4);
}
