//! Exactly-once writes: the latest sequence applied per client and the
//! response it got, so a retried write is answered, not applied again.
//! Bounded in clients and in time; eviction order depends only on applied
//! entries, so every replica forgets the same clients at the same point.

use std::collections::{BTreeSet, HashMap};

use super::Outcome;

/// Deduplication bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// Clients remembered; the least recently seen is forgotten first.
    pub clients_max: u32,
    /// A client not seen for this long (leader time) is forgotten.
    pub ttl_ms: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            clients_max: 100_000,
            ttl_ms: 60_000,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Cached {
    pub seq: u64,
    pub at_ms: u64,
    pub outcome: Outcome,
    pub body: Vec<u8>,
}

/// What to do with a sequenced write.
#[derive(Debug)]
pub(crate) enum Verdict<'a> {
    /// New: apply it.
    Apply,
    /// The latest write again: answer what it got.
    Duplicate(&'a Cached),
    /// Older than the latest: its outcome is no longer known.
    Lost { oldest_retained: u64 },
}

#[derive(Debug)]
pub(crate) struct DedupTable {
    config: DedupConfig,
    clients: HashMap<u64, Cached>,
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

    pub fn check(&self, client: u64, seq: u64) -> Verdict<'_> {
        match self.clients.get(&client) {
            Some(c) if seq == c.seq => Verdict::Duplicate(c),
            Some(c) if seq < c.seq => Verdict::Lost { oldest_retained: c.seq },
            _ => Verdict::Apply,
        }
    }

    pub fn record(&mut self, client: u64, seq: u64, now_ms: u64, outcome: Outcome, body: &[u8]) {
        if let Some(old) = self.clients.remove(&client) {
            self.by_age.remove(&(old.at_ms, client));
        }
        self.clients.insert(
            client,
            Cached {
                seq,
                at_ms: now_ms,
                outcome,
                body: body.to_vec(),
            },
        );
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

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.clients.len()
    }
}
