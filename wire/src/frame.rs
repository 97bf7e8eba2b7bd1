//! Whole frames: recognising one in a byte stream, the incremental
//! [`Framer`] over a fixed receive buffer, and encoding a frame into a
//! caller's buffer.

use zerocopy::{FromBytes, IntoBytes};

use crate::codec::Writer;
use crate::error::{Error, Result};
use crate::header::{Flags, FrameHeader, HeaderFields, Sequence, HEADER_LEN, SEQUENCE_LEN};
use crate::limits::Limits;
use crate::opcode::{OpClass, Opcode};
use crate::payload::Payload;
use crate::response::Response;

/// A complete, validated frame borrowed from a receive buffer. It can only
/// be obtained from [`parse_frame`] or a [`Framer`], so holding one proves
/// the header passed every check and the whole payload is present.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    header: &'a FrameHeader,
    opcode: Opcode,
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The header, viewed in place.
    pub fn header(&self) -> &'a FrameHeader {
        self.header
    }

    /// The validated opcode.
    pub fn opcode(&self) -> Opcode {
        self.opcode
    }

    /// The request id.
    pub fn request_id(&self) -> u64 {
        self.header.request_id()
    }

    /// The whole frame, header included: what a write proposes to the log.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The payload, including the sequence prefix if there is one.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The sequence prefix of a [`Flags::SEQUENCED`] frame.
    pub fn sequence(&self) -> Option<&'a Sequence> {
        if self.header.flags().contains(Flags::SEQUENCED) {
            // Frame construction checked the payload holds the prefix.
            Sequence::ref_from_prefix(self.payload()).ok().map(|(s, _)| s)
        } else {
            None
        }
    }

    /// The payload after any sequence prefix: what the opcode's layout
    /// describes.
    pub fn body(&self) -> &'a [u8] {
        if self.header.flags().contains(Flags::SEQUENCED) {
            &self.payload()[SEQUENCE_LEN..]
        } else {
            self.payload()
        }
    }

    /// Decodes the body as a request, push, Raft or cluster payload.
    pub fn decode(&self, limits: &Limits) -> Result<Payload<'a>> {
        Payload::decode(self.opcode, self.body(), limits)
    }

    /// Decodes the body as a response to a request with opcode `request`.
    pub fn decode_response(&self, request: Opcode, limits: &Limits) -> Result<Response<'a>> {
        Response::decode(self.opcode, self.header.status(), request, self.body(), limits)
    }
}

impl<'a> Frame<'a> {
    /// Views bytes that [`parse_frame`] already accepted as a frame.
    fn from_accepted(bytes: &'a [u8], opcode: Opcode) -> Result<Frame<'a>> {
        let (header, _) = FrameHeader::ref_from_prefix(bytes).map_err(|_| Error::Truncated {
            field: "frame header",
            needed: HEADER_LEN as u64,
            available: bytes.len() as u64,
        })?;
        Ok(Frame { header, opcode, bytes })
    }
}

/// What [`parse_frame`] found at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub enum Parsed<'a> {
    /// A complete frame of `frame.bytes().len()` bytes.
    Frame(Frame<'a>),
    /// More bytes are needed: the frame is `total` bytes long (or at least
    /// a header when the header itself is incomplete).
    Incomplete {
        /// Bytes the frame needs in all, as far as is known.
        total: usize,
    },
}

/// Recognises the frame at the start of `buf`. The header is validated as
/// soon as its 32 bytes are present, so a bad or oversized frame is refused
/// before its body arrives.
pub fn parse_frame<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<'a>> {
    if buf.len() < HEADER_LEN {
        return Ok(Parsed::Incomplete { total: HEADER_LEN });
    }
    let (header, opcode) = FrameHeader::validate(buf, limits)?;
    let payload_len = header.payload_len() as usize;
    if header.flags().contains(Flags::SEQUENCED) && payload_len < SEQUENCE_LEN {
        return Err(Error::FieldLengthOutOfRange {
            field: "payload of a sequenced frame",
            len: payload_len as u64,
            min: SEQUENCE_LEN as u64,
            max: u64::from(limits.payload_max_bytes),
        });
    }
    let total = HEADER_LEN + payload_len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete { total });
    }
    Ok(Parsed::Frame(Frame {
        header,
        opcode,
        bytes: &buf[..total],
    }))
}

/// An incremental framer over a fixed receive buffer.
///
/// The owner reads from a socket into [`Framer::spare_mut`], reports the
/// count with [`Framer::filled`], then takes frames with
/// [`Framer::next_frame`] until it answers `None`. Frames are views into the
/// buffer; nothing is copied except when a partial frame is moved to the
/// front to make room (at most one frame's bytes, once).
///
/// The buffer holds at least one maximal frame, so a valid frame always
/// fits; the framer never allocates.
///
/// Every error the framer returns is fatal to the connection: either the
/// stream is out of sync (bad magic, bad checksum) or the peer broke a rule
/// a correct sender never breaks (reserved bits, an oversized frame). The
/// framer returns the same error on every later call and accepts no more
/// input. A server answers one `RESPONSE_ERROR` with request id 0, since a
/// rejected header's request id cannot be trusted, and closes. Errors from
/// decoding a frame's payload ([`Frame::decode`]) are not fatal: the next
/// frame starts where the trusted header said, so the server answers that
/// request with `RESPONSE_ERROR` and carries on.
#[derive(Debug)]
pub struct Framer<B> {
    buf: B,
    start: usize,
    end: usize,
    limits: Limits,
    failed: Option<Error>,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Framer<B> {
    /// A framer over `buf`, which must hold a maximal frame under `limits`.
    pub fn new(buf: B, limits: Limits) -> Result<Framer<B>> {
        let need = limits.frame_max_bytes();
        let have = buf.as_ref().len();
        if have < need {
            return Err(Error::BufferTooSmall {
                needed: need as u64,
                available: have as u64,
            });
        }
        Ok(Framer {
            buf,
            start: 0,
            end: 0,
            limits,
            failed: None,
        })
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Where the next read should land. Never empty while the framer is
    /// healthy: when the tail is full, the unconsumed bytes move to the front.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.as_ref().len() && self.start > 0 {
            let (start, end) = (self.start, self.end);
            self.buf.as_mut().copy_within(start..end, 0);
            self.start = 0;
            self.end = end - start;
        }
        let end = self.end;
        &mut self.buf.as_mut()[end..]
    }

    /// Records that `n` bytes were written into [`Framer::spare_mut`].
    pub fn filled(&mut self, n: usize) {
        let cap = self.buf.as_ref().len();
        assert!(
            n <= cap - self.end,
            "filled({n}) beyond the spare {} bytes",
            cap - self.end
        );
        self.end += n;
    }

    /// Copies as much of `data` as fits and answers how much that was.
    /// Callers that own a socket should read into [`Framer::spare_mut`]
    /// instead; this serves tests and in-memory transports.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        let spare = self.spare_mut();
        let n = data.len().min(spare.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.filled(n);
        n
    }

    /// The next complete frame, `None` if more bytes are needed, or the
    /// error that desynchronised the stream (returned again on every call).
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let (start, end) = (self.start, self.end);
        let found = match parse_frame(&self.buf.as_ref()[start..end], &self.limits) {
            Ok(Parsed::Incomplete { .. }) => return Ok(None),
            Ok(Parsed::Frame(frame)) => (frame.bytes.len(), frame.opcode),
            Err(err) => {
                self.failed = Some(err.clone());
                return Err(err);
            }
        };
        let (len, opcode) = found;
        self.start += len;
        Frame::from_accepted(&self.buf.as_ref()[start..start + len], opcode).map(Some)
    }

    /// Call at end of stream: an error if a partial frame is left over.
    pub fn finish(&self) -> Result<()> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let left = self.buffered();
        if left == 0 {
            return Ok(());
        }
        let needed = match parse_frame(&self.buf.as_ref()[self.start..self.end], &self.limits) {
            Ok(Parsed::Incomplete { total }) => total,
            _ => left,
        };
        Err(Error::Truncated {
            field: "frame at end of stream",
            needed: needed as u64,
            available: left as u64,
        })
    }
}

/// Anything that can be a frame's payload.
pub trait FramePayload {
    /// Encoded size in bytes.
    fn encoded_len(&self) -> usize;
    /// Writes the payload.
    fn encode(&self, w: &mut Writer<'_>) -> Result<()>;
}

impl FramePayload for Payload<'_> {
    fn encoded_len(&self) -> usize {
        Payload::encoded_len(self)
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        Payload::encode(self, w)
    }
}

impl FramePayload for Response<'_> {
    fn encoded_len(&self) -> usize {
        Response::encoded_len(self)
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        Response::encode(self, w)
    }
}

/// Size of the frame [`encode_frame`] would write.
pub fn frame_len(sequence: Option<&Sequence>, payload: &impl FramePayload) -> usize {
    HEADER_LEN + sequence.map_or(0, |_| SEQUENCE_LEN) + payload.encoded_len()
}

/// Writes a sealed frame into `out` and answers its length. With a
/// `sequence`, [`Flags::SEQUENCED`] is set and the prefix written. The
/// buffer is never grown: too small is [`Error::BufferTooSmall`].
pub fn encode_frame(
    out: &mut [u8],
    fields: &HeaderFields,
    sequence: Option<&Sequence>,
    payload: &impl FramePayload,
) -> Result<usize> {
    let total = frame_len(sequence, payload);
    if total > out.len() {
        return Err(Error::BufferTooSmall {
            needed: total as u64,
            available: out.len() as u64,
        });
    }
    let payload_len = u32::try_from(total - HEADER_LEN).map_err(|_| Error::FrameTooLarge {
        len: (total - HEADER_LEN) as u64,
        max: u64::from(u32::MAX),
    })?;
    let mut fields = *fields;
    if fields.flags.contains(Flags::SEQUENCED) && sequence.is_none() {
        return Err(Error::InvalidValue {
            field: "flags: SEQUENCED without a sequence",
            value: u64::from(fields.flags.bits()),
        });
    }
    if sequence.is_some() {
        fields.flags = fields.flags.with(Flags::SEQUENCED);
    }
    if fields.flags.reserved_bits() != 0 {
        return Err(Error::ReservedBitsSet {
            field: "flags",
            bits: u64::from(fields.flags.reserved_bits()),
        });
    }
    if fields.status != 0 && fields.opcode.class() != OpClass::Response {
        return Err(Error::ReservedBitsSet {
            field: "status of a non-response frame",
            bits: u64::from(fields.status),
        });
    }
    let mut w = Writer::new(&mut out[..total]);
    w.put(FrameHeader::new(&fields, payload_len).as_bytes())?;
    if let Some(seq) = sequence {
        w.put(seq.as_bytes())?;
    }
    payload.encode(&mut w)?;
    debug_assert_eq!(w.position(), total, "encoded_len disagrees with encode");
    Ok(total)
}
