//! `nokv snapshot`: pin a subtree, list, renew and release pins. Reading at
//! a pin is `--snapshot ID` on `ls`, `stat`, `cat` and `get`.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use nokv_client::{SnapshotId, SnapshotInfo};
use serde_json::{json, Value};

use crate::output::{print_json, time};
use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Pin the subtree at PATH as it is now and print the snapshot's id.
    /// Creating one copies nothing; writes after it do not change what it
    /// shows. Example: `nokv snapshot create /runs/7 --lease 2h`, then
    /// `nokv ls --snapshot ID /runs/7`.
    Create {
        path: String,
        /// How long the pin lives unless renewed (released automatically
        /// after that; at most 30 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        lease: Duration,
    },
    /// List live snapshots.
    Ls,
    /// Extend a live snapshot: its lease now ends LEASE from now.
    Renew {
        id: u64,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        lease: Duration,
    },
    /// Release a snapshot now; blocks only it kept become collectable after
    /// the GC grace period.
    Rm { id: u64 },
}

fn info_json(s: &SnapshotInfo) -> Value {
    json!({
        "id": s.id.0,
        "path": s.path,
        "root": s.root.0,
        "pinned_index": s.pinned_index.0,
        "created_ns": s.created_ns,
        "lease_expires_ns": s.lease_expires_ns,
    })
}

fn info_text(s: &SnapshotInfo) -> String {
    format!(
        "{}\t{}\tpinned at index {}\tcreated {}\tlease until {}",
        s.id.0,
        s.path,
        s.pinned_index.0,
        time(s.created_ns),
        time(s.lease_expires_ns)
    )
}

fn print_one(s: &SnapshotInfo, g: &GlobalArgs) {
    if g.json {
        print_json(&info_json(s));
    } else {
        outln!("{}", info_text(s));
    }
}

pub async fn run(command: SnapshotCommand, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    match command {
        SnapshotCommand::Create { path, lease } => {
            let info = client
                .create_snapshot(&path, lease)
                .await
                .with_context(|| format!("snapshot create {path}"))?;
            print_one(&info, g);
        }
        SnapshotCommand::Ls => {
            let list = client
                .snapshots(g.consistency())
                .await
                .context("snapshot ls")?;
            if g.json {
                print_json(&json!({"snapshots": list.iter().map(info_json).collect::<Vec<_>>()}));
            } else {
                for s in &list {
                    outln!("{}", info_text(s));
                }
            }
        }
        SnapshotCommand::Renew { id, lease } => {
            let info = client
                .renew_snapshot(SnapshotId(id), lease)
                .await
                .with_context(|| format!("snapshot renew {id}"))?;
            print_one(&info, g);
        }
        SnapshotCommand::Rm { id } => {
            client
                .remove_snapshot(SnapshotId(id))
                .await
                .with_context(|| format!("snapshot rm {id}"))?;
            if g.json {
                print_json(&json!({"removed": id}));
            }
        }
    }
    Ok(())
}
