//! Replication: the Raft driver thread, the consensus core's durable
//! storage, and the peer transport.

pub mod driver;
pub mod incarnation;
pub mod members;
pub mod storage;
pub mod transport;

pub use driver::{
    Driver, DriverConfig, DriverError, DriverHandle, LeaseGate, MembershipView, Outcome, Replicated, Reply,
    SnapshotFinish, Summary,
};
pub use storage::{LogStorage, RaftStorageError};
pub use transport::{Transport, TransportConfig, TransportStats};
