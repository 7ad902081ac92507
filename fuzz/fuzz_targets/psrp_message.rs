//! cargo-fuzz target `psrp_message`: the logic lives in `keyhole_fuzz::psrp_message` (fuzz/src/lib.rs), which
//! tests/fuzz_corpus.rs also runs over fuzz/corpus/psrp_message/ without nightly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyhole_fuzz::psrp_message(data);
});
