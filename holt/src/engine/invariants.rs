//! Structural invariants of the state, checked on every decoded image.
//!
//! A snapshot that passes its checksum can still describe a nonsensical
//! state (a bug in an older writer, a hand-crafted file). `apply` would not
//! panic on it, but it could misbehave: a cycle of directory parents, an
//! entry pointing at a missing inode, link counts that never reach zero.
//! Refusing such an image at decode time keeps those cases out entirely.
//!
//! The body checks matter most: GC deletes objects on the strength of this
//! state, so an image in which a live key is also queued for deletion, or
//! in which two bodies share a key, must never be loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::{Holt, InodeRecord, Name};
use crate::body::{shard_block_prefix, BlockRef, GcTarget, PublishMode, MAX_STAGED_UPLOADS};
use crate::path::{
    preview, validate_name, validate_symlink_target, validate_xattr_name, validate_xattr_value,
};
use crate::types::{FileType, Generation, InodeId};

impl Holt {
    /// Checks the whole state; the error says which invariant failed.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        self.check_root()?;
        for (id, record) in self.inodes.iter() {
            self.check_inode(id, record)?;
        }
        self.check_dentries()?;
        self.check_link_counts()?;
        self.check_reachable()?;
        self.check_dedupe()?;
        self.check_publish_state()?;
        self.check_grafts()?;
        self.check_fields()?;
        self.check_tokens()?;
        self.check_pins()
    }

    /// The invariant checker for the fuzz targets in `fuzz/`: the
    /// whole state, including every pin's derived maps (as in this
    /// crate's tests).
    #[cfg(feature = "fuzzing")]
    pub fn fuzz_check_invariants(&self) -> Result<(), String> {
        self.check_invariants()
    }

    /// Field sets belong to files with bodies and pass the static checks;
    /// the derived maps (index, unindexed set, reverse links) are exactly
    /// a rebuild. Pins are rebuilt in full only in this crate's tests
    /// (and under the `fuzzing` feature).
    fn check_fields(&self) -> Result<(), String> {
        for (id, fields) in &self.fields {
            let has_body = self
                .inodes
                .get(id)
                .is_some_and(|r| r.attr.file_type == FileType::File && r.body.is_some());
            if !has_body {
                return Err(format!("{id} has a field set but no body"));
            }
            crate::fields::validate_field_set(fields).map_err(|e| format!("{id}: {e}"))?;
        }
        if self.ns.derived() != self.ns.derive() {
            return Err("the field index or reverse links disagree with the state".into());
        }
        if cfg!(any(test, feature = "fuzzing")) {
            for (id, pin) in &self.snapshots {
                if pin.ns.derived() != pin.ns.derive() {
                    return Err(format!("{id}: its derived maps disagree with its state"));
                }
            }
        }
        Ok(())
    }

    /// The graft registry is exactly what the dentries imply (entries
    /// whose child is another shard's root, one per shard, each at its
    /// canonical path). A pin's registry must at least name graft entries
    /// of its own namespace (pins' dentries are not scanned in full).
    fn check_grafts(&self) -> Result<(), String> {
        let derived = self.ns.derived_grafts()?;
        let registered: Vec<_> = self
            .grafts
            .iter()
            .map(|(shard, graft)| (*shard, graft.clone()))
            .collect();
        if derived != registered {
            return Err("the graft registry disagrees with the graft entries".into());
        }
        for (id, pin) in &self.snapshots {
            for (shard, graft) in &pin.ns.grafts {
                let child = pin
                    .ns
                    .dentries
                    .get(&super::EntryProbe(graft.parent, &graft.name));
                if *shard == self.shard || child != Some(&InodeId::root(*shard)) {
                    return Err(format!("{id}: its graft registry names a missing graft"));
                }
            }
        }
        Ok(())
    }

    /// Snapshot pins: ids below the counter and matching their key, the
    /// pinned namespace of this shard, and the subtree's root in it.
    fn check_pins(&self) -> Result<(), String> {
        if self.next_snapshot == 0 {
            return Err("the snapshot counter is 0".into());
        }
        for (id, pin) in &self.snapshots {
            if pin.info.id != *id || id.0 >= self.next_snapshot || id.0 == 0 {
                return Err(format!("{id} is misfiled or not allocated"));
            }
            if pin.ns.shard != self.shard {
                return Err(format!("{id} pins another shard"));
            }
            if !pin.ns.inodes.contains_key(&pin.info.root) {
                return Err(format!(
                    "{id}: its root {} is not in the pin",
                    pin.info.root
                ));
            }
        }
        Ok(())
    }

    fn check_root(&self) -> Result<(), String> {
        let root = self.root();
        let record = self.inodes.get(&root).ok_or("the root inode is missing")?;
        if record.attr.file_type != FileType::Directory || record.parent() != Some(root) {
            return Err("the root is not a self-parented directory".into());
        }
        if self.next_local <= InodeId::ROOT_LOCAL || self.next_local > InodeId::MAX_LOCAL + 1 {
            return Err(format!(
                "next inode number {} is out of range",
                self.next_local
            ));
        }
        Ok(())
    }

    fn check_inode(&self, id: InodeId, record: &InodeRecord) -> Result<(), String> {
        let attr = &record.attr;
        if attr.inode != id || id.shard() != self.shard {
            return Err(format!("inode {id} is filed under the wrong id or shard"));
        }
        if id.local() < InodeId::ROOT_LOCAL || id.local() >= self.next_local {
            return Err(format!("inode {id} was never allocated"));
        }
        if attr.mode > 0o7777 {
            return Err(format!("inode {id} has type bits in its mode"));
        }
        let is_dir = attr.file_type == FileType::Directory;
        if record.parent().is_some() != is_dir {
            return Err(format!("inode {id}: only directories have a parent"));
        }
        match (attr.file_type, record.extras.symlink_target()) {
            (FileType::Symlink, Some(target)) => {
                validate_symlink_target(target).map_err(|e| format!("inode {id}: {e}"))?;
            }
            (FileType::Symlink, None) | (_, Some(_)) => {
                return Err(format!("inode {id}: only symlinks have a target"));
            }
            _ => {}
        }
        for (name, value) in record.extras.xattrs() {
            validate_xattr_name(name)
                .and_then(|()| validate_xattr_value(value))
                .map_err(|e| format!("inode {id}: {e}"))?;
        }
        Ok(())
    }

    fn check_dentries(&self) -> Result<(), String> {
        for ((dir, name), child) in &self.dentries {
            validate_name(name).map_err(|e| format!("entry in {dir}: {e}"))?;
            if self.directory(*dir).is_err() {
                return Err(format!("entry {name:?} is in {dir}, not a directory"));
            }
            if self.is_foreign(*child) {
                // A graft point: no local record (see `check_grafts`).
                continue;
            }
            let record = self
                .inodes
                .get(child)
                .ok_or_else(|| format!("entry {name:?} in {dir} points to missing {child}"))?;
            if *child == self.root() {
                return Err(format!("entry {name:?} in {dir} points to the root"));
            }
            if record.attr.file_type == FileType::Directory && record.parent() != Some(*dir) {
                return Err(format!("directory {child} has the wrong parent"));
            }
        }
        Ok(())
    }

    /// Every `nlink` must equal what the entries imply: names for a
    /// non-directory; 2 plus subdirectories (graft points included) for a
    /// directory, which itself has exactly one name (none for the root).
    fn check_link_counts(&self) -> Result<(), String> {
        let mut names: BTreeMap<InodeId, u64> = BTreeMap::new();
        let mut subdirs: BTreeMap<InodeId, u64> = BTreeMap::new();
        for ((dir, _), child) in &self.dentries {
            *names.entry(*child).or_default() += 1;
            // A graft point counts as a subdirectory of its parent.
            if self.is_foreign(*child) || self.directory(*child).is_ok() {
                *subdirs.entry(*dir).or_default() += 1;
            }
        }
        for (id, record) in self.inodes.iter() {
            let name_count = names.get(&id).copied().unwrap_or(0);
            let (expected_names, expected_nlink) = match record.attr.file_type {
                FileType::Directory => {
                    let own = if id == self.root() { 0 } else { 1 };
                    (own, 2 + subdirs.get(&id).copied().unwrap_or(0))
                }
                _ => (name_count.max(1), name_count),
            };
            if name_count != expected_names || u64::from(record.attr.nlink) != expected_nlink {
                return Err(format!("inode {id} has inconsistent link counts"));
            }
        }
        Ok(())
    }

    /// Every inode hangs off the root (no detached directory cycles).
    fn check_reachable(&self) -> Result<(), String> {
        let root = self.root();
        let mut seen = BTreeSet::from([root]);
        let mut queue = vec![root];
        while let Some(dir) = queue.pop() {
            let children = self
                .dentries
                .range_from(Bound::Included((dir, Name::empty())))
                .take_while(|((parent, _), _)| *parent == dir);
            for (_, child) in children.filter(|(_, child)| !self.is_foreign(**child)) {
                if seen.insert(*child) && self.directory(*child).is_ok() {
                    queue.push(*child);
                }
            }
        }
        if seen.len() != self.inodes.len() {
            return Err(format!(
                "{} inodes are not reachable from the root",
                self.inodes.len().saturating_sub(seen.len())
            ));
        }
        Ok(())
    }

    fn check_dedupe(&self) -> Result<(), String> {
        let ordered: BTreeSet<_> = self.dedupe_order.iter().collect();
        let consistent = ordered.len() == self.dedupe_order.len()
            && ordered.len() == self.dedupe.len()
            && ordered.iter().all(|id| self.dedupe.contains_key(*id));
        if !consistent {
            return Err("the dedupe table and its eviction order disagree".into());
        }
        if self.dedupe.len() > self.dedupe_capacity {
            return Err("the dedupe table exceeds its capacity".into());
        }
        Ok(())
    }
}

impl Holt {
    /// Bodies, staged uploads and the GC queue:
    /// - only files have bodies; a file has a body iff its generation is
    ///   not 0, and the body agrees with the attributes (generation, size)
    ///   and passes the static body checks (sizes add up, limits);
    /// - every generation (live or staged) is allocated and used once, and
    ///   a body's keys carry its generation in the prefix;
    /// - no key is live twice, queued while live, or under the prefix of a
    ///   staged upload or a queued prefix deletion;
    /// - staged uploads name allocated inodes and parents of this shard
    ///   (the parent may since have been removed: the commit re-checks it),
    ///   and a reserved inode has no record and belongs to one upload.
    fn check_publish_state(&self) -> Result<(), String> {
        if self.next_generation == 0 || self.next_upload == 0 || self.next_gc_seq == 0 {
            return Err("a publish counter is 0".into());
        }
        let mut generations = BTreeSet::new();
        let mut live_keys: BTreeSet<String> = BTreeSet::new();
        for (id, record) in self.inodes.iter() {
            let attr = &record.attr;
            let Some(body) = &record.body else {
                if attr.generation != Generation(0) {
                    return Err(format!("inode {id} has a generation but no body"));
                }
                continue;
            };
            if attr.file_type != FileType::File {
                return Err(format!("inode {id}: only files have bodies"));
            }
            let body = body.with(attr.size, attr.generation);
            let blocks = body.validate().map_err(|e| format!("inode {id}: {e}"))?;
            self.check_body(id, body.generation, &blocks, &mut generations)?;
            for block in blocks {
                if live_keys.contains(&block.key) {
                    return Err(format!("block key {:?} is live twice", block.key));
                }
                live_keys.insert(block.key);
            }
        }
        // Is any live key under `prefix`? A range scan of the sorted keys.
        let covers_live = |prefix: &str| {
            live_keys
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .is_some_and(|key| key.starts_with(prefix))
        };

        if self.staged.len() > MAX_STAGED_UPLOADS {
            return Err("too many staged uploads".into());
        }
        let mut reserved = BTreeSet::new();
        for (id, staged) in &self.staged {
            let upload = &staged.upload;
            if upload.id != *id || id.0 == 0 || id.0 >= self.next_upload {
                return Err(format!("{id} is filed wrongly or was never allocated"));
            }
            let allocated =
                |inode: InodeId| inode.shard() == self.shard && inode.local() < self.next_local;
            if !allocated(upload.parent) || !allocated(upload.inode) {
                return Err(format!("{id} names an inode that was never allocated"));
            }
            // A by-inode upload may have no name (see `StagedUpload::parent`).
            let nameless = matches!(upload.mode, PublishMode::Inode { .. })
                && upload.name.is_empty()
                && upload.parent == upload.inode;
            if !nameless {
                validate_name(&upload.name).map_err(|e| format!("{id}: {e}"))?;
            }
            if let PublishMode::Inode { inode, .. } = upload.mode {
                if inode != upload.inode || staged.reserved_inode {
                    return Err(format!("{id}: a by-inode upload names another inode"));
                }
            }
            if upload.file_mode > 0o7777 {
                return Err(format!("{id} has type bits in its file mode"));
            }
            self.check_generation(upload.generation, &mut generations)
                .map_err(|e| format!("{id}: {e}"))?;
            if covers_live(&upload.key_prefix()) {
                return Err(format!("{id}: a live block lies under its prefix"));
            }
            let replace = matches!(upload.mode, PublishMode::Replace { .. });
            if staged.reserved_inode {
                if replace
                    || self.inodes.contains_key(&upload.inode)
                    || !reserved.insert(upload.inode)
                {
                    return Err(format!("{id}: its reserved inode is in use"));
                }
            } else if upload.mode == PublishMode::CreateOnly {
                return Err(format!("{id}: a create-only upload without a reservation"));
            }
        }

        let staged_prefixes: Vec<String> = self
            .staged
            .values()
            .map(|staged| staged.upload.key_prefix())
            .collect();
        for (seq, task) in &self.gc {
            if task.seq != *seq || *seq == 0 || *seq >= self.next_gc_seq {
                return Err(format!(
                    "GC task {seq} is filed wrongly or was never allocated"
                ));
            }
            let live = match &task.target {
                GcTarget::Keys(keys) => keys.iter().any(|key| live_keys.contains(key.as_str())),
                GcTarget::Prefix(prefix) => prefix.is_empty() || covers_live(prefix),
            };
            if live {
                return Err(format!("GC task {seq} would delete a live block"));
            }
            self.check_gc_target(&task.target, &staged_prefixes)
                .map_err(|e| format!("GC task {seq}: {e}"))?;
        }
        Ok(())
    }

    /// A GC target must lie where this shard allocated blocks and will
    /// never allocate again: under `blocks/{shard}/{inode}/{generation}/`
    /// of this shard with an allocated generation (the form and the range
    /// a live body's keys have), and not under a staged upload's prefix
    /// (whose blocks may still become live). A prefix target must end
    /// right after the generation, or it would also cover later
    /// generations (`…/1` covers `…/10/`). Otherwise a later upload's (or
    /// another shard's) blocks could be deleted. Found by the
    /// `state_image` fuzz target.
    fn check_gc_target(&self, target: &GcTarget, staged: &[String]) -> Result<(), String> {
        let place = |key: &str, is_prefix: bool| -> Result<(), String> {
            let outside = || format!("{} is outside this shard's allocated blocks", preview(key));
            let rest = key
                .strip_prefix(shard_block_prefix(self.shard).as_str())
                .ok_or_else(outside)?;
            // `{inode}/{generation}/{rest}`; the inode part is not checked:
            // it only names the upload's file, the generation is what is
            // never reused.
            let mut parts = rest.splitn(3, '/');
            let generation = parts.nth(1).and_then(|g| g.parse::<u64>().ok());
            let tail = parts.next();
            match generation {
                Some(g) if g >= 1 && g < self.next_generation => {}
                _ => return Err(outside()),
            }
            if is_prefix && tail != Some("") {
                return Err(format!("{} is not an upload's prefix", preview(key)));
            }
            let overlaps = |prefix: &String| {
                key.starts_with(prefix.as_str()) || (is_prefix && prefix.starts_with(key))
            };
            if staged.iter().any(overlaps) {
                return Err(format!(
                    "{} overlaps a staged upload's prefix",
                    preview(key)
                ));
            }
            Ok(())
        };
        match target {
            GcTarget::Keys(keys) => keys.iter().try_for_each(|key| place(key, false)),
            GcTarget::Prefix(prefix) => place(prefix, true),
        }
    }

    /// A (validated) body's generation and block keys.
    fn check_body(
        &self,
        id: InodeId,
        generation: Generation,
        blocks: &[BlockRef],
        generations: &mut BTreeSet<Generation>,
    ) -> Result<(), String> {
        self.check_generation(generation, generations)
            .map_err(|e| format!("inode {id}: {e}"))?;
        // `blocks/{shard}/{inode}/{generation}/…`: the inode part may name
        // another file (an upsert), the shard may not; the generation is
        // this body's, or an earlier one's whose blocks it kept (an append).
        let shard = self.shard.0.to_string();
        let owned = |key: &str| {
            let mut parts = key.split('/');
            parts.next() == Some("blocks")
                && parts.next() == Some(shard.as_str())
                && parts.next().is_some()
                && parts
                    .next()
                    .and_then(|g| g.parse::<u64>().ok())
                    .is_some_and(|g| g >= 1 && g <= generation.0)
        };
        if !blocks.iter().all(|block| owned(&block.key)) {
            return Err(format!(
                "inode {id}: a block key is outside its generation's prefix"
            ));
        }
        Ok(())
    }

    /// A generation must have been allocated and may be used only once.
    fn check_generation(
        &self,
        generation: Generation,
        seen: &mut BTreeSet<Generation>,
    ) -> Result<(), String> {
        if generation.0 == 0 || generation.0 >= self.next_generation {
            return Err(format!("{generation} was never allocated"));
        }
        if !seen.insert(generation) {
            return Err(format!("{generation} is used twice"));
        }
        Ok(())
    }
}
