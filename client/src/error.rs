//! The client's error type: every way a request can fail, with the
//! server's answers (redirect, busy, unsupported) kept apart so callers can
//! act on them.

use std::io;

use loomcache_wire::ErrorCode;

/// Result alias for the client.
pub type Result<T, E = ClientError> = core::result::Result<T, E>;

/// A request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Reading or writing failed, or the node closed the connection.
    /// (Through [`Client`](crate::Client), failing to reach any node is
    /// [`ClientError::Connect`].)
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// No node could be reached: connecting or the handshake failed at
    /// `addr` (the last address tried). The request was not sent.
    #[error("could not connect to {addr}: {source}")]
    Connect {
        /// The last address tried.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// No answer within the request timeout; the request may or may not
    /// have been applied (a sequenced write retried later is applied once).
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The server's bytes did not decode.
    #[error("protocol: {0}")]
    Protocol(#[from] loomcache_wire::Error),
    /// The node is not the leader; the leader is named.
    #[error("not the leader; leader is node {leader_id} at {leader_addr}")]
    Redirect {
        /// Leader's node id.
        leader_id: u64,
        /// Leader's client address.
        leader_addr: String,
    },
    /// The node is overloaded and asked the client to back off.
    #[error("server busy; retry after {retry_after_ms} ms")]
    Busy {
        /// Suggested wait.
        retry_after_ms: u32,
    },
    /// The operation is not supported by the server.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The node refused the request with an error code this build does not
    /// know (a newer node's). Not retried; for a write, counted as
    /// possibly applied, since what the code means is unknown here.
    #[error("error code {code} (unknown to this client): {message}")]
    UnknownCode {
        /// The code as sent.
        code: u16,
        /// The node's detail.
        message: String,
    },
    /// The write's sequence fell out of the server's deduplication window:
    /// its outcome is unknown.
    #[error("sequence lost; the oldest retained is {oldest_retained}")]
    SequenceLost {
        /// Oldest sequence the server still remembers for this client.
        oldest_retained: u64,
    },
    /// The server refused the request.
    #[error("{code}: {message}")]
    Server {
        /// Why.
        code: ErrorCode,
        /// The server's detail.
        message: String,
    },
    /// A write failed for good after an earlier attempt of it got no
    /// answer (a timeout, a broken connection, `OUTCOME_UNKNOWN`): that
    /// attempt may have been applied. `last` is how the last attempt
    /// failed.
    #[error("{last}; an earlier attempt got no answer, so the write may have been applied")]
    OutcomeUnknown {
        /// The last attempt's failure.
        last: Box<ClientError>,
    },
    /// The answer had a shape this request never gets.
    #[error("unexpected answer to {request}: {detail}")]
    Unexpected {
        /// The request's opcode.
        request: &'static str,
        /// What came back.
        detail: String,
    },
}

impl ClientError {
    /// True if retrying the same request (with the same sequence number)
    /// may succeed: busy, timeouts, unreachable nodes and broken
    /// connections.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Busy { .. } | ClientError::Timeout(_) | ClientError::Io(_) | ClientError::Connect { .. }
        ) || matches!(
            self,
            ClientError::Server {
                code: ErrorCode::NoLeader | ErrorCode::ShuttingDown | ErrorCode::OutcomeUnknown,
                ..
            }
        )
    }

    /// For a write: true if this is the state machine's refusal of it
    /// (`WRONG_TYPE`, `OUT_OF_MEMORY`, `INVALID_ARGUMENT`). The node keeps
    /// that answer for the write's sequence and gives it to every retry,
    /// so it settles the write as not applied, whatever an earlier attempt
    /// saw.
    pub(crate) fn refuses_the_write(&self) -> bool {
        matches!(
            self,
            ClientError::Server {
                code: ErrorCode::WrongType | ErrorCode::OutOfMemory | ErrorCode::InvalidArgument,
                ..
            }
        )
    }

    /// For a failed write: true if it may have been applied all the same.
    /// A request that was sent and got no answer (a timeout, a broken
    /// connection), whose sequence the server no longer remembers, that a
    /// stopping node held, or that the server answered `OUTCOME_UNKNOWN`
    /// or a code this build does not know; and
    /// [`ClientError::OutcomeUnknown`]. Every other failure means the
    /// write was not applied ([`ClientError::Connect`]: it was never sent).
    pub fn may_have_applied(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout(_)
                | ClientError::Io(_)
                | ClientError::SequenceLost { .. }
                | ClientError::OutcomeUnknown { .. }
                | ClientError::UnknownCode { .. }
                | ClientError::Server {
                    code: ErrorCode::OutcomeUnknown | ErrorCode::ShuttingDown | ErrorCode::Timeout,
                    ..
                }
        )
    }
}
