//! The log against a plain in-memory model, under random operations.
//!
//! A case is a mode (no persistence, or sync with the flush rounds run by
//! the flush thread or by the waiters) and a sequence of operations: appends of a
//! few records (random payload sizes and kinds, the term staying or
//! rising), truncations, compactions, reboots (drop the log and reopen the
//! directory after the snapshot floor), waits for durability and reads.
//! The model is a map from index to entry plus the snapshot floor; after
//! every operation the log's first and last index must equal the model's
//! and spot reads must return the model's records, or `OutOfRange` outside
//! it. Segments are small, so rotation, truncation across segments and
//! compaction of whole segments all happen within a few operations.
//!
//! Before every reboot the whole log is waited on until durable, so the
//! reopened log must hold exactly what the model holds.

use std::collections::BTreeMap;

use loomcache_log::{pin, Guard, Log, LogConfig, LogError, PersistMode, Record, RecordKind};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// Two to twenty-four records per segment with the payload sizes below.
const SEGMENT_BYTES: usize = 1024;
const PAYLOAD_BYTES_MAX: usize = 300;
const RECORDS_PER_APPEND_MAX: usize = 8;
const OPS_MAX: usize = 40;

/// A point in an inclusive range that is known only when the operation
/// runs: a fraction of the way from its low end (shrinks towards it).
#[derive(Debug, Clone, Copy)]
struct Pick(u32);

impl Pick {
    const LOW: Pick = Pick(0);
    const HIGH: Pick = Pick(u32::MAX);

    fn within(self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "empty range {low}..={high}");
        low + (((high - low + 1) * u64::from(self.0)) >> 32)
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Appends one record per element: (payload length, kind). The term is
    /// the model's last term plus `term_bump`; `seed` derives the payload
    /// bytes and timestamps.
    Append {
        records: Vec<(usize, u8)>,
        term_bump: u64,
        seed: u64,
    },
    /// Truncates after an index in `[first - 1, last]`, after checking that
    /// truncating below `first - 1` is refused.
    Truncate(Pick),
    /// Compacts through an index in `[first - 1, last + 3]`: up to `last` it
    /// drops a prefix (all of it at `last`); beyond `last` it is a snapshot
    /// received from a leader that is ahead of this log.
    Compact(Pick),
    /// Drops the log and reopens the directory after the snapshot floor.
    Reboot,
    /// Waits until the last index is durable.
    WaitDurable,
    /// Reads an index in `[first - 2, last + 2]`.
    Read(Pick),
}

fn op() -> impl Strategy<Value = Op> {
    let append = (
        prop::collection::vec((0..=PAYLOAD_BYTES_MAX, 0u8..3), 1..=RECORDS_PER_APPEND_MAX),
        prop_oneof![3 => Just(0u64), 1 => 1u64..4],
        any::<u64>(),
    )
        .prop_map(|(records, term_bump, seed)| Op::Append {
            records,
            term_bump,
            seed,
        });
    prop_oneof![
        6 => append,
        2 => any::<u32>().prop_map(|p| Op::Truncate(Pick(p))),
        2 => any::<u32>().prop_map(|p| Op::Compact(Pick(p))),
        2 => Just(Op::Reboot),
        1 => Just(Op::WaitDurable),
        3 => any::<u32>().prop_map(|p| Op::Read(Pick(p))),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: RecordKind,
    term: u64,
    timestamp_ms: u64,
    payload: Vec<u8>,
}

/// What the log must hold.
#[derive(Debug, Default)]
struct Model {
    entries: BTreeMap<u64, Entry>,
    /// Every index up to here is covered by a snapshot (0: none).
    floor: u64,
    /// The term of the entry at `floor`: new entries never go below it.
    floor_term: u64,
}

impl Model {
    fn first(&self) -> u64 {
        self.floor + 1
    }

    fn last(&self) -> u64 {
        self.entries.last_key_value().map_or(self.floor, |(&i, _)| i)
    }

    fn last_term(&self) -> u64 {
        self.entries.last_key_value().map_or(self.floor_term, |(_, e)| e.term)
    }

    fn truncate_after(&mut self, index: u64) {
        self.entries.split_off(&(index + 1));
    }

    fn compact_through(&mut self, index: u64) {
        if index < self.first() {
            return;
        }
        self.floor_term = self.entries.get(&index).map_or(self.last_term(), |e| e.term);
        self.entries = self.entries.split_off(&(index + 1));
        self.floor = index;
    }
}

fn kind_of(k: u8) -> RecordKind {
    match k {
        0 => RecordKind::Normal,
        1 => RecordKind::ConfChange,
        _ => RecordKind::Noop,
    }
}

/// Payload bytes that differ between appends at the same index, so a
/// record that should have been truncated away cannot pass for its
/// replacement.
fn payload(seed: u64, index: u64, len: usize) -> Vec<u8> {
    let mut s = (seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

fn timestamp(seed: u64, index: u64) -> u64 {
    1_764_000_000_000 + (seed.rotate_left(17) ^ index) % 1_000_000
}

/// Reads `index` and compares it with the model: the record, or
/// `OutOfRange` naming the model's bounds.
fn check_entry(log: &Log, model: &Model, index: u64, guard: &Guard, ctx: &str) {
    match model.entries.get(&index) {
        Some(want) => {
            let got = log
                .entry(index, guard)
                .unwrap_or_else(|e| panic!("{ctx}: read of {index}: {e}"));
            let want = Record {
                kind: want.kind,
                term: want.term,
                index,
                timestamp_ms: want.timestamp_ms,
                payload: &want.payload,
            };
            assert_eq!(got, want, "{ctx}: record {index}");
            assert_eq!(log.term(index).unwrap(), want.term, "{ctx}: term of {index}");
        }
        None => match log.entry(index, guard) {
            Err(LogError::OutOfRange { index: i, first, last }) => {
                assert_eq!((i, first, last), (index, model.first(), model.last()), "{ctx}");
            }
            other => panic!(
                "{ctx}: read of {index} outside [{}, {}]: {other:?}",
                model.first(),
                model.last()
            ),
        },
    }
}

/// The bounds agree, and the ends, the middle and just past both ends read
/// as the model says.
fn check(log: &Log, model: &Model, ctx: &str) {
    assert_eq!(
        (log.first_index(), log.last_index()),
        (model.first(), model.last()),
        "{ctx}: bounds"
    );
    let guard = pin();
    let (first, last) = (model.first(), model.last());
    for index in [first.saturating_sub(1), first, (first + last) / 2, last, last + 1] {
        check_entry(log, model, index, &guard, ctx);
    }
}

/// Every record, one by one and as one range read.
fn check_all(log: &Log, model: &Model, ctx: &str) {
    check(log, model, ctx);
    let guard = pin();
    for &index in model.entries.keys() {
        check_entry(log, model, index, &guard, ctx);
    }
    if let (Some((&from, _)), Some((&to, _))) = (model.entries.first_key_value(), model.entries.last_key_value()) {
        let all = log.entries(from, to, usize::MAX, &guard).unwrap();
        let indexes: Vec<u64> = all.iter().map(|r| r.index).collect();
        let want: Vec<u64> = model.entries.keys().copied().collect();
        assert_eq!(indexes, want, "{ctx}: range read");
    }
}

/// How a case's log persists: not at all, or in sync mode with the flush
/// rounds run by the flush thread or by the waiters; and how many threads
/// its recoveries scan segments on (one: all on the opening thread).
#[derive(Debug, Clone, Copy)]
struct Mode {
    persist: PersistMode,
    waiters_flush: bool,
    recovery_threads: usize,
}

const MODES: [Mode; 3] = [
    Mode {
        persist: PersistMode::Sync,
        waiters_flush: false,
        recovery_threads: 3,
    },
    Mode {
        persist: PersistMode::Sync,
        waiters_flush: true,
        recovery_threads: 1,
    },
    Mode {
        persist: PersistMode::None,
        waiters_flush: false,
        recovery_threads: 2,
    },
];

fn config(mode: Mode) -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        persist: mode.persist,
        waiters_flush: mode.waiters_flush,
        recovery_threads: mode.recovery_threads,
        ..LogConfig::default()
    }
}

fn run(mode: Mode, ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(mode)).unwrap();
    let mut model = Model::default();
    check(&log, &model, "after open");
    for (step, op) in ops.iter().enumerate() {
        let ctx = format!("step {step} ({op:?})");
        let (first, last) = (model.first(), model.last());
        match op {
            Op::Append {
                records,
                term_bump,
                seed,
            } => {
                let term = model.last_term() + term_bump;
                let new: Vec<(u64, Entry)> = records
                    .iter()
                    .zip(last + 1..)
                    .map(|(&(len, kind), index)| {
                        let entry = Entry {
                            kind: kind_of(kind),
                            term,
                            timestamp_ms: timestamp(*seed, index),
                            payload: payload(*seed, index, len),
                        };
                        (index, entry)
                    })
                    .collect();
                let batch: Vec<Record<'_>> = new
                    .iter()
                    .map(|(index, e)| Record {
                        kind: e.kind,
                        term: e.term,
                        index: *index,
                        timestamp_ms: e.timestamp_ms,
                        payload: &e.payload,
                    })
                    .collect();
                let appended = log.append(&batch).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(
                    (appended.first, appended.last),
                    (last + 1, last + new.len() as u64),
                    "{ctx}"
                );
                model.entries.extend(new);
            }
            Op::Truncate(pick) => {
                if first >= 2 {
                    // Truncating below the snapshot floor is refused, and changes nothing.
                    let below = first - 2;
                    match log.truncate_after(below) {
                        Err(LogError::OutOfRange {
                            index,
                            first: f,
                            last: l,
                        }) => {
                            assert_eq!((index, f, l), (below, first, last), "{ctx}")
                        }
                        other => panic!("{ctx}: truncate_after({below}) below the floor: {other:?}"),
                    }
                    check(&log, &model, &format!("{ctx}, after the refused truncation"));
                }
                let to = pick.within(first - 1, last);
                log.truncate_after(to)
                    .unwrap_or_else(|e| panic!("{ctx}: truncate_after({to}): {e}"));
                model.truncate_after(to);
            }
            Op::Compact(pick) => {
                let through = pick.within(first - 1, last + 3);
                log.compact_through(through)
                    .unwrap_or_else(|e| panic!("{ctx}: compact_through({through}): {e}"));
                model.compact_through(through);
            }
            Op::Reboot => {
                log.wait_durable(last)
                    .unwrap_or_else(|e| panic!("{ctx}: wait_durable({last}): {e}"));
                log.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
                drop(log);
                log = Log::open_after(dir.path(), config(mode), model.floor)
                    .unwrap_or_else(|e| panic!("{ctx}: reopen after {}: {e}", model.floor));
            }
            Op::WaitDurable => {
                log.wait_durable(last)
                    .unwrap_or_else(|e| panic!("{ctx}: wait_durable({last}): {e}"));
                assert!(log.durable_index() >= last, "{ctx}: durable {}", log.durable_index());
            }
            Op::Read(pick) => {
                let index = pick.within(first.saturating_sub(2), last + 2);
                check_entry(&log, &model, index, &pin(), &ctx);
            }
        }
        check(&log, &model, &ctx);
    }
    check_all(&log, &model, "after the last step");
    // And once more from disk.
    log.wait_durable(model.last()).unwrap();
    log.close().unwrap();
    drop(log);
    let log = Log::open_after(dir.path(), config(mode), model.floor).unwrap();
    check_all(&log, &model, "after the final reopen");
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// A fixed sequence through the paths the random cases reach only
/// sometimes: truncation back across a segment boundary, compaction of
/// whole segments, compaction past the end, and a reboot after each.
fn fixed_walk() -> Vec<Op> {
    let append = |n: usize, bump: u64, seed: u64| Op::Append {
        records: (0..n).map(|i| (150 + i * 7, (i % 3) as u8)).collect(),
        term_bump: bump,
        seed,
    };
    vec![
        append(8, 1, 1),
        append(8, 0, 2),
        append(8, 0, 3),
        Op::Truncate(Pick(u32::MAX / 2)),
        Op::Reboot,
        append(8, 1, 4),
        Op::Compact(Pick(u32::MAX / 3)),
        Op::Reboot,
        Op::Truncate(Pick::LOW),
        Op::Reboot,
        append(5, 0, 5),
        Op::Compact(Pick::HIGH),
        Op::Reboot,
        append(8, 2, 6),
        Op::Reboot,
    ]
}

/// The fixed walk, then the random cases.
///
/// A reboot stands for a process restart: nothing of the previous log runs
/// on while the directory is reopened. So this is the only test in its
/// process; reopening while other threads of the same process use logs is
/// covered in faults.rs.
#[test]
fn log_matches_the_model() {
    for mode in MODES {
        run(mode, &fixed_walk());
    }
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let case = (0..MODES.len(), prop::collection::vec(op(), 1..=OPS_MAX));
    TestRunner::new(config)
        .run(&case, |(mode, ops)| {
            run(MODES[mode], &ops);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
