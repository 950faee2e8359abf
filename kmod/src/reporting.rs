//! Free page reporting (VIRTIO_BALLOON_F_REPORTING): tell the host which
//! free guest memory it may discard, without ballooning it.
//!
//! FreeBSD's VM has no page-reporting hook (Linux reports from its buddy
//! allocator and marks pages `PageReported`, cleared on allocation). So the
//! driver does it from outside the allocator:
//!
//! 1. While free memory is comfortably above the page daemon's target, take
//!    free naturally aligned blocks (2 MiB by default, down to 128 KiB when
//!    memory is fragmented) out of the free lists
//!    with the normal allocation KPI, non-sleeping and non-reclaiming: only
//!    memory that is free right now, never a page in use.
//! 2. Report a batch of them as device-writable ranges, wait (bounded) for
//!    the ack, and free them again.
//!
//! Re-reporting: FreeBSD frees to the tail of a free list and allocates from
//! its head, so a pass meets the least recently freed blocks first, and
//! reported blocks come last. A bitmap (1 bit per block, two generations)
//! remembers what was reported. A scan of one block size walks the bitmap in
//! address order and asks the allocator only for blocks inside the ranges
//! not yet reported (the KPI takes an address window), so it never meets a
//! reported block, whatever order the allocator hands blocks out in, and
//! never holds more than one batch: setting reported blocks aside instead
//! would drop free memory suddenly, which makes the page daemon's controller
//! see a shortage and raise vm_lowmem (and the balloon deflate) for nothing.
//! Which reported blocks the
//! guest used and freed since cannot be told (no allocator hook), but how
//! much it freed can: `v_tfree` less the reporter's own frees. Once others
//! freed at least `forget_pages`, the bitmap is forgotten (at most once per
//! `forget_min_ms`) and every free block becomes reportable again, so dirtied
//! memory goes back to the host within a pass or two. Bits also expire after
//! `rereport_ms`. An untouched block is thus re-reported only after the guest
//! freed real memory or an expiry period passed, never pass after pass (and
//! a re-report is cheap for the host: it discards memory it already dropped).
//!
//! Pacing: no pass while reporting is disabled or pressure was seen recently;
//! a pass that found nothing to do is not repeated until the guest freed at
//! least one block's worth of memory; each pass is bounded (`pass_blocks`), at most one
//! batch (`batch_blocks`) is held at a time, and the caller sleeps
//! `interval_ms` between passes. Pressure (vm_lowmem, or free memory no
//! longer comfortable) stops a pass after its current batch and pauses
//! reporting for `pressure_cooldown_ms`.
//!
//! PAGE_POISON: FreeBSD does not poison free pages, so the driver does not
//! negotiate it, and the host may discard or zero reported memory freely.
//! Freed blocks lose `PG_ZERO` in the kernel glue (`vm_page_free`), so a
//! discarded page is never assumed to be zero.

use core::ops::Deref;

use crate::counters::{Counter, Gauge, Owned};
use crate::platform::{BlockMemory, Device, Error, PhysRange, VmCounters};
use crate::protocol::Queue;

/// Most blocks in one report (one scatter-gather list); Linux uses 32.
pub const MAX_BATCH: usize = 32;

/// Knobs of the reporting policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Preferred block size is `2^order` guest pages (9: 2 MiB on amd64).
    pub order: u32,
    /// When no block of `order` is free, smaller ones down to `2^min_order`
    /// pages are reported (FreeBSD's per-CPU page caches and partially used
    /// superpage reservations often leave free memory in smaller runs).
    pub min_order: u32,
    /// Blocks per report, 1..=[`MAX_BATCH`]; also the most held at once.
    pub batch_blocks: usize,
    /// Most memory reported in one pass, in blocks of `order`.
    pub pass_blocks: u32,
    /// Most allocation attempts in one pass (each searches the free lists
    /// within an address window).
    pub pass_tries: u32,
    /// Pause between passes.
    pub interval_ms: u32,
    /// Longest pause: it doubles after each pass that found nothing to do
    /// (FreeBSD has no hook on page frees, so an idle guest is polled, less
    /// and less often).
    pub idle_interval_max_ms: u32,
    /// A reported block is skipped for this long.
    pub rereport_ms: u64,
    /// Guest frees (pages) after which reported blocks are reported again.
    pub forget_pages: u64,
    /// Shortest time between two such resets.
    pub forget_min_ms: u64,
    /// No reporting for this long after memory pressure.
    pub pressure_cooldown_ms: u64,
    /// Longest wait for the host to ack a report.
    pub host_timeout_ms: u32,
}

impl Policy {
    /// The default policy for guest pages of `page_size` bytes: the same
    /// bytes whatever the page size (blocks of 2 MiB down to 128 KiB, the
    /// bitmap forgotten after 32 MiB freed), as far as one page allows.
    /// [`Policy::default`] is in 4 KiB pages: amd64's, and arm64's as
    /// FreeBSD 14 builds it; arm64 kernels may have 16 or 64 KiB pages.
    pub fn for_page_size(page_size: u64) -> Policy {
        let d = Policy::default();
        let shift = page_size.max(4096).ilog2() - 12;
        Policy {
            order: d.order.saturating_sub(shift),
            min_order: d.min_order.saturating_sub(shift),
            forget_pages: d.forget_pages >> shift,
            ..d
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            order: 9,
            min_order: 5,
            batch_blocks: 16,
            pass_blocks: 256,
            pass_tries: 4096,
            interval_ms: 2_000,
            idle_interval_max_ms: 16_000,
            rereport_ms: 60_000,
            forget_pages: 16 << 9,
            forget_min_ms: 5_000,
            pressure_cooldown_ms: 10_000,
            host_timeout_ms: 5_000,
        }
    }
}

impl Policy {
    /// Pause before the next pass, after a pass that ended with `last` and
    /// followed a pause of `pause_ms`: back to the interval when the pass
    /// reported or was cut short, doubled (up to the idle maximum) when it
    /// had nothing to do.
    pub fn next_pause(&self, pause_ms: u32, last: &PassResult) -> u32 {
        let idle = last.reported == 0
            && matches!(
                last.stop,
                Stop::Unchanged | Stop::AllReported | Stop::NoFreeBlocks | Stop::MemoryLow
            );
        if idle {
            pause_ms
                .max(self.interval_ms)
                .saturating_mul(2)
                .min(self.idle_interval_max_ms.max(self.interval_ms))
        } else {
            self.interval_ms
        }
    }
}

/// What the reporter reads from its surroundings.
pub trait ReportEnv {
    /// Current VM counters.
    fn vm(&mut self) -> VmCounters;
    /// Monotonic milliseconds.
    fn now_ms(&mut self) -> u64;
    /// True if memory pressure (vm_lowmem) was signalled since the last call.
    fn take_pressure(&mut self) -> bool;
}

/// Why a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Reporting is switched off.
    Disabled,
    /// Pressure was seen recently; nothing taken.
    Pressure,
    /// Free memory did not grow since a pass that found nothing new.
    Unchanged,
    /// Free memory is not comfortably above the kernel's targets.
    MemoryLow,
    /// No free block of the size is left.
    NoFreeBlocks,
    /// Met a batch of already reported blocks in a row: everything is reported.
    AllReported,
    /// The pass budget is used up.
    Budget,
    /// The host failed or did not ack in time; blocks stay held until it
    /// does or the device is reset.
    Host(Error),
}

/// Outcome of one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassResult {
    pub reported: u32,
    pub skipped: u32,
    pub stop: Stop,
}

/// Counters for sysctl.
#[derive(Debug, Default)]
pub struct ReportCounters {
    pub blocks: Counter,
    pub bytes: Counter,
    /// Blocks held right now (taken from the free lists, not yet given back).
    pub inflight: Gauge,
    pub acks: Counter,
    pub errors: Counter,
    pub passes: Counter,
    /// Milliseconds spent in passes.
    pub time_ms: Counter,
}

/// The free page reporter. `S` is the bitmap storage (two generations of
/// one bit per `2^min_order` pages), sized with [`Reporter::bitmap_words`];
/// it counts into `C` (see [`crate::counters`]).
#[derive(Debug)]
pub struct Reporter<B: Copy, S, C = Owned<ReportCounters>> {
    policy: Policy,
    enabled: bool,
    page_size: u64,
    bits: S,
    generation_start_ms: u64,
    pressure_until_ms: u64,
    /// The last pass found nothing new to report.
    idle: bool,
    /// `v_tfree` at the last pass, the reporter's own frees since, and others'
    /// frees not yet acted on.
    last_tfree: Option<u64>,
    own_freed: u64,
    others_freed: u64,
    freed_since_idle: u64,
    last_forget_ms: u64,
    held: [Option<(B, u32)>; MAX_BATCH],
    held_len: usize,
    /// The held batch is with the host, unacknowledged.
    posted: bool,
    counters: C,
}

impl<B: Copy, S: AsRef<[u64]> + AsMut<[u64]>> Reporter<B, S> {
    /// u64 words of bitmap storage needed for memory up to `max_phys`.
    pub fn bitmap_words(max_phys: u64, page_size: u64, min_order: u32) -> usize {
        let blocks = max_phys.div_ceil(page_size << min_order);
        2 * blocks.div_ceil(64) as usize
    }

    /// A reporter with its own counters (see [`Reporter::with_counters`]).
    pub fn new(policy: Policy, page_size: u64, bits: S) -> Self {
        Self::with_counters(policy, page_size, bits, Owned::default())
    }
}

impl<B: Copy, S: AsRef<[u64]> + AsMut<[u64]>, C: Deref<Target = ReportCounters>> Reporter<B, S, C> {
    /// A reporter over zeroed bitmap storage of [`Reporter::bitmap_words`],
    /// counting into `counters`.
    pub fn with_counters(mut policy: Policy, page_size: u64, bits: S, counters: C) -> Self {
        policy.batch_blocks = policy.batch_blocks.clamp(1, MAX_BATCH);
        policy.min_order = policy.min_order.min(policy.order);
        Reporter {
            policy,
            enabled: true,
            page_size,
            bits,
            generation_start_ms: 0,
            pressure_until_ms: 0,
            idle: false,
            last_tfree: None,
            own_freed: 0,
            others_freed: 0,
            freed_since_idle: 0,
            last_forget_ms: 0,
            held: [None; MAX_BATCH],
            held_len: 0,
            posted: false,
            counters,
        }
    }

    pub fn counters(&self) -> &ReportCounters {
        &self.counters
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        self.idle = false;
    }

    fn held_pages(&self) -> u64 {
        self.held[..self.held_len]
            .iter()
            .flatten()
            .map(|(_, o)| 1u64 << o)
            .sum()
    }

    fn block_pages(&self) -> u64 {
        1 << self.policy.order
    }

    /// Memory pressure: pause reporting.
    pub fn pressure(&mut self, now_ms: u64) {
        self.pressure_until_ms = now_ms.saturating_add(self.policy.pressure_cooldown_ms);
    }

    /// Free memory stays at least twice the page daemon's target (plus the
    /// batch being taken) while blocks are held.
    fn comfortable(&self, vm: &VmCounters) -> bool {
        let held = self.held_pages();
        let floor = vm
            .free_target
            .saturating_mul(2)
            .saturating_add(held + self.block_pages());
        vm.free > floor
    }

    /// One reporting pass. The caller sleeps `policy().interval_ms` between passes.
    pub fn pass<D: Device, M: BlockMemory<Block = B>, E: ReportEnv>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
        env: &mut E,
    ) -> PassResult {
        let start = env.now_ms();
        let mut result = PassResult {
            reported: 0,
            skipped: 0,
            stop: Stop::Budget,
        };
        result.stop = self.run(dev, mem, env, &mut result);
        if result.stop != Stop::Disabled {
            self.counters.passes.inc();
        }
        self.counters
            .time_ms
            .add(env.now_ms().saturating_sub(start));
        result
    }

    fn run<D: Device, M: BlockMemory<Block = B>, E: ReportEnv>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
        env: &mut E,
        result: &mut PassResult,
    ) -> Stop {
        // A batch left with the host by an earlier timeout comes first.
        if self.posted {
            if let Err(e) = self.wait_ack(dev, mem) {
                return Stop::Host(e);
            }
        }
        if !self.enabled {
            return Stop::Disabled;
        }
        let now = env.now_ms();
        if env.take_pressure() {
            self.pressure(now);
        }
        if now < self.pressure_until_ms {
            return Stop::Pressure;
        }
        if now.saturating_sub(self.generation_start_ms) >= self.policy.rereport_ms {
            self.new_generation(now);
        }
        self.account_frees(&env.vm(), now);
        if self.idle && self.freed_since_idle < self.block_pages() {
            return Stop::Unchanged;
        }
        self.idle = false;
        self.freed_since_idle = 0;
        let mut order = self.policy.order;
        // Blocks of this size are looked for from this bitmap unit on.
        let mut cursor = 0u64;
        let mut tries = 0u32;
        let budget = u64::from(self.policy.pass_blocks) << self.policy.order;
        let mut reported_pages = 0u64;
        loop {
            // Fill one batch.
            while self.held_len < self.policy.batch_blocks
                && reported_pages + self.held_pages() < budget
            {
                let vm = env.vm();
                if env.take_pressure() {
                    self.pressure(env.now_ms());
                    self.give_back(mem);
                    return Stop::Pressure;
                }
                if !self.comfortable(&vm) {
                    self.give_back(mem);
                    return Stop::MemoryLow;
                }
                let block_units = 1u64 << (order - self.policy.min_order);
                let Some(window) = self.unreported_from(cursor, block_units) else {
                    // Every unreported range was tried at this size.
                    if order > self.policy.min_order {
                        order -= 1;
                        cursor = 0;
                        continue;
                    }
                    if self.held_len == 0 {
                        self.idle = true;
                        return if result.reported == 0 && self.any_free_block(mem) {
                            result.skipped += 1;
                            Stop::AllReported
                        } else {
                            Stop::NoFreeBlocks
                        };
                    }
                    break;
                };
                if tries >= self.policy.pass_tries {
                    // Out of attempts: the rest waits for the next pass.
                    if self.held_len > 0 {
                        break;
                    }
                    return Stop::Budget;
                }
                tries += 1;
                let unit = self.page_size << self.policy.min_order;
                let Some(block) = mem.alloc_block(order, window.start * unit..window.end * unit)
                else {
                    // Nothing free in this window: on to the next one.
                    cursor = window.end;
                    continue;
                };
                self.held[self.held_len] = Some((block, order));
                self.held_len += 1;
                self.counters.inflight.set(self.held_len as u64);
            }
            if self.held_len == 0 {
                self.idle = true;
                return Stop::AllReported;
            }
            let n = self.held_len as u32;
            let pages = self.held_pages();
            if let Err(e) = self.report_held(dev, mem) {
                return Stop::Host(e);
            }
            result.reported += n;
            reported_pages += pages;
            if reported_pages >= budget {
                return Stop::Budget;
            }
        }
    }

    /// Posts the held blocks and waits for the ack.
    fn report_held<D: Device, M: BlockMemory<Block = B>>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
    ) -> Result<(), Error> {
        let mut ranges = [PhysRange { addr: 0, len: 0 }; MAX_BATCH];
        for (r, (b, order)) in ranges
            .iter_mut()
            .zip(self.held[..self.held_len].iter().flatten())
        {
            *r = PhysRange {
                addr: mem.block_phys(*b),
                len: self.page_size << order,
            };
        }
        if let Err(e) = dev.post_ranges(Queue::Reporting, 0, &ranges[..self.held_len]) {
            self.counters.errors.inc();
            self.give_back(mem);
            return Err(e);
        }
        self.posted = true;
        self.wait_ack(dev, mem)
    }

    fn wait_ack<D: Device, M: BlockMemory<Block = B>>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
    ) -> Result<(), Error> {
        if let Err(e) = dev.wait_used(Queue::Reporting, self.policy.host_timeout_ms) {
            self.counters.errors.inc();
            return Err(e);
        }
        self.posted = false;
        self.counters.acks.inc();
        let n = self.held_len as u64;
        for i in 0..self.held_len {
            if let Some((b, order)) = self.held[i] {
                self.mark_reported(mem.block_phys(b), order);
            }
        }
        self.counters.blocks.add(n);
        self.counters.bytes.add(self.held_pages() * self.page_size);
        self.give_back(mem);
        Ok(())
    }

    /// Frees every held block that is not with the host.
    fn give_back<M: BlockMemory<Block = B>>(&mut self, mem: &mut M) {
        if self.posted {
            return;
        }
        for slot in self.held[..self.held_len].iter_mut() {
            if let Some((b, order)) = slot.take() {
                mem.free_block(b, order);
                self.own_freed += 1 << order;
            }
        }
        self.held_len = 0;
        self.counters.inflight.set(0);
    }

    /// Detach, after the device was reset (or the host acked): frees every
    /// held block. Returns how many.
    pub fn release<M: BlockMemory<Block = B>>(&mut self, mem: &mut M) -> usize {
        let n = self.held_len;
        self.posted = false;
        self.give_back(mem);
        n
    }

    /// Blocks held now.
    pub fn held(&self) -> usize {
        self.held_len
    }

    /// True while a report is with the host unacknowledged.
    pub fn waiting_for_host(&self) -> bool {
        self.posted
    }

    /// Bitmap units (of `2^min_order` pages) covered by a block.
    fn units(&self, phys: u64, order: u32) -> core::ops::Range<u64> {
        let unit = self.page_size << self.policy.min_order;
        let first = phys / unit;
        first..first + (1u64 << (order.saturating_sub(self.policy.min_order)))
    }

    fn bit(&self, unit: u64) -> Option<(usize, u64)> {
        let word = (unit / 64) as usize;
        (word < self.bits.as_ref().len() / 2).then_some((word, 1u64 << (unit % 64)))
    }

    /// The first range of bitmap units at or after `from`, naturally
    /// aligned to `block_units` and at least that long, that no generation
    /// marks reported; `None` past the end of memory.
    fn unreported_from(&self, from: u64, block_units: u64) -> Option<core::ops::Range<u64>> {
        let bits = self.bits.as_ref();
        let half = bits.len() / 2;
        let end = half as u64 * 64;
        let word = |u: u64| bits[(u / 64) as usize] | bits[half + (u / 64) as usize];
        let reported = |u: u64| word(u) & (1u64 << (u % 64)) != 0;
        let mut u = from.next_multiple_of(block_units);
        while u < end {
            // Whole reported words are skipped at once.
            if u.is_multiple_of(64) && word(u) == u64::MAX {
                u += 64;
                continue;
            }
            if reported(u) {
                u += 1;
                continue;
            }
            let start = u;
            while u < end && !reported(u) {
                u += 1;
            }
            // Aligned block slots inside [start, u).
            let first = start.next_multiple_of(block_units);
            let last = u - u % block_units;
            if last > first {
                return Some(first..last);
            }
            u = u.next_multiple_of(block_units);
        }
        None
    }

    /// True if any block of the smallest size is free at all (the scan found
    /// none unreported: everything free was reported already).
    fn any_free_block<M: BlockMemory<Block = B>>(&mut self, mem: &mut M) -> bool {
        match mem.alloc_block(self.policy.min_order, 0..u64::MAX) {
            Some(b) => {
                mem.free_block(b, self.policy.min_order);
                self.own_freed += 1 << self.policy.min_order;
                true
            }
            None => false,
        }
    }

    fn mark_reported(&mut self, phys: u64, order: u32) {
        for u in self.units(phys, order) {
            if let Some((w, bit)) = self.bit(u) {
                self.bits.as_mut()[w] |= bit;
            }
        }
    }

    /// Current generation becomes the previous one; the previous is forgotten.
    fn new_generation(&mut self, now_ms: u64) {
        let bits = self.bits.as_mut();
        let half = bits.len() / 2;
        let (cur, prev) = bits.split_at_mut(half);
        prev.copy_from_slice(cur);
        cur.fill(0);
        self.generation_start_ms = now_ms;
        self.idle = false;
    }

    /// Counts what others freed since the last pass; forgets the bitmap once
    /// that is enough to matter.
    fn account_frees(&mut self, vm: &VmCounters, now_ms: u64) {
        if let Some(last) = self.last_tfree {
            let freed = vm
                .freed_total
                .saturating_sub(last)
                .saturating_sub(self.own_freed);
            self.others_freed = self.others_freed.saturating_add(freed);
            self.freed_since_idle = self.freed_since_idle.saturating_add(freed);
        }
        self.last_tfree = Some(vm.freed_total);
        self.own_freed = 0;
        if self.others_freed >= self.policy.forget_pages
            && now_ms.saturating_sub(self.last_forget_ms) >= self.policy.forget_min_ms
        {
            self.bits.as_mut().fill(0);
            self.last_forget_ms = now_ms;
            self.others_freed = 0;
            self.idle = false;
        }
    }
}
