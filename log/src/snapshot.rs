//! Snapshots: a state-machine image at a log index, written so that a crash
//! at any step leaves either the previous snapshot or the new one, never a
//! broken one.
//!
//! ```text
//! file <snapshot dir>/<index:020>-<term:020>.snap
//! header (64 bytes)
//! offset size field
//!      0    8 magic      b"LCSNAP\0\x01"
//!      8    8 index      last log index the snapshot covers
//!     16    8 term       its term
//!     24    8 meta_len   bytes of membership metadata (opaque here)
//!     32    8 data_len   bytes of state-machine data
//!     40    4 body_crc   CRC32 (IEEE) of meta then data
//!     44   16 reserved   zero
//!     60    4 crc32      CRC32 (IEEE) of bytes 0..60
//! then meta_len bytes of metadata, then data_len bytes of data
//! ```
//! Writing: a `.tmp` file receives the body in order (chunk by chunk, from
//! the local state machine or from a leader's InstallSnapshot), then the
//! header; it is synced, renamed to its final name, and the directory is
//! synced. Opening deletes leftover `.tmp` files and uses the newest file
//! whose header and body checksums verify.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{LogError, Result};
use crate::io::LogIo;

const HEADER_LEN: u64 = 64;
const MAGIC: [u8; 8] = *b"LCSNAP\0\x01";

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    magic: [u8; 8],
    index: U64,
    term: U64,
    meta_len: U64,
    data_len: U64,
    body_crc: U32,
    reserved: [u8; 16],
    crc: U32,
}

const _: () = assert!(size_of::<Header>() == HEADER_LEN as usize);

/// What a snapshot covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last log index included.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Bytes of membership metadata.
    pub meta_len: u64,
    /// Bytes of state-machine data.
    pub data_len: u64,
}

fn file_name(index: u64, term: u64) -> String {
    format!("{index:020}-{term:020}.snap")
}

/// The snapshot directory.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    io: Arc<dyn LogIo>,
}

impl Snapshots {
    /// Opens `dir` (creating it), removing unfinished temporary files.
    pub fn open(dir: &Path, io: Arc<dyn LogIo>) -> Result<Snapshots> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::io("create snapshot directory", dir, e))?;
        let listing = std::fs::read_dir(dir).map_err(|e| LogError::io("list snapshots", dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| LogError::io("list snapshots", dir, e))?;
            if entry.file_name().to_str().is_some_and(|n| n.ends_with(".tmp")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Snapshots {
            dir: dir.to_path_buf(),
            io,
        })
    }

    /// The newest snapshot whose checksums verify, if any. Files that do
    /// not verify are skipped.
    pub fn latest(&self) -> Result<Option<SnapshotReader>> {
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        let listing = std::fs::read_dir(&self.dir).map_err(|e| LogError::io("list snapshots", &self.dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| LogError::io("list snapshots", &self.dir, e))?;
            let name = entry.file_name();
            let Some(index) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".snap"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(i, _)| i.parse().ok())
            else {
                continue;
            };
            names.push((index, entry.path()));
        }
        names.sort_by_key(|n| std::cmp::Reverse(n.0));
        for (_, path) in names {
            if let Ok(reader) = SnapshotReader::open(&path) {
                return Ok(Some(reader));
            }
        }
        Ok(None)
    }

    /// Starts writing a snapshot at `index`/`term` with `meta` (the
    /// membership at that index); the body follows through
    /// [`SnapshotWriter::write`].
    pub fn begin(&self, index: u64, term: u64, meta: &[u8]) -> Result<SnapshotWriter> {
        let final_path = self.dir.join(file_name(index, term));
        let tmp_path = self.dir.join(format!("{}.tmp", file_name(index, term)));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(|e| LogError::io("create snapshot", &tmp_path, e))?;
        // The header is written last; reserve its place.
        self.io
            .write_all(&mut file, &[0u8; HEADER_LEN as usize])
            .map_err(|e| LogError::io("write snapshot", &tmp_path, e))?;
        let mut writer = SnapshotWriter {
            dir: self.dir.clone(),
            io: Arc::clone(&self.io),
            file,
            tmp_path,
            final_path,
            index,
            term,
            meta_len: meta.len() as u64,
            written: 0,
            unflushed: 0,
            failed: false,
            hasher: crc32fast::Hasher::new(),
        };
        writer.append(meta)?;
        writer.written = 0;
        Ok(writer)
    }

    /// Deletes every snapshot older than `keep_index`.
    pub fn remove_older_than(&self, keep_index: u64) -> Result<()> {
        let listing = std::fs::read_dir(&self.dir).map_err(|e| LogError::io("list snapshots", &self.dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| LogError::io("list snapshots", &self.dir, e))?;
            let old = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".snap"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(i, _)| i.parse::<u64>().ok())
                .is_some_and(|i| i < keep_index);
            if old {
                std::fs::remove_file(entry.path()).map_err(|e| LogError::io("remove snapshot", entry.path(), e))?;
            }
        }
        self.io
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io("sync snapshot directory", &self.dir, e))
    }
}

/// A snapshot being written.
#[derive(Debug)]
pub struct SnapshotWriter {
    dir: PathBuf,
    io: Arc<dyn LogIo>,
    file: File,
    tmp_path: PathBuf,
    final_path: PathBuf,
    index: u64,
    term: u64,
    meta_len: u64,
    /// Data bytes written so far.
    written: u64,
    /// Bytes written since the file was last flushed.
    unflushed: usize,
    /// A write or flush failed: the file's contents are no longer known
    /// (a later flush may succeed without covering what failed), so every
    /// later call fails too.
    failed: bool,
    hasher: crc32fast::Hasher,
}

/// A snapshot being written is flushed whenever this much is pending, so
/// that a log flushing beside it (on the same disk) never waits behind
/// more than this much of it: one flush of a whole snapshot of tens of
/// MiB at the end would hold the log's flushes for the time the disk
/// takes to write it all.
const SNAPSHOT_FLUSH_EVERY: usize = 1 << 20;

impl SnapshotWriter {
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let r = self.append_parts(bytes);
        self.failed |= r.is_err();
        r
    }

    fn append_parts(&mut self, bytes: &[u8]) -> Result<()> {
        for part in bytes.chunks(SNAPSHOT_FLUSH_EVERY) {
            self.io
                .write_all(&mut self.file, part)
                .map_err(|e| LogError::io("write snapshot", &self.tmp_path, e))?;
            self.hasher.update(part);
            self.written += part.len() as u64;
            self.unflushed += part.len();
            if self.unflushed >= SNAPSHOT_FLUSH_EVERY {
                self.io
                    .sync_file(&self.file)
                    .map_err(|e| LogError::io("sync snapshot", &self.tmp_path, e))?;
                self.unflushed = 0;
            }
        }
        Ok(())
    }

    /// Appends data at `offset`, which must be where the data written so
    /// far ends (InstallSnapshot chunks arrive in order; a repeated chunk
    /// that ends at or before the current end is accepted and ignored).
    pub fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.check_not_failed()?;
        if offset + bytes.len() as u64 <= self.written && !bytes.is_empty() {
            return Ok(());
        }
        if offset != self.written {
            return Err(LogError::Snapshot(format!(
                "chunk at offset {offset} does not follow the {} bytes written",
                self.written
            )));
        }
        self.append(bytes)
    }

    /// Data bytes written so far (the offset the next chunk must have).
    pub fn written(&self) -> u64 {
        self.written
    }

    fn check_not_failed(&self) -> Result<()> {
        if self.failed {
            return Err(LogError::Snapshot(
                "an earlier write or flush of this snapshot failed; begin it again".into(),
            ));
        }
        Ok(())
    }

    /// Seals the snapshot: header, sync, rename, directory sync. Only
    /// after this returns is the snapshot durable and visible.
    pub fn finish(mut self) -> Result<SnapshotMeta> {
        self.check_not_failed()?;
        let mut header = Header {
            magic: MAGIC,
            index: U64::new(self.index),
            term: U64::new(self.term),
            meta_len: U64::new(self.meta_len),
            data_len: U64::new(self.written),
            body_crc: U32::new(self.hasher.clone().finalize()),
            reserved: [0; 16],
            crc: U32::new(0),
        };
        header.crc = U32::new(crc32fast::hash(&header.as_bytes()[..60]));
        self.io
            .write_at(&self.file, header.as_bytes(), 0)
            .map_err(|e| LogError::io("write snapshot header", &self.tmp_path, e))?;
        self.io
            .sync_file(&self.file)
            .map_err(|e| LogError::io("sync snapshot", &self.tmp_path, e))?;
        self.io
            .rename(&self.tmp_path, &self.final_path)
            .map_err(|e| LogError::io("rename snapshot", &self.tmp_path, e))?;
        self.io
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io("sync snapshot directory", &self.dir, e))?;
        let meta = SnapshotMeta {
            index: self.index,
            term: self.term,
            meta_len: self.meta_len,
            data_len: self.written,
        };
        // Nothing to clean up: the temporary name is gone.
        self.tmp_path = PathBuf::new();
        Ok(meta)
    }

    /// Abandons the snapshot, removing the temporary file.
    pub fn abort(self) {}
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.tmp_path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// A verified snapshot, readable in chunks.
#[derive(Debug)]
pub struct SnapshotReader {
    path: PathBuf,
    file: File,
    meta: SnapshotMeta,
}

impl SnapshotReader {
    /// Opens `path` and verifies both checksums over the whole file.
    pub fn open(path: &Path) -> Result<SnapshotReader> {
        let corrupt = |reason: String| LogError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            index: 0,
            reason,
        };
        let file = File::open(path).map_err(|e| LogError::io("open snapshot", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("stat snapshot", path, e))?
            .len();
        let mut raw = [0u8; HEADER_LEN as usize];
        if len < HEADER_LEN {
            return Err(corrupt("snapshot shorter than its header".into()));
        }
        file.read_exact_at(&mut raw, 0)
            .map_err(|e| LogError::io("read snapshot", path, e))?;
        let (header, _) = Header::read_from_prefix(&raw[..]).map_err(|_| corrupt("short header".into()))?;
        if header.magic != MAGIC || crc32fast::hash(&raw[..60]) != header.crc.get() {
            return Err(corrupt("snapshot header does not verify".into()));
        }
        let body = header.meta_len.get().checked_add(header.data_len.get());
        if body.and_then(|b| b.checked_add(HEADER_LEN)) != Some(len) {
            return Err(corrupt(format!("snapshot length {len} does not match its header")));
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut at = HEADER_LEN;
        while at < len {
            let n = ((len - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| LogError::io("read snapshot", path, e))?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        if hasher.finalize() != header.body_crc.get() {
            return Err(corrupt("snapshot body checksum mismatch".into()));
        }
        Ok(SnapshotReader {
            path: path.to_path_buf(),
            file,
            meta: SnapshotMeta {
                index: header.index.get(),
                term: header.term.get(),
                meta_len: header.meta_len.get(),
                data_len: header.data_len.get(),
            },
        })
    }

    /// What the snapshot covers.
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// The membership metadata.
    pub fn read_meta(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.meta.meta_len as usize];
        self.file
            .read_exact_at(&mut out, HEADER_LEN)
            .map_err(|e| LogError::io("read snapshot", &self.path, e))?;
        Ok(out)
    }

    /// Reads data from `offset` into `buf` (an InstallSnapshot chunk);
    /// answers the bytes read, 0 at the end.
    pub fn read_chunk(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.meta.data_len {
            return Ok(0);
        }
        let n = ((self.meta.data_len - offset) as usize).min(buf.len());
        self.file
            .read_exact_at(&mut buf[..n], HEADER_LEN + self.meta.meta_len + offset)
            .map_err(|e| LogError::io("read snapshot", &self.path, e))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::OsIo;

    /// Counts flushes of files (not directories).
    #[derive(Debug, Default)]
    struct CountingIo {
        syncs: std::sync::atomic::AtomicUsize,
    }

    impl LogIo for CountingIo {
        fn sync_file(&self, file: &File) -> std::io::Result<()> {
            self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            file.sync_data()
        }
    }

    /// Fails the first file flush, then flushes normally.
    #[derive(Debug, Default)]
    struct FirstFlushFails {
        failed: std::sync::atomic::AtomicBool,
    }

    impl LogIo for FirstFlushFails {
        fn sync_file(&self, file: &File) -> std::io::Result<()> {
            if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("injected flush failure"));
            }
            file.sync_data()
        }
    }

    #[test]
    fn a_writer_whose_flush_failed_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path(), Arc::new(FirstFlushFails::default())).unwrap();
        let data = vec![7u8; SNAPSHOT_FLUSH_EVERY + 10];
        let mut w = snaps.begin(3, 1, b"m").unwrap();
        assert!(w.write(0, &data).is_err(), "the periodic flush failed");
        // Neither a retry of what was written (which the writer would
        // otherwise take for a repeat) nor sealing is accepted.
        assert!(w.write(0, &data[..SNAPSHOT_FLUSH_EVERY]).is_err());
        assert!(w.finish().is_err());
        assert!(snaps.latest().unwrap().is_none());
    }

    #[test]
    fn a_large_snapshot_is_flushed_as_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(CountingIo::default());
        let snaps = Snapshots::open(dir.path(), io.clone()).unwrap();
        let data: Vec<u8> = (0..SNAPSHOT_FLUSH_EVERY * 5 / 2).map(|i| i as u8).collect();
        let before = io.syncs.load(std::sync::atomic::Ordering::SeqCst);
        // One write of all of it: flushed every SNAPSHOT_FLUSH_EVERY
        // bytes (twice), then once more when sealed.
        write(&snaps, 9, &data, data.len());
        assert_eq!(io.syncs.load(std::sync::atomic::Ordering::SeqCst) - before, 3);
        let mut back = vec![0u8; data.len()];
        let reader = snaps.latest().unwrap().unwrap();
        assert_eq!(reader.read_chunk(0, &mut back).unwrap(), data.len());
        assert_eq!(back, data);
    }

    fn write(snaps: &Snapshots, index: u64, data: &[u8], chunk: usize) -> SnapshotMeta {
        let mut w = snaps.begin(index, 2, b"voters:1,2,3").unwrap();
        for (i, c) in data.chunks(chunk.max(1)).enumerate() {
            w.write((i * chunk) as u64, c).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(r: &SnapshotReader) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = r.read_chunk(out.len() as u64, &mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn write_chunks_then_read_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path(), Arc::new(OsIo)).unwrap();
        assert!(snaps.latest().unwrap().is_none());
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let meta = write(&snaps, 10, &data, 64);
        assert_eq!((meta.index, meta.term, meta.data_len), (10, 2, 1000));
        let r = snaps.latest().unwrap().unwrap();
        assert_eq!(r.meta(), meta);
        assert_eq!(r.read_meta().unwrap(), b"voters:1,2,3");
        assert_eq!(read_all(&r), data);
    }

    #[test]
    fn chunks_must_arrive_in_order_and_repeats_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path(), Arc::new(OsIo)).unwrap();
        let mut w = snaps.begin(5, 1, b"").unwrap();
        w.write(0, b"abcd").unwrap();
        w.write(0, b"abcd").unwrap();
        assert!(matches!(w.write(10, b"x"), Err(LogError::Snapshot(_))));
        w.write(4, b"ef").unwrap();
        let meta = w.finish().unwrap();
        assert_eq!(meta.data_len, 6);
        assert_eq!(read_all(&snaps.latest().unwrap().unwrap()), b"abcdef");
    }

    #[test]
    fn the_newest_valid_snapshot_wins_and_damage_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path(), Arc::new(OsIo)).unwrap();
        write(&snaps, 10, b"old state", 4);
        write(&snaps, 20, b"new state", 4);
        assert_eq!(snaps.latest().unwrap().unwrap().meta().index, 20);
        let newest = dir.path().join(file_name(20, 2));
        let mut bytes = std::fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&newest, &bytes).unwrap();
        assert_eq!(snaps.latest().unwrap().unwrap().meta().index, 10);
        snaps.remove_older_than(20).unwrap();
        assert!(snaps.latest().unwrap().is_none());
    }

    #[test]
    fn abandoned_writers_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path(), Arc::new(OsIo)).unwrap();
        let mut w = snaps.begin(3, 1, b"m").unwrap();
        w.write(0, b"partial").unwrap();
        w.abort();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
