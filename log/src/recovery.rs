//! Rebuilding the log from its segment files.
//!
//! Segments are replayed in creation order. A segment whose first index is
//! at or below the end of the log so far supersedes everything from that
//! index on (that is how truncation is made durable). Every record is
//! checked: its CRC, that its index is the next one, that its term does not
//! go backwards.
//!
//! Where the records stop short of the written space, the log has either a
//! torn tail (writes that were never reported durable, cut by a crash) or
//! damage. The newest segment's header carries a watermark: every index up
//! to it was durable when it was written. A stop at or below the watermark
//! is damage to acknowledged data, and recovery fails with the file, offset
//! and index; a stop above it is a torn tail, which is zeroed and dropped.
//! Entries at or below `floor` (covered by a snapshot) may be missing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::{LogError, Result};
use crate::log::{LogConfig, PersistMode, Recovered};
use crate::record::{decode_record, is_zeroed, RecordError};
use crate::segment::{Prepared, Segment, SegmentMeta, ZeroFill, PREPARED_PREFIX, PREPARED_SUFFIX, SEGMENT_HEADER_LEN};

/// Where a segment's valid records stop before its written space ends.
#[derive(Debug)]
struct Stop {
    offset: usize,
    index: u64,
    reason: String,
}

#[derive(Debug)]
struct Scanned {
    seg: Segment,
    offsets: Vec<u32>,
    end: usize,
    stop: Option<Stop>,
    /// Terms of the first and last records (0 when there are none): the
    /// chain checks that terms do not go backwards across segments.
    first_term: u64,
    last_term: u64,
}

impl Scanned {
    /// The scan as it would have stopped at its first record, whose term
    /// `first_term` is below `previous`, the term before this segment.
    fn stopped_at_first(self, previous: u64) -> Scanned {
        let index = self.seg.meta().first_index;
        Scanned {
            offsets: Vec::new(),
            end: SEGMENT_HEADER_LEN,
            stop: Some(Stop {
                offset: SEGMENT_HEADER_LEN,
                index,
                reason: format!(
                    "record at index {index} has term {}, below the term {previous} before it",
                    self.first_term
                ),
            }),
            first_term: 0,
            last_term: 0,
            seg: self.seg,
        }
    }
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".seg")?;
    let (seq, first) = stem.split_once('-')?;
    Some((seq.parse().ok()?, first.parse().ok()?))
}

fn corrupt(seg: &Segment, offset: usize, index: u64, reason: String) -> LogError {
    LogError::Corrupt {
        path: seg.path().to_path_buf(),
        offset: offset as u64,
        index,
        reason,
    }
}

/// Scans one segment's records from its first index. Terms are checked
/// within the segment; across segments, by the chain.
fn scan(seg: Segment) -> Scanned {
    let mut offsets = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    let cap = seg.capacity();
    let mut next = seg.meta().first_index;
    let (mut first_term, mut last_term) = (0, 0);
    let stop = loop {
        match decode_record(seg.bytes_from(pos, cap)) {
            Ok(rec) if rec.index == next && rec.term >= last_term => {
                if offsets.is_empty() {
                    first_term = rec.term;
                }
                offsets.push(pos as u32);
                pos += rec.encoded_len();
                next += 1;
                last_term = rec.term;
            }
            Ok(rec) => {
                let reason = if rec.index == next {
                    format!(
                        "record at index {next} has term {}, below the term {last_term} before it",
                        rec.term
                    )
                } else {
                    format!(
                        "record holds index {} term {}, expected index {next}",
                        rec.index, rec.term
                    )
                };
                break Some(Stop {
                    offset: pos,
                    index: next,
                    reason,
                });
            }
            Err(RecordError::Empty) | Err(RecordError::Truncated { .. }) if is_zeroed(seg.bytes_from(pos, cap)) => {
                break None
            }
            Err(e) => {
                break Some(Stop {
                    offset: pos,
                    index: next,
                    reason: e.to_string(),
                })
            }
        }
    };
    Scanned {
        seg,
        offsets,
        end: pos,
        stop,
        first_term,
        last_term,
    }
}

/// A segment file found in the log directory.
struct Listed {
    path: PathBuf,
    seq: u64,
    first: u64,
}

/// Opens and scans one listed segment; `None` if it vanished meanwhile.
fn open_and_scan(listed: &Listed, config: &LogConfig) -> Result<Option<Scanned>> {
    let seg = match Segment::open(&listed.path, &*config.io) {
        Ok(seg) => seg,
        // A segment that a previous instance in this process removed
        // (compacted or superseded) may vanish between listing and
        // opening; if it was needed, the gap is found by the chain.
        Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = seg.meta();
    if (meta.seq, meta.first_index) != (listed.seq, listed.first) {
        return Err(corrupt(
            &seg,
            0,
            listed.first,
            format!("header says seq {} first {}", meta.seq, meta.first_index),
        ));
    }
    Ok(Some(scan(seg)))
}

/// Opens and scans every listed segment, on up to `config.recovery_threads`
/// threads (the caller's among them): segments are independent until they
/// are chained. Answers in the order listed; the first error in that order
/// wins.
fn open_and_scan_all(listed: &[Listed], config: &LogConfig) -> Result<Vec<Scanned>> {
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(l) = listed.get(i) else { break done };
            done.push((i, open_and_scan(l, config)));
        }
    };
    let helpers = config.recovery_threads.min(listed.len()).saturating_sub(1);
    let mut results: Vec<(usize, Result<Option<Scanned>>)> = std::thread::scope(|scope| {
        let spawned: Vec<_> = (0..helpers)
            .map_while(|_| {
                std::thread::Builder::new()
                    .name("loomcache-log-recover".into())
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mut all = work();
        for handle in spawned {
            // A scan does not panic on any bytes; if one did, the
            // panic is the caller's.
            all.extend(handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    results.sort_unstable_by_key(|(i, _)| *i);
    let mut out = Vec::with_capacity(results.len());
    for (_, r) in results {
        if let Some(s) = r? {
            out.push(s);
        }
    }
    Ok(out)
}

/// Recovers the log in `dir`; entries up to `floor` may be absent.
pub(crate) fn recover(dir: &Path, config: &LogConfig, floor: u64) -> Result<Recovered> {
    let mut listed = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(|e| LogError::io("list log directory", dir, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| LogError::io("list log directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.ends_with(".seg")) else {
            continue;
        };
        let Some((seq, first)) = parse_name(name) else {
            return Err(LogError::Corrupt {
                path: entry.path(),
                offset: 0,
                index: 0,
                reason: "a segment file whose name is not <seq>-<first_index>.seg".into(),
            });
        };
        listed.push(Listed {
            path: entry.path(),
            seq,
            first,
        });
    }
    listed.sort_by_key(|l| l.seq);
    let segments = open_and_scan_all(&listed, config)?;
    let next_seq = segments.last().map_or(1, |s| s.seg.meta().seq + 1);
    let watermark = segments.last().map_or(0, |s| s.seg.meta().watermark);

    let mut chain: Vec<Scanned> = Vec::new();
    let mut discard: Vec<Segment> = Vec::new();
    let mut next = 0u64;
    let mut last_term = 0u64;
    let mut pending = segments.into_iter();
    while let Some(scanned) = pending.next() {
        let first = scanned.seg.meta().first_index;
        // Every branch that keeps `scanned` chains it from `first` on.
        if chain.is_empty() {
            last_term = 0;
        } else if first <= next {
            // Supersedes the chain from `first` on.
            while chain.last().is_some_and(|c| c.seg.meta().first_index >= first) {
                discard.extend(chain.pop().map(|c| c.seg));
            }
            match chain.last_mut() {
                Some(c) => {
                    let keep = (first - c.seg.meta().first_index) as usize;
                    c.offsets.truncate(keep);
                    c.stop = None;
                    last_term = match c.offsets.last() {
                        Some(&o) => decode_record(c.seg.bytes_from(o as usize, c.seg.capacity())).map_or(0, |r| r.term),
                        None => 0,
                    };
                }
                None => last_term = 0,
            }
        } else if first <= floor + 1 {
            // Everything before `first` is covered by the snapshot: the
            // segments that held it were compacted, possibly not all
            // deletions reached the disk.
            discard.extend(chain.drain(..).map(|c| c.seg));
            last_term = 0;
        } else {
            // A gap: entries next..first are missing.
            let tail = chain.last().expect("chain is not empty here");
            let (offset, reason) = match &tail.stop {
                Some(stop) => (stop.offset, stop.reason.clone()),
                None => (tail.end, format!("next segment starts at {first}")),
            };
            if next <= watermark {
                return Err(corrupt(
                    &tail.seg,
                    offset,
                    next,
                    format!("durable entries missing: {reason}"),
                ));
            }
            // Beyond the durable point: a torn tail that reaches into later
            // segments; they hold nothing that was acknowledged.
            discard.push(scanned.seg);
            discard.extend(pending.by_ref().map(|s| s.seg));
            break;
        }
        let scanned = if !scanned.offsets.is_empty() && scanned.first_term < last_term {
            scanned.stopped_at_first(last_term)
        } else {
            scanned
        };
        next = first + scanned.offsets.len() as u64;
        if !scanned.offsets.is_empty() {
            last_term = scanned.last_term;
        }
        chain.push(scanned);
    }

    if let Some(tail) = chain.last_mut() {
        if let Some(stop) = tail.stop.take() {
            if stop.index <= watermark && stop.index > floor {
                return Err(corrupt(&tail.seg, stop.offset, stop.index, stop.reason));
            }
            tail.end = stop.offset;
        }
    }
    let last_index = next.saturating_sub(1);
    if !chain.is_empty() && last_index < watermark && watermark > floor {
        let tail = chain.last().expect("chain is not empty");
        return Err(corrupt(
            &tail.seg,
            tail.end,
            last_index + 1,
            format!("durable entries up to {watermark} are missing"),
        ));
    }

    for seg in &discard {
        seg.remove_when_dropped();
    }
    drop(discard);

    let mut out = Vec::with_capacity(chain.len().max(1));
    let n = chain.len();
    for (i, scanned) in chain.into_iter().enumerate() {
        if i + 1 == n {
            // Clear the torn tail (and anything stale after it) so it can
            // never be read as records after new appends.
            scanned.seg.zero_from(scanned.end, &*config.io)?;
        }
        scanned.seg.adopt(scanned.offsets, scanned.end);
        out.push(Arc::new(scanned.seg));
    }
    config
        .io
        .sync_dir(dir)
        .map_err(|e| LogError::io("sync log directory", dir, e))?;

    let mut next_seq = next_seq;
    if out.is_empty() {
        let first_index = floor + 1;
        let meta = SegmentMeta {
            seq: next_seq,
            first_index,
            watermark: floor,
        };
        next_seq += 1;
        // A new log's first segment is filled like every later one, so its
        // flushes are data flushes too.
        let prepared = if config.persist == PersistMode::Sync && config.prepare_segments {
            let path = dir.join(format!("{PREPARED_PREFIX}0{PREPARED_SUFFIX}"));
            Some(Prepared::create(
                &path,
                &*config.io,
                config.segment_bytes,
                ZeroFill::AtOnce,
                &|| false,
            )?)
        } else {
            None
        };
        out.push(Arc::new(Segment::create(
            dir,
            &*config.io,
            meta,
            config.segment_bytes,
            prepared,
        )?));
        return Ok(Recovered {
            segments: out,
            first_index,
            last_index: floor,
            last_term: 0,
            next_seq,
        });
    }
    let first_index = out[0].meta().first_index;
    if first_index > floor + 1 {
        return Err(corrupt(
            &out[0],
            SEGMENT_HEADER_LEN,
            floor + 1,
            format!(
                "the log starts at {first_index}, but nothing covers entries from {}",
                floor + 1
            ),
        ));
    }
    Ok(Recovered {
        segments: out,
        first_index,
        last_index,
        last_term,
        next_seq,
    })
}
