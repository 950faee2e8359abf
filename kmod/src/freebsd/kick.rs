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
//! go of QEMU's big lock, so there they still take turns: measured, the
//! kicker costs more than it saves there, and `kick_thread` defaults to 0,
//! notifying in place.)
//!
//! Locking: `ring` serializes enqueue (here) with dequeue (the balloon side)
//! on the inflate and deflate queues. While the kicker is on, only its task
//! enqueues, so the notifications it makes after dropping the lock see a
//! ring nobody else is adding to. Off (before start, after stop, or when
//! the taskqueue could not be made), posts enqueue and notify in place.

use core::cell::UnsafeCell;
use core::ffi::{c_void, CStr};
use core::ptr::{addr_of, addr_of_mut, null_mut};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use super::device::{dequeue, enqueue, notify, write_config};
use super::kern::{ticks, Dev};
use super::sync::Mutex;
use super::sys;
use crate::balloon::MAX_INFLIGHT;
use crate::counters::Counter;
use crate::platform::Error;
use crate::protocol::{config_offset, Features};

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

/// The kicker, initialized in place in the driver state ([`Kick::init`]);
/// off (posts notify in place) until [`Kick::start`].
pub struct Kick {
    ring: Mutex,
    /// Our taskqueue (null: none); taskqueue_thread_enqueue reads it here.
    tq: AtomicPtr<sys::taskqueue>,
    task: UnsafeCell<sys::task>,
    on: AtomicBool,
    /// Buffers posted but not yet enqueued; under `ring`.
    pending: UnsafeCell<[Option<Pending>; MAX_PENDING]>,
    /// Time inside notifications, in ticks of [`ticks`] (as the other
    /// clocks here): under QEMU, the host's own work on the buffers (it
    /// discards the pages before returning).
    pub notify_us: Counter,
    /// The task's own work: enqueueing and config writes, its
    /// notifications not counted.
    pub task_us: Counter,
    /// From the first buffer handed over until the task ran, summed over
    /// the task's runs (latency of the hand-off).
    pub handoff_us: Counter,
    /// When the oldest buffer still waiting for the task was handed over
    /// (a [`ticks`] value; 0: none waiting); under `ring`.
    waiting_since: AtomicU64,
    /// The device, for config writes the task makes.
    dev: Dev,
    features: Features,
    /// Balloon size for config `actual` not yet written: bit 32 set when
    /// pending. A config write traps to the host like a notification does,
    /// so it is made from the kick thread too.
    actual: AtomicU64,
}

// SAFETY: `pending` is only touched with `ring` held; `task` only by the
// taskqueue(9) functions, which synchronize themselves; `features` does
// not change after `init`; the rest are Sync (atomics, a lock, Dev).
unsafe impl Sync for Kick {}

/// The CPU the kick thread runs on, none with a single CPU: the last one
/// started, the least likely to be busy with the boot CPU's work. Taken
/// from `all_cpus`, not `mp_maxid`: on arm64 a CPU that failed to start
/// keeps its id below `mp_maxid` but is not in `all_cpus` (start_cpu in
/// arm64/mp_machdep.c), and a thread cannot be pinned to it.
fn kick_cpu() -> Option<usize> {
    // SAFETY: set once at boot (CPUs are not hot-plugged on FreeBSD).
    let cpus = unsafe { addr_of!(sys::all_cpus).read() };
    let bits = core::mem::size_of_val(&cpus.__bits[0]) * 8;
    let present: u32 = cpus.__bits.iter().map(|w| w.count_ones()).sum();
    let last = cpus
        .__bits
        .iter()
        .enumerate()
        .rev()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| i * bits + (bits - 1 - w.leading_zeros() as usize));
    last.filter(|_| present > 1)
}

/// Sets or clears `cpu` in `set` (CPU_SET, CPU_CLR).
fn cpu_bit(set: &mut sys::cpuset_t, cpu: usize, on: bool) {
    let bits = core::mem::size_of_val(&set.__bits[0]) * 8;
    if let Some(word) = set.__bits.get_mut(cpu / bits) {
        let bit = 1 << (cpu % bits);
        if on {
            *word |= bit;
        } else {
            *word &= !bit;
        }
    }
}

impl Kick {
    /// True when there is a CPU for the kick thread besides the balloon
    /// thread's.
    pub fn has_other_cpu() -> bool {
        kick_cpu().is_some()
    }

    /// Initializes the kicker at `slot`, in place, off.
    ///
    /// # Safety
    /// As for [`Mutex::init`].
    pub unsafe fn init(slot: *mut Kick, dev: Dev, features: Features, name: &'static CStr) {
        // SAFETY: per the contract the slot is ours and not yet in use; the
        // task's argument is this kicker, which outlives the task (`stop`).
        unsafe {
            addr_of_mut!((*slot).tq).write(AtomicPtr::new(null_mut()));
            addr_of_mut!((*slot).on).write(AtomicBool::new(false));
            addr_of_mut!((*slot).pending).write(UnsafeCell::new([None; MAX_PENDING]));
            addr_of_mut!((*slot).notify_us).write(Counter::new());
            addr_of_mut!((*slot).task_us).write(Counter::new());
            addr_of_mut!((*slot).handoff_us).write(Counter::new());
            addr_of_mut!((*slot).waiting_since).write(AtomicU64::new(0));
            addr_of_mut!((*slot).dev).write(dev);
            addr_of_mut!((*slot).features).write(features);
            addr_of_mut!((*slot).actual).write(AtomicU64::new(0));
            sys::vtbrs_task_init(
                addr_of_mut!((*slot).task).cast(),
                Some(kick_task),
                slot.cast(),
            );
            Mutex::init(addr_of_mut!((*slot).ring), name);
        }
    }

    /// Starts the taskqueue, its thread on the kick CPU; on failure the
    /// kicker stays off (posts notify in place), which is correct, only
    /// slower.
    ///
    /// # Safety
    /// Once, before any post; `self` outlives [`Kick::stop`].
    pub unsafe fn start(&self, name: &'static CStr) -> bool {
        let tqp = self.tq.as_ptr();
        // SAFETY: taskqueue_thread_enqueue finds the queue through `tqp`,
        // which lives as long as the kicker; nobody uses `tq` before this
        // returns (per the contract).
        let tq = unsafe {
            sys::taskqueue_create(
                name.as_ptr(),
                sys::M_NOWAIT as i32,
                Some(sys::taskqueue_thread_enqueue),
                tqp.cast(),
            )
        };
        if tq.is_null() {
            return false;
        }
        self.tq.store(tq, Ordering::Release);
        // SAFETY: our new taskqueue; the mask is a full cpuset_t (the
        // bindings are built for the SMP kernel's MAXCPU).
        let rc = unsafe {
            match kick_cpu() {
                None => sys::taskqueue_start_threads(
                    tqp,
                    1,
                    sys::PVM as i32,
                    c"%s".as_ptr(),
                    name.as_ptr(),
                ),
                Some(cpu) => {
                    let mut mask = sys::cpuset_t::default();
                    cpu_bit(&mut mask, cpu, true);
                    sys::taskqueue_start_threads_cpuset(
                        tqp,
                        1,
                        sys::PVM as i32,
                        &mut mask,
                        c"%s".as_ptr(),
                        name.as_ptr(),
                    )
                }
            }
        };
        if rc == 0 {
            self.on.store(true, Ordering::Release);
        }
        rc == 0
    }

    /// Keeps the calling thread (the balloon thread) off the kick thread's
    /// CPU, so that they run at the same time.
    pub fn avoid_my_cpu(&self) {
        let Some(cpu) = kick_cpu() else { return };
        // SAFETY: all_cpus is set at boot; only the calling thread's CPU set
        // changes. A failure leaves it as it was, which is only slower.
        unsafe {
            let mut mask = addr_of!(sys::all_cpus).read();
            cpu_bit(&mut mask, cpu, false);
            let _ = sys::cpuset_setthread(sys::vtbrs_curthread_tid(), &mut mask);
        }
    }

    /// Waits for the task to finish what was posted and turns the kicker
    /// off. Called when nothing posts concurrently (threads stopped, lowmem
    /// handler gone).
    pub fn stop(&self) {
        let tq = self.tq.load(Ordering::Acquire);
        if !tq.is_null() {
            // SAFETY: our taskqueue and task.
            unsafe { sys::taskqueue_drain(tq, self.task.get()) };
        }
        let _g = self.ring.lock();
        self.on.store(false, Ordering::Release);
    }

    /// Frees the taskqueue and the lock.
    ///
    /// # Safety
    /// Once, after `stop`, when nothing uses the kicker any more.
    pub unsafe fn destroy(&self) {
        let tq = self.tq.load(Ordering::Acquire);
        // SAFETY: per the contract.
        unsafe {
            if !tq.is_null() {
                sys::taskqueue_free(tq);
            }
            self.ring.destroy();
        }
    }

    fn enqueue_task(&self) {
        // SAFETY: `on` (checked by the callers) means `start` made the
        // taskqueue, and `stop` (which ends its use) does not run
        // concurrently with posts.
        unsafe { sys::taskqueue_enqueue(self.tq.load(Ordering::Acquire), self.task.get()) };
    }

    /// Hands `len` bytes at `buf` (a DMA slot that stays put until the host
    /// returns it) to the host on `vq`, with `cookie`: through the task, or
    /// in place when `now` (one urgent buffer: vm_lowmem, where the handoff
    /// would only add latency) or while the kicker is off. Returns the
    /// ticks spent notifying in place (0 when handed over).
    ///
    /// # Safety
    /// `vq` is one of the device's inflate and deflate queues, the caller
    /// its only poster; `buf` stays put and unchanged until the host
    /// returns the buffer or the device is reset.
    pub unsafe fn post(
        &self,
        vq: *mut sys::virtqueue,
        cookie: *mut c_void,
        buf: *const u8,
        len: usize,
        now: bool,
    ) -> Result<u64, Error> {
        let g = self.ring.lock();
        if now || !self.on.load(Ordering::Acquire) {
            // Notifying under the ring lock keeps the task from enqueueing
            // meanwhile. (A notification the task makes without the lock
            // reads only the host's NO_NOTIFY flag, as EVENT_IDX is not
            // negotiated, so it cannot be misled by this enqueue either.)
            // SAFETY: the ring lock makes us the only user of the queue's
            // producer side; the buffer outlives the post (see above).
            unsafe { enqueue(vq, cookie, buf, len)? };
            return Ok(self.notify(vq));
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
        if self.waiting_since.load(Ordering::Relaxed) == 0 {
            self.waiting_since.store(ticks().max(1), Ordering::Relaxed);
        }
        drop(g);
        self.enqueue_task();
        Ok(0)
    }

    /// Records the balloon size for config `actual`; written by the task
    /// (or in place while the kicker is off). False: write it in place.
    pub fn set_actual(&self, actual: u32) -> bool {
        if !self.on.load(Ordering::Acquire) {
            return false;
        }
        self.actual
            .store(PENDING_ACTUAL | u64::from(actual), Ordering::Release);
        self.enqueue_task();
        true
    }

    /// Takes a returned buffer's cookie off `vq`, if any.
    ///
    /// # Safety
    /// `vq` is one of the device's queues, the caller its only consumer.
    pub unsafe fn dequeue(&self, vq: *mut sys::virtqueue) -> *mut c_void {
        let _g = self.ring.lock();
        // SAFETY: the ring lock serializes us with the task's enqueues; the
        // balloon lock with other consumers.
        unsafe { dequeue(vq) }
    }

    /// Notifies the host about `vq`, timing it; the ticks it took.
    fn notify(&self, vq: *mut sys::virtqueue) -> u64 {
        let t0 = ticks();
        // SAFETY: the callers make sure nobody enqueues on `vq` meanwhile
        // (ring lock held, or the task being the only producer).
        unsafe { notify(vq) };
        let t = ticks().saturating_sub(t0);
        self.notify_us.add(t);
        t
    }

    /// The task: enqueue what was posted, then notify without the lock.
    fn run(&self) {
        let t0 = ticks();
        let mut notify_ticks = 0;
        let mut todo = [None; MAX_PENDING];
        {
            let _g = self.ring.lock();
            let since = self.waiting_since.swap(0, Ordering::Relaxed);
            if since != 0 {
                self.handoff_us.add(t0.saturating_sub(since));
            }
            // SAFETY: `pending` is ours while the ring lock is held.
            let pending = unsafe { &mut *self.pending.get() };
            for (slot, p) in todo.iter_mut().zip(pending.iter_mut()) {
                let Some(post) = p.take() else { continue };
                // SAFETY: the ring lock serializes enqueue and dequeue.
                let ok = unsafe { enqueue(post.vq, post.cookie, post.buf, post.len) };
                // A buffer that cannot be enqueued (the ring has room for
                // every slot, so never expected) is one the balloon's
                // bounded wait then times out on and counts.
                if ok.is_ok() {
                    *slot = Some(post.vq);
                }
            }
        }
        let actual = self.actual.swap(0, Ordering::AcqRel);
        if actual & PENDING_ACTUAL != 0 {
            write_config(
                self.dev,
                self.features,
                config_offset::ACTUAL,
                actual as u32,
            );
        }
        let mut notified: [*mut sys::virtqueue; 2] = [core::ptr::null_mut(); 2];
        for vq in todo.into_iter().flatten() {
            if notified.contains(&vq) {
                continue;
            }
            // Only this task enqueues while the kicker is on, so the ring is
            // consistent without the lock; QEMU does the host's work here,
            // on this thread's CPU.
            notify_ticks += self.notify(vq);
            if let Some(n) = notified.iter_mut().find(|n| n.is_null()) {
                *n = vq;
            }
        }
        let total = ticks().saturating_sub(t0);
        self.task_us.add(total.saturating_sub(notify_ticks));
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
