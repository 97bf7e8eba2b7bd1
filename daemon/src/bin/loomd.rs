//! `loomd`: the LoomCache node daemon.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use loomcache_daemon::Config;
use loomcache_wire::{Opcode, HEADER_LEN, PROTOCOL_VERSION};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("--version" | "-V") => {
            println!("loomd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            println!("loomd {}: the LoomCache node daemon\n", env!("CARGO_PKG_VERSION"));
            println!("usage: loomd [--version | --help]\n");
            println!("With no arguments it validates the built-in configuration and prints it.");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("loomd: unknown argument {other:?}; try --help");
            return ExitCode::from(2);
        }
    }
    let config = Config::default();
    if let Err(e) = config.validate() {
        eprintln!("loomd: {e}");
        return ExitCode::from(2);
    }
    println!(
        "loomd {} (protocol {PROTOCOL_VERSION}, {HEADER_LEN}-byte header, {} opcodes)",
        env!("CARGO_PKG_VERSION"),
        Opcode::ALL.len()
    );
    println!("built-in configuration (valid):");
    println!("  listen_addr                  {}", config.listen_addr);
    println!("  limits.payload_max_bytes     {}", config.limits.payload_max_bytes);
    println!("  limits.key_max_bytes         {}", config.limits.key_max_bytes);
    println!("  limits.value_max_bytes       {}", config.limits.value_max_bytes);
    println!("  limits.items_max             {}", config.limits.items_max);
    println!("  connections_max              {}", config.connections_max);
    println!("  connections_per_ip_max       {}", config.connections_per_ip_max);
    println!("  in_flight_per_connection_max {}", config.in_flight_per_connection_max);
    println!("  idle_timeout_ms              {}", config.idle_timeout_ms);
    println!("  frame_deadline_ms            {}", config.frame_deadline_ms);
    println!("  data_memory_max_bytes        {}", config.data_memory_max_bytes);
    println!("serving clients is not available in this build; the node exits after printing its configuration.");
    ExitCode::SUCCESS
}
