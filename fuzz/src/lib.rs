//! Code shared by the fuzz targets in `fuzz_targets/` (see
//! `docs/security.md`, "Fuzzing"):
//! - [`frame`]: wraps a fuzzed body in a valid image or segment header, so
//!   the fuzzer spends its time inside the decoders rather than failing
//!   the checksum;
//! - [`sample`]: a small but varied engine state (every kind of inode, a
//!   published and an indexed body, a staged upload, GC tasks, a pin, a
//!   graft, watch history), commands and messages built from it, and the
//!   seed inputs of each target;
//! - [`model`]: the structure-aware command model of the `apply` target.
//!
//! Every target checks the invariants of any engine state it ends up
//! with; a broken invariant, like a panic, is a crash.

pub mod frame;
pub mod model;
pub mod sample;

use nokv_holt::Holt;

/// Panics (a fuzzer crash) unless `holt` passes the engine's invariant
/// checker; `what` says which state it was.
pub fn assert_invariants(holt: &Holt, what: &str) {
    if let Err(broken) = holt.fuzz_check_invariants() {
        panic!("{what}: invariant broken: {broken}");
    }
}

/// Encodes `holt`, decodes it again and checks that the round trip is the
/// identity (state and bytes).
pub fn assert_image_round_trip(holt: &Holt, what: &str) {
    let bytes = holt.encode_image();
    let back = match Holt::decode_image(&bytes) {
        Ok(back) => back,
        Err(e) => panic!("{what}: its own image does not decode: {e}"),
    };
    assert!(back == *holt, "{what}: the decoded image differs");
    assert!(
        back.encode_image() == bytes,
        "{what}: re-encoding the decoded image gives other bytes"
    );
}

/// When `NOKV_FUZZ_WRITE_SEEDS` names a directory, writes `seeds` there
/// (as `seed-<name>`) and exits: `scripts/fuzz.sh seeds` regenerates the
/// committed seed corpora this way, from the same build as the targets.
pub fn write_seeds_and_exit_if_asked(seeds: impl FnOnce() -> Vec<(String, Vec<u8>)>) {
    let Some(dir) = std::env::var_os("NOKV_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    for (name, bytes) in seeds() {
        let path = dir.join(format!("seed-{name}"));
        if let Err(e) = std::fs::write(&path, &bytes) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    std::process::exit(0);
}
