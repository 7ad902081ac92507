//! cargo-fuzz target `wsman_envelope`: the logic lives in `keyhole_fuzz::wsman_envelope` (fuzz/src/lib.rs), which
//! tests/fuzz_corpus.rs also runs over fuzz/corpus/wsman_envelope/ without nightly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyhole_fuzz::wsman_envelope(data);
});
