//! Configuration diagnostics: locating a key or value in a TOML file by its path, and rendering
//! `file:line:col: message` with a caret excerpt (annotate-snippets).
#![forbid(unsafe_code)]

use std::ops::Range;
use std::path::{Path, PathBuf};

use annotate_snippets::{Level, Renderer, Snippet};
use toml_edit::{ImDocument, Item, Value};

use super::{Diagnostic, Severity};

/// One step of a path into a TOML document: a key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}
impl From<&String> for Seg {
    fn from(s: &String) -> Self {
        Seg::Key(s.clone())
    }
}
impl From<String> for Seg {
    fn from(s: String) -> Self {
        Seg::Key(s)
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// Build a path: `path!["visible_cmdlets", 2, "parameters"]`.
#[macro_export]
#[doc(hidden)]
macro_rules! tpath {
    ($($s:expr),* $(,)?) => {{
        #[allow(clippy::useless_vec)]
        let v: Vec<$crate::config::diag::Seg> = vec![$($crate::config::diag::Seg::from($s)),*];
        v
    }};
}

/// A configuration file's text, kept to locate and render diagnostics.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    /// The span-keeping document, parsed the first time a diagnostic needs it (most files have
    /// none): `toml_edit`'s document costs about 30 times the text, which for a 16 MiB rules file
    /// would be held for the whole load beside the configuration parsed from it.
    doc: std::sync::OnceLock<Option<ImDocument<String>>>,
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
        }
    }
    /// Child by key: (key span, child).
    fn key(&self, k: &str) -> Option<(Option<Range<usize>>, Node<'a>)> {
        let find_ci = |keys: Vec<&'a str>| keys.into_iter().find(|x| x.eq_ignore_ascii_case(k));
        match self {
            Node::Item(Item::Table(t)) => {
                let name = find_ci(t.iter().map(|(n, _)| n).collect())?;
                let (key, item) = t.get_key_value(name)?;
                Some((key.span(), Node::Item(item)))
            }
            Node::Item(Item::Value(v)) => Node::Value(v).key(k),
            Node::Value(Value::InlineTable(t)) => {
                let name = find_ci(t.iter().map(|(n, _)| n).collect())?;
                let (key, item) = t.get_key_value(name)?;
                Some((key.span(), Node::Item(item)))
            }
            _ => None,
        }
    }
    fn index(&self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(Item::Value(v)) => Node::Value(v).index(i),
            Node::Value(Value::Array(a)) => a.get(i).map(Node::Value),
            _ => None,
        }
    }
}

impl SourceFile {
    pub fn new(path: &Path, text: String) -> Self {
        SourceFile {
            path: path.to_path_buf(),
            text,
            doc: std::sync::OnceLock::new(),
        }
    }

    /// The document with spans (parsed on first use; None when the text is not valid TOML).
    fn doc(&self) -> Option<&ImDocument<String>> {
        self.doc
            .get_or_init(|| ImDocument::parse(self.text.clone()).ok())
            .as_ref()
    }

    /// Whether the span-keeping document has been parsed (tests).
    #[cfg(test)]
    fn parsed(&self) -> bool {
        self.doc.get().is_some()
    }

    /// Span of the value at `path` (or of its key when `want_key`); falls back to the deepest
    /// part of the path that exists.
    pub fn span(&self, path: &[Seg], want_key: bool) -> Option<Range<usize>> {
        let doc = self.doc()?;
        let mut best: Option<Range<usize>> = None;
        let mut cur: Cursor<'_> = Cursor::Table(doc.as_table());
        let n = path.len();
        for (i, seg) in path.iter().enumerate() {
            let last = i + 1 == n;
            let next = match (&cur, seg) {
                (Cursor::Table(t), Seg::Key(k)) => {
                    let name = t.iter().map(|(n, _)| n).find(|x| x.eq_ignore_ascii_case(k));
                    match name.and_then(|nm| t.get_key_value(nm)) {
                        Some((key, item)) => {
                            let ks = key.span();
                            if last && want_key && ks.is_some() {
                                return ks;
                            }
                            if ks.is_some() {
                                best = ks.clone();
                            }
                            let node = Node::Item(item);
                            if let Some(s) = node.span() {
                                best = Some(s);
                            }
                            Some(match item {
                                Item::ArrayOfTables(a) => Cursor::Aot(a),
                                Item::Table(t) => Cursor::Table(t),
                                _ => Cursor::Node(node),
                            })
                        }
                        None => None,
                    }
                }
                (Cursor::Aot(a), Seg::Index(ix)) => match a.get(*ix) {
                    Some(t) => {
                        if let Some(s) = t.span() {
                            best = Some(s);
                        }
                        Some(Cursor::Table(t))
                    }
                    None => None,
                },
                (Cursor::Node(node), Seg::Key(k)) => match node.key(k) {
                    Some((ks, child)) => {
                        if last && want_key && ks.is_some() {
                            return ks;
                        }
                        if ks.is_some() {
                            best = ks.clone();
                        }
                        if let Some(s) = child.span() {
                            best = Some(s);
                        }
                        Some(match child {
                            Node::Item(Item::Table(t)) => Cursor::Table(t),
                            Node::Item(Item::ArrayOfTables(a)) => Cursor::Aot(a),
                            other => Cursor::Node(other),
                        })
                    }
                    None => None,
                },
                (Cursor::Node(node), Seg::Index(ix)) => match node.index(*ix) {
                    Some(child) => {
                        if let Some(s) = child.span() {
                            best = Some(s);
                        }
                        Some(Cursor::Node(child))
                    }
                    None => None,
                },
                _ => None,
            };
            match next {
                Some(c) => cur = c,
                None => break,
            }
        }
        best
    }

    /// Keys of the table at `path`, in file order.
    pub fn keys_in_order(&self, path: &[Seg]) -> Vec<String> {
        let Some(doc) = self.doc() else {
            return Vec::new();
        };
        let mut t: &toml_edit::Table = doc.as_table();
        for seg in path {
            let Seg::Key(k) = seg else { return Vec::new() };
            let name = t.iter().map(|(n, _)| n).find(|x| x.eq_ignore_ascii_case(k));
            match name.and_then(|nm| t.get(nm)) {
                Some(Item::Table(inner)) => t = inner,
                Some(Item::Value(Value::InlineTable(it))) => {
                    return it.iter().map(|(k, _)| k.to_string()).collect();
                }
                _ => return Vec::new(),
            }
        }
        t.iter().map(|(k, _)| k.to_string()).collect()
    }
}

enum Cursor<'a> {
    Table(&'a toml_edit::Table),
    Aot(&'a toml_edit::ArrayOfTables),
    Node(Node<'a>),
}

/// A path as the administrator typed it: relative to the current directory when under it.
pub fn display_path(file: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| file.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| file.to_path_buf())
        .display()
        .to_string()
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|p| p + 1).unwrap_or(0);
    let col = text
        .get(line_start..offset)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Build a diagnostic for `file`, with an excerpt when the span is known.
pub fn diagnostic(
    severity: Severity,
    file: &Path,
    text: Option<&str>,
    span: Option<Range<usize>>,
    message: impl Into<String>,
) -> Diagnostic {
    let message = message.into();
    let display = display_path(file);
    let level = match severity {
        Severity::Error => Level::Error,
        Severity::Warning => Level::Warning,
    };
    let word = match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    match (text, span) {
        (Some(text), Some(span))
            if span.start < text.len() && text.is_char_boundary(span.start) =>
        {
            let start = span.start;
            let mut end = span.end.min(text.len()).max(start);
            // Keep the excerpt to the first line of a multi-line value.
            if let Some(nl) = text.get(start..end).and_then(|s| s.find('\n')) {
                end = start + nl.max(1);
            }
            while end < text.len() && !text.is_char_boundary(end) {
                end += 1;
            }
            let (line, col) = line_col(text, start);
            let head = format!("{display}:{line}:{col}: {word}: {message}");
            let msg = level.title(&message).snippet(
                Snippet::source(text)
                    .origin(&display)
                    .fold(true)
                    .annotation(level.span(start..end)),
            );
            let body = Renderer::plain().render(msg).to_string();
            // The first line of annotate-snippets' output repeats the title; ours carries the
            // location first so that editors and grep find it.
            let excerpt: String = body.lines().skip(1).map(|l| format!("{l}\n")).collect();
            Diagnostic {
                severity,
                file: file.to_path_buf(),
                line,
                col,
                message,
                rendered: format!("{head}\n{excerpt}"),
            }
        }
        _ => Diagnostic {
            severity,
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            rendered: format!("{display}: {word}: {message}\n"),
            message,
        },
    }
}

/// Edit distance (for "did you mean").
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// The closest candidate within a small distance.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (levenshtein(name, c), c))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const SRC: &str = "name = \"x\"\nvisible = [ { name = \"Q\", parameters = [ { name = \"N\", validate_set = [] } ] } ]\n\n[[role]]\ngroup = \"a\"\nrole_capabilities = [\"A\", \"B\"]\n\n[functions.F.parameters.P]\ntype = \"string\"\n";

    fn at(path: Vec<Seg>, key: bool) -> (usize, usize) {
        let f = SourceFile::new(Path::new("t.toml"), SRC.to_string());
        let s = f.span(&path, key).unwrap();
        line_col(SRC, s.start)
    }

    #[test]
    fn the_span_document_is_parsed_only_when_a_diagnostic_needs_it() {
        let f = SourceFile::new(Path::new("t.toml"), SRC.to_string());
        assert!(!f.parsed(), "no second parse of a file without diagnostics");
        assert!(f.span(&tpath!["name"], false).is_some());
        assert!(f.parsed());
        let bad = SourceFile::new(Path::new("b.toml"), "x = [".to_string());
        assert_eq!(bad.span(&tpath!["x"], false), None);
        assert!(bad.keys_in_order(&[]).is_empty());
    }

    #[test]
    fn locates_paths() {
        assert_eq!(at(tpath!["name"], false), (1, 8));
        assert_eq!(at(tpath!["name"], true), (1, 1));
        assert_eq!(
            at(tpath!["role", 0, "role_capabilities", 1], false),
            (6, 27)
        );
        assert_eq!(
            at(tpath!["functions", "F", "parameters", "P", "type"], false),
            (9, 8)
        );
        assert_eq!(
            at(tpath!["visible", 0, "parameters", 0, "validate_set"], false),
            (2, 71)
        );
        assert_eq!(
            at(tpath!["visible", 0, "parameters", 0, "validate_set"], true),
            (2, 56)
        );
        // Missing tail falls back to the deepest existing part.
        assert_eq!(at(tpath!["role", 0, "nope"], false).0, 4);
    }

    #[test]
    fn renders_location_and_caret() {
        let f = SourceFile::new(Path::new("t.toml"), SRC.to_string());
        let d = diagnostic(
            Severity::Error,
            &f.path,
            Some(&f.text),
            f.span(&tpath!["name"], false),
            "bad name",
        );
        assert!(
            d.rendered.starts_with("t.toml:1:8: error: bad name\n"),
            "{}",
            d.rendered
        );
        assert!(d.rendered.contains("^^^"), "{}", d.rendered);
        assert_eq!((d.line, d.col), (1, 8));
    }

    #[test]
    fn every_span_renders_without_panic() {
        let text = "a = \"é—x\"\n\nb = [\n  1,\n]\n";
        for start in 0..=text.len() + 2 {
            for end in start..=text.len() + 2 {
                let d = diagnostic(
                    Severity::Warning,
                    Path::new("f.toml"),
                    Some(text),
                    Some(start..end),
                    "m",
                );
                assert!(d.rendered.contains("f.toml"));
            }
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("Get-Servce", ["Get-Service", "Get-Process"]),
            Some("Get-Service")
        );
        assert_eq!(did_you_mean("Frobnicate", ["Get-Service"]), None);
    }
}
