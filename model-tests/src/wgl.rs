//! Linearizability checking for key/value register histories.
//!
//! A history is a list of client operations on keys, each with the time it
//! was invoked, the time its answer arrived and what the answer was. Every key
//! is an independent register that starts absent, so a history is
//! linearizable exactly when each key's sub-history is, and [`check`] decides
//! each key on its own.
//!
//! For one key, [`check_key`] runs the Wing & Gong search with Lowe's
//! memoization. The invocations and completions are laid out in one list
//! ordered by time. The search repeatedly picks an operation that was invoked
//! before the earliest completion still pending, checks it against a
//! sequential register, and removes it from the list; when it reaches a
//! completion whose operation it could not place, it undoes the most recent
//! choice and tries the next candidate. A cache of every (set of placed
//! operations, register value) pair already explored keeps the search from
//! repeating work, which makes histories with modest concurrency cheap to
//! check even when they hold thousands of operations.
//!
//! Operations whose outcome is [`Outcome::Unknown`] have no completion: they
//! may take effect at any point after their invocation, or never. The search
//! succeeds once every operation with a known outcome is placed, whatever
//! happened to the unknown ones. Each unknown write that may or may not have
//! happened doubles the space a failing search has to exhaust, so histories
//! with many of them can run into the step budget; [`Violation::Inconclusive`]
//! reports that case.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// Operation a client invoked on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Sets the register to `value`.
    Put {
        /// The value written.
        value: u64,
    },
    /// Reads the register.
    Get,
    /// Sets the register to `new` if it currently holds `expected`
    /// (`None` = absent).
    Cas {
        /// The value the register must hold for the swap to happen.
        expected: Option<u64>,
        /// The value written when the swap happens.
        new: u64,
    },
}

/// What the client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A put was acknowledged.
    Written,
    /// A get answered this value (None = key absent).
    Read(Option<u64>),
    /// A cas answered whether it swapped.
    Swapped(bool),
    /// No answer (timeout, connection lost, crash): the operation may or may
    /// not have taken effect, at any time after its invocation.
    Unknown,
}

/// One operation of a history: who issued it, on which key, what it was,
/// what came back, and when it started and finished.
///
/// `complete` is ignored for [`Outcome::Unknown`] (the operation is treated
/// as never finishing). Otherwise `invoke < complete`. Times are opaque,
/// strictly ordered ticks; an operation precedes another in real time only
/// when it completes strictly before the other is invoked, so an operation
/// completing at `t` overlaps one invoked at `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The client that issued the operation.
    pub client: u64,
    /// The key the operation addressed.
    pub key: u64,
    /// The operation.
    pub op: Op,
    /// What the client saw.
    pub outcome: Outcome,
    /// When the operation was invoked.
    pub invoke: u64,
    /// When the answer arrived (ignored for [`Outcome::Unknown`]).
    pub complete: u64,
}

/// Why a history failed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// No linearization exists for this key; carries the key and a
    /// human-readable explanation listing the key's events (at most ~40
    /// lines).
    NotLinearizable {
        /// The key whose sub-history has no linearization.
        key: u64,
        /// What went wrong, followed by the key's events.
        detail: String,
    },
    /// The search exceeded the step budget before deciding.
    Inconclusive {
        /// The key whose search was cut short.
        key: u64,
        /// How many search steps were spent on it.
        steps: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable { key, detail } => {
                write!(f, "key {key} is not linearizable: {detail}")
            }
            Violation::Inconclusive { key, steps } => {
                write!(f, "linearizability of key {key} undecided after {steps} search steps")
            }
        }
    }
}

impl std::error::Error for Violation {}

/// Checks every key separately (a register per key, initially absent). Keys
/// are independent, so the history is linearizable iff each key's
/// sub-history is.
///
/// Keys are checked in ascending order and the first violation found is
/// returned.
pub fn check(history: &[Event], step_budget_per_key: u64) -> Result<(), Violation> {
    let mut by_key: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    for event in history {
        by_key.entry(event.key).or_default().push(*event);
    }
    for (key, events) in &by_key {
        check_key(*key, None, events, step_budget_per_key)?;
    }
    Ok(())
}

/// Checks one key's events, starting from `initial`.
///
/// Every event must address `key`; an event for another key, an outcome that
/// does not fit its operation, or a known outcome that does not complete
/// after its invocation makes the history malformed, which is reported as
/// [`Violation::NotLinearizable`].
pub fn check_key(key: u64, initial: Option<u64>, events: &[Event], step_budget: u64) -> Result<(), Violation> {
    if let Some(detail) = malformed(key, events) {
        return Err(Violation::NotLinearizable { key, detail });
    }
    let mut search = Search::new(initial, events);
    match search.run(step_budget) {
        Verdict::Linearizable => Ok(()),
        Verdict::OutOfSteps(steps) => Err(Violation::Inconclusive { key, steps }),
        Verdict::Stuck => Err(Violation::NotLinearizable {
            key,
            detail: search.explain(key, initial, events),
        }),
    }
}

/// Most malformed events spelled out in a report.
const MAX_MALFORMED_LINES: usize = 10;
/// Most events listed in a report.
const MAX_EVENT_LINES: usize = 34;

/// Describes what is wrong with a malformed history, or `None` if every
/// event is well formed.
fn malformed(key: u64, events: &[Event]) -> Option<String> {
    let problems: Vec<String> = events
        .iter()
        .enumerate()
        .filter_map(|(index, event)| problem(key, event).map(|why| format!("  {}: {why}", describe(index, event))))
        .collect();
    if problems.is_empty() {
        return None;
    }
    let mut detail = format!("malformed history: {} event(s) cannot be checked", problems.len());
    for line in problems.iter().take(MAX_MALFORMED_LINES) {
        detail.push('\n');
        detail.push_str(line);
    }
    if problems.len() > MAX_MALFORMED_LINES {
        detail.push_str(&format!("\n  ... and {} more", problems.len() - MAX_MALFORMED_LINES));
    }
    Some(detail)
}

fn problem(key: u64, event: &Event) -> Option<String> {
    if event.key != key {
        return Some(format!("addresses key {} instead of key {key}", event.key));
    }
    let fits = matches!(
        (event.op, event.outcome),
        (_, Outcome::Unknown)
            | (Op::Put { .. }, Outcome::Written)
            | (Op::Get, Outcome::Read(_))
            | (Op::Cas { .. }, Outcome::Swapped(_))
    );
    if !fits {
        return Some(format!(
            "a {} cannot have the outcome {:?}",
            kind(event.op),
            event.outcome
        ));
    }
    if event.outcome != Outcome::Unknown && event.invoke >= event.complete {
        return Some(format!(
            "completes at {} which is not after its invocation at {}",
            event.complete, event.invoke
        ));
    }
    None
}

fn kind(op: Op) -> &'static str {
    match op {
        Op::Put { .. } => "put",
        Op::Get => "get",
        Op::Cas { .. } => "cas",
    }
}

struct Value(Option<u64>);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("absent"),
        }
    }
}

/// One line describing an event, e.g. `#3 client 2: cas(absent -> 7) swapped @ [10, 14]`.
fn describe(index: usize, event: &Event) -> String {
    let op = match event.op {
        Op::Put { value } => format!("put({value})"),
        Op::Get => "get".to_string(),
        Op::Cas { expected, new } => format!("cas({} -> {new})", Value(expected)),
    };
    let outcome = match event.outcome {
        Outcome::Written => "ok".to_string(),
        Outcome::Read(v) => format!("read {}", Value(v)),
        Outcome::Swapped(true) => "swapped".to_string(),
        Outcome::Swapped(false) => "not swapped".to_string(),
        Outcome::Unknown => "unknown".to_string(),
    };
    let span = if event.outcome == Outcome::Unknown {
        format!("[{}, never)", event.invoke)
    } else {
        format!("[{}, {}]", event.invoke, event.complete)
    };
    format!("#{index} client {}: {op} {outcome} @ {span}", event.client)
}

/// Applies an operation with the outcome its client saw to the register
/// holding `state`. Returns the register's next value, or `None` if the
/// outcome cannot be produced from `state`. Unknown outcomes always apply,
/// with the effect the operation would have had.
fn apply(op: Op, outcome: Outcome, state: Option<u64>) -> Option<Option<u64>> {
    match (op, outcome) {
        (Op::Put { value }, Outcome::Written | Outcome::Unknown) => Some(Some(value)),
        (Op::Get, Outcome::Read(seen)) => (seen == state).then_some(state),
        (Op::Get, Outcome::Unknown) => Some(state),
        (Op::Cas { expected, new }, Outcome::Swapped(true)) => (state == expected).then_some(Some(new)),
        (Op::Cas { expected, .. }, Outcome::Swapped(false)) => (state != expected).then_some(state),
        (Op::Cas { expected, new }, Outcome::Unknown) => Some(if state == expected { Some(new) } else { state }),
        _ => None,
    }
}

/// An explored search configuration: which operations are placed, and the
/// register value they leave behind.
#[derive(PartialEq, Eq, Hash)]
struct Config {
    placed: Vec<u64>,
    state: Option<u64>,
}

enum Verdict {
    Linearizable,
    Stuck,
    OutOfSteps(u64),
}

/// The list of invocations and completions for one key, with the search
/// state over it.
///
/// Nodes live in parallel vectors: node 0 is the head sentinel, the last
/// node the tail sentinel, and the rest are invocations and completions in
/// time order. Placing an operation unlinks its nodes; undoing the placement
/// relinks them in reverse order, which restores the list exactly because
/// placements are undone last-in first-out.
struct Search {
    /// Event index of each candidate operation (unknown gets are left out:
    /// they neither constrain nor change the register).
    ops: Vec<usize>,
    op: Vec<Op>,
    outcome: Vec<Outcome>,
    /// Completion node of each operation; `None` for unknown outcomes.
    completion: Vec<Option<usize>>,
    /// Operation of each node (unused for the sentinels).
    node_op: Vec<usize>,
    is_invocation: Vec<bool>,
    next: Vec<usize>,
    prev: Vec<usize>,
    tail: usize,
    state: Option<u64>,
    placed: Vec<u64>,
    /// Placed operations, each with its invocation node and the register
    /// value before it.
    stack: Vec<(usize, Option<u64>)>,
    known_left: usize,
    /// Most operations ever placed at once, the register value then, and
    /// the first operation whose completion stopped the search at that
    /// depth.
    deepest: usize,
    deepest_state: Option<u64>,
    stalled_on: Option<usize>,
}

impl Search {
    fn new(initial: Option<u64>, events: &[Event]) -> Self {
        let ops: Vec<usize> = (0..events.len())
            .filter(|&i| !(events[i].op == Op::Get && events[i].outcome == Outcome::Unknown))
            .collect();
        let op: Vec<Op> = ops.iter().map(|&i| events[i].op).collect();
        let outcome: Vec<Outcome> = ops.iter().map(|&i| events[i].outcome).collect();

        // (time, completion?, operation): at equal times invocations sort
        // first, so an operation completing at `t` overlaps one invoked at `t`.
        let mut points: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (id, &index) in ops.iter().enumerate() {
            let event = &events[index];
            points.push((event.invoke, false, id));
            if event.outcome != Outcome::Unknown {
                points.push((event.complete, true, id));
            }
        }
        points.sort_unstable();

        let tail = points.len() + 1;
        let mut node_op = vec![usize::MAX; tail + 1];
        let mut is_invocation = vec![false; tail + 1];
        let mut completion = vec![None; ops.len()];
        for (position, &(_, is_completion, id)) in points.iter().enumerate() {
            let node = position + 1;
            node_op[node] = id;
            is_invocation[node] = !is_completion;
            if is_completion {
                completion[id] = Some(node);
            }
        }
        let known_left = completion.iter().filter(|c| c.is_some()).count();

        Search {
            placed: vec![0; ops.len().div_ceil(64)],
            ops,
            op,
            outcome,
            completion,
            node_op,
            is_invocation,
            next: (1..=tail + 1).collect(),
            prev: (0..=tail).map(|n| n.saturating_sub(1)).collect(),
            tail,
            state: initial,
            stack: Vec::new(),
            known_left,
            deepest: 0,
            deepest_state: initial,
            stalled_on: None,
        }
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    fn toggle(&mut self, id: usize) {
        self.placed[id / 64] ^= 1 << (id % 64);
    }

    fn run(&mut self, budget: u64) -> Verdict {
        let mut cache: HashSet<Config> = HashSet::new();
        let mut steps = 0u64;
        let mut cursor = self.next[0];
        loop {
            if self.known_left == 0 {
                return Verdict::Linearizable;
            }
            if steps >= budget {
                return Verdict::OutOfSteps(steps);
            }
            steps += 1;
            // Every completion left in the list belongs to an unplaced known
            // operation, so the tail is only reachable once none are left.
            debug_assert!(cursor != self.tail, "ran past the last completion");
            let id = self.node_op[cursor];
            if self.is_invocation[cursor] {
                if self.try_place(id, cursor, &mut cache) {
                    cursor = self.next[0];
                } else {
                    cursor = self.next[cursor];
                }
            } else {
                // The earliest pending completion belongs to an operation
                // that could not be placed before it: undo the last choice
                // and try the candidate after it.
                if self.stack.len() == self.deepest && self.stalled_on.is_none() {
                    self.stalled_on = Some(id);
                }
                let Some((node, before)) = self.stack.pop() else {
                    return Verdict::Stuck;
                };
                let placed_id = self.node_op[node];
                self.toggle(placed_id);
                self.state = before;
                if let Some(done) = self.completion[placed_id] {
                    self.relink(done);
                    self.known_left += 1;
                }
                self.relink(node);
                cursor = self.next[node];
            }
        }
    }

    /// Places operation `id` (invoked at `node`) next in the linearization
    /// if its outcome fits the register and the resulting configuration has
    /// not been explored yet.
    fn try_place(&mut self, id: usize, node: usize, cache: &mut HashSet<Config>) -> bool {
        let Some(after) = apply(self.op[id], self.outcome[id], self.state) else {
            return false;
        };
        let known = self.completion[id].is_some();
        if !known && after == self.state {
            // An unknown operation that leaves the register as it was can
            // just as well never have happened, which leaves it available
            // for later: placing it here can only narrow the search.
            return false;
        }
        self.toggle(id);
        let probe = Config {
            placed: std::mem::take(&mut self.placed),
            state: after,
        };
        let fresh = !cache.contains(&probe);
        if fresh {
            cache.insert(Config {
                placed: probe.placed.clone(),
                state: after,
            });
        }
        self.placed = probe.placed;
        if !fresh {
            self.toggle(id);
            return false;
        }
        self.stack.push((node, self.state));
        self.state = after;
        self.unlink(node);
        if let Some(done) = self.completion[id] {
            self.unlink(done);
            self.known_left -= 1;
        }
        if self.stack.len() > self.deepest {
            self.deepest = self.stack.len();
            self.deepest_state = after;
            self.stalled_on = None;
        }
        true
    }

    /// Explains a failed search: how far it got, where it stalled, and the
    /// key's events (a window around the stall if there are many).
    fn explain(&self, key: u64, initial: Option<u64>, events: &[Event]) -> String {
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| (events[i].invoke, events[i].client, i));
        let stalled = self.stalled_on.map(|id| self.ops[id]);

        let mut detail = format!(
            "no linearization of the {} event(s) on key {key} starting from {}; \
             at most {} operation(s) could be placed in order (register then: {})",
            events.len(),
            Value(initial),
            self.deepest,
            Value(self.deepest_state),
        );
        if let Some(index) = stalled {
            detail.push_str(&format!(
                ", after which this one could not be: {}",
                describe(index, &events[index])
            ));
        }

        let (start, end) = if order.len() <= MAX_EVENT_LINES {
            (0, order.len())
        } else {
            let centre = stalled
                .and_then(|index| order.iter().position(|&i| i == index))
                .unwrap_or(0);
            let start = centre
                .saturating_sub(MAX_EVENT_LINES / 2)
                .min(order.len() - MAX_EVENT_LINES);
            (start, start + MAX_EVENT_LINES)
        };
        detail.push_str("\nevents by invocation time:");
        if start > 0 {
            detail.push_str(&format!("\n  ... {start} earlier event(s)"));
        }
        for &index in &order[start..end] {
            let mark = if Some(index) == stalled {
                "  <- search stalled here"
            } else {
                ""
            };
            detail.push_str(&format!("\n  {}{mark}", describe(index, &events[index])));
        }
        if end < order.len() {
            detail.push_str(&format!("\n  ... {} later event(s)", order.len() - end));
        }
        detail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: u64 = 1;
    const BUDGET: u64 = 1_000_000;

    fn event(client: u64, op: Op, outcome: Outcome, invoke: u64, complete: u64) -> Event {
        Event {
            client,
            key: KEY,
            op,
            outcome,
            invoke,
            complete,
        }
    }

    fn put(client: u64, value: u64, invoke: u64, complete: u64) -> Event {
        event(client, Op::Put { value }, Outcome::Written, invoke, complete)
    }

    fn get(client: u64, seen: Option<u64>, invoke: u64, complete: u64) -> Event {
        event(client, Op::Get, Outcome::Read(seen), invoke, complete)
    }

    fn cas(client: u64, expected: Option<u64>, new: u64, swapped: bool, invoke: u64, complete: u64) -> Event {
        event(
            client,
            Op::Cas { expected, new },
            Outcome::Swapped(swapped),
            invoke,
            complete,
        )
    }

    fn unknown(event: Event) -> Event {
        Event {
            outcome: Outcome::Unknown,
            complete: 0,
            ..event
        }
    }

    fn on_key(key: u64, events: &[Event]) -> Vec<Event> {
        events.iter().map(|e| Event { key, ..*e }).collect()
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, bool, Vec<Event>)> = vec![
            ("empty history", true, vec![]),
            (
                "sequential put then get",
                true,
                vec![put(1, 5, 0, 1), get(1, Some(5), 2, 3)],
            ),
            (
                "sequential absent, put, overwrite",
                true,
                vec![
                    get(1, None, 0, 1),
                    put(1, 5, 2, 3),
                    put(2, 6, 4, 5),
                    get(3, Some(6), 6, 7),
                ],
            ),
            (
                "sequential get of the wrong value",
                false,
                vec![put(1, 5, 0, 1), get(1, Some(6), 2, 3)],
            ),
            (
                "sequential get of absent after a put",
                false,
                vec![put(1, 5, 0, 1), get(2, None, 2, 3)],
            ),
            (
                "concurrent put and get, read new",
                true,
                vec![put(1, 1, 0, 10), get(2, Some(1), 5, 15)],
            ),
            (
                "concurrent put and get, read old",
                true,
                vec![put(1, 1, 0, 10), get(2, None, 5, 15)],
            ),
            (
                "stale read after a completed put",
                false,
                vec![put(1, 1, 0, 5), put(2, 2, 6, 10), get(3, Some(1), 11, 12)],
            ),
            (
                "intervals touching at one tick overlap",
                true,
                vec![put(1, 1, 0, 5), get(2, None, 5, 8)],
            ),
            (
                "intervals one tick apart do not",
                false,
                vec![put(1, 1, 0, 5), get(2, None, 6, 8)],
            ),
            (
                "reads cannot go back in time",
                false,
                vec![put(1, 1, 0, 100), get(2, Some(1), 10, 20), get(3, None, 30, 40)],
            ),
            (
                "read of a value never written",
                false,
                vec![put(1, 1, 0, 1), get(2, Some(9), 2, 3)],
            ),
            (
                "cas from absent",
                true,
                vec![cas(1, None, 5, true, 0, 1), get(1, Some(5), 2, 3)],
            ),
            (
                "cas race, both swap",
                false,
                vec![
                    put(1, 0, 0, 1),
                    cas(2, Some(0), 1, true, 2, 10),
                    cas(3, Some(0), 2, true, 3, 11),
                ],
            ),
            (
                "cas race, one swaps",
                true,
                vec![
                    put(1, 0, 0, 1),
                    cas(2, Some(0), 1, true, 2, 10),
                    cas(3, Some(0), 2, false, 3, 11),
                    get(1, Some(1), 12, 13),
                ],
            ),
            (
                "cas race, the loser's value is read",
                false,
                vec![
                    put(1, 0, 0, 1),
                    cas(2, Some(0), 1, true, 2, 10),
                    cas(3, Some(0), 2, false, 3, 11),
                    get(1, Some(2), 12, 13),
                ],
            ),
            (
                "cas race, neither swaps",
                false,
                vec![
                    put(1, 0, 0, 1),
                    cas(2, Some(0), 1, false, 2, 10),
                    cas(3, Some(0), 2, false, 3, 11),
                ],
            ),
            (
                "cas fails after a concurrent put changed the value",
                true,
                vec![put(1, 0, 0, 1), put(2, 3, 2, 10), cas(3, Some(0), 2, false, 3, 11)],
            ),
            (
                "unknown put later observed",
                true,
                vec![unknown(put(1, 1, 0, 0)), get(2, Some(1), 10, 12)],
            ),
            (
                "unknown put never observed",
                true,
                vec![unknown(put(1, 1, 0, 0)), get(2, None, 10, 12), get(3, None, 20, 22)],
            ),
            (
                "unknown put observed, then undone",
                false,
                vec![unknown(put(1, 1, 0, 0)), get(2, Some(1), 10, 12), get(3, None, 13, 14)],
            ),
            (
                "unknown put observed long after a later put",
                true,
                vec![
                    unknown(put(1, 1, 0, 0)),
                    put(2, 2, 5, 6),
                    get(2, Some(2), 7, 8),
                    get(3, Some(1), 100, 101),
                ],
            ),
            (
                "unknown put observed before its invocation",
                false,
                vec![get(2, Some(1), 0, 5), unknown(put(1, 1, 6, 0))],
            ),
            (
                "unknown cas whose effect is observed",
                true,
                vec![
                    put(1, 1, 0, 2),
                    unknown(cas(2, Some(1), 2, true, 3, 0)),
                    get(3, Some(2), 10, 12),
                ],
            ),
            (
                "unknown cas observed though its expectation failed",
                false,
                vec![
                    put(1, 1, 0, 2),
                    unknown(cas(2, Some(3), 2, true, 3, 0)),
                    get(3, Some(2), 10, 12),
                ],
            ),
            (
                "unknown get is ignored",
                true,
                vec![put(1, 1, 0, 2), unknown(get(2, Some(7), 3, 0)), get(3, Some(1), 10, 12)],
            ),
            (
                "only unknown operations",
                true,
                vec![unknown(put(1, 1, 0, 0)), unknown(cas(2, None, 3, true, 1, 0))],
            ),
        ];
        for (name, valid, events) in cases {
            let result = check(&events, BUDGET);
            match (valid, &result) {
                (true, Ok(())) => {}
                (false, Err(Violation::NotLinearizable { key, .. })) => assert_eq!(*key, KEY, "{name}"),
                _ => panic!(
                    "{name}: expected {}, got {result:?}",
                    if valid { "Ok" } else { "a violation" }
                ),
            }
        }
    }

    #[test]
    fn malformed_histories_are_reported() {
        let cases: Vec<(&str, Event)> = vec![
            ("get answered written", event(1, Op::Get, Outcome::Written, 0, 1)),
            (
                "put answered a read",
                event(1, Op::Put { value: 1 }, Outcome::Read(Some(1)), 0, 1),
            ),
            (
                "cas answered written",
                event(1, Op::Cas { expected: None, new: 1 }, Outcome::Written, 0, 1),
            ),
            (
                "put answered swapped",
                event(1, Op::Put { value: 1 }, Outcome::Swapped(true), 0, 1),
            ),
            ("completes at its invocation", put(1, 1, 5, 5)),
            ("completes before its invocation", get(1, None, 5, 4)),
        ];
        for (name, bad) in cases {
            let events = [put(2, 1, 0, 1), bad];
            match check(&events, BUDGET) {
                Err(Violation::NotLinearizable { key, detail }) => {
                    assert_eq!(key, KEY, "{name}");
                    assert!(detail.contains("malformed"), "{name}: {detail}");
                }
                other => panic!("{name}: expected a malformed history, got {other:?}"),
            }
        }
    }

    #[test]
    fn check_key_rejects_events_of_other_keys() {
        let events = [
            put(1, 1, 0, 1),
            Event {
                key: 2,
                ..get(1, Some(1), 2, 3)
            },
        ];
        let err = check_key(KEY, None, &events, BUDGET).unwrap_err();
        assert!(
            matches!(&err, Violation::NotLinearizable { key: KEY, detail } if detail.contains("key 2")),
            "{err}"
        );
    }

    #[test]
    fn check_key_starts_from_the_initial_value() {
        let events = [get(1, Some(5), 0, 1), cas(1, Some(5), 6, true, 2, 3)];
        assert_eq!(check_key(KEY, Some(5), &events, BUDGET), Ok(()));
        assert!(matches!(
            check_key(KEY, None, &events, BUDGET),
            Err(Violation::NotLinearizable { .. })
        ));
    }

    #[test]
    fn one_bad_key_among_good_ones_is_named() {
        let good = [put(1, 1, 0, 10), get(2, Some(1), 5, 15), get(3, Some(1), 20, 21)];
        let bad = [put(1, 1, 0, 5), put(2, 2, 6, 10), get(3, Some(1), 11, 12)];
        let mut history = on_key(3, &good);
        history.extend(on_key(7, &bad));
        history.extend(on_key(11, &good));
        history.sort_by_key(|e| e.invoke);
        let err = check(&history, BUDGET).unwrap_err();
        match &err {
            Violation::NotLinearizable { key, detail } => {
                assert_eq!(*key, 7);
                assert!(detail.contains("read 1"), "{detail}");
            }
            other => panic!("expected key 7 to fail, got {other:?}"),
        }
        assert!(err.to_string().starts_with("key 7 is not linearizable"), "{err}");
    }

    #[test]
    fn exhausted_budget_is_inconclusive() {
        let events: Vec<Event> = (0..8)
            .map(|c| put(c, c, c, 100 + c))
            .chain([get(9, Some(3), 200, 201)])
            .collect();
        assert_eq!(check(&events, 1), Err(Violation::Inconclusive { key: KEY, steps: 1 }));
        assert_eq!(check(&events, BUDGET), Ok(()));
        let shown = Violation::Inconclusive { key: 4, steps: 10 }.to_string();
        assert!(shown.contains("key 4") && shown.contains("10"), "{shown}");
    }

    #[test]
    fn report_stays_short_and_points_at_the_stall() {
        let mut events: Vec<Event> = (0..300).map(|i| put(i % 3, i, 10 * i, 10 * i + 5)).collect();
        events.push(get(9, Some(7), 1500, 1501));
        let Err(Violation::NotLinearizable { detail, .. }) = check(&events, BUDGET) else {
            panic!("stale read accepted");
        };
        assert!(
            detail.lines().count() <= 40,
            "{} lines:\n{detail}",
            detail.lines().count()
        );
        assert!(detail.contains("search stalled here"), "{detail}");
        assert!(detail.contains("#300 client 9: get read 7"), "{detail}");
    }

    /// A small linear congruential generator, so the histories are the same
    /// on every run.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// How to generate a history.
    struct Shape {
        seed: u64,
        clients: u64,
        ops_per_client: u64,
        keys: u64,
        values: u64,
        /// Out of 1000, how often a put or cas loses its answer.
        unknown_per_mille: u64,
    }

    /// Generates a linearizable history: each client issues operations one
    /// after another, every operation takes effect on a real register at a
    /// random instant inside its interval, and the outcomes are what the
    /// register answered. Operations that lose their answer take effect at
    /// some later instant, or not at all.
    fn simulate(shape: &Shape) -> Vec<Event> {
        let mut rng = Lcg(shape.seed);
        // (instant the operation takes effect, event index)
        let mut effects: Vec<(u64, usize)> = Vec::new();
        let mut events = Vec::new();
        for client in 0..shape.clients {
            let mut clock = rng.below(8);
            for _ in 0..shape.ops_per_client {
                let invoke = clock + 1 + rng.below(4);
                let complete = invoke + 1 + rng.below(12);
                clock = complete;
                let key = rng.below(shape.keys);
                let op = match rng.below(10) {
                    0..=3 => Op::Put {
                        value: rng.below(shape.values),
                    },
                    4..=7 => Op::Get,
                    _ => {
                        let expected = rng.below(shape.values + 1);
                        Op::Cas {
                            expected: (expected < shape.values).then_some(expected),
                            new: rng.below(shape.values),
                        }
                    }
                };
                // Times are scaled so an effect instant can fall strictly
                // between two ticks of the client-visible clock.
                let (invoke, complete) = (invoke * 16, complete * 16);
                let lost = op != Op::Get && rng.below(1000) < shape.unknown_per_mille;
                let index = events.len();
                if !lost {
                    effects.push((invoke + 1 + rng.below(complete - invoke - 1), index));
                } else if rng.below(2) == 0 {
                    effects.push((invoke + 1 + rng.below(16 * 200), index));
                }
                let outcome = if lost { Outcome::Unknown } else { Outcome::Written };
                events.push(Event {
                    client,
                    key,
                    op,
                    outcome,
                    invoke,
                    complete,
                });
            }
        }
        effects.sort_unstable();
        let mut registers: Vec<Option<u64>> = vec![None; shape.keys as usize];
        for (_, index) in effects {
            let event = &mut events[index];
            let register = &mut registers[event.key as usize];
            let answer = match event.op {
                Op::Put { value } => {
                    *register = Some(value);
                    Outcome::Written
                }
                Op::Get => Outcome::Read(*register),
                Op::Cas { expected, new } => {
                    let swapped = *register == expected;
                    if swapped {
                        *register = Some(new);
                    }
                    Outcome::Swapped(swapped)
                }
            };
            if event.outcome != Outcome::Unknown {
                event.outcome = answer;
            }
        }
        events
    }

    /// Replaces one read (picked by `pick`) with a value no one wrote.
    fn corrupt_a_read(events: &mut [Event], pick: u64) -> u64 {
        let reads: Vec<usize> = (0..events.len())
            .filter(|&i| matches!(events[i].outcome, Outcome::Read(_)))
            .collect();
        let index = reads[(pick % reads.len() as u64) as usize];
        events[index].outcome = Outcome::Read(Some(u64::MAX));
        events[index].key
    }

    #[test]
    fn randomized_single_key_histories() {
        for seed in 1..=4 {
            let shape = Shape {
                seed,
                clients: 8,
                ops_per_client: 40,
                keys: 1,
                values: 4,
                unknown_per_mille: 0,
            };
            let mut events = simulate(&shape);
            assert_eq!(check(&events, BUDGET), Ok(()), "seed {seed}");
            let key = corrupt_a_read(&mut events, seed * 7919);
            match check(&events, BUDGET) {
                Err(Violation::NotLinearizable { key: bad, .. }) => assert_eq!(bad, key, "seed {seed}"),
                other => panic!("seed {seed}: corrupted read accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn randomized_histories_with_lost_answers() {
        for seed in 11..=14 {
            let shape = Shape {
                seed,
                clients: 8,
                ops_per_client: 40,
                keys: 1,
                values: 4,
                unknown_per_mille: 15,
            };
            let mut events = simulate(&shape);
            assert!(
                events.iter().any(|e| e.outcome == Outcome::Unknown),
                "seed {seed}: nothing was lost"
            );
            assert_eq!(check(&events, BUDGET), Ok(()), "seed {seed}");
            corrupt_a_read(&mut events, seed * 104_729);
            assert!(
                matches!(check(&events, BUDGET), Err(Violation::NotLinearizable { .. })),
                "seed {seed}: corrupted read accepted"
            );
        }
    }

    #[test]
    fn randomized_multi_key_histories() {
        let shape = Shape {
            seed: 99,
            clients: 8,
            ops_per_client: 60,
            keys: 4,
            values: 3,
            unknown_per_mille: 20,
        };
        let mut events = simulate(&shape);
        assert_eq!(check(&events, BUDGET), Ok(()));
        let key = corrupt_a_read(&mut events, 12_345);
        match check(&events, BUDGET) {
            Err(Violation::NotLinearizable { key: bad, .. }) => assert_eq!(bad, key),
            other => panic!("corrupted read accepted: {other:?}"),
        }
    }

    #[test]
    fn thousands_of_operations_on_one_key() {
        let shape = Shape {
            seed: 5,
            clients: 4,
            ops_per_client: 1000,
            keys: 1,
            values: 16,
            unknown_per_mille: 0,
        };
        let events = simulate(&shape);
        assert_eq!(check(&events, BUDGET), Ok(()));
    }
}
