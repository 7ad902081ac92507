//! cargo-fuzz target `lang_parse`: the logic lives in `keyhole_fuzz::lang_parse` (fuzz/src/lib.rs), which
//! tests/core/fuzz_corpus.rs also runs over fuzz/corpus/lang_parse/ without nightly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyhole_fuzz::lang_parse(data);
});
