//! The LoomCache node daemon, `loomd`.
//!
//! It ties the other crates together: a mio event loop reads frames into
//! pooled buffers, a bounded worker pool applies them to the replicated
//! state machine through the Raft driver and the durable log, and
//! responses go back through the loop. It owns configuration, limits,
//! backpressure, and later TLS, auth and the admin endpoints. It must never
//! block its event loop.
//!
//! Built so far: the configuration model with its documented defaults and
//! validation, and the deterministic replicated state machine (every data
//! structure, TTL from the leader timestamp, memory accounting, write
//! deduplication). The event loop, worker pool and Raft driver are not
//! built yet.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backpressure;
pub mod config;
pub mod server;
pub mod state;
mod sync;

pub use config::{Config, ConfigError};
