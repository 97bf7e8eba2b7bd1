//! `loomctl`: the LoomCache command-line tool.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use loomcache_wire::{partition_of, ErrorCode, Opcode, PARTITION_COUNT};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage:
  loomctl partition <key>    the routing partition of a key (murmur3_32 % 271)
  loomctl opcodes            the protocol's opcode table
  loomctl error-codes        the protocol's error codes
  loomctl --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["partition", key] => {
            println!("{} (of {PARTITION_COUNT})", partition_of(key.as_bytes()));
            ExitCode::SUCCESS
        }
        ["opcodes"] => {
            for op in Opcode::ALL {
                println!("0x{:04x}  {:<32} {:?}", op.code(), op.wire_name(), op.class());
            }
            ExitCode::SUCCESS
        }
        ["error-codes"] => {
            for code in ErrorCode::ALL {
                println!("{:>3}  {}", code.code(), code.wire_name());
            }
            ExitCode::SUCCESS
        }
        ["--version" | "-V"] => {
            println!("loomctl {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        [cmd, ..] if ["map", "queue", "set", "topic", "atomic", "ping", "info", "cluster"].contains(cmd) => {
            eprintln!("loomctl: {cmd}: unsupported: this build has no node commands yet");
            ExitCode::from(3)
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
