//! The LoomCache client library.
//!
//! A blocking [`Client`] with a typed handle per structure
//! (`client.map("users").put(key, value)`), a small connection pool,
//! bounded retries with backoff and jitter, and exactly-once writes: every
//! write carries the client id and a sequence number that its retries
//! reuse, so the server applies it once. [`Connection`] exposes the
//! pipelined form (send many, then collect answers by request id). It
//! routes by the same `murmur3_32(key) % 271` partitioning the servers use.
//! It never links the daemon: everything it knows of the server comes
//! through the wire crate. The `loomctl` binary is a command-line tool over
//! this library.
//!
//! Not built yet: leader tracking across a cluster, near cache.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod conn;
mod error;
mod reply;
mod request;

pub use client::{
    AtomicLongHandle, Client, ClientConfig, MapHandle, Message, QueueHandle, SetHandle, TopicHandle, TopicSubscription,
};
pub use conn::Connection;
pub use error::{ClientError, Result};
pub use reply::{GroupView, PartitionTable, Reply};
pub use request::{Encoded, RequestEncoder};
