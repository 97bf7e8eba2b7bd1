//! The LoomCache buffer pool beside the global allocator: taking a 4 KiB
//! buffer and giving it back, against allocating and freeing a 4 KiB `Vec`.
//! The allocator is mimalloc, the global allocator of every LoomCache
//! binary, so the peer is the allocation the product would otherwise make.
//!
//! Run with `cargo bench -p loomcache-benches --bench pool`.

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loomcache_arena::{BufPool, PoolConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POOL_CONFIG: PoolConfig = PoolConfig {
    count: 1024,
    buf_size_bytes: 4096,
};

/// Threads in the contended figures; the pool holds far more buffers than
/// threads, so contention is on the pool's lock, never on exhaustion.
const THREADS: usize = 2;

fn take_return(pool: &BufPool) {
    let buf = pool.take().expect("the pool has a free buffer for every thread");
    black_box(&buf);
}

fn malloc_free() {
    let buf: Vec<u8> = Vec::with_capacity(POOL_CONFIG.buf_size_bytes);
    black_box(&buf);
}

/// Runs `op` `iters` times on each of [`THREADS`] threads, started together
/// by a barrier, and answers the longest thread's time. One iteration is one
/// operation on every thread at once, so the figure is wall time per round.
fn contended(iters: u64, op: impl Fn() + Sync) -> Duration {
    let barrier = Barrier::new(THREADS);
    thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        op();
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("benchmark thread panicked"))
            .max()
            .unwrap_or_default()
    })
}

fn pool(c: &mut Criterion) {
    let pool = BufPool::new(POOL_CONFIG);
    let mut g = c.benchmark_group("pool");

    g.throughput(Throughput::Elements(1));
    g.bench_function("take_return", |b| b.iter(|| take_return(&pool)));
    g.bench_function("malloc_free", |b| b.iter(malloc_free));

    g.throughput(Throughput::Elements(THREADS as u64));
    g.bench_function(format!("take_return_contended_{THREADS}_threads"), |b| {
        b.iter_custom(|iters| contended(iters, || take_return(&pool)))
    });
    g.bench_function(format!("malloc_free_contended_{THREADS}_threads"), |b| {
        b.iter_custom(|iters| contended(iters, malloc_free))
    });
    g.finish();

    let stats = pool.stats();
    assert_eq!(stats.in_use, 0, "every buffer returned");
    assert_eq!(stats.exhausted, 0, "the pool never ran dry");
}

criterion_group!(benches, pool);
criterion_main!(benches);
