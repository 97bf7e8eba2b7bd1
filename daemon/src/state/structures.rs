//! The data structures. Responses never depend on hash order: listings
//! walk insertion ids, so every replica pages through a structure alike.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::entry_cost;

/// A named structure.
#[derive(Debug)]
pub(crate) enum Structure {
    Map(MapState),
    Queue(QueueState),
    Set(SetState),
    Atomic(Atomic),
    Topic(TopicState),
}

impl Structure {
    /// The type's name, as clients know it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Structure::Map(_) => "Map",
            Structure::Queue(_) => "Queue",
            Structure::Set(_) => "Set",
            Structure::Atomic(_) => "AtomicLong",
            Structure::Topic(_) => "Topic",
        }
    }
}

/// One map entry.
#[derive(Debug)]
pub(crate) struct MapEntry {
    /// Shared, so that a snapshot can hold the values of the moment it was
    /// taken while the map changes (13.7).
    pub value: Arc<[u8]>,
    /// Absolute expiry (leader ms), if any.
    pub expires: Option<u64>,
    /// Insertion id: orders scans. A rewrite keeps it; a key removed and
    /// written again gets a new one.
    pub id: u64,
    /// Bytes counted against the memory limit.
    pub cost: u64,
}

impl MapEntry {
    pub fn expired_at(&self, now: u64) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// What [`MapState::put_if`] did.
#[derive(Debug)]
pub(crate) enum Put {
    /// Not stored: the condition did not hold. The value there, expired
    /// or not, if any.
    Declined(Option<Arc<[u8]>>),
    /// Not stored: the memory limit would be passed.
    TooLarge,
    /// Stored under a new key (it took the fresh id).
    Inserted,
    /// Stored over this entry, expired or not; the key kept its id.
    Replaced(MapEntry),
}

/// A Map with a TTL per entry. Expired entries are invisible at once and
/// removed later (by the state machine's bounded reclaim, or on write).
#[derive(Debug, Default)]
pub(crate) struct MapState {
    entries: HashMap<Box<[u8]>, MapEntry>,
    order: BTreeMap<u64, Box<[u8]>>,
}

impl MapState {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every entry, expired or not, in insertion-id order. Walks the
    /// entries once and sorts them by id, rather than looking each key of
    /// the order index up (a hash and a probe per entry). The ids are
    /// copied beside the references, so the sort reads only its own
    /// array, not the table.
    pub fn ordered(&self) -> Vec<(u64, &[u8], &MapEntry)> {
        let mut all: Vec<(u64, &[u8], &MapEntry)> = self.entries.iter().map(|(k, e)| (e.id, &**k, e)).collect();
        all.sort_unstable_by_key(|&(id, _, _)| id);
        all
    }

    /// Puts back an entry read from a snapshot.
    pub fn restore(&mut self, key: &[u8], entry: MapEntry) {
        self.order.insert(entry.id, key.into());
        self.entries.insert(key.into(), entry);
    }

    pub fn get(&self, key: &[u8], now: u64) -> Option<&[u8]> {
        self.entries.get(key).filter(|e| !e.expired_at(now)).map(|e| &*e.value)
    }

    /// Live entries. Walks the map: an exact count must skip entries that
    /// expired but are not reclaimed yet.
    pub fn live_len(&self, now: u64) -> u64 {
        self.entries.values().filter(|e| !e.expired_at(now)).count() as u64
    }

    /// The entry stored under `key`, expired or not.
    pub fn entry(&self, key: &[u8]) -> Option<&MapEntry> {
        self.entries.get(key)
    }

    /// Stores `value` under `key` if `proceed(the entry there, expired or
    /// not)` and `fits(cost of the entry replaced, 0 if none)`, with one
    /// lookup for a key already present. A new key takes insertion id
    /// `fresh`; a rewrite keeps the key's id and place in the order index,
    /// so only the value is stored anew.
    pub fn put_if(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires: Option<u64>,
        fresh: u64,
        proceed: impl FnOnce(Option<&MapEntry>) -> bool,
        fits: impl FnOnce(u64) -> bool,
    ) -> Put {
        let cost = entry_cost(key.len(), value.len());
        if let Some(existing) = self.entries.get_mut(key) {
            if !proceed(Some(existing)) {
                return Put::Declined(Some(existing.value.clone()));
            }
            if !fits(existing.cost) {
                return Put::TooLarge;
            }
            let entry = MapEntry {
                value: value.into(),
                expires,
                id: existing.id,
                cost,
            };
            return Put::Replaced(core::mem::replace(existing, entry));
        }
        if !proceed(None) {
            return Put::Declined(None);
        }
        if !fits(0) {
            return Put::TooLarge;
        }
        self.entries.insert(
            key.into(),
            MapEntry {
                value: value.into(),
                expires,
                id: fresh,
                cost,
            },
        );
        self.order.insert(fresh, key.into());
        Put::Inserted
    }

    /// Removes `key`: `(was live, bytes freed)`.
    pub fn remove(&mut self, key: &[u8], now: u64) -> Option<(bool, u64)> {
        let e = self.entries.remove(key)?;
        self.order.remove(&e.id);
        Some((!e.expired_at(now), e.cost))
    }

    /// Removes `key` if `pred` holds for its entry: bytes freed.
    pub fn remove_if(&mut self, key: &[u8], pred: impl FnOnce(&MapEntry) -> bool) -> Option<u64> {
        if !pred(self.entries.get(key)?) {
            return None;
        }
        let e = self.entries.remove(key)?;
        self.order.remove(&e.id);
        Some(e.cost)
    }

    /// Removes everything: `(live entries, bytes freed)`.
    pub fn clear(&mut self, now: u64) -> (u64, u64) {
        let live = self.live_len(now);
        let bytes = self.entries.values().map(|e| e.cost).sum();
        self.entries.clear();
        self.order.clear();
        (live, bytes)
    }

    /// Up to `page` live entries with insertion id at or after `cursor`
    /// (0 = from the start), and the cursor to continue from (0 = done).
    pub fn scan(&self, cursor: u64, page: usize, now: u64) -> (u64, Vec<(&[u8], &[u8])>) {
        let mut out = Vec::with_capacity(page.min(self.entries.len()));
        let mut next = 0;
        for (&id, key) in self.order.range(cursor..) {
            if out.len() == page {
                next = id;
                break;
            }
            if let Some(e) = self.entries.get(key).filter(|e| !e.expired_at(now)) {
                out.push((&**key, &*e.value));
            }
        }
        (next, out)
    }
}

/// A FIFO queue.
#[derive(Debug, Default)]
pub(crate) struct QueueState {
    items: VecDeque<Box<[u8]>>,
}

impl QueueState {
    pub fn push(&mut self, item: &[u8]) {
        self.items.push_back(item.into());
    }
    pub fn pop(&mut self) -> Option<Box<[u8]>> {
        self.items.pop_front()
    }
    pub fn items(&self) -> impl Iterator<Item = &[u8]> {
        self.items.iter().map(|b| &**b)
    }
    pub fn peek(&self) -> Option<&[u8]> {
        self.items.front().map(|b| &**b)
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn drain(&mut self, max: usize) -> Vec<Box<[u8]>> {
        let n = max.min(self.items.len());
        self.items.drain(..n).collect()
    }
}

/// A set of byte strings.
#[derive(Debug, Default)]
pub(crate) struct SetState {
    members: HashMap<Box<[u8]>, u64>,
    order: BTreeMap<u64, Box<[u8]>>,
}

impl SetState {
    /// Members with their insertion ids, in id order.
    pub fn ordered(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.order.iter().map(|(&id, m)| (id, &**m))
    }
    pub fn contains(&self, member: &[u8]) -> bool {
        self.members.contains_key(member)
    }
    pub fn len(&self) -> usize {
        self.members.len()
    }
    pub fn insert(&mut self, member: &[u8], id: u64) {
        self.members.insert(member.into(), id);
        self.order.insert(id, member.into());
    }
    pub fn remove(&mut self, member: &[u8]) -> bool {
        match self.members.remove(member) {
            Some(id) => {
                self.order.remove(&id);
                true
            }
            None => false,
        }
    }
    /// `(members removed, bytes freed)`.
    pub fn clear(&mut self) -> (u64, u64) {
        let bytes = self.members.keys().map(|m| entry_cost(m.len(), 0)).sum();
        let n = self.members.len() as u64;
        self.members.clear();
        self.order.clear();
        (n, bytes)
    }
    /// Up to `page` members from `cursor`, and the next cursor (0 = done).
    pub fn page(&self, cursor: u64, page: usize) -> (u64, Vec<&[u8]>) {
        let mut out = Vec::with_capacity(page.min(self.members.len()));
        let mut next = 0;
        for (&id, member) in self.order.range(cursor..) {
            if out.len() == page {
                next = id;
                break;
            }
            out.push(&**member);
        }
        (next, out)
    }
}

/// An AtomicLong.
#[derive(Debug, Default)]
pub(crate) struct Atomic {
    pub value: i64,
}

/// A topic: the log orders its messages; the daemon delivers them to
/// subscribers on their connections.
#[derive(Debug, Default)]
pub(crate) struct TopicState {
    next_sequence: u64,
}

impl TopicState {
    /// A topic whose next message gets `last + 1`.
    pub fn starting_after(last: u64) -> TopicState {
        TopicState { next_sequence: last }
    }
    /// The sequence of the last message published.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }
    /// Assigns the next message sequence (from 1).
    pub fn publish(&mut self) -> u64 {
        self.next_sequence += 1;
        self.next_sequence
    }
}
