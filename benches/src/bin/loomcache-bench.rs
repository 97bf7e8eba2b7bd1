//! `loomcache-bench`: a closed-loop load generator for LoomCache (native
//! protocol), Redis (RESP) and, when built with the `etcd` feature, etcd
//! (gRPC), so all of them are driven the same way.
//!
//! Each connection sends `--pipeline` requests, then waits for their
//! answers, and records each request's latency (from the moment its batch
//! was written to the moment its answer was read) in an HdrHistogram. Keys
//! are drawn uniformly from `--keys`; `--read-ratio` chooses GET over SET.
//! Nothing is measured during `--warmup`. Native and RESP connections are
//! driven by `--io-threads` event loops (module `events`), or each by a
//! blocking thread of its own (`--io-threads 0`); the etcd backend is
//! described in its module, `etcd`.
//!
//! The generator uses the system allocator: with a thread per connection,
//! a per-thread-heap allocator reserves and zeroes fresh pages for each of
//! a thousand threads, kernel work that would be taken from the servers
//! sharing the machine.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use loomcache_benches::resp;
use loomcache_wire::{
    encode_frame, frame_len, Frame, Framer, HeaderFields, Keyed, Limits, MapWrite, Opcode, Payload, Response,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// LoomCache's binary protocol (MAP_SET / MAP_GET on one map).
    Native,
    /// The Redis protocol (SET / GET).
    Resp,
    /// etcd's gRPC KV API (Put / linearizable Range); needs the `etcd` feature.
    Etcd,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Resp => "resp",
            Backend::Etcd => "etcd",
        }
    }
}

/// Closed-loop load against a LoomCache node, a Redis server or an etcd cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "loomcache-bench", version)]
struct Args {
    /// Protocol to speak.
    #[arg(long, value_enum, default_value_t = Backend::Native)]
    backend: Backend,
    /// Server address. For etcd, a comma-separated list of client endpoints
    /// (`host:port` or `http://host:port`): each connection balances its
    /// requests over all of them, and etcd forwards to its leader.
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Event-loop threads driving the native and RESP connections, each
    /// over its share of them; 0 runs a blocking thread per connection
    /// instead. Default: the cores this process may run on (as the etcd
    /// backend's runtime has a worker per core).
    #[arg(long)]
    io_threads: Option<usize>,
    /// Requests in flight per connection (concurrent gRPC calls for etcd).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Fraction of requests that are reads (0.0 = SET only, 1.0 = GET only).
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds before.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Fill every key once before the run (so reads hit).
    #[arg(long)]
    preload: bool,
    /// Open loop: send this many requests per second in total, spread
    /// evenly over the connections, instead of each connection sending its
    /// next batch as soon as the last is answered. Latency then runs from
    /// the moment a batch was due, so a server that falls behind is
    /// charged for the wait. Native and RESP backends, with event loops.
    #[arg(long)]
    rate: Option<f64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// How long a connection waits after a batch in which a request failed, so
/// a server that refuses everything is not spun against.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// A batch not answered within this long fails the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests that failed (an error answer, or for etcd a failed call), and
/// the first one's message. They are counted, not measured. A native
/// connection answered REDIRECT moves to the leader it names once its
/// batch is answered; `redirects` counts those moves.
#[derive(Debug, Default)]
struct Failures {
    count: u64,
    first: Option<String>,
    redirects: u64,
}

impl Failures {
    fn note(&mut self, message: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(message());
        }
    }

    fn merge(&mut self, other: Failures) {
        self.count += other.count;
        self.redirects += other.redirects;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One connection's protocol state: the requests to send and the answers
/// received so far, apart from the socket, so the blocking and the
/// event-driven drivers share it.
enum Proto {
    Native {
        framer: Framer<Vec<u8>>,
        out: Vec<u8>,
        next_id: u64,
        /// The leader's client address from a REDIRECT answer.
        redirect: Option<String>,
    },
    Resp {
        buf: Vec<u8>,
        start: usize,
        end: usize,
        out: Vec<u8>,
    },
}

fn key_of(i: u64) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

impl Proto {
    fn new(backend: Backend) -> std::io::Result<Proto> {
        Ok(match backend {
            Backend::Native => Proto::Native {
                framer: Framer::new(vec![0u8; Limits::DEFAULT.frame_max_bytes()], Limits::DEFAULT)
                    .map_err(std::io::Error::other)?,
                out: Vec::with_capacity(64 << 10),
                next_id: 1,
                redirect: None,
            },
            Backend::Resp => Proto::Resp {
                buf: vec![0u8; 1 << 20],
                start: 0,
                end: 0,
                out: Vec::with_capacity(64 << 10),
            },
            Backend::Etcd => unreachable!("the etcd backend has its own connections"),
        })
    }

    /// Appends one request to the outgoing batch.
    fn push(&mut self, read: bool, key: &[u8], value: &[u8]) {
        match self {
            Proto::Native { out, next_id, .. } => {
                let payload = if read {
                    Payload::MapGet(Keyed { name: "bench", key })
                } else {
                    Payload::MapSet(MapWrite {
                        ttl_ms: 0,
                        name: "bench",
                        key,
                        value,
                    })
                };
                let at = out.len();
                out.resize(at + frame_len(None, &payload), 0);
                encode_frame(
                    &mut out[at..],
                    &HeaderFields::request(payload.opcode(), *next_id),
                    None,
                    &payload,
                )
                .expect("sized by frame_len");
                *next_id += 1;
            }
            Proto::Resp { out, .. } => {
                if read {
                    resp::encode_command(&[b"GET", key], out);
                } else {
                    resp::encode_command(&[b"SET", key, value], out);
                }
            }
        }
    }

    /// The encoded batch, to be written and then cleared.
    fn out(&mut self) -> &mut Vec<u8> {
        match self {
            Proto::Native { out, .. } | Proto::Resp { out, .. } => out,
        }
    }

    /// Consumes up to `max` complete answers from the received bytes and
    /// answers how many; error answers are noted in `failures`.
    fn take_answers(&mut self, max: usize, failures: &mut Failures) -> std::io::Result<usize> {
        let mut got = 0;
        match self {
            Proto::Native { framer, redirect, .. } => {
                while got < max {
                    let Some(frame) = framer.next_frame().map_err(std::io::Error::other)? else {
                        break;
                    };
                    if frame.opcode() != Opcode::ResponseOk {
                        if let Ok(Response::Redirect(r)) = frame.decode_response(Opcode::MapGet, &Limits::DEFAULT) {
                            *redirect = Some(r.leader_addr.to_owned());
                        }
                        failures.note(|| describe_refusal(&frame));
                    }
                    got += 1;
                }
            }
            Proto::Resp { buf, start, end, .. } => {
                while got < max {
                    let Some((used, error)) = resp_reply_len(&buf[*start..*end])? else {
                        break;
                    };
                    if error {
                        failures.note(|| String::from_utf8_lossy(&buf[*start + 1..*start + used - 2]).into_owned());
                    }
                    *start += used;
                    got += 1;
                }
            }
        }
        Ok(got)
    }

    /// Where a REDIRECT answered since the last call sends the connection.
    fn take_redirect(&mut self) -> Option<String> {
        match self {
            Proto::Native { redirect, .. } => redirect.take(),
            Proto::Resp { .. } => None,
        }
    }

    /// Room to receive into; [`Proto::filled`] reports what arrived.
    fn spare(&mut self) -> &mut [u8] {
        match self {
            Proto::Native { framer, .. } => framer.spare_mut(),
            Proto::Resp { buf, start, end, .. } => {
                if *start == *end {
                    *start = 0;
                    *end = 0;
                } else if *end == buf.len() {
                    buf.copy_within(*start..*end, 0);
                    *end -= *start;
                    *start = 0;
                }
                &mut buf[*end..]
            }
        }
    }

    fn filled(&mut self, n: usize) {
        match self {
            Proto::Native { framer, .. } => framer.filled(n),
            Proto::Resp { end, .. } => *end += n,
        }
    }
}

/// A connection driven by blocking calls on its own thread.
struct Conn {
    stream: TcpStream,
    proto: Proto,
}

impl Conn {
    fn open(args: &Args) -> std::io::Result<Conn> {
        Conn::open_at(args, &args.addr)
    }

    fn open_at(args: &Args, addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        Ok(Conn {
            stream,
            proto: Proto::new(args.backend)?,
        })
    }

    fn push(&mut self, read: bool, key: &[u8], value: &[u8]) {
        self.proto.push(read, key, value);
    }

    /// Writes the batch and waits for `n` answers; error answers are noted
    /// in `failures`. An `Err` is a failure of the connection itself.
    fn flush_and_wait(&mut self, n: usize, failures: &mut Failures) -> std::io::Result<()> {
        let out = self.proto.out();
        self.stream.write_all(out)?;
        out.clear();
        let mut got = 0;
        loop {
            got += self.proto.take_answers(n - got, failures)?;
            if got == n {
                return Ok(());
            }
            let read = self.stream.read(self.proto.spare())?;
            if read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.proto.filled(read);
        }
    }
}

/// What a native answer other than `RESPONSE_OK` says.
fn describe_refusal(frame: &Frame<'_>) -> String {
    match frame.decode_response(Opcode::MapGet, &Limits::DEFAULT) {
        Ok(Response::Error { code, message }) => format!("node answered {}: {message}", code.wire_name()),
        Ok(Response::Redirect(redirect)) => format!("node answered REDIRECT to node {}", redirect.leader_id),
        _ => format!("node answered {}", frame.opcode()),
    }
}

/// Length of the complete RESP reply at the start of `buf`, if complete,
/// and whether it is an error (`-`).
fn resp_reply_len(buf: &[u8]) -> std::io::Result<Option<(usize, bool)>> {
    let Some(&kind) = buf.first() else { return Ok(None) };
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    match kind {
        b'+' | b':' => Ok(Some((line_end + 2, false))),
        b'-' => Ok(Some((line_end + 2, true))),
        b'$' => {
            let len: i64 = std::str::from_utf8(&buf[1..line_end])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::other("bad bulk length"))?;
            if len < 0 {
                return Ok(Some((line_end + 2, false)));
            }
            let total = line_end + 2 + len as usize + 2;
            Ok((buf.len() >= total).then_some((total, false)))
        }
        other => Err(std::io::Error::other(format!(
            "unexpected reply type {:?}",
            other as char
        ))),
    }
}

/// What one connection measured.
struct Outcome {
    hist: Histogram<u64>,
    /// Requests answered successfully while measuring.
    ops: u64,
    /// Requests that failed, at any time; they are not in `hist`.
    failures: Failures,
}

fn new_histogram() -> std::io::Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)
}

fn run_connection(args: &Args, seed: u64, measuring: &AtomicBool, stop: &AtomicBool) -> std::io::Result<Outcome> {
    let mut conn = Conn::open(args)?;
    let mut rng = Rng(seed | 1);
    let value = vec![b'v'; args.value_size];
    let read_cut = (args.read_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut hist = new_histogram()?;
    let mut ops = 0;
    let mut failures = Failures::default();
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..args.pipeline {
            let key = key_of(rng.next() % args.keys);
            conn.push(rng.next() < read_cut, &key, &value);
        }
        let sent = Instant::now();
        let failed_before = failures.count;
        if let Err(e) = conn.flush_and_wait(args.pipeline, &mut failures) {
            return Err(match &failures.first {
                Some(first) => std::io::Error::new(e.kind(), format!("{e} (the first failed request: {first})")),
                None => e,
            });
        }
        let us = sent.elapsed().as_micros().max(1) as u64;
        let answered = args.pipeline as u64 - (failures.count - failed_before);
        if measuring.load(Ordering::Relaxed) && answered > 0 {
            hist.record_n(us, answered).map_err(std::io::Error::other)?;
            ops += answered;
        }
        if let Some(leader) = conn.proto.take_redirect() {
            conn = Conn::open_at(args, &leader)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot follow a redirect to {leader}: {e}")))?;
            failures.redirects += 1;
        }
        if answered < args.pipeline as u64 {
            std::thread::sleep(ERROR_PAUSE);
        }
    }
    Ok(Outcome { hist, ops, failures })
}

fn preload(args: &Args) -> std::io::Result<()> {
    let mut conn = Conn::open(args)?;
    let value = vec![b'v'; args.value_size];
    let mut i = 0;
    while i < args.keys {
        let batch = (args.keys - i).min(256);
        for k in i..i + batch {
            conn.push(false, &key_of(k), &value);
        }
        let mut failures = Failures::default();
        conn.flush_and_wait(batch as usize, &mut failures)?;
        if let Some(first) = failures.first {
            return Err(std::io::Error::other(first));
        }
        i += batch;
    }
    Ok(())
}

/// The connections of a run, started and not yet joined.
enum Running {
    Threads(Vec<std::thread::JoinHandle<std::io::Result<Outcome>>>),
    #[cfg(feature = "etcd")]
    Etcd(etcd::Running),
}

impl Running {
    fn start(args: &Args, measuring: &Arc<AtomicBool>, stop: &Arc<AtomicBool>) -> std::io::Result<Running> {
        match args.backend {
            Backend::Native | Backend::Resp => {
                if args.preload {
                    preload(args).map_err(|e| std::io::Error::other(format!("preload failed: {e}")))?;
                }
                let io_threads = args
                    .io_threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                    .min(args.connections);
                if io_threads == 0 {
                    return Ok(Running::Threads(
                        (0..args.connections)
                            .map(|i| {
                                let (args, measuring, stop) = (args.clone(), Arc::clone(measuring), Arc::clone(stop));
                                std::thread::spawn(move || run_connection(&args, connection_seed(i), &measuring, &stop))
                            })
                            .collect(),
                    ));
                }
                Ok(Running::Threads(
                    (0..io_threads)
                        .map(|t| {
                            let indexes: Vec<usize> = (t..args.connections).step_by(io_threads).collect();
                            let (args, measuring, stop) = (args.clone(), Arc::clone(measuring), Arc::clone(stop));
                            std::thread::spawn(move || events::run(&args, &indexes, &measuring, &stop))
                        })
                        .collect(),
                ))
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd => etcd::Running::start(args, measuring, stop).map(Running::Etcd),
            #[cfg(not(feature = "etcd"))]
            Backend::Etcd => Err(std::io::Error::other(
                "this build has no etcd backend; build with `--features etcd`",
            )),
        }
    }

    fn finish(self) -> Vec<std::io::Result<Outcome>> {
        match self {
            Running::Threads(threads) => threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("a connection thread panicked")))
                })
                .collect(),
            #[cfg(feature = "etcd")]
            Running::Etcd(running) => running.finish(),
        }
    }
}

fn connection_seed(i: usize) -> u64 {
    0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.connections == 0 || args.pipeline == 0 || args.keys == 0 {
        eprintln!("loomcache-bench: --connections, --pipeline and --keys must be at least 1");
        return std::process::ExitCode::from(2);
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            eprintln!("loomcache-bench: --rate must be a positive number of requests per second");
            return std::process::ExitCode::from(2);
        }
        if args.backend == Backend::Etcd || args.io_threads == Some(0) {
            eprintln!("loomcache-bench: --rate needs the native or RESP backend with --io-threads of at least 1");
            return std::process::ExitCode::from(2);
        }
    }
    if args.backend != Backend::Etcd && args.addr.to_socket_addrs().is_err() {
        eprintln!("loomcache-bench: --addr {:?} is not a socket address", args.addr);
        return std::process::ExitCode::from(2);
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let running = match Running::start(&args, &measuring, &stop) {
        Ok(running) => running,
        Err(e) => {
            eprintln!("loomcache-bench: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    measuring.store(true, Ordering::SeqCst);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    measuring.store(false, Ordering::SeqCst);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let mut hist = new_histogram().expect("valid bounds");
    let mut ops = 0;
    let mut failures = Failures::default();
    for outcome in running.finish() {
        match outcome {
            Ok(o) => {
                hist.add(&o.hist).expect("same bounds");
                ops += o.ops;
                failures.merge(o.failures);
            }
            Err(e) => {
                eprintln!("loomcache-bench: a connection failed: {e}");
                return std::process::ExitCode::from(1);
            }
        }
    }
    let errors = failures.count;
    let redirects = failures.redirects;
    if let Some(first) = &failures.first {
        eprintln!("loomcache-bench: {errors} request(s) failed; the first: {first}");
    }
    if redirects > 0 {
        eprintln!("loomcache-bench: connections followed {redirects} redirect(s) to a new leader");
    }
    let rate = ops as f64 / elapsed;
    let (p50, p99, p999, max) = (
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max(),
    );
    let backend = args.backend.name();
    if args.json {
        println!(
            "{{\"backend\":\"{backend}\",\"addr\":\"{}\",\"connections\":{},\"pipeline\":{},\"value_size\":{},\"keys\":{},\"read_ratio\":{},\"seconds\":{elapsed:.3},\"ops\":{ops},\"errors\":{errors},\"redirects\":{redirects},\"ops_per_sec\":{rate:.1},\"p50_us\":{p50},\"p99_us\":{p99},\"p999_us\":{p999},\"max_us\":{max}}}",
            args.addr, args.connections, args.pipeline, args.value_size, args.keys, args.read_ratio
        );
    } else {
        let errors = if errors > 0 {
            format!(" errors={errors}")
        } else {
            String::new()
        };
        println!(
            "{backend} {} conns={} pipeline={} value={}B keys={} reads={:.0}%: {rate:.0} ops/s  p50={p50}us p99={p99}us p99.9={p999}us max={max}us{errors}",
            args.addr,
            args.connections,
            args.pipeline,
            args.value_size,
            args.keys,
            args.read_ratio * 100.0
        );
    }
    std::process::ExitCode::SUCCESS
}

/// The event-driven driver: each thread runs a mio poll over its share of
/// the connections, each connection the same closed loop as a blocking
/// one (send a batch, wait for all its answers, record, repeat), so a
/// thousand connections cost a few threads, not a thousand, and the
/// generator takes little of the cores it shares with the servers.
mod events {
    use std::io::{self, Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use std::os::fd::{AsRawFd, OwnedFd};

    use mio::net::TcpStream;
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Registry, Token};
    use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

    use super::{
        connection_seed, key_of, new_histogram, Args, Failures, Outcome, Proto, Rng, ERROR_PAUSE, REQUEST_TIMEOUT,
    };

    /// How often paused connections, stalled batches and the stop flag are
    /// looked at when no event comes sooner.
    const SWEEP: Duration = Duration::from_millis(5);

    /// The token of the pacing timer (open loop).
    const TIMER: Token = Token(usize::MAX);

    /// A one-shot timer with nanosecond resolution that wakes the poll:
    /// poll timeouts are whole milliseconds, too coarse to send on time at
    /// thousands of batches per second.
    struct Pacer {
        fd: OwnedFd,
    }

    impl Pacer {
        fn new(poll: &Poll) -> io::Result<Pacer> {
            let fd = rustix::time::timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            poll.registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), TIMER, Interest::READABLE)?;
            Ok(Pacer { fd })
        }

        /// Fires once, `after` from now (at least a nanosecond: zero would
        /// disarm it).
        fn arm(&self, after: Duration) -> io::Result<()> {
            let after = after.max(Duration::from_nanos(1));
            let value = Itimerspec {
                it_interval: Timespec { tv_sec: 0, tv_nsec: 0 },
                it_value: Timespec {
                    tv_sec: after.as_secs() as i64,
                    tv_nsec: i64::from(after.subsec_nanos()),
                },
            };
            rustix::time::timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &value)?;
            Ok(())
        }

        /// Clears an expiry so the next one raises a new event.
        fn clear(&self) {
            let mut expirations = [0u8; 8];
            let _ = rustix::io::read(&self.fd, &mut expirations);
        }
    }

    /// The run's fixed inputs, shared by a thread's connections.
    struct Load<'a> {
        args: &'a Args,
        value: Vec<u8>,
        read_cut: u64,
        /// With `--rate`: how often each connection's batch falls due.
        interval: Option<Duration>,
        measuring: &'a AtomicBool,
        stop: &'a AtomicBool,
    }

    struct Driven {
        stream: TcpStream,
        token: Token,
        proto: Proto,
        rng: Rng,
        /// Bytes of the batch's encoding written so far.
        written: usize,
        /// Answers of the batch still to come.
        awaited: usize,
        /// Requests of the batch answered with an error so far.
        failed: u64,
        /// When the batch was sent, or with `--rate` when it was due.
        sent: Instant,
        /// After a batch with a failed request: when to send the next.
        resume_at: Option<Instant>,
        done: bool,
    }

    impl Driven {
        /// Encodes a batch and starts sending it; `due` is when it was
        /// scheduled (open loop), else it counts from now.
        fn start_batch(&mut self, load: &Load<'_>, due: Option<Instant>) -> io::Result<()> {
            for _ in 0..load.args.pipeline {
                let key = key_of(self.rng.next() % load.args.keys);
                let read = self.rng.next() < load.read_cut;
                self.proto.push(read, &key, &load.value);
            }
            self.awaited = load.args.pipeline;
            self.failed = 0;
            self.sent = due.unwrap_or_else(Instant::now);
            self.send()
        }

        /// Writes what the socket takes of the batch.
        fn send(&mut self) -> io::Result<()> {
            let out = self.proto.out();
            while self.written < out.len() {
                match self.stream.write(&out[self.written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            out.clear();
            self.written = 0;
            Ok(())
        }

        /// The batch is answered: records it and starts the next, pauses
        /// after a failure, or ends once the run stops. A connection that
        /// was redirected reconnects to the leader first.
        fn batch_answered(&mut self, load: &Load<'_>, tally: &mut Outcome, registry: &Registry) -> io::Result<()> {
            if let Some(leader) = self.proto.take_redirect() {
                let mut stream = connect(&leader)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot follow a redirect to {leader}: {e}")))?;
                registry.deregister(&mut self.stream)?;
                registry.register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE)?;
                self.stream = stream;
                self.proto = Proto::new(load.args.backend)?;
                tally.failures.redirects += 1;
            }
            let us = self.sent.elapsed().as_micros().max(1) as u64;
            let failed = self.failed;
            let answered = load.args.pipeline as u64 - failed;
            if load.measuring.load(Ordering::Relaxed) && answered > 0 {
                tally.hist.record_n(us, answered).map_err(io::Error::other)?;
                tally.ops += answered;
            }
            let now = Instant::now();
            if load.stop.load(Ordering::Relaxed) {
                self.done = true;
            } else if let Some(interval) = load.interval {
                // The next batch is due one interval after this one was,
                // however long this one took; after a failure, no sooner
                // than the pause.
                let mut due = self.sent + interval;
                if failed > 0 {
                    due = due.max(now + ERROR_PAUSE);
                }
                if due > now {
                    self.resume_at = Some(due);
                } else {
                    self.start_batch(load, Some(due))?;
                }
            } else if failed > 0 {
                self.resume_at = Some(now + ERROR_PAUSE);
            } else {
                self.start_batch(load, None)?;
            }
            Ok(())
        }

        /// Handles a readiness event: sends what is pending and reads
        /// until the socket is empty.
        fn service(&mut self, load: &Load<'_>, tally: &mut Outcome, registry: &Registry) -> io::Result<()> {
            if self.written < self.proto.out().len() {
                self.send()?;
            }
            while !self.done {
                let spare = self.proto.spare();
                let room = spare.len();
                match self.stream.read(spare) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        self.proto.filled(n);
                        // Only this connection's answers are parsed here,
                        // so the count's growth is this batch's failures.
                        let before = tally.failures.count;
                        let got = self.proto.take_answers(self.awaited, &mut tally.failures)?;
                        self.failed += tally.failures.count - before;
                        self.awaited -= got;
                        if got > 0 && self.awaited == 0 {
                            self.batch_answered(load, tally, registry)?;
                        }
                        if cfg!(unix) && n < room {
                            // A short read emptied the socket; a later
                            // arrival raises a new event (as in loomd's
                            // event loop).
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }

    /// A non-blocking connection without Nagle's delay.
    fn connect(addr: &str) -> io::Result<TcpStream> {
        let stream = std::net::TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(TcpStream::from_std(stream))
    }

    /// Drives the connections numbered `indexes` (of `--connections`) until
    /// `stop`, each finishing the batch it has out.
    pub(super) fn run(
        args: &Args,
        indexes: &[usize],
        measuring: &AtomicBool,
        stop: &AtomicBool,
    ) -> io::Result<Outcome> {
        let mut poll = Poll::new()?;
        let load = Load {
            args,
            value: vec![b'v'; args.value_size],
            read_cut: (args.read_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
            interval: args
                .rate
                .map(|rate| Duration::from_secs_f64(args.connections as f64 * args.pipeline as f64 / rate)),
            measuring,
            stop,
        };
        // What this thread measured, over all its connections.
        let mut tally = Outcome {
            hist: new_histogram()?,
            ops: 0,
            failures: Failures::default(),
        };
        let mut conns = Vec::with_capacity(indexes.len());
        for (token, &index) in indexes.iter().enumerate() {
            let mut stream = connect(&args.addr)?;
            poll.registry()
                .register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)?;
            conns.push(Driven {
                stream,
                token: Token(token),
                proto: Proto::new(args.backend)?,
                rng: Rng(connection_seed(index) | 1),
                written: 0,
                awaited: 0,
                failed: 0,
                sent: Instant::now(),
                resume_at: None,
                done: false,
            });
        }
        let begin = Instant::now();
        for (conn, &index) in conns.iter_mut().zip(indexes) {
            match load.interval {
                // Open loop: the first batches of all the run's
                // connections are spread evenly over one interval.
                Some(interval) => {
                    conn.resume_at = Some(begin + interval.mul_f64(index as f64 / args.connections as f64));
                }
                None => conn.start_batch(&load, None)?,
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        let pacer = match load.interval {
            Some(_) => Some(Pacer::new(&poll)?),
            None => None,
        };
        // Connections not done, recounted at each sweep.
        let mut live = conns.len();
        while live > 0 {
            // Open loop: the timer wakes the poll when the earliest batch
            // falls due.
            if let Some(pacer) = &pacer {
                if let Some(at) = conns.iter().filter_map(|c| c.resume_at).min() {
                    pacer.arm(at.saturating_duration_since(Instant::now()))?;
                }
            }
            poll.poll(&mut events, Some(SWEEP))?;
            for event in events.iter() {
                if event.token() == TIMER {
                    if let Some(pacer) = &pacer {
                        pacer.clear();
                    }
                    continue;
                }
                if let Some(conn) = conns.get_mut(event.token().0).filter(|c| !c.done) {
                    conn.service(&load, &mut tally, poll.registry())?;
                }
            }
            let now = Instant::now();
            if load.interval.is_none() && now.duration_since(last_sweep) < SWEEP {
                continue;
            }
            last_sweep = now;
            for conn in conns.iter_mut().filter(|c| !c.done) {
                match conn.resume_at {
                    Some(_) if stop.load(Ordering::Relaxed) => conn.done = true,
                    Some(at) if now >= at => {
                        conn.resume_at = None;
                        conn.start_batch(&load, load.interval.map(|_| at))?;
                    }
                    Some(_) => {}
                    None if now.duration_since(conn.sent) > REQUEST_TIMEOUT => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
                        ));
                    }
                    None => {}
                }
            }
            live = conns.iter().filter(|c| !c.done).count();
        }
        Ok(tally)
    }
}

/// The etcd backend.
///
/// All connections share one multi-threaded tokio runtime with a worker per
/// core, and each connection is a task with its own etcd `Client`, that is
/// its own HTTP/2 connection to every endpoint. So the connections stay as
/// independent of each other as the other backends' sockets, while a
/// thousand of them cost a thousand tasks rather than a thousand threads
/// (or runtimes) contending for the cores the servers also need; that
/// keeps the generator from being the bottleneck. A connection's
/// `--pipeline` requests are as many concurrent unary gRPC calls (one HTTP/2
/// stream each) on clones of its KV client; it waits for all of them, as a
/// pipelined batch, and records each answered request's latency from the
/// moment the batch was issued to the moment the last answer arrived, as
/// the other backends do. Writes are Puts; reads are Gets at etcd's default,
/// linearizable, consistency. A failed call is counted, not measured, as an
/// error answer is on the other backends.
#[cfg(feature = "etcd")]
mod etcd {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use etcd_client::{Client, ConnectOptions, KvClient};
    use futures_util::future::join_all;
    use tokio::runtime::Runtime;
    use tokio::task::JoinHandle;

    use super::{connection_seed, key_of, new_histogram, Args, Failures, Outcome, Rng, ERROR_PAUSE};

    /// A request not answered within this long fails (the other backends'
    /// read timeout).
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Puts in flight at once while preloading.
    const PRELOAD_BATCH: u64 = 256;

    /// The connections of a run on their runtime.
    pub(super) struct Running {
        runtime: Runtime,
        tasks: Vec<JoinHandle<io::Result<Outcome>>>,
    }

    impl Running {
        /// Builds the runtime, preloads if asked, and starts every connection.
        pub(super) fn start(args: &Args, measuring: &Arc<AtomicBool>, stop: &Arc<AtomicBool>) -> io::Result<Running> {
            let endpoints = endpoints(&args.addr)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            if args.preload {
                runtime
                    .block_on(preload(args, &endpoints))
                    .map_err(|e| io::Error::other(format!("preload failed: {e}")))?;
            }
            let tasks = (0..args.connections)
                .map(|i| {
                    runtime.spawn(run_connection(
                        args.clone(),
                        endpoints.clone(),
                        connection_seed(i),
                        Arc::clone(measuring),
                        Arc::clone(stop),
                    ))
                })
                .collect();
            Ok(Running { runtime, tasks })
        }

        /// Waits for every connection to see `stop` and finish its batch.
        pub(super) fn finish(self) -> Vec<io::Result<Outcome>> {
            let Running { runtime, tasks } = self;
            let outcomes = runtime.block_on(async {
                let mut outcomes = Vec::with_capacity(tasks.len());
                for task in tasks {
                    outcomes.push(task.await.unwrap_or_else(|e| Err(io::Error::other(e))));
                }
                outcomes
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
            outcomes
        }
    }

    fn endpoints(addr: &str) -> io::Result<Vec<String>> {
        let endpoints: Vec<String> = addr
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(io::Error::other("--addr names no etcd endpoint"));
        }
        Ok(endpoints)
    }

    async fn connect(endpoints: &[String]) -> io::Result<Client> {
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        Client::connect(endpoints, Some(options))
            .await
            .map_err(io::Error::other)
    }

    async fn request(kv: &mut KvClient, read: bool, key: Vec<u8>, value: &[u8]) -> Result<(), etcd_client::Error> {
        if read {
            kv.get(key, None).await.map(drop)
        } else {
            kv.put(key, value, None).await.map(drop)
        }
    }

    async fn run_connection(
        args: Args,
        endpoints: Vec<String>,
        seed: u64,
        measuring: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Outcome> {
        let client = connect(&endpoints).await?;
        let mut kvs: Vec<KvClient> = (0..args.pipeline).map(|_| client.kv_client()).collect();
        let mut rng = Rng(seed | 1);
        let value = vec![b'v'; args.value_size];
        let read_cut = (args.read_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        let mut hist = new_histogram()?;
        let mut ops = 0;
        let mut failures = Failures::default();
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let calls = kvs.iter_mut().map(|kv| {
                let key = key_of(rng.next() % args.keys);
                request(kv, rng.next() < read_cut, key, &value)
            });
            let results = join_all(calls).await;
            let us = sent.elapsed().as_micros().max(1) as u64;
            let mut answered = 0;
            for result in results {
                match result {
                    Ok(()) => answered += 1,
                    Err(e) => failures.note(|| e.to_string()),
                }
            }
            if measuring.load(Ordering::Relaxed) && answered > 0 {
                hist.record_n(us, answered).map_err(io::Error::other)?;
                ops += answered;
            }
            if answered < args.pipeline as u64 {
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
        Ok(Outcome { hist, ops, failures })
    }

    /// Puts every key once, [`PRELOAD_BATCH`] at a time; any failure fails it.
    async fn preload(args: &Args, endpoints: &[String]) -> io::Result<()> {
        let client = connect(endpoints).await?;
        let mut kvs: Vec<KvClient> = (0..PRELOAD_BATCH).map(|_| client.kv_client()).collect();
        let value = vec![b'v'; args.value_size];
        let mut i = 0;
        while i < args.keys {
            let batch = (args.keys - i).min(PRELOAD_BATCH);
            let calls = kvs
                .iter_mut()
                .zip(i..i + batch)
                .map(|(kv, k)| request(kv, false, key_of(k), &value));
            for result in join_all(calls).await {
                result.map_err(io::Error::other)?;
            }
            i += batch;
        }
        Ok(())
    }
}
