//! `loomctl`: the LoomCache command-line tool.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loomcache_client::{Client, ClientConfig, ClientError};
use loomcache_wire::{partition_of, ErrorCode, Opcode, PARTITION_COUNT};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command-line access to a LoomCache node.
///
/// Exit codes: 0 success, 1 the request failed (connection or server
/// error), 2 usage error, 3 the operation is not supported.
#[derive(Debug, Parser)]
#[command(name = "loomctl", version)]
struct Cli {
    /// Node address.
    #[arg(long, global = true, default_value = "127.0.0.1:7070", env = "LOOMCACHE_ADDR")]
    addr: SocketAddr,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Request timeout in milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Round trip to the node.
    Ping,
    /// Node statistics: connections, queued work, memory, writes applied.
    Info,
    /// The routing partition of a key (murmur3_32 % 271).
    Partition { key: String },
    /// The protocol's opcode table.
    Opcodes,
    /// The protocol's error codes.
    ErrorCodes,
    /// Map operations.
    #[command(subcommand)]
    Map(MapCmd),
    /// Queue operations.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Set operations.
    #[command(subcommand)]
    Set(SetCmd),
    /// AtomicLong operations.
    #[command(subcommand)]
    Atomic(AtomicCmd),
    /// Topic operations.
    #[command(subcommand)]
    Topic(TopicCmd),
    /// Cluster operations (not available on a single node build yet).
    Cluster { args: Vec<String> },
}

#[derive(Debug, Subcommand)]
enum MapCmd {
    /// Store a value; prints the previous one.
    Put {
        name: String,
        key: String,
        value: String,
        /// Time to live in milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
    },
    /// Read a value.
    Get { name: String, key: String },
    /// Remove a key.
    Delete { name: String, key: String },
    /// Whether a key is present.
    Contains { name: String, key: String },
    /// Live entries.
    Size { name: String },
    /// Remove every entry.
    Clear { name: String },
    /// List entries, page by page.
    Scan {
        name: String,
        #[arg(long, default_value_t = 100)]
        page: u32,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCmd {
    /// Append an item.
    Offer { name: String, item: String },
    /// Remove the head item.
    Poll { name: String },
    /// Read the head item.
    Peek { name: String },
    /// Items queued.
    Size { name: String },
    /// Remove up to N items.
    Drain {
        name: String,
        #[arg(default_value_t = 100)]
        max: u32,
    },
    /// Remove every item.
    Clear { name: String },
}

#[derive(Debug, Subcommand)]
enum SetCmd {
    /// Add a member.
    Add { name: String, member: String },
    /// Remove a member.
    Remove { name: String, member: String },
    /// Whether a member is present.
    Contains { name: String, member: String },
    /// List members.
    Members { name: String },
    /// Members count.
    Size { name: String },
    /// Remove every member.
    Clear { name: String },
}

#[derive(Debug, Subcommand)]
enum AtomicCmd {
    /// Read the value.
    Get { name: String },
    /// Set the value.
    Set { name: String, value: i64 },
    /// Add and print the new value.
    Add { name: String, delta: i64 },
    /// Set to NEW if the value is EXPECTED.
    Cas { name: String, expected: i64, new: i64 },
}

#[derive(Debug, Subcommand)]
enum TopicCmd {
    /// Publish a message; prints its sequence.
    Publish { name: String, message: String },
    /// Print messages as they are published (until COUNT arrived, or for ever).
    Subscribe {
        name: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// A printable result.
enum Out {
    Text(String),
    Value(Option<Vec<u8>>),
    Bool(bool),
    Count(u64),
    Long(i64),
    List(Vec<String>),
}

fn render(out: Out, json: bool) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let quote = |s: &str| format!("{s:?}");
    match (out, json) {
        (Out::Text(s), false) => s,
        (Out::Text(s), true) if s.starts_with('{') => s,
        (Out::Text(s), true) => quote(&s),
        (Out::Value(None), false) => "(none)".into(),
        (Out::Value(None), true) => "null".into(),
        (Out::Value(Some(v)), false) => text(&v),
        (Out::Value(Some(v)), true) => quote(&text(&v)),
        (Out::Bool(b), _) => b.to_string(),
        (Out::Count(n), _) => n.to_string(),
        (Out::Long(n), _) => n.to_string(),
        (Out::List(items), false) => items.join("\n"),
        (Out::List(items), true) => format!("[{}]", items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(",")),
    }
}

fn run(cli: &Cli) -> Result<Out, ClientError> {
    let connect = || {
        Client::connect(ClientConfig {
            addrs: vec![cli.addr],
            request_timeout: Duration::from_millis(cli.timeout_ms),
            connect_timeout: Duration::from_millis(cli.timeout_ms),
            retry_budget: Duration::from_millis(cli.timeout_ms),
            ..ClientConfig::default()
        })
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(match &cli.command {
        Command::Partition { key } => Out::Text(format!("{} (of {PARTITION_COUNT})", partition_of(key.as_bytes()))),
        Command::Opcodes => Out::List(
            Opcode::ALL
                .iter()
                .map(|op| format!("0x{:04x}  {:<32} {:?}", op.code(), op.wire_name(), op.class()))
                .collect(),
        ),
        Command::ErrorCodes => Out::List(
            ErrorCode::ALL
                .iter()
                .map(|c| format!("{:>3}  {}", c.code(), c.wire_name()))
                .collect(),
        ),
        Command::Info => {
            let pairs = connect()?.info()?;
            if cli.json {
                let fields: Vec<String> = pairs.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
                Out::Text(format!("{{{}}}", fields.join(",")))
            } else {
                Out::List(pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect())
            }
        }
        Command::Cluster { .. } => {
            return Err(ClientError::Unsupported(
                "cluster commands need a replicated build".into(),
            ))
        }
        Command::Ping => {
            let c = connect()?;
            let start = std::time::Instant::now();
            c.ping(1)?;
            Out::Text(format!("pong from {} in {:?}", cli.addr, start.elapsed()))
        }
        Command::Map(cmd) => {
            let c = connect()?;
            match cmd {
                MapCmd::Put {
                    name,
                    key,
                    value,
                    ttl_ms,
                } => {
                    let m = c.map(name);
                    Out::Value(match ttl_ms {
                        Some(ms) => m.put_with_ttl(key.as_bytes(), value.as_bytes(), Duration::from_millis(*ms))?,
                        None => m.put(key.as_bytes(), value.as_bytes())?,
                    })
                }
                MapCmd::Get { name, key } => Out::Value(c.map(name).get(key.as_bytes())?),
                MapCmd::Delete { name, key } => Out::Bool(c.map(name).delete(key.as_bytes())?),
                MapCmd::Contains { name, key } => Out::Bool(c.map(name).contains(key.as_bytes())?),
                MapCmd::Size { name } => Out::Count(c.map(name).size()?),
                MapCmd::Clear { name } => Out::Count(c.map(name).clear()?),
                MapCmd::Scan { name, page } => {
                    let mut lines = Vec::new();
                    let mut cursor = 0;
                    loop {
                        let (next, entries) = c.map(name).scan(cursor, *page)?;
                        lines.extend(entries.iter().map(|(k, v)| format!("{}\t{}", text(k), text(v))));
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                    Out::List(lines)
                }
            }
        }
        Command::Queue(cmd) => {
            let c = connect()?;
            match cmd {
                QueueCmd::Offer { name, item } => Out::Bool(c.queue(name).offer(item.as_bytes())?),
                QueueCmd::Poll { name } => Out::Value(c.queue(name).poll()?),
                QueueCmd::Peek { name } => Out::Value(c.queue(name).peek()?),
                QueueCmd::Size { name } => Out::Count(c.queue(name).size()?),
                QueueCmd::Drain { name, max } => {
                    Out::List(c.queue(name).drain(*max)?.iter().map(|v| text(v)).collect())
                }
                QueueCmd::Clear { name } => Out::Count(c.queue(name).clear()?),
            }
        }
        Command::Set(cmd) => {
            let c = connect()?;
            match cmd {
                SetCmd::Add { name, member } => Out::Bool(c.set(name).add(member.as_bytes())?),
                SetCmd::Remove { name, member } => Out::Bool(c.set(name).remove(member.as_bytes())?),
                SetCmd::Contains { name, member } => Out::Bool(c.set(name).contains(member.as_bytes())?),
                SetCmd::Size { name } => Out::Count(c.set(name).size()?),
                SetCmd::Clear { name } => Out::Count(c.set(name).clear()?),
                SetCmd::Members { name } => {
                    let mut all = Vec::new();
                    let mut cursor = 0;
                    loop {
                        let (next, members) = c.set(name).members(cursor, 1000)?;
                        all.extend(members.iter().map(|m| text(m)));
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                    Out::List(all)
                }
            }
        }
        Command::Atomic(cmd) => {
            let c = connect()?;
            match cmd {
                AtomicCmd::Get { name } => Out::Long(c.atomic_long(name).get()?),
                AtomicCmd::Set { name, value } => {
                    c.atomic_long(name).set(*value)?;
                    Out::Text("ok".into())
                }
                AtomicCmd::Add { name, delta } => Out::Long(c.atomic_long(name).add_and_get(*delta)?),
                AtomicCmd::Cas { name, expected, new } => {
                    Out::Bool(c.atomic_long(name).compare_and_set(*expected, *new)?)
                }
            }
        }
        Command::Topic(TopicCmd::Publish { name, message }) => {
            Out::Count(connect()?.topic(name).publish(message.as_bytes())?)
        }
        Command::Topic(TopicCmd::Subscribe { name, count }) => {
            let c = connect()?;
            let mut sub = c.topic(name).subscribe()?;
            let mut seen = 0;
            while count.is_none_or(|n| seen < n) {
                let Some(m) = sub.next() else { break };
                let m = m?;
                if m.dropped_before > 0 {
                    eprintln!(
                        "loomctl: {} messages dropped (this subscriber read too slowly)",
                        m.dropped_before
                    );
                }
                let line = render(Out::Value(Some(m.payload)), cli.json);
                println!("{}\t{line}", m.sequence);
                seen += 1;
            }
            Out::Text(format!("{seen} messages"))
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => {
            println!("{}", render(out, cli.json));
            ExitCode::SUCCESS
        }
        Err(ClientError::Unsupported(why)) => {
            eprintln!("loomctl: unsupported: {why}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("loomctl: {e}");
            ExitCode::from(1)
        }
    }
}
