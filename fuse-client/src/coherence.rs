//! Coherence across clients: a watch of the mounted subtree tells the
//! kernel to forget what another client changed.
//!
//! The kernel caches attributes and names for their TTLs. Without help a
//! rename, a new body or a removal by another client shows only when they
//! run out. So the mount watches its subtree (recursively, across grafts)
//! and, for each event, invalidates the kernel's copy: the inode's
//! attributes and cached pages, and the names the event added, removed or
//! moved. The TTLs remain the bound when the watch is behind or broken.
//!
//! The kernel's notify calls block (they may wait for a request in flight
//! on the same directory), so they run on a thread of their own, fed by
//! the watch task through a channel.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::mpsc;
use std::time::Duration;

use fuser::{INodeNo, Notifier};
use futures::StreamExt;
use nokv_client::{Client, ClientError, Consistency, Event, EventKind, WatchCursor};

use crate::attr::{InodeMap, ROOT_INO};

/// What the kernel is told to forget.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Invalidate {
    /// An inode's attributes and cached pages.
    Inode(INodeNo),
    /// A name in a directory.
    Entry(INodeNo, OsString),
}

/// Pause before watching again after the stream failed.
const RETRY: Duration = Duration::from_millis(500);

/// Events committed this long before the mount began are skipped: the
/// kernel cached nothing then (a margin for clock skew between this
/// machine and the leader that stamped the event).
const SKEW_MARGIN_NS: u64 = 10_000_000_000;

/// Watches `root_path` (the mounted directory, a global path) and sends
/// the kernel what to forget, until the task is aborted.
pub(crate) async fn watch_and_invalidate(
    client: Client,
    root_path: String,
    map: InodeMap,
    notifier: Notifier,
    mounted_ns: u64,
) {
    let (tx, rx) = mpsc::channel::<Invalidate>();
    let spawned = std::thread::Builder::new()
        .name("nokv-fuse-inval".into())
        .spawn(move || {
            for inval in rx {
                // The kernel answers ENOENT for what it does not cache.
                let _ = match &inval {
                    Invalidate::Inode(ino) => notifier.inval_inode(*ino, 0, 0),
                    Invalidate::Entry(parent, name) => notifier.inval_entry(*parent, name),
                };
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the invalidation thread; caches expire by TTL only");
        return;
    }
    let mut cursor = WatchCursor::new();
    let mut parents = Parents::default();
    loop {
        let mut events = Box::pin(client.watch_from(&root_path, true, cursor.clone()));
        while let Some(item) = events.next().await {
            match item {
                Ok(watched) => {
                    cursor = watched.cursor;
                    if watched.event.time_ns.saturating_add(SKEW_MARGIN_NS) < mounted_ns {
                        continue;
                    }
                    let event = &watched.event;
                    let found = invalidations(&client, &root_path, &map, &mut parents, event);
                    for inval in found.await {
                        if tx.send(inval).is_err() {
                            return;
                        }
                    }
                }
                Err(ClientError::CursorExpired { oldest, shard, .. }) => {
                    // Events were dropped before we saw them; what they
                    // changed shows when the TTLs run out.
                    tracing::warn!(oldest, ?shard, "watch fell behind retention; resuming");
                    match shard {
                        Some(s) => cursor.set(s, oldest.saturating_sub(1)),
                        None => cursor = WatchCursor::new(),
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch for cache invalidation failed; resuming");
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// What the kernel must forget after `event`.
async fn invalidations(
    client: &Client,
    root_path: &str,
    map: &InodeMap,
    parents: &mut Parents,
    event: &Event,
) -> Vec<Invalidate> {
    let mut out = vec![Invalidate::Inode(map.to_kernel(event.inode))];
    let mut names: Vec<&str> = Vec::new();
    match &event.kind {
        EventKind::Create { .. }
        | EventKind::Mkdir
        | EventKind::Link
        | EventKind::Remove
        | EventKind::Publish { .. } => names.extend(event.path.as_deref()),
        EventKind::Rename { from } => {
            names.extend(event.path.as_deref());
            names.extend(from.as_deref());
        }
        _ => {}
    }
    // A moved or removed directory changes the paths below it.
    if matches!(event.kind, EventKind::Rename { .. } | EventKind::Remove) {
        parents.clear();
    }
    for path in names {
        let Some((parent, name)) = split(root_path, path) else {
            continue;
        };
        let parent_ino = if parent == root_path {
            INodeNo(ROOT_INO)
        } else if let Some(ino) = parents.get(&parent) {
            ino
        } else {
            match client.stat(&parent, Consistency::Linearizable).await {
                Ok(attr) => parents.insert(parent, map.to_kernel(attr.inode)),
                // The directory is gone too; its own event invalidates it.
                Err(_) => continue,
            }
        };
        out.push(Invalidate::Entry(parent_ino, name.into()));
        // A directory whose entries changed has a new size and times.
        out.push(Invalidate::Inode(parent_ino));
    }
    out
}

/// Directories' kernel inode numbers by path, as recently resolved, so a
/// burst of events in one directory costs one lookup. Bounded; cleared
/// whenever a path may have changed meaning (a rename or removal).
#[derive(Default)]
struct Parents {
    by_path: HashMap<String, INodeNo>,
}

impl Parents {
    const MAX: usize = 4096;

    fn get(&self, path: &str) -> Option<INodeNo> {
        self.by_path.get(path).copied()
    }

    fn insert(&mut self, path: String, ino: INodeNo) -> INodeNo {
        if self.by_path.len() >= Self::MAX {
            self.by_path.clear();
        }
        self.by_path.insert(path, ino);
        ino
    }

    fn clear(&mut self) {
        self.by_path.clear();
    }
}

/// `path`'s parent directory and name, if `path` lies strictly below
/// `root` (both global, normalised paths).
fn split(root: &str, path: &str) -> Option<(String, String)> {
    let below = if root == "/" {
        path.strip_prefix('/')?
    } else {
        path.strip_prefix(root)?.strip_prefix('/')?
    };
    if below.is_empty() {
        return None;
    }
    let (dir, name) = match below.rsplit_once('/') {
        Some((dir, name)) => (format!("{}/{dir}", root.trim_end_matches('/')), name),
        None => (root.to_string(), below),
    };
    Some((dir, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_parent_and_name_below_the_root() {
        let s = |root, path| split(root, path);
        assert_eq!(s("/", "/a"), Some(("/".into(), "a".into())));
        assert_eq!(s("/", "/a/b/c"), Some(("/a/b".into(), "c".into())));
        assert_eq!(s("/runs", "/runs/7"), Some(("/runs".into(), "7".into())));
        assert_eq!(
            s("/runs", "/runs/7/log"),
            Some(("/runs/7".into(), "log".into()))
        );
        // Not below the root: the root itself, a sibling with a common
        // prefix, another tree.
        assert_eq!(s("/runs", "/runs"), None);
        assert_eq!(s("/runs", "/runs2/x"), None);
        assert_eq!(s("/runs", "/other/x"), None);
        assert_eq!(s("/", "/"), None);
    }
}
