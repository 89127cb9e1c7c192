//! Snapshot pins in the engine alone (no Raft, no disk): how long creating
//! a pin takes at 10^3, 10^4 and 10^5 entries, and what live pins cost
//! later writes. A benchmark, not a test: it prints, it asserts nothing.
//!
//! ```text
//! cargo run --release -p nokv-holt --example snapshot_bench
//! ```

use std::time::{Duration, Instant};

use nokv_holt::{Applied, Command, EntryRef, Holt, HoltConfig, LogIndex, Op, RequestId};

struct Engine {
    holt: Holt,
    index: u64,
}

impl Engine {
    fn new() -> Engine {
        Engine {
            holt: Holt::new(HoltConfig::default()),
            index: 0,
        }
    }

    fn apply(&mut self, op: Op) -> Applied {
        self.index += 1;
        let cmd = Command {
            request_id: RequestId(u128::from(self.index)),
            epoch: None,
            time_ns: 1_000_000 + self.index,
            op,
        };
        match self.holt.apply(LogIndex(self.index), &cmd) {
            Ok(applied) => applied,
            Err(e) => panic!("benchmark op failed: {e}"),
        }
    }

    fn create(&mut self, path: String) {
        self.apply(Op::Create {
            at: EntryRef::Path(path),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
    }

    fn mkdir(&mut self, path: String) {
        self.apply(Op::Mkdir {
            at: EntryRef::Path(path),
            mode: 0o755,
            uid: 0,
            gid: 0,
            parents: false,
        });
    }

    /// `n` files, 1,000 per directory under /data.
    fn fill(&mut self, n: usize) {
        self.mkdir("/data".into());
        for i in 0..n {
            if i % 1000 == 0 {
                self.mkdir(format!("/data/d{}", i / 1000));
            }
            self.create(format!("/data/d{}/f{i}", i / 1000));
        }
    }

    fn snapshot(&mut self, path: &str) -> Duration {
        let t = Instant::now();
        self.apply(Op::CreateSnapshot {
            path: path.into(),
            lease_ns: 3_600_000_000_000,
        });
        t.elapsed()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!("snapshot creation (median of 101, engine only):");
    for n in [1_000usize, 10_000, 100_000] {
        let mut e = Engine::new();
        e.fill(n);
        let times: Vec<Duration> = (0..101).map(|_| e.snapshot("/data")).collect();
        println!(
            "  {n:>7} entries: {:>8.2} µs (max {:.2} µs)",
            median(times.clone()).as_secs_f64() * 1e6,
            times.iter().max().map_or(0.0, |d| d.as_secs_f64() * 1e6)
        );
    }

    println!("creates/s into a 100,000-entry namespace, 20,000 creates:");
    for pins in [0usize, 10, 0, 10] {
        let mut e = Engine::new();
        e.fill(100_000);
        let writes: usize = 20_000;
        let every = writes.checked_div(pins).unwrap_or(usize::MAX);
        let t = Instant::now();
        for i in 0..writes {
            // Pins taken along the way, so later writes copy shared paths.
            if i % every == 0 {
                e.snapshot("/data");
            }
            e.create(format!("/data/d{}/w{i}", i % 100));
        }
        let secs = t.elapsed().as_secs_f64();
        let image = e.holt.encode_image();
        println!(
            "  {pins:>2} live pins: {:>9.0} creates/s; image {:.1} MiB",
            writes as f64 / secs,
            image.len() as f64 / (1024.0 * 1024.0)
        );
    }
}
