//! A hand-driven network of in-memory nodes for scenario tests: messages
//! wait in one queue until a test delivers them, links can be cut, and
//! nodes can crash and restart from what they persisted.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use loomcache_consensus::{
    ConfState, Config, Entry, EntryKind, MemStorage, Message, MessageBody, NodeId, Proposed, Raft, ReadState, Role,
    Storage,
};

pub struct Net {
    pub nodes: BTreeMap<NodeId, Raft<MemStorage>>,
    pub queue: VecDeque<Message>,
    down: BTreeMap<NodeId, MemStorage>,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Normal entries each node applied, in order, as (index, data).
    pub applied: BTreeMap<NodeId, Vec<(u64, Vec<u8>)>>,
    pub read_states: BTreeMap<NodeId, Vec<ReadState>>,
    /// Every message handed to the network, for counting.
    pub sent: Vec<Message>,
    tweak: fn(&mut Config),
}

pub fn no_tweak(_: &mut Config) {}

impl Net {
    /// Nodes `voters` as voters and `learners` as learners.
    pub fn with(voters: &[NodeId], learners: &[NodeId], tweak: fn(&mut Config)) -> Net {
        let conf = ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        };
        let mut nodes = BTreeMap::new();
        for &id in voters.iter().chain(learners) {
            nodes.insert(
                id,
                Raft::new(config(id, tweak), MemStorage::new_with_conf(conf.clone())).unwrap(),
            );
        }
        let mut net = Net {
            nodes,
            queue: VecDeque::new(),
            down: BTreeMap::new(),
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
            sent: Vec::new(),
            tweak,
        };
        // Fresh nodes refuse votes for an election timeout (the lease
        // promise holds across restarts); let that pass.
        let ids: Vec<NodeId> = net.nodes.keys().copied().collect();
        net.expire_leases(&ids);
        net.sent.clear();
        net
    }

    pub fn new(n: u64) -> Net {
        let ids: Vec<NodeId> = (1..=n).collect();
        Net::with(&ids, &[], no_tweak)
    }

    /// A node that is not a member yet (it waits to be added).
    pub fn add_empty_node(&mut self, id: NodeId) {
        let raft = Raft::new(config(id, self.tweak), MemStorage::new_with_conf(ConfState::default())).unwrap();
        self.nodes.insert(id, raft);
    }

    pub fn raft(&self, id: NodeId) -> &Raft<MemStorage> {
        &self.nodes[&id]
    }

    pub fn raft_mut(&mut self, id: NodeId) -> &mut Raft<MemStorage> {
        self.nodes.get_mut(&id).unwrap()
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    fn blocked(&self, m: &Message) -> bool {
        self.cut.contains(&(m.from, m.to)) || self.down.contains_key(&m.from) || self.down.contains_key(&m.to)
    }

    fn enqueue(&mut self, m: Message) {
        self.sent.push(m.clone());
        if !self.blocked(&m) {
            self.queue.push_back(m);
        }
    }

    /// Drains a node's Ready: persists, applies, and queues its messages.
    pub fn process(&mut self, id: NodeId) {
        loop {
            let Some(raft) = self.nodes.get_mut(&id) else { return };
            if !raft.has_ready() {
                return;
            }
            let ready = raft.ready();
            let storage = raft.storage_mut();
            if let Some(snapshot) = &ready.snapshot {
                storage.apply_snapshot(snapshot.clone());
                self.applied
                    .entry(id)
                    .or_default()
                    .push((snapshot.meta.index, b"<snapshot>".to_vec()));
            }
            storage.append(&ready.entries);
            if let Some(hs) = ready.hard_state {
                storage.set_hard_state(hs);
            }
            for e in &ready.committed_entries {
                if e.kind == EntryKind::Normal {
                    self.applied.entry(id).or_default().push((e.index, e.data.to_vec()));
                }
            }
            self.read_states
                .entry(id)
                .or_default()
                .extend(ready.read_states.iter().copied());
            raft.advance();
            for m in ready.messages.into_iter().chain(ready.persisted_messages) {
                self.enqueue(m);
            }
        }
    }

    pub fn process_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.process(id);
        }
    }

    /// Delivers the next queued message (if its link is still open).
    pub fn deliver_one(&mut self) -> bool {
        let Some(m) = self.queue.pop_front() else { return false };
        if !self.blocked(&m) {
            let to = m.to;
            if let Some(raft) = self.nodes.get_mut(&to) {
                raft.step(m).unwrap();
                self.process(to);
            }
        }
        true
    }

    /// Delivers the first queued message matching `pred`; true if one was.
    pub fn deliver_first(&mut self, pred: impl Fn(&Message) -> bool) -> bool {
        let Some(pos) = self.queue.iter().position(pred) else {
            return false;
        };
        let m = self.queue.remove(pos).unwrap();
        self.queue.push_front(m);
        self.deliver_one()
    }

    /// Delivers everything until the network is quiet.
    pub fn stabilize(&mut self) {
        self.process_all();
        let mut budget = 100_000;
        while self.deliver_one() {
            budget -= 1;
            assert!(budget > 0, "network never went quiet");
        }
    }

    pub fn drop_queue(&mut self) {
        self.queue.clear();
    }

    pub fn tick(&mut self, id: NodeId, ticks: u64) {
        for _ in 0..ticks {
            if let Some(r) = self.nodes.get_mut(&id) {
                r.tick();
            }
            self.process(id);
        }
    }

    /// Ticks every listed node past its election timeout and its lease
    /// promise, then discards what the ticking sent (pre-votes leave terms
    /// unchanged), so the next campaign is decided by the test.
    pub fn expire_leases(&mut self, ids: &[NodeId]) {
        for &id in ids {
            let et = 10;
            self.tick(id, et);
        }
        self.drop_queue();
    }

    pub fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn cut_link(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn crash(&mut self, id: NodeId) {
        let raft = self.nodes.remove(&id).unwrap();
        self.down.insert(id, raft.storage().clone());
    }

    pub fn restart(&mut self, id: NodeId) {
        let storage = self.down.remove(&id).unwrap();
        self.applied.remove(&id);
        let raft = Raft::new(config(id, self.tweak), storage).unwrap();
        self.nodes.insert(id, raft);
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> Proposed {
        let p = self.raft_mut(id).propose(Arc::from(data), 0).unwrap();
        self.process(id);
        p
    }

    /// Starts a campaign at `id` and queues what it sends.
    pub fn campaign(&mut self, id: NodeId) {
        self.raft_mut(id).campaign();
        self.process(id);
    }

    /// Elects `id`: its campaign is delivered until it leads.
    pub fn elect(&mut self, id: NodeId) {
        self.campaign(id);
        self.stabilize();
        assert_eq!(self.raft(id).role(), Role::Leader, "node {id} did not win");
    }

    pub fn log_of(&self, id: NodeId) -> Vec<(u64, u64)> {
        let r = self.raft(id);
        let first = r.storage().first_index();
        (first..=r.last_index()).map(|i| (i, r.term_at(i).unwrap())).collect()
    }

    pub fn applied_data(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.applied
            .get(&id)
            .map(|v| v.iter().map(|(_, d)| d.clone()).collect())
            .unwrap_or_default()
    }

    pub fn count_sent(&self, pred: impl Fn(&Message) -> bool) -> usize {
        self.sent.iter().filter(|m| pred(m)).count()
    }

    pub fn entries_of(&self, id: NodeId) -> Vec<Entry> {
        let r = self.raft(id);
        r.storage()
            .entries(r.storage().first_index(), r.storage().last_index() + 1, u64::MAX)
            .unwrap()
    }
}

pub fn config(id: NodeId, tweak: fn(&mut Config)) -> Config {
    let mut cfg = Config::new(id, 0);
    cfg.election_timeout_ticks = 10;
    cfg.heartbeat_interval_ticks = 1;
    cfg.lease_margin_ticks = 3;
    tweak(&mut cfg);
    cfg
}

pub fn is_append(m: &Message) -> bool {
    matches!(m.body, MessageBody::Append { .. })
}
