//! The derived maps behind indexed queries, and every write that keeps
//! them in step with the namespace (see [`crate::fields`]).
//!
//! - `fields`: a file's field set, replaced with its body (replicated,
//!   part of the image);
//! - `index`: `(field, key, inode)` for every value of every field set;
//! - `unindexed`: files whose body came without a field set;
//! - the reverse links, the way from an inode back to its paths: an inode
//!   with exactly one local entry (every directory, nearly every file)
//!   keeps it in its record (`InodeRecord::link`, a word or three in an
//!   allocation it has anyway); the entries of inodes with several (hard
//!   links) are in `links`, `(child, directory, name)`. Which is which is
//!   canonical, so replicas and decoded images agree on it.
//!
//! The last three are derived: rebuilt from the first one, `inodes` and
//! `dentries` when an image is decoded, and checked against a rebuild by
//! the invariant checker. Every entry write of the engine goes through
//! [`Namespace::put_entry`] / [`Namespace::remove_entry`], and every body
//! write through [`Namespace::set_fields`] / [`Namespace::drop_fields`], so
//! no operation can forget one of them.

use std::collections::BTreeMap;

use imbl::OrdSet;

use super::{InodeSet, Name, Namespace};
use crate::body::BodySummary;
use crate::error::FsError;
use crate::fields::{index_entries, FieldSet, IndexKey, IndexRange};
use crate::query::{IndexedHit, QueryResult, MAX_INDEXED_FIELDS, MAX_INDEXED_PAGE, MAX_PAGE_BYTES};
use crate::types::{InodeId, ShardId};

/// Index entries one page may step over (matches outside the directory
/// included), so a page costs a bounded amount of work.
const MAX_INDEX_STEPS: usize = 16_384;

/// Unindexed bodies a first page looks at to tell whether one lies below
/// the directory; past that it says "unindexed" without knowing, which
/// only costs the reader a walk (see `unindexed` in `Query::FindIndexed`).
const MAX_UNINDEXED_CHECKS: usize = 1024;

/// The derived maps, built from scratch (decode, and the invariant check).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Derived {
    pub(crate) index: OrdSet<(String, IndexKey, InodeId)>,
    pub(crate) unindexed: InodeSet,
    pub(crate) links: OrdSet<(InodeId, InodeId, Name)>,
    /// The records' own links, in inode order.
    pub(crate) single_links: SingleLinks,
}

/// Records' own links, `(inode, (directory, name))`, in inode order.
pub(crate) type SingleLinks = Vec<(InodeId, (InodeId, Name))>;
/// The `links` set: `(child, directory, name)`.
pub(crate) type LinkSet = OrdSet<(InodeId, InodeId, Name)>;

/// The reverse links of `dentries` in canonical form: the one entry of
/// each local child that has exactly one and a record (`has_record`), in
/// child order, for the records; every other local entry as
/// `(child, directory, name)` for `links`.
pub(crate) fn reverse_links<'a>(
    shard: ShardId,
    dentries: impl IntoIterator<Item = (&'a (InodeId, Name), &'a InodeId)>,
    has_record: impl Fn(&InodeId) -> bool,
) -> (SingleLinks, LinkSet) {
    let mut all: Vec<(InodeId, InodeId, Name)> = dentries
        .into_iter()
        .filter(|(_, child)| child.shard() == shard)
        .map(|((parent, name), child)| (*child, *parent, name.clone()))
        .collect();
    all.sort();
    let mut singles = Vec::new();
    let mut links = OrdSet::new();
    for run in all.chunk_by(|a, b| a.0 == b.0) {
        match run {
            [(child, parent, name)] if has_record(child) => {
                singles.push((*child, (*parent, name.clone())));
            }
            _ => links.extend(run.iter().cloned()),
        }
    }
    (singles, links)
}

impl Namespace {
    /// Adds the entry `name` in `parent`.
    pub(crate) fn put_entry(&mut self, parent: InodeId, name: impl Into<Name>, child: InodeId) {
        let name = name.into();
        if !self.is_foreign(child) {
            let mut entries = self.local_entries(child);
            entries.push((parent, name.clone()));
            self.set_links(child, entries);
        }
        self.dentries.insert((parent, name), child);
    }

    /// Removes the entry `name` in `parent`, if any.
    pub(crate) fn remove_entry(&mut self, parent: InodeId, name: &str) {
        let key = (parent, Name::from(name));
        if let Some(child) = self.dentries.remove(&key) {
            if !self.is_foreign(child) {
                let mut entries = self.local_entries(child);
                entries.retain(|entry| *entry != key);
                self.set_links(child, entries);
            }
        }
    }

    /// Every local entry of `inode`, as its reverse links record them.
    fn local_entries(&self, inode: InodeId) -> Vec<(InodeId, Name)> {
        match self
            .inodes
            .get(&inode)
            .and_then(|record| record.link.clone())
        {
            Some(only) => vec![only],
            None => self
                .links
                .range((inode, InodeId(0), Name::empty())..)
                .take_while(|(child, _, _)| *child == inode)
                .map(|(_, parent, name)| (*parent, name.clone()))
                .collect(),
        }
    }

    /// Records that `inode`'s local entries are now `entries`, in canonical
    /// form: one entry in the record, several (or any without a record) in
    /// `links`.
    fn set_links(&mut self, inode: InodeId, entries: Vec<(InodeId, Name)>) {
        let in_links: Vec<(InodeId, Name)> = self
            .links
            .range((inode, InodeId(0), Name::empty())..)
            .take_while(|(child, _, _)| *child == inode)
            .map(|(_, parent, name)| (*parent, name.clone()))
            .collect();
        for (parent, name) in in_links {
            self.links.remove(&(inode, parent, name));
        }
        let has_record = self.inodes.contains_key(&inode);
        let single = match &entries[..] {
            [only] if has_record => Some(only.clone()),
            _ => None,
        };
        if single.is_none() {
            for (parent, name) in entries {
                self.links.insert((inode, parent, name));
            }
        }
        let changed = self
            .inodes
            .get(&inode)
            .is_some_and(|record| record.link != single);
        if changed {
            if let Some(record) = self.record_mut(inode) {
                record.link = single;
            }
        }
    }

    /// A body was published onto `inode`, with `fields` or without
    /// (unindexed). Replaces whatever the previous body had.
    pub(crate) fn set_fields(&mut self, inode: InodeId, fields: Option<FieldSet>) {
        self.drop_fields(inode);
        match fields {
            Some(fields) => {
                for (name, key) in index_entries(&fields) {
                    self.index.insert((name, key, inode));
                }
                self.fields.insert(inode, fields);
            }
            None => {
                self.unindexed.insert(inode);
            }
        }
    }

    /// The file `inode` is gone (or lost its body): forget its fields.
    pub(crate) fn drop_fields(&mut self, inode: InodeId) {
        self.unindexed.remove(inode);
        if let Some(old) = self.fields.remove(&inode) {
            for (name, key) in index_entries(&old) {
                self.index.remove(&(name, key, inode));
            }
        }
    }

    /// The derived maps as they should be for this namespace.
    pub(crate) fn derive(&self) -> Derived {
        let (index, unindexed) = self.field_index();
        let (single_links, links) = reverse_links(self.shard, self.dentries.iter(), |id| {
            self.inodes.contains_key(id)
        });
        Derived {
            index,
            unindexed,
            links,
            single_links,
        }
    }

    /// The field index and the unindexed set, built from the field sets
    /// and the bodies.
    fn field_index(&self) -> (OrdSet<(String, IndexKey, InodeId)>, InodeSet) {
        let mut index = OrdSet::new();
        for (id, fields) in &self.fields {
            for (name, key) in index_entries(fields) {
                index.insert((name, key, *id));
            }
        }
        let unindexed = self
            .inodes
            .iter()
            .filter(|(id, record)| record.body.is_some() && !self.fields.contains_key(id))
            .map(|(id, _)| id)
            .collect();
        (index, unindexed)
    }

    /// Rebuilds the field index and the unindexed set (after decoding,
    /// whose builder attaches the reverse links itself: see
    /// [`reverse_links`]).
    pub(crate) fn rebuild_field_index(&mut self) {
        (self.index, self.unindexed) = self.field_index();
    }

    /// The derived maps as they are.
    pub(crate) fn derived(&self) -> Derived {
        Derived {
            index: self.index.clone(),
            unindexed: self.unindexed.clone(),
            links: self.links.clone(),
            single_links: self
                .inodes
                .iter()
                .filter_map(|(id, record)| record.link.clone().map(|link| (id, link)))
                .collect(),
        }
    }

    /// Every path of `inode` below `dir`, relative to it (`""` for `dir`
    /// itself), found by climbing the reverse links; at most `max`.
    fn paths_below(&self, inode: InodeId, dir: InodeId, max: usize) -> Vec<String> {
        let mut found = Vec::new();
        if inode == dir {
            found.push(String::new());
        }
        for (parent, name) in self.local_entries(inode) {
            if found.len() >= max {
                break;
            }
            if let Some(prefix) = self.dir_path_below(parent, dir) {
                found.push(if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                });
            }
        }
        found
    }

    /// The path of directory `d` relative to `dir`, if `d` is `dir` or
    /// below it. Directories have one name; the climb is bounded by the
    /// namespace's depth (and by its size, should a corrupt state loop).
    pub(super) fn dir_path_below(&self, mut d: InodeId, dir: InodeId) -> Option<String> {
        let mut parts: Vec<&str> = Vec::new();
        let root = InodeId::root(self.shard);
        for _ in 0..=self.inodes.len() {
            if d == dir {
                parts.reverse();
                return Some(parts.join("/"));
            }
            if d == root {
                return None;
            }
            let (parent, name) = self.inodes.get(&d)?.link.as_ref()?;
            parts.push(name.as_str());
            d = *parent;
        }
        None
    }

    /// `Query::FindIndexed`: files below `dir` with a value of `field` in
    /// `range`, in index order after `after`.
    pub(crate) fn find_indexed(
        &self,
        dir: InodeId,
        field: &str,
        range: &IndexRange,
        after: Option<&(IndexKey, InodeId)>,
        limit: u32,
    ) -> Result<QueryResult, FsError> {
        let limit = match limit {
            0 => MAX_INDEXED_PAGE,
            n => n.min(MAX_INDEXED_PAGE),
        } as usize;
        let start = match after {
            Some((key, inode)) => (
                field.to_string(),
                key.clone(),
                InodeId(inode.0.saturating_add(1)),
            ),
            None => match range.start() {
                Some(key) => (field.to_string(), key, InodeId(0)),
                None => (field.to_string(), IndexKey::Bool(false), InodeId(0)),
            },
        };
        let mut hits = Vec::new();
        let mut bytes = 0usize;
        let mut next = None;
        let mut last_inode = None;
        for (steps, (name, key, inode)) in self.index.range(start..).enumerate() {
            if name != field || range.past(key) {
                break;
            }
            if steps >= MAX_INDEX_STEPS || hits.len() >= limit || bytes >= MAX_PAGE_BYTES {
                next = last_inode;
                break;
            }
            last_inode = Some((key.clone(), *inode));
            // A file with several values in the range appears once per
            // value; the reader merges by path.
            if !range.contains(key) {
                continue;
            }
            let Some(record) = self.inodes.get(inode) else {
                continue;
            };
            for path in self.paths_below(*inode, dir, usize::MAX) {
                let body = record.body().map(|b| self.summary(*inode, b));
                bytes += 128 + path.len() + body.as_ref().map_or(0, |b| b.approx_bytes());
                hits.push(IndexedHit {
                    path,
                    attr: record.attr.clone(),
                    body,
                });
            }
        }
        // Only the first page says whether bodies below `dir` escaped the
        // index; it is the reader's cue to fall back to a walk.
        let unindexed = after.is_none()
            && (self.unindexed.len() > MAX_UNINDEXED_CHECKS
                || self
                    .unindexed
                    .iter()
                    .any(|id| !self.paths_below(id, dir, 1).is_empty()));
        Ok(QueryResult::Indexed {
            hits,
            next,
            unindexed,
        })
    }

    /// `Query::IndexedFields`: the distinct field names of the index, found
    /// by skipping from one name to the next (names hold no NUL, so
    /// `name\0` sorts right after every entry of `name`).
    pub(crate) fn indexed_fields(&self) -> QueryResult {
        let mut names: Vec<String> = Vec::new();
        let mut complete = true;
        loop {
            let start = match names.last() {
                None => String::new(),
                Some(last) => format!("{last}\0"),
            };
            let Some((name, _, _)) = self
                .index
                .range((start, IndexKey::Bool(false), InodeId(0))..)
                .next()
            else {
                break;
            };
            if names.len() >= MAX_INDEXED_FIELDS as usize {
                complete = false;
                break;
            }
            names.push(name.clone());
        }
        QueryResult::FieldNames { names, complete }
    }

    /// A body's summary with the file's field set.
    pub(crate) fn summary(&self, inode: InodeId, body: super::BodyRef<'_>) -> BodySummary {
        let mut s = body.summary();
        s.fields = self.fields.get(&inode).cloned();
        s
    }
}

impl Namespace {
    /// Brings derived maps copied from `base` up to date for this
    /// namespace, which differs from `base` only in the entries
    /// `changed_entries` and the inodes (records or field sets)
    /// `changed_inodes`. Costs what changed, not the namespace's size.
    pub(crate) fn patch_derived(
        &mut self,
        base: &Namespace,
        changed_entries: &[(InodeId, Name)],
        mut changed_inodes: Vec<InodeId>,
    ) {
        // Reverse links: every inode whose entries or record changed gets
        // its entries here, which are its entries in `base` less the changed
        // ones it had there, plus the changed ones it has here.
        let mut entries: BTreeMap<InodeId, Vec<(InodeId, Name)>> = BTreeMap::new();
        let entries_of = |entries: &mut BTreeMap<InodeId, Vec<(InodeId, Name)>>, id: InodeId| {
            entries.entry(id).or_insert_with(|| base.local_entries(id));
        };
        for id in &changed_inodes {
            entries_of(&mut entries, *id);
        }
        for key in changed_entries {
            if let Some(child) = base.dentries.get(key) {
                entries_of(&mut entries, *child);
                if let Some(list) = entries.get_mut(child) {
                    list.retain(|entry| entry != key);
                }
            }
        }
        for key in changed_entries {
            if let Some(child) = self.dentries.get(key) {
                entries_of(&mut entries, *child);
                if let Some(list) = entries.get_mut(child) {
                    list.push(key.clone());
                }
            }
        }
        for (id, entries) in entries {
            if !self.is_foreign(id) {
                self.set_links(id, entries);
            }
        }
        changed_inodes.sort();
        changed_inodes.dedup();
        for id in changed_inodes {
            if let Some(old) = base.fields.get(&id) {
                for (name, key) in index_entries(old) {
                    self.index.remove(&(name, key, id));
                }
            }
            if let Some(new) = self.fields.get(&id) {
                for (name, key) in index_entries(new) {
                    self.index.insert((name, key, id));
                }
            }
            let unindexed = self
                .inodes
                .get(&id)
                .is_some_and(|record| record.body.is_some())
                && !self.fields.contains_key(&id);
            if unindexed {
                self.unindexed.insert(id);
            } else {
                self.unindexed.remove(id);
            }
        }
    }
}
