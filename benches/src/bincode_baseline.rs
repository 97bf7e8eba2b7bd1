//! A put request as a typical serde user declares it, with owned fields,
//! encoded with bincode 1.3 in its standard layout (fixed-width little-endian
//! integers, `u64` length prefixes).
//!
//! `key` and `value` are plain `Vec<u8>`: without a byte-string adapter serde
//! treats them as sequences of `u8`, which is what most code that derives
//! `Serialize` on such a struct gets.

use bincode::Options;
use serde::{Deserialize, Serialize};

/// Largest encoding [`decode`] accepts, in bytes: the LoomCache client
/// payload maximum. bincode checks every declared length against what is
/// left of this budget before reading it.
pub const DECODE_LIMIT_BYTES: u64 = 4 << 20;

/// A map put with owned fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// Map name.
    pub name: String,
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Time to live in milliseconds; 0 = none.
    pub ttl_ms: u64,
}

/// Appends the encoding of `request` to `out`. Encoding a value this process
/// built needs no size limit, and bincode would pay for one with a second
/// pass over the value.
pub fn encode(request: &PutRequest, out: &mut Vec<u8>) -> bincode::Result<()> {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .serialize_into(out, request)
}

/// Decodes one request that fills `bytes` exactly, within
/// [`DECODE_LIMIT_BYTES`].
pub fn decode(bytes: &[u8]) -> bincode::Result<PutRequest> {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(DECODE_LIMIT_BYTES)
        .deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PutRequest {
        PutRequest {
            name: "users".to_owned(),
            key: (0..16).collect(),
            value: vec![7; 256],
            ttl_ms: 60_000,
        }
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode(&request(), &mut out).unwrap();
        assert_eq!(out.len(), 8 + 5 + 8 + 16 + 8 + 256 + 8, "standard bincode 1 layout");
        assert_eq!(decode(&out).unwrap(), request());
    }

    #[test]
    fn encode_appends() {
        let mut out = b"xy".to_vec();
        encode(&request(), &mut out).unwrap();
        assert_eq!(decode(&out[2..]).unwrap(), request());
    }

    #[test]
    fn truncated_trailing_and_oversized_input_is_refused() {
        let mut out = Vec::new();
        encode(&request(), &mut out).unwrap();
        assert!(decode(&out[..out.len() - 1]).is_err());
        out.push(0);
        assert!(decode(&out).is_err(), "trailing bytes");
        // A name that declares more than the limit is refused before any
        // allocation by its length.
        let mut huge = (DECODE_LIMIT_BYTES + 1).to_le_bytes().to_vec();
        huge.extend_from_slice(b"users");
        assert!(decode(&huge).is_err());
    }
}
