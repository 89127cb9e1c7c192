//! `nokv bench`: creates or stats against a running cluster, reporting
//! throughput and latency percentiles. A benchmark, not a test: it measures
//! and prints; it asserts nothing about speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::output::print_json;
use crate::GlobalArgs;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Workload {
    /// Create empty files (durable Raft writes).
    Create,
    /// Stat existing files (linearizable reads unless --stale).
    Stat,
    /// Publish bodies of --size bytes (stage, upload blocks, commit) and read
    /// them back, side by side with raw object-store PUTs and GETs of the
    /// same bytes.
    Publish,
    /// Create files while a recursive watch on the benchmark directory runs;
    /// reports the delay from the leader stamping each create to the
    /// watcher receiving its event (commit, apply and delivery).
    Watch,
    /// The agent verbs over --files published artifacts (attributes and
    /// small JSON bodies): find on an attribute, find on a content field,
    /// aggregate grouped by an attribute, each --count times; with --size
    /// above 0 also one recursive grep over that many bytes of logs.
    Agent,
    /// A long run at a steady rate (--rate, or 80 % of a measured peak) of
    /// create + stat + remove steps over a namespace of --files entries,
    /// reporting each minute's throughput, latency and the resident memory
    /// of the processes given by --pid (for --minutes).
    Soak,
    /// In process, no cluster: what a state-machine snapshot costs one
    /// replica with --files live files and a full dedupe table and watch
    /// history (the copy under the state lock, encode, decode).
    Snapshot,
    /// mdtest-style file operations with plain file system calls in the
    /// local directory --dir (e.g. a `nokv mount`): create, stat, remove,
    /// 4 KiB create+write+close, then a sequential write and read of --size.
    Posix,
    /// For comparison, no NoKV involved: JuiceFS-style create transactions
    /// (two gets, one conditional transaction of three puts) against the
    /// etcd cluster at --etcd-endpoints.
    EtcdCreate,
    /// For comparison: linearizable gets of --files attributes written
    /// first, against the etcd cluster at --etcd-endpoints.
    EtcdGet,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Concurrent clients (tasks sharing one connection pool).
    #[arg(short, long, default_value_t = 16)]
    pub concurrency: usize,
    /// Total operations.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    pub count: usize,
    /// Files to create first for `stat`.
    #[arg(long, default_value_t = 1_000)]
    pub files: usize,
    /// Directory to work in (a fresh one is made under it). For `create`,
    /// several comma-separated directories spread the files round-robin
    /// over all of them (e.g. one per shard: --dir /s1,/s2,/s3,/s4). For
    /// `posix`: a local directory (e.g. under a `nokv mount`).
    #[arg(long, default_value = "/bench", value_delimiter = ',')]
    pub dir: Vec<String>,
    /// Body size for `publish`, in bytes (suffixes KiB, MiB, GiB).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub size: u64,
    /// For `publish`: skip the raw PUT baseline.
    #[arg(long)]
    pub no_raw: bool,
    /// For `posix`: separate processes instead of threads (each runs one
    /// phase at a time, one directory each, like mdtest's ranks).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// For `posix` (internal): run one phase as worker N of a multi-process
    /// run in this run directory.
    #[arg(long, hide = true, num_args = 3, value_names = ["PHASE", "WORKER", "RUN_DIR"])]
    pub posix_worker: Option<Vec<String>>,
    /// For `soak`: steps per second offered (default: 80 % of the peak a
    /// closed loop sustains first, measured for 60 s once the namespace
    /// holds --files entries).
    #[arg(long)]
    pub rate: Option<f64>,
    /// For `soak`: how long, in minutes.
    #[arg(long, default_value_t = 30)]
    pub minutes: u64,
    /// For `soak`: steps in flight at most (default: 4 x --concurrency).
    /// The schedule is open loop, so this is only a safety valve: a limit
    /// the offered rate reaches turns server latency into queueing in the
    /// bench (latency counts from each step's scheduled start).
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// For `soak`: a node process whose resident memory is reported each
    /// minute (repeat for each; e.g. the `nokv dev` process).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// For `create` and `stat`: also print where the time went, stage by
    /// stage (validation, proposal queue, log append and fsync, replication,
    /// apply, read index, ...), from the stage histograms of every
    /// endpoint, read before and after the run. For `soak`: each minute,
    /// the worst p99 of every stage across the nodes.
    #[arg(long)]
    pub breakdown: bool,
    /// For `create`: each operation is one bulk create of this many files
    /// (`Client::create_many`); for `publish`: one `Client::put_many` of
    /// this many bodies of --size (all visible in one commit). ops/s then
    /// counts files, and the latencies are those of whole bulk calls. 0:
    /// one file per operation.
    #[arg(long, default_value_t = 0)]
    pub bulk: usize,
    /// For `etcd-create` and `etcd-get`: the etcd cluster to measure,
    /// comma separated.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
}

/// Parses `4096`, `4KiB`, `1MiB`, `2GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1u64 << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 4096, 64KiB, 1MiB"))
}

pub(crate) struct Report {
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    pub(crate) hist: Histogram<u64>,
    /// Calls the client's coalescers made during the run (writes, reads):
    /// set by the workloads that report it.
    pub(crate) coalescing: Option<(nokv_client::CoalescingStats, nokv_client::CoalescingStats)>,
}

impl Report {
    /// No operations yet.
    pub(crate) fn empty() -> anyhow::Result<Report> {
        Ok(Report {
            ops: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            hist: new_hist()?,
            coalescing: None,
        })
    }
}

fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

/// Runs `op(i)` for i in 0..count over `concurrency` workers.
pub(crate) async fn drive<F, Fut>(concurrency: usize, count: usize, op: F) -> anyhow::Result<Report>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), nokv_client::ClientError>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let op = op.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut hist = new_hist()?;
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let t = Instant::now();
                match op(i).await {
                    Ok(()) => {
                        ops += 1;
                        hist.saturating_record(t.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            anyhow::Ok((hist, ops, errors, first_error))
        }));
    }
    let mut report = Report::empty()?;
    for w in workers {
        let (hist, ops, errors, first_error) = w.await.context("bench worker panicked")??;
        report.hist.add(&hist).context("merging histograms")?;
        report.ops += ops;
        report.errors += errors;
        if report.first_error.is_none() {
            report.first_error = first_error;
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

pub(crate) fn print_report(name: &str, args: &BenchArgs, r: &Report, g: &GlobalArgs) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let ms = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    if g.json {
        print_json(&json!({
            "workload": name,
            "concurrency": args.concurrency,
            "ops": r.ops,
            "errors": r.errors,
            "first_error": r.first_error,
            "seconds": secs,
            "ops_per_sec": r.ops as f64 / secs,
            "p50_ms": ms(0.50),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "max_ms": r.hist.max() as f64 / 1000.0,
            "coalescing": r.coalescing.map(|(w, q)| json!({
                "writes": coalescing_json(w),
                "reads": coalescing_json(q),
            })),
        }));
    } else {
        outln!(
            "{name}: concurrency={} ops={} errors={} time={:.2}s throughput={:.0} ops/s p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
            args.concurrency,
            r.ops,
            r.errors,
            secs,
            r.ops as f64 / secs,
            ms(0.50),
            ms(0.99),
            ms(0.999),
            r.hist.max() as f64 / 1000.0
        );
        if let Some((w, q)) = r.coalescing {
            for (kind, c) in [("writes", w), ("reads", q)] {
                if c.lone_calls + c.batched_calls > 0 {
                    outln!(
                        "  {kind}: {} calls of one request, {} batched calls of {:.1} requests on average",
                        c.lone_calls,
                        c.batched_calls,
                        c.batched_requests as f64 / c.batched_calls.max(1) as f64
                    );
                }
            }
        }
        if let Some(e) = &r.first_error {
            outln!("first error: {e}");
        }
    }
}

fn coalescing_json(c: nokv_client::CoalescingStats) -> serde_json::Value {
    json!({
        "lone_calls": c.lone_calls,
        "batched_calls": c.batched_calls,
        "batched_requests": c.batched_requests,
    })
}

/// What `client`'s coalescers sent since `before`.
fn coalescing_since(
    client: &nokv_client::Client,
    before: (nokv_client::CoalescingStats, nokv_client::CoalescingStats),
) -> (nokv_client::CoalescingStats, nokv_client::CoalescingStats) {
    let (w, q) = client.coalescing();
    let minus = |a: nokv_client::CoalescingStats, b: nokv_client::CoalescingStats| {
        nokv_client::CoalescingStats {
            lone_calls: a.lone_calls - b.lone_calls,
            batched_calls: a.batched_calls - b.batched_calls,
            batched_requests: a.batched_requests - b.batched_requests,
        }
    };
    (minus(w, before.0), minus(q, before.1))
}

/// Raw PUTs of `size` bytes straight to the object store, then publishes of
/// the same bytes through NoKV; prints both and the metadata overhead.
async fn publish(
    args: &BenchArgs,
    g: &GlobalArgs,
    client: &nokv_client::Client,
    dir: &str,
) -> anyhow::Result<()> {
    let size = usize::try_from(args.size).context("size too large")?;
    // Incompressible, deterministic bytes.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data: bytes::Bytes = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into();
    let store = client
        .blob_store()
        .await
        .context("opening the object store")?;
    let mib = args.size as f64 / (1024.0 * 1024.0);
    let run_id = rand_u64();
    if !args.no_raw {
        let s = store.clone();
        let d = data.clone();
        let raw = drive(args.concurrency, args.count, move |i| {
            let s = s.clone();
            let d = d.clone();
            async move {
                s.put_new(&format!("bench-raw/{run_id:016x}/{i}"), d)
                    .await
                    .map_err(|e| nokv_client::ClientError::Store(e.to_string()))
            }
        })
        .await?;
        print_publish("raw-put", args, &raw, mib, None, g);
        let s = store.clone();
        let raw_get = drive(args.concurrency, args.count, move |i| {
            let s = s.clone();
            async move {
                s.get(&format!("bench-raw/{run_id:016x}/{i}"), None)
                    .await
                    .map(drop)
                    .map_err(|e| nokv_client::ClientError::Store(e.to_string()))
            }
        })
        .await?;
        print_publish("raw-get", args, &raw_get, mib, None, g);
        for i in 0..args.count {
            let _ = store.delete(&format!("bench-raw/{run_id:016x}/{i}")).await;
        }
    }
    // Per publish: what metadata added (stage wait + commit), the stage and
    // commit latencies, and the part of the stage the publish waited for.
    let meta = Arc::new(std::sync::Mutex::new([
        new_hist()?,
        new_hist()?,
        new_hist()?,
        new_hist()?,
    ]));
    let block_counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let counts = block_counts.clone();
    let c = client.clone();
    let d = dir.to_string();
    let m = meta.clone();
    let report = drive(args.concurrency, args.count, move |i| {
        let c = c.clone();
        let path = format!("{d}/p{i}");
        let data = data.clone();
        let m = m.clone();
        let counts = counts.clone();
        async move {
            let opts = nokv_client::PutOptions::default();
            let (_, t) = c.publish(&path, &data[..], &opts, &|_| {}).await?;
            if let Ok(mut h) = m.lock() {
                for (h, d) in h
                    .iter_mut()
                    .zip([t.metadata_wait(), t.stage, t.commit, t.stage_wait])
                {
                    h.saturating_record(d.as_micros() as u64);
                }
            }
            counts[0].fetch_add(t.blocks as u64, Ordering::Relaxed);
            counts[1].fetch_add(t.blocks_prechecked as u64, Ordering::Relaxed);
            Ok(())
        }
    })
    .await?;
    let meta = meta
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?
        .clone();
    let blocks = [
        block_counts[0].load(Ordering::Relaxed),
        block_counts[1].load(Ordering::Relaxed),
    ];
    print_publish("nokv-publish", args, &report, mib, Some((&meta, blocks)), g);
    // And read back through the SDK: body lookup, blocks, sha256 check.
    let c = client.clone();
    let d = dir.to_string();
    let read = drive(args.concurrency, args.count, move |i| {
        let c = c.clone();
        let path = format!("{d}/p{i}");
        async move { c.get(&path, None).await.map(drop) }
    })
    .await?;
    print_publish("nokv-get", args, &read, mib, None, g);
    Ok(())
}

/// Raw PUT throughput and latency, or a publish's with its metadata time:
/// histograms `[stage wait + commit, stage, commit, stage wait]` and block
/// counts `[all, checked before the commit]`.
fn print_publish(
    name: &str,
    args: &BenchArgs,
    r: &Report,
    mib: f64,
    meta: Option<(&[Histogram<u64>; 4], [u64; 2])>,
    g: &GlobalArgs,
) {
    let blocks = meta.map(|(_, b)| b);
    let meta = meta.map(|(h, _)| h);
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let meta_ms = |i: usize, q: f64| meta.map(|m| ms(&m[i], q));
    if g.json {
        print_json(&json!({
            "workload": name,
            "size_bytes": args.size,
            "concurrency": args.concurrency,
            "ops": r.ops,
            "errors": r.errors,
            "first_error": r.first_error,
            "seconds": secs,
            "ops_per_sec": r.ops as f64 / secs,
            "mib_per_sec": r.ops as f64 * mib / secs,
            "p50_ms": ms(&r.hist, 0.5),
            "p99_ms": ms(&r.hist, 0.99),
            "metadata_wait_p50_ms": meta_ms(0, 0.5),
            "metadata_wait_p99_ms": meta_ms(0, 0.99),
            "stage_p50_ms": meta_ms(1, 0.5),
            "commit_p50_ms": meta_ms(2, 0.5),
            "stage_wait_p50_ms": meta_ms(3, 0.5),
            "blocks": blocks.map(|b| b[0]),
            "blocks_checked_before_commit": blocks.map(|b| b[1]),
        }));
    } else {
        let meta_text = match (
            meta_ms(0, 0.5),
            meta_ms(0, 0.99),
            meta_ms(1, 0.5),
            meta_ms(3, 0.5),
            meta_ms(2, 0.5),
            blocks,
        ) {
            (Some(a), Some(b), Some(st), Some(sw), Some(co), Some([all, pre])) => format!(
                " metadata wait p50={a:.2}ms p99={b:.2}ms (stage p50={st:.2}ms, waited p50={sw:.2}ms; \
                 commit p50={co:.2}ms; blocks checked before the commit: {pre}/{all})"
            ),
            _ => String::new(),
        };
        outln!(
            "{name}: size={}B concurrency={} ops={} errors={} throughput={:.1} MiB/s ({:.1} ops/s) p50={:.2}ms p99={:.2}ms{meta_text}",
            args.size,
            args.concurrency,
            r.ops,
            r.errors,
            r.ops as f64 * mib / secs,
            r.ops as f64 / secs,
            ms(&r.hist, 0.5),
            ms(&r.hist, 0.99),
        );
        if let Some(e) = &r.first_error {
            outln!("first error: {e}");
        }
    }
}

/// With `--breakdown`, the stage histograms before the timed run.
async fn breakdown_before(
    args: &BenchArgs,
    client: &nokv_client::Client,
) -> anyhow::Result<Option<crate::bench_breakdown::Snapshot>> {
    if !args.breakdown {
        return Ok(None);
    }
    crate::bench_breakdown::must_take(client).await.map(Some)
}

/// With `--breakdown`, reads the histograms again and prints the run's.
async fn breakdown_after(
    before: Option<crate::bench_breakdown::Snapshot>,
    client: &nokv_client::Client,
    report: &Report,
    g: &GlobalArgs,
) -> anyhow::Result<()> {
    let Some(before) = before else {
        return Ok(());
    };
    let after = crate::bench_breakdown::take(client).await;
    crate::bench_breakdown::print(&before, &after, &report.hist, g)
}

pub async fn run(args: BenchArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    if let Workload::Posix = args.workload {
        // Plain file system calls: blocking, on their own threads.
        return tokio::task::block_in_place(|| crate::bench_posix::run(&args, g));
    }
    if let Workload::Snapshot = args.workload {
        return tokio::task::block_in_place(|| crate::bench_snapshot::run(&args, g));
    }
    if let Workload::EtcdCreate | Workload::EtcdGet = args.workload {
        return crate::bench_etcd::run(&args, g).await;
    }
    let client = g.client()?;
    let run = rand_u64();
    let mut dirs = Vec::new();
    for base in &args.dir {
        let dir = format!("{}/run-{run:016x}", base.trim_end_matches('/'));
        client
            .mkdir(&dir, true)
            .await
            .with_context(|| format!("mkdir {dir}"))?;
        dirs.push(dir);
    }
    let dir = dirs.first().cloned().context("--dir names no directory")?;
    match args.workload {
        Workload::Publish if args.bulk > 0 => {
            // Bodies of --size in `Client::put_many` calls of --bulk files.
            let bulk = args.bulk;
            let size = usize::try_from(args.size).context("--size")?;
            let body = bytes::Bytes::from(vec![0x5a_u8; size]);
            let sent = client.coalescing();
            let c = client.clone();
            let d = dir.clone();
            let calls = args.count.div_ceil(bulk);
            let mut report = drive(args.concurrency, calls, move |i| {
                let c = c.clone();
                let files: Vec<(String, bytes::Bytes)> = (i * bulk..(i + 1) * bulk)
                    .map(|f| (format!("{d}/p{f}.bin"), body.clone()))
                    .collect();
                async move {
                    c.put_many(files, &nokv_client::PutOptions::default())
                        .await
                        .map(|_| ())
                }
            })
            .await?;
            report.ops *= bulk as u64;
            report.coalescing = Some(coalescing_since(&client, sent));
            print_report(
                &format!("publish(bulk {bulk}, {size} B)"),
                &args,
                &report,
                g,
            );
        }
        Workload::Publish => publish(&args, g, &client, &dir).await?,
        Workload::Agent => crate::bench_agent::run(&args, g, &client, &dir).await?,
        Workload::Posix => anyhow::bail!("posix runs in a local directory, before this"),
        Workload::Snapshot => anyhow::bail!("snapshot runs in process, before this"),
        Workload::EtcdCreate | Workload::EtcdGet => {
            anyhow::bail!("etcd workloads run against etcd, before this")
        }
        Workload::Watch => watch(&args, g, &client, &dir).await?,
        Workload::Soak => crate::bench_soak::run(&args, g, &client, &dir).await?,
        Workload::Create if args.bulk > 0 => {
            let bulk = args.bulk;
            let before = breakdown_before(&args, &client).await?;
            let sent = client.coalescing();
            let c = client.clone();
            let calls = args.count.div_ceil(bulk);
            let mut report = drive(args.concurrency, calls, move |i| {
                let c = c.clone();
                let paths: Vec<String> = (i * bulk..(i + 1) * bulk)
                    .map(|f| format!("{}/f{f}", dirs[f % dirs.len()]))
                    .collect();
                async move {
                    for created in c.create_many(&paths).await {
                        created?;
                    }
                    Ok(())
                }
            })
            .await?;
            // Each successful operation made `bulk` files.
            report.ops *= bulk as u64;
            report.coalescing = Some(coalescing_since(&client, sent));
            print_report(&format!("create(bulk {bulk})"), &args, &report, g);
            breakdown_after(before, &client, &report, g).await?;
        }
        Workload::Create => {
            let before = breakdown_before(&args, &client).await?;
            let sent = client.coalescing();
            let c = client.clone();
            let mut report = drive(args.concurrency, args.count, move |i| {
                let c = c.clone();
                let path = format!("{}/f{i}", dirs[i % dirs.len()]);
                async move { c.create(&path).await.map(|_| ()) }
            })
            .await?;
            report.coalescing = Some(coalescing_since(&client, sent));
            print_report("create", &args, &report, g);
            breakdown_after(before, &client, &report, g).await?;
        }
        Workload::Stat => {
            let files = args.files.max(1);
            let c = client.clone();
            let d = dir.clone();
            let setup = drive(args.concurrency.max(16), files, move |i| {
                let c = c.clone();
                let path = format!("{d}/f{i}");
                async move { c.create(&path).await.map(|_| ()) }
            })
            .await?;
            if setup.errors > 0 {
                anyhow::bail!("setup failed: {}", setup.first_error.unwrap_or_default());
            }
            let before = breakdown_before(&args, &client).await?;
            let sent = client.coalescing();
            let c = client.clone();
            let d = dir.clone();
            let consistency = g.consistency();
            let mut report = drive(args.concurrency, args.count, move |i| {
                let c = c.clone();
                let path = format!("{d}/f{}", (i.wrapping_mul(7919)) % files);
                async move { c.stat(&path, consistency).await.map(|_| ()) }
            })
            .await?;
            report.coalescing = Some(coalescing_since(&client, sent));
            print_report(
                if g.stale {
                    "stat(stale)"
                } else {
                    "stat(linearizable)"
                },
                &args,
                &report,
                g,
            );
            breakdown_after(before, &client, &report, g).await?;
        }
    }
    Ok(())
}

/// Creates `count` files under `dir` while a recursive watch of `dir`
/// measures, per event, receive time minus the leader's stamp.
async fn watch(
    args: &BenchArgs,
    g: &GlobalArgs,
    client: &nokv_client::Client,
    dir: &str,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    // Start from the newest event on the first replica that answers: the
    // benchmark directory is new, so nothing before it matters.
    let from = client
        .any_status()
        .await
        .context("no replica answered Status")?
        .newest_cursor;
    let events = client.watch(dir, true, from);
    let expected = args.count;
    let watcher = tokio::spawn(async move {
        futures::pin_mut!(events);
        let mut hist = new_hist()?;
        let mut seen = 0usize;
        while seen < expected {
            match events.next().await {
                Some(Ok(e)) if matches!(e.kind, nokv_client::EventKind::Create { .. }) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0);
                    hist.saturating_record(now.saturating_sub(e.time_ns) / 1000);
                    seen += 1;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("watch failed: {e}"),
                None => anyhow::bail!("watch ended early"),
            }
        }
        anyhow::Ok(hist)
    });
    let c = client.clone();
    let d = dir.to_string();
    let report = drive(args.concurrency, args.count, move |i| {
        let c = c.clone();
        let path = format!("{d}/f{i}");
        async move { c.create(&path).await.map(|_| ()) }
    })
    .await?;
    if report.errors > 0 {
        anyhow::bail!(
            "{} creates failed: {}",
            report.errors,
            report.first_error.unwrap_or_default()
        );
    }
    let hist = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .context("the watcher did not see every create within 60 s")?
        .context("watcher task")??;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    if g.json {
        print_json(&json!({
            "workload": "watch",
            "concurrency": args.concurrency,
            "events": hist.len(),
            "creates_per_sec": report.ops as f64 / report.elapsed.as_secs_f64().max(1e-9),
            "delivery_p50_ms": ms(0.5),
            "delivery_p99_ms": ms(0.99),
            "delivery_max_ms": hist.max() as f64 / 1000.0,
        }));
    } else {
        outln!(
            "watch: concurrency={} events={} creates/s={:.0} delivery (leader stamp -> event received) p50={:.2}ms p99={:.2}ms max={:.2}ms",
            args.concurrency,
            hist.len(),
            report.ops as f64 / report.elapsed.as_secs_f64().max(1e-9),
            ms(0.5),
            ms(0.99),
            hist.max() as f64 / 1000.0
        );
    }
    Ok(())
}

pub(crate) fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}
