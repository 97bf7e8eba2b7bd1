//! Payload and response-body decoders under every opcode: the first two
//! bytes pick the opcode, the rest is the payload. Whatever decodes must
//! re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loomcache_wire::{Limits, OkBody, OkShape, Opcode, Payload, Writer};

fuzz_target!(|data: &[u8]| {
    let [a, b, rest @ ..] = data else { return };
    let op = Opcode::ALL[usize::from(u16::from_le_bytes([*a, *b])) % Opcode::ALL.len()];
    let limits = Limits::DEFAULT;
    if let Ok(payload) = Payload::decode(op, rest, &limits) {
        let mut out = vec![0u8; payload.encoded_len()];
        payload.encode(&mut Writer::new(&mut out)).expect("re-encode");
        assert_eq!(out, rest, "{op} is not canonical");
        let _ = payload.check_arguments(&limits);
        let _ = payload.routing_key();
    }
    if let Some(shape) = OkShape::of(op) {
        if let Ok(body) = OkBody::decode(shape, rest, &limits) {
            let mut out = vec![0u8; body.encoded_len()];
            body.encode(&mut Writer::new(&mut out)).expect("re-encode");
            assert_eq!(out, rest, "{shape:?} is not canonical");
        }
    }
});
