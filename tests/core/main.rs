//! Test binary `core`. In-process tests of the library: the language, the engine, configuration, rules, parsers and their corpora, golden PSRP decoding, transcripts, the polkit translation and the build graph.
//!
//! One binary per area (link time on 2 cores); each module below was once its own test file.

#[path = "../corpus_support/mod.rs"]
mod corpus_support;
#[path = "../engine_support/mod.rs"]
mod engine_support;
#[path = "../fixtures/prereq.rs"]
mod prereq;
#[path = "../psrp_common/mod.rs"]
mod psrp_common;
#[path = "../fixtures/config/shipped.rs"]
mod shipped;

mod auth_log;
mod build_deps;
mod config_check;
mod config_merge;
mod engine_corpus;
mod engine_props;
mod engine_run;
mod fuzz_corpus;
mod gateway_rules;
mod golden_psrp_decode;
mod lang_corpus;
mod lang_props;
mod polkit_rules;
mod psrp_props;
mod syscmd_parsers;
mod tidy;
mod transcript_records;
mod wsman_proptest;
