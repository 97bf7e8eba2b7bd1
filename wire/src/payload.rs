//! Payload layouts of every request, push, Raft and cluster opcode, and the
//! [`Payload`] enum that decodes one from a frame by opcode.
//!
//! Every struct here borrows the frame bytes: keys, values and names are
//! slices of the receive buffer, lists are walked in place. Field order is
//! encoding order; the layouts are tabulated in `docs/design.md`.

use zerocopy::byteorder::little_endian::{U32, U64};

use crate::codec::{
    body, Blob, Body, BodyF, BoolF, IdsF, Key, KeyF, Name, OptKeyF, Reader, Secret16, Seq, SeqF, Text8, U32sF, ValueF,
    Writer, I64F, U16F, U32F, U64F, U8F,
};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::opcode::{OpClass, Opcode};

// ---- client control ----------------------------------------------------

body! {
    /// `HELLO`: the client's version range and features. The server answers
    /// with the highest common version (see [`crate::HelloAck`]).
    pub struct Hello<'a> {
        /// Lowest protocol version the client speaks.
        pub version_min: u8 = U8F,
        /// Highest protocol version the client speaks.
        pub version_max: u8 = U8F,
        /// Feature bits the client understands.
        pub features: u64 = U64F,
        /// Stable client id used for write deduplication; 0 asks the
        /// server to assign one.
        pub client_id: u64 = U64F,
        /// Free-form client name for logs and `info`.
        pub client_name: &'a str = Text8,
    }
}

body! {
    /// `AUTH`: credentials for a mechanism.
    pub struct Auth<'a> {
        /// 1 = password, 2 = token; others reserved.
        pub mechanism: u8 = U8F,
        /// User or principal name.
        pub identity: &'a str = Text8,
        /// Password or token bytes.
        pub secret: &'a [u8] = Secret16,
    }
}

body! {
    /// `BATCH_EXECUTE`: data operations applied in order. A write batch is
    /// one log entry, so it is applied atomically with respect to other
    /// clients.
    pub struct Batch<'a> {
        /// The operations.
        pub ops: Seq<'a, BatchOp<'a>> = SeqF<BatchOp<'a>>,
    }
}

/// One operation of a batch: a data opcode and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOp<'a> {
    /// A [`OpClass::Read`] or [`OpClass::Write`] opcode.
    pub opcode: Opcode,
    /// That opcode's payload, decoded with [`BatchOp::payload`].
    pub payload: &'a [u8],
}

impl<'a> BatchOp<'a> {
    /// Decodes the operation's payload.
    pub fn payload(&self, limits: &Limits) -> Result<Payload<'a>> {
        Payload::decode(self.opcode, self.payload, limits)
    }
}

impl<'a> Body<'a> for BatchOp<'a> {
    fn decode(r: &mut Reader<'a>, limits: &Limits) -> Result<Self> {
        let raw = r.u16("BatchOp.opcode")?;
        let opcode = Opcode::from_u16(raw).ok_or(Error::UnknownOpcode(raw))?;
        if !matches!(opcode.class(), OpClass::Read | OpClass::Write) {
            return Err(Error::UnexpectedOpcode {
                opcode: opcode.wire_name(),
                reason: "only data operations may be batched",
            });
        }
        let payload = <Blob as crate::codec::Codec<'a>>::read(r, limits, "BatchOp.payload")?;
        Ok(BatchOp { opcode, payload })
    }
    fn encoded_len(&self) -> usize {
        2 + 4 + self.payload.len()
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        <U16F as crate::codec::Codec<'_>>::write(w, &self.opcode.code(), "BatchOp.opcode")?;
        <Blob as crate::codec::Codec<'_>>::write(w, &self.payload, "BatchOp.payload")
    }
}

body! {
    /// `NODE_INFO`: no fields; answered with statistics as entries.
    pub struct NodeInfoRequest {}
}

// ---- data structures ---------------------------------------------------

body! {
    /// A structure addressed by name only (`MAP_SIZE`, `QUEUE_PEEK`,
    /// `TOPIC_SUBSCRIBE`, `ATOMIC_GET`, …).
    pub struct Named<'a> {
        /// Structure name.
        pub name: &'a str = Name,
    }
}

body! {
    /// `MAP_PUT`, `MAP_SET`, `MAP_PUT_IF_ABSENT`, `MAP_REPLACE`.
    pub struct MapWrite<'a> {
        /// Time to live in milliseconds, counted from the leader timestamp of
        /// the log entry that applies the write; 0 = none.
        pub ttl_ms: u64 = U64F,
        /// Map name.
        pub name: &'a str = Name,
        /// Key.
        pub key: &'a [u8] = KeyF,
        /// Value.
        pub value: &'a [u8] = ValueF,
    }
}

body! {
    /// A keyed operation (`MAP_GET`, `MAP_DELETE`, `MAP_CONTAINS`) or a set
    /// member operation (`SET_ADD`, `SET_REMOVE`, `SET_CONTAINS`).
    pub struct Keyed<'a> {
        /// Structure name.
        pub name: &'a str = Name,
        /// Key or member.
        pub key: &'a [u8] = KeyF,
    }
}

body! {
    /// `MAP_COMPARE_AND_SET`.
    pub struct MapCompareAndSet<'a> {
        /// TTL of the new value in milliseconds; 0 = none.
        pub ttl_ms: u64 = U64F,
        /// Map name.
        pub name: &'a str = Name,
        /// Key.
        pub key: &'a [u8] = KeyF,
        /// The value the entry must hold.
        pub expected: &'a [u8] = ValueF,
        /// The value to store.
        pub new: &'a [u8] = ValueF,
    }
}

body! {
    /// `MAP_GET_ALL`.
    pub struct MapGetAll<'a> {
        /// Map name.
        pub name: &'a str = Name,
        /// Keys to read.
        pub keys: Seq<'a, Key<'a>> = SeqF<Key<'a>>,
    }
}

body! {
    /// A key and value, as an item of `MAP_PUT_ALL` and of scan pages.
    pub struct KeyValue<'a> {
        /// Key.
        pub key: &'a [u8] = KeyF,
        /// Value.
        pub value: &'a [u8] = ValueF,
    }
}

body! {
    /// `MAP_PUT_ALL`.
    pub struct MapPutAll<'a> {
        /// TTL for every entry in milliseconds; 0 = none.
        pub ttl_ms: u64 = U64F,
        /// Map name.
        pub name: &'a str = Name,
        /// Entries to store.
        pub entries: Seq<'a, KeyValue<'a>> = SeqF<KeyValue<'a>>,
    }
}

body! {
    /// A cursor-paged listing (`MAP_SCAN`, `SET_MEMBERS`). Cursor 0 starts;
    /// the answer carries the next cursor, 0 when done.
    pub struct Page<'a> {
        /// Structure name.
        pub name: &'a str = Name,
        /// Where to continue.
        pub cursor: u64 = U64F,
        /// Most items to return; 1..=items_max.
        pub page_size: u32 = U32F,
    }
}

body! {
    /// A structure and one value (`QUEUE_OFFER`, `TOPIC_PUBLISH`).
    pub struct NamedValue<'a> {
        /// Structure name.
        pub name: &'a str = Name,
        /// Item or message.
        pub value: &'a [u8] = ValueF,
    }
}

body! {
    /// `QUEUE_POLL`.
    pub struct QueuePoll<'a> {
        /// Queue name.
        pub name: &'a str = Name,
        /// How long to wait for an item, in milliseconds; 0 = answer at once.
        pub wait_ms: u32 = U32F,
    }
}

body! {
    /// `QUEUE_DRAIN`.
    pub struct QueueDrain<'a> {
        /// Queue name.
        pub name: &'a str = Name,
        /// Most items to remove; 1..=items_max.
        pub max_items: u32 = U32F,
    }
}

body! {
    /// An AtomicLong and an operand (`ATOMIC_SET`, `ATOMIC_ADD_AND_GET`,
    /// `ATOMIC_GET_AND_ADD`, `ATOMIC_GET_AND_SET`).
    pub struct NamedLong<'a> {
        /// AtomicLong name.
        pub name: &'a str = Name,
        /// Operand.
        pub value: i64 = I64F,
    }
}

body! {
    /// `ATOMIC_COMPARE_AND_SET`.
    pub struct AtomicCompareAndSet<'a> {
        /// AtomicLong name.
        pub name: &'a str = Name,
        /// The value it must hold.
        pub expected: i64 = I64F,
        /// The value to set.
        pub new: i64 = I64F,
    }
}

body! {
    /// `TOPIC_UNSUBSCRIBE`.
    pub struct Unsubscribe {
        /// Id answered by `TOPIC_SUBSCRIBE`.
        pub subscription_id: u64 = U64F,
    }
}

// ---- server pushes -----------------------------------------------------

body! {
    /// `TOPIC_MESSAGE`, pushed to a subscriber; request id 0.
    pub struct TopicMessage<'a> {
        /// The subscription it is for.
        pub subscription_id: u64 = U64F,
        /// Position in the topic, increasing by one per message.
        pub sequence: u64 = U64F,
        /// Messages dropped for this subscriber since the previous push
        /// because it read too slowly.
        pub dropped: u64 = U64F,
        /// Topic name.
        pub topic: &'a str = Name,
        /// Message.
        pub message: &'a [u8] = ValueF,
    }
}

body! {
    /// `NEAR_CACHE_INVALIDATE`, pushed to near-cache subscribers; request id 0.
    pub struct NearCacheInvalidate<'a> {
        /// Map name.
        pub map: &'a str = Name,
        /// Per-map invalidation sequence; a gap means invalidations were
        /// lost and the whole near cache of this map must be dropped.
        pub sequence: u64 = U64F,
        /// The changed key, or none when the whole map changed (clear).
        pub key: Option<&'a [u8]> = OptKeyF,
    }
}

// ---- Raft --------------------------------------------------------------

body! {
    /// Fields every Raft message starts with.
    pub struct RaftHeader {
        /// Raft group.
        pub group: u32 = U32F,
        /// Sending node.
        pub from: u64 = U64F,
        /// Receiving node.
        pub to: u64 = U64F,
        /// Sender's term.
        pub term: u64 = U64F,
    }
}

body! {
    /// One log entry inside `RAFT_APPEND_ENTRIES`. Its index is implied:
    /// `prev_index + 1 + position`.
    pub struct Entry<'a> {
        /// Term the entry was created in.
        pub term: u64 = U64F,
        /// 0 = normal, 1 = membership change, 2 = no-op.
        pub kind: u8 = U8F,
        /// The leader's wall clock when it appended the entry, in ms since
        /// the Unix epoch. Every replica judges TTL expiry from this, never
        /// from its own clock, so applying the log is deterministic.
        pub timestamp_ms: u64 = U64F,
        /// The entry bytes, unchanged from the client frame.
        pub data: &'a [u8] = Blob,
    }
}

body! {
    /// `RAFT_APPEND_ENTRIES` (Raft §5.3).
    pub struct AppendEntries<'a> {
        /// Common header.
        pub header: RaftHeader = BodyF<RaftHeader>,
        /// Index of the entry before the first one sent.
        pub prev_index: u64 = U64F,
        /// Its term.
        pub prev_term: u64 = U64F,
        /// Leader's commit index.
        pub commit: u64 = U64F,
        /// Entries, possibly none.
        pub entries: Seq<'a, Entry<'a>> = SeqF<Entry<'a>>,
    }
}

body! {
    /// `RAFT_APPEND_ENTRIES_RESPONSE`.
    pub struct AppendEntriesResponse {
        /// Common header.
        pub header: RaftHeader = BodyF<RaftHeader>,
        /// True if `prev_index`/`prev_term` did not match.
        pub reject: bool = BoolF,
        /// On success the last index now matching; on reject the rejected
        /// `prev_index`.
        pub index: u64 = U64F,
        /// On reject, the follower's hint for fast backtracking: an index
        /// at or below which the leader should retry…
        pub hint_index: u64 = U64F,
        /// …and the term of the follower's entry there.
        pub hint_term: u64 = U64F,
    }
}

body! {
    /// `RAFT_VOTE` and `RAFT_PRE_VOTE` (Raft §5.2, §5.4.1).
    pub struct Vote {
        /// Common header; for a pre-vote, the term the sender would use.
        pub header: RaftHeader = BodyF<RaftHeader>,
        /// Candidate's last log index.
        pub last_index: u64 = U64F,
        /// Candidate's last log term.
        pub last_term: u64 = U64F,
        /// Set during leadership transfer: voters ignore their lease.
        pub transfer: bool = BoolF,
    }
}

body! {
    /// `RAFT_VOTE_RESPONSE` and `RAFT_PRE_VOTE_RESPONSE`.
    pub struct VoteResponse {
        /// Common header.
        pub header: RaftHeader = BodyF<RaftHeader>,
        /// Whether the vote is granted.
        pub granted: bool = BoolF,
    }
}

body! {
    /// `RAFT_INSTALL_SNAPSHOT`: one chunk of a snapshot (Raft §7). The
    /// membership is repeated on every chunk so any chunk is self-describing.
    pub struct InstallSnapshot<'a> {
        /// Common header.
        pub header: RaftHeader = BodyF<RaftHeader>,
        /// Last index the snapshot covers.
        pub snapshot_index: u64 = U64F,
        /// Its term.
        pub snapshot_term: u64 = U64F,
        /// Byte offset of this chunk in the snapshot.
        pub offset: u64 = U64F,
        /// Total snapshot size in bytes.
        pub total_len: u64 = U64F,
        /// True on the last chunk.
        pub done: bool = BoolF,
        /// Voters of the configuration at `snapshot_index`.
        pub voters: &'a [U64] = IdsF,
        /// Learners.
        pub learners: &'a [U64] = IdsF,
        /// Outgoing voters while in a joint configuration.
        pub voters_outgoing: &'a [U64] = IdsF,
        /// Learners to add when leaving the joint configuration.
        pub learners_next: &'a [U64] = IdsF,
        /// Chunk bytes.
        pub chunk: &'a [u8] = Blob,
    }
}

body! {
    /// `RAFT_INSTALL_SNAPSHOT_RESPONSE`.
    pub struct InstallSnapshotResponse {
        /// Common header.
        pub header: RaftHeader = BodyF<RaftHeader>,
        /// Snapshot being installed.
        pub snapshot_index: u64 = U64F,
        /// The offset the follower expects next.
        pub next_offset: u64 = U64F,
        /// True if the follower refuses the snapshot (larger than it
        /// accepts, or chunks that do not add up).
        pub reject: bool = BoolF,
    }
}

body! {
    /// `RAFT_TIMEOUT_NOW` (Raft thesis §3.10).
    pub struct TimeoutNow {
        /// Common header.
        pub header: RaftHeader = BodyF<RaftHeader>,
    }
}

body! {
    /// `RAFT_HEARTBEAT`.
    pub struct Heartbeat {
        /// Common header.
        pub header: RaftHeader = BodyF<RaftHeader>,
        /// Commit index the follower may advance to (at most its match).
        pub commit: u64 = U64F,
        /// The leader's heartbeat round, echoed in the response; rounds
        /// acknowledged by a quorum confirm ReadIndex reads and the lease.
        pub context: u64 = U64F,
    }
}

body! {
    /// `RAFT_HEARTBEAT_RESPONSE`.
    pub struct HeartbeatResponse {
        /// Common header.
        pub header: RaftHeader = BodyF<RaftHeader>,
        /// The heartbeat's context.
        pub context: u64 = U64F,
    }
}

// ---- cluster -----------------------------------------------------------

body! {
    /// `CLUSTER_JOIN`.
    pub struct Join<'a> {
        /// The joining node's id.
        pub node_id: u64 = U64F,
        /// Where clients reach it.
        pub client_addr: &'a str = Text8,
        /// Where peers reach it.
        pub peer_addr: &'a str = Text8,
    }
}

body! {
    /// `CLUSTER_LEAVE`.
    pub struct Leave {
        /// The node to remove.
        pub node_id: u64 = U64F,
    }
}

body! {
    /// `CLUSTER_TRANSFER_LEADER`.
    pub struct TransferLeader {
        /// The voter to hand leadership to.
        pub node_id: u64 = U64F,
    }
}

body! {
    /// `CLUSTER_RECORD_MEMBER`: the incarnation of a member's data
    /// directory, as the leader saw it when the member connected.
    pub struct RecordMember {
        /// The member.
        pub node_id: u64 = U64F,
        /// Its data directory's incarnation (nonzero).
        pub incarnation: u64 = U64F,
    }
}

body! {
    /// `CLUSTER_PING`; answered `RESPONSE_OK` with the same nonce.
    pub struct Ping {
        /// Echoed back.
        pub nonce: u64 = U64F,
    }
}

body! {
    /// `PARTITION_TABLE_REQUEST`.
    pub struct PartitionTableRequest {
        /// The revision the client has; the server answers only if newer
        /// (an empty table with the same revision otherwise).
        pub known_revision: u64 = U64F,
    }
}

body! {
    /// A Raft group in the partition table.
    pub struct GroupInfo<'a> {
        /// Group id.
        pub group: u32 = U32F,
        /// Current leader's node id; 0 = unknown.
        pub leader: u64 = U64F,
        /// Term of that leadership.
        pub term: u64 = U64F,
        /// Node ids holding a replica.
        pub replicas: &'a [U64] = IdsF,
    }
}

body! {
    /// A cluster member in the partition table.
    pub struct Member<'a> {
        /// Node id.
        pub node_id: u64 = U64F,
        /// Client address.
        pub client_addr: &'a str = Text8,
    }
}

body! {
    /// `PARTITION_TABLE_RESPONSE`: which group owns each partition, who
    /// leads each group, and where members listen.
    pub struct PartitionTable<'a> {
        /// Strictly increases with every change.
        pub revision: u64 = U64F,
        /// Group id per partition, indexed by partition.
        pub partition_groups: &'a [U32] = U32sF,
        /// Groups.
        pub groups: Seq<'a, GroupInfo<'a>> = SeqF<GroupInfo<'a>>,
        /// Members.
        pub members: Seq<'a, Member<'a>> = SeqF<Member<'a>>,
    }
}

// ---- the opcode → payload table ----------------------------------------

macro_rules! payloads {
    ($( $op:ident($ty:ty) ),* $(,)?) => {
        /// The decoded payload of any non-response frame.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Payload<'a> {
            $( #[doc = concat!("`", stringify!($op), "`")] $op($ty), )*
        }

        impl<'a> Payload<'a> {
            /// The opcode this payload is sent under.
            pub fn opcode(&self) -> Opcode {
                match self {
                    $( Payload::$op(_) => Opcode::$op, )*
                }
            }

            /// Decodes the payload of a frame with opcode `opcode`. The
            /// bytes must be exactly one payload: trailing bytes are an
            /// error. Reserved opcodes answer [`Error::Unsupported`];
            /// response opcodes are decoded with [`crate::Response`].
            pub fn decode(opcode: Opcode, bytes: &'a [u8], limits: &Limits) -> Result<Payload<'a>> {
                Ok(match opcode {
                    $( Opcode::$op => Payload::$op(<$ty as Body<'a>>::decode_all(bytes, limits)?), )*
                    other => return Err(not_a_payload(other)),
                })
            }

            /// Encoded size in bytes.
            pub fn encoded_len(&self) -> usize {
                match self {
                    $( Payload::$op(body) => body.encoded_len(), )*
                }
            }

            /// Writes the payload.
            pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
                match self {
                    $( Payload::$op(body) => body.encode(w), )*
                }
            }
        }
    };
}

fn not_a_payload(opcode: Opcode) -> Error {
    match opcode.class() {
        OpClass::Reserved => Error::Unsupported(opcode.wire_name()),
        _ => Error::UnexpectedOpcode {
            opcode: opcode.wire_name(),
            reason: "a response is decoded with Response::decode",
        },
    }
}

payloads! {
    Hello(Hello<'a>),
    Auth(Auth<'a>),
    BatchExecute(Batch<'a>),
    NearCacheSubscribe(Named<'a>),
        NearCacheInvalidate(NearCacheInvalidate<'a>),
    NodeInfo(NodeInfoRequest),

    MapPut(MapWrite<'a>),
    MapSet(MapWrite<'a>),
    MapGet(Keyed<'a>),
    MapDelete(Keyed<'a>),
    MapPutIfAbsent(MapWrite<'a>),
    MapReplace(MapWrite<'a>),
    MapCompareAndSet(MapCompareAndSet<'a>),
    MapContains(Keyed<'a>),
    MapSize(Named<'a>),
    MapClear(Named<'a>),
    MapGetAll(MapGetAll<'a>),
    MapPutAll(MapPutAll<'a>),
    MapScan(Page<'a>),
    MapDestroy(Named<'a>),

    QueueOffer(NamedValue<'a>),
    QueuePoll(QueuePoll<'a>),
    QueuePeek(Named<'a>),
    QueueSize(Named<'a>),
    QueueDrain(QueueDrain<'a>),
    QueueClear(Named<'a>),
    QueueDestroy(Named<'a>),

    SetAdd(Keyed<'a>),
    SetRemove(Keyed<'a>),
    SetContains(Keyed<'a>),
    SetMembers(Page<'a>),
    SetSize(Named<'a>),
    SetClear(Named<'a>),
    SetDestroy(Named<'a>),

    TopicPublish(NamedValue<'a>),
    TopicSubscribe(Named<'a>),
    TopicUnsubscribe(Unsubscribe),
    TopicMessage(TopicMessage<'a>),

    AtomicGet(Named<'a>),
    AtomicSet(NamedLong<'a>),
    AtomicAddAndGet(NamedLong<'a>),
    AtomicGetAndAdd(NamedLong<'a>),
    AtomicCompareAndSet(AtomicCompareAndSet<'a>),
    AtomicGetAndSet(NamedLong<'a>),
    AtomicDestroy(Named<'a>),

    RaftAppendEntries(AppendEntries<'a>),
    RaftAppendEntriesResponse(AppendEntriesResponse),
    RaftVote(Vote),
    RaftVoteResponse(VoteResponse),
    RaftPreVote(Vote),
    RaftPreVoteResponse(VoteResponse),
    RaftInstallSnapshot(InstallSnapshot<'a>),
    RaftInstallSnapshotResponse(InstallSnapshotResponse),
    RaftTimeoutNow(TimeoutNow),
    RaftHeartbeat(Heartbeat),
    RaftHeartbeatResponse(HeartbeatResponse),

    ClusterJoin(Join<'a>),
    ClusterLeave(Leave),
    ClusterPing(Ping),
    PartitionTableRequest(PartitionTableRequest),
    PartitionTableResponse(PartitionTable<'a>),
    ClusterTransferLeader(TransferLeader),
    ClusterRecordMember(RecordMember),
}

/// A request whose arguments make no sense ([`Payload::check_arguments`]);
/// its text names the configured bound it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentError {
    /// A scan or members page size outside `1..=max`.
    #[error("page_size must be between 1 and the configured items maximum ({max})")]
    PageSize {
        /// The configured items maximum.
        max: u32,
    },
    /// A drain count outside `1..=max`.
    #[error("max_items must be between 1 and the configured items maximum ({max})")]
    DrainCount {
        /// The configured items maximum.
        max: u32,
    },
    /// A get_all without keys.
    #[error("get_all needs at least one key")]
    NoKeys,
}

impl<'a> Payload<'a> {
    /// The argument checks that are not about lengths: a page or drain of
    /// zero items, say. Decoding already bounded every length; this says
    /// whether the request makes sense.
    pub fn check_arguments(&self, limits: &Limits) -> core::result::Result<(), ArgumentError> {
        let max = limits.items_max;
        match self {
            Payload::MapScan(p) | Payload::SetMembers(p) if p.page_size == 0 || p.page_size > max => {
                Err(ArgumentError::PageSize { max })
            }
            Payload::QueueDrain(d) if d.max_items == 0 || d.max_items > max => Err(ArgumentError::DrainCount { max }),
            Payload::MapGetAll(g) if g.keys.is_empty() => Err(ArgumentError::NoKeys),
            _ => Ok(()),
        }
    }
}

impl<'a> Payload<'a> {
    /// True if applying this payload changes state, so it must go through
    /// the log and be sequenced for exactly-once retries: a write opcode, or
    /// a batch holding at least one.
    pub fn mutates(&self) -> bool {
        match self {
            Payload::BatchExecute(batch) => batch.ops.iter().any(|op| op.opcode.class() == OpClass::Write),
            other => other.opcode().class() == OpClass::Write,
        }
    }

    /// The bytes a request routes by: the key for keyed Map operations, the
    /// structure name for Queues, Sets, Topics and AtomicLongs (each lives
    /// whole in one partition). `None` for operations that span a Map's
    /// partitions (size, clear, scan, get_all, put_all, destroy) and for
    /// non-data opcodes.
    pub fn routing_key(&self) -> Option<&'a [u8]> {
        use Payload::*;
        match *self {
            MapPut(w) | MapSet(w) | MapPutIfAbsent(w) | MapReplace(w) => Some(w.key),
            MapGet(k) | MapDelete(k) | MapContains(k) => Some(k.key),
            MapCompareAndSet(c) => Some(c.key),
            SetAdd(k) | SetRemove(k) | SetContains(k) => Some(k.name.as_bytes()),
            SetMembers(p) => Some(p.name.as_bytes()),
            QueueOffer(v) | TopicPublish(v) => Some(v.name.as_bytes()),
            QueuePoll(p) => Some(p.name.as_bytes()),
            QueueDrain(d) => Some(d.name.as_bytes()),
            QueuePeek(n) | QueueSize(n) | QueueClear(n) | QueueDestroy(n) | SetSize(n) | SetClear(n)
            | SetDestroy(n) | TopicSubscribe(n) | AtomicGet(n) | AtomicDestroy(n) => Some(n.name.as_bytes()),
            AtomicSet(l) | AtomicAddAndGet(l) | AtomicGetAndAdd(l) | AtomicGetAndSet(l) => Some(l.name.as_bytes()),
            AtomicCompareAndSet(c) => Some(c.name.as_bytes()),
            _ => None,
        }
    }
}
