//! The Raft papers' tricky cases, each driven step by step through a
//! hand-controlled network. Section numbers refer to the Raft paper
//! (Ongaro & Ousterhout, 2014) and Ongaro's thesis (2014).

mod common;

use std::sync::Arc;

use common::{is_append, Net};
use loomcache_consensus::{ConfChange, ConfChangeItem, Error, Message, MessageBody, ReadVia, Role, Storage};

/// Raft §5.4.2, Figure 8: an entry from an earlier term that sits on a
/// majority is not committed by counting replicas; it commits only once
/// an entry of the leader's current term does. Otherwise a later leader
/// could overwrite an entry that was reported committed.
#[test]
fn figure_8_old_term_entries_commit_only_through_the_current_term() {
    // One entry per append message, so replication can stop between
    // entries.
    let mut net = Net::with(&[1, 2, 3, 4, 5], &[], |c| c.max_message_bytes = 1);
    net.elect(1);
    let term1 = net.raft(1).term();
    // (a) S1 appends X at index 2; only S2 receives it.
    for peer in [3, 4, 5] {
        net.cut_link(1, peer);
    }
    let x = net.propose(1, b"x");
    net.stabilize();
    assert_eq!(net.raft(2).term_at(x.index), Some(term1));
    assert_eq!(net.raft(3).term_at(x.index), None);
    // (b) S1 fails; S5 wins with S3 and S4 and appends its own entry at
    // index 2, which nobody receives.
    net.heal();
    net.crash(1);
    net.expire_leases(&[2, 3, 4, 5]);
    net.campaign(5);
    while net.raft(5).role() != Role::Leader {
        assert!(net.deliver_first(|m| !is_append(m)), "S5 could not win");
    }
    net.drop_queue();
    let term5 = net.raft(5).term();
    assert_eq!(net.raft(5).term_at(x.index), Some(term5), "S5's own entry at index 2");
    net.crash(5);
    // (c) S1 comes back and wins a later term with S2, S3 and S4. It
    // replicates X to S3 and S4, but not yet its own term's entry.
    net.restart(1);
    net.expire_leases(&[1, 2, 3, 4]);
    // S1's first pre-vote is refused and teaches it the newer term; its
    // second succeeds.
    for _ in 0..3 {
        net.campaign(1);
        while net.raft(1).role() != Role::Leader && net.deliver_first(|m| !is_append(m)) {}
        if net.raft(1).role() == Role::Leader {
            break;
        }
    }
    assert_eq!(net.raft(1).role(), Role::Leader, "S1 could not win");
    let term1b = net.raft(1).term();
    assert!(term1b > term5);
    // Deliver appends and their answers, but hold back any carrying the
    // new term's entry.
    let current_entry = x.index + 1;
    // (An append S3 must refuse, for lack of its predecessor, is let
    // through: the refusal makes S1 back up to X.)
    loop {
        let last = [net.raft(3).last_index(), net.raft(4).last_index()];
        let delivered = net.deliver_first(|m| match &m.body {
            MessageBody::Append {
                prev_index, entries, ..
            } => {
                (m.to == 3 || m.to == 4)
                    && (entries.iter().all(|e| e.index < current_entry) || *prev_index > last[m.to as usize - 3])
            }
            MessageBody::AppendResponse { .. } => m.from == 3 || m.from == 4,
            _ => false,
        });
        if !delivered {
            break;
        }
    }
    assert_eq!(net.raft(3).term_at(x.index), Some(term1), "X reached S3");
    assert_eq!(net.raft(4).term_at(x.index), Some(term1), "X reached S4");
    assert!(
        net.raft(1).committed() < x.index,
        "S1 knows X is on S1, S3 and S4, a majority, but must not commit it by counting replicas (commit = {})",
        net.raft(1).committed()
    );
    // (d) Had S1 failed now, S5 could win with S2, S3 and S4, since its
    // last term is newer, and overwrite X everywhere: X was rightly not
    // committed.
    let holds_current = |net: &Net, id| net.raft(id).term_at(current_entry) == Some(term1b);
    assert!(!holds_current(&net, 3) && !holds_current(&net, 4));
    // (e) Once S1's own-term entry reaches a majority, X commits with it.
    net.stabilize();
    assert!(net.raft(1).committed() >= current_entry);
    assert_eq!(net.raft(1).term_at(x.index), Some(term1));
    assert!(net.applied_data(1).contains(&b"x".to_vec()));
}

/// Ticks every node once per round, delivering messages in between.
fn lockstep(net: &mut Net, rounds: usize) {
    let ids: Vec<u64> = net.nodes.keys().copied().collect();
    for _ in 0..rounds {
        for &id in &ids {
            net.tick(id, 1);
        }
        net.stabilize();
    }
}

/// Like [`lockstep`] for every node but `skip`, for as many rounds as it
/// takes one of them to lead (at most `rounds`).
fn lockstep_others(net: &mut Net, skip: u64, rounds: usize) {
    let ids: Vec<u64> = net.nodes.keys().copied().filter(|&id| id != skip).collect();
    for _ in 0..rounds {
        for &id in &ids {
            net.tick(id, 1);
        }
        net.stabilize();
        if ids.iter().any(|&id| net.raft(id).role() == Role::Leader) {
            return;
        }
    }
}

/// Thesis §9.6: a node cut off from the cluster keeps timing out, but with
/// pre-vote it never raises its term, so when it returns it does not
/// depose a healthy leader.
#[test]
fn pre_vote_stops_a_partitioned_node_from_disrupting() {
    let mut net = Net::new(3);
    net.elect(1);
    let term = net.raft(1).term();
    net.isolate(3);
    lockstep(&mut net, 250);
    assert_eq!(net.raft(3).term(), term, "pre-votes leave the term unchanged");
    net.heal();
    net.campaign(3);
    net.stabilize();
    assert_eq!(net.leader(), Some(1));
    assert_eq!(net.raft(1).term(), term, "the leader was not disturbed");

    // Without pre-vote the same partition raises the isolated node's term,
    // and its return forces an election.
    let mut net = Net::with(&[1, 2, 3], &[], |c| c.pre_vote = false);
    net.elect(1);
    let term = net.raft(1).term();
    net.isolate(3);
    lockstep(&mut net, 250);
    assert!(net.raft(3).term() > term + 5);
    net.heal();
    net.tick(1, 1);
    net.stabilize();
    assert!(
        net.raft(1).term() > term,
        "the old leader was deposed by the higher term"
    );
}

/// Thesis §4.2.3 and §6.2: a node that heard from a leader within the
/// election timeout ignores campaigns (check-quorum), which is also the
/// promise the leader lease rests on; a campaign started by leadership
/// transfer is exempt.
#[test]
fn voters_in_contact_with_a_leader_ignore_campaigns() {
    let mut net = Net::new(3);
    net.elect(1);
    let term = net.raft(1).term();
    // Node 3 cannot hear the leader; 2 still can.
    net.cut_link(1, 3);
    net.tick(3, 25);
    net.campaign(3);
    net.stabilize();
    assert_eq!(
        net.raft(2).term(),
        term,
        "2 ignored 3's campaign while in contact with 1"
    );
    assert_eq!(net.leader(), Some(1));
    // A restarted node keeps the promise too: it waits an election
    // timeout before it votes.
    net.heal();
    net.stabilize();
    net.crash(2);
    net.restart(2);
    net.isolate(1);
    net.campaign(3);
    net.stabilize();
    assert_ne!(net.raft(3).role(), Role::Leader, "the restarted node refused");
    net.expire_leases(&[2, 3]);
    net.campaign(3);
    net.stabilize();
    assert_eq!(net.raft(3).role(), Role::Leader, "after the timeout it votes");
}

/// Thesis §6.4.1: a leader serves reads from its lease only while a quorum
/// acknowledged it recently; after a partition the lease runs out before
/// any other node can be elected, and reads then need a quorum round.
#[test]
fn lease_expires_after_a_partition() {
    let mut net = Net::new(3);
    net.elect(1);
    net.tick(1, 1);
    net.stabilize();
    assert!(net.raft(1).has_lease());
    net.raft_mut(1).read_index(1).unwrap();
    net.process(1);
    assert_eq!(net.read_states[&1].last().unwrap().via, ReadVia::Lease);

    net.isolate(1);
    let lease_ticks = 10 - 3;
    let mut ticks_with_lease = 0;
    for _ in 0..lease_ticks + 1 {
        for id in [1, 2, 3] {
            net.tick(id, 1);
        }
        net.stabilize();
        if net.raft(1).has_lease() {
            ticks_with_lease += 1;
            assert!(
                [2, 3].iter().all(|&id| net.raft(id).role() != Role::Leader),
                "another leader while the lease holds"
            );
        }
    }
    assert!(ticks_with_lease < lease_ticks, "lease outlived its bound");
    assert!(!net.raft(1).has_lease(), "lease expired");
    assert_eq!(net.raft(1).lease_until_tick(), None);
    // A read now waits for a quorum round that cannot complete.
    let before = net.read_states[&1].len();
    net.raft_mut(1).read_index(2).unwrap();
    net.process(1);
    assert_eq!(net.read_states[&1].len(), before, "no quorum, no read");
    // Meanwhile the others keep their promise: no leader while node 1
    // could still believe in its lease.
    assert_eq!(net.leader(), Some(1));
    lockstep_others(&mut net, 1, 40);
    let new_leader = net.leader().filter(|&l| l != 1).expect("2 or 3 took over");
    // The old leader learns of the new term and steps down.
    net.heal();
    net.tick(new_leader, 1);
    net.stabilize();
    assert_eq!(net.raft(1).role(), Role::Follower);
    assert_eq!(
        net.read_states[&1].len(),
        before,
        "the pending read was dropped, never answered"
    );
}

/// Raft §6 / thesis §4.3: a joint change that removes the leader. The
/// leader keeps managing the cluster while joint, leaves the joint
/// configuration, then steps down; the remaining voters elect a leader
/// and keep committing.
#[test]
fn joint_change_that_removes_the_leader() {
    let mut net = Net::with(&[1, 2, 3], &[4], common::no_tweak);
    net.elect(1);
    let change = ConfChange {
        items: vec![ConfChangeItem::AddVoter(4), ConfChangeItem::Remove(1)],
        context: Vec::new(),
    };
    net.raft_mut(1).propose_conf_change(change, 0).unwrap();
    net.stabilize();
    for _ in 0..3 {
        net.tick(1, 1);
        net.stabilize();
    }
    let conf = net.raft(2).conf_state().clone();
    assert_eq!(conf.voters, vec![2, 3, 4]);
    assert!(conf.voters_outgoing.is_empty(), "the joint configuration was left");
    assert_ne!(net.raft(1).role(), Role::Leader, "the removed leader stepped down");
    net.expire_leases(&[2, 3, 4]);
    net.campaign(2);
    net.stabilize();
    assert_eq!(net.leader(), Some(2));
    let p = net.propose(2, b"after");
    net.stabilize();
    assert!(net.raft(4).committed() >= p.index);
    assert!(net.applied_data(4).contains(&b"after".to_vec()));
}

/// Raft §6: a leader change between entering and leaving the joint
/// configuration. The new leader is elected by both halves and leaves the
/// joint configuration itself.
#[test]
fn joint_change_survives_a_leader_change_in_between() {
    let mut net = Net::with(&[1, 2, 3], &[4], common::no_tweak);
    net.elect(1);
    let change = ConfChange {
        items: vec![ConfChangeItem::AddVoter(4), ConfChangeItem::Remove(3)],
        context: Vec::new(),
    };
    net.raft_mut(1).propose_conf_change(change, 0).unwrap();
    net.process(1);
    // Deliver until the leader has applied the entering entry (and so
    // proposed the leaving one), then lose it before anything more goes
    // out.
    while !net.raft(1).conf_state().is_joint() {
        assert!(net.deliver_one(), "the change never applied on the leader");
    }
    net.drop_queue();
    net.isolate(1);
    // Node 2 may or may not have applied the entering entry yet; either way
    // it must be elected by both halves and finish the change.
    net.expire_leases(&[2, 3, 4]);
    net.campaign(2);
    net.stabilize();
    assert_eq!(net.raft(2).role(), Role::Leader, "elected without the old leader");
    for _ in 0..3 {
        net.tick(2, 1);
        net.stabilize();
    }
    let conf = net.raft(2).conf_state().clone();
    assert!(!conf.is_joint(), "left the joint configuration: {conf:?}");
    assert!(conf.voters.contains(&4) && !conf.voters.contains(&3));
}

/// Raft §7: a follower far behind gets the snapshot in chunks while the
/// leader keeps appending; appends that race the transfer are refused
/// until the snapshot is in, and the follower ends identical.
#[test]
fn snapshot_install_races_appends() {
    let mut net = Net::with(&[1, 2, 3], &[], |c| {
        c.snapshot_chunk_bytes = 8;
        c.max_inflight_messages = 4;
    });
    net.elect(1);
    net.isolate(3);
    for i in 0..30u8 {
        net.propose(1, &[i; 3]);
    }
    net.stabilize();
    // The leader snapshots and compacts, so 3 can only catch up by
    // snapshot.
    let applied = net.raft(1).applied();
    let conf = net.raft(1).conf_state().clone();
    let state: Vec<u8> = net.applied_data(1).concat();
    net.raft_mut(1)
        .storage_mut()
        .create_snapshot(applied, conf, Arc::from(state.clone()));
    net.heal();
    // Interleave: new proposals while chunks are in flight, chunks
    // duplicated, and appends delivered ahead of chunks.
    let mut step = 0;
    while net.raft(3).storage().snapshot().unwrap().meta.index < applied {
        step += 1;
        assert!(step < 500, "snapshot never installed");
        if step % 3 == 0 {
            net.propose(1, &[(step as u8).wrapping_add(100); 3]);
        }
        net.tick(1, 1);
        if let Some(chunk) = net
            .queue
            .iter()
            .find(|m| matches!(m.body, MessageBody::Snapshot { .. }))
            .cloned()
        {
            net.queue.push_back(chunk);
        }
        net.deliver_first(is_append);
        for _ in 0..6 {
            net.deliver_one();
        }
    }
    net.stabilize();
    for _ in 0..3 {
        net.tick(1, 1);
        net.stabilize();
    }
    assert_eq!(net.raft(3).storage().snapshot().unwrap().data.to_vec(), state);
    assert_eq!(
        net.log_of(3),
        net.log_of(1)[net.log_of(1).len() - net.log_of(3).len()..].to_vec()
    );
    assert_eq!(net.raft(3).committed(), net.raft(1).committed());
}

/// The lease's end as a tick: only a leader with an entry of its term
/// committed has one, and no other node is elected before the old leader's
/// clock reaches it, however the partition falls.
#[test]
fn no_leader_is_elected_before_the_published_lease_ends() {
    let mut net = Net::new(3);
    net.elect(1);
    net.tick(1, 1);
    net.stabilize();
    let until = net
        .raft(1)
        .lease_until_tick()
        .expect("a leader with a quorum round has a lease");
    assert!(until > net.raft(1).now_ticks());
    for id in [2, 3] {
        assert_eq!(net.raft(id).lease_until_tick(), None, "followers hold no lease");
    }

    net.isolate(1);
    let mut last = until;
    for _ in 0..100 {
        for id in [1, 2, 3] {
            net.tick(id, 1);
        }
        net.stabilize();
        if let Some(t) = net.raft(1).lease_until_tick() {
            assert!(net.raft(1).now_ticks() < t);
            last = t;
        }
        if [2, 3].iter().any(|&id| net.raft(id).role() == Role::Leader) {
            assert!(
                net.raft(1).now_ticks() >= last,
                "elected at tick {} before the lease's end {last}",
                net.raft(1).now_ticks()
            );
            return;
        }
    }
    panic!("the majority side never elected a leader");
}

/// Thesis §3.10: leadership transfer brings the target up to date, then
/// tells it to campaign at once; voters disregard their lease for it.
#[test]
fn leadership_transfer_with_timeout_now() {
    let mut net = Net::new(3);
    net.elect(1);
    net.cut_link(1, 3);
    net.propose(1, b"a");
    net.stabilize();
    net.heal();
    net.raft_mut(1).transfer_leader(3).unwrap();
    assert_eq!(
        net.raft_mut(1).propose(Arc::from(&b"b"[..]), 0),
        Err(Error::TransferInProgress)
    );
    assert!(!net.raft(1).has_lease(), "a transferring leader gives up its lease");
    assert_eq!(net.raft(1).lease_until_tick(), None);
    net.stabilize();
    assert_eq!(net.leader(), Some(3));
    assert!(net.count_sent(|m| matches!(m.body, MessageBody::TimeoutNow)) == 1);
    assert!(net.applied_data(3).contains(&b"a".to_vec()));
}

/// Thesis §6.4: reads that arrive while a round is out share the next
/// round; one heartbeat round confirms all of them.
#[test]
fn read_index_batches_reads_into_one_round() {
    let mut net = Net::with(&[1, 2, 3], &[], |c| c.lease_reads = false);
    net.elect(1);
    let heartbeats = |net: &Net| net.count_sent(|m| matches!(m.body, MessageBody::Heartbeat { .. }));
    let before = heartbeats(&net);
    for ctx in 0..50 {
        net.raft_mut(1).read_index(ctx).unwrap();
    }
    net.process(1);
    assert_eq!(heartbeats(&net) - before, 2, "one round: one heartbeat per follower");
    net.stabilize();
    let states = &net.read_states[&1];
    assert_eq!(states.len(), 50);
    assert!(states
        .iter()
        .all(|s| s.via == ReadVia::Quorum && s.index == net.raft(1).committed()));
    assert!(matches!(
        net.raft_mut(2).read_index(1),
        Err(Error::NotLeader { leader: Some(1) })
    ));
}

/// Thesis §6.4: a new leader answers reads only after its term's first
/// entry commits, since until then its commit index may be stale.
#[test]
fn reads_wait_for_the_first_commit_of_the_term() {
    let mut net = Net::new(3);
    net.campaign(1);
    // Deliver votes but hold back every append.
    while net.raft(1).role() != Role::Leader {
        assert!(net.deliver_first(|m| !is_append(m)));
    }
    net.raft_mut(1).read_index(9).unwrap();
    net.process(1);
    assert!(net.read_states.get(&1).is_none_or(|v| v.is_empty()));
    net.stabilize();
    let s = net.read_states[&1][0];
    assert_eq!(s.ctx, 9);
    assert_eq!(net.raft(1).term_at(s.index), Some(net.raft(1).term()));
}

/// Thesis §4.2.1: a learner receives the log without voting, and a
/// promotion (through a joint configuration) makes it a voter.
#[test]
fn learner_catches_up_then_is_promoted() {
    let mut net = Net::with(&[1, 2, 3], &[4], common::no_tweak);
    net.elect(1);
    net.propose(1, b"x");
    net.stabilize();
    assert!(net.applied_data(4).contains(&b"x".to_vec()));
    net.tick(4, 100);
    assert_eq!(net.raft(4).role(), Role::Follower, "learners never campaign");
    let change = ConfChange {
        items: vec![ConfChangeItem::AddVoter(4)],
        context: Vec::new(),
    };
    net.raft_mut(1).propose_conf_change(change, 0).unwrap();
    net.stabilize();
    for _ in 0..3 {
        net.tick(1, 1);
        net.stabilize();
    }
    assert_eq!(net.raft(4).conf_state().voters, vec![1, 2, 3, 4]);
    // A second change waits until the first is applied.
    let change = ConfChange {
        items: vec![ConfChangeItem::Remove(4)],
        context: Vec::new(),
    };
    net.raft_mut(1).propose_conf_change(change.clone(), 0).unwrap();
    assert_eq!(
        net.raft_mut(1).propose_conf_change(change, 0),
        Err(Error::ConfChangePending)
    );
}

/// Raft §5.3 with the optimization of its closing paragraphs: a follower
/// with a long divergent suffix is brought in line in one probe per
/// conflicting term, not one per entry.
#[test]
fn fast_backtracking_skips_whole_terms() {
    let mut net = Net::new(3);
    net.elect(1);
    net.stabilize();
    // Node 1 appends 40 entries nobody else sees, then is replaced.
    net.isolate(1);
    for i in 0..40u8 {
        net.propose(1, &[i]);
    }
    net.expire_leases(&[2, 3]);
    net.elect(2);
    for i in 0..5u8 {
        net.propose(2, &[200 + i]);
    }
    net.stabilize();
    net.heal();
    let rejections_before = net.count_sent(|m| matches!(m.body, MessageBody::AppendResponse { reject: true, .. }));
    for _ in 0..5 {
        net.tick(2, 1);
        net.stabilize();
    }
    let rejections =
        net.count_sent(|m| matches!(m.body, MessageBody::AppendResponse { reject: true, .. })) - rejections_before;
    assert!(rejections <= 3, "{rejections} rejections for 40 divergent entries");
    assert_eq!(net.log_of(1), net.log_of(2));
}

/// Messages for another group or node are refused, not applied.
#[test]
fn misdelivered_messages_are_errors() {
    let mut net = Net::new(3);
    let m = Message {
        group: 9,
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::TimeoutNow,
    };
    assert!(matches!(net.raft_mut(1).step(m), Err(Error::Misdelivered { .. })));
}

/// Raft §5.3: appends are retried indefinitely. A lost final append is
/// resent after a heartbeat interval without acknowledgement, even if
/// nothing new is proposed.
#[test]
fn a_lost_last_append_is_resent_without_new_proposals() {
    let mut net = Net::new(3);
    net.elect(1);
    // A first write puts node 3 in the pipelined state.
    net.propose(1, b"first");
    net.stabilize();
    let p = net.propose(1, b"lost");
    // Every append to node 3 is lost, including the one that carries the
    // new commit index.
    loop {
        net.queue.retain(|m| !(is_append(m) && m.to == 3));
        if !net.deliver_one() {
            break;
        }
    }
    assert!(net.raft(3).last_index() < p.index);
    for _ in 0..3 {
        net.tick(1, 1);
        net.stabilize();
    }
    assert_eq!(
        net.raft(3).term_at(p.index),
        Some(p.term),
        "resent after a silent heartbeat round"
    );
    assert!(net.applied_data(3).contains(&b"lost".to_vec()));
}

/// Thesis §4.2 (catching up new servers): a node started empty to join
/// knows no configuration, so it refuses to build its log from index 1 (it
/// could not know the group's starting configuration) and waits for a
/// snapshot. Once the leader has one, the joiner installs it, learns the
/// configuration as a learner, and a promotion makes it a voter.
#[test]
fn an_empty_joiner_starts_from_a_snapshot_only() {
    let mut net = Net::new(3);
    net.elect(1);
    for i in 0..5u8 {
        net.propose(1, &[i]);
    }
    net.stabilize();
    net.add_empty_node(4);
    assert!(net.raft(4).awaits_first_snapshot());
    let learner = ConfChange {
        items: vec![ConfChangeItem::AddLearner(4)],
        context: b"address of 4".to_vec(),
    };
    net.raft_mut(1).propose_conf_change(learner, 0).unwrap();
    for _ in 0..3 {
        net.tick(1, 1);
        net.stabilize();
    }
    assert_eq!(net.log_of(4), vec![], "no log from index 1 without a configuration");
    assert!(net.raft(4).awaits_first_snapshot());

    let applied = net.raft(1).applied();
    let conf = net.raft(1).conf_state().clone();
    assert_eq!(conf.learners, vec![4]);
    net.raft_mut(1)
        .storage_mut()
        .create_snapshot(applied, conf.clone(), Arc::from(&b"state"[..]));
    for _ in 0..3 {
        net.tick(1, 1);
        net.stabilize();
    }
    assert!(!net.raft(4).awaits_first_snapshot());
    assert_eq!(net.raft(4).conf_state(), &conf);
    assert_eq!(net.raft(4).committed(), net.raft(1).committed());

    let promote = ConfChange {
        items: vec![ConfChangeItem::AddVoter(4)],
        context: Vec::new(),
    };
    net.raft_mut(1).propose_conf_change(promote, 0).unwrap();
    for _ in 0..3 {
        net.tick(1, 1);
        net.stabilize();
    }
    assert_eq!(net.raft(4).conf_state().voters, vec![1, 2, 3, 4]);
    assert!(net.raft(4).conf_state().voters_outgoing.is_empty());
    let p = net.propose(1, b"after");
    net.stabilize();
    assert!(net.raft(4).committed() >= p.index);
}

/// A voter whose state was lost comes back empty while still a member; it
/// is removed, the leader compacts, and it is added back as a learner. The
/// probe sent when it was added is lost and no new entry follows: the
/// heartbeat answers alone must lead the leader to probe it again, and it
/// then starts from the leader's snapshot, whatever it was sent while a
/// member.
#[test]
fn a_wiped_member_added_back_is_probed_and_starts_from_a_snapshot() {
    let mut net = Net::new(3);
    net.elect(1);
    for i in 0..5u8 {
        net.propose(1, &[i]);
    }
    net.stabilize();
    // Its state is lost: it comes back empty, knowing no configuration.
    net.add_empty_node(3);
    for _ in 0..3 {
        net.tick(1, 1);
        net.stabilize();
    }
    let remove = ConfChange {
        items: vec![ConfChangeItem::Remove(3)],
        context: Vec::new(),
    };
    net.raft_mut(1).propose_conf_change(remove, 0).unwrap();
    for _ in 0..3 {
        net.tick(1, 1);
        net.stabilize();
    }
    assert_eq!(net.raft(1).conf_state().voters, vec![1, 2]);
    assert!(net.raft(1).conf_state().voters_outgoing.is_empty());
    let applied = net.raft(1).applied();
    let conf = net.raft(1).conf_state().clone();
    net.raft_mut(1)
        .storage_mut()
        .create_snapshot(applied, conf, Arc::from(&b"state"[..]));
    let add = ConfChange {
        items: vec![ConfChangeItem::AddLearner(3)],
        context: Vec::new(),
    };
    net.raft_mut(1).propose_conf_change(add, 0).unwrap();
    net.process(1);
    while net.raft(1).conf_state().learners.is_empty() {
        assert!(net.deliver_one(), "the change never applied on the leader");
    }
    net.process(1);
    // The probe sent when 3 was added is lost.
    assert!(net.queue.iter().any(|m| m.to == 3));
    net.queue.retain(|m| m.to != 3);
    net.stabilize();
    assert!(net.raft(3).awaits_first_snapshot());
    for _ in 0..5 {
        net.tick(1, 1);
        net.stabilize();
    }
    assert!(!net.raft(3).awaits_first_snapshot(), "the learner was never probed");
    assert_eq!(net.raft(3).conf_state().learners, vec![3]);
    assert_eq!(net.raft(3).committed(), net.raft(1).committed());
}

/// Thesis §6.2 with pre-vote (§9.6): a follower in contact with its leader
/// can be moved to a higher term without hearing from any leader of it
/// (here, by a rejected pre-vote answer from a node already campaigning in
/// that term). At the new term it must still refuse to vote while the
/// leader it heard from may hold a lease; otherwise a new leader could be
/// elected while the old one serves lease reads.
#[test]
fn the_lease_promise_holds_after_a_term_change_without_a_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, b"x");
    net.stabilize();
    let term = net.raft(2).term();
    let last_index = net.raft(3).last_index();
    let last_term = net.raft(3).term_at(last_index).unwrap();
    let msg = |body| Message {
        group: 0,
        from: 3,
        to: 2,
        term: term + 1,
        body,
    };
    // Node 3, campaigning in term + 1, rejects node 2's pre-vote.
    net.raft_mut(2)
        .step(msg(MessageBody::VoteResponse {
            pre: true,
            granted: false,
        }))
        .unwrap();
    assert_eq!(net.raft(2).term(), term + 1, "a higher term moves the follower on");
    net.process(2);
    net.sent.clear();
    // Its real vote request at that term is refused: 2 heard from leader 1
    // within the election timeout.
    net.raft_mut(2)
        .step(msg(MessageBody::Vote {
            pre: false,
            last_index,
            last_term,
            transfer: false,
        }))
        .unwrap();
    net.process(2);
    let answers: Vec<bool> = net
        .sent
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::VoteResponse { pre: false, granted } if m.from == 2 => Some(granted),
            _ => None,
        })
        .collect();
    assert_eq!(answers, vec![false], "no vote while the leader's lease may hold");
    // A leadership transfer is the exception: the old leader gave up its
    // lease when it sent TimeoutNow.
    net.raft_mut(2)
        .step(msg(MessageBody::Vote {
            pre: false,
            last_index,
            last_term,
            transfer: true,
        }))
        .unwrap();
    net.process(2);
    assert!(net.sent.iter().any(|m| m.from == 2
        && matches!(
            m.body,
            MessageBody::VoteResponse {
                pre: false,
                granted: true
            }
        )));
}

/// A removed member learns that it was removed: the commit index that
/// covers the change reaches it (the leader announces the commit before it
/// applies the change and stops replicating to it), so it applies the
/// change too, never campaigns again and keeps pointing at the leader.
#[test]
fn a_removed_member_applies_its_own_removal() {
    let mut net = Net::new(3);
    net.elect(1);
    let remove = ConfChange {
        items: vec![ConfChangeItem::Remove(3)],
        context: Vec::new(),
    };
    net.raft_mut(1).propose_conf_change(remove, 0).unwrap();
    for _ in 0..3 {
        net.tick(1, 1);
        net.stabilize();
    }
    assert_eq!(net.raft(1).conf_state().voters, vec![1, 2]);
    assert_eq!(
        net.raft(3).conf_state().voters,
        vec![1, 2],
        "the removed member applied its removal"
    );
    assert_eq!(net.raft(3).applied(), net.raft(1).applied());
    // No longer a voter, it never campaigns, and it still names the leader.
    for _ in 0..50 {
        net.tick(3, 1);
        net.stabilize();
    }
    assert_eq!(net.raft(3).role(), Role::Follower);
    assert_eq!(net.raft(3).leader(), 1);
    assert_eq!(net.leader(), Some(1));
}
