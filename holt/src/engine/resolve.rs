//! Resolution of [`EntryRef`]s and [`InodeRef`]s against the current state.
//!
//! Intermediate path components are resolved like the kernel does: a
//! symlink is followed (absolute targets restart at the root, relative ones
//! continue from the symlink's directory, `..` in a target climbs to the
//! parent and stops at the root), at most [`MAX_SYMLINK_HOPS`] times per
//! resolution. The final component is never followed; operations decide
//! what to do with it.
//!
//! Resolution never enters another shard: a graft entry met on the way, or
//! an inode id of another shard, ends it with `CrossShard` (see
//! [`crate::graft`]).

use std::ops::Bound;

use super::{EntryProbe, InodeRecord, Name, Namespace};
use crate::command::{EntryRef, InodeRef};
use crate::error::FsError;
use crate::graft::GraftPoint;
use crate::path::{preview, split_path, validate_name, MAX_SYMLINK_HOPS};
use crate::types::{FileType, InodeId, ShardId};

/// Where an [`EntryRef`] points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// The path `/`: the root directory, which has no entry of its own.
    Root,
    /// `name` inside directory `parent` (which exists and is a directory).
    Entry { parent: InodeId, name: String },
}

impl Namespace {
    pub(crate) fn root(&self) -> InodeId {
        InodeId::root(self.shard)
    }

    /// The record of an existing inode. An id of another shard (a graft
    /// entry's child, or a client's foreign id) is `CrossShard`.
    pub(crate) fn record(&self, id: InodeId) -> Result<&InodeRecord, FsError> {
        if self.is_foreign(id) {
            return Err(self.cross_shard(id.shard()));
        }
        self.inodes
            .get(&id)
            .ok_or_else(|| FsError::NotFound(format!("inode {id}")))
    }

    /// The record of inode `id` of this shard, to change it (copied first
    /// if a clone of the namespace, e.g. a pin, still shares it).
    pub(crate) fn record_mut(&mut self, id: InodeId) -> Option<&mut InodeRecord> {
        self.inodes.get_mut(&id)
    }

    /// Whether `id` belongs to another shard (for an entry's child: whether
    /// the entry is a graft point).
    pub(crate) fn is_foreign(&self, id: InodeId) -> bool {
        id.shard() != self.shard
    }

    /// The error for reaching `shard`: names the graft point to it, if this
    /// shard has one.
    pub(crate) fn cross_shard(&self, shard: ShardId) -> FsError {
        FsError::CrossShard {
            shard,
            path: self
                .grafts
                .get(&shard)
                .map(|graft| graft.path.clone())
                .unwrap_or_default(),
        }
    }

    /// The child shard when `inode` is a path whose final component is a
    /// graft point (what an attribute change "from the parent side" names).
    pub(crate) fn graft_named(&self, inode: &InodeRef) -> Option<ShardId> {
        let InodeRef::Path(path) = inode else {
            return None;
        };
        match self.place_path(path).ok()? {
            Place::Root => None,
            Place::Entry { parent, name } => self
                .child(parent, &name)
                .filter(|child| self.is_foreign(*child))
                .map(InodeId::shard),
        }
    }

    /// A graft point at or below directory `dir`, if there is one (the
    /// first by child shard). Costs O(grafts × depth).
    pub(crate) fn graft_within(&self, dir: InodeId) -> Option<(ShardId, &GraftPoint)> {
        self.grafts
            .iter()
            .find(|(_, graft)| self.is_within(graft.parent, dir))
            .map(|(shard, graft)| (*shard, graft))
    }

    /// The record of an existing directory.
    pub(crate) fn directory(&self, id: InodeId) -> Result<&InodeRecord, FsError> {
        let record = self.record(id)?;
        if record.attr.file_type != FileType::Directory {
            return Err(FsError::NotADirectory(format!("inode {id}")));
        }
        Ok(record)
    }

    pub(crate) fn child(&self, parent: InodeId, name: &str) -> Option<InodeId> {
        self.dentries.get(&EntryProbe(parent, name)).copied()
    }

    pub(crate) fn has_children(&self, dir: InodeId) -> bool {
        self.dentries
            .range_from(Bound::Included((dir, Name::empty())))
            .next()
            .is_some_and(|((parent, _), _)| *parent == dir)
    }

    /// The directory containing `dir`; the root (and, defensively, anything
    /// without a recorded parent) is its own parent.
    pub(crate) fn parent_of(&self, dir: InodeId) -> InodeId {
        self.inodes
            .get(&dir)
            .and_then(|record| record.parent())
            .unwrap_or_else(|| self.root())
    }

    /// Whether `dir` is `ancestor` or lies below it. The walk is bounded by
    /// the number of inodes so that even a corrupt parent chain terminates.
    pub(crate) fn is_within(&self, dir: InodeId, ancestor: InodeId) -> bool {
        let root = self.root();
        let mut current = dir;
        for _ in 0..=self.inodes.len() {
            if current == ancestor {
                return true;
            }
            if current == root {
                return false;
            }
            current = self.parent_of(current);
        }
        false
    }

    /// Resolves an entry reference to its place, validating names on the way.
    pub(crate) fn place(&self, at: &EntryRef) -> Result<Place, FsError> {
        match at {
            EntryRef::Path(path) => self.place_path(path),
            EntryRef::Child { parent, name } => {
                validate_name(name)?;
                self.directory(*parent)?;
                Ok(Place::Entry {
                    parent: *parent,
                    name: name.clone(),
                })
            }
        }
    }

    /// Resolves an absolute path to its place: all but the last component
    /// must lead to a directory.
    fn place_path(&self, path: &str) -> Result<Place, FsError> {
        let components = split_path(path)?;
        let Some((name, dirs)) = components.split_last() else {
            return Ok(Place::Root);
        };
        let parent = self.walk_dirs(self.root(), dirs, path)?;
        Ok(Place::Entry {
            parent,
            name: (*name).to_string(),
        })
    }

    /// Resolves an inode reference to an existing inode of this shard (final
    /// symlink not followed); a graft point or a foreign id is `CrossShard`.
    pub(crate) fn inode(&self, inode: &InodeRef) -> Result<InodeId, FsError> {
        match inode {
            InodeRef::Id(id) => self.record(*id).map(|record| record.attr.inode),
            InodeRef::Path(path) => match self.place_path(path)? {
                Place::Root => Ok(self.root()),
                Place::Entry { parent, name } => match self.child(parent, &name) {
                    Some(child) if self.is_foreign(child) => Err(self.cross_shard(child.shard())),
                    Some(child) => Ok(child),
                    None => Err(FsError::NotFound(path.clone())),
                },
            },
        }
    }

    /// Walks `components` from `start`, each of which must resolve to a
    /// directory, following symlinks. `path` is only for error messages.
    pub(crate) fn walk_dirs(
        &self,
        start: InodeId,
        components: &[&str],
        path: &str,
    ) -> Result<InodeId, FsError> {
        let mut hops = 0;
        self.walk_dirs_counting(start, components, path, &mut hops)
    }

    /// [`Holt::walk_dirs`] with a caller-owned symlink hop counter, so that a
    /// caller walking one path in steps (mkdir -p) shares one budget.
    pub(crate) fn walk_dirs_counting(
        &self,
        start: InodeId,
        components: &[&str],
        path: &str,
        hops: &mut u32,
    ) -> Result<InodeId, FsError> {
        // A stack of components still to resolve, next on top. A symlink's
        // target is pushed in front of the rest, which handles nested links
        // without recursion.
        let mut pending: Vec<&str> = components.iter().rev().copied().collect();
        let mut dir = start;
        // The directories walked so far as a path, while that is simply the
        // path's own prefix (from the root, no `..`, no symlink): an error
        // then names the first missing directory.
        let mut walked = (start == self.root()).then(String::new);
        while let Some(component) = pending.pop() {
            match component {
                "" | "." => continue,
                ".." => {
                    dir = self.parent_of(dir);
                    walked = None;
                    continue;
                }
                _ => {}
            }
            let Some(child) = self.child(dir, component) else {
                let missing = match &walked {
                    Some(prefix) => format!("{prefix}/{component}"),
                    None => preview(component),
                };
                return Err(FsError::NotFound(format!(
                    "{path} (directory {missing} does not exist)"
                )));
            };
            if let Some(prefix) = walked.as_mut() {
                prefix.push('/');
                prefix.push_str(component);
            }
            let record = self.record(child)?;
            match record.attr.file_type {
                FileType::Directory => dir = child,
                FileType::File => return Err(FsError::NotADirectory(path.to_string())),
                FileType::Symlink => {
                    walked = None;
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return Err(FsError::Loop(path.to_string()));
                    }
                    let target = record.extras.symlink_target().unwrap_or("");
                    if target.starts_with('/') {
                        dir = self.root();
                    }
                    pending.extend(target.split('/').rev());
                }
            }
        }
        Ok(dir)
    }
}

/// A short description of an entry reference for error messages.
pub(crate) fn describe_entry(at: &EntryRef) -> String {
    match at {
        EntryRef::Path(path) => path.clone(),
        EntryRef::Child { parent, name } => format!("{} in {parent}", preview(name)),
    }
}

/// A short description of an inode reference for error messages.
pub(crate) fn describe_inode(inode: &InodeRef) -> String {
    match inode {
        InodeRef::Path(path) => path.clone(),
        InodeRef::Id(id) => format!("inode {id}"),
    }
}
