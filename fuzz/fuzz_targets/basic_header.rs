//! cargo-fuzz target `basic_header`: the logic lives in `keyhole_fuzz::basic_header` (fuzz/src/lib.rs), which
//! tests/core/fuzz_corpus.rs also runs over fuzz/corpus/basic_header/ without nightly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyhole_fuzz::basic_header(data);
});
