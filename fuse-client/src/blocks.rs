//! A bounded memory cache of whole blocks, shared by every open file of a
//! mount, with read-ahead.
//!
//! Blocks are immutable (a new body gets new keys), so a cached block is
//! never stale and needs no invalidation: a key names the same bytes for
//! as long as it exists. Concurrent readers of one block share one fetch.
//! Least recently used blocks go first once the cache holds more than its
//! capacity. With a disk tier (`disk`), a block missing from memory is
//! looked for there before the object store, and every block fetched is
//! kept there too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use nokv_client::{BlockRef, Client, ClientError};

use crate::disk::DiskCache;

type Fetch = Shared<BoxFuture<'static, Result<Bytes, ClientError>>>;

struct Cached {
    bytes: Bytes,
    last_used: u64,
}

#[derive(Default)]
struct State {
    blocks: HashMap<String, Cached>,
    bytes: u64,
    clock: u64,
    /// Fetches under way, so a second reader waits for the first.
    loading: HashMap<String, Fetch>,
}

/// The block cache of one mount.
pub(crate) struct BlockCache {
    capacity: u64,
    state: Mutex<State>,
    disk: Option<Arc<DiskCache>>,
}

impl BlockCache {
    /// A cache of at most `capacity` bytes (0: no caching; every read
    /// fetches).
    pub(crate) fn new(capacity: u64, disk: Option<Arc<DiskCache>>) -> Arc<BlockCache> {
        Arc::new(BlockCache {
            capacity,
            state: Mutex::new(State::default()),
            disk,
        })
    }

    /// The block's bytes, from the cache or fetched (and cached).
    pub(crate) async fn get(
        self: &Arc<Self>,
        client: &Client,
        block: &BlockRef,
    ) -> Result<Bytes, ClientError> {
        let fetch = {
            let Ok(mut state) = self.state.lock() else {
                return client.read_block(block).await;
            };
            state.clock += 1;
            let now = state.clock;
            if let Some(hit) = state.blocks.get_mut(&block.key) {
                hit.last_used = now;
                return Ok(hit.bytes.clone());
            }
            match state.loading.get(&block.key) {
                Some(fetch) => fetch.clone(),
                None => {
                    let fetch = self.fetch(client.clone(), block.clone());
                    state.loading.insert(block.key.clone(), fetch.clone());
                    fetch
                }
            }
        };
        fetch.await
    }

    /// Starts fetching `block` in the background unless it is cached or
    /// already on its way.
    pub(crate) fn prefetch(self: &Arc<Self>, client: &Client, block: &BlockRef) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.blocks.contains_key(&block.key) || state.loading.contains_key(&block.key) {
            return;
        }
        let fetch = self.fetch(client.clone(), block.clone());
        state.loading.insert(block.key.clone(), fetch.clone());
        tokio::spawn(async move {
            // A failed read-ahead is forgotten; the read itself retries.
            let _ = fetch.await;
        });
    }

    /// A shared fetch of `block` that caches what it got and clears its
    /// `loading` mark either way.
    fn fetch(self: &Arc<Self>, client: Client, block: BlockRef) -> Fetch {
        let cache = self.clone();
        async move {
            if let Some(bytes) = match &cache.disk {
                Some(disk) => disk.get(&block).await,
                None => None,
            } {
                cache.finish(&block.key, Some(&bytes));
                return Ok(bytes);
            }
            let result = client.read_block(&block).await;
            if let (Some(disk), Ok(bytes)) = (&cache.disk, &result) {
                // Kept on disk beside the reply, not before it.
                let (disk, block, bytes) = (disk.clone(), block.clone(), bytes.clone());
                tokio::spawn(async move { disk.put(&block, &bytes).await });
            }
            cache.finish(&block.key, result.as_ref().ok());
            result
        }
        .boxed()
        .shared()
    }

    fn finish(&self, key: &str, bytes: Option<&Bytes>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.loading.remove(key);
        let Some(bytes) = bytes else {
            return;
        };
        let size = bytes.len() as u64;
        if size > self.capacity || state.blocks.contains_key(key) {
            return;
        }
        while state.bytes + size > self.capacity {
            let Some(oldest) = state
                .blocks
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = state.blocks.remove(&oldest) {
                state.bytes -= gone.bytes.len() as u64;
            }
        }
        state.clock += 1;
        let last_used = state.clock;
        state.bytes += size;
        state.blocks.insert(
            key.to_string(),
            Cached {
                bytes: bytes.clone(),
                last_used,
            },
        );
    }

    /// Bytes cached now.
    #[cfg(test)]
    fn cached_bytes(&self) -> u64 {
        self.state.lock().map(|s| s.bytes).unwrap_or(0)
    }
}

/// The part of each block that `offset..end` of a body covers: (block
/// index, range within the block).
pub(crate) fn plan(
    blocks: &[BlockRef],
    offset: u64,
    end: u64,
) -> Vec<(usize, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    if offset >= end {
        return out;
    }
    let mut start = 0u64;
    for (i, block) in blocks.iter().enumerate() {
        let stop = start + block.size;
        if stop > offset && start < end {
            let from = offset.max(start) - start;
            let to = end.min(stop) - start;
            out.push((i, from as usize..to as usize));
        }
        if stop >= end {
            break;
        }
        start = stop;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(sizes: &[u64]) -> Vec<BlockRef> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, s)| BlockRef {
                key: format!("k{i}"),
                size: *s,
            })
            .collect()
    }

    #[test]
    fn a_range_maps_onto_the_blocks_it_covers() {
        let b = blocks(&[10, 10, 5]);
        assert_eq!(plan(&b, 0, 25), vec![(0, 0..10), (1, 0..10), (2, 0..5)]);
        assert_eq!(plan(&b, 3, 7), vec![(0, 3..7)]);
        assert_eq!(plan(&b, 8, 12), vec![(0, 8..10), (1, 0..2)]);
        assert_eq!(plan(&b, 10, 20), vec![(1, 0..10)]);
        assert_eq!(plan(&b, 24, 25), vec![(2, 4..5)]);
        assert!(plan(&b, 25, 30).is_empty());
        assert!(plan(&b, 5, 5).is_empty());
    }

    #[test]
    fn the_least_recently_used_block_goes_first() {
        let cache = BlockCache::new(25, None);
        let ten = Bytes::from(vec![0u8; 10]);
        cache.finish("a", Some(&ten));
        cache.finish("b", Some(&ten));
        assert_eq!(cache.cached_bytes(), 20);
        // Touch "a": "b" is now the oldest.
        if let Ok(mut s) = cache.state.lock() {
            s.clock += 1;
            let now = s.clock;
            if let Some(a) = s.blocks.get_mut("a") {
                a.last_used = now;
            }
        }
        cache.finish("c", Some(&ten));
        let keys: Vec<String> = cache
            .state
            .lock()
            .map(|s| s.blocks.keys().cloned().collect())
            .unwrap_or_default();
        assert!(keys.contains(&"a".to_string()) && keys.contains(&"c".to_string()));
        assert!(!keys.contains(&"b".to_string()));
        assert_eq!(cache.cached_bytes(), 20);
        // A block larger than the whole cache is served but not kept.
        cache.finish("huge", Some(&Bytes::from(vec![0u8; 30])));
        assert_eq!(cache.cached_bytes(), 20);
    }
}
