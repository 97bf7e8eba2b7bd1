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
/// error), 2 usage error, 3 the operation is not supported, 4 a write's
/// outcome is unknown (no answer in time: it may still be applied).
#[derive(Debug, Parser)]
#[command(name = "loomctl", version)]
struct Cli {
    /// Node address: IP:PORT or HOST:PORT.
    #[arg(long, global = true, default_value = "127.0.0.1:7070", env = "LOOMCACHE_ADDR", value_parser = resolve)]
    addr: SocketAddr,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Request timeout in milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    timeout_ms: u64,
    /// Let the node answer reads from its own state even if it is not the
    /// leader (possibly stale); by default reads are linearizable.
    #[arg(long, global = true)]
    stale: bool,
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
    /// Membership of a replicated group.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Members, their roles, the term, commit and applied indexes, and how
    /// far each member's log trails the leader's.
    Status,
    /// Add a node started with `loomd --join`: it joins as a learner, and
    /// the leader makes it a voter once it has caught up. Waits for that.
    Add {
        /// The new node's id.
        id: u64,
        /// Where its clients connect.
        client_addr: SocketAddr,
        /// Where its peers connect.
        peer_addr: SocketAddr,
        /// How long to wait for it to become a voter.
        #[arg(long, default_value_t = 60_000)]
        wait_ms: u64,
    },
    /// Remove a node (voter or learner); waits until the group no longer
    /// counts it.
    Remove {
        id: u64,
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
    },
    /// The routing table as this node sees it: each partition's group, each
    /// group's leader, term and replicas, and the members.
    Partitions,
    /// Rebuild a member from its peers after its directory was lost or
    /// damaged: removes it from the group (if it is still a member), then
    /// adds it back; start it first with an empty directory and --join.
    Rebuild {
        id: u64,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
        #[arg(long, default_value_t = 60_000)]
        wait_ms: u64,
    },
    /// Hand leadership to a voter; waits until it leads.
    TransferLeader {
        id: u64,
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum MapCmd {
    /// Store a value; prints the previous one. A VALUE of `-` reads the
    /// value from standard input.
    Put {
        name: String,
        key: String,
        value: String,
        /// Time to live in milliseconds; 0 (like leaving it out) means the
        /// entry never expires.
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
    /// Remove the map and its name (free for any type); prints whether it
    /// existed.
    Destroy { name: String },
    /// List entries, page by page.
    Scan {
        name: String,
        #[arg(long, default_value_t = 100)]
        page: u32,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCmd {
    /// Append an item (`-`: read it from standard input).
    Offer { name: String, item: String },
    /// Remove the head item; with --wait-ms, wait that long for one if the
    /// queue is empty.
    Poll {
        name: String,
        #[arg(long)]
        wait_ms: Option<u32>,
    },
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
    /// Remove the queue and its name (free for any type); prints whether
    /// it existed.
    Destroy { name: String },
}

#[derive(Debug, Subcommand)]
enum SetCmd {
    /// Add a member (`-`: read it from standard input).
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
    /// Remove the set and its name (free for any type); prints whether it
    /// existed.
    Destroy { name: String },
}

#[derive(Debug, Subcommand)]
enum AtomicCmd {
    /// Read the value.
    Get { name: String },
    /// Set the value.
    Set {
        name: String,
        #[arg(allow_negative_numbers = true)]
        value: i64,
    },
    /// Add (a negative DELTA subtracts) and print the new value; the value
    /// wraps around at the ends of the 64-bit range.
    Add {
        name: String,
        #[arg(allow_negative_numbers = true)]
        delta: i64,
    },
    /// Set to NEW if the value is EXPECTED (a missing AtomicLong is 0).
    Cas {
        name: String,
        #[arg(allow_negative_numbers = true)]
        expected: i64,
        #[arg(allow_negative_numbers = true)]
        new: i64,
    },
    /// Remove the AtomicLong and its name (free for any type); prints
    /// whether it existed.
    Destroy { name: String },
}

#[derive(Debug, Subcommand)]
enum TopicCmd {
    /// Publish a message (`-`: read it from standard input); prints its
    /// sequence.
    Publish { name: String, message: String },
    /// Print messages as they are published (until COUNT arrived, or for
    /// ever): a line "SEQUENCE<TAB>MESSAGE" each, or with --json an object
    /// {"sequence":..,"message":..} each.
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
    /// Key and value pairs.
    Entries(Vec<(Vec<u8>, Vec<u8>)>),
    Bool(bool),
    Count(u64),
    Long(i64),
    List(Vec<String>),
    /// Nothing more to print.
    Nothing,
}

fn render(out: Out, json: bool) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let quote = |s: &str| json_str(s);
    match (out, json) {
        (Out::Text(s), false) => s,
        (Out::Text(s), true) if s.starts_with('{') => s,
        (Out::Text(s), true) => quote(&s),
        (Out::Value(None), false) => "(none)".into(),
        (Out::Value(None), true) => "null".into(),
        (Out::Value(Some(v)), false) => text(&v),
        (Out::Value(Some(v)), true) => quote(&text(&v)),
        (Out::Nothing, _) => String::new(),
        (Out::Bool(b), _) => b.to_string(),
        (Out::Count(n), _) => n.to_string(),
        (Out::Long(n), _) => n.to_string(),
        (Out::Entries(entries), false) => entries
            .iter()
            .map(|(k, v)| format!("{}\t{}", text(k), text(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        (Out::Entries(entries), true) => format!(
            "[{}]",
            entries
                .iter()
                .map(|(k, v)| format!("{{\"key\":{},\"value\":{}}}", quote(&text(k)), quote(&text(v))))
                .collect::<Vec<_>>()
                .join(",")
        ),
        (Out::List(items), false) => items.join("\n"),
        (Out::List(items), true) => format!("[{}]", items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(",")),
    }
}

/// Why a command failed, and whether its request may have been sent.
#[derive(Debug)]
enum Failure {
    /// Nothing was sent: connecting or the handshake failed.
    NotSent(ClientError),
    /// The command's own input is unusable (standard input); nothing was
    /// sent.
    Input(std::io::Error),
    /// Standard output could not be written.
    Output(std::io::Error),
    /// The request (or one of them) was sent, or the failure is not about
    /// sending.
    Request(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::Request(e)
    }
}

fn run(cli: &Cli) -> Result<Out, Failure> {
    let connect = || {
        Client::connect(ClientConfig {
            addrs: vec![cli.addr],
            request_timeout: Duration::from_millis(cli.timeout_ms),
            connect_timeout: Duration::from_millis(cli.timeout_ms),
            retry_budget: Duration::from_millis(cli.timeout_ms),
            stale_reads: cli.stale,
            ..ClientConfig::default()
        })
        .map_err(Failure::NotSent)
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
                let fields: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
                    .collect();
                Out::Text(format!("{{{}}}", fields.join(",")))
            } else {
                Out::List(pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect())
            }
        }
        Command::Cluster(cmd) => cluster(cli, cmd)?,
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
                        Some(ms) if *ms > 0 => {
                            m.put_with_ttl(key.as_bytes(), &bytes_arg(value)?, Duration::from_millis(*ms))?
                        }
                        _ => m.put(key.as_bytes(), &bytes_arg(value)?)?,
                    })
                }
                MapCmd::Get { name, key } => Out::Value(c.map(name).get(key.as_bytes())?),
                MapCmd::Delete { name, key } => Out::Bool(c.map(name).delete(key.as_bytes())?),
                MapCmd::Contains { name, key } => Out::Bool(c.map(name).contains(key.as_bytes())?),
                MapCmd::Size { name } => Out::Count(c.map(name).size()?),
                MapCmd::Clear { name } => Out::Count(c.map(name).clear()?),
                MapCmd::Destroy { name } => Out::Bool(c.map(name).destroy()?),
                MapCmd::Scan { name, page } => {
                    let mut all = Vec::new();
                    let mut cursor = 0;
                    loop {
                        let (next, entries) = c.map(name).scan(cursor, *page)?;
                        all.extend(entries);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                    Out::Entries(all)
                }
            }
        }
        Command::Queue(cmd) => {
            let c = connect()?;
            match cmd {
                QueueCmd::Offer { name, item } => Out::Bool(c.queue(name).offer(&bytes_arg(item)?)?),
                QueueCmd::Poll { name, wait_ms } => Out::Value(match wait_ms {
                    Some(ms) if *ms > 0 => c.queue(name).poll_wait(Duration::from_millis(u64::from(*ms)))?,
                    _ => c.queue(name).poll()?,
                }),
                QueueCmd::Peek { name } => Out::Value(c.queue(name).peek()?),
                QueueCmd::Size { name } => Out::Count(c.queue(name).size()?),
                QueueCmd::Drain { name, max } => {
                    Out::List(c.queue(name).drain(*max)?.iter().map(|v| text(v)).collect())
                }
                QueueCmd::Clear { name } => Out::Count(c.queue(name).clear()?),
                QueueCmd::Destroy { name } => Out::Bool(c.queue(name).destroy()?),
            }
        }
        Command::Set(cmd) => {
            let c = connect()?;
            match cmd {
                SetCmd::Add { name, member } => Out::Bool(c.set(name).add(&bytes_arg(member)?)?),
                SetCmd::Remove { name, member } => Out::Bool(c.set(name).remove(member.as_bytes())?),
                SetCmd::Contains { name, member } => Out::Bool(c.set(name).contains(member.as_bytes())?),
                SetCmd::Size { name } => Out::Count(c.set(name).size()?),
                SetCmd::Clear { name } => Out::Count(c.set(name).clear()?),
                SetCmd::Destroy { name } => Out::Bool(c.set(name).destroy()?),
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
                AtomicCmd::Destroy { name } => Out::Bool(c.atomic_long(name).destroy()?),
            }
        }
        Command::Topic(TopicCmd::Publish { name, message }) => {
            Out::Count(connect()?.topic(name).publish(&bytes_arg(message)?)?)
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
                let message = render(Out::Value(Some(m.payload)), cli.json);
                let line = if cli.json {
                    format!("{{\"sequence\":{},\"message\":{message}}}", m.sequence)
                } else {
                    format!("{}\t{message}", m.sequence)
                };
                emit(&line).map_err(Failure::Output)?;
                seen += 1;
            }
            let summary = format!("{seen} message{}", if seen == 1 { "" } else { "s" });
            if cli.json {
                // Standard output holds one JSON object per message.
                eprintln!("loomctl: {summary}");
                return Ok(Out::Nothing);
            }
            Out::Text(summary)
        }
    })
}

type Info = std::collections::BTreeMap<String, String>;

fn info_of(addr: SocketAddr, timeout: Duration) -> Result<Info, ClientError> {
    let c = Client::connect(ClientConfig {
        addrs: vec![addr],
        request_timeout: timeout,
        connect_timeout: timeout,
        retry_budget: Duration::ZERO,
        ..ClientConfig::default()
    })?;
    Ok(c.info()?.into_iter().collect())
}

/// NODE_INFO of the leader, found through the node at `--addr`.
fn leader_info(cli: &Cli) -> Result<Info, ClientError> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    let here = info_of(cli.addr, timeout)?;
    if here.get("mode").map(String::as_str) != Some("cluster member") {
        return Err(ClientError::Unsupported(format!(
            "{} is not a cluster member (start loomd with --members)",
            cli.addr
        )));
    }
    if here.get("raft_role").map(String::as_str) == Some("leader") {
        return Ok(here);
    }
    match here.get("raft_leader_addr").and_then(|a| a.parse::<SocketAddr>().ok()) {
        Some(leader) => info_of(leader, timeout),
        None => Err(ClientError::Server {
            code: ErrorCode::NoLeader,
            message: format!("{} knows no leader yet; retry", cli.addr),
        }),
    }
}

fn id_list(info: &Info, key: &str) -> Vec<u64> {
    info.get(key)
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// Polls the leader's view until `done` holds or `wait_ms` passes.
fn wait_for(cli: &Cli, wait_ms: u64, done: impl Fn(&Info) -> bool) -> Result<Duration, ClientError> {
    let start = std::time::Instant::now();
    loop {
        if let Ok(info) = leader_info(cli) {
            if done(&info) {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() >= Duration::from_millis(wait_ms) {
            return Err(ClientError::Timeout(start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cluster(cli: &Cli, cmd: &ClusterCmd) -> Result<Out, ClientError> {
    let client = || {
        Client::connect(ClientConfig {
            addrs: vec![cli.addr],
            request_timeout: Duration::from_millis(cli.timeout_ms),
            connect_timeout: Duration::from_millis(cli.timeout_ms),
            retry_budget: Duration::from_millis(cli.timeout_ms),
            ..ClientConfig::default()
        })
    };
    let member_of = |info: &Info, id: u64| {
        ["raft_voters", "raft_learners", "raft_voters_outgoing"]
            .iter()
            .any(|k| id_list(info, k).contains(&id))
    };
    Ok(match cmd {
        ClusterCmd::Status => match leader_info(cli) {
            Ok(leader) => cluster_status(cli, &leader),
            Err(e @ ClientError::Unsupported(_)) => return Err(e),
            // Without a leader that answers, what this member knows is what
            // there is to show: who the members are and which of them
            // answer.
            Err(e) => match info_of(cli.addr, Duration::from_millis(cli.timeout_ms)) {
                Ok(here) => cluster_status(cli, &here),
                Err(_) => return Err(e),
            },
        },
        ClusterCmd::Partitions => {
            let t = client()?.partition_table(0)?;
            // Runs of consecutive partitions in the same group.
            let mut runs: Vec<(usize, usize, u32)> = Vec::new();
            for (p, &g) in t.partition_groups.iter().enumerate() {
                match runs.last_mut() {
                    Some((_, end, group)) if *group == g && *end + 1 == p => *end = p,
                    _ => runs.push((p, p, g)),
                }
            }
            let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            if cli.json {
                let groups: Vec<String> = t
                    .groups
                    .iter()
                    .map(|g| {
                        format!(
                            "{{\"group\":{},\"leader\":{},\"term\":{},\"replicas\":[{}]}}",
                            g.group,
                            g.leader,
                            g.term,
                            ids(&g.replicas)
                        )
                    })
                    .collect();
                let members: Vec<String> = t
                    .members
                    .iter()
                    .map(|(id, addr)| format!("{{\"id\":{id},\"client_addr\":{}}}", json_str(addr)))
                    .collect();
                let partitions: Vec<String> = t.partition_groups.iter().map(u32::to_string).collect();
                Out::Text(format!(
                    "{{\"revision\":{},\"partition_groups\":[{}],\"groups\":[{}],\"members\":[{}]}}",
                    t.revision,
                    partitions.join(","),
                    groups.join(","),
                    members.join(",")
                ))
            } else {
                let mut lines = vec![format!(
                    "revision {} (term {}, membership at index {})",
                    t.revision,
                    t.revision >> 32,
                    t.revision & 0xffff_ffff
                )];
                lines.extend(
                    runs.iter()
                        .map(|(a, b, g)| format!("partitions {a}..={b} -> group {g}")),
                );
                lines.extend(t.groups.iter().map(|g| {
                    format!(
                        "group {}: leader {}, term {}, replicas {}",
                        g.group,
                        g.leader,
                        g.term,
                        ids(&g.replicas)
                    )
                }));
                lines.extend(t.members.iter().map(|(id, addr)| format!("member {id} at {addr}")));
                Out::List(lines)
            }
        }
        ClusterCmd::Add {
            id,
            client_addr,
            peer_addr,
            wait_ms,
        } => {
            client()?.cluster_add(*id, &client_addr.to_string(), &peer_addr.to_string())?;
            let took = wait_for(cli, *wait_ms, |i| id_list(i, "raft_voters").contains(id)).map_err(|_| {
                ClientError::Server {
                    code: ErrorCode::Timeout,
                    message: format!(
                        "node {id} joined as a learner but is not a voter after {wait_ms} ms; \
                         is it running with --join and reachable at {peer_addr}?"
                    ),
                }
            })?;
            Out::Text(format!("node {id} added; a voter after {took:?}"))
        }
        ClusterCmd::Rebuild {
            id,
            client_addr,
            peer_addr,
            wait_ms,
        } => {
            if member_of(&leader_info(cli)?, *id) {
                client()?.cluster_remove(*id)?;
                wait_for(cli, *wait_ms, |i| !member_of(i, *id))?;
            }
            client()?.cluster_add(*id, &client_addr.to_string(), &peer_addr.to_string())?;
            let took = wait_for(cli, *wait_ms, |i| id_list(i, "raft_voters").contains(id))?;
            Out::Text(format!("node {id} rebuilt from its peers; a voter after {took:?}"))
        }
        ClusterCmd::Remove { id, wait_ms } => {
            client()?.cluster_remove(*id)?;
            let took = wait_for(cli, *wait_ms, |i| !member_of(i, *id))?;
            Out::Text(format!("node {id} removed after {took:?}"))
        }
        ClusterCmd::TransferLeader { id, wait_ms } => {
            client()?.transfer_leader(*id)?;
            let took = wait_for(cli, *wait_ms, |i| {
                i.get("raft_leader").and_then(|l| l.parse::<u64>().ok()) == Some(*id)
            })?;
            Out::Text(format!("node {id} leads after {took:?}"))
        }
    })
}

/// One row per member, from the leader's view (or, with no leader known,
/// the view of the member at `--addr`) plus each member's own NODE_INFO
/// (unreachable members say so).
fn cluster_status(cli: &Cli, leader: &Info) -> Out {
    let get = |k: &str| leader.get(k).cloned().unwrap_or_default();
    let is_leader = leader.get("raft_role").map(String::as_str) == Some("leader");
    // A number as JSON: itself if it parses, else null.
    let number = |v: &str| v.parse::<u64>().map_or("null".to_string(), |n| n.to_string());
    let voters = id_list(leader, "raft_voters");
    let learners = id_list(leader, "raft_learners");
    let outgoing = id_list(leader, "raft_voters_outgoing");
    let members: Vec<(u64, String)> = get("members")
        .split(',')
        .filter_map(|item| {
            let (id, addrs) = item.split_once('=')?;
            Some((id.parse().ok()?, addrs.to_string()))
        })
        .collect();
    // Members whose data directory the group has recorded ("id=hex" items).
    let recorded: Vec<u64> = get("members_recorded")
        .split(',')
        .filter_map(|item| item.split_once('=')?.0.parse().ok())
        .collect();
    let probe = Duration::from_millis(cli.timeout_ms.min(1000));
    let mut rows = Vec::new();
    for (id, addrs) in &members {
        let kind = if voters.contains(id) {
            "voter"
        } else if learners.contains(id) {
            "learner"
        } else if outgoing.contains(id) {
            "leaving"
        } else {
            "not a member"
        };
        let own = addrs
            .split('/')
            .next()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .and_then(|a| info_of(a, probe).ok());
        let (role, applied) = match &own {
            Some(i) => (
                i.get("raft_role").cloned().unwrap_or_default(),
                i.get("raft_applied").cloned().unwrap_or_default(),
            ),
            None => ("unreachable".to_string(), "-".to_string()),
        };
        let matched = leader.get(&format!("peer_{id}_matched")).cloned().unwrap_or("-".into());
        let lag = leader.get(&format!("peer_{id}_lag")).cloned().unwrap_or("-".into());
        let rec = if recorded.contains(id) { "yes" } else { "no" };
        rows.push((*id, addrs.clone(), kind, role, applied, matched, lag, rec));
    }
    if cli.json {
        let members: Vec<String> = rows
            .iter()
            .map(|(id, addrs, kind, role, applied, matched, lag, rec)| {
                format!(
                    "{{\"id\":{id},\"addrs\":{},\"membership\":{},\"role\":{},\
                     \"applied\":{},\"matched\":{},\"lag\":{},\"recorded\":{}}}",
                    json_str(addrs),
                    json_str(kind),
                    json_str(role),
                    number(applied),
                    number(matched),
                    number(lag),
                    *rec == "yes"
                )
            })
            .collect();
        return Out::Text(format!(
            "{{\"leader\":{},\"term\":{},\"commit\":{},\"last_index\":{},\"members\":[{}]}}",
            if is_leader {
                number(&get("raft_leader"))
            } else {
                "null".into()
            },
            number(&get("raft_term")),
            number(&get("raft_commit")),
            number(&get("raft_last_index")),
            members.join(",")
        ));
    }
    let mut lines = vec![
        if is_leader {
            format!(
                "leader {} at {}, term {}, commit {}, last index {}",
                get("raft_leader"),
                get("raft_leader_addr"),
                get("raft_term"),
                get("raft_commit"),
                get("raft_last_index")
            )
        } else {
            let leader = get("raft_leader");
            let known = if leader.is_empty() || leader == "0" {
                "no leader known".to_string()
            } else {
                format!("leader {leader} at {} does not answer", get("raft_leader_addr"))
            };
            format!(
                "{known}; as node {} ({}) sees it: term {}, commit {}, last index {}",
                get("node_id"),
                get("raft_role"),
                get("raft_term"),
                get("raft_commit"),
                get("raft_last_index")
            )
        },
        format!(
            "{:<4} {:<44} {:<12} {:<12} {:>10} {:>10} {:>8} {:>8}",
            "id", "client/peer", "membership", "role", "applied", "matched", "lag", "recorded"
        ),
    ];
    for (id, addrs, kind, role, applied, matched, lag, rec) in rows {
        lines.push(format!(
            "{id:<4} {addrs:<44} {kind:<12} {role:<12} {applied:>10} {matched:>10} {lag:>8} {rec:>8}"
        ));
    }
    Out::List(lines)
}

/// `--addr`: an IP address and port, or a host name and port (its first
/// IPv4 address, else its first address: `localhost` names 127.0.0.1, where
/// loomd listens by default, rather than ::1).
fn resolve(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let all: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?} (expected IP:PORT or HOST:PORT): {e}"))?
        .collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// Most bytes read from standard input for one argument.
const STDIN_MAX_BYTES: u64 = 64 << 20;

/// A value argument's bytes: the argument itself, or with `-` everything
/// on standard input (for values too large for the command line, or not
/// UTF-8).
fn bytes_arg(arg: &str) -> Result<std::borrow::Cow<'_, [u8]>, Failure> {
    use std::io::Read;
    if arg != "-" {
        return Ok(arg.as_bytes().into());
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(STDIN_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Failure::Input)?;
    if bytes.len() as u64 > STDIN_MAX_BYTES {
        return Err(Failure::Input(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("standard input holds more than {STDIN_MAX_BYTES} bytes"),
        )));
    }
    Ok(bytes.into())
}

/// Writes `line` and a newline to standard output, flushed (a subscriber
/// prints messages as they come).
fn emit(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Whether the command is a data write, so that a request sent without an
/// answer may still have been applied. (Membership commands wait for their
/// effect and say what they saw.)
fn is_write(command: &Command) -> bool {
    match command {
        Command::Map(m) => !matches!(
            m,
            MapCmd::Get { .. } | MapCmd::Contains { .. } | MapCmd::Size { .. } | MapCmd::Scan { .. }
        ),
        Command::Queue(q) => !matches!(q, QueueCmd::Peek { .. } | QueueCmd::Size { .. }),
        Command::Set(s) => !matches!(
            s,
            SetCmd::Contains { .. } | SetCmd::Members { .. } | SetCmd::Size { .. }
        ),
        Command::Atomic(a) => !matches!(a, AtomicCmd::Get { .. }),
        Command::Topic(t) => matches!(t, TopicCmd::Publish { .. }),
        Command::Cluster(_)
        | Command::Ping
        | Command::Info
        | Command::Partition { .. }
        | Command::Opcodes
        | Command::ErrorCodes => false,
    }
}

/// Standard output failed. A reader that went away (`loomctl … | head`)
/// ends the command quietly, as it does for other command-line tools;
/// anything else is an error.
fn output_failed(e: &std::io::Error) -> ExitCode {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return ExitCode::SUCCESS;
    }
    eprintln!("loomctl: writing standard output: {e}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (sent, result) = match run(&cli) {
        Ok(out) => (false, Ok(out)),
        Err(Failure::Input(e)) => {
            eprintln!("loomctl: reading standard input: {e}");
            return ExitCode::from(1);
        }
        Err(Failure::Output(e)) => return output_failed(&e),
        Err(Failure::NotSent(e)) => (false, Err(e)),
        Err(Failure::Request(e)) => (true, Err(e)),
    };
    match result {
        Ok(Out::Nothing) => ExitCode::SUCCESS,
        Ok(out) => match emit(&render(out, cli.json)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => output_failed(&e),
        },
        Err(ClientError::Unsupported(why)) => {
            eprintln!("loomctl: unsupported: {why}");
            ExitCode::from(3)
        }
        // A write sent and then timed out, or whose connection broke, or
        // that failed after an attempt that did (the client retries with
        // the same sequence until its budget runs out), may have been
        // applied.
        Err(e) if sent && is_write(&cli.command) && e.may_have_applied() => {
            eprintln!("loomctl: {e}; the outcome is unknown: the write may still be applied");
            ExitCode::from(4)
        }
        Err(e @ ClientError::Connect { .. }) => {
            eprintln!("loomctl: {e}");
            ExitCode::from(1)
        }
        Err(e) if !sent || matches!(e, ClientError::Io(_) | ClientError::Protocol(_)) => {
            // Name the node: a broken connection, a peer that is not a
            // LoomCache node or a refused handshake says nothing about
            // where it happened.
            eprintln!("loomctl: {}: {e}", cli.addr);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("loomctl: {e}");
            ExitCode::from(1)
        }
    }
}
