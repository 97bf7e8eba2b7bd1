//! The log record decoder over arbitrary bytes: it must never panic, and a
//! record it accepts must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loomcache_log::{decode_record, encode_record};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode_record(data) {
        let mut out = vec![0u8; record.encoded_len()];
        encode_record(&mut out, &record).expect("re-encode");
        assert_eq!(&out[..], &data[..record.encoded_len()]);
    }
});
