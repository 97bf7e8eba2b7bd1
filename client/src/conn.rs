//! One blocking connection: hello handshake, encoding, pipelining by
//! request id, and decoding answers out of a fixed receive buffer.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use loomcache_wire::{
    encode_frame, frame_len, partition_of, Body, ErrorBody, ErrorCode, Flags, Framer, HeaderFields, Hello, HelloAck,
    Limits, OpClass, Opcode, Payload, Sequence, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};

use crate::error::{ClientError, Result};
use crate::reply::Reply;

/// A connection to one node.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    addr: SocketAddr,
    framer: Framer<Vec<u8>>,
    out: Vec<u8>,
    pending: HashMap<u64, Opcode>,
    next_request_id: u64,
    limits: Limits,
    timeout: Duration,
    /// The longest wait of the polls among the pending requests (kept
    /// until none is pending): an answer may take that much longer.
    waits: Duration,
    ack: HelloAck,
    /// A transport or connection-level failure happened: never reuse.
    broken: bool,
    /// Reads carry `STALE_READ`: any member may answer them locally.
    stale_reads: bool,
}

impl Connection {
    /// Connects, then exchanges `HELLO` as `client_id`.
    pub fn connect(
        addr: SocketAddr,
        client_id: u64,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, connect_timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(request_timeout))?;
        let limits = Limits::DEFAULT;
        let mut conn = Connection {
            stream,
            addr,
            framer: Framer::new(vec![0u8; limits.frame_max_bytes()], limits)?,
            out: Vec::with_capacity(4096),
            pending: HashMap::new(),
            next_request_id: 1,
            limits,
            timeout: request_timeout,
            waits: Duration::ZERO,
            broken: false,
            stale_reads: false,
            ack: HelloAck {
                version: 0,
                features: 0,
                node_id: 0,
                client_id,
                payload_max_bytes: 0,
                in_flight_max: 0,
            },
        };
        let hello = Payload::Hello(Hello {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION,
            features: 0,
            client_id,
            client_name: "loomcache-client",
        });
        match conn.call(&hello, None)? {
            Reply::HelloAck(ack) => conn.ack = ack,
            other => {
                return Err(ClientError::Unexpected {
                    request: "HELLO",
                    detail: format!("{other:?}"),
                })
            }
        }
        Ok(conn)
    }

    /// The node's answer to hello.
    pub fn hello_ack(&self) -> &HelloAck {
        &self.ack
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True once the connection failed; it must not be reused.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks reads `STALE_READ` (answered by whichever member receives
    /// them, from its own state) or not (linearizable, at the leader).
    pub fn set_stale_reads(&mut self, stale: bool) {
        self.stale_reads = stale;
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Sends a request without waiting; answers its request id. A write
    /// carries `sequence` (the client's, reused unchanged on retries).
    pub fn send(&mut self, payload: &Payload<'_>, sequence: Option<u64>) -> Result<u64> {
        let r = self.send_inner(payload, sequence);
        self.broken |= r.is_err();
        r
    }

    /// Sends several requests in one write, so the node receives them
    /// together; answers their request ids, in order. Each write carries
    /// its `sequence`, as with [`Connection::send`].
    pub fn send_many(&mut self, requests: &[(&Payload<'_>, Option<u64>)]) -> Result<Vec<u64>> {
        let r = self.send_many_inner(requests);
        self.broken |= r.is_err();
        r
    }

    fn send_inner(&mut self, payload: &Payload<'_>, sequence: Option<u64>) -> Result<u64> {
        self.out.clear();
        let request_id = self.encode(payload, sequence)?;
        self.stream.write_all(&self.out)?;
        self.sent(request_id, payload);
        Ok(request_id)
    }

    fn send_many_inner(&mut self, requests: &[(&Payload<'_>, Option<u64>)]) -> Result<Vec<u64>> {
        self.out.clear();
        let mut ids = Vec::with_capacity(requests.len());
        for &(payload, sequence) in requests {
            ids.push(self.encode(payload, sequence)?);
        }
        self.stream.write_all(&self.out)?;
        for (&id, &(payload, _)) in ids.iter().zip(requests) {
            self.sent(id, payload);
        }
        Ok(ids)
    }

    /// Appends `payload`'s frame to `out` under a fresh request id.
    fn encode(&mut self, payload: &Payload<'_>, sequence: Option<u64>) -> Result<u64> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let seq = sequence.map(|s| Sequence::new(self.ack.client_id, s));
        let stale = self.stale_reads && payload.opcode().class() == OpClass::Read;
        let fields = HeaderFields {
            partition: payload.routing_key().map_or(0, partition_of),
            flags: if stale { Flags::STALE_READ } else { Flags::NONE },
            ..HeaderFields::request(payload.opcode(), request_id)
        };
        let at = self.out.len();
        self.out.resize(at + frame_len(seq.as_ref(), payload), 0);
        encode_frame(&mut self.out[at..], &fields, seq.as_ref(), payload)?;
        Ok(request_id)
    }

    /// Records a request written: its answer is awaited.
    fn sent(&mut self, request_id: u64, payload: &Payload<'_>) {
        self.pending.insert(request_id, payload.opcode());
        if let Payload::QueuePoll(p) = payload {
            // The node holds a waiting poll until an item or its wait ends.
            self.waits = self.waits.max(Duration::from_millis(u64::from(p.wait_ms)));
        }
    }

    /// Waits for the next answer: its request id and outcome. A
    /// connection-level error (request id 0) fails the connection.
    pub fn recv(&mut self) -> Result<(u64, Result<Reply>)> {
        // An error here (as opposed to an error answer inside the Ok) is a
        // failure of the connection itself.
        let r = self.recv_inner();
        self.broken |= r.is_err();
        if self.pending.is_empty() {
            self.waits = Duration::ZERO;
        }
        r
    }

    fn recv_inner(&mut self) -> Result<(u64, Result<Reply>)> {
        let deadline = Instant::now() + self.timeout + self.waits;
        loop {
            if let Some(frame) = self.framer.next_frame()? {
                let id = frame.request_id();
                if id == 0 {
                    // Pushes and connection-level errors.
                    if frame.opcode() == Opcode::ResponseError || frame.opcode() == Opcode::ResponseServerBusy {
                        return Err(answer(&frame, Opcode::ClusterPing, &self.limits)
                            .err()
                            .unwrap_or_else(|| ClientError::Unexpected {
                                request: "connection",
                                detail: "an OK answer without a request".into(),
                            }));
                    }
                    continue;
                }
                let Some(request) = self.pending.remove(&id) else {
                    continue;
                };
                if request == Opcode::PartitionTableRequest && frame.opcode() == Opcode::PartitionTableResponse {
                    let reply = match frame.decode(&self.limits)? {
                        Payload::PartitionTableResponse(t) => {
                            Ok(Reply::PartitionTable(crate::reply::PartitionTable::from_wire(&t)))
                        }
                        other => Err(ClientError::Unexpected {
                            request: request.wire_name(),
                            detail: format!("{:?}", other.opcode()),
                        }),
                    };
                    return Ok((id, reply));
                }
                return Ok((id, answer(&frame, request, &self.limits)));
            }
            if !self.fill(deadline)? {
                return Err(ClientError::Timeout(self.timeout + self.waits));
            }
        }
    }

    /// Reads more bytes into the receive buffer, waiting until `deadline`;
    /// `false` if nothing arrived in time.
    fn fill(&mut self, deadline: Instant) -> Result<bool> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(self.framer.spare_mut()) {
                Ok(0) => {
                    return Err(ClientError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the node closed the connection",
                    )))
                }
                Ok(n) => {
                    self.framer.filled(n);
                    return Ok(true);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Ok(false)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits up to `timeout` for the next pushed topic message on this
    /// connection (a subscription connection); `None` if none arrived.
    pub fn recv_push(&mut self, timeout: Duration) -> Result<Option<crate::Message>> {
        let r = self.recv_push_inner(timeout);
        self.broken |= r.is_err();
        r
    }

    fn recv_push_inner(&mut self, timeout: Duration) -> Result<Option<crate::Message>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.framer.next_frame()? {
                if frame.opcode() == Opcode::TopicMessage {
                    if let loomcache_wire::Payload::TopicMessage(m) = frame.decode(&self.limits)? {
                        return Ok(Some(crate::Message {
                            subscription_id: m.subscription_id,
                            sequence: m.sequence,
                            dropped_before: m.dropped,
                            topic: m.topic.to_owned(),
                            payload: m.message.to_vec(),
                        }));
                    }
                }
                continue;
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, payload: &Payload<'_>, sequence: Option<u64>) -> Result<Reply> {
        let id = self.send(payload, sequence)?;
        loop {
            let (got, reply) = self.recv()?;
            if got == id {
                return reply;
            }
        }
    }
}

/// The reply `frame` carries for `request`. An error answer with a code
/// this build does not know (from a newer node) is
/// [`ClientError::UnknownCode`] with the node's message, not a protocol
/// error.
fn answer(frame: &loomcache_wire::Frame<'_>, request: Opcode, limits: &Limits) -> Result<Reply> {
    match frame.decode_response(request, limits) {
        Ok(r) => Reply::from_response(request, r),
        Err(e) => {
            let status = frame.header().status();
            if frame.opcode() != Opcode::ResponseError || status == 0 || ErrorCode::from_u16(status).is_some() {
                return Err(e.into());
            }
            let message = ErrorBody::decode_all(frame.body(), limits).map_or_else(
                |_| String::from("(the message did not decode)"),
                |b| b.message.to_owned(),
            );
            Err(ClientError::UnknownCode { code: status, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use loomcache_wire::{parse_frame, Parsed, Response};

    use super::*;

    /// An error answer with `status`, decoded as the answer to a write.
    fn error_answer(status: u16) -> ClientError {
        let fields = HeaderFields {
            opcode: Opcode::ResponseError,
            flags: Flags::NONE,
            status,
            partition: 0,
            request_id: 7,
        };
        let body = Response::Error {
            code: ErrorCode::Internal,
            message: "a newer refusal",
        };
        let mut out = vec![0u8; frame_len(None, &body)];
        encode_frame(&mut out, &fields, None, &body).unwrap();
        let Parsed::Frame(frame) = parse_frame(&out, &Limits::DEFAULT).unwrap() else {
            panic!("a whole frame")
        };
        answer(&frame, Opcode::MapSet, &Limits::DEFAULT).unwrap_err()
    }

    #[test]
    fn an_error_code_this_build_does_not_know_is_kept_with_its_message() {
        let unknown = u16::try_from(ErrorCode::ALL.len()).unwrap() + 100;
        match error_answer(unknown) {
            e @ ClientError::UnknownCode { .. } => {
                assert!(e.may_have_applied(), "{e}");
                assert!(!e.is_retryable(), "{e}");
                let ClientError::UnknownCode { code, message } = e else {
                    unreachable!()
                };
                assert_eq!((code, message.as_str()), (unknown, "a newer refusal"));
            }
            other => panic!("{other:?}"),
        }
        // A known code is the server's error, as before.
        assert!(matches!(
            error_answer(ErrorCode::NoLeader.code()),
            ClientError::Server {
                code: ErrorCode::NoLeader,
                ..
            }
        ));
    }
}
