//! Round-trip table tests: every opcode's payload and every response shape
//! encodes, frames, and decodes back to the same value.

mod common;

use common::*;
use loomcache_wire::*;

#[test]
fn every_payload_opcode_has_a_sample() {
    let samples = payloads();
    for &op in Opcode::ALL {
        let has_payload = !matches!(op.class(), OpClass::Response | OpClass::Reserved);
        let sampled = samples.iter().any(|p| p.opcode() == op);
        assert_eq!(has_payload, sampled, "{op}: sample coverage is wrong");
    }
}

#[test]
fn every_payload_round_trips_through_a_frame() {
    for (i, payload) in payloads().iter().enumerate() {
        let bytes = request_frame(payload, i as u64 + 1);
        let Parsed::Frame(frame) = parse_frame(&bytes, &Limits::DEFAULT).unwrap() else {
            panic!("{}: frame incomplete", payload.opcode());
        };
        assert_eq!(frame.opcode(), payload.opcode());
        assert_eq!(frame.request_id(), i as u64 + 1);
        assert_eq!(frame.bytes().len(), bytes.len());
        let decoded = frame
            .decode(&Limits::DEFAULT)
            .unwrap_or_else(|e| panic!("{}: {e}", payload.opcode()));
        assert_eq!(&decoded, payload);
        assert_eq!(decoded.encoded_len(), payload.encoded_len());

        // Re-encoding the decoded (borrowed, lazily walked) form gives the
        // same bytes: lists are re-emitted unchanged.
        assert_eq!(request_frame(&decoded, i as u64 + 1), bytes, "{}", payload.opcode());
    }
}

#[test]
fn every_truncation_of_every_payload_is_an_error() {
    for payload in payloads() {
        let mut body = vec![0u8; payload.encoded_len()];
        payload.encode(&mut Writer::new(&mut body)).unwrap();
        for cut in 0..body.len() {
            let result = Payload::decode(payload.opcode(), &body[..cut], &Limits::DEFAULT);
            assert!(
                result.is_err(),
                "{}: decoded from {cut} of {} bytes",
                payload.opcode(),
                body.len()
            );
        }
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(
            Payload::decode(payload.opcode(), &longer, &Limits::DEFAULT),
            Err(Error::TrailingBytes { count: 1 }),
            "{}",
            payload.opcode()
        );
    }
}

#[test]
fn every_response_round_trips() {
    for (i, (request, response)) in responses().into_iter().enumerate() {
        let fields = HeaderFields {
            opcode: response.opcode(),
            flags: Flags::NONE,
            status: response.status().code(),
            partition: 3,
            request_id: i as u64,
        };
        let bytes = encode(&fields, None, &response);
        let Parsed::Frame(frame) = parse_frame(&bytes, &Limits::DEFAULT).unwrap() else {
            panic!("incomplete");
        };
        let decoded = frame.decode_response(request, &Limits::DEFAULT).unwrap();
        assert_eq!(decoded, response, "answer to {request}");
        assert_eq!(frame.header().status(), response.status().code());
    }
}

#[test]
fn every_ok_shape_is_sampled() {
    let shapes: Vec<_> = responses()
        .iter()
        .filter_map(|(_, r)| match r {
            Response::Ok(body) => Some(body.shape()),
            _ => None,
        })
        .collect();
    for &op in Opcode::ALL {
        if let Some(shape) = OkShape::of(op) {
            assert!(shapes.contains(&shape), "{op} answers {shape:?}, which no test covers");
        }
    }
}

#[test]
fn responses_need_the_status_their_opcode_implies() {
    let response = Response::ServerBusy(Busy { retry_after_ms: 5 });
    let fields = HeaderFields {
        opcode: response.opcode(),
        flags: Flags::NONE,
        status: ErrorCode::Internal.code(),
        partition: 0,
        request_id: 1,
    };
    let bytes = encode(&fields, None, &response);
    let Parsed::Frame(frame) = parse_frame(&bytes, &Limits::DEFAULT).unwrap() else {
        panic!()
    };
    assert!(matches!(
        frame.decode_response(Opcode::MapGet, &Limits::DEFAULT),
        Err(Error::InvalidValue { field: "status", .. })
    ));
}

#[test]
fn reserved_opcodes_decode_as_unsupported() {
    for &op in Opcode::ALL.iter().filter(|op| op.class() == OpClass::Reserved) {
        assert_eq!(
            Payload::decode(op, &[], &Limits::DEFAULT),
            Err(Error::Unsupported(op.wire_name()))
        );
        assert_eq!(Error::Unsupported(op.wire_name()).code(), ErrorCode::Unsupported);
    }
}

#[test]
fn sequenced_frames_carry_the_prefix_outside_the_body() {
    let payload = Payload::MapSet(MapWrite {
        ttl_ms: 0,
        name: "m",
        key: b"k",
        value: b"v",
    });
    let seq = Sequence::new(77, 1234);
    let bytes = encode(&HeaderFields::request(Opcode::MapSet, 5), Some(&seq), &payload);
    let Parsed::Frame(frame) = parse_frame(&bytes, &Limits::DEFAULT).unwrap() else {
        panic!()
    };
    assert!(frame.header().flags().contains(Flags::SEQUENCED));
    assert_eq!(
        frame.sequence().map(|s| (s.client_id(), s.sequence())),
        Some((77, 1234))
    );
    assert_eq!(frame.decode(&Limits::DEFAULT).unwrap(), payload);
    assert_eq!(frame.payload().len(), frame.body().len() + SEQUENCE_LEN);
}

#[test]
fn sequenced_flag_with_short_payload_is_rejected() {
    let mut fields = HeaderFields::request(Opcode::MapSize, 1);
    let payload = Payload::MapSize(Named { name: "m" });
    let mut bytes = encode(&fields, None, &payload);
    // The encoder refuses the flag without a prefix…
    fields.flags = Flags::SEQUENCED;
    let mut out = vec![0u8; bytes.len()];
    assert!(matches!(
        encode_frame(&mut out, &fields, None, &payload),
        Err(Error::InvalidValue { .. })
    ));
    // …so forge it: set the flag and reseal the header checksum.
    bytes[4] |= 1;
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        parse_frame(&bytes, &Limits::DEFAULT),
        Err(Error::FieldLengthOutOfRange { min: 16, .. })
    ));
}

#[test]
fn limits_are_enforced_per_field() {
    let limits = Limits {
        key_max_bytes: 4,
        value_max_bytes: 8,
        name_max_bytes: 3,
        items_max: 2,
        ..Limits::DEFAULT
    };
    let cases: Vec<(Payload<'static>, &str)> = vec![
        (
            Payload::MapGet(Keyed {
                name: "m",
                key: b"12345",
            }),
            "Keyed.key",
        ),
        (
            Payload::MapSet(MapWrite {
                ttl_ms: 0,
                name: "m",
                key: b"k",
                value: b"123456789",
            }),
            "MapWrite.value",
        ),
        (Payload::MapSize(Named { name: "long" }), "Named.name"),
        (
            Payload::MapGetAll(MapGetAll {
                name: "m",
                keys: Seq::Items(&KEYS),
            }),
            "MapGetAll.keys",
        ),
    ];
    for (payload, field) in cases {
        let mut body = vec![0u8; payload.encoded_len()];
        payload.encode(&mut Writer::new(&mut body)).unwrap();
        match Payload::decode(payload.opcode(), &body, &limits) {
            Err(Error::FieldLengthOutOfRange { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a length error, got {other:?}"),
        }
    }
}

#[test]
fn encoder_rejects_unrepresentable_lengths_and_small_buffers() {
    let long_name = "n".repeat(256);
    let payload = Payload::MapSize(Named { name: &long_name });
    let mut out = vec![0u8; frame_len(None, &payload)];
    assert!(matches!(
        encode_frame(&mut out, &HeaderFields::request(Opcode::MapSize, 1), None, &payload),
        Err(Error::FieldLengthOutOfRange { max: 255, .. })
    ));
    let payload = Payload::MapSize(Named { name: "ok" });
    let mut small = vec![0u8; frame_len(None, &payload) - 1];
    assert!(matches!(
        encode_frame(&mut small, &HeaderFields::request(Opcode::MapSize, 1), None, &payload),
        Err(Error::BufferTooSmall { .. })
    ));
}

#[test]
fn batch_rejects_non_data_opcodes() {
    let ops = [BatchOp {
        opcode: Opcode::Hello,
        payload: b"",
    }];
    let payload = Payload::BatchExecute(Batch { ops: Seq::Items(&ops) });
    let mut body = vec![0u8; payload.encoded_len()];
    payload.encode(&mut Writer::new(&mut body)).unwrap();
    assert!(matches!(
        Payload::decode(Opcode::BatchExecute, &body, &Limits::DEFAULT),
        Err(Error::UnexpectedOpcode { opcode: "HELLO", .. })
    ));
    // The inner payloads decode on demand.
    let batch = Batch {
        ops: Seq::Items(batch_ops()),
    };
    let inner: Vec<_> = batch
        .ops
        .iter()
        .map(|op| op.payload(&Limits::DEFAULT).unwrap())
        .collect();
    assert_eq!(inner[0], Payload::MapGet(Keyed { name: "m", key: b"k" }));
    assert_eq!(inner[1], Payload::MapSize(Named { name: "m" }));
}

#[test]
fn batch_results_decode_per_operation() {
    let ok = BATCH_RESULTS[0].outcome(Opcode::MapGet, &Limits::DEFAULT).unwrap();
    assert_eq!(ok, Response::Ok(OkBody::Value(Some(b"v"))));
    let err = BATCH_RESULTS[1].outcome(Opcode::MapSet, &Limits::DEFAULT).unwrap();
    assert_eq!(
        err,
        Response::Error {
            code: ErrorCode::BadFieldLength,
            message: "key too large"
        }
    );
    let bad = BatchResult {
        status: 6,
        body: &[0xFF],
    };
    assert!(matches!(
        bad.outcome(Opcode::MapSet, &Limits::DEFAULT),
        Err(Error::InvalidUtf8 { .. })
    ));
}

#[test]
fn redirect_must_name_a_leader() {
    let mut body = [0u8; 64];
    let wire = RedirectWire {
        group: 0,
        leader_id: 0,
        leader_addr: "h:1",
    };
    let n = {
        let mut w = Writer::new(&mut body);
        wire.encode(&mut w).unwrap();
        w.position()
    };
    assert!(matches!(
        Response::decode(
            Opcode::ResponseRedirect,
            ErrorCode::NotLeader.code(),
            Opcode::MapGet,
            &body[..n],
            &Limits::DEFAULT
        ),
        Err(Error::InvalidValue {
            field: "Redirect.leader_id",
            ..
        })
    ));
}

#[test]
fn redirect_without_a_leader_does_not_encode() {
    let response = Response::Redirect(Redirect {
        group: 0,
        leader_id: 0,
        leader_addr: "",
    });
    let mut out = [0u8; 64];
    let fields = HeaderFields {
        opcode: Opcode::ResponseRedirect,
        flags: Flags::NONE,
        status: ErrorCode::NotLeader.code(),
        partition: 0,
        request_id: 1,
    };
    assert!(matches!(
        encode_frame(&mut out, &fields, None, &response),
        Err(Error::InvalidValue { .. })
    ));
}

#[test]
fn batch_outcomes_are_only_for_data_operations() {
    assert!(matches!(
        BATCH_RESULTS[0].outcome(Opcode::Hello, &Limits::DEFAULT),
        Err(Error::UnexpectedOpcode { opcode: "HELLO", .. })
    ));
}

#[test]
fn empty_names_do_not_encode() {
    let payload = Payload::MapSize(Named { name: "" });
    let mut out = [0u8; 64];
    assert!(matches!(
        encode_frame(&mut out, &HeaderFields::request(Opcode::MapSize, 1), None, &payload),
        Err(Error::FieldLengthOutOfRange { min: 1, len: 0, .. })
    ));
}

#[test]
fn argument_checks() {
    let limits = Limits::DEFAULT;
    assert!(Payload::MapScan(Page {
        name: "m",
        cursor: 0,
        page_size: 0
    })
    .check_arguments(&limits)
    .is_err());
    assert!(Payload::MapScan(Page {
        name: "m",
        cursor: 0,
        page_size: 2000
    })
    .check_arguments(&limits)
    .is_err());
    assert!(Payload::MapScan(Page {
        name: "m",
        cursor: 0,
        page_size: 10
    })
    .check_arguments(&limits)
    .is_ok());
    assert!(Payload::QueueDrain(QueueDrain {
        name: "q",
        max_items: 0
    })
    .check_arguments(&limits)
    .is_err());
    assert!(Payload::MapGetAll(MapGetAll {
        name: "m",
        keys: Seq::Items(&[])
    })
    .check_arguments(&limits)
    .is_err());
}

/// The worked example in docs/design.md §1, byte for byte.
#[test]
fn design_doc_worked_example() {
    let payload = Payload::MapSize(Named { name: "m" });
    let bytes = request_frame(&payload, 1);
    let expected: [u8; 34] = [
        0x4c, 0x43, 0x01, 0x00, 0x00, 0x00, 0x09, 0x01, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, //
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x26, 0xa4, 0xe9, 0x3d, //
        0x01, 0x6d,
    ];
    assert_eq!(bytes, expected);
}
