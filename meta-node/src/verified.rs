//! Blocks this node has already seen in the object store, so that a commit
//! does not look them up again.
//!
//! A commit may only name blocks that exist with their declared sizes, and
//! the leader checks that with one HEAD per block before proposing. Clients
//! ask for that check early (`CheckBlocks`), block by block while the rest
//! of the body is still uploading; what passed is remembered here and the
//! commit only looks up the blocks not seen yet.
//!
//! Why a remembered check stays true until the commit: block keys are
//! unique per (inode, generation) and both come from replicated allocators
//! that never go back while this process lives; blocks of a staged upload
//! are deleted only after a replicated command dropped the upload (abort,
//! lease expiry), and a commit of a dropped upload fails in apply. A
//! restored cluster may reuse allocator values, but it starts with an empty
//! cache (the cache is in memory only).
//!
//! Keys are remembered by their SHA-256, 32 bytes however long the key (an
//! SDK block key is about 90): a full cache held 26 MB of key strings (two
//! copies each) on a leader, about 10 now. Two keys with one digest would
//! have to be a SHA-256 collision.
//!
//! Must not depend on: the client service (it is a plain bounded map).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Remembered checks kept at most (oldest forgotten first): about 10 MB.
pub const CAPACITY: usize = 100_000;

/// What a key is remembered by: its SHA-256.
type KeyDigest = [u8; 32];

fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// A bounded set of `(key, size)` pairs seen in the store.
#[derive(Default)]
pub struct VerifiedBlocks {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sizes: HashMap<KeyDigest, u64>,
    order: VecDeque<KeyDigest>,
}

impl VerifiedBlocks {
    /// Was `key` seen with exactly `size` bytes?
    pub fn contains(&self, key: &str, size: u64) -> bool {
        let key = digest(key);
        self.inner
            .lock()
            .map(|i| i.sizes.get(&key) == Some(&size))
            .unwrap_or(false)
    }

    /// Remembers that `key` exists with `size` bytes.
    pub fn insert(&self, key: &str, size: u64) {
        let key = digest(key);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.sizes.insert(key, size).is_none() {
            inner.order.push_back(key);
        }
        while inner.order.len() > CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.sizes.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.sizes.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_key_and_size_and_forgets_the_oldest_beyond_capacity() {
        let v = VerifiedBlocks::default();
        v.insert("blocks/0/5/7/0", 10);
        assert!(v.contains("blocks/0/5/7/0", 10));
        assert!(
            !v.contains("blocks/0/5/7/0", 11),
            "a different size is not a match"
        );
        assert!(!v.contains("blocks/0/5/7/1", 10));
        v.insert("blocks/0/5/7/0", 10);
        assert_eq!(v.len(), 1, "inserting twice keeps one entry");
        for i in 0..CAPACITY {
            v.insert(&format!("k{i}"), 1);
        }
        assert_eq!(v.len(), CAPACITY);
        assert!(!v.contains("blocks/0/5/7/0", 10), "the oldest went first");
        assert!(v.contains(&format!("k{}", CAPACITY - 1), 1));
    }
}
