//! Three real `loomd` processes replicating over loopback: writes commit
//! through the leader, followers redirect, the leader's `kill -9` loses no
//! acknowledged write, and a restarted member recovers from its directory.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{
    client, leader_of, loomd, members_arg, put_until_ok, spawn, start, three_members, wait_for_leader, Member, Proc,
    ProxiedCluster,
};
use loomcache_client::{Client, ClientConfig, Connection, Reply};
use loomcache_wire::{NamedValue, Payload, QueuePoll};

/// A client on its own thread that polls queue `q` with `wait`: the item
/// (or none) and how long the poll took.
fn spawn_poller(members: &[Member], wait: Duration) -> std::thread::JoinHandle<(Option<Vec<u8>>, Duration)> {
    let members = members.to_vec();
    std::thread::spawn(move || {
        let c = client(&members);
        let started = Instant::now();
        let got = c.queue("q").poll_wait(wait).unwrap();
        (got, started.elapsed())
    })
}

/// Every member but the one at index `skip`.
fn all_but(members: &[Member], skip: usize) -> Vec<Member> {
    members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, m)| *m)
        .collect()
}

/// Three members started in a temporary directory, and a client that has
/// seen a write commit (so a leader is elected).
fn three_up() -> (tempfile::TempDir, Vec<Member>, Vec<Proc>, Client) {
    let tmp = tempfile::tempdir().unwrap();
    let members = three_members();
    let arg = members_arg(&members);
    let procs: Vec<Proc> = members.iter().map(|m| start(m, &arg, tmp.path())).collect();
    let c = client(&members);
    put_until_ok(&c, b"k", b"v");
    (tmp, members, procs, c)
}

#[test]
fn three_processes_replicate_survive_kill_9_and_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let members = three_members();
    let arg = members_arg(&members);
    let mut procs: Vec<Option<Proc>> = members.iter().map(|m| Some(start(m, &arg, tmp.path()))).collect();
    let c = client(&members);

    // The first write waits out the election.
    put_until_ok(&c, b"k0", b"v0");
    for i in 1..100u32 {
        c.map("m")
            .set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
            .unwrap();
    }
    // Every member flushed its log for those writes, and says how long
    // its flushes took.
    for m in &members {
        let at = only(m.client);
        let flushes = info_count(&at, "log_flushes");
        let (total, max) = (
            info_count(&at, "log_flush_us_total"),
            info_count(&at, "log_flush_us_max"),
        );
        assert!(
            flushes >= 1 && max <= total,
            "member {}: {flushes} flushes, {total} us, max {max} us",
            m.id
        );
    }
    // Followers name the leader, and redirect linearizable reads. On a
    // loaded machine an election may move the leadership between asking
    // who leads and asking a follower: both are asked again until they
    // agree.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (victim, follower) = loop {
        let victim = wait_for_leader(&members, Duration::from_secs(10)).expect("a leader");
        let follower = (victim + 1) % 3;
        let direct = Client::connect(ClientConfig {
            addrs: vec![members[follower].client],
            redirects_max: 0,
            ..ClientConfig::default()
        })
        .unwrap();
        let write = direct.map("m").set(b"x", b"y");
        let read = direct.map("m").get(b"k0");
        match (&write, &read) {
            (
                Err(loomcache_client::ClientError::Redirect { leader_id, .. }),
                Err(loomcache_client::ClientError::Redirect { .. }),
            ) if *leader_id == members[victim].id => break (victim, follower),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!(
                "expected a write and a read at a follower to redirect to node {}, got {write:?} and {read:?}",
                members[victim].id
            ),
        }
    };
    // Opted in, a follower answers reads from its own state (which may
    // trail; it catches up).
    let stale = Client::connect(ClientConfig {
        addrs: vec![members[follower].client],
        redirects_max: 0,
        stale_reads: true,
        ..ClientConfig::default()
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stale.map("m").get(b"k99").unwrap() != Some(b"v99".to_vec()) {
        assert!(Instant::now() < deadline, "the follower never caught up");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stale.map("m").get(b"k0").unwrap(), Some(b"v0".to_vec()));

    // kill -9 the leader; the other two elect a new one.
    drop(procs[victim].take());
    for i in 100..200u32 {
        let key = format!("k{i}");
        put_until_ok(&c, key.as_bytes(), format!("v{i}").as_bytes());
    }
    for i in 0..200u32 {
        assert_eq!(
            c.map("m").get(format!("k{i}").as_bytes()).unwrap(),
            Some(format!("v{i}").into_bytes()),
            "acknowledged write k{i} survived"
        );
    }

    // The killed member restarts from its directory and catches up; then
    // another member goes, and the restarted one is part of the majority.
    procs[victim] = Some(start(&members[victim], &arg, tmp.path()));
    std::thread::sleep(Duration::from_secs(2));
    let other = (victim + 1) % 3;
    drop(procs[other].take());
    for i in 0..200u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match c.map("m").get(format!("k{i}").as_bytes()) {
                Ok(v) => {
                    assert_eq!(v, Some(format!("v{i}").into_bytes()), "k{i} after recovery");
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("read never succeeded: {e}"),
            }
        }
    }
}

/// A leader paused (SIGSTOP) past its lease is replaced; writes go on at
/// the new leader; once continued, the old leader steps down and every
/// read, wherever it lands, sees every acknowledged write.
#[test]
fn a_paused_leader_is_replaced_and_serves_no_stale_reads() {
    let (_tmp, members, procs, c) = three_up();
    put_until_ok(&c, b"k", b"before");
    let old = leader_of(&members).expect("a leader");
    let pid = procs[old].child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // Well past the lease and the election timeout (30 ticks of 10 ms).
    std::thread::sleep(Duration::from_millis(1500));
    let others = all_but(&members, old);
    let c2 = client(&others);
    put_until_ok(&c2, b"k", b"after");
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    // Asked directly, the old leader never answers the value from before.
    let direct = Client::connect(ClientConfig {
        addrs: vec![members[old].client],
        retry_budget: Duration::from_secs(20),
        ..ClientConfig::default()
    })
    .unwrap();
    for _ in 0..20 {
        match direct.map("m").get(b"k") {
            Ok(v) => assert_eq!(v, Some(b"after".to_vec()), "stale read from the paused leader"),
            Err(e) => panic!("read failed: {e}"),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let now = leader_of(&members).expect("a leader");
    assert_ne!(now, old, "the paused leader stepped down");
}

/// A poll that waits is held at the leader until an offer commits, or
/// until its wait ends, as on a single node.
#[test]
fn a_waiting_poll_is_held_at_the_leader_until_an_offer_commits() {
    let (_tmp, members, _procs, c) = three_up();

    let started = Instant::now();
    assert_eq!(c.queue("q").poll_wait(Duration::from_millis(400)).unwrap(), None);
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "an empty poll answered after {:?}, before its wait",
        started.elapsed()
    );

    // The poll is held at the leader before the offer is made, so it is
    // the offer that answers it.
    let at_leader = only(members[leader_of(&members).expect("a leader")].client);
    let poller = spawn_poller(&members, Duration::from_secs(8));
    wait_parked(&at_leader, 1);
    assert!(c.queue("q").offer(b"item").unwrap());
    let (got, waited) = poller.join().unwrap();
    assert_eq!(got, Some(b"item".to_vec()));
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    assert_eq!(c.queue("q").poll().unwrap(), None, "the item was taken once");
}

/// A waiting poll woken for an item that another consumer takes first
/// waits on for the rest of its wait: it answers an item, or nothing only
/// once the wait is over. Every item offered is taken exactly once.
#[test]
fn a_waiting_poll_that_loses_its_item_waits_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const WAIT: Duration = Duration::from_millis(1500);
    const ITEMS: usize = 40;
    let (_tmp, members, _procs, c) = three_up();

    let stop = Arc::new(AtomicBool::new(false));
    // Consumers that poll without waiting, as fast as they can: their
    // polls are in the log ahead of a waiting poll proposed for an item.
    let grabbers: Vec<_> = (0..3)
        .map(|_| {
            let (members, stop) = (members.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let c = client(&members);
                let mut taken = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(item) = c.queue("q").poll().unwrap() {
                        taken.push(item);
                    }
                }
                taken
            })
        })
        .collect();
    let waiter = {
        let (members, stop) = (members.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let c = client(&members);
            let mut taken = Vec::new();
            let mut empty_after = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match c.queue("q").poll_wait(WAIT).unwrap() {
                    Some(item) => taken.push(item),
                    None => empty_after.push(started.elapsed()),
                }
            }
            (taken, empty_after)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..ITEMS {
        assert!(c.queue("q").offer(format!("item-{i}").as_bytes()).unwrap());
        std::thread::sleep(Duration::from_millis(25));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<Vec<u8>> = grabbers.into_iter().flat_map(|g| g.join().unwrap()).collect();
    let (waiter_took, empty_after) = waiter.join().unwrap();
    for waited in &empty_after {
        assert!(
            *waited >= WAIT - Duration::from_millis(100),
            "a waiting poll answered empty after {waited:?}, before its wait"
        );
    }
    all.extend(waiter_took);
    // What no consumer got to before the stop (a slow commit on a loaded
    // machine) is still in the queue, once.
    while let Some(item) = c.queue("q").poll().unwrap() {
        all.push(item);
    }
    all.sort();
    let mut expected: Vec<Vec<u8>> = (0..ITEMS).map(|i| format!("item-{i}").into_bytes()).collect();
    expected.sort();
    assert_eq!(all, expected, "every item taken exactly once");
}

/// A client of the member at `addr` alone, with no retries.
fn only(addr: std::net::SocketAddr) -> Client {
    Client::connect(ClientConfig {
        addrs: vec![addr],
        retry_budget: Duration::ZERO,
        ..ClientConfig::default()
    })
    .unwrap()
}

/// A counter in the `NODE_INFO` of the member `c` is connected to.
fn info_count(c: &Client, key: &str) -> u64 {
    let info = c.info().unwrap();
    let (_, value) = info
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key}"));
    value.parse().unwrap()
}

/// Waits (up to 10 s) until the member `c` is connected to holds `n`
/// parked polls, by its `parked_polls` in `NODE_INFO`.
fn wait_parked(c: &Client, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = info_count(c, "parked_polls");
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{now} polls parked, not {n}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A poll's answer on `conn`: the item, or none.
fn poll_answer(reply: loomcache_client::Result<Reply>) -> Option<Vec<u8>> {
    match reply.unwrap() {
        Reply::Value(v) => v,
        other => panic!("a poll answered {other:?}"),
    }
}

/// A waiting poll that reaches the leader while its queue holds an item is
/// proposed at once; when a poll ahead of it in the log takes that item,
/// it waits on for the rest of its wait instead of answering none.
#[test]
fn a_waiting_poll_proposed_for_an_item_taken_first_waits_on() {
    let (_tmp, members, _procs, c) = three_up();
    let leader = members[leader_of(&members).expect("a leader")].client;
    let at_leader = only(leader);
    // Attempts until the waiting poll is handled while its queue still
    // holds x: a loaded machine may preempt the leader between the two
    // polls of one write, and the first then applies before the waiting
    // one is handled; that one finds the queue empty and is parked on
    // arrival, never proposed.
    let mut attempt = 0u64;
    loop {
        assert!(
            attempt < 20,
            "in {attempt} attempts the waiting poll was never proposed for the item taken first"
        );
        let queue = format!("taken-{attempt}");
        attempt += 1;
        let before = info_count(&at_leader, "polls_parked_again");
        assert!(c.queue(&queue).offer(b"x").unwrap());
        // Both polls in one write, handled in one pass before the first
        // applies: the queue still holds x when the waiting one is handled.
        let mut conn = Connection::connect(leader, 9_100 + attempt, Duration::from_secs(2), Duration::from_secs(10))
            .expect("the leader answers");
        let (poll, wait) = (
            Payload::QueuePoll(QueuePoll {
                name: &queue,
                wait_ms: 0,
            }),
            Payload::QueuePoll(QueuePoll {
                name: &queue,
                wait_ms: 8_000,
            }),
        );
        let ids = conn.send_many(&[(&poll, Some(1)), (&wait, Some(2))]).unwrap();
        let (at_once, waiting) = (ids[0], ids[1]);
        let (id, reply) = conn.recv().unwrap();
        assert_eq!((id, poll_answer(reply)), (at_once, Some(b"x".to_vec())));
        wait_parked(&at_leader, 1);
        // Proposed, beaten and parked after that (once), or parked on
        // arrival (not at all).
        let parked_again = info_count(&at_leader, "polls_parked_again") - before;
        assert!(parked_again <= 1, "parked again {parked_again} times");
        assert!(c.queue(&queue).offer(b"y").unwrap());
        let (id, reply) = conn.recv().unwrap();
        assert_eq!((id, poll_answer(reply)), (waiting, Some(b"y".to_vec())));
        if parked_again == 1 {
            return;
        }
    }
}

/// A waiting poll woken for an item that another consumer takes first
/// keeps its place among the waiting polls: the next item goes to it, not
/// to a poll that began waiting after it.
#[test]
fn a_waiting_poll_that_loses_its_item_keeps_its_place() {
    let (_tmp, members, _procs, c) = three_up();
    let leader = members[leader_of(&members).expect("a leader")].client;
    let at_leader = only(leader);
    let parked = |n: u64| wait_parked(&at_leader, n);
    let poller = |queue: &str| {
        let (members, queue) = (members.clone(), queue.to_owned());
        std::thread::spawn(move || {
            client(&members)
                .queue(&queue)
                .poll_wait(Duration::from_secs(20))
                .unwrap()
        })
    };
    let item = |v: &[u8]| Some(v.to_vec());
    // Attempts until the woken poll has lost its item once: it is proposed
    // only once the offer has applied, and the poll without wait, in the
    // same write as the offer, may apply before the woken poll is even
    // proposed (when both commit in one round); then it stays in its
    // place, never proposed.
    let mut attempt = 0u64;
    loop {
        assert!(attempt < 20, "in {attempt} attempts the woken poll never lost its item");
        let queue = format!("fair-{attempt}");
        attempt += 1;
        let first = poller(&queue);
        parked(1);
        let second = poller(&queue);
        parked(2);
        let before = info_count(&at_leader, "polls_parked_again");
        // An offer and a poll that does not wait, in one write to the
        // leader: the poll is proposed before the offer applies, and so
        // before the waiting poll that the applied offer wakes.
        let mut conn = Connection::connect(leader, 9_000 + attempt, Duration::from_secs(2), Duration::from_secs(10))
            .expect("the leader answers");
        let offer = Payload::QueueOffer(NamedValue {
            name: &queue,
            value: b"x",
        });
        let grab = Payload::QueuePoll(QueuePoll {
            name: &queue,
            wait_ms: 0,
        });
        let ids = conn.send_many(&[(&offer, Some(1)), (&grab, Some(2))]).unwrap();
        let mut grabbed = None;
        for _ in 0..2 {
            let (id, reply) = conn.recv().unwrap();
            if id == ids[1] {
                grabbed = poll_answer(reply);
            }
        }
        if grabbed.is_some() {
            // The first waiter is parked (again, or still), ahead of the
            // second.
            parked(2);
            let exercised = info_count(&at_leader, "polls_parked_again") > before;
            assert!(c.queue(&queue).offer(b"y").unwrap());
            parked(1);
            assert!(c.queue(&queue).offer(b"z").unwrap());
            let got = (first.join().unwrap(), second.join().unwrap());
            assert_eq!(got, (item(b"y"), item(b"z")), "the first waiting poll kept its place");
            if exercised {
                return;
            }
        } else {
            parked(1);
            assert!(c.queue(&queue).offer(b"y").unwrap());
            let got = (first.join().unwrap(), second.join().unwrap());
            assert_eq!(got, (item(b"x"), item(b"y")), "waiting polls are served in order");
        }
        parked(0);
    }
}

/// Hands leadership to the member at index `to`, asked through `c`, and
/// waits (up to 20 s) until that member reports itself leader. A handover
/// that does not finish within an election timeout is dropped, and an
/// election may then pick another member (a loaded machine may be that
/// slow): the handover is asked for again about every second until `to`
/// leads.
fn hand_leadership(c: &Client, members: &[Member], to: usize) {
    let id = members[to].id;
    c.transfer_leader(id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut asked = Instant::now();
    while leader_of(members) != Some(to) {
        assert!(Instant::now() < deadline, "leadership did not move to node {id}");
        if asked.elapsed() >= Duration::from_secs(1) {
            // Whatever it answers (it may time out on a loaded machine),
            // whether the leadership moved is read from the members.
            let _ = c.transfer_leader(id);
            asked = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A poll waiting at a leader that hands leadership over still receives an
/// item offered at the new leader, before its wait ends.
#[test]
fn a_waiting_poll_follows_the_leadership() {
    // Longer than the leadership may take to move on a loaded machine.
    const WAIT: Duration = Duration::from_secs(15);
    let (_tmp, members, _procs, c) = three_up();
    let old = wait_for_leader(&members, Duration::from_secs(10)).expect("a leader");
    let poller = spawn_poller(&members, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    hand_leadership(&c, &members, (old + 1) % members.len());
    // Time for the poll to be redirected and parked at the new leader.
    std::thread::sleep(Duration::from_millis(300));
    let offered = Instant::now();
    assert!(c.queue("q").offer(b"item").unwrap());
    let (got, waited) = poller.join().unwrap();
    assert_eq!(got, Some(b"item".to_vec()), "answered after {waited:?}");
    // Answered by the offer, not at the end of its wait.
    assert!(
        offered.elapsed() < Duration::from_secs(5),
        "the poll was answered {:?} after the offer, {waited:?} into its wait",
        offered.elapsed()
    );
}

/// A poll redirected to a new leader waits there only what is left of its
/// wait, not the whole wait again.
#[test]
fn a_redirected_poll_waits_only_what_is_left_of_its_wait() {
    let (_tmp, members, _procs, c) = three_up();
    let old = wait_for_leader(&members, Duration::from_secs(10)).expect("a leader");
    let wait = Duration::from_secs(4);
    let before_handover = Duration::from_millis(2000);
    // Timed from before the poll is sent, so that the handover, and the
    // redirect, come `before_handover` into the wait at the earliest.
    let started = Instant::now();
    let poller = {
        let members = members.clone();
        std::thread::spawn(move || {
            let got = client(&members).queue("q").poll_wait(wait).unwrap();
            (got, started.elapsed())
        })
    };
    std::thread::sleep(before_handover);
    hand_leadership(&c, &members, (old + 1) % members.len());
    let (got, waited) = poller.join().unwrap();
    assert_eq!(got, None);
    assert!(
        waited >= wait - Duration::from_millis(200),
        "answered early: {waited:?}"
    );
    // Waiting the whole wait again at the new leader would take longer
    // than `before_handover + wait` (6 s); what is left of the wait ends
    // at about `wait` (4 s), later on a loaded machine by the redirect,
    // the search for the new leader and the node's deadline checks.
    assert!(waited < before_handover + wait, "the redirected poll waited {waited:?}");
}

/// A poll waiting at a leader that is cut off from the other members is
/// answered NO_LEADER once that leader steps down, instead of waiting out
/// its wait where no offer can commit: its client then finds the new
/// leader through the other members and waits there.
#[test]
fn a_waiting_poll_leaves_a_leader_cut_off_from_the_group() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ProxiedCluster::new();
    let _procs: Vec<Proc> = (0..3).map(|i| cluster.start(i, tmp.path())).collect();
    let members = cluster.members.clone();
    let c = client(&members);
    put_until_ok(&c, b"k", b"v");
    let old = leader_of(&members).expect("a leader");
    let poller = spawn_poller(&members, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    cluster.isolate(old);
    let others = all_but(&members, old);
    wait_for_leader(&others, Duration::from_secs(10)).expect("the other two elect a leader");
    // The offer goes to the new leader; the cut-off one could never commit it.
    assert!(client(&others).queue("q").offer(b"item").unwrap());
    let (got, waited) = poller.join().unwrap();
    cluster.heal();
    assert_eq!(got, Some(b"item".to_vec()), "answered after {waited:?}");
    assert!(
        waited < Duration::from_secs(9),
        "the poll waited out its wait: {waited:?}"
    );
}

/// A member whose data settings differ from the others' takes no part in
/// the group: its peers refuse its connections, so it neither votes nor
/// learns the log, while the other two go on. Restarted with the group's
/// settings, it catches up.
#[test]
fn a_member_with_other_data_settings_is_kept_out_until_they_match() {
    let tmp = tempfile::tempdir().unwrap();
    let members = three_members();
    let arg = members_arg(&members);
    let mut procs: Vec<Option<Proc>> = members[..2].iter().map(|m| Some(start(m, &arg, tmp.path()))).collect();
    let mut odd = loomd(&members[2], &arg, tmp.path());
    odd.args(["--data-memory-max-bytes", "1000000"]);
    procs.push(Some(spawn(odd)));
    let c = client(&members[..2]);
    put_until_ok(&c, b"k", b"v");
    for i in 0..50u32 {
        c.map("m").set(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let commit = |m: &Member| info_count(&only(m.client), "raft_commit");
    let leader = wait_for_leader(&members[..2], Duration::from_secs(10)).expect("a leader among the two");
    let committed = commit(&members[leader]);
    assert!(committed > 50, "{committed}");
    // Time for several heartbeats and elections: nothing reaches it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        info_count(&only(members[2].client), "raft_applied") < 5,
        "the member with other settings applied the group's entries"
    );
    assert_ne!(leader_of(&members).map(|l| members[l].id), Some(3));

    drop(procs[2].take());
    procs[2] = Some(start(&members[2], &arg, tmp.path()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while info_count(&only(members[2].client), "raft_applied") < committed {
        assert!(
            Instant::now() < deadline,
            "the member with the group's settings never caught up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
