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
  nokv mount /mnt/nokv                           # the whole tree, read-write
  nokv mount /mnt/run7 --read-only --subdir /runs/7
  nokv snapshot create /runs/7                   # prints the snapshot id, e.g. 3
  nokv mount /mnt/run7-pinned --snapshot 3       # that subtree as it was

The mount stays in the foreground; Ctrl-C or SIGTERM unmounts it, and the
mount point is released if the process dies. File bytes move straight
between this machine and the object store (AWS_ENDPOINT_URL and the AWS
credential variables, or what the cluster advertises).

Writes are close-to-open: a file being written lives in a spill file under
--spill-dir, and each close (or fsync) publishes it as the file's next
generation, atomically; other clients see the old bytes or the new ones,
never a mix. Editing a large file costs a download and an upload of the
whole file (docs/fuse.md).")]
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
    /// Where files being written wait for their close (default: the
    /// system's temporary directory).
    #[arg(long, env = "NOKV_SPILL_DIR", value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
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
        None => (live, "/".to_string()),
    };
    let path = args.subdir.unwrap_or(default_root);
    let root = nokv_fuse::resolve_root(&client, &path).await?;
    let options = MountOptions {
        read_only: args.read_only || args.snapshot.is_some(),
        attr_ttl: args.attr_ttl,
        entry_ttl: args.entry_ttl,
        consistency: g.consistency(),
        allow_other: args.allow_other,
        invalidate: !args.no_invalidate,
        cache_bytes: args.cache_mib.saturating_mul(1 << 20),
        spill_dir: args.spill_dir.unwrap_or_else(std::env::temp_dir),
    };
    let read_only = options.read_only;
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
        "nokv: mounted {what} on {} ({}); Ctrl-C to unmount",
        args.mountpoint.display(),
        if read_only { "read-only" } else { "read-write" }
    );
    let stop = CancellationToken::new();
    crate::serve::cancel_on_signal(stop.clone());
    stop.cancelled().await;
    tokio::task::spawn_blocking(move || mounted.unmount()).await??;
    eprintln!("nokv: unmounted {}", args.mountpoint.display());
    Ok(())
}
