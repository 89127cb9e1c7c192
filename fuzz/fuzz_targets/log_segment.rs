//! Log segment decoding (`meta-node/src/archive.rs`): `decode_segment` of
//! the input (see `nokv_fuzz::frame::segment_input`: a selector byte, then
//! a whole segment or a body to put under a valid header). A decoded
//! segment must re-encode and decode to itself, and its commands, applied
//! in order as a restore does (to a copy of the sample state), must leave
//! the engine's invariants intact. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_holt::LogIndex;
use nokv_meta_node::archive::{decode_segment, encode_segment};
use openraft::EntryPayload;

use nokv_fuzz::frame::segment_input;
use nokv_fuzz::sample::{log_segment_seeds, sample_holt};
use nokv_fuzz::{assert_invariants, write_seeds_and_exit_if_asked};

/// Most commands applied from one input (decoding is not limited).
const MAX_APPLIED: usize = 256;

fuzz_target!(
    init: write_seeds_and_exit_if_asked(log_segment_seeds),
    |data: &[u8]| {
        let Some(bytes) = segment_input(data) else {
            return;
        };
        let Ok(segment) = decode_segment(&bytes) else {
            return;
        };
        let encoded = encode_segment(segment.prev_log_id, &segment.entries)
            .expect("a decoded segment encodes");
        let again = decode_segment(&encoded).expect("a segment we encoded decodes");
        assert!(again == segment, "the segment round trip is not the identity");

        let mut holt = sample_holt().clone();
        let mut applied = 0;
        for entry in &segment.entries {
            match &entry.payload {
                EntryPayload::Normal(payload) => {
                    for cmd in payload.commands() {
                        if applied == MAX_APPLIED {
                            break;
                        }
                        applied += 1;
                        let _ = holt.apply(LogIndex(entry.log_id.index), cmd);
                    }
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => {
                    holt.advance_epoch(LogIndex(entry.log_id.index));
                }
            }
        }
        if applied > 0 {
            assert_invariants(&holt, "the sample state after a segment's commands");
        }
    }
);
