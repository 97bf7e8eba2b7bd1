//! The fixed 32-byte frame header, viewed in place from the receive buffer.
//!
//! ```text
//! offset size field        notes
//!      0    2 magic        b"LC"
//!      2    1 version      protocol version of this frame
//!      3    1 reserved0    must be zero
//!      4    2 flags        see [`Flags`]; unknown bits must be zero
//!      6    2 opcode       see [`Opcode`]
//!      8    2 status       0 on requests; an ErrorCode on non-OK responses
//!     10    2 partition    murmur3_32(key) % 271, or 0 when not key-routed
//!     12    4 payload_len  bytes after the header
//!     16    8 request_id   chosen by the sender, echoed in the response
//!     24    4 reserved1    must be zero
//!     28    4 checksum     CRC32 (IEEE) of bytes 0..28
//! ```
//! All integers are little-endian. The checksum covers the header only, so
//! a header can be trusted (and an oversized frame refused) before its body
//! has arrived.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::opcode::{OpClass, Opcode};

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"LC";
/// The protocol version this build sends.
pub const PROTOCOL_VERSION: u8 = 1;
/// The oldest protocol version this build accepts.
pub const PROTOCOL_VERSION_MIN: u8 = 1;
/// Size of [`FrameHeader`] in bytes.
pub const HEADER_LEN: usize = 32;
/// Offset of the checksum; the checksum covers every byte before it.
const CHECKSUM_OFFSET: usize = 28;

/// Frame flags. Bits outside [`Flags::KNOWN`] are reserved and must be zero.
#[derive(Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(transparent)]
pub struct Flags(U16);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(U16::new(0));
    /// The payload starts with a 16-byte [`Sequence`] (client id, sequence
    /// number) used to apply a retried write exactly once.
    pub const SEQUENCED: Flags = Flags(U16::new(1 << 0));
    /// A read that a follower may answer from its own, possibly stale, state.
    pub const STALE_READ: Flags = Flags(U16::new(1 << 1));
    /// Every defined bit.
    pub const KNOWN: Flags = Flags(U16::new(0b11));

    /// Flags from raw bits (unchecked; validation happens on the header).
    pub const fn from_bits(bits: u16) -> Flags {
        Flags(U16::new(bits))
    }

    /// The raw bits.
    pub fn bits(self) -> u16 {
        self.0.get()
    }

    /// True if every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.bits() & other.bits() == other.bits()
    }

    /// The union of both.
    #[must_use]
    pub fn with(self, other: Flags) -> Flags {
        Flags::from_bits(self.bits() | other.bits())
    }

    /// Bits that are set but not defined.
    pub fn reserved_bits(self) -> u16 {
        self.bits() & !Flags::KNOWN.bits()
    }
}

impl core::fmt::Debug for Flags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Flags({:#06b})", self.bits())
    }
}

/// The client id and sequence number that lead the payload of a
/// [`Flags::SEQUENCED`] frame. The replicated state machine remembers the
/// latest sequence applied per client, so a retry is answered, not re-applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Sequence {
    client_id: U64,
    sequence: U64,
}

/// Size of [`Sequence`] in bytes.
pub const SEQUENCE_LEN: usize = 16;
const _: () = assert!(size_of::<Sequence>() == SEQUENCE_LEN);

impl Sequence {
    /// A sequence prefix.
    pub fn new(client_id: u64, sequence: u64) -> Sequence {
        Sequence {
            client_id: U64::new(client_id),
            sequence: U64::new(sequence),
        }
    }

    /// The client's id, chosen at hello and stable across reconnects.
    pub fn client_id(&self) -> u64 {
        self.client_id.get()
    }

    /// Increases by one per write the client issues.
    pub fn sequence(&self) -> u64 {
        self.sequence.get()
    }
}

/// The frame header. Only [`FrameHeader::validate`] hands out a reference
/// from received bytes, and it checks every field first.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FrameHeader {
    magic: [u8; 2],
    version: u8,
    reserved0: u8,
    flags: Flags,
    opcode: U16,
    status: U16,
    partition: U16,
    payload_len: U32,
    request_id: U64,
    reserved1: [u8; 4],
    checksum: U32,
}

const _: () = assert!(size_of::<FrameHeader>() == HEADER_LEN);
const _: () = assert!(align_of::<FrameHeader>() == 1);

/// The fields a sender chooses; [`FrameHeader::new`] seals them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFields {
    /// What the frame is.
    pub opcode: Opcode,
    /// Flags; only defined bits may be set.
    pub flags: Flags,
    /// An [`crate::ErrorCode`] on non-OK responses, else 0.
    pub status: u16,
    /// Routing partition of the key, or 0.
    pub partition: u16,
    /// Correlates a response with its request.
    pub request_id: u64,
}

impl HeaderFields {
    /// Fields for a request with no flags on partition 0.
    pub fn request(opcode: Opcode, request_id: u64) -> HeaderFields {
        HeaderFields {
            opcode,
            flags: Flags::NONE,
            status: 0,
            partition: 0,
            request_id,
        }
    }
}

impl FrameHeader {
    /// A sealed header: version set, reserved bytes zero, checksum computed.
    pub fn new(fields: &HeaderFields, payload_len: u32) -> FrameHeader {
        let mut header = FrameHeader {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            reserved0: 0,
            flags: fields.flags,
            opcode: U16::new(fields.opcode.code()),
            status: U16::new(fields.status),
            partition: U16::new(fields.partition),
            payload_len: U32::new(payload_len),
            request_id: U64::new(fields.request_id),
            reserved1: [0; 4],
            checksum: U32::new(0),
        };
        header.checksum = U32::new(header.compute_checksum());
        header
    }

    fn compute_checksum(&self) -> u32 {
        crc32fast::hash(&self.as_bytes()[..CHECKSUM_OFFSET])
    }

    /// Views the first [`HEADER_LEN`] bytes of `bytes` as a header and checks
    /// magic, checksum, version, reserved bits, opcode, status and the
    /// declared length against `limits`, in that order. Needs at least
    /// [`HEADER_LEN`] bytes; does not need the payload.
    pub fn validate<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(&'a FrameHeader, Opcode)> {
        let (header, _) = FrameHeader::ref_from_prefix(bytes).map_err(|_| Error::Truncated {
            field: "frame header",
            needed: HEADER_LEN as u64,
            available: bytes.len() as u64,
        })?;
        if header.magic != MAGIC {
            return Err(Error::BadMagic {
                expected: MAGIC,
                found: header.magic,
            });
        }
        let computed = header.compute_checksum();
        if computed != header.checksum.get() {
            return Err(Error::BadChecksum {
                computed,
                stored: header.checksum.get(),
            });
        }
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&header.version) {
            return Err(Error::UnsupportedVersion {
                version: header.version,
                min: PROTOCOL_VERSION_MIN,
                max: PROTOCOL_VERSION,
            });
        }
        if header.reserved0 != 0 || header.reserved1 != [0; 4] {
            let bits = u64::from(header.reserved0) << 32 | u64::from(u32::from_le_bytes(header.reserved1));
            return Err(Error::ReservedBitsSet {
                field: "reserved bytes",
                bits,
            });
        }
        let reserved = header.flags.reserved_bits();
        if reserved != 0 {
            return Err(Error::ReservedBitsSet {
                field: "flags",
                bits: u64::from(reserved),
            });
        }
        let opcode = Opcode::from_u16(header.opcode.get()).ok_or(Error::UnknownOpcode(header.opcode.get()))?;
        if opcode.class() != OpClass::Response && header.status.get() != 0 {
            return Err(Error::ReservedBitsSet {
                field: "status of a non-response frame",
                bits: u64::from(header.status.get()),
            });
        }
        let len = header.payload_len.get();
        if len > limits.payload_max_bytes {
            return Err(Error::FrameTooLarge {
                len: u64::from(len),
                max: u64::from(limits.payload_max_bytes),
            });
        }
        Ok((header, opcode))
    }

    /// Protocol version of this frame.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Frame flags.
    pub fn flags(&self) -> Flags {
        self.flags
    }

    /// Raw opcode value (use the [`Opcode`] returned by validation).
    pub fn opcode_raw(&self) -> u16 {
        self.opcode.get()
    }

    /// Status: 0, or an error code on a non-OK response.
    pub fn status(&self) -> u16 {
        self.status.get()
    }

    /// Routing partition.
    pub fn partition(&self) -> u16 {
        self.partition.get()
    }

    /// Payload length in bytes.
    pub fn payload_len(&self) -> u32 {
        self.payload_len.get()
    }

    /// Request id.
    pub fn request_id(&self) -> u64 {
        self.request_id.get()
    }

    /// The stored checksum.
    pub fn checksum(&self) -> u32 {
        self.checksum.get()
    }
}

impl core::fmt::Debug for FrameHeader {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameHeader")
            .field("version", &self.version)
            .field("flags", &self.flags)
            .field("opcode", &format_args!("{:#06x}", self.opcode.get()))
            .field("status", &self.status.get())
            .field("partition", &self.partition.get())
            .field("payload_len", &self.payload_len.get())
            .field("request_id", &self.request_id.get())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> [u8; HEADER_LEN] {
        let fields = HeaderFields {
            opcode: Opcode::MapGet,
            flags: Flags::STALE_READ,
            status: 0,
            partition: 17,
            request_id: 0x0102_0304_0506_0708,
        };
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(FrameHeader::new(&fields, 9).as_bytes());
        out
    }

    #[test]
    fn layout_is_little_endian_at_documented_offsets() {
        let b = sealed();
        assert_eq!(&b[0..2], b"LC");
        assert_eq!(b[2], PROTOCOL_VERSION);
        assert_eq!(b[3], 0);
        assert_eq!(&b[4..6], &[0b10, 0]);
        assert_eq!(&b[6..8], &Opcode::MapGet.code().to_le_bytes());
        assert_eq!(&b[10..12], &17u16.to_le_bytes());
        assert_eq!(&b[12..16], &9u32.to_le_bytes());
        assert_eq!(&b[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[24..28], &[0; 4]);
        assert_eq!(&b[28..32], &crc32fast::hash(&b[..28]).to_le_bytes());
    }

    #[test]
    fn validate_accepts_sealed_header_in_place() {
        let b = sealed();
        let (h, op) = FrameHeader::validate(&b, &Limits::DEFAULT).unwrap();
        assert_eq!(op, Opcode::MapGet);
        assert_eq!(h.request_id(), 0x0102_0304_0506_0708);
        assert!(
            core::ptr::eq(h.as_bytes().as_ptr(), b.as_ptr()),
            "header must be a view, not a copy"
        );
    }

    /// Rewrites bytes and reseals, so the check under test is the one that fires.
    fn resealed(mut b: [u8; HEADER_LEN], edit: impl FnOnce(&mut [u8; HEADER_LEN])) -> [u8; HEADER_LEN] {
        edit(&mut b);
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn validate_table() {
        let limits = Limits {
            payload_max_bytes: 100,
            ..Limits::DEFAULT
        };
        type Case = (&'static str, fn(&mut [u8; HEADER_LEN]), fn(&Error) -> bool);
        let cases: &[Case] = &[
            ("magic", |b| b[0] = b'X', |e| matches!(e, Error::BadMagic { .. })),
            (
                "version 0",
                |b| b[2] = 0,
                |e| matches!(e, Error::UnsupportedVersion { version: 0, .. }),
            ),
            (
                "version 9",
                |b| b[2] = 9,
                |e| matches!(e, Error::UnsupportedVersion { version: 9, .. }),
            ),
            (
                "reserved0",
                |b| b[3] = 1,
                |e| matches!(e, Error::ReservedBitsSet { .. }),
            ),
            (
                "reserved1",
                |b| b[26] = 4,
                |e| matches!(e, Error::ReservedBitsSet { .. }),
            ),
            (
                "flags",
                |b| b[5] = 0x80,
                |e| {
                    matches!(
                        e,
                        Error::ReservedBitsSet {
                            field: "flags",
                            bits: 0x8000
                        }
                    )
                },
            ),
            (
                "opcode",
                |b| b[6..8].copy_from_slice(&0x0999u16.to_le_bytes()),
                |e| matches!(e, Error::UnknownOpcode(0x0999)),
            ),
            (
                "status on request",
                |b| b[8] = 3,
                |e| matches!(e, Error::ReservedBitsSet { .. }),
            ),
            (
                "too large",
                |b| b[12..16].copy_from_slice(&101u32.to_le_bytes()),
                |e| matches!(e, Error::FrameTooLarge { len: 101, max: 100 }),
            ),
        ];
        for (name, edit, expect) in cases {
            let b = resealed(sealed(), edit);
            let err = FrameHeader::validate(&b, &limits).expect_err(name);
            assert!(expect(&err), "{name}: got {err:?}");
        }
        let b = resealed(sealed(), |b| b[12..16].copy_from_slice(&100u32.to_le_bytes()));
        assert!(
            FrameHeader::validate(&b, &limits).is_ok(),
            "exactly the maximum is allowed"
        );
    }

    #[test]
    fn any_single_bit_flip_is_rejected() {
        let good = sealed();
        for bit in 0..HEADER_LEN * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                FrameHeader::validate(&b, &Limits::DEFAULT).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn short_input_is_truncated_not_a_panic() {
        let b = sealed();
        for n in 0..HEADER_LEN {
            assert!(matches!(
                FrameHeader::validate(&b[..n], &Limits::DEFAULT),
                Err(Error::Truncated { .. })
            ));
        }
    }
}
