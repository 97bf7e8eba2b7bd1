//! The daemon's backpressure controller between the event loop and a
//! worker: the queued count never exceeds the high watermark, and a pause
//! always ends (no lost wake-up, no deadlock).
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use loomcache_daemon::backpressure::Backpressure;

const ITEMS: usize = 3;

#[test]
fn pauses_end_and_the_bound_holds() {
    loom::model(|| {
        let bp = Arc::new(Backpressure::new(1, 2));
        let handed = Arc::new(AtomicUsize::new(0));
        let woken = Arc::new(AtomicBool::new(false));
        let worker = {
            let (bp, handed, woken) = (bp.clone(), handed.clone(), woken.clone());
            thread::spawn(move || {
                let mut done = 0;
                while done < ITEMS {
                    if done < handed.load(Ordering::Acquire) {
                        if bp.complete() {
                            woken.store(true, Ordering::Release);
                        }
                        done += 1;
                    } else {
                        thread::yield_now();
                    }
                }
            })
        };
        // The event loop: admit every item, sleeping while paused until a
        // worker wakes it. A lost wake-up spins here forever, which loom
        // reports as a failure.
        let mut admitted = 0;
        while admitted < ITEMS {
            if bp.try_admit() {
                assert!(bp.queued() <= 2, "the high watermark was exceeded");
                admitted += 1;
                handed.fetch_add(1, Ordering::Release);
            } else {
                while bp.is_paused() && !woken.swap(false, Ordering::AcqRel) {
                    thread::yield_now();
                }
            }
        }
        worker.join().unwrap();
        assert_eq!(bp.queued(), 0);
        assert!(!bp.is_paused());
    });
}
