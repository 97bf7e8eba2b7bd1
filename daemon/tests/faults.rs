//! Fault schedule against three real `loomd` processes while several
//! clients run put, get and compare-and-set: the leader is killed (-9) and
//! restarted, paused (SIGSTOP) past its lease and continued, a follower and
//! then the leader are cut off from their peers and healed, and a follower
//! is killed and restarted. The recorded history must pass the per-key
//! linearizability check, every acknowledged write to a fresh key must be
//! readable at the end, and after the last heal the cluster must answer
//! within a few election timeouts.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{client_with, wait_for_leader, Member, Proc, ProxiedCluster};
use loomcache_client::{Client, ClientConfig, ClientError};
use loomcache_model_tests::wgl::{self, Event, Op, Outcome};

/// Registers the clients contend on.
const SHARED_KEYS: u64 = 3;
/// Fresh keys get ids from here up, one per write.
const FRESH_KEY_BASE: u64 = 1 << 32;
const CLIENTS: u64 = 4;
/// Election timeout of the default cluster settings (30 ticks of 10 ms).
const ELECTION_TIMEOUT: Duration = Duration::from_millis(300);

fn key_name(key: u64) -> Vec<u8> {
    if key < FRESH_KEY_BASE {
        format!("r{key}").into_bytes()
    } else {
        format!("f{}", key - FRESH_KEY_BASE).into_bytes()
    }
}

fn encode(v: u64) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn decode(bytes: Option<Vec<u8>>) -> Option<u64> {
    bytes.map(|b| {
        std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a value no client wrote: {b:?}"))
    })
}

/// The shared history and the fresh keys whose writes were acknowledged.
struct Record {
    epoch: Instant,
    events: Mutex<Vec<Event>>,
    acknowledged_fresh: Mutex<Vec<(u64, u64)>>,
    errors: Mutex<HashMap<String, u64>>,
}

impl Record {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Runs one operation and records it.
    fn run(&self, c: &Client, client: u64, key: u64, op: Op) -> Outcome {
        let name = key_name(key);
        let map = c.map("faults");
        let invoke = self.now();
        let result: Result<Outcome, ClientError> = match op {
            Op::Put { value } => map.set(&name, &encode(value)).map(|()| Outcome::Written),
            Op::Get => map.get(&name).map(|v| Outcome::Read(decode(v))),
            Op::Cas { expected: None, new } => map
                .put_if_absent(&name, &encode(new))
                .map(|prev| Outcome::Swapped(prev.is_none())),
            Op::Cas {
                expected: Some(old),
                new,
            } => map
                .compare_and_set(&name, &encode(old), &encode(new))
                .map(Outcome::Swapped),
        };
        let complete = self.now().max(invoke + 1);
        let outcome = result.unwrap_or_else(|e| {
            let kind = match e {
                // Its text goes on with the address, which has colons.
                ClientError::Connect { .. } => "could not connect".to_string(),
                e => format!("{e}").split(':').next().unwrap_or("").to_string(),
            };
            *self.errors.lock().unwrap().entry(kind).or_default() += 1;
            Outcome::Unknown
        });
        self.events.lock().unwrap().push(Event {
            client,
            key,
            op,
            outcome,
            invoke,
            complete,
        });
        outcome
    }
}

/// Runs client `client`'s operations until `stop`. Client 0 arrives anew
/// for every operation at a member picked at random (as a fresh process
/// would), so followers and cut-off members see requests too; the others
/// keep one client and stay with the leader it learns of.
fn worker(record: &Record, members: &[Member], client: u64, stop: &AtomicBool) {
    let mut rng = fastrand::Rng::with_seed(0x5eed ^ client);
    let steady = (client != 0).then(|| client_with(members, Duration::from_secs(2), Duration::from_secs(4)));
    let roaming = |rng: &mut fastrand::Rng| {
        let mut seeds = members.to_vec();
        let first = rng.usize(0..seeds.len());
        seeds.rotate_left(first);
        Client::connect(ClientConfig {
            addrs: seeds.iter().map(|m| m.client).collect(),
            request_timeout: Duration::from_secs(2),
            retry_budget: Duration::from_secs(4),
            ..ClientConfig::default()
        })
    };
    let mut counter = 0u64;
    let mut fresh = 0u64;
    let mut last_seen: HashMap<u64, Option<u64>> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let fresh_client;
        let c = match &steady {
            Some(c) => c,
            None => match roaming(&mut rng) {
                Ok(c) => {
                    fresh_client = c;
                    &fresh_client
                }
                Err(_) => {
                    // No member took the connection: nothing was sent.
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        counter += 1;
        let value = ((client + 1) << 40) | counter;
        let roll = rng.u32(0..100);
        if roll < 10 {
            let key = FRESH_KEY_BASE + (client << 24) + fresh;
            fresh += 1;
            if record.run(c, client, key, Op::Put { value }) == Outcome::Written {
                record.acknowledged_fresh.lock().unwrap().push((key, value));
            }
            continue;
        }
        let key = rng.u64(0..SHARED_KEYS);
        let op = match roll {
            10..=49 => Op::Get,
            50..=79 => Op::Put { value },
            _ => Op::Cas {
                expected: last_seen.get(&key).copied().flatten(),
                new: value,
            },
        };
        match record.run(c, client, key, op) {
            Outcome::Read(v) => {
                last_seen.insert(key, v);
            }
            Outcome::Written => {
                last_seen.insert(key, Some(value));
            }
            _ => {}
        }
    }
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn history_under_kills_pauses_partitions_and_restarts_is_linearizable() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ProxiedCluster::new();
    let members = cluster.members.clone();
    let mut procs: Vec<Option<Proc>> = (0..3).map(|i| Some(cluster.start(i, tmp.path()))).collect();
    common::cluster::put_until_ok(&common::cluster::client(&members), b"warm", b"up");

    let record = Arc::new(Record {
        epoch: Instant::now(),
        events: Mutex::new(Vec::new()),
        acknowledged_fresh: Mutex::new(Vec::new()),
        errors: Mutex::new(HashMap::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (record, stop, members) = (record.clone(), stop.clone(), members.clone());
            std::thread::spawn(move || worker(&record, &members, client, &stop))
        })
        .collect();
    let leader =
        |what: &str| wait_for_leader(&members, Duration::from_secs(20)).unwrap_or_else(|| panic!("no leader {what}"));
    sleep_ms(1000);

    // The leader is killed, then restarted from its directory.
    let l = leader("before the kill");
    drop(procs[l].take());
    sleep_ms(1500);
    procs[l] = Some(cluster.start(l, tmp.path()));
    sleep_ms(1500);

    // The leader is paused well past its lease, then continued.
    let l = leader("before the pause");
    procs[l].as_ref().unwrap().signal("-STOP");
    sleep_ms(1500);
    procs[l].as_ref().unwrap().signal("-CONT");
    sleep_ms(1000);

    // A follower is cut off, then healed.
    let l = leader("before the follower's partition");
    let follower = (l + 1) % 3;
    cluster.isolate(follower);
    sleep_ms(2000);
    cluster.heal();
    sleep_ms(1000);

    // The leader is cut off, then healed.
    let l = leader("before the leader's partition");
    cluster.isolate(l);
    sleep_ms(2000);
    cluster.heal();
    let healed = Instant::now();
    client_with(&members, Duration::from_secs(2), Duration::from_secs(30))
        .map("faults")
        .set(b"after", b"heal")
        .expect("the healed cluster answers");
    let heal_to_answer = healed.elapsed();
    assert!(
        heal_to_answer < ELECTION_TIMEOUT * 10,
        "first answer after healing took {heal_to_answer:?}"
    );
    sleep_ms(1000);

    // A follower is killed and restarted.
    let l = leader("before the follower's restart");
    let follower = (l + 2) % 3;
    drop(procs[follower].take());
    sleep_ms(1000);
    procs[follower] = Some(cluster.start(follower, tmp.path()));
    sleep_ms(1500);

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a client thread");
    }

    let c = client_with(&members, Duration::from_secs(2), Duration::from_secs(30));

    // Final reads of every key belong to the history too.
    let fresh = record.acknowledged_fresh.lock().unwrap().clone();
    for key in 0..SHARED_KEYS {
        record.run(&c, CLIENTS, key, Op::Get);
    }
    for (key, value) in &fresh {
        let got = record.run(&c, CLIENTS, *key, Op::Get);
        assert_eq!(
            got,
            Outcome::Read(Some(*value)),
            "acknowledged write to {:?} is present",
            key_name(*key)
        );
    }

    let events = record.events.lock().unwrap().clone();
    let count = |f: &dyn Fn(&Event) -> bool| events.iter().filter(|e| f(e)).count();
    let known = count(&|e| e.outcome != Outcome::Unknown);
    let unknown = events.len() - known;
    eprintln!(
        "history: {} operations ({known} answered, {unknown} unknown), {} acknowledged fresh writes; errors {:?}; \
         first answer {heal_to_answer:?} after healing the leader's partition",
        events.len(),
        fresh.len(),
        record.errors.lock().unwrap(),
    );
    assert!(known > 200, "too few answered operations to mean anything: {known}");
    assert!(
        count(&|e| matches!(e.outcome, Outcome::Swapped(true))) > 0,
        "some compare-and-set succeeded"
    );
    if let Err(v) = wgl::check(&events, 20_000_000) {
        panic!("{v}");
    }
}
