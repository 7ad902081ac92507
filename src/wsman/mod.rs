//! `wsman` is the HTTP service: SOAP envelopes, operations, faults, limits, shell registry.
#![forbid(unsafe_code)]

pub mod envelope;
pub mod fault;
pub mod registry;
pub mod response;
pub mod service;
pub mod shell;
pub mod testing;
pub mod xml;
