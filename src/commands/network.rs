//! `Get-NetTCPConnection` (from /proc/net/tcp and tcp6, owning processes found by socket inode)
//! and `Test-Connection` (`ping` run through the sandbox, keeping only CAP_NET_RAW).
#![forbid(unsafe_code)]
// The engine's Invocation interface returns ErrorRecord by value; helpers follow it.
#![allow(clippy::result_large_err)]

use super::name_filters;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use super::system::{
    enum_value, find_program, program_said, read_bounded, run_program, termination_text,
    typed_object, with_pattern, FnCommand, MODULE,
};
use crate::engine::{
    BoundArgs, Command, CommandDecl, Ctx, ErrorCategory, ErrorRecord, ParamDecl, ParamType, Value,
};
use crate::sandbox::Termination;

/// Most socket lines read from each /proc/net file.
pub const MAX_SOCKETS: usize = 200_000;
/// Most /proc/<pid>/fd links examined to find socket owners.
pub const MAX_FD_LINKS: usize = 500_000;
/// Test-Connection -Count bounds.
pub const MAX_PING_COUNT: i64 = 10;
/// Test-Connection -TimeoutSeconds bounds and default.
pub const MAX_PING_TIMEOUT: i64 = 10;
const DEFAULT_PING_TIMEOUT: i64 = 2;
/// Host names and IP addresses Test-Connection accepts: letters, digits, `.`, `:`, `-`, `_`,
/// never a leading dash.
pub const TARGET_PATTERN: &str = r"^[A-Za-z0-9:][A-Za-z0-9.:_-]{0,252}$";

const STATE_TYPE: &str = "Microsoft.PowerShell.Cmdletization.GeneratedTypes.NetTCPConnection.State";
/// PowerShell's TCP state names and values.
pub const STATE_NAMES: &[&str] = &[
    "Closed",
    "Listen",
    "SynSent",
    "SynReceived",
    "Established",
    "FinWait1",
    "FinWait2",
    "CloseWait",
    "Closing",
    "LastAck",
    "TimeWait",
    "DeleteTCB",
    "Bound",
];

/// PowerShell's state (name, value) for a kernel TCP state number.
pub fn tcp_state(st: u8) -> (&'static str, i64) {
    match st {
        0x01 => ("Established", 5),
        0x02 => ("SynSent", 3),
        0x03 | 0x0C => ("SynReceived", 4),
        0x04 => ("FinWait1", 6),
        0x05 => ("FinWait2", 7),
        0x06 => ("TimeWait", 11),
        0x08 => ("CloseWait", 8),
        0x09 => ("LastAck", 9),
        0x0A => ("Listen", 2),
        0x0B => ("Closing", 10),
        _ => ("Closed", 1),
    }
}

/// One socket line of /proc/net/tcp{,6}.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: String,
    pub local_port: u16,
    pub remote: String,
    pub remote_port: u16,
    pub state: u8,
    pub uid: u32,
    pub inode: u64,
}

/// Parse a kernel hex address: 8 hex digits (IPv4) or 32 (IPv6), each 32-bit word printed as the
/// host's native integer.
pub fn parse_hex_addr(hex: &str) -> Option<String> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    match hex.len() {
        8 => Some(Ipv4Addr::from(word(0)?).to_string()),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            Some(Ipv6Addr::from(b).to_string())
        }
        _ => None,
    }
}

fn parse_endpoint(s: &str) -> Option<(String, u16)> {
    let (a, p) = s.split_once(':')?;
    Some((parse_hex_addr(a)?, u16::from_str_radix(p, 16).ok()?))
}

/// Parse one data line of /proc/net/tcp or tcp6 (the header line yields None).
pub fn parse_tcp_line(line: &str) -> Option<TcpEntry> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if !f.first()?.ends_with(':') {
        return None;
    }
    let (local, local_port) = parse_endpoint(f.get(1)?)?;
    let (remote, remote_port) = parse_endpoint(f.get(2)?)?;
    Some(TcpEntry {
        local,
        local_port,
        remote,
        remote_port,
        state: u8::from_str_radix(f.get(3)?, 16).ok()?,
        uid: f.get(7)?.parse().ok()?,
        inode: f.get(9)?.parse().ok()?,
    })
}

/// Socket inode → pid of the first process found holding it (bounded by [`MAX_FD_LINKS`]).
fn socket_owners() -> HashMap<u64, i64> {
    let mut map = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return map;
    };
    let mut budget = MAX_FD_LINKS;
    for e in rd.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            if budget == 0 {
                return map;
            }
            budget -= 1;
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t
                    .strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|n| n.parse().ok())
                {
                    map.entry(inode).or_insert(pid);
                }
            }
        }
    }
    map
}

fn connection_object(t: &TcpEntry, owner: Option<i64>) -> Value {
    let mut o = typed_object(&["Keyhole.NetTCPConnection"]);
    let (sname, sval) = tcp_state(t.state);
    o.push("LocalAddress", t.local.as_str());
    o.push("LocalPort", i64::from(t.local_port));
    o.push("RemoteAddress", t.remote.as_str());
    o.push("RemotePort", i64::from(t.remote_port));
    o.push("State", enum_value(STATE_TYPE, sname, sval));
    o.push("OwningProcess", owner);
    o.push("OwningUid", t.uid);
    o.display = vec![
        "LocalAddress".into(),
        "LocalPort".into(),
        "RemoteAddress".into(),
        "RemotePort".into(),
        "State".into(),
        "OwningProcess".into(),
    ];
    o.into_value()
}

/// Bytes of one socket table read at a time: the kernel produces `/proc/net/tcp` as it is read,
/// and between two reads a table that changes (connections closing, TIME_WAIT expiring) can
/// make it skip entries, so the reads are few and large.
const SOCKET_TABLE_CHUNK: usize = 256 * 1024;

/// Every line of a socket table, up to [`MAX_SOCKETS`] lines, to `each` as it is read (never
/// the whole table in memory: a busy host has tens of thousands of TIME_WAIT entries, and a
/// byte cap on the file cut off the connections after them).
fn read_table(path: &Path, each: &mut dyn FnMut(&str)) -> std::io::Result<()> {
    use std::io::{BufRead, Read};
    let f = std::fs::File::open(path)?;
    let mut r = std::io::BufReader::with_capacity(SOCKET_TABLE_CHUNK, f);
    let mut line = Vec::new();
    for _ in 0..MAX_SOCKETS {
        line.clear();
        // A line of /proc/net/tcp is about 150 bytes; anything longer is cut (and unparsable).
        let n = (&mut r).take(4096).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        each(&String::from_utf8_lossy(&line));
    }
    Ok(())
}

fn get_net_tcp_connection(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    _input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    let local_addr = name_filters(args, "LocalAddress");
    let remote_addr = name_filters(args, "RemoteAddress");
    let local_port = args.ints("LocalPort");
    let remote_port = args.ints("RemotePort");
    let states = args.strings("State");
    let owners_wanted = args.ints("OwningProcess");
    let wanted = |t: &TcpEntry| {
        (local_addr.is_empty() || local_addr.iter().any(|a| a.matches(&t.local)))
            && (remote_addr.is_empty() || remote_addr.iter().any(|a| a.matches(&t.remote)))
            && (local_port.is_empty() || local_port.contains(&i64::from(t.local_port)))
            && (remote_port.is_empty() || remote_port.contains(&i64::from(t.remote_port)))
            && (states.is_empty()
                || states
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(tcp_state(t.state).0)))
    };
    let mut entries = Vec::new();
    let mut read_any = false;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let read = read_table(Path::new(file), &mut |line| {
            if let Some(t) = parse_tcp_line(line.trim_end()).filter(|t| wanted(t)) {
                entries.push(t);
            }
        });
        read_any |= read.is_ok();
    }
    if !read_any {
        return Err(ErrorRecord::new(
            "Get-NetTCPConnection: cannot read /proc/net/tcp or /proc/net/tcp6 (is /proc mounted?)",
            "ProcNetUnavailable,Keyhole.GetNetTCPConnectionCommand",
            ErrorCategory::ReadError,
        ));
    }
    let owners = if entries.is_empty() {
        HashMap::new()
    } else {
        socket_owners()
    };
    let mut found = false;
    for t in &entries {
        if ctx.cancelled() {
            break;
        }
        let owner = owners.get(&t.inode).copied();
        if !owners_wanted.is_empty() && !owner.is_some_and(|o| owners_wanted.contains(&o)) {
            continue;
        }
        found = true;
        ctx.output(connection_object(t, owner));
    }
    let filtered = !(local_addr.is_empty()
        && remote_addr.is_empty()
        && local_port.is_empty()
        && remote_port.is_empty()
        && states.is_empty()
        && owners_wanted.is_empty());
    if !found && filtered {
        // As PowerShell's CIM cmdlets do when a filter matches nothing.
        ctx.write_error(ErrorRecord::new(
            "No matching MSFT_NetTCPConnection objects found by CIM query for instances of the ROOT/StandardCimv2/MSFT_NetTCPConnection class on the  CIM server: SELECT * FROM MSFT_NetTCPConnection. Verify query parameters and retry.",
            "CmdletizationQuery_NotFound,Get-NetTCPConnection",
            ErrorCategory::ObjectNotFound,
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Test-Connection
// ---------------------------------------------------------------------------------------------

/// One reply (or missing reply) of ping.
#[derive(Debug, Clone, PartialEq)]
pub struct PingReply {
    pub seq: i64,
    pub address: Option<String>,
    pub latency_ms: Option<f64>,
}

/// What ping printed: the resolved address from the `PING` header and the replies by sequence.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PingOutput {
    pub address: Option<String>,
    pub replies: Vec<PingReply>,
}

/// Parse iputils/busybox ping output (LANG=C).
pub fn parse_ping(text: &str) -> PingOutput {
    let mut out = PingOutput::default();
    for line in text.lines().take(10_000) {
        if let Some(rest) = line.strip_prefix("PING ") {
            // "PING host (1.2.3.4) 56(84) bytes of data." or "PING 1.2.3.4 (1.2.3.4): 56 data bytes"
            if let Some(a) = rest
                .split_once('(')
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(a, _)| a.to_string())
            {
                out.address = Some(a);
            }
            continue;
        }
        let Some(from) = line.split_once(" from ").map(|(_, r)| r) else {
            continue;
        };
        let Some(seq) = field_after(line, "icmp_seq=").and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        // "from host (1.2.3.4): icmp_seq" or "from 1.2.3.4: icmp_seq"
        let who = from.split(": ").next().unwrap_or("");
        let address = match who.split_once(" (") {
            Some((_, r)) => r.strip_suffix(')').map(str::to_string),
            None => Some(who.trim_end_matches(':').to_string()),
        };
        let latency = field_after(line, "time=").and_then(|s| s.parse::<f64>().ok());
        if latency.is_none() {
            continue; // error lines such as "From x icmp_seq=1 Destination Host Unreachable"
        }
        out.replies.push(PingReply {
            seq,
            address,
            latency_ms: latency,
        });
    }
    out
}

fn field_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.split_once(key)?.1;
    rest.split(|c: char| c.is_whitespace() || c == ',').next()
}

fn hostname() -> String {
    read_bounded(Path::new("/proc/sys/kernel/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn ping_status(ok: bool) -> Value {
    if ok {
        enum_value("System.Net.NetworkInformation.IPStatus", "Success", 0)
    } else {
        enum_value("System.Net.NetworkInformation.IPStatus", "TimedOut", 11010)
    }
}

fn test_connection(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    _input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    const ID: &str = "Microsoft.PowerShell.Commands.TestConnectionCommand";
    let invalid = |msg: String| {
        ErrorRecord::new(
            msg,
            format!("ParameterArgumentValidationError,{ID}"),
            ErrorCategory::InvalidArgument,
        )
    };
    let count = args.int("Count").unwrap_or(4);
    if !(1..=MAX_PING_COUNT).contains(&count) {
        return Err(invalid(format!(
            "Test-Connection: -Count must be between 1 and {MAX_PING_COUNT}, not {count}"
        )));
    }
    let timeout = args.int("TimeoutSeconds").unwrap_or(DEFAULT_PING_TIMEOUT);
    if !(1..=MAX_PING_TIMEOUT).contains(&timeout) {
        return Err(invalid(format!("Test-Connection: -TimeoutSeconds must be between 1 and {MAX_PING_TIMEOUT}, not {timeout}")));
    }
    let targets = args.strings("TargetName");
    if targets.is_empty() {
        return Err(invalid(
            "Test-Connection: give the host with -TargetName".to_string(),
        ));
    }
    let re =
        regex::Regex::new(TARGET_PATTERN).map_err(|e| invalid(format!("Test-Connection: {e}")))?;
    let quiet = args.switch("Quiet");
    let source = hostname();
    for target in targets {
        if ctx.cancelled() {
            break;
        }
        if !re.is_match(&target) {
            ctx.write_error(
                invalid(format!(
                    "Test-Connection: {target:?} is not a host name or IP address"
                ))
                .target(target.as_str()),
            );
            continue;
        }
        let ping = find_program(&["/usr/bin/ping", "/bin/ping"]).ok_or_else(|| {
            ErrorRecord::new(
                "Test-Connection needs the ping program (/usr/bin/ping or /bin/ping): install iputils-ping",
                format!("PingNotInstalled,{ID}"),
                ErrorCategory::NotInstalled,
            )
        })?;
        let mut argv = vec![
            "-n".to_string(),
            "-c".to_string(),
            count.to_string(),
            "-W".to_string(),
            timeout.to_string(),
        ];
        if args.switch("IPv4") {
            argv.push("-4".into());
        } else if args.switch("IPv6") {
            argv.push("-6".into());
        }
        argv.push("--".into());
        argv.push(target.clone());
        let res = run_program(
            ctx,
            "Test-Connection",
            &ping,
            argv,
            vec!["CAP_NET_RAW".to_string()],
        )?;
        let parsed = parse_ping(&String::from_utf8_lossy(&res.stdout));
        // iputils: 0 replies received, 1 no reply, 2 (or other) an error such as an unknown host.
        let failed = !matches!(
            res.termination,
            Termination::Exited(0) | Termination::Exited(1)
        );
        if quiet {
            ctx.output(Value::Bool(!parsed.replies.is_empty()));
            continue;
        }
        if failed && parsed.replies.is_empty() {
            ctx.write_error(
                ErrorRecord::new(
                    format!(
                        "Testing connection to computer '{target}' failed: ping {}: {}",
                        termination_text(res.termination),
                        program_said(&res)
                    ),
                    format!("TestConnectionException,{ID}"),
                    ErrorCategory::ResourceUnavailable,
                )
                .target(target.as_str()),
            );
            continue;
        }
        for seq in 1..=count {
            let reply = parsed.replies.iter().find(|r| r.seq == seq);
            let mut o =
                typed_object(&["Microsoft.PowerShell.Commands.TestConnectionCommand+PingStatus"]);
            o.push("Ping", seq);
            o.push("Source", source.as_str());
            o.push("Destination", target.as_str());
            o.push(
                "Address",
                reply
                    .and_then(|r| r.address.clone())
                    .or_else(|| parsed.address.clone()),
            );
            o.push(
                "Latency",
                reply
                    .and_then(|r| r.latency_ms)
                    .map(|l| l.round() as i64)
                    .unwrap_or(0),
            );
            o.push("LatencyMilliseconds", reply.and_then(|r| r.latency_ms));
            o.push("BufferSize", 56i64);
            o.push("Status", ping_status(reply.is_some()));
            o.display = vec![
                "Ping".into(),
                "Source".into(),
                "Address".into(),
                "Latency".into(),
                "BufferSize".into(),
                "Status".into(),
            ];
            ctx.output(o.into_value());
        }
    }
    Ok(())
}

/// Get-NetTCPConnection and Test-Connection.
pub fn commands() -> Vec<Arc<dyn Command>> {
    vec![
        FnCommand::arc(
            CommandDecl::cmdlet(
                "Get-NetTCPConnection",
                MODULE,
                "Gets the TCP connections and listeners on the host (from /proc/net/tcp).",
            )
            .param(
                ParamDecl::new("LocalAddress", ParamType::StringArray)
                    .position(0)
                    .help("Local IP addresses (127.0.0.1, ::, ...); wildcards allowed."),
            )
            .param(
                ParamDecl::new("LocalPort", ParamType::IntArray)
                    .position(1)
                    .help("Local port numbers."),
            )
            .param(
                ParamDecl::new("RemoteAddress", ParamType::StringArray)
                    .help("Remote IP addresses; wildcards allowed."),
            )
            .param(ParamDecl::new("RemotePort", ParamType::IntArray).help("Remote port numbers."))
            .param(
                ParamDecl::new("State", ParamType::StringArray)
                    .set(STATE_NAMES)
                    .help("Connection states (Listen, Established, TimeWait, ...)."),
            )
            .param(
                ParamDecl::new("OwningProcess", ParamType::IntArray)
                    .help("Process identifiers owning the sockets."),
            )
            .outputs("Keyhole.NetTCPConnection"),
            get_net_tcp_connection,
        ),
        FnCommand::arc(
            CommandDecl::cmdlet(
                "Test-Connection",
                MODULE,
                "Sends ICMP echo requests (ping) to a host and reports the replies.",
            )
            .param(with_pattern(
                ParamDecl::new("TargetName", ParamType::StringArray)
                    .mandatory()
                    .position(0)
                    .by_value()
                    .by_property_name()
                    .alias("ComputerName")
                    .help("Host names or IP addresses to ping."),
                TARGET_PATTERN,
            ))
            .param(with_pattern(
                ParamDecl::new("Count", ParamType::Int)
                    .help("Echo requests to send (1-10; default 4)."),
                "^([1-9]|10)$",
            ))
            .param(with_pattern(
                ParamDecl::new("TimeoutSeconds", ParamType::Int)
                    .help("Seconds to wait for each reply (1-10; default 2)."),
                "^([1-9]|10)$",
            ))
            .param(
                ParamDecl::new("Quiet", ParamType::Switch)
                    .help("Write only True (some reply came) or False per target."),
            )
            .param(ParamDecl::new("IPv4", ParamType::Switch).help("Use IPv4."))
            .param(ParamDecl::new("IPv6", ParamType::Switch).help("Use IPv6."))
            .outputs("Microsoft.PowerShell.Commands.TestConnectionCommand+PingStatus")
            .outputs("System.Boolean"),
            test_connection,
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A socket table larger than the old 1 MiB cap on the file (a host just after thousands of
    /// short connections: TIME_WAIT entries) still yields its last lines: the connection after
    /// them was not found before (`syscmd_live::net_tcp_connection_…` failed in CI right after
    /// the server tests).
    #[test]
    fn a_socket_table_beyond_a_mebibyte_is_read_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tcp");
        let mut text = String::from("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n");
        let line = |i: usize, remote_port: u16| {
            format!("{i:4}: 0100007F:{:04X} 0100007F:{remote_port:04X} 06 00000000:00000000 03:00000123 00000000     0        0 0 3 0000000000000000                                   \n", 40000 + (i % 20000))
        };
        let filler = 12_000;
        for i in 0..filler {
            text.push_str(&line(i, 80));
        }
        text.push_str(&line(filler, 5985));
        assert!(text.len() > 1024 * 1024 + 100_000, "{}", text.len());
        std::fs::write(&path, &text).unwrap();
        let mut seen = 0usize;
        let mut last = None;
        read_table(&path, &mut |l| {
            seen += 1;
            if let Some(t) = parse_tcp_line(l.trim_end()) {
                last = Some(t.remote_port);
            }
        })
        .unwrap();
        assert_eq!(seen, filler + 2, "every line, the header included");
        assert_eq!(last, Some(5985), "the last connection was read");
    }

    /// Kernel text for an address: each 32-bit word of the network-order bytes printed as a
    /// native integer, as the kernel does.
    fn kernel_hex(bytes: &[u8]) -> String {
        bytes
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    }

    #[test]
    fn hex_addresses() {
        assert_eq!(kernel_hex(&[127, 0, 0, 1]).len(), 8);
        assert_eq!(
            parse_hex_addr(&kernel_hex(&[127, 0, 0, 1])).unwrap(),
            "127.0.0.1"
        );
        assert_eq!(
            parse_hex_addr(&kernel_hex(&[10, 1, 2, 3])).unwrap(),
            "10.1.2.3"
        );
        let v6 = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(parse_hex_addr(&kernel_hex(&v6)).unwrap(), "2001:db8::1");
        assert_eq!(parse_hex_addr(&"0".repeat(32)).unwrap(), "::");
        assert!(parse_hex_addr("zz").is_none());
        assert!(parse_hex_addr("0100007").is_none());
        assert!(parse_hex_addr("GGGGGGGG").is_none());
        #[cfg(target_endian = "little")]
        {
            assert_eq!(parse_hex_addr("0100007F").unwrap(), "127.0.0.1");
            assert_eq!(
                parse_hex_addr("00000000000000000000000001000000").unwrap(),
                "::1"
            );
            assert_eq!(
                parse_hex_addr("0000000000000000FFFF00000100007F").unwrap(),
                "::ffff:127.0.0.1"
            );
        }
    }

    #[test]
    fn tcp_lines() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 23456 1 0000000000000000 20 4 30 10 -1\n\
   2: garbage\n";
        let e: Vec<TcpEntry> = text.lines().filter_map(parse_tcp_line).collect();
        assert_eq!(e.len(), 2);
        #[cfg(target_endian = "little")]
        assert_eq!(e[0].local, "127.0.0.1");
        assert_eq!(e[0].local_port, 8080);
        assert_eq!(e[0].remote_port, 0);
        assert_eq!(tcp_state(e[0].state), ("Listen", 2));
        assert_eq!(e[0].inode, 12345);
        assert_eq!(e[1].remote_port, 0xD431);
        assert_eq!(e[1].uid, 1000);
        assert_eq!(tcp_state(e[1].state).0, "Established");
        let v6 = "   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0";
        let e = parse_tcp_line(v6).unwrap();
        assert_eq!((e.local.as_str(), e.local_port), ("::", 22));
        assert_eq!(tcp_state(0x06).0, "TimeWait");
        assert_eq!(tcp_state(0x0C).0, "SynReceived");
        assert_eq!(tcp_state(0xFF).0, "Closed");
    }

    #[test]
    fn ping_output() {
        let text = "PING localhost (127.0.0.1) 56(84) bytes of data.\n\
64 bytes from localhost (127.0.0.1): icmp_seq=1 ttl=64 time=0.034 ms\n\
64 bytes from localhost (127.0.0.1): icmp_seq=3 ttl=64 time=1.6 ms\n\
\n--- localhost ping statistics ---\n3 packets transmitted, 2 received, 33% packet loss, time 2002ms\n";
        let p = parse_ping(text);
        assert_eq!(p.address.as_deref(), Some("127.0.0.1"));
        assert_eq!(p.replies.len(), 2);
        assert_eq!(p.replies[0].seq, 1);
        assert_eq!(p.replies[0].address.as_deref(), Some("127.0.0.1"));
        assert_eq!(p.replies[1].latency_ms, Some(1.6));
        let n = parse_ping("PING 10.0.0.1 (10.0.0.1) 56(84) bytes of data.\n64 bytes from 10.0.0.1: icmp_seq=2 ttl=64 time=3.25 ms\nFrom 10.0.0.9 icmp_seq=1 Destination Host Unreachable\n");
        assert_eq!(n.replies.len(), 1);
        assert_eq!(n.replies[0].address.as_deref(), Some("10.0.0.1"));
        let b = parse_ping(
            "PING ::1 (::1): 56 data bytes\n64 bytes from ::1: seq=0 ttl=64 time=0.063 ms\n",
        );
        assert_eq!(b.address.as_deref(), Some("::1"));
        assert!(parse_ping("").replies.is_empty());
        assert!(parse_ping("from from icmp_seq=x time=").replies.is_empty());
    }

    #[test]
    fn target_pattern() {
        let re = regex::Regex::new(TARGET_PATTERN).unwrap();
        for ok in [
            "localhost",
            "10.0.0.1",
            "::1",
            "fe80::1",
            "db-01.example.com",
            "a_b",
        ] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in ["-c", "--help", "a b", "x;y", "", "host/evil", "-"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }
}
