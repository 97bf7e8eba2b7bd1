//! loom model of the replication and commit path: a leader's and a
//! follower's driver threads, each with its own flush thread behind the
//! log's group commit, in a group of three whose third member is down. The
//! drivers run the real consensus core and the real group-commit handoff,
//! in the order the daemon's driver handles a Ready (send what may go now,
//! persist and wait for the flush, send what needed the persistence, apply
//! the committed entries, answer, `advance`). The property: a write is
//! answered only once its entry is durable on a majority (the leader and
//! the follower, as the third member is down) and applied on the leader.
#![cfg(loom)]

use std::sync::Arc as StdArc;

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::mpsc::{channel, Receiver, Sender};
use loom::sync::Arc;
use loom::thread;
use loomcache_consensus::{ConfState, Config, EntryKind, MemStorage, Message, NodeId, Raft, Ready, Role};
use loomcache_log::GroupCommit;

const LEADER: NodeId = 1;
const FOLLOWER: NodeId = 2;

/// One member's disk: records are published (written), reported to group
/// commit, and made durable by its flush thread.
struct Disk {
    commit: GroupCommit,
    published: AtomicU64,
    flushed: AtomicU64,
}

impl Disk {
    fn new(durable: u64) -> Disk {
        Disk {
            commit: GroupCommit::new(durable),
            published: AtomicU64::new(durable),
            flushed: AtomicU64::new(durable),
        }
    }
}

fn flush_thread(disk: Arc<Disk>) {
    while let Some(ticket) = disk.commit.next_work() {
        let covered = disk.published.load(Ordering::Acquire);
        disk.flushed.store(covered, Ordering::Release);
        disk.commit.completed(ticket, true);
    }
    disk.commit.stopped();
}

fn config(id: NodeId) -> Config {
    let mut cfg = Config::new(id, 0);
    cfg.election_timeout_ticks = 10;
    cfg.heartbeat_interval_ticks = 1;
    cfg.lease_margin_ticks = 3;
    cfg
}

/// Elects the leader and commits its first entry on both live members,
/// single-threaded, with writes durable at once: the state the model
/// starts from.
fn elected_pair() -> (Raft<MemStorage>, Raft<MemStorage>) {
    let conf = ConfState::with_voters([LEADER, FOLLOWER, 3]);
    let mut nodes = [
        Raft::new(config(LEADER), MemStorage::new_with_conf(conf.clone())).unwrap(),
        Raft::new(config(FOLLOWER), MemStorage::new_with_conf(conf)).unwrap(),
    ];
    // Past the lease promise a fresh member keeps for an election timeout.
    for node in nodes.iter_mut() {
        for _ in 0..10 {
            node.tick();
        }
        while node.has_ready() {
            let ready = node.ready();
            let storage = node.storage_mut();
            storage.append(&ready.entries);
            if let Some(hs) = ready.hard_state {
                storage.set_hard_state(hs);
            }
            node.advance();
        }
    }
    nodes[0].campaign();
    let mut queue: Vec<Message> = Vec::new();
    loop {
        for node in nodes.iter_mut() {
            while node.has_ready() {
                let ready = node.ready();
                let storage = node.storage_mut();
                storage.append(&ready.entries);
                if let Some(hs) = ready.hard_state {
                    storage.set_hard_state(hs);
                }
                queue.extend(ready.messages.into_iter().chain(ready.persisted_messages));
                node.advance();
            }
        }
        queue.retain(|m| m.to == LEADER || m.to == FOLLOWER);
        if queue.is_empty() {
            break;
        }
        for m in std::mem::take(&mut queue) {
            let to = if m.to == LEADER { 0 } else { 1 };
            nodes[to].step(m).unwrap();
        }
    }
    assert_eq!(nodes[0].role(), Role::Leader);
    let [leader, follower] = nodes;
    assert_eq!(follower.committed(), leader.committed());
    (leader, follower)
}

/// Writes a Ready's entries and hard state, and waits until the flush
/// thread made the entries durable (the driver's step 3).
fn persist(raft: &mut Raft<MemStorage>, disk: &Disk, ready: &Ready) {
    if let Some(last) = ready.entries.last().map(|e| e.index) {
        raft.storage_mut().append(&ready.entries);
        disk.published.store(last, Ordering::Release);
        disk.commit.appended(last);
        disk.commit.wait_durable(last).unwrap();
    }
    if let Some(hs) = ready.hard_state {
        raft.storage_mut().set_hard_state(hs);
    }
}

/// The follower's driver: steps what the leader sends and handles each
/// Ready; acknowledgements leave only after the flush covered the entries.
fn follower_driver(
    mut raft: Raft<MemStorage>,
    disk: Arc<Disk>,
    inbox: Receiver<Option<Message>>,
    out: Sender<Message>,
) {
    while let Ok(Some(m)) = inbox.recv() {
        raft.step(m).unwrap();
        while raft.has_ready() {
            let mut ready = raft.ready();
            for m in std::mem::take(&mut ready.messages) {
                let _ = out.send(m);
            }
            persist(&mut raft, &disk, &ready);
            for m in std::mem::take(&mut ready.persisted_messages) {
                if m.to == LEADER {
                    let _ = out.send(m);
                }
            }
            raft.advance();
        }
    }
}

#[test]
fn a_write_is_answered_only_when_durable_on_a_majority_and_applied() {
    loom::model(|| {
        let (mut leader, follower) = elected_pair();
        let base = leader.last_index();
        let leader_disk = Arc::new(Disk::new(base));
        let follower_disk = Arc::new(Disk::new(base));
        let flushers: Vec<_> = [leader_disk.clone(), follower_disk.clone()]
            .into_iter()
            .map(|d| thread::spawn(move || flush_thread(d)))
            .collect();
        let (to_follower, follower_inbox) = channel::<Option<Message>>();
        let (to_leader, leader_inbox) = channel::<Message>();
        let f = {
            let disk = follower_disk.clone();
            thread::spawn(move || follower_driver(follower, disk, follower_inbox, to_leader))
        };

        // The leader's driver, on this thread.
        let proposal = leader.propose(StdArc::from(&b"write"[..]), 0).unwrap();
        let applied = AtomicU64::new(base);
        let mut answered = false;
        while !answered {
            while leader.has_ready() {
                let mut ready = leader.ready();
                // Appends leave while the leader's own write is under way.
                for m in std::mem::take(&mut ready.messages) {
                    if m.to == FOLLOWER {
                        let _ = to_follower.send(Some(m));
                    }
                }
                persist(&mut leader, &leader_disk, &ready);
                for m in std::mem::take(&mut ready.persisted_messages) {
                    if m.to == FOLLOWER {
                        let _ = to_follower.send(Some(m));
                    }
                }
                for entry in &ready.committed_entries {
                    applied.store(entry.index, Ordering::Release);
                    if entry.kind == EntryKind::Normal && entry.index == proposal.index {
                        // The answer is released here.
                        let index = proposal.index;
                        assert!(
                            leader_disk.flushed.load(Ordering::Acquire) >= index,
                            "answered before the leader's flush covered the entry"
                        );
                        assert!(
                            follower_disk.flushed.load(Ordering::Acquire) >= index,
                            "answered before a majority had the entry durable"
                        );
                        assert!(applied.load(Ordering::Acquire) >= index, "answered before applying");
                        answered = true;
                    }
                }
                leader.advance();
            }
            if !answered {
                let m = leader_inbox.recv().expect("the follower answers");
                leader.step(m).unwrap();
            }
        }
        let _ = to_follower.send(None);
        f.join().unwrap();
        leader_disk.commit.close();
        follower_disk.commit.close();
        for t in flushers {
            t.join().unwrap();
        }
    });
}
