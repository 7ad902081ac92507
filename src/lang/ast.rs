//! The syntax tree of the restricted language (SPEC §4.1). Only commands and literals exist.
#![forbid(unsafe_code)]

/// Byte range in the original line. `col` for humans is computed by [`Span::column`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// 1-based column (in characters) of `start` within its line of `src`.
    pub fn column(&self, src: &str) -> usize {
        let start = self.start.min(src.len());
        let before = src.get(..start).unwrap_or("");
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        before
            .get(line_start..)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1
    }
    /// 1-based line number of `start` within `src`.
    pub fn line(&self, src: &str) -> usize {
        let start = self.start.min(src.len());
        src.get(..start)
            .map(|s| s.matches('\n').count())
            .unwrap_or(0)
            + 1
    }
}

/// A whole script: statements separated by `;` or new lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Pipeline(Pipeline),
    /// `exit` alone: ends the session (as Exit-PSSession).
    Exit(Span),
}

/// `a | b | c`
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub commands: Vec<CommandCall>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommandCall {
    /// The command name as written (bareword or quoted string), escapes already processed.
    pub name: String,
    pub name_span: Span,
    pub elements: Vec<CommandElement>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandElement {
    /// `-Name` (value: None) or `-Name:value` (value: Some). The name excludes the dash.
    Parameter {
        name: String,
        value: Option<Literal>,
        span: Span,
    },
    /// A positional argument or the value that follows `-Name`.
    Argument(Literal),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Literal {
    pub value: LiteralValue,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LiteralValue {
    /// Bareword (unquoted): may still convert to a number/bool during binding, as in PowerShell.
    Bare(String),
    /// Single- or double-quoted string: always a string.
    Quoted(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Null,
    /// `a, b, c`
    List(Vec<Literal>),
}
