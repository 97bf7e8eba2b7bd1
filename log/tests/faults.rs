//! Faults injected through `LogIo`: a full disk, failing flushes, and
//! foreign files in the log directory.
//!
//! A full disk is an ordinary, recoverable error: the append that needed a
//! new segment fails, nothing else changes, and appends work again once
//! there is space. A failed flush is not recoverable in place: the log is
//! poisoned, refuses every write, claims nothing durable beyond the last
//! successful flush, and the directory still opens afterwards.

use std::fs::File;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use loomcache_log::{
    pin, Log, LogConfig, LogError, LogIo, OsIo, PersistMode, RecordKind, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};

const ENOSPC: i32 = 28;
const EIO: i32 = 5;
const UNLIMITED: u64 = u64::MAX;
const SMALL_SEGMENT_BYTES: usize = 1024;
/// Big enough that the flush tests never rotate: every flush is then one
/// of the flush thread's.
const LARGE_SEGMENT_BYTES: usize = 1 << 16;

/// The real file-system calls, except that segment allocations and mapping
/// flushes each draw on a budget and fail once it is spent.
#[derive(Debug)]
struct FaultIo {
    allocations_left: AtomicU64,
    flushes_left: AtomicU64,
    /// Segment writes outside the flush thread (records, new segments'
    /// headers, zero fill) allowed before they fail.
    writes_left: AtomicU64,
    /// Prepared files renamed into place as segments.
    prepared_renames: AtomicU64,
    /// Files the preparer thread finished (its final flush succeeded).
    prepared_built: AtomicU64,
    allocations_refused: AtomicU64,
    flush_calls: AtomicU64,
    flushes_failed: AtomicU64,
    /// The end of the highest range flushed successfully. With a single
    /// segment, successful flushes cover a prefix of it (each starts where
    /// the previous one ended, or at the header), so everything before this
    /// offset is on disk.
    flushed_to: AtomicUsize,
}

impl FaultIo {
    fn new(allocations: u64, flushes: u64) -> Arc<FaultIo> {
        Arc::new(FaultIo {
            allocations_left: AtomicU64::new(allocations),
            flushes_left: AtomicU64::new(flushes),
            writes_left: AtomicU64::new(UNLIMITED),
            prepared_renames: AtomicU64::new(0),
            prepared_built: AtomicU64::new(0),
            allocations_refused: AtomicU64::new(0),
            flush_calls: AtomicU64::new(0),
            flushes_failed: AtomicU64::new(0),
            flushed_to: AtomicUsize::new(0),
        })
    }

    fn healthy() -> Arc<FaultIo> {
        FaultIo::new(UNLIMITED, UNLIMITED)
    }

    /// Takes one unit from `budget`; false once it is spent.
    fn draw(budget: &AtomicU64) -> bool {
        budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Waits until the flush thread has gone idle: no flush call for a
    /// while (ten idle delays of the log, 5 ms each, so a flush thread
    /// woken late on a loaded machine is not taken for idle). After
    /// `wait_durable` returns, the flush thread still writes the segment
    /// header once; a fault armed before that would hit it.
    fn wait_for_quiet(&self) {
        let mut seen = self.flush_calls.load(Ordering::SeqCst);
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(250));
            let now = self.flush_calls.load(Ordering::SeqCst);
            if now == seen {
                return;
            }
            seen = now;
        }
        panic!("the flush thread never went idle");
    }
}

impl LogIo for FaultIo {
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        if !FaultIo::draw(&self.allocations_left) {
            self.allocations_refused.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        OsIo.allocate(file, len)
    }

    fn sync_segment(&self, file: &File, offset: usize, len: usize) -> io::Result<()> {
        self.flush_calls.fetch_add(1, Ordering::SeqCst);
        if !FaultIo::draw(&self.flushes_left) {
            self.flushes_failed.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(EIO));
        }
        OsIo.sync_segment(file, offset, len)?;
        self.flushed_to.fetch_max(offset + len, Ordering::SeqCst);
        if std::thread::current().name() == Some("loomcache-log-prepare") {
            self.prepared_built.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn write_segment(&self, file: &File, bufs: &mut [IoSlice<'_>], offset: u64) -> io::Result<()> {
        // Only appenders' writes fail: the flush thread's header writes
        // would poison the log on their own schedule.
        if !is_flush_thread() && !FaultIo::draw(&self.writes_left) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        OsIo.write_segment(file, bufs, offset)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsIo.rename(from, to)?;
        let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_owned();
        if name(from).starts_with("prepared-") && name(to).ends_with(".seg") {
            self.prepared_renames.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Segments are created on demand (no preparer), so every allocation and
/// flush the tests count comes from the operation under test.
fn config(io: &Arc<FaultIo>, segment_bytes: usize, persist: PersistMode) -> LogConfig {
    LogConfig {
        segment_bytes,
        persist,
        prepare_segments: false,
        io: Arc::clone(io) as Arc<dyn LogIo>,
        ..LogConfig::default()
    }
}

/// 100 to 249 bytes, different at every index.
fn payload(index: u64) -> Vec<u8> {
    let len = 100 + (index * 37 % 150) as usize;
    (0..len).map(|i| (index as usize * 131 + i * 7) as u8).collect()
}

fn timestamp(index: u64) -> u64 {
    1_764_000_000_000 + index
}

fn append_one(log: &Log, term: u64) -> loomcache_log::Result<u64> {
    let index = log.last_index() + 1;
    let a = log.append_payloads(term, RecordKind::Normal, timestamp(index), &[&payload(index)])?;
    assert_eq!((a.first, a.last), (index, index));
    Ok(index)
}

/// Every record in `from..=to` reads back as written.
fn check_records(log: &Log, from: u64, to: u64) {
    let guard = pin();
    for index in from..=to {
        let r = log
            .entry(index, &guard)
            .unwrap_or_else(|e| panic!("read of {index}: {e}"));
        assert_eq!(
            (r.index, r.timestamp_ms, r.payload),
            (index, timestamp(index), &payload(index)[..]),
            "record {index}"
        );
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Every name in the directory that is neither a segment nor the lock.
fn stray_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "seg") && !p.ends_with("LOCK"))
        .collect()
}

/// Runs `f` on another thread and fails if it does not finish in time: a
/// wait that can only end through a later, unrelated call is a hang.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not return within 10 s"))
}

// ---------------------------------------------------------------- disk full

#[test]
fn full_disk_fails_only_the_append_that_needs_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    // The first segment and two rotations.
    let io = FaultIo::new(3, UNLIMITED);
    let log = Log::open(dir.path(), config(&io, SMALL_SEGMENT_BYTES, PersistMode::Sync)).unwrap();
    let (mut last, err) = append_until_refused(&log);
    assert!(err.is_no_space(), "expected an out-of-space error, got {err}");
    assert!(matches!(err, LogError::Io { .. }), "{err:?}");
    assert_eq!(io.allocations_refused.load(Ordering::SeqCst), 1);
    assert_eq!(
        segment_files(dir.path()).len(),
        3,
        "the segment that could not be allocated must not be left behind"
    );
    assert!(stray_files(dir.path()).is_empty(), "{:?}", stray_files(dir.path()));

    // Nothing else changed, and a full disk is not a failed flush.
    assert!(!log.is_poisoned());
    assert_eq!((log.first_index(), log.last_index()), (1, last));
    log.wait_durable(last).unwrap();
    assert_eq!(log.durable_index(), last);
    check_records(&log, 1, last);

    // Trying again while the disk is still full fails the same way.
    let again = append_one(&log, 1).unwrap_err();
    assert!(again.is_no_space(), "{again}");
    assert_eq!(log.last_index(), last);
    assert_eq!(segment_files(dir.path()).len(), 3);

    // Space comes back: appends go on, through more rotations.
    io.allocations_left.store(UNLIMITED, Ordering::SeqCst);
    for _ in 0..30 {
        last = append_one(&log, 1).unwrap();
    }
    log.wait_durable(last).unwrap();
    assert!(segment_files(dir.path()).len() > 4);
    check_records(&log, 1, last);
    log.close().unwrap();
    drop(log);

    let log = Log::open(
        dir.path(),
        config(&FaultIo::healthy(), SMALL_SEGMENT_BYTES, PersistMode::Sync),
    )
    .unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, last));
    check_records(&log, 1, last);
}

/// Appends until an append fails (a full disk, in these tests): the last
/// index appended, and the error.
fn append_until_refused(log: &Log) -> (u64, LogError) {
    let mut last = 0;
    loop {
        assert!(last < 100, "three small segments cannot hold 100 records");
        match append_one(log, 1) {
            Ok(index) => last = index,
            Err(e) => return (last, e),
        }
    }
}

/// Four records of 200 bytes fill a 1024-byte segment to 864 bytes, leaving
/// 160: room for a 120-byte record but not for another 200-byte one.
fn four_records_in_one_segment(dir: &Path, io: &Arc<FaultIo>, terms: [u64; 4]) -> Log {
    let log = Log::open(dir, config(io, SMALL_SEGMENT_BYTES, PersistMode::Sync)).unwrap();
    let body = [9u8; 160];
    for (i, term) in terms.into_iter().enumerate() {
        log.append_payloads(term, RecordKind::Normal, 0, &[&body]).unwrap();
        assert_eq!(log.last_index(), i as u64 + 1);
    }
    log.wait_durable(4).unwrap();
    assert_eq!(segment_files(dir).len(), 1);
    log
}

#[test]
fn full_disk_in_the_middle_of_a_batch_appends_none_of_it() {
    let dir = tempfile::tempdir().unwrap();
    // Only the first segment.
    let io = FaultIo::new(1, UNLIMITED);
    let log = four_records_in_one_segment(dir.path(), &io, [1; 4]);
    // The first record fits in the tail; the second needs a new segment.
    let err = log
        .append_payloads(1, RecordKind::Normal, 0, &[&[1u8; 80], &[2u8; 160]])
        .unwrap_err();
    assert!(err.is_no_space(), "{err}");
    // A failed append leaves the log as it was, so the caller can retry
    // the same batch.
    assert_eq!(log.last_index(), 4, "a failed append left part of its batch in the log");
    // And whatever the log holds can be waited on.
    let last = log.last_index();
    let waiter = log.clone();
    within("wait_durable(last_index())", move || waiter.wait_durable(last)).unwrap();
}

#[test]
fn full_disk_during_truncation_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultIo::new(1, UNLIMITED);
    let log = four_records_in_one_segment(dir.path(), &io, [1, 1, 2, 2]);
    let err = log.truncate_after(2).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert_eq!((log.first_index(), log.last_index()), (1, 4));
    assert_eq!(log.durable_index(), 4, "a failed truncation lowered the durable index");
    let waiter = log.clone();
    within("wait_durable(4)", move || waiter.wait_durable(4)).unwrap();
    // The log still ends in term 2, so term 1 cannot follow.
    io.allocations_left.store(UNLIMITED, Ordering::SeqCst);
    match log.append_payloads(1, RecordKind::Normal, 0, &[b"older term"]) {
        Err(LogError::TermRegressed {
            index: 5,
            term: 1,
            previous: 2,
        }) => {}
        other => panic!("term 1 after term 2 must be refused, got {other:?}"),
    }
    // The truncation can be done once there is space, and the log reopens.
    log.truncate_after(2).unwrap();
    log.append_payloads(1, RecordKind::Normal, 0, &[b"three again"])
        .unwrap();
    log.wait_durable(3).unwrap();
    log.close().unwrap();
    drop(log);
    let log = open_healthy(dir.path()).unwrap();
    assert_eq!(log.last_index(), 3);
    assert_eq!(log.entry(3, &pin()).unwrap().payload, b"three again");
}

#[test]
fn full_disk_during_compaction_past_the_end_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultIo::new(1, UNLIMITED);
    let log = four_records_in_one_segment(dir.path(), &io, [1; 4]);
    let err = log.compact_through(10).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert_eq!(
        (log.first_index(), log.last_index()),
        (1, 4),
        "a failed compaction moved the log's bounds"
    );
    let guard = pin();
    for index in 1..=4 {
        assert_eq!(log.entry(index, &guard).unwrap().payload, [9u8; 160], "record {index}");
    }
    drop(guard);
    // With space back, the compaction can be done after all.
    io.allocations_left.store(UNLIMITED, Ordering::SeqCst);
    log.compact_through(10).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (11, 10));
    log.append_payloads(3, RecordKind::Normal, 0, &[b"after the snapshot"])
        .unwrap();
    assert_eq!(log.last_index(), 11);
}

#[test]
fn failed_segment_header_flush_leaves_no_file_and_the_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    // Without a flush thread, the only flushes are of new segment headers.
    let io = FaultIo::healthy();
    let log = Log::open(dir.path(), config(&io, SMALL_SEGMENT_BYTES, PersistMode::None)).unwrap();
    io.flushes_left.store(0, Ordering::SeqCst);
    let mut last = 0;
    let err = loop {
        assert!(last < 100, "one small segment cannot hold 100 records");
        match append_one(&log, 1) {
            Ok(index) => last = index,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&err, LogError::Io { source, .. } if source.raw_os_error() == Some(EIO)),
        "{err:?}"
    );
    assert_eq!(log.last_index(), last);
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the segment whose creation failed was left behind"
    );
    io.flushes_left.store(UNLIMITED, Ordering::SeqCst);
    // Either the log is poisoned and says so, or it takes appends again;
    // never a log that is neither.
    if log.is_poisoned() {
        assert!(matches!(append_one(&log, 1), Err(LogError::Poisoned)));
        return;
    }
    for _ in 0..10 {
        last = append_one(&log, 1).unwrap_or_else(|e| panic!("append after the flush recovered: {e}"));
    }
    check_records(&log, 1, last);
}

// ------------------------------------------------------------ failed flush

/// Where record `index` ends when records `1..` fill one segment.
fn record_end(index: u64) -> usize {
    SEGMENT_HEADER_LEN + (1..=index).map(|i| RECORD_HEADER_LEN + payload(i).len()).sum::<usize>()
}

/// Checks the poisoned log refuses writes and holds its durable index.
fn check_poisoned(log: &Log, io: &FaultIo, durable: u64) {
    assert!(log.is_poisoned());
    assert_eq!(log.durable_index(), durable);
    assert!(
        record_end(durable) <= io.flushed_to.load(Ordering::SeqCst),
        "index {durable} is claimed durable but its bytes were never flushed"
    );
    let last = log.last_index();
    assert!(matches!(append_one(log, 1), Err(LogError::Poisoned)));
    let record = loomcache_log::Record {
        kind: RecordKind::Normal,
        term: 1,
        index: last + 1,
        timestamp_ms: 0,
        payload: b"x",
    };
    assert!(matches!(log.append(&[record]), Err(LogError::Poisoned)));
    assert!(matches!(
        log.truncate_after(last.saturating_sub(1)),
        Err(LogError::Poisoned)
    ));
    assert!(matches!(log.truncate_after(0), Err(LogError::Poisoned)));
    assert_eq!(log.last_index(), last, "a refused write changed the log");
    assert_eq!(log.durable_index(), durable, "a poisoned log claimed more durability");
    assert!(matches!(log.close(), Err(LogError::Poisoned)));
    assert_eq!(log.durable_index(), durable);
}

/// Reopens `dir` with healthy I/O: everything durable is back, and nothing
/// that was never appended.
fn reopen_keeps_the_durable_records(dir: &Path, durable: u64, appended: u64) {
    let log = Log::open(dir, config(&FaultIo::healthy(), LARGE_SEGMENT_BYTES, PersistMode::Sync))
        .unwrap_or_else(|e| panic!("reopen after a failed flush: {e}"));
    let last = log.last_index();
    assert!(
        (durable..=appended).contains(&last),
        "reopened with last index {last}, durable was {durable}, appended {appended}"
    );
    check_records(&log, 1, last);
    // The reopened log is healthy and takes appends again.
    let next = append_one(&log, 1).unwrap();
    log.wait_durable(next).unwrap();
}

#[test]
fn failed_flush_poisons_the_log_and_fails_its_waiter() {
    failed_flush_poisons_and_fails_the_waiter(false);
}

/// The same when the waiter runs the failing flush itself.
#[test]
fn failed_flush_run_by_the_waiter_poisons_and_fails_it() {
    failed_flush_poisons_and_fails_the_waiter(true);
}

fn failed_flush_poisons_and_fails_the_waiter(waiters_flush: bool) {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultIo::healthy();
    let config = LogConfig {
        waiters_flush,
        ..config(&io, LARGE_SEGMENT_BYTES, PersistMode::Sync)
    };
    let log = Log::open(dir.path(), config).unwrap();
    for _ in 0..5 {
        let index = append_one(&log, 1).unwrap();
        log.wait_durable(index).unwrap();
    }
    io.wait_for_quiet();
    assert_eq!(log.durable_index(), 5);
    io.flushes_left.store(0, Ordering::SeqCst);

    // The append itself succeeds: the records are published, not durable.
    assert_eq!(append_one(&log, 1).unwrap(), 6);
    match log.wait_durable(6) {
        Err(LogError::Poisoned) => {}
        other => panic!("the waiter of a failed flush must learn it: {other:?}"),
    }
    assert!(io.flushes_failed.load(Ordering::SeqCst) >= 1);
    check_poisoned(&log, &io, 5);
    drop(log);
    reopen_keeps_the_durable_records(dir.path(), 5, 6);
}

/// The flush fails at each point of a workload in turn: in the flush of a
/// record, or (when the log goes quiet between appends) in the idle-time
/// write of the header after it. Whichever call comes first with the bad
/// news (the waiter or a later append), the log is poisoned from then on,
/// and durable means flushed.
#[test]
fn flush_failing_after_n_calls_poisons_at_every_point() {
    for paced in [false, true] {
        for n in 0..16 {
            let ctx = format!("n = {n}, paced = {paced}");
            let dir = tempfile::tempdir().unwrap();
            let io = FaultIo::healthy();
            let log = Log::open(dir.path(), config(&io, LARGE_SEGMENT_BYTES, PersistMode::Sync)).unwrap();
            io.flushes_left.store(n, Ordering::SeqCst);
            let mut acked = 0;
            let mut appended = 0;
            let failure = (|| {
                for _ in 0..40 {
                    let index = append_one(&log, 1)?;
                    appended = index;
                    log.wait_durable(index)?;
                    acked = index;
                    if paced {
                        // Longer than the idle delay: the flush thread
                        // writes the header on its own.
                        std::thread::sleep(LogConfig::default().idle_flush_delay * 3);
                    }
                }
                Ok(())
            })();
            match failure {
                Err(LogError::Poisoned) => {}
                other => panic!("{ctx}: expected the log to be poisoned, got {other:?}"),
            }
            let durable = log.durable_index();
            assert!(
                (acked..=appended).contains(&durable),
                "{ctx}: durable {durable}, acknowledged {acked}, appended {appended}"
            );
            check_poisoned(&log, &io, durable);
            drop(log);
            reopen_keeps_the_durable_records(dir.path(), durable, appended);
        }
    }
}

// ------------------------------------------------ truncation and the flusher

fn is_flush_thread() -> bool {
    std::thread::current().name() == Some("loomcache-log-flush")
}

/// Holds the flush thread inside a flush while another thread creates a
/// segment, then lets both go on. While recording, it copies the log
/// directory after every successful flush of the flush thread: what a
/// crash right then could leave (every page written back, the flushed ones
/// certainly).
#[derive(Debug)]
struct HeldFlush {
    dir: PathBuf,
    armed: AtomicBool,
    recording: AtomicBool,
    /// (flush thread is held, a segment's directory entry was synced)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
    images: Mutex<Vec<tempfile::TempDir>>,
}

impl HeldFlush {
    fn new(dir: &Path) -> Arc<HeldFlush> {
        Arc::new(HeldFlush {
            dir: dir.to_path_buf(),
            armed: AtomicBool::new(false),
            recording: AtomicBool::new(false),
            state: Mutex::new((false, false)),
            changed: Condvar::new(),
            images: Mutex::new(Vec::new()),
        })
    }

    /// Holds the flush thread's next flush until a segment is created.
    fn arm(&self) {
        *self.state.lock().unwrap() = (false, false);
        self.recording.store(true, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until `until` holds; false on timeout.
    fn wait_until(&self, until: impl Fn(&(bool, bool)) -> bool) -> bool {
        let guard = self.state.lock().unwrap();
        let (state, timeout) = self
            .changed
            .wait_timeout_while(guard, Duration::from_secs(10), |s| !until(s))
            .unwrap();
        drop(state);
        !timeout.timed_out()
    }

    fn record_image(&self) {
        let image = tempfile::tempdir().unwrap();
        for seg in segment_files(&self.dir) {
            // A segment deleted meanwhile is simply not in the image.
            if let Ok(bytes) = std::fs::read(&seg) {
                std::fs::write(image.path().join(seg.file_name().unwrap()), bytes).unwrap();
            }
        }
        self.images.lock().unwrap().push(image);
    }
}

impl LogIo for HeldFlush {
    fn sync_segment(&self, file: &File, offset: usize, len: usize) -> io::Result<()> {
        if is_flush_thread() && self.armed.swap(false, Ordering::SeqCst) {
            self.state.lock().unwrap().0 = true;
            self.changed.notify_all();
            // A timeout lets the flush go on: the test then fails on
            // its own wait rather than hanging here.
            let _ = self.wait_until(|s| s.1);
            // Let the truncating thread publish its segment and reach the
            // lock this flush holds.
            std::thread::sleep(Duration::from_millis(20));
        }
        OsIo.sync_segment(file, offset, len)?;
        if is_flush_thread() && self.recording.load(Ordering::SeqCst) {
            self.record_image();
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsIo.sync_dir(dir)?;
        if !is_flush_thread() {
            self.state.lock().unwrap().1 = true;
            self.changed.notify_all();
        }
        Ok(())
    }
}

/// A truncation while a flush is under way, followed at once by a new
/// append. The new tail segment's watermark must never claim more than the
/// log holds: after every flush, the disk image must open, and so must the
/// closed log.
#[test]
fn truncation_during_a_flush_leaves_a_log_that_reopens() {
    let rounds = 20;
    let mut failures = Vec::new();
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let io = HeldFlush::new(dir.path());
        let config = |io: Arc<dyn LogIo>| LogConfig {
            segment_bytes: LARGE_SEGMENT_BYTES,
            persist: PersistMode::Sync,
            io,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path(), config(io.clone())).unwrap();
        log.append_payloads(1, RecordKind::Normal, 0, &[b"one", b"two"])
            .unwrap();
        log.wait_durable(2).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        io.arm();
        log.append_payloads(1, RecordKind::Normal, 0, &[b"three", b"four", b"five", b"six"])
            .unwrap();
        assert!(io.wait_until(|s| s.0), "the flush thread was never held");
        // Nothing above 2 is durable yet. Keep 3 and 4, then replace 5.
        log.truncate_after(4).unwrap();
        log.append_payloads(2, RecordKind::Normal, 0, &[b"five again"]).unwrap();
        log.wait_durable(5).unwrap();
        log.close().unwrap();
        drop(log);
        let images = std::mem::take(&mut *io.images.lock().unwrap());
        assert!(!images.is_empty());
        for (i, image) in images.iter().enumerate() {
            let quick = LogConfig {
                persist: PersistMode::None,
                ..config(Arc::new(OsIo))
            };
            if let Err(e) = Log::open(image.path(), quick) {
                failures.push(format!("round {round}, image after flush {i}: {e}"));
            }
        }
        match Log::open(dir.path(), config(Arc::new(OsIo))) {
            Ok(log) => {
                assert_eq!(log.last_index(), 5);
                assert_eq!(log.entry(5, &pin()).unwrap().payload, b"five again");
            }
            Err(e) => failures.push(format!("round {round}, closed log: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures in {rounds} rounds: {failures:#?}",
        failures.len()
    );
}

// ------------------------------------------------------------ foreign files

fn log_with_records(dir: &Path, records: u64) {
    let log = Log::open(dir, config(&FaultIo::healthy(), SMALL_SEGMENT_BYTES, PersistMode::Sync)).unwrap();
    for _ in 0..records {
        append_one(&log, 1).unwrap();
    }
    log.wait_durable(records).unwrap();
    log.close().unwrap();
}

fn open_healthy(dir: &Path) -> loomcache_log::Result<Log> {
    Log::open(dir, config(&FaultIo::healthy(), SMALL_SEGMENT_BYTES, PersistMode::Sync))
}

fn expect_corrupt_naming(dir: &Path, name: &str) {
    match open_healthy(dir) {
        Err(LogError::Corrupt { path, .. }) => assert_eq!(path, dir.join(name)),
        Err(other) => panic!("{name}: expected Corrupt, got {other:?}"),
        Ok(log) => panic!("{name}: opened, last index {}", log.last_index()),
    }
}

fn garbage(len: usize) -> Vec<u8> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

#[test]
fn segment_named_garbage_fails_the_open_and_names_the_file() {
    let existing = tempfile::tempdir().unwrap();
    log_with_records(existing.path(), 20);
    let segments = segment_files(existing.path());
    assert!(segments.len() >= 2);
    let real = std::fs::read(&segments[0]).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Shorter than a segment header.
        ("00000000000000000099-00000000000000000001.seg", garbage(10)),
        // Header-sized and more, but not a segment.
        (
            "00000000000000000099-00000000000000000001.seg",
            garbage(SMALL_SEGMENT_BYTES),
        ),
        ("00000000000000000099-00000000000000000001.seg", Vec::new()),
        // A real segment under another segment's name.
        ("00000000000000000099-00000000000000000001.seg", real.clone()),
        ("00000000000000000001-00000000000000000005.seg", real),
    ];
    for (name, content) in cases {
        for with_log in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            if with_log {
                for seg in &segments {
                    std::fs::copy(seg, dir.path().join(seg.file_name().unwrap())).unwrap();
                }
            }
            let path = dir.path().join(name);
            if path.exists() {
                continue;
            }
            std::fs::write(&path, &content).unwrap();
            expect_corrupt_naming(dir.path(), name);
            // The failed open destroyed nothing: the file is still there,
            // and without it the log opens whole.
            assert_eq!(std::fs::read(&path).unwrap(), content, "{name}");
            std::fs::remove_file(&path).unwrap();
            let log = open_healthy(dir.path()).unwrap();
            if with_log {
                assert_eq!((log.first_index(), log.last_index()), (1, 20));
                check_records(&log, 1, 20);
            } else {
                assert_eq!((log.first_index(), log.last_index()), (1, 0));
            }
        }
    }
}

#[test]
fn garbage_with_a_free_form_seg_name_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    log_with_records(dir.path(), 5);
    std::fs::write(dir.path().join("garbage.seg"), garbage(SMALL_SEGMENT_BYTES)).unwrap();
    expect_corrupt_naming(dir.path(), "garbage.seg");
}

#[test]
fn unrelated_files_in_the_directory_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"operator notes").unwrap();
    log_with_records(dir.path(), 20);
    let log = open_healthy(dir.path()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, 20));
    check_records(&log, 1, 20);
    // Compaction deletes the segments it covers, and nothing else.
    let before = segment_files(dir.path()).len();
    log.compact_through(15).unwrap();
    for _ in 0..1000 {
        pin().flush();
        if segment_files(dir.path()).len() < before {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        segment_files(dir.path()).len() < before,
        "compacted segments were not removed"
    );
    check_records(&log, 16, 20);
    log.close().unwrap();
    assert_eq!(std::fs::read(&notes).unwrap(), b"operator notes");
    assert_eq!(stray_files(dir.path()), vec![notes]);
}

// ------------------------------------------------------- prepared segments

/// Files a preparer built and has not handed over yet.
fn prepared_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("prepared-"))
        .collect()
}

fn with_preparer(io: &Arc<FaultIo>, segment_bytes: usize) -> LogConfig {
    LogConfig {
        prepare_segments: true,
        ..config(io, segment_bytes, PersistMode::Sync)
    }
}

/// Waits (bounded) until the preparer thread has finished `n` files.
fn wait_for_prepared(io: &FaultIo, n: u64) {
    for _ in 0..1000 {
        if io.prepared_built.load(Ordering::SeqCst) >= n {
            // Finished means flushed; it is handed over just after, under
            // one lock.
            std::thread::sleep(Duration::from_millis(50));
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("the preparer did not finish file {n} within 2 s");
}

#[test]
fn rotation_takes_the_prepared_file_and_the_next_one_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultIo::healthy();
    let log = Log::open(dir.path(), with_preparer(&io, SMALL_SEGMENT_BYTES)).unwrap();
    // The first segment is itself built as a prepared file.
    assert_eq!(io.prepared_renames.load(Ordering::SeqCst), 1);
    let mut last = 0;
    for rotation in 1..=5 {
        wait_for_prepared(&io, rotation);
        let segments = segment_files(dir.path()).len();
        while segment_files(dir.path()).len() == segments {
            last = append_one(&log, 1).unwrap();
        }
        assert_eq!(io.prepared_renames.load(Ordering::SeqCst), 1 + rotation);
        assert!(
            prepared_files(dir.path()).len() <= 1,
            "{:?}",
            prepared_files(dir.path())
        );
    }
    log.wait_durable(last).unwrap();
    closes_clean_and_reopens(dir.path(), log, last);
}

/// Closes `log` (holding records `1..=last`), checks that only segments
/// remain, and that a reopen finds every record.
fn closes_clean_and_reopens(dir: &Path, log: Log, last: u64) {
    check_records(&log, 1, last);
    log.close().unwrap();
    drop(log);
    assert!(
        prepared_files(dir).is_empty(),
        "a closed log leaves its prepared file behind"
    );
    assert!(stray_files(dir).is_empty(), "{:?}", stray_files(dir));
    let log = open_healthy(dir).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, last));
    check_records(&log, 1, last);
}

#[test]
fn a_prepared_file_left_by_a_crash_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    log_with_records(dir.path(), 20);
    // As if the process died while building the next file.
    let leftover = dir.path().join("prepared-3.tmp");
    std::fs::write(&leftover, vec![0u8; SMALL_SEGMENT_BYTES / 2]).unwrap();
    let log = open_healthy(dir.path()).unwrap();
    assert!(!leftover.exists(), "the unfinished prepared file is still there");
    assert_eq!((log.first_index(), log.last_index()), (1, 20));
    check_records(&log, 1, 20);
}

#[test]
fn full_disk_with_the_preparer_fails_appends_cleanly_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // The first segment and whatever the preparer and rotation draw after.
    let io = FaultIo::new(3, UNLIMITED);
    let log = Log::open(dir.path(), with_preparer(&io, SMALL_SEGMENT_BYTES)).unwrap();
    let (mut last, err) = append_until_refused(&log);
    assert!(err.is_no_space(), "expected an out-of-space error, got {err}");
    assert!(!log.is_poisoned(), "a full disk is not a failed flush");
    assert_eq!(log.last_index(), last);
    log.wait_durable(last).unwrap();
    check_records(&log, 1, last);

    io.allocations_left.store(UNLIMITED, Ordering::SeqCst);
    for _ in 0..30 {
        last = append_one(&log, 1).unwrap();
    }
    log.wait_durable(last).unwrap();
    closes_clean_and_reopens(dir.path(), log, last);
}

/// A failed write of records publishes none of the batch and poisons the
/// log: what reached the file is unknown, so nothing more is appended.
#[test]
fn failed_record_write_publishes_nothing_and_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultIo::healthy();
    let log = Log::open(dir.path(), config(&io, LARGE_SEGMENT_BYTES, PersistMode::Sync)).unwrap();
    for _ in 0..10 {
        append_one(&log, 1).unwrap();
    }
    log.wait_durable(10).unwrap();
    io.writes_left.store(0, Ordering::SeqCst);
    let batch: Vec<Vec<u8>> = (11..=13).map(payload).collect();
    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    let err = log
        .append_payloads(1, RecordKind::Normal, timestamp(11), &refs)
        .unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err:?}");
    assert_eq!(log.last_index(), 10, "a failed write published records");
    assert!(log.is_poisoned());
    assert!(matches!(append_one(&log, 1), Err(LogError::Poisoned)));
    let guard = pin();
    assert!(log.entry(11, &guard).is_err());
    drop(guard);
    check_records(&log, 1, 10);
    drop(log);
    let log = open_healthy(dir.path()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, 10));
    check_records(&log, 1, 10);
}

// ------------------------------------------------------------------ reopen

/// Reopening a log in the same process while other threads use logs (as
/// the daemon's readers do): segments the previous instance removed are
/// deleted whenever the epoch collector gets to them, possibly while the
/// new instance lists and opens the directory. The reopen must still
/// succeed.
#[test]
fn reopen_while_other_threads_read() {
    let busy = tempfile::tempdir().unwrap();
    log_with_records(busy.path(), 5);
    let other = open_healthy(busy.path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(other.term(1 + reads % 5).unwrap(), 1);
                reads += 1;
            }
            reads
        })
    };
    let rounds = 30;
    let mut failures = Vec::new();
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let log = open_healthy(dir.path()).unwrap();
        for _ in 0..40 {
            append_one(&log, 1).unwrap();
        }
        log.wait_durable(40).unwrap();
        log.compact_through(30).unwrap();
        log.close().unwrap();
        drop(log);
        let config = config(&FaultIo::healthy(), SMALL_SEGMENT_BYTES, PersistMode::Sync);
        match Log::open_after(dir.path(), config, 30) {
            Ok(log) => {
                assert_eq!((log.first_index(), log.last_index()), (31, 40));
                check_records(&log, 31, 40);
            }
            Err(e) => failures.push(format!("round {round}: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert!(
        failures.is_empty(),
        "{} of {rounds} reopens failed: {failures:#?}",
        failures.len()
    );
}
