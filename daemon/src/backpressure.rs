//! Backpressure between the event loop and the worker pool.
//!
//! Work admitted to the workers is counted. Below the low watermark the
//! node runs normally. From the low watermark on, the event loop stops
//! reading from connections that already have work queued, so TCP pushes
//! back on the busiest clients first. At the high watermark nothing more is
//! admitted: the loop pauses reading altogether and refuses new connections
//! with `SERVER_BUSY`. It resumes only when the count falls below the low
//! watermark again (hysteresis), woken by the worker that crossed it.
//!
//! The count never exceeds the high watermark, and the pause cannot miss
//! its wake-up: the loop re-checks the count after announcing the pause,
//! and a worker wakes the loop when it sees the pause announced; with
//! sequentially consistent operations one of the two always sees the other.

use crate::sync::{AtomicBool, AtomicUsize, Ordering};

/// Where the load stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Below the low watermark.
    Normal,
    /// Between the watermarks: read only from idle connections.
    Throttle,
    /// At the high watermark: admit nothing, refuse connections.
    Reject,
}

/// The shared counter and pause flag.
#[derive(Debug)]
pub struct Backpressure {
    queued: AtomicUsize,
    paused: AtomicBool,
    low: usize,
    high: usize,
}

impl Backpressure {
    /// A controller with watermarks `low < high`.
    pub fn new(low: usize, high: usize) -> Backpressure {
        assert!(0 < low && low < high, "watermarks must satisfy 0 < low < high");
        Backpressure {
            queued: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            low,
            high,
        }
    }

    /// Work admitted and not yet completed.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// The current level.
    pub fn level(&self) -> Level {
        let n = self.queued();
        if self.paused.load(Ordering::SeqCst) || n >= self.high {
            Level::Reject
        } else if n >= self.low {
            Level::Throttle
        } else {
            Level::Normal
        }
    }

    /// Event loop: admits one unit of work, or refuses it at the high
    /// watermark and announces a pause.
    pub fn try_admit(&self) -> bool {
        let mut n = self.queued.load(Ordering::SeqCst);
        loop {
            if n >= self.high || self.paused.load(Ordering::SeqCst) {
                self.pause();
                return false;
            }
            match self
                .queued
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(actual) => n = actual,
            }
        }
    }

    /// Announces the pause, then re-checks: if the workers already drained
    /// below the low watermark (and so will not wake the loop), the pause
    /// ends at once.
    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) < self.low {
            self.paused.store(false, Ordering::SeqCst);
        }
    }

    /// True while paused; the loop must not read until woken.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Worker: one unit of work completed. Answers true if the caller must
    /// wake the event loop (it ended a pause).
    pub fn complete(&self) -> bool {
        let before = self.queued.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "completed more work than was admitted");
        before - 1 < self.low && self.paused.swap(false, Ordering::SeqCst)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn levels_and_hysteresis() {
        let bp = Backpressure::new(2, 4);
        assert_eq!(bp.level(), Level::Normal);
        assert!(bp.try_admit() && bp.try_admit());
        assert_eq!(bp.level(), Level::Throttle);
        assert!(bp.try_admit() && bp.try_admit());
        assert_eq!(bp.queued(), 4);
        assert!(!bp.try_admit(), "the high watermark is a hard bound");
        assert!(bp.is_paused());
        assert_eq!(bp.level(), Level::Reject);
        // Draining to between the watermarks keeps the pause…
        assert!(!bp.complete());
        assert!(!bp.complete());
        assert!(bp.is_paused());
        assert!(!bp.try_admit(), "still paused above the low watermark");
        // …until below the low watermark, where the worker wakes the loop.
        assert!(bp.complete());
        assert!(!bp.is_paused());
        assert_eq!(bp.level(), Level::Normal);
        assert!(bp.try_admit());
    }

    #[test]
    fn a_pause_announced_after_the_drain_ends_at_once() {
        let bp = Backpressure::new(2, 3);
        assert!(bp.try_admit());
        // Nothing is above the watermark, but a pause announced now must
        // not outlive the check.
        bp.pause();
        assert!(!bp.is_paused());
    }
}
