//! Graft points: `CreateGraft`, `RemoveGraft`, the `Grafts` query, and the
//! canonical path of a directory (which graft points record).
//!
//! A graft entry lives in `dentries` like any other, with the child
//! shard's root as its child and no inode record; the registry
//! (`Namespace::grafts`) indexes those entries by child shard. Both change
//! together here and nowhere else. See [`crate::graft`] for the rules.

use super::ops::entry_of;
use super::resolve::describe_entry;
use super::{Applied, Holt, Namespace, Outcome, Stamp};
use crate::command::EntryRef;
use crate::error::FsError;
use crate::graft::{placeholder_attr, GraftInfo, GraftPoint};
use crate::types::{InodeId, ShardId};

impl Holt {
    /// `CreateGraft`: checks, in order: `at` is a vacant name in an
    /// existing directory of this shard (`/` exists: `AlreadyExists`);
    /// `shard` is not this shard (`InvalidArgument`); `shard` is not
    /// grafted elsewhere in this shard (`AlreadyExists`, naming where).
    pub(super) fn create_graft(&mut self, stamp: Stamp, at: &EntryRef, shard: ShardId) -> Outcome {
        let (parent, name) = entry_of(self.place(at)?, || FsError::AlreadyExists("/".into()))?;
        self.ensure_vacant(parent, &name, at)?;
        if shard == self.shard {
            return Err(FsError::InvalidArgument(format!(
                "{shard} cannot be grafted into itself ({})",
                describe_entry(at)
            )));
        }
        if let Some(existing) = self.grafts.get(&shard) {
            return Err(FsError::AlreadyExists(format!(
                "{shard} is already grafted at {}",
                existing.path
            )));
        }
        let path = self.entry_path_of(parent, &name).ok_or_else(|| {
            FsError::NotFound(format!("directory {parent} is not reachable from the root"))
        })?;

        self.put_entry(parent, name.clone(), InodeId::root(shard));
        self.grafts.insert(shard, GraftPoint { parent, name, path });
        // Seen from the parent, a graft point is a subdirectory: it counts
        // in the parent's link count like one (`find` relies on it).
        self.update_attr(parent, |attr| attr.nlink = attr.nlink.saturating_add(1));
        self.touch_dir(parent, stamp);
        Ok(Applied::Attr(placeholder_attr(shard)))
    }

    /// `RemoveGraft`: `at` must hold a graft point to exactly `shard`.
    /// Vacant: `NotFound`; anything else there (`/`, a local entry, a
    /// graft to another shard): `InvalidArgument`.
    pub(super) fn remove_graft(&mut self, stamp: Stamp, at: &EntryRef, shard: ShardId) -> Outcome {
        let (parent, name) = entry_of(self.place(at)?, || {
            FsError::InvalidArgument("/ is not a graft point".into())
        })?;
        let child = self.existing_child(parent, &name, at)?;
        if child != InodeId::root(shard) || shard == self.shard {
            let what = if self.is_foreign(child) {
                format!("the graft point of {}", child.shard())
            } else {
                "not a graft point".to_string()
            };
            return Err(FsError::InvalidArgument(format!(
                "{} is {what}, not a graft of {shard}",
                describe_entry(at)
            )));
        }

        self.remove_entry(parent, &name);
        self.grafts.remove(&shard);
        self.update_attr(parent, |attr| attr.nlink = attr.nlink.saturating_sub(1));
        self.touch_dir(parent, stamp);
        Ok(Applied::Done)
    }

    /// Every graft point, in child-shard order.
    pub fn grafts(&self) -> Vec<GraftInfo> {
        self.grafts
            .iter()
            .map(|(shard, graft)| GraftInfo {
                shard: *shard,
                path: graft.path.clone(),
                parent: graft.parent,
                name: graft.name.clone(),
            })
            .collect()
    }
}

impl Namespace {
    /// The canonical path of `name` in directory `parent`.
    pub(crate) fn entry_path_of(&self, parent: InodeId, name: &str) -> Option<String> {
        let dir = self.dir_path(parent)?;
        Some(if dir == "/" {
            format!("/{name}")
        } else {
            format!("{dir}/{name}")
        })
    }

    /// The registry these dentries imply: every entry whose child is
    /// another shard's root, with its canonical path. `None` if an entry
    /// points into another shard at anything but its root, if two entries
    /// graft one shard, or if a graft point is unreachable. A full scan:
    /// for the structural checks only.
    pub(crate) fn derived_grafts(&self) -> Result<Vec<(ShardId, GraftPoint)>, String> {
        let mut found: std::collections::BTreeMap<ShardId, GraftPoint> = Default::default();
        for ((parent, name), child) in &self.dentries {
            if !self.is_foreign(*child) {
                continue;
            }
            let shard = child.shard();
            if *child != InodeId::root(shard) {
                return Err(format!(
                    "entry {name:?} in {parent} points into {shard} below its root"
                ));
            }
            let path = self
                .entry_path_of(*parent, name)
                .ok_or_else(|| format!("graft point {name:?} in {parent} is unreachable"))?;
            let point = GraftPoint {
                parent: *parent,
                name: name.to_string(),
                path,
            };
            if found.insert(shard, point).is_some() {
                return Err(format!("{shard} is grafted twice"));
            }
        }
        Ok(found.into_iter().collect())
    }
}
