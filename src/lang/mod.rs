//! `lang` turns text into a checked syntax tree or a refusal with a span. It knows no commands.
//! It also owns the three text-matching rules every other layer uses: case folding (`fold`),
//! the anchored-pattern compiler (`pattern`) and the wildcard matcher (`wildcard`).
#![forbid(unsafe_code)]

pub mod ast;
pub mod fold;
mod parser;
pub mod pattern;
pub mod wildcard;

pub use ast::*;
pub use parser::parse;

/// Longest line (bytes) the parser accepts.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most tokens one script may hold.
pub const MAX_TOKENS: usize = 4096;
/// Most elements in one comma list.
pub const MAX_LIST_ITEMS: usize = 1024;
/// Deepest nesting the parser follows before refusing (comma lists inside lists, continuations).
pub const MAX_NESTING: usize = 32;
/// Most statements in one script.
pub const MAX_STATEMENTS: usize = 256;
/// Most commands in one pipeline.
pub const MAX_PIPELINE_COMMANDS: usize = 64;

/// Why a line was refused before anything ran.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{construct} is not allowed in this session (NoLanguage mode) at column {column}: {hint}")]
pub struct LangError {
    /// What was refused, for humans: "a variable ($env:PATH)", "assignment", "a script block", ...
    pub construct: String,
    /// Short stable identifier, e.g. "VariableReferenceNotSupported", used as FullyQualifiedErrorId.
    pub id: &'static str,
    pub span: Span,
    /// 1-based column in the line where the construct starts.
    pub column: usize,
    /// What to do instead.
    pub hint: String,
}
