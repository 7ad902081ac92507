//! keyhole: a Just-Enough-Administration remoting endpoint server for Linux.
//!
//! Layers (see ARCHITECTURE.md): `lang` → `engine` → `commands`/`sandbox`, configured by
//! `config` + `capability`, audited by `audit`, reached through `wsman` (WinRS, `psrp`).
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod audit;
pub mod auth;
pub mod capability;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod gates;
pub mod gateway;
pub mod lang;
pub mod psrp;
pub mod psrp_factory;
pub mod sandbox;
pub mod server;
pub mod sys;
pub mod winrs;
pub mod wsman;
