//! The buffer pool.
//!
//! Free buffers sit on a LIFO stack behind a mutex, so the most recently
//! returned (cache-warm) buffer is handed out next. The critical section is
//! a `Vec::pop`/`push` into capacity reserved at start-up, so it never
//! allocates. Statistics are atomics, readable without the lock.
//!
//! Invariants:
//! - every buffer is either on the free stack or owned by exactly one
//!   [`PooledBuf`]; `free.len() + in_use == count` whenever the lock is free;
//! - the free stack's capacity is `count`, so returning never reallocates;
//! - `high_water >= in_use` at every quiescent point.

use crate::sync::{Arc, AtomicU64, AtomicUsize, Mutex, Ordering};

/// Sizing of a pool; both values come from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Number of buffers, fixed for the pool's life.
    pub count: usize,
    /// Size of each buffer in bytes.
    pub buf_size_bytes: usize,
}

/// A point-in-time view of a pool's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers in the pool.
    pub capacity: usize,
    /// Buffers handed out now.
    pub in_use: usize,
    /// Most buffers ever handed out at once.
    pub high_water: usize,
    /// Times [`BufPool::take`] found the pool empty.
    pub exhausted: u64,
}

/// [`BufPool::take`] found every buffer in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exhausted;

impl core::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("buffer pool exhausted")
    }
}

impl std::error::Error for Exhausted {}

#[derive(Debug)]
struct Inner {
    free: Mutex<Vec<Box<[u8]>>>,
    count: usize,
    buf_size_bytes: usize,
    in_use: AtomicUsize,
    high_water: AtomicUsize,
    exhausted: AtomicU64,
}

/// A fixed-capacity pool of byte buffers. Cloning is cheap and shares the
/// pool.
#[derive(Debug, Clone)]
pub struct BufPool {
    inner: Arc<Inner>,
}

impl BufPool {
    /// Allocates every buffer now, zeroed. Nothing is allocated later.
    pub fn new(config: PoolConfig) -> BufPool {
        let mut free = Vec::with_capacity(config.count);
        for _ in 0..config.count {
            free.push(vec![0u8; config.buf_size_bytes].into_boxed_slice());
        }
        BufPool {
            inner: Arc::new(Inner {
                free: Mutex::new(free),
                count: config.count,
                buf_size_bytes: config.buf_size_bytes,
                in_use: AtomicUsize::new(0),
                high_water: AtomicUsize::new(0),
                exhausted: AtomicU64::new(0),
            }),
        }
    }

    /// Takes a buffer, or fails at once when none is free.
    ///
    /// The buffer's contents are whatever its previous holder left.
    pub fn take(&self) -> Result<PooledBuf, Exhausted> {
        let mut free = self.lock_free_list();
        let popped = free.pop();
        if popped.is_some() {
            // Counted under the lock so in_use and high_water are exact.
            // Both are written only under the lock, so a plain load and
            // store keep them exact without a read-modify-write.
            let now = self.inner.count - free.len();
            self.inner.in_use.store(now, Ordering::Relaxed);
            if now > self.inner.high_water.load(Ordering::Relaxed) {
                self.inner.high_water.store(now, Ordering::Relaxed);
            }
        }
        drop(free);
        match popped {
            Some(buf) => Ok(PooledBuf {
                buf: Some(buf),
                pool: Arc::clone(&self.inner),
            }),
            None => {
                self.inner.exhausted.fetch_add(1, Ordering::Relaxed);
                Err(Exhausted)
            }
        }
    }

    /// Current statistics. Each field is exact as of some moment; under
    /// concurrent use they are read separately, not as one snapshot.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            capacity: self.inner.count,
            in_use: self.inner.in_use.load(Ordering::Relaxed),
            high_water: self.inner.high_water.load(Ordering::Relaxed),
            exhausted: self.inner.exhausted.load(Ordering::Relaxed),
        }
    }

    /// Size of each buffer in bytes.
    pub fn buf_size_bytes(&self) -> usize {
        self.inner.buf_size_bytes
    }

    /// Buffers currently on the free list (takes the lock).
    pub fn available(&self) -> usize {
        self.lock_free_list().len()
    }

    fn lock_free_list(&self) -> crate::sync::MutexGuard<'_, Vec<Box<[u8]>>> {
        lock(&self.inner.free)
    }
}

/// Locks the free list. A panic while holding the lock cannot leave the
/// stack inconsistent (push and pop are single operations), so a poisoned
/// lock is recovered rather than propagated.
fn lock(m: &Mutex<Vec<Box<[u8]>>>) -> crate::sync::MutexGuard<'_, Vec<Box<[u8]>>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A buffer on loan from a [`BufPool`]; returned to it on drop.
#[derive(Debug)]
pub struct PooledBuf {
    // `Some` for the handle's whole life; taken only in `drop`.
    buf: Option<Box<[u8]>>,
    pool: Arc<Inner>,
}

impl PooledBuf {
    /// Size in bytes (the pool's buffer size).
    pub fn capacity(&self) -> usize {
        self.as_ref().len()
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or(&[])
    }
}

impl AsMut<[u8]> for PooledBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or(&mut [])
    }
}

impl core::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_ref()
    }
}

impl core::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut free = lock(&self.pool.free);
            debug_assert!(free.len() < self.pool.count, "more buffers returned than the pool owns");
            free.push(buf);
            self.pool.in_use.store(self.pool.count - free.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn pool(count: usize) -> BufPool {
        BufPool::new(PoolConfig {
            count,
            buf_size_bytes: 64,
        })
    }

    #[test]
    fn take_until_exhausted_then_recover() {
        let p = pool(3);
        let held: Vec<_> = (0..3).map(|_| p.take().unwrap()).collect();
        assert_eq!(p.take().unwrap_err(), Exhausted);
        assert_eq!(p.take().unwrap_err(), Exhausted);
        let s = p.stats();
        assert_eq!((s.in_use, s.high_water, s.exhausted), (3, 3, 2));
        drop(held);
        let s = p.stats();
        assert_eq!((s.in_use, s.high_water), (0, 3));
        assert_eq!(p.available(), 3);
        assert!(p.take().is_ok());
    }

    #[test]
    fn buffers_are_distinct_and_sized() {
        let p = pool(4);
        let mut held: Vec<_> = (0..4).map(|_| p.take().unwrap()).collect();
        for (i, b) in held.iter_mut().enumerate() {
            assert_eq!(b.capacity(), 64);
            b.fill(i as u8);
        }
        for (i, b) in held.iter().enumerate() {
            assert!(b.iter().all(|&x| x == i as u8), "buffer {i} was shared");
        }
    }

    #[test]
    fn lifo_reuses_the_warm_buffer() {
        let p = pool(2);
        let a = p.take().unwrap();
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(p.take().unwrap().as_ptr(), ptr);
    }

    #[test]
    fn dropped_on_another_thread_returns() {
        let p = pool(1);
        let b = p.take().unwrap();
        std::thread::spawn(move || drop(b)).join().unwrap();
        assert_eq!(p.stats().in_use, 0);
        assert!(p.take().is_ok());
    }

    #[test]
    fn empty_pool_is_always_exhausted() {
        let p = pool(0);
        assert_eq!(p.take().unwrap_err(), Exhausted);
        assert_eq!(p.stats().exhausted, 1);
    }
}
