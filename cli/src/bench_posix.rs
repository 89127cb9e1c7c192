//! `nokv bench posix --dir LOCAL_DIR`: mdtest-style file operations through
//! a local directory, with plain file system calls. Point it at a `nokv
//! mount` to measure the mount, and at any other directory (a local disk)
//! for comparison; compare with `nokv bench create|stat|publish`, the same
//! operations through the SDK. A benchmark: it measures and prints.
//!
//! Phases, each over `--concurrency` threads (one subdirectory each, like
//! mdtest's unique-directory mode): create empty files, stat them, remove
//! them; create + write 4 KiB + close (a close on a mount publishes); then
//! one thread writes a file of `--size` bytes sequentially and reads it
//! back.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bench::{new_hist, print_report, BenchArgs, Report};
use crate::GlobalArgs;

/// Bytes per `write` and `read` call of the sequential phase.
const CHUNK: usize = 1 << 20;

pub fn run(args: &BenchArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let base = args.dir.first().context("--dir names no directory")?;
    let root = Path::new(base).join(format!("posix-{:016x}", crate::bench::rand_u64()));
    let threads = args.concurrency.max(1);
    let per = (args.count / threads).max(1);
    for t in 0..threads {
        let dir = root.join(format!("t{t}"));
        fs::create_dir_all(&dir).with_context(|| format!("mkdir -p {}", dir.display()))?;
    }
    let name = |t: usize, i: usize, kind: &str| root.join(format!("t{t}/{kind}{i}"));
    let empty = phase(threads, per, |t, i| {
        File::options()
            .write(true)
            .create_new(true)
            .open(name(t, i, "e"))
            .map(drop)
    })?;
    print_report("posix create", args, &empty, g);
    let stat = phase(threads, per, |t, i| fs::metadata(name(t, i, "e")).map(drop))?;
    print_report("posix stat", args, &stat, g);
    let remove = phase(threads, per, |t, i| fs::remove_file(name(t, i, "e")))?;
    print_report("posix remove", args, &remove, g);
    let block = vec![0x5au8; 4096];
    let small = phase(threads, per, |t, i| {
        let mut f = File::create(name(t, i, "w"))?;
        f.write_all(&block)
    })?;
    print_report("posix create+write 4KiB+close", args, &small, g);

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
        println!(
            "posix sequential: {mib:.0} MiB written in {:.2}s ({:.0} MiB/s, close included), read in {:.2}s ({:.0} MiB/s)",
            write.as_secs_f64(),
            rate(write),
            read.as_secs_f64(),
            rate(read)
        );
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
                    let mut report = Report {
                        ops: 0,
                        errors: 0,
                        first_error: None,
                        elapsed: Duration::ZERO,
                        hist: new_hist()?,
                    };
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
    let mut total = Report {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed: started.elapsed(),
        hist: new_hist()?,
    };
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
