//! `nokv mount`: the namespace (or a subtree, or a snapshot) as a local
//! directory, in the foreground until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nokv_client::{Consistency, SnapshotId};
use nokv_fuse::MountOptions;
use tokio_util::sync::CancellationToken;

use crate::GlobalArgs;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  nokv mount /mnt/nokv --read-only                # the whole tree
  nokv mount /mnt/run7 --read-only --subdir /runs/7
  nokv snapshot create /runs/7                   # prints the snapshot id, e.g. 3
  nokv mount /mnt/run7-pinned --snapshot 3       # that subtree as it was

The mount stays in the foreground; Ctrl-C or SIGTERM unmounts it, and the
mount point is released if the process dies. File bytes are read straight
from the object store (AWS_ENDPOINT_URL and the AWS credential variables, or
what the cluster advertises). Writes through the mount are not built yet:
--read-only is required for a live mount (docs/fuse.md).")]
pub struct MountArgs {
    /// An existing, empty local directory to mount on.
    pub mountpoint: PathBuf,
    /// Refuse every change.
    #[arg(long)]
    pub read_only: bool,
    /// Mount this directory of the namespace instead of `/` (for a
    /// snapshot: instead of the snapshot's subtree).
    #[arg(long)]
    pub subdir: Option<String>,
    /// Mount snapshot ID read-only: the pinned subtree exactly as it was.
    #[arg(long)]
    pub snapshot: Option<u64>,
    /// How long the kernel may cache attributes (a later view of other
    /// clients' changes, for fewer requests).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub attr_ttl: Duration,
    /// How long the kernel may cache names it looked up.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub entry_ttl: Duration,
    /// Do not watch the mounted subtree: another client's changes then show
    /// only when the TTLs run out.
    #[arg(long)]
    pub no_invalidate: bool,
    /// Memory for blocks read from the object store, in MiB (shared by
    /// every open file; 0 turns the cache and read-ahead off: each read
    /// then fetches exactly its byte range).
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub cache_mib: u64,
    /// Let other users use the mount (FUSE allow_other; a non-root user
    /// needs user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
}

pub async fn mount(args: MountArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let live = g.client()?;
    let (client, default_root) = match args.snapshot {
        Some(id) => {
            let pins = live.snapshots(Consistency::Linearizable).await?;
            let pin = pins
                .into_iter()
                .find(|p| p.id.0 == id)
                .with_context(|| format!("no live snapshot {id} (see `nokv snapshot ls`)"))?;
            (live.at_snapshot(SnapshotId(id)), pin.path)
        }
        None => {
            if !args.read_only {
                anyhow::bail!(nokv_fuse::MountError::WritesNotBuilt);
            }
            (live, "/".to_string())
        }
    };
    let path = args.subdir.unwrap_or(default_root);
    let root = nokv_fuse::resolve_root(&client, &path).await?;
    let options = MountOptions {
        read_only: true,
        attr_ttl: args.attr_ttl,
        entry_ttl: args.entry_ttl,
        consistency: g.consistency(),
        allow_other: args.allow_other,
        invalidate: !args.no_invalidate,
        cache_bytes: args.cache_mib.saturating_mul(1 << 20),
    };
    let mountpoint = args.mountpoint.clone();
    let runtime = tokio::runtime::Handle::current();
    let mounted = tokio::task::spawn_blocking(move || {
        nokv_fuse::mount(client, runtime, root, &mountpoint, options)
    })
    .await??;
    let what = match args.snapshot {
        Some(id) => format!("snapshot {id} ({path})"),
        None => path,
    };
    eprintln!(
        "nokv: mounted {what} on {} (read-only); Ctrl-C to unmount",
        args.mountpoint.display()
    );
    let stop = CancellationToken::new();
    crate::serve::cancel_on_signal(stop.clone());
    stop.cancelled().await;
    tokio::task::spawn_blocking(move || mounted.unmount()).await??;
    eprintln!("nokv: unmounted {}", args.mountpoint.display());
    Ok(())
}
