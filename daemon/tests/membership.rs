//! Membership changes on real `loomd` processes: a node started with
//! `--join` is added (learner, then voter once caught up), leadership is
//! handed to it, the old leader is removed, the joined node restarts from
//! its own directory, and no acknowledged write is lost on the way.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    client, loomd, members_arg, put_until_ok, spawn, spawn_logging, start, three_members, wait_for_leader, Member, Proc,
};
use loomcache_client::{Client, ClientConfig, ClientError};
use loomcache_wire::{ErrorCode, Payload, RecordMember};

fn info(m: &Member) -> Vec<(String, String)> {
    Client::connect(ClientConfig {
        addrs: vec![m.client],
        retry_budget: Duration::ZERO,
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    })
    .and_then(|c| c.info())
    .unwrap_or_default()
}

fn field(info: &[(String, String)], key: &str) -> String {
    info.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `m` empty to join, knowing the members in `known` (it dials
/// those with higher ids; they dial it otherwise).
fn start_joiner(m: &Member, known: &[Member], dir: &std::path::Path) -> Proc {
    let mut cmd = loomd(m, &members_arg(known), dir);
    cmd.arg("--join");
    spawn(cmd)
}

/// Writes `k<i>` = `v<i>` to map `m` for each `i`.
fn write_range(c: &Client, range: std::ops::Range<u32>) {
    for i in range {
        c.map("m")
            .set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
            .unwrap();
    }
}

/// Three members started in a new directory, with `k0` … `k<n-1>` written
/// (the first write waits out the election): the directory, the members,
/// their `--members`, the processes and a client.
fn three_with_writes(n: u32) -> (tempfile::TempDir, Vec<Member>, String, Vec<Option<Proc>>, Client) {
    let tmp = tempfile::tempdir().unwrap();
    let members = three_members();
    let arg = members_arg(&members);
    let procs: Vec<Option<Proc>> = members.iter().map(|m| Some(start(m, &arg, tmp.path()))).collect();
    let c = client(&members);
    put_until_ok(&c, b"k0", b"v0");
    write_range(&c, 1..n);
    (tmp, members, arg, procs, c)
}

/// A client that reads `m`'s own state (stale reads), and nothing else.
fn stale_client(m: &Member) -> Client {
    Client::connect(ClientConfig {
        addrs: vec![m.client],
        stale_reads: true,
        ..ClientConfig::default()
    })
    .unwrap()
}

/// Rebuilds `members[victim]`, whose directory is gone, the documented
/// way: started empty with `--join`, removed, added back; returns once it
/// votes again.
fn rebuild(c: &Client, members: &[Member], victim: usize, dir: &std::path::Path) -> Proc {
    let m = members[victim];
    let proc = start_joiner(&m, members, dir);
    c.cluster_remove(m.id).expect("removal accepted");
    wait_until("the member to leave", Duration::from_secs(30), || {
        let l = wait_for_leader(members, Duration::from_secs(5)).expect("a leader");
        let i = info(&members[l]);
        !field(&i, "raft_voters").split(',').any(|v| v == m.id.to_string())
            && field(&i, "raft_voters_outgoing").is_empty()
    });
    c.cluster_add(m.id, &m.client.to_string(), &m.peer.to_string())
        .expect("join accepted");
    wait_until("the rebuilt member to vote again", Duration::from_secs(30), || {
        let l = wait_for_leader(members, Duration::from_secs(5)).expect("a leader");
        let view = info(&members[l]);
        let votes = field(&view, "raft_voters").split(',').any(|v| v == m.id.to_string());
        // A learner is promoted only once its directory is recorded.
        let recorded = field(&view, "members_recorded")
            .split(',')
            .any(|r| r.starts_with(&format!("{}=", m.id)));
        assert!(!votes || recorded, "a voter without a record: {view:?}");
        votes
    });
    proc
}

#[test]
fn a_joined_node_is_promoted_takes_over_and_the_old_leader_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = three_members();
    let arg = members_arg(&members);
    let mut procs: Vec<Option<Proc>> = members.iter().map(|m| Some(start(m, &arg, tmp.path()))).collect();
    let c = client(&members);
    put_until_ok(&c, b"k0", b"v0");
    for i in 1..300u32 {
        c.map("m").set(format!("k{i}").as_bytes(), b"before").unwrap();
    }

    // Membership requests are refused clearly when they cannot apply.
    let err = c.cluster_remove(9).unwrap_err().to_string();
    assert!(err.contains("not a member"), "{err}");
    let err = c.transfer_leader(9).unwrap_err().to_string();
    assert!(err.contains("not a voter"), "{err}");

    let joiner = common::cluster::three_members()[0];
    let joiner = Member { id: 4, ..joiner };
    procs.push(Some(start_joiner(&joiner, &[joiner], tmp.path())));
    c.cluster_add(4, &joiner.client.to_string(), &joiner.peer.to_string())
        .expect("join accepted");
    // A retried add (the same addresses) succeeds and changes nothing; the
    // same id with other addresses is refused.
    c.cluster_add(4, &joiner.client.to_string(), &joiner.peer.to_string())
        .expect("a repeated add is already done");
    let err = c
        .cluster_add(4, &joiner.client.to_string(), &members[0].peer.to_string())
        .unwrap_err()
        .to_string();
    assert!(err.contains("already a member"), "{err}");
    members.push(joiner);
    wait_until("node 4 to become a voter", Duration::from_secs(30), || {
        let l = wait_for_leader(&members, Duration::from_secs(5)).expect("a leader");
        field(&info(&members[l]), "raft_voters") == "1,2,3,4"
    });
    // Writes go on during and after the change; the joiner holds them all.
    for i in 300..400u32 {
        c.map("m").set(format!("k{i}").as_bytes(), b"after").unwrap();
    }
    let leader_commit = {
        let l = wait_for_leader(&members, Duration::from_secs(5)).unwrap();
        field(&info(&members[l]), "raft_commit").parse::<u64>().unwrap()
    };
    wait_until("node 4 to apply everything committed", Duration::from_secs(30), || {
        field(&info(&joiner), "raft_applied").parse::<u64>().unwrap_or(0) >= leader_commit
    });

    // Leadership moves to the joined node; the old leader is removed. An
    // election on a loaded machine may already have made the joined node
    // the leader: leadership is then handed to node 1 first, so that the
    // move to node 4 is one this test makes.
    let mut old = 0;
    let mut asked: Option<Instant> = None;
    wait_until("a leader other than node 4", Duration::from_secs(30), || {
        let Some(l) = wait_for_leader(&members, Duration::from_secs(5)) else {
            return false;
        };
        if members[l].id != 4 {
            old = l;
            return true;
        }
        if asked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            let _ = c.transfer_leader(1);
            asked = Some(Instant::now());
        }
        false
    });
    let old_id = members[old].id;
    // The routing table names the group's leader, replicas and members;
    // asked with its own revision it answers only that.
    let before = c.partition_table(0).unwrap();
    assert_eq!(before.partition_groups, vec![0; 271]);
    assert_eq!(before.groups.len(), 1);
    assert_eq!(before.groups[0].replicas, vec![1, 2, 3, 4]);
    assert_eq!(before.members.len(), 4);
    let same = c.partition_table(before.revision).unwrap();
    assert_eq!(same.revision, before.revision);
    assert!(same.partition_groups.is_empty() && same.groups.is_empty() && same.members.is_empty());

    c.transfer_leader(4).expect("transfer accepted");
    // A handover that does not finish within an election timeout is
    // dropped, and an election may then pick another member (a loaded
    // machine may be that slow): it is asked for again about every second
    // until node 4 leads. Those requests may be refused or time out:
    // whether node 4 leads is read from node 4 itself.
    let mut asked = Instant::now();
    wait_until("node 4 to lead", Duration::from_secs(30), || {
        if field(&info(&joiner), "raft_role") == "leader" {
            return true;
        }
        if asked.elapsed() >= Duration::from_secs(1) {
            let _ = c.transfer_leader(4);
            asked = Instant::now();
        }
        false
    });
    wait_until(
        "the routing table to name the new leader",
        Duration::from_secs(10),
        || {
            let t = c.partition_table(0).unwrap();
            t.groups[0].leader == 4 && t.revision > before.revision
        },
    );
    c.cluster_remove(old_id).expect("removal accepted");
    wait_until(
        "the old leader to leave the configuration",
        Duration::from_secs(30),
        || {
            let i = info(&joiner);
            let voters = field(&i, "raft_voters");
            !voters.split(',').any(|v| v == old_id.to_string()) && field(&i, "raft_voters_outgoing").is_empty()
        },
    );
    drop(procs[old].take());
    let remaining: Vec<Member> = members.iter().filter(|m| m.id != old_id).copied().collect();
    let c = client(&remaining);
    for i in 0..400u32 {
        let want: &[u8] = match i {
            0 => b"v0",
            1..=299 => b"before",
            _ => b"after",
        };
        assert_eq!(
            c.map("m").get(format!("k{i}").as_bytes()).unwrap().as_deref(),
            Some(want),
            "k{i}"
        );
    }

    // The joined node restarts from its own directory: it still knows the
    // group (from its snapshot and log), and with one other voter down the
    // remaining two still form a majority of the three voters.
    drop(procs[3].take());
    procs[3] = Some(start_joiner(&joiner, &[joiner], tmp.path()));
    let other = remaining.iter().position(|m| m.id != 4).unwrap();
    let other_id = remaining[other].id;
    let idx = members.iter().position(|m| m.id == other_id).unwrap();
    drop(procs[idx].take());
    let survivors: Vec<Member> = remaining.iter().filter(|m| m.id != other_id).copied().collect();
    put_until_ok(&client(&survivors), b"k400", b"two of three");
    assert_eq!(
        client(&survivors).map("m").get(b"k350").unwrap().as_deref(),
        Some(&b"after"[..])
    );
}

/// A member whose log is damaged inside its durable prefix refuses to
/// start and says how to rebuild it; started empty with `--join` and
/// removed then added back (what `loomctl cluster rebuild` does), it
/// catches up from its peers and votes again.
#[test]
fn a_damaged_member_refuses_to_start_and_is_rebuilt_from_its_peers() {
    let (tmp, members, arg, mut procs, c) = three_with_writes(200);
    let leader = wait_for_leader(&members, Duration::from_secs(5)).unwrap();
    let victim = (leader + 1) % 3;
    let m = members[victim];
    std::thread::sleep(Duration::from_millis(200));
    drop(procs[victim].take());

    // One byte of the first record of its first segment, well inside what
    // it reported durable.
    let dir = tmp.path().join(format!("node-{}", m.id));
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    bytes[64 + 20] ^= 0x40;
    std::fs::write(&segments[0], &bytes).unwrap();

    let out = loomd(&m, &arg, tmp.path()).output().unwrap();
    assert!(!out.status.success(), "a damaged member must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(
        stderr.contains(&format!("cluster rebuild {} {} {}", m.id, m.client, m.peer)),
        "{stderr}"
    );

    // Rebuild: the directory moved aside, the member started empty to
    // join, removed and added back.
    std::fs::rename(&dir, tmp.path().join("damaged")).unwrap();
    procs[victim] = Some(rebuild(&c, &members, victim, tmp.path()));
    let at_victim = stale_client(&m);
    wait_until(
        "the rebuilt member to hold every write",
        Duration::from_secs(30),
        || at_victim.map("m").get(b"k199").ok().flatten() == Some(b"v199".to_vec()),
    );
    assert_eq!(at_victim.map("m").get(b"k0").unwrap(), Some(b"v0".to_vec()));
}

/// A member whose directory is wiped and that comes back without `--join`
/// would be a voter that forgot its votes and the entries it acknowledged.
/// The group recorded its directory's incarnation, so its peers refuse the
/// new one: it takes part in nothing, says why, the others go on, and it
/// is rebuilt the documented way.
#[test]
fn a_member_restarted_with_a_wiped_directory_is_refused_until_rebuilt() {
    let (tmp, members, arg, mut procs, c) = three_with_writes(100);
    wait_until(
        "every member's directory to be recorded",
        Duration::from_secs(30),
        || {
            let l = wait_for_leader(&members, Duration::from_secs(5)).expect("a leader");
            field(&info(&members[l]), "members_recorded").split(',').count() == 3
        },
    );
    let leader = wait_for_leader(&members, Duration::from_secs(5)).unwrap();
    let victim = (leader + 1) % 3;
    let m = members[victim];
    // Records come from the leader alone: a client that sends one, here
    // naming another directory for the victim, is refused and changes
    // nothing.
    let before = field(&info(&members[leader]), "members_recorded");
    let forged = Payload::ClusterRecordMember(RecordMember {
        node_id: m.id,
        incarnation: 0x5eed,
    });
    match c.call(&forged) {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Malformed, "{message}");
            assert!(message.contains("recorded by the leader"), "{message}");
        }
        other => panic!("a client's member record was not refused: {other:?}"),
    }
    put_until_ok(&c, b"after-forgery", b"x");
    for o in &members {
        assert_eq!(
            field(&info(o), "members_recorded"),
            before,
            "records changed at {}",
            o.id
        );
    }
    drop(procs[victim].take());
    std::fs::remove_dir_all(tmp.path().join(format!("node-{}", m.id))).unwrap();
    let log_path = tmp.path().join("wiped.log");
    let log = std::fs::File::create(&log_path).unwrap();
    procs[victim] = Some(spawn_logging(loomd(&m, &arg, tmp.path()), log));

    write_range(&c, 100..150);
    wait_until(
        "the wiped member to say why it is refused",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("the group recorded another data directory for this member")
        },
    );
    // Several election timeouts with writes going on.
    for i in 150..200u32 {
        c.map("m")
            .set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_victim = stale_client(&m);
    assert_eq!(
        at_victim.map("m").get(b"k0").ok().flatten(),
        None,
        "the wiped member received entries"
    );
    let wiped = info(&m);
    assert_eq!(field(&wiped, "raft_commit"), "0", "{wiped:?}");
    assert_eq!(field(&wiped, "raft_leader"), "0", "{wiped:?}");
    let others: Vec<Member> = members.iter().copied().filter(|o| o.id != m.id).collect();
    assert_ne!(field(&wiped, "peer_incarnation_refusals"), "0", "{wiped:?}");
    let l = wait_for_leader(&others, Duration::from_secs(5)).expect("the others keep a leader");
    let view = info(&others[l]);
    assert!(
        others
            .iter()
            .any(|o| field(&info(o), "peer_incarnation_refusals").parse::<u64>().unwrap_or(0) > 0),
        "no member counted the refusal"
    );
    assert!(
        field(&view, "raft_voters").split(',').any(|v| v == m.id.to_string()),
        "still a voter until removed: {view:?}"
    );

    drop(procs[victim].take());
    std::fs::remove_dir_all(tmp.path().join(format!("node-{}", m.id))).unwrap();
    procs[victim] = Some(rebuild(&c, &members, victim, tmp.path()));
    wait_until(
        "the rebuilt member to hold every write",
        Duration::from_secs(30),
        || at_victim.map("m").get(b"k199").ok().flatten() == Some(b"v199".to_vec()),
    );
    assert_eq!(at_victim.map("m").get(b"k0").unwrap(), Some(b"v0".to_vec()));

    // Every member holds the same records, the rebuilt directory's among
    // them, and a member restarted applies them again.
    let same_records = || {
        let all: Vec<String> = members.iter().map(|o| field(&info(o), "members_recorded")).collect();
        all.iter().all(|r| r == &all[0]) && all[0].split(',').count() == 3
    };
    wait_until(
        "every member to hold the same records",
        Duration::from_secs(30),
        same_records,
    );
    let rebuilt = format!("{}={}", m.id, field(&info(&m), "incarnation"));
    let records = field(&info(&members[0]), "members_recorded");
    assert!(records.split(',').any(|r| r == rebuilt), "{records} lacks {rebuilt}");
    let l = wait_for_leader(&members, Duration::from_secs(5)).unwrap();
    let other = (0..3).find(|&i| i != l && i != victim).unwrap();
    drop(procs[other].take());
    procs[other] = Some(start(&members[other], &arg, tmp.path()));
    wait_until(
        "the restarted member to hold the same records",
        Duration::from_secs(30),
        same_records,
    );
    put_until_ok(&c, b"after", b"restart");
    let at_other = stale_client(&members[other]);
    wait_until("both followers to hold a later write", Duration::from_secs(30), || {
        at_other.map("m").get(b"after").ok().flatten().is_some()
            && at_victim.map("m").get(b"after").ok().flatten().is_some()
    });
}
