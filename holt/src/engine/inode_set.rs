//! [`InodeSet`]: a persistent set of inode ids, one bit per id.

use imbl::OrdMap;

use crate::types::InodeId;

/// A set of inode ids as 64-bit words keyed by `id / 64`, in a persistent
/// map (a clone is O(1) and shares everything, as a pin needs).
///
/// Inode numbers are allocated in order, so the members of a large set
/// share words: a member costs about a bit plus a sixty-fourth of a map
/// slot, where an `OrdSet<InodeId>` spent 25 bytes on each (an 8-byte key
/// in leaves that stay half full). Canonical (no empty word is kept), so
/// equal sets compare equal; iteration is in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct InodeSet {
    words: OrdMap<u64, u64>,
    len: usize,
}

fn place(id: InodeId) -> (u64, u64) {
    (id.0 / 64, 1 << (id.0 % 64))
}

impl InodeSet {
    /// Adds `id`; whether it was absent.
    pub(crate) fn insert(&mut self, id: InodeId) -> bool {
        let (word, bit) = place(id);
        let bits = self.words.entry(word).or_insert(0);
        let added = *bits & bit == 0;
        *bits |= bit;
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes `id`; whether it was present.
    pub(crate) fn remove(&mut self, id: InodeId) -> bool {
        let (word, bit) = place(id);
        let Some(bits) = self.words.get_mut(&word) else {
            return false;
        };
        let present = *bits & bit != 0;
        *bits &= !bit;
        if *bits == 0 {
            self.words.remove(&word);
        }
        if present {
            self.len -= 1;
        }
        present
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The members in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = InodeId> + '_ {
        self.words.iter().flat_map(|(word, bits)| {
            (0..64u64)
                .filter(move |i| bits & (1 << i) != 0)
                .map(move |i| InodeId(word * 64 + i))
        })
    }
}

impl FromIterator<InodeId> for InodeSet {
    fn from_iter<I: IntoIterator<Item = InodeId>>(ids: I) -> InodeSet {
        let mut set = InodeSet::default();
        for id in ids {
            set.insert(id);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any sequence of inserts and removes leaves the same members, in
        /// the same order, as a `BTreeSet`, and the same set compares equal
        /// however it was reached.
        #[test]
        fn behaves_as_an_ordered_set(ops in prop::collection::vec((any::<bool>(), 0u64..300), 0..400)) {
            let mut set = InodeSet::default();
            let mut model = BTreeSet::new();
            for (insert, raw) in ops {
                // Ids near the top of the range too, where `id / 64` is large.
                let id = InodeId(if raw.is_multiple_of(2) { raw } else { u64::MAX - raw });
                if insert {
                    prop_assert_eq!(set.insert(id), model.insert(id));
                } else {
                    prop_assert_eq!(set.remove(id), model.remove(&id));
                }
                prop_assert_eq!(set.len(), model.len());
            }
            prop_assert!(set.iter().eq(model.iter().copied()));
            prop_assert_eq!(&model.iter().copied().collect::<InodeSet>(), &set);
        }
    }
}
