//! The group-commit handoff between appenders and the flush thread.
//!
//! Appenders publish records, then report the highest index appended. The
//! flush thread waits for work, flushes everything published so far with
//! one call, and reports the index that flush covered. An appender waiting
//! for index `i` is released only once a completed flush covered `i`, or
//! with an error once a flush failed (the log is then poisoned for good).
//!
//! Truncation bumps a generation: a flush that started before it may cover
//! bytes that are no longer the log, so its completion is ignored.
//!
//! Two ways to run the flushes. With a flush thread, appenders report
//! what they appended and the thread flushes. With waiters leading
//! ([`GroupCommit::new_led_by_waiters`]), a waiter that finds no round in
//! flight runs the next one itself ([`GroupCommit::wait_or_lead`]), and a
//! completed round with work left wakes one waiter of the next round to
//! lead it: a lone appender (the Raft driver) then flushes on its own
//! thread with no hand-off, and many appenders hand the lead over once per
//! round instead of twice. Only one round is ever in flight.
//!
//! Waiters sleep on one of two condition variables, by flush round: those
//! whose index the round in flight covers on that round's, the others on
//! the next round's. A completed round wakes exactly its own waiters with a
//! single call; one call per waiter would keep the flush thread busy waking
//! threads for longer than the flush itself takes.

use crate::sync::{Condvar, Mutex, MutexGuard};

/// Why a wait for durability ended without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitError {
    /// A flush failed; nothing appended since is known durable.
    Poisoned,
    /// The log is closing and the index will never be flushed.
    Closed,
}

#[derive(Debug)]
struct State {
    appended: u64,
    durable: u64,
    generation: u64,
    poisoned: bool,
    closing: bool,
    /// The flush thread has exited: nothing more will become durable.
    stopped: bool,
    /// Flush rounds started; the round in flight (if any) is this one.
    round: u64,
    /// The target of the round in flight.
    in_flight: Option<u64>,
    /// The flush thread sleeps waiting for work: only then does an append
    /// wake it (a wake-up costs a system call even with nobody asleep).
    flusher_waiting: bool,
}

impl State {
    /// Which of the two condition variables a waiter for `index` sleeps
    /// on: the round in flight's if that round covers it, else the next's.
    fn round_of(&self, index: u64) -> usize {
        let round = match self.in_flight {
            Some(target) if index <= target => self.round,
            _ => self.round + 1,
        };
        (round % 2) as usize
    }

    /// Starts a flush round covering everything appended.
    fn start_round(&mut self) -> FlushTicket {
        self.round += 1;
        self.in_flight = Some(self.appended);
        FlushTicket {
            target: self.appended,
            generation: self.generation,
        }
    }
}

/// What [`GroupCommit::next_work_within`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Work to flush.
    Work(FlushTicket),
    /// Nothing arrived in time.
    TimedOut,
    /// Closing (with nothing left) or poisoned: the flush thread exits.
    Done,
}

/// A unit of work for the flush thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushTicket {
    /// Highest index appended when the work was taken.
    pub target: u64,
    generation: u64,
}

/// What [`GroupCommit::wait_or_lead`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The index is durable.
    Durable,
    /// No round is in flight and there is work: the caller runs this round
    /// (flushes, then [`GroupCommit::completed`]) and asks again.
    Lead(FlushTicket),
}

/// The shared state of group commit.
#[derive(Debug)]
pub struct GroupCommit {
    /// Waiters run the rounds (no flush thread is woken for work).
    led_by_waiters: bool,
    state: Mutex<State>,
    /// By round parity: signalled when that round completes (or on
    /// truncation, poison or stop, both).
    durable_changed: [Condvar; 2],
    /// Signalled when `appended` or `closing` changes.
    work_arrived: Condvar,
}

impl GroupCommit {
    /// Starts with everything up to `durable` already durable.
    pub fn new(durable: u64) -> GroupCommit {
        GroupCommit::with_leading(durable, false)
    }

    /// Starts with everything up to `durable` already durable; waiters run
    /// the flush rounds through [`GroupCommit::wait_or_lead`].
    pub fn new_led_by_waiters(durable: u64) -> GroupCommit {
        GroupCommit::with_leading(durable, true)
    }

    fn with_leading(durable: u64, led_by_waiters: bool) -> GroupCommit {
        GroupCommit {
            led_by_waiters,
            state: Mutex::new(State {
                appended: durable,
                durable,
                generation: 0,
                poisoned: false,
                closing: false,
                stopped: false,
                round: 0,
                in_flight: None,
                flusher_waiting: false,
            }),
            durable_changed: [Condvar::new(), Condvar::new()],
            work_arrived: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_all(&self) {
        for cv in &self.durable_changed {
            cv.notify_all();
        }
    }

    /// Records that every index up to `index` has been published. Call
    /// after the records' bytes are visible to the flush thread.
    pub fn appended(&self, index: u64) {
        let mut s = self.lock();
        if index > s.appended {
            s.appended = index;
            let wake = s.flusher_waiting && !self.led_by_waiters;
            drop(s);
            if wake {
                self.work_arrived.notify_one();
            }
        }
    }

    /// Marks `index` durable without a flush (persistence off).
    pub fn assume_durable(&self, index: u64) {
        let mut s = self.lock();
        let before = s.durable;
        s.appended = s.appended.max(index);
        s.durable = s.durable.max(index);
        drop(s);
        if index > before {
            self.wake_all();
        }
    }

    /// Blocks until `index` is durable, or fails if it never will be.
    pub fn wait_durable(&self, index: u64) -> Result<(), CommitError> {
        let mut s = self.lock();
        loop {
            // Durable before a failure stays durable.
            if s.durable >= index {
                return Ok(());
            }
            if s.poisoned {
                return Err(CommitError::Poisoned);
            }
            if s.stopped {
                return Err(CommitError::Closed);
            }
            let cv = &self.durable_changed[s.round_of(index)];
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// For a waiter that may run a flush round itself: answers
    /// [`Step::Durable`] once `index` is durable, [`Step::Lead`] when no
    /// round is in flight and something is appended but not durable (the
    /// caller must run that round), and otherwise sleeps. Fails as
    /// [`GroupCommit::wait_durable`] does.
    pub fn wait_or_lead(&self, index: u64) -> Result<Step, CommitError> {
        let mut s = self.lock();
        loop {
            if s.durable >= index {
                return Ok(Step::Durable);
            }
            if s.poisoned {
                return Err(CommitError::Poisoned);
            }
            if s.stopped {
                return Err(CommitError::Closed);
            }
            if s.in_flight.is_none() && s.appended > s.durable {
                return Ok(Step::Lead(s.start_round()));
            }
            let cv = &self.durable_changed[s.round_of(index)];
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// True when waiters run the flush rounds.
    pub fn led_by_waiters(&self) -> bool {
        self.led_by_waiters
    }

    /// The highest index known durable.
    pub fn durable(&self) -> u64 {
        self.lock().durable
    }

    /// True once a flush has failed.
    pub fn is_poisoned(&self) -> bool {
        self.lock().poisoned
    }

    /// For the flush thread: blocks until there is something to flush and
    /// answers the ticket, or `None` once closing with nothing left (or
    /// poisoned: a failed flush is never retried).
    pub fn next_work(&self) -> Option<FlushTicket> {
        let mut s = self.lock();
        loop {
            if s.poisoned {
                return None;
            }
            if s.in_flight.is_none() && s.appended > s.durable {
                return Some(s.start_round());
            }
            if s.closing {
                return None;
            }
            s.flusher_waiting = true;
            s = self.work_arrived.wait(s).unwrap_or_else(|p| p.into_inner());
            s.flusher_waiting = false;
        }
    }

    /// Like [`GroupCommit::next_work`], but gives up after `timeout` with
    /// [`Idle::TimedOut`] so the flush thread can do idle-time work. When
    /// waiters run the rounds, the thread takes only work that no round
    /// started within the whole `timeout` (or what is left at closing):
    /// otherwise, once it had taken one round, it would find work waiting
    /// after each and keep the lead from the waiters for good.
    pub fn next_work_within(&self, timeout: std::time::Duration) -> Idle {
        let mut s = self.lock();
        let round_at_start = s.round;
        let mut waited = false;
        loop {
            if s.poisoned {
                return Idle::Done;
            }
            let unled = !self.led_by_waiters || s.closing || (waited && s.round == round_at_start);
            if s.in_flight.is_none() && s.appended > s.durable && unled {
                return Idle::Work(s.start_round());
            }
            // A round in flight (run by a waiter) finishes before the
            // flush thread may stop.
            if s.closing && s.in_flight.is_none() {
                return Idle::Done;
            }
            if waited {
                return Idle::TimedOut;
            }
            s.flusher_waiting = true;
            let (guard, result) = self
                .work_arrived
                .wait_timeout(s, timeout)
                .unwrap_or_else(|p| p.into_inner());
            s = guard;
            s.flusher_waiting = false;
            waited = result.timed_out();
        }
    }

    /// Marks the log poisoned outside a ticket (an idle-time flush failed).
    pub fn poison(&self) {
        let mut s = self.lock();
        s.poisoned = true;
        drop(s);
        self.wake_all();
    }

    /// For the flush thread: the flush for `ticket` finished. `Ok` makes its
    /// target durable (unless a truncation intervened); `Err` poisons.
    pub fn completed(&self, ticket: FlushTicket, ok: bool) {
        let mut s = self.lock();
        let current = ok && ticket.generation == s.generation;
        if !ok {
            s.poisoned = true;
        } else if current && ticket.target > s.durable {
            s.durable = ticket.target;
        }
        s.in_flight = None;
        let cv = (s.round % 2) as usize;
        let work_left = s.appended > s.durable && !s.poisoned;
        drop(s);
        if current {
            // Every waiter of this round is covered; the next round's
            // waiters sleep on the other variable.
            self.durable_changed[cv].notify_all();
            if work_left && self.led_by_waiters {
                // One of them runs the next round.
                self.durable_changed[1 - cv].notify_one();
            }
        } else {
            self.wake_all();
        }
    }

    /// The log was truncated to end at `index`: nothing above it is
    /// appended or durable any more, and flushes in progress no longer count.
    pub fn truncated(&self, index: u64) {
        let mut s = self.lock();
        s.generation += 1;
        s.appended = index;
        s.durable = s.durable.min(index);
        drop(s);
        // Waiters chose their variable by the round in flight, which no
        // longer counts: let them choose again.
        self.wake_all();
    }

    /// Asks the flush thread to drain what was appended and exit.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closing = true;
        drop(s);
        self.work_arrived.notify_all();
    }

    /// The flush thread has exited (or there is none): waits that are not
    /// satisfied now never will be, and fail `Closed`.
    pub fn stopped(&self) {
        let mut s = self.lock();
        s.closing = true;
        s.stopped = true;
        drop(s);
        self.wake_all();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Waits until the flush thread's stand-in sleeps in
    /// `next_work_within`.
    fn until_flusher_waits(commit: &GroupCommit) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !commit.lock().flusher_waiting {
            assert!(std::time::Instant::now() < deadline, "the flush thread never waited");
            std::thread::yield_now();
        }
    }

    #[test]
    fn with_waiters_leading_the_thread_leaves_pending_work_to_them_while_rounds_run() {
        let commit = Arc::new(GroupCommit::new_led_by_waiters(0));
        commit.appended(1);
        let idle = {
            let commit = Arc::clone(&commit);
            std::thread::spawn(move || commit.next_work_within(Duration::from_secs(3)))
        };
        until_flusher_waits(&commit);
        // A waiter runs a round meanwhile (well within the delay; were it
        // not, the thread would take the work and this waiter would wait
        // for ever), and more is appended after it.
        let Ok(Step::Lead(ticket)) = commit.wait_or_lead(1) else {
            panic!("no round in flight: the waiter leads");
        };
        commit.completed(ticket, true);
        commit.appended(2);
        assert_eq!(idle.join().unwrap(), Idle::TimedOut);
        // The next waiter still leads.
        assert!(matches!(commit.wait_or_lead(2), Ok(Step::Lead(_))));
    }

    #[test]
    fn with_waiters_leading_the_thread_takes_work_nobody_flushed_within_the_delay() {
        let commit = GroupCommit::new_led_by_waiters(0);
        commit.appended(1);
        match commit.next_work_within(Duration::from_millis(20)) {
            Idle::Work(ticket) => assert_eq!(ticket.target, 1),
            other => panic!("unflushed work left: {other:?}"),
        }
    }

    /// What `next_work_within` answers with a delay of an hour, if it
    /// answers within 10 s: work taken at once, not after the delay.
    fn taken_at_once(commit: GroupCommit) -> Option<Idle> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(commit.next_work_within(Duration::from_secs(3600)));
        });
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    #[test]
    fn with_waiters_leading_a_closing_thread_drains_at_once() {
        let commit = GroupCommit::new_led_by_waiters(0);
        commit.appended(3);
        commit.close();
        assert!(matches!(taken_at_once(commit), Some(Idle::Work(t)) if t.target == 3));
    }

    #[test]
    fn the_flush_thread_alone_takes_work_at_once() {
        let commit = GroupCommit::new(0);
        commit.appended(1);
        assert!(matches!(taken_at_once(commit), Some(Idle::Work(t)) if t.target == 1));
    }
}
