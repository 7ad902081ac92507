//! Command line: parses arguments and calls the library (`check`, `capability`, `run`; the
//! other subcommands are wired in by their owners).
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::capability::{effective_capability, EffectiveCapability, ParamsGrant, ValueConstraint};
use crate::config::{self, LoadedConfig, Severity};
use crate::engine::{self, CancelToken, Event, EventSink, RunOutcome};
use crate::gates::{Gates, Grant, Origin, SessionKind};
use crate::wsman::shell::Identity;

/// Where keyhole looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATHS: &[&str] = &["./keyhole.toml", "/etc/keyhole/keyhole.toml"];

#[derive(Parser, Debug)]
#[command(
    name = "keyhole",
    version,
    about = "Just-Enough-Administration remoting endpoint server for Linux (WS-Management, WinRS, PSRP)",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArg {
    /// keyhole.toml to use (default: ./keyhole.toml, then /etc/keyhole/keyhole.toml)
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The configuration file to load: --config, ./keyhole.toml, /etc/keyhole/keyhole.toml,
    /// else ./keyhole.toml (missing: all defaults).
    pub fn path(&self) -> PathBuf {
        if let Some(p) = &self.config {
            return p.clone();
        }
        DEFAULT_CONFIG_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("./keyhole.toml"))
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct DemoArgs {
    /// HTTPS port on 127.0.0.1; 0 picks a free one (default: 5986, or a free port when 5986 is taken)
    #[arg(long, value_name = "P")]
    pub https_port: Option<u16>,
    /// Plain HTTP port on 127.0.0.1; 0 picks a free one (default: 5985, or a free port when 5985 is taken)
    #[arg(long, value_name = "P")]
    pub http_port: Option<u16>,
}

#[derive(Args, Debug, Clone)]
pub struct WhoArgs {
    /// Endpoint (configuration) name, as clients give -ConfigurationName
    #[arg(long, value_name = "NAME")]
    pub endpoint: String,
    /// The user, as they would log in
    #[arg(long, value_name = "USER")]
    pub user: String,
    /// An extra group for the user (repeatable), added to those from users.toml or the OS
    #[arg(long = "group", value_name = "G")]
    pub groups: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate every configuration file; exit 0, or 1 with every error listed
    Check(ConfigArg),
    /// Show what a user may run in an endpoint (like Get-PSSessionCapability)
    Capability {
        #[command(flatten)]
        who: WhoArgs,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run one line exactly as a remote session of that user would (exit 0 ran, 1 failed, 2 refused)
    Run {
        #[command(flatten)]
        who: WhoArgs,
        #[command(flatten)]
        config: ConfigArg,
        /// The line to run (after `--`)
        #[arg(last = true, required = true, value_name = "LINE")]
        line: Vec<String>,
    },
    /// Run the server in the foreground (SIGHUP or a changed file reloads; SIGTERM/Ctrl+C stops)
    Serve(ConfigArg),
    /// A loopback-only server on the shipped endpoints with a throwaway account, and the exact client commands to connect
    Demo(DemoArgs),
    /// Manage local accounts in users.toml (passwords are read from the terminal or stdin)
    #[command(subcommand)]
    User(UserCommand),
    /// Manage gateway authorization rules (who may reach which endpoint on which computer)
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Print (or --write) the polkit rule letting each endpoint's run_as account start/stop/restart exactly the services its roles grant
    Polkit {
        /// Write the rule (atomically) instead of printing it
        #[arg(long)]
        write: bool,
        /// Where --write puts it
        #[arg(long, value_name = "PATH", default_value = crate::polkit::RULES_PATH)]
        rules_file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Create a working configuration in an empty directory (keyhole.toml, endpoints, role capabilities, rules, a TLS certificate, the run_as accounts)
    Init {
        /// Directory to create the configuration in (must be empty or absent)
        #[arg(long, value_name = "DIR", default_value = "/etc/keyhole")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add an account; the password is read from the terminal, or one line from stdin
    Add {
        name: String,
        /// A group for the account (repeatable)
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Change an account's password (read from the terminal, or one line from stdin)
    Passwd {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove an account
    Remove {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List accounts with their groups
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum RuleCommand {
    /// Add a rule; prints its id (`*` is allowed alone in each field)
    Add {
        #[arg(
            long,
            value_name = "U",
            conflicts_with = "user_group",
            required_unless_present = "user_group"
        )]
        user: Option<String>,
        #[arg(long = "user-group", value_name = "G")]
        user_group: Option<String>,
        #[arg(
            long,
            value_name = "C",
            conflicts_with = "computer_group",
            required_unless_present = "computer_group"
        )]
        computer: Option<String>,
        #[arg(long = "computer-group", value_name = "G")]
        computer_group: Option<String>,
        /// Endpoint (configuration) name, or `*`
        #[arg(long, value_name = "E")]
        configuration: String,
        /// A description of the rule
        #[arg(long, value_name = "N", default_value = "")]
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List rules
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove rules by id
    Remove {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<u64>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Say whether a user would get in, and by which rule
    Test {
        #[arg(long, value_name = "U")]
        user: String,
        #[arg(long, value_name = "C")]
        computer: String,
        #[arg(long, value_name = "E")]
        configuration: Option<String>,
        /// An extra group for the user (repeatable), added to those from users.toml or the OS
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if !broken_pipe {
                eprintln!("keyhole: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check(c) => cmd_check(&c.path()),
        Command::Capability { who, json, config } => cmd_capability(&config.path(), &who, json),
        Command::Run { who, config, line } => cmd_run(&config.path(), &who, &line.join(" ")),
        Command::Serve(c) => cmd_serve(&c.path()),
        Command::Demo(d) => {
            crate::demo::run(d.https_port, d.http_port)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::User(u) => cmd_user(u),
        Command::Rule(r) => cmd_rule(r),
        Command::Polkit {
            write,
            rules_file,
            config,
        } => cmd_polkit(&config.path(), write, &rules_file),
        Command::Init { dir } => crate::init::run(&dir),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `keyhole check`.
fn cmd_check(path: &Path) -> Result<ExitCode> {
    match crate::check::load(path) {
        Ok(mut cfg) => {
            // Service changes granted to a run_as account need the polkit rule (warning only:
            // the server runs without it, those cmdlets then fail with systemd's refusal).
            for w in crate::polkit::installed_rule_warnings(
                &cfg,
                Path::new(crate::polkit::RULES_PATH),
                &crate::polkit::systemd_aliases,
            ) {
                cfg.warnings.push(config::diag::diagnostic(
                    Severity::Warning,
                    Path::new(crate::polkit::RULES_PATH),
                    None,
                    None,
                    w,
                ));
            }
            let mut out = std::io::stdout().lock();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| path.display().to_string());
            let missing = if cfg.path.exists() {
                ""
            } else {
                " (file not found: defaults)"
            };
            writeln!(
                out,
                "{name}: OK{missing} — {}, {}, {}, {} ({})",
                plural(cfg.endpoints.len(), "endpoint", "endpoints"),
                plural(
                    cfg.capabilities.len(),
                    "role capability",
                    "role capabilities"
                ),
                plural(cfg.rules.rules.len(), "rule", "rules"),
                plural(cfg.users.users.len(), "user", "users"),
                plural(cfg.warnings.len(), "warning", "warnings"),
            )?;
            for w in &cfg.warnings {
                write!(out, "{}", w.rendered)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            let mut err = std::io::stderr().lock();
            for d in &diags {
                writeln!(err, "{}", d.rendered.trim_end())?;
            }
            let errors = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            let warnings = diags.len() - errors;
            writeln!(
                err,
                "keyhole check: {} ({})",
                plural(errors, "error", "errors"),
                plural(warnings, "warning", "warnings")
            )?;
            Ok(ExitCode::from(1))
        }
    }
}

/// Load the configuration or fail with every diagnostic printed.
fn load_or_report(path: &Path) -> Result<LoadedConfig> {
    crate::check::load(path).map_err(|diags| {
        for d in &diags {
            if d.severity == Severity::Error {
                eprintln!("{}", d.rendered.trim_end());
            }
        }
        anyhow!(
            "the configuration in {} is not valid (run `keyhole check`)",
            path.display()
        )
    })
}

fn groups_for(cfg: &LoadedConfig, who: &WhoArgs) -> Vec<String> {
    let pam = !cfg.server.auth.pam_service.is_empty();
    let mut groups = crate::auth::groups_of(&cfg.users, pam, &who.user).unwrap_or_default();
    for g in &who.groups {
        if !groups.iter().any(|x| x.eq_ignore_ascii_case(g)) {
            groups.push(g.clone());
        }
    }
    groups
}

fn resolve_capability(
    cfg: &LoadedConfig,
    who: &WhoArgs,
) -> Result<Option<(EffectiveCapability, Vec<String>)>> {
    let Some(ep) = cfg.endpoint(&who.endpoint) else {
        let names: Vec<&str> = cfg
            .endpoints
            .iter()
            .map(|e| e.config.name.as_str())
            .collect();
        eprintln!(
            "keyhole: no endpoint named {:?} (endpoints: {})",
            who.endpoint,
            names.join(", ")
        );
        return Ok(None);
    };
    let groups = groups_for(cfg, who);
    match effective_capability(cfg, ep, &who.user, &groups) {
        Ok(cap) => Ok(Some((cap, groups))),
        Err(r) => {
            eprintln!("keyhole: access denied at gate {}: {}", r.gate, r.reason);
            Ok(None)
        }
    }
}

fn constraint_text(c: &ValueConstraint) -> String {
    match c {
        ValueConstraint::Any => "any value".to_string(),
        ValueConstraint::Set(s) => format!("one of: {}", s.join(", ")),
        ValueConstraint::Patterns(p) => format!("matches (whole value): {}", p.join("  |  ")),
    }
}

fn params_text(out: &mut String, p: &ParamsGrant) {
    match p {
        ParamsGrant::All => out.push_str("      (all parameters)\n"),
        ParamsGrant::Only(m) if m.is_empty() => out.push_str("      (common parameters only)\n"),
        ParamsGrant::Only(m) => {
            for g in m.values() {
                out.push_str(&format!(
                    "      -{:<20} {}\n",
                    g.name,
                    constraint_text(&g.constraint)
                ));
            }
        }
    }
}

fn constraint_json(c: &ValueConstraint) -> serde_json::Value {
    match c {
        ValueConstraint::Any => serde_json::json!({ "any": true }),
        ValueConstraint::Set(s) => serde_json::json!({ "validate_set": s }),
        ValueConstraint::Patterns(p) => serde_json::json!({ "validate_pattern": p }),
    }
}

fn params_json(p: &ParamsGrant) -> serde_json::Value {
    match p {
        ParamsGrant::All => serde_json::Value::String("all".into()),
        ParamsGrant::Only(m) => serde_json::Value::Array(
            m.values()
                .map(|g| {
                    let mut o = serde_json::json!({ "name": g.name });
                    if let (Some(obj), serde_json::Value::Object(c)) =
                        (o.as_object_mut(), constraint_json(&g.constraint))
                    {
                        obj.extend(c);
                    }
                    o
                })
                .collect(),
        ),
    }
}

/// Render an effective capability as text (what `keyhole capability` prints).
pub fn capability_text(
    endpoint: &str,
    session_defaults: bool,
    user: &str,
    groups: &[String],
    cap: &EffectiveCapability,
) -> String {
    let mut s = String::new();
    s.push_str(&format!("Endpoint:           {endpoint}\n"));
    s.push_str(&format!("User:               {user}\n"));
    s.push_str(&format!(
        "Groups:             {}\n",
        if groups.is_empty() {
            "(none)".into()
        } else {
            groups.join(", ")
        }
    ));
    s.push_str(&format!("Role capabilities:  {}\n", cap.roles.join(", ")));
    if session_defaults {
        s.push_str(&format!(
            "Session defaults:   {}\n",
            crate::catalog::RESTRICTED_DEFAULTS.join(", ")
        ));
    }
    s.push_str("\nCmdlets:\n");
    if cap.cmdlets.is_empty() {
        s.push_str("  (none)\n");
    }
    for c in cap.cmdlets.values() {
        s.push_str(&format!("  {}\n", c.name));
        params_text(&mut s, &c.params);
    }
    s.push_str("\nFunctions:\n");
    if cap.functions.is_empty() {
        s.push_str("  (none)\n");
    }
    for f in cap.functions.values() {
        let func = &f.function;
        s.push_str(&format!(
            "  {}  → {} {}   [from {}]\n",
            func.name,
            func.def.program,
            func.def.args.join(" "),
            func.capability
        ));
        match &f.params {
            ParamsGrant::All => {
                for (n, p) in &func.params {
                    let c = match (&p.validate_set, &p.validate_pattern) {
                        (Some(set), _) => format!("one of: {}", set.join(", ")),
                        (None, Some(pat)) => format!("matches (whole value): {pat}"),
                        _ => "any value".into(),
                    };
                    let m = if p.mandatory { ", mandatory" } else { "" };
                    s.push_str(&format!("      -{:<20} {:?}{m}; {c}\n", n, p.ty));
                }
                if func.params.is_empty() {
                    s.push_str("      (no parameters)\n");
                }
            }
            other => params_text(&mut s, other),
        }
    }
    s.push_str("\nExternal commands:\n");
    if cap.external.is_empty() {
        s.push_str("  (none)\n");
    }
    for e in cap.external.values() {
        if e.def.arguments.is_empty() {
            s.push_str(&format!("  {}  (no arguments)\n", e.def.path));
        } else {
            s.push_str(&format!(
                "  {}  each argument matches one of: {}\n",
                e.def.path,
                e.def.arguments.join("  |  ")
            ));
        }
    }
    s.push_str("\nAliases:\n");
    if cap.aliases.is_empty() {
        s.push_str("  (none)\n");
    }
    for a in cap.aliases.values() {
        s.push_str(&format!("  {} → {}\n", a.alias, a.target));
    }
    s
}

/// Render an effective capability as JSON.
pub fn capability_json(
    endpoint: &str,
    session_defaults: bool,
    user: &str,
    groups: &[String],
    cap: &EffectiveCapability,
) -> serde_json::Value {
    let cmdlets: Vec<serde_json::Value> = cap
        .cmdlets
        .values()
        .map(|c| serde_json::json!({ "name": c.name, "parameters": params_json(&c.params) }))
        .collect();
    let functions: Vec<serde_json::Value> = cap
        .functions
        .values()
        .map(|f| {
            let declared: Vec<serde_json::Value> = f
                .function
                .params
                .iter()
                .map(|(n, p)| {
                    serde_json::json!({ "name": n, "type": p.ty, "mandatory": p.mandatory, "position": p.position,
                        "validate_set": p.validate_set, "validate_pattern": p.validate_pattern })
                })
                .collect();
            serde_json::json!({
                "name": f.function.name, "program": f.function.def.program, "args": f.function.def.args,
                "capability": f.function.capability, "declared_parameters": declared, "parameters": params_json(&f.params),
            })
        })
        .collect();
    let external: Vec<serde_json::Value> = cap
        .external
        .values()
        .map(|e| serde_json::json!({ "path": e.def.path, "arguments": e.def.arguments }))
        .collect();
    let aliases: Vec<serde_json::Value> = cap
        .aliases
        .values()
        .map(|a| serde_json::json!({ "name": a.alias, "target": a.target }))
        .collect();
    let defaults: Vec<&str> = if session_defaults {
        crate::catalog::RESTRICTED_DEFAULTS.to_vec()
    } else {
        Vec::new()
    };
    serde_json::json!({
        "endpoint": endpoint, "user": user, "groups": groups, "role_capabilities": cap.roles,
        "session_defaults": defaults, "cmdlets": cmdlets, "functions": functions,
        "external_commands": external, "aliases": aliases,
    })
}

/// `keyhole capability`.
fn cmd_capability(path: &Path, who: &WhoArgs, json: bool) -> Result<ExitCode> {
    let cfg = load_or_report(path)?;
    let Some((cap, groups)) = resolve_capability(&cfg, who)? else {
        return Ok(ExitCode::from(2));
    };
    let ep = cfg
        .endpoint(&who.endpoint)
        .map(|e| &e.config)
        .context("endpoint vanished")?;
    let defaults = ep.session_type == config::SessionType::RestrictedRemoteServer;
    let mut out = std::io::stdout().lock();
    if json {
        let v = capability_json(&ep.name, defaults, &who.user, &groups, &cap);
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        write!(
            out,
            "{}",
            capability_text(&ep.name, defaults, &who.user, &groups, &cap)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints events as they come: output formatted to stdout, everything else to stderr.
struct PrintSink {
    fmt: engine::format::Formatter,
}

impl EventSink for PrintSink {
    fn event(&mut self, e: Event) {
        match e {
            Event::Output(v) => {
                let text = self.fmt.push(&v);
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Event::Error(rec) => eprint!("{}", engine::format::error_text(&rec)),
            Event::Warning(w) => eprintln!("WARNING: {w}"),
            Event::Verbose(v) => eprintln!("VERBOSE: {v}"),
            Event::Debug(d) => eprintln!("DEBUG: {d}"),
            Event::Information(i) => eprintln!("{i}"),
        }
    }
}

/// `keyhole run`: a session like any other, opened through [`Gates::open`] (gate 3 is skipped:
/// it is the administrator's own tool on this machine; gate 4, the transcript and the audit log
/// apply), refused with the text the server logs, run with the server's `command_timeout`.
fn cmd_run(path: &Path, who: &WhoArgs, line: &str) -> Result<ExitCode> {
    let cfg = load_or_report(path)?;
    let groups = groups_for(&cfg, who);
    let endpoints: Vec<String> = cfg
        .endpoints
        .iter()
        .map(|e| e.config.name.clone())
        .collect();
    let gates = match Gates::local(cfg) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            eprintln!(
                "keyhole run: {e}\nkeyhole records every session in the audit log: make it writable by this user or set audit_log in {}",
                path.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let id = Identity {
        user: who.user.clone(),
        groups,
    };
    let grant = match gates.open(&id, &who.endpoint, Origin::Local, SessionKind::Run) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("keyhole run: {e}");
            if !endpoints
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&who.endpoint))
            {
                eprintln!("keyhole run: endpoints: {}", endpoints.join(", "));
            }
            return Ok(ExitCode::from(2));
        }
    };
    let Grant {
        mut session,
        limits,
        guard,
        ..
    } = grant;
    let mut sink = PrintSink {
        fmt: engine::format::Formatter::new(),
    };
    let cancel = CancelToken::new();
    cancel.set_deadline(std::time::Instant::now() + limits.command_timeout);
    let mut outcome = session.run_line(line, &mut sink, &cancel);
    if outcome == RunOutcome::Stopped && cancel.timed_out() {
        outcome = RunOutcome::Failed(crate::shells::runner::timeout_record(
            limits.command_timeout,
        ));
        if let RunOutcome::Failed(rec) = &outcome {
            eprint!("{}", engine::format::error_text(rec));
        }
    }
    let tail = sink.fmt.finish();
    print!("{tail}");
    match &outcome {
        RunOutcome::Refused(r) => eprint!("{}", engine::format::error_text(&r.to_error_record())),
        // Already printed: the engine emits a terminating error as an event before returning it.
        RunOutcome::Failed(_) => {}
        RunOutcome::Stopped => eprintln!("The pipeline has been stopped."),
        _ => {}
    }
    let _ = std::io::stdout().flush();
    // The transcript ends, then the audit log records the session's end.
    drop(session);
    drop(guard);
    let code = u8::try_from(outcome.exit_code()).unwrap_or(1);
    Ok(ExitCode::from(code))
}

/// The server configuration only (users and rules paths), without validating endpoints:
/// `keyhole user`/`keyhole rule` must work while other files are still being written.
fn server_paths(config: &ConfigArg) -> Result<(PathBuf, config::ServerConfig)> {
    let path = config.path();
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let server: config::ServerConfig = if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            anyhow!(
                "{}: {}; run `keyhole check --config {}` for details",
                path.display(),
                e.message(),
                path.display()
            )
        })?
    } else {
        config::ServerConfig::default()
    };
    Ok((base, server))
}

fn resolve_in(base: &Path, p: &str) -> PathBuf {
    let pb = Path::new(p);
    if pb.is_absolute() {
        pb.to_path_buf()
    } else {
        base.join(pb)
    }
}

/// `keyhole serve`.
fn cmd_serve(path: &Path) -> Result<ExitCode> {
    crate::daemon::init_logging();
    let cfg = match crate::daemon::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyhole serve: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    crate::daemon::serve(path, cfg, |s| {
        if let Some(a) = s.https {
            println!("keyhole: listening on https://{a}/wsman");
        }
        if let Some(fp) = &s.fingerprint {
            println!("keyhole: TLS certificate SHA-256 {fp}");
        }
        if let Some(a) = s.http {
            println!("keyhole: listening on http://{a}/wsman");
        }
        if let Some(a) = s.metrics {
            println!("keyhole: metrics on http://{a}/metrics");
        }
        if let Some(a) = s.console {
            println!("keyhole: web console on https://{a}/console");
        }
        let _ = std::io::stdout().flush();
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `keyhole polkit`.
fn cmd_polkit(path: &Path, write: bool, rules_file: &Path) -> Result<ExitCode> {
    let cfg = load_or_report(path)?;
    let plan = match crate::polkit::plan(&cfg, &crate::polkit::systemd_aliases) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("keyhole polkit: cannot translate {e}");
            }
            eprintln!(
                "keyhole polkit: no rule written: {} (fix the role capabilities, or use run_as = \"root\" for that endpoint)",
                plural(errors.len(), "grant cannot be translated", "grants cannot be translated")
            );
            return Ok(ExitCode::from(1));
        }
    };
    let text = crate::polkit::render(&plan);
    if write {
        crate::polkit::write_atomically(rules_file, &text)
            .with_context(|| format!("cannot write {}", rules_file.display()))?;
        println!(
            "wrote {} ({}); polkitd picks it up at once",
            rules_file.display(),
            if plan.grants_anything() {
                let accounts: Vec<&str> = plan.accounts.keys().map(String::as_str).collect();
                format!("grants for {}", accounts.join(", "))
            } else {
                "no grants: no endpoint lets a non-root account change services".to_string()
            }
        );
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `keyhole user ...`.
fn cmd_user(cmd: UserCommand) -> Result<ExitCode> {
    use crate::auth;
    let users_path = |c: &ConfigArg| -> Result<PathBuf> {
        let (base, server) = server_paths(c)?;
        Ok(resolve_in(&base, &server.users))
    };
    // `[auth] ntlm = true`: passwords also get an NT hash (password-equivalent) for NTLM.
    let ntlm = |c: &ConfigArg| -> Result<bool> { Ok(server_paths(c)?.1.auth.ntlm) };
    let ntlm_note = |name: &str| {
        println!("stored an NT hash for {name} too ([auth] ntlm = true): it is password-equivalent, keep the users file private (0600)");
    };
    match cmd {
        UserCommand::Add {
            name,
            groups,
            config,
        } => {
            let path = users_path(&config)?;
            let pw = auth::read_password(&format!("Password for {name}: "))
                .context("cannot read the password")?;
            let nt = ntlm(&config)?;
            auth::user_add_ntlm(&path, &name, &groups, &pw, nt)?;
            println!("added user {name} to {}", path.display());
            if nt {
                ntlm_note(&name);
            }
        }
        UserCommand::Passwd { name, config } => {
            let path = users_path(&config)?;
            let pw = auth::read_password(&format!("New password for {name}: "))
                .context("cannot read the password")?;
            let nt = ntlm(&config)?;
            auth::user_passwd_ntlm(&path, &name, &pw, nt)?;
            println!("changed the password of {name}");
            if nt {
                ntlm_note(&name);
            }
        }
        UserCommand::Remove { name, config } => {
            let path = users_path(&config)?;
            auth::user_remove(&path, &name)?;
            println!("removed user {name}");
        }
        UserCommand::List { config } => {
            let path = users_path(&config)?;
            for (name, groups, disabled) in auth::user_list(&path)? {
                let state = if disabled { " (disabled)" } else { "" };
                println!("{name}{state}\tgroups: {}", groups.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `keyhole rule ...`.
fn cmd_rule(cmd: RuleCommand) -> Result<ExitCode> {
    use crate::{auth, rules};
    let rules_path = |c: &ConfigArg| -> Result<(PathBuf, PathBuf, config::ServerConfig)> {
        let (base, server) = server_paths(c)?;
        Ok((resolve_in(&base, &server.authorization_rules), base, server))
    };
    match cmd {
        RuleCommand::Add {
            user,
            user_group,
            computer,
            computer_group,
            configuration,
            name,
            config,
        } => {
            let (path, _, _) = rules_path(&config)?;
            let id = rules::add_rule(
                &path,
                rules::RuleSpec {
                    user,
                    user_group,
                    computer,
                    computer_group,
                    configuration,
                    name,
                },
            )?;
            println!("{id}");
        }
        RuleCommand::List { json, config } => {
            let (path, _, _) = rules_path(&config)?;
            let rules = rules::list_rules(&path)?;
            if json {
                println!("{}", rules::render_rules_json(&rules));
            } else {
                print!("{}", rules::render_rules_table(&rules));
            }
        }
        RuleCommand::Remove { ids, config } => {
            let (path, _, _) = rules_path(&config)?;
            let removed = rules::remove_rules(&path, &ids)?;
            let list: Vec<String> = removed.iter().map(u64::to_string).collect();
            println!("removed rule {}", list.join(", "));
        }
        RuleCommand::Test {
            user,
            computer,
            configuration,
            groups,
            config,
        } => {
            let (path, base, server) = rules_path(&config)?;
            let rules = rules::load_rules(&path)?;
            let users = auth::load_users(&resolve_in(&base, &server.users)).unwrap_or_default();
            let mut all = auth::groups_of(&users, !server.auth.pam_service.is_empty(), &user)
                .unwrap_or_default();
            all.extend(groups);
            let outcome =
                rules::test_rule(&rules, &user, &all, &computer, configuration.as_deref());
            println!("{}", outcome.message);
            return Ok(if outcome.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_line_after_dashes() {
        let c = Cli::try_parse_from([
            "keyhole",
            "run",
            "--endpoint",
            "E",
            "--user",
            "u",
            "--group",
            "g",
            "--",
            "Get-Service",
        ])
        .unwrap();
        match c.command {
            Command::Run { who, line, .. } => {
                assert_eq!(who.groups, vec!["g"]);
                assert_eq!(line, vec!["Get-Service"]);
            }
            _ => panic!(),
        }
    }
}
