//! The LoomCache durable record log.
//!
//! One format serves as the Raft log and the write-ahead log: a sequence of
//! CRC32-checked records `[length | crc32 | kind | term | index |
//! leader timestamp | payload]` (a 40-byte header, then the payload)
//! in preallocated, memory-mapped segment files, made durable by group
//! commit. The payload of a normal entry is the client frame exactly as it
//! was received. This crate stores and recovers records; it does not know
//! what an entry means and does not depend on the consensus crate (the
//! daemon adapts it to the consensus `Storage` trait).
//!
//! Built so far: the record encoding and its integrity checks. Segments,
//! group commit, snapshots and recovery build on it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod record;

pub use record::{decode_record, encode_record, Record, RecordError, RecordHeader, RecordKind, RECORD_HEADER_LEN};
