//! The replicated state machine: every data structure, driven only by
//! `apply(entry bytes, leader timestamp)`.
//!
//! Everything that must be identical on every replica is decided from the
//! log: the entry bytes (the client's frame, unchanged) and the leader's
//! timestamp stamped beside it. TTL expiry is judged from that timestamp,
//! never from this replica's clock; memory accounting uses computed sizes,
//! never allocator statistics; expired entries are reclaimed a bounded
//! number per apply, in a fixed order. Iteration that reaches a response
//! (scans, member listings) follows insertion ids, never hash order. Two
//! replicas that apply the same log therefore answer every request alike.
//!
//! Reads (`read`) are served from the same state without going through the
//! log; they judge expiry by the serving node's clock, which only decides
//! visibility of an already-expired entry.

mod dedup;
mod snapshot;
mod structures;

use std::collections::{BTreeMap, HashMap};

use loomcache_wire::{
    parse_frame, ErrorCode, Frame, Limits, OkBody, OpClass, Opcode, Parsed, Payload, Response, Seq, Value, Writer,
};

pub use dedup::DedupConfig;
use dedup::{DedupTable, Verdict};
pub use snapshot::{SnapshotError, SnapshotView};
use structures::{Atomic, MapEntry, MapState, Put, QueueState, SetState, Structure, TopicState};

/// Limits of the state machine; every one comes from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateConfig {
    /// Bytes of stored data (keys, values and per-entry overhead) beyond
    /// which writes fail `OUT_OF_MEMORY`.
    pub data_memory_max_bytes: u64,
    /// Items a queue may hold; 0 = unbounded (up to the memory limit).
    pub queue_capacity: u32,
    /// Expired entries reclaimed per applied entry, at most.
    pub reclaim_per_apply: u32,
    /// Write deduplication.
    pub dedup: DedupConfig,
    /// Field and list maxima, as on the wire.
    pub limits: Limits,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            data_memory_max_bytes: 1 << 30,
            queue_capacity: 0,
            reclaim_per_apply: 64,
            dedup: DedupConfig::default(),
            limits: Limits::DEFAULT,
        }
    }
}

impl StateConfig {
    /// A fingerprint of every setting here, all of which decide how an
    /// entry applies (whether it decodes, fits the memory limit or a
    /// queue, is a duplicate, which expired entries go with it). Members
    /// of a group must share it: with different settings two replicas
    /// could apply the same entry differently and diverge, so peers that
    /// show different fingerprints do not exchange Raft messages. It
    /// covers [`APPLY_RULES_VERSION`] too, so members whose code applies
    /// entries by different rules do not either.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint_under(APPLY_RULES_VERSION)
    }

    /// [`StateConfig::fingerprint`] under the apply rules of `rules`.
    fn fingerprint_under(&self, rules: u64) -> u64 {
        let mut h = crc32fast::Hasher::new();
        let fields = [
            // The version of this list.
            2,
            rules,
            self.data_memory_max_bytes,
            u64::from(self.queue_capacity),
            u64::from(self.reclaim_per_apply),
            u64::from(self.dedup.clients_max),
            self.dedup.ttl_ms,
            u64::from(self.dedup.window),
            u64::from(self.dedup.answer_max_bytes),
            u64::from(self.limits.payload_max_bytes),
            u64::from(self.limits.name_max_bytes),
            u64::from(self.limits.key_max_bytes),
            u64::from(self.limits.value_max_bytes),
            u64::from(self.limits.items_max),
            ENTRY_OVERHEAD_BYTES,
        ];
        for field in fields {
            h.update(&field.to_le_bytes());
        }
        u64::from(h.finalize())
    }
}

/// The version of the rules by which an entry applies: which opcodes an
/// entry may carry (the writes, and `CLUSTER_RECORD_MEMBER`, which the
/// cluster applies to its address book) and what each does to the state
/// and answers. Raised
/// with every change to them (a new write opcode, another answer, other
/// accounting), since a member that applies a committed entry by other
/// rules diverges from the rest; it is part of
/// [`StateConfig::fingerprint`], so such members do not link.
pub const APPLY_RULES_VERSION: u64 = 2;

/// Fixed per-entry overhead counted against the memory limit, so that the
/// accounting does not depend on allocator behaviour.
pub(crate) const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// The outcome of applying or reading one request: the response opcode,
/// its status, and its encoded body (appended to the caller's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// `RESPONSE_OK`, `RESPONSE_ERROR` or `RESPONSE_SEQUENCE_LOST`.
    pub opcode: Opcode,
    /// The status for the header.
    pub status: ErrorCode,
}

/// A failed operation: the code and a message for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpError(pub ErrorCode, pub &'static str);

type OpResult<T> = Result<T, OpError>;

/// The state of one replica.
#[derive(Debug)]
pub struct StateMachine {
    config: StateConfig,
    structures: HashMap<Box<str>, Structure>,
    /// TTL index: (expiry ms, entry id) → (map name, key), oldest first.
    expiry: BTreeMap<(u64, u64), (Box<str>, Box<[u8]>)>,
    memory_used: u64,
    next_id: u64,
    dedup: DedupTable,
    /// The highest leader timestamp applied; time never runs backwards here.
    now_ms: u64,
    applied: u64,
    /// The last `apply` answered a retry from the deduplication table.
    last_was_replay: bool,
    /// Set by a QUEUE_POLL that found nothing, for `apply` to see.
    last_poll_found_nothing: bool,
}

impl StateMachine {
    /// An empty state machine.
    pub fn new(config: StateConfig) -> StateMachine {
        StateMachine {
            dedup: DedupTable::new(config.dedup),
            config,
            structures: HashMap::new(),
            expiry: BTreeMap::new(),
            memory_used: 0,
            next_id: 1,
            now_ms: 0,
            applied: 0,
            last_was_replay: false,
            last_poll_found_nothing: false,
        }
    }

    /// Bytes of stored data as counted against the memory limit.
    pub fn memory_used(&self) -> u64 {
        self.memory_used
    }

    /// Entries applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// True if the last [`StateMachine::apply`] answered a retried write
    /// from the deduplication table instead of applying it (so its effects,
    /// such as a topic push, must not happen again).
    pub fn last_was_replay(&self) -> bool {
        self.last_was_replay
    }

    /// Whether a `QUEUE_POLL` with a wait should wait rather than be
    /// applied now: the queue is empty (or does not exist yet), the name is
    /// not bound to another type (that answers `WRONG_TYPE` at once), and
    /// the frame is not a retry of a write already applied (that answers
    /// from the deduplication table at once).
    pub fn poll_would_wait(&self, name: &str, frame: &Frame<'_>) -> bool {
        let empty = match self.structures.get(name) {
            Some(Structure::Queue(q)) => q.len() == 0,
            Some(_) => false,
            None => true,
        };
        let retry = frame
            .sequence()
            .is_some_and(|s| !matches!(self.dedup.check(s.client_id(), s.sequence()), Verdict::Apply));
        empty && !retry
    }

    /// Items in queue `name` (0 if there is no such queue).
    pub fn queue_len(&self, name: &str) -> usize {
        match self.structures.get(name) {
            Some(Structure::Queue(q)) => q.len(),
            _ => 0,
        }
    }

    /// The type `name` is bound to ("Map", "Queue", "Set", "AtomicLong" or
    /// "Topic"), if it names a structure.
    pub fn type_of(&self, name: &str) -> Option<&'static str> {
        self.structures.get(name).map(Structure::kind)
    }

    /// Number of named structures.
    pub fn structure_count(&self) -> usize {
        self.structures.len()
    }

    /// Applies a log entry: the client frame bytes and the leader's
    /// timestamp. The response body is appended to `out`. Malformed entries
    /// answer an error (the same on every replica) and change nothing.
    pub fn apply(&mut self, entry: &[u8], leader_ms: u64, out: &mut Vec<u8>) -> Outcome {
        self.applied += 1;
        self.last_was_replay = false;
        self.last_poll_found_nothing = false;
        self.now_ms = self.now_ms.max(leader_ms);
        self.reclaim_expired();
        let frame = match parse_frame(entry, &self.config.limits) {
            Ok(Parsed::Frame(frame)) if frame.bytes().len() == entry.len() => frame,
            _ => return error(out, ErrorCode::Malformed, "log entry is not one whole frame"),
        };
        let sequence = frame.sequence().map(|s| (s.client_id(), s.sequence()));
        if let Some((client, seq)) = sequence {
            match self.dedup.check(client, seq) {
                Verdict::Apply => {}
                Verdict::Duplicate(cached) => {
                    self.last_was_replay = true;
                    out.extend_from_slice(cached.body.as_deref().unwrap_or_default());
                    return cached.outcome;
                }
                Verdict::Lost { oldest_retained } => {
                    let body = Response::SequenceLost(loomcache_wire::SequenceLost { oldest_retained });
                    return encode(out, &body);
                }
            }
        }
        let start = out.len();
        let outcome = self.apply_frame(&frame, out);
        // A poll that found nothing changed nothing, so it is not
        // remembered: a retry of its sequence polls again, which lets a
        // waiting poll that lost its item to another consumer wait on.
        let found_nothing = frame.opcode() == Opcode::QueuePoll && self.last_poll_found_nothing;
        if let Some((client, seq)) = sequence.filter(|_| !found_nothing) {
            self.dedup.record(client, seq, self.now_ms, outcome, &out[start..]);
        }
        outcome
    }

    fn apply_frame(&mut self, frame: &Frame<'_>, out: &mut Vec<u8>) -> Outcome {
        let payload = match frame.decode(&self.config.limits) {
            Ok(p) => p,
            Err(e) => return error(out, e.code(), "the entry's payload does not decode"),
        };
        if let Err(reason) = payload.check_arguments(&self.config.limits) {
            return error(out, ErrorCode::InvalidArgument, &reason.to_string());
        }
        match payload {
            Payload::BatchExecute(batch) => self.apply_batch(batch.ops, out),
            p if p.opcode().class() == OpClass::Write => match self.write(&p, out) {
                Ok(()) => Outcome {
                    opcode: Opcode::ResponseOk,
                    status: ErrorCode::Ok,
                },
                Err(OpError(code, msg)) => error(out, code, msg),
            },
            p => error(out, ErrorCode::Malformed, not_a_write(p.opcode())),
        }
    }

    fn apply_batch(&mut self, ops: Seq<'_, loomcache_wire::BatchOp<'_>>, out: &mut Vec<u8>) -> Outcome {
        // Each operation's outcome becomes one BatchResult; the batch as a
        // whole succeeds even if some operations fail.
        let mut results: Vec<(u16, Vec<u8>)> = Vec::with_capacity(ops.len());
        for op in ops.iter() {
            let mut body = Vec::new();
            let outcome = match op.payload(&self.config.limits) {
                Ok(p) if p.check_arguments(&self.config.limits).is_err() => {
                    body.extend_from_slice(b"an argument is out of range");
                    ErrorCode::InvalidArgument
                }
                Ok(p) => {
                    let r = if op.opcode.class() == OpClass::Write {
                        self.write(&p, &mut body)
                    } else {
                        self.read_into(&p, &mut body)
                    };
                    match r {
                        Ok(()) => ErrorCode::Ok,
                        Err(OpError(code, msg)) => {
                            body.clear();
                            body.extend_from_slice(msg.as_bytes());
                            code
                        }
                    }
                }
                Err(e) => {
                    body.extend_from_slice(b"operation payload does not decode");
                    e.code()
                }
            };
            results.push((outcome.code(), body));
        }
        let items: Vec<loomcache_wire::BatchResult<'_>> = results
            .iter()
            .map(|(status, body)| loomcache_wire::BatchResult { status: *status, body })
            .collect();
        encode(out, &Response::Ok(OkBody::Batch(Seq::Items(&items))))
    }

    /// Serves a read-only request from local state at `now_ms`.
    pub fn read(&mut self, payload: &Payload<'_>, now_ms: u64, out: &mut Vec<u8>) -> Outcome {
        if let Err(reason) = payload.check_arguments(&self.config.limits) {
            return error(out, ErrorCode::InvalidArgument, &reason.to_string());
        }
        let saved = self.now_ms;
        self.now_ms = self.now_ms.max(now_ms);
        let r = self.read_into(payload, out);
        self.now_ms = saved;
        match r {
            Ok(()) => Outcome {
                opcode: Opcode::ResponseOk,
                status: ErrorCode::Ok,
            },
            Err(OpError(code, msg)) => error(out, code, msg),
        }
    }

    fn read_into(&mut self, payload: &Payload<'_>, out: &mut Vec<u8>) -> OpResult<()> {
        let now = self.now_ms;
        let body = match *payload {
            Payload::MapGet(k) => OkBody::Value(self.map(k.name)?.and_then(|m| m.get(k.key, now))),
            Payload::MapContains(k) => OkBody::Bool(self.map(k.name)?.is_some_and(|m| m.get(k.key, now).is_some())),
            Payload::MapSize(n) => OkBody::Count(self.map(n.name)?.map_or(0, |m| m.live_len(now))),
            Payload::MapGetAll(g) => {
                let map = self.map(g.name)?;
                let found: Vec<loomcache_wire::KeyValue<'_>> = g
                    .keys
                    .iter()
                    .filter_map(|k| {
                        map.and_then(|m| m.get(k.0, now))
                            .map(|v| loomcache_wire::KeyValue { key: k.0, value: v })
                    })
                    .collect();
                return done(out, &OkBody::Entries(Seq::Items(&found)));
            }
            Payload::MapScan(p) => {
                let Some(map) = self.map(p.name)? else {
                    return done(
                        out,
                        &OkBody::ScanPage(loomcache_wire::ScanPage {
                            cursor: 0,
                            entries: Seq::Items(&[]),
                        }),
                    );
                };
                let (cursor, entries) = map.scan(p.cursor, p.page_size as usize, now);
                let items: Vec<_> = entries
                    .iter()
                    .map(|(k, v)| loomcache_wire::KeyValue { key: k, value: v })
                    .collect();
                return done(
                    out,
                    &OkBody::ScanPage(loomcache_wire::ScanPage {
                        cursor,
                        entries: Seq::Items(&items),
                    }),
                );
            }
            Payload::QueuePeek(n) => OkBody::Value(self.queue(n.name)?.and_then(|q| q.peek())),
            Payload::QueueSize(n) => OkBody::Count(self.queue(n.name)?.map_or(0, |q| q.len() as u64)),
            Payload::SetContains(k) => OkBody::Bool(self.set(k.name)?.is_some_and(|s| s.contains(k.key))),
            Payload::SetSize(n) => OkBody::Count(self.set(n.name)?.map_or(0, |s| s.len() as u64)),
            Payload::SetMembers(p) => {
                let Some(set) = self.set(p.name)? else {
                    return done(
                        out,
                        &OkBody::MembersPage(loomcache_wire::MembersPage {
                            cursor: 0,
                            members: Seq::Items(&[]),
                        }),
                    );
                };
                let (cursor, members) = set.page(p.cursor, p.page_size as usize);
                let items: Vec<_> = members.iter().map(|m| loomcache_wire::Key(m)).collect();
                return done(
                    out,
                    &OkBody::MembersPage(loomcache_wire::MembersPage {
                        cursor,
                        members: Seq::Items(&items),
                    }),
                );
            }
            Payload::AtomicGet(n) => OkBody::Long(self.atomic(n.name)?.map_or(0, |a| a.value)),
            ref other => return Err(OpError(ErrorCode::Unsupported, unsupported_here(other.opcode()))),
        };
        encode_ok(out, &body);
        Ok(())
    }

    /// A write. One that is refused leaves nothing behind: a structure it
    /// created on the way (a write to a new name creates it, counting the
    /// name, before the memory check of what it stores) is removed again.
    fn write(&mut self, payload: &Payload<'_>, out: &mut Vec<u8>) -> OpResult<()> {
        let structures = self.structures.len();
        let result = self.write_unchecked(payload, out);
        if result.is_err() && self.structures.len() > structures {
            let name = match *payload {
                Payload::MapPut(w) | Payload::MapSet(w) | Payload::MapPutIfAbsent(w) | Payload::MapReplace(w) => {
                    Some(w.name)
                }
                Payload::MapCompareAndSet(c) => Some(c.name),
                Payload::MapPutAll(p) => Some(p.name),
                Payload::QueueOffer(v) => Some(v.name),
                Payload::SetAdd(k) => Some(k.name),
                _ => None,
            };
            debug_assert!(name.is_some(), "{} created a structure and failed", payload.opcode());
            if let Some(name) = name {
                if self.structures.remove(name).is_some() {
                    self.release(entry_cost(name.len(), 0));
                }
            }
        }
        result
    }

    fn write_unchecked(&mut self, payload: &Payload<'_>, out: &mut Vec<u8>) -> OpResult<()> {
        let now = self.now_ms;
        let body = match *payload {
            Payload::MapPut(w) => return self.map_put(w, PutMode::Always, true, out),
            Payload::MapSet(w) => return self.map_put(w, PutMode::Always, false, out),
            Payload::MapPutIfAbsent(w) => return self.map_put(w, PutMode::IfAbsent, true, out),
            Payload::MapReplace(w) => return self.map_put(w, PutMode::IfPresent, true, out),
            Payload::MapDelete(k) => {
                let removed = self.map_mut(k.name)?.and_then(|m| m.remove(k.key, now));
                let (live, freed) = removed.unwrap_or((false, 0));
                self.release(freed);
                OkBody::Bool(live)
            }
            // Nothing to compare in a map that does not exist: false, and
            // no map is created.
            Payload::MapCompareAndSet(c) if self.map(c.name)?.is_none() => OkBody::Bool(false),
            Payload::MapCompareAndSet(c) => {
                let cost = entry_cost(c.key.len(), c.new.len());
                let map = self.map_or_create(c.name)?;
                let matches = map.get(c.key, now).is_some_and(|v| v == c.expected);
                if matches {
                    let old_cost = map.entry(c.key).map_or(0, |e| e.cost);
                    self.reserve(cost.saturating_sub(old_cost))?;
                    self.store(c.name, c.key, c.new, expiry(now, c.ttl_ms))?;
                }
                OkBody::Bool(matches)
            }
            Payload::MapClear(n) => {
                let freed = self.map_mut(n.name)?.map(|m| m.clear(now));
                let (count, bytes) = freed.unwrap_or((0, 0));
                self.release(bytes);
                OkBody::Count(count)
            }
            Payload::MapDestroy(n) => OkBody::Bool(self.destroy(n.name, "Map", now)?),
            Payload::MapPutAll(p) => {
                let expires = expiry(now, p.ttl_ms);
                // All or nothing: the whole batch must fit, counted as if
                // every entry were new.
                let need: u64 = p.entries.iter().map(|e| entry_cost(e.key.len(), e.value.len())).sum();
                self.map_or_create(p.name)?;
                self.reserve(need)?;
                for e in p.entries.iter() {
                    self.store(p.name, e.key, e.value, expires)?;
                }
                OkBody::Empty
            }
            Payload::QueueOffer(v) => {
                let capacity = self.config.queue_capacity;
                let cost = entry_cost(0, v.value.len());
                let queue = self.queue_or_create(v.name)?;
                if capacity != 0 && queue.len() >= capacity as usize {
                    OkBody::Bool(false)
                } else {
                    self.reserve(cost)?;
                    self.queue_or_create(v.name)?.push(v.value);
                    self.memory_used += cost;
                    OkBody::Bool(true)
                }
            }
            Payload::QueuePoll(p) => {
                let item = self.queue_mut(p.name)?.and_then(|q| q.pop());
                self.last_poll_found_nothing = item.is_none();
                self.encode_owned_value(out, item);
                return Ok(());
            }
            Payload::QueueDrain(d) => {
                let items = self
                    .queue_mut(d.name)?
                    .map(|q| q.drain(d.max_items as usize))
                    .unwrap_or_default();
                let freed: u64 = items.iter().map(|i| entry_cost(0, i.len())).sum();
                self.release(freed);
                let values: Vec<Value<'_>> = items.iter().map(|i| Value(i)).collect();
                encode_ok(out, &OkBody::Values(Seq::Items(&values)));
                return Ok(());
            }
            Payload::QueueClear(n) => {
                let items = self.queue_mut(n.name)?.map(|q| q.drain(usize::MAX)).unwrap_or_default();
                let freed: u64 = items.iter().map(|i| entry_cost(0, i.len())).sum();
                self.release(freed);
                OkBody::Count(items.len() as u64)
            }
            Payload::QueueDestroy(n) => OkBody::Bool(self.destroy(n.name, "Queue", now)?),
            Payload::SetAdd(k) => {
                let cost = entry_cost(k.key.len(), 0);
                if self.set_or_create(k.name)?.contains(k.key) {
                    OkBody::Bool(false)
                } else {
                    self.reserve(cost)?;
                    let id = self.fresh_id();
                    self.set_or_create(k.name)?.insert(k.key, id);
                    self.memory_used += cost;
                    OkBody::Bool(true)
                }
            }
            Payload::SetRemove(k) => {
                let removed = self.set_mut(k.name)?.is_some_and(|s| s.remove(k.key));
                if removed {
                    self.release(entry_cost(k.key.len(), 0));
                }
                OkBody::Bool(removed)
            }
            Payload::SetClear(n) => {
                let (count, bytes) = self.set_mut(n.name)?.map(|s| s.clear()).unwrap_or((0, 0));
                self.release(bytes);
                OkBody::Count(count)
            }
            Payload::SetDestroy(n) => OkBody::Bool(self.destroy(n.name, "Set", now)?),
            Payload::TopicPublish(v) => {
                let topic = self.topic_or_create(v.name)?;
                OkBody::Count(topic.publish())
            }
            Payload::AtomicSet(l) => {
                self.atomic_or_create(l.name)?.value = l.value;
                OkBody::Empty
            }
            Payload::AtomicAddAndGet(l) => {
                let a = self.atomic_or_create(l.name)?;
                a.value = a.value.wrapping_add(l.value);
                OkBody::Long(a.value)
            }
            Payload::AtomicGetAndAdd(l) => {
                let a = self.atomic_or_create(l.name)?;
                let old = a.value;
                a.value = a.value.wrapping_add(l.value);
                OkBody::Long(old)
            }
            Payload::AtomicDestroy(n) => OkBody::Bool(self.destroy(n.name, "AtomicLong", now)?),
            Payload::AtomicGetAndSet(l) => {
                let a = self.atomic_or_create(l.name)?;
                OkBody::Long(core::mem::replace(&mut a.value, l.value))
            }
            Payload::AtomicCompareAndSet(c) => {
                // A missing AtomicLong reads as 0: a compare-and-set that
                // expects anything else fails without creating it.
                if c.expected != 0 && self.atomic(c.name)?.is_none() {
                    OkBody::Bool(false)
                } else {
                    let a = self.atomic_or_create(c.name)?;
                    let ok = a.value == c.expected;
                    if ok {
                        a.value = c.new;
                    }
                    OkBody::Bool(ok)
                }
            }
            ref other => return Err(OpError(ErrorCode::Unsupported, unsupported_here(other.opcode()))),
        };
        encode_ok(out, &body);
        Ok(())
    }
}

/// The `WRONG_TYPE` message for a name bound to a `found` asked for as a
/// `wanted` (kinds as [`StateMachine::type_of`] names them).
pub(crate) fn wrong_type(found: &str, wanted: &str) -> &'static str {
    match (found, wanted) {
        ("Map", "Queue") => "the name is bound to a Map, not a Queue",
        ("Map", "Set") => "the name is bound to a Map, not a Set",
        ("Map", "AtomicLong") => "the name is bound to a Map, not an AtomicLong",
        ("Map", "Topic") => "the name is bound to a Map, not a Topic",
        ("Queue", "Map") => "the name is bound to a Queue, not a Map",
        ("Queue", "Set") => "the name is bound to a Queue, not a Set",
        ("Queue", "AtomicLong") => "the name is bound to a Queue, not an AtomicLong",
        ("Queue", "Topic") => "the name is bound to a Queue, not a Topic",
        ("Set", "Map") => "the name is bound to a Set, not a Map",
        ("Set", "Queue") => "the name is bound to a Set, not a Queue",
        ("Set", "AtomicLong") => "the name is bound to a Set, not an AtomicLong",
        ("Set", "Topic") => "the name is bound to a Set, not a Topic",
        ("AtomicLong", "Map") => "the name is bound to an AtomicLong, not a Map",
        ("AtomicLong", "Queue") => "the name is bound to an AtomicLong, not a Queue",
        ("AtomicLong", "Set") => "the name is bound to an AtomicLong, not a Set",
        ("AtomicLong", "Topic") => "the name is bound to an AtomicLong, not a Topic",
        ("Topic", "Map") => "the name is bound to a Topic, not a Map",
        ("Topic", "Queue") => "the name is bound to a Topic, not a Queue",
        ("Topic", "Set") => "the name is bound to a Topic, not a Set",
        ("Topic", "AtomicLong") => "the name is bound to a Topic, not an AtomicLong",
        _ => "the name is bound to a structure of another type",
    }
}

/// A write the data memory limit refuses.
const OUT_OF_MEMORY: OpError = OpError(
    ErrorCode::OutOfMemory,
    "the data memory limit is reached; the write was not applied",
);

/// How a put treats an existing entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PutMode {
    Always,
    IfAbsent,
    IfPresent,
}

impl StateMachine {
    /// MAP_PUT / MAP_SET / MAP_PUT_IF_ABSENT / MAP_REPLACE. Encodes the
    /// answer (the previous value, or the existing one for put-if-absent)
    /// when `answer` is set.
    fn map_put(
        &mut self,
        w: loomcache_wire::MapWrite<'_>,
        mode: PutMode,
        answer: bool,
        out: &mut Vec<u8>,
    ) -> OpResult<()> {
        if mode == PutMode::IfPresent && self.map(w.name)?.is_none() {
            // Nothing to replace in a map that does not exist: none, and no
            // map is created.
            encode_ok(out, &if answer { OkBody::Value(None) } else { OkBody::Empty });
            return Ok(());
        }
        let now = self.now_ms;
        let cost = entry_cost(w.key.len(), w.value.len());
        let expires = expiry(now, w.ttl_ms);
        let (limit, fresh) = (self.config.data_memory_max_bytes, self.next_id);
        let (map, used) = self.map_or_create_counted(w.name)?;
        let mut live = false;
        let put = map.put_if(
            w.key,
            w.value,
            expires,
            fresh,
            |current| {
                live = current.is_some_and(|e| !e.expired_at(now));
                match mode {
                    PutMode::Always => true,
                    PutMode::IfAbsent => !live,
                    PutMode::IfPresent => live,
                }
            },
            |old_cost| used + cost.saturating_sub(old_cost) <= limit,
        );
        let previous = match put {
            Put::Declined(current) => {
                let current = current.filter(|_| live);
                let body = if answer {
                    OkBody::Value(current.as_deref())
                } else {
                    OkBody::Empty
                };
                encode_ok(out, &body);
                return Ok(());
            }
            Put::TooLarge => return Err(OUT_OF_MEMORY),
            Put::Inserted => None,
            Put::Replaced(p) => Some(p),
        };
        self.stored(w.name, w.key, expires, cost, previous.as_ref());
        if answer {
            let old = previous.filter(|p| !p.expired_at(now)).map(|p| p.value);
            match mode {
                PutMode::IfAbsent => encode_ok(out, &OkBody::Value(None)),
                _ => encode_ok(out, &OkBody::Value(old.as_deref())),
            }
        } else {
            encode_ok(out, &OkBody::Empty);
        }
        Ok(())
    }

    fn encode_owned_value(&mut self, out: &mut Vec<u8>, item: Option<Box<[u8]>>) {
        if let Some(item) = &item {
            self.release(entry_cost(0, item.len()));
        }
        encode_ok(out, &OkBody::Value(item.as_deref()));
    }

    /// Stores a map entry (the memory check already passed), keeps the
    /// memory count and indexes its expiry: the entry it replaced.
    fn store(&mut self, name: &str, key: &[u8], value: &[u8], expires: Option<u64>) -> OpResult<Option<MapEntry>> {
        let cost = entry_cost(key.len(), value.len());
        let fresh = self.next_id;
        let previous = match self
            .map_or_create(name)?
            .put_if(key, value, expires, fresh, |_| true, |_| true)
        {
            Put::Replaced(p) => Some(p),
            Put::Inserted => None,
            Put::Declined(_) | Put::TooLarge => unreachable!("an unconditional put always stores"),
        };
        self.stored(name, key, expires, cost, previous.as_ref());
        Ok(previous)
    }

    /// [`StateMachine::map_or_create`], with the memory count after it: a
    /// new map's name is counted when it is created, and a put checks the
    /// limit against the count that includes it. One lookup of the name
    /// more than a plain get when the map exists.
    fn map_or_create_counted(&mut self, name: &str) -> OpResult<(&mut MapState, u64)> {
        if !matches!(self.structures.get(name), Some(Structure::Map(_))) {
            // Creates it, or answers that the name holds another type.
            self.map_or_create(name)?;
        }
        let used = self.memory_used;
        match self.structures.get_mut(name) {
            Some(Structure::Map(m)) => Ok((m, used)),
            other => Err(OpError(
                ErrorCode::WrongType,
                wrong_type(other.map_or("", |o| o.kind()), "Map"),
            )),
        }
    }

    /// The bookkeeping after a map entry of `cost` bytes was stored over
    /// `previous` (`None`: under a new key, which took the fresh id): the
    /// memory count, the id counter and the expiry index.
    fn stored(&mut self, name: &str, key: &[u8], expires: Option<u64>, cost: u64, previous: Option<&MapEntry>) {
        let id = match previous {
            Some(p) => p.id,
            None => self.fresh_id(),
        };
        self.account_replace(previous.map(|p| p.cost), cost);
        self.index_expiry(name, key, expires, id);
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn reserve(&mut self, bytes: u64) -> OpResult<()> {
        if self.memory_used + bytes > self.config.data_memory_max_bytes {
            return Err(OUT_OF_MEMORY);
        }
        Ok(())
    }

    fn account_replace(&mut self, previous: Option<u64>, cost: u64) {
        self.memory_used = self.memory_used - previous.unwrap_or(0) + cost;
    }

    /// Removes the structure bound to `name` if it is a `kind`, releasing
    /// its contents and its name: the name is then free for any type.
    /// False if nothing is bound to it; `WRONG_TYPE` if another type is.
    fn destroy(&mut self, name: &str, kind: &'static str, now: u64) -> OpResult<bool> {
        let bytes = match self.structures.get_mut(name) {
            None => return Ok(false),
            Some(s) if s.kind() != kind => return Err(OpError(ErrorCode::WrongType, wrong_type(s.kind(), kind))),
            Some(Structure::Map(m)) => m.clear(now).1,
            Some(Structure::Queue(q)) => q.drain(usize::MAX).iter().map(|i| entry_cost(0, i.len())).sum(),
            Some(Structure::Set(s)) => s.clear().1,
            Some(Structure::Atomic(_) | Structure::Topic(_)) => 0,
        };
        self.structures.remove(name);
        self.release(bytes + entry_cost(name.len(), 0));
        Ok(true)
    }

    fn release(&mut self, bytes: u64) {
        debug_assert!(
            bytes <= self.memory_used,
            "released {bytes} of {} bytes counted",
            self.memory_used
        );
        self.memory_used = self.memory_used.saturating_sub(bytes);
    }

    fn index_expiry(&mut self, name: &str, key: &[u8], expires: Option<u64>, id: u64) {
        if let Some(at) = expires {
            self.expiry.insert((at, id), (name.into(), key.into()));
        }
    }

    /// Removes up to `reclaim_per_apply` expired map entries, oldest
    /// expiry first. Deterministic: it depends only on applied entries.
    fn reclaim_expired(&mut self) {
        let now = self.now_ms;
        for _ in 0..self.config.reclaim_per_apply {
            let Some((&(at, id), _)) = self.expiry.iter().next() else {
                break;
            };
            if at > now {
                break;
            }
            let Some((name, key)) = self.expiry.remove(&(at, id)) else {
                break;
            };
            let freed = match self.structures.get_mut(&*name) {
                Some(Structure::Map(m)) => m.remove_if(&key, |e| e.id == id && e.expired_at(now)),
                _ => None,
            };
            if let Some(bytes) = freed {
                self.release(bytes);
            }
        }
    }
}

macro_rules! accessors {
    ($get:ident, $get_mut:ident, $create:ident, $variant:ident, $ty:ty, $kind:expr) => {
        impl StateMachine {
            fn $get(&self, name: &str) -> OpResult<Option<&$ty>> {
                match self.structures.get(name) {
                    None => Ok(None),
                    Some(Structure::$variant(s)) => Ok(Some(s)),
                    Some(other) => Err(OpError(ErrorCode::WrongType, wrong_type(other.kind(), $kind))),
                }
            }
            fn $get_mut(&mut self, name: &str) -> OpResult<Option<&mut $ty>> {
                match self.structures.get_mut(name) {
                    None => Ok(None),
                    Some(Structure::$variant(s)) => Ok(Some(s)),
                    Some(other) => Err(OpError(ErrorCode::WrongType, wrong_type(other.kind(), $kind))),
                }
            }
            /// The structure, created (and its name counted against the
            /// memory limit) if the name is new.
            fn $create(&mut self, name: &str) -> OpResult<&mut $ty> {
                if !self.structures.contains_key(name) {
                    let cost = entry_cost(name.len(), 0);
                    self.reserve(cost)?;
                    self.memory_used += cost;
                    self.structures
                        .insert(name.into(), Structure::$variant(Default::default()));
                }
                match self.structures.get_mut(name) {
                    Some(Structure::$variant(s)) => Ok(s),
                    other => Err(OpError(
                        ErrorCode::WrongType,
                        wrong_type(other.map_or("", |o| o.kind()), $kind),
                    )),
                }
            }
        }
    };
}

accessors!(map, map_mut, map_or_create, Map, MapState, "Map");
accessors!(queue, queue_mut, queue_or_create, Queue, QueueState, "Queue");
accessors!(set, set_mut, set_or_create, Set, SetState, "Set");
accessors!(atomic, _atomic_mut, atomic_or_create, Atomic, Atomic, "AtomicLong");
accessors!(_topic, _topic_mut, topic_or_create, Topic, TopicState, "Topic");

/// Memory counted for one entry.
pub(crate) fn entry_cost(key: usize, value: usize) -> u64 {
    (key + value) as u64 + ENTRY_OVERHEAD_BYTES
}

fn expiry(now: u64, ttl_ms: u64) -> Option<u64> {
    (ttl_ms != 0).then(|| now.saturating_add(ttl_ms))
}

fn not_a_write(op: Opcode) -> &'static str {
    match op.class() {
        OpClass::Read => "a read cannot be a log entry",
        _ => "this opcode cannot be a log entry",
    }
}

fn unsupported_here(op: Opcode) -> &'static str {
    match op.class() {
        OpClass::Reserved => "CP sessions, locks and semaphores are not supported yet",
        _ => "this opcode is not served by the state machine",
    }
}

fn done(out: &mut Vec<u8>, body: &OkBody<'_>) -> OpResult<()> {
    encode_ok(out, body);
    Ok(())
}

fn encode_ok(out: &mut Vec<u8>, body: &OkBody<'_>) {
    let _ = encode(out, &Response::Ok(*body));
}

fn encode(out: &mut Vec<u8>, response: &Response<'_>) -> Outcome {
    let start = out.len();
    out.resize(start + response.encoded_len(), 0);
    response
        .encode(&mut Writer::new(&mut out[start..]))
        .expect("the buffer was sized by encoded_len");
    Outcome {
        opcode: response.opcode(),
        status: response.status(),
    }
}

fn error(out: &mut Vec<u8>, code: ErrorCode, message: &str) -> Outcome {
    encode(out, &Response::Error { code, message })
}

#[cfg(test)]
mod tests;
