//! loom model of the leader lease the Raft driver publishes and the event
//! loop reads (`LeaseGate`, the real type): a read answered under the
//! published lease sees every write applied before the lease was
//! published, and none is answered after a later leader, elected through
//! a transfer this leader started, acknowledged a write that a client then
//! saw.
#![cfg(loom)]

use std::time::{Duration, Instant};

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use loomcache_daemon::raft::LeaseGate;

#[test]
fn reads_under_the_lease_see_applied_writes_and_no_later_leader() {
    loom::model(|| {
        let gate = Arc::new(LeaseGate::new());
        // The state machine: how many writes it has applied.
        let state = Arc::new(Mutex::new(0u32));
        let timeout_now_sent = Arc::new(AtomicBool::new(false));
        let later_write_acked = Arc::new(AtomicBool::new(false));
        // Far enough that the clock never ends the lease here: only the
        // driver's withdrawal does.
        let far = Instant::now() + Duration::from_secs(3600);

        // The driver: applies a write under the lock, publishes the lease
        // (everything committed is applied), then starts a transfer,
        // withdrawing the lease before its TimeoutNow leaves.
        let driver = {
            let (gate, state, sent) = (gate.clone(), state.clone(), timeout_now_sent.clone());
            thread::spawn(move || {
                *state.lock().unwrap() = 1;
                gate.publish(Some(far));
                gate.publish(None);
                sent.store(true, Ordering::Release);
            })
        };
        // The transferee: elected on the TimeoutNow, it commits and
        // acknowledges a write this leader never applies.
        let next_leader = {
            let (sent, acked) = (timeout_now_sent.clone(), later_write_acked.clone());
            thread::spawn(move || {
                if sent.load(Ordering::Acquire) {
                    acked.store(true, Ordering::Release);
                }
            })
        };
        // The event loop, serving a client that may have seen that
        // acknowledgement: lock, check the lease, read.
        let client_saw_later_write = later_write_acked.load(Ordering::Acquire);
        {
            let applied = state.lock().unwrap();
            if gate.holds() {
                assert_eq!(*applied, 1, "the lease was visible before the write it covers");
                assert!(
                    !client_saw_later_write,
                    "a read under the lease missed a later leader's acknowledged write"
                );
            }
        }
        driver.join().unwrap();
        next_leader.join().unwrap();
    });
}
