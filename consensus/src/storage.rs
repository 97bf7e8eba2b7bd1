//! The core reads its persisted log through [`Storage`]; every write leaves
//! the core inside a `Ready` and is performed by the driver. [`MemStorage`]
//! is the in-memory implementation used by tests and the simulator.

use std::sync::Arc;

use crate::message::{ConfState, Entry, HardState, Snapshot, SnapshotMeta};
use crate::{Index, Term};

/// Why storage could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The index is before the first retained entry (compacted into a
    /// snapshot).
    #[error("index {index} is compacted (first retained entry is {first})")]
    Compacted {
        /// Requested index.
        index: Index,
        /// First retained index.
        first: Index,
    },
    /// The index is after the last entry.
    #[error("index {index} is past the last entry {last}")]
    Unavailable {
        /// Requested index.
        index: Index,
        /// Last index.
        last: Index,
    },
    /// A failure of the medium; the driver decides whether it is fatal.
    #[error("storage failed: {0}")]
    Failed(String),
}

/// Read access to persisted Raft state. `first_index() - 1` is the index of
/// the latest snapshot, whose term `term` must still answer.
pub trait Storage {
    /// Hard state and membership to start from.
    fn initial_state(&self) -> (HardState, ConfState);
    /// Entries in `[lo, hi)`, stopping once `max_bytes` is exceeded but
    /// always at least one entry when the range is not empty.
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// Term of the entry at `index`, for `first_index() - 1 ..= last_index()`.
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    /// First index still held as an entry.
    fn first_index(&self) -> Index;
    /// Last index held (the snapshot index when no entry follows it).
    fn last_index(&self) -> Index;
    /// The latest snapshot.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// Entries, hard state and the latest snapshot, in memory.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// Entries after the snapshot: `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// Empty storage whose initial membership is these voters.
    pub fn new_with_conf(conf: ConfState) -> MemStorage {
        MemStorage {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 0,
                    term: 0,
                    conf,
                },
                data: Arc::from(&[][..]),
            },
            ..MemStorage::default()
        }
    }

    /// Records the hard state.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// The hard state recorded.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Appends entries, first removing any held entries at or after the
    /// first new index (a leader overwriting a follower's suffix).
    ///
    /// # Panics
    /// If the entries would leave a gap or rewrite the snapshot.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let snap = self.snapshot.meta.index;
        assert!(
            first.index > snap,
            "append at {} would rewrite snapshot at {snap}",
            first.index
        );
        let last = self.last_index();
        assert!(
            first.index <= last + 1,
            "append at {} leaves a gap after {last}",
            first.index
        );
        self.entries.truncate((first.index - snap - 1) as usize);
        self.entries.extend_from_slice(entries);
    }

    /// Records a snapshot built locally at `index` (already applied), then
    /// keeps the entries after it.
    ///
    /// # Panics
    /// If `index` is not held or is older than the current snapshot.
    pub fn create_snapshot(&mut self, index: Index, conf: ConfState, data: Arc<[u8]>) {
        assert!(index >= self.snapshot.meta.index && index <= self.last_index());
        let term = self.term(index).expect("index is held");
        let snap = self.snapshot.meta.index;
        let keep_from = (index - snap) as usize;
        self.entries.drain(..keep_from.min(self.entries.len()));
        self.snapshot = Snapshot {
            meta: SnapshotMeta { index, term, conf },
            data,
        };
    }

    /// Replaces everything with a snapshot received from a leader.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        self.entries.clear();
        self.hard_state.commit = self.hard_state.commit.max(snapshot.meta.index);
        self.snapshot = snapshot;
    }

    /// Every entry held, for checkers.
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> (HardState, ConfState) {
        (self.hard_state, self.snapshot.meta.conf.clone())
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let first = self.first_index();
        if lo < first {
            return Err(StorageError::Compacted { index: lo, first });
        }
        let last = self.last_index();
        if hi > last + 1 {
            return Err(StorageError::Unavailable { index: hi - 1, last });
        }
        let snap = self.snapshot.meta.index;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for entry in &self.entries[(lo - snap - 1) as usize..(hi - snap - 1) as usize] {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let snap = self.snapshot.meta.index;
        if index == snap {
            return Ok(self.snapshot.meta.term);
        }
        if index < snap {
            return Err(StorageError::Compacted { index, first: snap + 1 });
        }
        match self.entries.get((index - snap - 1) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(StorageError::Unavailable {
                index,
                last: self.last_index(),
            }),
        }
    }

    fn first_index(&self) -> Index {
        self.snapshot.meta.index + 1
    }

    fn last_index(&self) -> Index {
        self.snapshot.meta.index + self.entries.len() as Index
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::EntryKind;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Normal,
            timestamp_ms: 0,
            data: Arc::from(&b"x"[..]),
        }
    }

    #[test]
    fn append_overwrites_a_suffix_and_reads_back() {
        let mut s = MemStorage::default();
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        s.append(&[entry(2, 2)]);
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.entries(1, 3, u64::MAX).unwrap().len(), 2);
        assert_eq!(s.entries(1, 3, 0).unwrap().len(), 1, "at least one entry");
    }

    #[test]
    fn snapshot_compacts_and_terms_still_answer_at_its_index() {
        let mut s = MemStorage::default();
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]);
        s.create_snapshot(2, ConfState::with_voters([1]), Arc::from(&b"s"[..]));
        assert_eq!(s.first_index(), 3);
        assert_eq!(s.term(2), Ok(1));
        assert_eq!(s.term(3), Ok(2));
        assert!(matches!(s.term(1), Err(StorageError::Compacted { .. })));
        assert!(matches!(s.entries(2, 4, u64::MAX), Err(StorageError::Compacted { .. })));
        assert!(matches!(s.term(4), Err(StorageError::Unavailable { .. })));
    }
}
