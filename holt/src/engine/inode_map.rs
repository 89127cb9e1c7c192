//! [`InodeMap`]: a persistent map keyed by inode id, packed sixteen ids
//! to a chunk.

use std::sync::Arc;

use imbl::OrdMap;

use crate::types::InodeId;

/// Ids per chunk.
const CHUNK: u64 = 16;

type Chunk<V> = [Option<V>; CHUNK as usize];

/// A map from inode id to `V` whose values sit in chunks of sixteen
/// consecutive ids, the chunks in a persistent map keyed by `id / 16`. A
/// clone is O(1) and shares every chunk (what a snapshot pin needs); a
/// write copies the one chunk it changes if a clone shares it
/// (`Arc::make_mut`: sixteen values; the namespace's records sit in the
/// chunks themselves, so a copy clones sixteen records, once per chunk
/// per clone).
///
/// Why: inode numbers are allocated in order, and imbl's `OrdMap` leaves
/// (sixteen slots, split in half when full) stay half full when filled
/// in order, so an `OrdMap<InodeId, Arc<_>>` spent about 41 bytes per
/// entry on its slots. Packed, an entry costs its 8-byte slot and a
/// sixteenth of a chunk's header and map slot. Canonical (no empty chunk is
/// kept), so equal maps compare equal; iteration is in id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InodeMap<V> {
    chunks: OrdMap<u64, Arc<Chunk<V>>>,
    len: usize,
}

impl<V> Default for InodeMap<V> {
    fn default() -> Self {
        InodeMap {
            chunks: OrdMap::new(),
            len: 0,
        }
    }
}

fn place(id: InodeId) -> (u64, usize) {
    (id.0 / CHUNK, (id.0 % CHUNK) as usize)
}

fn id_at(chunk: u64, slot: usize) -> InodeId {
    InodeId(chunk * CHUNK + slot as u64)
}

impl<V: Clone> InodeMap<V> {
    pub(crate) fn unit(id: InodeId, value: V) -> Self {
        let mut map = InodeMap::default();
        map.insert(id, value);
        map
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, id: &InodeId) -> Option<&V> {
        let (chunk, slot) = place(*id);
        self.chunks.get(&chunk)?[slot].as_ref()
    }

    pub(crate) fn contains_key(&self, id: &InodeId) -> bool {
        self.get(id).is_some()
    }

    pub(crate) fn get_mut(&mut self, id: &InodeId) -> Option<&mut V> {
        let (chunk, slot) = place(*id);
        let chunk = self.chunks.get_mut(&chunk)?;
        chunk[slot].as_ref()?;
        Arc::make_mut(chunk)[slot].as_mut()
    }

    /// Sets `id` to `value`; the value it replaces, if any.
    pub(crate) fn insert(&mut self, id: InodeId, value: V) -> Option<V> {
        let (chunk, slot) = place(id);
        let chunk = self
            .chunks
            .entry(chunk)
            .or_insert_with(|| Arc::new(std::array::from_fn(|_| None)));
        let old = Arc::make_mut(chunk)[slot].replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `id`; the value it had, if any.
    pub(crate) fn remove(&mut self, id: &InodeId) -> Option<V> {
        let (key, slot) = place(*id);
        let chunk = self.chunks.get_mut(&key)?;
        chunk[slot].as_ref()?;
        let chunk = Arc::make_mut(chunk);
        let old = chunk[slot].take();
        if chunk.iter().all(Option::is_none) {
            self.chunks.remove(&key);
        }
        self.len -= 1;
        old
    }

    /// The entries in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (InodeId, &V)> + '_ {
        self.chunks.iter().flat_map(|(chunk, values)| {
            values
                .iter()
                .enumerate()
                .filter_map(move |(slot, value)| Some((id_at(*chunk, slot), value.as_ref()?)))
        })
    }
}

impl<V: Clone + PartialEq> InodeMap<V> {
    /// What turns `self` into `other`, in id order: each id whose value
    /// differs, with `other`'s value (`None`: `other` lacks it). Chunks
    /// the two share are skipped whole.
    pub(crate) fn diff_to(&self, other: &InodeMap<V>) -> Vec<(InodeId, Option<V>)> {
        let mut changes = Vec::new();
        let shared = |a: &Arc<Chunk<V>>, b: &Arc<Chunk<V>>| Arc::ptr_eq(a, b);
        for (chunk, from, to) in diff_sorted(self.chunks.iter(), other.chunks.iter(), shared) {
            for slot in 0..CHUNK as usize {
                let a = from.and_then(|c| c[slot].as_ref());
                let b = to.and_then(|c| c[slot].as_ref());
                if a != b {
                    changes.push((id_at(*chunk, slot), b.cloned()));
                }
            }
        }
        changes
    }
}

/// The keys of two sorted sequences of entries (`from`, `to`) that are in
/// only one of them, or in both with values `same` does not call equal:
/// each with its value on either side, in key order.
///
/// Written out rather than using `imbl::OrdMap::diff`: imbl 7.0.0's diff
/// missed a changed entry after nodes the two maps share (jneem/imbl#160,
/// fixed in 7.0.2; the property test below found it), and a pin's image is
/// encoded as a diff, so we keep a walk simple enough to read. It visits
/// every key of both, O(n); [`InodeMap`] and [`super::DentryMap`] call it on
/// their chunks first and skip the ones they share by pointer.
pub(crate) fn diff_sorted<'a, K: Ord + 'a, V: 'a>(
    from: impl IntoIterator<Item = (&'a K, &'a V)>,
    to: impl IntoIterator<Item = (&'a K, &'a V)>,
    same: impl Fn(&V, &V) -> bool,
) -> Vec<(&'a K, Option<&'a V>, Option<&'a V>)> {
    let mut out = Vec::new();
    let mut from = from.into_iter().peekable();
    let mut to = to.into_iter().peekable();
    loop {
        let order = match (from.peek(), to.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            std::cmp::Ordering::Less => {
                if let Some((k, v)) = from.next() {
                    out.push((k, Some(v), None));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((k, v)) = to.next() {
                    out.push((k, None, Some(v)));
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((k, a)), Some((_, b))) = (from.next(), to.next()) {
                    if !same(a, b) {
                        out.push((k, Some(a), Some(b)));
                    }
                }
            }
        }
    }
    out
}

impl<V: Clone> FromIterator<(InodeId, V)> for InodeMap<V> {
    fn from_iter<I: IntoIterator<Item = (InodeId, V)>>(entries: I) -> Self {
        let mut map = InodeMap::default();
        for (id, value) in entries {
            map.insert(id, value);
        }
        map
    }
}

impl<V: Clone> std::ops::Index<&InodeId> for InodeMap<V> {
    type Output = V;

    /// Panics if `id` is absent, as `OrdMap`'s index does: for tests and
    /// for ids the caller has just found.
    fn index(&self, id: &InodeId) -> &V {
        match self.get(id) {
            Some(value) => value,
            None => panic!("no inode {id} in the map"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn id(raw: u64) -> InodeId {
        // Ids near the top of the range too, where `id / 16` is large.
        InodeId(if raw.is_multiple_of(2) {
            raw
        } else {
            u64::MAX - raw
        })
    }

    proptest! {
        /// Inserts and removes leave the same entries, in the same order,
        /// as a `BTreeMap`; equal contents compare equal however reached;
        /// the diff between two maps turns one into the other; a clone is
        /// not changed by writes to the original.
        #[test]
        fn behaves_as_an_ordered_map(
            ops in prop::collection::vec((any::<bool>(), 0u64..200, any::<u8>()), 0..300),
            later in prop::collection::vec((any::<bool>(), 0u64..200, any::<u8>()), 0..100),
        ) {
            let mut map = InodeMap::default();
            let mut model = BTreeMap::new();
            let run = |map: &mut InodeMap<u8>, model: &mut BTreeMap<InodeId, u8>, ops: &[(bool, u64, u8)]| {
                for (insert, raw, value) in ops {
                    let id = id(*raw);
                    if *insert {
                        assert_eq!(map.insert(id, *value), model.insert(id, *value));
                    } else {
                        assert_eq!(map.remove(&id), model.remove(&id));
                    }
                    assert_eq!(map.len(), model.len());
                }
            };
            run(&mut map, &mut model, &ops);
            prop_assert!(map.iter().map(|(k, v)| (k, *v)).eq(model.iter().map(|(k, v)| (*k, *v))));
            prop_assert!(model.iter().all(|(k, v)| map.get(k) == Some(v)));
            prop_assert_eq!(&model.iter().map(|(k, v)| (*k, *v)).collect::<InodeMap<u8>>(), &map);

            let pinned = map.clone();
            let pinned_model = model.clone();
            run(&mut map, &mut model, &later);
            prop_assert!(pinned.iter().map(|(k, v)| (k, *v)).eq(pinned_model.iter().map(|(k, v)| (*k, *v))));
            let mut patched = map.clone();
            for (id, value) in map.diff_to(&pinned) {
                match value {
                    Some(value) => { patched.insert(id, value); }
                    None => { patched.remove(&id); }
                }
            }
            prop_assert_eq!(patched, pinned);
        }
    }

    #[test]
    fn get_mut_copies_a_shared_chunk_only() {
        let mut map: InodeMap<u8> = (0..40).map(|i| (InodeId(i), 0)).collect();
        let pinned = map.clone();
        if let Some(value) = map.get_mut(&InodeId(17)) {
            *value = 9;
        }
        assert!(map.get_mut(&InodeId(99)).is_none());
        assert_eq!(map.get(&InodeId(17)), Some(&9));
        assert_eq!(pinned.get(&InodeId(17)), Some(&0));
        assert_eq!(map.diff_to(&pinned), vec![(InodeId(17), Some(0))]);
    }
}
