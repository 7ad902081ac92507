//! Semantic validation of a deserialized configuration (SPEC §2): names, regexes, programs,
//! capabilities, roles, rules and users. Every problem is reported, located in its file.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::str::FromStr;

use regex::{Regex, RegexBuilder};

use super::diag::{did_you_mean, Seg};
use super::load::Ctx;
use super::{
    FunctionParamType, GroupCondition, GroupTree, LoadedCapability, LoadedConfig,
    ParameterConstraint, Severity, VisibleCommandEntry,
};
use crate::commands::{is_never_provided, wildcard_match, BUILTIN_CMDLETS, DEFAULT_ALIASES};
use crate::tpath;

/// Compiled size limit for every configured regex (the engine uses the same).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest pattern text accepted.
pub const MAX_PATTERN_LEN: usize = 4096;
/// PowerShell's common parameters, always accepted (SPEC §4.1); a role may list them.
pub const COMMON_PARAMETERS: &[&str] = &[
    "ErrorAction",
    "WarningAction",
    "InformationAction",
    "Verbose",
    "Debug",
    "WhatIf",
    "Confirm",
];
/// Most values in one validate_set.
pub const MAX_SET_VALUES: usize = 10_000;

/// Compile a configured pattern the way the engine applies it: anchored to the whole value,
/// case-insensitive for parameter patterns (PowerShell's ValidatePattern), case-sensitive for
/// external-command argument patterns.
pub fn compile_pattern(pattern: &str, case_insensitive: bool) -> Result<Regex, String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "pattern is longer than {MAX_PATTERN_LEN} characters"
        ));
    }
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(n) => {
                format!("the pattern compiles to more than {n} bytes (keyhole's limit); simplify it (fewer repetitions or alternatives)")
            }
            other => {
                let text = other.to_string();
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("error:"))
                    .map(str::trim)
                    .next()
                    .map(String::from)
                    .unwrap_or(text)
            }
        })
}

/// Normalise a Linux capability name ("net_bind_service" → "CAP_NET_BIND_SERVICE") and check it.
pub fn parse_linux_capability(name: &str) -> Result<caps::Capability, String> {
    let up = name.trim().to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    caps::Capability::from_str(&full).map_err(|_| {
        format!("unknown Linux capability {name:?}; write a name from capabilities(7), e.g. \"CAP_NET_BIND_SERVICE\"")
    })
}

/// `sha256:` followed by 64 hexadecimal digits (colons allowed).
pub fn valid_fingerprint(fp: &str) -> bool {
    let Some(rest) = fp
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("sha256:"))
        .and_then(|_| fp.get(7..))
    else {
        return false;
    };
    let hex: String = rest.chars().filter(|c| *c != ':').collect();
    hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// Programs that escape to a shell or read and write arbitrary files when the caller controls
/// their arguments, with the risk each one carries.
const DANGEROUS: &[(&[&str], &str)] = &[
    (&["sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox"], "runs arbitrary commands (shell escape)"),
    (&["python*", "perl*", "ruby*", "node", "nodejs", "lua*", "php*", "tclsh*", "wish*", "expect"], "runs arbitrary code given as an argument"),
    (&["vi", "vim*", "nvim", "view", "ex", "ed", "emacs*", "nano"], "is an editor: it reads and writes any file and can start a shell"),
    (&["less", "more", "most", "man"], "is a pager: it can open any file and start a shell (!command)"),
    (&["find"], "can execute programs with -exec and delete files with -delete"),
    (&["awk", "gawk", "mawk", "nawk"], "runs arbitrary commands with system() and writes any file"),
    (&["sed"], "writes any file (w command) and runs commands (e command)"),
    (&["tar"], "reads and writes arbitrary files and runs programs (--to-command, --checkpoint-action)"),
    (&["zip", "unzip", "gzip", "gunzip", "zcat", "cpio"], "reads and writes arbitrary files (zip also runs programs with -TT)"),
    (&["dd", "cp", "mv", "tee"], "reads and writes arbitrary files"),
    (&["env", "xargs", "nice", "nohup", "timeout", "stdbuf", "watch", "script", "systemd-run", "crontab", "at"], "runs any program given as an argument"),
    (&["strace", "gdb"], "runs and controls any program given as an argument"),
    (&["sudo", "su", "doas", "pkexec"], "changes identity and runs commands"),
    (&["ssh", "scp", "sftp", "rsync"], "runs remote or local commands (-o ProxyCommand, -e) and copies arbitrary files"),
    (&["curl", "wget", "nc", "ncat", "socat", "telnet", "ftp"], "reads and writes arbitrary files and network connections"),
    (&["git"], "runs programs through hooks, aliases, -c core.pager and --upload-pack"),
    (&["docker", "podman", "kubectl"], "controls containers, which is equivalent to root"),
    (&["journalctl"], "reads arbitrary journal files (--file, --directory) and starts a pager that can run commands"),
    (&["openssl"], "reads and writes arbitrary files (-in, -out)"),
    (&["mysql", "psql"], "runs shell commands (\\! / \\system)"),
];

/// The risk of exposing this program with caller-controlled arguments, if it is known dangerous.
pub fn dangerous_program(path: &Path) -> Option<(String, &'static str)> {
    let mut names = Vec::new();
    if let Some(n) = path.file_name() {
        names.push(n.to_string_lossy().to_string());
    }
    if let Ok(c) = std::fs::canonicalize(path) {
        if let Some(n) = c.file_name() {
            names.push(n.to_string_lossy().to_string());
        }
    }
    for name in names {
        // vim.basic, python3.11 → vim, python3
        let stem = name.split('.').next().unwrap_or(&name).to_string();
        for (progs, risk) in DANGEROUS {
            if progs
                .iter()
                .any(|p| wildcard_match(p, &stem) || wildcard_match(p, &name))
            {
                return Some((stem, risk));
            }
        }
    }
    None
}

/// Check a program path: absolute, exists, regular file, not a symlink, root-owned, not
/// writable by group or others.
pub fn program_problems(program: &str) -> Vec<String> {
    let p = Path::new(program);
    if !p.is_absolute() {
        return vec![format!("program {program:?} must be an absolute path (e.g. \"/usr/bin/{program}\"); keyhole never searches PATH")];
    }
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) => return vec![format!("program {program} cannot be used: {e}")],
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::canonicalize(p)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return vec![format!("program {program} is a symbolic link (to {target}); name the real file instead so that what runs cannot change under you")];
    }
    if !meta.is_file() {
        return vec![format!("program {program} is not a regular file")];
    }
    let mut out = Vec::new();
    if meta.mode() & 0o111 == 0 {
        out.push(format!(
            "program {program} is not executable (chmod 755 {program})"
        ));
    }
    if meta.uid() != 0 {
        out.push(format!("program {program} is owned by uid {}, not root; anyone who owns it can change what runs (chown root:root {program})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        out.push(format!("program {program} is writable by group or others (mode {:o}); run chmod go-w {program}", meta.mode() & 0o7777));
    }
    out
}

fn check_program(
    ctx: &mut Ctx,
    file: &Path,
    path: &[Seg],
    program: &str,
    caller_controls_args: bool,
    allow_unsafe: bool,
    why: &str,
) {
    for msg in program_problems(program) {
        ctx.err(file, path, msg);
    }
    if caller_controls_args && Path::new(program).is_absolute() {
        if let Some((name, risk)) = dangerous_program(Path::new(program)) {
            let msg = format!(
                "{name} {risk}; it is exposed with arguments the caller controls ({why}). Fix the arguments, or set allow_unsafe = true on this entry if you accept the risk"
            );
            let sev = if allow_unsafe {
                Severity::Warning
            } else {
                Severity::Error
            };
            ctx.at(sev, file, path, false, msg);
        }
    }
}

fn check_caps(ctx: &mut Ctx, file: &Path, base: &[Seg], caps: &[String]) {
    for (i, c) in caps.iter().enumerate() {
        if let Err(m) = parse_linux_capability(c) {
            let mut p = base.to_vec();
            p.push(Seg::Index(i));
            ctx.err(file, &p, m);
        }
    }
}

fn check_name_common(ctx: &mut Ctx, file: &Path, path: &[Seg], name: &str, what: &str) -> bool {
    if name.trim().is_empty() {
        ctx.err(file, path, format!("{what} name is empty"));
        return false;
    }
    if name.matches('*').count() > 1 {
        ctx.err(
            file,
            path,
            format!("{what} {name:?} has more than one `*`; a name may use one wildcard"),
        );
        return false;
    }
    if is_never_provided(name) {
        ctx.err(file, path, format!("{name} is never provided by keyhole, whatever a file says (SPEC §4.3: module loaders, jobs, Start-Process, Invoke-Expression, providers, ...); remove it"));
        return false;
    }
    true
}

fn check_constraints(
    ctx: &mut Ctx,
    file: &Path,
    base: &[Seg],
    params: &[ParameterConstraint],
    command: &str,
) {
    let mut seen = BTreeSet::new();
    for (j, p) in params.iter().enumerate() {
        let mut pp = base.to_vec();
        pp.push(Seg::Index(j));
        let with = |k: &str| {
            let mut v = pp.clone();
            v.push(Seg::from(k));
            v
        };
        if !seen.insert(p.name.to_lowercase()) {
            ctx.err(
                file,
                &with("name"),
                format!(
                    "parameter {} is listed twice for {command}; list it once",
                    p.name
                ),
            );
        }
        if p.name.trim().is_empty() || p.name.starts_with('-') || p.name.contains('*') {
            ctx.err(file, &with("name"), format!("parameter name {:?} is not valid: write the name without the dash and without wildcards", p.name));
        }
        let common = COMMON_PARAMETERS
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&p.name));
        if let Some(b) = crate::commands::builtin(command).filter(|_| !common) {
            if b.decl().find_param(&p.name).is_none() {
                ctx.err(
                    file,
                    &with("name"),
                    format!("{command} has no parameter {}", p.name),
                );
            }
        }
        check_set_pattern(
            ctx,
            file,
            &pp,
            p.validate_set.as_deref(),
            p.validate_pattern.as_deref(),
            &p.name,
        );
    }
}

fn check_set_pattern(
    ctx: &mut Ctx,
    file: &Path,
    pp: &[Seg],
    set: Option<&[String]>,
    pattern: Option<&str>,
    pname: &str,
) {
    let with = |k: &str| {
        let mut v = pp.to_vec();
        v.push(Seg::from(k));
        v
    };
    if set.is_some() && pattern.is_some() {
        ctx.err(file, &with("validate_pattern"), format!("parameter {pname} has both validate_set and validate_pattern; use one (a pattern can list values: \"a|b\")"));
    }
    if let Some(set) = set {
        if set.is_empty() {
            ctx.err(file, &with("validate_set"), format!("validate_set of parameter {pname} is empty: it would allow nothing; list values or remove the parameter"));
        }
        if set.len() > MAX_SET_VALUES {
            ctx.err(
                file,
                &with("validate_set"),
                format!("validate_set has more than {MAX_SET_VALUES} values"),
            );
        }
    }
    if let Some(p) = pattern {
        if let Err(m) = compile_pattern(p, true) {
            ctx.err(
                file,
                &with("validate_pattern"),
                format!("validate_pattern of parameter {pname} is not a valid regex: {m}"),
            );
        }
    }
}

fn builtin_matches(name: &str) -> Vec<&'static str> {
    BUILTIN_CMDLETS
        .iter()
        .copied()
        .filter(|b| wildcard_match(name, b))
        .collect()
}

fn validate_capability(
    ctx: &mut Ctx,
    cap: &LoadedCapability,
    declared_anywhere: &BTreeSet<String>,
) {
    let file = cap.file.as_path();
    let c = &cap.config;
    if c.visible_providers.is_some() {
        ctx.err_key(file, &tpath!["visible_providers"], "visible_providers is not supported: keyhole's interpreter has no providers (FileSystem and Certificate access would bypass every restriction); remove it and grant functions instead");
    }
    for (i, e) in c.visible_cmdlets.iter().enumerate() {
        let name = e.name();
        let np = match e {
            VisibleCommandEntry::Name(_) => tpath!["visible_cmdlets", i],
            VisibleCommandEntry::Constrained(_) => tpath!["visible_cmdlets", i, "name"],
        };
        if !check_name_common(ctx, file, &np, name, "cmdlet") {
            continue;
        }
        if builtin_matches(name).is_empty() {
            let hint = if name.contains('*') {
                format!("; keyhole provides: {}", BUILTIN_CMDLETS.join(", "))
            } else if let Some(s) = did_you_mean(name, BUILTIN_CMDLETS.iter().copied()) {
                format!("; did you mean {s}?")
            } else if declared_anywhere.contains(&name.to_lowercase()) {
                "; it is a declared function: list it in visible_functions".to_string()
            } else {
                format!("; keyhole provides: {}", BUILTIN_CMDLETS.join(", "))
            };
            ctx.err(
                file,
                &np,
                format!("{name} matches no cmdlet keyhole provides{hint}"),
            );
            continue;
        }
        if let VisibleCommandEntry::Constrained(cc) = e {
            if let Some(params) = &cc.parameters {
                check_constraints(
                    ctx,
                    file,
                    &tpath!["visible_cmdlets", i, "parameters"],
                    params,
                    name,
                );
            }
        }
    }
    for (i, e) in c.visible_functions.iter().enumerate() {
        let np = match e {
            VisibleCommandEntry::Name(_) => tpath!["visible_functions", i],
            VisibleCommandEntry::Constrained(_) => tpath!["visible_functions", i, "name"],
        };
        if !check_name_common(ctx, file, &np, e.name(), "function") {
            continue;
        }
        if let VisibleCommandEntry::Constrained(cc) = e {
            if let Some(params) = &cc.parameters {
                let base = tpath!["visible_functions", i, "parameters"];
                check_constraints(ctx, file, &base, params, e.name());
                // The function's own parameters, when it is declared here.
                if let Some(f) = cap
                    .functions
                    .iter()
                    .find(|f| f.name.eq_ignore_ascii_case(e.name()))
                {
                    for (j, p) in params.iter().enumerate() {
                        if !f
                            .params
                            .iter()
                            .any(|(n, _)| n.eq_ignore_ascii_case(&p.name))
                        {
                            ctx.err(
                                file,
                                &tpath!["visible_functions", i, "parameters", j, "name"],
                                format!("function {} declares no parameter {}", f.name, p.name),
                            );
                        }
                    }
                }
            }
        }
    }
    for (i, e) in c.visible_external_commands.iter().enumerate() {
        match e {
            super::ExternalCommandEntry::Path(p) => {
                check_program(
                    ctx,
                    file,
                    &tpath!["visible_external_commands", i],
                    p,
                    false,
                    false,
                    "",
                );
            }
            super::ExternalCommandEntry::Detailed(d) => {
                let base = tpath!["visible_external_commands", i];
                let pp = tpath!["visible_external_commands", i, "path"];
                check_program(
                    ctx,
                    file,
                    &pp,
                    &d.path,
                    !d.arguments.is_empty(),
                    d.allow_unsafe,
                    "an `arguments` pattern",
                );
                for (j, a) in d.arguments.iter().enumerate() {
                    if let Err(m) = compile_pattern(a, false) {
                        ctx.err(
                            file,
                            &tpath!["visible_external_commands", i, "arguments", j],
                            format!("argument pattern is not a valid regex: {m}"),
                        );
                    }
                }
                let mut cp = base.clone();
                cp.push(Seg::from("capabilities"));
                check_caps(ctx, file, &cp, &d.capabilities);
                check_env(ctx, file, &base, &d.environment);
            }
        }
    }
    for (i, a) in c.visible_aliases.iter().enumerate() {
        check_name_common(ctx, file, &tpath!["visible_aliases", i], a, "alias");
    }
    for (alias, target) in &c.aliases {
        if check_name_common(
            ctx,
            file,
            &tpath!["aliases", alias.as_str()],
            alias,
            "alias",
        ) {
            if alias.contains('*') {
                ctx.err_key(
                    file,
                    &tpath!["aliases", alias.as_str()],
                    format!("alias name {alias} may not contain `*`"),
                );
            }
            if BUILTIN_CMDLETS
                .iter()
                .any(|b| b.eq_ignore_ascii_case(alias))
            {
                ctx.err_key(
                    file,
                    &tpath!["aliases", alias.as_str()],
                    format!("alias {alias} has the name of a cmdlet"),
                );
            }
        }
        if check_name_common(
            ctx,
            file,
            &tpath!["aliases", alias.as_str()],
            target,
            "alias target",
        ) {
            let known = BUILTIN_CMDLETS
                .iter()
                .any(|b| b.eq_ignore_ascii_case(target))
                || declared_anywhere.contains(&target.to_lowercase());
            if !known {
                let hint = did_you_mean(target, BUILTIN_CMDLETS.iter().copied())
                    .map(|s| format!("; did you mean {s}?"))
                    .unwrap_or_default();
                ctx.err(file, &tpath!["aliases", alias.as_str()], format!("alias {alias} points at {target}, which is neither a cmdlet keyhole provides nor a declared function{hint}"));
            }
        }
    }
    for f in &cap.functions {
        validate_function(ctx, file, f);
    }
}

fn check_env(ctx: &mut Ctx, file: &Path, base: &[Seg], env: &BTreeMap<String, String>) {
    for (k, v) in env {
        let mut p = base.to_vec();
        p.push(Seg::from("environment"));
        p.push(Seg::from(k.as_str()));
        let ok = !k.is_empty() && !k.contains('=') && !k.contains('\0') && !v.contains('\0');
        if !ok {
            ctx.err(
                file,
                &p,
                format!("environment variable {k:?} is not valid (no '=' or NUL)"),
            );
        }
    }
}

fn placeholders(arg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = rest.get(open + 1..).unwrap_or("");
        match after.find('}') {
            Some(close) => {
                out.push(after.get(..close).unwrap_or("").to_string());
                rest = after.get(close + 1..).unwrap_or("");
            }
            None => break,
        }
    }
    out
}

fn validate_function(ctx: &mut Ctx, file: &Path, f: &super::ResolvedFunction) {
    let fname = f.name.as_str();
    let base = tpath!["functions", fname];
    let with = |k: &str| {
        let mut v = base.clone();
        v.push(Seg::from(k));
        v
    };
    if check_name_common(ctx, file, &base, fname, "function") {
        if fname.contains('*') {
            ctx.err_key(
                file,
                &base,
                format!("function name {fname} may not contain `*`"),
            );
        }
        if BUILTIN_CMDLETS
            .iter()
            .any(|b| b.eq_ignore_ascii_case(fname))
        {
            ctx.err_key(file, &base, format!("function {fname} has the name of a cmdlet keyhole provides; choose another name"));
        }
    }
    let mut has_placeholder = false;
    // Before a literal "--" the program still parses options (getopt's end of options).
    let mut options_end = false;
    for (i, a) in f.def.args.iter().enumerate() {
        if a == "--" {
            options_end = true;
        }
        let ph = placeholders(a);
        if ph.is_empty() {
            continue;
        }
        has_placeholder = true;
        let ap = tpath!["functions", fname, "args", i];
        let whole = a.starts_with('{') && a.ends_with('}') && ph.len() == 1;
        if !whole {
            ctx.err(file, &ap, format!("{a:?}: a placeholder must be a whole argument (write \"--x\", \"{{Name}}\" as two arguments); keyhole never splices values into text"));
        }
        // A value that may begin with '-' in option position is an option the caller chooses.
        // Without allow_leading_dash such values are refused, so only those parameters warn.
        if whole && !options_end {
            if let Some((pname, _)) = f.params.iter().find(|(n, p)| {
                ph.iter().any(|x| n.eq_ignore_ascii_case(x))
                    && p.allow_leading_dash
                    && p.validate_set.is_none()
            }) {
                ctx.at(
                    Severity::Warning,
                    file,
                    &ap,
                    false,
                    format!(
                        "{{{pname}}} stands where {} still parses options (no \"--\" before it in args) and {pname} has allow_leading_dash = true: a caller can pass options you did not write. Put \"--\" before it in args, or list the values it may take with validate_set",
                        f.def.program
                    ),
                );
            }
        }
        for p in ph {
            if !f.params.iter().any(|(n, _)| n.eq_ignore_ascii_case(&p)) {
                let declared: Vec<&str> = f.params.iter().map(|(n, _)| n.as_str()).collect();
                ctx.err(
                    file,
                    &ap,
                    format!(
                        "placeholder {{{p}}} names no declared parameter of {fname} (declared: {})",
                        if declared.is_empty() {
                            "none".to_string()
                        } else {
                            declared.join(", ")
                        }
                    ),
                );
            }
        }
    }
    check_program(
        ctx,
        file,
        &with("program"),
        &f.def.program,
        has_placeholder,
        f.def.allow_unsafe,
        "a {placeholder} in args",
    );
    check_caps(ctx, file, &with("capabilities"), &f.def.capabilities);
    check_env(ctx, file, &base, &f.def.environment);
    let mut positions: BTreeMap<u32, &str> = BTreeMap::new();
    for (pname, p) in &f.params {
        let pp = tpath!["functions", fname, "parameters", pname.as_str()];
        if pname.is_empty() || pname.contains(|c: char| !(c.is_alphanumeric() || c == '_')) {
            ctx.err_key(
                file,
                &pp,
                format!("parameter name {pname:?} may use only letters, digits and _"),
            );
        }
        if let Some(pos) = p.position {
            let mut at = pp.clone();
            at.push(Seg::from("position"));
            if let Some(other) = positions.insert(pos, pname) {
                ctx.err(
                    file,
                    &at,
                    format!("position {pos} is used by both {other} and {pname}"),
                );
            }
        }
        if p.ty == FunctionParamType::Switch
            && (p.validate_set.is_some() || p.validate_pattern.is_some())
        {
            ctx.err(
                file,
                &pp,
                format!("switch parameter {pname} cannot have validate_set or validate_pattern"),
            );
        }
        check_set_pattern(
            ctx,
            file,
            &pp,
            p.validate_set.as_deref(),
            p.validate_pattern.as_deref(),
            pname,
        );
        if let Some(set) = &p.validate_set {
            if matches!(p.ty, FunctionParamType::Int | FunctionParamType::IntArray) {
                for v in set {
                    if v.trim().parse::<i64>().is_err() {
                        ctx.err(
                            file,
                            &pp,
                            format!(
                                "validate_set value {v:?} is not an integer but {pname} is an int"
                            ),
                        );
                    }
                }
            }
        }
    }
}

fn check_group_condition(ctx: &mut Ctx, file: &Path, g: &GroupCondition, depth: usize) {
    let p = tpath!["required_groups"];
    if depth > 32 {
        ctx.err(
            file,
            &p,
            "required_groups is nested more than 32 levels deep",
        );
        return;
    }
    match g {
        GroupCondition::Group(s) if s.trim().is_empty() => {
            ctx.err(file, &p, "required_groups names an empty group")
        }
        GroupCondition::Group(_) => {}
        GroupCondition::Tree(GroupTree::And(v)) | GroupCondition::Tree(GroupTree::Or(v)) => {
            if v.is_empty() {
                ctx.err(
                    file,
                    &p,
                    "required_groups has an empty `and`/`or` list; list at least one group",
                );
            }
            for c in v {
                check_group_condition(ctx, file, c, depth + 1);
            }
        }
    }
}

fn account_problem(run_as: &str) -> Option<(Severity, String)> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        if run_as == "root" {
            return Some((Severity::Warning, "run_as = \"root\": every program this endpoint runs has full control of the machine; prefer a dedicated account".into()));
        }
        match nix::unistd::User::from_name(run_as) {
            Ok(Some(_)) => None,
            _ => Some((Severity::Error, format!(
                "run_as account {run_as:?} does not exist; create it with: useradd --system --no-create-home --shell /usr/sbin/nologin {run_as}"
            ))),
        }
    } else {
        let own = nix::unistd::User::from_uid(euid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| euid.to_string());
        if run_as == own {
            None
        } else {
            Some((Severity::Error, format!(
                "run_as = {run_as:?}, but keyhole is not running as root (it runs as {own}) and can only run programs as itself; set run_as = {own:?} or run keyhole as root"
            )))
        }
    }
}

/// Run every semantic check; diagnostics go to `ctx`.
pub(crate) fn validate(ctx: &mut Ctx, cfg: &LoadedConfig) {
    validate_server(ctx, cfg);

    let declared_anywhere: BTreeSet<String> = cfg
        .capabilities
        .values()
        .flat_map(|c| c.functions.iter().map(|f| f.name.to_lowercase()))
        .collect();
    for cap in cfg.capabilities.values() {
        validate_capability(ctx, cap, &declared_anywhere);
    }

    let available: Vec<&str> = cfg.capabilities.values().map(|c| c.name.as_str()).collect();
    let mut names: BTreeMap<String, &Path> = BTreeMap::new();
    for ep in &cfg.endpoints {
        let file = ep.file.as_path();
        let e = &ep.config;
        if e.name.trim().is_empty()
            || e.name
                .contains(|c: char| c == '/' || c.is_whitespace() || c.is_control())
        {
            ctx.err(
                file,
                &tpath!["name"],
                format!(
                    "endpoint name {:?} is not valid: use letters, digits, '.', '-' or '_'",
                    e.name
                ),
            );
        }
        if let Some(prev) = names.insert(e.name.to_lowercase(), file) {
            ctx.err(
                file,
                &tpath!["name"],
                format!(
                    "endpoint name {} is already used by {} (names are case-insensitive)",
                    e.name,
                    prev.display()
                ),
            );
        }
        if e.language_mode != "no-language" {
            ctx.err(file, &tpath!["language_mode"], format!(
                "language_mode {:?} is not supported: keyhole only runs \"no-language\" sessions (commands with literal arguments); any language would let callers build commands and escape their role capabilities",
                e.language_mode
            ));
        }
        if e.run_as.trim().is_empty() {
            ctx.err(file, &tpath!["run_as"], "run_as is empty: name the Unix account programs run as (e.g. \"keyhole-helpdesk\")");
        } else if let Some((sev, msg)) = account_problem(&e.run_as) {
            ctx.at(sev, file, &tpath!["run_as"], false, msg);
        }
        if let Some(g) = &e.required_groups {
            check_group_condition(ctx, file, g, 0);
        }
        if e.roles.is_empty() {
            ctx.err(file, &[], format!("endpoint {} has no [[role]]: nobody could use it; add [[role]] with group = \"...\" and role_capabilities = [...]", e.name));
        }
        let mut used: Vec<&LoadedCapability> = Vec::new();
        for (i, r) in e.roles.iter().enumerate() {
            match (&r.user, &r.group) {
                (Some(_), Some(_)) => ctx.err(
                    file,
                    &tpath!["role", i],
                    "a [[role]] has both user and group; write one [[role]] for each",
                ),
                (None, None) => ctx.err(
                    file,
                    &tpath!["role", i],
                    "a [[role]] needs user = \"...\" or group = \"...\"",
                ),
                (Some(s), None) | (None, Some(s)) if s.trim().is_empty() => ctx.err(
                    file,
                    &tpath!["role", i],
                    "a [[role]] names an empty user or group",
                ),
                _ => {}
            }
            if r.role_capabilities.is_empty() {
                ctx.err(
                    file,
                    &tpath!["role", i, "role_capabilities"],
                    "role_capabilities is empty; list at least one role capability",
                );
            }
            for (j, rc) in r.role_capabilities.iter().enumerate() {
                match cfg.capabilities.get(&rc.to_lowercase()) {
                    Some(c) => used.push(c),
                    // Its own errors are reported; do not add noise here.
                    None if ctx.broken_capabilities.contains(&rc.to_lowercase()) => {}
                    None => {
                        let dir = cfg.resolve(&cfg.server.role_capabilities_dir);
                        ctx.err(file, &tpath!["role", i, "role_capabilities", j], format!(
                            "role capability {rc} does not exist: there is no {}/{rc}.toml (available: {})",
                            dir.display(),
                            if available.is_empty() { "none".to_string() } else { available.join(", ") }
                        ));
                    }
                }
            }
        }
        // visible_functions and visible_aliases resolve against what this endpoint's capabilities declare.
        let declared: Vec<&super::ResolvedFunction> =
            used.iter().flat_map(|c| c.functions.iter()).collect();
        let aliases: Vec<&String> = used.iter().flat_map(|c| c.config.aliases.keys()).collect();
        let mut reported = BTreeSet::new();
        for cap in &used {
            for (i, vf) in cap.config.visible_functions.iter().enumerate() {
                let n = vf.name();
                if !declared.iter().any(|f| wildcard_match(n, &f.name))
                    && reported.insert((cap.name.clone(), i, 'f'))
                {
                    let np = match vf {
                        VisibleCommandEntry::Name(_) => tpath!["visible_functions", i],
                        VisibleCommandEntry::Constrained(_) => {
                            tpath!["visible_functions", i, "name"]
                        }
                    };
                    let hint = if BUILTIN_CMDLETS.iter().any(|b| wildcard_match(n, b)) {
                        "; it is a cmdlet: list it in visible_cmdlets".to_string()
                    } else {
                        format!("; declare it with [functions.{n}] (in this file or another capability of the endpoint)")
                    };
                    ctx.err(cap.file.as_path(), &np, format!(
                        "visible function {n} is declared by no role capability that endpoint {} uses{hint}",
                        e.name
                    ));
                }
            }
            for (i, va) in cap.config.visible_aliases.iter().enumerate() {
                let known = aliases.iter().any(|a| wildcard_match(va, a))
                    || DEFAULT_ALIASES.iter().any(|(a, _)| wildcard_match(va, a));
                if !known && reported.insert((cap.name.clone(), i, 'a')) {
                    ctx.err(cap.file.as_path(), &tpath!["visible_aliases", i], format!(
                        "visible alias {va} is defined by no role capability that endpoint {} uses; define it under [aliases]",
                        e.name
                    ));
                }
            }
        }
        // One function name, one definition per endpoint.
        let mut by_name: BTreeMap<String, &super::ResolvedFunction> = BTreeMap::new();
        for f in &declared {
            if let Some(prev) = by_name.insert(f.name.to_lowercase(), f) {
                if prev.def != f.def || prev.params != f.params {
                    let file_of = |cap: &str| {
                        cfg.capabilities
                            .get(&cap.to_lowercase())
                            .map(|c| c.file.clone())
                    };
                    if let Some(fp) = file_of(&f.capability) {
                        ctx.err_key(&fp, &tpath!["functions", f.name.as_str()], format!(
                            "function {} is declared differently in {} and {}, both used by endpoint {}; keep one declaration",
                            f.name, prev.capability, f.capability, e.name
                        ));
                    }
                }
            }
        }
    }
    if cfg.endpoints.is_empty() {
        ctx.at(
            Severity::Warning,
            &cfg.path,
            &[],
            false,
            "no endpoints are configured: nobody can connect",
        );
    }

    let winrs = &cfg.server.winrs_endpoint;
    if !winrs.is_empty() && cfg.endpoint(winrs).is_none() && !ctx.broken_endpoint {
        let list: Vec<&str> = cfg
            .endpoints
            .iter()
            .map(|e| e.config.name.as_str())
            .collect();
        ctx.err(
            &cfg.path,
            &tpath!["winrs_endpoint"],
            format!(
                "winrs_endpoint {winrs:?} names no endpoint (endpoints: {})",
                list.join(", ")
            ),
        );
    }

    validate_rules(ctx, cfg);
    validate_users(ctx, cfg);
}

fn validate_server(ctx: &mut Ctx, cfg: &LoadedConfig) {
    let s = &cfg.server;
    let file = cfg.path.as_path();
    for (k, v) in [("https", &s.listener.https), ("http", &s.listener.http)] {
        if !v.is_empty() && v.parse::<std::net::SocketAddr>().is_err() {
            ctx.err(file, &tpath!["listener", k], format!("listener.{k} = {v:?} is not an address:port like \"127.0.0.1:5986\" or \"[::]:5986\" (\"\" disables it)"));
        }
    }
    for (i, cidr) in s.listener.ip_allow.iter().enumerate() {
        let ok = cidr.parse::<ipnet::IpNet>().is_ok() || cidr.parse::<std::net::IpAddr>().is_ok();
        if !ok {
            ctx.err(
                file,
                &tpath!["listener", "ip_allow", i],
                format!("{cidr:?} is not an address or CIDR range (e.g. \"10.0.0.0/8\")"),
            );
        }
    }
    let cert = &s.listener.tls_certificate;
    let key = &s.listener.tls_private_key;
    if cert.is_empty() != key.is_empty() {
        ctx.err(file, &tpath!["listener", if cert.is_empty() { "tls_private_key" } else { "tls_certificate" }], "tls_certificate and tls_private_key go together: set both, or neither (a self-signed pair is generated)");
    }
    for (k, v, is_key) in [
        ("tls_certificate", cert, false),
        ("client_ca", &s.listener.client_ca, false),
        ("tls_private_key", key, true),
    ] {
        if v.is_empty() {
            continue;
        }
        if let Some(msg) = pem_problem(&cfg.resolve(v), is_key) {
            ctx.err(file, &tpath!["listener", k], msg);
        }
    }
    if s.listener.require_client_certificate && s.listener.client_ca.is_empty() {
        ctx.err(file, &tpath!["listener", "require_client_certificate"], "require_client_certificate needs client_ca (the PEM bundle client certificates are checked against)");
    }
    if s.listener.https.is_empty() && s.listener.http.is_empty() {
        ctx.at(
            Severity::Warning,
            file,
            &tpath!["listener"],
            false,
            "both listeners are disabled: `keyhole serve` will not accept connections",
        );
    }
}

fn pem_problem(path: &Path, is_key: bool) -> Option<String> {
    let data = match super::read_regular_file(path, super::MAX_PEM_BYTES) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Some(format!(
                "{} cannot be read: it does not exist",
                path.display()
            ))
        }
        Err(e) => return Some(format!("{} cannot be read: {e}", path.display())),
    };
    let mut rd = std::io::BufReader::new(data.as_slice());
    if is_key {
        match rustls_pemfile::private_key(&mut rd) {
            Ok(Some(_)) => None,
            Ok(None) => Some(format!("{} holds no PEM private key", path.display())),
            Err(e) => Some(format!("{} is not valid PEM: {e}", path.display())),
        }
    } else {
        let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut rd).collect();
        match certs {
            Ok(c) if c.is_empty() => Some(format!("{} holds no PEM certificate", path.display())),
            Ok(_) => None,
            Err(e) => Some(format!("{} is not valid PEM: {e}", path.display())),
        }
    }
}

fn validate_rules(ctx: &mut Ctx, cfg: &LoadedConfig) {
    let file = cfg.resolve(&cfg.server.authorization_rules);
    let file = file.as_path();
    let mut ids = BTreeSet::new();
    for (i, r) in cfg.rules.rules.iter().enumerate() {
        if !ids.insert(r.id) {
            ctx.err(
                file,
                &tpath!["rule", i, "id"],
                format!("rule id {} is used twice; ids must be unique", r.id),
            );
        }
        match (&r.user, &r.user_group) {
            (Some(_), Some(_)) | (None, None) => ctx.err(
                file,
                &tpath!["rule", i],
                "a rule needs exactly one of user or user_group",
            ),
            _ => {}
        }
        match (&r.computer, &r.computer_group) {
            (Some(_), Some(_)) | (None, None) => ctx.err(
                file,
                &tpath!["rule", i],
                "a rule needs exactly one of computer or computer_group",
            ),
            _ => {}
        }
        for (k, v) in [
            ("user", &r.user),
            ("user_group", &r.user_group),
            ("computer", &r.computer),
            ("computer_group", &r.computer_group),
            ("configuration", &Some(r.configuration.clone())),
        ] {
            if let Some(v) = v {
                if v.trim().is_empty() {
                    ctx.err(file, &tpath!["rule", i, k], format!("{k} is empty"));
                } else if v.contains('*') && v != "*" {
                    ctx.err(file, &tpath!["rule", i, k], format!("{k} = {v:?}: `*` is allowed only alone (it matches everything); wildcards inside names are not supported"));
                }
            }
        }
        if let Some(g) = &r.computer_group {
            if g != "*"
                && !cfg
                    .rules
                    .computer_groups
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case(g))
            {
                let known: Vec<&str> = cfg
                    .rules
                    .computer_groups
                    .keys()
                    .map(String::as_str)
                    .collect();
                ctx.err(
                    file,
                    &tpath!["rule", i, "computer_group"],
                    format!(
                        "computer group {g:?} is not defined under [computer_groups] (defined: {})",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
        if r.configuration != "*"
            && !r.configuration.contains('*')
            && cfg.endpoint(&r.configuration).is_none()
            && !ctx.broken_endpoint
        {
            ctx.warn(file, &tpath!["rule", i, "configuration"], format!("configuration {:?} is not an endpoint on this server (fine if the rules file is shared)", r.configuration));
        }
    }
}

fn validate_users(ctx: &mut Ctx, cfg: &LoadedConfig) {
    let file = cfg.resolve(&cfg.server.users);
    let file = file.as_path();
    let mut lower = BTreeMap::new();
    let mut fps: BTreeMap<String, String> = BTreeMap::new();
    for (name, u) in &cfg.users.users {
        let up = tpath!["users", name.as_str()];
        if let Some(prev) = lower.insert(name.to_lowercase(), name.clone()) {
            ctx.err_key(
                file,
                &up,
                format!("user {name} is also defined as {prev} (names are case-insensitive)"),
            );
        }
        if !u.password.starts_with("$argon2") {
            let mut p = up.clone();
            p.push(Seg::from("password"));
            ctx.err(file, &p, format!("password of {name} is not an argon2 hash; never write passwords in plain text: set it with `keyhole user passwd {name}`"));
        }
        for (i, fp) in u.client_certificates.iter().enumerate() {
            let p = tpath!["users", name.as_str(), "client_certificates", i];
            if !valid_fingerprint(fp) {
                ctx.err(file, &p, format!("{fp:?} is not a certificate fingerprint: write \"sha256:\" followed by 64 hexadecimal digits (colons allowed)"));
            } else {
                let norm: String = fp.to_lowercase().chars().filter(|c| *c != ':').collect();
                if let Some(other) = fps.insert(norm, name.clone()) {
                    ctx.err(file, &p, format!("this certificate already logs in as {other}; one certificate maps to one user"));
                }
            }
        }
        for (i, g) in u.groups.iter().enumerate() {
            if g.trim().is_empty() {
                ctx.err(
                    file,
                    &tpath!["users", name.as_str(), "groups", i],
                    "empty group name",
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_anchored_and_case_insensitive() {
        let r = compile_pattern("acme-.*", true).unwrap();
        assert!(r.is_match("ACME-x"));
        assert!(!r.is_match("xacme-x"));
        let r = compile_pattern("a|b", true).unwrap();
        assert!(!r.is_match("ab"));
        assert!(compile_pattern("(", true).is_err());
        let e = compile_pattern("(\\w{100}){100}", true).unwrap_err();
        assert!(e.contains("simplify"), "{e}");
    }

    #[test]
    fn capabilities_normalise() {
        assert!(parse_linux_capability("net_bind_service").is_ok());
        assert!(parse_linux_capability("CAP_NET_BIND_SERVICE").is_ok());
        assert!(parse_linux_capability("Cap_Net_Raw").is_ok());
        assert!(parse_linux_capability("CAP_FLY").is_err());
    }

    #[test]
    fn fingerprints() {
        let h = "ab".repeat(32);
        assert!(valid_fingerprint(&format!("sha256:{h}")));
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert!(valid_fingerprint(&format!("SHA256:{}", colons.join(":"))));
        assert!(!valid_fingerprint(&format!("sha1:{h}")));
        assert!(!valid_fingerprint("sha256:abc"));
    }

    #[test]
    fn dangerous_names() {
        assert!(dangerous_program(Path::new("/usr/bin/bash")).is_some());
        assert!(dangerous_program(Path::new("/usr/bin/python3.11")).is_some());
        assert!(dangerous_program(Path::new("/usr/bin/find"))
            .unwrap()
            .1
            .contains("-exec"));
        assert!(dangerous_program(Path::new("/usr/bin/df")).is_none());
        assert!(dangerous_program(Path::new("/usr/bin/uptime")).is_none());
    }

    #[test]
    fn placeholder_split() {
        assert_eq!(placeholders("{Mount}"), vec!["Mount"]);
        assert_eq!(placeholders("--x={A}{B}"), vec!["A", "B"]);
        assert!(placeholders("--plain").is_empty());
    }

    #[test]
    fn programs() {
        assert!(program_problems("/usr/bin/df").is_empty());
        assert!(program_problems("df")[0].contains("absolute"));
        assert!(program_problems("/nonexistent/x")[0].contains("cannot be used"));
        assert!(
            program_problems("/etc/os-release")
                .iter()
                .any(|m| m.contains("not executable"))
                || std::fs::symlink_metadata("/etc/os-release")
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(true)
        );
    }
}
