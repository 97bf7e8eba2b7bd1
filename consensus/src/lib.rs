//! The LoomCache consensus core: Raft as a plain state machine.
//!
//! Inputs are `tick`, `step(message)`, `propose`, `read_index`, membership
//! changes and leadership transfer; the output is a [`Ready`] of messages
//! to send, entries and hard state to persist, a snapshot to load,
//! committed entries to apply and confirmed reads; `advance` reports it
//! done. The core touches no sockets, files, threads, clocks or OS
//! randomness, so whole clusters run deterministically in a simulator from
//! one seed. [`MultiRaft`] runs many groups on one node, and [`codec`]
//! carries messages in the wire crate's Raft frames.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod confchange;
mod config;
mod error;
pub mod message;
pub mod multi;
mod progress;
pub mod quorum;
mod raft;
mod raft_log;
pub mod storage;

pub use confchange::{ConfChange, ConfChangeItem};
pub use config::Config;
pub use error::Error;
pub use message::{ConfState, Entry, EntryKind, HardState, Message, MessageBody, Snapshot, SnapshotMeta};
pub use multi::{MultiRaft, MultiReady};
pub use progress::ProgressState;
pub use raft::{PeerStatus, Proposed, Raft, ReadState, ReadVia, Ready, Role, RoleState, Status};
pub use storage::{MemStorage, Storage, StorageError};

/// A node's id; 0 is never a valid node.
pub type NodeId = u64;
/// A log index; 0 is "before the first entry".
pub type Index = u64;
/// A Raft term.
pub type Term = u64;
/// A Raft group's id.
pub type GroupId = u32;
