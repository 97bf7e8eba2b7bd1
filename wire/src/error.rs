//! The wire crate's one error type.
//!
//! Every fault a peer can cause by sending bytes has a variant here that names
//! it, and every variant maps to an [`ErrorCode`] so the daemon can answer a
//! malformed request with a readable `RESPONSE_ERROR` instead of dropping it.

use crate::status::ErrorCode;

/// Result alias used throughout the wire crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// A decoding, framing or encoding fault.
///
/// Field names are `&'static str` so an error never allocates and always says
/// which part of a frame was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The first two bytes of a frame were not the protocol magic.
    #[error("bad magic: expected {expected:02x?}, found {found:02x?}")]
    BadMagic {
        /// The magic this build speaks.
        expected: [u8; 2],
        /// What the peer sent.
        found: [u8; 2],
    },
    /// The header's protocol version is outside the range this build speaks.
    #[error("unsupported protocol version {version} (this build speaks {min}..={max})")]
    UnsupportedVersion {
        /// The version in the header.
        version: u8,
        /// Lowest version understood.
        min: u8,
        /// Highest version understood.
        max: u8,
    },
    /// The header declares a payload larger than the configured maximum.
    #[error("frame too large: payload of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Declared payload length.
        len: u64,
        /// Configured maximum.
        max: u64,
    },
    /// Fewer bytes are present than a field or frame needs.
    #[error("truncated {field}: needed {needed} bytes, {available} available")]
    Truncated {
        /// What was being read.
        field: &'static str,
        /// Bytes required.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The header names an opcode this build does not know.
    #[error("unknown opcode 0x{0:04x}")]
    UnknownOpcode(u16),
    /// The header's checksum does not match its bytes.
    #[error("bad header checksum: computed 0x{computed:08x}, header says 0x{stored:08x}")]
    BadChecksum {
        /// CRC32 of the header bytes as received.
        computed: u32,
        /// The checksum field.
        stored: u32,
    },
    /// A reserved bit or byte is not zero.
    #[error("reserved bits set in {field}: 0x{bits:x}")]
    ReservedBitsSet {
        /// Which header field.
        field: &'static str,
        /// The offending bits.
        bits: u64,
    },
    /// A length or count is outside the range allowed for its field.
    #[error("{field} length {len} is out of range (allowed {min}..={max})")]
    FieldLengthOutOfRange {
        /// Which field.
        field: &'static str,
        /// The length found (or asked to encode).
        len: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A text field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// A field holds a value outside its domain (a boolean of 7, say).
    #[error("invalid value {value} for {field}")]
    InvalidValue {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// Bytes remain after the last field of a payload.
    #[error("{count} trailing bytes after the payload")]
    TrailingBytes {
        /// How many bytes were left over.
        count: u64,
    },
    /// The opcode is known but this build does not implement it yet.
    #[error("opcode {0} is not supported by this build")]
    Unsupported(&'static str),
    /// The opcode is valid but not allowed in this position (a response
    /// opcode where a request was expected, say).
    #[error("opcode {opcode} is not valid here: {reason}")]
    UnexpectedOpcode {
        /// The opcode's wire name.
        opcode: &'static str,
        /// Why it is not accepted.
        reason: &'static str,
    },
    /// An output buffer is too small for the frame being encoded.
    #[error("output buffer too small: needed {needed} bytes, {available} available")]
    BufferTooSmall {
        /// Bytes the encoding needs.
        needed: u64,
        /// Bytes the buffer has.
        available: u64,
    },
}

impl Error {
    /// The status code a server sends back for this fault.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::BadMagic { .. } | Error::ReservedBitsSet { .. } => ErrorCode::Malformed,
            Error::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Error::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Error::Truncated { .. }
            | Error::InvalidUtf8 { .. }
            | Error::InvalidValue { .. }
            | Error::TrailingBytes { .. }
            | Error::UnexpectedOpcode { .. } => ErrorCode::Malformed,
            Error::UnknownOpcode(_) => ErrorCode::UnknownOpcode,
            Error::BadChecksum { .. } => ErrorCode::BadChecksum,
            Error::FieldLengthOutOfRange { .. } => ErrorCode::BadFieldLength,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::BufferTooSmall { .. } => ErrorCode::Internal,
        }
    }
}
