//! Replication: the consensus core's durable storage, the peer transport,
//! and (to come) the Raft driver thread.

pub mod storage;
pub mod transport;

pub use storage::{LogStorage, RaftStorageError};
pub use transport::{Transport, TransportConfig, TransportStats};
