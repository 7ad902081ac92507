//! Test binary `cli`. The `keyhole` command line as an administrator uses it: check, capability, run (and its corpora), user and rule, demo, init.
//!
//! One binary per area (link time on 2 cores); each module below was once its own test file.

#[path = "../corpus_support/mod.rs"]
mod corpus_support;
#[path = "../fixtures/config/shipped.rs"]
mod shipped;

mod cli_budgets;
mod cli_capability;
mod cli_corpus;
mod cli_demo;
mod cli_init;
mod cli_objects;
mod cli_run;
mod cli_user_rule;
