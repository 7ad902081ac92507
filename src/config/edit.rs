//! Atomic edits of the files keyhole manages (`users.toml`, the rules file): read bounded, edit
//! in place keeping comments and layout, replace atomically with mode 0600 under a directory
//! lock. `auth` (users) and `rules` (gate 3) both write through here.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The new text of a managed file holding `expected`: the old text edited in place by `edit`
/// (comments and layout kept) when that edit parses back to exactly `expected`; otherwise
/// `expected` serialized afresh under `header`.
pub fn render_preserving<T>(
    old_text: Option<&str>,
    expected: &T,
    header: &str,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Option<()>,
) -> Result<String, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq,
{
    if let Some(old) = old_text {
        if let Ok(mut doc) = old.parse::<toml_edit::DocumentMut>() {
            if edit(&mut doc).is_some() {
                let text = doc.to_string();
                if toml::from_str::<T>(&text).ok().as_ref() == Some(expected) {
                    return Ok(text);
                }
            }
        }
    }
    toml::to_string(expected)
        .map(|t| format!("{header}{t}"))
        .map_err(|e| e.to_string())
}

/// Reads a whole UTF-8 file of at most `max` bytes (`InvalidData` beyond).
pub fn read_bounded(path: &Path, max: u64) -> io::Result<String> {
    let buf = crate::config::read_regular_file(path, max)?
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    String::from_utf8(buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8 text"))
}

/// The file a write to `path` replaces (a symbolic link is followed) and its directory.
fn resolve_target(path: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let path = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path)?,
        _ => path.to_path_buf(),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((path, dir))
}

/// An exclusive advisory lock (flock) on the directory of `path`, held while a managed file is
/// read, changed and replaced, so that two concurrent `keyhole rule`/`keyhole user` runs
/// cannot lose each other's change. Released when dropped.
pub fn lock_dir_of(path: &Path) -> io::Result<nix::fcntl::Flock<fs::File>> {
    let (_, dir) = resolve_target(path)?;
    let f = fs::File::open(&dir)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))
}

/// Replaces `path` atomically with `contents`, mode 0600: a temporary file in the same
/// directory (created 0600), written and fsynced, renamed over `path`, then the directory
/// fsynced. A reader sees the old file or the new one, never a mix; on error `path` is intact.
///
/// When `path` is a symbolic link (a rules file shared between servers, say), the file it
/// points to is replaced and the link is kept.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let (path, dir) = resolve_target(path)?;
    let path = path.as_path();
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{:016x}",
        file_name.to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only remove bits; make the mode exact.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
