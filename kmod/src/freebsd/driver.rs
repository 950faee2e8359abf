//! Newbus methods and the driver's threads, handlers and lifecycle.
//!
//! attach: negotiate features, allocate queues and the state, add sysctl
//! nodes. attach_completed (after DRIVER_OK): first stats buffer, push
//! timer, the balloon and reporting kthreads, the vm_lowmem handler; when
//! the device was attached outside virtio_pci's probe-and-attach (devctl),
//! nobody calls attach_completed and [`start_check`] starts the driver.
//! detach: stop everything that could start work, wait for the threads,
//! deflate with bounded waits, reset the device, give back every page, wait
//! out running interrupt handlers, free the state.

use core::ffi::c_void;
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::device::{queue_slot, Buffers, KernelDevice, PfnBuffers, Queues, StatsBuffers};
use super::kick::Kick;
use super::memory::{now_ms, now_us, vm_counters, KernelBlocks, KernelMemory, Words};
use super::sync::{wakeup, MtxCell, Mutex, SxCell};
use super::{cstr, sys, sysctl};
use crate::balloon::{Balloon, InflateLimit, Relief, Step, Tunables};
use crate::counters::{Counter, Gauge};
use crate::platform::VmCounters;
use crate::pressure::{floor_default_pages, inflate_allowance, OomTunables, Pressure};
use crate::protocol::{feature_names, Features, Queue};
use crate::reporting::{Policy, ReportEnv, Reporter};
use crate::stats::{PushTimer, Stats};

/// Features we ask for; STATS_PUSH only when offered together with STATS_VQ.
const WANTED: Features = Features::MUST_TELL_HOST
    .union(Features::STATS_VQ)
    .union(Features::DEFLATE_ON_OOM)
    .union(Features::REPORTING)
    .union(Features::STATS_PUSH)
    .union(Features::VERSION_1);

/// A TAILQ head (two pointers), allocated for the ballooned list.
const PAGELIST_HEAD_BYTES: usize = 16;

/// Pause after a failed balloon step (host timeout, full queue).
const FAILED_STEP_PAUSE_MS: u32 = 1_000;

pub struct BalloonSide {
    pub balloon: Balloon,
    pub pressure: Pressure,
    pub bufs: PfnBuffers,
    pub mem: KernelMemory,
}

pub struct StatsSide {
    pub stats: Stats,
    pub bufs: StatsBuffers,
    pub timer: PushTimer,
}

pub struct ReportSide {
    pub reporter: Option<Reporter<*mut sys::vm_page, Words>>,
    pub blocks: KernelBlocks,
}

/// Everything one attached device owns. Allocated zeroed with malloc(9) and
/// initialized in place (it holds kernel locks and DMA buffers, so it never
/// moves and is never built on the kernel stack).
pub struct State {
    pub dev: sys::device_t,
    pub features: Features,
    pub queues: Queues,
    /// Posts inflate and deflate buffers from another CPU.
    pub kick: Kick,
    /// Waits for the host and the threads' sleeps.
    pub wait: Mutex,
    pub balloon: SxCell<BalloonSide>,
    pub stats: MtxCell<StatsSide>,
    pub report: SxCell<ReportSide>,
    pub callout: core::cell::UnsafeCell<sys::callout>,
    /// Our sysctl nodes, removed (and their running handlers waited for)
    /// before the state is freed.
    pub sysctl_ctx: core::cell::UnsafeCell<sys::sysctl_ctx_list>,
    /// Starts the driver when attach_completed never comes (see start_check).
    start_task: core::cell::UnsafeCell<sys::task>,
    /// Set by whichever of attach_completed and start_check starts first.
    start_claimed: AtomicBool,
    lowmem_tag: *mut c_void,
    /// Detach in progress: threads exit, handlers do nothing.
    pub stopping: AtomicBool,
    /// A config change the balloon thread has not seen yet (WANTSIZE).
    config_pending: AtomicBool,
    /// vm_lowmem ran: the balloon thread should look at the pressure watch.
    lowmem_kick: AtomicBool,
    /// vm_lowmem seen, for the reporter.
    pressure: AtomicBool,
    threads: AtomicU32,
    started: AtomicBool,
    // Settings (sysctl / loader tunables).
    pub debug: AtomicU32,
    pub oom_batch: AtomicU32,
    pub oom_headroom: AtomicU32,
    pub oom_watch_ms: AtomicU32,
    pub oom_interval_ms: AtomicU32,
    /// Guest-side floor, in pages (0: none).
    pub floor_pages: AtomicU64,
    /// The pressure watch runs (for sysctl).
    pub oom_watching: AtomicBool,
    pub inflate_run: AtomicU32,
    pub linux_tags: AtomicBool,
    /// Post through the kick thread (read when the driver starts).
    pub kick_thread: AtomicBool,
    pub report_enabled: AtomicBool,
    pub report_order: u32,
    pub diag_last: core::cell::UnsafeCell<sys::timeval>,
    pub diag_count: core::cell::UnsafeCell<i32>,
    pub features_text: [u8; 160],
    pub accounting_text: [u8; 96],
    pub push_interval: AtomicU64,
    // Costs, for sysctl.
    /// Guest time the last vm_lowmem handler took, in microseconds.
    pub lowmem_last_us: Gauge,
    /// Times the balloon / reporting kthread woke from a sleep.
    pub thread_wakeups: Counter,
    pub report_wakeups: Counter,
    /// The reporting bitmap's size (0 without reporting).
    pub bitmap_bytes: Gauge,
}

// SAFETY: shared between kernel threads; every mutable part is an atomic or
// behind a kernel lock (see the field docs).
unsafe impl Sync for State {}

impl State {
    /// Memory this device holds whatever the balloon's size: the state, its
    /// DMA slots, the ballooned list head and the reporting bitmap. Ballooned
    /// pages cost nothing more (they are tracked in their own vm_page). Our
    /// kernel threads' stacks are not counted.
    pub fn fixed_bytes(&self) -> u64 {
        (core::mem::size_of::<State>()
            + PfnBuffers::BYTES
            + StatsBuffers::BYTES
            + PAGELIST_HEAD_BYTES) as u64
            + self.bitmap_bytes.get()
    }

    fn chan(&self) -> *const c_void {
        (&self.wait as *const Mutex).cast()
    }

    fn thread_chan(&self) -> *const c_void {
        (&self.threads as *const AtomicU32).cast()
    }

    /// The reporting kthread's own channel: waking it (reporting switched
    /// on, detach) does not wake the balloon thread.
    pub fn report_chan(&self) -> *const c_void {
        (&self.report_enabled as *const AtomicBool).cast()
    }

    /// A view of the device that posts from `bufs`.
    fn device<'a>(&'a self, bufs: Buffers<'a>) -> KernelDevice<'a> {
        KernelDevice {
            dev: self.dev,
            features: self.features,
            queues: &self.queues,
            wait: &self.wait,
            bufs,
            kick: None,
            urgent: false,
        }
    }

    fn balloon_device<'a>(&'a self, bufs: &'a mut PfnBuffers) -> KernelDevice<'a> {
        KernelDevice {
            kick: Some(&self.kick),
            ..self.device(Buffers::Pfn(bufs))
        }
    }

    /// The pressure policy's settings as they are now.
    pub fn oom_tunables(&self) -> OomTunables {
        OomTunables {
            min_batch_pages: self.oom_batch.load(Ordering::Relaxed),
            headroom_pages: self.oom_headroom.load(Ordering::Relaxed),
            watch_ms: self.oom_watch_ms.load(Ordering::Relaxed),
            interval_ms: self.oom_interval_ms.load(Ordering::Relaxed),
        }
    }

    /// A diagnostic line, only with `debug` on and at most a few a second.
    pub fn diag(&self, msg: &core::ffi::CStr, value: u64) {
        if self.debug.load(Ordering::Relaxed) == 0 {
            return;
        }
        // SAFETY: the rate-limit state is only touched here, and concurrent
        // updates merely let an extra line through (as in C drivers).
        let ok = unsafe { sys::vtbrs_ratecheck(self.diag_last.get(), self.diag_count.get(), 5) };
        if ok != 0 {
            // SAFETY: `dev` is attached; `msg` is NUL-terminated.
            unsafe { sys::vtbrs_log_u64(self.dev, msg.as_ptr(), value) };
        }
    }

    pub fn with_stats<R>(
        &self,
        f: impl FnOnce(&mut Stats, &mut KernelDevice<'_>, &VmCounters) -> R,
    ) -> R {
        let vm = vm_counters();
        self.stats.with(|side| {
            let mut dev = self.device(Buffers::Stats(&mut side.bufs));
            f(&mut side.stats, &mut dev, &vm)
        })
    }
}

fn log(dev: sys::device_t, msg: &core::ffi::CStr) {
    // SAFETY: `dev` is our device; `msg` is NUL-terminated.
    unsafe { sys::vtbrs_log(dev, msg.as_ptr()) }
}

fn state_of<'a>(dev: sys::device_t) -> Option<&'a State> {
    // SAFETY: the softc holds NULL or the State this driver allocated in
    // attach, freed only at the end of detach.
    unsafe { sys::vtbrs_softc_get(dev).cast::<State>().as_ref() }
}

#[no_mangle]
extern "C" fn vtbrs_rs_attach(dev: sys::device_t) -> i32 {
    match attach(dev) {
        Ok(()) => 0,
        Err(errno) => {
            log(dev, cstr!("attach failed"));
            vtbrs_rs_detach(dev);
            errno
        }
    }
}

fn attach(dev: sys::device_t) -> Result<(), i32> {
    // SAFETY: negotiation on our device, during attach as virtio(4) requires.
    let got = unsafe { sys::vtbrs_negotiate(dev, Stats::filter_features(WANTED).bits()) };
    if got == u64::MAX {
        return Err(sys::ENXIO as i32);
    }
    let features = Stats::filter_features(Features::from_bits_truncate(got));
    let st = alloc_state(dev, features)?;
    // SAFETY: the state is fully initialized; the softc owns it from now on.
    unsafe { sys::vtbrs_softc_set(dev, (st as *const State).cast_mut().cast()) };
    alloc_buffers(st)?;
    alloc_queues(st)?;
    // SAFETY: queues are allocated; virtio(4) sets up their interrupts.
    if unsafe { sys::vtbrs_setup_intr(dev) } != 0 {
        return Err(sys::ENXIO as i32);
    }
    if features.contains(Features::REPORTING) {
        start_reporter(st);
    }
    sysctl::register(st);
    // Last: from here the task may run (once newbus releases its lock).
    // SAFETY: initialized in alloc_state; drained in detach.
    unsafe { sys::vtbrs_task_enqueue(st.start_task.get()) };
    Ok(())
}

/// Allocates the zeroed state and initializes every field in place.
fn alloc_state(dev: sys::device_t, features: Features) -> Result<&'static State, i32> {
    // SAFETY: malloc(9) M_NOWAIT|M_ZERO, checked below.
    let p = unsafe { sys::vtbrs_malloc(core::mem::size_of::<State>()) }.cast::<State>();
    if p.is_null() {
        return Err(sys::ENOMEM as i32);
    }
    // SAFETY: TAILQ head allocation, checked below.
    let list = unsafe { sys::vtbrs_pagelist_new() };
    if list.is_null() {
        // SAFETY: allocated just above, not shared.
        unsafe { sys::vtbrs_free(p.cast()) };
        return Err(sys::ENOMEM as i32);
    }
    let tun = Tunables::default();
    // SAFETY: `p` is a fresh, zeroed, exclusively owned allocation of the
    // right size. Zero bytes are valid for the locks' storage, atomics,
    // integers, arrays of bytes and raw pointers; every other field is
    // written here before the state is shared.
    unsafe {
        addr_of_mut!((*p).dev).write(dev);
        addr_of_mut!((*p).features).write(features);
        addr_of_mut!((*p).report_order).write(Policy::default().order);
        let side = (*p).balloon.value_ptr();
        addr_of_mut!((*side).balloon).write(Balloon::new(features, tun));
        addr_of_mut!((*side).pressure).write(Pressure::new());
        addr_of_mut!((*side).mem).write(KernelMemory { list });
        sys::vtbrs_sysctl_ctx_init((*p).sysctl_ctx.get());
        sys::vtbrs_task_init((*p).start_task.get(), Some(start_check), p.cast());
        let stats = (*p).stats.value_ptr();
        addr_of_mut!((*stats).stats).write(Stats::new(features, false));
        addr_of_mut!((*stats).timer).write(PushTimer::Off);
        let rep = (*p).report.value_ptr();
        addr_of_mut!((*rep).reporter).write(None);
        addr_of_mut!((*rep).blocks).write(KernelBlocks);
        let oom = OomTunables::default();
        (*p).oom_batch.store(oom.min_batch_pages, Ordering::Relaxed);
        (*p).oom_headroom
            .store(oom.headroom_pages, Ordering::Relaxed);
        (*p).oom_watch_ms.store(oom.watch_ms, Ordering::Relaxed);
        (*p).oom_interval_ms
            .store(oom.interval_ms, Ordering::Relaxed);
        (*p).floor_pages
            .store(floor_default_pages(&vm_counters()), Ordering::Relaxed);
        (*p).inflate_run
            .store(tun.inflate_run_pages, Ordering::Relaxed);
        (*p).report_enabled.store(true, Ordering::Relaxed);
        (*p).kick_thread.store(true, Ordering::Relaxed);
        let st = &*p;
        st.wait.init(cstr!("vtballoonrs wait"));
        st.kick.init(cstr!("vtballoonrs ring"));
        st.balloon.init(cstr!("vtballoonrs balloon"));
        st.report.init(cstr!("vtballoonrs report"));
        st.stats.mtx.init(cstr!("vtballoonrs stats"));
        sys::vtbrs_callout_init(st.callout.get(), st.stats.mtx.raw());
        write_text(&mut (*p).features_text, feature_names(features));
        let accounting: &[&str] = if features.contains(Features::DEFLATE_ON_OOM) {
            &["used: the guest takes it back under memory pressure (deflate-on-oom)"]
        } else {
            &["removed: the guest has it back only when the host lowers its target"]
        };
        write_text(&mut (*p).accounting_text, accounting.iter().copied());
        Ok(st)
    }
}

/// The DMA slots the device reads (the state itself is not page-aligned).
fn alloc_buffers(st: &State) -> Result<(), i32> {
    let ok = st.balloon.with(|side| side.bufs.alloc()) && st.stats.with(|side| side.bufs.alloc());
    if ok {
        Ok(())
    } else {
        Err(sys::ENOMEM as i32)
    }
}

/// Writes words separated by commas, NUL-terminated, truncating.
fn write_text<'a>(buf: &mut [u8], words: impl Iterator<Item = &'a str>) {
    let mut n = 0;
    for (i, w) in words.enumerate() {
        let sep: &[u8] = if i > 0 { b"," } else { b"" };
        for &b in sep.iter().chain(w.as_bytes()) {
            if n + 1 < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    }
    buf[n] = 0;
}

fn alloc_queues(st: &State) -> Result<(), i32> {
    let mut reqs: [sys::vtbrs_vq_req; 5] = Default::default();
    let mut n = 0;
    let queues = (&st.queues as *const Queues).cast_mut();
    for q in [
        Queue::Inflate,
        Queue::Deflate,
        Queue::Stats,
        Queue::FreePageHint,
        Queue::Reporting,
    ] {
        let Some(index) = q.index(st.features) else {
            continue;
        };
        let (kind, name) = match q {
            Queue::Stats => (sys::VTBRS_INTR_STATS, cstr!("stats")),
            Queue::Inflate => (sys::VTBRS_INTR_WAKE, cstr!("inflate")),
            Queue::Deflate => (sys::VTBRS_INTR_WAKE, cstr!("deflate")),
            Queue::Reporting => (sys::VTBRS_INTR_WAKE, cstr!("reporting")),
            Queue::FreePageHint => (sys::VTBRS_INTR_WAKE, cstr!("hint")),
        };
        let r = &mut reqs[usize::from(index)];
        r.maxindirsz = 0;
        r.kind = kind as i32;
        // SAFETY: the queue array lives in the state; virtio fills it in.
        r.vqp = unsafe { addr_of_mut!((*queues)[queue_slot(q)]) };
        r.name = name.as_ptr();
        n += 1;
    }
    // SAFETY: `reqs[..n]` are filled in device order; pointers outlive the call.
    let rc = unsafe { sys::vtbrs_alloc_vqs(st.dev, n, reqs.as_mut_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

/// A virtqueue interrupt (ithread context: may take mutexes, never sleeps).
///
/// # Safety
/// `state` is the live State, from the softc under the shim's interrupt
/// count (vtbrs_intr_enter), which detach waits out before freeing it.
#[no_mangle]
unsafe extern "C" fn vtbrs_rs_intr(state: *mut c_void, kind: i32) {
    // SAFETY: per the contract.
    let st = unsafe { &*state.cast::<State>() };
    if kind == sys::VTBRS_INTR_STATS as i32 {
        stats_intr(st);
    } else {
        // Inflate, deflate and reporting queues: the waiting thread
        // dequeues; the interrupt only wakes it.
        let _g = st.wait.lock();
        wakeup(st.chan());
    }
}

/// Stats queue: the host returned a buffer; refill and requeue it here, with
/// the stats mutex (never sleeps).
fn stats_intr(st: &State) {
    if st.stopping.load(Ordering::Acquire) {
        return;
    }
    let vq = st.queues[queue_slot(Queue::Stats)];
    if vq.is_null() {
        return;
    }
    // A shared INTx line calls every queue's handler on every interrupt:
    // most calls find no returned buffer and need no VM counters.
    let returned = st.stats.with(|_| {
        // SAFETY: the stats queue is serialized by the stats mutex we hold.
        unsafe { sys::vtbrs_vq_nused(vq) > 0 || sys::vtbrs_vq_enable_intr(vq) != 0 }
    });
    if !returned {
        return;
    }
    st.with_stats(|stats, dev, vm| loop {
        if stats.interrupt(dev, vm).is_err() {
            st.diag(
                cstr!("stats: could not requeue, errors"),
                stats.counters().errors.get(),
            );
        }
        // SAFETY: the stats queue is serialized by the stats mutex we hold.
        if unsafe { sys::vtbrs_vq_enable_intr(vq) } == 0 {
            break;
        }
    });
}

#[no_mangle]
extern "C" fn vtbrs_rs_attach_completed(dev: sys::device_t) {
    let Some(st) = state_of(dev) else { return };
    start(st);
}

/// Taskqueue task queued at the end of attach. Newbus holds its topology
/// lock across probe, attach and virtio_pci's DRIVER_OK + attach_completed,
/// so once this task holds the lock, attach_completed has run, unless the
/// device was attached by `devctl attach` / `devctl set driver`, which call
/// device_probe_and_attach directly: then DRIVER_OK is set here (with
/// virtio_reinit_complete, which also enables modern queues) and the driver
/// started.
unsafe extern "C" fn start_check(arg: *mut c_void, _pending: i32) {
    // SAFETY: detach drains this task before freeing the State.
    let st = unsafe { &*arg.cast::<State>() };
    // SAFETY: the newbus topology lock, as any driver code may take it.
    unsafe { sys::vtbrs_topo_lock() };
    if !st.stopping.load(Ordering::Acquire) && !st.start_claimed.load(Ordering::Acquire) {
        log(
            st.dev,
            cstr!("attached outside virtio_pci's probe (devctl): setting DRIVER_OK"),
        );
        // SAFETY: our attached device; its queues are allocated.
        unsafe { sys::vtbrs_reinit_complete(st.dev) };
        start(st);
    }
    // SAFETY: taken above.
    unsafe { sys::vtbrs_topo_unlock() };
}

/// Everything that may notify the host: after DRIVER_OK, once.
fn start(st: &State) {
    if st.start_claimed.swap(true, Ordering::AcqRel) {
        return;
    }
    let dev = st.dev;
    for q in [
        Queue::Inflate,
        Queue::Deflate,
        Queue::Stats,
        Queue::Reporting,
    ] {
        let vq = st.queues[queue_slot(q)];
        if !vq.is_null() {
            // SAFETY: the queue exists; enabling interrupts is not a notification.
            unsafe { sys::vtbrs_vq_enable_intr(vq) };
        }
    }
    // DRIVER_OK is set: notifications may start.
    let linux_tags = st.linux_tags.load(Ordering::Relaxed);
    let timer = st.with_stats(|stats, kdev, vm| {
        *stats = Stats::new(st.features, linux_tags);
        stats.start(kdev, vm).unwrap_or(PushTimer::Off)
    });
    apply_push_timer(st, timer);
    let kick = st.kick_thread.load(Ordering::Relaxed);
    // SAFETY: once, before the balloon thread and lowmem handler can post;
    // detach stops it before the State goes.
    if kick && !unsafe { st.kick.start(dev, cstr!("vtballoonrs kick")) } {
        log(
            dev,
            cstr!("no kick taskqueue: notifying from the balloon thread"),
        );
    }
    st.config_pending.store(true, Ordering::Release);
    let reporting = st.features.contains(Features::REPORTING);
    let threads: [(ThreadFn, _, bool); 2] = [
        (balloon_thread, cstr!("vtballoonrs"), true),
        (report_thread, cstr!("vtballoonrs report"), reporting),
    ];
    for (f, name, wanted) in threads {
        if !wanted {
            continue;
        }
        st.threads.fetch_add(1, Ordering::AcqRel);
        let arg = (st as *const State).cast_mut().cast();
        // SAFETY: the thread gets the State, which outlives it (detach waits
        // for every thread to exit before freeing it).
        if unsafe { sys::vtbrs_kthread_add(Some(f), arg, name.as_ptr()) } != 0 {
            st.threads.fetch_sub(1, Ordering::AcqRel);
            log(dev, cstr!("cannot start a kthread"));
        }
    }
    if st.features.contains(Features::DEFLATE_ON_OOM) {
        let arg = (st as *const State).cast_mut().cast();
        // SAFETY: deregistered in detach before the State is freed.
        let tag = unsafe { sys::vtbrs_lowmem_register(Some(lowmem), arg) };
        // SAFETY: written once here, read in detach after the threads stopped.
        unsafe { *addr_of_mut!((*(st as *const State).cast_mut()).lowmem_tag) = tag };
    }
    st.started.store(true, Ordering::Release);
}

type ThreadFn = unsafe extern "C" fn(*mut c_void);

fn start_reporter(st: &State) {
    // SAFETY: reads the end of physical memory.
    let max_phys = unsafe { sys::vtbrs_max_phys() };
    let policy = Policy::default();
    let words = Reporter::<*mut sys::vm_page, Words>::bitmap_words(
        max_phys,
        u64::from(sys::PAGE_SIZE),
        policy.min_order,
    );
    st.bitmap_bytes.set(words as u64 * 8);
    let Some(bits) = Words::new(words) else {
        st.bitmap_bytes.set(0);
        log(
            st.dev,
            cstr!("no memory for the reporting bitmap: reporting off"),
        );
        return;
    };
    st.report.with(|side| {
        side.reporter = Some(Reporter::new(policy, u64::from(sys::PAGE_SIZE), bits));
    });
}

pub fn apply_push_timer(st: &State, timer: PushTimer) {
    let _g = st.stats.mtx.lock();
    // SAFETY: the stats mutex is held, as the callout requires. Detach sets
    // `stopping`, then takes this mutex before draining the callout, so a
    // timer armed here is either seen by the drain or never armed.
    unsafe {
        (*st.stats.value_ptr()).timer = timer;
        match timer {
            PushTimer::Off => sys::vtbrs_callout_stop(st.callout.get()),
            PushTimer::Every(_) if st.stopping.load(Ordering::Acquire) => {}
            PushTimer::Every(ms) => {
                let arg = (st as *const State).cast_mut().cast();
                sys::vtbrs_callout_reset(st.callout.get(), ms, Some(push_tick), arg);
            }
        }
    }
    st.push_interval.store(
        match timer {
            PushTimer::Off => 0,
            PushTimer::Every(ms) => u64::from(ms),
        },
        Ordering::Relaxed,
    );
}

/// STATS_PUSH callout, run with the stats mutex held.
unsafe extern "C" fn push_tick(arg: *mut c_void) {
    // SAFETY: the callout is drained in detach before the State is freed.
    let st = unsafe { &*arg.cast::<State>() };
    let vm = vm_counters();
    // SAFETY: callout_init_mtx: the stats mutex is held while we run.
    unsafe {
        st.stats.with_held(|side| {
            let mut dev = st.device(Buffers::Stats(&mut side.bufs));
            let _ = side.stats.push_tick(&mut dev, &vm);
            if let PushTimer::Every(ms) = side.timer {
                if !st.stopping.load(Ordering::Acquire) {
                    sys::vtbrs_callout_reset(st.callout.get(), ms, Some(push_tick), arg);
                }
            }
        })
    }
}

/// VIRTIO_CONFIG_CHANGE (interrupt context).
///
/// # Safety
/// As for [`vtbrs_rs_intr`].
#[no_mangle]
unsafe extern "C" fn vtbrs_rs_config_change(state: *mut c_void) {
    // SAFETY: per the contract.
    let st = unsafe { &*state.cast::<State>() };
    if st.stopping.load(Ordering::Acquire) || !st.started.load(Ordering::Acquire) {
        return;
    }
    st.config_pending.store(true, Ordering::Release);
    {
        let _g = st.wait.lock();
        wakeup(st.thread_chan());
    }
    let timer = st.with_stats(|stats, kdev, vm| stats.config_changed(kdev, vm));
    let current = st.push_interval.load(Ordering::Relaxed);
    let new = match timer {
        PushTimer::Off => 0,
        PushTimer::Every(ms) => u64::from(ms),
    };
    if new != current {
        apply_push_timer(st, timer);
    }
}

/// The balloon kthread: sleeps until the host changes its config, then
/// resizes; no timer while idle. After memory pressure it also looks at free
/// memory every `oom_watch_interval_ms` for as long as the watch runs.
unsafe extern "C" fn balloon_thread(arg: *mut c_void) {
    // SAFETY: detach waits for this thread to exit before freeing the State.
    let st = unsafe { &*arg.cast::<State>() };
    st.kick.avoid_my_cpu();
    let mut idle = false;
    let mut pause_ms = 0u32;
    let mut look_ms: Option<u32> = None;
    loop {
        let mut config = false;
        {
            let g = st.wait.lock();
            loop {
                if st.stopping.load(Ordering::Acquire) {
                    break;
                }
                if st.config_pending.swap(false, Ordering::AcqRel) {
                    config = true;
                    break;
                }
                if st.lowmem_kick.swap(false, Ordering::AcqRel) {
                    break;
                }
                if !idle && pause_ms == 0 {
                    break;
                }
                // Idle: no timeout unless the pressure watch runs; backing
                // off: `pause_ms`, or the next look if sooner.
                let ms = match (idle, look_ms) {
                    (true, None) => 0,
                    (true, Some(l)) => l,
                    (false, None) => pause_ms,
                    (false, Some(l)) => pause_ms.min(l),
                };
                let timed_out = g.sleep(st.thread_chan(), cstr!("vtbidle"), ms);
                st.thread_wakeups.inc();
                if timed_out && ms > 0 {
                    break;
                }
            }
        }
        if st.stopping.load(Ordering::Acquire) {
            break;
        }
        pause_ms = 0;
        let oom = st.oom_tunables();
        let floor = st.floor_pages.load(Ordering::Relaxed);
        let (step, look) = st.balloon.with(|side| {
            let now = now_ms();
            let vm = vm_counters();
            if side.pressure.watching_at(now) {
                let mut urgent = KernelDevice {
                    urgent: true,
                    ..st.balloon_device(&mut side.bufs)
                };
                let freed = side.balloon.relieve(
                    &mut side.pressure,
                    &oom,
                    Relief::Watch,
                    &mut urgent,
                    &mut side.mem,
                    &vm,
                    now,
                );
                if freed > 0 {
                    st.diag(cstr!("pressure watch: deflated pages"), u64::from(freed));
                }
            }
            let watching = side.pressure.watching_at(now);
            let limit = if watching {
                InflateLimit::Pressure
            } else if floor == 0 {
                InflateLimit::None
            } else {
                InflateLimit::Floor(inflate_allowance(&vm, floor, false))
            };
            side.balloon.set_inflate_limit(limit);
            side.balloon
                .set_inflate_run(st.inflate_run.load(Ordering::Relaxed));
            if config {
                side.balloon.config_changed();
            }
            let mut dev = st.balloon_device(&mut side.bufs);
            let step = side.balloon.step(&mut dev, &mut side.mem);
            (step, side.pressure.next_look_ms(&oom, now_ms()))
        });
        look_ms = look;
        st.oom_watching.store(look.is_some(), Ordering::Relaxed);
        idle = false;
        match step {
            Step::Idle => idle = true,
            Step::More => {}
            Step::Backoff { ms } => {
                st.diag(
                    cstr!("inflate: guest short of memory or at the floor, backing off ms"),
                    u64::from(ms),
                );
                pause_ms = ms;
            }
            Step::Failed(e) => {
                st.diag(
                    cstr!("balloon: host did not answer / queue error"),
                    e as u64,
                );
                pause_ms = FAILED_STEP_PAUSE_MS;
            }
        }
    }
    thread_exit(st)
}

fn thread_exit(st: &State) -> ! {
    {
        let _g = st.wait.lock();
        st.threads.fetch_sub(1, Ordering::AcqRel);
        wakeup(st.thread_chan());
    }
    // SAFETY: kthread_exit(9) from our own kthread.
    unsafe { sys::vtbrs_kthread_exit() }
}

/// What the reporter reads in the kernel.
struct KernelEnv<'a>(&'a State);

impl ReportEnv for KernelEnv<'_> {
    fn vm(&mut self) -> VmCounters {
        vm_counters()
    }
    fn now_ms(&mut self) -> u64 {
        now_ms()
    }
    fn take_pressure(&mut self) -> bool {
        // While the balloon watches memory pressure the reporter keeps away
        // from free memory too.
        self.0.pressure.swap(false, Ordering::AcqRel)
            || self.0.oom_watching.load(Ordering::Relaxed)
            || self.0.stopping.load(Ordering::Acquire)
    }
}

/// The free page reporting kthread: a bounded pass every interval, less
/// often while passes find nothing to do, none while reporting is off.
unsafe extern "C" fn report_thread(arg: *mut c_void) {
    // SAFETY: detach waits for this thread to exit before freeing the State.
    let st = unsafe { &*arg.cast::<State>() };
    let policy = Policy::default();
    let mut pause = policy.interval_ms;
    loop {
        {
            let g = st.wait.lock();
            if !st.stopping.load(Ordering::Acquire) {
                // Off: sleep until the sysctl switches it on (0: no timeout).
                let ms = if st.report_enabled.load(Ordering::Acquire) {
                    pause.max(1)
                } else {
                    0
                };
                g.sleep(st.report_chan(), cstr!("vtbreport"), ms);
                st.report_wakeups.inc();
            }
        }
        if st.stopping.load(Ordering::Acquire) {
            break;
        }
        let enabled = st.report_enabled.load(Ordering::Relaxed);
        let result = st.report.with(|side| {
            let rep = side.reporter.as_mut()?;
            if rep.enabled() != enabled {
                rep.set_enabled(enabled);
            }
            let mut dev = st.device(Buffers::None);
            let r = rep.pass(&mut dev, &mut side.blocks, &mut KernelEnv(st));
            if r.reported > 0 || r.skipped > 0 {
                st.diag(
                    cstr!("reporting pass: blocks reported"),
                    u64::from(r.reported),
                );
            }
            st.diag(cstr!("reporting pass ended, reason"), stop_code(r.stop));
            Some(r)
        });
        if let Some(r) = result {
            pause = policy.next_pause(pause, &r);
        }
    }
    thread_exit(st)
}

/// Number for a pass's end reason, for diagnostics.
fn stop_code(stop: crate::reporting::Stop) -> u64 {
    use crate::reporting::Stop;
    match stop {
        Stop::Disabled => 0,
        Stop::Pressure => 1,
        Stop::Unchanged => 2,
        Stop::MemoryLow => 3,
        Stop::NoFreeBlocks => 4,
        Stop::AllReported => 5,
        Stop::Budget => 6,
        Stop::Host(_) => 7,
    }
}

/// vm_lowmem (page daemon, or the UMA reclaim worker): gives back what the
/// page daemon is short of at once, starts the balloon thread's pressure
/// watch, tells the reporter to back off.
unsafe extern "C" fn lowmem(arg: *mut c_void, _flags: i32) {
    // SAFETY: deregistered in detach before the State is freed.
    let st = unsafe { &*arg.cast::<State>() };
    let start_us = now_us();
    st.pressure.store(true, Ordering::Release);
    if st.stopping.load(Ordering::Acquire) {
        return;
    }
    let oom = st.oom_tunables();
    let freed = st.balloon.with(|side| {
        let mut dev = KernelDevice {
            urgent: true,
            ..st.balloon_device(&mut side.bufs)
        };
        let vm = vm_counters();
        side.balloon.relieve(
            &mut side.pressure,
            &oom,
            Relief::LowmemEvent,
            &mut dev,
            &mut side.mem,
            &vm,
            now_ms(),
        )
    });
    st.lowmem_last_us.set(now_us().saturating_sub(start_us));
    st.diag(cstr!("vm_lowmem: deflated pages"), u64::from(freed));
    // The balloon thread starts (or keeps) watching.
    let _g = st.wait.lock();
    st.lowmem_kick.store(true, Ordering::Release);
    wakeup(st.thread_chan());
}

#[no_mangle]
extern "C" fn vtbrs_rs_detach(dev: sys::device_t) -> i32 {
    let Some(st) = state_of(dev) else { return 0 };
    st.stopping.store(true, Ordering::Release);
    // SAFETY: initialized in alloc_state; once drained it cannot run again
    // (it is queued only by attach). Sleeping here drops newbus's lock, which
    // the task may need to finish.
    unsafe { sys::vtbrs_task_drain(st.start_task.get()) };
    if !st.lowmem_tag.is_null() {
        // SAFETY: registered in start with this tag; waits for a running
        // handler to return.
        unsafe { sys::vtbrs_lowmem_deregister(st.lowmem_tag) };
    }
    // Whoever is arming the push timer now finishes first (apply_push_timer).
    drop(st.stats.mtx.lock());
    // SAFETY: initialized in alloc_state; `stopping` keeps it from re-arming.
    unsafe { sys::vtbrs_callout_drain(st.callout.get()) };
    {
        let g = st.wait.lock();
        while st.threads.load(Ordering::Acquire) > 0 {
            wakeup(st.thread_chan());
            wakeup(st.report_chan());
            // Threads finish their current bounded step, then exit.
            g.sleep(st.thread_chan(), cstr!("vtbdetach"), 0);
        }
    }
    // Nobody else posts now: finish the kicks, then post in place.
    st.kick.stop();
    let deflated = st.balloon.with(|side| {
        let mut kdev = st.balloon_device(&mut side.bufs);
        side.balloon.shutdown(&mut kdev, &mut side.mem)
    });
    if deflated.is_err() {
        log(
            dev,
            cstr!("host did not take the balloon back in time: resetting the device"),
        );
    }
    // Reset: the host lets go of every buffer, so every page may be freed.
    // SAFETY: our device; no thread or handler uses the queues any more.
    unsafe { sys::vtbrs_virtio_stop(dev) };
    for vq in st.queues {
        if !vq.is_null() {
            // SAFETY: the device is reset; the buffers still posted are ours.
            unsafe { sys::vtbrs_vq_drain(vq) };
        }
    }
    st.balloon.with(|side| {
        let kdev = st.balloon_device(&mut side.bufs);
        side.balloon.abandon(&kdev, &mut side.mem);
    });
    st.report.with(|side| {
        if let Some(rep) = side.reporter.as_mut() {
            rep.release(&mut side.blocks);
        }
        side.reporter = None;
    });
    free_state(dev, st);
    0
}

fn free_state(dev: sys::device_t, st: &State) {
    let p = (st as *const State).cast_mut();
    // Interrupt handlers can run until virtio_pci tears them down after
    // detach; from here on they find no state, and none still runs on it.
    // SAFETY: our device's softc.
    unsafe { sys::vtbrs_softc_quiesce(dev) };
    // Our sysctl nodes go, after any handler running on them returned.
    // SAFETY: initialized in alloc_state; nodes only refer to the State.
    if unsafe { sys::vtbrs_sysctl_ctx_free(st.sysctl_ctx.get()) } != 0 {
        log(dev, cstr!("cannot remove the sysctl nodes"));
    }
    // SAFETY: no thread, handler, callout, task, sysctl node or interrupt
    // can reach the state any more (all stopped above, device reset);
    // nothing else refers to it.
    unsafe {
        let side = (*p).balloon.value_ptr();
        (*side).bufs.free();
        (*(*p).stats.value_ptr()).bufs.free();
        sys::vtbrs_free((*side).mem.list);
        core::ptr::drop_in_place(addr_of_mut!((*(*p).report.value_ptr()).reporter));
        (*p).balloon.destroy();
        (*p).kick.destroy();
        (*p).report.destroy();
        (*p).stats.mtx.destroy();
        (*p).wait.destroy();
        sys::vtbrs_free(p.cast());
    }
}
