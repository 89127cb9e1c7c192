//! State image decoding (`holt/src/image.rs`): `Holt::decode_image` of the
//! input (see `nokv_fuzz::frame::image_input`: a selector byte, then a
//! whole image or a body to put under a valid header of version 5, 4 or
//! 3). A decoded state must pass the invariant checker, encode to an image
//! that decodes to the same state and re-encodes to the same bytes, and
//! stay consistent under reads, new commands (which allocate from every
//! counter the image holds) and the leader's housekeeping. Nothing may
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_holt::{
    Applied, BlockRef, Command, Holt, InodeRef, LogIndex, Op, PublishMode, Query, RequestId,
};

use nokv_fuzz::frame::image_input;
use nokv_fuzz::sample::{body_spec, path, state_image_seeds};
use nokv_fuzz::{assert_image_round_trip, assert_invariants, write_seeds_and_exit_if_asked};

fuzz_target!(
    init: write_seeds_and_exit_if_asked(state_image_seeds),
    |data: &[u8]| {
        let Some(bytes) = image_input(data) else {
            return;
        };
        let Ok(holt) = Holt::decode_image(&bytes) else {
            return;
        };
        assert_invariants(&holt, "a decoded image");
        assert_image_round_trip(&holt, "a decoded image");

        // Reads over the whole restored state.
        for q in [
            Query::ReadDirBodies { dir: InodeRef::Path("/".into()), after: None, limit: 0 },
            Query::ListUploads,
            Query::ListSnapshots,
            Query::Grafts,
            Query::IndexedFields { dir: InodeRef::Path("/".into()) },
        ] {
            let _ = holt.query(&q);
        }
        for info in holt.snapshots() {
            let _ = holt.query(&Query::AtSnapshot {
                snapshot: info.id,
                query: Box::new(Query::ReadDirBodies {
                    dir: InodeRef::Path(info.path.clone()),
                    after: None,
                    limit: 0,
                }),
            });
        }
        let _ = holt.events(0, "/", true, 0);
        let _ = (holt.live_blocks(), holt.referenced_prefixes(), holt.gc_tasks(16));

        // New work on the restored state (every allocation counter:
        // inodes, uploads, generations, pins, events, GC tasks), then the
        // leader's housekeeping.
        let mut holt = holt;
        let mut n = 0u128;
        let mut apply = |holt: &mut Holt, op: Op| {
            n += 1;
            let cmd = Command {
                // Request ids the image's dedupe table is unlikely to hold.
                request_id: RequestId(u128::MAX - n),
                epoch: None,
                time_ns: u64::MAX / 2,
                op,
            };
            let index = LogIndex(holt.last_applied().0.saturating_add(1));
            let outcome = holt.apply(index, &cmd);
            assert_invariants(holt, &format!("a decoded image after {:?}", cmd.op));
            outcome
        };
        let _ = apply(&mut holt, Op::Mkdir { at: path("/fz"), mode: 0o755, uid: 0, gid: 0, parents: true });
        let _ = apply(&mut holt, Op::Create { at: path("/fz/f"), mode: 0o644, uid: 0, gid: 0 });
        let begin = Op::BeginPublish {
            at: path("/fz/p"),
            mode: PublishMode::Upsert,
            lease_ns: 1_000_000_000,
            file_mode: 0o644,
            uid: 0,
            gid: 0,
        };
        if let Ok(Applied::Staged(upload)) = apply(&mut holt, begin) {
            let blocks = vec![BlockRef { key: format!("{}b0", upload.key_prefix()), size: 1 }];
            let _ = apply(&mut holt, Op::CommitPublish { upload: upload.id, body: body_spec(blocks) });
        }
        let _ = apply(&mut holt, Op::CreateSnapshot { path: "/".into(), lease_ns: 1_000_000_000 });
        let _ = apply(&mut holt, Op::Unlink { at: path("/fz/p") });
        let _ = apply(&mut holt, Op::ExpireSnapshots { now_ns: u64::MAX });
        let _ = apply(&mut holt, Op::ExpireUploads { now_ns: u64::MAX });
        let seqs = holt.all_gc_tasks().iter().map(|t| t.seq).collect();
        let _ = apply(&mut holt, Op::GcDone { seqs });
    }
);
