//! The commands every restricted-remote-server session has (PowerShell's restricted proxies):
//! Get-Command, Get-Help, Get-FormatData, Out-Default, Exit-PSSession, Clear-Host, and the safe
//! parts of Select-Object and Measure-Object (never a calculated property).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::Arc;

use crate::engine::format::{resolve_props, Formatter};
use crate::engine::{
    BoundArgs, Command, CommandDecl, CommandKind, Ctx, EnumValue, ErrorCategory, ErrorRecord,
    Invocation, ParamDecl, ParamType, PsObject, Value, VisibleCommand,
};
use crate::lang::wildcard::{self, has_wildcards, Mode};

/// Module name of the core commands.
pub const CORE: &str = "Microsoft.PowerShell.Core";
/// Module name of the utility commands.
pub const UTILITY: &str = "Microsoft.PowerShell.Utility";
/// Longest name Get-Help accepts (as PowerShell's restricted proxy).
pub const MAX_HELP_NAME: usize = 100;
/// Most objects Select-Object -Unique / -Last keeps in memory.
pub const MAX_BUFFERED_OBJECTS: usize = 100_000;

/// A built-in command: its declaration and how to start an invocation.
pub(crate) struct Builtin {
    pub decl: CommandDecl,
    pub start: fn(&BoundArgs) -> Box<dyn Invocation>,
}

impl Command for Builtin {
    fn decl(&self) -> &CommandDecl {
        &self.decl
    }
    fn start(&self, args: &BoundArgs) -> Box<dyn Invocation> {
        (self.start)(args)
    }
}

pub(crate) fn cmd(
    decl: CommandDecl,
    start: fn(&BoundArgs) -> Box<dyn Invocation>,
) -> Arc<dyn Command> {
    Arc::new(Builtin { decl, start })
}

/// An InputObject parameter taking pipeline input by value.
pub(crate) fn input_object(help: &str) -> ParamDecl {
    ParamDecl::new("InputObject", ParamType::Object)
        .by_value()
        .help(help)
}

/// Send text to the output one line per string (what Out-String -Stream and Out-Default do).
pub(crate) fn output_lines(ctx: &mut Ctx<'_>, text: &str) {
    for line in text.split_terminator('\n') {
        if ctx.cancelled() {
            return;
        }
        ctx.output(Value::String(line.to_string()));
    }
}

/// The restricted proxies and Select-Object / Measure-Object.
pub fn commands() -> Vec<Arc<dyn Command>> {
    vec![
        cmd(
            CommandDecl::cmdlet(
                "Get-Command",
                CORE,
                "Gets the commands this session can run.",
            )
            .param(
                ParamDecl::new("Name", ParamType::StringArray)
                    .position(0)
                    .help("Names or wildcard patterns of commands to get."),
            )
            .param(
                ParamDecl::new("Module", ParamType::StringArray)
                    .help("Only commands from these modules (wildcards)."),
            )
            .param(
                ParamDecl::new("ArgumentList", ParamType::ObjectArray)
                    .help("Accepted for compatibility; ignored."),
            )
            .param(
                ParamDecl::new("CommandType", ParamType::StringArray)
                    .alias("Type")
                    .help("Only commands of these types."),
            )
            .param(
                ParamDecl::new("ListImported", ParamType::Switch)
                    .help("Accepted for compatibility: every command is imported."),
            )
            .param(
                ParamDecl::new("ShowCommandInfo", ParamType::Switch)
                    .help("Accepted for compatibility."),
            )
            .outputs("System.Management.Automation.CommandInfo"),
            |_| Box::new(GetCommand { done: false }),
        ),
        cmd(
            CommandDecl::cmdlet(
                "Get-Help",
                CORE,
                "Displays information about the commands this session can run.",
            )
            .param({
                let mut p = ParamDecl::new("Name", ParamType::String)
                    .position(0)
                    .help("Name of a command (wildcards list matching commands).");
                // PowerShell's proxy says {1,100}; counted repetition of Unicode classes is too big
                // for the regex size limit, so the length is checked by Get-Help itself.
                p.patterns = vec![r"[-._:\\\p{Ll}\p{Lu}\p{Lt}\p{Lo}\p{Nd}\p{Lm}*?]+".to_string()];
                p
            })
            .param(
                ParamDecl::new("Category", ParamType::StringArray)
                    .set(&[
                        "Alias",
                        "Cmdlet",
                        "Provider",
                        "General",
                        "FAQ",
                        "Glossary",
                        "HelpFile",
                        "ScriptCommand",
                        "Function",
                        "Filter",
                        "ExternalScript",
                        "All",
                        "DefaultHelp",
                        "DscResource",
                        "Class",
                        "Configuration",
                    ])
                    .help("Only help of these categories."),
            )
            .outputs("System.String"),
            |_| Box::new(GetHelp { done: false }),
        ),
        cmd(
            CommandDecl::cmdlet(
                "Get-FormatData",
                UTILITY,
                "Gets formatting data (none in this session).",
            )
            .param(
                ParamDecl::new("TypeName", ParamType::StringArray)
                    .position(0)
                    .help("Type names."),
            )
            .param(
                ParamDecl::new("PowerShellVersion", ParamType::String)
                    .help("Accepted for compatibility."),
            ),
            |_| Box::new(Nothing),
        ),
        cmd(
            CommandDecl::cmdlet(
                "Out-Default",
                CORE,
                "Formats objects as text, as the console shows them.",
            )
            .param(input_object("Objects to format."))
            .outputs("System.String"),
            |_| {
                Box::new(OutDefault {
                    fmt: Formatter::new(),
                })
            },
        ),
        cmd(
            CommandDecl::cmdlet("Exit-PSSession", CORE, "Ends the session."),
            |_| Box::new(Nothing),
        ),
        cmd(
            CommandDecl::cmdlet(
                "Clear-Host",
                CORE,
                "Clears the display (does nothing remotely).",
            ),
            |_| Box::new(Nothing),
        ),
        cmd(
            CommandDecl::cmdlet(
                "Select-Object",
                UTILITY,
                "Selects properties of objects, or the first, last or unique objects.",
            )
            .param(
                ParamDecl::new("Property", ParamType::StringArray)
                    .position(0)
                    .help("Property names or wildcards (no calculated properties)."),
            )
            .param(
                ParamDecl::new("ExcludeProperty", ParamType::StringArray)
                    .help("Properties to leave out (wildcards)."),
            )
            .param(
                ParamDecl::new("ExpandProperty", ParamType::String)
                    .help("Output the value of this property instead of the object."),
            )
            .param(ParamDecl::new("First", ParamType::Int).help("Only the first N objects."))
            .param(ParamDecl::new("Last", ParamType::Int).help("Only the last N objects."))
            .param(ParamDecl::new("Skip", ParamType::Int).help("Skip the first N objects."))
            .param(ParamDecl::new("Unique", ParamType::Switch).help("Drop duplicate objects."))
            .param(input_object("Objects to select from.")),
            |_| Box::new(SelectObject::default()),
        ),
        cmd(
            CommandDecl::cmdlet(
                "Measure-Object",
                UTILITY,
                "Counts objects and computes sums, averages, minimums and maximums.",
            )
            .param(
                ParamDecl::new("Property", ParamType::StringArray)
                    .position(0)
                    .help("Properties to measure."),
            )
            .param(ParamDecl::new("Sum", ParamType::Switch).help("Sum of the values."))
            .param(ParamDecl::new("Average", ParamType::Switch).help("Average of the values."))
            .param(ParamDecl::new("Minimum", ParamType::Switch).help("Smallest value."))
            .param(ParamDecl::new("Maximum", ParamType::Switch).help("Largest value."))
            .param(ParamDecl::new("Line", ParamType::Switch).help("Count lines of text."))
            .param(ParamDecl::new("Word", ParamType::Switch).help("Count words of text."))
            .param(ParamDecl::new("Character", ParamType::Switch).help("Count characters of text."))
            .param(
                ParamDecl::new("IgnoreWhiteSpace", ParamType::Switch)
                    .help("Do not count white space as characters."),
            )
            .param(input_object("Objects to measure."))
            .outputs("Microsoft.PowerShell.Commands.GenericMeasureInfo"),
            |_| Box::new(MeasureObject::default()),
        ),
    ]
}

/// Does nothing (Exit-PSSession, Clear-Host, Get-FormatData).
struct Nothing;
impl Invocation for Nothing {
    fn process(
        &mut self,
        _: &mut Ctx<'_>,
        _: &BoundArgs,
        _: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        Ok(())
    }
}

// ---------------------------------------------------------------- Get-Command

fn kind_value(kind: CommandKind) -> i64 {
    match kind {
        CommandKind::Alias => 1,
        CommandKind::Function => 2,
        CommandKind::Cmdlet => 8,
        CommandKind::Application => 32,
    }
}

fn kind_enum(kind: CommandKind) -> Value {
    Value::Enum(EnumValue {
        type_names: vec![
            "System.Management.Automation.CommandTypes".into(),
            "System.Enum".into(),
            "System.ValueType".into(),
            "System.Object".into(),
        ],
        name: kind.as_str().to_string(),
        value: kind_value(kind),
    })
}

/// Short .NET type name as help shows it (`String[]`, `Int32`).
pub fn short_type(ty: ParamType) -> &'static str {
    let n = ty.dotnet_name();
    n.rsplit('.').next().unwrap_or(n)
}

/// PowerShell's syntax line: `Get-Service [[-Name] <String[]>] [-DisplayName <String[]>] [<CommonParameters>]`.
pub fn syntax(decl: &CommandDecl) -> String {
    let mut params: Vec<&ParamDecl> = decl.params.iter().collect();
    params.sort_by_key(|p| (p.position.is_none(), p.position, !p.mandatory));
    let mut s = decl.name.clone();
    for p in params {
        let ty = if p.set.is_empty() {
            format!("<{}>", short_type(p.ty))
        } else {
            format!("{{{}}}", p.set.join(" | "))
        };
        let part = if p.ty == ParamType::Switch {
            format!("-{}", p.name)
        } else if p.position.is_some() {
            let n = format!("[-{}] {ty}", p.name);
            n
        } else {
            format!("-{} {ty}", p.name)
        };
        if p.mandatory {
            s.push_str(&format!(" {part}"));
        } else {
            s.push_str(&format!(" [{part}]"));
        }
    }
    if decl.kind != CommandKind::Application {
        s.push_str(" [<CommonParameters>]");
    }
    s
}

fn parameter_metadata(p: &ParamDecl) -> Value {
    let set = PsObject::new("System.Management.Automation.ParameterSetMetadata")
        .with(
            "Position",
            p.position.map(|x| x as i64).unwrap_or(i64::from(i32::MIN)),
        )
        .with("IsMandatory", p.mandatory)
        .with("ValueFromPipeline", p.pipeline.by_value)
        .with(
            "ValueFromPipelineByPropertyName",
            p.pipeline.by_property_name,
        )
        .with("ValueFromRemainingArguments", false)
        .with("HelpMessage", Value::Null);
    let mut o = PsObject::new("System.Management.Automation.ParameterMetadata")
        .with("Name", p.name.as_str())
        .with("ParameterType", p.ty.dotnet_name())
        .with(
            "ParameterSets",
            Value::Dict(vec![("__AllParameterSets".to_string(), set.into_value())]),
        )
        .with("IsDynamic", false)
        .with(
            "Aliases",
            Value::Array(p.aliases.iter().map(|a| Value::String(a.clone())).collect()),
        )
        .with("Attributes", Value::Array(Vec::new()))
        .with("SwitchParameter", p.ty == ParamType::Switch);
    o.to_string = Some(p.name.clone());
    o.into_value()
}

/// The CommandInfo object Get-Command outputs for a visible command.
pub fn command_info(v: &VisibleCommand) -> Value {
    let d = &v.decl;
    let ty = match d.kind {
        CommandKind::Cmdlet => "System.Management.Automation.CmdletInfo",
        CommandKind::Function => "System.Management.Automation.FunctionInfo",
        CommandKind::Application => "System.Management.Automation.ApplicationInfo",
        CommandKind::Alias => "System.Management.Automation.AliasInfo",
    };
    let source = match d.kind {
        CommandKind::Application => d.path.clone().unwrap_or_default(),
        _ => d.module.clone(),
    };
    let definition = match (&d.kind, &v.resolved) {
        (CommandKind::Alias, Some(r)) => r.clone(),
        (CommandKind::Application, _) => d.path.clone().unwrap_or_default(),
        _ => syntax(d),
    };
    let output_type: Vec<Value> = d
        .output_type
        .iter()
        .map(|t| {
            let mut o = PsObject::new("System.Management.Automation.PSTypeName")
                .with("Name", t.as_str())
                .with("Type", t.as_str());
            o.to_string = Some(t.clone());
            o.into_value()
        })
        .collect();
    let params: Vec<(String, Value)> = d
        .params
        .iter()
        .map(|p| (p.name.clone(), parameter_metadata(p)))
        .collect();
    let mut o = PsObject {
        type_names: vec![
            ty.to_string(),
            "System.Management.Automation.CommandInfo".to_string(),
            "System.Object".to_string(),
        ],
        ..Default::default()
    };
    o.push("HelpUri", "");
    o.push("Name", d.name.as_str());
    o.push("CommandType", kind_enum(d.kind));
    o.push("Definition", definition);
    o.push("Version", Value::Null);
    o.push("Source", source);
    o.push("ModuleName", d.module.as_str());
    o.push("Namespace", d.module.as_str());
    o.push(
        "ResolvedCommandName",
        v.resolved.clone().map(Value::String).unwrap_or(Value::Null),
    );
    o.push("OutputType", Value::Array(output_type));
    o.push("Parameters", Value::Dict(params));
    o.push("DefaultParameterSet", Value::Null);
    o.push("CmdletBinding", d.kind != CommandKind::Application);
    o.push("Visibility", "Public");
    if let Some(p) = &d.path {
        o.push("Path", p.as_str());
    }
    o.display = vec![
        "CommandType".into(),
        "Name".into(),
        "Version".into(),
        "Source".into(),
    ];
    o.to_string = Some(d.name.clone());
    o.into_value()
}

/// CommandTypes as names, from names, comma-joined flag names ("Alias, Function") or the
/// numeric flags value (PowerShell clients send either).
fn command_types(values: &[String]) -> Result<Vec<String>, String> {
    const NAMES: &[(&str, i64)] = &[
        ("Alias", 1),
        ("Function", 2),
        ("Filter", 4),
        ("Cmdlet", 8),
        ("ExternalScript", 16),
        ("Application", 32),
        ("Script", 64),
        ("Configuration", 256),
        ("All", 383),
    ];
    let mut out = Vec::new();
    for v in values {
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Ok(n) = part.parse::<i64>() {
                out.extend(
                    NAMES
                        .iter()
                        .filter(|(name, f)| *name != "All" && n & f != 0)
                        .map(|(name, _)| name.to_string()),
                );
            } else if let Some((name, _)) = NAMES
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(part))
            {
                out.push(name.to_string());
            } else {
                return Err(part.to_string());
            }
        }
    }
    Ok(out)
}

fn name_matches(pattern: &str, d: &CommandDecl) -> bool {
    if wildcard::matches(pattern, &d.name, Mode::Name) {
        return true;
    }
    d.path.as_deref().is_some_and(|p| p == pattern)
}

struct GetCommand {
    done: bool,
}

impl Invocation for GetCommand {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        _input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let names = args.strings("Name");
        let modules = args.strings("Module");
        let types = match command_types(&args.strings("CommandType")) {
            Ok(t) => t,
            Err(bad) => {
                return Err(ErrorRecord::new(
                    format!("Cannot bind parameter 'CommandType'. The value \"{bad}\" is not a command type: use Alias, Function, Filter, Cmdlet, ExternalScript, Application, Script, Configuration or All."),
                    "ParameterArgumentTransformationError,Microsoft.PowerShell.Commands.GetCommandCommand",
                    ErrorCategory::InvalidArgument,
                ));
            }
        };
        let all_types = types.iter().any(|t| t.eq_ignore_ascii_case("All"));
        let type_ok = |d: &CommandDecl| {
            if types.is_empty() {
                return !names.is_empty() || d.kind != CommandKind::Application;
            }
            all_types
                || types
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(d.kind.as_str()))
        };
        let module_ok = |d: &CommandDecl| {
            modules.is_empty()
                || modules
                    .iter()
                    .any(|m| wildcard::matches(m, &d.module, Mode::Name))
        };
        let mut found: Vec<&VisibleCommand> = Vec::new();
        if names.is_empty() {
            found.extend(
                ctx.visible
                    .iter()
                    .filter(|v| type_ok(&v.decl) && module_ok(&v.decl)),
            );
        } else {
            for n in &names {
                let matched: Vec<&VisibleCommand> = ctx
                    .visible
                    .iter()
                    .filter(|v| name_matches(n, &v.decl) && type_ok(&v.decl) && module_ok(&v.decl))
                    .collect();
                if matched.is_empty() && !has_wildcards(n, Mode::Name) {
                    ctx.write_error(
                        ErrorRecord::new(
                            format!("The term '{n}' is not recognized as a name of a cmdlet, function, script file, or executable program. Check the spelling of the name, or if a path was included, verify that the path is correct and try again."),
                            "CommandNotFoundException,Microsoft.PowerShell.Commands.GetCommandCommand",
                            ErrorCategory::ObjectNotFound,
                        )
                        .target(n.as_str())
                        .exception("System.Management.Automation.CommandNotFoundException"),
                    );
                }
                for m in matched {
                    if !found.iter().any(|f| std::ptr::eq(*f, m)) {
                        found.push(m);
                    }
                }
            }
        }
        found.sort_by(|a, b| {
            (kind_value(a.decl.kind), a.decl.name.to_lowercase())
                .cmp(&(kind_value(b.decl.kind), b.decl.name.to_lowercase()))
        });
        let infos: Vec<Value> = found.iter().map(|v| command_info(v)).collect();
        for i in infos {
            ctx.output(i);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- Get-Help

fn pipeline_text(p: &ParamDecl) -> String {
    match (p.pipeline.by_value, p.pipeline.by_property_name) {
        (true, true) => "true (ByValue, ByPropertyName)".into(),
        (true, false) => "true (ByValue)".into(),
        (false, true) => "true (ByPropertyName)".into(),
        (false, false) => "false".into(),
    }
}

/// The full help text of one command, from its (session-filtered) declaration.
pub fn help_text(v: &VisibleCommand) -> String {
    let d = &v.decl;
    let mut s = String::new();
    s.push_str(&format!("\nNAME\n    {}\n", d.name));
    if let Some(r) = &v.resolved {
        s.push_str(&format!("\nALIAS FOR\n    {r}\n"));
    }
    s.push_str(&format!(
        "\nSYNOPSIS\n    {}\n",
        if d.synopsis.is_empty() {
            "(no synopsis)"
        } else {
            &d.synopsis
        }
    ));
    s.push_str(&format!("\n\nSYNTAX\n    {}\n", syntax(d)));
    s.push_str("\n\nPARAMETERS\n");
    for p in &d.params {
        let ty = if p.ty == ParamType::Switch {
            String::new()
        } else {
            format!(" <{}>", short_type(p.ty))
        };
        s.push_str(&format!("    -{}{ty}\n", p.name));
        if !p.help.is_empty() {
            s.push_str(&format!("        {}\n", p.help));
        }
        if !p.set.is_empty() {
            s.push_str(&format!("        Allowed values: {}\n", p.set.join(", ")));
        }
        s.push('\n');
        s.push_str(&format!(
            "        Required?                    {}\n",
            if p.mandatory { "true" } else { "false" }
        ));
        s.push_str(&format!(
            "        Position?                    {}\n",
            p.position
                .map(|x| x.to_string())
                .unwrap_or_else(|| "named".into())
        ));
        s.push_str(&format!(
            "        Accept pipeline input?       {}\n",
            pipeline_text(p)
        ));
        s.push_str(&format!(
            "        Aliases                      {}\n",
            if p.aliases.is_empty() {
                "None".to_string()
            } else {
                p.aliases.join(", ")
            }
        ));
        s.push('\n');
    }
    if d.kind != CommandKind::Application {
        s.push_str("    <CommonParameters>\n        This command supports the common parameters: Verbose, Debug,\n        ErrorAction, WarningAction, InformationAction");
        if d.changes_state {
            s.push_str(", WhatIf, Confirm");
        }
        s.push_str(".\n        ErrorVariable, WarningVariable, InformationVariable, OutVariable and\n        PipelineVariable are not available in this session.\n\n");
    }
    s
}

fn help_category(kind: CommandKind) -> &'static str {
    match kind {
        CommandKind::Cmdlet => "Cmdlet",
        CommandKind::Function => "Function",
        CommandKind::Alias => "Alias",
        CommandKind::Application => "ExternalScript",
    }
}

struct GetHelp {
    done: bool,
}

impl Invocation for GetHelp {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        _input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let cats = args.strings("Category");
        let cat_ok = |d: &CommandDecl| {
            cats.is_empty()
                || cats.iter().any(|c| {
                    c.eq_ignore_ascii_case("All") || c.eq_ignore_ascii_case(help_category(d.kind))
                })
        };
        if args
            .string("Name")
            .is_some_and(|n| n.chars().count() > MAX_HELP_NAME)
        {
            return Err(ErrorRecord::new(
                format!("Cannot validate argument on parameter 'Name'. The argument is longer than {MAX_HELP_NAME} characters."),
                "ParameterArgumentValidationError,Get-Help",
                ErrorCategory::InvalidArgument,
            ));
        }
        let Some(name) = args.string("Name") else {
            let mut s = String::from("\nTOPIC\n    keyhole restricted session\n\nSHORT DESCRIPTION\n    This session runs only the commands listed below, with literal arguments.\n    Type Get-Help <command> for the help of one command.\n\nCOMMANDS\n");
            for v in ctx.visible.iter().filter(|v| cat_ok(&v.decl)) {
                s.push_str(&format!("    {}\n", v.decl.name));
            }
            ctx.output(Value::String(s));
            return Ok(());
        };
        let matched: Vec<&VisibleCommand> = ctx
            .visible
            .iter()
            .filter(|v| name_matches(&name, &v.decl) && cat_ok(&v.decl))
            .collect();
        match matched.as_slice() {
            [] => {
                ctx.write_error(
                    ErrorRecord::new(
                        format!("Get-Help could not find {name} in a help file in this session."),
                        "HelpNotFound,Microsoft.PowerShell.Commands.GetHelpCommand",
                        ErrorCategory::ResourceUnavailable,
                    )
                    .target(name.as_str())
                    .exception("Microsoft.PowerShell.Commands.HelpNotFoundException"),
                );
            }
            [one] => {
                let text = help_text(one);
                ctx.output(Value::String(text));
            }
            many => {
                let rows: Vec<Value> = many
                    .iter()
                    .map(|v| {
                        PsObject::new("HelpInfoShort")
                            .with("Name", v.decl.name.as_str())
                            .with("Category", help_category(v.decl.kind))
                            .with("Synopsis", v.decl.synopsis.as_str())
                            .into_value()
                    })
                    .collect();
                for r in rows {
                    ctx.output(r);
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- Out-Default

struct OutDefault {
    fmt: Formatter,
}

impl Invocation for OutDefault {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        let v = match input {
            Some(v) => v,
            None => match args.get("InputObject") {
                Some(v) => v.clone(),
                None => return Ok(()),
            },
        };
        let text = self.fmt.push(&v);
        output_lines(ctx, &text);
        Ok(())
    }
    fn end(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ErrorRecord> {
        let text = self.fmt.finish();
        output_lines(ctx, &text);
        Ok(())
    }
}

// ---------------------------------------------------------------- Select-Object

#[derive(Default)]
struct SelectObject {
    skipped: i64,
    emitted: i64,
    /// Debug renderings of the objects already written (-Unique).
    seen: std::collections::HashSet<String>,
    last: VecDeque<Value>,
    last_args: Option<BoundArgs>,
}

/// Select-Object -Property on one object: a new PSCustomObject with those properties.
pub fn select_properties(v: &Value, props: &[String], exclude: &[String]) -> Value {
    // Objects' and dictionaries' own properties, or the .NET ones keyhole models (DateTime's
    // Year, String's Length, ...).
    let (available, type_name) = (v.member_names(), v.type_name());
    let patterns: Vec<String> = if props.is_empty() {
        vec!["*".to_string()]
    } else {
        props.to_vec()
    };
    let names = resolve_props(&patterns, &available);
    let mut o = PsObject {
        type_names: vec![
            format!("Selected.{type_name}"),
            "System.Management.Automation.PSCustomObject".to_string(),
            "System.Object".to_string(),
        ],
        ..Default::default()
    };
    for n in names {
        if exclude.iter().any(|e| wildcard::matches(e, &n, Mode::LIKE)) {
            continue;
        }
        let val = v.member(&n).unwrap_or(Value::Null);
        o.push(&n, val);
    }
    let parts: Vec<String> = o
        .properties
        .iter()
        .map(|(k, v)| format!("{k}={}", v.to_ps_string()))
        .collect();
    o.to_string = Some(format!("@{{{}}}", parts.join("; ")));
    o.into_value()
}

impl SelectObject {
    fn transform(&self, ctx: &mut Ctx<'_>, args: &BoundArgs, v: Value) -> Vec<Value> {
        if let Some(name) = args.string("ExpandProperty") {
            return match v.member(&name) {
                Some(Value::Array(items)) => items,
                Some(x) => vec![x],
                None => {
                    ctx.write_error(
                        ErrorRecord::new(
                            format!("Property \"{name}\" cannot be found."),
                            "ExpandPropertyNotFound,Microsoft.PowerShell.Commands.SelectObjectCommand",
                            ErrorCategory::InvalidArgument,
                        )
                        .target(v.clone()),
                    );
                    Vec::new()
                }
            };
        }
        let props = args.strings("Property");
        let exclude = args.strings("ExcludeProperty");
        if props.is_empty() && exclude.is_empty() {
            return vec![v];
        }
        vec![select_properties(&v, &props, &exclude)]
    }
}

impl Invocation for SelectObject {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        let v = match input {
            Some(v) => v,
            None => match args.get("InputObject") {
                Some(v) => v.clone(),
                None => return Ok(()),
            },
        };
        let skip = args.int("Skip").unwrap_or(0);
        if args.int("Last").is_none() && self.skipped < skip {
            self.skipped += 1;
            return Ok(());
        }
        for out in self.transform(ctx, args, v) {
            if ctx.cancelled() {
                return Ok(());
            }
            if args.switch("Unique") {
                let key = format!("{out:?}");
                if self.seen.contains(&key) {
                    continue;
                }
                if self.seen.len() < MAX_BUFFERED_OBJECTS {
                    self.seen.insert(key);
                }
            }
            if let Some(n) = args.int("Last") {
                let keep = usize::try_from(n.saturating_add(skip).max(0))
                    .unwrap_or(0)
                    .min(MAX_BUFFERED_OBJECTS);
                self.last.push_back(out);
                while self.last.len() > keep {
                    self.last.pop_front();
                }
                continue;
            }
            if let Some(n) = args.int("First") {
                if self.emitted >= n {
                    continue;
                }
            }
            self.emitted += 1;
            ctx.output(out);
        }
        self.last_args = Some(args.clone());
        Ok(())
    }
    fn end(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ErrorRecord> {
        let skip = self
            .last_args
            .as_ref()
            .and_then(|a| a.int("Skip"))
            .unwrap_or(0);
        let keep = self
            .last
            .len()
            .saturating_sub(usize::try_from(skip.max(0)).unwrap_or(0));
        for v in self.last.drain(..).take(keep) {
            if ctx.cancelled() {
                break;
            }
            ctx.output(v);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- Measure-Object

#[derive(Default)]
struct Stat {
    count: i64,
    sum: f64,
    numeric: bool,
    min: Option<Value>,
    max: Option<Value>,
}

#[derive(Default)]
struct MeasureObject {
    args: Option<BoundArgs>,
    count: i64,
    stats: Vec<(String, Stat)>,
    lines: i64,
    words: i64,
    chars: i64,
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Double(d) => Some(*d),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        Value::Enum(e) => Some(e.value as f64),
        _ => None,
    }
}

fn order(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a
            .to_ps_string()
            .to_lowercase()
            .cmp(&b.to_ps_string().to_lowercase()),
    }
}

impl MeasureObject {
    fn add(stat: &mut Stat, v: &Value, want_numbers: bool, ctx: &mut Ctx<'_>) {
        let n = number(v);
        if want_numbers && n.is_none() {
            ctx.write_error(
                ErrorRecord::new(
                    format!("Input object \"{}\" is not numeric.", v.to_ps_string()),
                    "NonNumericInputObject,Microsoft.PowerShell.Commands.MeasureObjectCommand",
                    ErrorCategory::InvalidData,
                )
                .target(v.clone()),
            );
            return;
        }
        stat.count += 1;
        if let Some(x) = n {
            stat.sum += x;
        } else {
            stat.numeric = false;
        }
        if stat.count == 1 {
            stat.numeric = n.is_some();
        }
        let better_min = stat
            .min
            .as_ref()
            .map(|m| order(v, m).is_lt())
            .unwrap_or(true);
        if better_min {
            stat.min = Some(v.clone());
        }
        let better_max = stat
            .max
            .as_ref()
            .map(|m| order(v, m).is_gt())
            .unwrap_or(true);
        if better_max {
            stat.max = Some(v.clone());
        }
    }
}

impl Invocation for MeasureObject {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        if self.args.is_none() {
            self.args = Some(args.clone());
        }
        let v = match input {
            Some(v) => v,
            None => match args.get("InputObject") {
                Some(v) => v.clone(),
                None => return Ok(()),
            },
        };
        let text_mode = args.switch("Line") || args.switch("Word") || args.switch("Character");
        let want_numbers = args.switch("Sum") || args.switch("Average");
        let props = args.strings("Property");
        if text_mode {
            let texts: Vec<String> = if props.is_empty() {
                vec![v.to_ps_string()]
            } else {
                props
                    .iter()
                    .filter_map(|p| v.member(p))
                    .map(|m| m.to_ps_string())
                    .collect()
            };
            for t in texts {
                if ctx.cancelled() {
                    return Ok(());
                }
                self.lines += t.lines().count() as i64;
                self.words += t.split_whitespace().count() as i64;
                self.chars += if args.switch("IgnoreWhiteSpace") {
                    t.chars().filter(|c| !c.is_whitespace()).count() as i64
                } else {
                    t.chars().count() as i64
                };
            }
            return Ok(());
        }
        if props.is_empty() {
            self.count += 1;
            if want_numbers || args.switch("Minimum") || args.switch("Maximum") {
                if self.stats.is_empty() {
                    self.stats.push((String::new(), Stat::default()));
                }
                if let Some((_, st)) = self.stats.first_mut() {
                    Self::add(st, &v, want_numbers, ctx);
                }
            }
            return Ok(());
        }
        let available = v.member_names();
        for p in resolve_props(&props, &available) {
            if ctx.cancelled() {
                return Ok(());
            }
            let Some(pv) = v.member(&p) else {
                continue;
            };
            if !self.stats.iter().any(|(n, _)| n.eq_ignore_ascii_case(&p)) {
                self.stats.push((p.clone(), Stat::default()));
            }
            if let Some((_, st)) = self
                .stats
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case(&p))
            {
                Self::add(st, &pv, want_numbers, ctx);
            }
        }
        Ok(())
    }
    fn end(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ErrorRecord> {
        let args = self.args.take().unwrap_or_default();
        if args.switch("Line") || args.switch("Word") || args.switch("Character") {
            let opt = |on: bool, n: i64| if on { Value::Int(n) } else { Value::Null };
            let o = PsObject::new("Microsoft.PowerShell.Commands.TextMeasureInfo")
                .with("Lines", opt(args.switch("Line"), self.lines))
                .with("Words", opt(args.switch("Word"), self.words))
                .with("Characters", opt(args.switch("Character"), self.chars))
                .with("Property", Value::Null);
            ctx.output(o.into_value());
            return Ok(());
        }
        let make = |count: i64, st: Option<&Stat>, prop: Value| {
            let numeric_or = |v: &Option<Value>| match v {
                Some(x) => number(x).map(Value::Double).unwrap_or_else(|| x.clone()),
                None => Value::Null,
            };
            let on = |name: &str, v: Value| if args.switch(name) { v } else { Value::Null };
            let (avg, sum, max, min) = match st {
                Some(s) => (
                    on(
                        "Average",
                        if s.count > 0 {
                            Value::Double(s.sum / s.count as f64)
                        } else {
                            Value::Null
                        },
                    ),
                    on("Sum", Value::Double(s.sum)),
                    on("Maximum", numeric_or(&s.max)),
                    on("Minimum", numeric_or(&s.min)),
                ),
                None => (Value::Null, Value::Null, Value::Null, Value::Null),
            };
            PsObject::new("Microsoft.PowerShell.Commands.GenericMeasureInfo")
                .with("Count", count)
                .with("Average", avg)
                .with("Sum", sum)
                .with("Maximum", max)
                .with("Minimum", min)
                .with("StandardDeviation", Value::Null)
                .with("Property", prop)
                .into_value()
        };
        let props = args.strings("Property");
        for p in &props {
            let wildcard = p.contains('*') || p.contains('?');
            if !wildcard && !self.stats.iter().any(|(n, _)| n.eq_ignore_ascii_case(p)) {
                ctx.write_error(ErrorRecord::new(
                    format!("The property \"{p}\" cannot be found in the input for any objects."),
                    "GenericMeasurePropertyNotFound,Microsoft.PowerShell.Commands.MeasureObjectCommand",
                    ErrorCategory::InvalidArgument,
                ));
            }
        }
        if props.is_empty() {
            let v = make(self.count, self.stats.first().map(|(_, s)| s), Value::Null);
            ctx.output(v);
        } else {
            for (name, st) in &self.stats {
                let v = make(st.count, Some(st), Value::String(name.clone()));
                ctx.output(v);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn check_syntax(decl: CommandDecl, expected: &str) {
        assert_eq!(syntax(&decl), expected);
    }

    #[test]
    fn syntax_lines() {
        check_syntax(
            CommandDecl::cmdlet("Get-Service", "m", "")
                .param(ParamDecl::new("Name", ParamType::StringArray).position(0))
                .param(ParamDecl::new("DisplayName", ParamType::StringArray)),
            "Get-Service [[-Name] <String[]>] [-DisplayName <String[]>] [<CommonParameters>]",
        );
        check_syntax(
            CommandDecl::cmdlet("Restart-Service", "m", "")
                .param(ParamDecl::new("Force", ParamType::Switch))
                .param(
                    ParamDecl::new("Name", ParamType::StringArray)
                        .position(0)
                        .mandatory()
                        .set(&["nginx", "cups"]),
                )
                .param(ParamDecl::new("Count", ParamType::Int).mandatory()),
            "Restart-Service [-Name] {nginx | cups} -Count <Int32> [-Force] [<CommonParameters>]",
        );
    }

    #[test]
    fn command_types_accept_names_lists_and_flags() {
        assert_eq!(
            command_types(&["Alias, Cmdlet".into()]).unwrap(),
            vec!["Alias", "Cmdlet"]
        );
        assert_eq!(
            command_types(&["40".into()]).unwrap(),
            vec!["Cmdlet", "Application"]
        );
        assert_eq!(command_types(&["bogus".into()]), Err("bogus".to_string()));
    }

    #[test]
    fn select_properties_keeps_order_and_adds_missing() {
        let o = PsObject::new("T")
            .with("a", 1)
            .with("b", 2)
            .with("c", 3)
            .into_value();
        let v = select_properties(&o, &["c".into(), "zz".into(), "a".into()], &[]);
        let Value::Object(p) = &v else { panic!() };
        let names: Vec<&str> = p.properties.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["c", "zz", "a"]);
        assert_eq!(p.type_names[0], "Selected.T");
        assert_eq!(v.to_ps_string(), "@{c=3; zz=; a=1}");
        let w = select_properties(&o, &["*".into()], &["b".into()]);
        assert_eq!(w.to_ps_string(), "@{a=1; c=3}");
    }
}
