//! `loomd`: the LoomCache node daemon.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use loomcache_daemon::server::Server;
use loomcache_daemon::settings::{LogLevel, Settings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The LoomCache node daemon.
///
/// With no arguments it starts a single node on 127.0.0.1:7070 with
/// built-in defaults, a replicated group of one whose writes are durable in
/// ./loomcache-data/node-1, and serves until SIGINT or SIGTERM. With
/// --members it is a member of a larger group (see scripts/local-cluster.sh);
/// with --memory-only it keeps nothing on disk. Settings come
/// from the defaults, then the TOML file given by --config, then LOOMD_*
/// environment variables (LOOMD_<SECTION>_<KEY>, e.g. LOOMD_SERVER_LISTEN),
/// then these flags; each overrides the one before. The file's format is
/// documented in docs/design.md and in the daemon's settings module.
#[derive(Debug, Parser)]
#[command(name = "loomd", version)]
struct Args {
    /// TOML settings file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Client listen address (port 0 picks a free one) [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Worker threads of a --memory-only node; 0 applies requests on the
    /// event-loop thread [default: the number of cores]. A cluster member
    /// (the default mode) applies through its Raft driver and runs none.
    #[arg(long, value_name = "N")]
    workers: Option<u32>,
    /// This node's id [default: 1].
    #[arg(long, value_name = "ID")]
    node_id: Option<u64>,
    /// Bytes of stored data before writes fail OUT_OF_MEMORY [default: 1 GiB].
    #[arg(long, value_name = "BYTES")]
    data_memory_max_bytes: Option<u64>,
    /// Log level: error, warn, info, debug, trace [default: info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LogLevel>,
    /// Run as a member of a replicated group: every member as
    /// id=client_addr/peer_addr, comma-separated, this node included.
    #[arg(long, value_name = "MEMBERS")]
    members: Option<String>,
    /// Directory of this node's log, hard state and snapshots (cluster
    /// mode) [default: loomcache-data/node-<id>].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Start empty, to be added to a running group with `loomctl cluster
    /// add` (or `cluster rebuild`); --members needs this node's entry and
    /// those of the current members with higher ids (this node dials
    /// them; the others dial it).
    #[arg(long)]
    join: bool,
    /// Keep everything in memory only: no log, nothing survives a restart.
    #[arg(long)]
    memory_only: bool,
}

fn settings(args: &Args) -> Result<Settings, String> {
    let mut s = Settings::load(args.config.as_deref(), &|k| std::env::var(k).ok())?;
    if let Some(v) = args.listen {
        s.config.listen_addr = v;
    }
    if let Some(v) = args.workers {
        s.config.workers = v;
    }
    if let Some(v) = args.node_id {
        s.config.node_id = v;
    }
    if let Some(v) = args.data_memory_max_bytes {
        s.config.state.data_memory_max_bytes = v;
    }
    if let Some(v) = args.log_level {
        s.log_level = v;
    }
    if let Some(v) = &args.members {
        let members = loomcache_daemon::config::ClusterConfig::parse_members(v)?;
        s.config
            .cluster
            .get_or_insert_with(|| loomcache_daemon::config::ClusterConfig::new(Vec::new()))
            .members = members;
    }
    if args.memory_only {
        s.memory_only = true;
    }
    if let Some(v) = &args.data_dir {
        if s.memory_only {
            return Err("--data-dir has no use with --memory-only".into());
        }
        s.config
            .cluster
            .get_or_insert_with(|| loomcache_daemon::config::ClusterConfig::new(Vec::new()))
            .data_dir = Some(v.clone());
    }
    if args.join {
        match &mut s.config.cluster {
            Some(c) if !c.members.is_empty() => c.join = true,
            _ => return Err("--join needs --members naming at least this node's client and peer addresses".into()),
        }
    }
    s.settle_mode()?;
    s.config.validate().map_err(|e| e.to_string())?;
    Ok(s)
}

fn init_logging(level: LogLevel) {
    let level = match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loomd: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_level);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            tracing::error!(signal, error = %e, "cannot handle signal");
            return ExitCode::from(1);
        }
    }
    let config = settings.config;
    let workers = config.workers;
    let server = match Server::start(config.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(1);
        }
    };
    if let Some(asked) = args.workers.filter(|&w| w > 0 && config.cluster.is_some()) {
        tracing::warn!(
            workers = asked,
            "--workers applies only to a --memory-only node; this cluster member runs none"
        );
    }
    let mode = match &config.cluster {
        Some(c) => format!(
            "cluster member {} of {}, data in {}",
            config.node_id,
            c.members.len(),
            c.dir_for(config.node_id).display()
        ),
        None => format!("memory-only single node, {workers} workers"),
    };
    tracing::info!(
        addr = %server.local_addr(),
        node_id = config.node_id,
        data_memory_max_bytes = config.state.data_memory_max_bytes,
        mode = %mode,
        "node started"
    );
    // A machine-readable line for scripts and tests.
    println!(
        "loomd {} listening on {} ({mode})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr()
    );
    while !stop.load(Ordering::SeqCst) {
        if let Some(why) = server.failure() {
            // Fail-stop: a member that cannot persist or apply must not
            // linger answering SHUTTING_DOWN; its supervisor restarts it.
            tracing::error!(reason = why, "stopping");
            server.shutdown();
            return ExitCode::from(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("shutting down");
    server.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
