//! Field-level encoding: a bounds-checked reader over borrowed bytes, a
//! bounds-checked writer into a caller's buffer, and the codecs every payload
//! field uses. Nothing here allocates.
//!
//! Variable-length fields are length-prefixed; the prefix width is part of
//! the field's type (names `u8`, keys `u16`, values `u32`). A length is
//! checked against the configured maximum *and* the bytes present before any
//! slice is taken.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::FromBytes;

use crate::error::{Error, Result};
use crate::limits::Limits;

/// Reads fields from a borrowed payload. Every slice it returns borrows the
/// input; it never copies field bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::Truncated {
                field,
                needed: n as u64,
                available: self.remaining() as u64,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self, field: &'static str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Reads a length and checks it against `min..=max` before anything is
    /// taken by it.
    fn len_checked(&mut self, width: usize, min: u64, max: u64, field: &'static str) -> Result<usize> {
        let len = match width {
            1 => u64::from(self.u8(field)?),
            2 => u64::from(self.u16(field)?),
            _ => u64::from(self.u32(field)?),
        };
        check_len(len, min, max, field)?;
        // A length the input cannot hold is truncation, reported before any
        // use of the length.
        if len > self.remaining() as u64 {
            return Err(Error::Truncated {
                field,
                needed: len,
                available: self.remaining() as u64,
            });
        }
        Ok(len as usize)
    }

    /// Fails if any bytes are left.
    pub fn finish(self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(Error::TrailingBytes { count: n as u64 }),
        }
    }
}

/// Writes fields into a caller-provided buffer (a pooled buffer in the
/// daemon). It never grows the buffer: running out of room is an error.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// A writer at the start of `out`.
    pub fn new(out: &'a mut [u8]) -> Writer<'a> {
        Writer { out, pos: 0 }
    }

    /// Bytes written so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Appends bytes.
    pub fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let available = self.out.len() - self.pos;
        if bytes.len() > available {
            return Err(Error::BufferTooSmall {
                needed: (self.pos + bytes.len()) as u64,
                available: self.out.len() as u64,
            });
        }
        self.out[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
        Ok(())
    }

    /// Writes a length prefix of `width` bytes after checking it fits.
    fn len_prefix(&mut self, width: usize, len: usize, max: u64, field: &'static str) -> Result<()> {
        let len = len as u64;
        if len > max {
            return Err(Error::FieldLengthOutOfRange {
                field,
                len,
                min: 0,
                max,
            });
        }
        match width {
            1 => self.put(&[len as u8]),
            2 => self.put(&(len as u16).to_le_bytes()),
            _ => self.put(&(len as u32).to_le_bytes()),
        }
    }
}

/// How one field is read, measured and written. Implemented by zero-sized
/// marker types so a payload struct names each field's encoding once.
pub trait Codec<'a> {
    /// The decoded value (borrowing the input where it is bytes).
    type Value: Copy;
    /// Reads the field, checking lengths against `limits`.
    fn read(r: &mut Reader<'a>, limits: &Limits, field: &'static str) -> Result<Self::Value>;
    /// Encoded size in bytes.
    fn len(value: &Self::Value) -> usize;
    /// Writes the field.
    fn write(w: &mut Writer<'_>, value: &Self::Value, field: &'static str) -> Result<()>;
}

macro_rules! int_codec {
    ($(#[$doc:meta])* $marker:ident, $ty:ty, $read:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $marker {}
        impl<'a> Codec<'a> for $marker {
            type Value = $ty;
            fn read(r: &mut Reader<'a>, _: &Limits, field: &'static str) -> Result<$ty> {
                Ok(r.$read(field)? as $ty)
            }
            fn len(_: &$ty) -> usize {
                size_of::<$ty>()
            }
            fn write(w: &mut Writer<'_>, value: &$ty, _: &'static str) -> Result<()> {
                w.put(&value.to_le_bytes())
            }
        }
    };
}

int_codec!(
    /// `u8`.
    U8F, u8, u8
);
int_codec!(
    /// Little-endian `u16`.
    U16F, u16, u16
);
int_codec!(
    /// Little-endian `u32`.
    U32F, u32, u32
);
int_codec!(
    /// Little-endian `u64`.
    U64F, u64, u64
);
int_codec!(
    /// Little-endian two's-complement `i64`.
    I64F, i64, u64
);

/// A boolean as one byte, 0 or 1; anything else is invalid.
#[derive(Debug)]
pub enum BoolF {}
impl<'a> Codec<'a> for BoolF {
    type Value = bool;
    fn read(r: &mut Reader<'a>, _: &Limits, field: &'static str) -> Result<bool> {
        match r.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Error::InvalidValue {
                field,
                value: u64::from(v),
            }),
        }
    }
    fn len(_: &bool) -> usize {
        1
    }
    fn write(w: &mut Writer<'_>, value: &bool, _: &'static str) -> Result<()> {
        w.put(&[u8::from(*value)])
    }
}

/// Conversion between a length-prefixed field's bytes and its value.
trait Raw<'a>: Sized {
    fn from_raw(bytes: &'a [u8], field: &'static str) -> Result<Self>;
    fn raw(&self) -> &[u8];
}

impl<'a> Raw<'a> for &'a [u8] {
    fn from_raw(bytes: &'a [u8], _: &'static str) -> Result<Self> {
        Ok(bytes)
    }
    fn raw(&self) -> &[u8] {
        self
    }
}

impl<'a> Raw<'a> for &'a str {
    fn from_raw(bytes: &'a [u8], field: &'static str) -> Result<Self> {
        core::str::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 { field })
    }
    fn raw(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Checks a length against `min..=max`.
fn check_len(len: u64, min: u64, max: u64, field: &'static str) -> Result<()> {
    if len < min || len > max {
        return Err(Error::FieldLengthOutOfRange { field, len, min, max });
    }
    Ok(())
}

macro_rules! bytes_codec {
    ($(#[$doc:meta])* $marker:ident, $width:literal, $min:expr, $limit:expr, $ty:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $marker {}
        impl<'a> Codec<'a> for $marker {
            type Value = $ty;
            fn read(r: &mut Reader<'a>, limits: &Limits, field: &'static str) -> Result<$ty> {
                let max: u64 = ($limit)(limits);
                let len = r.len_checked($width, $min, max, field)?;
                let bytes = r.take(len, field)?;
                <$ty as Raw<'a>>::from_raw(bytes, field)
            }
            fn len(value: &$ty) -> usize {
                $width + value.raw().len()
            }
            fn write(w: &mut Writer<'_>, value: &$ty, field: &'static str) -> Result<()> {
                let raw = value.raw();
                let max: u64 = ($limit)(&Limits::REPRESENTABLE);
                check_len(raw.len() as u64, $min, max, field)?;
                w.len_prefix($width, raw.len(), max, field)?;
                w.put(raw)
            }
        }
    };
}

bytes_codec!(
    /// A structure name: UTF-8, 1..=255 bytes, `u8` length prefix,
    /// bounded by [`Limits::name_max_bytes`].
    Name, 1, 1, |l: &Limits| u64::from(l.name_max_bytes.min(255)), &'a str
);
bytes_codec!(
    /// A key or set member: `u16` length prefix, bounded by
    /// [`Limits::key_max_bytes`].
    KeyF, 2, 0, |l: &Limits| u64::from(l.key_max_bytes.min(u16::MAX as u32)), &'a [u8]
);
bytes_codec!(
    /// A value, queue item or message: `u32` length prefix, bounded by
    /// [`Limits::value_max_bytes`].
    ValueF, 4, 0, |l: &Limits| u64::from(l.value_max_bytes), &'a [u8]
);
bytes_codec!(
    /// Short UTF-8 text such as an address: `u8` length prefix.
    Text8, 1, 0, |_: &Limits| 255u64, &'a str
);
bytes_codec!(
    /// UTF-8 text such as an error message: `u16` length prefix.
    Text16, 2, 0, |_: &Limits| u64::from(u16::MAX), &'a str
);
bytes_codec!(
    /// Opaque bytes bounded only by the frame (Raft entry data, snapshot
    /// chunks, batched payloads): `u32` length prefix, bounded by
    /// [`Limits::payload_max_bytes`].
    Blob, 4, 0, |l: &Limits| u64::from(l.payload_max_bytes), &'a [u8]
);
bytes_codec!(
    /// A short secret or token: `u16` length prefix.
    Secret16, 2, 0, |_: &Limits| u64::from(u16::MAX), &'a [u8]
);

/// An optional value: a presence byte (0 or 1), then a [`ValueF`] if present.
#[derive(Debug)]
pub enum OptValueF {}
impl<'a> Codec<'a> for OptValueF {
    type Value = Option<&'a [u8]>;
    fn read(r: &mut Reader<'a>, limits: &Limits, field: &'static str) -> Result<Self::Value> {
        if BoolF::read(r, limits, field)? {
            Ok(Some(ValueF::read(r, limits, field)?))
        } else {
            Ok(None)
        }
    }
    fn len(value: &Self::Value) -> usize {
        1 + value.as_ref().map_or(0, ValueF::len)
    }
    fn write(w: &mut Writer<'_>, value: &Self::Value, field: &'static str) -> Result<()> {
        BoolF::write(w, &value.is_some(), field)?;
        match value {
            Some(v) => ValueF::write(w, v, field),
            None => Ok(()),
        }
    }
}

/// An optional key: a presence byte, then a [`KeyF`] if present.
#[derive(Debug)]
pub enum OptKeyF {}
impl<'a> Codec<'a> for OptKeyF {
    type Value = Option<&'a [u8]>;
    fn read(r: &mut Reader<'a>, limits: &Limits, field: &'static str) -> Result<Self::Value> {
        if BoolF::read(r, limits, field)? {
            Ok(Some(KeyF::read(r, limits, field)?))
        } else {
            Ok(None)
        }
    }
    fn len(value: &Self::Value) -> usize {
        1 + value.as_ref().map_or(0, KeyF::len)
    }
    fn write(w: &mut Writer<'_>, value: &Self::Value, field: &'static str) -> Result<()> {
        BoolF::write(w, &value.is_some(), field)?;
        match value {
            Some(v) => KeyF::write(w, v, field),
            None => Ok(()),
        }
    }
}

macro_rules! array_codec {
    ($(#[$doc:meta])* $marker:ident, $elem:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $marker {}
        impl<'a> Codec<'a> for $marker {
            type Value = &'a [$elem];
            fn read(r: &mut Reader<'a>, limits: &Limits, field: &'static str) -> Result<Self::Value> {
                let count = r.u16(field)?;
                if u32::from(count) > limits.items_max {
                    return Err(Error::FieldLengthOutOfRange {
                        field,
                        len: u64::from(count),
                        min: 0,
                        max: u64::from(limits.items_max),
                    });
                }
                let bytes = r.take(usize::from(count) * size_of::<$elem>(), field)?;
                // The element type is unaligned and every bit pattern is
                // valid, so the view cannot fail once the length matched.
                <[$elem]>::ref_from_bytes(bytes).map_err(|_| Error::InvalidValue { field, value: u64::from(count) })
            }
            fn len(value: &Self::Value) -> usize {
                2 + value.len() * size_of::<$elem>()
            }
            fn write(w: &mut Writer<'_>, value: &Self::Value, field: &'static str) -> Result<()> {
                w.len_prefix(2, value.len(), u64::from(u16::MAX), field)?;
                w.put(zerocopy::IntoBytes::as_bytes(*value))
            }
        }
    };
}

array_codec!(
    /// A list of node ids viewed in place: `u16` count, then `u64`s.
    IdsF, U64
);
array_codec!(
    /// A list of `u32`s viewed in place: `u16` count, then `u32`s.
    U32sF, U32
);

/// A payload body: a fixed sequence of fields.
pub trait Body<'a>: Sized + Copy {
    /// Reads every field in order.
    fn decode(r: &mut Reader<'a>, limits: &Limits) -> Result<Self>;
    /// Encoded size in bytes.
    fn encoded_len(&self) -> usize;
    /// Writes every field in order.
    fn encode(&self, w: &mut Writer<'_>) -> Result<()>;

    /// Decodes a whole payload, rejecting trailing bytes.
    fn decode_all(bytes: &'a [u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let body = Self::decode(&mut r, limits)?;
        r.finish()?;
        Ok(body)
    }
}

/// Declares a payload struct and its [`Body`] impl from a field list.
/// Fields are encoded in declaration order with no padding.
macro_rules! body {
    ($(#[$m:meta])* pub struct $name:ident $(<$lt:lifetime>)? {
        $( $(#[$fm:meta])* pub $f:ident : $ty:ty = $codec:ty ),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name $(<$lt>)? {
            $( $(#[$fm])* pub $f: $ty, )*
        }

        impl<'a> $crate::codec::Body<'a> for $name $(<$lt>)? {
            #[allow(unused_variables)]
            fn decode(r: &mut $crate::codec::Reader<'a>, limits: &$crate::limits::Limits) -> $crate::error::Result<Self> {
                Ok($name {
                    $( $f: <$codec as $crate::codec::Codec<'a>>::read(r, limits, concat!(stringify!($name), ".", stringify!($f)))?, )*
                })
            }
            fn encoded_len(&self) -> usize {
                0 $( + <$codec as $crate::codec::Codec<'a>>::len(&self.$f) )*
            }
            #[allow(unused_variables)]
            fn encode(&self, w: &mut $crate::codec::Writer<'_>) -> $crate::error::Result<()> {
                $( <$codec as $crate::codec::Codec<'a>>::write(w, &self.$f, concat!(stringify!($name), ".", stringify!($f)))?; )*
                Ok(())
            }
        }
    };
}
pub(crate) use body;

/// A list of bodies, either as received (validated bytes, walked lazily
/// without allocating) or as items supplied by a sender for encoding.
#[derive(Debug, Clone, Copy)]
pub enum Seq<'a, T> {
    /// A validated encoding: `count` items in `bytes`.
    Encoded {
        /// Number of items.
        count: u32,
        /// Their encoding, already checked against the receiver's limits.
        bytes: &'a [u8],
    },
    /// Items to encode.
    Items(&'a [T]),
}

impl<'a, T: Body<'a> + 'a> Seq<'a, T> {
    /// Number of items.
    pub fn len(&self) -> usize {
        match self {
            Seq::Encoded { count, .. } => *count as usize,
            Seq::Items(items) => items.len(),
        }
    }

    /// True if there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterates the items. Walking received bytes decodes each item in
    /// place; the bytes were validated when the list was read.
    pub fn iter(&self) -> SeqIter<'a, T> {
        match *self {
            Seq::Encoded { count, bytes } => SeqIter::Encoded {
                left: count,
                reader: Reader::new(bytes),
            },
            Seq::Items(items) => SeqIter::Items(items.iter()),
        }
    }
}

impl<'a, T: Body<'a> + PartialEq + 'a> PartialEq for Seq<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<'a, T: Body<'a> + Eq + 'a> Eq for Seq<'a, T> {}

/// Iterator over a [`Seq`].
#[derive(Debug)]
pub enum SeqIter<'a, T> {
    /// Walking received bytes.
    Encoded {
        /// Items left.
        left: u32,
        /// Position in the bytes.
        reader: Reader<'a>,
    },
    /// Walking supplied items.
    Items(core::slice::Iter<'a, T>),
}

impl<'a, T: Body<'a> + 'a> Iterator for SeqIter<'a, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            SeqIter::Encoded { left, reader } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                // Validated on receipt, so this cannot fail; if it somehow
                // did, the iteration ends rather than panicking.
                T::decode(reader, &Limits::REPRESENTABLE).ok()
            }
            SeqIter::Items(items) => items.next().copied(),
        }
    }
}

/// A [`Seq`] field: `u32` count bounded by [`Limits::items_max`], then the
/// items back to back.
#[derive(Debug)]
pub struct SeqF<T>(core::marker::PhantomData<T>);

impl<'a, T: Body<'a> + 'a> Codec<'a> for SeqF<T> {
    type Value = Seq<'a, T>;

    fn read(r: &mut Reader<'a>, limits: &Limits, field: &'static str) -> Result<Self::Value> {
        let count = r.u32(field)?;
        if count > limits.items_max {
            return Err(Error::FieldLengthOutOfRange {
                field,
                len: u64::from(count),
                min: 0,
                max: u64::from(limits.items_max),
            });
        }
        // Validate every item now so iteration later cannot fail. The
        // count is bounded, and each item consumes at least one byte or
        // fails, so this loop is bounded by the input too.
        let start = r.clone();
        let before = r.remaining();
        for _ in 0..count {
            T::decode(r, limits)?;
        }
        let used = before - r.remaining();
        let mut start = start;
        let bytes = start.take(used, field)?;
        Ok(Seq::Encoded { count, bytes })
    }

    fn len(value: &Self::Value) -> usize {
        match value {
            Seq::Encoded { bytes, .. } => 4 + bytes.len(),
            Seq::Items(items) => 4 + items.iter().map(Body::encoded_len).sum::<usize>(),
        }
    }

    fn write(w: &mut Writer<'_>, value: &Self::Value, field: &'static str) -> Result<()> {
        match value {
            Seq::Encoded { count, bytes } => {
                w.put(&count.to_le_bytes())?;
                w.put(bytes)
            }
            Seq::Items(items) => {
                w.len_prefix(4, items.len(), u64::from(u32::MAX), field)?;
                items.iter().try_for_each(|item| item.encode(w))
            }
        }
    }
}

/// A single-field body, so plain keys and values can be list items.
macro_rules! newtype_body {
    ($(#[$doc:meta])* $name:ident, $codec:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<'a>(pub &'a [u8]);
        impl<'a> Body<'a> for $name<'a> {
            fn decode(r: &mut Reader<'a>, limits: &Limits) -> Result<Self> {
                Ok($name(<$codec>::read(r, limits, stringify!($name))?))
            }
            fn encoded_len(&self) -> usize {
                <$codec>::len(&self.0)
            }
            fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
                <$codec>::write(w, &self.0, stringify!($name))
            }
        }
    };
}

newtype_body!(
    /// A key as a list item.
    Key, KeyF
);
newtype_body!(
    /// A value as a list item.
    Value, ValueF
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_checked_against_limit_before_input() {
        // Declares 4 GiB - 1 with 3 bytes present: rejected by the limit,
        // never by trying to take it.
        let bytes = [0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3];
        let err = ValueF::read(&mut Reader::new(&bytes), &Limits::DEFAULT, "v").unwrap_err();
        assert!(
            matches!(err, Error::FieldLengthOutOfRange { len: 0xFFFF_FFFF, .. }),
            "{err:?}"
        );
        let err = ValueF::read(&mut Reader::new(&bytes), &Limits::REPRESENTABLE, "v").unwrap_err();
        assert!(
            matches!(
                err,
                Error::Truncated {
                    needed: 0xFFFF_FFFF,
                    available: 3,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn names_must_be_non_empty_utf8() {
        let err = Name::read(&mut Reader::new(&[0]), &Limits::DEFAULT, "n").unwrap_err();
        assert!(matches!(err, Error::FieldLengthOutOfRange { min: 1, .. }));
        let err = Name::read(&mut Reader::new(&[2, 0xC3, 0x28]), &Limits::DEFAULT, "n").unwrap_err();
        assert!(matches!(err, Error::InvalidUtf8 { .. }));
        assert_eq!(
            Name::read(&mut Reader::new(&[2, b'o', b'k']), &Limits::DEFAULT, "n"),
            Ok("ok")
        );
    }

    #[test]
    fn booleans_are_strict() {
        assert!(matches!(
            BoolF::read(&mut Reader::new(&[2]), &Limits::DEFAULT, "b"),
            Err(Error::InvalidValue { value: 2, .. })
        ));
    }

    #[test]
    fn seq_count_is_bounded_before_walking() {
        let limits = Limits {
            items_max: 3,
            ..Limits::DEFAULT
        };
        let bytes = 4u32.to_le_bytes();
        let err = SeqF::<Key<'_>>::read(&mut Reader::new(&bytes), &limits, "keys").unwrap_err();
        assert!(matches!(err, Error::FieldLengthOutOfRange { len: 4, max: 3, .. }));
    }

    #[test]
    fn writer_refuses_to_overflow() {
        let mut out = [0u8; 3];
        let mut w = Writer::new(&mut out);
        assert!(matches!(
            ValueF::write(&mut w, &&b"x"[..], "v"),
            Err(Error::BufferTooSmall {
                needed: 4,
                available: 3
            })
        ));
    }
}

/// A nested [`Body`] as a field (a Raft message's common header, say).
#[derive(Debug)]
pub struct BodyF<T>(core::marker::PhantomData<T>);

impl<'a, T: Body<'a>> Codec<'a> for BodyF<T> {
    type Value = T;
    fn read(r: &mut Reader<'a>, limits: &Limits, _: &'static str) -> Result<T> {
        T::decode(r, limits)
    }
    fn len(value: &T) -> usize {
        value.encoded_len()
    }
    fn write(w: &mut Writer<'_>, value: &T, _: &'static str) -> Result<()> {
        value.encode(w)
    }
}
