//! Criterion suites that measure LoomCache's wire protocol and buffer pool
//! against peers measured in the same run, and the peers themselves: a
//! straightforward RESP (Redis protocol) command parser and encoder, a serde
//! struct encoded with bincode 1.3, and fixtures that build one `MAP_PUT`
//! request in all three encodings. Every figure the suites print is meant to
//! be quoted as a ratio against its peer, with the command that made it. This
//! crate is not part of the product and not on the default test path: it
//! ships nothing the daemon or client uses, and its suites run only under
//! `cargo bench -p loomcache-benches`; the unit tests here check only that
//! the peers are correct, so a ratio never compares against a broken parser.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bincode_baseline;
pub mod fixtures;
pub mod resp;
