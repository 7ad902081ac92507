//! `config` is pure data plus validation: loading `keyhole.toml`, endpoints, role capabilities,
//! rules and users, with `file:line:col` diagnostics.
#![forbid(unsafe_code)]

pub mod diag;
pub mod edit;
pub mod keytab;
pub mod listener;
mod load;
pub mod shipped;
mod types;
pub mod validate;
pub use load::{load, MAX_CONFIG_FILE_BYTES, MAX_FILES_PER_DIR, MAX_RULES_FILE_BYTES};
pub(crate) use load::{load_with, Ctx};
pub use types::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Read a file named by the configuration: it must be a regular file (a FIFO would block, a
/// device such as `/dev/zero` would never end) of at most `max` bytes. `Ok(None)` when it does
/// not exist.
pub fn read_regular_file(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory, not a file",
        ));
    }
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is not a regular file (a device, FIFO or socket); point the setting at a file",
        ));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "file is {} bytes, more than the {max}-byte limit",
                meta.len()
            ),
        ));
    }
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("file grew past the {max}-byte limit while being read"),
        ));
    }
    Ok(Some(buf))
}

/// Largest PEM file (certificate, key, CA bundle) keyhole reads.
pub const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// Severity of a configuration diagnostic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One configuration problem, located precisely.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file as a whole.
    pub line: usize,
    pub col: usize,
    pub message: String,
    /// `file:line:col: message` followed by a caret excerpt, ready to print.
    pub rendered: String,
}

/// A role capability file, loaded.
#[derive(Debug, Clone)]
pub struct LoadedCapability {
    /// The file stem, as written.
    pub name: String,
    pub file: PathBuf,
    pub config: RoleCapabilityConfig,
    /// Declared functions with their parameters parsed, in file order.
    pub functions: Vec<ResolvedFunction>,
}

#[derive(Debug, Clone)]
pub struct ResolvedFunction {
    pub name: String,
    pub def: FunctionDef,
    /// In file order.
    pub params: Vec<(String, FunctionParam)>,
    /// Where it was declared (capability name).
    pub capability: String,
}

#[derive(Debug, Clone)]
pub struct LoadedEndpoint {
    pub file: PathBuf,
    pub config: EndpointConfig,
}

/// Everything the server runs on, validated.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The keyhole.toml path (may not exist: defaults apply).
    pub path: PathBuf,
    /// Directory every relative path resolves against.
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub endpoints: Vec<LoadedEndpoint>,
    /// Keyed by lower-case capability name.
    pub capabilities: BTreeMap<String, LoadedCapability>,
    pub rules: RulesFile,
    pub users: UsersFile,
    /// Warnings found while loading (errors make `load` fail).
    pub warnings: Vec<Diagnostic>,
}

impl LoadedConfig {
    /// Resolve a path from the configuration against `base_dir`.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let pb = Path::new(p);
        if pb.is_absolute() {
            pb.to_path_buf()
        } else {
            self.base_dir.join(pb)
        }
    }
    /// Endpoint by name, case-insensitive.
    pub fn endpoint(&self, name: &str) -> Option<&LoadedEndpoint> {
        self.endpoints
            .iter()
            .find(|e| e.config.name.eq_ignore_ascii_case(name))
    }
}
