//! `nokv-fuse`: a NoKV namespace mounted as a local directory (FUSE).
//!
//! The mount talks to shard leaders through the SDK (`nokv-client`), which
//! routes every request across grafts, so one mount shows the whole
//! multi-shard tree (or a subtree of it, or a snapshot). File bytes never
//! pass through a metadata node: `open` learns a file's body (generation
//! and block list) from its shard, and `read` fetches the blocks straight
//! from the object store; a close publishes written bytes as blocks
//! uploaded straight to it.
//!
//! - `fs`: the kernel's requests (namespace changes map onto engine ops
//!   addressed by inode id and `(parent id, name)`);
//! - `write`: close-to-open writes through a spill file per written file;
//! - `eager`: blocks of a file written front to back uploaded as they fill;
//! - `blocks`: the shared cache of whole blocks, with read-ahead, over an
//!   optional disk tier (`disk`);
//! - `coherence`: a watch of the mounted subtree that invalidates the
//!   kernel's caches when another client changes it;
//! - `attr`: inode numbers, attributes and error numbers for the kernel.
//!
//! Must not depend on: `nokv-meta-node`, `nokv-raft-log`, `nokv-blob` or the
//! CLI. It is a client; everything it knows comes through the SDK.

mod attr;
mod blocks;
mod coherence;
mod disk;
mod eager;
mod fs;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use nokv_client::{Client, ClientError, Consistency, FileType, InodeId};

pub use attr::{errno, kernel_attr, InodeMap, ROOT_INO};
pub use fs::NokvFs;

/// How a mount behaves.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Refuse every change (a snapshot mount always is).
    pub read_only: bool,
    /// How long the kernel may cache attributes and names it was told.
    /// Longer means fewer requests and a later view of other clients'
    /// changes.
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    /// Linearizable (through the leader, the default) or stale reads (any
    /// replica).
    pub consistency: Consistency,
    /// Let users other than the one who mounted use the mount (the FUSE
    /// `allow_other` option; needs `user_allow_other` in /etc/fuse.conf
    /// for a non-root user).
    pub allow_other: bool,
    /// Watch the mounted subtree and invalidate the kernel's caches when
    /// another client changes it (a live mount only; a snapshot never
    /// changes).
    pub invalidate: bool,
    /// Memory for whole blocks read from the object store (shared by every
    /// open file; 0 turns caching and read-ahead off).
    pub cache_bytes: u64,
    /// A directory for whole blocks on local disk, and how many bytes it may
    /// hold (read after memory, before the object store; kept across
    /// mounts). `None`: memory only.
    pub disk_cache: Option<(PathBuf, u64)>,
    /// Where files being written are kept until they are published
    /// (anonymous files: nothing is left behind when the mount dies).
    pub spill_dir: PathBuf,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            read_only: true,
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            consistency: Consistency::Linearizable,
            allow_other: false,
            invalidate: true,
            cache_bytes: 256 << 20,
            disk_cache: None,
            spill_dir: std::env::temp_dir(),
        }
    }
}

/// Why a mount could not be made or ended.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{path} is not a directory in the namespace")]
    NotADirectory { path: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{}: {source}", mountpoint.display())]
    Io {
        mountpoint: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The directory a mount shows: its inode and its global path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRoot {
    pub inode: InodeId,
    pub path: String,
}

/// The root of a mount of directory `path` (through `client`, which may be
/// a snapshot view).
pub async fn resolve_root(client: &Client, path: &str) -> Result<MountRoot, MountError> {
    let attr = client.stat(path, Consistency::Linearizable).await?;
    if attr.file_type != FileType::Directory {
        return Err(MountError::NotADirectory { path: path.into() });
    }
    Ok(MountRoot {
        inode: attr.inode,
        path: normalize(path),
    })
}

/// `path` without repeated or trailing slashes (`/` stays `/`).
fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// A live mount; dropping it unmounts.
pub struct Mount {
    /// `None` once unmounted.
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    /// The watch that invalidates the kernel's caches, if any.
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl Mount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the request loop to end. A mount still in
    /// use (open files, a shell inside it) is detached lazily: it leaves
    /// the namespace at once and its users get errors once this process
    /// exits.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.stop_watch();
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match fusermount(&["-u"], &self.mountpoint) {
            // The kernel ends the connection; the request loop sees it and
            // returns.
            Ok(()) => session.join().map_err(|source| MountError::Io {
                mountpoint: self.mountpoint.clone(),
                source,
            }),
            Err(busy) => {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %busy, "busy; detaching lazily");
                let detached = fusermount(&["-u", "-z"], &self.mountpoint);
                drop(session);
                detached
            }
        }
    }

    /// Waits for the request loop to end after the mount point was
    /// unmounted from outside (`nokv umount`, `fusermount3 -u`).
    pub fn finish(mut self) -> Result<(), MountError> {
        self.stop_watch();
        match self.session.take() {
            Some(session) => session.join().map_err(|source| MountError::Io {
                mountpoint: self.mountpoint.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    fn stop_watch(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.abort();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop_watch();
        if let Some(session) = self.session.take() {
            if let Err(e) = fusermount(&["-u", "-z"], &self.mountpoint) {
                tracing::warn!(error = %e, "unmounting on drop");
            }
            drop(session);
        }
    }
}

/// Whether `dir` is a mount point now, by the kernel's mount table.
pub fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // Field 5 is the mount point, with spaces and the like octal-escaped.
    let want = dir.to_string_lossy().replace(' ', "\\040");
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(want.as_str()))
}

/// Unmounts the NoKV mount at `mountpoint` from outside its process (whose
/// request loop then ends). `lazy`: detach it even while it is in use.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<(), MountError> {
    let args: &[&str] = if lazy { &["-u", "-z"] } else { &["-u"] };
    fusermount(args, mountpoint)
}

/// Runs `fusermount3 ARGS -- MOUNTPOINT`.
///
/// fuser's own unmount of an `auto_unmount` mount only closes its socket
/// to the `fusermount3` that mounted it, and `fusermount3` unmounts only a
/// filesystem whose daemon is gone (open fails with ENOTCONN): while this
/// process lives, that never unmounts. So a clean unmount is done here.
fn fusermount(args: &[&str], mountpoint: &Path) -> Result<(), MountError> {
    let io = |source| MountError::Io {
        mountpoint: mountpoint.to_path_buf(),
        source,
    };
    let out = std::process::Command::new("fusermount3")
        .args(args)
        .arg("--")
        .arg(mountpoint)
        .output()
        .map_err(io)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io(std::io::Error::other(format!(
            "fusermount3 {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))))
    }
}

/// Mounts the subtree `root` on `mountpoint` and returns once the kernel
/// serves it. Requests run as tasks on `runtime`. The mount point is
/// released when the process dies (`auto_unmount`).
pub fn mount(
    client: Client,
    runtime: tokio::runtime::Handle,
    root: MountRoot,
    mountpoint: &Path,
    options: MountOptions,
) -> Result<Mount, MountError> {
    let mut options = options;
    // A snapshot never changes.
    options.read_only |= client.snapshot().is_some();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("nokv".into()),
        MountOption::Subtype("nokv".into()),
        if options.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
        // The kernel checks permission bits itself against the attributes.
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::AutoUnmount,
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::RootAndOwner
    };
    let watch = options.invalidate && client.snapshot().is_none();
    let map = InodeMap::new(root.inode);
    let disk = match &options.disk_cache {
        Some((dir, bytes)) => Some(Arc::new(disk::DiskCache::open(dir, *bytes).map_err(
            |source| MountError::Io {
                mountpoint: dir.clone(),
                source,
            },
        )?)),
        None => None,
    };
    let fs = NokvFs::with_disk_cache(client.clone(), runtime.clone(), root.inode, options, disk);
    let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|source| MountError::Io {
        mountpoint: mountpoint.to_path_buf(),
        source,
    })?;
    let watch = watch.then(|| {
        let mounted_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
        runtime.spawn(coherence::watch_and_invalidate(
            client,
            root.path,
            map,
            session.notifier(),
            mounted_ns,
        ))
    });
    Ok(Mount {
        session: Some(session),
        // fuser mounted the canonical path; unmount that one.
        mountpoint: mountpoint
            .canonicalize()
            .unwrap_or_else(|_| mountpoint.to_path_buf()),
        watch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_normalised() {
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/runs/7/"), "/runs/7");
        assert_eq!(normalize("//runs//7"), "/runs/7");
    }
}
