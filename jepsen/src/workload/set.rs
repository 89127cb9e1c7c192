//! Set: every process creates fresh, unique files in one directory. After
//! the run, a linearizable listing must hold every acknowledged create,
//! nothing that was never attempted, and nothing reported as failed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nokv_checker::{check_set, History, Operation, Outcome, SetSummary};
use nokv_client::{Client, ClientError, Consistency};

use super::{finish, join_processes, until_ok, write_failure, Ctx};
use crate::cluster::{ClusterError, DockerCluster};

/// Directory holding the set's elements.
pub const DIR: &str = "/jepsen/set";

pub type SetOp = Operation<String, ()>;

pub async fn setup(client: &Client) -> Result<(), ClientError> {
    client.mkdir(DIR, true).await.map(|_| ())
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
                let element = format!("e{:06}", counter.fetch_add(1, Ordering::Relaxed));
                let call = ctx.clock.now_ns();
                let outcome = match client.create(&format!("{DIR}/{element}")).await {
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

/// Reads the set once the cluster has healed and checks it.
pub async fn check(
    client: &Client,
    ops: Vec<SetOp>,
    read_timeout: Duration,
) -> Result<SetSummary, ClusterError> {
    let entries = until_ok(read_timeout, || {
        client.read_dir_all(DIR, Consistency::Linearizable)
    })
    .await?;
    let final_read: BTreeSet<String> = entries.into_iter().map(|e| e.name).collect();
    let history = History::new(ops)
        .map_err(|e| ClusterError::Harness(format!("set history is malformed: {e}")))?;
    Ok(check_set(&history, &final_read))
}
