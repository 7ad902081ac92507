//! Shared by the corpus tests: the corpus files' escapes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

/// Undo the corpus escapes: `\n` `\r` `\t`, `\u{HEX}`, `\*{N}{TEXT}` (TEXT repeated N times,
/// itself unescaped). Any other backslash stays as written.
pub fn unescape(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("\\n") {
            out.push('\n');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("\\r") {
            out.push('\r');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("\\t") {
            out.push('\t');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("\\u{") {
            let close = after.find('}').expect("\\u{ without }");
            let code = u32::from_str_radix(&after[..close], 16).expect("bad hex in \\u{}");
            out.push(char::from_u32(code).expect("bad code point in \\u{}"));
            rest = &after[close + 1..];
        } else if let Some(after) = tail.strip_prefix("\\*{") {
            let close = after.find('}').expect("\\*{N} without }");
            let n: usize = after[..close].parse().expect("bad count in \\*{N}");
            let body = after[close + 1..].strip_prefix('{').expect("\\*{N}{TEXT}");
            let end = body.find('}').expect("\\*{N}{TEXT} without }");
            out.push_str(&unescape(&body[..end]).repeat(n));
            rest = &body[end + 1..];
        } else {
            out.push('\\');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}
