//! Linux system cmdlets `Get-Uptime` and `Get-Volume`, plus the helpers every system cmdlet
//! family shares (a function-backed [`Command`], enum values, local times, running a program
//! through the sandbox with the endpoint's `run_as`, timeout and output cap).
#![forbid(unsafe_code)]
// The engine's Invocation interface returns ErrorRecord by value; helpers follow it.
#![allow(clippy::result_large_err)]

use super::name_filters;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Local, TimeZone};

use crate::engine::{
    BoundArgs, Command, CommandDecl, Ctx, EnumValue, ErrorCategory, ErrorRecord, Invocation,
    ParamDecl, ParamType, PsObject, Value,
};
use crate::sandbox::{self, ProgramResult, ProgramSpec, SandboxError, Termination};

/// Module name shown by Get-Command for keyhole's Linux system cmdlets.
pub(crate) const MODULE: &str = "keyhole.Linux";

/// Largest /proc or /sys text file any system cmdlet reads (bytes); longer content is cut.
pub(crate) const MAX_PROC_FILE_BYTES: u64 = 1024 * 1024;
/// Most mount entries Get-Volume reads from /proc/self/mountinfo.
pub const MAX_MOUNTS: usize = 4096;
/// How long Get-Volume waits for statvfs on a network file system before giving up on it.
pub const NETWORK_STATVFS_TIMEOUT: Duration = Duration::from_secs(2);

/// File system types whose statvfs can block forever on a dead server: asked in a helper thread
/// with [`NETWORK_STATVFS_TIMEOUT`].
const NETWORK_FS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "glusterfs",
    "fuse.sshfs",
    "sshfs",
    "afs",
    "ncpfs",
    "lustre",
    "fuse.glusterfs",
    "fuse.ceph",
    "davfs",
    "fuse.rclone",
    "fuse.s3fs",
];

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// What one pipeline input (or the single call when first in a pipeline) does.
pub(crate) type RunFn = fn(&mut Ctx<'_>, &BoundArgs, Option<&Value>) -> Result<(), ErrorRecord>;

/// A command whose work is one function called per `process`.
pub(crate) struct FnCommand {
    decl: CommandDecl,
    run: RunFn,
}

impl FnCommand {
    pub(crate) fn arc(decl: CommandDecl, run: RunFn) -> Arc<dyn Command> {
        Arc::new(FnCommand { decl, run })
    }
}

struct FnInvocation {
    run: RunFn,
}

impl Invocation for FnInvocation {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        (self.run)(ctx, args, input.as_ref())
    }
}

impl Command for FnCommand {
    fn decl(&self) -> &CommandDecl {
        &self.decl
    }
    fn start(&self, _args: &BoundArgs) -> Box<dyn Invocation> {
        Box::new(FnInvocation { run: self.run })
    }
}

/// Add an anchored validation pattern to a parameter declaration.
pub(crate) fn with_pattern(mut p: ParamDecl, pattern: &str) -> ParamDecl {
    p.patterns.push(pattern.to_string());
    p
}

/// A .NET enum value with the usual base type names.
pub(crate) fn enum_value(type_name: &str, name: &str, value: i64) -> Value {
    Value::Enum(EnumValue {
        type_names: vec![
            type_name.to_string(),
            "System.Enum".to_string(),
            "System.ValueType".to_string(),
            "System.Object".to_string(),
        ],
        name: name.to_string(),
        value,
    })
}

/// A typed object with a chain of type names (most derived first; System.Object appended).
pub(crate) fn typed_object(type_names: &[&str]) -> PsObject {
    let mut o = PsObject::custom();
    o.type_names = type_names.iter().map(|s| s.to_string()).collect();
    o.type_names.push("System.Object".to_string());
    o
}

/// Unix time (seconds + nanoseconds) as a local DateTime.
pub(crate) fn local_time(secs: i64, nanos: u32) -> Option<DateTime<FixedOffset>> {
    Local
        .timestamp_opt(secs, nanos)
        .single()
        .map(|d| d.fixed_offset())
}

/// Read at most [`MAX_PROC_FILE_BYTES`] of a text file (lossy UTF-8).
pub(crate) fn read_bounded(path: &Path) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_PROC_FILE_BYTES).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The first of `candidates` that exists.
pub(crate) fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Run a program through the sandbox as the endpoint's `run_as`, with its timeout and output cap.
/// Errors (cannot spawn, timed out, cancelled, output cap) come back as error records naming
/// `command` (e.g. "Get-Service") and the program; a non-zero exit is left to the caller.
pub(crate) fn run_program(
    ctx: &mut Ctx<'_>,
    command: &str,
    program: &Path,
    args: Vec<String>,
    capabilities: Vec<String>,
) -> Result<ProgramResult, ErrorRecord> {
    let shown = program.display().to_string();
    // max_output_bytes is per pipeline: what the line's earlier programs left of it.
    let left = ctx
        .host
        .max_output_bytes
        .saturating_sub(ctx.cancel.output_used());
    let over = |ctx: &Ctx<'_>| {
        ErrorRecord::new(
            format!(
                "{command}: {shown} was stopped: the programs of this pipeline wrote more than {} bytes of output together (max_output_bytes applies to a whole pipeline); narrow the request or raise [limits] max_output_bytes",
                ctx.host.max_output_bytes
            ),
            format!("ProgramOutputLimit,{command}"),
            ErrorCategory::LimitsExceeded,
        )
    };
    if left == 0 {
        return Err(over(ctx));
    }
    let spec = ProgramSpec {
        program: program.to_path_buf(),
        args,
        env: Vec::new(),
        run_as: ctx.host.run_as.clone(),
        capabilities,
        timeout: ctx.host.command_timeout,
        max_output_bytes: left,
        stdin: None,
        keep_stdout: true,
    };
    let res = sandbox::run(&spec, ctx.cancel, &mut |_| {}).map_err(|e| {
        let category = match &e {
            SandboxError::UnknownUser(_) => ErrorCategory::PermissionDenied,
            SandboxError::Spawn { .. } => ErrorCategory::NotInstalled,
            // Configuration or host problems the administrator must fix.
            _ => ErrorCategory::NotSpecified,
        };
        ErrorRecord::new(
            format!("{command}: {e}"),
            format!("ProgramFailed,{command}"),
            category,
        )
    })?;
    ctx.cancel.add_output(res.output_bytes);
    match res.termination {
        Termination::Exited(_) | Termination::Signaled(_) => Ok(res),
        Termination::TimedOut => Err(ErrorRecord::new(
            format!(
                "{command}: {shown} did not finish within the command timeout ({}s) and was killed; raise [limits] command_timeout if it needs longer",
                ctx.host.command_timeout.as_secs()
            ),
            format!("ProgramTimedOut,{command}"),
            ErrorCategory::OperationTimeout,
        )),
        Termination::Cancelled => Err(ErrorRecord::new(
            format!("{command}: {shown} was stopped (the pipeline was cancelled)"),
            format!("ProgramCancelled,{command}"),
            ErrorCategory::OperationStopped,
        )),
        Termination::OutputLimit => Err(over(ctx)),
    }
}

/// Trimmed standard error (or output when stderr is empty) of a program, for error messages.
pub(crate) fn program_said(res: &ProgramResult) -> String {
    let err = String::from_utf8_lossy(&res.stderr).trim().to_string();
    let text = if err.is_empty() {
        String::from_utf8_lossy(&res.stdout).trim().to_string()
    } else {
        err
    };
    let mut text: String = text.chars().take(2000).collect();
    if text.is_empty() {
        text = "(no message)".to_string();
    }
    text
}

/// "exited with status N" / "was killed by signal N".
pub(crate) fn termination_text(t: Termination) -> String {
    match t {
        Termination::Exited(c) => format!("exited with status {c}"),
        Termination::Signaled(s) => format!("was killed by signal {s}"),
        Termination::TimedOut => "timed out".to_string(),
        Termination::Cancelled => "was cancelled".to_string(),
        Termination::OutputLimit => "exceeded the output limit".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Get-Uptime
// ---------------------------------------------------------------------------------------------

/// Seconds since boot from the text of /proc/uptime.
pub fn parse_uptime(text: &str) -> Option<Duration> {
    let first = text.split_whitespace().next()?;
    let secs: f64 = first.parse().ok()?;
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

fn get_uptime(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    _input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    let text = read_bounded(Path::new("/proc/uptime")).map_err(|e| {
        ErrorRecord::new(
            format!("Get-Uptime: cannot read /proc/uptime: {e}"),
            "GetUptimeFailed,Microsoft.PowerShell.Commands.GetUptimeCommand",
            ErrorCategory::ReadError,
        )
    })?;
    let up = parse_uptime(&text).ok_or_else(|| {
        ErrorRecord::new(
            format!(
                "Get-Uptime: /proc/uptime has unexpected content {:?}",
                text.chars().take(80).collect::<String>()
            ),
            "GetUptimeFailed,Microsoft.PowerShell.Commands.GetUptimeCommand",
            ErrorCategory::InvalidData,
        )
    })?;
    if args.switch("Since") {
        let now = Local::now();
        let boot = chrono::Duration::from_std(up)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(now);
        ctx.output(Value::DateTime(boot.fixed_offset()));
    } else {
        ctx.output(Value::TimeSpan(up));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Get-Volume
// ---------------------------------------------------------------------------------------------

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
    pub read_only: bool,
}

/// Undo the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash) the
/// kernel writes in mountinfo fields.
pub fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            if let Some(oct) = bytes.get(i + 1..i + 4) {
                if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                    let v = oct
                        .iter()
                        .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                    if let Ok(byte) = u8::try_from(v) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse one mountinfo line: `id parent maj:min root mountpoint options [optional...] - fstype source superopts`.
pub fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let mount_point = fields.get(4)?;
    let options = fields.get(5)?;
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let fs_type = fields.get(sep + 1)?;
    let source = fields.get(sep + 2).copied().unwrap_or("none");
    let super_opts = fields.get(sep + 3).copied().unwrap_or("");
    let read_only =
        options.split(',').any(|o| o == "ro") || super_opts.split(',').any(|o| o == "ro");
    Some(MountEntry {
        mount_point: unescape_mount(mount_point),
        fs_type: unescape_mount(fs_type),
        source: unescape_mount(source),
        read_only,
    })
}

/// Every parseable entry of a mountinfo text, at most [`MAX_MOUNTS`].
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(parse_mountinfo_line)
        .take(MAX_MOUNTS)
        .collect()
}

/// Sizes of a mounted file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FsSizes {
    size: u64,
    remaining: u64,
    unit: u64,
}

// c_ulong is u32 on 32-bit targets, so the conversions are not useless everywhere.
#[allow(clippy::useless_conversion)]
fn statvfs_sizes(path: &str) -> Option<FsSizes> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = u64::from(st.fragment_size());
    let frag = if frag == 0 {
        u64::from(st.block_size())
    } else {
        frag
    };
    let blocks = u64::from(st.blocks());
    Some(FsSizes {
        size: blocks.saturating_mul(frag),
        remaining: u64::from(st.blocks_available()).saturating_mul(frag),
        unit: u64::from(st.block_size()),
    })
}

/// statvfs in a helper thread, given up after `timeout` (the thread is then left blocked in the
/// kernel on the dead mount; it ends when the mount answers or is unmounted).
fn statvfs_with_timeout(path: &str, timeout: Duration) -> Option<FsSizes> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_string();
    std::thread::Builder::new()
        .name("keyhole-statvfs".into())
        .spawn(move || {
            let _ = tx.send(statvfs_sizes(&p));
        })
        .ok()?;
    rx.recv_timeout(timeout).ok().flatten()
}

fn volume_object(m: &MountEntry, s: FsSizes) -> Value {
    let mut o = typed_object(&["Keyhole.Volume"]);
    o.push("MountPoint", m.mount_point.as_str());
    o.push("FileSystemType", m.fs_type.as_str());
    o.push("Device", m.source.as_str());
    o.push("Size", s.size);
    o.push("SizeRemaining", s.remaining);
    o.push("AllocationUnitSize", s.unit);
    o.push("ReadOnly", m.read_only);
    o.push("HealthStatus", "Healthy");
    o.push("OperationalStatus", "OK");
    o.display = vec![
        "MountPoint".into(),
        "FileSystemType".into(),
        "SizeRemaining".into(),
        "Size".into(),
    ];
    o.to_string = Some(m.mount_point.clone());
    o.into_value()
}

/// True when `path` lies under `mount_point` (string comparison on path components).
fn path_under(path: &str, mount_point: &str) -> bool {
    if mount_point == "/" {
        return path.starts_with('/');
    }
    path == mount_point
        || path
            .strip_prefix(mount_point)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn get_volume(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    _input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    let text = read_bounded(Path::new("/proc/self/mountinfo")).map_err(|e| {
        ErrorRecord::new(
            format!("Get-Volume: cannot read /proc/self/mountinfo: {e}"),
            "GetVolumeFailed,Keyhole.GetVolumeCommand",
            ErrorCategory::ReadError,
        )
    })?;
    let mounts = parse_mountinfo(&text);
    let want_mp = name_filters(args, "MountPoint");
    let want_fs = name_filters(args, "FileSystemType");
    let file_path = args.string("FilePath");
    // -FilePath: the volume holding that path is the one with the longest matching mount point.
    let holder: Option<String> = file_path.as_ref().map(|fp| {
        mounts
            .iter()
            .filter(|m| path_under(fp, &m.mount_point))
            .map(|m| m.mount_point.clone())
            .max_by_key(|mp| mp.len())
            .unwrap_or_default()
    });
    if let (Some(fp), Some(h)) = (&file_path, &holder) {
        if h.is_empty() {
            ctx.write_error(
                ErrorRecord::new(
                    format!(
                        "Get-Volume: no mounted file system holds {fp:?}; give an absolute path"
                    ),
                    "NoVolumeForPath,Keyhole.GetVolumeCommand",
                    ErrorCategory::ObjectNotFound,
                )
                .target(fp.as_str()),
            );
            return Ok(());
        }
    }
    let mut matched = vec![false; want_mp.len()];
    for m in &mounts {
        if ctx.cancelled() {
            break;
        }
        if let Some(h) = &holder {
            if &m.mount_point != h {
                continue;
            }
        }
        if !want_mp.is_empty() {
            let hits: Vec<usize> = want_mp
                .iter()
                .enumerate()
                .filter(|(_, p)| p.matches(&m.mount_point))
                .map(|(i, _)| i)
                .collect();
            if hits.is_empty() {
                continue;
            }
            for i in hits {
                if let Some(slot) = matched.get_mut(i) {
                    *slot = true;
                }
            }
        }
        if !want_fs.is_empty() && !want_fs.iter().any(|p| p.matches(&m.fs_type)) {
            continue;
        }
        // statvfs on an autofs trigger would mount it; df leaves them out too.
        if m.fs_type == "autofs" {
            continue;
        }
        let sizes = if NETWORK_FS.contains(&m.fs_type.as_str()) || m.fs_type.starts_with("nfs") {
            match statvfs_with_timeout(&m.mount_point, NETWORK_STATVFS_TIMEOUT) {
                Some(s) => Some(s),
                None => {
                    ctx.warning(format!(
                        "Get-Volume: {} ({}) did not answer within {}s (dead network mount?); skipped",
                        m.mount_point,
                        m.fs_type,
                        NETWORK_STATVFS_TIMEOUT.as_secs()
                    ));
                    continue;
                }
            }
        } else {
            statvfs_sizes(&m.mount_point)
        };
        // As df does by default: pseudo file systems (zero blocks) are not volumes.
        let Some(s) = sizes else { continue };
        if s.size == 0 {
            continue;
        }
        ctx.output(volume_object(m, s));
    }
    for (p, hit) in want_mp.iter().zip(matched) {
        if !hit && !p.has_wildcards() {
            let p = &p.text;
            ctx.write_error(
                ErrorRecord::new(
                    format!("No volume is mounted at '{p}'."),
                    "NoVolumeFound,Keyhole.GetVolumeCommand",
                    ErrorCategory::ObjectNotFound,
                )
                .target(p.as_str()),
            );
        }
    }
    Ok(())
}

/// Get-Uptime and Get-Volume.
pub fn commands() -> Vec<Arc<dyn Command>> {
    vec![
        FnCommand::arc(
            CommandDecl::cmdlet("Get-Uptime", MODULE, "Gets the time since the host last booted (from /proc/uptime).")
                .param(
                    ParamDecl::new("Since", ParamType::Switch)
                        .help("Return the DateTime of the last boot instead of the TimeSpan since then."),
                )
                .outputs("System.TimeSpan")
                .outputs("System.DateTime"),
            get_uptime,
        ),
        FnCommand::arc(
            CommandDecl::cmdlet(
                "Get-Volume",
                MODULE,
                "Gets the mounted file systems with their size and free space (as df shows them).",
            )
            .param(
                ParamDecl::new("MountPoint", ParamType::StringArray)
                    .position(0)
                    .by_property_name()
                    .alias("Path")
                    .help("Mount points to get; wildcards allowed. Default: every mounted file system with a size."),
            )
            .param(
                ParamDecl::new("FileSystemType", ParamType::StringArray)
                    .help("File system types to get (ext4, xfs, ...); wildcards allowed."),
            )
            .param(ParamDecl::new("FilePath", ParamType::String).help("Get the volume that holds this absolute path."))
            .outputs("Keyhole.Volume"),
            get_volume,
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::{CancelToken, Event, HostEnv, VecSink};

    /// Run a command directly as the engine would: start, process (once per input or once with
    /// None), end. Returns outputs and events.
    pub(crate) fn invoke(
        cmd: &Arc<dyn Command>,
        args: &BoundArgs,
        inputs: Vec<Value>,
    ) -> (Vec<Value>, Vec<Event>) {
        let host = HostEnv {
            run_as: "root".into(),
            command_timeout: Duration::from_secs(30),
            max_output_bytes: 16 * 1024 * 1024,
            endpoint: "test".into(),
            user: "tester".into(),
            groups: Vec::new(),
        };
        let cancel = CancelToken::new();
        let mut outs = Vec::new();
        let mut sink = VecSink::default();
        let mut had = false;
        {
            let mut out = |v: Value| outs.push(v);
            let mut ctx = Ctx {
                host: &host,
                cancel: &cancel,
                visible: &[],
                out: &mut out,
                events: &mut sink,
                had_errors: &mut had,
            };
            let mut inv = cmd.start(args);
            if inputs.is_empty() {
                if let Err(e) = inv.process(&mut ctx, args, None) {
                    ctx.write_error(e);
                }
            } else {
                for i in inputs {
                    if let Err(e) = inv.process(&mut ctx, args, Some(i)) {
                        ctx.write_error(e);
                    }
                }
            }
            if let Err(e) = inv.end(&mut ctx) {
                ctx.write_error(e);
            }
        }
        (outs, sink.0)
    }

    pub(crate) fn find(cmds: &[Arc<dyn Command>], name: &str) -> Arc<dyn Command> {
        cmds.iter()
            .find(|c| c.decl().name == name)
            .cloned()
            .unwrap()
    }

    #[test]
    fn uptime_parser() {
        assert_eq!(
            parse_uptime("12345.67 54321.00\n").unwrap().as_millis(),
            12_345_670
        );
        assert!(parse_uptime("").is_none());
        assert!(parse_uptime("abc 1").is_none());
        assert!(parse_uptime("-5 1").is_none());
        assert!(parse_uptime("NaN 1").is_none());
    }

    #[test]
    fn mountinfo_escapes_and_optional_fields() {
        let text = "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n\
                    22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    40 27 8:1 / /data ro,relatime - xfs /dev/sda1 rw\n\
                    garbage line\n\
                    41 27 8:2 / /back\\134slash rw - ext4 /dev/sd\\011b rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].mount_point, "/mnt/my disk");
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[0].source, "/dev/root");
        assert!(!m[0].read_only);
        assert_eq!(m[1].fs_type, "proc");
        assert!(m[2].read_only);
        assert_eq!(m[3].mount_point, "/back\\slash");
        assert_eq!(m[3].source, "/dev/sd\tb");
        // Truncated escapes are kept as they are.
        assert_eq!(unescape_mount("a\\04"), "a\\04");
        assert_eq!(unescape_mount("a\\999"), "a\\999");
        assert!(parse_mountinfo_line("1 2 3 4").is_none());
        assert!(parse_mountinfo_line("1 2 3:4 / /x rw shared:1").is_none());
    }

    #[test]
    fn path_under_mount() {
        assert!(path_under("/var/log", "/"));
        assert!(path_under("/var/log", "/var"));
        assert!(path_under("/var", "/var"));
        assert!(!path_under("/variable", "/var"));
        assert!(!path_under("relative", "/"));
    }

    #[test]
    fn live_volume_and_uptime() {
        let cmds = commands();
        let (out, ev) = invoke(&find(&cmds, "Get-Volume"), &BoundArgs::default(), vec![]);
        assert!(ev.iter().all(|e| !matches!(e, Event::Error(_))), "{ev:?}");
        assert!(
            out.iter()
                .any(|v| v.property("MountPoint") == Some(&Value::from("/"))),
            "{out:?}"
        );
        let mut a = BoundArgs::default();
        a.set("FilePath", Value::from("/proc/self"));
        let (out, _) = invoke(&find(&cmds, "Get-Volume"), &a, vec![]);
        // /proc has no blocks, so nothing is shown for it
        assert!(out.is_empty());
        let mut a = BoundArgs::default();
        a.set("MountPoint", Value::from("/no/such/mount"));
        let (out, ev) = invoke(&find(&cmds, "Get-Volume"), &a, vec![]);
        assert!(out.is_empty());
        assert!(
            matches!(&ev[..], [Event::Error(e)] if e.category == ErrorCategory::ObjectNotFound)
        );

        let (out, _) = invoke(&find(&cmds, "Get-Uptime"), &BoundArgs::default(), vec![]);
        assert!(matches!(out[..], [Value::TimeSpan(d)] if d > Duration::ZERO));
        let mut a = BoundArgs::default();
        a.set("Since", Value::Bool(true));
        let (out, _) = invoke(&find(&cmds, "Get-Uptime"), &a, vec![]);
        assert!(
            matches!(&out[..], [Value::DateTime(d)] if *d < chrono::Local::now().fixed_offset())
        );
    }
}
