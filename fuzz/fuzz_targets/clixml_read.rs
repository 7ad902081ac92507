//! cargo-fuzz target `clixml_read`: the logic lives in `keyhole_fuzz::clixml_read` (fuzz/src/lib.rs), which
//! tests/fuzz_corpus.rs also runs over fuzz/corpus/clixml_read/ without nightly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyhole_fuzz::clixml_read(data);
});
