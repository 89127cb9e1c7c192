//! The mutations, one function per [`crate::Op`].
//!
//! Each function first resolves and checks everything that can fail and
//! only then writes, so an error never leaves a half-applied operation
//! behind. The writes themselves cannot fail: helpers that touch an inode
//! after the checks skip silently if it is (impossibly) absent rather than
//! return an error in the middle of a mutation.

use super::resolve::{describe_entry, describe_inode, Place};
use super::{Applied, Holt, InodeRecord, Outcome, Owner, Stamp};
use crate::command::{EntryRef, InodeRef, RenameMode, SetAttr, XattrFlag};
use crate::error::FsError;
use crate::path::split_path;
use crate::types::{Attr, FileType, Generation, InodeId, ShardId};

/// Permission bits kept in `Attr::mode`; the file type lives elsewhere.
pub(super) const MODE_MASK: u32 = 0o7777;

/// Everything needed to create an inode besides its place and stamp.
struct NewInode {
    file_type: FileType,
    owner: Owner,
    size: u64,
    symlink_target: Option<String>,
}

impl NewInode {
    fn directory(owner: Owner) -> NewInode {
        NewInode {
            file_type: FileType::Directory,
            owner,
            size: 0,
            symlink_target: None,
        }
    }

    fn file(owner: Owner) -> NewInode {
        NewInode {
            file_type: FileType::File,
            owner,
            size: 0,
            symlink_target: None,
        }
    }

    fn symlink(target: &str, uid: u32, gid: u32) -> NewInode {
        NewInode {
            file_type: FileType::Symlink,
            owner: Owner {
                mode: 0o777,
                uid,
                gid,
            },
            size: target.len() as u64,
            symlink_target: Some(target.to_string()),
        }
    }
}

/// Splits a place into `(directory, name)`, or fails with `at_root` for `/`,
/// which has no entry of its own and so needs a per-operation answer.
pub(super) fn entry_of(
    place: Place,
    at_root: impl FnOnce() -> FsError,
) -> Result<(InodeId, String), FsError> {
    match place {
        Place::Root => Err(at_root()),
        Place::Entry { parent, name } => Ok((parent, name)),
    }
}

/// A checked rename, ready to write.
struct Move {
    source: InodeId,
    source_is_dir: bool,
    from: (InodeId, String),
    to: (InodeId, String),
    /// The inode currently at `to`, which the move replaces.
    replaced: Option<InodeId>,
}

fn root_exists() -> FsError {
    FsError::AlreadyExists("/".into())
}

impl Holt {
    pub(super) fn mkdir(&mut self, stamp: Stamp, at: &EntryRef, owner: Owner) -> Outcome {
        let (parent, name) = entry_of(self.place(at)?, root_exists)?;
        self.ensure_vacant(parent, &name, at)?;
        let attr = self.add_inode(stamp, parent, &name, NewInode::directory(owner))?;
        Ok(Applied::Attr(attr))
    }

    /// `mkdir -p`: creates missing ancestors too, and an existing directory
    /// at the path is success. Intermediate symlinks are followed as in any
    /// path; a symlink as the final component is an existing non-directory.
    pub(super) fn mkdir_parents(&mut self, stamp: Stamp, at: &EntryRef, owner: Owner) -> Outcome {
        let EntryRef::Path(path) = at else {
            return Err(FsError::InvalidArgument(
                "mkdir with parents needs a path".into(),
            ));
        };
        let components = split_path(path)?;
        let mut dir = self.root();
        let mut hops = 0;
        for (position, name) in components.iter().enumerate() {
            let Some(existing) = self.child(dir, name) else {
                let missing = components.get(position..).unwrap_or_default();
                return self.create_dirs(stamp, dir, missing, owner);
            };
            if position + 1 == components.len() {
                let record = self.record(existing)?;
                if record.attr.file_type != FileType::Directory {
                    return Err(FsError::AlreadyExists(path.clone()));
                }
                return Ok(Applied::Attr(record.attr.clone()));
            }
            dir = self.walk_dirs_counting(dir, &[name], path, &mut hops)?;
        }
        // Only `/` gets here: the root always exists.
        Ok(Applied::Attr(self.record(dir)?.attr.clone()))
    }

    /// Creates the chain `dir/names[0]/names[1]/...`, all or nothing.
    fn create_dirs(
        &mut self,
        stamp: Stamp,
        mut dir: InodeId,
        names: &[&str],
        owner: Owner,
    ) -> Outcome {
        self.ensure_space(names.len() as u64)?;
        let mut last = None;
        for name in names {
            let attr = self.add_inode(stamp, dir, name, NewInode::directory(owner))?;
            dir = attr.inode;
            last = Some(attr);
        }
        last.map(Applied::Attr)
            .ok_or_else(|| FsError::InvalidArgument("no directory to create".into()))
    }

    pub(super) fn create(&mut self, stamp: Stamp, at: &EntryRef, owner: Owner) -> Outcome {
        let (parent, name) = entry_of(self.place(at)?, root_exists)?;
        self.ensure_vacant(parent, &name, at)?;
        let attr = self.add_inode(stamp, parent, &name, NewInode::file(owner))?;
        Ok(Applied::Attr(attr))
    }

    pub(super) fn symlink(
        &mut self,
        stamp: Stamp,
        at: &EntryRef,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> Outcome {
        let (parent, name) = entry_of(self.place(at)?, root_exists)?;
        self.ensure_vacant(parent, &name, at)?;
        let attr = self.add_inode(stamp, parent, &name, NewInode::symlink(target, uid, gid))?;
        Ok(Applied::Attr(attr))
    }

    pub(super) fn link(&mut self, stamp: Stamp, inode: &InodeRef, at: &EntryRef) -> Outcome {
        let source = self.inode(inode)?;
        let source_attr = &self.record(source)?.attr;
        if source_attr.file_type == FileType::Directory {
            return Err(FsError::NotPermitted(format!(
                "cannot hard link directory {}",
                describe_inode(inode)
            )));
        }
        if source_attr.nlink == u32::MAX {
            return Err(FsError::NotPermitted(format!(
                "too many links to {}",
                describe_inode(inode)
            )));
        }
        let (parent, name) = entry_of(self.place(at)?, root_exists)?;
        self.ensure_vacant(parent, &name, at)?;

        self.put_entry(parent, name, source);
        self.update_attr(source, |attr| {
            attr.nlink = attr.nlink.saturating_add(1);
            touch_change(attr, stamp);
        });
        self.touch_dir(parent, stamp);
        Ok(Applied::Attr(self.record(source)?.attr.clone()))
    }

    pub(super) fn unlink(&mut self, stamp: Stamp, at: &EntryRef) -> Outcome {
        let (parent, name) = entry_of(self.place(at)?, || FsError::IsADirectory("/".into()))?;
        let target = self.existing_child(parent, &name, at)?;
        self.refuse_graft_point(target, || describe_entry(at))?;
        if self.record(target)?.attr.file_type == FileType::Directory {
            return Err(FsError::IsADirectory(describe_entry(at)));
        }

        self.remove_entry(parent, &name);
        self.drop_link(target, stamp);
        self.touch_dir(parent, stamp);
        Ok(Applied::Done)
    }

    /// Removes an empty directory. The root cannot be removed: `NotPermitted`.
    pub(super) fn rmdir(&mut self, stamp: Stamp, at: &EntryRef) -> Outcome {
        let (parent, name) = entry_of(self.place(at)?, || {
            FsError::NotPermitted("cannot remove the root directory".into())
        })?;
        let target = self.existing_child(parent, &name, at)?;
        self.refuse_graft_point(target, || describe_entry(at))?;
        if self.record(target)?.attr.file_type != FileType::Directory {
            return Err(FsError::NotADirectory(describe_entry(at)));
        }
        if self.has_children(target) {
            return Err(FsError::NotEmpty(describe_entry(at)));
        }

        self.remove_entry(parent, &name);
        self.inodes.remove(&target);
        self.update_attr(parent, |attr| attr.nlink = attr.nlink.saturating_sub(1));
        self.touch_dir(parent, stamp);
        Ok(Applied::Done)
    }

    /// `rename(2)` / `renameat2(RENAME_NOREPLACE)`. Checks, in order: the
    /// source exists and is not the root; the destination is not the root;
    /// a directory is not moved into itself; same entry → no-op; an existing
    /// destination is refused (NoReplace), is the same inode (no-op), or is
    /// compatible with the source (Replace).
    ///
    /// Grafts: moving a graft point, or a directory with one below it, and
    /// replacing a graft point are `Busy` (a `NoReplace` onto one is
    /// `AlreadyExists`, as for any existing name); a path through a graft
    /// is `CrossShard`.
    pub(super) fn rename(
        &mut self,
        stamp: Stamp,
        from: &EntryRef,
        to: &EntryRef,
        mode: RenameMode,
    ) -> Outcome {
        let (from_parent, from_name) = entry_of(self.place(from)?, || {
            FsError::InvalidArgument("cannot rename the root directory".into())
        })?;
        let source = self.existing_child(from_parent, &from_name, from)?;
        self.refuse_graft_point(source, || describe_entry(from))?;
        let (to_parent, to_name) = entry_of(self.place(to)?, || {
            FsError::InvalidArgument("cannot rename onto the root directory".into())
        })?;
        let source_is_dir = self.record(source)?.attr.file_type == FileType::Directory;
        if source_is_dir {
            if let Some((shard, graft)) = self.graft_within(source) {
                return Err(FsError::Busy(format!(
                    "{} holds the graft point {} to {shard}; grafted subtrees cannot move",
                    describe_entry(from),
                    graft.path
                )));
            }
        }
        if source_is_dir && self.is_within(to_parent, source) {
            return Err(FsError::InvalidArgument(format!(
                "cannot move directory {} into itself ({})",
                describe_entry(from),
                describe_entry(to)
            )));
        }
        if from_parent == to_parent && from_name == to_name {
            return Ok(Applied::Done);
        }
        let replaced = self.child(to_parent, &to_name);
        if let Some(target) = replaced {
            if mode == RenameMode::NoReplace {
                return Err(FsError::AlreadyExists(describe_entry(to)));
            }
            if target == source {
                // Two names of one inode: POSIX says rename does nothing.
                return Ok(Applied::Done);
            }
            self.refuse_graft_point(target, || describe_entry(to))?;
            self.check_replaceable(source_is_dir, target, to)?;
        }

        self.commit_move(
            stamp,
            Move {
                source,
                source_is_dir,
                from: (from_parent, from_name),
                to: (to_parent, to_name),
                replaced,
            },
        );
        Ok(Applied::Done)
    }

    /// The write half of a rename whose checks all passed.
    fn commit_move(&mut self, stamp: Stamp, change: Move) {
        let Move {
            source,
            source_is_dir,
            from: (from_parent, from_name),
            to: (to_parent, to_name),
            replaced,
        } = change;
        if let Some(target) = replaced {
            self.remove_entry(to_parent, &to_name);
            self.drop_replaced(target, to_parent, stamp);
        }
        self.remove_entry(from_parent, &from_name);
        self.put_entry(to_parent, to_name, source);
        if source_is_dir && from_parent != to_parent {
            // The directory's `..` moves from one parent to the other.
            self.update_attr(from_parent, |attr| {
                attr.nlink = attr.nlink.saturating_sub(1)
            });
            self.update_attr(to_parent, |attr| attr.nlink = attr.nlink.saturating_add(1));
            // (Its parent is its entry's directory: moved with the entry.)
        }
        self.update_attr(source, |attr| touch_change(attr, stamp));
        self.touch_dir(from_parent, stamp);
        self.touch_dir(to_parent, stamp);
    }

    /// Whether `source` may replace the existing `target` (POSIX rules).
    fn check_replaceable(
        &self,
        source_is_dir: bool,
        target: InodeId,
        to: &EntryRef,
    ) -> Result<(), FsError> {
        let target_is_dir = self.record(target)?.attr.file_type == FileType::Directory;
        match (source_is_dir, target_is_dir) {
            (true, false) => Err(FsError::NotADirectory(describe_entry(to))),
            (false, true) => Err(FsError::IsADirectory(describe_entry(to))),
            (true, true) if self.has_children(target) => Err(FsError::NotEmpty(describe_entry(to))),
            _ => Ok(()),
        }
    }

    /// Drops the inode a rename replaced (its entry is already gone).
    fn drop_replaced(&mut self, target: InodeId, parent: InodeId, stamp: Stamp) {
        let is_dir = self
            .inodes
            .get(&target)
            .is_some_and(|record| record.attr.file_type == FileType::Directory);
        if is_dir {
            self.inodes.remove(&target);
            self.update_attr(parent, |attr| attr.nlink = attr.nlink.saturating_sub(1));
        } else {
            self.drop_link(target, stamp);
        }
    }

    pub(super) fn set_attr(&mut self, stamp: Stamp, inode: &InodeRef, set: &SetAttr) -> Outcome {
        self.refuse_graft_named(inode)?;
        let id = self.inode(inode)?;
        if let Some(size) = set.size {
            let record = self.record(id)?;
            match record.attr.file_type {
                // An object-backed body is immutable: its blocks and digest
                // describe exactly `size` bytes, so a truncate would make the
                // metadata lie. Setting the current size is a harmless no-op
                // (tools that copy all attributes do it); anything else is
                // refused until object-backed truncation exists.
                FileType::File if record.body.is_some() && record.attr.size != size => {
                    return Err(FsError::InvalidArgument(format!(
                        "size of a published body cannot be changed; publish a new generation ({})",
                        describe_inode(inode)
                    )))
                }
                FileType::File => {}
                FileType::Directory => return Err(FsError::IsADirectory(describe_inode(inode))),
                FileType::Symlink => {
                    return Err(FsError::InvalidArgument(format!(
                        "cannot set the size of symlink {}",
                        describe_inode(inode)
                    )))
                }
            }
        }

        self.update_attr(id, |attr| {
            if let Some(mode) = set.mode {
                attr.mode = mode & MODE_MASK;
            }
            if let Some(uid) = set.uid {
                attr.uid = uid;
            }
            if let Some(gid) = set.gid {
                attr.gid = gid;
            }
            if let Some(size) = set.size {
                attr.size = size;
            }
            if let Some(mtime_ns) = set.mtime_ns {
                attr.mtime_ns = mtime_ns;
            }
            touch_change(attr, stamp);
        });
        Ok(Applied::Attr(self.record(id)?.attr.clone()))
    }

    pub(super) fn set_xattr(
        &mut self,
        stamp: Stamp,
        inode: &InodeRef,
        name: &str,
        value: &[u8],
        flag: XattrFlag,
    ) -> Outcome {
        self.refuse_graft_named(inode)?;
        let id = self.inode(inode)?;
        let present = self.record(id)?.extras.has_xattr(name);
        match (flag, present) {
            (XattrFlag::Create, true) => {
                return Err(FsError::AlreadyExists(format!(
                    "xattr {name:?} on {}",
                    describe_inode(inode)
                )))
            }
            (XattrFlag::Replace, false) => {
                return Err(FsError::NoData(format!(
                    "xattr {name:?} on {}",
                    describe_inode(inode)
                )))
            }
            _ => {}
        }

        if let Some(record) = self.record_mut(id) {
            record.extras.set_xattr(name.to_string(), value.to_vec());
            touch_change(&mut record.attr, stamp);
        }
        Ok(Applied::Done)
    }

    pub(super) fn remove_xattr(&mut self, stamp: Stamp, inode: &InodeRef, name: &str) -> Outcome {
        self.refuse_graft_named(inode)?;
        let id = self.inode(inode)?;
        if !self.record(id)?.extras.has_xattr(name) {
            return Err(FsError::NoData(format!(
                "xattr {name:?} on {}",
                describe_inode(inode)
            )));
        }

        if let Some(record) = self.record_mut(id) {
            record.extras.remove_xattr(name);
            touch_change(&mut record.attr, stamp);
        }
        Ok(Applied::Done)
    }

    // ---- helpers -------------------------------------------------------

    /// `Busy` if the entry child `target` is a graft point.
    fn refuse_graft_point(
        &self,
        target: InodeId,
        what: impl FnOnce() -> String,
    ) -> Result<(), FsError> {
        if self.is_foreign(target) {
            return Err(graft_busy(what(), target.shard()));
        }
        Ok(())
    }

    /// `Busy` if `inode` is a path naming a graft point: its attributes
    /// belong to the child shard's root and cannot be changed from here.
    fn refuse_graft_named(&self, inode: &InodeRef) -> Result<(), FsError> {
        match self.graft_named(inode) {
            Some(shard) => Err(graft_busy(describe_inode(inode), shard)),
            None => Ok(()),
        }
    }

    pub(super) fn ensure_vacant(
        &self,
        parent: InodeId,
        name: &str,
        at: &EntryRef,
    ) -> Result<(), FsError> {
        match self.child(parent, name) {
            Some(_) => Err(FsError::AlreadyExists(describe_entry(at))),
            None => Ok(()),
        }
    }

    pub(super) fn existing_child(
        &self,
        parent: InodeId,
        name: &str,
        at: &EntryRef,
    ) -> Result<InodeId, FsError> {
        self.child(parent, name)
            .ok_or_else(|| FsError::NotFound(describe_entry(at)))
    }

    /// Fails with `NoSpace` unless `count` more inode numbers are available.
    pub(super) fn ensure_space(&self, count: u64) -> Result<(), FsError> {
        let available = (InodeId::MAX_LOCAL + 1).saturating_sub(self.next_local);
        if count > available {
            return Err(FsError::NoSpace(format!(
                "shard {} has run out of inode numbers",
                self.shard
            )));
        }
        Ok(())
    }

    /// Allocates an inode and links it as `parent/name` (which the caller
    /// has checked is vacant). Fails only with `NoSpace`, before any write.
    fn add_inode(
        &mut self,
        stamp: Stamp,
        parent: InodeId,
        name: &str,
        new: NewInode,
    ) -> Result<Attr, FsError> {
        self.ensure_space(1)?;
        let id = InodeId::compose(self.shard, self.next_local);
        self.next_local += 1;
        let is_dir = new.file_type == FileType::Directory;
        let attr = Attr {
            inode: id,
            file_type: new.file_type,
            mode: new.owner.mode & MODE_MASK,
            uid: new.owner.uid,
            gid: new.owner.gid,
            nlink: if is_dir { 2 } else { 1 },
            size: new.size,
            generation: Generation(0),
            mtime_ns: stamp.time_ns,
            ctime_ns: stamp.time_ns,
            version: stamp.index,
        };
        let record = InodeRecord {
            attr: attr.clone(),
            extras: super::Extras::symlink(new.symlink_target),
            body: None,
            link: None,
        };
        self.inodes.insert(id, record);
        self.put_entry(parent, name.to_string(), id);
        if is_dir {
            // The new directory's `..` is one more link to the parent.
            self.update_attr(parent, |attr| attr.nlink = attr.nlink.saturating_add(1));
        }
        self.touch_dir(parent, stamp);
        Ok(attr)
    }

    /// One name of a non-directory is gone: drop a link, and the inode with
    /// its last link. A body leaves with its inode: its blocks are queued
    /// for GC in the same command, so no block is ever unreferenced and
    /// unqueued. While another hard link remains the body is still live.
    fn drop_link(&mut self, id: InodeId, stamp: Stamp) {
        let Some(nlink) = self.inodes.get(&id).map(|record| record.attr.nlink) else {
            return;
        };
        if nlink <= 1 {
            if let Some(record) = self.inodes.remove(&id) {
                self.drop_fields(id);
                self.retire_blocks(id, record.body(), &Default::default(), stamp);
            }
        } else if let Some(record) = self.record_mut(id) {
            record.attr.nlink = nlink - 1;
            touch_change(&mut record.attr, stamp);
        }
    }

    pub(super) fn update_attr(&mut self, id: InodeId, change: impl FnOnce(&mut Attr)) {
        if let Some(record) = self.record_mut(id) {
            change(&mut record.attr);
        }
    }

    /// A directory's entries changed: mtime and ctime move, version too.
    pub(super) fn touch_dir(&mut self, dir: InodeId, stamp: Stamp) {
        self.update_attr(dir, |attr| {
            attr.mtime_ns = stamp.time_ns;
            touch_change(attr, stamp);
        });
    }
}

fn graft_busy(what: String, shard: ShardId) -> FsError {
    FsError::Busy(format!("{what} is the graft point of {shard}"))
}

/// An inode's metadata changed: ctime and version move.
pub(super) fn touch_change(attr: &mut Attr, stamp: Stamp) {
    attr.ctime_ns = stamp.time_ns;
    attr.version = stamp.index;
}
