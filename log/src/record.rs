//! One log record.
//!
//! ```text
//! offset size field
//!      0    4 payload_len   little-endian
//!      4    4 crc32         CRC32 (IEEE) of bytes 0..4 and 8..40+payload_len
//!      8    1 kind          see RecordKind
//!      9    7 reserved      zero
//!     16    8 term
//!     24    8 index
//!     32    8 timestamp_ms  the leader's clock when it appended the entry
//!     40    n payload
//! ```
//! The timestamp travels with the entry (it is also in the Raft
//! `AppendEntries` entry) so every replica judges TTL expiry by the same
//! clock reading.
//! The checksum covers the length as well as the body, so a torn or garbled
//! length is caught instead of sending the reader off by a wrong amount.
//! Preallocated segment space is zero, and an all-zero header is never a
//! valid record (the CRC of a zero header is not zero), so a reader tells
//! "end of written records" from corruption.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of [`RecordHeader`] in bytes.
pub const RECORD_HEADER_LEN: usize = 40;

/// The fixed header before every record's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RecordHeader {
    payload_len: U32,
    crc: U32,
    kind: u8,
    reserved: [u8; 7],
    term: U64,
    index: U64,
    timestamp_ms: U64,
}

const _: () = assert!(size_of::<RecordHeader>() == RECORD_HEADER_LEN);

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A normal entry: a client frame.
    Normal = 0,
    /// A membership change.
    ConfChange = 1,
    /// The no-op a new leader appends at the start of its term.
    Noop = 2,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<RecordKind> {
        match v {
            0 => Some(RecordKind::Normal),
            1 => Some(RecordKind::ConfChange),
            2 => Some(RecordKind::Noop),
            _ => None,
        }
    }
}

/// A record viewed in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// What it holds.
    pub kind: RecordKind,
    /// Raft term.
    pub term: u64,
    /// Raft index.
    pub index: u64,
    /// The leader's clock at append, in ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The entry bytes.
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Bytes the record occupies.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN + self.payload.len()
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The header is all zero: nothing was written here.
    #[error("no record: zeroed space")]
    Empty,
    /// The bytes end before the header or payload does.
    #[error("record truncated: needs {needed} bytes, {available} present")]
    Truncated {
        /// Bytes the record needs.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The checksum does not match.
    #[error("record checksum mismatch: computed 0x{computed:08x}, stored 0x{stored:08x}")]
    BadChecksum {
        /// CRC of the bytes present.
        computed: u32,
        /// The stored CRC.
        stored: u32,
    },
    /// The checksum matched but a field is invalid: written by a newer
    /// version, or a bug.
    #[error("invalid record field {field}: {value}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The output buffer cannot hold the record.
    #[error("record of {needed} bytes does not fit in {available}")]
    NoRoom {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[0..4]);
    h.update(&header[8..RECORD_HEADER_LEN]);
    h.update(payload);
    h.finalize()
}

/// The header bytes of `record`, checksum included: what goes before its
/// payload on disk.
pub fn encode_header(record: &Record<'_>) -> Result<[u8; RECORD_HEADER_LEN], RecordError> {
    let payload_len = u32::try_from(record.payload.len()).map_err(|_| RecordError::NoRoom {
        needed: record.encoded_len() as u64,
        available: u64::from(u32::MAX),
    })?;
    let mut header = RecordHeader {
        payload_len: U32::new(payload_len),
        crc: U32::new(0),
        kind: record.kind as u8,
        reserved: [0; 7],
        term: U64::new(record.term),
        index: U64::new(record.index),
        timestamp_ms: U64::new(record.timestamp_ms),
    };
    header.crc = U32::new(checksum(header.as_bytes(), record.payload));
    let mut out = [0u8; RECORD_HEADER_LEN];
    out.copy_from_slice(header.as_bytes());
    Ok(out)
}

/// Writes a record into `out` and answers its length. The payload is copied
/// once, here.
pub fn encode_record(out: &mut [u8], record: &Record<'_>) -> Result<usize, RecordError> {
    let total = record.encoded_len();
    let header = encode_header(record)?;
    let Some(dst) = out.get_mut(..total) else {
        return Err(RecordError::NoRoom {
            needed: total as u64,
            available: out.len() as u64,
        });
    };
    let (head, body) = dst.split_at_mut(RECORD_HEADER_LEN);
    head.copy_from_slice(&header);
    body.copy_from_slice(record.payload);
    Ok(total)
}

/// Whether every byte is zero. Works a page at a time with a reduction
/// the compiler vectorises: recovery checks whole segment tails with it.
pub(crate) fn is_zeroed(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Reads the record at the start of `bytes`, verifying its checksum before
/// any field is trusted (beyond the length, which is bounded by the bytes
/// present).
pub fn decode_record(bytes: &[u8]) -> Result<Record<'_>, RecordError> {
    let (header, rest) = RecordHeader::ref_from_prefix(bytes).map_err(|_| RecordError::Truncated {
        needed: RECORD_HEADER_LEN as u64,
        available: bytes.len() as u64,
    })?;
    if is_zeroed(header.as_bytes()) {
        return Err(RecordError::Empty);
    }
    let len = header.payload_len.get() as usize;
    let Some(payload) = rest.get(..len) else {
        return Err(RecordError::Truncated {
            needed: (RECORD_HEADER_LEN + len) as u64,
            available: bytes.len() as u64,
        });
    };
    let computed = checksum(header.as_bytes(), payload);
    if computed != header.crc.get() {
        return Err(RecordError::BadChecksum {
            computed,
            stored: header.crc.get(),
        });
    }
    if header.reserved != [0; 7] {
        return Err(RecordError::InvalidField {
            field: "reserved",
            value: header.reserved.iter().fold(0, |acc, &b| acc << 8 | u64::from(b)),
        });
    }
    let kind = RecordKind::from_u8(header.kind).ok_or(RecordError::InvalidField {
        field: "kind",
        value: u64::from(header.kind),
    })?;
    Ok(Record {
        kind,
        term: header.term.get(),
        index: header.index.get(),
        timestamp_ms: header.timestamp_ms.get(),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let record = Record {
            kind: RecordKind::Normal,
            term: 7,
            index: 42,
            timestamp_ms: 1_764_000_000_000,
            payload: b"LC frame bytes",
        };
        let mut out = vec![0u8; record.encoded_len()];
        assert_eq!(encode_record(&mut out, &record).unwrap(), out.len());
        out
    }

    #[test]
    fn round_trip_in_place() {
        let bytes = sample();
        let r = decode_record(&bytes).unwrap();
        assert_eq!(
            (r.kind, r.term, r.index, r.timestamp_ms, r.payload),
            (RecordKind::Normal, 7, 42, 1_764_000_000_000, &b"LC frame bytes"[..])
        );
        assert!(
            bytes.as_ptr_range().contains(&r.payload.as_ptr()),
            "payload must be a view"
        );
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let good = sample();
        for bit in 0..good.len() * 8 {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&b).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let good = sample();
        for n in 0..good.len() {
            assert!(
                matches!(decode_record(&good[..n]), Err(RecordError::Truncated { .. })),
                "truncated to {n}"
            );
        }
    }

    #[test]
    fn zeroed_space_is_empty_not_corrupt() {
        assert_eq!(decode_record(&[0u8; 64]), Err(RecordError::Empty));
    }

    #[test]
    fn no_room_is_an_error() {
        let record = Record {
            kind: RecordKind::Noop,
            term: 1,
            index: 1,
            timestamp_ms: 0,
            payload: b"",
        };
        let mut out = [0u8; RECORD_HEADER_LEN - 1];
        assert!(matches!(
            encode_record(&mut out, &record),
            Err(RecordError::NoRoom { .. })
        ));
    }
}
