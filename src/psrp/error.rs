//! What can be wrong with what a PSRP client sent: one enum per layer (fragments, messages,
//! CLIXML, message contents), each variant one problem, its text for the server log (the client
//! sees only the generic fault).
#![forbid(unsafe_code)]

use super::fragment::{
    FRAGMENT_HEADER_LEN, MAX_BUFFERED_BYTES, MAX_MESSAGE_SIZE, MAX_OBJECTS_IN_FLIGHT,
};
use super::message::MESSAGE_HEADER_LEN;
use super::objects::{MAX_ARGS, MAX_COMMANDS};

/// Any PSRP problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("PSRP fragment error: {0}")]
    Fragment(#[from] FragmentError),
    #[error("PSRP message error: {0}")]
    Message(#[from] MessageError),
    #[error("PSRP CLIXML error: {0}")]
    Clixml(#[from] ClixmlError),
    /// A message that is valid but not allowed now: "X is invalid in state Y".
    #[error("PSRP: {message} is invalid in state {state}")]
    InvalidState { message: String, state: String },
    /// Something keyhole does not implement.
    #[error("PSRP: {0} is not supported by keyhole")]
    Unsupported(#[from] Unsupported),
    /// A message whose CLIXML lacks something required or holds too much.
    #[error("PSRP: {0}")]
    Malformed(#[from] Malformed),
}

/// Fragment framing and reassembly (MS-PSRP 2.2.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("truncated fragment header: {left} bytes left, a header needs {FRAGMENT_HEADER_LEN}")]
    TruncatedHeader { left: usize },
    #[error("fragment {fragment_id} of object {object_id} has unknown flag bits 0x{flags:02x}")]
    UnknownFlags {
        object_id: u64,
        fragment_id: u64,
        flags: u8,
    },
    #[error("fragment {fragment_id} of object {object_id} announces {announced} bytes but only {left} remain")]
    TruncatedBlob {
        object_id: u64,
        fragment_id: u64,
        announced: usize,
        left: usize,
    },
    #[error("object {object_id}: start fragment has FragmentId {fragment_id}, expected 0")]
    StartNotFirst { object_id: u64, fragment_id: u64 },
    #[error("object {object_id}: a second start fragment arrived before the end of the first")]
    SecondStart { object_id: u64 },
    #[error(
        "object {object_id}: more than {MAX_OBJECTS_IN_FLIGHT} partially received messages at once"
    )]
    TooManyInFlight { object_id: u64 },
    #[error("object {object_id}: fragment {fragment_id} arrived without a start fragment")]
    NoStart { object_id: u64, fragment_id: u64 },
    #[error("object {object_id}: fragment {fragment_id} out of order or duplicated (expected {expected})")]
    OutOfOrder {
        object_id: u64,
        fragment_id: u64,
        expected: u64,
    },
    #[error(
        "object {object_id}: more than {MAX_BUFFERED_BYTES} bytes of partial messages buffered"
    )]
    BufferFull { object_id: u64 },
    #[error(
        "object {object_id}: message larger than {MAX_MESSAGE_SIZE} bytes; send smaller objects"
    )]
    TooBig { object_id: u64 },
}

/// Message framing (MS-PSRP 2.2.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("unknown message destination {0} (expected 1 client or 2 server)")]
    UnknownDestination(u32),
    #[error("unknown PSRP message type 0x{0:08X}")]
    UnknownType(u32),
    #[error("message of {0} bytes is shorter than the {MESSAGE_HEADER_LEN}-byte header")]
    Short(usize),
    #[error("{message} body is not UTF-8: {error}")]
    NotUtf8 {
        message: &'static str,
        error: std::str::Utf8Error,
    },
    #[error("{0} is addressed to the client, not the server")]
    ToClient(&'static str),
}

/// A CLIXML body (MS-PSRP 2.2.5) that is not well-formed or breaks a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClixmlError {
    #[error("XML error at byte {position}: {detail}")]
    Xml { position: u64, detail: String },
    #[error("bad attribute in <{tag}>: {detail}")]
    Attribute { tag: String, detail: String },
    #[error("bad attribute value in <{tag}>: {detail}")]
    AttributeValue { tag: String, detail: String },
    #[error("bad text: {0}")]
    Text(String),
    #[error("more than one root element")]
    SecondRoot,
    #[error("more than {0} elements")]
    TooManyElements(usize),
    #[error("nesting deeper than {0} elements")]
    TooDeep(usize),
    #[error("a text longer than {0} bytes")]
    TextTooLong(usize),
    #[error("more than {0} RefIds")]
    TooManyRefs(usize),
    #[error("more than {0} values after expanding references")]
    TooManyValues(usize),
    #[error("unbalanced end tag")]
    UnbalancedEnd,
    #[error("text outside the root element")]
    TextOutsideRoot,
    #[error("DTDs are not accepted in CLIXML")]
    Dtd,
    #[error("unexpected end of CLIXML (unclosed element)")]
    Unclosed,
    #[error("empty CLIXML body")]
    Empty,
    #[error("<{tag}> holds {text:?}, not an integer")]
    NotInteger { tag: String, text: String },
    #[error("<B> holds {0:?}, not true/false")]
    NotBoolean(String),
    #[error("<U64> holds {0:?}")]
    NotU64(String),
    #[error("<{tag}> holds {text:?}, not a number")]
    NotNumber { tag: String, text: String },
    #[error("<Ref> without RefId")]
    RefWithoutId,
    #[error("<Ref RefId=\"{0}\"> names no earlier object")]
    UnknownRef(String),
    #[error("unknown CLIXML element <{0}>")]
    UnknownElement(String),
    #[error("<TNRef> without RefId")]
    TnRefWithoutId,
    #[error("<TNRef RefId=\"{0}\"> names no earlier type list")]
    UnknownTnRef(String),
    #[error("<DCT> holds <{0}>, expected <En>")]
    DictEntry(String),
    #[error("<En> child without N=\"Key\" or N=\"Value\"")]
    DictEntryChild,
    #[error("<En> without a Key")]
    DictEntryWithoutKey,
    #[error("<{tag}> has more than {max} attributes (refused at attribute {at}; namespace declarations count)")]
    TooManyAttributes { tag: String, max: usize, at: usize },
    #[error("<{tag}> has the attribute {name} twice")]
    DuplicateAttribute { tag: String, name: String },
    #[error("the message expands to more than {0} bytes (MAX_EXPANDED_BYTES)")]
    ExpandsTooMuch(usize),
}

/// A feature keyhole does not implement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("PSRP protocol version {0:?} (keyhole speaks 2.x)")]
    ProtocolVersion(String),
    #[error("{0}")]
    Message(&'static str),
}

impl Unsupported {
    /// What the client is told: what is not supported and why (it names only what the client
    /// sent).
    pub fn explain(&self) -> String {
        use super::message::MessageType as T;
        match self {
            Unsupported::ProtocolVersion(v) => format!(
                "PSRP protocol version {v:?} is not supported: keyhole speaks PSRP 2.x (PowerShell 2.0 and later)"
            ),
            Unsupported::Message(m) if *m == T::PublicKey.name() => "SecureString is not supported: keyhole does not do PSRP's session key exchange (PUBLIC_KEY), so no SecureString (a credential, a password parameter) can be sent to it; pass what the command needs as a plain value, or use a command that does not take a SecureString".to_string(),
            Unsupported::Message(m) if *m == T::ConnectRunspacePool.name() => "Reconnecting to a runspace pool (CONNECT_RUNSPACEPOOL) is not supported: keyhole has no disconnected sessions; open a new session".to_string(),
            Unsupported::Message(m) => format!("the PSRP message {m} is not supported by keyhole"),
        }
    }
}

/// A message whose contents lack something required or hold too much.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{message} lacks the mandatory property {property}")]
    MissingProperty { message: String, property: String },
    #[error("CREATE_PIPELINE: {what} is a {found} instead of a list")]
    NotAList { what: String, found: String },
    #[error("command {0:?} has more than {MAX_ARGS} arguments")]
    TooManyArguments(String),
    #[error("CREATE_PIPELINE holds {0} commands, more than {MAX_COMMANDS}")]
    TooManyCommands(usize),
    #[error("CREATE_PIPELINE holds no command")]
    NoCommand,
    #[error("GET_COMMAND_METADATA: Name is a {0}")]
    MetadataName(String),
    #[error("{0} lacks ci")]
    MissingCallId(String),
    /// (main's pool.rs, after the s2-sessions merge, builds this one.)
    #[error("{0} arrived without a CommandId")]
    MissingCommandId(String),
    #[error("{message} lacks {field}")]
    MissingField {
        message: &'static str,
        field: &'static str,
    },
    #[error("pipeline input exceeds {max_objects} objects or {max_bytes} bytes")]
    InputTooLarge {
        max_objects: usize,
        max_bytes: usize,
    },
}
