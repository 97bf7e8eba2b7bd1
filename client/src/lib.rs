//! The LoomCache client library.
//!
//! It routes each request by the same `murmur3_32(key) % 271` partitioning
//! the servers use, stamps writes with the client id and a sequence number
//! so a retried write is applied exactly once, and pipelines many requests
//! per connection by request id. It never links the daemon: everything it
//! knows of the server comes through the wire crate. The `loomctl` binary
//! is a command-line tool over this library.
//!
//! Built so far: request encoding (routing, request ids, sequencing).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod request;

pub use request::{Encoded, RequestEncoder};
