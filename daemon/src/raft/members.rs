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

/// The recorded incarnation of each member's data directory.
pub type Incarnations = BTreeMap<NodeId, u64>;

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
    /// Members whose incarnation the group recorded (never zero).
    incarnations: Incarnations,
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
/// incarnation records and that many `(node id u64 LE, incarnation u64
/// LE)` pairs, then the state, written straight after the book by
/// `write_state` (which appends to the buffer it is given and returns it),
/// so the state is copied once.
pub fn encode_envelope_with(
    members: &str,
    incarnations: &Incarnations,
    write_state: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + members.len() + 16 * incarnations.len());
    out.extend_from_slice(ENVELOPE_MAGIC);
    out.extend_from_slice(&(members.len() as u32).to_le_bytes());
    out.extend_from_slice(members.as_bytes());
    out.extend_from_slice(&(incarnations.len() as u32).to_le_bytes());
    for (&id, &incarnation) in incarnations {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&incarnation.to_le_bytes());
    }
    write_state(out)
}

/// What a snapshot's envelope holds before the state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The members (none: a bare state snapshot).
    pub members: Vec<Member>,
    /// The recorded incarnations.
    pub incarnations: Incarnations,
}

/// Splits [`encode_envelope_with`]'s output into the book and the state.
/// An `LCMB` envelope holds members without incarnations. Bytes without a
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
    let mut incarnations = Incarnations::new();
    if with_records {
        let (count, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("truncated record count"))?;
        let count = u32::from_le_bytes(*count) as usize;
        if count > RECORDS_MAX || count * 16 > tail.len() {
            return Err(bad("record count out of range"));
        }
        let (records, tail) = tail.split_at(count * 16);
        for pair in records.chunks_exact(16) {
            let (id, incarnation) = pair.split_at(8);
            let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
            let incarnation = u64::from_le_bytes(incarnation.try_into().expect("8 bytes"));
            if id == 0 || incarnation == 0 {
                return Err(bad("a record of node 0 or of incarnation 0"));
            }
            if incarnations.insert(id, incarnation).is_some() {
                return Err(bad("a member recorded twice"));
            }
        }
        rest = tail;
    }
    Ok((Envelope { members, incarnations }, rest))
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
                incarnations: Incarnations::new(),
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
    pub fn incarnations(&self) -> Incarnations {
        self.read().incarnations.clone()
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
            incarnations: envelope.incarnations.clone(),
        };
    }

    /// Records a joining member's addresses. A node not in the book starts
    /// with no incarnation recorded.
    pub fn insert(&self, member: Member) {
        self.write().members.insert(member.id, member);
    }

    /// Applies a committed record: the first incarnation recorded for a
    /// node stays until a membership change names the node again
    /// ([`AddressBook::forget_record`]). False if nothing changed (node 0,
    /// incarnation 0, or one already recorded).
    ///
    /// Records depend only on the committed entries, in log order, never
    /// on the addresses a member was started with, so every member holds
    /// the same records at the same applied index.
    pub fn record(&self, id: NodeId, incarnation: u64) -> bool {
        let mut entries = self.write();
        if id == 0 || incarnation == 0 || entries.incarnations.contains_key(&id) {
            return false;
        }
        entries.incarnations.insert(id, incarnation);
        true
    }

    /// Drops a node's record: a committed change adds it as a learner or
    /// removes it, so the directory it shows next is recorded anew.
    pub fn forget_record(&self, id: NodeId) {
        self.write().incarnations.remove(&id);
    }

    /// Drops the addresses of members `conf` no longer names (never this
    /// node's). Records stay: they follow the changes in log order
    /// ([`AddressBook::forget_record`]).
    pub fn retain_members_of(&self, conf: &ConfState) {
        let me = self.me.id;
        self.write().members.retain(|id, _| {
            *id == me
                || conf.voters.contains(id)
                || conf.learners.contains(id)
                || conf.voters_outgoing.contains(id)
                || conf.learners_next.contains(id)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope around given state bytes.
    fn encode_envelope(members: &str, incarnations: &Incarnations, state: &[u8]) -> Vec<u8> {
        encode_envelope_with(members, incarnations, |mut out| {
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
        let records = Incarnations::from([(2, 0xABCD)]);
        let bytes = encode_envelope(&text, &records, b"state");
        let (envelope, state) = decode_envelope(&bytes).unwrap();
        assert_eq!(envelope.members, vec![member(1), member(2)]);
        assert_eq!(envelope.incarnations, records);
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
        assert!(envelope.incarnations.is_empty());
        assert_eq!(state, b"state");
        let header = 8 + text.len();
        let mut bad_count = bytes.clone();
        bad_count[header..header + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        for bad in [
            &bytes[..6],
            &bytes[..header + 2],
            &bytes[..header + 4 + 8],
            &bad_count[..],
            &encode_envelope("1=nonsense", &Incarnations::new(), b"")[..],
            &encode_envelope(&text, &Incarnations::from([(0, 1)]), b"")[..],
            &encode_envelope(&text, &Incarnations::from([(1, 0)]), b"")[..],
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
            incarnations: Incarnations::from([(2, 5)]),
        });
        assert_eq!(
            book.members().iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![1, 2],
            "a snapshot's book keeps this node"
        );
        assert_eq!(book.incarnations(), Incarnations::from([(2, 5)]));
        assert!(member_from_context(b"").is_none());
        assert!(member_from_context(render([member(4), member(5)]).as_bytes()).is_none());
    }

    #[test]
    fn a_nodes_first_recorded_incarnation_stays_until_a_change_names_it() {
        let book = AddressBook::new(member(1), &[member(1), member(2), member(3)]);
        assert!(book.record(2, 7));
        assert!(!book.record(2, 8), "the first record stays");
        assert!(book.record(9, 1), "records do not depend on the addresses held");
        assert!(!book.record(3, 0), "zero is no incarnation");
        assert!(!book.record(0, 3), "node 0 is no node");
        assert_eq!(book.incarnations(), Incarnations::from([(2, 7), (9, 1)]));
        book.retain_members_of(&ConfState::with_voters([1, 3]));
        assert_eq!(
            book.incarnations(),
            Incarnations::from([(2, 7), (9, 1)]),
            "records do not follow the configuration a batch ends with"
        );
        book.forget_record(2);
        assert!(book.record(2, 8), "named by a change, it is recorded anew");
        assert_eq!(book.incarnations(), Incarnations::from([(2, 8), (9, 1)]));
        book.forget_record(1);
        book.replace(&Envelope {
            members: vec![member(2)],
            incarnations: Incarnations::from([(1, 4), (7, 5)]),
        });
        assert_eq!(
            book.incarnations(),
            Incarnations::from([(1, 4), (7, 5)]),
            "a snapshot's records are taken whole, this node's and non-members' included"
        );
    }
}
