//! Pooled, reusable I/O buffers for LoomCache.
//!
//! A [`BufPool`] owns a fixed number of equally sized buffers, allocated once
//! when it is created. [`BufPool::take`] hands one out as a [`PooledBuf`], an
//! RAII handle that returns the buffer to the pool when dropped, on whatever
//! thread drops it. When every buffer is out, `take` fails at once with
//! [`Exhausted`] so the caller can apply backpressure (stop reading a socket,
//! refuse a connection); the pool never allocates more.
//!
//! This crate is buffers only: it does not know about frames, sockets or
//! what the bytes mean. Its concurrency goes through a crate-private `sync`
//! shim so the loom models in `model-tests` exercise the real code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod pool;
mod sync;

pub use pool::{BufPool, Exhausted, PoolConfig, PoolStats, PooledBuf};
