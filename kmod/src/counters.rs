//! Event counters the sysctl tree shows. Atomics, so the sysctl tree reads
//! them while the logic updates them; relaxed ordering is enough for
//! statistics.
//!
//! A logic object ([`crate::balloon::Balloon`], [`crate::stats::Stats`],
//! [`crate::reporting::Reporter`]) reaches its counters through a handle `C:
//! Deref<Target = ...Counters>`: [`Owned`] keeps them inside the object (host
//! tests), while the kernel glue keeps them in the driver state beside the
//! lock that guards the object, so that reading them takes no lock and never
//! aliases the `&mut` a lock holder has.

use core::ops::Deref;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Counters kept inside the object that updates them.
#[derive(Debug, Default)]
pub struct Owned<T>(pub T);

impl<T> Deref for Owned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A monotonically increasing event count.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (a gauge), readable the same way.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicU64::new(0))
    }
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// At most a few events a second, from any thread (diagnostics on the
/// console). Racing callers may let an extra one through, never block.
#[derive(Debug, Default)]
pub struct RateLimit {
    /// The second of the last event, plus one (0: none yet).
    second: AtomicU64,
    count: AtomicU32,
}

impl RateLimit {
    pub const fn new() -> Self {
        RateLimit {
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
        }
    }

    /// True if an event at `now_ms` is among the first `max` of its second.
    pub fn allow(&self, now_ms: u64, max: u32) -> bool {
        let second = now_ms / 1000 + 1;
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < max
    }
}

/// What the balloon thread and the lowmem handler count.
#[derive(Debug, Default)]
pub struct BalloonCounters {
    /// Host target, 4 KiB units.
    pub target_pages: Gauge,
    /// Pages the host acknowledged as ballooned, 4 KiB units.
    pub actual_pages: Gauge,
    /// 4 KiB units given to the host since attach.
    pub inflated_pages: Counter,
    /// 4 KiB units taken back from the host since attach.
    pub deflated_pages: Counter,
    /// vm_lowmem events handled.
    pub lowmem_events: Counter,
    /// Shortages the guard (after attach or an event) took for a vm_lowmem event the
    /// kernel's rate limit held back.
    pub guard_events: Counter,
    /// 4 KiB units given back because of memory pressure (vm_lowmem events
    /// and the pressure watch).
    pub lowmem_pages: Counter,
    /// Deflates done for memory pressure (events and watch looks that gave
    /// memory back).
    pub oom_deflates: Counter,
    /// 4 KiB units of the host's target the guest-side floor holds back now.
    pub floor_refused_pages: Gauge,
    /// Times the floor stopped an inflate short of the host's target.
    pub floor_stops: Counter,
    /// Config-change interrupts (host target changes).
    pub config_changes: Counter,
    /// Page allocations that failed while inflating.
    pub alloc_failures: Counter,
    /// Waits for the host that ran out of time.
    pub host_timeouts: Counter,
    /// Other failures (queue full, unusable page).
    pub errors: Counter,
    /// Buffers posted to the inflate and deflate queues.
    pub buffers_posted: Counter,
    /// Physically contiguous runs of more than one page taken when
    /// inflating (one allocator call each).
    pub alloc_runs: Counter,
    /// Pages taken one at a time when inflating (one allocator call each).
    pub alloc_single_pages: Counter,
}

/// Where the balloon thread's guest time goes: what the kernel glue
/// measures around its calls (the logic has no clock), in ticks of the
/// glue's clock (the CPU's tick counter; the sysctl nodes show
/// microseconds). Each is cumulative since attach; the benchmark reads them
/// before and after an operation. The kick thread's own figures are the
/// kicker's (`kick.rs`).
#[derive(Debug, Default)]
pub struct BalloonClocks {
    /// Balloon steps (the balloon thread's whole work on a resize, the
    /// waits included).
    pub step_us: Counter,
    /// Taking pages from the VM: runs and single pages.
    pub alloc_us: Counter,
    /// Giving pages back to the VM.
    pub free_us: Counter,
    /// Posting buffers: copying PFNs to a DMA slot, and enqueueing or
    /// handing them to the kick thread (notifications made in place are
    /// not counted here but in `notify_us`).
    pub post_us: Counter,
    /// Waiting until the host returns a buffer (asleep, mostly).
    pub wait_us: Counter,
}

/// What the statistics path counts.
#[derive(Debug, Default)]
pub struct StatsCounters {
    /// Times the host asked for statistics (returned the pull buffer).
    pub requests: Counter,
    /// Statistics buffers pushed on the STATS_PUSH timer.
    pub pushes: Counter,
    /// Failures to post a statistics buffer.
    pub errors: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_max_a_second_through() {
        let r = RateLimit::new();
        let passed = (0..10).filter(|i| r.allow(5_000 + i * 10, 3)).count();
        assert_eq!(passed, 3);
        assert!(r.allow(6_000, 3), "a new second starts afresh");
        assert!(r.allow(0, 1), "second 0 is a second like any other");
    }
}
