//! loom models of the durable log's concurrency: the group-commit handoff
//! (to a flush thread, and between waiters that run the rounds themselves)
//! and epoch reclamation racing a reader. All drive the real types.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use loomcache_log::{CommitError, EpochCell, GroupCommit, Step};

/// What the flush thread does, reduced to its effect: it snapshots how far
/// records are published, "flushes" that far, and reports completion.
fn flusher(commit: Arc<GroupCommit>, published: Arc<AtomicU64>, flushed: Arc<AtomicU64>, fail: bool) {
    while let Some(ticket) = commit.next_work() {
        let covered = published.load(Ordering::Acquire);
        assert!(
            covered >= ticket.target,
            "a ticket named records that were not published"
        );
        if !fail {
            flushed.store(covered, Ordering::Release);
        }
        commit.completed(ticket, !fail);
    }
    commit.stopped();
}

/// Takes the next index under the writer lock, publishes it and reports it.
fn publish_next(writer: &Mutex<u64>, commit: &GroupCommit, published: &AtomicU64) -> u64 {
    let index = {
        let mut next = writer.lock().unwrap();
        *next += 1;
        published.store(*next, Ordering::Release);
        *next
    };
    commit.appended(index);
    index
}

/// An appender: publishes the next index and waits until it is durable.
fn appender(
    writer: Arc<Mutex<u64>>,
    commit: Arc<GroupCommit>,
    published: Arc<AtomicU64>,
    flushed: Arc<AtomicU64>,
) -> Result<u64, CommitError> {
    let index = publish_next(&writer, &commit, &published);
    commit.wait_durable(index)?;
    // Released only after a completed flush covered this record.
    assert!(
        flushed.load(Ordering::Acquire) >= index,
        "appender {index} released before its flush"
    );
    Ok(index)
}

#[test]
fn no_appender_is_released_before_a_flush_covers_it() {
    loom::model(|| {
        let commit = Arc::new(GroupCommit::new(0));
        let writer = Arc::new(Mutex::new(0u64));
        let published = Arc::new(AtomicU64::new(0));
        let flushed = Arc::new(AtomicU64::new(0));
        let f = {
            let (c, p, fl) = (commit.clone(), published.clone(), flushed.clone());
            thread::spawn(move || flusher(c, p, fl, false))
        };
        let a = {
            let (w, c, p, fl) = (writer.clone(), commit.clone(), published.clone(), flushed.clone());
            thread::spawn(move || appender(w, c, p, fl))
        };
        let mine = appender(writer, commit.clone(), published, flushed.clone());
        let theirs = a.join().unwrap();
        assert_eq!(mine.unwrap() + theirs.unwrap(), 3, "indexes 1 and 2, one each");
        commit.close();
        f.join().unwrap();
        assert_eq!(commit.durable(), 2);
    });
}

#[test]
fn a_failed_flush_releases_waiters_with_an_error_and_never_as_durable() {
    loom::model(|| {
        let commit = Arc::new(GroupCommit::new(0));
        let writer = Arc::new(Mutex::new(0u64));
        let published = Arc::new(AtomicU64::new(0));
        let flushed = Arc::new(AtomicU64::new(0));
        let f = {
            let (c, p, fl) = (commit.clone(), published.clone(), flushed.clone());
            thread::spawn(move || flusher(c, p, fl, true))
        };
        let result = appender(writer, commit.clone(), published, flushed);
        assert_eq!(result, Err(CommitError::Poisoned));
        assert!(commit.is_poisoned());
        assert_eq!(commit.durable(), 0);
        commit.close();
        f.join().unwrap();
    });
}

/// An appender of a log whose waiters run the flush rounds: it publishes
/// its record, then either finds it durable, sleeps, or runs the next
/// round itself ("flushing" everything published so far).
fn leading_appender(
    writer: Arc<Mutex<u64>>,
    commit: Arc<GroupCommit>,
    published: Arc<AtomicU64>,
    flushed: Arc<AtomicU64>,
) -> u64 {
    let index = publish_next(&writer, &commit, &published);
    loop {
        match commit.wait_or_lead(index).unwrap() {
            Step::Durable => break,
            Step::Lead(ticket) => {
                let covered = published.load(Ordering::Acquire);
                assert!(
                    covered >= ticket.target,
                    "a round named records that were not published"
                );
                // One round at a time: what it covers only grows.
                assert!(flushed.load(Ordering::Acquire) <= covered, "two rounds overlapped");
                flushed.store(covered, Ordering::Release);
                commit.completed(ticket, true);
            }
        }
    }
    assert!(
        flushed.load(Ordering::Acquire) >= index,
        "appender {index} released before its flush"
    );
    index
}

/// Waiters hand the lead over without a flush thread: a record appended
/// while another waiter's round is in flight is flushed by a later round
/// that some waiter runs, so nobody sleeps forever (loom reports a
/// deadlock otherwise) and nobody is released early.
#[test]
fn waiters_running_the_rounds_release_each_only_after_its_flush() {
    loom::model(|| {
        let commit = Arc::new(GroupCommit::new_led_by_waiters(0));
        let writer = Arc::new(Mutex::new(0u64));
        let published = Arc::new(AtomicU64::new(0));
        let flushed = Arc::new(AtomicU64::new(0));
        let a = {
            let (w, c, p, fl) = (writer.clone(), commit.clone(), published.clone(), flushed.clone());
            thread::spawn(move || leading_appender(w, c, p, fl))
        };
        let mine = leading_appender(writer, commit.clone(), published, flushed);
        let theirs = a.join().unwrap();
        assert_eq!(mine + theirs, 3, "indexes 1 and 2, one each");
        assert_eq!(commit.durable(), 2);
    });
}

/// A value that knows whether it has been destroyed.
struct Tracked {
    alive: Arc<AtomicBool>,
    value: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
    }
}

#[test]
fn reclamation_never_frees_what_a_pinned_reader_sees() {
    loom::model(|| {
        let first_alive = Arc::new(AtomicBool::new(true));
        let cell = Arc::new(EpochCell::new(Tracked {
            alive: first_alive.clone(),
            value: 1,
        }));
        let reader = {
            let cell = cell.clone();
            thread::spawn(move || {
                let guard = crossbeam_epoch::pin();
                let seen = cell.load(&guard);
                // Whatever the reader loaded stays alive while it is pinned.
                assert!(seen.alive.load(Ordering::Acquire), "reader saw a destroyed value");
                let v = seen.value;
                thread::yield_now();
                assert!(
                    seen.alive.load(Ordering::Acquire),
                    "value destroyed under a pinned reader"
                );
                assert_eq!(seen.value, v);
            })
        };
        let second_alive = Arc::new(AtomicBool::new(true));
        {
            let guard = crossbeam_epoch::pin();
            cell.replace(
                Tracked {
                    alive: second_alive.clone(),
                    value: 2,
                },
                &guard,
            );
        }
        reader.join().unwrap();
        assert!(
            second_alive.load(Ordering::Acquire),
            "the current value is never destroyed"
        );
        drop(cell);
    });
}
