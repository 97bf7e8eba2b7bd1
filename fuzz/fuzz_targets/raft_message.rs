//! Raft messages and membership changes from arbitrary bytes: the first two
//! bytes pick a Raft opcode, the rest is the body. Whatever decodes must
//! encode back to a frame that decodes to the same message; a membership
//! change or a stored membership that decodes must encode to the same
//! bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loomcache_consensus::{codec, ConfChange, ConfState};
use loomcache_wire::{parse_frame, Limits, OpClass, Opcode, Parsed};

fuzz_target!(|data: &[u8]| {
    if let Ok(change) = ConfChange::decode(data) {
        assert_eq!(change.encode(), data, "membership change encoding is not canonical");
    }
    if let Some(conf) = ConfState::decode(data) {
        assert_eq!(conf.encode(), data, "membership encoding is not canonical");
    }
    let [a, b, rest @ ..] = data else { return };
    let raft: Vec<Opcode> = Opcode::ALL.iter().copied().filter(|o| o.class() == OpClass::Raft).collect();
    let op = raft[usize::from(u16::from_le_bytes([*a, *b])) % raft.len()];
    let limits = Limits::PEER;
    if let Ok(message) = codec::decode(op, rest, &limits) {
        let mut out = Vec::new();
        codec::encode(&message, 1, &mut out).expect("re-encode");
        let Ok(Parsed::Frame(frame)) = parse_frame(&out, &limits) else {
            panic!("re-encoded frame does not parse")
        };
        let again = codec::decode(frame.opcode(), frame.body(), &limits).expect("re-decode");
        assert_eq!(again, message);
    }
});
