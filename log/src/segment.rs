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
//! Concurrency: exactly one thread at a time writes records (the holder of
//! the log's writer lock) and only beyond `end`; readers only read below
//! `end`, which is published with release ordering after the bytes are
//! written. The header's watermark is written only by the flush thread, and
//! no reader reads the header after the segment is opened.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::RwLock;

use memmap2::{MmapOptions, MmapRaw};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{LogError, Result};
use crate::io::LogIo;

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

/// A mapped segment.
#[derive(Debug)]
pub(crate) struct Segment {
    path: PathBuf,
    _file: File,
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
    /// and directory entry durable before answering.
    pub fn create(dir: &Path, io: &dyn LogIo, meta: SegmentMeta, capacity: usize) -> Result<Segment> {
        let path = dir.join(segment_file_name(meta.seq, meta.first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io("create segment", &path, e))?;
        // Until the segment exists, a failure removes the file so that a
        // retry can create it again.
        let remove_on_error = |e: LogError| {
            let _ = std::fs::remove_file(&path);
            e
        };
        io.allocate(&file, capacity as u64)
            .map_err(|e| remove_on_error(LogError::io("preallocate segment", &path, e)))?;
        let map = MmapOptions::new()
            .len(capacity)
            .map_raw(&file)
            .map_err(|e| remove_on_error(LogError::io("map segment", &path, e)))?;
        let segment = Segment {
            path,
            _file: file,
            map,
            capacity,
            meta,
            offsets: RwLock::new(Vec::new()),
            end: AtomicUsize::new(SEGMENT_HEADER_LEN),
            remove_on_drop: AtomicBool::new(false),
        };
        let header = SegmentHeader::sealed(meta.seq, meta.first_index, capacity as u64, meta.watermark);
        segment.write_header(&header);
        // From here a failure drops the segment, which removes its file.
        segment.remove_when_dropped();
        io.flush_mapping(&segment.map, 0, SEGMENT_HEADER_LEN)
            .map_err(|e| LogError::io("flush segment header", &segment.path, e))?;
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
        // Recovery reads every byte: populating the mapping up front costs
        // one bulk fault-in instead of one fault per page.
        let map = MmapOptions::new()
            .len(capacity)
            .populate()
            .map_raw(&file)
            .map_err(|e| LogError::io("map segment", path, e))?;
        // Recovery reads the whole segment front to back: ask for
        // aggressive read-ahead. Only a hint; failure changes nothing.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Segment {
            path: path.to_path_buf(),
            _file: file,
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

    /// Writes a record's bytes at the current end and publishes them.
    /// Called only by the holder of the log's writer lock.
    pub fn append(&self, index: u64, write: impl FnOnce(&mut [u8]) -> usize, len: usize) -> usize {
        let at = self.end.load(Ordering::Relaxed);
        assert!(len <= self.capacity - at, "append of {len} bytes overflows the segment");
        let mut offsets = self.offsets.write().unwrap_or_else(|p| p.into_inner());
        assert_eq!(
            self.meta.first_index + offsets.len() as u64,
            index,
            "append out of order"
        );
        // SAFETY: `at..at + len` is inside the mapping (checked above) and at
        // or beyond `end`, so no reader holds a slice of it (readers only
        // read below `end`); the writer lock makes this the only writer.
        let dst = unsafe { core::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(at), len) };
        let written = write(dst);
        assert_eq!(written, len, "record writer wrote {written} of {len} bytes");
        offsets.push(at as u32);
        drop(offsets);
        self.end.store(at + len, Ordering::Release);
        at
    }

    /// Zeroes `from..capacity`, skipping pages that are already zero, so
    /// stale bytes after a torn tail can never be mistaken for records.
    /// Called by recovery before the segment is shared.
    pub fn zero_from(&self, from: usize, io: &dyn LogIo) -> Result<()> {
        let len = self.capacity - from;
        // SAFETY: `from..capacity` is inside the mapping; recovery calls this
        // before the segment is shared with readers or the flush thread, so
        // nothing else reads or writes these bytes.
        let tail = unsafe { core::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(from), len) };
        let mut dirty = None;
        for (i, chunk) in tail.chunks_mut(4096).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                chunk.fill(0);
                let lo = from + i * 4096;
                let hi = lo + chunk.len();
                dirty = Some(dirty.map_or((lo, hi), |(a, _)| (a, hi)));
            }
        }
        if let Some((lo, hi)) = dirty {
            io.flush_mapping(&self.map, lo, hi - lo)
                .map_err(|e| LogError::io("flush zeroed tail", &self.path, e))?;
        }
        Ok(())
    }

    /// Makes `from..to` durable.
    pub fn flush(&self, io: &dyn LogIo, from: usize, to: usize) -> std::io::Result<()> {
        if to > from {
            io.flush_mapping(&self.map, from, to - from)
        } else {
            Ok(())
        }
    }

    fn write_header(&self, header: &SegmentHeader) {
        // SAFETY: the header occupies the first 64 bytes of the mapping,
        // which no reader reads after `open`; header writes come from
        // `create` (before sharing) and `set_watermark`, which the flush
        // thread serialises.
        let dst = unsafe { core::slice::from_raw_parts_mut(self.map.as_mut_ptr(), SEGMENT_HEADER_LEN) };
        dst.copy_from_slice(header.as_bytes());
    }

    /// Records in the header that every index up to `watermark` is durable.
    /// The header page is made durable by the next flush of this segment.
    pub fn set_watermark(&self, watermark: u64) {
        let header = SegmentHeader::sealed(self.meta.seq, self.meta.first_index, self.capacity as u64, watermark);
        self.write_header(&header);
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
