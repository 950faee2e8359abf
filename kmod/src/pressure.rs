//! Memory pressure (DEFLATE_ON_OOM): how much the balloon gives back, when,
//! and how much it may take while the guest is short.
//!
//! FreeBSD tells a driver about memory pressure only through the
//! `vm_lowmem` event, and rarely: the page daemon raises it at most once
//! per `vm.lowmem_period` (10 s by default; the UMA reclaim worker adds one
//! `VM_LOW_KMEM` event a second while memory is severely short). The page
//! daemon declares OOM after `vm.pageout_oom_seq` (12) consecutive passes
//! that free nothing, about a second or two under a steady allocator with
//! nothing left to reclaim. Linux's balloon gives back 256 pages per call of
//! its OOM notifier, which runs on every failed allocation; one batch per
//! FreeBSD event cannot keep a process alive. So, with FreeBSD's defaults:
//!
//! - **One event frees enough.** A `vm_lowmem` event gives back what the
//!   page daemon is short of, `v_free_target - free`, plus a headroom
//!   ([`OomTunables::headroom_pages`]) and what the guest is seen to use
//!   during one watch interval; at least [`OomTunables::min_batch_pages`].
//!   The deflate runs inside the handler, so the page daemon sees the pages
//!   free when the handler returns and scans only for what is still missing.
//!   An event that finds free memory at or above that goal
//!   ([`Pressure::short`] false) gets the batch and stops nothing: the page
//!   daemon's PID controller raises the event when free memory falls fast,
//!   as it does while the balloon inflates towards the floor.
//! - **Between events the driver keeps up by itself.** After an event it
//!   watches free memory every [`OomTunables::interval_ms`] and, when free
//!   memory falls below the page daemon's target plus half the headroom,
//!   gives back enough to restore the target plus the headroom plus twice
//!   the consumption it measured over the last interval (fast allocators
//!   get more). Every event and every deflate extends the watch by
//!   [`OomTunables::watch_ms`] (default longer than `vm.lowmem_period`, the
//!   span in which the kernel cannot raise another event); while nothing is
//!   short for that long, or once the balloon is empty, the watch ends and
//!   no timer runs.
//! - **The guard: the spans in which no event can come.** The rate limit
//!   is system-wide: when the kernel's last event went to the instance this
//!   one replaces (a kldunload and kldload, a re-plugged device), no event
//!   comes for up to `vm.lowmem_period`; and when an event emptied the
//!   balloon, its watch ends at once, but the kernel raises no other event
//!   for as long if the host then asks for memory again. A process that
//!   needs the balloon's memory in such a span is killed first (the soak
//!   found both: kills right after a kldload, and right after a target
//!   raise that followed a pressure deflate of a small balloon). So for one
//!   watch span after attach ([`Pressure::attached`]) and after every event
//!   the driver looks at free memory as the watch does and takes what the
//!   watch would deflate for (just above where the page daemon raises
//!   `vm_lowmem`) for the event: it deflates as for one and starts the
//!   watch. The balloon inflates meanwhile as it would.
//! - **What the page daemon asks for, it gets.** The page daemon kills
//!   after `vm.pageout_oom_seq` passes that asked for pages and freed none;
//!   a pass that asks for nothing leaves that count as it is, so with
//!   nothing reclaimable it goes on across bursts. The event, the watch and
//!   the guard give at least what its controller asks for in the interval
//!   under way ([`VmCounters::pd_request`]), and the inflate is paced near
//!   the page daemon's target ([`InflatePace`]) so that it does not wind
//!   the controller up.
//! - **What was not needed stays ballooned.** Each deflate is sized to the
//!   shortage, so after the pressure the balloon holds everything the guest
//!   did not need, less the page daemon's target, the headroom and at most
//!   two intervals of consumption.
//! - **No re-inflation behind the guest's back.** After a pressure deflate
//!   the balloon may shrink but not grow until the host changes its target
//!   again ([`crate::balloon`]), and while the watch runs the balloon does
//!   not inflate at all, even for a new host target: that waits until the
//!   pressure has passed. A lower target is followed at once.
//!
//! The same module computes the guest-side floor: the balloon never
//! inflates while the guest's available memory ([`crate::avail`]) is below
//! [`floor_default_pages`] (or the administrator's setting), whatever the
//! host asks.

use crate::avail::available_pages;
use crate::balloon::InflateLimit;
use crate::platform::VmCounters;

/// Knobs of the pressure policy, in guest pages and milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomTunables {
    /// Least given back per `vm_lowmem` event (`oom_batch_pages`).
    pub min_batch_pages: u32,
    /// Free memory a pressure deflate restores beyond the page daemon's
    /// target (`oom_headroom_pages`).
    pub headroom_pages: u32,
    /// How long the driver keeps watching after the last sign of pressure;
    /// 0: it acts on `vm_lowmem` events only (`oom_watch_ms`).
    pub watch_ms: u32,
    /// Pause between two looks at free memory while watching
    /// (`oom_watch_interval_ms`).
    pub interval_ms: u32,
}

impl Default for OomTunables {
    fn default() -> Self {
        OomTunables {
            min_batch_pages: 256,
            headroom_pages: 4096,
            watch_ms: 15_000,
            interval_ms: 10,
        }
    }
}

impl OomTunables {
    /// Largest `oom_batch_pages` (256 MiB of 4 KiB pages).
    pub const BATCH_MAX: u32 = 65_536;
    /// Largest `oom_headroom_pages` (1 GiB of 4 KiB pages).
    pub const HEADROOM_MAX: u32 = 262_144;
    /// Longest `oom_watch_ms` (10 minutes).
    pub const WATCH_MAX_MS: u32 = 600_000;
    /// `oom_watch_interval_ms` bounds.
    pub const INTERVAL_MIN_MS: u32 = 1;
    pub const INTERVAL_MAX_MS: u32 = 1_000;

    pub fn valid_batch(v: u32) -> bool {
        (1..=Self::BATCH_MAX).contains(&v)
    }
    pub fn valid_headroom(v: u32) -> bool {
        v <= Self::HEADROOM_MAX
    }
    pub fn valid_watch(v: u32) -> bool {
        v <= Self::WATCH_MAX_MS
    }
    pub fn valid_interval(v: u32) -> bool {
        (Self::INTERVAL_MIN_MS..=Self::INTERVAL_MAX_MS).contains(&v)
    }
}

/// What the pressure policy has seen; lives with the balloon (both run
/// under the balloon lock).
#[derive(Debug, Default)]
pub struct Pressure {
    /// The watch runs until this time (ms since boot); 0: not watching.
    until_ms: u64,
    /// Free pages and time at the last look, to measure consumption.
    last_free: u64,
    last_ms: u64,
    /// Pages given back since the last look (they raised free memory).
    given_since: u64,
    /// Guest pages consumed per second, fast up, halving down.
    rate_pps: u64,
    /// After attach, until this time: free memory below the page daemon's
    /// target counts as the `vm_lowmem` event the kernel may not raise.
    guard_until_ms: u64,
    /// The page daemon's interval whose request was answered (its start,
    /// [`VmCounters::pd_stamp`]) and how much was given for it: a request
    /// stays the same at every look within its interval.
    req_stamp: u64,
    req_given: u64,
    /// Pages the page daemon had freed (`v_dfree`) at the last look: while
    /// that moves its passes free pages, and each such pass starts its
    /// count toward a kill again.
    last_pd_freed: u64,
}

impl Pressure {
    pub const fn new() -> Self {
        Pressure {
            until_ms: 0,
            last_free: 0,
            last_ms: 0,
            given_since: 0,
            rate_pps: 0,
            guard_until_ms: 0,
            req_stamp: 0,
            req_given: 0,
            last_pd_freed: 0,
        }
    }

    /// The driver attached at `now_ms`: for one watch span it looks at free
    /// memory and answers a shortage as a `vm_lowmem` event (the kernel's
    /// last one may have gone to the instance this one replaces).
    pub fn attached(&mut self, tun: &OomTunables, now_ms: u64) {
        self.guard(tun, now_ms);
    }

    /// The kernel may raise no event for one watch span from `now_ms`.
    fn guard(&mut self, tun: &OomTunables, now_ms: u64) {
        if tun.watch_ms != 0 {
            self.guard_until_ms = self.guard_until_ms.max(now_ms + u64::from(tun.watch_ms));
        }
    }

    /// A `vm_lowmem` event: the guest pages to give back now (at most
    /// `ballooned`). Starts or extends the watch while the balloon holds
    /// pages.
    pub fn lowmem(
        &mut self,
        tun: &OomTunables,
        now_ms: u64,
        vm: &VmCounters,
        ballooned: u64,
    ) -> u64 {
        self.sample(now_ms, vm.free);
        let want = self
            .goal(tun, vm)
            .saturating_sub(vm.free)
            .max(u64::from(tun.min_batch_pages))
            .max(self.unanswered(vm))
            .min(ballooned);
        self.answered(want);
        self.extend(tun, now_ms, ballooned);
        self.guard(tun, now_ms);
        want
    }

    /// A look at free memory while watching or guarding: the guest pages
    /// to give back now (0 if none is short, or the watch is over).
    pub fn tick(&mut self, tun: &OomTunables, now_ms: u64, vm: &VmCounters, ballooned: u64) -> u64 {
        if ballooned == 0 {
            // Nothing to give: the watch ends, the guard goes on.
            self.until_ms = 0;
        }
        if !self.watching_at(now_ms) {
            if self.guarding_at(now_ms) {
                return self.guard_look(tun, now_ms, vm, ballooned);
            }
            self.stop();
            return 0;
        }
        self.sample(now_ms, vm.free);
        let request = self.failing_request(vm);
        if !below_low_water(tun, vm) && request == 0 {
            return 0;
        }
        let want = self
            .goal(tun, vm)
            .saturating_sub(vm.free)
            .max(request)
            .min(ballooned);
        self.answered(want);
        if want > 0 {
            self.extend(tun, now_ms, ballooned);
        }
        want
    }

    /// A look during the guard: free memory where the watch would deflate
    /// (just above the page daemon's target, where the kernel raises
    /// `vm_lowmem` but for its rate limit) counts as that event (it starts
    /// the watch). Waiting for the target itself let one page-daemon pass
    /// see a shortage first.
    fn guard_look(
        &mut self,
        tun: &OomTunables,
        now_ms: u64,
        vm: &VmCounters,
        ballooned: u64,
    ) -> u64 {
        let request = self.failing_request(vm);
        if ballooned == 0 || (!below_low_water(tun, vm) && request == 0) {
            return 0;
        }
        self.lowmem(tun, now_ms, vm, ballooned)
    }

    /// What the page daemon's controller asks for in the interval under
    /// way that no deflate gave yet.
    fn unanswered(&mut self, vm: &VmCounters) -> u64 {
        if vm.pd_stamp != self.req_stamp {
            self.req_stamp = vm.pd_stamp;
            self.req_given = 0;
        }
        vm.pd_request.saturating_sub(self.req_given)
    }

    /// [`Self::unanswered`], for a look between events: none while the page
    /// daemon frees pages (each pass that does starts its count again, and
    /// the guest's caches are the page daemon's to give, not the balloon's).
    fn failing_request(&mut self, vm: &VmCounters) -> u64 {
        let freeing = vm.pd_freed != self.last_pd_freed;
        self.last_pd_freed = vm.pd_freed;
        if freeing {
            0
        } else {
            self.unanswered(vm)
        }
    }

    /// `pages` given back count against the request of the interval.
    fn answered(&mut self, pages: u64) {
        self.req_given = self.req_given.saturating_add(pages);
    }

    /// True when free memory is below what a deflate would restore (the
    /// page daemon's target, the headroom and what the guest is seen to use
    /// ahead): the guest is short. A `vm_lowmem` event with free memory at
    /// or above it is the page daemon reacting to how fast free memory fell
    /// (its controller has a derivative term), not to a shortage.
    pub fn short(&self, tun: &OomTunables, vm: &VmCounters) -> bool {
        vm.free < self.goal(tun, vm)
    }

    /// Pages a deflate actually gave back (they count as free memory at the
    /// next look, not as consumption).
    pub fn gave_back(&mut self, pages: u64) {
        self.given_since = self.given_since.saturating_add(pages);
    }

    /// Milliseconds until the next look, or `None` when neither watching
    /// nor guarding a balloon that holds pages (`ballooned`).
    pub fn next_look_ms(&self, tun: &OomTunables, now_ms: u64, ballooned: u64) -> Option<u32> {
        let guard = self.guarding_at(now_ms) && ballooned > 0;
        (self.watching_at(now_ms) || guard).then_some(tun.interval_ms.max(1))
    }

    /// True while the balloon thread looks at free memory: the watch, or
    /// the guard after attach.
    pub fn looking_at(&self, now_ms: u64) -> bool {
        self.watching_at(now_ms) || self.guarding_at(now_ms)
    }

    fn guarding_at(&self, now_ms: u64) -> bool {
        now_ms < self.guard_until_ms
    }

    /// True while the watch runs: the balloon must not inflate.
    pub fn watching_at(&self, now_ms: u64) -> bool {
        self.until_ms != 0 && now_ms < self.until_ms
    }

    /// Ends the watch (balloon empty, device going away).
    pub fn stop(&mut self) {
        *self = Pressure::new();
    }

    /// Consumption the policy expects per second, for sysctl.
    pub fn rate_pps(&self) -> u64 {
        self.rate_pps
    }

    /// Free memory a deflate restores: the page daemon's target, the
    /// headroom, and two intervals of the consumption last measured.
    fn goal(&self, tun: &OomTunables, vm: &VmCounters) -> u64 {
        let ahead = self
            .rate_pps
            .saturating_mul(2 * u64::from(tun.interval_ms.max(1)))
            / 1000;
        // A burst never makes one deflate larger than 1/8 of memory.
        let ahead = ahead.min(vm.page_count / 8);
        vm.free_target + u64::from(tun.headroom_pages) + ahead
    }

    fn extend(&mut self, tun: &OomTunables, now_ms: u64, ballooned: u64) {
        if tun.watch_ms == 0 || ballooned == 0 {
            self.until_ms = 0;
            return;
        }
        self.until_ms = self.until_ms.max(now_ms + u64::from(tun.watch_ms));
    }

    fn sample(&mut self, now_ms: u64, free: u64) {
        if self.last_ms != 0 && now_ms > self.last_ms {
            let had = self.last_free.saturating_add(self.given_since);
            let used = had.saturating_sub(free);
            let rate = used.saturating_mul(1000) / (now_ms - self.last_ms);
            self.rate_pps = rate.max(self.rate_pps / 2);
        }
        self.last_free = free;
        self.last_ms = now_ms.max(1);
        self.given_since = 0;
    }
}

/// True when free memory is below the page daemon's target plus half the
/// headroom: the watch and the guard deflate then, and also when the page
/// daemon asks for pages its passes do not find (with nothing it can
/// reclaim, no swap and anonymous memory, every pass that asks counts
/// toward an OOM kill, and the count goes on across bursts until a pass
/// frees a page: giving what it asks for at once keeps a burst to one such
/// pass).
fn below_low_water(tun: &OomTunables, vm: &VmCounters) -> bool {
    vm.free < vm.free_target + u64::from(tun.headroom_pages) / 2
}

/// Least memory the default floor keeps beyond the page daemon's target.
pub const FLOOR_MIN_BYTES: u64 = 16 << 20;

/// Default guest-side floor, in guest pages: the page daemon's free target
/// plus 2% of memory (at least [`FLOOR_MIN_BYTES`], in pages of whatever
/// size the guest has: 4 KiB on amd64 and on arm64 as FreeBSD 14 builds it,
/// 16 or 64 KiB on other arm64 kernels). Below it the balloon does not
/// inflate.
pub fn floor_default_pages(vm: &VmCounters) -> u64 {
    let min_pages = FLOOR_MIN_BYTES / vm.page_size.max(1);
    vm.free_target + (vm.page_count / 50).max(min_pages)
}

/// Guest pages the balloon may still take: none while the pressure watch
/// runs, otherwise what keeps available memory at or above `floor_pages`
/// (0: no floor).
pub fn inflate_allowance(vm: &VmCounters, floor_pages: u64, watching: bool) -> u64 {
    if watching {
        return 0;
    }
    if floor_pages == 0 {
        return u64::MAX;
    }
    available_pages(vm).saturating_sub(floor_pages)
}

/// The inflate limit for the balloon's next step: nothing while the watch
/// runs, no limit without a floor (`floor_pages` 0), otherwise the floor's
/// allowance, or the pace's where that is less.
pub fn inflate_limit(
    pace: &mut InflatePace,
    now_ms: u64,
    vm: &VmCounters,
    floor_pages: u64,
    watching: bool,
    ballooned: u64,
) -> InflateLimit {
    if watching {
        return InflateLimit::Pressure;
    }
    if floor_pages == 0 {
        return InflateLimit::None;
    }
    let floor = inflate_allowance(vm, floor_pages, false);
    let paced = pace.allowance(now_ms, vm, ballooned);
    if paced.pages < floor {
        InflateLimit::Paced {
            pages: paced.pages,
            retry_ms: paced.retry_ms,
        }
    } else {
        InflateLimit::Floor(floor)
    }
}

/// Paces the inflate as it nears the floor, so the balloon never makes the
/// page daemon see a shortage that is not there.
///
/// FreeBSD's page daemon sizes each pass with a PID controller (setpoint
/// `v_free_target`, recomputed every 100 ms; `pidctrl_daemon`). Within one
/// interval it adds every fall of free memory since its last call to the
/// integral, and the derivative is the fall over the interval: a balloon
/// that takes a few hundred MiB at once winds the controller up, which then
/// asks for pages for a second or more while free memory is well above its
/// target. With nothing reclaimable (no swap, anonymous memory, the rest in
/// the balloon) each such pass frees nothing, and the page daemon counts
/// those passes (`vmd_oom_seq`) until one frees a page: a count that goes
/// on across bursts, so after a few reloads and raises the 12th failed pass
/// (`vm.pageout_oom_seq`) kills the largest process while the balloon holds
/// memory and free memory is above the target. The soak found it.
///
/// So within each [`Self::WINDOW_MS`] the balloon takes at most a fifth of
/// what available memory (free and reclaimable, as the floor counts it,
/// [`crate::avail`]) has above the page daemon's target: far from it the
/// inflate runs at full speed, near it the controller's proportional term
/// (a third of the margin left) outweighs what the fall adds (integral a
/// quarter, derivative an eighth), even when two windows fall in one of
/// its intervals, with room for the guest's own allocations. Reclaimable
/// pages count because a pass that reclaims one counts toward no kill: a
/// guest whose free memory the page daemon holds at its target from its
/// caches is not held back.
#[derive(Debug, Default)]
pub struct InflatePace {
    window_end_ms: u64,
    budget: u64,
    start_ballooned: u64,
}

/// What the pace allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paced {
    /// Guest pages the balloon may take until the window ends.
    pub pages: u64,
    /// Milliseconds until the next window (at least 1).
    pub retry_ms: u32,
}

impl InflatePace {
    pub const WINDOW_MS: u64 = 100;
    /// A window's budget: this share of available memory above the target.
    pub const SHARE_DIVISOR: u64 = 5;

    pub const fn new() -> Self {
        InflatePace {
            window_end_ms: 0,
            budget: 0,
            start_ballooned: 0,
        }
    }

    /// What the balloon, now holding `ballooned` guest pages, may take in
    /// the current window; a new window starts when the last one ended or
    /// the balloon shrank meanwhile.
    pub fn allowance(&mut self, now_ms: u64, vm: &VmCounters, ballooned: u64) -> Paced {
        if now_ms >= self.window_end_ms || ballooned < self.start_ballooned {
            self.window_end_ms = now_ms + Self::WINDOW_MS;
            self.budget = available_pages(vm).saturating_sub(vm.free_target) / Self::SHARE_DIVISOR;
            self.start_ballooned = ballooned;
        }
        let taken = ballooned - self.start_ballooned;
        Paced {
            pages: self.budget.saturating_sub(taken),
            retry_ms: (self.window_end_ms - now_ms).clamp(1, Self::WINDOW_MS) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 GiB guest as FreeBSD 14.2 sizes it: free target ~92 MiB.
    fn vm(free: u64) -> VmCounters {
        VmCounters {
            page_size: 4096,
            page_count: 1_000_000,
            free,
            free_target: 23_000,
            free_reserved: 1_500,
            free_min: 5_000,
            ..Default::default()
        }
    }

    #[test]
    fn one_event_restores_the_free_target_and_headroom() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        let want = p.lowmem(&tun, 1000, &vm(5_000), 500_000);
        assert_eq!(want, 23_000 + 4096 - 5_000);
        assert!(p.watching_at(1001));
    }

    #[test]
    fn an_event_gives_at_least_the_batch_and_at_most_the_balloon() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        // Free memory already at the goal: the batch still goes back.
        assert_eq!(p.lowmem(&tun, 1000, &vm(100_000), 500_000), 256);
        assert_eq!(p.lowmem(&tun, 1100, &vm(0), 10), 10);
    }

    #[test]
    fn an_empty_balloon_starts_no_watch() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        assert_eq!(p.lowmem(&tun, 1000, &vm(0), 0), 0);
        assert!(!p.watching_at(1001));
        assert_eq!(p.next_look_ms(&tun, 1001, 0), None);
    }

    #[test]
    fn watch_zero_means_events_only() {
        let tun = OomTunables {
            watch_ms: 0,
            ..Default::default()
        };
        let mut p = Pressure::new();
        assert!(p.lowmem(&tun, 1000, &vm(0), 100_000) > 0);
        assert!(!p.watching_at(1001));
    }

    #[test]
    fn the_watch_gives_back_only_below_the_low_mark() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        p.lowmem(&tun, 1000, &vm(5_000), 500_000);
        p.gave_back(22_096);
        // At the goal: nothing short.
        assert_eq!(p.tick(&tun, 1010, &vm(27_096), 500_000), 0);
        // Between the low mark (target + headroom/2) and the goal: nothing.
        assert_eq!(p.tick(&tun, 1020, &vm(25_100), 500_000), 0);
        // Below the low mark: back to the goal plus what was used ahead.
        let want = p.tick(&tun, 1030, &vm(24_000), 500_000);
        assert!(want >= 27_096 - 24_000, "{want}");
    }

    #[test]
    fn fast_consumption_makes_deflates_larger() {
        let tun = OomTunables::default();
        let mut slow = Pressure::new();
        let mut fast = Pressure::new();
        slow.lowmem(&tun, 1000, &vm(27_096), 500_000);
        fast.lowmem(&tun, 1000, &vm(27_096), 500_000);
        // 10 ms later: slow used 96 pages, fast 5_000.
        let a = slow.tick(&tun, 1010, &vm(27_000), 500_000);
        let b = fast.tick(&tun, 1010, &vm(22_096), 500_000);
        assert_eq!(a, 0);
        // 5_000 pages in 10 ms: 500_000 pages/s, two intervals ahead.
        assert_eq!(b, 27_096 - 22_096 + 10_000);
        assert_eq!(fast.rate_pps(), 500_000);
    }

    #[test]
    fn given_back_pages_are_not_counted_as_consumption() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        p.lowmem(&tun, 1000, &vm(5_000), 500_000);
        p.gave_back(22_096);
        p.tick(&tun, 1010, &vm(27_096), 500_000);
        assert_eq!(p.rate_pps(), 0);
    }

    #[test]
    fn the_watch_ends_after_quiet_or_an_empty_balloon() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        p.lowmem(&tun, 1000, &vm(5_000), 500_000);
        assert_eq!(p.next_look_ms(&tun, 2000, 500_000), Some(10));
        // A deflate at 5 s extends it to 20 s.
        assert!(p.tick(&tun, 5_000, &vm(1_000), 500_000) > 0);
        assert!(p.watching_at(19_999));
        assert!(!p.watching_at(20_000));
        assert_eq!(p.tick(&tun, 20_000, &vm(1_000), 500_000), 0);
        assert_eq!(p.next_look_ms(&tun, 20_000, 500_000), None);
        // Balloon emptied: the watch stops at once.
        p.lowmem(&tun, 30_000, &vm(5_000), 500_000);
        assert_eq!(p.tick(&tun, 30_010, &vm(1_000), 0), 0);
        assert!(!p.watching_at(30_011));
    }

    #[test]
    fn after_attach_a_shortage_counts_as_the_missed_event() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        p.attached(&tun, 1000);
        // Looking, not watching: the balloon may inflate.
        assert_eq!(p.next_look_ms(&tun, 1001, 500_000), Some(10));
        assert!(!p.watching_at(1001));
        // At or above the watch's low water (the page daemon's target and
        // half the headroom): nothing.
        assert_eq!(p.tick(&tun, 1010, &vm(23_000 + 2048), 500_000), 0);
        // An empty balloon: nothing, and the guard goes on.
        assert_eq!(p.tick(&tun, 1020, &vm(5_000), 0), 0);
        assert!(p.looking_at(1030));
        // Below it: what a vm_lowmem event would get, and the watch starts.
        assert_eq!(
            p.tick(&tun, 1030, &vm(5_000), 500_000),
            23_000 + 4096 - 5_000
        );
        assert!(p.watching_at(1031));
        assert!(!p.watching_at(16_030));
        assert!(!p.looking_at(16_030), "one watch span after the event");
    }

    #[test]
    fn an_event_that_empties_the_balloon_ends_the_watch_not_the_guard() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        // A small balloon: the event takes it all.
        assert_eq!(p.lowmem(&tun, 1000, &vm(5_000), 1_000), 1_000);
        assert_eq!(p.tick(&tun, 1010, &vm(6_000), 0), 0);
        assert!(!p.watching_at(1011), "nothing left to watch for");
        // The host asks again within the kernel's silent span: a shortage
        // then is the event the kernel holds back.
        assert!(p.looking_at(5_000));
        assert_eq!(p.tick(&tun, 5_000, &vm(23_000 + 2048), 200_000), 0);
        assert_eq!(
            p.tick(&tun, 5_010, &vm(10_000), 200_000),
            23_000 + 4096 - 10_000
        );
        assert!(p.watching_at(5_011));
        // Without a shortage the guard ends a watch span after the event.
        let mut q = Pressure::new();
        q.lowmem(&tun, 1000, &vm(5_000), 1_000);
        q.tick(&tun, 1010, &vm(6_000), 0);
        assert!(!q.looking_at(16_000));
    }

    #[test]
    fn the_guard_deflates_above_the_target_where_the_watch_would() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        p.attached(&tun, 1000);
        // Above the page daemon's target, below the low water: the guard
        // does not wait for the controller to see a shortage first.
        assert_eq!(p.tick(&tun, 1010, &vm(23_000 + 1000), 500_000), 4096 - 1000);
        assert!(p.watching_at(1011));
    }

    /// `vm(free)` with the page daemon asking for `request` pages in the
    /// interval that started at `stamp`, having freed `freed` pages so far.
    fn asking(free: u64, request: u64, stamp: u64, freed: u64) -> VmCounters {
        VmCounters {
            pd_request: request,
            pd_stamp: stamp,
            pd_freed: freed,
            ..vm(free)
        }
    }

    #[test]
    fn an_event_gives_what_the_page_daemon_asks_for() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        // More than the goal needs: the pass that raised the event has
        // nothing left to look for (its count toward a kill starts again).
        let want = p.lowmem(&tun, 1000, &asking(100_000, 9_000, 500, 0), 500_000);
        assert_eq!(want, 9_000);
        // Never more than the balloon holds.
        let mut q = Pressure::new();
        let small = q.lowmem(&tun, 1000, &asking(100_000, 9_000, 500, 0), 3_000);
        assert_eq!(small, 3_000);
    }

    #[test]
    fn the_watch_answers_each_interval_of_the_page_daemon_once() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        p.lowmem(&tun, 1000, &vm(20_000), 500_000);
        // Well above the low water, the page daemon asking for nothing.
        assert_eq!(p.tick(&tun, 1010, &asking(100_000, 0, 0, 0), 500_000), 0);
        // It asks for 7,000 and its passes free nothing: all of it, once.
        let v = asking(100_000, 7_000, 600, 0);
        assert_eq!(p.tick(&tun, 1020, &v, 500_000), 7_000);
        // The same interval, the same request: nothing more.
        assert_eq!(p.tick(&tun, 1030, &v, 500_000), 0);
        // It asked for 2,000 more in that interval: those.
        let more = asking(100_000, 9_000, 600, 0);
        assert_eq!(p.tick(&tun, 1040, &more, 500_000), 2_000);
        // A new interval: its request.
        let next = asking(100_000, 3_000, 610, 0);
        assert_eq!(p.tick(&tun, 1110, &next, 500_000), 3_000);
    }

    #[test]
    fn the_watch_leaves_the_page_daemon_a_request_it_meets_by_reclaiming() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        p.lowmem(&tun, 1000, &vm(20_000), 500_000);
        assert_eq!(p.tick(&tun, 1010, &asking(100_000, 0, 0, 40), 500_000), 0);
        // Since the last look it freed pages (the guest's caches): its
        // passes succeed, nothing counts toward a kill.
        let v = asking(100_000, 7_000, 600, 90);
        assert_eq!(p.tick(&tun, 1020, &v, 500_000), 0);
        // Its passes stop freeing: the request is answered.
        assert_eq!(p.tick(&tun, 1030, &v, 500_000), 7_000);
    }

    #[test]
    fn after_attach_a_request_the_page_daemon_cannot_meet_is_the_missed_event() {
        let tun = OomTunables::default();
        let mut g = Pressure::new();
        g.attached(&tun, 1000);
        assert_eq!(g.tick(&tun, 1010, &asking(100_000, 0, 0, 0), 500_000), 0);
        let v = asking(100_000, 5_000, 700, 0);
        assert_eq!(g.tick(&tun, 1020, &v, 500_000), 5_000);
        assert!(g.watching_at(1021));
    }

    #[test]
    fn the_pace_takes_a_fifth_of_the_margin_above_the_target_per_window() {
        let mut pace = InflatePace::new();
        // Available (free less the 1,500 reserved) 100,000 pages above the
        // target: 20,000 in this window.
        let a = pace.allowance(1000, &vm(124_500), 50_000);
        assert_eq!(
            a,
            Paced {
                pages: 20_000,
                retry_ms: 100
            }
        );
        // What the balloon took counts against the window; free memory
        // read meanwhile does not resize it.
        let b = pace.allowance(1040, &vm(110_000), 62_000);
        assert_eq!(
            b,
            Paced {
                pages: 8_000,
                retry_ms: 60
            }
        );
        assert_eq!(pace.allowance(1099, &vm(103_000), 70_000).pages, 0);
        // The next window: a fifth of what is left above the target.
        assert_eq!(pace.allowance(1100, &vm(104_500), 70_000).pages, 16_000);
    }

    #[test]
    fn the_pace_counts_reclaimable_memory_as_the_floor_does() {
        let mut pace = InflatePace::new();
        // Free memory at the target, 60,000 inactive pages: the page
        // daemon reclaims them as the balloon takes free memory (its passes
        // free pages, and count toward no kill).
        let v = VmCounters {
            inactive: 60_000,
            ..vm(23_000 + 1_500)
        };
        // Available: 60,000 less the working set kept (free_min, 5,000).
        assert_eq!(pace.allowance(1000, &v, 0).pages, 55_000 / 5);
    }

    #[test]
    fn the_pace_starts_a_new_window_when_the_balloon_shrank_and_gives_nothing_below_the_target() {
        let mut pace = InflatePace::new();
        assert_eq!(pace.allowance(1000, &vm(74_500), 50_000).pages, 10_000);
        // A deflate (pressure, a lower target) since: a fresh window.
        assert_eq!(pace.allowance(1010, &vm(84_500), 40_000).pages, 12_000);
        let mut low = InflatePace::new();
        assert_eq!(low.allowance(1000, &vm(20_000), 50_000).pages, 0);
    }

    #[test]
    fn the_guard_ends_after_one_watch_span_or_with_no_watch() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        p.attached(&tun, 1000);
        assert!(p.looking_at(15_999));
        assert!(!p.looking_at(16_000));
        assert_eq!(p.tick(&tun, 16_000, &vm(1_000), 500_000), 0);
        let events_only = OomTunables {
            watch_ms: 0,
            ..Default::default()
        };
        let mut q = Pressure::new();
        q.attached(&events_only, 1000);
        assert_eq!(q.next_look_ms(&events_only, 1001, 500_000), None);
    }

    #[test]
    fn a_burst_never_asks_more_than_an_eighth_of_memory_ahead() {
        let tun = OomTunables::default();
        let mut p = Pressure::new();
        p.lowmem(&tun, 1000, &vm(900_000), 1_000_000);
        // Everything consumed in 1 ms.
        let want = p.tick(&tun, 1001, &vm(0), 1_000_000);
        assert_eq!(want, 23_000 + 4096 + 1_000_000 / 8);
    }

    #[test]
    fn floor_holds_available_memory_and_pauses_while_watching() {
        let mut v = vm(200_000);
        v.inactive = 0;
        let floor = floor_default_pages(&v);
        assert_eq!(floor, 23_000 + 20_000);
        // Available = free - reserve.
        assert_eq!(inflate_allowance(&v, floor, false), 200_000 - 1_500 - floor);
        assert_eq!(inflate_allowance(&v, floor, true), 0);
        assert_eq!(inflate_allowance(&v, 0, false), u64::MAX);
        v.free = 10_000;
        assert_eq!(inflate_allowance(&v, floor, false), 0);
    }

    #[test]
    fn small_guests_keep_at_least_16_mib() {
        let mut v = VmCounters {
            page_size: 4096,
            page_count: 100_000,
            free_target: 2_000,
            ..Default::default()
        };
        assert_eq!(floor_default_pages(&v), 2_000 + 4096);
        // 16 MiB whatever the page size (arm64 kernels with 16 or 64 KiB
        // pages): fewer, larger pages.
        v.page_count = 10_000;
        v.page_size = 16384;
        assert_eq!(floor_default_pages(&v), 2_000 + 1024);
        v.page_size = 65536;
        assert_eq!(floor_default_pages(&v), 2_000 + 256);
        // 2% of memory when that is more: a page count, whatever the size.
        v.page_count = 1_000_000;
        assert_eq!(floor_default_pages(&v), 2_000 + 20_000);
    }

    #[test]
    fn tunable_ranges() {
        assert!(!OomTunables::valid_batch(0));
        assert!(OomTunables::valid_batch(65_536));
        assert!(!OomTunables::valid_batch(65_537));
        assert!(OomTunables::valid_headroom(0));
        assert!(!OomTunables::valid_headroom(262_145));
        assert!(OomTunables::valid_watch(0));
        assert!(!OomTunables::valid_watch(600_001));
        assert!(!OomTunables::valid_interval(0));
        assert!(!OomTunables::valid_interval(1_001));
    }
}
