//! Membership changes (Raft §6, thesis §4.3). A change that alters the
//! voters always goes through a joint configuration: the entry that enters
//! it is followed, once applied on the leader, by an empty change that
//! leaves it. Changes that only touch learners take effect directly.
//! Configurations take effect when their entry is applied, on every node in
//! the same log order, so every node derives the same configuration from
//! the same prefix.

use std::collections::BTreeSet;

use crate::message::ConfState;
use crate::NodeId;

/// One membership step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChangeItem {
    /// Make the node a voter (promoting a learner).
    AddVoter(NodeId),
    /// Make the node a learner (demoting a voter when the change ends).
    AddLearner(NodeId),
    /// Remove the node.
    Remove(NodeId),
}

/// A list of steps applied together; empty means "leave the joint
/// configuration".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfChange {
    /// The steps.
    pub items: Vec<ConfChangeItem>,
    /// Opaque bytes that travel with the change and reach every member
    /// when it applies (the embedding application's member addresses, for
    /// example). The core never reads them. At most
    /// [`CONF_CHANGE_CONTEXT_MAX`] bytes.
    pub context: Vec<u8>,
}

/// Upper bound on steps in one change, so a decoder never allocates more
/// than this.
pub const CONF_CHANGE_ITEMS_MAX: usize = 64;

/// Upper bound on a change's context.
pub const CONF_CHANGE_CONTEXT_MAX: usize = 4096;

/// Why a change cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfChangeError {
    /// An empty change outside a joint configuration.
    #[error("not in a joint configuration, so there is nothing to leave")]
    NotJoint,
    /// A change that alters voters while a joint configuration is active.
    #[error("a joint configuration is active; it must be left first")]
    AlreadyJoint,
    /// The change would leave no voter.
    #[error("the change would leave no voter")]
    NoVoters,
    /// Node id 0.
    #[error("node id 0 is reserved")]
    ZeroId,
    /// The encoding is malformed.
    #[error("membership change encoding is malformed")]
    Malformed,
    /// More steps than [`CONF_CHANGE_ITEMS_MAX`].
    #[error("more than {CONF_CHANGE_ITEMS_MAX} steps in one change")]
    TooManyItems,
    /// A context longer than [`CONF_CHANGE_CONTEXT_MAX`].
    #[error("membership change context longer than {CONF_CHANGE_CONTEXT_MAX} bytes")]
    ContextTooLong,
}

impl ConfChange {
    /// Encoding: `u16` LE step count, then per step one kind byte (0 add
    /// voter, 1 add learner, 2 remove) and a `u64` LE node id, then the
    /// context's bytes to the end (none: no context).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 9 * self.items.len() + self.context.len());
        out.extend_from_slice(&(self.items.len() as u16).to_le_bytes());
        for item in &self.items {
            let (kind, id) = match *item {
                ConfChangeItem::AddVoter(id) => (0u8, id),
                ConfChangeItem::AddLearner(id) => (1, id),
                ConfChangeItem::Remove(id) => (2, id),
            };
            out.push(kind);
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.extend_from_slice(&self.context);
        out
    }

    /// Decodes [`ConfChange::encode`]'s output; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<ConfChange, ConfChangeError> {
        let (count, rest) = match bytes {
            [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
            _ => return Err(ConfChangeError::Malformed),
        };
        if count > CONF_CHANGE_ITEMS_MAX {
            return Err(ConfChangeError::TooManyItems);
        }
        if rest.len() < count * 9 {
            return Err(ConfChangeError::Malformed);
        }
        let (mut rest, context) = rest.split_at(count * 9);
        if context.len() > CONF_CHANGE_CONTEXT_MAX {
            return Err(ConfChangeError::ContextTooLong);
        }
        let mut items = Vec::with_capacity(count);
        while let [kind, id @ ..] = rest {
            let (id_bytes, tail) = id.split_at(8);
            let id = u64::from_le_bytes(id_bytes.try_into().map_err(|_| ConfChangeError::Malformed)?);
            items.push(match kind {
                0 => ConfChangeItem::AddVoter(id),
                1 => ConfChangeItem::AddLearner(id),
                2 => ConfChangeItem::Remove(id),
                _ => return Err(ConfChangeError::Malformed),
            });
            rest = tail;
        }
        Ok(ConfChange {
            items,
            context: context.to_vec(),
        })
    }
}

fn sorted(set: BTreeSet<NodeId>) -> Vec<NodeId> {
    set.into_iter().collect()
}

/// The configuration that results from applying `change` to `conf`.
pub fn apply(conf: &ConfState, change: &ConfChange) -> Result<ConfState, ConfChangeError> {
    if change.items.len() > CONF_CHANGE_ITEMS_MAX {
        return Err(ConfChangeError::TooManyItems);
    }
    if change.context.len() > CONF_CHANGE_CONTEXT_MAX {
        return Err(ConfChangeError::ContextTooLong);
    }
    if change.items.is_empty() {
        if !conf.is_joint() {
            return Err(ConfChangeError::NotJoint);
        }
        let mut learners: BTreeSet<NodeId> = conf.learners.iter().copied().collect();
        learners.extend(conf.learners_next.iter().copied());
        for v in &conf.voters {
            learners.remove(v);
        }
        return Ok(ConfState {
            voters: conf.voters.clone(),
            learners: sorted(learners),
            voters_outgoing: Vec::new(),
            learners_next: Vec::new(),
        });
    }
    if conf.is_joint() {
        // Only leaving is allowed while joint, so no node can end up both an
        // outgoing voter and a learner.
        return Err(ConfChangeError::AlreadyJoint);
    }
    let before: BTreeSet<NodeId> = conf.voters.iter().copied().collect();
    let mut voters = before.clone();
    let mut learners: BTreeSet<NodeId> = conf.learners.iter().copied().collect();
    let mut learners_next: BTreeSet<NodeId> = conf.learners_next.iter().copied().collect();
    for item in &change.items {
        match *item {
            ConfChangeItem::AddVoter(id) | ConfChangeItem::AddLearner(id) | ConfChangeItem::Remove(id) if id == 0 => {
                return Err(ConfChangeError::ZeroId)
            }
            ConfChangeItem::AddVoter(id) => {
                learners.remove(&id);
                learners_next.remove(&id);
                voters.insert(id);
            }
            ConfChangeItem::AddLearner(id) => {
                voters.remove(&id);
                if before.contains(&id) {
                    // A voter being demoted keeps voting in the outgoing
                    // half until the joint configuration is left.
                    learners_next.insert(id);
                } else {
                    learners.insert(id);
                }
            }
            ConfChangeItem::Remove(id) => {
                voters.remove(&id);
                learners.remove(&id);
                learners_next.remove(&id);
            }
        }
    }
    if voters.is_empty() {
        return Err(ConfChangeError::NoVoters);
    }
    if voters == before {
        // Learners only: no quorum changes, so no joint step is needed.
        learners.extend(learners_next);
        for v in &voters {
            learners.remove(v);
        }
        return Ok(ConfState {
            voters: sorted(voters),
            learners: sorted(learners),
            voters_outgoing: Vec::new(),
            learners_next: Vec::new(),
        });
    }
    Ok(ConfState {
        voters: sorted(voters),
        learners: sorted(learners),
        voters_outgoing: sorted(before),
        learners_next: sorted(learners_next),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConfChangeItem::*;

    fn cc(items: &[ConfChangeItem]) -> ConfChange {
        ConfChange {
            items: items.to_vec(),
            context: Vec::new(),
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let change = cc(&[AddVoter(4), AddLearner(5), Remove(1)]);
        assert_eq!(ConfChange::decode(&change.encode()), Ok(change));
        assert_eq!(ConfChange::decode(&cc(&[]).encode()), Ok(cc(&[])));
        let with_context = ConfChange {
            items: vec![AddLearner(7)],
            context: b"7=127.0.0.1:1/127.0.0.1:2".to_vec(),
        };
        assert_eq!(ConfChange::decode(&with_context.encode()), Ok(with_context));
        for bad in [
            &[][..],
            &[1],
            &[1, 0, 0],
            &[1, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xFF, 0xFF],
        ] {
            assert!(ConfChange::decode(bad).is_err(), "{bad:?}");
        }
        let mut long = cc(&[]).encode();
        long.resize(2 + CONF_CHANGE_CONTEXT_MAX + 1, 0);
        assert_eq!(ConfChange::decode(&long), Err(ConfChangeError::ContextTooLong));
    }

    /// Raft §6: a voter change goes through a joint configuration whose old
    /// half is the previous voters, and leaving it keeps the new half.
    #[test]
    fn voter_changes_enter_then_leave_a_joint_configuration() {
        let conf = ConfState::with_voters([1, 2, 3]);
        let joint = apply(&conf, &cc(&[AddVoter(4), Remove(1)])).unwrap();
        assert_eq!(joint.voters, vec![2, 3, 4]);
        assert_eq!(joint.voters_outgoing, vec![1, 2, 3]);
        assert_eq!(apply(&joint, &cc(&[AddVoter(5)])), Err(ConfChangeError::AlreadyJoint));
        assert_eq!(apply(&joint, &cc(&[AddLearner(9)])), Err(ConfChangeError::AlreadyJoint));
        let left = apply(&joint, &cc(&[])).unwrap();
        assert_eq!(left, ConfState::with_voters([2, 3, 4]));
        assert_eq!(apply(&left, &cc(&[])), Err(ConfChangeError::NotJoint));
    }

    #[test]
    fn demotion_waits_for_the_joint_configuration_to_end() {
        let conf = ConfState::with_voters([1, 2, 3]);
        let joint = apply(&conf, &cc(&[AddLearner(3)])).unwrap();
        assert_eq!(joint.voters, vec![1, 2]);
        assert_eq!(joint.learners_next, vec![3]);
        let left = apply(&joint, &cc(&[])).unwrap();
        assert_eq!(left.learners, vec![3]);
        assert_eq!(left.voters, vec![1, 2]);
    }

    #[test]
    fn learner_only_changes_skip_the_joint_step() {
        let conf = ConfState::with_voters([1, 2, 3]);
        let next = apply(&conf, &cc(&[AddLearner(4)])).unwrap();
        assert!(!next.is_joint());
        assert_eq!(next.learners, vec![4]);
        let promoted = apply(&next, &cc(&[AddVoter(4)])).unwrap();
        assert_eq!(promoted.voters, vec![1, 2, 3, 4]);
        assert!(promoted.learners.is_empty());
        assert!(promoted.is_joint());
    }

    #[test]
    fn refuses_to_remove_every_voter_or_use_id_zero() {
        let conf = ConfState::with_voters([1]);
        assert_eq!(apply(&conf, &cc(&[Remove(1)])), Err(ConfChangeError::NoVoters));
        assert_eq!(apply(&conf, &cc(&[AddVoter(0)])), Err(ConfChangeError::ZeroId));
    }
}
