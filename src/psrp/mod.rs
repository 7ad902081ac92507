//! `psrp` is sans-IO: fragments ↔ messages ↔ CLIXML ↔ objects, and the runspace pool and
//! pipeline state machines (`pool`). It never touches a socket, spawns a thread, sleeps or
//! knows WS-Man: `shells::psrp` runs pipelines and answers WS-Man on top of it.
#![forbid(unsafe_code)]

pub mod clixml;
pub mod fragment;
pub mod message;
pub mod objects;
pub mod pool;

/// What can be wrong with what a PSRP client sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("PSRP fragment error: {0}")]
    Fragment(String),
    #[error("PSRP message error: {0}")]
    Message(String),
    #[error("PSRP CLIXML error: {0}")]
    Clixml(String),
    /// A message that is valid but not allowed now: "X is invalid in state Y".
    #[error("PSRP: {message} is invalid in state {state}")]
    InvalidState { message: String, state: String },
    /// A message keyhole does not implement.
    #[error("PSRP: {0} is not supported by keyhole")]
    Unsupported(String),
    /// A message whose CLIXML lacks something required.
    #[error("PSRP: {0}")]
    Malformed(String),
}
