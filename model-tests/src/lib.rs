//! loom models of LoomCache's concurrent paths.
//!
//! The models drive the real types (the buffer pool today; the backpressure
//! controller and the group-commit handoff as they are built) through each
//! crate's `sync` shim, so loom explores their actual interleavings. They
//! run with `RUSTFLAGS="--cfg loom" cargo test -p loomcache-model-tests
//! --release`; without `cfg(loom)` the same properties are checked by
//! ordinary multi-threaded stress tests. This crate is tests only: nothing
//! in the product depends on it.
#![forbid(unsafe_code)]

pub mod sim;
pub mod wgl;
