//! The buffer pool never hands one buffer to two holders and never loses
//! one, under every interleaving loom explores (with `--cfg loom`) or under
//! real threads (without).

use loomcache_arena::{BufPool, PoolConfig, PooledBuf};

#[cfg(loom)]
use loom::{sync::Arc, thread};
#[cfg(not(loom))]
use std::thread;

/// Marks a buffer as held by `who`, checking nobody else holds it.
/// Ownership is tracked in the buffer's own bytes: byte 0 is a "held" mark
/// written on take and cleared before return, so two simultaneous holders
/// of one buffer would see each other's mark.
fn claim(buf: &mut PooledBuf, who: u8) {
    assert_eq!(buf[0], 0, "buffer already held by {}", buf[0]);
    buf[0] = who;
}

fn release(mut buf: PooledBuf, who: u8) {
    assert_eq!(buf[0], who, "buffer changed hands while held");
    buf[0] = 0;
    drop(buf);
}

fn check_all_returned(pool: &BufPool, count: usize) {
    assert_eq!(pool.available(), count, "a buffer was lost");
    assert_eq!(pool.stats().in_use, 0);
    // Every buffer can be taken again, and they are distinct.
    let mut all: Vec<PooledBuf> = (0..count).map(|_| pool.take().expect("lost buffer")).collect();
    for (i, b) in all.iter_mut().enumerate() {
        claim(b, i as u8 + 1);
    }
    assert!(pool.take().is_err(), "pool grew");
    let s = pool.stats();
    assert!(s.high_water <= count);
}

fn worker(pool: BufPool, who: u8, rounds: usize) {
    for _ in 0..rounds {
        if let Ok(mut b) = pool.take() {
            claim(&mut b, who);
            release(b, who);
        }
    }
}

#[cfg(loom)]
#[test]
fn concurrent_take_return_is_exclusive_and_lossless() {
    loom::model(|| {
        let count = 2;
        let pool = BufPool::new(PoolConfig {
            count,
            buf_size_bytes: 8,
        });
        let handles: Vec<_> = (1..=2u8)
            .map(|who| {
                let pool = pool.clone();
                thread::spawn(move || worker(pool, who, 2))
            })
            .collect();
        worker(pool.clone(), 3, 1);
        for h in handles {
            h.join().unwrap();
        }
        check_all_returned(&pool, count);
    });
}

#[cfg(loom)]
#[test]
fn buffer_taken_on_one_thread_returns_from_another() {
    loom::model(|| {
        let pool = BufPool::new(PoolConfig {
            count: 1,
            buf_size_bytes: 8,
        });
        let mut b = pool.take().unwrap();
        claim(&mut b, 1);
        let p2 = pool.clone();
        let t = thread::spawn(move || {
            release(b, 1);
            // The other thread may or may not see it back yet, but a take
            // that succeeds gets an unheld buffer.
            if let Ok(mut again) = p2.take() {
                claim(&mut again, 2);
                release(again, 2);
            }
        });
        if let Ok(mut mine) = pool.take() {
            claim(&mut mine, 3);
            release(mine, 3);
        }
        t.join().unwrap();
        check_all_returned(&pool, 1);
    });
}

#[cfg(loom)]
#[test]
fn exhaustion_is_counted_and_never_blocks() {
    loom::model(|| {
        let pool = BufPool::new(PoolConfig {
            count: 1,
            buf_size_bytes: 8,
        });
        let shared = Arc::new(pool);
        let p = Arc::clone(&shared);
        let t = thread::spawn(move || p.take().map(drop).is_ok());
        let mine = shared.take().map(drop).is_ok();
        let theirs = t.join().unwrap();
        let stats = shared.stats();
        // Each failed take is counted exactly once.
        assert_eq!(stats.exhausted, u64::from(!mine) + u64::from(!theirs));
        assert!(mine || theirs, "one of two takes from a free pool must succeed");
        check_all_returned(&shared, 1);
    });
}

#[cfg(not(loom))]
#[test]
fn threads_hammering_the_pool_never_share_or_lose_a_buffer() {
    let count = 4;
    let pool = BufPool::new(PoolConfig {
        count,
        buf_size_bytes: 64,
    });
    let handles: Vec<_> = (1..=8u8)
        .map(|who| {
            let pool = pool.clone();
            thread::spawn(move || worker(pool, who, 20_000))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    check_all_returned(&pool, count);
}
