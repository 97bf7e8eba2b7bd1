//! Allocation discipline on the hot path: with requests applied on the
//! event-loop thread, a steady stream of GETs allocates nothing, and a
//! steady stream of SETs overwriting existing keys allocates about once per
//! request: the new value itself. A counting global allocator watches the
//! whole process while a client that allocates nothing (fixed buffers,
//! wire-level framing) drives the node.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};

use loomcache_daemon::server::Server;
use loomcache_daemon::Config;
use loomcache_wire::*;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator unchanged; the
// counter is a side effect that touches no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEYS: usize = 1000;
const BATCH: usize = 50;

/// A client with fixed buffers: encoding and framing allocate nothing.
struct RawClient {
    stream: TcpStream,
    out: Vec<u8>,
    framer: Framer<Vec<u8>>,
    keys: Vec<[u8; 8]>,
    value: Vec<u8>,
    next_id: u64,
}

impl RawClient {
    fn run(&mut self, get: bool, batches: usize) {
        for b in 0..batches {
            let mut len = 0;
            for i in 0..BATCH {
                let key = &self.keys[(b * BATCH + i) % KEYS];
                let payload = if get {
                    Payload::MapGet(Keyed { name: "m", key })
                } else {
                    Payload::MapSet(MapWrite {
                        ttl_ms: 0,
                        name: "m",
                        key,
                        value: &self.value,
                    })
                };
                len += encode_frame(
                    &mut self.out[len..],
                    &HeaderFields::request(payload.opcode(), self.next_id),
                    None,
                    &payload,
                )
                .unwrap();
                self.next_id += 1;
            }
            self.stream.write_all(&self.out[..len]).unwrap();
            let mut got = 0;
            while got < BATCH {
                while let Some(frame) = self.framer.next_frame().unwrap() {
                    assert_eq!(frame.opcode(), Opcode::ResponseOk);
                    got += 1;
                }
                if got < BATCH {
                    let n = self.stream.read(self.framer.spare_mut()).unwrap();
                    assert!(n > 0);
                    self.framer.filled(n);
                }
            }
        }
    }
}

#[test]
fn steady_state_gets_allocate_nothing_and_sets_only_their_values() {
    let config = Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        workers: 0,
        ..Config::default()
    };
    let server = Server::start(config).unwrap();
    let stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut client = RawClient {
        stream,
        out: vec![0u8; 1 << 20],
        framer: Framer::new(vec![0u8; Limits::DEFAULT.frame_max_bytes()], Limits::DEFAULT).unwrap(),
        keys: (0..KEYS as u64).map(u64::to_le_bytes).collect(),
        value: vec![7u8; 256],
        next_id: 1,
    };
    // Fill every key and warm every buffer up.
    client.run(false, 2 * KEYS / BATCH);
    client.run(true, 2 * KEYS / BATCH);

    let requests = (20 * KEYS) as u64;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    client.run(true, 20 * KEYS / BATCH);
    let gets = ALLOCATIONS.load(Ordering::Relaxed) - before;

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    client.run(false, 20 * KEYS / BATCH);
    let sets = ALLOCATIONS.load(Ordering::Relaxed) - before;

    server.shutdown();
    println!("allocations: {gets} for {requests} GETs, {sets} for {requests} SETs");
    assert!(
        gets * 100 <= requests,
        "GETs allocated {gets} times for {requests} requests"
    );
    // One allocation per SET is the stored value; the insertion-order index
    // adds an occasional node as entries move to its end.
    assert!(
        sets <= requests * 3 / 2,
        "SETs allocated {sets} times for {requests} requests"
    );
    assert!(sets >= requests, "each SET stores its value: the counter must see it");
}
