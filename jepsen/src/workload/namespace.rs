//! Namespace: concurrent renames and moves of files and directories inside
//! one subtree must keep it a tree.
//!
//! Setup creates directories `d0…` and files `f0…` (every name unique)
//! under `/jepsen/ns`. Each operation moves one item into another directory
//! (or the subtree's root) with a no-replace rename; moving a directory
//! into its own subtree must be refused. Processes track where items are
//! from their own successes and re-walk the tree when a rename finds its
//! source gone. After the run, a walk from the root must find every item
//! exactly once, no directory twice and nothing else ([`check_tree`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use nokv_checker::{check_tree, Operation, Outcome, TreeEntry, TreeSummary};
use nokv_client::{Client, ClientError, Consistency, FileType, RenameMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{finish, join_processes, until_ok, write_failure, Ctx};
use crate::cluster::{ClusterError, DockerCluster};

/// Root of the workload's subtree.
pub const ROOT: &str = "/jepsen/ns";
pub const DIRS: usize = 4;
pub const FILES: usize = 6;

/// One recorded move.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Move {
    pub from: String,
    pub to: String,
}

pub type MoveOp = Operation<Move, ()>;

/// Every item's name.
pub fn items() -> BTreeSet<String> {
    (0..DIRS)
        .map(|i| format!("d{i}"))
        .chain((0..FILES).map(|i| format!("f{i}")))
        .collect()
}

pub async fn setup(client: &Client) -> Result<(), ClientError> {
    client.mkdir(ROOT, true).await?;
    for i in 0..DIRS {
        client.mkdir(&format!("{ROOT}/d{i}"), false).await?;
    }
    for i in 0..FILES {
        client.create(&format!("{ROOT}/f{i}")).await?;
    }
    Ok(())
}

/// Walks the subtree breadth first. Returns every entry below the root and
/// whether the walk hit its depth limit (only a cycle can make it).
pub async fn walk(client: &Client) -> Result<(Vec<TreeEntry>, bool), ClientError> {
    let max_depth = DIRS + 2;
    let mut entries = Vec::new();
    let mut queue = VecDeque::from([(ROOT.to_string(), 0usize)]);
    let mut truncated = false;
    while let Some((dir, depth)) = queue.pop_front() {
        if depth > max_depth {
            truncated = true;
            continue;
        }
        for e in client.read_dir_all(&dir, Consistency::Linearizable).await? {
            let path = format!("{dir}/{}", e.name);
            let is_dir = e.attr.file_type == FileType::Directory;
            if is_dir {
                queue.push_back((path.clone(), depth + 1));
            }
            entries.push(TreeEntry {
                path,
                inode: e.attr.inode.0,
                is_dir,
            });
        }
    }
    Ok((entries, truncated))
}

/// Where each item is, from a walk.
fn locate(entries: &[TreeEntry]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|e| (e.name().to_string(), e.path.clone()))
        .collect()
}

pub async fn run(
    cluster: &DockerCluster,
    ctx: &Ctx,
    processes: usize,
    first_process: u64,
) -> Result<Vec<MoveOp>, ClusterError> {
    let names: Vec<String> = items().into_iter().collect();
    let mut tasks = Vec::new();
    for i in 0..processes {
        let id = first_process + i as u64;
        let client = cluster.client(ctx.op_timeout)?;
        let ctx = ctx.clone();
        let names = names.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(ctx.seed ^ id.wrapping_mul(0xA24B_AED4_963E_E407));
            let mut ops = Vec::new();
            let mut paths: BTreeMap<String, String> = BTreeMap::new();
            while !ctx.stopped() {
                if paths.len() < names.len() {
                    // Unknown locations: look again (a failed walk is retried
                    // on the next turn; it records no operation).
                    match walk(&client).await {
                        Ok((entries, _)) => paths = locate(&entries),
                        Err(_) => continue,
                    }
                    if paths.len() < names.len() {
                        // Someone's rename is between our reads; try later.
                        paths.clear();
                        continue;
                    }
                }
                let item = &names[rng.random_range(0..names.len())];
                let target = rng.random_range(0..=DIRS);
                let dir = match target {
                    DIRS => ROOT.to_string(),
                    d => match paths.get(&format!("d{d}")) {
                        Some(p) => p.clone(),
                        None => continue,
                    },
                };
                let Some(from) = paths.get(item).cloned() else {
                    continue;
                };
                let to = format!("{dir}/{item}");
                if to == from {
                    continue;
                }
                let call = ctx.clock.now_ns();
                let result = client.rename(&from, &to, RenameMode::NoReplace).await;
                let outcome = match &result {
                    Ok(()) => Outcome::Ok(()),
                    Err(e) => write_failure(e),
                };
                match &result {
                    // Moving a directory moves everything under it: re-walk.
                    Ok(()) if item.starts_with('d') => paths.clear(),
                    Ok(()) => {
                        paths.insert(item.clone(), to.clone());
                    }
                    Err(e) if e.is_not_found() || matches!(outcome, Outcome::Unknown) => {
                        paths.clear()
                    }
                    Err(_) => {}
                }
                ops.push(finish(&ctx, id, call, Move { from, to }, outcome));
            }
            ops
        }));
    }
    join_processes("namespace", tasks).await
}

/// Walks the healed cluster's subtree and checks it is still a tree.
pub async fn check(client: &Client, read_timeout: Duration) -> Result<TreeSummary, ClusterError> {
    let (entries, truncated) = until_ok(read_timeout, || walk(client)).await?;
    Ok(check_tree(&items(), &entries, truncated))
}
