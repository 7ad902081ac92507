//! Tab completion for the web console, answered from the session's own command table (the
//! commands the user can see, as `Get-Command` shows them): command names (aliases included)
//! where a command goes, parameter names after a `-`, and the values of a parameter that has a
//! set (the role's set where it narrows the command's). Nothing else is ever offered: the table
//! holds only what the user may see.
#![forbid(unsafe_code)]

use crate::catalog::{CommonUse, COMMON_PARAMETERS};
use crate::engine::{CommandKind, VisibleCommand};

/// Most matches one completion returns.
pub const MAX_MATCHES: usize = 200;
/// Longest line completed (bytes); the console's own line limit is larger, but nobody
/// completes a word in a line this long.
pub const MAX_COMPLETION_LINE: usize = 4096;

/// What replaces `line[start..end]` (byte offsets): one of `matches`, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Completion {
    pub start: usize,
    pub end: usize,
    pub matches: Vec<String>,
}

impl Completion {
    fn none(at: usize) -> Completion {
        Completion {
            start: at,
            end: at,
            matches: Vec::new(),
        }
    }
}

/// One word of the line, as the completer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    start: usize,
    end: usize,
    /// The text with quotes removed.
    text: String,
}

/// Split `line` into words and separators (`|`, `;`), quotes respected (no escapes beyond
/// PowerShell's doubled quote). Returns the words of the current statement's last command.
fn last_command_words(line: &str) -> Vec<Word> {
    let mut words: Vec<Word> = Vec::new();
    let mut cur: Option<Word> = None;
    let mut quote: Option<char> = None;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                if chars.peek().map(|(_, n)| *n) == Some(q) {
                    chars.next();
                    if let Some(w) = cur.as_mut() {
                        w.text.push(q);
                    }
                } else {
                    quote = None;
                }
            } else if let Some(w) = cur.as_mut() {
                w.text.push(c);
            }
            if let Some(w) = cur.as_mut() {
                w.end = i + c.len_utf8();
            }
            continue;
        }
        match c {
            '|' | ';' => {
                cur = None;
                words.clear();
            }
            c if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '\'' | '"' => {
                quote = Some(c);
                let w = cur.get_or_insert(Word {
                    start: i,
                    end: i,
                    text: String::new(),
                });
                w.end = i + c.len_utf8();
            }
            c => {
                let w = cur.get_or_insert(Word {
                    start: i,
                    end: i,
                    text: String::new(),
                });
                w.text.push(c);
                w.end = i + c.len_utf8();
            }
        }
    }
    match cur {
        Some(w) => words.push(w),
        // The cursor follows whitespace (or a separator): an empty word there.
        None => words.push(Word {
            start: line.len(),
            end: line.len(),
            text: String::new(),
        }),
    }
    words
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len()
        && s.get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// Quote a value for the command line when it needs it.
fn quoted(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || "'\"|;,`$(){}@#&<>".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

fn find<'a>(visible: &'a [VisibleCommand], name: &str) -> Option<&'a VisibleCommand> {
    visible
        .iter()
        .find(|c| c.decl.name.eq_ignore_ascii_case(name))
        .or_else(|| {
            // Applications may be written by file name.
            visible.iter().find(|c| {
                c.decl.kind == CommandKind::Application
                    && c.decl
                        .path
                        .as_deref()
                        .and_then(|p| p.rsplit('/').next())
                        .is_some_and(|f| f.eq_ignore_ascii_case(name))
            })
        })
}

/// Parameter names a command takes: its declared (granted) ones, then the common parameters
/// it accepts (not the variable-setting ones, which keyhole refuses).
fn parameter_names(cmd: &VisibleCommand) -> Vec<String> {
    let mut names: Vec<String> = cmd.decl.params.iter().map(|p| p.name.clone()).collect();
    if cmd.decl.kind != CommandKind::Application {
        for c in COMMON_PARAMETERS {
            if c.use_ == CommonUse::SetsVariable
                || (c.state_changing_only && !cmd.decl.changes_state)
            {
                continue;
            }
            if !names.iter().any(|n| n.eq_ignore_ascii_case(c.name)) {
                names.push(c.name.to_string());
            }
        }
    }
    names
}

/// Complete the word that ends at byte `cursor` of `line` against `visible`.
pub fn complete(visible: &[VisibleCommand], line: &str, cursor: usize) -> Completion {
    let cursor = cursor.min(line.len());
    let Some(head) = line.get(..cursor) else {
        return Completion::none(cursor);
    };
    if head.len() > MAX_COMPLETION_LINE {
        return Completion::none(cursor);
    }
    let words = last_command_words(head);
    let Some(word) = words.last() else {
        return Completion::none(cursor);
    };
    let mut matches: Vec<String> = Vec::new();
    if words.len() == 1 {
        // A command goes here.
        let mut names: Vec<&str> = visible.iter().map(|c| c.decl.name.as_str()).collect();
        names.sort_by_key(|n| n.to_ascii_lowercase());
        names.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        matches.extend(
            names
                .into_iter()
                .filter(|n| starts_with_ci(n, &word.text))
                .map(quoted),
        );
    } else if let Some(cmd) = words.first().and_then(|w| find(visible, &w.text)) {
        if let Some(p) = word.text.strip_prefix('-') {
            let mut names = parameter_names(cmd);
            names.retain(|n| starts_with_ci(n, p));
            matches.extend(names.into_iter().map(|n| format!("-{n}")));
        } else if let Some(prev) = words
            .len()
            .checked_sub(2)
            .and_then(|i| words.get(i))
            .and_then(|w| w.text.strip_prefix('-'))
        {
            // A value after `-Name`: the parameter's set, if it has one.
            let param = cmd.decl.params.iter().find(|p| {
                p.name.eq_ignore_ascii_case(prev)
                    || p.aliases.iter().any(|a| a.eq_ignore_ascii_case(prev))
            });
            if let Some(p) = param {
                matches.extend(
                    p.set
                        .iter()
                        .filter(|v| starts_with_ci(v, &word.text))
                        .map(|v| quoted(v)),
                );
            }
        }
    }
    matches.truncate(MAX_MATCHES);
    Completion {
        start: word.start,
        end: cursor,
        matches,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::engine::{CommandDecl, ParamDecl, ParamType};

    fn visible() -> Vec<VisibleCommand> {
        let mut restart = CommandDecl::cmdlet("Restart-Service", "keyhole", "");
        restart.changes_state = true;
        restart.params = vec![ParamDecl::new("Name", ParamType::StringArray)
            .alias("ServiceName")
            .set(&["nginx", "php fpm"])];
        let mut get = CommandDecl::cmdlet("Get-Service", "keyhole", "");
        get.params = vec![ParamDecl::new("Name", ParamType::StringArray)];
        let mut alias = CommandDecl::cmdlet("gsv", "keyhole", "");
        alias.kind = CommandKind::Alias;
        alias.params = get.params.clone();
        let mut app = CommandDecl::cmdlet("uptime", "", "");
        app.kind = CommandKind::Application;
        app.path = Some("/usr/bin/uptime".into());
        [restart, get, alias, app]
            .into_iter()
            .map(|decl| VisibleCommand {
                decl,
                resolved: None,
            })
            .collect()
    }

    fn at_end(line: &str) -> Completion {
        complete(&visible(), line, line.len())
    }

    #[test]
    fn commands_where_a_command_goes() {
        let c = at_end("get-s");
        assert_eq!(c.matches, vec!["Get-Service"]);
        assert_eq!((c.start, c.end), (0, 5));
        let c = at_end("Get-Date | res");
        assert_eq!(c.matches, vec!["Restart-Service"]);
        assert_eq!(c.start, 11);
        assert_eq!(
            at_end("").matches.len(),
            4,
            "everything visible, nothing else"
        );
        assert!(
            at_end("Invoke-").matches.is_empty(),
            "only what the table holds"
        );
    }

    #[test]
    fn parameters_of_that_command_with_the_common_ones_it_accepts() {
        let c = at_end("Restart-Service -");
        assert_eq!(c.matches[0], "-Name");
        assert!(c.matches.contains(&"-WhatIf".to_string()));
        assert!(
            !c.matches.contains(&"-OutVariable".to_string()),
            "refused parameters are not offered"
        );
        let c = at_end("Get-Service -w");
        assert!(
            c.matches.iter().all(|m| m != "-WhatIf"),
            "WhatIf only where state changes: {c:?}"
        );
        let c = at_end("gsv -na");
        assert_eq!(
            c.matches,
            vec!["-Name"],
            "an alias has its target's parameters"
        );
        assert!(at_end("Nope -").matches.is_empty());
    }

    #[test]
    fn set_values_quoted_when_they_need_it() {
        let c = at_end("Restart-Service -Name ");
        assert_eq!(c.matches, vec!["nginx", "'php fpm'"]);
        let c = at_end("Restart-Service -ServiceName 'ph");
        assert_eq!(c.matches, vec!["'php fpm'"]);
        assert_eq!(c.start, 29);
        assert!(
            at_end("Get-Service -Name ").matches.is_empty(),
            "no set, nothing offered"
        );
    }

    #[test]
    fn the_cursor_decides_the_word_and_odd_input_is_harmless() {
        let line = "get-s -Name x";
        let c = complete(&visible(), line, 5);
        assert_eq!(c.matches, vec!["Get-Service"]);
        assert_eq!((c.start, c.end), (0, 5));
        // Not a character boundary, past the end, huge: no panic, no matches.
        assert!(complete(&visible(), "é", 1).matches.is_empty());
        assert!(complete(&visible(), "x", 99).matches.is_empty());
        assert!(
            complete(&visible(), &"a".repeat(MAX_COMPLETION_LINE + 1), usize::MAX)
                .matches
                .is_empty()
        );
        assert!(at_end("'unterminated").matches.is_empty());
    }
}
