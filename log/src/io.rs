//! The operating-system calls the log makes, behind a trait so tests can
//! inject disk-full and flush failures without a special filesystem.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::path::Path;

/// File-system operations used by the log. The default methods are the
/// real calls; a test implementation overrides some to fail.
pub trait LogIo: Send + Sync + core::fmt::Debug + 'static {
    /// Reserves `len` bytes of disk for `file` (fallocate), so that later
    /// writes through a mapping find the space allocated: a full disk is an
    /// error here, never a SIGBUS later.
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len).map_err(io::Error::from)
    }

    /// Writes all of `bufs`, in order, to a segment file at `offset`
    /// (pwritev, repeated after a short write). The slices may be advanced
    /// past what was written.
    fn write_segment(&self, file: &File, bufs: &mut [IoSlice<'_>], offset: u64) -> io::Result<()> {
        write_all_vectored_at(file, bufs, offset)
    }

    /// Makes a segment file's bytes from `offset` for `len` durable. The
    /// real call is fdatasync, which covers the whole file; the range says
    /// which bytes the caller needs covered (fault tests record it).
    fn sync_segment(&self, file: &File, offset: usize, len: usize) -> io::Result<()> {
        let _ = (offset, len);
        file.sync_data()
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

/// pwritev until every byte of `bufs` is written at `offset` onwards.
/// `bufs` is consumed: on return its slices are advanced past what was
/// written.
pub(crate) fn write_all_vectored_at(file: &File, mut bufs: &mut [IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    // IOV_MAX on Linux; longer lists go in several calls.
    const MAX_IOVECS: usize = 1024;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let take = bufs.len().min(MAX_IOVECS);
        let n = match rustix::io::pwritev(file, &bufs[..take], offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += n as u64;
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}
