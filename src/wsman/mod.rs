//! `wsman`: WS-Management over authenticated request bodies — SOAP envelopes, operations,
//! faults, limits, the shell registry, and `shell`, the contract with what sits above (gate 2,
//! shell factories, shells). It knows no HTTP listener, no engine and no shell implementation.
#![forbid(unsafe_code)]

pub mod envelope;
pub mod fault;
pub mod registry;
pub mod response;
pub mod service;
pub mod shell;
pub mod work;
pub mod xml;
