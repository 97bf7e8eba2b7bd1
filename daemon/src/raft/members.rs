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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::RwLock;

use loomcache_consensus::{ConfState, NodeId};

use crate::config::{ClusterConfig, Member};

/// Marks a snapshot that starts with the address book.
const ENVELOPE_MAGIC: &[u8; 4] = b"LCMB";

/// Largest encoded book accepted from a snapshot or a change.
pub const BOOK_BYTES_MAX: usize = 64 << 10;

/// Members by id; readers (redirects, status) never wait on the writer for
/// long: it only swaps small maps.
#[derive(Debug)]
pub struct AddressBook {
    me: Member,
    members: RwLock<BTreeMap<NodeId, Member>>,
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

/// Prefixes state-machine snapshot bytes with the book: `LCMB`, a `u32`
/// LE length, the members as [`render`] writes them, then the state,
/// written straight after the book by `write_state` (which appends to the
/// buffer it is given and returns it), so the state is copied once.
pub fn encode_envelope_with(members: &str, write_state: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + members.len());
    out.extend_from_slice(ENVELOPE_MAGIC);
    out.extend_from_slice(&(members.len() as u32).to_le_bytes());
    out.extend_from_slice(members.as_bytes());
    write_state(out)
}

/// Splits [`encode_envelope_with`]'s output into the members and the state.
/// Bytes without the marker are a bare state snapshot (empty: none yet),
/// as written before snapshots carried the book; they name no members,
/// and the state machine checks them as its own.
pub fn decode_envelope(bytes: &[u8]) -> Result<(Vec<Member>, &[u8]), EnvelopeError> {
    let Some(rest) = bytes.strip_prefix(ENVELOPE_MAGIC) else {
        return Ok((Vec::new(), bytes));
    };
    let bad = |why: &str| EnvelopeError(why.to_string());
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(|| bad("truncated length"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > BOOK_BYTES_MAX || len > rest.len() {
        return Err(bad("length out of range"));
    }
    let (text, state) = rest.split_at(len);
    let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8"))?;
    let members = ClusterConfig::parse_members(text).map_err(EnvelopeError)?;
    Ok((members, state))
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
    /// A book holding the bootstrap members (this node among them).
    pub fn new(me: Member, members: &[Member]) -> AddressBook {
        let mut map: BTreeMap<NodeId, Member> = members.iter().map(|m| (m.id, *m)).collect();
        map.insert(me.id, me);
        AddressBook {
            me,
            members: RwLock::new(map),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeId, Member>> {
        self.members.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<NodeId, Member>> {
        self.members.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A member's client address (for redirects).
    pub fn client_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.read().get(&id).map(|m| m.client_addr)
    }

    /// Every member.
    pub fn members(&self) -> Vec<Member> {
        self.read().values().copied().collect()
    }

    /// Every other member's peer address.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.read()
            .values()
            .filter(|m| m.id != self.me.id)
            .map(|m| (m.id, m.peer_addr))
            .collect()
    }

    /// The book as [`render`] writes it.
    pub fn render(&self) -> String {
        render(self.members())
    }

    /// Replaces the book with a snapshot's (this node's own entry stays).
    pub fn replace(&self, members: &[Member]) {
        let mut map: BTreeMap<NodeId, Member> = members.iter().map(|m| (m.id, *m)).collect();
        map.entry(self.me.id).or_insert(self.me);
        *self.write() = map;
    }

    /// Records a joining member's addresses.
    pub fn insert(&self, member: Member) {
        self.write().insert(member.id, member);
    }

    /// Drops members `conf` no longer names (never this node).
    pub fn retain_members_of(&self, conf: &ConfState) {
        let me = self.me.id;
        self.write().retain(|id, _| {
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
    fn encode_envelope(members: &str, state: &[u8]) -> Vec<u8> {
        encode_envelope_with(members, |mut out| {
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
        let bytes = encode_envelope(&text, b"state");
        let (members, state) = decode_envelope(&bytes).unwrap();
        assert_eq!(members, vec![member(1), member(2)]);
        assert_eq!(state, b"state");
        assert_eq!(decode_envelope(&[]).unwrap().0, vec![]);
        assert_eq!(decode_envelope(b"bare state").unwrap(), (vec![], &b"bare state"[..]));
        for bad in [
            &bytes[..6],
            &encode_envelope("1=nonsense", b"")[..],
            &[b'L', b'C', b'M', b'B', 0xFF, 0xFF, 0xFF, 0xFF][..],
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
        book.replace(&[member(2)]);
        assert_eq!(
            book.members().iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![1, 2],
            "a snapshot's book keeps this node"
        );
        assert!(member_from_context(b"").is_none());
        assert!(member_from_context(render([member(4), member(5)]).as_bytes()).is_none());
    }
}
