//! Semantic validation of a deserialized configuration (SPEC §2): names, regexes, programs,
//! capabilities, roles, rules and users. Every problem is reported, located in its file.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::str::FromStr;

use super::diag::{did_you_mean, Seg};
use super::load::Ctx;
use super::{
    FunctionParamType, GroupCondition, GroupTree, LoadedCapability, LoadedConfig,
    ParameterConstraint, Rule, RulesFile, Severity, VisibleCommandEntry,
};
use crate::catalog::{self, is_never_provided, BUILTIN_CMDLETS, DEFAULT_ALIASES};
use crate::lang::pattern::{AnchoredPattern, Case};
use crate::lang::wildcard::{self, Mode, Wildcard};
use crate::tpath;

/// Most values in one validate_set.
pub const MAX_SET_VALUES: usize = 10_000;
/// Longest accepted value of a rule field (user, group, computer, configuration, name).
pub const MAX_RULE_FIELD_LEN: usize = 256;

fn wildcard_match(pattern: &str, name: &str) -> bool {
    wildcard::matches(pattern, name, Mode::Name)
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
    if let Some(c) = name.chars().find(|c| matches!(c, '?' | '[' | ']')) {
        ctx.err(
            file,
            path,
            format!(
                "{what} {name:?} contains `{c}`; a name may use only the `*` wildcard (SPEC §2.3)"
            ),
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
        // Whether a built-in declares the parameter is checked by `check` (it knows the commands).
        if let Some(c) = catalog::common_parameter(&p.name).filter(|c| !c.accepted()) {
            ctx.err(
                file,
                &with("name"),
                format!("-{} is a common parameter that sets a variable; sessions have no variables, so every command refuses it (SPEC §4.1): remove it from {command}", c.name),
            );
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
        if let Err(m) = AnchoredPattern::check(p, Case::AsciiInsensitive) {
            ctx.err(
                file,
                &with("validate_pattern"),
                format!("validate_pattern of parameter {pname} is not a valid regex: {m}"),
            );
        }
    }
}

fn builtin_matches(name: &str) -> Vec<&'static str> {
    let Ok(w) = Wildcard::new(name, Mode::Name) else {
        return Vec::new();
    };
    BUILTIN_CMDLETS
        .iter()
        .copied()
        .filter(|b| w.is_match(b))
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
                    if let Err(m) = AnchoredPattern::check(a, Case::Sensitive) {
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
            if catalog::is_builtin(alias) {
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
            let known =
                catalog::is_builtin(target) || declared_anywhere.contains(&target.to_lowercase());
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
        if catalog::is_builtin(fname) {
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
    validate_audit_log(ctx, cfg);

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
    // One account look-up per distinct run_as, not per endpoint (1,000 endpoints usually share
    // a handful of accounts).
    let mut accounts: BTreeMap<&str, Option<(Severity, String)>> = BTreeMap::new();
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
        } else if let Some((sev, msg)) = accounts
            .entry(e.run_as.as_str())
            .or_insert_with(|| account_problem(&e.run_as))
            .clone()
        {
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
                    || DEFAULT_ALIASES.iter().any(|d| wildcard_match(va, d.alias));
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

    validate_console(ctx, cfg);
    validate_rules(ctx, cfg);
    validate_users(ctx, cfg);
}

/// `[console]`: served on the HTTPS listener only; its sign-in defaults must name this server
/// and an endpoint (a typo would have every sign-in that keeps the default refused).
fn validate_console(ctx: &mut Ctx, cfg: &LoadedConfig) {
    let c = &cfg.server.console;
    let file = cfg.path.as_path();
    if c.enabled && cfg.server.listener.https.trim().is_empty() {
        ctx.err(
            file,
            &tpath!["console", "enabled"],
            "the web console is served on the HTTPS listener only, and [listener] https is \"\": set an https address or console.enabled = false",
        );
    }
    let computer = c.default_computer.trim();
    if !computer.is_empty() {
        let served = std::iter::once(&cfg.server.computer_name)
            .chain(cfg.server.computer_aliases.iter())
            .any(|n| n.eq_ignore_ascii_case(computer));
        if !served {
            ctx.err(
                file,
                &tpath!["console", "default_computer"],
                format!(
                    "console.default_computer {computer:?} is neither computer_name ({:?}) nor one of computer_aliases: the console signs in to this server only; use one of its names or \"\"",
                    cfg.server.computer_name
                ),
            );
        }
    }
    let ep = c.default_configuration.trim();
    if !ep.is_empty() && cfg.endpoint(ep).is_none() && !ctx.broken_endpoint {
        let list: Vec<&str> = cfg
            .endpoints
            .iter()
            .map(|e| e.config.name.as_str())
            .collect();
        ctx.err(
            file,
            &tpath!["console", "default_configuration"],
            format!(
                "console.default_configuration {ep:?} names no endpoint (endpoints: {})",
                list.join(", ")
            ),
        );
    }
}

/// keyhole.toml's `[listener]`: exactly what `serve` checks before it binds
/// ([`super::listener::check`]), each problem located at its setting.
fn validate_server(ctx: &mut Ctx, cfg: &LoadedConfig) {
    let file = cfg.path.as_path();
    let s = &cfg.server;
    match crate::metrics::parse_listen(&s.metrics.listen) {
        Err(m) => ctx.err(file, &tpath!["metrics", "listen"], m),
        Ok(Some(addr)) => {
            let taken = [("https", &s.listener.https), ("http", &s.listener.http)]
                .into_iter()
                .find(|(_, v)| {
                    addr.port() != 0 && v.parse::<std::net::SocketAddr>().ok() == Some(addr)
                });
            if let Some((k, _)) = taken {
                ctx.err(file, &tpath!["metrics", "listen"], format!("metrics.listen {addr} is also listener.{k}: give the metrics listener its own port (e.g. 9465)"));
            } else if !addr.ip().is_loopback() {
                ctx.at(Severity::Warning, file, &tpath!["metrics", "listen"], false, format!("metrics.listen {addr} is reachable from the network without authentication or TLS (endpoint names and counts); listener.ip_allow applies to it, and a firewall should too"));
            }
        }
        Ok(None) => {}
    }
    validate_negotiate(ctx, cfg);
    let l = super::listener::resolved(&cfg.server.listener, |p| cfg.resolve(p));
    let state_dir = cfg.resolve(&cfg.server.state_directory);
    let Err(problems) = super::listener::check(&l, cfg.server.auth.negotiate, &state_dir) else {
        return;
    };
    for p in problems {
        let mut at = p.setting.toml_path();
        // A setting left at its default is not in the file: point at what needs it instead
        // (the https listener needs the self-signed pair; the [listener] table otherwise).
        let located = |at: &[Seg]| ctx.source(file).and_then(|s| s.span(at, false)).is_some();
        if !located(&at) {
            let https = tpath!["listener", "https"];
            at = if p.setting == super::listener::Setting::StateDirectory && located(&https) {
                https
            } else {
                tpath!["listener"]
            };
        }
        ctx.err(file, &at, p.message);
    }
}

/// `[auth] negotiate`, `keytab`, `realms`, `ntlm` (issue 12): what `serve` needs to offer
/// Negotiate, checked the same way at `check`, start and reload.
fn validate_negotiate(ctx: &mut Ctx, cfg: &LoadedConfig) {
    let a = &cfg.server.auth;
    let file = cfg.path.as_path();
    for (i, r) in a.realms.iter().enumerate() {
        if r.is_empty() || r.contains(['@', '/', ' ', '\t']) || r.chars().any(char::is_control) {
            ctx.err(
                file,
                &tpath!["auth", "realms", i],
                format!("{r:?} is not a Kerberos realm name: write it like \"EXAMPLE.COM\""),
            );
        }
    }
    if a.ntlm && !a.negotiate {
        ctx.err(file, &tpath!["auth", "ntlm"], "ntlm = true needs negotiate = true: NTLM is offered through WWW-Authenticate: Negotiate");
    }
    if !a.negotiate {
        return;
    }
    if a.ntlm && !cfg.users.users.values().any(|u| u.nt_hash.is_some()) {
        ctx.warn(file, &tpath!["auth", "ntlm"], "ntlm = true but no account in the users file has an nt_hash yet: run `keyhole user passwd NAME` (with ntlm on) for each account that may use NTLM");
    }
    if a.keytab.is_empty() {
        if !a.ntlm {
            ctx.err(file, &tpath!["auth", "negotiate"], "negotiate = true with keytab = \"\" and ntlm = false offers no mechanism: set keytab (Kerberos) or ntlm = true");
        }
        return;
    }
    if let Err(e) = crate::sys::gssapi::available() {
        ctx.err(file, &tpath!["auth", "negotiate"], e.to_string());
    }
    let path = cfg.resolve(&a.keytab);
    let how = "add a key: on an AD-joined host `adcli update --add-service-principal=HTTP/HOST` (realmd/SSSD) or `net ads keytab add HTTP` (Samba/winbind); with an MIT KDC `kadmin -q \"ktadd -k KEYTAB HTTP/HOST\"`; or merge an exported keytab with `ktutil`";
    match std::fs::metadata(&path) {
        Err(e) => {
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist".to_string()
            } else {
                format!("cannot be read: {e}")
            };
            ctx.err(
                file,
                &tpath!["auth", "keytab"],
                format!("the keytab {} {what}; {how}", path.display()),
            );
            return;
        }
        Ok(m) => {
            if m.mode() & 0o077 != 0 {
                ctx.err(file, &tpath!["auth", "keytab"], format!("the keytab {} is readable or writable by others (mode {:o}): its keys let anyone impersonate this server; run `chmod 600 {}` and `chown root {}`", path.display(), m.mode() & 0o777, path.display(), path.display()));
            }
            if m.uid() != 0 && nix::unistd::geteuid().is_root() {
                ctx.err(file, &tpath!["auth", "keytab"], format!("the keytab {} is owned by uid {}, not root: that account can replace the server's keys; run `chown root {}`", path.display(), m.uid(), path.display()));
            }
        }
    }
    let entries = match super::keytab::read_keytab(&path) {
        Ok(e) => e,
        Err(e) => {
            ctx.err(file, &tpath!["auth", "keytab"], format!("{e}; {how}"));
            return;
        }
    };
    // What `serve` does at start: acquire acceptor credentials from this keytab.
    if crate::sys::gssapi::available().is_ok() {
        if let Err(e) = crate::sys::gssapi::AcceptorCred::acquire(&path) {
            ctx.err(
                file,
                &tpath!["auth", "keytab"],
                format!(
                    "the system's Kerberos library cannot use the keytab {}: {e}",
                    path.display()
                ),
            );
        }
    }
    let mut names = vec![cfg.server.computer_name.clone()];
    names.extend(cfg.server.computer_aliases.iter().cloned());
    if super::keytab::service_entries(&entries, &names).is_empty() {
        let have: Vec<String> = entries
            .iter()
            .map(|e| e.principal())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .take(10)
            .collect();
        ctx.err(file, &tpath!["auth", "keytab"], format!(
            "the keytab {} holds no HTTP/ or WSMAN/ key for a name this server answers to ({}); it holds: {}; {how}",
            path.display(),
            names.join(", "),
            if have.is_empty() { "nothing".to_string() } else { have.join(", ") }
        ));
    }
}

/// `audit_log`: `serve` creates its directory (0700) and opens it for appending without
/// following a symbolic link, restricting it to 0600; anything that would stop that stops
/// `serve` from starting.
fn validate_audit_log(ctx: &mut Ctx, cfg: &LoadedConfig) {
    if cfg.server.audit_log.is_empty() {
        return;
    }
    let path = cfg.resolve(&cfg.server.audit_log);
    if let Some(msg) = audit_log_problem(&path) {
        ctx.err(&cfg.path, &tpath!["audit_log"], msg);
    }
}

fn audit_log_problem(path: &Path) -> Option<String> {
    use nix::unistd::{access, AccessFlags};
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Some(format!(
            "audit log {shown} is a symbolic link: keyhole never follows one to its audit log; name the file itself"
        )),
        Ok(m) if !m.is_file() => Some(format!(
            "audit log {shown} is not a regular file; name a file (it is created if missing)"
        )),
        Ok(m) => {
            if let Err(e) = access(path, AccessFlags::W_OK) {
                return Some(format!("audit log {shown} is not writable: {e}"));
            }
            let me = nix::unistd::geteuid();
            if m.mode() & 0o077 != 0 && !me.is_root() && m.uid() != me.as_raw() {
                return Some(format!(
                    "audit log {shown} is readable by others and belongs to another account: keyhole cannot restrict it to 0600"
                ));
            }
            None
        }
        Err(_) => super::listener::creatable(path)
            .err()
            .map(|m| format!("audit log {shown} cannot be created: {m}")),
    }
}

/// Where in a rules file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSpot {
    /// The file as a whole.
    File,
    /// The `index`-th `[[rule]]` (0-based, file order), at `field` when there is one.
    Rule {
        index: usize,
        field: Option<&'static str>,
    },
    /// `[computer_groups]`, the group `name` (or its `member`-th member).
    ComputerGroup { name: String, member: Option<usize> },
}

/// One problem of a rules file: where, and what (the text says what to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub spot: RuleSpot,
    pub message: String,
}

/// The one check of a rule field value: non-empty, at most [`MAX_RULE_FIELD_LEN`] bytes, no
/// control characters, and `*` only alone. Gate 3 never matches a rule whose field fails it.
pub fn rule_field_problem(what: &str, value: &str) -> Option<String> {
    if value.trim().is_empty() {
        return Some(format!("{what} is empty"));
    }
    if value.len() > MAX_RULE_FIELD_LEN {
        return Some(format!("{what} is longer than {MAX_RULE_FIELD_LEN} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Some(format!("{what} {value:?} contains control characters"));
    }
    if value != "*" && value.contains('*') {
        return Some(format!("{what} = {value:?}: `*` is allowed only alone (it matches everything); wildcards inside names are not supported"));
    }
    None
}

/// The problems of one rule of `rules` (the file is needed for its computer groups).
pub fn rule_problems(rule: &Rule, rules: &RulesFile) -> Vec<(Option<&'static str>, String)> {
    let mut out = Vec::new();
    let field = |out: &mut Vec<(Option<&'static str>, String)>, key: &'static str, v: &str| {
        if let Some(m) = rule_field_problem(key, v) {
            out.push((Some(key), m));
        }
    };
    match (&rule.user, &rule.user_group) {
        (Some(u), None) => field(&mut out, "user", u),
        (None, Some(g)) => field(&mut out, "user_group", g),
        (Some(_), Some(_)) => out.push((
            None,
            "has both user and user_group; a rule needs exactly one of user or user_group".into(),
        )),
        (None, None) => out.push((
            None,
            "has neither user nor user_group; a rule needs exactly one of user or user_group"
                .into(),
        )),
    }
    match (&rule.computer, &rule.computer_group) {
        (Some(c), None) => field(&mut out, "computer", c),
        (None, Some(g)) => {
            let before = out.len();
            field(&mut out, "computer_group", g);
            let known = rules
                .computer_groups
                .keys()
                .any(|k| k == g || k.to_lowercase() == g.to_lowercase());
            if out.len() == before && g != "*" && !known {
                let defined: Vec<&str> = rules.computer_groups.keys().map(String::as_str).collect();
                out.push((
                    Some("computer_group"),
                    format!(
                        "computer group {g:?} is not defined under [computer_groups] (defined: {}); define it there",
                        if defined.is_empty() { "none".into() } else { defined.join(", ") }
                    ),
                ));
            }
        }
        (Some(_), Some(_)) => out.push((
            None,
            "has both computer and computer_group; a rule needs exactly one of computer or computer_group".into(),
        )),
        (None, None) => out.push((
            None,
            "has neither computer nor computer_group; a rule needs exactly one of computer or computer_group".into(),
        )),
    }
    field(&mut out, "configuration", &rule.configuration);
    if rule.name.len() > MAX_RULE_FIELD_LEN || rule.name.chars().any(char::is_control) {
        out.push((
            Some("name"),
            format!("name is longer than {MAX_RULE_FIELD_LEN} bytes or has control characters"),
        ));
    }
    out
}

/// Every problem of a rules file (the one validation of rules: `keyhole check`, the server's
/// load and reload, and `keyhole rule add` use it).
pub fn rules_file_problems(rules: &RulesFile) -> Vec<RuleProblem> {
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for (index, r) in rules.rules.iter().enumerate() {
        if !ids.insert(r.id) {
            out.push(RuleProblem {
                spot: RuleSpot::Rule {
                    index,
                    field: Some("id"),
                },
                message: format!(
                    "rule id {} is used more than once; ids must be unique",
                    r.id
                ),
            });
        }
        for (field, message) in rule_problems(r, rules) {
            out.push(RuleProblem {
                spot: RuleSpot::Rule { index, field },
                message,
            });
        }
    }
    for (group, members) in &rules.computer_groups {
        if let Some(m) = rule_field_problem("computer group name", group) {
            out.push(RuleProblem {
                spot: RuleSpot::ComputerGroup {
                    name: group.clone(),
                    member: None,
                },
                message: m,
            });
        }
        for (i, m) in members.iter().enumerate() {
            if let Some(msg) = rule_field_problem(&format!("member of computer group {group:?}"), m)
            {
                out.push(RuleProblem {
                    spot: RuleSpot::ComputerGroup {
                        name: group.clone(),
                        member: Some(i),
                    },
                    message: msg,
                });
            }
        }
    }
    out
}

fn validate_rules(ctx: &mut Ctx, cfg: &LoadedConfig) {
    let file = cfg.resolve(&cfg.server.authorization_rules);
    let file = file.as_path();
    for p in rules_file_problems(&cfg.rules) {
        let (path, key) = match &p.spot {
            RuleSpot::File => (Vec::new(), false),
            RuleSpot::Rule { index, field: None } => (tpath!["rule", *index], false),
            RuleSpot::Rule {
                index,
                field: Some(f),
            } => (tpath!["rule", *index, *f], false),
            RuleSpot::ComputerGroup { name, member: None } => {
                (tpath!["computer_groups", name.as_str()], true)
            }
            RuleSpot::ComputerGroup {
                name,
                member: Some(i),
            } => (tpath!["computer_groups", name.as_str(), *i], false),
        };
        ctx.at(Severity::Error, file, &path, key, p.message);
    }
    for (i, r) in cfg.rules.rules.iter().enumerate() {
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
        if let Some(h) = &u.nt_hash {
            let mut p = up.clone();
            p.push(Seg::from("nt_hash"));
            if h.len() != 32 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                ctx.err(file, &p, format!("nt_hash of {name} is not 32 hexadecimal digits; set it with `keyhole user passwd {name}` while [auth] ntlm = true"));
            } else if !cfg.server.auth.ntlm {
                ctx.warn(file, &p, format!("nt_hash of {name} is unused while [auth] ntlm = false, and it is password-equivalent: remove it (`keyhole user passwd {name}` rewrites the entry without it)"));
            }
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
