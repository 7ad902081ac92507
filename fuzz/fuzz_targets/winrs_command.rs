//! cargo-fuzz target `winrs_command`: the logic lives in `keyhole_fuzz::winrs_command` (fuzz/src/lib.rs), which
//! tests/fuzz_corpus.rs also runs over fuzz/corpus/winrs_command/ without nightly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyhole_fuzz::winrs_command(data);
});
