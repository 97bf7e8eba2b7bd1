//! Replication: the consensus core's durable storage, and (to come) the
//! Raft driver thread and the peer transport.

pub mod storage;

pub use storage::{LogStorage, RaftStorageError};
