//! Runs the deterministic cluster simulator: one seed to replay a failure,
//! or many for a soak.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use loomcache_model_tests::sim::{self, SimConfig};

/// Deterministic simulation of LoomCache consensus clusters.
#[derive(Debug, Parser)]
#[command(name = "loomcache-sim", version)]
struct Args {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seeds to run, from --seed on.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Length of the faulty phase, in base ticks.
    #[arg(long)]
    safety_ticks: Option<u64>,
    /// Length of the healed phase, in base ticks.
    #[arg(long)]
    liveness_ticks: Option<u64>,
    /// Print each seed's report.
    #[arg(long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let mut totals = sim::Report::default();
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let mut cfg = SimConfig::standard(args.nodes, seed);
        if let Some(t) = args.safety_ticks {
            cfg.safety_ticks = t;
        }
        if let Some(t) = args.liveness_ticks {
            cfg.liveness_ticks = t;
        }
        match sim::run(cfg) {
            Ok(report) => {
                if args.verbose {
                    println!("seed {seed}: {report:?}");
                }
                totals.add(&report);
            }
            Err(failure) => {
                eprintln!("seed {seed} FAILED {failure}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{} seeds of {} nodes passed in {:.1} s: {:?}",
        args.seeds,
        args.nodes,
        started.elapsed().as_secs_f64(),
        totals
    );
    ExitCode::SUCCESS
}
