//! One Raft group on one node: roles, elections, replication, commitment,
//! reads, membership and snapshots. Inputs arrive through `tick`, `step`,
//! `propose`, `read_index`, `propose_conf_change` and `transfer_leader`;
//! everything to do leaves through [`Ready`], and `advance` reports it done.
//!
//! The driver must persist a Ready's entries, snapshot and hard state
//! before it sends `persisted_messages` and before it calls `advance`, and
//! must not give the core other input between `ready` and `advance`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::confchange::{self, ConfChange};
use crate::config::Config;
use crate::error::Error;
use crate::message::{ConfState, Entry, EntryKind, HardState, Message, MessageBody, Snapshot, SnapshotMeta};
use crate::progress::{Progress, ProgressState};
use crate::quorum::{JointConfig, MajorityConfig, VoteResult};
use crate::raft_log::RaftLog;
use crate::storage::Storage;
use crate::{Index, NodeId, Term};

/// A node's role in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether it could win an election, term unchanged.
    PreCandidate,
    /// Campaigning in a new term.
    Candidate,
    /// Leads its term.
    Leader,
}

/// Role, known leader (0 for none) and term, reported when any changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleState {
    /// The role.
    pub role: Role,
    /// The leader this node knows of; 0 for none.
    pub leader: NodeId,
    /// The term.
    pub term: Term,
}

/// How a read was confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadVia {
    /// The leader lease was valid.
    Lease,
    /// A quorum acknowledged a heartbeat round sent after the read arrived.
    Quorum,
}

/// A confirmed read: once the state machine has applied `index`, a read
/// answered from it is linearizable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context.
    pub ctx: u64,
    /// Commit index when the read arrived.
    pub index: Index,
    /// How it was confirmed.
    pub via: ReadVia,
}

/// Where a proposal landed. If the entry applied at `index` has another
/// term, the proposal was lost to a leader change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposed {
    /// Term of the entry.
    pub term: Term,
    /// Its index.
    pub index: Index,
}

/// Work for the driver.
#[derive(Debug, Default)]
pub struct Ready {
    /// Role, leader or term changed.
    pub role: Option<RoleState>,
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Entries to persist (replacing any persisted entries from the first
    /// one's index on).
    pub entries: Vec<Entry>,
    /// A snapshot to persist and load into the state machine.
    pub snapshot: Option<Snapshot>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Messages to send now, in parallel with persisting.
    pub messages: Vec<Message>,
    /// Messages to send only after this Ready is persisted.
    pub persisted_messages: Vec<Message>,
    /// Confirmed reads.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.hard_state.is_none()
            && self.entries.is_empty()
            && self.snapshot.is_none()
            && self.committed_entries.is_empty()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.read_states.is_empty()
    }
}

/// What a Ready handed out, remembered until `advance`.
#[derive(Debug, Default)]
struct Handed {
    last_entry: Option<(Index, Term)>,
    snapshot_index: Option<Index>,
    last_committed: Option<Index>,
    committed_bytes: u64,
    conf_changes: Vec<Entry>,
}

/// A follower's view of one member, for status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    /// The member.
    pub id: NodeId,
    /// Highest index known to match.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    /// Sending state.
    pub state: ProgressState,
    /// Non-voting.
    pub is_learner: bool,
}

/// A snapshot of the group's state for status reports and checkers.
#[derive(Debug, Clone)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Role, leader and term.
    pub role: RoleState,
    /// Hard state (term, vote, commit).
    pub hard_state: HardState,
    /// Applied index.
    pub applied: Index,
    /// Last log index.
    pub last_index: Index,
    /// Membership.
    pub conf: ConfState,
    /// On a leader, each member's progress.
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug)]
struct IncomingSnapshot {
    meta: SnapshotMeta,
    total_len: u64,
    bytes: Vec<u8>,
}

/// A successful answer to an append (or a finished snapshot): the log
/// matches up to `index`.
fn append_ack(index: Index) -> MessageBody {
    MessageBody::AppendResponse {
        reject: false,
        index,
        hint_index: 0,
        hint_term: 0,
    }
}

/// Rounds remembered for the lease; older unacknowledged rounds are
/// forgotten and simply give no lease.
const ROUNDS_MAX: usize = 1024;

/// One Raft group on one node.
#[derive(Debug)]
pub struct Raft<S: Storage> {
    cfg: Config,
    id: NodeId,
    term: Term,
    vote: NodeId,
    lead: NodeId,
    role: Role,
    log: RaftLog<S>,

    conf: ConfState,
    voters: JointConfig,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,

    msgs: Vec<Message>,
    msgs_after_persist: Vec<Message>,
    read_states: Vec<ReadState>,

    /// Ticks since start.
    now: u64,
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    randomized_election_timeout: u64,
    /// Ticks since this node last heard from a leader of its term (or
    /// started). Below the election timeout it refuses votes, which is the
    /// promise leader leases rest on.
    since_leader_contact: u64,

    lead_transferee: NodeId,
    /// Set once this term's leader sent TimeoutNow: its lease no longer
    /// holds, because voters disregard leases for transfer campaigns.
    lease_revoked: bool,
    pending_conf_index: Index,
    uncommitted_bytes: u64,
    /// Newest entry timestamp seen, used for the term's no-op entry.
    last_timestamp_ms: u64,
    /// Proposals or commit advances wait for the next Ready to be sent
    /// together.
    pending_broadcast: bool,

    round: u64,
    rounds: VecDeque<(u64, u64)>,
    quorum_round: u64,
    lease_start: Option<u64>,
    reads_before_first_commit: VecDeque<u64>,
    reads_waiting: VecDeque<(u64, Index)>,
    reads_in_flight: VecDeque<(u64, u64, Index)>,

    incoming_snapshot: Option<IncomingSnapshot>,

    prev_role: RoleState,
    prev_hard_state: HardState,
    handed: Option<Handed>,
    rng: fastrand::Rng,
}

impl<S: Storage> Raft<S> {
    /// A node starting from what `storage` holds.
    pub fn new(cfg: Config, storage: S) -> Result<Raft<S>, Error> {
        cfg.validate()?;
        let (hard_state, conf) = storage.initial_state();
        let log = RaftLog::new(storage, hard_state.commit);
        let mut raft = Raft {
            id: cfg.id,
            term: hard_state.term,
            vote: hard_state.vote,
            lead: 0,
            role: Role::Follower,
            log,
            conf: ConfState::default(),
            voters: JointConfig::default(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            now: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_timeout_ticks,
            since_leader_contact: 0,
            lead_transferee: 0,
            lease_revoked: false,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            last_timestamp_ms: 0,
            pending_broadcast: false,
            round: 0,
            rounds: VecDeque::new(),
            quorum_round: 0,
            lease_start: None,
            reads_before_first_commit: VecDeque::new(),
            reads_waiting: VecDeque::new(),
            reads_in_flight: VecDeque::new(),
            incoming_snapshot: None,
            prev_role: RoleState {
                role: Role::Follower,
                leader: 0,
                term: hard_state.term,
            },
            prev_hard_state: hard_state,
            handed: None,
            rng: fastrand::Rng::with_seed(cfg.seed),
            cfg,
        };
        raft.switch_to_conf(conf);
        raft.become_follower(hard_state.term, 0);
        Ok(raft)
    }

    // ---- accessors ------------------------------------------------------

    /// This node.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader this node knows of; 0 for none.
    pub fn leader(&self) -> NodeId {
        self.lead
    }

    /// Commit index.
    pub fn committed(&self) -> Index {
        self.log.committed
    }

    /// Applied index.
    pub fn applied(&self) -> Index {
        self.log.applied
    }

    /// Last log index.
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }

    /// Term of the entry at `index`, if held.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }

    /// Current membership (as applied).
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// Ticks since start.
    pub fn now_ticks(&self) -> u64 {
        self.now
    }

    /// The storage, for the driver to persist into.
    pub fn storage(&self) -> &S {
        &self.log.storage
    }

    /// The storage, for the driver to persist into between `ready` and
    /// `advance`, or to compact after a snapshot.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }

    /// True if this node is leader and its lease is valid now.
    pub fn has_lease(&self) -> bool {
        self.role == Role::Leader && self.lease_valid()
    }

    /// While this node leads, its lease is valid and an entry of its term
    /// is committed: the tick (in [`Raft::now_ticks`]'s count) before which
    /// no other leader can be elected except through a transfer this node
    /// starts, which ends the lease at once. With the term's first entry
    /// applied, every write acknowledged by any leader is in the state
    /// machine, so a read of it is linearizable until then.
    pub fn lease_until_tick(&self) -> Option<u64> {
        if self.role != Role::Leader || !self.lease_valid() || !self.committed_in_current_term() {
            return None;
        }
        self.lease_start.map(|start| start + self.cfg.lease_ticks())
    }

    /// A status report.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role_state(),
            hard_state: self.hard_state(),
            applied: self.log.applied,
            last_index: self.log.last_index(),
            conf: self.conf.clone(),
            peers: if self.role == Role::Leader {
                self.progress
                    .iter()
                    .map(|(&id, pr)| PeerStatus {
                        id,
                        matched: pr.matched,
                        next: pr.next,
                        state: pr.state,
                        is_learner: pr.is_learner,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn role_state(&self) -> RoleState {
        RoleState {
            role: self.role,
            leader: self.lead,
            term: self.term,
        }
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    fn is_voter(&self, id: NodeId) -> bool {
        self.voters.incoming.voters().contains(&id) || self.voters.outgoing.voters().contains(&id)
    }

    /// Whether this node may campaign.
    fn promotable(&self) -> bool {
        self.is_voter(self.id)
    }

    fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters
            .incoming
            .voters()
            .union(self.voters.outgoing.voters())
            .copied()
            .collect()
    }

    fn in_lease_promise(&self) -> bool {
        self.cfg.check_quorum && self.since_leader_contact < self.cfg.election_timeout_ticks
    }

    // ---- sending --------------------------------------------------------

    fn send(&mut self, to: NodeId, body: MessageBody) {
        debug_assert_ne!(to, self.id, "message to self");
        self.msgs.push(Message {
            group: self.cfg.group,
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    fn send_after_persist(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.msgs_after_persist.push(Message {
            group: self.cfg.group,
            from: self.id,
            to,
            term,
            body,
        });
    }

    // ---- role transitions ------------------------------------------------

    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = 0;
        }
        self.lead = 0;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout =
            self.cfg.election_timeout_ticks + self.rng.u64(0..self.cfg.election_timeout_ticks);
        self.votes.clear();
        self.lead_transferee = 0;
        self.lease_revoked = false;
        self.pending_conf_index = 0;
        self.uncommitted_bytes = 0;
        self.pending_broadcast = false;
        self.round = 0;
        self.rounds.clear();
        self.quorum_round = 0;
        self.lease_start = None;
        self.reads_before_first_commit.clear();
        self.reads_waiting.clear();
        self.reads_in_flight.clear();
        let last = self.log.last_index();
        let stabled = self.log.stabled();
        let window = self.cfg.max_inflight_messages;
        let me = self.id;
        for (&id, pr) in self.progress.iter_mut() {
            let is_learner = pr.is_learner;
            *pr = Progress::new(last + 1, window, is_learner);
            if id == me {
                pr.matched = stabled;
            }
        }
    }

    fn become_follower(&mut self, term: Term, lead: NodeId) {
        self.reset(term);
        self.role = Role::Follower;
        self.lead = lead;
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "invalid transition leader -> pre-candidate");
        // Term and vote stay: a pre-vote changes nothing it could regret.
        self.votes.clear();
        self.lead = 0;
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "invalid transition leader -> candidate");
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert_ne!(self.role, Role::Follower, "invalid transition follower -> leader");
        let term = self.term;
        self.reset(term);
        self.lead = self.id;
        self.role = Role::Leader;
        let me = self.id;
        if let Some(pr) = self.progress.get_mut(&me) {
            pr.become_replicate();
        }
        // Conservatively treat every entry not yet applied as a possible
        // membership change, so no new one is proposed until they apply.
        self.pending_conf_index = self.log.last_index();
        // Thesis §6.4: the term's own entry lets the leader learn the
        // commit index before it serves reads.
        let noop = Entry {
            term,
            index: self.log.last_index() + 1,
            kind: EntryKind::Noop,
            timestamp_ms: self.last_timestamp_ms,
            data: Arc::from(&[][..]),
        };
        self.append_as_leader(vec![noop]);
    }

    // ---- ticks ------------------------------------------------------------

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.now += 1;
        self.since_leader_contact = self.since_leader_contact.saturating_add(1);
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    /// Starts an election now, as if the election timeout had passed
    /// (with a pre-vote first when configured).
    pub fn campaign(&mut self) {
        self.hup(false);
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_leader(&mut self) {
        self.since_leader_contact = 0;
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_recently_active() {
                let term = self.term;
                self.become_follower(term, 0);
                return;
            }
            // A transfer that did not finish within an election timeout
            // is abandoned.
            self.lead_transferee = 0;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Check-quorum: did a quorum hear from us since the last check?
    fn quorum_recently_active(&mut self) -> bool {
        let me = self.id;
        let result = self.voters.vote_result(|id| {
            if id == me {
                return Some(true);
            }
            Some(self.progress.get(&id).is_some_and(|p| p.recent_active))
        });
        for (&id, pr) in self.progress.iter_mut() {
            pr.recent_active = id == me;
        }
        result == VoteResult::Won
    }

    // ---- elections ---------------------------------------------------------

    fn has_unapplied_conf_change(&self) -> bool {
        if self.log.committed <= self.log.applied {
            return false;
        }
        match self.log.slice(self.log.applied + 1, self.log.committed + 1, u64::MAX) {
            Ok(entries) => entries.iter().any(|e| e.kind == EntryKind::ConfChange),
            Err(_) => true,
        }
    }

    fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        // A configuration committed but not yet applied could change who
        // votes; wait until it applies.
        if self.has_unapplied_conf_change() {
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
            if self.poll(self.id, true, true) == VoteResult::Won {
                self.start_campaign(false);
                return;
            }
            self.request_votes(true, false);
        } else {
            self.start_campaign(transfer);
        }
    }

    fn start_campaign(&mut self, transfer: bool) {
        self.become_candidate();
        if self.poll(self.id, false, true) == VoteResult::Won {
            self.become_leader();
            return;
        }
        self.request_votes(false, transfer);
    }

    fn request_votes(&mut self, pre: bool, transfer: bool) {
        let term = if pre { self.term + 1 } else { self.term };
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for id in self.all_voters() {
            if id == self.id {
                continue;
            }
            self.msgs.push(Message {
                group: self.cfg.group,
                from: self.id,
                to: id,
                term,
                body: MessageBody::Vote {
                    pre,
                    last_index,
                    last_term,
                    transfer,
                },
            });
        }
    }

    fn poll(&mut self, from: NodeId, pre: bool, granted: bool) -> VoteResult {
        let expected = if pre { Role::PreCandidate } else { Role::Candidate };
        if self.role != expected {
            return VoteResult::Pending;
        }
        self.votes.entry(from).or_insert(granted);
        let votes = &self.votes;
        self.voters.vote_result(|id| votes.get(&id).copied())
    }

    fn handle_vote(&mut self, m: &Message, pre: bool, transfer: bool, last_index: Index, last_term: Term) {
        // The lease promise holds at any term: a node can reach the
        // candidate's term without hearing from any leader of it (a
        // rejected pre-vote answer carries the rejecter's term), and must
        // still not help elect anyone while the leader it heard from within
        // the election timeout may hold a lease. A repeated request from
        // the node it already voted for is answered alike.
        let fresh = (self.vote == 0 && self.lead == 0) || (pre && m.term > self.term);
        let can_vote = self.vote == m.from || (fresh && (transfer || !self.in_lease_promise()));
        if can_vote && self.log.is_up_to_date(last_index, last_term) {
            // Thesis §9.6: a pre-vote grant answers in the requested term
            // so the pre-candidate can count it.
            let body = MessageBody::VoteResponse { pre, granted: true };
            if pre {
                self.msgs.push(Message {
                    group: self.cfg.group,
                    from: self.id,
                    to: m.from,
                    term: m.term,
                    body,
                });
            } else {
                self.election_elapsed = 0;
                self.vote = m.from;
                // The vote must be durable before it is announced.
                self.send_after_persist(m.from, m.term, body);
            }
        } else {
            let term = self.term;
            self.msgs.push(Message {
                group: self.cfg.group,
                from: self.id,
                to: m.from,
                term,
                body: MessageBody::VoteResponse { pre, granted: false },
            });
        }
    }

    // ---- step ------------------------------------------------------------

    /// Handles a message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        if m.group != self.cfg.group || m.to != self.id {
            return Err(Error::Misdelivered {
                group: m.group,
                to: m.to,
                expected_group: self.cfg.group,
                expected_to: self.id,
            });
        }
        if m.term > self.term {
            if let MessageBody::Vote { transfer, .. } = m.body {
                // Thesis §6.2 / §4.2.3: a node that heard from a leader
                // within the election timeout ignores campaigns, unless the
                // leader itself handed over.
                if !transfer && self.in_lease_promise() {
                    return Ok(());
                }
            }
            match m.body {
                MessageBody::Vote { pre: true, .. } => {}
                MessageBody::VoteResponse {
                    pre: true,
                    granted: true,
                } => {}
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. } => {
                    self.become_follower(m.term, m.from)
                }
                _ => self.become_follower(m.term, 0),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // Tell a stale leader about the newer term so it steps
                    // down instead of retrying forever.
                    self.send(m.from, append_ack(0));
                }
                MessageBody::Vote { pre: true, .. } => {
                    self.send(
                        m.from,
                        MessageBody::VoteResponse {
                            pre: true,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return Ok(());
        }

        if let MessageBody::Vote {
            pre,
            last_index,
            last_term,
            transfer,
        } = m.body
        {
            self.handle_vote(&m, pre, transfer, last_index, last_term);
            return Ok(());
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
        Ok(())
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. } => {
                self.heard_from_leader(m.from);
                self.handle_leader_message(m);
            }
            MessageBody::TimeoutNow => {
                // Thesis §3.10: campaign at once, without a pre-vote.
                self.hup(true);
            }
            _ => {}
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. } => {
                let term = self.term;
                self.become_follower(term, m.from);
                self.heard_from_leader(m.from);
                self.handle_leader_message(m);
            }
            MessageBody::VoteResponse { pre, granted } => match self.poll(m.from, pre, granted) {
                VoteResult::Won => {
                    if self.role == Role::PreCandidate {
                        self.start_campaign(false);
                    } else {
                        self.become_leader();
                    }
                }
                VoteResult::Lost => {
                    let term = self.term;
                    self.become_follower(term, 0);
                }
                VoteResult::Pending => {}
            },
            _ => {}
        }
    }

    fn heard_from_leader(&mut self, from: NodeId) {
        self.election_elapsed = 0;
        self.since_leader_contact = 0;
        self.lead = from;
    }

    fn handle_leader_message(&mut self, m: Message) {
        let from = m.from;
        match m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                commit,
                entries,
            } => self.handle_append(from, prev_index, prev_term, commit, &entries),
            MessageBody::Heartbeat { commit, context } => {
                self.log.commit_to(commit.min(self.log.last_index()));
                self.send(from, MessageBody::HeartbeatResponse { context });
            }
            MessageBody::Snapshot {
                meta,
                offset,
                total_len,
                done,
                chunk,
            } => self.handle_snapshot_chunk(from, meta, offset, total_len, done, &chunk),
            _ => unreachable!("not a leader message"),
        }
    }

    fn handle_append(&mut self, from: NodeId, prev_index: Index, prev_term: Term, commit: Index, entries: &[Entry]) {
        let term = self.term;
        if prev_index < self.log.committed {
            let committed = self.log.committed;
            self.send_after_persist(from, term, append_ack(committed));
            return;
        }
        if prev_index == 0 && !entries.is_empty() && self.awaits_first_snapshot() {
            // A node started to join knows no configuration: it must begin
            // from a snapshot, which carries one, never from index 1, whose
            // configuration it cannot know. No answer: the leader probes
            // again after a silent heartbeat interval, by then perhaps
            // with a snapshot to send.
            return;
        }
        if let Some(ts) = entries.iter().map(|e| e.timestamp_ms).max() {
            self.last_timestamp_ms = self.last_timestamp_ms.max(ts);
        }
        let body = match self.log.maybe_append(prev_index, prev_term, commit, entries) {
            Some(last) => append_ack(last),
            None => {
                let (hint_index, hint_term) = self.log.find_conflict_by_term(prev_index, prev_term);
                MessageBody::AppendResponse {
                    reject: true,
                    index: prev_index,
                    hint_index,
                    hint_term,
                }
            }
        };
        self.send_after_persist(from, term, body);
    }

    fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        total_len: u64,
        done: bool,
        chunk: &[u8],
    ) {
        let term = self.term;
        let index = meta.index;
        if index <= self.log.committed {
            self.incoming_snapshot = None;
            let committed = self.log.committed;
            self.send_after_persist(from, term, append_ack(committed));
            return;
        }
        let ack = |next_offset: u64, reject: bool| MessageBody::SnapshotResponse {
            snapshot_index: index,
            next_offset,
            reject,
        };
        if offset == 0 {
            if total_len > self.cfg.snapshot_max_bytes {
                self.send(from, ack(0, true));
                return;
            }
            self.incoming_snapshot = Some(IncomingSnapshot {
                meta: meta.clone(),
                total_len,
                bytes: Vec::with_capacity(total_len.min(self.cfg.snapshot_chunk_bytes) as usize),
            });
        }
        let Some(incoming) = self.incoming_snapshot.as_mut() else {
            self.send(from, ack(0, false));
            return;
        };
        if incoming.meta.index != index || incoming.total_len != total_len {
            self.incoming_snapshot = None;
            self.send(from, ack(0, false));
            return;
        }
        if incoming.bytes.len() as u64 != offset {
            let expected = incoming.bytes.len() as u64;
            self.send(from, ack(expected, false));
            return;
        }
        if offset + chunk.len() as u64 > total_len || (done && offset + chunk.len() as u64 != total_len) {
            self.incoming_snapshot = None;
            self.send(from, ack(0, true));
            return;
        }
        incoming.bytes.extend_from_slice(chunk);
        if !done {
            let next = incoming.bytes.len() as u64;
            self.send(from, ack(next, false));
            return;
        }
        let incoming = self.incoming_snapshot.take().expect("checked above");
        let snapshot = Snapshot {
            meta: incoming.meta,
            data: Arc::from(incoming.bytes),
        };
        let index = if self.restore(snapshot) {
            self.log.last_index()
        } else {
            self.log.committed
        };
        self.send_after_persist(from, term, append_ack(index));
    }

    /// Raft §7: installs a snapshot unless the log already covers it.
    fn restore(&mut self, snapshot: Snapshot) -> bool {
        let meta = &snapshot.meta;
        if meta.index <= self.log.committed {
            return false;
        }
        if self.log.match_term(meta.index, meta.term) {
            // The log holds the snapshot's last entry, so everything up to
            // it is committed; keep the log rather than replace it.
            self.log.commit_to(meta.index);
            return false;
        }
        let conf = meta.conf.clone();
        self.log.restore(snapshot);
        self.switch_to_conf(conf);
        true
    }

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        if !self.progress.contains_key(&from) {
            return;
        }
        match m.body {
            MessageBody::AppendResponse {
                reject,
                index,
                hint_index,
                hint_term,
            } => self.handle_append_response(from, reject, index, hint_index, hint_term),
            MessageBody::HeartbeatResponse { context } => self.handle_heartbeat_response(from, context),
            MessageBody::SnapshotResponse {
                snapshot_index,
                next_offset,
                reject,
            } => self.handle_snapshot_response(from, snapshot_index, next_offset, reject),
            _ => {}
        }
    }

    fn handle_append_response(&mut self, from: NodeId, reject: bool, index: Index, hint_index: Index, hint_term: Term) {
        let last = self.log.last_index();
        let hint = if reject && hint_term > 0 {
            self.log.find_conflict_by_term(hint_index, hint_term).0
        } else {
            hint_index
        };
        let pr = self.progress.get_mut(&from).expect("checked by the caller");
        pr.recent_active = true;
        if reject {
            if pr.maybe_decrease_to(index, hint) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from, false);
            }
            return;
        }
        let was_paused = pr.is_paused();
        if !pr.maybe_update(index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched >= pr.pending_snapshot => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.inflights.free_to(index),
        }
        let matched = pr.matched;
        if self.maybe_commit() {
            self.pending_broadcast = true;
        } else if was_paused {
            self.send_append(from, false);
        }
        // Fill the window with what is ready to go.
        while self.send_append(from, false) {}
        if from == self.lead_transferee && matched == last {
            self.send_timeout_now(from);
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, context: u64) {
        let round = self.round;
        let last = self.log.last_index();
        let pr = self.progress.get_mut(&from).expect("checked by the caller");
        pr.recent_active = true;
        pr.probe_sent = false;
        if context <= round && context > pr.acked_round {
            pr.acked_round = context;
        }
        if pr.state == ProgressState::Replicate && pr.matched < last && pr.matched == pr.matched_at_previous_round {
            // No acknowledgement for a whole heartbeat interval while
            // entries are outstanding: appends may have been lost. Probe
            // again from the last known match.
            pr.become_probe();
        }
        if pr.state == ProgressState::Snapshot {
            let offset = pr.snapshot_offset;
            self.send_snapshot_chunk(from, offset);
        } else if pr.matched < last {
            // A probe goes out even with nothing new to carry: a member
            // whose match is unknown (a new learner, or one whose probe
            // was lost) is found again only by probing.
            let probing = pr.state == ProgressState::Probe;
            self.send_append(from, probing);
        }
        self.on_round_acknowledged();
    }

    fn handle_snapshot_response(&mut self, from: NodeId, snapshot_index: Index, next_offset: u64, reject: bool) {
        let pr = self.progress.get_mut(&from).expect("checked by the caller");
        pr.recent_active = true;
        if pr.state != ProgressState::Snapshot || pr.pending_snapshot != snapshot_index {
            return;
        }
        if reject {
            // Not installed: probe from what the follower is known to hold.
            pr.pending_snapshot = 0;
            pr.become_probe();
            return;
        }
        // One chunk is in flight at a time. An answer that asks for the
        // chunk already out is a duplicate: heartbeat answers resend it if it
        // was lost, so resending here would multiply chunks in flight.
        if next_offset == pr.snapshot_offset {
            return;
        }
        pr.snapshot_offset = next_offset;
        self.send_snapshot_chunk(from, next_offset);
    }

    // ---- replication ---------------------------------------------------------

    fn append_as_leader(&mut self, mut entries: Vec<Entry>) -> Index {
        let mut index = self.log.last_index();
        for e in &mut entries {
            index += 1;
            e.term = self.term;
            e.index = index;
            self.uncommitted_bytes += e.size_bytes();
            self.last_timestamp_ms = self.last_timestamp_ms.max(e.timestamp_ms);
        }
        let last = self.log.append(&entries);
        self.pending_broadcast = true;
        // A lone voter commits as soon as its own write is persisted; that
        // is accounted for in `advance`.
        last
    }

    /// Sends the follower what it is missing; false if nothing was sent.
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_index = next - 1;
        let prev_term = self.log.term(prev_index);
        let entries = self.log.entries_from(next, self.cfg.max_message_bytes).map(|mut e| {
            e.truncate(self.cfg.max_message_entries);
            e
        });
        let (Some(prev_term), Ok(entries)) = (prev_term, entries) else {
            return self.send_snapshot(to);
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let last = entries.last().map(|e| e.index);
        let commit = self.log.committed;
        self.progress.get_mut(&to).expect("checked above").sent(last);
        self.send(
            to,
            MessageBody::Append {
                prev_index,
                prev_term,
                commit,
                entries,
            },
        );
        true
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        // Only a follower that answers recently gets a snapshot: sending one
        // into silence wastes the link.
        if !pr.recent_active {
            return false;
        }
        let Ok(snapshot) = self.log.snapshot() else {
            return false;
        };
        self.progress
            .get_mut(&to)
            .expect("checked above")
            .become_snapshot(snapshot.meta.index);
        self.send_snapshot_chunk(to, 0);
        true
    }

    fn send_snapshot_chunk(&mut self, to: NodeId, offset: u64) {
        let Ok(snapshot) = self.log.snapshot() else {
            return;
        };
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        let mut offset = offset;
        if snapshot.meta.index != pr.pending_snapshot {
            // A newer snapshot replaced the one being sent: start over.
            pr.become_snapshot(snapshot.meta.index);
            offset = 0;
        }
        let total = snapshot.data.len() as u64;
        let start = offset.min(total);
        let end = (start + self.cfg.snapshot_chunk_bytes).min(total);
        let chunk: Arc<[u8]> = Arc::from(&snapshot.data[start as usize..end as usize]);
        self.send(
            to,
            MessageBody::Snapshot {
                meta: snapshot.meta,
                offset: start,
                total_len: total,
                done: end == total,
                chunk,
            },
        );
    }

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().filter(|&id| id != self.id).collect();
        for id in peers {
            self.send_append(id, true);
        }
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        // Voters now disregard their lease promise for the transferee, so
        // this leader's lease cannot be trusted for the rest of the term.
        self.lease_revoked = true;
        self.send(to, MessageBody::TimeoutNow);
    }

    /// Raft §5.3, §5.4.2: advances the commit index to what a quorum has
    /// persisted, if that entry is of the current term.
    fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let index = self.voters.committed_index(|id| progress.get(&id).map(|p| p.matched));
        if index == Index::MAX {
            return false;
        }
        let first_in_term = !self.committed_in_current_term();
        if !self.log.maybe_commit(index, self.term) {
            return false;
        }
        if first_in_term {
            self.release_reads_after_first_commit();
        }
        true
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    // ---- reads --------------------------------------------------------------

    fn lease_valid(&self) -> bool {
        self.cfg.lease_reads
            && !self.lease_revoked
            && self.lead_transferee == 0
            && self
                .lease_start
                .is_some_and(|start| self.now < start + self.cfg.lease_ticks())
    }

    fn pending_reads(&self) -> usize {
        self.reads_before_first_commit.len() + self.reads_waiting.len() + self.reads_in_flight.len()
    }

    /// Asks for a linearizable read point (thesis §6.4). The answer comes
    /// back as a [`ReadState`] with `ctx`, immediately under a valid lease,
    /// or after the next heartbeat round a quorum acknowledges. Reads that
    /// arrive while a round is out share the following round.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: (self.lead != 0).then_some(self.lead),
            });
        }
        if self.pending_reads() >= self.cfg.max_pending_reads {
            return Err(Error::Busy("too many pending reads"));
        }
        if !self.committed_in_current_term() {
            self.reads_before_first_commit.push_back(ctx);
            return Ok(());
        }
        self.admit_read(ctx);
        if !self.reads_waiting.is_empty() && self.reads_in_flight.is_empty() {
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    fn admit_read(&mut self, ctx: u64) {
        let index = self.log.committed;
        if self.lease_valid() {
            self.read_states.push(ReadState {
                ctx,
                index,
                via: ReadVia::Lease,
            });
        } else {
            self.reads_waiting.push_back((ctx, index));
        }
    }

    fn release_reads_after_first_commit(&mut self) {
        while let Some(ctx) = self.reads_before_first_commit.pop_front() {
            self.admit_read(ctx);
        }
        if !self.reads_waiting.is_empty() && self.reads_in_flight.is_empty() {
            self.broadcast_heartbeat();
        }
    }

    fn broadcast_heartbeat(&mut self) {
        self.round += 1;
        let round = self.round;
        if self.rounds.len() >= ROUNDS_MAX {
            self.rounds.pop_front();
        }
        self.rounds.push_back((round, self.now));
        while let Some((ctx, index)) = self.reads_waiting.pop_front() {
            self.reads_in_flight.push_back((round, ctx, index));
        }
        let committed = self.log.committed;
        for pr in self.progress.values_mut() {
            pr.matched_at_previous_round = pr.matched_at_round;
            pr.matched_at_round = pr.matched;
        }
        let peers: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .filter(|(&id, _)| id != self.id)
            .map(|(&id, pr)| (id, pr.matched))
            .collect();
        for (id, matched) in peers {
            self.send(
                id,
                MessageBody::Heartbeat {
                    commit: matched.min(committed),
                    context: round,
                },
            );
        }
        self.on_round_acknowledged();
    }

    fn on_round_acknowledged(&mut self) {
        let me = self.id;
        let round = self.round;
        let progress = &self.progress;
        let quorum_round = self.voters.committed_index(|id| {
            if id == me {
                Some(round)
            } else {
                progress.get(&id).map(|p| p.acked_round)
            }
        });
        if quorum_round == Index::MAX || quorum_round <= self.quorum_round {
            return;
        }
        self.quorum_round = quorum_round;
        while self.rounds.front().is_some_and(|&(r, _)| r < quorum_round) {
            self.rounds.pop_front();
        }
        if let Some(&(r, sent)) = self.rounds.front() {
            if r == quorum_round {
                self.lease_start = Some(sent);
            }
        }
        while self.reads_in_flight.front().is_some_and(|&(r, _, _)| r <= quorum_round) {
            let (_, ctx, index) = self.reads_in_flight.pop_front().expect("checked");
            self.read_states.push(ReadState {
                ctx,
                index,
                via: ReadVia::Quorum,
            });
        }
        if !self.reads_waiting.is_empty() && self.reads_in_flight.is_empty() {
            self.broadcast_heartbeat();
        }
    }

    // ---- proposals ------------------------------------------------------------

    fn check_can_propose(&self) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: (self.lead != 0).then_some(self.lead),
            });
        }
        if self.lead_transferee != 0 {
            return Err(Error::TransferInProgress);
        }
        Ok(())
    }

    /// Proposes an entry; `timestamp_ms` is the leader's wall clock.
    pub fn propose(&mut self, data: Arc<[u8]>, timestamp_ms: u64) -> Result<Proposed, Error> {
        self.check_can_propose()?;
        let size = crate::message::ENTRY_OVERHEAD_BYTES + data.len() as u64;
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes {
            return Err(Error::Busy("uncommitted entries exceed max_uncommitted_bytes"));
        }
        let index = self.append_as_leader(vec![Entry {
            term: 0,
            index: 0,
            kind: EntryKind::Normal,
            timestamp_ms,
            data,
        }]);
        Ok(Proposed { term: self.term, index })
    }

    /// Proposes a membership change (see [`crate::confchange`]). Voter
    /// changes enter a joint configuration that the leader leaves by
    /// itself once the change is applied.
    pub fn propose_conf_change(&mut self, change: ConfChange, timestamp_ms: u64) -> Result<Proposed, Error> {
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applied {
            return Err(Error::ConfChangePending);
        }
        confchange::apply(&self.conf, &change)?;
        let index = self.append_as_leader(vec![Entry {
            term: 0,
            index: 0,
            kind: EntryKind::ConfChange,
            timestamp_ms,
            data: Arc::from(change.encode()),
        }]);
        self.pending_conf_index = index;
        Ok(Proposed { term: self.term, index })
    }

    /// Hands leadership to `to` (thesis §3.10): proposals stop, the
    /// transferee is brought up to date and told to campaign at once.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: (self.lead != 0).then_some(self.lead),
            });
        }
        if to == self.id || self.lead_transferee == to {
            return Ok(());
        }
        if !self.is_voter(to) || !self.progress.contains_key(&to) {
            return Err(Error::NotAVoter(to));
        }
        self.lead_transferee = to;
        self.election_elapsed = 0;
        if self.progress[&to].matched == self.log.last_index() {
            self.send_timeout_now(to);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    // ---- membership ------------------------------------------------------------

    fn switch_to_conf(&mut self, conf: ConfState) {
        self.voters = JointConfig {
            incoming: MajorityConfig::new(conf.voters.iter().copied()),
            outgoing: MajorityConfig::new(conf.voters_outgoing.iter().copied()),
        };
        let learners: BTreeSet<NodeId> = conf.learners.iter().chain(&conf.learners_next).copied().collect();
        let members: BTreeSet<NodeId> = self.all_voters().into_iter().chain(learners.iter().copied()).collect();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        let window = self.cfg.max_inflight_messages;
        for &id in &members {
            let is_learner =
                !self.voters.incoming.voters().contains(&id) && !self.voters.outgoing.voters().contains(&id);
            let pr = self
                .progress
                .entry(id)
                .or_insert_with(|| Progress::new(next, window, is_learner));
            pr.is_learner = is_learner;
        }
        if let Some(me) = self.progress.get_mut(&self.id) {
            if self.role == Role::Leader {
                me.matched = me.matched.max(self.log.stabled().min(self.log.last_index()));
            }
        }
        self.conf = conf;
        if self.role != Role::Leader {
            return;
        }
        if !self.progress.contains_key(&self.id) || !self.promotable() {
            // Removed (or demoted) leaders step down once the change that
            // removed them applies; the remaining voters elect a successor.
            let term = self.term;
            self.become_follower(term, 0);
            return;
        }
        if self.lead_transferee != 0 && !self.is_voter(self.lead_transferee) {
            self.lead_transferee = 0;
        }
        // A new configuration may commit more (or need telling): send either
        // way.
        self.maybe_commit();
        self.pending_broadcast = true;
    }

    /// True for a node with an empty log and no configuration: one started
    /// to join an existing group, which learns the group's configuration
    /// from its first snapshot.
    pub fn awaits_first_snapshot(&self) -> bool {
        self.log.last_index() == 0
            && self.conf.voters.is_empty()
            && self.conf.learners.is_empty()
            && self.conf.voters_outgoing.is_empty()
    }

    fn apply_conf_entry(&mut self, entry: &Entry) {
        let change = ConfChange::decode(&entry.data)
            .unwrap_or_else(|e| panic!("committed membership entry {} cannot be decoded: {e}", entry.index));
        // Every node applies the same sequence to the same starting
        // configuration, so a change that does not apply is skipped by all.
        if let Ok(next) = confchange::apply(&self.conf, &change) {
            self.switch_to_conf(next);
        }
    }

    fn maybe_leave_joint(&mut self) {
        if self.role == Role::Leader
            && self.conf.is_joint()
            && self.log.applied >= self.pending_conf_index
            && self.lead_transferee == 0
        {
            let timestamp = self.last_timestamp_ms;
            let index = self.append_as_leader(vec![Entry {
                term: 0,
                index: 0,
                kind: EntryKind::ConfChange,
                timestamp_ms: timestamp,
                data: Arc::from(ConfChange::default().encode()),
            }]);
            self.pending_conf_index = index;
        }
    }

    // ---- Ready ---------------------------------------------------------------------

    /// True if `ready` would return work.
    pub fn has_ready(&self) -> bool {
        self.role_state() != self.prev_role
            || self.hard_state() != self.prev_hard_state
            || !self.log.unstable_entries().is_empty()
            || self.log.unstable_snapshot().is_some()
            || self.log.has_next_committed()
            || !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || !self.read_states.is_empty()
            || (self.pending_broadcast && self.role == Role::Leader)
    }

    /// Collects the work to do. Call [`Raft::advance`] once it is done.
    pub fn ready(&mut self) -> Ready {
        assert!(self.handed.is_none(), "ready called twice without advance");
        if self.pending_broadcast && self.role == Role::Leader {
            self.pending_broadcast = false;
            self.broadcast_append();
        }
        let role = self.role_state();
        let hard_state = self.hard_state();
        let entries = self.log.unstable_entries().to_vec();
        let snapshot = self.log.unstable_snapshot().cloned();
        let committed_entries = self.log.next_committed(self.cfg.max_committed_bytes_per_ready);
        let handed = Handed {
            last_entry: entries.last().map(|e| (e.index, e.term)),
            snapshot_index: snapshot.as_ref().map(|s| s.meta.index),
            last_committed: committed_entries.last().map(|e| e.index),
            committed_bytes: committed_entries.iter().map(Entry::size_bytes).sum(),
            conf_changes: committed_entries
                .iter()
                .filter(|e| e.kind == EntryKind::ConfChange)
                .cloned()
                .collect(),
        };
        self.handed = Some(handed);
        let ready = Ready {
            role: (role != self.prev_role).then_some(role),
            hard_state: (hard_state != self.prev_hard_state).then_some(hard_state),
            entries,
            snapshot,
            committed_entries,
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.msgs_after_persist),
            read_states: std::mem::take(&mut self.read_states),
        };
        self.prev_role = role;
        self.prev_hard_state = hard_state;
        ready
    }

    /// Reports the last Ready done: entries, snapshot and hard state
    /// persisted, persisted messages sent, committed entries applied.
    pub fn advance(&mut self) {
        let handed = self.handed.take().expect("advance without ready");
        if let Some(index) = handed.snapshot_index {
            self.log.stable_snapshot_to(index);
            self.log.applied_to(index);
        }
        if let Some((index, term)) = handed.last_entry {
            self.log.stable_to(index, term);
        }
        if self.role == Role::Leader {
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(handed.committed_bytes);
        }
        // Membership entries take effect in log order as they apply.
        for entry in &handed.conf_changes {
            self.log.applied_to(entry.index - 1);
            self.apply_conf_entry(entry);
        }
        if let Some(index) = handed.last_committed {
            self.log.applied_to(index);
        }
        if self.role == Role::Leader {
            // The leader counts its own entries only once persisted.
            let stabled = self.log.stabled();
            let me = self.id;
            if let Some(pr) = self.progress.get_mut(&me) {
                pr.maybe_update(stabled);
            }
            if self.maybe_commit() {
                self.pending_broadcast = true;
            }
            self.maybe_leave_joint();
        }
    }
}
