//! Response frames. The response opcode says how the request ended; for
//! `RESPONSE_OK` the body's layout is chosen by the *request's* opcode,
//! which the client knows from the request id.

use crate::codec::{
    body, Blob, Body, BoolF, Key, OptValueF, Reader, Seq, SeqF, Text16, Text8, Value, Writer, I64F, U16F, U32F, U64F,
    U8F,
};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::opcode::{OpClass, Opcode};
use crate::payload::KeyValue;
use crate::status::ErrorCode;

body! {
    /// `RESPONSE_OK` to `HELLO`.
    pub struct HelloAck {
        /// The version both sides will speak.
        pub version: u8 = U8F,
        /// Features both sides understand.
        pub features: u64 = U64F,
        /// The answering node.
        pub node_id: u64 = U64F,
        /// The client id to stamp on sequenced writes.
        pub client_id: u64 = U64F,
        /// Largest payload this server accepts.
        pub payload_max_bytes: u32 = U32F,
        /// Most requests this server keeps in flight per connection.
        pub in_flight_max: u32 = U32F,
    }
}

body! {
    /// A page of map entries; `cursor` 0 means the scan is complete.
    pub struct ScanPage<'a> {
        /// Cursor for the next page.
        pub cursor: u64 = U64F,
        /// Entries of this page.
        pub entries: Seq<'a, KeyValue<'a>> = SeqF<KeyValue<'a>>,
    }
}

body! {
    /// A page of set members; `cursor` 0 means the listing is complete.
    pub struct MembersPage<'a> {
        /// Cursor for the next page.
        pub cursor: u64 = U64F,
        /// Members of this page.
        pub members: Seq<'a, Key<'a>> = SeqF<Key<'a>>,
    }
}

body! {
    /// The outcome of one batched operation: status 0 and its OK body, or
    /// an error code and a UTF-8 message (no inner length prefix). Read it
    /// with [`BatchResult::outcome`].
    pub struct BatchResult<'a> {
        /// 0 or an [`ErrorCode`].
        pub status: u16 = U16F,
        /// OK body of the operation's opcode, or the error message.
        pub body: &'a [u8] = Blob,
    }
}

impl<'a> BatchResult<'a> {
    /// Decodes the result of a batched operation with opcode `request`:
    /// `Response::Ok` with that opcode's OK body, or `Response::Error`.
    pub fn outcome(&self, request: Opcode, limits: &Limits) -> Result<Response<'a>> {
        if !matches!(request.class(), OpClass::Read | OpClass::Write) {
            return Err(Error::UnexpectedOpcode {
                opcode: request.wire_name(),
                reason: "only data operations are batched",
            });
        }
        if self.status == 0 {
            let shape = OkShape::of(request).ok_or(Error::UnexpectedOpcode {
                opcode: request.wire_name(),
                reason: "not a batchable operation",
            })?;
            return Ok(Response::Ok(OkBody::decode(shape, self.body, limits)?));
        }
        let code = ErrorCode::from_u16(self.status).ok_or(Error::InvalidValue {
            field: "BatchResult.status",
            value: u64::from(self.status),
        })?;
        let message = core::str::from_utf8(self.body).map_err(|_| Error::InvalidUtf8 {
            field: "BatchResult.body",
        })?;
        Ok(Response::Error { code, message })
    }
}

body! {
    /// `RESPONSE_ERROR` body.
    pub struct ErrorBody<'a> {
        /// Human-readable detail.
        pub message: &'a str = Text16,
    }
}

/// `RESPONSE_REDIRECT` body: this node is not the leader, that one is. A
/// node that knows no leader answers `RESPONSE_ERROR` with `NO_LEADER`
/// instead, so a redirect always names a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect<'a> {
    /// The group the request belongs to.
    pub group: u32,
    /// Leader's node id; never 0.
    pub leader_id: u64,
    /// Leader's client address; never empty.
    pub leader_addr: &'a str,
}

body! {
    /// The wire form of [`Redirect`], before its rules are checked.
    pub struct RedirectWire<'a> {
        /// Group.
        pub group: u32 = U32F,
        /// Leader.
        pub leader_id: u64 = U64F,
        /// Address.
        pub leader_addr: &'a str = Text8,
    }
}

impl<'a> Body<'a> for Redirect<'a> {
    fn decode(r: &mut Reader<'a>, limits: &Limits) -> Result<Self> {
        let w = RedirectWire::decode(r, limits)?;
        let redirect = Redirect {
            group: w.group,
            leader_id: w.leader_id,
            leader_addr: w.leader_addr,
        };
        redirect.check()?;
        Ok(redirect)
    }
    fn encoded_len(&self) -> usize {
        self.wire().encoded_len()
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        self.check()?;
        self.wire().encode(w)
    }
}

impl<'a> Redirect<'a> {
    /// A redirect names a leader: a nonzero id and an address.
    fn check(&self) -> Result<()> {
        if self.leader_id == 0 {
            return Err(Error::InvalidValue {
                field: "Redirect.leader_id",
                value: 0,
            });
        }
        if self.leader_addr.is_empty() {
            return Err(Error::FieldLengthOutOfRange {
                field: "Redirect.leader_addr",
                len: 0,
                min: 1,
                max: 255,
            });
        }
        Ok(())
    }

    fn wire(&self) -> RedirectWire<'a> {
        RedirectWire {
            group: self.group,
            leader_id: self.leader_id,
            leader_addr: self.leader_addr,
        }
    }
}

body! {
    /// `RESPONSE_SERVER_BUSY` body.
    pub struct Busy {
        /// Suggested wait before retrying, in milliseconds.
        pub retry_after_ms: u32 = U32F,
    }
}

body! {
    /// `RESPONSE_SEQUENCE_LOST` body.
    pub struct SequenceLost {
        /// Oldest sequence still remembered for this client; the request's
        /// outcome is unknown and it was not applied again.
        pub oldest_retained: u64 = U64F,
    }
}

body! {
    /// One boolean.
    pub struct BoolBody {
        /// The answer.
        pub value: bool = BoolF,
    }
}

body! {
    /// One unsigned count or id.
    pub struct CountBody {
        /// The answer.
        pub value: u64 = U64F,
    }
}

body! {
    /// One signed integer.
    pub struct LongBody {
        /// The answer.
        pub value: i64 = I64F,
    }
}

body! {
    /// An optional value.
    pub struct OptValueBody<'a> {
        /// The value, if any.
        pub value: Option<&'a [u8]> = OptValueF,
    }
}

body! {
    /// A list of values (`QUEUE_DRAIN`).
    pub struct ValuesBody<'a> {
        /// The values.
        pub values: Seq<'a, Value<'a>> = SeqF<Value<'a>>,
    }
}

body! {
    /// Map entries (`MAP_GET_ALL`: the keys that were present).
    pub struct EntriesBody<'a> {
        /// The entries.
        pub entries: Seq<'a, KeyValue<'a>> = SeqF<KeyValue<'a>>,
    }
}

body! {
    /// Batch results, one per operation in order.
    pub struct BatchBody<'a> {
        /// The results.
        pub results: Seq<'a, BatchResult<'a>> = SeqF<BatchResult<'a>>,
    }
}

/// The body of a `RESPONSE_OK`, by the shape its request's opcode answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OkBody<'a> {
    /// Nothing.
    Empty,
    /// A boolean.
    Bool(bool),
    /// A count, size or id.
    Count(u64),
    /// A signed integer (AtomicLong).
    Long(i64),
    /// An optional value.
    Value(Option<&'a [u8]>),
    /// Values.
    Values(Seq<'a, Value<'a>>),
    /// Entries.
    Entries(Seq<'a, KeyValue<'a>>),
    /// A scan page.
    ScanPage(ScanPage<'a>),
    /// A set members page.
    MembersPage(MembersPage<'a>),
    /// Hello acknowledgement.
    HelloAck(HelloAck),
    /// Batch results.
    Batch(Seq<'a, BatchResult<'a>>),
}

/// The OK-body shape each request opcode answers with, or `None` if the
/// opcode is never answered with `RESPONSE_OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OkShape {
    /// [`OkBody::Empty`].
    Empty,
    /// [`OkBody::Bool`].
    Bool,
    /// [`OkBody::Count`].
    Count,
    /// [`OkBody::Long`].
    Long,
    /// [`OkBody::Value`].
    Value,
    /// [`OkBody::Values`].
    Values,
    /// [`OkBody::Entries`].
    Entries,
    /// [`OkBody::ScanPage`].
    ScanPage,
    /// [`OkBody::MembersPage`].
    MembersPage,
    /// [`OkBody::HelloAck`].
    HelloAck,
    /// [`OkBody::Batch`].
    Batch,
}

impl OkShape {
    /// The shape a request opcode's success answer has.
    pub fn of(request: Opcode) -> Option<OkShape> {
        use Opcode::*;
        Some(match request {
            Hello => OkShape::HelloAck,
            Auth | ClusterJoin | ClusterLeave | ClusterTransferLeader | ClusterRecordMember => OkShape::Empty,
            BatchExecute => OkShape::Batch,
            NodeInfo => OkShape::Entries,
            NearCacheSubscribe => OkShape::Count,
            MapPut | MapGet | MapPutIfAbsent | MapReplace => OkShape::Value,
            MapSet | MapPutAll => OkShape::Empty,
            MapDelete | MapCompareAndSet | MapContains | MapDestroy => OkShape::Bool,
            MapSize | MapClear => OkShape::Count,
            MapGetAll => OkShape::Entries,
            MapScan => OkShape::ScanPage,
            QueueOffer | QueueDestroy => OkShape::Bool,
            QueuePoll | QueuePeek => OkShape::Value,
            QueueSize | QueueClear => OkShape::Count,
            QueueDrain => OkShape::Values,
            SetAdd | SetRemove | SetContains | SetDestroy => OkShape::Bool,
            SetMembers => OkShape::MembersPage,
            SetSize | SetClear => OkShape::Count,
            TopicPublish | TopicSubscribe => OkShape::Count,
            TopicUnsubscribe => OkShape::Bool,
            AtomicGet | AtomicAddAndGet | AtomicGetAndAdd | AtomicGetAndSet => OkShape::Long,
            AtomicSet => OkShape::Empty,
            AtomicCompareAndSet | AtomicDestroy => OkShape::Bool,
            ClusterPing => OkShape::Count,
            _ => return None,
        })
    }
}

impl<'a> OkBody<'a> {
    /// The shape of this body.
    pub fn shape(&self) -> OkShape {
        match self {
            OkBody::Empty => OkShape::Empty,
            OkBody::Bool(_) => OkShape::Bool,
            OkBody::Count(_) => OkShape::Count,
            OkBody::Long(_) => OkShape::Long,
            OkBody::Value(_) => OkShape::Value,
            OkBody::Values(_) => OkShape::Values,
            OkBody::Entries(_) => OkShape::Entries,
            OkBody::ScanPage(_) => OkShape::ScanPage,
            OkBody::MembersPage(_) => OkShape::MembersPage,
            OkBody::HelloAck(_) => OkShape::HelloAck,
            OkBody::Batch(_) => OkShape::Batch,
        }
    }

    /// Decodes an OK body of the given shape.
    pub fn decode(shape: OkShape, bytes: &'a [u8], limits: &Limits) -> Result<OkBody<'a>> {
        Ok(match shape {
            OkShape::Empty => {
                Reader::new(bytes).finish()?;
                OkBody::Empty
            }
            OkShape::Bool => OkBody::Bool(BoolBody::decode_all(bytes, limits)?.value),
            OkShape::Count => OkBody::Count(CountBody::decode_all(bytes, limits)?.value),
            OkShape::Long => OkBody::Long(LongBody::decode_all(bytes, limits)?.value),
            OkShape::Value => OkBody::Value(OptValueBody::decode_all(bytes, limits)?.value),
            OkShape::Values => OkBody::Values(ValuesBody::decode_all(bytes, limits)?.values),
            OkShape::Entries => OkBody::Entries(EntriesBody::decode_all(bytes, limits)?.entries),
            OkShape::ScanPage => OkBody::ScanPage(ScanPage::decode_all(bytes, limits)?),
            OkShape::MembersPage => OkBody::MembersPage(MembersPage::decode_all(bytes, limits)?),
            OkShape::HelloAck => OkBody::HelloAck(HelloAck::decode_all(bytes, limits)?),
            OkShape::Batch => OkBody::Batch(BatchBody::decode_all(bytes, limits)?.results),
        })
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            OkBody::Empty => 0,
            OkBody::Bool(_) => 1,
            OkBody::Count(_) | OkBody::Long(_) => 8,
            OkBody::Value(v) => OptValueBody { value: *v }.encoded_len(),
            OkBody::Values(values) => ValuesBody { values: *values }.encoded_len(),
            OkBody::Entries(entries) => EntriesBody { entries: *entries }.encoded_len(),
            OkBody::ScanPage(page) => page.encoded_len(),
            OkBody::MembersPage(page) => page.encoded_len(),
            OkBody::HelloAck(ack) => ack.encoded_len(),
            OkBody::Batch(results) => BatchBody { results: *results }.encoded_len(),
        }
    }

    /// Writes the body.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        match self {
            OkBody::Empty => Ok(()),
            OkBody::Bool(value) => BoolBody { value: *value }.encode(w),
            OkBody::Count(value) => CountBody { value: *value }.encode(w),
            OkBody::Long(value) => LongBody { value: *value }.encode(w),
            OkBody::Value(value) => OptValueBody { value: *value }.encode(w),
            OkBody::Values(values) => ValuesBody { values: *values }.encode(w),
            OkBody::Entries(entries) => EntriesBody { entries: *entries }.encode(w),
            OkBody::ScanPage(page) => page.encode(w),
            OkBody::MembersPage(page) => page.encode(w),
            OkBody::HelloAck(ack) => ack.encode(w),
            OkBody::Batch(results) => BatchBody { results: *results }.encode(w),
        }
    }
}

/// A decoded response frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response<'a> {
    /// `RESPONSE_OK`.
    Ok(OkBody<'a>),
    /// `RESPONSE_ERROR` with its code (from the header's status).
    Error {
        /// Why it failed.
        code: ErrorCode,
        /// Detail.
        message: &'a str,
    },
    /// `RESPONSE_REDIRECT`.
    Redirect(Redirect<'a>),
    /// `RESPONSE_SERVER_BUSY`.
    ServerBusy(Busy),
    /// `RESPONSE_SEQUENCE_LOST`.
    SequenceLost(SequenceLost),
}

impl<'a> Response<'a> {
    /// The response opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Response::Ok(_) => Opcode::ResponseOk,
            Response::Error { .. } => Opcode::ResponseError,
            Response::Redirect(_) => Opcode::ResponseRedirect,
            Response::ServerBusy(_) => Opcode::ResponseServerBusy,
            Response::SequenceLost(_) => Opcode::ResponseSequenceLost,
        }
    }

    /// The header status that goes with it.
    pub fn status(&self) -> ErrorCode {
        match self {
            Response::Ok(_) => ErrorCode::Ok,
            Response::Error { code, .. } => *code,
            Response::Redirect(_) => ErrorCode::NotLeader,
            Response::ServerBusy(_) => ErrorCode::ServerBusy,
            Response::SequenceLost(_) => ErrorCode::SequenceLost,
        }
    }

    /// Decodes a response frame's payload. `request` is the opcode of the
    /// request it answers (the client knows it from the request id).
    pub fn decode(
        opcode: Opcode,
        status: u16,
        request: Opcode,
        bytes: &'a [u8],
        limits: &Limits,
    ) -> Result<Response<'a>> {
        if opcode.class() != OpClass::Response {
            return Err(Error::UnexpectedOpcode {
                opcode: opcode.wire_name(),
                reason: "not a response opcode",
            });
        }
        let expected_status = |want: ErrorCode| {
            if status == want.code() {
                Ok(())
            } else {
                Err(Error::InvalidValue {
                    field: "status",
                    value: u64::from(status),
                })
            }
        };
        Ok(match opcode {
            Opcode::ResponseOk => {
                expected_status(ErrorCode::Ok)?;
                let shape = OkShape::of(request).ok_or(Error::UnexpectedOpcode {
                    opcode: request.wire_name(),
                    reason: "this request is never answered with RESPONSE_OK",
                })?;
                Response::Ok(OkBody::decode(shape, bytes, limits)?)
            }
            Opcode::ResponseError => {
                let code = ErrorCode::from_u16(status)
                    .filter(|c| *c != ErrorCode::Ok)
                    .ok_or(Error::InvalidValue {
                        field: "status",
                        value: u64::from(status),
                    })?;
                Response::Error {
                    code,
                    message: ErrorBody::decode_all(bytes, limits)?.message,
                }
            }
            Opcode::ResponseRedirect => {
                expected_status(ErrorCode::NotLeader)?;
                Response::Redirect(Redirect::decode_all(bytes, limits)?)
            }
            Opcode::ResponseServerBusy => {
                expected_status(ErrorCode::ServerBusy)?;
                Response::ServerBusy(Busy::decode_all(bytes, limits)?)
            }
            _ => {
                expected_status(ErrorCode::SequenceLost)?;
                Response::SequenceLost(SequenceLost::decode_all(bytes, limits)?)
            }
        })
    }

    /// Encoded payload size in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Response::Ok(body) => body.encoded_len(),
            Response::Error { message, .. } => ErrorBody { message }.encoded_len(),
            Response::Redirect(r) => r.encoded_len(),
            Response::ServerBusy(b) => b.encoded_len(),
            Response::SequenceLost(s) => s.encoded_len(),
        }
    }

    /// Writes the payload.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        match self {
            Response::Ok(body) => body.encode(w),
            Response::Error { message, .. } => ErrorBody { message }.encode(w),
            Response::Redirect(r) => r.encode(w),
            Response::ServerBusy(b) => b.encode(w),
            Response::SequenceLost(s) => s.encode(w),
        }
    }
}
