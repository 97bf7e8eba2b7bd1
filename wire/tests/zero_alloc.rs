//! Decoding a MAP_PUT frame allocates nothing: a counting global allocator
//! watches the decode path on this thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use loomcache_wire::*;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every method forwards to the system allocator unchanged; the
// counter is a side effect that touches no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count_allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    WATCHING.with(|w| w.set(true));
    let r = f();
    WATCHING.with(|w| w.set(false));
    (r, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

#[test]
fn counter_sees_allocations() {
    // The instrument works: a Vec allocation is counted.
    let (_, n) = count_allocations(|| std::hint::black_box(vec![1u8; 32]));
    assert_eq!(n, 1);
}

#[test]
fn decoding_a_map_put_frame_allocates_nothing() {
    let key = [0xAB; 16];
    let value = [0xCD; 256];
    let payload = Payload::MapPut(MapWrite {
        ttl_ms: 1000,
        name: "users",
        key: &key,
        value: &value,
    });
    let seq = Sequence::new(5, 6);
    let mut buf = vec![0u8; Limits::DEFAULT.frame_max_bytes()];
    let n = encode_frame(
        &mut buf,
        &HeaderFields::request(Opcode::MapPut, 42),
        Some(&seq),
        &payload,
    )
    .unwrap();

    let (decoded, allocations) = count_allocations(|| {
        let Parsed::Frame(frame) = parse_frame(&buf[..n], &Limits::DEFAULT).unwrap() else {
            panic!("incomplete");
        };
        let seq = frame.sequence().map(|s| s.sequence());
        match frame.decode(&Limits::DEFAULT).unwrap() {
            Payload::MapPut(w) => (w.name.len(), w.key.as_ptr(), w.value.len(), seq),
            _ => panic!("wrong payload"),
        }
    });
    assert_eq!(allocations, 0, "decode allocated");
    assert_eq!(decoded.0, 5);
    assert_eq!(decoded.2, 256);
    assert_eq!(decoded.3, Some(6));
    // The key is a view into the receive buffer, not a copy.
    assert!(buf[..n].as_ptr_range().contains(&decoded.1));
}

#[test]
fn framing_and_walking_lists_allocates_nothing() {
    let keys = [Key(b"a"), Key(b"bb"), Key(b"ccc")];
    let payload = Payload::MapGetAll(MapGetAll {
        name: "m",
        keys: Seq::Items(&keys),
    });
    let mut wire = vec![0u8; 4096];
    let n = encode_frame(&mut wire, &HeaderFields::request(Opcode::MapGetAll, 1), None, &payload).unwrap();
    let mut framer = Framer::new(vec![0u8; Limits::DEFAULT.frame_max_bytes()], Limits::DEFAULT).unwrap();

    let (total, allocations) = count_allocations(|| {
        let mut total = 0;
        for chunk in wire[..n].chunks(7) {
            framer.feed(chunk);
            while let Some(frame) = framer.next_frame().unwrap() {
                if let Payload::MapGetAll(g) = frame.decode(&Limits::DEFAULT).unwrap() {
                    total += g.keys.iter().map(|k| k.0.len()).sum::<usize>();
                }
            }
        }
        total
    });
    assert_eq!(allocations, 0);
    assert_eq!(total, 6);
}

#[test]
fn encoding_into_a_fixed_buffer_allocates_nothing() {
    let payload = Payload::MapPut(MapWrite {
        ttl_ms: 0,
        name: "users",
        key: b"k",
        value: &[1; 256],
    });
    let mut buf = [0u8; 512];
    let (n, allocations) = count_allocations(|| {
        encode_frame(&mut buf, &HeaderFields::request(Opcode::MapPut, 1), None, &payload).unwrap()
    });
    assert_eq!(allocations, 0);
    assert_eq!(n, HEADER_LEN + payload.encoded_len());
}
