//! Reading a Kerberos keytab file (MIT format version 0x502, what `ktutil`, `kadmin ktadd`,
//! `adcli` and `net ads keytab` write) for its principals only: keys are skipped, never kept.
//! Used by `keyhole check` (is there an `HTTP/` or `WSMAN/` key for a name this server answers
//! to?) and for the default realm list (`[auth] realms = []`: the keytab's realms).
#![forbid(unsafe_code)]

use std::path::Path;

/// Largest keytab read (bytes). Real ones hold a few dozen entries of about 100 bytes.
pub const MAX_KEYTAB_BYTES: u64 = 4 * 1024 * 1024;
/// Most entries read.
pub const MAX_KEYTAB_ENTRIES: usize = 10_000;

/// One keytab entry, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeytabEntry {
    /// Name components: `["HTTP", "web01.example.com"]`.
    pub components: Vec<String>,
    pub realm: String,
    pub kvno: u32,
    pub enctype: u16,
}

impl KeytabEntry {
    /// `HTTP/web01.example.com@EXAMPLE.COM`.
    pub fn principal(&self) -> String {
        format!("{}@{}", self.components.join("/"), self.realm)
    }
}

/// Why a keytab could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeytabError {
    #[error("{0}")]
    Io(String),
    #[error("not a keytab: {0}")]
    Format(String),
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeytabError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or_else(|| KeytabError::Format("length overflow".into()))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or_else(|| KeytabError::Format(format!("truncated at byte {}", self.at)))?;
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, KeytabError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([
            *s.first().unwrap_or(&0),
            *s.get(1).unwrap_or(&0),
        ]))
    }
    fn u32(&mut self) -> Result<u32, KeytabError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String, KeytabError> {
        let n = self.u16()? as usize;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| KeytabError::Format("a name is not UTF-8".into()))
    }
}

/// Parses keytab bytes.
pub fn parse_keytab(b: &[u8]) -> Result<Vec<KeytabEntry>, KeytabError> {
    match b {
        [5, 2, ..] => {}
        [5, 1, ..] => {
            return Err(KeytabError::Format(
                "version 0x501 (native byte order, from before 1995) is not supported; rewrite it with ktutil".into(),
            ))
        }
        _ => return Err(KeytabError::Format("it does not start with 0x0502".into())),
    }
    let mut c = Cursor { b, at: 2 };
    let mut out = Vec::new();
    while c.at < b.len() {
        if b.len() - c.at < 4 {
            break; // trailing padding
        }
        let size = c.u32()? as i32;
        if size == 0 {
            break;
        }
        if size < 0 {
            c.take(size.unsigned_abs() as usize)?; // a hole left by a deleted entry
            continue;
        }
        if out.len() >= MAX_KEYTAB_ENTRIES {
            return Err(KeytabError::Format(format!(
                "more than {MAX_KEYTAB_ENTRIES} entries"
            )));
        }
        let body = c.take(size as usize)?;
        let mut e = Cursor { b: body, at: 0 };
        let count = e.u16()? as usize;
        if count > 16 {
            return Err(KeytabError::Format(format!("{count} name components")));
        }
        let realm = e.string()?;
        let mut components = Vec::with_capacity(count);
        for _ in 0..count {
            components.push(e.string()?);
        }
        let _name_type = e.u32()?;
        let _timestamp = e.u32()?;
        let vno8 = e.take(1)?.first().copied().unwrap_or(0);
        let enctype = e.u16()?;
        let keylen = e.u16()? as usize;
        e.take(keylen)?;
        let kvno = if body.len() - e.at >= 4 {
            match e.u32()? {
                0 => vno8 as u32,
                v => v,
            }
        } else {
            vno8 as u32
        };
        out.push(KeytabEntry {
            components,
            realm,
            kvno,
            enctype,
        });
    }
    Ok(out)
}

/// Reads and parses the keytab at `path` (a regular file of at most [`MAX_KEYTAB_BYTES`]).
pub fn read_keytab(path: &Path) -> Result<Vec<KeytabEntry>, KeytabError> {
    match super::read_regular_file(path, MAX_KEYTAB_BYTES) {
        Ok(Some(b)) => parse_keytab(&b),
        Ok(None) => Err(KeytabError::Io(format!(
            "{} does not exist",
            path.display()
        ))),
        Err(e) => Err(KeytabError::Io(format!(
            "{} cannot be read: {e}",
            path.display()
        ))),
    }
}

/// The distinct realms of `entries`, in first-seen order.
pub fn realms_of(entries: &[KeytabEntry]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in entries {
        if !out.iter().any(|r| r == &e.realm) {
            out.push(e.realm.clone());
        }
    }
    out
}

/// Entries usable for WS-Man: `HTTP/<name>` or `WSMAN/<name>` (service case-insensitive, as
/// Windows treats SPNs) for one of `names` (compared case-insensitively).
pub fn service_entries<'a>(entries: &'a [KeytabEntry], names: &[String]) -> Vec<&'a KeytabEntry> {
    entries
        .iter()
        .filter(|e| match e.components.as_slice() {
            [svc, host] => {
                (svc.eq_ignore_ascii_case("HTTP") || svc.eq_ignore_ascii_case("WSMAN"))
                    && names.iter().any(|n| n.eq_ignore_ascii_case(host))
            }
            _ => false,
        })
        .collect()
}

/// One entry for [`encode_keytab`]: (components, realm, kvno, enctype, key).
pub type KeytabSpec<'a> = (&'a [&'a str], &'a str, u32, u16, &'a [u8]);

/// Builds keytab bytes (for tests).
pub fn encode_keytab(entries: &[KeytabSpec<'_>]) -> Vec<u8> {
    let mut out = vec![5u8, 2];
    for (comps, realm, kvno, enctype, key) in entries {
        let mut e = Vec::new();
        e.extend_from_slice(&(comps.len() as u16).to_be_bytes());
        for s in std::iter::once(realm).chain(comps.iter()) {
            e.extend_from_slice(&(s.len() as u16).to_be_bytes());
            e.extend_from_slice(s.as_bytes());
        }
        e.extend_from_slice(&1u32.to_be_bytes());
        e.extend_from_slice(&0u32.to_be_bytes());
        e.push(*kvno as u8);
        e.extend_from_slice(&enctype.to_be_bytes());
        e.extend_from_slice(&(key.len() as u16).to_be_bytes());
        e.extend_from_slice(key);
        e.extend_from_slice(&kvno.to_be_bytes());
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(&e);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_service_lookup() {
        let kt = encode_keytab(&[
            (
                &["host", "web01.example.com"],
                "EXAMPLE.COM",
                3,
                18,
                &[1; 32],
            ),
            (
                &["HTTP", "web01.example.com"],
                "EXAMPLE.COM",
                300,
                18,
                &[2; 32],
            ),
            (&["wsman", "web01"], "OTHER.ORG", 2, 17, &[3; 16]),
        ]);
        let e = parse_keytab(&kt).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].principal(), "HTTP/web01.example.com@EXAMPLE.COM");
        assert_eq!(e[1].kvno, 300);
        assert_eq!(realms_of(&e), vec!["EXAMPLE.COM", "OTHER.ORG"]);
        let names = vec!["WEB01.example.com".to_string(), "web01".to_string()];
        let s = service_entries(&e, &names);
        assert_eq!(s.len(), 2);
        assert!(service_entries(&e, &["other".to_string()]).is_empty());
    }

    #[test]
    fn holes_are_skipped_and_garbage_refused() {
        let mut kt = vec![5u8, 2];
        kt.extend_from_slice(&(-8i32).to_be_bytes());
        kt.extend_from_slice(&[0; 8]);
        kt.extend_from_slice(&encode_keytab(&[(&["HTTP", "h"], "R", 1, 18, &[0; 32])])[2..]);
        assert_eq!(parse_keytab(&kt).unwrap().len(), 1);
        assert!(parse_keytab(b"").is_err());
        assert!(parse_keytab(&[5, 1]).is_err());
        assert!(parse_keytab(b"-----BEGIN").is_err());
        let good = encode_keytab(&[(&["HTTP", "h"], "R", 1, 18, &[0; 32])]);
        for n in 6..good.len() {
            assert!(parse_keytab(&good[..n]).is_err(), "prefix {n}");
        }
    }
}
