//! The LoomCache durable record log.
//!
//! One format serves as the Raft log and the write-ahead log: CRC32-checked
//! records `[length | crc32 | kind | term | index | leader timestamp |
//! payload]` (a 40-byte header, then the payload) in preallocated,
//! memory-mapped segment files, made durable by group commit. The payload
//! of a normal entry is the client frame exactly as it was received. Beside
//! the log: the Raft hard state (two CRC'd slots written alternately) and
//! snapshots (written to a temporary file, synced, renamed).
//!
//! This crate stores and recovers records; it does not know what an entry
//! means and does not depend on the consensus crate (the daemon adapts it
//! to the consensus `Storage` trait). Layouts and invariants are in
//! `docs/design.md`.
// Unsafe code is confined to the segment mapping (segment.rs) and the
// epoch-protected cell that readers borrow mappings through (epoch.rs).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod commit;
#[allow(unsafe_code)]
mod epoch;
mod error;
mod hardstate;
mod io;
mod log;
mod record;
mod recovery;
#[allow(unsafe_code)]
mod segment;
mod snapshot;
mod sync;

pub use commit::{CommitError, FlushTicket, GroupCommit, Idle, Step};
pub use crossbeam_epoch::{pin, Guard};
pub use epoch::EpochCell;
pub use error::{LogError, Result};
pub use hardstate::{HardState, HardStateFile};
pub use io::{LogIo, OsIo};
pub use log::{Appended, FlushStats, Log, LogConfig, PersistMode};
pub use record::{decode_record, encode_record, Record, RecordError, RecordHeader, RecordKind, RECORD_HEADER_LEN};
pub use segment::SEGMENT_HEADER_LEN;
pub use snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter, Snapshots};
