//! Kernel locks: mtx(9) for waits and interrupt paths, sx(9) for paths
//! that sleep waiting for the host.
//!
//! A kernel lock is initialized at its final address and never moves (its
//! address is its identity to WITNESS and to sleepers). So, in the spirit of
//! Rust-for-Linux's pin-init, these types have no constructor by value: the
//! only way to make one is `init` on a raw slot inside the driver state,
//! before any reference to it exists. Safe code reaches a lock only through
//! a reference, and every reference points at an initialized lock (the state
//! is initialized in place completely before the first `&State` is made):
//! `lock` and `with` can therefore not be called on an uninitialized lock.
//!
//! Without INVARIANTS the kernel lets a thread take a non-recursive mtx or
//! sx it already holds (it only counts the recursion): the cells therefore
//! keep a flag, under their lock, that makes a nested `with` on the same
//! cell panic instead of handing out a second `&mut`.

use core::cell::UnsafeCell;
use core::ffi::{c_void, CStr};
use core::marker::PhantomPinned;
use core::ops::Deref;
use core::ptr::{addr_of_mut, NonNull};

use super::kern::hz;
use super::sys;
use crate::sleep::sleep_ticks;

/// A default (sleep) mutex.
pub struct Mutex {
    mtx: UnsafeCell<sys::mtx>,
    _pinned: PhantomPinned,
}

// SAFETY: mtx(9) is designed to be shared between threads.
unsafe impl Sync for Mutex {}

impl Mutex {
    /// Initializes the mutex at `slot`, in place.
    ///
    /// # Safety
    /// `slot` is valid for writes, holds no initialized mutex, and stays at
    /// this address until [`Mutex::destroy`]; no reference to it exists yet.
    pub unsafe fn init(slot: *mut Mutex, name: &'static CStr) {
        // SAFETY: per the contract; UnsafeCell<mtx> has mtx's layout, and
        // the marker field is zero-sized.
        unsafe { sys::vtbrs_mtx_init(addr_of_mut!((*slot).mtx).cast(), name.as_ptr()) }
    }

    /// Destroys the mutex.
    ///
    /// # Safety
    /// Called once, after every other use, with the mutex unowned.
    pub unsafe fn destroy(&self) {
        // SAFETY: per the contract, nobody holds or will take the lock.
        unsafe { sys::vtbrs_mtx_destroy(self.mtx.get()) }
    }

    pub fn raw(&self) -> *mut sys::mtx {
        self.mtx.get()
    }

    pub fn lock(&self) -> MutexGuard<'_> {
        // SAFETY: a `&Mutex` only exists for an initialized one (see the
        // module docs), which lives as long as the reference.
        unsafe { sys::vtbrs_mtx_lock(self.mtx.get()) };
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
        let ticks = sleep_ticks(ms, hz());
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
    unsafe { sys::wakeup(chan) }
}

/// Lends the value of a locked cell to `f`.
///
/// # Safety
/// The caller holds the cell's lock (exclusively); `busy` and `value` are
/// the cell's and are only touched with that lock held.
unsafe fn lend<T, R>(
    busy: &UnsafeCell<bool>,
    value: &UnsafeCell<T>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    // SAFETY: per the contract only this thread reaches `busy` now.
    let borrowed = unsafe { &mut *busy.get() };
    // Set: this thread is already inside `f` for this cell (a recursed lock).
    assert!(!*borrowed, "vtballoonrs: driver lock recursed");
    *borrowed = true;
    // SAFETY: the lock is held and no other borrow of the value is live
    // (`busy` was clear), so this is the only reference.
    let r = f(unsafe { &mut *value.get() });
    // SAFETY: as above (panics abort: no unwinding leaves it set).
    unsafe { *busy.get() = false };
    r
}

/// A value guarded by an sx(9) lock: holders may sleep.
pub struct SxCell<T> {
    lock: UnsafeCell<sys::sx>,
    busy: UnsafeCell<bool>,
    value: UnsafeCell<T>,
    _pinned: PhantomPinned,
}

// SAFETY: access to `value` is serialized by the sx lock, and the value
// moves between threads with the lock.
unsafe impl<T: Send> Sync for SxCell<T> {}

impl<T> SxCell<T> {
    /// Writes `value` to `slot` and initializes the lock, in place.
    ///
    /// # Safety
    /// As for [`Mutex::init`].
    pub unsafe fn init(slot: *mut Self, name: &'static CStr, value: T) {
        // SAFETY: per the contract the slot is ours and not yet in use.
        unsafe {
            addr_of_mut!((*slot).value).write(UnsafeCell::new(value));
            addr_of_mut!((*slot).busy).write(UnsafeCell::new(false));
            sys::sx_init_flags(addr_of_mut!((*slot).lock).cast(), name.as_ptr(), 0);
        }
    }

    /// Drops the value and destroys the lock.
    ///
    /// # Safety
    /// Called once, after every other use.
    pub unsafe fn destroy(&self) {
        // SAFETY: per the contract, nobody holds or will take the lock, and
        // nobody refers to the value any more.
        unsafe {
            core::ptr::drop_in_place(self.value.get());
            sys::sx_destroy(self.lock.get());
        }
    }

    /// Runs `f` with the lock held exclusively.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: a `&SxCell` only exists for an initialized one (module docs).
        unsafe { sys::vtbrs_sx_xlock(self.lock.get()) };
        // SAFETY: the exclusive lock is held.
        let r = unsafe { lend(&self.busy, &self.value, f) };
        // SAFETY: we took the lock above.
        unsafe { sys::vtbrs_sx_xunlock(self.lock.get()) };
        r
    }
}

/// A value guarded by a [`Mutex`]: holders must not sleep.
pub struct MtxCell<T> {
    pub mtx: Mutex,
    busy: UnsafeCell<bool>,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialized by the mutex.
unsafe impl<T: Send> Sync for MtxCell<T> {}

impl<T> MtxCell<T> {
    /// Writes `value` to `slot` and initializes the mutex, in place.
    ///
    /// # Safety
    /// As for [`Mutex::init`].
    pub unsafe fn init(slot: *mut Self, name: &'static CStr, value: T) {
        // SAFETY: per the contract.
        unsafe {
            addr_of_mut!((*slot).value).write(UnsafeCell::new(value));
            addr_of_mut!((*slot).busy).write(UnsafeCell::new(false));
            Mutex::init(addr_of_mut!((*slot).mtx), name);
        }
    }

    /// Drops the value and destroys the mutex.
    ///
    /// # Safety
    /// As for [`SxCell::destroy`].
    pub unsafe fn destroy(&self) {
        // SAFETY: per the contract.
        unsafe {
            core::ptr::drop_in_place(self.value.get());
            self.mtx.destroy();
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _g = self.mtx.lock();
        // SAFETY: the mutex is held.
        unsafe { lend(&self.busy, &self.value, f) }
    }

    /// Runs `f` on the value when the caller already holds the mutex (a
    /// callout set up with callout_init_mtx runs that way).
    ///
    /// # Safety
    /// The caller holds `self.mtx`.
    pub unsafe fn with_held<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: per the contract the mutex is held.
        unsafe { lend(&self.busy, &self.value, f) }
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

// SAFETY: the handle is a shared reference in all but its lifetime: it may
// cross threads exactly when `&T` may, which is when `T: Sync`.
unsafe impl<T: Sync> Send for StateRef<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for StateRef<T> {}
