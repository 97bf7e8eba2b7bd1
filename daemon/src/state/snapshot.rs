//! The state machine as bytes, for Raft snapshots.
//!
//! Layout (all integers little-endian):
//!
//! | field | bytes |
//! |---|---|
//! | magic `LCSM` | 4 |
//! | version (1) | 2 |
//! | now_ms, next_id, applied, memory_used | 4 × 8 |
//! | structure count | 4 |
//! | per structure, by name: name (u8 length + bytes), kind (u8), body | … |
//! | TTL index record count | 4 |
//! | per record, by (expiry, id): expiry u64, id u64, map name (u8 length + bytes), key (u16 length + bytes) | … |
//! | dedup client count | 4 |
//! | per client, by id: id, highest, at_ms (3 × u64), answers (u32 count), each: seq u64, opcode u16, status u16, kept u8, body (u32 length + bytes when kept) | … |
//!
//! Bodies: Map (kind 0): u32 count, then per entry in insertion-id order:
//! id u64, expires u64 (`u64::MAX` = none), key (u16 length + bytes),
//! value (u32 length + bytes). Queue (1): u32 count, items (u32 length +
//! bytes) front first. Set (2): u32 count, per member in id order: id u64,
//! member (u16 length + bytes). Atomic (3): i64. Topic (4): next sequence
//! u64.
//!
//! Everything is ordered (names sorted, entries by insertion id, TTL
//! records by expiry then id, clients by id), so two replicas with equal
//! state write equal bytes. The TTL index is written as it stands,
//! including records left stale by overwrites and deletes: reclaim pops a
//! bounded number of records per apply, stale or not, so a replica
//! restored from a snapshot must hold the same records to reclaim, and so
//! to account memory, exactly as one that applied the log. Decoding
//! checks every length against the bytes present and the configured
//! limits, so a damaged snapshot is an error, never a panic or an
//! unbounded allocation.

use std::collections::HashMap;
use std::sync::Arc;

use loomcache_wire::{ErrorCode, Opcode};

use super::dedup::{Cached, DedupTable};
use super::structures::{Atomic, MapEntry, MapState, QueueState, SetState, Structure, TopicState};
use super::{entry_cost, Outcome, StateConfig, StateMachine};

const MAGIC: [u8; 4] = *b"LCSM";
const VERSION: u16 = 1;

/// Why snapshot bytes cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state machine snapshot is invalid at byte {offset}: {reason}")]
pub struct SnapshotError {
    /// Where decoding stopped.
    pub offset: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// The encoder's output: the bytes, and, when freezing a view, the map
/// values left out of them with where each goes.
struct W {
    out: Vec<u8>,
    shared: Option<Vec<(usize, Arc<[u8]>)>>,
}

impl W {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes8(&mut self, b: &[u8]) {
        self.u8(b.len() as u8);
        self.out.extend_from_slice(b);
    }
    fn bytes16(&mut self, b: &[u8]) {
        self.u16(b.len() as u16);
        self.out.extend_from_slice(b);
    }
    fn bytes32(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.out.extend_from_slice(b);
    }
    /// A map value, as [`W::bytes32`] would write it; a view keeps a
    /// reference to it in place of the bytes.
    fn value(&mut self, v: &Arc<[u8]>) {
        match &mut self.shared {
            Some(shared) => {
                self.out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                shared.push((self.out.len(), Arc::clone(v)));
            }
            None => self.bytes32(v),
        }
    }
}

/// The state machine's snapshot as of one moment, taken quickly: every
/// byte of it except the map values is encoded, and the values are held
/// by reference (they are never changed in place, only replaced), so the
/// state can change while [`SnapshotView::finish_into`] copies them in on
/// another thread.
#[derive(Debug)]
pub struct SnapshotView {
    /// The encoding without the map values.
    skeleton: Vec<u8>,
    /// Each value and the offset in `skeleton` it goes at, in order.
    values: Vec<(usize, Arc<[u8]>)>,
    /// Bytes of the values.
    value_bytes: usize,
}

impl SnapshotView {
    /// Appends the snapshot bytes to `out`: exactly what
    /// [`StateMachine::snapshot_into`] wrote at the moment of the view.
    pub fn finish_into(self, mut out: Vec<u8>) -> Vec<u8> {
        out.reserve(self.skeleton.len() + self.value_bytes);
        let mut at = 0;
        for (offset, value) in &self.values {
            out.extend_from_slice(&self.skeleton[at..*offset]);
            out.extend_from_slice(value);
            at = *offset;
        }
        out.extend_from_slice(&self.skeleton[at..]);
        out
    }
}

struct R<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> R<'a> {
    fn fail<T>(&self, reason: &'static str) -> Result<T, SnapshotError> {
        Err(SnapshotError {
            offset: self.at,
            reason,
        })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.bytes.len() - self.at < n {
            return self.fail("truncated");
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self, len: usize, max: u32) -> Result<&'a [u8], SnapshotError> {
        if len > max as usize {
            return self.fail("length above the configured limit");
        }
        self.take(len)
    }
    /// A count of items that each take at least `min_item` bytes: bounded
    /// by what is left, so no allocation can exceed the input.
    fn count(&mut self, min_item: usize) -> Result<usize, SnapshotError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.bytes.len() - self.at {
            return self.fail("count exceeds the remaining bytes");
        }
        Ok(n)
    }
}

impl StateMachine {
    /// The whole state as snapshot bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.snapshot_into(Vec::new())
    }

    /// Appends the snapshot bytes to `out` (which may already hold a
    /// header), reserving room for all of them first so the state is
    /// copied once, without the buffer growing under it.
    pub fn snapshot_into(&self, mut out: Vec<u8>) -> Vec<u8> {
        // Stored bytes plus the fixed fields and length prefixes of each
        // item (at most a quarter more for the smallest items).
        let used = self.memory_used as usize;
        out.reserve(4096 + used.saturating_add(used / 4));
        let mut w = W { out, shared: None };
        self.encode(&mut w);
        w.out
    }

    /// The snapshot as of now, with the map values shared rather than
    /// copied: cheap enough to take while applying stalls, finished
    /// elsewhere.
    pub fn snapshot_view(&self) -> SnapshotView {
        let mut w = W {
            out: Vec::with_capacity(4096),
            shared: Some(Vec::new()),
        };
        self.encode(&mut w);
        let values = w.shared.unwrap_or_default();
        SnapshotView {
            skeleton: w.out,
            value_bytes: values.iter().map(|(_, v)| v.len()).sum(),
            values,
        }
    }

    fn encode(&self, w: &mut W) {
        w.out.extend_from_slice(&MAGIC);
        w.u16(VERSION);
        w.u64(self.now_ms);
        w.u64(self.next_id);
        w.u64(self.applied);
        w.u64(self.memory_used);
        let mut names: Vec<&Box<str>> = self.structures.keys().collect();
        names.sort();
        w.u32(names.len() as u32);
        for name in names {
            w.bytes8(name.as_bytes());
            match &self.structures[name] {
                Structure::Map(m) => {
                    w.u8(0);
                    w.u32(m.len() as u32);
                    for (id, key, e) in m.ordered() {
                        w.u64(id);
                        w.u64(e.expires.unwrap_or(u64::MAX));
                        w.bytes16(key);
                        w.value(&e.value);
                    }
                }
                Structure::Queue(q) => {
                    w.u8(1);
                    w.u32(q.len() as u32);
                    for item in q.items() {
                        w.bytes32(item);
                    }
                }
                Structure::Set(s) => {
                    w.u8(2);
                    w.u32(s.len() as u32);
                    for (id, member) in s.ordered() {
                        w.u64(id);
                        w.bytes16(member);
                    }
                }
                Structure::Atomic(a) => {
                    w.u8(3);
                    w.u64(a.value as u64);
                }
                Structure::Topic(t) => {
                    w.u8(4);
                    w.u64(t.next_sequence());
                }
            }
        }
        w.u32(self.expiry.len() as u32);
        for (&(at, id), (name, key)) in &self.expiry {
            w.u64(at);
            w.u64(id);
            w.bytes8(name.as_bytes());
            w.bytes16(key);
        }
        let clients = self.dedup.clients_ordered();
        w.u32(clients.len() as u32);
        for (id, highest, at_ms, answers) in clients {
            w.u64(id);
            w.u64(highest);
            w.u64(at_ms);
            w.u32(answers.len() as u32);
            for (seq, cached) in answers {
                w.u64(seq);
                w.u16(cached.outcome.opcode.code());
                w.u16(cached.outcome.status.code());
                match &cached.body {
                    Some(body) => {
                        w.u8(1);
                        w.bytes32(body);
                    }
                    None => w.u8(0),
                }
            }
        }
    }

    /// Replaces the whole state with a snapshot's. An empty snapshot (a
    /// group that never took one) is the empty state. On error nothing
    /// changes.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        if data.is_empty() {
            *self = StateMachine::new(self.config);
            return Ok(());
        }
        let restored = decode(self.config, data)?;
        *self = restored;
        Ok(())
    }
}

fn decode(config: StateConfig, data: &[u8]) -> Result<StateMachine, SnapshotError> {
    let limits = config.limits;
    let mut r = R { bytes: data, at: 0 };
    if r.take(4)? != MAGIC {
        return r.fail("not a state machine snapshot");
    }
    if r.u16()? != VERSION {
        return r.fail("unknown snapshot version");
    }
    let mut sm = StateMachine::new(config);
    sm.now_ms = r.u64()?;
    sm.next_id = r.u64()?;
    sm.applied = r.u64()?;
    let memory_claimed = r.u64()?;
    let mut memory = 0u64;
    let count = r.count(2)?;
    let mut structures = HashMap::with_capacity(count);
    let mut previous: Option<Box<str>> = None;
    for _ in 0..count {
        let len = r.u8()? as usize;
        let name = std::str::from_utf8(r.bytes(len, limits.name_max_bytes)?)
            .map_err(|_| SnapshotError {
                offset: r.at,
                reason: "structure name is not UTF-8",
            })?
            .into();
        if previous.as_ref().is_some_and(|p| *p >= name) {
            return r.fail("structure names are not in order");
        }
        memory += entry_cost(name.len(), 0);
        let structure = match r.u8()? {
            0 => {
                let mut m = MapState::default();
                let n = r.count(8 + 8 + 2 + 4)?;
                let mut last_id = 0;
                for _ in 0..n {
                    let id = r.u64()?;
                    if id <= last_id || id >= sm.next_id {
                        return r.fail("map entry ids are not increasing below next_id");
                    }
                    last_id = id;
                    let expires = match r.u64()? {
                        u64::MAX => None,
                        at => Some(at),
                    };
                    let klen = r.u16()? as usize;
                    let key = r.bytes(klen, limits.key_max_bytes)?;
                    let vlen = r.u32()? as usize;
                    let value = r.bytes(vlen, limits.value_max_bytes)?;
                    if m.entry(key).is_some() {
                        return r.fail("duplicate map key");
                    }
                    let cost = entry_cost(key.len(), value.len());
                    memory += cost;
                    m.restore(
                        key,
                        MapEntry {
                            value: value.into(),
                            expires,
                            id,
                            cost,
                        },
                    );
                }
                Structure::Map(m)
            }
            1 => {
                let mut q = QueueState::default();
                let n = r.count(4)?;
                for _ in 0..n {
                    let len = r.u32()? as usize;
                    let item = r.bytes(len, limits.value_max_bytes)?;
                    memory += entry_cost(0, item.len());
                    q.push(item);
                }
                Structure::Queue(q)
            }
            2 => {
                let mut s = SetState::default();
                let n = r.count(8 + 2)?;
                let mut last_id = 0;
                for _ in 0..n {
                    let id = r.u64()?;
                    if id <= last_id || id >= sm.next_id {
                        return r.fail("set member ids are not increasing below next_id");
                    }
                    last_id = id;
                    let len = r.u16()? as usize;
                    let member = r.bytes(len, limits.key_max_bytes)?;
                    if s.contains(member) {
                        return r.fail("duplicate set member");
                    }
                    memory += entry_cost(member.len(), 0);
                    s.insert(member, id);
                }
                Structure::Set(s)
            }
            3 => Structure::Atomic(Atomic { value: r.u64()? as i64 }),
            4 => Structure::Topic(TopicState::starting_after(r.u64()?)),
            _ => return r.fail("unknown structure kind"),
        };
        previous = Some(name_clone(&name));
        structures.insert(name, structure);
    }
    sm.structures = structures;
    if memory != memory_claimed {
        return r.fail("memory accounting does not match the contents");
    }
    sm.memory_used = memory;
    let records = r.count(8 + 8 + 1 + 2)?;
    let mut last_record = None;
    for _ in 0..records {
        let at = r.u64()?;
        let id = r.u64()?;
        if last_record.is_some_and(|l| l >= (at, id)) || id >= sm.next_id {
            return r.fail("TTL records are not in order below next_id");
        }
        last_record = Some((at, id));
        let len = r.u8()? as usize;
        let name = std::str::from_utf8(r.bytes(len, limits.name_max_bytes)?).map_err(|_| SnapshotError {
            offset: r.at,
            reason: "TTL record name is not UTF-8",
        })?;
        let klen = r.u16()? as usize;
        let key = r.bytes(klen, limits.key_max_bytes)?;
        sm.expiry.insert((at, id), (name.into(), key.into()));
    }
    let clients = r.count(8 * 3 + 4)?;
    let mut dedup = DedupTable::new(config.dedup);
    let mut last_client = None;
    for _ in 0..clients {
        let id = r.u64()?;
        if last_client.is_some_and(|l| l >= id) {
            return r.fail("dedup clients are not in order");
        }
        last_client = Some(id);
        let highest = r.u64()?;
        let at_ms = r.u64()?;
        let n = r.count(8 + 2 + 2 + 1)?;
        if n > config.dedup.window as usize + 1 {
            return r.fail("more answers than the dedup window holds");
        }
        let mut answers: Vec<(u64, Cached)> = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = r.u64()?;
            if answers.last().is_some_and(|(last, _)| *last >= seq) || seq > highest {
                return r.fail("dedup answers are not in order at or below the highest sequence");
            }
            let opcode = Opcode::from_u16(r.u16()?);
            let status = ErrorCode::from_u16(r.u16()?);
            let (Some(opcode), Some(status)) = (opcode, status) else {
                return r.fail("unknown opcode or status in a dedup answer");
            };
            let body = match r.u8()? {
                0 => None,
                1 => {
                    let len = r.u32()? as usize;
                    Some(r.bytes(len, config.dedup.answer_max_bytes)?.to_vec())
                }
                _ => return r.fail("bad dedup answer flag"),
            };
            answers.push((
                seq,
                Cached {
                    outcome: Outcome { opcode, status },
                    body,
                },
            ));
        }
        dedup.restore_client(id, highest, at_ms, answers);
    }
    if r.at != data.len() {
        return r.fail("trailing bytes");
    }
    sm.dedup = dedup;
    Ok(sm)
}

fn name_clone(name: &str) -> Box<str> {
    name.into()
}
