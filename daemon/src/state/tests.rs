use loomcache_wire::{
    encode_frame, frame_len, AtomicCompareAndSet, Batch, BatchOp, HeaderFields, Key, KeyValue, Keyed, MapCompareAndSet,
    MapGetAll, MapPutAll, MapWrite, Named, NamedLong, NamedValue, Page, QueueDrain, QueuePoll, Sequence,
};

use super::*;

fn frame(payload: &Payload<'_>, seq: Option<(u64, u64)>) -> Vec<u8> {
    let s = seq.map(|(c, n)| Sequence::new(c, n));
    let mut out = vec![0u8; frame_len(s.as_ref(), payload)];
    encode_frame(
        &mut out,
        &HeaderFields::request(payload.opcode(), 1),
        s.as_ref(),
        payload,
    )
    .unwrap();
    out
}

/// Applies `payload` as a log entry at leader time `now` and decodes the
/// answer; the closure sees it.
fn apply<R>(sm: &mut StateMachine, payload: &Payload<'_>, now: u64, f: impl FnOnce(Response<'_>) -> R) -> R {
    apply_seq(sm, payload, None, now, f)
}

fn apply_seq<R>(
    sm: &mut StateMachine,
    payload: &Payload<'_>,
    seq: Option<(u64, u64)>,
    now: u64,
    f: impl FnOnce(Response<'_>) -> R,
) -> R {
    let entry = frame(payload, seq);
    let mut out = Vec::new();
    let outcome = sm.apply(&entry, now, &mut out);
    let response = Response::decode(
        outcome.opcode,
        outcome.status.code(),
        payload.opcode(),
        &out,
        &Limits::DEFAULT,
    )
    .unwrap_or_else(|e| panic!("{}: undecodable answer: {e}", payload.opcode()));
    f(response)
}

fn read<R>(sm: &mut StateMachine, payload: &Payload<'_>, now: u64, f: impl FnOnce(Response<'_>) -> R) -> R {
    let mut out = Vec::new();
    let outcome = sm.read(payload, now, &mut out);
    let response = Response::decode(
        outcome.opcode,
        outcome.status.code(),
        payload.opcode(),
        &out,
        &Limits::DEFAULT,
    )
    .unwrap();
    f(response)
}

fn ok_value(r: Response<'_>) -> Option<Vec<u8>> {
    match r {
        Response::Ok(OkBody::Value(v)) => v.map(<[u8]>::to_vec),
        other => panic!("expected a value, got {other:?}"),
    }
}

fn ok_bool(r: Response<'_>) -> bool {
    match r {
        Response::Ok(OkBody::Bool(b)) => b,
        other => panic!("expected a bool, got {other:?}"),
    }
}

fn ok_count(r: Response<'_>) -> u64 {
    match r {
        Response::Ok(OkBody::Count(n)) => n,
        other => panic!("expected a count, got {other:?}"),
    }
}

fn ok_long(r: Response<'_>) -> i64 {
    match r {
        Response::Ok(OkBody::Long(n)) => n,
        other => panic!("expected a long, got {other:?}"),
    }
}

fn err_message(r: Response<'_>) -> String {
    match r {
        Response::Error { message, .. } => message.to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn err_code(r: Response<'_>) -> ErrorCode {
    match r {
        Response::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn put(name: &str, key: &'static [u8], value: &'static [u8], ttl_ms: u64) -> MapWrite<'static> {
    MapWrite {
        ttl_ms,
        name: Box::leak(name.into()),
        key,
        value,
    }
}

fn get(name: &'static str, key: &'static [u8]) -> Payload<'static> {
    Payload::MapGet(Keyed { name, key })
}

#[test]
fn map_writes_answer_as_documented() {
    let mut sm = StateMachine::new(StateConfig::default());
    assert_eq!(
        apply(&mut sm, &Payload::MapPut(put("m", b"k", b"v1", 0)), 1, ok_value),
        None
    );
    assert_eq!(
        apply(&mut sm, &Payload::MapPut(put("m", b"k", b"v2", 0)), 2, ok_value),
        Some(b"v1".to_vec())
    );
    assert_eq!(
        apply(&mut sm, &Payload::MapPutIfAbsent(put("m", b"k", b"v3", 0)), 3, ok_value),
        Some(b"v2".to_vec())
    );
    assert_eq!(
        apply(&mut sm, &Payload::MapPutIfAbsent(put("m", b"n", b"n1", 0)), 3, ok_value),
        None
    );
    assert_eq!(
        apply(&mut sm, &Payload::MapReplace(put("m", b"absent", b"x", 0)), 4, ok_value),
        None
    );
    assert_eq!(
        apply(&mut sm, &Payload::MapReplace(put("m", b"k", b"v4", 0)), 4, ok_value),
        Some(b"v2".to_vec())
    );
    apply(&mut sm, &Payload::MapSet(put("m", b"s", b"set", 0)), 5, |r| {
        assert_eq!(r, Response::Ok(OkBody::Empty))
    });
    let cas = |expected: &'static [u8], new: &'static [u8]| {
        Payload::MapCompareAndSet(MapCompareAndSet {
            ttl_ms: 0,
            name: "m",
            key: b"k",
            expected,
            new,
        })
    };
    assert!(!apply(&mut sm, &cas(b"wrong", b"v5"), 6, ok_bool));
    assert!(apply(&mut sm, &cas(b"v4", b"v5"), 6, ok_bool));
    assert_eq!(read(&mut sm, &get("m", b"k"), 6, ok_value), Some(b"v5".to_vec()));
    assert!(read(
        &mut sm,
        &Payload::MapContains(Keyed { name: "m", key: b"n" }),
        6,
        ok_bool
    ));
    assert_eq!(read(&mut sm, &Payload::MapSize(Named { name: "m" }), 6, ok_count), 3);
    assert!(apply(
        &mut sm,
        &Payload::MapDelete(Keyed { name: "m", key: b"n" }),
        7,
        ok_bool
    ));
    assert!(!apply(
        &mut sm,
        &Payload::MapDelete(Keyed { name: "m", key: b"n" }),
        7,
        ok_bool
    ));
    assert_eq!(apply(&mut sm, &Payload::MapClear(Named { name: "m" }), 8, ok_count), 2);
    assert_eq!(read(&mut sm, &Payload::MapSize(Named { name: "m" }), 8, ok_count), 0);
    assert_eq!(
        sm.memory_used(),
        entry_cost(1, 0),
        "clearing frees every entry; the name stays counted"
    );
}

#[test]
fn ttl_is_judged_from_the_leader_timestamp() {
    let mut sm = StateMachine::new(StateConfig::default());
    apply(&mut sm, &Payload::MapSet(put("m", b"k", b"v", 100)), 1_000, |_| ());
    assert_eq!(read(&mut sm, &get("m", b"k"), 1_099, ok_value), Some(b"v".to_vec()));
    // Invisible at once when the time passes, before any reclaim.
    assert_eq!(read(&mut sm, &get("m", b"k"), 1_100, ok_value), None);
    assert_eq!(
        read(&mut sm, &Payload::MapSize(Named { name: "m" }), 1_100, ok_count),
        0
    );
    // A put over an expired entry answers no previous value.
    assert_eq!(
        apply(&mut sm, &Payload::MapPut(put("m", b"k", b"w", 0)), 1_200, ok_value),
        None
    );
    assert_eq!(read(&mut sm, &get("m", b"k"), 1_000_000, ok_value), Some(b"w".to_vec()));
}

#[test]
fn a_rewrite_outlives_the_expiry_of_the_value_it_replaced() {
    let mut sm = StateMachine::new(StateConfig::default());
    let tick =
        |sm: &mut StateMachine, now| apply(sm, &Payload::AtomicSet(NamedLong { name: "t", value: 0 }), now, |_| ());
    apply(&mut sm, &Payload::MapSet(put("m", b"a", b"1", 10)), 0, |_| ());
    apply(&mut sm, &Payload::MapSet(put("m", b"b", b"1", 10)), 0, |_| ());
    // `a` moves its expiry later, `b` drops its TTL.
    apply(&mut sm, &Payload::MapSet(put("m", b"a", b"2", 100)), 5, |_| ());
    apply(&mut sm, &Payload::MapSet(put("m", b"b", b"2", 0)), 5, |_| ());
    tick(&mut sm, 5);
    let before = sm.memory_used();
    // The records of the first writes fall due: neither entry goes.
    tick(&mut sm, 50);
    assert_eq!(sm.memory_used(), before);
    assert_eq!(read(&mut sm, &get("m", b"a"), 50, ok_value), Some(b"2".to_vec()));
    assert_eq!(read(&mut sm, &get("m", b"b"), 50, ok_value), Some(b"2".to_vec()));
    // The rewrite's own record reclaims `a` once it expires.
    tick(&mut sm, 200);
    assert_eq!(before - sm.memory_used(), entry_cost(1, 1));
    assert_eq!(read(&mut sm, &get("m", b"a"), 200, ok_value), None);
    assert_eq!(read(&mut sm, &get("m", b"b"), 200, ok_value), Some(b"2".to_vec()));
}

#[test]
fn expired_entries_are_reclaimed_a_bounded_number_per_apply() {
    let config = StateConfig {
        reclaim_per_apply: 2,
        ..StateConfig::default()
    };
    let mut sm = StateMachine::new(config);
    let keys: Vec<&'static [u8]> = (0..5)
        .map(|i| &*Box::leak(format!("k{i}").into_bytes().into_boxed_slice()))
        .collect();
    for k in &keys {
        apply(&mut sm, &Payload::MapSet(put("m", k, b"v", 10)), 0, |_| ());
    }
    apply(
        &mut sm,
        &Payload::AtomicSet(NamedLong { name: "tick", value: 0 }),
        0,
        |_| (),
    );
    let full = sm.memory_used();
    apply(
        &mut sm,
        &Payload::AtomicSet(NamedLong { name: "tick", value: 1 }),
        20,
        |_| (),
    );
    let after_one = sm.memory_used();
    assert_eq!(full - after_one, 2 * entry_cost(2, 1), "two reclaimed per apply");
    for _ in 0..3 {
        apply(
            &mut sm,
            &Payload::AtomicSet(NamedLong { name: "tick", value: 1 }),
            21,
            |_| (),
        );
    }
    assert_eq!(
        sm.memory_used(),
        entry_cost(1, 0) + entry_cost(4, 0),
        "only the names remain"
    );
}

#[test]
fn scans_page_by_insertion_order_and_survive_updates() {
    let mut sm = StateMachine::new(StateConfig::default());
    let keys: Vec<&'static [u8]> = (0..25)
        .map(|i| &*Box::leak(format!("k{i:02}").into_bytes().into_boxed_slice()))
        .collect();
    for k in &keys {
        apply(&mut sm, &Payload::MapSet(put("m", k, b"v", 0)), 0, |_| ());
    }
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut pages = 0;
    loop {
        let scan = Payload::MapScan(Page {
            name: "m",
            cursor,
            page_size: 10,
        });
        let next = read(&mut sm, &scan, 0, |r| match r {
            Response::Ok(OkBody::ScanPage(p)) => {
                seen.extend(p.entries.iter().map(|e| e.key.to_vec()));
                p.cursor
            }
            other => panic!("{other:?}"),
        });
        pages += 1;
        if pages == 1 {
            // Rewrites during the scan keep their place: a key already
            // seen is not seen again, one not reached yet is still seen.
            apply(&mut sm, &Payload::MapSet(put("m", b"k03", b"new", 0)), 1, |_| ());
            apply(&mut sm, &Payload::MapSet(put("m", b"k20", b"new", 0)), 1, |_| ());
            // A key removed and written again moves to the end: seen twice.
            apply(
                &mut sm,
                &Payload::MapDelete(Keyed { name: "m", key: b"k05" }),
                1,
                |_| (),
            );
            apply(&mut sm, &Payload::MapSet(put("m", b"k05", b"again", 0)), 1, |_| ());
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for k in &keys {
        let times = seen.iter().filter(|s| s.as_slice() == *k).count();
        let expected = if *k == b"k05" { 2 } else { 1 };
        assert_eq!(times, expected, "{} seen {times} times", String::from_utf8_lossy(k));
    }
    assert_eq!(seen.len(), keys.len() + 1);
    assert!(pages >= 3);
}

#[test]
fn get_all_and_put_all() {
    let mut sm = StateMachine::new(StateConfig::default());
    let entries = [KeyValue { key: b"a", value: b"1" }, KeyValue { key: b"b", value: b"2" }];
    apply(
        &mut sm,
        &Payload::MapPutAll(MapPutAll {
            ttl_ms: 0,
            name: "m",
            entries: Seq::Items(&entries),
        }),
        0,
        |r| assert_eq!(r, Response::Ok(OkBody::Empty)),
    );
    let keys = [Key(b"a"), Key(b"zz"), Key(b"b")];
    read(
        &mut sm,
        &Payload::MapGetAll(MapGetAll {
            name: "m",
            keys: Seq::Items(&keys),
        }),
        0,
        |r| match r {
            Response::Ok(OkBody::Entries(found)) => {
                let got: Vec<_> = found.iter().map(|e| (e.key.to_vec(), e.value.to_vec())).collect();
                assert_eq!(
                    got,
                    vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]
                );
            }
            other => panic!("{other:?}"),
        },
    );
}

#[test]
fn queues_sets_atomics_topics() {
    let mut sm = StateMachine::new(StateConfig {
        queue_capacity: 3,
        ..StateConfig::default()
    });
    for item in [&b"a"[..], b"b", b"c"] {
        assert!(apply(
            &mut sm,
            &Payload::QueueOffer(NamedValue { name: "q", value: item }),
            0,
            ok_bool
        ));
    }
    assert!(
        !apply(
            &mut sm,
            &Payload::QueueOffer(NamedValue { name: "q", value: b"d" }),
            0,
            ok_bool
        ),
        "full"
    );
    assert_eq!(
        read(&mut sm, &Payload::QueuePeek(Named { name: "q" }), 0, ok_value),
        Some(b"a".to_vec())
    );
    assert_eq!(
        apply(
            &mut sm,
            &Payload::QueuePoll(QueuePoll { name: "q", wait_ms: 0 }),
            0,
            ok_value
        ),
        Some(b"a".to_vec())
    );
    apply(
        &mut sm,
        &Payload::QueueDrain(QueueDrain {
            name: "q",
            max_items: 5,
        }),
        0,
        |r| match r {
            Response::Ok(OkBody::Values(v)) => assert_eq!(
                v.iter().map(|x| x.0.to_vec()).collect::<Vec<_>>(),
                vec![b"b".to_vec(), b"c".to_vec()]
            ),
            other => panic!("{other:?}"),
        },
    );
    assert_eq!(
        apply(
            &mut sm,
            &Payload::QueuePoll(QueuePoll { name: "q", wait_ms: 0 }),
            0,
            ok_value
        ),
        None
    );
    assert_eq!(read(&mut sm, &Payload::QueueSize(Named { name: "q" }), 0, ok_count), 0);
    assert_eq!(
        sm.memory_used(),
        entry_cost(1, 0),
        "an empty queue counts only its name"
    );

    assert!(apply(
        &mut sm,
        &Payload::SetAdd(Keyed { name: "s", key: b"x" }),
        0,
        ok_bool
    ));
    assert!(!apply(
        &mut sm,
        &Payload::SetAdd(Keyed { name: "s", key: b"x" }),
        0,
        ok_bool
    ));
    assert!(apply(
        &mut sm,
        &Payload::SetAdd(Keyed { name: "s", key: b"y" }),
        0,
        ok_bool
    ));
    assert!(read(
        &mut sm,
        &Payload::SetContains(Keyed { name: "s", key: b"y" }),
        0,
        ok_bool
    ));
    read(
        &mut sm,
        &Payload::SetMembers(Page {
            name: "s",
            cursor: 0,
            page_size: 1,
        }),
        0,
        |r| match r {
            Response::Ok(OkBody::MembersPage(p)) => {
                assert_eq!(p.members.len(), 1);
                assert_ne!(p.cursor, 0, "more to come");
            }
            other => panic!("{other:?}"),
        },
    );
    assert!(apply(
        &mut sm,
        &Payload::SetRemove(Keyed { name: "s", key: b"x" }),
        0,
        ok_bool
    ));
    assert_eq!(read(&mut sm, &Payload::SetSize(Named { name: "s" }), 0, ok_count), 1);
    assert_eq!(apply(&mut sm, &Payload::SetClear(Named { name: "s" }), 0, ok_count), 1);

    let l = |value| NamedLong { name: "n", value };
    apply(&mut sm, &Payload::AtomicSet(l(10)), 0, |_| ());
    assert_eq!(apply(&mut sm, &Payload::AtomicAddAndGet(l(5)), 0, ok_long), 15);
    assert_eq!(apply(&mut sm, &Payload::AtomicGetAndAdd(l(-20)), 0, ok_long), 15);
    assert_eq!(apply(&mut sm, &Payload::AtomicGetAndSet(l(7)), 0, ok_long), -5);
    let cas = |expected, new| {
        Payload::AtomicCompareAndSet(AtomicCompareAndSet {
            name: "n",
            expected,
            new,
        })
    };
    assert!(!apply(&mut sm, &cas(8, 9), 0, ok_bool));
    assert!(apply(&mut sm, &cas(7, 9), 0, ok_bool));
    assert_eq!(read(&mut sm, &Payload::AtomicGet(Named { name: "n" }), 0, ok_long), 9);
    apply(&mut sm, &Payload::AtomicSet(l(i64::MAX)), 0, |_| ());
    assert_eq!(
        apply(&mut sm, &Payload::AtomicAddAndGet(l(1)), 0, ok_long),
        i64::MIN,
        "wraps, never panics"
    );

    let publish = Payload::TopicPublish(NamedValue {
        name: "t",
        value: b"hello",
    });
    assert_eq!(apply(&mut sm, &publish, 0, ok_count), 1);
    assert_eq!(apply(&mut sm, &publish, 0, ok_count), 2);
}

#[test]
fn a_name_has_one_type() {
    let mut sm = StateMachine::new(StateConfig::default());
    apply(&mut sm, &Payload::MapSet(put("shared", b"k", b"v", 0)), 0, |_| ());
    let offer = Payload::QueueOffer(NamedValue {
        name: "shared",
        value: b"x",
    });
    assert_eq!(apply(&mut sm, &offer, 0, err_code), ErrorCode::WrongType);
    assert_eq!(
        read(&mut sm, &Payload::SetSize(Named { name: "shared" }), 0, err_code),
        ErrorCode::WrongType
    );
    // The message says what the name is.
    assert_eq!(
        apply(&mut sm, &offer, 0, err_message),
        "the name is bound to a Map, not a Queue"
    );
    let add = Payload::AtomicAddAndGet(NamedLong {
        name: "shared",
        value: 1,
    });
    assert_eq!(
        apply(&mut sm, &add, 0, err_message),
        "the name is bound to a Map, not an AtomicLong"
    );
    apply(
        &mut sm,
        &Payload::QueueOffer(NamedValue { name: "q", value: b"x" }),
        0,
        |_| (),
    );
    let put_q = Payload::MapSet(put("q", b"k", b"v", 0));
    assert_eq!(
        apply(&mut sm, &put_q, 0, err_message),
        "the name is bound to a Queue, not a Map"
    );
}

#[test]
fn the_memory_limit_refuses_writes_and_changes_nothing() {
    let limit = entry_cost(1, 0) + 3 * entry_cost(2, 10);
    let mut sm = StateMachine::new(StateConfig {
        data_memory_max_bytes: limit,
        ..StateConfig::default()
    });
    for k in [&b"k1"[..], b"k2", b"k3"] {
        apply(
            &mut sm,
            &Payload::MapSet(MapWrite {
                ttl_ms: 0,
                name: "m",
                key: k,
                value: &[0; 10],
            }),
            0,
            |r| assert_eq!(r, Response::Ok(OkBody::Empty)),
        );
    }
    let more = Payload::MapSet(MapWrite {
        ttl_ms: 0,
        name: "m",
        key: b"k4",
        value: &[0; 10],
    });
    assert_eq!(apply(&mut sm, &more, 0, err_code), ErrorCode::OutOfMemory);
    assert_eq!(read(&mut sm, &get("m", b"k4"), 0, ok_value), None);
    // Overwriting with a value of the same size fits.
    let same = Payload::MapSet(MapWrite {
        ttl_ms: 0,
        name: "m",
        key: b"k1",
        value: &[1; 10],
    });
    apply(&mut sm, &same, 0, |r| assert_eq!(r, Response::Ok(OkBody::Empty)));
    // A put_all that does not fit whole is refused whole.
    let entries = [KeyValue { key: b"x", value: b"1" }];
    let all = Payload::MapPutAll(MapPutAll {
        ttl_ms: 0,
        name: "m",
        entries: Seq::Items(&entries),
    });
    assert_eq!(apply(&mut sm, &all, 0, err_code), ErrorCode::OutOfMemory);
    apply(&mut sm, &Payload::MapDelete(Keyed { name: "m", key: b"k2" }), 0, |_| ());
    apply(&mut sm, &more, 0, |r| assert_eq!(r, Response::Ok(OkBody::Empty)));
    assert_eq!(sm.memory_used(), limit);
}

#[test]
fn conditional_puts_take_an_expired_entry_for_absent() {
    // Nothing reclaimed: the expired entry is still stored when the puts
    // meet it.
    let mut sm = StateMachine::new(StateConfig {
        reclaim_per_apply: 0,
        ..StateConfig::default()
    });
    apply(&mut sm, &Payload::MapPut(put("m", b"k", b"old", 10)), 0, ok_value);
    // Expired at 10: a replace finds nothing to replace and shows nothing.
    assert_eq!(
        apply(&mut sm, &Payload::MapReplace(put("m", b"k", b"r", 0)), 20, ok_value),
        None
    );
    assert_eq!(read(&mut sm, &get("m", b"k"), 20, ok_value), None);
    // A put-if-absent stores over it and answers that nothing was there.
    assert_eq!(
        apply(
            &mut sm,
            &Payload::MapPutIfAbsent(put("m", b"k", b"new", 0)),
            20,
            ok_value
        ),
        None
    );
    assert_eq!(read(&mut sm, &get("m", b"k"), 20, ok_value), Some(b"new".to_vec()));
    // Now live, it declines the next one and shows the value it keeps.
    assert_eq!(
        apply(
            &mut sm,
            &Payload::MapPutIfAbsent(put("m", b"k", b"later", 0)),
            21,
            ok_value
        ),
        Some(b"new".to_vec())
    );
    assert_eq!(sm.memory_used(), entry_cost(1, 0) + entry_cost(1, 3));
}

#[test]
fn an_overwrite_that_grows_past_the_memory_limit_keeps_the_old_value() {
    let limit = entry_cost(1, 0) + entry_cost(1, 10);
    let mut sm = StateMachine::new(StateConfig {
        data_memory_max_bytes: limit,
        ..StateConfig::default()
    });
    apply(&mut sm, &Payload::MapPut(put("m", b"k", b"0123456789", 0)), 0, ok_value);
    let bigger = Payload::MapPut(put("m", b"k", b"0123456789a", 0));
    assert_eq!(apply(&mut sm, &bigger, 0, err_code), ErrorCode::OutOfMemory);
    assert_eq!(
        read(&mut sm, &get("m", b"k"), 0, ok_value),
        Some(b"0123456789".to_vec())
    );
    assert_eq!(sm.memory_used(), limit);
}

#[test]
fn the_first_put_into_a_new_map_counts_the_name_against_the_limit() {
    // Room for the entry, or for the map's name, but not for both.
    let limit = entry_cost(1, 0) + entry_cost(1, 10) - 1;
    let mut sm = StateMachine::new(StateConfig {
        data_memory_max_bytes: limit,
        ..StateConfig::default()
    });
    let first = Payload::MapPut(put("m", b"k", b"0123456789", 0));
    assert_eq!(apply(&mut sm, &first, 0, err_code), ErrorCode::OutOfMemory);
    assert_eq!(read(&mut sm, &get("m", b"k"), 0, ok_value), None);
    // Refused, it leaves no map behind: nothing is counted, and the name
    // is free for another type.
    assert_eq!(sm.memory_used(), 0);
    let offer = Payload::QueueOffer(NamedValue { name: "m", value: b"x" });
    assert!(apply(&mut sm, &offer, 0, ok_bool));
}

#[test]
fn a_replace_or_compare_and_set_on_a_new_name_creates_nothing() {
    let mut sm = StateMachine::new(StateConfig::default());
    assert_eq!(
        apply(&mut sm, &Payload::MapReplace(put("m", b"k", b"v", 0)), 0, ok_value),
        None
    );
    let cas = Payload::MapCompareAndSet(MapCompareAndSet {
        ttl_ms: 0,
        name: "n",
        key: b"k",
        expected: b"",
        new: b"v",
    });
    assert!(!apply(&mut sm, &cas, 0, ok_bool));
    let atomic_cas = |name, expected, new| Payload::AtomicCompareAndSet(AtomicCompareAndSet { name, expected, new });
    assert!(!apply(&mut sm, &atomic_cas("a", 5, 6), 0, ok_bool));
    assert_eq!(sm.memory_used(), 0);
    for name in ["m", "n", "a"] {
        let offer = Payload::QueueOffer(NamedValue { name, value: b"x" });
        assert!(apply(&mut sm, &offer, 0, ok_bool), "{name} is free for a queue");
    }
    // A missing AtomicLong reads as 0, so expecting 0 succeeds.
    assert!(apply(&mut sm, &atomic_cas("b", 0, 6), 0, ok_bool));
    assert!(!apply(&mut sm, &atomic_cas("b", 0, 7), 0, ok_bool));
}

#[test]
fn every_write_refused_for_memory_leaves_no_new_structure() {
    let key = [7u8; 40];
    let value = [9u8; 100];
    let entries = [KeyValue {
        key: &key,
        value: &value,
    }];
    let refused = [
        Payload::MapPut(MapWrite {
            ttl_ms: 0,
            name: "n",
            key: &key,
            value: &value,
        }),
        Payload::MapPutAll(MapPutAll {
            ttl_ms: 0,
            name: "n",
            entries: Seq::Items(&entries),
        }),
        Payload::QueueOffer(NamedValue {
            name: "n",
            value: &value,
        }),
        Payload::SetAdd(Keyed { name: "n", key: &key }),
    ];
    for p in &refused {
        // Room for the name alone.
        let mut sm = StateMachine::new(StateConfig {
            data_memory_max_bytes: entry_cost(1, 0),
            ..StateConfig::default()
        });
        assert_eq!(apply(&mut sm, p, 0, err_code), ErrorCode::OutOfMemory, "{}", p.opcode());
        assert_eq!(sm.memory_used(), 0, "{}", p.opcode());
        assert_eq!(
            read(&mut sm, &Payload::SetSize(Named { name: "n" }), 0, ok_count),
            0,
            "{} left a structure of another type",
            p.opcode()
        );
    }
}

#[test]
fn retried_writes_apply_once() {
    let mut sm = StateMachine::new(StateConfig::default());
    let add = Payload::AtomicAddAndGet(NamedLong { name: "n", value: 1 });
    assert_eq!(apply_seq(&mut sm, &add, Some((7, 1)), 0, ok_long), 1);
    assert_eq!(apply_seq(&mut sm, &add, Some((7, 2)), 0, ok_long), 2);
    // A retry of sequence 2 gets the same answer and changes nothing.
    assert_eq!(apply_seq(&mut sm, &add, Some((7, 2)), 0, ok_long), 2);
    assert_eq!(read(&mut sm, &Payload::AtomicGet(Named { name: "n" }), 0, ok_long), 2);
    // Sequence 1 is still in the window: its retry answers as before.
    assert_eq!(apply_seq(&mut sm, &add, Some((7, 1)), 0, ok_long), 1);
    // Another client is independent.
    assert_eq!(apply_seq(&mut sm, &add, Some((8, 1)), 0, ok_long), 3);
}

#[test]
fn a_poll_that_found_nothing_is_not_remembered() {
    let mut sm = StateMachine::new(StateConfig::default());
    let poll = Payload::QueuePoll(QueuePoll {
        name: "q",
        wait_ms: 500,
    });
    let offer = |item: &'static [u8]| Payload::QueueOffer(NamedValue { name: "q", value: item });
    assert_eq!(apply_seq(&mut sm, &poll, Some((3, 1)), 0, ok_value), None);
    apply(&mut sm, &offer(b"a"), 0, |_| ());
    // The same sequence again polls again: the empty poll changed nothing.
    assert_eq!(
        apply_seq(&mut sm, &poll, Some((3, 1)), 0, ok_value),
        Some(b"a".to_vec())
    );
    // Once it took an item, a retry answers that item and takes no other.
    apply(&mut sm, &offer(b"b"), 0, |_| ());
    assert_eq!(
        apply_seq(&mut sm, &poll, Some((3, 1)), 0, ok_value),
        Some(b"a".to_vec())
    );
    assert_eq!(apply(&mut sm, &poll, 0, ok_value), Some(b"b".to_vec()));
}

#[test]
fn writes_in_flight_together_may_apply_in_any_order() {
    let config = StateConfig {
        dedup: DedupConfig {
            window: 4,
            ..DedupConfig::default()
        },
        ..StateConfig::default()
    };
    let mut sm = StateMachine::new(config);
    let add = Payload::AtomicAddAndGet(NamedLong { name: "n", value: 1 });
    // Sequence 6 arrives before 5: both apply, once each.
    assert_eq!(apply_seq(&mut sm, &add, Some((1, 6)), 0, ok_long), 1);
    assert_eq!(apply_seq(&mut sm, &add, Some((1, 5)), 0, ok_long), 2);
    assert_eq!(apply_seq(&mut sm, &add, Some((1, 5)), 0, ok_long), 2, "a retry of 5");
    assert_eq!(apply_seq(&mut sm, &add, Some((1, 6)), 0, ok_long), 1, "a retry of 6");
    // Below the window (highest 6, window 4 keeps 3..=6): lost.
    apply_seq(&mut sm, &add, Some((1, 2)), 0, |r| {
        assert_eq!(
            r,
            Response::SequenceLost(loomcache_wire::SequenceLost { oldest_retained: 3 })
        )
    });
    assert_eq!(read(&mut sm, &Payload::AtomicGet(Named { name: "n" }), 0, ok_long), 2);
}

#[test]
fn answers_too_large_to_keep_are_never_applied_twice() {
    let config = StateConfig {
        dedup: DedupConfig {
            answer_max_bytes: 4,
            ..DedupConfig::default()
        },
        ..StateConfig::default()
    };
    let mut sm = StateMachine::new(config);
    apply(
        &mut sm,
        &Payload::MapSet(put("m", b"k", b"a long previous value", 0)),
        0,
        |_| (),
    );
    let p = Payload::MapPut(put("m", b"k", b"new", 0));
    assert_eq!(
        apply_seq(&mut sm, &p, Some((3, 1)), 0, ok_value),
        Some(b"a long previous value".to_vec())
    );
    apply_seq(&mut sm, &p, Some((3, 1)), 0, |r| {
        assert!(matches!(r, Response::SequenceLost(_)), "{r:?}")
    });
}

#[test]
fn reads_are_argument_checked() {
    let mut sm = StateMachine::new(StateConfig::default());
    let scan = Payload::MapScan(Page {
        name: "m",
        cursor: 0,
        page_size: 0,
    });
    assert_eq!(read(&mut sm, &scan, 0, err_code), ErrorCode::InvalidArgument);
    // The message names the bound it refers to.
    let message = read(&mut sm, &scan, 0, err_message);
    let max = StateConfig::default().limits.items_max;
    assert!(message.ends_with(&format!("({max})")), "{message}");
}

#[test]
fn dedup_forgets_idle_and_excess_clients() {
    let config = StateConfig {
        dedup: DedupConfig {
            clients_max: 2,
            ttl_ms: 100,
            ..DedupConfig::default()
        },
        ..StateConfig::default()
    };
    let mut sm = StateMachine::new(config);
    let add = Payload::AtomicAddAndGet(NamedLong { name: "n", value: 1 });
    for client in 1..=3 {
        apply_seq(&mut sm, &add, Some((client, 1)), 0, |_| ());
    }
    assert_eq!(sm.dedup.len(), 2, "bounded by clients_max");
    apply_seq(&mut sm, &add, Some((9, 1)), 1_000, |_| ());
    assert_eq!(sm.dedup.len(), 1, "idle clients forgotten");
}

#[test]
fn bad_entries_answer_errors_and_change_nothing() {
    let mut sm = StateMachine::new(StateConfig::default());
    let mut out = Vec::new();
    let outcome = sm.apply(b"not a frame", 0, &mut out);
    assert_eq!(outcome.status, ErrorCode::Malformed);
    // A read is not a log entry.
    assert_eq!(apply(&mut sm, &get("m", b"k"), 0, err_code), ErrorCode::Malformed);
    // Argument checks apply.
    let drain = Payload::QueueDrain(QueueDrain {
        name: "q",
        max_items: 0,
    });
    assert_eq!(apply(&mut sm, &drain, 0, err_code), ErrorCode::InvalidArgument);
    assert_eq!(sm.structure_count(), 0);
}

#[test]
fn batches_apply_each_operation_and_report_each_outcome() {
    let mut sm = StateMachine::new(StateConfig::default());
    apply(
        &mut sm,
        &Payload::QueueOffer(NamedValue { name: "q", value: b"x" }),
        0,
        |_| (),
    );
    // An AtomicLong add, then a map get on a queue's name (wrong type).
    let add = [1u8, b'n', 5, 0, 0, 0, 0, 0, 0, 0];
    let get = [1u8, b'q', 1, 0, b'k'];
    let ops = [
        BatchOp {
            opcode: Opcode::AtomicAddAndGet,
            payload: &add,
        },
        BatchOp {
            opcode: Opcode::MapGet,
            payload: &get,
        },
    ];
    apply(
        &mut sm,
        &Payload::BatchExecute(Batch { ops: Seq::Items(&ops) }),
        0,
        |r| match r {
            Response::Ok(OkBody::Batch(results)) => {
                let results: Vec<_> = results.iter().collect();
                assert_eq!(
                    results[0].outcome(Opcode::AtomicAddAndGet, &Limits::DEFAULT).unwrap(),
                    Response::Ok(OkBody::Long(5))
                );
                assert!(matches!(
                    results[1].outcome(Opcode::MapGet, &Limits::DEFAULT).unwrap(),
                    Response::Error {
                        code: ErrorCode::WrongType,
                        ..
                    }
                ));
            }
            other => panic!("{other:?}"),
        },
    );
}

/// Two replicas applying the same entries answer alike and end alike.
#[test]
fn replicas_are_deterministic() {
    let mut a = StateMachine::new(StateConfig {
        reclaim_per_apply: 1,
        ..StateConfig::default()
    });
    let mut b = StateMachine::new(StateConfig {
        reclaim_per_apply: 1,
        ..StateConfig::default()
    });
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let keys: Vec<&'static [u8]> = (0..8)
        .map(|i| &*Box::leak(format!("k{i}").into_bytes().into_boxed_slice()))
        .collect();
    for step in 0..2_000u64 {
        let k = keys[(next() % 8) as usize];
        let payload = match next() % 6 {
            0 => Payload::MapPut(put("m", k, b"value", next() % 50)),
            1 => Payload::MapDelete(Keyed { name: "m", key: k }),
            2 => Payload::QueueOffer(NamedValue { name: "q", value: k }),
            3 => Payload::QueuePoll(QueuePoll { name: "q", wait_ms: 0 }),
            4 => Payload::SetAdd(Keyed { name: "s", key: k }),
            _ => Payload::MapScan(Page {
                name: "m",
                cursor: 0,
                page_size: 3,
            }),
        };
        let entry = frame(&payload, Some((1 + next() % 3, step + 1)));
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        let oa = a.apply(&entry, step * 3, &mut out_a);
        let ob = b.apply(&entry, step * 3, &mut out_b);
        assert_eq!((oa, &out_a), (ob, &out_b), "step {step}");
        assert_eq!(a.memory_used(), b.memory_used());
    }
}

/// A snapshot restored on a fresh replica writes the same bytes, and the
/// two answer everything after it alike.
#[test]
fn snapshots_restore_to_an_identical_replica() {
    let config = StateConfig {
        reclaim_per_apply: 1,
        ..StateConfig::default()
    };
    let mut a = StateMachine::new(config);
    let mut b = StateMachine::new(config);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let keys: Vec<&'static [u8]> = (0..8)
        .map(|i| &*Box::leak(format!("k{i}").into_bytes().into_boxed_slice()))
        .collect();
    for step in 0..3_000u64 {
        if step % 250 == 0 {
            let bytes = a.snapshot();
            b.restore(&bytes).unwrap();
            assert_eq!(b.snapshot(), bytes, "step {step}");
            assert_eq!(b.memory_used(), a.memory_used());
        }
        let k = keys[(next() % 8) as usize];
        let payload = match next() % 9 {
            0 => Payload::MapPut(put("m", k, b"value", next() % 50)),
            1 => Payload::MapDelete(Keyed { name: "m", key: k }),
            2 => Payload::QueueOffer(NamedValue { name: "q", value: k }),
            3 => Payload::QueuePoll(QueuePoll { name: "q", wait_ms: 0 }),
            4 => Payload::SetAdd(Keyed { name: "s", key: k }),
            5 => Payload::AtomicAddAndGet(NamedLong { name: "n", value: 3 }),
            6 => Payload::TopicPublish(NamedValue { name: "t", value: k }),
            7 => Payload::SetRemove(Keyed { name: "s", key: k }),
            _ => Payload::MapScan(Page {
                name: "m",
                cursor: 0,
                page_size: 3,
            }),
        };
        // Retries of earlier sequences exercise the restored dedup table.
        let seq = if next() % 10 == 0 { step.max(2) - 1 } else { step + 1 };
        let entry = frame(&payload, Some((1 + next() % 3, seq)));
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        let oa = a.apply(&entry, step * 3, &mut out_a);
        let ob = b.apply(&entry, step * 3, &mut out_b);
        assert_eq!((oa, &out_a), (ob, &out_b), "step {step}");
        assert_eq!(a.memory_used(), b.memory_used(), "step {step}: reclaim runs alike");
    }
    let empty = StateMachine::new(config).snapshot();
    b.restore(&[]).unwrap();
    assert_eq!(b.snapshot(), empty, "an empty snapshot is the empty state");
}

/// A snapshot view finished after more writes (values replaced, keys
/// deleted and written again, queues and sets changed) holds exactly the
/// bytes of the moment it was taken, after whatever prefix it is given.
#[test]
fn a_view_finished_later_is_the_snapshot_of_its_moment() {
    let mut sm = StateMachine::new(StateConfig::default());
    let values: Vec<&'static [u8]> = (0..16)
        .map(|i| &*Box::leak(vec![b'a' + i as u8; 100 + i * 37].into_boxed_slice()))
        .collect();
    let keys: Vec<&'static [u8]> = (0..8)
        .map(|i| &*Box::leak(format!("k{i}").into_bytes().into_boxed_slice()))
        .collect();
    let mut pending: Option<(SnapshotView, Vec<u8>)> = None;
    for step in 0..2_000usize {
        if step % 100 == 0 {
            if let Some((view, bytes)) = pending.take() {
                let finished = view.finish_into(b"prefix".to_vec());
                assert_eq!(&finished[..6], b"prefix");
                assert_eq!(&finished[6..], &bytes[..], "the view taken at step {}", step - 100);
            }
            pending = Some((sm.snapshot_view(), sm.snapshot()));
        }
        let k = keys[step * 7 % 8];
        let v = values[step * 5 % 16];
        let payload = match step % 5 {
            0 | 1 => Payload::MapPut(put("m", k, v, 0)),
            2 => Payload::MapDelete(Keyed { name: "m", key: k }),
            3 => Payload::QueueOffer(NamedValue { name: "q", value: v }),
            _ => Payload::SetAdd(Keyed { name: "s", key: k }),
        };
        let mut out = Vec::new();
        sm.apply(&frame(&payload, None), step as u64, &mut out);
    }
}

/// Damaged snapshot bytes are an error (or, for a changed value byte, a
/// different valid state), never a panic, and a failed restore changes
/// nothing.
#[test]
fn damaged_snapshots_are_refused_without_harm() {
    let mut sm = StateMachine::new(StateConfig::default());
    apply(&mut sm, &Payload::MapPut(put("m", b"k", b"v", 100)), 1, |_| ());
    apply(
        &mut sm,
        &Payload::QueueOffer(NamedValue { name: "q", value: b"i" }),
        2,
        |_| (),
    );
    apply_seq(
        &mut sm,
        &Payload::SetAdd(Keyed { name: "s", key: b"x" }),
        Some((9, 1)),
        3,
        |_| (),
    );
    let good = sm.snapshot();
    let mut other = StateMachine::new(StateConfig::default());
    apply(&mut other, &Payload::MapPut(put("keep", b"a", b"b", 0)), 1, |_| ());
    let before = other.snapshot();
    // (Zero bytes is the empty state, by design.)
    for cut in 1..good.len() {
        assert!(other.restore(&good[..cut]).is_err(), "truncated at {cut}");
        assert_eq!(other.snapshot(), before);
    }
    for at in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at] ^= 1 << bit;
            if other.restore(&bad).is_err() {
                assert_eq!(other.snapshot(), before, "byte {at} bit {bit}");
            } else {
                other.restore(&before).unwrap();
            }
        }
    }
}

/// The TTL index travels in the snapshot as it stands, stale records
/// included, so a restored replica reclaims exactly as one that applied
/// the log.
#[test]
fn restored_replicas_reclaim_like_the_original() {
    let config = StateConfig {
        reclaim_per_apply: 1,
        ..StateConfig::default()
    };
    let mut a = StateMachine::new(config);
    apply(&mut a, &Payload::MapPut(put("m", b"k", b"v", 10)), 0, |_| ());
    // The overwrite leaves the first expiry record stale.
    apply(&mut a, &Payload::MapPut(put("m", b"k", b"w", 10)), 1, |_| ());
    let mut b = StateMachine::new(config);
    b.restore(&a.snapshot()).unwrap();
    for t in [20, 21, 22] {
        apply(
            &mut a,
            &Payload::AtomicAddAndGet(NamedLong { name: "n", value: 1 }),
            t,
            |_| (),
        );
        apply(
            &mut b,
            &Payload::AtomicAddAndGet(NamedLong { name: "n", value: 1 }),
            t,
            |_| (),
        );
        assert_eq!(a.memory_used(), b.memory_used(), "at {t}");
        assert_eq!(a.snapshot(), b.snapshot(), "at {t}");
    }
}

#[test]
fn destroying_a_structure_frees_its_contents_and_its_name() {
    let mut sm = StateMachine::new(StateConfig::default());
    let named = |name: &'static str| Named { name };
    // Nothing bound: false, nothing created.
    assert!(!apply(&mut sm, &Payload::MapDestroy(named("m")), 0, ok_bool));
    assert_eq!(sm.memory_used(), 0);

    apply(&mut sm, &Payload::MapPut(put("m", b"k1", b"v", 0)), 1, |_| ());
    apply(&mut sm, &Payload::MapPut(put("m", b"k2", b"v", 5)), 1, |_| ());
    apply(
        &mut sm,
        &Payload::QueueOffer(NamedValue {
            name: "q",
            value: b"item",
        }),
        1,
        |_| (),
    );
    apply(&mut sm, &Payload::SetAdd(Keyed { name: "s", key: b"x" }), 1, |_| ());
    apply(
        &mut sm,
        &Payload::AtomicSet(NamedLong { name: "n", value: 9 }),
        1,
        |_| (),
    );
    assert!(sm.memory_used() > 0);

    // Another type's destroy is refused and changes nothing.
    let refused = apply(&mut sm, &Payload::QueueDestroy(named("m")), 2, err_message);
    assert!(refused.contains("Map") && refused.contains("Queue"), "{refused}");
    assert_eq!(read(&mut sm, &get("m", b"k1"), 2, ok_value), Some(b"v".to_vec()));

    // Each goes, contents and name; an expired entry is freed too.
    assert!(apply(&mut sm, &Payload::MapDestroy(named("m")), 10, ok_bool));
    assert!(apply(&mut sm, &Payload::QueueDestroy(named("q")), 10, ok_bool));
    assert!(apply(&mut sm, &Payload::SetDestroy(named("s")), 10, ok_bool));
    assert!(apply(&mut sm, &Payload::AtomicDestroy(named("n")), 10, ok_bool));
    assert_eq!(sm.memory_used(), 0, "every byte counted for them is released");
    assert_eq!(sm.type_of("m"), None);
    assert!(!apply(&mut sm, &Payload::MapDestroy(named("m")), 10, ok_bool));
    assert_eq!(read(&mut sm, &get("m", b"k1"), 10, ok_value), None);
    assert_eq!(read(&mut sm, &Payload::AtomicGet(named("n")), 10, ok_long), 0);

    // The names are free for any type; and the expiry index of the old
    // map's entry (due at 6) leaves a new map's entry of that key alone.
    assert!(apply(
        &mut sm,
        &Payload::QueueOffer(NamedValue {
            name: "m",
            value: b"again"
        }),
        11,
        ok_bool
    ));
    assert!(apply(&mut sm, &Payload::QueueDestroy(named("m")), 11, ok_bool));
    apply(&mut sm, &Payload::MapPut(put("m", b"k2", b"kept", 0)), 11, |_| ());
    apply(
        &mut sm,
        &Payload::AtomicSet(NamedLong { name: "z", value: 1 }),
        1_000,
        |_| (),
    );
    assert_eq!(read(&mut sm, &get("m", b"k2"), 1_000, ok_value), Some(b"kept".to_vec()));
}

#[test]
fn every_state_setting_changes_the_fingerprint() {
    let base = StateConfig::default();
    let mut variants = vec![base];
    let mut vary = |f: &dyn Fn(&mut StateConfig)| {
        let mut c = base;
        f(&mut c);
        variants.push(c);
    };
    vary(&|c| c.data_memory_max_bytes += 1);
    vary(&|c| c.queue_capacity += 1);
    vary(&|c| c.reclaim_per_apply += 1);
    vary(&|c| c.dedup.clients_max += 1);
    vary(&|c| c.dedup.ttl_ms += 1);
    vary(&|c| c.dedup.window += 1);
    vary(&|c| c.dedup.answer_max_bytes += 1);
    vary(&|c| c.limits.payload_max_bytes += 1);
    vary(&|c| c.limits.name_max_bytes += 1);
    vary(&|c| c.limits.key_max_bytes += 1);
    vary(&|c| c.limits.value_max_bytes += 1);
    vary(&|c| c.limits.items_max += 1);
    let prints: std::collections::HashSet<u64> = variants.iter().map(StateConfig::fingerprint).collect();
    assert_eq!(prints.len(), variants.len(), "two settings share a fingerprint");
    assert_eq!(base.fingerprint(), StateConfig::default().fingerprint(), "stable");
}

#[test]
fn other_apply_rules_change_the_fingerprint() {
    let c = StateConfig::default();
    assert_ne!(c.fingerprint(), c.fingerprint_under(super::APPLY_RULES_VERSION + 1));
}

/// Members of two builds link only if their fingerprints match, so a
/// build that changes the default one (a default setting, the list, the
/// rules version) cannot join a cluster of the previous build on default
/// settings. That takes a deliberate change here.
#[test]
fn the_default_fingerprint_is_pinned() {
    assert_eq!(
        StateConfig::default().fingerprint(),
        0xe6f6_4244,
        "the default state fingerprint changed: members of this build and the last will not link"
    );
}

/// An entry opcode (a write, or the cluster's member record) added,
/// removed or renumbered changes how committed entries apply, so it must
/// come with a new `APPLY_RULES_VERSION` (and a new digest here).
#[test]
fn the_write_opcodes_belong_to_this_apply_rules_version() {
    use loomcache_wire::{OpClass, Opcode};
    let mut h = crc32fast::Hasher::new();
    for op in Opcode::ALL
        .iter()
        .filter(|&&op| op.class() == OpClass::Write || op == Opcode::ClusterRecordMember)
    {
        h.update(&op.code().to_le_bytes());
        h.update(op.wire_name().as_bytes());
    }
    assert_eq!(
        (super::APPLY_RULES_VERSION, h.finalize()),
        (2, 0x779c_f6b7),
        "the write opcodes changed: raise APPLY_RULES_VERSION and pin the new digest"
    );
}
