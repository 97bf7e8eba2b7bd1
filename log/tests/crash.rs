//! Crash consistency of the log's disk image.
//!
//! A workload is appended in batches, each waited on until durable. A crash
//! at byte X of the last segment leaves the bytes before X and whatever the
//! tail became: lost (file cut at X), zeros, or garbage. Recovery must give
//! back exactly the records wholly before X, which always includes every
//! batch reported durable before the writer reached X. Separately, damage
//! inside the durable prefix must always be detected, never truncated away.

use std::path::{Path, PathBuf};

use loomcache_log::{
    decode_record, encode_record, pin, Log, LogConfig, LogError, PersistMode, Record, RecordKind, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};

const SEGMENT_BYTES: usize = 2048;

struct Workload {
    dir: tempfile::TempDir,
    /// Segment files in creation order, the last one being cut.
    segments: Vec<PathBuf>,
    /// End offset (in the last segment) and index of every record in it.
    record_ends: Vec<(usize, u64)>,
    /// (end offset in the last segment, header bytes, durable index) after each batch.
    batches: Vec<(usize, [u8; SEGMENT_HEADER_LEN], u64)>,
    /// The last segment's header as created, before any flush in it.
    creation_header: [u8; SEGMENT_HEADER_LEN],
    payloads: Vec<Vec<u8>>,
}

fn payload_for(index: u64) -> Vec<u8> {
    let len = (index * 37 % 90) as usize;
    (0..len).map(|i| (index as usize * 31 + i) as u8).collect()
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

fn header_of(path: &Path) -> [u8; SEGMENT_HEADER_LEN] {
    std::fs::read(path).unwrap()[..SEGMENT_HEADER_LEN].try_into().unwrap()
}

/// Appends batches until a third segment is well under way.
fn run_workload() -> Workload {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: SEGMENT_BYTES,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    let mut payloads = vec![Vec::new()];
    let mut batches = Vec::new();
    let mut index = 0u64;
    let mut batch_len = 1;
    while segment_files(dir.path()).len() < 3 || log_tail_end(&log) < SEGMENT_BYTES / 2 {
        let batch: Vec<Vec<u8>> = (0..batch_len).map(|i| payload_for(index + 1 + i)).collect();
        let refs: Vec<&[u8]> = batch.iter().map(|p| &p[..]).collect();
        let a = log.append_payloads(1, RecordKind::Normal, 7, &refs).unwrap();
        index = a.last;
        payloads.extend(batch);
        log.wait_durable(index).unwrap();
        let last = segment_files(dir.path()).pop().unwrap();
        batches.push((log_tail_end(&log), header_of(&last), log.durable_index()));
        batch_len = batch_len % 4 + 1;
    }
    log.close().unwrap();
    drop(log);
    let segments = segment_files(dir.path());
    // Record ends in the last segment, recomputed from the records.
    let last_first = first_index_of(segments.last().unwrap());
    let mut record_ends = Vec::new();
    let mut end = SEGMENT_HEADER_LEN;
    for i in last_first..=index {
        end += RECORD_HEADER_LEN + payloads[i as usize].len();
        record_ends.push((end, i));
    }
    // Batches from before the last segment existed do not describe it; the
    // header it was created with carries the durable index of that time.
    let final_header = header_of(segments.last().unwrap());
    let creation_watermark = batches
        .iter()
        .filter(|(_, h, _)| h[16..32] != final_header[16..32])
        .map(|b| b.2)
        .max()
        .unwrap_or(0);
    batches.retain(|(_, h, _)| h[16..32] == final_header[16..32]);
    let mut creation_header = final_header;
    creation_header[40..48].copy_from_slice(&creation_watermark.to_le_bytes());
    let crc = crc32fast::hash(&creation_header[..60]);
    creation_header[60..64].copy_from_slice(&crc.to_le_bytes());
    Workload {
        dir,
        segments,
        record_ends,
        batches,
        creation_header,
        payloads,
    }
}

fn first_index_of(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_str().unwrap();
    name.trim_end_matches(".seg")
        .split_once('-')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

/// End offset of the tail segment: where the next record would go.
fn log_tail_end(log: &Log) -> usize {
    let guard = pin();
    let last = log.last_index();
    if last == 0 {
        return SEGMENT_HEADER_LEN;
    }
    let files = segment_files(log.dir());
    let tail_first = first_index_of(files.last().unwrap());
    if tail_first > last {
        return SEGMENT_HEADER_LEN;
    }
    let mut end = SEGMENT_HEADER_LEN;
    for i in tail_first..=last {
        end += RECORD_HEADER_LEN + log.entry(i, &guard).unwrap().payload.len();
    }
    end
}

#[derive(Clone, Copy, Debug)]
enum Tail {
    Cut,
    Zero,
    Garble,
}

/// Builds a directory holding the workload's image crashed at `x`.
fn crashed_image(w: &Workload, x: usize, tail: Tail) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let (last, earlier) = w.segments.split_last().unwrap();
    for seg in earlier {
        std::fs::copy(seg, out.path().join(seg.file_name().unwrap())).unwrap();
    }
    let mut image = std::fs::read(last).unwrap();
    // The header as it was when the writer was at x: from the last batch
    // that had completed by then.
    let header = w
        .batches
        .iter()
        .rev()
        .find(|(end, _, _)| *end <= x)
        .map_or(&w.creation_header, |b| &b.1);
    image[..SEGMENT_HEADER_LEN].copy_from_slice(header);
    match tail {
        Tail::Cut => image.truncate(x),
        Tail::Zero => image[x..].fill(0),
        Tail::Garble => {
            let mut s = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for b in &mut image[x..] {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *b = s as u8;
            }
        }
    }
    std::fs::write(out.path().join(last.file_name().unwrap()), &image).unwrap();
    out
}

fn quick() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        persist: PersistMode::None,
        ..LogConfig::default()
    }
}

#[test]
fn crash_at_every_byte_of_the_last_segment_recovers_a_durable_prefix() {
    let w = run_workload();
    let last_first = first_index_of(w.segments.last().unwrap());
    let end = w.record_ends.last().unwrap().0;
    let mut checked = 0;
    for x in SEGMENT_HEADER_LEN..=end {
        let expect_last = w
            .record_ends
            .iter()
            .take_while(|(e, _)| *e <= x)
            .last()
            .map_or(last_first - 1, |r| r.1);
        let durable_at_x = w.batches.iter().rev().find(|(e, _, _)| *e <= x).map_or(0, |b| b.2);
        assert!(expect_last >= durable_at_x);
        for tail in [Tail::Cut, Tail::Zero, Tail::Garble] {
            let dir = crashed_image(&w, x, tail);
            let log = Log::open(dir.path(), quick()).unwrap_or_else(|e| panic!("crash at {x} ({tail:?}): {e}"));
            assert_eq!(log.last_index(), expect_last, "crash at {x} ({tail:?})");
            let guard = pin();
            for i in [1, expect_last.saturating_sub(1).max(1), expect_last] {
                if i >= 1 && i <= expect_last {
                    assert_eq!(log.entry(i, &guard).unwrap().payload, &w.payloads[i as usize][..]);
                }
            }
            // The recovered log takes new appends after the cut.
            drop(guard);
            log.append_payloads(1, RecordKind::Normal, 0, &[b"after crash"])
                .unwrap();
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} crash points");
    let _ = w.dir.path();
}

#[test]
fn every_bit_flip_in_the_durable_prefix_is_detected() {
    let w = run_workload();
    let last = w.segments.last().unwrap();
    let image = std::fs::read(last).unwrap();
    let end = w.record_ends.last().unwrap().0;
    // The whole last segment's durable part: header and every record.
    let mut detected = 0;
    for bit in 0..end * 8 {
        let dir = tempfile::tempdir().unwrap();
        for seg in &w.segments[..w.segments.len() - 1] {
            std::fs::copy(seg, dir.path().join(seg.file_name().unwrap())).unwrap();
        }
        let mut flipped = image.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(dir.path().join(last.file_name().unwrap()), &flipped).unwrap();
        match Log::open(dir.path(), quick()) {
            Err(LogError::Corrupt { .. }) => detected += 1,
            Err(other) => panic!("bit {bit}: unexpected error {other}"),
            Ok(log) => panic!("bit {bit}: flip went unnoticed (last index {})", log.last_index()),
        }
    }
    assert_eq!(detected, end * 8);
}

#[test]
fn corruption_error_names_file_offset_and_index() {
    let w = run_workload();
    let last = w.segments.last().unwrap();
    let mut image = std::fs::read(last).unwrap();
    let (second_end, _) = w.record_ends[1];
    let (first_end, first_index) = w.record_ends[0];
    // Damage the second record's payload area.
    image[second_end - 1] ^= 0xFF;
    let dir = tempfile::tempdir().unwrap();
    for seg in &w.segments[..w.segments.len() - 1] {
        std::fs::copy(seg, dir.path().join(seg.file_name().unwrap())).unwrap();
    }
    let name = last.file_name().unwrap();
    std::fs::write(dir.path().join(name), &image).unwrap();
    match Log::open(dir.path(), quick()) {
        Err(LogError::Corrupt {
            path, offset, index, ..
        }) => {
            assert_eq!(path.file_name().unwrap(), name);
            assert_eq!(offset, first_end as u64);
            assert_eq!(index, first_index + 1);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_term_going_back_across_segments_is_detected() {
    let w = run_workload();
    let (before, last) = (&w.segments[w.segments.len() - 2], w.segments.last().unwrap());
    // Raise the term of the last record before the last segment to 2 (its
    // CRC made valid again): the last segment's first record, of term 1,
    // then goes back in term.
    let mut image = std::fs::read(before).unwrap();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut last_at = pos;
    while let Ok(rec) = decode_record(&image[pos..]) {
        last_at = pos;
        pos += rec.encoded_len();
    }
    let rec = decode_record(&image[last_at..]).unwrap();
    let (payload, index, timestamp_ms) = (rec.payload.to_vec(), rec.index, rec.timestamp_ms);
    let raised = Record {
        kind: RecordKind::Normal,
        term: 2,
        index,
        timestamp_ms,
        payload: &payload,
    };
    encode_record(&mut image[last_at..], &raised).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for seg in &w.segments {
        std::fs::copy(seg, dir.path().join(seg.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.path().join(before.file_name().unwrap()), &image).unwrap();
    match Log::open(dir.path(), quick()) {
        Err(LogError::Corrupt {
            path,
            offset,
            index: at,
            reason,
        }) => {
            assert_eq!(path.file_name(), last.file_name());
            assert_eq!(offset, SEGMENT_HEADER_LEN as u64);
            assert_eq!(at, index + 1);
            assert!(reason.contains("below the term 2"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}
