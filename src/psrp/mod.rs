//! `psrp` is sans-IO: fragments ↔ messages ↔ CLIXML ↔ objects, and the runspace pool and
//! pipeline state machines (`pool`). It never touches a socket, spawns a thread, sleeps or
//! knows WS-Man: `shells::psrp` runs pipelines and answers WS-Man on top of it.
#![forbid(unsafe_code)]

pub mod clixml;
mod error;
pub mod fragment;
pub mod message;
pub mod objects;
pub mod pool;

pub use error::{ClixmlError, FragmentError, Malformed, MessageError, ProtocolError, Unsupported};
