//! Disaster recovery commands: `nokv backup` (ask the leader for a recovery
//! point in the object store) and `nokv restore` (rebuild one replica's data
//! directory from the object store alone, offline). The logic lives in
//! `nokv_meta_node::archive`; see docs/recovery.md for the procedure.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nokv_client::Client;
use nokv_holt::ShardId;
use serde_json::json;

use crate::output::print_json;
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// How long to wait for the snapshot and the uploads (the leader itself
    /// gives up after 60s).
    #[arg(long, default_value = "75s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// Only this shard (default: every shard of the cluster, one after another).
    #[arg(long, value_name = "ID")]
    pub shard: Option<u16>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The object store the cluster archived to: s3://BUCKET/PREFIX
    /// (endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// ...) or file:///DIR.
    #[arg(long, env = "NOKV_BLOB_STORE")]
    pub blob_store: String,
    /// The data directory to create; must be empty or absent.
    #[arg(long, env = "NOKV_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The Raft node id the restored replica will run as.
    #[arg(long, env = "NOKV_NODE_ID")]
    pub node_id: u64,
    /// The shard to restore.
    #[arg(long, default_value_t = 0)]
    pub shard: u16,
}

pub async fn backup(args: BackupArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    if g.endpoints.is_empty() {
        anyhow::bail!("no endpoints: pass --endpoints HOST:PORT,... or set NOKV_ENDPOINTS");
    }
    // One attempt may take as long as the snapshot and uploads do.
    let mut config = g.client_config(g.endpoints.clone())?;
    config.deadline = args.wait;
    config.attempt_timeout = args.wait;
    let client = Client::new(config)?;
    let mut points = Vec::new();
    for shard in crate::shard::targets(&client, args.shard).await? {
        let r = client
            .for_shard(shard)
            .backup()
            .await
            .with_context(|| format!("backup of shard {}", shard.0))?;
        if !g.json {
            outln!(
                "shard {}: backup complete: recovery point is log index {} (snapshot {} at index {})",
                shard.0, r.archived_index, r.snapshot_key, r.snapshot_index
            );
        }
        points.push(json!({
            "shard": shard.0,
            "snapshot_index": r.snapshot_index,
            "archived_index": r.archived_index,
            "snapshot_key": r.snapshot_key,
        }));
    }
    if g.json {
        print_json(&json!({ "shards": points }));
    }
    Ok(())
}

pub async fn restore(args: RestoreArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let r = nokv_meta_node::restore_from(
        &args.blob_store,
        ShardId(args.shard),
        &args.data_dir,
        args.node_id,
    )
    .await
    .with_context(|| {
        format!(
            "restoring node {} into {}",
            args.node_id,
            args.data_dir.display()
        )
    })?;
    for (key, reason) in &r.skipped_snapshots {
        eprintln!("nokv: warning: skipped unusable snapshot {key}: {reason}");
    }
    if !r.unused_segments.is_empty() {
        eprintln!(
            "nokv: warning: {} segment(s) after the recovery point could not be chained to it \
             (a segment is missing before them); move them out of the store's log prefix \
             before starting the restored cluster: {}",
            r.unused_segments.len(),
            r.unused_segments.join(", ")
        );
    }
    if !r.is_member() {
        eprintln!(
            "nokv: warning: node {} is not in the restored membership; it will not take part",
            r.node_id
        );
    }
    let members: Vec<String> = r
        .members
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect();
    if g.json {
        print_json(&json!({
            "node_id": r.node_id,
            "shard": r.shard.0,
            "data_dir": r.data_dir,
            "snapshot_key": r.snapshot_key,
            "snapshot_index": r.snapshot_index,
            "snapshot_term": r.snapshot_term,
            "recovery_point": r.last_index,
            "recovery_term": r.last_term,
            "entries": r.entries,
            "segments": r.segments,
            "unused_segments": r.unused_segments,
            "members": members,
        }));
    } else {
        outln!(
            "restored node {} of shard {} into {}",
            r.node_id,
            r.shard.0,
            r.data_dir.display()
        );
        match (&r.snapshot_key, r.snapshot_index) {
            (Some(key), Some(index)) => outln!("  snapshot: {key} (index {index})"),
            _ => outln!("  snapshot: none (the log starts at index 0)"),
        }
        outln!(
            "  log: {} entries from {} segments",
            r.entries,
            r.segments.len()
        );
        outln!(
            "recovery point: log index {} (term {})",
            r.last_index,
            r.last_term
        );
        outln!("members: {}", members.join(","));
        outln!("start the replica with the same --node-id and the address listed for it");
    }
    Ok(())
}
