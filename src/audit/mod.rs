//! `audit` writes transcripts (one file per session) and the JSON-lines audit log.
#![forbid(unsafe_code)]

mod log;
mod transcript;

pub use log::{AuditDecision, AuditEvent, AuditGate, AuditKind, AuditLog};
pub use transcript::{Transcript, TranscriptHeader};

/// Version written into transcripts.
pub const KEYHOLE_VERSION: &str = env!("CARGO_PKG_VERSION");
