//! One `MAP_PUT` request (map `users`, a 16-byte key, a 256-byte value, no
//! TTL) in the three encodings the wire suite compares.
//!
//! The RESP form is `SET key value`: Redis has one keyspace per database, so
//! it carries no map name and, with no TTL, no expiry argument. It is 24
//! bytes shorter than the LoomCache frame, whose header also carries a
//! request id and a checksum.

use loomcache_wire::{encode_frame, HeaderFields, MapWrite, Opcode, Payload};

use crate::bincode_baseline::{self, PutRequest};
use crate::resp;

/// Map name.
pub const MAP_NAME: &str = "users";
/// Key length in bytes.
pub const KEY_LEN_BYTES: usize = 16;
/// Value length in bytes.
pub const VALUE_LEN_BYTES: usize = 256;
/// Time to live in milliseconds; 0 = none.
pub const TTL_MS: u64 = 0;
/// Request id of the LoomCache frame.
pub const REQUEST_ID: u64 = 1;
/// Size of a fixed encode buffer that holds the LoomCache frame.
pub const FRAME_BUF_BYTES: usize = 512;

/// The request's content and its three encodings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapPutFixture {
    /// Key bytes.
    pub key: Vec<u8>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// The owned serde form.
    pub put_request: PutRequest,
    /// A sealed LoomCache `MAP_PUT` frame, header included.
    pub loomcache: Vec<u8>,
    /// RESP `SET key value`.
    pub resp: Vec<u8>,
    /// bincode encoding of [`MapPutFixture::put_request`].
    pub bincode: Vec<u8>,
}

impl MapPutFixture {
    /// Builds the request and encodes it three ways.
    pub fn new() -> MapPutFixture {
        let key: Vec<u8> = (0..KEY_LEN_BYTES).map(|i| (i as u8) ^ 0x5a).collect();
        let value: Vec<u8> = (0..VALUE_LEN_BYTES).map(|i| (i * 7 + 3) as u8).collect();
        let put_request = PutRequest {
            name: MAP_NAME.to_owned(),
            key: key.clone(),
            value: value.clone(),
            ttl_ms: TTL_MS,
        };
        let mut fixture = MapPutFixture {
            key,
            value,
            put_request,
            loomcache: Vec::new(),
            resp: Vec::new(),
            bincode: Vec::new(),
        };

        let mut frame = vec![0u8; FRAME_BUF_BYTES];
        let len = encode_frame(&mut frame, &Self::header_fields(), None, &fixture.payload())
            .expect("a MAP_PUT of this size fits the encode buffer");
        frame.truncate(len);
        fixture.loomcache = frame;

        let mut resp = Vec::new();
        resp::encode_command(&fixture.resp_args(), &mut resp);
        fixture.resp = resp;
        bincode_baseline::encode(&fixture.put_request, &mut fixture.bincode).expect("encoding into a Vec cannot fail");
        fixture
    }

    /// Header fields of the LoomCache frame.
    pub fn header_fields() -> HeaderFields {
        HeaderFields::request(Opcode::MapPut, REQUEST_ID)
    }

    /// The borrowed LoomCache body.
    pub fn map_write(&self) -> MapWrite<'_> {
        MapWrite {
            ttl_ms: TTL_MS,
            name: MAP_NAME,
            key: &self.key,
            value: &self.value,
        }
    }

    /// The LoomCache payload to encode.
    pub fn payload(&self) -> Payload<'_> {
        Payload::MapPut(self.map_write())
    }

    /// The RESP arguments: `SET key value`.
    pub fn resp_args(&self) -> [&[u8]; 3] {
        [b"SET", &self.key, &self.value]
    }
}

impl Default for MapPutFixture {
    fn default() -> Self {
        MapPutFixture::new()
    }
}

#[cfg(test)]
mod tests {
    use loomcache_wire::{parse_frame, Limits, Parsed};

    use super::*;
    use crate::resp::RespLimits;

    #[test]
    fn all_three_encodings_carry_the_same_request() {
        let f = MapPutFixture::new();

        let Ok(Parsed::Frame(frame)) = parse_frame(&f.loomcache, &Limits::DEFAULT) else {
            panic!("fixture frame does not parse");
        };
        assert_eq!(frame.bytes().len(), f.loomcache.len());
        assert_eq!(frame.request_id(), REQUEST_ID);
        assert_eq!(frame.decode(&Limits::DEFAULT).unwrap(), f.payload());

        let Ok(resp::Parsed::Command(cmd)) = resp::parse_command(&f.resp, &RespLimits::DEFAULT) else {
            panic!("fixture RESP command does not parse");
        };
        assert_eq!(cmd.consumed, f.resp.len());
        assert_eq!(cmd.args, f.resp_args());

        assert_eq!(bincode_baseline::decode(&f.bincode).unwrap(), f.put_request);
    }

    #[test]
    fn sizes() {
        let f = MapPutFixture::new();
        // Header, ttl, name, key and value with their length prefixes.
        assert_eq!(f.loomcache.len(), 32 + 8 + (1 + 5) + (2 + 16) + (4 + 256));
        // `*3`, `$3 SET`, `$16 key`, `$256 value`, each line CRLF-terminated.
        assert_eq!(f.resp.len(), 4 + (4 + 5) + (5 + 18) + (6 + 258));
        assert_eq!(f.bincode.len(), (8 + 5) + (8 + 16) + (8 + 256) + 8);
        assert!(f.loomcache.len() <= FRAME_BUF_BYTES);
    }
}
