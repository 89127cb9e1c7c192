//! `nokv bench soak`: a long run at a steady offered rate, reporting every
//! minute the throughput, the latency percentiles of that minute, and the
//! resident memory of the node processes named by `--pid`. Memory should
//! stay flat and p99 stable once the bounded state (watch history, dedupe
//! table, Raft log between snapshots) has filled.
//!
//! The load is a mix that keeps the namespace at a steady size: each step
//! creates one file, stats a recent one (linearizable unless --stale) and
//! removes the one created `--files` steps before, so the namespace holds
//! about `--files` entries. Steps start on a fixed schedule (open loop);
//! without `--rate`, `--concurrency` clients first measure the sustained
//! peak in a closed loop (see [`peak`]) and the soak offers 80 % of it.
//! Latency is measured from each step's scheduled start, so a stall shows
//! as latency rather than as a slower schedule. `--max-in-flight` (4 x
//! `--concurrency` by default) bounds the steps in flight; it is a safety
//! valve, not a load shape: at the concurrency of the peak, 80 % of the
//! peak keeps nearly as many steps in flight as the peak did (a step costs
//! three group-commit cycles at any load), so that limit would turn a slow
//! second into a backlog the schedule never recovers from. Minutes are
//! reported as their steps finish, while the next minute runs on time.
//!
//! Each minute also shows how the machine's CPU time was spent (busy, idle,
//! and stolen by the hypervisor for other guests) and, with `--breakdown`,
//! the worst p99 of every server stage across the nodes: together they tell
//! a slow minute spent in the cluster from one spent waiting for a free
//! slot (`--max-in-flight`) on a machine that lost its CPU or disk.

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

/// The machine's CPU time counters (Linux `/proc/stat`, first line): busy,
/// idle (with iowait) and stolen (taken by the hypervisor for other
/// guests), in clock ticks since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct CpuTicks {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl CpuTicks {
    fn read() -> Option<CpuTicks> {
        CpuTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<CpuTicks> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        // (guest time is already counted in user and nice).
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Some(CpuTicks {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3) + at(4),
            steal: at(7),
        })
    }

    /// Percentages (busy, idle, steal) of the time between `before` and
    /// `self`.
    fn percent_since(&self, before: &CpuTicks) -> (f64, f64, f64) {
        let busy = self.busy.saturating_sub(before.busy) as f64;
        let idle = self.idle.saturating_sub(before.idle) as f64;
        let steal = self.steal.saturating_sub(before.steal) as f64;
        let total = (busy + idle + steal).max(1.0);
        (
            100.0 * busy / total,
            100.0 * idle / total,
            100.0 * steal / total,
        )
    }
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
    let max_in_flight = args
        .max_in_flight
        .unwrap_or(args.concurrency.max(1) * 4)
        .max(1);
    if !g.json {
        outln!(
            "soak: {rate:.0} steps/s (create + stat + remove) for {minutes} min, at most {max_in_flight} in flight{}",
            match peak_rate {
                Some(p) => format!(
                    ", 80 % of the peak of {p:.0}/s that {} clients sustain in a closed loop",
                    args.concurrency
                ),
                None => String::new(),
            }
        );
        outln!("minute  steps/s  errors  p50_ms  p99_ms  p999_ms  max_ms  cpu%busy/idle/steal  rss_mib(per pid)");
    }
    let mut stages_before = if args.breakdown {
        Some(crate::bench_breakdown::must_take(client).await?)
    } else {
        None
    };
    let mut cpu_before = CpuTicks::read();
    // The schedule runs in its own task and never waits for a report: each
    // minute's steps go to the reporter below, which waits for them to
    // finish while the next minute's steps already start on time.
    let (minutes_tx, mut minutes_rx) = tokio::sync::mpsc::unbounded_channel();
    let launcher = tokio::spawn(schedule(Schedule {
        client: client.clone(),
        dir: soak_dir,
        rate,
        minutes,
        window: args.files as u64,
        max_in_flight,
        consistency,
        minutes_tx,
    }));
    while let Some(mut run) = minutes_rx.recv().await {
        while run.steps.join_next().await.is_some() {}
        let minute = run.minute;
        let h = run
            .hist
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let secs = 60.0_f64;
        let rss: Vec<Option<u64>> = args.pid.iter().map(|p| rss_bytes(*p)).collect();
        let errors = run.errors.load(std::sync::atomic::Ordering::Relaxed);
        // The whole machine's CPU over the minute: a slow minute with much
        // "steal" lost its CPU to other guests of the hypervisor.
        let cpu_now = CpuTicks::read();
        let cpu = match (cpu_now, cpu_before) {
            (Some(now), Some(before)) => Some(now.percent_since(&before)),
            _ => None,
        };
        cpu_before = cpu_now;
        // With --breakdown: the minute's worst p99 per server stage, to
        // tell which stage a slow minute waited in.
        let mut stages = Vec::new();
        if let Some(before) = stages_before.take() {
            let after = crate::bench_breakdown::take(client).await;
            stages = crate::bench_breakdown::worst_p99s(&before, &after);
            stages_before = Some(after);
        }
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
                "cpu_busy_pct": cpu.map(|c| c.0),
                "cpu_idle_pct": cpu.map(|c| c.1),
                "cpu_steal_pct": cpu.map(|c| c.2),
                "stage_p99_ms": stages
                    .iter()
                    .map(|(name, p99)| (name.clone(), json!(p99)))
                    .collect::<serde_json::Map<_, _>>(),
            }));
        } else {
            let rss: Vec<String> = rss
                .iter()
                .map(|r| r.map_or("?".into(), |b| format!("{:.0}", b as f64 / 1048576.0)))
                .collect();
            let cpu = cpu.map_or("?".into(), |(busy, idle, steal)| {
                format!("{busy:.0}/{idle:.0}/{steal:.0}")
            });
            outln!(
                "{minute:>6}  {:>7.0}  {errors:>6}  {:>6.2}  {:>6.2}  {:>7.2}  {:>6.2}  {cpu:>19}  {}",
                h.len() as f64 / secs,
                ms(0.5),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0,
                rss.join(" ")
            );
            if !stages.is_empty() {
                let parts: Vec<String> = stages
                    .iter()
                    .map(|(name, p99)| format!("{name} {p99:.1}"))
                    .collect();
                outln!("        stage p99 ms (worst node): {}", parts.join(", "));
            }
        }
        if let Some(e) = run.first_error.lock().ok().and_then(|f| f.clone()) {
            tracing::warn!(minute, error = %e, "first error of the minute");
        }
    }
    launcher.await.context("the soak schedule failed")?
}

/// What the schedule of a soak needs.
struct Schedule {
    client: nokv_client::Client,
    dir: String,
    rate: f64,
    minutes: u64,
    window: u64,
    max_in_flight: usize,
    consistency: nokv_client::Consistency,
    minutes_tx: tokio::sync::mpsc::UnboundedSender<MinuteRun>,
}

/// The steps scheduled in one minute, and what they recorded.
struct MinuteRun {
    minute: u64,
    steps: tokio::task::JoinSet<()>,
    hist: Arc<std::sync::Mutex<Histogram<u64>>>,
    errors: Arc<std::sync::atomic::AtomicU64>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
}

/// Starts step `i` at `start + i / rate` (open loop), handing each
/// minute's steps to the reporter as the minute ends.
async fn schedule(s: Schedule) -> anyhow::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(s.max_in_flight));
    let period = Duration::from_secs_f64(1.0 / s.rate);
    let start = Instant::now();
    let mut i: u64 = 0;
    for minute in 1..=s.minutes {
        let mut run = MinuteRun {
            minute,
            steps: tokio::task::JoinSet::new(),
            hist: Arc::new(std::sync::Mutex::new(
                Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")?,
            )),
            errors: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            first_error: Arc::new(std::sync::Mutex::new(None)),
        };
        let minute_end = start + Duration::from_secs(60 * minute);
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
            let (client, dir) = (s.client.clone(), s.dir.clone());
            let (hist, errors, first_error) = (
                run.hist.clone(),
                run.errors.clone(),
                run.first_error.clone(),
            );
            let (window, consistency) = (s.window, s.consistency);
            run.steps.spawn(async move {
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
        if s.minutes_tx.send(run).is_err() {
            break; // The reporter is gone.
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::CpuTicks;

    #[test]
    fn cpu_shares_come_from_the_first_line_of_proc_stat() {
        let before =
            CpuTicks::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").expect("parse");
        assert_eq!(
            before,
            CpuTicks {
                busy: 150,
                idle: 850,
                steal: 0
            }
        );
        // Next minute: 300 busy, 500 idle, 200 stolen.
        let after = CpuTicks::parse("cpu  350 0 100 1300 50 0 0 200 0 0\n").expect("parse");
        let (busy, idle, steal) = after.percent_since(&before);
        assert!((busy - 30.0).abs() < 1e-9, "{busy}");
        assert!((idle - 50.0).abs() < 1e-9, "{idle}");
        assert!((steal - 20.0).abs() < 1e-9, "{steal}");
        assert!(CpuTicks::parse("intr 1 2 3\n").is_none());
        assert!(CpuTicks::parse("cpu  1 x 3\n").is_none());
    }
}
