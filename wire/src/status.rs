//! Error codes carried in the header's `status` field of a non-OK response.
//! Numbers are frozen once released.

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = $val:literal, $wire:literal; )*) => {
        /// Why a request failed. `0` means success and never appears in a
        /// `RESPONSE_ERROR`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $val, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code for a wire value, if known.
            pub const fn from_u16(value: u16) -> Option<ErrorCode> {
                match value {
                    $( $val => Some(ErrorCode::$name), )*
                    _ => None,
                }
            }

            /// The name used in docs and logs (`NOT_LEADER`).
            pub const fn wire_name(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $wire, )*
                }
            }
        }
    };
}

codes! {
    /// Success.
    Ok = 0, "OK";
    /// The frame or payload could not be decoded.
    Malformed = 1, "MALFORMED";
    /// The opcode is not known to this server.
    UnknownOpcode = 2, "UNKNOWN_OPCODE";
    /// No protocol version in common.
    UnsupportedVersion = 3, "UNSUPPORTED_VERSION";
    /// The frame exceeds the server's maximum.
    FrameTooLarge = 4, "FRAME_TOO_LARGE";
    /// The header checksum did not match.
    BadChecksum = 5, "BAD_CHECKSUM";
    /// A key, value, name or list length is outside its allowed range
    /// (above the configured maximum, or below the minimum: an empty name).
    BadFieldLength = 6, "BAD_FIELD_LENGTH";
    /// The operation is known but not built yet.
    Unsupported = 7, "UNSUPPORTED";
    /// This node is not the leader (sent as `RESPONSE_REDIRECT`).
    NotLeader = 8, "NOT_LEADER";
    /// No leader is known right now; retry with backoff.
    NoLeader = 9, "NO_LEADER";
    /// The server is overloaded (sent as `RESPONSE_SERVER_BUSY`).
    ServerBusy = 10, "SERVER_BUSY";
    /// The request's sequence fell out of the deduplication window.
    SequenceLost = 11, "SEQUENCE_LOST";
    /// Connection limit reached, globally or for this client address.
    TooManyConnections = 12, "TOO_MANY_CONNECTIONS";
    /// Too many requests in flight on this connection.
    TooManyInFlight = 13, "TOO_MANY_IN_FLIGHT";
    /// The data memory limit is reached; the write was not applied.
    OutOfMemory = 14, "OUT_OF_MEMORY";
    /// The name is bound to a structure of another type.
    WrongType = 15, "WRONG_TYPE";
    /// The operation did not complete in time; its outcome is unknown.
    Timeout = 16, "TIMEOUT";
    /// The connection must authenticate first.
    AuthRequired = 17, "AUTH_REQUIRED";
    /// The credentials were rejected.
    AuthFailed = 18, "AUTH_FAILED";
    /// The principal may not use this opcode.
    PermissionDenied = 19, "PERMISSION_DENIED";
    /// The node is shutting down.
    ShuttingDown = 20, "SHUTTING_DOWN";
    /// The durable log failed; the node accepts no writes.
    StorageFailure = 21, "STORAGE_FAILURE";
    /// A bug or an unexpected internal state.
    Internal = 22, "INTERNAL";
    /// An argument is outside its domain (a page size of zero, say).
    InvalidArgument = 23, "INVALID_ARGUMENT";
    /// The write reached consensus, and this node can no longer tell
    /// whether it took effect (its log was replaced under it): it may have
    /// been applied. A retry with the same sequence applies at most once.
    OutcomeUnknown = 24, "OUTCOME_UNKNOWN";
}

impl ErrorCode {
    /// The wire value.
    pub const fn code(self) -> u16 {
        self as u16
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.wire_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_and_round_trip() {
        for (i, &code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.code() as usize, i, "{code} breaks the numbering");
            assert_eq!(ErrorCode::from_u16(code.code()), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(ErrorCode::ALL.len() as u16), None);
    }
}
