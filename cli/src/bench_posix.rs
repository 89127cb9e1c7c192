//! `nokv bench posix --dir LOCAL_DIR`: mdtest-style file operations through
//! a local directory, with plain file system calls. Point it at a `nokv
//! mount` to measure the mount, and at any other directory (a local disk)
//! for comparison; compare with `nokv bench create|stat|publish`, the same
//! operations through the SDK. A benchmark: it measures and prints.
//!
//! Phases, each over `--concurrency` threads or `--processes` processes
//! (one subdirectory each, like mdtest's unique-directory mode): create
//! empty files, stat them, remove them; create + write 4 KiB + close (a close
//! on a mount publishes); then one thread writes a file of `--size` bytes
//! sequentially and reads it back.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bench::{print_report, BenchArgs, Report};
use crate::GlobalArgs;

/// Bytes per `write` and `read` call of the sequential phase.
const CHUNK: usize = 1 << 20;

/// The metadata phases, in order.
const PHASES: [&str; 4] = ["create", "stat", "remove", "create+write 4KiB+close"];

pub fn run(args: &BenchArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(worker) = &args.posix_worker {
        return run_worker(args, g, worker);
    }
    let base = args.dir.first().context("--dir names no directory")?;
    let root = Path::new(base).join(format!("posix-{:016x}", crate::bench::rand_u64()));
    if args.processes > 1 {
        run_processes(args, g, &root)?;
    } else {
        let threads = args.concurrency.max(1);
        let per = (args.count / threads).max(1);
        for t in 0..threads {
            let dir = root.join(format!("t{t}"));
            fs::create_dir_all(&dir).with_context(|| format!("mkdir -p {}", dir.display()))?;
        }
        for name in PHASES {
            let report = phase(threads, per, |t, i| one(&root, name, t, i))?;
            print_report(&format!("posix {name}"), args, &report, g);
        }
    }

    let big = root.join("sequential.bin");
    let (write, read) = sequential(&big, args.size)?;
    let mib = args.size as f64 / f64::from(1 << 20);
    let rate = |d: Duration| mib / d.as_secs_f64().max(1e-9);
    if g.json {
        crate::output::print_json(&serde_json::json!({
            "workload": "posix sequential",
            "bytes": args.size,
            "write_seconds": write.as_secs_f64(),
            "write_mib_per_sec": rate(write),
            "read_seconds": read.as_secs_f64(),
            "read_mib_per_sec": rate(read),
        }));
    } else {
        outln!(
            "posix sequential: {mib:.0} MiB written in {:.2}s ({:.0} MiB/s, close included), read in {:.2}s ({:.0} MiB/s)",
            write.as_secs_f64(),
            rate(write),
            read.as_secs_f64(),
            rate(read)
        );
    }
    Ok(())
}

/// Operation `i` of phase `name` by worker `t`, in its own directory.
fn one(root: &Path, name: &str, t: usize, i: usize) -> std::io::Result<()> {
    let path = |kind: &str| root.join(format!("t{t}/{kind}{i}"));
    match name {
        "create" => File::options()
            .write(true)
            .create_new(true)
            .open(path("e"))
            .map(drop),
        "stat" => fs::metadata(path("e")).map(drop),
        "remove" => fs::remove_file(path("e")),
        _ => File::create(path("w"))?.write_all(&[0x5a; 4096]),
    }
}

/// One phase as worker `t` of a multi-process run (hidden `--posix-worker
/// PHASE T ROOT`): prints its report as JSON for the parent.
fn run_worker(args: &BenchArgs, g: &GlobalArgs, worker: &[String]) -> anyhow::Result<()> {
    let [name, t, root] = worker else {
        anyhow::bail!("--posix-worker takes PHASE WORKER RUN_DIR");
    };
    let name = PHASES
        .into_iter()
        .find(|p| p == name)
        .with_context(|| format!("no phase {name:?}"))?;
    let t: usize = t.parse().context("worker number")?;
    let root = Path::new(root);
    fs::create_dir_all(root.join(format!("t{t}")))?;
    let report = phase(1, args.count.max(1), |_, i| one(root, name, t, i))?;
    print_report(name, args, &report, g);
    Ok(())
}

/// Each phase as `--processes` separate processes (this binary again), all
/// started together; throughput is their operations over the wall time
/// from the first start to the last exit, latency the workers' median p50.
fn run_processes(args: &BenchArgs, g: &GlobalArgs, root: &Path) -> anyhow::Result<()> {
    let n = args.processes;
    let per = (args.count / n).max(1);
    let exe = std::env::current_exe()?;
    for name in PHASES {
        let started = Instant::now();
        let children: Vec<std::process::Child> = (0..n)
            .map(|t| {
                std::process::Command::new(&exe)
                    .args(["--json", "bench", "posix", "--count", &per.to_string()])
                    .arg("--posix-worker")
                    .args([name, &t.to_string()])
                    .arg(root)
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .context("start a worker process")
            })
            .collect::<anyhow::Result<_>>()?;
        let (mut ops, mut errors, mut p50s) = (0u64, 0u64, Vec::new());
        for child in children {
            let out = child.wait_with_output()?;
            anyhow::ensure!(out.status.success(), "a worker failed: {}", out.status);
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("a worker's report is not JSON")?;
            ops += v["ops"].as_u64().unwrap_or(0);
            errors += v["errors"].as_u64().unwrap_or(0);
            p50s.push(v["p50_ms"].as_f64().unwrap_or(0.0));
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        p50s.sort_by(f64::total_cmp);
        let p50 = p50s.get(p50s.len() / 2).copied().unwrap_or(0.0);
        if g.json {
            crate::output::print_json(&serde_json::json!({
                "workload": format!("posix {name}"),
                "processes": n,
                "ops": ops,
                "errors": errors,
                "seconds": secs,
                "ops_per_sec": ops as f64 / secs,
                "median_worker_p50_ms": p50,
            }));
        } else {
            outln!(
                "posix {name}: processes={n} ops={ops} errors={errors} time={secs:.2}s \
                 throughput={:.0} ops/s median worker p50={p50:.2}ms",
                ops as f64 / secs
            );
        }
    }
    Ok(())
}

/// Runs `op(thread, i)` for i in 0..per on each of `threads` threads.
fn phase<F>(threads: usize, per: usize, op: F) -> anyhow::Result<Report>
where
    F: Fn(usize, usize) -> std::io::Result<()> + Sync,
{
    let started = Instant::now();
    let reports = std::thread::scope(|scope| {
        let op = &op;
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> anyhow::Result<Report> {
                    let mut report = Report::empty()?;
                    for i in 0..per {
                        let at = Instant::now();
                        match op(t, i) {
                            Ok(()) => {
                                report.ops += 1;
                                report
                                    .hist
                                    .saturating_record(at.elapsed().as_micros() as u64);
                            }
                            Err(e) => {
                                report.errors += 1;
                                report.first_error.get_or_insert_with(|| e.to_string());
                            }
                        }
                    }
                    Ok(report)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker panicked")))
            })
            .collect::<anyhow::Result<Vec<Report>>>()
    })?;
    let mut total = Report::empty()?;
    total.elapsed = started.elapsed();
    for r in reports {
        total.ops += r.ops;
        total.errors += r.errors;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
        total.hist.add(&r.hist).context("merging histograms")?;
    }
    Ok(total)
}

/// Writes `size` bytes to `path` in 1 MiB calls and closes it, then reads
/// it back; returns both durations.
fn sequential(path: &PathBuf, size: u64) -> anyhow::Result<(Duration, Duration)> {
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
    let started = Instant::now();
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        f.write_all(&chunk[..n]).context("sequential write")?;
        left -= n as u64;
    }
    // fsync, so that a failed publish is an error here (a close's is not).
    f.sync_all().context("fsync (publish)")?;
    drop(f);
    let write = started.elapsed();
    let started = Instant::now();
    let mut f = File::open(path).context("open for reading")?;
    let mut buf = vec![0; CHUNK];
    let mut seen = 0u64;
    loop {
        let n = f.read(&mut buf).context("sequential read")?;
        if n == 0 {
            break;
        }
        seen += n as u64;
    }
    anyhow::ensure!(seen == size, "read back {seen} bytes of {size}");
    Ok((write, started.elapsed()))
}
