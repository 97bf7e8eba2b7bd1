//! The segmented log: appends, group commit, reads, truncation and
//! compaction.
//!
//! Writers (appends, truncation, compaction, segment rotation) serialise on
//! the writer lock. Readers never take it: they pin an epoch, load the
//! current segment list, and read records in place. A list that is
//! replaced is destroyed only after every pinned reader has moved on, and a
//! segment's mapping and file go with the last list that holds it, so no
//! reader ever touches an unmapped segment.

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_epoch::{self as epoch, Guard};

use crate::epoch::EpochCell;

use crate::commit::{CommitError, FlushTicket, GroupCommit, Idle, Step};
use crate::error::{LogError, Result};
use crate::io::{LogIo, OsIo};
use crate::record::{decode_record, encode_header, Record, RECORD_HEADER_LEN};
use crate::segment::{Prepared, Segment, SegmentMeta, ZeroFill, PREPARED_PREFIX, PREPARED_SUFFIX, SEGMENT_HEADER_LEN};

/// Whether appends wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistMode {
    /// Records are written to the segment files but never flushed; an
    /// append is "durable" at once. For memory-only deployments and tests.
    None,
    /// A flush thread makes appends durable by group commit (fdatasync); an
    /// appender learns its records are durable only after a flush covering
    /// them completed. The default.
    Sync,
}

/// Log configuration.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Segment file size; a record never straddles segments, so this also
    /// bounds the largest record. Default 64 MiB.
    pub segment_bytes: usize,
    /// Persistence. Default [`PersistMode::Sync`].
    pub persist: PersistMode,
    /// How long the flush thread waits for more appends before it flushes
    /// the durable watermark on its own. Under load the watermark rides
    /// along with the next flush for free; only an idle log pays for a
    /// separate one. Default 5 ms.
    pub idle_flush_delay: std::time::Duration,
    /// With persist `Sync`, a thread keeps the next segment file ready:
    /// allocated, zero-filled and flushed, so that rotation does not wait
    /// for it and flushes of its records are data flushes only. Costs one
    /// segment of disk space. Without it (or while the next file is not
    /// ready) rotation creates a file whose space is only allocated.
    /// Default true.
    pub prepare_segments: bool,
    /// With persist `Sync`: a thread waiting for durability runs the flush
    /// round itself when none is in flight, instead of handing the work to
    /// the flush thread and waiting to be woken (which costs two thread
    /// hand-offs per round). The flush thread then only flushes what nobody
    /// waits for (within `idle_flush_delay`) and keeps the watermark
    /// current. Suits a single appender (the Raft driver); with many
    /// appenders the flush thread keeps the disk busier. Default false.
    pub waiters_flush: bool,
    /// Threads that open and check segments at recovery, the opening
    /// thread included: segments are checked independently (CRCs, index
    /// runs, terms) and chained afterwards. Default: the machine's
    /// available parallelism, at most 4. 0 counts as 1.
    pub recovery_threads: usize,
    /// The file-system calls (replaced in fault tests).
    pub io: Arc<dyn LogIo>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            persist: PersistMode::Sync,
            idle_flush_delay: std::time::Duration::from_millis(5),
            prepare_segments: true,
            waiters_flush: false,
            recovery_threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            io: Arc::new(OsIo),
        }
    }
}

impl LogConfig {
    fn validate(&self) -> Result<()> {
        if self.segment_bytes < SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 1 {
            return Err(LogError::Config("segment_bytes cannot hold a record"));
        }
        if self.segment_bytes > (1 << 30) {
            return Err(LogError::Config("segment_bytes is above 1 GiB"));
        }
        Ok(())
    }
}

/// The indexes an append covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// First index written.
    pub first: u64,
    /// Last index written.
    pub last: u64,
}

/// The current segments, oldest first. Replaced whole on every change.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    pub list: Vec<Arc<Segment>>,
}

impl Segments {
    /// The segment holding `index`: the newest one that starts at or
    /// before it (a later segment supersedes an earlier one's tail).
    fn find(&self, index: u64) -> Option<&Segment> {
        self.list
            .iter()
            .rev()
            .find(|s| s.meta().first_index <= index)
            .map(|s| &**s)
    }
}

#[derive(Debug)]
struct WriterState {
    next_seq: u64,
    last_term: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    /// Held for the log's life: one process per log directory.
    _dir_lock: std::fs::File,
    config: LogConfig,
    writer: Mutex<WriterState>,
    segments: EpochCell<Segments>,
    commit: GroupCommit,
    first_index: AtomicU64,
    last_index: AtomicU64,
    /// Flush positions, touched only by the flush thread.
    flush: Mutex<FlushState>,
    /// Completed flush rounds, for statistics.
    flush_rounds: AtomicU64,
    /// Microseconds those rounds took, in total and the longest.
    flush_micros: AtomicU64,
    flush_micros_max: AtomicU64,
    /// The next segment file, made ready ahead of need (persist `Sync`).
    preparer: Preparer,
}

/// Flush statistics of a [`Log`] since it was opened ([`Log::flush_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Flush rounds completed (each one write-back and one `fdatasync`
    /// covering every record appended before it).
    pub rounds: u64,
    /// Microseconds those rounds took, in total.
    pub micros: u64,
    /// Microseconds the longest of them took.
    pub max_micros: u64,
}

/// Keeps one zero-filled segment file ready, so that rotation neither
/// waits for the filling nor writes into merely allocated space.
#[derive(Debug, Default)]
struct Preparer {
    state: Mutex<PreparerState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PreparerState {
    ready: Option<Prepared>,
    stop: bool,
}

/// How long the preparer waits after a failure (a full disk, say) before
/// it tries again; rotation meanwhile creates segments itself.
const PREPARE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Default)]
struct FlushState {
    /// (segment seq, bytes flushed) for segments flushed before.
    flushed: Vec<(u64, usize)>,
    /// A segment whose header watermark changed since its last flush.
    header_dirty: Option<Arc<Segment>>,
    /// The last index covered by a completed flush round.
    flushed_through: u64,
    /// When a round last refreshed the watermark.
    watermark_at: Option<std::time::Instant>,
}

/// What recovery found, to build a [`Log`] from.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub segments: Vec<Arc<Segment>>,
    pub first_index: u64,
    pub last_index: u64,
    pub last_term: u64,
    pub next_seq: u64,
}

/// A durable, segmented record log. Cloning shares it; the flush thread
/// stops (after flushing what was appended) when the last clone drops.
#[derive(Debug, Clone)]
pub struct Log {
    shared: Arc<Shared>,
    handle: Arc<FlusherHandle>,
}

#[derive(Debug)]
struct FlusherHandle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    preparer: Mutex<Option<JoinHandle<()>>>,
}

impl FlusherHandle {
    fn stop(&self) {
        self.shared.commit.close();
        let handle = lock(&self.thread).take();
        match handle {
            Some(h) => {
                let _ = h.join();
            }
            None => self.shared.commit.stopped(),
        }
        lock(&self.shared.preparer.state).stop = true;
        self.shared.preparer.changed.notify_all();
        if let Some(h) = lock(&self.preparer).take() {
            let _ = h.join();
        }
        if let Some(p) = lock(&self.shared.preparer.state).ready.take() {
            p.discard();
        }
    }
}

impl Drop for FlusherHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Log {
    /// Opens (recovering) or creates the log in `dir`.
    ///
    /// Recovery verifies every record. A torn tail after the last durable
    /// record is cut off; damage inside the durable part is an error
    /// naming the file, offset and index, and the log does not open.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log> {
        Log::open_after(dir, config, 0)
    }

    /// Opens the log when a durable snapshot covers every index up to
    /// `snapshot_index`: those entries may be missing (their segments were
    /// compacted) and are dropped if present.
    pub fn open_after(dir: &Path, config: LogConfig, snapshot_index: u64) -> Result<Log> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| LogError::io("create log directory", dir, e))?;
        let dir_lock = lock_dir(dir)?;
        remove_prepared_files(dir)?;
        let recovered = crate::recovery::recover(dir, &config, snapshot_index)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            _dir_lock: dir_lock,
            writer: Mutex::new(WriterState {
                next_seq: recovered.next_seq,
                last_term: recovered.last_term,
            }),
            segments: EpochCell::new(Segments {
                list: recovered.segments,
            }),
            commit: if config.persist == PersistMode::Sync && config.waiters_flush {
                GroupCommit::new_led_by_waiters(recovered.last_index)
            } else {
                GroupCommit::new(recovered.last_index)
            },
            first_index: AtomicU64::new(recovered.first_index),
            last_index: AtomicU64::new(recovered.last_index),
            flush: Mutex::new(FlushState::default()),
            flush_rounds: AtomicU64::new(0),
            flush_micros: AtomicU64::new(0),
            flush_micros_max: AtomicU64::new(0),
            preparer: Preparer::default(),
            config,
        });
        {
            // Recovered records may exist only in the page cache (the
            // process crashed, the kernel did not): flush them once before
            // reporting them durable.
            let guard = epoch::pin();
            let mut flush = lock(&shared.flush);
            for seg in &shared.load(&guard).list {
                if shared.config.persist == PersistMode::Sync {
                    seg.flush(&*shared.config.io, 0, seg.end())
                        .map_err(|e| LogError::io("flush recovered segment", seg.path(), e))?;
                }
                flush.flushed.push((seg.meta().seq, seg.end()));
            }
        }
        let flusher = match shared.config.persist {
            PersistMode::Sync => {
                let s = Arc::clone(&shared);
                let handle = std::thread::Builder::new()
                    .name("loomcache-log-flush".into())
                    .spawn(move || s.flush_loop())
                    .map_err(|e| LogError::io("spawn flush thread", dir, e))?;
                Some(handle)
            }
            PersistMode::None => None,
        };
        let preparer = match shared.config.persist {
            PersistMode::Sync if shared.config.prepare_segments => {
                let s = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name("loomcache-log-prepare".into())
                    .spawn(move || s.prepare_loop())
                    .map_err(|e| LogError::io("spawn segment preparer", dir, e));
                match spawned {
                    Ok(handle) => Some(handle),
                    Err(e) => {
                        // Stop the flush thread before failing the open.
                        drop(FlusherHandle {
                            shared: Arc::clone(&shared),
                            thread: Mutex::new(flusher),
                            preparer: Mutex::new(None),
                        });
                        return Err(e);
                    }
                }
            }
            PersistMode::Sync | PersistMode::None => None,
        };
        let log = Log {
            handle: Arc::new(FlusherHandle {
                shared: Arc::clone(&shared),
                thread: Mutex::new(flusher),
                preparer: Mutex::new(preparer),
            }),
            shared,
        };
        if snapshot_index >= log.first_index() {
            log.compact_through(snapshot_index)?;
        }
        Ok(log)
    }

    /// First index held (after compaction); `last_index() + 1` when empty.
    pub fn first_index(&self) -> u64 {
        self.shared.first_index.load(Ordering::Acquire)
    }

    /// Last index appended (published, not necessarily durable).
    pub fn last_index(&self) -> u64 {
        self.shared.last_index.load(Ordering::Acquire)
    }

    /// Highest index known durable.
    pub fn durable_index(&self) -> u64 {
        self.shared.commit.durable()
    }

    /// Flush rounds completed since the log was opened: appends divided by
    /// this is the average group-commit batch.
    pub fn flush_rounds(&self) -> u64 {
        self.shared.flush_rounds.load(Ordering::Relaxed)
    }

    /// Flush rounds completed since the log was opened, and the time they
    /// took: what every durable append waits for.
    pub fn flush_stats(&self) -> FlushStats {
        let s = &self.shared;
        FlushStats {
            rounds: s.flush_rounds.load(Ordering::Relaxed),
            micros: s.flush_micros.load(Ordering::Relaxed),
            max_micros: s.flush_micros_max.load(Ordering::Relaxed),
        }
    }

    /// True once a flush failed; every later append fails.
    pub fn is_poisoned(&self) -> bool {
        self.shared.commit.is_poisoned()
    }

    /// Appends records whose indexes continue the log. Each payload is
    /// copied once, into the segment file's page cache (the pages the
    /// mapping shows). Returns once the records are
    /// published (readable); [`Log::wait_durable`] waits for the disk.
    pub fn append(&self, records: &[Record<'_>]) -> Result<Appended> {
        let mut writer = lock(&self.shared.writer);
        let last = self.last_index();
        let (Some(first), Some(_)) = (records.first(), records.last()) else {
            return Ok(Appended { first: last + 1, last });
        };
        if first.index != last + 1 {
            return Err(LogError::NotContiguous { last, got: first.index });
        }
        self.append_locked(&mut writer, || records.iter().copied())
    }

    /// Appends payloads at the next indexes, all with `term`, `kind` and
    /// `timestamp_ms`: the write-ahead-log form, where the log assigns
    /// indexes. Safe to call from many threads.
    pub fn append_payloads(
        &self,
        term: u64,
        kind: crate::record::RecordKind,
        timestamp_ms: u64,
        payloads: &[&[u8]],
    ) -> Result<Appended> {
        let mut writer = lock(&self.shared.writer);
        let next = self.last_index() + 1;
        let records = || {
            payloads.iter().enumerate().map(move |(i, payload)| Record {
                kind,
                term,
                index: next + i as u64,
                timestamp_ms,
                payload,
            })
        };
        self.append_locked(&mut writer, records)
    }

    /// Appends in two phases so that a failure appends nothing: first
    /// every record is checked and every segment the batch needs is
    /// created (a full disk fails here), then the records are written.
    fn append_locked<'a, I: Iterator<Item = Record<'a>>>(
        &self,
        writer: &mut MutexGuard<'_, WriterState>,
        records: impl Fn() -> I,
    ) -> Result<Appended> {
        if self.shared.commit.is_poisoned() {
            return Err(LogError::Poisoned);
        }
        let first = self.last_index() + 1;
        let capacity = self.shared.config.segment_bytes - SEGMENT_HEADER_LEN;
        let guard = epoch::pin();
        let tail = self.shared.load(&guard).list.last().cloned();

        // Phase 1: check, and create the segments the batch spills into.
        let mut term = writer.last_term;
        let mut free = tail.as_ref().map_or(0, |t| t.free());
        let mut new_segments: Vec<Arc<Segment>> = Vec::new();
        let mut count = 0u64;
        for record in records() {
            if record.index != first + count {
                return Err(LogError::NotContiguous {
                    last: first + count - 1,
                    got: record.index,
                });
            }
            if record.term < term {
                return Err(LogError::TermRegressed {
                    index: record.index,
                    term: record.term,
                    previous: term,
                });
            }
            let len = record.encoded_len();
            if len > capacity {
                return Err(LogError::RecordTooLarge {
                    len: len as u64,
                    max: capacity as u64,
                });
            }
            if len > free {
                // Until published, an error drops these and their files.
                let seg = self.shared.create_segment(writer, record.index, None)?;
                seg.remove_when_dropped();
                new_segments.push(seg);
                free = capacity;
            }
            free -= len;
            term = record.term;
            count += 1;
        }
        if count == 0 {
            return Ok(Appended { first, last: first - 1 });
        }
        if !new_segments.is_empty() {
            for seg in &new_segments {
                seg.keep();
            }
            let mut list = self.shared.load(&guard).list.clone();
            list.extend(new_segments.iter().cloned());
            self.shared.replace(list, &guard);
        }

        // Phase 2: write each segment's share with as few pwritev calls as
        // the iovec limit allows, then publish everything at once. A failed
        // write publishes nothing and poisons the log: the bytes on disk
        // are no longer known, and no later write or truncation happens
        // (so the offsets noted for unpublished records are never read).
        let targets: Vec<Arc<Segment>> = tail.into_iter().chain(new_segments).collect();
        let ends = match self.write_records(&targets, records()) {
            Ok(ends) => ends,
            Err(e) => {
                self.shared.commit.poison();
                return Err(e);
            }
        };
        for (t, end) in targets.iter().zip(ends) {
            if let Some(end) = end {
                t.publish(end);
            }
        }
        let last = first + count - 1;
        self.shared.last_index.store(last, Ordering::Release);
        writer.last_term = term;
        match self.shared.config.persist {
            PersistMode::Sync => self.shared.commit.appended(last),
            PersistMode::None => self.shared.commit.assume_durable(last),
        }
        Ok(Appended { first, last })
    }

    /// Writes `records` into `targets` (the tail, then segments created
    /// for the batch, in order), moving on when a record does not fit.
    /// Answers the new end of each target that received records.
    fn write_records<'a>(
        &self,
        targets: &[Arc<Segment>],
        records: impl Iterator<Item = Record<'a>>,
    ) -> Result<Vec<Option<usize>>> {
        /// Records per pwritev call: a header and a payload slice each.
        const BATCH: usize = 64;
        let io = &*self.shared.config.io;
        let mut ends: Vec<Option<usize>> = vec![None; targets.len()];
        let mut t = 0;
        let mut at = targets[0].end();
        let mut headers = [[0u8; RECORD_HEADER_LEN]; BATCH];
        let mut payloads: [&[u8]; BATCH] = [&[]; BATCH];
        let mut pending = 0;
        let mut pending_len = 0;
        let mut records = records.peekable();
        loop {
            let next = records.peek().map(Record::encoded_len);
            let moves_on = next.is_some_and(|len| targets[t].capacity() - (at + pending_len) < len);
            if pending > 0 && (pending == BATCH || next.is_none() || moves_on) {
                let mut bufs: [IoSlice<'_>; 2 * BATCH] = [IoSlice::new(&[]); 2 * BATCH];
                for i in 0..pending {
                    bufs[2 * i] = IoSlice::new(&headers[i]);
                    bufs[2 * i + 1] = IoSlice::new(payloads[i]);
                }
                targets[t]
                    .write(io, at, pending_len, &mut bufs[..2 * pending])
                    .map_err(|e| LogError::io("write records", targets[t].path(), e))?;
                at += pending_len;
                ends[t] = Some(at);
                pending = 0;
                pending_len = 0;
            }
            let Some(record) = records.next() else {
                break;
            };
            if moves_on {
                t += 1;
                at = targets[t].end();
            }
            let len = record.encoded_len();
            targets[t].push_offset(record.index, at + pending_len);
            headers[pending] = encode_header(&record).expect("phase 1 checked the record's size");
            payloads[pending] = record.payload;
            pending += 1;
            pending_len += len;
        }
        Ok(ends)
    }

    /// Blocks until every index up to `index` is durable.
    pub fn wait_durable(&self, index: u64) -> Result<()> {
        let failed = |e| match e {
            CommitError::Poisoned => LogError::Poisoned,
            CommitError::Closed => LogError::Closed,
        };
        if !self.shared.commit.led_by_waiters() {
            return self.shared.commit.wait_durable(index).map_err(failed);
        }
        loop {
            match self.shared.commit.wait_or_lead(index).map_err(failed)? {
                Step::Durable => return Ok(()),
                // A failed round poisons; the next ask reports it.
                Step::Lead(ticket) => {
                    self.shared.run_round(ticket);
                }
            }
        }
    }

    /// Reads the record at `index`, in place, valid while `guard` is held.
    /// Its checksum is verified.
    pub fn entry<'g>(&self, index: u64, guard: &'g Guard) -> Result<Record<'g>> {
        let (first, last) = (self.first_index(), self.last_index());
        if index < first || index > last {
            return Err(LogError::OutOfRange { index, first, last });
        }
        let segments = self.shared.load(guard);
        let seg = segments
            .find(index)
            .ok_or(LogError::OutOfRange { index, first, last })?;
        let offset = seg
            .offset_of(index)
            .ok_or(LogError::OutOfRange { index, first, last })?;
        let bytes = seg.bytes_from(offset, seg.end());
        let record = decode_record(bytes).map_err(|source| LogError::Record {
            path: seg.path().to_path_buf(),
            offset: offset as u64,
            source,
        })?;
        if record.index != index {
            return Err(LogError::Corrupt {
                path: seg.path().to_path_buf(),
                offset: offset as u64,
                index,
                reason: format!("record holds index {}", record.index),
            });
        }
        Ok(record)
    }

    /// Reads records `from..=to`, stopping early once `max_bytes` of
    /// payload are collected (at least one record is always returned).
    pub fn entries<'g>(&self, from: u64, to: u64, max_bytes: usize, guard: &'g Guard) -> Result<Vec<Record<'g>>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for index in from..=to {
            let record = self.entry(index, guard)?;
            bytes += record.payload.len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(record);
        }
        Ok(out)
    }

    /// The term of the record at `index`.
    pub fn term(&self, index: u64) -> Result<u64> {
        let guard = epoch::pin();
        Ok(self.entry(index, &guard)?.term)
    }

    /// Removes every record after `index` (Raft conflict resolution). The
    /// records are not overwritten in place: a new segment starting at
    /// `index + 1` supersedes them, durably, before this returns, so readers
    /// holding the old records keep valid bytes and a crash cannot revive
    /// them.
    pub fn truncate_after(&self, index: u64) -> Result<()> {
        let mut writer = lock(&self.shared.writer);
        if self.shared.commit.is_poisoned() {
            return Err(LogError::Poisoned);
        }
        let (first, last) = (self.first_index(), self.last_index());
        if index >= last {
            return Ok(());
        }
        if index + 1 < first {
            return Err(LogError::OutOfRange { index, first, last });
        }
        let guard = epoch::pin();
        let last_term = if index >= first {
            self.entry(index, &guard)?.term
        } else {
            0
        };
        let watermark = self.shared.commit.durable().min(index);
        // Create first: if that fails, nothing has changed.
        let segment = self.shared.create_segment(&mut writer, index + 1, Some(watermark))?;
        writer.last_term = last_term;
        self.shared.last_index.store(index, Ordering::Release);
        self.shared.commit.truncated(index);
        self.shared.publish_superseding(segment, &guard);
        Ok(())
    }

    /// Drops records up to and including `index`, once a snapshot covering
    /// them is durable. Whole segments are deleted after every reader that
    /// could see them has moved on; a partly covered segment stays.
    pub fn compact_through(&self, index: u64) -> Result<()> {
        let mut writer = lock(&self.shared.writer);
        if self.shared.commit.is_poisoned() {
            return Err(LogError::Poisoned);
        }
        let (first, last) = (self.first_index(), self.last_index());
        if index < first {
            return Ok(());
        }
        let guard = epoch::pin();
        if index >= last {
            // Everything goes: continue from a fresh segment. Create it
            // first: if that fails, nothing has changed.
            let watermark = self.shared.commit.durable().max(index);
            let segment = self.shared.create_segment(&mut writer, index + 1, Some(watermark))?;
            self.shared.first_index.store(index + 1, Ordering::Release);
            self.shared.last_index.store(index, Ordering::Release);
            self.shared.commit.truncated(index);
            self.shared.commit.assume_durable(index);
            writer.last_term = 0;
            self.shared.replace(vec![segment], &guard);
            return Ok(());
        }
        self.shared.first_index.store(index + 1, Ordering::Release);
        let segments = self.shared.load(&guard);
        let list = &segments.list;
        // A segment can go when the next one starts at or before index + 1.
        let keep: Vec<_> = list
            .iter()
            .enumerate()
            .filter(|(i, _)| list.get(i + 1).is_none_or(|next| next.meta().first_index > index + 1))
            .map(|(_, s)| Arc::clone(s))
            .collect();
        if keep.len() != list.len() {
            self.shared.replace(keep, &guard);
        }
        Ok(())
    }

    /// Stops the flush thread after it has flushed everything appended.
    pub fn close(&self) -> Result<()> {
        self.handle.stop();
        if self.shared.commit.is_poisoned() {
            return Err(LogError::Poisoned);
        }
        Ok(())
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

/// Takes an exclusive advisory lock on `dir/LOCK`, so a second process
/// cannot open the same log.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LogError::io("open lock file", &path, e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|e| LogError::io("lock log directory (is another process using it?)", &path, e.into()))?;
    Ok(file)
}

/// Deletes segment files a preparer left unfinished or unused: they hold
/// no records, and a new preparer builds its own.
fn remove_prepared_files(dir: &Path) -> Result<()> {
    let listing = std::fs::read_dir(dir).map_err(|e| LogError::io("list log directory", dir, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| LogError::io("list log directory", dir, e))?;
        let name = entry.file_name();
        let prepared = name
            .to_str()
            .is_some_and(|n| n.starts_with(PREPARED_PREFIX) && n.ends_with(PREPARED_SUFFIX));
        if prepared {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| LogError::io("remove unused segment file", &path, e))?;
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn load<'g>(&self, guard: &'g Guard) -> &'g Segments {
        self.segments.load(guard)
    }

    /// Publishes a new list; the old one is freed after current readers.
    fn replace(&self, list: Vec<Arc<Segment>>, guard: &Guard) {
        let old_list = self.load(guard);
        let removed: Vec<_> = old_list
            .list
            .iter()
            .filter(|s| !list.iter().any(|k| Arc::ptr_eq(k, s)))
            .cloned()
            .collect();
        for seg in &removed {
            seg.remove_when_dropped();
        }
        self.segments.replace(Segments { list }, guard);
    }

    /// Creates (durably) a segment starting at `first_index`, without
    /// publishing it. `watermark` defaults to the current durable index.
    fn create_segment(
        &self,
        writer: &mut MutexGuard<'_, WriterState>,
        first_index: u64,
        watermark: Option<u64>,
    ) -> Result<Arc<Segment>> {
        let seq = writer.next_seq;
        // Without persistence nothing is ever known durable on disk.
        let watermark = match self.config.persist {
            PersistMode::Sync => watermark.unwrap_or_else(|| self.commit.durable()),
            PersistMode::None => 0,
        };
        let meta = SegmentMeta {
            seq,
            first_index,
            watermark,
        };
        let segment = Arc::new(Segment::create(
            &self.dir,
            &*self.config.io,
            meta,
            self.config.segment_bytes,
            self.take_prepared(),
        )?);
        writer.next_seq += 1;
        lock(&self.flush).flushed.push((seq, SEGMENT_HEADER_LEN));
        Ok(segment)
    }

    /// Publishes `segment` as the tail, superseding every segment that
    /// starts at or after its first index (truncation).
    fn publish_superseding(&self, segment: Arc<Segment>, guard: &Guard) {
        let first_index = segment.meta().first_index;
        let current = self.load(guard);
        let mut list: Vec<_> = current
            .list
            .iter()
            .filter(|s| s.meta().first_index < first_index)
            .cloned()
            .collect();
        list.push(segment);
        self.replace(list, guard);
    }

    /// Runs one flush round for `ticket` and completes it; false if the
    /// flush failed (the log is then poisoned).
    fn run_round(&self, ticket: FlushTicket) -> bool {
        let ok = self.flush_once();
        self.commit.completed(ticket, ok);
        ok
    }

    /// The flush of a round (its ticket is completed by the caller). Under
    /// load the watermark is refreshed at most once per idle delay:
    /// flushing the header costs a wider flush, and a lagging watermark
    /// only narrows what recovery can tell apart.
    fn flush_once(&self) -> bool {
        let refresh = {
            let mut flush = lock(&self.flush);
            let due = flush
                .watermark_at
                .is_none_or(|at| at.elapsed() >= self.config.idle_flush_delay);
            if due {
                flush.watermark_at = Some(std::time::Instant::now());
            }
            due
        };
        let started = std::time::Instant::now();
        let ok = self.flush_round(refresh);
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.flush_micros.fetch_add(took, Ordering::Relaxed);
        self.flush_micros_max.fetch_max(took, Ordering::Relaxed);
        self.flush_rounds.fetch_add(1, Ordering::Relaxed);
        ok
    }

    /// The flush thread: one flush per round covers everything appended
    /// since the previous round. When waiters run the rounds, it runs only
    /// those nobody ran within the idle delay.
    fn flush_loop(&self) {
        let led = self.commit.led_by_waiters();
        let mut next = if led {
            Idle::TimedOut
        } else {
            self.commit.next_work().map_or(Idle::Done, Idle::Work)
        };
        // The durable index as of the last idle refresh of the watermark.
        let mut named = None;
        // Rounds completed as of the previous timeout: when waiters run
        // the rounds, the log is idle only if none ran for a whole delay.
        let mut rounds_seen = None;
        loop {
            match next {
                Idle::Work(ticket) => {
                    if !self.run_round(ticket) {
                        break;
                    }
                }
                Idle::TimedOut => {
                    // Idle: make the watermark current and durable on its
                    // own, so a quiet log is fully covered by it. (While
                    // rounds run, they refresh it themselves.)
                    let durable = self.commit.durable();
                    let rounds = self.flush_rounds.load(Ordering::Relaxed);
                    let quiet = !led || rounds_seen == Some(rounds);
                    rounds_seen = Some(rounds);
                    if quiet && named != Some(durable) {
                        if !self.refresh_watermark() || !self.flush_header() {
                            self.commit.poison();
                            break;
                        }
                        named = Some(durable);
                    }
                    if !led {
                        next = self.commit.next_work().map_or(Idle::Done, Idle::Work);
                        continue;
                    }
                }
                Idle::Done => break,
            }
            next = self.commit.next_work_within(self.config.idle_flush_delay);
        }
        // A clean stop leaves the watermark covering everything flushed.
        if !self.commit.is_poisoned() && (!self.refresh_watermark() || !self.flush_header()) {
            self.commit.poison();
        }
        self.commit.stopped();
    }

    /// Flushes every segment's new bytes, one call per segment; a segment
    /// whose header watermark changed is flushed from its first byte so
    /// the header rides along in the same call.
    fn flush_round(&self, refresh_watermark: bool) -> bool {
        // A round that refreshes the watermark reads the segment list and
        // the last index together under the writer lock, so the watermark
        // never names records that a concurrent truncation or rotation
        // moved elsewhere. Other rounds do not wait for appenders: the last
        // index is read first, and every record up to it lies in a segment
        // published before it (segments are listed before records are
        // written into them); a truncation since then voids the round's
        // completion anyway.
        let (segments, durable_target) = {
            let _writer = refresh_watermark.then(|| lock(&self.writer));
            let last = self.last_index.load(Ordering::Acquire);
            let guard = epoch::pin();
            let list = self.load(&guard).list.clone();
            (Segments { list }, last)
        };
        let mut flush = lock(&self.flush);
        let io = &*self.config.io;
        let header_dirty = flush.header_dirty.take();
        let mut positions = Vec::with_capacity(segments.list.len());
        for seg in &segments.list {
            let seq = seg.meta().seq;
            let mut from = flush
                .flushed
                .iter()
                .find(|(s, _)| *s == seq)
                .map_or(SEGMENT_HEADER_LEN, |p| p.1);
            let to = seg.end();
            if header_dirty.as_ref().is_some_and(|h| Arc::ptr_eq(h, seg)) {
                from = 0;
            }
            if to > from && seg.flush(io, from, to).is_err() {
                return false;
            }
            positions.push((seq, to));
        }
        flush.flushed = positions;
        flush.flushed_through = durable_target;
        if refresh_watermark {
            if let Some(tail) = segments.list.last() {
                // Everything up to the index read before flushing is
                // durable now; record that in the tail's header.
                if tail.set_watermark(io, durable_target).is_err() {
                    return false;
                }
                flush.header_dirty = Some(Arc::clone(tail));
            }
        }
        true
    }

    /// Writes the highest flushed index into the tail's header.
    fn refresh_watermark(&self) -> bool {
        let _writer = lock(&self.writer);
        let guard = epoch::pin();
        let segments = self.load(&guard);
        let mut flush = lock(&self.flush);
        if let Some(tail) = segments.list.last() {
            let watermark = flush.flushed_through.min(self.commit.durable());
            if tail.set_watermark(&*self.config.io, watermark).is_err() {
                return false;
            }
            flush.header_dirty = Some(Arc::clone(tail));
        }
        true
    }

    /// The ready segment file, if there is one; the preparer starts on the
    /// next.
    fn take_prepared(&self) -> Option<Prepared> {
        let taken = lock(&self.preparer.state).ready.take();
        if taken.is_some() {
            self.preparer.changed.notify_all();
        }
        taken
    }

    /// The preparer thread: keeps one zero-filled segment file ready until
    /// the log stops. Each file gets its own name, so a file being renamed
    /// into place is never the one being built.
    fn prepare_loop(&self) {
        let mut built = 0u64;
        loop {
            {
                let mut state = lock(&self.preparer.state);
                while state.ready.is_some() && !state.stop {
                    state = self.preparer.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.stop {
                    return;
                }
            }
            built += 1;
            let name = format!("{PREPARED_PREFIX}{built}{PREPARED_SUFFIX}");
            match Prepared::create(
                &self.dir.join(name),
                &*self.config.io,
                self.config.segment_bytes,
                ZeroFill::Chunked,
                &|| lock(&self.preparer.state).stop,
            ) {
                Ok(prepared) => {
                    let mut state = lock(&self.preparer.state);
                    if state.stop {
                        prepared.discard();
                        return;
                    }
                    state.ready = Some(prepared);
                }
                Err(_) => {
                    let state = lock(&self.preparer.state);
                    if state.stop {
                        return;
                    }
                    let _ = self.preparer.changed.wait_timeout(state, PREPARE_RETRY);
                }
            }
        }
    }

    fn flush_header(&self) -> bool {
        let mut flush = lock(&self.flush);
        match flush.header_dirty.take() {
            Some(seg) => seg.flush(&*self.config.io, 0, SEGMENT_HEADER_LEN).is_ok(),
            None => true,
        }
    }
}
