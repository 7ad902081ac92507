//! x
#![forbid(unsafe_code)]
use std::sync::Arc;
use crate::engine::Command;
pub fn commands() -> Vec<Arc<dyn Command>> { Vec::new() }
