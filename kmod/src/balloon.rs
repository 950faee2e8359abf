//! Sizing the balloon: inflate and deflate towards the host's target.
//!
//! Rules this module keeps:
//! - WANTSIZE: the balloon only moves towards the host target after a config
//!   change (or once at attach). After a deflate done for memory pressure
//!   the balloon may shrink but not grow until the host speaks again: the
//!   thread does not re-inflate, and a lower target (set before or during
//!   the pressure) is still followed down. A `vm_lowmem` event that finds
//!   the guest not short (the page daemon reacting to how fast free memory
//!   fell, as right after an inflate) is not pressure: its batch goes back,
//!   and the balloon returns to the host's target once the watch has
//!   passed, whether the event came during the inflate or after it.
//! - The host's target is read from config once per config change, and
//!   config `actual` is written every [`ACTUAL_WRITE_BUFFERS`] completed
//!   buffers and whenever nothing is left in flight: each config access
//!   traps to the host.
//! - Several PFN buffers may be in flight at once (up to [`MAX_INFLIGHT`]);
//!   only one direction is in flight at a time.
//! - A page leaves the balloon (is freed to the VM) only after the host
//!   acknowledged the deflate buffer naming it (MUST_TELL_HOST ordering, kept
//!   even when the feature is absent: it costs nothing on an already
//!   asynchronous path).
//! - Every wait for the host is bounded; a dead host makes operations fail
//!   with [`Error::Timeout`], never hang.
//! - Inflating takes physically contiguous runs (up to one buffer's worth)
//!   while the VM has them free, and single pages once it has not: one
//!   allocator call per run instead of per page, and the guest keeps its
//!   small free fragments (what single-page allocation would eat first).
//! - No per-page memory: in-flight buffers hold PFNs only, and acked pages sit
//!   on a list the [`Memory`] implementation threads through the VM's own
//!   page structures.

use core::ops::Deref;

use crate::counters::{BalloonCounters, Owned};
use crate::platform::{Device, Error, Memory, Token, VmCounters};
use crate::pressure::{OomTunables, Pressure};
use crate::protocol::{pfn_of_phys, Features, Queue, PFNS_PER_BUFFER, PFN_SHIFT};

/// Most PFN buffers ever in flight at once.
pub const MAX_INFLIGHT: usize = 8;

/// Buffers completed between writes of config `actual` while a resize
/// goes on; it is also written whenever nothing is left in flight. Each
/// write traps to the host (under QEMU with its big lock), and the host
/// only reads it for reports: one write per 16 MiB keeps them current.
pub const ACTUAL_WRITE_BUFFERS: u32 = 16;

/// Knobs of the sizing logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunables {
    /// Longest wait for one host acknowledgement.
    pub host_timeout_ms: u32,
    /// PFN buffers kept in flight, 1..=[`MAX_INFLIGHT`].
    pub inflight_buffers: usize,
    /// First and longest pause after an allocation failure.
    pub backoff_min_ms: u32,
    pub backoff_max_ms: u32,
    /// Largest physically contiguous run taken at once when inflating, in
    /// guest pages: a power of two, 1 (page by page) to
    /// [`Tunables::INFLATE_RUN_MAX`].
    pub inflate_run_pages: u32,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            host_timeout_ms: 5_000,
            inflight_buffers: 4,
            backoff_min_ms: 100,
            backoff_max_ms: 5_000,
            inflate_run_pages: Self::INFLATE_RUN_MAX,
        }
    }
}

impl Tunables {
    /// Largest `inflate_run_pages`: one buffer of 4 KiB PFNs.
    pub const INFLATE_RUN_MAX: u32 = PFNS_PER_BUFFER as u32;

    /// Checks a value for `inflate_run_pages`.
    pub fn valid_inflate_run(pages: u32) -> bool {
        pages.is_power_of_two() && pages <= Self::INFLATE_RUN_MAX
    }
}

/// How much the balloon may still take from the guest when inflating, set
/// before each [`Balloon::step`] (see [`crate::pressure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateLimit {
    /// Whatever the host asks.
    None,
    /// The guest-side floor: at most this many more guest pages.
    Floor(u64),
    /// Memory pressure is being watched: nothing until it has passed.
    Pressure,
    /// Near the floor the inflate is paced ([`crate::pressure::InflatePace`]):
    /// at most `pages` more guest pages now, the rest after `retry_ms`. Not a
    /// refusal: the floor's counters are left as they are and the backoff
    /// does not grow.
    Paced { pages: u64, retry_ms: u32 },
}

/// Why the balloon gives memory back to a guest under pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relief {
    /// A `vm_lowmem` event.
    LowmemEvent,
    /// A look at free memory while the pressure watch runs.
    Watch,
}

/// What the balloon thread should do after a [`Balloon::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Target reached and nothing in flight: sleep until the next config change.
    Idle,
    /// Call `step` again.
    More,
    /// Memory is short: sleep this long, then call `step` again.
    Backoff { ms: u32 },
    /// The host or the queue failed; counted. Sleep a backoff, then retry.
    Failed(Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Inflating,
    Deflating,
}

/// What the balloon remembers of a posted PFN buffer. The PFNs themselves
/// stay in the device's copy ([`Device::posted`]), so the balloon needs no
/// buffer memory of its own.
#[derive(Debug, Clone, Copy)]
struct SlotInfo {
    state: SlotState,
    /// PFNs in the buffer.
    len: usize,
    /// The host returned it; completed once the next buffers are posted.
    acked: bool,
}

impl SlotInfo {
    const FREE: SlotInfo = SlotInfo {
        state: SlotState::Free,
        len: 0,
        acked: false,
    };
}

/// A PFN buffer being filled, on the stack until posted.
struct Slot {
    state: SlotState,
    len: usize,
    wire: [u8; PFNS_PER_BUFFER * 4],
}

/// The i-th le32 PFN of a posted buffer.
fn pfn_at(wire: &[u8], i: usize) -> u32 {
    let b = &wire[i * 4..i * 4 + 4];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl Slot {
    fn new(state: SlotState) -> Self {
        Slot {
            state,
            len: 0,
            wire: [0; PFNS_PER_BUFFER * 4],
        }
    }

    fn push_pfn(&mut self, pfn: u32) {
        self.wire[self.len * 4..self.len * 4 + 4].copy_from_slice(&pfn.to_le_bytes());
        self.len += 1;
    }

    fn bytes(&self) -> &[u8] {
        &self.wire[..self.len * 4]
    }
}

/// The balloon's sizing state; counts into `C` (see [`crate::counters`]).
#[derive(Debug)]
pub struct Balloon<C = Owned<BalloonCounters>> {
    features: Features,
    tun: Tunables,
    /// WANTSIZE: the host changed its target and we have not reached it yet.
    wantsize: bool,
    /// 4 KiB units the host acknowledged as ballooned.
    actual: u32,
    /// 4 KiB units in in-flight inflate / deflate buffers.
    inflight_in: u32,
    inflight_out: u32,
    backoff_ms: u32,
    /// Memory pressure was answered since the host last changed its
    /// target: the balloon may shrink towards the target, not grow.
    no_growth: bool,
    /// Order of the next contiguous run to try; lowered when the VM has no
    /// free run that large, raised again at the next config change.
    run_order: u32,
    /// The host's target as last read from config; `None` after a config
    /// change. Read once per change, not per step: a config read traps to
    /// the host, and under QEMU it waits for the big lock, which a vCPU
    /// notifying the host holds for the host's whole work on a buffer.
    host_target: Option<u32>,
    /// Buffers completed since config `actual` was last written.
    unwritten_buffers: u32,
    slots: [SlotInfo; MAX_INFLIGHT],
    limit: InflateLimit,
    counters: C,
}

impl Balloon {
    /// A new, empty balloon with its own counters.
    pub fn new(features: Features, tun: Tunables) -> Self {
        Self::with_counters(features, tun, Owned::default())
    }
}

impl<C: Deref<Target = BalloonCounters>> Balloon<C> {
    /// A new, empty balloon counting into `counters`. WANTSIZE starts set:
    /// the first `step` after DRIVER_OK sizes the balloon to the host target.
    pub fn with_counters(features: Features, mut tun: Tunables, counters: C) -> Self {
        tun.inflight_buffers = tun.inflight_buffers.clamp(1, MAX_INFLIGHT);
        if !Tunables::valid_inflate_run(tun.inflate_run_pages) {
            tun.inflate_run_pages = Tunables::default().inflate_run_pages;
        }
        Balloon {
            features,
            tun,
            wantsize: true,
            actual: 0,
            inflight_in: 0,
            inflight_out: 0,
            backoff_ms: 0,
            no_growth: false,
            run_order: tun.inflate_run_pages.ilog2(),
            host_target: None,
            unwritten_buffers: 0,
            slots: [SlotInfo::FREE; MAX_INFLIGHT],
            limit: InflateLimit::None,
            counters,
        }
    }

    /// The host changed its config: resize at the next step.
    pub fn config_changed(&mut self) {
        self.counters.config_changes.inc();
        self.wantsize = true;
        self.host_target = None;
        self.no_growth = false;
        self.run_order = self.tun.inflate_run_pages.ilog2();
    }

    /// True while the thread has something to do.
    pub fn needs_work(&self) -> bool {
        self.wantsize || self.inflight() > 0
    }

    /// 4 KiB units the host acknowledged as ballooned.
    pub fn actual(&self) -> u32 {
        self.actual
    }

    /// Guest pages the balloon holds, inflates in flight included (they
    /// are the host's already): what the inflate limits count.
    pub fn held_pages<M: Memory>(&self, mem: &M) -> u64 {
        u64::from(self.actual + self.inflight_in) / units_per_page(mem) as u64
    }

    /// True while a resize requested by the host is pending.
    pub fn wantsize(&self) -> bool {
        self.wantsize
    }

    pub fn counters(&self) -> &BalloonCounters {
        &self.counters
    }

    pub fn tunables(&self) -> Tunables {
        self.tun
    }

    /// Sets how much the next steps may take from the guest (a floor's
    /// allowance is used up as pages are taken, until set again).
    pub fn set_inflate_limit(&mut self, limit: InflateLimit) {
        self.limit = limit;
    }

    /// Changes how many PFN buffers may be in flight at once; false (and
    /// nothing changed) outside 1..=[`MAX_INFLIGHT`]. Buffers already in
    /// flight stay; no new one is posted while as many are out.
    pub fn set_inflight(&mut self, buffers: usize) -> bool {
        if !(1..=MAX_INFLIGHT).contains(&buffers) {
            return false;
        }
        self.tun.inflight_buffers = buffers;
        true
    }

    /// Changes the largest inflate run; false (and nothing changed) if not a
    /// power of two in range.
    pub fn set_inflate_run(&mut self, pages: u32) -> bool {
        if !Tunables::valid_inflate_run(pages) {
            return false;
        }
        if pages != self.tun.inflate_run_pages {
            self.tun.inflate_run_pages = pages;
            self.run_order = pages.ilog2();
        }
        true
    }

    /// Does one round of resizing: reap acknowledgements, post new buffers
    /// up to the in-flight limit, wait (bounded) for one acknowledgement.
    pub fn step<D: Device, M: Memory>(&mut self, dev: &mut D, mem: &mut M) -> Step {
        // One buffer the host returned is completed only after this step's
        // posts: the host works on the new buffers while the guest frees (or
        // lists) the returned pages.
        let acked = self.take_ready(dev);
        let mut short_of_memory = false;
        let mut paced_ms = None;
        if self.wantsize {
            let host = *self.host_target.get_or_insert_with(|| dev.num_pages());
            self.counters.target_pages.set(u64::from(host));
            let planned =
                i64::from(self.actual) + i64::from(self.inflight_in) - i64::from(self.inflight_out);
            let mut target = i64::from(host);
            if self.no_growth {
                // Memory pressure answered since the host spoke: down, not up.
                target = target.min(planned);
            }
            if target > planned && self.inflight_out == 0 {
                let want = (target - planned) as u32;
                let allowed = self.allowed_units(mem, want);
                let before = self.inflight_in;
                let posted = self.post_inflates(dev, mem, allowed);
                let took = self.inflight_in - before;
                self.use_allowance(mem, took);
                match posted {
                    Ok(full) => short_of_memory |= !full,
                    Err(e) => return self.failed(e),
                }
                // The limit holds the rest back: wait for memory only once
                // the allowance is used up, not while taking what it allows.
                if allowed < want && took == 0 && self.inflight_in == 0 {
                    match self.limit {
                        InflateLimit::Paced { retry_ms, .. } => paced_ms = Some(retry_ms),
                        _ => short_of_memory = true,
                    }
                }
            } else if target < planned && self.inflight_in == 0 {
                if let Err(e) = self.post_deflates(dev, mem, (planned - target) as u32) {
                    return self.failed(e);
                }
            } else if target == planned && self.inflight() == 0 {
                self.counters.floor_refused_pages.set(0);
                self.wantsize = false;
                self.backoff_ms = 0;
                return Step::Idle;
            }
        }
        if acked {
            self.complete_acked(dev, mem);
        } else if self.inflight() > 0 {
            if let Err(e) = self.wait_one(dev, mem) {
                return self.failed(e);
            }
        }
        if short_of_memory {
            return Step::Backoff {
                ms: self.next_backoff(),
            };
        }
        if let Some(ms) = paced_ms {
            return Step::Backoff { ms };
        }
        if self.needs_work() {
            Step::More
        } else {
            Step::Idle
        }
    }

    /// Memory pressure: asks `pressure` how much the guest is short (on a
    /// `vm_lowmem` event or a watch look) and gives that back at once, after
    /// the host acknowledged it. Returns the 4 KiB units freed. Only with
    /// DEFLATE_ON_OOM. When the guest is short the balloon is not
    /// re-inflated until the host changes its target again (a lower target
    /// is still followed); an event that finds free memory at the pressure
    /// goal (FreeBSD's page daemon also reacts to how fast free memory falls,
    /// as it does right after a fast inflate) gets its batch but stops
    /// nothing: the balloon goes back to the host's target once the watch
    /// has passed (the floor keeps it off what the guest needs), also when
    /// the target had been reached before the event.
    #[allow(clippy::too_many_arguments)]
    pub fn relieve<D: Device, M: Memory>(
        &mut self,
        pressure: &mut Pressure,
        tun: &OomTunables,
        cause: Relief,
        dev: &mut D,
        mem: &mut M,
        vm: &VmCounters,
        now_ms: u64,
    ) -> u32 {
        if !self.features.contains(Features::DEFLATE_ON_OOM) {
            return 0;
        }
        let per_page = units_per_page(mem) as u64;
        let ballooned = self.held_pages(mem);
        let short = match cause {
            Relief::LowmemEvent => pressure.short(tun, vm),
            // The watch deflates only below its low mark.
            Relief::Watch => true,
        };
        let pages = match cause {
            Relief::LowmemEvent => {
                self.counters.lowmem_events.inc();
                if short {
                    // An inflate under way stops too.
                    self.no_growth = true;
                }
                pressure.lowmem(tun, now_ms, vm, ballooned)
            }
            Relief::Watch => {
                // Not watching: the guard (crate::pressure).
                let guard = !pressure.watching_at(now_ms);
                let pages = pressure.tick(tun, now_ms, vm, ballooned);
                if guard && pages > 0 {
                    self.counters.guard_events.inc();
                }
                pages
            }
        };
        if pages == 0 {
            return 0;
        }
        let units = u32::try_from(pages * per_page).unwrap_or(u32::MAX);
        let freed = self.deflate_for_pressure(dev, mem, units, short);
        pressure.gave_back(u64::from(freed) / per_page);
        freed
    }

    /// Deflates up to `units` now for memory pressure (DEFLATE_ON_OOM only)
    /// and lets the balloon grow no more until the host speaks again.
    /// Returns the 4 KiB units freed.
    pub fn give_back<D: Device, M: Memory>(&mut self, dev: &mut D, mem: &mut M, units: u32) -> u32 {
        self.deflate_for_pressure(dev, mem, units, true)
    }

    /// Deflates up to `units` now; `hold`: no growth until the host speaks.
    fn deflate_for_pressure<D: Device, M: Memory>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
        units: u32,
        hold: bool,
    ) -> u32 {
        if !self.features.contains(Features::DEFLATE_ON_OOM) {
            return 0;
        }
        if hold {
            self.no_growth = true;
            self.counters.floor_refused_pages.set(0);
        }
        // Settle inflates in flight first so the deflate may use every slot.
        if self.settle(dev, mem).is_err() {
            return 0;
        }
        let before = self.actual;
        let _ = self.deflate_now(dev, mem, units.min(self.actual));
        let freed = before - self.actual;
        if freed > 0 {
            self.counters.lowmem_pages.add(u64::from(freed));
            self.counters.oom_deflates.inc();
            if !hold {
                // Not a shortage: the batch is made up once the inflate
                // limit allows (after the watch, as far as the floor lets
                // it), whether the event came during an inflate or after
                // the target was reached. Without this an event right
                // after an inflate left the balloon one batch short of a
                // target the host had set, until the host spoke again. The
                // target is the one last read: the host has not spoken.
                self.wantsize = true;
            }
        }
        freed
    }

    /// Detach: deflates everything with bounded waits. On error the caller
    /// resets the device and calls [`Balloon::abandon`].
    pub fn shutdown<D: Device, M: Memory>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
    ) -> Result<(), Error> {
        self.wantsize = false;
        self.settle(dev, mem)?;
        self.deflate_now(dev, mem, self.actual)?;
        if self.actual == 0 {
            Ok(())
        } else {
            Err(Error::Timeout)
        }
    }

    /// After a device reset (the host no longer holds anything): frees every
    /// page the balloon still has, in flight or acknowledged.
    pub fn abandon<D: Device, M: Memory>(&mut self, dev: &D, mem: &mut M) {
        let units = units_per_page(mem);
        for i in 0..MAX_INFLIGHT {
            let slot = self.slots[i];
            if slot.state != SlotState::Free {
                let wire = dev.posted(queue_of(slot.state), i as Token);
                for_each_run(wire, slot.len, units, |pfn, n| {
                    if let Some(first) = mem.page_at(u64::from(pfn) << PFN_SHIFT) {
                        mem.free_run(first, n);
                    }
                });
                self.slots[i] = SlotInfo::FREE;
            }
        }
        while let Some((first, n)) = mem.pop_ballooned(usize::MAX) {
            mem.free_run(first, n);
        }
        self.inflight_in = 0;
        self.inflight_out = 0;
        self.actual = 0;
        self.wantsize = false;
        self.counters.actual_pages.set(0);
    }

    fn inflight(&self) -> u32 {
        self.inflight_in + self.inflight_out
    }

    /// The floor's or the pace's allowance shrinks by what was just taken.
    fn use_allowance<M: Memory>(&mut self, mem: &M, units: u32) {
        let taken = u64::from(units) / units_per_page(mem) as u64;
        match &mut self.limit {
            InflateLimit::Floor(pages) | InflateLimit::Paced { pages, .. } => {
                *pages = pages.saturating_sub(taken);
            }
            InflateLimit::None | InflateLimit::Pressure => {}
        }
    }

    /// How many of `want` 4 KiB units the inflate limit lets the balloon
    /// take now; counts what the floor refuses.
    fn allowed_units<M: Memory>(&mut self, mem: &M, want: u32) -> u32 {
        let per_page = units_per_page(mem) as u64;
        let allowed = match self.limit {
            InflateLimit::None => return want,
            InflateLimit::Pressure => 0,
            InflateLimit::Floor(pages) | InflateLimit::Paced { pages, .. } => {
                pages.saturating_mul(per_page).min(u64::from(want)) as u32
            }
        };
        if let InflateLimit::Floor(_) = self.limit {
            let refused = want - allowed;
            if refused > 0 && self.counters.floor_refused_pages.get() == 0 {
                self.counters.floor_stops.inc();
            }
            self.counters.floor_refused_pages.set(u64::from(refused));
        }
        allowed
    }

    fn failed(&mut self, e: Error) -> Step {
        match e {
            Error::Timeout => self.counters.host_timeouts.inc(),
            _ => self.counters.errors.inc(),
        }
        Step::Failed(e)
    }

    fn next_backoff(&mut self) -> u32 {
        self.backoff_ms = if self.backoff_ms == 0 {
            self.tun.backoff_min_ms
        } else {
            self.backoff_ms
                .saturating_mul(2)
                .min(self.tun.backoff_max_ms)
        };
        self.backoff_ms
    }

    fn free_slot(&self) -> Option<usize> {
        // A returned buffer waiting to be completed does not count: its
        // replacement may be posted first.
        let in_use = self
            .slots
            .iter()
            .filter(|s| s.state != SlotState::Free && !s.acked)
            .count();
        if in_use >= self.tun.inflight_buffers {
            return None;
        }
        self.slots.iter().position(|s| s.state == SlotState::Free)
    }

    /// Fills and posts inflate buffers for up to `units`. Ok(false) when the
    /// VM ran out of pages before the buffers were full.
    fn post_inflates<D: Device, M: Memory>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
        mut units: u32,
    ) -> Result<bool, Error> {
        let per_page = units_per_page(mem);
        while units >= per_page as u32 {
            let Some(i) = self.free_slot() else {
                return Ok(true);
            };
            let want = (units as usize).min(PFNS_PER_BUFFER) / per_page;
            let mut slot = Slot::new(SlotState::Inflating);
            let full = self.fill_inflate(mem, &mut slot, want);
            if slot.len > 0 {
                self.post(dev, mem, i, &slot)?;
                units -= slot.len as u32;
            }
            if !full {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Allocates `pages` guest pages into `slot`, in contiguous runs while
    /// the VM has them. False when memory ran short first.
    fn fill_inflate<M: Memory>(&mut self, mem: &mut M, slot: &mut Slot, pages: usize) -> bool {
        let per_page = units_per_page(mem);
        let mut got = 0;
        while got < pages {
            // Largest run that fits the buffer, naturally aligned.
            let order = self.run_order.min((pages - got).ilog2());
            let first = if order > 0 {
                match mem.alloc_run(order) {
                    Some(first) => {
                        self.counters.alloc_runs.inc();
                        first
                    }
                    None => {
                        // No free run this large: try smaller ones.
                        self.run_order = order - 1;
                        continue;
                    }
                }
            } else {
                match mem.alloc_page() {
                    Some(page) => {
                        self.counters.alloc_single_pages.inc();
                        page
                    }
                    None => {
                        self.counters.alloc_failures.inc();
                        return false;
                    }
                }
            };
            let n = 1usize << order;
            let phys = mem.phys_addr(first);
            let last = phys + (n as u64 - 1) * mem.page_size();
            let (Some(pfn), Some(_)) = (pfn_of_phys(phys), pfn_of_phys(last)) else {
                mem.free_run(first, n);
                self.counters.errors.inc();
                return false;
            };
            for k in 0..(n * per_page) as u32 {
                slot.push_pfn(pfn + k);
            }
            got += n;
        }
        true
    }

    /// Fills and posts deflate buffers for up to `units` from the balloon list.
    fn post_deflates<D: Device, M: Memory>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
        mut units: u32,
    ) -> Result<u32, Error> {
        let per_page = units_per_page(mem);
        let mut posted = 0;
        while units >= per_page as u32 {
            let Some(i) = self.free_slot() else { break };
            let want = (units as usize).min(PFNS_PER_BUFFER) / per_page;
            let mut slot = Slot::new(SlotState::Deflating);
            let mut got = 0;
            while got < want {
                let Some((first, n)) = mem.pop_ballooned(want - got) else {
                    break;
                };
                // Was a valid PFN run when it was inflated.
                let pfn = pfn_of_phys(mem.phys_addr(first)).unwrap_or_default();
                for k in 0..(n * per_page) as u32 {
                    slot.push_pfn(pfn + k);
                }
                got += n;
            }
            if slot.len == 0 {
                break;
            }
            self.post(dev, mem, i, &slot)?;
            units -= slot.len as u32;
            posted += slot.len as u32;
        }
        Ok(posted)
    }

    /// Posts a filled slot; on failure gives its pages back where they came from.
    fn post<D: Device, M: Memory>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
        i: usize,
        slot: &Slot,
    ) -> Result<(), Error> {
        let queue = queue_of(slot.state);
        if let Err(e) = dev.post(queue, i as Token, slot.bytes()) {
            self.undo(mem, slot);
            return Err(e);
        }
        self.counters.buffers_posted.inc();
        match slot.state {
            SlotState::Inflating => self.inflight_in += slot.len as u32,
            _ => self.inflight_out += slot.len as u32,
        }
        self.slots[i] = SlotInfo {
            state: slot.state,
            len: slot.len,
            acked: false,
        };
        Ok(())
    }

    fn undo<M: Memory>(&self, mem: &mut M, slot: &Slot) {
        for_each_run(slot.bytes(), slot.len, units_per_page(mem), |pfn, n| {
            let Some(first) = mem.page_at(u64::from(pfn) << PFN_SHIFT) else {
                return;
            };
            match slot.state {
                SlotState::Inflating => mem.free_run(first, n),
                _ => mem.push_ballooned(first, n),
            }
        });
    }

    /// Takes one buffer the host returned, if any, and marks it acked
    /// without completing it. True if there is one.
    fn take_ready<D: Device>(&mut self, dev: &mut D) -> bool {
        for queue in [Queue::Inflate, Queue::Deflate] {
            if !self.inflight_on(queue) {
                continue;
            }
            let Ok(token) = dev.wait_used(queue, 0) else {
                continue;
            };
            match self.slots.get_mut(token) {
                Some(s) if s.state != SlotState::Free && queue_of(s.state) == queue => {
                    s.acked = true;
                    return true;
                }
                _ => self.counters.errors.inc(),
            }
        }
        false
    }

    /// Completes the buffers marked acked.
    fn complete_acked<D: Device, M: Memory>(&mut self, dev: &mut D, mem: &mut M) {
        for token in 0..MAX_INFLIGHT {
            let s = self.slots[token];
            if s.acked {
                self.complete(dev, mem, queue_of(s.state), token);
            }
        }
    }

    /// Completes every buffer the host already returned, without waiting.
    fn reap_ready<D: Device, M: Memory>(&mut self, dev: &mut D, mem: &mut M) {
        self.complete_acked(dev, mem);
        for queue in [Queue::Inflate, Queue::Deflate] {
            while self.inflight_on(queue) {
                match dev.wait_used(queue, 0) {
                    Ok(token) => self.complete(dev, mem, queue, token),
                    Err(_) => break,
                }
            }
        }
    }

    fn inflight_on(&self, queue: Queue) -> bool {
        match queue {
            Queue::Inflate => self.inflight_in > 0,
            _ => self.inflight_out > 0,
        }
    }

    /// Waits (bounded) for one acknowledgement on whichever queue has buffers out.
    fn wait_one<D: Device, M: Memory>(&mut self, dev: &mut D, mem: &mut M) -> Result<(), Error> {
        let queue = if self.inflight_in > 0 {
            Queue::Inflate
        } else {
            Queue::Deflate
        };
        let token = dev.wait_used(queue, self.tun.host_timeout_ms)?;
        self.complete(dev, mem, queue, token);
        Ok(())
    }

    /// Waits until nothing is in flight.
    fn settle<D: Device, M: Memory>(&mut self, dev: &mut D, mem: &mut M) -> Result<(), Error> {
        self.reap_ready(dev, mem);
        while self.inflight() > 0 {
            if let Err(e) = self.wait_one(dev, mem) {
                self.failed(e);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deflates `units` now, pipelined, and waits for every acknowledgement.
    fn deflate_now<D: Device, M: Memory>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
        units: u32,
    ) -> Result<(), Error> {
        let mut left = units;
        loop {
            if left > 0 {
                match self.post_deflates(dev, mem, left) {
                    Ok(n) => left -= n.min(left),
                    Err(e) => {
                        self.failed(e);
                        return Err(e);
                    }
                }
            }
            if self.inflight() == 0 {
                return Ok(());
            }
            if let Err(e) = self.wait_one(dev, mem) {
                self.failed(e);
                return Err(e);
            }
        }
    }

    /// The host returned buffer `token`: inflated pages join the balloon,
    /// deflated pages go back to the VM, and the host learns the new size.
    fn complete<D: Device, M: Memory>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
        queue: Queue,
        token: Token,
    ) {
        let Some(slot) = self.slots.get(token).copied() else {
            self.counters.errors.inc();
            return;
        };
        if slot.state == SlotState::Free || queue_of(slot.state) != queue {
            self.counters.errors.inc();
            return;
        }
        let mut missing = 0;
        for_each_run(
            dev.posted(queue, token),
            slot.len,
            units_per_page(mem),
            |pfn, n| {
                let Some(first) = mem.page_at(u64::from(pfn) << PFN_SHIFT) else {
                    missing += 1;
                    return;
                };
                match slot.state {
                    SlotState::Inflating => mem.push_ballooned(first, n),
                    _ => mem.free_run(first, n),
                }
            },
        );
        self.counters.errors.add(missing);
        let n = slot.len as u32;
        match slot.state {
            SlotState::Inflating => {
                self.inflight_in -= n;
                self.actual += n;
                self.counters.inflated_pages.add(u64::from(n));
            }
            _ => {
                self.inflight_out -= n;
                self.actual -= n;
                self.counters.deflated_pages.add(u64::from(n));
            }
        }
        self.slots[token] = SlotInfo::FREE;
        self.counters.actual_pages.set(u64::from(self.actual));
        self.unwritten_buffers += 1;
        if self.inflight() == 0 || self.unwritten_buffers >= ACTUAL_WRITE_BUFFERS {
            self.unwritten_buffers = 0;
            dev.set_actual(self.actual);
        }
    }
}

fn queue_of(state: SlotState) -> Queue {
    match state {
        SlotState::Inflating => Queue::Inflate,
        _ => Queue::Deflate,
    }
}

/// Calls `f(first_pfn, pages)` for each run of consecutive PFNs among the
/// first `len` PFNs of `wire`, counted in guest pages of `per_page` PFNs.
fn for_each_run(wire: &[u8], len: usize, per_page: usize, mut f: impl FnMut(u32, usize)) {
    let len = len.min(wire.len() / 4);
    let mut k = 0;
    while k < len {
        let first = pfn_at(wire, k);
        // PFNs in the run so far; only each page's first PFN is compared.
        let mut n = per_page;
        while k + n < len && pfn_at(wire, k + n) == first.wrapping_add(n as u32) {
            n += per_page;
        }
        f(first, n / per_page);
        k += n;
    }
}

/// 4 KiB PFN units per guest page (1 on amd64).
fn units_per_page<M: Memory>(mem: &M) -> usize {
    ((mem.page_size() >> PFN_SHIFT) as usize).clamp(1, PFNS_PER_BUFFER)
}

#[cfg(test)]
mod tests {
    use super::for_each_run;

    fn runs(pfns: &[u32], per_page: usize) -> Vec<(u32, usize)> {
        let wire: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        let mut out = Vec::new();
        for_each_run(&wire, pfns.len(), per_page, |pfn, n| out.push((pfn, n)));
        out
    }

    #[test]
    fn runs_are_maximal_stretches_of_consecutive_pfns() {
        assert_eq!(runs(&[5, 6, 7, 10, 11, 3], 1), [(5, 3), (10, 2), (3, 1)]);
        assert_eq!(
            runs(&[7, 6], 1),
            [(7, 1), (6, 1)],
            "descending is not a run"
        );
        assert_eq!(runs(&[], 1), []);
        // 16 KiB pages: four PFNs each.
        let pfns = [8, 9, 10, 11, 12, 13, 14, 15, 40, 41, 42, 43];
        assert_eq!(runs(&pfns, 4), [(8, 2), (40, 1)]);
    }
}
