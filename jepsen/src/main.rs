//! `nokv-jepsen`: run partition tests against NoKV clusters in Docker.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nokv_checker::{check_keyed, History, LivenessBounds, Register, SearchBudget};
use nokv_jepsen::cluster::{ClusterOptions, S3_ACCESS_KEY, S3_SECRET_KEY};
use nokv_jepsen::docker::Docker;
use nokv_jepsen::nemesis::{NemesisSpec, Schedule};
use nokv_jepsen::run::{run, Report, RunConfig, Workloads};
use nokv_jepsen::workload::register::RegisterConfig;

/// Jepsen-style partition tests for NoKV.
///
/// `run` starts a three-node NoKV cluster with two shards (the root, and
/// one grafted at /s1), etcd and an S3 server in containers (images built
/// by `bash docker/build.sh`; nothing is pulled), runs
/// concurrent clients while a nemesis cuts network links, kills and pauses
/// nodes, then heals and checks what the clients saw: registers must be
/// linearizable, every acknowledged set add must survive, renames must keep
/// the namespace a tree. Everything it creates in Docker is removed
/// afterwards, also when it fails or is interrupted.
///
/// Exit status: 0 every check passed, 1 an anomaly was found (a safety or a
/// liveness one, or the checker could not decide), 2 the run could not be
/// carried out (what it recorded is still in its directory), 130
/// interrupted.
#[derive(Parser)]
#[command(name = "nokv-jepsen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one test: cluster up, workloads under faults, heal, check.
    ///
    /// Example: nokv-jepsen run --time-limit 20m --nemesis all --workload all --seed 7
    Run(Box<RunArgs>),
    /// Re-check a recorded register history (`register.jsonl` of a run).
    Check {
        /// The history file.
        history: PathBuf,
    },
    /// Remove containers, networks and volumes left by any run (e.g. after
    /// `kill -9` of the harness itself).
    Clean,
}

#[derive(clap::Args)]
struct RunArgs {
    /// How long the workloads run (the nemesis heals before the checks).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    time_limit: Duration,
    /// Faults to inject (comma-separated): none, all, partition, etcd, or
    /// single faults: isolate-leader, isolate-node, bridge, kill, pause,
    /// kill-multi-leader, etcd-kill, etcd-partition, membership, clock-skew
    /// (needs an image built with `--features clock-skew`).
    #[arg(long, default_value = "all")]
    nemesis: NemesisSpec,
    /// Workloads to run concurrently: register, set, namespace, all.
    #[arg(long, default_value = "all")]
    workload: Workloads,
    /// Seed of every random choice (faults, keys, operations).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the histories and summary go (default: target/jepsen/<run>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Per-operation time limit; past it the outcome is unknown.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    op_timeout: Duration,
    /// Mean healthy period between faults.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    healthy: Duration,
    /// Mean duration of a fault.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    fault_period: Duration,
    /// Register client processes.
    #[arg(long, default_value_t = 6)]
    register_processes: usize,
    /// Set client processes.
    #[arg(long, default_value_t = 2)]
    set_processes: usize,
    /// Namespace client processes.
    #[arg(long, default_value_t = 3)]
    namespace_processes: usize,
    /// UNSAFE, to prove the checker catches it: register reads are stale
    /// reads (no read-index) from each process's home replica.
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// Register reads go to every replica in turn, and the nodes serve
    /// linearizable reads on followers (`NOKV_FOLLOWER_READS=true`).
    #[arg(long)]
    follower_reads: bool,
    /// NoKV image.
    #[arg(long, env = "NOKV_IMAGE", default_value = "nokv:dev")]
    nokv_image: String,
    /// S3 server image (s3s-fs command line, bucket `nokv`).
    #[arg(long, env = "NOKV_S3_IMAGE", default_value = "nokv-s3s-fs:dev")]
    s3_image: String,
    /// etcd image (entrypoint `etcd`), the control plane.
    #[arg(long, env = "NOKV_ETCD_IMAGE", default_value = "nokv-etcd:dev")]
    etcd_image: String,
    /// Linearizability search budget per register key: steps.
    #[arg(long, default_value_t = 50_000_000)]
    check_steps: u64,
    /// Linearizability search budget per register key: time.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    check_time: Duration,
    /// Liveness: after a leader loss, writes must resume within this (time
    /// without a majority of replicas able to talk does not count).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    resume_bound: Duration,
    /// Liveness: after the final heal, every replica must agree on a
    /// leader within this.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    settle_bound: Duration,
    /// Liveness: writes must never stop for longer than this anywhere in
    /// the run (time without a majority does not count), whatever the cause.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    gap_bound: Duration,
    /// How long to wait for the replicas to agree on a leader after the
    /// final heal before giving up on the final reads (then the run is
    /// aborted, with every replica's status in status.json).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    recovery_timeout: Duration,
    /// How long the cluster may take to form (every shard led, the graft
    /// made) before the run gives up; it then still writes every replica's
    /// log, their statuses and the summary.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// `nokv serve --gc-grace` of the replicas: short, so that GC deletes
    /// overwritten bodies' blocks while the faults go on (`fsck` at the end
    /// must find no live block missing).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    gc_grace: Duration,
    /// `nokv serve --gc-interval` of the replicas.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    gc_interval: Duration,
    /// RUST_LOG of the replicas.
    #[arg(long, default_value = "info")]
    node_log: String,
    /// An environment variable of the replicas, KEY=VALUE (repeatable), e.g.
    /// `--node-env NOKV_EARLY_ELECTIONS=false` to compare settings.
    #[arg(long, value_parser = parse_env_pair)]
    node_env: Vec<(String, String)>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The human-readable summary of a run.
/// Appends one formatted line to a `String`.
macro_rules! outln {
    ($text:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($text, $($arg)*);
    }};
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn render_report(report: &Report, out: &std::path::Path) -> String {
    let mut text = String::new();
    outln!(
        text,
        "run {} (seed {}), {:.0} s, nemesis {:?}",
        report.run,
        report.seed,
        report.elapsed_s,
        report.nemesis
    );
    outln!(text, "faults: {:?}", report.faults);
    for (workload, c) in &report.counts {
        outln!(
            text,
            "{workload:>10}: {} ok, {} fail, {} unknown",
            c.ok,
            c.fail,
            c.unknown
        );
    }
    if let Some(r) = &report.register {
        outln!(
            text,
            "  register: {:?} over {} keys, {} anomalies, {} undecided",
            r.verdict,
            r.keys_checked,
            r.anomalies.len(),
            r.undecided.len()
        );
        for a in r.anomalies.iter().take(5) {
            outln!(
                text,
                "    anomaly on {}: state {} after {} ops, then {:?} could not return",
                a.key.as_deref().unwrap_or("?"),
                a.state_after_prefix,
                a.linearized_prefix.len(),
                a.blocked_by.as_ref().map(|op| (&op.input, &op.outcome))
            );
        }
    }
    for (shard, s) in &report.set_by_shard {
        outln!(
            text,
            "  set {shard:>3}: {} (acknowledged {}, final {}, lost {}, unexpected {})",
            if s.valid { "valid" } else { "INVALID" },
            s.acknowledged,
            s.final_size,
            s.lost.len(),
            s.unexpected.len()
        );
    }
    if !report.register_keys_by_shard.is_empty() {
        outln!(
            text,
            "  register keys per shard: {:?}",
            report.register_keys_by_shard
        );
    }
    for c in &report.graft_checks {
        outln!(
            text,
            "     graft: {} {} -> {} (expected {}){}",
            c.when,
            c.op,
            c.got,
            c.expected,
            if c.ok { "" } else { " WRONG" }
        );
    }
    for e in &report.etcd_fault_acks {
        outln!(
            text,
            "  etcd fault {} {:.1}-{:.1} s: writes acknowledged {:?}",
            e.fault.name(),
            e.from_s,
            e.to_s,
            e.acks
        );
    }
    for m in &report.membership_errors {
        outln!(
            text,
            "  membership step failed (recorded, not a failure): {m}"
        );
    }
    if let Some(s) = &report.set {
        outln!(
            text,
            "       set: {} (acknowledged {}, final {}, lost {}, unexpected {}, failed-but-present {})",
            if s.valid { "valid" } else { "INVALID" },
            s.acknowledged,
            s.final_size,
            s.lost.len(),
            s.unexpected.len(),
            s.failed_but_present.len()
        );
    }
    if let Some(t) = &report.namespace {
        outln!(
            text,
            " namespace: {} ({} items, lost {:?}, duplicated {:?}, unexpected {:?}, cycle {})",
            if t.valid { "a tree" } else { "BROKEN" },
            t.expected,
            t.lost,
            t.duplicated,
            t.unexpected,
            t.cycle
        );
    }
    if let Some(f) = &report.fsck {
        outln!(
            text,
            "      fsck: {} ({} live blocks, {} objects, {} problems; GC grace {:.0} ms every {:.0} ms)",
            if f.valid { "clean" } else { "PROBLEMS" },
            f.report.live_blocks,
            f.report.objects_scanned,
            f.report.problems.len(),
            f.gc_grace_ms,
            f.gc_interval_ms
        );
        for p in f.report.problems.iter().take(5) {
            outln!(text, "    shard {}: {} {}", p.shard, p.kind, p.key);
        }
    }
    let fmt = |f: &nokv_jepsen::run::Failover| match (f.p50_ms, f.max_ms) {
        (Some(p50), Some(max)) => format!(
            "p50 {p50:.0} ms, max {max:.0} ms over {} faults",
            f.samples_ms.len()
        ),
        _ => "no sample".into(),
    };
    outln!(
        text,
        "failover, writes stalled by a leader kill:    {}",
        fmt(&report.failover_kill)
    );
    outln!(
        text,
        "failover, writes stalled by any leader loss: {}",
        fmt(&report.failover_any)
    );
    if let Some(l) = &report.liveness {
        outln!(
            text,
            "  liveness: {} (longest write stall after a leader loss {}, bound {:.0} ms; \
             settled {} after the final heal, bound {:.0} ms)",
            if l.valid { "ok" } else { "ANOMALY" },
            l.longest_stall_ms
                .map_or("none".into(), |ms| format!("{ms:.0} ms")),
            l.resume_bound_ms,
            l.settle_ms
                .map_or("never".into(), |ms| format!("{ms:.0} ms")),
            l.settle_bound_ms
        );
        if let Some(g) = &l.longest_write_gap {
            outln!(
                text,
                "    longest gap between acknowledged writes anywhere: {:.0} ms from {:.1} s \
                 (bound {:.0} ms){}",
                g.stall_ms,
                g.from_ns as f64 / 1e9,
                l.gap_bound_ms,
                if l.gap_over_bound { ": ANOMALY" } else { "" }
            );
        }
        for s in &l.stalled {
            outln!(
                text,
                "    writes stalled {:.0} ms after the {}{}",
                s.stall_ms,
                s.label,
                if s.to_ns.is_none() {
                    " (never resumed)"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(why) = &report.aborted {
        outln!(text, "ABORTED: {why}");
    }
    outln!(
        text,
        "{} — details in {}",
        if report.valid { "VALID" } else { "INVALID" },
        out.display()
    );
    text
}

async fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("target/jepsen").join(nokv_jepsen::run::run_id(args.seed))
    });
    let config = RunConfig {
        time_limit: args.time_limit,
        schedule: Schedule {
            faults: args.nemesis.clone(),
            healthy: args.healthy,
            fault: args.fault_period,
        },
        workloads: args.workload.clone(),
        seed: args.seed,
        out_dir: out.clone(),
        op_timeout: args.op_timeout,
        register: RegisterConfig {
            processes: args.register_processes,
            stale_reads: args.unsafe_stale_reads,
            follower_reads: args.follower_reads,
            ..RegisterConfig::default()
        },
        set_processes: args.set_processes,
        namespace_processes: args.namespace_processes,
        cluster: ClusterOptions {
            nokv_image: args.nokv_image.clone(),
            s3_image: args.s3_image.clone(),
            etcd_image: args.etcd_image.clone(),
            rust_log: args.node_log.clone(),
            node_env: {
                let mut env = args.node_env.clone();
                if args.follower_reads {
                    env.push(("NOKV_FOLLOWER_READS".into(), "true".into()));
                }
                env
            },
            ready_timeout: args.ready_timeout,
            gc_grace: args.gc_grace,
            gc_interval: args.gc_interval,
            ..ClusterOptions::default()
        },
        recovery_timeout: args.recovery_timeout,
        check_budget: SearchBudget {
            max_steps: Some(args.check_steps),
            max_duration: Some(args.check_time),
        },
        liveness: LivenessBounds {
            resume_ns: duration_ns(args.resume_bound),
            settle_ns: duration_ns(args.settle_bound),
            gap_ns: duration_ns(args.gap_bound),
        },
    };
    // The run owns the containers; it runs as a task. A first Ctrl-C asks
    // it to stop early (heal, record histories, logs and statuses); a
    // second drops it, and with it every container, network and volume.
    let run_id = nokv_jepsen::run::run_id(args.seed);
    let (interrupt_tx, interrupt_rx) = tokio::sync::watch::channel(false);
    let mut task = tokio::spawn(async move { run(&config, interrupt_rx).await });
    let joined = tokio::select! {
        joined = &mut task => joined,
        _ = tokio::signal::ctrl_c() => {
            eprintln!(
                "interrupted: healing and saving what the run recorded in {} \
                 (Ctrl-C again to quit at once)",
                out.display()
            );
            let _ = interrupt_tx.send(true);
            tokio::select! {
                joined = &mut task => joined,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("interrupted again: removing the run's containers");
                    task.abort();
                    let _ = task.await;
                    for e in Docker::remove_run(Some(&run_id)) {
                        eprintln!("nokv-jepsen: {e}");
                    }
                    return Ok(ExitCode::from(130));
                }
            }
        }
    };
    let report = joined.context("the run panicked")??;
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        emit(&render_report(&report, &out))?;
    }
    Ok(match (&report.aborted, report.valid) {
        (Some(_), _) if *interrupt_tx.borrow() => ExitCode::from(130),
        (Some(_), _) => ExitCode::from(2),
        (None, true) => ExitCode::SUCCESS,
        (None, false) => ExitCode::from(1),
    })
}

fn duration_ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

fn check_command(history: PathBuf) -> anyhow::Result<ExitCode> {
    let file =
        std::fs::File::open(&history).with_context(|| format!("open {}", history.display()))?;
    let h: History<_, _> = History::from_jsonl_events(std::io::BufReader::new(file))?;
    let summary = check_keyed(&Register, &h, &SearchBudget::default());
    emit(&format!("{}\n", serde_json::to_string_pretty(&summary)?))?;
    Ok(if summary.verdict == nokv_checker::Verdict::Linearizable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Block transfers use the run's S3 server with its credentials. Set
    // before any thread exists; an explicit environment wins.
    for (key, value) in [
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        if std::env::var_os(key).is_none() {
            std::env::set_var(key, value);
        }
    }
    let result = match cli.command {
        Command::Check { history } => check_command(history),
        Command::Clean => {
            let errors = Docker::remove_run(None);
            for e in &errors {
                eprintln!("nokv-jepsen: {e}");
            }
            Ok(if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Run(args) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(run_command(*args)),
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nokv-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}
