//! The watch history: which events a command produced, and reading them.
//!
//! `apply` asks [`Holt::event_targets`] where a command points *before*
//! running it (a removed name or a released pin can no longer be resolved
//! afterwards), then, only if the command succeeded, turns those targets
//! and the result into events with [`Holt::emit_events`].

use super::resolve::Place;
use super::{Applied, Holt, Namespace, Stamp};
use crate::command::{EntryRef, InodeRef, Op};
use crate::error::FsError;
use crate::path::split_path;
use crate::query::MAX_READDIR_PAGE;
use crate::types::{FileType, InodeId};
use crate::watch::{Event, EventKind, MAX_WATCH_SCAN};

/// Where a command points, resolved before it runs.
pub(crate) enum Targets {
    None,
    /// Paths (or `None` when unknown) of the entries it touches, with the
    /// inode each had, if it existed.
    Entries(Vec<(Option<String>, Option<InodeId>)>),
    /// A rename: source (path, inode) and destination path.
    Rename(Option<String>, Option<InodeId>, Option<String>),
    /// Directories `mkdir -p` will create.
    NewDirs(Vec<String>),
    /// Published files, in commit order.
    Publishes(Vec<Option<String>>),
    /// Snapshots released: (id, path, root).
    Released(Vec<(crate::snapshot::SnapshotId, String, InodeId)>),
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// `/a//b/` as `/a/b`; `None` for a path that does not parse.
fn normalized(path: &str) -> Option<String> {
    split_path(path)
        .ok()
        .map(|parts| format!("/{}", parts.join("/")))
}

impl Namespace {
    /// The path of a directory, climbed through the reverse links (a
    /// directory has exactly one name), O(depth * log n). Only for commands
    /// that name their target by id or (directory, name).
    pub(crate) fn dir_path(&self, dir: InodeId) -> Option<String> {
        self.dir_path_below(dir, self.root())
            .map(|path| format!("/{path}"))
    }

    fn entry_path(&self, at: &EntryRef) -> Option<String> {
        match at {
            EntryRef::Path(path) => normalized(path),
            EntryRef::Child { parent, name } => self.dir_path(*parent).map(|d| join(&d, name)),
        }
    }

    fn entry_inode(&self, at: &EntryRef) -> Option<InodeId> {
        match self.place(at).ok()? {
            Place::Root => Some(self.root()),
            Place::Entry { parent, name } => self.child(parent, &name),
        }
    }

    fn inode_path(&self, inode: &InodeRef) -> Option<String> {
        match inode {
            InodeRef::Path(path) => normalized(path),
            InodeRef::Id(id) => match self.record(*id).ok()?.attr.file_type {
                FileType::Directory => self.dir_path(*id),
                _ => None,
            },
        }
    }

    /// Prefixes of `path` that do not exist yet (what `mkdir -p` creates).
    fn missing_dirs(&self, path: &str) -> Vec<String> {
        let Ok(parts) = split_path(path) else {
            return Vec::new();
        };
        (1..=parts.len())
            .map(|n| format!("/{}", parts[..n].join("/")))
            .filter(|prefix| self.entry_inode(&EntryRef::Path(prefix.clone())).is_none())
            .collect()
    }
}

impl Holt {
    /// Where `op` points, resolved against the state before it runs.
    pub(crate) fn event_targets(&self, op: &Op) -> Targets {
        let entry = |at: &EntryRef| (self.entry_path(at), self.entry_inode(at));
        match op {
            Op::Mkdir { at, parents, .. } => match (parents, at) {
                (true, EntryRef::Path(path)) => Targets::NewDirs(self.missing_dirs(path)),
                _ => Targets::Entries(vec![entry(at)]),
            },
            Op::Create { at, .. }
            | Op::Symlink { at, .. }
            | Op::Link { at, .. }
            | Op::Unlink { at }
            | Op::Rmdir { at }
            | Op::CreateGraft { at, .. }
            | Op::RemoveGraft { at, .. } => Targets::Entries(vec![entry(at)]),
            Op::Rename { from, to, .. } => Targets::Rename(
                self.entry_path(from),
                self.entry_inode(from),
                self.entry_path(to),
            ),
            Op::SetAttr { inode, .. }
            | Op::SetXattr { inode, .. }
            | Op::RemoveXattr { inode, .. } => {
                Targets::Entries(vec![(self.inode_path(inode), self.inode(inode).ok())])
            }
            Op::CommitPublish { upload, .. } => Targets::Publishes(vec![self.upload_path(*upload)]),
            Op::CommitPublishBatch { commits } => Targets::Publishes(
                commits
                    .iter()
                    .map(|(upload, _)| self.upload_path(*upload))
                    .collect(),
            ),
            Op::CommitPublishIndexed { commits } => {
                Targets::Publishes(commits.iter().map(|c| self.upload_path(c.upload)).collect())
            }
            Op::CreateSnapshot { path, .. } => Targets::Entries(vec![(normalized(path), None)]),
            Op::RemoveSnapshot { id } => Targets::Released(
                self.snapshots
                    .get(id)
                    .map(|pin| (*id, pin.info.path.clone(), pin.info.root))
                    .into_iter()
                    .collect(),
            ),
            Op::ExpireSnapshots { now_ns } => Targets::Released(
                self.expired_snapshots(*now_ns)
                    .into_iter()
                    .filter_map(|id| {
                        self.snapshots
                            .get(&id)
                            .map(|pin| (id, pin.info.path.clone(), pin.info.root))
                    })
                    .collect(),
            ),
            Op::BeginPublish { .. }
            | Op::AbortPublish { .. }
            | Op::RenewUpload { .. }
            | Op::ExpireUploads { .. }
            | Op::GcDone { .. }
            | Op::RenewSnapshot { .. }
            | Op::SetWatchRetention { .. }
            | Op::CreateToken { .. }
            | Op::RevokeToken { .. } => Targets::None,
        }
    }

    fn upload_path(&self, upload: crate::body::UploadId) -> Option<String> {
        let staged = self.staged_upload(upload)?;
        if let crate::body::PublishMode::Inode { inode, .. } = staged.mode {
            // By inode: the path only if the recorded name still holds it
            // (else the event carries the inode alone).
            if self.child(staged.parent, &staged.name) != Some(inode) {
                return None;
            }
        }
        self.dir_path(staged.parent).map(|d| join(&d, &staged.name))
    }

    /// Appends the events of a command that succeeded, then trims the
    /// history to the retention.
    pub(crate) fn emit_events(
        &mut self,
        stamp: Stamp,
        op: &Op,
        targets: Targets,
        applied: &Applied,
    ) {
        let attr_inode = match applied {
            Applied::Attr(attr) => Some(attr.inode),
            _ => None,
        };
        let mut out: Vec<(Option<String>, InodeId, EventKind)> = Vec::new();
        match (targets, op) {
            (Targets::None, _) => {}
            (Targets::NewDirs(dirs), _) => {
                for dir in dirs {
                    let inode = self.entry_inode(&EntryRef::Path(dir.clone()));
                    out.push((Some(dir), inode.unwrap_or(InodeId(0)), EventKind::Mkdir));
                }
            }
            (Targets::Rename(from, inode, to), _) => {
                let inode = inode.or(attr_inode).unwrap_or(InodeId(0));
                out.push((to, inode, EventKind::Rename { from }));
            }
            (Targets::Publishes(paths), _) => {
                let specs: Vec<&crate::body::BodySpec> = match op {
                    Op::CommitPublish { body, .. } => vec![body],
                    Op::CommitPublishBatch { commits } => commits.iter().map(|(_, b)| b).collect(),
                    Op::CommitPublishIndexed { commits } => {
                        commits.iter().map(|c| &c.body).collect()
                    }
                    _ => Vec::new(),
                };
                let attrs: Vec<crate::types::Attr> = match applied {
                    Applied::Attr(a) => vec![a.clone()],
                    Applied::Attrs(list) => list.clone(),
                    _ => Vec::new(),
                };
                for ((path, spec), attr) in paths.into_iter().zip(specs).zip(attrs) {
                    out.push((
                        path,
                        attr.inode,
                        EventKind::Publish {
                            generation: attr.generation,
                            size: spec.size,
                            sha256: spec.sha256.clone(),
                        },
                    ));
                }
            }
            (Targets::Released(pins), _) => {
                for (id, path, root) in pins {
                    out.push((Some(path), root, EventKind::SnapshotRemoved { id }));
                }
            }
            (Targets::Entries(entries), op) => {
                let Some((path, before)) = entries.into_iter().next() else {
                    return;
                };
                let inode = attr_inode.or(before).unwrap_or(InodeId(0));
                let kind = match (op, applied) {
                    (Op::Create { .. }, _) => EventKind::Create {
                        file_type: FileType::File,
                    },
                    (Op::Symlink { .. }, _) => EventKind::Create {
                        file_type: FileType::Symlink,
                    },
                    (Op::Link { .. }, _) => EventKind::Link,
                    // A graft point appears as a directory (inode: the
                    // child shard's root) and disappears as a removal.
                    (Op::Mkdir { .. } | Op::CreateGraft { .. }, _) => EventKind::Mkdir,
                    (Op::Unlink { .. } | Op::Rmdir { .. } | Op::RemoveGraft { .. }, _) => {
                        EventKind::Remove
                    }
                    (Op::SetAttr { .. }, _) => EventKind::SetAttr,
                    (Op::SetXattr { name, .. }, _) => EventKind::Xattr {
                        name: name.clone(),
                        removed: false,
                    },
                    (Op::RemoveXattr { name, .. }, _) => EventKind::Xattr {
                        name: name.clone(),
                        removed: true,
                    },
                    (Op::CreateSnapshot { .. }, Applied::Snapshot(info)) => {
                        out.push((
                            Some(info.path.clone()),
                            info.root,
                            EventKind::SnapshotCreated { id: info.id },
                        ));
                        self.append(stamp, out);
                        return;
                    }
                    _ => return,
                };
                out.push((path, inode, kind));
            }
        }
        self.append(stamp, out);
    }

    fn append(&mut self, stamp: Stamp, events: Vec<(Option<String>, InodeId, EventKind)>) {
        for (path, inode, kind) in events {
            let seq = self.next_event;
            // 2^64 events cannot be reached; saturating keeps `apply` panic-free.
            self.next_event = seq.saturating_add(1);
            self.events.push_back(Event {
                seq,
                index: stamp.index,
                time_ns: stamp.time_ns,
                inode,
                path,
                kind,
            });
        }
        let retention = self.retention;
        while let Some(oldest) = self.events.front() {
            let too_many = self.events.len() as u64 > retention.max_events;
            let too_old = oldest.time_ns.saturating_add(retention.max_age_ns) < stamp.time_ns;
            if !(too_many || too_old) {
                break;
            }
            self.events.pop_front();
        }
    }

    /// The oldest cursor a watcher can resume from: everything after it is
    /// still in the history.
    pub fn oldest_cursor(&self) -> u64 {
        match self.events.front() {
            Some(first) => first.seq.saturating_sub(1),
            None => self.next_event.saturating_sub(1),
        }
    }

    /// How much history is kept.
    pub fn watch_retention(&self) -> crate::watch::WatchRetention {
        self.retention
    }

    /// The cursor of the newest event (0 before the first).
    pub fn newest_cursor(&self) -> u64 {
        self.next_event.saturating_sub(1)
    }

    /// Up to `limit` events after cursor `after` that a watch of `dir`
    /// sees, and the cursor to resume from (the last event examined, which
    /// may be past the last one returned). A cursor ahead of this replica's
    /// history returns nothing (the replica has not applied that far yet).
    pub fn events(
        &self,
        after: u64,
        dir: &str,
        recursive: bool,
        limit: u32,
    ) -> Result<(Vec<Event>, u64), FsError> {
        let dir = normalized(dir).ok_or_else(|| {
            FsError::InvalidArgument(format!("watch path {dir:?} is not absolute"))
        })?;
        let oldest = self.oldest_cursor();
        if after < oldest {
            return Err(FsError::CursorExpired { oldest });
        }
        let limit = if limit == 0 || limit > MAX_READDIR_PAGE {
            MAX_READDIR_PAGE
        } else {
            limit
        } as usize;
        // Events are in seq order with no gaps: the one after `after` is at
        // position `after - oldest`.
        let start = usize::try_from(after - oldest).unwrap_or(usize::MAX);
        let mut events = Vec::new();
        let mut cursor = after;
        // An O(log n) view of the history from `start` (persistent vector).
        let newer = self.events.skip(start.min(self.events.len()));
        for event in newer.iter().take(MAX_WATCH_SCAN) {
            if events.len() == limit {
                break;
            }
            cursor = event.seq;
            if event.matches(&dir, recursive) {
                events.push(event.clone());
            }
        }
        Ok((events, cursor))
    }
}
