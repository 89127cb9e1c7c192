//! What each part of the state costs in memory, for
//! `examples/memory_breakdown.rs` (docs/benchmarks.md, "Memory per inode").

use super::{Holt, InodeMap, InodeRecord, Namespace};
use crate::types::InodeId;

impl Holt {
    /// Drops the state one part at a time and calls `dropped(part)` after
    /// each, so that a caller counting its allocator's live bytes can tell
    /// what each part held. A measurement aid, not an operation.
    ///
    /// Parts that share allocations are dropped so that the shared ones
    /// count once, with the last holder: pins first (they share the whole
    /// namespace), the reverse links (the `links` set and the records' own)
    /// before `dentries` (both hold each entry's name),
    /// bodies before the records that point to them.
    pub fn drop_in_parts(self, mut dropped: impl FnMut(&'static str)) {
        let Holt {
            ns,
            dedupe,
            dedupe_order,
            staged,
            gc,
            snapshots,
            events,
            tokens,
            ..
        } = self;
        drop(snapshots);
        dropped("snapshot pins");
        drop((dedupe, dedupe_order));
        dropped("dedupe table");
        drop(events);
        dropped("watch history");
        drop((staged, gc, tokens));
        dropped("uploads, GC queue, tokens");
        let Namespace {
            mut inodes,
            dentries,
            grafts,
            fields,
            index,
            unindexed,
            links,
            ..
        } = ns;
        drop((fields, index, unindexed, grafts));
        dropped("fields and their indexes");
        drop(links);
        clear_each(&mut inodes, |record| record.link = None);
        dropped("links (child -> entry)");
        drop(dentries);
        dropped("dentries and names");
        clear_each(&mut inodes, |record| record.body = None);
        dropped("bodies");
        drop(inodes);
        dropped("inodes and records");
    }
}

/// Applies `clear` to every record (each is unique here: the pins are
/// gone, so nothing is copied).
fn clear_each(inodes: &mut InodeMap<InodeRecord>, clear: impl Fn(&mut InodeRecord)) {
    let ids: Vec<InodeId> = inodes.iter().map(|(id, _)| id).collect();
    for id in ids {
        if let Some(record) = inodes.get_mut(&id) {
            clear(record);
        }
    }
}
