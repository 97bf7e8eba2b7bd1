//! Log recovery over arbitrary segment contents: a valid segment header
//! (so the fuzzer reaches the record scanner) followed by arbitrary bytes.
//! Opening must either fail with an error or give a log whose every entry
//! reads back; it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loomcache_log::{pin, Log, LogConfig, PersistMode};

const HEADER_LEN: usize = 64;

fn header(first_index: u64, capacity: u64, watermark: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(b"LCSEG\0\0\x01");
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[16..24].copy_from_slice(&1u64.to_le_bytes());
    h[24..32].copy_from_slice(&first_index.to_le_bytes());
    h[32..40].copy_from_slice(&capacity.to_le_bytes());
    h[40..48].copy_from_slice(&watermark.to_le_bytes());
    let crc = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fuzz_target!(|data: &[u8]| {
    let [first, mark, body @ ..] = data else { return };
    let first_index = u64::from(*first).max(1);
    let watermark = u64::from(*mark) % 4;
    let capacity = (HEADER_LEN + body.len()).max(4096) as u64;
    let mut image = header(first_index, capacity, watermark).to_vec();
    image.extend_from_slice(body);
    image.resize(capacity as usize, 0);
    let dir = tempfile::tempdir().expect("temp dir");
    let name = format!("{:020}-{:020}.seg", 1, first_index);
    std::fs::write(dir.path().join(name), &image).expect("write segment");
    let config = LogConfig { segment_bytes: capacity as usize, persist: PersistMode::None, ..LogConfig::default() };
    if let Ok(log) = Log::open(dir.path(), config) {
        let guard = pin();
        for index in log.first_index()..=log.last_index() {
            let record = log.entry(index, &guard).expect("a recovered entry reads back");
            assert_eq!(record.index, index);
        }
        assert!(log.last_index() + 1 >= first_index);
    }
});
