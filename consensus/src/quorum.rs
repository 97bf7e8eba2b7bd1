//! Quorum decisions for a majority configuration and for a joint
//! configuration (Raft §6: during a change, decisions need a majority of
//! both the old and the new voters).

use std::collections::BTreeSet;

use crate::{Index, NodeId};

/// The outcome of a vote count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteResult {
    /// Not yet decided: enough voters have not answered.
    Pending,
    /// A quorum granted.
    Won,
    /// A quorum can no longer be reached.
    Lost,
}

/// A set of voters deciding by simple majority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    voters: BTreeSet<NodeId>,
}

impl MajorityConfig {
    /// A configuration of these voters.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> MajorityConfig {
        MajorityConfig {
            voters: voters.into_iter().collect(),
        }
    }

    /// The voters.
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    /// The largest index acknowledged by a majority, given each voter's
    /// acknowledged (match) index; a voter without one counts as 0. An empty
    /// configuration commits everything, so that a joint configuration with
    /// an empty half is decided by the other half.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<Index>) -> Index {
        let n = self.voters.len();
        if n == 0 {
            return Index::MAX;
        }
        // Small clusters: a stack array avoids allocating on the commit path.
        let mut stack = [0 as Index; 7];
        let mut heap;
        let indexes: &mut [Index] = if n <= stack.len() {
            &mut stack[..n]
        } else {
            heap = vec![0; n];
            &mut heap
        };
        for (slot, id) in indexes.iter_mut().zip(&self.voters) {
            *slot = acked(*id).unwrap_or(0);
        }
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        // With voters sorted by descending index, the (n/2)-th (0-based)
        // has been reached by n/2 + 1 voters: a majority.
        indexes[n / 2]
    }

    /// Counts votes: `vote(id)` is `Some(granted)` for voters that answered.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut yes, mut missing) = (0, 0);
        for id in &self.voters {
            match vote(*id) {
                Some(true) => yes += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let quorum = self.voters.len() / 2 + 1;
        if yes >= quorum {
            VoteResult::Won
        } else if yes + missing >= quorum {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// The incoming and outgoing voter sets of a joint configuration; outside a
/// change the outgoing set is empty and only the incoming one decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JointConfig {
    /// The new voters.
    pub incoming: MajorityConfig,
    /// The old voters, while the change is in progress.
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    /// The index committed by both halves.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<Index>) -> Index {
        self.incoming
            .committed_index(&acked)
            .min(self.outgoing.committed_index(&acked))
    }

    /// Won only if both halves won; lost if either lost.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        match (self.incoming.vote_result(&vote), self.outgoing.vote_result(&vote)) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn acks(pairs: &[(NodeId, Index)]) -> impl Fn(NodeId) -> Option<Index> {
        let map: HashMap<_, _> = pairs.iter().copied().collect();
        move |id| map.get(&id).copied()
    }

    /// Raft §5.3: an entry is committed once a majority stores it.
    #[test]
    fn committed_index_table() {
        let cases: &[(&[NodeId], &[(NodeId, Index)], Index)] = &[
            (&[1], &[(1, 5)], 5),
            (&[1, 2], &[(1, 5), (2, 3)], 3),
            (&[1, 2, 3], &[(1, 5), (2, 3)], 3),
            (&[1, 2, 3], &[(1, 5)], 0),
            (&[1, 2, 3], &[(1, 5), (2, 9), (3, 7)], 7),
            (&[1, 2, 3, 4], &[(1, 5), (2, 9), (3, 7), (4, 1)], 5),
            (&[1, 2, 3, 4, 5], &[(1, 5), (2, 9), (3, 7), (4, 1), (5, 2)], 5),
            // Acks from non-voters do not count.
            (&[1, 2, 3], &[(1, 9), (7, 9), (8, 9)], 0),
            // Larger than the stack buffer.
            (
                &[1, 2, 3, 4, 5, 6, 7, 8, 9],
                &[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9)],
                5,
            ),
        ];
        for (voters, acked, want) in cases {
            let c = MajorityConfig::new(voters.iter().copied());
            assert_eq!(
                c.committed_index(acks(acked)),
                *want,
                "voters {voters:?} acks {acked:?}"
            );
        }
    }

    #[test]
    fn vote_result_table() {
        use VoteResult::*;
        let cases: &[(&[NodeId], &[(NodeId, bool)], VoteResult)] = &[
            (&[1], &[], Pending),
            (&[1], &[(1, true)], Won),
            (&[1], &[(1, false)], Lost),
            (&[1, 2, 3], &[(1, true)], Pending),
            (&[1, 2, 3], &[(1, true), (2, true)], Won),
            (&[1, 2, 3], &[(1, false), (2, false)], Lost),
            (&[1, 2, 3, 4], &[(1, true), (2, true)], Pending),
            (&[1, 2, 3, 4], &[(1, true), (2, false), (3, false)], Lost),
            (&[1, 2, 3], &[(9, true), (8, true)], Pending),
        ];
        for (voters, votes, want) in cases {
            let map: HashMap<_, _> = votes.iter().copied().collect();
            let c = MajorityConfig::new(voters.iter().copied());
            assert_eq!(
                c.vote_result(|id| map.get(&id).copied()),
                *want,
                "voters {voters:?} votes {votes:?}"
            );
        }
    }

    /// Raft §6: in a joint configuration both majorities must agree.
    #[test]
    fn joint_needs_both_halves() {
        let joint = JointConfig {
            incoming: MajorityConfig::new([1, 2, 3]),
            outgoing: MajorityConfig::new([3, 4, 5]),
        };
        // New half at 9, old half only at 2.
        assert_eq!(joint.committed_index(acks(&[(1, 9), (2, 9), (3, 2), (4, 2)])), 2);
        assert_eq!(joint.vote_result(|id| Some(id <= 2)), VoteResult::Lost);
        assert_eq!(joint.vote_result(|id| (id <= 3).then_some(true)), VoteResult::Pending);
        assert_eq!(joint.vote_result(|id| Some(id != 5)), VoteResult::Won);

        let plain = JointConfig {
            incoming: MajorityConfig::new([1, 2, 3]),
            outgoing: MajorityConfig::default(),
        };
        assert_eq!(plain.committed_index(acks(&[(1, 4), (2, 4)])), 4);
        assert_eq!(plain.vote_result(|id| Some(id == 1 || id == 2)), VoteResult::Won);
    }
}
