//! cargo-fuzz target `proc_parsers`: the logic lives in `keyhole_fuzz::proc_parsers` (fuzz/src/lib.rs), which
//! tests/core/fuzz_corpus.rs also runs over fuzz/corpus/proc_parsers/ without nightly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyhole_fuzz::proc_parsers(data);
});
