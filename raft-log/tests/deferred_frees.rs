//! Memory that sled frees must be freed even when the threads that touched
//! sled go idle.
//!
//! sled 0.34 drops replaced tree nodes and sealed 512 KiB write buffers
//! through crossbeam-epoch's deferred destruction, which parks each drop in
//! a bag owned by the calling thread until 64 have gathered there. A node
//! calls sled from many threads (tokio's blocking pool, its async workers),
//! each now and then, so part-full bags held freed buffers for good: ~75 MB
//! on a leader at 10^5 files. The store hands every thread's deferred drops
//! on after each write, flush and range read.
//!
//! This binary counts live heap bytes with its own global allocator, so it
//! holds this one test only.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Barrier};

use common::{Request, TypeConfig};
use nokv_raft_log::{SledLogDb, SledLogStore};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from `alloc` with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Threads that each append to their own group's log, then go idle.
const THREADS: usize = 8;
/// Append-and-truncate rounds per thread.
const ROUNDS: u64 = 12;
/// Entries per append, and the size of each entry's value: an append
/// writes about 512 KiB, so every append seals one of sled's write buffers.
const ENTRIES: u64 = 8;
const VALUE_BYTES: usize = 64 * 1024;

fn entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request {
            key: format!("key-{index}"),
            value: "v".repeat(VALUE_BYTES),
        }),
    }
}

/// Appends and truncates, round after round, so that the log ends empty:
/// what stays allocated afterwards is sled's bookkeeping and whatever
/// freed memory the thread still parks.
async fn churn(mut store: SledLogStore<TypeConfig>) {
    for _ in 0..ROUNDS {
        store
            .blocking_append((1..=ENTRIES).map(entry))
            .await
            .expect("append");
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 1))
            .await
            .expect("truncate");
    }
}

#[test]
fn idle_threads_keep_no_freed_log_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = SledLogDb::open(dir.path()).expect("open db");
    // A first churn on this thread, so that what sled allocates once
    // (caches, metrics, the first buffers) is in the baseline.
    let warm = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    warm.block_on(churn(db.group(100).expect("group")));
    let stores: Vec<SledLogStore<TypeConfig>> = (0..THREADS)
        .map(|i| db.group(i as u16).expect("group"))
        .collect();
    let baseline = live_bytes();

    let done = Arc::new(Barrier::new(THREADS + 1));
    let release = Arc::new(Barrier::new(THREADS + 1));
    let workers: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let (done, release) = (done.clone(), release.clone());
            std::thread::spawn(move || {
                // Each thread has its own runtime, hence its own blocking
                // thread, which stays alive (idle) until `release`.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(churn(store));
                done.wait();
                release.wait();
                drop(rt);
            })
        })
        .collect();
    done.wait();
    // Every thread is idle now; a little more work here moves the epoch on
    // and runs whatever the threads handed over.
    warm.block_on(churn(db.group(100).expect("group")));
    let held = live_bytes() - baseline;
    release.wait();
    for w in workers {
        w.join().expect("worker");
    }
    // Written in all: 8 threads x 12 rounds x 512 KiB = 48 MiB, every byte
    // truncated again. One sealed buffer per thread parked would be 4 MiB.
    let limit = 4 * 1024 * 1024;
    assert!(
        held < limit,
        "{held} bytes still allocated after the log was emptied (limit {limit}): \
         freed sled memory is parked in idle threads"
    );
}
