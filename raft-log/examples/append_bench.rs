//! Measures durable append throughput of `SledLogStore` with batches of 1 and 64 entries.
//!
//! Every append is flushed (fsync) before it is acknowledged, so the numbers mostly reflect
//! the disk's sync latency. Run on the disk you care about:
//!
//! ```text
//! cargo run --release -p nokv-raft-log --example append_bench -- [DIR] [SECONDS_PER_RUN]
//! ```
//!
//! `DIR` defaults to a fresh temporary directory (often tmpfs, i.e. optimistic).

// `declare_raft_types!` names `Cursor` unqualified for its default `SnapshotData`.
use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nokv_raft_log::SledLogStore;
use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

// Default type config: the application data is a `String`.
openraft::declare_raft_types!(BenchConfig);

/// Payload size of each entry, roughly a small metadata mutation.
const PAYLOAD_BYTES: usize = 128;

fn entry(index: u64) -> Entry<BenchConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal("x".repeat(PAYLOAD_BYTES)),
    }
}

async fn run(dir: &std::path::Path, batch: u64, duration: Duration) -> Result<(), String> {
    let run_dir = dir.join(format!("batch-{batch}"));
    let mut store =
        SledLogStore::<BenchConfig>::open(&run_dir).map_err(|e| format!("open: {e}"))?;

    let mut next_index = 1_u64;
    let mut appends = 0_u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let entries: Vec<_> = (next_index..next_index + batch).map(entry).collect();
        store
            .blocking_append(entries)
            .await
            .map_err(|e| format!("append: {e}"))?;
        next_index += batch;
        appends += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "batch {batch:>3}: {appends:>7} appends in {secs:.2}s = {:>9.0} appends/s, {:>10.0} entries/s",
        appends as f64 / secs,
        (appends * batch) as f64 / secs,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let temp_dir;
    let dir: PathBuf = match args.next() {
        Some(dir) => PathBuf::from(dir),
        None => {
            temp_dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
            temp_dir.path().to_path_buf()
        }
    };
    let seconds: u64 = match args.next() {
        Some(s) => s.parse().map_err(|e| format!("SECONDS_PER_RUN: {e}"))?,
        None => 3,
    };

    println!("dir: {}, {PAYLOAD_BYTES}-byte payloads", dir.display());
    for batch in [1, 64] {
        run(&dir, batch, Duration::from_secs(seconds)).await?;
    }
    Ok(())
}
