//! Linearizable registers: small files read, written and compare-and-set.
//!
//! Each register is one file, `/jepsen/register/k{N}` (even `N`, root
//! shard) or `/s1/register/k{N}` (odd `N`, the grafted shard); its value
//! is the file's body and its key in the history is that path. Every value written is unique (`p{process}-{seq}`), which
//! is what makes CAS through a generation predicate exact:
//!
//! * read: one linearizable `ReadBody` gives the generation and block plan
//!   together, then the bytes come from the object store (digest checked).
//!   A missing file reads as absent (`None`).
//! * write: publish in upsert mode (stage, upload, commit).
//! * cas(from, to): read (value `v`, generation `g`) as above; if `v != from`
//!   the CAS fails there. Otherwise publish `to` with the predicate
//!   "current generation is `g`" (create-only when `from` is absent). A
//!   stale generation means another value was committed since the read, and
//!   since values never repeat, the register no longer holds `from`: the
//!   CAS fails at its commit point.
//!
//! Processes spread over a few keys at a time and move to fresh keys every
//! `ops_per_key` operations, so each key's history stays small enough for
//! the linearizability search.
//!
//! With `follower_reads`, linearizable reads go to the replicas in turn and
//! followers answer them (a read index from the leader, then their own
//! state): the checker holds them to the same standard.
//!
//! Unsafe mode (`stale_reads`): reads go to the process's home replica with
//! stale consistency (no read-index). Under a partition that replica serves
//! old values, and the checker must report it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nokv_checker::{Keyed, Operation, Outcome, RegisterInput, RegisterOutput, Value};
use nokv_client::{Client, ClientError, Consistency, PublishMode, PutOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{finish, join_processes, write_failure, Ctx};
use crate::cluster::{ClusterError, DockerCluster};

/// Directory holding the registers of the root shard.
pub const DIR: &str = "/jepsen/register";
/// Directory holding the registers of the grafted shard.
pub const GRAFT_DIR: &str = "/s1/register";

pub type RegisterOp = Operation<Keyed<RegisterInput>, RegisterOutput>;

/// Register workload settings.
#[derive(Clone, Debug)]
pub struct RegisterConfig {
    pub processes: usize,
    /// Keys in use at once.
    pub keys: u64,
    /// Operations (all processes) per key before moving to fresh keys.
    pub ops_per_key: u64,
    /// Unsafe: reads are stale reads from the process's home replica.
    pub stale_reads: bool,
    /// Linearizable reads go to every replica in turn and followers answer
    /// them through a read index from the leader (the nodes run with
    /// `NOKV_FOLLOWER_READS=true`).
    pub follower_reads: bool,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig {
            processes: 6,
            keys: 3,
            ops_per_key: 100,
            stale_reads: false,
            follower_reads: false,
        }
    }
}

struct Process {
    id: u64,
    client: Client,
    /// Where reads go: a client that starts at one replica (process `i`
    /// at replica `i mod 3`), as Jepsen binds each client to a node. A
    /// linearizable read there goes to that replica first: one that still
    /// believes it leads (cut off, paused and resumed) answers it itself,
    /// so a stale answer from a deposed leader (a lease read past its
    /// lease, say) reaches the checker. In unsafe mode the reads are stale.
    reader: Client,
    consistency: Consistency,
    seq: u64,
    /// The last value this process saw per key (the `from` of its CASes).
    last_seen: HashMap<String, Value>,
    opts: PutOptions,
}

/// Creates the workload's directories, one per shard.
pub async fn setup(client: &Client) -> Result<(), ClientError> {
    client.mkdir(DIR, true).await?;
    client.mkdir(GRAFT_DIR, true).await.map(|_| ())
}

/// The register (its path, the key in the history) numbered `n`: even
/// numbers in the root shard, odd ones under the graft.
pub fn key_of(n: u64) -> String {
    let dir = if n.is_multiple_of(2) { DIR } else { GRAFT_DIR };
    format!("{dir}/k{n}")
}

/// Runs `config.processes` processes (ids from `first_process`) until
/// `ctx.stop`; returns every operation.
pub async fn run(
    cluster: &DockerCluster,
    ctx: &Ctx,
    config: &RegisterConfig,
    first_process: u64,
) -> Result<Vec<RegisterOp>, ClusterError> {
    let counter = Arc::new(AtomicU64::new(0));
    let nodes = cluster.nodes();
    let mut tasks = Vec::new();
    for i in 0..config.processes {
        let id = first_process + i as u64;
        let client = cluster.client(ctx.op_timeout)?;
        let home = &nodes[i % nodes.len()];
        let mut reader = cluster.client_config(vec![home.host_addr.clone()]);
        reader.deadline = ctx.op_timeout;
        reader.attempt_timeout = ctx.op_timeout.min(Duration::from_secs(2));
        reader.connect_timeout = Duration::from_millis(500);
        reader.read_from_followers = config.follower_reads;
        let reader = Client::new(reader)?;
        let consistency = if config.stale_reads {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        };
        let process = Process {
            id,
            client,
            reader,
            consistency,
            seq: 0,
            last_seen: HashMap::new(),
            opts: PutOptions {
                producer: "nokv-jepsen".into(),
                ..PutOptions::default()
            },
        };
        let ctx = ctx.clone();
        let config = config.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            process_loop(process, ctx, config, counter).await
        }));
    }
    join_processes("register", tasks).await
}

async fn process_loop(
    mut p: Process,
    ctx: Ctx,
    config: RegisterConfig,
    counter: Arc<AtomicU64>,
) -> Vec<RegisterOp> {
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (p.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let mut ops = Vec::new();
    while !ctx.stopped() {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let window = n / (config.ops_per_key * config.keys).max(1);
        let key = key_of(window * config.keys + rng.random_range(0..config.keys));
        let roll: f64 = rng.random();
        let op = if roll < 0.5 {
            read(&mut p, &ctx, &key).await
        } else if roll < 0.75 {
            p.seq += 1;
            let value = format!("p{}-{}", p.id, p.seq);
            write(&mut p, &ctx, &key, value).await
        } else {
            p.seq += 1;
            let to = format!("p{}-{}", p.id, p.seq);
            let from = p.last_seen.get(&key).cloned().unwrap_or(None);
            cas(&mut p, &ctx, &key, from, to).await
        };
        ops.push(op);
    }
    ops
}

fn path_of(key: &str) -> String {
    key.to_string()
}

/// The register's value and generation (0 when absent), read through `client`.
async fn current(
    client: &Client,
    key: &str,
    consistency: Consistency,
) -> Result<(Value, u64), ClientError> {
    match client.read_body(&path_of(key), consistency).await {
        Ok((attr, Some(body))) => {
            let bytes = client.read_range(&body, None).await?;
            let value = String::from_utf8(bytes.to_vec())
                .map_err(|_| ClientError::Integrity("register body is not UTF-8".into()))?;
            Ok((Some(value), attr.generation.0))
        }
        // A file without a body is never published by this workload.
        Ok((attr, None)) => Err(ClientError::Integrity(format!(
            "register {key} exists without a body (generation {})",
            attr.generation.0
        ))),
        Err(e) if e.is_not_found() => Ok((None, 0)),
        Err(e) => Err(e),
    }
}

async fn read(p: &mut Process, ctx: &Ctx, key: &str) -> RegisterOp {
    let call = ctx.clock.now_ns();
    let input = Keyed {
        key: key.to_string(),
        input: RegisterInput::Read,
    };
    let outcome = match current(&p.reader, key, p.consistency).await {
        Ok((value, _)) => {
            p.last_seen.insert(key.to_string(), value.clone());
            Outcome::Ok(RegisterOutput::Value(value))
        }
        Err(_) => Outcome::Fail,
    };
    finish(ctx, p.id, call, input, outcome)
}

/// How a publish ended.
enum Published {
    /// Committed: the new value is visible.
    Committed,
    /// The predicate did not hold (name exists, generation moved on), at
    /// stage or at commit; nothing changed.
    PredicateFailed,
    /// Definitely not visible, or maybe visible (commit outcome unknown).
    Failed(Outcome<RegisterOutput>),
}

/// Publishes `value` at `key` under `mode`, step by step: only the commit
/// can make anything visible, so a failure to stage or upload is a definite
/// failure and only the commit's outcome can be unknown.
async fn publish(p: &Process, key: &str, value: &str, mode: PublishMode) -> Published {
    let opts = PutOptions {
        mode,
        ..p.opts.clone()
    };
    let predicate_failed = |e: &ClientError| e.is_exists() || e.code() == "STALE_GENERATION";
    let staged = match p.client.stage(&path_of(key), &opts).await {
        Ok(staged) => staged,
        Err(e) if predicate_failed(&e) => return Published::PredicateFailed,
        Err(_) => return Published::Failed(Outcome::Fail),
    };
    let spec = match p
        .client
        .upload_blocks(&staged, value.as_bytes(), &opts, &|_| {})
        .await
    {
        Ok(spec) => spec,
        Err(_) => {
            // Best effort; the lease reclaims it otherwise.
            let _ = p.client.abort(staged.id).await;
            return Published::Failed(Outcome::Fail);
        }
    };
    match p.client.commit(staged.id, spec).await {
        Ok(_) => Published::Committed,
        Err(e) if predicate_failed(&e) => Published::PredicateFailed,
        Err(e) => {
            let outcome = write_failure(&e);
            if matches!(outcome, Outcome::Fail) {
                let _ = p.client.abort(staged.id).await;
            }
            Published::Failed(outcome)
        }
    }
}

async fn write(p: &mut Process, ctx: &Ctx, key: &str, value: String) -> RegisterOp {
    let call = ctx.clock.now_ns();
    let outcome = match publish(p, key, &value, PublishMode::Upsert).await {
        Published::Committed => Outcome::Ok(RegisterOutput::Ok),
        // Upsert has no predicate; a refusal is a definite failure.
        Published::PredicateFailed => Outcome::Fail,
        Published::Failed(outcome) => outcome,
    };
    let input = Keyed {
        key: key.to_string(),
        input: RegisterInput::Write(Some(value)),
    };
    finish(ctx, p.id, call, input, outcome)
}

async fn cas(p: &mut Process, ctx: &Ctx, key: &str, from: Value, to: String) -> RegisterOp {
    let call = ctx.clock.now_ns();
    let input = Keyed {
        key: key.to_string(),
        input: RegisterInput::Cas {
            from: from.clone(),
            to: Some(to.clone()),
        },
    };
    let outcome = match current(&p.client, key, Consistency::Linearizable).await {
        Err(_) => Outcome::Fail,
        Ok((value, _)) if value != from => {
            p.last_seen.insert(key.to_string(), value);
            Outcome::Ok(RegisterOutput::CasFailed)
        }
        Ok((_, generation)) => {
            let mode = match from {
                None => PublishMode::CreateOnly,
                Some(_) => PublishMode::Replace {
                    expected: nokv_client::Generation(generation),
                },
            };
            match publish(p, key, &to, mode).await {
                Published::Committed => Outcome::Ok(RegisterOutput::Ok),
                Published::PredicateFailed => Outcome::Ok(RegisterOutput::CasFailed),
                Published::Failed(outcome) => outcome,
            }
        }
    };
    finish(ctx, p.id, call, input, outcome)
}
