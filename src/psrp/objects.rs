//! PSRP message bodies: what keyhole sends (capability, private data, states, records, command
//! metadata) and what it reads from clients (capability, pool init, pipelines, metadata queries).
#![forbid(unsafe_code)]

use crate::engine::{
    CommandArg, CommandKind, ErrorRecord, ParamType, StructuredCommand, Value, VisibleCommand,
};
use crate::lang::wildcard::{self, Mode};

use super::clixml::write::Writer;
use super::{Malformed, ProtocolError};

/// Protocol version keyhole speaks (MS-PSRP 2.3, as Windows PowerShell 5.1 and pwsh 7).
pub const PROTOCOL_VERSION: &str = "2.3";
pub const PS_VERSION: &str = "2.0";
pub const SERIALIZATION_VERSION: &str = "1.1.0.1";
/// Pipelines one CREATE_PIPELINE may hold (statements × commands).
pub const MAX_COMMANDS: usize = 256;
/// Arguments one command may carry.
pub const MAX_ARGS: usize = 1024;

/// PSInvocationState values (PIPELINE_STATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationState {
    NotStarted = 0,
    Running = 1,
    Stopping = 2,
    Stopped = 3,
    Completed = 4,
    Failed = 5,
    Disconnected = 6,
}

/// RunspacePoolState values (RUNSPACEPOOL_STATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolStateCode {
    BeforeOpen = 0,
    Opening = 1,
    Opened = 2,
    Closed = 3,
    Closing = 4,
    Broken = 5,
}

pub fn session_capability() -> String {
    let mut w = Writer::new();
    w.begin_obj(None, &[]);
    w.raw("<MS>");
    w.prim("Version", Some("protocolversion"), PROTOCOL_VERSION);
    w.prim("Version", Some("PSVersion"), PS_VERSION);
    w.prim(
        "Version",
        Some("SerializationVersion"),
        SERIALIZATION_VERSION,
    );
    w.raw("</MS>");
    w.end_obj();
    w.finish()
}

const PRIMITIVE_DICT: &[&str] = &[
    "System.Management.Automation.PSPrimitiveDictionary",
    "System.Collections.Hashtable",
    "System.Object",
];

/// APPLICATION_PRIVATE_DATA with a PSVersionTable (PowerShell clients read
/// PSRemotingProtocolVersion from it).
pub fn application_private_data() -> String {
    let mut w = Writer::new();
    w.begin_obj(None, &[]);
    w.raw("<MS>");
    w.begin_obj(Some("ApplicationPrivateData"), PRIMITIVE_DICT);
    w.raw("<DCT><En>");
    w.string(Some("Key"), "PSVersionTable");
    w.begin_obj(Some("Value"), PRIMITIVE_DICT);
    w.raw("<DCT>");
    let entry = |w: &mut Writer, k: &str, tag: &str, v: &str| {
        w.raw("<En>");
        w.string(Some("Key"), k);
        w.prim(tag, Some("Value"), v);
        w.raw("</En>");
    };
    entry(&mut w, "PSVersion", "Version", "5.1.0.0");
    entry(&mut w, "PSEdition", "S", "Desktop");
    w.raw("<En>");
    w.string(Some("Key"), "PSCompatibleVersions");
    w.begin_obj(
        Some("Value"),
        &["System.Version[]", "System.Array", "System.Object"],
    );
    w.raw("<LST>");
    for v in ["1.0", "2.0", "3.0", "4.0", "5.0", "5.1.0.0"] {
        w.prim("Version", None, v);
    }
    w.raw("</LST>");
    w.end_obj();
    w.raw("</En>");
    entry(&mut w, "CLRVersion", "Version", "4.0.30319.42000");
    entry(&mut w, "BuildVersion", "Version", "10.0.0.0");
    entry(&mut w, "WSManStackVersion", "Version", "3.0");
    entry(
        &mut w,
        "PSRemotingProtocolVersion",
        "Version",
        PROTOCOL_VERSION,
    );
    entry(
        &mut w,
        "SerializationVersion",
        "Version",
        SERIALIZATION_VERSION,
    );
    w.raw("</DCT>");
    w.end_obj();
    w.raw("</En></DCT>");
    w.end_obj();
    w.raw("</MS>");
    w.end_obj();
    w.finish()
}

pub fn runspace_pool_state(state: PoolStateCode, error: Option<&ErrorRecord>) -> String {
    let mut w = Writer::new();
    w.begin_obj(None, &[]);
    w.raw("<MS>");
    w.i32(Some("RunspaceState"), state as i32);
    if let Some(e) = error {
        w.error_record(Some("ExceptionAsErrorRecord"), e);
    }
    w.raw("</MS>");
    w.end_obj();
    w.finish()
}

pub fn pipeline_state(state: InvocationState, error: Option<&ErrorRecord>) -> String {
    let mut w = Writer::new();
    w.begin_obj(None, &[]);
    w.raw("<MS>");
    w.i32(Some("PipelineState"), state as i32);
    if let Some(e) = error {
        w.error_record(Some("ExceptionAsErrorRecord"), e);
    }
    w.raw("</MS>");
    w.end_obj();
    w.finish()
}

/// PIPELINE_HOST_CALL `SetShouldExit(code)` (RemoteHostMethodId 6), as Windows sends it when a
/// script runs `exit N`: call id -100 (a void method: the client sends no response).
pub fn set_should_exit(code: i32) -> String {
    let mut w = Writer::new();
    w.begin_obj(None, &[]);
    w.raw("<MS>");
    w.i64(Some("ci"), -100);
    w.enum_value(
        Some("mi"),
        &[
            "System.Management.Automation.Remoting.RemoteHostMethodId",
            "System.Enum",
            "System.ValueType",
            "System.Object",
        ],
        "SetShouldExit",
        6,
    );
    w.begin_obj(
        Some("mp"),
        &["System.Collections.ArrayList", "System.Object"],
    );
    w.raw("<LST>");
    w.i32(None, code);
    w.raw("</LST>");
    w.end_obj();
    w.raw("</MS>");
    w.end_obj();
    w.finish()
}

/// RUNSPACE_AVAILABILITY answering SET_MAX/MIN_RUNSPACES (bool) or GET_AVAILABLE_RUNSPACES (count).
pub fn runspace_availability(response: &Value, ci: i64) -> String {
    let mut w = Writer::new();
    w.begin_obj(None, &[]);
    w.raw("<MS>");
    w.value(Some("SetMinMaxRunspacesResponse"), response);
    w.i64(Some("ci"), ci);
    w.raw("</MS>");
    w.end_obj();
    w.finish()
}

pub fn output(v: &Value) -> String {
    let mut w = Writer::new();
    w.value(None, v);
    w.finish()
}

pub fn error_record(e: &ErrorRecord) -> String {
    let mut w = Writer::new();
    w.error_record(None, e);
    w.finish()
}

/// An error record merged into the output stream (`2>&1`), as PIPELINE_OUTPUT.
pub fn merged_error_record(e: &ErrorRecord) -> String {
    let mut w = Writer::new();
    w.error_record_merged(None, e, true);
    w.finish()
}

/// Which informational record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoKind {
    Warning,
    Verbose,
    Debug,
}

pub fn informational(kind: InfoKind, msg: &str) -> String {
    let t = match kind {
        InfoKind::Warning => "System.Management.Automation.WarningRecord",
        InfoKind::Verbose => "System.Management.Automation.VerboseRecord",
        InfoKind::Debug => "System.Management.Automation.DebugRecord",
    };
    let mut w = Writer::new();
    w.begin_obj(
        None,
        &[
            t,
            "System.Management.Automation.InformationalRecord",
            "System.Object",
        ],
    );
    w.prim("ToString", None, msg);
    w.raw("<MS>");
    w.string(Some("InformationalRecord_Message"), msg);
    w.bool(Some("InformationalRecord_SerializeInvocationInfo"), false);
    w.raw("</MS>");
    w.end_obj();
    w.finish()
}

/// INFORMATION_RECORD as Windows sends it for Write-Information / Write-Host.
pub fn information(msg: &str, user: &str, computer: &str) -> String {
    let now = chrono::Local::now().fixed_offset();
    let mut w = Writer::new();
    w.begin_obj(None, &[]);
    w.raw("<MS>");
    w.string(Some("MessageData"), msg);
    w.string(Some("Source"), "Write-Information");
    w.value(Some("TimeGenerated"), &Value::DateTime(now));
    w.string_list(
        Some("Tags"),
        &["System.Collections.Generic.List`1[[System.String, mscorlib, Version=4.0.0.0, Culture=neutral, PublicKeyToken=b77a5c561934e089]]", "System.Object"],
        &[],
    );
    w.string(Some("User"), user);
    w.string(Some("Computer"), computer);
    w.prim("U32", Some("ProcessId"), &std::process::id().to_string());
    w.prim("U32", Some("NativeThreadId"), "0");
    w.prim("U32", Some("ManagedThreadId"), "0");
    w.raw("</MS>");
    w.end_obj();
    w.finish()
}

const SELECTED_PSCUSTOM_TAIL: [&str; 2] = [
    "System.Management.Automation.PSCustomObject",
    "System.Object",
];

/// The first GET_COMMAND_METADATA output: how many commands follow.
pub fn command_metadata_count(n: usize) -> String {
    let mut w = Writer::new();
    let tn = [
        "Selected.Microsoft.PowerShell.Commands.GenericMeasureInfo",
        SELECTED_PSCUSTOM_TAIL[0],
        SELECTED_PSCUSTOM_TAIL[1],
    ];
    w.begin_obj(None, &tn);
    w.raw("<MS>");
    w.i32(Some("Count"), i32::try_from(n).unwrap_or(i32::MAX));
    w.raw("</MS>");
    w.end_obj();
    w.finish()
}

/// CommandTypes flag of a command kind.
pub fn command_type_code(k: CommandKind) -> i64 {
    match k {
        CommandKind::Alias => 1,
        CommandKind::Function => 2,
        CommandKind::Cmdlet => 8,
        CommandKind::Application => 32,
    }
}

fn info_type(k: CommandKind) -> &'static str {
    match k {
        CommandKind::Alias => "Selected.System.Management.Automation.AliasInfo",
        CommandKind::Function => "Selected.System.Management.Automation.FunctionInfo",
        CommandKind::Cmdlet => "Selected.System.Management.Automation.CmdletInfo",
        CommandKind::Application => "Selected.System.Management.Automation.ApplicationInfo",
    }
}

const STRING_COLLECTION: &str =
    "System.Collections.ObjectModel.Collection`1[[System.String, mscorlib, Version=4.0.0.0, Culture=neutral, PublicKeyToken=b77a5c561934e089]]";

fn param_metadata(w: &mut Writer, name: &str, ty: &str, aliases: &[String], switch: bool) {
    w.raw("<En>");
    w.string(Some("Key"), name);
    w.begin_obj(
        Some("Value"),
        &[
            "System.Management.Automation.ParameterMetadata",
            "System.Object",
        ],
    );
    w.prim(
        "ToString",
        None,
        "System.Management.Automation.ParameterMetadata",
    );
    w.raw("<Props>");
    w.string(Some("Name"), name);
    w.string(Some("ParameterType"), ty);
    w.string_list(
        Some("Aliases"),
        &[STRING_COLLECTION, "System.Object"],
        aliases,
    );
    w.bool(Some("IsDynamic"), false);
    w.bool(Some("SwitchParameter"), switch);
    w.raw("</Props>");
    w.end_obj();
    w.raw("</En>");
}

/// One CommandMetadata object as Windows answers GET_COMMAND_METADATA (notes §3.5), with the
/// common parameters keyhole accepts.
pub fn command_metadata(c: &VisibleCommand) -> String {
    let d = &c.decl;
    let mut w = Writer::new();
    w.begin_obj(
        None,
        &[
            info_type(d.kind),
            SELECTED_PSCUSTOM_TAIL[0],
            SELECTED_PSCUSTOM_TAIL[1],
        ],
    );
    w.raw("<MS>");
    w.string(Some("Name"), &d.name);
    w.string(Some("Namespace"), &d.module);
    w.nil(Some("HelpUri"));
    w.enum_value(
        Some("CommandType"),
        &[
            "System.Management.Automation.CommandTypes",
            "System.Enum",
            "System.ValueType",
            "System.Object",
        ],
        d.kind.as_str(),
        command_type_code(d.kind),
    );
    match &c.resolved {
        Some(r) => w.string(Some("ResolvedCommandName"), r),
        None => w.nil(Some("ResolvedCommandName")),
    }
    w.string_list(
        Some("OutputType"),
        &["System.Collections.ObjectModel.ReadOnlyCollection`1[[System.Management.Automation.PSTypeName, System.Management.Automation, Version=3.0.0.0, Culture=neutral, PublicKeyToken=31bf3856ad364e35]]", "System.Object"],
        &d.output_type,
    );
    if d.kind == CommandKind::Application {
        w.nil(Some("Parameters"));
    } else {
        w.begin_obj(
            Some("Parameters"),
            &["System.Collections.Generic.Dictionary`2[[System.String, mscorlib, Version=4.0.0.0, Culture=neutral, PublicKeyToken=b77a5c561934e089],[System.Management.Automation.ParameterMetadata, System.Management.Automation, Version=3.0.0.0, Culture=neutral, PublicKeyToken=31bf3856ad364e35]]", "System.Object"],
        );
        w.raw("<DCT>");
        for p in &d.params {
            param_metadata(
                &mut w,
                &p.name,
                p.ty.dotnet_name(),
                &p.aliases,
                p.ty == ParamType::Switch,
            );
        }
        let sw = ParamType::Switch.dotnet_name();
        let pref = "System.Management.Automation.ActionPreference";
        let mut common: Vec<(&str, &str, &str)> = vec![
            ("Verbose", sw, "vb"),
            ("Debug", sw, "db"),
            ("ErrorAction", pref, "ea"),
            ("WarningAction", pref, "wa"),
            ("InformationAction", pref, "infa"),
        ];
        if d.changes_state {
            common.push(("WhatIf", sw, "wi"));
            common.push(("Confirm", sw, "cf"));
        }
        for (n, t, a) in common {
            if d.find_param(n).is_none() {
                param_metadata(&mut w, n, t, &[a.to_string()], t == sw);
            }
        }
        w.raw("</DCT>");
        w.end_obj();
    }
    w.raw("</MS>");
    w.end_obj();
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// What clients send.

fn missing(what: &str, msg: &str) -> ProtocolError {
    Malformed::MissingProperty {
        message: msg.to_string(),
        property: what.to_string(),
    }
    .into()
}

/// SESSION_CAPABILITY from the client.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionCapability {
    pub protocol_version: String,
    pub ps_version: String,
    pub serialization_version: String,
}

impl SessionCapability {
    pub fn from_value(v: &Value) -> Result<Self, ProtocolError> {
        let get = |n: &str| {
            v.property(n)
                .map(Value::to_ps_string)
                .ok_or_else(|| missing(n, "SESSION_CAPABILITY"))
        };
        Ok(SessionCapability {
            protocol_version: get("protocolversion")?,
            ps_version: get("PSVersion")?,
            serialization_version: get("SerializationVersion")?,
        })
    }
}

fn int_of(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Int(i)) => Some(*i),
        Some(Value::Enum(e)) => Some(e.value),
        _ => None,
    }
}

/// INIT_RUNSPACEPOOL (host info and application arguments are accepted and ignored).
#[derive(Debug, Clone, PartialEq)]
pub struct InitRunspacePool {
    pub min_runspaces: i64,
    pub max_runspaces: i64,
}

impl InitRunspacePool {
    pub fn from_value(v: &Value) -> Result<Self, ProtocolError> {
        Ok(InitRunspacePool {
            min_runspaces: int_of(v.property("MinRunspaces"))
                .ok_or_else(|| missing("MinRunspaces", "INIT_RUNSPACEPOOL"))?,
            max_runspaces: int_of(v.property("MaxRunspaces"))
                .ok_or_else(|| missing("MaxRunspaces", "INIT_RUNSPACEPOOL"))?,
        })
    }
}

/// The call id `ci` of SET_MAX/MIN_RUNSPACES, GET_AVAILABLE_RUNSPACES, RESET_RUNSPACE_STATE.
pub fn call_id(v: &Value) -> Option<i64> {
    int_of(v.property("ci"))
}

/// Streams a client asked to merge into the output stream (`2>&1`, pypsrp `merge_error`, the
/// Merge* properties of each command; PipelineResultTypes 1 = Output, 2 = Error ... 7 = All).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Merge {
    pub error: bool,
    pub warning: bool,
    pub verbose: bool,
    pub debug: bool,
    pub information: bool,
}

impl Merge {
    fn of(v: &Value) -> Merge {
        let get = |n: &str| int_of(v.property(n)).unwrap_or(0);
        let (my, to) = (get("MergeMyResult"), get("MergeToResult"));
        let to_output =
            |own: &str, code: i64| get(own) == 1 || (to == 1 && (my == code || my == 7));
        Merge {
            error: to_output("MergeError", 2),
            warning: to_output("MergeWarning", 3),
            verbose: to_output("MergeVerbose", 4),
            debug: to_output("MergeDebug", 5),
            information: to_output("MergeInformation", 6),
        }
    }

    pub fn union(self, o: Merge) -> Merge {
        Merge {
            error: self.error || o.error,
            warning: self.warning || o.warning,
            verbose: self.verbose || o.verbose,
            debug: self.debug || o.debug,
            information: self.information || o.information,
        }
    }
}

/// One command of a CREATE_PIPELINE.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineCommand {
    pub cmd: String,
    pub is_script: bool,
    pub args: Vec<CommandArg>,
    pub merge: Merge,
}

/// CREATE_PIPELINE, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatePipeline {
    pub no_input: bool,
    pub add_to_history: bool,
    pub is_nested: bool,
    /// The client has a host for this pipeline (`HostInfo._isHostNull` false): host calls
    /// (SetShouldExit) may be sent to it.
    pub has_host: bool,
    /// Statements in order (ExtraCmds when present, else Cmds as one statement).
    pub statements: Vec<Vec<PipelineCommand>>,
}

fn bool_of(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Bool(true)))
}

fn list_of<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a [Value], ProtocolError> {
    match v {
        Some(Value::Array(items)) => Ok(items),
        Some(Value::Null) | None => Ok(&[]),
        Some(other) => Err(Malformed::NotAList {
            what: what.to_string(),
            found: other.type_name(),
        }
        .into()),
    }
}

fn command_of(v: &Value) -> Result<PipelineCommand, ProtocolError> {
    let cmd = match v.property("Cmd") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(missing("Cmd", "a CREATE_PIPELINE command")),
    };
    let is_script = bool_of(v.property("IsScript"));
    let raw_args = list_of(v.property("Args"), "Args")?;
    if raw_args.len() > MAX_ARGS {
        return Err(Malformed::TooManyArguments(cmd.to_string()).into());
    }
    let mut args = Vec::with_capacity(raw_args.len());
    for a in raw_args {
        let name = match a.property("N") {
            Some(Value::String(s)) => {
                Some(s.trim_start_matches('-').trim_end_matches(':').to_string())
            }
            _ => None,
        };
        let value = match (a.property("V"), &name) {
            // A named parameter with a null value is a switch given alone (AddParameter("Name")).
            (Some(Value::Null) | None, Some(_)) => None,
            (Some(v), _) => Some(v.clone()),
            (None, None) => Some(Value::Null),
        };
        args.push(CommandArg { name, value });
    }
    Ok(PipelineCommand {
        cmd,
        is_script,
        args,
        merge: Merge::of(v),
    })
}

fn commands_of(v: Option<&Value>) -> Result<Vec<PipelineCommand>, ProtocolError> {
    list_of(v, "Cmds")?.iter().map(command_of).collect()
}

impl CreatePipeline {
    pub fn from_value(v: &Value) -> Result<Self, ProtocolError> {
        let ps = v
            .property("PowerShell")
            .ok_or_else(|| missing("PowerShell", "CREATE_PIPELINE"))?;
        let mut statements = Vec::new();
        let extra = list_of(ps.property("ExtraCmds"), "ExtraCmds")?;
        if extra.is_empty() {
            statements.push(commands_of(ps.property("Cmds"))?);
        } else {
            for s in extra {
                statements.push(commands_of(s.property("Cmds"))?);
            }
        }
        let total: usize = statements.iter().map(Vec::len).sum();
        if total > MAX_COMMANDS {
            return Err(Malformed::TooManyCommands(total).into());
        }
        statements.retain(|s| !s.is_empty());
        if statements.is_empty() {
            return Err(Malformed::NoCommand.into());
        }
        Ok(CreatePipeline {
            no_input: v
                .property("NoInput")
                .map(|b| matches!(b, Value::Bool(true)))
                .unwrap_or(true),
            add_to_history: bool_of(v.property("AddToHistory")),
            is_nested: bool_of(v.property("IsNested")),
            has_host: v
                .property("HostInfo")
                .and_then(|h| h.property("_isHostNull"))
                .is_some_and(|b| matches!(b, Value::Bool(false))),
            statements,
        })
    }

    /// The streams merged into output by any command (keyhole applies merges pipeline-wide).
    pub fn merge(&self) -> Merge {
        self.statements
            .iter()
            .flatten()
            .fold(Merge::default(), |m, c| m.union(c.merge))
    }

    /// pypsrp `Client.execute_ps(TEXT)`: exactly `Invoke-Expression -Command TEXT | Out-String -Stream`.
    pub fn execute_ps_text(&self) -> Option<&str> {
        let [stmt] = self.statements.as_slice() else {
            return None;
        };
        execute_ps_statement(stmt)
    }

    /// pypsrp `Client.execute_ps(TEXT, environment={...})`: one statement `New-Item -Path env:
    /// -Name K -Value V -Force | Out-Null` per variable, then the `execute_ps` statement. The
    /// variables' names, in order.
    pub fn execute_ps_environment(&self) -> Option<Vec<String>> {
        let (last, env) = self.statements.split_last()?;
        if env.is_empty() || execute_ps_statement(last).is_none() {
            return None;
        }
        env.iter().map(|s| set_env_statement(s)).collect()
    }

    /// Ansible's psrp connection (`exec_command` of a plain command, as `raw` sends): exactly one
    /// script command, without arguments, whose text is `LINE` + `"\nexit $LASTEXITCODE"`. LINE.
    pub fn ansible_exec_line(&self) -> Option<&str> {
        let [stmt] = self.statements.as_slice() else {
            return None;
        };
        let [c] = stmt.as_slice() else {
            return None;
        };
        if !c.is_script || !c.args.is_empty() {
            return None;
        }
        c.cmd.strip_suffix(ANSIBLE_EXIT_SUFFIX)
    }
}

/// What Ansible's psrp connection appends to the command it runs.
pub const ANSIBLE_EXIT_SUFFIX: &str = "\nexit $LASTEXITCODE";

fn named<'a>(args: &'a [CommandArg], name: &str) -> Option<&'a Option<Value>> {
    args.iter()
        .find(|a| {
            a.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|a| &a.value)
}

/// `New-Item -Path env: -Name K -Value V -Force | Out-Null` (pypsrp's environment statement): K.
fn set_env_statement(stmt: &[PipelineCommand]) -> Option<String> {
    let [ni, null] = stmt else {
        return None;
    };
    if ni.is_script
        || null.is_script
        || !ni.cmd.eq_ignore_ascii_case("New-Item")
        || !null.cmd.eq_ignore_ascii_case("Out-Null")
        || !null.args.is_empty()
        || ni.args.len() != 4
    {
        return None;
    }
    match named(&ni.args, "Path") {
        Some(Some(Value::String(p))) if p.eq_ignore_ascii_case("env:") => {}
        _ => return None,
    }
    named(&ni.args, "Value")?;
    named(&ni.args, "Force")?;
    match named(&ni.args, "Name") {
        Some(Some(Value::String(k))) => Some(k.clone()),
        _ => None,
    }
}

/// `Invoke-Expression -Command TEXT | Out-String -Stream`: TEXT.
fn execute_ps_statement(stmt: &[PipelineCommand]) -> Option<&str> {
    let [iex, out] = stmt else {
        return None;
    };
    if iex.is_script
        || out.is_script
        || !iex.cmd.eq_ignore_ascii_case("Invoke-Expression")
        || !out.cmd.eq_ignore_ascii_case("Out-String")
    {
        return None;
    }
    let [CommandArg {
        name: Some(n),
        value: Some(Value::String(text)),
    }] = iex.args.as_slice()
    else {
        return None;
    };
    if !n.eq_ignore_ascii_case("Command") {
        return None;
    }
    match out.args.as_slice() {
        [CommandArg {
            name: Some(n),
            value: None | Some(Value::Bool(true)),
        }] if n.eq_ignore_ascii_case("Stream") => Some(text),
        _ => None,
    }
}

/// One structured command for the engine.
pub fn to_structured(c: &PipelineCommand) -> StructuredCommand {
    StructuredCommand {
        name: c.cmd.clone(),
        args: c.args.clone(),
    }
}

/// GET_COMMAND_METADATA, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct GetCommandMetadata {
    /// Name patterns (wildcards); empty means `*`.
    pub names: Vec<String>,
    /// CommandTypes flags.
    pub command_type: i64,
}

impl GetCommandMetadata {
    pub fn from_value(v: &Value) -> Result<Self, ProtocolError> {
        let names = match v.property("Name") {
            Some(Value::Array(items)) => items.iter().map(Value::to_ps_string).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Null) | None => Vec::new(),
            Some(other) => return Err(Malformed::MetadataName(other.type_name()).into()),
        };
        let command_type = int_of(v.property("CommandType")).unwrap_or(0x1FF);
        Ok(GetCommandMetadata {
            names,
            command_type,
        })
    }

    /// The visible commands this query selects, in the session's order.
    pub fn select<'a>(&self, visible: &'a [VisibleCommand]) -> Vec<&'a VisibleCommand> {
        visible
            .iter()
            .filter(|c| command_type_code(c.decl.kind) & self.command_type != 0)
            .filter(|c| {
                self.names.is_empty()
                    || self
                        .names
                        .iter()
                        .any(|p| wildcard::matches(p, &c.decl.name, Mode::Name))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::engine::{CommandDecl, ParamDecl};
    use crate::psrp::clixml::read::parse_default;

    #[test]
    fn wildcards() {
        let m = |p: &str, t: &str| wildcard::matches(p, t, Mode::Name);
        assert!(m("get-*", "Get-Service"));
        assert!(m("*", ""));
        assert!(m("g?t-s*e", "Get-Service"));
        assert!(!m("get-s", "Get-Service"));
        assert!(m("[gs]et-*", "Set-Thing"));
        assert!(!m("[a-c]*", "Get"));
        assert!(m("*-*ice", "Get-Service"));
    }

    #[test]
    fn capability_and_states_parse_back() {
        let v = parse_default(&session_capability()).unwrap();
        let c = SessionCapability::from_value(&v).unwrap();
        assert_eq!(c.protocol_version, "2.3");
        let v = parse_default(&pipeline_state(InvocationState::Completed, None)).unwrap();
        assert_eq!(v.property("PipelineState"), Some(&Value::Int(4)));
        let v = parse_default(&application_private_data()).unwrap();
        match v.property("ApplicationPrivateData") {
            Some(Value::Dict(d)) => assert_eq!(d[0].0, "PSVersionTable"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn metadata_shape() {
        let decl = CommandDecl::cmdlet("Get-Service", "keyhole", "x")
            .param(ParamDecl::new("Name", ParamType::StringArray).alias("ServiceName"));
        let vc = VisibleCommand {
            decl,
            resolved: None,
        };
        let s = command_metadata(&vc);
        assert!(s.contains("<T>Selected.System.Management.Automation.CmdletInfo</T>"));
        assert!(s.contains("<ToString>Cmdlet</ToString><I32>8</I32>"));
        assert!(s.contains("<S N=\"ParameterType\">System.String[]</S>"));
        let v = parse_default(&s).unwrap();
        assert_eq!(v.property("Name"), Some(&Value::from("Get-Service")));
        let q = GetCommandMetadata {
            names: vec!["get-s*".into()],
            command_type: 8,
        };
        assert_eq!(q.select(std::slice::from_ref(&vc)).len(), 1);
        let q = GetCommandMetadata {
            names: vec![],
            command_type: 2,
        };
        assert!(q.select(std::slice::from_ref(&vc)).is_empty());
    }
}
