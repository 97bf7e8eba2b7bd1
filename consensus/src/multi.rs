//! Many Raft groups on one node. Ticks drive every group together, inbound
//! messages are routed by the group id they carry, and outbound messages
//! of all groups are gathered per destination node so the transport sends
//! each peer one batch.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::error::Error;
use crate::message::Message;
use crate::raft::{Raft, Ready};
use crate::storage::Storage;
use crate::{GroupId, NodeId};

/// The groups of one node.
#[derive(Debug)]
pub struct MultiRaft<S: Storage> {
    node: NodeId,
    groups: BTreeMap<GroupId, Raft<S>>,
    groups_max: usize,
}

/// The work of every group with something to do.
#[derive(Debug, Default)]
pub struct MultiReady {
    /// Per group, its Ready with the messages moved into the batches below.
    pub groups: Vec<(GroupId, Ready)>,
    /// Messages to send now, per destination node.
    pub messages: BTreeMap<NodeId, Vec<Message>>,
    /// Messages to send once every group's Ready is persisted, per
    /// destination node.
    pub persisted_messages: BTreeMap<NodeId, Vec<Message>>,
}

impl<S: Storage> MultiRaft<S> {
    /// An empty container for node `node`, holding at most `groups_max`
    /// groups.
    pub fn new(node: NodeId, groups_max: usize) -> MultiRaft<S> {
        MultiRaft {
            node,
            groups: BTreeMap::new(),
            groups_max,
        }
    }

    /// Starts a group from its storage.
    pub fn add_group(&mut self, cfg: Config, storage: S) -> Result<(), Error> {
        if cfg.id != self.node {
            return Err(Error::Config(format!(
                "group {} configured for node {}, not {}",
                cfg.group, cfg.id, self.node
            )));
        }
        if self.groups.contains_key(&cfg.group) {
            return Err(Error::GroupExists(cfg.group));
        }
        if self.groups.len() >= self.groups_max {
            return Err(Error::Busy("groups_max reached"));
        }
        let group = cfg.group;
        self.groups.insert(group, Raft::new(cfg, storage)?);
        Ok(())
    }

    /// Stops a group, handing back its state.
    pub fn remove_group(&mut self, group: GroupId) -> Result<Raft<S>, Error> {
        self.groups.remove(&group).ok_or(Error::UnknownGroup(group))
    }

    /// One group.
    pub fn group(&self, group: GroupId) -> Option<&Raft<S>> {
        self.groups.get(&group)
    }

    /// One group, to propose, read or change membership.
    pub fn group_mut(&mut self, group: GroupId) -> Option<&mut Raft<S>> {
        self.groups.get_mut(&group)
    }

    /// Group ids, ascending.
    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Ticks every group.
    pub fn tick(&mut self) {
        for raft in self.groups.values_mut() {
            raft.tick();
        }
    }

    /// Routes a message to its group.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        match self.groups.get_mut(&m.group) {
            Some(raft) => raft.step(m),
            None => Err(Error::UnknownGroup(m.group)),
        }
    }

    /// True if any group has work.
    pub fn has_ready(&self) -> bool {
        self.groups.values().any(Raft::has_ready)
    }

    /// Collects the work of every group; call [`MultiRaft::advance`] once
    /// all of it is done.
    pub fn ready(&mut self) -> MultiReady {
        let mut out = MultiReady::default();
        for (&id, raft) in self.groups.iter_mut() {
            if !raft.has_ready() {
                continue;
            }
            let mut ready = raft.ready();
            for m in ready.messages.drain(..) {
                out.messages.entry(m.to).or_default().push(m);
            }
            for m in ready.persisted_messages.drain(..) {
                out.persisted_messages.entry(m.to).or_default().push(m);
            }
            out.groups.push((id, ready));
        }
        out
    }

    /// Reports the groups of `ready` done.
    pub fn advance(&mut self, ready: &MultiReady) {
        for (id, _) in &ready.groups {
            if let Some(raft) = self.groups.get_mut(id) {
                raft.advance();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ConfState;
    use crate::storage::MemStorage;
    use crate::Role;

    /// Three nodes with two groups each, delivering every message at once.
    #[test]
    fn groups_elect_independently_and_batch_messages_per_peer() {
        let mut nodes: Vec<MultiRaft<MemStorage>> = (1..=3)
            .map(|id| {
                let mut node = MultiRaft::new(id, 8);
                for group in [7, 9] {
                    let storage = MemStorage::new_with_conf(ConfState::with_voters([1, 2, 3]));
                    node.add_group(Config::new(id, group), storage).unwrap();
                }
                node
            })
            .collect();
        assert!(matches!(
            nodes[0].add_group(Config::new(1, 7), MemStorage::default()),
            Err(Error::GroupExists(7))
        ));
        let mut saw_batch = false;
        for _ in 0..100 {
            let mut inbox = Vec::new();
            for node in nodes.iter_mut() {
                node.tick();
                let ready = node.ready();
                for (peer, batch) in ready.messages.iter().chain(ready.persisted_messages.iter()) {
                    saw_batch |= batch.iter().any(|m| m.group == 7) && batch.iter().any(|m| m.group == 9);
                    assert!(batch.iter().all(|m| m.to == *peer));
                    inbox.extend(batch.iter().cloned());
                }
                persist(node, &ready);
                node.advance(&ready);
            }
            for m in inbox {
                let to = (m.to - 1) as usize;
                nodes[to].step(m).unwrap();
            }
        }
        for group in [7, 9] {
            let leaders = nodes
                .iter()
                .filter(|n| n.group(group).unwrap().role() == Role::Leader)
                .count();
            assert_eq!(leaders, 1, "group {group}");
        }
        assert!(saw_batch, "messages of both groups shared a batch");
    }

    fn persist(node: &mut MultiRaft<MemStorage>, ready: &MultiReady) {
        for (group, rd) in &ready.groups {
            let raft = node.group_mut(*group).unwrap();
            if let Some(hs) = rd.hard_state {
                raft.storage_mut().set_hard_state(hs);
            }
            raft.storage_mut().append(&rd.entries);
        }
    }
}
