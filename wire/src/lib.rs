//! The LoomCache wire protocol.
//!
//! A frame is a fixed 32-byte [`FrameHeader`] followed by a payload whose
//! layout is chosen by the header's [`Opcode`]. Headers are viewed in place
//! from the receive buffer (zerocopy) and carry their own checksum, so a
//! receiver trusts a header, and refuses an oversized or malformed frame,
//! before the body arrives. Payloads decode into borrowed views over the
//! frame bytes without allocating; encoders write into a caller's fixed
//! buffer (a pooled buffer in the daemon) and never grow it. The
//! [`Framer`] turns an arbitrary byte stream into frames.
//!
//! This crate is the protocol only: it does no I/O, owns no buffers, and
//! knows nothing of what the operations mean. Byte layouts, the opcode
//! table and the error codes are documented in `docs/design.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
mod error;
mod frame;
mod header;
mod limits;
mod opcode;
mod partition;
mod payload;
mod response;
mod status;

pub use codec::{Body, Key, Reader, Seq, SeqIter, Value, Writer};
pub use error::{Error, Result};
pub use frame::{encode_frame, frame_len, parse_frame, Frame, FramePayload, Framer, Parsed};
pub use header::{
    Flags, FrameHeader, HeaderFields, Sequence, HEADER_LEN, MAGIC, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, SEQUENCE_LEN,
};
pub use limits::Limits;
pub use opcode::{OpClass, Opcode};
pub use partition::{partition_of, PARTITION_COUNT};
pub use payload::*;
pub use response::{
    BatchResult, Busy, ErrorBody, HelloAck, MembersPage, OkBody, OkShape, Redirect, RedirectWire, Response, ScanPage,
    SequenceLost,
};
pub use status::ErrorCode;
/// Little-endian integer types used in zero-copy list fields.
pub use zerocopy::byteorder::little_endian::{U32 as LeU32, U64 as LeU64};
