//! The address book's decoders from arbitrary bytes: a snapshot's envelope,
//! a membership change's context and a data directory's incarnation file
//! never panic; what decodes renders back to an envelope that decodes to
//! the same members, records and state, and an incarnation read is nonzero
//! and encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loomcache_daemon::raft::incarnation;
use loomcache_daemon::raft::members::{decode_envelope, encode_envelope_with, member_from_context, render};

fuzz_target!(|data: &[u8]| {
    let _ = member_from_context(data);
    if let Ok(value) = incarnation::decode(data) {
        assert_ne!(value, 0);
        assert_eq!(&incarnation::encode(value)[..], data);
    }
    if let Ok((book, state)) = decode_envelope(data) {
        let again = encode_envelope_with(&render(book.members.iter().copied()), &book.records, |mut out| {
            out.extend_from_slice(state);
            out
        });
        let (book2, state2) = decode_envelope(&again).expect("a rendered book decodes");
        assert_eq!(book, book2);
        assert_eq!(state, state2);
    }
});
