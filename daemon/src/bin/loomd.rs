//! `loomd`: the LoomCache node daemon.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loomcache_daemon::server::Server;
use loomcache_daemon::Config;
use loomcache_wire::PROTOCOL_VERSION;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: loomd [--listen ADDR] [--workers N] [--version] [--help]

Starts a single memory-only LoomCache node with the built-in defaults and
serves clients until SIGINT or SIGTERM.

  --listen ADDR   client address (default 127.0.0.1:7070; port 0 picks one)
  --workers N     worker threads (default: the number of cores; 0 applies
                  requests on the event-loop thread)";

fn parse(args: &[String]) -> Result<Option<Config>, String> {
    let mut config = Config::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--version" | "-V" => {
                println!("loomd {} (protocol {PROTOCOL_VERSION})", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--listen" => {
                let v = it.next().ok_or("--listen needs an address")?;
                config.listen_addr = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--workers" => {
                let v = it.next().ok_or("--workers needs a number")?;
                config.workers = v.parse().map_err(|e| format!("--workers {v}: {e}"))?;
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(Some(config))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loomd: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("loomd: cannot handle signal {signal}: {e}");
            return ExitCode::from(1);
        }
    }
    let workers = config.workers;
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loomd: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "loomd {} listening on {} (memory-only single node, {workers} workers)",
        env!("CARGO_PKG_VERSION"),
        server.local_addr()
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("loomd: shutting down");
    server.shutdown();
    ExitCode::SUCCESS
}
