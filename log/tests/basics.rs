//! Appends, reads, group commit, truncation, compaction and reopening.

use loomcache_log::{pin, Log, LogConfig, LogError, PersistMode, Record, RecordKind};

fn config(segment_bytes: usize) -> LogConfig {
    LogConfig {
        segment_bytes,
        ..LogConfig::default()
    }
}

fn payload(index: u64) -> Vec<u8> {
    format!("entry {index} ").repeat((index % 7) as usize + 1).into_bytes()
}

fn append_range(log: &Log, from: u64, to: u64, term: u64) {
    let payloads: Vec<Vec<u8>> = (from..=to).map(payload).collect();
    let records: Vec<Record<'_>> = (from..=to)
        .zip(&payloads)
        .map(|(index, p)| Record {
            kind: RecordKind::Normal,
            term,
            index,
            timestamp_ms: index * 10,
            payload: p,
        })
        .collect();
    let a = log.append(&records).unwrap();
    assert_eq!((a.first, a.last), (from, to));
}

fn check_range(log: &Log, from: u64, to: u64) {
    let guard = pin();
    for index in from..=to {
        let r = log.entry(index, &guard).unwrap();
        assert_eq!(r.index, index);
        assert_eq!(r.payload, &payload(index)[..], "payload of {index}");
        assert_eq!(r.timestamp_ms, index * 10);
    }
}

#[test]
fn append_read_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(4096)).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (1, 0));
        for chunk in 0..20 {
            append_range(&log, chunk * 10 + 1, chunk * 10 + 10, 1 + chunk / 5);
        }
        log.wait_durable(200).unwrap();
        assert_eq!(log.durable_index(), 200);
        check_range(&log, 1, 200);
        log.close().unwrap();
    }
    let segments = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().ends_with(".seg"));
    assert!(segments.count() > 3, "small segments must rotate");
    let log = Log::open(dir.path(), config(4096)).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, 200));
    check_range(&log, 1, 200);
    assert_eq!(log.term(200).unwrap(), 4);
    // Appending continues where it left off.
    append_range(&log, 201, 205, 4);
    log.wait_durable(205).unwrap();
    check_range(&log, 195, 205);
}

#[test]
fn appends_must_be_contiguous_and_terms_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(1 << 16)).unwrap();
    append_range(&log, 1, 3, 2);
    let r = Record {
        kind: RecordKind::Normal,
        term: 2,
        index: 5,
        timestamp_ms: 0,
        payload: b"x",
    };
    assert!(matches!(
        log.append(&[r]),
        Err(LogError::NotContiguous { last: 3, got: 5 })
    ));
    let r = Record {
        kind: RecordKind::Normal,
        term: 1,
        index: 4,
        timestamp_ms: 0,
        payload: b"x",
    };
    assert!(matches!(
        log.append(&[r]),
        Err(LogError::TermRegressed {
            index: 4,
            term: 1,
            previous: 2
        })
    ));
    let big = vec![0u8; 1 << 16];
    let r = Record {
        kind: RecordKind::Normal,
        term: 2,
        index: 4,
        timestamp_ms: 0,
        payload: &big,
    };
    assert!(matches!(log.append(&[r]), Err(LogError::RecordTooLarge { .. })));
    let guard = pin();
    assert!(matches!(log.entry(0, &guard), Err(LogError::OutOfRange { .. })));
    assert!(matches!(log.entry(4, &guard), Err(LogError::OutOfRange { .. })));
}

#[test]
fn truncation_supersedes_durably() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(4096)).unwrap();
        append_range(&log, 1, 50, 1);
        log.wait_durable(50).unwrap();
        // A reader holding old records keeps valid bytes across truncation.
        let guard = pin();
        let old = log.entry(40, &guard).unwrap();
        log.truncate_after(30).unwrap();
        assert_eq!(log.last_index(), 30);
        assert_eq!(old.payload, &payload(40)[..]);
        drop(guard);
        // New entries at the truncated indexes, from a later term.
        let new_payload = b"replacement".to_vec();
        let records: Vec<_> = (31..=35)
            .map(|index| Record {
                kind: RecordKind::Normal,
                term: 2,
                index,
                timestamp_ms: 0,
                payload: &new_payload,
            })
            .collect();
        log.append(&records).unwrap();
        log.wait_durable(35).unwrap();
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), config(4096)).unwrap();
    assert_eq!(log.last_index(), 35, "truncated entries must not come back");
    check_range(&log, 1, 30);
    let guard = pin();
    assert_eq!(log.entry(33, &guard).unwrap().payload, b"replacement");
    assert_eq!(log.entry(33, &guard).unwrap().term, 2);
}

#[test]
fn truncation_without_new_appends_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(1 << 16)).unwrap();
        append_range(&log, 1, 20, 1);
        log.wait_durable(20).unwrap();
        log.truncate_after(12).unwrap();
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), config(1 << 16)).unwrap();
    assert_eq!(log.last_index(), 12);
}

#[test]
fn compaction_deletes_covered_segments_after_readers() {
    let dir = tempfile::tempdir().unwrap();
    let count_segments = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().ends_with(".seg"))
            .count()
    };
    let log = Log::open(dir.path(), config(4096)).unwrap();
    append_range(&log, 1, 200, 1);
    log.wait_durable(200).unwrap();
    let before = count_segments();
    let guard = pin();
    let early = log.entry(3, &guard).unwrap();
    log.compact_through(150).unwrap();
    assert_eq!(log.first_index(), 151);
    // The reader's bytes stay valid while its guard is held.
    assert_eq!(early.payload, &payload(3)[..]);
    drop(guard);
    // Reclamation is deferred to the epoch collector; nudge it.
    for _ in 0..256 {
        pin().flush();
        if count_segments() < before {
            break;
        }
        std::thread::yield_now();
    }
    assert!(count_segments() < before, "compacted segments were not removed");
    check_range(&log, 151, 200);
    log.close().unwrap();
    drop(log);
    let log = Log::open_after(dir.path(), config(4096), 150).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (151, 200));
    check_range(&log, 151, 200);
}

#[test]
fn compaction_of_everything_continues_after_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(4096)).unwrap();
        append_range(&log, 1, 30, 1);
        log.compact_through(100).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (101, 100));
        append_range(&log, 101, 105, 3);
        log.wait_durable(105).unwrap();
        log.close().unwrap();
    }
    let log = Log::open_after(dir.path(), config(4096), 100).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (101, 105));
    check_range(&log, 101, 105);
}

#[test]
fn concurrent_appenders_each_learn_durability() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(1 << 20)).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let body = vec![t as u8; 100];
                for _ in 0..50 {
                    let a = log.append_payloads(1, RecordKind::Normal, 0, &[&body]).unwrap();
                    log.wait_durable(a.last).unwrap();
                    assert!(log.durable_index() >= a.last);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.last_index(), 400);
    assert_eq!(log.durable_index(), 400);
}

#[test]
fn flush_statistics_count_each_round_and_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(1 << 16)).unwrap();
    let before = log.flush_stats();
    // Each append waits for its own round: the next starts after it.
    for index in 1..=20 {
        append_range(&log, index, index, 1);
        log.wait_durable(index).unwrap();
    }
    let after = log.flush_stats();
    assert!(after.rounds >= before.rounds + 20, "{before:?} then {after:?}");
    assert!(
        after.micros >= before.micros && after.micros >= after.max_micros,
        "{after:?}"
    );
    assert!(after.max_micros >= before.max_micros, "{after:?}");
    assert_eq!(after.rounds, log.flush_rounds());
}

#[test]
fn persist_none_is_durable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogConfig {
            persist: PersistMode::None,
            ..config(1 << 16)
        },
    )
    .unwrap();
    append_range(&log, 1, 5, 1);
    assert_eq!(log.durable_index(), 5);
    log.wait_durable(5).unwrap();
    assert_eq!(
        log.flush_stats(),
        loomcache_log::FlushStats::default(),
        "nothing flushed"
    );
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open(dir.path(), config(1 << 16)).unwrap();
    let err = Log::open(dir.path(), config(1 << 16)).unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
}

#[test]
fn entries_respects_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(1 << 16)).unwrap();
    append_range(&log, 1, 10, 1);
    let guard = pin();
    let all = log.entries(1, 10, usize::MAX, &guard).unwrap();
    assert_eq!(all.len(), 10);
    let some = log.entries(1, 10, 30, &guard).unwrap();
    assert!(!some.is_empty() && some.len() < 10);
    let one = log.entries(5, 10, 0, &guard).unwrap();
    assert_eq!(one.len(), 1, "at least one record is returned");
}
