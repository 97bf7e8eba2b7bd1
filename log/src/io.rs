//! The operating-system calls the log makes, behind a trait so tests can
//! inject disk-full and flush failures without a special filesystem.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use memmap2::MmapRaw;

/// File-system operations used by the log. The default methods are the
/// real calls; a test implementation overrides some to fail.
pub trait LogIo: Send + Sync + core::fmt::Debug + 'static {
    /// Reserves `len` bytes of disk for `file` (fallocate), so that later
    /// writes through a mapping find the space allocated: a full disk is an
    /// error here, never a SIGBUS later.
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len).map_err(io::Error::from)
    }

    /// Makes `len` bytes of a mapping from `offset` durable (msync).
    fn flush_mapping(&self, map: &MmapRaw, offset: usize, len: usize) -> io::Result<()> {
        map.flush_range(offset, len)
    }

    /// Writes all of `buf` to `file` at its current position.
    fn write_all(&self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        file.write_all(buf)
    }

    /// Writes all of `buf` to `file` at `offset`.
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }

    /// Makes a file's data durable (fdatasync).
    fn sync_file(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    /// Renames a file (atomic replace within a directory).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    /// Makes a directory's entries durable (fsync on the directory), so a
    /// created, renamed or removed file survives a crash.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// The real operating-system calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsIo;

impl LogIo for OsIo {}
