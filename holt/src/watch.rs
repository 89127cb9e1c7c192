//! Typed change events: the replicated, bounded history behind `Watch`.
//!
//! Every successful mutation appends events to the history at apply time,
//! each with the next sequence number. A cursor is such a number ("after
//! event N"), so it means the same on every replica. The history keeps at
//! most `max_events` events and none older than `max_age_ns` (by the
//! leader's stamped time); a cursor older than what is kept gets
//! [`FsError::CursorExpired`](crate::FsError::CursorExpired) naming the
//! oldest usable cursor.
//!
//! Paths are canonical when the command named its target by path or by
//! (directory, name): intermediate symlinks in a client path are kept as
//! written. A file addressed only by inode id has no path (`None`): a
//! recursive watch on `/` sees it, narrower watches do not.

use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotId;
use crate::types::{FileType, Generation, InodeId, LogIndex};

/// Default retention: the last 100,000 events, at most one day old.
pub const DEFAULT_MAX_EVENTS: u64 = 100_000;
pub const DEFAULT_MAX_EVENT_AGE_NS: u64 = 24 * 3600 * 1_000_000_000;

/// Most events a retention may keep. The history is replicated state held
/// in memory on every replica (a few hundred bytes per event) and written
/// into every snapshot image.
pub const MAX_WATCH_EVENTS: u64 = 1_000_000;
/// Longest age a retention may keep events for: 30 days.
pub const MAX_WATCH_AGE_NS: u64 = 30 * 24 * 3600 * 1_000_000_000;

/// Most events one read of the history examines. A narrow watch (one
/// directory) may match none of them: it then gets no event and a cursor
/// past what was examined, and reads on from there, instead of scanning
/// the whole retained history under the state lock in one call.
pub const MAX_WATCH_SCAN: usize = 10_000;

/// How much history is kept. Replicated state (every replica trims the
/// same way), changed by `Op::SetWatchRetention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRetention {
    pub max_events: u64,
    pub max_age_ns: u64,
}

impl Default for WatchRetention {
    fn default() -> Self {
        WatchRetention {
            max_events: DEFAULT_MAX_EVENTS,
            max_age_ns: DEFAULT_MAX_EVENT_AGE_NS,
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A file or symlink was created.
    Create {
        file_type: FileType,
    },
    /// A directory was created, or a graft point (`CreateGraft`: the
    /// event's inode is the child shard's root).
    Mkdir,
    /// A new hard link to an existing inode.
    Link,
    /// A name was removed (unlink, rmdir, or `RemoveGraft`).
    Remove,
    /// Moved from `from` to the event's path.
    Rename {
        from: Option<String>,
    },
    /// A new body generation became visible.
    Publish {
        generation: Generation,
        size: u64,
        sha256: String,
    },
    SetAttr,
    /// An extended attribute was set (`removed: false`) or removed.
    Xattr {
        name: String,
        removed: bool,
    },
    SnapshotCreated {
        id: SnapshotId,
    },
    SnapshotRemoved {
        id: SnapshotId,
    },
}

/// One entry of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The cursor of this event; a watcher resumes "after" it.
    pub seq: u64,
    /// Log index of the command that caused it.
    pub index: LogIndex,
    /// Leader time of that command (ns since the Unix epoch).
    pub time_ns: u64,
    /// The inode concerned.
    pub inode: InodeId,
    /// Where it happened (see the module docs for when this is `None`).
    pub path: Option<String>,
    pub kind: EventKind,
}

impl Event {
    /// Whether a watch of `dir` sees this event: at `dir` itself or one of
    /// its direct children, or anywhere below it when `recursive`. A rename
    /// is seen from either end.
    pub fn matches(&self, dir: &str, recursive: bool) -> bool {
        let from = match &self.kind {
            EventKind::Rename { from } => from.as_deref(),
            _ => None,
        };
        if recursive && dir == "/" {
            return true;
        }
        [self.path.as_deref(), from]
            .into_iter()
            .flatten()
            .any(|p| within(p, dir, recursive))
    }
}

/// Whether `path` is `dir`, a direct child of it, or (`recursive`) below it.
fn within(path: &str, dir: &str, recursive: bool) -> bool {
    let dir = dir.trim_end_matches('/');
    if path == dir || (dir.is_empty() && path == "/") {
        return true;
    }
    let Some(rest) = path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    recursive || !rest.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: Option<&str>, kind: EventKind) -> Event {
        Event {
            seq: 1,
            index: LogIndex(1),
            time_ns: 0,
            inode: InodeId(1),
            path: path.map(str::to_string),
            kind,
        }
    }

    #[test]
    fn watches_see_their_directory_its_children_and_below_when_recursive() {
        let e = event(Some("/a/b/c"), EventKind::Mkdir);
        assert!(e.matches("/a/b", false));
        assert!(e.matches("/a/b/c", false));
        assert!(!e.matches("/a", false));
        assert!(e.matches("/a", true));
        assert!(e.matches("/", true));
        assert!(!e.matches("/a/bc", true), "a sibling with a common prefix");
        assert!(!e.matches("/x", true));
        let top = event(Some("/a"), EventKind::Mkdir);
        assert!(top.matches("/", false));
        let renamed = event(
            Some("/x/y"),
            EventKind::Rename {
                from: Some("/a/b".into()),
            },
        );
        assert!(renamed.matches("/a", false), "seen from where it left");
        assert!(renamed.matches("/x", false), "and where it arrived");
        let nowhere = event(None, EventKind::SetAttr);
        assert!(nowhere.matches("/", true));
        assert!(!nowhere.matches("/", false));
        assert!(!nowhere.matches("/a", true));
    }
}
