//! Locks whose waiters give the host core back.
//!
//! Under QEMU TCG each vCPU is a host thread. A vCPU that spins on a lock
//! burns the host core its holder may need: at 8 vCPUs on 2 host cores a
//! contended spin lock turns a millisecond of work into seconds. These
//! locks queue their waiters in order (tickets, as s390 Linux's queued
//! spinlocks are fair), spin briefly, then sleep in an enabled wait until
//! the CPU that passes the lock on kicks them with an external call
//! (`smp::lock_sleep` / `lock_kick`, Linux's paravirt spinlocks). QEMU
//! halts a vCPU in a wait state, so its thread sleeps until the kick.
//!
//! * [`TicketLock`]: the raw lock, one word (the page-table lock embeds
//!   it in `struct page`).
//! * [`Mutex`]: a ticket lock around data.
//! * [`RwLock`]: readers share, writers exclude, all served in arrival
//!   order: an entry ticket lock orders everyone; a reader passes it on as
//!   soon as it has counted itself in, a writer keeps it and waits (asleep)
//!   for the readers before it to leave. No reader stream starves a writer
//!   and no writer stream starves a reader.
//!
//! Interruption handlers must not take these locks: a waiter's sleep opens
//! the external subclass, and a handler that slept would reuse the CPU's
//! one wait slot. zdat's kernel code runs disabled; its handlers take only
//! spin locks of their own (console, SCCB, handler table).
//!
//! On the host (unit tests) there is nobody to kick: waiters only spin.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering};

/// Spins before a waiter sleeps: a lock held for a few instructions is
/// usually free again by then, and a sleep costs two SIGPs' worth.
#[cfg(target_arch = "s390x")]
const SPINS: u32 = 64;

/// Wait for `ready()`, spinning briefly, then asleep until a kick for
/// `key` (and `ticket`, or any ticket) arrives. Also `smp::wait_until`.
pub(crate) fn wait_for(key: u64, ticket: u64, ready: impl Fn() -> bool) {
    #[cfg(target_arch = "s390x")]
    {
        for _ in 0..SPINS {
            if ready() {
                return;
            }
            core::hint::spin_loop();
        }
        crate::smp::lock_sleep(key, ticket, ready);
    }
    #[cfg(not(target_arch = "s390x"))]
    {
        let _ = (key, ticket);
        while !ready() {
            core::hint::spin_loop();
        }
    }
}

/// Kick the CPU sleeping for `key` with `ticket` (`ANY_TICKET`: every
/// CPU sleeping for `key`). Also `smp::wake`.
pub(crate) fn kick(key: u64, ticket: u64) {
    #[cfg(target_arch = "s390x")]
    crate::smp::lock_kick(key, ticket);
    #[cfg(not(target_arch = "s390x"))]
    let _ = (key, ticket);
}

/// Any waiter of a key (the reader-drain wait of [`RwLock`],
/// `smp::wait_until`): `smp::lock_kick` with it kicks every CPU sleeping
/// for the key. No 32-bit ticket equals it.
pub(crate) const ANY_TICKET: u64 = u64::MAX;

/// A ticket lock in one word: the high half is the next ticket, the low
/// half the ticket served. No data, no guard: the building block.
#[repr(transparent)]
pub struct TicketLock {
    word: AtomicU64,
}

impl Default for TicketLock {
    fn default() -> Self {
        Self::new()
    }
}

impl TicketLock {
    pub const fn new() -> Self {
        TicketLock {
            word: AtomicU64::new(0),
        }
    }

    fn key(&self) -> u64 {
        core::ptr::from_ref(self).addr() as u64
    }

    fn serving(&self) -> u32 {
        self.word.load(Ordering::Acquire) as u32
    }

    /// Take a ticket and wait for it to be served.
    pub fn acquire(&self) {
        let old = self.word.fetch_add(1 << 32, Ordering::Acquire);
        let ticket = (old >> 32) as u32;
        if old as u32 != ticket {
            self.wait(ticket);
        }
    }

    #[cold]
    fn wait(&self, ticket: u32) {
        wait_for(self.key(), u64::from(ticket), || self.serving() == ticket);
    }

    /// Take the lock only if nobody holds it or waits for it.
    pub fn try_acquire(&self) -> bool {
        let v = self.word.load(Ordering::Relaxed);
        if v as u32 != (v >> 32) as u32 {
            return false;
        }
        self.word
            .compare_exchange(
                v,
                v.wrapping_add(1 << 32),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Serve the next ticket and kick its waiter, if one queued.
    ///
    /// # Safety
    /// The caller holds the lock (an `acquire` or a successful
    /// `try_acquire` not yet released).
    pub unsafe fn release(&self) {
        // The holder alone changes the low half, so it wraps without
        // carrying into the next-ticket half.
        let mut v = self.word.load(Ordering::Relaxed);
        loop {
            let next = (v & !0xffff_ffff) | u64::from((v as u32).wrapping_add(1));
            match self
                .word
                .compare_exchange_weak(v, next, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        let (serving, queued) = ((v as u32).wrapping_add(1), (v >> 32) as u32);
        if serving != queued {
            kick(self.key(), u64::from(serving));
        }
    }

    pub fn is_locked(&self) -> bool {
        let v = self.word.load(Ordering::Relaxed);
        v as u32 != (v >> 32) as u32
    }

    /// Linux `spin_is_contended`: a CPU other than the holder has taken a
    /// ticket and waits.
    pub fn is_contended(&self) -> bool {
        let v = self.word.load(Ordering::Relaxed);
        ((v >> 32) as u32).wrapping_sub(v as u32) > 1
    }

    /// Back to unlocked, whoever held it (a constructor's job only).
    ///
    /// # Safety
    /// Nobody holds the lock or waits for it: a holder would have company
    /// and its release would run ahead of the tickets; a waiter's ticket
    /// would never come up.
    pub unsafe fn reset(&self) {
        self.word.store(0, Ordering::Release);
    }
}

/// A fair sleeping mutex (the `spin::Mutex` API zdat uses).
pub struct Mutex<T: ?Sized> {
    lock: TicketLock,
    data: UnsafeCell<T>,
}

// SAFETY: the ticket lock gives one holder at a time the data: as
// `std::sync::Mutex`, sharing needs only `T: Send`.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}
// SAFETY: moving the mutex moves the data.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    pub const fn new(data: T) -> Self {
        Mutex {
            lock: TicketLock::new(),
            data: UnsafeCell::new(data),
        }
    }

    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: ?Sized> Mutex<T> {
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.lock.acquire();
        MutexGuard {
            mutex: self,
            _data: PhantomData,
        }
    }

    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        // `then`, not `then_some`: a guard built before the check would be
        // dropped on failure and release the other holder's lock.
        self.lock.try_acquire().then(|| MutexGuard {
            mutex: self,
            _data: PhantomData,
        })
    }

    pub fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }

    /// Another CPU waits for the lock.
    pub fn is_contended(&self) -> bool {
        self.lock.is_contended()
    }

    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

/// Sync only for `T: Sync` and Send only for `T: Send` (the marker): a
/// shared guard hands out `&T` on every CPU that holds a reference to it.
pub struct MutexGuard<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
    _data: PhantomData<&'a mut T>,
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, and `&mut self` is unique.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard holds the lock.
        unsafe { self.mutex.lock.release() };
    }
}

/// A fair sleeping reader-writer lock (see the module comment).
pub struct RwLock<T: ?Sized> {
    /// Held by a writer for its whole hold; by a reader only while it
    /// counts itself in.
    entry: TicketLock,
    readers: AtomicU64,
    /// A writer holding `entry` sleeps until `readers` reaches 0.
    draining: AtomicU64,
    data: UnsafeCell<T>,
}

// SAFETY: readers share `&T` (so `T: Sync`), a writer gets `&mut T` from
// any CPU (so `T: Send`), as `std::sync::RwLock`.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}
// SAFETY: moving the lock moves the data.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}

impl<T> RwLock<T> {
    pub const fn new(data: T) -> Self {
        RwLock {
            entry: TicketLock::new(),
            readers: AtomicU64::new(0),
            draining: AtomicU64::new(0),
            data: UnsafeCell::new(data),
        }
    }

    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    fn drain_key(&self) -> u64 {
        core::ptr::from_ref(&self.readers).addr() as u64
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.entry.acquire();
        self.readers.fetch_add(1, Ordering::Acquire);
        // SAFETY: acquired just above.
        unsafe { self.entry.release() };
        RwLockReadGuard { lock: self }
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.entry.acquire();
        if self.readers.load(Ordering::Acquire) != 0 {
            self.drain();
        }
        RwLockWriteGuard { lock: self }
    }

    /// Wait for the readers that came before us. `draining` is set before
    /// the wait's registration and check (both fenced), and the last
    /// reader reads it after its decrement and a fence: either the reader
    /// sees it and kicks, or our check sees the count at 0.
    #[cold]
    fn drain(&self) {
        self.draining.store(1, Ordering::SeqCst);
        wait_for(self.drain_key(), ANY_TICKET, || {
            self.readers.load(Ordering::Acquire) == 0
        });
        self.draining.store(0, Ordering::Relaxed);
    }

    fn read_unlock(&self) {
        if self.readers.fetch_sub(1, Ordering::Release) == 1 {
            core::sync::atomic::fence(Ordering::SeqCst);
            if self.draining.load(Ordering::Relaxed) != 0 {
                kick(self.drain_key(), ANY_TICKET);
            }
        }
    }
}

pub struct RwLockReadGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: counted in as a reader: no writer holds the data.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.read_unlock();
    }
}

pub struct RwLockWriteGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the writer holds `entry` and no reader is in.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` is unique.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the writer holds `entry` since `write`.
        unsafe { self.lock.entry.release() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ticket_lock_counts_holders_and_waiters() {
        let l = TicketLock::new();
        assert!(!l.is_locked());
        assert!(l.try_acquire());
        assert!(l.is_locked() && !l.is_contended());
        assert!(!l.try_acquire());
        // SAFETY: held.
        unsafe { l.release() };
        assert!(!l.is_locked());
        l.acquire();
        // SAFETY: held.
        unsafe { l.release() };
    }

    #[test]
    fn mutex_excludes_across_threads() {
        let m = Arc::new(Mutex::new(0u64));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        let mut g = m.lock();
                        let v = *g;
                        std::hint::spin_loop();
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*m.lock(), 8_000);
        assert!(m.try_lock().is_some());
    }

    #[test]
    fn failed_try_lock_leaves_the_holder_alone() {
        let m = Mutex::new(1u64);
        let g = m.lock();
        assert!(m.try_lock().is_none());
        assert!(m.try_lock().is_none());
        assert!(m.is_locked() && !m.is_contended());
        drop(g);
        assert!(!m.is_locked());
        *m.lock() += 1;
        assert_eq!(*m.try_lock().unwrap(), 2);
    }

    #[test]
    fn try_acquire_wraps_the_ticket_halves() {
        let l = TicketLock::new();
        l.word.store(0xffff_ffff_ffff_ffff, Ordering::Relaxed);
        assert!(!l.is_locked());
        assert!(l.try_acquire());
        assert!(l.is_locked() && !l.is_contended());
        // SAFETY: held.
        unsafe { l.release() };
        assert!(!l.is_locked());
        assert_eq!(l.word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn rwlock_readers_share_writers_exclude() {
        let l = Arc::new(RwLock::new((0u64, 0u64)));
        {
            let a = l.read();
            let b = l.read();
            assert_eq!((a.0, b.1), (0, 0));
        }
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        if i % 2 == 0 {
                            let mut g = l.write();
                            g.0 += 1;
                            g.1 += 1;
                        } else {
                            let g = l.read();
                            assert_eq!(g.0, g.1);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*l.read(), (2_000, 2_000));
    }
}
