//! The values the core exchanges with its driver and its peers: log
//! entries, hard state, membership, snapshots and Raft messages.

use std::sync::Arc;

use crate::{GroupId, Index, NodeId, Term};

/// What an entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// Client bytes for the state machine.
    Normal = 0,
    /// An encoded [`crate::ConfChange`].
    ConfChange = 1,
    /// The empty entry a leader appends at the start of its term.
    Noop = 2,
}

impl EntryKind {
    /// The kind for its wire byte.
    pub fn from_u8(byte: u8) -> Option<EntryKind> {
        match byte {
            0 => Some(EntryKind::Normal),
            1 => Some(EntryKind::ConfChange),
            2 => Some(EntryKind::Noop),
            _ => None,
        }
    }
}

/// One log entry. The payload is shared, so handing the same entry to the
/// log, to several followers and to the state machine copies no bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Term of the leader that created it.
    pub term: Term,
    /// Position in the log, from 1.
    pub index: Index,
    /// What the payload means.
    pub kind: EntryKind,
    /// The leader's wall clock when it appended the entry (ms since the Unix
    /// epoch), so every replica judges time-dependent state alike.
    pub timestamp_ms: u64,
    /// Payload, unchanged from the proposal.
    pub data: Arc<[u8]>,
}

/// Bytes an entry counts for in size limits: its payload plus a fixed
/// per-entry overhead matching its encoding.
pub const ENTRY_OVERHEAD_BYTES: u64 = 8 + 1 + 8 + 4;

impl Entry {
    /// Size counted against message and batch limits.
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.data.len() as u64
    }
}

/// The state every node persists before it answers: Raft §5 (currentTerm,
/// votedFor) plus the commit index, so a restarted node re-applies at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: Term,
    /// Candidate voted for in `term`, 0 for none.
    pub vote: NodeId,
    /// Highest index known committed.
    pub commit: Index,
}

/// A membership configuration. Outside a change `voters_outgoing` and
/// `learners_next` are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfState {
    /// Voters (the incoming set during a joint change).
    pub voters: Vec<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: Vec<NodeId>,
    /// Voters of the configuration being left, during a joint change.
    pub voters_outgoing: Vec<NodeId>,
    /// Outgoing voters that become learners when the joint change ends.
    pub learners_next: Vec<NodeId>,
}

impl ConfState {
    /// A configuration of these voters only.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> ConfState {
        ConfState {
            voters: voters.into_iter().collect(),
            ..ConfState::default()
        }
    }

    /// True during a joint change.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Encoding, as stored beside a snapshot: the four lists in field
    /// order, each a `u16` LE count then `u64` LE ids.
    pub fn encode(&self) -> Vec<u8> {
        let lists = [&self.voters, &self.learners, &self.voters_outgoing, &self.learners_next];
        let mut out = Vec::with_capacity(8 + 8 * lists.iter().map(|l| l.len()).sum::<usize>());
        for list in lists {
            out.extend_from_slice(&(list.len() as u16).to_le_bytes());
            for id in list.iter() {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        out
    }

    /// Decodes [`ConfState::encode`]'s output; `None` for anything else.
    /// Each list holds at most [`CONF_MEMBERS_MAX`] ids.
    pub fn decode(mut bytes: &[u8]) -> Option<ConfState> {
        let mut lists: [Vec<NodeId>; 4] = Default::default();
        for list in &mut lists {
            let (count, rest) = bytes.split_first_chunk::<2>()?;
            let count = u16::from_le_bytes(*count) as usize;
            if count > CONF_MEMBERS_MAX || rest.len() < count * 8 {
                return None;
            }
            let (ids, rest) = rest.split_at(count * 8);
            list.extend(
                ids.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
            );
            bytes = rest;
        }
        if !bytes.is_empty() {
            return None;
        }
        let [voters, learners, voters_outgoing, learners_next] = lists;
        Some(ConfState {
            voters,
            learners,
            voters_outgoing,
            learners_next,
        })
    }
}

/// Most ids in one membership list.
pub const CONF_MEMBERS_MAX: usize = 1024;

/// What a snapshot covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last index it includes.
    pub index: Index,
    /// Term of that entry.
    pub term: Term,
    /// Membership as of `index`.
    pub conf: ConfState,
}

/// A state-machine snapshot: opaque bytes plus what they cover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// State-machine bytes.
    pub data: Arc<[u8]>,
}

/// A message between two nodes of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Raft group.
    pub group: GroupId,
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Sender's term (for a pre-vote, the term the sender would campaign
    /// in).
    pub term: Term,
    /// What it says.
    pub body: MessageBody,
}

/// The message kinds (Raft §5, §6, §7; thesis §3.10, §6.4, §9.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    /// Entries after `prev_index`, plus the leader's commit index.
    Append {
        /// Index before the first entry.
        prev_index: Index,
        /// Its term.
        prev_term: Term,
        /// Leader's commit index.
        commit: Index,
        /// Entries, possibly none.
        entries: Vec<Entry>,
    },
    /// Answer to `Append` (or to a completed snapshot).
    AppendResponse {
        /// True if `prev_index`/`prev_term` did not match.
        reject: bool,
        /// On success the last index now matching; on reject the rejected
        /// `prev_index`.
        index: Index,
        /// On reject: the leader should retry at or below this index…
        hint_index: Index,
        /// …where the follower's entry has this term.
        hint_term: Term,
    },
    /// A request for a vote or a pre-vote.
    Vote {
        /// True for a pre-vote (thesis §9.6): no state changes on grant.
        pre: bool,
        /// Candidate's last log index.
        last_index: Index,
        /// Candidate's last log term.
        last_term: Term,
        /// Campaign started by a leadership transfer: voters disregard
        /// their lease.
        transfer: bool,
    },
    /// Answer to `Vote`.
    VoteResponse {
        /// True for a pre-vote answer.
        pre: bool,
        /// Whether granted.
        granted: bool,
    },
    /// One chunk of a snapshot.
    Snapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// Byte offset of this chunk.
        offset: u64,
        /// Total snapshot size in bytes.
        total_len: u64,
        /// True on the last chunk.
        done: bool,
        /// The chunk.
        chunk: Arc<[u8]>,
    },
    /// Answer to a snapshot chunk that did not complete a snapshot.
    SnapshotResponse {
        /// Snapshot being installed.
        snapshot_index: Index,
        /// Offset the follower expects next.
        next_offset: u64,
        /// True if the follower refuses the snapshot.
        reject: bool,
    },
    /// Start an election now, ignoring the lease (leadership transfer).
    TimeoutNow,
    /// Leader liveness, commit propagation and ReadIndex rounds.
    Heartbeat {
        /// Commit index the follower may advance to.
        commit: Index,
        /// Heartbeat round, echoed in the answer.
        context: u64,
    },
    /// Answer to `Heartbeat`.
    HeartbeatResponse {
        /// The round being answered.
        context: u64,
    },
}

impl MessageBody {
    /// A short name for traces and errors.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResponse { .. } => "append-response",
            MessageBody::Vote { pre: true, .. } => "pre-vote",
            MessageBody::Vote { pre: false, .. } => "vote",
            MessageBody::VoteResponse { pre: true, .. } => "pre-vote-response",
            MessageBody::VoteResponse { pre: false, .. } => "vote-response",
            MessageBody::Snapshot { .. } => "snapshot",
            MessageBody::SnapshotResponse { .. } => "snapshot-response",
            MessageBody::TimeoutNow => "timeout-now",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat-response",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_state_encoding_round_trips_and_rejects_garbage() {
        let conf = ConfState {
            voters: vec![1, 2, 4],
            learners: vec![5],
            voters_outgoing: vec![1, 2, 3],
            learners_next: vec![3],
        };
        assert_eq!(ConfState::decode(&conf.encode()), Some(conf));
        assert_eq!(
            ConfState::decode(&ConfState::default().encode()),
            Some(ConfState::default())
        );
        let mut long = ConfState::default().encode();
        long.push(0);
        for bad in [&[][..], &[1, 0], &long, &[0xFF, 0xFF, 0, 0, 0, 0, 0, 0]] {
            assert_eq!(ConfState::decode(bad), None, "{bad:?}");
        }
    }
}
