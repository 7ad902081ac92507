//! The logic of every fuzz target, shared by the cargo-fuzz binaries (fuzz/fuzz_targets/) and by
//! the stable smoke test tests/core/fuzz_corpus.rs, which includes this file with `#[path]` and runs it
//! over the seed corpus in fuzz/corpus/<target>/. A function here panics only when it finds a bug:
//! a panic inside keyhole, or a broken invariant checked with `assert!`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use keyhole::lang::{self, CommandElement, Literal, LiteralValue, Script, Span, Statement};

/// The entry point of one target.
pub type Target = fn(&[u8]);

/// Every target by name, for drivers that run all of them.
pub const TARGETS: &[(&str, Target)] = &[
    ("lang_parse", lang_parse),
    ("config_toml", config_toml),
    ("proc_parsers", proc_parsers),
    ("basic_header", basic_header),
    ("wsman_envelope", wsman_envelope),
    ("psrp_fragments", psrp_fragments),
    ("psrp_message", psrp_message),
    ("clixml_read", clixml_read),
    ("winrs_command", winrs_command),
];

// ---------------------------------------------------------------------------------------------
// lang_parse
// ---------------------------------------------------------------------------------------------

/// Arbitrary UTF-8 into `lang::parse`. An accepted script must hold only commands with literal
/// arguments: every span inside the line, no bareword that begins like a variable, a
/// subexpression, a script block, splatting, a type literal or the call operator, and no limit
/// exceeded.
pub fn lang_parse(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match lang::parse(src) {
        Ok(script) => check_script(src, &script),
        Err(e) => {
            assert!(!e.id.is_empty(), "refusal without an id for {src:?}");
            assert!(
                e.span.start <= src.len() && e.span.end <= src.len(),
                "refusal span {:?} outside a {}-byte line: {src:?}",
                e.span,
                src.len()
            );
            assert!(e.column >= 1, "refusal column 0 for {src:?}");
        }
    }
}

/// Characters an unquoted word of an accepted script can never start with: each would begin a
/// variable, `$(...)`, `(...)`, `{...}`, `@(...)`/splatting, `[type]`, `&` invocation or a
/// redirection. (`]` is not here: a lone `]` starts nothing, and the parser takes `]x` as a
/// plain word; fuzzing found that, see fuzz/README.md.)
pub const FORBIDDEN_WORD_STARTS: &[char] = &['$', '(', ')', '{', '}', '@', '[', '&', '<', '>'];

fn check_span(src: &str, span: Span, what: &str) {
    assert!(
        span.start <= span.end && span.end <= src.len(),
        "{what} span {span:?} outside a {}-byte line: {src:?}",
        src.len()
    );
    assert!(
        src.is_char_boundary(span.start) && src.is_char_boundary(span.end),
        "{what} span {span:?} splits a character: {src:?}"
    );
}

fn source_at(src: &str, span: Span) -> &str {
    src.get(span.start..span.end).unwrap_or("")
}

pub fn check_script(src: &str, script: &Script) {
    assert!(
        src.len() <= lang::MAX_LINE_BYTES,
        "accepted a {}-byte line (limit {})",
        src.len(),
        lang::MAX_LINE_BYTES
    );
    assert!(
        script.statements.len() <= lang::MAX_STATEMENTS,
        "accepted {} statements: {src:?}",
        script.statements.len()
    );
    for statement in &script.statements {
        let pipeline = match statement {
            Statement::Exit(span) => {
                check_span(src, *span, "exit");
                continue;
            }
            Statement::Pipeline(p) => p,
        };
        check_span(src, pipeline.span, "pipeline");
        assert!(
            !pipeline.commands.is_empty(),
            "accepted an empty pipeline: {src:?}"
        );
        assert!(
            pipeline.commands.len() <= lang::MAX_PIPELINE_COMMANDS,
            "accepted a pipeline of {} commands: {src:?}",
            pipeline.commands.len()
        );
        for call in &pipeline.commands {
            check_span(src, call.span, "command");
            check_span(src, call.name_span, "command name");
            assert!(
                !call.name.is_empty(),
                "accepted an empty command name: {src:?}"
            );
            let written = source_at(src, call.name_span);
            if let Some(c) = written.chars().next() {
                assert!(
                    !FORBIDDEN_WORD_STARTS.contains(&c),
                    "command name {written:?} is an expression, not a command: {src:?}"
                );
            }
            for element in &call.elements {
                match element {
                    CommandElement::Parameter { name, value, span } => {
                        check_span(src, *span, "parameter");
                        assert!(
                            !name.is_empty(),
                            "accepted an empty parameter name: {src:?}"
                        );
                        if let Some(v) = value {
                            check_literal(src, v, 0);
                        }
                    }
                    CommandElement::Argument(l) => check_literal(src, l, 0),
                }
            }
        }
    }
}

fn check_literal(src: &str, lit: &Literal, depth: usize) {
    check_span(src, lit.span, "literal");
    assert!(
        depth <= lang::MAX_NESTING,
        "accepted lists nested {depth} deep: {src:?}"
    );
    let written = source_at(src, lit.span);
    let first = written.chars().next();
    match &lit.value {
        LiteralValue::Bare(_) | LiteralValue::Int(_) | LiteralValue::Double(_) => {
            if let Some(c) = first {
                assert!(
                    !FORBIDDEN_WORD_STARTS.contains(&c),
                    "literal {written:?} is an expression, not a literal: {src:?}"
                );
            }
        }
        LiteralValue::Bool(_) | LiteralValue::Null => {
            // `$true`, `$false`, `$null` are the only `$` words a script may hold.
            if first == Some('$') {
                let name = written.get(1..).unwrap_or("").to_ascii_lowercase();
                assert!(
                    matches!(name.as_str(), "true" | "false" | "null"),
                    "variable {written:?} accepted as a constant: {src:?}"
                );
            }
        }
        LiteralValue::Quoted(_) => {}
        LiteralValue::List(items) => {
            assert!(
                items.len() <= lang::MAX_LIST_ITEMS,
                "accepted a list of {} items: {src:?}",
                items.len()
            );
            for item in items {
                check_literal(src, item, depth + 1);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config_toml
// ---------------------------------------------------------------------------------------------

const SHIPPED_KEYHOLE: &str = include_str!("../../keyhole.toml");
const SHIPPED_RULES: &str = include_str!("../../authorization-rules.toml");
const SHIPPED_ENDPOINTS: &[(&str, &str)] = &[
    (
        "Helpdesk.toml",
        include_str!("../../endpoints/Helpdesk.toml"),
    ),
    ("Vendor.toml", include_str!("../../endpoints/Vendor.toml")),
];
const SHIPPED_CAPABILITIES: &[(&str, &str)] = &[
    (
        "Diagnostics.toml",
        include_str!("../../role-capabilities/Diagnostics.toml"),
    ),
    (
        "ServiceOperator.toml",
        include_str!("../../role-capabilities/ServiceOperator.toml"),
    ),
    (
        "VendorReadOnly.toml",
        include_str!("../../role-capabilities/VendorReadOnly.toml"),
    ),
];

/// Writes a copy of the shipped configuration (keyhole.toml, rules, endpoints, role
/// capabilities) into `root`, which must exist.
pub fn write_config_tree(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("endpoints"))?;
    std::fs::create_dir_all(root.join("role-capabilities"))?;
    std::fs::write(root.join("keyhole.toml"), SHIPPED_KEYHOLE)?;
    std::fs::write(root.join("authorization-rules.toml"), SHIPPED_RULES)?;
    for (name, text) in SHIPPED_ENDPOINTS {
        std::fs::write(root.join("endpoints").join(name), text)?;
    }
    for (name, text) in SHIPPED_CAPABILITIES {
        std::fs::write(root.join("role-capabilities").join(name), text)?;
    }
    Ok(())
}

/// One configuration tree per fuzzing process (left in the temporary directory at exit).
fn process_tree() -> Option<&'static Path> {
    static TREE: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();
    TREE.get_or_init(|| {
        let dir = tempfile::tempdir().ok()?;
        write_config_tree(dir.path()).ok()?;
        Some(dir)
    })
    .as_ref()
    .map(|d| d.path())
}

/// `config_toml_in` on a per-process copy of the shipped configuration.
pub fn config_toml(data: &[u8]) {
    if let Some(root) = process_tree() {
        config_toml_in(root, data);
    }
}

/// The first byte chooses which file the rest replaces in the tree `root` (made by
/// [`write_config_tree`]): 0 an endpoint (Helpdesk.toml), 1 a role capability
/// (Diagnostics.toml), 2 keyhole.toml, 3 the authorization rules, 4 a new endpoint file
/// (Fuzz.toml), 5 a new role capability (Fuzz.toml); then `config::load` runs. It must return,
/// never panic, and a failure must say why. The tree is restored afterwards.
pub fn config_toml_in(root: &Path, data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (file, original): (PathBuf, Option<&str>) = match selector % 6 {
        0 => (
            root.join("endpoints/Helpdesk.toml"),
            SHIPPED_ENDPOINTS.first().map(|e| e.1),
        ),
        1 => (
            root.join("role-capabilities/Diagnostics.toml"),
            SHIPPED_CAPABILITIES.first().map(|c| c.1),
        ),
        2 => (root.join("keyhole.toml"), Some(SHIPPED_KEYHOLE)),
        3 => (root.join("authorization-rules.toml"), Some(SHIPPED_RULES)),
        4 => (root.join("endpoints/Fuzz.toml"), None),
        _ => (root.join("role-capabilities/Fuzz.toml"), None),
    };
    if std::fs::write(&file, rest).is_err() {
        return;
    }
    let result = keyhole::config::load(&root.join("keyhole.toml"));
    // Put the tree back before asserting, so that one failure cannot poison the next input.
    let _ = match original {
        Some(text) => std::fs::write(&file, text),
        None => std::fs::remove_file(&file),
    };
    match result {
        Ok(loaded) => {
            for w in &loaded.warnings {
                check_diagnostic(w);
            }
        }
        Err(diags) => {
            assert!(!diags.is_empty(), "load failed without a diagnostic");
            for d in &diags {
                check_diagnostic(d);
            }
        }
    }
}

/// Set (to anything) to let `config_toml` fuzz past the open finding "a control character in a
/// TOML comment gives a diagnostic with an empty message" (fuzz/README.md, finding 2).
pub const KNOWN_OPEN_ENV: &str = "KEYHOLE_FUZZ_SKIP_KNOWN_OPEN";

fn check_diagnostic(d: &keyhole::config::Diagnostic) {
    assert!(
        !d.rendered.is_empty(),
        "diagnostic without a rendering {d:?}"
    );
    if std::env::var_os(KNOWN_OPEN_ENV).is_none() {
        assert!(!d.message.is_empty(), "diagnostic without a message {d:?}");
    }
    assert!(
        d.line > 0 || d.col == 0,
        "diagnostic with a column but no line: {d:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// proc_parsers
// ---------------------------------------------------------------------------------------------

/// The same bytes (lossily as UTF-8) into every parser of /proc files and command output used
/// by the system cmdlets. None may panic; a few results are checked against the input.
pub fn proc_parsers(data: &[u8]) {
    use keyhole::commands::{journal, network, processes, services, system};
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    if let Some(stat) = processes::parse_stat(text) {
        assert!(
            text.contains(stat.comm.as_str()),
            "process name {:?} not taken from the input",
            stat.comm
        );
    }
    let _ = processes::parse_status(text);
    let _ = processes::parse_btime(text);
    let _ = processes::parse_auxv_clktck(data);

    let mounts = system::parse_mountinfo(text);
    assert!(
        mounts.len() <= system::MAX_MOUNTS,
        "{} mounts",
        mounts.len()
    );
    for line in text.lines() {
        let _ = system::parse_mountinfo_line(line);
        let _ = system::unescape_mount(line);
    }
    if let Some(d) = system::parse_uptime(text) {
        assert!(d.as_secs_f64() <= 1e12, "uptime {d:?} beyond the limit");
    }

    for line in text.lines().take(1000) {
        let _ = network::parse_tcp_line(line);
        let _ = network::parse_hex_addr(line.trim());
    }
    let ping = network::parse_ping(text);
    assert!(
        ping.replies.len() <= text.lines().count(),
        "more ping replies than lines"
    );

    let units = services::parse_show(text);
    for u in &units {
        let _ = services::service_object(u);
    }
    let _ = services::parse_unit_list(text);

    for line in text.lines().take(1000) {
        let _ = journal::parse_entry(line);
    }
    let _ = journal::parse_since(&keyhole::engine::Value::String(text.to_string()));
}

// ---------------------------------------------------------------------------------------------
// basic_header
// ---------------------------------------------------------------------------------------------

/// Arbitrary bytes as an `Authorization` header value. A parsed header must round-trip: its
/// user name is non-empty and free of ':' and the header really was `Basic`.
pub fn basic_header(data: &[u8]) {
    if let Some((user, password)) = keyhole::auth::parse_basic_header(data) {
        assert!(!user.is_empty(), "empty user name accepted");
        assert!(!user.contains(':'), "user name {user:?} holds ':'");
        assert!(
            data.len() <= keyhole::auth::MAX_BASIC_HEADER_LEN,
            "{}-byte header accepted",
            data.len()
        );
        let text = String::from_utf8_lossy(data);
        assert!(
            text.trim_start()
                .get(..5)
                .is_some_and(|s| s.eq_ignore_ascii_case("basic")),
            "non-Basic header accepted: {text:?}"
        );
        let _ = password;
    }
}

// ---------------------------------------------------------------------------------------------
// wsman_envelope
// ---------------------------------------------------------------------------------------------

/// Arbitrary bytes as a request body → the bounded XML tree and the envelope decoder. A tree
/// that parses respects every cap (depth, elements, attributes with namespace declarations);
/// a decoded envelope respects the selector, option and header-value limits.
pub fn wsman_envelope(data: &[u8]) {
    use keyhole::wsman::envelope::{Envelope, MAX_HEADER_VALUE, MAX_OPTIONS, MAX_SELECTORS};
    use keyhole::wsman::xml;
    if let Ok(root) = xml::parse(data) {
        let mut elements = 0usize;
        check_element(&root, 1, &mut elements);
        assert!(elements <= xml::MAX_ELEMENTS, "{elements} elements");
        if let Ok(env) = Envelope::from_tree(root) {
            assert!(
                env.selectors.len() <= MAX_SELECTORS,
                "{} selectors",
                env.selectors.len()
            );
            assert!(
                env.options.len() <= MAX_OPTIONS,
                "{} options",
                env.options.len()
            );
            for v in [&env.message_id, &env.resource_uri] {
                assert!(v.len() <= MAX_HEADER_VALUE, "{}-byte header value", v.len());
            }
            let _ = env.require_addressing();
            let _ = env.is_identify();
        }
    }
    let _ = Envelope::parse(data);
}

fn check_element(e: &keyhole::wsman::xml::Element, depth: usize, count: &mut usize) {
    use keyhole::wsman::xml;
    *count += 1;
    assert!(depth <= xml::MAX_DEPTH, "element at depth {depth}");
    assert!(
        e.attrs.len() <= xml::MAX_ATTRIBUTES,
        "{} attributes on <{}>",
        e.attrs.len(),
        e.local
    );
    for c in &e.children {
        check_element(c, depth + 1, count);
    }
}

// ---------------------------------------------------------------------------------------------
// psrp_fragments
// ---------------------------------------------------------------------------------------------

/// Arbitrary bytes as the payload of successive `rsp:Stream`s: the first byte says after how
/// many fragments to cut the rest in two (a Send carries whole fragments), each part goes to the
/// same reassembler; bytes that are no sequence of fragments go in whole. Completed messages
/// never exceed `MAX_MESSAGE_SIZE`, partial ones never exceed `MAX_OBJECTS_IN_FLIGHT`; every
/// completed message goes through the message decoder.
pub fn psrp_fragments(data: &[u8]) {
    use keyhole::psrp::fragment::{
        decode_fragments, Fragment, Reassembler, MAX_MESSAGE_SIZE, MAX_OBJECTS_IN_FLIGHT,
    };
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let parts: Vec<Vec<u8>> = match decode_fragments(rest) {
        Ok(frags) => {
            let at = usize::from(cut) % (frags.len() + 1);
            let (a, b) = frags.split_at(at);
            [a, b]
                .iter()
                .map(|p| p.iter().flat_map(Fragment::encode).collect())
                .collect()
        }
        Err(_) => vec![rest.to_vec()],
    };
    let mut r = Reassembler::new();
    for part in &parts {
        if let Ok(messages) = r.push_bytes(part) {
            for m in messages {
                assert!(m.len() <= MAX_MESSAGE_SIZE, "{}-byte message", m.len());
                psrp_message(&m);
            }
        }
        assert!(
            r.in_flight() <= MAX_OBJECTS_IN_FLIGHT,
            "{} in flight",
            r.in_flight()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// psrp_message
// ---------------------------------------------------------------------------------------------

/// Arbitrary bytes as one reassembled PSRP message: the header decoder, an encode/decode round
/// trip, then the body through the CLIXML reader and the typed decoder of its message type.
pub fn psrp_message(data: &[u8]) {
    use keyhole::psrp::message::{Message, MessageType};
    use keyhole::psrp::objects::{
        CreatePipeline, GetCommandMetadata, InitRunspacePool, SessionCapability,
    };
    let Ok(m) = Message::decode(data) else {
        return;
    };
    let again = Message::decode(&m.encode()).expect("an encoded message decodes");
    assert_eq!(again, m, "message round trip");
    let Ok(text) = m.text() else {
        return;
    };
    let Ok(v) = clixml_checked(text) else {
        return;
    };
    match m.message_type {
        MessageType::SessionCapability => {
            let _ = SessionCapability::from_value(&v);
        }
        MessageType::InitRunspacePool => {
            let _ = InitRunspacePool::from_value(&v);
        }
        MessageType::CreatePipeline => {
            let _ = CreatePipeline::from_value(&v);
        }
        MessageType::GetCommandMetadata => {
            let _ = GetCommandMetadata::from_value(&v);
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// clixml_read
// ---------------------------------------------------------------------------------------------

/// Arbitrary UTF-8 as a CLIXML body: with the default limits the value it yields holds no more
/// than the bytes the reader counted (references expanded), which stay within
/// `MAX_EXPANDED_BYTES`; with tight limits the same holds for the tight budget.
pub fn clixml_read(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = clixml_checked(text);
    let tight = keyhole::psrp::clixml::read::ClixmlLimits {
        max_depth: 8,
        max_elements: 64,
        max_string_len: 64,
        max_refs: 4,
        max_values: 32,
        max_attributes: 4,
        max_bytes: 4096,
    };
    if let Ok((v, size)) = keyhole::psrp::clixml::read::parse_sized(text, &tight) {
        assert!(
            size <= tight.max_bytes,
            "{size} bytes under a {}-byte budget",
            tight.max_bytes
        );
        let real = value_bytes(&v, 0);
        assert!(
            real <= size,
            "the value holds {real} bytes, the reader counted {size}"
        );
    }
}

/// Parse with the default limits and check the budget's account of the value.
fn clixml_checked(text: &str) -> Result<keyhole::engine::Value, keyhole::psrp::ProtocolError> {
    use keyhole::psrp::clixml::read::{parse_sized, DEFAULT_LIMITS, MAX_EXPANDED_BYTES};
    let (v, size) = parse_sized(text, &DEFAULT_LIMITS)?;
    assert!(size <= MAX_EXPANDED_BYTES, "{size} bytes");
    let real = value_bytes(&v, 0);
    assert!(
        real <= size,
        "the value holds {real} bytes, the reader counted {size}"
    );
    Ok(v)
}

/// The bytes a value holds as the CLIXML budget counts them: `VALUE_OVERHEAD` per value (and
/// per type name) plus every string's length.
pub fn value_bytes(v: &keyhole::engine::Value, depth: usize) -> usize {
    use keyhole::engine::Value;
    use keyhole::psrp::clixml::read::VALUE_OVERHEAD;
    assert!(depth <= 128, "value nested {depth} deep");
    let names = |t: &[String]| t.iter().map(|n| VALUE_OVERHEAD + n.len()).sum::<usize>();
    VALUE_OVERHEAD
        + match v {
            Value::String(s) => s.len(),
            Value::Enum(e) => names(&e.type_names) + e.name.len(),
            Value::Array(items) => items.iter().map(|i| value_bytes(i, depth + 1)).sum(),
            Value::Dict(entries) => entries
                .iter()
                .map(|(k, v)| k.len() + value_bytes(v, depth + 1))
                .sum(),
            Value::Object(o) => {
                names(&o.type_names)
                    + o.to_string.as_ref().map_or(0, String::len)
                    + o.properties
                        .iter()
                        .map(|(k, v)| k.len() + value_bytes(v, depth + 1))
                        .sum::<usize>()
            }
            _ => 0,
        }
}

// ---------------------------------------------------------------------------------------------
// winrs_command
// ---------------------------------------------------------------------------------------------

/// Arbitrary UTF-8 as a WinRS `rsp:Command` and its `rsp:Arguments` (separated by NUL): the
/// line it becomes (or the `-EncodedCommand`/`-Command` script it carries) is bounded by its
/// input (at most quote doubling and the quotes and spaces around each argument), and goes
/// through the language parser (which refuses lines over its own limit).
pub fn winrs_command(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let command = parts.next().unwrap_or("");
    let args: Vec<String> = parts.take(64).map(str::to_string).collect();
    if let Ok(line) = keyhole::shells::winrs::command_line(command, &args) {
        assert!(
            line.len() <= 2 * data.len() + 3 * (args.len() + 1),
            "{}-byte line from {} bytes",
            line.len(),
            data.len()
        );
        lang_parse(line.as_bytes());
    }
}
