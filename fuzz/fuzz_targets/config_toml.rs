//! cargo-fuzz target `config_toml`: the logic lives in `keyhole_fuzz::config_toml` (fuzz/src/lib.rs), which
//! tests/core/fuzz_corpus.rs also runs over fuzz/corpus/config_toml/ without nightly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyhole_fuzz::config_toml(data);
});
