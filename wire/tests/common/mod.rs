//! Sample payloads, one or more per opcode, shared by the wire tests.
#![allow(dead_code)]

use loomcache_wire::*;

pub const IDS: [LeU64; 3] = [LeU64::new(1), LeU64::new(2), LeU64::new(3)];
pub const NO_IDS: [LeU64; 0] = [];
pub const GROUPS: [LeU32; 4] = [LeU32::new(0), LeU32::new(0), LeU32::new(1), LeU32::new(7)];

pub const KEYS: [Key<'static>; 3] = [Key(b"alpha"), Key(b""), Key(b"\x00\xff")];
pub const ENTRIES: [KeyValue<'static>; 2] = [
    KeyValue {
        key: b"k1",
        value: b"v1",
    },
    KeyValue { key: b"k2", value: b"" },
];
pub const LOG_ENTRIES: [Entry<'static>; 2] = [
    Entry {
        term: 3,
        kind: 0,
        timestamp_ms: 1_764_000_000_000,
        data: b"frame bytes",
    },
    Entry {
        term: 4,
        kind: 2,
        timestamp_ms: 1_764_000_000_001,
        data: b"",
    },
];
pub const MEMBERS: [Member<'static>; 2] = [
    Member {
        node_id: 1,
        client_addr: "127.0.0.1:7000",
    },
    Member {
        node_id: 2,
        client_addr: "[::1]:7001",
    },
];
pub const GROUP_INFOS: [GroupInfo<'static>; 1] = [GroupInfo {
    group: 1,
    leader: 2,
    term: 9,
    replicas: &IDS,
}];

pub fn raft_header() -> RaftHeader {
    RaftHeader {
        group: 1,
        from: 2,
        to: 3,
        term: 7,
    }
}

pub fn batch_ops() -> &'static [BatchOp<'static>] {
    // A MAP_GET payload for map "m", key "k", encoded by hand.
    const GET: &[u8] = &[1, b'm', 1, 0, b'k'];
    const OPS: [BatchOp<'static>; 2] = [
        BatchOp {
            opcode: Opcode::MapGet,
            payload: GET,
        },
        BatchOp {
            opcode: Opcode::MapSize,
            payload: &[1, b'm'],
        },
    ];
    &OPS
}

/// At least one payload for every opcode that has one.
pub fn payloads() -> Vec<Payload<'static>> {
    let w = MapWrite {
        ttl_ms: 60_000,
        name: "users",
        key: b"user:1",
        value: b"{\"n\":1}",
    };
    let w0 = MapWrite {
        ttl_ms: 0,
        name: "m",
        key: b"",
        value: b"",
    };
    let k = Keyed {
        name: "users",
        key: b"user:1",
    };
    let n = Named { name: "q" };
    let nv = NamedValue {
        name: "q",
        value: b"item",
    };
    let nl = NamedLong {
        name: "counter",
        value: -42,
    };
    let hdr = raft_header();
    vec![
        Payload::Hello(Hello {
            version_min: 1,
            version_max: 1,
            features: 0b101,
            client_id: 9,
            client_name: "loomctl",
        }),
        Payload::Auth(Auth {
            mechanism: 1,
            identity: "admin",
            secret: b"s3cret",
        }),
        Payload::BatchExecute(Batch {
            ops: Seq::Items(batch_ops()),
        }),
        Payload::NearCacheSubscribe(Named { name: "users" }),
        Payload::NodeInfo(NodeInfoRequest {}),
        Payload::NearCacheInvalidate(NearCacheInvalidate {
            map: "users",
            sequence: 12,
            key: Some(b"user:1"),
        }),
        Payload::NearCacheInvalidate(NearCacheInvalidate {
            map: "users",
            sequence: 13,
            key: None,
        }),
        Payload::MapPut(w),
        Payload::MapPut(w0),
        Payload::MapSet(w),
        Payload::MapGet(k),
        Payload::MapDelete(k),
        Payload::MapPutIfAbsent(w),
        Payload::MapReplace(w),
        Payload::MapCompareAndSet(MapCompareAndSet {
            ttl_ms: 5,
            name: "users",
            key: b"user:1",
            expected: b"old",
            new: b"new",
        }),
        Payload::MapContains(k),
        Payload::MapSize(n),
        Payload::MapClear(n),
        Payload::MapGetAll(MapGetAll {
            name: "users",
            keys: Seq::Items(&KEYS),
        }),
        Payload::MapPutAll(MapPutAll {
            ttl_ms: 1,
            name: "users",
            entries: Seq::Items(&ENTRIES),
        }),
        Payload::MapPutAll(MapPutAll {
            ttl_ms: 0,
            name: "users",
            entries: Seq::Items(&[]),
        }),
        Payload::MapScan(Page {
            name: "users",
            cursor: 0,
            page_size: 100,
        }),
        Payload::MapDestroy(n),
        Payload::QueueOffer(nv),
        Payload::QueuePoll(QueuePoll {
            name: "q",
            wait_ms: 250,
        }),
        Payload::QueuePeek(n),
        Payload::QueueSize(n),
        Payload::QueueDrain(QueueDrain {
            name: "q",
            max_items: 10,
        }),
        Payload::QueueClear(n),
        Payload::QueueDestroy(n),
        Payload::SetAdd(k),
        Payload::SetRemove(k),
        Payload::SetContains(k),
        Payload::SetMembers(Page {
            name: "s",
            cursor: 77,
            page_size: 5,
        }),
        Payload::SetSize(n),
        Payload::SetClear(n),
        Payload::SetDestroy(n),
        Payload::TopicPublish(nv),
        Payload::TopicSubscribe(n),
        Payload::TopicUnsubscribe(Unsubscribe { subscription_id: 4 }),
        Payload::TopicMessage(TopicMessage {
            subscription_id: 4,
            sequence: 99,
            dropped: 3,
            topic: "t",
            message: b"hi",
        }),
        Payload::AtomicGet(n),
        Payload::AtomicSet(nl),
        Payload::AtomicAddAndGet(nl),
        Payload::AtomicGetAndAdd(nl),
        Payload::AtomicCompareAndSet(AtomicCompareAndSet {
            name: "counter",
            expected: i64::MIN,
            new: i64::MAX,
        }),
        Payload::AtomicGetAndSet(nl),
        Payload::AtomicDestroy(n),
        Payload::RaftAppendEntries(AppendEntries {
            header: hdr,
            prev_index: 10,
            prev_term: 3,
            commit: 9,
            entries: Seq::Items(&LOG_ENTRIES),
        }),
        Payload::RaftAppendEntries(AppendEntries {
            header: hdr,
            prev_index: 0,
            prev_term: 0,
            commit: 0,
            entries: Seq::Items(&[]),
        }),
        Payload::RaftAppendEntriesResponse(AppendEntriesResponse {
            header: hdr,
            reject: true,
            index: 10,
            hint_index: 8,
            hint_term: 2,
        }),
        Payload::RaftVote(Vote {
            header: hdr,
            last_index: 10,
            last_term: 3,
            transfer: false,
        }),
        Payload::RaftVoteResponse(VoteResponse {
            header: hdr,
            granted: true,
        }),
        Payload::RaftPreVote(Vote {
            header: hdr,
            last_index: 10,
            last_term: 3,
            transfer: true,
        }),
        Payload::RaftPreVoteResponse(VoteResponse {
            header: hdr,
            granted: false,
        }),
        Payload::RaftInstallSnapshot(InstallSnapshot {
            header: hdr,
            snapshot_index: 100,
            snapshot_term: 5,
            offset: 4096,
            total_len: 10_000,
            done: false,
            voters: &IDS,
            learners: &NO_IDS,
            voters_outgoing: &IDS[..1],
            learners_next: &NO_IDS,
            chunk: b"chunk",
        }),
        Payload::RaftInstallSnapshotResponse(InstallSnapshotResponse {
            header: hdr,
            snapshot_index: 100,
            next_offset: 4101,
            reject: false,
        }),
        Payload::RaftTimeoutNow(TimeoutNow { header: hdr }),
        Payload::RaftHeartbeat(Heartbeat {
            header: hdr,
            commit: 9,
            context: 5,
        }),
        Payload::RaftHeartbeatResponse(HeartbeatResponse {
            header: hdr,
            context: 5,
        }),
        Payload::ClusterJoin(Join {
            node_id: 4,
            client_addr: "127.0.0.1:7003",
            peer_addr: "127.0.0.1:8003",
        }),
        Payload::ClusterLeave(Leave { node_id: 4 }),
        Payload::ClusterTransferLeader(TransferLeader { node_id: 2 }),
        Payload::ClusterRecordMember(RecordMember {
            node_id: 3,
            incarnation: 0x0123_4567_89AB_CDEF,
        }),
        Payload::ClusterPing(Ping { nonce: 0xDEAD_BEEF }),
        Payload::PartitionTableRequest(PartitionTableRequest { known_revision: 3 }),
        Payload::PartitionTableResponse(PartitionTable {
            revision: 4,
            partition_groups: &GROUPS,
            groups: Seq::Items(&GROUP_INFOS),
            members: Seq::Items(&MEMBERS),
        }),
    ]
}

pub const VALUES: [Value<'static>; 2] = [Value(b"a"), Value(b"")];
pub const BATCH_RESULTS: [BatchResult<'static>; 2] = [
    BatchResult {
        status: 0,
        body: &[1, 1, 0, 0, 0, b'v'],
    },
    BatchResult {
        status: 6,
        body: b"key too large",
    },
];

/// A response for every OK shape and every non-OK response opcode, with the
/// request opcode it answers.
pub fn responses() -> Vec<(Opcode, Response<'static>)> {
    vec![
        (Opcode::MapSet, Response::Ok(OkBody::Empty)),
        (Opcode::MapContains, Response::Ok(OkBody::Bool(true))),
        (Opcode::MapSize, Response::Ok(OkBody::Count(12))),
        (Opcode::AtomicAddAndGet, Response::Ok(OkBody::Long(-5))),
        (Opcode::MapGet, Response::Ok(OkBody::Value(Some(b"v")))),
        (Opcode::MapGet, Response::Ok(OkBody::Value(None))),
        (Opcode::QueueDrain, Response::Ok(OkBody::Values(Seq::Items(&VALUES)))),
        (Opcode::MapGetAll, Response::Ok(OkBody::Entries(Seq::Items(&ENTRIES)))),
        (
            Opcode::MapScan,
            Response::Ok(OkBody::ScanPage(ScanPage {
                cursor: 8,
                entries: Seq::Items(&ENTRIES),
            })),
        ),
        (
            Opcode::SetMembers,
            Response::Ok(OkBody::MembersPage(MembersPage {
                cursor: 0,
                members: Seq::Items(&KEYS),
            })),
        ),
        (
            Opcode::Hello,
            Response::Ok(OkBody::HelloAck(HelloAck {
                version: 1,
                features: 1,
                node_id: 2,
                client_id: 3,
                payload_max_bytes: 1 << 20,
                in_flight_max: 128,
            })),
        ),
        (
            Opcode::BatchExecute,
            Response::Ok(OkBody::Batch(Seq::Items(&BATCH_RESULTS))),
        ),
        (
            Opcode::MapPut,
            Response::Error {
                code: ErrorCode::OutOfMemory,
                message: "data memory limit reached",
            },
        ),
        (
            Opcode::MapGet,
            Response::Error {
                code: ErrorCode::NoLeader,
                message: "",
            },
        ),
        (
            Opcode::MapPut,
            Response::Redirect(Redirect {
                group: 0,
                leader_id: 2,
                leader_addr: "127.0.0.1:7001",
            }),
        ),
        (Opcode::MapPut, Response::ServerBusy(Busy { retry_after_ms: 50 })),
        (
            Opcode::MapPut,
            Response::SequenceLost(SequenceLost { oldest_retained: 1000 }),
        ),
    ]
}

/// Encodes a frame into a fresh buffer.
pub fn encode(fields: &HeaderFields, seq: Option<&Sequence>, payload: &impl FramePayload) -> Vec<u8> {
    let mut out = vec![0u8; frame_len(seq, payload)];
    let n = encode_frame(&mut out, fields, seq, payload).expect("encode");
    assert_eq!(n, out.len());
    out
}

pub fn request_frame(payload: &Payload<'_>, request_id: u64) -> Vec<u8> {
    encode(&HeaderFields::request(payload.opcode(), request_id), None, payload)
}
