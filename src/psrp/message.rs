//! PSRP messages (MS-PSRP 2.2.1): header (destination, type, RPID, PID) and CLIXML body.
#![forbid(unsafe_code)]

use uuid::Uuid;

use super::{MessageError, ProtocolError};

/// Header bytes: Destination (4) + MessageType (4) + RPID (16) + PID (16).
pub const MESSAGE_HEADER_LEN: usize = 40;
/// The UTF-8 byte order mark Windows puts before every message body.
pub const BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Client,
    Server,
}

impl Destination {
    pub fn code(self) -> u32 {
        match self {
            Destination::Client => 1,
            Destination::Server => 2,
        }
    }
    pub fn from_code(c: u32) -> Result<Self, ProtocolError> {
        match c {
            1 => Ok(Destination::Client),
            2 => Ok(Destination::Server),
            other => Err(MessageError::UnknownDestination(other).into()),
        }
    }
}

macro_rules! message_types {
    ($($name:ident = $code:expr),* $(,)?) => {
        /// PSRP message types (MS-PSRP 2.2.1; codes as pypsrp's `MessageType` and psrpcore's `PSRPMessageType`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum MessageType { $($name),* }
        impl MessageType {
            pub fn code(self) -> u32 { match self { $(MessageType::$name => $code),* } }
            pub fn from_code(c: u32) -> Result<Self, ProtocolError> {
                match c {
                    $($code => Ok(MessageType::$name),)*
                    other => Err(MessageError::UnknownType(other).into()),
                }
            }
            pub fn name(self) -> &'static str { match self { $(MessageType::$name => stringify!($name)),* } }
        }
    };
}

message_types! {
    SessionCapability = 0x0001_0002,
    InitRunspacePool = 0x0001_0004,
    PublicKey = 0x0001_0005,
    EncryptedSessionKey = 0x0001_0006,
    PublicKeyRequest = 0x0001_0007,
    ConnectRunspacePool = 0x0001_0008,
    RunspacePoolInitData = 0x0002_100B,
    ResetRunspaceState = 0x0002_100C,
    SetMaxRunspaces = 0x0002_1002,
    SetMinRunspaces = 0x0002_1003,
    RunspaceAvailability = 0x0002_1004,
    RunspacePoolState = 0x0002_1005,
    CreatePipeline = 0x0002_1006,
    GetAvailableRunspaces = 0x0002_1007,
    UserEvent = 0x0002_1008,
    ApplicationPrivateData = 0x0002_1009,
    GetCommandMetadata = 0x0002_100A,
    RunspacePoolHostCall = 0x0002_1100,
    RunspacePoolHostResponse = 0x0002_1101,
    PipelineInput = 0x0004_1002,
    EndOfPipelineInput = 0x0004_1003,
    PipelineOutput = 0x0004_1004,
    ErrorRecord = 0x0004_1005,
    PipelineState = 0x0004_1006,
    DebugRecord = 0x0004_1007,
    VerboseRecord = 0x0004_1008,
    WarningRecord = 0x0004_1009,
    ProgressRecord = 0x0004_1010,
    InformationRecord = 0x0004_1011,
    PipelineHostCall = 0x0004_1100,
    PipelineHostResponse = 0x0004_1101,
}

/// One PSRP message. `rpid`/`pid` are kept as the 16 raw bytes received (echoed verbatim, so
/// clients using big-endian GUIDs, like old pypsrp, get theirs back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub destination: Destination,
    pub message_type: MessageType,
    pub rpid: [u8; 16],
    pub pid: [u8; 16],
    /// CLIXML body, without BOM.
    pub data: Vec<u8>,
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    for (d, s) in a.iter_mut().zip(b.iter()) {
        *d = *s;
    }
    u32::from_le_bytes(a)
}

fn guid_bytes(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    for (d, s) in a.iter_mut().zip(b.iter()) {
        *d = *s;
    }
    a
}

impl Message {
    pub fn new(
        destination: Destination,
        message_type: MessageType,
        rpid: [u8; 16],
        pid: [u8; 16],
        data: Vec<u8>,
    ) -> Self {
        Message {
            destination,
            message_type,
            rpid,
            pid,
            data,
        }
    }

    /// Server → client message with a body.
    pub fn to_client(
        message_type: MessageType,
        rpid: [u8; 16],
        pid: [u8; 16],
        data: impl Into<Vec<u8>>,
    ) -> Self {
        Message::new(Destination::Client, message_type, rpid, pid, data.into())
    }

    /// Parse a reassembled message; a leading BOM in the body is removed.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() < MESSAGE_HEADER_LEN {
            return Err(MessageError::Short(bytes.len()).into());
        }
        let (header, body) = bytes.split_at(MESSAGE_HEADER_LEN);
        let destination = Destination::from_code(le_u32(header.get(0..4).unwrap_or_default()))?;
        let message_type = MessageType::from_code(le_u32(header.get(4..8).unwrap_or_default()))?;
        let rpid = guid_bytes(header.get(8..24).unwrap_or_default());
        let pid = guid_bytes(header.get(24..40).unwrap_or_default());
        let body = body.strip_prefix(BOM).unwrap_or(body);
        Ok(Message {
            destination,
            message_type,
            rpid,
            pid,
            data: body.to_vec(),
        })
    }

    /// Encode with a BOM before a non-empty body (as Windows does).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MESSAGE_HEADER_LEN + BOM.len() + self.data.len());
        out.extend_from_slice(&self.destination.code().to_le_bytes());
        out.extend_from_slice(&self.message_type.code().to_le_bytes());
        out.extend_from_slice(&self.rpid);
        out.extend_from_slice(&self.pid);
        if !self.data.is_empty() {
            out.extend_from_slice(BOM);
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, ProtocolError> {
        std::str::from_utf8(&self.data).map_err(|e| {
            ProtocolError::from(MessageError::NotUtf8 {
                message: self.message_type.name(),
                error: e,
            })
        })
    }

    /// RPID read as a .NET (little-endian) GUID.
    pub fn rpid_uuid(&self) -> Uuid {
        Uuid::from_bytes_le(self.rpid)
    }
}

/// A GUID in .NET byte order (for a CommandId / ShellId string chosen by the client).
pub fn guid_to_net_bytes(s: &str) -> Option<[u8; 16]> {
    Uuid::parse_str(s.trim()).ok().map(|u| u.to_bytes_le())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_ms_psrp() {
        assert_eq!(MessageType::SessionCapability.code(), 0x00010002);
        assert_eq!(MessageType::ApplicationPrivateData.code(), 0x00021009);
        assert_eq!(MessageType::GetCommandMetadata.code(), 0x0002100A);
        assert_eq!(MessageType::ProgressRecord.code(), 0x00041010);
        assert_eq!(MessageType::InformationRecord.code(), 0x00041011);
        assert_eq!(MessageType::PipelineHostResponse.code(), 0x00041101);
        assert_eq!(
            MessageType::from_code(0x00041006).unwrap(),
            MessageType::PipelineState
        );
        assert!(MessageType::from_code(0x12345678).is_err());
    }

    #[test]
    fn roundtrip_and_bom() {
        let rpid = guid_to_net_bytes("A1B2C3D4-0000-4000-8000-000000000001").unwrap();
        let m = Message::to_client(
            MessageType::PipelineOutput,
            rpid,
            [0; 16],
            b"<S>hello</S>".to_vec(),
        );
        let e = m.encode();
        assert_eq!(&e[0..8], &[1, 0, 0, 0, 0x04, 0x10, 0x04, 0x00]);
        assert_eq!(&e[8..12], &[0xD4, 0xC3, 0xB2, 0xA1]);
        assert_eq!(&e[40..43], BOM);
        let d = Message::decode(&e).unwrap();
        assert_eq!(d, m);
        assert_eq!(
            d.rpid_uuid().to_string().to_uppercase(),
            "A1B2C3D4-0000-4000-8000-000000000001"
        );
        assert!(Message::decode(&e[..39]).is_err());
    }
}
