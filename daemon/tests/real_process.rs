//! The real `loomd` binary on loopback: every data-structure operation
//! through the client, 10 000 pipelined requests on one connection, and a
//! battery of bad input. Each bad input gets a clear error or a clean
//! close, the node's memory stays bounded, and a well-behaved client on
//! another connection is answered throughout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loomcache_client::{Client, ClientConfig, Connection, Reply};
use loomcache_wire::*;

mod common;

use common::Node;

fn client(node: &Node) -> Client {
    Client::connect(ClientConfig {
        addrs: vec![node.addr],
        ..ClientConfig::default()
    })
    .unwrap()
}

fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the node closes the connection; answers the first frame's
/// error code, if it sent one.
fn error_then_close(mut s: TcpStream) -> Option<ErrorCode> {
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("the node closes the connection");
    match parse_frame(&bytes, &Limits::DEFAULT) {
        Ok(Parsed::Frame(f)) => match f.decode_response(Opcode::ClusterPing, &Limits::DEFAULT) {
            Ok(Response::Error { code, .. }) => Some(code),
            _ => None,
        },
        _ => None,
    }
}

fn header(opcode_raw: u16, payload_len: u32) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN];
    h[0..2].copy_from_slice(b"LC");
    h[2] = PROTOCOL_VERSION;
    h[6..8].copy_from_slice(&opcode_raw.to_le_bytes());
    h[12..16].copy_from_slice(&payload_len.to_le_bytes());
    h[16..24].copy_from_slice(&9u64.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

#[test]
fn every_operation_through_the_client() {
    let node = Node::start(&[]);
    let c = client(&node);
    let m = c.map("users");
    assert_eq!(m.put(b"u1", b"ann").unwrap(), None);
    assert_eq!(m.get(b"u1").unwrap(), Some(b"ann".to_vec()));
    m.set(b"u2", b"bo").unwrap();
    assert_eq!(m.put_if_absent(b"u2", b"x").unwrap(), Some(b"bo".to_vec()));
    assert_eq!(m.replace(b"u2", b"cy").unwrap(), Some(b"bo".to_vec()));
    assert!(m.compare_and_set(b"u2", b"cy", b"di").unwrap());
    assert!(m.contains(b"u1").unwrap());
    m.put_all(&[(b"a", b"1"), (b"b", b"2")]).unwrap();
    assert_eq!(m.get_all(&[b"a", b"b", b"zz"]).unwrap().len(), 2);
    assert_eq!(m.scan(0, 100).unwrap().1.len(), 4);
    assert_eq!(m.size().unwrap(), 4);
    assert!(m.delete(b"a").unwrap());
    assert_eq!(m.put_with_ttl(b"t", b"v", Duration::from_secs(60)).unwrap(), None);
    assert_eq!(m.clear().unwrap(), 4);
    let q = c.queue("q");
    assert!(q.offer(b"1").unwrap() && q.offer(b"2").unwrap() && q.offer(b"3").unwrap());
    assert_eq!(q.peek().unwrap(), Some(b"1".to_vec()));
    assert_eq!(q.poll().unwrap(), Some(b"1".to_vec()));
    assert_eq!(q.size().unwrap(), 2);
    assert_eq!(q.drain(1).unwrap(), vec![b"2".to_vec()]);
    assert_eq!(q.clear().unwrap(), 1);
    assert_eq!(q.poll_wait(Duration::from_millis(150)).unwrap(), None);
    // A wait longer than the client's request timeout is still waited out.
    let patient = Client::connect(ClientConfig {
        addrs: vec![node.addr],
        request_timeout: Duration::from_millis(200),
        retry_budget: Duration::from_millis(300),
        ..ClientConfig::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(patient.queue("q").poll_wait(Duration::from_millis(700)).unwrap(), None);
    assert!(
        started.elapsed() >= Duration::from_millis(650),
        "{:?}",
        started.elapsed()
    );
    let s = c.set("s");
    assert!(s.add(b"x").unwrap());
    assert!(s.contains(b"x").unwrap());
    assert_eq!(s.members(0, 10).unwrap().1.len(), 1);
    assert_eq!(s.size().unwrap(), 1);
    assert!(s.remove(b"x").unwrap());
    assert_eq!(s.clear().unwrap(), 0);
    let a = c.atomic_long("n");
    a.set(5).unwrap();
    assert_eq!(a.add_and_get(1).unwrap(), 6);
    assert_eq!(a.get_and_add(1).unwrap(), 6);
    assert_eq!(a.get_and_set(0).unwrap(), 7);
    assert!(a.compare_and_set(0, 1).unwrap());
    assert_eq!(a.get().unwrap(), 1);
    let mut sub = c.topic("t").subscribe().unwrap();
    assert_eq!(c.topic("t").publish(b"hello").unwrap(), 1);
    assert_eq!(
        sub.next_within(Duration::from_secs(5)).unwrap().unwrap().payload,
        b"hello"
    );
    // Destroying frees each name (cleared structures still hold theirs).
    assert!(m.destroy().unwrap() && q.destroy().unwrap() && s.destroy().unwrap() && a.destroy().unwrap());
    assert_eq!(a.get().unwrap(), 0);
    assert!(c.queue("m").offer(b"a queue now").unwrap());
    assert_eq!(c.ping(3).unwrap(), 3);
    assert!(c.info().unwrap().iter().any(|(k, _)| k == "writes_applied"));
}

#[test]
fn ten_thousand_pipelined_requests_on_one_connection() {
    let node = Node::start(&[]);
    let mut conn = Connection::connect(node.addr, 5, Duration::from_secs(2), Duration::from_secs(30)).unwrap();
    let add = Payload::AtomicAddAndGet(NamedLong { name: "n", value: 1 });
    // Send in slices so the client never blocks writing while the node
    // blocks writing answers back (the node stops reading at its in-flight
    // bound; TCP carries the rest).
    let mut answers = Vec::new();
    for chunk in 0..10u64 {
        for i in 0..1000u64 {
            conn.send(&add, Some(chunk * 1000 + i + 1)).unwrap();
        }
        for _ in 0..1000 {
            answers.push(conn.recv().unwrap().1.unwrap());
        }
    }
    assert_eq!(answers.len(), 10_000);
    assert_eq!(
        answers.last(),
        Some(&Reply::Long(10_000)),
        "applied in order, each once"
    );
}

#[test]
fn bad_input_battery() {
    let node = Node::start(&[
        ("LOOMD_CONNECTIONS_MAX", "40"),
        ("LOOMD_CONNECTIONS_PER_IP_MAX", "40"),
        ("LOOMD_CONNECTIONS_FRAME_DEADLINE_MS", "700"),
    ]);
    let addr = node.addr;
    // A well-behaved client pings throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let pings = Arc::new(AtomicU64::new(0));
    let pinger = {
        let (stop, pings) = (stop.clone(), pings.clone());
        std::thread::spawn(move || {
            let c = Client::connect(ClientConfig {
                addrs: vec![addr],
                ..ClientConfig::default()
            })
            .unwrap();
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(c.ping(1).expect("the well-behaved client is answered"), 1);
                pings.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let rss_before = node.rss_kib();

    // Garbage bytes.
    let mut s = raw(addr);
    s.write_all(&[0xAB; 64]).unwrap();
    assert_eq!(error_then_close(s), Some(ErrorCode::Malformed));

    // A huge declared length: refused from the header alone.
    let mut s = raw(addr);
    s.write_all(&header(Opcode::MapSet.code(), u32::MAX - 64)).unwrap();
    assert_eq!(error_then_close(s), Some(ErrorCode::FrameTooLarge));

    // An unknown opcode.
    let mut s = raw(addr);
    s.write_all(&header(0x0999, 0)).unwrap();
    assert_eq!(error_then_close(s), Some(ErrorCode::UnknownOpcode));

    // A frame truncated, then the connection closed: the node lets go.
    let mut s = raw(addr);
    let mut frame = header(Opcode::MapSize.code(), 10);
    frame.extend_from_slice(&[1, b'm']);
    s.write_all(&frame).unwrap();
    drop(s);

    // One byte per 300 ms: cut off at the frame deadline (700 ms).
    let mut s = raw(addr);
    let started = Instant::now();
    let slow = header(Opcode::ClusterPing.code(), 8);
    let mut closed = false;
    for b in slow.iter().take(12) {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    if !closed {
        assert_eq!(error_then_close(s), Some(ErrorCode::Timeout));
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // Twice the connection limit at once: the excess is refused, clearly.
    // Every connection is opened first; then those not answered yet are
    // looked at again until the refusals are in (a loaded machine may send
    // some late), while those the node keeps stay silent.
    let mut unanswered: Vec<std::net::TcpStream> = (0..80).map(|_| raw(addr)).collect();
    let mut held = Vec::new();
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused < 40 && !unanswered.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        for mut s in std::mem::take(&mut unanswered) {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 256];
            match s.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let Ok(Parsed::Frame(f)) = parse_frame(&buf[..n], &Limits::DEFAULT) else {
                        panic!("not a frame")
                    };
                    assert!(matches!(
                        f.decode_response(Opcode::ClusterPing, &Limits::DEFAULT).unwrap(),
                        Response::Error {
                            code: ErrorCode::TooManyConnections,
                            ..
                        }
                    ));
                    refused += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => unanswered.push(s),
                _ => held.push(s),
            }
        }
    }
    held.append(&mut unanswered);
    assert!(refused >= 40, "only {refused} of 80 refused with a 40-connection limit");
    drop(held);

    // Memory stayed bounded (no growth by declared lengths).
    let rss_after = node.rss_kib();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    pinger.join().unwrap();
    assert!(
        pings.load(Ordering::Relaxed) > 10,
        "the well-behaved client was starved"
    );
    // And the node still serves a fresh client.
    assert_eq!(client(&node).ping(2).unwrap(), 2);
}
