//! Memory statistics on the stats queue: pulled by the host and, with the
//! proposed STATS_PUSH feature, pushed on a host-set timer.
//!
//! Pull (virtio spec): one buffer is outstanding with the host; the host
//! "requests" statistics by returning it, and the driver refills it with the
//! same tag set and queues it again.
//!
//! Push (proposal): `stats_push_interval_ms` in config (0 = pull only). While
//! it is non-zero the driver posts a second buffer on every timer tick, if the
//! host returned the previous push; returned pull buffers are then ignored
//! (kept idle) and queued again when push mode ends. Without STATS_VQ there
//! is no queue, so STATS_PUSH is dropped.
//!
//! Mapping of tags to FreeBSD counters (values in bytes where the spec says
//! memory, counts otherwise):
//!
//! | tag | FreeBSD source |
//! |---|---|
//! | SWAP_IN / SWAP_OUT | `v_swappgsin` / `v_swappgsout` × page size |
//! | MAJFLT | `v_io_faults` (faults that needed I/O) |
//! | MINFLT | `v_vm_faults − v_io_faults` |
//! | MEMFREE | `vm_free_count()` × page size |
//! | MEMTOT | `v_page_count` × page size |
//! | AVAIL | [`crate::avail::available_bytes`] |
//! | CACHES | inactive queue × page size: clean and idle pages FreeBSD reclaims first (its file cache is unified with them) |
//! | HTLB_* (8, 9) | not sent: FreeBSD has no hugetlb pool |
//! | ASYNC_SCAN (12) | `v_pdpages`, pages scanned by the page daemon (optional) |
//! | ASYNC_RECLAIM (14) | `v_dfree`, pages freed by the page daemon (optional) |
//! | OOM_KILL, ALLOC_STALL, DIRECT_SCAN, DIRECT_RECLAIM | never sent: FreeBSD keeps no OOM-kill count and has no direct reclaim |
//!
//! The optional Linux tags are off by default, since Firecracker rejects tags
//! above 9; the tag set is fixed for the life of a [`Stats`] (one attach).

use core::ops::Deref;

use crate::avail::available_bytes;
use crate::counters::{Owned, StatsCounters};
use crate::platform::{Device, Error, Token, VmCounters};
use crate::protocol::{stat_entry, Features, Queue, StatTag, STAT_BYTES};

/// Token of the pull buffer, always outstanding in pull mode.
pub const PULL_TOKEN: Token = 0;
/// Token of the push buffer.
pub const PUSH_TOKEN: Token = 1;
/// Shortest push period accepted from the host: guards the guest against a
/// host asking for a timer storm.
pub const MIN_PUSH_INTERVAL_MS: u32 = 100;

const SPEC_TAGS: [StatTag; 8] = [
    StatTag::SwapIn,
    StatTag::SwapOut,
    StatTag::MajFlt,
    StatTag::MinFlt,
    StatTag::MemFree,
    StatTag::MemTot,
    StatTag::Avail,
    StatTag::Caches,
];
const LINUX_TAGS: [StatTag; 2] = [StatTag::AsyncScan, StatTag::AsyncReclaim];
const MAX_TAGS: usize = SPEC_TAGS.len() + LINUX_TAGS.len();
/// Bytes of the largest statistics buffer.
pub const MAX_STATS_BYTES: usize = MAX_TAGS * STAT_BYTES;

/// What the push timer (a callout in the kernel) should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushTimer {
    Off,
    Every(u32),
}

/// The statistics path's state; counts into `C` (see [`crate::counters`]).
#[derive(Debug)]
pub struct Stats<C = Owned<StatsCounters>> {
    have_queue: bool,
    can_push: bool,
    linux_tags: bool,
    started: bool,
    pull_out: bool,
    push_out: bool,
    push_ms: u32,
    counters: C,
}

impl Stats {
    /// Statistics with their own counters (see [`Stats::with_counters`]).
    pub fn new(features: Features, linux_tags: bool) -> Self {
        Self::with_counters(features, linux_tags, Owned::default())
    }

    /// Feature bits to negotiate given what the device offers: STATS_PUSH
    /// only together with STATS_VQ.
    pub fn filter_features(offered: Features) -> Features {
        offered.usable()
    }
}

impl<C: Deref<Target = StatsCounters>> Stats<C> {
    /// `features` are the negotiated ones; `linux_tags` adds tags 12 and 14.
    pub fn with_counters(features: Features, linux_tags: bool, counters: C) -> Self {
        let have_queue = features.contains(Features::STATS_VQ);
        Stats {
            have_queue,
            can_push: have_queue && features.contains(Features::STATS_PUSH),
            linux_tags,
            started: false,
            pull_out: false,
            push_out: false,
            push_ms: 0,
            counters,
        }
    }

    pub fn counters(&self) -> &StatsCounters {
        &self.counters
    }

    pub fn linux_tags(&self) -> bool {
        self.linux_tags
    }

    /// Chooses whether the Linux tags are sent; only before [`Stats::start`]
    /// (the host sees one tag set per attach). False, and nothing changed,
    /// once started.
    pub fn set_linux_tags(&mut self, on: bool) -> bool {
        if self.started {
            return false;
        }
        self.linux_tags = on;
        true
    }

    /// After DRIVER_OK: queues the first pull buffer and reads the push period.
    pub fn start<D: Device>(&mut self, dev: &mut D, vm: &VmCounters) -> Result<PushTimer, Error> {
        if !self.have_queue {
            return Ok(PushTimer::Off);
        }
        self.started = true;
        self.push_ms = self.read_interval(dev);
        self.post_pull(dev, vm)?;
        Ok(self.timer())
    }

    /// Stats queue interrupt: takes every buffer the host returned.
    pub fn interrupt<D: Device>(&mut self, dev: &mut D, vm: &VmCounters) -> Result<(), Error> {
        let mut result = Ok(());
        while let Ok(token) = dev.wait_used(Queue::Stats, 0) {
            if token == PUSH_TOKEN {
                self.push_out = false;
                continue;
            }
            self.pull_out = false;
            self.counters.requests.inc();
            if self.push_ms != 0 {
                // Push mode: the pull buffer stays idle.
                continue;
            }
            if let Err(e) = self.post_pull(dev, vm) {
                result = Err(e);
            }
        }
        result
    }

    /// Push timer tick.
    pub fn push_tick<D: Device>(&mut self, dev: &mut D, vm: &VmCounters) -> Result<(), Error> {
        if self.push_ms == 0 || !self.started {
            return Ok(());
        }
        if self.push_out {
            // The host still holds the last push: skip, do not stack.
            return Ok(());
        }
        let (buf, len) = self.fill(vm);
        if let Err(e) = dev.post(Queue::Stats, PUSH_TOKEN, &buf[..len]) {
            self.counters.errors.inc();
            return Err(e);
        }
        self.push_out = true;
        self.counters.pushes.inc();
        Ok(())
    }

    /// Config change: re-reads the push period. Leaving push mode queues the
    /// pull buffer again if the host had returned it.
    pub fn config_changed<D: Device>(&mut self, dev: &mut D, vm: &VmCounters) -> PushTimer {
        if !self.started {
            return PushTimer::Off;
        }
        self.push_ms = self.read_interval(dev);
        if self.push_ms == 0 && !self.pull_out {
            let _ = self.post_pull(dev, vm);
        }
        self.timer()
    }

    fn timer(&self) -> PushTimer {
        match self.push_ms {
            0 => PushTimer::Off,
            ms => PushTimer::Every(ms),
        }
    }

    fn read_interval<D: Device>(&self, dev: &mut D) -> u32 {
        if !self.can_push {
            return 0;
        }
        match dev.stats_push_interval_ms() {
            0 => 0,
            ms => ms.max(MIN_PUSH_INTERVAL_MS),
        }
    }

    fn post_pull<D: Device>(&mut self, dev: &mut D, vm: &VmCounters) -> Result<(), Error> {
        let (buf, len) = self.fill(vm);
        if let Err(e) = dev.post(Queue::Stats, PULL_TOKEN, &buf[..len]) {
            self.counters.errors.inc();
            return Err(e);
        }
        self.pull_out = true;
        Ok(())
    }

    /// The tags sent, in order; the same for every buffer of this attach.
    pub fn tags(&self) -> impl Iterator<Item = StatTag> {
        let extra: &[StatTag] = if self.linux_tags { &LINUX_TAGS } else { &[] };
        SPEC_TAGS.into_iter().chain(extra.iter().copied())
    }

    /// Serializes the statistics into a wire buffer; returns it and its length.
    pub fn fill(&self, vm: &VmCounters) -> ([u8; MAX_STATS_BYTES], usize) {
        let mut buf = [0u8; MAX_STATS_BYTES];
        let mut len = 0;
        for tag in self.tags() {
            buf[len..len + STAT_BYTES].copy_from_slice(&stat_entry(tag, stat_value(tag, vm)));
            len += STAT_BYTES;
        }
        (buf, len)
    }
}

/// The value reported for a tag (see the table in the module docs).
pub fn stat_value(tag: StatTag, vm: &VmCounters) -> u64 {
    let bytes = |pages: u64| pages.saturating_mul(vm.page_size);
    match tag {
        StatTag::SwapIn => bytes(vm.swap_in),
        StatTag::SwapOut => bytes(vm.swap_out),
        StatTag::MajFlt => vm.major_faults,
        StatTag::MinFlt => vm.faults.saturating_sub(vm.major_faults),
        StatTag::MemFree => bytes(vm.free),
        StatTag::MemTot => bytes(vm.page_count),
        StatTag::Avail => available_bytes(vm),
        StatTag::Caches => bytes(vm.inactive),
        StatTag::AsyncScan => vm.pd_scanned,
        StatTag::AsyncReclaim => vm.pd_freed,
        _ => 0,
    }
}
