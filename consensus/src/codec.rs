//! Raft messages in the wire crate's frames (opcodes `0x07xx`). Entry
//! payload bytes travel unchanged: what a client framed is what the
//! follower's log holds.

use std::sync::Arc;

use loomcache_wire::{
    self as wire, encode_frame, frame_len, AppendEntries, AppendEntriesResponse, HeaderFields, Heartbeat,
    HeartbeatResponse, InstallSnapshot, InstallSnapshotResponse, LeU64, Limits, Opcode, Payload, RaftHeader, Seq,
    TimeoutNow, Vote, VoteResponse,
};

use crate::message::{ConfState, Entry, EntryKind, Message, MessageBody, SnapshotMeta};
use crate::NodeId;

/// Why bytes are not a Raft message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The frame or payload is malformed.
    #[error(transparent)]
    Wire(#[from] wire::Error),
    /// The frame is not a Raft message.
    #[error("opcode {0:?} is not a Raft message")]
    NotRaft(Opcode),
    /// An entry kind byte is unknown.
    #[error("unknown entry kind {0}")]
    EntryKind(u8),
    /// Entry indexes would pass the largest index.
    #[error("entry indexes overflow")]
    IndexOverflow,
}

fn ids(list: &[NodeId]) -> Vec<LeU64> {
    list.iter().map(|&id| LeU64::new(id)).collect()
}

fn from_ids(list: &[LeU64]) -> Vec<NodeId> {
    list.iter().map(|id| id.get()).collect()
}

/// Appends one frame holding `m` to `out`, tagged with `request_id`.
pub fn encode(m: &Message, request_id: u64, out: &mut Vec<u8>) -> Result<(), wire::Error> {
    let header = RaftHeader {
        group: m.group,
        from: m.from,
        to: m.to,
        term: m.term,
    };
    // Owned id lists and entry views live here while the payload borrows
    // them.
    let wire_entries: Vec<wire::Entry<'_>>;
    let conf_lists: [Vec<LeU64>; 4];
    let payload = match &m.body {
        MessageBody::Append {
            prev_index,
            prev_term,
            commit,
            entries,
        } => {
            wire_entries = entries
                .iter()
                .map(|e| wire::Entry {
                    term: e.term,
                    kind: e.kind as u8,
                    timestamp_ms: e.timestamp_ms,
                    data: &e.data,
                })
                .collect();
            Payload::RaftAppendEntries(AppendEntries {
                header,
                prev_index: *prev_index,
                prev_term: *prev_term,
                commit: *commit,
                entries: Seq::Items(&wire_entries),
            })
        }
        MessageBody::AppendResponse {
            reject,
            index,
            hint_index,
            hint_term,
        } => Payload::RaftAppendEntriesResponse(AppendEntriesResponse {
            header,
            reject: *reject,
            index: *index,
            hint_index: *hint_index,
            hint_term: *hint_term,
        }),
        MessageBody::Vote {
            pre,
            last_index,
            last_term,
            transfer,
        } => {
            let vote = Vote {
                header,
                last_index: *last_index,
                last_term: *last_term,
                transfer: *transfer,
            };
            if *pre {
                Payload::RaftPreVote(vote)
            } else {
                Payload::RaftVote(vote)
            }
        }
        MessageBody::VoteResponse { pre, granted } => {
            let answer = VoteResponse {
                header,
                granted: *granted,
            };
            if *pre {
                Payload::RaftPreVoteResponse(answer)
            } else {
                Payload::RaftVoteResponse(answer)
            }
        }
        MessageBody::Snapshot {
            meta,
            offset,
            total_len,
            done,
            chunk,
        } => {
            conf_lists = [
                ids(&meta.conf.voters),
                ids(&meta.conf.learners),
                ids(&meta.conf.voters_outgoing),
                ids(&meta.conf.learners_next),
            ];
            Payload::RaftInstallSnapshot(InstallSnapshot {
                header,
                snapshot_index: meta.index,
                snapshot_term: meta.term,
                offset: *offset,
                total_len: *total_len,
                done: *done,
                voters: &conf_lists[0],
                learners: &conf_lists[1],
                voters_outgoing: &conf_lists[2],
                learners_next: &conf_lists[3],
                chunk,
            })
        }
        MessageBody::SnapshotResponse {
            snapshot_index,
            next_offset,
            reject,
        } => Payload::RaftInstallSnapshotResponse(InstallSnapshotResponse {
            header,
            snapshot_index: *snapshot_index,
            next_offset: *next_offset,
            reject: *reject,
        }),
        MessageBody::TimeoutNow => Payload::RaftTimeoutNow(TimeoutNow { header }),
        MessageBody::Heartbeat { commit, context } => Payload::RaftHeartbeat(Heartbeat {
            header,
            commit: *commit,
            context: *context,
        }),
        MessageBody::HeartbeatResponse { context } => Payload::RaftHeartbeatResponse(HeartbeatResponse {
            header,
            context: *context,
        }),
    };
    let fields = HeaderFields::request(payload.opcode(), request_id);
    let start = out.len();
    out.resize(start + frame_len(None, &payload), 0);
    let written = encode_frame(&mut out[start..], &fields, None, &payload)?;
    out.truncate(start + written);
    Ok(())
}

/// Decodes a Raft payload (the frame body for `opcode`), checked against
/// `limits`.
pub fn decode(opcode: Opcode, body: &[u8], limits: &Limits) -> Result<Message, CodecError> {
    let payload = Payload::decode(opcode, body, limits)?;
    let (h, body) = match payload {
        Payload::RaftAppendEntries(a) => {
            let mut entries = Vec::with_capacity(a.entries.len());
            for (pos, e) in a.entries.iter().enumerate() {
                let index = a
                    .prev_index
                    .checked_add(1 + pos as u64)
                    .ok_or(CodecError::IndexOverflow)?;
                entries.push(Entry {
                    term: e.term,
                    index,
                    kind: EntryKind::from_u8(e.kind).ok_or(CodecError::EntryKind(e.kind))?,
                    timestamp_ms: e.timestamp_ms,
                    data: Arc::from(e.data),
                });
            }
            (
                a.header,
                MessageBody::Append {
                    prev_index: a.prev_index,
                    prev_term: a.prev_term,
                    commit: a.commit,
                    entries,
                },
            )
        }
        Payload::RaftAppendEntriesResponse(r) => (
            r.header,
            MessageBody::AppendResponse {
                reject: r.reject,
                index: r.index,
                hint_index: r.hint_index,
                hint_term: r.hint_term,
            },
        ),
        Payload::RaftVote(v) | Payload::RaftPreVote(v) => (
            v.header,
            MessageBody::Vote {
                pre: opcode == Opcode::RaftPreVote,
                last_index: v.last_index,
                last_term: v.last_term,
                transfer: v.transfer,
            },
        ),
        Payload::RaftVoteResponse(v) | Payload::RaftPreVoteResponse(v) => (
            v.header,
            MessageBody::VoteResponse {
                pre: opcode == Opcode::RaftPreVoteResponse,
                granted: v.granted,
            },
        ),
        Payload::RaftInstallSnapshot(s) => (
            s.header,
            MessageBody::Snapshot {
                meta: SnapshotMeta {
                    index: s.snapshot_index,
                    term: s.snapshot_term,
                    conf: ConfState {
                        voters: from_ids(s.voters),
                        learners: from_ids(s.learners),
                        voters_outgoing: from_ids(s.voters_outgoing),
                        learners_next: from_ids(s.learners_next),
                    },
                },
                offset: s.offset,
                total_len: s.total_len,
                done: s.done,
                chunk: Arc::from(s.chunk),
            },
        ),
        Payload::RaftInstallSnapshotResponse(r) => (
            r.header,
            MessageBody::SnapshotResponse {
                snapshot_index: r.snapshot_index,
                next_offset: r.next_offset,
                reject: r.reject,
            },
        ),
        Payload::RaftTimeoutNow(t) => (t.header, MessageBody::TimeoutNow),
        Payload::RaftHeartbeat(b) => (
            b.header,
            MessageBody::Heartbeat {
                commit: b.commit,
                context: b.context,
            },
        ),
        Payload::RaftHeartbeatResponse(b) => (b.header, MessageBody::HeartbeatResponse { context: b.context }),
        _ => return Err(CodecError::NotRaft(opcode)),
    };
    Ok(Message {
        group: h.group,
        from: h.from,
        to: h.to,
        term: h.term,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use loomcache_wire::{parse_frame, Parsed};

    fn round_trip(m: Message) {
        let mut out = Vec::new();
        encode(&m, 42, &mut out).unwrap();
        let Parsed::Frame(frame) = parse_frame(&out, &Limits::PEER).unwrap() else {
            panic!("incomplete frame")
        };
        assert_eq!(frame.bytes().len(), out.len());
        assert_eq!(frame.request_id(), 42);
        let back = decode(frame.opcode(), frame.body(), &Limits::PEER).unwrap();
        assert_eq!(back, m);
    }

    fn msg(body: MessageBody) -> Message {
        Message {
            group: 3,
            from: 1,
            to: 2,
            term: 7,
            body,
        }
    }

    #[test]
    fn every_message_kind_round_trips() {
        let entry = |index, kind| Entry {
            term: 6,
            index,
            kind,
            timestamp_ms: 1_700_000_000_000,
            data: Arc::from(&b"frame bytes"[..]),
        };
        let table = [
            MessageBody::Append {
                prev_index: 9,
                prev_term: 5,
                commit: 8,
                entries: vec![
                    entry(10, EntryKind::Normal),
                    entry(11, EntryKind::ConfChange),
                    entry(12, EntryKind::Noop),
                ],
            },
            MessageBody::Append {
                prev_index: 0,
                prev_term: 0,
                commit: 0,
                entries: vec![],
            },
            MessageBody::AppendResponse {
                reject: true,
                index: 9,
                hint_index: 4,
                hint_term: 3,
            },
            MessageBody::Vote {
                pre: true,
                last_index: 12,
                last_term: 6,
                transfer: false,
            },
            MessageBody::Vote {
                pre: false,
                last_index: 12,
                last_term: 6,
                transfer: true,
            },
            MessageBody::VoteResponse {
                pre: true,
                granted: true,
            },
            MessageBody::VoteResponse {
                pre: false,
                granted: false,
            },
            MessageBody::Snapshot {
                meta: SnapshotMeta {
                    index: 100,
                    term: 4,
                    conf: ConfState {
                        voters: vec![1, 2, 4],
                        learners: vec![5],
                        voters_outgoing: vec![1, 2, 3],
                        learners_next: vec![3],
                    },
                },
                offset: 4096,
                total_len: 10_000,
                done: false,
                chunk: Arc::from(&[7u8; 300][..]),
            },
            MessageBody::SnapshotResponse {
                snapshot_index: 100,
                next_offset: 4396,
                reject: false,
            },
            MessageBody::TimeoutNow,
            MessageBody::Heartbeat { commit: 8, context: 77 },
            MessageBody::HeartbeatResponse { context: 77 },
        ];
        for body in table {
            round_trip(msg(body));
        }
    }

    #[test]
    fn bad_entry_kinds_and_non_raft_opcodes_are_errors() {
        let m = msg(MessageBody::Append {
            prev_index: 1,
            prev_term: 1,
            commit: 1,
            entries: vec![Entry {
                term: 1,
                index: 2,
                kind: EntryKind::Normal,
                timestamp_ms: 0,
                data: Arc::from(&[][..]),
            }],
        });
        let mut out = Vec::new();
        encode(&m, 1, &mut out).unwrap();
        let Parsed::Frame(frame) = parse_frame(&out, &Limits::PEER).unwrap() else {
            panic!()
        };
        let mut body = frame.body().to_vec();
        // The kind byte follows the 28-byte Raft header, the three u64s and
        // the u32 count and the entry term.
        let kind_at = 28 + 24 + 4 + 8;
        body[kind_at] = 9;
        assert_eq!(
            decode(frame.opcode(), &body, &Limits::PEER),
            Err(CodecError::EntryKind(9))
        );
        assert!(matches!(
            decode(Opcode::MapGet, &[], &Limits::PEER),
            Err(CodecError::Wire(_) | CodecError::NotRaft(_))
        ));
    }
}
