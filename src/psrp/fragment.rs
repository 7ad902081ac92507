//! PSRP fragments (MS-PSRP 2.2.4): splitting messages into fragments and reassembling them.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::{FragmentError, ProtocolError};

/// Bytes of a fragment header: ObjectId (8) + FragmentId (8) + flags (1) + BlobLength (4).
pub const FRAGMENT_HEADER_LEN: usize = 21;
/// Start-of-message flag.
pub const FLAG_START: u8 = 0x1;
/// End-of-message flag.
pub const FLAG_END: u8 = 0x2;

/// Largest message keyhole reassembles from a client. Clients send commands, parameters and
/// pipeline input, never bulk data (keyhole offers no file copy); Windows' own default
/// `MaxReceivedObjectSizeMB` is 10 MiB per object, so 16 MiB leaves room without letting one
/// client hold more memory than that per message.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Messages that may be partially received at once (objects "in flight"). pypsrp and PowerShell
/// send one message at a time; a handful covers interleaved pool and pipeline messages.
pub const MAX_OBJECTS_IN_FLIGHT: usize = 16;
/// Bytes buffered over all in-flight messages.
pub const MAX_BUFFERED_BYTES: usize = 32 * 1024 * 1024;
/// Largest fragment blob keyhole sends: Windows' largest observed outgoing blob (32768 - 21).
pub const MAX_SEND_BLOB: usize = 32_747;
/// Smallest fragment blob keyhole sends, however small the negotiated envelope.
pub const MIN_SEND_BLOB: usize = 512;
/// Room left in a Receive envelope for the SOAP headers and the ReceiveResponse body around the
/// stream data (observed envelopes are < 2 KiB without data; pypsrp reserves similar).
pub const ENVELOPE_OVERHEAD: usize = 4096;

/// One fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub object_id: u64,
    pub fragment_id: u64,
    pub start: bool,
    pub end: bool,
    pub blob: Vec<u8>,
}

impl Fragment {
    /// Encode this fragment (header + blob).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAGMENT_HEADER_LEN + self.blob.len());
        out.extend_from_slice(&self.object_id.to_be_bytes());
        out.extend_from_slice(&self.fragment_id.to_be_bytes());
        let mut flags = 0u8;
        if self.start {
            flags |= FLAG_START;
        }
        if self.end {
            flags |= FLAG_END;
        }
        out.push(flags);
        let len = u32::try_from(self.blob.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.blob);
        out
    }
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Some(head)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    for (d, s) in a.iter_mut().zip(b.iter()) {
        *d = *s;
    }
    u64::from_be_bytes(a)
}

/// Decode every fragment concatenated in `data` (one `rsp:Stream`, `creationXml` or
/// `rsp:Arguments` may hold several).
pub fn decode_fragments(mut data: &[u8]) -> Result<Vec<Fragment>, ProtocolError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let header = take(&mut data, FRAGMENT_HEADER_LEN).ok_or_else(|| {
            ProtocolError::from(FragmentError::TruncatedHeader { left: data.len() })
        })?;
        let object_id = be_u64(header.get(0..8).unwrap_or_default());
        let fragment_id = be_u64(header.get(8..16).unwrap_or_default());
        let flags = header.get(16).copied().unwrap_or(0);
        let mut lb = [0u8; 4];
        for (d, s) in lb.iter_mut().zip(header.get(17..21).unwrap_or_default()) {
            *d = *s;
        }
        let len = u32::from_be_bytes(lb) as usize;
        if flags & !(FLAG_START | FLAG_END) != 0 {
            return Err(FragmentError::UnknownFlags {
                object_id,
                fragment_id,
                flags,
            }
            .into());
        }
        let blob = take(&mut data, len).ok_or_else(|| {
            ProtocolError::from(FragmentError::TruncatedBlob {
                object_id,
                fragment_id,
                announced: len,
                left: data.len(),
            })
        })?;
        out.push(Fragment {
            object_id,
            fragment_id,
            start: flags & FLAG_START != 0,
            end: flags & FLAG_END != 0,
            blob: blob.to_vec(),
        });
    }
    Ok(out)
}

/// Split one message into fragments of at most `max_blob` bytes each (at least 1 byte).
pub fn fragment_message(object_id: u64, message: &[u8], max_blob: usize) -> Vec<Fragment> {
    let max_blob = max_blob.max(1);
    if message.is_empty() {
        return vec![Fragment {
            object_id,
            fragment_id: 0,
            start: true,
            end: true,
            blob: Vec::new(),
        }];
    }
    let chunks: Vec<&[u8]> = message.chunks(max_blob).collect();
    let last = chunks.len().saturating_sub(1);
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| Fragment {
            object_id,
            fragment_id: i as u64,
            start: i == 0,
            end: i == last,
            blob: c.to_vec(),
        })
        .collect()
}

/// The largest fragment blob to send for a negotiated `MaxEnvelopeSize`: what fits in the
/// envelope after its overhead, with base64's 4/3 expansion and the fragment header, capped at
/// [`MAX_SEND_BLOB`] and never below [`MIN_SEND_BLOB`].
pub fn max_blob_for_envelope(max_envelope_size: usize) -> usize {
    let payload = max_envelope_size.saturating_sub(ENVELOPE_OVERHEAD) / 4 * 3;
    payload
        .saturating_sub(FRAGMENT_HEADER_LEN)
        .clamp(MIN_SEND_BLOB, MAX_SEND_BLOB)
}

#[derive(Debug)]
struct Partial {
    next_fragment: u64,
    data: Vec<u8>,
}

/// Reassembles fragments into messages, in order, within the named limits.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: BTreeMap<u64, Partial>,
    buffered: usize,
}

impl Reassembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one fragment; returns the complete message when this was its last fragment.
    pub fn push(&mut self, f: Fragment) -> Result<Option<Vec<u8>>, ProtocolError> {
        let oid = f.object_id;
        let fid = f.fragment_id;
        if f.start {
            if fid != 0 {
                return Err(FragmentError::StartNotFirst {
                    object_id: oid,
                    fragment_id: fid,
                }
                .into());
            }
            if self.partial.contains_key(&oid) {
                return Err(FragmentError::SecondStart { object_id: oid }.into());
            }
            if f.blob.len() > MAX_MESSAGE_SIZE {
                return Err(too_big(oid));
            }
            if f.end {
                return Ok(Some(f.blob));
            }
            if self.partial.len() >= MAX_OBJECTS_IN_FLIGHT {
                return Err(FragmentError::TooManyInFlight { object_id: oid }.into());
            }
            self.reserve(oid, f.blob.len())?;
            self.partial.insert(
                oid,
                Partial {
                    next_fragment: 1,
                    data: f.blob,
                },
            );
            return Ok(None);
        }
        let Some(p) = self.partial.get_mut(&oid) else {
            return Err(FragmentError::NoStart {
                object_id: oid,
                fragment_id: fid,
            }
            .into());
        };
        if fid != p.next_fragment {
            let expected = p.next_fragment;
            self.drop_object(oid);
            return Err(FragmentError::OutOfOrder {
                object_id: oid,
                fragment_id: fid,
                expected,
            }
            .into());
        }
        let len = f.blob.len();
        if p.data.len().saturating_add(len) > MAX_MESSAGE_SIZE {
            self.drop_object(oid);
            return Err(too_big(oid));
        }
        if self.buffered.saturating_add(len) > MAX_BUFFERED_BYTES {
            self.drop_object(oid);
            return Err(FragmentError::BufferFull { object_id: oid }.into());
        }
        if let Some(p) = self.partial.get_mut(&oid) {
            p.data.extend_from_slice(&f.blob);
            p.next_fragment = p.next_fragment.saturating_add(1);
        }
        self.buffered = self.buffered.saturating_add(len);
        if f.end {
            let done = self
                .partial
                .remove(&oid)
                .map(|p| p.data)
                .unwrap_or_default();
            self.buffered = self.buffered.saturating_sub(done.len());
            return Ok(Some(done));
        }
        Ok(None)
    }

    /// Feed raw bytes holding any number of fragments; returns the messages they complete.
    pub fn push_bytes(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
        let mut out = Vec::new();
        for f in decode_fragments(data)? {
            if let Some(m) = self.push(f)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Messages currently partially received.
    pub fn in_flight(&self) -> usize {
        self.partial.len()
    }

    fn reserve(&mut self, oid: u64, len: usize) -> Result<(), ProtocolError> {
        if self.buffered.saturating_add(len) > MAX_BUFFERED_BYTES {
            return Err(FragmentError::BufferFull { object_id: oid }.into());
        }
        self.buffered = self.buffered.saturating_add(len);
        Ok(())
    }

    fn drop_object(&mut self, oid: u64) {
        if let Some(p) = self.partial.remove(&oid) {
            self.buffered = self.buffered.saturating_sub(p.data.len());
        }
    }
}

fn too_big(oid: u64) -> ProtocolError {
    FragmentError::TooBig { object_id: oid }.into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_single_and_multi() {
        let msg: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let frags = fragment_message(7, &msg, 300);
        assert_eq!(frags.len(), 4);
        assert!(frags[0].start && !frags[0].end);
        assert!(frags[3].end && !frags[3].start);
        let bytes: Vec<u8> = frags.iter().flat_map(Fragment::encode).collect();
        let mut r = Reassembler::new();
        let out = r.push_bytes(&bytes).unwrap();
        assert_eq!(out, vec![msg]);
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn header_layout_matches_notes() {
        let f = Fragment {
            object_id: 4,
            fragment_id: 0,
            start: true,
            end: true,
            blob: vec![0u8; 0x37],
        };
        let e = f.encode();
        assert_eq!(&e[..8], &[0, 0, 0, 0, 0, 0, 0, 4]);
        assert_eq!(&e[8..16], &[0; 8]);
        assert_eq!(e[16], 3);
        assert_eq!(&e[17..21], &[0, 0, 0, 0x37]);
    }

    #[test]
    fn refuses_out_of_order_duplicate_and_orphans() {
        let frags = fragment_message(1, &[1, 2, 3, 4, 5, 6], 2);
        let mut r = Reassembler::new();
        assert!(r.push(frags[0].clone()).unwrap().is_none());
        assert!(r.push(frags[2].clone()).is_err());
        let mut r = Reassembler::new();
        r.push(frags[0].clone()).unwrap();
        r.push(frags[1].clone()).unwrap();
        assert!(r.push(frags[1].clone()).is_err());
        let mut r = Reassembler::new();
        assert!(r.push(frags[1].clone()).is_err());
        let mut r = Reassembler::new();
        r.push(frags[0].clone()).unwrap();
        assert!(r.push(frags[0].clone()).is_err());
    }

    #[test]
    fn refuses_truncated_and_bad_flags() {
        assert!(decode_fragments(&[0; 10]).is_err());
        let mut e = Fragment {
            object_id: 1,
            fragment_id: 0,
            start: true,
            end: true,
            blob: vec![1, 2],
        }
        .encode();
        e.pop();
        assert!(decode_fragments(&e).is_err());
        let mut e = Fragment {
            object_id: 1,
            fragment_id: 0,
            start: true,
            end: true,
            blob: vec![],
        }
        .encode();
        e[16] = 0x7;
        assert!(decode_fragments(&e).is_err());
    }

    #[test]
    fn limits_objects_in_flight() {
        let mut r = Reassembler::new();
        for oid in 0..MAX_OBJECTS_IN_FLIGHT as u64 {
            r.push(Fragment {
                object_id: oid,
                fragment_id: 0,
                start: true,
                end: false,
                blob: vec![0],
            })
            .unwrap();
        }
        assert!(r
            .push(Fragment {
                object_id: 999,
                fragment_id: 0,
                start: true,
                end: false,
                blob: vec![0]
            })
            .is_err());
    }

    #[test]
    fn limits_message_size_and_buffered_bytes() {
        // One message over MAX_MESSAGE_SIZE, sent in 1 MiB fragments: refused at the fragment
        // that crosses the limit, and the partial message is dropped.
        let chunk = vec![b'x'; 1024 * 1024];
        let mut r = Reassembler::new();
        let mut refused_at = None;
        for i in 0..=(MAX_MESSAGE_SIZE / chunk.len()) as u64 {
            let f = Fragment {
                object_id: 1,
                fragment_id: i,
                start: i == 0,
                end: false,
                blob: chunk.clone(),
            };
            if r.push(f).is_err() {
                refused_at = Some(i);
                break;
            }
        }
        assert_eq!(refused_at, Some((MAX_MESSAGE_SIZE / chunk.len()) as u64));
        assert_eq!(r.in_flight(), 0);
        // A single fragment over the limit is refused at once.
        let big = Fragment {
            object_id: 2,
            fragment_id: 0,
            start: true,
            end: true,
            blob: vec![0; MAX_MESSAGE_SIZE + 1],
        };
        assert!(r.push(big).is_err());
        // Several partial messages together cannot buffer more than MAX_BUFFERED_BYTES.
        let mut r = Reassembler::new();
        let per = MAX_MESSAGE_SIZE - 1;
        let mut total = 0usize;
        let mut refused = false;
        for oid in 0..4u64 {
            let f = Fragment {
                object_id: oid,
                fragment_id: 0,
                start: true,
                end: false,
                blob: vec![0; per],
            };
            match r.push(f) {
                Ok(_) => total += per,
                Err(e) => {
                    assert!(e.to_string().contains("buffered"), "{e}");
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused);
        assert!(total <= MAX_BUFFERED_BYTES, "{total}");
    }

    #[test]
    fn blob_size_from_envelope() {
        assert_eq!(max_blob_for_envelope(512_000), MAX_SEND_BLOB);
        let b = max_blob_for_envelope(8192);
        assert!((MIN_SEND_BLOB..8192).contains(&b));
        // base64 of the blob plus header fits in what is left of the envelope
        assert!((b + FRAGMENT_HEADER_LEN).div_ceil(3) * 4 + ENVELOPE_OVERHEAD <= 8192);
        assert_eq!(max_blob_for_envelope(0), MIN_SEND_BLOB);
    }
}
