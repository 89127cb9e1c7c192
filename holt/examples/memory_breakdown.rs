//! Heap bytes per inode in the engine alone (no Raft, no disk), by part:
//! N empty files, then N files with a one-block body, each built through
//! `Holt::apply` as a replica builds it, then dropped part by part
//! (`Holt::drop_in_parts`) under a counting allocator. A benchmark, not a
//! test: it prints, it asserts nothing. What a replica's resident memory
//! adds on top (allocator slack, the Raft log's cache, sled, the runtime)
//! is `scripts/bench-memory.sh`'s to measure. It also times the image
//! codec on that state (encode, and decode as a restore does it).
//!
//! ```text
//! cargo run --release -p nokv-holt --example memory_breakdown [N]   (default 1000000)
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use nokv_holt::{
    Applied, BlockRef, BodySpec, Command, EntryRef, Holt, HoltConfig, LogIndex, Op, PublishMode,
    RequestId,
};

/// The system allocator, counting the bytes it has handed out and not yet
/// taken back.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

struct Engine {
    holt: Holt,
    index: u64,
}

impl Engine {
    fn apply(&mut self, op: Op) -> Applied {
        self.index += 1;
        let cmd = Command {
            request_id: RequestId(u128::from(self.index)),
            epoch: None,
            time_ns: 1_700_000_000_000_000_000 + self.index,
            op,
        };
        match self.holt.apply(LogIndex(self.index), &cmd) {
            Ok(applied) => applied,
            Err(e) => panic!("benchmark op failed: {e}"),
        }
    }

    /// What `nokv put` publishes for a small file: one block, its sha256,
    /// a content type, no attributes.
    fn publish_one_block(&mut self, path: String, i: usize) {
        let Applied::Staged(upload) = self.apply(Op::BeginPublish {
            at: EntryRef::Path(path),
            mode: PublishMode::CreateOnly,
            lease_ns: 600_000_000_000,
            file_mode: 0o644,
            uid: 1000,
            gid: 1000,
        }) else {
            panic!("BeginPublish did not stage an upload");
        };
        // The key as the SDK names a block: its index and its sha256
        // (for a one-block body, the body's).
        let sha256 = format!("{i:064x}");
        let body = BodySpec {
            size: 4096,
            blocks: vec![BlockRef {
                key: format!("{}{:08}.{sha256}", upload.key_prefix(), 0),
                size: 4096,
            }],
            sha256,
            content_type: "application/octet-stream".into(),
            producer: String::new(),
            attrs: Default::default(),
        };
        self.apply(Op::CommitPublish {
            upload: upload.id,
            body,
        });
    }
}

/// Builds `n` files, 1,000 per directory, and prints the heap per part.
fn measure(n: usize, bodies: bool) {
    let start = live();
    let mut e = Engine {
        holt: Holt::new(HoltConfig::default()),
        index: 0,
    };
    e.apply(Op::Mkdir {
        at: EntryRef::Path("/data".into()),
        mode: 0o755,
        uid: 0,
        gid: 0,
        parents: false,
    });
    for i in 0..n {
        if i % 1000 == 0 {
            e.apply(Op::Mkdir {
                at: EntryRef::Path(format!("/data/d{}", i / 1000)),
                mode: 0o755,
                uid: 0,
                gid: 0,
                parents: false,
            });
        }
        let path = format!("/data/d{}/f{i:07}", i / 1000);
        if bodies {
            e.publish_one_block(path, i);
        } else {
            e.apply(Op::Create {
                at: EntryRef::Path(path),
                mode: 0o644,
                uid: 1000,
                gid: 1000,
            });
        }
    }
    let total = live() - start;
    let what = if bodies { "one-block body" } else { "empty" };
    println!("{n} files ({what}), 1,000 per directory: {total} bytes live");
    // What a restore pays for the layout: the image codec both ways.
    let clock = Instant::now();
    let image = e.holt.encode_image();
    let encoded = clock.elapsed();
    let clock = Instant::now();
    let decoded = Holt::decode_image(&image).map(|holt| holt == e.holt);
    println!(
        "  image {} bytes: encode {encoded:.2?}, decode {:.2?} (equal: {decoded:?})",
        image.len(),
        clock.elapsed()
    );
    drop(image);
    println!("  {:<28} {:>14} {:>12}", "part", "bytes", "per file");
    let mut last = live();
    e.holt.drop_in_parts(|part| {
        let now = live();
        let freed = last.saturating_sub(now);
        last = now;
        println!(
            "  {:<28} {:>14} {:>12.1}",
            part,
            freed,
            freed as f64 / n as f64
        );
    });
    println!(
        "  {:<28} {:>14} {:>12.1}",
        "total",
        total,
        total as f64 / n as f64
    );
}

fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    measure(n, false);
    measure(n, true);
}
