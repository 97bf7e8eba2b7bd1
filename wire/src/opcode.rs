//! The opcode table. Numbers are frozen once released: a code is never
//! reused for another meaning, and retired codes stay reserved.
//!
//! The high byte names the family, so a code can be read at a glance in a
//! packet capture: `0x00` control, `0x01` Map, `0x02` Queue, `0x03` Set,
//! `0x04` Topic, `0x05` AtomicLong, `0x06` CP sessions/locks/semaphores,
//! `0x07` Raft, `0x08` cluster, `0xF0` responses.

/// What kind of traffic an opcode carries; the daemon dispatches on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// Connection set-up and client control (hello, auth, batch).
    Control,
    /// A data-structure read: served from the state machine under a lease or
    /// ReadIndex, never written to the log.
    Read,
    /// A data-structure mutation: the frame becomes a Raft log entry.
    Write,
    /// Connection-scoped registration (topic and near-cache subscriptions).
    Subscription,
    /// Sent by the server without a request (topic messages, invalidations).
    Push,
    /// Raft RPCs between nodes.
    Raft,
    /// Cluster membership and routing between nodes and smart clients.
    Cluster,
    /// Responses from the server.
    Response,
    /// Numbered for a feature not built yet: answered `UNSUPPORTED`.
    Reserved,
}

macro_rules! opcodes {
    ($( $(#[$doc:meta])* $name:ident = $val:literal, $wire:literal, $class:ident; )*) => {
        /// Every opcode of the protocol.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum Opcode {
            $( $(#[$doc])* $name = $val, )*
        }

        impl Opcode {
            /// Every opcode, in numeric order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            /// The opcode for a wire value, if this build knows it.
            pub const fn from_u16(value: u16) -> Option<Opcode> {
                match value {
                    $( $val => Some(Opcode::$name), )*
                    _ => None,
                }
            }

            /// The name used in docs, logs and error messages (`MAP_PUT`).
            pub const fn wire_name(self) -> &'static str {
                match self {
                    $( Opcode::$name => $wire, )*
                }
            }

            /// The traffic class.
            pub const fn class(self) -> OpClass {
                match self {
                    $( Opcode::$name => OpClass::$class, )*
                }
            }
        }
    };
}

opcodes! {
    /// Version negotiation; first frame on a client connection.
    Hello = 0x0001, "HELLO", Control;
    /// Authenticate the connection.
    Auth = 0x0002, "AUTH", Control;
    /// Execute several data operations in one frame.
    BatchExecute = 0x0003, "BATCH_EXECUTE", Control;
    /// Subscribe to invalidations of a Map for a near cache.
    NearCacheSubscribe = 0x0004, "NEAR_CACHE_SUBSCRIBE", Subscription;
        /// Pushed: entries of a near-cached Map changed.
    NearCacheInvalidate = 0x0005, "NEAR_CACHE_INVALIDATE", Push;
    /// Node statistics as name/value pairs.
    NodeInfo = 0x0006, "NODE_INFO", Control;

    /// Store a value, answering the previous one.
    MapPut = 0x0101, "MAP_PUT", Write;
    /// Store a value without answering the previous one.
    MapSet = 0x0102, "MAP_SET", Write;
    /// Read a value.
    MapGet = 0x0103, "MAP_GET", Read;
    /// Remove a key; answers whether it existed.
    MapDelete = 0x0104, "MAP_DELETE", Write;
    /// Store only if the key is absent; answers the existing value.
    MapPutIfAbsent = 0x0105, "MAP_PUT_IF_ABSENT", Write;
    /// Store only if the key is present; answers the replaced value.
    MapReplace = 0x0106, "MAP_REPLACE", Write;
    /// Store only if the current value equals the expected one.
    MapCompareAndSet = 0x0107, "MAP_COMPARE_AND_SET", Write;
    /// Whether a key is present.
    MapContains = 0x0108, "MAP_CONTAINS", Read;
    /// Number of live entries.
    MapSize = 0x0109, "MAP_SIZE", Read;
    /// Remove every entry; answers how many were removed.
    MapClear = 0x010A, "MAP_CLEAR", Write;
    /// Read many keys.
    MapGetAll = 0x010B, "MAP_GET_ALL", Read;
    /// Store many entries.
    MapPutAll = 0x010C, "MAP_PUT_ALL", Write;
    /// One page of entries after a cursor.
    MapScan = 0x010D, "MAP_SCAN", Read;
    /// Remove the map with every entry, freeing its name for any type;
    /// answers whether it existed.
    MapDestroy = 0x010E, "MAP_DESTROY", Write;

    /// Append an item; answers false when a bounded queue is full.
    QueueOffer = 0x0201, "QUEUE_OFFER", Write;
    /// Remove the head item, optionally waiting for one. The wait happens
    /// at the leader before the removal is proposed, so the log never holds
    /// a blocked operation.
    QueuePoll = 0x0202, "QUEUE_POLL", Write;
    /// Read the head item.
    QueuePeek = 0x0203, "QUEUE_PEEK", Read;
    /// Number of items.
    QueueSize = 0x0204, "QUEUE_SIZE", Read;
    /// Remove up to N items from the head.
    QueueDrain = 0x0205, "QUEUE_DRAIN", Write;
    /// Remove every item.
    QueueClear = 0x0206, "QUEUE_CLEAR", Write;
    /// Remove the queue with every item, freeing its name for any type;
    /// answers whether it existed.
    QueueDestroy = 0x0207, "QUEUE_DESTROY", Write;

    /// Add a member; answers whether it was new.
    SetAdd = 0x0301, "SET_ADD", Write;
    /// Remove a member; answers whether it was present.
    SetRemove = 0x0302, "SET_REMOVE", Write;
    /// Whether a member is present.
    SetContains = 0x0303, "SET_CONTAINS", Read;
    /// One page of members after a cursor.
    SetMembers = 0x0304, "SET_MEMBERS", Read;
    /// Number of members.
    SetSize = 0x0305, "SET_SIZE", Read;
    /// Remove every member.
    SetClear = 0x0306, "SET_CLEAR", Write;
    /// Remove the set with every member, freeing its name for any type;
    /// answers whether it existed.
    SetDestroy = 0x0307, "SET_DESTROY", Write;

    /// Publish a message to every subscriber of a topic.
    TopicPublish = 0x0401, "TOPIC_PUBLISH", Write;
    /// Subscribe this connection to a topic.
    TopicSubscribe = 0x0402, "TOPIC_SUBSCRIBE", Subscription;
    /// Cancel a subscription.
    TopicUnsubscribe = 0x0403, "TOPIC_UNSUBSCRIBE", Subscription;
    /// Pushed: a message on a subscribed topic.
    TopicMessage = 0x0404, "TOPIC_MESSAGE", Push;

    /// Read the value.
    AtomicGet = 0x0501, "ATOMIC_GET", Read;
    /// Set the value.
    AtomicSet = 0x0502, "ATOMIC_SET", Write;
    /// Add and answer the new value.
    AtomicAddAndGet = 0x0503, "ATOMIC_ADD_AND_GET", Write;
    /// Add and answer the previous value.
    AtomicGetAndAdd = 0x0504, "ATOMIC_GET_AND_ADD", Write;
    /// Set if the value equals the expected one.
    AtomicCompareAndSet = 0x0505, "ATOMIC_COMPARE_AND_SET", Write;
    /// Set and answer the previous value.
    AtomicGetAndSet = 0x0506, "ATOMIC_GET_AND_SET", Write;
    /// Remove the AtomicLong, freeing its name for any type; answers
    /// whether it existed.
    AtomicDestroy = 0x0507, "ATOMIC_DESTROY", Write;

    /// Open a CP session.
    CpSessionCreate = 0x0601, "CP_SESSION_CREATE", Reserved;
    /// Keep a CP session alive.
    CpSessionHeartbeat = 0x0602, "CP_SESSION_HEARTBEAT", Reserved;
    /// Close a CP session.
    CpSessionClose = 0x0603, "CP_SESSION_CLOSE", Reserved;
    /// Acquire a fenced lock.
    CpLockAcquire = 0x0611, "CP_LOCK_ACQUIRE", Reserved;
    /// Try to acquire a fenced lock within a timeout.
    CpLockTryAcquire = 0x0612, "CP_LOCK_TRY_ACQUIRE", Reserved;
    /// Release a fenced lock.
    CpLockRelease = 0x0613, "CP_LOCK_RELEASE", Reserved;
    /// Create a semaphore with a number of permits.
    CpSemaphoreInit = 0x0621, "CP_SEMAPHORE_INIT", Reserved;
    /// Acquire permits.
    CpSemaphoreAcquire = 0x0622, "CP_SEMAPHORE_ACQUIRE", Reserved;
    /// Release permits.
    CpSemaphoreRelease = 0x0623, "CP_SEMAPHORE_RELEASE", Reserved;
    /// Number of available permits.
    CpSemaphoreAvailable = 0x0624, "CP_SEMAPHORE_AVAILABLE", Reserved;

    /// Replicate entries (Raft §5.3).
    RaftAppendEntries = 0x0701, "RAFT_APPEND_ENTRIES", Raft;
    /// Answer to append entries.
    RaftAppendEntriesResponse = 0x0702, "RAFT_APPEND_ENTRIES_RESPONSE", Raft;
    /// Ask for a vote (Raft §5.2).
    RaftVote = 0x0703, "RAFT_VOTE", Raft;
    /// Answer to a vote request.
    RaftVoteResponse = 0x0704, "RAFT_VOTE_RESPONSE", Raft;
    /// Ask whether a vote would be granted, without disrupting (Raft thesis §9.6).
    RaftPreVote = 0x0705, "RAFT_PRE_VOTE", Raft;
    /// Answer to a pre-vote request.
    RaftPreVoteResponse = 0x0706, "RAFT_PRE_VOTE_RESPONSE", Raft;
    /// One chunk of a snapshot (Raft §7).
    RaftInstallSnapshot = 0x0707, "RAFT_INSTALL_SNAPSHOT", Raft;
    /// Answer to a snapshot chunk.
    RaftInstallSnapshotResponse = 0x0708, "RAFT_INSTALL_SNAPSHOT_RESPONSE", Raft;
    /// Start an election now, for leadership transfer (Raft thesis §3.10).
    RaftTimeoutNow = 0x0709, "RAFT_TIMEOUT_NOW", Raft;
    /// Leader heartbeat carrying the commit index and a ReadIndex context.
    RaftHeartbeat = 0x070A, "RAFT_HEARTBEAT", Raft;
    /// Answer to a heartbeat.
    RaftHeartbeatResponse = 0x070B, "RAFT_HEARTBEAT_RESPONSE", Raft;

    /// Ask the cluster to add this node.
    ClusterJoin = 0x0801, "CLUSTER_JOIN", Cluster;
    /// Ask the cluster to remove a node.
    ClusterLeave = 0x0802, "CLUSTER_LEAVE", Cluster;
    /// Liveness probe.
    ClusterPing = 0x0803, "CLUSTER_PING", Cluster;
    /// Ask for the partition table if newer than a revision.
    PartitionTableRequest = 0x0804, "PARTITION_TABLE_REQUEST", Cluster;
    /// The partition table.
    PartitionTableResponse = 0x0805, "PARTITION_TABLE_RESPONSE", Cluster;
    /// Ask the leader to hand leadership to a voter.
    ClusterTransferLeader = 0x0806, "CLUSTER_TRANSFER_LEADER", Cluster;
    /// A replicated record of a member's data-directory incarnation,
    /// proposed by the leader; never sent by clients.
    ClusterRecordMember = 0x0807, "CLUSTER_RECORD_MEMBER", Cluster;

    /// Success; the body depends on the request's opcode.
    ResponseOk = 0xF001, "RESPONSE_OK", Response;
    /// Failure; the header's status holds the error code, the body a message.
    ResponseError = 0xF002, "RESPONSE_ERROR", Response;
    /// Not the leader; the body names the leader (with no leader known the
    /// answer is `RESPONSE_ERROR` with `NO_LEADER`).
    ResponseRedirect = 0xF003, "RESPONSE_REDIRECT", Response;
    /// Overloaded; retry after the suggested delay.
    ResponseServerBusy = 0xF004, "RESPONSE_SERVER_BUSY", Response;
    /// The request's sequence is older than the deduplication window.
    ResponseSequenceLost = 0xF005, "RESPONSE_SEQUENCE_LOST", Response;
}

impl Opcode {
    /// The wire value.
    pub const fn code(self) -> u16 {
        self as u16
    }
}

impl core::fmt::Display for Opcode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.wire_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_round_trips() {
        for pair in Opcode::ALL.windows(2) {
            assert!(pair[0].code() < pair[1].code(), "{} not after {}", pair[1], pair[0]);
        }
        for &op in Opcode::ALL {
            assert_eq!(Opcode::from_u16(op.code()), Some(op));
            assert_eq!(op.code() >> 8, family(op.class(), op), "{op} is in the wrong family");
        }
        assert_eq!(Opcode::from_u16(0), None);
        assert_eq!(Opcode::from_u16(0xFFFF), None);
    }

    fn family(class: OpClass, op: Opcode) -> u16 {
        match class {
            OpClass::Raft => 0x07,
            OpClass::Response => 0xF0,
            OpClass::Reserved => 0x06,
            OpClass::Cluster => 0x08,
            _ => op.code() >> 8,
        }
    }

    #[test]
    fn wire_names_are_unique() {
        let mut names: Vec<_> = Opcode::ALL.iter().map(|op| op.wire_name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Opcode::ALL.len());
    }
}
