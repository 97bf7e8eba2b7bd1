//! The node's network front: one mio event loop and a bounded worker pool.
//!
//! The event loop accepts and reads until `WouldBlock`, recognises frames
//! in each connection's receive buffer, answers connection-level requests
//! itself (hello, ping, refusals), and hands data requests to the workers
//! through a bounded queue guarded by [`Backpressure`]. Workers apply them
//! to the state machine and send encoded responses back; the loop writes
//! them out with vectored writes. The loop never blocks: it holds no lock a
//! worker holds across a state-machine call.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loomcache_consensus::{ConfChange, ConfState, Entry};
use loomcache_wire::{
    parse_frame, Busy, ErrorCode, Flags, HeaderFields, HelloAck, Limits, OkBody, OpClass, Opcode, Parsed, Payload,
    Redirect, Response, Writer, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::backpressure::{Backpressure, Level};
use crate::config::{ClusterConfig, Config};
use crate::raft::members::{self, AddressBook};
use crate::raft::{
    Driver, DriverConfig, DriverHandle, LeaseGate, Outcome, Replicated, SnapshotFinish, Transport, TransportConfig,
};
use crate::state::{StateConfig, StateMachine};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// How often the loop wakes to enforce idle and frame deadlines.
const TICK: Duration = Duration::from_millis(100);
/// Connections accepted per loop turn while throttled.
const ACCEPT_PER_TURN_THROTTLED: usize = 4;
/// Loop turn length while accepting is throttled.
const ACCEPT_THROTTLE_TICK: Duration = Duration::from_millis(10);
/// How long a leader waits for a proposed incarnation record to apply
/// before proposing it again.
const RECORD_RETRY: Duration = Duration::from_secs(1);
/// Answer buffers kept for reuse, and the largest kept.
const SPARE_BUFFERS_MAX: usize = 4096;
const SPARE_BUFFER_BYTES_MAX: usize = 64 << 10;
/// Buffers written per vectored write.
const IOV_MAX: usize = 64;

/// The 32 header bytes of a frame.
fn header_bytes(fields: &HeaderFields, payload_len: usize) -> [u8; loomcache_wire::HEADER_LEN] {
    use zerocopy::IntoBytes;
    let header = loomcache_wire::FrameHeader::new(fields, payload_len as u32);
    let mut out = [0u8; loomcache_wire::HEADER_LEN];
    out.copy_from_slice(header.as_bytes());
    out
}

/// A running node. Dropping it without [`Server::shutdown`] leaves the
/// threads running until the process exits.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    threads: Vec<JoinHandle<()>>,
    /// In cluster mode: the Raft driver and the peer transport.
    driver: Option<Driver>,
    transport: Option<Arc<Transport>>,
}

struct Job {
    conn: usize,
    generation: u64,
    frame: Vec<u8>,
}

struct Done {
    conn: usize,
    generation: u64,
    result: Executed,
    /// The frame, handed back when the request was parked.
    frame: Option<Vec<u8>>,
}

/// What executing one frame produced.
struct Executed {
    /// The response frame; empty when the request was parked.
    bytes: Vec<u8>,
    /// A message to push to a topic's subscribers.
    publication: Option<Publication>,
    /// A queue that received an item: parked polls on it may proceed.
    offered: Option<Box<str>>,
    /// A poll that found its queue empty and waits.
    parked: Option<Wait>,
}

/// A poll that waits for an item.
struct Wait {
    queue: Box<str>,
    /// How much longer it waits.
    wait: Duration,
    /// Its place among the polls waiting on the queue, when it has waited
    /// there before: a poll woken for an item that another consumer took
    /// first waits again in the place it had.
    place: Option<u64>,
}

/// A `QUEUE_POLL` waiting for an item.
struct ParkedPoll {
    conn: usize,
    generation: u64,
    frame: Vec<u8>,
    deadline: Instant,
    /// Order of arrival among the node's waiting polls; a queue's polls
    /// are kept in this order.
    place: u64,
}

/// The next place in the waiting polls' arrival order (`next`: the
/// loop's counter).
fn take_place(next: &mut u64) -> u64 {
    *next += 1;
    *next - 1
}

/// Parks `poll` on its queue's list behind every poll that arrived before
/// it and ahead of every later one.
fn park_in_place(waiting: &mut VecDeque<ParkedPoll>, poll: ParkedPoll) {
    let at = waiting.partition_point(|p| p.place < poll.place);
    waiting.insert(at, poll);
}

/// A message the log ordered on a topic, to be pushed to its subscribers.
struct Publication {
    topic: Box<str>,
    sequence: u64,
    message: Vec<u8>,
}

/// One topic subscription.
struct Subscription {
    id: u64,
    conn: usize,
    generation: u64,
    /// Messages dropped since the last one delivered.
    dropped: u64,
}

struct Shared {
    state: Mutex<StateMachine>,
    backpressure: Backpressure,
    waker: Arc<Waker>,
    /// Set by a worker that woke the loop and cleared by the loop before
    /// it drains responses, so a burst of completions costs one wake-up.
    wake_pending: AtomicBool,
    limits: Limits,
    /// In cluster mode, effects of entries applied by the Raft driver that
    /// the loop carries out: topic pushes and parked polls to retry.
    effects: Mutex<Vec<(Option<Publication>, Option<Box<str>>)>>,
}

impl Server {
    /// Binds, starts the event loop and the workers, and returns once the
    /// node accepts connections.
    pub fn start(mut config: Config) -> io::Result<Server> {
        // The state machine decodes entries with the same limits the wire
        // accepted them under.
        config.state.limits = config.limits;
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = TcpListener::bind(config.listen_addr)?;
        let local_addr = listener.local_addr()?;
        // Port 0 asks for any free port: answers name the bound one.
        if let Some(me) = config
            .cluster
            .as_mut()
            .and_then(|c| c.members.iter_mut().find(|m| m.id == config.node_id))
        {
            if me.client_addr.port() == 0 {
                me.client_addr = local_addr;
            }
        }
        config.listen_addr = local_addr;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;

        let shared = Arc::new(Shared {
            state: Mutex::new(StateMachine::new(config.state)),
            backpressure: Backpressure::new(config.work_queue_low as usize, config.work_queue_high as usize),
            waker: Arc::clone(&waker),
            wake_pending: AtomicBool::new(false),
            limits: config.limits,
            effects: Mutex::new(Vec::new()),
        });
        // One queue per worker; a connection's requests all go to the same
        // worker, so they are applied in the order they arrived.
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut job_txs = Vec::new();
        let workers = if config.cluster.is_some() { 0 } else { config.workers };
        for i in 0..workers {
            let (job_tx, job_rx) = mpsc::sync_channel::<Job>(config.work_queue_high as usize);
            job_txs.push(job_tx);
            let (shared, tx) = (Arc::clone(&shared), done_tx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("loomd-worker-{i}"))
                    .spawn(move || worker(&shared, &job_rx, &tx))?,
            );
        }
        let (driver, transport, cluster) = match &config.cluster {
            Some(cluster) => {
                let (driver, transport, book, incarnation) = start_cluster(&config, cluster, &shared)?;
                let handle = driver.handle().clone();
                let front_transport = Arc::clone(&transport);
                (
                    Some(driver),
                    Some(transport),
                    Some(ClusterFront {
                        driver: handle,
                        done: done_tx.clone(),
                        book,
                        transport: front_transport,
                        incarnation,
                        recording: HashMap::new(),
                    }),
                )
            }
            None => (None, None, None),
        };
        drop(done_tx);
        let mut event_loop = EventLoop {
            cluster,
            poll,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            per_ip: HashMap::new(),
            open: 0,
            next_generation: 1,
            jobs: job_txs,
            done: done_rx,
            shared,
            config,
            stop: Arc::clone(&stop),
            stalled: Vec::new(),
            topics: HashMap::new(),
            next_subscription: 1,
            parked: HashMap::new(),
            answers: Vec::new(),
            answered: Vec::new(),
            next_place: 0,
            polls_parked_again: 0,
            accept_pending: false,
            spare: Vec::new(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("loomd-event-loop".into())
                .spawn(move || event_loop.run())?,
        );
        Ok(Server {
            local_addr,
            stop,
            waker,
            threads,
            driver,
            transport,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Why the node can no longer serve, if it cannot: in cluster mode,
    /// the Raft driver stopped on its own (a storage failure, such as a
    /// failed flush that poisoned the log, or a snapshot that did not
    /// load). Such a node answers every request `SHUTTING_DOWN`; the
    /// process should exit so that a supervisor restarts it.
    pub fn failure(&self) -> Option<&'static str> {
        self.driver
            .as_ref()
            .filter(|d| d.is_finished())
            .map(|_| "the Raft driver stopped (see the log above); this member cannot serve")
    }

    /// Stops accepting, closes every connection, and joins the threads.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(driver) = self.driver {
            driver.stop();
        }
        if let Some(transport) = self.transport {
            drop(transport);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The request id in a frame's header (frames here were validated).
fn request_id_of(frame: &[u8]) -> u64 {
    frame
        .get(16..24)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Encodes a whole response frame.
fn response_frame(request_id: u64, partition: u16, response: &Response<'_>) -> Vec<u8> {
    let fields = HeaderFields {
        opcode: response.opcode(),
        flags: Flags::NONE,
        status: response.status().code(),
        partition,
        request_id,
    };
    let len = response.encoded_len();
    let mut out = Vec::with_capacity(loomcache_wire::HEADER_LEN + len);
    out.extend_from_slice(&header_bytes(&fields, len));
    out.resize(loomcache_wire::HEADER_LEN + len, 0);
    response
        .encode(&mut Writer::new(&mut out[loomcache_wire::HEADER_LEN..]))
        .expect("sized by encoded_len");
    out
}

fn error_frame(request_id: u64, code: ErrorCode, message: &str) -> Vec<u8> {
    response_frame(request_id, 0, &Response::Error { code, message })
}

/// A worker: takes jobs until the queue closes.
fn worker(shared: &Shared, jobs: &Receiver<Job>, done: &Sender<Done>) {
    while let Ok(job) = jobs.recv() {
        let result = execute(shared, &job.frame, Vec::new());
        let frame = result.parked.is_some().then_some(job.frame);
        let _ = done.send(Done {
            conn: job.conn,
            generation: job.generation,
            result,
            frame,
        });
        let resume = shared.backpressure.complete();
        // Wake the loop to deliver the response (and, if this completion
        // ended a pause, to read again), unless a wake-up is already on its
        // way: the loop clears the flag before it drains, so a response
        // sent after that is either drained now or wakes it again.
        if !shared.wake_pending.swap(true, Ordering::AcqRel) || resume {
            let _ = shared.waker.wake();
        }
    }
}

impl Executed {
    fn answer(bytes: Vec<u8>) -> Executed {
        Executed {
            bytes,
            publication: None,
            offered: None,
            parked: None,
        }
    }
}

/// Applies one admitted frame and encodes its response frame. A publish
/// also answers the message to push; an offer names its queue; a poll
/// that would wait on an empty queue is parked instead of applied, so it
/// is neither applied nor deduplicated until it can take an item.
///
/// The answer is written into `out` (empty; a recycled buffer on the event
/// loop, so a steady stream of requests allocates no answer buffers).
fn execute(shared: &Shared, frame_bytes: &[u8], out: Vec<u8>) -> Executed {
    execute_at(shared, frame_bytes, out, now_ms(), true)
}

/// [`execute`] at time `now`; `park` says whether a poll may wait (not for
/// a committed entry, which is applied as it stands).
fn execute_at(shared: &Shared, frame_bytes: &[u8], out: Vec<u8>, now: u64, park: bool) -> Executed {
    match parse_frame(frame_bytes, &shared.limits) {
        Ok(Parsed::Frame(frame)) => execute_frame(shared, &frame, out, now, park),
        _ => Executed::answer(error_frame(
            0,
            ErrorCode::Internal,
            "an admitted frame no longer parses",
        )),
    }
}

/// [`execute_at`] for a frame the event loop has just parsed.
fn execute_frame(shared: &Shared, frame: &loomcache_wire::Frame<'_>, out: Vec<u8>, now: u64, park: bool) -> Executed {
    execute_under(shared, frame, out, now, park, None)
        .unwrap_or_else(|| Executed::answer(error_frame(0, ErrorCode::Internal, "no lease was asked for")))
}

/// A linearizable read answered on the calling thread, if the leader lease
/// holds once the state machine is locked; `None` otherwise (the read then
/// takes the round through the Raft driver).
fn read_under_lease(
    shared: &Shared,
    frame: &loomcache_wire::Frame<'_>,
    out: Vec<u8>,
    now: u64,
    lease: &LeaseGate,
) -> Option<Vec<u8>> {
    execute_under(shared, frame, out, now, false, Some(lease)).map(|e| e.bytes)
}

/// [`execute_frame`]; with `lease`, `None` unless the lease holds while
/// the state machine is locked.
fn execute_under(
    shared: &Shared,
    frame: &loomcache_wire::Frame<'_>,
    mut out: Vec<u8>,
    now: u64,
    park: bool,
    lease: Option<&LeaseGate>,
) -> Option<Executed> {
    let (request_id, partition) = (frame.request_id(), frame.header().partition());
    // The payload is decoded here only where the node itself needs it
    // (reads, and the writes with effects beyond the state machine); other
    // writes are decoded once, by the state machine.
    let opcode = frame.opcode();
    let needs_payload = opcode.class() == OpClass::Read
        || matches!(opcode, Opcode::QueuePoll | Opcode::QueueOffer | Opcode::TopicPublish);
    let decoded = needs_payload.then(|| frame.decode(&shared.limits));
    // Room for the header, written once the body's length is known.
    out.clear();
    out.resize(loomcache_wire::HEADER_LEN, 0);
    let mut replayed = false;
    let outcome = {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if lease.is_some_and(|lease| !lease.holds()) {
            return None;
        }
        if let Some(Ok(Payload::QueuePoll(p))) = decoded {
            if park && p.wait_ms > 0 && state.poll_would_wait(p.name, frame) {
                return Some(Executed {
                    bytes: Vec::new(),
                    publication: None,
                    offered: None,
                    parked: Some(Wait {
                        queue: p.name.into(),
                        wait: Duration::from_millis(u64::from(p.wait_ms)),
                        place: None,
                    }),
                });
            }
        }
        if frame.opcode().class() == OpClass::Read {
            match decoded {
                Some(Ok(payload)) => state.read(&payload, now, &mut out),
                Some(Err(e)) => return Some(Executed::answer(error_frame(request_id, e.code(), &e.to_string()))),
                None => {
                    return Some(Executed::answer(error_frame(
                        request_id,
                        ErrorCode::Internal,
                        "a read was not decoded",
                    )))
                }
            }
        } else {
            let outcome = state.apply(frame.bytes(), now, &mut out);
            replayed = state.last_was_replay();
            outcome
        }
    };
    let fields = HeaderFields {
        opcode: outcome.opcode,
        flags: Flags::NONE,
        status: outcome.status.code(),
        partition,
        request_id,
    };
    // A replayed retry already had its effects.
    let ok = outcome.status == ErrorCode::Ok && !replayed;
    let offered = match decoded {
        Some(Ok(Payload::QueueOffer(o))) if ok => Some(o.name.into()),
        _ => None,
    };
    let publication = match decoded {
        Some(Ok(Payload::TopicPublish(p))) if ok => {
            match OkBody::decode(
                loomcache_wire::OkShape::Count,
                &out[loomcache_wire::HEADER_LEN..],
                &shared.limits,
            ) {
                Ok(OkBody::Count(sequence)) => Some(Publication {
                    topic: p.name.into(),
                    sequence,
                    message: p.value.to_vec(),
                }),
                _ => None,
            }
        }
        _ => None,
    };
    let body_len = out.len() - loomcache_wire::HEADER_LEN;
    out[..loomcache_wire::HEADER_LEN].copy_from_slice(&header_bytes(&fields, body_len));
    Some(Executed {
        bytes: out,
        publication,
        offered,
        parked: None,
    })
}

struct Conn {
    stream: TcpStream,
    peer: IpAddr,
    generation: u64,
    /// Receive buffer: bytes `start..end` are unconsumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: VecDeque<Vec<u8>>,
    /// Bytes of `out.front()` already written.
    out_offset: usize,
    in_flight: u32,
    last_active: Instant,
    partial_since: Option<Instant>,
    /// Close once `out` is written.
    closing: bool,
    /// Reading stopped before `WouldBlock`; retry when load allows.
    stalled: bool,
    writable_registered: bool,
    /// Listed in `EventLoop::answered`: answers queued, not yet written.
    answered: bool,
    /// Topic subscriptions held: a subscriber is never idle-closed.
    subscriptions: u32,
}

/// What the loop needs in cluster mode: the driver to hand requests to,
/// the channel answers come back on, and the members' addresses (client
/// addresses for redirects).
struct ClusterFront {
    driver: DriverHandle,
    done: Sender<Done>,
    book: Arc<AddressBook>,
    transport: Arc<Transport>,
    /// This member's data-directory incarnation.
    incarnation: u64,
    /// Incarnation records this node proposed as leader and when, until
    /// they apply or [`RECORD_RETRY`] passes.
    recording: HashMap<u64, Instant>,
}

struct EventLoop {
    cluster: Option<ClusterFront>,
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    per_ip: HashMap<IpAddr, u32>,
    open: u32,
    next_generation: u64,
    /// Per-worker queues; emptied at shutdown, which ends the workers.
    jobs: Vec<SyncSender<Job>>,
    done: Receiver<Done>,
    shared: Arc<Shared>,
    config: Config,
    stop: Arc<AtomicBool>,
    stalled: Vec<usize>,
    /// Topic name → subscriptions, in subscription order.
    topics: HashMap<Box<str>, Vec<Subscription>>,
    next_subscription: u64,
    /// Queue name → polls waiting for an item, oldest first.
    parked: HashMap<Box<str>, VecDeque<ParkedPoll>>,
    /// Answers taken from `done`, kept between turns for their capacity.
    answers: Vec<Done>,
    /// Connections given answers this turn, written once each at its end.
    answered: Vec<usize>,
    /// The place the next poll to wait takes (`ParkedPoll::place`).
    next_place: u64,
    /// Polls parked again (`WaitingPolls::parked_again`).
    polls_parked_again: u64,
    /// Accepting was cut short by throttling; continue on the next turn.
    accept_pending: bool,
    /// Written answer buffers kept for the next answers.
    spare: Vec<Vec<u8>>,
}

enum Step {
    /// Keep going.
    More,
    /// Stop reading for now (would block, or load).
    Pause,
    /// The connection must close.
    Close,
}

impl EventLoop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            // Connections stalled on our own limits are retried at once
            // unless the node is paused; otherwise wait for events.
            let timeout = if !self.stalled.is_empty() && !self.shared.backpressure.is_paused() {
                Duration::ZERO
            } else if self.accept_pending {
                ACCEPT_THROTTLE_TICK
            } else {
                TICK
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "event loop poll failed; the node stops serving");
                break;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(t) => {
                        let idx = t - FIRST_CONN;
                        if event.is_readable() || event.is_read_closed() {
                            self.read(idx);
                        }
                        if event.is_writable() {
                            self.flush(idx);
                        }
                    }
                }
            }
            self.deliver();
            self.retry_stalled();
            if self.accept_pending {
                self.accept_all();
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.enforce_deadlines();
                self.expire_parked();
                self.record_incarnations();
            }
        }
        // Shutdown: closing the job queues ends the workers.
        self.jobs.clear();
        for idx in 0..self.conns.len() {
            self.close(idx);
        }
    }

    /// On the leader, proposes recording the incarnation of each member of
    /// the configuration the group has none for: its own, and each peer's
    /// as its live link shows it. Members are recorded once; a member that comes back with
    /// another incarnation is then refused by its peers (12.19).
    fn record_incarnations(&mut self) {
        let me = self.config.node_id;
        let Some(front) = self.cluster.as_mut() else { return };
        if front.driver.summary().role != Some(loomcache_consensus::Role::Leader) {
            front.recording.clear();
            return;
        }
        let recorded = front.book.records();
        let now = Instant::now();
        front
            .recording
            .retain(|id, at| !recorded.contains_key(id) && now.duration_since(*at) < RECORD_RETRY);
        let seen = front.transport.incarnations_seen();
        let conf = front.driver.membership().conf;
        let members = conf
            .voters
            .iter()
            .chain(&conf.learners)
            .chain(&conf.voters_outgoing)
            .copied()
            .collect::<std::collections::BTreeSet<u64>>();
        for id in members {
            if recorded.contains_key(&id) || front.recording.contains_key(&id) {
                continue;
            }
            let incarnation = if id == me {
                front.incarnation
            } else {
                seen.get(&id).copied().unwrap_or(0)
            };
            if incarnation == 0 {
                continue;
            }
            let payload = Payload::ClusterRecordMember(loomcache_wire::RecordMember {
                node_id: id,
                incarnation,
            });
            let mut frame = vec![0u8; loomcache_wire::frame_len(None, &payload)];
            let fields = HeaderFields::request(Opcode::ClusterRecordMember, 0);
            if loomcache_wire::encode_frame(&mut frame, &fields, None, &payload).is_err() {
                continue;
            }
            tracing::debug!(
                node = id,
                incarnation = format_args!("{incarnation:016x}"),
                "proposing a member's record"
            );
            front.recording.insert(id, now);
            front.driver.propose(Arc::from(frame), Box::new(|_| {}));
        }
    }

    fn accept_all(&mut self) {
        self.accept_pending = false;
        let mut accepted = 0;
        loop {
            // Between the watermarks accepting slows down: a few per turn
            // of the loop, the rest left in the listen backlog.
            if accepted >= ACCEPT_PER_TURN_THROTTLED && self.shared.backpressure.level() == Level::Throttle {
                self.accept_pending = true;
                return;
            }
            accepted += 1;
            let (mut stream, addr) = match self.listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let ip = addr.ip();
            let refusal = if self.open >= self.config.connections_max
                || self.per_ip.get(&ip).copied().unwrap_or(0) >= self.config.connections_per_ip_max
            {
                Some(error_frame(
                    0,
                    ErrorCode::TooManyConnections,
                    "connection limit reached",
                ))
            } else if self.shared.backpressure.level() == Level::Reject {
                Some(response_frame(
                    0,
                    0,
                    &Response::ServerBusy(loomcache_wire::Busy { retry_after_ms: 100 }),
                ))
            } else {
                None
            };
            if let Some(frame) = refusal {
                tracing::debug!(peer = %addr, open = self.open, "connection refused");
                // Best effort: the socket is fresh, so a short frame fits in
                // its send buffer; then it is closed.
                let _ = stream.write(&frame);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let idx = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if self
                .poll
                .registry()
                .register(&mut stream, Token(idx + FIRST_CONN), Interest::READABLE)
                .is_err()
            {
                self.free.push(idx);
                continue;
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            self.conns[idx] = Some(Conn {
                stream,
                peer: ip,
                generation,
                buf: vec![0u8; self.config.recv_buffer_bytes as usize],
                start: 0,
                end: 0,
                out: VecDeque::new(),
                out_offset: 0,
                in_flight: 0,
                last_active: Instant::now(),
                partial_since: None,
                closing: false,
                stalled: false,
                writable_registered: false,
                answered: false,
                subscriptions: 0,
            });
            self.open += 1;
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
    }

    fn conn(&mut self, idx: usize) -> Option<&mut Conn> {
        self.conns.get_mut(idx).and_then(Option::as_mut)
    }

    /// Reads and handles frames until the socket would block, the load
    /// says stop, or the connection must close.
    fn read(&mut self, idx: usize) {
        loop {
            match self.process_frames(idx) {
                Step::More => {}
                Step::Pause => return,
                Step::Close => {
                    self.close_after_flush(idx);
                    return;
                }
            }
            let Some(conn) = self.conn(idx) else { return };
            if conn.closing {
                return;
            }
            // Make room: move unconsumed bytes to the front when the tail
            // is full.
            if conn.end == conn.buf.len() && conn.start > 0 {
                conn.buf.copy_within(conn.start..conn.end, 0);
                conn.end -= conn.start;
                conn.start = 0;
            }
            if conn.end == conn.buf.len() {
                // Full of one frame's beginning: `process_frames` grows the
                // buffer for a frame it has validated, so this is a frame
                // that is still being checked; read no further now.
                conn.stalled = true;
                return;
            }
            let end = conn.end;
            let room = conn.buf.len() - end;
            match conn.stream.read(&mut conn.buf[end..]) {
                Ok(0) => {
                    self.close_after_flush(idx);
                    return;
                }
                Ok(n) => {
                    conn.end += n;
                    conn.last_active = Instant::now();
                    if cfg!(unix) && n < room {
                        // A short read emptied the socket's receive queue:
                        // bytes arriving after it raise a new readiness
                        // event (epoll and kqueue report every arrival on
                        // an edge-triggered registration), so the read
                        // that would only answer WouldBlock is skipped.
                        if let Step::Close = self.process_frames(idx) {
                            self.close_after_flush(idx);
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Step::Close = self.process_frames(idx) {
                        self.close_after_flush(idx);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(idx);
                    return;
                }
            }
        }
    }

    /// Handles every complete frame in the buffer.
    fn process_frames(&mut self, idx: usize) -> Step {
        // One clock reading serves every frame applied inline in this pass.
        let mut now = None;
        loop {
            let level = self.shared.backpressure.level();
            let limits = self.config.limits;
            let in_flight_max = self.config.in_flight_per_connection_max;
            let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                return Step::Close;
            };
            if conn.closing {
                return Step::Pause;
            }
            let parsed = parse_frame(&conn.buf[conn.start..conn.end], &limits);
            let frame = match parsed {
                Ok(Parsed::Frame(f)) => f,
                Ok(Parsed::Incomplete { total }) => {
                    if !conn.out.is_empty() {
                        self.flush(idx);
                    }
                    let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                        return Step::Close;
                    };
                    conn.partial_since =
                        (conn.end > conn.start).then(|| conn.partial_since.unwrap_or_else(Instant::now));
                    // A validated header may announce a frame larger than
                    // the buffer: grow to exactly that, once.
                    let need = conn.start + total;
                    if total > conn.buf.len() {
                        let mut bigger = vec![0u8; total];
                        bigger[..conn.end - conn.start].copy_from_slice(&conn.buf[conn.start..conn.end]);
                        conn.end -= conn.start;
                        conn.start = 0;
                        conn.buf = bigger;
                    } else if need > conn.buf.len() {
                        conn.buf.copy_within(conn.start..conn.end, 0);
                        conn.end -= conn.start;
                        conn.start = 0;
                    }
                    return Step::More;
                }
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "closing a connection after a bad frame");
                    // The stream cannot be trusted past a bad header.
                    let frame = error_frame(0, e.code(), &e.to_string());
                    conn.out.push_back(frame);
                    return Step::Close;
                }
            };
            let len = frame.bytes().len();
            let request_id = frame.request_id();
            let opcode = frame.opcode();
            // Connection-level requests are answered here.
            let inline = match opcode.class() {
                // A read marked STALE_READ is answered here from this
                // member's own state, leader or not.
                OpClass::Read
                    if self.cluster.is_some() && frame.header().flags().contains(loomcache_wire::Flags::STALE_READ) =>
                {
                    Some(execute(&self.shared, frame.bytes(), Vec::new()).bytes)
                }
                OpClass::Read | OpClass::Write => None,
                OpClass::Control if opcode == Opcode::BatchExecute => None,
                OpClass::Control if opcode == Opcode::Hello => Some(hello(&frame, &self.config)),
                OpClass::Control if opcode == Opcode::NodeInfo => Some(node_info(
                    request_id,
                    &self.shared,
                    &self.config,
                    self.cluster.as_ref(),
                    self.open,
                    &self.topics,
                    WaitingPolls {
                        parked: self.parked.values().map(VecDeque::len).sum(),
                        parked_again: self.polls_parked_again,
                    },
                )),
                OpClass::Cluster if opcode == Opcode::PartitionTableRequest => {
                    Some(partition_table(&frame, &limits, &self.config, self.cluster.as_ref()))
                }
                OpClass::Cluster if opcode == Opcode::ClusterRecordMember => Some(error_frame(
                    request_id,
                    ErrorCode::Malformed,
                    "clients do not send this opcode: members are recorded by the leader",
                )),
                OpClass::Cluster if opcode == Opcode::ClusterPing => Some(match frame.decode(&limits) {
                    Ok(Payload::ClusterPing(p)) => response_frame(request_id, 0, &Response::Ok(OkBody::Count(p.nonce))),
                    _ => error_frame(request_id, ErrorCode::Malformed, "bad ping"),
                }),
                OpClass::Cluster
                    if matches!(
                        opcode,
                        Opcode::ClusterJoin | Opcode::ClusterLeave | Opcode::ClusterTransferLeader
                    ) =>
                {
                    match (&self.cluster, membership_request(&frame, &limits)) {
                        (None, _) => Some(error_frame(
                            request_id,
                            ErrorCode::Unsupported,
                            "membership changes need cluster mode (--members)",
                        )),
                        (Some(_), Err(e)) => Some(error_frame(request_id, ErrorCode::Malformed, &e)),
                        // Only the leader judges a request against its
                        // configuration: another member's view may lag (a
                        // joining node's is empty), so there the request
                        // goes to the driver, which redirects it.
                        (Some(front), Ok(request)) => {
                            let leads = front.driver.summary().role == Some(loomcache_consensus::Role::Leader);
                            let verdict = if leads {
                                request.check(&front.driver.membership().conf, &front.book)
                            } else {
                                Ok(true)
                            };
                            match verdict {
                                Err(why) => Some(error_frame(request_id, ErrorCode::InvalidArgument, &why)),
                                // Already so (a retried add): nothing to change.
                                Ok(false) => Some(response_frame(request_id, 0, &Response::Ok(OkBody::Empty))),
                                Ok(true) if !self.shared.backpressure.try_admit() => Some(response_frame(
                                    request_id,
                                    0,
                                    &Response::ServerBusy(Busy { retry_after_ms: 10 }),
                                )),
                                Ok(true) => {
                                    let reply = cluster_reply(
                                        &self.shared,
                                        front,
                                        (idx, conn.generation),
                                        (request_id, frame.header().partition()),
                                        Answer::Done,
                                    );
                                    conn.in_flight += 1;
                                    request.submit(&front.driver, reply);
                                    conn.start += len;
                                    conn.partial_since = None;
                                    continue;
                                }
                            }
                        }
                    }
                }
                OpClass::Subscription if opcode == Opcode::TopicSubscribe => Some(match frame.decode(&limits) {
                    Ok(Payload::TopicSubscribe(n)) => {
                        // A name bound to another type could never get a message.
                        let bound = self
                            .shared
                            .state
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .type_of(n.name);
                        match bound {
                            Some(found) if found != "Topic" => error_frame(
                                request_id,
                                ErrorCode::WrongType,
                                crate::state::wrong_type(found, "Topic"),
                            ),
                            _ => {
                                let id = self.next_subscription;
                                self.next_subscription += 1;
                                let generation = conn.generation;
                                conn.subscriptions += 1;
                                self.topics.entry(n.name.into()).or_default().push(Subscription {
                                    id,
                                    conn: idx,
                                    generation,
                                    dropped: 0,
                                });
                                response_frame(request_id, 0, &Response::Ok(OkBody::Count(id)))
                            }
                        }
                    }
                    _ => error_frame(request_id, ErrorCode::Malformed, "bad subscribe"),
                }),
                OpClass::Subscription if opcode == Opcode::TopicUnsubscribe => Some(match frame.decode(&limits) {
                    Ok(Payload::TopicUnsubscribe(u)) => {
                        let generation = conn.generation;
                        let mut found = false;
                        for subs in self.topics.values_mut() {
                            let before = subs.len();
                            subs.retain(|s| {
                                !(s.id == u.subscription_id && s.conn == idx && s.generation == generation)
                            });
                            found |= subs.len() != before;
                        }
                        self.topics.retain(|_, subs| !subs.is_empty());
                        if found {
                            conn.subscriptions -= 1;
                        }
                        response_frame(request_id, 0, &Response::Ok(OkBody::Bool(found)))
                    }
                    _ => error_frame(request_id, ErrorCode::Malformed, "bad unsubscribe"),
                }),
                OpClass::Reserved => Some(error_frame(
                    request_id,
                    ErrorCode::Unsupported,
                    "CP sessions, locks and semaphores are not supported yet",
                )),
                OpClass::Push | OpClass::Response => Some(error_frame(
                    request_id,
                    ErrorCode::Malformed,
                    "clients do not send this opcode",
                )),
                _ => Some(error_frame(
                    request_id,
                    ErrorCode::Unsupported,
                    "not supported by this node yet",
                )),
            };
            if let Some(reply) = inline {
                let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                    return Step::Close;
                };
                conn.start += len;
                conn.partial_since = None;
                conn.out.push_back(reply);
                self.flush(idx);
                continue;
            }
            if let Some(front) = &self.cluster {
                let busy = conn.in_flight as usize + conn.out.len() >= in_flight_max as usize;
                // A waiting poll proposed because its queue holds an item
                // now: should another consumer take the item first, it is
                // parked for the rest of its wait, like a woken one.
                let mut waits_if_beaten = None;
                if !busy && opcode == Opcode::QueuePoll {
                    if let Some((queue, wait, empty)) = leader_poll_waits(&self.shared, &front.driver, &frame) {
                        let deadline = Instant::now() + wait;
                        let place = take_place(&mut self.next_place);
                        if !empty {
                            waits_if_beaten = Some((queue, deadline, place));
                        } else {
                            // Held at the leader until an item arrives or
                            // the wait ends; counted in flight until
                            // answered.
                            conn.in_flight += 1;
                            conn.start += len;
                            conn.partial_since = None;
                            self.parked.entry(queue).or_default().push_back(ParkedPoll {
                                conn: idx,
                                generation: conn.generation,
                                frame: frame.bytes().to_vec(),
                                deadline,
                                place,
                            });
                            continue;
                        }
                    }
                }
                let is_read = opcode.class() == OpClass::Read;
                if is_read && !busy && front.driver.lease().published() {
                    // Under the leader lease a read needs no round through
                    // the driver: it is answered here, like a single node's
                    // (whether the lease holds is checked, with the clock,
                    // under the lock; a follower has none published and
                    // does not lock).
                    let buf = self.spare.pop().unwrap_or_default();
                    let at = *now.get_or_insert_with(now_ms);
                    if let Some(bytes) = read_under_lease(&self.shared, &frame, buf, at, front.driver.lease()) {
                        conn.start += len;
                        conn.partial_since = None;
                        conn.out.push_back(bytes);
                        continue;
                    }
                }
                if busy || !self.shared.backpressure.try_admit() {
                    conn.stalled = true;
                    conn.partial_since = None;
                    if !busy && conn.in_flight == 0 && !self.stalled.contains(&idx) {
                        self.stalled.push(idx);
                    }
                    if busy {
                        self.flush(idx);
                    }
                    return Step::Pause;
                }
                let bytes: Arc<[u8]> = Arc::from(frame.bytes());
                let reply = cluster_reply(
                    &self.shared,
                    front,
                    (idx, conn.generation),
                    (request_id, frame.header().partition()),
                    match waits_if_beaten {
                        _ if is_read => Answer::Read(Arc::clone(&bytes)),
                        Some((queue, deadline, place)) => Answer::Parked {
                            queue,
                            frame: frame.bytes().to_vec(),
                            deadline,
                            place,
                        },
                        None => Answer::Applied,
                    },
                );
                conn.start += len;
                conn.partial_since = None;
                conn.in_flight += 1;
                if is_read {
                    front.driver.read(reply);
                } else {
                    front.driver.propose(bytes, reply);
                }
                continue;
            }
            if self.jobs.is_empty() && conn.in_flight as usize + conn.out.len() >= in_flight_max as usize {
                conn.stalled = true;
                conn.partial_since = None;
                // Writing the answers is what lets this connection go on.
                self.flush(idx);
                return Step::Pause;
            }
            if self.jobs.is_empty() {
                // No worker pool: apply on the loop thread, in order.
                let buf = self.spare.pop().unwrap_or_default();
                let at = *now.get_or_insert_with(now_ms);
                let result = execute_frame(&self.shared, &frame, buf, at, true);
                conn.start += len;
                conn.partial_since = None;
                if result.parked.is_some() {
                    // Counted in flight until it is answered.
                    conn.in_flight += 1;
                    let frame_bytes = frame.bytes().to_vec();
                    self.park(idx, frame_bytes, result);
                } else {
                    conn.out.push_back(result.bytes);
                    self.after_execute(result.publication, result.offered);
                }
                continue;
            }
            // Requests being applied and answers not yet written both count
            // as in flight: a client that pipelines without reading stops
            // being read (TCP pushes back) instead of growing our memory.
            let busy = conn.in_flight as usize + conn.out.len() >= in_flight_max as usize;
            // Between the watermarks, a connection with work queued waits.
            if busy || level == Level::Throttle && conn.in_flight > 0 || !self.shared.backpressure.try_admit() {
                conn.stalled = true;
                // Waiting on us, not on the client: no frame deadline.
                conn.partial_since = None;
                // A connection with answers pending is retried when they are
                // delivered or written; one refused by admission alone is
                // retried when the load falls.
                if !busy && conn.in_flight == 0 && !self.stalled.contains(&idx) {
                    self.stalled.push(idx);
                }
                return Step::Pause;
            }
            let job = Job {
                conn: idx,
                generation: conn.generation,
                frame: frame.bytes().to_vec(),
            };
            conn.start += len;
            conn.partial_since = None;
            conn.in_flight += 1;
            let worker = idx % self.jobs.len().max(1);
            match self.jobs.get(worker).map(|tx| tx.try_send(job)) {
                Some(Ok(())) => {}
                // Admission bounds every queue to its capacity, so a full
                // or missing queue means the workers are gone (shutdown).
                _ => {
                    self.shared.backpressure.complete();
                    return Step::Close;
                }
            }
        }
    }

    /// Moves worker responses to their connections and writes them.
    fn deliver(&mut self) {
        // An acquiring swap: a worker that saw the flag set (and so did not
        // wake the loop) sent its response before setting it, so the drain
        // below sees that response.
        self.shared.wake_pending.swap(false, Ordering::AcqRel);
        let effects = std::mem::take(&mut *self.shared.effects.lock().unwrap_or_else(|p| p.into_inner()));
        // Every answer sent before those effects were recorded is in the
        // channel by now. Polls to park (again) are parked before the
        // effects' offers wake parked polls: a poll whose empty turn came
        // before an offer is then waiting, in its place, for that offer.
        let mut answers = std::mem::take(&mut self.answers);
        while let Ok(done) = self.done.try_recv() {
            match done.frame {
                Some(frame) => {
                    if self.conn(done.conn).is_some_and(|c| c.generation == done.generation) {
                        // Parked: stays in flight until an item or its
                        // deadline.
                        self.park(done.conn, frame, done.result);
                    }
                }
                None => answers.push(done),
            }
        }
        for (publication, offered) in effects {
            self.after_execute(publication, offered);
        }
        // Answers are queued first and each connection written once: at
        // pipeline depth 16 that is one write for up to 16 answers, not one
        // each.
        let mut answered = std::mem::take(&mut self.answered);
        for done in answers.drain(..) {
            let Some(conn) = self.conn(done.conn) else { continue };
            if conn.generation != done.generation {
                continue;
            }
            conn.in_flight -= 1;
            conn.out.push_back(done.result.bytes);
            if !conn.answered {
                conn.answered = true;
                answered.push(done.conn);
            }
            self.after_execute(done.result.publication, done.result.offered);
        }
        for idx in answered.drain(..) {
            let Some(conn) = self.conn(idx) else { continue };
            conn.answered = false;
            let was_stalled = conn.stalled;
            self.flush(idx);
            if was_stalled && !self.stalled.contains(&idx) {
                self.stalled.push(idx);
            }
        }
        self.answers = answers;
        self.answered = answered;
    }

    /// Pushes a publication and runs polls parked on an offered queue.
    fn after_execute(&mut self, publication: Option<Publication>, offered: Option<Box<str>>) {
        if let Some(p) = publication {
            self.fan_out(&p);
        }
        if let Some(queue) = offered {
            self.retry_parked(&queue);
        }
    }

    fn park(&mut self, conn: usize, frame: Vec<u8>, result: Executed) {
        let Some(Wait { queue, wait, place }) = result.parked else {
            return;
        };
        let Some(generation) = self.conn(conn).map(|c| c.generation) else {
            return;
        };
        // An item offered since the poll found its queue empty (on a
        // worker, or while the poll was in the log) may already have been
        // handed to the polls parked before it, or to none: look again.
        let items = self
            .shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue_len(&queue)
            > 0;
        let retry = items.then(|| queue.clone());
        let place = match place {
            Some(place) => {
                self.polls_parked_again += 1;
                place
            }
            None => take_place(&mut self.next_place),
        };
        let poll = ParkedPoll {
            conn,
            generation,
            frame,
            deadline: Instant::now() + wait,
            place,
        };
        park_in_place(self.parked.entry(queue).or_default(), poll);
        if let Some(queue) = retry {
            self.retry_parked(&queue);
        }
    }

    /// Runs the polls parked on `queue`, oldest first, while items last.
    /// They run on the loop thread: a brief hold of the state lock. In
    /// cluster mode they are proposed instead, as many as the queue holds
    /// items.
    fn retry_parked(&mut self, queue: &str) {
        if self.cluster.is_some() {
            return self.propose_parked(queue);
        }
        let Some(mut waiting) = self.parked.remove(queue) else {
            return;
        };
        while let Some(poll) = waiting.pop_front() {
            if self.conn(poll.conn).is_none_or(|c| c.generation != poll.generation) {
                continue;
            }
            let result = execute(&self.shared, &poll.frame, Vec::new());
            if result.parked.is_some() {
                waiting.push_front(poll);
                break;
            }
            if let Some(conn) = self.conn(poll.conn) {
                conn.in_flight -= 1;
                conn.out.push_back(result.bytes);
            }
            self.flush(poll.conn);
        }
        if !waiting.is_empty() {
            self.parked.insert(queue.into(), waiting);
        }
    }

    /// Cluster mode: proposes the oldest polls parked on `queue`, one per
    /// item the queue holds here. A poll proposed this way that finds the
    /// item taken by another consumer first is parked again for the rest of
    /// its wait (an empty poll changes nothing, and the state machine does
    /// not remember it, so proposing the same frame again polls again).
    fn propose_parked(&mut self, queue: &str) {
        let Some(front) = &self.cluster else { return };
        let Some(mut waiting) = self.parked.remove(queue) else {
            return;
        };
        let mut items = self
            .shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue_len(queue);
        while items > 0 {
            let Some(poll) = waiting.pop_front() else { break };
            let Some(conn) = self.conns.get(poll.conn).and_then(Option::as_ref) else {
                continue;
            };
            if conn.generation != poll.generation {
                continue;
            }
            if !self.shared.backpressure.try_admit() {
                waiting.push_front(poll);
                break;
            }
            let entry: Arc<[u8]> = Arc::from(&poll.frame[..]);
            let reply = cluster_reply(
                &self.shared,
                front,
                (poll.conn, poll.generation),
                (request_id_of(&poll.frame), 0),
                Answer::Parked {
                    queue: queue.into(),
                    frame: poll.frame,
                    deadline: poll.deadline,
                    place: poll.place,
                },
            );
            front.driver.propose(entry, reply);
            items -= 1;
        }
        if !waiting.is_empty() {
            self.parked.insert(queue.into(), waiting);
        }
    }

    /// Answers parked polls whose wait ran out: no item. In cluster mode,
    /// once this node is no longer the leader, answers every parked poll
    /// with a redirect to the new leader (NO_LEADER while there is none):
    /// offers now commit there, so its client polls again there.
    fn expire_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        let handoff = self.cluster.as_ref().and_then(|front| {
            let summary = front.driver.summary();
            (summary.role != Some(loomcache_consensus::Role::Leader))
                .then(|| ((summary.leader != 0).then_some(summary.leader), Arc::clone(&front.book)))
        });
        let mut answers = Vec::new();
        for waiting in self.parked.values_mut() {
            waiting.retain(|poll| {
                let request_id = request_id_of(&poll.frame);
                let answer = if poll.deadline <= now {
                    response_frame(request_id, 0, &Response::Ok(OkBody::Value(None)))
                } else if let Some((leader, book)) = &handoff {
                    not_leader_frame(request_id, 0, *leader, book)
                } else {
                    return true;
                };
                answers.push((poll.conn, poll.generation, answer));
                false
            });
        }
        self.parked.retain(|_, w| !w.is_empty());
        for (idx, generation, answer) in answers {
            let Some(conn) = self.conn(idx) else { continue };
            if conn.generation != generation {
                continue;
            }
            conn.in_flight -= 1;
            conn.out.push_back(answer);
            self.flush(idx);
        }
    }

    /// Pushes a published message to every subscriber of its topic. A
    /// subscriber whose connection already holds `subscriber_queue_max`
    /// unwritten frames misses it; the next message it gets says how many
    /// it missed. A slow subscriber never blocks the node or the publisher.
    fn fan_out(&mut self, p: &Publication) {
        let Some(mut subs) = self.topics.remove(&p.topic) else {
            return;
        };
        let max = self.config.subscriber_queue_max as usize;
        // Answers queued in this delivery and not yet written (`deliver`)
        // must not count against a subscriber's bound: write them first.
        for sub in &subs {
            let answered = self
                .conns
                .get(sub.conn)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.answered && c.generation == sub.generation);
            if answered {
                self.flush(sub.conn);
            }
        }
        let mut targets = Vec::new();
        subs.retain_mut(|sub| {
            let Some(conn) = self.conns.get_mut(sub.conn).and_then(Option::as_mut) else {
                return false;
            };
            if conn.generation != sub.generation {
                return false;
            }
            if conn.out.len() >= max {
                sub.dropped += 1;
                return true;
            }
            let message = loomcache_wire::TopicMessage {
                subscription_id: sub.id,
                sequence: p.sequence,
                dropped: sub.dropped,
                topic: &p.topic,
                message: &p.message,
            };
            let payload = Payload::TopicMessage(message);
            let mut frame = vec![0u8; loomcache_wire::frame_len(None, &payload)];
            if loomcache_wire::encode_frame(
                &mut frame,
                &HeaderFields::request(Opcode::TopicMessage, 0),
                None,
                &payload,
            )
            .is_ok()
            {
                conn.out.push_back(frame);
                sub.dropped = 0;
                targets.push(sub.conn);
            }
            true
        });
        if !subs.is_empty() {
            self.topics.insert(p.topic.clone(), subs);
        }
        for idx in targets {
            self.flush(idx);
        }
    }

    fn retry_stalled(&mut self) {
        if self.shared.backpressure.is_paused() {
            return;
        }
        for idx in std::mem::take(&mut self.stalled) {
            if let Some(conn) = self.conn(idx) {
                conn.stalled = false;
                self.read(idx);
            }
        }
    }

    /// Writes queued output until done or the socket would block.
    fn flush(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        while let Some(front) = conn.out.front() {
            let result = if conn.out.len() == 1 {
                // One answer (the common case at pipeline depth 1): a plain
                // write, without building an I/O vector.
                conn.stream.write(&front[conn.out_offset..])
            } else {
                let mut slices = [IoSlice::new(&[]); IOV_MAX];
                let mut n = 0;
                for (i, buf) in conn.out.iter().take(IOV_MAX).enumerate() {
                    slices[i] = IoSlice::new(if i == 0 { &buf[conn.out_offset..] } else { buf });
                    n += 1;
                }
                conn.stream.write_vectored(&slices[..n])
            };
            match result {
                Ok(0) => {
                    self.close(idx);
                    return;
                }
                Ok(mut written) => {
                    while written > 0 {
                        let front = conn.out.front().map_or(0, |b| b.len() - conn.out_offset);
                        if written >= front {
                            written -= front;
                            if let Some(done) = conn.out.pop_front() {
                                // Keep answer buffers for reuse, a bounded number.
                                if self.spare.len() < SPARE_BUFFERS_MAX && done.capacity() <= SPARE_BUFFER_BYTES_MAX {
                                    self.spare.push(done);
                                }
                            }
                            conn.out_offset = 0;
                        } else {
                            conn.out_offset += written;
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(idx);
                    return;
                }
            }
        }
        if conn.stalled
            && conn.out.len() <= self.config.in_flight_per_connection_max as usize / 2
            && !self.stalled.contains(&idx)
        {
            self.stalled.push(idx);
        }
        let want_write = !conn.out.is_empty();
        if want_write != conn.writable_registered {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(idx + FIRST_CONN), interest);
            conn.writable_registered = want_write;
        }
        if conn.out.is_empty() && conn.closing {
            self.close(idx);
        }
    }

    fn close_after_flush(&mut self, idx: usize) {
        if let Some(conn) = self.conn(idx) {
            conn.closing = true;
        }
        self.flush(idx);
    }

    fn close(&mut self, idx: usize) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(Option::take) else {
            return;
        };
        let generation = conn.generation;
        for subs in self.topics.values_mut() {
            subs.retain(|s| !(s.conn == idx && s.generation == generation));
        }
        self.topics.retain(|_, subs| !subs.is_empty());
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.open -= 1;
        if let Some(n) = self.per_ip.get_mut(&conn.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&conn.peer);
            }
        }
        self.free.push(idx);
    }

    fn enforce_deadlines(&mut self) {
        let idle = Duration::from_millis(self.config.idle_timeout_ms);
        let deadline = Duration::from_millis(self.config.frame_deadline_ms);
        for idx in 0..self.conns.len() {
            let Some(conn) = self.conn(idx) else { continue };
            if conn.partial_since.is_some_and(|t| t.elapsed() > deadline) {
                conn.out
                    .push_back(error_frame(0, ErrorCode::Timeout, "frame not completed in time"));
                self.close_after_flush(idx);
            } else if conn.in_flight == 0
                && conn.out.is_empty()
                && conn.subscriptions == 0
                && conn.last_active.elapsed() > idle
            {
                self.close(idx);
            }
        }
    }
}

/// Waiting polls, for `NODE_INFO`.
struct WaitingPolls {
    /// Polls parked now.
    parked: usize,
    /// Polls parked again after another consumer took the item they were
    /// proposed for, since start.
    parked_again: u64,
}

/// `NODE_INFO`: statistics as name/value pairs.
fn node_info(
    request_id: u64,
    shared: &Shared,
    config: &Config,
    cluster: Option<&ClusterFront>,
    open: u32,
    topics: &HashMap<Box<str>, Vec<Subscription>>,
    polls: WaitingPolls,
) -> Vec<u8> {
    let (memory_used, structures, applied) = {
        let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.memory_used(), state.structure_count(), state.applied())
    };
    let subscriptions: usize = topics.values().map(Vec::len).sum();
    let mode = if config.cluster.is_some() {
        "cluster member"
    } else {
        "memory-only single node"
    };
    let mut peer_pairs: Vec<(String, String)> = Vec::new();
    let mut pairs: Vec<(&str, String)> = vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("node_id", config.node_id.to_string()),
        ("mode", mode.to_string()),
        // Cluster mode applies on the Raft driver's thread, not workers.
        (
            "workers",
            if config.cluster.is_some() { 0 } else { config.workers }.to_string(),
        ),
        ("connections", open.to_string()),
        ("connections_max", config.connections_max.to_string()),
        ("work_queued", shared.backpressure.queued().to_string()),
        ("work_queue_high", config.work_queue_high.to_string()),
        ("data_memory_used_bytes", memory_used.to_string()),
        ("data_memory_max_bytes", config.state.data_memory_max_bytes.to_string()),
        ("structures", structures.to_string()),
        ("writes_applied", applied.to_string()),
        ("topic_subscriptions", subscriptions.to_string()),
        ("parked_polls", polls.parked.to_string()),
        ("polls_parked_again", polls.parked_again.to_string()),
    ];
    if let Some(front) = cluster {
        let r = front.driver.summary();
        let role = match r.role {
            Some(loomcache_consensus::Role::Leader) => "leader",
            Some(loomcache_consensus::Role::Candidate) => "candidate",
            Some(loomcache_consensus::Role::PreCandidate) => "pre-candidate",
            Some(loomcache_consensus::Role::Follower) => "follower",
            None => "starting",
        };
        pairs.extend([
            ("raft_role", role.to_string()),
            ("raft_term", r.term.to_string()),
            ("raft_leader", r.leader.to_string()),
            ("raft_commit", r.commit.to_string()),
            ("raft_applied", r.applied.to_string()),
            ("raft_last_index", r.last_index.to_string()),
            ("raft_snapshot_handovers", r.snapshot_handovers.to_string()),
            (
                "raft_snapshot_writing_ms",
                r.snapshot_writing_since
                    .map_or(0, |since| since.elapsed().as_millis() as u64)
                    .to_string(),
            ),
            ("log_flushes", r.log_flush.rounds.to_string()),
            ("log_flush_us_total", r.log_flush.micros.to_string()),
            ("log_flush_us_max", r.log_flush.max_micros.to_string()),
        ]);
        let view = front.driver.membership();
        let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        pairs.extend([
            (
                "raft_leader_addr",
                front
                    .book
                    .client_addr(r.leader)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            ),
            ("raft_voters", ids(&view.conf.voters)),
            ("raft_learners", ids(&view.conf.learners)),
            ("raft_voters_outgoing", ids(&view.conf.voters_outgoing)),
            ("members", front.book.render()),
            (
                "members_recorded",
                front
                    .book
                    .records()
                    .iter()
                    .map(|(id, r)| format!("{id}={:016x}", r.incarnation))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("incarnation", format!("{:016x}", front.incarnation)),
        ]);
        let stats = front.transport.stats();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
        pairs.extend([
            ("peer_frames_sent", count(&stats.frames_sent)),
            ("peer_frames_dropped", count(&stats.frames_dropped)),
            ("peer_messages_received", count(&stats.messages_received)),
            ("peer_connections_established", count(&stats.connections_established)),
            ("peer_connections_rejected", count(&stats.connections_rejected)),
            ("peer_incarnation_refusals", count(&stats.incarnation_refusals)),
        ]);
        // On the leader: how far each member has replicated.
        for p in &view.peers {
            peer_pairs.push((format!("peer_{}_matched", p.id), p.matched.to_string()));
            peer_pairs.push((
                format!("peer_{}_lag", p.id),
                r.last_index.saturating_sub(p.matched).to_string(),
            ));
            peer_pairs.push((format!("peer_{}_next", p.id), p.next.to_string()));
            peer_pairs.push((format!("peer_{}_state", p.id), format!("{:?}", p.state).to_lowercase()));
        }
    }
    let entries: Vec<loomcache_wire::KeyValue<'_>> = pairs
        .iter()
        .map(|(k, v)| (*k, v))
        .chain(peer_pairs.iter().map(|(k, v)| (k.as_str(), v)))
        .map(|(k, v)| loomcache_wire::KeyValue {
            key: k.as_bytes(),
            value: v.as_bytes(),
        })
        .collect();
    response_frame(
        request_id,
        0,
        &Response::Ok(OkBody::Entries(loomcache_wire::Seq::Items(&entries))),
    )
}

/// `PARTITION_TABLE_REQUEST`: the group of every partition, each group's
/// leader, term and replicas, and every member's client address, for
/// clients that route by partition. Every partition maps to group 0 (one
/// group over all members). The revision is the term in the high 32 bits
/// and the index of the newest applied membership change in the low ones,
/// so it grows with every leader change and membership change; a single
/// memory-only node answers revision 1. A request naming the current
/// revision gets the same revision with no partitions, groups or members.
fn partition_table(
    frame: &loomcache_wire::Frame<'_>,
    limits: &Limits,
    config: &Config,
    cluster: Option<&ClusterFront>,
) -> Vec<u8> {
    use loomcache_wire::{encode_frame, frame_len, GroupInfo, LeU32, LeU64, Member as TableMember, PartitionTable};
    let request_id = frame.request_id();
    let Ok(Payload::PartitionTableRequest(request)) = frame.decode(limits) else {
        return error_frame(request_id, ErrorCode::Malformed, "bad partition table request");
    };
    let (revision, leader, term, mut replicas, members) = match cluster {
        Some(front) => {
            let view = front.driver.membership();
            let replicas: Vec<u64> = view.conf.voters.iter().chain(&view.conf.learners).copied().collect();
            let members = front
                .book
                .members()
                .iter()
                .map(|m| (m.id, m.client_addr.to_string()))
                .collect();
            (
                (view.term << 32) | (view.conf_index & 0xFFFF_FFFF),
                view.leader,
                view.term,
                replicas,
                members,
            )
        }
        None => (
            1,
            config.node_id,
            0,
            vec![config.node_id],
            vec![(config.node_id, config.listen_addr.to_string())],
        ),
    };
    replicas.sort_unstable();
    replicas.dedup();
    let current = request.known_revision == revision;
    let partition_groups: Vec<LeU32> = if current {
        Vec::new()
    } else {
        vec![LeU32::new(0); usize::from(loomcache_wire::PARTITION_COUNT)]
    };
    let replica_ids: Vec<LeU64> = replicas.into_iter().map(LeU64::new).collect();
    let groups = [GroupInfo {
        group: 0,
        leader,
        term,
        replicas: &replica_ids,
    }];
    let table_members: Vec<TableMember<'_>> = members
        .iter()
        .map(|(id, addr)| TableMember {
            node_id: *id,
            client_addr: addr,
        })
        .collect();
    let payload = Payload::PartitionTableResponse(PartitionTable {
        revision,
        partition_groups: &partition_groups,
        groups: loomcache_wire::Seq::Items(if current { &[] } else { &groups }),
        members: loomcache_wire::Seq::Items(if current { &[] } else { &table_members }),
    });
    let mut out = vec![0u8; frame_len(None, &payload)];
    let fields = HeaderFields::request(Opcode::PartitionTableResponse, request_id);
    match encode_frame(&mut out, &fields, None, &payload) {
        Ok(_) => out,
        Err(e) => error_frame(request_id, ErrorCode::Internal, &e.to_string()),
    }
}

/// Answers `HELLO`: the highest version both sides speak.
fn hello(frame: &loomcache_wire::Frame<'_>, config: &Config) -> Vec<u8> {
    let request_id = frame.request_id();
    let Ok(Payload::Hello(h)) = frame.decode(&config.limits) else {
        return error_frame(request_id, ErrorCode::Malformed, "bad hello");
    };
    let version = PROTOCOL_VERSION.min(h.version_max);
    if version < PROTOCOL_VERSION_MIN.max(h.version_min) {
        return error_frame(
            request_id,
            ErrorCode::UnsupportedVersion,
            "no protocol version in common",
        );
    }
    let ack = HelloAck {
        version,
        features: 0,
        node_id: config.node_id,
        client_id: h.client_id,
        payload_max_bytes: config.limits.payload_max_bytes,
        in_flight_max: config.in_flight_per_connection_max,
    };
    response_frame(request_id, 0, &Response::Ok(OkBody::HelloAck(ack)))
}

/// The state machine as the Raft driver sees it: committed entries are
/// client frames, applied at the leader's timestamp. Snapshots carry the
/// address book ahead of the state, and membership changes keep the book
/// and the peer transport current.
struct ClusterMachine {
    shared: Arc<Shared>,
    book: Arc<AddressBook>,
    transport: Arc<Transport>,
    /// The configuration in force at the point of the log applied last.
    conf: ConfState,
}

impl ClusterMachine {
    /// Hands the transport the book's peers and records.
    fn publish_peers(&self) {
        self.transport.set_peers(self.book.peers(), self.book.records());
    }

    /// A committed `CLUSTER_RECORD_MEMBER`: the book keeps the first
    /// incarnation recorded for a member of the configuration in force,
    /// and the transport checks peers against it from now on. `None` for
    /// any other entry.
    fn apply_record(&self, entry: &Entry) -> Option<Vec<u8>> {
        use zerocopy::FromBytes;
        let data = &entry.data;
        // Every committed write passes here: a look at the opcode field
        // only; the state machine validates the frames it takes.
        let (header, _) = loomcache_wire::FrameHeader::ref_from_prefix(data).ok()?;
        if header.opcode_raw() != Opcode::ClusterRecordMember.code() {
            return None;
        }
        let limits = &self.shared.limits;
        let record = match parse_frame(data, limits) {
            Ok(Parsed::Frame(frame)) => match frame.decode(limits) {
                Ok(Payload::ClusterRecordMember(r)) => r,
                _ => return Some(error_frame(0, ErrorCode::Malformed, "bad member record")),
            },
            _ => return Some(error_frame(0, ErrorCode::Malformed, "bad member record")),
        };
        if self
            .book
            .record(record.node_id, record.incarnation, entry.index, &self.conf)
        {
            tracing::info!(
                node = record.node_id,
                incarnation = format_args!("{:016x}", record.incarnation),
                index = entry.index,
                "member's data directory recorded"
            );
            self.publish_peers();
        }
        Some(response_frame(0, 0, &Response::Ok(OkBody::Empty)))
    }
}

impl Replicated for ClusterMachine {
    fn apply(&mut self, entry: &Entry) -> Vec<u8> {
        if let Some(answer) = self.apply_record(entry) {
            return answer;
        }
        let executed = execute_at(&self.shared, &entry.data, Vec::new(), entry.timestamp_ms, false);
        if executed.publication.is_some() || executed.offered.is_some() {
            self.shared
                .effects
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((executed.publication, executed.offered));
            if !self.shared.wake_pending.swap(true, Ordering::AcqRel) {
                let _ = self.shared.waker.wake();
            }
        }
        executed.bytes
    }

    fn snapshot_size_hint(&self) -> usize {
        let state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        usize::try_from(state.memory_used()).unwrap_or(usize::MAX)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.freeze()()
    }

    /// The address book and a view of the state machine with its map
    /// values shared; the values are copied in when the snapshot is
    /// finished, off the driver's thread.
    fn freeze(&self) -> SnapshotFinish {
        let members = self.book.render();
        let records = self.book.records();
        let view = self
            .shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot_view();
        Box::new(move || members::encode_envelope_with(&members, &records, |out| view.finish_into(out)))
    }

    fn restore(&mut self, data: &[u8]) {
        // A snapshot that passed its checksums but does not load is a bug
        // or corruption the node cannot serve through.
        let (book, state_bytes) =
            members::decode_envelope(data).unwrap_or_else(|e| panic!("cannot load the snapshot: {e}"));
        if !book.members.is_empty() {
            self.book.replace(&book);
            self.publish_peers();
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = state.restore(state_bytes) {
            panic!("cannot load the state machine snapshot: {e}");
        }
    }

    fn conf_reset(&mut self, conf: &ConfState) {
        self.conf = conf.clone();
    }

    fn conf_entry(&mut self, _change: &ConfChange, conf: &ConfState) {
        self.book.follow_change(&self.conf, conf);
        self.conf = conf.clone();
    }

    /// A learner becomes a voter only once its directory is recorded.
    fn promotable(&self, id: u64) -> bool {
        self.book.is_recorded(id)
    }

    /// The records are known once the log applied again: the transport
    /// starts linking peers, checked against them.
    fn replayed(&mut self) {
        self.publish_peers();
        self.transport.records_known();
    }

    fn conf_changed(&mut self, change: &ConfChange, conf: &ConfState) {
        if let Some(joining) = members::member_from_context(&change.context) {
            self.book.insert(joining);
        }
        self.book.retain_members_of(conf);
        self.publish_peers();
        tracing::info!(voters = ?conf.voters, learners = ?conf.learners, outgoing = ?conf.voters_outgoing, "membership changed");
    }
}

/// A membership request from a client, checked against the current
/// configuration before it reaches the driver.
#[derive(Debug, Clone, Copy)]
enum MembershipRequest {
    Join(crate::config::Member),
    Leave(u64),
    Transfer(u64),
}

fn membership_request(frame: &loomcache_wire::Frame<'_>, limits: &Limits) -> Result<MembershipRequest, String> {
    let parse = |what: &str, text: &str| -> Result<SocketAddr, String> {
        text.parse()
            .map_err(|_| format!("{what} {text:?} is not an ip:port address"))
    };
    match frame.decode(limits).map_err(|e| e.to_string())? {
        Payload::ClusterJoin(j) => Ok(MembershipRequest::Join(crate::config::Member {
            id: j.node_id,
            client_addr: parse("client address", j.client_addr)?,
            peer_addr: parse("peer address", j.peer_addr)?,
        })),
        Payload::ClusterLeave(l) => Ok(MembershipRequest::Leave(l.node_id)),
        Payload::ClusterTransferLeader(t) => Ok(MembershipRequest::Transfer(t.node_id)),
        _ => Err("not a membership request".into()),
    }
}

impl MembershipRequest {
    /// Refuses what cannot be done in `conf`; the core re-checks when it
    /// proposes (the configuration may change in between). `Ok(false)`:
    /// the change is already in effect (adding a member that is one with
    /// the same addresses), so a retried add succeeds without a change.
    fn check(&self, conf: &ConfState, book: &AddressBook) -> Result<bool, String> {
        let member = |id: u64| conf.voters.contains(&id) || conf.learners.contains(&id);
        match *self {
            MembershipRequest::Join(m) if m.id == 0 => Err("node id 0 is reserved".into()),
            MembershipRequest::Join(m) if member(m.id) => match book.members().into_iter().find(|b| b.id == m.id) {
                Some(known) if known == m => Ok(false),
                Some(known) => Err(format!(
                    "node {} is already a member, with client address {} and peer address {}",
                    m.id, known.client_addr, known.peer_addr
                )),
                None => Err(format!("node {} is already a member", m.id)),
            },
            MembershipRequest::Leave(id) if !member(id) => Err(format!("node {id} is not a member")),
            MembershipRequest::Leave(id) if conf.voters == [id] => Err("the last voter cannot be removed".into()),
            MembershipRequest::Transfer(id) if !conf.voters.contains(&id) => Err(format!("node {id} is not a voter")),
            _ if conf.is_joint() => Err("a membership change is still in progress; retry".into()),
            _ => Ok(true),
        }
    }

    fn submit(self, driver: &DriverHandle, reply: crate::raft::Reply) {
        use loomcache_consensus::ConfChangeItem;
        match self {
            MembershipRequest::Join(m) => driver.change_membership(
                ConfChange {
                    items: vec![ConfChangeItem::AddLearner(m.id)],
                    context: members::render([m]).into_bytes(),
                },
                reply,
            ),
            MembershipRequest::Leave(id) => driver.change_membership(
                ConfChange {
                    items: vec![ConfChangeItem::Remove(id)],
                    context: Vec::new(),
                },
                reply,
            ),
            MembershipRequest::Transfer(id) => driver.transfer_leader(id, reply),
        }
    }
}

/// Opens the group's storage, starts the peer transport and the Raft
/// driver.
fn start_cluster(
    config: &Config,
    cluster: &ClusterConfig,
    shared: &Arc<Shared>,
) -> io::Result<(Driver, Arc<Transport>, Arc<AddressBook>, u64)> {
    let me = cluster
        .member(config.node_id)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "this node is not a cluster member"))?;
    // A joining node starts with no configuration: it learns the group's
    // from the leader's snapshot.
    let initial_voters = if cluster.join {
        Vec::new()
    } else {
        cluster.members.iter().map(|m| m.id).collect()
    };
    let mut driver_config = DriverConfig::new(config.node_id, 0, cluster.dir_for(config.node_id), initial_voters);
    driver_config.tick = Duration::from_millis(cluster.tick_ms);
    driver_config.snapshot_every_entries = cluster.snapshot_every_entries;
    driver_config.snapshot_every_bytes = cluster.snapshot_every_bytes;
    driver_config.raft.election_timeout_ticks = cluster.election_timeout_ticks;
    driver_config.raft.heartbeat_interval_ticks = cluster.heartbeat_interval_ticks;
    driver_config.raft.lease_margin_ticks = cluster.lease_margin_ticks;
    driver_config.raft.seed = config.node_id ^ now_ms();
    if !cluster.fsync {
        driver_config.log.persist = loomcache_log::PersistMode::None;
    }
    // Written before anything else in the directory, so the group never
    // holds entries a member acknowledged under an unrecorded incarnation.
    let incarnation = crate::raft::incarnation::load_or_create(&cluster.dir_for(config.node_id))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let (handle, inbox) = Driver::inbox_pair(driver_config.inbox_max);
    let book = Arc::new(AddressBook::new(*me, &cluster.members));
    let mut transport_config = TransportConfig::new(config.node_id, me.peer_addr, book.peers());
    // A peer frame carries whole client frames plus Raft framing.
    transport_config.limits.payload_max_bytes = transport_config
        .limits
        .payload_max_bytes
        .max(config.limits.payload_max_bytes.saturating_mul(2));
    transport_config.state_fingerprint = StateConfig {
        limits: config.limits,
        ..config.state
    }
    .fingerprint();
    transport_config.incarnation = incarnation;
    // No peer is linked before the records in the snapshot and the log are
    // applied again (`ClusterMachine::replayed`).
    transport_config.records_known = false;
    let deliver = handle.clone();
    let transport = Arc::new(Transport::start(transport_config, move |m| deliver.deliver(m))?);
    let machine = ClusterMachine {
        shared: Arc::clone(shared),
        book: Arc::clone(&book),
        transport: Arc::clone(&transport),
        conf: ConfState::default(),
    };
    let dir = cluster.dir_for(config.node_id);
    let driver =
        Driver::start_on(driver_config, machine, Some(Arc::clone(&transport)), handle, inbox).map_err(|e| {
            use crate::raft::{DriverError, RaftStorageError};
            match &e {
                DriverError::Storage(RaftStorageError::Log(loomcache_log::LogError::Corrupt { .. }))
                | DriverError::Storage(RaftStorageError::Inconsistent { .. }) => io::Error::other(format!(
                    "{e}. This member cannot start from {dir}. To rebuild it from its peers: move {dir} aside, start \
                 this member again with --join (same --node-id, --listen and --members), then run \
                 `loomctl --addr <a healthy member> cluster rebuild {id} {client} {peer}`",
                    dir = dir.display(),
                    id = config.node_id,
                    client = me.client_addr,
                    peer = me.peer_addr,
                )),
                _ => io::Error::other(e.to_string()),
            }
        })?;
    Ok((driver, transport, book, incarnation))
}

/// On the leader, a `QUEUE_POLL` that may wait: its queue, its wait, and
/// whether it would wait now (the queue is empty). Elsewhere (a follower
/// redirects it) and for a poll that does not wait, none.
fn leader_poll_waits(
    shared: &Shared,
    driver: &DriverHandle,
    frame: &loomcache_wire::Frame<'_>,
) -> Option<(Box<str>, Duration, bool)> {
    if driver.summary().role != Some(loomcache_consensus::Role::Leader) {
        return None;
    }
    let Ok(Payload::QueuePoll(p)) = frame.decode(&shared.limits) else {
        return None;
    };
    if p.wait_ms == 0 {
        return None;
    }
    let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let empty = state.poll_would_wait(p.name, frame);
    Some((p.name.into(), Duration::from_millis(u64::from(p.wait_ms)), empty))
}

/// What a request handed to the driver is answered with once it is done.
enum Answer {
    /// The state machine's answer to the applied entry.
    Applied,
    /// The read, executed once the read point is applied.
    Read(Arc<[u8]>),
    /// An empty success (membership requests).
    Done,
    /// A waiting poll proposed because its queue holds an item: parked and
    /// woken by an offer, or found an item on arrival. If another consumer
    /// took the item first, it is parked (again) until `deadline`, in
    /// its `place`, rather than answered empty early.
    Parked {
        queue: Box<str>,
        frame: Vec<u8>,
        deadline: Instant,
        place: u64,
    },
}

/// Whether a QUEUE_POLL response frame carries no item.
fn poll_answered_empty(response: &[u8], limits: &Limits) -> bool {
    match parse_frame(response, limits) {
        Ok(Parsed::Frame(f)) => matches!(
            f.decode_response(Opcode::QueuePoll, limits),
            Ok(Response::Ok(OkBody::Value(None)))
        ),
        _ => false,
    }
}

/// The answer path of a request handed to the Raft driver: the outcome
/// becomes a response frame on the request's connection.
fn cluster_reply(
    shared: &Arc<Shared>,
    front: &ClusterFront,
    (conn, generation): (usize, u64),
    (request_id, partition): (u64, u16),
    answer: Answer,
) -> crate::raft::Reply {
    let (shared, done, book) = (Arc::clone(shared), front.done.clone(), Arc::clone(&front.book));
    Box::new(move |outcome| {
        let bytes = match outcome {
            Outcome::Applied(bytes) => match answer {
                Answer::Done => response_frame(request_id, partition, &Response::Ok(OkBody::Empty)),
                Answer::Parked {
                    queue,
                    frame,
                    deadline,
                    place,
                } => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !poll_answered_empty(&bytes, &shared.limits) {
                        bytes
                    } else {
                        // Back to waiting: handed to the loop to park.
                        let _ = done.send(Done {
                            conn,
                            generation,
                            result: Executed {
                                bytes: Vec::new(),
                                publication: None,
                                offered: None,
                                parked: Some(Wait {
                                    queue,
                                    wait: left,
                                    place: Some(place),
                                }),
                            },
                            frame: Some(frame),
                        });
                        finish(&shared);
                        return;
                    }
                }
                _ => bytes,
            },
            Outcome::ReadReady => match &answer {
                Answer::Read(frame) => execute(&shared, frame, Vec::new()).bytes,
                _ => error_frame(request_id, ErrorCode::Internal, "a write was answered as a read"),
            },
            Outcome::NotLeader(leader) => not_leader_frame(request_id, partition, leader, &book),
            Outcome::Busy(_) => response_frame(
                request_id,
                partition,
                &Response::ServerBusy(Busy { retry_after_ms: 10 }),
            ),
            Outcome::Lost => error_frame(
                request_id,
                ErrorCode::NoLeader,
                "leadership changed before the write committed; it did not take effect",
            ),
            Outcome::Stopped => error_frame(request_id, ErrorCode::ShuttingDown, "the node is stopping"),
            Outcome::Indeterminate => error_frame(
                request_id,
                ErrorCode::OutcomeUnknown,
                "the write's outcome is unknown (a snapshot replaced this node's log); a retry with the same sequence applies at most once",
            ),
            Outcome::Refused(why) => error_frame(request_id, ErrorCode::InvalidArgument, &why),
        };
        let _ = done.send(Done {
            conn,
            generation,
            result: Executed::answer(bytes),
            frame: None,
        });
        finish(&shared);
    })
}

/// The answer of a member that is not the leader: a redirect to the
/// leader's client address, or NO_LEADER when it is not known.
fn not_leader_frame(request_id: u64, partition: u16, leader: Option<u64>, book: &AddressBook) -> Vec<u8> {
    let Some(id) = leader else {
        return error_frame(request_id, ErrorCode::NoLeader, "no leader is known yet; retry");
    };
    match book.client_addr(id) {
        Some(addr) => {
            let addr = addr.to_string();
            let redirect = Redirect {
                group: 0,
                leader_id: id,
                leader_addr: &addr,
            };
            response_frame(request_id, partition, &Response::Redirect(redirect))
        }
        None => error_frame(
            request_id,
            ErrorCode::NoLeader,
            "the leader is not a known member; retry",
        ),
    }
}

/// A request handed to the driver is done: its admitted work completes,
/// and the loop is woken to deliver what was sent to it.
fn finish(shared: &Shared) {
    let resume = shared.backpressure.complete();
    if !shared.wake_pending.swap(true, Ordering::AcqRel) || resume {
        let _ = shared.waker.wake();
    }
}
