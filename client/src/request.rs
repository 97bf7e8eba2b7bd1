//! Turning typed payloads into frames.

use loomcache_wire::{encode_frame, frame_len, partition_of, HeaderFields, Payload, Result, Sequence};

/// Encodes requests for one client identity: unique request ids per
/// encoder, a strictly increasing sequence number on every write, and the
/// routing partition in every header.
#[derive(Debug)]
pub struct RequestEncoder {
    client_id: u64,
    next_request_id: u64,
    next_sequence: u64,
}

/// What [`RequestEncoder::encode`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// Frame length in bytes.
    pub len: usize,
    /// The request id, to match the response.
    pub request_id: u64,
    /// The write's sequence number, if it is a write.
    pub sequence: Option<u64>,
    /// The partition the request routes to.
    pub partition: u16,
}

impl RequestEncoder {
    /// An encoder for `client_id` (chosen by the client and sent in hello;
    /// it must stay the same across reconnects for deduplication to work).
    pub fn new(client_id: u64) -> RequestEncoder {
        RequestEncoder {
            client_id,
            next_request_id: 1,
            next_sequence: 1,
        }
    }

    /// Bytes [`RequestEncoder::encode`] needs for `payload`.
    pub fn frame_len(&self, payload: &Payload<'_>) -> usize {
        let seq = payload.mutates().then(|| Sequence::new(self.client_id, 0));
        frame_len(seq.as_ref(), payload)
    }

    /// Encodes `payload` into `out`. Ids and sequence numbers are consumed
    /// only when encoding succeeds.
    pub fn encode(&mut self, out: &mut [u8], payload: &Payload<'_>) -> Result<Encoded> {
        let request_id = self.next_request_id;
        let sequence = payload.mutates().then_some(self.next_sequence);
        let partition = payload.routing_key().map_or(0, partition_of);
        let fields = HeaderFields {
            partition,
            ..HeaderFields::request(payload.opcode(), request_id)
        };
        let prefix = sequence.map(|s| Sequence::new(self.client_id, s));
        let len = encode_frame(out, &fields, prefix.as_ref(), payload)?;
        self.next_request_id += 1;
        if sequence.is_some() {
            self.next_sequence += 1;
        }
        Ok(Encoded {
            len,
            request_id,
            sequence,
            partition,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loomcache_wire::{parse_frame, Keyed, Limits, MapWrite, Named, Parsed};

    #[test]
    fn writes_are_sequenced_reads_are_not() {
        let mut enc = RequestEncoder::new(42);
        let put = Payload::MapSet(MapWrite {
            ttl_ms: 0,
            name: "m",
            key: b"user:1",
            value: b"v",
        });
        let get = Payload::MapGet(Keyed {
            name: "m",
            key: b"user:1",
        });
        let mut buf = [0u8; 256];
        let mut seen = Vec::new();
        for p in [put, get, put, get, put] {
            let e = enc.encode(&mut buf, &p).unwrap();
            assert_eq!(e.len, enc.frame_len(&p));
            let Parsed::Frame(frame) = parse_frame(&buf[..e.len], &Limits::DEFAULT).unwrap() else {
                panic!()
            };
            assert_eq!(frame.request_id(), e.request_id);
            assert_eq!(frame.header().partition(), partition_of(b"user:1"));
            assert_eq!(
                frame.sequence().map(|s| (s.client_id(), s.sequence())),
                e.sequence.map(|s| (42, s))
            );
            assert_eq!(frame.decode(&Limits::DEFAULT).unwrap(), p);
            seen.push((e.request_id, e.sequence));
        }
        assert_eq!(
            seen,
            vec![(1, Some(1)), (2, None), (3, Some(2)), (4, None), (5, Some(3))]
        );
    }

    #[test]
    fn failed_encode_consumes_nothing() {
        let mut enc = RequestEncoder::new(1);
        let put = Payload::MapSet(MapWrite {
            ttl_ms: 0,
            name: "m",
            key: b"k",
            value: &[0; 100],
        });
        let mut small = [0u8; 40];
        assert!(enc.encode(&mut small, &put).is_err());
        let mut buf = [0u8; 256];
        let e = enc.encode(&mut buf, &put).unwrap();
        assert_eq!((e.request_id, e.sequence), (1, Some(1)));
    }

    #[test]
    fn batches_with_a_write_are_sequenced() {
        use loomcache_wire::{Batch, BatchOp, Opcode, Seq};
        let mut enc = RequestEncoder::new(9);
        let mut buf = [0u8; 128];
        let reads = [BatchOp {
            opcode: Opcode::MapSize,
            payload: &[1, b'm'],
        }];
        let mixed = [
            reads[0],
            BatchOp {
                opcode: Opcode::MapClear,
                payload: &[1, b'm'],
            },
        ];
        let e = enc
            .encode(
                &mut buf,
                &Payload::BatchExecute(Batch {
                    ops: Seq::Items(&reads),
                }),
            )
            .unwrap();
        assert_eq!(e.sequence, None);
        let e = enc
            .encode(
                &mut buf,
                &Payload::BatchExecute(Batch {
                    ops: Seq::Items(&mixed),
                }),
            )
            .unwrap();
        assert_eq!(e.sequence, Some(1));
    }

    #[test]
    fn structures_route_by_name() {
        let mut enc = RequestEncoder::new(1);
        let mut buf = [0u8; 64];
        let e = enc
            .encode(&mut buf, &Payload::QueueSize(Named { name: "jobs" }))
            .unwrap();
        assert_eq!(e.partition, partition_of(b"jobs"));
        let e = enc.encode(&mut buf, &Payload::MapSize(Named { name: "jobs" })).unwrap();
        assert_eq!(e.partition, 0, "a map-wide operation has no single partition");
    }
}
