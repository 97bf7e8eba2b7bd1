//! Owned answers: the borrowed wire response copied out of the receive
//! buffer once, so it outlives the connection's next read.

use loomcache_wire::{HelloAck, OkBody, Opcode, Response};

use crate::error::{ClientError, Result};

/// A successful answer, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// Nothing.
    Empty,
    /// A boolean.
    Bool(bool),
    /// A count, size, sequence or id.
    Count(u64),
    /// A signed integer.
    Long(i64),
    /// An optional value.
    Value(Option<Vec<u8>>),
    /// Values.
    Values(Vec<Vec<u8>>),
    /// Key/value pairs.
    Entries(Vec<(Vec<u8>, Vec<u8>)>),
    /// A page of entries and the cursor to continue from (0 = done).
    ScanPage(u64, Vec<(Vec<u8>, Vec<u8>)>),
    /// A page of members and the cursor to continue from (0 = done).
    MembersPage(u64, Vec<Vec<u8>>),
    /// Hello acknowledgement.
    HelloAck(HelloAck),
    /// Batch results: status and raw body per operation.
    Batch(Vec<(u16, Vec<u8>)>),
    /// The routing table.
    PartitionTable(PartitionTable),
}

/// Where keys live: the group of each partition, each group's leader and
/// replicas, and each member's client address (`PARTITION_TABLE_RESPONSE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// Grows with every leader or membership change.
    pub revision: u64,
    /// Group id per partition (empty when the revision asked about is
    /// current).
    pub partition_groups: Vec<u32>,
    /// The groups.
    pub groups: Vec<GroupView>,
    /// Members: node id and client address.
    pub members: Vec<(u64, String)>,
}

/// One Raft group in a [`PartitionTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Group id.
    pub group: u32,
    /// Leader's node id; 0 when unknown.
    pub leader: u64,
    /// Term of that leadership.
    pub term: u64,
    /// Node ids holding a replica.
    pub replicas: Vec<u64>,
}

impl PartitionTable {
    /// Copies a decoded table out of the receive buffer.
    pub fn from_wire(t: &loomcache_wire::PartitionTable<'_>) -> PartitionTable {
        PartitionTable {
            revision: t.revision,
            partition_groups: t.partition_groups.iter().map(|g| g.get()).collect(),
            groups: t
                .groups
                .iter()
                .map(|g| GroupView {
                    group: g.group,
                    leader: g.leader,
                    term: g.term,
                    replicas: g.replicas.iter().map(|r| r.get()).collect(),
                })
                .collect(),
            members: t
                .members
                .iter()
                .map(|m| (m.node_id, m.client_addr.to_owned()))
                .collect(),
        }
    }
}

impl Reply {
    /// Converts a decoded response; non-OK answers become errors.
    pub fn from_response(request: Opcode, response: Response<'_>) -> Result<Reply> {
        let body = match response {
            Response::Ok(body) => body,
            Response::Error { code, message } => {
                return Err(match code {
                    loomcache_wire::ErrorCode::Unsupported => ClientError::Unsupported(message.to_owned()),
                    _ => ClientError::Server {
                        code,
                        message: message.to_owned(),
                    },
                })
            }
            Response::Redirect(r) => {
                return Err(ClientError::Redirect {
                    leader_id: r.leader_id,
                    leader_addr: r.leader_addr.to_owned(),
                })
            }
            Response::ServerBusy(b) => {
                return Err(ClientError::Busy {
                    retry_after_ms: b.retry_after_ms,
                })
            }
            Response::SequenceLost(s) => {
                return Err(ClientError::SequenceLost {
                    oldest_retained: s.oldest_retained,
                })
            }
            other => {
                return Err(ClientError::Unexpected {
                    request: request.wire_name(),
                    detail: format!("{other:?}"),
                })
            }
        };
        Ok(match body {
            OkBody::Empty => Reply::Empty,
            OkBody::Bool(b) => Reply::Bool(b),
            OkBody::Count(n) => Reply::Count(n),
            OkBody::Long(n) => Reply::Long(n),
            OkBody::Value(v) => Reply::Value(v.map(<[u8]>::to_vec)),
            OkBody::Values(v) => Reply::Values(v.iter().map(|x| x.0.to_vec()).collect()),
            OkBody::Entries(e) => Reply::Entries(e.iter().map(|kv| (kv.key.to_vec(), kv.value.to_vec())).collect()),
            OkBody::ScanPage(p) => Reply::ScanPage(
                p.cursor,
                p.entries
                    .iter()
                    .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
                    .collect(),
            ),
            OkBody::MembersPage(p) => Reply::MembersPage(p.cursor, p.members.iter().map(|m| m.0.to_vec()).collect()),
            OkBody::HelloAck(a) => Reply::HelloAck(a),
            OkBody::Batch(r) => Reply::Batch(r.iter().map(|x| (x.status, x.body.to_vec())).collect()),
            other => {
                return Err(ClientError::Unexpected {
                    request: request.wire_name(),
                    detail: format!("{other:?}"),
                })
            }
        })
    }
}
