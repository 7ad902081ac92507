//! The code page a WinRS shell's output is encoded in: the `WINRS_CODEPAGE` option of its
//! Create (pywinrm and pypsrp ask for 437 by default, 65001 is UTF-8). Characters the code page
//! lacks become `?`, as Windows' console conversion writes them. Single-byte OEM pages come from
//! `oem_cp` (tables generated from Unicode's mapping files); Windows-1252 differs from Latin-1
//! only in 0x80–0x9F, kept here as a 32-entry row.
#![forbid(unsafe_code)]

/// The option that names it.
pub const OPTION: &str = "WINRS_CODEPAGE";

/// UTF-8.
pub const UTF8: u16 = 65001;

/// The code page of a shell whose Create names none (Windows': the en-US OEM code page).
pub const DEFAULT: CodePage = CodePage::Oem(437);

/// A code page keyhole encodes WinRS output in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodePage {
    /// 65001.
    Utf8,
    /// Windows-1252 (Western European ANSI).
    Windows1252,
    /// An OEM (DOS) code page from `oem_cp`: 437, 850, ...
    Oem(u16),
}

/// Windows-1252's 0x80–0x9F (None: undefined in 1252).
const CP1252_HIGH: [Option<char>; 32] = [
    Some('\u{20AC}'),
    None,
    Some('\u{201A}'),
    Some('\u{0192}'),
    Some('\u{201E}'),
    Some('\u{2026}'),
    Some('\u{2020}'),
    Some('\u{2021}'),
    Some('\u{02C6}'),
    Some('\u{2030}'),
    Some('\u{0160}'),
    Some('\u{2039}'),
    Some('\u{0152}'),
    None,
    Some('\u{017D}'),
    None,
    None,
    Some('\u{2018}'),
    Some('\u{2019}'),
    Some('\u{201C}'),
    Some('\u{201D}'),
    Some('\u{2022}'),
    Some('\u{2013}'),
    Some('\u{2014}'),
    Some('\u{02DC}'),
    Some('\u{2122}'),
    Some('\u{0161}'),
    Some('\u{203A}'),
    Some('\u{0153}'),
    None,
    Some('\u{017E}'),
    Some('\u{0178}'),
];

fn cp1252_byte(c: char) -> u8 {
    let n = u32::from(c);
    if n < 0x80 || (0xA0..=0xFF).contains(&n) {
        return u8::try_from(n).unwrap_or(b'?');
    }
    CP1252_HIGH
        .iter()
        .position(|m| *m == Some(c))
        .and_then(|i| u8::try_from(0x80 + i).ok())
        .unwrap_or(b'?')
}

impl CodePage {
    /// The code page a Create asks for in its options. No `WINRS_CODEPAGE` means 437, what
    /// Windows uses then (the OEM code page of an en-US server) and what pypsrp's `execute_cmd`,
    /// which sends none, decodes; a code page keyhole cannot encode is refused with a message
    /// that says which ones it can.
    pub fn from_options(options: &[(String, String)]) -> Result<CodePage, String> {
        let Some((_, v)) = options.iter().find(|(k, _)| k.eq_ignore_ascii_case(OPTION)) else {
            return Ok(DEFAULT);
        };
        let v = v.trim();
        v.parse::<u16>()
            .ok()
            .and_then(CodePage::from_number)
            .ok_or_else(|| {
                format!(
                    "{OPTION} {v:?} is not a code page keyhole can write WinRS output in; ask for one of {} (65001 is UTF-8), e.g. pywinrm's Protocol.open_shell(codepage=65001)",
                    supported_list()
                )
            })
    }

    /// The code page numbered `n`, if keyhole can encode it.
    pub fn from_number(n: u16) -> Option<CodePage> {
        match n {
            UTF8 => Some(CodePage::Utf8),
            1252 => Some(CodePage::Windows1252),
            n if oem_cp::code_table::ENCODING_TABLE_CP_MAP.contains_key(&n) => {
                Some(CodePage::Oem(n))
            }
            _ => None,
        }
    }

    pub fn number(self) -> u16 {
        match self {
            CodePage::Utf8 => UTF8,
            CodePage::Windows1252 => 1252,
            CodePage::Oem(n) => n,
        }
    }

    /// `text` in this code page; characters it lacks become `?`.
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            CodePage::Utf8 => text.as_bytes().to_vec(),
            CodePage::Windows1252 => text.chars().map(cp1252_byte).collect(),
            CodePage::Oem(n) => match oem_cp::code_table::ENCODING_TABLE_CP_MAP.get(&n) {
                Some(table) => oem_cp::encode_string_lossy(text, table),
                None => text
                    .chars()
                    .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                    .collect(),
            },
        }
    }
}

/// Every code page keyhole encodes, ascending, comma-separated.
pub fn supported_list() -> String {
    let mut all: Vec<u16> = oem_cp::code_table::ENCODING_TABLE_CP_MAP
        .keys()
        .copied()
        .chain([1252, UTF8])
        .collect();
    all.sort_unstable();
    all.dedup();
    all.iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn opts(v: &str) -> Vec<(String, String)> {
        vec![("WINRS_CODEPAGE".to_string(), v.to_string())]
    }

    #[test]
    fn the_pages_clients_ask_for() {
        assert_eq!(CodePage::from_options(&[]).unwrap(), CodePage::Oem(437));
        assert_eq!(
            CodePage::from_options(&opts("437")).unwrap(),
            CodePage::Oem(437)
        );
        assert_eq!(
            CodePage::from_options(&opts(" 65001 ")).unwrap(),
            CodePage::Utf8
        );
        assert_eq!(
            CodePage::from_options(&opts("1252")).unwrap(),
            CodePage::Windows1252
        );
        assert_eq!(
            CodePage::from_options(&opts("850")).unwrap(),
            CodePage::Oem(850)
        );
        let e = CodePage::from_options(&opts("932")).unwrap_err();
        assert!(
            e.contains("\"932\"") && e.contains("437") && e.contains("65001"),
            "{e}"
        );
        assert!(CodePage::from_options(&opts("utf-8")).is_err());
    }

    #[test]
    fn characters_the_page_lacks_become_question_marks() {
        // CP437: é is 0x82, ✓ is not there.
        assert_eq!(CodePage::Oem(437).encode("héllo ✓"), b"h\x82llo ?");
        // CP850: é is 0x82 too, and Ø (absent from 437) is 0x9D.
        assert_eq!(CodePage::Oem(850).encode("éØ"), b"\x82\x9d");
        assert_eq!(CodePage::Oem(437).encode("Ø"), b"?");
        // Windows-1252: Latin-1 plus the 0x80-0x9F row.
        assert_eq!(CodePage::Windows1252.encode("é€‘’✓"), b"\xe9\x80\x91\x92?");
        assert_eq!(CodePage::Windows1252.encode("\u{81}"), b"?");
        assert_eq!(
            CodePage::Utf8.encode("héllo ✓"),
            "héllo ✓".as_bytes().to_vec()
        );
        // Line structure survives every page.
        for cp in [CodePage::Oem(437), CodePage::Windows1252, CodePage::Utf8] {
            assert_eq!(cp.encode("a\r\nb\tc"), b"a\r\nb\tc");
        }
    }

    #[test]
    fn the_list_names_every_page() {
        let l = supported_list();
        for n in ["437", "850", "1252", "65001"] {
            assert!(l.split(", ").any(|x| x == n), "{l}");
        }
    }
}
