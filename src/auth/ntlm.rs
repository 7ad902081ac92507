//! NTLM (MS-NLMP) on the server side, sans-IO: NEGOTIATE → CHALLENGE → AUTHENTICATE checked
//! against the NT hash `users.toml` stores for an account, then session security (signing and
//! RC4 sealing) for WS-Man message encryption and the SPNEGO mechListMIC.
//!
//! Only NTLMv2 with extended session security and 128-bit keys is accepted (what every current
//! client sends): NTLMv1, LM, anonymous and OEM-encoded messages are refused. The cryptographic
//! primitives (MD4, MD5, HMAC-MD5, RC4) are RustCrypto's; this file only implements the message
//! formats and the key derivations MS-NLMP §3.3.2 and §3.4 define.
#![forbid(unsafe_code)]

use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use rc4::{KeyInit as _, StreamCipher as _};
use subtle::ConstantTimeEq as _;

use crate::config::ChannelBinding;

/// The 8-byte signature every NTLM message starts with.
pub const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
/// Largest NTLM message parsed (bytes); real ones are well under 2 KiB.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;
/// Longest user or domain name accepted (UTF-16 code units).
pub const MAX_NAME_UNITS: usize = 256;
/// Size of the session-security signature (MS-NLMP NTLMSSP_MESSAGE_SIGNATURE).
pub const SIGNATURE_LEN: usize = 16;

const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_SIGN: u32 = 0x0000_0010;
const NEGOTIATE_SEAL: u32 = 0x0000_0020;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
const TARGET_TYPE_SERVER: u32 = 0x0002_0000;
const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_VERSION: u32 = 0x0200_0000;
const NEGOTIATE_128: u32 = 0x2000_0000;
const NEGOTIATE_KEY_EXCH: u32 = 0x4000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

/// Flags keyhole agrees to when the client asks for them.
const SUPPORTED: u32 = NEGOTIATE_UNICODE
    | NEGOTIATE_SIGN
    | NEGOTIATE_SEAL
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_VERSION
    | NEGOTIATE_128
    | NEGOTIATE_KEY_EXCH
    | NEGOTIATE_56;

const AV_EOL: u16 = 0;
const AV_NB_COMPUTER_NAME: u16 = 1;
const AV_NB_DOMAIN_NAME: u16 = 2;
const AV_DNS_COMPUTER_NAME: u16 = 3;
const AV_DNS_DOMAIN_NAME: u16 = 4;
const AV_FLAGS: u16 = 6;
const AV_TIMESTAMP: u16 = 7;
const AV_CHANNEL_BINDINGS: u16 = 10;
const AV_FLAG_MIC: u32 = 0x2;

type HmacMd5 = Hmac<Md5>;
type Rc4 = rc4::Rc4<rc4::consts::U16>;

/// Why an NTLM exchange failed (for the server log only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NtlmError {
    #[error("malformed NTLM message: {0}")]
    Malformed(String),
    #[error("NTLM variant refused: {0}")]
    Unsupported(String),
    #[error("NTLM user {user:?} (domain {domain:?}) has no NT hash in users.toml")]
    UnknownUser { user: String, domain: String },
    #[error("NTLM response of {user:?} (domain {domain:?}) does not match the stored NT hash")]
    WrongResponse { user: String, domain: String },
    #[error("NTLM message integrity code (MIC) of {user:?} does not verify")]
    BadMic { user: String },
    #[error("NTLM channel bindings of {user:?}: {reason}")]
    ChannelBinding { user: String, reason: &'static str },
    #[error("NTLM message signature does not verify (wrong key, replay or reordering)")]
    BadSignature,
}

/// The NT hash of a password: MD4 over its UTF-16LE encoding (MS-NLMP NTOWFv1).
pub fn nt_hash(password: &str) -> [u8; 16] {
    let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
    md4::Md4::digest(&utf16).into()
}

/// `nt_hash` as 32 lowercase hexadecimal digits (the users.toml form).
pub fn nt_hash_hex(password: &str) -> String {
    hex(&nt_hash(password))
}

/// Parses the users.toml form (32 hexadecimal digits, either case).
pub fn parse_nt_hash(text: &str) -> Option<[u8; 16]> {
    let t = text.trim();
    if t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    let mut mac = match <HmacMd5 as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 16],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// A bounds-checked little-endian reader over one message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&self, off: usize, len: usize) -> Result<&'a [u8], NtlmError> {
        off.checked_add(len)
            .and_then(|end| self.0.get(off..end))
            .ok_or_else(|| NtlmError::Malformed(format!("field at {off}+{len} is out of bounds")))
    }
    fn u16(&self, off: usize) -> Result<u16, NtlmError> {
        let b = self.bytes(off, 2)?;
        Ok(u16::from_le_bytes([
            *b.first().unwrap_or(&0),
            *b.get(1).unwrap_or(&0),
        ]))
    }
    fn u32(&self, off: usize) -> Result<u32, NtlmError> {
        let b = self.bytes(off, 4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }
    /// A (length, max length, offset) field descriptor at `off` and the bytes it names.
    fn field(&self, off: usize) -> Result<&'a [u8], NtlmError> {
        let len = self.u16(off)? as usize;
        let at = self.u32(off + 4)? as usize;
        if len == 0 {
            return Ok(&[]);
        }
        self.bytes(at, len)
    }
}

fn check_header(msg: &[u8], kind: u32) -> Result<Reader<'_>, NtlmError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(NtlmError::Malformed(format!(
            "{} bytes, more than {MAX_MESSAGE_LEN}",
            msg.len()
        )));
    }
    let r = Reader(msg);
    if r.bytes(0, 8)? != SIGNATURE {
        return Err(NtlmError::Malformed("no NTLMSSP signature".into()));
    }
    let got = r.u32(8)?;
    if got != kind {
        return Err(NtlmError::Malformed(format!(
            "message type {got}, expected {kind}"
        )));
    }
    Ok(r)
}

fn utf16(field: &[u8]) -> Result<String, NtlmError> {
    if field.len() % 2 != 0 || field.len() / 2 > MAX_NAME_UNITS {
        return Err(NtlmError::Malformed(
            "a name is not UTF-16 or too long".into(),
        ));
    }
    let units: Vec<u16> = field
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([*c.first().unwrap_or(&0), *c.get(1).unwrap_or(&0)]))
        .collect();
    String::from_utf16(&units).map_err(|_| NtlmError::Malformed("a name is not UTF-16".into()))
}

fn to_utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Whether `token` is a raw NTLM message (rather than a Kerberos or SPNEGO token).
pub fn is_ntlm(token: &[u8]) -> bool {
    token.starts_with(SIGNATURE)
}

/// Names the server gives in its CHALLENGE (NetBIOS and DNS forms).
#[derive(Debug, Clone)]
pub struct ServerNames {
    /// NetBIOS computer name (upper case, ≤ 15 characters).
    pub netbios_computer: String,
    /// NetBIOS domain (workgroup) name.
    pub netbios_domain: String,
    /// DNS computer name.
    pub dns_computer: String,
    /// DNS domain name ("" when none).
    pub dns_domain: String,
}

impl ServerNames {
    /// Names for a server called `computer_name` (a host name or FQDN).
    pub fn for_host(computer_name: &str) -> Self {
        let short = computer_name
            .split('.')
            .next()
            .unwrap_or(computer_name)
            .to_uppercase();
        let netbios: String = short.chars().take(15).collect();
        let domain = computer_name
            .split_once('.')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        ServerNames {
            netbios_computer: netbios.clone(),
            netbios_domain: netbios,
            dns_computer: computer_name.to_string(),
            dns_domain: domain,
        }
    }
}

/// Server state after the CHALLENGE was sent.
#[derive(Debug, Clone)]
pub struct Challenged {
    negotiate: Vec<u8>,
    challenge: Vec<u8>,
    server_challenge: [u8; 8],
}

/// Answers a client's NEGOTIATE with a CHALLENGE (the returned bytes).
pub fn challenge(
    negotiate: &[u8],
    names: &ServerNames,
) -> Result<(Challenged, Vec<u8>), NtlmError> {
    let r = check_header(negotiate, 1)?;
    let client = r.u32(12)?;
    if client & NEGOTIATE_UNICODE == 0 {
        return Err(NtlmError::Unsupported(
            "client does not offer Unicode".into(),
        ));
    }
    if client & NEGOTIATE_EXTENDED_SESSIONSECURITY == 0 {
        return Err(NtlmError::Unsupported(
            "client does not offer extended session security (NTLMv1-era client)".into(),
        ));
    }
    let flags = (client & SUPPORTED)
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | NEGOTIATE_ALWAYS_SIGN
        | NEGOTIATE_TARGET_INFO
        | TARGET_TYPE_SERVER
        | NEGOTIATE_VERSION;
    let server_challenge: [u8; 8] = rand::random();
    let target_name = to_utf16(&names.netbios_domain);
    let mut info = Vec::new();
    let mut av = |id: u16, value: &[u8]| {
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(value.len() as u16).to_le_bytes());
        info.extend_from_slice(value);
    };
    av(AV_NB_DOMAIN_NAME, &to_utf16(&names.netbios_domain));
    av(AV_NB_COMPUTER_NAME, &to_utf16(&names.netbios_computer));
    av(AV_DNS_DOMAIN_NAME, &to_utf16(&names.dns_domain));
    av(AV_DNS_COMPUTER_NAME, &to_utf16(&names.dns_computer));
    av(AV_TIMESTAMP, &filetime_now().to_le_bytes());
    av(AV_EOL, &[]);
    let payload_at = 56u32;
    let mut m = Vec::with_capacity(56 + target_name.len() + info.len());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend_from_slice(&(target_name.len() as u16).to_le_bytes());
    m.extend_from_slice(&(target_name.len() as u16).to_le_bytes());
    m.extend_from_slice(&payload_at.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&server_challenge);
    m.extend_from_slice(&[0u8; 8]);
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(payload_at + target_name.len() as u32).to_le_bytes());
    // Version: 10.0 build 17763, NTLMSSP revision 15.
    m.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
    m.extend_from_slice(&target_name);
    m.extend_from_slice(&info);
    Ok((
        Challenged {
            negotiate: negotiate.to_vec(),
            challenge: m.clone(),
            server_challenge,
        },
        m,
    ))
}

fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() / 100)
        .unwrap_or(0);
    (unix as u64).saturating_add(116_444_736_000_000_000)
}

/// The `gss_channel_bindings_struct` hash NTLM clients put in MsvAvChannelBindings.
pub fn channel_bindings_hash(application_data: &[u8]) -> [u8; 16] {
    let mut packed = vec![0u8; 16];
    packed.extend_from_slice(&(application_data.len() as u32).to_le_bytes());
    packed.extend_from_slice(application_data);
    md5(&[&packed])
}

/// A verified AUTHENTICATE message.
#[derive(Debug)]
pub struct Authenticated {
    /// The user name as the client sent it.
    pub user: String,
    /// The domain as the client sent it (often "", ".", a workgroup or the host's name).
    pub domain: String,
    /// Session security for message signing and sealing.
    pub session: Session,
    /// Whether the client's channel bindings were present and matched this TLS channel.
    pub channel_bound: bool,
}

/// The parts of an AUTHENTICATE message needed before the user's hash is looked up.
#[derive(Debug)]
pub struct AuthenticateMessage<'a> {
    /// The user name as sent.
    pub user: String,
    /// The domain as sent.
    pub domain: String,
    raw: &'a [u8],
    flags: u32,
    nt_response: &'a [u8],
    encrypted_session_key: &'a [u8],
}

/// Parses an AUTHENTICATE message (no verification yet).
pub fn parse_authenticate(msg: &[u8]) -> Result<AuthenticateMessage<'_>, NtlmError> {
    let r = check_header(msg, 3)?;
    let nt_response = r.field(20)?;
    let domain = utf16(r.field(28)?)?;
    let user = utf16(r.field(36)?)?;
    let encrypted_session_key = r.field(52)?;
    let flags = r.u32(60)?;
    if flags & NEGOTIATE_UNICODE == 0 {
        return Err(NtlmError::Unsupported("OEM-encoded AUTHENTICATE".into()));
    }
    if user.is_empty() {
        return Err(NtlmError::Unsupported("anonymous NTLM".into()));
    }
    if nt_response.len() <= 24 {
        return Err(NtlmError::Unsupported(
            "NTLMv1/LM response (only NTLMv2 is accepted)".into(),
        ));
    }
    Ok(AuthenticateMessage {
        user,
        domain,
        raw: msg,
        flags,
        nt_response,
        encrypted_session_key,
    })
}

/// Checks `auth` against `nt_hash` (the stored hash of `auth.user`, or `None` for an unknown
/// user: the same work is done with a random hash, so the time does not tell the two apart).
/// `bindings` is the TLS channel binding application data when the connection is TLS.
pub fn verify(
    state: &Challenged,
    auth: &AuthenticateMessage<'_>,
    nt_hash: Option<&[u8; 16]>,
    bindings: Option<&[u8]>,
    policy: ChannelBinding,
) -> Result<Authenticated, NtlmError> {
    let known = nt_hash.is_some();
    let dummy: [u8; 16] = rand::random();
    let hash = nt_hash.unwrap_or(&dummy);
    let identity = to_utf16(&format!("{}{}", auth.user.to_uppercase(), auth.domain));
    let ntowf = hmac_md5(hash, &[&identity]);
    let proof = auth.nt_response.get(..16).unwrap_or(&[]);
    let blob = auth.nt_response.get(16..).unwrap_or(&[]);
    let expected = hmac_md5(&ntowf, &[&state.server_challenge, blob]);
    let matches: bool = expected.ct_eq(proof).into();
    if !known {
        return Err(NtlmError::UnknownUser {
            user: auth.user.clone(),
            domain: auth.domain.clone(),
        });
    }
    if !matches {
        return Err(NtlmError::WrongResponse {
            user: auth.user.clone(),
            domain: auth.domain.clone(),
        });
    }
    // The response is the client's: now its blob (AV pairs) can be trusted for MIC and bindings.
    let pairs = av_pairs(blob.get(28..).unwrap_or(&[]))?;
    let session_base_key = hmac_md5(&ntowf, &[proof]);
    let exported: [u8; 16] = if auth.flags & NEGOTIATE_KEY_EXCH != 0
        && auth.flags & (NEGOTIATE_SIGN | NEGOTIATE_SEAL) != 0
    {
        let mut key: [u8; 16] = auth
            .encrypted_session_key
            .try_into()
            .map_err(|_| NtlmError::Malformed("encrypted session key is not 16 bytes".into()))?;
        Rc4::new(&session_base_key.into()).apply_keystream(&mut key);
        key
    } else {
        session_base_key
    };
    let av_flags = pairs
        .iter()
        .find(|(id, _)| *id == AV_FLAGS)
        .and_then(|(_, v)| <[u8; 4]>::try_from(*v).ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0);
    if av_flags & AV_FLAG_MIC != 0 {
        let mic = auth
            .raw
            .get(72..88)
            .ok_or_else(|| NtlmError::Malformed("MIC flagged but absent".into()))?;
        let mut zeroed = auth.raw.to_vec();
        if let Some(m) = zeroed.get_mut(72..88) {
            m.fill(0);
        }
        let want = hmac_md5(&exported, &[&state.negotiate, &state.challenge, &zeroed]);
        if !bool::from(want.ct_eq(mic)) {
            return Err(NtlmError::BadMic {
                user: auth.user.clone(),
            });
        }
    }
    let mut channel_bound = false;
    if policy != ChannelBinding::Ignore {
        if let Some(app) = bindings {
            let sent = pairs
                .iter()
                .find(|(id, _)| *id == AV_CHANNEL_BINDINGS)
                .map(|(_, v)| *v)
                .filter(|v| v.iter().any(|b| *b != 0));
            match sent {
                Some(v) if bool::from(channel_bindings_hash(app).ct_eq(v)) => channel_bound = true,
                Some(_) => {
                    return Err(NtlmError::ChannelBinding {
                        user: auth.user.clone(),
                        reason: "the client's bindings are for another TLS channel",
                    })
                }
                None if policy == ChannelBinding::Required => {
                    return Err(NtlmError::ChannelBinding {
                        user: auth.user.clone(),
                        reason: "channel_binding = \"required\" and the client sent none",
                    })
                }
                None => {}
            }
        }
    }
    if auth.flags & NEGOTIATE_SEAL != 0 && auth.flags & NEGOTIATE_128 == 0 {
        return Err(NtlmError::Unsupported(
            "sealing with keys shorter than 128 bits".into(),
        ));
    }
    Ok(Authenticated {
        user: auth.user.clone(),
        domain: auth.domain.clone(),
        session: Session::new(&exported, auth.flags, Role::Server),
        channel_bound,
    })
}

fn av_pairs(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, NtlmError> {
    let mut out = Vec::new();
    for _ in 0..64 {
        let r = Reader(b);
        let id = r.u16(0)?;
        let len = r.u16(2)? as usize;
        if id == AV_EOL {
            return Ok(out);
        }
        out.push((id, r.bytes(4, len)?));
        b = b.get(4 + len..).unwrap_or(&[]);
    }
    Err(NtlmError::Malformed("too many AV pairs".into()))
}

/// Which side of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// NTLM session security (MS-NLMP §3.4 with extended session security): one RC4 stream and
/// one sequence number per direction.
pub struct Session {
    flags: u32,
    sign_out: [u8; 16],
    sign_in: [u8; 16],
    seal_out_key: [u8; 16],
    seal_in_key: [u8; 16],
    seal_out: Rc4,
    seal_in: Rc4,
    seq_out: u32,
    seq_in: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("seq_out", &self.seq_out)
            .field("seq_in", &self.seq_in)
            .finish_non_exhaustive()
    }
}

const C2S_SIGN: &[u8] = b"session key to client-to-server signing key magic constant\0";
const S2C_SIGN: &[u8] = b"session key to server-to-client signing key magic constant\0";
const C2S_SEAL: &[u8] = b"session key to client-to-server sealing key magic constant\0";
const S2C_SEAL: &[u8] = b"session key to server-to-client sealing key magic constant\0";

impl Session {
    /// Session security from the exported session key and the negotiated flags.
    pub fn new(exported: &[u8; 16], flags: u32, role: Role) -> Self {
        let seal_len = if flags & NEGOTIATE_128 != 0 {
            16
        } else if flags & NEGOTIATE_56 != 0 {
            7
        } else {
            5
        };
        let seal_base = exported.get(..seal_len).unwrap_or(exported);
        let c2s_sign = md5(&[exported, C2S_SIGN]);
        let s2c_sign = md5(&[exported, S2C_SIGN]);
        let c2s_seal = md5(&[seal_base, C2S_SEAL]);
        let s2c_seal = md5(&[seal_base, S2C_SEAL]);
        let (sign_out, sign_in, seal_out_key, seal_in_key) = match role {
            Role::Server => (s2c_sign, c2s_sign, s2c_seal, c2s_seal),
            Role::Client => (c2s_sign, s2c_sign, c2s_seal, s2c_seal),
        };
        Session {
            flags,
            sign_out,
            sign_in,
            seal_out_key,
            seal_in_key,
            seal_out: Rc4::new(&seal_out_key.into()),
            seal_in: Rc4::new(&seal_in_key.into()),
            seq_out: 0,
            seq_in: 0,
        }
    }

    /// Whether the client negotiated sealing (message encryption).
    pub fn can_seal(&self) -> bool {
        self.flags & NEGOTIATE_SEAL != 0
    }

    fn mac(key: &[u8; 16], rc4: &mut Rc4, key_exch: bool, seq: u32, msg: &[u8]) -> [u8; 16] {
        let seq_bytes = seq.to_le_bytes();
        let full = hmac_md5(key, &[&seq_bytes, msg]);
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(full.get(..8).unwrap_or(&[0u8; 8]));
        if key_exch {
            rc4.apply_keystream(&mut checksum);
        }
        let mut sig = [0u8; 16];
        sig[..4].copy_from_slice(&1u32.to_le_bytes());
        sig[4..12].copy_from_slice(&checksum);
        sig[12..].copy_from_slice(&seq_bytes);
        sig
    }

    /// Signs `msg` (no encryption): the 16-byte signature (SPNEGO mechListMIC).
    pub fn sign(&mut self, msg: &[u8]) -> [u8; 16] {
        let seq = self.seq_out;
        self.seq_out = self.seq_out.wrapping_add(1);
        let kx = self.flags & NEGOTIATE_KEY_EXCH != 0;
        Self::mac(&self.sign_out, &mut self.seal_out, kx, seq, msg)
    }

    /// Verifies a signature over `msg` made by the peer.
    pub fn verify(&mut self, msg: &[u8], signature: &[u8]) -> Result<(), NtlmError> {
        let seq = self.seq_in;
        self.seq_in = self.seq_in.wrapping_add(1);
        let kx = self.flags & NEGOTIATE_KEY_EXCH != 0;
        let want = Self::mac(&self.sign_in, &mut self.seal_in, kx, seq, msg);
        if bool::from(want.ct_eq(signature)) {
            Ok(())
        } else {
            Err(NtlmError::BadSignature)
        }
    }

    /// Seals `msg`: (signature, ciphertext), as GSS_Wrap with confidentiality.
    pub fn seal(&mut self, msg: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut data = msg.to_vec();
        self.seal_out.apply_keystream(&mut data);
        let seq = self.seq_out;
        self.seq_out = self.seq_out.wrapping_add(1);
        let kx = self.flags & NEGOTIATE_KEY_EXCH != 0;
        let sig = Self::mac(&self.sign_out, &mut self.seal_out, kx, seq, msg);
        (sig, data)
    }

    /// Unseals a message from the peer and checks its signature.
    pub fn unseal(&mut self, signature: &[u8], data: &[u8]) -> Result<Vec<u8>, NtlmError> {
        if signature.len() != SIGNATURE_LEN {
            return Err(NtlmError::BadSignature);
        }
        let mut msg = data.to_vec();
        self.seal_in.apply_keystream(&mut msg);
        self.verify(&msg, signature)?;
        Ok(msg)
    }

    /// Restarts the outgoing RC4 stream (after the SPNEGO mechListMIC, MS-SPNG §3.3.5.1).
    pub fn reset_out(&mut self) {
        self.seal_out = Rc4::new(&self.seal_out_key.into());
    }

    /// Restarts the incoming RC4 stream (after verifying the peer's mechListMIC).
    pub fn reset_in(&mut self) {
        self.seal_in = Rc4::new(&self.seal_in_key.into());
    }
}

/// A minimal NTLMv2 client, for tests and diagnostics: NEGOTIATE, then AUTHENTICATE for a
/// CHALLENGE. It implements exactly what [`challenge`]/[`verify`] accept.
pub mod client {
    use super::*;

    /// Client flags: Unicode, sign, seal, ESS, 128-bit, key exchange, version, target info.
    pub const FLAGS: u32 = NEGOTIATE_UNICODE
        | REQUEST_TARGET
        | NEGOTIATE_SIGN
        | NEGOTIATE_SEAL
        | NEGOTIATE_NTLM
        | NEGOTIATE_ALWAYS_SIGN
        | NEGOTIATE_EXTENDED_SESSIONSECURITY
        | NEGOTIATE_TARGET_INFO
        | NEGOTIATE_VERSION
        | NEGOTIATE_128
        | NEGOTIATE_KEY_EXCH
        | NEGOTIATE_56;

    /// A NEGOTIATE message.
    pub fn negotiate() -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(SIGNATURE);
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&FLAGS.to_le_bytes());
        m.extend_from_slice(&[0u8; 16]);
        m.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
        m
    }

    /// An AUTHENTICATE message for `challenge` with a MIC, and the client's session.
    pub fn authenticate(
        negotiate: &[u8],
        challenge: &[u8],
        user: &str,
        domain: &str,
        nt_hash: &[u8; 16],
        bindings: Option<&[u8]>,
    ) -> Result<(Vec<u8>, Session), NtlmError> {
        let r = check_header(challenge, 2)?;
        let server_challenge = r.bytes(24, 8)?;
        let info = r.field(40)?;
        let mut pairs: Vec<(u16, Vec<u8>)> = av_pairs(info)?
            .into_iter()
            .map(|(i, v)| (i, v.to_vec()))
            .collect();
        pairs.push((AV_FLAGS, AV_FLAG_MIC.to_le_bytes().to_vec()));
        if let Some(app) = bindings {
            pairs.push((AV_CHANNEL_BINDINGS, channel_bindings_hash(app).to_vec()));
        }
        let mut av = Vec::new();
        for (id, v) in &pairs {
            av.extend_from_slice(&id.to_le_bytes());
            av.extend_from_slice(&(v.len() as u16).to_le_bytes());
            av.extend_from_slice(v);
        }
        av.extend_from_slice(&[0u8; 4]);
        let mut blob = vec![1u8, 1, 0, 0, 0, 0, 0, 0];
        blob.extend_from_slice(&filetime_now().to_le_bytes());
        blob.extend_from_slice(&rand::random::<[u8; 8]>());
        blob.extend_from_slice(&[0u8; 4]);
        blob.extend_from_slice(&av);
        blob.extend_from_slice(&[0u8; 4]);
        let identity = to_utf16(&format!("{}{}", user.to_uppercase(), domain));
        let ntowf = hmac_md5(nt_hash, &[&identity]);
        let proof = hmac_md5(&ntowf, &[server_challenge, &blob]);
        let mut nt_response = proof.to_vec();
        nt_response.extend_from_slice(&blob);
        let base = hmac_md5(&ntowf, &[&proof]);
        let exported: [u8; 16] = rand::random();
        let mut encrypted = exported;
        Rc4::new(&base.into()).apply_keystream(&mut encrypted);
        let domain16 = to_utf16(domain);
        let user16 = to_utf16(user);
        let ws16 = to_utf16("KEYHOLE-TEST");
        let lm = [0u8; 24];
        let mut payload = Vec::new();
        let mut fields = Vec::new();
        let base_off = 88u32;
        for part in [
            &lm[..],
            &nt_response[..],
            &domain16[..],
            &user16[..],
            &ws16[..],
            &encrypted[..],
        ] {
            let off = base_off + payload.len() as u32;
            fields.extend_from_slice(&(part.len() as u16).to_le_bytes());
            fields.extend_from_slice(&(part.len() as u16).to_le_bytes());
            fields.extend_from_slice(&off.to_le_bytes());
            payload.extend_from_slice(part);
        }
        let mut m = Vec::new();
        m.extend_from_slice(SIGNATURE);
        m.extend_from_slice(&3u32.to_le_bytes());
        m.extend_from_slice(&fields);
        m.extend_from_slice(&FLAGS.to_le_bytes());
        m.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
        m.extend_from_slice(&[0u8; 16]);
        m.extend_from_slice(&payload);
        let mic = hmac_md5(&exported, &[negotiate, challenge, &m]);
        if let Some(slot) = m.get_mut(72..88) {
            slot.copy_from_slice(&mic);
        }
        Ok((m, Session::new(&exported, FLAGS, Role::Client)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn names() -> ServerNames {
        ServerNames::for_host("web01.example.com")
    }

    #[test]
    fn nt_hash_of_password_matches_ms_nlmp() {
        // MS-NLMP §4.2.2.1.2: NTOWFv1("Password").
        assert_eq!(nt_hash_hex("Password"), "a4f49c406510bdcab6824ee7c30fd852");
        assert_eq!(
            parse_nt_hash("A4F49C406510BDCAB6824EE7C30FD852"),
            Some(nt_hash("Password"))
        );
        assert_eq!(parse_nt_hash("a4f4"), None);
        assert_eq!(parse_nt_hash(&"g".repeat(32)), None);
    }

    #[test]
    fn ntowfv2_and_seal_keys_match_ms_nlmp_4_2_4() {
        // MS-NLMP §4.2.4.1.1 NTOWFv2("Password", "User", "Domain").
        let ntowf = hmac_md5(&nt_hash("Password"), &[&to_utf16("USERDomain")]);
        assert_eq!(hex(&ntowf), "0c868a403bfd7a93a3001ef22ef02e3f");
        // §4.2.4.2.1: with ExportedSessionKey 55..55 and the flags of §4.2.4, the client's
        // sealed "Plaintext" and its signature.
        let flags = 0xe28a_8233;
        let mut client = Session::new(&[0x55; 16], flags, Role::Client);
        let (sig, data) = client.seal(&to_utf16("Plaintext"));
        assert_eq!(hex(&data), "54e50165bf1936dc996020c1811b0f06fb5f");
        assert_eq!(hex(&sig), "010000007fb38ec5c55d497600000000");
        let mut server = Session::new(&[0x55; 16], flags, Role::Server);
        assert_eq!(server.unseal(&sig, &data).unwrap(), to_utf16("Plaintext"));
    }

    #[test]
    fn right_hash_authenticates_and_seals_both_ways() {
        let neg = client::negotiate();
        let (state, chal) = challenge(&neg, &names()).unwrap();
        let hash = nt_hash("s3cret");
        let (auth, mut c) = client::authenticate(&neg, &chal, "alice", "", &hash, None).unwrap();
        let parsed = parse_authenticate(&auth).unwrap();
        assert_eq!(parsed.user, "alice");
        let ok = verify(
            &state,
            &parsed,
            Some(&hash),
            None,
            ChannelBinding::WhenOffered,
        )
        .unwrap();
        let mut s = ok.session;
        for round in 0..3 {
            let msg = format!("<s:Envelope>{round}</s:Envelope>");
            let (sig, enc) = c.seal(msg.as_bytes());
            assert_ne!(enc, msg.as_bytes());
            assert_eq!(s.unseal(&sig, &enc).unwrap(), msg.as_bytes());
            let (sig, enc) = s.seal(b"reply");
            assert_eq!(c.unseal(&sig, &enc).unwrap(), b"reply");
        }
        // A replayed message is refused (sequence number and RC4 state moved on).
        let (sig, enc) = c.seal(b"once");
        assert!(s.unseal(&sig, &enc).is_ok());
        assert!(s.unseal(&sig, &enc).is_err());
    }

    #[test]
    fn wrong_hash_unknown_user_and_tampering_are_refused() {
        let neg = client::negotiate();
        let (state, chal) = challenge(&neg, &names()).unwrap();
        let (auth, _) =
            client::authenticate(&neg, &chal, "alice", "WORKGROUP", &nt_hash("guess"), None)
                .unwrap();
        let parsed = parse_authenticate(&auth).unwrap();
        assert!(matches!(
            verify(
                &state,
                &parsed,
                Some(&nt_hash("s3cret")),
                None,
                ChannelBinding::Ignore
            ),
            Err(NtlmError::WrongResponse { .. })
        ));
        assert!(matches!(
            verify(&state, &parsed, None, None, ChannelBinding::Ignore),
            Err(NtlmError::UnknownUser { .. })
        ));
        // A right response replayed against another challenge fails.
        let hash = nt_hash("s3cret");
        let (auth, _) = client::authenticate(&neg, &chal, "alice", "", &hash, None).unwrap();
        let (state2, _) = challenge(&neg, &names()).unwrap();
        let parsed = parse_authenticate(&auth).unwrap();
        assert!(verify(&state2, &parsed, Some(&hash), None, ChannelBinding::Ignore).is_err());
        // A flipped byte outside the response breaks the MIC.
        let mut bad = auth.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let parsed = parse_authenticate(&bad).unwrap();
        assert!(matches!(
            verify(&state, &parsed, Some(&hash), None, ChannelBinding::Ignore),
            Err(NtlmError::BadMic { .. })
        ));
    }

    #[test]
    fn channel_bindings_follow_the_policy() {
        let neg = client::negotiate();
        let hash = nt_hash("pw");
        let ours = b"tls-server-end-point:abc";
        let run = |sent: Option<&[u8]>, policy| {
            let (state, chal) = challenge(&neg, &names()).unwrap();
            let (auth, _) = client::authenticate(&neg, &chal, "u", "", &hash, sent).unwrap();
            let parsed = parse_authenticate(&auth).unwrap();
            let r = verify(&state, &parsed, Some(&hash), Some(ours), policy);
            if let Ok(a) = &r {
                // Reported bound exactly when the client's bindings were checked and matched.
                assert_eq!(
                    a.channel_bound,
                    sent == Some(&ours[..]) && policy != ChannelBinding::Ignore
                );
            }
            r.is_ok()
        };
        assert!(run(Some(ours), ChannelBinding::Required));
        assert!(!run(None, ChannelBinding::Required));
        assert!(!run(
            Some(b"tls-server-end-point:other"),
            ChannelBinding::Required
        ));
        assert!(run(None, ChannelBinding::WhenOffered));
        assert!(!run(
            Some(b"tls-server-end-point:other"),
            ChannelBinding::WhenOffered
        ));
        assert!(run(
            Some(b"tls-server-end-point:other"),
            ChannelBinding::Ignore
        ));
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(challenge(b"", &names()).is_err());
        assert!(challenge(b"NTLMSSP\0\x01\0\0\0", &names()).is_err());
        // NEGOTIATE without Unicode / ESS.
        let mut neg = client::negotiate();
        neg[12] &= !1;
        assert!(challenge(&neg, &names()).is_err());
        // Fields pointing outside the message.
        let mut auth = vec![0u8; 88];
        auth[..8].copy_from_slice(SIGNATURE);
        auth[8] = 3;
        auth[20..22].copy_from_slice(&500u16.to_le_bytes());
        auth[24..28].copy_from_slice(&4000u32.to_le_bytes());
        assert!(parse_authenticate(&auth).is_err());
        assert!(parse_authenticate(&vec![0u8; MAX_MESSAGE_LEN + 1]).is_err());
        // Every truncation of a valid AUTHENTICATE is an error, never a panic.
        let n = client::negotiate();
        let (state, chal) = challenge(&n, &names()).unwrap();
        let (auth, _) = client::authenticate(&n, &chal, "alice", "", &nt_hash("x"), None).unwrap();
        for len in 0..auth.len() {
            if let Ok(p) = parse_authenticate(&auth[..len]) {
                assert!(verify(
                    &state,
                    &p,
                    Some(&nt_hash("x")),
                    None,
                    ChannelBinding::Ignore
                )
                .is_err());
            }
        }
    }
}
