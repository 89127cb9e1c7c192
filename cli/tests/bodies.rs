//! Multi-process integration tests of object-backed file bodies.
//!
//! Every test runs three real `nokv serve` replicas (see `common/mod.rs`)
//! whose bodies live in a real object store: a `file:///` directory and a
//! real S3 server (`s3s-fs`, see `common/store.rs`); scenarios that make
//! sense on both run once per store, as `file::NAME` and `s3::NAME`. Each
//! proves one promise of the publish/read protocol:
//!
//! - `round_trip`: empty, 1-byte, 5 KiB and 3.5-block bodies read back
//!   whole (digest-verified) and by any range (start, middle, across block
//!   boundaries, end, past the end); the body describes itself (size,
//!   generation, sha256 of the bytes, block plan, attributes) through the
//!   SDK and `nokv stat --json`; `nokv put/cat/get` agree with the SDK.
//! - `atomic_replace_under_readers`: while one writer replaces a file over
//!   and over with two bodies of different sizes, concurrent readers only
//!   ever see one whole body, never a mix, never an error; a reader holding
//!   an old block plan can still read it during the grace period, and the
//!   superseded blocks are kept until then and collected after.
//! - `killed_client_leaves_nothing_behind`: a `nokv put` SIGKILLed after
//!   uploading blocks leaves a staged upload that fsck accounts for and GC
//!   leaves alone while its lease runs, nothing visible, and nothing at all
//!   once it is aborted; an SDK upload abandoned with a short lease is
//!   reclaimed by GC alone (record, blocks, no file), and a late commit of
//!   it is refused.
//! - `streaming_put_uploads_blocks_while_waiting_for_input` (file store):
//!   `nokv put -` uploads each block as it is read, while it waits for
//!   more input. Fails today (see the test's doc).
//! - `leader_killed_during_publish` (heavy): concurrent replaces and
//!   creates while the leader is SIGKILLed; every acknowledged publish read
//!   back right away with its digest; afterwards every file holds its last
//!   acknowledged body or a later one whose outcome was unknown, never a
//!   body whose publish failed; after leases and GC run out, fsck finds
//!   every live block and no stray object.
//! - `publish_errors_change_nothing`: commits naming missing blocks,
//!   blocks of the wrong size or outside the upload's prefix, malformed
//!   digests, stale generations, and publishes onto directories fail with
//!   the documented codes and leave the file as it was; a body whose
//!   declared digest does not match its bytes is accepted (the cluster
//!   never reads bodies) but every full read of it fails with `INTEGRITY`.
//! - `s3_store_outage_loses_nothing` (S3 only): with the S3 server down,
//!   `put` and reads fail with `STORE` errors and commits are refused as
//!   unavailable; once it is back on the same port and data, the previous
//!   body reads back intact and the interrupted publish can commit.
//! - `gc_and_fsck`: superseded blocks stay for the grace period and are
//!   then deleted, live ones never; `nokv gc [--now] --json` and `nokv fsck
//!   --json` report exact numbers; fsck reports a block deleted behind the
//!   cluster's back as `MISSING_BLOCK` and a stray object as
//!   `ORPHAN_OBJECT`, and exits non-zero.
//! - `publish_dir`: a nested local directory becomes visible in one commit
//!   with the right digests (special files are skipped); when one file's
//!   upload fails mid-way nothing but directories appears and every upload
//!   is aborted and reclaimed.
//! - `put_many_publishes_every_body_in_one_commit_or_none` (file store):
//!   the SDK's bulk publish makes 150 small bodies visible in one commit,
//!   and a call with one body that cannot be staged makes none visible and
//!   leaves nothing staged.
//! - `publish_dir_staging_failure_aborts_earlier_uploads` (file store): the
//!   same all-or-nothing promise when staging a later file fails (its
//!   target is a directory). Fails today: `nokv publish-dir` does not abort
//!   the uploads it staged before a staging error.
//! - `a_burst_of_the_largest_commands_commits_and_replicates` (file store,
//!   heavy): 24 indexed commits of just under 4 MiB each, sent at once,
//!   all commit and every replica indexes all of them (log entries are
//!   capped by bytes).
//!
//! Synchronisation is by polling under deadlines, never by sleeping. Set
//! `NOKV_TEST_KEEP_DIRS=1` to keep every node's data and log,
//! `NOKV_SKIP_S3=1` to skip the S3 variants.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::store::{StoreKind, TestStore};
use common::{nokv_command, Cluster, WAIT};
use nokv_blob::BlobStore;
use nokv_client::{
    Attr, BlockRef, Body, BodySpec, Client, ClientConfig, ClientError, Consistency, FileType,
    FsckResponse, Generation, IndexKey, IndexRange, PublishMode, PutOptions, Query, QueryResult,
    StagedUpload, UploadId,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Block size of most bodies here: small, so bodies of a few blocks are cheap.
const BLOCK: usize = 64 * 1024;

/// GC settings of clusters whose tests wait for GC: quick passes, a short
/// reader grace period.
const FAST_GC: [&str; 4] = ["--gc-interval", "200ms", "--gc-grace", "1s"];

/// Runs each scenario once per store kind, as `file::NAME` and `s3::NAME`,
/// under the harness's load lock (`light_test` or `heavy_test`).
macro_rules! on_both_stores {
    ($($scenario:ident: $lock:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let _load = crate::common::$lock().await;
                    crate::$scenario(crate::StoreKind::File).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let _load = crate::common::$lock().await;
                    crate::$scenario(crate::StoreKind::S3).await;
                }
            )*
        }
    };
}

on_both_stores!(
    round_trip: light_test,
    atomic_replace_under_readers: light_test,
    killed_client_leaves_nothing_behind: light_test,
    leader_killed_during_publish: heavy_test,
    publish_errors_change_nothing: light_test,
    gc_and_fsck: light_test,
    publish_dir: light_test,
    a_paused_old_leader_changes_nothing: light_test,
);

// ---------------------------------------------------------------------------
// Helpers

/// Lowercase hex sha256 of `data`.
fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `len` pseudo-random bytes, different for every `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The block sizes a body of `len` bytes is cut into.
fn block_sizes(len: usize, block: usize) -> Vec<u64> {
    let mut sizes = vec![block as u64; len / block];
    if !len.is_multiple_of(block) {
        sizes.push((len % block) as u64);
    }
    sizes
}

/// The bytes of `data` a read of `range` returns (clamped to the body).
fn slice_of(data: &[u8], range: &Range<u64>) -> Vec<u8> {
    let len = data.len() as u64;
    let start = range.start.min(len) as usize;
    let end = range.end.min(len).max(range.start.min(len)) as usize;
    data[start..end].to_vec()
}

/// Options for a publish with `mode` and blocks of `block` bytes.
fn put_options(mode: PublishMode, block: usize) -> PutOptions {
    PutOptions {
        mode,
        block_size: block,
        ..Default::default()
    }
}

/// The error of `result`, or a panic naming `what` when it succeeded.
fn must_err<T: std::fmt::Debug>(result: Result<T, ClientError>, what: &str) -> ClientError {
    match result {
        Ok(value) => panic!("{what} succeeded ({value:?}) but should have failed"),
        Err(e) => e,
    }
}

/// Asserts `result` failed with the engine code `code` and a message
/// containing `needle`.
fn must_fail_with<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    code: &str,
    needle: &str,
    what: &str,
) -> ClientError {
    let e = must_err(result, what);
    assert_eq!(e.code(), code, "{what}: wrong error {e:?}");
    assert!(
        e.to_string().contains(needle),
        "{what}: error {e} does not mention {needle:?}"
    );
    e
}

/// A three-replica cluster whose bodies live in a fresh store, and a
/// client. The cluster is dropped (its replicas killed) before the store.
struct BodyCluster {
    cluster: Cluster,
    store: TestStore,
    client: Client,
}

impl BodyCluster {
    /// Starts a store of `kind` and a cluster using it, with `extra_args`
    /// for every `nokv serve`. `None` when S3 tests are skipped.
    async fn start(kind: StoreKind, extra_args: &[&str]) -> Option<BodyCluster> {
        let store = TestStore::start(kind).await?;
        let url = store.url();
        let mut args = vec!["--blob-store", url.as_str()];
        args.extend_from_slice(extra_args);
        let env = store.serve_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cluster = Cluster::start_with_env(&args, &env).await;
        let client = cluster.client();
        Some(BodyCluster {
            cluster,
            store,
            client,
        })
    }

    fn fail(&self, message: impl std::fmt::Display) -> ! {
        self.cluster.fail(message)
    }

    /// The cluster's object store, opened from the location it reports.
    async fn blobs(&self) -> Arc<dyn BlobStore> {
        self.cluster.must(
            self.client.blob_store().await,
            "open the cluster's object store",
        )
    }

    /// Every object key under `prefix`, sorted.
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let store = self.blobs().await;
        let listed = self
            .cluster
            .must(store.list(prefix).await, &format!("list {prefix:?}"));
        listed.into_iter().map(|o| o.key).collect()
    }

    async fn must_put(&self, path: &str, data: &[u8], opts: &PutOptions) -> Attr {
        self.cluster.must(
            self.client.put_bytes(path, data, opts).await,
            &format!("publish {} bytes at {path}", data.len()),
        )
    }

    /// The current body of `path` (which must have one).
    async fn must_body(&self, path: &str) -> Body {
        let (_, body) = self.cluster.must(
            self.client.read_body(path, Consistency::Linearizable).await,
            &format!("read the body of {path}"),
        );
        body.unwrap_or_else(|| self.fail(format!("{path} has no body")))
    }

    /// All bytes of `path`, digest-verified by the SDK.
    async fn must_get(&self, path: &str) -> Vec<u8> {
        self.cluster
            .must(self.client.get(path, None).await, &format!("read {path}"))
            .to_vec()
    }

    /// Panics unless `path` does not exist.
    async fn must_be_absent(&self, path: &str) {
        match self.client.stat(path, Consistency::Linearizable).await {
            Err(e) if e.is_not_found() => {}
            other => self.fail(format!("{path} should not exist, stat gave {other:?}")),
        }
    }

    /// The staged uploads (linearizable).
    async fn uploads(&self) -> Vec<StagedUpload> {
        let result = self.cluster.must(
            self.client
                .query(Query::ListUploads, Consistency::Linearizable)
                .await,
            "list staged uploads",
        );
        match result {
            QueryResult::Uploads(list) => list,
            other => self.fail(format!("ListUploads answered {other:?}")),
        }
    }

    /// fsck, which must find no problem.
    /// Archives the log up to now (`nokv backup`): GC deletes nothing that
    /// a log entry the archive lacks made unreachable, so the tests archive
    /// before asking GC for exact numbers.
    async fn must_archive(&self) {
        self.cluster.must(self.client.backup().await, "backup");
    }

    async fn must_fsck_clean(&self) -> FsckResponse {
        let report = self.cluster.must(self.client.fsck().await, "fsck");
        if !report.problems.is_empty() {
            self.fail(format!("fsck found problems: {:?}", report.problems));
        }
        report
    }

    /// Waits until every answering replica reports no staged upload and no
    /// queued GC task (leases expired, GC done).
    async fn must_settle_gc(&self) {
        self.cluster
            .wait_until(
                WAIT,
                "every replica reports 0 staged uploads and 0 pending GC tasks",
                async || {
                    let mut answered = 0;
                    for id in self.cluster.ids() {
                        if let Some(s) = self.cluster.status(id).await {
                            if s.staged_uploads != 0 || s.gc_pending != 0 {
                                return false;
                            }
                            answered += 1;
                        }
                    }
                    answered >= 2
                },
            )
            .await
    }

    /// Runs `nokv ARGS --json` (must succeed) and parses its output.
    async fn must_nokv_json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.cluster.must_nokv(&full).await;
        serde_json::from_str(&out)
            .unwrap_or_else(|e| self.fail(format!("`nokv {args:?} --json` printed {out:?}: {e}")))
    }

    /// Every file below `dir`, recursively (paths).
    async fn files_below(&self, dir: &str) -> BTreeSet<String> {
        let mut files = BTreeSet::new();
        let mut stack = vec![dir.to_string()];
        while let Some(d) = stack.pop() {
            let entries = self.cluster.must(
                self.client
                    .read_dir_all(&d, Consistency::Linearizable)
                    .await,
                &format!("list {d}"),
            );
            for e in entries {
                let path = format!("{d}/{}", e.name);
                match e.attr.file_type {
                    FileType::Directory => stack.push(path),
                    _ => {
                        files.insert(path);
                    }
                }
            }
        }
        files
    }
}

// ---------------------------------------------------------------------------
// 1. Round trip

async fn round_trip(kind: StoreKind) {
    let Some(bc) = BodyCluster::start(kind, &[]).await else {
        return;
    };
    let c = &bc.client;
    bc.cluster.must(c.mkdir("/rt", true).await, "mkdir /rt");
    let blobs = bc.blobs().await;
    let mut last_generation = 0;
    for (name, len) in [
        ("empty", 0),
        ("one-byte", 1),
        ("small", 5 * 1024),
        ("multi", BLOCK * 7 / 2),
    ] {
        let path = format!("/rt/{name}");
        let data = pattern(len as u64 + 7, len);
        let opts = PutOptions {
            content_type: "application/x-nokv-test".into(),
            producer: "bodies-test".into(),
            attrs: BTreeMap::from([
                ("name".to_string(), name.to_string()),
                ("len".to_string(), len.to_string()),
            ]),
            ..put_options(PublishMode::CreateOnly, BLOCK)
        };
        let attr = bc.must_put(&path, &data, &opts).await;
        assert_eq!(attr.file_type, FileType::File, "{path}");
        assert_eq!(attr.size, len as u64, "{path}: size in the commit's answer");
        assert!(
            attr.generation.0 > last_generation,
            "{path}: generation {} after {last_generation}: generations only grow",
            attr.generation.0
        );
        last_generation = attr.generation.0;

        // The body describes exactly these bytes.
        let body = bc.must_body(&path).await;
        assert_eq!(body.generation, attr.generation, "{path}");
        assert_eq!(body.size, len as u64, "{path}");
        assert_eq!(body.sha256, sha256_hex(&data), "{path}: sha256");
        let sizes: Vec<u64> = body.blocks.iter().map(|b| b.size).collect();
        assert_eq!(sizes, block_sizes(len, BLOCK), "{path}: block plan");
        assert_eq!(body.attrs, opts.attrs, "{path}");
        assert_eq!(body.content_type, "application/x-nokv-test", "{path}");
        assert_eq!(body.producer, "bodies-test", "{path}");
        for block in &body.blocks {
            let stored = bc
                .cluster
                .must(blobs.head(&block.key).await, "head a block");
            assert_eq!(stored, Some(block.size), "{path}: block {}", block.key);
        }

        // Whole (digest-verified) and ranged reads.
        assert_eq!(bc.must_get(&path).await, data, "{path}: whole body");
        let n = len as u64;
        let b = BLOCK as u64;
        let ranges = [
            0..10,
            0..0,
            n / 2..n / 2 + b + 3,
            b - 1..b + 1,
            2 * b..3 * b + 17,
            n.saturating_sub(10)..n,
            n.saturating_sub(5)..n + 100,
            n + 10..n + 20,
            0..u64::MAX,
        ];
        for range in ranges {
            let got = bc.cluster.must(
                c.get(&path, Some(range.clone())).await,
                &format!("read {path} {range:?}"),
            );
            assert_eq!(
                got.to_vec(),
                slice_of(&data, &range),
                "{path}: range {range:?}"
            );
        }

        // The CLI shows and reads the same.
        let stat = bc.must_nokv_json(&["stat", &path]).await;
        assert_eq!(stat["size"], len as u64, "{stat}");
        assert_eq!(stat["generation"], attr.generation.0, "{stat}");
        assert_eq!(stat["body"]["sha256"], sha256_hex(&data).as_str(), "{stat}");
        assert_eq!(stat["body"]["blocks"], body.blocks.len(), "{stat}");
        assert_eq!(stat["body"]["attrs"]["name"], name, "{stat}");
        assert_eq!(
            stat["body"]["content_type"], "application/x-nokv-test",
            "{stat}"
        );
        let cat = bc.cluster.nokv(&["cat", &path]).await;
        assert!(cat.status.success(), "nokv cat {path}: {cat:?}");
        assert_eq!(cat.stdout, data, "nokv cat {path}");
        let cat = bc.cluster.nokv(&["cat", &path, "--range", "3-70000"]).await;
        assert!(cat.status.success(), "nokv cat --range {path}: {cat:?}");
        assert_eq!(cat.stdout, slice_of(&data, &(3..70000)), "nokv cat --range");
    }

    // `nokv put` from a local file, `nokv get` to one, `put --replace`.
    let local = tempfile::tempdir().expect("local temporary directory");
    let first = pattern(101, BLOCK * 7 / 2);
    let second = pattern(102, 1000);
    let first_path = local.path().join("first.bin");
    let second_path = local.path().join("second.bin");
    std::fs::write(&first_path, &first).expect("write a local file");
    std::fs::write(&second_path, &second).expect("write a local file");
    let put = bc
        .must_nokv_json(&[
            "put",
            "--block-size",
            "65536",
            "--attr",
            "step=100",
            first_path.to_str().expect("utf-8 path"),
            "/rt/cli.bin",
        ])
        .await;
    assert_eq!(put["size"], first.len(), "{put}");
    let body = bc.must_body("/rt/cli.bin").await;
    assert_eq!(body.blocks.len(), 4, "3.5 blocks are 4 blocks");
    assert_eq!(body.attrs["step"], "100");
    assert_eq!(body.producer, "nokv-cli");
    assert_eq!(body.sha256, sha256_hex(&first));
    assert_eq!(bc.must_get("/rt/cli.bin").await, first);
    let fetched = local.path().join("fetched.bin");
    bc.cluster
        .must_nokv(&["get", "/rt/cli.bin", fetched.to_str().expect("utf-8 path")])
        .await;
    assert_eq!(std::fs::read(&fetched).expect("read fetched"), first);
    let streamed = bc.cluster.nokv(&["get", "/rt/cli.bin", "-"]).await;
    assert!(streamed.status.success(), "get -: {streamed:?}");
    assert!(streamed.stdout == first, "get - writes the bytes to stdout");
    assert!(!Path::new("-").exists(), "and no file named -");
    let replaced = bc
        .must_nokv_json(&[
            "put",
            "--replace",
            second_path.to_str().expect("utf-8 path"),
            "/rt/cli.bin",
        ])
        .await;
    assert!(
        replaced["generation"].as_u64() > put["generation"].as_u64(),
        "{replaced} after {put}"
    );
    assert_eq!(bc.must_get("/rt/cli.bin").await, second);
    let refused = bc
        .cluster
        .must_nokv_fail(&[
            "put",
            "--create-only",
            first_path.to_str().expect("utf-8 path"),
            "/rt/cli.bin",
        ])
        .await;
    assert!(refused.contains("already exists"), "{refused}");
    assert_eq!(bc.must_get("/rt/cli.bin").await, second);
}

// ---------------------------------------------------------------------------
// 2. Atomic replace under concurrent readers

async fn atomic_replace_under_readers(kind: StoreKind) {
    // A grace period far longer than the test: no reader may ever fail.
    let Some(bc) =
        BodyCluster::start(kind, &["--gc-interval", "200ms", "--gc-grace", "120s"]).await
    else {
        return;
    };
    // The writer replaces at least MIN_REPLACES times, and goes on (up to
    // MAX_REPLACES) until the readers have done MIN_READS whole reads. The
    // cap only bounds the run: on a loaded 2-core machine the writer (whose
    // blocks hash in parallel tasks) outran the readers and 80 replaces saw
    // 28 reads, so it is generous.
    const MIN_REPLACES: usize = 20;
    const MAX_REPLACES: usize = 400;
    const MIN_READS: usize = 30;
    const READERS: usize = 3;
    const PATH: &str = "/swap";
    let body_a = vec![0xA1u8; 3 * BLOCK + 1000]; // 4 blocks
    let body_b = vec![0xB2u8; BLOCK + 500]; // 2 blocks
    let opts = put_options(PublishMode::Upsert, BLOCK);
    let first = bc.must_put(PATH, &body_a, &opts).await;

    let done = Arc::new(AtomicBool::new(false));
    let latest = Arc::new(AtomicU64::new(first.generation.0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let total_reads = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (client, done, latest) = (bc.client.clone(), done.clone(), latest.clone());
        let (a, b, opts) = (body_a.clone(), body_b.clone(), opts.clone());
        let total_reads = total_reads.clone();
        tokio::spawn(async move {
            let mut replaces = 0;
            let mut result = Ok(());
            while replaces < MIN_REPLACES
                || (total_reads.load(Ordering::SeqCst) < MIN_READS && replaces < MAX_REPLACES)
            {
                let data = if replaces.is_multiple_of(2) { &b } else { &a };
                match client.put_bytes(PATH, data, &opts).await {
                    Ok(attr) => latest.store(attr.generation.0, Ordering::SeqCst),
                    Err(e) => {
                        result = Err(format!("replace {replaces}: {e}"));
                        break;
                    }
                }
                replaces += 1;
            }
            done.store(true, Ordering::SeqCst);
            result.map(|()| replaces)
        })
    };
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (client, done, latest, errors) = (
                bc.client.clone(),
                done.clone(),
                latest.clone(),
                errors.clone(),
            );
            let total_reads = total_reads.clone();
            let (len_a, len_b) = (body_a.len() as u64, body_b.len() as u64);
            tokio::spawn(async move {
                let mut seen = BTreeSet::new();
                let (mut reads, mut late_reads) = (0usize, 0usize);
                let fail = |what: String| errors.lock().expect("errors lock").push(what);
                let mut iteration = 0usize;
                while !done.load(Ordering::SeqCst) {
                    iteration += 1;
                    let body = match client.read_body(PATH, Consistency::Linearizable).await {
                        Ok((_, Some(body))) => body,
                        other => {
                            fail(format!("reader {r}: read_body gave {other:?}"));
                            break;
                        }
                    };
                    let byte = match body.size {
                        s if s == len_a => 0xA1u8,
                        s if s == len_b => 0xB2u8,
                        s => {
                            fail(format!("reader {r}: a body of {s} bytes was published"));
                            break;
                        }
                    };
                    let check =
                        |what: &str, bytes: Result<Bytes, ClientError>, len: u64| match bytes {
                            Ok(b) if b.len() as u64 == len && b.iter().all(|x| *x == byte) => {
                                Ok(())
                            }
                            Ok(b) => Err(format!(
                                "reader {r}: {what} of generation {} ({len} bytes of {byte:#x}) \
                             gave {} bytes, {} of them other bytes",
                                body.generation.0,
                                b.len(),
                                b.iter().filter(|x| **x != byte).count()
                            )),
                            Err(e) => Err(format!(
                                "reader {r}: {what} of generation {}: {e}",
                                body.generation.0
                            )),
                        };
                    let whole = client.read_range(&body, None).await;
                    if let Err(e) = check("whole read", whole, body.size) {
                        fail(e);
                        break;
                    }
                    let window = (BLOCK as u64 - 100)..(BLOCK as u64 + 100);
                    let part = client.read_range(&body, Some(window.clone())).await;
                    let part_len = window.end.min(body.size) - window.start.min(body.size);
                    if let Err(e) = check("read across a block boundary", part, part_len) {
                        fail(e);
                        break;
                    }
                    seen.insert(byte);
                    reads += 1;
                    total_reads.fetch_add(1, Ordering::SeqCst);
                    // Now and then keep the plan until a newer generation is
                    // published, then read it: the grace period keeps it.
                    if iteration.is_multiple_of(3) {
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while latest.load(Ordering::SeqCst) <= body.generation.0
                            && !done.load(Ordering::SeqCst)
                            && Instant::now() < deadline
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if latest.load(Ordering::SeqCst) > body.generation.0 {
                            let old = client.read_range(&body, None).await;
                            if let Err(e) = check("late read of a superseded body", old, body.size)
                            {
                                fail(e);
                                break;
                            }
                            late_reads += 1;
                        }
                    }
                }
                (reads, late_reads, seen)
            })
        })
        .collect();
    let written = writer.await.expect("writer task panicked");
    let (mut reads, mut late_reads, mut seen) = (0, 0, BTreeSet::new());
    for reader in readers {
        let (r, l, s) = reader.await.expect("reader task panicked");
        reads += r;
        late_reads += l;
        seen.extend(s);
    }
    let replaces = written.unwrap_or_else(|e| bc.fail(format!("the writer failed: {e}")));
    let errors = errors.lock().expect("errors lock").clone();
    if !errors.is_empty() {
        bc.fail(format!(
            "readers saw {} bad reads: {errors:#?}",
            errors.len()
        ));
    }
    eprintln!(
        "{kind:?}: {replaces} replaces, {reads} whole reads, {late_reads} late reads of \
         superseded bodies"
    );
    assert!(
        reads >= MIN_READS,
        "only {reads} reads in {replaces} replaces"
    );
    assert_eq!(
        seen,
        BTreeSet::from([0xA1, 0xB2]),
        "readers saw both bodies"
    );
    assert!(late_reads >= 1, "no reader read a superseded body");

    // Every superseded body is still stored (grace) and queued for GC.
    let blocks_of = |i: usize| if i.is_multiple_of(2) { 2 } else { 4 };
    let all_blocks = 4 + (0..replaces).map(blocks_of).sum::<usize>();
    let live_blocks = blocks_of(replaces - 1);
    assert_eq!(bc.keys("blocks/").await.len(), all_blocks);
    let leader = bc.cluster.must_agreed_leader(&[1, 2, 3]).await;
    let status = bc.cluster.status(leader).await.expect("leader status");
    assert_eq!(status.gc_pending, replaces as u64, "{status:?}");
    // Collecting now (ignoring the grace) keeps exactly the live body.
    bc.must_archive().await;
    let gc = bc.must_nokv_json(&["gc", "--now"]).await;
    assert_eq!(gc["tasks_done"], replaces, "{gc}");
    assert_eq!(gc["objects_deleted"], all_blocks - live_blocks, "{gc}");
    let live: Vec<String> = bc
        .must_body(PATH)
        .await
        .blocks
        .into_iter()
        .map(|b| b.key)
        .collect();
    assert_eq!(live.len(), live_blocks);
    assert_eq!(bc.keys("blocks/").await, live);
    let last = if (replaces - 1).is_multiple_of(2) {
        &body_b
    } else {
        &body_a
    };
    assert_eq!(bc.must_get(PATH).await, *last, "the last replace wins");
    bc.must_fsck_clean().await;
}

// ---------------------------------------------------------------------------
// 3. A client killed between upload and commit

async fn killed_client_leaves_nothing_behind(kind: StoreKind) {
    let Some(bc) = BodyCluster::start(kind, &FAST_GC).await else {
        return;
    };
    let c = &bc.client;

    // (a) `nokv put -` streams stdin in blocks; SIGKILL it after 4 blocks
    // are in the store, while it waits for more input.
    let endpoints = bc.cluster.endpoints().join(",");
    let mut child = nokv_command()
        .args(["--endpoints", &endpoints, "put", "--block-size", "65536"])
        // One block in flight: each block is uploaded as soon as it is read
        // (with more, queued uploads only start once the window is full).
        .args(["--parallelism", "1"])
        .args(["-", "/x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nokv put -");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(&pattern(1, 4 * BLOCK))
        .await
        .expect("feed nokv put");
    stdin.flush().await.expect("flush nokv put's stdin");
    bc.cluster
        .wait_until(WAIT, "the writer's 4 blocks are in the store", async || {
            bc.keys("blocks/").await.len() == 4
        })
        .await;
    child.kill().await.expect("SIGKILL nokv put");
    drop(stdin);

    let listed = bc.must_nokv_json(&["uploads"]).await;
    let uploads = listed["uploads"].as_array().expect("uploads array");
    assert_eq!(uploads.len(), 1, "{listed}");
    assert_eq!(uploads[0]["name"], "x", "{listed}");
    let id = UploadId(uploads[0]["id"].as_u64().expect("upload id"));
    let prefix = uploads[0]["key_prefix"]
        .as_str()
        .expect("key prefix")
        .to_string();
    assert_eq!(bc.keys(&prefix).await.len(), 4, "blocks under {prefix}");
    assert_eq!(bc.keys("blocks/").await.len(), 4, "no other objects");
    bc.must_be_absent("/x").await;
    // The live lease protects the blocks: fsck counts them as in flight,
    // GC neither expires the upload nor deletes them.
    let report = bc.must_fsck_clean().await;
    assert_eq!((report.live_blocks, report.objects_scanned), (0, 4));
    bc.must_archive().await;
    let gc = bc.cluster.must(c.run_gc(true).await, "gc --now");
    assert_eq!((gc.uploads_expired, gc.objects_deleted), (0, 0), "{gc:?}");
    assert_eq!(bc.keys(&prefix).await.len(), 4);
    // An operator aborts it: GC deletes everything under its prefix.
    bc.cluster
        .must(c.abort(id).await, "abort the killed client's upload");
    bc.must_settle_gc().await;
    assert_eq!(bc.keys("blocks/").await, Vec::<String>::new());
    assert_eq!(
        bc.must_nokv_json(&["uploads"]).await["uploads"],
        serde_json::json!([])
    );
    bc.must_be_absent("/x").await;

    // (b) An SDK client stages with a short lease, uploads, and vanishes.
    let opts = PutOptions {
        lease: Duration::from_secs(3),
        ..put_options(PublishMode::CreateOnly, BLOCK)
    };
    let data = pattern(2, BLOCK * 7 / 2);
    let staged = bc.cluster.must(c.stage("/y", &opts).await, "stage /y");
    let spec = bc.cluster.must(
        c.upload_blocks(&staged, data.as_slice(), &opts, &|_| {})
            .await,
        "upload the blocks of /y",
    );
    let prefix = staged.key_prefix();
    assert_eq!(bc.keys(&prefix).await.len(), 4, "blocks under {prefix}");
    // Reclaimed by lease expiry and GC alone.
    bc.must_settle_gc().await;
    assert_eq!(bc.keys(&prefix).await, Vec::<String>::new());
    assert!(bc.uploads().await.is_empty());
    bc.must_be_absent("/y").await;
    // A late commit of the dead upload publishes nothing. (The leader
    // checks the blocks before the upload, so once GC has deleted them the
    // refusal is EINVAL "never uploaded" rather than ENOENT "lease expired".)
    let late = must_err(
        c.commit(staged.id, spec).await,
        "commit after the lease ran out",
    );
    let expected_refusal = match late.code() {
        "ENOENT" => late.to_string().contains(&staged.id.to_string()),
        "EINVAL" => late.to_string().contains(&format!("block {prefix}")),
        _ => false,
    };
    assert!(expected_refusal, "late commit: unexpected error {late:?}");
    bc.must_be_absent("/y").await;
    let report = bc.must_fsck_clean().await;
    assert_eq!((report.live_blocks, report.objects_scanned), (0, 0));
}

/// `nokv put -` with its default upload window: each block read from
/// stdin must reach the store while the command waits for more input, not
/// only once the window is full or the input ends (a producer that writes
/// a checkpoint slowly would otherwise have nothing uploaded for minutes,
/// and an S3 request left half-sent while stdin blocks can time out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_put_uploads_blocks_while_waiting_for_input() {
    let _load = common::light_test().await;
    let Some(bc) = BodyCluster::start(StoreKind::File, &[]).await else {
        return;
    };
    let endpoints = bc.cluster.endpoints().join(",");
    let mut child = nokv_command()
        .args(["--endpoints", &endpoints, "put", "--block-size", "65536"])
        .args(["-", "/stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nokv put -");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let data = pattern(3, 4 * BLOCK + 10);
    stdin
        .write_all(&data[..4 * BLOCK])
        .await
        .expect("feed nokv put");
    stdin.flush().await.expect("flush nokv put's stdin");
    bc.cluster
        .wait_until(
            WAIT / 2,
            "the 4 blocks read so far are in the store while `nokv put -` waits for more \
             input (client/src/bodies.rs upload_blocks only polls its queued uploads once \
             `parallelism` (8) are queued, or at the end of the input)",
            async || bc.keys("blocks/").await.len() == 4,
        )
        .await;
    stdin
        .write_all(&data[4 * BLOCK..])
        .await
        .expect("feed nokv put");
    drop(stdin);
    let out = child.wait_with_output().await.expect("wait for nokv put");
    assert!(out.status.success(), "nokv put -: {out:?}");
    assert_eq!(bc.must_get("/stream").await, data);
}

// ---------------------------------------------------------------------------
// 4. Leader killed during publishes

/// What became of one publish.
#[derive(Clone, Debug)]
enum Outcome {
    Acked,
    Unknown,
    Failed(String),
}

/// One publish of one body to one path.
#[derive(Clone, Debug)]
struct Publish {
    path: String,
    sha256: String,
    outcome: Outcome,
}

/// A body of 1 byte to 3 blocks of 16 KiB, different for every seed.
fn chaos_body(seed: u64) -> Vec<u8> {
    pattern(seed, 1 + (seed as usize * 7919) % (3 * 16 * 1024))
}

async fn leader_killed_during_publish(kind: StoreKind) {
    let Some(mut bc) = BodyCluster::start(kind, &FAST_GC).await else {
        return;
    };
    const WRITERS: u64 = 3;
    const FILES_PER_WRITER: u64 = 2;
    const MAX_ROUNDS: u64 = 40;
    const ACKS_PER_PHASE: usize = 8;
    const FAILOVERS: usize = 2;
    let opts = PutOptions {
        lease: Duration::from_secs(8),
        ..put_options(PublishMode::Upsert, 16 * 1024)
    };
    let create_opts = PutOptions {
        mode: PublishMode::CreateOnly,
        ..opts.clone()
    };
    bc.cluster
        .must(bc.client.mkdir("/c", true).await, "mkdir /c");
    let mut history: BTreeMap<String, Vec<Publish>> = BTreeMap::new();
    for w in 0..WRITERS {
        for f in 0..FILES_PER_WRITER {
            let path = format!("/c/w{w}-f{f}");
            let data = chaos_body(1_000_000 + w * 100 + f);
            bc.must_put(&path, &data, &create_opts).await;
            history.entry(path.clone()).or_default().push(Publish {
                path,
                sha256: sha256_hex(&data),
                outcome: Outcome::Acked,
            });
        }
    }

    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, acked, stop) = (bc.client.clone(), acked.clone(), stop.clone());
            let (opts, create_opts) = (opts.clone(), create_opts.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut bad_readbacks = Vec::new();
                for round in 1..=MAX_ROUNDS {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let jobs = [
                        (format!("/c/w{w}-f{}", round % FILES_PER_WRITER), &opts),
                        (format!("/c/w{w}-new{round}"), &create_opts),
                    ];
                    for (i, (path, opts)) in jobs.into_iter().enumerate() {
                        let data = chaos_body(w * 10_000 + round * 2 + i as u64);
                        let outcome = match client.put_bytes(&path, &data, opts).await {
                            Ok(_) => {
                                acked.fetch_add(1, Ordering::SeqCst);
                                // Acknowledged: readable right away, whole.
                                match client.get(&path, None).await {
                                    Ok(bytes) if bytes == data => {}
                                    other => bad_readbacks.push(format!(
                                        "{path}: acknowledged, then read {:?}",
                                        other.map(|b| sha256_hex(&b))
                                    )),
                                }
                                Outcome::Acked
                            }
                            Err(ClientError::Unknown(_)) => Outcome::Unknown,
                            Err(e) => Outcome::Failed(format!("{}: {e}", e.code())),
                        };
                        done.push(Publish {
                            path,
                            sha256: sha256_hex(&data),
                            outcome,
                        });
                    }
                }
                (done, bad_readbacks)
            })
        })
        .collect();

    bc.cluster
        .wait_until(WAIT, "writers get publishes acknowledged", async || {
            acked.load(Ordering::SeqCst) >= ACKS_PER_PHASE
        })
        .await;
    // Two failovers: SIGKILL the leader, wait until publishes are
    // acknowledged again, restart it; then the same for the next leader.
    let mut kills = Vec::new();
    for _ in 0..FAILOVERS {
        let leader = bc.cluster.must_agreed_leader(&[1, 2, 3]).await;
        let before_kill = acked.load(Ordering::SeqCst);
        bc.cluster.kill(leader);
        bc.cluster
            .wait_until(
                WAIT,
                &format!("publishes are acknowledged again after leader {leader}'s SIGKILL"),
                async || acked.load(Ordering::SeqCst) >= before_kill + ACKS_PER_PHASE,
            )
            .await;
        bc.cluster.restart(leader).await;
        kills.push(format!("leader {leader} after {before_kill} acks"));
    }
    stop.store(true, Ordering::SeqCst);
    let mut bad_readbacks = Vec::new();
    for writer in writers {
        let (done, bad) = writer.await.expect("writer task panicked");
        for p in done {
            history.entry(p.path.clone()).or_default().push(p);
        }
        bad_readbacks.extend(bad);
    }
    if !bad_readbacks.is_empty() {
        bc.fail(format!(
            "acknowledged publishes read back wrong: {bad_readbacks:#?}"
        ));
    }
    bc.cluster.must_agreed_leader(&[1, 2, 3]).await;

    let all: Vec<&Publish> = history.values().flatten().collect();
    let count = |f: fn(&Outcome) -> bool| all.iter().filter(|p| f(&p.outcome)).count();
    eprintln!(
        "{kind:?}: killed {kills:?}; {} publishes: {} acked, {} unknown, {} failed",
        all.len(),
        count(|o| matches!(o, Outcome::Acked)),
        count(|o| matches!(o, Outcome::Unknown)),
        count(|o| matches!(o, Outcome::Failed(_))),
    );
    let failures: BTreeSet<&str> = all
        .iter()
        .filter_map(|p| match &p.outcome {
            Outcome::Failed(reason) => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    if !failures.is_empty() {
        eprintln!("{kind:?}: publishes that failed for sure: {failures:#?}");
    }

    // Every file holds its last acknowledged body or a later one whose
    // outcome is unknown; a file never acknowledged may also be absent.
    let check_files = async |when: &str| {
        for (path, publishes) in &history {
            let last_acked = publishes
                .iter()
                .rposition(|p| matches!(p.outcome, Outcome::Acked));
            let mut allowed: BTreeSet<Option<&str>> = BTreeSet::new();
            let unknown_from = match last_acked {
                Some(i) => {
                    allowed.insert(Some(publishes[i].sha256.as_str()));
                    i + 1
                }
                None => {
                    allowed.insert(None);
                    0
                }
            };
            for p in &publishes[unknown_from..] {
                if matches!(p.outcome, Outcome::Unknown) {
                    allowed.insert(Some(p.sha256.as_str()));
                }
            }
            let actual = match bc.client.get(path, None).await {
                Ok(bytes) => Some(sha256_hex(&bytes)),
                Err(e) if e.is_not_found() => None,
                Err(e) => bc.fail(format!("{when}: reading {path}: {e}")),
            };
            if !allowed.contains(&actual.as_deref()) {
                bc.fail(format!(
                    "{when}: {path} holds {actual:?}, allowed {allowed:?}; history {publishes:#?}"
                ));
            }
        }
    };
    check_files("after the failover").await;

    // Leases run out, GC catches up: every object in the store is a live
    // block, and every live block is there.
    bc.must_settle_gc().await;
    let report = bc.must_fsck_clean().await;
    assert_eq!(
        report.objects_scanned, report.live_blocks,
        "every stored object is live: {report:?}"
    );
    check_files("after GC").await;
}

// ---------------------------------------------------------------------------
// 5. Refused publishes change nothing; a lying digest fails every full read

async fn publish_errors_change_nothing(kind: StoreKind) {
    let Some(bc) = BodyCluster::start(kind, &[]).await else {
        return;
    };
    let c = &bc.client;
    let blobs = bc.blobs().await;
    let upsert = put_options(PublishMode::Upsert, BLOCK);
    bc.cluster.must(c.mkdir("/e", true).await, "mkdir /e");
    let original = pattern(50, 2 * BLOCK + 10);
    let first = bc.must_put("/e/f", &original, &upsert).await;
    let must_be_unchanged = async |generation: Generation, data: &[u8], what: &str| {
        let body = bc.must_body("/e/f").await;
        assert_eq!(body.generation, generation, "{what}: generation changed");
        assert_eq!(bc.must_get("/e/f").await, data, "{what}: bytes changed");
    };

    // (b) Commits naming blocks that are not in the store as declared.
    let staged = bc
        .cluster
        .must(c.stage("/e/f", &upsert).await, "stage /e/f");
    let key = format!("{}00000000", staged.key_prefix());
    let ten = b"0123456789";
    let spec = |blocks: Vec<BlockRef>, sha256: String| BodySpec {
        size: blocks.iter().map(|b| b.size).sum(),
        blocks,
        sha256,
        content_type: "application/octet-stream".into(),
        producer: "bodies-test".into(),
        attrs: BTreeMap::new(),
    };
    let block = |key: &str, size: u64| BlockRef {
        key: key.to_string(),
        size,
    };
    must_fail_with(
        c.commit(staged.id, spec(vec![block(&key, 10)], sha256_hex(ten)))
            .await,
        "EINVAL",
        &format!("block {key} was never uploaded"),
        "commit of a block never uploaded",
    );
    must_be_unchanged(first.generation, &original, "missing block").await;
    bc.cluster.must(
        blobs.put_new(&key, Bytes::from_static(ten)).await,
        "upload one block",
    );
    must_fail_with(
        c.commit(staged.id, spec(vec![block(&key, 11)], sha256_hex(ten)))
            .await,
        "EINVAL",
        "has 10 bytes in the store, the commit says 11",
        "commit declaring the wrong block size",
    );
    // Early checks (CheckBlocks): the same refusals, a remembered success,
    // and a remembered block vouches for nothing else.
    must_fail_with(
        c.check_blocks(staged.id, vec![block(&key, 11)]).await,
        "EINVAL",
        "has 10 bytes in the store, the commit says 11",
        "early check declaring the wrong block size",
    );
    let looked_up = bc.cluster.must(
        c.check_blocks(staged.id, vec![block(&key, 10)]).await,
        "early check of an uploaded block",
    );
    assert_eq!(looked_up, 1, "the first check looks the block up");
    let looked_up = bc.cluster.must(
        c.check_blocks(staged.id, vec![block(&key, 10)]).await,
        "second early check",
    );
    assert_eq!(looked_up, 0, "a checked block is remembered");
    must_fail_with(
        c.check_blocks(
            staged.id,
            vec![block(&key, 10), block(&format!("{key}9"), 1)],
        )
        .await,
        "EINVAL",
        "was never uploaded",
        "early check of a remembered and a missing block",
    );
    must_fail_with(
        c.check_blocks(
            staged.id,
            vec![bc.must_body("/e/f").await.blocks[0].clone()],
        )
        .await,
        "EINVAL",
        "is not under the upload's prefix",
        "early check of another body's block",
    );
    let too_many = (0..1025).map(|i| block(&format!("{key}-{i}"), 1)).collect();
    must_fail_with(
        c.check_blocks(staged.id, too_many).await,
        "EINVAL",
        "at most 1024",
        "early check of 1025 blocks",
    );
    must_fail_with(
        c.check_blocks(UploadId(staged.id.0 + 1000), vec![block(&key, 10)])
            .await,
        "ENOENT",
        "never staged",
        "early check of an unknown upload",
    );
    must_be_unchanged(first.generation, &original, "early checks").await;
    // The same refusals when the bad block is one of several.
    let second = format!("{}00000001", staged.key_prefix());
    must_fail_with(
        c.commit(
            staged.id,
            spec(vec![block(&key, 10), block(&second, 10)], sha256_hex(ten)),
        )
        .await,
        "EINVAL",
        &format!("block {second} was never uploaded"),
        "commit of two blocks, the second never uploaded",
    );
    bc.cluster.must(
        blobs.put_new(&second, Bytes::from_static(ten)).await,
        "upload a second block",
    );
    must_fail_with(
        c.commit(
            staged.id,
            spec(vec![block(&key, 10), block(&second, 11)], sha256_hex(ten)),
        )
        .await,
        "EINVAL",
        "has 10 bytes in the store, the commit says 11",
        "commit of two blocks declaring the wrong size of one",
    );
    // Another file's block. (The first blocks of the very body a commit
    // replaces may be kept: an append; see the engine's tests.)
    bc.must_put("/e/other", &original, &upsert).await;
    let foreign = bc.must_body("/e/other").await.blocks[0].clone();
    must_fail_with(
        c.commit(staged.id, spec(vec![foreign], sha256_hex(ten)))
            .await,
        "EINVAL",
        "under the upload's prefix",
        "commit naming another body's block",
    );
    // (e) Malformed digests.
    for bad in [sha256_hex(ten).to_uppercase(), "abc".into(), String::new()] {
        must_fail_with(
            c.commit(staged.id, spec(vec![block(&key, 10)], bad.clone()))
                .await,
            "EINVAL",
            "sha256",
            &format!("commit with sha256 {bad:?}"),
        );
    }
    let mut short = spec(vec![block(&key, 10)], sha256_hex(ten));
    short.size = 9;
    must_fail_with(
        c.commit(staged.id, short).await,
        "EINVAL",
        "not the body size 9",
        "commit whose size is not the sum of its blocks",
    );
    must_be_unchanged(first.generation, &original, "refused commits").await;
    // The upload survived the refusals; aborting it ends it.
    assert_eq!(
        bc.uploads().await.iter().map(|u| u.id).collect::<Vec<_>>(),
        [staged.id]
    );
    bc.cluster.must(c.abort(staged.id).await, "abort");
    must_fail_with(
        c.commit(staged.id, spec(vec![block(&key, 10)], sha256_hex(ten)))
            .await,
        "ENOENT",
        &staged.id.to_string(),
        "commit after abort",
    );
    must_fail_with(
        c.check_blocks(staged.id, vec![block(&key, 10)]).await,
        "ENOENT",
        &staged.id.to_string(),
        "early check after abort",
    );
    must_be_unchanged(first.generation, &original, "commit after abort").await;

    // (c) Stale generations, at begin and at commit.
    let stale = Generation(first.generation.0 + 1000);
    let replace = |expected| put_options(PublishMode::Replace { expected }, BLOCK);
    must_fail_with(
        c.put_bytes("/e/f", b"new", &replace(stale)).await,
        "STALE_GENERATION",
        "stale generation",
        "replace expecting a future generation",
    );
    must_fail_with(
        c.put_bytes("/e/f", b"new", &replace(Generation(0))).await,
        "STALE_GENERATION",
        "stale generation",
        "replace expecting no body",
    );
    must_be_unchanged(first.generation, &original, "stale begin").await;
    let opts = replace(first.generation);
    let staged = bc
        .cluster
        .must(c.stage("/e/f", &opts).await, "stage a replace");
    let ours = pattern(51, 100);
    let our_spec = bc.cluster.must(
        c.upload_blocks(&staged, ours.as_slice(), &opts, &|_| {})
            .await,
        "upload",
    );
    let theirs = pattern(52, BLOCK + 1);
    let second = bc.must_put("/e/f", &theirs, &upsert).await;
    must_fail_with(
        c.commit(staged.id, our_spec).await,
        "STALE_GENERATION",
        &format!("expected {}", first.generation),
        "commit of a replace that lost the race",
    );
    must_be_unchanged(second.generation, &theirs, "stale commit").await;
    bc.cluster.must(c.abort(staged.id).await, "abort");

    // (d) Publishing onto a directory.
    bc.cluster.must(c.mkdir("/e/dir", true).await, "mkdir");
    let dir = c.stat("/e/dir", Consistency::Linearizable).await;
    for (mode, code) in [
        (PublishMode::Upsert, "EISDIR"),
        (
            PublishMode::Replace {
                expected: Generation(0),
            },
            "EISDIR",
        ),
        (PublishMode::CreateOnly, "EEXIST"),
    ] {
        must_fail_with(
            c.put_bytes("/e/dir", b"x", &put_options(mode, BLOCK)).await,
            code,
            "/e/dir",
            &format!("{mode:?} onto a directory"),
        );
    }
    must_fail_with(
        c.put_bytes("/", b"x", &upsert).await,
        "EISDIR",
        "/",
        "publish onto the root",
    );
    assert_eq!(c.stat("/e/dir", Consistency::Linearizable).await, dir);
    let local = tempfile::tempdir().expect("local temporary directory");
    let small = local.path().join("small");
    std::fs::write(&small, b"x").expect("write a local file");
    let line = bc
        .cluster
        .must_nokv_fail(&["put", small.to_str().expect("utf-8"), "/e/dir"])
        .await;
    assert!(line.contains("is a directory"), "{line}");
    assert!(bc.uploads().await.is_empty(), "no upload is left staged");

    // (f) A body whose declared digest is not its bytes' is accepted: the
    // cluster never reads bodies. Every full read then fails INTEGRITY;
    // ranged reads are not digest-checked.
    let create = put_options(PublishMode::CreateOnly, BLOCK);
    let data = pattern(53, BLOCK + 100);
    let staged = bc.cluster.must(c.stage("/e/lie", &create).await, "stage");
    let mut lie = bc.cluster.must(
        c.upload_blocks(&staged, data.as_slice(), &create, &|_| {})
            .await,
        "upload",
    );
    let claimed = sha256_hex(b"something else");
    lie.sha256 = claimed.clone();
    let attr = bc
        .cluster
        .must(c.commit(staged.id, lie).await, "commit a lying digest");
    assert_eq!(attr.size, data.len() as u64);
    assert_eq!(bc.must_body("/e/lie").await.sha256, claimed);
    match c.get("/e/lie", None).await {
        Err(ClientError::Integrity(message)) => {
            assert!(message.contains("sha256 mismatch"), "{message}")
        }
        other => bc.fail(format!("full read of a lying body gave {other:?}")),
    }
    let ranged = bc.cluster.must(
        c.get("/e/lie", Some(0..data.len() as u64)).await,
        "ranged read",
    );
    assert_eq!(ranged.to_vec(), data);
    let cat = bc.cluster.nokv(&["cat", "/e/lie"]).await;
    let stderr = String::from_utf8_lossy(&cat.stderr);
    assert!(!cat.status.success(), "nokv cat of a lying body succeeded");
    assert!(stderr.contains("integrity check failed"), "{stderr}");
    let out = local.path().join("lie.out");
    let line = bc
        .cluster
        .must_nokv_fail(&["get", "/e/lie", out.to_str().expect("utf-8")])
        .await;
    assert!(line.contains("integrity check failed"), "{line}");
    assert!(!out.exists(), "a failed get left {}", out.display());
    assert!(
        !out.with_extension("nokv-partial").exists(),
        "a failed get left its partial file"
    );
    bc.must_fsck_clean().await;
}

// ---------------------------------------------------------------------------
// 5a. The S3 server goes away and comes back

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_outage_loses_nothing() {
    let _load = common::light_test().await;
    let Some(mut bc) = BodyCluster::start(StoreKind::S3, &FAST_GC).await else {
        return;
    };
    let opts = put_options(PublishMode::Upsert, BLOCK);
    let kept = pattern(90, 2 * BLOCK + 5);
    let first = bc.must_put("/keep", &kept, &opts).await;
    // A publish staged and uploaded before the outage, committed after it.
    let create = put_options(PublishMode::CreateOnly, BLOCK);
    let pending = pattern(91, BLOCK + 1);
    let staged = bc
        .cluster
        .must(bc.client.stage("/pending", &create).await, "stage");
    let spec = bc.cluster.must(
        bc.client
            .upload_blocks(&staged, pending.as_slice(), &create, &|_| {})
            .await,
        "upload",
    );

    bc.store.s3().stop();
    let c = bc.client.clone();
    let err = must_err(
        c.put_bytes("/keep", &pattern(92, BLOCK), &opts).await,
        "put while the store is down",
    );
    assert!(
        matches!(err.code(), "STORE" | "UNAVAILABLE"),
        "put while the store is down: {err:?}"
    );
    let err = must_err(c.get("/keep", None).await, "read while the store is down");
    assert_eq!(err.code(), "STORE", "{err:?}");
    // Metadata still answers: the body is the one published before.
    assert_eq!(bc.must_body("/keep").await.generation, first.generation);
    let line = bc.cluster.must_nokv_fail(&["cat", "/keep"]).await;
    assert!(line.contains("object store"), "{line}");
    // The leader cannot verify the blocks of a commit: refused, not applied.
    let mut config = ClientConfig::new(bc.cluster.endpoints());
    config.deadline = Duration::from_secs(6);
    config.attempt_timeout = Duration::from_secs(6);
    let impatient = Client::new(config).expect("client");
    let err = must_err(
        impatient.commit(staged.id, spec.clone()).await,
        "commit while the store is down",
    );
    assert!(
        matches!(err.code(), "UNAVAILABLE" | "UNKNOWN_OUTCOME"),
        "commit while the store is down: {err:?}"
    );
    bc.must_be_absent("/pending").await;

    bc.store.s3().must_restart().await;
    let back = bc
        .cluster
        .wait_for(WAIT, "/keep reads back once the store is up", async || {
            c.get("/keep", None).await.ok()
        })
        .await;
    assert_eq!(back.to_vec(), kept, "the previous body, digest-verified");
    assert_eq!(bc.must_body("/keep").await.generation, first.generation);
    bc.cluster.must(
        c.commit(staged.id, spec).await,
        "commit after the store is back",
    );
    assert_eq!(bc.must_get("/pending").await, pending);
    // The failed put's aborted upload is reclaimed once GC can reach the store.
    bc.must_settle_gc().await;
    let report = bc.must_fsck_clean().await;
    assert_eq!(report.objects_scanned, report.live_blocks, "{report:?}");
}

// ---------------------------------------------------------------------------
// 6. GC and fsck

async fn gc_and_fsck(kind: StoreKind) {
    // GC passes only when asked (`run_gc`), so every report is exact.
    let grace = Duration::from_secs(5);
    let Some(bc) = BodyCluster::start(kind, &["--gc-interval", "1h", "--gc-grace", "5s"]).await
    else {
        return;
    };
    let c = &bc.client;
    let blobs = bc.blobs().await;
    let opts = put_options(PublishMode::Upsert, BLOCK);
    let keys_of =
        |body: &Body| -> Vec<String> { body.blocks.iter().map(|b| b.key.clone()).collect() };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    bc.cluster.must(c.mkdir("/g", true).await, "mkdir /g");
    let v1 = pattern(60, BLOCK * 5 / 2);
    bc.must_put("/g/a", &v1, &opts).await;
    let keep_data = pattern(61, 2 * BLOCK);
    let keep_attr = bc.must_put("/g/keep", &keep_data, &opts).await;
    let old = bc.must_body("/g/a").await;
    let keep = keys_of(&bc.must_body("/g/keep").await);
    assert_eq!((old.blocks.len(), keep.len()), (3, 2));

    // Replace: the old blocks wait out the grace period.
    let v2 = pattern(62, 2 * BLOCK);
    // The leader stamps the superseded body at commit, after this instant.
    let replaced_at = Instant::now();
    bc.must_put("/g/a", &v2, &opts).await;
    let current = keys_of(&bc.must_body("/g/a").await);
    bc.must_archive().await;
    let gc = bc.cluster.must(c.run_gc(false).await, "gc");
    assert!(
        replaced_at.elapsed() < grace,
        "the machine is too slow for this test"
    );
    assert_eq!(
        (gc.tasks_waiting, gc.tasks_done, gc.objects_deleted),
        (1, 0, 0),
        "{gc:?}"
    );
    assert_eq!(
        bc.cluster
            .must(c.read_range(&old, None).await, "read the old plan")
            .to_vec(),
        v1,
        "a superseded body stays readable during the grace period"
    );
    // After the grace period GC deletes exactly the superseded blocks.
    let gc = bc
        .cluster
        .wait_for(WAIT, "GC collects the superseded body", async || {
            let gc = c.run_gc(false).await.ok()?;
            (gc.tasks_done > 0).then_some(gc)
        })
        .await;
    assert!(
        replaced_at.elapsed() >= grace,
        "GC ran inside the grace period"
    );
    assert_eq!((gc.tasks_done, gc.objects_deleted), (1, 3), "{gc:?}");
    assert_eq!(
        bc.keys("blocks/").await,
        sorted([current.clone(), keep.clone()].concat())
    );
    let err = must_err(
        c.read_range(&old, None).await,
        "read a collected body's old plan",
    );
    assert_eq!(err.code(), "STORE", "{err:?}");
    assert!(err.to_string().contains("not found"), "{err}");
    assert_eq!(bc.must_get("/g/a").await, v2);

    // `nokv gc --now` skips the grace period; numbers through the CLI.
    let v3 = pattern(63, BLOCK / 2);
    bc.must_put("/g/a", &v3, &opts).await;
    bc.must_archive().await;
    let gc = bc.must_nokv_json(&["gc", "--now"]).await;
    assert_eq!(
        gc,
        serde_json::json!({"uploads_expired": 0, "tasks_done": 1, "objects_deleted": 2,
            "tasks_waiting": 0, "tasks_failed": 0, "shards": [{"shard": 0,
            "uploads_expired": 0, "tasks_done": 1, "objects_deleted": 2,
            "tasks_waiting": 0, "tasks_failed": 0}]})
    );
    let text = bc.cluster.must_nokv(&["gc"]).await;
    assert_eq!(
        text,
        "gc: 0 expired uploads reclaimed, 0 tasks done, 0 objects deleted, 0 tasks waiting for \
         the grace period, 0 failed\n"
    );
    let current = keys_of(&bc.must_body("/g/a").await);
    assert_eq!(
        bc.keys("blocks/").await,
        sorted([current.clone(), keep.clone()].concat())
    );
    let fsck = bc.must_nokv_json(&["fsck"]).await;
    assert_eq!(
        fsck,
        serde_json::json!({"shards": [0], "live_blocks": 3, "objects_scanned": 3, "problems": []})
    );

    // Damage behind the cluster's back: fsck names both problems, exits 1.
    bc.cluster
        .must(blobs.delete(&keep[1]).await, "delete a live block");
    let stray = "blocks/0/999999/999999/00000000";
    bc.cluster.must(
        blobs.put_new(stray, Bytes::from_static(b"stray")).await,
        "create a stray object",
    );
    let out = bc.cluster.nokv(&["fsck", "--json"]).await;
    assert!(!out.status.success(), "fsck with problems exited 0");
    let fsck: Value = serde_json::from_slice(&out.stdout).expect("fsck --json prints JSON");
    let problems = fsck["problems"].as_array().expect("problems array");
    let missing = serde_json::json!({"shard": 0, "kind": "MISSING_BLOCK", "key": keep[1],
        "inode": keep_attr.inode.0, "expected_size": BLOCK, "actual_size": 0});
    let orphan = serde_json::json!({"shard": 0, "kind": "ORPHAN_OBJECT", "key": stray, "inode": 0,
        "expected_size": 0, "actual_size": 5});
    assert_eq!(problems.len(), 2, "{fsck}");
    assert!(problems.contains(&missing), "{fsck}");
    assert!(problems.contains(&orphan), "{fsck}");
    assert_eq!(fsck["objects_scanned"], 3, "{fsck}");
    let out = bc.cluster.nokv(&["fsck"]).await;
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "nokv: fsck found 2 problems\n"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("MISSING_BLOCK {}", keep[1]))
            && stdout.contains(&format!("ORPHAN_OBJECT {stray}")),
        "{stdout}"
    );
    let err = must_err(c.get("/g/keep", None).await, "read a damaged body");
    assert_eq!(err.code(), "STORE", "{err:?}");

    // Removing a file queues its blocks; GC deletes them (and only them).
    bc.cluster.must(c.unlink("/g/a").await, "rm /g/a");
    bc.must_archive().await;
    let gc = bc.cluster.must(c.run_gc(true).await, "gc --now");
    assert_eq!((gc.tasks_done, gc.objects_deleted), (1, 1), "{gc:?}");
    assert_eq!(
        bc.keys("blocks/").await,
        sorted(vec![keep[0].clone(), stray.to_string()])
    );
}

// ---------------------------------------------------------------------------
// 7. publish-dir

/// Writes `files` (relative path → bytes) under `root`.
fn write_tree(root: &Path, files: &BTreeMap<&str, Vec<u8>>) {
    for (rel, data) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir -p");
        std::fs::write(&path, data).expect("write a local file");
    }
}

/// Stages and aborts a throwaway upload at `path` and returns the inode
/// number and generation the next staged upload will get (both counters
/// only grow, by one per create-upload).
async fn next_upload_ids(bc: &BodyCluster, path: &str) -> (u64, u64) {
    let opts = put_options(PublishMode::CreateOnly, BLOCK);
    let probe = bc
        .cluster
        .must(bc.client.stage(path, &opts).await, "stage a probe");
    bc.cluster
        .must(bc.client.abort(probe.id).await, "abort the probe");
    (probe.inode.local() + 1, probe.generation.0 + 1)
}

async fn publish_dir(kind: StoreKind) {
    let Some(bc) = BodyCluster::start(kind, &[]).await else {
        return;
    };
    let c = &bc.client;
    let local = tempfile::tempdir().expect("local temporary directory");

    // A nested tree with an empty file, a two-block file and a FIFO.
    let tree = local.path().join("run1");
    let files = BTreeMap::from([
        ("config.json", b"{\"lr\": 0.001}\n".to_vec()),
        ("empty.txt", Vec::new()),
        (
            "weights/shard-0.bin",
            pattern(70, nokv_client::DEFAULT_BLOCK_SIZE + 1000),
        ),
        ("weights/shard-1.bin", pattern(71, 100_000)),
        ("nested/deeper/readme.md", b"hello\n".to_vec()),
    ]);
    write_tree(&tree, &files);
    let fifo = tree.join("weights/pipe");
    let mkfifo = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(mkfifo.success(), "mkfifo failed");
    let out = bc
        .must_nokv_json(&["publish-dir", tree.to_str().expect("utf-8"), "/models/run1"])
        .await;
    let listed = out["files"].as_array().expect("files array");
    let paths: BTreeSet<&str> = listed.iter().filter_map(|f| f["path"].as_str()).collect();
    let expected: BTreeSet<String> = files
        .keys()
        .map(|rel| format!("/models/run1/{rel}"))
        .collect();
    assert_eq!(
        paths,
        expected.iter().map(String::as_str).collect(),
        "{out}"
    );
    let versions: BTreeSet<u64> = listed
        .iter()
        .filter_map(|f| f["version"].as_u64())
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "all files change in one log entry: {out}"
    );
    for (rel, data) in &files {
        let path = format!("/models/run1/{rel}");
        assert_eq!(bc.must_get(&path).await, *data, "{path}");
        assert_eq!(bc.must_body(&path).await.sha256, sha256_hex(data), "{path}");
    }
    assert_eq!(bc.files_below("/models/run1").await, expected);
    bc.must_be_absent("/models/run1/weights/pipe").await;

    // One file's upload fails mid-way (a stray object occupies its block
    // prefix in the store): nothing but directories appears, and every
    // upload, earlier ones included, is aborted and then reclaimed.
    let tree = local.path().join("run2");
    let files = BTreeMap::from([
        ("a.bin", pattern(80, 1000)),
        ("b/c.bin", pattern(81, 2000)),
        ("z.bin", pattern(82, 3000)),
    ]);
    write_tree(&tree, &files);
    bc.cluster
        .must(c.mkdir("/models/run2/b", true).await, "mkdir -p");
    // The three files stage with consecutive inode numbers and generations
    // (in no set order: they stage at once), so the block prefix of the
    // one staged last is predictable, whichever file it is.
    let (inode, generation) = next_upload_ids(&bc, "/models/run2/probe").await;
    let prefix = |k: u64| format!("blocks/0/{}/{}/", inode + k, generation + k);
    let obstacle = prefix(2).trim_end_matches('/').to_string();
    let blobs = bc.blobs().await;
    bc.cluster.must(
        blobs.put_new(&obstacle, Bytes::from_static(b"x")).await,
        "put an obstacle",
    );
    let line = bc
        .cluster
        .must_nokv_fail(&["publish-dir", tree.to_str().expect("utf-8"), "/models/run2"])
        .await;
    assert!(
        ["a.bin", "b/c.bin", "z.bin"]
            .iter()
            .any(|name| line.contains(name)),
        "{line}"
    );
    assert_eq!(bc.files_below("/models/run2").await, BTreeSet::new());
    assert!(bc.uploads().await.is_empty(), "uploads left staged");
    for k in 0..2 {
        assert_eq!(
            bc.keys(&prefix(k)).await.len(),
            1,
            "the file staged {k}th was uploaded (prediction of {})",
            prefix(k)
        );
    }
    bc.must_archive().await;
    bc.cluster.must(c.run_gc(true).await, "gc --now");
    for k in 0..3 {
        assert_eq!(bc.keys(&prefix(k)).await, Vec::<String>::new());
    }
    bc.cluster
        .must(blobs.delete(&obstacle).await, "delete the obstacle");
    bc.must_fsck_clean().await;
    assert_eq!(bc.uploads().await, Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_dir_staging_failure_aborts_earlier_uploads() {
    let _load = common::light_test().await;
    let Some(bc) = BodyCluster::start(StoreKind::File, &[]).await else {
        return;
    };
    let local = tempfile::tempdir().expect("local temporary directory");
    write_tree(
        local.path(),
        &BTreeMap::from([
            ("a.bin", pattern(85, 1000)),
            ("m.bin", pattern(86, 1000)),
            ("z.bin", pattern(87, 1000)),
        ]),
    );
    // The target of m.bin is a directory: staging it fails after a.bin was
    // staged and uploaded.
    bc.cluster.must(
        bc.client.mkdir("/models/run3/m.bin", true).await,
        "mkdir -p",
    );
    let line = bc
        .cluster
        .must_nokv_fail(&[
            "publish-dir",
            local.path().to_str().expect("utf-8"),
            "/models/run3",
        ])
        .await;
    assert!(
        line.contains("m.bin") && line.contains("is a directory"),
        "{line}"
    );
    assert_eq!(bc.files_below("/models/run3").await, BTreeSet::new());
    let left: Vec<String> = bc
        .uploads()
        .await
        .iter()
        .map(|u| format!("{} {} {}", u.id, u.name, u.key_prefix()))
        .collect();
    assert!(
        left.is_empty(),
        "publish-dir failed while staging m.bin but left earlier uploads staged \
         (holding their blocks until the 600 s lease ends): {left:?}"
    );
    bc.must_archive().await;
    bc.cluster.must(bc.client.run_gc(true).await, "gc --now");
    assert_eq!(bc.keys("blocks/").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_many_publishes_every_body_in_one_commit_or_none() {
    let _load = common::light_test().await;
    let Some(bc) = BodyCluster::start(StoreKind::File, &[]).await else {
        return;
    };
    let c = &bc.client;
    bc.cluster.must(c.mkdir("/many", true).await, "mkdir /many");
    let files: Vec<(String, bytes::Bytes)> = (0..150u64)
        .map(|i| {
            let body = pattern(200 + i, 100 + i as usize * 7);
            (format!("/many/f{i:03}.bin"), bytes::Bytes::from(body))
        })
        .collect();
    let attrs = bc.cluster.must(
        c.put_many(files.clone(), &PutOptions::default()).await,
        "put_many of 150 bodies",
    );
    assert_eq!(attrs.len(), files.len());
    // One commit made them all visible: they share its log index.
    let versions: BTreeSet<u64> = attrs.iter().map(|a| a.version.0).collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    for ((path, body), attr) in files.iter().zip(&attrs) {
        assert_eq!(attr.size, body.len() as u64, "{path}");
        assert_eq!(bc.must_get(path).await, body.to_vec(), "{path}");
    }

    // One file that cannot be staged (no such directory): nothing of the
    // call becomes visible, and nothing stays staged.
    let mut bad: Vec<(String, bytes::Bytes)> = (0..20u64)
        .map(|i| {
            (
                format!("/many/g{i:02}.bin"),
                bytes::Bytes::from(pattern(i, 500)),
            )
        })
        .collect();
    bad.push(("/nowhere/x.bin".into(), bytes::Bytes::from_static(b"x")));
    let e = must_err(
        c.put_many(bad.clone(), &PutOptions::default()).await,
        "put_many with a bad path",
    );
    assert!(e.is_not_found(), "{e:?}");
    for (path, _) in &bad {
        bc.must_be_absent(path).await;
    }
    let left = bc.uploads().await;
    assert!(left.is_empty(), "put_many left uploads staged: {left:?}");
}

/// A leader frozen (SIGSTOP) with a write on its way to it, deposed while
/// frozen, then resumed: the write it then receives never applies (its
/// client hears a refusal or an unknown outcome, never success), a write
/// routed under the old epoch is refused, its GC worker and archiver (fast
/// GC here) delete no block that the new leader's state still uses, and it
/// rejoins as a follower of the same history.
async fn a_paused_old_leader_changes_nothing(kind: StoreKind) {
    let Some(bc) = BodyCluster::start(kind, &FAST_GC).await else {
        return;
    };
    let opts = put_options(PublishMode::Upsert, BLOCK);
    let keep = pattern(70, 2 * BLOCK);
    bc.must_put("/keep", &keep, &opts).await;
    bc.must_put("/replaced", &pattern(71, 3 * BLOCK), &opts)
        .await;
    let old = bc.cluster.must_agreed_leader(&[1, 2, 3]).await;
    let epoch_before = bc
        .cluster
        .status(old)
        .await
        .map(|s| s.epoch)
        .unwrap_or_else(|| bc.fail("the leader does not answer"));
    let others = bc.cluster.ids_except(old);

    bc.cluster.signal(old, "-STOP");
    // A write on its way to the frozen leader (it waits in its socket).
    let mut raw = bc.cluster.raw(old).await;
    let request = common::raw_create(0x5eed, None, "/from-the-old-leader");
    let in_flight = tokio::spawn(async move { raw.mutate(request).await });

    // The others elect a new leader and go on: a replace makes the old
    // body's blocks garbage (collected after the grace period).
    let new = bc.cluster.must_agreed_leader(&others).await;
    assert_ne!(new, old);
    let survivors = bc.cluster.client_for(&others);
    let replacement = pattern(72, BLOCK);
    bc.cluster.must(
        survivors.put_bytes("/replaced", &replacement, &opts).await,
        "replace under the new leader",
    );
    bc.cluster.must(
        survivors.create("/after").await,
        "write under the new leader",
    );

    bc.cluster.signal(old, "-CONT");
    let answer = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap_or_else(|_| bc.fail("the resumed leader never answered"))
        .unwrap_or_else(|e| bc.fail(format!("join: {e}")));
    let refused = match &answer {
        Ok(_) => bc.fail("a deposed leader acknowledged a write"),
        Err(status) => nokv_proto::detail_of(status).map(|d| d.code),
    };
    assert!(
        matches!(
            refused.as_deref(),
            Some("NOT_LEADER" | "UNAVAILABLE" | "UNKNOWN_OUTCOME")
        ),
        "{answer:?}"
    );
    bc.cluster.must_agreed_leader(&[1, 2, 3]).await;
    bc.cluster.must_catch_up(old, new).await;
    bc.must_be_absent("/from-the-old-leader").await;

    // A write routed under the epoch of before is refused, changing nothing.
    let mut config = ClientConfig::new(bc.cluster.endpoints());
    config.epoch = Some(epoch_before);
    let stale = bc.cluster.must(Client::new(config), "client");
    let refused = stale.create("/stale-epoch").await;
    assert!(
        matches!(refused, Err(ClientError::StaleEpoch { current, .. }) if current > epoch_before),
        "{refused:?}"
    );
    bc.must_be_absent("/stale-epoch").await;

    // GC (on whichever node leads, the resumed one included) removed only
    // garbage: every live body reads back whole, fsck finds nothing missing.
    bc.must_archive().await;
    bc.must_settle_gc().await;
    assert_eq!(bc.must_get("/keep").await, keep);
    assert_eq!(bc.must_get("/replaced").await, replacement);
    bc.must_fsck_clean().await;
    let on_old = bc
        .cluster
        .client_for(&[old])
        .stat("/after", Consistency::Stale)
        .await;
    assert!(
        on_old.is_ok(),
        "the resumed node has the new history: {on_old:?}"
    );
}

/// A field set of the most bytes a set may hold (`MAX_SET_BYTES`, 512 KiB):
/// 8 fields of 64 strings of 1,000 bytes, and one `burst` number.
fn heaviest_field_set(n: i64) -> nokv_client::FieldSet {
    let mut fields = nokv_client::FieldSet::new();
    for f in 0..8 {
        let values = (0..64)
            .map(|v| nokv_client::FieldValue::Str(format!("{f}{v:02}{n:04}{}", "v".repeat(993))))
            .collect();
        fields.insert(format!("field{f}"), values);
    }
    fields.insert("burst".into(), vec![nokv_client::FieldValue::Int(n)]);
    fields
}

/// No client load makes a log entry that cannot be replicated: a burst of
/// the largest commands a client may send (indexed commits of 7 bodies with
/// the heaviest field sets, just under the 4 MiB request limit), sent at
/// once, all commit and every replica applies and indexes them. Before
/// entries were capped by bytes (meta-node/src/proposer.rs
/// `MAX_BATCH_BYTES`), the leader grouped such a burst into entries of up
/// to 256 commands: an entry over the 64 MiB Raft message limit could never
/// be sent, and the writes in it timed out with their outcome unknown.
///
/// openraft 0.9 gives an AppendEntries one heartbeat interval, and an entry
/// of one such command (3.6 MiB) travels alone: a debug build on a loaded
/// 2-core machine needed more than the tests' usual 100 ms to encode, send
/// and fsync it (seen in CI while partition tests ran beside it), so this
/// cluster models that machine with a 300 ms heartbeat (docs/security.md,
/// "Liveness": the largest entry must cross within one heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_the_largest_commands_commits_and_replicates() {
    let _load = common::heavy_test().await;
    let timing = [
        "--heartbeat",
        "300ms",
        "--election-timeout-min",
        "1s",
        "--election-timeout-max",
        "2s",
    ];
    let Some(bc) = BodyCluster::start(StoreKind::File, &timing).await else {
        return;
    };
    const WRITERS: usize = 24;
    const PER_COMMAND: usize = 7;
    let opts = PutOptions::default();
    let mut commands = Vec::new();
    for w in 0..WRITERS {
        let mut commits = Vec::new();
        for b in 0..PER_COMMAND {
            let path = format!("/burst-{w}-{b}");
            let upload = bc
                .cluster
                .must(bc.client.stage(&path, &opts).await, "stage an upload");
            let body = bc.cluster.must(
                bc.client
                    .upload_blocks(&upload, &b"x"[..], &opts, &|_| {})
                    .await,
                "upload a one-byte body",
            );
            commits.push(nokv_holt::IndexedCommit {
                upload: upload.id,
                body,
                fields: heaviest_field_set(w as i64),
            });
        }
        commands.push(nokv_client::Op::CommitPublishIndexed { commits });
    }
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let sent: Vec<_> = commands
        .into_iter()
        .map(|op| {
            let client = bc.client.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                client.mutate(op).await
            })
        })
        .collect();
    for (w, commit) in sent.into_iter().enumerate() {
        match commit.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bc.fail(format!("commit of writer {w} failed: {e}")),
            Err(e) => bc.fail(format!("commit task of writer {w}: {e}")),
        }
    }
    let leader = bc.cluster.must_agreed_leader(&[1, 2, 3]).await;
    for id in bc.cluster.ids() {
        bc.cluster.must_catch_up(id, leader).await;
        let node = bc.cluster.client_for(&[id]);
        for w in [0, WRITERS / 2, WRITERS - 1] {
            let key = IndexKey::num(w as f64);
            let only = IndexRange::Between {
                lo: Some(key.clone()),
                hi: Some(key),
            };
            let found = bc.cluster.must(
                node.find_indexed("/", "burst", &only, 1_000, Consistency::Stale)
                    .await,
                &format!("find on node {id}"),
            );
            let paths: BTreeSet<String> = found.hits.into_iter().map(|(path, _, _)| path).collect();
            let want: BTreeSet<String> = (0..PER_COMMAND)
                .map(|b| format!("/burst-{w}-{b}"))
                .collect();
            if paths != want {
                bc.fail(format!("node {id} indexes {paths:?} for writer {w}"));
            }
        }
        for w in 0..WRITERS {
            for b in 0..PER_COMMAND {
                let path = format!("/burst-{w}-{b}");
                bc.cluster.must(
                    node.stat(&path, Consistency::Stale).await,
                    &format!("stat {path} on node {id}"),
                );
            }
        }
    }
}
