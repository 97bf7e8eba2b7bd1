//! A RESP (Redis serialization protocol) command parser and encoder, written
//! the way a typical server reads a request: an array of bulk strings,
//! `*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n`, parsed into a
//! `Vec` of argument slices that borrow the receive buffer.
//!
//! Every declared count and length is checked against [`RespLimits`] before
//! it is used, so a peer cannot make the parser reserve memory or walk bytes
//! by a number it chose. Inline commands (plain text lines) and the RESP3
//! types are not accepted: clients send commands as arrays of bulk strings.

/// Upper bounds on what a command may declare. The defaults mirror
/// `loomcache_wire::Limits::DEFAULT`: 1024 items in a list, 1 MiB values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    /// Most arguments a command may have, the command name included.
    pub args_max: usize,
    /// Largest bulk string, in bytes.
    pub bulk_max_bytes: usize,
}

impl RespLimits {
    /// Defaults matching the client limits of the LoomCache wire protocol.
    pub const DEFAULT: RespLimits = RespLimits {
        args_max: 1024,
        bulk_max_bytes: 1 << 20,
    };
}

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits::DEFAULT
    }
}

/// The longest length line accepted after its type byte: enough digits for
/// any `usize`. A longer line is refused instead of being scanned for ever.
const LENGTH_DIGITS_MAX: usize = 20;

/// Why bytes are not a RESP command. Every variant is fatal to the stream:
/// the parser cannot find the next command after one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RespError {
    /// A command must start with `*`.
    ExpectedArray {
        /// The byte found instead.
        found: u8,
    },
    /// Every argument must be a bulk string, starting with `$`.
    ExpectedBulk {
        /// The byte found instead.
        found: u8,
    },
    /// A length line that is empty, not decimal, too long, or not ended by
    /// `\r\n`.
    BadLength,
    /// A command with no arguments.
    EmptyCommand,
    /// More arguments than [`RespLimits::args_max`].
    TooManyArgs {
        /// Declared count.
        count: u64,
        /// Configured maximum.
        max: usize,
    },
    /// A bulk string longer than [`RespLimits::bulk_max_bytes`].
    BulkTooLarge {
        /// Declared length.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// A bulk string not followed by `\r\n`.
    MissingCrlf,
}

impl core::fmt::Display for RespError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RespError::ExpectedArray { found } => write!(f, "expected '*', found byte {found:#04x}"),
            RespError::ExpectedBulk { found } => write!(f, "expected '$', found byte {found:#04x}"),
            RespError::BadLength => f.write_str("malformed length line"),
            RespError::EmptyCommand => f.write_str("command has no arguments"),
            RespError::TooManyArgs { count, max } => write!(f, "{count} arguments exceed the maximum of {max}"),
            RespError::BulkTooLarge { len, max } => write!(f, "bulk string of {len} bytes exceeds {max}"),
            RespError::MissingCrlf => f.write_str("bulk string not followed by CRLF"),
        }
    }
}

impl std::error::Error for RespError {}

/// One complete command borrowed from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'a> {
    /// The arguments, command name first.
    pub args: Vec<&'a [u8]>,
    /// Bytes the command occupied at the start of the buffer.
    pub consumed: usize,
}

/// What [`parse_command`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete command.
    Command(Command<'a>),
    /// More bytes are needed. Unlike a LoomCache header, RESP does not say
    /// how many until every length line has arrived.
    Incomplete,
}

/// The start of a command: its argument count and the length of its first
/// argument (the command name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrayHeader {
    /// Declared number of arguments, within [`RespLimits::args_max`].
    pub count: usize,
    /// Declared length of the first argument, within
    /// [`RespLimits::bulk_max_bytes`].
    pub first_len: usize,
    /// Bytes of the two length lines.
    pub consumed: usize,
}

/// Reads a length line after its type byte at `buf[0]`: decimal digits then
/// `\r\n`. Answers the value and the bytes used, or `None` when the line has
/// not fully arrived. The value is checked against `max` digit by digit, so
/// it can neither overflow nor pass the limit.
fn length_line(
    buf: &[u8],
    max: usize,
    too_large: impl Fn(u64) -> RespError,
) -> Result<Option<(usize, usize)>, RespError> {
    let mut value: u64 = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        match b {
            b'0'..=b'9' => {
                if i > LENGTH_DIGITS_MAX {
                    return Err(RespError::BadLength);
                }
                value = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .ok_or(RespError::BadLength)?;
                if value > max as u64 {
                    return Err(too_large(value));
                }
            }
            b'\r' => break,
            _ => return Err(RespError::BadLength),
        }
        i += 1;
    }
    if i == 1 {
        return Err(RespError::BadLength);
    }
    match buf.get(i + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((value as usize, i + 2))),
        Some(_) => Err(RespError::BadLength),
    }
}

fn array_len(buf: &[u8], limits: &RespLimits) -> Result<Option<(usize, usize)>, RespError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => {
            let max = limits.args_max;
            let parsed = length_line(buf, max, |count| RespError::TooManyArgs { count, max })?;
            match parsed {
                Some((0, _)) => Err(RespError::EmptyCommand),
                other => Ok(other),
            }
        }
        Some(&found) => Err(RespError::ExpectedArray { found }),
    }
}

fn bulk_len(buf: &[u8], limits: &RespLimits) -> Result<Option<(usize, usize)>, RespError> {
    match buf.first() {
        None => Ok(None),
        Some(b'$') => {
            let max = limits.bulk_max_bytes;
            length_line(buf, max, |len| RespError::BulkTooLarge { len, max })
        }
        Some(&found) => Err(RespError::ExpectedBulk { found }),
    }
}

/// Reads only the array line and the first bulk length line: what a server
/// knows about a command before reading its arguments. This is less than a
/// LoomCache header gives: the total length of the command stays unknown.
pub fn parse_array_header(buf: &[u8], limits: &RespLimits) -> Result<Option<ArrayHeader>, RespError> {
    let Some((count, array_line)) = array_len(buf, limits)? else {
        return Ok(None);
    };
    let Some((first_len, bulk_line)) = bulk_len(&buf[array_line..], limits)? else {
        return Ok(None);
    };
    Ok(Some(ArrayHeader {
        count,
        first_len,
        consumed: array_line + bulk_line,
    }))
}

/// Parses one complete command from the start of `buf`.
pub fn parse_command<'a>(buf: &'a [u8], limits: &RespLimits) -> Result<Parsed<'a>, RespError> {
    let Some((count, mut pos)) = array_len(buf, limits)? else {
        return Ok(Parsed::Incomplete);
    };
    // `count` is within `args_max`, so this reservation is bounded by
    // configuration, not by the peer.
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let Some((len, line)) = bulk_len(&buf[pos..], limits)? else {
            return Ok(Parsed::Incomplete);
        };
        let start = pos + line;
        // `len` is within `bulk_max_bytes`; compare against what is present
        // before forming any index from it.
        if buf.len() - start < len.saturating_add(2) {
            return Ok(Parsed::Incomplete);
        }
        let end = start + len;
        if &buf[end..end + 2] != b"\r\n" {
            return Err(RespError::MissingCrlf);
        }
        args.push(&buf[start..end]);
        pos = end + 2;
    }
    Ok(Parsed::Command(Command { args, consumed: pos }))
}

/// Appends `n` in decimal without going through `core::fmt`.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; LENGTH_DIGITS_MAX];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `args` to `out` as one command: an array of bulk strings.
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    let body: usize = args.iter().map(|a| a.len() + 2 * LENGTH_DIGITS_MAX).sum();
    out.reserve(body + LENGTH_DIGITS_MAX);
    out.push(b'*');
    push_decimal(out, args.len());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        push_decimal(out, arg.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";

    fn complete(buf: &[u8]) -> Command<'_> {
        match parse_command(buf, &RespLimits::DEFAULT) {
            Ok(Parsed::Command(c)) => c,
            other => panic!("expected a command, got {other:?}"),
        }
    }

    #[test]
    fn encodes_the_documented_bytes() {
        let mut out = Vec::new();
        encode_command(&[b"SET", b"key", b"value"], &mut out);
        assert_eq!(out, SET);
    }

    #[test]
    fn round_trip_borrows_the_input() {
        let value = vec![0xAB; 1000];
        let args: [&[u8]; 4] = [b"SET", b"", b"\r\n$*", &value];
        let mut out = b"prefix".to_vec();
        encode_command(&args, &mut out);
        let buf = &out[6..];
        let cmd = complete(buf);
        assert_eq!(cmd.args, args);
        assert_eq!(cmd.consumed, buf.len());
        assert!(cmd.args[3].as_ptr_range().start >= buf.as_ptr_range().start);
        assert!(cmd.args[3].as_ptr_range().end <= buf.as_ptr_range().end);
    }

    #[test]
    fn stops_after_one_command() {
        let mut two = SET.to_vec();
        two.extend_from_slice(SET);
        let cmd = complete(&two);
        assert_eq!(cmd.consumed, SET.len());
        assert_eq!(complete(&two[cmd.consumed..]).args, [&b"SET"[..], b"key", b"value"]);
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for n in 0..SET.len() {
            assert_eq!(
                parse_command(&SET[..n], &RespLimits::DEFAULT),
                Ok(Parsed::Incomplete),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn array_header() {
        let h = parse_array_header(SET, &RespLimits::DEFAULT).unwrap().unwrap();
        assert_eq!(
            h,
            ArrayHeader {
                count: 3,
                first_len: 3,
                consumed: 8
            }
        );
        for n in 0..8 {
            assert_eq!(
                parse_array_header(&SET[..n], &RespLimits::DEFAULT),
                Ok(None),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn malformed_input_is_refused() {
        let cases: &[(&[u8], RespError)] = &[
            (b"SET key value\r\n", RespError::ExpectedArray { found: b'S' }),
            (b"*1\r\n:3\r\n", RespError::ExpectedBulk { found: b':' }),
            (b"*\r\n", RespError::BadLength),
            (b"*-1\r\n", RespError::BadLength),
            (b"*1x\r\n", RespError::BadLength),
            (b"*1\r\r", RespError::BadLength),
            (b"*0\r\n", RespError::EmptyCommand),
            (b"*1\r\n$3\r\nSETxx", RespError::MissingCrlf),
            (b"*1\r\n$+3\r\nSET\r\n", RespError::BadLength),
            (b"*00000000000000000000001\r\n", RespError::BadLength),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_command(input, &RespLimits::DEFAULT),
                Err(*expected),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn declared_sizes_over_the_limits_are_refused_before_use() {
        let limits = RespLimits {
            args_max: 2,
            bulk_max_bytes: 4,
        };
        assert_eq!(
            parse_command(b"*3\r\n", &limits),
            Err(RespError::TooManyArgs { count: 3, max: 2 })
        );
        assert_eq!(
            parse_command(b"*2\r\n$5\r\n", &limits),
            Err(RespError::BulkTooLarge { len: 5, max: 4 })
        );
        // Refused at the first digit that passes the limit, before the line
        // ends and without the body present.
        assert_eq!(
            parse_command(b"*99999999999999999999999", &RespLimits::DEFAULT),
            Err(RespError::TooManyArgs { count: 9999, max: 1024 })
        );
        assert_eq!(
            parse_command(b"*1\r\n$18446744073709551616\r\n", &RespLimits::DEFAULT),
            Err(RespError::BulkTooLarge {
                len: 1_844_674,
                max: 1 << 20
            })
        );
        let mut exactly = Vec::new();
        encode_command(&[b"ab", b"cdef"], &mut exactly);
        assert_eq!(complete(&exactly).args, [&b"ab"[..], b"cdef"]);
        assert!(matches!(parse_command(&exactly, &limits), Ok(Parsed::Command(_))));
    }
}
