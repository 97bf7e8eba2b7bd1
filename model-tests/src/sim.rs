//! Deterministic simulation of whole LoomCache consensus clusters.
//!
//! One seed drives one thread: a simulated network that drops, duplicates,
//! delays and reorders messages and suffers partitions; nodes that crash
//! (losing what they had not persisted, possibly with their last write
//! torn) and restart; clocks that tick at different rates within a bound;
//! membership changes and leadership transfers mid-run; and clients doing
//! put, get and cas on a few keys against a key/value state machine.
//!
//! Every step is followed by the safety checks (one leader per term, log
//! matching, leader completeness, state-machine safety, monotonic commit
//! index, no stale read). A safety phase with faults is followed by a
//! liveness phase with every fault healed, in which every request must
//! complete. At the end the client history must be linearizable.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use loomcache_consensus::{
    ConfChange, ConfChangeItem, ConfState, Config, EntryKind, Error as RaftError, Index, MemStorage, Message, NodeId,
    Raft, ReadVia, Ready, Role, Storage, Term,
};

use crate::wgl::{self, Event as HistoryEvent, Op, Outcome};

/// Simulated time units per base tick.
const TICK: u64 = 1_000;

/// Search budget of the linearizability check, per key. Unknown outcomes
/// (timeouts across crashes and partitions) make the search branch, so the
/// budget is generous; a history that exhausts it fails the run.
const WGL_STEPS_PER_KEY: u64 = 100_000_000;

/// A client gives up on a request after this long.
const CLIENT_TIMEOUT: u64 = 25 * TICK;

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Probability, in parts per million, that a message is dropped.
    pub drop_ppm: u32,
    /// Probability, in parts per million, that a message is duplicated.
    pub duplicate_ppm: u32,
    /// Longest message delay, in time units (a tick is 1000).
    pub delay_max: u64,
    /// Nodes crash and restart.
    pub crashes: bool,
    /// Partitions come and heal.
    pub partitions: bool,
    /// Largest deviation of a node's tick rate from the base rate, in parts
    /// per million.
    pub clock_skew_ppm: u32,
    /// Voters are removed, added as learners and promoted.
    pub membership: bool,
    /// Leaders hand over to other voters.
    pub transfers: bool,
    /// Nodes snapshot and compact their logs.
    pub snapshots: bool,
}

impl Faults {
    /// Every fault enabled.
    pub fn all() -> Faults {
        Faults {
            drop_ppm: 20_000,
            duplicate_ppm: 10_000,
            delay_max: 3 * TICK,
            crashes: true,
            partitions: true,
            clock_skew_ppm: 100_000,
            membership: true,
            transfers: true,
            snapshots: true,
        }
    }
}

/// One simulation run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Nodes in the cluster (all voters at the start).
    pub nodes: usize,
    /// The seed everything derives from.
    pub seed: u64,
    /// Length of the faulty phase, in base ticks.
    pub safety_ticks: u64,
    /// Length of the healed phase, in base ticks.
    pub liveness_ticks: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the clients use.
    pub keys: u64,
    /// Faults injected during the safety phase.
    pub faults: Faults,
}

impl SimConfig {
    /// The configuration CI runs for `nodes` nodes.
    pub fn standard(nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            nodes,
            seed,
            safety_ticks: 1000,
            liveness_ticks: 200,
            clients: 4,
            keys: 3,
            faults: Faults::all(),
        }
    }

    /// The command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run -p loomcache-model-tests --release --bin loomcache-sim -- --nodes {} --seed {} \
             --safety-ticks {} --liveness-ticks {}",
            self.nodes, self.seed, self.safety_ticks, self.liveness_ticks
        )
    }
}

/// A failed run: what broke, and how to replay it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What broke.
    pub what: String,
    /// Simulated time of the failure.
    pub at: u64,
    /// The command that replays the run.
    pub replay: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at t={}: {}\nreplay: {}", self.at, self.what, self.replay)
    }
}

/// What a passing run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Events processed.
    pub events: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Client operations completed with a known outcome.
    pub ops_known: u64,
    /// Client operations whose outcome stayed unknown.
    pub ops_unknown: u64,
    /// Reads answered under a lease.
    pub lease_reads: u64,
    /// Reads answered after a ReadIndex round.
    pub quorum_reads: u64,
    /// Elections won.
    pub leaders_elected: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Membership changes committed.
    pub conf_changes: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Leadership transfers requested.
    pub transfers: u64,
}

impl Report {
    /// Adds another run's counts to these.
    pub fn add(&mut self, other: &Report) {
        self.events += other.events;
        self.delivered += other.delivered;
        self.ops_known += other.ops_known;
        self.ops_unknown += other.ops_unknown;
        self.lease_reads += other.lease_reads;
        self.quorum_reads += other.quorum_reads;
        self.leaders_elected += other.leaders_elected;
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.conf_changes += other.conf_changes;
        self.snapshots_installed += other.snapshots_installed;
        self.transfers += other.transfers;
    }
}

// ---- the key/value state machine -----------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KvOp {
    Put { key: u64, value: u64 },
    Cas { key: u64, expected: Option<u64>, new: u64 },
}

const KV_OP_BYTES: usize = 8 + 8 + 1 + 8 + 8 + 1 + 8;

fn encode_op(client: u64, request: u64, op: KvOp) -> Vec<u8> {
    let mut out = Vec::with_capacity(KV_OP_BYTES);
    out.extend_from_slice(&client.to_le_bytes());
    out.extend_from_slice(&request.to_le_bytes());
    let (kind, key, a, has_b, b) = match op {
        KvOp::Put { key, value } => (0u8, key, value, 0u8, 0u64),
        KvOp::Cas { key, expected, new } => (1, key, new, u8::from(expected.is_some()), expected.unwrap_or(0)),
    };
    out.push(kind);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&a.to_le_bytes());
    out.push(has_b);
    out.extend_from_slice(&b.to_le_bytes());
    out
}

fn decode_op(bytes: &[u8]) -> KvOp {
    assert_eq!(bytes.len(), KV_OP_BYTES, "entry is not a key/value operation");
    let u = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let key = u(17);
    let a = u(25);
    match bytes[16] {
        0 => KvOp::Put { key, value: a },
        _ => KvOp::Cas {
            key,
            expected: (bytes[33] == 1).then(|| u(34)),
            new: a,
        },
    }
}

#[derive(Debug, Clone, Default)]
struct Kv {
    map: BTreeMap<u64, u64>,
}

impl Kv {
    fn apply(&mut self, op: KvOp) -> Outcome {
        match op {
            KvOp::Put { key, value } => {
                self.map.insert(key, value);
                Outcome::Written
            }
            KvOp::Cas { key, expected, new } => {
                if self.map.get(&key).copied() == expected {
                    self.map.insert(key, new);
                    Outcome::Swapped(true)
                } else {
                    Outcome::Swapped(false)
                }
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.map.len() * 16);
        for (k, v) in &self.map {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Kv {
        assert_eq!(bytes.len() % 16, 0, "snapshot is not a key/value map");
        let map = bytes
            .chunks_exact(16)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                    u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
                )
            })
            .collect();
        Kv { map }
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    // FNV-1a: enough to tell entries apart in a checker.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

// ---- events -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientOp {
    Put(u64, u64),
    Get(u64),
    Cas(u64, Option<u64>, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Done(Outcome),
    /// Not executed; try this node (or another).
    Redirect(Option<NodeId>),
    /// Certainly not executed.
    Failed,
}

#[derive(Debug, Clone)]
enum Input {
    Tick,
    Msg(Message),
    Request { client: usize, request: u64, op: ClientOp },
    Propose(ConfChange),
    Transfer(NodeId),
}

#[derive(Debug)]
enum EventKind {
    Input(usize, Input),
    PersistDone(usize, u64),
    ClientStart(usize),
    ClientReply { client: usize, request: u64, reply: Reply },
    ClientTimeout { client: usize, request: u64 },
    Fault,
    Heal,
    Restart(usize),
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest event goes
        // first; ties go in scheduling order.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

// ---- nodes ------------------------------------------------------------------

#[derive(Debug)]
struct PendingWrite {
    term: Term,
    client: usize,
    request: u64,
}

#[derive(Debug)]
struct PendingRead {
    client: usize,
    request: u64,
    key: u64,
    /// Highest commit index any node had reached when the read arrived; a
    /// read confirmed below it would be stale.
    commit_floor: Index,
}

#[derive(Debug)]
struct Node {
    id: NodeId,
    incarnation: u64,
    raft: Option<Raft<MemStorage>>,
    /// What survives while the node is down.
    durable: Option<MemStorage>,
    kv: Kv,
    /// A Ready whose persistence is in progress.
    busy: Option<Ready>,
    inbox: VecDeque<Input>,
    tick_period: u64,
    writes: BTreeMap<Index, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
    confirmed: Vec<(Index, u64)>,
    applied_since_snapshot: u64,
    commit_seen: Index,
}

#[derive(Debug)]
struct Outstanding {
    request: u64,
    op: ClientOp,
    invoke: u64,
}

#[derive(Debug)]
struct Client {
    leader_guess: usize,
    outstanding: Option<Outstanding>,
    next_request: u64,
    next_value: u64,
    done_in_liveness: u64,
}

/// A running simulation.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    rng: fastrand::Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    history: Vec<HistoryEvent>,
    blocked: HashSet<(NodeId, NodeId)>,
    partitioned: bool,
    faults_on: bool,
    liveness_from: u64,
    report: Report,

    // Checker state.
    leaders: HashMap<Term, NodeId>,
    /// Entry identity by (index, term): its fingerprint and the term before
    /// it. Log matching holds if no (index, term) ever names two entries.
    entries_seen: HashMap<(Index, Term), (u64, Term)>,
    /// Committed entries' terms, by index - 1 (0 = not known yet).
    committed_terms: Vec<Term>,
    /// Applied entries by index: term and fingerprint.
    applied: HashMap<Index, (Term, u64)>,
    max_commit: Index,
}

/// The ids of every node in a cluster of `n`.
fn node_ids(n: usize) -> Vec<NodeId> {
    (1..=n as NodeId).collect()
}

fn raft_config(id: NodeId, seed: u64) -> Config {
    let mut cfg = Config::new(id, 0);
    cfg.election_timeout_ticks = 12;
    cfg.heartbeat_interval_ticks = 2;
    // lease * (1 + d) < (election_timeout - 1) * (1 - d) with d = 10% and
    // up to a third of a tick of processing lag: 8.3 * 1.1 < 11 * 0.9.
    cfg.lease_margin_ticks = 4;
    cfg.max_inflight_messages = 8;
    cfg.max_message_bytes = 512;
    cfg.snapshot_chunk_bytes = 48;
    cfg.seed = seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    cfg
}

impl Sim {
    /// A cluster ready to run.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let ids = node_ids(cfg.nodes);
        let skew = i64::from(cfg.faults.clock_skew_ppm);
        let nodes = ids
            .iter()
            .map(|&id| {
                let storage = MemStorage::new_with_conf(ConfState::with_voters(ids.iter().copied()));
                let deviation = if skew > 0 { rng.i64(-skew..=skew) } else { 0 };
                let tick_period = (TICK as i64 + TICK as i64 * deviation / 1_000_000) as u64;
                Node {
                    id,
                    incarnation: 0,
                    raft: Some(Raft::new(raft_config(id, cfg.seed), storage).expect("valid config")),
                    durable: None,
                    kv: Kv::default(),
                    busy: None,
                    inbox: VecDeque::new(),
                    tick_period,
                    writes: BTreeMap::new(),
                    reads: BTreeMap::new(),
                    confirmed: Vec::new(),
                    applied_since_snapshot: 0,
                    commit_seen: 0,
                }
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|c| Client {
                leader_guess: c % cfg.nodes,
                outstanding: None,
                next_request: 1,
                next_value: (c as u64 + 1) << 32,
                done_in_liveness: 0,
            })
            .collect();
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            clients,
            history: Vec::new(),
            blocked: HashSet::new(),
            partitioned: false,
            faults_on: true,
            liveness_from: cfg.safety_ticks * TICK,
            report: Report::default(),
            leaders: HashMap::new(),
            entries_seen: HashMap::new(),
            committed_terms: Vec::new(),
            applied: HashMap::new(),
            max_commit: 0,
            cfg,
        };
        for n in 0..sim.nodes.len() {
            let first = sim.rng.u64(1..=sim.nodes[n].tick_period);
            sim.schedule(first, EventKind::Input(n, Input::Tick));
        }
        for c in 0..sim.clients.len() {
            let at = sim.rng.u64(TICK..20 * TICK);
            sim.schedule(at, EventKind::ClientStart(c));
        }
        let first_fault = sim.rng.u64(20 * TICK..40 * TICK);
        sim.schedule(first_fault, EventKind::Fault);
        sim
    }

    fn schedule(&mut self, after: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: self.now + after,
            seq: self.seq,
            kind,
        });
    }

    fn fail(&self, what: String) -> Failure {
        Failure {
            what,
            at: self.now,
            replay: self.cfg.replay_command(),
        }
    }

    /// Runs to the end and checks the history.
    pub fn run(mut self) -> Result<Report, Failure> {
        let end = self.liveness_from + self.cfg.liveness_ticks * TICK;
        let mut healed = false;
        while let Some(ev) = self.queue.pop() {
            if ev.at > end {
                break;
            }
            self.now = ev.at;
            if !healed && self.now >= self.liveness_from {
                healed = true;
                self.heal_everything();
            }
            self.report.events += 1;
            self.handle(ev.kind).map_err(|what| self.fail(what))?;
        }
        // Requests still out at the end may have taken effect.
        for c in 0..self.clients.len() {
            if let Some(out) = self.clients[c].outstanding.take() {
                if !matches!(out.op, ClientOp::Get(_)) {
                    self.record(c, &out, Outcome::Unknown, u64::MAX);
                }
            }
        }
        self.check_liveness().map_err(|what| self.fail(what))?;
        wgl::check(&self.history, WGL_STEPS_PER_KEY)
            .map_err(|v| self.fail(format!("history not linearizable: {v}")))?;
        self.report.ops_known = self.history.iter().filter(|e| e.outcome != Outcome::Unknown).count() as u64;
        self.report.ops_unknown = self.history.len() as u64 - self.report.ops_known;
        Ok(self.report)
    }

    fn heal_everything(&mut self) {
        self.faults_on = false;
        self.blocked.clear();
        self.partitioned = false;
        for n in 0..self.nodes.len() {
            if self.nodes[n].raft.is_none() {
                self.restart(n);
            }
        }
    }

    fn check_liveness(&self) -> Result<(), String> {
        // Every operation invoked once the cluster had a few election
        // timeouts to recover must have completed.
        let settle = self.liveness_from + 60 * TICK;
        let last_start = self.liveness_from + self.cfg.liveness_ticks * TICK - 60 * TICK;
        for e in &self.history {
            if e.invoke >= settle && e.invoke <= last_start && e.outcome == Outcome::Unknown {
                return Err(format!(
                    "liveness: client {} request invoked at {} after healing never completed",
                    e.client, e.invoke
                ));
            }
        }
        for (c, client) in self.clients.iter().enumerate() {
            if client.done_in_liveness < 3 {
                return Err(format!(
                    "liveness: client {c} completed only {} requests after healing",
                    client.done_in_liveness
                ));
            }
        }
        Ok(())
    }

    fn handle(&mut self, kind: EventKind) -> Result<(), String> {
        match kind {
            EventKind::Input(n, input) => {
                if let Input::Tick = input {
                    let period = self.nodes[n].tick_period;
                    self.schedule(period, EventKind::Input(n, Input::Tick));
                }
                if self.nodes[n].raft.is_none() {
                    return Ok(());
                }
                if self.nodes[n].busy.is_some() {
                    self.nodes[n].inbox.push_back(input);
                    return Ok(());
                }
                self.input(n, input)?;
                self.drive(n)
            }
            EventKind::PersistDone(n, incarnation) => {
                if self.nodes[n].incarnation != incarnation || self.nodes[n].busy.is_none() {
                    return Ok(());
                }
                self.finish_ready(n)?;
                self.drive(n)
            }
            EventKind::ClientStart(c) => {
                self.client_start(c);
                Ok(())
            }
            EventKind::ClientReply { client, request, reply } => {
                self.client_reply(client, request, reply);
                Ok(())
            }
            EventKind::ClientTimeout { client, request } => {
                self.client_timeout(client, request);
                Ok(())
            }
            EventKind::Fault => {
                if self.faults_on {
                    self.inject_fault();
                    let next = self.rng.u64(10 * TICK..40 * TICK);
                    self.schedule(next, EventKind::Fault);
                }
                Ok(())
            }
            EventKind::Heal => {
                self.blocked.clear();
                self.partitioned = false;
                Ok(())
            }
            EventKind::Restart(n) => {
                if self.nodes[n].raft.is_none() {
                    self.restart(n);
                }
                Ok(())
            }
        }
    }

    // ---- node inputs and Ready handling --------------------------------------

    fn input(&mut self, n: usize, input: Input) -> Result<(), String> {
        let now = self.now;
        let node = &mut self.nodes[n];
        let raft = node.raft.as_mut().expect("node is up");
        match input {
            Input::Tick => raft.tick(),
            Input::Msg(m) => {
                self.report.delivered += 1;
                raft.step(m)
                    .map_err(|e| format!("node {}: step failed: {e}", node.id))?;
            }
            Input::Propose(change) => {
                let _ = raft.propose_conf_change(change, now / 1000);
            }
            Input::Transfer(to) => {
                if raft.transfer_leader(to).is_ok() {
                    self.report.transfers += 1;
                }
            }
            Input::Request { client, request, op } => {
                let reply = match op {
                    ClientOp::Get(key) => {
                        let ctx = (client as u64) << 40 | request;
                        match raft.read_index(ctx) {
                            Ok(()) => {
                                node.reads.insert(
                                    ctx,
                                    PendingRead {
                                        client,
                                        request,
                                        key,
                                        commit_floor: self.max_commit,
                                    },
                                );
                                None
                            }
                            Err(RaftError::NotLeader { leader }) => Some(Reply::Redirect(leader)),
                            Err(_) => Some(Reply::Failed),
                        }
                    }
                    ClientOp::Put(key, value) | ClientOp::Cas(key, _, value) => {
                        let kv = match op {
                            ClientOp::Cas(_, expected, _) => KvOp::Cas {
                                key,
                                expected,
                                new: value,
                            },
                            _ => KvOp::Put { key, value },
                        };
                        let data: Arc<[u8]> = Arc::from(encode_op(client as u64, request, kv));
                        match raft.propose(data, now / 1000) {
                            Ok(p) => {
                                node.writes.insert(
                                    p.index,
                                    PendingWrite {
                                        term: p.term,
                                        client,
                                        request,
                                    },
                                );
                                None
                            }
                            Err(RaftError::NotLeader { leader }) => Some(Reply::Redirect(leader)),
                            Err(_) => Some(Reply::Failed),
                        }
                    }
                };
                if let Some(reply) = reply {
                    self.reply_to_client(client, request, reply);
                }
            }
        }
        Ok(())
    }

    /// Takes the next Ready, if any, and starts persisting it.
    fn drive(&mut self, n: usize) -> Result<(), String> {
        loop {
            let node = &mut self.nodes[n];
            let Some(raft) = node.raft.as_mut() else {
                return Ok(());
            };
            if node.busy.is_some() {
                return Ok(());
            }
            if raft.has_ready() {
                let mut ready = raft.ready();
                let messages = std::mem::take(&mut ready.messages);
                self.nodes[n].busy = Some(ready);
                self.check_ready(n)?;
                for m in messages {
                    self.send(m);
                }
                let latency = self.rng.u64(10..300);
                let incarnation = self.nodes[n].incarnation;
                self.schedule(latency, EventKind::PersistDone(n, incarnation));
                return Ok(());
            }
            let Some(input) = self.nodes[n].inbox.pop_front() else {
                return Ok(());
            };
            self.input(n, input)?;
        }
    }

    /// Checks taken when a Ready is handed out: its role, entries and
    /// hard state.
    fn check_ready(&mut self, n: usize) -> Result<(), String> {
        let node = &self.nodes[n];
        let id = node.id;
        let raft = node.raft.as_ref().expect("node is up");
        let ready = node.busy.as_ref().expect("ready taken");
        if let Some(role) = ready.role {
            if role.role == Role::Leader {
                // At most one leader per term (Raft §5.2).
                if let Some(&other) = self.leaders.get(&role.term) {
                    if other != id {
                        return Err(format!("two leaders in term {}: {other} and {id}", role.term));
                    }
                }
                self.leaders.insert(role.term, id);
                self.report.leaders_elected += 1;
                // Leader completeness (Raft §5.4): every committed entry is
                // in the new leader's log.
                let first = raft.storage().first_index();
                for (i, &term) in self.committed_terms.iter().enumerate() {
                    let index = i as Index + 1;
                    if term == 0 || index < first {
                        continue;
                    }
                    if raft.term_at(index) != Some(term) {
                        return Err(format!(
                            "leader {id} of term {} lacks committed entry {index} of term {term} (has {:?})",
                            role.term,
                            raft.term_at(index)
                        ));
                    }
                }
            }
        }
        // A lease read is decided when its read state is produced, which is
        // when this Ready is handed out: at that instant no node may lead a
        // higher term. (Its answer waits for the persistence below and for
        // its index to apply; a leader elected meanwhile does not make it
        // stale, as the read took effect at the decision.)
        if ready.read_states.iter().any(|rs| rs.via == ReadVia::Lease) {
            let term = raft.term();
            for other in &self.nodes {
                if let Some(r) = &other.raft {
                    if r.role() == Role::Leader && r.term() > term {
                        return Err(format!(
                            "stale lease read: node {id} decided a read on its term-{term} lease while node {} leads term {}",
                            other.id,
                            r.term()
                        ));
                    }
                }
            }
        }
        // Log matching (Raft §5.3): an (index, term) names one entry, with
        // one predecessor term.
        for e in &ready.entries {
            let prev_term = if e.index == 1 {
                Some(0)
            } else {
                raft.term_at(e.index - 1)
            };
            let identity = (fingerprint(&e.data) ^ e.kind as u64, prev_term.unwrap_or(u64::MAX));
            match self.entries_seen.get(&(e.index, e.term)) {
                Some(&(fp, prev)) => {
                    if fp != identity.0 || (prev != u64::MAX && identity.1 != u64::MAX && prev != identity.1) {
                        return Err(format!(
                            "log matching: node {id} holds a different entry {} of term {}",
                            e.index, e.term
                        ));
                    }
                }
                None => {
                    self.entries_seen.insert((e.index, e.term), identity);
                }
            }
        }
        // The commit index never moves back within a node's life, and the
        // entries it covers agree with every other node's.
        if let Some(hs) = ready.hard_state {
            let node = &self.nodes[n];
            if hs.commit < node.commit_seen {
                return Err(format!(
                    "node {id} commit index went back from {} to {}",
                    node.commit_seen, hs.commit
                ));
            }
            let from = node.commit_seen + 1;
            for index in from..=hs.commit {
                let Some(term) = raft.term_at(index) else { continue };
                let slot = index as usize - 1;
                if self.committed_terms.len() <= slot {
                    self.committed_terms.resize(slot + 1, 0);
                }
                match self.committed_terms[slot] {
                    0 => self.committed_terms[slot] = term,
                    t if t != term => {
                        return Err(format!(
                            "node {id} committed entry {index} of term {term}, another node of term {t}"
                        ))
                    }
                    _ => {}
                }
            }
            self.nodes[n].commit_seen = hs.commit;
            self.max_commit = self.max_commit.max(hs.commit);
        }
        Ok(())
    }

    fn finish_ready(&mut self, n: usize) -> Result<(), String> {
        let mut ready = self.nodes[n].busy.take().expect("busy");
        let id = self.nodes[n].id;
        {
            let node = &mut self.nodes[n];
            let raft = node.raft.as_mut().expect("node is up");
            let storage = raft.storage_mut();
            if let Some(snapshot) = &ready.snapshot {
                storage.apply_snapshot(snapshot.clone());
                node.kv = Kv::decode(&snapshot.data);
                node.applied_since_snapshot = 0;
                self.report.snapshots_installed += 1;
            }
            storage.append(&ready.entries);
            if let Some(hs) = ready.hard_state {
                storage.set_hard_state(hs);
            }
        }
        for m in std::mem::take(&mut ready.persisted_messages) {
            self.send(m);
        }
        if let Some(role) = ready.role {
            if role.role != Role::Leader {
                // Reads not yet confirmed die with the leadership.
                let reads = std::mem::take(&mut self.nodes[n].reads);
                for (_, r) in reads {
                    self.reply_to_client(r.client, r.request, Reply::Failed);
                }
            }
        }
        for entry in &ready.committed_entries {
            let identity = (entry.term, fingerprint(&entry.data) ^ entry.kind as u64);
            // State-machine safety: no two nodes apply different entries at
            // one index.
            if let Some(&seen) = self.applied.get(&entry.index) {
                if seen != identity {
                    return Err(format!(
                        "node {id} applied entry {} of term {}, another node applied term {}",
                        entry.index, entry.term, seen.0
                    ));
                }
            } else {
                self.applied.insert(entry.index, identity);
            }
            let node = &mut self.nodes[n];
            node.applied_since_snapshot += 1;
            let outcome = match entry.kind {
                EntryKind::Normal => Some(node.kv.apply(decode_op(&entry.data))),
                EntryKind::ConfChange => {
                    self.report.conf_changes += 1;
                    None
                }
                EntryKind::Noop => None,
            };
            if let Some(w) = self.nodes[n].writes.remove(&entry.index) {
                let reply = match outcome {
                    Some(outcome) if w.term == entry.term => Reply::Done(outcome),
                    _ => Reply::Failed,
                };
                self.reply_to_client(w.client, w.request, reply);
            }
        }
        for rs in std::mem::take(&mut ready.read_states) {
            let Some(read) = self.nodes[n].reads.get(&rs.ctx) else {
                continue;
            };
            if rs.index < read.commit_floor {
                return Err(format!(
                    "stale read at node {id}: confirmed at index {} ({:?}) but index {} was committed before it arrived",
                    rs.index, rs.via, read.commit_floor
                ));
            }
            if rs.via == ReadVia::Lease {
                self.report.lease_reads += 1;
            } else {
                self.report.quorum_reads += 1;
            }
            self.nodes[n].confirmed.push((rs.index, rs.ctx));
        }
        self.nodes[n].raft.as_mut().expect("up").advance();
        self.serve_confirmed_reads(n);
        self.maybe_snapshot(n);
        Ok(())
    }

    fn serve_confirmed_reads(&mut self, n: usize) {
        let applied = self.nodes[n].raft.as_ref().expect("up").applied();
        let confirmed = std::mem::take(&mut self.nodes[n].confirmed);
        for (index, ctx) in confirmed {
            if index > applied {
                self.nodes[n].confirmed.push((index, ctx));
                continue;
            }
            if let Some(read) = self.nodes[n].reads.remove(&ctx) {
                let value = self.nodes[n].kv.map.get(&read.key).copied();
                self.reply_to_client(read.client, read.request, Reply::Done(Outcome::Read(value)));
            }
        }
    }

    fn maybe_snapshot(&mut self, n: usize) {
        if !self.cfg.faults.snapshots {
            return;
        }
        let node = &mut self.nodes[n];
        if node.applied_since_snapshot < 40 {
            return;
        }
        let raft = node.raft.as_mut().expect("up");
        let applied = raft.applied();
        let conf = raft.conf_state().clone();
        let data: Arc<[u8]> = Arc::from(node.kv.encode());
        let storage = raft.storage_mut();
        if applied > storage.snapshot().map(|s| s.meta.index).unwrap_or(0) && applied <= storage.last_index() {
            storage.create_snapshot(applied, conf, data);
        }
        node.applied_since_snapshot = 0;
    }

    // ---- network -------------------------------------------------------------------

    fn send(&mut self, m: Message) {
        if self.faults_on {
            if self.blocked.contains(&(m.from, m.to)) {
                return;
            }
            if self.rng.u32(0..1_000_000) < self.cfg.faults.drop_ppm {
                return;
            }
            if self.rng.u32(0..1_000_000) < self.cfg.faults.duplicate_ppm {
                let delay = self.rng.u64(50..=self.cfg.faults.delay_max.max(51));
                self.schedule(delay, EventKind::Input((m.to - 1) as usize, Input::Msg(m.clone())));
            }
        }
        let max = if self.faults_on {
            self.cfg.faults.delay_max
        } else {
            TICK / 2
        };
        let delay = self.rng.u64(50..=max.max(51));
        self.schedule(delay, EventKind::Input((m.to - 1) as usize, Input::Msg(m)));
    }

    // ---- clients ----------------------------------------------------------------------

    fn client_start(&mut self, c: usize) {
        if self.clients[c].outstanding.is_some() {
            return;
        }
        let key = self.rng.u64(0..self.cfg.keys);
        let client = &mut self.clients[c];
        client.next_value += 1;
        let value = client.next_value;
        // Client 0 only reads, so reads keep arriving while writers wait
        // on a leader that lost its quorum.
        let roll = if c == 0 { 5 } else { self.rng.u8(0..10) };
        let op = match roll {
            0..=3 => ClientOp::Put(key, value),
            4..=7 => ClientOp::Get(key),
            _ => {
                // Expect the value most recently read or written, or absent.
                let expected = match self.rng.u8(0..3) {
                    0 => None,
                    _ => self
                        .history
                        .iter()
                        .rev()
                        .find_map(|e| match (e.key == key, e.op, e.outcome) {
                            (true, Op::Put { value }, Outcome::Written) => Some(value),
                            (true, _, Outcome::Read(v)) => v,
                            _ => None,
                        }),
                };
                ClientOp::Cas(key, expected, value)
            }
        };
        let client = &mut self.clients[c];
        let request = client.next_request;
        client.next_request += 1;
        client.outstanding = Some(Outstanding {
            request,
            op,
            invoke: self.now,
        });
        self.schedule(CLIENT_TIMEOUT, EventKind::ClientTimeout { client: c, request });
        self.submit(c);
    }

    fn submit(&mut self, c: usize) {
        self.send_outstanding(c, 50..500);
    }

    /// Sends client `c`'s outstanding request to its leader guess after a
    /// delay drawn from `delays`.
    fn send_outstanding(&mut self, c: usize, delays: std::ops::Range<u64>) {
        let client = &self.clients[c];
        let Some(out) = &client.outstanding else { return };
        let (request, op) = (out.request, out.op);
        let node = client.leader_guess;
        let delay = self.rng.u64(delays);
        self.schedule(delay, EventKind::Input(node, Input::Request { client: c, request, op }));
    }

    fn reply_to_client(&mut self, client: usize, request: u64, reply: Reply) {
        let delay = self.rng.u64(50..500);
        self.schedule(delay, EventKind::ClientReply { client, request, reply });
    }

    fn client_reply(&mut self, c: usize, request: u64, reply: Reply) {
        let Some(out) = &self.clients[c].outstanding else {
            return;
        };
        if out.request != request {
            return;
        }
        match reply {
            Reply::Done(outcome) => {
                let out = self.clients[c].outstanding.take().expect("checked");
                self.record(c, &out, outcome, self.now);
                if self.now >= self.liveness_from {
                    self.clients[c].done_in_liveness += 1;
                }
                let think = self.rng.u64(100..2 * TICK);
                self.schedule(think, EventKind::ClientStart(c));
            }
            Reply::Redirect(leader) => {
                let n = self.nodes.len();
                self.clients[c].leader_guess = match leader {
                    Some(id) if (id as usize) <= n => (id - 1) as usize,
                    _ => self.rng.usize(0..n),
                };
                self.resubmit_later(c);
            }
            Reply::Failed => {
                let n = self.nodes.len();
                self.clients[c].leader_guess = self.rng.usize(0..n);
                self.resubmit_later(c);
            }
        }
    }

    fn resubmit_later(&mut self, c: usize) {
        // The request certainly did not execute: send it again after a
        // pause so a leaderless cluster is not flooded.
        self.send_outstanding(c, TICK / 2..2 * TICK);
    }

    fn client_timeout(&mut self, c: usize, request: u64) {
        let Some(out) = &self.clients[c].outstanding else {
            return;
        };
        if out.request != request {
            return;
        }
        let out = self.clients[c].outstanding.take().expect("checked");
        // Reads that time out say nothing; writes may still take effect.
        if !matches!(out.op, ClientOp::Get(_)) {
            self.record(c, &out, Outcome::Unknown, u64::MAX);
        }
        let n = self.nodes.len();
        self.clients[c].leader_guess = self.rng.usize(0..n);
        self.schedule(TICK, EventKind::ClientStart(c));
    }

    fn record(&mut self, c: usize, out: &Outstanding, outcome: Outcome, complete: u64) {
        let (key, op) = match out.op {
            ClientOp::Put(key, value) => (key, Op::Put { value }),
            ClientOp::Get(key) => (key, Op::Get),
            ClientOp::Cas(key, expected, new) => (key, Op::Cas { expected, new }),
        };
        self.history.push(HistoryEvent {
            client: c as u64,
            key,
            op,
            outcome,
            invoke: out.invoke,
            complete,
        });
    }

    // ---- faults ------------------------------------------------------------------------

    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.raft.as_ref().map(|r| (i, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.term())
            .map(|(i, _)| i)
    }

    fn inject_fault(&mut self) {
        let f = self.cfg.faults;
        let mut kinds = Vec::new();
        if f.crashes {
            kinds.push(0);
        }
        if f.partitions && !self.partitioned {
            kinds.push(1);
        }
        if f.membership {
            kinds.push(2);
        }
        if f.transfers {
            kinds.push(3);
        }
        if kinds.is_empty() {
            return;
        }
        match kinds[self.rng.usize(0..kinds.len())] {
            0 => self.crash_someone(),
            1 => self.partition(),
            2 => self.change_membership(),
            _ => {
                if let Some(l) = self.leader() {
                    let me = self.nodes[l].id;
                    let voters: Vec<NodeId> = self.nodes[l]
                        .raft
                        .as_ref()
                        .expect("up")
                        .conf_state()
                        .voters
                        .iter()
                        .copied()
                        .filter(|&v| v != me)
                        .collect();
                    if !voters.is_empty() {
                        let to = voters[self.rng.usize(0..voters.len())];
                        self.schedule(1, EventKind::Input(l, Input::Transfer(to)));
                    }
                }
            }
        }
    }

    fn crash_someone(&mut self) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].raft.is_some())
            .collect();
        let down = self.nodes.len() - up.len();
        // Keep a majority of processes up most of the time, so the run
        // makes progress between faults.
        if down >= (self.nodes.len() - 1) / 2 || up.is_empty() {
            return;
        }
        let n = if self.rng.bool() {
            self.leader().unwrap_or(up[0])
        } else {
            up[self.rng.usize(0..up.len())]
        };
        self.crash(n);
        let after = self.rng.u64(5 * TICK..60 * TICK);
        self.schedule(after, EventKind::Restart(n));
    }

    fn crash(&mut self, n: usize) {
        self.report.crashes += 1;
        let torn_roll = self.rng.u64(0..1_000);
        let node = &mut self.nodes[n];
        let raft = node.raft.take().expect("up");
        let mut storage = raft.storage().clone();
        if let Some(ready) = node.busy.take() {
            // The write in progress is torn: a prefix of it (snapshot, then
            // entries, then hard state) reached the disk.
            let writes = usize::from(ready.snapshot.is_some()) + ready.entries.len() + 1;
            let mut budget = (torn_roll as usize) % (writes + 1);
            let mut stopped = false;
            if let Some(s) = &ready.snapshot {
                if budget == 0 {
                    stopped = true;
                } else {
                    storage.apply_snapshot(s.clone());
                    budget -= 1;
                }
            }
            if !stopped {
                let entries = budget.min(ready.entries.len());
                storage.append(&ready.entries[..entries]);
                budget -= entries;
                if budget > 0 {
                    if let Some(hs) = ready.hard_state {
                        storage.set_hard_state(hs);
                    }
                }
            }
        }
        node.durable = Some(storage);
        node.inbox.clear();
        node.writes.clear();
        node.reads.clear();
        node.confirmed.clear();
        node.incarnation += 1;
    }

    fn restart(&mut self, n: usize) {
        let seed = self.cfg.seed ^ self.rng.u64(..);
        let node = &mut self.nodes[n];
        let storage = node.durable.take().expect("down");
        let snapshot = storage.snapshot().expect("memory storage");
        node.kv = Kv::decode(&snapshot.data);
        node.applied_since_snapshot = 0;
        node.commit_seen = storage.hard_state().commit.max(snapshot.meta.index);
        let raft = Raft::new(raft_config(node.id, seed), storage).expect("valid config");
        node.raft = Some(raft);
    }

    fn partition(&mut self) {
        self.report.partitions += 1;
        self.partitioned = true;
        let ids = node_ids(self.nodes.len());
        let mut shuffled = ids.clone();
        self.rng.shuffle(&mut shuffled);
        let cut = self.rng.usize(1..ids.len());
        let (a, b) = shuffled.split_at(cut);
        let block_both = |blocked: &mut HashSet<(NodeId, NodeId)>, x: NodeId, y: NodeId| {
            blocked.insert((x, y));
            blocked.insert((y, x));
        };
        match self.rng.u8(0..4) {
            0 => {
                // Symmetric split.
                for &x in a {
                    for &y in b {
                        block_both(&mut self.blocked, x, y);
                    }
                }
            }
            1 => {
                // Asymmetric: a hears b, b does not hear a.
                for &x in a {
                    for &y in b {
                        self.blocked.insert((x, y));
                    }
                }
            }
            2 => {
                // The leader (or someone) isolated.
                let l = self.leader().map(|i| i as NodeId + 1).unwrap_or(a[0]);
                for &y in &ids {
                    if y != l {
                        block_both(&mut self.blocked, l, y);
                    }
                }
            }
            _ => {
                // Bridge: the two sides meet only through b[0], which
                // keeps every link (with one node on that side, a plain
                // split).
                let far = if b.len() >= 2 { &b[1..] } else { b };
                for &x in a {
                    for &y in far {
                        block_both(&mut self.blocked, x, y);
                    }
                }
            }
        }
        let heal = self.rng.u64(10 * TICK..80 * TICK);
        self.schedule(heal, EventKind::Heal);
    }

    fn change_membership(&mut self) {
        let Some(l) = self.leader() else { return };
        let conf = self.nodes[l].raft.as_ref().expect("up").conf_state().clone();
        if conf.is_joint() {
            return;
        }
        let all: BTreeSet<NodeId> = node_ids(self.nodes.len()).into_iter().collect();
        let members: BTreeSet<NodeId> = conf.voters.iter().chain(&conf.learners).copied().collect();
        let outsiders: Vec<NodeId> = all.difference(&members).copied().collect();
        let min_voters = (self.nodes.len() / 2 + 1).max(2);
        let item = if let Some(&learner) = conf.learners.first() {
            ConfChangeItem::AddVoter(learner)
        } else if let Some(&outsider) = outsiders.first() {
            ConfChangeItem::AddLearner(outsider)
        } else if conf.voters.len() > min_voters {
            ConfChangeItem::Remove(conf.voters[self.rng.usize(0..conf.voters.len())])
        } else {
            return;
        };
        self.schedule(
            1,
            EventKind::Input(
                l,
                Input::Propose(ConfChange {
                    items: vec![item],
                    context: Vec::new(),
                }),
            ),
        );
    }
}

/// Runs one seed.
pub fn run(cfg: SimConfig) -> Result<Report, Failure> {
    Sim::new(cfg).run()
}
