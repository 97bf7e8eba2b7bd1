//! The LoomCache wire protocol beside RESP and bincode, on one `MAP_PUT`
//! request (see `loomcache_benches::fixtures`). Each group holds LoomCache
//! and its peers so their figures are read as ratios from the same run.
//!
//! Run with `cargo bench -p loomcache-benches --bench wire`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loomcache_benches::bincode_baseline;
use loomcache_benches::fixtures::{MapPutFixture, FRAME_BUF_BYTES};
use loomcache_benches::resp::{self, RespLimits};
use loomcache_wire::{encode_frame, parse_frame, FrameHeader, Limits, Parsed, Payload};

/// The product's allocator, so the peers that allocate pay what they would
/// in a LoomCache binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Knowing how long a request is. LoomCache validates its 32-byte header in
/// place: magic, CRC32 of 28 bytes, version, reserved bits, opcode, and the
/// payload length against the limit. The RESP peer reads the `*3\r\n` array
/// line and the first `$3\r\n` bulk line; it checks no integrity and still
/// does not know where the command ends.
fn header(c: &mut Criterion) {
    let f = MapPutFixture::new();
    let limits = Limits::DEFAULT;
    let resp_limits = RespLimits::DEFAULT;
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Elements(1));
    g.bench_function("validate", |b| {
        b.iter(|| {
            let (header, opcode) =
                FrameHeader::validate(black_box(&f.loomcache), black_box(&limits)).expect("fixture header is valid");
            (header.payload_len(), opcode)
        })
    });
    g.bench_function("resp_array_header", |b| {
        b.iter(|| {
            resp::parse_array_header(black_box(&f.resp), black_box(&resp_limits))
                .expect("fixture command is valid")
                .expect("fixture command is complete")
        })
    });
    g.finish();
}

/// Receive bytes to a usable request. LoomCache parses the frame and decodes
/// the body into slices of the buffer; RESP collects argument slices into a
/// `Vec`; bincode builds the owned struct. Each result is dropped inside the
/// timed loop, so freeing what a decode allocated is counted.
fn decode_map_put(c: &mut Criterion) {
    let f = MapPutFixture::new();
    let limits = Limits::DEFAULT;
    let resp_limits = RespLimits::DEFAULT;
    let mut g = c.benchmark_group("decode_map_put");
    g.throughput(Throughput::Elements(1));
    g.bench_function("loomcache", |b| {
        b.iter(|| {
            let limits = black_box(&limits);
            let Parsed::Frame(frame) = parse_frame(black_box(&f.loomcache), limits).expect("fixture frame is valid")
            else {
                panic!("fixture frame is complete");
            };
            match frame.decode(limits).expect("fixture body is valid") {
                Payload::MapPut(write) => write,
                other => panic!("fixture decodes as MAP_PUT, not {other:?}"),
            }
        })
    });
    g.bench_function("resp", |b| {
        b.iter(
            || match resp::parse_command(black_box(&f.resp), black_box(&resp_limits)) {
                Ok(resp::Parsed::Command(cmd)) => cmd,
                other => panic!("fixture command is complete and valid, got {other:?}"),
            },
        )
    });
    g.bench_function("bincode", |b| {
        b.iter(|| bincode_baseline::decode(black_box(&f.bincode)).expect("fixture encoding is valid"))
    });
    g.finish();
}

/// A request to bytes, into a buffer reused across iterations: a fixed
/// buffer for LoomCache (a pooled buffer in the daemon), a cleared `Vec` for
/// the peers, so no peer pays for growing its output after the first pass.
fn encode_map_put(c: &mut Criterion) {
    let f = MapPutFixture::new();
    let fields = MapPutFixture::header_fields();
    let payload = f.payload();
    let args = f.resp_args();
    let mut g = c.benchmark_group("encode_map_put");
    g.throughput(Throughput::Elements(1));
    g.bench_function("loomcache", |b| {
        let mut out = [0u8; FRAME_BUF_BYTES];
        b.iter(|| {
            encode_frame(black_box(&mut out), black_box(&fields), None, black_box(&payload))
                .expect("the frame fits the buffer")
        })
    });
    g.bench_function("resp", |b| {
        let mut out = Vec::with_capacity(FRAME_BUF_BYTES);
        b.iter(|| {
            out.clear();
            resp::encode_command(black_box(&args), &mut out);
            black_box(&out).len()
        })
    });
    g.bench_function("bincode", |b| {
        let mut out = Vec::with_capacity(FRAME_BUF_BYTES);
        b.iter(|| {
            out.clear();
            bincode_baseline::encode(black_box(&f.put_request), &mut out).expect("encoding into a Vec cannot fail");
            black_box(&out).len()
        })
    });
    g.finish();
}

criterion_group!(benches, header, decode_map_put, encode_map_put);
criterion_main!(benches);
