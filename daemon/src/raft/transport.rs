//! Peer transport: Raft messages between nodes over TCP, on one mio thread.
//!
//! Each pair of nodes shares one connection, dialed by the lower id. The
//! dialer's first frame is `CLUSTER_PING` whose nonce is its node id, so
//! the acceptor knows who called; after that both directions carry Raft
//! frames (`0x07xx`). Messages for a peer are encoded back to back into
//! its outgoing buffer, so one write carries a whole Ready's batch. The
//! buffer is bounded: when a peer is down or slow, new frames are dropped
//! and counted, which Raft tolerates (it retransmits). A broken
//! connection is redialed with exponential backoff and jitter.
//!
//! The peer list changes with membership ([`Transport::set_peers`]). A
//! node that has just joined does not know its lower-numbered peers yet;
//! they dial it, and an opening ping from a lower id it does not list is
//! accepted (at most [`UNLISTED_PEERS_MAX`] such peers at once) so that it
//! can answer them before it learns their addresses.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loomcache_consensus::{codec, Message, NodeId};

use super::members::{Incarnations, Record, Records};
use loomcache_wire::{encode_frame, frame_len, Framer, HeaderFields, Limits, OpClass, Opcode, Payload, Ping};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node.
    pub node_id: NodeId,
    /// Where peers reach this node.
    pub listen: SocketAddr,
    /// Every other member's peer address.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Frame limits for peer traffic; the receive buffer of each connection
    /// holds one maximal frame.
    pub limits: Limits,
    /// Most encoded bytes waiting for one peer; frames beyond are dropped.
    pub queue_bytes_max: usize,
    /// Most messages handed over and not yet encoded; beyond, dropped.
    pub outbox_messages_max: usize,
    /// First redial delay after a failure…
    pub reconnect_min: Duration,
    /// …doubling up to this.
    pub reconnect_max: Duration,
    /// Fingerprint of the settings that decide how entries apply
    /// (`StateConfig::fingerprint`): peers must show the same one, or no
    /// Raft message passes between them.
    pub state_fingerprint: u64,
    /// This node's data-directory incarnation (`super::incarnation`),
    /// shown to every peer; 0 shows none.
    pub incarnation: u64,
    /// The incarnations the group recorded for members: a peer showing
    /// another one is refused, unless its own record is newer.
    pub recorded: Records,
    /// Whether `recorded` is known at start. If not, the transport dials
    /// no peer and reads no connection until [`Transport::records_known`].
    pub records_known: bool,
}

impl TransportConfig {
    /// Defaults: peer frame limits, 64 MiB per peer, 65 536 queued
    /// messages, redials from 50 ms backing off to 2 s.
    pub fn new(node_id: NodeId, listen: SocketAddr, peers: BTreeMap<NodeId, SocketAddr>) -> TransportConfig {
        TransportConfig {
            node_id,
            listen,
            peers,
            limits: Limits::PEER,
            queue_bytes_max: 64 << 20,
            outbox_messages_max: 65_536,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            state_fingerprint: 0,
            incarnation: 0,
            recorded: Records::new(),
            records_known: true,
        }
    }
}

/// Counters, for status reports and tests.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Frames written to sockets.
    pub frames_sent: AtomicU64,
    /// Frames dropped because a queue was full.
    pub frames_dropped: AtomicU64,
    /// Raft messages received and delivered.
    pub messages_received: AtomicU64,
    /// Connections closed for a protocol violation.
    pub connections_rejected: AtomicU64,
    /// Of those, connections refused because a data directory is not the
    /// one recorded (the peer's, or this node's as the peer records it).
    pub incarnation_refusals: AtomicU64,
    /// Connections established (dialed or accepted).
    pub connections_established: AtomicU64,
}

/// Peer addresses and the incarnations recorded for them.
type PeerList = (BTreeMap<NodeId, SocketAddr>, Records);

/// Most peers known only from their opening ping at once.
pub const UNLISTED_PEERS_MAX: usize = 64;

/// A running transport.
#[derive(Debug)]
pub struct Transport {
    outbox: Arc<Mutex<Vec<Message>>>,
    /// A replacement peer list and records, taken by the transport thread.
    new_peers: Arc<Mutex<Option<PeerList>>>,
    /// The incarnation each linked peer showed.
    seen: Arc<Mutex<Incarnations>>,
    /// Set by [`Transport::records_known`].
    records_known: Arc<AtomicBool>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
    stats: Arc<TransportStats>,
    outbox_max: usize,
}

impl Transport {
    /// Binds the peer address and starts the transport thread. `deliver`
    /// receives every valid inbound message, on that thread.
    pub fn start(config: TransportConfig, deliver: impl FnMut(Message) + Send + 'static) -> io::Result<Transport> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let outbox = Arc::new(Mutex::new(Vec::new()));
        let new_peers = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(TransportStats::default());
        let seen = Arc::new(Mutex::new(Incarnations::new()));
        let records_known = Arc::new(AtomicBool::new(config.records_known));
        let outbox_max = config.outbox_messages_max;
        let mut lp = Loop {
            links: config
                .peers
                .iter()
                .filter(|(&id, _)| id != config.node_id)
                .map(|(&id, &addr)| (id, Link::new(Some(addr), config.reconnect_min)))
                .collect(),
            new_peers: Arc::clone(&new_peers),
            seen: Arc::clone(&seen),
            records_known: Arc::clone(&records_known),
            conns: Vec::new(),
            poll,
            listener,
            outbox: Arc::clone(&outbox),
            stop: Arc::clone(&stop),
            stats: Arc::clone(&stats),
            deliver: Box::new(deliver),
            rng: fastrand::Rng::with_seed(config.node_id),
            config,
        };
        let thread = std::thread::Builder::new()
            .name("loomcache-peers".into())
            .spawn(move || lp.run())?;
        Ok(Transport {
            outbox,
            new_peers,
            seen,
            records_known,
            waker,
            stop,
            thread: Some(thread),
            local_addr,
            stats,
            outbox_max,
        })
    }

    /// Queues messages for their peers; never blocks. Messages beyond the
    /// outbox bound are dropped and counted.
    pub fn send(&self, messages: impl IntoIterator<Item = Message>) {
        {
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            for m in messages {
                if outbox.len() >= self.outbox_max {
                    self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                outbox.push(m);
            }
        }
        let _ = self.waker.wake();
    }

    /// Replaces the peer list (this node's own entry is ignored) and the
    /// recorded incarnations. Links to peers no longer listed close; new
    /// peers are dialed (by the lower id of each pair); a changed address
    /// is used from the next dial; a link whose peer showed an incarnation
    /// other than the one now recorded closes.
    pub fn set_peers(&self, peers: BTreeMap<NodeId, SocketAddr>, recorded: Records) {
        *self.new_peers.lock().unwrap_or_else(|p| p.into_inner()) = Some((peers, recorded));
        let _ = self.waker.wake();
    }

    /// Starts linking peers, on a transport whose records were not known
    /// at start: the last [`Transport::set_peers`] holds them.
    pub fn records_known(&self) {
        self.records_known.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }

    /// The incarnation each linked peer showed when its link was checked.
    pub fn incarnations_seen(&self) -> Incarnations {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bound peer address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// Stops the thread and closes every connection.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Outgoing state for one peer.
#[derive(Debug)]
struct Link {
    /// Where to dial; none for a peer known only from its opening ping.
    addr: Option<SocketAddr>,
    conn: Option<usize>,
    /// Encoded frames not yet written, back to back…
    pending: Vec<u8>,
    /// …their lengths, oldest first…
    frames: VecDeque<usize>,
    /// …and how much of the oldest is already written.
    head_written: usize,
    next_dial: Instant,
    backoff: Duration,
}

impl Link {
    fn new(addr: Option<SocketAddr>, backoff: Duration) -> Link {
        Link {
            addr,
            conn: None,
            pending: Vec::new(),
            frames: VecDeque::new(),
            head_written: 0,
            next_dial: Instant::now(),
            backoff,
        }
    }

    /// Forgets the rest of a frame cut short by a broken connection: a new
    /// connection must start on a frame boundary.
    fn drop_partial_head(&mut self) {
        if self.head_written > 0 {
            let len = self.frames.pop_front().expect("a frame is partly written");
            self.pending.drain(..len - self.head_written);
            self.head_written = 0;
        }
    }
}

struct Conn {
    stream: TcpStream,
    peer: Option<NodeId>,
    framer: Framer<Box<[u8]>>,
    /// Dialed and not yet known to be connected.
    connecting: bool,
    /// Bytes to send before the link's frames (the opening ping and the
    /// checked pings).
    preamble: Vec<u8>,
    /// When an accepted connection opened: it must identify itself within
    /// [`OPENING_DEADLINE`].
    opened: Instant,
    /// This node dialed it (rather than accepted it).
    dialed: bool,
    /// Which of the peer's checked pings is due next. Until all passed no
    /// Raft frame is taken from it, and an accepted connection carries
    /// none to it.
    hello: Hello,
    /// What the peer showed in its checked pings so far (0 until then).
    shown: Shown,
}

/// The values of a peer's incarnation pings.
#[derive(Debug, Clone, Copy, Default)]
struct Shown {
    /// Its incarnation.
    incarnation: u64,
    /// The index of its own record of that incarnation (0: none).
    own_index: u64,
    /// The incarnation it records for this node (0: none)…
    for_us: u64,
    /// …recorded at this index.
    for_us_index: u64,
}

impl Shown {
    /// Keeps the value of the ping due at `stage` (one of the first three
    /// incarnation pings) and answers the stage that follows.
    fn take(&mut self, stage: Hello, value: u64) -> Hello {
        match stage {
            Hello::Incarnation => {
                self.incarnation = value;
                Hello::OwnIndex
            }
            Hello::OwnIndex => {
                self.own_index = value;
                Hello::Record
            }
            _ => {
                self.for_us = value;
                Hello::RecordIndex
            }
        }
    }
}

/// The pings each side checks after the opening one, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hello {
    /// The replicated-state settings fingerprint.
    Settings,
    /// The sender's data-directory incarnation.
    Incarnation,
    /// The index of the sender's record of its own incarnation (0: none).
    OwnIndex,
    /// The incarnation the sender records for the receiver (0: none).
    Record,
    /// The index of that record (0: none).
    RecordIndex,
    /// Every check passed.
    Done,
}

impl Conn {
    /// An accepted connection whose opening ping or checks are still due:
    /// it is bounded in number and in time.
    fn awaits_check(&self) -> bool {
        !self.dialed && self.hello != Hello::Done
    }
}

/// An accepted connection must send its opening ping within this.
const OPENING_DEADLINE: Duration = Duration::from_secs(5);

struct Loop {
    config: TransportConfig,
    links: BTreeMap<NodeId, Link>,
    new_peers: Arc<Mutex<Option<PeerList>>>,
    seen: Arc<Mutex<Incarnations>>,
    records_known: Arc<AtomicBool>,
    conns: Vec<Option<Conn>>,
    poll: Poll,
    listener: TcpListener,
    outbox: Arc<Mutex<Vec<Message>>>,
    stop: Arc<AtomicBool>,
    stats: Arc<TransportStats>,
    deliver: Box<dyn FnMut(Message) + Send>,
    rng: fastrand::Rng,
}

/// A `CLUSTER_PING` frame carrying `nonce`.
fn ping_frame(nonce: u64) -> Vec<u8> {
    let payload = Payload::ClusterPing(Ping { nonce });
    let mut out = vec![0u8; frame_len(None, &payload)];
    let fields = HeaderFields::request(Opcode::ClusterPing, 0);
    encode_frame(&mut out, &fields, None, &payload).expect("sized above");
    out
}

/// The checked pings: the replicated-state settings fingerprint, then
/// what `shown` holds, in its field order.
fn checks_frame(fingerprint: u64, shown: &Shown) -> Vec<u8> {
    [
        fingerprint,
        shown.incarnation,
        shown.own_index,
        shown.for_us,
        shown.for_us_index,
    ]
    .into_iter()
    .flat_map(ping_frame)
    .collect()
}

/// The index of this node's record of its own incarnation; 0 when it
/// holds none, or one of another incarnation.
fn own_record_index(config: &TransportConfig) -> u64 {
    match config.recorded.get(&config.node_id) {
        Some(r) if r.incarnation == config.incarnation => r.index,
        _ => 0,
    }
}

/// This node's checked pings for `peer`.
fn own_checks(config: &TransportConfig, peer: NodeId) -> Vec<u8> {
    let own_index = own_record_index(config);
    let (for_us, for_us_index) = config.recorded.get(&peer).map_or((0, 0), |r| (r.incarnation, r.index));
    checks_frame(
        config.state_fingerprint,
        &Shown {
            incarnation: config.incarnation,
            own_index,
            for_us,
            for_us_index,
        },
    )
}

/// Whether a peer that showed `shown` is another directory than the one
/// `recorded` for it: a different incarnation, unless the peer's own
/// record of its incarnation is newer than this one (this node has not
/// applied that record yet).
fn replaced(recorded: Option<&Record>, shown: &Shown) -> Option<Record> {
    let r = recorded?;
    (shown.incarnation != r.incarnation && shown.own_index <= r.index).then_some(*r)
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut batch = Vec::new();
        let mut peers: Vec<NodeId> = Vec::with_capacity(self.links.len());
        while !self.stop.load(Ordering::Acquire) {
            // Records first: no frame is read under records older than
            // those already handed over.
            self.take_new_peers();
            if self.config.records_known {
                self.dial_due();
                self.expire_unchecked();
            }
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "peer transport poll failed");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(t) => {
                        let idx = t - FIRST_CONN;
                        if event.is_writable() {
                            self.on_writable(idx);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(idx);
                        }
                    }
                }
            }
            std::mem::swap(&mut batch, &mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()));
            // Taken after the outbox: a peer list set before a message was
            // sent is in place before that message is queued.
            self.take_new_peers();
            for m in batch.drain(..) {
                self.enqueue(&m);
            }
            peers.clear();
            peers.extend(self.links.keys().copied());
            for &peer in &peers {
                self.flush(peer);
            }
        }
        for idx in 0..self.conns.len() {
            self.close(idx, false);
        }
    }

    /// Applies a peer list and records handed over by `set_peers`, if
    /// any, then starts linking once the records are known.
    fn take_new_peers(&mut self) {
        // The flag before the list: a list set before the flag is then
        // taken here at the latest.
        let arm = !self.config.records_known && self.records_known.load(Ordering::Acquire);
        let replaced = self.new_peers.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((peers, recorded)) = replaced {
            self.config.recorded = recorded;
            self.replace_peers(peers);
            self.close_replaced_members();
        }
        if arm {
            self.config.records_known = true;
            // Edge-triggered: read what arrived while waiting.
            for idx in 0..self.conns.len() {
                if self.conns[idx].is_some() {
                    self.on_readable(idx);
                }
            }
        }
        if self.config.records_known {
            self.dial_due();
        }
    }

    fn replace_peers(&mut self, peers: BTreeMap<NodeId, SocketAddr>) {
        tracing::debug!(?peers, "peer list replaced");
        let me = self.config.node_id;
        let gone: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(id, l)| l.addr.is_some() && !peers.contains_key(id))
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            if let Some(link) = self.links.remove(&id) {
                if let Some(idx) = link.conn {
                    self.close_conn_only(idx);
                }
            }
        }
        for (id, addr) in peers {
            if id == me {
                continue;
            }
            let min = self.config.reconnect_min;
            let link = self.links.entry(id).or_insert_with(|| Link::new(None, min));
            link.addr = Some(addr);
        }
    }

    /// Closes links whose peer showed an incarnation other than the one
    /// now recorded for it.
    fn close_replaced_members(&mut self) {
        let gone: Vec<(usize, NodeId, u64, Record)> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.as_ref().filter(|c| c.hello == Hello::Done)?;
                let peer = c.peer?;
                let r = replaced(self.config.recorded.get(&peer), &c.shown)?;
                Some((i, peer, c.shown.incarnation, r))
            })
            .collect();
        for (idx, peer, theirs, recorded) in gone {
            self.refuse_replaced(idx, peer, theirs, recorded.incarnation);
        }
    }

    /// Closes connections whose checks did not pass in time, accepted
    /// or dialed (a dialed one is redialed).
    fn expire_unchecked(&mut self) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| c.hello != Hello::Done && c.opened.elapsed() > OPENING_DEADLINE)
            .map(|(i, _)| i)
            .collect();
        for idx in late {
            self.reject(idx, "peer checks not passed in time");
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        // Wake at least every second while a connection must still pass
        // its checks, to enforce the opening deadline.
        let opening = (self.config.records_known && self.conns.iter().flatten().any(|c| c.hello != Hello::Done))
            .then_some(Duration::from_secs(1));
        let now = Instant::now();
        let dial = self
            .links
            .iter()
            .filter(|_| self.config.records_known)
            .filter(|(&id, l)| l.conn.is_none() && l.addr.is_some() && self.config.node_id < id)
            .map(|(_, l)| l.next_dial.saturating_duration_since(now))
            .min()
            .map(|d| d.max(Duration::from_millis(1)));
        match (opening, dial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn add_conn(&mut self, conn: Conn) -> io::Result<usize> {
        let idx = match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let mut conn = conn;
        self.poll.registry().register(
            &mut conn.stream,
            Token(idx + FIRST_CONN),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns[idx] = Some(conn);
        Ok(idx)
    }

    fn new_conn(&self, stream: TcpStream, peer: Option<NodeId>, connecting: bool) -> Conn {
        let buf = vec![0u8; self.config.limits.payload_max_bytes as usize + loomcache_wire::HEADER_LEN + 64];
        Conn {
            stream,
            peer,
            framer: Framer::new(buf.into_boxed_slice(), self.config.limits).expect("buffer holds a maximal frame"),
            connecting,
            preamble: Vec::new(),
            opened: Instant::now(),
            dialed: connecting,
            hello: Hello::Settings,
            shown: Shown::default(),
        }
    }

    /// Dials the peers this node is responsible for (those with higher ids).
    fn dial_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(NodeId, SocketAddr)> = self
            .links
            .iter()
            .filter(|(&id, l)| self.config.node_id < id && l.conn.is_none() && l.next_dial <= now)
            .filter_map(|(&id, l)| Some((id, l.addr?)))
            .collect();
        for (peer, addr) in due {
            match TcpStream::connect(addr) {
                Ok(stream) => {
                    let mut conn = self.new_conn(stream, Some(peer), true);
                    conn.preamble = ping_frame(self.config.node_id);
                    conn.preamble.extend_from_slice(&own_checks(&self.config, peer));
                    match self.add_conn(conn) {
                        Ok(idx) => {
                            let link = self.links.get_mut(&peer).expect("listed");
                            link.conn = Some(idx);
                        }
                        Err(e) => self.dial_failed(peer, &e),
                    }
                }
                Err(e) => self.dial_failed(peer, &e),
            }
        }
    }

    fn dial_failed(&mut self, peer: NodeId, e: &io::Error) {
        let max = self.config.reconnect_max;
        let jitter = self.rng.f64() * 0.5 + 0.75;
        let link = self.links.get_mut(&peer).expect("listed");
        link.conn = None;
        link.next_dial = Instant::now() + link.backoff.mul_f64(jitter);
        link.backoff = (link.backoff * 2).min(max);
        tracing::debug!(peer, error = %e, "peer dial failed");
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // Accepted connections not yet checked (identified or
                    // not) are bounded: a peer opens at most one at a
                    // time, plus a redial in flight. A checked one is
                    // linked, replacing the peer's older connection.
                    let unchecked = self.conns.iter().flatten().filter(|c| c.awaits_check()).count();
                    if unchecked >= 2 * self.links.len() + 2 {
                        self.stats.connections_rejected.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let conn = self.new_conn(stream, None, false);
                    let _ = self.add_conn(conn);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    return;
                }
            }
        }
    }

    fn enqueue(&mut self, m: &Message) {
        let Some(link) = self.links.get_mut(&m.to) else {
            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let start = link.pending.len();
        if codec::encode(m, 0, &mut link.pending).is_err() {
            link.pending.truncate(start);
            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let len = link.pending.len() - start;
        if link.pending.len() > self.config.queue_bytes_max {
            link.pending.truncate(start);
            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        link.frames.push_back(len);
    }

    fn on_writable(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if conn.connecting {
            match conn.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    // Closing a dialed connection schedules the redial.
                    tracing::debug!(error = %e, "peer connect failed");
                    self.close(idx, true);
                    return;
                }
            }
            if conn.stream.peer_addr().is_err() {
                return; // still connecting
            }
            conn.connecting = false;
            tracing::debug!(peer = ?conn.peer, "peer connected");
            let _ = conn.stream.set_nodelay(true);
            // Counted, and the redial backoff reset, once the peer's
            // settings are checked: a peer that refuses them is redialed
            // ever more slowly.
        }
        if let Some(peer) = self.conns[idx].as_ref().and_then(|c| c.peer) {
            self.flush(peer);
        }
    }

    /// Writes what the peer's connection will take.
    fn flush(&mut self, peer: NodeId) {
        let Some(link) = self.links.get_mut(&peer) else { return };
        let Some(idx) = link.conn else { return };
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            link.conn = None;
            return;
        };
        if conn.connecting {
            return;
        }
        while !conn.preamble.is_empty() {
            match conn.stream.write(&conn.preamble) {
                Ok(0) => return self.close(idx, true),
                Ok(n) => {
                    conn.preamble.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(idx, true),
            }
        }
        if conn.hello != Hello::Done {
            // No Raft frame before the peer's checks passed: a refused
            // peer reads nothing it would discard unread.
            return;
        }
        let mut written = 0;
        let result = loop {
            if written == link.pending.len() {
                break Ok(());
            }
            match conn.stream.write(&link.pending[written..]) {
                Ok(0) => break Err(()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        // Account whole frames written; a partial one stays at the head.
        let mut consumed = link.head_written + written;
        let mut sent = 0;
        while let Some(&len) = link.frames.front() {
            if consumed < len {
                break;
            }
            consumed -= len;
            link.frames.pop_front();
            sent += 1;
        }
        link.head_written = consumed;
        link.pending.drain(..written);
        self.stats.frames_sent.fetch_add(sent, Ordering::Relaxed);
        if result.is_err() {
            self.close(idx, true);
        }
    }

    fn on_readable(&mut self, idx: usize) {
        if !self.config.records_known {
            return;
        }
        loop {
            let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                return;
            };
            let spare = conn.framer.spare_mut();
            match conn.stream.read(spare) {
                Ok(0) => return self.close(idx, true),
                Ok(n) => {
                    conn.framer.filled(n);
                    if !self.drain_frames(idx) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(idx, true),
            }
        }
    }

    /// Handles every complete frame; false if the connection was closed.
    fn drain_frames(&mut self, idx: usize) -> bool {
        let me = self.config.node_id;
        let limits = self.config.limits;
        loop {
            let conn = self.conns[idx].as_mut().expect("open");
            let peer = conn.peer;
            let frame = match conn.framer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return true,
                Err(_) => return self.reject(idx, "malformed frame"),
            };
            let checked = conn.hello == Hello::Done;
            match (peer, frame.opcode()) {
                (None, Opcode::ClusterPing) => {
                    let Ok(Payload::ClusterPing(ping)) = frame.decode(&limits) else {
                        return self.reject(idx, "malformed opening ping");
                    };
                    let from = ping.nonce;
                    if from >= me || from == 0 {
                        return self.reject(idx, "opening ping from a node that does not dial this one");
                    }
                    // Linked once its settings are checked (next frame).
                    conn.peer = Some(from);
                }
                (Some(peer), Opcode::ClusterPing) if !checked => {
                    let Ok(Payload::ClusterPing(ping)) = frame.decode(&limits) else {
                        return self.reject(idx, "malformed check ping");
                    };
                    let dialed = conn.dialed;
                    match conn.hello {
                        Hello::Settings => {
                            let mine = self.config.state_fingerprint;
                            if ping.nonce != mine {
                                self.tell_why(idx, peer);
                                tracing::error!(
                                    peer,
                                    theirs = format_args!("{:016x}", ping.nonce),
                                    ours = format_args!("{mine:016x}"),
                                    "peer's replicated-state settings differ from this node's (data memory limit, \
                                     queue capacity, reclaim rate, deduplication, field limits, or the build's \
                                     apply-rules version): they must be equal on every member, or replicas could \
                                     apply the same entry differently"
                                );
                                return self.reject(idx, "replicated-state settings differ");
                            }
                            conn.hello = Hello::Incarnation;
                            continue;
                        }
                        Hello::Incarnation | Hello::OwnIndex | Hello::Record => {
                            conn.hello = conn.shown.take(conn.hello, ping.nonce);
                            continue;
                        }
                        Hello::RecordIndex | Hello::Done => {
                            conn.shown.for_us_index = ping.nonce;
                            let shown = conn.shown;
                            if let Some(recorded) = replaced(self.config.recorded.get(&peer), &shown) {
                                self.tell_why(idx, peer);
                                return self.refuse_replaced(idx, peer, shown.incarnation, recorded.incarnation);
                            }
                            let mine = self.config.incarnation;
                            if shown.for_us != 0
                                && shown.for_us != mine
                                && own_record_index(&self.config) <= shown.for_us_index
                            {
                                self.tell_why(idx, peer);
                                tracing::error!(
                                    peer,
                                    recorded = format_args!("{:016x}", shown.for_us),
                                    ours = format_args!("{mine:016x}"),
                                    "the group recorded another data directory for this member: this one was wiped \
                                     or replaced, so it no longer holds the votes and entries the member acknowledged, \
                                     and its peers refuse it. Stop it, start it with --join (same --node-id, --listen \
                                     and --members), then run `loomctl --addr <a healthy member> cluster rebuild <id> \
                                     <client> <peer>`"
                                );
                                self.stats.incarnation_refusals.fetch_add(1, Ordering::Relaxed);
                                return self.reject(idx, "the group recorded another data directory for this member");
                            }
                            conn.hello = Hello::Done;
                        }
                    }
                    let theirs = conn.shown.incarnation;
                    if dialed {
                        self.note_seen(peer, theirs);
                        self.stats.connections_established.fetch_add(1, Ordering::Relaxed);
                        let min = self.config.reconnect_min;
                        if let Some(link) = self.links.get_mut(&peer) {
                            link.backoff = min;
                        }
                        self.flush(peer);
                        if self.conns[idx].is_none() {
                            return false;
                        }
                        continue;
                    }
                    let from = peer;
                    conn.preamble = own_checks(&self.config, from);
                    if !self.links.contains_key(&from) {
                        let unlisted = self.links.values().filter(|l| l.addr.is_none()).count();
                        if unlisted >= UNLISTED_PEERS_MAX {
                            return self.reject(idx, "too many peers not in the member list");
                        }
                        let min = self.config.reconnect_min;
                        self.links.insert(from, Link::new(None, min));
                    }
                    // A connection accepted before the linked one is a
                    // redial its peer has given up on (it waited for this
                    // node's records): the newer one stays.
                    let opened = self.conns[idx].as_ref().expect("open").opened;
                    let older = self.links[&from]
                        .conn
                        .filter(|&old| old != idx)
                        .and_then(|old| self.conns.get(old)?.as_ref())
                        .is_some_and(|old| !old.dialed && old.opened > opened);
                    if older {
                        return self.reject(idx, "an older connection than the peer's linked one");
                    }
                    tracing::debug!(peer = from, "peer identified");
                    self.note_seen(from, theirs);
                    self.stats.connections_established.fetch_add(1, Ordering::Relaxed);
                    let link = self.links.get_mut(&from).expect("checked");
                    if let Some(old) = link.conn.replace(idx) {
                        if old != idx {
                            // The new connection starts on a frame boundary.
                            link.drop_partial_head();
                            self.close_conn_only(old);
                        }
                    }
                    self.flush(from);
                    if self.conns[idx].is_none() {
                        return false;
                    }
                }
                (Some(_), op) if op.class() == OpClass::Raft && !checked => {
                    return self.reject(idx, "a Raft frame before the settings ping");
                }
                (Some(peer), op) if op.class() == OpClass::Raft => match codec::decode(op, frame.body(), &limits) {
                    Ok(m) if m.from == peer && m.to == me => {
                        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
                        (self.deliver)(m);
                    }
                    _ => return self.reject(idx, "invalid Raft message"),
                },
                _ => return self.reject(idx, "unexpected frame on a peer connection"),
            }
        }
    }

    /// Keeps the incarnation a newly linked peer showed.
    fn note_seen(&self, peer: NodeId, incarnation: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if incarnation == 0 {
            seen.remove(&peer);
        } else {
            seen.insert(peer, incarnation);
        }
    }

    /// On an accepted connection about to be refused, writes this node's
    /// checked pings, as far as one write goes, so the dialer can log why.
    fn tell_why(&mut self, idx: usize, peer: NodeId) {
        let checks = own_checks(&self.config, peer);
        if let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) {
            if !conn.dialed {
                let _ = conn.stream.write(&checks);
            }
        }
    }

    /// Closes connection `idx` to `peer`, whose data directory (showing
    /// incarnation `theirs`) is not the one the group recorded.
    fn refuse_replaced(&mut self, idx: usize, peer: NodeId, theirs: u64, recorded: u64) -> bool {
        self.stats.incarnation_refusals.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            peer,
            theirs = format_args!("{theirs:016x}"),
            recorded = format_args!("{recorded:016x}"),
            "peer's data directory is not the one the group recorded for it: it was wiped or replaced and no longer \
             holds the votes and entries it acknowledged, so it is refused until it is rebuilt (`loomctl cluster \
             rebuild`)"
        );
        self.reject(idx, "peer's data directory is not the one the group recorded")
    }

    fn reject(&mut self, idx: usize, why: &str) -> bool {
        self.stats.connections_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = why, "closing peer connection");
        self.close(idx, true);
        false
    }

    /// Closes a connection without touching its link (it was replaced).
    fn close_conn_only(&mut self, idx: usize) {
        if let Some(mut conn) = self.conns.get_mut(idx).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn close(&mut self, idx: usize, redial: bool) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let Some(peer) = conn.peer else { return };
        let me = self.config.node_id;
        let Some(link) = self.links.get_mut(&peer) else { return };
        if link.conn != Some(idx) {
            return;
        }
        link.conn = None;
        link.drop_partial_head();
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
        if link.addr.is_none() {
            // Known only from its ping: it redials if it still cares.
            self.links.remove(&peer);
            return;
        }
        if redial && me < peer {
            let e = io::Error::new(io::ErrorKind::ConnectionReset, "peer connection closed");
            self.dial_failed(peer, &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loomcache_consensus::MessageBody;
    use std::sync::mpsc;

    fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn hb(from: NodeId, to: NodeId, context: u64) -> Message {
        Message {
            group: 0,
            from,
            to,
            term: 1,
            body: MessageBody::Heartbeat { commit: 0, context },
        }
    }

    /// Records of `(node, incarnation, index)`.
    fn recs(records: &[(NodeId, u64, u64)]) -> Records {
        records
            .iter()
            .map(|&(id, incarnation, index)| (id, Record { incarnation, index }))
            .collect()
    }

    fn start(id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> (Transport, mpsc::Receiver<Message>) {
        start_with(id, addrs, 0)
    }

    fn start_with(
        id: NodeId,
        addrs: &BTreeMap<NodeId, SocketAddr>,
        fingerprint: u64,
    ) -> (Transport, mpsc::Receiver<Message>) {
        start_as(id, addrs, fingerprint, (id, Records::new()))
    }

    /// A transport showing `incarnation` with `recorded` incarnations.
    fn start_as(
        id: NodeId,
        addrs: &BTreeMap<NodeId, SocketAddr>,
        fingerprint: u64,
        (incarnation, recorded): (u64, Records),
    ) -> (Transport, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel();
        let mut cfg = TransportConfig::new(id, addrs[&id], addrs.clone());
        cfg.state_fingerprint = fingerprint;
        cfg.incarnation = incarnation;
        cfg.recorded = recorded;
        cfg.limits.payload_max_bytes = 1 << 20;
        cfg.reconnect_min = Duration::from_millis(10);
        cfg.reconnect_max = Duration::from_millis(100);
        let t = Transport::start(cfg, move |m| {
            let _ = tx.send(m);
        })
        .unwrap();
        (t, rx)
    }

    /// Sends `m` again and again (frames sent before a link is up may be
    /// dropped) until a message arrives on `rx`, which it returns.
    fn send_until_received(t: &Transport, rx: &mpsc::Receiver<Message>, m: Message, what: &str) -> Message {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            t.send([m.clone()]);
            if let Ok(got) = rx.recv_timeout(Duration::from_millis(50)) {
                return got;
            }
            assert!(Instant::now() < deadline, "{what}");
        }
    }

    /// Drops what `rx` holds, sends ten heartbeats from `from` to `to`, and
    /// asserts that none arrives within 300 ms.
    fn assert_nothing_reaches(t: &Transport, rx: &mpsc::Receiver<Message>, from: NodeId, to: NodeId, what: &str) {
        while rx.try_recv().is_ok() {}
        t.send((0..10).map(|i| hb(from, to, i)));
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "{what}");
    }

    fn recv_contexts(rx: &mpsc::Receiver<Message>, n: usize) -> Vec<u64> {
        (0..n)
            .map(
                |_| match rx.recv_timeout(Duration::from_secs(10)).expect("message arrives").body {
                    MessageBody::Heartbeat { context, .. } => context,
                    other => panic!("unexpected {other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn two_nodes_exchange_messages_over_one_connection_in_order() {
        let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
        let (t1, rx1) = start(1, &addrs);
        let (t2, rx2) = start(2, &addrs);
        t1.send((0..500).map(|i| hb(1, 2, i)));
        assert_eq!(recv_contexts(&rx2, 500), (0..500).collect::<Vec<_>>());
        t2.send((0..500).map(|i| hb(2, 1, i)));
        assert_eq!(recv_contexts(&rx1, 500), (0..500).collect::<Vec<_>>());
        // One connection, counted once by each side.
        assert_eq!(t1.stats().connections_established.load(Ordering::Relaxed), 1);
        assert_eq!(t2.stats().connections_established.load(Ordering::Relaxed), 1);
    }

    /// Peers whose replicated-state settings differ exchange nothing: each
    /// side refuses the other's settings (the acceptor tells the dialer
    /// its own before closing), however often the dialer tries again.
    #[test]
    fn peers_with_different_state_settings_exchange_no_message() {
        let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
        let (t1, rx1) = start_with(1, &addrs, 0xaaaa);
        let (t2, rx2) = start_with(2, &addrs, 0xbbbb);
        assert_refused_both_ways(&t1, &rx1, &t2, &rx2);
    }

    /// Sends heartbeats both ways until both sides refused a connection
    /// at least twice; nothing may pass meanwhile.
    fn assert_refused_both_ways(
        t1: &Transport,
        rx1: &mpsc::Receiver<Message>,
        t2: &Transport,
        rx2: &mpsc::Receiver<Message>,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while t1.stats().connections_rejected.load(Ordering::Relaxed) < 2
            || t2.stats().connections_rejected.load(Ordering::Relaxed) < 2
        {
            assert!(Instant::now() < deadline, "the mismatch was not refused on both sides");
            t1.send([hb(1, 2, 1)]);
            t2.send([hb(2, 1, 2)]);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(rx2.try_recv().is_err() && rx1.try_recv().is_err(), "a message passed");
        assert_eq!(t1.stats().connections_established.load(Ordering::Relaxed), 0);
        assert_eq!(t2.stats().connections_established.load(Ordering::Relaxed), 0);
    }

    /// A member whose directory was wiped shows a new incarnation: the
    /// peer that recorded the old one refuses it, and the wiped member,
    /// told what was recorded for it, refuses too, whichever side dials.
    #[test]
    fn a_member_showing_another_incarnation_than_recorded_exchanges_no_message() {
        for wiped in [1, 2] {
            let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
            let healthy = 3 - wiped;
            let side = |id: NodeId| {
                if id == wiped {
                    (0x5151, Records::new())
                } else {
                    (id * 11, recs(&[(wiped, wiped * 11, 5)]))
                }
            };
            let (t1, rx1) = start_as(1, &addrs, 0, side(1));
            let (t2, rx2) = start_as(2, &addrs, 0, side(2));
            assert_refused_both_ways(&t1, &rx1, &t2, &rx2);
            let (th, tw) = if healthy == 1 { (&t1, &t2) } else { (&t2, &t1) };
            assert!(th.incarnations_seen().is_empty() && tw.incarnations_seen().is_empty());
            for t in [th, tw] {
                assert!(t.stats().incarnation_refusals.load(Ordering::Relaxed) >= 1);
            }
        }
    }

    /// A member that has not applied a peer's newer record (it was away
    /// while the peer was rebuilt) holds the old one: the peer's own,
    /// newer record of its incarnation wins, whichever side dials, while a
    /// peer whose own record is not newer is still refused.
    #[test]
    fn a_stale_record_yields_to_the_peers_newer_own_record() {
        for rebuilt in [1, 2] {
            let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
            let lagging = 3 - rebuilt;
            let side = |id: NodeId, own_index: u64| {
                if id == rebuilt {
                    // Its new directory, recorded at index 9 (after the old
                    // one, recorded at 5).
                    (77, recs(&[(rebuilt, 77, own_index), (lagging, lagging * 11, 3)]))
                } else {
                    (id * 11, recs(&[(rebuilt, rebuilt * 11, 5), (lagging, lagging * 11, 3)]))
                }
            };
            let (t1, rx1) = start_as(1, &addrs, 0, side(1, 9));
            let (t2, rx2) = start_as(2, &addrs, 0, side(2, 9));
            send_until_received(&t1, &rx2, hb(1, 2, 1), "the newer own record was not taken");
            send_until_received(&t2, &rx1, hb(2, 1, 2), "the newer own record was not taken");
            drop((t1, t2));

            // The same, but the peer's own record is no newer than the one
            // held for it: refused.
            let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
            let (t1, rx1) = start_as(1, &addrs, 0, side(1, 5));
            let (t2, rx2) = start_as(2, &addrs, 0, side(2, 5));
            assert_refused_both_ways(&t1, &rx1, &t2, &rx2);
        }
    }

    /// Incarnations are learned on each connection and checked again when
    /// the records change: a link whose peer no longer matches is closed,
    /// and one that matches again comes back.
    #[test]
    fn links_follow_the_recorded_incarnations() {
        let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
        let (t1, _rx1) = start_as(1, &addrs, 0, (11, Records::new()));
        let (t2, rx2) = start_as(2, &addrs, 0, (22, Records::new()));
        t1.send([hb(1, 2, 1)]);
        assert_eq!(recv_contexts(&rx2, 1), [1]);
        assert_eq!(t1.incarnations_seen(), Incarnations::from([(2, 22)]));
        assert_eq!(t2.incarnations_seen(), Incarnations::from([(1, 11)]));

        t1.set_peers(addrs.clone(), recs(&[(2, 23, 5)]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while t1.stats().connections_rejected.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline, "the link was not closed and refused");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_nothing_reaches(
            &t1,
            &rx2,
            1,
            2,
            "nothing reaches a peer that no longer matches its record",
        );

        t1.set_peers(addrs.clone(), recs(&[(2, 22, 5)]));
        send_until_received(&t1, &rx2, hb(1, 2, 7), "the matching peer was never linked again");
    }

    /// A transport started without its records links no peer until it is
    /// told they are known, and then checks against the records it holds
    /// by then.
    #[test]
    fn a_transport_waiting_for_its_records_links_nothing_before_them() {
        let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
        let (tx, rx2) = mpsc::channel();
        let mut cfg = TransportConfig::new(2, addrs[&2], addrs.clone());
        cfg.incarnation = 22;
        cfg.records_known = false;
        cfg.reconnect_min = Duration::from_millis(10);
        cfg.reconnect_max = Duration::from_millis(100);
        let t2 = Transport::start(cfg, move |m| {
            let _ = tx.send(m);
        })
        .unwrap();
        let (t1, _rx1) = start_as(1, &addrs, 0, (11, Records::new()));
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            t1.send([hb(1, 2, 1)]);
            assert!(
                rx2.recv_timeout(Duration::from_millis(20)).is_err(),
                "linked before its records"
            );
        }
        assert_eq!(t2.stats().connections_established.load(Ordering::Relaxed), 0);
        t2.set_peers(addrs.clone(), recs(&[(1, 99, 5)]));
        t2.records_known();
        let deadline = Instant::now() + Duration::from_secs(10);
        while t2.stats().connections_rejected.load(Ordering::Relaxed) < 1 {
            assert!(
                Instant::now() < deadline,
                "the peer was not checked against the records"
            );
            t1.send([hb(1, 2, 2)]);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(rx2.try_recv().is_err(), "a refused peer's message passed");
        t2.set_peers(addrs.clone(), recs(&[(1, 11, 5)]));
        send_until_received(&t1, &rx2, hb(1, 2, 3), "never linked once the records matched");
    }

    /// Unlisted peers beyond the bound leave no trace in what was seen, and
    /// an unlisted peer that goes is forgotten.
    #[test]
    fn incarnations_seen_are_bounded_and_forgotten_with_their_links() {
        let me = UNLISTED_PEERS_MAX as NodeId + 10;
        let addrs: BTreeMap<NodeId, SocketAddr> = [(me, free_addr())].into();
        let (t, _rx) = start_as(me, &addrs, 0, (7, Records::new()));
        let handled = || {
            t.stats().connections_established.load(Ordering::Relaxed)
                + t.stats().connections_rejected.load(Ordering::Relaxed)
        };
        let mut raw = Vec::new();
        for id in 1..=(UNLISTED_PEERS_MAX as NodeId + 5) {
            // One at a time: connections not yet checked are bounded too.
            let before = handled();
            let mut c = std::net::TcpStream::connect(addrs[&me]).unwrap();
            c.write_all(
                &[
                    ping_frame(id),
                    checks_frame(
                        0,
                        &Shown {
                            incarnation: 1000 + id,
                            ..Shown::default()
                        },
                    ),
                ]
                .concat(),
            )
            .unwrap();
            raw.push(c);
            let deadline = Instant::now() + Duration::from_secs(10);
            while handled() == before {
                assert!(Instant::now() < deadline, "peer {id} was not handled");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert_eq!(
            t.stats().connections_established.load(Ordering::Relaxed),
            UNLISTED_PEERS_MAX as u64
        );
        assert_eq!(t.stats().connections_rejected.load(Ordering::Relaxed), 5);
        assert_eq!(t.incarnations_seen().len(), UNLISTED_PEERS_MAX);
        drop(raw);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.incarnations_seen().is_empty() {
            assert!(Instant::now() < deadline, "closed links were not forgotten");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A dialed peer that accepts and never answers its checks is given up
    /// after the opening deadline and dialed again.
    #[test]
    fn a_dialed_peer_that_never_answers_is_redialed() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, silent.local_addr().unwrap())].into();
        let (t1, _rx1) = start(1, &addrs);
        let (first, _) = silent.accept().unwrap();
        let deadline = Instant::now() + OPENING_DEADLINE + Duration::from_secs(5);
        while t1.stats().connections_rejected.load(Ordering::Relaxed) < 1 {
            assert!(Instant::now() < deadline, "a silent peer held the link");
            std::thread::sleep(Duration::from_millis(20));
        }
        silent.set_nonblocking(false).unwrap();
        let (_second, _) = silent.accept().expect("dialed again");
        drop(first);
    }

    /// A joining node lists only itself; the lower-numbered member that
    /// learns of it dials it, and it answers over that connection before
    /// knowing the member's address. A peer dropped from the list is cut.
    #[test]
    fn a_joiner_is_dialed_and_answers_then_a_removed_peer_is_cut() {
        let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (5, free_addr())].into();
        let (t1, rx1) = start(1, &[(1, addrs[&1])].into());
        let (t5, rx5) = start(5, &[(5, addrs[&5])].into());
        t1.set_peers(addrs.clone(), Records::new());
        send_until_received(&t1, &rx5, hb(1, 5, 3), "the joiner was never dialed");
        t5.send([hb(5, 1, 9)]);
        assert_eq!(recv_contexts(&rx1, 1), [9], "answered over the accepted connection");

        t1.set_peers([(1, addrs[&1])].into(), Records::new());
        std::thread::sleep(Duration::from_millis(100));
        assert_nothing_reaches(&t1, &rx5, 1, 5, "nothing reaches a peer no longer listed");
    }

    #[test]
    fn a_restarted_peer_is_redialed() {
        let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
        let (t1, _rx1) = start(1, &addrs);
        let (t2, rx2) = start(2, &addrs);
        t1.send([hb(1, 2, 1)]);
        assert_eq!(recv_contexts(&rx2, 1), [1]);
        t2.shutdown();
        drop(rx2);
        std::thread::sleep(Duration::from_millis(50));
        let (_t2, rx2) = start(2, &addrs);
        // Messages sent while the peer was down or reconnecting may be
        // lost; keep sending until one arrives.
        let m = send_until_received(&t1, &rx2, hb(1, 2, 7), "never reconnected");
        assert_eq!(m.from, 1);
    }

    #[test]
    fn garbage_and_impostors_are_rejected_without_harm() {
        let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
        let (t2, rx2) = start(2, &addrs);
        // Garbage instead of an opening ping.
        let mut raw = std::net::TcpStream::connect(addrs[&2]).unwrap();
        raw.write_all(b"definitely not a frame, but long enough to hold a header")
            .unwrap();
        let mut buf = [0u8; 8];
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(raw.read(&mut buf).unwrap_or(0), 0, "closed");
        // A ping claiming an id that does not dial node 2.
        let mut raw = std::net::TcpStream::connect(addrs[&2]).unwrap();
        raw.write_all(
            &[
                ping_frame(3),
                checks_frame(
                    0,
                    &Shown {
                        incarnation: 3,
                        ..Shown::default()
                    },
                ),
            ]
            .concat(),
        )
        .unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(raw.read(&mut buf).unwrap_or(0), 0, "closed");
        assert_eq!(t2.stats().connections_rejected.load(Ordering::Relaxed), 2);
        // The real peer still gets through.
        let (t1, _rx1) = start(1, &addrs);
        t1.send([hb(1, 2, 5)]);
        assert_eq!(recv_contexts(&rx2, 1), [5]);
    }

    /// Connections that name a peer and never show their settings count
    /// against the bound on connections not yet checked, as silent ones do.
    #[test]
    fn connections_stuck_after_their_opening_ping_are_bounded() {
        let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
        let (t2, _rx2) = start(2, &addrs);
        let mut held = Vec::new();
        for _ in 0..12 {
            let mut raw = std::net::TcpStream::connect(addrs[&2]).unwrap();
            raw.write_all(&ping_frame(1)).unwrap();
            held.push(raw);
        }
        let deadline = Instant::now() + Duration::from_secs(4);
        while t2.stats().connections_rejected.load(Ordering::Relaxed) < 8 {
            assert!(
                Instant::now() < deadline,
                "only {} of 12 refused",
                t2.stats().connections_rejected.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_down_peer_costs_bounded_memory() {
        let addrs: BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
        let (tx, _rx) = mpsc::channel();
        let mut cfg = TransportConfig::new(1, addrs[&1], addrs.clone());
        cfg.queue_bytes_max = 4096;
        let t1 = Transport::start(cfg, move |m| {
            let _ = tx.send(m);
        })
        .unwrap();
        t1.send((0..10_000).map(|i| hb(1, 2, i)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while t1.stats().frames_dropped.load(Ordering::Relaxed) < 9_000 {
            assert!(Instant::now() < deadline, "frames were not dropped");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
