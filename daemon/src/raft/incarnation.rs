//! The incarnation of a member's data directory: a random nonzero number
//! written once, when the directory is first used, and read at every start.
//!
//! The group records each member's incarnation (`CLUSTER_RECORD_MEMBER`,
//! see [`super::members`]); peers compare it on every connection. A member
//! whose directory was wiped or replaced comes back with a new number, and
//! its peers refuse it: it no longer holds the votes it cast nor the
//! entries it acknowledged, so letting it vote or count toward a quorum
//! could elect two leaders in one term or lose committed writes.
//!
//! File `incarnation`: `LCIN`, the number as `u64` LE, and a CRC-32 of
//! those 12 bytes as `u32` LE (16 bytes). It is written to a temporary
//! file, synced, renamed into place, and the directory synced, before the
//! group's storage is opened.

use std::collections::hash_map::RandomState;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The file's name inside the group's directory.
pub const FILE: &str = "incarnation";
const TEMP: &str = "incarnation.tmp";
const MAGIC: &[u8; 4] = b"LCIN";
const LEN: usize = 16;

/// Why the incarnation could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IncarnationError {
    /// Reading, writing or syncing failed.
    #[error("incarnation file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: io::Error,
    },
    /// The file exists but is not a valid incarnation.
    #[error("incarnation file {path} is damaged ({why})")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// Encodes `value` as the file holds it.
pub fn encode(value: u64) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4..12].copy_from_slice(&value.to_le_bytes());
    let crc = crc32fast::hash(&out[..12]);
    out[12..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the file's bytes.
pub fn decode(bytes: &[u8]) -> Result<u64, &'static str> {
    let bytes: &[u8; LEN] = bytes.try_into().map_err(|_| "wrong length")?;
    if &bytes[..4] != MAGIC {
        return Err("wrong marker");
    }
    let crc = u32::from_le_bytes(bytes[12..].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&bytes[..12]) {
        return Err("checksum mismatch");
    }
    match u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes")) {
        0 => Err("zero"),
        value => Ok(value),
    }
}

/// A fresh random nonzero incarnation.
fn fresh() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.write_u64(fastrand::u64(..));
    h.finish().max(1)
}

/// The directory's incarnation: read from its file, or, when there is
/// none, a fresh one written durably first (a new directory, or one used
/// before incarnations were kept). A damaged file is an error: the member
/// must not guess.
pub fn load_or_create(dir: &Path) -> Result<u64, IncarnationError> {
    let path = dir.join(FILE);
    let io_err = |source| IncarnationError::Io {
        path: path.display().to_string(),
        source,
    };
    match fs::read(&path) {
        Ok(bytes) => {
            return decode(&bytes).map_err(|why| IncarnationError::Damaged {
                path: path.display().to_string(),
                why,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    fs::create_dir_all(dir).map_err(io_err)?;
    let value = fresh();
    let temp = dir.join(TEMP);
    let mut file = File::create(&temp).map_err(io_err)?;
    file.write_all(&encode(value)).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    fs::rename(&temp, &path).map_err(io_err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_incarnation_and_a_new_one_gets_another() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("node-1");
        let first = load_or_create(&dir).unwrap();
        assert_ne!(first, 0);
        assert_eq!(load_or_create(&dir).unwrap(), first, "read back at the next start");
        assert!(!dir.join(TEMP).exists());
        fs::remove_dir_all(&dir).unwrap();
        let second = load_or_create(&dir).unwrap();
        assert_ne!(second, first, "a wiped directory is a new incarnation");
    }

    #[test]
    fn a_damaged_incarnation_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let good = encode(0x1234);
        assert_eq!(decode(&good), Ok(0x1234));
        for i in 0..LEN {
            for bit in 0..8 {
                let mut bad = good;
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "byte {i} bit {bit}");
            }
        }
        assert_eq!(decode(&good[..15]), Err("wrong length"));
        assert_eq!(decode(&encode(0)), Err("zero"));
        fs::write(root.path().join(FILE), &good[..8]).unwrap();
        match load_or_create(root.path()) {
            Err(IncarnationError::Damaged { why, .. }) => assert_eq!(why, "wrong length"),
            other => panic!("{other:?}"),
        }
    }
}
