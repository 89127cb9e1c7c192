//! Set: every process creates fresh, unique files, alternately in a
//! directory of the root shard and one of the grafted shard. After the run,
//! a linearizable listing of each must hold every acknowledged create made
//! there, nothing that was never attempted, and nothing reported as failed:
//! checked per shard, and over both. An element is recorded by its path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nokv_checker::{check_set, History, Operation, Outcome, SetSummary};
use nokv_client::{Client, ClientError, Consistency};

use super::{finish, join_processes, until_ok, write_failure, Ctx};
use crate::cluster::{ClusterError, DockerCluster};

/// Directory holding the set's elements in the root shard.
pub const DIR: &str = "/jepsen/set";
/// Directory holding the set's elements in the grafted shard.
pub const GRAFT_DIR: &str = "/s1/set";
/// The set's directories with the shard (graft path) each lies in.
pub const DIRS: [(&str, &str); 2] = [("/", DIR), (crate::cluster::GRAFT, GRAFT_DIR)];

pub type SetOp = Operation<String, ()>;

pub async fn setup(client: &Client) -> Result<(), ClientError> {
    for (_, dir) in DIRS {
        client.mkdir(dir, true).await?;
    }
    Ok(())
}

/// The set's check per shard (by graft path) and over both.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ShardedSet {
    pub all: SetSummary,
    pub by_shard: BTreeMap<String, SetSummary>,
}

/// Runs `processes` processes until `ctx.stop`; returns every add.
pub async fn run(
    cluster: &DockerCluster,
    ctx: &Ctx,
    processes: usize,
    first_process: u64,
) -> Result<Vec<SetOp>, ClusterError> {
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..processes {
        let id = first_process + i as u64;
        let client = cluster.client(ctx.op_timeout)?;
        let ctx = ctx.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut ops = Vec::new();
            while !ctx.stopped() {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let dir = DIRS[(n % 2) as usize].1;
                let element = format!("{dir}/e{n:06}");
                let call = ctx.clock.now_ns();
                let outcome = match client.create(&element).await {
                    Ok(_) => Outcome::Ok(()),
                    Err(e) => write_failure(&e),
                };
                ops.push(finish(&ctx, id, call, element, outcome));
            }
            ops
        }));
    }
    join_processes("set", tasks).await
}

/// Reads the set once the cluster has healed and checks it, per shard and
/// over both.
pub async fn check(
    client: &Client,
    ops: Vec<SetOp>,
    read_timeout: Duration,
) -> Result<ShardedSet, ClusterError> {
    let history = |ops: Vec<SetOp>| {
        History::new(ops)
            .map_err(|e| ClusterError::Harness(format!("set history is malformed: {e}")))
    };
    let mut all_read = BTreeSet::new();
    let mut by_shard = BTreeMap::new();
    for (shard, dir) in DIRS {
        let entries = until_ok(read_timeout, || {
            client.read_dir_all(dir, Consistency::Linearizable)
        })
        .await?;
        let read: BTreeSet<String> = entries
            .into_iter()
            .map(|e| format!("{dir}/{}", e.name))
            .collect();
        let prefix = format!("{dir}/");
        let mine: Vec<SetOp> = ops
            .iter()
            .filter(|op| op.input.starts_with(&prefix))
            .cloned()
            .collect();
        by_shard.insert(shard.to_string(), check_set(&history(mine)?, &read));
        all_read.extend(read);
    }
    Ok(ShardedSet {
        all: check_set(&history(ops)?, &all_read),
        by_shard,
    })
}
