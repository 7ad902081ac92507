//! `sys`: thin, audited bindings to system libraries that keyhole loads at run time (dlopen), so
//! that the build needs nothing but the Rust toolchain. This is one of the two places (with
//! `sandbox`) where `unsafe` is allowed; every block carries a `// SAFETY:` comment and each
//! submodule exposes a safe API.

pub mod gssapi;
pub mod pam;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// ARCHITECTURE.md's invariant: `unsafe` code only in `sandbox` and `sys`, and each unsafe
    /// block or impl in them preceded by a `// SAFETY:` comment.
    #[test]
    fn unsafe_only_in_sandbox_and_sys_with_safety_comments() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let word = regex::Regex::new(r"(^|[^A-Za-z0-9_])unsafe (\{|impl\b)").unwrap();
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let allowed = rel.starts_with("sandbox/") || rel.starts_with("sys/");
            let text = std::fs::read_to_string(&f).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                let is_unsafe = word.is_match(code);
                if !is_unsafe {
                    continue;
                }
                assert!(allowed, "{rel}:{}: unsafe outside sandbox/ and sys/", i + 1);
                let commented = lines[..i]
                    .iter()
                    .rev()
                    .take(12)
                    .any(|l| l.trim_start().starts_with("// SAFETY:"));
                assert!(
                    commented,
                    "{rel}:{}: unsafe without a // SAFETY: comment above",
                    i + 1
                );
            }
        }
    }
}
