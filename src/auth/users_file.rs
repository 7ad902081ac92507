//! `users.toml` management behind `keyhole user`: add, passwd, remove, list, and reading a
//! password from the terminal (echo off) or one line of standard input — never an argument.
#![forbid(unsafe_code)]

use std::io::{self, BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;

use argon2::password_hash::{PasswordHasher as _, SaltString};
use argon2::Argon2;

use super::{AuthError, MAX_PASSWORD_LEN};
use crate::config::edit::{lock_dir_of, read_bounded, render_preserving, write_atomic};
use crate::config::{UserEntry, UsersFile};

/// Largest users file read (bytes).
pub const MAX_USERS_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Longest user name `keyhole user add` accepts.
pub const MAX_USER_NAME_LEN: usize = 64;
/// Longest group name accepted.
pub const MAX_GROUP_NAME_LEN: usize = 256;
/// Most groups one user may be given.
pub const MAX_GROUPS_PER_USER: usize = 256;

/// Reads `users.toml`; a missing file means no local accounts.
pub fn load_users(path: &Path) -> Result<UsersFile, AuthError> {
    load_users_with_text(path).map(|(users, _)| users)
}

/// The parsed accounts and the file's text (`None` when the file does not exist).
fn load_users_with_text(path: &Path) -> Result<(UsersFile, Option<String>), AuthError> {
    let text = match read_bounded(path, MAX_USERS_FILE_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((UsersFile::default(), None)),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let users = toml::from_str(&text).map_err(|e| AuthError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    Ok((users, Some(text)))
}

const USERS_HEADER: &str =
    "# keyhole local accounts. Managed by `keyhole user`; passwords are argon2id hashes.\n";

/// Writes `users` atomically (0600), editing the old text in place when possible so that
/// comments and layout survive.
fn save_users(
    path: &Path,
    old_text: Option<&str>,
    users: &UsersFile,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Option<()>,
) -> Result<(), AuthError> {
    let text =
        render_preserving(old_text, users, USERS_HEADER, edit).map_err(|e| AuthError::Write {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
    write_atomic(path, text.as_bytes()).map_err(|source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The `[users]` table of a document (created implicit when missing).
fn users_table(doc: &mut toml_edit::DocumentMut) -> Option<&mut dyn toml_edit::TableLike> {
    doc.as_table_mut()
        .entry("users")
        .or_insert_with(|| {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            toml_edit::Item::Table(t)
        })
        .as_table_like_mut()
}

/// 1–64 characters of `[A-Za-z0-9._@-]`.
pub fn validate_user_name(name: &str) -> Result<(), AuthError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if name.is_empty() || name.len() > MAX_USER_NAME_LEN || !name.chars().all(ok_char) {
        return Err(AuthError::InvalidName(name.escape_debug().to_string()));
    }
    Ok(())
}

fn validate_groups(groups: &[String]) -> Result<(), AuthError> {
    if groups.len() > MAX_GROUPS_PER_USER {
        return Err(AuthError::InvalidGroup(format!(
            "more than {MAX_GROUPS_PER_USER} groups"
        )));
    }
    for g in groups {
        if g.trim().is_empty() || g.len() > MAX_GROUP_NAME_LEN || g.chars().any(char::is_control) {
            return Err(AuthError::InvalidGroup(format!(
                "{:?}: a group name is 1 to {MAX_GROUP_NAME_LEN} bytes without control characters",
                g
            )));
        }
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), AuthError> {
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AuthError::PasswordTooLong);
    }
    Ok(())
}

/// An argon2id PHC string for `password` (default parameters, random 16-byte salt).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    check_password(password)?;
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// The key of `name` in the file, compared case-insensitively.
fn find_key(users: &UsersFile, name: &str) -> Option<String> {
    let lower = name.to_lowercase();
    users
        .users
        .keys()
        .find(|k| k.to_lowercase() == lower)
        .cloned()
}

/// `keyhole user add NAME [--group G]...` (no NT hash: see [`user_add_ntlm`]).
pub fn user_add(
    path: &Path,
    name: &str,
    groups: &[String],
    password: &str,
) -> Result<(), AuthError> {
    user_add_ntlm(path, name, groups, password, false)
}

/// `keyhole user add`; with `store_nt_hash` (`[auth] ntlm = true`) the entry also gets the
/// password's NT hash for NTLM.
pub fn user_add_ntlm(
    path: &Path,
    name: &str,
    groups: &[String],
    password: &str,
    store_nt_hash: bool,
) -> Result<(), AuthError> {
    let _lock = lock_dir_of(path).map_err(|source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    validate_user_name(name)?;
    validate_groups(groups)?;
    check_password(password)?;
    let (mut users, old_text) = load_users_with_text(path)?;
    if let Some(existing) = find_key(&users, name) {
        return Err(AuthError::UserExists {
            name: existing,
            path: path.to_path_buf(),
        });
    }
    let entry = UserEntry {
        password: hash_password(password)?,
        groups: groups.to_vec(),
        disabled: false,
        client_certificates: Vec::new(),
        nt_hash: store_nt_hash.then(|| super::ntlm::nt_hash_hex(password)),
    };
    let mut table = toml_edit::Table::new();
    table.insert("password", toml_edit::value(entry.password.as_str()));
    table.insert(
        "groups",
        toml_edit::value(
            groups
                .iter()
                .map(String::as_str)
                .collect::<toml_edit::Array>(),
        ),
    );
    table.insert("disabled", toml_edit::value(false));
    if let Some(h) = &entry.nt_hash {
        table.insert("nt_hash", toml_edit::value(h.as_str()));
    }
    users.users.insert(name.to_string(), entry);
    save_users(path, old_text.as_deref(), &users, |doc| {
        users_table(doc)?.insert(name, toml_edit::Item::Table(table));
        Some(())
    })
}

/// `keyhole user passwd NAME` (removes any NT hash: see [`user_passwd_ntlm`]).
pub fn user_passwd(path: &Path, name: &str, password: &str) -> Result<(), AuthError> {
    user_passwd_ntlm(path, name, password, false)
}

/// `keyhole user passwd NAME`: a new argon2id hash, and with `store_nt_hash` (`[auth] ntlm =
/// true`) the new password's NT hash. Without it any NT hash is removed: it would still let the
/// old password in through NTLM.
pub fn user_passwd_ntlm(
    path: &Path,
    name: &str,
    password: &str,
    store_nt_hash: bool,
) -> Result<(), AuthError> {
    let _lock = lock_dir_of(path).map_err(|source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    check_password(password)?;
    let (mut users, old_text) = load_users_with_text(path)?;
    let key = find_key(&users, name).ok_or_else(|| AuthError::NoSuchUser {
        name: name.to_string(),
        path: path.to_path_buf(),
    })?;
    let hash = hash_password(password)?;
    let nt = store_nt_hash.then(|| super::ntlm::nt_hash_hex(password));
    if let Some(entry) = users.users.get_mut(&key) {
        entry.password = hash.clone();
        entry.nt_hash = nt.clone();
    }
    save_users(path, old_text.as_deref(), &users, |doc| {
        let entry = users_table(doc)?.get_mut(&key)?.as_table_like_mut()?;
        entry.insert("password", toml_edit::value(hash.as_str()));
        match &nt {
            Some(h) => {
                entry.insert("nt_hash", toml_edit::value(h.as_str()));
            }
            None => {
                entry.remove("nt_hash");
            }
        }
        Some(())
    })
}

/// `keyhole user remove NAME`.
pub fn user_remove(path: &Path, name: &str) -> Result<(), AuthError> {
    let _lock = lock_dir_of(path).map_err(|source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    let (mut users, old_text) = load_users_with_text(path)?;
    let key = find_key(&users, name).ok_or_else(|| AuthError::NoSuchUser {
        name: name.to_string(),
        path: path.to_path_buf(),
    })?;
    users.users.remove(&key);
    save_users(path, old_text.as_deref(), &users, |doc| {
        users_table(doc)?.remove(&key)?;
        Some(())
    })
}

/// `keyhole user list`: (name, groups, disabled), sorted by name.
pub fn user_list(path: &Path) -> Result<Vec<(String, Vec<String>, bool)>, AuthError> {
    let users = load_users(path)?;
    Ok(users
        .users
        .into_iter()
        .map(|(n, e)| (n, e.groups, e.disabled))
        .collect())
}

/// Restores the terminal's settings when dropped.
struct EchoGuard {
    saved: nix::sys::termios::Termios,
}

impl Drop for EchoGuard {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// Reads a password: from the terminal with echo off when standard input is one (the prompt
/// goes to standard error), else one line of standard input. The trailing newline is removed.
pub fn read_password(prompt: &str) -> io::Result<String> {
    let stdin = io::stdin();
    let _guard = if stdin.is_terminal() {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let saved = tcgetattr(&stdin).map_err(io::Error::from)?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        let mut err = io::stderr();
        let _ = write!(err, "{prompt}");
        let _ = err.flush();
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(io::Error::from)?;
        Some(EchoGuard { saved })
    } else {
        None
    };
    read_password_line(stdin.lock())
}

/// One line of at most `MAX_PASSWORD_LEN` bytes, without its line ending.
pub fn read_password_line<R: io::BufRead>(reader: R) -> io::Result<String> {
    let mut line = String::new();
    let limit = (MAX_PASSWORD_LEN as u64).saturating_add(2);
    let n = reader.take(limit).read_line(&mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no password given: standard input was empty",
        ));
    }
    if !line.ends_with('\n') && n as u64 >= limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the password is longer than {MAX_PASSWORD_LEN} bytes"),
        ));
    }
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    if line.len() > MAX_PASSWORD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the password is longer than {MAX_PASSWORD_LEN} bytes"),
        ));
    }
    Ok(line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_user_name("alice").is_ok());
        assert!(validate_user_name("a.b_c@d-e").is_ok());
        assert!(validate_user_name("").is_err());
        assert!(validate_user_name("a b").is_err());
        assert!(validate_user_name("é").is_err());
        assert!(validate_user_name(&"a".repeat(65)).is_err());
        assert!(validate_user_name(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn password_line() {
        assert_eq!(read_password_line(&b"secret\n"[..]).unwrap(), "secret");
        assert_eq!(
            read_password_line(&b"secret\r\nrest\n"[..]).unwrap(),
            "secret"
        );
        assert_eq!(
            read_password_line(&b"no newline"[..]).unwrap(),
            "no newline"
        );
        assert!(read_password_line(&b""[..]).is_err());
        let long = "x".repeat(MAX_PASSWORD_LEN + 5);
        assert!(read_password_line(long.as_bytes()).is_err());
        let max = format!("{}\n", "x".repeat(MAX_PASSWORD_LEN));
        assert_eq!(
            read_password_line(max.as_bytes()).unwrap().len(),
            MAX_PASSWORD_LEN
        );
    }
}
