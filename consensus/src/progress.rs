//! What a leader knows about each follower's log, and how much it may send
//! it before hearing back.

use std::collections::VecDeque;

use crate::Index;

/// How the leader is sending to a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// Looking for the last matching index: one append at a time.
    Probe,
    /// Matching index known: appends are pipelined up to the in-flight
    /// window.
    Replicate,
    /// The follower needs a snapshot; appends wait until it is installed.
    Snapshot,
}

/// Last indexes of appends sent but not yet acknowledged, oldest first,
/// bounded by the configured window.
#[derive(Debug, Clone)]
pub(crate) struct Inflights {
    last_indexes: VecDeque<Index>,
    cap: usize,
}

impl Inflights {
    pub(crate) fn new(cap: usize) -> Inflights {
        Inflights {
            last_indexes: VecDeque::new(),
            cap,
        }
    }

    pub(crate) fn full(&self) -> bool {
        self.last_indexes.len() >= self.cap
    }

    pub(crate) fn add(&mut self, last: Index) {
        assert!(!self.full(), "in-flight window of {} overflowed", self.cap);
        debug_assert!(self.last_indexes.back().is_none_or(|&b| b <= last));
        self.last_indexes.push_back(last);
    }

    /// Frees every message whose entries are all at or below `index`.
    pub(crate) fn free_to(&mut self, index: Index) {
        while self.last_indexes.front().is_some_and(|&f| f <= index) {
            self.last_indexes.pop_front();
        }
    }

    pub(crate) fn reset(&mut self) {
        self.last_indexes.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.last_indexes.len()
    }
}

/// The leader's view of one member.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Highest index known to match the leader's log (persisted there).
    pub(crate) matched: Index,
    /// Next index to send.
    pub(crate) next: Index,
    pub(crate) state: ProgressState,
    /// In `Probe`: an append is out and unanswered.
    pub(crate) probe_sent: bool,
    /// In `Snapshot`: index of the snapshot being sent…
    pub(crate) pending_snapshot: Index,
    /// …and the offset of the chunk to send next.
    pub(crate) snapshot_offset: u64,
    pub(crate) inflights: Inflights,
    /// Heard from since the last check-quorum.
    pub(crate) recent_active: bool,
    pub(crate) is_learner: bool,
    /// Newest heartbeat round the member acknowledged in this term.
    pub(crate) acked_round: u64,
    /// `matched` when the latest heartbeat round went out…
    pub(crate) matched_at_round: Index,
    /// …and when the one before it went out: unchanged since then means
    /// nothing was acknowledged for at least a heartbeat interval.
    pub(crate) matched_at_previous_round: Index,
}

impl Progress {
    pub(crate) fn new(next: Index, window: usize, is_learner: bool) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            snapshot_offset: 0,
            inflights: Inflights::new(window),
            recent_active: false,
            is_learner,
            acked_round: 0,
            matched_at_round: 0,
            matched_at_previous_round: 0,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.next = if self.state == ProgressState::Snapshot {
            (self.matched + 1).max(self.pending_snapshot + 1)
        } else {
            self.matched + 1
        };
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.snapshot_offset = 0;
        self.inflights.reset();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.next = self.matched + 1;
        self.state = ProgressState::Replicate;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub(crate) fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot = index;
        self.snapshot_offset = 0;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Records an acknowledgement up to `index`; true if it was news.
    pub(crate) fn maybe_update(&mut self, index: Index) -> bool {
        let updated = self.matched < index;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// Handles a rejection of the append after `rejected`; `probe_hint` is
    /// the leader's guess of the last index the follower may match. False
    /// if the rejection is stale.
    pub(crate) fn maybe_decrease_to(&mut self, rejected: Index, probe_hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next.saturating_sub(1) != rejected {
            return false;
        }
        self.next = rejected.min(probe_hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// True when nothing more may be sent for now.
    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// Records an append carrying entries up to `last` (`None`: empty).
    pub(crate) fn sent(&mut self, last: Option<Index>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next = last + 1;
                    self.inflights.add(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => unreachable!("append sent while a snapshot is pending"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_pipelines_until_the_window_is_full() {
        let mut pr = Progress::new(1, 2, false);
        pr.become_replicate();
        pr.sent(Some(3));
        assert!(!pr.is_paused());
        pr.sent(Some(5));
        assert!(pr.is_paused());
        assert_eq!(pr.next, 6);
        assert!(pr.maybe_update(3));
        pr.inflights.free_to(3);
        assert!(!pr.is_paused());
        assert_eq!(pr.inflights.len(), 1);
    }

    #[test]
    fn probe_sends_one_at_a_time_and_ignores_stale_rejections() {
        let mut pr = Progress::new(10, 4, false);
        pr.sent(Some(12));
        assert!(pr.is_paused());
        assert!(!pr.maybe_decrease_to(5, 3), "stale: not the index probed");
        assert!(pr.maybe_decrease_to(9, 4));
        assert_eq!(pr.next, 5);
        assert!(!pr.is_paused());
    }

    #[test]
    fn snapshot_state_pauses_and_resumes_past_the_snapshot() {
        let mut pr = Progress::new(3, 4, false);
        pr.become_snapshot(20);
        assert!(pr.is_paused());
        pr.become_probe();
        assert_eq!(pr.next, 21);
    }
}
