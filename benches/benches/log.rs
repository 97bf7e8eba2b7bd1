//! Durable-log throughput beside the raw limits of the same disk, measured
//! in one run:
//!
//! - one fsync per record: a write + fdatasync loop of the record size,
//!   into a zero-filled file like the log's prepared segments;
//! - the ceiling of group commit: the same loop writing as many records
//!   per call as there are appenders (each appender has one record
//!   outstanding, so no flush can cover more);
//! - for the most appenders, the same loop writing onward into space that
//!   fallocate only reserved (1 GiB), as a growing log does, and split over
//!   two threads with half the records each (two flushes in flight);
//! - sequential write bandwidth: large writes, one fdatasync at the end;
//! - the log in sync mode with 1, 8 and 64 appenders, each appending one
//!   record and waiting until it is durable, so group commit is what lets
//!   throughput grow with appenders: each on its own thread, all served
//!   by one thread with an append call each, and with each round's records
//!   appended in one call;
//! - recovery: opening a log of many segments (every record's CRC checked)
//!   beside a plain sequential read of the same files.
//!
//! Run with `cargo bench -p loomcache-benches --bench log`. The directory is
//! `target/bench-log` on the repository's disk unless `LOOMCACHE_BENCH_DIR`
//! names another; `LOOMCACHE_BENCH_SECONDS` sets each measurement's length
//! (default 3). To run a part: `LOOMCACHE_BENCH_SIZES` and
//! `LOOMCACHE_BENCH_APPENDERS` (space-separated lists; default "100 1024"
//! and "1 8 64"), `LOOMCACHE_BENCH_RECOVERY=0` skips recovery.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loomcache_log::{Log, LogConfig, PersistMode, RecordKind};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_dir() -> PathBuf {
    let dir =
        std::env::var_os("LOOMCACHE_BENCH_DIR").map_or_else(|| PathBuf::from("../target/bench-log"), PathBuf::from);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench directory");
    dir
}

/// A space-separated list of numbers from the environment, or `default`.
fn list(var: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(var) {
        Ok(s) => s
            .split_whitespace()
            .map(|w| w.parse().unwrap_or_else(|_| panic!("{var}: not a number: {w}")))
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn seconds() -> Duration {
    let s = std::env::var("LOOMCACHE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

/// An empty file at `path`, replacing any earlier one.
fn fresh_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Records per second of a loop that writes `per_call` records of `size`
/// bytes with one write and makes them durable with one fdatasync, into a
/// zero-filled, flushed file (what the log's prepared segments are). With
/// one record per call this is the "one fsync per record" peer; with N,
/// the most any group commit of N appenders with one record outstanding
/// each can do on this disk in one flush at a time. With `lanes` > 1, that
/// many threads run the loop at once, each in its own part of the file:
/// whether overlapping flushes of smaller batches get more through.
fn fsync_per_call(dir: &Path, size: usize, per_call: usize, lanes: usize, run: Duration) -> f64 {
    const FILE: usize = 64 << 20;
    let path = dir.join(format!("raw-fsync-{size}-{per_call}-{lanes}"));
    let file = fresh_file(&path);
    file.write_all_at(&vec![0u8; FILE], 0).unwrap();
    file.sync_all().unwrap();
    let buf = vec![0xA5u8; size * per_call];
    let lane_len = FILE / lanes;
    assert!(
        buf.len() <= lane_len,
        "{} bytes per call do not fit a lane of {lane_len}",
        buf.len()
    );
    let wrap = (lane_len / buf.len() * buf.len()) as u64;
    let start = Instant::now();
    let n: u64 = std::thread::scope(|s| {
        let lanes: Vec<_> = (0..lanes)
            .map(|lane| {
                let (file, buf) = (&file, &buf);
                s.spawn(move || {
                    let base = (lane * lane_len) as u64;
                    let (mut n, mut offset) = (0u64, 0u64);
                    while start.elapsed() < run {
                        file.write_all_at(buf, base + offset).unwrap();
                        file.sync_data().unwrap();
                        offset = (offset + buf.len() as u64) % wrap;
                        n += per_call as u64;
                    }
                    n
                })
            })
            .collect();
        lanes.into_iter().map(|t| t.join().unwrap()).sum()
    });
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);
    rate
}

/// [`fsync_per_call`] on one thread, but ever onward into space that
/// fallocate only reserved, as a log that grows writes: the first write
/// to each block converts its extent, which the next fdatasync must
/// commit to the journal. (A log that zero-fills its files ahead, as this
/// one does, avoids that but writes every byte twice; the rewritten
/// zero-filled region of [`fsync_per_call`] pays neither.) The space is
/// 1 GiB; a run that fills it ends early, its rate taken over the time it
/// ran.
fn fsync_per_call_growing(dir: &Path, size: usize, per_call: usize, run: Duration) -> f64 {
    const FILE: u64 = 1 << 30;
    let path = dir.join(format!("raw-fsync-growing-{size}-{per_call}"));
    let file = fresh_file(&path);
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, FILE).unwrap();
    file.sync_all().unwrap();
    let buf = vec![0xA5u8; size * per_call];
    let start = Instant::now();
    let (mut n, mut offset) = (0u64, 0u64);
    while start.elapsed() < run && offset + buf.len() as u64 <= FILE {
        file.write_all_at(&buf, offset).unwrap();
        file.sync_data().unwrap();
        offset += buf.len() as u64;
        n += per_call as u64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);
    rate
}

/// Bytes per second of sequential 1 MiB writes, synced once at the end.
fn sequential_write(dir: &Path, total: usize) -> f64 {
    let path = dir.join("raw-seq");
    let mut file = File::create(&path).unwrap();
    let block = vec![0x5Au8; 1 << 20];
    let start = Instant::now();
    for _ in 0..total / block.len() {
        file.write_all(&block).unwrap();
    }
    file.sync_data().unwrap();
    let rate = total as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);
    rate
}

/// Records per second with `appenders` threads, each appending one record
/// and waiting for it to be durable; the flush rounds run on the waiting
/// threads (`waiters_flush`) or on the log's flush thread.
fn log_sync(dir: &Path, appenders: usize, size: usize, run: Duration, waiters_flush: bool) -> f64 {
    let (path, log) = open_sync_log(dir, &format!("log-{appenders}-{size}"), waiters_flush);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..appenders)
        .map(|t| {
            let (log, stop, count) = (log.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let payload = vec![t as u8; size];
                while !stop.load(Ordering::Relaxed) {
                    let a = log.append_payloads(1, RecordKind::Normal, 0, &[&payload]).unwrap();
                    log.wait_durable(a.last).unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let rate = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    close_sync_log(path, log, &format!("{appenders} appenders, {size} B"));
    rate
}

/// A log in sync mode at `dir/name`, flushed by its waiters or its thread.
fn open_sync_log(dir: &Path, name: &str, waiters_flush: bool) -> (PathBuf, Log) {
    let path = dir.join(name);
    let config = LogConfig {
        waiters_flush,
        ..LogConfig::default()
    };
    let log = Log::open(&path, config).unwrap();
    (path, log)
}

/// Prints the records per flush of a measurement, then closes and removes
/// its log.
fn close_sync_log(path: PathBuf, log: Log, what: &str) {
    eprintln!(
        "  ({what}: {:.1} records per flush)",
        log.last_index() as f64 / log.flush_rounds().max(1) as f64
    );
    log.close().unwrap();
    drop(log);
    let _ = std::fs::remove_dir_all(path);
}

/// Records per second with `appenders` appenders served by one thread,
/// the way an event loop serves many clients: each appender appends its
/// own record (one append call each) and, once that record is durable,
/// its next. The thread waits until the oldest record outstanding is
/// durable, then moves on every appender whose record is.
fn log_sync_one_thread(dir: &Path, appenders: usize, size: usize, run: Duration, waiters_flush: bool) -> f64 {
    let (path, log) = open_sync_log(dir, &format!("log-one-thread-{appenders}-{size}"), waiters_flush);
    let payloads: Vec<Vec<u8>> = (0..appenders).map(|t| vec![t as u8; size]).collect();
    let append = |t: usize| {
        log.append_payloads(1, RecordKind::Normal, 0, &[&payloads[t]])
            .unwrap()
            .last
    };
    // (appender, index of its record), oldest first.
    let mut outstanding: std::collections::VecDeque<(usize, u64)> = (0..appenders).map(|t| (t, append(t))).collect();
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < run {
        let Some(&(_, oldest)) = outstanding.front() else { break };
        log.wait_durable(oldest).unwrap();
        let durable = log.durable_index();
        while let Some(&(t, index)) = outstanding.front() {
            if index > durable {
                break;
            }
            outstanding.pop_front();
            count += 1;
            outstanding.push_back((t, append(t)));
        }
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    close_sync_log(path, log, &format!("{appenders} appenders on one thread, {size} B"));
    rate
}

/// Records per second with `appenders` appenders whose records one thread
/// appends with one call, the way the Raft driver appends the proposals it
/// has gathered: append all, wait until the last is durable, again. The
/// log's counterpart of the "N per call" ceiling loop.
fn log_sync_batched(dir: &Path, appenders: usize, size: usize, run: Duration, waiters_flush: bool) -> f64 {
    let (path, log) = open_sync_log(dir, &format!("log-batched-{appenders}-{size}"), waiters_flush);
    let payloads: Vec<Vec<u8>> = (0..appenders).map(|t| vec![t as u8; size]).collect();
    let batch: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < run {
        let a = log.append_payloads(1, RecordKind::Normal, 0, &batch).unwrap();
        log.wait_durable(a.last).unwrap();
        count += appenders as u64;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    close_sync_log(path, log, &format!("{appenders} appenders in one call, {size} B"));
    rate
}

/// Fills a log with `total` bytes of 1 KiB records across several segments.
fn fill_log(path: &Path, total: usize) -> usize {
    let config = LogConfig {
        segment_bytes: 64 << 20,
        persist: PersistMode::None,
        ..LogConfig::default()
    };
    let log = Log::open(path, config).unwrap();
    let payload = vec![0x33u8; 1024];
    let batch: Vec<&[u8]> = (0..256).map(|_| &payload[..]).collect();
    let mut written = 0;
    while written < total {
        log.append_payloads(1, RecordKind::Normal, 0, &batch).unwrap();
        written += batch.len() * payload.len();
    }
    log.close().unwrap();
    drop(log);
    // Make the files durable so the scan reads what a restart would.
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        File::open(entry.path()).unwrap().sync_all().unwrap();
    }
    written
}

/// Seconds to read every file in `path` sequentially.
fn read_files(path: &Path) -> (f64, u64) {
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    let start = Instant::now();
    let mut files: Vec<_> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().filter(|p| p.extension().is_some_and(|e| e == "seg")) {
        let mut file = File::open(f).unwrap();
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    (start.elapsed().as_secs_f64(), bytes)
}

fn drop_caches() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    if std::env::args().skip(1).any(|a| a != "--bench") {
        eprintln!("usage: cargo bench -p loomcache-benches --bench log");
        std::process::exit(2);
    }
    let dir = bench_dir();
    let run = seconds();
    println!(
        "log benchmark in {} ({:.1} s per measurement)",
        dir.display(),
        run.as_secs_f64()
    );
    println!();
    println!(
        "{:<44} {:>14} {:>10} {:>12}",
        "measurement", "records/s", "MB/s", "vs 1 fsync/rec"
    );
    for size in list("LOOMCACHE_BENCH_SIZES", &[100, 1024]) {
        let raw = fsync_per_call(&dir, size, 1, 1, run);
        println!(
            "{:<44} {:>14.0} {:>10.2} {:>12}",
            format!("write+fdatasync per record, {size} B"),
            raw,
            raw * size as f64 / 1e6,
            "1.0x"
        );
        let appenders = list("LOOMCACHE_BENCH_APPENDERS", &[1, 8, 64]);
        for &per_call in appenders.iter().filter(|&&n| n > 1) {
            let r = fsync_per_call(&dir, size, per_call, 1, run);
            println!(
                "{:<44} {:>14.0} {:>10.2} {:>11.1}x",
                format!("write+fdatasync {per_call} per call, {size} B"),
                r,
                r * size as f64 / 1e6,
                r / raw
            );
        }
        // The most appenders, into fresh space, and split over two flushes
        // in flight at once.
        if let Some(&most) = appenders.iter().filter(|&&n| n >= 2).max() {
            let r = fsync_per_call_growing(&dir, size, most, run);
            println!(
                "{:<44} {:>14.0} {:>10.2} {:>11.1}x",
                format!("write+fdatasync {most} per call, growing, {size} B"),
                r,
                r * size as f64 / 1e6,
                r / raw
            );
            let r = fsync_per_call(&dir, size, most / 2, 2, run);
            println!(
                "{:<44} {:>14.0} {:>10.2} {:>11.1}x",
                format!("write+fdatasync 2 threads x {} per call, {size} B", most / 2),
                r,
                r * size as f64 / 1e6,
                r / raw
            );
        }
        type Measure = fn(&Path, usize, usize, Duration, bool) -> f64;
        let shapes: [(&str, Measure); 3] = [
            ("appenders", log_sync),
            ("on 1 thread", log_sync_one_thread),
            ("in 1 call", log_sync_batched),
        ];
        for (shape, measure) in shapes {
            for &appenders in &list("LOOMCACHE_BENCH_APPENDERS", &[1, 8, 64]) {
                // One appender on one thread, or in one call, is the
                // thread-per-appender row.
                if appenders == 1 && shape != "appenders" {
                    continue;
                }
                for (waiters_flush, by) in [(true, "waiters"), (false, "thread")] {
                    let r = measure(&dir, appenders, size, run, waiters_flush);
                    println!(
                        "{:<44} {:>14.0} {:>10.2} {:>11.1}x",
                        format!("log sync, {appenders} {shape}, {size} B, {by}"),
                        r,
                        r * size as f64 / 1e6,
                        r / raw
                    );
                }
            }
        }
    }
    let seq = sequential_write(&dir, 256 << 20);
    println!(
        "{:<44} {:>14} {:>10.1}",
        "sequential write 1 MiB blocks, 256 MiB",
        "-",
        seq / 1e6
    );

    if std::env::var("LOOMCACHE_BENCH_RECOVERY").is_ok_and(|v| v == "0") {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    println!();
    let path = dir.join("recovery");
    let written = fill_log(&path, 512 << 20);
    let threads = LogConfig::default().recovery_threads;
    for cold in [false, true] {
        if cold && !drop_caches() {
            println!("(cold-cache figures skipped: cannot write /proc/sys/vm/drop_caches)");
            break;
        }
        let (read_s, bytes) = read_files(&path);
        let label = if cold { "cold cache" } else { "warm cache" };
        println!(
            "recovery, {label}: {} MiB of records, {:.0} MiB of files",
            written >> 20,
            bytes as f64 / (1 << 20) as f64
        );
        println!(
            "  sequential read of the files              {:>8.1} MB/s",
            bytes as f64 / read_s / 1e6
        );
        let mut counts = vec![1];
        if threads > 1 {
            counts.push(threads);
        }
        for recovery_threads in counts {
            if cold {
                drop_caches();
            }
            let start = Instant::now();
            let log = Log::open(
                &path,
                LogConfig {
                    persist: PersistMode::None,
                    recovery_threads,
                    ..LogConfig::default()
                },
            )
            .unwrap();
            let open_s = start.elapsed().as_secs_f64();
            assert_eq!(log.last_index() as usize, written / 1024, "recovery lost records");
            drop(log);
            println!(
                "  recovery scan (open), {recovery_threads} thread(s)         {:>8.1} MB/s  ({:.0}% of the read)",
                bytes as f64 / open_s / 1e6,
                100.0 * read_s / open_s
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
