//! `nokv bench snapshot`: what a state-machine snapshot costs one replica,
//! in process (no cluster): the copy of the state taken under the state
//! lock (every apply and linearizable read waits for it), the encoding of
//! the image (outside the lock), and decoding it (a restore, a snapshot
//! installed on a follower).
//!
//! The state has the soak's shape: `--files` live files, created and
//! removed until the dedupe table and the watch history are full (100,000
//! each by default), the state a busy shard keeps.

use std::time::{Duration, Instant};

use nokv_holt::{Command, EntryRef, Holt, HoltConfig, LogIndex, Op, RequestId};
use serde_json::json;

use crate::bench::BenchArgs;
use crate::output::print_json;
use crate::GlobalArgs;

/// Timed repetitions of each step; the median is reported.
const ROUNDS: usize = 5;

fn command(request: u128, time_ns: u64, op: Op) -> Command {
    Command {
        request_id: RequestId(request),
        epoch: None,
        time_ns,
        op,
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(args: &BenchArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let live = args.files.max(1);
    let config = HoltConfig::default();
    // Enough steps to fill the dedupe table and the history (one event per
    // create and per unlink) with `live` files left at the end.
    let fill = config
        .dedupe_capacity
        .max(nokv_holt::watch::DEFAULT_MAX_EVENTS as usize);
    let mut holt = Holt::new(config);
    let started = Instant::now();
    let (mut index, mut request) = (0u64, 0u128);
    let mut apply = |holt: &mut Holt, op: Op| -> anyhow::Result<()> {
        index += 1;
        request += 1;
        holt.apply(LogIndex(index), &command(request, index, op))
            .map(drop)
            .map_err(|e| anyhow::anyhow!("building the state: {e}"))
    };
    for i in 0..(fill + live) {
        apply(
            &mut holt,
            Op::Create {
                at: EntryRef::Path(format!("/f{i}")),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        )?;
        if i >= live {
            apply(
                &mut holt,
                Op::Unlink {
                    at: EntryRef::Path(format!("/f{}", i - live)),
                },
            )?;
        }
    }
    let built = started.elapsed();
    let applies = holt.last_applied().0;
    let (mut copies, mut encodes, mut decodes) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let copy = holt.clone();
        copies.push(t.elapsed());
        let t = Instant::now();
        let image = copy.encode_image();
        encodes.push(t.elapsed());
        bytes = image.len();
        let t = Instant::now();
        let back = Holt::decode_image(&image)?;
        decodes.push(t.elapsed());
        anyhow::ensure!(
            back == holt,
            "the decoded state differs from the encoded one"
        );
    }
    let stats = holt.stats();
    let (copy, encode, decode) = (median(copies), median(encodes), median(decodes));
    if g.json {
        print_json(&json!({
            "workload": "snapshot",
            "live_files": stats.inodes - 1,
            "dedupe_entries": stats.dedupe_entries,
            "applies": applies,
            "applies_per_s": applies as f64 / built.as_secs_f64(),
            "copy_ms": ms(copy),
            "encode_ms": ms(encode),
            "decode_ms": ms(decode),
            "image_bytes": bytes,
        }));
    } else {
        outln!(
            "state: {} live files, {} remembered outcomes, {} applies ({:.0}/s)",
            stats.inodes - 1,
            stats.dedupe_entries,
            applies,
            applies as f64 / built.as_secs_f64()
        );
        outln!(
            "snapshot (median of {ROUNDS}): copy under the state lock {:.3} ms, encode {:.1} ms \
             ({:.1} MiB), decode {:.1} ms",
            ms(copy),
            ms(encode),
            bytes as f64 / (1 << 20) as f64,
            ms(decode)
        );
    }
    Ok(())
}
