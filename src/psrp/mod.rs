//! `psrp` is sans-IO: fragments ↔ messages ↔ CLIXML ↔ engine calls. It never touches a socket.
#![forbid(unsafe_code)]
