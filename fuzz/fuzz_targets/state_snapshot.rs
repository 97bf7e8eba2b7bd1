//! State-machine snapshots from arbitrary bytes: loading never panics, a
//! failed load changes nothing, and whatever loads writes back the same
//! bytes (the encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use loomcache_daemon::state::{StateConfig, StateMachine};

fuzz_target!(|data: &[u8]| {
    let mut sm = StateMachine::new(StateConfig::default());
    let empty = sm.snapshot();
    match sm.restore(data) {
        Ok(()) if data.is_empty() => assert_eq!(sm.snapshot(), empty),
        Ok(()) => assert_eq!(sm.snapshot(), data, "snapshot encoding is not canonical"),
        Err(_) => assert_eq!(sm.snapshot(), empty, "a failed load changed the state"),
    }
});
