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

use std::path::Path;
use std::sync::Arc;

use crate::error::{LogError, Result};
use crate::log::{LogConfig, PersistMode, Recovered};
use crate::record::{decode_record, RecordError};
use crate::segment::{Prepared, Segment, SegmentMeta, PREPARED_PREFIX, PREPARED_SUFFIX, SEGMENT_HEADER_LEN};

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

/// Scans one segment's records, starting at index `next` with `last_term`.
fn scan(seg: Segment, mut next: u64, mut last_term: u64) -> (Scanned, u64, u64) {
    let mut offsets = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    let cap = seg.capacity();
    let stop = loop {
        match decode_record(seg.bytes_from(pos, cap)) {
            Ok(rec) if rec.index == next && rec.term >= last_term => {
                offsets.push(pos as u32);
                pos += rec.encoded_len();
                next += 1;
                last_term = rec.term;
            }
            Ok(rec) => {
                break Some(Stop {
                    offset: pos,
                    index: next,
                    reason: format!(
                        "record holds index {} term {}, expected index {next}",
                        rec.index, rec.term
                    ),
                })
            }
            Err(RecordError::Empty) | Err(RecordError::Truncated { .. })
                if seg.bytes_from(pos, cap).iter().all(|&b| b == 0) =>
            {
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
    (
        Scanned {
            seg,
            offsets,
            end: pos,
            stop,
        },
        next,
        last_term,
    )
}

/// Recovers the log in `dir`; entries up to `floor` may be absent.
pub(crate) fn recover(dir: &Path, config: &LogConfig, floor: u64) -> Result<Recovered> {
    let mut segments = Vec::new();
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
        let seg = match Segment::open(&entry.path(), &*config.io) {
            Ok(seg) => seg,
            // A segment that a previous instance in this process removed
            // (compacted or superseded) may vanish between listing and
            // opening; if it was needed, the gap is found below.
            Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let meta = seg.meta();
        if (meta.seq, meta.first_index) != (seq, first) {
            return Err(corrupt(
                &seg,
                0,
                first,
                format!("header says seq {} first {}", meta.seq, meta.first_index),
            ));
        }
        segments.push(seg);
    }
    segments.sort_by_key(|s| s.meta().seq);
    let next_seq = segments.last().map_or(1, |s| s.meta().seq + 1);
    let watermark = segments.last().map_or(0, |s| s.meta().watermark);

    let mut chain: Vec<Scanned> = Vec::new();
    let mut discard: Vec<Segment> = Vec::new();
    let mut next = 0u64;
    let mut last_term = 0u64;
    let mut pending = segments.into_iter();
    while let Some(seg) = pending.next() {
        let first = seg.meta().first_index;
        if chain.is_empty() {
            next = first;
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
            next = first;
        } else if first <= floor + 1 {
            // Everything before `first` is covered by the snapshot: the
            // segments that held it were compacted, possibly not all
            // deletions reached the disk.
            discard.extend(chain.drain(..).map(|c| c.seg));
            next = first;
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
            discard.push(seg);
            discard.extend(pending.by_ref());
            break;
        }
        let (scanned, n, t) = scan(seg, next, last_term);
        next = n;
        last_term = t;
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
            Some(Prepared::create(&path, &*config.io, config.segment_bytes)?)
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
