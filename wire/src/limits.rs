//! Configured maxima that every decoded length is checked against.

use crate::header::HEADER_LEN;

/// Upper bounds applied while decoding. A length is checked against the
/// bytes actually present *and* against these before it is used, so a peer
/// can never make the decoder walk, or a caller allocate, by a declared size.
///
/// Client connections and peer (Raft) connections use different instances:
/// Raft batches are larger than client requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload a frame may declare, in bytes.
    pub payload_max_bytes: u32,
    /// Largest structure name (Map, Queue, … name), in bytes; at most 255.
    pub name_max_bytes: u32,
    /// Largest key or set member, in bytes; at most 65 535.
    pub key_max_bytes: u32,
    /// Largest value, queue item or topic message, in bytes.
    pub value_max_bytes: u32,
    /// Largest count in any list (keys of a get_all, entries of a put_all,
    /// operations of a batch, page size of a scan, Raft entries).
    pub items_max: u32,
}

impl Limits {
    /// Defaults for client connections: 4 MiB frames, 16 KiB keys, 1 MiB
    /// values, 1024 items per list.
    pub const DEFAULT: Limits = Limits {
        payload_max_bytes: 4 << 20,
        name_max_bytes: 255,
        key_max_bytes: 16 << 10,
        value_max_bytes: 1 << 20,
        items_max: 1024,
    };

    /// Defaults for peer (Raft) connections: 64 MiB frames so a batch of
    /// maximal client frames, or a snapshot chunk, fits; 16 384 entries per
    /// message. Keys and values are bounded as for clients, since entries
    /// carry client frames.
    pub const PEER: Limits = Limits {
        payload_max_bytes: 64 << 20,
        items_max: 16 << 10,
        ..Limits::DEFAULT
    };

    /// The largest values the encoding can represent. Used to re-walk bytes
    /// that were already validated against tighter limits.
    pub const REPRESENTABLE: Limits = Limits {
        payload_max_bytes: u32::MAX - HEADER_LEN as u32,
        name_max_bytes: u8::MAX as u32,
        key_max_bytes: u16::MAX as u32,
        value_max_bytes: u32::MAX,
        items_max: u32::MAX,
    };

    /// The receive-buffer size that holds any frame these limits accept.
    pub fn frame_max_bytes(&self) -> usize {
        HEADER_LEN + self.payload_max_bytes as usize
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
