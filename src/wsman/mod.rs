//! `wsman` is the HTTP service: SOAP envelopes, operations, faults, limits, shell registry.
#![forbid(unsafe_code)]

pub mod shell;
