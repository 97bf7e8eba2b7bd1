//! The deterministic cluster simulator over many seeds: 3, 5 and 7 nodes
//! with every fault enabled. `LOOMCACHE_SIM_SEEDS` sets the seeds per
//! configuration (default 1000); a failure prints the command that replays
//! it.
#![cfg(not(loom))]

use loomcache_model_tests::sim::{self, Report, SimConfig};

fn seeds() -> u64 {
    std::env::var("LOOMCACHE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

fn run_seeds(nodes: usize) {
    let count = seeds();
    let mut totals = Report::default();
    for seed in 0..count {
        match sim::run(SimConfig::standard(nodes, seed)) {
            Ok(report) => totals.add(&report),
            Err(failure) => panic!("{nodes} nodes, seed {seed}: {failure}"),
        }
    }
    eprintln!("{count} seeds of {nodes} nodes passed: {totals:?}");
    // The faults the run exists for actually happened.
    assert!(totals.crashes > 0 && totals.partitions > 0 && totals.transfers > 0);
    assert!(totals.conf_changes > 0 && totals.snapshots_installed > 0);
    assert!(totals.lease_reads > 0 && totals.quorum_reads > 0);
    assert!(totals.ops_known > count * 100, "clients made progress: {totals:?}");
}

#[test]
fn three_nodes() {
    run_seeds(3);
}

#[test]
fn five_nodes() {
    run_seeds(5);
}

#[test]
fn seven_nodes() {
    run_seeds(7);
}

/// Seeds that once failed, kept so they keep passing. Three exposed flaws
/// in the simulator's own bookkeeping: requests still out at the end of a
/// run went unrecorded although reads observed them (5 nodes seed 1531, 7
/// nodes seed 1977), and a history with many unknown outcomes outran the
/// linearizability search budget (3 nodes seed 42). One exposed a flaw in
/// the core (7 nodes seed 404731): a follower moved to a higher term by a
/// rejected pre-vote answer voted in that term while the leader it had
/// just heard from still held its lease, so a new leader was elected while
/// the old one decided a lease read.
#[test]
fn regression_seeds() {
    for (nodes, seed) in [(3, 42), (5, 1531), (7, 1977), (7, 404731)] {
        if let Err(failure) = sim::run(SimConfig::standard(nodes, seed)) {
            panic!("{failure}");
        }
    }
}

/// A run is a pure function of its seed.
#[test]
fn runs_replay_exactly() {
    let a = sim::run(SimConfig::standard(5, 7)).unwrap();
    let b = sim::run(SimConfig::standard(5, 7)).unwrap();
    assert_eq!(a, b);
    let c = sim::run(SimConfig::standard(5, 8)).unwrap();
    assert_ne!(a, c, "different seeds take different paths");
}
