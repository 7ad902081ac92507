//! SPNEGO (RFC 4178) tokens: just enough DER to read a client's NegTokenInit / NegTokenResp and
//! write the server's NegTokenResp, with bounds on every length. Kerberos inside SPNEGO is left
//! to the system's GSSAPI (which speaks SPNEGO itself); keyhole reads SPNEGO only to route a
//! client that chose NTLM, and wraps its own NTLM tokens.
#![forbid(unsafe_code)]

/// The SPNEGO mechanism OID 1.3.6.1.5.5.2 (DER contents).
pub const OID_SPNEGO: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// Kerberos 5, 1.2.840.113554.1.2.2.
pub const OID_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// Microsoft's Kerberos 5 OID, 1.2.840.48018.1.2.2 (sent first by Windows clients).
pub const OID_MS_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// NTLMSSP, 1.3.6.1.4.1.311.2.2.10.
pub const OID_NTLM: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];

/// Most mechanisms read from one mechTypes list.
pub const MAX_MECHS: usize = 16;
/// Deepest DER length form accepted (bytes of length).
const MAX_LEN_BYTES: usize = 3;

/// `negState` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NegState {
    AcceptCompleted = 0,
    AcceptIncomplete = 1,
    Reject = 2,
    RequestMic = 3,
}

/// A client's first SPNEGO token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegTokenInit {
    /// The mechanism OIDs (DER contents), the client's preference first.
    pub mech_types: Vec<Vec<u8>>,
    /// The DER encoding of the mechTypes SEQUENCE, as the mechListMIC covers it.
    pub mech_types_der: Vec<u8>,
    /// The optimistic token for the first mechanism.
    pub mech_token: Option<Vec<u8>>,
    pub mech_list_mic: Option<Vec<u8>>,
}

/// A NegTokenResp (either direction).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NegTokenResp {
    pub neg_state: Option<u8>,
    pub supported_mech: Option<Vec<u8>>,
    pub response_token: Option<Vec<u8>>,
    pub mech_list_mic: Option<Vec<u8>>,
}

/// What a client token is, by its outer shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientToken {
    Init(NegTokenInit),
    Resp(NegTokenResp),
}

/// A malformed token (for the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed SPNEGO token: {0}")]
pub struct SpnegoError(pub String);

fn bad(what: &str) -> SpnegoError {
    SpnegoError(what.to_string())
}

/// Reads one DER TLV: (tag, contents, the rest).
fn tlv(b: &[u8]) -> Result<(u8, &[u8], &[u8]), SpnegoError> {
    let (&tag, rest) = b.split_first().ok_or_else(|| bad("truncated tag"))?;
    let (&first, mut rest) = rest.split_first().ok_or_else(|| bad("truncated length"))?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > MAX_LEN_BYTES {
            return Err(bad("unsupported length form"));
        }
        let bytes = rest.get(..n).ok_or_else(|| bad("truncated length"))?;
        rest = rest.get(n..).unwrap_or(&[]);
        bytes.iter().fold(0usize, |a, &x| (a << 8) | x as usize)
    };
    let contents = rest
        .get(..len)
        .ok_or_else(|| bad("length beyond the token"))?;
    Ok((tag, contents, rest.get(len..).unwrap_or(&[])))
}

fn expect<'a>(b: &'a [u8], tag: u8, what: &str) -> Result<(&'a [u8], usize), SpnegoError> {
    let (t, c, rest) = tlv(b)?;
    if t != tag {
        return Err(bad(what));
    }
    Ok((c, b.len() - rest.len()))
}

fn octet_string(b: &[u8]) -> Result<Vec<u8>, SpnegoError> {
    Ok(expect(b, 0x04, "expected an OCTET STRING")?.0.to_vec())
}

/// Parses a client's SPNEGO token (an InitialContextToken carrying NegTokenInit, or a bare
/// NegTokenResp on later legs).
pub fn parse_client(token: &[u8]) -> Result<ClientToken, SpnegoError> {
    let (tag, contents, _) = tlv(token)?;
    match tag {
        0x60 => {
            let (oid, used) = expect(contents, 0x06, "expected the mechanism OID")?;
            if oid != OID_SPNEGO {
                return Err(bad("not an SPNEGO token"));
            }
            let inner = contents.get(used..).unwrap_or(&[]);
            let (choice, _) = expect(inner, 0xa0, "expected negTokenInit")?;
            parse_init(choice).map(ClientToken::Init)
        }
        0xa1 => parse_resp(contents).map(ClientToken::Resp),
        _ => Err(bad("unknown outer tag")),
    }
}

fn parse_init(choice: &[u8]) -> Result<NegTokenInit, SpnegoError> {
    let (mut seq, _) = expect(choice, 0x30, "expected a SEQUENCE")?;
    let mut init = NegTokenInit {
        mech_types: Vec::new(),
        mech_types_der: Vec::new(),
        mech_token: None,
        mech_list_mic: None,
    };
    while !seq.is_empty() {
        let (tag, field, rest) = tlv(seq)?;
        match tag {
            0xa0 => {
                let (list, used) = expect(field, 0x30, "mechTypes is not a SEQUENCE")?;
                init.mech_types_der = field.get(..used).unwrap_or(&[]).to_vec();
                let mut l = list;
                while !l.is_empty() {
                    let (t, oid, r) = tlv(l)?;
                    if t != 0x06 || init.mech_types.len() >= MAX_MECHS {
                        return Err(bad("bad mechTypes entry"));
                    }
                    init.mech_types.push(oid.to_vec());
                    l = r;
                }
            }
            0xa1 => {} // reqFlags: ignored (RFC 4178 says acceptors ignore it)
            0xa2 => init.mech_token = Some(octet_string(field)?),
            0xa3 => init.mech_list_mic = Some(octet_string(field)?),
            0xa4 => {} // negHints (Microsoft): only ever sent by servers
            _ => return Err(bad("unknown NegTokenInit field")),
        }
        seq = rest;
    }
    if init.mech_types.is_empty() {
        return Err(bad("empty mechTypes"));
    }
    Ok(init)
}

fn parse_resp(choice: &[u8]) -> Result<NegTokenResp, SpnegoError> {
    let (mut seq, _) = expect(choice, 0x30, "expected a SEQUENCE")?;
    let mut resp = NegTokenResp::default();
    while !seq.is_empty() {
        let (tag, field, rest) = tlv(seq)?;
        match tag {
            0xa0 => {
                let (e, _) = expect(field, 0x0a, "negState is not ENUMERATED")?;
                resp.neg_state = Some(*e.first().ok_or_else(|| bad("empty negState"))?);
            }
            0xa1 => {
                resp.supported_mech = Some(expect(field, 0x06, "bad supportedMech")?.0.to_vec())
            }
            0xa2 => resp.response_token = Some(octet_string(field)?),
            0xa3 => resp.mech_list_mic = Some(octet_string(field)?),
            _ => return Err(bad("unknown NegTokenResp field")),
        }
        seq = rest;
    }
    Ok(resp)
}

fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[0x81, n as u8]);
    } else if n <= 0xffff {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    } else {
        out.extend_from_slice(&[0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
}

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(contents.len(), &mut out);
    out.extend_from_slice(contents);
    out
}

/// Encodes a server NegTokenResp (`[1] SEQUENCE { ... }`).
pub fn encode_resp(resp: &NegTokenResp) -> Vec<u8> {
    let mut seq = Vec::new();
    if let Some(s) = resp.neg_state {
        seq.extend(der(0xa0, &der(0x0a, &[s])));
    }
    if let Some(m) = &resp.supported_mech {
        seq.extend(der(0xa1, &der(0x06, m)));
    }
    if let Some(t) = &resp.response_token {
        seq.extend(der(0xa2, &der(0x04, t)));
    }
    if let Some(m) = &resp.mech_list_mic {
        seq.extend(der(0xa3, &der(0x04, m)));
    }
    der(0xa1, &der(0x30, &seq))
}

/// Encodes a client NegTokenInit in its InitialContextToken (for tests and clients).
pub fn encode_init(mechs: &[&[u8]], mech_token: Option<&[u8]>) -> Vec<u8> {
    let list: Vec<u8> = mechs.iter().flat_map(|m| der(0x06, m)).collect();
    let mut seq = der(0xa0, &der(0x30, &list));
    if let Some(t) = mech_token {
        seq.extend(der(0xa2, &der(0x04, t)));
    }
    let mut inner = der(0x06, OID_SPNEGO);
    inner.extend(der(0xa0, &der(0x30, &seq)));
    der(0x60, &inner)
}

/// The DER mechTypes SEQUENCE for `mechs` (what a mechListMIC signs).
pub fn encode_mech_types(mechs: &[&[u8]]) -> Vec<u8> {
    let list: Vec<u8> = mechs.iter().flat_map(|m| der(0x06, m)).collect();
    der(0x30, &list)
}

/// Parses a server NegTokenResp (for tests and clients).
pub fn parse_server(token: &[u8]) -> Result<NegTokenResp, SpnegoError> {
    match parse_client(token)? {
        ClientToken::Resp(r) => Ok(r),
        ClientToken::Init(_) => Err(bad("expected a NegTokenResp")),
    }
}

/// Whether `token` is a raw (not SPNEGO-wrapped) Kerberos InitialContextToken.
pub fn is_raw_kerberos(token: &[u8]) -> bool {
    match tlv(token) {
        Ok((0x60, contents, _)) => matches!(
            expect(contents, 0x06, ""),
            Ok((oid, _)) if oid == OID_KRB5 || oid == OID_MS_KRB5
        ),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn init_round_trips() {
        let tok = encode_init(&[OID_NTLM, OID_KRB5], Some(b"NTLMSSP\0..."));
        let ClientToken::Init(init) = parse_client(&tok).unwrap() else {
            panic!("not init")
        };
        assert_eq!(init.mech_types, vec![OID_NTLM.to_vec(), OID_KRB5.to_vec()]);
        assert_eq!(init.mech_token.as_deref(), Some(&b"NTLMSSP\0..."[..]));
        assert_eq!(
            init.mech_types_der,
            encode_mech_types(&[OID_NTLM, OID_KRB5])
        );
        assert!(!is_raw_kerberos(&tok));
    }

    #[test]
    fn resp_round_trips_with_long_lengths() {
        let big = vec![7u8; 70_000];
        let r = NegTokenResp {
            neg_state: Some(NegState::AcceptIncomplete as u8),
            supported_mech: Some(OID_NTLM.to_vec()),
            response_token: Some(big),
            mech_list_mic: Some(vec![1; 16]),
        };
        assert_eq!(parse_server(&encode_resp(&r)).unwrap(), r);
    }

    #[test]
    fn an_ntlm_only_negtokeninit_parses() {
        // The shape pyspnego sends without Kerberos (it starts 60 48 06 06 2b 06 01 05 05 02):
        // mechTypes [NTLM] and an NTLM NEGOTIATE as the optimistic token.
        let tok = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            "YEgGBisGAQUFAqA+MDygDjAMBgorBgEEAYI3AgIKoioEKE5UTE1TU1AAAQAAAJeCCOIAAAAAAAAAAAAAAAAAAAAACgBjRQAAAA8=",
        )
        .unwrap();
        let ClientToken::Init(init) = parse_client(&tok).unwrap() else {
            panic!()
        };
        assert_eq!(init.mech_types, vec![OID_NTLM.to_vec()]);
        assert!(init.mech_token.unwrap().starts_with(b"NTLMSSP\0"));
    }

    #[test]
    fn truncations_and_garbage_are_errors() {
        let tok = encode_init(&[OID_KRB5, OID_NTLM], Some(&[1, 2, 3]));
        for n in 0..tok.len() {
            assert!(parse_client(&tok[..n]).is_err(), "prefix {n}");
        }
        assert!(parse_client(&[0x60, 0x84, 1, 0, 0, 0]).is_err());
        assert!(parse_client(&[0x30, 0]).is_err());
        let too_many: Vec<&[u8]> = vec![OID_KRB5; MAX_MECHS + 1];
        assert!(parse_client(&encode_init(&too_many, None)).is_err());
        assert!(is_raw_kerberos(&[
            0x60, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02
        ]));
    }
}
