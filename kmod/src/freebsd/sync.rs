//! Kernel locks: mtx(9) for waits and interrupt paths, sx(9) for paths
//! that sleep waiting for the host. Each lock lives inside the driver state,
//! which is allocated once and never moves, and is initialized in place.

use core::cell::UnsafeCell;
use core::ffi::{c_void, CStr};
use core::ops::Deref;
use core::ptr::NonNull;

use super::sys;

/// A default (sleep) mutex.
pub struct Mutex(UnsafeCell<sys::mtx>);

// SAFETY: mtx(9) is designed to be shared between threads.
unsafe impl Sync for Mutex {}

impl Mutex {
    /// Initializes the mutex in place.
    ///
    /// # Safety
    /// Called once, before any other use, with `self` at its final address.
    pub unsafe fn init(&self, name: &'static CStr) {
        // SAFETY: per the contract, the storage is ours and not yet in use.
        unsafe { sys::vtbrs_mtx_init(self.0.get(), name.as_ptr()) }
    }

    /// Destroys the mutex.
    ///
    /// # Safety
    /// Called once, after every other use, with the mutex unowned.
    pub unsafe fn destroy(&self) {
        // SAFETY: per the contract, nobody holds or will take the lock.
        unsafe { sys::vtbrs_mtx_destroy(self.0.get()) }
    }

    pub fn raw(&self) -> *mut sys::mtx {
        self.0.get()
    }

    pub fn lock(&self) -> MutexGuard<'_> {
        // SAFETY: the mutex was initialized in attach and lives as long as `self`.
        unsafe { sys::vtbrs_mtx_lock(self.0.get()) };
        MutexGuard(self)
    }
}

/// Proof the mutex is held; unlocks on drop.
pub struct MutexGuard<'a>(&'a Mutex);

impl MutexGuard<'_> {
    /// Sleeps on `chan`, dropping the mutex while asleep, for at most `ms`
    /// milliseconds (0: until woken; at least one tick otherwise). Returns
    /// true if it timed out.
    pub fn sleep(&self, chan: *const c_void, wmesg: &'static CStr, ms: u32) -> bool {
        let ticks = if ms == 0 {
            0
        } else {
            // SAFETY: converts a duration; no other effect.
            unsafe { sys::vtbrs_ms_to_ticks(ms) }
        };
        // SAFETY: we hold the mutex (this guard exists), as msleep(9) requires.
        let rc = unsafe { sys::vtbrs_msleep(chan.cast_mut(), self.0.raw(), wmesg.as_ptr(), ticks) };
        rc != 0
    }
}

impl Drop for MutexGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard's existence means we hold the mutex.
        unsafe { sys::vtbrs_mtx_unlock(self.0.raw()) }
    }
}

/// Wakes every thread sleeping on `chan`.
pub fn wakeup(chan: *const c_void) {
    // SAFETY: wakeup(9) accepts any address as a channel.
    unsafe { sys::vtbrs_wakeup(chan.cast_mut()) }
}

/// A value guarded by an sx(9) lock: holders may sleep.
pub struct SxCell<T> {
    lock: UnsafeCell<sys::sx>,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialized by the sx lock.
unsafe impl<T: Send> Sync for SxCell<T> {}

impl<T> SxCell<T> {
    /// Initializes the lock in place.
    ///
    /// # Safety
    /// Called once, before any other use, with `self` at its final address
    /// and `value` already initialized.
    pub unsafe fn init(&self, name: &'static CStr) {
        // SAFETY: per the contract, the storage is ours and not yet in use.
        unsafe { sys::vtbrs_sx_init(self.lock.get(), name.as_ptr()) }
    }

    /// # Safety
    /// Called once, after every other use.
    pub unsafe fn destroy(&self) {
        // SAFETY: per the contract, nobody holds or will take the lock.
        unsafe { sys::vtbrs_sx_destroy(self.lock.get()) }
    }

    /// Pointer to the value, for in-place initialization before `init`.
    pub fn value_ptr(&self) -> *mut T {
        self.value.get()
    }

    /// Runs `f` with the lock held exclusively.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: the lock was initialized in attach.
        unsafe { sys::vtbrs_sx_xlock(self.lock.get()) };
        // SAFETY: the exclusive lock is held, so this is the only reference.
        let r = f(unsafe { &mut *self.value.get() });
        // SAFETY: we took the lock above.
        unsafe { sys::vtbrs_sx_xunlock(self.lock.get()) };
        r
    }
}

/// A value guarded by a [`Mutex`]: holders must not sleep.
pub struct MtxCell<T> {
    pub mtx: Mutex,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialized by the mutex.
unsafe impl<T: Send> Sync for MtxCell<T> {}

impl<T> MtxCell<T> {
    pub fn value_ptr(&self) -> *mut T {
        self.value.get()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _g = self.mtx.lock();
        // SAFETY: the mutex is held, so this is the only reference.
        f(unsafe { &mut *self.value.get() })
    }

    /// Runs `f` on the value when the caller already holds the mutex (a
    /// callout set up with callout_init_mtx runs that way).
    ///
    /// # Safety
    /// The caller holds `self.mtx`.
    pub unsafe fn with_held<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: per the contract the mutex is held.
        f(unsafe { &mut *self.value.get() })
    }
}

/// A shared reference from one part of the driver state to another (a logic
/// object behind a lock to the counters beside it, which the sysctl tree
/// reads without that lock). `&'a T` cannot name it: the state is not
/// `'static` (detach frees it), and a struct cannot borrow its own field.
pub struct StateRef<T>(NonNull<T>);

impl<T> StateRef<T> {
    /// # Safety
    /// `target` stays valid and in place for as long as this handle is used:
    /// both live in the same driver state, which frees its parts only after
    /// nothing can use them any more.
    pub unsafe fn new(target: &T) -> Self {
        StateRef(NonNull::from(target))
    }
}

impl<T> Deref for StateRef<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: valid for every use of the handle (see `new`); only shared
        // references are ever made to the target.
        unsafe { self.0.as_ref() }
    }
}

impl<T> core::fmt::Debug for StateRef<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("StateRef")
    }
}

// SAFETY: the handle is a shared reference in all but its lifetime: it may
// cross threads exactly when `&T` may, which is when `T: Sync`.
unsafe impl<T: Sync> Send for StateRef<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for StateRef<T> {}
