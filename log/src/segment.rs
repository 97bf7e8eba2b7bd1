//! One segment file: a preallocated, memory-mapped region holding a header
//! and records back to back.
//!
//! ```text
//! segment header (64 bytes)
//! offset size field
//!      0    8 magic        b"LCSEG\0\0\x01"
//!      8    4 version      1
//!     12    4 reserved     zero
//!     16    8 seq          creation sequence; later segments supersede
//!     24    8 first_index  index of the first record
//!     32    8 capacity     file size in bytes
//!     40    8 watermark    every index <= this was durable when written
//!     48   12 reserved     zero
//!     60    4 crc32        CRC32 (IEEE) of bytes 0..60
//! ```
//! Records start at byte 64 and follow each other without padding; the
//! space after the last record is zero.
//!
//! Writes go through the file (pwritev), reads through the mapping: both
//! are the same page-cache pages, so a record's bytes are copied once, from
//! the caller's buffer into the pages the mapping shows. Writing through
//! the mapping instead would make every first store to a page after a
//! flush take a write fault, and on ext4 that fault dirties the journal, so
//! each flush became a journal commit as well as a data flush.
//!
//! Concurrency: exactly one thread at a time writes records (the holder of
//! the log's writer lock) and only beyond `end`; readers only read below
//! `end`, which is published with release ordering after the bytes are
//! written. The header's watermark is written only by the flush thread, and
//! no reader reads the header after the segment is opened.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::RwLock;

use memmap2::{MmapOptions, MmapRaw};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{LogError, Result};
use crate::io::LogIo;
use crate::record::is_zeroed;

/// Size of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 64;
const MAGIC: [u8; 8] = *b"LCSEG\0\0\x01";
const VERSION: u32 = 1;
const CRC_OFFSET: usize = 60;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct SegmentHeader {
    magic: [u8; 8],
    version: U32,
    reserved0: [u8; 4],
    seq: U64,
    first_index: U64,
    capacity: U64,
    watermark: U64,
    reserved1: [u8; 12],
    crc: U32,
}

const _: () = assert!(size_of::<SegmentHeader>() == SEGMENT_HEADER_LEN);

impl SegmentHeader {
    fn sealed(seq: u64, first_index: u64, capacity: u64, watermark: u64) -> SegmentHeader {
        let mut h = SegmentHeader {
            magic: MAGIC,
            version: U32::new(VERSION),
            reserved0: [0; 4],
            seq: U64::new(seq),
            first_index: U64::new(first_index),
            capacity: U64::new(capacity),
            watermark: U64::new(watermark),
            reserved1: [0; 12],
            crc: U32::new(0),
        };
        h.crc = U32::new(crc32fast::hash(&h.as_bytes()[..CRC_OFFSET]));
        h
    }
}

/// A segment's identity, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    pub seq: u64,
    pub first_index: u64,
    pub watermark: u64,
}

/// The file name of a segment: `<seq>-<first_index>.seg`, zero-padded so
/// names sort by sequence.
pub(crate) fn segment_file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:020}-{first_index:020}.seg")
}

/// File names of [`Prepared`] segment files: prefix, a number, suffix.
/// Recovery reads only `.seg` files; the log deletes these at open.
pub(crate) const PREPARED_PREFIX: &str = "prepared-";
pub(crate) const PREPARED_SUFFIX: &str = ".tmp";

/// Zeros written per call when filling a file.
const ZERO_CHUNK: usize = 1 << 20;

/// The pause between two chunks of a [`ZeroFill::Chunked`] file, which
/// leaves the disk to the log in use between them. With 1 MiB chunks it
/// holds the preparer to about 70 MB/s on the project VM, enough for a
/// 64 MiB segment in about a second; a log that fills segments faster
/// finds no file ready and creates one whose space is only allocated
/// (11.2 of docs/design.md). The figures behind the choice are in
/// BENCHMARKS.md (a 60 s run of the SLO load across a rotation).
const ZERO_CHUNK_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// A segment file made ready ahead of need: its space allocated, every
/// byte written with zeros and flushed, so that records later written into
/// it change no file-system metadata and a flush is a data flush only
/// (writing into merely allocated space converts extents, which costs a
/// journal commit per flush on ext4).
#[derive(Debug)]
pub(crate) struct Prepared {
    path: PathBuf,
    file: File,
    capacity: usize,
}

/// How a prepared file's zeros are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroFill {
    /// All written, then one flush: the quickest, for a file its caller
    /// waits for (a new log's first segment).
    AtOnce,
    /// Each chunk flushed before the next is written, for a file built
    /// beside a log in use: the log's flushes share the disk with at most
    /// a chunk of zeros at a time, instead of waiting behind the whole
    /// file's write-back (tens of MiB, hundreds of milliseconds on a
    /// shared disk) when the one flush at the end comes.
    Chunked,
}

impl Prepared {
    /// Builds a zero-filled file of `capacity` bytes at `path`, replacing
    /// any earlier one. `stopped` is asked between chunks: once it answers
    /// true the file is removed and the build ends with
    /// [`LogError::Closed`] (a closing log does not wait for a whole
    /// paced build).
    pub fn create(
        path: &Path,
        io: &dyn LogIo,
        capacity: usize,
        fill: ZeroFill,
        stopped: &dyn Fn() -> bool,
    ) -> Result<Prepared> {
        let path = path.to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| LogError::io("create segment file", &path, e))?;
        let fail = |what: &'static str, e: std::io::Error| {
            let _ = std::fs::remove_file(&path);
            LogError::io(what, &path, e)
        };
        io.allocate(&file, capacity as u64)
            .map_err(|e| fail("preallocate segment", e))?;
        let step = match fill {
            ZeroFill::AtOnce => capacity,
            ZeroFill::Chunked => ZERO_CHUNK,
        };
        let mut at = 0;
        while at < capacity {
            if at > 0 && fill == ZeroFill::Chunked {
                std::thread::sleep(ZERO_CHUNK_PAUSE);
            }
            if stopped() {
                let _ = std::fs::remove_file(&path);
                return Err(LogError::Closed);
            }
            let end = (at + step).min(capacity);
            write_zeros(io, &file, at, end).map_err(|e| fail("zero-fill segment", e))?;
            io.sync_segment(&file, at, end - at)
                .map_err(|e| fail("flush zero-filled segment", e))?;
            at = end;
        }
        Ok(Prepared { path, file, capacity })
    }

    /// Deletes the file.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes zeros over `from..to` of `file`, a chunk per call.
fn write_zeros(io: &dyn LogIo, file: &File, from: usize, to: usize) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK.min(to.saturating_sub(from))];
    let mut at = from;
    while at < to {
        let n = zeros.len().min(to - at);
        io.write_segment(file, &mut [IoSlice::new(&zeros[..n])], at as u64)?;
        at += n;
    }
    Ok(())
}

/// A mapped segment.
#[derive(Debug)]
pub(crate) struct Segment {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    capacity: usize,
    meta: SegmentMeta,
    /// Byte offset of each record, by `index - first_index`.
    offsets: RwLock<Vec<u32>>,
    /// Bytes in use, header included; readers read below it.
    end: AtomicUsize,
    /// Delete the file when the last reference goes.
    remove_on_drop: AtomicBool,
}

impl Segment {
    /// Creates, preallocates and maps a new segment, and makes its header
    /// and directory entry durable before answering. A `prepared` file of
    /// the same capacity becomes the segment (renamed into place);
    /// otherwise a new file's space is only allocated.
    pub fn create(
        dir: &Path,
        io: &dyn LogIo,
        meta: SegmentMeta,
        capacity: usize,
        prepared: Option<Prepared>,
    ) -> Result<Segment> {
        let path = dir.join(segment_file_name(meta.seq, meta.first_index));
        let (file, from) = match prepared {
            Some(p) if p.capacity == capacity => (p.file, Some(p.path)),
            other => {
                if let Some(p) = other {
                    p.discard();
                }
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| LogError::io("create segment", &path, e))?;
                if let Err(e) = io.allocate(&file, capacity as u64) {
                    let _ = std::fs::remove_file(&path);
                    return Err(LogError::io("preallocate segment", &path, e));
                }
                (file, None)
            }
        };
        // Until the segment exists, a failure removes its file (under the
        // name it has at that point) so that a retry can create it again.
        let remove_on_error = |at: &Path, e: LogError| {
            let _ = std::fs::remove_file(at);
            e
        };
        let current = from.as_deref().unwrap_or(&path);
        let header = SegmentHeader::sealed(meta.seq, meta.first_index, capacity as u64, meta.watermark);
        io.write_segment(&file, &mut [IoSlice::new(header.as_bytes())], 0)
            .map_err(|e| remove_on_error(current, LogError::io("write segment header", &path, e)))?;
        // The header is durable before the name is: a segment file that
        // recovery finds always has a valid header.
        io.sync_segment(&file, 0, SEGMENT_HEADER_LEN)
            .map_err(|e| remove_on_error(current, LogError::io("flush segment header", &path, e)))?;
        if let Some(from) = &from {
            io.rename(from, &path)
                .map_err(|e| remove_on_error(from, LogError::io("rename prepared segment", &path, e)))?;
        }
        let map = MmapOptions::new()
            .len(capacity)
            .map_raw_read_only(&file)
            .map_err(|e| remove_on_error(&path, LogError::io("map segment", &path, e)))?;
        let segment = Segment {
            path,
            file,
            map,
            capacity,
            meta,
            offsets: RwLock::new(Vec::new()),
            end: AtomicUsize::new(SEGMENT_HEADER_LEN),
            remove_on_drop: AtomicBool::new(false),
        };
        // From here a failure drops the segment, which removes its file.
        segment.remove_when_dropped();
        io.sync_dir(dir)
            .map_err(|e| LogError::io("sync log directory", dir, e))?;
        segment.keep();
        Ok(segment)
    }

    /// Opens and maps an existing segment and checks its header. Records
    /// are not read; recovery scans them and then calls [`Segment::adopt`].
    /// A file shorter than its header's capacity (its tail lost) is
    /// extended again with zeros, which recovery then reads as empty space.
    pub fn open(path: &Path, io: &dyn LogIo) -> Result<Segment> {
        use std::io::Read;
        let corrupt = |reason: String| LogError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            index: 0,
            reason,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| LogError::io("open segment", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("stat segment", path, e))?
            .len();
        let mut raw = [0u8; SEGMENT_HEADER_LEN];
        if len < SEGMENT_HEADER_LEN as u64 {
            return Err(corrupt(format!("segment of {len} bytes has no complete header")));
        }
        file.read_exact(&mut raw)
            .map_err(|e| LogError::io("read segment header", path, e))?;
        let (header, _) =
            SegmentHeader::read_from_prefix(&raw[..]).map_err(|_| corrupt("segment header truncated".into()))?;
        if header.magic != MAGIC {
            return Err(corrupt("not a segment file (bad magic)".into()));
        }
        let crc = crc32fast::hash(&raw[..CRC_OFFSET]);
        if crc != header.crc.get() {
            return Err(corrupt(format!(
                "segment header checksum mismatch (0x{crc:08x} != 0x{:08x})",
                header.crc.get()
            )));
        }
        if header.version.get() != VERSION {
            return Err(corrupt(format!("unsupported segment version {}", header.version.get())));
        }
        let capacity = header.capacity.get();
        if capacity < SEGMENT_HEADER_LEN as u64 || capacity > u64::from(u32::MAX) || len > capacity {
            return Err(corrupt(format!(
                "header capacity {capacity} does not fit file size {len}"
            )));
        }
        if len < capacity {
            io.allocate(&file, capacity)
                .map_err(|e| LogError::io("re-extend segment", path, e))?;
        }
        let capacity = capacity as usize;
        // Recovery reads every byte: start reading the whole file now, in
        // large requests, so that faulting the mapping in finds it cached.
        // Only a hint; failure changes nothing.
        let _ = rustix::fs::fadvise(
            &file,
            0,
            std::num::NonZeroU64::new(capacity as u64),
            rustix::fs::Advice::WillNeed,
        );
        // Populating the mapping up front costs one bulk fault-in instead
        // of one fault per page.
        let map = MmapOptions::new()
            .len(capacity)
            .populate()
            .map_raw_read_only(&file)
            .map_err(|e| LogError::io("map segment", path, e))?;
        // Recovery reads the whole segment front to back: ask for
        // aggressive read-ahead. Only a hint; failure changes nothing.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Segment {
            path: path.to_path_buf(),
            file,
            map,
            capacity,
            meta: SegmentMeta {
                seq: header.seq.get(),
                first_index: header.first_index.get(),
                watermark: header.watermark.get(),
            },
            offsets: RwLock::new(Vec::new()),
            end: AtomicUsize::new(SEGMENT_HEADER_LEN),
            remove_on_drop: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self) -> SegmentMeta {
        self.meta
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes in use (header included).
    pub fn end(&self) -> usize {
        self.end.load(Ordering::Acquire)
    }

    /// Space left for records.
    pub fn free(&self) -> usize {
        self.capacity - self.end()
    }

    /// Byte offset of the record with `index`, if this segment holds it.
    pub fn offset_of(&self, index: u64) -> Option<usize> {
        let slot = index.checked_sub(self.meta.first_index)?;
        let offsets = self.offsets.read().unwrap_or_else(|p| p.into_inner());
        offsets.get(usize::try_from(slot).ok()?).map(|&o| o as usize)
    }

    /// Records found by recovery: their offsets and the end of the last.
    pub fn adopt(&self, offsets: Vec<u32>, end: usize) {
        // Scanning is over; reads are random from here on.
        let _ = self.map.advise(memmap2::Advice::Normal);
        assert!(
            end <= self.capacity && end >= SEGMENT_HEADER_LEN,
            "adopted end {end} outside the segment"
        );
        *self.offsets.write().unwrap_or_else(|p| p.into_inner()) = offsets;
        self.end.store(end, Ordering::Release);
    }

    /// The bytes from `from` to `to` (clamped to the capacity), in the
    /// record area.
    pub fn bytes_from(&self, from: usize, to: usize) -> &[u8] {
        let to = to.min(self.capacity);
        assert!(
            from >= SEGMENT_HEADER_LEN && from <= to,
            "byte range {from}..{to} is not in the record area"
        );
        // SAFETY: `from..to` lies inside the mapping (`to` is clamped to the
        // capacity, which is the mapped length). The bytes are not written
        // while the slice lives: records below `end` are never rewritten
        // (the log is append-only within a segment; truncation starts a new
        // segment); once the segment is shared, callers only ask for ranges
        // below `end` (recovery scans the whole capacity, but before the
        // segment is shared); and `from` is never inside the header, which
        // the flush thread rewrites. The mapping outlives the slice, which
        // borrows `self`.
        unsafe { core::slice::from_raw_parts(self.map.as_ptr().add(from), to - from) }
    }

    /// Writes `bufs` at byte `at`, which is at or beyond `end`, without
    /// publishing them. Called only by the holder of the log's writer lock.
    pub fn write(&self, io: &dyn LogIo, at: usize, len: usize, bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
        assert!(
            at >= self.end.load(Ordering::Relaxed) && len <= self.capacity - at,
            "write of {len} bytes at {at} is outside the free space"
        );
        io.write_segment(&self.file, bufs, at as u64)
    }

    /// Notes that the record with `index` starts at byte `at`; it becomes
    /// readable once [`Segment::publish`] moves `end` past it.
    pub fn push_offset(&self, index: u64, at: usize) {
        let mut offsets = self.offsets.write().unwrap_or_else(|p| p.into_inner());
        assert_eq!(
            self.meta.first_index + offsets.len() as u64,
            index,
            "append out of order"
        );
        offsets.push(at as u32);
    }

    /// Makes every byte below `end` readable.
    pub fn publish(&self, end: usize) {
        assert!(end <= self.capacity, "published end {end} beyond the segment");
        self.end.store(end, Ordering::Release);
    }

    /// Zeroes `from..capacity` where it is not zero already, so stale bytes
    /// after a torn tail can never be mistaken for records. Called by
    /// recovery before the segment is shared.
    pub fn zero_from(&self, from: usize, io: &dyn LogIo) -> Result<()> {
        let len = self.capacity - from;
        let mut dirty = None;
        {
            // SAFETY: `from..capacity` is inside the mapping; recovery calls
            // this before the segment is shared, so nothing writes these
            // bytes while the slice lives (the zeroing below writes through
            // the file after this block, where `tail` is gone).
            let tail = unsafe { core::slice::from_raw_parts(self.map.as_ptr().add(from), len) };
            for (i, chunk) in tail.chunks(4096).enumerate() {
                if !is_zeroed(chunk) {
                    let lo = from + i * 4096;
                    let hi = lo + chunk.len();
                    dirty = Some(dirty.map_or((lo, hi), |(a, _)| (a, hi)));
                }
            }
        }
        if let Some((lo, hi)) = dirty {
            write_zeros(io, &self.file, lo, hi).map_err(|e| LogError::io("zero torn tail", &self.path, e))?;
            io.sync_segment(&self.file, lo, hi - lo)
                .map_err(|e| LogError::io("flush zeroed tail", &self.path, e))?;
        }
        Ok(())
    }

    /// Makes `from..to` durable.
    pub fn flush(&self, io: &dyn LogIo, from: usize, to: usize) -> std::io::Result<()> {
        if to > from {
            io.sync_segment(&self.file, from, to - from)
        } else {
            Ok(())
        }
    }

    /// Records in the header that every index up to `watermark` is durable.
    /// The header is made durable by the next flush of this segment. Once
    /// the segment is shared, callers hold the log's flush lock.
    pub fn set_watermark(&self, io: &dyn LogIo, watermark: u64) -> std::io::Result<()> {
        let header = SegmentHeader::sealed(self.meta.seq, self.meta.first_index, self.capacity as u64, watermark);
        io.write_segment(&self.file, &mut [IoSlice::new(header.as_bytes())], 0)
    }

    /// Deletes the file once the last reference is dropped.
    pub fn remove_when_dropped(&self) {
        self.remove_on_drop.store(true, Ordering::Release);
    }

    /// Cancels [`Segment::remove_when_dropped`].
    pub fn keep(&self) {
        self.remove_on_drop.store(false, Ordering::Release);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.remove_on_drop.load(Ordering::Acquire) {
            // Unmapping happens when `map` drops after this; removing the
            // name first is fine on POSIX. A failure leaves a superseded
            // file that the next recovery removes.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records the ranges flushed.
    #[derive(Debug, Default)]
    struct RecordingIo {
        flushed: Mutex<Vec<(usize, usize)>>,
    }

    impl LogIo for RecordingIo {
        fn sync_segment(&self, file: &File, offset: usize, len: usize) -> std::io::Result<()> {
            self.flushed.lock().unwrap().push((offset, len));
            file.sync_data()
        }
    }

    fn flushes(fill: ZeroFill, capacity: usize) -> Vec<(usize, usize)> {
        let dir = tempfile::tempdir().unwrap();
        let io = RecordingIo::default();
        let prepared = Prepared::create(&dir.path().join("p"), &io, capacity, fill, &|| false).unwrap();
        assert_eq!(prepared.file.metadata().unwrap().len(), capacity as u64);
        prepared.discard();
        io.flushed.into_inner().unwrap()
    }

    #[test]
    fn a_file_prepared_beside_a_log_is_flushed_a_chunk_at_a_time() {
        let capacity = ZERO_CHUNK * 3 + ZERO_CHUNK / 2;
        assert_eq!(
            flushes(ZeroFill::Chunked, capacity),
            vec![
                (0, ZERO_CHUNK),
                (ZERO_CHUNK, ZERO_CHUNK),
                (2 * ZERO_CHUNK, ZERO_CHUNK),
                (3 * ZERO_CHUNK, ZERO_CHUNK / 2)
            ]
        );
        assert_eq!(flushes(ZeroFill::AtOnce, capacity), vec![(0, capacity)]);
    }

    #[test]
    fn a_build_asked_to_stop_ends_between_chunks_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let io = RecordingIo::default();
        let asked = std::sync::atomic::AtomicUsize::new(0);
        // Stop once two chunks are done.
        let stopped = || asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 2;
        let path = dir.path().join("p");
        let built = Prepared::create(&path, &io, ZERO_CHUNK * 8, ZeroFill::Chunked, &stopped);
        assert!(matches!(built, Err(LogError::Closed)), "{built:?}");
        assert!(!path.exists());
        assert_eq!(io.flushed.into_inner().unwrap().len(), 2);
    }
}
