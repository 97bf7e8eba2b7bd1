//! `loomd` as a real process on loopback: it starts with no configuration,
//! serves pipelined requests, refuses bad input with readable errors, and
//! shuts down cleanly on SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use loomcache_wire::*;

mod common;

use common::Node;

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn send(stream: &mut TcpStream, request_id: u64, payload: &Payload<'_>) {
    let mut buf = vec![0u8; frame_len(None, payload)];
    encode_frame(
        &mut buf,
        &HeaderFields::request(payload.opcode(), request_id),
        None,
        payload,
    )
    .unwrap();
    stream.write_all(&buf).unwrap();
}

/// Reads frames until `n` have arrived; returns (request id, opcode,
/// status, body) for each.
fn receive(stream: &mut TcpStream, n: usize) -> Vec<(u64, Opcode, u16, Vec<u8>)> {
    let mut framer = Framer::new(vec![0u8; Limits::DEFAULT.frame_max_bytes()], Limits::DEFAULT).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let spare = framer.spare_mut();
        let got = stream.read(spare).unwrap();
        assert!(got > 0, "connection closed after {} of {n} frames", out.len());
        framer.filled(got);
        while let Some(f) = framer.next_frame().unwrap() {
            out.push((f.request_id(), f.opcode(), f.header().status(), f.body().to_vec()));
        }
    }
    out
}

#[test]
fn serves_pipelined_requests_and_stops_on_sigterm() {
    let node = Node::start(&[]);
    let mut s = connect(node.addr);
    send(
        &mut s,
        1,
        &Payload::Hello(Hello {
            version_min: 1,
            version_max: 3,
            features: 0,
            client_id: 42,
            client_name: "test",
        }),
    );
    let hello = receive(&mut s, 1);
    let ack = Response::decode(hello[0].1, hello[0].2, Opcode::Hello, &hello[0].3, &Limits::DEFAULT).unwrap();
    assert!(
        matches!(
            ack,
            Response::Ok(OkBody::HelloAck(HelloAck {
                version: 1,
                client_id: 42,
                ..
            }))
        ),
        "{ack:?}"
    );

    // 200 pipelined writes and reads on one connection, sent before any
    // answer is read.
    let keys: Vec<String> = (0..100).map(|i| format!("key-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let value = format!("value-{i}");
        send(
            &mut s,
            100 + i as u64,
            &Payload::MapSet(MapWrite {
                ttl_ms: 0,
                name: "m",
                key: k.as_bytes(),
                value: value.as_bytes(),
            }),
        );
        send(
            &mut s,
            1000 + i as u64,
            &Payload::MapGet(Keyed {
                name: "m",
                key: k.as_bytes(),
            }),
        );
    }
    let answers = receive(&mut s, 200);
    let mut gets = 0;
    for (id, op, status, body) in &answers {
        let request = if *id >= 1000 { Opcode::MapGet } else { Opcode::MapSet };
        let r = Response::decode(*op, *status, request, body, &Limits::DEFAULT).unwrap();
        if *id >= 1000 {
            // A connection's requests apply in order: each get follows
            // its set.
            match r {
                Response::Ok(OkBody::Value(Some(v))) => {
                    assert_eq!(v, format!("value-{}", id - 1000).as_bytes());
                    gets += 1;
                }
                other => panic!("get {id}: {other:?}"),
            }
        } else {
            assert_eq!(r, Response::Ok(OkBody::Empty), "set {id}");
        }
    }
    assert_eq!(gets, 100);
    let mut ids: Vec<u64> = answers.iter().map(|a| a.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every request answered once");

    // Ping.
    send(&mut s, 7, &Payload::ClusterPing(Ping { nonce: 99 }));
    let pong = receive(&mut s, 1);
    assert_eq!(
        Response::decode(pong[0].1, pong[0].2, Opcode::ClusterPing, &pong[0].3, &Limits::DEFAULT).unwrap(),
        Response::Ok(OkBody::Count(99))
    );
    assert!(node.terminate().success());
}

#[test]
fn bad_bytes_get_a_readable_error_then_the_connection_closes() {
    let node = Node::start(&[]);
    let mut s = connect(node.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n--------").unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let Ok(Parsed::Frame(f)) = parse_frame(&reply, &Limits::DEFAULT) else {
        panic!("no error frame: {reply:?}")
    };
    match f.decode_response(Opcode::MapGet, &Limits::DEFAULT).unwrap() {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::Malformed);
            assert!(message.contains("magic"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The node still serves others.
    let mut t = connect(node.addr);
    send(&mut t, 1, &Payload::ClusterPing(Ping { nonce: 1 }));
    assert_eq!(receive(&mut t, 1).len(), 1);
}

/// A single node answers the routing table with itself as the one group's
/// leader and only replica.
#[test]
fn a_single_node_answers_a_routing_table_of_itself() {
    let node = Node::start(&[]);
    let c = loomcache_client::Client::connect(loomcache_client::ClientConfig {
        addrs: vec![node.addr],
        ..loomcache_client::ClientConfig::default()
    })
    .unwrap();
    let t = c.partition_table(0).unwrap();
    assert_eq!(t.revision, 1);
    assert_eq!(t.partition_groups, vec![0; 271]);
    assert_eq!(t.groups.len(), 1);
    assert_eq!((t.groups[0].leader, t.groups[0].replicas.clone()), (1, vec![1]));
    assert_eq!(t.members, vec![(1, node.addr.to_string())]);
    assert!(c.partition_table(1).unwrap().groups.is_empty());
}

#[test]
fn rejects_unknown_arguments_with_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_loomd"))
        .arg("--bogus")
        .output()
        .expect("run loomd");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument"));
}

/// With no mode given a node is a replicated group of one on the durable
/// log: what it acknowledged survives `kill -9` and a restart from its
/// directory.
#[test]
fn by_default_a_node_is_a_durable_group_of_one() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_loomd"))
            .args(["--listen", "127.0.0.1:0", "--log-level", "warn", "--data-dir"])
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn loomd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("cluster member 1 of 1"), "{line:?}");
        let addr: std::net::SocketAddr = line
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let client = loomcache_client::Client::connect(loomcache_client::ClientConfig {
            addrs: vec![addr],
            retry_budget: std::time::Duration::from_secs(20),
            ..loomcache_client::ClientConfig::default()
        })
        .unwrap();
        (child, client)
    };
    let (mut child, c) = start();
    // The first write waits for the group of one to elect itself.
    c.map("m").set(b"k", b"durable").unwrap();
    assert!(c.queue("q").offer(b"item").unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, c) = start();
    assert_eq!(c.map("m").get(b"k").unwrap(), Some(b"durable".to_vec()));
    assert_eq!(c.queue("q").poll().unwrap(), Some(b"item".to_vec()));
    child.kill().unwrap();
    child.wait().unwrap();
}
