//! `psrp` is sans-IO: fragments ↔ messages ↔ CLIXML ↔ engine calls. It never touches a socket.
#![forbid(unsafe_code)]

pub mod clixml;
mod error;
pub mod fragment;
pub mod message;
pub mod objects;
pub mod pool;

pub use error::{ClixmlError, FragmentError, Malformed, MessageError, ProtocolError, Unsupported};
pub use pool::{PsrpEngine, PsrpShell};
