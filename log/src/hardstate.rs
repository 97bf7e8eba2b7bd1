//! The Raft hard state: term, vote and commit index, in a small file of two
//! slots written alternately.
//!
//! ```text
//! slot (64 bytes; slot k at offset 64 * k)
//! offset size field
//!      0    4 magic     b"LCHS"
//!      4    4 reserved  zero
//!      8    8 seq       increases by one per write; picks the newer slot
//!     16    8 term
//!     24    8 vote      0 = none
//!     32    8 commit
//!     40   20 reserved  zero
//!     60    4 crc32     CRC32 (IEEE) of bytes 0..60
//! ```
//! A write goes to the slot the previous write did not use and is synced
//! before `save` returns. A crash mid-write can tear only that slot; the
//! other still holds the previous state, so the file is never without a
//! valid state once one was saved.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{LogError, Result};
use crate::io::LogIo;

const SLOT_LEN: usize = 64;
const MAGIC: [u8; 4] = *b"LCHS";

/// Raft's persistent per-node state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Node voted for in `term`; 0 = none.
    pub vote: u64,
    /// Highest index known committed.
    pub commit: u64,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Slot {
    magic: [u8; 4],
    reserved0: [u8; 4],
    seq: U64,
    term: U64,
    vote: U64,
    commit: U64,
    reserved1: [u8; 20],
    crc: U32,
}

const _: () = assert!(size_of::<Slot>() == SLOT_LEN);

/// The hard-state file.
#[derive(Debug)]
pub struct HardStateFile {
    path: PathBuf,
    file: File,
    io: Arc<dyn LogIo>,
    seq: u64,
    state: HardState,
}

impl HardStateFile {
    /// Opens `dir/hardstate`, creating it (durably) if absent, and reads
    /// the newest valid slot. Both slots written and neither valid is
    /// corruption.
    pub fn open(dir: &Path, io: Arc<dyn LogIo>) -> Result<HardStateFile> {
        let path = dir.join("hardstate");
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LogError::io("open hard state", &path, e))?;
        if !existed {
            io.write_all(&mut file, &[0u8; 2 * SLOT_LEN])
                .map_err(|e| LogError::io("create hard state", &path, e))?;
            io.sync_file(&file)
                .map_err(|e| LogError::io("sync hard state", &path, e))?;
            io.sync_dir(dir).map_err(|e| LogError::io("sync directory", dir, e))?;
        }
        let mut raw = [0u8; 2 * SLOT_LEN];
        let n = file
            .read_at(&mut raw, 0)
            .map_err(|e| LogError::io("read hard state", &path, e))?;
        // A short file reads as zeros past its end: never-written slots.
        raw[n..].fill(0);
        let mut best: Option<(u64, HardState)> = None;
        let mut damaged = 0;
        for k in 0..2 {
            let bytes = &raw[k * SLOT_LEN..(k + 1) * SLOT_LEN];
            if bytes.iter().all(|&b| b == 0) {
                continue;
            }
            match decode_slot(bytes) {
                Some((seq, state)) if best.is_none_or(|(s, _)| seq > s) => best = Some((seq, state)),
                Some(_) => {}
                None => damaged += 1,
            }
        }
        // One damaged slot beside a never-written one is a first save torn
        // by a crash: it never returned, so the empty state is right.
        if best.is_none() && damaged == 2 {
            return Err(LogError::Corrupt {
                path,
                offset: 0,
                index: 0,
                reason: "no valid hard-state slot".into(),
            });
        }
        let (seq, state) = best.unwrap_or_default();
        Ok(HardStateFile {
            path,
            file,
            io,
            seq,
            state,
        })
    }

    /// The current state.
    pub fn state(&self) -> HardState {
        self.state
    }

    /// Writes `state` to the other slot and syncs it before returning.
    pub fn save(&mut self, state: HardState) -> Result<()> {
        self.write(state, true)
    }

    /// Writes `state` to the other slot without waiting for the disk: for
    /// changes that may be lost in a crash (a commit index, which is
    /// learned again). A later synced save, or the page cache, makes it
    /// durable; a torn slot fails its CRC and the other slot is read.
    pub fn save_unsynced(&mut self, state: HardState) -> Result<()> {
        self.write(state, false)
    }

    fn write(&mut self, state: HardState, sync: bool) -> Result<()> {
        let seq = self.seq + 1;
        let mut slot = Slot {
            magic: MAGIC,
            reserved0: [0; 4],
            seq: U64::new(seq),
            term: U64::new(state.term),
            vote: U64::new(state.vote),
            commit: U64::new(state.commit),
            reserved1: [0; 20],
            crc: U32::new(0),
        };
        slot.crc = U32::new(crc32fast::hash(&slot.as_bytes()[..SLOT_LEN - 4]));
        let offset = (seq % 2) * SLOT_LEN as u64;
        self.io
            .write_at(&self.file, slot.as_bytes(), offset)
            .map_err(|e| LogError::io("write hard state", &self.path, e))?;
        if sync {
            self.io
                .sync_file(&self.file)
                .map_err(|e| LogError::io("sync hard state", &self.path, e))?;
        }
        self.seq = seq;
        self.state = state;
        Ok(())
    }
}

fn decode_slot(bytes: &[u8]) -> Option<(u64, HardState)> {
    let (slot, _) = Slot::read_from_prefix(bytes).ok()?;
    if slot.magic != MAGIC || crc32fast::hash(&bytes[..SLOT_LEN - 4]) != slot.crc.get() {
        return None;
    }
    Some((
        slot.seq.get(),
        HardState {
            term: slot.term.get(),
            vote: slot.vote.get(),
            commit: slot.commit.get(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::OsIo;

    fn open(dir: &Path) -> HardStateFile {
        HardStateFile::open(dir, Arc::new(OsIo)).unwrap()
    }

    /// Counts file syncs.
    #[derive(Debug, Default)]
    struct CountingIo(std::sync::atomic::AtomicUsize);

    impl crate::io::LogIo for CountingIo {
        fn sync_file(&self, file: &File) -> std::io::Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            file.sync_data()
        }
    }

    /// An unsynced save skips the sync and still reads back (from the page
    /// cache, as after a process restart); a synced save syncs.
    #[test]
    fn unsynced_saves_skip_the_sync_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(CountingIo::default());
        let mut hs = HardStateFile::open(dir.path(), io.clone()).unwrap();
        let syncs = || io.0.load(std::sync::atomic::Ordering::SeqCst);
        let before = syncs();
        hs.save(HardState {
            term: 2,
            vote: 1,
            commit: 5,
        })
        .unwrap();
        assert_eq!(syncs(), before + 1);
        hs.save_unsynced(HardState {
            term: 2,
            vote: 1,
            commit: 9,
        })
        .unwrap();
        assert_eq!(syncs(), before + 1, "no sync for an unsynced save");
        drop(hs);
        assert_eq!(
            open(dir.path()).state(),
            HardState {
                term: 2,
                vote: 1,
                commit: 9
            }
        );
    }

    #[test]
    fn starts_empty_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut hs = open(dir.path());
        assert_eq!(hs.state(), HardState::default());
        for t in 1..=5 {
            hs.save(HardState {
                term: t,
                vote: t % 3,
                commit: t * 10,
            })
            .unwrap();
        }
        drop(hs);
        assert_eq!(
            open(dir.path()).state(),
            HardState {
                term: 5,
                vote: 2,
                commit: 50
            }
        );
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let mut hs = open(dir.path());
        hs.save(HardState {
            term: 1,
            vote: 1,
            commit: 1,
        })
        .unwrap();
        hs.save(HardState {
            term: 2,
            vote: 2,
            commit: 2,
        })
        .unwrap();
        drop(hs);
        // The newest write (seq 2) went to slot 0; tear it at every byte.
        let path = dir.path().join("hardstate");
        let good = std::fs::read(&path).unwrap();
        for cut in 0..SLOT_LEN {
            let mut torn = good.clone();
            torn[cut..SLOT_LEN].fill(0xA5);
            std::fs::write(&path, &torn).unwrap();
            assert_eq!(
                open(dir.path()).state(),
                HardState {
                    term: 1,
                    vote: 1,
                    commit: 1
                },
                "tear at {cut}"
            );
        }
    }

    #[test]
    fn both_slots_damaged_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut hs = open(dir.path());
        hs.save(HardState {
            term: 1,
            vote: 1,
            commit: 1,
        })
        .unwrap();
        hs.save(HardState {
            term: 2,
            vote: 2,
            commit: 2,
        })
        .unwrap();
        drop(hs);
        let path = dir.path().join("hardstate");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        bytes[SLOT_LEN + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            HardStateFile::open(dir.path(), Arc::new(OsIo)),
            Err(LogError::Corrupt { .. })
        ));
    }
}
