//! The LoomCache node daemon, `loomd`.
//!
//! It ties the other crates together: a mio event loop reads frames into
//! pooled buffers, a bounded worker pool applies them to the replicated
//! state machine through the Raft driver and the durable log, and
//! responses go back through the loop. It owns configuration, limits,
//! backpressure, and later TLS, auth and the admin endpoints. It must never
//! block its event loop.
//!
//! Built so far: the event loop, the worker pool (or inline apply),
//! backpressure, limits, configuration from defaults, TOML, environment
//! and flags, the deterministic state machine with snapshots, and — in
//! cluster mode — the Raft driver, the peer transport and the consensus
//! storage over the durable log. Without `[cluster]` the node is a single
//! memory-only node that applies writes directly. TLS, auth, near-cache
//! subscriptions and the admin endpoints are not built yet.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backpressure;
pub mod config;
pub mod raft;
pub mod server;
pub mod settings;
pub mod state;
mod sync;

pub use config::{Config, ConfigError};
