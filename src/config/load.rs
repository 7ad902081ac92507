//! Loading: reads keyhole.toml, every endpoint and role capability file, the rules and users
//! files, deserializes them with precise `file:line:col` errors, then runs `validate`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::diag::{diagnostic, Seg, SourceFile};
use super::{
    Diagnostic, EndpointConfig, FunctionParam, LoadedCapability, LoadedConfig, LoadedEndpoint,
    ResolvedFunction, RoleCapabilityConfig, RulesFile, ServerConfig, Severity, UsersFile,
};

/// Largest configuration file keyhole reads.
pub const MAX_CONFIG_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest authorization rules file read (bytes). The rules file is bounded by its size, not by
/// a number of rules: 16 MiB holds about 140,000 rules as `keyhole rule add` writes them
/// (issue 10 asks for 100,000 to be served). Parsing is the `toml` crate's document model, about
/// 30 bytes of memory per byte of file while it runs: measured with `keyhole check` (release,
/// load average 5), 100,000 rules (9.5 MiB) peak at 314 MiB RSS in 0.8 s, a full 16 MiB file
/// (166,660 short rules) at 518 MiB in 1.9 s — paid at start and at every reload. (Twice that
/// before diagnostics' span document became lazy: `diag::SourceFile`.)
pub const MAX_RULES_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most `*.toml` files read from one directory.
pub const MAX_FILES_PER_DIR: usize = 10_000;
/// How deep nested untagged values (required_groups) are re-examined for a precise error.
const MAX_REFINE_DEPTH: usize = 16;

/// Collected sources and diagnostics while loading.
#[derive(Default)]
pub(crate) struct Ctx {
    pub diags: Vec<Diagnostic>,
    pub sources: Vec<SourceFile>,
    /// Lower-case names of role capability files that exist but failed to parse.
    pub broken_capabilities: std::collections::BTreeSet<String>,
    /// Some endpoint file failed to parse (its name is unknown).
    pub broken_endpoint: bool,
}

impl Ctx {
    fn add_source(&mut self, path: &Path, text: String) -> usize {
        self.sources.push(SourceFile::new(path, text));
        self.sources.len() - 1
    }

    pub fn source(&self, path: &Path) -> Option<&SourceFile> {
        self.sources.iter().find(|s| s.path == path)
    }

    /// A diagnostic at `path` inside `file` (the value, or its key when `key`).
    pub fn at(
        &mut self,
        sev: Severity,
        file: &Path,
        path: &[Seg],
        key: bool,
        msg: impl Into<String>,
    ) {
        let d = match self.source(file) {
            Some(src) => diagnostic(sev, file, Some(&src.text), src.span(path, key), msg),
            None => diagnostic(sev, file, None, None, msg),
        };
        self.diags.push(d);
    }

    pub fn err(&mut self, file: &Path, path: &[Seg], msg: impl Into<String>) {
        self.at(Severity::Error, file, path, false, msg);
    }

    pub fn err_key(&mut self, file: &Path, path: &[Seg], msg: impl Into<String>) {
        self.at(Severity::Error, file, path, true, msg);
    }

    pub fn warn(&mut self, file: &Path, path: &[Seg], msg: impl Into<String>) {
        self.at(Severity::Warning, file, path, false, msg);
    }

    fn span_err(&mut self, file: &Path, span: Option<Range<usize>>, msg: impl Into<String>) {
        let d = match self.source(file) {
            Some(src) => diagnostic(Severity::Error, file, Some(&src.text), span, msg),
            None => diagnostic(Severity::Error, file, None, None, msg),
        };
        self.diags.push(d);
    }

    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Read a file with the size limit; `Ok(None)` when it does not exist.
fn read_text(path: &Path) -> Result<Option<String>, String> {
    read_text_bounded(path, MAX_CONFIG_FILE_BYTES)
}

fn read_text_bounded(path: &Path, max: u64) -> Result<Option<String>, String> {
    match super::read_regular_file(path, max) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| "cannot read: the file is not UTF-8 text".to_string()),
        Err(e) => Err(format!("cannot read: {e}")),
    }
}

/// A TOML error's message; some (a control character in a comment) come with none.
fn toml_message(e: &toml::de::Error) -> String {
    let m = e.message().trim();
    if m.is_empty() {
        "invalid TOML here (a control character such as NUL is not allowed, even in a comment)"
            .to_string()
    } else {
        m.to_string()
    }
}

/// Deserialize `text` as `T`, turning serde errors into located diagnostics.
fn parse<T: DeserializeOwned>(ctx: &mut Ctx, file: &Path, text: &str) -> Option<T> {
    match toml::from_str::<T>(text) {
        Ok(v) => Some(v),
        Err(e) => {
            let (span, msg) = refine(text, e.span(), toml_message(&e), 0);
            ctx.span_err(file, span, msg);
            None
        }
    }
}

#[derive(Deserialize)]
struct Wrap<T> {
    #[allow(dead_code)]
    v: T,
}

#[derive(Clone, Copy)]
enum Kind {
    Visible,
    External,
    Group,
}

impl Kind {
    fn of(msg: &str) -> Option<Kind> {
        if !msg.contains("did not match any variant of untagged enum") {
            None
        } else if msg.contains("VisibleCommandEntry") {
            Some(Kind::Visible)
        } else if msg.contains("ExternalCommandEntry") {
            Some(Kind::External)
        } else if msg.contains("GroupCondition") {
            Some(Kind::Group)
        } else {
            None
        }
    }
    fn what(self) -> (&'static str, &'static str) {
        match self {
            Kind::Visible => ("a command entry", "a name string or an inline table { name = \"...\", parameters = [ { name = \"...\" } ] }"),
            Kind::External => ("an external command entry", "an absolute path string or an inline table { path = \"/usr/bin/...\", arguments = [\"...\"] }"),
            Kind::Group => ("a required_groups condition", "a group name string or a table with exactly one key, { and = [...] } or { or = [...] }"),
        }
    }
    /// Deserialize `slice` as the enum (`table` false) or as its table form.
    fn try_parse(self, slice: &str, table: bool) -> Option<(Option<Range<usize>>, String)> {
        const PREFIX: usize = 4;
        let w = format!("v = {slice}");
        let err = match (self, table) {
            (Kind::Visible, false) => toml::from_str::<Wrap<super::VisibleCommandEntry>>(&w).err(),
            (Kind::Visible, true) => toml::from_str::<Wrap<super::ConstrainedCommand>>(&w).err(),
            (Kind::External, false) => {
                toml::from_str::<Wrap<super::ExternalCommandEntry>>(&w).err()
            }
            (Kind::External, true) => toml::from_str::<Wrap<super::ExternalCommandDef>>(&w).err(),
            (Kind::Group, false) => toml::from_str::<Wrap<super::GroupCondition>>(&w).err(),
            (Kind::Group, true) => toml::from_str::<Wrap<super::GroupTree>>(&w).err(),
        }?;
        let span =
            e_span(&err).map(|s| s.start.saturating_sub(PREFIX)..s.end.saturating_sub(PREFIX));
        Some((span, toml_message(&err)))
    }
}

fn e_span(e: &toml::de::Error) -> Option<Range<usize>> {
    e.span()
}

fn shift(r: Option<Range<usize>>, by: usize) -> Option<Range<usize>> {
    r.map(|r| (r.start + by)..(r.end + by))
}

/// serde's untagged enums hide the real problem ("data did not match any variant"): re-read
/// the offending value element by element, then as the table form it must be, to report the
/// real error and its place.
fn refine(
    text: &str,
    span: Option<Range<usize>>,
    msg: String,
    depth: usize,
) -> (Option<Range<usize>>, String) {
    let Some(kind) = Kind::of(&msg) else {
        return (span, msg);
    };
    let Some(sp) = span.clone() else {
        return (span, msg);
    };
    if depth > MAX_REFINE_DEPTH {
        return (span, msg);
    }
    let Some(slice) = text.get(sp.clone()) else {
        return (span, msg);
    };
    let (what, form) = kind.what();
    let trimmed = slice.trim_start();
    if trimmed.starts_with('[') {
        // The span covers the whole array: find the element that fails.
        let wrapped = format!("v = {slice}");
        if let Ok(doc) = toml_edit::ImDocument::parse(wrapped.clone()) {
            if let Some(toml_edit::Item::Value(toml_edit::Value::Array(a))) =
                doc.as_table().get("v")
            {
                for el in a.iter() {
                    let Some(es) = el.span() else { continue };
                    let Some(el_text) = wrapped.get(es.clone()) else {
                        continue;
                    };
                    let el_start = sp.start + es.start.saturating_sub(4);
                    if let Some((s, m)) = kind.try_parse(el_text, false) {
                        let abs = shift(s, el_start).or(Some(el_start..el_start + el_text.len()));
                        return refine(text, abs, m, depth + 1);
                    }
                }
            }
        }
        (span, msg)
    } else if trimmed.starts_with('{') {
        match kind.try_parse(slice, true) {
            Some((s, m)) => {
                let (s2, m2) = refine(text, shift(s, sp.start), m, depth + 1);
                let m2 = if (m2.contains("wanted exactly 1 element")
                    || m2.contains("unknown variant"))
                    && !m2.contains(form)
                {
                    format!("{m2}; {what} must be {form}")
                } else {
                    m2
                };
                let m2 = if m2.starts_with("in ") {
                    m2
                } else {
                    format!("in {what}: {m2}")
                };
                (s2.or(span), m2)
            }
            None => (span, format!("{what} must be {form}")),
        }
    } else {
        (span, format!("{what} must be {form}"))
    }
}

/// Function parameters, read a second time with types so errors have spans.
#[derive(Deserialize)]
struct ParamsPass {
    #[serde(default)]
    functions: BTreeMap<String, FnParamsPass>,
}
#[derive(Deserialize)]
struct FnParamsPass {
    #[serde(default)]
    parameters: BTreeMap<String, FunctionParam>,
}

fn list_toml(ctx: &mut Ctx, dir: &Path, what: &str, owner: &Path, key: &str) -> Vec<PathBuf> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            let sev = if e.kind() == std::io::ErrorKind::NotFound {
                Severity::Warning
            } else {
                Severity::Error
            };
            ctx.at(
                sev,
                owner,
                &[Seg::from(key)],
                false,
                format!(
                    "{what} directory {} cannot be read ({e}); no {what} are loaded",
                    dir.display()
                ),
            );
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .take(MAX_FILES_PER_DIR + 1)
        .collect();
    if files.len() > MAX_FILES_PER_DIR {
        ctx.err(
            owner,
            &[Seg::from(key)],
            format!("more than {MAX_FILES_PER_DIR} files in {}", dir.display()),
        );
        files.truncate(MAX_FILES_PER_DIR);
    }
    files.sort();
    files
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Load and validate the whole configuration rooted at `path` (keyhole.toml; a missing file
/// means every default, relative to its directory). On failure, every diagnostic (errors and
/// warnings) across all files is returned.
///
/// This is what configuration alone can check (names against the catalogue). The server and
/// `keyhole check` load through `check::load`, which adds what needs the commands themselves.
pub fn load(path: &Path) -> Result<LoadedConfig, Vec<Diagnostic>> {
    load_with(path, &|_, _| {})
}

/// [`load`], with `extra` checks run after validation on the same diagnostics (so that their
/// errors fail the load and come out sorted with the others).
pub(crate) fn load_with(
    path: &Path,
    extra: &dyn Fn(&mut Ctx, &LoadedConfig),
) -> Result<LoadedConfig, Vec<Diagnostic>> {
    let mut ctx = Ctx::default();
    let path = absolute(path);
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));

    let mut server = ServerConfig::default();
    match read_text(&path) {
        Ok(Some(text)) => {
            ctx.add_source(&path, text.clone());
            if let Some(s) = parse::<ServerConfig>(&mut ctx, &path, &text) {
                server = s;
            }
        }
        Ok(None) => {}
        Err(e) => ctx.span_err(&path, None, e),
    }
    if server.computer_name.trim().is_empty() {
        server.computer_name = local_hostname();
    }
    let resolve = |p: &str| {
        let pb = Path::new(p);
        if pb.is_absolute() {
            pb.to_path_buf()
        } else {
            base_dir.join(pb)
        }
    };

    // Endpoints.
    let mut endpoints = Vec::new();
    for file in list_toml(
        &mut ctx,
        &resolve(&server.endpoints_dir),
        "endpoint",
        &path,
        "endpoints_dir",
    ) {
        match read_text(&file) {
            Ok(Some(text)) => {
                ctx.add_source(&file, text.clone());
                match parse::<EndpointConfig>(&mut ctx, &file, &text) {
                    Some(config) => endpoints.push(LoadedEndpoint { file, config }),
                    None => ctx.broken_endpoint = true,
                }
            }
            Ok(None) => {}
            Err(e) => ctx.span_err(&file, None, e),
        }
    }

    // Role capabilities.
    let mut capabilities: BTreeMap<String, LoadedCapability> = BTreeMap::new();
    for file in list_toml(
        &mut ctx,
        &resolve(&server.role_capabilities_dir),
        "role capability",
        &path,
        "role_capabilities_dir",
    ) {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        match read_text(&file) {
            Ok(Some(text)) => {
                ctx.add_source(&file, text.clone());
                let config = parse::<RoleCapabilityConfig>(&mut ctx, &file, &text);
                let params = if config.is_some() {
                    parse::<ParamsPass>(&mut ctx, &file, &text)
                } else {
                    None
                };
                if config.is_none() || params.is_none() {
                    ctx.broken_capabilities.insert(name.to_lowercase());
                }
                if let (Some(config), Some(mut params)) = (config, params) {
                    let order = ctx
                        .source(&file)
                        .map(|s| s.keys_in_order(&[Seg::from("functions")]))
                        .unwrap_or_default();
                    let mut functions = Vec::new();
                    for fname in order {
                        let Some(def) = config.functions.get(&fname) else {
                            continue;
                        };
                        let porder = ctx
                            .source(&file)
                            .map(|s| {
                                s.keys_in_order(&[
                                    Seg::from("functions"),
                                    Seg::from(&fname),
                                    Seg::from("parameters"),
                                ])
                            })
                            .unwrap_or_default();
                        let mut pmap = params
                            .functions
                            .remove(&fname)
                            .map(|f| f.parameters)
                            .unwrap_or_default();
                        let params: Vec<(String, FunctionParam)> = porder
                            .into_iter()
                            .filter_map(|p| pmap.remove(&p).map(|fp| (p, fp)))
                            .collect();
                        functions.push(ResolvedFunction {
                            name: fname.clone(),
                            def: def.clone(),
                            params,
                            capability: name.clone(),
                        });
                    }
                    let key = name.to_lowercase();
                    if let Some(prev) = capabilities.get(&key) {
                        let prev = prev.file.display().to_string();
                        ctx.span_err(&file, None, format!("role capability {name} is also defined by {prev}; names are case-insensitive, rename one file"));
                    } else {
                        capabilities.insert(
                            key,
                            LoadedCapability {
                                name,
                                file,
                                config,
                                functions,
                            },
                        );
                    }
                }
            }
            Ok(None) => {}
            Err(e) => ctx.span_err(&file, None, e),
        }
    }

    // Rules.
    let rules_path = resolve(&server.authorization_rules);
    let mut rules = RulesFile::default();
    match read_text_bounded(&rules_path, MAX_RULES_FILE_BYTES) {
        Ok(Some(text)) => {
            ctx.add_source(&rules_path, text.clone());
            if let Some(r) = parse::<RulesFile>(&mut ctx, &rules_path, &text) {
                if r.rules.is_empty() {
                    ctx.warn(&rules_path, &[], "the authorization rules file has no [[rule]]: nobody gets in (add one with `keyhole rule add`)");
                }
                rules = r;
            }
        }
        Ok(None) => ctx.diags.push(diagnostic(
            Severity::Warning,
            &rules_path,
            None,
            None,
            "authorization rules file not found: nobody gets in (add a rule with `keyhole rule add`)",
        )),
        Err(e) => ctx.span_err(&rules_path, None, e),
    }

    // Users.
    let users_path = resolve(&server.users);
    let mut users = UsersFile::default();
    match read_text(&users_path) {
        Ok(Some(text)) => {
            ctx.add_source(&users_path, text.clone());
            if let Some(u) = parse::<UsersFile>(&mut ctx, &users_path, &text) {
                users = u;
            }
        }
        Ok(None) => ctx.diags.push(diagnostic(
            Severity::Warning,
            &users_path,
            None,
            None,
            "users file not found: no local accounts (add one with `keyhole user add`)",
        )),
        Err(e) => ctx.span_err(&users_path, None, e),
    }

    let cfg = LoadedConfig {
        path,
        base_dir,
        server,
        endpoints,
        capabilities,
        rules,
        users,
        warnings: Vec::new(),
    };
    super::validate::validate(&mut ctx, &cfg);
    extra(&mut ctx, &cfg);

    // Grouped by file, in file order; the order of discovery is kept within a line.
    ctx.diags
        .sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    if ctx.has_errors() {
        return Err(ctx.diags);
    }
    Ok(LoadedConfig {
        warnings: ctx.diags,
        ..cfg
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn untagged_entry_reports_real_field() {
        let text = "visible_cmdlets = [\n  \"Get-Service\",\n  { name = \"Get-Process\", paramters = [] },\n]\n";
        let mut ctx = Ctx::default();
        let p = Path::new("cap.toml");
        ctx.add_source(p, text.to_string());
        assert!(parse::<RoleCapabilityConfig>(&mut ctx, p, text).is_none());
        let d = &ctx.diags[0];
        assert!(
            d.message.contains("unknown field `paramters`"),
            "{}",
            d.rendered
        );
        assert_eq!((d.line, d.col), (3, 27), "{}", d.rendered);
    }

    #[test]
    fn nested_group_condition_error() {
        let text = "name = \"E\"\nrun_as = \"x\"\nrequired_groups = { and = [\"a\", { xor = [\"b\"] }] }\n";
        let mut ctx = Ctx::default();
        let p = Path::new("ep.toml");
        ctx.add_source(p, text.to_string());
        assert!(parse::<EndpointConfig>(&mut ctx, p, text).is_none());
        let d = &ctx.diags[0];
        assert!(d.message.contains("xor"), "{}", d.rendered);
        assert_eq!(d.line, 3, "{}", d.rendered);
    }

    #[test]
    fn plain_wrong_type_is_located() {
        let text = "[limits]\nidle_timeout = \"0s\"\n";
        let mut ctx = Ctx::default();
        let p = Path::new("k.toml");
        ctx.add_source(p, text.to_string());
        assert!(parse::<ServerConfig>(&mut ctx, p, text).is_none());
        let d = &ctx.diags[0];
        assert!(d.message.contains("greater than zero"), "{}", d.rendered);
        assert_eq!((d.line, d.col), (2, 16), "{}", d.rendered);
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in "[a-z_=\\[\\]{}\",.0-9 \n*-]{0,200}") {
            let mut ctx = Ctx::default();
            let p = Path::new("x.toml");
            ctx.add_source(p, text.clone());
            let _ = parse::<RoleCapabilityConfig>(&mut ctx, p, &text);
            let _ = parse::<EndpointConfig>(&mut ctx, p, &text);
            let _ = parse::<ServerConfig>(&mut ctx, p, &text);
        }

        #[test]
        fn untagged_arrays_never_panic(entries in proptest::collection::vec("[a-z{}=\", \\[\\]-]{0,30}", 0..5)) {
            let text = format!("visible_cmdlets = [{}]\nrequired_groups = {{ and = [{}] }}\n", entries.join(","), entries.join(","));
            let mut ctx = Ctx::default();
            let p = Path::new("x.toml");
            ctx.add_source(p, text.clone());
            let _ = parse::<RoleCapabilityConfig>(&mut ctx, p, &text);
            let _ = parse::<EndpointConfig>(&mut ctx, p, &text);
        }
    }
}
