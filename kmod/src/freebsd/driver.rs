//! Newbus methods and the driver's threads, handlers and lifecycle.
//!
//! attach: negotiate features, allocate the queues, build the state in
//! place, add sysctl nodes. attach_completed (after DRIVER_OK): first stats
//! buffer, push timer, the balloon, reporting and hinting kthreads, the
//! vm_lowmem handler; when the device was attached outside virtio_pci's
//! probe-and-attach (devctl), nobody calls attach_completed and
//! [`start_check`] starts the driver. detach: stop everything that could
//! start work, wait for the threads, deflate with bounded waits, reset the
//! device, give back every page, wait out running interrupt handlers, free
//! the state.

use core::cell::UnsafeCell;
use core::ffi::{c_int, c_void, CStr};
use core::ops::Deref;
use core::ptr::{addr_of, addr_of_mut, null_mut, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::device::{
    queue_slot, read_config, Buffers, HintBuffers, KernelDevice, PfnBuffers, Queues, StatsBuffers,
};
use super::kern::{
    devd_notify, kfree, kmalloc, kthread_add, kthread_exit, log, log_u64, now_ms, now_us, pause,
    ticks, write_text, Dev, ThreadFn,
};
use super::kick::Kick;
use super::memory::{max_phys, vm_counters, KernelBlocks, KernelHeld, KernelMemory, VmPage, Words};
use super::sync::{wakeup, MtxCell, Mutex, StateRef, SxCell};
use super::{sys, sysctl};
use crate::balloon::{Balloon, Relief, Step, Tunables};
use crate::counters::{BalloonClocks, BalloonCounters, Counter, Gauge, RateLimit, StatsCounters};
use crate::events::{Event, Notice, Notices, Snapshot};
use crate::hinting::{self, config_for_balloon, HintCounters, Hinter};
use crate::platform::VmCounters;
use crate::pressure::{floor_default_pages, inflate_limit, InflatePace, OomTunables, Pressure};
use crate::protocol::{
    config_offset, feature_names, hint_cmd, negotiated, Features, HintCmd, Queue, REQUESTED,
};
use crate::reporting::{Policy, ReportCounters, ReportEnv, Reporter, Stop};
use crate::sleep::{ms_to_ticks, report_sleep_ms, BalloonThread, Next};
use crate::stats::{PushTimer, Stats};

pub struct BalloonSide {
    pub balloon: Balloon<StateRef<BalloonCounters>>,
    pub pressure: Pressure,
    /// Paces the inflate near the floor.
    pub pace: InflatePace,
    /// devd notices decided from the balloon's counters.
    pub notices: Notices,
    pub bufs: PfnBuffers,
    pub mem: KernelMemory,
}

pub type KernelStats = Stats<StateRef<StatsCounters>>;

pub struct StatsSide {
    pub stats: KernelStats,
    pub bufs: StatsBuffers,
    pub timer: PushTimer,
}

/// Free page hinting (FREE_PAGE_HINT): the hinter, its command buffers and
/// the blocks it holds until the host says DONE.
pub struct HintSide {
    pub hinter: Hinter<StateRef<HintCounters>>,
    pub bufs: HintBuffers,
    pub mem: KernelHeld,
}

pub struct ReportSide {
    pub reporter: Option<Reporter<VmPage, Words, StateRef<ReportCounters>>>,
    pub blocks: KernelBlocks,
}

/// What one attached device owns that needs no initialization in place:
/// built as one value (so the compiler sees every field set), then moved
/// into the [`State`].
pub struct Data {
    pub dev: Dev,
    pub features: Features,
    pub queues: Queues,
    /// What the logic objects count, outside their locks: the sysctl tree
    /// reads these while a lock holder updates them.
    pub balloon_counters: BalloonCounters,
    /// Where the balloon thread's time goes (measured here, in the glue).
    pub clocks: BalloonClocks,
    pub stats_counters: StatsCounters,
    pub report_counters: ReportCounters,
    pub hint_counters: HintCounters,
    /// The host's hinting command changed: the hinting thread looks.
    hint_kick: AtomicBool,
    /// The reporter keeps away: a migration is under way (from the host's
    /// first round id to DONE) or hinted blocks are held
    /// ([`Hinter::reporting_paused`]).
    hint_pause: AtomicBool,
    /// Set by whichever of attach_completed and start_check starts first.
    start_claimed: AtomicBool,
    /// The vm_lowmem handler's tag (null: not registered).
    lowmem_tag: AtomicPtr<sys::eventhandler_entry>,
    /// Detach in progress: threads exit, handlers do nothing.
    pub stopping: AtomicBool,
    /// A config change the balloon thread has not seen yet (WANTSIZE).
    config_pending: AtomicBool,
    /// `num_pages` and `free_page_hint_cmd_id` as read at the last config
    /// change (FREE_PAGE_HINT only): tells hinting's notifications from the
    /// balloon's ([`config_for_balloon`]).
    seen_num_pages: AtomicU32,
    pub hint_cmd: AtomicU32,
    /// vm_lowmem ran: the balloon thread should look at the pressure watch.
    lowmem_kick: AtomicBool,
    /// vm_lowmem seen, for the reporter.
    pressure: AtomicBool,
    threads: AtomicU32,
    started: AtomicBool,
    // Settings (sysctl / loader tunables).
    pub debug: AtomicBool,
    pub oom_batch: AtomicU32,
    pub oom_headroom: AtomicU32,
    pub oom_watch_ms: AtomicU32,
    pub oom_interval_ms: AtomicU32,
    /// Guest-side floor, in pages (0: none).
    pub floor_pages: AtomicU64,
    /// The pressure watch runs (for sysctl).
    pub oom_watching: AtomicBool,
    /// The guard looks at free memory (crate::pressure).
    pub oom_guarding: AtomicBool,
    pub inflate_run: AtomicU32,
    /// PFN buffers in flight.
    pub inflight: AtomicU32,
    pub linux_tags: AtomicBool,
    /// Post through the kick thread (read when the driver starts).
    pub kick_thread: AtomicBool,
    pub report_enabled: AtomicBool,
    pub hint_enabled: AtomicBool,
    diag: RateLimit,
    pub push_interval: AtomicU64,
    // Costs, for sysctl.
    /// Guest time the last vm_lowmem handler took, in microseconds.
    pub lowmem_last_us: Gauge,
    /// Times the balloon / reporting kthread woke from a sleep.
    pub thread_wakeups: Counter,
    pub report_wakeups: Counter,
    /// The reporting bitmap's size (0 without reporting).
    bitmap_bytes: u64,
}

/// Everything one attached device owns. Allocated with malloc(9) and
/// initialized in place by [`State::new`] alone (it holds kernel locks, a
/// callout, tasks and DMA buffers: it never moves and is never built on the
/// kernel stack); the first `&State` exists only once all of it is.
pub struct State {
    data: Data,
    /// Posts inflate and deflate buffers from another CPU.
    pub kick: Kick,
    /// Waits for the host and the threads' sleeps.
    pub wait: Mutex,
    pub balloon: SxCell<BalloonSide>,
    pub stats: MtxCell<StatsSide>,
    pub report: SxCell<ReportSide>,
    pub hint: SxCell<HintSide>,
    callout: UnsafeCell<sys::callout>,
    /// Our sysctl nodes, removed (and their running handlers waited for)
    /// before the state is freed.
    pub sysctl_ctx: UnsafeCell<sys::sysctl_ctx_list>,
    /// Starts the driver when attach_completed never comes (see start_check).
    start_task: UnsafeCell<sys::task>,
}

// SAFETY: every part may be used from any thread at once:
// - `features`, `queues` and `bitmap_bytes` are written before
//   the state is shared and only read after; the virtqueues `queues` names
//   are used under the rules of the code that uses them (each queue has one
//   producer and one consumer at a time: the balloon lock and the kick
//   ring, the stats mutex, the reporting lock); `dev` is Sync;
// - the counters, flags, settings and `diag` are atomics;
// - `kick`, `wait`, `balloon`, `stats` and `report` are Sync themselves
//   (locks, and the data behind them only reached with the lock held);
// - `callout` is only touched by callout(9) functions with the stats mutex
//   held, or by callout_drain in detach once nothing can arm it;
// - `sysctl_ctx` only by sysctl(9) in attach and detach, which newbus
//   serializes, and `start_task` only by taskqueue(9) functions, which
//   synchronize themselves.
unsafe impl Sync for State {}

impl Deref for State {
    type Target = Data;
    fn deref(&self) -> &Data {
        &self.data
    }
}

impl State {
    /// Allocates the state and initializes all of it in place; everything
    /// that can fail comes first, so a state exists completely or not at all.
    fn new(dev: Dev, features: Features, queues: Queues) -> Result<NonNull<State>, i32> {
        let nomem = sys::ENOMEM as i32;
        let pfn = PfnBuffers::new().ok_or(nomem)?;
        let stats = StatsBuffers::new().ok_or(nomem)?;
        let hint = HintBuffers::new().ok_or(nomem)?;
        let bits = if features.contains(Features::REPORTING) {
            let page = u64::from(sys::PAGE_SIZE);
            let words = Reporter::<VmPage, Words>::bitmap_words(
                max_phys(),
                page,
                Policy::for_page_size(page).min_order,
            );
            let bits = Words::new(words);
            if bits.is_none() {
                log(dev, c"no memory for the reporting bitmap: reporting off");
            }
            bits
        } else {
            None
        };
        const { assert!(core::mem::align_of::<State>() <= 8) };
        let p =
            NonNull::new(kmalloc(core::mem::size_of::<State>()).cast::<State>()).ok_or(nomem)?;
        // SAFETY: a fresh allocation of the right size, ours alone; malloc(9)
        // aligns every allocation to at least a pointer, all State needs.
        unsafe { Self::init(p.as_ptr(), dev, features, queues, (pfn, stats, hint), bits) };
        Ok(p)
    }

    /// Writes every field of `p`.
    ///
    /// # Safety
    /// `p` is valid for writes of a State and used by nobody else until this
    /// returns; it stays at this address until freed.
    unsafe fn init(
        p: *mut State,
        dev: Dev,
        features: Features,
        queues: Queues,
        (pfn, stats, hint): (PfnBuffers, StatsBuffers, HintBuffers),
        bits: Option<Words>,
    ) {
        let tun = Tunables::default();
        let oom = OomTunables::default();
        let bitmap_bytes = bits.as_ref().map_or(0, |b| b.bytes() as u64);
        let data = Data {
            dev,
            features,
            queues,
            balloon_counters: BalloonCounters::default(),
            clocks: BalloonClocks::default(),
            stats_counters: StatsCounters::default(),
            report_counters: ReportCounters::default(),
            hint_counters: HintCounters::default(),
            hint_kick: AtomicBool::new(false),
            hint_pause: AtomicBool::new(false),
            start_claimed: AtomicBool::new(false),
            lowmem_tag: AtomicPtr::new(null_mut()),
            stopping: AtomicBool::new(false),
            config_pending: AtomicBool::new(false),
            seen_num_pages: AtomicU32::new(0),
            hint_cmd: AtomicU32::new(0),
            lowmem_kick: AtomicBool::new(false),
            pressure: AtomicBool::new(false),
            threads: AtomicU32::new(0),
            started: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            oom_batch: AtomicU32::new(oom.min_batch_pages),
            oom_headroom: AtomicU32::new(oom.headroom_pages),
            oom_watch_ms: AtomicU32::new(oom.watch_ms),
            oom_interval_ms: AtomicU32::new(oom.interval_ms),
            floor_pages: AtomicU64::new(floor_default_pages(&vm_counters())),
            oom_watching: AtomicBool::new(false),
            oom_guarding: AtomicBool::new(false),
            inflate_run: AtomicU32::new(tun.inflate_run_pages),
            inflight: AtomicU32::new(tun.inflight_buffers as u32),
            linux_tags: AtomicBool::new(false),
            // Off by default: measured under TCG it costs more guest work
            // than it saves (README, "Defaults").
            kick_thread: AtomicBool::new(false),
            report_enabled: AtomicBool::new(true),
            // On, as in Linux: the host asks for hints only when it offers
            // FREE_PAGE_HINT, and only while it migrates the guest.
            hint_enabled: AtomicBool::new(true),
            diag: RateLimit::new(),
            push_interval: AtomicU64::new(0),
            lowmem_last_us: Gauge::new(),
            thread_wakeups: Counter::new(),
            report_wakeups: Counter::new(),
            bitmap_bytes,
        };
        // SAFETY: per the contract. The data goes first: the logic objects
        // refer to its counters, which stay in place with the state (and the
        // objects are dropped before it is freed). Each lock is initialized
        // at its final address, the callout after the mutex it runs under.
        unsafe {
            addr_of_mut!((*p).data).write(data);
            let data = &*addr_of!((*p).data);
            Kick::init(addr_of_mut!((*p).kick), dev, features, c"vtballoonrs ring");
            Mutex::init(addr_of_mut!((*p).wait), c"vtballoonrs wait");
            let balloon =
                Balloon::with_counters(features, tun, StateRef::new(&data.balloon_counters));
            SxCell::init(
                addr_of_mut!((*p).balloon),
                c"vtballoonrs balloon",
                BalloonSide {
                    balloon,
                    pressure: Pressure::new(),
                    pace: InflatePace::new(),
                    notices: Notices::new(),
                    bufs: pfn,
                    mem: KernelMemory::new(StateRef::new(&data.clocks)),
                },
            );
            let counters = StateRef::new(&data.stats_counters);
            MtxCell::init(
                addr_of_mut!((*p).stats),
                c"vtballoonrs stats",
                StatsSide {
                    stats: Stats::with_counters(features, false, counters),
                    bufs: stats,
                    timer: PushTimer::Off,
                },
            );
            let counters = StateRef::new(&data.report_counters);
            let page = u64::from(sys::PAGE_SIZE);
            SxCell::init(
                addr_of_mut!((*p).report),
                c"vtballoonrs report",
                ReportSide {
                    reporter: bits.map(|b| {
                        Reporter::with_counters(Policy::for_page_size(page), page, b, counters)
                    }),
                    blocks: KernelBlocks,
                },
            );
            let counters = StateRef::new(&data.hint_counters);
            SxCell::init(
                addr_of_mut!((*p).hint),
                c"vtballoonrs hint",
                HintSide {
                    hinter: Hinter::with_counters(hinting::Policy::default(), page, counters),
                    bufs: hint,
                    mem: KernelHeld::default(),
                },
            );
            let stats_mtx = (*addr_of!((*p).stats)).mtx.raw();
            sys::vtbrs_callout_init(addr_of_mut!((*p).callout).cast(), stats_mtx);
            sys::sysctl_ctx_init(addr_of_mut!((*p).sysctl_ctx).cast());
            sys::vtbrs_task_init(
                addr_of_mut!((*p).start_task).cast(),
                Some(start_check),
                p.cast(),
            );
        }
    }

    /// Memory this device holds whatever the balloon's size: the state, its
    /// DMA slots and the reporting bitmap. Ballooned pages cost nothing more
    /// (they are tracked in their own vm_page). Our kernel threads' stacks
    /// are not counted.
    pub fn fixed_bytes(&self) -> u64 {
        (core::mem::size_of::<State>()
            + PfnBuffers::BYTES
            + StatsBuffers::BYTES
            + HintBuffers::BYTES) as u64
            + self.bitmap_bytes
    }

    fn arg(&self) -> *mut c_void {
        (self as *const State).cast_mut().cast()
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

    /// The hinting kthread's own channel.
    fn hint_chan(&self) -> *const c_void {
        (&self.hint_kick as *const AtomicBool).cast()
    }

    /// Wakes the hinting thread for a new command (or pressure).
    pub fn kick_hinter(&self) {
        let _g = self.wait.lock();
        self.hint_kick.store(true, Ordering::Release);
        wakeup(self.hint_chan());
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
            clocks: None,
        }
    }

    fn balloon_device<'a>(&'a self, bufs: &'a mut PfnBuffers) -> KernelDevice<'a> {
        KernelDevice {
            kick: Some(&self.kick),
            clocks: Some(&self.clocks),
            ..self.device(Buffers::Pfn(bufs))
        }
    }

    /// The pressure policy's settings as they are now.
    /// The counters devd notices are decided from.
    fn snapshot(&self) -> Snapshot {
        let c = &self.balloon_counters;
        Snapshot {
            lowmem_pages: c.lowmem_pages.get(),
            actual_pages: c.actual_pages.get(),
            floor_stops: c.floor_stops.get(),
            floor_refused_pages: c.floor_refused_pages.get(),
            floor_pages: self.floor_pages.load(Ordering::Relaxed),
            host_timeouts: c.host_timeouts.get(),
        }
    }

    /// Sends the notices that are due (outside the balloon lock).
    fn notify(&self, notices: [Option<Notice>; 3]) {
        for n in notices.iter().flatten() {
            let mut buf = [0u8; 96];
            devd_notify(self.dev, n.event, n.text(&mut buf));
        }
    }

    fn oom_tunables(&self) -> OomTunables {
        OomTunables {
            min_batch_pages: self.oom_batch.load(Ordering::Relaxed),
            headroom_pages: self.oom_headroom.load(Ordering::Relaxed),
            watch_ms: self.oom_watch_ms.load(Ordering::Relaxed),
            interval_ms: self.oom_interval_ms.load(Ordering::Relaxed),
        }
    }

    /// A diagnostic line, only with `debug` on and at most a few a second.
    fn diag(&self, msg: &CStr, value: u64) {
        if self.debug.load(Ordering::Relaxed) && self.diag.allow(now_ms(), 5) {
            log_u64(self.dev, msg, value);
        }
    }

    fn with_stats<R>(
        &self,
        f: impl FnOnce(&mut KernelStats, &mut KernelDevice<'_>, &VmCounters) -> R,
    ) -> R {
        let vm = vm_counters();
        self.stats.with(|side| {
            let mut dev = self.device(Buffers::Stats(&mut side.bufs));
            f(&mut side.stats, &mut dev, &vm)
        })
    }

    /// (Re)arms or stops the STATS_PUSH callout, with the stats mutex held
    /// as the callout requires. Detach sets `stopping`, then takes this
    /// mutex before draining the callout, so a timer armed here is either
    /// seen by the drain or never armed.
    fn set_push_timer(&self, timer: PushTimer) {
        self.stats.with(|side| {
            side.timer = timer;
            match timer {
                // SAFETY: our callout, its mutex held (callout_stop).
                PushTimer::Off => unsafe {
                    sys::_callout_stop_safe(self.callout.get(), 0, None);
                },
                PushTimer::Every(_) if self.stopping.load(Ordering::Acquire) => {}
                PushTimer::Every(ms) => self.arm_push(ms),
            }
        });
        let ms = match timer {
            PushTimer::Off => 0,
            PushTimer::Every(ms) => u64::from(ms),
        };
        self.push_interval.store(ms, Ordering::Relaxed);
    }

    /// Arms the push callout for `ms` from now; the stats mutex is held.
    fn arm_push(&self, ms: u32) {
        let ticks = ms_to_ticks(ms, super::kern::hz());
        // SAFETY: our callout, initialized with the stats mutex, which the
        // callers hold; its argument is the State, drained before it goes.
        unsafe { sys::vtbrs_callout_reset(self.callout.get(), ticks, Some(push_tick), self.arg()) };
    }
}

/// The newbus softc: the State, and how many interrupt handlers run on it.
/// Interrupt handlers may run until virtio_pci tears the device's
/// interrupts down, after our detach returned: they reach the State only
/// through here, counted, and detach ([`Softc::quiesce`]) clears the pointer
/// and waits for them before it frees the State. Newbus frees the softc
/// itself only after the interrupts are gone.
#[repr(C)]
struct Softc {
    state: AtomicPtr<State>,
    active: AtomicU32,
}

const _: () = assert!(
    core::mem::size_of::<Softc>() == core::mem::size_of::<sys::vtbrs_softc>()
        && core::mem::align_of::<Softc>() == core::mem::align_of::<sys::vtbrs_softc>()
);

impl Softc {
    fn of<'a>(dev: Dev) -> &'a Softc {
        // SAFETY: newbus allocated our device's softc zeroed, sized as the
        // shim's struct vtbrs_softc (same layout, checked above), for as
        // long as the driver is attached and its interrupts may run.
        unsafe { &*sys::device_get_softc(dev.raw()).cast::<Softc>() }
    }

    fn state(&self) -> Option<NonNull<State>> {
        NonNull::new(self.state.load(Ordering::Acquire))
    }

    /// Runs `f` on the State unless detach has taken it away.
    fn with<R>(&self, f: impl FnOnce(&State) -> R) -> Option<R> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let state = NonNull::new(self.state.load(Ordering::SeqCst));
        // SAFETY: the pointer was still set after we were counted, and
        // `quiesce` waits for the count before the State is freed.
        let r = state.map(|st| f(unsafe { st.as_ref() }));
        self.active.fetch_sub(1, Ordering::Release);
        r
    }

    /// No handler reaches the State once this returns.
    fn quiesce(&self) {
        self.state.store(null_mut(), Ordering::SeqCst);
        while self.active.load(Ordering::SeqCst) != 0 {
            pause(c"vtbquie", 1);
        }
    }
}

/// The device_attach method.
///
/// # Safety
/// Called by newbus (the shim's method table) with our device.
#[no_mangle]
unsafe extern "C" fn vtbrs_rs_attach(dev: sys::device_t) -> c_int {
    // SAFETY: per the contract, our device until detach returns.
    let dev = unsafe { Dev::new(dev) };
    match attach(dev) {
        Ok(()) => 0,
        Err(errno) => {
            log(dev, c"attach failed");
            detach(dev);
            errno
        }
    }
}

fn attach(dev: Dev) -> Result<(), i32> {
    // SAFETY: negotiation on our device, during attach as virtio(4) requires.
    // The transport keeps what the device offers of the request: with
    // FREE_PAGE_HINT and STATS_VQ whenever offered, the queues are numbered
    // as QEMU numbers them (protocol::with_queue_features); the hinting
    // thread posts on the free page queue.
    let got = unsafe { sys::virtio_negotiate_features(dev.raw(), REQUESTED.bits()) };
    // SAFETY: as above.
    if unsafe { sys::virtio_finalize_features(dev.raw()) } != 0 {
        return Err(sys::ENXIO as i32);
    }
    let features = negotiated(got);
    let queues = alloc_queues(dev, features)?;
    let st = State::new(dev, features, queues)?;
    // The softc owns the state from now on (detach frees it).
    Softc::of(dev).state.store(st.as_ptr(), Ordering::Release);
    // SAFETY: initialized completely; freed only by detach.
    let st = unsafe { st.as_ref() };
    // SAFETY: queues are allocated; virtio(4) sets up their interrupts.
    if unsafe { sys::virtio_setup_intr(dev.raw(), sys::INTR_TYPE_MISC) } != 0 {
        return Err(sys::ENXIO as i32);
    }
    let reporting = st.report.with(|side| side.reporter.is_some());
    sysctl::register(st, reporting);
    sysctl::report_refused_tunables(st, reporting);
    // Last: from here the task may run (once newbus releases its lock).
    // SAFETY: initialized in State::new; drained in detach.
    unsafe { sys::taskqueue_enqueue(addr_of!(sys::taskqueue_thread).read(), st.start_task.get()) };
    Ok(())
}

/// The device's virtqueues, in the order it numbers them; their
/// interrupts reach the State through the softc.
fn alloc_queues(dev: Dev, features: Features) -> Result<Queues, i32> {
    let mut queues: Queues = [null_mut(); 5];
    let mut info: [sys::vq_alloc_info; 5] = Default::default();
    // SAFETY: our attached device's name.
    let unit = unsafe { CStr::from_ptr(sys::device_get_nameunit(dev.raw())) };
    let mut n = 0;
    for (q, name) in [
        (Queue::Inflate, "inflate"),
        (Queue::Deflate, "deflate"),
        (Queue::Stats, "stats"),
        (Queue::FreePageHint, "hint"),
        (Queue::Reporting, "reporting"),
    ] {
        let Some(index) = q.index(features) else {
            continue;
        };
        let i = &mut info[usize::from(index)];
        let mut label = [0u8; sys::VIRTQUEUE_MAX_NAME_SZ as usize];
        let unit = unit.to_str().unwrap_or("vtballoonrs");
        write_text(&mut label, b' ', [unit, name].into_iter());
        for (d, s) in i.vqai_name.iter_mut().zip(label) {
            *d = s as core::ffi::c_char;
        }
        i.vqai_maxindirsz = 0;
        i.vqai_intr = Some(if q == Queue::Stats {
            stats_intr
        } else {
            wake_intr
        });
        i.vqai_intr_arg = dev.raw().cast();
        i.vqai_vq = queues.as_mut_ptr().wrapping_add(queue_slot(q));
        n += 1;
    }
    // SAFETY: `info[..n]` is filled in device order; virtio writes each
    // queue into `queues`, which outlives the call.
    let rc = unsafe { sys::virtio_alloc_virtqueues(dev.raw(), 0, n, info.as_mut_ptr()) };
    if rc == 0 {
        Ok(queues)
    } else {
        Err(rc)
    }
}

/// Inflate, deflate and reporting queue interrupt (ithread context: may
/// take mutexes, never sleeps): the waiting thread dequeues; the interrupt
/// only wakes it.
unsafe extern "C" fn wake_intr(dev: *mut c_void) {
    // SAFETY: virtio calls it with the argument alloc_queues registered:
    // our device, whose interrupts are torn down before it goes.
    Softc::of(unsafe { Dev::new(dev.cast()) }).with(|st| {
        let _g = st.wait.lock();
        wakeup(st.chan());
    });
}

/// Stats queue interrupt: the host returned a buffer; refill and requeue it
/// here, with the stats mutex (never sleeps).
unsafe extern "C" fn stats_intr(dev: *mut c_void) {
    // SAFETY: as for wake_intr.
    Softc::of(unsafe { Dev::new(dev.cast()) }).with(stats_returned);
}

fn stats_returned(st: &State) {
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
        unsafe { sys::virtqueue_nused(vq) > 0 || sys::virtqueue_enable_intr(vq) != 0 }
    });
    if !returned {
        return;
    }
    st.with_stats(|stats, dev, vm| loop {
        if stats.interrupt(dev, vm).is_err() {
            st.diag(
                c"stats: could not requeue, errors",
                stats.counters().errors.get(),
            );
        }
        // SAFETY: the stats queue is serialized by the stats mutex we hold.
        if unsafe { sys::virtqueue_enable_intr(vq) } == 0 {
            break;
        }
    });
}

/// The virtio_attach_completed method.
///
/// # Safety
/// Called by newbus (the shim's method table) with our device.
#[no_mangle]
unsafe extern "C" fn vtbrs_rs_attach_completed(dev: sys::device_t) -> c_int {
    // SAFETY: per the contract.
    if let Some(st) = Softc::of(unsafe { Dev::new(dev) }).state() {
        // SAFETY: newbus serializes attach_completed with detach, which
        // alone frees the State.
        start(unsafe { st.as_ref() });
    }
    0
}

/// Taskqueue task queued at the end of attach. Newbus holds its topology
/// lock across probe, attach and virtio_pci's DRIVER_OK + attach_completed,
/// so once this task holds the lock, attach_completed has run, unless the
/// device was attached by `devctl attach` / `devctl set driver`, which call
/// device_probe_and_attach directly: then DRIVER_OK is set here (with
/// virtio_reinit_complete, which also enables modern queues) and the driver
/// started.
unsafe extern "C" fn start_check(arg: *mut c_void, _pending: c_int) {
    // SAFETY: detach drains this task before freeing the State.
    let st = unsafe { &*arg.cast::<State>() };
    // SAFETY: the newbus topology lock, as any driver code may take it.
    unsafe { sys::bus_topo_lock() };
    if !st.stopping.load(Ordering::Acquire) && !st.start_claimed.load(Ordering::Acquire) {
        log(
            st.dev,
            c"attached outside virtio_pci's probe (devctl): setting DRIVER_OK",
        );
        // SAFETY: our attached device; its queues are allocated.
        unsafe { sys::virtio_reinit_complete(st.dev.raw()) };
        start(st);
    }
    // SAFETY: taken above.
    unsafe { sys::bus_topo_unlock() };
}

/// Everything that may notify the host: after DRIVER_OK, once.
fn start(st: &State) {
    if st.start_claimed.swap(true, Ordering::AcqRel) {
        return;
    }
    let dev = st.dev;
    for vq in st.queues {
        if !vq.is_null() {
            // SAFETY: the queue exists; enabling interrupts is not a notification.
            unsafe { sys::virtqueue_enable_intr(vq) };
        }
    }
    // DRIVER_OK is set: notifications may start.
    let linux_tags = st.linux_tags.load(Ordering::Relaxed);
    let timer = st.with_stats(|stats, kdev, vm| {
        stats.set_linux_tags(linux_tags);
        stats.start(kdev, vm).unwrap_or(PushTimer::Off)
    });
    st.set_push_timer(timer);
    // With one CPU a kick thread could only take turns with the balloon
    // thread: notify in place. The node then shows what the device uses.
    let kick = st.kick_thread.load(Ordering::Relaxed) && Kick::has_other_cpu();
    // SAFETY: once, before the balloon thread and lowmem handler can post;
    // detach stops it before the State goes.
    let started = kick && unsafe { st.kick.start(c"vtballoonrs kick") };
    if kick && !started {
        log(dev, c"no kick taskqueue: notifying from the balloon thread");
    }
    st.kick_thread.store(started, Ordering::Relaxed);
    if st.features.contains(Features::DEFLATE_ON_OOM) {
        // Before the balloon thread starts: its first step looks already.
        let oom = st.oom_tunables();
        st.balloon
            .with(|side| side.pressure.attached(&oom, now_ms()));
    }
    st.config_pending.store(true, Ordering::Release);
    let reporting = st.features.contains(Features::REPORTING);
    let hinting = st.features.contains(Features::FREE_PAGE_HINT);
    if hinting {
        // Before the hinting thread starts: it follows this value.
        let (pages, cmd) = hint_config(st);
        st.seen_num_pages.store(pages, Ordering::Relaxed);
        st.hint_cmd.store(cmd, Ordering::Relaxed);
    }
    let threads: [(ThreadFn, &CStr, bool); 3] = [
        (balloon_thread, c"vtballoonrs", true),
        (report_thread, c"vtballoonrs report", reporting),
        (hint_thread, c"vtballoonrs hint", hinting),
    ];
    for (f, name, wanted) in threads {
        if !wanted {
            continue;
        }
        st.threads.fetch_add(1, Ordering::AcqRel);
        // SAFETY: the thread gets the State, which outlives it (detach waits
        // for every thread to exit before freeing it).
        if unsafe { kthread_add(f, st.arg(), name) }.is_err() {
            st.threads.fetch_sub(1, Ordering::AcqRel);
            log(dev, c"cannot start a kthread");
        }
    }
    if st.features.contains(Features::DEFLATE_ON_OOM) || hinting {
        let handler: unsafe extern "C" fn(*mut c_void, c_int) = lowmem;
        // SAFETY: deregistered in detach before the State is freed.
        let tag = unsafe {
            sys::eventhandler_register(
                null_mut(),
                c"vm_lowmem".as_ptr(),
                handler as *mut c_void,
                st.arg(),
                sys::EVENTHANDLER_PRI_FIRST as c_int,
            )
        };
        st.lowmem_tag.store(tag, Ordering::Release);
    }
    st.started.store(true, Ordering::Release);
    let mut text = [0u8; 160];
    let head = b"features=";
    text[..head.len()].copy_from_slice(head);
    write_text(&mut text[head.len()..], b',', feature_names(st.features));
    let data = CStr::from_bytes_until_nul(&text).unwrap_or(c"");
    devd_notify(dev, Event::Attach, data);
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
                    st.arm_push(ms);
                }
            }
        })
    }
}

/// The virtio_config_change method (interrupt context).
///
/// # Safety
/// Called by newbus (the shim's method table) with our device.
#[no_mangle]
unsafe extern "C" fn vtbrs_rs_config_change(dev: sys::device_t) -> c_int {
    // SAFETY: per the contract.
    Softc::of(unsafe { Dev::new(dev) }).with(config_changed);
    1
}

/// `num_pages` and `free_page_hint_cmd_id` (FREE_PAGE_HINT negotiated: the
/// config has 12 bytes at least).
fn hint_config(st: &State) -> (u32, u32) {
    let read = |offset| read_config(st.dev, st.features, offset);
    (
        read(config_offset::NUM_PAGES),
        read(config_offset::FREE_PAGE_HINT_CMD_ID),
    )
}

fn config_changed(st: &State) {
    if st.stopping.load(Ordering::Acquire) || !st.started.load(Ordering::Acquire) {
        return;
    }
    // The command id is read here only, on the host's notification (QEMU
    // shows 0 while a round runs: crate::hinting).
    let for_balloon = !st.features.contains(Features::FREE_PAGE_HINT) || {
        let now = hint_config(st);
        let before = (
            st.seen_num_pages.swap(now.0, Ordering::Relaxed),
            st.hint_cmd.swap(now.1, Ordering::Relaxed),
        );
        if now.1 != before.1 {
            if matches!(HintCmd::from_config(now.1), HintCmd::Id(_)) {
                // A migration starts: the reporter stops at its next look,
                // before the hinting thread has run.
                st.hint_pause.store(true, Ordering::Release);
            }
            st.kick_hinter();
        }
        config_for_balloon(before, now)
    };
    if for_balloon {
        st.config_pending.store(true, Ordering::Release);
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
        st.set_push_timer(timer);
    }
}

/// The balloon kthread: sleeps until the host changes its config, then
/// resizes; no timer while idle. After memory pressure it also looks at free
/// memory every `oom_watch_interval_ms` for as long as the watch runs (the
/// sleeps are [`BalloonThread`]'s).
unsafe extern "C" fn balloon_thread(arg: *mut c_void) {
    // SAFETY: detach waits for this thread to exit before freeing the State.
    let st = unsafe { &*arg.cast::<State>() };
    st.kick.avoid_my_cpu();
    let mut policy = BalloonThread::default();
    loop {
        // Decided under the lock the config change and vm_lowmem handlers
        // wake us with.
        let next = {
            let g = st.wait.lock();
            let mut timed_out = false;
            loop {
                let stopping = st.stopping.load(Ordering::Acquire);
                let config = !stopping && st.config_pending.swap(false, Ordering::AcqRel);
                let lowmem = !stopping && !config && st.lowmem_kick.swap(false, Ordering::AcqRel);
                match policy.next(stopping, config, lowmem, timed_out) {
                    Next::Sleep { ms } => {
                        timed_out = g.sleep(st.thread_chan(), c"vtbidle", ms);
                        st.thread_wakeups.inc();
                    }
                    next => break next,
                }
            }
        };
        let Next::Step { config } = next else { break };
        let oom = st.oom_tunables();
        let floor = st.floor_pages.load(Ordering::Relaxed);
        let (step, look, watching, notices) = st.balloon.with(|side| {
            let now = now_ms();
            let vm = vm_counters();
            // The watch, or the guard (after attach or an event).
            if side.pressure.looking_at(now) {
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
                    st.diag(c"pressure watch: deflated pages", u64::from(freed));
                }
            }
            let limit = inflate_limit(
                &mut side.pace,
                now,
                &vm,
                floor,
                side.pressure.watching_at(now),
                side.balloon.held_pages(&side.mem),
            );
            side.balloon.set_inflate_limit(limit);
            side.balloon
                .set_inflate_run(st.inflate_run.load(Ordering::Relaxed));
            side.balloon
                .set_inflight(st.inflight.load(Ordering::Relaxed) as usize);
            if config {
                side.balloon.config_changed();
            }
            let mut dev = st.balloon_device(&mut side.bufs);
            let t0 = ticks();
            let step = side.balloon.step(&mut dev, &mut side.mem);
            st.clocks.step_us.add(ticks().saturating_sub(t0));
            let later = now_ms();
            let ballooned = u64::from(side.balloon.actual());
            let look = side.pressure.next_look_ms(&oom, later, ballooned);
            let watching = side.pressure.watching_at(later);
            let notices = side.notices.due(later, &st.snapshot(), !watching);
            (step, look, watching, notices)
        });
        st.notify(notices);
        policy.stepped(step, look);
        st.oom_watching.store(watching, Ordering::Relaxed);
        st.oom_guarding
            .store(!watching && look.is_some(), Ordering::Relaxed);
        match step {
            Step::Backoff { ms } => st.diag(
                c"inflate: guest short of memory or at the floor, backing off ms",
                u64::from(ms),
            ),
            Step::Failed(e) => st.diag(c"balloon: host did not answer / queue error", e as u64),
            Step::Idle | Step::More => {}
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
    // SAFETY: called by our kthreads alone, done with the State (detach
    // frees it once the count above reached 0, which needs the wait lock
    // this thread no longer holds).
    unsafe { kthread_exit() }
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
            || self.0.hint_pause.load(Ordering::Acquire)
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
                // Off: sleep until the sysctl switches it on.
                let ms = report_sleep_ms(st.report_enabled.load(Ordering::Acquire), pause);
                g.sleep(st.report_chan(), c"vtbreport", ms);
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
                st.diag(c"reporting pass: blocks reported", u64::from(r.reported));
            }
            st.diag(c"reporting pass ended, reason", stop_code(r.stop));
            Some(r)
        });
        if let Some(r) = result {
            pause = policy.next_pause(pause, &r);
        }
    }
    thread_exit(st)
}

/// The free page hinting kthread: sleeps until the host's hinting command
/// changes (or, while blocks are held, a second at most: free memory is
/// watched), then follows it one buffer per step, the lock dropped between
/// steps so vm_lowmem gets the held blocks at once.
unsafe extern "C" fn hint_thread(arg: *mut c_void) {
    // SAFETY: detach waits for this thread to exit before freeing the State.
    let st = unsafe { &*arg.cast::<State>() };
    // The first command may be there already (attach during a migration).
    st.hint_kick.store(true, Ordering::Release);
    let mut ms = 0;
    loop {
        {
            let g = st.wait.lock();
            if !st.stopping.load(Ordering::Acquire) && !st.hint_kick.swap(false, Ordering::AcqRel) {
                // 0: until woken.
                g.sleep(st.hint_chan(), c"vtbhint", ms);
            }
        }
        loop {
            if st.stopping.load(Ordering::Acquire) {
                thread_exit(st)
            }
            let next = st.hint.with(|side| {
                side.hinter
                    .set_enabled(st.hint_enabled.load(Ordering::Relaxed));
                let mut cmd = st.hint_cmd.load(Ordering::Relaxed);
                if side.hinter.active().is_none()
                    && side.hinter.held_pages() > 0
                    && read_config(st.dev, st.features, config_offset::FREE_PAGE_HINT_CMD_ID)
                        == hint_cmd::DONE
                {
                    // Holding between rounds, the field is looked at every
                    // step (a second): QEMU sets DONE before it saves the
                    // device for the destination, where the config
                    // interrupt may never come. DONE reads as 1 in QEMU's
                    // DONE state only, so this cannot be misread (0 is
                    // ambiguous: STOP, or a round started).
                    cmd = hint_cmd::DONE;
                }
                side.hinter.config_changed(cmd);
                let mut dev = st.device(Buffers::Hint(&mut side.bufs));
                let next = side
                    .hinter
                    .step(&mut dev, &mut side.mem, &vm_counters(), now_ms());
                st.hint_pause
                    .store(side.hinter.reporting_paused(), Ordering::Release);
                next
            });
            match next {
                hinting::Next::Now => {}
                hinting::Next::Idle => {
                    ms = 0;
                    break;
                }
                hinting::Next::After(after) => {
                    ms = after.max(1);
                    break;
                }
            }
        }
    }
}

/// Number for a pass's end reason, for diagnostics.
fn stop_code(stop: Stop) -> u64 {
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
unsafe extern "C" fn lowmem(arg: *mut c_void, _flags: c_int) {
    // SAFETY: deregistered in detach before the State is freed.
    let st = unsafe { &*arg.cast::<State>() };
    let start_us = now_us();
    st.pressure.store(true, Ordering::Release);
    if st.stopping.load(Ordering::Acquire) {
        return;
    }
    if st.features.contains(Features::FREE_PAGE_HINT) {
        // Hinted blocks go back first, all of them (Linux's shrinker); the
        // hinting thread ends the round under way at its next step.
        let freed = st
            .hint
            .with(|side| side.hinter.pressure(&mut side.mem, now_ms()));
        st.diag(c"vm_lowmem: hinted pages given back", freed);
        st.kick_hinter();
    }
    if !st.features.contains(Features::DEFLATE_ON_OOM) {
        return;
    }
    let oom = st.oom_tunables();
    let (freed, notices) = st.balloon.with(|side| {
        let mut dev = KernelDevice {
            urgent: true,
            ..st.balloon_device(&mut side.bufs)
        };
        let vm = vm_counters();
        let freed = side.balloon.relieve(
            &mut side.pressure,
            &oom,
            Relief::LowmemEvent,
            &mut dev,
            &mut side.mem,
            &vm,
            now_ms(),
        );
        (freed, side.notices.due(now_ms(), &st.snapshot(), false))
    });
    st.lowmem_last_us.set(now_us().saturating_sub(start_us));
    st.notify(notices);
    st.diag(c"vm_lowmem: deflated pages", u64::from(freed));
    // The balloon thread starts (or keeps) watching.
    let _g = st.wait.lock();
    st.lowmem_kick.store(true, Ordering::Release);
    wakeup(st.thread_chan());
}

/// The device_detach method.
///
/// # Safety
/// Called by newbus (the shim's method table) with our device.
#[no_mangle]
unsafe extern "C" fn vtbrs_rs_detach(dev: sys::device_t) -> c_int {
    // SAFETY: per the contract.
    detach(unsafe { Dev::new(dev) });
    0
}

fn detach(dev: Dev) {
    let softc = Softc::of(dev);
    let Some(p) = softc.state() else { return };
    // SAFETY: set by attach, freed only below.
    stop(unsafe { p.as_ref() });
    // Interrupt handlers can run until virtio_pci tears them down after
    // detach; from here on they find no state, and none still runs on it.
    softc.quiesce();
    // SAFETY: nothing reaches the state any more (everything stopped, the
    // device reset, no handler left); no reference to it is live.
    unsafe { free_state(p) };
}

/// Stops everything that uses the State and gives every page back.
fn stop(st: &State) {
    let dev = st.dev;
    st.stopping.store(true, Ordering::Release);
    // SAFETY: initialized in State::new; once drained it cannot run again
    // (it is queued only by attach). Sleeping here drops newbus's lock,
    // which the task may need to finish.
    unsafe { sys::taskqueue_drain(addr_of!(sys::taskqueue_thread).read(), st.start_task.get()) };
    let tag = st.lowmem_tag.swap(null_mut(), Ordering::AcqRel);
    if !tag.is_null() {
        // SAFETY: registered in start with this tag; waits for a running
        // handler to return (EVENTHANDLER_DEREGISTER).
        unsafe {
            let list = sys::eventhandler_find_list(c"vm_lowmem".as_ptr());
            if !list.is_null() {
                sys::eventhandler_deregister(list, tag);
            }
        }
    }
    // Whoever is arming the push timer now finishes first (set_push_timer).
    drop(st.stats.mtx.lock());
    // SAFETY: initialized in State::new; `stopping` keeps it from
    // re-arming (callout_drain).
    unsafe { sys::_callout_stop_safe(st.callout.get(), sys::CS_DRAIN as c_int, None) };
    {
        let g = st.wait.lock();
        while st.threads.load(Ordering::Acquire) > 0 {
            wakeup(st.thread_chan());
            wakeup(st.report_chan());
            wakeup(st.hint_chan());
            // Threads finish their current bounded step, then exit.
            g.sleep(st.thread_chan(), c"vtbdetach", 0);
        }
    }
    // Nobody else posts now: finish the kicks, then post in place.
    st.kick.stop();
    let held = st.balloon_counters.actual_pages.get();
    let deflated = st.balloon.with(|side| {
        let mut kdev = st.balloon_device(&mut side.bufs);
        side.balloon.shutdown(&mut kdev, &mut side.mem)
    });
    let unacked = st.balloon_counters.actual_pages.get();
    if deflated.is_err() {
        log(
            dev,
            c"host did not take the balloon back in time: resetting the device",
        );
    }
    if st.started.load(Ordering::Acquire) {
        let mut buf = [0u8; 96];
        if deflated.is_err() {
            let n = Notice::new(Event::Reset, ("pages", unacked), ("", 0));
            devd_notify(dev, Event::Reset, n.text(&mut buf));
        }
        let n = Notice::new(Event::Detach, ("pages", held), ("", 0));
        devd_notify(dev, Event::Detach, n.text(&mut buf));
    }
    // Reset: the host lets go of every buffer, so every page may be freed.
    // SAFETY: our device; no thread or handler uses the queues any more.
    unsafe { sys::virtio_stop(dev.raw()) };
    for vq in st.queues {
        if vq.is_null() {
            continue;
        }
        let mut last = 0;
        // SAFETY: the device is reset; the buffers still posted are ours.
        while !unsafe { sys::virtqueue_drain(vq, &mut last) }.is_null() {}
    }
    st.balloon.with(|side| {
        let kdev = st.balloon_device(&mut side.bufs);
        side.balloon.abandon(&kdev, &mut side.mem);
    });
    st.report.with(|side| {
        if let Some(rep) = side.reporter.as_mut() {
            rep.release(&mut side.blocks);
        }
    });
    // Every hinted block goes back (the host forgot the buffers).
    st.hint.with(|side| side.hinter.release(&mut side.mem));
}

/// Removes the sysctl nodes, drops and destroys what the State holds and
/// frees it.
///
/// # Safety
/// `p` came from [`State::new`]; nothing uses or refers to it any more.
unsafe fn free_state(p: NonNull<State>) {
    // SAFETY: per the contract; the reference ends before the memory goes.
    let st = unsafe { p.as_ref() };
    // Our sysctl nodes go, after any handler running on them returned.
    // SAFETY: initialized in State::new; nodes only refer to the State.
    if unsafe { sys::sysctl_ctx_free(st.sysctl_ctx.get()) } != 0 {
        log(st.dev, c"cannot remove the sysctl nodes");
    }
    // SAFETY: per the contract, each once; the DMA slots go after the
    // device reset, the callout and tasks are drained, the data has no
    // destructor.
    unsafe {
        st.balloon.destroy();
        st.report.destroy();
        st.hint.destroy();
        st.stats.destroy();
        st.kick.destroy();
        st.wait.destroy();
        kfree(p.as_ptr().cast());
    }
}
