//! The blocking client: a small connection pool, bounded retries with
//! backoff and jitter, leader tracking, and a typed handle per structure.
//! A `REDIRECT` names the leader: the client remembers it, drops its pooled
//! connections and sends the request there, at most
//! [`ClientConfig::redirects_max`] times per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use loomcache_wire::{
    AtomicCompareAndSet, ErrorCode, Join, Key, KeyValue, Keyed, Leave, MapCompareAndSet, MapGetAll, MapPutAll,
    MapWrite, Named, NamedLong, NamedValue, Opcode, Page, Payload, Ping, QueueDrain, QueuePoll, Seq, TransferLeader,
};

use crate::conn::Connection;
use crate::error::{ClientError, Result};
use crate::reply::Reply;

/// Client settings; every bound is explicit.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Nodes to connect to (seeds); tried in turn.
    pub addrs: Vec<SocketAddr>,
    /// Connect timeout per attempt. Default 5 s.
    pub connect_timeout: Duration,
    /// Time to wait for one answer. Default 10 s.
    pub request_timeout: Duration,
    /// Total time a request may spend retrying (busy, broken connection,
    /// no leader) before its last error is returned. Default 15 s.
    pub retry_budget: Duration,
    /// First backoff; doubles per retry up to `backoff_max`, ±25 % jitter.
    /// Default 50 ms.
    pub backoff_initial: Duration,
    /// Largest backoff. Default 2 s.
    pub backoff_max: Duration,
    /// Idle connections kept. Default 4.
    pub pool_size: usize,
    /// Client id for write deduplication; 0 picks one from the clock and
    /// process id.
    pub client_id: u64,
    /// Reads may be answered by any member from its own state, which can
    /// trail the leader's by the replication lag (and, on a member cut off
    /// from the leader, by more): no redirect, no lease or ReadIndex.
    /// Default false: reads are linearizable.
    pub stale_reads: bool,
    /// Redirects followed for one request before the redirect is returned
    /// as an error; from the second on, each waits a backoff first, so a
    /// leader change in progress is ridden out. Default 8.
    pub redirects_max: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            addrs: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            retry_budget: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            pool_size: 4,
            client_id: 0,
            stale_reads: false,
            redirects_max: 8,
        }
    }
}

/// A blocking LoomCache client, safe to share between threads.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    client_id: u64,
    pool: Mutex<Vec<Connection>>,
    next_sequence: AtomicU64,
    next_addr: AtomicUsize,
    jitter: AtomicU64,
    /// The leader named by the last redirect, tried first.
    leader: Mutex<Option<SocketAddr>>,
}

fn pick_client_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 40)).max(1)
}

impl Client {
    /// Connects to the first reachable node (validating the handshake).
    pub fn connect(config: ClientConfig) -> Result<Client> {
        if config.addrs.is_empty() {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no node addresses given",
            )));
        }
        let client_id = if config.client_id == 0 {
            pick_client_id()
        } else {
            config.client_id
        };
        let client = Client {
            client_id,
            pool: Mutex::new(Vec::new()),
            next_sequence: AtomicU64::new(1),
            next_addr: AtomicUsize::new(0),
            jitter: AtomicU64::new(client_id | 1),
            leader: Mutex::new(None),
            config,
        };
        let conn = client.open()?;
        client.give_back(conn);
        Ok(client)
    }

    /// The id the server deduplicates this client's writes by.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The leader this client last learned of, if any.
    pub fn leader(&self) -> Option<SocketAddr> {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connect_to(
        &self,
        addr: SocketAddr,
        client_id: u64,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Connection> {
        // Only a hello has been sent when these fail: the request was not.
        let mut conn = Connection::connect(addr, client_id, connect_timeout, request_timeout).map_err(|e| match e {
            ClientError::Io(source) => ClientError::Connect { addr, source },
            ClientError::Timeout(d) => ClientError::Connect {
                addr,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer to the handshake within {d:?}"),
                ),
            },
            e => e,
        })?;
        conn.set_stale_reads(self.config.stale_reads);
        Ok(conn)
    }

    fn open(&self) -> Result<Connection> {
        let mut last = None;
        if let Some(leader) = self.leader() {
            match self.connect_to(
                leader,
                self.client_id,
                self.config.connect_timeout,
                self.config.request_timeout,
            ) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    // The leader moved or failed: forget it, try the seeds.
                    *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    last = Some(e);
                }
            }
        }
        for _ in 0..self.config.addrs.len() {
            let i = self.next_addr.fetch_add(1, Ordering::Relaxed) % self.config.addrs.len();
            match self.connect_to(
                self.config.addrs[i],
                self.client_id,
                self.config.connect_timeout,
                self.config.request_timeout,
            ) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one address was tried"))
    }

    fn take(&self) -> Result<Connection> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(c) => Ok(c),
            None => self.open(),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.config.pool_size {
            pool.push(conn);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .config
            .backoff_initial
            .saturating_mul(1 << attempt.min(16))
            .min(self.config.backoff_max);
        // xorshift for ±25 % jitter.
        let mut x = self.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.store(x, Ordering::Relaxed);
        let spread = base.as_micros() as u64 / 2;
        let offset = if spread == 0 { 0 } else { x % spread };
        Duration::from_micros(base.as_micros() as u64 * 3 / 4 + offset)
    }

    /// Sends `payload` and returns the answer, retrying what is safe to
    /// retry within the retry budget. A write is sequenced once, so its
    /// retries are applied at most once. A write whose last attempt failed
    /// for good after an earlier one may have been applied fails
    /// [`ClientError::OutcomeUnknown`].
    pub fn call(&self, payload: &Payload<'_>) -> Result<Reply> {
        let sequence = payload
            .mutates()
            .then(|| self.next_sequence.fetch_add(1, Ordering::Relaxed));
        let start = Instant::now();
        let mut attempt = 0;
        let mut redirects = 0;
        // An attempt of this write was sent and may have been applied.
        let mut maybe_applied = false;
        loop {
            // A waiting poll sent again (to a new leader, or after a
            // failure) waits only what is left of its wait.
            let resent;
            let payload = match payload {
                Payload::QueuePoll(p) if p.wait_ms > 0 && (attempt > 0 || redirects > 0) => {
                    let elapsed = u32::try_from(start.elapsed().as_millis()).unwrap_or(u32::MAX);
                    resent = Payload::QueuePoll(QueuePoll {
                        name: p.name,
                        wait_ms: p.wait_ms.saturating_sub(elapsed),
                    });
                    &resent
                }
                _ => payload,
            };
            // Failing to take a connection (connecting, the handshake)
            // sends nothing.
            let result = self.take().and_then(|mut conn| {
                let r = conn.call(payload, sequence);
                // A connection that failed is dropped, never pooled.
                if !conn.is_broken() {
                    self.give_back(conn);
                }
                maybe_applied |= sequence.is_some() && r.as_ref().is_err_and(ClientError::may_have_applied);
                r
            });
            match result {
                Err(ClientError::Redirect { leader_addr, .. })
                    if redirects < self.config.redirects_max && start.elapsed() < self.config.retry_budget =>
                {
                    let Ok(addr) = leader_addr.parse::<SocketAddr>() else {
                        return Err(settle(
                            ClientError::Unexpected {
                                request: payload.opcode().wire_name(),
                                detail: format!("redirect to an unparsable address {leader_addr:?}"),
                            },
                            maybe_applied,
                        ));
                    };
                    *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
                    // Pooled connections go to the old node.
                    self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    // A second redirect for the same request means the
                    // members are still learning of the leader (or name
                    // one that is gone): back off before asking again.
                    if redirects > 0 {
                        std::thread::sleep(
                            self.backoff(attempt)
                                .min(self.config.retry_budget.saturating_sub(start.elapsed())),
                        );
                        attempt += 1;
                    }
                    redirects += 1;
                }
                Err(e) if e.is_retryable() && start.elapsed() < self.config.retry_budget => {
                    if matches!(
                        e,
                        ClientError::Server {
                            code: ErrorCode::NoLeader | ErrorCode::ShuttingDown,
                            ..
                        }
                    ) {
                        // This node knows no leader (it may be cut off
                        // from the others) or is stopping: forget it, so
                        // the next attempt tries the seeds in turn.
                        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    }
                    let wait = match &e {
                        ClientError::Busy { retry_after_ms } => {
                            Duration::from_millis(u64::from(*retry_after_ms)).max(self.backoff(attempt))
                        }
                        _ => self.backoff(attempt),
                    };
                    std::thread::sleep(wait.min(self.config.retry_budget.saturating_sub(start.elapsed())));
                    attempt += 1;
                }
                other => return other.map_err(|e| settle(e, maybe_applied)),
            }
        }
    }

    /// Round trip to a node; answers the echoed nonce.
    pub fn ping(&self, nonce: u64) -> Result<u64> {
        expect_count(Opcode::ClusterPing, self.call(&Payload::ClusterPing(Ping { nonce }))?)
    }

    /// Adds a node to the group (at the leader): it joins as a learner and
    /// the leader makes it a voter once it has caught up. The node must
    /// be running, started to join (`loomd --join`).
    pub fn cluster_add(&self, node_id: u64, client_addr: &str, peer_addr: &str) -> Result<()> {
        let join = Join {
            node_id,
            client_addr,
            peer_addr,
        };
        expect_empty(Opcode::ClusterJoin, self.call(&Payload::ClusterJoin(join))?)
    }

    /// Removes a node from the group (through a joint configuration).
    pub fn cluster_remove(&self, node_id: u64) -> Result<()> {
        expect_empty(
            Opcode::ClusterLeave,
            self.call(&Payload::ClusterLeave(Leave { node_id }))?,
        )
    }

    /// Asks the leader to hand leadership to voter `node_id`; answered once
    /// the handover has started.
    pub fn transfer_leader(&self, node_id: u64) -> Result<()> {
        expect_empty(
            Opcode::ClusterTransferLeader,
            self.call(&Payload::ClusterTransferLeader(TransferLeader { node_id }))?,
        )
    }

    /// The routing table (every partition's group, each group's leader and
    /// replicas, the members' client addresses). With `known_revision`
    /// equal to the current revision the answer carries only that
    /// revision.
    pub fn partition_table(&self, known_revision: u64) -> Result<crate::PartitionTable> {
        let request = Payload::PartitionTableRequest(loomcache_wire::PartitionTableRequest { known_revision });
        match self.call(&request)? {
            Reply::PartitionTable(t) => Ok(t),
            other => Err(unexpected(Opcode::PartitionTableRequest, other)),
        }
    }

    /// The node's statistics, as name/value pairs.
    pub fn info(&self) -> Result<Vec<(String, String)>> {
        match self.call(&Payload::NodeInfo(loomcache_wire::NodeInfoRequest {}))? {
            Reply::Entries(e) => Ok(e
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect()),
            other => Err(unexpected(Opcode::NodeInfo, other)),
        }
    }

    /// A Map handle.
    pub fn map<'c>(&'c self, name: &'c str) -> MapHandle<'c> {
        MapHandle { client: self, name }
    }

    /// A Queue handle.
    pub fn queue<'c>(&'c self, name: &'c str) -> QueueHandle<'c> {
        QueueHandle { client: self, name }
    }

    /// A Set handle.
    pub fn set<'c>(&'c self, name: &'c str) -> SetHandle<'c> {
        SetHandle { client: self, name }
    }

    /// An AtomicLong handle.
    pub fn atomic_long<'c>(&'c self, name: &'c str) -> AtomicLongHandle<'c> {
        AtomicLongHandle { client: self, name }
    }

    /// A Topic handle.
    pub fn topic<'c>(&'c self, name: &'c str) -> TopicHandle<'c> {
        TopicHandle { client: self, name }
    }
}

fn unexpected(op: Opcode, reply: Reply) -> ClientError {
    ClientError::Unexpected {
        request: op.wire_name(),
        detail: format!("{reply:?}"),
    }
}

fn expect_value(op: Opcode, r: Reply) -> Result<Option<Vec<u8>>> {
    match r {
        Reply::Value(v) => Ok(v),
        other => Err(unexpected(op, other)),
    }
}

/// The error a call ends with, given whether an earlier attempt of its
/// write may have applied: one that says nothing of that attempt (a
/// redirect, `NO_LEADER`, …) becomes [`ClientError::OutcomeUnknown`].
fn settle(e: ClientError, maybe_applied: bool) -> ClientError {
    if maybe_applied && !e.may_have_applied() && !e.refuses_the_write() {
        ClientError::OutcomeUnknown { last: Box::new(e) }
    } else {
        e
    }
}

fn expect_bool(op: Opcode, r: Reply) -> Result<bool> {
    match r {
        Reply::Bool(b) => Ok(b),
        other => Err(unexpected(op, other)),
    }
}

fn expect_count(op: Opcode, r: Reply) -> Result<u64> {
    match r {
        Reply::Count(n) => Ok(n),
        other => Err(unexpected(op, other)),
    }
}

fn expect_long(op: Opcode, r: Reply) -> Result<i64> {
    match r {
        Reply::Long(n) => Ok(n),
        other => Err(unexpected(op, other)),
    }
}

fn expect_empty(op: Opcode, r: Reply) -> Result<()> {
    match r {
        Reply::Empty => Ok(()),
        other => Err(unexpected(op, other)),
    }
}

fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |d| (d.as_millis() as u64).max(1))
}

/// Operations on one Map.
#[derive(Debug, Clone, Copy)]
pub struct MapHandle<'c> {
    client: &'c Client,
    name: &'c str,
}

impl MapHandle<'_> {
    fn write(&self, op: Opcode, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<Reply> {
        let w = MapWrite {
            ttl_ms: ttl_ms(ttl),
            name: self.name,
            key,
            value,
        };
        let payload = match op {
            Opcode::MapPut => Payload::MapPut(w),
            Opcode::MapSet => Payload::MapSet(w),
            Opcode::MapPutIfAbsent => Payload::MapPutIfAbsent(w),
            _ => Payload::MapReplace(w),
        };
        self.client.call(&payload)
    }

    /// Stores `value`, answering the previous value.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        expect_value(Opcode::MapPut, self.write(Opcode::MapPut, key, value, None)?)
    }

    /// Stores `value` with a time to live, answering the previous value.
    pub fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<Option<Vec<u8>>> {
        expect_value(Opcode::MapPut, self.write(Opcode::MapPut, key, value, Some(ttl))?)
    }

    /// Stores `value` without answering the previous one.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        expect_empty(Opcode::MapSet, self.write(Opcode::MapSet, key, value, None)?)
    }

    /// Stores only if absent; answers the existing value if there is one.
    pub fn put_if_absent(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        expect_value(
            Opcode::MapPutIfAbsent,
            self.write(Opcode::MapPutIfAbsent, key, value, None)?,
        )
    }

    /// Stores only if present; answers the replaced value.
    pub fn replace(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        expect_value(Opcode::MapReplace, self.write(Opcode::MapReplace, key, value, None)?)
    }

    /// Reads a value.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        expect_value(
            Opcode::MapGet,
            self.client.call(&Payload::MapGet(Keyed { name: self.name, key }))?,
        )
    }

    /// Removes a key; answers whether it was present.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        expect_bool(
            Opcode::MapDelete,
            self.client.call(&Payload::MapDelete(Keyed { name: self.name, key }))?,
        )
    }

    /// Whether a key is present.
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        expect_bool(
            Opcode::MapContains,
            self.client
                .call(&Payload::MapContains(Keyed { name: self.name, key }))?,
        )
    }

    /// Stores `new` only if the value is `expected`.
    pub fn compare_and_set(&self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<bool> {
        let p = Payload::MapCompareAndSet(MapCompareAndSet {
            ttl_ms: 0,
            name: self.name,
            key,
            expected,
            new,
        });
        expect_bool(Opcode::MapCompareAndSet, self.client.call(&p)?)
    }

    /// Live entries.
    pub fn size(&self) -> Result<u64> {
        expect_count(
            Opcode::MapSize,
            self.client.call(&Payload::MapSize(Named { name: self.name }))?,
        )
    }

    /// Removes every entry; answers how many.
    pub fn clear(&self) -> Result<u64> {
        expect_count(
            Opcode::MapClear,
            self.client.call(&Payload::MapClear(Named { name: self.name }))?,
        )
    }

    /// Removes the map with every entry: its name is then free for
    /// any type and costs no memory. Answers whether it existed; a name
    /// bound to another type fails `WRONG_TYPE`.
    pub fn destroy(&self) -> Result<bool> {
        expect_bool(
            Opcode::MapDestroy,
            self.client.call(&Payload::MapDestroy(Named { name: self.name }))?,
        )
    }

    /// Reads many keys; answers the present ones.
    pub fn get_all(&self, keys: &[&[u8]]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let keys: Vec<Key<'_>> = keys.iter().map(|k| Key(k)).collect();
        let p = Payload::MapGetAll(MapGetAll {
            name: self.name,
            keys: Seq::Items(&keys),
        });
        match self.client.call(&p)? {
            Reply::Entries(e) => Ok(e),
            other => Err(unexpected(Opcode::MapGetAll, other)),
        }
    }

    /// Stores many entries.
    pub fn put_all(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        let entries: Vec<KeyValue<'_>> = entries.iter().map(|(key, value)| KeyValue { key, value }).collect();
        let p = Payload::MapPutAll(MapPutAll {
            ttl_ms: 0,
            name: self.name,
            entries: Seq::Items(&entries),
        });
        expect_empty(Opcode::MapPutAll, self.client.call(&p)?)
    }

    /// One page of entries from `cursor` (0 = start); the returned cursor
    /// continues (0 = done).
    pub fn scan(&self, cursor: u64, page_size: u32) -> Result<(u64, Vec<(Vec<u8>, Vec<u8>)>)> {
        match self.client.call(&Payload::MapScan(Page {
            name: self.name,
            cursor,
            page_size,
        }))? {
            Reply::ScanPage(c, e) => Ok((c, e)),
            other => Err(unexpected(Opcode::MapScan, other)),
        }
    }
}

/// Operations on one Queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueHandle<'c> {
    client: &'c Client,
    name: &'c str,
}

impl QueueHandle<'_> {
    /// Appends an item; false if a bounded queue is full.
    pub fn offer(&self, item: &[u8]) -> Result<bool> {
        let p = Payload::QueueOffer(NamedValue {
            name: self.name,
            value: item,
        });
        expect_bool(Opcode::QueueOffer, self.client.call(&p)?)
    }

    /// Removes the head item, if any.
    pub fn poll(&self) -> Result<Option<Vec<u8>>> {
        let p = Payload::QueuePoll(QueuePoll {
            name: self.name,
            wait_ms: 0,
        });
        expect_value(Opcode::QueuePoll, self.client.call(&p)?)
    }

    /// Removes the head item, waiting up to `wait` for one to arrive.
    /// The wait is rounded to milliseconds and bounded by the node's
    /// deadline checks (about a tenth of a second late at most).
    pub fn poll_wait(&self, wait: Duration) -> Result<Option<Vec<u8>>> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
        let p = Payload::QueuePoll(QueuePoll {
            name: self.name,
            wait_ms,
        });
        expect_value(Opcode::QueuePoll, self.client.call(&p)?)
    }

    /// Reads the head item.
    pub fn peek(&self) -> Result<Option<Vec<u8>>> {
        expect_value(
            Opcode::QueuePeek,
            self.client.call(&Payload::QueuePeek(Named { name: self.name }))?,
        )
    }

    /// Items queued.
    pub fn size(&self) -> Result<u64> {
        expect_count(
            Opcode::QueueSize,
            self.client.call(&Payload::QueueSize(Named { name: self.name }))?,
        )
    }

    /// Removes up to `max` items from the head.
    pub fn drain(&self, max: u32) -> Result<Vec<Vec<u8>>> {
        match self.client.call(&Payload::QueueDrain(QueueDrain {
            name: self.name,
            max_items: max,
        }))? {
            Reply::Values(v) => Ok(v),
            other => Err(unexpected(Opcode::QueueDrain, other)),
        }
    }

    /// Removes every item; answers how many.
    pub fn clear(&self) -> Result<u64> {
        expect_count(
            Opcode::QueueClear,
            self.client.call(&Payload::QueueClear(Named { name: self.name }))?,
        )
    }

    /// Removes the queue with every item: its name is then free for
    /// any type and costs no memory. Answers whether it existed; a name
    /// bound to another type fails `WRONG_TYPE`.
    pub fn destroy(&self) -> Result<bool> {
        expect_bool(
            Opcode::QueueDestroy,
            self.client.call(&Payload::QueueDestroy(Named { name: self.name }))?,
        )
    }
}

/// Operations on one Set.
#[derive(Debug, Clone, Copy)]
pub struct SetHandle<'c> {
    client: &'c Client,
    name: &'c str,
}

impl SetHandle<'_> {
    /// Adds a member; answers whether it was new.
    pub fn add(&self, member: &[u8]) -> Result<bool> {
        expect_bool(
            Opcode::SetAdd,
            self.client.call(&Payload::SetAdd(Keyed {
                name: self.name,
                key: member,
            }))?,
        )
    }

    /// Removes a member; answers whether it was present.
    pub fn remove(&self, member: &[u8]) -> Result<bool> {
        expect_bool(
            Opcode::SetRemove,
            self.client.call(&Payload::SetRemove(Keyed {
                name: self.name,
                key: member,
            }))?,
        )
    }

    /// Whether a member is present.
    pub fn contains(&self, member: &[u8]) -> Result<bool> {
        let p = Payload::SetContains(Keyed {
            name: self.name,
            key: member,
        });
        expect_bool(Opcode::SetContains, self.client.call(&p)?)
    }

    /// One page of members from `cursor`; the returned cursor continues.
    pub fn members(&self, cursor: u64, page_size: u32) -> Result<(u64, Vec<Vec<u8>>)> {
        match self.client.call(&Payload::SetMembers(Page {
            name: self.name,
            cursor,
            page_size,
        }))? {
            Reply::MembersPage(c, m) => Ok((c, m)),
            other => Err(unexpected(Opcode::SetMembers, other)),
        }
    }

    /// Members.
    pub fn size(&self) -> Result<u64> {
        expect_count(
            Opcode::SetSize,
            self.client.call(&Payload::SetSize(Named { name: self.name }))?,
        )
    }

    /// Removes every member; answers how many.
    pub fn clear(&self) -> Result<u64> {
        expect_count(
            Opcode::SetClear,
            self.client.call(&Payload::SetClear(Named { name: self.name }))?,
        )
    }

    /// Removes the set with every member: its name is then free for
    /// any type and costs no memory. Answers whether it existed; a name
    /// bound to another type fails `WRONG_TYPE`.
    pub fn destroy(&self) -> Result<bool> {
        expect_bool(
            Opcode::SetDestroy,
            self.client.call(&Payload::SetDestroy(Named { name: self.name }))?,
        )
    }
}

/// Operations on one AtomicLong.
#[derive(Debug, Clone, Copy)]
pub struct AtomicLongHandle<'c> {
    client: &'c Client,
    name: &'c str,
}

impl AtomicLongHandle<'_> {
    fn long(&self, op: Opcode, value: i64) -> Result<Reply> {
        let l = NamedLong { name: self.name, value };
        let payload = match op {
            Opcode::AtomicSet => Payload::AtomicSet(l),
            Opcode::AtomicAddAndGet => Payload::AtomicAddAndGet(l),
            Opcode::AtomicGetAndAdd => Payload::AtomicGetAndAdd(l),
            _ => Payload::AtomicGetAndSet(l),
        };
        self.client.call(&payload)
    }

    /// The value (0 if never set).
    pub fn get(&self) -> Result<i64> {
        expect_long(
            Opcode::AtomicGet,
            self.client.call(&Payload::AtomicGet(Named { name: self.name }))?,
        )
    }

    /// Sets the value.
    pub fn set(&self, value: i64) -> Result<()> {
        expect_empty(Opcode::AtomicSet, self.long(Opcode::AtomicSet, value)?)
    }

    /// Adds and answers the new value.
    pub fn add_and_get(&self, delta: i64) -> Result<i64> {
        expect_long(Opcode::AtomicAddAndGet, self.long(Opcode::AtomicAddAndGet, delta)?)
    }

    /// Adds and answers the previous value.
    pub fn get_and_add(&self, delta: i64) -> Result<i64> {
        expect_long(Opcode::AtomicGetAndAdd, self.long(Opcode::AtomicGetAndAdd, delta)?)
    }

    /// Sets and answers the previous value.
    pub fn get_and_set(&self, value: i64) -> Result<i64> {
        expect_long(Opcode::AtomicGetAndSet, self.long(Opcode::AtomicGetAndSet, value)?)
    }

    /// Removes the AtomicLong: its name is then free for any type (and the
    /// value reads 0 again). Answers whether it existed; a name bound to
    /// another type fails `WRONG_TYPE`.
    pub fn destroy(&self) -> Result<bool> {
        expect_bool(
            Opcode::AtomicDestroy,
            self.client.call(&Payload::AtomicDestroy(Named { name: self.name }))?,
        )
    }

    /// Sets `new` only if the value is `expected`.
    pub fn compare_and_set(&self, expected: i64, new: i64) -> Result<bool> {
        let p = Payload::AtomicCompareAndSet(AtomicCompareAndSet {
            name: self.name,
            expected,
            new,
        });
        expect_bool(Opcode::AtomicCompareAndSet, self.client.call(&p)?)
    }
}

/// Operations on one Topic.
#[derive(Debug, Clone, Copy)]
pub struct TopicHandle<'c> {
    client: &'c Client,
    name: &'c str,
}

/// A message pushed on a topic subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subscription it arrived on.
    pub subscription_id: u64,
    /// Its position in the topic (from 1).
    pub sequence: u64,
    /// Messages this subscriber missed just before this one because it
    /// read too slowly.
    pub dropped_before: u64,
    /// Topic name.
    pub topic: String,
    /// The message.
    pub payload: Vec<u8>,
}

/// A topic subscription on its own connection. Iterating blocks until the
/// next message; [`TopicSubscription::next_within`] waits at most a while.
#[derive(Debug)]
pub struct TopicSubscription {
    conn: Connection,
    id: u64,
}

impl TopicSubscription {
    /// The subscription id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next message, or `None` if none arrives within `timeout`.
    pub fn next_within(&mut self, timeout: Duration) -> Result<Option<Message>> {
        self.conn.recv_push(timeout)
    }
}

impl Iterator for TopicSubscription {
    type Item = Result<Message>;

    fn next(&mut self) -> Option<Result<Message>> {
        loop {
            match self.conn.recv_push(Duration::from_secs(3600)) {
                Ok(Some(m)) => return Some(Ok(m)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl TopicHandle<'_> {
    /// Subscribes on a new connection; messages published from now on
    /// arrive on the returned subscription.
    pub fn subscribe(&self) -> Result<TopicSubscription> {
        let mut conn = self.client.open()?;
        match conn.call(&Payload::TopicSubscribe(Named { name: self.name }), None)? {
            Reply::Count(id) => Ok(TopicSubscription { conn, id }),
            other => Err(unexpected(Opcode::TopicSubscribe, other)),
        }
    }

    /// Publishes a message; answers its sequence in the topic.
    pub fn publish(&self, message: &[u8]) -> Result<u64> {
        let p = Payload::TopicPublish(NamedValue {
            name: self.name,
            value: message,
        });
        expect_count(Opcode::TopicPublish, self.client.call(&p)?)
    }
}
