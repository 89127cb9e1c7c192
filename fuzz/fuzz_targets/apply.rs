//! `Holt::apply` over arbitrary command sequences: the input is a
//! structure-aware program (`nokv_fuzz::model`) of namespace, publish,
//! snapshot, graft, watch and housekeeping commands over a few names,
//! interleaved with retries, epoch changes, time passing and reads. The
//! invariant checker runs after every step and the image round trip at the
//! end; a retried request must get its first outcome, a command of another
//! epoch must be refused without effect. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_fuzz::model::{run, Program};

fuzz_target!(|program: Program| {
    run(&program);
});
