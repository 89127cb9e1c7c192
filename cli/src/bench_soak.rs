//! `nokv bench soak`: a long run at a steady offered rate, reporting every
//! minute the throughput, the latency percentiles of that minute, and the
//! resident memory of the node processes named by `--pid`. Memory should
//! stay flat and p99 stable once the bounded state (watch history, dedupe
//! table, Raft log between snapshots) has filled.
//!
//! The load is a mix that keeps the namespace at a steady size: each step
//! creates one file, stats a recent one (linearizable unless --stale) and
//! removes the one created `--files` steps before, so the namespace holds
//! about `--files` entries. Steps start on a fixed schedule (open loop, at
//! most `--concurrency` in flight); without `--rate`, a closed loop first
//! measures the sustained peak (see [`peak`]) and the soak offers 80 % of
//! it. Latency is
//! measured from each operation's scheduled start, so a stall shows as
//! latency rather than as a slower schedule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::bench::BenchArgs;
use crate::output::print_json;
use crate::GlobalArgs;

/// Resident memory of process `pid` in bytes (Linux `/proc/PID/status`).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One step `i`: create f{i}, stat f{i}, remove f{i - window}.
async fn step(
    client: &nokv_client::Client,
    dir: &str,
    i: u64,
    window: u64,
    consistency: nokv_client::Consistency,
) -> Result<(), nokv_client::ClientError> {
    let path = format!("{dir}/f{i}");
    client.create(&path).await?;
    client.stat(&path, consistency).await?;
    if i >= window {
        match client.unlink(&format!("{dir}/f{}", i - window)).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How long the closed loop of [`peak`] is measured, after its warm-up.
const PEAK_MEASURED: Duration = Duration::from_secs(60);

/// The steps per second `concurrency` clients sustain in a closed loop.
///
/// Measured only once the namespace holds its steady `--files` entries
/// (before that a step removes nothing and costs two operations, not
/// three), and over [`PEAK_MEASURED`], long enough to include the work
/// that comes in bursts (a state-machine snapshot of each replica every
/// few tens of seconds at this rate). A peak taken over the first 20 s of
/// an empty namespace overstated what the cluster sustains by about a
/// third: 80 % of it fell ever further behind.
async fn peak(
    client: &nokv_client::Client,
    dir: &str,
    args: &BenchArgs,
    consistency: nokv_client::Consistency,
) -> anyhow::Result<f64> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let window = args.files as u64;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, dir) = (client.clone(), dir.to_string());
        let (next, done, stop) = (next.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if step(&client, &dir, i, window, consistency).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Warm up: until the removes have started (at most 5 minutes).
    let warm = Instant::now();
    while next.load(Ordering::Relaxed) < window && warm.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (from, started) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(PEAK_MEASURED).await;
    let steps = done.load(Ordering::Relaxed) - from;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.context("a peak task failed")?;
    }
    Ok(steps as f64 / elapsed.as_secs_f64().max(1e-9))
}

pub async fn run(
    args: &BenchArgs,
    g: &GlobalArgs,
    client: &nokv_client::Client,
    dir: &str,
) -> anyhow::Result<()> {
    let consistency = g.consistency();
    let minutes = args.minutes.max(1);
    let peak_rate = match args.rate {
        Some(_) => None,
        None => {
            let peak_dir = format!("{dir}/peak");
            client
                .mkdir(&peak_dir, true)
                .await
                .with_context(|| format!("mkdir {peak_dir}"))?;
            Some(peak(client, &peak_dir, args, consistency).await?)
        }
    };
    let rate = args.rate.unwrap_or_else(|| peak_rate.unwrap_or(0.0) * 0.8);
    if rate <= 0.0 {
        anyhow::bail!("no rate: the peak run completed no step (is the cluster up?)");
    }
    let soak_dir = format!("{dir}/soak");
    client
        .mkdir(&soak_dir, true)
        .await
        .with_context(|| format!("mkdir {soak_dir}"))?;
    if !g.json {
        outln!(
            "soak: {rate:.0} steps/s (create + stat + remove) for {minutes} min, at most {} in flight{}",
            args.concurrency,
            match peak_rate {
                Some(p) => format!(", 80 % of a measured peak of {p:.0}/s"),
                None => String::new(),
            }
        );
        outln!("minute  steps/s  errors  p50_ms  p99_ms  p999_ms  max_ms  rss_mib(per pid)");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let window = args.files as u64;
    let mut i: u64 = 0;
    for minute in 1..=minutes {
        let hist = Arc::new(std::sync::Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")?,
        ));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let minute_end = start + Duration::from_secs(60 * minute);
        let mut inflight = tokio::task::JoinSet::new();
        loop {
            let due = start + period.mul_f64(i as f64);
            if due >= minute_end {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .context("the in-flight limit closed")?;
            let (client, dir) = (client.clone(), soak_dir.clone());
            let (hist, errors, first_error) = (hist.clone(), errors.clone(), first_error.clone());
            inflight.spawn(async move {
                let _permit = permit;
                let result = step(&client, &dir, i, window, consistency).await;
                let micros = due.elapsed().as_micros() as u64;
                match result {
                    Ok(()) => {
                        if let Ok(mut h) = hist.lock() {
                            h.saturating_record(micros.max(1));
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Ok(mut f) = first_error.lock() {
                            f.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            });
            i += 1;
        }
        // The minute's steps finish before it is reported.
        while inflight.join_next().await.is_some() {}
        let h = hist
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let secs = 60.0_f64;
        let rss: Vec<Option<u64>> = args.pid.iter().map(|p| rss_bytes(*p)).collect();
        let errors = errors.load(std::sync::atomic::Ordering::Relaxed);
        if g.json {
            print_json(&json!({
                "minute": minute,
                "steps_per_sec": h.len() as f64 / secs,
                "errors": errors,
                "p50_ms": ms(0.5),
                "p99_ms": ms(0.99),
                "p999_ms": ms(0.999),
                "max_ms": h.max() as f64 / 1000.0,
                "rss_bytes": rss,
            }));
        } else {
            let rss: Vec<String> = rss
                .iter()
                .map(|r| r.map_or("?".into(), |b| format!("{:.0}", b as f64 / 1048576.0)))
                .collect();
            outln!(
                "{minute:>6}  {:>7.0}  {errors:>6}  {:>6.2}  {:>6.2}  {:>7.2}  {:>6.2}  {}",
                h.len() as f64 / secs,
                ms(0.5),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0,
                rss.join(" ")
            );
        }
        if let Some(e) = first_error.lock().ok().and_then(|f| f.clone()) {
            tracing::warn!(minute, error = %e, "first error of the minute");
        }
    }
    Ok(())
}
