//! The log as the core sees it: persisted entries read through
//! [`Storage`], followed by unstable entries not yet persisted, plus the
//! commit and apply positions.

use crate::message::{Entry, Snapshot};
use crate::storage::{Storage, StorageError};
use crate::{Index, Term};

#[derive(Debug)]
pub(crate) struct RaftLog<S> {
    pub(crate) storage: S,
    /// Entries not yet persisted; `unstable[i].index == unstable_offset + i`.
    unstable: Vec<Entry>,
    unstable_offset: Index,
    /// A received snapshot not yet persisted.
    unstable_snapshot: Option<Snapshot>,
    pub(crate) committed: Index,
    pub(crate) applied: Index,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(storage: S, commit: Index) -> RaftLog<S> {
        let first = storage.first_index();
        let last = storage.last_index();
        assert!(
            commit <= last,
            "hard state commit {commit} is past the last persisted entry {last}"
        );
        RaftLog {
            unstable_offset: last + 1,
            storage,
            unstable: Vec::new(),
            unstable_snapshot: None,
            committed: commit.max(first - 1),
            applied: first - 1,
        }
    }

    pub(crate) fn first_index(&self) -> Index {
        match &self.unstable_snapshot {
            Some(s) => s.meta.index + 1,
            None => self.storage.first_index(),
        }
    }

    pub(crate) fn last_index(&self) -> Index {
        if let Some(last) = self.unstable.last() {
            return last.index;
        }
        match &self.unstable_snapshot {
            Some(s) => s.meta.index,
            None => self.storage.last_index(),
        }
    }

    /// Last index persisted (entries handed out in a Ready and advanced).
    pub(crate) fn stabled(&self) -> Index {
        self.unstable_offset - 1
    }

    pub(crate) fn last_term(&self) -> Term {
        self.term(self.last_index()).unwrap_or(0)
    }

    /// Term at `index`, or `None` if it is compacted or past the end.
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index >= self.unstable_offset {
            return self
                .unstable
                .get((index - self.unstable_offset) as usize)
                .map(|e| e.term);
        }
        if let Some(s) = &self.unstable_snapshot {
            return (index == s.meta.index).then_some(s.meta.term);
        }
        if index == 0 {
            return Some(0);
        }
        self.storage.term(index).ok()
    }

    pub(crate) fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        let our_term = self.last_term();
        last_term > our_term || (last_term == our_term && last_index >= self.last_index())
    }

    /// Appends after resolving nothing: the first entry continues the log
    /// or replaces an uncommitted suffix. Returns the new last index.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Index {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        assert!(
            first.index > self.committed,
            "append at {} would overwrite committed entries up to {}",
            first.index,
            self.committed
        );
        let after = first.index;
        let end = self.unstable_offset + self.unstable.len() as Index;
        if after == end {
            self.unstable.extend_from_slice(entries);
        } else if after <= self.unstable_offset {
            // The new entries replace part of the persisted log too; the
            // driver's append truncates it.
            self.unstable_offset = after;
            self.unstable.clear();
            self.unstable.extend_from_slice(entries);
        } else {
            assert!(after < end, "append at {after} leaves a gap after {}", end - 1);
            self.unstable.truncate((after - self.unstable_offset) as usize);
            self.unstable.extend_from_slice(entries);
        }
        self.last_index()
    }

    /// Raft §5.3 on a follower: if the log matches at `prev_index`, appends
    /// what is new and returns the last index the leader's message covers.
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        commit: Index,
        entries: &[Entry],
    ) -> Option<Index> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + entries.len() as Index;
        if let Some(pos) = entries.iter().position(|e| !self.match_term(e.index, e.term)) {
            let conflict = entries[pos].index;
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with the committed prefix up to {}",
                self.committed
            );
            self.append(&entries[pos..]);
        }
        self.commit_to(commit.min(last_new));
        Some(last_new)
    }

    /// The largest index at or below `index` whose term is at most `term`,
    /// with that term: where a leader can next probe (fast backtracking).
    pub(crate) fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Some(t) if t <= term => return (index, t),
                Some(_) if index > 0 => index -= 1,
                _ => return (index, 0),
            }
        }
    }

    pub(crate) fn commit_to(&mut self, commit: Index) {
        if commit > self.committed {
            assert!(
                commit <= self.last_index(),
                "commit {commit} is past the last index {}",
                self.last_index()
            );
            self.committed = commit;
        }
    }

    /// Raft §5.4.2: commits `index` only if its entry is of `term`.
    pub(crate) fn maybe_commit(&mut self, index: Index, term: Term) -> bool {
        if index > self.committed && self.term(index) == Some(term) {
            self.commit_to(index);
            return true;
        }
        false
    }

    /// Entries in `[lo, hi)`, up to `max_bytes` (at least one).
    pub(crate) fn slice(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let first = self.first_index();
        if lo < first {
            return Err(StorageError::Compacted { index: lo, first });
        }
        let last = self.last_index();
        if hi > last + 1 {
            return Err(StorageError::Unavailable { index: hi - 1, last });
        }
        let mut out = Vec::new();
        if lo < self.unstable_offset {
            let persisted_hi = hi.min(self.unstable_offset);
            out = self.storage.entries(lo, persisted_hi, max_bytes)?;
            if (out.len() as Index) < persisted_hi - lo {
                // The byte limit stopped inside the persisted part.
                return Ok(out);
            }
        }
        if hi > self.unstable_offset {
            let mut bytes: u64 = out.iter().map(Entry::size_bytes).sum();
            let from = (lo.max(self.unstable_offset) - self.unstable_offset) as usize;
            let to = (hi - self.unstable_offset) as usize;
            for entry in &self.unstable[from..to] {
                bytes += entry.size_bytes();
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(entry.clone());
            }
        }
        Ok(out)
    }

    /// Entries from `lo` to the end, up to `max_bytes`.
    pub(crate) fn entries_from(&self, lo: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.slice(lo, self.last_index() + 1, max_bytes)
    }

    pub(crate) fn has_next_committed(&self) -> bool {
        self.unstable_snapshot.is_none() && self.applied < self.committed.min(self.stabled())
    }

    /// Committed, persisted entries not yet handed out for applying.
    pub(crate) fn next_committed(&self, max_bytes: u64) -> Vec<Entry> {
        if !self.has_next_committed() {
            return Vec::new();
        }
        let hi = self.committed.min(self.stabled()) + 1;
        self.slice(self.applied + 1, hi, max_bytes)
            .unwrap_or_else(|e| panic!("committed entries {}..{hi} unreadable: {e}", self.applied + 1))
    }

    pub(crate) fn unstable_entries(&self) -> &[Entry] {
        &self.unstable
    }

    pub(crate) fn unstable_snapshot(&self) -> Option<&Snapshot> {
        self.unstable_snapshot.as_ref()
    }

    /// The snapshot to send a lagging follower.
    pub(crate) fn snapshot(&self) -> Result<Snapshot, StorageError> {
        match &self.unstable_snapshot {
            Some(s) => Ok(s.clone()),
            None => self.storage.snapshot(),
        }
    }

    /// The driver persisted the unstable entries up to `index` (of `term`).
    pub(crate) fn stable_to(&mut self, index: Index, term: Term) {
        if index >= self.unstable_offset && self.term(index) == Some(term) {
            let n = (index + 1 - self.unstable_offset) as usize;
            self.unstable.drain(..n);
            self.unstable_offset = index + 1;
        }
    }

    pub(crate) fn stable_snapshot_to(&mut self, index: Index) {
        if self.unstable_snapshot.as_ref().is_some_and(|s| s.meta.index == index) {
            self.unstable_snapshot = None;
        }
    }

    pub(crate) fn applied_to(&mut self, index: Index) {
        assert!(
            index <= self.committed,
            "applied {index} past the commit index {}",
            self.committed
        );
        self.applied = self.applied.max(index);
    }

    /// Replaces the log with a snapshot (Raft §7).
    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.committed = index;
        self.unstable.clear();
        self.unstable_offset = index + 1;
        self.unstable_snapshot = Some(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::EntryKind;
    use crate::storage::MemStorage;

    fn e(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Normal,
            timestamp_ms: 0,
            data: Arc::from(&[][..]),
        }
    }

    fn log_with(persisted: &[Entry], unstable: &[Entry]) -> RaftLog<MemStorage> {
        let mut s = MemStorage::default();
        s.append(persisted);
        let mut log = RaftLog::new(s, 0);
        log.append(unstable);
        log
    }

    #[test]
    fn terms_and_slices_span_persisted_and_unstable_entries() {
        let log = log_with(&[e(1, 1), e(2, 1)], &[e(3, 2), e(4, 2)]);
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.stabled(), 2);
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(5), None);
        let all = log.slice(1, 5, u64::MAX).unwrap();
        assert_eq!(all.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(log.slice(2, 4, 0).unwrap().len(), 1);
    }

    /// Raft §5.3: a conflicting suffix is replaced; matching entries stay.
    #[test]
    fn maybe_append_replaces_only_the_conflicting_suffix() {
        let mut log = log_with(&[e(1, 1), e(2, 1), e(3, 1)], &[]);
        assert_eq!(log.maybe_append(1, 1, 0, &[e(2, 1), e(3, 2)]), Some(3));
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.unstable_entries().len(), 1);
        assert_eq!(log.maybe_append(3, 1, 0, &[]), None, "term mismatch at prev");
        assert_eq!(log.maybe_append(1, 1, 9, &[]), Some(1));
        assert_eq!(log.committed, 1, "commit bounded by the last entry the message covers");
    }

    #[test]
    fn conflict_search_skips_whole_terms() {
        let log = log_with(&[e(1, 1), e(2, 2), e(3, 2), e(4, 4), e(5, 4)], &[]);
        assert_eq!(log.find_conflict_by_term(5, 3), (3, 2));
        assert_eq!(log.find_conflict_by_term(9, 4), (5, 4));
        assert_eq!(log.find_conflict_by_term(5, 0), (0, 0));
    }

    #[test]
    fn committed_entries_wait_for_persistence() {
        let mut log = log_with(&[e(1, 1)], &[e(2, 1)]);
        log.commit_to(2);
        assert_eq!(log.next_committed(u64::MAX).len(), 1);
        log.storage.append(&[e(2, 1)]);
        log.stable_to(2, 1);
        assert_eq!(log.next_committed(u64::MAX).len(), 2);
    }
}
