//! The LoomCache consensus core: Raft as a plain state machine.
//!
//! Inputs are `tick`, `step(message)`, `propose`, `read_index` and
//! membership changes; the output is a `Ready` of messages to send, entries
//! and hard state to persist, and committed entries to apply. The core
//! touches no sockets, files, threads, clocks or OS randomness, so whole
//! clusters run deterministically in a simulator from one seed. Messages
//! use the wire crate's Raft opcodes.
//!
//! Built so far: the quorum arithmetic (majority and joint configurations)
//! that commitment, elections and ReadIndex are decided by.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod quorum;

/// A node's id; 0 is never a valid node.
pub type NodeId = u64;
/// A log index; 0 is "before the first entry".
pub type Index = u64;
/// A Raft term.
pub type Term = u64;
