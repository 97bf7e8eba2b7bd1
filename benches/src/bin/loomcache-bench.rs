//! `loomcache-bench`: a closed-loop load generator for LoomCache (native
//! protocol) and Redis (RESP), so both are driven the same way.
//!
//! Each connection runs on its own thread: it sends `--pipeline` requests,
//! then reads their answers, and records each request's latency (from the
//! moment its batch was written to the moment its answer was read) in an
//! HdrHistogram. Keys are drawn uniformly from `--keys`; `--read-ratio`
//! chooses GET over SET. Nothing is measured during `--warmup`.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use loomcache_benches::resp;
use loomcache_wire::{encode_frame, frame_len, Framer, HeaderFields, Keyed, Limits, MapWrite, Opcode, Payload};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// LoomCache's binary protocol (MAP_SET / MAP_GET on one map).
    Native,
    /// The Redis protocol (SET / GET).
    Resp,
}

/// Closed-loop load against a LoomCache node or a Redis server.
#[derive(Debug, Clone, Parser)]
#[command(name = "loomcache-bench", version)]
struct Args {
    /// Protocol to speak.
    #[arg(long, value_enum, default_value_t = Backend::Native)]
    backend: Backend,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: SocketAddr,
    /// Concurrent connections (one thread each).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection.
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
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
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

/// One connection's protocol state.
enum Conn {
    Native {
        stream: TcpStream,
        framer: Framer<Vec<u8>>,
        out: Vec<u8>,
        next_id: u64,
    },
    Resp {
        stream: TcpStream,
        buf: Vec<u8>,
        start: usize,
        end: usize,
        out: Vec<u8>,
    },
}

fn key_of(i: u64) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

impl Conn {
    fn open(args: &Args) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(args.addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(match args.backend {
            Backend::Native => Conn::Native {
                stream,
                framer: Framer::new(vec![0u8; Limits::DEFAULT.frame_max_bytes()], Limits::DEFAULT)
                    .map_err(std::io::Error::other)?,
                out: Vec::with_capacity(64 << 10),
                next_id: 1,
            },
            Backend::Resp => Conn::Resp {
                stream,
                buf: vec![0u8; 1 << 20],
                start: 0,
                end: 0,
                out: Vec::with_capacity(64 << 10),
            },
        })
    }

    /// Appends one request to the outgoing batch.
    fn push(&mut self, read: bool, key: &[u8], value: &[u8]) {
        match self {
            Conn::Native { out, next_id, .. } => {
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
            Conn::Resp { out, .. } => {
                if read {
                    resp::encode_command(&[b"GET", key], out);
                } else {
                    resp::encode_command(&[b"SET", key, value], out);
                }
            }
        }
    }

    /// Writes the batch and waits for `n` answers.
    fn flush_and_wait(&mut self, n: usize) -> std::io::Result<()> {
        match self {
            Conn::Native {
                stream, framer, out, ..
            } => {
                stream.write_all(out)?;
                out.clear();
                let mut got = 0;
                while got < n {
                    while let Some(frame) = framer.next_frame().map_err(std::io::Error::other)? {
                        if frame.opcode() != Opcode::ResponseOk {
                            return Err(std::io::Error::other(format!("node answered {}", frame.opcode())));
                        }
                        got += 1;
                    }
                    if got == n {
                        break;
                    }
                    let read = stream.read(framer.spare_mut())?;
                    if read == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    framer.filled(read);
                }
                Ok(())
            }
            Conn::Resp {
                stream,
                buf,
                start,
                end,
                out,
            } => {
                stream.write_all(out)?;
                out.clear();
                let mut got = 0;
                while got < n {
                    while let Some(used) = resp_reply_len(&buf[*start..*end])? {
                        *start += used;
                        got += 1;
                        if got == n {
                            break;
                        }
                    }
                    if got == n {
                        break;
                    }
                    if *start == *end {
                        *start = 0;
                        *end = 0;
                    } else if *end == buf.len() {
                        buf.copy_within(*start..*end, 0);
                        *end -= *start;
                        *start = 0;
                    }
                    let read = stream.read(&mut buf[*end..])?;
                    if read == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    *end += read;
                }
                Ok(())
            }
        }
    }
}

/// Length of the complete RESP reply at the start of `buf`, if complete.
/// Errors (`-`) fail the run.
fn resp_reply_len(buf: &[u8]) -> std::io::Result<Option<usize>> {
    let Some(&kind) = buf.first() else { return Ok(None) };
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    match kind {
        b'+' | b':' => Ok(Some(line_end + 2)),
        b'-' => Err(std::io::Error::other(
            String::from_utf8_lossy(&buf[..line_end]).into_owned(),
        )),
        b'$' => {
            let len: i64 = std::str::from_utf8(&buf[1..line_end])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::other("bad bulk length"))?;
            if len < 0 {
                return Ok(Some(line_end + 2));
            }
            let total = line_end + 2 + len as usize + 2;
            Ok((buf.len() >= total).then_some(total))
        }
        other => Err(std::io::Error::other(format!(
            "unexpected reply type {:?}",
            other as char
        ))),
    }
}

struct Outcome {
    hist: Histogram<u64>,
    ops: u64,
}

fn run_connection(args: &Args, seed: u64, measuring: &AtomicBool, stop: &AtomicBool) -> std::io::Result<Outcome> {
    let mut conn = Conn::open(args)?;
    let mut rng = Rng(seed | 1);
    let value = vec![b'v'; args.value_size];
    let read_cut = (args.read_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)?;
    let mut ops = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..args.pipeline {
            let key = key_of(rng.next() % args.keys);
            conn.push(rng.next() < read_cut, &key, &value);
        }
        let sent = Instant::now();
        conn.flush_and_wait(args.pipeline)?;
        if measuring.load(Ordering::Relaxed) {
            let us = sent.elapsed().as_micros().max(1) as u64;
            hist.record_n(us, args.pipeline as u64).map_err(std::io::Error::other)?;
            ops += args.pipeline as u64;
        }
    }
    Ok(Outcome { hist, ops })
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
        conn.flush_and_wait(batch as usize)?;
        i += batch;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.connections == 0 || args.pipeline == 0 || args.keys == 0 {
        eprintln!("loomcache-bench: --connections, --pipeline and --keys must be at least 1");
        return std::process::ExitCode::from(2);
    }
    if args.preload {
        if let Err(e) = preload(&args) {
            eprintln!("loomcache-bench: preload failed: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..args.connections)
        .map(|i| {
            let (args, measuring, stop) = (args.clone(), Arc::clone(&measuring), Arc::clone(&stop));
            std::thread::spawn(move || run_connection(&args, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1), &measuring, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    measuring.store(true, Ordering::SeqCst);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    measuring.store(false, Ordering::SeqCst);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut ops = 0;
    for t in threads {
        match t.join() {
            Ok(Ok(o)) => {
                hist.add(&o.hist).expect("same bounds");
                ops += o.ops;
            }
            Ok(Err(e)) => {
                eprintln!("loomcache-bench: a connection failed: {e}");
                return std::process::ExitCode::from(1);
            }
            Err(_) => return std::process::ExitCode::from(1),
        }
    }
    let rate = ops as f64 / elapsed;
    let (p50, p99, p999, max) = (
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max(),
    );
    let backend = match args.backend {
        Backend::Native => "native",
        Backend::Resp => "resp",
    };
    if args.json {
        println!(
            "{{\"backend\":\"{backend}\",\"addr\":\"{}\",\"connections\":{},\"pipeline\":{},\"value_size\":{},\"keys\":{},\"read_ratio\":{},\"seconds\":{elapsed:.3},\"ops\":{ops},\"ops_per_sec\":{rate:.1},\"p50_us\":{p50},\"p99_us\":{p99},\"p999_us\":{p999},\"max_us\":{max}}}",
            args.addr, args.connections, args.pipeline, args.value_size, args.keys, args.read_ratio
        );
    } else {
        println!(
            "{backend} {} conns={} pipeline={} value={}B keys={} reads={:.0}%: {rate:.0} ops/s  p50={p50}us p99={p99}us p99.9={p999}us max={max}us",
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
