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
  nokv mount -d /mnt/nokv && nokv umount /mnt/nokv   # in the background
  nokv mount /mnt/run7 --read-only --subdir /runs/7
  nokv snapshot create /runs/7                   # prints the snapshot id, e.g. 3
  nokv mount /mnt/run7-pinned --snapshot 3       # that subtree as it was

The mount stays in the foreground (with -d: in the background, logging to
a file); Ctrl-C, SIGTERM or `nokv umount` unmounts it, and the mount point
is released if the process dies. File bytes move straight
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
    /// Also keep blocks on local disk in DIR (read after memory, before the
    /// object store; kept across mounts; every block checked when read).
    #[arg(long, env = "NOKV_DISK_CACHE", value_name = "DIR")]
    pub disk_cache: Option<PathBuf>,
    /// How much the disk cache may hold, in MiB.
    #[arg(long, default_value_t = 10 * 1024, value_name = "MIB")]
    pub disk_cache_mib: u64,
    /// Let other users use the mount (FUSE allow_other; a non-root user
    /// needs user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Where files being written wait for their close (default: the
    /// system's temporary directory).
    #[arg(long, env = "NOKV_SPILL_DIR", value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Run in the background: return once the mount serves (`nokv umount
    /// MOUNTPOINT` ends it). The mount process logs to --log-file.
    #[arg(short = 'd', long)]
    pub background: bool,
    /// With -d: the mount process's log (default: a file in the temporary
    /// directory, named on stdout).
    #[arg(long, value_name = "FILE", requires = "background")]
    pub log_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  nokv umount /mnt/nokv            # fails with EBUSY while the mount is in use
  nokv umount --lazy /mnt/nokv     # detach it now; it goes when no longer used")]
pub struct UmountArgs {
    /// A directory a `nokv mount` serves.
    pub mountpoint: PathBuf,
    /// Detach the mount even while files in it are open or a shell is in it.
    #[arg(long)]
    pub lazy: bool,
}

/// How long `-d` and `umount` wait for the kernel to show the change.
const SETTLE: Duration = Duration::from_secs(30);

/// `nokv umount`: unmounts, and waits until the mount point is released.
pub async fn umount(args: UmountArgs) -> anyhow::Result<()> {
    let dir = args.mountpoint.clone();
    if !nokv_fuse::is_mounted(&dir) {
        anyhow::bail!("{} is not a mount point", dir.display());
    }
    let lazy = args.lazy;
    tokio::task::spawn_blocking(move || nokv_fuse::unmount(&dir, lazy)).await??;
    wait_for(&args.mountpoint, false).await?;
    eprintln!("nokv: unmounted {}", args.mountpoint.display());
    Ok(())
}

/// Waits until `dir` is (or is no longer) a mount point, for [`SETTLE`].
async fn wait_for(dir: &std::path::Path, mounted: bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while nokv_fuse::is_mounted(dir) != mounted {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "{} is {} after {SETTLE:?}",
                dir.display(),
                if mounted {
                    "not mounted"
                } else {
                    "still mounted"
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Returns once `dir` is no longer a mount point (polled: the kernel does
/// not tell the mount's process).
async fn unmounted(dir: &std::path::Path) {
    while nokv_fuse::is_mounted(dir) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `nokv mount -d`: starts this same command again without `-d`, detached
/// from the terminal, and returns once the kernel serves its mount.
async fn background(args: &MountArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let log = args.log_file.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("nokv-mount-{}.log", std::process::id()))
    });
    let mut skip_value = false;
    let again: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|arg| {
            if std::mem::take(&mut skip_value) {
                return false;
            }
            match arg.to_str() {
                Some("-d" | "--background") => false,
                Some("--log-file") => {
                    skip_value = true;
                    false
                }
                Some(a) => !a.starts_with("--log-file="),
                None => true,
            }
        })
        .collect();
    let file = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(&again)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(file)
        // Its own process group: a Ctrl-C in this terminal does not reach it.
        .process_group(0)
        .spawn()
        .context("start the mount process")?;
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !nokv_fuse::is_mounted(&args.mountpoint) {
        if let Some(status) = child.try_wait()? {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::bail!("the mount process exited ({status}):\n{}", said.trim_end());
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!(
                "{} was not mounted within {SETTLE:?}",
                args.mountpoint.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    outln!(
        "mounted on {} (process {}, log {}); `nokv umount {}` unmounts",
        args.mountpoint.display(),
        child.id(),
        log.display(),
        args.mountpoint.display()
    );
    Ok(())
}

pub async fn mount(args: MountArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    if args.background {
        return background(&args).await;
    }
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
        disk_cache: args
            .disk_cache
            .clone()
            .map(|dir| (dir, args.disk_cache_mib.saturating_mul(1 << 20))),
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
    tokio::select! {
        _ = stop.cancelled() => {
            tokio::task::spawn_blocking(move || mounted.unmount()).await??;
        }
        // `nokv umount` (or fusermount3 -u) from outside.
        () = unmounted(&args.mountpoint) => {
            tokio::task::spawn_blocking(move || mounted.finish()).await??;
        }
    }
    eprintln!("nokv: unmounted {}", args.mountpoint.display());
    Ok(())
}
