//! Notifying the host from another CPU.
//!
//! QEMU handles a balloon queue notification synchronously, in the thread of
//! the vCPU that wrote the notify register (virtio-balloon has no
//! ioeventfd): it discards or re-validates every page the buffer names
//! before that vCPU runs again. If the balloon thread notified, the host's
//! per-page work and the guest's (allocating, freeing) would take turns.
//! Instead the balloon side hands filled buffers to [`Kick`], whose
//! taskqueue thread (on another CPU whenever one is free) enqueues and
//! notifies, so both proceed at once. (Under QEMU's TCG the balloon
//! thread's vCPU, once asleep, is woken only when the notifying vCPU lets
//! go of QEMU's big lock, so there they still take turns; `kick_thread=0`
//! notifies in place.)
//!
//! Locking: `ring` serializes enqueue (here) with dequeue (the balloon side)
//! on the inflate and deflate queues. While the kicker is on, only its task
//! enqueues, so the notifications it makes after dropping the lock see a
//! ring nobody else is adding to. Off (before start, after stop, or when
//! the taskqueue could not be made), posts enqueue and notify in place.

use core::cell::UnsafeCell;
use core::ffi::{c_void, CStr};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::memory::now_us;
use super::sync::Mutex;
use super::sys;
use crate::balloon::MAX_INFLIGHT;
use crate::counters::Counter;
use crate::platform::Error;
use crate::protocol::config_offset;

/// Most buffers waiting for the task: every PFN slot of both queues.
const MAX_PENDING: usize = 2 * MAX_INFLIGHT;

/// Marks [`Kick::actual`] as holding a value to write.
const PENDING_ACTUAL: u64 = 1 << 32;

/// A buffer the task is to enqueue.
#[derive(Clone, Copy)]
struct Pending {
    vq: *mut sys::virtqueue,
    cookie: *mut c_void,
    buf: *const u8,
    len: usize,
}

/// The kicker. Lives in the zero-initialized driver state: all-zero is a
/// valid "off" kicker until [`Kick::init`].
pub struct Kick {
    ring: Mutex,
    /// Our taskqueue (null: none, posts notify in place).
    tq: UnsafeCell<*mut c_void>,
    task: UnsafeCell<sys::task>,
    on: AtomicBool,
    /// Buffers posted but not yet enqueued; under `ring`.
    pending: UnsafeCell<[Option<Pending>; MAX_PENDING]>,
    /// Microseconds spent inside notifications: under QEMU, the host's own
    /// work on the buffers (it discards the pages before returning).
    pub notify_us: Counter,
    /// The device, for config writes the task makes.
    dev: UnsafeCell<sys::device_t>,
    /// Balloon size for config `actual` not yet written: bit 32 set when
    /// pending. A config write traps to the host like a notification does,
    /// so it is made from the kick thread too.
    actual: AtomicU64,
}

// SAFETY: `pending` is only touched with `ring` held; `tq` and `task` are
// written in start/stop, which the driver's lifecycle keeps apart from
// every other use.
unsafe impl Sync for Kick {}

impl Kick {
    /// Initializes the lock in place.
    ///
    /// # Safety
    /// Once, at the kicker's final address, before any other use.
    pub unsafe fn init(&self, name: &'static CStr) {
        // SAFETY: per the contract; zeroed memory is not a valid array of
        // `Option`s, so it is written before anyone reads it.
        unsafe {
            self.pending.get().write([None; MAX_PENDING]);
            self.ring.init(name)
        }
    }

    /// Starts the taskqueue; on failure the kicker stays off (posts notify
    /// in place), which is correct, only slower.
    ///
    /// # Safety
    /// Once, after `init`, before any post; `self` outlives [`Kick::stop`].
    pub unsafe fn start(&self, dev: sys::device_t, name: &'static CStr) -> bool {
        let arg = (self as *const Kick).cast_mut().cast::<c_void>();
        // SAFETY: per the contract nothing else uses `task`, `tq` or `dev`
        // yet; the task's argument is this kicker, drained in `stop` before
        // it goes.
        let ok = unsafe {
            *self.dev.get() = dev;
            sys::vtbrs_task_init(self.task.get(), Some(kick_task), arg);
            sys::vtbrs_tq_create(self.tq.get(), name.as_ptr(), sys::vtbrs_kick_cpu()) == 0
        };
        if ok {
            self.on.store(true, Ordering::Release);
        }
        ok
    }

    /// Keeps the calling thread (the balloon thread) off the kick thread's
    /// CPU, so that they run at the same time.
    pub fn avoid_my_cpu(&self) {
        // SAFETY: changes only the calling thread's CPU set.
        unsafe { sys::vtbrs_avoid_cpu(sys::vtbrs_kick_cpu()) }
    }

    /// Waits for the task to finish what was posted and turns the kicker
    /// off. Called when nothing posts concurrently (threads stopped, lowmem
    /// handler gone).
    pub fn stop(&self) {
        // SAFETY: `tq` was written by `start` before any post and is read
        // only here and in `post`.
        let tq = unsafe { *self.tq.get() };
        if !tq.is_null() {
            // SAFETY: our taskqueue and task.
            unsafe { sys::vtbrs_tq_drain(tq, self.task.get()) };
        }
        let _g = self.ring.lock();
        self.on.store(false, Ordering::Release);
    }

    /// Frees the taskqueue and the lock.
    ///
    /// # Safety
    /// Once, after `stop`, when nothing uses the kicker any more.
    pub unsafe fn destroy(&self) {
        // SAFETY: per the contract.
        unsafe {
            let tq = *self.tq.get();
            if !tq.is_null() {
                sys::vtbrs_tq_free(tq);
            }
            self.ring.destroy();
        }
    }

    /// Hands `len` bytes at `buf` (a DMA slot that stays put until the host
    /// returns it) to the host on `vq`, with `cookie`: through the task, or
    /// in place when `now` (one urgent buffer: vm_lowmem, where the handoff
    /// would only add latency) or while the kicker is off.
    pub fn post(
        &self,
        vq: *mut sys::virtqueue,
        cookie: *mut c_void,
        buf: *const u8,
        len: usize,
        now: bool,
    ) -> Result<(), Error> {
        let g = self.ring.lock();
        if now || !self.on.load(Ordering::Acquire) {
            // Notifying under the ring lock keeps the task from enqueueing
            // meanwhile. (A notification the task makes without the lock
            // reads only the host's NO_NOTIFY flag, as EVENT_IDX is not
            // negotiated, so it cannot be misled by this enqueue either.)
            // SAFETY: the ring lock makes us the only user of the queue's
            // producer side; the buffer outlives the post (see above).
            let rc = unsafe { sys::vtbrs_vq_enqueue(vq, cookie, buf.cast(), len) };
            if rc != 0 {
                return Err(Error::QueueFull);
            }
            self.notify(vq);
            return Ok(());
        }
        // SAFETY: `pending` is ours while the ring lock is held.
        let pending = unsafe { &mut *self.pending.get() };
        let free = pending.iter_mut().find(|p| p.is_none());
        let Some(free) = free else {
            return Err(Error::QueueFull);
        };
        *free = Some(Pending {
            vq,
            cookie,
            buf,
            len,
        });
        drop(g);
        // SAFETY: `on` means `start` made the taskqueue, and `stop` (which
        // ends its use) does not run concurrently with posts.
        unsafe { sys::vtbrs_tq_enqueue(*self.tq.get(), self.task.get()) };
        Ok(())
    }

    /// Records the balloon size for config `actual`; written by the task
    /// (or in place while the kicker is off). False: write it in place.
    pub fn set_actual(&self, actual: u32) -> bool {
        if !self.on.load(Ordering::Acquire) {
            return false;
        }
        self.actual
            .store(PENDING_ACTUAL | u64::from(actual), Ordering::Release);
        // SAFETY: as in `post`.
        unsafe { sys::vtbrs_tq_enqueue(*self.tq.get(), self.task.get()) };
        true
    }

    /// Takes a returned buffer's cookie off `vq`, if any.
    pub fn dequeue(&self, vq: *mut sys::virtqueue) -> *mut c_void {
        let _g = self.ring.lock();
        // SAFETY: the ring lock serializes us with the task's enqueues; the
        // balloon lock with other consumers.
        unsafe { sys::vtbrs_vq_dequeue(vq) }
    }

    /// Notifies the host about `vq`, timing it.
    fn notify(&self, vq: *mut sys::virtqueue) {
        let t0 = now_us();
        // SAFETY: the callers make sure nobody enqueues on `vq` meanwhile
        // (ring lock held, or the task being the only producer).
        unsafe { sys::vtbrs_vq_notify(vq) };
        self.notify_us.add(now_us().saturating_sub(t0));
    }

    /// The task: enqueue what was posted, then notify without the lock.
    fn run(&self) {
        let mut todo = [None; MAX_PENDING];
        {
            let _g = self.ring.lock();
            // SAFETY: `pending` is ours while the ring lock is held.
            let pending = unsafe { &mut *self.pending.get() };
            for (slot, p) in todo.iter_mut().zip(pending.iter_mut()) {
                let Some(post) = p.take() else { continue };
                // SAFETY: the ring lock serializes enqueue and dequeue.
                let rc = unsafe {
                    sys::vtbrs_vq_enqueue(post.vq, post.cookie, post.buf.cast(), post.len)
                };
                // A buffer that cannot be enqueued (the ring has room for
                // every slot, so never expected) is one the balloon's
                // bounded wait then times out on and counts.
                if rc == 0 {
                    *slot = Some(post.vq);
                }
            }
        }
        let actual = self.actual.swap(0, Ordering::AcqRel);
        if actual & PENDING_ACTUAL != 0 {
            // SAFETY: `dev` is our attached device (set in `start`); `actual`
            // is the driver-writable config field.
            unsafe {
                sys::vtbrs_config_write4(
                    *self.dev.get(),
                    config_offset::ACTUAL as i32,
                    actual as u32,
                )
            };
        }
        let mut notified: [*mut sys::virtqueue; 2] = [core::ptr::null_mut(); 2];
        for vq in todo.into_iter().flatten() {
            if notified.contains(&vq) {
                continue;
            }
            // Only this task enqueues while the kicker is on, so the ring is
            // consistent without the lock; QEMU does the host's work here,
            // on this thread's CPU.
            self.notify(vq);
            if let Some(n) = notified.iter_mut().find(|n| n.is_null()) {
                *n = vq;
            }
        }
    }
}

/// Taskqueue entry point.
///
/// # Safety
/// `arg` is the [`Kick`] that `start` registered, alive until `stop` drained
/// the task.
unsafe extern "C" fn kick_task(arg: *mut c_void, _pending: i32) {
    // SAFETY: per the contract.
    let kick = unsafe { &*arg.cast::<Kick>() };
    kick.run();
}
