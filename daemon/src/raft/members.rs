//! The address book: every member's client and peer address, replicated
//! with membership.
//!
//! A member that joins brings its addresses in the context of the
//! membership change that adds it, so every node learns them when that
//! change applies, in log order. The book also travels at the head of
//! every state-machine snapshot (see [`encode_envelope_with`]), so a node that
//! restarts from a snapshot, or joins through one, knows the members the
//! snapshot's configuration names. Entries for nodes no longer in the
//! configuration are dropped once a change applies.
//!
//! Beside the addresses the book keeps, per member, the **incarnation** of
//! its data directory once the group has recorded it (a committed
//! `CLUSTER_RECORD_MEMBER` entry, proposed by the leader). Peers refuse a
//! member that comes back with another incarnation: its directory was
//! wiped or replaced, so it no longer holds the votes and entries it
//! acknowledged, and it must be removed and added back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::RwLock;

use loomcache_consensus::{ConfState, NodeId};

use crate::config::{ClusterConfig, Member};

/// Marks a snapshot that starts with the address book alone (as written
/// before incarnations were recorded).
const ENVELOPE_MAGIC_V1: &[u8; 4] = b"LCMB";
/// Marks a snapshot that starts with the address book and the recorded
/// incarnations.
const ENVELOPE_MAGIC: &[u8; 4] = b"LCM2";

/// Most incarnation records an envelope may carry.
pub const RECORDS_MAX: usize = 4096;

/// Incarnations by node id (what peers showed, for example).
pub type Incarnations = BTreeMap<NodeId, u64>;

/// A member's recorded incarnation and the log index of the entry that
/// recorded it: of two records of one member, the later index is the
/// newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The incarnation (nonzero).
    pub incarnation: u64,
    /// The recording entry's index (nonzero).
    pub index: u64,
}

/// The recorded incarnation of each member's data directory.
pub type Records = BTreeMap<NodeId, Record>;

/// Largest encoded book accepted from a snapshot or a change.
pub const BOOK_BYTES_MAX: usize = 64 << 10;

/// Members by id; readers (redirects, status) never wait on the writer for
/// long: it only swaps small maps.
#[derive(Debug)]
pub struct AddressBook {
    me: Member,
    members: RwLock<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    members: BTreeMap<NodeId, Member>,
    /// Members whose incarnation the group recorded.
    records: Records,
}

/// Renders members as `id=client/peer` items separated by commas (the
/// format of `--members`).
pub fn render(members: impl IntoIterator<Item = Member>) -> String {
    members
        .into_iter()
        .map(|m| format!("{}={}/{}", m.id, m.client_addr, m.peer_addr))
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a snapshot's address book could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot address book: {0}")]
pub struct EnvelopeError(String);

/// Prefixes state-machine snapshot bytes with the book: `LCM2`, a `u32`
/// LE length, the members as [`render`] writes them, a `u32` LE count of
/// records and that many `(node id, incarnation, index)` triples of `u64`
/// LE, then the state, written straight after the book by `write_state`
/// (which appends to the buffer it is given and returns it), so the state
/// is copied once.
pub fn encode_envelope_with(members: &str, records: &Records, write_state: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + members.len() + 24 * records.len());
    out.extend_from_slice(ENVELOPE_MAGIC);
    out.extend_from_slice(&(members.len() as u32).to_le_bytes());
    out.extend_from_slice(members.as_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (&id, r) in records {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&r.incarnation.to_le_bytes());
        out.extend_from_slice(&r.index.to_le_bytes());
    }
    write_state(out)
}

/// What a snapshot's envelope holds before the state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The members (none: a bare state snapshot).
    pub members: Vec<Member>,
    /// The recorded incarnations.
    pub records: Records,
}

/// Splits [`encode_envelope_with`]'s output into the book and the state.
/// An `LCMB` envelope holds members without records. Bytes without a
/// marker are a bare state snapshot (empty: none yet), as written before
/// snapshots carried the book; they name no members, and the state machine
/// checks them as its own.
pub fn decode_envelope(bytes: &[u8]) -> Result<(Envelope, &[u8]), EnvelopeError> {
    let (rest, with_records) = if let Some(rest) = bytes.strip_prefix(ENVELOPE_MAGIC) {
        (rest, true)
    } else if let Some(rest) = bytes.strip_prefix(ENVELOPE_MAGIC_V1) {
        (rest, false)
    } else {
        return Ok((Envelope::default(), bytes));
    };
    let bad = |why: &str| EnvelopeError(why.to_string());
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(|| bad("truncated length"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > BOOK_BYTES_MAX || len > rest.len() {
        return Err(bad("length out of range"));
    }
    let (text, mut rest) = rest.split_at(len);
    let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8"))?;
    let members = ClusterConfig::parse_members(text).map_err(EnvelopeError)?;
    let mut records = Records::new();
    if with_records {
        let (count, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("truncated record count"))?;
        let count = u32::from_le_bytes(*count) as usize;
        if count > RECORDS_MAX || count * 24 > tail.len() {
            return Err(bad("record count out of range"));
        }
        let (bytes, tail) = tail.split_at(count * 24);
        for triple in bytes.chunks_exact(24) {
            let word = |i: usize| u64::from_le_bytes(triple[8 * i..8 * i + 8].try_into().expect("8 bytes"));
            let (id, incarnation, index) = (word(0), word(1), word(2));
            if id == 0 || incarnation == 0 || index == 0 {
                return Err(bad("a record of node 0, incarnation 0 or index 0"));
            }
            if records.insert(id, Record { incarnation, index }).is_some() {
                return Err(bad("a member recorded twice"));
            }
        }
        rest = tail;
    }
    Ok((Envelope { members, records }, rest))
}

/// Parses a membership change's context: the joining member's entry.
pub fn member_from_context(context: &[u8]) -> Option<Member> {
    let text = std::str::from_utf8(context).ok()?;
    match ClusterConfig::parse_members(text).ok()?.as_slice() {
        [m] => Some(*m),
        _ => None,
    }
}

impl AddressBook {
    /// A book holding the bootstrap members (this node among them), with no
    /// incarnation recorded.
    pub fn new(me: Member, members: &[Member]) -> AddressBook {
        let mut map: BTreeMap<NodeId, Member> = members.iter().map(|m| (m.id, *m)).collect();
        map.insert(me.id, me);
        AddressBook {
            me,
            members: RwLock::new(Entries {
                members: map,
                records: Records::new(),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        self.members.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries> {
        self.members.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A member's client address (for redirects).
    pub fn client_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.read().members.get(&id).map(|m| m.client_addr)
    }

    /// Every member.
    pub fn members(&self) -> Vec<Member> {
        self.read().members.values().copied().collect()
    }

    /// Every other member's peer address.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.read()
            .members
            .values()
            .filter(|m| m.id != self.me.id)
            .map(|m| (m.id, m.peer_addr))
            .collect()
    }

    /// The recorded incarnations (this node's own among them once
    /// recorded).
    pub fn records(&self) -> Records {
        self.read().records.clone()
    }

    /// Whether `id`'s incarnation is recorded.
    pub fn is_recorded(&self, id: NodeId) -> bool {
        self.read().records.contains_key(&id)
    }

    /// The book as [`render`] writes it.
    pub fn render(&self) -> String {
        render(self.members())
    }

    /// Replaces the book with a snapshot's: its members (this node's own
    /// entry stays) and all its records.
    pub fn replace(&self, envelope: &Envelope) {
        let mut map: BTreeMap<NodeId, Member> = envelope.members.iter().map(|m| (m.id, *m)).collect();
        map.entry(self.me.id).or_insert(self.me);
        *self.write() = Entries {
            members: map,
            records: envelope.records.clone(),
        };
    }

    /// Records a joining member's addresses.
    pub fn insert(&self, member: Member) {
        self.write().members.insert(member.id, member);
    }

    /// Applies a committed record at log index `index`, `conf` being the
    /// configuration in force there: kept if the node is a member of it
    /// and has no record yet (the first record stays until the node leaves
    /// or enters the configuration, [`AddressBook::follow_change`]). False
    /// if nothing changed.
    ///
    /// Records depend only on the committed entries in log order, never on
    /// how they were batched or on the addresses a member was started
    /// with, so every member holds the same records at the same applied
    /// index.
    pub fn record(&self, id: NodeId, incarnation: u64, index: u64, conf: &ConfState) -> bool {
        let mut entries = self.write();
        if incarnation == 0
            || index == 0
            || !names(conf, id)
            || entries.records.contains_key(&id)
            || entries.records.len() >= RECORDS_MAX
        {
            return false;
        }
        entries.records.insert(id, Record { incarnation, index });
        true
    }

    /// Follows a committed membership change from `before` to `after`:
    /// a node that leaves the configuration, or enters it, loses its
    /// record, so the directory it shows next is recorded anew. A node in
    /// both (promoted, demoted, or an outgoing voter while joint) keeps it.
    pub fn follow_change(&self, before: &ConfState, after: &ConfState) {
        self.write()
            .records
            .retain(|&id, _| names(before, id) && names(after, id));
    }

    /// Drops the addresses of members `conf` no longer names (never this
    /// node's). Records follow the changes in log order instead
    /// ([`AddressBook::follow_change`]).
    pub fn retain_members_of(&self, conf: &ConfState) {
        let me = self.me.id;
        self.write().members.retain(|&id, _| id == me || names(conf, id));
    }
}

/// Whether any of `conf`'s lists names `id`.
fn names(conf: &ConfState, id: NodeId) -> bool {
    conf.voters.contains(&id)
        || conf.learners.contains(&id)
        || conf.voters_outgoing.contains(&id)
        || conf.learners_next.contains(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope around given state bytes.
    fn encode_envelope(members: &str, records: &Records, state: &[u8]) -> Vec<u8> {
        encode_envelope_with(members, records, |mut out| {
            out.extend_from_slice(state);
            out
        })
    }

    fn member(id: NodeId) -> Member {
        Member {
            id,
            client_addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
            peer_addr: format!("127.0.0.1:{}", 7100 + id).parse().unwrap(),
        }
    }

    #[test]
    fn envelope_round_trips_and_rejects_damage() {
        let text = render([member(1), member(2)]);
        let records = Records::from([(2, rec(0xABCD, 9)), (5, rec(1, 1))]);
        let bytes = encode_envelope(&text, &records, b"state");
        let (envelope, state) = decode_envelope(&bytes).unwrap();
        assert_eq!(envelope.members, vec![member(1), member(2)]);
        assert_eq!(envelope.records, records, "records of nodes not listed too");
        assert_eq!(state, b"state");
        assert_eq!(decode_envelope(&[]).unwrap().0, Envelope::default());
        assert_eq!(
            decode_envelope(b"bare state").unwrap(),
            (Envelope::default(), &b"bare state"[..])
        );
        // The first version: members, no records.
        let mut v1 = b"LCMB".to_vec();
        v1.extend_from_slice(&(text.len() as u32).to_le_bytes());
        v1.extend_from_slice(text.as_bytes());
        v1.extend_from_slice(b"state");
        let (envelope, state) = decode_envelope(&v1).unwrap();
        assert_eq!(envelope.members, vec![member(1), member(2)]);
        assert!(envelope.records.is_empty());
        assert_eq!(state, b"state");
        let header = 8 + text.len();
        let mut bad_count = bytes.clone();
        bad_count[header..header + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        for bad in [
            &bytes[..6],
            &bytes[..header + 2],
            &bytes[..header + 4 + 16],
            &bad_count[..],
            &encode_envelope("1=nonsense", &Records::new(), b"")[..],
            &encode_envelope(&text, &Records::from([(0, rec(1, 1))]), b"")[..],
            &encode_envelope(&text, &Records::from([(1, rec(0, 1))]), b"")[..],
            &encode_envelope(&text, &Records::from([(1, rec(1, 0))]), b"")[..],
            &[b'L', b'C', b'M', b'2', 0xFF, 0xFF, 0xFF, 0xFF][..],
        ] {
            assert!(decode_envelope(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_book_follows_membership() {
        let book = AddressBook::new(member(1), &[member(1), member(2), member(3)]);
        assert_eq!(book.peers().keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        let joiner = member_from_context(render([member(4)]).as_bytes()).unwrap();
        book.insert(joiner);
        assert_eq!(book.client_addr(4), Some(member(4).client_addr));
        book.retain_members_of(&ConfState::with_voters([1, 3, 4]));
        assert_eq!(book.peers().keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        book.replace(&Envelope {
            members: vec![member(2)],
            records: Records::from([(2, rec(5, 3))]),
        });
        assert_eq!(
            book.members().iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![1, 2],
            "a snapshot's book keeps this node"
        );
        assert_eq!(book.records(), Records::from([(2, rec(5, 3))]));
        assert!(member_from_context(b"").is_none());
        assert!(member_from_context(render([member(4), member(5)]).as_bytes()).is_none());
    }

    #[test]
    fn a_record_holds_while_its_node_stays_in_the_configuration() {
        let book = AddressBook::new(member(1), &[member(1), member(2), member(3)]);
        let three = ConfState::with_voters([1, 2, 3]);
        assert!(book.record(2, 7, 10, &three));
        assert!(!book.record(2, 8, 11, &three), "the first record stays");
        assert!(!book.record(9, 1, 12, &three), "not a member at that point of the log");
        assert!(!book.record(3, 0, 13, &three), "zero is no incarnation");
        assert!(book.record(3, 4, 14, &three));
        assert_eq!(book.records(), Records::from([(2, rec(7, 10)), (3, rec(4, 14))]));
        book.retain_members_of(&ConfState::with_voters([1, 3]));
        assert_eq!(book.records().len(), 2, "addresses do not decide records");

        // Node 2 removed: joint first (an outgoing voter keeps its
        // record), then out.
        let joint = ConfState {
            voters: vec![1, 3],
            voters_outgoing: vec![1, 2, 3],
            ..ConfState::default()
        };
        book.follow_change(&three, &joint);
        assert!(book.is_recorded(2), "still votes while joint");
        let two = ConfState::with_voters([1, 3]);
        book.follow_change(&joint, &two);
        assert!(!book.is_recorded(2), "left the configuration");
        assert!(book.is_recorded(3));
        // Added back as a learner, it is recorded anew; promoted, it keeps
        // that record.
        let with_learner = ConfState {
            voters: vec![1, 3],
            learners: vec![2],
            ..ConfState::default()
        };
        book.follow_change(&two, &with_learner);
        assert!(book.record(2, 8, 20, &with_learner));
        book.follow_change(&with_learner, &three);
        assert_eq!(book.records()[&2], rec(8, 20));

        book.replace(&Envelope {
            members: vec![member(2)],
            records: Records::from([(1, rec(4, 2)), (7, rec(5, 3))]),
        });
        assert_eq!(
            book.records(),
            Records::from([(1, rec(4, 2)), (7, rec(5, 3))]),
            "a snapshot's records are taken whole"
        );
    }

    fn rec(incarnation: u64, index: u64) -> Record {
        Record { incarnation, index }
    }
}
