//! The consensus [`Storage`] over the durable log: entries in the segmented
//! log (`<dir>/log/`), hard state in its two-slot file (`<dir>/hardstate`),
//! snapshots in `<dir>/snap/` with the membership stored as their metadata.
//! The core only reads through the trait; the Raft driver persists each
//! Ready through the methods here before it calls `advance`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use loomcache_consensus::{
    ConfState, Entry, EntryKind, HardState, Index, Snapshot, SnapshotMeta, Storage, StorageError, Term,
};
use loomcache_log::{
    HardState as LogHardState, HardStateFile, Log, LogConfig, LogError, Record, RecordKind, SnapshotWriter, Snapshots,
};

/// Why the stored state cannot be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftStorageError {
    /// The log, hard state or snapshot files failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The group's directory cannot be created.
    #[error("cannot create {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The stored pieces contradict each other; the node must not start.
    #[error("stored Raft state in {dir} is inconsistent: {reason}")]
    Inconsistent {
        /// The group's directory.
        dir: PathBuf,
        /// What contradicts what.
        reason: String,
    },
}

/// The durable state of one Raft group on this node.
#[derive(Debug)]
pub struct LogStorage {
    dir: PathBuf,
    log: Log,
    hard_state: HardStateFile,
    snapshots: Snapshots,
    /// The latest snapshot, held in memory so followers can be sent chunks
    /// of it without reading the file per chunk.
    snapshot: Snapshot,
}

fn record_kind(kind: EntryKind) -> RecordKind {
    match kind {
        EntryKind::Normal => RecordKind::Normal,
        EntryKind::ConfChange => RecordKind::ConfChange,
        EntryKind::Noop => RecordKind::Noop,
    }
}

fn entry_kind(kind: RecordKind) -> EntryKind {
    match kind {
        RecordKind::Normal => EntryKind::Normal,
        RecordKind::ConfChange => EntryKind::ConfChange,
        RecordKind::Noop => EntryKind::Noop,
    }
}

fn failed(e: LogError) -> StorageError {
    StorageError::Failed(e.to_string())
}

impl LogStorage {
    /// Opens (creating if absent) the group's state in `dir`. A group with
    /// no snapshot starts from `initial_conf`.
    pub fn open(dir: &Path, config: LogConfig, initial_conf: ConfState) -> Result<LogStorage, RaftStorageError> {
        let inconsistent = |reason: String| RaftStorageError::Inconsistent {
            dir: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|source| RaftStorageError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let io = Arc::clone(&config.io);
        let snapshots = Snapshots::open(&dir.join("snap"), Arc::clone(&io))?;
        let snapshot = match snapshots.latest()? {
            Some(reader) => {
                let meta = reader.meta();
                let conf = ConfState::decode(&reader.read_meta()?)
                    .ok_or_else(|| inconsistent(format!("snapshot {} holds undecodable membership", meta.index)))?;
                let len = usize::try_from(meta.data_len)
                    .map_err(|_| inconsistent(format!("snapshot {} is too large", meta.index)))?;
                let mut data = vec![0u8; len];
                let mut offset = 0;
                while offset < len {
                    let n = reader.read_chunk(offset as u64, &mut data[offset..])?;
                    if n == 0 {
                        return Err(inconsistent(format!("snapshot {} ends early", meta.index)));
                    }
                    offset += n;
                }
                Snapshot {
                    meta: SnapshotMeta {
                        index: meta.index,
                        term: meta.term,
                        conf,
                    },
                    data: Arc::from(data),
                }
            }
            None => Snapshot {
                meta: SnapshotMeta {
                    index: 0,
                    term: 0,
                    conf: initial_conf,
                },
                data: Arc::from(&[][..]),
            },
        };
        let log = Log::open_after(&dir.join("log"), config, snapshot.meta.index)?;
        let hard_state = HardStateFile::open(dir, io)?;
        let storage = LogStorage {
            dir: dir.to_path_buf(),
            log,
            hard_state,
            snapshots,
            snapshot,
        };
        let snap = storage.snapshot.meta.index;
        if storage.log.first_index() > snap + 1 {
            return Err(inconsistent(format!(
                "the log starts at {} but the snapshot ends at {snap}",
                storage.log.first_index()
            )));
        }
        let commit = storage.hard_state.state().commit;
        if commit > storage.last_index() {
            return Err(inconsistent(format!(
                "hard state commit {commit} is past the last entry {}",
                storage.last_index()
            )));
        }
        Ok(storage)
    }

    /// The group's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log, for waiting on durability.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Appends entries, replacing any held from the first one's index on,
    /// and answers the last index. Durability follows through
    /// [`Log::wait_durable`] (group commit).
    pub fn append(&mut self, entries: &[Entry]) -> Result<Index, RaftStorageError> {
        let Some(first) = entries.first() else {
            return Ok(self.last_index());
        };
        if first.index <= self.snapshot.meta.index {
            return Err(RaftStorageError::Inconsistent {
                dir: self.dir.clone(),
                reason: format!(
                    "append at {} would rewrite snapshot at {}",
                    first.index, self.snapshot.meta.index
                ),
            });
        }
        if first.index <= self.log.last_index() {
            self.log.truncate_after(first.index - 1)?;
        }
        let records: Vec<Record<'_>> = entries
            .iter()
            .map(|e| Record {
                kind: record_kind(e.kind),
                term: e.term,
                index: e.index,
                timestamp_ms: e.timestamp_ms,
                payload: &e.data,
            })
            .collect();
        Ok(self.log.append(&records)?.last)
    }

    /// Persists the hard state: synced before this returns when the term
    /// or the vote changed, written without waiting when only the commit
    /// index moved.
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), RaftStorageError> {
        let state = LogHardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        };
        let stored = self.hard_state.state();
        if state == stored {
            return Ok(());
        }
        if state.term == stored.term && state.vote == stored.vote {
            // Only the commit index moved. It need not survive a crash (a
            // restarted member learns it again from the leader), and it
            // names only entries already durable, so it is written without
            // waiting for the disk: a synced write here would add a flush
            // to every commit.
            self.hard_state.save_unsynced(state)?;
        } else {
            // Term and vote must be durable before any message relies on
            // them (votes leave after this returns).
            self.hard_state.save(state)?;
        }
        Ok(())
    }

    /// Opens the file of a snapshot described by `meta`.
    fn pending(&self, meta: SnapshotMeta) -> Result<PendingSnapshot, RaftStorageError> {
        let writer = self.snapshots.begin(meta.index, meta.term, &meta.conf.encode())?;
        Ok(PendingSnapshot { meta, writer })
    }

    /// Installs a snapshot received from the leader: written durably, then
    /// the log is compacted through it.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), RaftStorageError> {
        if snapshot.meta.index <= self.snapshot.meta.index {
            return Ok(());
        }
        let written = self.pending(snapshot.meta)?.write(snapshot.data)?;
        self.install_written_snapshot(written)
    }

    /// Records a snapshot of the state machine taken at `index` (applied
    /// here), then compacts the log through it.
    pub fn create_snapshot(&mut self, index: Index, conf: ConfState, data: Arc<[u8]>) -> Result<(), RaftStorageError> {
        match self.begin_snapshot(index, conf)? {
            Some(pending) => {
                let snapshot = pending.write(data)?;
                self.install_written_snapshot(snapshot)
            }
            None => Ok(()),
        }
    }

    /// Starts a snapshot of the state machine taken at `index` (applied
    /// here), to be written by [`PendingSnapshot::write`] on any thread and
    /// then installed with [`LogStorage::install_written_snapshot`]. `None`
    /// if a snapshot at or past `index` is held already.
    pub fn begin_snapshot(&self, index: Index, conf: ConfState) -> Result<Option<PendingSnapshot>, RaftStorageError> {
        if index <= self.snapshot.meta.index {
            return Ok(None);
        }
        let term = self.term(index).map_err(|e| RaftStorageError::Inconsistent {
            dir: self.dir.clone(),
            reason: format!("snapshot at {index}: {e}"),
        })?;
        self.pending(SnapshotMeta { index, term, conf }).map(Some)
    }

    /// Makes a snapshot written by [`PendingSnapshot::write`] the one held,
    /// and compacts the log through it; nothing if a snapshot at or past
    /// its index is held already (one received from the leader meanwhile).
    pub fn install_written_snapshot(&mut self, snapshot: Snapshot) -> Result<(), RaftStorageError> {
        if snapshot.meta.index <= self.snapshot.meta.index {
            // Its file went into place after the newer one's install
            // cleared the older ones.
            self.snapshots.remove_older_than(self.snapshot.meta.index)?;
            return Ok(());
        }
        self.log.compact_through(snapshot.meta.index)?;
        self.snapshots.remove_older_than(snapshot.meta.index)?;
        self.snapshot = snapshot;
        Ok(())
    }

    /// Index of the newest snapshot held (0: none yet).
    pub fn snapshot_index(&self) -> Index {
        self.snapshot.meta.index
    }

    /// Stops the log's flush thread after a final flush.
    pub fn close(&self) -> Result<(), RaftStorageError> {
        Ok(self.log.close()?)
    }
}

/// A snapshot begun by [`LogStorage::begin_snapshot`]: its file is open,
/// nothing is durable yet, and dropping it removes the file.
#[derive(Debug)]
pub struct PendingSnapshot {
    meta: SnapshotMeta,
    writer: SnapshotWriter,
}

impl PendingSnapshot {
    /// The index the snapshot is taken at.
    pub fn index(&self) -> Index {
        self.meta.index
    }

    /// Writes the state machine's bytes and makes the file durable (synced,
    /// renamed into place, directory synced); answers the snapshot to
    /// install.
    pub fn write(mut self, data: Arc<[u8]>) -> Result<Snapshot, RaftStorageError> {
        self.writer.write(0, &data)?;
        self.writer.finish()?;
        Ok(Snapshot { meta: self.meta, data })
    }
}

impl Storage for LogStorage {
    fn initial_state(&self) -> (HardState, ConfState) {
        let hs = self.hard_state.state();
        (
            HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit.max(self.snapshot.meta.index),
            },
            self.snapshot.meta.conf.clone(),
        )
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let first = self.first_index();
        if lo < first {
            return Err(StorageError::Compacted { index: lo, first });
        }
        let last = self.last_index();
        if hi > last + 1 {
            return Err(StorageError::Unavailable { index: hi - 1, last });
        }
        if lo >= hi {
            return Ok(Vec::new());
        }
        let guard = loomcache_log::pin();
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let records = self.log.entries(lo, hi - 1, max, &guard).map_err(failed)?;
        Ok(records
            .into_iter()
            .map(|r| Entry {
                term: r.term,
                index: r.index,
                kind: entry_kind(r.kind),
                timestamp_ms: r.timestamp_ms,
                data: Arc::from(r.payload),
            })
            .collect())
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let snap = self.snapshot.meta.index;
        if index == snap {
            return Ok(self.snapshot.meta.term);
        }
        if index < snap {
            return Err(StorageError::Compacted { index, first: snap + 1 });
        }
        let last = self.last_index();
        if index > last {
            return Err(StorageError::Unavailable { index, last });
        }
        self.log.term(index).map_err(failed)
    }

    fn first_index(&self) -> Index {
        self.snapshot.meta.index + 1
    }

    fn last_index(&self) -> Index {
        self.log.last_index().max(self.snapshot.meta.index)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loomcache_consensus::{Config, Raft, Role};

    fn entry(index: Index, term: Term, data: &[u8]) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Normal,
            timestamp_ms: 7,
            data: Arc::from(data),
        }
    }

    fn open(dir: &Path) -> LogStorage {
        let config = LogConfig {
            segment_bytes: 64 << 10,
            ..LogConfig::default()
        };
        LogStorage::open(dir, config, ConfState::with_voters([1])).unwrap()
    }

    /// Counts file syncs (the hard state's; segments flush mappings).
    #[derive(Debug, Default)]
    struct CountingIo(std::sync::atomic::AtomicUsize);

    impl loomcache_log::LogIo for CountingIo {
        fn sync_file(&self, file: &std::fs::File) -> std::io::Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            file.sync_data()
        }
    }

    /// A new term or vote is synced before `set_hard_state` returns; a
    /// commit index alone is written without a sync.
    #[test]
    fn only_term_and_vote_changes_wait_for_the_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let io = Arc::new(CountingIo::default());
        let config = LogConfig {
            segment_bytes: 64 << 10,
            io: io.clone(),
            ..LogConfig::default()
        };
        let mut s = LogStorage::open(tmp.path(), config, ConfState::with_voters([1])).unwrap();
        let syncs = || io.0.load(std::sync::atomic::Ordering::SeqCst);
        let hs = |term, vote, commit| HardState { term, vote, commit };
        let before = syncs();
        s.set_hard_state(hs(1, 1, 0)).unwrap();
        assert_eq!(syncs(), before + 1, "a new term and vote are synced");
        s.append(&[entry(1, 1, b"a")]).unwrap();
        let before = syncs();
        s.set_hard_state(hs(1, 1, 1)).unwrap();
        assert_eq!(syncs(), before, "a commit index alone is not synced");
        s.set_hard_state(hs(2, 0, 1)).unwrap();
        assert_eq!(syncs(), before + 1, "a new term is synced");
    }

    #[test]
    fn entries_hard_state_and_snapshots_survive_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut s = open(tmp.path());
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            // A conflicting suffix is replaced.
            let last = s.append(&[entry(3, 2, b"C"), entry(4, 2, b"d")]).unwrap();
            s.log().wait_durable(last).unwrap();
            s.set_hard_state(HardState {
                term: 2,
                vote: 1,
                commit: 4,
            })
            .unwrap();
            s.create_snapshot(2, ConfState::with_voters([1, 2]), Arc::from(&b"state@2"[..]))
                .unwrap();
            s.close().unwrap();
        }
        let s = open(tmp.path());
        let (hs, conf) = s.initial_state();
        assert_eq!((hs.term, hs.vote, hs.commit), (2, 1, 4));
        assert_eq!(conf.voters, vec![1, 2], "membership comes from the snapshot");
        assert_eq!(s.first_index(), 3);
        assert_eq!(s.last_index(), 4);
        assert_eq!(s.term(2), Ok(1));
        assert_eq!(s.term(3), Ok(2));
        let got = s.entries(3, 5, u64::MAX).unwrap();
        assert_eq!(got.iter().map(|e| &e.data[..]).collect::<Vec<_>>(), [&b"C"[..], b"d"]);
        assert_eq!(got[0].timestamp_ms, 7);
        assert!(matches!(s.entries(2, 5, u64::MAX), Err(StorageError::Compacted { .. })));
        assert!(matches!(s.term(5), Err(StorageError::Unavailable { .. })));
        assert_eq!(&s.snapshot().unwrap().data[..], b"state@2");
    }

    #[test]
    fn a_received_snapshot_replaces_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut s = open(tmp.path());
            s.append(&[entry(1, 1, b"a")]).unwrap();
            let snap = Snapshot {
                meta: SnapshotMeta {
                    index: 10,
                    term: 3,
                    conf: ConfState::with_voters([1, 2, 3]),
                },
                data: Arc::from(&b"leader state"[..]),
            };
            s.apply_snapshot(snap).unwrap();
            assert_eq!((s.first_index(), s.last_index()), (11, 10));
            s.append(&[entry(11, 3, b"next")]).unwrap();
            s.close().unwrap();
        }
        let s = open(tmp.path());
        assert_eq!((s.first_index(), s.last_index()), (11, 11));
        assert_eq!(s.term(10), Ok(3));
        assert_eq!(&s.entries(11, 12, 0).unwrap()[0].data[..], b"next");
    }

    /// A snapshot begun here and written on another thread compacts the
    /// log only once installed; one superseded meanwhile by a snapshot
    /// from the leader is not installed, and the newer one survives a
    /// restart.
    #[test]
    fn a_snapshot_written_elsewhere_compacts_only_once_installed() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut s = open(tmp.path());
            let last = s
                .append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            s.log().wait_durable(last).unwrap();
            let pending = s
                .begin_snapshot(2, ConfState::with_voters([1]))
                .unwrap()
                .expect("newer");
            assert_eq!(pending.index(), 2);
            let written = std::thread::spawn(move || pending.write(Arc::from(&b"state@2"[..])))
                .join()
                .unwrap()
                .unwrap();
            assert_eq!(s.first_index(), 1, "nothing compacted before the install");
            s.install_written_snapshot(written).unwrap();
            assert_eq!((s.first_index(), s.snapshot_index()), (3, 2));
            assert!(s.begin_snapshot(2, ConfState::with_voters([1])).unwrap().is_none());

            let pending = s
                .begin_snapshot(3, ConfState::with_voters([1]))
                .unwrap()
                .expect("newer");
            let received = Snapshot {
                meta: SnapshotMeta {
                    index: 9,
                    term: 2,
                    conf: ConfState::with_voters([1]),
                },
                data: Arc::from(&b"state@9"[..]),
            };
            s.apply_snapshot(received).unwrap();
            // The older one may or may not finish writing; either way it
            // is not installed.
            if let Ok(older) = pending.write(Arc::from(&b"state@3"[..])) {
                s.install_written_snapshot(older).unwrap();
            }
            assert_eq!(s.snapshot_index(), 9);
            s.close().unwrap();
        }
        let s = open(tmp.path());
        assert_eq!(s.snapshot_index(), 9);
        assert_eq!(&s.snapshot().unwrap().data[..], b"state@9");
    }

    /// A group of one over the durable log: what it committed before a
    /// restart is committed after it.
    #[test]
    fn a_single_node_group_recovers_its_log() {
        let tmp = tempfile::tempdir().unwrap();
        let persist = |raft: &mut Raft<LogStorage>| {
            while raft.has_ready() {
                let rd = raft.ready();
                let s = raft.storage_mut();
                let last = s.append(&rd.entries).unwrap();
                s.log().wait_durable(last).unwrap();
                if let Some(hs) = rd.hard_state {
                    s.set_hard_state(hs).unwrap();
                }
                raft.advance();
            }
        };
        let committed = {
            let mut raft = Raft::new(Config::new(1, 0), open(tmp.path())).unwrap();
            raft.campaign();
            persist(&mut raft);
            assert_eq!(raft.role(), Role::Leader);
            for i in 0..20u8 {
                raft.propose(Arc::from(&[i][..]), 0).unwrap();
                persist(&mut raft);
            }
            raft.storage().close().unwrap();
            raft.committed()
        };
        assert_eq!(committed, 21, "the term's first entry and 20 proposals");
        let raft = Raft::new(Config::new(1, 0), open(tmp.path())).unwrap();
        assert_eq!(raft.committed(), committed);
        assert_eq!(raft.last_index(), committed);
    }

    #[test]
    fn a_commit_past_the_log_refuses_to_start() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut s = open(tmp.path());
            s.set_hard_state(HardState {
                term: 1,
                vote: 1,
                commit: 5,
            })
            .unwrap();
            s.close().unwrap();
        }
        let config = LogConfig::default();
        let err = LogStorage::open(tmp.path(), config, ConfState::with_voters([1])).unwrap_err();
        assert!(err.to_string().contains("past the last entry"), "{err}");
    }
}
