//! The client against an in-process node on loopback.

use std::time::Duration;

use loomcache_client::{Client, ClientConfig, ClientError, Connection, Reply};
use loomcache_daemon::server::Server;
use loomcache_daemon::Config;
use loomcache_wire::{ErrorCode, Keyed, MapWrite, Named, NamedLong, Payload};

fn node() -> Server {
    let config = Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        ..Config::default()
    };
    Server::start(config).unwrap()
}

fn client(server: &Server) -> Client {
    Client::connect(ClientConfig {
        addrs: vec![server.local_addr()],
        ..ClientConfig::default()
    })
    .unwrap()
}

#[test]
fn typed_operations_on_every_structure() {
    let server = node();
    let c = client(&server);
    assert_eq!(c.ping(7).unwrap(), 7);

    let m = c.map("users");
    assert_eq!(m.put(b"u1", b"ann").unwrap(), None);
    assert_eq!(m.put(b"u1", b"bob").unwrap(), Some(b"ann".to_vec()));
    m.set(b"u2", b"cy").unwrap();
    assert_eq!(m.get(b"u1").unwrap(), Some(b"bob".to_vec()));
    assert_eq!(m.put_if_absent(b"u2", b"x").unwrap(), Some(b"cy".to_vec()));
    assert_eq!(m.replace(b"u3", b"x").unwrap(), None);
    assert!(m.compare_and_set(b"u2", b"cy", b"dee").unwrap());
    assert!(m.contains(b"u2").unwrap());
    m.put_all(&[(b"a", b"1"), (b"b", b"2")]).unwrap();
    assert_eq!(m.get_all(&[b"a", b"zz", b"b"]).unwrap().len(), 2);
    assert_eq!(m.size().unwrap(), 4);
    let (mut cursor, mut seen) = (0, 0);
    loop {
        let (next, page) = m.scan(cursor, 3).unwrap();
        seen += page.len();
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, 4);
    assert!(m.delete(b"a").unwrap());
    m.put_with_ttl(b"short", b"lived", Duration::from_millis(30)).unwrap();
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(m.get(b"short").unwrap(), None, "expired by the node's clock");
    assert_eq!(m.clear().unwrap(), 3);

    let q = c.queue("jobs");
    assert!(q.offer(b"j1").unwrap() && q.offer(b"j2").unwrap() && q.offer(b"j3").unwrap());
    assert_eq!(q.peek().unwrap(), Some(b"j1".to_vec()));
    assert_eq!(q.poll().unwrap(), Some(b"j1".to_vec()));
    assert_eq!(q.size().unwrap(), 2);
    assert_eq!(q.drain(10).unwrap(), vec![b"j2".to_vec(), b"j3".to_vec()]);
    assert_eq!(q.poll().unwrap(), None);

    let s = c.set("tags");
    assert!(s.add(b"red").unwrap());
    assert!(!s.add(b"red").unwrap());
    assert!(s.contains(b"red").unwrap());
    assert_eq!(s.members(0, 10).unwrap().1, vec![b"red".to_vec()]);
    assert!(s.remove(b"red").unwrap());
    assert_eq!(s.size().unwrap(), 0);

    let a = c.atomic_long("counter");
    assert_eq!(a.add_and_get(5).unwrap(), 5);
    assert_eq!(a.get_and_add(1).unwrap(), 5);
    assert!(a.compare_and_set(6, 10).unwrap());
    assert_eq!(a.get_and_set(0).unwrap(), 10);
    assert_eq!(a.get().unwrap(), 0);

    assert_eq!(c.topic("news").publish(b"hello").unwrap(), 1);

    // Errors come back typed.
    match c.queue("users").offer(b"x") {
        Err(ClientError::Server {
            code: ErrorCode::WrongType,
            ..
        }) => {}
        other => panic!("expected WRONG_TYPE, got {other:?}"),
    }
    // A subscription to a name bound to another type could never receive.
    match c.topic("users").subscribe() {
        Err(ClientError::Server {
            code: ErrorCode::WrongType,
            ..
        }) => {}
        other => panic!("expected WRONG_TYPE, got {:?}", other.map(|s| s.id())),
    }
    drop(c);
    server.shutdown();
}

#[test]
fn pipelined_requests_on_one_connection() {
    let server = node();
    let mut conn = Connection::connect(server.local_addr(), 5, Duration::from_secs(2), Duration::from_secs(5)).unwrap();
    let mut ids = Vec::new();
    for i in 0..500i64 {
        let p = Payload::AtomicAddAndGet(NamedLong { name: "n", value: 1 });
        ids.push((conn.send(&p, Some(i as u64 + 1)).unwrap(), i + 1));
    }
    assert_eq!(conn.in_flight(), 500);
    let mut answers = std::collections::HashMap::new();
    for _ in 0..500 {
        let (id, reply) = conn.recv().unwrap();
        answers.insert(id, reply.unwrap());
    }
    // One connection's requests apply in order.
    for (id, expected) in ids {
        assert_eq!(answers[&id], Reply::Long(expected));
    }
    server.shutdown();
}

#[test]
fn requests_sent_in_one_write_are_each_answered_in_order() {
    let server = node();
    let mut conn = Connection::connect(server.local_addr(), 6, Duration::from_secs(2), Duration::from_secs(5)).unwrap();
    let add = Payload::AtomicAddAndGet(NamedLong { name: "n", value: 2 });
    let get = Payload::AtomicGet(Named { name: "n" });
    let ids = conn
        .send_many(&[(&add, Some(1)), (&get, None), (&add, Some(2))])
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(conn.in_flight(), 3);
    let mut answers = std::collections::HashMap::new();
    for _ in 0..3 {
        let (id, reply) = conn.recv().unwrap();
        answers.insert(id, reply.unwrap());
    }
    let got: Vec<Reply> = ids.iter().map(|id| answers[id].clone()).collect();
    assert_eq!(got, vec![Reply::Long(2), Reply::Long(2), Reply::Long(4)]);
    server.shutdown();
}

#[test]
fn a_retried_write_is_applied_once() {
    let server = node();
    let mut conn = Connection::connect(server.local_addr(), 9, Duration::from_secs(2), Duration::from_secs(5)).unwrap();
    let add = Payload::AtomicAddAndGet(NamedLong {
        name: "once",
        value: 10,
    });
    assert_eq!(conn.call(&add, Some(1)).unwrap(), Reply::Long(10));
    // The same sequence again, as after a lost answer: same answer, no effect.
    assert_eq!(conn.call(&add, Some(1)).unwrap(), Reply::Long(10));
    // And from a new connection of the same client.
    let mut other =
        Connection::connect(server.local_addr(), 9, Duration::from_secs(2), Duration::from_secs(5)).unwrap();
    assert_eq!(other.call(&add, Some(1)).unwrap(), Reply::Long(10));
    assert_eq!(other.call(&add, Some(2)).unwrap(), Reply::Long(20));
    // Writes in flight together may apply out of order: an earlier
    // sequence still in the window answers as it did.
    assert_eq!(other.call(&add, Some(1)).unwrap(), Reply::Long(10));
    // Reads and unsequenced writes are unaffected.
    let w = Payload::MapSet(MapWrite {
        ttl_ms: 0,
        name: "m",
        key: b"k",
        value: b"v",
    });
    assert_eq!(other.call(&w, None).unwrap(), Reply::Empty);
    assert_eq!(
        other
            .call(&Payload::MapGet(Keyed { name: "m", key: b"k" }), None)
            .unwrap(),
        Reply::Value(Some(b"v".to_vec()))
    );
    server.shutdown();
}

#[test]
fn no_reachable_node_is_an_error_not_a_hang() {
    let server = node();
    let addr = server.local_addr();
    server.shutdown();
    let config = ClientConfig {
        addrs: vec![addr],
        connect_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    assert!(matches!(Client::connect(config), Err(ClientError::Connect { addr: a, .. }) if a == addr));
}

#[test]
fn a_write_no_attempt_of_which_reached_a_node_was_not_applied() {
    let server = node();
    let addr = server.local_addr();
    // No pool: every attempt connects afresh.
    let c = Client::connect(ClientConfig {
        addrs: vec![addr],
        pool_size: 0,
        connect_timeout: Duration::from_millis(200),
        retry_budget: Duration::from_millis(400),
        ..ClientConfig::default()
    })
    .unwrap();
    server.shutdown();
    let err = c.map("m").set(b"k", b"v").unwrap_err();
    assert!(
        matches!(err, ClientError::Connect { addr: a, .. } if a == addr),
        "{err:?}"
    );
    assert!(!err.may_have_applied(), "{err}");
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn a_client_that_pipelines_without_reading_is_paused_not_refused() {
    for workers in [0, 2] {
        let config = Config {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            workers,
            in_flight_per_connection_max: 8,
            ..Config::default()
        };
        let server = Server::start(config).unwrap();
        let mut conn =
            Connection::connect(server.local_addr(), 11, Duration::from_secs(2), Duration::from_secs(10)).unwrap();
        // Far more than the in-flight bound, all sent before reading one.
        let ids: Vec<u64> = (0..2_000)
            .map(|i| {
                conn.send(
                    &Payload::AtomicAddAndGet(NamedLong { name: "n", value: 1 }),
                    Some(i + 1),
                )
                .unwrap()
            })
            .collect();
        for _ in &ids {
            let (_, reply) = conn.recv().unwrap();
            assert!(matches!(reply, Ok(Reply::Long(_))), "workers={workers}: {reply:?}");
        }
        server.shutdown();
    }
}

#[test]
fn topic_subscribers_receive_published_messages_in_order() {
    for workers in [0, 2] {
        let config = Config {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            workers,
            ..Config::default()
        };
        let server = Server::start(config).unwrap();
        let c = client(&server);
        let mut a = c.topic("news").subscribe().unwrap();
        let mut b = c.topic("news").subscribe().unwrap();
        assert_ne!(a.id(), b.id());
        for i in 0..20u64 {
            assert_eq!(c.topic("news").publish(format!("m{i}").as_bytes()).unwrap(), i + 1);
        }
        assert_eq!(c.topic("other").publish(b"elsewhere").unwrap(), 1);
        for sub in [&mut a, &mut b] {
            for i in 0..20u64 {
                let m = sub.next_within(Duration::from_secs(5)).unwrap().expect("a message");
                assert_eq!(
                    (m.sequence, m.payload, m.dropped_before),
                    (i + 1, format!("m{i}").into_bytes(), 0)
                );
                assert_eq!(m.topic, "news");
            }
            assert_eq!(
                sub.next_within(Duration::from_millis(50)).unwrap(),
                None,
                "nothing from other topics"
            );
        }
        drop(a);
        // After one subscriber left, the other still receives.
        c.topic("news").publish(b"last").unwrap();
        assert_eq!(b.next_within(Duration::from_secs(5)).unwrap().unwrap().payload, b"last");
        server.shutdown();
    }
}

#[test]
fn a_slow_subscriber_loses_messages_with_a_count_and_never_blocks_the_node() {
    let config = Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        workers: 0,
        subscriber_queue_max: 4,
        ..Config::default()
    };
    let server = Server::start(config).unwrap();
    let c = client(&server);
    let mut slow = c.topic("firehose").subscribe().unwrap();
    // Large messages fill the subscriber's socket buffers quickly while it
    // does not read; publishing never waits for it.
    let big = vec![b'x'; 256 << 10];
    let started = std::time::Instant::now();
    for _ in 0..200 {
        c.topic("firehose").publish(&big).unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "publishing was held up by the slow subscriber"
    );
    let mut received = 0;
    let mut dropped = 0;
    while let Some(m) = slow.next_within(Duration::from_millis(500)).unwrap() {
        received += 1;
        dropped += m.dropped_before;
    }
    // Drops are reported with the next message delivered: one more, now
    // that the subscriber has caught up, accounts for the tail. A stall of
    // a loaded machine may end the reading above before the subscriber has
    // caught up: what was still on its way comes first, and while its
    // bound is still full that last message may itself be dropped, so
    // another is published when nothing comes for a while.
    let mut published = 200u64;
    'caught_up: loop {
        assert!(published < 210, "the last message never came");
        let last = format!("last-{published}").into_bytes();
        c.topic("firehose").publish(&last).unwrap();
        published += 1;
        while let Some(m) = slow.next_within(Duration::from_secs(5)).unwrap() {
            received += 1;
            dropped += m.dropped_before;
            if m.payload == last {
                break 'caught_up;
            }
        }
    }
    assert_eq!(
        received + dropped,
        published,
        "every message is delivered or counted as dropped"
    );
    assert!(dropped > 0, "the bound was never reached");
    server.shutdown();
}

#[test]
fn a_poll_waits_for_an_offer_or_its_deadline() {
    for workers in [0, 2] {
        let config = Config {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            workers,
            ..Config::default()
        };
        let server = Server::start(config).unwrap();
        let c = client(&server);
        // Nothing arrives: answered empty after about the wait.
        let started = std::time::Instant::now();
        assert_eq!(c.queue("jobs").poll_wait(Duration::from_millis(300)).unwrap(), None);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "answered early: {waited:?}");
        // An offer from another client during the wait is taken at once.
        let addr = server.local_addr();
        let offerer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let other = Client::connect(ClientConfig {
                addrs: vec![addr],
                ..ClientConfig::default()
            })
            .unwrap();
            assert!(other.queue("jobs").offer(b"work").unwrap());
        });
        let started = std::time::Instant::now();
        assert_eq!(
            c.queue("jobs").poll_wait(Duration::from_secs(5)).unwrap(),
            Some(b"work".to_vec())
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "workers={workers}: the offer did not wake the poll"
        );
        offerer.join().unwrap();
        // The item went to the waiting poll only.
        assert_eq!(c.queue("jobs").size().unwrap(), 0);
        server.shutdown();
    }
}

#[test]
fn a_retried_publish_is_pushed_once_and_quiet_subscribers_stay_open() {
    let config = Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        workers: 0,
        idle_timeout_ms: 1000,
        ..Config::default()
    };
    let server = Server::start(config).unwrap();
    let c = client(&server);
    let mut sub = c.topic("t").subscribe().unwrap();
    // Quiet for longer than the idle timeout: a subscriber is not idle.
    std::thread::sleep(Duration::from_millis(2500));
    let mut conn =
        Connection::connect(server.local_addr(), 77, Duration::from_secs(2), Duration::from_secs(5)).unwrap();
    let publish = Payload::TopicPublish(loomcache_wire::NamedValue {
        name: "t",
        value: b"once",
    });
    assert_eq!(conn.call(&publish, Some(1)).unwrap(), Reply::Count(1));
    assert_eq!(
        conn.call(&publish, Some(1)).unwrap(),
        Reply::Count(1),
        "the retry answers as before"
    );
    let m = sub.next_within(Duration::from_secs(5)).unwrap().expect("the message");
    assert_eq!((m.sequence, m.payload), (1, b"once".to_vec()));
    assert_eq!(
        sub.next_within(Duration::from_millis(200)).unwrap(),
        None,
        "the retry was not pushed again"
    );
    server.shutdown();
}

#[test]
fn a_waiting_poll_answers_retries_and_wrong_types_at_once() {
    let server = node();
    let c = client(&server);
    c.map("m").set(b"k", b"v").unwrap();
    let started = std::time::Instant::now();
    match c.queue("m").poll_wait(Duration::from_secs(5)) {
        Err(ClientError::Server {
            code: ErrorCode::WrongType,
            ..
        }) => {}
        other => panic!("expected WRONG_TYPE, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "a wrong type must not wait");
    c.queue("q").offer(b"item").unwrap();
    let mut conn =
        Connection::connect(server.local_addr(), 31, Duration::from_secs(2), Duration::from_secs(10)).unwrap();
    let poll = Payload::QueuePoll(loomcache_wire::QueuePoll {
        name: "q",
        wait_ms: 5_000,
    });
    assert_eq!(conn.call(&poll, Some(1)).unwrap(), Reply::Value(Some(b"item".to_vec())));
    // The answer was lost, say: the retry gets the same item, at once,
    // though the queue is empty now.
    let started = std::time::Instant::now();
    assert_eq!(conn.call(&poll, Some(1)).unwrap(), Reply::Value(Some(b"item".to_vec())));
    assert!(started.elapsed() < Duration::from_secs(2), "a retry must not wait");
    server.shutdown();
}

#[test]
fn a_subscriber_that_pipelines_publishes_gets_every_message() {
    // A bound of 2 unwritten frames: answers delivered together with the
    // messages must be written before they count against it.
    let config = Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        subscriber_queue_max: 2,
        ..Config::default()
    };
    let server = Server::start(config).unwrap();
    let mut conn =
        Connection::connect(server.local_addr(), 78, Duration::from_secs(2), Duration::from_secs(5)).unwrap();
    let subscribe = Payload::TopicSubscribe(loomcache_wire::Named { name: "t" });
    assert!(matches!(conn.call(&subscribe, None).unwrap(), Reply::Count(_)));
    const N: u64 = 1000;
    let values: Vec<Vec<u8>> = (0..N).map(|i| format!("m{i}").into_bytes()).collect();
    let publishes: Vec<Payload<'_>> = values
        .iter()
        .map(|v| Payload::TopicPublish(loomcache_wire::NamedValue { name: "t", value: v }))
        .collect();
    let requests: Vec<(&Payload<'_>, Option<u64>)> = publishes.iter().map(|p| (p, None)).collect();
    conn.send_many(&requests).unwrap();
    for i in 0..N {
        let m = conn
            .recv_push(Duration::from_secs(5))
            .unwrap()
            .unwrap_or_else(|| panic!("message {i} never came"));
        assert_eq!((m.sequence, m.dropped_before), (i + 1, 0), "message {i}");
    }
    server.shutdown();
}

#[test]
fn a_destroyed_structure_frees_its_name_for_any_type() {
    let server = node();
    let c = client(&server);
    c.map("m").put(b"k", b"v").unwrap();
    c.queue("q").offer(b"item").unwrap();
    c.set("s").add(b"x").unwrap();
    c.atomic_long("n").set(5).unwrap();
    match c.queue("m").destroy() {
        Err(ClientError::Server {
            code: ErrorCode::WrongType,
            ..
        }) => {}
        other => panic!("a queue destroy of a map: {other:?}"),
    }
    assert!(c.map("m").destroy().unwrap());
    assert!(c.queue("q").destroy().unwrap());
    assert!(c.set("s").destroy().unwrap());
    assert!(c.atomic_long("n").destroy().unwrap());
    assert!(!c.map("m").destroy().unwrap(), "gone already");
    assert_eq!(c.map("m").get(b"k").unwrap(), None);
    assert_eq!(c.atomic_long("n").get().unwrap(), 0);
    // Each name now takes another type.
    assert!(c.queue("m").offer(b"now a queue").unwrap());
    assert!(c.set("q").add(b"now a set").unwrap());
    server.shutdown();
}
