//! `audit` writes transcripts (one file per session) and the JSON-lines audit log.
#![forbid(unsafe_code)]
