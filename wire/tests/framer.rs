//! The incremental framer against split, concatenated and malformed
//! streams, by table and by property.

mod common;

use common::*;
use loomcache_wire::*;
use proptest::prelude::*;

fn stream_of_all_samples() -> (Vec<u8>, Vec<Vec<u8>>) {
    let frames: Vec<Vec<u8>> = payloads()
        .iter()
        .enumerate()
        .map(|(i, p)| request_frame(p, i as u64))
        .collect();
    (frames.concat(), frames)
}

fn framer() -> Framer<Vec<u8>> {
    Framer::new(vec![0u8; Limits::DEFAULT.frame_max_bytes()], Limits::DEFAULT).unwrap()
}

/// Feeds `chunks` in order, collecting every frame's bytes.
fn run(framer: &mut Framer<Vec<u8>>, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for chunk in chunks {
        let mut rest = *chunk;
        while !rest.is_empty() {
            let n = framer.feed(rest);
            rest = &rest[n..];
            while let Some(frame) = framer.next_frame()? {
                frame.decode(&Limits::DEFAULT)?;
                out.push(frame.bytes().to_vec());
            }
            if n == 0 {
                break;
            }
        }
    }
    Ok(out)
}

#[test]
fn split_at_every_byte_boundary() {
    let (stream, frames) = stream_of_all_samples();
    for cut in 0..=stream.len() {
        let mut f = framer();
        let got = run(&mut f, &[&stream[..cut], &stream[cut..]]).unwrap();
        assert_eq!(got, frames, "split at {cut}");
        f.finish().unwrap();
    }
}

#[test]
fn one_byte_at_a_time() {
    let (stream, frames) = stream_of_all_samples();
    let chunks: Vec<&[u8]> = stream.chunks(1).collect();
    let mut f = framer();
    assert_eq!(run(&mut f, &chunks).unwrap(), frames);
}

#[test]
fn many_frames_in_one_read() {
    let (stream, frames) = stream_of_all_samples();
    let mut f = framer();
    assert_eq!(run(&mut f, &[&stream]).unwrap(), frames);
}

#[test]
fn small_buffer_compacts_and_still_frames_everything() {
    // Room for exactly one maximal frame under tight limits: every frame
    // forces the partial tail to move to the front.
    let limits = Limits {
        payload_max_bytes: 400,
        ..Limits::DEFAULT
    };
    let (stream, frames) = stream_of_all_samples();
    let mut f = Framer::new(vec![0u8; limits.frame_max_bytes()], limits).unwrap();
    let mut got = Vec::new();
    for chunk in stream.chunks(97) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let n = f.feed(rest);
            rest = &rest[n..];
            while let Some(frame) = f.next_frame().unwrap() {
                got.push(frame.bytes().to_vec());
            }
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn framer_buffer_must_hold_a_maximal_frame() {
    let limits = Limits {
        payload_max_bytes: 100,
        ..Limits::DEFAULT
    };
    assert!(matches!(
        Framer::new(vec![0u8; 131], limits),
        Err(Error::BufferTooSmall {
            needed: 132,
            available: 131
        })
    ));
}

#[test]
fn truncated_stream_is_reported_at_finish() {
    let (stream, _) = stream_of_all_samples();
    let mut f = framer();
    run(&mut f, &[&stream[..stream.len() - 3]]).unwrap();
    assert!(matches!(f.finish(), Err(Error::Truncated { available, .. }) if available > 0));
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    let limits = Limits {
        payload_max_bytes: 64,
        ..Limits::DEFAULT
    };
    let big = Payload::MapSet(MapWrite {
        ttl_ms: 0,
        name: "m",
        key: b"k",
        value: &[7u8; 100],
    });
    let bytes = request_frame(&big, 1);
    let mut f = Framer::new(vec![0u8; limits.frame_max_bytes()], limits).unwrap();
    f.feed(&bytes[..HEADER_LEN]);
    assert!(matches!(f.next_frame(), Err(Error::FrameTooLarge { max: 64, .. })));
    // The failure is sticky: the stream is out of sync.
    assert!(matches!(f.next_frame(), Err(Error::FrameTooLarge { .. })));
    assert_eq!(f.feed(b"more"), 0);
}

#[test]
fn malformed_headers_are_named() {
    let good = request_frame(&Payload::MapSize(Named { name: "m" }), 1);
    type Case = (&'static str, fn(&mut Vec<u8>), fn(&Error) -> bool);
    let cases: &[Case] = &[
        ("magic", |b| b[0] = 0, |e| matches!(e, Error::BadMagic { .. })),
        ("checksum", |b| b[16] ^= 1, |e| matches!(e, Error::BadChecksum { .. })),
        (
            "stale checksum after a length change",
            |b| b[12] = 0xFF,
            |e| matches!(e, Error::BadChecksum { .. }),
        ),
    ];
    for (name, edit, expect) in cases {
        let mut b = good.clone();
        edit(&mut b);
        let mut f = framer();
        f.feed(&b);
        let err = f.next_frame().expect_err(name);
        assert!(expect(&err), "{name}: {err:?}");
        // Sticky: the connection is done.
        assert_eq!(f.next_frame().unwrap_err(), err, "{name}");
    }
}

/// Generated well-formed payloads of the commonest kinds with random bytes.
fn arb_payload() -> impl Strategy<Value = (u16, Vec<u8>, Vec<u8>, Vec<u8>, u64)> {
    (
        0u16..4,
        proptest::collection::vec(any::<u8>(), 1..20),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..600),
        any::<u64>(),
    )
}

fn build(kind: u16, name: &[u8], key: &[u8], value: &[u8], n: u64) -> Vec<u8> {
    let name: String = name.iter().map(|b| char::from(b'a' + b % 26)).collect();
    let payload = match kind {
        0 => Payload::MapPut(MapWrite {
            ttl_ms: n,
            name: &name,
            key,
            value,
        }),
        1 => Payload::MapGet(Keyed { name: &name, key }),
        2 => Payload::QueueOffer(NamedValue { name: &name, value }),
        _ => Payload::AtomicAddAndGet(NamedLong {
            name: &name,
            value: n as i64,
        }),
    };
    let seq = Sequence::new(n, n.wrapping_add(1));
    let fields = HeaderFields::request(payload.opcode(), n);
    encode(&fields, (n % 2 == 0).then_some(&seq), &payload)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Any sequence of valid frames, cut into arbitrary chunks, comes out
    /// whole and in order.
    #[test]
    fn arbitrary_chunking_preserves_frames(
        specs in proptest::collection::vec(arb_payload(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let frames: Vec<Vec<u8>> = specs.iter().map(|(k, n, key, v, x)| build(*k, n, key, v, *x)).collect();
        let stream = frames.concat();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
        let mut f = framer();
        let got = run(&mut f, &chunks).unwrap();
        prop_assert_eq!(got, frames);
        prop_assert!(f.finish().is_ok());
    }

    /// Arbitrary bytes never panic the framer; they either yield frames
    /// that decode or fail, or a typed error.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut f = framer();
        let _ = run(&mut f, &[&bytes]);
        let _ = f.finish();
    }

    /// A valid stream with bytes overwritten at random places: the framer
    /// and decoder report an error or decode, never panic; a header
    /// corruption is always caught by the checksum before its payload is
    /// trusted.
    #[test]
    fn corrupted_streams_are_typed_errors(
        specs in proptest::collection::vec(arb_payload(), 1..6),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        chunk in 1usize..64,
    ) {
        let frames: Vec<Vec<u8>> = specs.iter().map(|(k, n, key, v, x)| build(*k, n, key, v, *x)).collect();
        let mut stream = frames.concat();
        let len = stream.len();
        for (i, b) in &edits {
            stream[i.index(len)] = *b;
        }
        let chunks: Vec<&[u8]> = stream.chunks(chunk).collect();
        let mut f = framer();
        match run(&mut f, &chunks) {
            Ok(got) => {
                // Every frame that came out is one that went in, unless a
                // payload byte was edited (the header checksum does not
                // cover the payload; the decoder bounds-checks it).
                for frame in &got {
                    let header_ok = frames.iter().any(|orig| orig[..HEADER_LEN] == frame[..HEADER_LEN]);
                    prop_assert!(header_ok, "a corrupted header was accepted");
                }
            }
            Err(e) => {
                let _ = e.code();
            }
        }
    }

    /// Payload decoding of arbitrary bytes under every opcode never panics.
    #[test]
    fn payload_decode_of_random_bytes_never_panics(
        op in any::<prop::sample::Index>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let op = Opcode::ALL[op.index(Opcode::ALL.len())];
        if let Ok(payload) = Payload::decode(op, &bytes, &Limits::DEFAULT) {
            // Whatever decodes re-encodes to the same bytes.
            let mut out = vec![0u8; payload.encoded_len()];
            payload.encode(&mut Writer::new(&mut out)).unwrap();
            prop_assert_eq!(&out, &bytes);
        }
        if let Some(shape) = OkShape::of(op) {
            let _ = OkBody::decode(shape, &bytes, &Limits::DEFAULT);
        }
    }
}
