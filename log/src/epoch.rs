//! A value that readers borrow under an epoch guard while a writer swaps it.
//!
//! The log publishes its segment list through this: readers pin an epoch
//! and borrow the current list (and, through it, segment mappings) without
//! locks or reference counting; the writer replaces the list whole, and the
//! replaced one is destroyed only after every guard pinned before the swap
//! is gone. Dropping a list drops its last references to removed segments,
//! which unmaps them and deletes their files, so no reader ever touches a
//! dead mapping.

use core::sync::atomic::Ordering;

use crossbeam_epoch::{Atomic, Guard, Owned};

/// A published value; see the module docs.
#[derive(Debug)]
pub struct EpochCell<T: Send + 'static> {
    current: Atomic<T>,
}

impl<T: Send + 'static> EpochCell<T> {
    /// Publishes `value`.
    pub fn new(value: T) -> EpochCell<T> {
        EpochCell {
            current: Atomic::new(value),
        }
    }

    /// Borrows the current value for as long as `guard` is held.
    pub fn load<'g>(&self, guard: &'g Guard) -> &'g T {
        let shared = self.current.load(Ordering::Acquire, guard);
        // SAFETY: the pointer is never null: it starts as an `Owned` value
        // and is only ever swapped for another `Owned` value. A replaced
        // value is freed through `defer_destroy`, which runs only after
        // every guard pinned before the swap (including `guard`, if it was
        // pinned before) has been dropped; a guard pinned after the swap
        // cannot load the replaced pointer. So the reference is valid for
        // `'g`.
        unsafe { shared.deref() }
    }

    /// Publishes `value`; the previous value is destroyed once no reader
    /// pinned before this call can still see it.
    pub fn replace(&self, value: T, guard: &Guard) {
        let old = self.current.swap(Owned::new(value), Ordering::AcqRel, guard);
        // SAFETY: the swap unlinked `old`, so no reader pinned from now on
        // can reach it, and `defer_destroy` waits for every guard pinned
        // before the swap. `old` is destroyed exactly once: only this call
        // ever held it after the swap.
        unsafe { guard.defer_destroy(old) };
        guard.flush();
    }
}

impl<T: Send + 'static> Drop for EpochCell<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self` proves nobody else can load from this cell,
        // so no guard can be borrowing the current value; it is taken out
        // exactly once, here.
        unsafe {
            let current = self.current.load(Ordering::Acquire, crossbeam_epoch::unprotected());
            if !current.is_null() {
                drop(current.into_owned());
            }
        }
    }
}
