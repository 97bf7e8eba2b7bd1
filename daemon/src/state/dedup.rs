//! Exactly-once writes: per client, the sequences recently applied and the
//! answers they got, so a retried write is answered, not applied again.
//!
//! A client may have several writes in flight (threads sharing a client,
//! pipelining), and they may be applied in any order. So per client the
//! table keeps a window: the highest sequence applied and the answers of
//! the last `window` sequences at or below it. A sequence in the window
//! that was applied answers its cached result; one in the window that was
//! not applied yet is applied; one below the window answers
//! `SEQUENCE_LOST` (its outcome is no longer known). Clients are bounded in
//! number and forgotten after `ttl_ms` of leader time without a write; a
//! client retries only within its retry budget, which must stay below the
//! TTL. Eviction depends only on applied entries, so every replica forgets
//! the same clients at the same point.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Outcome;

/// Deduplication bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// Clients remembered; the least recently seen is forgotten first.
    pub clients_max: u32,
    /// A client not seen for this long (leader time) is forgotten.
    pub ttl_ms: u64,
    /// Sequences remembered per client below its highest.
    pub window: u32,
    /// Largest answer kept; a retry of a write whose answer was larger is
    /// answered `SEQUENCE_LOST` rather than applied again.
    pub answer_max_bytes: u32,
}

impl Default for DedupConfig {
    fn default() -> Self {
        // Worst case held: clients_max × window × answer_max_bytes
        // = 10 000 × 16 × 1 KiB = 160 MiB.
        DedupConfig {
            clients_max: 10_000,
            ttl_ms: 60_000,
            window: 16,
            answer_max_bytes: 1024,
        }
    }
}

/// A remembered answer; `None` body when it was too large to keep.
#[derive(Debug)]
pub(crate) struct Cached {
    pub outcome: Outcome,
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct ClientState {
    highest: u64,
    at_ms: u64,
    applied: BTreeMap<u64, Cached>,
}

/// What to do with a sequenced write.
#[derive(Debug)]
pub(crate) enum Verdict<'a> {
    /// New: apply it.
    Apply,
    /// Applied before: answer what it got.
    Duplicate(&'a Cached),
    /// Too old, or applied with an answer too large to keep: its outcome
    /// is not known.
    Lost { oldest_retained: u64 },
}

#[derive(Debug)]
pub(crate) struct DedupTable {
    config: DedupConfig,
    clients: HashMap<u64, ClientState>,
    /// (last seen ms, client) for eviction, oldest first.
    by_age: BTreeSet<(u64, u64)>,
}

impl DedupTable {
    pub fn new(config: DedupConfig) -> DedupTable {
        DedupTable {
            config,
            clients: HashMap::new(),
            by_age: BTreeSet::new(),
        }
    }

    fn oldest_retained(&self, c: &ClientState) -> u64 {
        c.highest.saturating_sub(u64::from(self.config.window)) + 1
    }

    pub fn check(&self, client: u64, seq: u64) -> Verdict<'_> {
        let Some(c) = self.clients.get(&client) else {
            return Verdict::Apply;
        };
        let oldest = self.oldest_retained(c);
        if seq < oldest {
            return Verdict::Lost {
                oldest_retained: oldest,
            };
        }
        match c.applied.get(&seq) {
            Some(cached) if cached.body.is_some() => Verdict::Duplicate(cached),
            Some(_) => Verdict::Lost {
                oldest_retained: oldest,
            },
            None => Verdict::Apply,
        }
    }

    pub fn record(&mut self, client: u64, seq: u64, now_ms: u64, outcome: Outcome, body: &[u8]) {
        let keep = body.len() <= self.config.answer_max_bytes as usize;
        let window = u64::from(self.config.window);
        let state = self.clients.entry(client).or_default();
        self.by_age.remove(&(state.at_ms, client));
        state.at_ms = now_ms;
        state.highest = state.highest.max(seq);
        state.applied.insert(
            seq,
            Cached {
                outcome,
                body: keep.then(|| body.to_vec()),
            },
        );
        let oldest = state.highest.saturating_sub(window) + 1;
        while state.applied.first_key_value().is_some_and(|(&s, _)| s < oldest) {
            state.applied.pop_first();
        }
        self.by_age.insert((now_ms, client));
        // Forget the idle and the excess, oldest first.
        while let Some(&(at, id)) = self.by_age.first() {
            let expired = at.saturating_add(self.config.ttl_ms) < now_ms;
            if !expired && self.clients.len() <= self.config.clients_max as usize {
                break;
            }
            self.by_age.remove(&(at, id));
            self.clients.remove(&id);
        }
    }

    /// Every client by id: (id, highest, last seen, answers by sequence).
    pub fn clients_ordered(&self) -> Vec<(u64, u64, u64, Vec<(u64, &Cached)>)> {
        let mut out: Vec<_> = self
            .clients
            .iter()
            .map(|(&id, c)| (id, c.highest, c.at_ms, c.applied.iter().map(|(&s, a)| (s, a)).collect()))
            .collect();
        out.sort_by_key(|c| c.0);
        out
    }

    /// Puts back a client read from a snapshot.
    pub fn restore_client(&mut self, id: u64, highest: u64, at_ms: u64, answers: Vec<(u64, Cached)>) {
        self.by_age.insert((at_ms, id));
        self.clients.insert(
            id,
            ClientState {
                highest,
                at_ms,
                applied: answers.into_iter().collect(),
            },
        );
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.clients.len()
    }
}
