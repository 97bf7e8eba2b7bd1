//! The log crate's error type.

use std::io;
use std::path::PathBuf;

use crate::record::RecordError;

/// Result alias for the log crate.
pub type Result<T, E = LogError> = core::result::Result<T, E>;

/// A log operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An earlier flush failed, so nothing written since can be trusted to
    /// be durable. The log refuses every write until the node restarts and
    /// recovers (and, if recovery finds damage, is rebuilt from peers).
    #[error("the log is poisoned by an earlier failed flush; restart the node")]
    Poisoned,
    /// Damage inside the durable part of the log: records that were
    /// reported durable cannot be read back. The node must not serve from
    /// this log; it must be rebuilt from its peers.
    #[error("corrupt log {path} at offset {offset} (index {index}): {reason}")]
    Corrupt {
        /// The segment or file.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// The log index expected there.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// Entries to append do not follow the log's last index.
    #[error("entry index {got} does not follow the last index {last}")]
    NotContiguous {
        /// The log's last index.
        last: u64,
        /// The first index offered.
        got: u64,
    },
    /// Terms must not decrease along the log.
    #[error("entry {index} has term {term}, below the previous term {previous}")]
    TermRegressed {
        /// The entry's index.
        index: u64,
        /// Its term.
        term: u64,
        /// The term before it.
        previous: u64,
    },
    /// The index is not in the log (compacted, or beyond the end).
    #[error("index {index} is outside the log [{first}, {last}]")]
    OutOfRange {
        /// Asked for.
        index: u64,
        /// First index held.
        first: u64,
        /// Last index held.
        last: u64,
    },
    /// A record is larger than a segment can hold.
    #[error("record of {len} bytes exceeds the segment capacity of {max}")]
    RecordTooLarge {
        /// Record size.
        len: u64,
        /// Largest record a segment holds.
        max: u64,
    },
    /// A record failed its checks on read.
    #[error("record at {path} offset {offset}: {source}")]
    Record {
        /// The segment.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// What failed.
        #[source]
        source: RecordError,
    },
    /// A snapshot operation was invalid.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// The configuration is unusable.
    #[error("invalid log configuration: {0}")]
    Config(&'static str),
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> LogError {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True for an out-of-space failure.
    pub fn is_no_space(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()))
    }
}
