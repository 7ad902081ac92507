//! Parser for the restricted language (SPEC §4.1): commands with literal arguments, nothing else.
//!
//! Contract: `parse` returns a [`Script`] made only of commands and literals, or the first refused
//! construct in the whole text (by position) as a [`LangError`] with a stable `id` and a column.
//! The scanner follows PowerShell's command-mode tokenizer where a construct is allowed, and refuses
//! whenever PowerShell could give the text a meaning other than "a literal": it fails closed.
//!
//! Decisions worth knowing (each one errs on the side of refusing):
//! - A token made only of an assignment operator (`=`, `+=`, `-=`, `*=`, `/=`, `%=`, `??=`) is
//!   refused anywhere outside quotes; `a=b` inside one word stays a bareword (`key=value` for
//!   programs).
//! - Every `$` outside single quotes must be escaped with a backtick, except the whole tokens
//!   `$true`, `$false`, `$null`; a lone `$` is refused too.
//! - A quoted string (or `$true`) directly followed by more text is refused (PowerShell reads
//!   `'x'.Length` as member access, `'x'[0]` as indexing).
//! - A quoted string as the first element of a pipeline is an expression in PowerShell, so it is
//!   refused ("an expression cannot start a pipeline"); command names are always barewords.
//! - `[` at the start of a word is refused as a type literal; inside a word it is text
//!   (`file[12].txt`). `::` inside a bareword is text (`::1`).
//! - `--` alone (end of parameters) and `--%` (stop parsing) are refused; `--name` is an
//!   argument (a bareword), as PowerShell scans it, and so is `-a'b'` (a quote inside a parameter).
//! - `<` and `>` are refused anywhere outside quotes (PowerShell keeps them as text in the middle
//!   of a word, but `2>`, `>`, `<` at a word start are redirections).
//! - `&` outside quotes is refused everywhere: `&`/`&&` at a command position, a background `&`
//!   elsewhere.
//! - Keywords are refused only where a statement starts, compared after escapes (`` whi`le ``).
//! - An escaped new line inside a word stays in the word, as in PowerShell (`` a`<LF>b ``); a
//!   backtick after a parameter name is refused (PowerShell would make it part of the name).
//! - `` `u{…} `` may not produce a character the source itself may not contain (controls other
//!   than those the named escapes give, bidirectional overrides).
#![forbid(unsafe_code)]

use nom::branch::alt;
use nom::bytes::complete::{tag_no_case, take_while1, take_while_m_n};
use nom::character::complete::{char as nom_char, digit0, digit1, one_of};
use nom::combinator::{eof, opt, recognize};
use nom::sequence::{delimited, pair, preceded, tuple};
use nom::IResult;

use super::ast::{
    CommandCall, CommandElement, Literal, LiteralValue, Pipeline, Script, Span, Statement,
};
use super::{
    LangError, MAX_LINE_BYTES, MAX_LIST_ITEMS, MAX_PIPELINE_COMMANDS, MAX_STATEMENTS, MAX_TOKENS,
};

/// Every PowerShell keyword that may start a statement (`exit` is accepted alone).
const KEYWORDS: &[&str] = &[
    "begin",
    "break",
    "catch",
    "class",
    "clean",
    "configuration",
    "continue",
    "data",
    "define",
    "do",
    "dynamicparam",
    "else",
    "elseif",
    "end",
    "enum",
    "exit",
    "filter",
    "finally",
    "for",
    "foreach",
    "from",
    "function",
    "hidden",
    "if",
    "in",
    "inlinescript",
    "parallel",
    "param",
    "process",
    "return",
    "sequence",
    "static",
    "switch",
    "throw",
    "trap",
    "try",
    "until",
    "using",
    "var",
    "while",
    "workflow",
];

/// Words that are assignment operators when they stand alone.
const ASSIGNMENT_OPERATORS: &[&str] = &["=", "+=", "-=", "*=", "/=", "%=", "??="];

/// Longest excerpt of source text quoted in an error's construct.
const MAX_EXCERPT_CHARS: usize = 40;

/// Why something was refused. Each kind has one stable id (used as FullyQualifiedErrorId).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Variable,
    Assignment,
    Parentheses,
    SubExpression,
    ArrayExpression,
    Hashtable,
    HereString,
    ScriptBlock,
    Splatting,
    TypeLiteral,
    MemberAccess,
    Indexing,
    MethodCall,
    Operator,
    Redirection,
    InvocationOperator,
    DotSourcing,
    BackgroundOperator,
    PipelineChain,
    StopParsing,
    EndOfParameters,
    Keyword,
    Label,
    ControlCharacter,
    UnterminatedString,
    UnterminatedComment,
    InvalidEscape,
    IncompleteInput,
    EmptyPipelineElement,
    MissingListItem,
    MissingParameterValue,
    ExpressionStartsPipeline,
    Syntax,
    Limit,
}

impl Refusal {
    fn id(self) -> &'static str {
        match self {
            Refusal::Variable => "VariableNotAllowed",
            Refusal::Assignment => "AssignmentNotAllowed",
            Refusal::Parentheses => "ParenthesesNotAllowed",
            Refusal::SubExpression => "SubExpressionNotAllowed",
            Refusal::ArrayExpression => "ArrayExpressionNotAllowed",
            Refusal::Hashtable => "HashtableNotAllowed",
            Refusal::HereString => "HereStringNotAllowed",
            Refusal::ScriptBlock => "ScriptBlockNotAllowed",
            Refusal::Splatting => "SplattingNotAllowed",
            Refusal::TypeLiteral => "TypeLiteralNotAllowed",
            Refusal::MemberAccess => "MemberAccessNotAllowed",
            Refusal::Indexing => "IndexingNotAllowed",
            Refusal::MethodCall => "MethodCallNotAllowed",
            Refusal::Operator => "OperatorNotAllowed",
            Refusal::Redirection => "RedirectionNotAllowed",
            Refusal::InvocationOperator => "InvocationOperatorNotAllowed",
            Refusal::DotSourcing => "DotSourcingNotAllowed",
            Refusal::BackgroundOperator => "BackgroundOperatorNotAllowed",
            Refusal::PipelineChain => "PipelineChainNotAllowed",
            Refusal::StopParsing => "StopParsingNotAllowed",
            Refusal::EndOfParameters => "EndOfParametersNotAllowed",
            Refusal::Keyword => "KeywordNotAllowed",
            Refusal::Label => "LabelNotAllowed",
            Refusal::ControlCharacter => "ControlCharacterNotAllowed",
            Refusal::UnterminatedString => "UnterminatedString",
            Refusal::UnterminatedComment => "UnterminatedComment",
            Refusal::InvalidEscape => "InvalidEscapeSequence",
            Refusal::IncompleteInput => "IncompleteInput",
            Refusal::EmptyPipelineElement => "EmptyPipelineElement",
            Refusal::MissingListItem => "MissingListItem",
            Refusal::MissingParameterValue => "MissingParameterValue",
            Refusal::ExpressionStartsPipeline => "ExpressionCannotStartPipeline",
            Refusal::Syntax => "SyntaxNotAllowed",
            Refusal::Limit => "LimitExceeded",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Refusal::Variable => {
                "write the literal value instead; to pass a dollar sign, escape it as `$ or use single quotes"
            }
            Refusal::Assignment => "this session has no variables; pass values directly as arguments",
            Refusal::Parentheses | Refusal::SubExpression | Refusal::ArrayExpression => {
                "run one command per statement and pass literal values"
            }
            Refusal::Hashtable | Refusal::ScriptBlock => {
                "pass literal values; use the command's parameters instead of script blocks or hashtables"
            }
            Refusal::HereString => "use a single- or double-quoted string",
            Refusal::Splatting => "write the parameters out as -Name value",
            Refusal::TypeLiteral | Refusal::MemberAccess | Refusal::Indexing | Refusal::MethodCall => {
                "only commands are available; use a command (for example Select-Object) to pick properties"
            }
            Refusal::Operator => "run a command; operators exist only as parameters (Where-Object Status -eq Running)",
            Refusal::Redirection => "remove the redirection; output is returned to you",
            Refusal::InvocationOperator => "call the command by its name, without &",
            Refusal::DotSourcing => "call the command by its name, without a leading dot",
            Refusal::BackgroundOperator => "remove the &; commands run in the foreground only",
            Refusal::PipelineChain => "put each command in its own statement, separated by ;",
            Refusal::StopParsing => "write the arguments normally, quoting them if needed",
            Refusal::EndOfParameters => "quote an argument that starts with a dash instead of using --",
            Refusal::Keyword => "only commands can run here; write exit alone to end the session",
            Refusal::Label => "only commands can run here",
            Refusal::ControlCharacter => "remove the invisible character and type the text again",
            Refusal::UnterminatedString => "close the string with a matching quote",
            Refusal::UnterminatedComment => "close the block comment with #>",
            Refusal::InvalidEscape => "write `u{XXXX} with 1 to 6 hex digits of a printable character",
            Refusal::IncompleteInput => "remove the trailing backtick or continue the line",
            Refusal::EmptyPipelineElement => "put a command on each side of |",
            Refusal::MissingListItem => "write a value after each comma",
            Refusal::MissingParameterValue => "write a value after -Name:",
            Refusal::ExpressionStartsPipeline => {
                "start the statement with a command name; pass values to it as arguments (Write-Output 'text')"
            }
            Refusal::Syntax => "separate arguments with spaces and quote whole values",
            Refusal::Limit => "send a shorter script, or split it into several",
        }
    }
}

fn is_dash(c: char) -> bool {
    matches!(c, '-' | '\u{2013}' | '\u{2014}' | '\u{2015}')
}

fn is_squote(c: char) -> bool {
    matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}')
}

fn is_dquote(c: char) -> bool {
    matches!(c, '"' | '\u{201C}' | '\u{201D}' | '\u{201E}')
}

fn is_newline(c: char) -> bool {
    c == '\n' || c == '\r'
}

fn is_space(c: char) -> bool {
    !is_newline(c) && c.is_whitespace()
}

/// True where a word ends: end of input, whitespace, a new line, `;`, `|` or `,`.
fn ends_word(c: Option<char>) -> bool {
    match c {
        None => true,
        Some(c) => c.is_whitespace() || matches!(c, ';' | '|' | ','),
    }
}

/// Characters a source text may not contain anywhere (also inside strings and comments).
fn is_forbidden_char(c: char) -> Option<&'static str> {
    let code = u32::from(c);
    if (code < 0x20 && !matches!(c, '\t' | '\n' | '\r'))
        || code == 0x7f
        || (0x80..0xa0).contains(&code)
    {
        Some("a control character")
    } else if matches!(code, 0x202a..=0x202e | 0x2066..=0x2069 | 0x200e | 0x200f | 0x061c) {
        Some("a bidirectional-text control character")
    } else {
        None
    }
}

fn is_var_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '?' || c == ':'
}

fn is_param_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '?'
}

/// Characters that end a parameter name and are refused there.
fn is_param_name_char(c: char) -> bool {
    !ends_word(Some(c))
        && c != ':'
        && c != '`'
        && !is_squote(c)
        && !is_dquote(c)
        && !matches!(
            c,
            '$' | '(' | ')' | '{' | '}' | '<' | '>' | '&' | '@' | '[' | ']' | '#' | '.'
        )
}

fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// A scanned bareword (PowerShell's generic token).
struct Word {
    value: String,
    /// No quotes and no escapes: the text is exactly as typed, so it may be a number.
    plain: bool,
    end: usize,
}

/// What `command` found at a command position.
enum Command {
    Exit(Span),
    Call(CommandCall),
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    tokens: usize,
}

/// Parse and check a whole script. Nothing runs unless this returns Ok.
pub fn parse(src: &str) -> Result<Script, LangError> {
    precheck(src)?;
    let mut p = Parser {
        src,
        pos: 0,
        tokens: 0,
    };
    let mut statements = Vec::new();
    loop {
        p.skip_statement_separators()?;
        if p.peek().is_none() {
            break;
        }
        let start = p.pos;
        if statements.len() >= MAX_STATEMENTS {
            return Err(p.refuse(
                Refusal::Limit,
                start,
                start,
                format!("more than {MAX_STATEMENTS} statements"),
            ));
        }
        statements.push(p.statement()?);
    }
    Ok(Script { statements })
}

/// Whole-text checks that do not depend on the grammar: line length and invisible characters.
fn precheck(src: &str) -> Result<(), LangError> {
    let mut line_start = 0usize;
    for line in src.split(['\n', '\r']) {
        if line.len() > MAX_LINE_BYTES {
            let cut = (MAX_LINE_BYTES..=line.len())
                .find(|b| line.is_char_boundary(*b))
                .unwrap_or(line.len());
            let at = line_start + cut;
            return Err(make_error(
                src,
                Refusal::Limit,
                at,
                at,
                format!("a line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        line_start += line.len() + 1;
    }
    for (i, c) in src.char_indices() {
        if let Some(what) = is_forbidden_char(c) {
            return Err(make_error(
                src,
                Refusal::ControlCharacter,
                i,
                i + c.len_utf8(),
                format!("{what} (U+{:04X})", u32::from(c)),
            ));
        }
    }
    Ok(())
}

fn make_error(src: &str, kind: Refusal, start: usize, end: usize, construct: String) -> LangError {
    let span = Span::new(start, end.max(start));
    LangError {
        construct,
        id: kind.id(),
        span,
        column: span.column(src),
        hint: kind.hint().to_string(),
    }
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.rest().chars().nth(n)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn refuse(&self, kind: Refusal, start: usize, end: usize, construct: String) -> LangError {
        make_error(self.src, kind, start, end, construct)
    }

    /// Source text from `start` up to the end of the word there, shortened for a message.
    fn excerpt_word(&self, start: usize) -> String {
        let text = self.src.get(start..).unwrap_or("");
        let mut out = String::new();
        for (n, c) in text.chars().enumerate() {
            if n > 0 && ends_word(Some(c)) {
                break;
            }
            if n >= MAX_EXCERPT_CHARS {
                out.push('…');
                break;
            }
            out.push(c);
        }
        out
    }

    /// Source text from `start` up to and including `close` (or the end of the word).
    fn excerpt_until(&self, start: usize, close: char) -> String {
        let text = self.src.get(start..).unwrap_or("");
        let mut out = String::new();
        for (n, c) in text.chars().enumerate() {
            if n >= MAX_EXCERPT_CHARS || is_newline(c) {
                out.push('…');
                break;
            }
            out.push(c);
            if n > 0 && c == close {
                break;
            }
        }
        out
    }

    fn count_token(&mut self, start: usize) -> Result<(), LangError> {
        self.tokens += 1;
        if self.tokens > MAX_TOKENS {
            return Err(self.refuse(
                Refusal::Limit,
                start,
                start,
                format!("more than {MAX_TOKENS} tokens"),
            ));
        }
        Ok(())
    }

    /// True when a backtick at the cursor continues the line.
    fn at_continuation(&self) -> bool {
        self.peek() == Some('`') && matches!(self.peek_at(1), Some('\n' | '\r'))
    }

    /// Skips spaces, line continuations and comments, never a new line.
    fn skip_inline(&mut self) -> Result<(), LangError> {
        loop {
            match self.peek() {
                Some(c) if is_space(c) => {
                    self.bump();
                }
                Some('`') if self.at_continuation() => {
                    self.bump();
                    if self.bump() == Some('\r') && self.peek() == Some('\n') {
                        self.bump();
                    }
                }
                // Between tokens PowerShell skips a backtick followed by white space.
                Some('`') if self.peek_at(1).is_some_and(is_space) => {
                    self.bump();
                }
                Some('#') => {
                    while let Some(c) = self.peek() {
                        if is_newline(c) {
                            break;
                        }
                        self.bump();
                    }
                }
                Some('<') if self.peek_at(1) == Some('#') => {
                    let start = self.pos;
                    match self.rest().get(2..).and_then(|r| r.find("#>")) {
                        Some(i) => self.pos += 2 + i + 2,
                        None => {
                            return Err(self.refuse(
                                Refusal::UnterminatedComment,
                                start,
                                start + 2,
                                "an unterminated block comment (<# without #>)".to_string(),
                            ))
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Skips what may separate statements: spaces, comments, new lines and `;`.
    fn skip_statement_separators(&mut self) -> Result<(), LangError> {
        loop {
            self.skip_inline()?;
            match self.peek() {
                Some(c) if is_newline(c) || c == ';' => {
                    self.bump();
                }
                _ => return Ok(()),
            }
        }
    }

    /// Skips spaces, comments and new lines (after `|` and `,`, where PowerShell continues).
    fn skip_inline_and_newlines(&mut self) -> Result<(), LangError> {
        loop {
            self.skip_inline()?;
            match self.peek() {
                Some(c) if is_newline(c) => {
                    self.bump();
                }
                _ => return Ok(()),
            }
        }
    }

    fn statement(&mut self) -> Result<Statement, LangError> {
        let start = self.pos;
        let first = match self.command(true)? {
            Command::Exit(span) => return Ok(Statement::Exit(span)),
            Command::Call(call) => call,
        };
        let mut end = first.span.end;
        let mut commands = vec![first];
        loop {
            self.skip_inline()?;
            match self.peek() {
                None | Some('\n' | '\r' | ';') => break,
                Some('|') => {
                    let bar = self.pos;
                    self.bump();
                    if self.peek() == Some('|') {
                        return Err(self.refuse(
                            Refusal::PipelineChain,
                            bar,
                            bar + 2,
                            "the pipeline chain operator ||".to_string(),
                        ));
                    }
                    self.count_token(bar)?;
                    self.skip_inline_and_newlines()?;
                    if matches!(self.peek(), None | Some(';' | '|')) {
                        return Err(self.refuse(
                            Refusal::EmptyPipelineElement,
                            bar,
                            bar + 1,
                            "an empty pipeline element (nothing after |)".to_string(),
                        ));
                    }
                    if commands.len() >= MAX_PIPELINE_COMMANDS {
                        return Err(self.refuse(
                            Refusal::Limit,
                            self.pos,
                            self.pos,
                            format!("more than {MAX_PIPELINE_COMMANDS} commands in one pipeline"),
                        ));
                    }
                    match self.command(false)? {
                        Command::Call(call) => {
                            end = call.span.end;
                            commands.push(call);
                        }
                        Command::Exit(span) => {
                            return Err(self.refuse(
                                Refusal::Keyword,
                                span.start,
                                span.end,
                                "the keyword exit inside a pipeline".to_string(),
                            ))
                        }
                    }
                }
                Some(_) => {
                    // `command` consumes every element up to a terminator; anything else is a bug
                    // in this parser, refused rather than guessed.
                    let at = self.pos;
                    return Err(self.refuse(
                        Refusal::Syntax,
                        at,
                        at,
                        format!("unexpected text ({})", self.excerpt_word(at)),
                    ));
                }
            }
        }
        Ok(Statement::Pipeline(Pipeline {
            commands,
            span: Span::new(start, end),
        }))
    }

    /// A command at the start of a statement (`first`) or after `|`.
    fn command(&mut self, first: bool) -> Result<Command, LangError> {
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Err(self.refuse(
                Refusal::EmptyPipelineElement,
                start,
                start,
                "an empty pipeline element".to_string(),
            ));
        };
        let next = self.peek_at(1);
        match c {
            '&' => {
                return Err(if next == Some('&') {
                    self.refuse(
                        Refusal::PipelineChain,
                        start,
                        start + 2,
                        "the pipeline chain operator &&".to_string(),
                    )
                } else {
                    self.refuse(
                        Refusal::InvocationOperator,
                        start,
                        start + 1,
                        format!(
                            "the invocation operator & ({})",
                            self.excerpt_until(start, '\n')
                        ),
                    )
                });
            }
            '|' => {
                return Err(if next == Some('|') {
                    self.refuse(
                        Refusal::PipelineChain,
                        start,
                        start + 2,
                        "the pipeline chain operator ||".to_string(),
                    )
                } else {
                    self.refuse(
                        Refusal::EmptyPipelineElement,
                        start,
                        start + 1,
                        "an empty pipeline element (nothing before |)".to_string(),
                    )
                });
            }
            '.' if next.map_or(true, |n| {
                n.is_whitespace()
                    || is_squote(n)
                    || is_dquote(n)
                    || matches!(n, '$' | '(' | '{' | '&' | '@' | '[' | ';' | '|' | '`')
            }) =>
            {
                return Err(self.refuse(
                    Refusal::DotSourcing,
                    start,
                    start + 1,
                    "dot-sourcing (. command)".to_string(),
                ));
            }
            ':' => {
                return Err(self.refuse(
                    Refusal::Label,
                    start,
                    start + 1,
                    format!("a loop label ({})", self.excerpt_word(start)),
                ))
            }
            ',' => {
                return Err(self.refuse(
                    Refusal::Operator,
                    start,
                    start + 1,
                    "the comma operator (,) at the start of a statement".to_string(),
                ))
            }
            c if is_dash(c) => {
                if next.is_some_and(is_dash) && self.peek_at(2) == Some('%') {
                    return Err(self.stop_parsing(start));
                }
                return Err(self.refuse(
                    Refusal::Operator,
                    start,
                    start + c.len_utf8(),
                    format!("an operator or expression ({})", self.excerpt_word(start)),
                ));
            }
            c if is_squote(c) || is_dquote(c) || c == '$' => {
                // Scan the value first: a refused construct inside it is reported as such.
                let lit = self.value_item()?;
                let what = match lit.value {
                    LiteralValue::Quoted(_) => "a quoted string",
                    _ => "a value",
                };
                return Err(self.expression_start(start, what, first));
            }
            '@' | '(' | ')' | '{' | '}' | '[' | '<' | '>' => {
                // value_item refuses each of these with its own error.
                self.value_item()?;
                return Err(self.expression_start(start, "a value", first));
            }
            _ => {}
        }
        let word = self.bareword()?;
        self.count_token(start)?;
        if word.plain && parse_number(&word.value).is_some() {
            return Err(self.expression_start(start, "a number", first));
        }
        if word.plain && looks_like_operator(&word.value) {
            return Err(self.refuse(
                Refusal::Operator,
                start,
                word.end,
                format!("an operator or expression ({})", self.excerpt_word(start)),
            ));
        }
        if first && is_keyword(&word.value) {
            if word.value.eq_ignore_ascii_case("exit") {
                self.skip_inline()?;
                if matches!(self.peek(), None | Some('\n' | '\r' | ';')) {
                    return Ok(Command::Exit(Span::new(start, word.end)));
                }
                return Err(self.refuse(
                    Refusal::Keyword,
                    start,
                    word.end,
                    "the keyword exit followed by more text".to_string(),
                ));
            }
            return Err(self.refuse(
                Refusal::Keyword,
                start,
                word.end,
                format!("the language keyword {}", word.value),
            ));
        }
        let name_span = Span::new(start, word.end);
        let mut end = word.end;
        let mut elements = Vec::new();
        loop {
            self.skip_inline()?;
            match self.peek() {
                None | Some('\n' | '\r' | ';' | '|') => break,
                Some('&') => return Err(self.ampersand(self.pos)),
                Some(_) => {
                    elements.push(self.element()?);
                    end = self.pos;
                }
            }
        }
        Ok(Command::Call(CommandCall {
            name: word.value,
            name_span,
            elements,
            span: Span::new(start, end),
        }))
    }

    /// Refusal for a value where a command name must be. In PowerShell a quoted string, a number
    /// or `$true` there is an expression, never a command.
    fn expression_start(&self, start: usize, what: &str, first: bool) -> LangError {
        let place = if first {
            "at the start of a pipeline (an expression cannot start a pipeline; only a command can)"
        } else {
            "after | where a command name must be"
        };
        self.refuse(
            Refusal::ExpressionStartsPipeline,
            start,
            self.pos.max(start),
            format!(
                "an expression ({what}: {}) {place}",
                self.excerpt_word(start)
            ),
        )
    }

    fn stop_parsing(&self, start: usize) -> LangError {
        self.refuse(
            Refusal::StopParsing,
            start,
            start + 3,
            "the stop-parsing token --%".to_string(),
        )
    }

    /// `&` outside quotes after a command name: `&&` or a background `&`.
    fn ampersand(&self, at: usize) -> LangError {
        if self.src.get(at..).is_some_and(|r| r.starts_with("&&")) {
            self.refuse(
                Refusal::PipelineChain,
                at,
                at + 2,
                "the pipeline chain operator &&".to_string(),
            )
        } else {
            self.refuse(
                Refusal::BackgroundOperator,
                at,
                at + 1,
                "the background operator &".to_string(),
            )
        }
    }

    /// One element after the command name: a parameter or an argument (possibly a list).
    fn element(&mut self) -> Result<CommandElement, LangError> {
        let start = self.pos;
        if let Some(c) = self.peek().filter(|c| is_dash(*c)) {
            let next = self.peek_at(1);
            let number_follows = next.is_some_and(|n| n.is_ascii_digit())
                || (next == Some('.') && self.peek_at(2).is_some_and(|n| n.is_ascii_digit()));
            if !number_follows {
                if next.is_some_and(is_dash) {
                    if self.peek_at(2) == Some('%') {
                        return Err(self.stop_parsing(start));
                    }
                    let after = start + c.len_utf8() + next.map_or(0, char::len_utf8);
                    let ends = ends_word(self.src.get(after..).and_then(|r| r.chars().next()));
                    if ends {
                        return Err(self.refuse(
                            Refusal::EndOfParameters,
                            start,
                            after,
                            "the end-of-parameters marker --".to_string(),
                        ));
                    }
                    // PowerShell scans `--name` as a generic token (an argument), not a parameter.
                    return Ok(CommandElement::Argument(self.value_list()?));
                }
                if next.is_some_and(is_param_start) {
                    return self.parameter();
                }
            }
        }
        Ok(CommandElement::Argument(self.value_list()?))
    }

    /// `-Name`, `-Name:value` or `-Name: value`.
    fn parameter(&mut self) -> Result<CommandElement, LangError> {
        let start = self.pos;
        self.bump();
        let name_start = self.pos;
        while self.peek().is_some_and(is_param_name_char) {
            self.bump();
        }
        if self.peek().is_some_and(|c| is_squote(c) || is_dquote(c)) {
            // As in PowerShell, a quote makes the whole token an argument (`-a'b'` is "-ab").
            self.pos = start;
            return Ok(CommandElement::Argument(self.value_list()?));
        }
        let name = self.src.get(name_start..self.pos).unwrap_or("").to_string();
        self.count_token(start)?;
        match self.peek() {
            Some(':') => {
                let colon = self.pos;
                self.bump();
                self.skip_inline()?;
                if matches!(self.peek(), None | Some('\n' | '\r' | ';' | '|' | ',')) {
                    return Err(self.refuse(
                        Refusal::MissingParameterValue,
                        start,
                        colon + 1,
                        format!("a parameter with a colon and no value (-{name}:)"),
                    ));
                }
                let value = self.value_list()?;
                Ok(CommandElement::Parameter {
                    name,
                    value: Some(value),
                    span: Span::new(start, self.pos),
                })
            }
            c if ends_word(c) => Ok(CommandElement::Parameter {
                name,
                value: None,
                span: Span::new(start, self.pos),
            }),
            Some(c) => Err(self.refuse_in_word(self.pos, c, start, "a parameter name")),
            None => Ok(CommandElement::Parameter {
                name,
                value: None,
                span: Span::new(start, self.pos),
            }),
        }
    }

    /// One value or a comma list of values.
    fn value_list(&mut self) -> Result<Literal, LangError> {
        let start = self.pos;
        let first = self.value_item()?;
        let mut end = self.pos;
        let mut items = vec![first];
        loop {
            let save = self.pos;
            self.skip_inline()?;
            if self.peek() != Some(',') {
                self.pos = save;
                break;
            }
            let comma = self.pos;
            self.bump();
            self.count_token(comma)?;
            self.skip_inline_and_newlines()?;
            if matches!(self.peek(), None | Some(';' | '|' | ',')) {
                return Err(self.refuse(
                    Refusal::MissingListItem,
                    comma,
                    comma + 1,
                    "a comma with no value after it".to_string(),
                ));
            }
            if items.len() >= MAX_LIST_ITEMS {
                return Err(self.refuse(
                    Refusal::Limit,
                    self.pos,
                    self.pos,
                    format!("a list of more than {MAX_LIST_ITEMS} items"),
                ));
            }
            items.push(self.value_item()?);
            end = self.pos;
        }
        if items.len() == 1 {
            if let Some(item) = items.pop() {
                return Ok(item);
            }
        }
        Ok(Literal {
            value: LiteralValue::List(items),
            span: Span::new(start, end),
        })
    }

    /// One value: a quoted string, `$true`/`$false`/`$null`, a number or a bareword.
    fn value_item(&mut self) -> Result<Literal, LangError> {
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Err(self.refuse(
                Refusal::MissingListItem,
                start,
                start,
                "a missing value".to_string(),
            ));
        };
        let next = self.peek_at(1);
        let value = match c {
            c if is_squote(c) => {
                self.count_token(start)?;
                let s = self.single_quoted()?;
                self.after_value(start)?;
                LiteralValue::Quoted(s)
            }
            c if is_dquote(c) => {
                self.count_token(start)?;
                let s = self.double_quoted()?;
                self.after_value(start)?;
                LiteralValue::Quoted(s)
            }
            '$' => {
                self.count_token(start)?;
                let v = self.dollar(false)?;
                self.after_value(start)?;
                v
            }
            '@' => return Err(self.at_sign(start, next)),
            '(' | ')' => {
                return Err(self.refuse(
                    Refusal::Parentheses,
                    start,
                    start + 1,
                    format!("parentheses ({})", self.excerpt_until(start, ')')),
                ))
            }
            '{' | '}' => {
                return Err(self.refuse(
                    Refusal::ScriptBlock,
                    start,
                    start + 1,
                    format!("a script block ({})", self.excerpt_until(start, '}')),
                ))
            }
            '[' => {
                return Err(self.refuse(
                    Refusal::TypeLiteral,
                    start,
                    start + 1,
                    format!("a type literal ({})", self.excerpt_until(start, ']')),
                ))
            }
            '<' | '>' => return Err(self.redirection(start, start)),
            '&' => return Err(self.ampersand(start)),
            ',' => {
                return Err(self.refuse(
                    Refusal::Operator,
                    start,
                    start + 1,
                    "the comma operator (,) at the start of an argument".to_string(),
                ))
            }
            c if ends_word(Some(c)) => {
                return Err(self.refuse(
                    Refusal::MissingListItem,
                    start,
                    start,
                    "a missing value".to_string(),
                ))
            }
            _ => {
                self.count_token(start)?;
                let word = self.bareword()?;
                match (word.plain, parse_number(&word.value)) {
                    (true, Some(n)) => n,
                    _ => LiteralValue::Bare(word.value),
                }
            }
        };
        Ok(Literal {
            value,
            span: Span::new(start, self.pos),
        })
    }

    /// Refusal for `@` at the start of a word.
    fn at_sign(&self, start: usize, next: Option<char>) -> LangError {
        match next {
            Some('(') => self.refuse(
                Refusal::ArrayExpression,
                start,
                start + 2,
                format!("an array expression ({})", self.excerpt_until(start, ')')),
            ),
            Some('{') => self.refuse(
                Refusal::Hashtable,
                start,
                start + 2,
                format!("a hashtable ({})", self.excerpt_until(start, '}')),
            ),
            Some(n) if is_squote(n) || is_dquote(n) => self.refuse(
                Refusal::HereString,
                start,
                start + 1 + n.len_utf8(),
                "a here-string (@' or @\")".to_string(),
            ),
            Some(n) if is_var_char(n) => self.refuse(
                Refusal::Splatting,
                start,
                start + 1,
                format!("splatting ({})", self.excerpt_word(start)),
            ),
            _ => self.refuse(
                Refusal::Syntax,
                start,
                start + 1,
                "an @ sign at the start of a word".to_string(),
            ),
        }
    }

    /// Refusal for `<`/`>` at `at`; `word_start` lets `2>` and `*>` be reported from their start.
    fn redirection(&self, at: usize, word_start: usize) -> LangError {
        let prefix = self.src.get(word_start..at).unwrap_or("");
        let start =
            if prefix.len() == 1 && matches!(prefix, "*" | "1" | "2" | "3" | "4" | "5" | "6") {
                word_start
            } else {
                at
            };
        self.refuse(
            Refusal::Redirection,
            start,
            at + 1,
            format!("redirection ({})", self.excerpt_word(start)),
        )
    }

    /// Checks what directly follows a quoted string or `$true`: only a separator or a comment.
    fn after_value(&self, value_start: usize) -> Result<(), LangError> {
        let at = self.pos;
        let c = self.peek();
        if ends_word(c) || self.at_continuation() {
            return Ok(());
        }
        let next = self.peek_at(1);
        match c {
            Some('#') => Ok(()),
            Some('<') if next == Some('#') => Ok(()),
            Some('`') if next.is_some_and(is_space) => Ok(()),
            Some('.') => {
                let after_dot = self.src.get(at + 1..).unwrap_or("");
                let name_len: usize = after_dot
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .map(char::len_utf8)
                    .sum();
                let is_call = name_len > 0
                    && after_dot
                        .get(name_len..)
                        .is_some_and(|r| r.starts_with('('));
                Err(if is_call {
                    self.refuse(
                        Refusal::MethodCall,
                        at,
                        at + 1 + name_len,
                        format!("a method call ({})", self.excerpt_until(value_start, ')')),
                    )
                } else {
                    self.refuse(
                        Refusal::MemberAccess,
                        at,
                        at + 1,
                        format!("member access ({})", self.excerpt_word(value_start)),
                    )
                })
            }
            Some('[') => Err(self.refuse(
                Refusal::Indexing,
                at,
                at + 1,
                format!("indexing ({})", self.excerpt_until(value_start, ']')),
            )),
            Some(':') if next == Some(':') => Err(self.refuse(
                Refusal::MemberAccess,
                at,
                at + 2,
                format!("static member access ({})", self.excerpt_word(value_start)),
            )),
            Some(c) => Err(self.refuse_in_word(at, c, value_start, "a quoted string or value")),
            None => Ok(()),
        }
    }

    /// Refusal for a character found inside a word where it has a meaning other than text.
    fn refuse_in_word(&self, at: usize, c: char, word_start: usize, context: &str) -> LangError {
        match c {
            '$' => {
                let mut probe = Parser {
                    src: self.src,
                    pos: at,
                    tokens: 0,
                };
                match probe.dollar(false) {
                    Err(e) => e,
                    Ok(_) => self.refuse(
                        Refusal::Variable,
                        at,
                        probe.pos,
                        format!(
                            "a variable ({}) inside a word",
                            self.src.get(at..probe.pos).unwrap_or("$")
                        ),
                    ),
                }
            }
            '(' | ')' => self.refuse(
                Refusal::Parentheses,
                at,
                at + 1,
                format!("parentheses ({})", self.excerpt_until(at, ')')),
            ),
            '{' | '}' => self.refuse(
                Refusal::ScriptBlock,
                at,
                at + 1,
                format!("a script block ({})", self.excerpt_until(at, '}')),
            ),
            '<' | '>' => self.redirection(at, word_start),
            '&' => self.ampersand(at),
            '[' => self.refuse(
                Refusal::Indexing,
                at,
                at + 1,
                format!("indexing ({})", self.excerpt_until(at, ']')),
            ),
            _ => self.refuse(
                Refusal::Syntax,
                at,
                at + c.len_utf8(),
                format!("text ({}) directly after {context}", self.excerpt_word(at)),
            ),
        }
    }

    /// A bareword (PowerShell's generic token): text, escapes and embedded quoted parts.
    fn bareword(&mut self) -> Result<Word, LangError> {
        let start = self.pos;
        let mut value = String::new();
        let mut plain = true;
        loop {
            let here = self.pos;
            let Some(c) = self.peek() else { break };
            if ends_word(Some(c)) {
                break;
            }
            match c {
                '`' => match self.peek_at(1) {
                    None => {
                        return Err(self.refuse(
                            Refusal::IncompleteInput,
                            here,
                            here + 1,
                            "a backtick at the end of the input".to_string(),
                        ))
                    }
                    // PowerShell keeps an escaped new line inside a word (`a`<LF>b` is one word).
                    Some(_) => {
                        self.bump();
                        value.push(self.escape(here)?);
                        plain = false;
                    }
                },
                c if is_squote(c) => {
                    value.push_str(&self.single_quoted()?);
                    plain = false;
                }
                c if is_dquote(c) => {
                    value.push_str(&self.double_quoted()?);
                    plain = false;
                }
                '(' if here > start => {
                    let before = self.src.get(start..here).unwrap_or("");
                    let member: String = before
                        .chars()
                        .rev()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    let dot_before = before
                        .get(..before.len().saturating_sub(member.len()))
                        .is_some_and(|b| b.ends_with('.'));
                    return Err(if !member.is_empty() && dot_before {
                        self.refuse(
                            Refusal::MethodCall,
                            here,
                            here + 1,
                            format!("a method call ({})", self.excerpt_until(start, ')')),
                        )
                    } else {
                        self.refuse_in_word(here, c, start, "a word")
                    });
                }
                '$' | '(' | ')' | '{' | '}' | '<' | '>' | '&' => {
                    return Err(self.refuse_in_word(here, c, start, "a word"))
                }
                c => {
                    self.bump();
                    value.push(c);
                }
            }
        }
        let raw = self.src.get(start..self.pos).unwrap_or("");
        let mut chars = raw.chars();
        if chars.next().is_some_and(is_dash)
            && chars.next().is_some_and(is_dash)
            && chars.next() == Some('%')
        {
            return Err(self.stop_parsing(start));
        }
        if plain {
            let normalized: String = value
                .chars()
                .map(|c| if is_dash(c) { '-' } else { c })
                .collect();
            if ASSIGNMENT_OPERATORS.contains(&normalized.as_str()) {
                return Err(self.refuse(
                    Refusal::Assignment,
                    start,
                    self.pos,
                    format!("assignment ({value})"),
                ));
            }
        }
        Ok(Word {
            value,
            plain,
            end: self.pos,
        })
    }

    /// After a backtick (already consumed, at `tick`): the escaped character.
    fn escape(&mut self, tick: usize) -> Result<char, LangError> {
        let Some(c) = self.bump() else {
            return Err(self.refuse(
                Refusal::IncompleteInput,
                tick,
                tick + 1,
                "a backtick at the end of the input".to_string(),
            ));
        };
        Ok(match c {
            '0' => '\0',
            'a' => '\u{07}',
            'b' => '\u{08}',
            'e' => '\u{1b}',
            'f' => '\u{0c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{0b}',
            'u' if self.peek() != Some('{') => {
                return Err(self.refuse(
                    Refusal::InvalidEscape,
                    tick,
                    self.pos,
                    "an invalid Unicode escape (`u without {…})".to_string(),
                ));
            }
            'u' => {
                let parsed: IResult<&str, &str> = delimited(
                    nom_char('{'),
                    take_while_m_n(1, 6, |c: char| c.is_ascii_hexdigit()),
                    nom_char('}'),
                )(self.rest());
                let Ok((rest, hex)) = parsed else {
                    return Err(self.refuse(
                        Refusal::InvalidEscape,
                        tick,
                        self.pos,
                        format!(
                            "an invalid Unicode escape ({})",
                            self.excerpt_until(tick, '}')
                        ),
                    ));
                };
                let ch = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32);
                match ch {
                    Some(ch)
                        if is_forbidden_char(ch).is_none()
                            && (u32::from(ch) >= 0x20 || matches!(ch, '\t' | '\n' | '\r')) =>
                    {
                        self.pos = self.src.len() - rest.len();
                        ch
                    }
                    _ => {
                        let kind = if ch.is_some() {
                            Refusal::ControlCharacter
                        } else {
                            Refusal::InvalidEscape
                        };
                        return Err(self.refuse(
                            kind,
                            tick,
                            self.pos,
                            format!("a Unicode escape of a forbidden character (`u{{{hex}}})"),
                        ));
                    }
                }
            }
            other => other,
        })
    }

    fn single_quoted(&mut self) -> Result<String, LangError> {
        let start = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err(self.unterminated(start, "single")),
                Some(c) if is_squote(c) => match self.peek() {
                    Some(n) if is_squote(n) => {
                        self.bump();
                        out.push(n);
                    }
                    _ => return Ok(out),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, LangError> {
        let start = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            let here = self.pos;
            match self.peek() {
                None => return Err(self.unterminated(start, "double")),
                Some(c) if is_dquote(c) => {
                    self.bump();
                    match self.peek() {
                        Some(n) if is_dquote(n) => {
                            self.bump();
                            out.push(n);
                        }
                        _ => return Ok(out),
                    }
                }
                Some('`') => {
                    self.bump();
                    if self.peek().is_none() {
                        return Err(self.unterminated(start, "double"));
                    }
                    out.push(self.escape(here)?);
                }
                Some('$') => {
                    return Err(match self.dollar(true) {
                        Err(e) => e,
                        Ok(_) => self.refuse(
                            Refusal::Variable,
                            here,
                            self.pos,
                            format!(
                                "a variable ({}) inside a double-quoted string",
                                self.src.get(here..self.pos).unwrap_or("$")
                            ),
                        ),
                    })
                }
                Some(c) => {
                    self.bump();
                    out.push(c);
                }
            }
        }
    }

    fn unterminated(&self, start: usize, kind: &str) -> LangError {
        self.refuse(
            Refusal::UnterminatedString,
            start,
            self.pos,
            format!(
                "an unterminated {kind}-quoted string ({})",
                self.excerpt_until(start, '\n')
            ),
        )
    }

    /// `$…` at the cursor: `$true`, `$false` or `$null`, anything else refused.
    fn dollar(&mut self, in_string: bool) -> Result<LiteralValue, LangError> {
        let start = self.pos;
        self.bump();
        let where_ = if in_string {
            " inside a double-quoted string"
        } else {
            ""
        };
        match self.peek() {
            Some('(') => Err(self.refuse(
                Refusal::SubExpression,
                start,
                start + 2,
                format!(
                    "a subexpression ({}){where_}",
                    self.excerpt_until(start, ')')
                ),
            )),
            Some('{') => Err(self.refuse(
                Refusal::Variable,
                start,
                start + 2,
                format!("a variable ({}){where_}", self.excerpt_until(start, '}')),
            )),
            Some(c) if is_var_char(c) => {
                let parsed: IResult<&str, &str> = take_while1(is_var_char)(self.rest());
                let name = match parsed {
                    Ok((_, name)) => name,
                    Err(_) => "",
                };
                self.pos += name.len();
                let value = match name.to_ascii_lowercase().as_str() {
                    "true" => Some(LiteralValue::Bool(true)),
                    "false" => Some(LiteralValue::Bool(false)),
                    "null" => Some(LiteralValue::Null),
                    _ => None,
                };
                match value {
                    Some(v) if !in_string => Ok(v),
                    _ => Err(self.refuse(
                        Refusal::Variable,
                        start,
                        self.pos,
                        format!("a variable (${name}){where_}"),
                    )),
                }
            }
            Some(c @ ('$' | '^')) => {
                self.bump();
                Err(self.refuse(
                    Refusal::Variable,
                    start,
                    self.pos,
                    format!("a variable (${c}){where_}"),
                ))
            }
            _ => Err(self.refuse(
                Refusal::Variable,
                start,
                start + 1,
                format!("an unescaped dollar sign ($){where_}"),
            )),
        }
    }
}

/// A bareword that PowerShell would read as an operator at the start of a statement.
fn looks_like_operator(word: &str) -> bool {
    word == "/" || word == "//" || word.starts_with(['!', '+', '*'])
}

/// A plain bareword that PowerShell reads as a number: decimal, double, `0x` hex, `0b` binary,
/// optional `l`/`d` type suffix and `kb`…`pb` multiplier, optionally negative.
fn parse_number(raw: &str) -> Option<LiteralValue> {
    let mut chars = raw.chars();
    let (negative, body) = match chars.next() {
        Some(c) if is_dash(c) => (true, chars.as_str()),
        Some(_) => (false, raw),
        None => return None,
    };
    let multiplier = |i| -> IResult<&str, Option<u32>> {
        opt(alt((
            nom::combinator::value(1u32, tag_no_case("kb")),
            nom::combinator::value(2u32, tag_no_case("mb")),
            nom::combinator::value(3u32, tag_no_case("gb")),
            nom::combinator::value(4u32, tag_no_case("tb")),
            nom::combinator::value(5u32, tag_no_case("pb")),
        )))(i)
    };
    let radix = |prefix: &'static str, radix: u32| {
        move |i| -> IResult<&str, Based<'_>> {
            let (i, digits) = preceded(
                tag_no_case(prefix),
                take_while1(move |c: char| c.is_digit(radix)),
            )(i)?;
            let (i, long) = opt(tag_no_case("l"))(i)?;
            let (i, mult) = multiplier(i)?;
            let (i, _) = eof(i)?;
            Ok((i, (radix, digits, long, mult)))
        }
    };
    let based: IResult<&str, Based<'_>> = alt((radix("0x", 16), radix("0b", 2)))(body);
    let value = if let Ok((_, (radix, digits, long, mult))) = based {
        let bits = u64::from_str_radix(digits, radix).ok()?;
        let width = if radix == 16 {
            digits.len() * 4
        } else {
            digits.len()
        };
        // PowerShell reads short hex/binary literals as the bit pattern of an int32.
        let n = if long.is_none() && width <= 32 {
            i64::from(u32::try_from(bits).ok()? as i32)
        } else if width <= 64 {
            bits as i64
        } else {
            return None;
        };
        scale_int(n, mult)
    } else {
        let decimal: IResult<&str, (&str, Option<&str>, Option<u32>)> = tuple((
            recognize(pair(
                alt((
                    recognize(pair(digit1, opt(pair(nom_char('.'), digit0)))),
                    recognize(pair(nom_char('.'), digit1)),
                )),
                opt(tuple((one_of("eE"), opt(one_of("+-")), digit1))),
            )),
            opt(alt((tag_no_case("l"), tag_no_case("d")))),
            |i| {
                let (i, m) = multiplier(i)?;
                let (i, _) = eof(i)?;
                Ok((i, m))
            },
        ))(body);
        let (_, (text, suffix, mult)) = decimal.ok()?;
        let is_double =
            text.contains(['.', 'e', 'E']) || suffix.is_some_and(|s| s.eq_ignore_ascii_case("d"));
        if is_double {
            let f: f64 = text.parse().ok()?;
            LiteralValue::Double(f * 1024f64.powi(mult.unwrap_or(0) as i32))
        } else {
            match text.parse::<i64>() {
                Ok(n) => scale_int(n, mult),
                Err(_) => {
                    let f: f64 = text.parse().ok()?;
                    LiteralValue::Double(f * 1024f64.powi(mult.unwrap_or(0) as i32))
                }
            }
        }
    };
    Some(match (negative, value) {
        (false, v) => v,
        (true, LiteralValue::Int(n)) => match n.checked_neg() {
            Some(m) => LiteralValue::Int(m),
            None => LiteralValue::Double(-(n as f64)),
        },
        (true, LiteralValue::Double(f)) => LiteralValue::Double(-f),
        (true, v) => v,
    })
}

/// A `0x`/`0b` literal: radix, digits, `l` suffix, multiplier exponent.
type Based<'a> = (u32, &'a str, Option<&'a str>, Option<u32>);

fn scale_int(n: i64, mult: Option<u32>) -> LiteralValue {
    let factor = 1024i64.checked_pow(mult.unwrap_or(0));
    match factor.and_then(|f| n.checked_mul(f)) {
        Some(v) => LiteralValue::Int(v),
        None => LiteralValue::Double(n as f64 * 1024f64.powi(mult.unwrap_or(0) as i32)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Expected outcome: the rendered shape of the script, or a refusal id and column.
    enum Expect {
        Ok(&'static str),
        Err(&'static str, usize),
    }

    fn render_lit(l: &Literal) -> String {
        match &l.value {
            LiteralValue::Bare(s) => s.clone(),
            LiteralValue::Quoted(s) => format!("'{s}'"),
            LiteralValue::Int(n) => format!("{n}i"),
            LiteralValue::Double(f) => format!("{f}d"),
            LiteralValue::Bool(b) => format!("${b}"),
            LiteralValue::Null => "$null".to_string(),
            LiteralValue::List(items) => {
                format!(
                    "[{}]",
                    items.iter().map(render_lit).collect::<Vec<_>>().join(", ")
                )
            }
        }
    }

    fn render(s: &Script) -> String {
        s.statements
            .iter()
            .map(|st| match st {
                Statement::Exit(_) => "exit".to_string(),
                Statement::Pipeline(p) => p
                    .commands
                    .iter()
                    .map(|c| {
                        let mut parts = vec![format!("<{}>", c.name)];
                        for e in &c.elements {
                            parts.push(match e {
                                CommandElement::Parameter {
                                    name, value: None, ..
                                } => format!("-{name}"),
                                CommandElement::Parameter {
                                    name,
                                    value: Some(v),
                                    ..
                                } => {
                                    format!("-{name}:{}", render_lit(v))
                                }
                                CommandElement::Argument(l) => render_lit(l),
                            });
                        }
                        parts.join(" ")
                    })
                    .collect::<Vec<_>>()
                    .join(" | "),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn check(input: &str, expected: Expect) {
        let got = parse(input);
        match (expected, got) {
            (Expect::Ok(shape), Ok(script)) => {
                assert_eq!(render(&script), shape, "input: {input:?}")
            }
            (Expect::Err(id, col), Err(e)) => {
                assert_eq!((e.id, e.column), (id, col), "input: {input:?}, error: {e}")
            }
            (Expect::Ok(shape), Err(e)) => {
                panic!("input {input:?}: expected {shape:?}, got error {e}")
            }
            (Expect::Err(id, col), Ok(s)) => {
                panic!(
                    "input {input:?}: expected {id} at {col}, got {:?}",
                    render(&s)
                )
            }
        }
    }

    use Expect::{Err as E, Ok as O};

    #[test]
    fn accepts_commands_and_literals() {
        check("", O(""));
        check("  ;\n\n ; ", O(""));
        check("Get-Service", O("<Get-Service>"));
        check(
            "Get-Service -Name nginx,cups | Select-Object -First 2; Get-Date",
            O("<Get-Service> -Name [nginx, cups] | <Select-Object> -First 2i; <Get-Date>"),
        );
        check("gsv *.service", O("<gsv> *.service"));
        check("/usr/bin/uptime -p", O("</usr/bin/uptime> -p"));
        check(
            "x a.b 1.2.3.4 foo@bar.service",
            O("<x> a.b 1.2.3.4 foo@bar.service"),
        );
        check("x -Name:nginx -Force", O("<x> -Name:nginx -Force"));
        check("x -Name: nginx", O("<x> -Name:nginx"));
        check("x -Count:-5 -5 -1.5", O("<x> -Count:-5i -5i -1.5d"));
        check(
            "x 1kb 2MB 0x10 0xFFFFFFFF 1.5kb 1e3 7l",
            O("<x> 1024i 2097152i 16i -1i 1536d 1000d 7i"),
        );
        check(
            "x 'it''s' \"a`$b `\"q`\" \"\"\"",
            O("<x> 'it's' 'a$b \"q\" \"'"),
        );
        check("x \"`u{41}`t\"", O("<x> 'A\t'"));
        check("x $true $FALSE $Null", O("<x> $true $false $null"));
        check("x -Confirm:$false", O("<x> -Confirm:$false"));
        check("x a, b ,'c'", O("<x> [a, b, 'c']"));
        check("x a,\n b", O("<x> [a, b]"));
        check("x # comment $(bad)\ny", O("<x>; <y>"));
        check("x <# block\n $x #> y", O("<x> y"));
        check("x `\n  -Name y", O("<x> -Name y"));
        check("x a`$b", O("<x> a$b"));
        check("x a'b c'd", O("<x> ab cd"));
        check("exit", O("exit"));
        check("EXIT ; exit # bye", O("exit; exit"));
        check("a |\n b", O("<a> | <b>"));
        check("x - key=value a=b ::1", O("<x> - key=value a=b ::1"));
        check("x –Name ‘v’ “w”", O("<x> -Name 'v' 'w'"));
        check(
            "Where-Object Status -eq Running",
            O("<Where-Object> Status -eq Running"),
        );
        check("x --force --no-pager", O("<x> --force --no-pager"));
        check(
            "Microsoft.PowerShell.Utility\\Invoke-Expression x",
            O("<Microsoft.PowerShell.Utility\\Invoke-Expression> x"),
        );
        check("7z a", O("<7z> a"));
        check("% Name", O("<%> Name"));
        check("x file[12].txt", O("<x> file[12].txt"));
        check("x --force", O("<x> --force"));
        check("x -Na'me' -a\"b c\"", O("<x> -Name -ab c"));
        check("x a`\nb", O("<x> a\nb"));
        check("x ` b", O("<x> b"));
        check("x 'a'` b", O("<x> 'a' b"));
        check("x a` b", O("<x> a b"));
    }

    #[test]
    fn refuses_variables_and_expressions() {
        check("x $env:PATH", E("VariableNotAllowed", 3));
        check("x ${env:x}", E("VariableNotAllowed", 3));
        check("x $_", E("VariableNotAllowed", 3));
        check("x \"a $b\"", E("VariableNotAllowed", 6));
        check("x \"a $\"", E("VariableNotAllowed", 6));
        check("x \"``$(whoami)\"", E("SubExpressionNotAllowed", 6));
        check("x a$b", E("VariableNotAllowed", 4));
        check("$x = 1", E("VariableNotAllowed", 1));
        check("x = 1", E("AssignmentNotAllowed", 3));
        check("x += 1", E("AssignmentNotAllowed", 3));
        check("x (y)", E("ParenthesesNotAllowed", 3));
        check("x $(y)", E("SubExpressionNotAllowed", 3));
        check("x @(y)", E("ArrayExpressionNotAllowed", 3));
        check("x @{a=1}", E("HashtableNotAllowed", 3));
        check("x @'\nq\n'@", E("HereStringNotAllowed", 3));
        check("x {y}", E("ScriptBlockNotAllowed", 3));
        check("x @args", E("SplattingNotAllowed", 3));
        check("[int]::MaxValue", E("TypeLiteralNotAllowed", 1));
        check("x 'a'.Length", E("MemberAccessNotAllowed", 6));
        check("x 'a'.ToUpper()", E("MethodCallNotAllowed", 6));
        check("x a.ToUpper()", E("MethodCallNotAllowed", 12));
        check("x 'a'[0]", E("IndexingNotAllowed", 6));
        check("x $true.x", E("MemberAccessNotAllowed", 8));
        check(
            "'text' | Out-Default",
            E("ExpressionCannotStartPipeline", 1),
        );
        check("1 | x", E("ExpressionCannotStartPipeline", 1));
        check("-not 1", E("OperatorNotAllowed", 1));
        check("!x", E("OperatorNotAllowed", 1));
    }

    #[test]
    fn refuses_operators_and_structure() {
        check("x > f", E("RedirectionNotAllowed", 3));
        check("x 2>&1", E("RedirectionNotAllowed", 3));
        check("x a>b", E("RedirectionNotAllowed", 4));
        check("x < f", E("RedirectionNotAllowed", 3));
        check("& x", E("InvocationOperatorNotAllowed", 1));
        check("a | & x", E("InvocationOperatorNotAllowed", 5));
        check(". x", E("DotSourcingNotAllowed", 1));
        check(". 'x'", E("DotSourcingNotAllowed", 1));
        check("x &", E("BackgroundOperatorNotAllowed", 3));
        check("x && y", E("PipelineChainNotAllowed", 3));
        check("x || y", E("PipelineChainNotAllowed", 3));
        check("x --% $a", E("StopParsingNotAllowed", 3));
        check("x -- -a", E("EndOfParametersNotAllowed", 3));
        check("function f", E("KeywordNotAllowed", 1));
        check("a; IF x", E("KeywordNotAllowed", 4));
        check("exit 1", E("KeywordNotAllowed", 1));
        check(":l while", E("LabelNotAllowed", 1));
        check("x \u{0}", E("ControlCharacterNotAllowed", 3));
        check("x '\u{202e}'", E("ControlCharacterNotAllowed", 4));
        check("x 'abc", E("UnterminatedString", 3));
        check("x \"abc`\"", E("UnterminatedString", 3));
        check("x <# abc", E("UnterminatedComment", 3));
        check("x `", E("IncompleteInput", 3));
        check("x \"`u{zz}\"", E("InvalidEscapeSequence", 4));
        check("x \"`u{202E}\"", E("ControlCharacterNotAllowed", 4));
        check("a | | b", E("EmptyPipelineElement", 3));
        check("| b", E("EmptyPipelineElement", 1));
        check("a |", E("EmptyPipelineElement", 3));
        check("x a,", E("MissingListItem", 4));
        check("x -Name:", E("MissingParameterValue", 3));
        check("x 'a'b", E("SyntaxNotAllowed", 6));
        check("x -Force`\n -y", E("SyntaxNotAllowed", 9));
        check("x -Name.x", E("SyntaxNotAllowed", 8));
        check("x \"`ux\"", E("InvalidEscapeSequence", 4));
        check("x\n  y $z", E("VariableNotAllowed", 5));
    }

    #[test]
    fn look_alikes_mean_what_powershell_means() {
        check("x \u{2014}\u{2013}% a", E("StopParsingNotAllowed", 3));
        check(
            "x \u{201C}$(whoami)\u{201D}",
            E("SubExpressionNotAllowed", 4),
        );
        check("x \u{2018}$(whoami)\u{2019}", O("<x> '$(whoami)'"));
        check("\u{2015}not x", E("OperatorNotAllowed", 1));
        check("x \u{2013}5", O("<x> -5i"));
    }

    #[test]
    fn limits() {
        let long = format!("x {}", "a".repeat(MAX_LINE_BYTES));
        check(&long, E("LimitExceeded", MAX_LINE_BYTES + 1));
        let short_cr_lines = "x a\r".repeat(MAX_LINE_BYTES / 2);
        assert!(parse(&short_cr_lines)
            .is_err_and(|e| e.id != "LimitExceeded" || e.construct.contains("statements")));
        let list = format!("x {}a", "a,".repeat(MAX_LIST_ITEMS));
        assert_eq!(parse(&list).unwrap_err().id, "LimitExceeded");
        let statements = "x;".repeat(MAX_STATEMENTS + 1);
        assert_eq!(parse(&statements).unwrap_err().id, "LimitExceeded");
        let pipeline = format!("x{}", " | x".repeat(MAX_PIPELINE_COMMANDS));
        assert_eq!(parse(&pipeline).unwrap_err().id, "LimitExceeded");
        let tokens = "x a a a a a a a\n".repeat(MAX_TOKENS / 8 + 1);
        assert_eq!(parse(&tokens).unwrap_err().id, "LimitExceeded");
        assert!(parse(&"x;".repeat(MAX_STATEMENTS)).is_ok());
    }

    #[test]
    fn message_names_construct_column_and_hint() {
        let e = parse("Get-Item   $env:PATH").unwrap_err();
        assert_eq!(e.column, 12);
        let msg = e.to_string();
        assert!(msg.contains("a variable ($env:PATH)"), "{msg}");
        assert!(msg.contains("at column 12"), "{msg}");
        assert!(msg.contains("NoLanguage"), "{msg}");
    }

    #[test]
    fn spans_point_into_source() {
        let src = "Get-Service -Name nginx";
        let s = parse(src).unwrap();
        let Statement::Pipeline(p) = &s.statements[0] else {
            panic!()
        };
        let c = &p.commands[0];
        assert_eq!(&src[c.name_span.start..c.name_span.end], "Get-Service");
        assert_eq!(c.span, Span::new(0, src.len()));
        match &c.elements[1] {
            CommandElement::Argument(l) => assert_eq!(&src[l.span.start..l.span.end], "nginx"),
            other => panic!("{other:?}"),
        }
    }
}
