//! A crash at each step of writing a snapshot leaves the previous snapshot
//! or the new one, never a broken one. A crash is simulated by failing the
//! file-system call of that step (the call and everything after it never
//! happen), then opening the directory afresh.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use loomcache_log::{LogIo, SnapshotReader, Snapshots};

/// Fails every call from the `fail_at`-th on (counting from 0).
#[derive(Debug)]
struct CrashAt {
    calls: AtomicUsize,
    fail_at: usize,
}

impl CrashAt {
    fn step(&self) -> io::Result<()> {
        if self.calls.fetch_add(1, Ordering::SeqCst) >= self.fail_at {
            Err(io::Error::other("simulated crash"))
        } else {
            Ok(())
        }
    }
}

impl LogIo for CrashAt {
    fn write_all(&self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        self.step()?;
        io::Write::write_all(file, buf)
    }
    fn sync_file(&self, file: &File) -> io::Result<()> {
        self.step()?;
        file.sync_data()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        File::open(dir)?.sync_all()
    }
}

fn read_all(r: &SnapshotReader) -> Vec<u8> {
    let mut out = vec![0u8; r.meta().data_len as usize];
    let n = r.read_chunk(0, &mut out).unwrap();
    assert_eq!(n, out.len());
    out
}

fn write_snapshot(snaps: &Snapshots, index: u64, data: &[u8]) -> loomcache_log::Result<()> {
    let mut w = snaps.begin(index, 1, b"membership")?;
    for (i, chunk) in data.chunks(100).enumerate() {
        w.write((i * 100) as u64, chunk)?;
    }
    w.finish().map(|_| ())
}

#[test]
fn crash_at_each_step_leaves_old_or_new() {
    let old_data = vec![1u8; 250];
    let new_data = vec![2u8; 450];
    let mut outcomes = (0, 0);
    // Count the steps of a full write first.
    let counting = Arc::new(CrashAt {
        calls: AtomicUsize::new(0),
        fail_at: usize::MAX,
    });
    {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path(), counting.clone()).unwrap();
        write_snapshot(&snaps, 20, &new_data).unwrap();
    }
    let steps = counting.calls.load(Ordering::SeqCst);
    assert!(steps >= 6, "header, body chunks, sync, rename, directory sync");
    for fail_at in 0..=steps {
        let dir = tempfile::tempdir().unwrap();
        {
            let healthy = Snapshots::open(dir.path(), Arc::new(loomcache_log::OsIo)).unwrap();
            write_snapshot(&healthy, 10, &old_data).unwrap();
        }
        let crash = Arc::new(CrashAt {
            calls: AtomicUsize::new(0),
            fail_at,
        });
        let snaps = Snapshots::open(dir.path(), crash).unwrap();
        let result = write_snapshot(&snaps, 20, &new_data);
        assert_eq!(result.is_ok(), fail_at == steps, "step {fail_at}");
        // A sync that failed after the rename leaves the new name in place,
        // which a real crash may or may not have kept: both are allowed.
        let reopened = Snapshots::open(dir.path(), Arc::new(loomcache_log::OsIo)).unwrap();
        let latest = reopened.latest().unwrap().expect("a snapshot always survives");
        match latest.meta().index {
            10 => {
                assert_eq!(read_all(&latest), old_data, "step {fail_at}");
                outcomes.0 += 1;
            }
            20 => {
                assert_eq!(read_all(&latest), new_data, "step {fail_at}");
                outcomes.1 += 1;
            }
            other => panic!("step {fail_at}: unexpected snapshot {other}"),
        }
        // No temporary file survives a reopen.
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().ends_with(".tmp"))
            .count();
        assert_eq!(leftovers, 0, "step {fail_at}");
    }
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "both outcomes occur: {outcomes:?}");
}

#[test]
fn a_torn_final_file_falls_back_to_the_previous_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snaps = Snapshots::open(dir.path(), Arc::new(loomcache_log::OsIo)).unwrap();
    write_snapshot(&snaps, 10, &[1u8; 300]).unwrap();
    write_snapshot(&snaps, 20, &[2u8; 300]).unwrap();
    let newest = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().contains("00000000000000000020-"))
        .unwrap();
    let full = std::fs::read(&newest).unwrap();
    for cut in [0, 10, 63, 64, 100, full.len() - 1] {
        std::fs::write(&newest, &full[..cut]).unwrap();
        assert_eq!(snaps.latest().unwrap().unwrap().meta().index, 10, "cut at {cut}");
    }
}
