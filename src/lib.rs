//! keyhole: a Just-Enough-Administration remoting endpoint server for Linux.
//!
//! Layers (see ARCHITECTURE.md): `lang` → `engine` → `commands`/`sandbox`, configured by
//! `config` + `capability`, audited by `audit`, reached through `wsman` (WinRS, `psrp`).
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod audit;
pub mod auth;
pub mod capability;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod gates;
pub mod http;
pub mod init;
pub mod lang;
pub mod metrics;
pub mod polkit;
pub mod psrp;
pub mod rules;
pub mod sandbox;
pub mod shells;
pub mod sys;
pub mod systemd;
pub mod wsman;
