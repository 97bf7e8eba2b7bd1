//! Arbitrary bytes, cut into chunks at positions taken from the input, go
//! through the framer; every frame that comes out is decoded as a request
//! and as a response. Nothing may panic, and every frame must re-parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loomcache_wire::{parse_frame, Framer, Limits, OkShape, Opcode, Parsed};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let limits = Limits { payload_max_bytes: 64 << 10, ..Limits::DEFAULT };
    let Ok(mut framer) = Framer::new(vec![0u8; limits.frame_max_bytes()], limits) else { return };
    for piece in stream.chunks(chunk) {
        let mut rest = piece;
        while !rest.is_empty() {
            let n = framer.feed(rest);
            rest = &rest[n..];
            loop {
                match framer.next_frame() {
                    Ok(Some(frame)) => {
                        assert!(matches!(parse_frame(frame.bytes(), &limits), Ok(Parsed::Frame(_))));
                        let _ = frame.decode(&limits);
                        for &request in Opcode::ALL.iter().filter(|op| OkShape::of(**op).is_some()).take(8) {
                            let _ = frame.decode_response(request, &limits);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            if n == 0 {
                return;
            }
        }
    }
    let _ = framer.finish();
});
