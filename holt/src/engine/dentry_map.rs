//! [`DentryMap`]: the directory entries, `(directory, name) -> child`,
//! packed up to thirty-two to a chunk.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use equivalent::{Comparable, Equivalent};
use imbl::OrdMap;

use super::diff_sorted;
use super::name::Name;
use crate::types::InodeId;

/// A directory entry's key: the directory, then the name.
pub(crate) type DentryKey = (InodeId, Name);

/// Most entries per chunk.
const CHUNK: usize = 32;

/// A removal leaves a chunk this small merged with the next one when
/// both fit in one.
const SMALL: usize = CHUNK / 4;

/// Entries in key order, never empty. Grown one slot at a time
/// (`reserve_exact`), so that a chunk holds no spare slots: the copy a
/// write makes costs an allocation either way.
type Chunk = Vec<(DentryKey, InodeId)>;

/// An ordered map from `(directory, name)` to the child, its entries in
/// sorted chunks of at most thirty-two, the chunks in a persistent map
/// keyed by each chunk's first key. A clone is O(1) and shares every
/// chunk (what a snapshot pin needs); a write copies the one chunk it
/// changes if a clone shares it.
///
/// Why: an `OrdMap<(InodeId, Name), InodeId>` filled in key order (a
/// directory's files created one after another) keeps its leaves half
/// full, about 77 bytes per entry. Here an entry costs its 32-byte slot
/// and a share of its chunk's header: a full chunk splits where the new
/// entry goes, not in half, so entries added in order (ascending or
/// descending, anywhere in the key space) fill their chunks.
///
/// The chunk layout depends on the order of the writes; equality and
/// [`DentryMap::diff_to`] compare entries, never layouts.
#[derive(Clone, Default)]
pub(crate) struct DentryMap {
    chunks: OrdMap<DentryKey, Arc<Chunk>>,
    len: usize,
}

/// Where `key` is in `chunk`, or where it would go.
fn position<Q: Comparable<DentryKey> + ?Sized>(chunk: &Chunk, key: &Q) -> Result<usize, usize> {
    chunk.binary_search_by(|(k, _)| key.compare(k).reverse())
}

/// A borrowed `(directory, name)`, to look an entry up without building a
/// [`Name`] (an allocation) for it. Compares as the key it stands for.
pub(crate) struct EntryProbe<'a>(pub(crate) InodeId, pub(crate) &'a str);

impl Equivalent<DentryKey> for EntryProbe<'_> {
    fn equivalent(&self, key: &DentryKey) -> bool {
        self.0 == key.0 && self.1 == key.1.as_str()
    }
}

impl Comparable<DentryKey> for EntryProbe<'_> {
    fn compare(&self, key: &DentryKey) -> Ordering {
        (self.0, self.1).cmp(&(key.0, key.1.as_str()))
    }
}

impl DentryMap {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The chunk that would hold `key`: the last one starting at or before
    /// it.
    fn chunk_for<Q: Comparable<DentryKey> + ?Sized>(
        &self,
        key: &Q,
    ) -> Option<(&DentryKey, &Arc<Chunk>)> {
        self.chunks.get_prev(key)
    }

    /// The child under `key`: a [`DentryKey`] or an [`EntryProbe`].
    pub(crate) fn get<Q: Comparable<DentryKey> + ?Sized>(&self, key: &Q) -> Option<&InodeId> {
        let (_, chunk) = self.chunk_for(key)?;
        let at = position(chunk, key).ok()?;
        Some(&chunk[at].1)
    }

    /// Inserts or replaces `key`'s child; returns the one it replaced.
    pub(crate) fn insert(&mut self, key: DentryKey, child: InodeId) -> Option<InodeId> {
        // Where it goes: the chunk starting at or before it, or the first
        // chunk when it sorts before them all.
        let target = self
            .chunk_for(&key)
            .or_else(|| self.chunks.get_min().map(|(first, chunk)| (first, chunk)))
            .map(|(first, chunk)| (first.clone(), position(chunk, &key), chunk.len()));
        let Some((first, at, len)) = target else {
            self.put_chunk(vec![(key, child)]);
            self.len = 1;
            return None;
        };
        match at {
            Ok(at) => {
                let chunk = self.chunks.get_mut(&first)?;
                if chunk[at].1 == child {
                    return Some(child);
                }
                Some(std::mem::replace(&mut Arc::make_mut(chunk)[at].1, child))
            }
            // Inside a chunk with room, not before its first entry: in place.
            Err(at) if at > 0 && len < CHUNK => {
                let chunk = Arc::make_mut(self.chunks.get_mut(&first)?);
                chunk.reserve_exact(1);
                chunk.insert(at, (key, child));
                self.len += 1;
                None
            }
            Err(at) => {
                let mut entries = self.take_chunk(&first);
                entries.reserve_exact(1);
                entries.insert(at, (key, child));
                if entries.len() > CHUNK {
                    // A full chunk splits just after the new entry (or,
                    // at its end, just before it), so that the entries
                    // that follow in order go on filling the chunk that
                    // holds it.
                    let split = if at + 1 < entries.len() { at + 1 } else { at };
                    self.put_chunk(entries.split_off(split));
                    entries.shrink_to_fit();
                }
                self.put_chunk(entries);
                self.len += 1;
                None
            }
        }
    }

    /// Removes `key`; returns its child.
    pub(crate) fn remove(&mut self, key: &DentryKey) -> Option<InodeId> {
        let (first, chunk) = self.chunk_for(key)?;
        let at = position(chunk, key).ok()?;
        let (first, len) = (first.clone(), chunk.len());
        if at > 0 && len > SMALL {
            let chunk = self.chunks.get_mut(&first)?;
            let (_, child) = Arc::make_mut(chunk).remove(at);
            self.len -= 1;
            return Some(child);
        }
        let mut entries = self.take_chunk(&first);
        let (_, child) = entries.remove(at);
        self.len -= 1;
        // A small chunk joins its successor if both fit in one (an empty
        // one has nothing to join: it just goes).
        if !entries.is_empty() && entries.len() <= SMALL {
            let next = self
                .chunks
                .get_next(&first)
                .map(|(k, c)| (k.clone(), c.len()));
            if let Some((next, next_len)) = next {
                if entries.len() + next_len <= CHUNK {
                    let next = self.take_chunk(&next);
                    entries.extend(next);
                }
            }
        }
        if !entries.is_empty() {
            self.put_chunk(entries);
        }
        Some(child)
    }

    /// Removes the chunk starting at `first` and returns its entries
    /// (copied if a clone shares them).
    fn take_chunk(&mut self, first: &DentryKey) -> Chunk {
        self.chunks
            .remove(first)
            .map(Arc::unwrap_or_clone)
            .unwrap_or_default()
    }

    /// Adds a chunk of sorted entries under its first key.
    fn put_chunk(&mut self, entries: Chunk) {
        if let Some((first, _)) = entries.first() {
            self.chunks.insert(first.clone(), Arc::new(entries));
        }
    }

    /// Every entry in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&DentryKey, &InodeId)> + '_ {
        self.chunks
            .values()
            .flat_map(|chunk| chunk.iter().map(|(key, child)| (key, child)))
    }

    /// The entries from `start` on, in key order.
    pub(crate) fn range_from(
        &self,
        start: Bound<DentryKey>,
    ) -> impl Iterator<Item = (&DentryKey, &InodeId)> + '_ {
        let begin = match &start {
            Bound::Included(key) | Bound::Excluded(key) => self.chunk_for(key).map(|(k, _)| k),
            Bound::Unbounded => None,
        };
        let chunks = match begin {
            Some(first) => self
                .chunks
                .range::<_, DentryKey>((Bound::Included(first), Bound::Unbounded)),
            None => self.chunks.range::<_, DentryKey>(..),
        };
        chunks
            .flat_map(|(_, chunk)| chunk.iter().map(|(key, child)| (key, child)))
            .skip_while(move |(key, _)| match &start {
                Bound::Included(start) => *key < start,
                Bound::Excluded(start) => *key <= start,
                Bound::Unbounded => false,
            })
    }

    /// What turns `self` into `other`, in key order: each key whose child
    /// differs, with `other`'s child (`None`: `other` lacks it).
    ///
    /// Chunks the two share (the same allocation under the same first
    /// key) are skipped whole: no other chunk of either map holds their
    /// keys, so the entries left on both sides differ exactly where the
    /// maps do.
    pub(crate) fn diff_to(&self, other: &DentryMap) -> Vec<(DentryKey, Option<InodeId>)> {
        let (mut from, mut to): (Vec<&(DentryKey, InodeId)>, Vec<_>) = (Vec::new(), Vec::new());
        let shared = |a: &Arc<Chunk>, b: &Arc<Chunk>| Arc::ptr_eq(a, b);
        for (_, a, b) in diff_sorted(self.chunks.iter(), other.chunks.iter(), shared) {
            from.extend(a.into_iter().flat_map(|chunk| chunk.iter()));
            to.extend(b.into_iter().flat_map(|chunk| chunk.iter()));
        }
        let from = from.into_iter().map(|(key, child)| (key, child));
        let to = to.into_iter().map(|(key, child)| (key, child));
        diff_sorted(from, to, |a, b| a == b)
            .into_iter()
            .map(|(key, _, child)| (key.clone(), child.copied()))
            .collect()
    }
}

impl PartialEq for DentryMap {
    fn eq(&self, other: &DentryMap) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for DentryMap {}

impl fmt::Debug for DentryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a DentryMap {
    type Item = (&'a DentryKey, &'a InodeId);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl FromIterator<(DentryKey, InodeId)> for DentryMap {
    /// Entries in strictly increasing key order (an image's) are packed
    /// into full chunks; any other order is inserted one by one.
    fn from_iter<I: IntoIterator<Item = (DentryKey, InodeId)>>(entries: I) -> Self {
        let entries: Vec<_> = entries.into_iter().collect();
        let mut map = DentryMap::default();
        if entries.windows(2).all(|pair| pair[0].0 < pair[1].0) {
            map.len = entries.len();
            let mut entries = entries.into_iter().peekable();
            while entries.peek().is_some() {
                map.put_chunk(entries.by_ref().take(CHUNK).collect());
            }
        } else {
            for (key, child) in entries {
                map.insert(key, child);
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn key(dir: u64, name: &str) -> DentryKey {
        (InodeId(dir), Name::from(name))
    }

    /// The map's own structure: chunks non-empty, sorted, disjoint, keyed
    /// by their first entry, at most `CHUNK` each, `len` their total.
    fn check(map: &DentryMap) {
        let mut total = 0;
        let mut last: Option<&DentryKey> = None;
        for (first, chunk) in map.chunks.iter() {
            assert!(!chunk.is_empty() && chunk.len() <= CHUNK);
            assert_eq!(&chunk[0].0, first);
            for (key, _) in chunk.iter() {
                assert!(last.is_none_or(|last| last < key), "out of order");
                last = Some(key);
            }
            total += chunk.len();
        }
        assert_eq!(total, map.len);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Insert(u64, u16, u64),
        Remove(u64, u16),
        Pin,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0..3u64, 0..200u16, 0..4u64).prop_map(|(d, n, c)| Step::Insert(d, n, c)),
            3 => (0..3u64, 0..200u16).prop_map(|(d, n)| Step::Remove(d, n)),
            1 => Just(Step::Pin),
        ]
    }

    fn name(n: u16) -> String {
        format!("n{n:03}")
    }

    proptest! {
        /// Against a `BTreeMap`, through clones (pins): the same answers,
        /// the same entries, ranges and diffs, and every pin unchanged by
        /// later writes.
        #[test]
        fn behaves_as_an_ordered_map(steps in prop::collection::vec(step(), 1..600)) {
            let mut map = DentryMap::default();
            let mut model = BTreeMap::new();
            let mut pins: Vec<(DentryMap, BTreeMap<DentryKey, InodeId>)> = Vec::new();
            for step in steps {
                match step {
                    Step::Insert(d, n, c) => {
                        let k = key(d, &name(n));
                        prop_assert_eq!(map.insert(k.clone(), InodeId(c)), model.insert(k, InodeId(c)));
                    }
                    Step::Remove(d, n) => {
                        let k = key(d, &name(n));
                        // Looked up by a borrowed probe first, as paths are.
                        prop_assert_eq!(map.get(&EntryProbe(InodeId(d), &name(n))), model.get(&k));
                        prop_assert_eq!(map.remove(&k), model.remove(&k));
                    }
                    Step::Pin => pins.push((map.clone(), model.clone())),
                }
                check(&map);
            }
            let entries: Vec<_> = model.iter().collect();
            prop_assert!(map.iter().eq(entries.iter().copied()));
            for d in 0..3 {
                for n in [0u16, 57, 199] {
                    let start = key(d, &name(n));
                    prop_assert_eq!(map.get(&start), model.get(&start));
                    let ours: Vec<_> = map.range_from(Bound::Excluded(start.clone())).collect();
                    let theirs: Vec<_> = model
                        .range((Bound::Excluded(start.clone()), Bound::Unbounded))
                        .collect();
                    prop_assert_eq!(ours, theirs);
                    let ours: Vec<_> = map.range_from(Bound::Included(start.clone())).collect();
                    let theirs: Vec<_> = model.range(start..).collect();
                    prop_assert_eq!(ours, theirs);
                }
            }
            let rebuilt: DentryMap = model.clone().into_iter().collect();
            check(&rebuilt);
            prop_assert_eq!(&rebuilt, &map);
            for (pin, pinned) in &pins {
                let entries: Vec<_> = pinned.iter().collect();
                prop_assert!(pin.iter().eq(entries.iter().copied()));
                // Replaying the diff onto the current map gives the pin.
                let mut replayed = map.clone();
                for (k, child) in map.diff_to(pin) {
                    match child {
                        Some(child) => replayed.insert(k, child),
                        None => replayed.remove(&k),
                    };
                }
                prop_assert_eq!(&replayed, pin);
                prop_assert_eq!(&map == pin, &model == pinned);
            }
        }
    }

    #[test]
    fn entries_added_in_order_fill_their_chunks() {
        let mut map = DentryMap::default();
        for n in 0..(CHUNK as u16 * 10) {
            map.insert(key(1, &format!("f{n:05}")), InodeId(u64::from(n)));
        }
        check(&map);
        assert_eq!(map.chunks.len(), 10);
        // And in the middle of the key space: a directory between two
        // others, filled in order.
        for n in 0..(CHUNK as u16 * 4) {
            map.insert(key(0, &format!("f{n:05}")), InodeId(1));
            map.insert(key(2, &format!("f{n:05}")), InodeId(2));
        }
        for n in 0..(CHUNK as u16 * 4) {
            map.insert(key(1, &format!("g{n:05}")), InodeId(3));
        }
        check(&map);
        let full = map.chunks.values().filter(|c| c.len() == CHUNK).count();
        assert!(full >= 20, "{full} of {} chunks full", map.chunks.len());
    }

    #[test]
    fn entries_added_in_no_order_still_share_chunks() {
        // Chunks hold no spare slots, so a low fill costs only chunk
        // headers (about 40 bytes each); measured here: 17.6 per chunk.
        let mut map = DentryMap::default();
        // 6400 names in a pseudo-random order (xorshift), four directories.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..6400 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = state % 1_000_000;
            map.insert(key(at % 4, &format!("f{at:06}")), InodeId(at));
        }
        check(&map);
        let average = map.len() as f64 / map.chunks.len() as f64;
        assert!(
            average >= CHUNK as f64 / 4.0,
            "{average:.1} entries per chunk"
        );
    }

    #[test]
    fn a_write_after_a_clone_leaves_the_clone_alone() {
        let mut map: DentryMap = (0..100u64)
            .map(|n| (key(1, &name(n as u16)), InodeId(n)))
            .collect();
        let pin = map.clone();
        map.insert(key(1, &name(5)), InodeId(500));
        map.remove(&key(1, &name(70)));
        assert_eq!(pin.get(&key(1, &name(5))), Some(&InodeId(5)));
        assert_eq!(pin.get(&key(1, &name(70))), Some(&InodeId(70)));
        assert_eq!(pin.len(), 100);
        assert_eq!(
            map.diff_to(&pin),
            vec![
                (key(1, &name(5)), Some(InodeId(5))),
                (key(1, &name(70)), Some(InodeId(70)))
            ]
        );
    }
}
