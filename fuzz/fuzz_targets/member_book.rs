//! The address book's decoders from arbitrary bytes: a snapshot's envelope
//! and a membership change's context never panic, and what decodes
//! renders back to an envelope that decodes to the same members and state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loomcache_daemon::raft::members::{decode_envelope, encode_envelope_with, member_from_context, render};

fuzz_target!(|data: &[u8]| {
    let _ = member_from_context(data);
    if let Ok((members, state)) = decode_envelope(data) {
        let again = encode_envelope_with(&render(members.iter().copied()), |mut out| {
            out.extend_from_slice(state);
            out
        });
        let (members2, state2) = decode_envelope(&again).expect("a rendered book decodes");
        assert_eq!(members, members2);
        assert_eq!(state, state2);
    }
});
