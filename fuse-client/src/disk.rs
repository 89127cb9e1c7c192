//! The block cache's optional disk tier: whole blocks kept as files in a
//! local directory, bounded in bytes, least recently used first out.
//!
//! Blocks are immutable, so a file here never goes stale; it can only be
//! damaged (a bad disk, a stray write). Every block read from here is
//! checked like one from the object store (its size, and the sha256 its
//! key names) and a damaged one is deleted and fetched again.
//!
//! A file is named by the sha256 of its block key (keys hold `/` and may be
//! longer than a file name). Files are written under a temporary name and
//! renamed into place, so a crash leaves whole blocks or nothing. A
//! directory left by an earlier mount is picked up at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use nokv_client::BlockRef;
use sha2::{Digest, Sha256};

struct Entry {
    size: u64,
    last_used: u64,
}

#[derive(Default)]
struct State {
    /// By file name.
    files: HashMap<String, Entry>,
    bytes: u64,
    clock: u64,
}

/// A directory of cached blocks.
pub(crate) struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
}

/// The file name of a block key.
fn file_name(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl DiskCache {
    /// A cache of at most `capacity` bytes in `dir` (made if missing),
    /// holding what an earlier mount left there.
    pub(crate) fn open(dir: &Path, capacity: u64) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(dir)?;
        let mut state = State::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if name.len() == 64 && meta.is_file() {
                state.bytes += meta.len();
                state.files.insert(
                    name,
                    Entry {
                        size: meta.len(),
                        last_used: 0,
                    },
                );
            } else if name.ends_with(".tmp") {
                // A write cut short by a crash.
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            capacity,
            state: Mutex::new(state),
        };
        cache.evict(0);
        Ok(cache)
    }

    /// The block's bytes if they are here and intact.
    pub(crate) async fn get(&self, block: &BlockRef) -> Option<Bytes> {
        let name = file_name(&block.key);
        {
            let mut state = self.state.lock().ok()?;
            state.clock += 1;
            let now = state.clock;
            state.files.get_mut(&name)?.last_used = now;
        }
        let path = self.dir.join(&name);
        let bytes = Bytes::from(tokio::fs::read(&path).await.ok()?);
        match nokv_client::verify_block(block, &bytes) {
            Ok(()) => Some(bytes),
            Err(e) => {
                tracing::warn!(key = %block.key, error = %e, "damaged block in the disk cache; fetching it again");
                self.forget(&name);
                let _ = tokio::fs::remove_file(&path).await;
                None
            }
        }
    }

    /// Keeps a block (checked by the caller), making room first.
    pub(crate) async fn put(&self, block: &BlockRef, bytes: &Bytes) {
        let size = bytes.len() as u64;
        if size > self.capacity {
            return;
        }
        let name = file_name(&block.key);
        if self
            .state
            .lock()
            .map(|s| s.files.contains_key(&name))
            .unwrap_or(true)
        {
            return;
        }
        let tmp = self.dir.join(format!("{name}.{}.tmp", std::process::id()));
        let written = async {
            tokio::fs::write(&tmp, bytes).await?;
            tokio::fs::rename(&tmp, self.dir.join(&name)).await
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot keep a block on disk");
            let _ = tokio::fs::remove_file(&tmp).await;
            return;
        }
        self.evict(size);
        if let Ok(mut state) = self.state.lock() {
            state.clock += 1;
            let last_used = state.clock;
            if state
                .files
                .insert(name, Entry { size, last_used })
                .is_none()
            {
                state.bytes += size;
            }
        }
    }

    fn forget(&self, name: &str) {
        if let Ok(mut state) = self.state.lock() {
            if let Some(gone) = state.files.remove(name) {
                state.bytes -= gone.size;
            }
        }
    }

    /// Deletes least recently used files until `incoming` more bytes fit.
    fn evict(&self, incoming: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        while state.bytes + incoming > self.capacity {
            let Some(oldest) = state
                .files
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            if let Some(gone) = state.files.remove(&oldest) {
                state.bytes -= gone.size;
                let _ = std::fs::remove_file(self.dir.join(&oldest));
            }
        }
    }

    #[cfg(test)]
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .state
            .lock()
            .map(|s| s.files.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(key: &str, bytes: &[u8]) -> BlockRef {
        let digest: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        BlockRef {
            key: format!("blocks/0/1/2/{key}.{digest}"),
            size: bytes.len() as u64,
        }
    }

    #[tokio::test]
    async fn blocks_survive_a_restart_and_the_oldest_go_first() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (a, b, c) = (vec![1u8; 10], vec![2u8; 10], vec![3u8; 10]);
        let (ba, bb, bc) = (block("a", &a), block("b", &b), block("c", &c));
        let cache = DiskCache::open(dir.path(), 25).expect("open");
        cache.put(&ba, &Bytes::from(a.clone())).await;
        cache.put(&bb, &Bytes::from(b.clone())).await;
        assert_eq!(cache.get(&ba).await.as_deref(), Some(&a[..]));
        // "b" is now the least recently used: it goes to make room for "c".
        cache.put(&bc, &Bytes::from(c.clone())).await;
        assert!(cache.get(&bb).await.is_none());
        assert_eq!(cache.get(&bc).await.as_deref(), Some(&c[..]));
        drop(cache);

        let again = DiskCache::open(dir.path(), 25).expect("open again");
        assert_eq!(again.names().len(), 2, "what the first left is picked up");
        assert_eq!(again.get(&ba).await.as_deref(), Some(&a[..]));
        assert_eq!(again.get(&bc).await.as_deref(), Some(&c[..]));
        // A smaller capacity trims at open.
        drop(again);
        let small = DiskCache::open(dir.path(), 10).expect("open smaller");
        assert_eq!(small.names().len(), 1);
    }

    #[tokio::test]
    async fn a_damaged_file_is_a_miss_and_is_deleted() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bytes = vec![7u8; 100];
        let b = block("x", &bytes);
        let cache = DiskCache::open(dir.path(), 1000).expect("open");
        cache.put(&b, &Bytes::from(bytes.clone())).await;
        let path = dir.path().join(file_name(&b.key));
        let mut stored = std::fs::read(&path).expect("the file is there");
        stored[5] ^= 1;
        std::fs::write(&path, &stored).expect("damage it");
        assert!(
            cache.get(&b).await.is_none(),
            "damaged bytes are not served"
        );
        assert!(!path.exists(), "and the file is gone");
        assert!(cache.names().is_empty());
    }
}
